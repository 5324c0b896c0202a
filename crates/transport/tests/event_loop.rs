//! The event loop: many pipelined clients, and hostile peers that must not
//! disturb a good one.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use common::{PATIENCE, config};
use processional_proto::{
    Decoder, Fingerprint, MAGIC, Message, PROTOCOL_VERSION, RefusalReason, RemoteErrorKind, Role,
    encode,
};
use processional_transport::{
    Address, ConnId, Connection, DisconnectReason, Error, EventLoop, Handler, Key, Listener,
    Outbox, PeerInfo, Side,
};

/// Answers `Ping(n)` with `Pong(n)`, echoes descriptors, records what
/// happened.
#[derive(Default)]
struct Echo {
    connected: Vec<(ConnId, String)>,
    disconnected: Vec<(ConnId, String)>,
}

impl Handler for Echo {
    fn on_connect(&mut self, conn: ConnId, peer: &PeerInfo) {
        self.connected.push((conn, peer.hello.program.clone()));
    }

    fn on_message(&mut self, conn: ConnId, message: Message, outbox: &mut Outbox<'_>) {
        match message {
            Message::Ping(n) => outbox.send(conn, Message::Pong(n)),
            Message::Shutdown => {
                outbox.send(conn, Message::ShutdownAck);
                outbox.close(conn);
            }
            other => outbox.send(conn, other),
        }
    }

    fn on_message_with_fds(
        &mut self,
        conn: ConnId,
        message: Message,
        fds: Vec<OwnedFd>,
        outbox: &mut Outbox<'_>,
    ) {
        let reply = match message {
            Message::Ping(n) => Message::Pong(n),
            other => other,
        };
        outbox.send_with_fds(conn, reply, fds);
    }

    fn on_disconnect(&mut self, conn: ConnId, reason: DisconnectReason) {
        self.disconnected.push((conn, format!("{reason:?}")));
    }
}

fn client(address: &Address, key: &Key, program: &str) -> Connection {
    let mut conn = Connection::connect_timeout(address, PATIENCE).unwrap();
    let peer = conn
        .handshake(Side::Initiator, &config(key, Role::Client, program))
        .unwrap();
    assert_eq!(peer.hello.role, Role::Server);
    conn
}

/// Sends `count` pings with up to `window` in flight; checks each is
/// answered once, in order.
fn ping_pipelined(conn: &mut Connection, base: u64, count: u64, window: u64) {
    let (mut sent, mut answered) = (0, 0);
    while answered < count {
        while sent < count && sent - answered < window {
            conn.send(&Message::Ping(base + sent)).unwrap();
            sent += 1;
        }
        let reply = conn
            .recv_timeout(PATIENCE)
            .unwrap()
            .expect("no answer in time");
        assert_eq!(reply.message, Message::Pong(base + answered));
        answered += 1;
    }
}

fn start(address: &Address, key: &Key) -> (processional_transport::EventLoopHandle<Echo>, Address) {
    let listener = Listener::bind(address).unwrap();
    let mut server_config = config(key, Role::Server, "echo-server");
    server_config.timeout = Some(Duration::from_secs(2));
    server_config.accept_roles = vec![Role::Client];
    let event_loop = EventLoop::new(listener, server_config, Echo::default()).unwrap();
    let target = event_loop.local_addr();
    (event_loop.spawn().unwrap(), target)
}

#[test]
fn sixty_four_clients_ten_thousand_frames_each() {
    const CLIENTS: u64 = 64;
    const FRAMES: u64 = 10_000;
    let key = Key::generate();
    let (handle, address) = start(&Address::private_unix().unwrap(), &key);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|index| {
            let (address, key) = (address.clone(), key.clone());
            thread::spawn(move || {
                let mut conn = client(&address, &key, &format!("client-{index}"));
                ping_pipelined(&mut conn, index << 32, FRAMES, 128);
                conn.send(&Message::Shutdown).unwrap();
                let ack = conn.recv_timeout(PATIENCE).unwrap().unwrap();
                assert_eq!(ack.message, Message::ShutdownAck);
                assert!(matches!(conn.recv_timeout(PATIENCE), Err(Error::Closed)));
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    handle.stop();
    let echo = handle.join().unwrap();
    assert_eq!(echo.connected.len(), CLIENTS as usize);
    assert_eq!(echo.disconnected.len(), CLIENTS as usize);
    assert!(
        echo.disconnected
            .iter()
            .all(|(_, reason)| reason == "Closed"),
        "{:?}",
        echo.disconnected
    );
}

#[test]
fn tcp_clients_through_the_loop() {
    let key = Key::generate();
    let (handle, address) = start(&"tcp://127.0.0.1:0".parse().unwrap(), &key);
    let clients: Vec<_> = (0..8u64)
        .map(|index| {
            let (address, key) = (address.clone(), key.clone());
            thread::spawn(move || {
                let mut conn = client(&address, &key, "tcp-client");
                ping_pipelined(&mut conn, index << 32, 2000, 64);
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    handle.stop();
    let echo = handle.join().unwrap();
    assert_eq!(echo.connected.len(), 8);
    // Stopping tells the handler about connections still open; clients that
    // already left were reported as closed by the peer.
    assert_eq!(echo.disconnected.len(), 8);
}

/// A raw byte stream to the loop, bypassing the transport.
enum Raw {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Raw {
    fn connect(address: &Address) -> Raw {
        match address {
            Address::Unix(path) => Raw::Unix(UnixStream::connect(path).unwrap()),
            Address::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port)).unwrap();
                stream.set_nodelay(true).unwrap();
                Raw::Tcp(stream)
            }
            Address::Abstract(_) => unreachable!(),
        }
        .with_timeout()
    }

    fn with_timeout(self) -> Raw {
        match &self {
            Raw::Unix(stream) => stream.set_read_timeout(Some(PATIENCE)).unwrap(),
            Raw::Tcp(stream) => stream.set_read_timeout(Some(PATIENCE)).unwrap(),
        }
        self
    }

    /// A connection over a clone of the same socket, and the raw stream.
    fn with_connection(self) -> (Connection, Raw) {
        match self {
            Raw::Unix(stream) => (
                Connection::from_unix(stream.try_clone().unwrap()).unwrap(),
                Raw::Unix(stream),
            ),
            Raw::Tcp(stream) => (
                Connection::from_tcp(stream.try_clone().unwrap()).unwrap(),
                Raw::Tcp(stream),
            ),
        }
    }

    fn write_all_lossy(&mut self, bytes: &[u8]) {
        // The loop may close on us mid-way; that is fine.
        let _ = match self {
            Raw::Unix(stream) => stream.write_all(bytes),
            Raw::Tcp(stream) => stream.write_all(bytes),
        };
    }

    /// Every frame the loop sends until it closes the connection.
    fn frames_until_closed(&mut self) -> Vec<Message> {
        let mut decoder = Decoder::new();
        let mut frames = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let read = match self {
                Raw::Unix(stream) => stream.read(&mut buf),
                Raw::Tcp(stream) => stream.read(&mut buf),
            };
            match read {
                Ok(0) => return frames,
                Ok(n) => decoder.feed(&buf[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return frames,
                Err(error) => panic!("waiting for the loop to close: {error}"),
            }
            while let Some(message) = decoder.next().unwrap() {
                frames.push(message);
            }
        }
    }
}

fn assert_error_frame(frames: &[Message], needle: &str) {
    let found = frames.iter().any(|frame| match frame {
        Message::Error(error) => {
            error.kind == RemoteErrorKind::Other && error.message.contains(needle)
        }
        _ => false,
    });
    assert!(found, "no error frame mentioning {needle:?} in {frames:?}");
}

/// A header announcing a payload of 4 GiB - 1.
fn huge_header() -> Vec<u8> {
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    header.extend_from_slice(&[0, 0]);
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header
}

fn garbage(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn hostile_peers_do_not_disturb(address: Address) {
    let key = Key::generate();
    let (handle, address) = start(&address, &key);
    let done = Arc::new(AtomicBool::new(false));
    let good = {
        let (address, key, done) = (address.clone(), key.clone(), Arc::clone(&done));
        thread::spawn(move || {
            let mut conn = client(&address, &key, "good");
            let mut base = 0;
            while !done.load(Ordering::Acquire) {
                ping_pipelined(&mut conn, base, 100, 16);
                base += 100;
            }
            ping_pipelined(&mut conn, base, 100, 16);
            base + 100
        })
    };

    // Random bytes before any handshake: an error frame, then closed.
    let mut raw = Raw::connect(&address);
    raw.write_all_lossy(&garbage(64 << 10));
    assert_error_frame(&raw.frames_until_closed(), "magic");

    // A header announcing 4 GiB, unauthenticated.
    let mut raw = Raw::connect(&address);
    raw.write_all_lossy(&huge_header());
    assert_error_frame(&raw.frames_until_closed(), "exceeds the limit");

    // The same after authenticating.
    let (mut conn, mut raw) = Raw::connect(&address).with_connection();
    conn.handshake(
        Side::Initiator,
        &config(&key, Role::Client, "huge-after-auth"),
    )
    .unwrap();
    raw.write_all_lossy(&huge_header());
    match conn.recv_timeout(PATIENCE) {
        Ok(Some(received)) => assert_error_frame(&[received.message], "exceeds the limit"),
        other => panic!("expected an error frame, got {other:?}"),
    }
    drop((conn, raw));

    // Vanishing mid-frame, during and after the handshake.
    let mut raw = Raw::connect(&address);
    raw.write_all_lossy(&huge_header()[..5]);
    drop(raw);
    let (mut conn, mut raw) = Raw::connect(&address).with_connection();
    conn.handshake(Side::Initiator, &config(&key, Role::Client, "vanishing"))
        .unwrap();
    let mut frame = Vec::new();
    encode(&Message::Ping(1), &mut frame).unwrap();
    raw.write_all_lossy(&frame[..frame.len() - 2]);
    drop((conn, raw));

    // Wrong key.
    let mut conn = Connection::connect_timeout(&address, PATIENCE).unwrap();
    let result = conn.handshake(
        Side::Initiator,
        &config(&Key::generate(), Role::Client, "wrong-key"),
    );
    assert!(
        matches!(
            result,
            Err(Error::WrongKey
                | Error::Refused {
                    reason: RefusalReason::WrongKey,
                    ..
                })
        ),
        "{result:?}"
    );

    // Wrong fingerprint: the error names both builds and programs.
    let mut conn = Connection::connect_timeout(&address, PATIENCE).unwrap();
    let mut other_build = config(&key, Role::Client, "other-build");
    other_build.hello.fingerprint = Fingerprint([0x17; 32]);
    match conn.handshake(Side::Initiator, &other_build) {
        Err(Error::Fingerprint {
            ours,
            theirs,
            detail,
        }) => {
            assert_eq!(ours, Fingerprint([0x17; 32]));
            assert_eq!(theirs, Fingerprint([0x42; 32]));
            for needle in [
                "other-build",
                "echo-server",
                "1717171717171717",
                "4242424242424242",
            ] {
                assert!(detail.contains(needle), "{detail}");
            }
        }
        other => panic!("expected a fingerprint error, got {other:?}"),
    }

    // A role the server does not accept.
    let mut conn = Connection::connect_timeout(&address, PATIENCE).unwrap();
    let result = conn.handshake(Side::Initiator, &config(&key, Role::Slave, "slave"));
    assert!(
        matches!(
            result,
            Err(Error::Refused {
                reason: RefusalReason::WrongRole,
                ..
            })
        ),
        "{result:?}"
    );

    // A call before the handshake.
    let mut conn = Connection::connect_timeout(&address, PATIENCE).unwrap();
    conn.send(&Message::Ping(1)).unwrap();
    let mut frames = Vec::new();
    while let Ok(Some(received)) = conn.recv_timeout(PATIENCE) {
        frames.push(received.message);
    }
    assert!(
        frames.iter().any(|frame| matches!(
            frame,
            Message::Refused {
                reason: RefusalReason::UnexpectedMessage,
                ..
            }
        )),
        "{frames:?}"
    );

    // A silent peer is dropped at the handshake deadline.
    let mut raw = Raw::connect(&address);
    let frames = raw.frames_until_closed();
    assert!(
        matches!(frames[..], [Message::Hello(_), Message::Challenge(_)]),
        "{frames:?}"
    );

    // Descriptors through the loop (unix only).
    if matches!(address, Address::Unix(_)) {
        let mut conn = client(&address, &key, "fds");
        let (reader, mut writer) = UnixStream::pair().unwrap();
        conn.send_with_fds(&Message::Ping(3), &[reader.as_fd()])
            .unwrap();
        drop(reader);
        let reply = conn.recv_timeout(PATIENCE).unwrap().unwrap();
        assert_eq!(reply.message, Message::Pong(3));
        assert_eq!(reply.fds.len(), 1);
        writer.write_all(b"round trip").unwrap();
        drop(writer);
        let mut text = String::new();
        UnixStream::from(reply.fds.into_iter().next().unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "round trip");
    }

    done.store(true, Ordering::Release);
    let answered = good.join().unwrap();
    assert!(answered >= 100);
    handle.stop();
    let echo = handle.join().unwrap();

    let mut programs: Vec<_> = echo.connected.iter().map(|(_, p)| p.as_str()).collect();
    programs.sort_unstable();
    let mut expected = vec!["good", "huge-after-auth", "vanishing"];
    if matches!(address, Address::Unix(_)) {
        expected.push("fds");
    }
    expected.sort_unstable();
    assert_eq!(
        programs, expected,
        "unauthenticated peers reached the handler"
    );
    let reason_of = |program: &str| {
        let id = echo.connected.iter().find(|(_, p)| p == program).unwrap().0;
        echo.disconnected
            .iter()
            .find(|(conn, _)| *conn == id)
            .map(|(_, reason)| reason.clone())
            .unwrap_or_default()
    };
    assert!(
        reason_of("vanishing").contains("Truncated"),
        "{}",
        reason_of("vanishing")
    );
    assert!(
        reason_of("huge-after-auth").contains("FrameTooLarge"),
        "{}",
        reason_of("huge-after-auth")
    );
}

#[test]
fn hostile_peers_over_unix() {
    hostile_peers_do_not_disturb(Address::private_unix().unwrap());
}

#[test]
fn hostile_peers_over_tcp() {
    hostile_peers_do_not_disturb("tcp://127.0.0.1:0".parse().unwrap());
}

#[test]
fn remote_sends_from_another_thread() {
    struct Remember(std::sync::mpsc::Sender<ConnId>);
    impl Handler for Remember {
        fn on_connect(&mut self, conn: ConnId, _peer: &PeerInfo) {
            self.0.send(conn).unwrap();
        }
        fn on_message(&mut self, _conn: ConnId, _message: Message, _outbox: &mut Outbox<'_>) {}
    }
    let key = Key::generate();
    let (sender, ids) = std::sync::mpsc::channel();
    let listener = Listener::bind(&Address::private_unix().unwrap()).unwrap();
    let event_loop = EventLoop::new(
        listener,
        config(&key, Role::Server, "server"),
        Remember(sender),
    )
    .unwrap();
    let address = event_loop.local_addr();
    let handle = event_loop.spawn().unwrap();
    let mut conn = client(&address, &key, "client");
    let id = ids.recv_timeout(PATIENCE).unwrap();
    let remote = handle.remote();
    thread::spawn(move || {
        for n in 0..100 {
            remote.send(id, Message::Pong(n));
        }
        remote.close(id);
    });
    for n in 0..100 {
        assert_eq!(
            conn.recv_timeout(PATIENCE).unwrap().unwrap().message,
            Message::Pong(n)
        );
    }
    assert!(matches!(conn.recv_timeout(PATIENCE), Err(Error::Closed)));
    handle.stop();
    handle.join().unwrap();
}
