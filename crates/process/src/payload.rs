//! Payloads that travel in shared-memory segments instead of the socket.
//!
//! Above [`INLINE_LIMIT`] bytes, call arguments travel in a segment of the
//! shared-memory pool: the bytes are written once into a pooled (already
//! faulted-in) mapping, the descriptor rides on the frame (unix sockets), and
//! the receiver maps it and decodes straight from the mapping. The sender
//! lends the segment for the duration of the call and takes it back for reuse
//! when the reply arrives: the receiver never reads a segment after it
//! replied, so the sender never rewrites one that is being read.

use std::os::fd::OwnedFd;

use processional_proto::{RemoteError, RemoteErrorKind};
use processional_shm::SegmentView;

/// Encoded arguments larger than this go through a shared-memory segment
/// (on unix sockets). Below it, one socket write beats mapping a segment.
pub(crate) const INLINE_LIMIT: usize = 256 * 1024;

fn codec(message: String) -> RemoteError {
    RemoteError {
        kind: RemoteErrorKind::Codec,
        message,
        location: None,
        backtrace: None,
    }
}

/// Maps the `len` first bytes of descriptor `index` among `fds`.
pub(crate) fn map_segment(mut fds: Vec<OwnedFd>, index: u32, len: u64) -> Result<SegmentView, RemoteError> {
    let index = index as usize;
    if index >= fds.len() {
        return Err(codec(format!(
            "payload names descriptor {index}, the frame carried {}",
            fds.len()
        )));
    }
    let len = usize::try_from(len).map_err(|_| codec(format!("payload length {len} too large")))?;
    let fd = fds.swap_remove(index);
    SegmentView::map(fd, len).map_err(|e| codec(format!("cannot map the payload segment: {e}")))
}
