//! Worker benches (`processional::worker`): each case against its baseline,
//! measured in the same run.
//!
//! - `worker.process_ready`: `Worker::process(f, 1)` until its result is
//!   there, against `process.spawn_ready`'s baseline (spawning this
//!   executable bare with an inherited socketpair and one 8-byte ping-pong).
//!   Stopping and reaping the child is not timed.
//! - `pool.map_threads_1e5`: `pool.map` of 100 000 trivial inputs on a pool
//!   of 2 thread workers, against rayon's `par_iter().map().collect()` of
//!   the same inputs; one iteration is one input (runs of 100 000).
//! - `pool.map_processes_1e5`: the same on 2 process workers, against raw
//!   pipelined 8-byte frames to an echo child (as in
//!   `process.schedule_throughput`); one iteration is one input, or one
//!   frame.
//! - `persistent.enqueue_throughput`: 100 000 inputs enqueued into one
//!   persistent process worker and their results read, against the same
//!   raw pipelined frames; one iteration is one input, or one frame.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use processional::func;
use processional::worker::{PersistentWorker, Pool, PoolBuilder, Worker, WorkerKind};
use processional_benches::process_peer::{
    PipelinedPings, RAW_UNIX_ECHO, RawPeer, bare_spawns, configure_slow_group, spawn_raw_unix_echo,
};
use processional_benches::{ChildRole, run_child_if_requested};
use rayon::prelude::*;

const ROLES: &[ChildRole] = &[RAW_UNIX_ECHO];

/// The inputs of one pool run.
const RUN: u64 = 100_000;

/// The most frames the baseline has in flight, as in the process benches.
const MAX_IN_FLIGHT: u64 = 16_384;

fn trivial(x: u64) -> u64 {
    x.wrapping_mul(3).wrapping_add(1)
}

fn main() {
    run_child_if_requested(ROLES);
    let mut criterion = Criterion::default().configure_from_args();
    process_ready(&mut criterion);
    let echo: RawPeer<_> = spawn_raw_unix_echo().expect("cannot start the echo child");
    let mut pings = PipelinedPings::new(&echo.stream).expect("cannot start the ping writer");
    map_threads(&mut criterion);
    map_processes(&mut criterion, &mut pings);
    enqueue_throughput(&mut criterion, &mut pings);
    drop(pings);
    drop(echo);
    criterion.final_summary();
}

/// Runs `iters` frames through the raw echo child, pipelined.
fn raw_frames(pings: &mut PipelinedPings, iters: u64) -> Duration {
    let start = Instant::now();
    let mut left = iters;
    while left > 0 {
        let batch = left.min(MAX_IN_FLIGHT);
        pings.round_trips(batch).expect("pipelined raw pings");
        left -= batch;
    }
    start.elapsed()
}

/// Times `run` over runs of [`RUN`] inputs, scaled to `iters` inputs. Each
/// run gets the inputs as a vector of its own, made before its clock starts
/// (a pool takes its inputs by value).
fn per_input(iters: u64, mut run: impl FnMut(Vec<u64>)) -> Duration {
    let runs = iters.div_ceil(RUN).max(1);
    let mut timed = Duration::ZERO;
    for _ in 0..runs {
        let inputs: Vec<u64> = (0..RUN).collect();
        let start = Instant::now();
        run(inputs);
        timed += start.elapsed();
    }
    timed.mul_f64(iters as f64 / (runs * RUN) as f64)
}

/// `worker.process_ready`.
fn process_ready(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("worker.process_ready");
    configure_slow_group(&mut group);
    group.bench_function("baseline", |bencher| bencher.iter_custom(bare_spawns));
    group.bench_function("subject", |bencher| {
        bencher.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let worker = Worker::process(func!(trivial), 1).expect("a process worker");
                assert!(worker.wait(Some(Duration::from_secs(60))));
                timed += start.elapsed();
                assert_eq!(worker.result(), Some(&4));
                worker.terminate(Duration::from_secs(10));
            }
            timed
        });
    });
    group.finish();
}

fn pool(kind: WorkerKind) -> Pool<u64, u64> {
    PoolBuilder::new(func!(trivial))
        .workers(kind, 2)
        .spawn()
        .expect("a pool of two")
}

/// `pool.map_threads_1e5`.
fn map_threads(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("pool.map_threads_1e5");
    group.bench_function("baseline", |bencher| {
        let threads = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("rayon");
        bencher.iter_custom(|iters| {
            per_input(iters, |inputs| {
                let out: Vec<u64> =
                    threads.install(|| inputs.par_iter().map(|&x| trivial(x)).collect());
                black_box(out);
            })
        });
    });
    group.bench_function("subject", |bencher| {
        let mut pool = pool(WorkerKind::Thread);
        bencher.iter_custom(|iters| {
            per_input(iters, |inputs| {
                black_box(pool.map(inputs).expect("a pool run"));
            })
        });
    });
    group.finish();
}

/// `pool.map_processes_1e5`.
fn map_processes(criterion: &mut Criterion, pings: &mut PipelinedPings) {
    let mut group = criterion.benchmark_group("pool.map_processes_1e5");
    group.bench_function("baseline", |bencher| {
        bencher.iter_custom(|iters| raw_frames(pings, iters));
    });
    group.bench_function("subject", |bencher| {
        let mut pool = pool(WorkerKind::Process);
        bencher.iter_custom(|iters| {
            per_input(iters, |inputs| {
                black_box(pool.map(inputs).expect("a pool run"));
            })
        });
    });
    group.finish();
}

/// `persistent.enqueue_throughput`.
fn enqueue_throughput(criterion: &mut Criterion, pings: &mut PipelinedPings) {
    let mut group = criterion.benchmark_group("persistent.enqueue_throughput");
    group.bench_function("baseline", |bencher| {
        bencher.iter_custom(|iters| raw_frames(pings, iters));
    });
    group.bench_function("subject", |bencher| {
        let worker =
            PersistentWorker::spawn(WorkerKind::Process, func!(trivial)).expect("a worker");
        bencher.iter_custom(|iters| {
            per_input(iters, |inputs| {
                let count = inputs.len();
                for x in inputs {
                    worker.enqueue(x).expect("enqueue");
                }
                let got = worker.results().take(count).filter(Result::is_ok).count();
                assert_eq!(got, count);
            })
        });
    });
    group.finish();
}
