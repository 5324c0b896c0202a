//! Named services: functions a serving process registers under a name, for
//! any client to call with data alone.
//!
//! A `func!` call names code of the caller's build, so both sides must run
//! the same build. A service call names a *service*: the serving process
//! looked its function up when it registered it, so the caller ships no
//! code, and a data-only client of another build (another program, even)
//! that holds the key may call it. The request and reply types are the
//! service's contract: name services with a version
//! (`"myapp.inventory.v1.count"`) and register a new name when they change.
//!
//! Services belong to the process, not to one server: every connection the
//! process serves (its master's, each client of each server it runs) may
//! call every service it registered. A process that runs two servers with
//! different keys therefore offers the same services to the clients of
//! both; run such servers in separate processes if they must not share.

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use processional_proto::FunctionRef;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::entry::{CallEntry, DeferredEntry, StreamEntry};
use crate::func::Func;
use crate::function::Described;
use crate::reply::Later;
use crate::sink::ItemSink;

/// The services of this process, by name.
static SERVICES: RwLock<BTreeMap<String, FunctionRef>> = RwLock::new(BTreeMap::new());

/// [`register_service`] refused a name: this process already has a service
/// by that name (it keeps the first one). It travels, so a registering call
/// shipped to a server can return it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("this process already has a service named {name:?}")]
pub struct ServiceExists {
    /// The name asked for.
    pub name: String,
}

/// Registers `f` in this process as the service `name`: clients call it
/// with [`SlaveProcess::call_service`](crate::SlaveProcess::call_service)
/// and get its value.
///
/// A service runs on the serving thread of the calling connection, queued
/// after that connection's earlier calls, like
/// [`schedule`](crate::SlaveProcess::schedule)d functions: it should answer
/// promptly, and wait (for an event, for another client) through
/// [`register_deferred_service`] instead of blocking.
///
/// ```
/// use processional_process::{func, register_service};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = processional_process::slave()?;
/// // In the serving process, once: register what clients may call.
/// server.invoke(func!(|| {
///     register_service("example.v1.double", func!(|x: u64| x * 2))
/// }))??;
/// // Any client, of any build holding the key, calls it by name.
/// let doubled: u64 = server.call_service("example.v1.double", 21u64).wait()?;
/// assert_eq!(doubled, 42);
/// # Ok(())
/// # }
/// ```
pub fn register_service<F, A, R>(name: &str, _f: Func<F>) -> Result<(), ServiceExists>
where
    F: Fn(A) -> R + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    insert(name, CallEntry::<F, A, R>::function_ref())
}

/// Registers `f` as the service `name`, answered later: `f` takes the
/// call's [`Reply`](crate::Reply) with [`reply_later`](crate::reply_later)
/// and keeps it, holding no thread, until it has the answer.
///
/// ```
/// use processional_process::{Later, Reply, func, register_deferred_service, register_service, reply_later};
/// use std::sync::Mutex;
///
/// /// Callers waiting for the next value, in the serving process.
/// static WAITING: Mutex<Vec<Reply<u64>>> = Mutex::new(Vec::new());
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = processional_process::slave()?;
/// server.invoke(func!(|| -> Result<(), processional_process::ServiceExists> {
///     register_deferred_service("example.v1.next", func!(|(): ()| -> Later<u64> {
///         let (reply, later) = reply_later();
///         WAITING.lock().unwrap().push(reply);
///         later
///     }))?;
///     register_service("example.v1.publish", func!(|value: u64| {
///         for reply in WAITING.lock().unwrap().drain(..) {
///             let _ = reply.send(value);
///         }
///     }))
/// }))??;
/// let next = server.call_service::<_, u64>("example.v1.next", ());
/// server.call_service::<_, ()>("example.v1.publish", 7u64).wait()?;
/// assert_eq!(next.wait()?, 7);
/// # Ok(())
/// # }
/// ```
pub fn register_deferred_service<F, A, R>(name: &str, _f: Func<F>) -> Result<(), ServiceExists>
where
    F: Fn(A) -> Later<R> + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    insert(name, DeferredEntry::<F, A, R>::function_ref())
}

/// Registers `f` as the streaming service `name`: `f` pushes items into its
/// [`ItemSink`] (within the credit its caller grants) and ends the stream
/// with its value. Clients open it with
/// [`SlaveProcess::stream_service`](crate::SlaveProcess::stream_service).
///
/// ```
/// use processional_process::{ItemSink, func, register_stream_service};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = processional_process::slave()?;
/// server.invoke(func!(|| {
///     register_stream_service("example.v1.count", func!(|n: u64, items: ItemSink<u64>| {
///         for i in 0..n {
///             if items.send(i).is_err() {
///                 break; // the caller dropped the stream
///             }
///         }
///     }))
/// }))??;
/// let mut counted = server.stream_service::<_, u64, ()>("example.v1.count", 3u64, 16)?;
/// let items: Vec<u64> = counted.by_ref().collect::<Result<_, _>>()?;
/// assert_eq!(items, [0, 1, 2]);
/// counted.finish()?;
/// # Ok(())
/// # }
/// ```
pub fn register_stream_service<F, A, T, R>(name: &str, _f: Func<F>) -> Result<(), ServiceExists>
where
    F: Fn(A, ItemSink<T>) -> R + Send + Sync + 'static,
    A: DeserializeOwned + 'static,
    T: Serialize + 'static,
    R: Serialize + 'static,
{
    insert(name, StreamEntry::<F, A, T, R>::function_ref())
}

/// Whether this process has a service named `name`.
pub fn has_service(name: &str) -> bool {
    SERVICES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains_key(name)
}

/// How many services each serving thread remembers (a connection's
/// executor calls a few services, over and over).
const CACHED: usize = 4;

thread_local! {
    /// The services this thread looked up last, newest first. A service is
    /// never removed or replaced, so a remembered one stays true.
    static RECENT: std::cell::RefCell<Vec<(Box<str>, FunctionRef)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The function registered as `name`, if any.
pub(crate) fn lookup(name: &str) -> Option<FunctionRef> {
    let cached = RECENT.with(|recent| {
        let recent = recent.borrow();
        recent
            .iter()
            .find(|(known, _)| **known == *name)
            .map(|(_, function)| *function)
    });
    if cached.is_some() {
        return cached;
    }
    let found = SERVICES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
        .copied()?;
    RECENT.with(|recent| {
        let mut recent = recent.borrow_mut();
        recent.truncate(CACHED - 1);
        recent.insert(0, (name.into(), found));
    });
    Some(found)
}

fn insert(name: &str, function: FunctionRef) -> Result<(), ServiceExists> {
    let mut services = SERVICES.write().unwrap_or_else(PoisonError::into_inner);
    if services.contains_key(name) {
        return Err(ServiceExists { name: name.into() });
    }
    services.insert(name.into(), function);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_taken_once() {
        let name = "processional.test.v1.once";
        register_service(name, crate::func!(|x: u32| x + 1)).unwrap();
        assert!(has_service(name));
        let first = lookup(name);
        let again = register_service(name, crate::func!(|x: u32| x + 2));
        assert_eq!(again, Err(ServiceExists { name: name.into() }));
        assert_eq!(lookup(name), first, "the first registration stays");
    }

    #[test]
    fn unknown_names_resolve_to_nothing() {
        assert!(lookup("processional.test.v1.nobody").is_none());
        assert!(!has_service("processional.test.v1.nobody"));
    }
}
