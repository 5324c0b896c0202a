//! The errors of the wire format.

use crate::header::{MAGIC, MAX_FDS_PER_FRAME};

/// Why bytes could not be encoded into, or decoded from, a frame.
///
/// Every decoding error means the peer is broken, hostile or runs another
/// release: the [`Decoder`](crate::Decoder) is poisoned by it and the
/// connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// The frame does not start with [`MAGIC`]: the peer does not speak
    /// processional at all (or the stream lost its framing).
    #[error(
        "not a processional frame: expected magic \"{}\", found \"{}\"",
        MAGIC.escape_ascii(),
        .found.escape_ascii()
    )]
    BadMagic {
        /// The four bytes found where the magic belongs.
        found: [u8; 4],
    },
    /// The peer speaks another protocol version.
    #[error(
        "protocol version mismatch: this side speaks version {ours}, the peer speaks version {theirs} \
         (both sides must run compatible processional releases)"
    )]
    Version {
        /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
        ours: u16,
        /// The version in the peer's frame header.
        theirs: u16,
    },
    /// A frame's payload is longer than the limit.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The payload length, as announced by the header (decoding) or as
        /// produced by the serializer (encoding).
        len: u64,
        /// The limit: the decoder's maximum frame size, or `u32::MAX` when
        /// encoding.
        max: usize,
    },
    /// More than [`MAX_FDS_PER_FRAME`] file descriptors attached to a frame.
    #[error("more than {MAX_FDS_PER_FRAME} file descriptors attached to one frame")]
    TooManyFds,
    /// The header's flags are inconsistent: an unknown flag bit is set, or
    /// [`FLAG_FDS`](crate::FLAG_FDS) does not agree with the descriptor count
    /// (the flag is set if and only if the count is not zero).
    #[error("invalid frame flags {flags:#04x} with a count of {fd_count} file descriptors")]
    InvalidFlags {
        /// The header's flags byte.
        flags: u8,
        /// The header's file descriptor count.
        fd_count: u8,
    },
    /// The payload of a well-delimited frame is not a valid [`Message`](crate::Message).
    #[error("malformed message: {0}")]
    Payload(String),
    /// A message could not be serialized.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// The decoder's buffer was corrupted by misuse:
    /// [`Decoder::commit`](crate::Decoder::commit) claimed more bytes than
    /// [`Decoder::spare_capacity`](crate::Decoder::spare_capacity) handed out.
    #[error("decoder poisoned: more bytes committed than spare capacity was handed out")]
    Poisoned,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_readable() {
        let bad = ProtoError::BadMagic { found: *b"GET " };
        assert_eq!(
            bad.to_string(),
            "not a processional frame: expected magic \"PRCL\", found \"GET \""
        );
        let version = ProtoError::Version { ours: 1, theirs: 2 };
        assert!(version.to_string().contains("this side speaks version 1"));
        assert!(version.to_string().contains("the peer speaks version 2"));
        let flags = ProtoError::InvalidFlags {
            flags: 0x80,
            fd_count: 0,
        };
        assert_eq!(
            flags.to_string(),
            "invalid frame flags 0x80 with a count of 0 file descriptors"
        );
        assert!(ProtoError::TooManyFds.to_string().contains("253"));
    }
}
