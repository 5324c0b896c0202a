//! A global state for many processes: a map served by a state server, with
//! revisions, atomic updates, transactions, watchers that never miss a
//! change, and a process context.
//!
//! **Internal crate.** This is a layer of [processional](https://docs.rs/processional);
//! its API is not stable and may change in any release. Depend on the
//! `processional` crate, which re-exports what users need (this crate as
//! `processional::state`).
//!
//! ```
//! use processional_state::{Context, Read, State, StateError, func};
//!
//! fn eat_cookies(state: State, count: u32) -> Result<(), StateError> {
//!     for _ in 0..count {
//!         state.when_available("cookie", None)?; // waits, without polling
//!         state.remove::<String>("cookie")?; // take it
//!         state.increment("eaten", 1)?;
//!     }
//!     Ok(())
//! }
//!
//! # fn main() -> Result<(), StateError> {
//! let context = Context::new()?; // starts the state server
//! let state = context.state();
//! let eater = context.spawn(func!(eat_cookies), 3)?; // a process with its own State
//! for _ in 0..3 {
//!     state.when(func!(|s: &processional_state::Peek<'_>| !s.contains("cookie")), None)?;
//!     state.set("cookie", "Here's a cookie!")?;
//! }
//! eater.wait(None)?;
//! assert_eq!(state.get::<i64>("eaten")?, Some(3));
//! # Ok(())
//! # }
//! ```
//!
//! # The state
//! A [`State`] is a handle to one *namespace* of the server: a map from
//! string keys to values of any serde type, with the dict API (`get`,
//! `set`, `remove`, `contains`, `len`, `keys`, `values`, `items`, `clear`,
//! `update`, `setdefault`, `pop`, `popitem`, `copy`, `to_map`, `eq_map`).
//! Each call is one atomic request. Reads are typed: a key holding another
//! type is a [`ValueError`]. Keys iterate in key order (byte order of the
//! UTF-8 keys). Every change of any namespace gets the next server-wide
//! [`Revision`]; [`Snapshot`]s carry theirs. The handle is `Serialize`:
//! passed to another process it connects there to the same server.
//!
//! # Atomic updates and transactions
//! [`State::atomic`] runs a function (shipped with `func!`, same build) in
//! the server on a [`View`] of the namespace, with exclusive access; if it
//! fails or panics, nothing it did stays. [`txn::Txn`] is the code-free
//! alternative, etcd-style: compare values, revisions or existence of
//! several keys, then apply one set of writes or another. The data
//! operations, transactions and data waits are services, open to a
//! [data-only](State::connect_data_only) handle of another build; what
//! ships code (`atomic`, `when`, `Context::spawn`) needs the same build and
//! a capture-free `func!` (see [how it works and its limitations](https://docs.rs/processional/latest/processional/#how-it-works-and-limitations)).
//!
//! # Watchers
//! `when_change`, `when`, `when_equal`, `when_not_equal`, `when_none`,
//! `when_not_none` and `when_available` wait, with an optional timeout, for
//! a condition, and return the [`Snapshot`] that satisfied it. A waiting
//! call is a deferred reply kept in the server: no polling, no server
//! thread. A [`Watcher`] yields changes: buffered (every change after its
//! start revision, fetched in batches from the server's bounded history) or
//! live (the latest change after each `next()`). A watcher further behind
//! than the history gets [`StateError::Compacted`] with the state now,
//! never a silent gap.
//!
//! The server's bounds are set by whoever starts it ([`ContextBuilder`]),
//! never by a client's request: the history keeps at most
//! [`store::DEFAULT_HISTORY`] changes and [`store::DEFAULT_HISTORY_BYTES`]
//! (64 MiB) of them by default; one watcher poll brings at most
//! [`MAX_POLL_CHANGES`] changes and [`MAX_POLL_BYTES`]; one connection (one
//! per process) may park at most [`DEFAULT_MAX_WAITS`] waits and polls at
//! once, and gets [`StateError::TooManyWaits`] past that.
//!
//! # The context
//! A [`Context`] starts (or attaches to) the server, spawns processes that
//! get a `State`, waits for them within one budget, retries them
//! ([`Retry`]), stops each with its whole process tree, and maps a function
//! over worker processes ([`Context::map`]).
//!
//! The layers: [`store`] is the pure core (no process, no I/O), the hub
//! adds the waiters, and the server module serves them.

// Examples are tested as code: a warning in one fails the build.
#![doc(test(attr(deny(warnings))))]

mod codec;
mod context;
mod error;
mod hub;
mod read;
mod server;
mod state;
pub mod store;
mod sys;
pub mod txn;
mod wire;

pub use context::{Context, ContextBuilder, DEFAULT_GRACE, MAP_NAMESPACE, Process, Retry};
pub use error::{Aborted, Compacted, Direction, Failure, StateError, ValueError};
pub use hub::{DEFAULT_MAX_WAITS, MAX_POLL_BYTES, MAX_POLL_CHANGES, Peek};
pub use processional_process::func;
pub use read::Read;
pub use state::{AtomicFailed, DEFAULT_NAMESPACE, State, Watcher};
pub use store::{Change, Entry, Event, Revision, Snapshot, Store, View};
