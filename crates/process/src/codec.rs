//! Turning arguments and values into bytes and back.

use processional_proto::{RemoteError, RemoteErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Serializes `value` with postcard.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(value).map_err(|error| {
        format!(
            "cannot serialize a {}: {error}",
            std::any::type_name::<T>()
        )
    })
}

/// Deserializes a `T` from `bytes`, which it must use up entirely.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
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
        assert_eq!(decode::<(u32, String)>(&bytes).unwrap(), (1, "two".to_string()));
        assert!(decode::<u8>(&bytes).unwrap_err().contains("trailing"));
        assert!(decode::<(u32, String)>(&bytes[..2]).is_err());
    }
}
