//! Payloads: encoded values with the file descriptors they carry, inline in
//! the frame or in a shared-memory segment.
//!
//! On unix sockets, `ShmBuf`, `ShmVec` and `ShmSlice` values inside
//! arguments and values travel as file descriptors (SCM_RIGHTS), so no byte
//! of them is copied; over TCP they travel as bytes. Independently, an
//! encoded payload larger than [`INLINE_LIMIT`] travels in a segment of the
//! shared-memory pool: the bytes are written once into an already faulted-in
//! mapping, its descriptor rides on the frame (last among the frame's
//! descriptors), and the receiver copies the bytes out of its mapping into
//! private memory as it decodes them (a `Vec<u8>` straight into its own
//! buffer), so a sender that breaks the protocol can garble only its own
//! call, never the receiver's memory safety. Call
//! arguments are *lent*: the caller takes the segment back for reuse when the
//! reply arrives, since the callee never reads its arguments after replying.
//! A reply's value is lent too: the server keeps its segment until the
//! caller's `Reclaim` says it was read (sent ahead of the caller's next
//! frame), then reuses it. Stream items are handed over: the receiver's
//! mapping is the last reference.
//!
//! Inline, each side makes one buffer per transfer: the sender's encoding
//! buffer is recycled, its bytes are written from where they are, and a
//! received `Vec<u8>` is decoded in place (see `codec`).

use std::any::Any;
use std::cell::RefCell;
use std::os::fd::OwnedFd;

use processional_proto::Payload;
use processional_shm::transfer::{self, TransferFd};
use processional_shm::{Loan, Pool, PooledSegment, SegmentView};
use processional_task::{CodecDirection, CodecError, Error};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{self, Sink};
use crate::error::PayloadError;

/// Encoded payloads larger than this travel in a shared-memory segment (on
/// unix sockets), unless `PROCESSIONAL_INLINE_LIMIT` (bytes) says otherwise.
/// Placed by measurement (`benches/README.md`, "the inline limit"): an
/// inline call costs a small fixed cost plus about twice a segment's cost
/// per byte, a segment a mapping and its page-table setup first. The two
/// cross at about 230 KiB on a quiet 2-core machine, above 256 KiB on a
/// contended one; up to 128 KiB inline costs 0.4–0.7× a segment, so the
/// limit keeps a margin below the crossing (lower, the payloads in between
/// would cost more; higher, only quiet machines gain). Raised past 128 KiB,
/// payloads over twice this limit lose the recycled encoding buffer (see
/// `codec::SPARE_MAX`) and cost about 3× per byte.
pub const INLINE_LIMIT: usize = 128 * 1024;

/// The environment variable that overrides [`INLINE_LIMIT`].
pub const INLINE_LIMIT_VAR: &str = "PROCESSIONAL_INLINE_LIMIT";

/// The limit in force (read once).
pub(crate) fn inline_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(INLINE_LIMIT_VAR)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(INLINE_LIMIT)
    })
}

/// An encoded value ready to be sent.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) payload: Payload,
    /// Descriptors of shared-memory values inside the payload.
    pub(crate) transfers: Vec<TransferFd>,
    /// The segment holding the payload, lent until the reply.
    pub(crate) loan: Option<Loan>,
}

impl Sink for PooledSegment {
    fn put(&mut self, bytes: &[u8]) -> Result<(), CodecError> {
        self.extend_from_slice(bytes)
            .map_err(|e| CodecError::Payload(Box::new(PayloadError::Fill(e))))
    }
}

/// Encodes `value` for a connection; `unix` says whether descriptors can
/// travel on it.
pub(crate) fn encode<T: Serialize + Any>(value: &T, unix: bool) -> Result<Outgoing, Error> {
    if !unix {
        return Ok(wrap_encoded(encode_value(value, false)?, Vec::new(), false));
    }
    let (encoded, transfers) = transfer::collect_fds(|| encode_value(value, true));
    Ok(wrap_encoded(encoded?, transfers, true))
}

/// A value encoded by an entry point: in a buffer, or already in a pooled
/// segment when it is a large byte vector.
#[derive(Debug)]
pub(crate) enum Encoded {
    Inline(Vec<u8>),
    Pooled(PooledSegment),
}

/// Encodes the value of a call on the serving side (descriptors of
/// shared-memory values are collected by the caller's transfer context).
pub(crate) fn encode_value<T: Serialize + Any>(value: &T, unix: bool) -> Result<Encoded, Error> {
    if unix
        && let Some(len) = codec::fast_len(value).filter(|&len| len > inline_limit())
        && let Ok(mut segment) = Pool::global().take(len)
    {
        segment.clear();
        codec::encode_into(value, &mut segment)?;
        return Ok(Encoded::Pooled(segment));
    }
    let bytes = codec::encode(value)?;
    if !unix && bytes.len() > MAX_INLINE_PAYLOAD {
        let len = bytes.len();
        codec::recycle(bytes);
        let over = PayloadError::OverFrame {
            len,
            max: MAX_INLINE_PAYLOAD,
        };
        return Err(Error::codec::<T>(
            CodecDirection::Encode,
            CodecError::Payload(Box::new(over)),
        ));
    }
    Ok(Encoded::Inline(bytes))
}

/// The largest inline payload a frame carries: the peer's frame limit, less
/// room for the message around the payload (a call's function and object,
/// a service's name).
pub(crate) const MAX_INLINE_PAYLOAD: usize = processional_proto::DEFAULT_MAX_FRAME - (64 << 10);

/// Wraps a value encoded inside an entry point, with the descriptors it
/// collected, for sending.
pub(crate) fn wrap_encoded(encoded: Encoded, transfers: Vec<TransferFd>, unix: bool) -> Outgoing {
    let bytes = match encoded {
        Encoded::Pooled(segment) => return segmented(segment, transfers),
        Encoded::Inline(bytes) => bytes,
    };
    if unix
        && bytes.len() > inline_limit()
        && let Ok(mut segment) = Pool::global().take(bytes.len())
    {
        segment.as_mut_slice().copy_from_slice(&bytes);
        codec::recycle(bytes);
        return segmented(segment, transfers);
    }
    Outgoing {
        payload: Payload::Inline(bytes),
        transfers,
        loan: None,
    }
}

fn segmented(segment: PooledSegment, transfers: Vec<TransferFd>) -> Outgoing {
    let len = segment.len() as u64;
    Outgoing {
        payload: Payload::Segment {
            fd: transfers.len() as u32,
            len,
        },
        transfers,
        loan: Some(segment.lend()),
    }
}

/// A received payload, resolved to bytes.
pub(crate) enum Incoming {
    /// The bytes of the frame; a `Vec<u8>` value takes them over when it is
    /// decoded (see [`codec::decode_owned`]), so they are decoded once.
    Inline(RefCell<Vec<u8>>),
    Mapped(SegmentView),
}

impl Incoming {
    /// Resolves `payload` with the frame's descriptors; returns the bytes and
    /// the descriptors of shared-memory values inside them.
    pub(crate) fn resolve(
        payload: Payload,
        mut fds: Vec<OwnedFd>,
    ) -> Result<(Incoming, Vec<OwnedFd>), CodecError> {
        let payload_error = |error| CodecError::Payload(Box::new(error));
        match payload {
            Payload::Inline(bytes) => Ok((Incoming::Inline(RefCell::new(bytes)), fds)),
            Payload::Segment { fd, len } => {
                let index = fd as usize;
                if index >= fds.len() {
                    return Err(payload_error(PayloadError::MissingDescriptor {
                        index,
                        count: fds.len(),
                    }));
                }
                let len =
                    usize::try_from(len).map_err(|_| payload_error(PayloadError::TooLong(len)))?;
                let segment = fds.remove(index);
                let view = SegmentView::map(segment, len)
                    .map_err(|e| payload_error(PayloadError::Map(e)))?;
                Ok((Incoming::Mapped(view), fds))
            }
        }
    }

    /// Decodes a `T` from the payload (once: inline bytes may become the
    /// value). A mapped segment is copied out before it is decoded, never
    /// read in place: its sender can still write it, and a decoder must not
    /// hold a `&[u8]` that can change under it.
    pub(crate) fn decode<T: DeserializeOwned + Any>(&self) -> Result<T, Error> {
        match self {
            Incoming::Inline(bytes) => {
                codec::decode_owned(std::mem::take(&mut *bytes.borrow_mut()))
            }
            Incoming::Mapped(view) => codec::decode_mapped(view),
        }
    }
}

/// Decodes a `T` from a received payload.
pub(crate) fn decode<T: DeserializeOwned + Any>(
    payload: Payload,
    fds: Vec<OwnedFd>,
) -> Result<T, Error> {
    if fds.is_empty()
        && let Payload::Inline(bytes) = payload
    {
        return codec::decode_owned(bytes);
    }
    let (incoming, fds) = Incoming::resolve(payload, fds)
        .map_err(|source| Error::codec::<T>(CodecDirection::Decode, source))?;
    if fds.is_empty() {
        return incoming.decode();
    }
    transfer::provide_fds(fds, || incoming.decode())
}
