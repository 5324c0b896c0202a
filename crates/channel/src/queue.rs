//! Queue handles: cloneable, serializable references to a queue hosted by
//! a process (a server started for it, or an existing server).

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use processional_process::{Func, Later, SlaveProcess, func};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_bytes::ByteBuf;

use crate::codec;
use crate::core::Filter;
use crate::error::{BatchSendError, Error, RecvError, SendError};
use crate::message::{Message, Request};
use crate::wire::{
    Config, Pick, RecvArgs, RecvReply, SendArgs, SendReply, Status, Wait, WireMessage, services,
};

/// The connection of this process to a queue host.
struct Link {
    address: String,
    process: SlaveProcess,
}

/// Calls the service `name` of the host and waits.
fn call<A: Serialize + 'static, R: DeserializeOwned + Send + 'static>(
    link: &Link,
    name: &str,
    args: A,
) -> Result<R, processional_task::Error> {
    link.process.call_service(name, args).wait()
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("address", &self.address)
            .finish()
    }
}

/// This process's links, by address: handles of queues on one host share
/// one connection.
/// (address, data-only) → link.
type Links = HashMap<(String, bool), Weak<Link>>;

fn links() -> &'static Mutex<Links> {
    static LINKS: OnceLock<Mutex<Links>> = OnceLock::new();
    LINKS.get_or_init(Default::default)
}

impl Link {
    fn register(address: String, data_only: bool, process: SlaveProcess) -> Arc<Link> {
        let link = Arc::new(Link {
            address: address.clone(),
            process,
        });
        let mut links = links().lock().unwrap_or_else(|p| p.into_inner());
        links.retain(|_, weak| weak.strong_count() > 0);
        links.insert((address, data_only), Arc::downgrade(&link));
        link
    }

    /// The link to `address`, connecting as a client if there is none that
    /// still works (a host restarted at the same address gets a new one).
    fn to(address: &str, data_only: bool) -> Result<Arc<Link>, Error> {
        let known = {
            let links = links().lock().unwrap_or_else(|p| p.into_inner());
            links
                .get(&(address.to_string(), data_only))
                .and_then(Weak::upgrade)
                .filter(|link| link.process.is_alive())
        };
        if let Some(link) = known {
            return Ok(link);
        }
        let process = processional_process::ClientBuilder::new(address)?
            .data_only(data_only)
            .connect()?;
        Ok(Link::register(address.to_string(), data_only, process))
    }

    /// Spawns a host server.
    fn spawn() -> Result<Arc<Link>, Error> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let dir = processional_process::runtime_dir()?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "queue-{}-{}-{nanos:x}.sock",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let address = format!("unix:{}", dir.join(name).display());
        let process = processional_process::server(&address)?;
        Ok(Link::register(address, false, process))
    }
}

/// Options of a new queue: bounded or not, explicit acknowledgement, where
/// it is hosted.
///
/// ```
/// use processional_channel::{Queue, QueueBuilder, Request, SendError};
/// use std::time::Duration;
/// # fn main() -> Result<(), processional_channel::Error> {
/// let queue: Queue<u32> = QueueBuilder::new()
///     .capacity(1)
///     .send_timeout(Duration::from_millis(50))
///     .build()?;
/// queue.send(Request::Do, Some(1))?;
/// match queue.send(Request::Do, Some(2)) {
///     Err(SendError::Full(message)) => assert_eq!(message.data, Some(2)),
///     other => panic!("{other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct QueueBuilder {
    capacity: Option<usize>,
    explicit_ack: bool,
    send_timeout: Option<Duration>,
    host: Option<String>,
}

impl QueueBuilder {
    /// An unbounded queue with implicit acknowledgement, hosted by a server
    /// started for it.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most `capacity` messages held; a send to a full queue waits
    /// (see [`send_timeout`](Self::send_timeout)).
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Whether [`Queue::join`] waits for every message to be acknowledged
    /// with [`Queue::task_done`] (explicit), rather than received.
    ///
    /// ```
    /// use processional_channel::{Queue, QueueBuilder, Request};
    /// # fn main() -> Result<(), processional_channel::Error> {
    /// let queue: Queue<u32> = QueueBuilder::new().explicit_ack(true).build()?;
    /// queue.send(Request::Do, Some(1))?;
    /// let job = queue.recv()?;
    /// assert_eq!(job.data, Some(1));
    /// queue.task_done()?; // handled: now `join` returns
    /// queue.join()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn explicit_ack(mut self, explicit: bool) -> Self {
        self.explicit_ack = explicit;
        self
    }

    /// How long a send to a full bounded queue waits before it fails with
    /// [`SendError::Full`] (default: as long as it takes).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = Some(timeout);
        self
    }

    /// Hosts the queue on the running server at `address` (of this same
    /// program) instead of starting one.
    pub fn host(mut self, address: &str) -> Self {
        self.host = Some(address.to_string());
        self
    }

    /// Makes the queue.
    pub fn build<T>(self) -> Result<Queue<T>, Error> {
        let link = match &self.host {
            Some(address) => Link::to(address, false)?,
            None => Link::spawn()?,
        };
        let config = Config {
            capacity: self.capacity.map(|c| c as u64),
            explicit_ack: self.explicit_ack,
        };
        let id = link
            .process
            .invoke_with(config, func!(|config: Config| crate::host::create(config)))?
            .ok_or_else(|| Error::Io {
                context: "the queue's host could not draw a random queue id",
                source: std::io::Error::other("the OS gave no random bytes"),
            })?;
        Ok(Queue {
            link,
            id,
            send_wait: match self.send_timeout {
                Some(t) => Wait::Millis(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
                None => Wait::Forever,
            },
            _messages: PhantomData,
        })
    }
}

/// A handle to a hosted queue of [`Message<T>`]s.
///
/// Cloneable, and serializable: passed to a slave or a client as a call
/// argument, it reaches the same queue from there (the receiving process
/// connects to the queue's host, authenticated with the key file the host
/// keeps beside its socket). A queue started for you lives as long as some
/// process holds a handle to it (its host, a server, stops once it serves
/// nobody), and at most as long as the process that created it (the host
/// dies with its master).
///
/// Receives wait in the host, holding no thread there and polling nowhere,
/// until a message they take arrives, however many messages for others
/// come first; a message nobody took stays in place.
///
/// ```
/// use processional_channel::{Message, Queue, RecvError, Request};
/// use processional_process::func;
/// # fn main() -> Result<(), processional_channel::Error> {
/// let queue = Queue::<String>::new()?;
/// let me = std::process::id();
/// queue.send_to(me + 1, Request::Do, Some("for someone else".into()))?;
/// queue.send(Request::User(7), Some("for anyone".into()))?;
/// assert!(queue.try_recv_by(processional_channel::Pick::To(me))?.is_none()); // empty is not an error
///
/// // "For me" skips the message for someone else, which stays in place.
/// assert_eq!(queue.recv_for_me()?.data.as_deref(), Some("for anyone"));
/// // A predicate shipped to the host.
/// let other = queue.recv_where(func!(|m: &Message<String>| m.request == Request::Do))?;
/// assert_eq!(other.recipient, Some(me + 1));
///
/// queue.join()?; // every message sent was received
/// queue.close()?;
/// assert!(matches!(queue.recv(), Err(RecvError::Closed)));
/// # Ok(())
/// # }
/// ```
pub struct Queue<T> {
    link: Arc<Link>,
    id: u128,
    send_wait: Wait,
    _messages: PhantomData<fn(T) -> T>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            link: self.link.clone(),
            id: self.id,
            send_wait: self.send_wait,
            _messages: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("host", &self.link.address)
            .field("id", &self.id)
            .finish()
    }
}

fn millis(timeout: Duration) -> Wait {
    Wait::Millis(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
}

fn to_wire<T: Serialize>(message: &Message<T>) -> Result<WireMessage, processional_task::Error> {
    Ok(Message {
        request: message.request,
        sender: message.sender,
        recipient: message.recipient,
        data: match &message.data {
            Some(data) => Some(ByteBuf::from(codec::encode(data)?)),
            None => None,
        },
    })
}

fn from_wire<T: DeserializeOwned>(
    message: WireMessage,
) -> Result<Message<T>, processional_task::Error> {
    Ok(Message {
        request: message.request,
        sender: message.sender,
        recipient: message.recipient,
        data: match message.data {
            Some(bytes) => Some(codec::decode(&bytes)?),
            None => None,
        },
    })
}

/// The error of a send call that got no answer.
pub(crate) fn send_failure(error: processional_task::Error) -> Error {
    if error.is_worker_lost() {
        Error::Disconnected
    } else {
        Error::from(error)
    }
}

fn recv_failure(error: processional_task::Error) -> RecvError {
    if error.is_worker_lost() {
        RecvError::Disconnected
    } else {
        RecvError::Failed(Box::new(error))
    }
}

impl<T> Queue<T> {
    /// A new unbounded queue, hosted by a server started for it.
    pub fn new() -> Result<Self, Error> {
        QueueBuilder::new().build()
    }

    /// A new queue holding at most `capacity` messages.
    pub fn bounded(capacity: usize) -> Result<Self, Error> {
        QueueBuilder::new().capacity(capacity).build()
    }

    /// The queue `id` hosted at `address`, reached by its data operations
    /// alone (the queue's services): from a program of another build that
    /// holds the host's key (`PROCESSIONAL_KEY`, or the key file beside a
    /// unix socket of this user). Everything but
    /// [`recv_where`](Self::recv_where), which ships code, works.
    ///
    /// The sending program tells the address and id, say with
    /// [`host`](Self::host) and [`id`](Self::id). See [both sides run the
    /// same build](https://docs.rs/processional/latest/processional/#both-sides-run-the-same-build)
    /// for why only services cross builds.
    ///
    /// ```
    /// use processional_channel::{Queue, Request};
    /// # fn main() -> Result<(), processional_channel::Error> {
    /// let queue = Queue::<u32>::new()?;
    /// // In another program, given the address, the id and the key:
    /// let there = Queue::<u32>::open_data_only(queue.host(), queue.id())?;
    /// there.send(Request::Do, Some(5))?;
    /// assert_eq!(queue.recv()?.data, Some(5));
    /// # Ok(())
    /// # }
    /// ```
    pub fn open_data_only(address: &str, id: u128) -> Result<Self, Error> {
        Ok(Queue {
            link: Link::to(address, true)?,
            id,
            send_wait: Wait::Forever,
            _messages: PhantomData,
        })
    }

    /// The address of the process hosting the queue.
    pub fn host(&self) -> &str {
        &self.link.address
    }

    /// The queue's id on its host: 128 random bits, drawn by the host from
    /// the OS when it made the queue.
    ///
    /// The id is what lets a program use the queue: anyone who holds the
    /// host's key and the id can send, receive, close and join, so give it
    /// only to those meant to. It cannot be guessed from the ids of other
    /// queues, and the host looks it up in full.
    pub fn id(&self) -> u128 {
        self.id
    }

    fn status(&self, status: Status) -> Result<u64, Error> {
        match status {
            Status::Ok(n) => Ok(n),
            Status::NothingToAcknowledge => Err(Error::TaskDone(crate::core::NothingToAcknowledge)),
            Status::NoQueue => Err(Error::Disconnected),
        }
    }

    /// How many messages the queue holds.
    pub fn len(&self) -> Result<usize, Error> {
        let status = call(&self.link, services::LEN, self.id)?;
        self.status(status).map(|n| n as usize)
    }

    /// How many calls wait in the host: receivers with nothing for them yet,
    /// senders waiting for room, joiners.
    pub fn waiting(&self) -> Result<usize, Error> {
        let status = call(&self.link, services::WAITING, self.id)?;
        self.status(status).map(|n| n as usize)
    }

    /// Whether the queue holds no message.
    pub fn is_empty(&self) -> Result<bool, Error> {
        self.len().map(|n| n == 0)
    }

    /// Waits until every message sent was received (or, with explicit
    /// acknowledgement, acknowledged with [`task_done`](Self::task_done)).
    /// Waits in the host, polling nowhere.
    pub fn join(&self) -> Result<(), Error> {
        let status = call(&self.link, services::JOIN, self.id)?;
        self.status(status).map(drop)
    }

    /// Closes the queue: sends fail with [`SendError::Closed`] from now on,
    /// and every receiver gets [`RecvError::Closed`] once it drained what
    /// is meant for it.
    pub fn close(&self) -> Result<(), Error> {
        let status = call(&self.link, services::CLOSE, self.id)?;
        self.status(status).map(drop)
    }

    /// Acknowledges one received message (queues built with
    /// [`explicit_ack`](QueueBuilder::explicit_ack)).
    pub fn task_done(&self) -> Result<(), Error> {
        let status = call(&self.link, services::TASK_DONE, self.id)?;
        self.status(status).map(drop)
    }
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// Sends a message of this process to anyone. On a full bounded queue
    /// it waits as the queue was built to, then fails with
    /// [`SendError::Full`] handing the message back.
    pub fn send(&self, request: Request, data: Option<T>) -> Result<(), SendError<T>> {
        self.send_message(Message::new(request, data))
    }

    /// Sends a message of this process to the process `pid`.
    pub fn send_to(&self, pid: u32, request: Request, data: Option<T>) -> Result<(), SendError<T>> {
        self.send_message(Message::new(request, data).to(pid))
    }

    /// Sends `message` as it is (its sender may be explicit).
    pub fn send_message(&self, message: Message<T>) -> Result<(), SendError<T>> {
        self.send_waiting(message, self.send_wait)
    }

    /// Sends `message`, waiting at most `timeout` for room.
    pub fn send_timeout(&self, message: Message<T>, timeout: Duration) -> Result<(), SendError<T>> {
        self.send_waiting(message, millis(timeout))
    }

    /// Sends `message` if there is room now; otherwise hands it back in
    /// [`SendError::Full`] at once.
    pub fn try_send(&self, message: Message<T>) -> Result<(), SendError<T>> {
        self.send_waiting(message, Wait::Now)
    }

    fn send_waiting(&self, message: Message<T>, wait: Wait) -> Result<(), SendError<T>> {
        let wire = match to_wire(&message) {
            Ok(wire) => wire,
            Err(source) => {
                return Err(SendError::Failed {
                    message,
                    source: Box::new(source),
                });
            }
        };
        let args = SendArgs {
            queue: self.id,
            messages: vec![wire],
            wait,
        };
        let reply = call(&self.link, services::SEND, args);
        match reply {
            Ok(SendReply::Accepted) => Ok(()),
            Ok(SendReply::Full(_)) => Err(SendError::Full(message)),
            Ok(SendReply::Closed(_)) => Err(SendError::Closed(message)),
            Ok(SendReply::NoQueue(_)) => Err(SendError::Disconnected(message)),
            Err(e) if e.is_worker_lost() => Err(SendError::Disconnected(message)),
            Err(source) => Err(SendError::Failed {
                message,
                source: Box::new(source),
            }),
        }
    }

    /// A batch send on its way: the task of its answer.
    pub(crate) fn send_batch_task(
        &self,
        messages: &[Message<T>],
    ) -> Result<processional_task::Task<SendReply>, processional_task::Error> {
        let wire = messages
            .iter()
            .map(to_wire)
            .collect::<Result<Vec<_>, _>>()?;
        let args = SendArgs {
            queue: self.id,
            messages: wire,
            wait: Wait::Now,
        };
        Ok(self.link.process.call_service(services::SEND, args))
    }

    /// Sends many messages in one round trip, in order, without waiting for
    /// room: on a full or closed queue the messages from the first refused
    /// one on come back ([`BatchSendError::unsent`]). If the call gets no
    /// answer (the host is gone, the call failed), the host may have
    /// accepted any of them: they come back as [`BatchSendError::unknown`].
    pub fn send_batch(&self, messages: Vec<Message<T>>) -> Result<(), BatchSendError<T>> {
        let mut wire = Vec::with_capacity(messages.len());
        for message in &messages {
            match to_wire(message) {
                Ok(w) => wire.push(w),
                Err(source) => {
                    return Err(BatchSendError {
                        unknown: Vec::new(),
                        unsent: messages,
                        reason: Error::from(source),
                    });
                }
            }
        }
        let total = messages.len();
        let args = SendArgs {
            queue: self.id,
            messages: wire,
            wait: Wait::Now,
        };
        let reply = call(&self.link, services::SEND, args);
        let (back, reason) = match reply {
            Ok(SendReply::Accepted) => return Ok(()),
            Ok(SendReply::Full(back)) => (back.len(), Error::Full),
            Ok(SendReply::Closed(back)) => (back.len(), Error::Closed),
            Ok(SendReply::NoQueue(_)) => (total, Error::Disconnected),
            // No answer: the host may have accepted any part of the batch.
            Err(e) => {
                return Err(BatchSendError {
                    unknown: messages,
                    unsent: Vec::new(),
                    reason: send_failure(e),
                });
            }
        };
        let mut unsent = messages;
        let sent = unsent.len().saturating_sub(back);
        unsent.drain(..sent);
        Err(BatchSendError {
            unknown: Vec::new(),
            unsent,
            reason,
        })
    }

    fn receive(&self, pick: Pick, max: u32, wait: Wait) -> Result<Vec<Message<T>>, RecvError> {
        let args = RecvArgs {
            queue: self.id,
            pick,
            max,
            wait,
        };
        let reply = call(&self.link, services::RECV, args).map_err(recv_failure)?;
        self.unpack(reply)
    }

    fn unpack(&self, reply: RecvReply) -> Result<Vec<Message<T>>, RecvError> {
        match reply {
            RecvReply::Got(messages) => messages
                .into_iter()
                .map(|m| from_wire(m).map_err(|e| RecvError::Failed(Box::new(e))))
                .collect(),
            RecvReply::Empty => Ok(Vec::new()),
            RecvReply::TimedOut => Err(RecvError::Timeout),
            RecvReply::Closed => Err(RecvError::Closed),
            RecvReply::NoQueue => Err(RecvError::Disconnected),
        }
    }

    fn one(&self, pick: Pick, wait: Wait) -> Result<Option<Message<T>>, RecvError> {
        Ok(self.receive(pick, 1, wait)?.into_iter().next())
    }

    /// Waits for the next message `pick` takes. After [`close`](Self::close)
    /// and once nothing is left for it: [`RecvError::Closed`].
    pub fn recv_by(&self, pick: Pick) -> Result<Message<T>, RecvError> {
        self.one(pick, Wait::Forever)?.ok_or(RecvError::Closed)
    }

    /// Waits at most `timeout` for the next message `pick` takes.
    pub fn recv_by_timeout(&self, pick: Pick, timeout: Duration) -> Result<Message<T>, RecvError> {
        self.one(pick, millis(timeout))?.ok_or(RecvError::Timeout)
    }

    /// The next message `pick` takes if there is one now, `Ok(None)` if not.
    pub fn try_recv_by(&self, pick: Pick) -> Result<Option<Message<T>>, RecvError> {
        self.one(pick, Wait::Now)
    }

    /// Waits for the next message, whoever it is for.
    pub fn recv(&self) -> Result<Message<T>, RecvError> {
        self.recv_by(Pick::Any)
    }

    /// Waits at most `timeout` for the next message, whoever it is for.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message<T>, RecvError> {
        self.recv_by_timeout(Pick::Any, timeout)
    }

    /// The next message if there is one now (`Ok(None)`: empty).
    pub fn try_recv(&self) -> Result<Option<Message<T>>, RecvError> {
        self.try_recv_by(Pick::Any)
    }

    /// Waits for the next message addressed to this process or to nobody in
    /// particular.
    ///
    /// The filtered receives (`recv_for_me`, `recv_addressed_to`, `recv_from`,
    /// `recv_kind`, `recv_by`) take the first message that matches and leave
    /// the others in place, in order:
    ///
    /// ```
    /// use processional_channel::{Message, Queue, Request};
    /// # fn main() -> Result<(), processional_channel::Error> {
    /// let me = std::process::id();
    /// let queue = Queue::<u32>::new()?;
    /// queue.send_to(me + 1, Request::Do, Some(1))?; // for another
    /// queue.send_message(Message::new(Request::Finished, Some(2)).with_sender(7))?;
    /// queue.send_to(me, Request::Do, Some(3))?;
    /// assert_eq!(queue.recv_for_me()?.data, Some(2)); // to nobody in particular: mine too
    /// assert_eq!(queue.recv_addressed_to(me)?.data, Some(3));
    /// assert_eq!(queue.len()?, 1); // the other's message stayed
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_for_me(&self) -> Result<Message<T>, RecvError> {
        self.recv_by(Pick::for_me())
    }

    /// Waits for the next message addressed to `pid` exactly.
    pub fn recv_addressed_to(&self, pid: u32) -> Result<Message<T>, RecvError> {
        self.recv_by(Pick::To(pid))
    }

    /// Waits for the next message from `pid`.
    ///
    /// ```
    /// use processional_channel::{Message, Queue, Request};
    /// # fn main() -> Result<(), processional_channel::Error> {
    /// let queue = Queue::<u32>::new()?;
    /// queue.send(Request::Do, Some(1))?;
    /// queue.send_message(Message::new(Request::Do, Some(2)).with_sender(7))?;
    /// assert_eq!(queue.recv_from(7)?.data, Some(2));
    /// assert_eq!(queue.recv_from(std::process::id())?.data, Some(1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_from(&self, pid: u32) -> Result<Message<T>, RecvError> {
        self.recv_by(Pick::From(pid))
    }

    /// Waits for the next message of this kind.
    ///
    /// ```
    /// use processional_channel::{Queue, Request};
    /// # fn main() -> Result<(), processional_channel::Error> {
    /// let queue = Queue::<u32>::new()?;
    /// queue.send(Request::Do, Some(1))?;
    /// queue.send(Request::Finished, Some(2))?;
    /// assert_eq!(queue.recv_kind(Request::Finished)?.data, Some(2));
    /// assert_eq!(queue.recv()?.data, Some(1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_kind(&self, request: Request) -> Result<Message<T>, RecvError> {
        self.recv_by(Pick::Kind(request))
    }

    /// Waits for the next message `pick` takes, and takes up to `max` (at
    /// least one) that are there, in one round trip: about 8 MiB of
    /// messages at most (the first message whatever its size), so that the
    /// answer fits in one frame; the rest stays in place.
    ///
    /// A batch takes every message `pick` accepts, poison pills included:
    /// address each child's `Die` to it (and pick [`Pick::for_me`]) so that
    /// no batch takes another child's.
    pub fn recv_batch(&self, pick: Pick, max: u32) -> Result<Vec<Message<T>>, RecvError> {
        let got = self.receive(pick, max.max(1), Wait::Forever)?;
        if got.is_empty() {
            Err(RecvError::Closed)
        } else {
            Ok(got)
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> Queue<T> {
    /// The next message `pick` takes, for async code: the receive waits in
    /// the host like [`recv_by`](Queue::recv_by), and the future is woken by
    /// the connection's reader (any executor). The receive is sent at once,
    /// when this is called, not at the first poll.
    ///
    /// Dropping the future before it is ready (a `select!` arm that lost, a
    /// timeout) cancels the receive: the host forgets it and hands the next
    /// message to another receiver, leaving it in place if there is none.
    /// One window stays, at most once: if the host handed a message to this
    /// receive before the cancel reached it (the future dropped while the
    /// reply was already on its way), that message is received by nobody,
    /// as one received by a consumer killed before it read the reply.
    /// Where every message must be handled, drop no receive that may have
    /// got one, or use a queue with explicit acknowledgement and check
    /// [`join`](Queue::join).
    ///
    /// ```
    /// use processional_channel::{Pick, Queue, Request};
    /// # fn main() -> Result<(), processional_channel::Error> {
    /// let queue = Queue::<u8>::new()?;
    /// let next = queue.recv_by_async(Pick::for_me());
    /// queue.send(Request::Do, Some(1))?;
    /// let message = pollster::block_on(next)?;
    /// assert_eq!(message.data, Some(1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_by_async(
        &self,
        pick: Pick,
    ) -> impl std::future::Future<Output = Result<Message<T>, RecvError>> + Send + 'static {
        let args = RecvArgs {
            queue: self.id,
            pick,
            max: 1,
            wait: Wait::Forever,
        };
        let task = CancelOnDrop {
            task: self
                .link
                .process
                .call_service::<_, RecvReply>(services::RECV, args),
            done: false,
        };
        async move {
            match task.await.map_err(recv_failure)? {
                RecvReply::Got(messages) => match messages.into_iter().next() {
                    Some(m) => from_wire(m).map_err(|e| RecvError::Failed(Box::new(e))),
                    None => Err(RecvError::Closed),
                },
                RecvReply::Empty | RecvReply::Closed => Err(RecvError::Closed),
                RecvReply::TimedOut => Err(RecvError::Timeout),
                RecvReply::NoQueue => Err(RecvError::Disconnected),
            }
        }
    }
}

/// A call's task that cancels the call if it is dropped before it is
/// ready: dropping a [`Task`](processional_task::Task) only detaches it, and
/// a receive left waiting in the host would take the next message.
struct CancelOnDrop<R> {
    task: processional_task::Task<R>,
    done: bool,
}

impl<R> std::future::Future for CancelOnDrop<R> {
    type Output = Result<R, processional_task::Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let polled = std::pin::Pin::new(&mut self.task).poll(cx);
        if polled.is_ready() {
            self.done = true;
        }
        polled
    }
}

impl<R> Drop for CancelOnDrop<R> {
    fn drop(&mut self) {
        if !self.done {
            // Sends a `Cancel` for the call; the host counts a cancelled
            // receiver as gone.
            self.task.cancel();
        }
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Queue<T> {
    /// Waits for the first message `predicate` accepts. The predicate runs
    /// next to the queue, in its host (so the host must be this same
    /// program); messages it refuses stay in place, unchanged, in order.
    /// A message on which it panics counts as refused (and a message whose
    /// data does not decode as a `T`).
    ///
    /// Finding the message scans the queue in order, unlike the built-in
    /// filters ([`Pick`]), which find it at once.
    ///
    /// The predicate is shipped code: it captures nothing and needs the same
    /// build (see [how it works and its limitations](https://docs.rs/processional/latest/processional/#how-it-works-and-limitations));
    /// a [data-only](Self::open_data_only) handle cannot use it.
    ///
    /// ```
    /// use processional_channel::{Message, Queue, Request};
    /// use processional_process::func;
    /// # fn main() -> Result<(), processional_channel::Error> {
    /// let queue = Queue::<u32>::new()?;
    /// for x in [3, 8, 5] {
    ///     queue.send(Request::Do, Some(x))?;
    /// }
    /// let big = queue.recv_where(func!(|m: &Message<u32>| m.data.is_some_and(|x| x > 4)))?;
    /// assert_eq!(big.data, Some(8));
    /// assert_eq!(queue.recv()?.data, Some(3)); // the others stayed, in order
    /// # Ok(())
    /// # }
    /// ```
    pub fn recv_where<F>(&self, predicate: Func<F>) -> Result<Message<T>, RecvError>
    where
        F: Fn(&Message<T>) -> bool + Copy + Send + Sync + 'static,
    {
        self.recv_where_waiting(predicate, Wait::Forever)?
            .ok_or(RecvError::Closed)
    }

    /// [`recv_where`](Self::recv_where) for at most `timeout`.
    pub fn recv_where_timeout<F>(
        &self,
        predicate: Func<F>,
        timeout: Duration,
    ) -> Result<Message<T>, RecvError>
    where
        F: Fn(&Message<T>) -> bool + Copy + Send + Sync + 'static,
    {
        self.recv_where_waiting(predicate, millis(timeout))?
            .ok_or(RecvError::Timeout)
    }

    fn recv_where_waiting<F>(
        &self,
        predicate: Func<F>,
        wait: Wait,
    ) -> Result<Option<Message<T>>, RecvError>
    where
        F: Fn(&Message<T>) -> bool + Copy + Send + Sync + 'static,
    {
        let shipped = predicate.pass_to(func!(|predicate: Func<F>,
                                               (queue, wait): (u128, Wait)|
         -> Later<RecvReply> {
            let predicate = *predicate.get();
            let filter: Filter<ByteBuf> = Filter::Where(Box::new(move |m: &WireMessage| {
                // It runs under the queue's lock, also for other
                // clients' sends (a waiting receiver's filter is tried
                // on each new message): a panic (of the predicate, or
                // of decoding a `T`) is its receiver's bug, answered
                // `false`, never an unwinding send that loses its
                // message.
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let data = match &m.data {
                        Some(bytes) => match codec::decode::<T>(bytes) {
                            Ok(data) => Some(data),
                            Err(_) => return false,
                        },
                        None => None,
                    };
                    predicate(&Message {
                        request: m.request,
                        sender: m.sender,
                        recipient: m.recipient,
                        data,
                    })
                }))
                .unwrap_or(false)
            }));
            crate::host::recv_where(queue, filter, wait)
        }));
        let reply = self
            .link
            .process
            .invoke_later_with((self.id, wait), shipped)
            .map_err(recv_failure)?;
        Ok(self.unpack(reply)?.into_iter().next())
    }
}

impl Pick {
    /// Addressed to this process, or to nobody in particular.
    pub fn for_me() -> Pick {
        Pick::ForPid(std::process::id())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename = "Queue")]
struct Wire {
    host: String,
    id: u128,
    send_wait: Wait,
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            host: self.link.address.clone(),
            id: self.id,
            send_wait: self.send_wait,
        }
        .serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let wire = Wire::deserialize(deserializer)?;
        let link = Link::to(&wire.host, false).map_err(|e| {
            D::Error::custom(format!("cannot reach the queue's host {}: {e}", wire.host))
        })?;
        Ok(Queue {
            link,
            id: wire.id,
            send_wait: wire.send_wait,
            _messages: PhantomData,
        })
    }
}
