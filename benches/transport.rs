//! Transport benches: an 8-byte round trip between two processes over a unix
//! socketpair and over loopback TCP, through processional's `Connection`
//! (`subject`) and through plain std sockets (`baseline`).
//!
//! The echo peer is this executable started again in a child role (see
//! `processional_benches::run_child_if_requested`).

use std::fmt::Debug;
use std::hint::black_box;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use processional_benches::{
    CHILD_ADDR_ENV, CHILD_KEY_ENV, ChildResult, ChildRole, PeerProcess, echo_raw, inherited_fd,
    round_trip_raw, run_child_if_requested,
};
use processional_proto::{Fingerprint, Hello, Message, PROTOCOL_VERSION, Role};
use processional_transport::{Address, Connection, Handshake, Key, Listener, Side};

/// How long the bench waits for a child to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

const ROLES: &[ChildRole] = &[
    ChildRole {
        name: "raw-unix-echo",
        run: raw_unix_echo,
    },
    ChildRole {
        name: "raw-tcp-echo",
        run: raw_tcp_echo,
    },
    ChildRole {
        name: "unix-echo",
        run: unix_echo,
    },
    ChildRole {
        name: "tcp-echo",
        run: tcp_echo,
    },
];

fn main() {
    run_child_if_requested(ROLES);
    let mut criterion = Criterion::default().configure_from_args();
    unix_echo_rtt(&mut criterion);
    tcp_echo_rtt(&mut criterion);
    criterion.final_summary();
}

/// `transport.unix_echo_rtt`: 8 bytes there and back over a socketpair whose
/// other end a child process holds.
fn unix_echo_rtt(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("transport.unix_echo_rtt");
    bench_round_trips(&mut group, "baseline", spawn_raw_unix_echo, round_trip_raw);
    bench_round_trips(&mut group, "subject", spawn_unix_echo, round_trip);
    group.finish();
}

/// `transport.tcp_echo_rtt`: 8 bytes there and back over loopback TCP
/// (TCP_NODELAY) to a child process.
fn tcp_echo_rtt(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("transport.tcp_echo_rtt");
    bench_round_trips(&mut group, "baseline", spawn_raw_tcp_echo, round_trip_raw);
    bench_round_trips(&mut group, "subject", spawn_tcp_echo, round_trip);
    group.finish();
}

/// Benches `round_trip` over the channel `spawn` opens to a child echo; one
/// iteration is one round trip. The child starts only if criterion runs the
/// function, and is killed when it is done.
fn bench_round_trips<S, E: Debug, F: Debug>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    function: &str,
    spawn: fn() -> Result<(S, PeerProcess), E>,
    round_trip: fn(&mut S, u64) -> Result<(), F>,
) {
    let mut echo: Option<(S, PeerProcess)> = None;
    group.bench_function(function, |bencher| {
        let (channel, _peer) = echo.get_or_insert_with(|| {
            spawn().unwrap_or_else(|error| panic!("starting the {function} echo: {error:?}"))
        });
        let mut value = 0u64;
        bencher.iter(|| {
            value = value.wrapping_add(1);
            if let Err(error) = round_trip(channel, black_box(value)) {
                panic!("{function} round trip: {error:?}");
            }
        });
    });
}

/// A socketpair whose far end echoes in a child process.
fn spawn_raw_unix_echo() -> std::io::Result<(UnixStream, PeerProcess)> {
    let (near, far) = UnixStream::pair()?;
    let peer = PeerProcess::spawn("raw-unix-echo", &[], Some(far.as_fd()))?;
    drop(far);
    Ok((near, peer))
}

/// Child: echoes over the inherited socket.
fn raw_unix_echo() -> ChildResult {
    let stream = UnixStream::from(inherited_fd()?);
    echo_raw(stream)?;
    Ok(())
}

/// A loopback TCP connection (TCP_NODELAY on both ends) to a child echo.
fn spawn_raw_tcp_echo() -> std::io::Result<(TcpStream, PeerProcess)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?.to_string();
    let mut peer = PeerProcess::spawn("raw-tcp-echo", &[(CHILD_ADDR_ENV, &address)], None)?;
    let (stream, _) = peer.wait_for(CONNECT_TIMEOUT, || listener.accept())?;
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    Ok((stream, peer))
}

/// Child: connects to [`CHILD_ADDR_ENV`] and echoes.
fn raw_tcp_echo() -> ChildResult {
    let address = std::env::var(CHILD_ADDR_ENV)?;
    let stream = TcpStream::connect(address)?;
    stream.set_nodelay(true)?;
    echo_raw(stream)?;
    Ok(())
}

/// A `Ping(value)` frame there and its `Pong(value)` back.
fn round_trip(connection: &mut Connection, value: u64) -> ChildResult {
    connection.send(&Message::Ping(value))?;
    match connection.recv()?.message {
        Message::Pong(echoed) if echoed == value => Ok(()),
        other => Err(format!("expected Pong({value}), got {other:?}").into()),
    }
}

/// Child: answers every `Ping(n)` with `Pong(n)` until the bench hangs up.
fn echo_frames(mut connection: Connection) -> ChildResult {
    loop {
        let message = match connection.recv() {
            Ok(received) => received.message,
            Err(processional_transport::Error::Closed) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        match message {
            Message::Ping(value) => connection.send(&Message::Pong(value))?,
            other => return Err(format!("expected a Ping, got {other:?}").into()),
        }
    }
}

/// What each side says in the handshake: the same build (both are this
/// executable), the bench as master, the child as slave.
fn handshake(key: Key, role: Role) -> Handshake {
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        fingerprint: Fingerprint([0xbe; 32]),
        role,
        pid: std::process::id(),
        host: "localhost".to_owned(),
        program: "processional transport bench".to_owned(),
    };
    let mut config = Handshake::new(key, hello);
    config.accept_roles = vec![match role {
        Role::Master => Role::Slave,
        _ => Role::Master,
    }];
    config.timeout = Some(CONNECT_TIMEOUT);
    config
}

/// The key the child was given in [`CHILD_KEY_ENV`].
fn child_key() -> Result<Key, Box<dyn std::error::Error>> {
    Ok(Key::from_hex(&std::env::var(CHILD_KEY_ENV)?)?)
}

/// An authenticated `Connection` over a socketpair whose far end echoes
/// frames in a child process.
fn spawn_unix_echo() -> Result<(Connection, PeerProcess), Box<dyn std::error::Error>> {
    let key = Key::generate();
    let (near, far) = UnixStream::pair()?;
    let peer = PeerProcess::spawn(
        "unix-echo",
        &[(CHILD_KEY_ENV, &key.to_hex())],
        Some(far.as_fd()),
    )?;
    drop(far);
    let mut connection = Connection::from_unix(near)?;
    connection.handshake(Side::Initiator, &handshake(key, Role::Master))?;
    Ok((connection, peer))
}

/// Child: handshakes over the inherited socket, then echoes frames.
fn unix_echo() -> ChildResult {
    let mut connection = Connection::from_fd(inherited_fd()?)?;
    connection.handshake(Side::Acceptor, &handshake(child_key()?, Role::Slave))?;
    echo_frames(connection)
}

/// An authenticated loopback TCP `Connection` to a child echoing frames.
fn spawn_tcp_echo() -> Result<(Connection, PeerProcess), Box<dyn std::error::Error>> {
    let key = Key::generate();
    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse::<Address>()?)?;
    let address = listener.local_addr().to_string();
    let mut peer = PeerProcess::spawn(
        "tcp-echo",
        &[(CHILD_ADDR_ENV, &address), (CHILD_KEY_ENV, &key.to_hex())],
        None,
    )?;
    let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
    let mut connection = loop {
        if let Some(connection) = listener.accept_timeout(Duration::from_millis(50))? {
            break connection;
        }
        peer.check_alive()?;
        if std::time::Instant::now() >= deadline {
            return Err(format!("the TCP echo child did not connect to {address}").into());
        }
    };
    connection.handshake(Side::Acceptor, &handshake(key, Role::Master))?;
    Ok((connection, peer))
}

/// Child: connects to [`CHILD_ADDR_ENV`], handshakes, then echoes frames.
fn tcp_echo() -> ChildResult {
    let address: Address = std::env::var(CHILD_ADDR_ENV)?.parse()?;
    let mut connection = Connection::connect_timeout(&address, CONNECT_TIMEOUT)?;
    connection.handshake(Side::Initiator, &handshake(child_key()?, Role::Slave))?;
    echo_frames(connection)
}
