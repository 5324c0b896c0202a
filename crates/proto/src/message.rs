//! The messages two processional peers exchange.
//!
//! Every message is one variant of [`Message`]. Variants are only ever appended
//! (postcard encodes the variant index as a varint), so an older decoder fails
//! on a newer variant with a typed error instead of misreading it; incompatible
//! changes bump [`crate::PROTOCOL_VERSION`].

use serde::{Deserialize, Serialize};

/// Identifies one call on one connection. Chosen by the caller, unique among
/// the calls it has in flight on that connection.
pub type TaskId = u64;

/// Identifies an object kept alive in the process that serves a connection.
pub type ObjectId = u64;

/// A 32-byte digest identifying the build of a program (see the process
/// runtime's `fingerprint`). Two peers that run code for each other must have
/// equal fingerprints.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Fingerprint(pub [u8; 32]);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl std::fmt::Display for Fingerprint {
    /// The first 8 bytes in hex: enough to tell builds apart in a message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// What a peer is to the other side of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Spawned a slave and sends it orders.
    Master,
    /// Runs the orders of the master that spawned it.
    Slave,
    /// Connects to a server and sends it orders.
    Client,
    /// Serves the orders of any number of clients.
    Server,
    /// Connects to a server to call its named services only
    /// ([`ServiceCall`]): it ships no code and runs none of the server's, so
    /// it may run another build (another program, even) than the server.
    DataClient,
}

/// The first message each side sends: who it is and what it speaks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the sender speaks; see [`crate::PROTOCOL_VERSION`].
    pub protocol: u16,
    /// The build fingerprint of the sender's program.
    pub fingerprint: Fingerprint,
    /// What the sender is to the receiver.
    pub role: Role,
    /// The sender's process id.
    pub pid: u32,
    /// The sender's host name, for diagnostics.
    pub host: String,
    /// A human-readable name of the sender's program, for error messages.
    pub program: String,
}

/// A random nonce the receiver must answer with a [`Proof`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Fresh random bytes, never reused.
    pub nonce: [u8; 32],
}

/// The answer to a [`Challenge`]: a MAC proving knowledge of the shared key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// HMAC-SHA256 over a transcript that includes both nonces and the
    /// prover's role (the exact input is defined by the transport crate).
    pub mac: [u8; 32],
}

/// Why a peer refuses a connection during the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RefusalReason {
    /// The peer speaks another protocol version.
    ProtocolVersion,
    /// The peer's proof did not match the key.
    WrongKey,
    /// The peer runs another program or another build of it.
    WrongFingerprint,
    /// The peer sent something other than the next handshake message.
    UnexpectedMessage,
    /// The peer has the wrong role for this connection.
    WrongRole,
}

/// A reference to a function in the receiver's program.
///
/// It is an offset from an anchor function inside the process runtime plus a
/// digest of the function's type; the receiver validates both before it calls
/// anything: the offset must land on a descriptor the compiler emitted in
/// the program's read-only data, and the digest must match that
/// descriptor's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FunctionRef {
    /// Address of the entry point minus the address of the anchor function.
    pub offset: i64,
    /// A digest of the entry point's type, checked by the receiver.
    pub signature: u64,
}

/// How the receiver runs a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunMode {
    /// In FIFO order with the other queued calls of the same connection.
    Queued,
    /// On a thread of its own, concurrently with everything else.
    Thread,
}

/// Run a function in the receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// Answered by the [`Reply`] with the same id.
    pub task: TaskId,
    /// What to run.
    pub function: FunctionRef,
    /// How to run it.
    pub mode: RunMode,
    /// The serialized arguments, interpreted by the function.
    pub args: Payload,
}

/// Run a service of the receiver: a function it registered under a name.
///
/// Unlike a [`Call`], it names no code of the sender, so it may come from a
/// peer of another build (a [`Role::DataClient`]). It is answered like a
/// queued call: by the [`Reply`] with the same id, after any [`Message::Item`]s
/// of a streaming service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCall {
    /// Answered by the [`Reply`] with the same id.
    pub task: TaskId,
    /// The name the receiver registered the service under.
    pub service: String,
    /// The serialized arguments, interpreted by the service.
    pub args: Payload,
}

/// Serialized bytes: inline in the frame, or in a shared-memory segment whose
/// file descriptor travels with the frame (unix sockets only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// The bytes themselves.
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The bytes are the first `len` bytes of the segment passed as file
    /// descriptor number `fd` (an index into the descriptors attached to the
    /// frame, see [`crate::FLAG_FDS`]).
    Segment {
        /// Index of the descriptor among those attached to the frame.
        fd: u32,
        /// How many bytes of the segment are the payload.
        len: u64,
    },
}

impl Payload {
    /// The inline bytes, or `None` for a segment.
    pub fn as_inline(&self) -> Option<&[u8]> {
        match self {
            Payload::Inline(bytes) => Some(bytes),
            Payload::Segment { .. } => None,
        }
    }

    /// How many bytes the payload has, wherever they are.
    pub fn len(&self) -> u64 {
        match self {
            Payload::Inline(bytes) => bytes.len() as u64,
            Payload::Segment { len, .. } => *len,
        }
    }

    /// Whether the payload has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The broad category of an error raised in the remote process.
///
/// ```
/// use processional_proto::{RemoteError, RemoteErrorKind};
///
/// let error = RemoteError {
///     kind: RemoteErrorKind::NotFound,
///     message: "no object named \"cache\"".into(),
///     location: None,
///     backtrace: None,
/// };
/// assert_eq!(error.to_string(), "NotFound: no object named \"cache\"");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RemoteErrorKind {
    /// The call panicked.
    Panicked,
    /// The call returned early after its cancellation was requested.
    Cancelled,
    /// The arguments could not be decoded, or the value could not be encoded.
    Codec,
    /// The function reference did not pass validation.
    InvalidFunction,
    /// The call named an object its connection does not hold: one that does
    /// not exist (any more), or another connection's (the two look the same).
    /// Also an unknown, expired or already redeemed ticket.
    UnknownObject,
    /// The call named an object of another type than it expects.
    WrongObjectType,
    /// The remote side stopped before it ran the call.
    Stopped,
    /// A name lookup found nothing.
    NotFound,
    /// Anything else.
    Other,
    /// The remote process refused the call without running it: its
    /// connection already had as many calls waiting to start as it takes
    /// (or as many of their argument bytes or descriptors). Nothing ran;
    /// the call may be made again once earlier ones have started. (The
    /// last variant, so that the indices of the others stay as they were.)
    Overloaded,
}

/// An error raised in the remote process, in a form that crosses the wire.
///
/// `Display` is one line: kind, message and location. `Debug`, what
/// `unwrap()` prints, reads like the report of a local panic: what happened
/// and where, the message on a line of its own, then the remote backtrace
/// as lines if `RUST_BACKTRACE` asks for backtraces (as std does for a local
/// panic), else a note saying how to see it (see [`RemoteError::report`]).
/// The alternate form (`{:#?}`) shows the fields.
///
/// ```
/// use processional_proto::{RemoteError, RemoteErrorKind};
///
/// let error = RemoteError {
///     kind: RemoteErrorKind::Panicked,
///     message: "out of cheese".into(),
///     location: Some("src/kitchen.rs:7:5".into()),
///     backtrace: Some("   0: kitchen::cook\n   1: main".into()),
/// };
/// assert_eq!(
///     error.report(false).to_string(),
///     "the remote process panicked at src/kitchen.rs:7:5:\nout of cheese\n\
///      note: run with `RUST_BACKTRACE=1` environment variable to display the remote backtrace"
/// );
/// assert_eq!(
///     error.report(true).to_string(),
///     "the remote process panicked at src/kitchen.rs:7:5:\nout of cheese\n\
///      stack backtrace (remote):\n   0: kitchen::cook\n   1: main"
/// );
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteError {
    /// What went wrong, broadly.
    pub kind: RemoteErrorKind,
    /// The message, e.g. the panic payload.
    pub message: String,
    /// Where it happened (`file:line:column`), when known.
    pub location: Option<String>,
    /// The remote backtrace as text, when captured.
    pub backtrace: Option<String>,
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)?;
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RemoteError {}

impl std::fmt::Debug for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !f.alternate() {
            return write!(f, "{}", self.report(backtrace_requested()));
        }
        f.debug_struct("RemoteError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("location", &self.location)
            .field("backtrace", &DebugLines(self.backtrace.as_deref()))
            .finish()
    }
}

impl RemoteError {
    /// The error as a panic report: `the remote process panicked at
    /// <location>:`, the message on the next line, then the backtrace under
    /// `stack backtrace (remote):` if `backtrace` and there is one, else a
    /// note on how to see it. `Debug` prints it with `backtrace` set as
    /// `RUST_BACKTRACE` asks ([`backtrace_requested`]).
    pub fn report(&self, backtrace: bool) -> impl std::fmt::Display + '_ {
        Report {
            what: self.kind.happened(),
            message: &self.message,
            location: self.location.as_deref(),
            backtrace: self.backtrace.as_deref(),
            show_backtrace: backtrace,
            whose: "remote ",
        }
    }
}

impl RemoteErrorKind {
    /// What happened, as the start of a report's first line.
    fn happened(self) -> &'static str {
        match self {
            RemoteErrorKind::Panicked => "the remote process panicked",
            RemoteErrorKind::Cancelled => "the call was cancelled in the remote process",
            RemoteErrorKind::Codec => "the remote process could not decode or encode a value",
            RemoteErrorKind::InvalidFunction => "the remote process refused the function",
            RemoteErrorKind::UnknownObject => {
                "the remote process holds no such object for this connection"
            }
            RemoteErrorKind::WrongObjectType => "the remote object has another type",
            RemoteErrorKind::Stopped => "the remote process stopped before it ran the call",
            RemoteErrorKind::NotFound => "the remote process found nothing under that name",
            RemoteErrorKind::Other => "the call failed in the remote process",
            RemoteErrorKind::Overloaded => {
                "the remote process had too many calls waiting to take this one"
            }
        }
    }
}

/// Whether `RUST_BACKTRACE` asks for backtraces in this process: set, and
/// not `0`, as std decides for a panic.
pub fn backtrace_requested() -> bool {
    std::env::var_os("RUST_BACKTRACE").is_some_and(|value| value != "0")
}

/// A failure told the way std tells a panic: `<what> at <location>:`, the
/// message on a line of its own, then the backtrace or a note.
///
/// For the failures of processional's errors, local (a caught panic) and
/// remote: `what` is e.g. `the remote process panicked`, `whose` is
/// `"remote "` for a backtrace of another process and `""` for ours.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// What happened: `panicked`, `the remote process panicked`, ...
    pub what: &'a str,
    /// The message (the panic payload).
    pub message: &'a str,
    /// `file:line:column`, when known.
    pub location: Option<&'a str>,
    /// The backtrace, when captured.
    pub backtrace: Option<&'a str>,
    /// Whether to show the backtrace (else a note says how).
    pub show_backtrace: bool,
    /// `"remote "` or `""`: whose backtrace it is, for the note.
    pub whose: &'a str,
}

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)?;
        if let Some(location) = self.location {
            write!(f, " at {location}")?;
        }
        write!(f, ":\n{}", self.message)?;
        match self.backtrace {
            Some(backtrace) if self.show_backtrace => {
                let trace = if self.whose.is_empty() {
                    ""
                } else {
                    " (remote)"
                };
                write!(f, "\nstack backtrace{trace}:\n{}", backtrace.trim_end())
            }
            Some(_) => write!(
                f,
                "\nnote: run with `RUST_BACKTRACE=1` environment variable to display the {}backtrace",
                self.whose
            ),
            None => Ok(()),
        }
    }
}

/// Multi-line text shown by `Debug` as its lines, each on a line of its own
/// (indented), instead of one string with escaped newlines.
pub struct DebugLines<'a>(pub Option<&'a str>);

impl std::fmt::Debug for DebugLines<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(text) = self.0 else {
            return f.write_str("None");
        };
        for line in text.lines() {
            write!(f, "\n    {line}")?;
        }
        f.write_str("\n")
    }
}

/// What a call produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The serialized return value.
    Value(Payload),
    /// The call failed.
    Error(RemoteError),
}

/// The answer to a [`Call`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The id of the call this answers.
    pub task: TaskId,
    /// Its value or error.
    pub outcome: Outcome,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Opens the handshake; both sides send one.
    Hello(Hello),
    /// Asks the peer to prove it holds the key.
    Challenge(Challenge),
    /// Proves the sender holds the key.
    Proof(Proof),
    /// The handshake succeeded; calls may follow.
    Accepted,
    /// The handshake failed; the connection closes after this message.
    Refused {
        /// Why, as a code.
        reason: RefusalReason,
        /// Why, for people (names both fingerprints, versions, …).
        detail: String,
    },
    /// Run a function.
    Call(Call),
    /// The value or error of a call.
    Reply(Reply),
    /// The sender drops its reference to an object the receiver keeps.
    Release {
        /// The object.
        object: ObjectId,
    },
    /// Request the cancellation of a call in flight.
    Cancel {
        /// The call.
        task: TaskId,
    },
    /// Ask the receiver to stop serving and exit; it answers with
    /// [`Message::ShutdownAck`] before it does.
    Shutdown,
    /// The receiver of a [`Message::Shutdown`] is about to exit.
    ShutdownAck,
    /// Liveness probe, answered by a [`Message::Pong`] with the same value.
    Ping(u64),
    /// Answer to [`Message::Ping`].
    Pong(u64),
    /// A protocol error the sender detected in what the receiver sent; the
    /// sender closes the connection after this message.
    Error(RemoteError),
    /// One item of the stream a call opened, in order; the stream ends with
    /// the call's [`Reply`]. Sent only while the caller has granted credit.
    Item {
        /// The call whose stream this item belongs to.
        task: TaskId,
        /// The serialized item (a [`Payload::Segment`] names a descriptor
        /// attached to this frame).
        payload: Payload,
    },
    /// The caller of a streaming call may receive `items` more items (flow
    /// control: credits add up; the server sends no item beyond them).
    Credit {
        /// The call whose stream the credit is for.
        task: TaskId,
        /// How many more items the caller will take.
        items: u32,
    },
    /// Run a named service of the receiver.
    ServiceCall(ServiceCall),
    /// The caller has read the value of `task`'s [`Reply`], which came in a
    /// segment ([`Payload::Segment`]): its sender may write the segment
    /// again (it returns to the sender's pool instead of being freed).
    Reclaim {
        /// The call whose reply's segment was read.
        task: TaskId,
    },
}

impl Message {
    /// The variant's name, for diagnostics ("expected Proof, got Call").
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Challenge(_) => "Challenge",
            Message::Proof(_) => "Proof",
            Message::Accepted => "Accepted",
            Message::Refused { .. } => "Refused",
            Message::Call(_) => "Call",
            Message::Reply(_) => "Reply",
            Message::Release { .. } => "Release",
            Message::Cancel { .. } => "Cancel",
            Message::Shutdown => "Shutdown",
            Message::ShutdownAck => "ShutdownAck",
            Message::Ping(_) => "Ping",
            Message::Pong(_) => "Pong",
            Message::Error(_) => "Error",
            Message::Item { .. } => "Item",
            Message::Credit { .. } => "Credit",
            Message::ServiceCall(_) => "ServiceCall",
            Message::Reclaim { .. } => "Reclaim",
        }
    }
}

impl From<Hello> for Message {
    fn from(hello: Hello) -> Self {
        Message::Hello(hello)
    }
}

impl From<Challenge> for Message {
    fn from(challenge: Challenge) -> Self {
        Message::Challenge(challenge)
    }
}

impl From<Proof> for Message {
    fn from(proof: Proof) -> Self {
        Message::Proof(proof)
    }
}

impl From<Call> for Message {
    fn from(call: Call) -> Self {
        Message::Call(call)
    }
}

impl From<Reply> for Message {
    fn from(reply: Reply) -> Self {
        Message::Reply(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panicked(backtrace: Option<&str>, location: Option<&str>) -> RemoteError {
        RemoteError {
            kind: RemoteErrorKind::Panicked,
            message: "remote-boom".into(),
            location: location.map(str::to_owned),
            backtrace: backtrace.map(str::to_owned),
        }
    }

    #[test]
    fn a_remote_error_reports_like_a_local_panic() {
        let error = panicked(
            Some("   0: a\n             at a.rs:1\n   1: b\n"),
            Some("x.rs:1:2"),
        );
        assert_eq!(
            error.report(true).to_string(),
            "the remote process panicked at x.rs:1:2:\nremote-boom\n\
             stack backtrace (remote):\n   0: a\n             at a.rs:1\n   1: b"
        );
        assert_eq!(
            error.report(false).to_string(),
            "the remote process panicked at x.rs:1:2:\nremote-boom\nnote: run with \
             `RUST_BACKTRACE=1` environment variable to display the remote backtrace"
        );
        // Nothing to show, nothing to say about it.
        let bare = panicked(None, None);
        assert_eq!(
            bare.report(true).to_string(),
            "the remote process panicked:\nremote-boom"
        );
        assert_eq!(
            bare.report(false).to_string(),
            bare.report(true).to_string()
        );
        // `Debug` is the report; `{:#?}` keeps the fields, backtrace as lines.
        let debug = format!("{error:?}");
        assert!(
            debug.starts_with("the remote process panicked at x.rs:1:2:\nremote-boom\n"),
            "{debug}"
        );
        assert_eq!(debug.contains("   0: a"), backtrace_requested(), "{debug}");
        assert!(!debug.contains("\\n"), "{debug}");
        let pretty = format!("{error:#?}");
        assert!(
            pretty.contains("kind: Panicked") && pretty.contains("   0: a\n"),
            "{pretty}"
        );
        assert!(!pretty.contains("\\n"), "{pretty}");
    }

    /// Every error kind, in the order of their wire indices (the newest
    /// last: kinds are only ever appended).
    const EVERY_KIND: [RemoteErrorKind; 10] = {
        use RemoteErrorKind::*;
        [
            Panicked,
            Cancelled,
            Codec,
            InvalidFunction,
            UnknownObject,
            WrongObjectType,
            Stopped,
            NotFound,
            Other,
            Overloaded,
        ]
    };

    #[test]
    fn every_kind_says_what_happened_in_words() {
        for kind in EVERY_KIND {
            let error = RemoteError {
                kind,
                ..panicked(None, None)
            };
            let report = error.report(false).to_string();
            assert!(
                report.starts_with("the ") && report.ends_with(":\nremote-boom"),
                "{report}"
            );
            assert!(
                !report.contains(&format!("{kind:?}")),
                "{report}: a variant name"
            );
        }
    }

    /// Error kinds are only ever appended: each keeps the index (postcard's
    /// varint) it had, and the newest, `Overloaded`, comes last.
    #[test]
    fn error_kinds_keep_their_wire_indices() {
        for (index, kind) in EVERY_KIND.into_iter().enumerate() {
            let encoded = postcard::to_allocvec(&kind).unwrap();
            assert_eq!(encoded, [index as u8], "{kind:?}");
            assert_eq!(
                postcard::from_bytes::<RemoteErrorKind>(&encoded).unwrap(),
                kind
            );
        }
    }

    #[test]
    fn names_match_the_variants() {
        for message in crate::strategy::every_variant() {
            let debug = format!("{message:?}");
            assert!(debug.starts_with(message.name()), "{debug}");
        }
    }

    #[test]
    fn payload_length_counts_bytes_wherever_they_are() {
        assert_eq!(Payload::Inline(vec![1, 2, 3]).len(), 3);
        assert!(Payload::Inline(Vec::new()).is_empty());
        assert_eq!(
            Payload::Segment {
                fd: 0,
                len: 1 << 40
            }
            .len(),
            1 << 40
        );
        assert_eq!(Payload::Inline(vec![4]).as_inline(), Some(&[4][..]));
        assert_eq!(Payload::Segment { fd: 0, len: 1 }.as_inline(), None);
    }

    #[test]
    fn converts_into_messages() {
        let reply = Reply {
            task: 9,
            outcome: Outcome::Value(Payload::Inline(Vec::new())),
        };
        assert_eq!(Message::from(reply.clone()), Message::Reply(reply));
        let proof = Proof { mac: [1; 32] };
        assert_eq!(Message::from(proof), Message::Proof(proof));
    }

    #[test]
    fn remote_errors_show_their_backtrace_as_lines() {
        let error = RemoteError {
            kind: RemoteErrorKind::Panicked,
            message: "boom".into(),
            location: Some("src/lib.rs:3:5".into()),
            backtrace: Some("   0: first::frame\n   1: second::frame".into()),
        };
        assert_eq!(error.to_string(), "Panicked: boom at src/lib.rs:3:5");
        // The fields, in the alternate form, with the backtrace as lines.
        let debug = format!("{error:#?}");
        assert!(debug.contains("0: first::frame\n"), "{debug}");
        assert!(debug.contains("1: second::frame\n"), "{debug}");
        assert!(!debug.contains("\\n"), "{debug}");
        let without = RemoteError {
            backtrace: None,
            ..error
        };
        assert!(
            format!("{without:#?}").ends_with("backtrace: None,\n}"),
            "{without:#?}"
        );
    }

    #[test]
    fn fingerprint_shows_its_first_bytes_in_hex() {
        let fingerprint = Fingerprint(std::array::from_fn(|i| (i as u8).wrapping_mul(17)));
        assert_eq!(fingerprint.to_string(), "0011223344556677");
        assert_eq!(format!("{fingerprint:?}"), "Fingerprint(0011223344556677)");
    }
}
