//! processional: call a function in another thread, another process, or a
//! server on another machine as easily as calling it here.
//!
//! ```
//! use processional::func;
//! # fn main() -> Result<(), processional::Error> {
//! // A function on another thread: its value, or its panic as an error.
//! let task = processional::thread(|| (0..1_000_000u64).sum::<u64>());
//! assert_eq!(task.wait()?, 499_999_500_000);
//!
//! // A thread that keeps a resource and takes orders.
//! let slave = processional::SlaveThread::new();
//! let resource = slave.wrap(|| (0..1_000_000u64).collect::<Vec<_>>());
//! let sum = resource.schedule(|v| v.iter().sum::<u64>());
//! assert_eq!(sum.wait()?, 499_999_500_000);
//!
//! // The same across a process boundary: functions sent to another process
//! // are written with `func!`, which refuses any closure that captures.
//! let process = processional::slave()?;
//! let resource = process.wrap(func!(|| (0..1_000_000u64).collect::<Vec<_>>()))?;
//! let product = resource.schedule(func!(|v: &mut Vec<u64>| v.iter().product::<u64>()));
//! assert_eq!(product.wait()?, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # The layers
//! This crate re-exports the runtimes; each layer is also a crate of its own:
//!
//! | crate | what it holds |
//! |---|---|
//! | [`proto`] (`processional-proto`) | the wire format: frames, messages, the incremental decoder |
//! | [`transport`] (`processional-transport`) | unix/TCP connections, fd passing, authentication, the event loop |
//! | [`shm`] (`processional-shm`) | shared-memory segments, `ShmBuf`, `ShmVec`, the segment pool |
//! | [`task`] (`processional-task`) | [`Task`], [`Completer`](task::Completer), [`TaskSet`], [`SharedTask`], cancellation, [`Error`]: what every runtime shares |
//! | [`thread`](mod@thread) (`processional-thread`) | [`thread()`], [`SlaveThread`], thread-bound objects |
//! | [`process`] (`processional-process`) | [`slave()`], [`SlaveProcess`], [`Remote`] |
//!
//! # Threads
//! [`thread()`] runs a closure on a pooled thread and returns its [`Task`];
//! [`SlaveThread`] owns resources and runs orders in FIFO order
//! (`invoke`, `schedule`, `wrap`). Cancellation is cooperative: a task calls
//! [`checkpoint()`] where stopping is safe, since Rust cannot kill a thread.
//!
//! # Many tasks
//! Every runtime hands out a [`Task`]. A [`TaskSet`] takes tasks of any of
//! them (threads, slave processes, servers) and gives each back as soon as
//! it finishes, blocking or as an async stream; [`Task::shared`] makes a
//! [`SharedTask`] that many can wait for. Neither starts a thread.
//!
//! # Processes
//! [`slave()`] re-executes this program as a slave process. Tasks sent to it
//! are [`Func`]s, written with [`func!`]: a closure that captures nothing, or
//! a fn item (data travels as serde arguments: `invoke_with`,
//! `schedule_with`), and objects it keeps are reached through [`Remote`]
//! handles. The slave enters its serving loop before `main` runs
//! (feature `auto-init`, on by default); without that feature, call
//! [`init()`] first thing in `main`.
//!
//! # Servers
//! [`server()`] spawns a server (this same program) on a unix socket or TCP
//! address, [`client()`] connects to one, [`serve()`] runs one here. Clients
//! share objects by name ([`SlaveProcess::publish`], [`SlaveProcess::lookup`],
//! [`export()`]); every connection proves it holds the key first (see the
//! README's security section).
//!
//! # Shared memory
//! [`ShmBuf`], [`ShmVec`] and [`ShmSlice`] inside arguments and values travel
//! to processes on this host as file descriptors: the receiver maps the same
//! pages, sealed read-only. Large encoded payloads (say a big `Vec<u8>`) go
//! through a pooled shared-memory segment automatically.
//!
//! # Workers
//! [`worker`] puts one API over threads, processes and remote processes
//! (`Worker`), feeds a worker a stream of inputs (`PersistentWorker`), and
//! spreads inputs over a pool of mixed workers that survives a worker's
//! death (`Pool`); `worker::spawn_server` (or `PROCESSIONAL_SERVE=addr`)
//! makes a remote-worker server.

pub use processional_process as process;
pub use processional_proto as proto;
pub use processional_shm as shm;
pub use processional_task as task;
pub use processional_thread as thread;
pub use processional_transport as transport;
pub use processional_worker as worker;

pub use processional_process::{
    ClientBuilder, Func, ItemSink, ItemStream, Later, NobodyListening, Output, Remote, Reply,
    ServerBuilder, ServerHandle, SlaveProcess, SlaveProcessBuilder, Termination, TrySendError,
    client, export, fingerprint, func, init, live_objects, reply_later, runtime_dir, serve, server,
    slave,
};
pub use processional_shm::{SharedMutBuf, ShmBuf, ShmSlice, ShmVec};
pub use processional_task::{
    AuthFailure, CancelToken, CodecDirection, CodecError, Error, ExitReason, KeyFileProblem,
    PanicReport, RemoteError, RemoteErrorKind, Result, SharedResult, SharedTask, Task, TaskId,
    TaskSet, checkpoint,
};
pub use processional_thread::{
    Bound, Builder as ThreadBuilder, SlaveBuilder as SlaveThreadBuilder, SlaveDriver, SlaveThread,
    thread,
};
pub use processional_transport::{Address, Key};
