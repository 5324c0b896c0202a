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
/// anything (see `docs/ARCHITECTURE.md`, "Shipping functions").
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
}

/// An error raised in the remote process, in a form that crosses the wire.
///
/// Its `Debug` shows the backtrace as lines, not as one escaped string, so
/// that `unwrap()` on an error of another process prints a readable
/// backtrace; `Display` is one line: kind, message and location.
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
        f.debug_struct("RemoteError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("location", &self.location)
            .field("backtrace", &DebugLines(self.backtrace.as_deref()))
            .finish()
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
        let debug = format!("{error:?}");
        assert!(debug.contains("\n       0: first::frame\n"), "{debug}");
        assert!(debug.contains("\n       1: second::frame\n"), "{debug}");
        assert!(!debug.contains("\\n"), "{debug}");
        let without = RemoteError {
            backtrace: None,
            ..error
        };
        assert!(format!("{without:?}").ends_with("backtrace: None }"));
    }

    #[test]
    fn fingerprint_shows_its_first_bytes_in_hex() {
        let fingerprint = Fingerprint(std::array::from_fn(|i| (i as u8).wrapping_mul(17)));
        assert_eq!(fingerprint.to_string(), "0011223344556677");
        assert_eq!(format!("{fingerprint:?}"), "Fingerprint(0011223344556677)");
    }
}
