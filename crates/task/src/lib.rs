//! Tasks of processional, shared by every runtime: the handle to one call
//! ([`Task`]), the side that delivers its outcome ([`Completer`]), sets of
//! tasks taken back as they finish ([`TaskSet`]), tasks many may wait for
//! ([`SharedTask`]), cooperative cancellation, and the library-wide
//! [`Error`].
//!
//! **Internal crate.** This is a layer of [processional](https://docs.rs/processional);
//! its API is not stable and may change in any release. Depend on the
//! `processional` crate, which re-exports what users need (this crate as
//! `processional::task`).
//!
//! ```
//! use processional_task::{Task, TaskSet};
//!
//! # fn main() -> processional_task::Result<()> {
//! // A runtime makes a task and hands its completer to whatever runs the call.
//! let (task, completer) = Task::pending();
//! std::thread::spawn(move || completer.complete(Ok((1..=10u64).product::<u64>())));
//! assert_eq!(task.wait()?, 3_628_800);
//!
//! // Many tasks, taken back as they finish, whichever finishes first.
//! let mut set = TaskSet::new();
//! for n in 1..=4u64 {
//!     let (task, completer) = Task::pending();
//!     std::thread::spawn(move || completer.complete(Ok(n * n)));
//!     set.insert(task);
//! }
//! let mut total = 0;
//! for (_id, outcome) in &mut set {
//!     total += outcome?;
//! }
//! assert_eq!(total, 30);
//!
//! // One task, many waiters: each gets a clone of the value.
//! let (task, completer) = Task::pending();
//! let shared = task.shared();
//! let other = shared.clone();
//! completer.complete(Ok(String::from("hello")));
//! assert_eq!(shared.wait().unwrap(), "hello");
//! assert_eq!(other.wait().unwrap(), "hello");
//! # Ok(())
//! # }
//! ```
//!
//! The thread runtime (`processional-thread`: `thread()`, `SlaveThread`) and
//! the process runtime (`processional-process`: slaves, servers, clients)
//! both hand out `Task<T>`s and report failures as [`Error`]s; this crate
//! knows neither. They re-export what is here, so `processional_thread::Task`
//! and `processional::Task` are this crate's [`Task`].
//!
//! # Tasks
//!
//! [`wait`](Task::wait) for a task's value,
//! [`wait_timeout`](Task::wait_timeout) (which hands the task back if time
//! runs out), poll [`is_finished`](Task::is_finished), or `.await` it under
//! any executor: the thread that completes the call wakes the future, with
//! no polling loop and no helper thread.
//!
//! A task dropped without being waited for is detached: the call runs on.
//! If it fails, the error is reported once through the [`log`] facade
//! (`log::error!`); when no logger is installed (`log::max_level()` is
//! `Off`, the default of a program that installs none), it is printed once
//! to standard error instead, prefixed `processional:`. It is never lost
//! silently.
//! A [`Completer`] dropped without completing completes its task with
//! [`Error::Stopped`]: a task never hangs because its call was lost.
//!
//! # Many tasks, one task for many
//!
//! A [`TaskSet`] holds tasks of any runtime (a thread's and a slave
//! process's alike, both are `Task<T>`) and gives each back, with the
//! [`TaskId`] its insertion returned, as soon as it finishes: blocking (it
//! is an [`Iterator`]; [`next_timeout`](TaskSet::next_timeout)) or async
//! ([`next_async`](TaskSet::next_async), or as a
//! [`Stream`](https://docs.rs/futures-core/0.3/futures_core/stream/trait.Stream.html)).
//!
//! [`Task::shared`] makes a [`SharedTask`]: clone it, and every clone can
//! wait or `.await`, each getting a clone of the value. Its error is an
//! `Arc<Error>` (see [`SharedResult`]): [`Error`] is not `Clone`, because
//! some variants keep their `std::io::Error` source.
//!
//! Neither starts a thread: both register a waker with their tasks, and
//! the thread that completes a task wakes them.
//!
//! # Errors
//!
//! A call's failure is an [`Error`], one enum for the whole library: a panic
//! comes back as [`Error::Panicked`] with its message and location (see
//! [`catch_panic`]), a cancelled call as [`Error::Cancelled`], a failure in
//! another process as [`Error::Remote`] (a [`RemoteError`] of the wire
//! format), a process that ended under a call as [`Error::Exited`] with its
//! [`ExitReason`], a broken connection as [`Error::Disconnected`] (both
//! answer [`Error::is_worker_lost`]). Errors of your own travel as the
//! value: use a `Task<Result<T, E>>`. With the feature `shm` (the process
//! runtime turns it on), `Error::Shm` wraps shared-memory errors.
//!
//! Every variant names the failure it reports, and where: a connection that
//! fails is [`Error::Connect`] with its address, a handshake that runs out
//! of time [`Error::TimedOut`], a wrong key [`Error::Auth`] (an
//! [`AuthFailure`]), another build [`Error::Fingerprint`], a value that does
//! not cross [`Error::Codec`] with its type name and a [`CodecError`] that
//! keeps the message of the value's own `Serialize` or `Deserialize`. Causes
//! are kept as `source`s; those of the layers this crate does not know (the
//! transport's) are boxed ([`BoxError`]), so this crate knows no sockets.
//!
//! ```
//! use processional_task::{CodecDirection, CodecError, Error};
//!
//! let error = Error::codec::<u32>(CodecDirection::Decode, CodecError::TrailingBytes { count: 2 });
//! assert_eq!(error.to_string(), "cannot decode a value of type u32: 2 trailing bytes after the value");
//! let source = std::error::Error::source(&error).expect("the codec error");
//! assert!(source.downcast_ref::<CodecError>().is_some());
//! ```
//!
//! # Cancellation
//!
//! Rust cannot kill a thread safely: the thread's locks, allocations and
//! data structures would be left half-updated. Cancellation is therefore
//! cooperative. Every call has a [`CancelToken`]; [`Task::cancel`] sets it,
//! and the call sees it at its next [`checkpoint`], which returns
//! [`Error::Cancelled`] for the call to propagate with `?`.
//!
//! # For runtimes
//!
//! [`Task::pending`] gives a task and its [`Completer`];
//! [`Task::pending_driven`] lets the waiting thread make progress itself
//! through a [`Driver`] (read a socket, say); [`Task::with_call`] stores a
//! queued call in its task's own allocation, as a [`Call`] to run or drop
//! (its [`Canceller`] cancels it while it runs); [`with_token`] installs a
//! call's token for [`checkpoint`]; [`catch_panic`] turns a panic into
//! [`Error::Panicked`] without printing it; [`Backoff`] is the
//! spin-then-yield schedule waiters use before they block.

// Examples are tested as code: a warning in one fails the build.
#![doc(test(attr(deny(warnings))))]

mod backoff;
mod cancel;
mod error;
mod exit;
mod panic;
mod set;
mod shared;
mod task;
#[cfg(test)]
mod test_log;

pub use backoff::Backoff;
pub use cancel::{CancelToken, checkpoint, current_token, with_token};
pub use error::*;
pub use exit::{ExitReason, Termination};
pub use panic::{catch_panic, set_capture_backtraces};
pub use set::{TaskId, TaskSet};
pub use shared::{SharedResult, SharedTask};
pub use task::{Call, Canceller, Completer, Driver, Task};
