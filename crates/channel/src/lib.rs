//! Messaging between processes: typed pipes for 1:1 conversations, hosted
//! queues for 1:N, N:1 and N:M, after the Python library pymulproc, without
//! its bugs.
//!
//! **Internal crate.** This is a layer of [processional](https://docs.rs/processional);
//! its API is not stable and may change in any release. Depend on the
//! `processional` crate, which re-exports this crate as
//! `processional::channel`.
//!
//! ```
//! use processional_channel::{Queue, Request};
//! use processional_process::func;
//!
//! /// A child: doubles what it is asked until its poison pill.
//! fn child(queue: Queue<u32>, parent: u32) -> Result<(), processional_channel::Error> {
//!     loop {
//!         let msg = queue.recv_for_me()?; // recipient == me, or nobody in particular
//!         match msg.request {
//!             Request::Die => return Ok(()),
//!             Request::Do => queue.send_to(parent, Request::Finished, msg.data.map(|x| x * 2))?,
//!             _ => {}
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), processional_channel::Error> {
//! let queue = Queue::<u32>::new()?; // hosted by a server started for it
//! let children = (0..2).map(|_| processional_process::slave()).collect::<Result<Vec<_>, _>>()?;
//! let tasks: Vec<_> = children
//!     .iter()
//!     .map(|c| c.schedule_with(
//!         (queue.clone(), std::process::id()),
//!         func!(|(q, p): (Queue<u32>, u32)| child(q, p).map_err(|e| e.to_string())),
//!     ))
//!     .collect();
//! for _ in 0..2 { queue.send(Request::Do, Some(3))?; }
//! let me = std::process::id();
//! let total: u32 = (0..2).map(|_| queue.recv_addressed_to(me).map(|m| m.data.unwrap_or(0)))
//!     .sum::<Result<_, _>>()?;
//! assert_eq!(total, 12);
//! for _ in 0..2 { queue.send(Request::Die, None)?; } // one poison pill per child
//! queue.join()?;                                    // every message handled
//! for task in tasks { task.wait()?.expect("the child"); }
//! # Ok(())
//! # }
//! ```
//!
//! # Messages
//! Every message is a [`Message<T>`]: a [`Request`] kind (`Do`, `Finished`,
//! `Die`, or `User(n)` of the program's own), a sender pid, an optional
//! recipient pid, and typed data (any serde type). [`Message::new`] stamps
//! the pid of the process that makes the message; the sender may claim
//! another one ([`Message::with_sender`]), and nothing checks it, neither
//! the handle nor the host: the sender pid is the sender's claim, fine for
//! addressing and filtering among cooperating processes, not an identity to
//! trust (anyone holding a queue's id and its host's key can send anything).
//!
//! # Pipes
//! [`pipe()`] makes two connected [`PipeEnd`]s. An end is a call argument
//! like any other: it travels to a slave as a file descriptor beside the
//! call. `send`, `recv`, `try_recv` (`Ok(None)` when empty),
//! `recv_timeout`, `recv_async`; once the other end is gone, a send fails
//! with [`SendError::Disconnected`] handing the message back, and a receive
//! with [`RecvError::Disconnected`].
//!
//! # Queues
//! A [`Queue<T>`] is a handle to a queue hosted by a process: a server
//! started for it ([`Queue::new`], [`Queue::bounded`]) or a running server
//! of this program ([`QueueBuilder::host`]). Handles clone, and travel to
//! slaves and clients as arguments.
//!
//! - **Filtered receive.** [`Queue::recv_for_me`] (addressed to me or to
//!   nobody), [`recv_addressed_to`](Queue::recv_addressed_to),
//!   [`recv_from`](Queue::recv_from), [`recv_kind`](Queue::recv_kind), any
//!   [`Pick`] with [`recv_by`](Queue::recv_by), and a predicate shipped
//!   with `func!` that runs in the host ([`recv_where`](Queue::recv_where)).
//!   Messages not taken stay in place, unchanged and in order; the message
//!   of a built-in filter is found from an index, whatever the number of
//!   messages for others (see [`core`]).
//! - **Waiting.** `recv` waits in the host, holding no thread there and
//!   polling nowhere; `recv_timeout` with a deadline; `try_recv` answers
//!   `Ok(None)` when there is nothing. A send to a full bounded queue waits
//!   as built ([`QueueBuilder::send_timeout`]), then fails with
//!   [`SendError::Full`] handing the message back; `try_send` fails at once.
//! - **Join and poison pills.** [`Queue::join`] waits until every message
//!   sent was received (or acknowledged with [`Queue::task_done`], with
//!   [`QueueBuilder::explicit_ack`]). `Die` messages stop children;
//!   [`Queue::close`] ends the queue: every receiver gets
//!   [`RecvError::Closed`] once it drained what is meant for it.
//! - **Losing nothing.** A message for a receiver that is gone (its
//!   process killed while it waited, its async receive dropped, which
//!   cancels it) goes to the next receiver, or stays in its place. Delivery
//!   is at most once in one window: a message already on its way to a
//!   receiver when it went is received by nobody (see
//!   [`Queue::recv_by_async`]).
//! - **Ids are capabilities.** A queue's id is 128 random bits: a program
//!   reaches the queue only if it was given the id (and holds the host's
//!   key). A queue hosted in an existing server stays in its table until
//!   that server's process exits.
//! - **Other programs.** The data operations are services of the host
//!   ([`wire::services`]): a program of another build holding the key
//!   opens the queue with [`Queue::open_data_only`].
//! - **Batches.** [`Queue::send_batch`] and [`Queue::recv_batch`] move many
//!   messages in one round trip; a [`BufferedSender`] ([`Queue::buffered`])
//!   takes one message at a time and sends batches, one in flight while the
//!   next fills. A batch that got no answer (the host went away) comes back
//!   as [`BatchSendError::unknown`]: it may have been accepted.

// Examples are tested as code: a warning in one fails the build.
#![doc(test(attr(deny(warnings))))]

mod codec;
pub mod core;
mod error;
mod host;
mod message;
mod pipe;
mod queue;
mod sender;
mod sys;
pub mod wire;

pub use error::{BatchSendError, Error, RecvError, SendError};
pub use message::{Message, Request};
pub use pipe::{MAX_MESSAGE, PipeEnd, RecvFuture, pipe};
pub use queue::{Queue, QueueBuilder};
pub use sender::BufferedSender;
pub use wire::Pick;
