//! Process benches: calls into a slave process (`subject`) against the same
//! traffic over a raw socketpair to a child process written with plain std
//! reads and writes (`baseline`). Both peers are this executable started
//! again: the slave by `processional::slave()` (it turns into a slave before
//! `main`), the raw children by `PeerProcess` in a role. The warm slave and
//! the raw children are started once, on first use, and stopped at the end.
//!
//! - `process.invoke_rtt`: `process.invoke(|| 1u64)` against an 8-byte
//!   ping-pong with an echo child; one iteration is one round trip.
//! - `process.spawn_ready`: `processional::slave()` and a first
//!   `invoke(|| 1u64)` against spawning this executable bare with an
//!   inherited socketpair and one 8-byte ping-pong. The clock stops when the
//!   answer arrives; stopping and reaping the child is not timed.
//! - `process.schedule_throughput`: pipelined `process.schedule(|| 1u64)`
//!   (schedule a batch, then wait for every task) against pipelined 8-byte
//!   pings to the echo child (a writer thread writes them while the bench
//!   reads the echoes); one iteration is one item, batches hold at most
//!   [`MAX_IN_FLIGHT`] items.
//! - `process.stream_throughput`: the items of one server stream
//!   (`slave.stream_with(n, |n, items| for i in 0..n { items.send(i) })`,
//!   `u64` items, the default window), consumed as they come, against the
//!   same pipelined 8-byte pings to the echo child as
//!   `process.schedule_throughput`; one iteration is one item, a stream
//!   carries at most [`MAX_IN_FLIGHT`] items.
//! - `process.remote_method_rtt`: `resource.invoke(|v| v.len())` on a
//!   `Remote<Vec<u64>>` against the raw 8-byte ping-pong.
//! - `process.bytes_100MiB`: `process.invoke_with(v, |v: Vec<u8>| v.len())`
//!   with a 100 MiB vector (cloned before the clock starts) against writing
//!   100 MiB (64 KiB writes) over the socketpair to a child that reads it
//!   into a freshly allocated `Vec<u8>`, drops it, and answers 8 bytes.
//! - `process.bytes_100MiB_cold`: the same 100 MiB argument as the first
//!   call of a fresh slave, with this process's segment pool emptied first
//!   (both sides make and fault in their memory), against the same raw
//!   transfer into a fresh `Vec<u8>`. Spawning the slave and emptying the
//!   pool are not timed.

use processional::func;
use std::hint::black_box;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use processional::{ItemSink, Remote, Task};
use processional_benches::process_peer::{
    PipelinedPings, RAW_SINK_FRESH, RAW_UNIX_ECHO, RawPeer, SlaveGuard, bare_spawns,
    configure_slow_group, send_bulk, spawn_raw_unix_echo, spawn_socketpair_peer,
};
use processional_benches::{ChildRole, round_trip_raw, run_child_if_requested};

const ROLES: &[ChildRole] = &[RAW_UNIX_ECHO, RAW_SINK_FRESH];

/// The most calls a throughput case has in flight: bounds the memory of
/// pending tasks however many iterations criterion asks for.
const MAX_IN_FLIGHT: u64 = 16_384;

/// The size of the `bytes_100MiB` transfer.
const BULK_BYTES: usize = 100 << 20;

fn main() {
    run_child_if_requested(ROLES);
    let mut criterion = Criterion::default().configure_from_args();
    let mut peers = Peers::default();
    invoke_rtt(&mut criterion, &mut peers);
    spawn_ready(&mut criterion);
    schedule_throughput(&mut criterion, &mut peers);
    stream_throughput(&mut criterion, &mut peers);
    remote_method_rtt(&mut criterion, &mut peers);
    bytes_100mib(&mut criterion, &mut peers);
    bytes_100mib_cold(&mut criterion, &mut peers);
    drop(peers);
    criterion.final_summary();
}

/// The processes the cases share, each started on first use. Criterion calls
/// a bench function once per sample, so nothing is started inside one.
/// Fields drop in order: handles before the processes they point to.
#[derive(Default)]
struct Peers {
    resource: Option<Remote<Vec<u64>>>,
    slave: Option<SlaveGuard>,
    pings: Option<PipelinedPings>,
    echo: Option<RawPeer<UnixStream>>,
    sink: Option<RawPeer<UnixStream>>,
    bulk: Option<Vec<u8>>,
}

impl Peers {
    /// The warm slave.
    fn slave(&mut self) -> &SlaveGuard {
        self.slave.get_or_insert_with(|| {
            SlaveGuard(processional::slave().expect("cannot spawn the warm slave"))
        })
    }

    /// A `Vec<u64>` of 16 elements kept in the warm slave.
    fn resource(&mut self) -> &Remote<Vec<u64>> {
        if self.resource.is_none() {
            let resource = self
                .slave()
                .wrap(func!(|| vec![1u64; 16]))
                .expect("cannot make an object in the slave");
            self.resource = Some(resource);
        }
        self.resource.as_ref().expect("made just above")
    }

    /// Our end of the socketpair to the raw echo child.
    fn echo(&mut self) -> &mut UnixStream {
        &mut self
            .echo
            .get_or_insert_with(|| spawn_raw_unix_echo().expect("cannot start the echo child"))
            .stream
    }

    /// Pipelined pings to the raw echo child.
    fn pings(&mut self) -> &mut PipelinedPings {
        if self.pings.is_none() {
            let pings = PipelinedPings::new(self.echo()).expect("cannot start the ping writer");
            self.pings = Some(pings);
        }
        self.pings.as_mut().expect("made just above")
    }

    /// Our end of the socketpair to the child receiving bulk transfers.
    fn sink(&mut self) -> &mut UnixStream {
        &mut self
            .sink
            .get_or_insert_with(|| {
                spawn_socketpair_peer(&RAW_SINK_FRESH).expect("cannot start the sink child")
            })
            .stream
    }

    /// 100 MiB of bytes, made once.
    fn bulk(&mut self) -> &[u8] {
        self.bulk
            .get_or_insert_with(|| (0..BULK_BYTES).map(|i| (i % 251) as u8).collect())
    }
}

/// The baseline of the round-trip cases: an 8-byte raw ping-pong with the
/// echo child.
fn raw_ping_pong_baseline(group: &mut BenchmarkGroup<'_, WallTime>, peers: &mut Peers) {
    group.bench_function("baseline", |bencher| {
        let echo = peers.echo();
        let mut value = 0u64;
        bencher.iter(|| {
            value = value.wrapping_add(1);
            round_trip_raw(echo, black_box(value)).expect("raw round trip");
        });
    });
}

/// `process.invoke_rtt`.
fn invoke_rtt(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("process.invoke_rtt");
    raw_ping_pong_baseline(&mut group, peers);
    group.bench_function("subject", |bencher| {
        let slave = peers.slave();
        bencher.iter(|| slave.invoke(func!(|| black_box(1u64))).expect("invoke"));
    });
    group.finish();
}

/// `process.spawn_ready`.
fn spawn_ready(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("process.spawn_ready");
    configure_slow_group(&mut group);
    group.bench_function("baseline", |bencher| bencher.iter_custom(bare_spawns));
    group.bench_function("subject", |bencher| {
        bencher.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let process = processional::slave().expect("cannot spawn a slave");
                let one = process
                    .invoke(func!(|| 1u64))
                    .expect("the new slave answers");
                timed += start.elapsed();
                assert_eq!(one, 1);
                drop(SlaveGuard(process)); // stops and reaps it
            }
            timed
        });
    });
    group.finish();
}

/// `process.schedule_throughput`.
fn schedule_throughput(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("process.schedule_throughput");
    group.bench_function("baseline", |bencher| {
        let pings = peers.pings();
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            for batch in batches(iters) {
                pings.round_trips(batch).expect("pipelined raw pings");
            }
            start.elapsed()
        });
    });
    group.bench_function("subject", |bencher| {
        let slave = peers.slave();
        let mut tasks: Vec<Task<u64>> = Vec::with_capacity(MAX_IN_FLIGHT as usize);
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            for batch in batches(iters) {
                for _ in 0..batch {
                    tasks.push(slave.schedule(func!(|| black_box(1u64))));
                }
                for task in tasks.drain(..) {
                    assert_eq!(task.wait().expect("a scheduled call"), 1);
                }
            }
            start.elapsed()
        });
    });
    group.finish();
}

/// `process.stream_throughput`.
fn stream_throughput(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("process.stream_throughput");
    group.bench_function("baseline", |bencher| {
        let pings = peers.pings();
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            for batch in batches(iters) {
                pings.round_trips(batch).expect("pipelined raw pings");
            }
            start.elapsed()
        });
    });
    group.bench_function("subject", |bencher| {
        let slave = peers.slave();
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            for batch in batches(iters) {
                let mut items = slave
                    .stream_with(
                        batch,
                        func!(|n: u64, items: ItemSink<u64>| {
                            for i in 0..n {
                                if items.send(black_box(i)).is_err() {
                                    break;
                                }
                            }
                            n
                        }),
                    )
                    .expect("open a stream");
                let mut received = 0;
                for item in items.by_ref() {
                    assert_eq!(item.expect("an item"), received);
                    received += 1;
                }
                assert_eq!(items.finish().expect("the end of the stream"), batch);
                assert_eq!(received, batch);
            }
            start.elapsed()
        });
    });
    group.finish();
}

/// `process.remote_method_rtt`.
fn remote_method_rtt(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("process.remote_method_rtt");
    raw_ping_pong_baseline(&mut group, peers);
    group.bench_function("subject", |bencher| {
        let resource = peers.resource();
        bencher.iter(|| {
            resource
                .invoke(func!(|v: &mut Vec<u64>| v.len()))
                .expect("a method call")
        });
    });
    group.finish();
}

/// The baseline of the bulk cases: 100 MiB written raw to the sink child,
/// which reads it into a fresh `Vec<u8>`.
fn raw_bulk_baseline(group: &mut BenchmarkGroup<'_, WallTime>, peers: &mut Peers) {
    group.bench_function("baseline", |bencher| {
        peers.sink();
        peers.bulk();
        let Peers { sink, bulk, .. } = peers;
        let (Some(sink), Some(bulk)) = (sink.as_mut(), bulk.as_ref()) else {
            unreachable!("made just above")
        };
        bencher.iter(|| send_bulk(&mut sink.stream, bulk).expect("a raw bulk transfer"));
    });
}

/// `process.bytes_100MiB`.
fn bytes_100mib(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("process.bytes_100MiB");
    configure_slow_group(&mut group);
    raw_bulk_baseline(&mut group, peers);
    group.bench_function("subject", |bencher| {
        peers.slave();
        peers.bulk();
        let Peers { slave, bulk, .. } = peers;
        let (Some(slave), Some(bulk)) = (slave.as_ref(), bulk.as_ref()) else {
            unreachable!("made just above")
        };
        bencher.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let argument = bulk.clone();
                let start = Instant::now();
                let len = slave
                    .invoke_with(argument, func!(|v: Vec<u8>| v.len()))
                    .expect("a 100 MiB argument");
                timed += start.elapsed();
                assert_eq!(len, BULK_BYTES);
            }
            timed
        });
    });
    group.finish();
}

/// `process.bytes_100MiB_cold`.
fn bytes_100mib_cold(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("process.bytes_100MiB_cold");
    configure_slow_group(&mut group);
    raw_bulk_baseline(&mut group, peers);
    group.bench_function("subject", |bencher| {
        let bulk = peers.bulk().to_vec();
        bencher.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let slave = SlaveGuard(processional::slave().expect("a fresh slave"));
                processional::shm::Pool::global().clear();
                let argument = bulk.clone();
                let start = Instant::now();
                let len = slave
                    .invoke_with(argument, func!(|v: Vec<u8>| v.len()))
                    .expect("a 100 MiB argument");
                timed += start.elapsed();
                assert_eq!(len, BULK_BYTES);
            }
            timed
        });
    });
    group.finish();
}

/// `iters` items cut into batches of at most [`MAX_IN_FLIGHT`].
fn batches(iters: u64) -> impl Iterator<Item = u64> {
    let full = iters / MAX_IN_FLIGHT;
    let rest = iters % MAX_IN_FLIGHT;
    std::iter::repeat_n(MAX_IN_FLIGHT, full as usize).chain((rest > 0).then_some(rest))
}
