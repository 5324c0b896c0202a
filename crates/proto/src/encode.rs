//! Encoding messages into frames.

use postcard::ser_flavors::Flavor;

use crate::error::ProtoError;
use crate::header::{FrameHeader, HEADER_LEN};
use crate::message::{Message, Outcome};

/// Appends one frame carrying `msg` to `out`, with no file descriptors.
///
/// The message is serialized straight into `out`, after room left for the
/// header: no intermediate buffer. Reusing one `out` across frames makes
/// encoding allocation-free once it has grown.
///
/// # Errors
///
/// [`ProtoError::FrameTooLarge`] if the payload exceeds `u32::MAX` bytes,
/// [`ProtoError::Encode`] if serialization fails. On error `out` is left as
/// it was.
///
/// ```
/// use processional_proto::{Decoder, HEADER_LEN, Message, encode};
///
/// let mut out = Vec::new();
/// encode(&Message::Ping(7), &mut out).unwrap();
/// encode(&Message::Pong(7), &mut out).unwrap(); // frames follow each other
/// assert!(out.len() > 2 * HEADER_LEN);
/// let mut decoder = Decoder::new();
/// decoder.feed(&out);
/// assert_eq!(decoder.next().unwrap(), Some(Message::Ping(7)));
/// assert_eq!(decoder.next().unwrap(), Some(Message::Pong(7)));
/// ```
pub fn encode(msg: &Message, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    encode_with_fds(msg, 0, out)
}

/// Appends one frame carrying `msg` to `out`, announcing `fd_count` file
/// descriptors that the transport sends along with the frame's bytes.
///
/// [`FLAG_FDS`](crate::FLAG_FDS) is set if and only if `fd_count` is not zero.
///
/// # Errors
///
/// [`ProtoError::TooManyFds`] if `fd_count` exceeds
/// [`MAX_FDS_PER_FRAME`](crate::MAX_FDS_PER_FRAME), otherwise as [`encode`].
/// On error `out` is left as it was.
///
/// ```
/// use processional_proto::{Decoder, Message, encode_with_fds};
///
/// let mut out = Vec::new();
/// // The two descriptors travel beside the bytes (SCM_RIGHTS).
/// encode_with_fds(&Message::Ping(1), 2, &mut out).unwrap();
/// let mut decoder = Decoder::new();
/// decoder.feed(&out);
/// let frame = decoder.next_frame().unwrap().expect("a whole frame");
/// assert_eq!(frame.header.fd_count, 2);
/// ```
pub fn encode_with_fds(msg: &Message, fd_count: u8, out: &mut Vec<u8>) -> Result<(), ProtoError> {
    // Validates the count before anything is written.
    let mut header = FrameHeader::new(0, fd_count)?;
    let frame_start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(error) = postcard::serialize_with_flavor(msg, VecTail(out)) {
        out.truncate(frame_start);
        return Err(ProtoError::Encode(error.to_string()));
    }
    let payload_len = out.len() - frame_start - HEADER_LEN;
    header.len = match u32::try_from(payload_len) {
        Ok(len) => len,
        Err(_) => {
            out.truncate(frame_start);
            return Err(ProtoError::FrameTooLarge {
                len: payload_len as u64,
                max: u32::MAX as usize,
            });
        }
    };
    out[frame_start..frame_start + HEADER_LEN].copy_from_slice(&header.encode());
    Ok(())
}

/// Like [`encode_with_fds`], but leaves the bytes of a large inline payload
/// out of `out`, for the caller to send right after it from where they are
/// (a vectored write): appends the frame up to those bytes and returns them.
///
/// Only a payload that ends its message is left out (the arguments of a
/// `Call`, the value of a `Reply`, the payload of an `Item`), and only when
/// it holds at least `min_tail` bytes; otherwise the whole frame is appended
/// and the returned slice is empty. Either way, `out` followed by the
/// returned bytes is exactly the frame [`encode_with_fds`] would append.
///
/// # Errors
///
/// As [`encode_with_fds`]; on error `out` is left as it was.
pub fn encode_split<'m>(
    msg: &'m Message,
    fd_count: u8,
    out: &mut Vec<u8>,
    min_tail: usize,
) -> Result<&'m [u8], ProtoError> {
    let tail = match msg {
        Message::Call(call) => call.args.as_inline(),
        Message::ServiceCall(call) => call.args.as_inline(),
        Message::Reply(reply) => match &reply.outcome {
            Outcome::Value(payload) => payload.as_inline(),
            Outcome::Error(_) => None,
        },
        Message::Item { payload, .. } => payload.as_inline(),
        _ => None,
    };
    let Some(tail) = tail.filter(|tail| tail.len() >= min_tail && !tail.is_empty()) else {
        encode_with_fds(msg, fd_count, out)?;
        return Ok(&[]);
    };
    let mut header = FrameHeader::new(0, fd_count)?;
    let frame_start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let mut flavor = SkipTail {
        out: &mut *out,
        tail,
        skipped: false,
        after: false,
    };
    let serialized = postcard::serialize_with_flavor(msg, &mut flavor);
    let (skipped, after) = (flavor.skipped, flavor.after);
    if serialized.is_err() || !skipped || after {
        // Not the layout expected (or a failure): the plain way says which.
        out.truncate(frame_start);
        encode_with_fds(msg, fd_count, out)?;
        return Ok(&[]);
    }
    let payload_len = out.len() - frame_start - HEADER_LEN + tail.len();
    header.len = match u32::try_from(payload_len) {
        Ok(len) => len,
        Err(_) => {
            out.truncate(frame_start);
            return Err(ProtoError::FrameTooLarge {
                len: payload_len as u64,
                max: u32::MAX as usize,
            });
        }
    };
    out[frame_start..frame_start + HEADER_LEN].copy_from_slice(&header.encode());
    Ok(tail)
}

/// A postcard flavor appending to a vector, except the bytes of `tail`
/// (recognized by address), which must come last.
struct SkipTail<'a, 'm> {
    out: &'a mut Vec<u8>,
    tail: &'m [u8],
    skipped: bool,
    /// Something was written after the tail: the split is off.
    after: bool,
}

impl Flavor for &mut SkipTail<'_, '_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.after |= self.skipped;
        self.out.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if !self.skipped
            && std::ptr::eq(data.as_ptr(), self.tail.as_ptr())
            && data.len() == self.tail.len()
        {
            self.skipped = true;
            return Ok(());
        }
        self.after |= self.skipped;
        self.out.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A postcard flavor appending to the end of a borrowed vector.
struct VecTail<'a>(&'a mut Vec<u8>);

impl Flavor for VecTail<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{FLAG_FDS, MAX_FDS_PER_FRAME, PROTOCOL_VERSION};

    fn header_of(frame: &[u8]) -> FrameHeader {
        FrameHeader::decode(frame[..HEADER_LEN].try_into().unwrap(), usize::MAX).unwrap()
    }

    #[test]
    fn writes_header_then_postcard_payload() {
        let msg = Message::Ping(300);
        let mut out = Vec::new();
        encode(&msg, &mut out).unwrap();
        let payload = postcard::to_stdvec(&msg).unwrap();
        let header = header_of(&out);
        assert_eq!(
            header,
            FrameHeader {
                version: PROTOCOL_VERSION,
                flags: 0,
                fd_count: 0,
                len: payload.len() as u32,
            }
        );
        assert_eq!(&out[HEADER_LEN..], &payload[..]);
    }

    #[test]
    fn appends_after_existing_bytes() {
        let mut out = b"prefix".to_vec();
        encode(&Message::Accepted, &mut out).unwrap();
        encode(&Message::Shutdown, &mut out).unwrap();
        assert_eq!(&out[..6], b"prefix");
        let first = header_of(&out[6..]);
        let second_start = 6 + first.frame_len();
        let second = header_of(&out[second_start..]);
        assert_eq!(second_start + second.frame_len(), out.len());
    }

    #[test]
    fn split_frames_are_the_plain_frames() {
        let big = vec![0xab; 70_000];
        let mut messages = crate::strategy::every_variant();
        messages.push(Message::Call(crate::message::Call {
            task: 1,
            function: crate::message::FunctionRef {
                offset: 8,
                signature: 9,
            },
            mode: crate::message::RunMode::Thread,
            args: crate::message::Payload::Inline(big.clone()),
        }));
        messages.push(Message::Reply(crate::message::Reply {
            task: 2,
            outcome: Outcome::Value(crate::message::Payload::Inline(big.clone())),
        }));
        messages.push(Message::Item {
            task: 3,
            payload: crate::message::Payload::Inline(big),
        });
        let mut split_count = 0;
        for message in &messages {
            for min_tail in [1, 100_000] {
                let mut plain = b"x".to_vec();
                encode_with_fds(message, 2, &mut plain).unwrap();
                let mut split = b"x".to_vec();
                let tail = encode_split(message, 2, &mut split, min_tail).unwrap();
                split_count += usize::from(!tail.is_empty());
                split.extend_from_slice(tail);
                assert_eq!(split, plain, "{}", message.name());
            }
        }
        assert!(split_count >= 3, "{split_count} frames were split");
    }

    #[test]
    fn announces_fds() {
        let mut out = Vec::new();
        encode_with_fds(&Message::Accepted, 2, &mut out).unwrap();
        let header = header_of(&out);
        assert_eq!((header.flags, header.fd_count), (FLAG_FDS, 2));
        assert!(header.has_fds());
    }

    #[test]
    fn refuses_too_many_fds_and_leaves_out_untouched() {
        let mut out = vec![9, 9];
        assert_eq!(
            encode_with_fds(&Message::Accepted, MAX_FDS_PER_FRAME + 1, &mut out),
            Err(ProtoError::TooManyFds)
        );
        assert_eq!(out, [9, 9]);
    }
}
