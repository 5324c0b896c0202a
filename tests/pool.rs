//! Pools (`processional::worker::Pool`): persistent workers of mixed kinds
//! sharing a run's inputs, retrying on the others what a dead worker had in
//! flight, and failing with the partial results when none is left.
//!
//! Every wait is bounded (each run ends once its workers answered or died;
//! the kills come from the run's own events), and the pools stop their
//! workers when they drop at the end of each test.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use processional::func;
use processional::worker::{
    PoolBuilder, PoolEvent, RemoteServer, WorkerError, WorkerKind, spawn_server,
};
use processional_tests::PATIENCE;

fn square(x: u64) -> u64 {
    x * x
}

fn always_fails(x: u64) -> u64 {
    panic!("no luck with {x}")
}

fn fails_from_5(x: u64) -> u64 {
    assert!(x < 5, "{x} is too big");
    x * x
}

/// A square that takes a little while.
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(3));
    x * x
}

fn server() -> RemoteServer {
    spawn_server("tcp://127.0.0.1:0").expect("a remote-worker server")
}

fn squares(n: u64) -> Vec<u64> {
    (0..n).map(|x| x * x).collect()
}

fn kill(signal: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

#[test]
fn every_square_arrives_once_over_mixed_kinds() {
    let server = server();
    let finished = Arc::new(Mutex::new(Vec::new()));
    let seen = finished.clone();
    let mut pool = PoolBuilder::new(func!(square))
        .worker(WorkerKind::Thread)
        .worker(WorkerKind::Process)
        .worker(WorkerKind::Remote(server.address().clone()))
        .batch_size(16)
        .on_event(move |event| {
            if let PoolEvent::Finished { input, .. } = event {
                seen.lock().unwrap().push(*input);
            }
        })
        .spawn()
        .unwrap();
    assert_eq!(pool.map(0..1000u64).unwrap(), squares(1000));
    let mut finished = finished.lock().unwrap().clone();
    finished.sort_unstable();
    assert_eq!(
        finished,
        (0..1000).collect::<Vec<_>>(),
        "each input finished exactly once"
    );

    // A second run works, streamed in either order.
    let mut unordered: Vec<(usize, u64)> = pool
        .map_unordered(0..50u64)
        .map(|(i, r)| (i, r.unwrap()))
        .collect();
    unordered.sort_unstable();
    assert_eq!(
        unordered,
        (0..50).map(|i| (i as usize, i * i)).collect::<Vec<_>>()
    );
    let ordered: Vec<u64> = pool.imap(0..50u64).map(Result::unwrap).collect();
    assert_eq!(ordered, squares(50));
    let results = pool.map_results(0..5u64).unwrap();
    assert_eq!(
        results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        squares(5)
    );

    // And after restart_workers().
    let before = pool.worker_pids();
    pool.restart_workers().unwrap();
    assert_ne!(pool.worker_pids()[1], before[1], "a new process");
    assert_eq!(pool.map(0..100u64).unwrap(), squares(100));
}

#[test]
fn all_workers_failing_is_a_pool_error_with_no_results() {
    let mut pool = PoolBuilder::new(func!(always_fails))
        .worker(WorkerKind::Thread)
        .worker(WorkerKind::Process)
        .spawn()
        .unwrap();
    let error = pool.map(0..10u64).unwrap_err();
    assert!(error.partial.is_empty(), "{error:?}");
    assert_eq!(error.workers.len(), 2, "each worker's error: {error:?}");
    for (_, worker_error) in &error.workers {
        assert!(
            matches!(worker_error, WorkerError::Panicked { .. }),
            "{worker_error:?}"
        );
    }
    assert_eq!(pool.alive(), 0);
}

#[test]
fn failing_from_5_keeps_exactly_the_squares_below() {
    let mut pool = PoolBuilder::new(func!(fails_from_5))
        .worker(WorkerKind::Thread)
        .worker(WorkerKind::Process)
        .batch_size(1)
        .spawn()
        .unwrap();
    let error = pool.map(0..10u64).unwrap_err();
    let expected: BTreeMap<usize, u64> = (0..5).map(|x| (x, (x * x) as u64)).collect();
    assert_eq!(error.partial, expected, "{error:?}");
}

/// A pool run whose events kill one process worker after ten results:
/// its results, how many workers are left, and the run's events.
fn run_killing_one(
    retries: u32,
    signal: &'static str,
) -> (Vec<Result<u64, WorkerError>>, usize, Vec<PoolEvent>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let recorded = events.clone();
    let killed = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicUsize::new(0));
    let victim = Arc::new(Mutex::new(None::<u32>));
    let (k, f, v) = (killed.clone(), finished.clone(), victim.clone());
    let mut pool = PoolBuilder::new(func!(slow_square))
        .worker(WorkerKind::Process)
        .worker(WorkerKind::Process)
        .worker(WorkerKind::Thread)
        .retries(retries)
        .batch_size(2)
        .on_event(move |event| {
            recorded.lock().unwrap().push(event.clone());
            let tenth = matches!(event, PoolEvent::Finished { .. })
                && f.fetch_add(1, Ordering::SeqCst) == 10
                && !k.swap(true, Ordering::SeqCst);
            let victim = *v.lock().unwrap();
            if let (true, Some(pid)) = (tenth, victim) {
                kill(signal, pid);
            }
        })
        .spawn()
        .unwrap();
    *victim.lock().unwrap() = pool.worker_pids()[0];
    let results = pool
        .map_results(0..200u64)
        .expect("the other workers carry on");
    assert!(killed.load(Ordering::SeqCst), "the kill happened mid-run");
    let alive = pool.alive();
    let events = events.lock().unwrap().clone();
    // A run after one worker died works too.
    assert_eq!(pool.map(0..20u64).unwrap(), squares(20));
    (results, alive, events)
}

#[test]
fn a_worker_killed_mid_run_has_its_inputs_retried() {
    for signal in ["-KILL", "-TERM"] {
        let (results, alive, events) = run_killing_one(2, signal);
        assert_eq!(alive, 2, "{signal}: one worker died");
        let died = events
            .iter()
            .filter(|e| matches!(e, PoolEvent::WorkerDied { .. }))
            .count();
        assert_eq!(died, 1, "{signal}: one WorkerDied event");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, PoolEvent::Retried { .. })),
            "{signal}: retries"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, PoolEvent::WorkerIdle { .. }))
        );
        let enqueued = events
            .iter()
            .filter(|e| matches!(e, PoolEvent::Enqueued { .. }))
            .count();
        assert!(
            enqueued > 200,
            "retried inputs are enqueued again: {enqueued}"
        );
        let values: Vec<u64> = results
            .into_iter()
            .map(|r| r.expect("every result arrives"))
            .collect();
        assert_eq!(values, squares(200), "{signal}");
    }
}

#[test]
fn a_worker_killed_mid_run_without_retry_fails_its_inputs() {
    let (results, alive, events) = run_killing_one(0, "-KILL");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PoolEvent::Retried { .. })),
        "no retry"
    );
    assert_eq!(alive, 2);
    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    assert!(!failed.is_empty(), "the killed worker's inputs fail");
    for (x, result) in results.iter().enumerate() {
        match result {
            Ok(value) => assert_eq!(*value, (x * x) as u64),
            Err(error) => assert_eq!(error.signal(), Some(9), "{error:?}"),
        }
    }
}

#[test]
fn a_worker_that_always_fails_is_worked_around_with_retries() {
    let mut pool = PoolBuilder::stateful(
        func!(|broken: &mut bool, x: u64| {
            assert!(!*broken, "this worker is broken");
            x * x
        }),
        false,
    )
    .worker_with_state(WorkerKind::Process, true)
    .worker(WorkerKind::Thread)
    .worker(WorkerKind::Process)
    .retries(3)
    .batch_size(4)
    .spawn()
    .unwrap();
    assert_eq!(pool.map(0..100u64).unwrap(), squares(100));
    let dead: BTreeSet<_> = pool.worker_errors().into_iter().map(|(id, _)| id).collect();
    assert_eq!(dead.len(), 1, "only the broken worker died");
}

#[test]
fn a_pool_whose_workers_were_terminated_fails_at_once() {
    let server = server();
    let mut pool = PoolBuilder::new(func!(square))
        .worker(WorkerKind::Thread)
        .worker(WorkerKind::Process)
        .worker(WorkerKind::Remote(server.address().clone()))
        .spawn()
        .unwrap();
    let pids = pool.worker_pids();
    pool.terminate(PATIENCE);
    assert_eq!(pool.alive(), 0);
    let error = pool.map(0..10u64).unwrap_err();
    assert!(error.partial.is_empty());
    assert_eq!(error.unconsumed, (0..10).collect::<Vec<_>>());
    assert_eq!(error.workers.len(), 3);
    assert!(error.workers.iter().all(|(_, e)| e.is_terminated()));
    for pid in pids.into_iter().skip(1).flatten() {
        assert!(
            processional_tests::wait_until(PATIENCE, || !processional_tests::process_exists(pid)),
            "worker process {pid} is gone"
        );
    }
}

#[test]
fn dead_workers_can_be_replaced() {
    let mut pool = PoolBuilder::new(func!(fails_from_5))
        .worker(WorkerKind::Process)
        .replace_dead(true)
        .retries(1)
        .batch_size(1)
        .spawn()
        .unwrap();
    let results = pool.map_results(0..8u64).unwrap();
    for (x, result) in results.iter().enumerate() {
        match x {
            0..5 => assert_eq!(result.as_ref().ok(), Some(&((x * x) as u64))),
            _ => assert!(
                matches!(result, Err(WorkerError::Panicked { .. })),
                "{result:?}"
            ),
        }
    }
    assert_eq!(pool.alive(), 1, "replaced");
}
