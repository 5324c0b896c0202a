//! The errors of workers and pools: [`WorkerError`], [`EnqueueError`],
//! [`PoolError`], and [`Stop`] (how a terminated worker was stopped).

use std::collections::BTreeMap;
use std::fmt;

use processional_task::{Error, ExitReason, Termination};

use crate::identity::WorkerId;
use crate::job::Failure;

/// How [`terminate`](crate::Worker::terminate) stopped a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The target saw the request at a [`checkpoint`](crate::checkpoint)
    /// (or had not started the input yet).
    Cancelled,
    /// The target did not stop in time: its process was stopped this way
    /// (asked, then SIGTERM, then SIGKILL), or, for a thread, the outcome is
    /// [`Termination::Unstoppable`].
    Forced(Termination),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Cancelled => f.write_str("it stopped at a checkpoint"),
            Stop::Forced(Termination::Unstoppable) => {
                f.write_str("a thread that ignores its cancellation: left running, unstoppable")
            }
            Stop::Forced(termination) => write!(f, "forced: {termination:?}"),
        }
    }
}

/// Why a worker, or one input of it, has no value.
///
/// A worker's error never blocks to read ([`Worker::error`](crate::Worker::error)),
/// and says whether the worker itself is gone
/// ([`is_worker_lost`](Self::is_worker_lost)) or only one input failed:
///
/// ```
/// use processional_worker::{Worker, WorkerError};
/// use processional_process::func;
///
/// # fn main() -> Result<(), WorkerError> {
/// let worker = Worker::process(func!(|x: u32| -> u32 { assert!(x > 0, "x is zero"); x }), 0)?;
/// worker.wait(None);
/// match worker.error() {
///     Some(WorkerError::Panicked { message }) => assert!(message.contains("x is zero")),
///     other => panic!("unexpected: {other:?}"),
/// }
/// assert!(!worker.error().is_some_and(WorkerError::is_worker_lost)); // the process survived
///
/// // Killed from outside: the signal is in the error.
/// let worker = Worker::process(func!(|_: ()| loop {
///     processional_worker::checkpoint();
///     std::thread::sleep(std::time::Duration::from_millis(10));
/// }), ())?;
/// let pid = worker.pid().expect("a process worker has a pid");
/// std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill");
/// worker.wait(None);
/// let error = worker.error().expect("killed");
/// assert_eq!(error.signal(), Some(9));
/// assert!(error.is_worker_lost());
/// # let _: Option<&()> = worker.result();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// The target panicked.
    #[error("the target panicked: {message}")]
    Panicked {
        /// The panic's message.
        message: String,
    },
    /// The worker was ended by `terminate`.
    #[error("the worker was terminated ({how})")]
    Terminated {
        /// How it was stopped.
        how: Stop,
    },
    /// The worker's process was killed by a signal nobody here sent (e.g.
    /// SIGTERM or SIGKILL from outside).
    #[error("the worker's process was killed by signal {signal}{}", signal_name(*signal))]
    Killed {
        /// The signal number.
        signal: i32,
    },
    /// The worker's process exited under the call.
    #[error("the worker's process exited with code {code}")]
    Exited {
        /// Its exit code.
        code: i32,
    },
    /// A persistent worker that stops at failures had stopped at an
    /// earlier input: this one never ran.
    #[error("the worker stopped at an earlier failure before this input ran")]
    NotRun,
    /// The server of a remote worker lost it another way.
    #[error("the remote worker was lost: {message}")]
    Lost {
        /// What the server said.
        message: String,
    },
    /// The runtime failed: spawning, connecting, a broken connection, a
    /// value that could not be encoded, …
    #[error("the worker's runtime failed: {0}")]
    Runtime(#[source] Error),
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

impl From<Error> for WorkerError {
    fn from(error: Error) -> Self {
        match error {
            Error::Exited(ExitReason::Signal(signal)) => WorkerError::Killed { signal },
            Error::Exited(ExitReason::Code(code)) => WorkerError::Exited { code },
            Error::Panicked(_) => WorkerError::Panicked {
                message: error.message().unwrap_or("panic").to_owned(),
            },
            error if error.is_panic() => WorkerError::Panicked {
                message: error.message().unwrap_or("panic").to_owned(),
            },
            // Cancelled before it ran: by `terminate`.
            error if error.is_cancelled() => WorkerError::Terminated {
                how: Stop::Cancelled,
            },
            other => WorkerError::Runtime(other),
        }
    }
}

impl WorkerError {
    /// Whether `terminate` ended the worker.
    pub fn is_terminated(&self) -> bool {
        matches!(self, WorkerError::Terminated { .. })
    }

    /// The signal that killed the worker's process, if one did.
    pub fn signal(&self) -> Option<i32> {
        match self {
            WorkerError::Killed { signal } => Some(*signal),
            _ => None,
        }
    }

    /// Whether the worker itself is gone (its process or its connection),
    /// rather than one input failing.
    pub fn is_worker_lost(&self) -> bool {
        match self {
            WorkerError::Killed { .. } | WorkerError::Exited { .. } | WorkerError::Lost { .. } => {
                true
            }
            WorkerError::Runtime(error) => error.is_worker_lost(),
            _ => false,
        }
    }

    pub(crate) fn from_failure(failure: Failure) -> Self {
        match failure {
            Failure::Panicked(message) => WorkerError::Panicked { message },
            Failure::Terminated => WorkerError::Terminated {
                how: Stop::Cancelled,
            },
            Failure::NotRun => WorkerError::NotRun,
            Failure::Exited {
                signal: Some(signal),
                ..
            } => WorkerError::Killed { signal },
            Failure::Exited {
                code: Some(code), ..
            } => WorkerError::Exited { code },
            Failure::Exited { .. } => WorkerError::Lost {
                message: "its process ended".into(),
            },
            Failure::Lost(message) => WorkerError::Lost { message },
        }
    }

    /// Hands the worker error to a fresh value (errors are not `Clone`:
    /// a runtime error keeps its source), describing it when it cannot be
    /// copied exactly.
    pub(crate) fn duplicate(&self) -> WorkerError {
        match self {
            WorkerError::Panicked { message } => WorkerError::Panicked {
                message: message.clone(),
            },
            WorkerError::Terminated { how } => WorkerError::Terminated { how: *how },
            WorkerError::Killed { signal } => WorkerError::Killed { signal: *signal },
            WorkerError::Exited { code } => WorkerError::Exited { code: *code },
            WorkerError::NotRun => WorkerError::NotRun,
            WorkerError::Lost { message } => WorkerError::Lost {
                message: message.clone(),
            },
            WorkerError::Runtime(error) => WorkerError::Lost {
                message: error.to_string(),
            },
        }
    }
}

/// `enqueue` on a persistent worker that takes no more inputs: the input
/// comes back inside.
///
/// ```
/// use processional_worker::{EnqueueError, PersistentWorker, WorkerKind};
/// use processional_process::func;
///
/// # fn main() -> Result<(), processional_worker::WorkerError> {
/// let worker = PersistentWorker::spawn(WorkerKind::Thread, func!(|x: u32| x))?;
/// worker.close();
/// match worker.enqueue(7) {
///     Err(error @ EnqueueError::Closed(_)) => assert_eq!(error.into_inner(), 7),
///     other => panic!("unexpected: {other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(thiserror::Error)]
pub enum EnqueueError<T> {
    /// The worker was closed.
    #[error("the worker is closed: it takes no more inputs")]
    Closed(T),
    /// The worker ended (it failed, was terminated, or its process died).
    #[error("the worker has ended: it takes no more inputs")]
    Ended(T),
}

impl<T> EnqueueError<T> {
    /// The input that was not enqueued.
    pub fn into_inner(self) -> T {
        match self {
            EnqueueError::Closed(input) | EnqueueError::Ended(input) => input,
        }
    }
}

impl<T> fmt::Debug for EnqueueError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnqueueError::Closed(_) => f.write_str("Closed(..)"),
            EnqueueError::Ended(_) => f.write_str("Ended(..)"),
        }
    }
}

/// A pool run that could not give every input a result: its workers all
/// died (or the pool had none) before every input was consumed, or an input
/// failed on every attempt.
///
/// ```
/// use processional_worker::{PoolBuilder, WorkerKind};
/// use processional_process::func;
///
/// # fn main() -> Result<(), processional_worker::WorkerError> {
/// // One process worker, whose process exits at input 3; no retries.
/// let mut pool = PoolBuilder::new(func!(|x: u32| -> u32 { if x == 3 { std::process::exit(3) } x }))
///     .worker(WorkerKind::Process)
///     .batch_size(1)
///     .retries(0)
///     .spawn()?;
/// let error = pool.map(0..10).expect_err("the only worker died");
/// assert_eq!(error.partial.into_iter().collect::<Vec<_>>(), [(0, 0), (1, 1), (2, 2)]);
/// assert!(error.failed.contains_key(&3) || error.unconsumed.contains(&3));
/// assert!(error.workers[0].1.is_worker_lost());
/// assert_eq!(pool.alive(), 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PoolError<R> {
    /// The results that arrived, by input index.
    pub partial: BTreeMap<usize, R>,
    /// The inputs that failed on their last attempt, by input index.
    pub failed: BTreeMap<usize, WorkerError>,
    /// The inputs that never got an answer (no worker was left to run them).
    pub unconsumed: Vec<usize>,
    /// Each dead worker's error.
    pub workers: Vec<(WorkerId, WorkerError)>,
}

impl<R> fmt::Display for PoolError<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the pool run ended with {} results, {} failed inputs and {} unconsumed inputs ({} workers dead)",
            self.partial.len(),
            self.failed.len(),
            self.unconsumed.len(),
            self.workers.len()
        )
    }
}

impl<R: fmt::Debug> std::error::Error for PoolError<R> {}

/// For `?` in functions returning the library's one error: the
/// variants with a counterpart map to it (a killed process is
/// `Error::Exited`, a termination `Error::Cancelled`), a runtime error is
/// itself, and the rest is described in an `Error::Io`.
impl From<WorkerError> for Error {
    fn from(error: WorkerError) -> Self {
        match error {
            WorkerError::Runtime(error) => error,
            WorkerError::Killed { signal } => Error::Exited(ExitReason::Signal(signal)),
            WorkerError::Exited { code } => Error::Exited(ExitReason::Code(code)),
            WorkerError::Terminated { .. } => Error::Cancelled,
            other => Error::Io {
                context: other.to_string(),
                source: std::io::Error::other("worker failed"),
            },
        }
    }
}

impl<T> From<EnqueueError<T>> for Error {
    fn from(_: EnqueueError<T>) -> Self {
        Error::Stopped
    }
}
