//! [`StateError`], the error of every state operation, and its parts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::{Revision, Snapshot};

/// Whether a value failed to encode or to decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// Turning a value into the bytes the store keeps.
    Encode,
    /// Reading the stored bytes as a value of the asked type.
    Decode,
}

/// A value that could not be encoded, or stored bytes that are not a value
/// of the asked type (a typed `get::<T>` of a key holding another type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("cannot {} key {key:?} as {type_name}: {message}", match .direction { Direction::Encode => "encode", Direction::Decode => "decode" })]
pub struct ValueError {
    /// The key.
    pub key: String,
    /// The type asked for (`std::any::type_name`).
    pub type_name: String,
    /// Encoding or decoding.
    pub direction: Direction,
    /// Why, as the codec said it.
    pub message: String,
}

/// A function applied with `atomic` failed: the state was rolled back, and
/// this is its error's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("the atomic update failed and was rolled back: {message}")]
pub struct Aborted {
    /// What the function's error said (its `Display`).
    pub message: String,
}

/// A watcher asked for changes the bounded history no longer holds. Nothing
/// was skipped silently: here is the state as it is now, to start over from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "the history no longer holds the changes after revision {asked} (it starts after {oldest}); \
     the state is now at revision {}", .snapshot.revision
)]
pub struct Compacted {
    /// The revision the watcher had seen.
    pub asked: Revision,
    /// Changes after this revision are still in the history.
    pub oldest: Revision,
    /// The watched namespace now, with the current revision.
    pub snapshot: Snapshot,
}

/// How a process of a context ended when it failed.
///
/// ```
/// use processional_state::{Context, Failure, State, StateError, func};
/// # fn main() -> Result<(), StateError> {
/// let context = Context::new()?;
/// let p = context.spawn(func!(|_: State, _: ()| Err::<(), _>("no input")), ())?;
/// match p.wait(None) {
///     Err(StateError::Process { failure: Failure::Error(message), .. }) => assert_eq!(message, "no input"),
///     other => panic!("unexpected: {other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// Its function returned an error with this message.
    Error(String),
    /// Its function panicked with this message.
    Panic(String),
    /// It exited with this code before answering.
    Exit(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It was lost otherwise (connection broken, stopped).
    Lost(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(message) => write!(f, "returned an error: {message}"),
            Failure::Panic(message) => write!(f, "panicked: {message}"),
            Failure::Exit(code) => write!(f, "exited with code {code}"),
            Failure::Signal(signal) => write!(f, "was killed by signal {signal}"),
            Failure::Lost(why) => write!(f, "was lost: {why}"),
        }
    }
}

/// The error of a state operation.
///
/// ```
/// use std::time::Duration;
/// use processional_state::StateError;
/// # fn main() -> Result<(), StateError> {
/// # let context = processional_state::Context::new()?;
/// let state = context.state();
/// state.set("n", "not a number")?;
/// assert!(matches!(state.get::<u32>("n"), Err(StateError::Value(_))));
/// let waited = state.when_not_none("missing", Some(Duration::from_millis(20)));
/// assert!(matches!(waited, Err(StateError::TimedOut { .. })));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A value could not be encoded, or a key holds another type.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// An atomic update failed; the state was rolled back.
    #[error(transparent)]
    Aborted(#[from] Aborted),
    /// A watcher fell further behind than the history reaches.
    #[error(transparent)]
    Compacted(Box<Compacted>),
    /// A wait with a timeout ran out (a watcher, a ping, a context's wait).
    #[error("{operation} timed out after {after:?}")]
    TimedOut {
        /// What was waited for.
        operation: String,
        /// The time it was given.
        after: Duration,
    },
    /// A process of a context failed (after its retries, if any).
    #[error("process {name} (pid {pid}) {failure}")]
    Process {
        /// Its name in the context (`"<function>#<n>"`).
        name: String,
        /// Its process id (of the last try).
        pid: u32,
        /// How it ended.
        failure: Failure,
    },
    /// The server answered a request with an answer of another request (a
    /// server of an incompatible version).
    #[error("the state server answered {answer} to a {request} request")]
    UnexpectedAnswer {
        /// The request's kind.
        request: &'static str,
        /// The answer's kind.
        answer: String,
    },
    /// The context was stopped before the process finished.
    #[error("the context was stopped")]
    Stopped,
    /// The server, or the connection to it, failed.
    #[error(transparent)]
    Runtime(#[from] processional_task::Error),
    /// A wait or watcher was refused: this connection (one per process and
    /// server) already has as many waits and watch polls parked on the
    /// server as it may ([`ContextBuilder::max_waits`](crate::ContextBuilder::max_waits)).
    #[error("too many waits parked on the state server by this connection (at most {limit})")]
    TooManyWaits {
        /// How many one connection may park.
        limit: usize,
    },
    /// An operating-system call of the context failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl From<Compacted> for StateError {
    fn from(compacted: Compacted) -> Self {
        StateError::Compacted(Box::new(compacted))
    }
}

impl StateError {
    /// The exit code of a failed context process, if it exited with one.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            StateError::Process {
                failure: Failure::Exit(code),
                ..
            } => Some(*code),
            _ => None,
        }
    }
}

/// What a server-side operation answers when it fails: the serializable
/// kinds of [`StateError`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum WireError {
    Value(ValueError),
    Aborted(Aborted),
    Compacted(Box<Compacted>),
    /// The waiter was given up by its caller (who no longer listens).
    Cancelled,
    /// Its connection has as many waits and polls parked as it may.
    TooManyWaits {
        limit: u64,
    },
}

impl From<WireError> for StateError {
    fn from(error: WireError) -> Self {
        match error {
            WireError::Cancelled => StateError::Runtime(processional_task::Error::Cancelled),
            WireError::Value(error) => StateError::Value(error),
            WireError::Aborted(error) => StateError::Aborted(error),
            WireError::Compacted(error) => StateError::Compacted(error),
            WireError::TooManyWaits { limit } => StateError::TooManyWaits {
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
            },
        }
    }
}

impl From<ValueError> for WireError {
    fn from(error: ValueError) -> Self {
        WireError::Value(error)
    }
}
