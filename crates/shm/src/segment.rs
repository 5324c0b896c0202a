//! `Segment`: an anonymous memory file and what is known about who else holds it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Seals;
use crate::error::{Result, ShmError};
use crate::sys::{self, SealRefusal};

/// An anonymous shared memory file: a `memfd` on Linux (`shm_open` + immediate `shm_unlink`
/// elsewhere), sized in bytes, that any process holding its descriptor can map.
///
/// A segment is created *exclusive*: this handle holds the only descriptor, so it may be
/// [resized](Segment::resize). It stops being exclusive when its descriptor is handed out with
/// [`try_clone_fd`](Segment::try_clone_fd) or when it was [received](Segment::from_fd). What
/// holders can still do to it is then decided by its [seals](Segment::seals): see
/// [`seal_read_only`](Segment::seal_read_only) and [`seal_size`](Segment::seal_size).
///
/// A `Segment` does not map its memory: [`ShmBuf`](crate::ShmBuf),
/// [`SharedMutBuf`](crate::SharedMutBuf), [`SegmentView`](crate::SegmentView) and the
/// [`Pool`](crate::Pool) do, and each of them only maps a segment whose seals (or exclusive
/// ownership) guarantee that the mapping stays valid.
///
/// ```
/// use processional_shm::{SegmentView, Segment};
///
/// # fn main() -> Result<(), processional_shm::ShmError> {
/// let mut segment = Segment::create(1 << 16)?;
/// assert!(segment.is_exclusive());
/// segment.resize(1 << 20)?; // only while nobody else holds it
/// segment.seal_size()?;
/// let fd = segment.try_clone_fd()?; // what another process would receive
/// assert!(!segment.is_exclusive());
/// let view = SegmentView::map(fd, 1 << 20)?; // safe: the size is sealed
/// assert_eq!(view.len(), 1 << 20);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    len: usize,
    exclusive: bool,
    /// Seals recorded in-process where the kernel has none (see [`sys::SEALS_ENFORCED`]).
    local_seals: AtomicU32,
}

/// `len` as a file size, refused when the kernel's `off_t` cannot hold it.
fn file_size(len: usize) -> Result<u64> {
    u64::try_from(len)
        .ok()
        .filter(|&size| i64::try_from(size).is_ok())
        .ok_or(ShmError::TooLarge {
            len: len as u64,
            elem_size: 1,
        })
}

impl Segment {
    /// Creates an exclusive, zero-filled segment of `len` bytes.
    ///
    /// Pages are allocated when first written, not here.
    pub fn create(len: usize) -> Result<Segment> {
        let size = file_size(len)?;
        let fd = sys::anonymous_file().map_err(ShmError::os("memfd_create"))?;
        if size > 0 {
            sys::set_file_len(fd.as_fd(), size).map_err(ShmError::os("ftruncate"))?;
        }
        Ok(Segment {
            fd,
            len,
            exclusive: true,
            local_seals: AtomicU32::new(0),
        })
    }

    /// Takes a received descriptor as a segment.
    ///
    /// Checks with `fstat` that it is a regular file (as memfds are) and reads its size. The
    /// segment is not exclusive: the sender still holds it. Nothing is mapped yet.
    pub fn from_fd(fd: OwnedFd) -> Result<Segment> {
        let stat = sys::file_stat(fd.as_fd()).map_err(ShmError::os("fstat"))?;
        if !stat.is_regular_file() {
            return Err(ShmError::NotRegularFile { mode: stat.mode });
        }
        let len = usize::try_from(stat.size).map_err(|_| ShmError::TooLarge {
            len: stat.size,
            elem_size: 1,
        })?;
        Ok(Segment {
            fd,
            len,
            exclusive: false,
            local_seals: AtomicU32::new(0),
        })
    }

    /// The size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the size is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this handle holds the only descriptor of the segment (as far as this crate
    /// knows: a descriptor duplicated from [`as_fd`](Segment::as_fd) behind its back is not
    /// counted).
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// The seals the segment carries now (other holders may add some at any time, unless
    /// [`Seals::SEAL`] is among them).
    ///
    /// A file that cannot carry seals reports [`Seals::NONE`].
    pub fn seals(&self) -> Result<Seals> {
        if !sys::SEALS_ENFORCED {
            return Ok(Seals::from_bits(self.local_seals.load(Ordering::Relaxed)));
        }
        let bits = sys::file_seals(self.fd.as_fd()).map_err(ShmError::os("fcntl(F_GET_SEALS)"))?;
        Ok(bits.map_or(Seals::NONE, Seals::from_bits))
    }

    /// Changes the size to `len` bytes; new bytes read as zero.
    ///
    /// Only while the segment is exclusive and its size is not sealed: otherwise fails with
    /// [`ShmError::NotExclusive`], [`ShmError::ReadOnly`] or [`ShmError::SizeSealed`].
    ///
    /// A segment does not own mappings; [`ShmBuf::resize`](crate::ShmBuf::resize) resizes the
    /// segment and its mapping together.
    pub fn resize(&mut self, len: usize) -> Result<()> {
        if !self.exclusive {
            return Err(ShmError::NotExclusive);
        }
        let seals = self.seals()?;
        if seals.forbids_new_writes() {
            return Err(ShmError::ReadOnly);
        }
        if (len < self.len && seals.contains(Seals::SHRINK))
            || (len > self.len && seals.contains(Seals::GROW))
        {
            return Err(ShmError::SizeSealed);
        }
        let size = file_size(len)?;
        sys::set_file_len(self.fd.as_fd(), size).map_err(ShmError::os("ftruncate"))?;
        self.len = len;
        Ok(())
    }

    /// Seals the segment read-only for every holder, forever: [`Seals::READ_ONLY`] (no writes,
    /// no size change, no further seals).
    ///
    /// Fails with [`ShmError::WritableMappingAlive`] while any writable shared mapping of the
    /// segment exists, in any process: drop those first. Sealing twice is not an error.
    pub fn seal_read_only(&mut self) -> Result<()> {
        self.add_seals(Seals::READ_ONLY)
    }

    /// Seals the size of the segment ([`Seals::FIXED_SIZE`]), so that every holder can map it
    /// without fear of it shrinking under the mapping. The contents stay writable.
    pub fn seal_size(&mut self) -> Result<()> {
        self.add_seals(Seals::FIXED_SIZE)
    }

    /// Adds `wanted` to the segment's seals; succeeds at once if they are all there already.
    ///
    /// Where the kernel has no seals they are only recorded in this handle: the guarantee then
    /// rests on every holder using this crate.
    pub(crate) fn add_seals(&self, wanted: Seals) -> Result<()> {
        if !sys::SEALS_ENFORCED {
            self.local_seals.fetch_or(wanted.bits(), Ordering::Relaxed);
            return Ok(());
        }
        let found = self.seals()?;
        if found.contains(wanted) {
            return Ok(());
        }
        if found.contains(Seals::SEAL) {
            return Err(ShmError::SealsLocked { found, wanted });
        }
        sys::add_file_seals(self.fd.as_fd(), wanted.bits()).map_err(|err| {
            match sys::seal_refusal(&err) {
                Some(SealRefusal::WritableMappingAlive) => ShmError::WritableMappingAlive,
                Some(SealRefusal::Locked) => ShmError::SealsLocked { found, wanted },
                Some(SealRefusal::NotSealable) => ShmError::NotSealable,
                None => ShmError::Os {
                    op: "fcntl(F_ADD_SEALS)",
                    source: err,
                },
            }
        })
    }

    /// The seals, after checking that they include `required`.
    ///
    /// Where the kernel has no seals a received segment's cannot be checked: this then trusts
    /// the sender and reports `required`.
    pub(crate) fn require_seals(&self, required: Seals) -> Result<Seals> {
        if !sys::SEALS_ENFORCED && !self.exclusive {
            return Ok(required);
        }
        let found = self.seals()?;
        if found.contains(required) {
            Ok(found)
        } else {
            Err(ShmError::MissingSeals {
                missing: required - found,
                found,
            })
        }
    }

    /// Re-reads the size of a segment received from elsewhere (after checking that its size is
    /// sealed, the size read is final). An exclusive segment's size is already known.
    pub(crate) fn refresh_len(&mut self) -> Result<()> {
        if !self.exclusive {
            let stat = sys::file_stat(self.fd.as_fd()).map_err(ShmError::os("fstat"))?;
            self.len = usize::try_from(stat.size).map_err(|_| ShmError::TooLarge {
                len: stat.size,
                elem_size: 1,
            })?;
        }
        Ok(())
    }

    /// Duplicates the descriptor, to hand it to another holder. The segment stops being
    /// exclusive.
    pub fn try_clone_fd(&mut self) -> Result<OwnedFd> {
        let fd = self.dup_fd()?;
        self.exclusive = false;
        Ok(fd)
    }

    /// Duplicates the descriptor (close-on-exec), without touching the exclusive flag: for the
    /// owners inside this crate that already track sharing themselves.
    pub(crate) fn dup_fd(&self) -> Result<OwnedFd> {
        self.fd
            .try_clone()
            .map_err(ShmError::os("fcntl(F_DUPFD_CLOEXEC)"))
    }

    /// Gives up the segment for its descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }
}

impl AsFd for Segment {
    /// The segment's descriptor.
    ///
    /// Writing or truncating the file through a duplicate of it while this crate maps the
    /// segment is the same as modifying a memory-mapped file behind the mapping's back; hand
    /// the descriptor to others with [`Segment::try_clone_fd`] or after sealing.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Segment {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_sets_the_size_and_is_exclusive() {
        let segment = Segment::create(10_000).unwrap();
        assert_eq!(segment.len(), 10_000);
        assert!(segment.is_exclusive());
        assert_eq!(segment.seals().unwrap() - Seals::EXEC, Seals::NONE);
        let again = Segment::from_fd(segment.dup_fd().unwrap()).unwrap();
        assert_eq!(again.len(), 10_000);
        assert!(!again.is_exclusive());
    }

    #[test]
    fn resize_needs_exclusive_unsealed_segment() {
        let mut segment = Segment::create(4096).unwrap();
        segment.resize(8192).unwrap();
        assert_eq!(segment.len(), 8192);
        let mut received = Segment::from_fd(segment.dup_fd().unwrap()).unwrap();
        assert!(matches!(received.resize(1), Err(ShmError::NotExclusive)));

        segment.seal_size().unwrap();
        assert!(matches!(segment.resize(1), Err(ShmError::SizeSealed)));
        assert!(matches!(segment.resize(10_000), Err(ShmError::SizeSealed)));
        segment.resize(8192).unwrap();

        segment.seal_read_only().unwrap();
        segment.seal_read_only().unwrap();
        assert!(matches!(segment.resize(1), Err(ShmError::ReadOnly)));
        assert_eq!(received.seals().unwrap() - Seals::EXEC, Seals::READ_ONLY);
        let _ = received.try_clone_fd().unwrap();
    }

    #[test]
    fn sealing_read_only_waits_for_writable_mappings_to_go() {
        use crate::mapping::{Access, Mapping};
        let mut segment = Segment::create(4096).unwrap();
        let writable = Mapping::new(segment.as_fd(), 4096, Access::ReadWrite).unwrap();
        let readable = Mapping::new(segment.as_fd(), 4096, Access::ReadOnly).unwrap();
        assert!(matches!(
            segment.seal_read_only(),
            Err(ShmError::WritableMappingAlive)
        ));
        drop(writable);
        segment.seal_read_only().unwrap();
        drop(readable);
        let err = Mapping::new(segment.as_fd(), 4096, Access::ReadWrite).unwrap_err();
        assert!(matches!(err, ShmError::ReadOnly), "{err}");
    }

    #[test]
    fn sealed_seals_cannot_grow() {
        let mut segment = Segment::create(4096).unwrap();
        segment.add_seals(Seals::SEAL).unwrap();
        assert!(matches!(
            segment.seal_size(),
            Err(ShmError::SealsLocked { .. })
        ));
    }

    #[test]
    fn from_fd_rejects_non_regular_files() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = Segment::from_fd(OwnedFd::from(a)).unwrap_err();
        assert!(matches!(err, ShmError::NotRegularFile { .. }), "{err}");
    }

    #[test]
    fn descriptor_is_a_memfd_outside_dev_shm() {
        let segment = Segment::create(1).unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", segment.as_raw_fd())).unwrap();
        let link = link.to_string_lossy();
        assert!(link.starts_with("/memfd:processional-shm"), "{link}");
    }
}
