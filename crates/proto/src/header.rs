//! The fixed 12-byte header in front of every frame.

use crate::error::ProtoError;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"PRCL";

/// The protocol version this crate speaks, carried by every frame header and
/// by [`Hello`](crate::Hello). Peers with different versions refuse each other.
///
/// Version 5 adds [`RemoteErrorKind::Overloaded`](crate::RemoteErrorKind::Overloaded):
/// a peer of version 4 could not decode a reply carrying it.
pub const PROTOCOL_VERSION: u16 = 5;

/// The size of a [`FrameHeader`] on the wire, in bytes.
pub const HEADER_LEN: usize = 12;

/// The default limit on a frame's payload length: 64 MiB.
///
/// Bigger values travel as shared-memory segments (unix sockets) or must be
/// split by the layer above.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// Flag bit 0: file descriptors travel with the frame; the header's
/// `fd_count` says how many.
pub const FLAG_FDS: u8 = 1 << 0;

/// The most file descriptors one frame may carry: Linux's `SCM_MAX_FD`, the
/// limit on descriptors in one `SCM_RIGHTS` control message.
pub const MAX_FDS_PER_FRAME: u8 = 253;

/// Every flag bit this version knows; the others must be zero.
const KNOWN_FLAGS: u8 = FLAG_FDS;

/// The header of a frame, decoded.
///
/// See the [crate documentation](crate#frame-layout) for the byte layout.
///
/// ```
/// use processional_proto::{DEFAULT_MAX_FRAME, FrameHeader, HEADER_LEN};
///
/// let header = FrameHeader::new(100, 1).unwrap();
/// let bytes: [u8; HEADER_LEN] = header.encode();
/// assert_eq!(&bytes[..4], b"PRCL");
/// let decoded = FrameHeader::decode(&bytes, DEFAULT_MAX_FRAME).unwrap();
/// assert!(decoded.has_fds());
/// assert_eq!(decoded.frame_len(), HEADER_LEN + 100);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// The sender's protocol version.
    pub version: u16,
    /// Flag bits; only [`FLAG_FDS`] is defined.
    pub flags: u8,
    /// How many file descriptors the transport attaches to this frame;
    /// zero unless [`FLAG_FDS`] is set, at most [`MAX_FDS_PER_FRAME`].
    pub fd_count: u8,
    /// The length of the payload that follows the header, in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// A header of [`PROTOCOL_VERSION`] for a payload of `len` bytes with
    /// `fd_count` attached descriptors ([`FLAG_FDS`] is set when there are
    /// any).
    ///
    /// # Errors
    ///
    /// [`ProtoError::TooManyFds`] if `fd_count` exceeds [`MAX_FDS_PER_FRAME`].
    pub fn new(len: u32, fd_count: u8) -> Result<Self, ProtoError> {
        if fd_count > MAX_FDS_PER_FRAME {
            return Err(ProtoError::TooManyFds);
        }
        Ok(Self {
            version: PROTOCOL_VERSION,
            flags: if fd_count == 0 { 0 } else { FLAG_FDS },
            fd_count,
            len,
        })
    }

    /// Whether file descriptors travel with this frame.
    pub fn has_fds(&self) -> bool {
        self.flags & FLAG_FDS != 0
    }

    /// The size of the whole frame on the wire: header plus payload.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.len as usize)
    }

    /// The header's wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0; HEADER_LEN];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[4..6].copy_from_slice(&self.version.to_le_bytes());
        bytes[6] = self.flags;
        bytes[7] = self.fd_count;
        bytes[8..12].copy_from_slice(&self.len.to_le_bytes());
        bytes
    }

    /// Parses and validates a header, refusing payloads longer than
    /// `max_frame` bytes.
    ///
    /// # Errors
    ///
    /// Checked in this order: [`ProtoError::BadMagic`],
    /// [`ProtoError::Version`] (any version but [`PROTOCOL_VERSION`]),
    /// [`ProtoError::InvalidFlags`] (unknown flag bits, or [`FLAG_FDS`] set
    /// with no descriptor or descriptors without the flag),
    /// [`ProtoError::TooManyFds`], [`ProtoError::FrameTooLarge`].
    pub fn decode(bytes: &[u8; HEADER_LEN], max_frame: usize) -> Result<Self, ProtoError> {
        let [m0, m1, m2, m3, v0, v1, flags, fd_count, l0, l1, l2, l3] = *bytes;
        let found = [m0, m1, m2, m3];
        if found != MAGIC {
            return Err(ProtoError::BadMagic { found });
        }
        let version = u16::from_le_bytes([v0, v1]);
        if version != PROTOCOL_VERSION {
            return Err(ProtoError::Version {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        let fds_flagged = flags & FLAG_FDS != 0;
        if flags & !KNOWN_FLAGS != 0 || fds_flagged != (fd_count != 0) {
            return Err(ProtoError::InvalidFlags { flags, fd_count });
        }
        if fd_count > MAX_FDS_PER_FRAME {
            return Err(ProtoError::TooManyFds);
        }
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        if len as usize > max_frame {
            return Err(ProtoError::FrameTooLarge {
                len: len.into(),
                max: max_frame,
            });
        }
        Ok(Self {
            version,
            flags,
            fd_count,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(header: FrameHeader) -> [u8; HEADER_LEN] {
        header.encode()
    }

    #[test]
    fn layout_is_the_documented_one() {
        let header = FrameHeader {
            version: 0x0201,
            flags: FLAG_FDS,
            fd_count: 3,
            len: 0x0403_0201,
        };
        assert_eq!(
            header.encode(),
            [
                b'P', b'R', b'C', b'L', 0x01, 0x02, 0x01, 3, 0x01, 0x02, 0x03, 0x04
            ]
        );
    }

    #[test]
    fn round_trips() {
        for (len, fds) in [(0, 0), (1, 0), (17, 1), (u32::MAX, MAX_FDS_PER_FRAME)] {
            let header = FrameHeader::new(len, fds).unwrap();
            assert_eq!(header.has_fds(), fds != 0);
            assert_eq!(header.frame_len(), HEADER_LEN + len as usize);
            let decoded = FrameHeader::decode(&header.encode(), u32::MAX as usize).unwrap();
            assert_eq!(decoded, header);
        }
    }

    #[test]
    fn new_refuses_too_many_fds() {
        assert_eq!(
            FrameHeader::new(0, MAX_FDS_PER_FRAME + 1),
            Err(ProtoError::TooManyFds)
        );
    }

    #[test]
    fn refuses_bad_magic() {
        let mut raw = bytes(FrameHeader::new(4, 0).unwrap());
        raw[..4].copy_from_slice(b"HTTP");
        assert_eq!(
            FrameHeader::decode(&raw, DEFAULT_MAX_FRAME),
            Err(ProtoError::BadMagic { found: *b"HTTP" })
        );
    }

    #[test]
    fn refuses_other_versions() {
        // Among them the previous version: its peers are refused too.
        for theirs in [0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, u16::MAX] {
            let header = FrameHeader {
                version: theirs,
                ..FrameHeader::new(4, 0).unwrap()
            };
            let err = FrameHeader::decode(&header.encode(), DEFAULT_MAX_FRAME).unwrap_err();
            assert_eq!(
                err,
                ProtoError::Version {
                    ours: PROTOCOL_VERSION,
                    theirs
                }
            );
        }
    }

    #[test]
    fn refuses_inconsistent_flags() {
        let base = FrameHeader::new(4, 0).unwrap();
        for (flags, fd_count) in [(0, 1), (FLAG_FDS, 0), (0x80, 0), (FLAG_FDS | 0x02, 2)] {
            let header = FrameHeader {
                flags,
                fd_count,
                ..base
            };
            assert_eq!(
                FrameHeader::decode(&header.encode(), DEFAULT_MAX_FRAME),
                Err(ProtoError::InvalidFlags { flags, fd_count })
            );
        }
    }

    #[test]
    fn refuses_too_many_fds() {
        for fd_count in [MAX_FDS_PER_FRAME + 1, u8::MAX] {
            let header = FrameHeader {
                flags: FLAG_FDS,
                fd_count,
                ..FrameHeader::new(4, 0).unwrap()
            };
            assert_eq!(
                FrameHeader::decode(&header.encode(), DEFAULT_MAX_FRAME),
                Err(ProtoError::TooManyFds)
            );
        }
    }

    #[test]
    fn enforces_the_length_limit() {
        let at_limit = FrameHeader::new(1000, 0).unwrap();
        assert_eq!(FrameHeader::decode(&at_limit.encode(), 1000), Ok(at_limit));
        let huge = FrameHeader::new(u32::MAX, 0).unwrap();
        assert_eq!(
            FrameHeader::decode(&huge.encode(), DEFAULT_MAX_FRAME),
            Err(ProtoError::FrameTooLarge {
                len: u32::MAX.into(),
                max: DEFAULT_MAX_FRAME
            })
        );
    }
}
