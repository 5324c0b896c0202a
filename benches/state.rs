//! State benches: the global state's requests (`subject`) against raw unix
//! ping-pongs with an echo child written with plain std reads and writes
//! (`baseline`). The state server (a [`Context`]) and the raw children are
//! this executable started again, once, on first use.
//!
//! - `state.get_rtt`: `state.get::<u64>("k")` against an 8-byte ping-pong
//!   over a connected unix stream socket; one iteration is one round trip.
//! - `state.atomic_increment`: `state.increment("n", 1)` against the same
//!   ping-pong.
//! - `state.watch_latency`: from `set` in this process to a buffered watcher
//!   waking in another (a process of the context, which reads the time the
//!   value carries and acknowledges with the latency it saw; the clock is
//!   the system's, shared by both processes) against half a raw round trip
//!   (one way); one iteration is one wake.
//! - `state.increments_8x10k`: 8 processes of the context incrementing one
//!   key (each its share of the iterations; started before the clock and
//!   released together), ns per increment, against 8 raw client processes
//!   connected to one echo process (a thread per connection there), each
//!   doing its share of 8-byte ping-pongs: processes like the subject's, so
//!   that both pay the same switches between address spaces. Each timed
//!   round is at least the 8 × 10 000 on both sides ([`MIN_EACH`]),
//!   its time scaled to the iterations criterion asked for. Before
//!   measuring, 8 × 10 000 increments are checked to end at exactly 80 000.

use std::hint::black_box;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::Criterion;
use processional::state::{Context, Read, State, StateError, func};
use processional_benches::pingers::{PingerCrew, RAW_UNIX_ECHO_SERVER, RAW_UNIX_PINGER};
use processional_benches::process_peer::{
    BenchDir, RAW_UNIX_PATH_ECHO, RawPeer, spawn_raw_unix_path_echo,
};
use processional_benches::{ChildRole, round_trip_raw, run_child_if_requested};

const ROLES: &[ChildRole] = &[RAW_UNIX_PATH_ECHO, RAW_UNIX_ECHO_SERVER, RAW_UNIX_PINGER];

/// Processes in `state.increments_8x10k`.
const INCREMENTERS: usize = 8;

/// The fewest increments (or raw pings) each of the [`INCREMENTERS`] does
/// in one timed round of `state.increments_8x10k`. Criterion's first
/// samples ask for a handful of iterations; a round that short times the
/// release of the processes and their exits, not their increments, and
/// criterion, misled by it, then picks too few iterations for the whole run
/// (a ratio of 296 was measured so).
const MIN_EACH: u64 = 10_000;

fn main() {
    run_child_if_requested(ROLES);
    let mut criterion = Criterion::default().configure_from_args();
    let dir = BenchDir::new("state").expect("cannot make a directory for the sockets");
    let mut peers = Peers {
        crew: None,
        raw: None,
        context: None,
        dir,
    };
    get_rtt(&mut criterion, &mut peers);
    atomic_increment(&mut criterion, &mut peers);
    watch_latency(&mut criterion, &mut peers);
    increments_8x10k(&mut criterion, &mut peers);
    drop(peers);
    criterion.final_summary();
}

/// What the cases share, made on first use. Fields drop in order.
struct Peers {
    crew: Option<PingerCrew>,
    raw: Option<RawPeer<Vec<UnixStream>>>,
    context: Option<Context>,
    dir: BenchDir,
}

impl Peers {
    fn context(&mut self) -> &Context {
        self.context
            .get_or_insert_with(|| Context::new().expect("cannot start the state server"))
    }

    fn state(&mut self) -> State {
        self.context().state()
    }

    fn raw(&mut self) -> &mut UnixStream {
        let raw = self.raw.get_or_insert_with(|| {
            spawn_raw_unix_path_echo(&self.dir.join("raw.sock"), 1)
                .expect("cannot start the raw unix echo child")
        });
        &mut raw.stream[0]
    }

    fn crew(&mut self) -> &PingerCrew {
        if self.crew.is_none() {
            let crew = PingerCrew::new(&self.dir.join("raw8.sock"), INCREMENTERS)
                .expect("cannot start the raw pinger processes");
            self.crew = Some(crew);
        }
        self.crew.as_ref().expect("made just above")
    }
}

fn raw_round_trips(
    peers: &mut Peers,
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
) {
    group.bench_function("baseline", |bencher| {
        let stream = peers.raw();
        let mut value = 0u64;
        bencher.iter(|| {
            value = value.wrapping_add(1);
            round_trip_raw(stream, black_box(value)).expect("raw round trip");
        });
    });
}

/// `state.get_rtt`.
fn get_rtt(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("state.get_rtt");
    raw_round_trips(peers, &mut group);
    group.bench_function("subject", |bencher| {
        let state = peers.state();
        state.set("k", &7u64).expect("set");
        bencher.iter(|| {
            let value: Option<u64> = state.get(black_box("k")).expect("get");
            assert_eq!(value, Some(7));
        });
    });
    group.finish();
}

/// `state.atomic_increment`.
fn atomic_increment(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("state.atomic_increment");
    raw_round_trips(peers, &mut group);
    group.bench_function("subject", |bencher| {
        let state = peers.state();
        bencher.iter(|| state.increment(black_box("n"), 1).expect("increment"));
    });
    group.finish();
}

/// Nanoseconds of the system clock (shared by every process of the host).
fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// In a process of the context: wakes on every `ping` (the time it was
/// set), acknowledges each with `(ping, latency seen)`, until a ping of 0.
fn echo_latency(state: State, (): ()) -> Result<(), StateError> {
    let pings = state.namespace("ping");
    let acks = state.namespace("ack");
    let mut watcher = pings.watch()?;
    acks.set("ready", &true)?;
    loop {
        let change = watcher.next_timeout(Some(Duration::from_secs(60)))?;
        let woke = now_nanos();
        let Some(value) = change.events.first().and_then(|e| e.value.clone()) else {
            continue;
        };
        let mut snapshot = processional::state::Snapshot::default();
        snapshot.entries.insert(
            "t".into(),
            processional::state::Entry {
                value,
                created: 0,
                modified: 0,
            },
        );
        let sent: u64 = snapshot.get("t")?.unwrap_or(0);
        if sent == 0 {
            return Ok(());
        }
        acks.set("ack", &(sent, woke.saturating_sub(sent)))?;
    }
}

/// `state.watch_latency`.
fn watch_latency(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("state.watch_latency");
    group.bench_function("baseline", |bencher| {
        let stream = peers.raw();
        let mut value = 0u64;
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                value = value.wrapping_add(1);
                round_trip_raw(stream, black_box(value)).expect("raw round trip");
            }
            // One way: half a round trip.
            start.elapsed() / 2
        });
    });
    let state = peers.state();
    let acks = state.namespace("ack");
    let echo = peers
        .context()
        .spawn(func!(echo_latency), ())
        .expect("cannot start the watching process");
    acks.when_available("ready", Some(Duration::from_secs(60)))
        .expect("the watcher never started");
    let pings = state.namespace("ping");
    group.bench_function("subject", |bencher| {
        bencher.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let sent = now_nanos();
                let revision = pings.set("t", &sent).expect("set");
                let snapshot = acks
                    .when_change_after(&["ack"], revision, Some(Duration::from_secs(60)))
                    .expect("no acknowledgement");
                let (acked, latency): (u64, u64) =
                    snapshot.get("ack").expect("an ack").expect("an ack");
                assert_eq!(acked, sent);
                total += Duration::from_nanos(latency);
            }
            total
        });
    });
    pings.set("t", &0u64).expect("stop the watcher");
    echo.wait(Some(Duration::from_secs(60)))
        .expect("the watching process failed");
    group.finish();
}

/// In a process of the context: says it is ready, waits for `go` (a round
/// number), then increments `total` `count` times.
fn increment_after_go(state: State, (round, count): (u64, u64)) -> Result<(), StateError> {
    state.increment("ready", 1)?;
    state.when_equal("go", &round, Some(Duration::from_secs(60)))?;
    for _ in 0..count {
        state.increment("total", 1)?;
    }
    Ok(())
}

/// One round: 8 processes, `each` increments each, released together;
/// returns the time from the release to the last one done.
fn incrementing_round(context: &Context, round: u64, each: u64) -> Duration {
    let state = context.state();
    state
        .update([("total", 0i64), ("ready", 0i64)])
        .expect("reset");
    let processes = context
        .spawn_map(func!(increment_after_go), vec![(round, each); INCREMENTERS])
        .expect("cannot start the incrementing processes");
    // Spawning is not timed: release them once all 8 are ready.
    state
        .when_equal(
            "ready",
            &(INCREMENTERS as i64),
            Some(Duration::from_secs(60)),
        )
        .expect("the incrementing processes never got ready");
    let start = Instant::now();
    state.set("go", &round).expect("release");
    for process in processes {
        process
            .wait(Some(Duration::from_secs(300)))
            .expect("an incrementing process failed");
    }
    let elapsed = start.elapsed();
    let total: i64 = state.get("total").expect("total").expect("total");
    assert_eq!(
        total,
        (each as i64) * INCREMENTERS as i64,
        "lost increments"
    );
    elapsed
}

/// `state.increments_8x10k`.
fn increments_8x10k(criterion: &mut Criterion, peers: &mut Peers) {
    let mut group = criterion.benchmark_group("state.increments_8x10k");
    group.sample_size(10);
    group.bench_function("baseline", |bencher| {
        let crew = peers.crew();
        bencher.iter_custom(|iters| {
            let pings = iters.max(MIN_EACH * INCREMENTERS as u64);
            let start = Instant::now();
            crew.run(pings).expect("raw pings from every connection");
            // Scaled to the iterations asked for.
            start.elapsed().mul_f64(iters as f64 / pings as f64)
        });
    });
    let context = peers.context();
    // The check: 8 × 10 000 increments end at exactly 80 000.
    incrementing_round(context, 1, 10_000);
    let mut round = 1;
    group.bench_function("subject", |bencher| {
        bencher.iter_custom(|iters| {
            round += 1;
            let each = iters.div_ceil(INCREMENTERS as u64).max(MIN_EACH);
            let elapsed = incrementing_round(context, round, each);
            // Scaled to the iterations asked for.
            elapsed.mul_f64(iters as f64 / (each * INCREMENTERS as u64) as f64)
        });
    });
    group.finish();
}
