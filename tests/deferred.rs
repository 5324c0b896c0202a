//! Deferred replies: a served function keeps its `Reply` and answers later,
//! from any thread, while its process serves other calls.

use std::sync::Mutex;

use processional::{
    ClientBuilder, Error, Later, NobodyListening, RemoteErrorKind, Reply, ServerBuilder, Task,
    func, reply_later, slave,
};
use processional_tests::{KillOnDrop, PATIENCE, is_helper, spawn_helper, wait_until};

fn wait<T>(task: Task<T>) -> Result<T, Error> {
    match task.wait_timeout(PATIENCE) {
        Ok(outcome) => outcome,
        Err(_) => panic!("a task did not complete within {PATIENCE:?}"),
    }
}

/// Replies kept by deferred calls, in whichever process served them.
static KEPT: Mutex<Vec<Reply<u64>>> = Mutex::new(Vec::new());

fn keep_reply() -> Later<u64> {
    let (reply, later) = reply_later();
    KEPT.lock().unwrap().push(reply);
    later
}

fn kept() -> usize {
    KEPT.lock().unwrap().len()
}

/// Answers every kept reply with `value`, each from a thread of its own.
fn answer_kept_from_threads(value: u64) -> usize {
    let replies: Vec<Reply<u64>> = KEPT.lock().unwrap().drain(..).collect();
    let count = replies.len();
    let threads: Vec<_> = replies
        .into_iter()
        .map(|reply| std::thread::spawn(move || reply.send(value).is_ok()))
        .collect();
    let sent = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|&sent| sent)
        .count();
    assert_eq!(sent, count);
    count
}

fn threads_of_this_process() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

#[test]
fn a_reply_is_sent_later_from_another_thread() {
    let process = slave().expect("spawn");
    let later = process.schedule_later(func!(keep_reply));
    // The slave ran the deferring function and moved on: it serves this
    // call, which answers the first one from other threads.
    assert_eq!(process.invoke(func!(kept)).unwrap(), 1);
    assert_eq!(
        process
            .invoke_with(7u64, func!(answer_kept_from_threads))
            .unwrap(),
        1
    );
    assert_eq!(wait(later).unwrap(), 7);
    // With arguments, answered at once from the function's own thread.
    let echoed = process
        .invoke_later_with(
            "now".to_string(),
            func!(|word: String| -> Later<String> {
                let (reply, later) = reply_later();
                reply.send(word).unwrap();
                later
            }),
        )
        .unwrap();
    assert_eq!(echoed, "now");
}

#[test]
fn a_dropped_reply_or_a_panic_still_answers() {
    let process = slave().expect("spawn");
    let error = process
        .invoke_later(func!(|| -> Later<u8> {
            let (reply, later) = reply_later();
            drop(reply);
            later
        }))
        .expect_err("dropped unanswered");
    assert!(
        matches!(&error, Error::Remote(r) if r.kind == RemoteErrorKind::Stopped),
        "{error:?}"
    );
    for message in ["before", "after"] {
        let error = process
            .invoke_later_with(
                message.to_string(),
                func!(|when: String| -> Later<u8> {
                    if when == "before" {
                        panic!("panicked before reply_later");
                    }
                    let (_reply, _later) = reply_later::<u8>();
                    panic!("panicked after reply_later");
                }),
            )
            .expect_err("panicked");
        assert!(error.is_panic(), "{error:?}");
        assert_eq!(
            error.message(),
            Some(format!("panicked {message} reply_later").as_str())
        );
    }
    // The connection is fine.
    assert_eq!(process.invoke(func!(|| 5u8)).unwrap(), 5);
}

#[test]
fn a_method_answers_later_from_a_later_call() {
    #[derive(Default)]
    struct Mailbox {
        letters: Vec<u64>,
        waiting: Vec<Reply<u64>>,
    }
    let process = slave().expect("spawn");
    let mailbox = process.wrap(func!(Mailbox::default)).unwrap();
    let takes: Vec<Task<u64>> = (0..3)
        .map(|_| {
            mailbox.schedule_later(func!(|m: &mut Mailbox| -> Later<u64> {
                let (reply, later) = reply_later();
                match m.letters.pop() {
                    Some(letter) => reply.send(letter).unwrap(),
                    None => m.waiting.push(reply),
                }
                later
            }))
        })
        .collect();
    for letter in [10u64, 20, 30] {
        mailbox
            .invoke_with(
                letter,
                func!(|m: &mut Mailbox, letter: u64| match m.waiting.pop() {
                    Some(reply) => reply.send(letter).unwrap(),
                    None => m.letters.push(letter),
                }),
            )
            .unwrap();
    }
    let mut got: Vec<u64> = takes.into_iter().map(|t| wait(t).unwrap()).collect();
    got.sort_unstable();
    assert_eq!(got, [10, 20, 30]);
}

/// Replies kept by the in-process server of the test below.
static ORPHANS: Mutex<Vec<Reply<String>>> = Mutex::new(Vec::new());

/// The caller of the test below, in a process of its own: it connects to
/// the server named in `DEFERRED_SERVER`, leaves a deferred call there and
/// waits to be killed.
#[test]
fn helper_leaves_a_deferred_call() {
    if !is_helper() {
        return;
    }
    let address = std::env::var("DEFERRED_SERVER").unwrap();
    let client = ClientBuilder::new(&address).unwrap().connect().unwrap();
    let task = client.schedule_later(func!(|| -> Later<String> {
        let (reply, later) = reply_later();
        ORPHANS.lock().unwrap().push(reply);
        later
    }));
    // Killed before the answer comes.
    let _ = task.wait_timeout(PATIENCE);
}

#[test]
fn a_reply_after_the_caller_left_reports_nobody_listening() {
    if is_helper() {
        return;
    }
    let key = processional::Key::generate();
    let server = ServerBuilder::new("tcp://127.0.0.1:0")
        .unwrap()
        .key(key.clone())
        .persistent(true)
        .start()
        .expect("start");
    let caller = KillOnDrop(spawn_helper(
        "helper_leaves_a_deferred_call",
        &[
            ("DEFERRED_SERVER", server.address().to_string()),
            ("PROCESSIONAL_KEY", key.to_hex()),
        ],
    ));
    // The server runs in this process: the reply lands in this ORPHANS.
    assert!(
        wait_until(PATIENCE, || ORPHANS.lock().unwrap().len() == 1),
        "the deferring function did not run"
    );
    let reply = ORPHANS.lock().unwrap().pop().unwrap();
    assert!(reply.is_listening());
    drop(caller);
    assert!(
        wait_until(PATIENCE, || server.clients() == 0),
        "the caller is still counted"
    );
    assert!(!reply.is_listening());
    let NobodyListening(value) = reply
        .send("too late".to_string())
        .expect_err("nobody listens");
    assert_eq!(value, "too late");
    server.stop();
}

#[test]
fn ten_thousand_pending_deferred_calls_hold_no_thread_each() {
    const CALLS: usize = 10_000;
    let process = slave().expect("spawn");
    let before = process.invoke(func!(threads_of_this_process)).unwrap();
    let tasks: Vec<Task<u64>> = (0..CALLS)
        .map(|_| process.schedule_later(func!(keep_reply)))
        .collect();
    // Queued after the deferring calls: they have all run when it runs.
    assert_eq!(process.invoke(func!(kept)).unwrap(), CALLS);
    let during = process.invoke(func!(threads_of_this_process)).unwrap();
    assert!(
        during <= before + 8,
        "{during} threads with {CALLS} pending deferred calls ({before} before)"
    );
    assert!(tasks.iter().all(|task| !task.is_finished()));
    let answered = process
        .invoke(func!(|| {
            let replies: Vec<Reply<u64>> = KEPT.lock().unwrap().drain(..).collect();
            let count = replies.len();
            for (i, reply) in replies.into_iter().enumerate() {
                reply.send(i as u64).unwrap();
            }
            count
        }))
        .unwrap();
    assert_eq!(answered, CALLS);
    let mut values: Vec<u64> = tasks.into_iter().map(|t| wait(t).unwrap()).collect();
    values.sort_unstable();
    assert!(values.iter().copied().eq(0..CALLS as u64));
}
