//! `SharedMutBuf`: memory that every holder maps writable, for users who synchronize
//! themselves.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
#[cfg(target_has_atomic = "64")]
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicU8, AtomicU32};

use bytemuck::Pod;
use processional_proto::custom::{deserialize_error, serialize_error};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Result, ShmError};
use crate::mapping::{Access, Mapping};
use crate::transfer::{self, HeldFd, TransferFd};
use crate::wire::{self, FdRef, Incoming};
use crate::{Seals, Segment};

/// Shared-mutable memory: every process (and thread) that holds it maps the same pages
/// writable and sees the others' writes. **You bring the synchronization.**
///
/// The size is sealed at creation ([`Seals::FIXED_SIZE`] and [`Seals::SEAL`]), so no holder
/// can shrink it under another's mapping; the contents are not sealed, by design.
///
/// Because any holder may write at any time, this type cannot hand out `&[u8]` or `&mut [u8]`
/// safely. It offers:
/// - atomic views ([`atomic_u8s`](SharedMutBuf::atomic_u8s),
///   [`atomic_u32s`](SharedMutBuf::atomic_u32s), [`atomic_u64s`](SharedMutBuf::atomic_u64s)):
///   safe, and the way to build flags, counters, sequence locks or ring-buffer indices that
///   work across processes (lock-free atomics are address-free);
/// - volatile element access ([`read`](SharedMutBuf::read), [`write`](SharedMutBuf::write)),
///   bounds- and alignment-checked, for data published under such a protocol (a write racing
///   with a read on the other side gives a torn value, never a fault);
/// - raw access for bulk work under your own protocol: [`as_ptr`](SharedMutBuf::as_ptr),
///   `unsafe` [`as_slice`](SharedMutBuf::as_slice) and
///   [`as_mut_slice`](SharedMutBuf::as_mut_slice).
///
/// It travels only by descriptor (inside [`transfer::collect_fds`], or with
/// [`try_clone_fd`](SharedMutBuf::try_clone_fd) / [`AsFd`]); serializing it outside a
/// descriptor context fails with [`ShmError::NeedsFdTransfer`].
///
/// ```
/// use std::sync::atomic::Ordering;
/// use processional_shm::SharedMutBuf;
///
/// # fn main() -> Result<(), processional_shm::ShmError> {
/// let buf = SharedMutBuf::new(64)?;
/// let other = SharedMutBuf::from_fd(buf.try_clone_fd()?)?; // as another process would
/// buf.atomic_u64s()[0].store(7, Ordering::Release);
/// assert_eq!(other.atomic_u64s()[0].load(Ordering::Acquire), 7);
/// other.write(8, 1.5f64)?;
/// assert_eq!(buf.read::<f64>(8)?, 1.5);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SharedMutBuf {
    inner: Arc<MutInner>,
}

struct MutInner {
    segment: Segment,
    map: Mapping,
}

impl SharedMutBuf {
    /// A new shared-mutable buffer of `len` zero bytes.
    pub fn new(len: usize) -> Result<SharedMutBuf> {
        let mut segment = Segment::create(len)?;
        segment.seal_size()?;
        segment.add_seals(Seals::SEAL)?;
        SharedMutBuf::map(segment)
    }

    /// Maps a received shared-mutable segment writable.
    ///
    /// The segment's size must be sealed ([`Seals::FIXED_SIZE`], else
    /// [`ShmError::MissingSeals`]) and its contents must not be ([`ShmError::ReadOnly`]).
    pub fn from_fd(fd: OwnedFd) -> Result<SharedMutBuf> {
        let mut segment = Segment::from_fd(fd)?;
        let seals = segment.require_seals(Seals::FIXED_SIZE)?;
        if seals.forbids_new_writes() {
            return Err(ShmError::ReadOnly);
        }
        segment.refresh_len()?;
        SharedMutBuf::map(segment)
    }

    fn map(segment: Segment) -> Result<SharedMutBuf> {
        let map = Mapping::new(segment.as_fd(), segment.len(), Access::ReadWrite)?;
        Ok(SharedMutBuf {
            inner: Arc::new(MutInner { segment, map }),
        })
    }

    /// The length in bytes.
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The start of the memory: page-aligned, valid for [`len`](SharedMutBuf::len) bytes of
    /// reads and writes for as long as this handle (or a clone) lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.map.ptr()
    }

    /// The bytes, as a shared slice.
    ///
    /// # Safety
    ///
    /// For as long as the slice lives, nobody — in this process or any other holder of the
    /// segment — may write the bytes it covers. (Rust assumes memory behind `&[u8]` does not
    /// change; this type cannot check what other processes do.)
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is valid for `len` bytes while `self` lives and cannot shrink
        // (size sealed); the caller guarantees nobody writes it while the slice lives.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len()) }
    }

    /// The bytes, as a mutable slice.
    ///
    /// # Safety
    ///
    /// For as long as the slice lives, nobody else — in this process or any other holder of the
    /// segment — may read or write the bytes it covers, and no other slice of them may exist.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn as_mut_slice(&self) -> &mut [u8] {
        // SAFETY: the mapping is writable and valid for `len` bytes while `self` lives and
        // cannot shrink; the caller guarantees exclusive access while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len()) }
    }

    /// The memory as atomic bytes.
    pub fn atomic_u8s(&self) -> &[AtomicU8] {
        // SAFETY: `AtomicU8` has the size and alignment of `u8`; the mapping is valid for
        // `len` bytes while `self` lives and cannot shrink. Atomics may be accessed
        // concurrently from anywhere, which is what this memory is for.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast::<AtomicU8>(), self.len()) }
    }

    /// The memory as atomic 32-bit words (a trailing partial word is left out).
    pub fn atomic_u32s(&self) -> &[AtomicU32] {
        // SAFETY: the mapping starts page-aligned, so aligned for `AtomicU32`, which has the
        // size of `u32`; `len / 4` words fit in it; it lives and stays this long while `self`
        // lives; atomics may be accessed concurrently.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast::<AtomicU32>(), self.len() / 4) }
    }

    /// The memory as atomic 64-bit words (a trailing partial word is left out).
    #[cfg(target_has_atomic = "64")]
    pub fn atomic_u64s(&self) -> &[AtomicU64] {
        // SAFETY: as for `atomic_u32s`, with 8-byte words: the page-aligned start is aligned for
        // `AtomicU64`.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast::<AtomicU64>(), self.len() / 8) }
    }

    /// Checks that a `T` fits at `offset`, aligned, and returns a pointer to it.
    fn element<T: Pod>(&self, offset: usize) -> Result<*mut T> {
        let size = std::mem::size_of::<T>();
        if offset.checked_add(size).is_none_or(|end| end > self.len()) {
            return Err(ShmError::OutOfBounds {
                offset: offset as u64,
                len: size as u64,
                size: self.len() as u64,
            });
        }
        let align = std::mem::align_of::<T>();
        if !offset.is_multiple_of(align) {
            return Err(ShmError::Misaligned { offset, align });
        }
        // SAFETY: `offset + size <= len`, so the pointer stays inside the mapping.
        Ok(unsafe { self.as_ptr().add(offset) }.cast::<T>())
    }

    /// Reads the `T` at byte `offset` with a volatile load (the compiler neither elides nor
    /// merges it). `offset` must be in bounds and aligned for `T`.
    ///
    /// If another holder writes the same bytes at the same moment, the value read may mix old
    /// and new bytes; any bit pattern is a valid `T` ([`Pod`]), so that is all that can happen.
    pub fn read<T: Pod>(&self, offset: usize) -> Result<T> {
        let ptr = self.element::<T>(offset)?;
        // SAFETY: `ptr` is in bounds, aligned for `T` and readable; every bit pattern is a valid
        // `T`.
        Ok(unsafe { ptr.read_volatile() })
    }

    /// Writes `value` at byte `offset` with a volatile store. `offset` must be in bounds and
    /// aligned for `T`. Publish it to other holders with an atomic (release) store afterwards.
    pub fn write<T: Pod>(&self, offset: usize, value: T) -> Result<()> {
        let ptr = self.element::<T>(offset)?;
        // SAFETY: `ptr` is in bounds, aligned for `T` and writable.
        unsafe { ptr.write_volatile(value) };
        Ok(())
    }

    /// Duplicates the descriptor, for another process to map with
    /// [`SharedMutBuf::from_fd`].
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.inner.segment.dup_fd()
    }
}

impl AsFd for SharedMutBuf {
    /// The descriptor, to send to another process (its size is sealed: safe to hand out).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.segment.as_fd()
    }
}

impl HeldFd for MutInner {
    fn held_fd(&self) -> BorrowedFd<'_> {
        self.segment.as_fd()
    }
}

impl fmt::Debug for MutInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMutBuf")
            .field("len", &self.map.len())
            .field("fd", &self.segment.as_fd())
            .finish()
    }
}

impl fmt::Debug for SharedMutBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl Serialize for SharedMutBuf {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let holder: Arc<dyn HeldFd> = self.inner.clone();
        match transfer::attach(TransferFd::held(holder)) {
            Ok(index) => wire::serialize_fd(
                serializer,
                FdRef {
                    index,
                    len: self.len() as u64,
                },
            ),
            Err(_) => Err(serialize_error(ShmError::NeedsFdTransfer)),
        }
    }
}

impl<'de> Deserialize<'de> for SharedMutBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SharedMutBuf, D::Error> {
        match wire::deserialize(deserializer)? {
            Incoming::Inline(_) => Err(deserialize_error(ShmError::NeedsFdTransfer)),
            Incoming::Fd(fd_ref) => {
                let fd = transfer::take_fd(fd_ref.index).map_err(deserialize_error)?;
                let buf = SharedMutBuf::from_fd(fd).map_err(deserialize_error)?;
                if buf.len() as u64 != fd_ref.len {
                    return Err(deserialize_error(ShmError::OutOfBounds {
                        offset: 0,
                        len: fd_ref.len,
                        size: buf.len() as u64,
                    }));
                }
                Ok(buf)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn writes_through_one_mapping_show_through_another() {
        let a = SharedMutBuf::new(4096).unwrap();
        let b = SharedMutBuf::from_fd(a.try_clone_fd().unwrap()).unwrap();
        assert_ne!(a.as_ptr(), b.as_ptr(), "two separate mappings");
        a.write::<u64>(8, 0xdead_beef).unwrap();
        assert_eq!(b.read::<u64>(8).unwrap(), 0xdead_beef);
        b.atomic_u32s()[100].store(77, Ordering::Release);
        assert_eq!(a.atomic_u32s()[100].load(Ordering::Acquire), 77);
        assert_eq!(a.read::<u32>(400).unwrap(), 77);
        // SAFETY: nothing else touches the buffer during this block.
        unsafe {
            b.as_mut_slice()[4095] = 5;
            assert_eq!(a.as_slice()[4095], 5);
        }
    }

    #[test]
    fn size_is_sealed_and_contents_are_not() {
        let buf = SharedMutBuf::new(100).unwrap();
        let seals = Segment::from_fd(buf.try_clone_fd().unwrap())
            .unwrap()
            .seals()
            .unwrap();
        assert!(seals.is_fixed_size());
        assert!(seals.contains(Seals::SEAL));
        assert!(!seals.forbids_new_writes());
    }

    #[test]
    fn element_access_is_checked() {
        let buf = SharedMutBuf::new(16).unwrap();
        assert!(matches!(
            buf.read::<u64>(9),
            Err(ShmError::OutOfBounds { .. })
        ));
        assert!(matches!(
            buf.read::<u64>(usize::MAX),
            Err(ShmError::OutOfBounds { .. })
        ));
        assert!(matches!(
            buf.write::<u32>(2, 1),
            Err(ShmError::Misaligned {
                offset: 2,
                align: 4
            })
        ));
        assert_eq!(buf.atomic_u64s().len(), 2);
        assert_eq!(buf.atomic_u8s().len(), 16);
    }

    #[test]
    fn refuses_read_only_and_resizable_segments() {
        let shared = crate::ShmBuf::from_slice(b"x").unwrap();
        let err = SharedMutBuf::from_fd(shared.try_clone_fd().unwrap()).unwrap_err();
        assert!(matches!(err, ShmError::ReadOnly), "{err}");
        let mut plain = Segment::create(10).unwrap();
        let err = SharedMutBuf::from_fd(plain.try_clone_fd().unwrap()).unwrap_err();
        assert!(matches!(err, ShmError::MissingSeals { .. }), "{err}");
    }
}
