//! The one error type of processional, and the reports it carries.
//!
//! Every runtime (threads, processes, servers) reports failures of a call as an
//! [`Error`], so that it lives here, below the runtimes. User errors are not wrapped: they travel as the task's value
//! (`Task<Result<T, E>>`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use processional_proto::{DebugLines, Report, backtrace_requested};

use crate::exit::ExitReason;

pub use processional_proto::{Fingerprint, RemoteError, RemoteErrorKind};

/// The `source` of an error raised by a layer this crate does not know: the
/// transport's `processional_transport::Error`, an address's
/// `AddressError`, a key's `KeyError`, postcard's error, … Downcast it
/// (`source.downcast_ref::<processional_transport::Error>()`) to look
/// inside; its `Display` is always part of the error's message.
///
/// The task crate knows no sockets (a program of threads alone compiles
/// none), so the errors of the process runtime's layers reach [`Error`]
/// boxed, under a variant that says what failed and names where.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A panic caught in a call.
///
/// Its `Debug`, what `unwrap()` prints, reads like std's report of a panic:
/// `the task panicked at <location>:`, the message on a line of its own,
/// then the backtrace as lines when `RUST_BACKTRACE` asks for one (else a
/// note on how to get it, if one was captured). The alternate form
/// (`{:#?}`) shows the fields.
///
/// ```
/// use processional_task::catch_panic;
///
/// let error = catch_panic(|| -> u8 { panic!("out of cheese") }).unwrap_err();
/// let report = format!("{error:?}");
/// assert!(report.starts_with("Panicked(the task panicked at "), "{report}");
/// assert!(report.contains(":\nout of cheese"), "{report}");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PanicReport {
    /// The panic payload, if it was a string; `"Box<dyn Any>"` otherwise.
    pub message: String,
    /// `file:line:column` of the panic, when the hook saw it.
    pub location: Option<String>,
    /// A backtrace captured at the panic, when `RUST_BACKTRACE` asks for one
    /// (or always, for panics in another process).
    pub backtrace: Option<String>,
}

impl fmt::Debug for PanicReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return write!(f, "{}", self.report(backtrace_requested()));
        }
        f.debug_struct("PanicReport")
            .field("message", &self.message)
            .field("location", &self.location)
            .field("backtrace", &DebugLines(self.backtrace.as_deref()))
            .finish()
    }
}

impl PanicReport {
    /// The report `Debug` prints, with the backtrace if `backtrace` (and one
    /// was captured), else a note on how to get it.
    pub fn report(&self, backtrace: bool) -> impl fmt::Display + '_ {
        Report {
            what: "the task panicked",
            message: &self.message,
            location: self.location.as_deref(),
            backtrace: self.backtrace.as_deref(),
            show_backtrace: backtrace,
            whose: "",
        }
    }
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
///
/// ```
/// use processional_task::KeyFileProblem;
///
/// let problem = KeyFileProblem::OpenToOthers { mode: 0o644 };
/// assert_eq!(problem.to_string(), "its mode 0644 lets the group or others in (chmod 600 it)");
/// ```
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

/// Why authentication with a peer failed ([`Error::Auth`]), which names
/// the peer and says who refused whom.
///
/// ```
/// use processional_task::{AuthFailure, Error};
///
/// let error = Error::Auth { peer: "tcp://db:7000".into(), failure: AuthFailure::PeerLacksKey };
/// assert!(error.to_string().contains("this process refused tcp://db:7000"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// This process refused the peer: the peer's proof does not match this
    /// process's key, so the two hold different keys (or the peer is not the
    /// process meant).
    #[error(
        "this process refused the peer: its proof does not match this process's key (the two hold different keys)"
    )]
    PeerLacksKey,
    /// The peer refused this process: our proof does not match its key.
    #[error("the peer refused this process's key: {detail}")]
    KeyRefused {
        /// Why, in the peer's words.
        detail: String,
    },
    /// No key was found to authenticate with.
    #[error("no key found (looked in {looked_in})")]
    NoKey {
        /// Where a key was looked for (API, environment, key file).
        looked_in: String,
    },
    /// A key was found but is not a key.
    #[error("the key in {origin} is malformed: {source}")]
    BadKey {
        /// Where it was found (`PROCESSIONAL_KEY`, a file, …).
        origin: String,
        /// Why it is malformed (`processional_transport::KeyError`).
        #[source]
        source: BoxError,
    },
}

/// Which way a value failed to cross ([`Error::Codec`]).
///
/// ```
/// use processional_task::CodecDirection;
///
/// assert_eq!(CodecDirection::Encode.to_string(), "encode");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodecDirection {
    /// Turning a value into bytes.
    Encode,
    /// Turning bytes into a value.
    Decode,
}

impl fmt::Display for CodecDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodecDirection::Encode => "encode",
            CodecDirection::Decode => "decode",
        })
    }
}

/// Why a value could not be encoded or decoded ([`Error::Codec`]).
///
/// The format's own error (postcard's) is kept as a boxed `source`, so that
/// this type does not depend on the format.
///
/// ```
/// use processional_task::{CodecDirection, CodecError, Error};
///
/// let error = Error::codec::<u32>(CodecDirection::Decode, CodecError::TrailingBytes { count: 2 });
/// assert_eq!(error.to_string(), "cannot decode a value of type u32: 2 trailing bytes after the value");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value's own `Serialize` or `Deserialize` refused, in its own
    /// words: the message it gave `serde::ser::Error::custom` (or
    /// `de::Error::custom`) through `processional_proto::custom`.
    #[error("{0}")]
    Custom(String),
    /// The format refused: the bytes are not a value of the type, or the
    /// value cannot be expressed in the format.
    #[error("{0}")]
    Format(#[source] BoxError),
    /// The type needs a self-describing format, which postcard is not: it
    /// uses `#[serde(flatten)]`, an untagged or internally tagged enum, or
    /// another feature that looks at the data to learn its shape. Carry it
    /// in a `processional::Json<T>`, which crosses as JSON. The source is
    /// the format's own error.
    #[error(
        "the type needs a self-describing format (serde's flatten, untagged or tag), \
         which postcard is not: wrap it in processional::Json ({0})"
    )]
    NotSelfDescribing(#[source] BoxError),
    /// The bytes held a whole value, and more.
    #[error("{count} trailing bytes after the value")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
    /// The payload could not be carried: a shared-memory segment could not
    /// be filled, mapped or read, or the frame lacks its descriptor.
    #[error("the payload: {0}")]
    Payload(#[source] BoxError),
}

/// Why a call, or an operation on a worker, failed.
///
/// Each variant names the failure it reports and keeps its cause as its
/// `source` (see [`BoxError`] for the causes of the process runtime's
/// layers). The enum is `#[non_exhaustive]`: runtimes added later bring new
/// variants.
///
/// ```
/// use processional_task::{Error, catch_panic};
///
/// let error = catch_panic(|| -> u32 { panic!("out of cheese") }).unwrap_err();
/// match &error {
///     Error::Panicked(report) => assert_eq!(report.message, "out of cheese"),
///     Error::Exited(_) | Error::Disconnected { .. } => unreachable!("a worker was lost"),
///     other => unreachable!("{other}"),
/// }
/// assert!(error.is_panic() && !error.is_worker_lost());
/// ```
///
/// With the process runtime (`processional::client`, say), a connection that
/// fails names its address, and the transport's error stays reachable:
///
/// ```text
/// Err(Error::Connect { address, source }) => {
///     eprintln!("nobody listens at {address}: {source}");
///     let transport = source.downcast_ref::<processional::transport::Error>();
/// }
/// ```
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
    /// An operation with a deadline ran out of time: connecting, or a
    /// handshake with a peer that does not answer.
    #[error("{operation} timed out after {after:?}")]
    TimedOut {
        /// What timed out, naming the peer (`"the handshake with
        /// unix:/run/app.sock"`).
        operation: String,
        /// The time it was given.
        after: Duration,
    },
    /// The call failed in another process: a panic, a decoding failure, an
    /// unknown object, … with the remote message, location and backtrace.
    #[error("remote {0}")]
    Remote(RemoteError),
    /// The process serving the call ended before answering.
    #[error("remote process ended ({0}) before the task completed")]
    Exited(ExitReason),
    /// The connection to the process serving the call broke before it
    /// answered: the peer closed it or broke the protocol. `source` says
    /// how, when known (a `processional_transport::Error`, the peer's
    /// [`RemoteError`], …); it is shared by every call the break failed.
    #[error("disconnected{}", .source.as_ref().map(|cause| format!(": {cause}")).unwrap_or_default())]
    Disconnected {
        /// How the connection broke.
        #[source]
        source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    },
    /// A value could not be encoded or decoded on this side.
    ///
    /// A failure of the value's own `Serialize` or `Deserialize` keeps its
    /// message ([`CodecError::Custom`]) when it is raised through
    /// `processional_proto::custom::serialize_error` (or
    /// `deserialize_error`), as processional's own types do: postcard drops
    /// the message of a plain `custom` error.
    #[error("cannot {direction} a value of type {type_name}: {source}")]
    Codec {
        /// The type of the value (`std::any::type_name`).
        type_name: &'static str,
        /// Encoding or decoding.
        direction: CodecDirection,
        /// Why.
        #[source]
        source: CodecError,
    },
    /// A string that is not an address (`unix:/path`, `unix:@name`,
    /// `tcp://host:port`).
    ///
    /// Its message is its source's, which names the address (`invalid
    /// address "nowhere" has no scheme; ...`).
    #[error("invalid {source}")]
    Address {
        /// The string.
        address: String,
        /// Why (`processional_transport::AddressError`).
        #[source]
        source: BoxError,
    },
    /// Nothing could be reached at an address: nobody listens there, the
    /// host is unreachable, …
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The address.
        address: String,
        /// Why (`processional_transport::Error`).
        #[source]
        source: BoxError,
    },
    /// A server could not listen on an address: in use, not allowed, …
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why (`processional_transport::Error`).
        #[source]
        source: BoxError,
    },
    /// The peer could not be authenticated, or refused our credentials, or
    /// there are no credentials to present.
    ///
    /// Its message says who refused whom: `authentication with <peer>
    /// failed: this process refused <peer>: ...` when the peer's proof does
    /// not match our key, `<peer> refused this process's key: ...` when it
    /// rejected ours.
    #[error("authentication with {peer} failed: {}", auth_message(.peer, .failure))]
    Auth {
        /// The peer: its address, or the process.
        peer: String,
        /// What failed.
        #[source]
        failure: AuthFailure,
    },
    /// The peer broke the protocol during the handshake, speaks another
    /// version, has the wrong role, or refused us for such a reason.
    #[error("protocol error with {peer}: {source}")]
    Protocol {
        /// The peer: its address, or the process.
        peer: String,
        /// What happened (`processional_transport::Error`).
        #[source]
        source: BoxError,
    },
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
    /// The peer runs another program or another build of it: both sides
    /// must run the same build.
    #[error("the handshake with {peer} failed: {detail}")]
    Fingerprint {
        /// The peer: its address, or the process.
        peer: String,
        /// Our fingerprint.
        ours: Fingerprint,
        /// The peer's fingerprint.
        theirs: Fingerprint,
        /// Both programs' names and fingerprints.
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

/// What [`Error::Auth`] says after `authentication with <peer> failed: `,
/// naming the peer where [`AuthFailure`] alone says "the peer".
fn auth_message(peer: &str, failure: &AuthFailure) -> String {
    match failure {
        AuthFailure::PeerLacksKey => format!(
            "this process refused {peer}: its proof does not match this process's key \
             (the two hold different keys)"
        ),
        AuthFailure::KeyRefused { detail } => {
            format!("{peer} refused this process's key: {detail}")
        }
        other => other.to_string(),
    }
}

impl Error {
    /// An [`Error::Io`] with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// An [`Error::Codec`] for a value of type `T`.
    pub fn codec<T: ?Sized>(direction: CodecDirection, source: CodecError) -> Self {
        Error::Codec {
            type_name: std::any::type_name::<T>(),
            direction,
            source,
        }
    }

    /// An [`Error::Disconnected`] caused by `source`.
    pub fn disconnected(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Disconnected {
            source: Some(Arc::new(source)),
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

    /// Whether the serving process refused the call without running it
    /// because too many calls of its connection were waiting to start (a
    /// remote error of kind
    /// [`Overloaded`](RemoteErrorKind::Overloaded)). Nothing ran: the call
    /// may be made again once earlier ones have started.
    ///
    /// ```
    /// use processional_task::{Error, RemoteError, RemoteErrorKind};
    ///
    /// let error = Error::Remote(RemoteError {
    ///     kind: RemoteErrorKind::Overloaded,
    ///     message: "too many calls wait".into(),
    ///     location: None,
    ///     backtrace: None,
    /// });
    /// assert!(error.is_overloaded());
    /// assert!(!Error::Stopped.is_overloaded());
    /// ```
    pub fn is_overloaded(&self) -> bool {
        matches!(self, Error::Remote(r) if r.kind == RemoteErrorKind::Overloaded)
    }

    /// Whether the worker that ran (or was to run) the call is gone: its
    /// process ended ([`Exited`](Error::Exited)) or the connection to it
    /// broke ([`Disconnected`](Error::Disconnected)). Calls to it fail the
    /// same way from now on; a new worker is needed.
    pub fn is_worker_lost(&self) -> bool {
        matches!(self, Error::Exited(_) | Error::Disconnected { .. })
    }

    /// Whether an operation ran out of time ([`TimedOut`](Error::TimedOut)).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::TimedOut { .. })
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
///
/// ```
/// fn half(n: u32) -> processional_task::Result<u32> {
///     if n % 2 == 1 {
///         return Err(processional_task::Error::Stopped);
///     }
///     Ok(n / 2)
/// }
/// assert_eq!(half(4).unwrap(), 2);
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_report_shows_its_backtrace_as_lines() {
        let report = PanicReport {
            message: "boom".into(),
            location: None,
            backtrace: Some("   0: one\n   1: two".into()),
        };
        // The fields, in the alternate form, with the backtrace as lines.
        let debug = format!("{:#?}", Error::Panicked(report.clone()));
        assert!(
            debug.contains("0: one\n") && debug.contains("1: two\n"),
            "{debug}"
        );
        assert!(!debug.contains("\\n"), "{debug}");
        // The report, as std tells a panic.
        assert_eq!(
            report.report(true).to_string(),
            "the task panicked:\nboom\nstack backtrace:\n   0: one\n   1: two"
        );
        assert_eq!(
            report.report(false).to_string(),
            "the task panicked:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable \
             to display the backtrace"
        );
        let debug = format!("{:?}", Error::Panicked(report));
        assert!(
            debug.starts_with("Panicked(the task panicked:\nboom\n"),
            "{debug}"
        );
        assert_eq!(
            debug.contains("   0: one\n"),
            backtrace_requested(),
            "{debug}"
        );
    }

    #[test]
    fn an_auth_error_says_who_refused_whom() {
        let auth = |failure| Error::Auth {
            peer: "unix:/run/app.sock".into(),
            failure,
        };
        assert_eq!(
            auth(AuthFailure::PeerLacksKey).to_string(),
            "authentication with unix:/run/app.sock failed: this process refused \
             unix:/run/app.sock: its proof does not match this process's key \
             (the two hold different keys)"
        );
        assert_eq!(
            auth(AuthFailure::KeyRefused {
                detail: "it could not verify our proof".into()
            })
            .to_string(),
            "authentication with unix:/run/app.sock failed: unix:/run/app.sock refused this \
             process's key: it could not verify our proof"
        );
        assert_eq!(
            auth(AuthFailure::NoKey {
                looked_in: "PROCESSIONAL_KEY".into()
            })
            .to_string(),
            "authentication with unix:/run/app.sock failed: no key found (looked in PROCESSIONAL_KEY)"
        );
    }

    #[test]
    fn an_address_error_names_the_address_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("address \"nowhere\" has no scheme")]
        struct NoScheme;
        let error = Error::Address {
            address: "nowhere".into(),
            source: Box::new(NoScheme),
        };
        assert_eq!(
            error.to_string(),
            "invalid address \"nowhere\" has no scheme"
        );
        assert_eq!(error.to_string().matches("nowhere").count(), 1);
    }

    #[test]
    fn a_remote_error_displays_on_one_line_and_debugs_its_backtrace_as_lines() {
        let error = Error::Remote(RemoteError {
            kind: RemoteErrorKind::Panicked,
            message: "boom".into(),
            location: Some("a.rs:1:2".into()),
            backtrace: Some("   0: one\n   1: two".into()),
        });
        assert_eq!(error.to_string(), "remote Panicked: boom at a.rs:1:2");
        let debug = format!("{error:?}");
        assert!(
            debug.starts_with("Remote(the remote process panicked at a.rs:1:2:\nboom\n"),
            "{debug}"
        );
        assert_eq!(
            debug.contains("\n   0: one\n   1: two)"),
            backtrace_requested(),
            "{debug}"
        );
        assert!(!debug.contains("\\n"), "{debug}");
    }

    #[test]
    fn disconnected_names_its_cause_and_keeps_it() {
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let error = Error::disconnected(cause);
        assert_eq!(error.to_string(), "disconnected: reset by peer");
        assert!(error.is_worker_lost());
        let source = std::error::Error::source(&error).expect("the cause");
        assert_eq!(source.to_string(), "reset by peer");
        let bare = Error::Disconnected { source: None };
        assert_eq!(bare.to_string(), "disconnected");
        assert!(Error::Exited(ExitReason::Code(3)).is_worker_lost());
        assert!(!Error::Stopped.is_worker_lost());
    }

    #[test]
    fn codec_errors_name_the_type_and_keep_the_message() {
        let error = Error::codec::<Vec<u8>>(
            CodecDirection::Encode,
            CodecError::Custom("not today".into()),
        );
        assert_eq!(
            error.to_string(),
            "cannot encode a value of type alloc::vec::Vec<u8>: not today"
        );
    }
}
