//! The serving side: the process-wide [`Hub`] of a state server and the
//! functions its clients call. Data operations answer at once; waits and
//! watch polls keep a deferred reply in the hub (no thread) and are
//! answered by the change that satisfies them.

use std::fmt::Display;
use std::sync::{Mutex, MutexGuard};

use processional_process::{
    Later, Reply, func, has_service, register_deferred_service, register_service, reply_later,
};
use serde::Serialize;

use crate::error::{Aborted, WireError};
use crate::hub::{Condition, Delivery, Hub, Limits, Peek, Respond};
use crate::store::{Revision, View};
use crate::wire::{Poll, PollAnswer, Request, Response, Wait, WaitAnswer};

/// The service answering [`Request`]s (data operations).
pub(crate) const REQUEST: &str = "processional.state.v1.request";
/// The deferred service answering [`Wait`]s.
pub(crate) const WAIT: &str = "processional.state.v1.wait";
/// The deferred service answering watchers' [`Poll`]s.
pub(crate) const POLL: &str = "processional.state.v1.poll";

/// Registers the data services in this process (a state server), unless
/// it has them already: clients of any build may then call them.
pub(crate) fn register() -> bool {
    if has_service(REQUEST) {
        return false;
    }
    // Registered in order by one caller (the context that started the
    // server), so none exists yet.
    register_service(REQUEST, func!(handle)).is_ok()
        && register_deferred_service(WAIT, func!(wait)).is_ok()
        && register_deferred_service(POLL, func!(poll)).is_ok()
}

/// The hub of this process, made on first use.
static HUB: Mutex<Option<Hub>> = Mutex::new(None);

struct Locked(MutexGuard<'static, Option<Hub>>);

impl Locked {
    fn hub(&mut self) -> &mut Hub {
        self.0
            .get_or_insert_with(|| Hub::with_limits(Limits::default()))
    }
}

/// The hub, locked (a panic of an atomic update left it consistent: the
/// update was rolled back before the panic went on).
fn lock() -> Locked {
    Locked(HUB.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

fn deliver(due: Vec<Delivery>) {
    for delivery in due {
        delivery.deliver();
    }
}

/// Runs `f` on the hub as a change of `namespace`, then delivers the
/// answers it made due, outside the lock.
fn change<R>(namespace: &str, f: impl FnOnce(&mut Hub) -> R) -> R {
    let (value, due) = {
        let mut locked = lock();
        let hub = locked.hub();
        let before = hub.store.revision();
        let value = f(hub);
        let due = hub.changed(namespace, before);
        (value, due)
    };
    deliver(due);
    value
}

/// Appends one encoded element to the encoded `Vec` in `bytes` (postcard:
/// a varint length, then the elements).
fn append_element(bytes: Option<&[u8]>, element: &[u8]) -> Result<Vec<u8>, String> {
    let (len, rest) = match bytes {
        None => (0u64, &[][..]),
        Some(bytes) => {
            let mut len = 0u64;
            let mut shift = 0;
            let mut used = 0;
            loop {
                let Some(&byte) = bytes.get(used) else {
                    return Err("not a sequence".into());
                };
                used += 1;
                // The tenth byte may hold one bit only.
                if shift == 63 && byte & 0x7e != 0 {
                    return Err("not a sequence".into());
                }
                len |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
                shift += 7;
                if shift > 63 {
                    return Err("not a sequence".into());
                }
            }
            (len, &bytes[used..])
        }
    };
    let mut out = Vec::with_capacity(rest.len() + element.len() + 10);
    // A length that cannot grow is no sequence this server made.
    let mut n = len.checked_add(1).ok_or("not a sequence")?;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(element);
    Ok(out)
}

/// Answers one data operation.
pub(crate) fn handle(request: Request) -> Response {
    match request {
        Request::Get(ns, key) => Response::Entry(lock().hub().store.entry(&ns, &key).cloned()),
        Request::Contains(ns, key) => Response::Bool(lock().hub().store.entry(&ns, &key).is_some()),
        Request::Len(ns) => Response::Len(lock().hub().store.len(&ns) as u64),
        Request::Snapshot(ns) => Response::Snapshot(lock().hub().store.snapshot(&ns)),
        Request::Revision => Response::Revision(lock().hub().store.revision()),
        Request::Namespaces => Response::Namespaces(lock().hub().store.namespaces()),
        Request::Set(ns, key, value) => {
            Response::Revision(change(&ns, |hub| hub.store.set(&ns, &key, value)))
        }
        Request::Remove(ns, key) => {
            let (old, revision) = change(&ns, |hub| hub.store.remove(&ns, &key));
            Response::Removed(old, revision)
        }
        Request::Clear(ns) => Response::Revision(change(&ns, |hub| hub.store.clear(&ns))),
        Request::Update(ns, items) => {
            let items = items.into_iter().map(|(k, v)| (k, v.into_vec())).collect();
            Response::Revision(change(&ns, |hub| hub.store.update(&ns, items)))
        }
        Request::SetDefault(ns, key, value) => {
            let (value, revision) = change(&ns, |hub| hub.store.setdefault(&ns, &key, value));
            Response::Value(value, revision)
        }
        Request::PopItem(ns) => {
            let (item, revision) = change(&ns, |hub| hub.store.popitem(&ns));
            Response::Item(item, revision)
        }
        Request::Txn(ns, txn) => Response::Txn(change(&ns, |hub| hub.store.txn(&ns, &txn))),
        Request::Increment(ns, key, by) => {
            let outcome = change(&ns, |hub| hub.store.increment(&ns, &key, by));
            match outcome {
                Ok((value, revision)) => Response::Int(value, revision),
                Err(error) => Response::Error(error.into()),
            }
        }
        Request::Append(ns, key, element) => {
            let outcome = change(&ns, |hub| {
                hub.store.atomic(&ns, |view| {
                    let old = crate::read::Read::raw(view, &key).map(|e| e.value.clone());
                    let new = append_element(old.as_deref(), &element).map_err(|message| {
                        crate::error::ValueError {
                            key: key.clone(),
                            type_name: "Vec<_>".into(),
                            direction: crate::error::Direction::Decode,
                            message,
                        }
                    })?;
                    view.set_raw(&key, new);
                    Ok::<_, crate::error::ValueError>(())
                })
            });
            match outcome {
                Ok(((), revision)) => Response::Revision(revision),
                Err(error) => Response::Error(error.into()),
            }
        }
    }
}

/// Sets the server's limits, in place (parked waiters stay). Shipped code
/// (`func!`), so only a client of this build can call it, not a data-only
/// one: the limits belong to whoever starts the server.
pub(crate) fn configure(limits: Limits) {
    lock().hub().set_limits(limits);
}

/// A deferred reply as a hub waiter.
struct Deferred<T>(Reply<T>);

impl<T: Serialize + Send + 'static> Respond<Result<T, WireError>>
    for Deferred<Result<T, WireError>>
{
    fn respond(self: Box<Self>, answer: Result<T, WireError>) {
        // The caller left: nothing to do.
        let _ = self.0.send(answer);
    }

    fn is_waiting(&self) -> bool {
        self.0.is_listening() && !self.0.is_cancelled()
    }

    fn abandon(self: Box<Self>) {
        let _ = self.0.send(Err(WireError::Cancelled));
    }

    fn connection(&self) -> Option<u64> {
        self.0.connection()
    }
}

/// Waits for a data-only condition.
pub(crate) fn wait((namespace, wait): (String, Wait)) -> Later<WaitAnswer> {
    let (reply, later) = reply_later::<WaitAnswer>();
    let condition = match wait {
        Wait::Changed(keys, after) => {
            let after = after.unwrap_or_else(|| lock().hub().store.revision());
            Condition::Changed { keys, after }
        }
        Wait::Key(key, test) => Condition::Key { key, test },
    };
    let due = lock()
        .hub()
        .wait(&namespace, condition, Box::new(Deferred(reply)));
    deliver(due);
    later
}

/// Waits for a predicate over the namespace (shipped by a client of this
/// build).
pub(crate) fn wait_predicate<F>(namespace: String, predicate: F) -> Later<WaitAnswer>
where
    F: Fn(&Peek<'_>) -> bool + Send + 'static,
{
    let (reply, later) = reply_later::<WaitAnswer>();
    let condition = Condition::Predicate(Box::new(predicate));
    let due = lock()
        .hub()
        .wait(&namespace, condition, Box::new(Deferred(reply)));
    deliver(due);
    later
}

/// A watcher's poll: the changes after its revision, now or at the next
/// change.
pub(crate) fn poll(poll: Poll) -> Later<PollAnswer> {
    let (reply, later) = reply_later::<PollAnswer>();
    let due = lock().hub().poll(
        &poll.namespace,
        poll.after,
        poll.max as usize,
        Box::new(Deferred(reply)),
    );
    deliver(due);
    later
}

/// Applies `f` to the namespace as one change, rolled back if it fails or
/// panics.
pub(crate) fn atomic<A, R, E, F>(
    namespace: String,
    args: A,
    f: F,
) -> Result<(R, Revision), WireError>
where
    F: Fn(&mut View<'_>, A) -> Result<R, E>,
    E: Display,
{
    change(&namespace, |hub| {
        hub.store
            .atomic(&namespace, |view| f(view, args))
            .map_err(|error| {
                WireError::Aborted(Aborted {
                    message: error.to_string(),
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn appending_to_a_length_that_cannot_grow_is_refused() {
        // A value a data-only client may have set: the varint of u64::MAX.
        let most = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(append_element(Some(&most), &[7]).is_err());
        // Bits past 64 are not dropped silently.
        let too_long = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(append_element(Some(&too_long), &[7]).is_err());
    }

    #[test]
    fn appending_extends_the_encoded_vec() {
        let mut bytes: Option<Vec<u8>> = None;
        for i in 0..200u32 {
            let element = codec::encode("k", &i).unwrap();
            bytes = Some(append_element(bytes.as_deref(), &element).unwrap());
        }
        let all: Vec<u32> = codec::decode("k", bytes.as_deref().unwrap()).unwrap();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
    }
}
