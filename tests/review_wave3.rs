//! Findings of a third review (the serving and calling sides of a
//! connection, the transport, shared memory): each test failed before its
//! fix.
//!
//! Every wait is bounded by `PATIENCE`; fake peers run on threads of the
//! test and end with it, spawned processes are killed when their handles
//! drop.

use std::sync::mpsc;
use std::time::Duration;

use std::os::fd::AsFd;

use processional::proto::{Message, Outcome, Payload, RemoteError, RemoteErrorKind, Reply};
use processional::transport::Connection;
use processional::{ClientBuilder, Error, Key, func};
use processional_tests::{PATIENCE, raw_data_client};

/// A fake server of this build on loopback TCP: it accepts one client,
/// proves `key`, sends `frames` and never reads. Returns its address, and
/// the accepted connection (kept open, unread, until the receiver drops)
/// through the channel.
fn fake_server(key: &Key, frames: Vec<Message>) -> (String, mpsc::Receiver<Connection>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    let key = key.clone();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut connection = processional_tests::accept_as_fake_server(&listener, key);
        for frame in &frames {
            connection.send(frame).expect("a frame of the fake server");
        }
        let _ = sender.send(connection);
    });
    (address, receiver)
}

/// Connects to `address` with `key`, then calls with 32 MiB of arguments
/// (inline over TCP: one frame larger than both socket buffers, so its
/// write must wait, draining what arrives meanwhile) on a thread of its
/// own; what the call came back with, if it did within `PATIENCE`.
fn a_large_call(address: &str, key: Key) -> Option<Result<usize, Error>> {
    let process = ClientBuilder::new(address)
        .unwrap()
        .key(key)
        .connect()
        .expect("connect to the fake server");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = process.invoke_with(vec![7u8; 32 << 20], func!(|v: Vec<u8>| v.len()));
        let _ = sender.send(outcome);
    });
    receiver.recv_timeout(PATIENCE).ok()
}

fn peer_error() -> Message {
    Message::Error(RemoteError {
        kind: RemoteErrorKind::Other,
        message: "you broke the protocol".into(),
        location: None,
        backtrace: None,
    })
}

/// A peer that reports an error (`Message::Error`, what a server sends a
/// client that broke the protocol) while a call of ours waits for room in
/// the socket: the session dies, the call fails with `Disconnected`.
/// Before, the writing thread deadlocked: draining inside its write, it
/// read the error and, to shut the socket down, locked the writer it
/// held; the call never returned and every later one hung behind it.
#[test]
fn a_peer_error_read_while_a_write_waits_fails_the_call() {
    let key = Key::generate();
    let (address, _connection) = fake_server(&key, vec![peer_error()]);
    let outcome = a_large_call(&address, key).expect("the call came back");
    let error = outcome.expect_err("the peer broke off");
    assert!(error.is_worker_lost(), "{error:?}");
}

/// A peer that pings while a call of ours waits for room in the socket,
/// then reports an error: the call fails with `Disconnected`. Before, the
/// writing thread deadlocked at the ping: draining inside its write, it
/// locked the writer it held to answer with a pong.
#[test]
fn a_ping_read_while_a_write_waits_does_not_deadlock_the_writer() {
    let key = Key::generate();
    let (address, _connection) = fake_server(&key, vec![Message::Ping(7), peer_error()]);
    let outcome = a_large_call(&address, key).expect("the call came back");
    let error = outcome.expect_err("the peer broke off");
    assert!(error.is_worker_lost(), "{error:?}");
}

/// A fresh unix socket address in a private directory of this test process.
fn unix_address(tag: &str) -> String {
    processional_tests::fresh_unix_address("review3", tag)
}

/// Whether this kernel refuses a single allocation larger than its memory
/// (heuristic or strict overcommit), so that a process asked for 1 TiB
/// gets an error instead of pages it then touches.
fn allocations_past_memory_fail() -> bool {
    std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|mode| mode.trim() != "1")
}

/// A peer's segment payload announcing far more bytes than this process
/// can hold (1 TiB, a sparse memfd sealed at that size): the call fails with
/// a codec error and the server goes on serving. Before, the server
/// allocated the announced length for its copy (`Vec::with_capacity`), the
/// allocation failed and the process aborted, taking every other client's
/// calls and objects with it; any client holding the key, even a data-only
/// one of another build, could do it.
#[test]
fn a_segment_larger_than_memory_fails_its_call_alone() {
    if !allocations_past_memory_fail() {
        eprintln!("skipped: this kernel overcommits every allocation");
        return;
    }
    let address = unix_address("huge-segment");
    let process = processional::server(&address).expect("spawn a server");
    process
        .invoke(func!(|| {
            processional::register_service("review3.text_len", func!(|text: String| text.len()))
        }))
        .expect("the call")
        .expect("the service is registered");
    let huge = 1u64 << 40;
    let mut segment = processional::shm::Segment::create(huge as usize).expect("a sparse memfd");
    segment.seal_size().unwrap();
    let mut connection = raw_data_client(&address);
    let call = Message::ServiceCall(processional::proto::ServiceCall {
        task: 1,
        service: "review3.text_len".into(),
        args: Payload::Segment { fd: 0, len: huge },
    });
    connection
        .send_with_fds(&call, &[segment.as_fd()])
        .expect("the call is sent");
    let reply = connection
        .recv_timeout(PATIENCE)
        .expect("the server answers instead of dying")
        .expect("an answer within PATIENCE");
    let Message::Reply(Reply {
        task: 1,
        outcome: Outcome::Error(error),
    }) = reply.message
    else {
        panic!("expected an error reply, got {:?}", reply.message);
    };
    assert_eq!(error.kind, RemoteErrorKind::Codec, "{error:?}");
    assert_eq!(process.invoke(func!(|| 5u8)).expect("still serving"), 5);
}

/// A handle moved into a `thread` call and so dropped right after it was
/// sent: the call still finds its object. Releases travel in the FIFO of
/// queued calls so that a handle dropped after a call that uses it never
/// frees the object under that call; a `thread` call decodes its arguments
/// on a thread of its own, though, and before, the release that followed
/// it could be run first, so the call failed with `UnknownObject` (always
/// when the call waited for its turn behind the bound on `thread` calls,
/// as here; sometimes when its thread was merely slow to start).
#[test]
fn a_handle_moved_into_a_thread_call_outlives_its_release() {
    use processional::{Remote, SlaveProcessBuilder};
    use processional_tests::gate;
    let process = SlaveProcessBuilder::new()
        .env("PROCESSIONAL_THREAD_CALLS", "1")
        .spawn()
        .expect("spawn");
    // The one `thread` slot is taken until the gate opens.
    let blocker = process.thread(func!(|| gate::start_then_wait(gate::LONGER_THAN_PATIENCE)));
    gate::wait_for_thread_start(&process);
    let remote: Remote<u32> = process.wrap(func!(|| 5u32)).unwrap();
    let task = process.thread_with(
        remote,
        func!(|r: Remote<u32>| r.invoke(func!(|x: &mut u32| *x)).unwrap()),
    );
    // Queued after the release: once it answers, the release has run.
    process.invoke(func!(processional::live_objects)).unwrap();
    process.invoke(func!(gate::open)).unwrap();
    assert!(blocker.wait().unwrap());
    let value = task
        .wait_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("the call answers"));
    assert_eq!(value.expect("the object was still there"), 5);
    // The held release ran once the call had its object: nothing leaks.
    assert!(
        processional_tests::wait_until(PATIENCE, || process
            .invoke(func!(processional::live_objects))
            .unwrap()
            == 0),
        "the object was freed after the call"
    );
}

/// A value whose `Deserialize` panics (a user's bug) on 13.
#[derive(Debug, serde::Serialize)]
struct Touchy(u32);

impl<'de> serde::Deserialize<'de> for Touchy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u32::deserialize(deserializer)?;
        assert_ne!(value, 13, "Touchy refuses 13");
        Ok(Touchy(value))
    }
}

/// The reply of one task whose value panics as it is decoded, read by a
/// thread that waits for another task: that task still gets its value,
/// the panicking one fails with `Panicked`. Before, the value was decoded
/// on whichever thread read the reply, outside any guard, so the panic
/// unwound out of the other task's `wait` (or killed the pump thread,
/// after which polled tasks of the session were never read again).
#[test]
fn a_value_that_panics_as_it_is_decoded_fails_only_its_own_task() {
    let process = processional::slave().expect("spawn");
    let touchy = process.schedule(func!(|| Touchy(13)));
    let plain = process.schedule(func!(|| 1u8));
    // Waiting for `plain` reads `touchy`'s reply first (FIFO).
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        plain
            .wait_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("the plain task ends"))
    }));
    let plain = waited.expect("no panic of another task's value reaches this thread");
    assert_eq!(plain.expect("its value"), 1);
    let error = touchy
        .wait_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("the touchy task ends"))
        .expect_err("its value panicked");
    assert!(error.is_panic(), "{error:?}");
}

/// An object whose drop panics (a user's bug).
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("PanicsOnDrop panics as it is dropped");
    }
}

/// Releasing the last handle to an object whose drop panics: the slave
/// goes on serving (the panic is caught and logged where the object is
/// freed). Before, the panic unwound the connection's executor, which ran
/// the release, and the slave died with every call and object of its
/// master.
#[test]
fn an_object_whose_drop_panics_does_not_kill_its_server() {
    let process = processional::slave().expect("spawn");
    let kept: processional::Remote<u32> = process.wrap(func!(|| 3u32)).unwrap();
    let doomed: processional::Remote<PanicsOnDrop> = process
        .wrap(func!(|| PanicsOnDrop))
        .expect("wrap the object");
    drop(doomed);
    assert_eq!(
        process
            .invoke(func!(|| 7u8))
            .expect("the slave still serves"),
        7
    );
    assert_eq!(kept.invoke(func!(|x: &mut u32| *x)).unwrap(), 3);
}

/// In a slave: connects to the server at `address` with `key` (hex),
/// wraps a [`PanicsOnDrop`] there and starts a call on it that waits for
/// the gate; keeps all of it (the slave is killed with it).
fn start_a_call_on_a_doomed_object((address, key): (String, String)) {
    use processional_tests::gate;
    let key = Key::from_hex(&key).unwrap();
    let client = ClientBuilder::new(&address)
        .unwrap()
        .key(key)
        .connect()
        .expect("a client");
    let doomed: processional::Remote<PanicsOnDrop> = client
        .wrap(func!(|| PanicsOnDrop))
        .expect("wrap the object");
    let running = doomed.schedule(func!(|_: &mut PanicsOnDrop| {
        gate::start_then_wait(gate::LONGER_THAN_PATIENCE)
    }));
    std::mem::forget((client, doomed, running));
}

/// A client killed while a call on its object runs, the object's drop
/// panicking when that call lets the last reference go: the server counts
/// the client gone and serves on. Before, the call's entry dropped the last
/// reference outside any guard: the panic unwound the client's thread past
/// its accounting, so the server counted the dead client for good (a
/// server that is not persistent would never stop).
#[test]
fn an_object_freed_by_its_running_call_leaves_the_server_sound() {
    use processional_tests::gate;
    let address = unix_address("drop-panics-under-a-call");
    let key = Key::generate();
    let server = processional::ServerBuilder::new(&address)
        .unwrap()
        .key(key.clone())
        .persistent(true)
        .start()
        .expect("a server in this process");
    let client = processional::slave().expect("spawn the client");
    client
        .invoke_with(
            (address.clone(), key.to_hex()),
            func!(start_a_call_on_a_doomed_object),
        )
        .expect("the call on the object is sent");
    // The call runs here, in the server of this process.
    assert!(
        processional_tests::wait_until(PATIENCE, gate::has_started),
        "the call on the object started"
    );
    processional_tests::kill_hard(client.pid());
    // Its references are returned at its end, while the call runs.
    assert!(
        processional_tests::wait_until(PATIENCE, || server.live_objects() == 0),
        "the killed client's connection ended"
    );
    gate::open();
    assert!(
        processional_tests::wait_until(PATIENCE, || server.clients() == 0),
        "the client that died is counted gone"
    );
    let other = ClientBuilder::new(&address)
        .unwrap()
        .key(key)
        .connect()
        .expect("another client");
    assert_eq!(other.invoke(func!(|| 7u8)).expect("still serving"), 7);
    server.stop();
}

/// A value that panics as it is encoded (a user's bug).
#[derive(Debug, serde::Deserialize)]
struct Unsendable;

impl serde::Serialize for Unsendable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("Unsendable panics as it is encoded");
    }
}

/// Arguments whose `Deserialize` panics, and a value whose `Serialize`
/// panics, as the slave handles them: each call fails with `Panicked`, the
/// slave goes on serving. Before, both ran on the slave's executor outside
/// the guard that catches the function's own panics, and the slave died
/// with every call and object of its master.
#[test]
fn arguments_and_values_that_panic_in_serde_fail_only_their_call() {
    let process = processional::slave().expect("spawn");
    let error = process
        .invoke_with(Touchy(13), func!(|touchy: Touchy| touchy.0))
        .expect_err("its arguments panicked");
    assert!(error.is_panic(), "{error:?}");
    assert_eq!(process.invoke(func!(|| 7u8)).expect("still serving"), 7);
    let error = process
        .invoke(func!(|| Unsendable))
        .expect_err("its value panicked");
    assert!(error.is_panic(), "{error:?}");
    assert_eq!(process.invoke(func!(|| 8u8)).expect("still serving"), 8);
}

/// The voluntary context switches of this process's threads named `name`.
fn switches_of(name: &str) -> u64 {
    processional_tests::voluntary_switches(std::process::id())
        .values()
        .filter(|(thread, _)| thread == name)
        .map(|(_, switches)| switches)
        .sum()
}

/// The pump thread's name as the kernel keeps it (15 bytes).
const PUMP: &str = "processional-pu";

/// In a helper process of its own (it counts its threads' wake-ups): a
/// detached call that runs long gets the session's pump thread, which
/// blocks until the reply comes instead of polling.
#[test]
fn helper_pumps_a_long_detached_call() {
    use processional_tests::gate;
    if !processional_tests::is_helper() {
        return;
    }
    let process = processional::slave().expect("spawn");
    process
        .schedule(func!(|| gate::start_then_wait(gate::LONGER_THAN_PATIENCE)))
        .detach();
    gate::wait_for_start(&process);
    assert!(
        processional_tests::wait_until(PATIENCE, || switches_of(PUMP) > 0),
        "the pump thread runs"
    );
    let before = switches_of(PUMP);
    // Not a wait for something to happen: the measurement window itself.
    std::thread::sleep(Duration::from_secs(3));
    let woke = switches_of(PUMP) - before;
    // A 50 ms poll makes 60; a blocked thread none.
    assert!(woke <= 5, "the pump woke up {woke} times in 3 s");
    // A `thread` call: a queued one would wait behind the long call.
    process
        .thread(func!(gate::open))
        .wait_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("the gate opens"))
        .unwrap();
}

/// A master whose long call nobody blocks on (detached, or a polled
/// future) does not wake up while it runs. Before, the pump thread read with
/// a 50 ms deadline and polled 20 times a second for the whole call.
#[test]
fn a_pump_waiting_for_a_long_call_does_not_poll() {
    if processional_tests::is_helper() {
        return;
    }
    processional_tests::run_helper("helper_pumps_a_long_detached_call", &[]);
}

/// In a slave: the server it runs (started by [`serve_in_this_slave`]).
static SERVER: std::sync::OnceLock<processional::ServerHandle> = std::sync::OnceLock::new();

/// A gate of its own, never opened by the tests (they end first).
static NEVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// In a slave: serves `address` with `key` (hex) from this process.
fn serve_in_this_slave((address, key): (String, String)) {
    let server = processional::ServerBuilder::new(&address)
        .unwrap()
        .key(Key::from_hex(&key).unwrap())
        .persistent(true)
        .start()
        .expect("a server in the slave");
    let _ = SERVER.set(server);
}

/// In a slave: how many clients its server serves.
fn clients_of_this_slave() -> usize {
    SERVER
        .get()
        .map_or(usize::MAX, processional::ServerHandle::clients)
}

/// In a slave: connects to the server at `address` with `key` (hex) and
/// makes two `thread` calls there: one waits for the gate, the other for
/// good; returns once the server has read both.
fn take_every_thread_slot((address, key): (String, String)) {
    use processional_tests::gate;
    let client = ClientBuilder::new(&address)
        .unwrap()
        .key(Key::from_hex(&key).unwrap())
        .connect()
        .expect("a client");
    let first = client.thread(func!(|| gate::start_then_wait(gate::LONGER_THAN_PATIENCE)));
    let second = client.thread(func!(|| processional_tests::wait_until(
        gate::LONGER_THAN_PATIENCE,
        || NEVER.load(std::sync::atomic::Ordering::SeqCst)
    )));
    // Queued behind them on the same connection: read after both.
    client.invoke(func!(|| ())).unwrap();
    std::mem::forget((client, first, second));
}

/// A client killed with `thread` calls still waiting for their turn behind
/// the bound (`MAX_THREAD_CALLS`, here 1): those calls are dropped, as its
/// queued calls are, and another client's `thread` call runs as soon as
/// the running one ends. Before, they ran for nobody, in turn, however
/// long, and every other client's `thread` calls waited behind them.
#[test]
fn thread_calls_of_a_client_that_left_do_not_hold_the_bound() {
    use processional::SlaveProcessBuilder;
    use processional_tests::gate;
    let address = unix_address("thread-calls-of-the-dead");
    let key = Key::generate();
    let host = SlaveProcessBuilder::new()
        .env("PROCESSIONAL_THREAD_CALLS", "1")
        .spawn()
        .expect("spawn the host");
    host.invoke_with((address.clone(), key.to_hex()), func!(serve_in_this_slave))
        .unwrap();
    let leaving = processional::slave().expect("spawn the leaving client");
    leaving
        .invoke_with(
            (address.clone(), key.to_hex()),
            func!(take_every_thread_slot),
        )
        .unwrap();
    processional_tests::kill_hard(leaving.pid());
    assert!(
        processional_tests::wait_until(PATIENCE, || host
            .invoke(func!(clients_of_this_slave))
            .unwrap()
            == 0),
        "the host saw the client go"
    );
    let other = ClientBuilder::new(&address)
        .unwrap()
        .key(key)
        .connect()
        .expect("another client");
    let call = other.thread(func!(|| 1u8));
    host.invoke(func!(gate::open)).unwrap();
    let value = call
        .wait_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("the other client's thread call ran"));
    assert_eq!(value.unwrap(), 1);
}
