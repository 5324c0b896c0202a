//! Blocking framed connections over unix sockets and TCP.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use processional_proto::{
    DEFAULT_MAX_FRAME, MAX_FDS_PER_FRAME, Message, ProtoError, encode_split, encode_with_fds,
};

use crate::address::Address;
use crate::error::Error;
use crate::handshake::{AgreedNonces, FDS_DURING_HANDSHAKE, Handshake, Machine, PeerInfo, Side};
use crate::inbound::{Fill, Inbound};
use crate::sys;

/// How long a blocked sender waits for room in the socket buffer before it
/// calls its `while_blocked` hook again.
const BLOCKED_WAIT: Duration = Duration::from_millis(2);

/// Inline payloads at least this large are written from where they are,
/// after the rest of their frame (one vectored write), not copied into the
/// frame buffer first.
const SPLIT_ABOVE: usize = 16 << 10;

/// The send buffer asked for on unix sockets. A unix stream socket charges
/// every queued write to its sender, at about 1 KiB per small frame, so the
/// default buffer (208 KiB) holds only a couple of hundred calls queued
/// behind a long one before the caller blocks until the peer reads again.
/// Memory is used only by what is actually queued.
const UNIX_SEND_BUFFER: usize = 1 << 20;

/// A send buffer that grew past this for one big frame is released after it.
const SHRINK_ABOVE: usize = 1 << 20;

/// How long a failed handshake tries to deliver its refusal.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);

/// A message and the file descriptors that travelled with it.
#[derive(Debug)]
pub struct Received {
    /// The message.
    pub message: Message,
    /// The descriptors attached to its frame, in the order they were sent;
    /// empty for most messages (and always over TCP).
    pub fds: Vec<OwnedFd>,
}

/// The socket both halves of a connection share.
#[derive(Debug)]
struct Socket {
    fd: OwnedFd,
    unix: bool,
    /// Set by `shutdown`, so the reader reports `Closed` and not `Truncated`.
    shut_down: AtomicBool,
}

impl Socket {
    /// Takes a connected stream socket, switched to blocking mode.
    fn new(fd: OwnedFd, unix: bool) -> io::Result<Arc<Socket>> {
        sys::set_nonblocking(fd.as_fd(), false)?;
        if unix {
            // Best effort: the kernel caps it (net.core.wmem_max).
            let _ = sys::set_send_buffer(fd.as_fd(), UNIX_SEND_BUFFER);
        } else {
            sys::set_nodelay(fd.as_fd())?;
        }
        Ok(Arc::new(Socket {
            fd,
            unix,
            shut_down: AtomicBool::new(false),
        }))
    }

    fn shutdown(&self) -> Result<(), Error> {
        self.shut_down.store(true, Ordering::Release);
        match sys::shutdown(self.fd.as_fd(), sys::Shutdown::Both) {
            Err(error) if !sys::is_not_connected(&error) => Err(Error::Io(error)),
            _ => Ok(()),
        }
    }

    fn is_shut_down(&self) -> bool {
        self.shut_down.load(Ordering::Acquire)
    }
}

/// A framed, blocking connection to a peer, over a unix socket or TCP.
///
/// Authenticate it with [`handshake`](Connection::handshake) before anything
/// else; then exchange [`Message`]s with [`send`](Connection::send) and
/// [`recv`](Connection::recv). [`split`](Connection::split) gives a reading
/// and a writing half for use from two threads.
///
/// Each frame goes out with one `send`/`sendmsg` call and, in the common
/// case, comes in with one `recv`/`recvmsg` call straight into the decoder's
/// buffer.
///
/// ```
/// use processional_proto::Message;
/// use processional_transport::{Connection, Handshake, Key, Side};
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
/// let (mut left, mut right) = Connection::pair()?; // a socketpair
/// let acceptor = Handshake::new(key.clone(), hello(Role::Slave));
/// let other = std::thread::spawn(move || -> Result<(), processional_transport::Error> {
///     right.handshake(Side::Acceptor, &acceptor)?;
///     let ping = right.recv()?.message;
///     right.send(&Message::Pong(if let Message::Ping(n) = ping { n } else { 0 }))
/// });
/// left.handshake(Side::Initiator, &Handshake::new(key, hello(Role::Master)))?;
/// left.send(&Message::Ping(9))?;
/// assert_eq!(left.recv()?.message, Message::Pong(9));
/// other.join().unwrap()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Connection {
    reader: ConnectionReader,
    writer: ConnectionWriter,
}

/// The receiving half of a [`Connection`], from [`Connection::split`]:
/// one thread reads while another writes.
///
/// ```
/// use processional_proto::Message;
/// use processional_transport::Connection;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (left, right) = Connection::pair()?; // (a real peer handshakes first)
/// let (mut reader, mut writer) = left.split();
/// let (mut peer_reader, mut peer_writer) = right.split();
/// let echo = std::thread::spawn(move || -> Result<(), processional_transport::Error> {
///     let message = peer_reader.recv()?.message;
///     peer_writer.send(&message)
/// });
/// writer.send(&Message::Ping(3))?;
/// assert_eq!(reader.recv()?.message, Message::Ping(3));
/// echo.join().unwrap()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ConnectionReader {
    socket: Arc<Socket>,
    inbound: Inbound,
}

/// The sending half of a [`Connection`]; see [`ConnectionReader`] for an
/// example.
#[derive(Debug)]
pub struct ConnectionWriter {
    socket: Arc<Socket>,
    buf: Vec<u8>,
}

impl Connection {
    fn from_socket(socket: Arc<Socket>) -> Connection {
        let inbound = Inbound::new(socket.unix, DEFAULT_MAX_FRAME);
        Connection::from_parts(socket, inbound)
    }

    fn from_parts(socket: Arc<Socket>, inbound: Inbound) -> Connection {
        Connection {
            reader: ConnectionReader {
                inbound,
                socket: Arc::clone(&socket),
            },
            writer: ConnectionWriter {
                socket,
                buf: Vec::new(),
            },
        }
    }

    /// A connection whose handshake another driver ran on the socket `fd`
    /// (switched to blocking here), reading on from `inbound`, which must
    /// have ended the handshake.
    pub(crate) fn from_authenticated(
        fd: OwnedFd,
        unix: bool,
        inbound: Inbound,
    ) -> io::Result<Connection> {
        Ok(Connection::from_parts(Socket::new(fd, unix)?, inbound))
    }

    /// Connects to a listening peer.
    pub fn connect(address: &Address) -> Result<Connection, Error> {
        connect(address, None)
    }

    /// Connects to a listening peer, giving up after `timeout` (name
    /// resolution of a TCP host is not bounded by it).
    pub fn connect_timeout(address: &Address, timeout: Duration) -> Result<Connection, Error> {
        connect(address, Some(timeout))
    }

    /// Wraps a connected unix stream.
    pub fn from_unix(stream: UnixStream) -> Result<Connection, Error> {
        Ok(Connection::from_socket(Socket::new(stream.into(), true)?))
    }

    /// Wraps a connected TCP stream; sets `TCP_NODELAY`.
    pub fn from_tcp(stream: TcpStream) -> Result<Connection, Error> {
        Ok(Connection::from_socket(Socket::new(stream.into(), false)?))
    }

    /// Wraps a connected stream socket given as a raw descriptor, e.g. one
    /// inherited from a parent process. Fails unless it is a unix or TCP
    /// stream socket.
    pub fn from_fd(fd: OwnedFd) -> Result<Connection, Error> {
        let unix = match sys::socket_kind(fd.as_fd())? {
            sys::SocketKind::UnixStream => true,
            sys::SocketKind::InetStream => false,
            sys::SocketKind::Other => {
                return Err(Error::Io(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the descriptor is not a unix or TCP stream socket",
                )));
            }
        };
        Ok(Connection::from_socket(Socket::new(fd, unix)?))
    }

    /// Two connected ends of a unix socket pair, both close-on-exec.
    pub fn pair() -> io::Result<(Connection, Connection)> {
        let (a, b) = sys::socketpair()?;
        Ok((
            Connection::from_socket(Socket::new(a, true)?),
            Connection::from_socket(Socket::new(b, true)?),
        ))
    }

    /// Whether this is a unix socket (so descriptors can be sent).
    pub fn is_unix(&self) -> bool {
        self.reader.socket.unix
    }

    /// The process id of the peer of a unix socket (`SO_PEERCRED`, as of
    /// when the connection was made); `None` for TCP.
    pub fn peer_pid(&self) -> Option<u32> {
        if !self.is_unix() {
            return None;
        }
        sys::peer_credentials(self.as_fd())
            .ok()
            .map(|cred| cred.pid)
            .filter(|&pid| pid != 0)
    }

    /// The effective user id of the peer of a unix socket (`SO_PEERCRED`):
    /// for a connection this side made, the user the listening process ran
    /// as when it started listening; for an accepted one, the user the
    /// connecting process ran as. `Ok(None)` for TCP.
    pub fn peer_uid(&self) -> io::Result<Option<u32>> {
        if !self.is_unix() {
            return Ok(None);
        }
        Ok(Some(sys::peer_credentials(self.as_fd())?.uid))
    }

    /// Sets the largest frame payload accepted from the peer (default
    /// [`DEFAULT_MAX_FRAME`]). Takes effect at once unless part of a frame is
    /// buffered, else right after it.
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.reader.set_max_frame(max_frame);
    }

    /// Sends a message, blocking while the socket buffer is full.
    pub fn send(&mut self, message: &Message) -> Result<(), Error> {
        self.writer.send(message)
    }

    /// Sends a message with file descriptors (unix sockets only; at most
    /// 253). The peer receives duplicates of them in [`Received::fds`].
    pub fn send_with_fds(
        &mut self,
        message: &Message,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        self.writer.send_with_fds(message, fds)
    }

    /// Sends a message while receiving: whenever the socket buffer is full,
    /// whatever the peer sent meanwhile is received and handed to
    /// `on_received`. Two peers sending big frames at each other from one
    /// thread each thus never deadlock.
    pub fn send_draining(
        &mut self,
        message: &Message,
        fds: &[BorrowedFd<'_>],
        on_received: &mut dyn FnMut(Received),
    ) -> Result<(), Error> {
        let reader = &mut self.reader;
        let mut failure = None;
        let mut drain = || {
            while failure.is_none() {
                match reader.try_recv() {
                    Ok(Some(received)) => on_received(received),
                    Ok(None) => break,
                    Err(error) => failure = Some(error),
                }
            }
        };
        self.writer.send_with(message, fds, &mut drain)?;
        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Receives the next message, blocking until it is complete.
    pub fn recv(&mut self) -> Result<Received, Error> {
        self.reader.recv()
    }

    /// Receives the next message, waiting at most `timeout`; `Ok(None)` when
    /// none completed in time (a partial frame stays buffered).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Received>, Error> {
        self.reader.recv_timeout(timeout)
    }

    /// Receives a message if one is buffered or can be read without
    /// blocking.
    pub fn try_recv(&mut self) -> Result<Option<Received>, Error> {
        self.reader.try_recv()
    }

    /// Shuts the socket down both ways: blocked and later receives return
    /// [`Error::Closed`], sends fail.
    pub fn shutdown(&self) -> Result<(), Error> {
        self.reader.socket.shutdown()
    }

    /// Splits the connection into halves for two threads.
    pub fn split(self) -> (ConnectionReader, ConnectionWriter) {
        (self.reader, self.writer)
    }

    /// Authenticates the peer and checks it is compatible; see the crate
    /// docs for the transcript. Must be the first exchange on the
    /// connection. On failure the peer is told why (when it can be), this
    /// side's sending direction is shut down, and the connection should be
    /// dropped.
    pub fn handshake(&mut self, side: Side, config: &Handshake) -> Result<PeerInfo, Error> {
        let machine = Machine::new(side, config)?;
        let info = self.run_handshake(machine, config)?;
        if side == Side::Initiator {
            self.reader.inbound.expect_verdict();
        }
        Ok(info)
    }

    /// Drives `machine` to its end, reading in handshake mode; on failure
    /// tells the peer why (best effort) and stops sending.
    fn run_handshake(
        &mut self,
        mut machine: Machine,
        config: &Handshake,
    ) -> Result<PeerInfo, Error> {
        let deadline = config.timeout.map(|timeout| Instant::now() + timeout);
        self.reader.inbound.begin_handshake()?;
        match self.drive_handshake(&mut machine, config, deadline) {
            Ok(info) => {
                self.reader.inbound.end_handshake()?;
                Ok(info)
            }
            Err(error) => {
                let grace = Instant::now() + REFUSAL_GRACE;
                for message in machine.outgoing() {
                    if self.writer.send_until(&message, Some(grace)).is_err() {
                        break;
                    }
                }
                let _ = sys::shutdown(self.as_fd(), sys::Shutdown::Write);
                Err(error)
            }
        }
    }

    /// The handshake of two peers that agreed on the challenge nonces
    /// beforehand over a channel only they can read (see [`AgreedNonces`]):
    /// each side sends its hello, challenge and proof at once.
    ///
    /// - The acceptor then checks the initiator's messages (blocking, like
    ///   [`handshake`](Self::handshake)) and answers `Accepted`; `Ok(Some(_))`
    ///   means the initiator proved the key.
    /// - The initiator returns `Ok(None)` at once, without reading: it may
    ///   send right away, which saves the whole round trip before its first
    ///   request. The acceptor's messages are checked as the first frames
    ///   received: until they pass, receiving delivers nothing else and fails
    ///   with the handshake's typed error if they do not. Use it only where
    ///   sending before the peer is verified is acceptable (a private
    ///   channel to a process this side started).
    pub fn handshake_pipelined(
        &mut self,
        side: Side,
        config: &Handshake,
        nonces: &AgreedNonces,
    ) -> Result<Option<PeerInfo>, Error> {
        let mut machine = Machine::pipelined(side, config, nonces);
        match side {
            Side::Initiator => {
                let deadline = config.timeout.map(|timeout| Instant::now() + timeout);
                for message in machine.outgoing() {
                    self.writer.send_until(&message, deadline)?;
                }
                self.reader.inbound.verify_first(machine, config.clone());
                Ok(None)
            }
            Side::Acceptor => self.run_handshake(machine, config).map(Some),
        }
    }

    fn drive_handshake(
        &mut self,
        machine: &mut Machine,
        config: &Handshake,
        deadline: Option<Instant>,
    ) -> Result<PeerInfo, Error> {
        let pipelined = machine.is_pipelined();
        loop {
            let outgoing: Vec<Message> = machine.outgoing().collect();
            for message in outgoing {
                if let Err(error) = self.writer.send_until(&message, deadline) {
                    // An initiator that stops reading once it has sent what
                    // it wanted (its proof and calls) does not need our
                    // verdict, nor, in a pipelined handshake, our proof:
                    // what it sent is still ours to check and read.
                    let unneeded = message == Message::Accepted || pipelined;
                    if unneeded && matches!(error, Error::Closed | Error::Io(_)) {
                        continue;
                    }
                    return Err(self.refusal_or(machine, config, error, deadline));
                }
            }
            let received = match self.reader.recv_until(deadline) {
                Ok(received) => received,
                Err(Error::Proto(error)) => return Err(machine.malformed(error)),
                // Descriptors came (and were closed unread): tell the peer.
                Err(Error::UnexpectedMessage(what)) => return Err(machine.unexpected(&what)),
                Err(error) => return Err(error),
            };
            if !received.fds.is_empty() {
                return Err(machine.unexpected(FDS_DURING_HANDSHAKE));
            }
            if let Some(info) = machine.receive(config, received.message)? {
                for message in machine.outgoing() {
                    match self.writer.send_until(&message, deadline) {
                        Ok(()) => {}
                        // Our verdict, to a peer that already stopped
                        // reading (see above): what it sent is still ours.
                        Err(Error::Closed | Error::Io(_)) if message == Message::Accepted => {}
                        Err(error) => return Err(error),
                    }
                }
                return Ok(info);
            }
        }
    }

    /// A send failed during the handshake: the peer may have refused us and
    /// closed before reading what we sent. What it sent before it closed is
    /// the real error: its hello, checked first (another build is a
    /// fingerprint error on both sides, whoever noticed first), else its
    /// refusal.
    fn refusal_or(
        &mut self,
        machine: &mut Machine,
        config: &Handshake,
        error: Error,
        deadline: Option<Instant>,
    ) -> Error {
        if !matches!(error, Error::Closed | Error::Io(_)) {
            return error;
        }
        let grace = Instant::now() + REFUSAL_GRACE;
        let until = deadline.map_or(grace, |deadline| deadline.min(grace));
        while let Ok(received) = self.reader.recv_until(Some(until)) {
            if let Err(failure) = machine.receive(config, received.message) {
                return failure;
            }
        }
        error
    }
}

/// Opens a connection, optionally bounded in time.
fn connect(address: &Address, timeout: Option<Duration>) -> Result<Connection, Error> {
    if let Some(name) = address.unix_name() {
        let fd = sys::unix_socket()?;
        let target = sys::UnixAddr::new(name)?;
        if timeout.is_some() {
            sys::set_send_timeout(fd.as_fd(), timeout)?;
        }
        match sys::connect(fd.as_fd(), &target) {
            Ok(()) => {}
            // A full backlog waited out the send timeout.
            Err(error) if timeout.is_some() && sys::is_connect_timeout(&error) => {
                return Err(Error::TimedOut);
            }
            Err(error) => return Err(Error::Io(error)),
        }
        if timeout.is_some() {
            sys::set_send_timeout(fd.as_fd(), None)?;
        }
        return Ok(Connection::from_socket(Socket::new(fd, true)?));
    }
    let Address::Tcp { host, port } = address else {
        unreachable!("unix_name covers every non-TCP address")
    };
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    let mut last_error = None;
    for target in (host.as_str(), *port).to_socket_addrs()? {
        let attempt = match deadline {
            None => TcpStream::connect(target),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::TimedOut);
                }
                TcpStream::connect_timeout(&target, left)
            }
        };
        match attempt {
            Ok(stream) => return Connection::from_tcp(stream),
            Err(error) => last_error = Some(error),
        }
    }
    Err(match last_error {
        Some(error) if error.kind() == io::ErrorKind::TimedOut => Error::TimedOut,
        Some(error) => Error::Io(error),
        None => Error::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )),
    })
}

impl ConnectionReader {
    /// Sets the largest frame payload accepted; see
    /// [`Connection::set_max_frame`].
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.inbound.set_max_frame(max_frame);
    }

    /// Receives the next message, blocking until it is complete.
    pub fn recv(&mut self) -> Result<Received, Error> {
        self.recv_until(None)
    }

    /// Receives the next message, waiting at most `timeout`; `Ok(None)` when
    /// none completed in time.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Received>, Error> {
        match self.recv_until(Some(Instant::now() + timeout)) {
            Ok(received) => Ok(Some(received)),
            Err(Error::TimedOut) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Receives a message if one is buffered or can be read without
    /// blocking.
    pub fn try_recv(&mut self) -> Result<Option<Received>, Error> {
        loop {
            if let Some(received) = self.inbound.next()? {
                return Ok(Some(received));
            }
            match self.inbound.fill(self.socket.fd.as_fd(), sys::DONTWAIT)? {
                Fill::Read(_) => {}
                Fill::WouldBlock => return Ok(None),
                Fill::Eof => return Err(self.end_of_stream()),
            }
        }
    }

    /// Shuts the socket down both ways; see [`Connection::shutdown`].
    pub fn shutdown(&self) -> Result<(), Error> {
        self.socket.shutdown()
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Received, Error> {
        let fd = self.socket.fd.as_fd();
        loop {
            if let Some(received) = self.inbound.next()? {
                return Ok(received);
            }
            if self.inbound.at_eof() {
                return Err(self.end_of_stream());
            }
            let flags = match deadline {
                // Blocking read: one call per frame in the common case.
                None => 0,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if sys::poll(fd, sys::POLLIN, Some(left))? == 0 {
                        if Instant::now() >= deadline {
                            return Err(Error::TimedOut);
                        }
                        continue;
                    }
                    sys::DONTWAIT
                }
            };
            match self.inbound.fill(fd, flags)? {
                Fill::Read(_) => {}
                Fill::WouldBlock if flags == 0 => {
                    // Someone made the descriptor non-blocking: wait here.
                    sys::poll(fd, sys::POLLIN, None)?;
                }
                Fill::WouldBlock => {}
                Fill::Eof => return Err(self.end_of_stream()),
            }
        }
    }

    fn end_of_stream(&self) -> Error {
        if self.socket.is_shut_down() {
            Error::Closed
        } else {
            self.inbound.end_of_stream()
        }
    }
}

impl ConnectionWriter {
    /// Sends a message, blocking while the socket buffer is full.
    pub fn send(&mut self, message: &Message) -> Result<(), Error> {
        self.send_with(message, &[], &mut || {})
    }

    /// Sends a message with file descriptors (unix sockets only).
    pub fn send_with_fds(
        &mut self,
        message: &Message,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), Error> {
        self.send_with(message, fds, &mut || {})
    }

    /// Sends a message with file descriptors (unix sockets only; may be
    /// empty) without ever blocking for long: whenever the socket buffer is
    /// full it calls `while_blocked` (where the caller drains its incoming
    /// data, so two peers writing big frames at each other never deadlock),
    /// then waits a few milliseconds for room before it tries again.
    pub fn send_with(
        &mut self,
        message: &Message,
        fds: &[BorrowedFd<'_>],
        while_blocked: &mut dyn FnMut(),
    ) -> Result<(), Error> {
        let tail = self.encode_after(&[], message, fds.len())?;
        self.write(fds, tail, while_blocked, None)
    }

    /// Like [`send_with`](Self::send_with), with the frames of `before`
    /// written ahead of `message`, all in one write when the socket has room
    /// (the descriptors belong to `message`).
    pub fn send_after_with(
        &mut self,
        before: &[Message],
        message: &Message,
        fds: &[BorrowedFd<'_>],
        while_blocked: &mut dyn FnMut(),
    ) -> Result<(), Error> {
        let tail = self.encode_after(before, message, fds.len())?;
        self.write(fds, tail, while_blocked, None)
    }

    /// Shuts the socket down both ways; see [`Connection::shutdown`].
    pub fn shutdown(&self) -> Result<(), Error> {
        self.socket.shutdown()
    }

    /// A handle that shuts the socket down from any thread, without this
    /// half (which may be blocked in a send, holding its lock).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            socket: Arc::clone(&self.socket),
        }
    }

    /// Sends a message with file descriptors without ever blocking: writes
    /// what the socket buffer takes now, and hands the rest back as a
    /// [`PendingFrame`] (`None` when all of it went), to be written later
    /// with [`send_pending`](Self::send_pending), before any other frame.
    /// The frame keeps duplicates of the descriptors when none went yet.
    pub fn try_send(
        &mut self,
        message: &Message,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Option<PendingFrame>, Error> {
        let tail = self.encode_after(&[], message, fds.len())?;
        let fd = self.socket.fd.as_fd();
        let head = &self.buf[..];
        let mut sent = 0;
        if write_parts(fd, head, tail, fds, &mut sent, &mut || {}, Wait::Never)? {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(head.len() + tail.len() - sent);
        if sent < head.len() {
            bytes.extend_from_slice(&head[sent..]);
            bytes.extend_from_slice(tail);
        } else {
            bytes.extend_from_slice(&tail[sent - head.len()..]);
        }
        let fds = if sent == 0 { own_fds(fds)? } else { Vec::new() };
        Ok(Some(PendingFrame {
            bytes,
            sent: 0,
            fds,
        }))
    }

    /// Writes the rest of `frame`, blocking while the socket buffer is full
    /// (calling `while_blocked` then, as [`send_with`](Self::send_with)).
    pub fn send_pending(
        &mut self,
        frame: &mut PendingFrame,
        while_blocked: &mut dyn FnMut(),
    ) -> Result<(), Error> {
        self.write_frame(frame, while_blocked, Wait::Block(None))
            .map(drop)
    }

    /// Writes what the socket buffer takes of `frame` now, without
    /// blocking; whether all of it has gone.
    pub fn try_send_pending(&mut self, frame: &mut PendingFrame) -> Result<bool, Error> {
        self.write_frame(frame, &mut || {}, Wait::Never)
    }

    fn write_frame(
        &mut self,
        frame: &mut PendingFrame,
        while_blocked: &mut dyn FnMut(),
        wait: Wait,
    ) -> Result<bool, Error> {
        if !frame.fds.is_empty() && !self.socket.unix {
            return Err(Error::FdsOverTcp);
        }
        let fds: Vec<BorrowedFd<'_>> = frame.fds.iter().map(|fd| fd.as_fd()).collect();
        let mut sent = frame.sent;
        let result = write_parts(
            self.socket.fd.as_fd(),
            &frame.bytes,
            &[],
            &fds,
            &mut sent,
            while_blocked,
            wait,
        );
        drop(fds);
        if sent > frame.sent {
            // The descriptors rode on the first bytes written.
            frame.fds.clear();
        }
        frame.sent = sent;
        result
    }

    fn send_until(&mut self, message: &Message, deadline: Option<Instant>) -> Result<(), Error> {
        let tail = self.encode_after(&[], message, 0)?;
        self.write(&[], tail, &mut || {}, deadline)
    }

    /// Encodes the frames of `before` and `message` into the buffer, but
    /// for the bytes of a large inline payload ending `message`, which are
    /// returned, to be written from where they are.
    fn encode_after<'m>(
        &mut self,
        before: &[Message],
        message: &'m Message,
        fd_count: usize,
    ) -> Result<&'m [u8], Error> {
        if fd_count > 0 && !self.socket.unix {
            return Err(Error::FdsOverTcp);
        }
        let fd_count = u8::try_from(fd_count)
            .ok()
            .filter(|&count| count <= MAX_FDS_PER_FRAME)
            .ok_or(Error::Proto(ProtoError::TooManyFds))?;
        if self.buf.capacity() > SHRINK_ABOVE {
            self.buf = Vec::new();
        }
        self.buf.clear();
        for earlier in before {
            encode_with_fds(earlier, 0, &mut self.buf)?;
        }
        Ok(encode_split(message, fd_count, &mut self.buf, SPLIT_ABOVE)?)
    }

    /// Writes the encoded frame, then `tail` (the rest of it, see
    /// [`encode_after`](Self::encode_after)); the descriptors ride on its
    /// first bytes.
    fn write(
        &mut self,
        fds: &[BorrowedFd<'_>],
        tail: &[u8],
        while_blocked: &mut dyn FnMut(),
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let mut sent = 0;
        let fd = self.socket.fd.as_fd();
        write_parts(
            fd,
            &self.buf,
            tail,
            fds,
            &mut sent,
            while_blocked,
            Wait::Block(deadline),
        )
        .map(drop)
    }
}

/// Whether a write waits for room in the socket buffer.
#[derive(Clone, Copy)]
enum Wait {
    /// Until the deadline, if any.
    Block(Option<Instant>),
    /// Not at all: a full buffer ends the write (`Ok(false)`).
    Never,
}

/// Writes `head` then `tail` from byte `sent` on (advanced as bytes go);
/// the descriptors ride on the first bytes, so they go only when `sent`
/// is 0. Whether all of it went (always, unless `wait` is `Never`).
fn write_parts(
    fd: BorrowedFd<'_>,
    head: &[u8],
    tail: &[u8],
    mut fds: &[BorrowedFd<'_>],
    sent: &mut usize,
    while_blocked: &mut dyn FnMut(),
    wait: Wait,
) -> Result<bool, Error> {
    let head_len = head.len();
    if *sent > 0 {
        fds = &[];
    }
    while *sent < head_len + tail.len() {
        let (first, rest) = if *sent < head_len {
            (&head[*sent..], tail)
        } else {
            (&[][..], &tail[*sent - head_len..])
        };
        match sys::send_parts_with_fds(fd, first, rest, fds, sys::DONTWAIT) {
            Ok(0) => return Err(Error::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                *sent += n;
                fds = &[];
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                let deadline = match wait {
                    Wait::Never => return Ok(false),
                    Wait::Block(deadline) => deadline,
                };
                while_blocked();
                let wait = match deadline {
                    None => BLOCKED_WAIT,
                    Some(deadline) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(Error::TimedOut);
                        }
                        left.min(BLOCKED_WAIT)
                    }
                };
                sys::poll(fd, sys::POLLOUT, Some(wait))?;
            }
            Err(error) if sys::is_broken_pipe(&error) => {
                return Err(Error::Closed);
            }
            Err(error) => return Err(Error::Io(error)),
        }
    }
    Ok(true)
}

/// Duplicates descriptors, for a frame that must keep them until written.
fn own_fds(fds: &[BorrowedFd<'_>]) -> Result<Vec<OwnedFd>, Error> {
    fds.iter()
        .map(|fd| fd.try_clone_to_owned().map_err(Error::Io))
        .collect()
}

/// A frame encoded and not yet (fully) written, holding its descriptors
/// until they go (see [`ConnectionWriter::try_send`]).
#[derive(Debug)]
pub struct PendingFrame {
    bytes: Vec<u8>,
    sent: usize,
    fds: Vec<OwnedFd>,
}

impl PendingFrame {
    /// Encodes `message` for a connection (`unix`: whether descriptors can
    /// travel), keeping duplicates of `fds` to send with it.
    pub fn encode(
        message: &Message,
        fds: &[BorrowedFd<'_>],
        unix: bool,
    ) -> Result<PendingFrame, Error> {
        if !fds.is_empty() && !unix {
            return Err(Error::FdsOverTcp);
        }
        let fd_count = u8::try_from(fds.len())
            .ok()
            .filter(|&count| count <= MAX_FDS_PER_FRAME)
            .ok_or(Error::Proto(ProtoError::TooManyFds))?;
        let mut bytes = Vec::new();
        encode_with_fds(message, fd_count, &mut bytes)?;
        Ok(PendingFrame {
            bytes,
            sent: 0,
            fds: own_fds(fds)?,
        })
    }

    /// How many bytes are left to write.
    pub fn len(&self) -> usize {
        self.bytes.len() - self.sent
    }

    /// Whether nothing is left to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shuts a connection's socket down from any thread; see
/// [`ConnectionWriter::shutdown_handle`].
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    socket: Arc<Socket>,
}

impl ShutdownHandle {
    /// Shuts the socket down both ways; see [`Connection::shutdown`].
    pub fn shutdown(&self) -> Result<(), Error> {
        self.socket.shutdown()
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.reader.socket.fd.as_fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.reader.socket.fd.as_raw_fd()
    }
}

impl AsFd for ConnectionReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.fd.as_fd()
    }
}

impl AsRawFd for ConnectionReader {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.fd.as_raw_fd()
    }
}

impl AsFd for ConnectionWriter {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.fd.as_fd()
    }
}

impl AsRawFd for ConnectionWriter {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A non-blocking send writes what fits and hands the rest back, with
    /// duplicates of descriptors that did not go yet; written later, the
    /// frames arrive whole, in order, descriptors included.
    #[test]
    fn try_send_hands_back_what_does_not_fit() {
        use processional_proto::{Outcome, Payload, Reply, TaskId};
        let (ours, theirs) = Connection::pair().unwrap();
        let (_reader, mut writer) = ours.split();
        let (mut peer, _peer_writer) = theirs.split();
        let big = |task: TaskId, byte: u8| {
            Message::Reply(Reply {
                task,
                outcome: Outcome::Value(Payload::Inline(vec![byte; 1 << 20])),
            })
        };
        let mut pending = Vec::new();
        let mut task = 0;
        while pending.is_empty() {
            task += 1;
            if let Some(rest) = writer.try_send(&big(task, task as u8), &[]).unwrap() {
                pending.push(rest);
            }
        }
        // Someone must write the rest before anything else: here a frame
        // with a descriptor, queued whole.
        let (kept, _other) = sys::socketpair().unwrap();
        let with_fd = PendingFrame::encode(&Message::Ping(7), &[kept.as_fd()], true).unwrap();
        drop(kept);
        pending.push(with_fd);
        assert!(pending.iter().all(|frame| !frame.is_empty()));
        let flusher = std::thread::spawn(move || {
            for mut frame in pending {
                writer.send_pending(&mut frame, &mut || {}).unwrap();
                assert!(frame.is_empty());
            }
        });
        for expected in 1..=task {
            let received = peer.recv().unwrap();
            assert_eq!(received.message, big(expected, expected as u8));
        }
        let last = peer.recv().unwrap();
        assert_eq!((last.message, last.fds.len()), (Message::Ping(7), 1));
        flusher.join().unwrap();
    }

    /// Unix connections ask for a larger send buffer than a bare socket
    /// gets, so that a few hundred small calls queued behind a long one do
    /// not block their caller.
    #[test]
    fn unix_connections_get_a_larger_send_buffer() {
        let (bare, _other) = sys::socketpair().unwrap();
        let (ours, _peer) = Connection::pair().unwrap();
        let default = sys::send_buffer(bare.as_fd()).unwrap();
        let granted = sys::send_buffer(ours.as_fd()).unwrap();
        assert!(granted > default, "{granted} <= {default}");
    }
}
