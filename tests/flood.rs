//! A connection's backlog of calls waiting to start is bounded: a client
//! that sends more calls than its server takes in (in number, argument
//! bytes or descriptors) gets the excess refused at once as `Overloaded`,
//! the server goes on serving it and everyone else, and no call is lost.
//! Before, the server read and queued every call, however many: a client
//! that flooded calls (or never read its replies), a data-only one too,
//! grew the server's memory without bound.
//!
//! Each test runs its server in a slave of its own, whose environment sets
//! small limits (`PROCESSIONAL_CALL_BACKLOG*`), so a few calls fill the
//! backlog. A blocking service holds the connection's executor, so that
//! what follows it waits; it is released through the slave's own
//! connection. Every wait is bounded by `PATIENCE`; the slaves are killed
//! when their handles drop.

use std::io::Read;
use std::os::fd::AsFd;
use std::sync::mpsc;

use processional::process::{CALL_BACKLOG_BYTES_VAR, CALL_BACKLOG_FDS_VAR, CALL_BACKLOG_VAR};
use processional::proto::{Message, Outcome, Payload, RemoteErrorKind, Reply, ServiceCall};
use processional::transport::Connection;
use processional::{
    ClientBuilder, Error, ServerBuilder, SlaveProcess, SlaveProcessBuilder, Task, func,
    register_service,
};
use processional_tests::{PATIENCE, gate, raw_data_client};

/// In the serving slave: the services of these tests, and a server of this
/// process on `address`, persistent (it lives as long as the slave).
fn serve_here(address: String) -> Result<(), String> {
    register_service(
        "flood.block",
        func!(|_: ()| gate::start_then_wait(gate::LONGER_THAN_PATIENCE)),
    )
    .map_err(|e| e.to_string())?;
    register_service("flood.echo", func!(|n: u32| n)).map_err(|e| e.to_string())?;
    register_service("flood.len", func!(|bytes: Vec<u8>| bytes.len()))
        .map_err(|e| e.to_string())?;
    let handle = ServerBuilder::new(&address)
        .and_then(|builder| builder.persistent(true).start())
        .map_err(|e| e.to_string())?;
    // Serving goes on on its own threads; the handle is not needed.
    drop(handle);
    Ok(())
}

/// A slave whose environment has `vars`, serving the test services on a
/// fresh unix socket: the slave and the socket's address.
fn server_with(vars: &[(&str, &str)], tag: &str) -> (SlaveProcess, String) {
    let address = processional_tests::fresh_unix_address("flood", tag);
    let mut builder = SlaveProcessBuilder::new();
    for (name, value) in vars {
        builder = builder.env(name, value);
    }
    let process = builder.spawn().expect("spawn the serving slave");
    process
        .invoke_with(address.clone(), func!(serve_here))
        .expect("reach the slave")
        .expect("serve");
    (process, address)
}

fn data_client(address: &str) -> SlaveProcess {
    ClientBuilder::new(address)
        .expect("an address")
        .data_only(true)
        .connect()
        .expect("connect as a data-only client")
}

/// Blocks the executor of `client`'s connection in a call until the gate
/// of `process` opens; returns once the call runs.
fn block(process: &SlaveProcess, client: &SlaveProcess) -> Task<bool> {
    let blocked = client.call_service::<(), bool>("flood.block", ());
    gate::wait_for_start(process);
    blocked
}

fn outcome<T>(task: Task<T>) -> Result<T, Error> {
    task.wait_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("no answer within {PATIENCE:?}: a call was lost"))
}

/// The calls a client floods past the backlog come back `Overloaded`, at
/// once, while the calls before them still wait; the server serves another
/// client meanwhile; the calls it took all run. Every call is answered.
#[test]
fn calls_past_the_backlog_are_refused_overloaded_and_none_is_lost() {
    const LIMIT: u32 = 8;
    const EXCESS: u32 = 20;
    let (process, address) = server_with(&[(CALL_BACKLOG_VAR, "8")], "calls");
    let client = data_client(&address);
    let blocked = block(&process, &client);
    let mut echoes: Vec<Task<u32>> = (0..LIMIT + EXCESS)
        .map(|n| client.call_service("flood.echo", n))
        .collect();
    let refused = echoes.split_off(LIMIT as usize);
    for task in refused {
        let error = outcome(task).expect_err("refused: the backlog is full");
        assert!(error.is_overloaded(), "{error:?}");
        assert!(error.to_string().contains(CALL_BACKLOG_VAR), "{error}");
    }
    // Meanwhile another client is served as ever, and the slave's own
    // connection too.
    let other = data_client(&address);
    assert_eq!(
        outcome(other.call_service::<u32, u32>("flood.echo", 77)).unwrap(),
        77
    );
    assert_eq!(process.invoke(func!(|| 5u8)).expect("the slave serves"), 5);
    process.invoke(func!(gate::open)).expect("open the gate");
    assert!(outcome(blocked).expect("the blocking call ran"));
    for (n, task) in echoes.into_iter().enumerate() {
        assert_eq!(outcome(task).expect("a call the backlog took"), n as u32);
    }
    // The flooding client goes on too, once its backlog has room.
    assert_eq!(
        outcome(client.call_service::<u32, u32>("flood.echo", 9)).unwrap(),
        9
    );
}

/// Calls whose arguments would hold more bytes than the backlog takes are
/// refused `Overloaded`; one call alone may hold more, and a small call
/// still fits beside it.
#[test]
fn calls_past_the_backlogs_bytes_are_refused_overloaded() {
    let (process, address) = server_with(&[(CALL_BACKLOG_BYTES_VAR, "4096")], "bytes");
    let client = data_client(&address);
    let blocked = block(&process, &client);
    let first = client.call_service::<Vec<u8>, usize>("flood.len", vec![1; 3000]);
    let refused: Vec<Task<usize>> = (0..3)
        .map(|_| client.call_service("flood.len", vec![2; 3000]))
        .collect();
    let small = client.call_service::<u32, u32>("flood.echo", 3);
    for task in refused {
        let error = outcome(task).expect_err("refused: too many bytes wait");
        assert!(error.is_overloaded(), "{error:?}");
        assert!(
            error.to_string().contains(CALL_BACKLOG_BYTES_VAR),
            "{error}"
        );
    }
    process.invoke(func!(gate::open)).expect("open the gate");
    assert!(outcome(blocked).expect("the blocking call ran"));
    assert_eq!(outcome(first).expect("the first large call ran"), 3000);
    assert_eq!(outcome(small).expect("the small call ran"), 3);
    let alone = client.call_service::<Vec<u8>, usize>("flood.len", vec![3; 10_000]);
    assert_eq!(
        outcome(alone).expect("a call alone, over the limit"),
        10_000
    );
}

fn service_call(task: u64, service: &str, args: Vec<u8>) -> Message {
    Message::ServiceCall(ServiceCall {
        task,
        service: service.into(),
        args: Payload::Inline(args),
    })
}

/// The next reply on `connection`: its task, and the kind of its error.
fn next_reply(connection: &mut Connection) -> (u64, Option<RemoteErrorKind>) {
    let received = connection
        .recv_timeout(PATIENCE)
        .expect("the connection works")
        .expect("an answer within PATIENCE");
    match received.message {
        Message::Reply(Reply { task, outcome }) => match outcome {
            Outcome::Value(_) => (task, None),
            Outcome::Error(error) => (task, Some(error.kind)),
        },
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Calls that would hold more descriptors than the backlog takes are
/// refused `Overloaded`, and the server closes their descriptors at once.
/// The client sends every call before it reads any reply.
#[test]
fn calls_past_the_backlogs_descriptors_are_refused_and_their_fds_closed() {
    const TAKEN: u64 = 2;
    const REFUSED: u64 = 5;
    let (process, address) = server_with(&[(CALL_BACKLOG_FDS_VAR, "2")], "fds");
    let mut connection = raw_data_client(&address);
    connection
        .send(&service_call(1, "flood.block", Vec::new()))
        .expect("send the blocking call");
    gate::wait_for_start(&process);
    // Each call carries the write end of a pipe of its own; the read end
    // sees its end once every copy is closed.
    let mut ends = Vec::new();
    for task in 2..2 + TAKEN + REFUSED {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        connection
            .send_with_fds(
                &service_call(task, "flood.echo", vec![task as u8]),
                &[writer.as_fd()],
            )
            .expect("send a call with a descriptor");
        drop(writer);
        ends.push((task, reader));
    }
    let mut refused = Vec::new();
    while refused.len() < REFUSED as usize {
        let (task, kind) = next_reply(&mut connection);
        assert_eq!(kind, Some(RemoteErrorKind::Overloaded), "task {task}");
        refused.push(task);
    }
    refused.sort_unstable();
    let expected: Vec<u64> = (2 + TAKEN..2 + TAKEN + REFUSED).collect();
    assert_eq!(refused, expected, "the calls past the limit are refused");
    for (task, mut reader) in ends.into_iter().filter(|(task, _)| refused.contains(task)) {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            let _ = sender.send(reader.read(&mut byte).map_err(|e| e.to_string()));
        });
        let read = receiver
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("the descriptor of refused call {task} is still open"));
        assert_eq!(read, Ok(0), "task {task}");
    }
    process.invoke(func!(gate::open)).expect("open the gate");
    let mut answered: Vec<u64> = (0..1 + TAKEN)
        .map(|_| next_reply(&mut connection))
        .inspect(|(task, kind)| assert_ne!(*kind, Some(RemoteErrorKind::Overloaded), "task {task}"))
        .map(|(task, _)| task)
        .collect();
    answered.sort_unstable();
    assert_eq!(answered, [1, 2, 3], "the calls taken all answer");
}

/// `thread` calls waiting for a slot count in their connection's backlog:
/// past it they are refused `Overloaded` too.
#[test]
fn thread_calls_waiting_for_a_slot_count_in_the_backlog() {
    let (process, address) = server_with(
        &[(CALL_BACKLOG_VAR, "3"), ("PROCESSIONAL_THREAD_CALLS", "1")],
        "threads",
    );
    let client = ClientBuilder::new(&address)
        .expect("an address")
        .connect()
        .expect("connect as a client of this build");
    // The one slot is taken until the gate opens.
    let blocked = client.thread(func!(|| gate::start_then_wait(gate::LONGER_THAN_PATIENCE)));
    gate::wait_for_thread_start(&process);
    let waiting: Vec<Task<u8>> = (0..3).map(|_| client.thread(func!(|| 1u8))).collect();
    let error = outcome(client.thread(func!(|| 1u8))).expect_err("the backlog is full");
    assert!(error.is_overloaded(), "{error:?}");
    process.invoke(func!(gate::open)).expect("open the gate");
    assert!(outcome(blocked).expect("the blocking call ran"));
    for task in waiting {
        assert_eq!(outcome(task).expect("a waiting thread call ran"), 1);
    }
}

/// A client that queues many calls, fewer than the default backlog, gets
/// every value: the bound refuses nothing a program legitimately asks.
#[test]
fn many_calls_queued_under_the_backlog_all_get_their_values() {
    const CALLS: u32 = 5000;
    let process = processional::slave().expect("spawn a slave");
    let blocked = process.schedule(func!(|| gate::start_then_wait(gate::LONGER_THAN_PATIENCE)));
    gate::wait_for_start(&process);
    let queued: Vec<Task<u32>> = (0..CALLS)
        .map(|n| process.schedule_with(n, func!(|n: u32| n * 2)))
        .collect();
    let behind = process.schedule(func!(|| 1u8));
    process
        .thread(func!(gate::open))
        .wait()
        .expect("open the gate");
    assert!(outcome(blocked).expect("the blocking call ran"));
    for (n, task) in queued.into_iter().enumerate() {
        assert_eq!(outcome(task).expect("a queued call"), n as u32 * 2);
    }
    assert_eq!(outcome(behind).expect("the last call"), 1);
}

/// A client that floods calls and never reads a reply: once its replies
/// fill the socket, the server's executor waits to write while it reads
/// on; the calls past the backlog are refused through the outbound queue,
/// whose budget then closes the connection. The server goes on serving.
/// Before, every call read was queued, however many: the client could send
/// as many as it liked (the server's memory grew with them) and was never
/// cut off.
#[test]
fn a_client_that_never_reads_its_replies_is_cut_off_not_queued_for() {
    const MOST: u64 = 500_000;
    let (process, address) = server_with(
        &[
            (CALL_BACKLOG_VAR, "8"),
            (processional::process::OUTBOUND_BUDGET_VAR, "65536"),
        ],
        "never-reads",
    );
    let mut connection = raw_data_client(&address);
    let sent = frames_taken(&mut connection, MOST, |n| {
        service_call(n + 1, "flood.echo", vec![1])
    });
    assert!(
        sent < MOST,
        "the server took {sent} calls from a client that reads nothing"
    );
    assert_others_are_served(&process, &address);
}

/// Sends the frames `frame` makes (numbered from 0) until the server stops
/// taking them, `most` at the outside: how many it took.
fn frames_taken(connection: &mut Connection, most: u64, frame: impl Fn(u64) -> Message) -> u64 {
    let mut sent = 0;
    while sent < most && connection.send(&frame(sent)).is_ok() {
        sent += 1;
    }
    sent
}

/// The serving slave answers its own connection, and a new client.
fn assert_others_are_served(process: &SlaveProcess, address: &str) {
    assert_eq!(process.invoke(func!(|| 5u8)).expect("the slave serves"), 5);
    let other = data_client(address);
    assert_eq!(
        outcome(other.call_service::<u32, u32>("flood.echo", 6)).unwrap(),
        6
    );
}

/// A peer that sends more releases than it holds handles is cut off once
/// they pile up behind a long call; another client is served meanwhile.
/// Before, each release waited in the executor's queue, however many: a
/// client holding nothing could grow the server's memory without bound.
#[test]
fn releases_of_handles_never_held_do_not_pile_up_behind_a_long_call() {
    const MOST: u64 = 1_000_000;
    let (process, address) = server_with(&[], "releases");
    let mut connection = raw_data_client(&address);
    connection
        .send(&service_call(1, "flood.block", Vec::new()))
        .expect("send the blocking call");
    gate::wait_for_start(&process);
    let sent = frames_taken(&mut connection, MOST, |n| Message::Release {
        object: n + 1,
    });
    assert!(
        sent < MOST,
        "the server queued {sent} releases from a client that holds nothing"
    );
    assert_others_are_served(&process, &address);
    process.invoke(func!(gate::open)).expect("open the gate");
}

/// A peer that drops many handles it holds while a long call runs is not
/// taken for one that releases what it does not hold: its releases wait,
/// and it goes on being served.
#[test]
fn many_releases_of_handles_held_wait_behind_a_long_call() {
    const HANDLES: usize = 5000;
    let (process, address) = server_with(&[], "held-releases");
    let client = processional::client(&address).expect("connect a client");
    let handles: Vec<processional::Remote<u8>> = (0..HANDLES)
        .map(|_| client.wrap(func!(|| 7u8)).expect("wrap an object"))
        .collect();
    let blocked = block(&process, &client);
    drop(handles);
    process.invoke(func!(gate::open)).expect("open the gate");
    assert!(outcome(blocked).expect("the blocking call ran"));
    assert_eq!(
        outcome(client.call_service::<u32, u32>("flood.echo", 3)).unwrap(),
        3
    );
    let kept = client.wrap(func!(|| 8u8)).expect("wrap one more");
    assert_eq!(kept.invoke(func!(|x: &mut u8| *x)).expect("use it"), 8);
}
