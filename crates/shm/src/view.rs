//! `SegmentView`: the receiving side of a lent segment.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};

use crate::error::{Result, ShmError};
use crate::mapping::{Access, Mapping};
use crate::{Seals, Segment};

/// A read-only mapping of a received segment whose size is sealed but whose contents its owner
/// may still write — typically a [`Loan`](crate::Loan) from another process's
/// [`Pool`](crate::Pool).
///
/// Mapping it is always safe: with the size sealed, no holder can cut the file under the
/// mapping. Reading it as a slice is `unsafe`, because only the protocol between the two sides
/// (the owner does not write a lent segment until the receiver replies) keeps the bytes still
/// while they are read. For segments sealed read-only, use
/// [`ShmBuf::from_fd`](crate::ShmBuf::from_fd), which reads safely.
pub struct SegmentView {
    segment: Segment,
    map: Mapping,
}

impl SegmentView {
    /// Maps the first `len` bytes of a received descriptor read-only.
    ///
    /// Fails with [`ShmError::MissingSeals`] if the segment's size is not sealed, and with
    /// [`ShmError::OutOfBounds`] if it is shorter than `len`.
    pub fn map(fd: OwnedFd, len: usize) -> Result<SegmentView> {
        let mut segment = Segment::from_fd(fd)?;
        segment.require_seals(Seals::FIXED_SIZE)?;
        segment.refresh_len()?;
        if len > segment.len() {
            return Err(ShmError::OutOfBounds {
                offset: 0,
                len: len as u64,
                size: segment.len() as u64,
            });
        }
        let map = Mapping::new(segment.as_fd(), len, Access::ReadOnly)?;
        Ok(SegmentView { segment, map })
    }

    /// The length in bytes mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the contents are sealed against writes, by anyone (then reading them can never
    /// race with a write).
    pub fn is_immutable(&self) -> Result<bool> {
        Ok(self.segment.seals()?.contains(Seals::WRITE))
    }

    /// The start of the mapping, valid for [`len`](SegmentView::len) bytes of reads while the
    /// view lives.
    pub fn as_ptr(&self) -> *const u8 {
        self.map.ptr()
    }

    /// The bytes.
    ///
    /// # Safety
    ///
    /// Nobody may write the segment while the slice lives: the owner must follow the lending
    /// protocol (no write between lending the segment and the receiver's reply), or the segment
    /// must be [immutable](SegmentView::is_immutable).
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is valid and readable for `len` bytes while `self` lives and the
        // size is sealed, so it cannot turn into a hole; the caller guarantees that the bytes do
        // not change while the slice lives.
        unsafe { std::slice::from_raw_parts(self.map.ptr(), self.map.len()) }
    }
}

impl fmt::Debug for SegmentView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SegmentView")
            .field("len", &self.len())
            .field("fd", &self.segment.as_fd())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_size_sealed_segment_and_checks_the_length() {
        let mut segment = Segment::create(100).unwrap();
        let err = SegmentView::map(segment.try_clone_fd().unwrap(), 10).unwrap_err();
        assert!(matches!(err, ShmError::MissingSeals { .. }), "{err}");
        segment.seal_size().unwrap();
        let err = SegmentView::map(segment.try_clone_fd().unwrap(), 101).unwrap_err();
        assert!(matches!(err, ShmError::OutOfBounds { .. }), "{err}");
        let view = SegmentView::map(segment.try_clone_fd().unwrap(), 100).unwrap();
        assert_eq!(view.len(), 100);
        assert!(!view.is_immutable().unwrap());
        // SAFETY: nobody writes the segment in this test.
        assert!(unsafe { view.as_slice() }.iter().all(|&b| b == 0));
    }
}
