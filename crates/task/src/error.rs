//! The one error type of processional, and the reports it carries.
//!
//! Every runtime (threads, processes, servers) reports failures of a call as an
//! [`Error`], so that it lives here, below the runtimes. User errors are not wrapped: they travel as the task's value
//! (`Task<Result<T, E>>`).

use std::fmt;
use std::time::Duration;

use crate::exit::ExitReason;

pub use processional_proto::{RemoteError, RemoteErrorKind};

/// A panic caught in a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanicReport {
    /// The panic payload, if it was a string; `"Box<dyn Any>"` otherwise.
    pub message: String,
    /// `file:line:column` of the panic, when the hook saw it.
    pub location: Option<String>,
    /// A backtrace captured at the panic, when `RUST_BACKTRACE` asks for one
    /// (or always, for panics in another process).
    pub backtrace: Option<String>,
}

impl fmt::Display for PanicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        Ok(())
    }
}

/// Why a key file is not trusted ([`Error::UntrustedKeyFile`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileProblem {
    /// The file belongs to another user.
    #[error("it belongs to uid {owner}, not to this user (uid {euid})")]
    NotOwned {
        /// The file's owner.
        owner: u32,
        /// This process's effective user id.
        euid: u32,
    },
    /// The file's group or other permission bits are set.
    #[error("its mode {mode:04o} lets the group or others in (chmod 600 it)")]
    OpenToOthers {
        /// The file's permission bits.
        mode: u32,
    },
}

/// Why a call, or an operation on a worker, failed.
///
/// The enum is `#[non_exhaustive]`: runtimes added later bring new variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The call panicked; the panic was caught in the thread that ran it.
    #[error("task panicked: {0}")]
    Panicked(PanicReport),
    /// The call observed its cancellation at a [`checkpoint`](crate::checkpoint).
    #[error("task cancelled")]
    Cancelled,
    /// The executor stopped (closed, aborted or dropped) before it ran the call,
    /// or refused it because it had already stopped.
    #[error("executor stopped before the task ran")]
    Stopped,
    /// A wait with a deadline ran out of time. The task itself is not affected.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// The call failed in another process: a panic, a decoding failure, an
    /// unknown object, … with the remote message, location and backtrace.
    #[error("remote {kind:?}: {message}{at}", kind = .0.kind, message = .0.message, at = .0.location.as_ref().map(|l| format!(" at {l}")).unwrap_or_default())]
    Remote(RemoteError),
    /// The process serving the call ended before answering.
    #[error("remote process ended ({0}) before the task completed")]
    Exited(ExitReason),
    /// The connection to the process serving the call broke before it
    /// answered.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// A value could not be serialized or deserialized on this side.
    #[error("codec error: {0}")]
    Codec(String),
    /// The peer broke the protocol, speaks another version, or refused the
    /// handshake (wrong key, wrong build, …).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The peer could not be authenticated, or refused our credentials.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// A key file this process will not use: someone other than this user
    /// could have written or read it.
    #[error("untrusted key file {}: {problem}", path.display())]
    UntrustedKeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        problem: KeyFileProblem,
    },
    /// The process listening on a unix socket runs as another user (neither
    /// this process's effective user nor root), so it may not be the server
    /// meant.
    #[error(
        "the server at {address} runs as uid {uid}; only uid {euid} (this user) or root is trusted"
    )]
    UntrustedServer {
        /// The address connected to.
        address: String,
        /// The server's effective user id when it started listening
        /// (`SO_PEERCRED`).
        uid: u32,
        /// This process's effective user id.
        euid: u32,
    },
    /// The peer runs another program or another build of it.
    #[error("build fingerprint mismatch: ours is {ours}, the peer's is {theirs} ({detail})")]
    Fingerprint {
        /// Our fingerprint, as displayed.
        ours: String,
        /// The peer's fingerprint, as displayed.
        theirs: String,
        /// Both programs' names and anything else useful.
        detail: String,
    },
    /// A shared-memory operation failed (creating, sealing or mapping a
    /// segment, writing a shared buffer, …).
    ///
    /// Present with the feature `shm`, which the process runtime turns on:
    /// a build with threads alone compiles no shared-memory code.
    #[cfg(feature = "shm")]
    #[error("shared memory: {0}")]
    Shm(#[from] processional_shm::ShmError),
    /// An operating-system operation (spawn, connect, bind, …) failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether this error means the call was cancelled, here or remotely.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled)
            || matches!(self, Error::Remote(r) if r.kind == RemoteErrorKind::Cancelled)
    }

    /// Whether this error is a panic, here or remotely.
    pub fn is_panic(&self) -> bool {
        matches!(self, Error::Panicked(_))
            || matches!(self, Error::Remote(r) if r.kind == RemoteErrorKind::Panicked)
    }

    /// The panic or remote-error message, if this error carries one.
    pub fn message(&self) -> Option<&str> {
        match self {
            Error::Panicked(report) => Some(&report.message),
            Error::Remote(remote) => Some(&remote.message),
            _ => None,
        }
    }
}

/// `Result` with processional's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
