//! `Remote<T>`: a handle to an object that lives in another process.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use processional_proto::custom::{deserialize_error, serialize_error};
use processional_proto::{FunctionRef, Message, ObjectId, RunMode};
use processional_task::{Error, Task};
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
        match &*self.handle {
            Handle::Remote { session, id } => scheduled(
                session,
                MethodEntry::<F, T, A, R>::function_ref(),
                RunMode::Queued,
                &(*id, args),
            ),
            Handle::Local { slot, .. } => {
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
        match &*self.handle {
            Handle::Remote { session, id } => scheduled(
                session,
                DeferredMethodEntry::<F, T, A, R>::function_ref(),
                RunMode::Queued,
                &(*id, args),
            ),
            Handle::Local { slot, .. } => {
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
        match &*self.handle {
            Handle::Remote { session, id } => {
                let bytes = encode_for(session, &id.to_owned())?;
                session
                    .call::<T>(FetchEntry::<T>::function_ref(), RunMode::Queued, bytes)?
                    .wait()
            }
            Handle::Local { slot, .. } => slot
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
    /// receiver redeems with that server for a reference of its own.
    At { server: String, ticket: Ticket },
}

impl<T> Serialize for Remote<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let wire = match &*self.handle {
            Handle::Remote { session, id } if ENCODING_FOR.with(Cell::get) == session.id() => {
                RemoteWire::Here(*id)
            }
            Handle::Remote { session, id } => {
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
                let ticket = encode_for(session, id)
                    .and_then(|args| {
                        session.call::<Ticket>(TicketEntry::function_ref(), RunMode::Queued, args)
                    })
                    .and_then(Task::wait)
                    .map_err(|e| serialize_error(format_args!("cannot send the handle: {e}")))?;
                RemoteWire::At {
                    server: server.to_owned(),
                    ticket,
                }
            }
            Handle::Local { .. } => {
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
            RemoteWire::At { server, ticket } => {
                let session = match Session::to_server(&server) {
                    Some(session) => session,
                    None => crate::server::ClientBuilder::new(&server)
                        .and_then(|builder| builder.connect())
                        .map(|process| process.session().clone())
                        .map_err(|e| {
                            deserialize_error(format_args!("cannot reach the server {server}: {e}"))
                        })?,
                };
                let id = encode_for(&session, &ticket)
                    .and_then(|args| {
                        session.call::<u64>(RedeemEntry::function_ref(), RunMode::Queued, args)
                    })
                    .and_then(Task::wait)
                    .map_err(|e| {
                        deserialize_error(format_args!("cannot receive the handle: {e}"))
                    })?;
                Ok(Remote {
                    handle: Arc::new(Handle::Remote { session, id }),
                    _type: PhantomData,
                })
            }
        }
    }
}
