//! Named services: called by name with data alone, from clients of this
//! build and, as data-only clients, of another one; refused code from
//! data-only clients; unknown names a typed remote error.

use std::process::Command;

use processional::proto::RemoteErrorKind;
use processional::{
    ClientBuilder, Error, ItemSink, ServerBuilder, func, register_service, register_stream_service,
};
use processional_tests::{PATIENCE, run_to_end, wait_until};

/// Registers the services these tests call, in the serving process.
fn install() -> Result<(), processional::ServiceExists> {
    register_service(
        "processional.test.v1.echo",
        func!(|text: String| format!("echo {text}")),
    )?;
    register_stream_service(
        "processional.test.v1.count",
        func!(|n: u32, items: ItemSink<u32>| {
            for i in 0..n {
                if items.send(i).is_err() {
                    return i;
                }
            }
            n
        }),
    )
}

/// A server of this build with the test services, on a fresh unix socket.
fn server_with_services() -> (processional::SlaveProcess, String) {
    let address = processional::Address::private_unix()
        .expect("a private socket path")
        .to_string();
    let server = ServerBuilder::new(&address)
        .expect("an address")
        .spawn()
        .expect("spawn a server");
    server
        .invoke(func!(install))
        .expect("reach the server")
        .expect("register the services");
    (server, address)
}

#[test]
fn a_service_is_called_by_name_and_streams() {
    let (server, _) = server_with_services();
    let echoed: String = server
        .call_service("processional.test.v1.echo", "hi".to_string())
        .wait()
        .unwrap();
    assert_eq!(echoed, "echo hi");

    let mut counted = server
        .stream_service::<_, u32, u32>("processional.test.v1.count", 5u32, 2)
        .unwrap();
    let items: Vec<u32> = counted.by_ref().collect::<Result<_, _>>().unwrap();
    assert_eq!(items, [0, 1, 2, 3, 4]);
    assert_eq!(counted.finish().unwrap(), 5);
}

#[test]
fn an_unknown_service_is_a_not_found_remote_error() {
    let (server, _) = server_with_services();
    match server
        .call_service::<_, String>("processional.test.v1.nobody", ())
        .wait()
    {
        Err(Error::Remote(error)) => {
            assert_eq!(error.kind, RemoteErrorKind::NotFound);
            assert!(error.message.contains("nobody"), "{error}");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    // The connection carries on.
    let echoed: String = server
        .call_service("processional.test.v1.echo", "still".to_string())
        .wait()
        .unwrap();
    assert_eq!(echoed, "echo still");
}

#[test]
fn a_data_only_client_calls_services_but_ships_no_code() {
    let (server, address) = server_with_services();
    let data = ClientBuilder::new(&address)
        .unwrap()
        .data_only(true)
        .connect()
        .expect("a data-only client of the same build is welcome");
    let echoed: String = data
        .call_service("processional.test.v1.echo", "data".to_string())
        .wait()
        .unwrap();
    assert_eq!(echoed, "echo data");
    match data.invoke(func!(|| 1u8)) {
        Err(Error::Remote(error)) => assert_eq!(error.kind, RemoteErrorKind::InvalidFunction),
        other => panic!("a data-only client's code must be refused, got {other:?}"),
    }
    // Its shutdown request ends its own connection, not the server.
    drop(data);
    let echoed: String = server
        .call_service("processional.test.v1.echo", "after".to_string())
        .wait()
        .unwrap();
    assert_eq!(echoed, "echo after");
}

/// Runs the `data_client` program (another build) and returns what it
/// printed.
fn data_client(address: &str, args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_data_client"));
    command.arg(address).args(args);
    run_to_end(&mut command).1
}

#[test]
fn a_program_of_another_build_reads_data_but_cannot_connect_as_a_client() {
    let (_server, address) = server_with_services();
    // The key file beside the socket is found by the other program too.
    assert_eq!(
        data_client(&address, &["echo", "from afar"]),
        "answer: echo from afar\n"
    );
    let refused = data_client(&address, &["as-client"]);
    assert!(
        refused.starts_with("refused: Fingerprint"),
        "a plain client of another build must be refused: {refused}"
    );
    let refused = data_client(&address, &["ship-code"]);
    assert!(
        refused == "refused: InvalidFunction\n",
        "code from a data-only client must be refused: {refused}"
    );
}

#[test]
fn a_data_only_clients_shutdown_ends_its_connection_not_the_server() {
    let address = processional::Address::private_unix()
        .expect("a private socket path")
        .to_string();
    // A persistent server in this process: a stop could only come from
    // the data-only client's Shutdown.
    let handle = ServerBuilder::new(&address)
        .unwrap()
        .persistent(true)
        .start()
        .expect("start a server");
    let _ = install();
    let data = ClientBuilder::new(&address)
        .unwrap()
        .data_only(true)
        .connect()
        .expect("a data-only client");
    // `terminate` asks the server to shut down (a `Shutdown` frame).
    let _ = data.terminate(std::time::Duration::from_secs(5));
    drop(data);
    // The server counts the client out just before it would stop.
    assert!(
        wait_until(PATIENCE, || handle.clients() == 0),
        "the data-only client was never counted out"
    );
    let other = ClientBuilder::new(&address)
        .unwrap()
        .connect()
        .expect("the server must still accept clients");
    let echoed: String = other
        .call_service("processional.test.v1.echo", "still here".to_string())
        .wait()
        .unwrap();
    assert_eq!(echoed, "echo still here");
    handle.stop();
}
