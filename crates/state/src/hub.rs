//! The store with the waiters on it: what a state server keeps. Still pure:
//! a waiter is anything that can be answered once ([`Respond`]); the
//! server's are deferred replies, the tests' are channels.
//!
//! Every operation returns the answers it made due (a change satisfied a
//! waiter), to be delivered after the hub's lock is released, so a slow
//! client never holds the store.

use std::collections::BTreeMap;

use crate::error::WireError;
use crate::read::Read;
use crate::store::{Change, Entry, Revision, Snapshot, Store};

/// Something waiting for one answer (a deferred reply).
pub(crate) trait Respond<T>: Send {
    /// Answers; gone waiters drop the answer.
    fn respond(self: Box<Self>, answer: T);
    /// Whether the answer would still reach someone.
    fn is_waiting(&self) -> bool;
    /// Answers a waiter nobody waits for any more (so that its caller's
    /// runtime, if it still listens, sees a value, not a failure).
    fn abandon(self: Box<Self>);
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
    namespace: String,
    condition: Condition,
    respond: Box<dyn Respond<Satisfied>>,
}

struct Poll {
    namespace: String,
    after: Revision,
    max: usize,
    respond: Box<dyn Respond<Changes>>,
}

/// An answer made due, to deliver once the hub is unlocked.
pub(crate) struct Delivery(Box<dyn FnOnce() + Send>);

impl Delivery {
    pub(crate) fn deliver(self) {
        (self.0)()
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Delivery(..)")
    }
}

/// The store and everyone waiting on it.
pub(crate) struct Hub {
    pub(crate) store: Store,
    waiters: Vec<Waiter>,
    polls: Vec<Poll>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("revision", &self.store.revision())
            .field("waiters", &self.waiters.len())
            .field("polls", &self.polls.len())
            .finish()
    }
}

impl Hub {
    pub(crate) fn new(history: usize) -> Hub {
        Hub {
            store: Store::new(history),
            waiters: Vec::new(),
            polls: Vec::new(),
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
        self.prune();
        match Self::check(&self.store, namespace, &condition) {
            Ok(true) => {
                let snapshot = self.store.snapshot(namespace);
                vec![Delivery(Box::new(move || respond.respond(Ok(snapshot))))]
            }
            Ok(false) => {
                self.waiters.push(Waiter {
                    namespace: namespace.to_owned(),
                    condition,
                    respond,
                });
                Vec::new()
            }
            Err(error) => vec![Delivery(Box::new(move || respond.respond(Err(error))))],
        }
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
        self.prune();
        let after = after.unwrap_or(self.store.revision());
        match self.store.changes_after(namespace, after, max.max(1)) {
            Ok(changes) if changes.is_empty() => {
                self.polls.push(Poll {
                    namespace: namespace.to_owned(),
                    after,
                    max: max.max(1),
                    respond,
                });
                Vec::new()
            }
            Ok(changes) => vec![Delivery(Box::new(move || respond.respond(Ok(changes))))],
            Err(compacted) => vec![Delivery(Box::new(move || {
                respond.respond(Err(WireError::Compacted(Box::new(compacted))))
            }))],
        }
    }

    /// Forgets waiters nobody waits for any more (their caller timed out,
    /// cancelled or left).
    fn prune(&mut self) {
        let stale = self.waiters.iter().any(|w| !w.respond.is_waiting())
            || self.polls.iter().any(|p| !p.respond.is_waiting());
        if !stale {
            return;
        }
        let (waiting, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|waiter| waiter.respond.is_waiting());
        self.waiters = waiting;
        gone.into_iter().for_each(|waiter| waiter.respond.abandon());
        let (waiting, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.polls)
            .into_iter()
            .partition(|poll| poll.respond.is_waiting());
        self.polls = waiting;
        gone.into_iter().for_each(|poll| poll.respond.abandon());
    }

    /// After a change of `namespace` (if the revision moved past `before`):
    /// the answers now due.
    pub(crate) fn changed(&mut self, namespace: &str, before: Revision) -> Vec<Delivery> {
        if self.store.revision() == before || (self.waiters.is_empty() && self.polls.is_empty()) {
            return Vec::new();
        }
        self.prune();
        let mut due = Vec::new();
        let store = &self.store;
        let mut kept = Vec::with_capacity(self.waiters.len());
        for waiter in self.waiters.drain(..) {
            if waiter.namespace != namespace {
                kept.push(waiter);
                continue;
            }
            match Self::check(store, namespace, &waiter.condition) {
                Ok(false) => kept.push(waiter),
                outcome => {
                    let answer = outcome.map(|_| store.snapshot(namespace));
                    let respond = waiter.respond;
                    due.push(Delivery(Box::new(move || respond.respond(answer))));
                }
            }
        }
        self.waiters = kept;
        let mut kept = Vec::with_capacity(self.polls.len());
        for poll in self.polls.drain(..) {
            if poll.namespace != namespace {
                kept.push(poll);
                continue;
            }
            let answer = store
                .changes_after(namespace, poll.after, poll.max)
                .map_err(|c| WireError::Compacted(Box::new(c)));
            match answer {
                Ok(changes) if changes.is_empty() => kept.push(poll),
                answer => {
                    let respond = poll.respond;
                    due.push(Delivery(Box::new(move || respond.respond(answer))));
                }
            }
        }
        self.polls = kept;
        due
    }

    /// How many waiters and polls are parked (for tests).
    #[cfg(test)]
    pub(crate) fn parked(&self) -> (usize, usize) {
        (self.waiters.len(), self.polls.len())
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

    /// A waiter whose caller left: it must be answered once, by abandon.
    struct Gone(mpsc::Sender<&'static str>);

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
    }

    #[test]
    fn waiters_nobody_waits_for_are_abandoned_not_kept() {
        let mut hub = Hub::new(10);
        let (sender, events) = mpsc::channel();
        let condition = Condition::Key {
            key: "k".into(),
            test: KeyTest::Present,
        };
        deliver(hub.wait("ns", condition, Box::new(Gone(sender.clone()))));
        assert_eq!(hub.parked(), (1, 0));
        // Any later registration or change forgets it.
        deliver(hub.poll("ns", None, 10, Box::new(Gone(sender))));
        assert_eq!(hub.parked(), (0, 1));
        set(&mut hub, "k", 1);
        assert_eq!(hub.parked(), (0, 0));
        let got: Vec<_> = events.try_iter().collect();
        assert_eq!(got, ["abandoned", "abandoned"]);
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
}
