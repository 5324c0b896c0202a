//! The errors of the transport.

use std::io;

use processional_proto::{Fingerprint, ProtoError, RefusalReason, Role};

use crate::address::AddressError;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operating system refused an operation.
    #[error("transport I/O error: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection between two frames (or this side shut
    /// it down).
    #[error("the connection is closed")]
    Closed,
    /// The peer closed the connection in the middle of a frame.
    #[error("the peer closed the connection in the middle of a frame")]
    Truncated,
    /// A deadline passed.
    #[error("timed out")]
    TimedOut,
    /// The peer sent bytes that are not valid frames, or a message could not
    /// be encoded.
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
    /// The peer refused the handshake.
    #[error("the peer refused the connection ({reason:?}): {detail}")]
    Refused {
        /// Why, as a code.
        reason: RefusalReason,
        /// Why, in the peer's words.
        detail: String,
    },
    /// The peer's proof does not match the key: it does not hold the same
    /// key as this side.
    #[error("the peer failed to prove it holds the shared key (the keys differ)")]
    WrongKey,
    /// The peer speaks another protocol version.
    #[error(
        "protocol version mismatch: this side speaks version {ours}, the peer speaks version {theirs}"
    )]
    ProtocolVersion {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The peer runs another program or another build of it.
    #[error("{detail}")]
    Fingerprint {
        /// Our fingerprint.
        ours: Fingerprint,
        /// The peer's fingerprint.
        theirs: Fingerprint,
        /// Names both builds and both programs.
        detail: String,
    },
    /// The peer has a role this side does not accept.
    #[error("the peer has role {theirs:?}; this side accepts only {accepted:?}")]
    WrongRole {
        /// The peer's role.
        theirs: Role,
        /// The roles accepted.
        accepted: Vec<Role>,
    },
    /// The peer sent a message that has no place at this point, e.g. a call
    /// before the handshake finished.
    #[error("unexpected message: {0}")]
    UnexpectedMessage(String),
    /// File descriptors can only travel over unix sockets.
    #[error("file descriptors can only be sent over unix sockets, not TCP")]
    FdsOverTcp,
    /// A frame announced more file descriptors than arrived with it, or
    /// descriptors arrived that no frame claims.
    #[error("a frame announced {announced} file descriptors but {arrived} arrived")]
    MissingFds {
        /// Descriptors the frame header announced.
        announced: usize,
        /// Descriptors actually received and not yet claimed.
        arrived: usize,
    },
    /// An address could not be parsed.
    #[error(transparent)]
    Address(#[from] AddressError),
}
