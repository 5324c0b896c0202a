//! Queues between processes: the issue's example, pymulproc's scenarios
//! (without its bugs), bounded waits, close, join, and a consumer killed
//! with SIGKILL.
//!
//! Every wait is bounded; slaves are terminated at the end of each test
//! (and killed by their handles' drop if a test fails).

use std::time::{Duration, Instant};

use processional::channel::{Message, Pick, Queue, QueueBuilder, RecvError, Request, SendError};
use processional::{SlaveProcess, Task, func, slave};
use processional_tests::{PATIENCE, kill_hard, process_exists, wait_until};

fn wait<T>(task: Task<T>) -> T {
    match task.wait_timeout(PATIENCE) {
        Ok(outcome) => outcome.expect("the call"),
        Err(_) => panic!("a task did not complete within {PATIENCE:?}"),
    }
}

/// `queue.join()` on a thread, bounded.
fn join(queue: &Queue<u32>) {
    let queue = queue.clone();
    let joined = processional::thread(move || queue.join().map_err(|e| e.to_string()));
    wait(joined).expect("join");
}

fn teardown(children: Vec<SlaveProcess>) {
    for child in children {
        child.terminate(Duration::from_secs(5));
    }
}

/// The issue's example: children double what they are asked, and stop on
/// a poison pill each.
fn child(queue: Queue<u32>, parent: u32) -> Result<(), processional::channel::Error> {
    loop {
        let msg = queue.recv_for_me()?;
        match msg.request {
            Request::Die => return Ok(()),
            Request::Do => queue.send_to(parent, Request::Finished, msg.data.map(|x| x * 2))?,
            _ => {}
        }
    }
}

#[test]
fn the_issue_example_counts_thirty() {
    let queue = Queue::<u32>::new().expect("queue");
    let children: Vec<_> = (0..5).map(|_| slave().expect("spawn")).collect();
    let tasks: Vec<_> = children
        .iter()
        .map(|c| {
            c.schedule_with(
                (queue.clone(), std::process::id()),
                func!(|(q, p): (Queue<u32>, u32)| child(q, p).map_err(|e| e.to_string())),
            )
        })
        .collect();
    for _ in 0..5 {
        queue.send(Request::Do, Some(3)).expect("send");
    }
    let me = std::process::id();
    let total: u32 = (0..5)
        .map(|_| {
            queue
                .recv_addressed_to(me)
                .expect("answer")
                .data
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(total, 30);
    for _ in 0..5 {
        queue.send(Request::Die, None).expect("poison pill");
    }
    join(&queue);
    for task in tasks {
        wait(task).expect("child");
    }
    assert!(queue.is_empty().expect("len"));
    teardown(children);
}

#[test]
fn five_children_finish_with_three_and_the_parent_sums_fifteen() {
    let queue = Queue::<u32>::new().expect("queue");
    let children: Vec<_> = (0..5).map(|_| slave().expect("spawn")).collect();
    let tasks: Vec<_> = children
        .iter()
        .map(|c| {
            c.schedule_with(
                (queue.clone(), std::process::id()),
                func!(|(q, parent): (Queue<u32>, u32)| {
                    q.send_to(parent, Request::Finished, Some(3))
                        .map_err(|e| e.to_string())
                }),
            )
        })
        .collect();
    let mut total = 0;
    let mut senders = Vec::new();
    for _ in 0..5 {
        let m = queue.recv_for_me().expect("finished");
        assert_eq!(m.request, Request::Finished);
        total += m.data.unwrap();
        senders.push(m.sender);
    }
    assert_eq!(total, 15);
    join(&queue);
    let mut pids: Vec<u32> = children.iter().map(SlaveProcess::pid).collect();
    pids.sort_unstable();
    senders.sort_unstable();
    assert_eq!(senders, pids, "each message carries its child's own pid");
    for task in tasks {
        wait(task).expect("child");
    }
    teardown(children);
}

/// A child that answers only messages addressed to it, with its pid.
fn answer_mine(queue: Queue<u32>, parent: u32) -> Result<u32, String> {
    let me = std::process::id();
    let mut answered = 0;
    loop {
        let m = queue.recv_for_me().map_err(|e| e.to_string())?;
        match m.request {
            Request::Die => return Ok(answered),
            Request::Do if m.recipient == Some(me) => {
                queue
                    .send_to(parent, Request::Finished, Some(me))
                    .map_err(|e| e.to_string())?;
                answered += 1;
            }
            other => return Err(format!("{other:?} was not for {me}")),
        }
    }
}

#[test]
fn ten_rounds_of_addressed_messages_answered_by_their_child_only() {
    let mut seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let mut random = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) as usize
    };
    let queue = Queue::<u32>::new().expect("queue");
    let me = std::process::id();
    for _ in 0..10 {
        let count = 1 + random() % 4;
        let children: Vec<_> = (0..count).map(|_| slave().expect("spawn")).collect();
        let tasks: Vec<_> = children
            .iter()
            .map(|c| {
                c.schedule_with(
                    (queue.clone(), me),
                    func!(|(q, p): (Queue<u32>, u32)| answer_mine(q, p)),
                )
            })
            .collect();
        let asks = 1 + random() % 3;
        for _ in 0..asks {
            for c in children.iter().rev() {
                queue.send_to(c.pid(), Request::Do, Some(0)).expect("ask");
            }
        }
        for _ in 0..asks {
            for c in children.iter().rev() {
                let answer = queue.recv_from(c.pid()).expect("answer");
                assert_eq!(answer.data, Some(c.pid()), "answered by its own child");
                assert_eq!(answer.recipient, Some(me));
            }
        }
        for c in &children {
            queue.send_to(c.pid(), Request::Die, None).expect("die");
        }
        join(&queue);
        for task in tasks {
            assert_eq!(wait(task), Ok(asks as u32));
        }
        assert_eq!(queue.len().expect("len"), 0);
        teardown(children);
    }
}

#[test]
fn a_full_bounded_queue_fails_after_the_configured_wait() {
    let wait_for = Duration::from_millis(300);
    let queue: Queue<u32> = QueueBuilder::new()
        .capacity(2)
        .send_timeout(wait_for)
        .build()
        .expect("queue");
    queue.send(Request::Do, Some(1)).expect("room");
    queue.send(Request::Do, Some(2)).expect("room");
    match queue.try_send(Message::new(Request::Do, Some(3))) {
        Err(SendError::Full(message)) => assert_eq!(message.data, Some(3)),
        other => panic!("{other:?}"),
    }
    let started = Instant::now();
    match queue.send(Request::Do, Some(4)) {
        Err(SendError::Full(message)) => assert_eq!(message.data, Some(4)),
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() >= wait_for,
        "failed only after the configured wait"
    );
    // Room again: a waiting sender gets in as soon as a message leaves.
    let waiting = {
        let queue = queue.clone();
        processional::thread(move || {
            queue
                .send_timeout(Message::new(Request::Do, Some(5)), PATIENCE)
                .map_err(|e| e.to_string())
        })
    };
    assert!(wait_until(PATIENCE, || queue.waiting().unwrap() == 1));
    assert_eq!(queue.recv().expect("first").data, Some(1));
    wait(waiting).expect("the waiting sender got in");
    let rest: Vec<_> = (0..2).map(|_| queue.recv().unwrap().data).collect();
    assert_eq!(rest, [Some(2), Some(5)]);
}

#[test]
fn receive_on_an_empty_queue() {
    let queue = Queue::<u32>::new().expect("queue");
    assert!(queue.try_recv().expect("empty is not a failure").is_none());
    assert!(
        queue
            .try_recv_by(Pick::for_me())
            .expect("not a failure")
            .is_none()
    );
    assert!(matches!(
        queue.recv_timeout(Duration::from_millis(50)),
        Err(RecvError::Timeout)
    ));
    assert!(queue.is_empty().unwrap());
}

#[test]
fn a_filtered_receive_leaves_foreign_messages_in_place_unchanged_and_in_order() {
    let queue = Queue::<u32>::new().expect("queue");
    let me = std::process::id();
    let foreign = me.wrapping_add(1);
    queue.send_to(foreign, Request::Do, Some(1)).unwrap();
    queue.send_to(foreign, Request::User(9), Some(2)).unwrap();
    queue.send_to(me, Request::Do, Some(3)).unwrap();
    queue.send_to(foreign, Request::Do, Some(4)).unwrap();
    let mine = queue.recv_for_me().expect("mine");
    assert_eq!(mine.data, Some(3));
    // Custom filter, run in the host: skips the first, takes the User kind.
    let user = queue
        .recv_where(func!(|m: &Message<u32>| m.request == Request::User(9)))
        .expect("user");
    assert_eq!(user.data, Some(2));
    let left: Vec<_> = (0..2).map(|_| queue.recv().expect("left")).collect();
    assert_eq!(
        left.iter()
            .map(|m| (m.request, m.recipient, m.data, m.sender))
            .collect::<Vec<_>>(),
        [
            (Request::Do, Some(foreign), Some(1), me),
            (Request::Do, Some(foreign), Some(4), me)
        ]
    );
}

#[test]
fn rejected_then_accepted_messages_leave_join_non_blocking() {
    let queue = Queue::<u32>::new().expect("queue");
    let (a, b) = (slave().expect("spawn"), slave().expect("spawn"));
    queue.send_to(a.pid(), Request::Do, Some(1)).unwrap();
    // B looks and finds nothing for it (it rejects A's message).
    let rejected = b.invoke_with(
        queue.clone(),
        func!(|q: Queue<u32>| q
            .try_recv_by(processional::channel::Pick::for_me())
            .map(|m| m.is_none())
            .map_err(|e| e.to_string())),
    );
    assert_eq!(rejected.expect("call"), Ok(true));
    let accepted = a.invoke_with(
        queue.clone(),
        func!(|q: Queue<u32>| q.recv_for_me().map(|m| m.data).map_err(|e| e.to_string())),
    );
    assert_eq!(accepted.expect("call"), Ok(Some(1)));
    join(&queue);
    teardown(vec![a, b]);
}

#[test]
fn a_blocking_receive_picks_up_a_message_sent_a_second_later() {
    let queue = Queue::<u32>::new().expect("queue");
    let c = slave().expect("spawn");
    let got = c.schedule_with(
        queue.clone(),
        func!(|q: Queue<u32>| q.recv_for_me().map(|m| m.data).map_err(|e| e.to_string())),
    );
    // Others' messages come first; the receiver keeps waiting.
    for i in 0..100 {
        queue.send_to(1, Request::Do, Some(i)).unwrap();
    }
    assert!(
        wait_until(PATIENCE, || queue.waiting().unwrap() == 1),
        "the receive waits in the host"
    );
    std::thread::sleep(Duration::from_secs(1));
    queue.send_to(c.pid(), Request::Do, Some(7)).unwrap();
    assert_eq!(wait(got), Ok(Some(7)));
    assert_eq!(queue.len().unwrap(), 100);
    teardown(vec![c]);
}

#[test]
fn close_lets_receivers_drain_then_ends_the_queue() {
    let queue = Queue::<u32>::new().expect("queue");
    let c = slave().expect("spawn");
    queue.send_to(c.pid(), Request::Do, Some(1)).unwrap();
    queue.close().unwrap();
    match queue.send(Request::Do, Some(2)) {
        Err(SendError::Closed(m)) => assert_eq!(m.data, Some(2)),
        other => panic!("{other:?}"),
    }
    let drained = c.invoke_with(
        queue.clone(),
        func!(|q: Queue<u32>| {
            let first = q.recv_for_me().map(|m| m.data).map_err(|e| e.to_string());
            let end = matches!(
                q.recv_for_me(),
                Err(processional::channel::RecvError::Closed)
            );
            (first, end)
        }),
    );
    assert_eq!(drained.expect("call"), (Ok(Some(1)), true));
    assert!(matches!(queue.recv(), Err(RecvError::Closed)));
    teardown(vec![c]);
}

#[test]
fn explicit_acknowledgement_holds_join_until_task_done() {
    let queue: Queue<u32> = QueueBuilder::new()
        .explicit_ack(true)
        .build()
        .expect("queue");
    queue.send(Request::Do, Some(1)).unwrap();
    queue.recv().unwrap();
    let joined = {
        let queue = queue.clone();
        processional::thread(move || queue.join().map_err(|e| e.to_string()))
    };
    assert!(
        wait_until(PATIENCE, || queue.waiting().unwrap() == 1),
        "join waits"
    );
    queue.task_done().unwrap();
    wait(joined).expect("joined");
    assert!(queue.task_done().is_err(), "nothing left to acknowledge");
}

#[test]
fn a_consumer_killed_with_sigkill_loses_nothing_unreceived() {
    let queue = Queue::<u32>::new().expect("queue");
    let consumer = slave().expect("spawn");
    let pid = consumer.pid();
    let blocked = consumer.schedule_with(
        queue.clone(),
        func!(|q: Queue<u32>| q.recv_for_me().map(|m| m.data).map_err(|e| e.to_string())),
    );
    assert!(
        wait_until(PATIENCE, || queue.waiting().unwrap() == 1),
        "the consumer waits"
    );
    kill_hard(pid);
    assert!(
        wait_until(PATIENCE, || !process_exists(pid)),
        "the consumer died"
    );
    let lost = blocked.wait_timeout(PATIENCE).expect("in time");
    assert!(
        lost.is_err_and(|e| e.is_worker_lost()),
        "its call died with it"
    );
    // Sent after the kill, possibly to the dead consumer's waiting receive:
    // nothing may be lost.
    for i in 0..10 {
        queue.send(Request::Do, Some(i)).unwrap();
    }
    let next = slave().expect("spawn");
    let got = next.invoke_with(
        queue.clone(),
        func!(|q: Queue<u32>| (0..10)
            .map(|_| q
                .recv_timeout(std::time::Duration::from_secs(60))
                .map(|m| m.data.unwrap_or(99)))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|e| e.to_string())),
    );
    assert_eq!(got.expect("call"), Ok((0..10).collect::<Vec<_>>()));
    join(&queue);
    drop(consumer);
    teardown(vec![next]);
}

/// Runs the data-only queue client (another program) and returns its line.
fn queue_client(queue: &Queue<u64>, args: &[&str]) -> (u32, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_queue_client"));
    command
        .arg(queue.host())
        .arg(queue.id().to_string())
        .args(args)
        .stderr(std::process::Stdio::inherit());
    let (pid, output) = processional_tests::run_to_end(&mut command);
    (pid, output.trim().to_string())
}

#[test]
fn a_program_of_another_build_uses_the_queue_through_its_services() {
    let queue = Queue::<u64>::new().expect("queue");
    for i in 1..=3 {
        queue.send(Request::Do, Some(i)).unwrap();
    }
    assert_eq!(queue_client(&queue, &["len"]).1, "len 3");
    assert_eq!(queue_client(&queue, &["recv", "3"]).1, "sum 6");
    let (pid, line) = queue_client(&queue, &["send", "2"]);
    assert_eq!(line, "sent 2");
    let got: Vec<_> = (0..2).map(|_| queue.recv().unwrap()).collect();
    assert!(
        got.iter().all(|m| m.sender == pid),
        "stamped with the other program's pid"
    );
    assert_eq!(
        got.iter().map(|m| m.data).collect::<Vec<_>>(),
        [Some(0), Some(1)]
    );
    assert_eq!(queue_client(&queue, &["join"]).1, "joined");
}

#[test]
fn a_queue_on_an_existing_server_and_an_async_receive() {
    let dir = processional::runtime_dir().expect("runtime dir");
    let address = format!(
        "unix:{}/channel-test-{}.sock",
        dir.display(),
        std::process::id()
    );
    let server = processional::server(&address).expect("server");
    let queue: Queue<u32> = QueueBuilder::new().host(&address).build().expect("queue");
    assert_eq!(queue.host(), address);
    let c = slave().expect("spawn");
    let next = queue.recv_by_async(Pick::for_me());
    let sent = c.invoke_with(
        (queue.clone(), std::process::id()),
        func!(|(q, parent): (Queue<u32>, u32)| q
            .send_to(parent, Request::Finished, Some(5))
            .map_err(|e| e.to_string())),
    );
    assert_eq!(sent.expect("call"), Ok(()));
    let got = pollster::block_on(next).expect("async receive");
    assert_eq!((got.data, got.sender), (Some(5), c.pid()));
    teardown(vec![c]);
    drop(queue);
    server.terminate(Duration::from_secs(5));
}

#[test]
fn the_queue_outlives_its_creators_handle_while_a_child_holds_one() {
    let queue = Queue::<u32>::new().expect("queue");
    let c = slave().expect("spawn");
    let used = c.schedule_with(
        queue.clone(),
        func!(|q: Queue<u32>| {
            processional_tests::gate::start_then_wait(processional_tests::PATIENCE);
            q.send(Request::Do, Some(8)).map_err(|e| e.to_string())?;
            q.recv_for_me().map(|m| m.data).map_err(|e| e.to_string())
        }),
    );
    processional_tests::gate::wait_for_start(&c);
    drop(queue);
    c.thread(func!(processional_tests::gate::open))
        .wait_timeout(PATIENCE)
        .expect("in time")
        .expect("open");
    assert_eq!(wait(used), Ok(Some(8)), "the host still serves the child");
    teardown(vec![c]);
}

#[test]
fn a_buffered_sender_hands_back_everything_a_full_queue_refused_in_order() {
    let queue: Queue<u32> = QueueBuilder::new().capacity(5).build().expect("queue");
    let mut sender = queue.buffered(3);
    let mut refused = None;
    for i in 0..9 {
        if let Err(error) = sender.send(Request::Do, Some(i)) {
            refused = Some(error);
            break;
        }
    }
    let error = refused.expect("the queue filled up");
    assert!(matches!(error.reason, processional::channel::Error::Full));
    let unsent: Vec<_> = error.unsent.iter().map(|m| m.data).collect();
    assert_eq!(unsent, [Some(5), Some(6), Some(7), Some(8)]);
    let held: Vec<_> = (0..5).map(|_| queue.recv().unwrap().data).collect();
    assert_eq!(held, [Some(0), Some(1), Some(2), Some(3), Some(4)]);
}
