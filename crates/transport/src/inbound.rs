//! Reading frames, and the file descriptors that travel with them, from a
//! socket: the receiving half shared by [`Connection`](crate::Connection) and
//! the [`AuthenticatingListener`](crate::AuthenticatingListener).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use processional_proto::{Decoder, HEADER_LEN, MAX_FDS_PER_FRAME, Message, READ_CHUNK};

use crate::connection::Received;
use crate::error::Error;
use crate::handshake::{FDS_DURING_HANDSHAKE, Handshake, Machine};
use crate::sys;

/// The largest handshake message accepted: an unauthenticated peer cannot
/// make us buffer more than this.
pub(crate) const HANDSHAKE_MAX_FRAME: usize = 16 << 10;

/// Descriptors received but not claimed by a complete frame. An honest peer
/// never has more than one frame's worth waiting (the kernel delivers the
/// descriptors of at most one `sendmsg` per read, and they ride on the first
/// bytes of their frame), so twice that means a broken or hostile peer.
const MAX_UNCLAIMED_FDS: usize = 2 * MAX_FDS_PER_FRAME as usize;

/// What one [`Inbound::fill`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Read this many bytes.
    Read(usize),
    /// Nothing to read now (non-blocking read).
    WouldBlock,
    /// The peer closed its side.
    Eof,
}

/// Frame boundaries tracked while reading the handshake, so no read takes
/// bytes beyond the frame being received: the frames after the handshake
/// then land in a decoder with the connection's own size limit.
#[derive(Debug, Default)]
struct FrameCursor {
    header: [u8; HEADER_LEN],
    header_len: usize,
    body_left: usize,
}

impl FrameCursor {
    /// Bytes until the end of the frame being received (or of its header).
    fn want(&self) -> usize {
        if self.header_len < HEADER_LEN {
            HEADER_LEN - self.header_len
        } else {
            self.body_left
        }
    }

    fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.header_len < HEADER_LEN {
                let n = bytes.len().min(HEADER_LEN - self.header_len);
                self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
                self.header_len += n;
                bytes = &bytes[n..];
                if self.header_len == HEADER_LEN {
                    let len = u32::from_le_bytes([
                        self.header[8],
                        self.header[9],
                        self.header[10],
                        self.header[11],
                    ]);
                    self.body_left = len as usize;
                }
            } else {
                let n = bytes.len().min(self.body_left);
                self.body_left -= n;
                bytes = &bytes[n..];
            }
            if self.header_len == HEADER_LEN && self.body_left == 0 {
                self.header_len = 0;
            }
        }
    }
}

/// The receive side of a connection: a decoder, the descriptors received
/// and not yet handed out, and the end-of-stream state.
#[derive(Debug)]
pub(crate) struct Inbound {
    decoder: Decoder,
    fds: VecDeque<OwnedFd>,
    unix: bool,
    /// The limit on frames after the handshake.
    max_frame: usize,
    /// Set while the handshake runs.
    cursor: Option<FrameCursor>,
    /// A `max_frame` change waiting for the decoder to drain.
    pending_max_frame: bool,
    /// Set on an initiator whose handshake ended before the acceptor's
    /// verdict arrived: the next frame must be `Accepted` (skipped) or
    /// `Refused` (an error).
    verdict_pending: bool,
    /// A pipelined initiator's check of the acceptor, run on the first
    /// frames received: nothing else is delivered before it passes.
    verifying: Option<Box<(Machine, Handshake)>>,
    eof: bool,
}

impl Inbound {
    pub(crate) fn new(unix: bool, max_frame: usize) -> Inbound {
        Inbound {
            decoder: Decoder::with_max_frame(max_frame),
            fds: VecDeque::new(),
            unix,
            max_frame,
            cursor: None,
            verdict_pending: false,
            verifying: None,
            pending_max_frame: false,
            eof: false,
        }
    }

    /// Sets the largest frame accepted. Takes effect at once if no partial
    /// frame is buffered, else as soon as the buffered bytes are consumed.
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
        if self.cursor.is_none() {
            self.pending_max_frame = true;
            self.apply_max_frame();
        }
    }

    fn apply_max_frame(&mut self) {
        if self.pending_max_frame && self.decoder.is_empty() && self.decoder.error().is_none() {
            self.decoder = Decoder::with_max_frame(self.max_frame);
            self.pending_max_frame = false;
        }
    }

    /// Switches to handshake reading: small frames, reads that stop at frame
    /// boundaries. Fails if bytes arrived before the handshake started.
    pub(crate) fn begin_handshake(&mut self) -> Result<(), Error> {
        if !self.decoder.is_empty() || !self.fds.is_empty() {
            return Err(Error::UnexpectedMessage(
                "data arrived before the handshake started".into(),
            ));
        }
        self.decoder = Decoder::with_max_frame(HANDSHAKE_MAX_FRAME);
        self.cursor = Some(FrameCursor::default());
        Ok(())
    }

    /// Back to normal reading after a successful handshake.
    pub(crate) fn end_handshake(&mut self) -> Result<(), Error> {
        if !self.fds.is_empty() {
            return Err(Error::UnexpectedMessage(FDS_DURING_HANDSHAKE.into()));
        }
        self.cursor = None;
        // Reads stopped at the end of the last handshake frame, so nothing
        // is buffered and the switch loses nothing.
        debug_assert!(self.decoder.is_empty());
        self.pending_max_frame = true;
        self.apply_max_frame();
        Ok(())
    }

    /// Expects the acceptor's verdict as the next frame (see
    /// [`Connection::handshake`](crate::Connection::handshake)).
    pub(crate) fn expect_verdict(&mut self) {
        self.verdict_pending = true;
    }

    /// Checks the acceptor's handshake messages as they arrive (pipelined
    /// initiator), before delivering anything else.
    pub(crate) fn verify_first(&mut self, machine: Machine, config: Handshake) {
        self.verifying = Some(Box::new((machine, config)));
    }

    /// The next complete frame with its descriptors, if one is buffered.
    pub(crate) fn next(&mut self) -> Result<Option<Received>, Error> {
        let Some(mut frame) = self.decoder.next_frame()? else {
            return Ok(None);
        };
        while let Some(verifying) = &mut self.verifying {
            let (machine, config) = &mut **verifying;
            if frame.header.fd_count != 0 {
                return Err(machine.unexpected(FDS_DURING_HANDSHAKE));
            }
            if machine.receive(config, frame.message)?.is_some() {
                // Its verdict on our proof comes next.
                self.verifying = None;
                self.verdict_pending = true;
            }
            match self.decoder.next_frame()? {
                Some(next) => frame = next,
                None => return Ok(None),
            }
        }
        if self.verdict_pending {
            match frame.message {
                Message::Accepted => {
                    self.verdict_pending = false;
                    match self.decoder.next_frame()? {
                        Some(next) => frame = next,
                        None => return Ok(None),
                    }
                }
                Message::Refused { reason, detail } => {
                    return Err(Error::Refused { reason, detail });
                }
                other => {
                    return Err(Error::UnexpectedMessage(format!(
                        "{} before the peer accepted the handshake",
                        other.name()
                    )));
                }
            }
        }
        let announced = usize::from(frame.header.fd_count);
        let fds = if announced == 0 {
            Vec::new()
        } else if announced > self.fds.len() {
            return Err(Error::MissingFds {
                announced,
                arrived: self.fds.len(),
            });
        } else {
            self.fds.drain(..announced).collect()
        };
        Ok(Some(Received {
            message: frame.message,
            fds,
        }))
    }

    /// Reads once from `fd` straight into the decoder. Call [`Inbound::next`]
    /// until it returns `None` before each fill. During the handshake,
    /// descriptors are refused: they are closed before they reach this
    /// process's table, and the read fails with
    /// [`Error::UnexpectedMessage`] ([`FDS_DURING_HANDSHAKE`]).
    pub(crate) fn fill(&mut self, fd: BorrowedFd<'_>, flags: i32) -> Result<Fill, Error> {
        if self.eof {
            return Ok(Fill::Eof);
        }
        self.apply_max_frame();
        // After the handshake, read as much as the buffer holds: a frame
        // larger than a chunk then takes one read, not one per chunk.
        let want = self.cursor.as_ref().map_or(usize::MAX, FrameCursor::want);
        let spare = self.decoder.spare_capacity(want.min(READ_CHUNK));
        let len = spare.len().min(want);
        if len == 0 {
            // Only when frames are waiting or the decoder is poisoned, both
            // of which `next` reports first.
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "receive buffer full of undecoded frames",
            )));
        }
        let buf = &mut spare[..len];
        let received = if !self.unix {
            sys::recv(fd, buf, None, flags)
        } else if self.cursor.is_some() {
            // No descriptor belongs to a handshake: the kernel closes any
            // that come, so an unauthenticated peer cannot fill our table.
            sys::recv_refusing_fds(fd, buf, flags)
        } else {
            sys::recv(fd, buf, Some(&mut self.fds), flags)
        };
        let reception = match received {
            Ok(reception) => reception,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(Fill::WouldBlock),
            // A peer that closes with bytes of ours still unread resets the
            // connection: for us it is the end of the stream all the same
            // (`Closed` between frames, `Truncated` inside one).
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => {
                self.eof = true;
                return Ok(Fill::Eof);
            }
            Err(error) => return Err(Error::Io(error)),
        };
        if reception.fds_truncated && self.cursor.is_some() {
            return Err(Error::UnexpectedMessage(FDS_DURING_HANDSHAKE.into()));
        }
        if reception.fds_truncated {
            return Err(Error::MissingFds {
                announced: MAX_FDS_PER_FRAME.into(),
                arrived: self.fds.len(),
            });
        }
        if reception.bytes == 0 {
            self.eof = true;
            return Ok(Fill::Eof);
        }
        if let Some(cursor) = &mut self.cursor {
            cursor.advance(&buf[..reception.bytes]);
        }
        self.decoder.commit(reception.bytes);
        if self.fds.len() > MAX_UNCLAIMED_FDS {
            return Err(Error::MissingFds {
                announced: 0,
                arrived: self.fds.len(),
            });
        }
        Ok(Fill::Read(reception.bytes))
    }

    /// The error for an end of stream: [`Error::Closed`] between frames,
    /// [`Error::Truncated`] within one.
    pub(crate) fn end_of_stream(&self) -> Error {
        if self.decoder.is_empty() {
            Error::Closed
        } else {
            Error::Truncated
        }
    }

    /// Whether the peer closed its side.
    pub(crate) fn at_eof(&self) -> bool {
        self.eof
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use processional_proto::{Message, encode};
    use std::os::fd::AsFd;

    #[test]
    fn cursor_tracks_frame_ends() {
        let mut wire = Vec::new();
        encode(&Message::Ping(7), &mut wire).unwrap();
        encode(&Message::Accepted, &mut wire).unwrap();
        let first = wire.len() - {
            let mut one = Vec::new();
            encode(&Message::Accepted, &mut one).unwrap();
            one.len()
        };
        let mut cursor = FrameCursor::default();
        assert_eq!(cursor.want(), HEADER_LEN);
        cursor.advance(&wire[..5]);
        assert_eq!(cursor.want(), HEADER_LEN - 5);
        cursor.advance(&wire[5..HEADER_LEN]);
        assert_eq!(cursor.want(), first - HEADER_LEN);
        cursor.advance(&wire[HEADER_LEN..first]);
        assert_eq!(cursor.want(), HEADER_LEN);
        cursor.advance(&wire[first..]);
        assert_eq!(cursor.want(), HEADER_LEN);
    }

    #[test]
    fn handshake_reads_stop_at_frame_ends() {
        let (a, b) = sys::socketpair().unwrap();
        let mut wire = Vec::new();
        encode(&Message::Accepted, &mut wire).unwrap();
        let first = wire.len();
        encode(&Message::Ping(1), &mut wire).unwrap();
        sys::send(a.as_fd(), &wire, 0).unwrap();
        let mut inbound = Inbound::new(true, 1 << 20);
        inbound.begin_handshake().unwrap();
        let mut read = 0;
        while read < first {
            match inbound.fill(b.as_fd(), 0).unwrap() {
                Fill::Read(n) => read += n,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(read, first);
        assert_eq!(inbound.next().unwrap().unwrap().message, Message::Accepted);
        inbound.end_handshake().unwrap();
        assert_eq!(
            inbound.fill(b.as_fd(), 0).unwrap(),
            Fill::Read(wire.len() - first)
        );
        assert_eq!(inbound.next().unwrap().unwrap().message, Message::Ping(1));
    }

    #[test]
    fn fds_during_the_handshake_are_refused() {
        let (a, b) = sys::socketpair().unwrap();
        let (r, _w) = sys::socketpair().unwrap();
        // One byte of a header, with descriptors on it: what a peer that
        // wants to fill our descriptor table sends, then waits.
        sys::send_with_fds(a.as_fd(), b"P", &[r.as_fd(), r.as_fd(), r.as_fd()], 0).unwrap();
        let mut inbound = Inbound::new(true, 1 << 20);
        inbound.begin_handshake().unwrap();
        match inbound.fill(b.as_fd(), 0) {
            Err(Error::UnexpectedMessage(what)) => assert_eq!(what, FDS_DURING_HANDSHAKE),
            other => panic!("{other:?}"),
        }
        assert!(inbound.fds.is_empty(), "descriptors were kept");
    }

    #[test]
    fn missing_fds_are_an_error() {
        let (a, b) = sys::socketpair().unwrap();
        let mut wire = Vec::new();
        processional_proto::encode_with_fds(&Message::Ping(1), 2, &mut wire).unwrap();
        sys::send(a.as_fd(), &wire, 0).unwrap();
        let mut inbound = Inbound::new(true, 1 << 20);
        assert!(matches!(inbound.fill(b.as_fd(), 0).unwrap(), Fill::Read(_)));
        assert!(matches!(
            inbound.next(),
            Err(Error::MissingFds {
                announced: 2,
                arrived: 0
            })
        ));
    }
}
