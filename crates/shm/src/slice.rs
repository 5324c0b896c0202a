//! `ShmSlice<T>`: a read-only, cheaply cloned array of plain-old-data elements in shared memory.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::{BorrowedFd, OwnedFd};

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Result, ShmError};
use crate::vec::elem_count;
use crate::{ShmBuf, ShmVec};

/// A read-only array of `T` ([`bytemuck::Pod`]) in shared memory: the shared counterpart of
/// [`ShmVec`], as `Arc<[T]>` is of `Vec<T>`.
///
/// Nothing can write its elements through this type. Its segment is sealed read-only in the
/// kernel once it leaves the process (by [`try_clone_fd`](ShmSlice::try_clone_fd),
/// [`shared_fd`](ShmSlice::shared_fd), or serialization inside
/// [`transfer::collect_fds`](crate::transfer::collect_fds)), or at once when it comes from
/// [`ShmVec::share`]. [`Clone`] is cheap. Elements travel as their in-memory bytes, as with
/// [`ShmVec`].
pub struct ShmSlice<T: Pod> {
    /// At least `len * size_of::<T>()` bytes.
    buf: ShmBuf,
    len: usize,
    elem: PhantomData<T>,
}

impl<T: Pod> ShmSlice<T> {
    /// A slice holding a copy of `items`.
    pub fn from_slice(items: &[T]) -> Result<ShmSlice<T>> {
        let vec = ShmVec::from_slice(items)?;
        let len = vec.len();
        ShmSlice::from_parts(ShmSlice::<T>::buf_of(vec)?, len)
    }

    /// Views a buffer as elements: its length must be a whole number of elements. The buffer
    /// cannot be written through the slice (nor, while the slice lives, through the buffer).
    pub fn from_buf(buf: ShmBuf) -> Result<ShmSlice<T>> {
        let len = ShmVec::<T>::from_buf(buf.clone())?.len();
        ShmSlice::from_parts(buf, len)
    }

    /// Maps a received descriptor, sealed read-only (see [`ShmBuf::from_fd`]).
    pub fn from_fd(fd: OwnedFd) -> Result<ShmSlice<T>> {
        ShmSlice::from_buf(ShmBuf::from_fd(fd)?)
    }

    /// The first `len` elements of `buf`.
    pub(crate) fn from_parts(buf: ShmBuf, len: usize) -> Result<ShmSlice<T>> {
        let bytes = crate::vec::byte_len::<T>(len)?;
        if bytes > buf.len() {
            return Err(ShmError::OutOfBounds {
                offset: 0,
                len: bytes as u64,
                size: buf.len() as u64,
            });
        }
        Ok(ShmSlice {
            buf,
            len,
            elem: PhantomData,
        })
    }

    /// The buffer holding a vector's elements.
    fn buf_of(vec: ShmVec<T>) -> Result<ShmBuf> {
        let slice = vec.share()?;
        Ok(slice.buf)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        bytemuck::cast_slice(&self.buf[..self.len * std::mem::size_of::<T>()])
    }

    /// The bytes of the elements.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len * std::mem::size_of::<T>()]
    }

    /// The buffer holding the elements (it may be longer than them).
    pub fn as_buf(&self) -> &ShmBuf {
        &self.buf
    }

    /// Seals the segment (if not yet) and borrows its descriptor, to send it.
    pub fn shared_fd(&self) -> Result<BorrowedFd<'_>> {
        self.buf.shared_fd()
    }

    /// Seals the segment (if not yet) and duplicates its descriptor.
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.buf.try_clone_fd()
    }
}

impl<T: Pod> Clone for ShmSlice<T> {
    fn clone(&self) -> ShmSlice<T> {
        ShmSlice {
            buf: self.buf.clone(),
            len: self.len,
            elem: PhantomData,
        }
    }
}

impl<T: Pod> Deref for ShmSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> AsRef<[T]> for ShmSlice<T> {
    fn as_ref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> fmt::Debug for ShmSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmSlice")
            .field("len", &self.len)
            .field("shared", &self.buf.is_shared())
            .finish()
    }
}

impl<T: Pod + PartialEq> PartialEq<[T]> for ShmSlice<T> {
    fn eq(&self, other: &[T]) -> bool {
        self.as_slice() == other
    }
}

impl<T: Pod> Serialize for ShmSlice<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.buf
            .serialize_prefix(serializer, self.len * std::mem::size_of::<T>())
    }
}

impl<'de, T: Pod> Deserialize<'de> for ShmSlice<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ShmSlice<T>, D::Error> {
        use serde::de::Error;
        let buf = ShmBuf::deserialize_any(deserializer)?;
        let len = elem_count::<T>(buf.len()).map_err(D::Error::custom)?;
        ShmSlice::from_parts(buf, len).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_slice_is_sealed_and_clones_share_pages() {
        let slice = ShmSlice::<f64>::from_slice(&[1.5, 2.5]).unwrap();
        assert!(slice.as_buf().is_shared());
        let clone = slice.clone();
        assert_eq!(clone.as_ptr(), slice.as_ptr());
        assert_eq!(&clone[..], &[1.5, 2.5]);
        let mapped = ShmSlice::<f64>::from_fd(slice.try_clone_fd().unwrap()).unwrap();
        assert_eq!(mapped, [1.5, 2.5][..]);
    }

    #[test]
    fn from_buf_freezes_the_buffer_through_aliasing() {
        let mut buf = ShmBuf::from_slice(&[0; 8]).unwrap();
        let slice = ShmSlice::<u32>::from_buf(buf.clone()).unwrap();
        assert_eq!(slice.len(), 2);
        assert!(matches!(buf.as_mut_slice(), Err(ShmError::Aliased)));
    }
}
