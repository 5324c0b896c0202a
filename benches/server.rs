//! Server benches: clients calling a server process (`subject`) against the
//! same traffic over raw sockets to a child process echoing with plain std
//! reads and writes (`baseline`). Servers and raw children are this
//! executable started again; each is started on first use and stopped at
//! the end.
//!
//! - `server.invoke_rtt_unix`: `client.invoke(|| 1u64)` through a
//!   `processional::client` connected to a server spawned on a unix socket
//!   path, against an 8-byte ping-pong over a connected unix stream socket
//!   to an echo child; one iteration is one round trip.
//! - `server.invoke_rtt_tcp`: the same over loopback TCP: a persistent
//!   server spawned on `tcp://127.0.0.1:<port>` with a key, a client built
//!   with that key, against a raw TCP (TCP_NODELAY) ping-pong with an echo
//!   child.
//! - `server.throughput_64_clients`: 64 client handles to the unix server,
//!   one thread each, pipelining `schedule(|| 1u64)` ([`WINDOW`] calls
//!   scheduled, then waited for, and again), against 64 unix connections to
//!   one echo child (a thread per connection there), each thread writing
//!   [`WINDOW`] 8-byte pings (one write each) then reading their echoes. One
//!   iteration is one call; the work of an iteration count is split evenly
//!   between the 64 threads.

use processional::func;
use std::hint::black_box;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use criterion::Criterion;
use processional::{ClientBuilder, Key, ServerBuilder, SlaveProcess};
use processional_benches::process_peer::{
    BenchDir, Crew, RAW_TCP_ECHO, RAW_UNIX_PATH_ECHO, RawPeer, SlaveGuard, raw_echo_crew,
    round_trips_windowed, scheduled_calls, spawn_raw_tcp_echo, spawn_raw_unix_path_echo,
};
use processional_benches::{ChildRole, round_trip_raw, run_child_if_requested};

const ROLES: &[ChildRole] = &[RAW_UNIX_PATH_ECHO, RAW_TCP_ECHO];

/// Clients in `server.throughput_64_clients`.
const CLIENTS: usize = 64;

/// Calls (or pings) each client of `server.throughput_64_clients` has in
/// flight at most.
const WINDOW: usize = 64;

fn main() {
    run_child_if_requested(ROLES);
    let mut criterion = Criterion::default().configure_from_args();
    let dir = BenchDir::new("server").expect("cannot make a directory for the sockets");
    let mut peers = Peers::new(dir);
    invoke_rtt_unix(&mut criterion, &mut peers);
    invoke_rtt_tcp(&mut criterion, &mut peers);
    throughput_64_clients(&mut criterion, &mut peers);
    drop(peers);
    criterion.final_summary();
}

/// The processes and connections the cases share, each made on first use
/// (criterion calls a bench function once per sample). Fields drop in
/// order: clients before their servers, the socket directory last.
struct Peers {
    clients: Option<Crew>,
    raw_crew: Option<Crew>,
    raw_many: Option<RawPeer<Vec<UnixStream>>>,
    unix_client: Option<SlaveProcess>,
    unix_server: Option<SlaveGuard>,
    raw_unix: Option<RawPeer<Vec<UnixStream>>>,
    tcp_client: Option<SlaveProcess>,
    tcp_server: Option<SlaveGuard>,
    raw_tcp: Option<RawPeer<TcpStream>>,
    dir: BenchDir,
}

impl Peers {
    fn new(dir: BenchDir) -> Peers {
        Peers {
            clients: None,
            raw_crew: None,
            raw_many: None,
            unix_client: None,
            unix_server: None,
            raw_unix: None,
            tcp_client: None,
            tcp_server: None,
            raw_tcp: None,
            dir,
        }
    }

    /// The address of the unix server.
    fn unix_address(&self) -> String {
        format!("unix:{}", self.dir.join("bench.sock").display())
    }

    /// The unix server, spawned on first use.
    fn unix_server(&mut self) -> &SlaveGuard {
        if self.unix_server.is_none() {
            let server =
                processional::server(&self.unix_address()).expect("cannot spawn the unix server");
            self.unix_server = Some(SlaveGuard(server));
        }
        self.unix_server.as_ref().expect("made just above")
    }

    /// A client of the unix server (not the handle that spawned it).
    fn unix_client(&mut self) -> &SlaveProcess {
        if self.unix_client.is_none() {
            self.unix_server();
            let client = processional::client(&self.unix_address())
                .expect("cannot connect to the unix server");
            self.unix_client = Some(client);
        }
        self.unix_client.as_ref().expect("made just above")
    }

    /// A connected unix stream socket to a raw echo child.
    fn raw_unix(&mut self) -> &mut UnixStream {
        let raw = self.raw_unix.get_or_insert_with(|| {
            spawn_raw_unix_path_echo(&self.dir.join("raw.sock"), 1)
                .expect("cannot start the raw unix echo child")
        });
        &mut raw.stream[0]
    }

    /// A client of a persistent TCP server spawned with a key.
    fn tcp_client(&mut self) -> &SlaveProcess {
        if self.tcp_client.is_none() {
            let (server, client) = spawn_tcp_server().expect("cannot start the TCP server");
            self.tcp_server = Some(server);
            self.tcp_client = Some(client);
        }
        self.tcp_client.as_ref().expect("made just above")
    }

    /// A loopback TCP connection to a raw echo child.
    fn raw_tcp(&mut self) -> &mut TcpStream {
        &mut self
            .raw_tcp
            .get_or_insert_with(|| {
                spawn_raw_tcp_echo().expect("cannot start the raw TCP echo child")
            })
            .stream
    }

    /// [`CLIENTS`] threads, each with its own client of the unix server.
    fn clients(&mut self) -> &Crew {
        if self.clients.is_none() {
            self.unix_server();
            let address = self.unix_address();
            let clients: Vec<SlaveProcess> = (0..CLIENTS)
                .map(|_| processional::client(&address).expect("cannot connect a client"))
                .collect();
            let crew = Crew::new(clients, windowed_calls).expect("cannot start client threads");
            self.clients = Some(crew);
        }
        self.clients.as_ref().expect("made just above")
    }

    /// [`CLIENTS`] threads, each with its own connection to one raw echo
    /// child.
    fn raw_crew(&mut self) -> &Crew {
        if self.raw_crew.is_none() {
            let (crew, raw) =
                raw_echo_crew(&self.dir.join("raw64.sock"), CLIENTS, |stream, count| {
                    round_trips_windowed(stream, count, WINDOW).map_err(|error| error.to_string())
                })
                .expect("cannot start the raw echo child and its crew");
            self.raw_many = Some(raw);
            self.raw_crew = Some(crew);
        }
        self.raw_crew.as_ref().expect("made just above")
    }
}

/// A persistent server spawned on a free loopback TCP port with a fresh
/// key, and a client connected to it over TCP with that key.
fn spawn_tcp_server() -> Result<(SlaveGuard, SlaveProcess), Box<dyn std::error::Error>> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let address = format!("tcp://127.0.0.1:{port}");
    let key = Key::generate();
    let server = ServerBuilder::new(&address)?
        .key(key.clone())
        .persistent(true)
        .spawn()?;
    let server = SlaveGuard(server);
    let client = ClientBuilder::new(&address)?.key(key).connect()?;
    Ok((server, client))
}

/// `count` trivial calls on `client`, [`WINDOW`] at a time.
fn windowed_calls(client: &mut SlaveProcess, count: u64) -> Result<(), String> {
    scheduled_calls(client, count, WINDOW)
}

/// `server.invoke_rtt_unix`.
fn invoke_rtt_unix(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("server.invoke_rtt_unix");
    group.bench_function("baseline", |bencher| {
        let stream = peers.raw_unix();
        let mut value = 0u64;
        bencher.iter(|| {
            value = value.wrapping_add(1);
            round_trip_raw(stream, black_box(value)).expect("raw round trip");
        });
    });
    group.bench_function("subject", |bencher| {
        let client = peers.unix_client();
        bencher.iter(|| client.invoke(func!(|| black_box(1u64))).expect("invoke"));
    });
    group.finish();
}

/// `server.invoke_rtt_tcp`.
fn invoke_rtt_tcp(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("server.invoke_rtt_tcp");
    group.bench_function("baseline", |bencher| {
        let stream = peers.raw_tcp();
        let mut value = 0u64;
        bencher.iter(|| {
            value = value.wrapping_add(1);
            round_trip_raw(stream, black_box(value)).expect("raw round trip");
        });
    });
    group.bench_function("subject", |bencher| {
        let client = peers.tcp_client();
        bencher.iter(|| client.invoke(func!(|| black_box(1u64))).expect("invoke"));
    });
    group.finish();
}

/// `server.throughput_64_clients`.
fn throughput_64_clients(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("server.throughput_64_clients");
    group.bench_function("baseline", |bencher| {
        let crew = peers.raw_crew();
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            crew.run(iters).expect("raw pings from every connection");
            start.elapsed()
        });
    });
    group.bench_function("subject", |bencher| {
        let crew = peers.clients();
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            crew.run(iters).expect("calls from every client");
            start.elapsed()
        });
    });
    group.finish();
}
