//! `ShmBuf`: bytes in shared memory, writable by their single owner, read-only once shared.

use std::fmt;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Result, ShmError};
use crate::mapping::{Access, Mapping};
use crate::transfer::{self, HeldFd, TransferFd};
use crate::wire::{self, FdRef, Incoming};
use crate::{Seals, Segment};

/// The seals a received segment needs before it can be read through a `&[u8]`: nobody can
/// change its contents or its size anymore.
const IMMUTABLE: Seals = Seals::from_bits(Seals::WRITE.bits() | Seals::FIXED_SIZE.bits());

/// A `ShmBuf`'s mapping is writable and only the owner can reach it.
const UNIQUE: u8 = 0;
/// Its mapping has been made read-only but sealing it failed; sharing may be retried.
const FROZEN: u8 = 1;
/// Its segment is sealed read-only: it may be mapped by anyone and never changes.
const SHARED: u8 = 2;

/// Bytes in an anonymous shared memory segment.
///
/// A new `ShmBuf` belongs to its creator alone: nobody else holds its descriptor, and
/// [`as_mut_slice`](ShmBuf::as_mut_slice) and [`resize`](ShmBuf::resize) work on it. Once it
/// is *shared* — by [`share`](ShmBuf::share), [`shared_fd`](ShmBuf::shared_fd),
/// [`try_clone_fd`](ShmBuf::try_clone_fd), or by being serialized inside
/// [`transfer::collect_fds`] — its segment is sealed read-only ([`Seals::READ_ONLY`]) in the
/// kernel, for every process: mutable access is then refused with [`ShmError::ReadOnly`], and a
/// receiver can map it knowing that the bytes will never change under it.
///
/// [`Clone`] is cheap (a reference count) and needs no sharing; while clones exist, mutable
/// access is refused with [`ShmError::Aliased`].
///
/// For memory that both sides keep writing, see [`SharedMutBuf`](crate::SharedMutBuf).
///
/// # Serialization
///
/// Inside [`transfer::collect_fds`] a `ShmBuf` travels by file descriptor (it is shared, so
/// sealed, first); elsewhere as its bytes. See [the `transfer` module](crate::transfer).
#[derive(Clone)]
pub struct ShmBuf {
    inner: Arc<BufInner>,
}

/// What every clone of a `ShmBuf` points to.
pub(crate) struct BufInner {
    segment: Segment,
    map: Mapping,
    /// The bytes in view: all of the mapping.
    len: usize,
    /// `UNIQUE`, `FROZEN` or `SHARED`.
    state: AtomicU8,
    /// Serializes the transitions out of `UNIQUE`.
    sharing: Mutex<()>,
}

impl ShmBuf {
    /// A new buffer of `len` zero bytes, in a fresh segment.
    ///
    /// Pages are allocated when first written.
    pub fn new(len: usize) -> Result<ShmBuf> {
        let segment = Segment::create(len)?;
        let map = Mapping::new(segment.as_fd(), len, Access::ReadWrite)?;
        Ok(ShmBuf::with_parts(segment, map, len, UNIQUE))
    }

    /// A new buffer holding a copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Result<ShmBuf> {
        let mut buf = ShmBuf::new(bytes.len())?;
        buf.inner.map.populate_for_write(bytes.len());
        buf.as_mut_slice()?.copy_from_slice(bytes);
        Ok(buf)
    }

    /// Maps a whole segment that is sealed read-only (at least [`Seals::WRITE`] and
    /// [`Seals::FIXED_SIZE`]); fails with [`ShmError::MissingSeals`] otherwise.
    pub fn from_segment(mut segment: Segment) -> Result<ShmBuf> {
        segment_require_immutable(&mut segment)?;
        let len = segment.len();
        ShmBuf::map_shared(segment, len)
    }

    /// Maps a received descriptor: a segment sealed read-only, as [`ShmBuf::shared_fd`] and
    /// [`ShmBuf::try_clone_fd`] produce. The bytes are the sender's pages, not a copy.
    pub fn from_fd(fd: OwnedFd) -> Result<ShmBuf> {
        ShmBuf::from_segment(Segment::from_fd(fd)?)
    }

    /// Maps the first `len` bytes of a received descriptor, sealed read-only.
    pub(crate) fn from_fd_prefix(fd: OwnedFd, len: u64) -> Result<ShmBuf> {
        let mut segment = Segment::from_fd(fd)?;
        segment_require_immutable(&mut segment)?;
        let size = segment.len();
        let len =
            usize::try_from(len)
                .ok()
                .filter(|&len| len <= size)
                .ok_or(ShmError::OutOfBounds {
                    offset: 0,
                    len,
                    size: size as u64,
                })?;
        ShmBuf::map_shared(segment, len)
    }

    /// Maps the descriptor a message refers to, taken from the current
    /// [`transfer::provide_fds`] context.
    pub(crate) fn from_fd_ref(fd_ref: FdRef) -> Result<ShmBuf> {
        ShmBuf::from_fd_prefix(transfer::take_fd(fd_ref.index)?, fd_ref.len)
    }

    /// Maps `len` bytes of a sealed segment read-only.
    fn map_shared(segment: Segment, len: usize) -> Result<ShmBuf> {
        let map = Mapping::new(segment.as_fd(), len, Access::ReadOnly)?;
        Ok(ShmBuf::with_parts(segment, map, len, SHARED))
    }

    fn with_parts(segment: Segment, map: Mapping, len: usize, state: u8) -> ShmBuf {
        let inner = BufInner {
            segment,
            map,
            len,
            state: AtomicU8::new(state),
            sharing: Mutex::new(()),
        };
        ShmBuf {
            inner: Arc::new(inner),
        }
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.inner.len
    }

    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is valid, readable and `len` bytes long for as long as `inner`
        // lives, which `&self` guarantees; it starts page-aligned (not null). Its bytes change
        // only through `as_mut_slice`, which needs `&mut self` (so no shared borrow is alive);
        // once shared, the kernel forbids every write and size change (`F_SEAL_WRITE`,
        // `F_SEAL_SHRINK`). Before that, nobody else holds the descriptor.
        unsafe { std::slice::from_raw_parts(self.inner.map.ptr(), self.inner.len) }
    }

    /// The bytes, writable: only while this handle is the only one and the buffer has not been
    /// shared. Fails with [`ShmError::ReadOnly`] once shared, [`ShmError::Aliased`] while clones
    /// exist.
    pub fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        let inner = self.unique_mut()?;
        // SAFETY: the mapping is writable (state UNIQUE), valid and `len` bytes long while
        // `inner` lives; `&mut self` on the only handle rules out every other reference to the
        // bytes, and nobody else holds the descriptor.
        Ok(unsafe { std::slice::from_raw_parts_mut(inner.map.ptr(), inner.len) })
    }

    /// The inner state, if this handle may change the bytes.
    fn unique_mut(&mut self) -> Result<&mut BufInner> {
        if self.inner.state.load(Ordering::Acquire) != UNIQUE {
            return Err(ShmError::ReadOnly);
        }
        Arc::get_mut(&mut self.inner).ok_or(ShmError::Aliased)
    }

    /// Changes the length to `len` bytes: new bytes read as zero, pages already written stay
    /// where they are (no copy, no new page faults for them on Linux). Same conditions as
    /// [`as_mut_slice`](ShmBuf::as_mut_slice).
    pub fn resize(&mut self, len: usize) -> Result<()> {
        let inner = self.unique_mut()?;
        let old = inner.len;
        if len == old {
            return Ok(());
        }
        if len < old {
            // Shrink the mapping first, so that no mapped byte lies past the end of the file.
            // SAFETY: `&mut` on the only handle: no reference into the mapping is alive.
            unsafe { inner.map.resize(inner.segment.as_fd(), len) }?;
            inner.len = len;
            // Should this fail the file merely stays longer than the mapping.
            inner.segment.resize(len)
        } else {
            inner.segment.resize(len)?;
            // SAFETY: no reference into the mapping is alive (as above); the file is `len`
            // bytes long now.
            if let Err(err) = unsafe { inner.map.resize(inner.segment.as_fd(), len) } {
                // The mapping kept its old length; shrinking the file back is best effort.
                let _ = inner.segment.resize(old);
                return Err(err);
            }
            inner.len = len;
            Ok(())
        }
    }

    /// Shares the buffer: seals its segment read-only ([`Seals::READ_ONLY`]) so that it can be
    /// handed to other processes. Slices borrowed from it stay valid. Idempotent.
    ///
    /// Our own writable mapping is replaced, at the same address, by a read-only mapping of
    /// the same pages first, since the kernel refuses `F_SEAL_WRITE` while a writable shared
    /// mapping exists.
    pub fn share(&self) -> Result<()> {
        let inner = &*self.inner;
        if inner.state.load(Ordering::Acquire) == SHARED {
            return Ok(());
        }
        let _sharing = inner.sharing.lock().unwrap_or_else(PoisonError::into_inner);
        let fd = inner.segment.as_fd();
        if inner.state.load(Ordering::Acquire) == UNIQUE {
            // SAFETY: the mapping was created from this segment. No `&mut` into it is alive:
            // those come from `as_mut_slice(&mut self)` on the only handle, and we hold `&self`.
            // After this the state is FROZEN or SHARED, so none will be created again (unless
            // the mapping is made writable again below, with the state back to UNIQUE).
            unsafe { inner.map.reprotect(fd, Access::ReadWrite, Access::ReadOnly) }?;
            inner.state.store(FROZEN, Ordering::Release);
        }
        match inner.segment.add_seals(Seals::READ_ONLY) {
            Ok(()) => {
                inner.state.store(SHARED, Ordering::Release);
                Ok(())
            }
            Err(err) => {
                // Give the owner its writable buffer back if we can; a FROZEN buffer stays
                // read-only until sharing is retried.
                // SAFETY: the state is FROZEN: nothing relies on the mapping being read-only
                // except our own refusal to hand out `&mut`, which stops once it is UNIQUE.
                if unsafe { inner.map.reprotect(fd, Access::ReadOnly, Access::ReadWrite) }.is_ok() {
                    inner.state.store(UNIQUE, Ordering::Release);
                }
                Err(err)
            }
        }
    }

    /// Whether the buffer has been shared (sealed read-only).
    pub fn is_shared(&self) -> bool {
        self.inner.state.load(Ordering::Acquire) == SHARED
    }

    /// Shares the buffer (see [`share`](ShmBuf::share)) and borrows its descriptor, to send it
    /// to another process (the kernel duplicates descriptors sent over a unix socket). The
    /// receiver maps it with [`ShmBuf::from_fd`].
    pub fn shared_fd(&self) -> Result<BorrowedFd<'_>> {
        self.share()?;
        Ok(self.inner.segment.as_fd())
    }

    /// Shares the buffer (see [`share`](ShmBuf::share)) and duplicates its descriptor.
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.share()?;
        self.inner.segment.dup_fd()
    }

    /// The segment's seals as the kernel reports them now.
    pub fn seals(&self) -> Result<Seals> {
        self.inner.segment.seals()
    }

    /// Serializes the first `len` bytes: by descriptor inside [`transfer::collect_fds`]
    /// (sharing the buffer), inline otherwise.
    pub(crate) fn serialize_prefix<S: Serializer>(
        &self,
        serializer: S,
        len: usize,
    ) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        debug_assert!(len <= self.len());
        if transfer::is_collecting() {
            self.share().map_err(S::Error::custom)?;
            let holder: Arc<dyn HeldFd> = self.inner.clone();
            if let Ok(index) = transfer::attach(TransferFd::held(holder)) {
                return wire::serialize_fd(
                    serializer,
                    FdRef {
                        index,
                        len: len as u64,
                    },
                );
            }
        }
        wire::serialize_inline(serializer, &self.as_slice()[..len])
    }

    /// Reads what [`serialize_prefix`](ShmBuf::serialize_prefix) wrote.
    pub(crate) fn deserialize_any<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ShmBuf, D::Error> {
        use serde::de::Error;
        match wire::deserialize(deserializer)? {
            Incoming::Inline(buf) => Ok(buf),
            Incoming::Fd(fd_ref) => ShmBuf::from_fd_ref(fd_ref).map_err(D::Error::custom),
        }
    }
}

/// Checks that a segment can never change again and re-reads its now final size.
fn segment_require_immutable(segment: &mut Segment) -> Result<()> {
    segment.require_seals(IMMUTABLE)?;
    segment.refresh_len()
}

impl HeldFd for BufInner {
    fn held_fd(&self) -> BorrowedFd<'_> {
        self.segment.as_fd()
    }
}

impl fmt::Debug for BufInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state.load(Ordering::Relaxed) {
            UNIQUE => "unique",
            FROZEN => "frozen",
            _ => "shared",
        };
        f.debug_struct("ShmBuf")
            .field("len", &self.len)
            .field("state", &state)
            .field("fd", &self.segment.as_fd())
            .finish()
    }
}

impl fmt::Debug for ShmBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Deref for ShmBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for ShmBuf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for ShmBuf {
    fn eq(&self, other: &ShmBuf) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for ShmBuf {}

impl PartialEq<[u8]> for ShmBuf {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl Serialize for ShmBuf {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.serialize_prefix(serializer, self.len())
    }
}

impl<'de> Deserialize<'de> for ShmBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ShmBuf, D::Error> {
        ShmBuf::deserialize_any(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_is_zeroed_and_writable() {
        let mut buf = ShmBuf::new(10_000).unwrap();
        assert_eq!(buf.len(), 10_000);
        assert!(buf.iter().all(|&b| b == 0));
        buf.as_mut_slice().unwrap()[9_999] = 7;
        assert_eq!(buf[9_999], 7);
        assert!(!buf.is_shared());
    }

    #[test]
    fn share_seals_and_refuses_writes() {
        let mut buf = ShmBuf::from_slice(b"hello").unwrap();
        buf.share().unwrap();
        buf.share().unwrap();
        assert!(buf.is_shared());
        assert_eq!(buf.seals().unwrap() - Seals::EXEC, Seals::READ_ONLY);
        assert!(matches!(buf.as_mut_slice(), Err(ShmError::ReadOnly)));
        assert!(matches!(buf.resize(10), Err(ShmError::ReadOnly)));
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn share_keeps_outstanding_borrows_valid() {
        let buf = ShmBuf::from_slice(&[5; 3 * 4096]).unwrap();
        let slice = buf.as_slice();
        buf.share().unwrap();
        assert!(slice.iter().all(|&b| b == 5));
    }

    #[test]
    fn clones_block_mutation_until_dropped() {
        let mut buf = ShmBuf::new(16).unwrap();
        let clone = buf.clone();
        assert!(matches!(buf.as_mut_slice(), Err(ShmError::Aliased)));
        drop(clone);
        buf.as_mut_slice().unwrap()[0] = 1;
    }

    #[test]
    fn resize_keeps_the_prefix_and_zero_fills() {
        let mut buf = ShmBuf::from_slice(&[1, 2, 3]).unwrap();
        buf.resize(100_000).unwrap();
        assert_eq!(&buf[..3], &[1, 2, 3]);
        assert!(buf[3..].iter().all(|&b| b == 0));
        buf.as_mut_slice().unwrap()[99_999] = 9;
        buf.resize(2).unwrap();
        assert_eq!(&buf[..], &[1, 2]);
        buf.resize(100_000).unwrap();
        assert_eq!(
            buf[99_999], 0,
            "bytes cut off by a shrink must not come back"
        );
        buf.resize(0).unwrap();
        assert!(buf.is_empty());
    }

    #[test]
    fn from_fd_maps_the_same_pages() {
        let buf = ShmBuf::from_slice(b"same pages").unwrap();
        let other = ShmBuf::from_fd(buf.try_clone_fd().unwrap()).unwrap();
        assert_eq!(&other[..], b"same pages");
        assert!(other.is_shared());
        assert_ne!(other.as_ptr(), buf.as_ptr());
    }

    #[test]
    fn from_fd_refuses_unsealed_segments() {
        let mut segment = Segment::create(10).unwrap();
        let fd = segment.try_clone_fd().unwrap();
        let err = ShmBuf::from_fd(fd).unwrap_err();
        assert!(matches!(err, ShmError::MissingSeals { .. }), "{err}");
        segment.seal_size().unwrap();
        let err = ShmBuf::from_fd(segment.try_clone_fd().unwrap()).unwrap_err();
        assert!(matches!(err, ShmError::MissingSeals { missing, .. } if missing == Seals::WRITE));
        segment.seal_read_only().unwrap();
        assert_eq!(
            ShmBuf::from_fd(segment.try_clone_fd().unwrap())
                .unwrap()
                .len(),
            10
        );
    }

    #[test]
    fn empty_buffers_work() {
        let buf = ShmBuf::new(0).unwrap();
        assert!(buf.is_empty());
        let other = ShmBuf::from_fd(buf.try_clone_fd().unwrap()).unwrap();
        assert!(other.is_empty());
    }

    #[test]
    fn concurrent_shares_agree() {
        let buf = ShmBuf::from_slice(&[3; 100_000]).unwrap();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    buf.share().unwrap();
                    assert!(buf.iter().all(|&b| b == 3));
                });
            }
        });
        assert_eq!(buf.seals().unwrap() - Seals::EXEC, Seals::READ_ONLY);
    }
}
