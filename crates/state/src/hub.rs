//! The store with the waiters on it: what a state server keeps. Still pure:
//! a waiter is anything that can be answered once ([`Respond`]); the
//! server's are deferred replies, the tests' are channels.
//!
//! Every operation returns the answers it made due (a change satisfied a
//! waiter, or a waiter was given up), to be delivered after the hub's lock
//! is released, so a slow client never holds the store.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::read::Read;
use crate::store::{
    Change, DEFAULT_HISTORY, DEFAULT_HISTORY_BYTES, Entry, Revision, Snapshot, Store, named,
};

/// How many waits and watch polls one connection may have parked at once
/// unless told otherwise.
pub const DEFAULT_MAX_WAITS: usize = 1024;
/// How many changes one watch poll is answered with at most.
pub const MAX_POLL_CHANGES: usize = 4096;
/// How many bytes of changes ([`Change::size`]) one watch poll is answered
/// with at most (one change at least, whatever its size): 8 MiB.
pub const MAX_POLL_BYTES: usize = 8 << 20;

/// A state server's bounds, set by whoever starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Limits {
    /// How many changes the history keeps.
    pub(crate) history: usize,
    /// How many bytes of changes it keeps.
    pub(crate) history_bytes: usize,
    /// How many waits and polls one connection may park.
    pub(crate) max_waits: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            history: DEFAULT_HISTORY,
            history_bytes: DEFAULT_HISTORY_BYTES,
            max_waits: DEFAULT_MAX_WAITS,
        }
    }
}

/// Something waiting for one answer (a deferred reply).
pub(crate) trait Respond<T>: Send {
    /// Answers; gone waiters drop the answer.
    fn respond(self: Box<Self>, answer: T);
    /// Whether the answer would still reach someone.
    fn is_waiting(&self) -> bool;
    /// Answers a waiter nobody waits for any more (so that its caller's
    /// runtime, if it still listens, sees a value, not a failure).
    fn abandon(self: Box<Self>);
    /// The connection it came on, whose parked waits are capped (`None`:
    /// not capped).
    fn connection(&self) -> Option<u64> {
        None
    }
}

/// A namespace as it is now, borrowed from the store: what predicates of
/// `when` read.
#[derive(Debug, Clone, Copy)]
pub struct Peek<'a> {
    revision: Revision,
    map: Option<&'a BTreeMap<String, Entry>>,
}

impl Peek<'_> {
    /// The revision it shows.
    pub fn revision(&self) -> Revision {
        self.revision
    }

    /// An owned copy.
    pub fn to_snapshot(&self) -> Snapshot {
        Snapshot {
            revision: self.revision,
            entries: self.map.cloned().unwrap_or_default(),
        }
    }
}

impl Read for Peek<'_> {
    fn raw(&self, key: &str) -> Option<&Entry> {
        self.map.and_then(|map| map.get(key))
    }

    fn raw_entries(&self) -> Box<dyn Iterator<Item = (&str, &Entry)> + '_> {
        match self.map {
            Some(map) => Box::new(map.iter().map(|(k, v)| (k.as_str(), v))),
            None => Box::new(std::iter::empty()),
        }
    }

    fn len(&self) -> usize {
        self.map.map_or(0, BTreeMap::len)
    }
}

impl Store {
    /// `namespace` now, borrowed.
    pub fn peek(&self, namespace: &str) -> Peek<'_> {
        Peek {
            revision: self.revision(),
            map: self.namespace_map(namespace),
        }
    }
}

/// What a data-only condition checks of one key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum KeyTest {
    Present,
    Missing,
    Equal(#[serde(with = "serde_bytes")] Vec<u8>),
    NotEqual(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl KeyTest {
    fn holds(&self, entry: Option<&Entry>) -> bool {
        match self {
            KeyTest::Present => entry.is_some(),
            KeyTest::Missing => entry.is_none(),
            KeyTest::Equal(bytes) => entry.is_some_and(|e| &e.value == bytes),
            KeyTest::NotEqual(bytes) => entry.is_none_or(|e| &e.value != bytes),
        }
    }
}

/// A predicate shipped by a client (same build).
pub(crate) type Predicate = Box<dyn Fn(&Peek<'_>) -> bool + Send>;

/// What a waiter waits for.
pub(crate) enum Condition {
    /// A change of one of `keys` (of any key if empty) after `after`.
    Changed { keys: Vec<String>, after: Revision },
    /// A test of one key.
    Key { key: String, test: KeyTest },
    /// A predicate over the namespace.
    Predicate(Predicate),
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Condition::Changed { keys, after } => f
                .debug_struct("Changed")
                .field("keys", keys)
                .field("after", after)
                .finish(),
            Condition::Key { key, test } => f
                .debug_struct("Key")
                .field("key", key)
                .field("test", test)
                .finish(),
            Condition::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// The answer of a waiter: the namespace that satisfied it.
pub(crate) type Satisfied = Result<Snapshot, WireError>;
/// The answer of a watch poll: the changes after its revision.
pub(crate) type Changes = Result<Vec<Change>, WireError>;

struct Waiter {
    condition: Condition,
    connection: Option<u64>,
    respond: Box<dyn Respond<Satisfied>>,
}

struct Poll {
    after: Revision,
    max: usize,
    connection: Option<u64>,
    respond: Box<dyn Respond<Changes>>,
}

/// The waits and polls parked on one namespace: a change looks at these
/// only.
#[derive(Default)]
struct Parked {
    waiters: Vec<Waiter>,
    polls: Vec<Poll>,
}

impl Parked {
    fn is_empty(&self) -> bool {
        self.waiters.is_empty() && self.polls.is_empty()
    }
}

/// How many waits and polls may be parked before the first look at all of
/// them for those nobody waits for any more; after each look, twice as many
/// as it kept. So the looks cost a constant per parked wait, amortized.
const PRUNE_FLOOR: usize = 64;

/// Sorts the parked `items` of a namespace after its change, with
/// `answer`: those still parked are returned; the others' answers go to
/// `due`, their connections to `gone`.
fn sort_out<T>(
    items: Vec<T>,
    mut answer: impl FnMut(T) -> Result<T, (Option<u64>, Delivery)>,
    gone: &mut Vec<Option<u64>>,
    due: &mut Vec<Delivery>,
) -> Vec<T> {
    let mut left = Vec::new();
    for item in items {
        match answer(item) {
            Ok(item) => left.push(item),
            Err((connection, delivery)) => {
                gone.push(connection);
                due.push(delivery);
            }
        }
    }
    left
}

/// An answer made due, to deliver once the hub is unlocked.
pub(crate) struct Delivery(Box<dyn FnOnce() + Send>);

impl Delivery {
    pub(crate) fn deliver(self) {
        (self.0)()
    }

    fn abandon<T: 'static>(respond: Box<dyn Respond<T>>) -> Delivery {
        Delivery(Box::new(move || respond.abandon()))
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Delivery(..)")
    }
}

/// The store and everyone waiting on it.
///
/// Parked waits and polls are kept by namespace, and counted by connection:
/// a change looks at the waits of its namespace only, a cap check costs one
/// lookup, and waits whose caller left are dropped when their namespace
/// changes, when their connection reaches its cap, or in a look at all of
/// them once their number has doubled ([`PRUNE_FLOOR`]).
pub(crate) struct Hub {
    pub(crate) store: Store,
    parked: BTreeMap<String, Parked>,
    /// Waits and polls parked per connection (capped ones only).
    per_connection: HashMap<u64, usize>,
    /// Waits and polls parked in all.
    total: usize,
    /// The next `total` at which every parked wait is looked at.
    prune_at: usize,
    max_waits: usize,
    /// How many parked waits and polls were looked at (the tests count work).
    #[cfg(test)]
    pub(crate) examined: std::cell::Cell<usize>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("revision", &self.store.revision())
            .field("parked", &self.total)
            .finish()
    }
}

impl Hub {
    #[cfg(test)]
    pub(crate) fn new(history: usize) -> Hub {
        Hub::with_limits(Limits {
            history,
            ..Limits::default()
        })
    }

    pub(crate) fn with_limits(limits: Limits) -> Hub {
        let mut hub = Hub {
            store: Store::new(limits.history),
            parked: BTreeMap::new(),
            per_connection: HashMap::new(),
            total: 0,
            prune_at: PRUNE_FLOOR,
            max_waits: limits.max_waits,
            #[cfg(test)]
            examined: std::cell::Cell::new(0),
        };
        hub.set_limits(limits);
        hub
    }

    /// Applies `limits` in place: the history trimmed to them, parked
    /// waiters kept.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.store
            .set_history_limits(limits.history, limits.history_bytes);
        self.max_waits = limits.max_waits;
    }

    /// Counts `n` parked waits looked at (tests only).
    fn looked_at(&self, n: usize) {
        #[cfg(test)]
        self.examined.set(self.examined.get() + n);
        let _ = n;
    }

    /// Whether `connection` has as many waits and polls parked as it may.
    /// Before refusing, the waits nobody waits for are dropped (their
    /// answers added to `due`), as they still count.
    fn full(&mut self, connection: Option<u64>, due: &mut Vec<Delivery>) -> bool {
        let Some(connection) = connection else {
            return false;
        };
        let parked = |hub: &Hub| hub.per_connection.get(&connection).copied().unwrap_or(0);
        if parked(self) < self.max_waits {
            return false;
        }
        due.extend(self.prune_all());
        parked(self) >= self.max_waits
    }

    fn too_many(&self) -> WireError {
        WireError::TooManyWaits {
            limit: self.max_waits as u64,
        }
    }

    /// Counts one more wait or poll parked by `connection`.
    fn parked_one(&mut self, connection: Option<u64>) {
        self.total += 1;
        if let Some(connection) = connection {
            *self.per_connection.entry(connection).or_default() += 1;
        }
    }

    /// Counts one wait or poll of `connection` gone (answered or dropped).
    fn unparked_one(&mut self, connection: Option<u64>) {
        self.total -= 1;
        if let Some(connection) = connection
            && let Some(count) = self.per_connection.get_mut(&connection)
        {
            *count -= 1;
            if *count == 0 {
                self.per_connection.remove(&connection);
            }
        }
    }

    /// Whether `condition` holds for `namespace` now.
    fn check(store: &Store, namespace: &str, condition: &Condition) -> Result<bool, WireError> {
        Ok(match condition {
            Condition::Changed { keys, after } => store
                .changed_since(namespace, keys, *after)
                .map_err(|c| WireError::Compacted(Box::new(c)))?,
            Condition::Key { key, test } => test.holds(store.entry(namespace, key)),
            Condition::Predicate(predicate) => {
                let peek = store.peek(namespace);
                // A panicking predicate answers false; the panic is the
                // caller's bug, not the server's.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| predicate(&peek)))
                    .unwrap_or(false)
            }
        })
    }

    /// Waits for `condition` on `namespace`: answered at once if it holds.
    pub(crate) fn wait(
        &mut self,
        namespace: &str,
        condition: Condition,
        respond: Box<dyn Respond<Satisfied>>,
    ) -> Vec<Delivery> {
        let mut due = self.prune_if_due();
        let connection = respond.connection();
        let answer = match Self::check(&self.store, namespace, &condition) {
            Ok(true) => Ok(self.store.snapshot(namespace)),
            Ok(false) if self.full(connection, &mut due) => Err(self.too_many()),
            Ok(false) => {
                let condition = match condition {
                    // Checked up to now: later checks look at newer changes.
                    Condition::Changed { keys, after } => Condition::Changed {
                        keys,
                        after: after.max(self.store.revision()),
                    },
                    condition => condition,
                };
                self.parked_one(connection);
                named(&mut self.parked, namespace).waiters.push(Waiter {
                    condition,
                    connection,
                    respond,
                });
                return due;
            }
            Err(error) => Err(error),
        };
        due.push(Delivery(Box::new(move || respond.respond(answer))));
        due
    }

    /// The changes of `namespace` after `after` (at most `max`), answered
    /// at once if there are some, else at the next change. `after: None`
    /// means "after now".
    pub(crate) fn poll(
        &mut self,
        namespace: &str,
        after: Option<Revision>,
        max: usize,
        respond: Box<dyn Respond<Changes>>,
    ) -> Vec<Delivery> {
        let mut due = self.prune_if_due();
        let connection = respond.connection();
        let after = after.unwrap_or(self.store.revision());
        let max = max.clamp(1, MAX_POLL_CHANGES);
        let answer = match self
            .store
            .changes_within(namespace, after, max, MAX_POLL_BYTES)
        {
            Ok(changes) if changes.is_empty() && self.full(connection, &mut due) => {
                Err(self.too_many())
            }
            Ok(changes) if changes.is_empty() => {
                self.parked_one(connection);
                named(&mut self.parked, namespace).polls.push(Poll {
                    after,
                    max,
                    connection,
                    respond,
                });
                return due;
            }
            Ok(changes) => Ok(changes),
            Err(compacted) => Err(WireError::Compacted(Box::new(compacted))),
        };
        due.push(Delivery(Box::new(move || respond.respond(answer))));
        due
    }

    /// [`prune_all`](Self::prune_all) once the parked waits have doubled
    /// since the last one.
    fn prune_if_due(&mut self) -> Vec<Delivery> {
        if self.total < self.prune_at {
            return Vec::new();
        }
        let due = self.prune_all();
        self.prune_at = (2 * self.total).max(PRUNE_FLOOR);
        due
    }

    /// Forgets waiters nobody waits for any more (their caller timed out,
    /// cancelled or left); returns their last answers, to deliver after
    /// the lock (a caller that does not read must not hold the hub).
    fn prune_all(&mut self) -> Vec<Delivery> {
        self.looked_at(self.total);
        let mut due = Vec::new();
        let mut gone = Vec::new();
        for parked in self.parked.values_mut() {
            for waiter in parked.waiters.extract_if(.., |w| !w.respond.is_waiting()) {
                gone.push(waiter.connection);
                due.push(Delivery::abandon(waiter.respond));
            }
            for poll in parked.polls.extract_if(.., |p| !p.respond.is_waiting()) {
                gone.push(poll.connection);
                due.push(Delivery::abandon(poll.respond));
            }
        }
        self.parked.retain(|_, parked| !parked.is_empty());
        for connection in gone {
            self.unparked_one(connection);
        }
        due
    }

    /// After a change of `namespace` (if the revision moved past `before`):
    /// the answers now due. Only that namespace's waits are looked at; those
    /// nobody waits for any more are dropped on the way.
    pub(crate) fn changed(&mut self, namespace: &str, before: Revision) -> Vec<Delivery> {
        if self.store.revision() == before {
            return Vec::new();
        }
        let mut due = self.prune_if_due();
        // Taken out of its slot and put back: the name is not made again.
        let Some(parked) = self.parked.get_mut(namespace).map(std::mem::take) else {
            return due;
        };
        self.looked_at(parked.waiters.len() + parked.polls.len());
        let mut gone = Vec::new();
        let left = Parked {
            waiters: sort_out(
                parked.waiters,
                |waiter| self.answer_waiter(namespace, before, waiter),
                &mut gone,
                &mut due,
            ),
            polls: sort_out(
                parked.polls,
                |poll| self.answer_poll(namespace, poll),
                &mut gone,
                &mut due,
            ),
        };
        for connection in gone {
            self.unparked_one(connection);
        }
        if left.is_empty() {
            self.parked.remove(namespace);
        } else if let Some(slot) = self.parked.get_mut(namespace) {
            *slot = left;
        }
        due
    }

    /// A waiter of `namespace` after its change past `before`: still
    /// parked (`Ok`), or gone with the answer to deliver and its connection.
    fn answer_waiter(
        &self,
        namespace: &str,
        before: Revision,
        mut waiter: Waiter,
    ) -> Result<Waiter, (Option<u64>, Delivery)> {
        if !waiter.respond.is_waiting() {
            return Err((waiter.connection, Delivery::abandon(waiter.respond)));
        }
        let store = &self.store;
        // A parked change waiter was checked up to `before`: only the new
        // change needs looking at, and it is checked up to now.
        if let Condition::Changed { after, .. } = &mut waiter.condition {
            *after = (*after).max(before);
        }
        let outcome = Self::check(store, namespace, &waiter.condition);
        if let Condition::Changed { after, .. } = &mut waiter.condition {
            *after = (*after).max(store.revision());
        }
        match outcome {
            Ok(false) => Ok(waiter),
            outcome => {
                let answer = outcome.map(|_| store.snapshot(namespace));
                let respond = waiter.respond;
                let delivery = Delivery(Box::new(move || respond.respond(answer)));
                Err((waiter.connection, delivery))
            }
        }
    }

    /// A poll of `namespace` after its change: still parked (`Ok`), or gone
    /// with the answer to deliver and its connection.
    fn answer_poll(&self, namespace: &str, poll: Poll) -> Result<Poll, (Option<u64>, Delivery)> {
        if !poll.respond.is_waiting() {
            return Err((poll.connection, Delivery::abandon(poll.respond)));
        }
        let answer = self
            .store
            .changes_within(namespace, poll.after, poll.max, MAX_POLL_BYTES)
            .map_err(|c| WireError::Compacted(Box::new(c)));
        match answer {
            Ok(changes) if changes.is_empty() => Ok(poll),
            answer => {
                let respond = poll.respond;
                let delivery = Delivery(Box::new(move || respond.respond(answer)));
                Err((poll.connection, delivery))
            }
        }
    }

    /// How many waiters and polls are parked (for tests).
    #[cfg(test)]
    pub(crate) fn parked(&self) -> (usize, usize) {
        let waiters = self.parked.values().map(|p| p.waiters.len()).sum();
        let polls = self.parked.values().map(|p| p.polls.len()).sum();
        (waiters, polls)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::codec;

    struct Channel<T>(mpsc::Sender<T>);

    impl<T: Send> Respond<T> for Channel<T> {
        fn respond(self: Box<Self>, answer: T) {
            let _ = self.0.send(answer);
        }
        fn is_waiting(&self) -> bool {
            true
        }
        fn abandon(self: Box<Self>) {}
    }

    /// A waiter whose caller left (on connection `.1`, if capped): it must
    /// be answered once, by abandon.
    struct Gone(mpsc::Sender<&'static str>, Option<u64>);

    impl<T: Send> Respond<T> for Gone {
        fn respond(self: Box<Self>, _: T) {
            let _ = self.0.send("answered");
        }
        fn is_waiting(&self) -> bool {
            false
        }
        fn abandon(self: Box<Self>) {
            let _ = self.0.send("abandoned");
        }
        fn connection(&self) -> Option<u64> {
            self.1
        }
    }

    #[test]
    fn waiters_nobody_waits_for_are_abandoned_not_kept() {
        let mut hub = Hub::new(10);
        let (sender, events) = mpsc::channel();
        let condition = Condition::Key {
            key: "k".into(),
            test: KeyTest::Present,
        };
        deliver(hub.wait("ns", condition, Box::new(Gone(sender.clone(), None))));
        deliver(hub.poll("quiet", None, 10, Box::new(Gone(sender.clone(), None))));
        assert_eq!(hub.parked(), (1, 1));
        // A change of its namespace forgets a waiter.
        set(&mut hub, "k", 1);
        assert_eq!(hub.parked(), (0, 1));
        assert_eq!(events.try_recv(), Ok("abandoned"));
        // One in a quiet namespace goes once the parked waits have doubled.
        let live: Vec<_> = (1..PRUNE_FLOOR)
            .map(|_| park_quiet(&mut hub, "other"))
            .collect();
        assert_eq!(hub.parked(), (PRUNE_FLOOR - 1, 1));
        let _last = park_quiet(&mut hub, "other");
        assert_eq!(hub.parked(), (PRUNE_FLOOR, 0));
        assert_eq!(events.try_recv(), Ok("abandoned"));
        // And so does one that would make its connection refuse a wait.
        let mut capped = Hub::with_limits(Limits {
            max_waits: 1,
            ..Limits::default()
        });
        let (gone_sender, gone_events) = mpsc::channel();
        deliver(capped.wait("quiet", rare(0), Box::new(Gone(gone_sender, Some(1)))));
        let answer = park_quiet(&mut capped, "ns");
        assert_eq!(gone_events.try_recv(), Ok("abandoned"));
        assert!(answer.try_recv().is_err(), "parked, not refused");
        assert_eq!(capped.parked(), (1, 0));
        drop(live);
    }

    fn channel<T: Send + 'static>() -> (Box<dyn Respond<T>>, mpsc::Receiver<T>) {
        let (sender, receiver) = mpsc::channel();
        (Box::new(Channel(sender)), receiver)
    }

    fn deliver(due: Vec<Delivery>) {
        due.into_iter().for_each(Delivery::deliver);
    }

    fn set(hub: &mut Hub, key: &str, value: u32) {
        let before = hub.store.revision();
        hub.store
            .set("ns", key, codec::encode(key, &value).unwrap());
        deliver(hub.changed("ns", before));
    }

    #[test]
    fn a_key_waiter_is_answered_by_the_change_that_satisfies_it() {
        let mut hub = Hub::new(10);
        let (respond, answers) = channel();
        let test = KeyTest::Equal(codec::encode("k", &2u32).unwrap());
        deliver(hub.wait(
            "ns",
            Condition::Key {
                key: "k".into(),
                test,
            },
            respond,
        ));
        set(&mut hub, "k", 1);
        assert!(answers.try_recv().is_err());
        set(&mut hub, "k", 2);
        let snapshot = answers.try_recv().unwrap().unwrap();
        assert_eq!(snapshot.revision, 2);
        assert_eq!(snapshot.get::<u32>("k").unwrap(), Some(2));
        assert_eq!(hub.parked(), (0, 0));
    }

    #[test]
    fn a_poll_gets_every_change_after_its_revision() {
        let mut hub = Hub::new(10);
        set(&mut hub, "k", 1);
        set(&mut hub, "k", 2);
        let (respond, answers) = channel();
        deliver(hub.poll("ns", Some(0), 100, respond));
        let changes = answers.try_recv().unwrap().unwrap();
        assert_eq!(
            changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
            [1, 2]
        );
        // After now: parked until the next change.
        let (respond, answers) = channel();
        deliver(hub.poll("ns", None, 100, respond));
        assert!(answers.try_recv().is_err());
        set(&mut hub, "k", 3);
        assert_eq!(answers.try_recv().unwrap().unwrap()[0].revision, 3);
    }

    #[test]
    fn a_poll_behind_the_history_gets_the_state_now() {
        let mut hub = Hub::new(2);
        for i in 0..5 {
            set(&mut hub, "k", i);
        }
        let (respond, answers) = channel();
        deliver(hub.poll("ns", Some(1), 100, respond));
        match answers.try_recv().unwrap() {
            Err(WireError::Compacted(compacted)) => {
                assert_eq!(compacted.snapshot.revision, 5);
                assert_eq!(compacted.snapshot.get::<u32>("k").unwrap(), Some(4));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_predicate_and_a_change_waiter() {
        let mut hub = Hub::new(10);
        let (respond, predicate_answers) = channel();
        let predicate: Predicate = Box::new(|peek| peek.len() >= 2);
        deliver(hub.wait("ns", Condition::Predicate(predicate), respond));
        let (respond, change_answers) = channel();
        let condition = Condition::Changed {
            keys: vec!["b".into()],
            after: 0,
        };
        deliver(hub.wait("ns", condition, respond));
        set(&mut hub, "a", 1);
        assert!(predicate_answers.try_recv().is_err());
        assert!(change_answers.try_recv().is_err());
        set(&mut hub, "b", 1);
        assert_eq!(predicate_answers.try_recv().unwrap().unwrap().revision, 2);
        assert_eq!(change_answers.try_recv().unwrap().unwrap().revision, 2);
    }

    fn rare(after: Revision) -> Condition {
        Condition::Changed {
            keys: vec!["rare".into()],
            after,
        }
    }

    #[test]
    fn a_change_checks_each_parked_change_waiter_against_that_change_only() {
        // A full history, and waiters parked on a key that never changes.
        let mut hub = Hub::new(1000);
        for i in 0..1000 {
            set(&mut hub, "busy", i);
        }
        let mut answers = Vec::new();
        for _ in 0..100 {
            let (respond, answer) = channel();
            answers.push(answer);
            deliver(hub.wait("ns", rare(1), respond));
        }
        for i in 0..3 {
            hub.store.examined.set(0);
            set(&mut hub, "busy", i);
            // The new change, once per waiter (not the history each time).
            assert!(
                hub.store.examined.get() <= 100,
                "{} history entries looked at",
                hub.store.examined.get()
            );
        }
        assert!(answers.iter().all(|answer| answer.try_recv().is_err()));
        set(&mut hub, "rare", 1);
        assert!(answers.iter().all(|answer| answer.try_recv().is_ok()));
    }

    /// A wait on a key of `namespace` that is never set, for connection 1.
    fn park_quiet(hub: &mut Hub, namespace: &str) -> mpsc::Receiver<Satisfied> {
        let (respond, answer) = on(1);
        let condition = Condition::Key {
            key: "never".into(),
            test: KeyTest::Present,
        };
        deliver(hub.wait(namespace, condition, respond));
        answer
    }

    #[test]
    fn a_change_looks_only_at_the_waits_of_its_namespace() {
        let mut hub = Hub::new(100);
        let quiet: Vec<_> = (0..1000).map(|_| park_quiet(&mut hub, "quiet")).collect();
        let (respond, poll) = on(1);
        deliver(hub.poll("quiet", None, 10, respond));
        let busy = park_quiet(&mut hub, "ns");
        hub.examined.set(0);
        for i in 0..100 {
            set(&mut hub, "k", i);
        }
        // The one wait of "ns", once per change: the quiet namespace's
        // thousand cost nothing.
        assert!(
            hub.examined.get() <= 200,
            "{} parked waits looked at for 100 changes",
            hub.examined.get()
        );
        assert!(quiet.iter().all(|answer| answer.try_recv().is_err()));
        assert!(busy.try_recv().is_err() && poll.try_recv().is_err());
        assert_eq!(hub.parked(), (1001, 1));
    }

    #[test]
    fn parking_waits_costs_no_scan_of_those_parked_before() {
        let mut hub = Hub::new(100);
        hub.set_limits(Limits {
            max_waits: 100_000,
            ..Limits::default()
        });
        let waits = 5000;
        let answers: Vec<_> = (0..waits)
            .map(|i| park_quiet(&mut hub, if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        // Amortized: a few full looks in all, not one per wait.
        assert!(
            hub.examined.get() <= 4 * waits,
            "{} parked waits looked at to park {waits}",
            hub.examined.get()
        );
        assert_eq!(hub.parked(), (waits, 0));
        drop(answers);
    }

    #[test]
    fn a_poll_answer_is_capped_by_count_and_bytes() {
        let mut hub = Hub::new(10_000);
        for i in 0..5000 {
            set(&mut hub, "k", i);
        }
        let (respond, answers) = channel();
        deliver(hub.poll("ns", Some(0), u32::MAX as usize, respond));
        let changes = answers.try_recv().unwrap().unwrap();
        assert_eq!(changes.len(), 4096);
        assert_eq!(changes[0].revision, 1);
        // Big changes: a reply of at most 8 MiB (one change at least).
        let before = hub.store.revision();
        for _ in 0..20 {
            let before = hub.store.revision();
            hub.store.set("ns", "big", vec![1u8; 1 << 20]);
            deliver(hub.changed("ns", before));
        }
        let (respond, answers) = channel();
        deliver(hub.poll("ns", Some(before), 100, respond));
        let changes = answers.try_recv().unwrap().unwrap();
        let bytes: usize = changes
            .iter()
            .flat_map(|change| &change.events)
            .map(|event| event.value.as_ref().map_or(0, Vec::len))
            .sum();
        assert!(
            !changes.is_empty() && bytes <= 8 << 20,
            "{bytes} bytes in one answer"
        );
    }

    #[test]
    fn given_up_waiters_are_answered_after_the_hub_operation_not_inside() {
        let mut hub = Hub::new(10);
        let (sender, events) = mpsc::channel();
        type Park = fn(&mut Hub, mpsc::Sender<&'static str>) -> Vec<Delivery>;
        let parks: [Park; 2] = [
            |hub, sender| hub.wait("ns", rare(0), Box::new(Gone(sender, None))),
            |hub, sender| hub.poll("ns", None, 10, Box::new(Gone(sender, None))),
        ];
        let nexts: [fn(&mut Hub) -> Vec<Delivery>; 3] = [
            |hub| {
                let (respond, _) = channel();
                hub.wait("ns", rare(0), respond)
            },
            |hub| {
                let (respond, _) = channel();
                hub.poll("ns", None, 10, respond)
            },
            |hub| {
                let before = hub.store.revision();
                hub.store.set("ns", "k", vec![0]);
                hub.changed("ns", before)
            },
        ];
        for park in parks {
            for next in nexts {
                deliver(park(&mut hub, sender.clone()));
                // A wait or a poll looks at all parked waits when due only.
                hub.prune_at = 0;
                let due = next(&mut hub);
                assert!(events.try_recv().is_err(), "answered under the lock");
                deliver(due);
                assert_eq!(events.try_recv(), Ok("abandoned"));
            }
        }
    }

    /// A waiter on connection `.1`.
    struct On<T>(mpsc::Sender<T>, u64);

    impl<T: Send> Respond<T> for On<T> {
        fn respond(self: Box<Self>, answer: T) {
            let _ = self.0.send(answer);
        }
        fn is_waiting(&self) -> bool {
            true
        }
        fn abandon(self: Box<Self>) {}
        fn connection(&self) -> Option<u64> {
            Some(self.1)
        }
    }

    fn on<T: Send + 'static>(connection: u64) -> (Box<dyn Respond<T>>, mpsc::Receiver<T>) {
        let (sender, receiver) = mpsc::channel();
        (Box::new(On(sender, connection)), receiver)
    }

    #[test]
    fn a_connection_parks_at_most_its_cap_of_waits_and_polls() {
        let mut hub = Hub::with_limits(Limits {
            max_waits: 2,
            ..Limits::default()
        });
        let (respond, first) = on(1);
        deliver(hub.wait("ns", rare(0), respond));
        let (respond, poll) = on(1);
        deliver(hub.poll("ns", None, 10, respond));
        // A third wait or poll of connection 1 is refused, typed.
        let (respond, refused) = on(1);
        deliver(hub.wait("ns", rare(0), respond));
        assert_eq!(
            refused.try_recv().unwrap(),
            Err(WireError::TooManyWaits { limit: 2 })
        );
        let (respond, refused) = on(1);
        deliver(hub.poll("ns", None, 10, respond));
        assert!(matches!(
            refused.try_recv().unwrap(),
            Err(WireError::TooManyWaits { limit: 2 })
        ));
        // One answered at once parks nothing, so it is not refused.
        let condition = Condition::Key {
            key: "k".into(),
            test: KeyTest::Missing,
        };
        let (respond, at_once) = on(1);
        deliver(hub.wait("ns", condition, respond));
        assert!(at_once.try_recv().unwrap().is_ok());
        // Another connection has a cap of its own.
        let (respond, other) = on(2);
        deliver(hub.wait("ns", rare(0), respond));
        assert_eq!(hub.parked(), (2, 1));
        // Answered waits make room again.
        set(&mut hub, "rare", 1);
        assert!(first.try_recv().unwrap().is_ok());
        assert!(other.try_recv().unwrap().is_ok());
        assert_eq!(poll.try_recv().unwrap().unwrap().len(), 1);
        let (respond, again) = on(1);
        deliver(hub.wait("ns", rare(1), respond));
        assert!(again.try_recv().is_err());
        assert_eq!(hub.parked(), (1, 0));
    }

    #[test]
    fn a_change_waiter_from_the_past_is_answered_by_a_change_in_the_history() {
        // Registered after the change it waits for: answered at once; one
        // parked before it is answered by it, whatever changed meanwhile.
        let mut hub = Hub::new(100);
        let (respond, parked) = channel();
        deliver(hub.wait("ns", rare(0), respond));
        set(&mut hub, "busy", 1);
        set(&mut hub, "rare", 1);
        set(&mut hub, "busy", 2);
        assert_eq!(parked.try_recv().unwrap().unwrap().revision, 2);
        let (respond, late) = channel();
        deliver(hub.wait("ns", rare(1), respond));
        assert_eq!(late.try_recv().unwrap().unwrap().revision, 3);
        let (respond, after) = channel();
        deliver(hub.wait("ns", rare(2), respond));
        assert!(after.try_recv().is_err());
    }
}
