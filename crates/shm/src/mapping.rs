//! `Mapping`: a shared memory mapping of a segment (memmap2 underneath), with the few
//! operations memmap2 does not offer.

use std::fmt;
use std::os::fd::{AsRawFd, BorrowedFd};

use memmap2::{Advice, Mmap, MmapOptions, MmapRaw};

use crate::error::{Result, ShmError};
use crate::sys;

/// Whether a mapping may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    ReadOnly,
    ReadWrite,
}

/// A mapping of the first `len` bytes of a segment: shared and writable, or private and
/// read-only.
///
/// Read-only mappings are private (`MAP_PRIVATE`): never written, they read the file's own
/// pages, and unlike a shared mapping of a descriptor opened for writing (as every memfd is),
/// the kernel does not count them as writable — which would block `F_SEAL_WRITE`, and before
/// Linux 6.7 made write-sealed memfds impossible to map shared at all.
///
/// It hands out a raw pointer only: the owners decide, from seals and ownership, when slices of
/// it may be formed. The mapping is page-aligned, so any element type with an alignment up to
/// a page is aligned at its start.
pub(crate) struct Mapping {
    map: Map,
}

enum Map {
    ReadWrite(MmapRaw),
    ReadOnly(Mmap),
}

impl Mapping {
    /// Maps the first `len` bytes of the file behind `fd`.
    pub(crate) fn new(fd: BorrowedFd<'_>, len: usize, access: Access) -> Result<Mapping> {
        let mut options = MmapOptions::new();
        options.len(len);
        let raw_fd = fd.as_raw_fd();
        let map = match access {
            // SAFETY: memmap2 asks the caller to keep the file from changing or shrinking under
            // the mapping; this type hands out a raw pointer only, and each owner forms slices
            // from it only when seals or exclusive ownership guarantee exactly that.
            Access::ReadOnly => unsafe { options.map_copy_read_only(raw_fd) }.map(Map::ReadOnly),
            Access::ReadWrite => options.map_raw(raw_fd).map(Map::ReadWrite),
        };
        let map = map.map_err(|err| match err {
            // Writable shared mappings of a write-sealed memfd are refused.
            err if access == Access::ReadWrite && sys::is_write_sealed_refusal(&err) => {
                ShmError::ReadOnly
            }
            err => ShmError::Os {
                op: "mmap",
                source: err,
            },
        })?;
        Ok(Mapping { map })
    }

    /// The mapped length in bytes.
    pub(crate) fn len(&self) -> usize {
        match &self.map {
            Map::ReadWrite(raw) => raw.len(),
            Map::ReadOnly(map) => map.len(),
        }
    }

    /// The start of the mapping (page-aligned, never null). Writable only if the mapping was
    /// created writable and has not been made read-only since.
    pub(crate) fn ptr(&self) -> *mut u8 {
        match &self.map {
            Map::ReadWrite(raw) => raw.as_mut_ptr(),
            Map::ReadOnly(map) => map.as_ptr().cast_mut(),
        }
    }

    /// Asks the kernel to fault in the first `len` bytes writable now, in one call, rather than
    /// one page fault at a time when they are written (`MADV_POPULATE_WRITE`, Linux 5.14).
    ///
    /// Only an optimization: kernels without it are ignored.
    pub(crate) fn populate_for_write(&self, len: usize) {
        // Below this, one syscall more is not worth it.
        const WORTH_IT: usize = 64 << 10;
        let len = len.min(self.len());
        if let (Map::ReadWrite(raw), true) = (&self.map, len >= WORTH_IT) {
            // Errors (an older kernel, or memory pressure) leave the pages to normal faults.
            let _ = raw.advise_range(Advice::PopulateWrite, 0, len);
        }
    }

    /// Replaces this mapping, in place, by a new mapping of the same pages with `access`.
    ///
    /// Pointers into the mapping stay valid and read the same bytes throughout: this is how a
    /// buffer becomes read-only while slices of it are borrowed. It drops the kernel's record
    /// that the mapping may be written, which `F_SEAL_WRITE` requires and `mprotect` keeps.
    ///
    /// If the kernel refuses, the mapping is restored with its previous access and the error
    /// returned. Should even that fail, the process aborts: borrowed slices could point into a
    /// hole otherwise.
    ///
    /// # Safety
    ///
    /// `fd` must be the file this mapping was created from. If `access` is read-only, nothing
    /// may write through the mapping afterwards (no `&mut` into it may be alive or created).
    pub(crate) unsafe fn reprotect(
        &self,
        fd: BorrowedFd<'_>,
        from: Access,
        to: Access,
    ) -> Result<()> {
        // memmap2 maps one byte for an empty mapping; the kernel rounds lengths up to pages.
        let len = self.len().max(1);
        // SAFETY: `self.ptr()` is the page-aligned start of this shared mapping of `fd` from
        // offset 0, `len` bytes long, owned by `self`; the caller guarantees that nothing writes
        // through it once it is read-only.
        let res = unsafe { sys::replace_mapping(self.ptr(), len, to == Access::ReadWrite, fd) };
        res.map_err(|err| {
            // SAFETY: as above; restoring the previous access cannot break the caller's
            // guarantee, which only concerns the state after a successful call.
            let restored =
                unsafe { sys::replace_mapping(self.ptr(), len, from == Access::ReadWrite, fd) };
            if restored.is_err() {
                eprintln!("processional-shm: a mapping could be neither replaced nor restored");
                std::process::abort();
            }
            ShmError::Os {
                op: "mmap(MAP_FIXED)",
                source: err,
            }
        })
    }

    /// Changes the mapped length to `len`, keeping the pages already mapped (and faulted in)
    /// where the kernel can (`mremap` on Linux); the mapping may move.
    ///
    /// # Safety
    ///
    /// No reference into the mapping may be alive. The file must be at least `len` bytes long
    /// before any byte beyond the old length is accessed. The mapping must be writable (never
    /// made read-only).
    pub(crate) unsafe fn resize(&mut self, fd: BorrowedFd<'_>, len: usize) -> Result<()> {
        let Map::ReadWrite(raw) = &mut self.map else {
            return Err(ShmError::ReadOnly);
        };
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
        {
            let _ = fd;
            let options = memmap2::RemapOptions::new().may_move(true);
            // SAFETY: the caller guarantees no reference into the mapping is alive, so it may
            // move.
            unsafe { raw.remap(len, options) }.map_err(ShmError::os("mremap"))
        }
        #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
        {
            let _ = raw;
            *self = Mapping::new(fd, len, Access::ReadWrite)?;
            Ok(())
        }
    }
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("ptr", &self.ptr())
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::Segment;

    #[test]
    fn reprotect_keeps_the_address_and_the_bytes() {
        let segment = Segment::create(3 * 4096).unwrap();
        let mapping = Mapping::new(segment.as_fd(), segment.len(), Access::ReadWrite).unwrap();
        // SAFETY: the mapping is writable, 3 pages long, and nothing else references it.
        unsafe { mapping.ptr().add(5000).write(42) };
        let before = mapping.ptr();
        // SAFETY: same file; nothing writes through the mapping afterwards.
        unsafe { mapping.reprotect(segment.as_fd(), Access::ReadWrite, Access::ReadOnly) }.unwrap();
        assert_eq!(mapping.ptr(), before);
        // SAFETY: the mapping is readable and 3 pages long.
        assert_eq!(unsafe { mapping.ptr().add(5000).read() }, 42);
        // Without a writable mapping, the segment can now be sealed against writes.
        segment.add_seals(crate::Seals::READ_ONLY).unwrap();
    }

    #[test]
    fn resize_keeps_the_contents() {
        let mut segment = Segment::create(4096).unwrap();
        let mut mapping = Mapping::new(segment.as_fd(), 4096, Access::ReadWrite).unwrap();
        // SAFETY: the mapping is writable and one page long.
        unsafe { mapping.ptr().write(7) };
        segment.resize(1 << 20).unwrap();
        // SAFETY: nothing references the mapping; the file is 1 MiB long.
        unsafe { mapping.resize(segment.as_fd(), 1 << 20) }.unwrap();
        assert_eq!(mapping.len(), 1 << 20);
        // SAFETY: the mapping is 1 MiB long and writable.
        unsafe {
            assert_eq!(mapping.ptr().read(), 7);
            assert_eq!(mapping.ptr().add((1 << 20) - 1).read(), 0);
        }
    }
}
