//! Objects kept alive in a serving process on behalf of its peers.
//!
//! Every object lives in the process-wide [`ObjectTable`] with a count of the
//! connections' references to it. Each connection keeps its own tally in
//! [`ConnectionRefs`]; when a peer releases a handle or disconnects, its
//! references are returned and an object nobody references any more is
//! dropped (in the serving process, on the thread that returned the last
//! reference).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use processional_proto::{ObjectId, RemoteError, RemoteErrorKind};

static LIVE_OBJECTS: AtomicUsize = AtomicUsize::new(0);

/// How many remote objects this process keeps alive for its peers right now.
///
/// Useful in tests: call it inside a slave (`process.invoke(live_objects)`)
/// to check that dropped handles freed their objects.
pub fn live_objects() -> usize {
    LIVE_OBJECTS.load(Ordering::SeqCst)
}

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

    /// Runs `f` on the object, if it is a `T`. A panic in an earlier call does
    /// not make the object unusable.
    pub(crate) fn with<T: 'static, R>(
        &self,
        f: impl FnOnce(&mut T) -> R,
    ) -> Result<R, RemoteError> {
        if self.type_id != TypeId::of::<T>() {
            return Err(RemoteError {
                kind: RemoteErrorKind::WrongObjectType,
                message: format!(
                    "the object is a {}, the call expects a {}",
                    self.type_name,
                    std::any::type_name::<T>()
                ),
                location: None,
                backtrace: None,
            });
        }
        let mut guard: MutexGuard<'_, Box<dyn Any + Send>> = self
            .value
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let value = guard.downcast_mut::<T>().expect("type id checked above");
        Ok(f(value))
    }
}

impl Drop for ObjectSlot {
    fn drop(&mut self) {
        LIVE_OBJECTS.fetch_sub(1, Ordering::SeqCst);
    }
}

struct TableEntry {
    slot: Arc<ObjectSlot>,
    references: u64,
}

/// The objects of this process, by id.
#[derive(Default)]
pub(crate) struct ObjectTable {
    entries: Mutex<HashMap<ObjectId, TableEntry>>,
    names: Mutex<HashMap<String, ObjectId>>,
    /// References in transit between two clients: ticket → object, held on
    /// behalf of the sending connection until the receiver redeems it.
    tickets: Mutex<HashMap<u64, (ObjectId, Weak<ConnectionRefs>)>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for ObjectTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectTable").finish_non_exhaustive()
    }
}

pub(crate) fn unknown_object(id: ObjectId) -> RemoteError {
    RemoteError {
        kind: RemoteErrorKind::UnknownObject,
        message: format!("no object {id} in this process (already released?)"),
        location: None,
        backtrace: None,
    }
}

impl ObjectTable {
    /// The table of this process.
    pub(crate) fn global() -> &'static ObjectTable {
        static TABLE: OnceLock<ObjectTable> = OnceLock::new();
        TABLE.get_or_init(|| ObjectTable {
            next_id: AtomicU64::new(1),
            ..ObjectTable::default()
        })
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<ObjectId, TableEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new object with one reference held by `refs`.
    pub(crate) fn insert(&self, slot: ObjectSlot, refs: &ConnectionRefs) -> ObjectId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.entries().insert(
            id,
            TableEntry {
                slot: Arc::new(slot),
                references: 1,
            },
        );
        refs.add(id);
        id
    }

    /// The object `id`, if it is alive.
    pub(crate) fn get(&self, id: ObjectId) -> Result<Arc<ObjectSlot>, RemoteError> {
        self.entries()
            .get(&id)
            .map(|entry| entry.slot.clone())
            .ok_or_else(|| unknown_object(id))
    }

    /// Adds a reference to `id` on behalf of `refs`.
    pub(crate) fn acquire(&self, id: ObjectId, refs: &ConnectionRefs) -> Result<(), RemoteError> {
        let mut entries = self.entries();
        let entry = entries.get_mut(&id).ok_or_else(|| unknown_object(id))?;
        entry.references += 1;
        refs.add(id);
        Ok(())
    }

    /// Returns `count` references to `id`; drops the object at zero.
    fn release_many(&self, id: ObjectId, count: u64) {
        let removed = {
            let mut entries = self.entries();
            match entries.get_mut(&id) {
                Some(entry) if entry.references > count => {
                    entry.references -= count;
                    None
                }
                Some(_) => entries.remove(&id),
                None => None,
            }
        };
        if removed.is_some() {
            self.names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, object| *object != id);
        }
        // `removed` (and maybe the object) drops here, outside the lock.
    }

    /// Takes one more reference to `id` for `sender` and returns a ticket
    /// another connection can redeem for it.
    pub(crate) fn issue_ticket(
        &self,
        id: ObjectId,
        sender: &Arc<ConnectionRefs>,
    ) -> Result<u64, RemoteError> {
        self.acquire(id, sender)?;
        let ticket = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.tickets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ticket, (id, Arc::downgrade(sender)));
        Ok(ticket)
    }

    /// Moves the reference held by `ticket` to `receiver`; returns the object.
    pub(crate) fn redeem_ticket(
        &self,
        ticket: u64,
        receiver: &ConnectionRefs,
    ) -> Result<ObjectId, RemoteError> {
        let entry = self
            .tickets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ticket);
        let Some((id, sender)) = entry else {
            return Err(RemoteError {
                kind: RemoteErrorKind::UnknownObject,
                message: format!("no handle in transit under ticket {ticket} (already redeemed?)"),
                location: None,
                backtrace: None,
            });
        };
        let Some(sender) = sender.upgrade() else {
            return Err(RemoteError {
                kind: RemoteErrorKind::UnknownObject,
                message: format!(
                    "the process that sent the handle to object {id} disconnected before it arrived"
                ),
                location: None,
                backtrace: None,
            });
        };
        self.acquire(id, receiver)?;
        sender.release(id);
        Ok(id)
    }

    /// Gives `id` a name other peers can look up.
    pub(crate) fn publish(&self, name: String, id: ObjectId) -> Result<(), RemoteError> {
        self.get(id)?;
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, id);
        Ok(())
    }

    /// The object published under `name`.
    pub(crate) fn lookup(&self, name: &str) -> Result<ObjectId, RemoteError> {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied()
            .ok_or_else(|| RemoteError {
                kind: RemoteErrorKind::NotFound,
                message: format!("no object is published under the name {name:?}"),
                location: None,
                backtrace: None,
            })
    }
}

/// The references one connection holds.
#[derive(Debug, Default)]
pub(crate) struct ConnectionRefs {
    counts: Mutex<HashMap<ObjectId, u64>>,
}

impl ConnectionRefs {
    fn add(&self, id: ObjectId) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default() += 1;
    }

    /// The peer dropped one handle to `id`.
    pub(crate) fn release(&self, id: ObjectId) {
        let held = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            match counts.get_mut(&id) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    true
                }
                Some(_) => counts.remove(&id).is_some(),
                None => false,
            }
        };
        if held {
            ObjectTable::global().release_many(id, 1);
        }
    }

    /// The peer is gone: return every reference it held.
    pub(crate) fn release_all(&self) {
        let counts = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()));
        for (id, count) in counts {
            ObjectTable::global().release_many(id, count);
        }
    }
}

impl Drop for ConnectionRefs {
    fn drop(&mut self) {
        self.release_all();
    }
}
