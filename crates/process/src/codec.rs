//! Turning arguments and values into bytes and back (postcard).
//!
//! `Vec<u8>` gets a fast path: postcard encodes a sequence of bytes as a
//! varint length followed by the bytes, so a `Vec<u8>` is written and read
//! with one copy instead of one serializer call per byte. The bytes on the
//! wire are exactly postcard's.

use std::any::{Any, TypeId};

use processional_proto::{RemoteError, RemoteErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where encoded bytes go: any growable byte buffer.
pub(crate) trait Sink {
    fn put(&mut self, bytes: &[u8]) -> Result<(), String>;
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

fn varint(mut value: usize, out: &mut [u8; 10]) -> &[u8] {
    let mut len = 0;
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out[len] = byte;
            return &out[..=len];
        }
        out[len] = byte | 0x80;
        len += 1;
    }
}

fn read_varint(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let mut value: usize = 0;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        let part = usize::from(byte & 0x7f);
        value |= part.checked_shl(7 * i as u32)?;
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// The encoded size of `value` if it takes the fast path.
pub(crate) fn fast_len<T: Any>(value: &T) -> Option<usize> {
    (value as &dyn Any)
        .downcast_ref::<Vec<u8>>()
        .map(|bytes| bytes.len() + varint(bytes.len(), &mut [0; 10]).len())
}

/// Encodes `value` into `sink`.
pub(crate) fn encode_into<T: Serialize + Any>(
    value: &T,
    sink: &mut impl Sink,
) -> Result<(), String> {
    if let Some(bytes) = (value as &dyn Any).downcast_ref::<Vec<u8>>() {
        sink.put(varint(bytes.len(), &mut [0; 10]))?;
        return sink.put(bytes);
    }
    let bytes = postcard::to_stdvec(value)
        .map_err(|error| format!("cannot serialize a {}: {error}", std::any::type_name::<T>()))?;
    sink.put(&bytes)
}

/// Serializes `value`.
pub(crate) fn encode<T: Serialize + Any>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(fast_len(value).unwrap_or(0));
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Deserializes a `T` from `bytes`, which it must use up entirely.
pub(crate) fn decode<T: DeserializeOwned + Any>(bytes: &[u8]) -> Result<T, String> {
    if TypeId::of::<T>() == TypeId::of::<Vec<u8>>() {
        let decoded = match read_varint(bytes) {
            Some((len, rest)) if rest.len() == len => Ok(fresh_copy(rest)),
            Some((len, rest)) => Err(format!(
                "a Vec<u8> of {len} bytes, but {} bytes follow its length",
                rest.len()
            )),
            None => Err("a Vec<u8> with a malformed length".to_owned()),
        }?;
        let boxed: Box<dyn Any> = Box::new(decoded);
        return Ok(*boxed.downcast::<T>().expect("T is Vec<u8>"));
    }
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!(
            "{} trailing bytes after a {}",
            rest.len(),
            std::any::type_name::<T>()
        )),
        Err(error) => Err(format!(
            "cannot deserialize a {}: {error}",
            std::any::type_name::<T>()
        )),
    }
}

/// A new `Vec<u8>` holding `bytes`. Large ones ask for transparent huge
/// pages first: a fresh 100 MiB buffer then costs 50 page faults, not 25 600.
fn fresh_copy(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    if bytes.len() >= crate::sys::HUGE_PAGE * 4 {
        crate::sys::advise_huge_pages(out.as_mut_ptr(), out.capacity());
    }
    out.extend_from_slice(bytes);
    out
}

/// A codec failure on the serving side, as sent back to the caller.
pub(crate) fn remote_codec_error(message: String) -> RemoteError {
    RemoteError {
        kind: RemoteErrorKind::Codec,
        message,
        location: None,
        backtrace: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing_bytes() {
        let bytes = encode(&(1u32, "two".to_string())).unwrap();
        assert_eq!(
            decode::<(u32, String)>(&bytes).unwrap(),
            (1, "two".to_string())
        );
        assert!(decode::<u8>(&bytes).unwrap_err().contains("trailing"));
        assert!(decode::<(u32, String)>(&bytes[..2]).is_err());
    }

    #[test]
    fn the_byte_vector_fast_path_is_postcard() {
        for len in [0usize, 1, 127, 128, 300, 70_000] {
            let value: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let fast = encode(&value).unwrap();
            assert_eq!(fast, postcard::to_stdvec(&value).unwrap());
            assert_eq!(fast.len(), fast_len(&value).unwrap());
            assert_eq!(decode::<Vec<u8>>(&fast).unwrap(), value);
            assert_eq!(postcard::from_bytes::<Vec<u8>>(&fast).unwrap(), value);
        }
        assert!(decode::<Vec<u8>>(&[5, 1, 2]).is_err());
        assert!(decode::<Vec<u8>>(&[0xff; 12]).is_err());
    }
}
