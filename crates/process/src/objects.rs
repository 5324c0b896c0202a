//! Objects kept alive in a serving process on behalf of its peers.
//!
//! **Objects are capabilities.** Each server, and each slave's serving side,
//! has an [`ObjectTable`] of its own: its own ids, names and tickets. A
//! connection reaches the table through its [`ConnectionObjects`], and may
//! use only the objects it holds: those it wrapped or exported, looked up by
//! name, or redeemed by ticket. Naming any other id, whether it belongs to
//! another connection or to nothing, gets the same `UnknownObject` error, so
//! a peer learns nothing about objects it does not hold.
//!
//! Every object counts its references: one per handle a connection holds,
//! one per ticket in transit. When a peer releases a handle or disconnects,
//! its references are returned and an object nobody references any more is
//! dropped (in the serving process, on the thread that returned the last
//! reference, after the table's lock is let go). A name does not keep an
//! object alive; it goes with the object.
//!
//! Everything in a table (objects, holdings, names, tickets) sits behind one
//! lock, so that every operation is one step: e.g. `publish` checks that the
//! caller holds the object and names it without a release slipping between.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use processional_proto::{ObjectId, RemoteError, RemoteErrorKind};

static LIVE_OBJECTS: AtomicUsize = AtomicUsize::new(0);

/// How many remote objects this process keeps alive for its peers right now,
/// over all its servers and serving connections (including objects already
/// released but still used by a running call).
///
/// Useful in tests: call it inside a slave (`process.invoke(live_objects)`)
/// to check that dropped handles freed their objects. For one server of
/// this process, see [`ServerHandle::live_objects`](crate::ServerHandle::live_objects).
///
/// ```
/// use processional_process::{func, live_objects};
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = processional_process::slave()?;
/// let object = process.wrap(func!(|| vec![0u8; 16]))?;
/// assert_eq!(process.invoke(func!(live_objects))?, 1);
/// drop(object);
/// // The release travels in order with the calls: the next call sees it.
/// assert_eq!(process.invoke(func!(live_objects))?, 0);
/// # Ok(())
/// # }
/// ```
pub fn live_objects() -> usize {
    LIVE_OBJECTS.load(Ordering::SeqCst)
}

/// A reference in transit between two connections of the same table: an
/// unguessable random number.
pub(crate) type Ticket = u128;

/// How long a ticket can be redeemed after it was issued. A handle sent to
/// another process is redeemed as soon as the receiver decodes it; a ticket
/// never redeemed (the message was lost, the receiver failed) stops holding
/// its object after this long.
pub(crate) const TICKET_LIFETIME: Duration = Duration::from_secs(60);

/// One object and the lock that serializes calls on it.
pub(crate) struct ObjectSlot {
    type_id: TypeId,
    type_name: &'static str,
    value: Mutex<Box<dyn Any + Send>>,
}

impl std::fmt::Debug for ObjectSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSlot")
            .field("type", &self.type_name)
            .finish_non_exhaustive()
    }
}

impl ObjectSlot {
    pub(crate) fn new<T: Send + 'static>(value: T) -> Self {
        LIVE_OBJECTS.fetch_add(1, Ordering::SeqCst);
        ObjectSlot {
            type_id: TypeId::of::<T>(),
            type_name: std::any::type_name::<T>(),
            value: Mutex::new(Box::new(value)),
        }
    }

    /// Whether the object is a `T` (without waiting for a call on it).
    fn check_type<T: 'static>(&self) -> Result<(), RemoteError> {
        if self.type_id == TypeId::of::<T>() {
            return Ok(());
        }
        Err(RemoteError {
            kind: RemoteErrorKind::WrongObjectType,
            message: format!(
                "the object is a {}, the call expects a {}",
                self.type_name,
                std::any::type_name::<T>()
            ),
            location: None,
            backtrace: None,
        })
    }

    /// Runs `f` on the object, if it is a `T`. A panic in an earlier call does
    /// not make the object unusable.
    pub(crate) fn with<T: 'static, R>(
        &self,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, RemoteError> {
        self.check_type::<T>()?;
        let mut guard: MutexGuard<'_, Box<dyn Any + Send>> = self
            .value
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let value = guard.downcast_mut::<T>().expect("type id checked above");
        Ok(f(value))
    }
}

impl Drop for ObjectSlot {
    /// The object's drop is its owner's code, run by whichever thread lets
    /// the last reference go (a connection's executor after a release or a
    /// call, a reader after a disconnect): a panic in it is logged, never
    /// unwound into that thread, which would take the serving process down.
    fn drop(&mut self) {
        let value = std::mem::replace(
            self.value
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Box::new(()),
        );
        let type_name = self.type_name;
        if let Err(error) = processional_task::catch_panic(move || drop(value)) {
            log::error!("processional: dropping a remote object ({type_name}) panicked: {error}");
        }
        LIVE_OBJECTS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The refusal for an object the connection does not hold: the same whether
/// the object belongs to another connection or does not exist.
pub(crate) fn unknown_object(id: ObjectId) -> RemoteError {
    RemoteError {
        kind: RemoteErrorKind::UnknownObject,
        message: format!("this connection holds no object {id} (never held, or already released)"),
        location: None,
        backtrace: None,
    }
}

fn unknown_ticket() -> RemoteError {
    RemoteError {
        kind: RemoteErrorKind::UnknownObject,
        message: "no handle in transit under this ticket (unknown, expired, already redeemed, \
                  or its sender disconnected)"
            .into(),
        location: None,
        backtrace: None,
    }
}

/// Identifies a connection within its table.
type ConnectionId = u64;

struct Entry {
    slot: Arc<ObjectSlot>,
    /// Handles held by connections plus tickets in transit.
    references: u64,
}

struct PendingTicket {
    object: ObjectId,
    sender: ConnectionId,
    expires: Instant,
}

/// Objects that lost their last reference: dropped after the lock is let go
/// (an object's drop may run any code, even code that uses the table).
type Garbage = Vec<Arc<ObjectSlot>>;

#[derive(Default)]
struct State {
    objects: HashMap<ObjectId, Entry>,
    /// Per connection: the objects it holds and how many handles to each.
    holdings: HashMap<ConnectionId, HashMap<ObjectId, u64>>,
    names: HashMap<String, ObjectId>,
    tickets: HashMap<Ticket, PendingTicket>,
    last_object: ObjectId,
    last_connection: ConnectionId,
}

impl State {
    fn holds(&self, connection: ConnectionId, id: ObjectId) -> bool {
        self.holdings
            .get(&connection)
            .is_some_and(|held| held.contains_key(&id))
    }

    /// The object `id`, if `connection` holds it.
    fn held(&self, connection: ConnectionId, id: ObjectId) -> Result<&Entry, RemoteError> {
        match self.objects.get(&id) {
            Some(entry) if self.holds(connection, id) => Ok(entry),
            _ => Err(unknown_object(id)),
        }
    }

    /// Stores a new object under a fresh id, held by `connection`.
    fn insert(&mut self, connection: ConnectionId, slot: ObjectSlot) -> ObjectId {
        self.last_object += 1;
        let id = self.last_object;
        let entry = Entry {
            slot: Arc::new(slot),
            references: 0,
        };
        self.objects.insert(id, entry);
        self.add_holding(connection, id);
        id
    }

    /// One more reference to the live object `id`, held by `connection`.
    fn add_holding(&mut self, connection: ConnectionId, id: ObjectId) {
        let entry = self
            .objects
            .get_mut(&id)
            .expect("only live objects are held");
        entry.references += 1;
        *self
            .holdings
            .entry(connection)
            .or_default()
            .entry(id)
            .or_default() += 1;
    }

    /// Up to `count` of `connection`'s references to `id` are returned.
    fn drop_holding(
        &mut self,
        connection: ConnectionId,
        id: ObjectId,
        count: u64,
        garbage: &mut Garbage,
    ) {
        let Some(held) = self.holdings.get_mut(&connection) else {
            return;
        };
        let Some(handles) = held.get_mut(&id) else {
            return;
        };
        let returned = count.min(*handles);
        *handles -= returned;
        if *handles == 0 {
            held.remove(&id);
        }
        self.drop_references(id, returned, garbage);
    }

    fn drop_references(&mut self, id: ObjectId, count: u64, garbage: &mut Garbage) {
        let Some(entry) = self.objects.get_mut(&id) else {
            return;
        };
        entry.references -= count.min(entry.references);
        if entry.references == 0 {
            let entry = self.objects.remove(&id).expect("looked up above");
            self.names.retain(|_, object| *object != id);
            garbage.push(entry.slot);
        }
    }

    fn purge_expired_tickets(&mut self, now: Instant, garbage: &mut Garbage) {
        let expired: Vec<Ticket> = self
            .tickets
            .iter()
            .filter(|(_, pending)| pending.expires <= now)
            .map(|(ticket, _)| *ticket)
            .collect();
        for ticket in expired {
            let pending = self.tickets.remove(&ticket).expect("listed above");
            self.drop_references(pending.object, 1, garbage);
        }
    }
}

/// The objects of one server (or one slave's serving side), by id.
pub(crate) struct ObjectTable {
    state: Mutex<State>,
}

impl std::fmt::Debug for ObjectTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectTable")
            .field("objects", &self.len())
            .finish_non_exhaustive()
    }
}

impl ObjectTable {
    /// An empty table.
    pub(crate) fn new() -> Arc<ObjectTable> {
        Arc::new(ObjectTable {
            state: Mutex::new(State::default()),
        })
    }

    /// A new connection's access to this table; it holds nothing yet.
    pub(crate) fn connect(self: &Arc<Self>) -> ConnectionObjects {
        let id = self.locked(None, |state, _| {
            state.last_connection += 1;
            state.last_connection
        });
        ConnectionObjects {
            table: self.clone(),
            id,
        }
    }

    /// How many objects the table keeps (each held by a connection or a
    /// ticket).
    pub(crate) fn len(&self) -> usize {
        self.locked(None, |state, _| state.objects.len())
    }

    /// Runs `f` on the state under the lock, after purging expired tickets
    /// (the clock is read only while tickets are pending; `now` overrides it).
    /// Objects that lost their last reference are dropped once the lock is
    /// let go.
    fn locked<R>(&self, now: Option<Instant>, f: impl FnOnce(&mut State, &mut Garbage) -> R) -> R {
        let mut garbage = Garbage::new();
        let result = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if !state.tickets.is_empty() {
                state.purge_expired_tickets(now.unwrap_or_else(Instant::now), &mut garbage);
            }
            f(&mut state, &mut garbage)
        };
        drop(garbage);
        result
    }
}

/// One connection's access to its table: the objects it holds. Dropping it
/// returns them all.
pub(crate) struct ConnectionObjects {
    table: Arc<ObjectTable>,
    id: ConnectionId,
}

impl std::fmt::Debug for ConnectionObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionObjects")
            .field("connection", &self.id)
            .finish_non_exhaustive()
    }
}

impl ConnectionObjects {
    /// Stores a new object, held by this connection.
    pub(crate) fn insert(&self, slot: ObjectSlot) -> ObjectId {
        self.table
            .locked(None, |state, _| state.insert(self.id, slot))
    }

    /// The object `id`, if this connection holds it.
    pub(crate) fn get(&self, id: ObjectId) -> Result<Arc<ObjectSlot>, RemoteError> {
        self.table.locked(None, |state, _| {
            state.held(self.id, id).map(|e| e.slot.clone())
        })
    }

    /// Names the object `id`, which this connection must hold, so that other
    /// connections of the table can look it up.
    pub(crate) fn publish(&self, name: String, id: ObjectId) -> Result<(), RemoteError> {
        self.table.locked(None, |state, _| {
            state.held(self.id, id)?;
            state.names.insert(name, id);
            Ok(())
        })
    }

    /// Stores `slot` as a new object held by this connection, named `name`.
    pub(crate) fn insert_published(&self, name: String, slot: ObjectSlot) -> ObjectId {
        self.table.locked(None, |state, _| {
            let id = state.insert(self.id, slot);
            state.names.insert(name, id);
            id
        })
    }

    /// Takes a reference to the `T` published under `name` for this
    /// connection.
    pub(crate) fn lookup<T: 'static>(&self, name: &str) -> Result<ObjectId, RemoteError> {
        self.table.locked(None, |state, _| {
            let not_found = || RemoteError {
                kind: RemoteErrorKind::NotFound,
                message: format!("no object is published under the name {name:?}"),
                location: None,
                backtrace: None,
            };
            // Names go with their objects; a name without one is no name.
            let id = state.names.get(name).copied().ok_or_else(not_found)?;
            let entry = state.objects.get(&id).ok_or_else(not_found)?;
            entry.slot.check_type::<T>()?;
            state.add_holding(self.id, id);
            Ok(id)
        })
    }

    /// Takes a reference to `id` (which this connection must hold) for a
    /// handle in transit to another connection of the table; returns the
    /// ticket to redeem. The ticket is void after [`TICKET_LIFETIME`], or
    /// once this connection is gone.
    pub(crate) fn issue_ticket(&self, id: ObjectId) -> Result<Ticket, RemoteError> {
        self.issue_ticket_at(id, Instant::now())
    }

    fn issue_ticket_at(&self, id: ObjectId, now: Instant) -> Result<Ticket, RemoteError> {
        let ticket = random_ticket()?;
        self.table.locked(Some(now), |state, _| {
            state.held(self.id, id)?;
            state.objects.get_mut(&id).expect("held above").references += 1;
            state.tickets.insert(
                ticket,
                PendingTicket {
                    object: id,
                    sender: self.id,
                    expires: now + TICKET_LIFETIME,
                },
            );
            Ok(ticket)
        })
    }

    /// Redeems `ticket`: this connection now holds the reference it carried;
    /// returns the object.
    pub(crate) fn redeem_ticket(&self, ticket: Ticket) -> Result<ObjectId, RemoteError> {
        self.redeem_ticket_at(ticket, Instant::now())
    }

    fn redeem_ticket_at(&self, ticket: Ticket, now: Instant) -> Result<ObjectId, RemoteError> {
        self.table.locked(Some(now), |state, garbage| {
            let pending = state.tickets.remove(&ticket).ok_or_else(unknown_ticket)?;
            state.add_holding(self.id, pending.object);
            state.drop_references(pending.object, 1, garbage);
            Ok(pending.object)
        })
    }

    /// How many handles the peer holds, to all objects together.
    pub(crate) fn held(&self) -> u64 {
        self.table.locked(None, |state, _| {
            state
                .holdings
                .get(&self.id)
                .map_or(0, |held| held.values().sum())
        })
    }

    /// The peer dropped one handle to `id` (nothing if it holds none).
    pub(crate) fn release(&self, id: ObjectId) {
        self.table.locked(None, |state, garbage| {
            state.drop_holding(self.id, id, 1, garbage)
        });
    }

    /// The peer is gone: return every reference it held, and void its
    /// tickets.
    pub(crate) fn release_all(&self) {
        self.table.locked(None, |state, garbage| {
            let held = state.holdings.remove(&self.id).unwrap_or_default();
            for (id, count) in held {
                state.drop_references(id, count, garbage);
            }
            let sent: Vec<Ticket> = state
                .tickets
                .iter()
                .filter(|(_, pending)| pending.sender == self.id)
                .map(|(ticket, _)| *ticket)
                .collect();
            for ticket in sent {
                let pending = state.tickets.remove(&ticket).expect("listed above");
                state.drop_references(pending.object, 1, garbage);
            }
        });
    }
}

impl Drop for ConnectionObjects {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// A fresh random ticket from the kernel's CSPRNG (the source of the
/// transport's keys).
fn random_ticket() -> Result<Ticket, RemoteError> {
    let mut bytes = [0u8; 16];
    processional_transport::random_bytes(&mut bytes).map_err(|error| RemoteError {
        kind: RemoteErrorKind::Other,
        message: format!("cannot draw a random ticket: {error}"),
        location: None,
        backtrace: None,
    })?;
    Ok(Ticket::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object whose liveness the test can see: the probe's strong count
    /// drops back to 1 when the table frees the object.
    fn tracked() -> (ObjectSlot, Arc<()>) {
        let probe = Arc::new(());
        (ObjectSlot::new(probe.clone()), probe)
    }

    fn freed(probe: &Arc<()>) -> bool {
        Arc::strong_count(probe) == 1
    }

    fn kind<T: std::fmt::Debug>(result: Result<T, RemoteError>) -> RemoteErrorKind {
        result.expect_err("refused").kind
    }

    #[test]
    fn references_count_handles_per_connection() {
        let table = ObjectTable::new();
        let (a, b) = (table.connect(), table.connect());
        let (slot, probe) = tracked();
        let id = a.insert(slot);
        a.publish("thing".into(), id).unwrap();
        assert_eq!(b.lookup::<Arc<()>>("thing").unwrap(), id);
        assert_eq!(b.lookup::<Arc<()>>("thing").unwrap(), id);
        assert_eq!(table.len(), 1);

        a.release(id);
        // A holds nothing now; a second release of A's changes nothing.
        a.release(id);
        assert_eq!(kind(a.get(id)), RemoteErrorKind::UnknownObject);
        b.release(id);
        assert!(b.get(id).is_ok(), "b still holds one handle");
        assert!(!freed(&probe));
        b.release(id);
        assert!(freed(&probe));
        assert_eq!(table.len(), 0);
        // The name went with the object.
        assert_eq!(
            kind(a.lookup::<Arc<()>>("thing")),
            RemoteErrorKind::NotFound
        );
    }

    #[test]
    fn held_counts_a_connections_handles_to_all_objects() {
        let table = ObjectTable::new();
        let (a, b) = (table.connect(), table.connect());
        let (first, _) = tracked();
        let (second, _) = tracked();
        let first = a.insert(first);
        let second = a.insert(second);
        a.publish("first".into(), first).unwrap();
        b.lookup::<Arc<()>>("first").unwrap();
        b.lookup::<Arc<()>>("first").unwrap();
        assert_eq!((a.held(), b.held()), (2, 2));
        a.release(second);
        b.release(first);
        assert_eq!((a.held(), b.held()), (1, 1));
    }

    #[test]
    fn a_departed_connection_returns_everything() {
        let table = ObjectTable::new();
        let a = table.connect();
        let (slot, probe) = tracked();
        let id = a.insert(slot);
        let b = table.connect();
        a.publish("thing".into(), id).unwrap();
        b.lookup::<Arc<()>>("thing").unwrap();
        drop(a);
        assert!(!freed(&probe), "b still holds it");
        b.release_all();
        assert!(freed(&probe));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn lookup_checks_the_type() {
        let table = ObjectTable::new();
        let a = table.connect();
        a.insert_published("number".into(), ObjectSlot::new(5u32));
        assert_eq!(
            kind(a.lookup::<String>("number")),
            RemoteErrorKind::WrongObjectType
        );
        assert_eq!(kind(a.lookup::<u32>("nothing")), RemoteErrorKind::NotFound);
    }

    #[test]
    fn a_connection_uses_only_what_it_holds() {
        let table = ObjectTable::new();
        let (a, b) = (table.connect(), table.connect());
        let id = a.insert(ObjectSlot::new(vec![42u8]));
        let foreign = b.get(id).expect_err("not b's");
        let missing = b.get(id + 1000).expect_err("no such object");
        assert_eq!(foreign.kind, RemoteErrorKind::UnknownObject);
        assert_eq!(missing.kind, foreign.kind);
        assert_eq!(
            missing.message.replace(&(id + 1000).to_string(), "N"),
            foreign.message.replace(&id.to_string(), "N"),
            "no hint that the object exists"
        );
        assert_eq!(
            kind(b.publish("stolen".into(), id)),
            RemoteErrorKind::UnknownObject
        );
        assert_eq!(kind(b.issue_ticket(id)), RemoteErrorKind::UnknownObject);
        // B releasing A's object returns nothing of A's.
        b.release(id);
        b.release_all();
        assert_eq!(a.get(id).unwrap().with(|v: &mut Vec<u8>| v[0]).unwrap(), 42);
    }

    #[test]
    fn tables_do_not_share_ids_or_names() {
        let (first, second) = (ObjectTable::new(), ObjectTable::new());
        let (a, b) = (first.connect(), second.connect());
        let id = a.insert_published("thing".into(), ObjectSlot::new(1u8));
        assert_eq!(kind(b.lookup::<u8>("thing")), RemoteErrorKind::NotFound);
        assert_eq!(
            b.insert(ObjectSlot::new(2u8)),
            id,
            "each table counts from 1"
        );
        assert_eq!(b.get(id).unwrap().with(|v: &mut u8| *v).unwrap(), 2);
        assert_eq!((first.len(), second.len()), (1, 1));
    }

    #[test]
    fn a_ticket_moves_one_reference() {
        let table = ObjectTable::new();
        let (sender, receiver) = (table.connect(), table.connect());
        let (slot, probe) = tracked();
        let id = sender.insert(slot);
        let ticket = sender.issue_ticket(id).unwrap();
        // The sender drops its handle right after sending: the ticket holds.
        sender.release(id);
        assert!(!freed(&probe));
        assert_eq!(receiver.redeem_ticket(ticket).unwrap(), id);
        assert!(receiver.get(id).is_ok());
        assert_eq!(
            kind(receiver.redeem_ticket(ticket)),
            RemoteErrorKind::UnknownObject
        );
        receiver.release(id);
        assert!(freed(&probe));
    }

    #[test]
    fn tickets_are_random_and_a_wrong_one_gets_nothing() {
        let table = ObjectTable::new();
        let (sender, receiver) = (table.connect(), table.connect());
        let id = sender.insert(ObjectSlot::new(1u8));
        let first = sender.issue_ticket(id).unwrap();
        let second = sender.issue_ticket(id).unwrap();
        assert_ne!(first, second);
        // Not a counter: the high half is used too.
        assert!(first >> 64 != 0 || second >> 64 != 0);
        for wrong in [
            first ^ 1,
            first.wrapping_add(1),
            second.wrapping_sub(1),
            0,
            1,
        ] {
            if wrong != first && wrong != second {
                assert_eq!(
                    kind(receiver.redeem_ticket(wrong)),
                    RemoteErrorKind::UnknownObject
                );
            }
        }
        assert_eq!(kind(receiver.get(id)), RemoteErrorKind::UnknownObject);
        assert_eq!(receiver.redeem_ticket(second).unwrap(), id);
    }

    #[test]
    fn tickets_expire_and_are_purged() {
        let table = ObjectTable::new();
        let (sender, receiver) = (table.connect(), table.connect());
        let (slot, probe) = tracked();
        let id = sender.insert(slot);
        let issued = Instant::now();
        let stale = sender.issue_ticket_at(id, issued).unwrap();
        let fresh = sender.issue_ticket_at(id, issued).unwrap();
        sender.release(id);
        let just_before = issued + TICKET_LIFETIME - Duration::from_millis(1);
        assert_eq!(receiver.redeem_ticket_at(fresh, just_before).unwrap(), id);
        receiver.release(id);
        assert!(!freed(&probe), "the stale ticket still holds the object");
        // Any use of the table after the expiry purges the stale ticket,
        // which frees the object nobody else holds.
        let later = issued + TICKET_LIFETIME;
        assert_eq!(
            kind(receiver.redeem_ticket_at(stale, later)),
            RemoteErrorKind::UnknownObject
        );
        assert!(freed(&probe));
        assert_eq!(table.len(), 0);
        assert!(table.state.lock().unwrap().tickets.is_empty());
    }

    #[test]
    fn a_senders_departure_voids_its_tickets() {
        let table = ObjectTable::new();
        let (sender, receiver) = (table.connect(), table.connect());
        let (slot, probe) = tracked();
        let id = sender.insert(slot);
        let ticket = sender.issue_ticket(id).unwrap();
        drop(sender);
        assert!(freed(&probe));
        assert_eq!(
            kind(receiver.redeem_ticket(ticket)),
            RemoteErrorKind::UnknownObject
        );
    }

    #[test]
    fn publish_racing_the_last_release_leaves_no_dangling_name() {
        let table = ObjectTable::new();
        let owner = table.connect();
        let other = table.connect();
        for round in 0..2000 {
            let name = format!("object-{round}");
            let id = owner.insert(ObjectSlot::new(round));
            let barrier = std::sync::Barrier::new(2);
            let published = std::thread::scope(|scope| {
                let publisher = scope.spawn(|| {
                    barrier.wait();
                    owner.publish(name.clone(), id)
                });
                barrier.wait();
                owner.release(id);
                publisher.join().unwrap()
            });
            // Either the publish came first (and the name went with the
            // object) or it was refused: never a name for a dead object.
            match published {
                Ok(()) => {}
                Err(error) => assert_eq!(error.kind, RemoteErrorKind::UnknownObject),
            }
            assert_eq!(
                kind(other.lookup::<i32>(&name)),
                RemoteErrorKind::NotFound,
                "round {round}: a name outlived its object"
            );
            assert!(table.state.lock().unwrap().names.is_empty());
        }
    }
}
