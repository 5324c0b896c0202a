//! The process runtime's failures as the library's [`Error`]: transport
//! failures, named by where they happened (an address, a process), and the
//! causes only this crate detects.
//!
//! The task crate, where [`Error`] lives, knows no transport, so a
//! transport error travels boxed as the `source` of the variant that says
//! what failed ([`Error::Connect`], [`Error::Protocol`], …); the failures
//! that have a variant of their own (a wrong key, another build, a
//! timeout) are unpacked into it.

use std::time::Duration;

use processional_proto::{RefusalReason, RemoteError};
use processional_shm::ShmError;
use processional_task::{AuthFailure, Error};
use processional_transport::{Address, AddressError, Error as TransportError, KeyError};

/// `address` does not parse.
pub(crate) fn address_error(address: &str, source: AddressError) -> Error {
    Error::Address {
        address: address.to_owned(),
        source: Box::new(source),
    }
}

/// Connecting to `address`, given `timeout`, failed.
pub(crate) fn connect_error(address: &Address, timeout: Duration, error: TransportError) -> Error {
    match error {
        TransportError::TimedOut => Error::TimedOut {
            operation: format!("connecting to {address}"),
            after: timeout,
        },
        error => Error::Connect {
            address: address.to_string(),
            source: Box::new(error),
        },
    }
}

/// Listening on `address` failed.
pub(crate) fn listen_error(address: &Address, error: TransportError) -> Error {
    Error::Listen {
        address: address.to_string(),
        source: Box::new(error),
    }
}

/// The handshake with `peer` (an address, or a process), given `timeout`,
/// failed.
pub(crate) fn handshake_error(peer: &str, timeout: Duration, error: TransportError) -> Error {
    let peer = peer.to_owned();
    match error {
        TransportError::Fingerprint {
            ours,
            theirs,
            detail,
        } => Error::Fingerprint {
            peer,
            ours,
            theirs,
            detail,
        },
        TransportError::WrongKey => Error::Auth {
            peer,
            failure: AuthFailure::PeerLacksKey,
        },
        TransportError::Refused {
            reason: RefusalReason::WrongKey,
            detail,
        } => Error::Auth {
            peer,
            failure: AuthFailure::KeyRefused { detail },
        },
        TransportError::TimedOut => Error::TimedOut {
            operation: format!("the handshake with {peer}"),
            after: timeout,
        },
        error @ (TransportError::Closed | TransportError::Truncated | TransportError::Io(_)) => {
            Error::disconnected(error)
        }
        error => Error::Protocol {
            peer,
            source: Box::new(error),
        },
    }
}

/// A key found in `origin` (a variable, a file, the bootstrap) for `peer`
/// is malformed.
pub(crate) fn bad_key(
    peer: impl Into<String>,
    origin: impl Into<String>,
    source: KeyError,
) -> Error {
    Error::Auth {
        peer: peer.into(),
        failure: AuthFailure::BadKey {
            origin: origin.into(),
            source: Box::new(source),
        },
    }
}

/// Setting up a connection over a socket we already hold failed: only the
/// operating system can fail it.
pub(crate) fn setup_error(context: &str, error: TransportError) -> Error {
    match error {
        TransportError::Io(source) => Error::io(context, source),
        other => Error::io(context, std::io::Error::other(other)),
    }
}

/// How a session's connection broke while the transport itself worked: the
/// `source` of an [`Error::Disconnected`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum Broken {
    /// The peer said this side broke the protocol, then closed.
    #[error("the peer reported a protocol error: {0}")]
    PeerReported(RemoteError),
    /// The peer sent a message that has no place after the handshake.
    #[error("the peer sent a {0} message, which has no place on an open connection")]
    UnexpectedMessage(&'static str),
    /// The peer streamed more items for a call than its caller allowed.
    #[error("the peer streamed more items for task {task} than the {granted} its caller granted")]
    BeyondCredit {
        task: processional_proto::TaskId,
        granted: u64,
    },
}

/// Why a payload could not be carried: the `source` of a
/// [`CodecError::Payload`](processional_task::CodecError::Payload).
#[derive(Debug, thiserror::Error)]
pub(crate) enum PayloadError {
    /// The frame lacks the descriptor of the payload's segment.
    #[error("the payload names descriptor {index}, the frame carried {count}")]
    MissingDescriptor { index: usize, count: usize },
    /// The payload is longer than this process can address.
    #[error("a payload of {0} bytes does not fit in memory")]
    TooLong(u64),
    /// The segment of a payload could not be mapped.
    #[error("cannot map the payload's segment: {0}")]
    Map(#[source] ShmError),
    /// The segment of a payload could not be read.
    #[error("cannot read the payload's segment: {0}")]
    Read(#[source] ShmError),
    /// A pooled segment could not take the encoded bytes.
    #[error("cannot fill a shared-memory segment: {0}")]
    Fill(#[source] ShmError),
    /// An inline payload (on a connection without shared memory: TCP) over
    /// what one frame carries; refused before it is sent, since the peer
    /// would close the connection on it.
    #[error(
        "a payload of {len} bytes is over the {max} bytes one frame carries on a connection \
         without shared memory (TCP): send it in parts, or over a unix socket"
    )]
    OverFrame { len: usize, max: usize },
}

/// A `Vec<u8>` whose encoding (a length, then the bytes) is malformed: the
/// `source` of a [`CodecError::Format`](processional_task::CodecError::Format)
/// on the byte-vector fast path, which bypasses postcard.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MalformedBytes {
    /// The length is not a varint.
    #[error("a Vec<u8> with a malformed length")]
    Length,
    /// The length disagrees with the bytes that follow it.
    #[error("a Vec<u8> of {announced} bytes, but {following} bytes follow its length")]
    Mismatch { announced: usize, following: usize },
}
