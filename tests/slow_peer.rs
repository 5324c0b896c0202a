//! A peer that stops reading its socket never blocks anyone else: deferred
//! replies completed for it from another client's serving thread are queued
//! (within a budget) and written by a flusher, and once its backlog would
//! pass the budget its connection is closed.

use std::sync::Mutex;

use processional::process::OUTBOUND_BUDGET_VAR;
use processional::{
    ClientBuilder, Error, Later, Reply, ServerBuilder, ServerHandle, SlaveProcessBuilder, Task,
    func, register_deferred_service, register_service, reply_later,
};
use processional_tests::{PATIENCE, wait_until};

/// The budget of the serving process in this test (the socket itself holds
/// about 2 MiB more).
const BUDGET: usize = 8 << 20;

/// The size of each deferred value.
const VALUE: usize = 100_000;

/// Replies parked by the deferred service, in the serving process.
static PARKED: Mutex<Vec<Reply<Vec<u8>>>> = Mutex::new(Vec::new());

/// The server started in the serving process, kept running.
static SERVER: Mutex<Option<ServerHandle>> = Mutex::new(None);

fn park() -> Later<Vec<u8>> {
    let (reply, later) = reply_later();
    PARKED.lock().unwrap().push(reply);
    later
}

/// Starts a server at `address` with the test's services (in the slave).
fn start_server(address: String) -> Result<(), String> {
    register_deferred_service(
        "slowpeer.v1.park",
        func!(|(): ()| -> Later<Vec<u8>> { park() }),
    )
    .map_err(|e| e.to_string())?;
    register_service(
        "slowpeer.v1.parked",
        func!(|(): ()| -> usize { PARKED.lock().unwrap().len() }),
    )
    .map_err(|e| e.to_string())?;
    register_service(
        "slowpeer.v1.complete",
        func!(|sizes: Vec<usize>| -> (usize, usize) { complete_parked(sizes) }),
    )
    .map_err(|e| e.to_string())?;
    let handle = ServerBuilder::new(&address)
        .and_then(|builder| builder.persistent(true).start())
        .map_err(|e| e.to_string())?;
    *SERVER.lock().unwrap() = Some(handle);
    Ok(())
}

/// Answers every parked reply, in the order they were parked, the k-th with
/// `sizes[k % sizes.len()]` bytes of `k`, on this (the calling client's
/// serving) thread; returns how many found somebody listening and how many
/// did not.
fn complete_parked(sizes: Vec<usize>) -> (usize, usize) {
    let replies: Vec<Reply<Vec<u8>>> = PARKED.lock().unwrap().drain(..).collect();
    let (mut sent, mut nobody) = (0, 0);
    for (k, reply) in replies.into_iter().enumerate() {
        match reply.send(vec![k as u8; sizes[k % sizes.len()]]) {
            Ok(()) => sent += 1,
            Err(_) => nobody += 1,
        }
    }
    (sent, nobody)
}

/// Checks what `complete_parked` answered the `k`-th call with.
fn check(k: usize, value: &[u8], size: usize) {
    assert_eq!(value.len(), size, "answer {k}");
    assert!(
        value.iter().all(|&byte| byte == k as u8),
        "answer {k} out of order"
    );
}

fn bounded<T>(task: Task<T>, what: &str) -> Result<T, Error> {
    match task.wait_timeout(PATIENCE) {
        Ok(outcome) => outcome,
        Err(_) => panic!("{what}: not done within {PATIENCE:?}"),
    }
}

/// A serving process with the small outbound budget, running a server on
/// a fresh unix socket; the link to it and the server's address.
fn serving_process() -> (processional::SlaveProcess, String) {
    let address = processional::Address::private_unix()
        .expect("a private socket path")
        .to_string();
    let serving = SlaveProcessBuilder::new()
        .env(OUTBOUND_BUDGET_VAR, BUDGET.to_string())
        .spawn()
        .expect("spawn the serving process");
    serving
        .invoke_with(address.clone(), func!(start_server))
        .expect("reach the serving process")
        .expect("start the server");
    (serving, address)
}

#[test]
fn a_client_that_does_not_read_blocks_nobody_and_is_closed_past_its_budget() {
    // B: the master's link to the serving process (killed when dropped).
    let (serving, address) = serving_process();
    let parked = |n: usize| {
        wait_until(PATIENCE, || {
            serving
                .call_service::<_, usize>("slowpeer.v1.parked", ())
                .wait()
                .is_ok_and(|count| count == n)
        })
    };

    // A: a data-only client that parks calls and never waits for them, so
    // it reads nothing.
    let lazy = ClientBuilder::new(&address)
        .expect("an address")
        .data_only(true)
        .connect()
        .expect("connect A");

    // 1. 4 MB of answers: more than A's socket takes, less than the budget.
    let first: Vec<Task<Vec<u8>>> = (0..40)
        .map(|_| lazy.call_service("slowpeer.v1.park", ()))
        .collect();
    assert!(parked(40), "A's 40 calls were not all parked");
    let (sent, nobody) = bounded(
        serving.call_service::<_, (usize, usize)>("slowpeer.v1.complete", vec![VALUE]),
        "B completing A's replies (blocked writing to A, who does not read?)",
    )
    .expect("B's call");
    assert_eq!((sent, nobody), (40, 0));
    // B's connection still answers.
    assert_eq!(
        bounded(serving.schedule(func!(|| 6 * 7)), "B's next call").unwrap(),
        42
    );
    // A reads at last: every answer, whole and in order.
    for (k, task) in first.into_iter().enumerate() {
        let value = bounded(task, "A's parked call").expect("A's answer");
        check(k, &value, VALUE);
    }

    // 2. 12 MB of answers: past the budget, so A is closed, and B never waits.
    let second: Vec<Task<Vec<u8>>> = (0..120)
        .map(|_| lazy.call_service("slowpeer.v1.park", ()))
        .collect();
    assert!(parked(120), "A's 120 calls were not all parked");
    let (sent, nobody) = bounded(
        serving.call_service::<_, (usize, usize)>("slowpeer.v1.complete", vec![VALUE]),
        "B completing A's replies past the budget",
    )
    .expect("B's call");
    assert_eq!(sent + nobody, 120);
    assert!(nobody > 0, "A was not closed: {sent} replies queued for it");
    assert_eq!(
        bounded(serving.schedule(func!(|| 6 * 7)), "B's next call").unwrap(),
        42
    );
    // A's connection is gone: its remaining calls fail (none hangs).
    let failed = second
        .into_iter()
        .map(|task| bounded(task, "A's call on a closed connection"))
        .filter(Result::is_err)
        .count();
    assert!(failed > 0, "every call of A was answered");
    // The server still serves newcomers.
    let fresh = ClientBuilder::new(&address)
        .expect("an address")
        .data_only(true)
        .connect()
        .expect("a new client connects");
    assert_eq!(
        bounded(
            fresh.call_service::<_, usize>("slowpeer.v1.parked", ()),
            "a new client's call"
        )
        .unwrap(),
        0
    );
}

/// Answers queued for a peer that does not read keep their shared-memory
/// segments (descriptors that travel with their frames) until written.
#[test]
fn queued_answers_keep_their_segments() {
    let (serving, address) = serving_process();
    let lazy = ClientBuilder::new(&address)
        .expect("an address")
        .data_only(true)
        .connect()
        .expect("connect A");
    let tasks: Vec<Task<Vec<u8>>> = (0..40)
        .map(|_| lazy.call_service("slowpeer.v1.park", ()))
        .collect();
    assert!(
        wait_until(PATIENCE, || {
            serving
                .call_service::<_, usize>("slowpeer.v1.parked", ())
                .wait()
                .is_ok_and(|count| count == 40)
        }),
        "A's 40 calls were not all parked"
    );
    // Inline values fill A's socket; values past the inline limit travel in
    // segments, queued behind them with their descriptors.
    let sizes = vec![VALUE, 3 * VALUE];
    let (sent, nobody) = bounded(
        serving.call_service::<_, (usize, usize)>("slowpeer.v1.complete", sizes.clone()),
        "B completing A's replies (blocked writing to A, who does not read?)",
    )
    .expect("B's call");
    assert_eq!((sent, nobody), (40, 0));
    for (k, task) in tasks.into_iter().enumerate() {
        let value = bounded(task, "A's parked call").expect("A's answer");
        check(k, &value, sizes[k % sizes.len()]);
    }
}
