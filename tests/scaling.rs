//! Costs that must not grow faster than the work, checked by counting what
//! the runtime made (segments, threads), never by timing: large payloads
//! reuse their pooled segments in both directions, and pending `thread`
//! calls stay within their bound.

use std::sync::{Condvar, Mutex};

use processional::func;
use processional::process::MAX_THREAD_CALLS;
use processional::shm::Pool;
use processional::{SlaveProcess, Task};
use processional_tests::PATIENCE;

/// In a slave: a gate that `thread` calls wait for, opened by a later call.
static OPEN: Mutex<bool> = Mutex::new(false);
static OPENED: Condvar = Condvar::new();

/// In a slave: waits (at most `PATIENCE`) for [`open`]; whether it opened.
fn wait_open() -> bool {
    let guard = OPEN.lock().unwrap_or_else(|p| p.into_inner());
    let (guard, _) = OPENED
        .wait_timeout_while(guard, PATIENCE, |open| !*open)
        .unwrap_or_else(|p| p.into_inner());
    *guard
}

/// In a slave: lets every [`wait_open`] go on.
fn open() {
    *OPEN.lock().unwrap_or_else(|p| p.into_inner()) = true;
    OPENED.notify_all();
}

/// In a slave: how many segments its own pool has made so far.
fn segments_created() -> u64 {
    Pool::global().stats().created
}

/// The number of threads of process `pid` (`Threads:` in its status).
fn threads_of(pid: u32) -> usize {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the slave's status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("a Threads: line")
}

fn slave() -> SlaveProcess {
    processional::slave().expect("spawn a slave")
}

/// Ten thousand `thread` calls waiting for a gate hold at most
/// `MAX_THREAD_CALLS` threads of the slave (plus its few own ones), and all
/// complete once a later, queued call opens the gate.
#[test]
fn ten_thousand_pending_thread_calls_stay_within_the_bound() {
    const CALLS: usize = 10_000;
    let process = slave();
    let pid = process.pid();
    let before = threads_of(pid);
    let tasks: Vec<Task<bool>> = (0..CALLS)
        .map(|_| process.thread(func!(wait_open)))
        .collect();
    // A queued call is read after every `thread` call sent before it: once
    // it answers, the slave holds all of them, running or waiting.
    process.invoke(func!(|| ())).expect("a queued call");
    let threads = threads_of(pid);
    eprintln!("{CALLS} pending thread calls: {threads} threads in the slave ({before} before)");
    assert!(
        threads <= before + MAX_THREAD_CALLS + 8,
        "{threads} threads for {CALLS} pending thread calls (bound {MAX_THREAD_CALLS}, {before} before)"
    );
    assert!(
        tasks.iter().all(|task| !task.is_finished()),
        "a thread call finished before the gate opened"
    );
    process.invoke(func!(open)).expect("open the gate");
    for task in tasks {
        let opened = task
            .wait_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("a thread call did not finish within {PATIENCE:?}"))
            .expect("a thread call");
        assert!(
            opened,
            "a thread call ran out of patience before the gate opened"
        );
    }
    assert!(
        threads_of(pid) <= before + MAX_THREAD_CALLS + 8,
        "threads left behind"
    );
}

/// A 257 MiB argument rounds up to a 320 MiB size class, above the pool's
/// 256 MiB idle limit: sent twice, it still makes one segment, the second
/// call reusing the first one's (counted by this process's pool).
#[test]
fn a_257_mib_argument_sent_twice_makes_one_segment() {
    const LEN: usize = 257 << 20;
    let process = slave();
    let bytes = vec![7u8; LEN];
    let pool = Pool::global();
    assert!(Pool::class_size(LEN).unwrap() > pool.limits().max_idle_bytes);
    let send = || {
        let len = process
            .invoke_with(bytes.clone(), func!(|v: Vec<u8>| v.len()))
            .expect("a 257 MiB argument");
        assert_eq!(len, LEN);
    };
    send();
    let after_first = pool.stats();
    send();
    let after_second = pool.stats();
    assert_eq!(
        after_second.created, after_first.created,
        "the second 257 MiB argument made a fresh segment"
    );
    assert!(after_second.reused > after_first.reused);
}

/// A slave reuses the segments of the values it returns: a hundred 1 MiB
/// returns make at most a couple of segments there, not a hundred.
#[test]
fn returned_values_reuse_the_slaves_segments() {
    const RETURNS: usize = 100;
    let process = slave();
    let before = process
        .invoke(func!(segments_created))
        .expect("the slave's pool");
    for _ in 0..RETURNS {
        let bytes: Vec<u8> = process
            .invoke(func!(|| vec![3u8; 1 << 20]))
            .expect("a 1 MiB value");
        assert_eq!(bytes.len(), 1 << 20);
        assert!(bytes.iter().all(|&byte| byte == 3));
    }
    let made = process
        .invoke(func!(segments_created))
        .expect("the slave's pool")
        - before;
    assert!(
        made <= 2,
        "{made} segments made for {RETURNS} returns of 1 MiB"
    );
}
