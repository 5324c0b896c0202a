//! Values as the store keeps them: postcard bytes, typed at the edges.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Direction, ValueError};

/// The bytes of `value`, stored under `key`.
pub(crate) fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, ValueError> {
    postcard::to_allocvec(value).map_err(|error| ValueError {
        key: key.to_owned(),
        type_name: std::any::type_name::<T>().to_owned(),
        direction: Direction::Encode,
        message: error.to_string(),
    })
}

/// The value of type `T` in the bytes stored under `key`. Trailing bytes
/// mean another type was stored: refused, like a short read.
pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, ValueError> {
    let refused = |message: String| ValueError {
        key: key.to_owned(),
        type_name: std::any::type_name::<T>().to_owned(),
        direction: Direction::Decode,
        message,
    };
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(refused(format!(
            "{} bytes left over: the key holds a value of another type",
            rest.len()
        ))),
        Err(error) => Err(refused(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_comes_back_and_another_type_is_refused() {
        let bytes = encode("k", &(1u64, "two".to_string())).unwrap();
        assert_eq!(
            decode::<(u64, String)>("k", &bytes).unwrap(),
            (1, "two".into())
        );
        let error = decode::<u8>("k", &bytes).unwrap_err();
        assert_eq!(error.direction, Direction::Decode);
        assert_eq!(error.key, "k");
        assert!(error.to_string().contains("u8"), "{error}");
    }
}
