//! Channel benches: pipes and hosted queues between processes, each against
//! the raw traffic of benches/process.rs (an 8-byte ping-pong with a raw echo
//! child; pipelined 8-byte pings for throughput).
//!
//! - `channel.pipe_rtt`: a `u64` ping-pong over a [`pipe`] with a slave that
//!   echoes each message (send, then receive the echo) against the raw
//!   8-byte socketpair ping-pong; one iteration is one round trip.
//! - `channel.queue_throughput`: one producer (this process, one message
//!   at a time through a `BufferedSender`) to one consumer slave
//!   (`recv_batch`) through a queue hosted by its own
//!   server, `u64` messages, in runs of up to [`RUN`] messages; against
//!   pipelined raw pings (one frame each way). One iteration is one message.
//! - `channel.queue_fanout`: four producer slaves and four consumer slaves
//!   on one queue, in runs of up to [`RUN`] messages; every run checks that
//!   each message was received exactly once. Same baseline.
//! - `channel.filtered_recv`: `send_to(me)` then `recv_for_me` with 10 000
//!   messages for another pid in the queue ahead of it, against the same
//!   with an empty queue.

use processional::func;
use std::hint::black_box;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use criterion::Criterion;
use processional::channel::{Message, Pick, PipeEnd, Queue, QueueBuilder, Request, pipe};
use processional::{SlaveProcess, Task};
use processional_benches::process_peer::{
    PipelinedPings, RAW_UNIX_ECHO, RawPeer, SlaveGuard, spawn_raw_unix_echo,
};
use processional_benches::{ChildRole, round_trip_raw, run_child_if_requested};

const ROLES: &[ChildRole] = &[RAW_UNIX_ECHO];

/// The most messages one throughput run moves (the 100 000).
const RUN: u64 = 100_000;

/// Messages per `send_batch` / `recv_batch`.
const BATCH: u32 = 4096;

/// Messages for others ahead of the one for me (`channel.filtered_recv`).
const BACKLOG: u32 = 10_000;

fn main() {
    run_child_if_requested(ROLES);
    let mut criterion = Criterion::default().configure_from_args();
    let mut peers = Peers::default();
    pipe_rtt(&mut criterion, &mut peers);
    queue_throughput(&mut criterion, &mut peers);
    queue_fanout(&mut criterion, &mut peers);
    filtered_recv(&mut criterion);
    drop(peers);
    criterion.final_summary();
}

/// Processes the cases share, started on first use.
#[derive(Default)]
struct Peers {
    pings: Option<PipelinedPings>,
    echo: Option<RawPeer<UnixStream>>,
    slaves: Vec<SlaveGuard>,
}

impl Peers {
    fn echo(&mut self) -> &mut UnixStream {
        &mut self
            .echo
            .get_or_insert_with(|| spawn_raw_unix_echo().expect("cannot start the echo child"))
            .stream
    }

    fn pings(&mut self) -> &mut PipelinedPings {
        if self.pings.is_none() {
            let pings = PipelinedPings::new(self.echo()).expect("cannot start the ping writer");
            self.pings = Some(pings);
        }
        self.pings.as_mut().expect("made just above")
    }

    /// At least `n` warm slaves.
    fn slaves(&mut self, n: usize) -> &[SlaveGuard] {
        while self.slaves.len() < n {
            self.slaves.push(SlaveGuard(
                processional::slave().expect("cannot spawn a slave"),
            ));
        }
        &self.slaves[..n]
    }
}

fn raw_pipelined_baseline(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    peers: &mut Peers,
) {
    group.bench_function("baseline", |bencher| {
        let pings = peers.pings();
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            for run in runs(iters) {
                pings.round_trips(run).expect("pipelined raw pings");
            }
            start.elapsed()
        });
    });
}

/// `iters` in runs of at most [`RUN`].
fn runs(iters: u64) -> impl Iterator<Item = u64> {
    let full = iters / RUN;
    let rest = iters % RUN;
    (0..full).map(|_| RUN).chain((rest > 0).then_some(rest))
}

/// `channel.pipe_rtt`.
fn pipe_rtt(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("channel.pipe_rtt");
    group.bench_function("baseline", |bencher| {
        let echo = peers.echo();
        let mut value = 0u64;
        bencher.iter(|| {
            value = value.wrapping_add(1);
            round_trip_raw(echo, black_box(value)).expect("raw round trip");
        });
    });
    let slave = &peers.slaves(1)[0];
    let (ours, theirs) = pipe::<u64>().expect("pipe");
    let echoing: Task<()> = slave.schedule_with(
        theirs,
        func!(|end: PipeEnd<u64>| {
            while let Ok(message) = end.recv() {
                if message.request == Request::Die
                    || end.send(Request::Finished, message.data).is_err()
                {
                    break;
                }
            }
        }),
    );
    group.bench_function("subject", |bencher| {
        let mut value = 0u64;
        bencher.iter(|| {
            value = value.wrapping_add(1);
            ours.send(Request::Do, Some(black_box(value)))
                .expect("send");
            let echo = ours.recv().expect("echo");
            assert_eq!(echo.data, Some(value));
        });
    });
    group.finish();
    ours.send(Request::Die, None).expect("stop the echo");
    echoing.wait().expect("the echo stops");
}

/// In a consumer slave: receives `count` messages, in batches; their sum.
fn consume(queue: Queue<u64>, count: u64) -> Result<u64, String> {
    let mut got = 0;
    let mut sum = 0u64;
    while got < count {
        let batch = queue
            .recv_batch(Pick::Any, BATCH)
            .map_err(|e| e.to_string())?;
        got += batch.len() as u64;
        sum += batch.iter().map(|m| m.data.unwrap_or(0)).sum::<u64>();
    }
    Ok(sum)
}

/// Sends `from..to` one message at a time through a buffered sender (which
/// batches on the wire, one batch in flight while the next fills).
fn produce(queue: &Queue<u64>, from: u64, to: u64) -> Result<(), String> {
    let mut sender = queue.buffered(BATCH as usize);
    for i in from..to {
        sender
            .send(Request::Do, Some(i))
            .map_err(|e| e.to_string())?;
    }
    sender.flush().map_err(|e| e.to_string())
}

/// `channel.queue_throughput`.
fn queue_throughput(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("channel.queue_throughput");
    raw_pipelined_baseline(&mut group, peers);
    let consumer = &peers.slaves(1)[0];
    let queue = Queue::<u64>::new().expect("queue");
    group.bench_function("subject", |bencher| {
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            for run in runs(iters) {
                let consumed = consumer.schedule_with(
                    (queue.clone(), run),
                    func!(|(q, n): (Queue<u64>, u64)| consume(q, n)),
                );
                produce(&queue, 0, run).expect("produce");
                let sum = consumed.wait().expect("consumer").expect("consumed");
                assert_eq!(sum, run * (run - 1) / 2);
            }
            start.elapsed()
        });
    });
    group.finish();
}

/// In a consumer slave of the fan-out: every value received until its
/// poison pill (addressed to it, so that no batch takes another's).
fn consume_until_die(queue: Queue<u64>) -> Result<Vec<u64>, String> {
    let mut values = Vec::new();
    loop {
        for m in queue
            .recv_batch(Pick::for_me(), BATCH)
            .map_err(|e| e.to_string())?
        {
            match m.request {
                Request::Die => return Ok(values),
                _ => values.extend(m.data),
            }
        }
    }
}

/// `channel.queue_fanout`.
fn queue_fanout(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("channel.queue_fanout");
    raw_pipelined_baseline(&mut group, peers);
    let slaves: Vec<&SlaveProcess> = peers.slaves(8).iter().map(|s| &s.0).collect();
    let (producers, consumers) = slaves.split_at(4);
    let queue = Queue::<u64>::new().expect("queue");
    group.bench_function("subject", |bencher| {
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            for run in runs(iters) {
                let consuming: Vec<Task<Result<Vec<u64>, String>>> = consumers
                    .iter()
                    .map(|c| {
                        c.schedule_with(queue.clone(), func!(|q: Queue<u64>| consume_until_die(q)))
                    })
                    .collect();
                let share = run.div_ceil(4);
                let producing: Vec<Task<Result<(), String>>> = producers
                    .iter()
                    .enumerate()
                    .map(|(p, producer)| {
                        let from = (p as u64 * share).min(run);
                        let to = ((p as u64 + 1) * share).min(run);
                        producer.schedule_with(
                            (queue.clone(), from, to),
                            func!(|(q, from, to): (Queue<u64>, u64, u64)| produce(&q, from, to)),
                        )
                    })
                    .collect();
                for task in producing {
                    task.wait().expect("producer").expect("produced");
                }
                for consumer in consumers {
                    queue
                        .send_to(consumer.pid(), Request::Die, None)
                        .expect("poison pill");
                }
                let mut all: Vec<u64> = Vec::with_capacity(run as usize);
                for task in consuming {
                    all.extend(task.wait().expect("consumer").expect("consumed"));
                }
                all.sort_unstable();
                assert!(all.iter().copied().eq(0..run), "every message exactly once");
            }
            start.elapsed()
        });
    });
    group.finish();
}

/// `channel.filtered_recv`.
fn filtered_recv(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("channel.filtered_recv");
    let me = std::process::id();
    // Both queues on one host, over one connection: only the backlog differs.
    let crowded = Queue::<u64>::new().expect("queue");
    let empty: Queue<u64> = QueueBuilder::new()
        .host(crowded.host())
        .build()
        .expect("queue");
    group.bench_function("baseline", |bencher| {
        bencher.iter(|| {
            empty.send_to(me, Request::Do, Some(1)).expect("send");
            black_box(empty.recv_for_me().expect("recv"));
        });
    });
    let others: Vec<_> = (0..BACKLOG)
        .map(|i| Message::new(Request::Do, Some(u64::from(i))).to(me.wrapping_add(1)))
        .collect();
    crowded.send_batch(others).expect("backlog");
    group.bench_function("subject", |bencher| {
        bencher.iter(|| {
            crowded.send_to(me, Request::Do, Some(1)).expect("send");
            black_box(crowded.recv_for_me().expect("recv"));
        });
    });
    assert_eq!(
        crowded.len().expect("len"),
        BACKLOG as usize,
        "the backlog stayed in place"
    );
    group.finish();
}
