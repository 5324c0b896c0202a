//! Workers: one API over threads, processes and remote processes;
//! persistent workers fed a stream of inputs; pools of mixed workers that
//! survive a worker's death; and a remote-worker server any program of this
//! build can become.
//!
//! **Internal crate.** This is a layer of [processional](https://docs.rs/processional);
//! its API is not stable and may change in any release. Depend on the
//! `processional` crate, which re-exports what users need (this crate as
//! `processional::worker`).
//!
//! ```
//! use processional_worker::{PersistentWorker, Worker, WorkerKind, spawn_server};
//! use processional_process::func;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = spawn_server("tcp://127.0.0.1:0")?; // a remote-worker server, as a child
//! let tw = Worker::thread(func!(square), 1)?;
//! let pw = Worker::process(func!(square), 2)?;
//! let rw = Worker::remote(server.address(), func!(square), 3)?;
//! for w in [&tw, &pw, &rw] {
//!     w.wait(None);
//! }
//! assert_eq!((tw.result(), pw.result(), rw.result()), (Some(&1), Some(&4), Some(&9)));
//!
//! // The kind as a value, and a stream of inputs.
//! let kinds = [WorkerKind::Thread, WorkerKind::Process, WorkerKind::Remote(server.address().clone())];
//! let persistent = kinds
//!     .iter()
//!     .map(|k| PersistentWorker::spawn(k.clone(), func!(square)))
//!     .collect::<Result<Vec<_>, _>>()?;
//! for (w, x) in persistent.iter().cycle().zip(0..10) {
//!     w.enqueue(x)?;
//! }
//! let mut lines = Vec::new();
//! for w in &persistent {
//!     w.close();
//!     w.wait(None);
//!     lines.push(format!("{} {:?}", w.processed(), w.results().collect::<Result<Vec<_>, _>>()?));
//! }
//! assert_eq!(lines, ["4 [0, 9, 36, 81]", "3 [1, 16, 49]", "3 [4, 25, 64]"]);
//! # Ok(())
//! # }
//! ```
//!
//! # Targets
//! A target is a function every process of this program can run: a fn item
//! or a capture-free closure, made with `func!` (the process runtime's
//! [`Func`](processional_process::Func)), since process and remote workers
//! run it elsewhere. Its arguments, value and user state are serde values.
//! A target of one argument `Fn(A) -> R` is the common case; a stateful one
//! `Fn(&mut S, A) -> R` gets the worker's user state
//! ([`WorkerBuilder::state`]), whose final value comes back when the worker
//! ends. A target captures nothing and a remote worker's server runs this
//! same build: see [how it works and its limitations](https://docs.rs/processional/latest/processional/#how-it-works-and-limitations).
//!
//! # Kinds
//! [`WorkerKind::Thread`] runs on a slave thread of this process,
//! [`WorkerKind::Process`] in a slave process, and [`WorkerKind::Remote`]
//! in a child process that a remote-worker server starts for this worker
//! (forcing the worker kills only that child). [`spawn_server`] starts such
//! a server as a child of this program; `PROCESSIONAL_SERVE=tcp://0.0.0.0:6006 ./app`
//! turns any program of this build into one before its `main` (see
//! `processional_process::init`).
//!
//! # Stopping
//! [`Worker::terminate`] asks first: the target sees the request at
//! [`checkpoint`] and the worker ends with [`WorkerError::Terminated`].
//! After half the timeout, a process is terminated (asked, then SIGTERM,
//! then SIGKILL); a thread cannot be, and the outcome says so. A process
//! killed by a signal from outside ends with [`WorkerError::Killed`].
//!
//! A [`RemoteContext`] registers a target on a server under an id, with
//! the default state of its workers; persistent workers made from it run
//! that target by id. Waiting on the context ends them all once the work
//! they sent is done (it is closed then); terminating it ends them at once.
//!
//! # Pools
//! A [`Pool`] spreads the inputs of a run over its workers in batches,
//! retries what a dead worker had in flight on the others, and fails with a
//! [`PoolError`] holding the partial results when no worker is left.

// Examples are tested as code: a warning in one fails the build.
#![doc(test(attr(deny(warnings))))]

mod context;
mod engine;
mod error;
mod host;
mod identity;
mod job;
mod persistent;
mod pool;
mod remote;
mod sys;
mod worker;

pub use context::RemoteContext;
pub use error::{EnqueueError, PoolError, Stop, WorkerError};
pub use host::Data;
pub use identity::{Identity, WorkerId, WorkerKind};
pub use job::checkpoint;
pub use persistent::{PersistentWorker, Results};
pub use pool::{Pool, PoolBuilder, PoolEvent, PoolRun};
pub use remote::{RemoteServer, remember_key, spawn_server};
pub use worker::{Worker, WorkerBuilder};
