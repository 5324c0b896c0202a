//! [`State`]: a handle to one namespace of a state server, with the dict
//! API, transactions, atomic updates and watchers.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use processional_process::{ClientBuilder, Func, SlaveProcess, Task, func};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec;
use crate::error::{StateError, WireError};
use crate::hub::{KeyTest, Peek};
use crate::read::Read;
use crate::server;
use crate::store::{Change, Entry, Revision, Snapshot, View};
use crate::txn::{Txn, TxnOutcome};
use crate::wire::{Poll, PollAnswer, Request, Response, Wait, WaitAnswer};

/// The namespace a new handle uses.
pub const DEFAULT_NAMESPACE: &str = "default";

/// How many changes one watcher poll brings at most.
const POLL_BATCH: u32 = 4096;

/// A connection to a state server, shared by the handles of this process.
pub(crate) struct Link {
    pub(crate) address: String,
    pub(crate) process: SlaveProcess,
    /// Watchers' next polls waiting to go with the next request on this
    /// link (see [`NextPoll`]); `due` says whether there are any.
    polls: Mutex<Vec<Weak<NextPoll>>>,
    due: AtomicBool,
}

impl Link {
    pub(crate) fn new(address: String, process: SlaveProcess) -> Link {
        Link {
            address,
            process,
            polls: Mutex::new(Vec::new()),
            due: AtomicBool::new(false),
        }
    }

    /// Sends the watchers' polls that wait for a request: before it, so
    /// that the server takes them first (one connection's calls run in
    /// order).
    fn flush(&self) {
        if !self.due.swap(false, Ordering::AcqRel) {
            return;
        }
        let polls = std::mem::take(&mut *self.polls.lock().unwrap_or_else(|p| p.into_inner()));
        for next in polls.iter().filter_map(Weak::upgrade) {
            next.send(self);
        }
    }

    fn defer(&self, next: &Arc<NextPoll>) {
        let next = Arc::downgrade(next);
        let mut polls = self.polls.lock().unwrap_or_else(|p| p.into_inner());
        // A watcher that sends its polls itself (no other request on the
        // link flushes them) defers again and again: keep it once, and
        // forget dropped watchers, so that the list stays one per watcher.
        polls.retain(|known| known.strong_count() > 0 && !known.ptr_eq(&next));
        polls.push(next);
        self.due.store(true, Ordering::Release);
    }
}

/// A buffered watcher's next poll once it yielded its last change: due
/// (not sent yet, so that no request stands between a change and the
/// code that waited for it), then sent with the next request of any
/// handle on the link, or at the watcher's next call.
struct NextPoll {
    namespace: String,
    state: Mutex<Next>,
}

enum Next {
    Idle,
    Due(Revision),
    Sent(Task<PollAnswer>),
}

impl NextPoll {
    fn lock(&self) -> std::sync::MutexGuard<'_, Next> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the poll if it is due.
    fn send(&self, link: &Link) {
        let mut state = self.lock();
        if let Next::Due(after) = *state {
            *state = Next::Sent(send_poll(link, &self.namespace, Some(after)));
        }
    }

    /// The poll, sent now if it was only due; `None` if there is none.
    fn take(&self, link: &Link) -> Option<Task<PollAnswer>> {
        let mut state = self.lock();
        match std::mem::replace(&mut *state, Next::Idle) {
            Next::Idle => None,
            Next::Due(after) => Some(send_poll(link, &self.namespace, Some(after))),
            Next::Sent(task) => Some(task),
        }
    }
}

fn send_poll(link: &Link, namespace: &str, after: Option<Revision>) -> Task<PollAnswer> {
    let poll = Poll {
        namespace: namespace.to_owned(),
        after,
        max: POLL_BATCH,
    };
    link.process.call_service(server::POLL, poll)
}

/// Where this process keeps its link to one address (empty until made, or
/// once every handle on it is gone).
type LinkSlot = Arc<Mutex<Weak<Link>>>;

/// The links of this process by address, so that handles that arrive as
/// arguments share one connection. Each address has a slot of its own,
/// locked while its link is made: a slow or silent address holds up only
/// those linking to it, and two of them never make two connections.
static LINKS: Mutex<Option<HashMap<String, LinkSlot>>> = Mutex::new(None);

/// The slot of `address`, made on first use.
fn slot(address: &str) -> LinkSlot {
    let mut links = LINKS.lock().unwrap_or_else(|p| p.into_inner());
    let links = links.get_or_insert_with(HashMap::new);
    if let Some(slot) = links.get(address) {
        return slot.clone();
    }
    let slot = LinkSlot::default();
    links.insert(address.to_owned(), slot.clone());
    slot
}

pub(crate) fn remember(link: &Arc<Link>) {
    let slot = slot(&link.address);
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(link);
}

/// The link to `address`: this process's, or a new connection.
pub(crate) fn link_to(address: &str) -> Result<Arc<Link>, StateError> {
    let slot = slot(address);
    let mut known = slot.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(link) = known.upgrade()
        && link.process.is_alive()
    {
        return Ok(link);
    }
    let process = ClientBuilder::new(address)?
        .retry_for(Duration::from_secs(5))
        .connect()?;
    // Any server of this build can serve a state: make sure it has the
    // services (a context's server has them already; one of another build
    // refuses this call, and has them or not).
    let _ = process.invoke(func!(server::register));
    let link = Arc::new(Link::new(address.to_owned(), process));
    *known = Arc::downgrade(&link);
    Ok(link)
}

/// A task given up, whatever its type.
trait GivenUp: Send {
    fn finished(&self) -> bool;
    /// Takes its outcome, so that it is not reported.
    fn collect(self: Box<Self>);
}

impl<T: Send + 'static> GivenUp for Task<T> {
    fn finished(&self) -> bool {
        self.is_finished()
    }

    fn collect(self: Box<Self>) {
        let _ = (*self).wait();
    }
}

/// Tasks given up (a wait that timed out, a watcher dropped with a poll in
/// flight), kept until they end, so that their end (often the server
/// going away) is not reported as a failure nobody waited for. Finished
/// ones are collected whenever another is given up.
static GIVEN_UP: Mutex<Vec<Box<dyn GivenUp>>> = Mutex::new(Vec::new());

/// Cancels `task` and keeps it until it ends.
fn give_up<T: Send + 'static>(task: Task<T>) {
    task.cancel();
    let finished: Vec<Box<dyn GivenUp>> = {
        let mut given_up = GIVEN_UP.lock().unwrap_or_else(|p| p.into_inner());
        let (finished, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut *given_up)
            .into_iter()
            .partition(|t| t.finished());
        *given_up = pending;
        given_up.push(Box::new(task));
        finished
    };
    for task in finished {
        task.collect();
    }
}

/// A handle to one namespace of a state server: a map from string keys to
/// values of any serde type, shared by every process that holds a handle.
///
/// Every method is one request to the server, and each is atomic. Values
/// are typed at the edges: [`set`](Self::set) encodes any `Serialize`,
/// [`get::<T>`](Self::get) decodes, and a key holding another type is a
/// [`StateError::Value`]. Keys iterate in key order (byte order of their
/// UTF-8, as in a `BTreeMap<String, _>`). Every change gets a server-wide
/// [`Revision`].
///
/// A handle is cheap to clone and is `Serialize`: pass it to another
/// process as an argument and it connects there to the same server (with
/// the key file beside the server's socket, or the key in the
/// environment).
///
/// ```
/// # fn main() -> Result<(), processional_state::StateError> {
/// let context = processional_state::Context::new()?;
/// let state = context.state();
/// state.set("apples", &3i64)?;
/// assert_eq!(state.get::<i64>("apples")?, Some(3));
/// assert_eq!(state.increment("apples", 2)?, 5);
/// let other = state.namespace("other");
/// assert!(!other.contains("apples")?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct State {
    link: Arc<Link>,
    namespace: String,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("address", &self.link.address)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        (&self.link.address, &self.namespace).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for State {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (address, namespace) = <(String, String)>::deserialize(deserializer)?;
        let link = link_to(&address).map_err(serde::de::Error::custom)?;
        Ok(State { link, namespace })
    }
}

fn unexpected(response: Response) -> StateError {
    match response {
        Response::Error(error) => error.into(),
        other => StateError::UnexpectedAnswer {
            request: "data",
            answer: format!("{other:?}")
                .split(['(', ' '])
                .next()
                .unwrap_or("?")
                .to_owned(),
        },
    }
}

impl State {
    pub(crate) fn from_link(link: Arc<Link>, namespace: &str) -> State {
        State {
            link,
            namespace: namespace.to_owned(),
        }
    }

    /// A handle to the namespace [`DEFAULT_NAMESPACE`] of the server at
    /// `address`.
    pub fn connect(address: &str) -> Result<State, StateError> {
        Ok(State::from_link(link_to(address)?, DEFAULT_NAMESPACE))
    }

    /// A handle to the namespace [`DEFAULT_NAMESPACE`] of the server at
    /// `address` that ships no code, so the server may run another build
    /// (an inspection tool, a producer written separately): data
    /// operations, transactions, data-only waits and watchers work;
    /// [`atomic`](Self::atomic) and [`when`](Self::when) fail with the
    /// server's refusal of shipped code.
    ///
    /// See [both sides run the same build](https://docs.rs/processional/latest/processional/#both-sides-run-the-same-build):
    /// the data operations are services, which is what lets another build in.
    ///
    /// ```
    /// # fn main() -> Result<(), processional_state::StateError> {
    /// let context = processional_state::Context::new()?;
    /// context.state().set("greeting", "hello")?;
    /// // What another program holding the key would do:
    /// let state = processional_state::State::connect_data_only(context.address())?;
    /// assert_eq!(state.get::<String>("greeting")?.as_deref(), Some("hello"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_data_only(address: &str) -> Result<State, StateError> {
        let process = ClientBuilder::new(address)?
            .data_only(true)
            .retry_for(Duration::from_secs(5))
            .connect()?;
        let link = Arc::new(Link::new(address.to_owned(), process));
        Ok(State::from_link(link, DEFAULT_NAMESPACE))
    }

    /// The server's address.
    pub fn address(&self) -> &str {
        &self.link.address
    }

    /// The namespace this handle reads and writes.
    pub fn namespace_name(&self) -> &str {
        &self.namespace
    }

    /// A handle to another namespace of the same server (same connection).
    pub fn namespace(&self, name: &str) -> State {
        State::from_link(self.link.clone(), name)
    }

    /// Switches this handle to another namespace.
    pub fn set_namespace(&mut self, name: &str) {
        self.namespace = name.to_owned();
    }

    fn request(&self, request: Request) -> Result<Response, StateError> {
        self.link.flush();
        Ok(self
            .link
            .process
            .call_service(server::REQUEST, request)
            .wait()?)
    }

    /// The entry of `key`: its encoded value and revisions.
    pub fn entry(&self, key: &str) -> Result<Option<Entry>, StateError> {
        match self.request(Request::Get(self.namespace.clone(), key.into()))? {
            Response::Entry(entry) => Ok(entry),
            other => Err(unexpected(other)),
        }
    }

    /// The value of `key` as a `T` (`None` if there is none).
    ///
    /// The dict methods (`get`, `get_or`, `set`, `remove`, `pop`, `setdefault`,
    /// `update`, `contains`, `keys`, `items`, …) are one atomic request each:
    ///
    /// ```
    /// # fn main() -> Result<(), processional_state::StateError> {
    /// # let context = processional_state::Context::new()?;
    /// let state = context.state();
    /// state.set("name", "ada")?;
    /// assert_eq!(state.get::<String>("name")?.as_deref(), Some("ada"));
    /// assert_eq!(state.get_or("age", 36u32)?, 36); // missing: the default
    /// assert!(state.get::<u32>("name").is_err()); // another type: a ValueError
    /// state.update([("x", 1u8), ("y", 2u8)])?;
    /// assert_eq!(state.keys()?, ["name", "x", "y"]); // in key order
    /// assert_eq!(state.remove::<u8>("x")?, Some(1));
    /// assert!(!state.contains("x")?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        match self.entry(key)? {
            Some(entry) => Ok(Some(codec::decode(key, &entry.value)?)),
            None => Ok(None),
        }
    }

    /// The value of `key` with the revision that last set it.
    pub fn get_with_revision<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, Revision)>, StateError> {
        match self.entry(key)? {
            Some(entry) => Ok(Some((codec::decode(key, &entry.value)?, entry.modified))),
            None => Ok(None),
        }
    }

    /// The value of `key`, or `default` if there is none.
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T, StateError> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// Sets `key` to `value`; returns the change's revision.
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<Revision, StateError> {
        let bytes = codec::encode(key, value)?;
        match self.request(Request::Set(self.namespace.clone(), key.into(), bytes))? {
            Response::Revision(revision) => Ok(revision),
            other => Err(unexpected(other)),
        }
    }

    /// Removes `key`; returns its value if it had one.
    pub fn remove<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StateError> {
        match self.request(Request::Remove(self.namespace.clone(), key.into()))? {
            Response::Removed(entry, _) => Ok(entry
                .map(|entry| codec::decode(key, &entry.value))
                .transpose()?),
            other => Err(unexpected(other)),
        }
    }

    /// Removes `key` and returns its value, or `default` if it had none.
    pub fn pop<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T, StateError> {
        Ok(self.remove(key)?.unwrap_or(default))
    }

    /// Removes the last key in key order; returns it with its value.
    pub fn popitem<T: DeserializeOwned>(&self) -> Result<Option<(String, T)>, StateError> {
        match self.request(Request::PopItem(self.namespace.clone()))? {
            Response::Item(item, _) => match item {
                Some((key, entry)) => {
                    let value = codec::decode(&key, &entry.value)?;
                    Ok(Some((key, value)))
                }
                None => Ok(None),
            },
            other => Err(unexpected(other)),
        }
    }

    /// The value of `key`, set to `default` first if it has none.
    pub fn setdefault<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        default: &T,
    ) -> Result<T, StateError> {
        let bytes = codec::encode(key, default)?;
        match self.request(Request::SetDefault(
            self.namespace.clone(),
            key.into(),
            bytes,
        ))? {
            Response::Value(bytes, _) => Ok(codec::decode(key, &bytes)?),
            other => Err(unexpected(other)),
        }
    }

    /// Sets every pair of `items` in one change; returns its revision.
    pub fn update<K: Into<String>, T: Serialize>(
        &self,
        items: impl IntoIterator<Item = (K, T)>,
    ) -> Result<Revision, StateError> {
        let mut encoded = Vec::new();
        for (key, value) in items {
            let key = key.into();
            let bytes = codec::encode(&key, &value)?;
            encoded.push((key, serde_bytes::ByteBuf::from(bytes)));
        }
        match self.request(Request::Update(self.namespace.clone(), encoded))? {
            Response::Revision(revision) => Ok(revision),
            other => Err(unexpected(other)),
        }
    }

    /// Whether `key` exists.
    pub fn contains(&self, key: &str) -> Result<bool, StateError> {
        match self.request(Request::Contains(self.namespace.clone(), key.into()))? {
            Response::Bool(found) => Ok(found),
            other => Err(unexpected(other)),
        }
    }

    /// How many keys the namespace holds.
    pub fn len(&self) -> Result<usize, StateError> {
        match self.request(Request::Len(self.namespace.clone()))? {
            Response::Len(len) => Ok(len as usize),
            other => Err(unexpected(other)),
        }
    }

    /// Whether the namespace holds no key.
    pub fn is_empty(&self) -> Result<bool, StateError> {
        Ok(self.len()? == 0)
    }

    /// The namespace now, with its revision: read it with [`Read`].
    pub fn copy(&self) -> Result<Snapshot, StateError> {
        match self.request(Request::Snapshot(self.namespace.clone()))? {
            Response::Snapshot(snapshot) => Ok(snapshot),
            other => Err(unexpected(other)),
        }
    }

    /// The keys, in key order.
    pub fn keys(&self) -> Result<Vec<String>, StateError> {
        Ok(self.copy()?.keys())
    }

    /// The values, in key order, all as `T`.
    pub fn values<T: DeserializeOwned>(&self) -> Result<Vec<T>, StateError> {
        Ok(self.copy()?.values()?)
    }

    /// The `(key, value)` pairs, in key order, all values as `T`.
    pub fn items<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StateError> {
        Ok(self.copy()?.items()?)
    }

    /// A local copy of the namespace, all values as `T`.
    pub fn to_map<T: DeserializeOwned>(&self) -> Result<BTreeMap<String, T>, StateError> {
        Ok(self.copy()?.to_map()?)
    }

    /// Whether the namespace holds exactly `map`.
    pub fn eq_map<T: Serialize>(&self, map: &BTreeMap<String, T>) -> Result<bool, StateError> {
        Ok(self.copy()?.eq_map(map)?)
    }

    /// Removes every key in one change; returns the revision now.
    pub fn clear(&self) -> Result<Revision, StateError> {
        match self.request(Request::Clear(self.namespace.clone()))? {
            Response::Revision(revision) => Ok(revision),
            other => Err(unexpected(other)),
        }
    }

    /// The server's revision now.
    pub fn revision(&self) -> Result<Revision, StateError> {
        match self.request(Request::Revision)? {
            Response::Revision(revision) => Ok(revision),
            other => Err(unexpected(other)),
        }
    }

    /// The namespaces that hold at least one key.
    pub fn namespaces(&self) -> Result<Vec<String>, StateError> {
        match self.request(Request::Namespaces)? {
            Response::Namespaces(names) => Ok(names),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a transaction (see [`Txn`]) on this namespace.
    ///
    /// ```
    /// use processional_state::txn::{Compare, Op, Txn};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let context = processional_state::Context::new()?;
    /// # let state = context.state();
    /// // Take the lock only if nobody holds it.
    /// let take = Txn::new()
    ///     .when(Compare::missing("lock"))
    ///     .then(Op::set("lock", "me")?);
    /// assert!(state.txn(take.clone())?.succeeded);
    /// assert!(!state.txn(take)?.succeeded); // held now: nothing written
    /// # Ok(())
    /// # }
    /// ```
    pub fn txn(&self, txn: Txn) -> Result<TxnOutcome, StateError> {
        match self.request(Request::Txn(self.namespace.clone(), txn))? {
            Response::Txn(outcome) => Ok(outcome),
            other => Err(unexpected(other)),
        }
    }

    /// Adds `by` to the `i64` under `key` (missing counts as 0), atomically;
    /// returns the sum.
    ///
    /// ```
    /// # fn main() -> Result<(), processional_state::StateError> {
    /// # let context = processional_state::Context::new()?;
    /// # let state = context.state();
    /// assert_eq!(state.increment("hits", 5)?, 5);
    /// assert_eq!(state.decrement("hits", 2)?, 3);
    /// # Ok(())
    /// # }
    /// ```
    pub fn increment(&self, key: &str, by: i64) -> Result<i64, StateError> {
        match self.request(Request::Increment(self.namespace.clone(), key.into(), by))? {
            Response::Int(value, _) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Subtracts `by` from the `i64` under `key`, atomically.
    pub fn decrement(&self, key: &str, by: i64) -> Result<i64, StateError> {
        self.increment(key, by.wrapping_neg())
    }

    /// Appends `item` to the `Vec<T>` under `key` (missing counts as
    /// empty), atomically; returns the change's revision.
    pub fn append<T: Serialize>(&self, key: &str, item: &T) -> Result<Revision, StateError> {
        let bytes = codec::encode(key, item)?;
        match self.request(Request::Append(self.namespace.clone(), key.into(), bytes))? {
            Response::Revision(revision) => Ok(revision),
            other => Err(unexpected(other)),
        }
    }

    /// Runs `f(view, args)` in the server with the namespace to itself, as
    /// one change, and returns its value. If `f` returns an error (any
    /// `Display`) or panics, nothing it did stays: the error comes back as
    /// [`StateError::Aborted`], the panic as a [`StateError::Runtime`]
    /// holding it. Once the server applied an update, a caller that gives
    /// up (its task dropped or cancelled) does not undo it.
    ///
    /// `f` is shipped like any function given to a process (`func!`), so
    /// the server must run the same build.
    ///
    /// ```
    /// use processional_state::{Read, View, func};
    /// # fn main() -> Result<(), processional_state::StateError> {
    /// # let context = processional_state::Context::new()?;
    /// # let state = context.state();
    /// state.set("from", &10u32)?;
    /// let moved = state.atomic(4u32, func!(|view: &mut View<'_>, amount: u32| {
    ///     let from = view.get_or("from", 0u32)?;
    ///     if from < amount {
    ///         return Err(format!("only {from} left").into());
    ///     }
    ///     view.set("from", &(from - amount))?;
    ///     let to = view.get_or("to", 0u32)?;
    ///     view.set("to", &(to + amount))?;
    ///     Ok::<_, Box<dyn std::error::Error>>(amount)
    /// }))?;
    /// assert_eq!(moved, 4);
    /// assert_eq!(state.get::<u32>("to")?, Some(4));
    /// # Ok(())
    /// # }
    /// ```
    pub fn atomic<A, R, E, F>(&self, args: A, f: Func<F>) -> Result<R, StateError>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        E: fmt::Display,
        F: Fn(&mut View<'_>, A) -> Result<R, E> + Copy + Send + Sync + 'static,
    {
        Ok(self.schedule_atomic(args, f).wait()??.0)
    }

    /// [`atomic`](Self::atomic) without waiting: the task answers the value
    /// and the change's revision (or the update's error).
    pub fn schedule_atomic<A, R, E, F>(
        &self,
        args: A,
        f: Func<F>,
    ) -> Task<Result<(R, Revision), AtomicFailed>>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        E: fmt::Display,
        F: Fn(&mut View<'_>, A) -> Result<R, E> + Copy + Send + Sync + 'static,
    {
        let shipped = f.pass_to(func!(|f: Func<F>, (namespace, args): (String, A)| {
            server::atomic(namespace, args, *f.get()).map_err(AtomicFailed)
        }));
        self.link.flush();
        self.link
            .process
            .schedule_with((self.namespace.clone(), args), shipped)
    }

    fn wait_for(
        &self,
        task: Task<WaitAnswer>,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<Snapshot, StateError> {
        let answer = match timeout {
            None => task.wait()?,
            Some(timeout) => match task.wait_timeout(timeout) {
                Ok(answer) => answer?,
                Err(task) => {
                    give_up(task);
                    return Err(StateError::TimedOut {
                        operation: format!("{what} on namespace {:?}", self.namespace),
                        after: timeout,
                    });
                }
            },
        };
        Ok(answer?)
    }

    fn wait_data(
        &self,
        wait: Wait,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<Snapshot, StateError> {
        self.link.flush();
        let task = self
            .link
            .process
            .call_service(server::WAIT, (self.namespace.clone(), wait));
        self.wait_for(task, timeout, what)
    }

    /// Waits (without polling) for a change of one of `keys` (of any key
    /// if empty) after now; returns the namespace as that change left it.
    ///
    /// The `when_*` waits take an optional timeout (then
    /// [`StateError::TimedOut`]); `when_change`, `when_equal`,
    /// `when_not_equal`, `when_none`, `when_not_none` and `when_available` are
    /// data operations, which a [data-only](Self::connect_data_only) handle of
    /// another build may use; [`when`](Self::when) ships a predicate, so it
    /// needs the same build.
    ///
    /// ```
    /// use std::time::Duration;
    /// use processional_state::{Context, State, StateError, func};
    ///
    /// # fn main() -> Result<(), StateError> {
    /// let context = Context::new()?;
    /// let state = context.state();
    /// let setter = context.spawn(func!(|state: State, n: u32| state.set("ready", &n).map(|_| ())), 7)?;
    /// let snapshot = state.when_equal("ready", &7u32, Some(Duration::from_secs(30)))?;
    /// assert!(snapshot.revision > 0);
    /// setter.wait(None)?;
    /// let timed_out = state.when_none("ready", Some(Duration::from_millis(50)));
    /// assert!(matches!(timed_out, Err(StateError::TimedOut { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn when_change(
        &self,
        keys: &[&str],
        timeout: Option<Duration>,
    ) -> Result<Snapshot, StateError> {
        let keys = keys.iter().map(|k| (*k).to_owned()).collect();
        self.wait_data(Wait::Changed(keys, None), timeout, "when_change")
    }

    /// Waits for a change of one of `keys` after `revision` (one that
    /// already happened answers at once).
    pub fn when_change_after(
        &self,
        keys: &[&str],
        revision: Revision,
        timeout: Option<Duration>,
    ) -> Result<Snapshot, StateError> {
        let keys = keys.iter().map(|k| (*k).to_owned()).collect();
        self.wait_data(Wait::Changed(keys, Some(revision)), timeout, "when_change")
    }

    /// Waits until `key` holds `value` (now or after a change).
    pub fn when_equal<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        timeout: Option<Duration>,
    ) -> Result<Snapshot, StateError> {
        let bytes = codec::encode(key, value)?;
        self.wait_data(
            Wait::Key(key.into(), KeyTest::Equal(bytes)),
            timeout,
            "when_equal",
        )
    }

    /// Waits until `key` does not hold `value` (a missing key qualifies).
    pub fn when_not_equal<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        timeout: Option<Duration>,
    ) -> Result<Snapshot, StateError> {
        let bytes = codec::encode(key, value)?;
        self.wait_data(
            Wait::Key(key.into(), KeyTest::NotEqual(bytes)),
            timeout,
            "when_not_equal",
        )
    }

    /// Waits until `key` does not exist.
    pub fn when_none(&self, key: &str, timeout: Option<Duration>) -> Result<Snapshot, StateError> {
        self.wait_data(
            Wait::Key(key.into(), KeyTest::Missing),
            timeout,
            "when_none",
        )
    }

    /// Waits until `key` exists.
    pub fn when_not_none(
        &self,
        key: &str,
        timeout: Option<Duration>,
    ) -> Result<Snapshot, StateError> {
        self.wait_data(
            Wait::Key(key.into(), KeyTest::Present),
            timeout,
            "when_not_none",
        )
    }

    /// Waits until `key` exists (zproc's name for [`when_not_none`](Self::when_not_none)).
    pub fn when_available(
        &self,
        key: &str,
        timeout: Option<Duration>,
    ) -> Result<Snapshot, StateError> {
        self.when_not_none(key, timeout)
    }

    /// Waits until `predicate` holds for the namespace (now or after a
    /// change). The predicate runs in the server, so it is shipped like a
    /// function given to a process (`func!`; same build).
    /// See [how it works and its limitations](https://docs.rs/processional/latest/processional/#how-it-works-and-limitations).
    ///
    /// ```
    /// use processional_state::{Peek, Read, func};
    /// # fn main() -> Result<(), processional_state::StateError> {
    /// # let context = processional_state::Context::new()?;
    /// # let state = context.state();
    /// state.set("a", &1u8)?;
    /// // Holds now: returns at once with the snapshot that satisfied it.
    /// let snapshot = state.when(func!(|s: &Peek<'_>| s.contains("a")), None)?;
    /// assert!(snapshot.revision >= 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn when<F>(
        &self,
        predicate: Func<F>,
        timeout: Option<Duration>,
    ) -> Result<Snapshot, StateError>
    where
        F: Fn(&Peek<'_>) -> bool + Copy + Send + Sync + 'static,
    {
        let shipped = predicate.pass_to(func!(|predicate: Func<F>, namespace: String| {
            server::wait_predicate(namespace, *predicate.get())
        }));
        self.link.flush();
        let task = self
            .link
            .process
            .schedule_later_with(self.namespace.clone(), shipped);
        self.wait_for(task, timeout, "when")
    }

    /// Answers the server's process id, or fails by `timeout` (at once for
    /// a timeout of zero, and by the deadline if the server died).
    pub fn ping(&self, timeout: Duration) -> Result<u32, StateError> {
        let operation = format!("ping of the state server at {}", self.link.address);
        if timeout.is_zero() {
            return Err(StateError::TimedOut {
                operation,
                after: timeout,
            });
        }
        let task = self.link.process.schedule(func!(std::process::id));
        match task.wait_timeout(timeout) {
            Ok(pid) => Ok(pid?),
            Err(task) => {
                give_up(task);
                Err(StateError::TimedOut {
                    operation,
                    after: timeout,
                })
            }
        }
    }

    /// A watcher of this namespace yielding every change after now, in
    /// order ([buffered](Watcher)).
    /// What a watcher gets past the server's bounded history: see [`Watcher`].
    pub fn watch(&self) -> Result<Watcher, StateError> {
        let after = self.revision()?;
        Ok(self.watch_after(after))
    }

    /// A buffered watcher yielding every change after `revision` (a past
    /// one replays the history).
    pub fn watch_after(&self, revision: Revision) -> Watcher {
        Watcher::new(self.clone(), false, revision)
    }

    /// A live watcher: each `next()` yields the latest change made after
    /// it was called, skipping those before.
    pub fn watch_live(&self) -> Watcher {
        Watcher::new(self.clone(), true, 0)
    }

    fn poll(&self, after: Option<Revision>) -> Task<PollAnswer> {
        self.link.flush();
        send_poll(&self.link, &self.namespace, after)
    }

    /// Registers the data services in the server (same build).
    pub(crate) fn register_services(&self) -> Result<bool, StateError> {
        Ok(self.link.process.invoke(func!(server::register))?)
    }

    /// Sets the server's limits (shipped code: same build only).
    pub(crate) fn configure(&self, limits: crate::hub::Limits) -> Result<(), StateError> {
        Ok(self
            .link
            .process
            .invoke_with(limits, func!(server::configure))?)
    }
}

/// The error of a scheduled atomic update, as it travels (see
/// [`State::schedule_atomic`]); `?` turns it into a [`StateError`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", StateError::from(.0.clone()))]
pub struct AtomicFailed(pub(crate) WireError);

impl From<AtomicFailed> for StateError {
    fn from(error: AtomicFailed) -> Self {
        error.0.into()
    }
}

/// The changes of a namespace, in order: an [`Iterator`] that blocks for
/// the next one (no polling: each wait is one deferred request answered by
/// the change itself, holding no server thread).
///
/// - **Buffered** ([`State::watch`], [`State::watch_after`]): every change
///   after its start revision, those made before the first `next()`
///   included, however fast they come. They are fetched in batches from the
///   server's history. The next batch is asked for with the next request
///   any handle of this process makes on the same connection (the server
///   then parks it first), or at the next `next()`, whichever comes first,
///   so that nothing is sent between a change and the code that waited for
///   it; a watcher behind the changes asks at once. A watcher
///   further behind than the history reaches yields
///   [`StateError::Compacted`], which holds the namespace now and its
///   revision; the watcher then goes on from that revision.
/// - **Live** ([`State::watch_live`]): each `next()` yields the latest change
///   made after the call.
///
/// The history is bounded by count and by bytes
/// ([`ContextBuilder::history`](crate::ContextBuilder::history),
/// [`history_bytes`](crate::ContextBuilder::history_bytes)), and counted
/// per namespace: a busy namespace does not compact a quiet one. A watcher
/// with a poll waiting counts against its connection's
/// [`max_waits`](crate::ContextBuilder::max_waits).
///
/// ```
/// # fn main() -> Result<(), processional_state::StateError> {
/// let context = processional_state::Context::new()?;
/// let state = context.state();
/// let mut watcher = state.watch()?; // every change from now on
/// for i in 0..3u32 {
///     state.set("n", &i)?; // made before the first `next()`: not missed
/// }
/// let revisions: Vec<u64> = watcher.by_ref().take(3).map(|c| c.map(|c| c.revision)).collect::<Result<_, _>>()?;
/// assert_eq!(revisions.len(), 3);
/// assert!(revisions.windows(2).all(|w| w[0] + 1 == w[1]));
/// # Ok(())
/// # }
/// ```
pub struct Watcher {
    state: State,
    live: bool,
    /// The revision of the last change yielded.
    after: Revision,
    /// The revision of the last change received.
    fetched: Revision,
    buffer: VecDeque<Change>,
    /// The request for the changes after `fetched`, already sent.
    pending: Option<Task<PollAnswer>>,
    /// The request for the changes after `fetched` once the buffer is
    /// empty: due, or sent with another request on the link.
    next: Arc<NextPoll>,
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("namespace", &self.state.namespace)
            .field("live", &self.live)
            .field("after", &self.after)
            .field("buffered", &self.buffer.len())
            .finish()
    }
}

impl Watcher {
    fn new(state: State, live: bool, after: Revision) -> Watcher {
        let next = Arc::new(NextPoll {
            namespace: state.namespace.clone(),
            state: Mutex::new(Next::Idle),
        });
        Watcher {
            state,
            live,
            after,
            fetched: after,
            next,
            buffer: VecDeque::new(),
            pending: None,
        }
    }

    /// The revision of the last change yielded (or the start).
    pub fn revision(&self) -> Revision {
        self.after
    }

    /// The next change, waiting at most `timeout` (`None`: as long as it
    /// takes). A buffered watcher that times out keeps its place.
    pub fn next_timeout(&mut self, timeout: Option<Duration>) -> Result<Change, StateError> {
        if !self.live
            && let Some(change) = self.buffer.pop_front()
        {
            self.after = change.revision;
            return Ok(change);
        }
        let task = match self.pending.take() {
            Some(task) => task,
            None => match self.next.take(&self.state.link) {
                Some(task) => task,
                None => self
                    .state
                    .poll(if self.live { None } else { Some(self.fetched) }),
            },
        };
        let answer = match timeout {
            None => task.wait()?,
            Some(timeout) => match task.wait_timeout(timeout) {
                Ok(answer) => answer?,
                Err(task) => {
                    if self.live {
                        give_up(task);
                    } else {
                        self.pending = Some(task);
                    }
                    return Err(StateError::TimedOut {
                        operation: format!("a watcher of namespace {:?}", self.state.namespace),
                        after: timeout,
                    });
                }
            },
        };
        self.received(answer)
    }

    /// What the next change is, given the answer of a poll.
    fn received(&mut self, answer: PollAnswer) -> Result<Change, StateError> {
        match answer {
            Ok(mut changes) if self.live => {
                let change = changes.pop().ok_or(StateError::Stopped)?;
                self.after = change.revision;
                Ok(change)
            }
            Ok(changes) => {
                self.buffer.extend(changes);
                let change = self.buffer.pop_front().ok_or(StateError::Stopped)?;
                self.fetched = self
                    .buffer
                    .back()
                    .map_or(change.revision, |last| last.revision);
                if self.buffer.is_empty() {
                    // The next request of the link takes the next poll
                    // along (the server parks it before it runs that
                    // request), or the next call sends it: nothing is sent
                    // between the change and the code waiting for it.
                    *self.next.lock() = Next::Due(self.fetched);
                    self.state.link.defer(&self.next);
                } else {
                    // Behind: the next batch travels while this one is
                    // consumed.
                    self.pending = Some(self.state.poll(Some(self.fetched)));
                }
                self.after = change.revision;
                Ok(change)
            }
            Err(WireError::Compacted(compacted)) => {
                self.after = compacted.snapshot.revision;
                self.fetched = self.after;
                Err(StateError::Compacted(compacted))
            }
            Err(other) => Err(other.into()),
        }
    }
}

/// The same changes for async code, under any executor: a
/// `futures_core::Stream` that never ends.
impl futures_core::Stream for Watcher {
    type Item = Result<Change, StateError>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;

        let this = self.get_mut();
        if !this.live
            && let Some(change) = this.buffer.pop_front()
        {
            this.after = change.revision;
            return Poll::Ready(Some(Ok(change)));
        }
        let mut task = match this.pending.take() {
            Some(task) => task,
            None => match this.next.take(&this.state.link) {
                Some(task) => task,
                None => this
                    .state
                    .poll(if this.live { None } else { Some(this.fetched) }),
            },
        };
        match std::pin::Pin::new(&mut task).poll(cx) {
            Poll::Pending => {
                this.pending = Some(task);
                Poll::Pending
            }
            Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(Ok(answer)) => Poll::Ready(Some(this.received(answer))),
        }
    }
}

impl Iterator for Watcher {
    type Item = Result<Change, StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_timeout(None))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(task) = self.pending.take() {
            give_up(task);
        }
        if let Next::Sent(task) = std::mem::replace(&mut *self.next.lock(), Next::Idle) {
            give_up(task);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// A watcher whose process makes no other request on its link sends
    /// each next poll itself: what it deferred must not pile up on the link.
    #[test]
    fn a_watcher_alone_on_its_link_leaves_no_pile_of_deferred_polls() {
        let patience = Duration::from_secs(60);
        let context = crate::Context::new().unwrap();
        let watched = context.state();
        let producer = super::State::connect_data_only(context.address()).unwrap();
        let mut watcher = watched.watch().unwrap();
        for i in 0..50u32 {
            let revision = producer.set("n", &i).unwrap();
            let change = watcher.next_timeout(Some(patience)).unwrap();
            assert_eq!(change.revision, revision);
        }
        let deferred = watched.link.polls.lock().unwrap().len();
        assert!(
            deferred <= 1,
            "{deferred} deferred polls kept for one watcher"
        );
    }
}
