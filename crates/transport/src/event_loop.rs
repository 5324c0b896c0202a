//! One thread serving many connections: accept, handshake, frames in,
//! frames out, with back-pressure.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use processional_proto::{DEFAULT_MAX_FRAME, Message, RemoteError, RemoteErrorKind};

use crate::error::Error;
use crate::handshake::{DEFAULT_HANDSHAKE_TIMEOUT, Handshake, Machine, PeerInfo, Side};
use crate::handshake_step::{self, Progress, Wire};
use crate::inbound::{Fill, Inbound};
use crate::listener::Listener;
use crate::outbound::Outbound;
use crate::sys;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION: usize = 2;

/// Frames handed to the handler from one connection before the loop turns
/// to the others.
const FRAMES_PER_TURN: usize = 256;

/// Reads of discarded input per turn for a closing connection.
const DISCARDS_PER_TURN: usize = 16;

/// Default for [`EventLoop::set_outgoing_limit`].
pub const DEFAULT_OUTGOING_LIMIT: usize = 4 << 20;

/// Default for [`EventLoop::set_close_linger`].
pub const DEFAULT_CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Identifies one connection of an [`EventLoop`]; never reused while the
/// loop runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    fn new(slot: usize, generation: u32) -> ConnId {
        ConnId((u64::from(generation) << 32) | slot as u64)
    }

    fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// The id as a number, e.g. for logs.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({}.{})", self.slot(), self.generation())
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.slot(), self.generation())
    }
}

/// Why a connection the handler knew ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The peer closed the connection between frames.
    PeerClosed,
    /// The handler (or an [`EventLoopRemote`]) closed it.
    Closed,
    /// The event loop stopped.
    Stopped,
    /// The connection failed: [`Error::Truncated`], a protocol error (the
    /// peer was sent an error frame), an I/O error.
    Failed(Error),
}

/// The server's logic: what to do with authenticated connections and their
/// messages. Unauthenticated peers never reach it.
pub trait Handler {
    /// A peer completed the handshake.
    fn on_connect(&mut self, conn: ConnId, peer: &PeerInfo) {
        let _ = (conn, peer);
    }

    /// A message arrived; answer or act through `outbox`.
    fn on_message(&mut self, conn: ConnId, message: Message, outbox: &mut Outbox<'_>);

    /// A message arrived with file descriptors (unix sockets only). The
    /// default drops (closes) the descriptors and calls
    /// [`on_message`](Handler::on_message).
    fn on_message_with_fds(
        &mut self,
        conn: ConnId,
        message: Message,
        fds: Vec<OwnedFd>,
        outbox: &mut Outbox<'_>,
    ) {
        drop(fds);
        self.on_message(conn, message, outbox);
    }

    /// A connection reported by [`on_connect`](Handler::on_connect) ended;
    /// messages sent to it from now on are dropped.
    fn on_disconnect(&mut self, conn: ConnId, reason: DisconnectReason) {
        let _ = (conn, reason);
    }
}

/// Something to do to a connection.
enum Command {
    Send(ConnId, Message, Vec<OwnedFd>),
    Close(ConnId),
}

/// Lets a [`Handler`] send messages to any connection and close
/// connections. Messages are encoded into the target's buffer when the
/// handler returns and written as soon as the socket takes them; messages to
/// connections that are gone are dropped.
pub struct Outbox<'a> {
    commands: &'a mut Vec<Command>,
}

impl fmt::Debug for Outbox<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("queued", &self.commands.len())
            .finish()
    }
}

impl Outbox<'_> {
    /// Queues a message to `conn`.
    pub fn send(&mut self, conn: ConnId, message: Message) {
        self.commands.push(Command::Send(conn, message, Vec::new()));
    }

    /// Queues a message with file descriptors to `conn` (a unix socket; over
    /// TCP the message is dropped and logged).
    pub fn send_with_fds(&mut self, conn: ConnId, message: Message, fds: Vec<OwnedFd>) {
        self.commands.push(Command::Send(conn, message, fds));
    }

    /// Closes `conn` once what was queued to it is written.
    pub fn close(&mut self, conn: ConnId) {
        self.commands.push(Command::Close(conn));
    }
}

/// What other threads share with the loop.
struct RemoteShared {
    commands: Mutex<Vec<Command>>,
    stop: AtomicBool,
    waker: Waker,
}

/// Sends messages to an [`EventLoop`]'s connections, closes them and stops
/// the loop, from any thread.
#[derive(Clone)]
pub struct EventLoopRemote {
    shared: Arc<RemoteShared>,
}

impl fmt::Debug for EventLoopRemote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoopRemote")
            .field("stopped", &self.shared.stop.load(Ordering::Relaxed))
            .finish()
    }
}

impl EventLoopRemote {
    /// Queues a message to `conn`.
    pub fn send(&self, conn: ConnId, message: Message) {
        self.push(Command::Send(conn, message, Vec::new()));
    }

    /// Queues a message with file descriptors to `conn` (unix sockets only).
    pub fn send_with_fds(&self, conn: ConnId, message: Message, fds: Vec<OwnedFd>) {
        self.push(Command::Send(conn, message, fds));
    }

    /// Closes `conn` once what was queued to it is written.
    pub fn close(&self, conn: ConnId) {
        self.push(Command::Close(conn));
    }

    /// Asks the loop to stop: it tells the handler every connection ended
    /// ([`DisconnectReason::Stopped`]) and returns.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Err(error) = self.shared.waker.wake() {
            log::error!("cannot wake the event loop to stop it: {error}");
        }
    }

    fn push(&self, command: Command) {
        let mut commands = self
            .shared
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let was_empty = commands.is_empty();
        commands.push(command);
        drop(commands);
        // The loop takes the whole queue at once: one wake per batch.
        if was_empty {
            if let Err(error) = self.shared.waker.wake() {
                log::error!("cannot wake the event loop: {error}");
            }
        }
    }
}

/// A running [`EventLoop`] thread.
#[derive(Debug)]
pub struct EventLoopHandle<H> {
    remote: EventLoopRemote,
    thread: JoinHandle<Result<H, Error>>,
}

impl<H> EventLoopHandle<H> {
    /// Asks the loop to stop; [`join`](EventLoopHandle::join) waits for it.
    pub fn stop(&self) {
        self.remote.stop();
    }

    /// A remote control for the loop.
    pub fn remote(&self) -> EventLoopRemote {
        self.remote.clone()
    }

    /// Whether the loop thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the loop to end and gives the handler back. A panic of the
    /// handler is resumed here.
    pub fn join(self) -> Result<H, Error> {
        match self.thread.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug)]
enum Phase {
    /// Authenticating; gone at the deadline.
    Handshake { machine: Machine, deadline: Instant },
    /// Authenticated, known to the handler.
    Open,
    /// Writing what is queued, then closing; input is discarded.
    Closing { deadline: Instant },
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    fd: OwnedFd,
    unix: bool,
    inbound: Inbound,
    outbound: Outbound,
    phase: Phase,
    /// Input may be waiting (edge-triggered readiness not yet consumed).
    readable: bool,
    /// The socket takes more bytes.
    writable: bool,
    /// In the work queue.
    queued: bool,
    /// Reading stopped until the outgoing buffer drains below the limit.
    paused: bool,
    /// The sending direction is shut down (closing).
    shut_write: bool,
    /// The peer shut its sending direction.
    peer_eof: bool,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

/// A server loop on one thread: accepts connections on a [`Listener`],
/// authenticates each with the [`Handshake`] (non-blocking, with a deadline
/// per connection), then decodes frames and hands whole messages to a
/// [`Handler`].
///
/// One peer sending garbage (it is sent an error frame, then closed), an
/// oversized frame, or vanishing mid-frame never disturbs the others. A peer
/// whose outgoing buffer exceeds [`set_outgoing_limit`](EventLoop::set_outgoing_limit)
/// is not read from until the buffer drains.
pub struct EventLoop<H> {
    poll: Poll,
    events: Events,
    listener: Listener,
    handshake: Handshake,
    handler: H,
    slots: Vec<Slot>,
    free: Vec<usize>,
    work: VecDeque<usize>,
    dirty: Vec<usize>,
    deadlines: BinaryHeap<Reverse<(Instant, ConnId)>>,
    commands: Vec<Command>,
    remote: Arc<RemoteShared>,
    discard: Vec<u8>,
    max_frame: usize,
    outgoing_limit: usize,
    close_linger: Duration,
}

impl<H> fmt::Debug for EventLoop<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("listener", &self.listener)
            .field("connections", &(self.slots.len() - self.free.len()))
            .field("max_frame", &self.max_frame)
            .field("outgoing_limit", &self.outgoing_limit)
            .finish()
    }
}

impl<H: Handler> EventLoop<H> {
    /// A loop serving `listener` (made non-blocking) with `handler`; peers
    /// must pass `handshake` ([`Side::Acceptor`]).
    pub fn new(
        listener: Listener,
        handshake: Handshake,
        handler: H,
    ) -> Result<EventLoop<H>, Error> {
        listener.set_nonblocking(true)?;
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        Ok(EventLoop {
            poll,
            events: Events::with_capacity(1024),
            listener,
            handshake,
            handler,
            slots: Vec::new(),
            free: Vec::new(),
            work: VecDeque::new(),
            dirty: Vec::new(),
            deadlines: BinaryHeap::new(),
            commands: Vec::new(),
            remote: Arc::new(RemoteShared {
                commands: Mutex::new(Vec::new()),
                stop: AtomicBool::new(false),
                waker,
            }),
            discard: vec![0; 16 << 10],
            max_frame: DEFAULT_MAX_FRAME,
            outgoing_limit: DEFAULT_OUTGOING_LIMIT,
            close_linger: DEFAULT_CLOSE_LINGER,
        })
    }

    /// The largest frame payload accepted from authenticated peers.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Bytes queued to one connection above which the loop stops reading
    /// from it until they drain (default [`DEFAULT_OUTGOING_LIMIT`]).
    pub fn set_outgoing_limit(&mut self, limit: usize) {
        self.outgoing_limit = limit;
    }

    /// How long a closing connection may take to write what is queued to it
    /// (default [`DEFAULT_CLOSE_LINGER`]).
    pub fn set_close_linger(&mut self, linger: Duration) {
        self.close_linger = linger;
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> crate::Address {
        self.listener.local_addr()
    }

    /// A remote control for the loop.
    pub fn remote(&self) -> EventLoopRemote {
        EventLoopRemote {
            shared: Arc::clone(&self.remote),
        }
    }

    /// Runs the loop on a new thread.
    pub fn spawn(self) -> Result<EventLoopHandle<H>, Error>
    where
        H: Send + 'static,
    {
        let remote = self.remote();
        let thread = std::thread::Builder::new()
            .name("processional-event-loop".into())
            .spawn(move || self.run())?;
        Ok(EventLoopHandle { remote, thread })
    }

    /// Runs the loop on this thread until [`EventLoopRemote::stop`], then
    /// gives the handler back.
    pub fn run(mut self) -> Result<H, Error> {
        let result = self.serve();
        self.close_all();
        result.map(|()| self.handler)
    }

    fn serve(&mut self) -> Result<(), Error> {
        loop {
            let timeout = if self.work.is_empty() {
                self.deadlines.peek().map(|Reverse((deadline, _))| {
                    deadline.saturating_duration_since(Instant::now())
                })
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut self.events, timeout) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(Error::Io(error)),
            }
            let mut accept = false;
            for event in self.events.iter() {
                match event.token() {
                    LISTENER => accept = true,
                    WAKER => {}
                    Token(token) => {
                        let slot = token - FIRST_CONNECTION;
                        let Some(conn) = self.slots.get_mut(slot).and_then(|s| s.conn.as_mut())
                        else {
                            continue;
                        };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            conn.readable = true;
                        }
                        if event.is_writable() || event.is_write_closed() || event.is_error() {
                            conn.writable = true;
                        }
                        if !conn.queued {
                            conn.queued = true;
                            self.work.push_back(slot);
                        }
                    }
                }
            }
            if self.remote.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            if accept {
                self.accept_all();
            }
            self.take_remote_commands();
            // One turn for each connection with work now; work they create
            // waits for the next turn, after a fresh look at the sockets.
            for _ in 0..self.work.len() {
                let Some(slot) = self.work.pop_front() else {
                    break;
                };
                self.process(slot);
                self.flush_dirty();
            }
            self.expire(Instant::now());
        }
    }

    fn conn_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        conn_in(&mut self.slots, slot)
    }

    fn lookup(&mut self, id: ConnId) -> Option<&mut Conn> {
        let slot = self.slots.get_mut(id.slot())?;
        if slot.generation != id.generation() {
            return None;
        }
        slot.conn.as_mut()
    }

    fn schedule(&mut self, slot: usize) {
        if let Some(conn) = self.conn_mut(slot) {
            if !conn.queued {
                conn.queued = true;
                self.work.push_back(slot);
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let fd = match self.listener.accept_nonblocking() {
                Ok(fd) => fd,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if sys::is_lost_connection_on_accept(&error) => continue,
                Err(error) => {
                    // Out of descriptors or memory: the waiting connections
                    // are retried with the next one that arrives.
                    log::warn!("event loop cannot accept a connection: {error}");
                    return;
                }
            };
            if let Err(error) = self.add(fd) {
                log::warn!("event loop cannot take a connection: {error}");
            }
        }
    }

    fn add(&mut self, fd: OwnedFd) -> Result<(), Error> {
        let machine = Machine::new(Side::Acceptor, &self.handshake)?;
        let deadline = Instant::now() + self.handshake.timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT);
        let unix = self.listener.is_unix();
        let mut inbound = Inbound::new(unix, self.max_frame);
        inbound.begin_handshake()?;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                self.slots.len() - 1
            }
        };
        let generation = self.slots[slot].generation;
        let id = ConnId::new(slot, generation);
        if let Err(error) = self.poll.registry().register(
            &mut SourceFd(&fd.as_raw_fd()),
            Token(FIRST_CONNECTION + slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free.push(slot);
            return Err(Error::Io(error));
        }
        let mut conn = Conn {
            id,
            fd,
            unix,
            inbound,
            outbound: Outbound::default(),
            phase: Phase::Handshake { machine, deadline },
            readable: true,
            writable: true,
            queued: false,
            paused: false,
            shut_write: false,
            peer_eof: false,
        };
        if let Phase::Handshake { machine, .. } = &mut conn.phase {
            handshake_step::queue_output(machine, &mut conn.outbound, unix);
        }
        self.slots[slot].conn = Some(conn);
        self.deadlines.push(Reverse((deadline, id)));
        self.dirty.push(slot);
        self.schedule(slot);
        Ok(())
    }

    /// One turn of work for the connection in `slot`.
    fn process(&mut self, slot: usize) {
        let Some(conn) = self.conn_mut(slot) else {
            return;
        };
        conn.queued = false;
        if conn.writable && conn.outbound.pending() > 0 {
            self.flush(slot);
        }
        let Some(conn) = self.conn_mut(slot) else {
            return;
        };
        match conn.phase {
            Phase::Handshake { .. } => self.read_handshake(slot),
            Phase::Open => self.read_open(slot),
            Phase::Closing { .. } => self.read_closing(slot),
        }
    }

    fn read_handshake(&mut self, slot: usize) {
        let Some(conn) = conn_in(&mut self.slots, slot) else {
            return;
        };
        let Phase::Handshake { machine, .. } = &mut conn.phase else {
            return;
        };
        let wire = Wire {
            fd: conn.fd.as_fd(),
            unix: conn.unix,
            readable: &mut conn.readable,
            inbound: &mut conn.inbound,
            outbound: &mut conn.outbound,
        };
        let progress = handshake_step::advance(machine, &self.handshake, wire);
        conn.peer_eof |= conn.inbound.at_eof();
        if conn.outbound.pending() > 0 {
            self.dirty.push(slot);
        }
        match progress {
            Progress::Waiting => {}
            Progress::Authenticated(peer) => {
                conn.phase = Phase::Open;
                let id = conn.id;
                log::debug!("connection {id} authenticated: {:?}", peer.hello);
                self.handler.on_connect(id, &peer);
                self.read_open(slot);
            }
            Progress::Failed(error) => self.refuse(slot, error),
            Progress::PeerClosed => {
                log::debug!("connection {} closed during the handshake", conn.id);
                self.remove(slot);
            }
        }
    }

    /// Ends a failed handshake: what the machine queued (a refusal) is
    /// written, then the connection closes. The handler never hears of it.
    fn refuse(&mut self, slot: usize, error: Error) {
        if let Some(conn) = self.conn_mut(slot) {
            log::debug!("handshake of connection {} failed: {error}", conn.id);
        }
        self.start_closing(slot);
    }

    fn read_open(&mut self, slot: usize) {
        let mut frames = 0;
        loop {
            let limit = self.outgoing_limit;
            let Some(conn) = conn_in(&mut self.slots, slot) else {
                return;
            };
            if !matches!(conn.phase, Phase::Open) {
                return;
            }
            if conn.outbound.pending() > limit {
                conn.paused = true;
                return;
            }
            if frames == FRAMES_PER_TURN {
                self.schedule(slot);
                return;
            }
            match conn.inbound.next() {
                Ok(Some(received)) => {
                    frames += 1;
                    let id = conn.id;
                    let mut outbox = Outbox {
                        commands: &mut self.commands,
                    };
                    if received.fds.is_empty() {
                        self.handler.on_message(id, received.message, &mut outbox);
                    } else {
                        self.handler.on_message_with_fds(
                            id,
                            received.message,
                            received.fds,
                            &mut outbox,
                        );
                    }
                    self.apply_commands();
                    continue;
                }
                Ok(None) => {}
                Err(error) => {
                    self.fail(slot, error);
                    return;
                }
            }
            if conn.inbound.at_eof() {
                let reason = match conn.inbound.end_of_stream() {
                    Error::Closed => DisconnectReason::PeerClosed,
                    error => DisconnectReason::Failed(error),
                };
                self.disconnect(slot, reason);
                return;
            }
            match read_more(conn) {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    self.fail(slot, error);
                    return;
                }
            }
        }
    }

    /// Discards the input of a closing connection until its end.
    fn read_closing(&mut self, slot: usize) {
        let Some(conn) = conn_in(&mut self.slots, slot) else {
            return;
        };
        if conn.outbound.pending() == 0 && !conn.shut_write {
            conn.shut_write = true;
            let _ = sys::shutdown(conn.fd.as_fd(), sys::Shutdown::Write);
        }
        if !conn.peer_eof && conn.readable {
            for _ in 0..DISCARDS_PER_TURN {
                // A plain read: descriptors riding on the discarded bytes are
                // closed by the kernel, never installed here.
                match sys::recv(conn.fd.as_fd(), &mut self.discard, None, sys::DONTWAIT) {
                    Ok(reception) if reception.bytes == 0 => {
                        conn.peer_eof = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                        conn.readable = false;
                        break;
                    }
                    Err(_) => {
                        conn.peer_eof = true;
                        break;
                    }
                }
            }
            if conn.readable && !conn.peer_eof {
                self.schedule(slot);
                return;
            }
        }
        if conn.peer_eof && conn.shut_write {
            self.remove(slot);
        }
    }

    /// A protocol or I/O failure of an open connection: the peer gets an
    /// error frame if the failure is its fault, the handler hears of it.
    fn fail(&mut self, slot: usize, error: Error) {
        if let Some(conn) = self.conn_mut(slot) {
            log::debug!("connection {} failed: {error}", conn.id);
            if !matches!(error, Error::Io(_)) {
                let frame = Message::Error(RemoteError {
                    kind: RemoteErrorKind::Other,
                    message: format!("connection closed: {error}"),
                    location: None,
                    backtrace: None,
                });
                let unix = conn.unix;
                let _ = conn.outbound.push(&frame, Vec::new(), unix);
            }
        }
        self.disconnect(slot, DisconnectReason::Failed(error));
    }

    /// Ends an open connection: tells the handler, then writes what is
    /// queued and closes.
    fn disconnect(&mut self, slot: usize, reason: DisconnectReason) {
        let Some(conn) = self.conn_mut(slot) else {
            return;
        };
        if !matches!(conn.phase, Phase::Open) {
            return;
        }
        let id = conn.id;
        if matches!(reason, DisconnectReason::Failed(Error::Io(_))) {
            // The socket is broken: nothing more can be written.
            self.remove(slot);
        } else {
            self.start_closing(slot);
        }
        self.handler.on_disconnect(id, reason);
    }

    fn start_closing(&mut self, slot: usize) {
        let deadline = Instant::now() + self.close_linger;
        let Some(conn) = self.conn_mut(slot) else {
            return;
        };
        conn.phase = Phase::Closing { deadline };
        let id = conn.id;
        self.deadlines.push(Reverse((deadline, id)));
        self.dirty.push(slot);
        self.schedule(slot);
    }

    fn apply_commands(&mut self) {
        let mut commands = std::mem::take(&mut self.commands);
        for command in commands.drain(..) {
            match command {
                Command::Send(id, message, fds) => {
                    let Some(conn) = self.lookup(id) else {
                        continue;
                    };
                    if !matches!(conn.phase, Phase::Open) {
                        continue;
                    }
                    let unix = conn.unix;
                    match conn.outbound.push(&message, fds, unix) {
                        Ok(()) => self.dirty.push(id.slot()),
                        Err(error) => log::error!("cannot send to connection {id}: {error}"),
                    }
                }
                Command::Close(id) => {
                    if self.lookup(id).is_some() {
                        self.disconnect(id.slot(), DisconnectReason::Closed);
                    }
                }
            }
        }
        // Keep the allocation; the handler may have queued nothing new.
        if self.commands.is_empty() {
            self.commands = commands;
        }
    }

    fn take_remote_commands(&mut self) {
        let mut commands = self
            .remote
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if commands.is_empty() {
            return;
        }
        std::mem::swap(&mut *commands, &mut self.commands);
        drop(commands);
        self.apply_commands();
        self.flush_dirty();
    }

    fn flush_dirty(&mut self) {
        while let Some(slot) = self.dirty.pop() {
            if let Some(conn) = self.conn_mut(slot) {
                if conn.writable && conn.outbound.pending() > 0 {
                    self.flush(slot);
                }
            }
        }
    }

    fn flush(&mut self, slot: usize) {
        let limit = self.outgoing_limit;
        let Some(conn) = self.conn_mut(slot) else {
            return;
        };
        match conn.outbound.flush(conn.fd.as_fd()) {
            Ok(done) => {
                conn.writable = done;
                if conn.paused && conn.outbound.pending() <= limit {
                    conn.paused = false;
                    self.schedule(slot);
                } else if done && matches!(conn.phase, Phase::Closing { .. }) {
                    self.schedule(slot);
                }
            }
            Err(error) => match conn.phase {
                Phase::Open => self.disconnect(slot, DisconnectReason::Failed(Error::Io(error))),
                _ => self.remove(slot),
            },
        }
    }

    /// Closes connections whose handshake or closing took too long.
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((deadline, id))) = self.deadlines.peek().copied() {
            if deadline > now {
                return;
            }
            self.deadlines.pop();
            let Some(conn) = self.lookup(id) else {
                continue;
            };
            let expired = match &conn.phase {
                Phase::Handshake { deadline: due, .. } => {
                    let expired = *due <= now;
                    if expired {
                        log::debug!("handshake of connection {id} timed out");
                    }
                    expired
                }
                Phase::Closing { deadline: due } => *due <= now,
                Phase::Open => false,
            };
            if expired {
                self.remove(id.slot());
            }
        }
    }

    /// Forgets a connection and closes its socket.
    fn remove(&mut self, slot: usize) {
        let Some(entry) = self.slots.get_mut(slot) else {
            return;
        };
        let Some(conn) = entry.conn.take() else {
            return;
        };
        entry.generation = entry.generation.wrapping_add(1);
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&conn.fd.as_raw_fd()));
        self.free.push(slot);
    }

    /// Stopping: a last non-blocking flush for everyone, then close.
    fn close_all(&mut self) {
        for slot in 0..self.slots.len() {
            let Some(conn) = self.slots[slot].conn.as_mut() else {
                continue;
            };
            let _ = conn.outbound.flush(conn.fd.as_fd());
            let open = matches!(conn.phase, Phase::Open);
            let id = conn.id;
            self.remove(slot);
            if open {
                self.handler.on_disconnect(id, DisconnectReason::Stopped);
            }
        }
    }
}

/// Reads what the socket has for `conn` without blocking: `Ok(true)` if
/// there may be more to decode now (bytes or end of stream arrived),
/// `Ok(false)` once the socket is drained (until mio reports it readable).
fn read_more(conn: &mut Conn) -> Result<bool, Error> {
    if !conn.readable {
        return Ok(false);
    }
    match conn.inbound.fill(conn.fd.as_fd(), sys::DONTWAIT)? {
        Fill::Read(_) => Ok(true),
        Fill::WouldBlock => {
            conn.readable = false;
            Ok(false)
        }
        Fill::Eof => {
            conn.peer_eof = true;
            Ok(true)
        }
    }
}

/// The connection in `slot`, borrowing only the slots (so the other fields
/// of the loop stay usable).
fn conn_in(slots: &mut [Slot], slot: usize) -> Option<&mut Conn> {
    slots.get_mut(slot).and_then(|entry| entry.conn.as_mut())
}
