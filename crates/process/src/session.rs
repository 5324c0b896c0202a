//! The calling side of a connection: send calls, route replies to tasks.
//!
//! There is no reader thread on the hot path. A thread that waits for a reply
//! becomes the connection's reader itself (leader/follower): it reads replies,
//! completes whichever tasks they belong to, and gives the reader role up as
//! soon as its own task is complete, waking a follower to take over. A task
//! nobody blocks on (a polled future, a detached task) gets a pump thread
//! that reads until no call is pending any more.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use processional_proto::{
    Call, FunctionRef, Message, Outcome, Payload, RunMode, ServiceCall, TaskId,
};
use processional_task::{Driver, Error, ExitReason, Task};
use processional_transport::{
    Connection, ConnectionReader, ConnectionWriter, PeerInfo, Received, ShutdownHandle,
};
use serde::de::DeserializeOwned;

use crate::error::Broken;
use crate::function::IdMap;
use crate::payload::{self, Outgoing};
use crate::stream::Inbox;
use processional_shm::Loan;

/// This process's client sessions, by server address.
fn clients() -> &'static Mutex<HashMap<String, Weak<Session>>> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, Weak<Session>>>> = OnceLock::new();
    CLIENTS.get_or_init(Mutex::default)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many pongs wait at most for the writer (see [`Session::pongs`]).
const MAX_WAITING_PONGS: usize = 64;

/// A raw outcome: the payload of a value with its descriptors, or the error.
pub(crate) type RawOutcome = Result<(Payload, Vec<OwnedFd>), Error>;

/// Completes one pending call with its raw outcome.
type Completion = Box<dyn FnOnce(RawOutcome) + Send>;

/// The segment lent for a call's arguments, until its reply.
pub(crate) type Lent = Arc<Mutex<Option<Loan>>>;

/// A call waiting for its reply.
enum Pending {
    /// An ordinary call: the reply completes it.
    Call(Completion),
    /// A call that streams: items go to the inbox until the reply ends it.
    Stream(Arc<Inbox>),
}

impl Pending {
    fn complete(self, outcome: RawOutcome) {
        match self {
            Pending::Call(completion) => completion(outcome),
            Pending::Stream(inbox) => inbox.end(outcome),
        }
    }
}

/// Takes the segment lent for a call's arguments back for reuse, once the
/// callee replied (it no longer reads it then).
fn reclaim(lent: Option<Lent>, outcome: &RawOutcome) {
    if let (Some(lent), Ok(_)) = (lent, outcome)
        && let Some(loan) = lent.try_lock().ok().and_then(|mut l| l.take())
    {
        drop(loan.reclaim());
    }
}

/// Tells how the peer ended, when the session knows (a child process).
pub(crate) trait ExitProbe: Send + Sync {
    /// Waits a little for the peer to end and reports how it did.
    fn exit_reason(&self) -> Option<ExitReason>;
}

/// How a connection broke, shared by the errors of every call it failed.
type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why the session can no longer be used.
#[derive(Clone, Debug)]
enum Death {
    Exited(ExitReason),
    Disconnected(Option<Cause>),
    Shutdown,
}

impl Death {
    fn error(&self) -> Error {
        match self {
            Death::Exited(reason) => Error::Exited(*reason),
            Death::Disconnected(cause) => Error::Disconnected {
                source: cause.clone(),
            },
            Death::Shutdown => Error::Stopped,
        }
    }
}

/// What a call runs in the peer.
#[derive(Debug)]
pub(crate) enum Target {
    /// A function of this build, and how to run it.
    Function(FunctionRef, RunMode),
    /// A service the peer registered under this name (queued).
    Service(String),
}

impl Target {
    fn message(self, task: TaskId, args: Payload) -> Message {
        match self {
            Target::Function(function, mode) => Message::Call(Call {
                task,
                function,
                mode,
                args,
            }),
            Target::Service(service) => Message::ServiceCall(ServiceCall {
                task,
                service,
                args,
            }),
        }
    }
}

/// One connection to a process that serves our calls.
pub(crate) struct Session {
    id: u64,
    peer: PeerInfo,
    writer: Mutex<ConnectionWriter>,
    reader: Mutex<ConnectionReader>,
    pending: Mutex<IdMap<TaskId, Pending>>,
    next_task: AtomicU64,
    death: OnceLock<Death>,
    /// Bumped whenever the reader role is given up or a reply is dispatched
    /// while followers wait; `epoch_lock` pairs with `epoch_changed`.
    epoch: AtomicU64,
    epoch_lock: Mutex<()>,
    epoch_changed: Condvar,
    followers: AtomicUsize,
    pump_running: AtomicBool,
    shutdown_acknowledged: AtomicBool,
    /// Calls whose value came in a segment we have read: the server may
    /// reuse those segments. Sent ([`Message::Reclaim`]) ahead of the next
    /// frame, so no frame of its own wakes the server.
    reclaims: Mutex<Vec<TaskId>>,
    /// Pings read while a write was in progress (inside its drain, or
    /// beside it): answered ahead of the next frame, since the reader may
    /// not wait for the writer it may itself hold.
    pongs: Mutex<Vec<u64>>,
    /// Shuts the socket down without the writer, which the thread that
    /// finds the connection broken may hold (reading inside its write).
    closer: ShutdownHandle,
    unix: bool,
    exit_probe: OnceLock<Box<dyn ExitProbe>>,
    /// The address of the server at the other end, for handles that move to
    /// other clients of it.
    origin: OnceLock<String>,
    me: Weak<Session>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer_pid", &self.peer.hello.pid)
            .field("pending", &lock(&self.pending).len())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session over an authenticated connection.
    pub(crate) fn new(connection: Connection, peer: PeerInfo) -> Arc<Session> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let unix = connection.is_unix();
        let (reader, writer) = connection.split();
        let closer = writer.shutdown_handle();
        Arc::new_cyclic(|me| Session {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            pending: Mutex::new(IdMap::default()),
            next_task: AtomicU64::new(1),
            death: OnceLock::new(),
            epoch: AtomicU64::new(0),
            epoch_lock: Mutex::new(()),
            epoch_changed: Condvar::new(),
            followers: AtomicUsize::new(0),
            pump_running: AtomicBool::new(false),
            shutdown_acknowledged: AtomicBool::new(false),
            reclaims: Mutex::new(Vec::new()),
            pongs: Mutex::new(Vec::new()),
            closer,
            unix,
            exit_probe: OnceLock::new(),
            origin: OnceLock::new(),
            me: me.clone(),
        })
    }

    /// Lets the session report the exit status of a child when it dies.
    pub(crate) fn set_exit_probe(&self, probe: Box<dyn ExitProbe>) {
        let _ = self.exit_probe.set(probe);
    }

    /// Records the address of the server this session is connected to, and
    /// lists the session for reuse by handles arriving from elsewhere.
    pub(crate) fn set_origin(self: &Arc<Self>, address: String) {
        let _ = self.origin.set(address.clone());
        let mut clients = clients().lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|_, session| session.strong_count() > 0);
        clients
            .entry(address)
            .or_insert_with(|| Arc::downgrade(self));
    }

    /// The address of the server at the other end, if it is one.
    pub(crate) fn origin(&self) -> Option<&str> {
        self.origin.get().map(String::as_str)
    }

    /// A live session to the server at `address`, if this process has one.
    pub(crate) fn to_server(address: &str) -> Option<Arc<Session>> {
        clients()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(address)
            .and_then(Weak::upgrade)
            .filter(|session| session.is_connected())
    }

    /// A number unique to this session within the process.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// What the peer said about itself in the handshake.
    pub(crate) fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Whether the connection still works.
    pub(crate) fn is_connected(&self) -> bool {
        self.death.get().is_none()
    }

    /// The error every call gets once the session is dead.
    pub(crate) fn death_error(&self) -> Option<Error> {
        self.death.get().map(Death::error)
    }

    /// Whether descriptors can travel on this connection.
    pub(crate) fn is_unix(&self) -> bool {
        self.unix
    }

    /// Sends a call; its reply completes the returned task with a `R`.
    pub(crate) fn call<R>(
        &self,
        function: FunctionRef,
        mode: RunMode,
        args: Outgoing,
    ) -> Result<Task<R>, Error>
    where
        R: DeserializeOwned + Send + 'static,
    {
        self.call_to(Target::Function(function, mode), args)
    }

    /// Sends a call of `target`; its reply completes the returned task.
    pub(crate) fn call_to<R>(&self, target: Target, args: Outgoing) -> Result<Task<R>, Error>
    where
        R: DeserializeOwned + Send + 'static,
    {
        if let Some(error) = self.death_error() {
            return Err(error);
        }
        let me = self.me.upgrade().expect("a session in use is alive");
        let task_id = self.next_task.fetch_add(1, Ordering::Relaxed);
        let (task, completer) = Task::pending_driven(me.clone() as Arc<dyn Driver>);
        let weak = self.me.clone();
        completer.token().on_cancel(Box::new(move || {
            if let Some(session) = weak.upgrade() {
                let _ = session.send(&Message::Cancel { task: task_id });
            }
        }));
        let weak = self.me.clone();
        self.send_call(task_id, target, args, |lent| {
            Pending::Call(Box::new(move |outcome: RawOutcome| {
                reclaim(lent, &outcome);
                let value = outcome.and_then(|(payload, fds)| {
                    let in_segment = matches!(payload, Payload::Segment { .. });
                    // Whichever thread reads this reply decodes it, maybe one
                    // waiting for another task, or inside a write: a
                    // `Deserialize` that panics fails this task alone.
                    let value = processional_task::catch_panic(|| {
                        crate::remote::decoding_reply(|| payload::decode::<R>(payload, fds))
                    })
                    .and_then(|value| value);
                    if in_segment {
                        // Read and unmapped: the server may reuse the
                        // segment. It is told with the next frame we send,
                        // which comes before any call that could need it.
                        if let Some(session) = weak.upgrade() {
                            lock(&session.reclaims).push(task_id);
                        }
                    }
                    value
                });
                completer.complete(value);
            }))
        });
        Ok(task)
    }

    /// Sends a call that streams items into the returned inbox, until its
    /// reply ends the stream.
    pub(crate) fn call_stream(
        &self,
        function: FunctionRef,
        mode: RunMode,
        args: Outgoing,
    ) -> Result<(TaskId, Arc<Inbox>), Error> {
        self.stream_to(Target::Function(function, mode), args)
    }

    /// Sends a call of `target` that streams items into the returned inbox.
    pub(crate) fn stream_to(
        &self,
        target: Target,
        args: Outgoing,
    ) -> Result<(TaskId, Arc<Inbox>), Error> {
        if let Some(error) = self.death_error() {
            return Err(error);
        }
        let task_id = self.next_task.fetch_add(1, Ordering::Relaxed);
        let inbox = Arc::new(Inbox::default());
        let pending = inbox.clone();
        self.send_call(task_id, target, args, |lent| {
            pending.lend(lent);
            Pending::Stream(pending)
        });
        Ok((task_id, inbox))
    }

    /// Registers a call, then sends it; a call that could not be sent fails
    /// at once.
    fn send_call(
        &self,
        task_id: TaskId,
        target: Target,
        args: Outgoing,
        pending: impl FnOnce(Option<Lent>) -> Pending,
    ) {
        let Outgoing {
            payload: args,
            transfers,
            loan,
        } = args;
        // The segment lent for the arguments (large payloads only): taken
        // back for reuse when the reply arrives (the callee no longer reads it
        // then), freed otherwise.
        let loan = loan.map(|loan| Arc::new(Mutex::new(Some(loan))));
        lock(&self.pending).insert(task_id, pending(loan.clone()));
        let message = target.message(task_id, args);
        let sent = if transfers.is_empty() && loan.is_none() {
            self.send_with_fds(&message, &[])
        } else {
            let lent = loan.as_ref().map(|loan| lock(loan));
            let mut fds: Vec<BorrowedFd<'_>> = transfers.iter().map(|fd| fd.as_fd()).collect();
            fds.extend(
                lent.iter()
                    .filter_map(|lent| lent.as_ref().map(|loan| loan.as_fd())),
            );
            self.send_with_fds(&message, &fds)
        };
        if let Message::Call(Call {
            args: Payload::Inline(bytes),
            ..
        })
        | Message::ServiceCall(ServiceCall {
            args: Payload::Inline(bytes),
            ..
        }) = message
        {
            crate::codec::recycle(bytes);
        }
        if let Err(error) = sent {
            // The call never left: fail it here (the session is dead by now,
            // so the task's completion carries the reason).
            if let Some(pending) = lock(&self.pending).remove(&task_id) {
                pending.complete(Err(error));
            }
        }
    }

    /// Forgets a pending call (a stream its caller dropped): its reply and
    /// items, should they come, are ignored.
    pub(crate) fn forget(&self, task: TaskId) {
        lock(&self.pending).remove(&task);
    }

    /// Sends a message, draining replies while the socket buffer is full.
    pub(crate) fn send(&self, message: &Message) -> Result<(), Error> {
        self.send_with_fds(message, &[])
    }

    /// Sends a message with descriptors (unix sockets only).
    fn send_with_fds(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), Error> {
        if let Some(error) = self.death_error() {
            return Err(error);
        }
        let mut writer = lock(&self.writer);
        // Waiting pongs and reclaims go ahead of the message, in its write.
        let mut ahead: Vec<Message> = std::mem::take(&mut *lock(&self.pongs))
            .into_iter()
            .map(Message::Pong)
            .collect();
        ahead.extend(
            std::mem::take(&mut *lock(&self.reclaims))
                .into_iter()
                .map(|task| Message::Reclaim { task }),
        );
        let result = writer.send_after_with(&ahead, message, fds, &mut || self.drain());
        drop(writer);
        result.map_err(|error| {
            let death = self.die_from(error);
            death.error()
        })
    }

    /// Asks the peer to shut down and waits up to `timeout` for its
    /// acknowledgement.
    pub(crate) fn shutdown(&self, timeout: Duration) -> bool {
        if self.send(&Message::Shutdown).is_err() {
            return false;
        }
        let deadline = Instant::now() + timeout;
        let done = || self.shutdown_acknowledged.load(Ordering::Acquire) || !self.is_connected();
        self.drive(&done, Some(deadline));
        self.shutdown_acknowledged.load(Ordering::Acquire)
    }

    /// Closes the connection both ways (the peer sees end of stream).
    pub(crate) fn close(&self) {
        let _ = self.closer.shutdown();
    }

    fn bump_epoch(&self) {
        if self.followers.load(Ordering::Acquire) > 0 {
            self.wake_followers();
        }
    }

    fn wake_followers(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        // Taking the lock orders the bump with a follower between its check
        // and its wait, so the notification cannot fall in between.
        drop(lock(&self.epoch_lock));
        self.epoch_changed.notify_all();
    }

    /// Whether the connection still works, once what already arrived is
    /// read (without blocking): a peer that hung up on an idle connection
    /// is noticed here, not by the next call.
    pub(crate) fn check_connected(&self) -> bool {
        self.drain();
        self.is_connected()
    }

    /// Reads whatever arrived, without blocking (called while a write
    /// waits, or to check the connection). Followers waiting for what it
    /// dispatched are woken.
    fn drain(&self) {
        let Ok(mut reader) = self.reader.try_lock() else {
            return;
        };
        loop {
            match reader.try_recv() {
                Ok(Some(received)) => self.dispatch(received),
                Ok(None) => break,
                Err(error) => {
                    drop(reader);
                    // Dying wakes the followers.
                    self.die_from(error);
                    return;
                }
            }
        }
        drop(reader);
        // Even with nothing dispatched: a thread that found the role taken
        // meanwhile waits for it to be given up.
        self.bump_epoch();
    }

    fn dispatch(&self, received: Received) {
        match received.message {
            Message::Reply(reply) => {
                let pending = lock(&self.pending).remove(&reply.task);
                let Some(pending) = pending else {
                    log::debug!("processional: reply to an unknown task {}", reply.task);
                    return;
                };
                let outcome = match reply.outcome {
                    Outcome::Value(payload) => Ok((payload, received.fds)),
                    Outcome::Error(remote) => Err(Error::Remote(remote)),
                };
                pending.complete(outcome);
            }
            Message::Item { task, payload } => {
                let inbox = match lock(&self.pending).get(&task) {
                    Some(Pending::Stream(inbox)) => inbox.clone(),
                    // A stream dropped by its caller: items still in flight
                    // are dropped (task ids are never reused).
                    _ => {
                        log::debug!("processional: an item for task {task}, not a stream");
                        return;
                    }
                };
                if let Err(beyond) = inbox.push(payload, received.fds) {
                    // A peer that ignores flow control could grow the
                    // inbox without bound: it is broken.
                    self.die(Death::Disconnected(Some(Arc::new(Broken::BeyondCredit {
                        task,
                        granted: beyond.granted,
                    }))));
                }
            }
            Message::ShutdownAck => {
                self.shutdown_acknowledged.store(true, Ordering::Release);
            }
            Message::Pong(_) => {}
            Message::Ping(value) => {
                // This may run inside a write of this thread (draining), so
                // it never waits for the writer: a writer busy now sends the
                // pong ahead of its next frame. A peer that pings while it
                // does not read our frames gets no more than
                // `MAX_WAITING_PONGS` answers, not our memory.
                let mut pongs = lock(&self.pongs);
                if pongs.len() < MAX_WAITING_PONGS {
                    pongs.push(value);
                }
                drop(pongs);
                if let Ok(writer) = self.writer.try_lock() {
                    drop(writer);
                    let _ = self.send_pongs();
                }
            }
            Message::Error(remote) => {
                self.die(Death::Disconnected(Some(Arc::new(Broken::PeerReported(
                    remote,
                )))));
            }
            other => {
                self.die(Death::Disconnected(Some(Arc::new(
                    Broken::UnexpectedMessage(other.name()),
                ))));
            }
        }
    }

    fn die_from(&self, error: processional_transport::Error) -> Death {
        let death = match error {
            processional_transport::Error::Closed | processional_transport::Error::Truncated
                if self.shutdown_acknowledged.load(Ordering::Acquire) =>
            {
                Death::Shutdown
            }
            processional_transport::Error::Closed
            | processional_transport::Error::Truncated
            | processional_transport::Error::Io(_) => {
                match self.exit_probe.get().and_then(|probe| probe.exit_reason()) {
                    Some(reason) => Death::Exited(reason),
                    None => Death::Disconnected(Some(Arc::new(error))),
                }
            }
            other => Death::Disconnected(Some(Arc::new(other))),
        };
        self.die(death)
    }

    /// Marks the session dead and fails every pending call.
    fn die(&self, death: Death) -> Death {
        let death = self.death.get_or_init(|| death).clone();
        let pending: Vec<Pending> = lock(&self.pending).drain().map(|(_, p)| p).collect();
        for pending in pending {
            pending.complete(Err(death.error()));
        }
        // Not through the writer: this thread may hold it (a reply read
        // while its own write waits for room).
        let _ = self.closer.shutdown();
        self.wake_followers();
        death
    }

    /// Sends the pongs that wait, if any.
    fn send_pongs(&self) -> Result<(), Error> {
        let Some(value) = lock(&self.pongs).pop() else {
            return Ok(());
        };
        // The others go ahead of it.
        self.send(&Message::Pong(value))
    }

    fn pending_count(&self) -> usize {
        lock(&self.pending).len()
    }

    fn pump(self: Arc<Self>) {
        loop {
            let idle = || self.pending_count() == 0 || !self.is_connected();
            // No deadline: blocked in the read (or as a follower), the pump
            // wakes for a frame, or when the session dies; a pending count
            // that falls to 0 without a frame (a stream forgotten) comes
            // with the `Cancel` whose answer wakes it.
            self.drive(&idle, None);
            if idle() {
                self.pump_running.store(false, Ordering::Release);
                // A call may have been registered between the check and the
                // store: keep pumping if so and nobody else took over.
                if idle() || self.pump_running.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        }
    }
}

impl Driver for Session {
    fn drive(&self, done: &dyn Fn() -> bool, deadline: Option<Instant>) {
        loop {
            if done() {
                return;
            }
            // No clock read on the common path (a wait without deadline).
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return;
            }
            // Announce ourselves before looking at the reader role: a leader
            // that gives it up after our attempt then sees us and wakes us.
            self.followers.fetch_add(1, Ordering::AcqRel);
            let epoch = self.epoch.load(Ordering::Acquire);
            if let Ok(mut reader) = self.reader.try_lock() {
                self.followers.fetch_sub(1, Ordering::AcqRel);
                if done() {
                    drop(reader);
                    self.bump_epoch();
                    return;
                }
                if let Some(death) = self.death.get() {
                    drop(reader);
                    self.die(death.clone());
                    return;
                }
                let received = match deadline {
                    None => reader.recv().map(Some),
                    Some(deadline) => {
                        reader.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    }
                };
                match received {
                    // Dispatch before giving the role up: a thread that takes
                    // it next checks `done()` first, so it never blocks in
                    // `recv` for a reply that was already read.
                    Ok(Some(received)) => {
                        self.dispatch(received);
                        drop(reader);
                    }
                    Ok(None) => drop(reader),
                    Err(error) => {
                        drop(reader);
                        self.die_from(error);
                    }
                }
                self.bump_epoch();
                continue;
            }
            // Another thread reads: wait until it dispatches something or
            // gives the role up.
            let mut guard = lock(&self.epoch_lock);
            while self.epoch.load(Ordering::Acquire) == epoch && !done() {
                let wait = match deadline {
                    Some(deadline) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        left.min(Duration::from_millis(100))
                    }
                    None => Duration::from_millis(100),
                };
                guard = self
                    .epoch_changed
                    .wait_timeout(guard, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                if self.reader.try_lock().is_ok() {
                    break;
                }
            }
            drop(guard);
            self.followers.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn ensure_progress(&self) {
        if self.pending_count() == 0 || !self.is_connected() {
            return;
        }
        if !self.pump_running.swap(true, Ordering::AcqRel) {
            let me = self.me.upgrade().expect("a session in use is alive");
            let spawned = std::thread::Builder::new()
                .name("processional-pump".into())
                .spawn(move || me.pump());
            if spawned.is_err() {
                self.pump_running.store(false, Ordering::Release);
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Nobody can wait for a call any more: no cause to tell.
        self.die(Death::Disconnected(None));
    }
}

#[cfg(test)]
mod tests {
    use processional_proto::{Hello, PROTOCOL_VERSION, Role};

    use super::*;

    fn session() -> (Arc<Session>, Connection) {
        let (ours, theirs) = Connection::pair().unwrap();
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            fingerprint: crate::fingerprint(),
            role: Role::Server,
            pid: std::process::id(),
            host: "here".into(),
            program: "test".into(),
        };
        (Session::new(ours, PeerInfo { hello }), theirs)
    }

    /// A drain (a write that waits for room, a look at the connection)
    /// that read nothing still wakes the followers: one that found the
    /// reader role taken by it waits for the role to be given up. Before,
    /// only a drain that dispatched something woke them, so such a
    /// follower slept until its 100 ms timeout.
    #[test]
    fn a_drain_that_reads_nothing_wakes_the_followers() {
        let (session, _peer) = session();
        session.followers.fetch_add(1, Ordering::AcqRel);
        let epoch = session.epoch.load(Ordering::Acquire);
        session.drain();
        assert_ne!(session.epoch.load(Ordering::Acquire), epoch);
    }

    /// Pings read while a write is in progress wait for the writer as
    /// pongs, within a bound. Before, every one did: a peer that pinged
    /// while it did not read our frames (so the write never ended) grew
    /// our memory without bound.
    #[test]
    fn pongs_waiting_for_the_writer_are_bounded() {
        let (session, mut peer) = session();
        let writing = session.writer.lock().unwrap();
        for value in 0..1000 {
            peer.send(&Message::Ping(value)).unwrap();
        }
        session.drain();
        assert_eq!(lock(&session.pongs).len(), MAX_WAITING_PONGS);
        drop(writing);
    }
}
