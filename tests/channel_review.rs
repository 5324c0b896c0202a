//! Queues after the security review (`notes/review.md` #5, #6, part of #2,
//! and the buffered sender's minor finding): a dropped async receive loses
//! nothing, ids cannot be guessed, the host sends no reply under a queue's
//! lock, and a broken batch says which messages may have arrived.
//!
//! Every wait is bounded (`PATIENCE`); the queues' hosts are servers that
//! stop with this process.

use processional::channel::wire::{SendArgs, SendReply, Status, Wait, services};
use processional::channel::{Message, Pick, Queue, QueueBuilder, Request};
use processional::{ClientBuilder, SlaveProcess, Task};
use processional_tests::{PATIENCE, is_zombie, kill_hard, process_exists, wait_until};

fn wait<T>(task: Task<T>, what: &str) -> T {
    match task.wait_timeout(PATIENCE) {
        Ok(outcome) => outcome.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => panic!("{what}: not done within {PATIENCE:?}"),
    }
}

/// The postcard encoding of a `Vec<u8>` (a varint length, the bytes), as
/// a queue handle of `Vec<u8>` puts it on the wire.
fn encoded_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 10);
    let mut len = bytes.len();
    while len >= 0x80 {
        out.push((len as u8) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(bytes);
    out
}

/// The pid of the process serving the unix socket `unix:<path>`.
fn host_pid(host: &str) -> u32 {
    let path = host.strip_prefix("unix:").expect("a unix address");
    let stream = std::os::unix::net::UnixStream::connect(path).expect("connect");
    let credentials = rustix::net::sockopt::socket_peercred(&stream).expect("peer credentials");
    credentials.pid.as_raw_nonzero().get() as u32
}

/// A connection of its own to a queue host (data only: services alone).
fn connect(host: &str) -> SlaveProcess {
    ClientBuilder::new(host)
        .expect("address")
        .data_only(true)
        .connect()
        .expect("connect to the queue host")
}

/// Review #5: an async receive dropped before a message came (a `select!`,
/// a timeout) left its call waiting in the host, which handed the next
/// message to it: received by nobody.
#[test]
fn a_dropped_async_receive_does_not_lose_the_next_message() {
    let queue = Queue::<u32>::new().expect("queue");
    drop(queue.recv_by_async(Pick::Any));
    queue.send(Request::Do, Some(7)).expect("send");
    let got = queue.recv_timeout(PATIENCE);
    assert_eq!(
        got.expect("the message sent after a dropped async receive")
            .data,
        Some(7)
    );
    assert_eq!(queue.len().expect("len"), 0);
    assert_eq!(
        queue.waiting().expect("waiting"),
        0,
        "the dropped receive is forgotten"
    );
}

/// Review #5, across connections: the receive dropped on one connection,
/// the message sent on another. A round trip on the receiver's connection
/// after the drop means its cancel reached the host (frames are read in
/// order), so no message can be handed to it any more.
#[test]
fn a_receive_dropped_on_another_connection_is_skipped_and_the_message_stays() {
    let queue = Queue::<u32>::new().expect("queue");
    let other = Queue::<u32>::open_data_only(queue.host(), queue.id()).expect("open");
    let pending: Vec<_> = (0..3).map(|_| other.recv_by_async(Pick::Any)).collect();
    assert!(
        wait_until(PATIENCE, || other.waiting().expect("waiting") == 3),
        "the receives did not reach the host"
    );
    drop(pending);
    // The round trip behind the cancels.
    assert_eq!(other.len().expect("len"), 0);
    queue.send(Request::Do, Some(1)).expect("send");
    queue.send(Request::Do, Some(2)).expect("send");
    // Nobody took them: they stay in place, in order.
    assert_eq!(queue.len().expect("len"), 2);
    let next: Vec<_> = (0..2)
        .map(|_| queue.recv_timeout(PATIENCE).expect("recv").data)
        .collect();
    assert_eq!(next, [Some(1), Some(2)]);
}

/// An async receive that is not dropped still gets its message.
#[test]
fn an_async_receive_kept_gets_its_message() {
    let queue = Queue::<u32>::new().expect("queue");
    let next = queue.recv_by_async(Pick::Any);
    queue.send(Request::Do, Some(3)).expect("send");
    let got = processional::thread(move || pollster::block_on(next).map(|m| m.data));
    assert_eq!(wait(got, "the async receive").ok(), Some(Some(3)));
}

/// Review #6: ids were 1, 2, 3, … per host, so a stranger holding the key
/// closed (or drained, or fed) queues it was never given.
#[test]
fn a_stranger_cannot_guess_a_queue_id() {
    let queue = Queue::<u32>::new().expect("queue");
    let id = queue.id();
    let mut guesses: Vec<_> = (0..=64).collect();
    guesses.extend([id.wrapping_add(1), id.wrapping_sub(1), id ^ 1, id >> 1]);
    let stranger = connect(queue.host());
    for guess in guesses {
        assert_ne!(guess, id, "the id is one a stranger guesses");
        let status: Status = wait(
            stranger.call_service(services::CLOSE, guess),
            "a stranger's close",
        );
        assert_eq!(status, Status::NoQueue, "the guess {guess} named a queue");
    }
    queue
        .send(Request::Do, Some(1))
        .expect("the queue is still open");
    // A second queue on the same host is no neighbour of the first.
    let second = processional::channel::QueueBuilder::new()
        .host(queue.host())
        .build::<u32>()
        .expect("a second queue on the same host");
    assert_ne!(second.id(), id.wrapping_add(1), "ids follow each other");
    assert!(
        id > u32::MAX.into() && second.id() > u32::MAX.into(),
        "small ids"
    );
}

/// Review #2 (channel): closing a queue answers its waiting receivers. The
/// host used to send those answers with the queue's lock held, so a
/// receiver that does not read its socket (its writer taken by a delivery
/// that cannot finish) held the queue: every other client's call on it
/// stopped. Now the closer's call waits for that writer, and nobody else.
#[test]
fn a_receiver_that_does_not_read_does_not_hold_the_queue() {
    // Far more than a socket holds (its buffers are asked as large as the
    // kernel allows: a few MiB), each message inline (under `INLINE_LIMIT`).
    const PARKED: usize = 208;
    const SENT: usize = 200;
    let queue = Queue::<Vec<u8>>::new().expect("queue");
    let host = queue.host().to_string();
    // Receives parked on their own connection, whose futures nobody polls:
    // that connection reads nothing until they are.
    let lazy = Queue::<Vec<u8>>::open_data_only(&host, queue.id()).expect("open");
    let parked: Vec<_> = (0..PARKED).map(|_| lazy.recv_by_async(Pick::Any)).collect();
    let observer = connect(&host);
    let waiting = |what: &str| -> u64 {
        match wait(observer.call_service(services::WAITING, queue.id()), what) {
            Status::Ok(n) => n,
            other => panic!("{what}: {other:?}"),
        }
    };
    assert!(
        wait_until(PATIENCE, || waiting("waiting") == PARKED as u64),
        "the receives did not reach the host"
    );
    // Big deliveries to the lazy connection, in one batch: they fill its
    // socket, and the writer of the batch's call stays blocked there,
    // holding the lazy connection's writer.
    let sender = connect(&host);
    let message = Message::new(
        Request::Do,
        Some(serde_bytes::ByteBuf::from(encoded_bytes(&[7u8; 120_000]))),
    );
    let args = SendArgs {
        queue: queue.id(),
        messages: vec![message; SENT],
        wait: Wait::Now,
    };
    let sends: Vec<Task<SendReply>> = vec![sender.call_service(services::SEND, args)];
    let senders = vec![sender];
    // Every delivery left the queue (the messages are on their way).
    assert!(
        wait_until(PATIENCE, || waiting("waiting") == (PARKED - SENT) as u64),
        "the deliveries did not leave the queue"
    );
    // The remaining receivers get the end of the queue: answers to the
    // lazy connection, which cannot take them now.
    let closer = connect(&host);
    let closing: Task<Status> = closer.call_service(services::CLOSE, queue.id());
    // The close drains the receivers under the lock; another client still
    // gets answers from the queue while the closer waits.
    assert!(
        wait_until(PATIENCE, || waiting("waiting while the close waits") == 0),
        "the close did not drain the receivers"
    );
    let len: Status = wait(observer.call_service(services::LEN, queue.id()), "len");
    assert_eq!(len, Status::Ok(0));

    // Teardown: read the lazy connection; everything finishes.
    let readers = processional::thread(move || {
        parked
            .into_iter()
            .map(|f| pollster::block_on(f).is_ok())
            .filter(|got| *got)
            .count()
    });
    assert_eq!(wait(readers, "the lazy receives"), SENT);
    for send in sends {
        assert_eq!(wait(send, "a send"), SendReply::Accepted);
    }
    assert_eq!(wait(closing, "the close"), Status::Ok(0));
    drop((lazy, senders, closer, observer));
}

/// Review (minor): a buffered sender whose host went away with a batch in
/// flight handed the whole batch back as unsent, though the host may have
/// taken it: a resend could duplicate. It now says which are unknown.
#[test]
fn a_batch_in_flight_when_the_host_goes_is_unknown_not_unsent() {
    let queue = Queue::<u32>::new().expect("queue");
    assert_eq!(queue.len().expect("len"), 0);
    let pid = host_pid(queue.host());
    kill_hard(pid);
    assert!(
        wait_until(PATIENCE, || !process_exists(pid) || is_zombie(pid)),
        "the host did not die"
    );
    let mut sender = queue.buffered(2);
    // The first two leave as a batch (nothing answers it); the third is
    // only buffered.
    for i in 0..3 {
        sender.send(Request::Do, Some(i)).expect("buffered");
    }
    let error = sender.flush().expect_err("the host is gone");
    let unknown: Vec<_> = error.unknown.iter().map(|m| m.data).collect();
    let unsent: Vec<_> = error.unsent.iter().map(|m| m.data).collect();
    assert_eq!(
        unknown,
        [Some(0), Some(1)],
        "the batch in flight may have arrived"
    );
    assert_eq!(unsent, [Some(2)], "only what never left is unsent");
    assert!(error.to_string().contains("may or may not"), "{error}");
    // The same for a batch sent at once.
    let error = queue
        .send_batch(vec![Message::new(Request::Do, Some(9))])
        .expect_err("the host is gone");
    assert_eq!(error.unknown.len() + error.unsent.len(), 1);
}

/// In a consumer slave: `count` messages received in batches; their sum and
/// how many came.
fn consume_batches(queue: Queue<u64>, count: u64) -> Result<(u64, u64), String> {
    let (mut got, mut sum) = (0u64, 0u64);
    while got < count {
        let batch = queue
            .recv_batch(Pick::Any, 4096)
            .map_err(|e| e.to_string())?;
        got += batch.len() as u64;
        sum += batch.iter().map(|m| m.data.unwrap_or(0)).sum::<u64>();
    }
    Ok((got, sum))
}

#[test]
fn batches_between_processes_lose_and_duplicate_nothing() {
    let queue = Queue::<u64>::new().expect("queue");
    let consumer = processional::slave().expect("a consumer");
    for round in 0..5u64 {
        let count = 30_000 + round * 1_000;
        let consumed = consumer.schedule_with(
            (queue.clone(), count),
            processional::func!(|(q, n): (Queue<u64>, u64)| consume_batches(q, n)),
        );
        let mut sender = queue.buffered(4096);
        for i in 0..count {
            sender.send(Request::Do, Some(i)).expect("send");
        }
        sender.flush().expect("flush");
        let (got, sum) = wait(consumed, "the consumer").expect("consumed");
        assert_eq!(
            (got, sum),
            (count, count * (count - 1) / 2),
            "round {round}"
        );
        assert_eq!(queue.len().expect("len"), 0, "round {round}");
    }
}

#[test]
fn a_host_restarted_at_its_address_is_reached_anew() {
    let dir = std::env::temp_dir().join(format!("processional-rehost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory");
    let address = format!("unix:{}", dir.join("host.sock").display());
    let first = processional::server(&address).expect("the first host");
    let old: Queue<u8> = QueueBuilder::new()
        .host(&address)
        .build()
        .expect("a queue on the first host");
    first.terminate(PATIENCE);
    assert!(
        wait_until(PATIENCE, || !first.is_alive()),
        "the first host is gone"
    );
    // A handle on the dead host is still held; a new host at the same
    // address must not get its connection.
    let _second = processional::server(&address).expect("the second host");
    let new: Queue<u8> = QueueBuilder::new()
        .host(&address)
        .build()
        .expect("a queue on the second host");
    new.send(Request::Do, Some(7))
        .expect("send to the second host");
    let message = new.recv().expect("receive from the second host");
    assert_eq!(message.data, Some(7));
    drop(old);
    let _ = std::fs::remove_dir_all(&dir);
}
