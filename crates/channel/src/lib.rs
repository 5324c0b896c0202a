//! Messaging between processes: typed pipes for 1:1 conversations, hosted
//! queues for 1:N, N:1 and N:M, after the Python library pymulproc, without
//! its bugs.
//!
//! Every message is a [`Message<T>`]: a [`Request`] kind, the **real**
//! sender's pid (stamped when it is sent), an optional recipient pid, and
//! typed data.

mod codec;
pub mod core;
mod error;
mod host;
mod message;
mod pipe;
mod queue;
mod sys;
pub mod wire;

pub use error::{BatchSendError, Error, RecvError, SendError};
pub use message::{Message, Request};
pub use pipe::{PipeEnd, RecvFuture, pipe};
pub use queue::{Queue, QueueBuilder};
pub use wire::Pick;
