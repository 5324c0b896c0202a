//! Findings of a fourth review (flow control and handles on the calling
//! side of a connection): each test failed before its fix.
//!
//! Every wait is bounded by `PATIENCE`; the fake servers run on threads of
//! the test and end with it.

use processional::proto::{
    Hello, Message, Outcome, PROTOCOL_VERSION, Payload, Reply, Role, TaskId,
};
use processional::transport::{Connection, Handshake, Side};
use processional::{ClientBuilder, Key, SlaveProcess};
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
        let (stream, _) = listener.accept().expect("the client connects");
        let mut connection = Connection::from_tcp(stream).unwrap();
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            fingerprint: processional::fingerprint(),
            role: Role::Server,
            pid: std::process::id(),
            host: "here".into(),
            program: "fake-server".into(),
        };
        connection
            .handshake(Side::Acceptor, &Handshake::new(key, hello))
            .expect("the handshake");
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
