//! Findings of a fourth review (flow control and handles on the calling
//! side of a connection): each test failed before its fix.
//!
//! Every wait is bounded by `PATIENCE`; the fake servers run on threads of
//! the test and end with it.

use std::sync::mpsc;

use processional::proto::{Message, Outcome, Payload, Reply, TaskId};
use processional::transport::Connection;
use processional::{ClientBuilder, Key, Remote, SlaveProcess, func};
use processional_tests::PATIENCE;

/// A fake server of this build on loopback TCP: it accepts one client,
/// proves `key`, and hands the connection and its own address to `serve`,
/// on a thread of its own. Returns the address.
fn fake_server(key: &Key, serve: impl FnOnce(Connection, String) + Send + 'static) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("tcp://{}", listener.local_addr().unwrap());
    let key = key.clone();
    let own = address.clone();
    std::thread::spawn(move || {
        let connection = processional_tests::accept_as_fake_server(&listener, key);
        serve(connection, own);
    });
    address
}

fn connect(address: &str, key: Key) -> SlaveProcess {
    ClientBuilder::new(address)
        .unwrap()
        .key(key)
        .connect()
        .expect("connect to the fake server")
}

fn value_reply(task: TaskId, bytes: Vec<u8>) -> Message {
    Message::Reply(Reply {
        task,
        outcome: Outcome::Value(Payload::Inline(bytes)),
    })
}

/// Reads frames until the peer leaves.
fn read_to_end(connection: &mut Connection) {
    while connection.recv().is_ok() {}
}

const WINDOW: u32 = 4;

/// A server that streams far more items than the window its caller
/// granted: the connection is treated as broken (the calls on it fail with
/// `Disconnected`, saying why), and at most a window of items waits for
/// the stream's consumer. Before, every item went into the stream's inbox,
/// however many: a hostile or broken server could grow the client's memory
/// without bound while another call's waiter read the connection.
#[test]
fn items_beyond_the_granted_credit_break_the_connection() {
    let key = Key::generate();
    let address = fake_server(&key, |mut connection, _| {
        // The stream (task 1, with its credit), then a second call (task 2).
        loop {
            let received = connection.recv().expect("the client's calls");
            if let Message::ServiceCall(call) = received.message
                && call.task == 2
            {
                break;
            }
        }
        for _ in 0..1000 {
            let item = Message::Item {
                task: 1,
                payload: Payload::Inline(vec![1]),
            };
            if connection.send(&item).is_err() {
                return;
            }
        }
        let _ = connection.send(&value_reply(2, vec![7]));
        let _ = connection.send(&value_reply(1, vec![0]));
        read_to_end(&mut connection);
    });
    let process = connect(&address, key);
    let mut stream = process
        .stream_service::<(), u32, u32>("review4.items", (), WINDOW)
        .expect("the stream opens");
    // Its waiter reads the connection, items included, while the stream's
    // consumer takes none.
    let other = process.call_service::<(), u32>("review4.other", ());
    let outcome = other
        .wait_timeout(PATIENCE)
        .unwrap_or_else(|_| panic!("an answer"));
    let error = outcome.expect_err("the server broke flow control");
    assert!(error.is_worker_lost(), "{error:?}");
    assert!(error.to_string().contains("granted"), "{error}");
    let mut items = 0;
    let end = loop {
        match stream.next() {
            Some(Ok(_)) => items += 1,
            Some(Err(error)) => break error,
            None => panic!("the stream ended with a value after {items} items"),
        }
    };
    assert!(items <= WINDOW as usize, "{items} items waited");
    assert!(end.is_worker_lost(), "{end:?}");
}

/// The postcard encoding of a `Remote` sent as a ticket of `server` (the
/// enum variant, then the server's address, the ticket and the object id,
/// as varints).
fn ticket_of(server: &str, ticket: u8, id: u8) -> Vec<u8> {
    let mut bytes = vec![1, u8::try_from(server.len()).unwrap()];
    bytes.extend_from_slice(server.as_bytes());
    bytes.extend([ticket, id]);
    bytes
}

/// A reply carrying a handle to an object of the very server that sent it,
/// as a ticket: the handle is usable. Before, the thread that read the
/// reply redeemed the ticket while decoding it, so it waited, as that
/// connection's reader, for an answer only it could read: the call never
/// returned, and neither did any other on that connection, even once the
/// server left. (Two servers whose replies carried tickets of each other
/// deadlocked two readers the same way.)
#[test]
fn a_ticket_in_a_reply_is_redeemed_off_the_reading_thread() {
    let key = Key::generate();
    let address = fake_server(&key, |mut connection, own| {
        while let Ok(received) = connection.recv() {
            let answer = match received.message {
                Message::ServiceCall(call) => value_reply(call.task, ticket_of(&own, 5, 3)),
                // The redemption (an id), then the method call (a u32).
                Message::Call(call) => value_reply(call.task, vec![42]),
                _ => continue,
            };
            if connection.send(&answer).is_err() {
                return;
            }
        }
    });
    let process = connect(&address, key);
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = process
            .call_service::<(), Remote<u32>>("review4.handle", ())
            .wait()
            .map(|remote| remote.invoke(func!(|value: &mut u32| *value)));
        let _ = sender.send(outcome);
    });
    let outcome = receiver
        .recv_timeout(PATIENCE)
        .expect("the reply was decoded");
    let value = outcome.expect("the handle").expect("a call on it");
    assert_eq!(value, 42);
}

/// A fresh unix socket address in a private directory of this test process.
fn unix_address(tag: &str) -> String {
    processional_tests::fresh_unix_address("review4", tag)
}

/// What a slave keeps of the handles it was given, so that it stays a
/// client of their server (a ticket is void once its sender disconnects).
static KEPT: std::sync::Mutex<Vec<Remote<Vec<u64>>>> = std::sync::Mutex::new(Vec::new());

/// Handles to objects of a server, coming back in a reply from another
/// client of it (as tickets, redeemed off the reading thread): they work,
/// and once dropped the server frees the objects.
#[test]
fn handles_returned_in_a_reply_work_and_are_released() {
    let address = unix_address("returned");
    let server = processional::server(&address).expect("spawn a server");
    let baseline = server
        .invoke(func!(processional::live_objects))
        .expect("live objects");
    let numbers: Remote<Vec<u64>> = server.wrap(func!(|| vec![1u64, 2, 3])).expect("wrap");
    let other = processional::slave().expect("a slave");
    let returned = other
        .invoke_with(
            numbers.clone(),
            func!(|numbers: Remote<Vec<u64>>| {
                KEPT.lock().unwrap().push(numbers.clone());
                vec![numbers.clone(), numbers]
            }),
        )
        .expect("the handles come back");
    drop(numbers);
    assert_eq!(returned.len(), 2);
    for handle in &returned {
        assert!(!handle.is_local());
        let sum = handle
            .invoke(func!(|v: &mut Vec<u64>| v.iter().sum::<u64>()))
            .expect("a call on a returned handle");
        assert_eq!(sum, 6);
    }
    drop(returned);
    other
        .invoke(func!(|| KEPT.lock().unwrap().clear()))
        .expect("the slave lets go");
    assert!(processional_tests::wait_until(PATIENCE, || {
        server.invoke(func!(processional::live_objects)).unwrap() == baseline
    }));
}

/// A handle to a `Vec<u64>` object of a server on its way; on arrival,
/// the sum of the object, taken while the handle is decoded (a
/// `Deserialize` that uses the handle it decodes).
enum SumOnArrival {
    Handle(Remote<Vec<u64>>),
    Sum(u64),
}

impl serde::Serialize for SumOnArrival {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            SumOnArrival::Handle(numbers) => numbers.serialize(serializer),
            SumOnArrival::Sum(_) => Err(serde::ser::Error::custom("only a handle travels")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for SumOnArrival {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let numbers = Remote::<Vec<u64>>::deserialize(deserializer)?;
        numbers
            .invoke(func!(|v: &mut Vec<u64>| v.iter().sum::<u64>()))
            .map(SumOnArrival::Sum)
            .map_err(serde::de::Error::custom)
    }
}

/// A handle used by the code that decodes the reply carrying it: its
/// ticket is redeemed there and then. Redemptions start once their reply
/// is decoded, so before, it waited for a redemption that could not start
/// until it returned.
#[test]
fn a_handle_used_while_its_reply_is_decoded_is_redeemed_there() {
    let address = unix_address("on-arrival");
    let server = processional::server(&address).expect("spawn a server");
    let numbers: Remote<Vec<u64>> = server.wrap(func!(|| vec![4u64, 5])).expect("wrap");
    let other = processional::slave().expect("a slave");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let outcome = other.invoke_with(
            numbers,
            func!(|numbers: Remote<Vec<u64>>| {
                KEPT.lock().unwrap().push(numbers.clone());
                SumOnArrival::Handle(numbers)
            }),
        );
        let _ = sender.send(outcome.map(|arrived| match arrived {
            SumOnArrival::Sum(sum) => sum,
            SumOnArrival::Handle(_) => unreachable!("decoded as a sum"),
        }));
    });
    let outcome = receiver
        .recv_timeout(PATIENCE)
        .expect("the reply was decoded");
    assert_eq!(outcome.expect("the sum"), 9);
    drop(server);
}
