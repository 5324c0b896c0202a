//! The pure store: namespaces of maps, a server-wide revision, a bounded
//! history of changes, transactions and atomic updates. No process, no I/O:
//! the state server wraps one [`Store`], and the unit tests drive it alone.
//!
//! ```
//! use processional_state::store::Store;
//! use processional_state::Read;
//!
//! let mut store = Store::new(100);
//! let revision = store.set("main", "cookie", b"\x03yum".to_vec());
//! assert_eq!(revision, 1);
//! let snapshot = store.snapshot("main");
//! assert_eq!(snapshot.get::<String>("cookie").unwrap().as_deref(), Some("yum"));
//! let changes = store.changes_after("main", 0, usize::MAX).unwrap();
//! assert_eq!(changes[0].revision, 1);
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Compacted, ValueError};
use crate::read::Read;
use crate::txn::{Txn, TxnOutcome};

/// The value under `name` in `map`, made (by default) if there is none.
/// Looked up first: `entry` would allocate the name at each call, and this
/// runs at every change.
pub(crate) fn named<'a, V: Default>(map: &'a mut BTreeMap<String, V>, name: &str) -> &'a mut V {
    if !map.contains_key(name) {
        map.insert(name.to_owned(), V::default());
    }
    map.get_mut(name).expect("inserted just above")
}

/// A server-wide change number: each change of any namespace gets the next
/// one. 0 is the empty store before any change.
pub type Revision = u64;

/// How many changes a server keeps for watchers unless told otherwise.
pub const DEFAULT_HISTORY: usize = 10_000;

/// How many bytes of changes (see [`Change::size`]) a server keeps for
/// watchers unless told otherwise: 64 MiB.
pub const DEFAULT_HISTORY_BYTES: usize = 64 << 20;

/// One stored value: its encoded bytes, and the revisions that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The encoded value (postcard).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The revision that created the key (since it last did not exist).
    pub created: Revision,
    /// The revision that last set it.
    pub modified: Revision,
}

/// What one change did to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The key.
    pub key: String,
    /// Its new encoded value, or `None` if it was removed.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}

/// One change: every key a single operation changed in one namespace, under
/// one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Its revision.
    pub revision: Revision,
    /// The namespace it changed.
    pub namespace: String,
    /// What it did, key by key (in key order).
    pub events: Vec<Event>,
}

impl Change {
    /// What it counts for in the history's byte budget: the bytes of its
    /// namespace, keys and values.
    pub fn size(&self) -> usize {
        self.namespace.len()
            + self
                .events
                .iter()
                .map(|event| event.key.len() + event.value.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }

    /// Whether it touched `key`.
    pub fn touches(&self, key: &str) -> bool {
        self.events.iter().any(|event| event.key == key)
    }
}

/// A namespace as it was at one revision: the map, readable with the
/// typed [`Read`] methods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The server-wide revision it was taken at.
    pub revision: Revision,
    /// The entries, in key order.
    pub entries: BTreeMap<String, Entry>,
}

impl Read for Snapshot {
    fn raw(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    fn raw_entries(&self) -> Box<dyn Iterator<Item = (&str, &Entry)> + '_> {
        Box::new(self.entries.iter().map(|(k, v)| (k.as_str(), v)))
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The store: namespaces of maps from keys to encoded values, a server-wide
/// revision, and the last changes, from which watchers resume. The history
/// is bounded by count and by bytes ([`Change::size`]): the oldest changes
/// leave it once either limit is passed, the last change always stays.
#[derive(Debug, Clone)]
pub struct Store {
    namespaces: BTreeMap<String, BTreeMap<String, Entry>>,
    revision: Revision,
    history: VecDeque<Change>,
    history_limit: usize,
    /// The bytes of the history ([`Change::size`]), and their bound.
    history_bytes: usize,
    byte_limit: usize,
    /// Changes after this revision are all in `history`.
    oldest: Revision,
    /// Per namespace, the revision of its last change dropped from the
    /// history: its changes after that are all still there.
    dropped: BTreeMap<String, Revision>,
    /// How many history entries were looked at (the tests count work).
    #[cfg(test)]
    pub(crate) examined: std::cell::Cell<usize>,
}

impl Store {
    /// An empty store keeping the last `history_limit` changes (at least 1),
    /// and at most [`DEFAULT_HISTORY_BYTES`] of them.
    pub fn new(history_limit: usize) -> Store {
        Store {
            namespaces: BTreeMap::new(),
            revision: 0,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            history_bytes: 0,
            byte_limit: DEFAULT_HISTORY_BYTES,
            oldest: 0,
            dropped: BTreeMap::new(),
            #[cfg(test)]
            examined: std::cell::Cell::new(0),
        }
    }

    /// Bounds the history to `changes` changes (at least 1) and `bytes`
    /// bytes of them (the last change stays whatever its size); the oldest
    /// leave it now if it holds more.
    ///
    /// ```
    /// use processional_state::store::Store;
    ///
    /// let mut store = Store::new(100);
    /// store.set_history_limits(100, 10);
    /// store.set("ns", "a", vec![0; 8]);
    /// store.set("ns", "b", vec![0; 8]);
    /// // Only the last change fits in 10 bytes.
    /// assert_eq!(store.oldest_of("ns"), 1);
    /// ```
    pub fn set_history_limits(&mut self, changes: usize, bytes: usize) {
        self.history_limit = changes.max(1);
        self.byte_limit = bytes;
        self.trim();
    }

    /// Drops the oldest changes while the history is over a limit.
    fn trim(&mut self) {
        while self.history.len() > self.history_limit
            || (self.history_bytes > self.byte_limit && self.history.len() > 1)
        {
            let Some(dropped) = self.history.pop_front() else {
                break;
            };
            self.history_bytes -= dropped.size();
            self.oldest = dropped.revision;
            *named(&mut self.dropped, &dropped.namespace) = dropped.revision;
        }
    }

    /// The revision of the last change.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// Changes after this revision are still in the history.
    pub fn oldest(&self) -> Revision {
        self.oldest
    }

    /// The changes of `namespace` after this revision are all still in the
    /// history (0: all of them).
    pub fn oldest_of(&self, namespace: &str) -> Revision {
        self.dropped.get(namespace).copied().unwrap_or(0)
    }

    /// The namespaces that hold at least one key, in order.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .filter(|(_, map)| !map.is_empty())
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn map(&self, namespace: &str) -> Option<&BTreeMap<String, Entry>> {
        self.namespaces.get(namespace)
    }

    pub(crate) fn namespace_map(&self, namespace: &str) -> Option<&BTreeMap<String, Entry>> {
        self.map(namespace)
    }

    /// The entry of `key` in `namespace`.
    pub fn entry(&self, namespace: &str, key: &str) -> Option<&Entry> {
        self.map(namespace).and_then(|map| map.get(key))
    }

    /// How many keys `namespace` holds.
    pub fn len(&self, namespace: &str) -> usize {
        self.map(namespace).map_or(0, BTreeMap::len)
    }

    /// Whether `namespace` holds no key.
    pub fn is_empty(&self, namespace: &str) -> bool {
        self.len(namespace) == 0
    }

    /// `namespace` now.
    pub fn snapshot(&self, namespace: &str) -> Snapshot {
        Snapshot {
            revision: self.revision,
            entries: self.map(namespace).cloned().unwrap_or_default(),
        }
    }

    /// The first key of `namespace` in key order.
    pub fn first_key(&self, namespace: &str) -> Option<&str> {
        self.map(namespace)
            .and_then(|map| map.keys().next())
            .map(String::as_str)
    }

    /// The last key of `namespace` in key order.
    pub fn last_key(&self, namespace: &str) -> Option<&str> {
        self.map(namespace)
            .and_then(|map| map.keys().next_back())
            .map(String::as_str)
    }

    /// Records a change of `namespace` made of `events` (if any) and returns
    /// the revision now.
    fn commit(&mut self, namespace: &str, events: Vec<Event>) -> Revision {
        if events.is_empty() {
            return self.revision;
        }
        let revision = self.revision + 1;
        self.revision = revision;
        {
            let map = named(&mut self.namespaces, namespace);
            for event in &events {
                match &event.value {
                    Some(value) => match map.get_mut(&event.key) {
                        // In place: no new key.
                        Some(entry) => {
                            entry.value.clone_from(value);
                            entry.modified = revision;
                        }
                        None => {
                            map.insert(
                                event.key.clone(),
                                Entry {
                                    value: value.clone(),
                                    created: revision,
                                    modified: revision,
                                },
                            );
                        }
                    },
                    None => {
                        map.remove(&event.key);
                    }
                }
            }
            if map.is_empty() {
                self.namespaces.remove(namespace);
            }
        }
        let change = Change {
            revision,
            namespace: namespace.to_owned(),
            events,
        };
        self.history_bytes += change.size();
        self.history.push_back(change);
        self.trim();
        revision
    }

    /// Sets `key` to `value`; returns the new revision.
    pub fn set(&mut self, namespace: &str, key: &str, value: Vec<u8>) -> Revision {
        self.commit(
            namespace,
            vec![Event {
                key: key.to_owned(),
                value: Some(value),
            }],
        )
    }

    /// Sets several keys in one change (the last value of a key repeated in
    /// `items` wins); returns the revision now.
    pub fn update(&mut self, namespace: &str, items: Vec<(String, Vec<u8>)>) -> Revision {
        let merged: BTreeMap<String, Vec<u8>> = items.into_iter().collect();
        let events = merged
            .into_iter()
            .map(|(key, value)| Event {
                key,
                value: Some(value),
            })
            .collect();
        self.commit(namespace, events)
    }

    /// Removes `key`; returns its entry (if it existed) and the revision now.
    pub fn remove(&mut self, namespace: &str, key: &str) -> (Option<Entry>, Revision) {
        let old = self.entry(namespace, key).cloned();
        let revision = match old {
            Some(_) => self.commit(
                namespace,
                vec![Event {
                    key: key.to_owned(),
                    value: None,
                }],
            ),
            None => self.revision,
        };
        (old, revision)
    }

    /// Sets `key` to `value` unless it exists; returns its value now (the
    /// existing one or `value`) and the revision now.
    pub fn setdefault(
        &mut self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
    ) -> (Vec<u8>, Revision) {
        if let Some(entry) = self.entry(namespace, key) {
            return (entry.value.clone(), self.revision);
        }
        let revision = self.set(namespace, key, value.clone());
        (value, revision)
    }

    /// Removes the last key in key order; returns it with its entry.
    pub fn popitem(&mut self, namespace: &str) -> (Option<(String, Entry)>, Revision) {
        let Some(key) = self.last_key(namespace).map(str::to_owned) else {
            return (None, self.revision);
        };
        let (entry, revision) = self.remove(namespace, &key);
        (entry.map(|entry| (key, entry)), revision)
    }

    /// Removes every key of `namespace` in one change.
    pub fn clear(&mut self, namespace: &str) -> Revision {
        let events = self
            .map(namespace)
            .map(|map| {
                map.keys()
                    .map(|key| Event {
                        key: key.clone(),
                        value: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.commit(namespace, events)
    }

    /// Runs a transaction: if every comparison holds, its `success` writes,
    /// else its `failure` writes, as one change.
    pub fn txn(&mut self, namespace: &str, txn: &Txn) -> TxnOutcome {
        let succeeded = txn
            .compare
            .iter()
            .all(|compare| compare.holds(self.entry(namespace, &compare.key)));
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut merged: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        for op in ops {
            let (key, value) = op.as_event();
            merged.insert(key.to_owned(), value.map(<[u8]>::to_vec));
        }
        let events = merged
            .into_iter()
            // Removing a missing key changes nothing.
            .filter(|(key, value)| value.is_some() || self.entry(namespace, key).is_some())
            .map(|(key, value)| Event { key, value })
            .collect();
        let revision = self.commit(namespace, events);
        TxnOutcome {
            succeeded,
            revision,
        }
    }

    /// Applies `f` to a view of `namespace` as one change. If `f` returns
    /// an error or panics, nothing it did stays (the panic goes on after
    /// the rollback). Returns `f`'s value and the revision now.
    pub fn atomic<R, E>(
        &mut self,
        namespace: &str,
        f: impl FnOnce(&mut View<'_>) -> Result<R, E>,
    ) -> Result<(R, Revision), E> {
        static EMPTY: BTreeMap<String, Entry> = BTreeMap::new();
        // The view borrows the namespace (no copy); its writes are kept
        // aside and committed only if `f` succeeds.
        let (value, events) = {
            let base = self.map(namespace).unwrap_or(&EMPTY);
            let mut view = View {
                base,
                writes: BTreeMap::new(),
                pending: self.revision + 1,
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| f(&mut view)));
            let writes = std::mem::take(&mut view.writes);
            match outcome {
                Ok(Ok(value)) => {
                    let events: Vec<Event> = writes
                        .into_iter()
                        .filter(|(key, value)| match (value, base.get(key)) {
                            (Some(new), Some(old)) => new.value != old.value,
                            (Some(_), None) => true,
                            (None, old) => old.is_some(),
                        })
                        .map(|(key, value)| Event {
                            key,
                            value: value.map(|entry| entry.value),
                        })
                        .collect();
                    (value, events)
                }
                // Nothing was applied: the writes are dropped.
                Ok(Err(error)) => return Err(error),
                Err(panic) => resume_unwind(panic),
            }
        };
        Ok((value, self.commit(namespace, events)))
    }

    /// Adds `by` to the `i64` under `key` (missing counts as 0) as one
    /// change; returns the sum and the revision.
    pub fn increment(
        &mut self,
        namespace: &str,
        key: &str,
        by: i64,
    ) -> Result<(i64, Revision), ValueError> {
        let old = match self.entry(namespace, key) {
            Some(entry) => codec::decode::<i64>(key, &entry.value)?,
            None => 0,
        };
        let value = old.wrapping_add(by);
        let bytes = codec::encode(key, &value)?;
        Ok((value, self.set(namespace, key, bytes)))
    }

    /// The changes of `namespace` after revision `after`, at most `max`, in
    /// order. If the history no longer holds all of them (one was dropped
    /// to keep the history bounded), the error holds the namespace now and
    /// its revision instead. Changes of other namespaces do not count: a
    /// quiet namespace is not compacted by a busy one.
    pub fn changes_after(
        &self,
        namespace: &str,
        after: Revision,
        max: usize,
    ) -> Result<Vec<Change>, Compacted> {
        self.changes_within(namespace, after, max, usize::MAX)
    }

    /// [`changes_after`](Self::changes_after), also stopping before the
    /// changes' [sizes](Change::size) pass `max_bytes` (one change at
    /// least, whatever its size).
    pub fn changes_within(
        &self,
        namespace: &str,
        after: Revision,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Change>, Compacted> {
        let mut bytes = 0usize;
        Ok(self
            .history_after(namespace, after)?
            .take(max)
            .take_while(|change| {
                let first = bytes == 0;
                bytes = bytes.saturating_add(change.size().max(1));
                first || bytes <= max_bytes
            })
            .cloned()
            .collect())
    }

    /// The changes of `namespace` after `after`, borrowed, or `Compacted`.
    fn history_after(
        &self,
        namespace: &str,
        after: Revision,
    ) -> Result<impl Iterator<Item = &Change>, Compacted> {
        let oldest = self.oldest_of(namespace);
        if after < oldest {
            return Err(Compacted {
                asked: after,
                oldest,
                snapshot: self.snapshot(namespace),
            });
        }
        // History revisions increase; skip those at or before `after`.
        let skip = self
            .history
            .partition_point(|change| change.revision <= after);
        Ok(self
            .history
            .range(skip..)
            .inspect(|_| self.count_examined())
            .filter(move |change| change.namespace == namespace))
    }

    #[cfg(test)]
    fn count_examined(&self) {
        self.examined.set(self.examined.get() + 1);
    }

    #[cfg(not(test))]
    fn count_examined(&self) {}

    /// Whether a change of `namespace` after `after` touched one of `keys`
    /// (any key if `keys` is empty).
    pub fn changed_since(
        &self,
        namespace: &str,
        keys: &[String],
        after: Revision,
    ) -> Result<bool, Compacted> {
        Ok(self
            .history_after(namespace, after)?
            .any(|change| keys.is_empty() || keys.iter().any(|key| change.touches(key))))
    }
}

/// A namespace as an atomic update sees it: reads see the update's own
/// writes; nothing reaches the store unless the update succeeds.
#[derive(Debug)]
pub struct View<'a> {
    base: &'a BTreeMap<String, Entry>,
    /// Keys written so far: their new entry, or `None` if removed.
    writes: BTreeMap<String, Option<Entry>>,
    /// The revision the update gets if it succeeds.
    pending: Revision,
}

impl View<'_> {
    /// Sets `key` to the encoded `value`.
    pub fn set_raw(&mut self, key: &str, value: Vec<u8>) {
        let created = self.raw(key).map_or(self.pending, |entry| entry.created);
        self.writes.insert(
            key.to_owned(),
            Some(Entry {
                value,
                created,
                modified: self.pending,
            }),
        );
    }

    /// Removes `key`; returns its entry if it existed.
    pub fn remove_raw(&mut self, key: &str) -> Option<Entry> {
        let old = self.raw(key).cloned();
        if old.is_some() {
            self.writes.insert(key.to_owned(), None);
        }
        old
    }

    /// Removes every key.
    pub fn clear(&mut self) {
        let keys: Vec<String> = self.raw_entries().map(|(key, _)| key.to_owned()).collect();
        for key in keys {
            self.writes.insert(key, None);
        }
    }
}

impl Read for View<'_> {
    fn raw(&self, key: &str) -> Option<&Entry> {
        match self.writes.get(key) {
            Some(written) => written.as_ref(),
            None => self.base.get(key),
        }
    }

    fn raw_entries(&self) -> Box<dyn Iterator<Item = (&str, &Entry)> + '_> {
        // Merge the base and the writes, both in key order.
        let mut base = self.base.iter().peekable();
        let mut writes = self.writes.iter().peekable();
        Box::new(std::iter::from_fn(move || {
            loop {
                let next = match (base.peek(), writes.peek()) {
                    (None, None) => return None,
                    (Some(_), None) => base.next().map(|(k, v)| (k, Some(v))),
                    (None, Some(_)) => writes.next().map(|(k, v)| (k, v.as_ref())),
                    (Some((bk, _)), Some((wk, _))) => {
                        if bk < wk {
                            base.next().map(|(k, v)| (k, Some(v)))
                        } else {
                            if bk == wk {
                                base.next();
                            }
                            writes.next().map(|(k, v)| (k, v.as_ref()))
                        }
                    }
                };
                match next {
                    Some((key, Some(entry))) => return Some((key.as_str(), entry)),
                    Some((_, None)) => continue,
                    None => return None,
                }
            }
        }))
    }

    fn len(&self) -> usize {
        self.raw_entries().count()
    }
}

impl View<'_> {
    /// Sets `key` to `value`.
    pub fn set<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), ValueError> {
        let bytes = codec::encode(key, value)?;
        self.set_raw(key, bytes);
        Ok(())
    }

    /// Removes `key`; returns its value as a `T` if it existed. A value of
    /// another type is an error, and the key stays.
    pub fn remove<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, ValueError> {
        let Some(value) = self.get::<T>(key)? else {
            return Ok(None);
        };
        self.remove_raw(key);
        Ok(Some(value))
    }

    /// Removes `key` and returns its value, or `default` if there is none.
    pub fn pop<T: DeserializeOwned>(&mut self, key: &str, default: T) -> Result<T, ValueError> {
        Ok(self.remove(key)?.unwrap_or(default))
    }

    /// The value of `key`, first set to `default` if there is none.
    pub fn setdefault<T: Serialize + DeserializeOwned>(
        &mut self,
        key: &str,
        default: T,
    ) -> Result<T, ValueError> {
        match self.get(key)? {
            Some(value) => Ok(value),
            None => {
                self.set(key, &default)?;
                Ok(default)
            }
        }
    }

    /// Sets every pair of `items`.
    pub fn update<T: Serialize>(
        &mut self,
        items: impl IntoIterator<Item = (String, T)>,
    ) -> Result<(), ValueError> {
        for (key, value) in items {
            self.set(&key, &value)?;
        }
        Ok(())
    }

    /// Adds `by` to the `i64` under `key` (missing counts as 0); returns
    /// the sum.
    pub fn increment(&mut self, key: &str, by: i64) -> Result<i64, ValueError> {
        let value = self.get_or(key, 0i64)?.wrapping_add(by);
        self.set(key, &value)?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::txn::{Compare, Op, Txn};

    /// One operation of the model test, on namespace `ns` (0 or 1).
    #[derive(Debug, Clone)]
    enum Action {
        Set(u8, u8, u8),
        Remove(u8, u8),
        Clear(u8),
        Update(u8, Vec<(u8, u8)>),
        SetDefault(u8, u8, u8),
        PopItem(u8),
        /// Set `key` to `value` if `if_key` holds `if_value`, else remove `key`.
        Txn(u8, u8, u8, u8, u8),
        /// Increment two keys, then fail or not.
        Atomic(u8, u8, u8, bool),
    }

    fn action() -> impl Strategy<Value = Action> {
        let ns = 0u8..2;
        let key = 0u8..6;
        prop_oneof![
            (ns.clone(), key.clone(), any::<u8>()).prop_map(|(n, k, v)| Action::Set(n, k, v)),
            (ns.clone(), key.clone()).prop_map(|(n, k)| Action::Remove(n, k)),
            ns.clone().prop_map(Action::Clear),
            (
                ns.clone(),
                prop::collection::vec((key.clone(), any::<u8>()), 0..4)
            )
                .prop_map(|(n, items)| Action::Update(n, items)),
            (ns.clone(), key.clone(), any::<u8>())
                .prop_map(|(n, k, v)| Action::SetDefault(n, k, v)),
            ns.clone().prop_map(Action::PopItem),
            (ns.clone(), key.clone(), 0u8..3, key.clone(), 0u8..3)
                .prop_map(|(n, ik, iv, k, v)| Action::Txn(n, ik, iv, k, v)),
            (ns, key.clone(), key, any::<bool>())
                .prop_map(|(n, a, b, f)| Action::Atomic(n, a, b, f)),
        ]
    }

    fn name(ns: u8) -> String {
        format!("ns{ns}")
    }

    fn key(k: u8) -> String {
        format!("k{k}")
    }

    fn bytes(v: u8) -> Vec<u8> {
        codec::encode("", &v).unwrap()
    }

    type Model = BTreeMap<String, BTreeMap<String, u8>>;

    /// Applies `action` to the model; returns the events it should produce
    /// (the namespace and the new values by key).
    fn apply(model: &mut Model, action: &Action) -> (String, BTreeMap<String, Option<u8>>) {
        let ns_of = |n: &u8| name(*n);
        let mut events = BTreeMap::new();
        let ns = match action {
            Action::Set(n, ..)
            | Action::Remove(n, ..)
            | Action::Clear(n)
            | Action::Update(n, ..)
            | Action::SetDefault(n, ..)
            | Action::PopItem(n)
            | Action::Txn(n, ..)
            | Action::Atomic(n, ..) => ns_of(n),
        };
        let map = model.entry(ns.clone()).or_default();
        match action {
            Action::Set(_, k, v) => {
                map.insert(key(*k), *v);
                events.insert(key(*k), Some(*v));
            }
            Action::Remove(_, k) => {
                if map.remove(&key(*k)).is_some() {
                    events.insert(key(*k), None);
                }
            }
            Action::Clear(_) => {
                for k in std::mem::take(map).into_keys() {
                    events.insert(k, None);
                }
            }
            Action::Update(_, items) => {
                for (k, v) in items {
                    map.insert(key(*k), *v);
                    events.insert(key(*k), Some(*v));
                }
            }
            Action::SetDefault(_, k, v) => {
                if let std::collections::btree_map::Entry::Vacant(slot) = map.entry(key(*k)) {
                    slot.insert(*v);
                    events.insert(key(*k), Some(*v));
                }
            }
            Action::PopItem(_) => {
                if let Some((k, _)) = map.pop_last() {
                    events.insert(k, None);
                }
            }
            Action::Txn(_, ik, iv, k, v) => {
                if map.get(&key(*ik)) == Some(iv) {
                    map.insert(key(*k), *v);
                    events.insert(key(*k), Some(*v));
                } else if map.remove(&key(*k)).is_some() {
                    events.insert(key(*k), None);
                }
            }
            Action::Atomic(_, a, b, fail) => {
                if !fail {
                    let before = map.clone();
                    for k in [a, b] {
                        let value = map.get(&key(*k)).copied().unwrap_or(0).wrapping_add(1);
                        map.insert(key(*k), value);
                    }
                    for (k, v) in map.iter() {
                        if before.get(k) != Some(v) {
                            events.insert(k.clone(), Some(*v));
                        }
                    }
                }
            }
        }
        (ns, events)
    }

    fn run(store: &mut Store, action: &Action) {
        match action {
            Action::Set(n, k, v) => {
                store.set(&name(*n), &key(*k), bytes(*v));
            }
            Action::Remove(n, k) => {
                store.remove(&name(*n), &key(*k));
            }
            Action::Clear(n) => {
                store.clear(&name(*n));
            }
            Action::Update(n, items) => {
                let items = items.iter().map(|(k, v)| (key(*k), bytes(*v))).collect();
                store.update(&name(*n), items);
            }
            Action::SetDefault(n, k, v) => {
                store.setdefault(&name(*n), &key(*k), bytes(*v));
            }
            Action::PopItem(n) => {
                store.popitem(&name(*n));
            }
            Action::Txn(n, ik, iv, k, v) => {
                let txn = Txn::new()
                    .when(Compare::equal(&key(*ik), iv).unwrap())
                    .then(Op::set(&key(*k), v).unwrap())
                    .or_else(Op::remove(&key(*k)));
                store.txn(&name(*n), &txn);
            }
            Action::Atomic(n, a, b, fail) => {
                let _ = store.atomic(&name(*n), |view| {
                    for k in [a, b] {
                        let value = view.get_or(&key(*k), 0u8)?.wrapping_add(1);
                        view.set(&key(*k), &value)?;
                    }
                    if *fail { Err(Aborted) } else { Ok(()) }
                });
            }
        }
    }

    #[derive(Debug)]
    struct Aborted;

    impl From<ValueError> for Aborted {
        fn from(_: ValueError) -> Self {
            Aborted
        }
    }

    proptest! {
        #[test]
        fn the_store_behaves_like_a_map_operation_by_operation(
            actions in prop::collection::vec(action(), 1..60),
            limit in 1usize..8,
        ) {
            let mut store = Store::new(limit);
            let mut model = Model::new();
            let mut log: Vec<(u64, String, bool)> = Vec::new();
            for action in &actions {
                let before = store.revision();
                let (ns, expected) = apply(&mut model, action);
                run(&mut store, action);
                // The namespace equals the model, in key order.
                let snapshot = store.snapshot(&ns);
                let got: BTreeMap<String, u8> = snapshot.to_map().unwrap();
                prop_assert_eq!(&got, model.get(&ns).unwrap());
                prop_assert_eq!(snapshot.keys(), model[&ns].keys().cloned().collect::<Vec<_>>());
                prop_assert_eq!(store.len(&ns), model[&ns].len());
                // One revision per change, none for an operation that changed nothing.
                let changes = store.changes_after(&ns, before, usize::MAX).unwrap();
                if expected.is_empty() {
                    prop_assert_eq!(store.revision(), before);
                    prop_assert!(changes.is_empty());
                } else {
                    prop_assert_eq!(store.revision(), before + 1);
                    prop_assert_eq!(changes.len(), 1);
                    let change = &changes[0];
                    prop_assert_eq!(change.revision, before + 1);
                    let events: BTreeMap<String, Option<u8>> = change.events.iter()
                        .map(|e| (e.key.clone(), e.value.as_ref().map(|v| codec::decode("", v).unwrap())))
                        .collect();
                    prop_assert_eq!(events, expected);
                    for event in &change.events {
                        if event.value.is_some() {
                            prop_assert_eq!(snapshot.modified(&event.key), Some(before + 1));
                        }
                    }
                }
                // The history is bounded, and asking before it is refused.
                prop_assert!(store.history.len() <= limit);
                let oldest = store.oldest_of(&ns);
                prop_assert!(oldest <= store.oldest());
                if oldest > 0 {
                    let error = store.changes_after(&ns, oldest - 1, usize::MAX).unwrap_err();
                    prop_assert_eq!(error.snapshot, store.snapshot(&ns));
                }
                // From there on, the history holds every change of `ns`:
                // the same as a full log filtered by namespace.
                log.push((store.revision(), ns.clone(), store.revision() != before));
                let expected: Vec<u64> = log.iter()
                    .filter(|(rev, n, changed)| *changed && n == &ns && *rev > oldest)
                    .map(|(rev, _, _)| *rev)
                    .collect();
                let got: Vec<u64> = store.changes_after(&ns, oldest, usize::MAX).unwrap()
                    .iter().map(|c| c.revision).collect();
                prop_assert_eq!(got, expected);
            }
            for (ns, map) in &model {
                prop_assert!(store.snapshot(ns).eq_map(map).unwrap());
            }
        }
    }

    #[test]
    fn a_panicking_update_leaves_nothing() {
        let mut store = Store::new(10);
        store.set("ns", "a", bytes(1));
        let result = catch_unwind(AssertUnwindSafe(|| {
            let _: Result<((), Revision), Aborted> = store.atomic("ns", |view| {
                view.set("a", &2u8)?;
                view.set("b", &3u8)?;
                panic!("in the middle");
            });
        }));
        assert!(result.is_err());
        assert_eq!(store.revision(), 1);
        assert_eq!(store.snapshot("ns").to_map::<u8>().unwrap().len(), 1);
        assert_eq!(store.snapshot("ns").get::<u8>("a").unwrap(), Some(1));
    }

    #[test]
    fn a_view_reads_its_own_writes_in_key_order() {
        let mut store = Store::new(10);
        store.update("ns", vec![(key(1), bytes(1)), (key(3), bytes(3))]);
        let (keys, _) = store
            .atomic("ns", |view| -> Result<_, ValueError> {
                view.set("k2", &2u8)?;
                view.remove::<u8>("k3")?;
                view.set("k0", &0u8)?;
                Ok(view.keys())
            })
            .unwrap();
        assert_eq!(keys, ["k0", "k1", "k2"]);
    }

    #[test]
    fn a_busy_namespace_does_not_compact_a_quiet_one() {
        let mut store = Store::new(2);
        store.set("quiet", "k", bytes(1));
        for i in 0..10u8 {
            store.set("busy", "n", bytes(i));
        }
        // The quiet namespace's change left the history, so asking from
        // before it is refused; from after it, nothing is missing.
        assert!(store.changes_after("quiet", 0, 10).is_err());
        assert_eq!(store.changes_after("quiet", 1, 10).unwrap(), []);
        assert!(store.changes_after("busy", 8, 10).is_err());
    }

    #[test]
    fn a_watcher_behind_the_history_gets_the_state_now() {
        let mut store = Store::new(3);
        for i in 0..10u8 {
            store.set("ns", "n", bytes(i));
        }
        assert_eq!(store.changes_after("ns", 7, 100).unwrap().len(), 3);
        let error = store.changes_after("ns", 6, 100).unwrap_err();
        assert_eq!(error.oldest, 7);
        assert_eq!(error.snapshot.revision, 10);
        assert_eq!(error.snapshot.get::<u8>("n").unwrap(), Some(9));
    }

    #[test]
    fn the_history_is_bounded_by_bytes_too() {
        // A 1 MiB value rewritten many times: the map holds 1 MiB, and
        // the history no more than its byte budget (plus the last change).
        const BUDGET: usize = 64 << 20; // the default
        let mut store = Store::new(DEFAULT_HISTORY);
        let value = vec![7u8; 1 << 20];
        for _ in 0..(BUDGET >> 20) + 8 {
            store.set("ns", "big", value.clone());
        }
        let kept: usize = store
            .history
            .iter()
            .flat_map(|change| &change.events)
            .map(|event| event.value.as_ref().map_or(0, Vec::len))
            .sum();
        assert!(kept <= BUDGET, "{kept} bytes kept");
        // Asking from before what it keeps is refused, with the state now.
        let error = store.changes_after("ns", 0, usize::MAX).unwrap_err();
        assert_eq!(error.snapshot.revision, store.revision());
    }
}
