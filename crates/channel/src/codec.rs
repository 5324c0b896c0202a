//! Encoding messages: postcard, behind this crate's typed errors.

use processional_task::{CodecDirection, CodecError, Error};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Appends the encoding of `value` to `buf`.
pub(crate) fn encode_into<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), Error> {
    let taken = std::mem::take(buf);
    match postcard::to_extend(value, taken) {
        Ok(done) => {
            *buf = done;
            Ok(())
        }
        Err(e) => Err(Error::codec::<T>(
            CodecDirection::Encode,
            CodecError::Format(Box::new(e)),
        )),
    }
}

/// The encoding of `value`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Decodes a whole `T` from `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    postcard::from_bytes(bytes)
        .map_err(|e| Error::codec::<T>(CodecDirection::Decode, CodecError::Format(Box::new(e))))
}
