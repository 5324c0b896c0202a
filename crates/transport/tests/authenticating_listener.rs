//! The authenticating listener: every handshake on one thread, a cap on how
//! many run at once, a deadline for each.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{PATIENCE, config};
use processional_proto::{Message, Role};
use processional_transport::{
    AcceptStopper, Address, AuthenticatingListener, Connection, Key, Listener, Side,
};

/// A listener on `address` answering pings on each authenticated
/// connection, on threads of its own; the channel names each peer that
/// came through.
fn start(
    address: &Address,
    key: &Key,
    max_pending: usize,
    timeout: Duration,
) -> (Address, AcceptStopper, mpsc::Receiver<Option<String>>) {
    let listener = Listener::bind(address).unwrap();
    let mut handshake = config(key, Role::Server, "server");
    handshake.timeout = Some(timeout);
    let mut listener = AuthenticatingListener::new(listener, handshake, max_pending).unwrap();
    let address = listener.local_addr();
    let stopper = listener.stopper();
    let (peers, arrivals) = mpsc::channel();
    thread::spawn(move || {
        while let Some((mut connection, peer)) = listener.accept().unwrap() {
            let _ = peers.send(Some(peer.hello.program));
            thread::spawn(move || {
                while let Ok(received) = connection.recv() {
                    if let Message::Ping(n) = received.message {
                        let _ = connection.send(&Message::Pong(n));
                    }
                }
            });
        }
        let _ = peers.send(None);
    });
    (address, stopper, arrivals)
}

fn good_client(address: &Address, key: &Key, program: &str) -> Connection {
    let mut connection = Connection::connect_timeout(address, PATIENCE).unwrap();
    let peer = connection
        .handshake(Side::Initiator, &config(key, Role::Client, program))
        .unwrap();
    assert_eq!(peer.hello.program, "server");
    connection.send(&Message::Ping(7)).unwrap();
    let reply = connection.recv_timeout(PATIENCE).unwrap().expect("a pong");
    assert_eq!(reply.message, Message::Pong(7));
    connection
}

fn unix_path(address: &Address) -> std::path::PathBuf {
    match address {
        Address::Unix(path) => path.clone(),
        other => panic!("not a unix socket path: {other}"),
    }
}

/// Reads until the end of the stream (a reset counts as one).
fn read_until_closed(index: usize, peer: &mut UnixStream) {
    peer.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut bytes = Vec::new();
    match peer.read_to_end(&mut bytes) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => panic!("peer {index} was not closed: {error}"),
    }
}

#[test]
fn authenticated_connections_come_out_ready() {
    let key = Key::generate();
    for address in [
        Address::private_unix().unwrap(),
        "tcp://127.0.0.1:0".parse().unwrap(),
    ] {
        let (address, stopper, arrivals) = start(&address, &key, 4, PATIENCE);
        let _first = good_client(&address, &key, "first");
        let _second = good_client(&address, &key, "second");
        assert_eq!(arrivals.recv_timeout(PATIENCE).unwrap().unwrap(), "first");
        assert_eq!(arrivals.recv_timeout(PATIENCE).unwrap().unwrap(), "second");
        stopper.stop();
        assert_eq!(arrivals.recv_timeout(PATIENCE).unwrap(), None);
    }
}

#[test]
fn a_new_connection_displaces_the_oldest_pending_one() {
    let key = Key::generate();
    let cap = 4;
    let (address, stopper, arrivals) =
        start(&Address::private_unix().unwrap(), &key, cap, PATIENCE);
    let path = unix_path(&address);
    let mut idle: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    // The six oldest make room for the four newest.
    for (index, peer) in idle.iter_mut().enumerate().take(10 - cap) {
        read_until_closed(index, peer);
    }
    // With the cap full of idle peers, a good client still gets through.
    let _good = good_client(&address, &key, "good");
    assert_eq!(arrivals.recv_timeout(PATIENCE).unwrap().unwrap(), "good");
    stopper.stop();
}

#[test]
fn an_idle_peer_is_closed_at_the_deadline() {
    let key = Key::generate();
    let (address, stopper, arrivals) = start(
        &Address::private_unix().unwrap(),
        &key,
        4,
        Duration::from_millis(100),
    );
    let mut idle = UnixStream::connect(unix_path(&address)).unwrap();
    read_until_closed(0, &mut idle);
    let _good = good_client(&address, &key, "good");
    assert_eq!(arrivals.recv_timeout(PATIENCE).unwrap().unwrap(), "good");
    stopper.stop();
}

#[test]
fn a_peer_with_the_wrong_key_never_comes_out() {
    let key = Key::generate();
    let (address, stopper, arrivals) = start(&Address::private_unix().unwrap(), &key, 4, PATIENCE);
    let mut wrong = Connection::connect_timeout(&address, PATIENCE).unwrap();
    let result = wrong.handshake(
        Side::Initiator,
        &config(&Key::generate(), Role::Client, "wrong"),
    );
    assert!(result.is_err(), "{result:?}");
    let _good = good_client(&address, &key, "good");
    assert_eq!(arrivals.recv_timeout(PATIENCE).unwrap().unwrap(), "good");
    stopper.stop();
    assert_eq!(arrivals.recv_timeout(PATIENCE).unwrap(), None);
}
