//! Blocking connections: echo over every address kind, fd passing, big
//! frames both ways, timeouts, shutdown, handshake failures.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use common::{PATIENCE, config};
use processional_proto::{
    Call, Fingerprint, FunctionRef, Message, Payload, RefusalReason, Role, RunMode,
};
use processional_transport::{Address, Connection, Error, Key, Listener, Side};

/// Serves one connection: handshake, then echo Ping as Pong until closed.
fn echo_server(listener: Listener, key: Key) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut conn = listener
            .accept_timeout(PATIENCE)
            .unwrap()
            .expect("no client came");
        conn.handshake(Side::Acceptor, &config(&key, Role::Server, "echo-server"))
            .unwrap();
        let mut answered = 0;
        loop {
            match conn.recv_timeout(PATIENCE) {
                Ok(Some(received)) => {
                    let Message::Ping(n) = received.message else {
                        panic!("unexpected {:?}", received.message)
                    };
                    conn.send(&Message::Pong(n)).unwrap();
                    answered += 1;
                }
                Ok(None) => panic!("client went silent"),
                Err(Error::Closed) => return answered,
                Err(error) => panic!("server: {error}"),
            }
        }
    })
}

fn echo_round_trip(address: &Address) {
    let key = Key::generate();
    let listener = Listener::bind(address).unwrap();
    let target = listener.local_addr();
    let server = echo_server(listener, key.clone());
    let mut conn = Connection::connect_timeout(&target, PATIENCE).unwrap();
    let peer = conn
        .handshake(Side::Initiator, &config(&key, Role::Client, "echo-client"))
        .unwrap();
    assert_eq!(peer.hello.program, "echo-server");
    assert_eq!(peer.hello.role, Role::Server);
    for n in 0..1000 {
        conn.send(&Message::Ping(n)).unwrap();
        let reply = conn.recv_timeout(PATIENCE).unwrap().expect("no reply");
        assert_eq!(reply.message, Message::Pong(n));
    }
    drop(conn);
    assert_eq!(server.join().unwrap(), 1000);
}

#[test]
fn unix_echo() {
    echo_round_trip(&Address::private_unix().unwrap());
}

#[test]
fn abstract_echo() {
    let name = format!("processional-test-{}-{}", std::process::id(), line!());
    echo_round_trip(&Address::Abstract(name));
}

#[test]
fn tcp_echo() {
    echo_round_trip(&"tcp://127.0.0.1:0".parse().unwrap());
}

#[test]
fn tcp_ipv6_echo_if_available() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        return; // no IPv6 loopback on this machine
    }
    echo_round_trip(&"tcp://[::1]:0".parse().unwrap());
}

fn paired() -> (Connection, Connection) {
    let key = Key::generate();
    let (mut a, mut b) = Connection::pair().unwrap();
    let config_b = config(&key, Role::Slave, "slave");
    let other = thread::spawn(move || {
        b.handshake(Side::Acceptor, &config_b).unwrap();
        b
    });
    a.handshake(Side::Initiator, &config(&key, Role::Master, "master"))
        .unwrap();
    (a, other.join().unwrap())
}

#[test]
fn pair_reports_peer_pid_and_kind() {
    let (a, b) = paired();
    assert!(a.is_unix() && b.is_unix());
    assert_eq!(a.peer_pid(), Some(std::process::id()));
}

#[test]
fn fds_pass_through_and_work() {
    let (mut a, mut b) = paired();
    let (pipe_reader, mut pipe_writer) = UnixStream::pair().unwrap();
    let (second_reader, _second_writer) = UnixStream::pair().unwrap();
    a.send_with_fds(
        &Message::Ping(1),
        &[pipe_reader.as_fd(), second_reader.as_fd()],
    )
    .unwrap();
    a.send(&Message::Ping(2)).unwrap();
    drop(pipe_reader);
    let received = b.recv_timeout(PATIENCE).unwrap().unwrap();
    assert_eq!(received.message, Message::Ping(1));
    assert_eq!(received.fds.len(), 2);
    pipe_writer.write_all(b"through the socket").unwrap();
    drop(pipe_writer);
    let mut fds = received.fds.into_iter();
    let mut reader = UnixStream::from(fds.next().unwrap());
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    assert_eq!(text, "through the socket");
    let plain = b.recv_timeout(PATIENCE).unwrap().unwrap();
    assert_eq!(plain.message, Message::Ping(2));
    assert!(plain.fds.is_empty());
}

#[test]
fn fds_over_tcp_are_refused() {
    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap()).unwrap();
    let mut conn = Connection::connect(&listener.local_addr()).unwrap();
    assert!(!conn.is_unix());
    assert_eq!(conn.peer_pid(), None);
    let (reader, _writer) = UnixStream::pair().unwrap();
    assert!(matches!(
        conn.send_with_fds(&Message::Ping(1), &[reader.as_fd()]),
        Err(Error::FdsOverTcp)
    ));
}

fn big_call(fill: u8, len: usize) -> Message {
    Message::Call(Call {
        task: u64::from(fill),
        function: FunctionRef {
            offset: 0,
            signature: 0,
        },
        mode: RunMode::Queued,
        args: Payload::Inline(vec![fill; len]),
    })
}

/// Both sides send an 8 MiB frame at each other at once, from one thread
/// each: without draining while blocked, both would wait forever.
#[test]
fn big_frames_both_ways_do_not_deadlock() {
    const LEN: usize = 8 << 20;
    let (a, b) = paired();
    let side = |mut conn: Connection, fill: u8| {
        thread::spawn(move || {
            let mut got = Vec::new();
            conn.send_draining(&big_call(fill, LEN), &[], &mut |received| {
                got.push(received.message)
            })
            .unwrap();
            while got.is_empty() {
                got.push(
                    conn.recv_timeout(PATIENCE)
                        .unwrap()
                        .expect("no frame")
                        .message,
                );
            }
            got
        })
    };
    let from_b = side(a, 1);
    let from_a = side(b, 2);
    assert_eq!(from_b.join().unwrap(), [big_call(2, LEN)]);
    assert_eq!(from_a.join().unwrap(), [big_call(1, LEN)]);
}

/// The same with split halves and an explicit `while_blocked` hook.
#[test]
fn send_with_hook_drains_the_reader() {
    const LEN: usize = 8 << 20;
    let (a, b) = paired();
    let side = |conn: Connection, fill: u8| {
        thread::spawn(move || {
            let (mut reader, mut writer) = conn.split();
            let mut got = Vec::new();
            let mut calls = 0;
            writer
                .send_with(&big_call(fill, LEN), &[], &mut || {
                    calls += 1;
                    while let Some(received) = reader.try_recv().unwrap() {
                        got.push(received.message);
                    }
                })
                .unwrap();
            assert!(calls > 0, "an 8 MiB frame fits no socket buffer");
            while got.is_empty() {
                got.push(
                    reader
                        .recv_timeout(PATIENCE)
                        .unwrap()
                        .expect("no frame")
                        .message,
                );
            }
            got
        })
    };
    let from_b = side(a, 3);
    let from_a = side(b, 4);
    assert_eq!(from_b.join().unwrap(), [big_call(4, LEN)]);
    assert_eq!(from_a.join().unwrap(), [big_call(3, LEN)]);
}

#[test]
fn big_frames_over_tcp() {
    let key = Key::generate();
    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap()).unwrap();
    let target = listener.local_addr();
    let key2 = key.clone();
    let server = thread::spawn(move || {
        let mut conn = listener.accept_timeout(PATIENCE).unwrap().unwrap();
        conn.handshake(Side::Acceptor, &config(&key2, Role::Server, "s"))
            .unwrap();
        let received = conn.recv_timeout(PATIENCE).unwrap().unwrap();
        conn.send(&received.message).unwrap();
    });
    let mut conn = Connection::connect(&target).unwrap();
    conn.handshake(Side::Initiator, &config(&key, Role::Client, "c"))
        .unwrap();
    let message = big_call(9, 3 << 20);
    conn.send(&message).unwrap();
    assert_eq!(
        conn.recv_timeout(PATIENCE).unwrap().unwrap().message,
        message
    );
    server.join().unwrap();
}

#[test]
fn try_recv_and_timeouts() {
    let (mut a, mut b) = paired();
    assert!(b.try_recv().unwrap().is_none());
    assert!(b.recv_timeout(Duration::from_millis(20)).unwrap().is_none());
    a.send(&Message::Ping(5)).unwrap();
    let mut got = None;
    for _ in 0..1000 {
        if let Some(received) = b.try_recv().unwrap() {
            got = Some(received.message);
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(got, Some(Message::Ping(5)));
}

#[test]
fn clean_close_then_closed() {
    let (a, mut b) = paired();
    drop(a);
    let got = b.recv_timeout(PATIENCE);
    assert!(matches!(got, Err(Error::Closed)), "{got:?}");
    assert!(matches!(b.recv(), Err(Error::Closed)));
}

/// The kernel's id of the calling thread.
fn kernel_thread_id() -> String {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_string_lossy().into_owned()
}

/// Whether thread `tid` of this process sleeps (blocked in the kernel).
fn is_sleeping(tid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            == Some("S")
    })
}

#[test]
fn shutdown_unblocks_a_blocked_reader() {
    let (a, _b) = paired();
    let (mut reader, writer) = a.split();
    let (ids, id) = std::sync::mpsc::channel();
    let blocked = thread::spawn(move || {
        ids.send(kernel_thread_id()).unwrap();
        reader.recv()
    });
    let tid = id.recv_timeout(PATIENCE).unwrap();
    // Shut down once the reader sleeps in `recv` (nothing else puts it to
    // sleep), not before.
    let deadline = std::time::Instant::now() + PATIENCE;
    while !is_sleeping(&tid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the reader never blocked"
        );
        thread::sleep(Duration::from_millis(1));
    }
    writer.shutdown().unwrap();
    assert!(matches!(blocked.join().unwrap(), Err(Error::Closed)));
}

#[test]
fn close_mid_frame_is_truncated() {
    // Write half a frame through a raw socket.
    let (raw, theirs) = UnixStream::pair().unwrap();
    let mut conn = Connection::from_unix(theirs).unwrap();
    let mut frame = Vec::new();
    processional_proto::encode(&Message::Ping(77), &mut frame).unwrap();
    (&raw).write_all(&frame[..frame.len() - 1]).unwrap();
    drop(raw);
    assert!(matches!(conn.recv_timeout(PATIENCE), Err(Error::Truncated)));
}

#[test]
fn from_fd_takes_sockets_only() {
    let (one, _two) = UnixStream::pair().unwrap();
    let mut conn = Connection::from_fd(OwnedFd::from(one)).unwrap();
    assert!(conn.is_unix());
    assert!(conn.try_recv().unwrap().is_none());
    let file = std::fs::File::open("/dev/null").unwrap();
    assert!(matches!(
        Connection::from_fd(OwnedFd::from(file)),
        Err(Error::Io(_))
    ));
}

#[test]
fn connect_to_nothing_fails() {
    let address = Address::private_unix().unwrap();
    assert!(matches!(Connection::connect(&address), Err(Error::Io(_))));
    assert!(matches!(
        Connection::connect_timeout(&address, PATIENCE),
        Err(Error::Io(_))
    ));
}

/// Runs a handshake between two configs over a socket pair.
fn handshake_pair(
    a: processional_transport::Handshake,
    b: processional_transport::Handshake,
) -> (
    Result<processional_transport::PeerInfo, Error>,
    Result<processional_transport::PeerInfo, Error>,
) {
    let (mut x, mut y) = Connection::pair().unwrap();
    let other = thread::spawn(move || y.handshake(Side::Acceptor, &b));
    let mine = x.handshake(Side::Initiator, &a);
    (mine, other.join().unwrap())
}

#[test]
fn wrong_key_is_typed_on_both_sides() {
    let (a, b) = handshake_pair(
        config(&Key::generate(), Role::Client, "c"),
        config(&Key::generate(), Role::Server, "s"),
    );
    for result in [a, b] {
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
    }
}

#[test]
fn fingerprint_mismatch_names_both_builds() {
    let key = Key::generate();
    let mut other = config(&key, Role::Server, "newer-build");
    other.hello.fingerprint = Fingerprint([0x99; 32]);
    let (a, b) = handshake_pair(config(&key, Role::Client, "older-build"), other);
    for result in [a, b] {
        match result {
            Err(Error::Fingerprint { detail, .. })
            | Err(Error::Refused {
                reason: RefusalReason::WrongFingerprint,
                detail,
            }) => {
                for needle in [
                    "older-build",
                    "newer-build",
                    "4242424242424242",
                    "9999999999999999",
                ] {
                    assert!(detail.contains(needle), "{detail}");
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn protocol_and_role_mismatches() {
    let key = Key::generate();
    let mut newer = config(&key, Role::Server, "s");
    newer.hello.protocol += 1;
    let (a, _) = handshake_pair(config(&key, Role::Client, "c"), newer);
    assert!(matches!(a, Err(Error::ProtocolVersion { .. })), "{a:?}");

    let mut strict = config(&key, Role::Server, "s");
    strict.accept_roles = vec![Role::Client];
    let (a, b) = handshake_pair(config(&key, Role::Slave, "c"), strict);
    assert!(
        matches!(
            a,
            Err(Error::Refused {
                reason: RefusalReason::WrongRole,
                ..
            })
        ),
        "{a:?}"
    );
    assert!(
        matches!(
            b,
            Err(Error::WrongRole {
                theirs: Role::Slave,
                ..
            })
        ),
        "{b:?}"
    );
}

#[test]
fn handshake_times_out_on_a_silent_peer() {
    let (mut a, _silent) = Connection::pair().unwrap();
    let mut short = config(&Key::generate(), Role::Client, "c");
    short.timeout = Some(Duration::from_millis(50));
    assert!(matches!(
        a.handshake(Side::Initiator, &short),
        Err(Error::TimedOut)
    ));
}

#[test]
fn nothing_but_the_handshake_is_accepted_first() {
    let (mut a, mut b) = Connection::pair().unwrap();
    let key = Key::generate();
    let config_b = config(&key, Role::Server, "s");
    let other = thread::spawn(move || b.handshake(Side::Acceptor, &config_b));
    a.send(&Message::Ping(1)).unwrap();
    let result = other.join().unwrap();
    assert!(
        matches!(result, Err(Error::UnexpectedMessage(_))),
        "{result:?}"
    );
    // The intruder is told why.
    let mut refused = false;
    while let Ok(Some(received)) = a.recv_timeout(PATIENCE) {
        if let Message::Refused { reason, .. } = received.message {
            assert_eq!(reason, RefusalReason::UnexpectedMessage);
            refused = true;
            break;
        }
    }
    assert!(refused);
}

#[test]
fn pipelined_handshake_lets_the_initiator_send_at_once() {
    use processional_transport::AgreedNonces;
    let key = Key::generate();
    let nonces = AgreedNonces::generate().unwrap();
    let (mut a, mut b) = Connection::pair().unwrap();
    // The initiator sends before the acceptor even started its side.
    assert!(
        a.handshake_pipelined(
            Side::Initiator,
            &config(&key, Role::Master, "master"),
            &nonces
        )
        .unwrap()
        .is_none()
    );
    a.send(&Message::Ping(7)).unwrap();
    let config_b = config(&key, Role::Slave, "slave");
    let acceptor = thread::spawn(move || {
        let peer = b
            .handshake_pipelined(Side::Acceptor, &config_b, &nonces)
            .unwrap()
            .expect("the acceptor learns its peer");
        assert_eq!(peer.hello.role, Role::Master);
        assert_eq!(b.recv().unwrap().message, Message::Ping(7));
        b.send(&Message::Pong(7)).unwrap();
        b
    });
    // The acceptor's handshake messages and verdict are consumed first.
    assert_eq!(
        a.recv_timeout(PATIENCE).unwrap().unwrap().message,
        Message::Pong(7)
    );
    drop(acceptor.join().unwrap());
}

#[test]
fn pipelined_handshake_with_a_wrong_key_fails_on_both_sides() {
    use processional_transport::AgreedNonces;
    let nonces = AgreedNonces::generate().unwrap();
    let (mut a, mut b) = Connection::pair().unwrap();
    a.handshake_pipelined(
        Side::Initiator,
        &config(&Key::generate(), Role::Master, "master"),
        &nonces,
    )
    .unwrap();
    a.send(&Message::Ping(1)).unwrap();
    let config_b = config(&Key::generate(), Role::Slave, "slave");
    let acceptor = thread::spawn(move || b.handshake_pipelined(Side::Acceptor, &config_b, &nonces));
    let error = acceptor.join().unwrap().expect_err("the acceptor refuses");
    assert!(matches!(error, Error::WrongKey), "{error:?}");
    let error = a
        .recv_timeout(PATIENCE)
        .expect_err("the initiator refuses too");
    assert!(
        matches!(error, Error::WrongKey | Error::Refused { .. }),
        "{error:?}"
    );
}

#[test]
fn pipelined_handshake_refuses_a_challenge_that_is_not_the_agreed_one() {
    use processional_transport::AgreedNonces;
    let key = Key::generate();
    let (mut a, mut b) = Connection::pair().unwrap();
    a.handshake_pipelined(
        Side::Initiator,
        &config(&key, Role::Master, "master"),
        &AgreedNonces::generate().unwrap(),
    )
    .unwrap();
    let config_b = config(&key, Role::Slave, "slave");
    let other = AgreedNonces::generate().unwrap();
    let acceptor = thread::spawn(move || b.handshake_pipelined(Side::Acceptor, &config_b, &other));
    assert!(acceptor.join().unwrap().is_err());
    assert!(a.recv_timeout(PATIENCE).is_err());
}
