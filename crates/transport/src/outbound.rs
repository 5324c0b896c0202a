//! A non-blocking connection's queue of encoded frames waiting to be
//! written, with the file descriptors that ride on some of them.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use processional_proto::{MAX_FDS_PER_FRAME, Message, ProtoError, encode_with_fds};

use crate::error::Error;
use crate::sys;

/// Written bytes are dropped from the front of the buffer once they are at
/// least this many and at least half of it.
const COMPACT_ABOVE: usize = 64 << 10;

/// A buffer that grew past this is released once it drains.
const SHRINK_ABOVE: usize = 1 << 20;

/// Encoded frames not yet written.
#[derive(Debug, Default)]
pub(crate) struct Outbound {
    buf: Vec<u8>,
    /// `buf[..written]` is on the wire already.
    written: usize,
    /// Descriptor batches, each to be sent with the byte at its offset in
    /// `buf` (the first byte of its frame); in offset order.
    fds: VecDeque<(usize, Vec<OwnedFd>)>,
}

impl Outbound {
    /// Bytes waiting to be written.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Appends a frame; `fds` need a unix socket (`unix`).
    pub(crate) fn push(
        &mut self,
        message: &Message,
        fds: Vec<OwnedFd>,
        unix: bool,
    ) -> Result<(), Error> {
        if !fds.is_empty() && !unix {
            return Err(Error::FdsOverTcp);
        }
        let count = u8::try_from(fds.len())
            .ok()
            .filter(|&count| count <= MAX_FDS_PER_FRAME)
            .ok_or(Error::Proto(ProtoError::TooManyFds))?;
        let start = self.buf.len();
        encode_with_fds(message, count, &mut self.buf)?;
        if !fds.is_empty() {
            self.fds.push_back((start, fds));
        }
        Ok(())
    }

    /// Writes as much as the socket takes. `Ok(true)`: everything is out;
    /// `Ok(false)`: the socket is full, wait for writability.
    pub(crate) fn flush(&mut self, fd: BorrowedFd<'_>) -> io::Result<bool> {
        while self.written < self.buf.len() {
            let (end, batch) = match self.fds.front() {
                Some((offset, fds)) if *offset == self.written => {
                    let end = self.fds.get(1).map_or(self.buf.len(), |next| next.0);
                    (end, Some(fds))
                }
                Some((offset, _)) => (*offset, None),
                None => (self.buf.len(), None),
            };
            let chunk = &self.buf[self.written..end];
            let result = match batch {
                None => sys::send(fd, chunk, sys::DONTWAIT),
                Some(fds) => {
                    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                    sys::send_with_fds(fd, chunk, &borrowed, sys::DONTWAIT)
                }
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    if batch.is_some() {
                        // The descriptors went out with the first byte.
                        self.fds.pop_front();
                    }
                    self.written += n;
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    self.compact();
                    return Ok(false);
                }
                Err(error) => return Err(error),
            }
        }
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > SHRINK_ABOVE {
            self.buf = Vec::new();
        }
        Ok(true)
    }

    fn compact(&mut self) {
        if self.written >= COMPACT_ABOVE && self.written * 2 >= self.buf.len() {
            self.buf.drain(..self.written);
            for (offset, _) in &mut self.fds {
                *offset -= self.written;
            }
            self.written = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbound::{Fill, Inbound};

    #[test]
    fn fds_ride_on_their_frame() {
        let (a, b) = sys::socketpair().unwrap();
        let mut out = Outbound::default();
        let (r1, _w1) = sys::socketpair().unwrap();
        let (r2, _w2) = sys::socketpair().unwrap();
        let (r3, _w3) = sys::socketpair().unwrap();
        out.push(&Message::Ping(1), vec![], true).unwrap();
        out.push(&Message::Ping(2), vec![r1], true).unwrap();
        out.push(&Message::Ping(3), vec![r2, r3], true).unwrap();
        out.push(&Message::Ping(4), vec![], true).unwrap();
        assert!(out.flush(a.as_fd()).unwrap());
        assert_eq!(out.pending(), 0);
        let mut inbound = Inbound::new(true, 1 << 20);
        let mut got = Vec::new();
        while got.len() < 4 {
            while let Some(received) = inbound.next().unwrap() {
                got.push(received);
            }
            if got.len() < 4 {
                assert!(matches!(inbound.fill(b.as_fd(), 0).unwrap(), Fill::Read(_)));
            }
        }
        let counts: Vec<_> = got.iter().map(|r| r.fds.len()).collect();
        assert_eq!(counts, [0, 1, 2, 0]);
    }

    #[test]
    fn refuses_fds_over_tcp() {
        let mut out = Outbound::default();
        let (r, _w) = sys::socketpair().unwrap();
        assert!(matches!(
            out.push(&Message::Ping(1), vec![r], false),
            Err(Error::FdsOverTcp)
        ));
        assert_eq!(out.pending(), 0);
    }
}
