//! `Remote<T>`: a handle to an object that lives in another process.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

use processional_proto::custom::{deserialize_error, serialize_error};
use processional_proto::{FunctionRef, Message, ObjectId, RunMode};
use processional_task::{Completer, Error, Task};
use serde::de::{DeserializeOwned, Deserializer};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::context;
use crate::entry::{DeferredMethodEntry, FetchEntry, MethodEntry, RedeemEntry, TicketEntry};
use crate::func::Func;
use crate::function::Described;
use crate::objects::{ObjectSlot, Ticket};
use crate::payload::{self, Outgoing};
use crate::reply::{self, Later};
use crate::session::Session;

thread_local! {
    /// The session whose call arguments are being encoded on this thread.
    static ENCODING_FOR: Cell<u64> = const { Cell::new(0) };
    /// The tickets met while this thread decodes a reply, to redeem once
    /// it is decoded (see [`decoding_reply`]); `None` when it decodes none.
    static REPLY_TICKETS: RefCell<Option<Vec<Redemption>>> = const { RefCell::new(None) };
}

/// A ticket met in a reply, and the handle that waits for its redemption.
struct Redemption {
    server: String,
    ticket: Ticket,
    redeemed: Completer<Handle>,
}

/// Decodes a reply's value with `decode`. The handles inside it that come
/// as tickets are redeemed on a thread of their own, one for all of them,
/// in order, not by this thread, which reads a connection (maybe inside a
/// write) and must not wait for another call, on this connection or on any
/// other.
pub(crate) fn decoding_reply<R>(decode: impl FnOnce() -> R) -> R {
    /// Restores the thread's state, even if `decode` panics, and starts
    /// the redemptions.
    struct Decoding(Option<Vec<Redemption>>);
    impl Drop for Decoding {
        fn drop(&mut self) {
            let met = REPLY_TICKETS.with(|tickets| tickets.replace(self.0.take()));
            let met = met.unwrap_or_default();
            if !met.is_empty() {
                // Without a thread, each handle redeems its ticket at its
                // first use (its redemption fails with `Stopped`).
                drop(processional_thread::thread(move || {
                    for Redemption {
                        server,
                        ticket,
                        redeemed,
                    } in met
                    {
                        // Even for a handle dropped already: it then
                        // releases its reference at once.
                        redeemed.complete(redeem(&server, ticket));
                    }
                }));
            }
        }
    }
    let _decoding = Decoding(REPLY_TICKETS.with(|tickets| tickets.replace(Some(Vec::new()))));
    decode()
}

/// The handle of a ticket met while decoding a reply: redeemed once the
/// reply is decoded (see [`decoding_reply`]). `None` when this thread
/// decodes no reply.
fn redeemed_later(server: &str, ticket: Ticket, id: ObjectId) -> Option<Handle> {
    REPLY_TICKETS.with(|tickets| {
        let mut tickets = tickets.borrow_mut();
        let tickets = tickets.as_mut()?;
        let (redemption, redeemed) = Task::pending();
        tickets.push(Redemption {
            server: server.to_owned(),
            ticket,
            redeemed,
        });
        Some(Handle::Ticket(Box::new(Ticketed {
            server: server.to_owned(),
            ticket,
            id,
            redeeming: Mutex::new(Some(redemption)),
            redeemed: OnceLock::new(),
        })))
    })
}

/// Encodes call arguments bound for `session`: `Remote` handles inside them
/// must belong to it.
pub(crate) fn encode_for<T: Serialize + std::any::Any>(
    session: &Session,
    value: &T,
) -> Result<Outgoing, Error> {
    let previous = ENCODING_FOR.with(|s| s.replace(session.id()));
    let result = payload::encode(value, session.is_unix());
    ENCODING_FOR.with(|s| s.set(previous));
    result
}

/// Encodes `args` for `session` and sends a call of `function`: the task of
/// its answer. A call that cannot even leave (its arguments do not encode,
/// the connection is gone) is a task that failed, as it would had it left.
pub(crate) fn scheduled<A, R>(
    session: &Session,
    function: FunctionRef,
    mode: RunMode,
    args: &A,
) -> Task<R>
where
    A: Serialize + std::any::Any,
    R: DeserializeOwned + Send + 'static,
{
    encode_for(session, args)
        .and_then(|bytes| session.call::<R>(function, mode, bytes))
        .unwrap_or_else(|error| Task::ready(Err(error)))
}

enum Handle {
    /// The object lives in the process at the other end of `session`.
    Remote { session: Arc<Session>, id: ObjectId },
    /// The object lives in this process (a handle passed back to the process
    /// that holds the object resolves to the object itself).
    Local { slot: Arc<ObjectSlot>, id: ObjectId },
    /// The object lives in a server, and this ticket of it, received in a
    /// reply, is being redeemed.
    Ticket(Box<Ticketed>),
}

/// Where a handle's object is, once its ticket (if any) is redeemed.
enum Place<'a> {
    Remote(&'a Arc<Session>, ObjectId),
    Local(&'a ObjectSlot),
}

impl Handle {
    fn place(&self) -> Result<Place<'_>, Error> {
        match self {
            Handle::Remote { session, id } => Ok(Place::Remote(session, *id)),
            Handle::Local { slot, .. } => Ok(Place::Local(slot)),
            Handle::Ticket(ticketed) => ticketed.redeemed()?.place(),
        }
    }
}

/// A ticket of the server at `server` for object `id`, received in a
/// reply and redeemed on another thread as soon as the reply was decoded
/// (it may soon expire); the first use waits for that.
struct Ticketed {
    server: String,
    ticket: Ticket,
    /// The id the sender gave (the server's answer prevails).
    id: ObjectId,
    /// The redemption under way, until someone waits for it. Its handle,
    /// if nobody waits any more, releases its reference when dropped.
    redeeming: Mutex<Option<Task<Handle>>>,
    /// Once redeemed: a [`Handle::Remote`].
    redeemed: OnceLock<Handle>,
}

impl Ticketed {
    /// The redeemed handle, waiting for its redemption (or redeeming here,
    /// after a failure).
    fn redeemed(&self) -> Result<&Handle, Error> {
        if let Some(handle) = self.redeemed.get() {
            return Ok(handle);
        }
        let mut redeeming = self.redeeming.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handle) = self.redeemed.get() {
            return Ok(handle);
        }
        // Used by the very code that decodes its reply (a `Deserialize` of
        // the caller's): its redemption has not started yet. It is taken
        // back (it ends `Stopped`), and the ticket redeemed here.
        let unstarted = REPLY_TICKETS.with(|tickets| {
            let mut tickets = tickets.borrow_mut();
            let tickets = tickets.as_mut()?;
            let index = tickets.iter().position(|r| r.ticket == self.ticket)?;
            Some(tickets.remove(index))
        });
        drop(unstarted);
        let handle = match redeeming.take().map(Task::wait) {
            Some(Err(Error::Stopped)) | None => redeem(&self.server, self.ticket),
            Some(outcome) => outcome,
        }?;
        Ok(self.redeemed.get_or_init(|| handle))
    }
}

/// Connects to the server at `server` (unless this process already is its
/// client) and redeems `ticket` there: a handle of our own.
fn redeem(server: &str, ticket: Ticket) -> Result<Handle, Error> {
    let session = match Session::to_server(server) {
        Some(session) => session,
        None => crate::server::ClientBuilder::new(server)
            .and_then(|builder| builder.connect())
            .map(|process| process.session().clone())?,
    };
    let id = encode_for(&session, &ticket)
        .and_then(|args| session.call::<u64>(RedeemEntry::function_ref(), RunMode::Queued, args))
        .and_then(Task::wait)?;
    Ok(Handle::Remote { session, id })
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Handle::Remote { session, id } = self {
            // A dead session has already freed everything on the other side.
            let _ = session.send(&Message::Release { object: *id });
        }
    }
}

/// A handle to an object of type `T` living in another process (a slave or a
/// server), created by `wrap` or found by `lookup`.
///
/// Calls on it run in that process with `&mut T`; the object is freed there
/// when the last handle (and its clones) is dropped here, or when this
/// process disconnects. Passed as an argument to a call on the same process,
/// it arrives there as a handle to the object itself, without any copy:
/// `invoke` on it then runs at once, in place.
///
/// ```
/// use processional_process::{Remote, func};
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = processional_process::slave()?;
/// // Built there, from arguments; only a handle comes back.
/// let words: Remote<Vec<String>> =
///     process.wrap_with(3usize, func!(|n: usize| Vec::with_capacity(n)))?;
/// words.invoke_with("alpha".to_string(), func!(|v: &mut Vec<String>, w: String| v.push(w)))?;
/// let count = words.schedule(func!(|v: &mut Vec<String>| v.len()));
/// assert_eq!(count.wait()?, 1);
/// // A handle passed back to its process is the object itself there.
/// let len = process.invoke_with(words.clone(), func!(|w: Remote<Vec<String>>| {
///     w.invoke(func!(|v: &mut Vec<String>| v.len())).expect("in place")
/// }))?;
/// assert_eq!(len, 1);
/// assert_eq!(words.fetch()?, ["alpha"]); // a copy of the object
/// # Ok(())
/// # }
/// ```
///
/// `T` must be `Send + 'static`: the object may be used from any thread of
/// its process. See [how it works and its limitations](https://docs.rs/processional/latest/processional/#how-it-works-and-limitations).
pub struct Remote<T> {
    handle: Arc<Handle>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Remote<T> {
    fn clone(&self) -> Self {
        Remote {
            handle: self.handle.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Remote<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (place, id) = match &*self.handle {
            Handle::Remote { session, id } => (format!("pid {}", session.peer().hello.pid), *id),
            Handle::Local { id, .. } => ("this process".to_owned(), *id),
            Handle::Ticket(ticketed) => (format!("the server {}", ticketed.server), ticketed.id),
        };
        write!(f, "Remote<{}>({id} in {place})", std::any::type_name::<T>())
    }
}

impl<T: Send + 'static> Remote<T> {
    pub(crate) fn new(session: Arc<Session>, id: ObjectId) -> Self {
        Remote {
            handle: Arc::new(Handle::Remote { session, id }),
            _type: PhantomData,
        }
    }

    /// The object's id in the process that holds it.
    pub fn id(&self) -> ObjectId {
        match &*self.handle {
            Handle::Remote { id, .. } | Handle::Local { id, .. } => *id,
            Handle::Ticket(ticketed) => match ticketed.redeemed.get() {
                Some(Handle::Remote { id, .. }) => *id,
                _ => ticketed.id,
            },
        }
    }

    /// Whether the object lives in this very process.
    pub fn is_local(&self) -> bool {
        matches!(&*self.handle, Handle::Local { .. })
    }

    /// Runs `f` on the object and waits for its value.
    pub fn invoke<F, R>(&self, f: Func<F>) -> Result<R, Error>
    where
        F: Fn(&mut T) -> R + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule(f).wait()
    }

    /// Runs `f` on the object with `args` and waits for its value.
    ///
    /// `args` and the value cross as postcard: see
    /// [`Json`](crate::Json) for what it cannot carry.
    pub fn invoke_with<A, F, R>(&self, args: A, f: Func<F>) -> Result<R, Error>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(&mut T, A) -> R + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule_with(args, f).wait()
    }

    /// Queues `f` on the object; the task completes with its value.
    pub fn schedule<F, R>(&self, f: Func<F>) -> Task<R>
    where
        F: Fn(&mut T) -> R + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule_with((), f.with_unit_method_argument())
    }

    /// Queues `f` on the object with `args`; the task completes with its value.
    ///
    /// `args` and the value cross as postcard: see
    /// [`Json`](crate::Json) for what it cannot carry.
    pub fn schedule_with<A, F, R>(&self, args: A, f: Func<F>) -> Task<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(&mut T, A) -> R + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        match self.handle.place() {
            Err(error) => Task::ready(Err(error)),
            Ok(Place::Remote(session, id)) => scheduled(
                session,
                MethodEntry::<F, T, A, R>::function_ref(),
                RunMode::Queued,
                &(id, args),
            ),
            Ok(Place::Local(slot)) => {
                let outcome = slot
                    .with(|object: &mut T| {
                        processional_task::catch_panic(|| (f.get())(object, args))
                    })
                    .map_err(Error::Remote)
                    .and_then(|result| result);
                Task::ready(outcome)
            }
        }
    }

    /// Runs `f` on the object and waits for the answer it sends later
    /// (see [`SlaveProcess::schedule_later`](crate::SlaveProcess::schedule_later)).
    pub fn invoke_later<F, R>(&self, f: Func<F>) -> Result<R, Error>
    where
        F: Fn(&mut T) -> Later<R> + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule_later(f).wait()
    }

    /// Runs `f` on the object with `args` and waits for the answer it sends
    /// later.
    pub fn invoke_later_with<A, F, R>(&self, args: A, f: Func<F>) -> Result<R, Error>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(&mut T, A) -> Later<R> + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule_later_with(args, f).wait()
    }

    /// Queues `f` on the object; the task completes when `f`'s
    /// [`Reply`](crate::Reply) is sent. The object can keep the reply
    /// (callers waiting for an event), and a later call on it can send it:
    ///
    /// ```
    /// use processional_process::{Later, Reply, func, reply_later};
    ///
    /// /// A mailbox: `take` waits until something is put.
    /// #[derive(Default)]
    /// struct Mailbox {
    ///     letters: Vec<String>,
    ///     waiting: Vec<Reply<String>>,
    /// }
    ///
    /// # fn main() -> Result<(), processional_thread::Error> {
    /// let process = processional_process::slave()?;
    /// let mailbox = process.wrap(func!(Mailbox::default))?;
    /// let letter = mailbox.schedule_later(func!(|m: &mut Mailbox| -> Later<String> {
    ///     let (reply, later) = reply_later();
    ///     match m.letters.pop() {
    ///         Some(letter) => drop(reply.send(letter)),
    ///         None => m.waiting.push(reply),
    ///     }
    ///     later
    /// }));
    /// mailbox.invoke_with("hello".to_string(), func!(|m: &mut Mailbox, letter: String| {
    ///     match m.waiting.pop() {
    ///         Some(reply) => drop(reply.send(letter)),
    ///         None => m.letters.push(letter),
    ///     }
    /// }))?;
    /// assert_eq!(letter.wait()?, "hello");
    /// # Ok(())
    /// # }
    /// ```
    pub fn schedule_later<F, R>(&self, f: Func<F>) -> Task<R>
    where
        F: Fn(&mut T) -> Later<R> + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule_later_with((), f.with_unit_method_argument())
    }

    /// Queues `f` on the object with `args`; the task completes when `f`'s
    /// [`Reply`](crate::Reply) is sent.
    pub fn schedule_later_with<A, F, R>(&self, args: A, f: Func<F>) -> Task<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(&mut T, A) -> Later<R> + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        match self.handle.place() {
            Err(error) => Task::ready(Err(error)),
            Ok(Place::Remote(session, id)) => scheduled(
                session,
                DeferredMethodEntry::<F, T, A, R>::function_ref(),
                RunMode::Queued,
                &(id, args),
            ),
            Ok(Place::Local(slot)) => {
                let (task, completer) = Task::pending();
                let ran = slot.with(|object: &mut T| {
                    reply::run_deferring_locally(completer, || (f.get())(object, args))
                });
                match ran {
                    Ok(()) => task,
                    Err(error) => Task::ready(Err(Error::Remote(error))),
                }
            }
        }
    }

    /// Copies the object back into this process.
    pub fn fetch(&self) -> Result<T, Error>
    where
        T: Serialize + DeserializeOwned,
    {
        match self.handle.place()? {
            Place::Remote(session, id) => {
                let bytes = encode_for(session, &id)?;
                session
                    .call::<T>(FetchEntry::<T>::function_ref(), RunMode::Queued, bytes)?
                    .wait()
            }
            Place::Local(slot) => slot
                .with(|object: &mut T| codec::encode(object).and_then(|b| codec::decode(&b)))
                .map_err(Error::Remote)?,
        }
    }
}

/// How a `Remote` travels.
#[derive(Serialize, Deserialize)]
enum RemoteWire {
    /// To the process that holds the object: its id there.
    Here(ObjectId),
    /// To another client of the server that holds the object: a ticket the
    /// receiver redeems with that server for a reference of its own, and
    /// the object's id there.
    At {
        server: String,
        ticket: Ticket,
        id: ObjectId,
    },
}

impl<T> Serialize for Remote<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let place = self
            .handle
            .place()
            .map_err(|e| serialize_error(format_args!("cannot send the handle: {e}")))?;
        let wire = match place {
            Place::Remote(session, id) if ENCODING_FOR.with(Cell::get) == session.id() => {
                RemoteWire::Here(id)
            }
            Place::Remote(session, id) => {
                let Some(server) = session.origin() else {
                    return Err(serialize_error(
                        "a Remote to an object of a slave can only be passed to that slave; \
                         objects of a server can be passed to any of its clients",
                    ));
                };
                // The server holds a reference for the (random) ticket until
                // the receiver redeems it, or it expires, or this connection
                // leaves, so the object survives the trip even if this handle
                // drops right after sending.
                let ticket = encode_for(session, &id)
                    .and_then(|args| {
                        session.call::<Ticket>(TicketEntry::function_ref(), RunMode::Queued, args)
                    })
                    .and_then(Task::wait)
                    .map_err(|e| serialize_error(format_args!("cannot send the handle: {e}")))?;
                RemoteWire::At {
                    server: server.to_owned(),
                    ticket,
                    id,
                }
            }
            Place::Local(_) => {
                return Err(serialize_error(
                    "a Remote resolved in the process that holds its object cannot be sent elsewhere",
                ));
            }
        };
        wire.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Remote<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match RemoteWire::deserialize(deserializer)? {
            RemoteWire::Here(id) => {
                if !context::is_serving() {
                    return Err(deserialize_error(
                        "a Remote can only be decoded by the process that holds its object",
                    ));
                }
                // Only an object the calling connection holds: a peer cannot
                // reach another's objects by naming their ids.
                let slot = context::resolve_argument(id)
                    .map_err(|error| deserialize_error(error.message))?;
                Ok(Remote {
                    handle: Arc::new(Handle::Local { slot, id }),
                    _type: PhantomData,
                })
            }
            RemoteWire::At { server, ticket, id } => {
                let handle = match redeemed_later(&server, ticket, id) {
                    Some(handle) => handle,
                    None => redeem(&server, ticket).map_err(|e| {
                        deserialize_error(format_args!("cannot receive the handle: {e}"))
                    })?,
                };
                Ok(Remote {
                    handle: Arc::new(handle),
                    _type: PhantomData,
                })
            }
        }
    }
}
