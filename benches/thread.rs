//! Thread benches: processional's thread runtime (`subject`) against plain
//! std threads and crossbeam channels (`baseline`), all in this process.
//!
//! - `thread.spawn_wait`: `processional::thread(|| 1).wait()` (a cached
//!   thread) against `std::thread::spawn(|| 1).join()`; one iteration is one
//!   call.
//! - `slave_thread.invoke_rtt`: `SlaveThread::invoke(|| 1)` against a
//!   ping-pong through two crossbeam `bounded(1)` channels with a persistent
//!   echo thread; one iteration is one round trip.
//! - `slave_thread.schedule_throughput`: `SlaveThread::schedule(|| 1)`
//!   pipelined (schedule a batch, then wait for every task) against values
//!   sent through an unbounded crossbeam channel to an echo thread and
//!   received back the same way (send a batch, then receive it); one
//!   iteration is one item. Batches hold at most [`MAX_IN_FLIGHT`] items.

use std::hint::black_box;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use criterion::Criterion;
use crossbeam_channel::{Receiver, Sender};
use processional::{SlaveThread, Task};

/// The most items a throughput case has in flight: bounds the memory of
/// pending tasks however many iterations criterion asks for.
const MAX_IN_FLIGHT: u64 = 16_384;

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    spawn_wait(&mut criterion);
    invoke_rtt(&mut criterion);
    schedule_throughput(&mut criterion);
    criterion.final_summary();
}

/// `thread.spawn_wait`.
fn spawn_wait(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("thread.spawn_wait");
    group.bench_function("baseline", |bencher| {
        bencher.iter(|| {
            std::thread::spawn(|| black_box(1))
                .join()
                .expect("a std thread ran")
        });
    });
    group.bench_function("subject", |bencher| {
        bencher.iter(|| {
            processional::thread(|| black_box(1))
                .wait()
                .expect("a processional thread ran")
        });
    });
    group.finish();
}

/// A thread that sends back every value it receives, until the sending side
/// closes; its channels are closed and the thread joined on drop.
struct Echo {
    to_echo: Option<Sender<u64>>,
    echoed: Receiver<u64>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    /// An echo over a pair of channels made by `channel`.
    fn new(channel: fn() -> (Sender<u64>, Receiver<u64>)) -> Echo {
        let (to_echo, inbox) = channel();
        let (outbox, echoed) = channel();
        let thread = std::thread::Builder::new()
            .name("crossbeam-echo".into())
            .spawn(move || {
                for value in inbox {
                    if outbox.send(value).is_err() {
                        return;
                    }
                }
            })
            .expect("cannot start the echo thread");
        Echo {
            to_echo: Some(to_echo),
            echoed,
            thread: Some(thread),
        }
    }

    fn send(&self, value: u64) {
        self.to_echo
            .as_ref()
            .and_then(|to_echo| to_echo.send(value).ok())
            .expect("the echo thread stopped");
    }

    fn receive(&self) -> u64 {
        self.echoed.recv().expect("the echo thread stopped")
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.to_echo = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `slave_thread.invoke_rtt`.
fn invoke_rtt(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("slave_thread.invoke_rtt");
    // Criterion calls a bench function once per sample: what they use is
    // made on the first call and kept until the group is done.
    let mut echo = None;
    group.bench_function("baseline", |bencher| {
        let echo = echo.get_or_insert_with(|| Echo::new(|| crossbeam_channel::bounded(1)));
        let mut value = 0u64;
        bencher.iter(|| {
            value = value.wrapping_add(1);
            echo.send(black_box(value));
            assert_eq!(echo.receive(), value);
        });
    });
    let mut slave = None;
    group.bench_function("subject", |bencher| {
        let slave = slave.get_or_insert_with(SlaveThread::new);
        bencher.iter(|| slave.invoke(|| black_box(1)).expect("the slave thread ran"));
    });
    group.finish();
    stop(slave);
}

/// `slave_thread.schedule_throughput`.
fn schedule_throughput(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("slave_thread.schedule_throughput");
    let mut echo = None;
    group.bench_function("baseline", |bencher| {
        let echo = echo.get_or_insert_with(|| Echo::new(crossbeam_channel::unbounded));
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            for batch in batches(iters) {
                for value in 0..batch {
                    echo.send(black_box(value));
                }
                for value in 0..batch {
                    assert_eq!(echo.receive(), value);
                }
            }
            start.elapsed()
        });
    });
    let mut slave = None;
    let mut tasks: Vec<Task<i32>> = Vec::with_capacity(MAX_IN_FLIGHT as usize);
    group.bench_function("subject", |bencher| {
        let slave = slave.get_or_insert_with(SlaveThread::new);
        bencher.iter_custom(|iters| {
            let start = Instant::now();
            for batch in batches(iters) {
                tasks.extend((0..batch).map(|_| slave.schedule(|| black_box(1))));
                for task in tasks.drain(..) {
                    task.wait().expect("the slave thread ran");
                }
            }
            start.elapsed()
        });
    });
    group.finish();
    stop(slave);
}

/// Stops a slave thread a group used, and waits for it.
fn stop(slave: Option<SlaveThread>) {
    if let Some(slave) = slave {
        let ending = slave.terminate(Duration::from_secs(10));
        assert!(
            !matches!(ending, processional::Termination::Unstoppable),
            "the slave thread did not stop"
        );
    }
}

/// `iters` items cut into batches of at most [`MAX_IN_FLIGHT`].
fn batches(iters: u64) -> impl Iterator<Item = u64> {
    let full = iters / MAX_IN_FLIGHT;
    let rest = iters % MAX_IN_FLIGHT;
    std::iter::repeat_n(MAX_IN_FLIGHT, full as usize).chain((rest > 0).then_some(rest))
}
