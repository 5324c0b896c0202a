//! Findings of a third review (the serving and calling sides of a
//! connection, the transport, shared memory): each test failed before its
//! fix.
//!
//! Every wait is bounded by `PATIENCE`; fake peers run on threads of the
//! test and end with it, spawned processes are killed when their handles
//! drop.

use std::sync::mpsc;

use processional::proto::{Hello, Message, PROTOCOL_VERSION, RemoteError, RemoteErrorKind, Role};
use processional::transport::{Connection, Handshake, Side};
use processional::{ClientBuilder, Error, Key, func};
use processional_tests::PATIENCE;

/// A fake server of this build on loopback TCP: it accepts one client,
/// proves `key`, sends `frames` and never reads. Returns its address, and
/// the accepted connection (kept open, unread, until the receiver drops)
/// through the channel.
fn fake_server(key: &Key, frames: Vec<Message>) -> (String, mpsc::Receiver<Connection>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    let key = key.clone();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the client connects");
        let mut connection = Connection::from_tcp(stream).unwrap();
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            fingerprint: processional::fingerprint(),
            role: Role::Server,
            pid: std::process::id(),
            host: "here".into(),
            program: "fake-server".into(),
        };
        connection
            .handshake(Side::Acceptor, &Handshake::new(key, hello))
            .expect("the handshake");
        for frame in &frames {
            connection.send(frame).expect("a frame of the fake server");
        }
        let _ = sender.send(connection);
    });
    (address, receiver)
}

/// Connects to `address` with `key`, then calls with 32 MiB of arguments
/// (inline over TCP: one frame larger than both socket buffers, so its
/// write must wait, draining what arrives meanwhile) on a thread of its
/// own; what the call came back with, if it did within `PATIENCE`.
fn a_large_call(address: &str, key: Key) -> Option<Result<usize, Error>> {
    let process = ClientBuilder::new(address)
        .unwrap()
        .key(key)
        .connect()
        .expect("connect to the fake server");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = process.invoke_with(vec![7u8; 32 << 20], func!(|v: Vec<u8>| v.len()));
        let _ = sender.send(outcome);
    });
    receiver.recv_timeout(PATIENCE).ok()
}

fn peer_error() -> Message {
    Message::Error(RemoteError {
        kind: RemoteErrorKind::Other,
        message: "you broke the protocol".into(),
        location: None,
        backtrace: None,
    })
}

/// A peer that reports an error (`Message::Error`, what a server sends a
/// client that broke the protocol) while a call of ours waits for room in
/// the socket: the session dies, the call fails with `Disconnected`.
/// Before, the writing thread deadlocked: draining inside its write, it
/// read the error and, to shut the socket down, locked the writer it
/// held; the call never returned and every later one hung behind it.
#[test]
fn a_peer_error_read_while_a_write_waits_fails_the_call() {
    let key = Key::generate();
    let (address, _connection) = fake_server(&key, vec![peer_error()]);
    let outcome = a_large_call(&address, key).expect("the call came back");
    let error = outcome.expect_err("the peer broke off");
    assert!(error.is_worker_lost(), "{error:?}");
}

/// A peer that pings while a call of ours waits for room in the socket,
/// then reports an error: the call fails with `Disconnected`. Before, the
/// writing thread deadlocked at the ping: draining inside its write, it
/// locked the writer it held to answer with a pong.
#[test]
fn a_ping_read_while_a_write_waits_does_not_deadlock_the_writer() {
    let key = Key::generate();
    let (address, _connection) = fake_server(&key, vec![Message::Ping(7), peer_error()]);
    let outcome = a_large_call(&address, key).expect("the call came back");
    let error = outcome.expect_err("the peer broke off");
    assert!(error.is_worker_lost(), "{error:?}");
}
