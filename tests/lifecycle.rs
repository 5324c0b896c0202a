//! One lifecycle for threads and processes: the same verbs with the same
//! shapes on a `SlaveThread` and a `SlaveProcess` (`schedule` gives a `Task`,
//! `is_alive`, `pid` / `tid` / `host`, `terminate(timeout) -> Termination`),
//! and the same answers where the two can behave alike.

use std::sync::atomic::{AtomicBool, Ordering};

use processional::{
    Error, ExitReason, SlaveProcess, SlaveThread, Task, Termination, checkpoint, func, slave,
};
use processional_tests::{PATIENCE, gate};

/// What both kinds of worker answer, through the same method names.
struct Shape {
    value: u64,
    alive: bool,
    pid: u32,
    tid: Option<u32>,
    host: String,
}

fn thread_shape(worker: &SlaveThread) -> Shape {
    let task: Task<u64> = worker.schedule(|| 6 * 7);
    Shape {
        value: task.wait().unwrap(),
        alive: worker.is_alive(),
        pid: worker.pid(),
        tid: worker.tid(),
        host: worker.host().to_owned(),
    }
}

fn process_shape(worker: &SlaveProcess) -> Shape {
    let task: Task<u64> = worker.schedule(func!(|| 6 * 7));
    Shape {
        value: task.wait().unwrap(),
        alive: worker.is_alive(),
        pid: worker.pid(),
        tid: worker.tid(),
        host: worker.host().to_owned(),
    }
}

#[test]
fn threads_and_processes_answer_the_same_verbs() {
    let thread = SlaveThread::new();
    let process = slave().expect("spawn");
    let (t, p) = (thread_shape(&thread), process_shape(&process));
    assert_eq!((t.value, p.value), (42, 42));
    assert!(t.alive && p.alive);
    assert_eq!(t.pid, std::process::id());
    assert_ne!(p.pid, std::process::id());
    assert!(t.tid.is_some_and(|tid| tid != 0));
    assert_eq!(p.tid, None);
    assert_eq!(t.host, p.host, "both run on this host");
    assert_eq!(
        thread.terminate(PATIENCE),
        Termination::Graceful(ExitReason::Code(0))
    );
    assert!(matches!(
        process.terminate(PATIENCE),
        Termination::Graceful(_)
    ));
    assert!(!thread.is_alive() && !process.is_alive());
}

#[test]
fn a_worker_that_checks_its_token_stops_gracefully_mid_call() {
    let thread = SlaveThread::new();
    let (started, running) = std::sync::mpsc::sync_channel(1);
    let looping = thread.schedule(move || -> Result<(), Error> {
        started.send(()).unwrap();
        loop {
            checkpoint()?;
            std::thread::yield_now();
        }
    });
    running.recv_timeout(PATIENCE).unwrap();
    assert_eq!(
        thread.terminate(PATIENCE),
        Termination::Graceful(ExitReason::Code(0))
    );
    assert!(matches!(looping.wait(), Ok(Err(Error::Cancelled))));

    let process = slave().expect("spawn");
    let long = process.schedule(func!(|| gate::start_then_wait(3 * PATIENCE)));
    gate::wait_for_start(&process);
    assert!(matches!(
        process.terminate(PATIENCE),
        Termination::Graceful(_)
    ));
    // Stopped by us mid-call: the call ends with an error, never a value.
    let error = long.wait().unwrap_err();
    assert!(
        matches!(error, Error::Stopped) || error.is_worker_lost(),
        "{error:?}"
    );
}

/// Released at the end of the test, so the stubborn thread can finish.
static RELEASE: AtomicBool = AtomicBool::new(false);

#[test]
fn a_thread_that_ignores_its_token_is_reported_unstoppable() {
    let thread = SlaveThread::new();
    let (started, running) = std::sync::mpsc::sync_channel(1);
    let stubborn = thread.schedule(move || {
        started.send(()).unwrap();
        while !RELEASE.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        7u8
    });
    running.recv_timeout(PATIENCE).unwrap();
    assert_eq!(
        thread.terminate(std::time::Duration::from_millis(50)),
        Termination::Unstoppable
    );
    assert!(thread.is_closed(), "it takes no new orders");
    RELEASE.store(true, Ordering::SeqCst);
    assert_eq!(
        stubborn.wait().unwrap(),
        7,
        "the order still ends with its value"
    );
}
