//! How shared memory looks inside a serialized message.
//!
//! One enum, named `Shm`, for every type of the crate:
//! - variant 0, `Inline(bytes)`: the bytes themselves, outside a descriptor context;
//! - variant 1, `Fd { index, len }`: the first `len` bytes of the segment whose descriptor is at
//!   `index` in the list sent beside the message.

use std::fmt;

use serde::de::{self, DeserializeSeed, EnumAccess, SeqAccess, VariantAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ShmBuf;

const NAME: &str = "Shm";
const VARIANTS: &[&str] = &["Inline", "Fd"];

/// A reference to a descriptor sent beside the message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct FdRef {
    /// Position of the descriptor in the list sent with the message.
    pub(crate) index: u32,
    /// How many bytes of the segment the value covers.
    pub(crate) len: u64,
}

/// Writes `bytes` inline.
pub(crate) fn serialize_inline<S: Serializer>(
    serializer: S,
    bytes: &[u8],
) -> Result<S::Ok, S::Error> {
    serializer.serialize_newtype_variant(NAME, 0, VARIANTS[0], serde_bytes::Bytes::new(bytes))
}

/// Writes a reference to a descriptor.
pub(crate) fn serialize_fd<S: Serializer>(serializer: S, fd_ref: FdRef) -> Result<S::Ok, S::Error> {
    serializer.serialize_newtype_variant(NAME, 1, VARIANTS[1], &fd_ref)
}

/// What a message held.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// Bytes, already copied into a fresh buffer that the receiver owns.
    Inline(ShmBuf),
    /// A reference to a descriptor.
    Fd(FdRef),
}

/// Reads either form.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Incoming, D::Error> {
    deserializer.deserialize_enum(NAME, VARIANTS, IncomingVisitor)
}

#[derive(Deserialize)]
#[serde(variant_identifier)]
enum Tag {
    Inline,
    Fd,
}

struct IncomingVisitor;

impl<'de> Visitor<'de> for IncomingVisitor {
    type Value = Incoming;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("shared memory, inline or by file descriptor")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Incoming, A::Error> {
        let (tag, variant) = data.variant::<Tag>()?;
        match tag {
            Tag::Inline => variant
                .newtype_variant_seed(InlineBytes)
                .map(Incoming::Inline),
            Tag::Fd => variant.newtype_variant::<FdRef>().map(Incoming::Fd),
        }
    }
}

/// Reads inline bytes straight into a fresh buffer (no intermediate `Vec` when the format
/// lends or hands over its bytes).
struct InlineBytes;

impl<'de> DeserializeSeed<'de> for InlineBytes {
    type Value = ShmBuf;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<ShmBuf, D::Error> {
        deserializer.deserialize_bytes(self)
    }
}

impl<'de> Visitor<'de> for InlineBytes {
    type Value = ShmBuf;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<ShmBuf, E> {
        ShmBuf::from_slice(bytes).map_err(E::custom)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ShmBuf, A::Error> {
        // Formats without a bytes type (JSON) write a sequence of numbers. Do not trust the
        // announced size with a large allocation.
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(byte) = seq.next_element::<u8>()? {
            bytes.push(byte);
        }
        ShmBuf::from_slice(&bytes).map_err(de::Error::custom)
    }
}
