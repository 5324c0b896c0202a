//! [`Json<T>`]: a value carried as JSON inside postcard, for the serde
//! features postcard cannot express.

use std::fmt;
use std::ops::{Deref, DerefMut};

use processional_proto::custom;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that crosses processes as JSON, for types postcard cannot carry.
///
/// Arguments and values of calls are encoded with
/// [postcard](https://docs.rs/postcard), a compact format that is *not
/// self-describing*: the bytes hold no field names and no type tags, so the
/// receiver must know the exact shape of what comes. Types whose
/// `Serialize` or `Deserialize` need more compile, then fail at run time with
/// [`CodecError::NotSelfDescribing`](crate::CodecError::NotSelfDescribing):
///
/// - `#[serde(flatten)]` (serialized as a map of unknown length);
/// - `#[serde(untagged)]`, `#[serde(tag = "...")]` and
///   `#[serde(tag = "...", content = "...")]` enums, which deserialize by
///   looking at the data first (`deserialize_any`);
/// - `serde_json::Value` and other dynamically typed values;
/// - `#[serde(skip_serializing_if = "...")]` on a field that is then
///   missing: postcard reads the next field in its place (this one gives a
///   wrong value or a decoding error, not `NotSelfDescribing`).
///
/// Wrap such a value in `Json`: it is encoded with `serde_json` into a byte
/// string, which postcard carries as it carries any bytes, and decoded from
/// JSON on the other side. It costs a JSON encoding, so keep it to the values
/// that need it. JSON has limits of its own: map keys must be strings or
/// numbers, and non-finite floats become `null`. Shared-memory values
/// (`ShmBuf`, `ShmVec`, ...) do not travel as descriptors inside a `Json`:
/// pass them beside it.
///
/// ```
/// use processional_process::{Json, func};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// #[serde(untagged)]
/// enum Setting {
///     Number(u64),
///     Text(String),
/// }
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = processional_process::slave()?;
/// let settings = Json(vec![Setting::Number(3), Setting::Text("three".into())]);
/// let described = process.invoke_with(
///     settings,
///     func!(|settings: Json<Vec<Setting>>| -> Json<Vec<String>> {
///         Json(settings.iter().map(|setting| match setting {
///             Setting::Number(n) => format!("number {n}"),
///             Setting::Text(text) => format!("text {text}"),
///         }).collect())
///     }),
/// )?;
/// assert_eq!(described.0, ["number 3", "text three"]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Json<T> {
    fn from(value: T) -> Self {
        Json(value)
    }
}

impl<T> Deref for Json<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: fmt::Debug> fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Json").field(&self.0).finish()
    }
}

impl<T: Serialize> Serialize for Json<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = serde_json::to_vec(&self.0)
            .map_err(|error| custom::serialize_error(format_args!("as JSON: {error}")))?;
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Json<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        serde_json::from_slice(&bytes)
            .map(Json)
            .map_err(|error| custom::deserialize_error(format_args!("from JSON: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use processional_task::{CodecError, Error};

    use super::*;
    use crate::codec::{decode, encode};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Inner {
        a: u32,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Flattened {
        name: String,
        #[serde(flatten)]
        inner: Inner,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum Untagged {
        Number(u64),
        Text(String),
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "kind")]
    enum Tagged {
        Circle { radius: f64 },
        Square { side: f64 },
    }

    #[test]
    fn flattened_and_untagged_values_cross_as_json() {
        let value = Json(Flattened {
            name: "x".into(),
            inner: Inner { a: 7 },
        });
        assert_eq!(
            decode::<Json<Flattened>>(&encode(&value).unwrap()).unwrap(),
            value
        );
        let value = Json(vec![Untagged::Number(1), Untagged::Text("one".into())]);
        assert_eq!(
            decode::<Json<Vec<Untagged>>>(&encode(&value).unwrap()).unwrap(),
            value
        );
        let value = Json(Tagged::Square { side: 2.0 });
        assert_eq!(
            decode::<Json<Tagged>>(&encode(&value).unwrap()).unwrap(),
            value
        );
    }

    #[test]
    fn plain_forms_fail_saying_what_postcard_lacks() {
        let flattened = Flattened {
            name: "x".into(),
            inner: Inner { a: 7 },
        };
        let error = encode(&flattened).unwrap_err();
        assert!(
            matches!(
                &error,
                Error::Codec {
                    source: CodecError::NotSelfDescribing(_),
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("Json"), "{error}");
        // Untagged enums serialize fine; decoding them needs the data's types.
        let bytes = encode(&Untagged::Number(1)).unwrap();
        let error = decode::<Untagged>(&bytes).unwrap_err();
        assert!(
            matches!(
                &error,
                Error::Codec {
                    source: CodecError::NotSelfDescribing(_),
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_json_failure_keeps_json_s_message() {
        // JSON keys must be strings: a map keyed by tuples cannot be written.
        let value = Json(BTreeMap::from([((1u8, 2u8), 3u8)]));
        let error = encode(&value).unwrap_err();
        assert!(
            matches!(&error, Error::Codec { source: CodecError::Custom(why), .. }
                if why.starts_with("as JSON: ")),
            "{error:?}"
        );
        let error = decode::<Json<u32>>(&encode(&b"nope".to_vec()).unwrap()).unwrap_err();
        assert!(
            matches!(&error, Error::Codec { source: CodecError::Custom(why), .. }
                if why.starts_with("from JSON: ")),
            "{error:?}"
        );
    }

    #[test]
    fn json_is_a_transparent_wrapper() {
        let mut value = Json::from(vec![1, 2]);
        value.push(3);
        assert_eq!(value.len(), 3);
        assert_eq!(format!("{value:?}"), "Json([1, 2, 3])");
        assert_eq!(value.into_inner(), [1, 2, 3]);
    }
}
