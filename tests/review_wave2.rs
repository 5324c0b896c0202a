//! Findings of a review of the wave-2 crates (worker, state, channel): each
//! test failed before its fix.
//!
//! Every wait is bounded by `PATIENCE`; servers and workers stop when their
//! handles drop at the end of each test.

use processional::func;
use processional::state::{Context, State, StateError};
use processional::worker::{RemoteContext, spawn_server};
use processional_tests::{PATIENCE, is_helper, run_helper, wait_until};

/// The descriptors this process holds.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// `RemoteContext::wait` right after a worker's `enqueue` and `close` (its
/// own doc example): the input was enqueued before the wait, so it must run
/// to its end, whether or not the worker's feeder had sent its batch when
/// the wait closed the context.
#[test]
fn waiting_on_a_context_right_after_enqueue_loses_no_input() {
    let server = spawn_server("tcp://127.0.0.1:0").expect("a remote-worker server");
    for round in 0..10u64 {
        let context = RemoteContext::register(
            server.address(),
            &format!("double-{round}"),
            func!(|x: u64| 2 * x),
        )
        .unwrap();
        let worker = context.worker().unwrap();
        worker.enqueue(round).unwrap();
        worker.close();
        assert!(
            context.wait(Some(PATIENCE)).unwrap(),
            "round {round}: drained"
        );
        assert!(
            worker.wait(Some(PATIENCE)),
            "round {round}: the worker ends"
        );
        let results: Vec<_> = worker.results().collect();
        assert!(
            matches!(results.as_slice(), [Ok(v)] if *v == 2 * round),
            "round {round}: the input enqueued before the wait ran: {results:?}"
        );
    }
}

/// In a helper process of its own (it counts descriptors): a context that
/// spawns and waits for process after process keeps no descriptor for each
/// one that finished.
#[test]
fn helper_spawns_processes_one_after_another() {
    if !is_helper() {
        return;
    }
    let context = Context::new().unwrap();
    let run = |x: u32| {
        let process = context
            .spawn(func!(|_: State, x: u32| Ok::<_, StateError>(x + 1)), x)
            .unwrap();
        assert_eq!(process.wait(Some(PATIENCE)).unwrap(), x + 1);
    };
    run(0);
    let before = open_fds();
    for x in 1..=40 {
        run(x);
    }
    assert!(
        wait_until(PATIENCE, || open_fds() < before + 10),
        "40 finished processes left {} more descriptors open",
        open_fds() - before
    );
}

#[test]
fn a_context_keeps_no_descriptor_per_finished_process() {
    if is_helper() {
        return;
    }
    run_helper("helper_spawns_processes_one_after_another", &[]);
}

/// Set by [`ignores_its_cancellation`] once it runs (a thread worker runs in
/// this process).
static STUBBORN_STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Never looks at its cancellation (for longer than any test waits).
fn ignores_its_cancellation(_: u64) -> u64 {
    STUBBORN_STARTED.store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(3 * PATIENCE);
    0
}

/// Whether the thread `tid` of this process is asleep (blocked).
fn is_asleep(tid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state == 'S')
        })
        .unwrap_or(false)
}

/// A thread worker whose target ignores its cancellation ends when
/// `terminate` gives up on it (`Unstoppable`); a thread that was already
/// waiting for it with no timeout must see that end too.
#[test]
fn a_waiter_sees_the_end_terminate_gives_an_unstoppable_thread_worker() {
    use processional::worker::Worker;

    let worker = std::sync::Arc::new(Worker::thread(func!(ignores_its_cancellation), 0).unwrap());
    assert!(wait_until(PATIENCE, || STUBBORN_STARTED
        .load(std::sync::atomic::Ordering::SeqCst)));
    let (tid_tx, tid) = std::sync::mpsc::channel();
    let (ended_tx, ended) = std::sync::mpsc::channel();
    let waiting = worker.clone();
    std::thread::spawn(move || {
        // `/proc/thread-self` names `<pid>/task/<tid>`.
        let link = std::fs::read_link("/proc/thread-self").unwrap();
        let tid: i32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
        tid_tx.send(tid).unwrap();
        let _ = ended_tx.send(waiting.wait(None));
    });
    let tid = tid.recv_timeout(PATIENCE).unwrap();
    assert!(wait_until(PATIENCE, || is_asleep(tid)), "the waiter blocks");

    let termination = worker.terminate(std::time::Duration::from_millis(200));
    assert_eq!(termination, Some(processional::Termination::Unstoppable));
    assert!(worker.wait(Some(std::time::Duration::ZERO)), "ended");
    assert!(worker.error().is_some_and(|e| e.is_terminated()));
    assert_eq!(
        ended.recv_timeout(PATIENCE),
        Ok(true),
        "the thread waiting with no timeout still waits"
    );
}

/// A deferring function whose `Reply` is dropped by a panic it catches
/// itself, then returns its `Later`: nobody will answer, so the call must
/// end (with an error) rather than wait forever.
#[test]
fn a_reply_dropped_by_a_caught_panic_still_answers() {
    use processional::{Later, reply_later};

    let process = processional::slave().unwrap();
    let task = process.schedule_later(func!(|| -> Later<u8> {
        let (reply, later) = reply_later();
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _reply = reply;
            panic!("dropped inside a caught panic");
        }));
        later
    }));
    match task.wait_timeout(PATIENCE) {
        Ok(outcome) => assert!(outcome.is_err(), "answered with {outcome:?}"),
        Err(_) => panic!("the call was never answered"),
    }
}

/// A pool run given up early (an `imap` or `map_unordered` dropped before
/// its end) leaves the pool's workers as usable as before: a later run
/// sends work to every worker again.
#[test]
fn a_pool_run_dropped_early_leaves_the_workers_usable() {
    use processional::worker::{PoolBuilder, PoolEvent, WorkerKind};
    use std::sync::{Arc, Mutex};

    let enqueued = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let seen = enqueued.clone();
    let mut pool = PoolBuilder::new(func!(|x: u64| x * x))
        .workers(WorkerKind::Thread, 2)
        .batch_size(1)
        .on_event(move |event| {
            if let PoolEvent::Enqueued { worker, .. } = event {
                seen.lock().unwrap().insert(*worker);
            }
        })
        .spawn()
        .unwrap();
    for _ in 0..3 {
        let first = pool.imap(0..100u64).next();
        assert!(matches!(first, Some(Ok(0))), "{first:?}");
        let mut run = pool.map_unordered(0..100u64);
        assert!(run.next().is_some_and(|(_, r)| r.is_ok()));
    }
    enqueued.lock().unwrap().clear();
    let squares = pool.map(0..10u64);
    assert_eq!(
        squares.map_err(|e| e.to_string()),
        Ok((0..10u64).map(|x| x * x).collect::<Vec<_>>())
    );
    assert_eq!(
        enqueued.lock().unwrap().len(),
        2,
        "the last run sent work to both workers"
    );
}

/// A remote-worker server started again on the address of one that
/// stopped (a fixed TCP port) gets a fresh key: this process's workers must
/// use the new key, not the stopped server's.
#[test]
fn a_server_spawned_again_on_the_same_port_takes_workers() {
    use processional::worker::Worker;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("tcp://127.0.0.1:{port}");
    let first = spawn_server(&address).expect("the first server");
    let worker = Worker::remote(first.address(), func!(|x: u64| x + 1), 1).unwrap();
    assert!(worker.wait(Some(PATIENCE)));
    assert_eq!(worker.result(), Some(&2));
    drop(worker);
    first.terminate(PATIENCE);
    drop(first);

    let second = spawn_server(&address).expect("the second server, same port");
    let worker = Worker::remote(second.address(), func!(|x: u64| x + 1), 2);
    let worker = worker
        .map_err(|e| e.to_string())
        .expect("a worker on the second server");
    assert!(worker.wait(Some(PATIENCE)));
    assert_eq!(worker.result(), Some(&3));
}

/// In a helper process (it needs the server's key in its environment): a
/// batch receive over TCP of more messages than one frame can carry.
#[test]
fn helper_receives_a_large_batch_over_tcp() {
    use processional::channel::{Pick, QueueBuilder, Request};

    if !is_helper() {
        return;
    }
    let key = std::env::var("PROCESSIONAL_KEY").unwrap();
    let _server = processional::ServerBuilder::new("tcp://127.0.0.1:0")
        .unwrap()
        .key(processional::Key::from_hex(&key).unwrap())
        .persistent(true)
        .start()
        .unwrap();
    let address = _server.address().to_string();
    let queue = QueueBuilder::new()
        .host(&address)
        .build::<Vec<u8>>()
        .unwrap();
    // 72 MiB in all: more than a frame (64 MiB) carries.
    const COUNT: usize = 72;
    for i in 0..COUNT {
        queue
            .send(Request::Do, Some(vec![i as u8; 1 << 20]))
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < COUNT {
        let batch = queue.recv_batch(Pick::Any, 1000);
        let batch = batch.map_err(|e| e.to_string()).expect("a batch");
        got.extend(batch.into_iter().map(|m| m.data.unwrap()[0]));
    }
    assert_eq!(got, (0..COUNT).map(|i| i as u8).collect::<Vec<_>>());
}

#[test]
fn a_batch_receive_larger_than_a_frame_loses_nothing() {
    if is_helper() {
        return;
    }
    let key = processional::Key::generate().to_hex();
    run_helper(
        "helper_receives_a_large_batch_over_tcp",
        &[("PROCESSIONAL_KEY", key)],
    );
}

/// A timeout too long to be a deadline (`Duration::MAX`, "forever") waits
/// as long as it takes rather than panicking.
#[test]
fn the_longest_timeouts_do_not_panic() {
    use processional::channel::{Request, pipe};

    let (here, there) = pipe::<u32>().unwrap();
    there.send(Request::Do, Some(7)).unwrap();
    let got = std::panic::catch_unwind(|| here.recv_timeout(std::time::Duration::MAX));
    assert_eq!(got.expect("no panic").unwrap().data, Some(7));

    let context = Context::new().unwrap();
    let process = context
        .spawn(func!(|_: State, x: u32| Ok::<_, StateError>(x + 1)), 1)
        .unwrap();
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        process.wait(Some(std::time::Duration::MAX))
    }));
    assert_eq!(got.expect("no panic").unwrap(), 2);
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        context.wait(Some(std::time::Duration::MAX))
    }));
    assert!(waited.expect("no panic").is_ok());
}

/// A shipped receive predicate that panics (here on a message without
/// data) is the bug of its receiver: other clients' sends still succeed,
/// nothing they send is lost, and `join` still ends.
#[test]
fn a_panicking_receive_predicate_harms_no_other_client() {
    use processional::channel::{Message, Queue, Request};

    let queue = Queue::<u32>::new().unwrap();
    let receiver = queue.clone();
    let waiting = std::thread::spawn(move || {
        receiver.recv_where_timeout(
            func!(|m: &Message<u32>| m.data.expect("data") > 100),
            PATIENCE,
        )
    });
    assert!(
        wait_until(PATIENCE, || queue.waiting().unwrap() == 1),
        "the receive waits in the host"
    );
    let sent = queue.send(Request::Do, None);
    assert!(sent.is_ok(), "a send of another client failed: {sent:?}");
    assert_eq!(queue.len().unwrap(), 1, "the message stays in place");
    queue.send(Request::Do, Some(101)).unwrap();
    let got = waiting.join().unwrap().unwrap();
    assert_eq!(got.data, Some(101));
    assert_eq!(queue.recv().unwrap().data, None);
    queue.join().unwrap();
}
