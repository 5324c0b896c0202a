//! The thread runtime of processional: run a function on another thread as
//! easily as calling it here, and get its value or its error back.
//!
//! **Internal crate.** This is a layer of [processional](https://docs.rs/processional);
//! its API is not stable and may change in any release. Depend on the
//! `processional` crate, which re-exports what users need (this crate as
//! `processional::thread`).
//!
//! ```
//! use processional_thread::{SlaveThread, thread};
//!
//! fn heavy_work() -> u64 {
//!     (0..1_000_000u64).sum()
//! }
//!
//! # fn main() -> processional_thread::Result<()> {
//! let task = thread(|| heavy_work());
//! println!("and the result is ...");
//! println!("{}", task.wait()?);
//!
//! let slave = SlaveThread::new();
//! let resource = slave.wrap(|| (0..1_000_000u64).collect::<Vec<_>>()); // lives on the slave thread
//! let sum = resource.schedule(|v| v.iter().sum::<u64>());
//! let product = resource.schedule(|v| v.iter().product::<u64>());
//! println!("summing");
//! println!("multiplying");
//! println!("sum is {}", sum.wait()?);
//! println!("product is {}", product.wait()?);
//! # Ok(())
//! # }
//! ```
//!
//! # Tasks
//!
//! Every call returns a [`Task`] (from `processional-task`, re-exported here
//! with the [`Error`] type and cancellation, as are [`Completer`] and
//! [`Driver`] for other runtimes): [`wait`](Task::wait) for its value,
//! [`wait_timeout`](Task::wait_timeout) (which hands the task back if time
//! runs out), poll [`is_finished`](Task::is_finished), or `.await` it under
//! any executor: the thread that completes the call wakes the future, with
//! no polling loop and no helper thread.
//!
//! A call's failure is an [`Error`], one enum for the whole library: a panic
//! comes back as [`Error::Panicked`] with its message and location (the
//! panic is not printed, and never takes the caller down), a cancelled call
//! as [`Error::Cancelled`], a call refused or dropped by a stopped executor
//! as [`Error::Stopped`]. Errors of your own travel as the value: use a
//! `Task<Result<T, E>>`.
//!
//! A task dropped without being waited for is detached: the call runs on.
//! If it fails, the error is reported once through the [`log`] facade
//! (`log::error!`), never silently lost and never printed by the library.
//!
//! # `thread(f)` and thread reuse
//!
//! [`thread`] runs `f` on a thread from a cache: idle threads left by earlier
//! calls are reused, and exit after [`IDLE_TIMEOUT`] without work. This makes
//! `thread(f).wait()` a fraction of the cost of `std::thread::spawn(f).join()`.
//! The consequence: **thread-local variables persist between calls** that
//! land on the same thread, and their destructors run only when the thread
//! exits. A call that needs pristine thread-locals, or a long-lived thread of
//! its own, asks for a dedicated thread with [`Builder::dedicated`]; the
//! [`Builder`] also sets the name and the stack size.
//!
//! # Slave threads
//!
//! A [`SlaveThread`] owns resources and runs orders one at a time, in FIFO
//! order: [`invoke`](SlaveThread::invoke) waits for the value (and runs at
//! once when called from the slave thread itself),
//! [`schedule`](SlaveThread::schedule) returns a task, and
//! [`wrap`](SlaveThread::wrap) creates an object on the slave thread and
//! returns a [`Bound`] handle through which to call it, even when the object
//! is not `Send`. The thread stops when its last handle is dropped, after
//! running what is queued; [`close`](SlaveThread::close) and
//! [`abort`](SlaveThread::abort) stop it on purpose. An existing thread (a
//! GUI main loop, say) can serve a slave itself: see [`SlaveThread::manual`].
//!
//! # Cancellation
//!
//! Rust cannot kill a thread safely: the thread's locks, allocations and
//! data structures would be left half-updated. Cancellation is therefore
//! cooperative. Every call has a [`CancelToken`]; [`Task::cancel`] sets it,
//! and the call sees it at its next [`checkpoint`], which returns
//! [`Error::Cancelled`] for the call to propagate with `?`. A call that has
//! not started yet when cancelled does not run at all. A call that never
//! checks runs to its end. [`Task::terminate`] and
//! [`SlaveThread::terminate`] cancel, then wait a bounded time and report
//! whether the call or thread ended.
//!
//! # For runtimes
//!
//! Other runtimes of processional complete tasks from elsewhere (a socket
//! reader, say): [`Task::pending`] gives a task and its [`Completer`];
//! [`Task::pending_driven`] lets the waiting thread make progress itself
//! through a [`Driver`]; [`catch_panic`] and [`with_token`] run calls the
//! way this crate does.

// Examples are tested as code: a warning in one fails the build.
#![doc(test(attr(deny(warnings))))]

mod bound;
mod call;
mod identity;
mod pool;
mod slave;
#[cfg(test)]
mod test_log;

pub use bound::Bound;
pub use pool::{Builder, IDLE_TIMEOUT, thread};
pub use processional_task::{
    CancelToken, Completer, Driver, Error, ExitReason, KeyFileProblem, PanicReport, RemoteError,
    RemoteErrorKind, Result, Task, catch_panic, checkpoint, current_token, set_capture_backtraces,
    with_token,
};
pub use slave::{SlaveBuilder, SlaveDriver, SlaveThread};
