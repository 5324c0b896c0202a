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
///
/// ```
/// use std::mem::MaybeUninit;
/// use processional_shm::{SegmentView, SharedMutBuf};
///
/// # fn main() -> Result<(), processional_shm::ShmError> {
/// let shared = SharedMutBuf::new(8)?; // its size is sealed
/// shared.write(0, 0x0102_0304u32)?;
/// let view = SegmentView::map(shared.try_clone_fd()?, shared.len())?;
/// // Copied out into private memory: the writer cannot change what we read.
/// let mut out = [MaybeUninit::uninit(); 4];
/// assert_eq!(view.copy_to(0, &mut out)?, 0x0102_0304u32.to_ne_bytes());
/// # Ok(())
/// # }
/// ```
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

    /// Copies `out.len()` bytes starting at `offset` into `out` and returns
    /// them, initialized.
    ///
    /// Safe whatever the owner does meanwhile: no reference to the shared
    /// bytes is ever made, only a copy of what they held at the moment each
    /// byte was read. If the owner writes concurrently, the copy may mix old
    /// and new bytes; it is still plain bytes in private memory, for a
    /// decoder that validates its input. Fails with
    /// [`ShmError::OutOfBounds`] if the range does not lie inside the view.
    pub fn copy_to<'a>(
        &self,
        offset: usize,
        out: &'a mut [std::mem::MaybeUninit<u8>],
    ) -> Result<&'a mut [u8]> {
        let end = offset.checked_add(out.len());
        if end.is_none_or(|end| end > self.len()) {
            return Err(ShmError::OutOfBounds {
                offset: offset as u64,
                len: out.len() as u64,
                size: self.len() as u64,
            });
        }
        // SAFETY: `offset + out.len()` lies inside the mapping (checked),
        // which stays mapped and readable while `self` lives (its size is
        // sealed); `out` is private memory of ours, so the ranges cannot
        // overlap. The source is read through a raw pointer, never through a
        // reference, so a concurrent write by the owner changes only which
        // byte values land in `out`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.ptr().add(offset),
                out.as_mut_ptr().cast::<u8>(),
                out.len(),
            );
        }
        // SAFETY: every byte of `out` was just written.
        Ok(unsafe { &mut *(out as *mut [std::mem::MaybeUninit<u8>] as *mut [u8]) })
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

    #[test]
    fn copies_ranges_and_refuses_out_of_bounds() {
        let mut segment = Segment::create(16).unwrap();
        segment.seal_size().unwrap();
        let view = SegmentView::map(segment.try_clone_fd().unwrap(), 16).unwrap();
        let mut out = [std::mem::MaybeUninit::new(7u8); 4];
        assert_eq!(view.copy_to(12, &mut out).unwrap(), &[0, 0, 0, 0]);
        let err = view.copy_to(13, &mut out).unwrap_err();
        assert!(matches!(err, ShmError::OutOfBounds { .. }), "{err}");
        assert!(view.copy_to(usize::MAX, &mut out).is_err());
    }
}
