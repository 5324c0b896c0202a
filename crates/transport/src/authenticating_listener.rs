//! Accepting connections and authenticating them all on one thread, for
//! servers that serve each authenticated connection their own way.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use processional_proto::DEFAULT_MAX_FRAME;

use crate::address::Address;
use crate::connection::Connection;
use crate::error::Error;
use crate::handshake::{DEFAULT_HANDSHAKE_TIMEOUT, Handshake, Machine, PeerInfo, Side};
use crate::handshake_step::{self, Progress, Wire};
use crate::inbound::Inbound;
use crate::listener::Listener;
use crate::outbound::Outbound;
use crate::sys;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_PENDING: usize = 2;

/// Default for [`AuthenticatingListener::new`]'s `max_pending`.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 64;

/// Connections accepted in one turn before the pending handshakes get
/// theirs (a flood of connections must not starve them).
const ACCEPTS_PER_TURN: usize = 32;

/// How long accepting pauses after it failed for want of descriptors or
/// memory (the connections waiting in the backlog raise no new event).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// One connection whose handshake runs.
#[derive(Debug)]
struct Pending {
    /// Tells this connection from a later one in the same slot.
    serial: u64,
    fd: OwnedFd,
    machine: Machine,
    inbound: Inbound,
    outbound: Outbound,
    deadline: Instant,
    /// Input may be waiting (edge-triggered readiness not yet consumed).
    readable: bool,
    /// The socket takes more bytes.
    writable: bool,
    /// Set once the peer proved the key: the connection is handed over as
    /// soon as our last handshake message is written.
    peer: Option<PeerInfo>,
}

/// What [`AcceptStopper`]s share with the listener.
#[derive(Debug)]
struct StopShared {
    stopped: AtomicBool,
    waker: Waker,
}

/// Stops an [`AuthenticatingListener`] from any thread: its
/// [`accept`](AuthenticatingListener::accept) returns `Ok(None)` at once.
///
/// ```
/// use processional_transport::{Address, AuthenticatingListener, Handshake, Key, Listener};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use processional_proto::{Fingerprint, Hello, Role, PROTOCOL_VERSION};
/// # let hello = |role| Hello {
/// #     protocol: PROTOCOL_VERSION,
/// #     fingerprint: Fingerprint([1; 32]),
/// #     role,
/// #     pid: std::process::id(),
/// #     host: "localhost".into(),
/// #     program: "example".into(),
/// # };
/// let listener = Listener::bind(&Address::private_unix()?)?;
/// let handshake = Handshake::new(Key::generate(), hello(Role::Server));
/// let mut accepting = AuthenticatingListener::new(listener, handshake, 8)?;
/// let stopper = accepting.stopper();
/// std::thread::spawn(move || stopper.stop());
/// assert!(accepting.accept()?.is_none()); // stopped, nobody accepted
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AcceptStopper {
    shared: Arc<StopShared>,
}

impl AcceptStopper {
    /// Wakes a blocked [`accept_unless`](AuthenticatingListener::accept_unless)
    /// so that it asks its condition again.
    pub fn wake(&self) {
        if let Err(error) = self.shared.waker.wake() {
            log::error!("cannot wake the listener: {error}");
        }
    }

    /// Stops the listener (a blocked `accept` wakes up and returns `None`).
    pub fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        if let Err(error) = self.shared.waker.wake() {
            log::error!("cannot wake the listener to stop it: {error}");
        }
    }
}

/// A [`Listener`] whose [`accept`](Self::accept) returns only connections
/// that passed the [`Handshake`] (as [`Side::Acceptor`]), ready to use.
///
/// All handshakes run on the thread that calls `accept`, on non-blocking
/// sockets driven by one `epoll`: a peer that connects and says nothing
/// costs a socket and a few kilobytes, never a thread. At most `max_pending`
/// handshakes run at once; a connection arriving when that many run
/// displaces the one that has waited longest, which is closed (a legitimate
/// peer needs one round trip, so only a flood faster than `max_pending`
/// connections per round trip can crowd it out). Each handshake ends at the
/// handshake's timeout ([`DEFAULT_HANDSHAKE_TIMEOUT`] if it has none).
/// Descriptors a peer sends before it is authenticated are closed by the
/// kernel unread, and fail its handshake.
///
/// ```
/// use processional_transport::{Address, AuthenticatingListener, Connection, Handshake, Key, Listener, Side};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use processional_proto::{Fingerprint, Hello, Role, PROTOCOL_VERSION};
/// # let hello = |role| Hello {
/// #     protocol: PROTOCOL_VERSION,
/// #     fingerprint: Fingerprint([1; 32]),
/// #     role,
/// #     pid: std::process::id(),
/// #     host: "localhost".into(),
/// #     program: "example".into(),
/// # };
/// let key = Key::generate();
/// let listener = Listener::bind(&Address::private_unix()?)?;
/// let address = listener.local_addr();
/// let mut server = Handshake::new(key.clone(), hello(Role::Server));
/// server.accept_roles = vec![Role::Client];
/// let mut accepting = AuthenticatingListener::new(listener, server, 64)?;
/// let client = std::thread::spawn(move || -> Result<(), processional_transport::Error> {
///     let mut connection = Connection::connect(&address)?;
///     let mut handshake = Handshake::new(key, hello(Role::Client));
///     handshake.accept_roles = vec![Role::Server];
///     connection.handshake(Side::Initiator, &handshake).map(drop)
/// });
/// // Only authenticated connections come out.
/// let (_connection, peer) = accepting.accept()?.expect("not stopped");
/// assert_eq!(peer.hello.role, Role::Client);
/// client.join().unwrap()?;
/// # Ok(())
/// # }
/// ```
pub struct AuthenticatingListener {
    poll: Poll,
    events: Events,
    listener: Listener,
    handshake: Handshake,
    timeout: Duration,
    max_pending: usize,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    live: usize,
    /// `(serial, slot)` in the order of arrival, which, with one timeout
    /// for all, is the order of the deadlines; entries of handshakes that
    /// ended are skipped (and dropped when they pile up).
    arrivals: VecDeque<(u64, usize)>,
    next_serial: u64,
    /// Authenticated connections not yet returned by `accept`.
    ready: VecDeque<(Connection, PeerInfo)>,
    /// Slots with events in this turn.
    work: Vec<usize>,
    /// More connections may be waiting than one turn accepted.
    accept_again: bool,
    /// When to try accepting again after running out of descriptors.
    accept_retry: Option<Instant>,
    stop: Arc<StopShared>,
}

impl fmt::Debug for AuthenticatingListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthenticatingListener")
            .field("listener", &self.listener)
            .field("pending", &self.live)
            .field("max_pending", &self.max_pending)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AuthenticatingListener {
    /// Authenticates the connections of `listener` (made non-blocking) with
    /// `handshake`, at most `max_pending` at once (at least 1).
    pub fn new(
        listener: Listener,
        handshake: Handshake,
        max_pending: usize,
    ) -> Result<AuthenticatingListener, Error> {
        listener.set_nonblocking(true)?;
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        Ok(AuthenticatingListener {
            poll,
            events: Events::with_capacity(256),
            listener,
            timeout: handshake.timeout.unwrap_or(DEFAULT_HANDSHAKE_TIMEOUT),
            handshake,
            max_pending: max_pending.max(1),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            arrivals: VecDeque::new(),
            next_serial: 0,
            ready: VecDeque::new(),
            work: Vec::new(),
            accept_again: false,
            accept_retry: None,
            stop: Arc::new(StopShared {
                stopped: AtomicBool::new(false),
                waker,
            }),
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Address {
        self.listener.local_addr()
    }

    /// How many handshakes run at most at once.
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// How long one handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.timeout
    }

    /// How many handshakes run now.
    pub fn pending(&self) -> usize {
        self.live
    }

    /// A handle that stops this listener from another thread.
    pub fn stopper(&self) -> AcceptStopper {
        AcceptStopper {
            shared: Arc::clone(&self.stop),
        }
    }

    /// The next authenticated connection and what the handshake learned of
    /// its peer, blocking until one is ready; runs every pending handshake
    /// meanwhile. `Ok(None)` once an [`AcceptStopper`] stopped the listener.
    /// Peers that fail the handshake are told why (when they can be) and
    /// closed; they never show here. An error means the `epoll` failed.
    pub fn accept(&mut self) -> Result<Option<(Connection, PeerInfo)>, Error> {
        self.accept_unless(|_| false)
    }

    /// As [`accept`](Self::accept), but also returns `Ok(None)` as soon as
    /// `done(pending handshakes)` says so, with no authenticated connection
    /// waiting. `done` is asked again whenever a handshake ends and whenever
    /// an [`AcceptStopper::wake`] arrives; a server uses it to stop when it
    /// serves nobody and no handshake runs.
    pub fn accept_unless(
        &mut self,
        mut done: impl FnMut(usize) -> bool,
    ) -> Result<Option<(Connection, PeerInfo)>, Error> {
        loop {
            if self.stop.stopped.load(Ordering::Acquire) {
                return Ok(None);
            }
            if let Some(ready) = self.ready.pop_front() {
                return Ok(Some(ready));
            }
            if done(self.live) {
                return Ok(None);
            }
            let now = Instant::now();
            self.expire(now);
            let wait = if self.accept_again {
                Some(Duration::ZERO)
            } else {
                self.next_wakeup()
                    .map(|at| at.saturating_duration_since(now))
            };
            match self.poll.poll(&mut self.events, wait) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(Error::Io(error)),
            }
            let mut accept = std::mem::take(&mut self.accept_again);
            for event in self.events.iter() {
                match event.token() {
                    LISTENER => accept = true,
                    WAKER => {}
                    Token(token) => {
                        let slot = token - FIRST_PENDING;
                        let Some(pending) = self.slots.get_mut(slot).and_then(Option::as_mut)
                        else {
                            continue;
                        };
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            pending.readable = true;
                        }
                        if event.is_writable() || event.is_write_closed() || event.is_error() {
                            pending.writable = true;
                        }
                        self.work.push(slot);
                    }
                }
            }
            if self.accept_retry.is_some_and(|at| at <= Instant::now()) {
                self.accept_retry = None;
                accept = true;
            }
            let mut work = std::mem::take(&mut self.work);
            for slot in work.drain(..) {
                self.drive(slot);
            }
            self.work = work;
            if accept {
                self.accept_some();
            }
        }
    }

    /// The earliest deadline of a pending handshake, or of the pause in
    /// accepting.
    fn next_wakeup(&self) -> Option<Instant> {
        let handshake = self.arrivals.front().and_then(|&(serial, slot)| {
            self.slots[slot]
                .as_ref()
                .filter(|pending| pending.serial == serial)
                .map(|pending| pending.deadline)
        });
        match (handshake, self.accept_retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes the handshakes past their deadline; leaves a live one (or
    /// nothing) at the front of `arrivals`.
    fn expire(&mut self, now: Instant) {
        while let Some(&(serial, slot)) = self.arrivals.front() {
            match &self.slots[slot] {
                Some(pending) if pending.serial == serial => {
                    if pending.deadline > now {
                        return;
                    }
                    log::debug!("a handshake timed out after {:?}", self.timeout);
                    self.arrivals.pop_front();
                    self.close(slot);
                }
                _ => {
                    self.arrivals.pop_front();
                }
            }
        }
    }

    /// Accepts what is waiting, up to [`ACCEPTS_PER_TURN`].
    fn accept_some(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            let fd = match self.listener.accept_nonblocking() {
                Ok(fd) => fd,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if sys::is_lost_connection_on_accept(&error) => continue,
                Err(error) => {
                    log::warn!("cannot accept a connection: {error}");
                    self.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            };
            if self.live >= self.max_pending {
                self.close_oldest();
            }
            if let Err(error) = self.add(fd) {
                log::warn!("cannot start the handshake of a connection: {error}");
            }
        }
        self.accept_again = true;
    }

    fn add(&mut self, fd: OwnedFd) -> Result<(), Error> {
        let unix = self.listener.is_unix();
        let machine = Machine::new(Side::Acceptor, &self.handshake)?;
        let mut inbound = Inbound::new(unix, DEFAULT_MAX_FRAME);
        inbound.begin_handshake()?;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        if let Err(error) = self.poll.registry().register(
            &mut SourceFd(&fd.as_raw_fd()),
            Token(FIRST_PENDING + slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free.push(slot);
            return Err(Error::Io(error));
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let mut pending = Pending {
            serial,
            fd,
            machine,
            inbound,
            outbound: Outbound::default(),
            deadline: Instant::now() + self.timeout,
            readable: true,
            writable: true,
            peer: None,
        };
        handshake_step::queue_output(&mut pending.machine, &mut pending.outbound, unix);
        self.slots[slot] = Some(pending);
        self.live += 1;
        self.arrivals.push_back((serial, slot));
        if self.arrivals.len() > 2 * self.live + 64 {
            let slots = &self.slots;
            self.arrivals.retain(|&(serial, slot)| {
                slots[slot]
                    .as_ref()
                    .is_some_and(|pending| pending.serial == serial)
            });
        }
        self.drive(slot);
        Ok(())
    }

    /// Runs the handshake in `slot` as far as the socket allows.
    fn drive(&mut self, slot: usize) {
        let unix = self.listener.is_unix();
        let Some(pending) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if pending.peer.is_none() {
            let wire = Wire {
                fd: pending.fd.as_fd(),
                unix,
                readable: &mut pending.readable,
                inbound: &mut pending.inbound,
                outbound: &mut pending.outbound,
            };
            match handshake_step::advance(&mut pending.machine, &self.handshake, wire) {
                Progress::Waiting => {}
                Progress::Authenticated(peer) => pending.peer = Some(peer),
                Progress::Failed(error) => {
                    log::debug!("a peer failed the handshake: {error}");
                    // Best effort: the refusal goes out if the socket takes
                    // it now.
                    let _ = pending.outbound.flush(pending.fd.as_fd());
                    let _ = sys::shutdown(pending.fd.as_fd(), sys::Shutdown::Write);
                    self.close(slot);
                    return;
                }
                Progress::PeerClosed => {
                    log::debug!("a peer closed its connection during the handshake");
                    self.close(slot);
                    return;
                }
            }
        }
        let written = if pending.outbound.pending() == 0 {
            Ok(true)
        } else if pending.writable {
            pending.outbound.flush(pending.fd.as_fd())
        } else {
            Ok(false)
        };
        if let Ok(done) = written {
            pending.writable = done;
        }
        match (written, pending.peer.is_some()) {
            (Ok(true), true) => self.hand_over(slot),
            // A peer that stopped reading once it sent its proof does not
            // need our verdict: what it sent is still ours to read (as in
            // the blocking handshake).
            (Err(_), true) => self.hand_over(slot),
            (Err(error), false) => {
                log::debug!("a peer's connection failed during the handshake: {error}");
                self.close(slot);
            }
            (Ok(_), _) => {}
        }
    }

    /// Hands the authenticated connection in `slot` to `accept`.
    fn hand_over(&mut self, slot: usize) {
        let unix = self.listener.is_unix();
        let Some(pending) = self.take(slot) else {
            return;
        };
        let Some(peer) = pending.peer else {
            return;
        };
        match Connection::from_authenticated(pending.fd, unix, pending.inbound) {
            Ok(connection) => self.ready.push_back((connection, peer)),
            Err(error) => log::warn!("cannot take an authenticated connection: {error}"),
        }
    }

    /// Closes the handshake that has waited longest.
    fn close_oldest(&mut self) {
        while let Some((serial, slot)) = self.arrivals.pop_front() {
            if self.slots[slot]
                .as_ref()
                .is_some_and(|pending| pending.serial == serial)
            {
                log::debug!(
                    "{} handshakes run already: closing the oldest",
                    self.max_pending
                );
                self.close(slot);
                return;
            }
        }
    }

    /// Forgets the connection in `slot` and closes it.
    fn close(&mut self, slot: usize) {
        drop(self.take(slot));
    }

    fn take(&mut self, slot: usize) -> Option<Pending> {
        let pending = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.live -= 1;
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&pending.fd.as_raw_fd()));
        Some(pending)
    }
}
