//! `ShmVec<T>`: a growable array of plain-old-data elements in shared memory.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;

use bytemuck::Pod;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Result, ShmError};
use crate::{ShmBuf, ShmSlice, sys};

/// A growable array of `T` in shared memory, for plain-old-data `T` ([`bytemuck::Pod`]: any
/// bit pattern is a valid value, no pointers, no padding).
///
/// Like [`ShmBuf`], which holds its elements: writable by its single owner ([`push`],
/// [`extend_from_slice`], [`as_mut_slice`], ...) until shared — by [`share`](ShmVec::share),
/// which turns it into a [`ShmSlice`], or by being serialized inside
/// [`transfer::collect_fds`](crate::transfer::collect_fds) — after which writing fails with
/// [`ShmError::ReadOnly`]. A `ShmVec` received by descriptor is shared; one received inline is
/// the receiver's own.
///
/// Capacity grows by doubling, in whole pages; growing keeps the pages already written in
/// place (`mremap`), so nothing is copied.
///
/// Elements travel as their in-memory bytes: both sides must agree on `T`'s layout and byte
/// order (true between processes of one machine). Zero-sized `T` are rejected at compile time.
///
/// [`push`]: ShmVec::push
/// [`extend_from_slice`]: ShmVec::extend_from_slice
/// [`as_mut_slice`]: ShmVec::as_mut_slice
pub struct ShmVec<T: Pod> {
    /// The storage, `capacity * size_of::<T>()` bytes or a little more; none before the first
    /// allocation.
    buf: Option<ShmBuf>,
    len: usize,
    elem: PhantomData<T>,
}

impl<T: Pod> ShmVec<T> {
    const ELEM_SIZE: usize = {
        assert!(
            std::mem::size_of::<T>() > 0,
            "ShmVec does not support zero-sized elements"
        );
        assert!(
            std::mem::align_of::<T>() <= 4096,
            "elements must not need more than page alignment"
        );
        std::mem::size_of::<T>()
    };

    /// An empty vector; no segment is created until the first element.
    pub const fn new() -> ShmVec<T> {
        let _ = Self::ELEM_SIZE;
        ShmVec {
            buf: None,
            len: 0,
            elem: PhantomData,
        }
    }

    /// An empty vector with room for at least `capacity` elements.
    pub fn with_capacity(capacity: usize) -> Result<ShmVec<T>> {
        let mut vec = ShmVec::new();
        vec.reserve(capacity)?;
        Ok(vec)
    }

    /// A vector of `len` zeroed elements.
    pub fn zeroed(len: usize) -> Result<ShmVec<T>> {
        let _ = Self::ELEM_SIZE;
        let bytes = byte_len::<T>(len)?;
        Ok(ShmVec {
            buf: Some(ShmBuf::new(bytes)?),
            len,
            elem: PhantomData,
        })
    }

    /// A vector holding a copy of `items`.
    pub fn from_slice(items: &[T]) -> Result<ShmVec<T>> {
        let _ = Self::ELEM_SIZE;
        let buf = ShmBuf::from_slice(bytemuck::cast_slice(items))?;
        Ok(ShmVec {
            buf: Some(buf),
            len: items.len(),
            elem: PhantomData,
        })
    }

    /// Views a buffer as elements: its length must be a whole number of elements.
    pub fn from_buf(buf: ShmBuf) -> Result<ShmVec<T>> {
        let _ = Self::ELEM_SIZE;
        let len = elem_count::<T>(buf.len())?;
        Ok(ShmVec {
            buf: Some(buf),
            len,
            elem: PhantomData,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many elements fit without growing.
    pub fn capacity(&self) -> usize {
        self.buf
            .as_ref()
            .map_or(0, |buf| buf.len() / Self::ELEM_SIZE)
    }

    /// The elements.
    pub fn as_slice(&self) -> &[T] {
        match &self.buf {
            Some(buf) => bytemuck::cast_slice(&buf[..self.len * Self::ELEM_SIZE]),
            None => &[],
        }
    }

    /// The elements, writable: only while unshared (see [`ShmBuf::as_mut_slice`]).
    pub fn as_mut_slice(&mut self) -> Result<&mut [T]> {
        let bytes = self.len * Self::ELEM_SIZE;
        match &mut self.buf {
            Some(buf) => Ok(bytemuck::cast_slice_mut(&mut buf.as_mut_slice()?[..bytes])),
            None => Ok(&mut []),
        }
    }

    /// The bytes of the elements.
    pub fn as_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(self.as_slice())
    }

    /// Whether the vector has been shared (sealed read-only).
    pub fn is_shared(&self) -> bool {
        self.buf.as_ref().is_some_and(ShmBuf::is_shared)
    }

    /// Makes room for at least `additional` more elements.
    pub fn reserve(&mut self, additional: usize) -> Result<()> {
        let needed = self.len.checked_add(additional).ok_or(ShmError::TooLarge {
            len: u64::MAX,
            elem_size: Self::ELEM_SIZE,
        })?;
        if needed <= self.capacity() {
            return Ok(());
        }
        let target = needed.max(self.capacity().saturating_mul(2));
        let page = sys::page_size();
        let bytes = byte_len::<T>(target)?
            .checked_next_multiple_of(page)
            .ok_or(ShmError::TooLarge {
                len: target as u64,
                elem_size: Self::ELEM_SIZE,
            })?;
        match &mut self.buf {
            Some(buf) => buf.resize(bytes),
            None => {
                self.buf = Some(ShmBuf::new(bytes)?);
                Ok(())
            }
        }
    }

    /// Appends an element.
    pub fn push(&mut self, value: T) -> Result<()> {
        self.extend_from_slice(std::slice::from_ref(&value))
    }

    /// Appends copies of `items`.
    pub fn extend_from_slice(&mut self, items: &[T]) -> Result<()> {
        if items.is_empty() {
            return self.writable_check();
        }
        self.reserve(items.len())?;
        let start = self.len * Self::ELEM_SIZE;
        let end = start + std::mem::size_of_val(items);
        let buf = self.buf.as_mut().ok_or(ShmError::ReadOnly)?;
        buf.as_mut_slice()?[start..end].copy_from_slice(bytemuck::cast_slice(items));
        self.len += items.len();
        Ok(())
    }

    /// Resizes to `len` elements, filling new ones with `value`.
    pub fn resize(&mut self, len: usize, value: T) -> Result<()> {
        if len <= self.len {
            self.writable_check()?;
            self.len = len;
            return Ok(());
        }
        self.reserve(len - self.len)?;
        let start = self.len;
        let buf = self.buf.as_mut().ok_or(ShmError::ReadOnly)?;
        let bytes = buf.as_mut_slice()?;
        let elems: &mut [T] = bytemuck::cast_slice_mut(&mut bytes[..len * Self::ELEM_SIZE]);
        elems[start..].fill(value);
        self.len = len;
        Ok(())
    }

    /// Shortens the vector to `len` elements (no effect if it is not longer). Works on a shared
    /// vector too: only this handle's view shrinks.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Removes every element (this handle's view, as [`truncate`](ShmVec::truncate)).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Gives back the capacity beyond the length, rounded up to a page. Only while unshared.
    pub fn shrink_to_fit(&mut self) -> Result<()> {
        let page = sys::page_size();
        let bytes = (self.len * Self::ELEM_SIZE).next_multiple_of(page);
        match &mut self.buf {
            Some(buf) if buf.len() > bytes => buf.resize(bytes),
            _ => Ok(()),
        }
    }

    /// Shares the elements read-only: shrinks the capacity to the length and seals the
    /// segment (see [`ShmBuf::share`]).
    pub fn share(mut self) -> Result<ShmSlice<T>> {
        if !self.is_shared() {
            // Exact fit, so that receivers map no more than the elements. Only possible while
            // nobody else holds the buffer; otherwise the spare capacity simply travels along.
            if let Some(buf) = &mut self.buf {
                let bytes = self.len * Self::ELEM_SIZE;
                if buf.len() != bytes {
                    match buf.resize(bytes) {
                        Ok(()) | Err(ShmError::Aliased) => {}
                        Err(err) => return Err(err),
                    }
                }
            }
        }
        let buf = match self.buf {
            Some(buf) => buf,
            None => ShmBuf::new(0)?,
        };
        buf.share()?;
        ShmSlice::from_parts(buf, self.len)
    }

    /// Fails with the reason this vector cannot be written, if any.
    fn writable_check(&mut self) -> Result<()> {
        match &mut self.buf {
            Some(buf) => buf.as_mut_slice().map(drop),
            None => Ok(()),
        }
    }
}

/// The byte length of `len` elements of `T`.
pub(crate) fn byte_len<T>(len: usize) -> Result<usize> {
    let size = std::mem::size_of::<T>();
    len.checked_mul(size)
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .ok_or(ShmError::TooLarge {
            len: len as u64,
            elem_size: size,
        })
}

/// The number of elements of `T` in `bytes` bytes, which must be a whole number of them.
pub(crate) fn elem_count<T>(bytes: usize) -> Result<usize> {
    let size = std::mem::size_of::<T>();
    if size == 0 || !bytes.is_multiple_of(size) {
        return Err(ShmError::ElementSize {
            len: bytes as u64,
            elem_size: size,
        });
    }
    Ok(bytes / size)
}

impl<T: Pod> Default for ShmVec<T> {
    fn default() -> ShmVec<T> {
        ShmVec::new()
    }
}

impl<T: Pod> Deref for ShmVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> AsRef<[T]> for ShmVec<T> {
    fn as_ref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ShmVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmVec")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("shared", &self.is_shared())
            .finish()
    }
}

impl<T: Pod + PartialEq> PartialEq<[T]> for ShmVec<T> {
    fn eq(&self, other: &[T]) -> bool {
        self.as_slice() == other
    }
}

impl<T: Pod> Serialize for ShmVec<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.buf {
            Some(buf) => buf.serialize_prefix(serializer, self.len * Self::ELEM_SIZE),
            None => crate::wire::serialize_inline(serializer, &[]),
        }
    }
}

impl<'de, T: Pod> Deserialize<'de> for ShmVec<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ShmVec<T>, D::Error> {
        use serde::de::Error;
        let buf = ShmBuf::deserialize_any(deserializer)?;
        ShmVec::from_buf(buf).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_grows_in_place() {
        let mut vec = ShmVec::<f64>::new();
        assert_eq!(vec.capacity(), 0);
        for i in 0..10_000 {
            vec.push(i as f64).unwrap();
        }
        assert_eq!(vec.len(), 10_000);
        assert!(vec.capacity() >= 10_000);
        assert!(vec.iter().enumerate().all(|(i, &x)| x == i as f64));
        vec.as_mut_slice().unwrap()[5] = -1.0;
        assert_eq!(vec[5], -1.0);
    }

    #[test]
    fn extend_resize_truncate() {
        let mut vec = ShmVec::<u32>::from_slice(&[1, 2]).unwrap();
        vec.extend_from_slice(&[3, 4, 5]).unwrap();
        assert_eq!(vec, [1, 2, 3, 4, 5][..]);
        vec.resize(7, 9).unwrap();
        assert_eq!(vec, [1, 2, 3, 4, 5, 9, 9][..]);
        vec.truncate(2);
        assert_eq!(vec, [1, 2][..]);
        vec.resize(3, 0).unwrap();
        assert_eq!(vec, [1, 2, 0][..]);
        vec.shrink_to_fit().unwrap();
        assert_eq!(vec.capacity(), 4096 / 4);
    }

    #[test]
    fn shared_vectors_refuse_writes() {
        let vec = ShmVec::<u16>::from_slice(&[1, 2, 3]).unwrap();
        let slice = vec.share().unwrap();
        assert_eq!(&slice[..], &[1, 2, 3]);
        let mut vec =
            ShmVec::<u16>::from_buf(ShmBuf::from_fd(slice.try_clone_fd().unwrap()).unwrap())
                .unwrap();
        assert_eq!(
            vec.len(),
            3,
            "the capacity was trimmed to the length before sealing"
        );
        assert!(matches!(vec.push(4), Err(ShmError::ReadOnly)));
        assert!(matches!(vec.as_mut_slice(), Err(ShmError::ReadOnly)));
        assert!(matches!(vec.resize(1, 0), Err(ShmError::ReadOnly)));
    }

    #[test]
    fn element_size_must_divide_the_bytes() {
        let buf = ShmBuf::new(6).unwrap();
        let err = ShmVec::<u32>::from_buf(buf).unwrap_err();
        assert!(matches!(
            err,
            ShmError::ElementSize {
                len: 6,
                elem_size: 4
            }
        ));
    }

    #[test]
    fn sizes_that_overflow_are_errors() {
        assert!(matches!(
            ShmVec::<u64>::zeroed(usize::MAX / 4),
            Err(ShmError::TooLarge { .. })
        ));
        let mut vec = ShmVec::<u8>::from_slice(&[1]).unwrap();
        assert!(matches!(
            vec.reserve(usize::MAX),
            Err(ShmError::TooLarge { .. })
        ));
    }
}
