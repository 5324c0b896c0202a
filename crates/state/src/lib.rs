//! A global state for many processes.
//!
//! (Crate guide: see below once the serving layer lands.)

mod codec;
mod error;
mod hub;
mod read;
pub mod store;
pub mod txn;

pub use error::{Aborted, Compacted, Direction, Failure, StateError, ValueError};
pub use hub::Peek;
pub use read::Read;
pub use store::{Change, Entry, Event, Revision, Snapshot, Store, View};
