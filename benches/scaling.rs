//! Scaling benches: costs that must grow no faster than the work. Each case
//! compares processional with itself at two sizes of the work (`subject` the
//! larger or the suspect one, `baseline` the reference), so a ratio above 1
//! says the cost per unit grows. Peers are this executable started again
//! (slaves turn into slaves before `main`); each is started on first use.
//!
//! - `process.payload_step`: `invoke_with(v, |v: Vec<u8>| v.len())` on a warm
//!   slave. `subject` sends inline payloads from 64 KiB up to the inline
//!   limit ([`INLINE_SIZES`], taking turns call by call) and reports the
//!   worst cost per byte, scaled to the baseline's size; `baseline` sends
//!   [`PAST_LIMIT`] bytes, just past the limit, through a pooled segment.
//! - `process.send_257MiB`: the same call with a 257 MiB argument (scaled to
//!   255 MiB, so the ratio compares costs per byte) against a 255 MiB one.
//!   Cloning the argument is not timed.
//! - `process.return_1MiB`: a 1 MiB `Vec<u8>` cloned in the slave and returned
//!   (`invoke(|| BYTES.clone())`) against the same 1 MiB cloned here and sent
//!   (`invoke_with(BYTES.clone(), |v: Vec<u8>| v.len())`); both clones are
//!   timed, so each side makes one fresh vector and receives into another.
//! - `server.throughput_256_clients`: [`MANY_CLIENTS`] client handles to one
//!   unix server, one thread each, pipelining `schedule(|| 1u64)` with
//!   [`WINDOW`] calls in flight, against [`FEW_CLIENTS`] clients doing the
//!   same; one iteration is one call, split evenly between the clients.
//! - `server.raw_throughput_256_clients`: the floor of the case above on
//!   this machine, with no processional in it: [`MANY_CLIENTS`] raw unix
//!   connections to one echo process (a thread per connection, as our
//!   server has), each pipelining 8-byte pings [`WINDOW`] at a time, against
//!   [`FEW_CLIENTS`] such connections. Measured in the same run, so the
//!   report shows how much of the growth the kernel and the scheduler cause.

use processional::func;
use std::hint::black_box;
use std::os::unix::net::UnixStream;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use criterion::Criterion;
use processional::SlaveProcess;
use processional::process::INLINE_LIMIT;
use processional_benches::process_peer::{
    BenchDir, Crew, RAW_UNIX_PATH_ECHO, RawPeer, SlaveGuard, configure_slow_group, raw_echo_crew,
    round_trips_windowed, scheduled_calls,
};
use processional_benches::run_child_if_requested;

/// Inline payload sizes of `process.payload_step`, 64 KiB up to the limit
/// (the encoded payload carries a 3-byte length prefix).
const INLINE_SIZES: &[usize] = &[64 << 10, 80 << 10, 96 << 10, 112 << 10, INLINE_LIMIT - 16];

/// The baseline size of `process.payload_step`: just past the inline limit.
const PAST_LIMIT: usize = INLINE_LIMIT + (1 << 10);

/// The sizes of `process.send_257MiB`.
const LARGE: usize = 257 << 20;
const LESS_LARGE: usize = 255 << 20;

/// The returned and sent vector of `process.return_1MiB`.
const RETURN_BYTES: usize = 1 << 20;

/// Clients of `server.throughput_256_clients` and of its baseline.
const MANY_CLIENTS: usize = 256;
const FEW_CLIENTS: usize = 16;

/// Calls each client has in flight.
const WINDOW: usize = 16;

/// The 1 MiB of `process.return_1MiB`, in each process that uses it.
static BYTES: LazyLock<Vec<u8>> =
    LazyLock::new(|| (0..RETURN_BYTES).map(|i| (i % 251) as u8).collect());

fn main() {
    run_child_if_requested(&[RAW_UNIX_PATH_ECHO]);
    let mut criterion = Criterion::default().configure_from_args();
    let dir = BenchDir::new("scaling").expect("cannot make a directory for the sockets");
    let mut slave: Option<SlaveGuard> = None;
    payload_step(&mut criterion, &mut slave);
    send_257mib(&mut criterion, &mut slave);
    return_1mib(&mut criterion, &mut slave);
    throughput_256_clients(&mut criterion, &dir);
    raw_throughput_256_clients(&mut criterion, &dir);
    drop(slave);
    criterion.final_summary();
}

/// The warm slave, spawned on first use.
fn warm(slave: &mut Option<SlaveGuard>) -> &SlaveGuard {
    slave.get_or_insert_with(|| {
        SlaveGuard(processional::slave().expect("cannot spawn the warm slave"))
    })
}

/// `iters` calls sending `bytes` (cloned before each, untimed); the time.
fn send_bytes(slave: &SlaveProcess, bytes: &[u8], iters: u64) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        let argument = bytes.to_vec();
        let start = Instant::now();
        let len = slave
            .invoke_with(argument, func!(|v: Vec<u8>| v.len()))
            .expect("a call with a byte vector");
        timed += start.elapsed();
        assert_eq!(len, bytes.len());
    }
    timed
}

/// `time` (spent on `size` bytes) scaled to `reference` bytes.
fn per_reference(time: Duration, size: usize, reference: usize) -> Duration {
    time.mul_f64(reference as f64 / size as f64)
}

/// `process.payload_step`.
fn payload_step(criterion: &mut Criterion, slave: &mut Option<SlaveGuard>) {
    let mut group = criterion.benchmark_group("process.payload_step");
    let past: Vec<u8> = (0..PAST_LIMIT).map(|i| i as u8).collect();
    let inline: Vec<Vec<u8>> = INLINE_SIZES
        .iter()
        .map(|&size| (0..size).map(|i| i as u8).collect())
        .collect();
    group.bench_function("baseline", |bencher| {
        let slave = warm(slave);
        bencher.iter_custom(|iters| send_bytes(slave, &past, iters));
    });
    group.bench_function("subject", |bencher| {
        let slave = warm(slave);
        bencher.iter_custom(|iters| {
            // Sizes take turns call by call, so that a noisy moment of the
            // machine does not land on one size alone and pass for its cost.
            let mut spent = vec![Duration::ZERO; inline.len()];
            for _ in 0..iters {
                for (bytes, spent) in inline.iter().zip(&mut spent) {
                    *spent += send_bytes(slave, bytes, 1);
                }
            }
            inline
                .iter()
                .zip(spent)
                .map(|(bytes, spent)| per_reference(spent, bytes.len(), PAST_LIMIT))
                .max()
                .unwrap_or_default()
        });
    });
    group.finish();
}

/// `process.send_257MiB`.
fn send_257mib(criterion: &mut Criterion, slave: &mut Option<SlaveGuard>) {
    let mut group = criterion.benchmark_group("process.send_257MiB");
    configure_slow_group(&mut group);
    let bytes: Vec<u8> = (0..LARGE).map(|i| (i % 251) as u8).collect();
    group.bench_function("baseline", |bencher| {
        let slave = warm(slave);
        bencher.iter_custom(|iters| send_bytes(slave, &bytes[..LESS_LARGE], iters));
    });
    group.bench_function("subject", |bencher| {
        let slave = warm(slave);
        bencher.iter_custom(|iters| {
            per_reference(send_bytes(slave, &bytes, iters), LARGE, LESS_LARGE)
        });
    });
    group.finish();
}

/// `process.return_1MiB`.
fn return_1mib(criterion: &mut Criterion, slave: &mut Option<SlaveGuard>) {
    let mut group = criterion.benchmark_group("process.return_1MiB");
    group.bench_function("baseline", |bencher| {
        let slave = warm(slave);
        bencher.iter(|| {
            let len = slave
                .invoke_with(BYTES.clone(), func!(|v: Vec<u8>| v.len()))
                .expect("a 1 MiB argument");
            assert_eq!(len, RETURN_BYTES);
        });
    });
    group.bench_function("subject", |bencher| {
        let slave = warm(slave);
        bencher.iter(|| {
            let bytes = slave
                .invoke(func!(|| BYTES.clone()))
                .expect("a 1 MiB value");
            assert_eq!(black_box(bytes).len(), RETURN_BYTES);
        });
    });
    group.finish();
}

/// `count` trivial calls on `client`, [`WINDOW`] at a time.
fn windowed_calls(client: &mut SlaveProcess, count: u64) -> Result<(), String> {
    scheduled_calls(client, count, WINDOW)
}

/// `clients` threads, each with its own client of the server at `address`.
fn crew(address: &str, clients: usize) -> Crew {
    let clients: Vec<SlaveProcess> = (0..clients)
        .map(|_| processional::client(address).expect("cannot connect a client"))
        .collect();
    Crew::new(clients, windowed_calls).expect("cannot start client threads")
}

/// `server.throughput_256_clients`.
fn throughput_256_clients(criterion: &mut Criterion, dir: &BenchDir) {
    let mut group = criterion.benchmark_group("server.throughput_256_clients");
    let address = format!("unix:{}", dir.join("scaling.sock").display());
    let mut server: Option<SlaveGuard> = None;
    let mut few: Option<Crew> = None;
    let mut many: Option<Crew> = None;
    let mut start_server = || {
        server.get_or_insert_with(|| {
            SlaveGuard(processional::server(&address).expect("cannot spawn the server"))
        });
    };
    start_server();
    group.bench_function("baseline", |bencher| {
        let crew = few.get_or_insert_with(|| crew(&address, FEW_CLIENTS));
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            crew.run(iters).expect("calls from every client");
            start.elapsed()
        });
    });
    group.bench_function("subject", |bencher| {
        let crew = many.get_or_insert_with(|| crew(&address, MANY_CLIENTS));
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            crew.run(iters).expect("calls from every client");
            start.elapsed()
        });
    });
    group.finish();
    drop((many, few));
}

/// `connections` raw connections to one echo child, one crew thread each,
/// pipelining pings [`WINDOW`] at a time; the child goes with the crew.
fn raw_crew(dir: &BenchDir, connections: usize) -> (Crew, RawPeer<Vec<UnixStream>>) {
    let socket = dir.join(&format!("raw{connections}.sock"));
    raw_echo_crew(&socket, connections, |stream, count| {
        round_trips_windowed(stream, count, WINDOW).map_err(|error| error.to_string())
    })
    .expect("cannot start the raw echo child and its crew")
}

/// `server.raw_throughput_256_clients`.
fn raw_throughput_256_clients(criterion: &mut Criterion, dir: &BenchDir) {
    let mut group = criterion.benchmark_group("server.raw_throughput_256_clients");
    for (function, connections) in [("baseline", FEW_CLIENTS), ("subject", MANY_CLIENTS)] {
        let mut peers = None;
        group.bench_function(function, |bencher| {
            let (crew, _) = peers.get_or_insert_with(|| raw_crew(dir, connections));
            bencher.iter_custom(|iters| {
                let start = Instant::now();
                crew.run(iters).expect("raw pings from every connection");
                start.elapsed()
            });
        });
        // The crew's streams close before the child is killed.
        drop(peers);
    }
    group.finish();
}
