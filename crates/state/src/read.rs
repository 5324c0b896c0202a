//! [`Read`]: the typed reading half of the dict API, shared by snapshots
//! and the view of an atomic update.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::ValueError;
use crate::store::{Entry, Revision};

/// Reading a namespace: typed values, keys in key order (byte order of the
/// UTF-8 keys, as `BTreeMap<String, _>` iterates), entries with their
/// revisions.
///
/// ```
/// use processional_state::store::Store;
/// use processional_state::Read;
///
/// let mut store = Store::new(10);
/// store.set("ns", "b", postcard_bytes(2u32));
/// store.set("ns", "a", postcard_bytes(1u32));
/// let snapshot = store.snapshot("ns");
/// assert_eq!(snapshot.keys(), ["a", "b"]);
/// assert_eq!(snapshot.get_or("c", 0u32).unwrap(), 0);
/// assert!(snapshot.get::<String>("a").is_err()); // another type
/// # fn postcard_bytes(v: u32) -> Vec<u8> { vec![v as u8] }
/// ```
pub trait Read {
    /// The entry of `key`.
    fn raw(&self, key: &str) -> Option<&Entry>;

    /// Every entry, in key order.
    fn raw_entries(&self) -> Box<dyn Iterator<Item = (&str, &Entry)> + '_>;

    /// How many keys there are.
    fn len(&self) -> usize;

    /// Whether there is no key.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key` as a `T`; `None` if there is none, an error if it
    /// holds another type.
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ValueError>
    where
        Self: Sized,
    {
        self.raw(key)
            .map(|entry| codec::decode(key, &entry.value))
            .transpose()
    }

    /// The value of `key`, or `default` if there is none.
    fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T, ValueError>
    where
        Self: Sized,
    {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// The revision that last set `key`.
    fn modified(&self, key: &str) -> Option<Revision> {
        self.raw(key).map(|entry| entry.modified)
    }

    /// Whether `key` exists.
    fn contains(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// The keys, in key order.
    fn keys(&self) -> Vec<String> {
        self.raw_entries().map(|(key, _)| key.to_owned()).collect()
    }

    /// The values, in key order, all as `T`.
    fn values<T: DeserializeOwned>(&self) -> Result<Vec<T>, ValueError>
    where
        Self: Sized,
    {
        self.raw_entries()
            .map(|(key, entry)| codec::decode(key, &entry.value))
            .collect()
    }

    /// The `(key, value)` pairs, in key order, all values as `T`.
    fn items<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, ValueError>
    where
        Self: Sized,
    {
        self.raw_entries()
            .map(|(key, entry)| Ok((key.to_owned(), codec::decode(key, &entry.value)?)))
            .collect()
    }

    /// A local copy, all values as `T`.
    fn to_map<T: DeserializeOwned>(&self) -> Result<BTreeMap<String, T>, ValueError>
    where
        Self: Sized,
    {
        Ok(self.items()?.into_iter().collect())
    }

    /// Whether it holds exactly `map` (same keys, same encoded values).
    fn eq_map<T: Serialize>(&self, map: &BTreeMap<String, T>) -> Result<bool, ValueError>
    where
        Self: Sized,
    {
        if self.len() != map.len() {
            return Ok(false);
        }
        for (key, value) in map {
            let bytes = codec::encode(key, value)?;
            if self.raw(key).is_none_or(|entry| entry.value != bytes) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
