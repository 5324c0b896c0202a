//! Each typed error is produced by the failure that names it: connecting to
//! nothing, an address that does not parse, a wrong key, a handshake nobody
//! answers, another build, a value that refuses to travel, a remote panic, a
//! process that exits, a connection that breaks; and a failure nobody waits
//! for reaches standard error when no logger listens.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use processional::proto::{Fingerprint, Hello, PROTOCOL_VERSION, Role};
use processional::transport::{Address, AddressError, Connection, Handshake, Listener, Side};
use processional::{
    AuthFailure, ClientBuilder, CodecDirection, CodecError, Error, ExitReason, Key, Remote,
    RemoteErrorKind, ServerBuilder, SharedMutBuf, client, func, server, slave,
};
use processional_tests::{KillOnDrop, PATIENCE, is_helper, wait_until};

/// A fresh unix socket address in a private directory of this test process.
fn unix_address(tag: &str) -> String {
    processional_tests::fresh_unix_address("errors", tag)
}

/// A server on `address` in this process, with `key`, until stopped.
fn serve_here(address: &str, key: &Key) -> processional::ServerHandle {
    ServerBuilder::new(address)
        .unwrap()
        .key(key.clone())
        .persistent(true)
        .start()
        .expect("start a server here")
}

#[test]
fn connecting_to_nothing_fails_at_once_naming_the_address() {
    let address = unix_address("nobody");
    let error = client(&address).expect_err("nobody listens");
    let Error::Connect {
        address: named,
        source,
    } = &error
    else {
        panic!("expected a connect error, got {error:?}");
    };
    assert_eq!(named, &address);
    assert!(error.to_string().contains(&address), "{error}");
    let transport = source
        .downcast_ref::<processional::transport::Error>()
        .expect("the transport's error is the source");
    assert!(
        matches!(transport, processional::transport::Error::Io(io)
            if io.kind() == std::io::ErrorKind::NotFound),
        "{transport:?}"
    );
}

#[test]
fn retry_for_waits_for_a_server_that_starts_later() {
    let address = unix_address("later");
    let key = Key::generate();
    let connecting = {
        let (address, key) = (address.clone(), key.clone());
        std::thread::spawn(move || {
            ClientBuilder::new(&address)
                .unwrap()
                .key(key)
                .retry_for(PATIENCE)
                .connect()
        })
    };
    // Not a condition of the test (it passes however the two interleave),
    // only what makes the client retry at all, most of the time.
    std::thread::sleep(Duration::from_millis(100));
    let handle = serve_here(&address, &key);
    let process = connecting
        .join()
        .unwrap()
        .expect("the client waited for the server");
    assert_eq!(process.invoke(func!(|| 6u8)).unwrap(), 6);
    drop(process);
    handle.stop();
}

#[test]
fn a_string_that_is_no_address_is_an_address_error() {
    for attempt in [
        client("nowhere").map(drop),
        ServerBuilder::new("tcp://no-port").map(drop),
    ] {
        let error = attempt.expect_err("not an address");
        let Error::Address { address, source } = &error else {
            panic!("expected an address error, got {error:?}");
        };
        assert!(["nowhere", "tcp://no-port"].contains(&address.as_str()));
        assert_eq!(
            error.to_string().matches(&format!("{address:?}")).count(),
            1,
            "the address once: {error}"
        );
        assert!(
            source.downcast_ref::<AddressError>().is_some(),
            "{source:?}"
        );
    }
}

#[test]
fn a_wrong_key_is_an_auth_error_naming_the_server() {
    let address = unix_address("wrong-key");
    let handle = serve_here(&address, &Key::generate());
    let error = ClientBuilder::new(&address)
        .unwrap()
        .key(Key::generate())
        .connect()
        .expect_err("the keys differ");
    let Error::Auth { peer, failure } = &error else {
        panic!("expected an auth error, got {error:?}");
    };
    assert_eq!(peer, &address);
    assert!(
        matches!(
            failure,
            AuthFailure::PeerLacksKey | AuthFailure::KeyRefused { .. }
        ),
        "{failure:?}"
    );
    // Who refused whom, from this side.
    let message = error.to_string();
    assert!(
        message.contains(&format!("this process refused {address}"))
            || message.contains(&format!("{address} refused this process's key")),
        "{message}"
    );
    handle.stop();
}

#[test]
fn a_handshake_nobody_answers_times_out() {
    let address = unix_address("silent");
    // Connections complete in the backlog; nobody ever says a word.
    let _silent = UnixListener::bind(address.trim_start_matches("unix:")).unwrap();
    let timeout = Duration::from_millis(300);
    let error = ClientBuilder::new(&address)
        .unwrap()
        .key(Key::generate())
        .timeout(timeout)
        .connect()
        .expect_err("nobody answers");
    assert!(error.is_timeout(), "{error:?}");
    let Error::TimedOut { operation, after } = &error else {
        unreachable!()
    };
    assert!(operation.contains("handshake"), "{operation}");
    assert!(operation.contains(&address), "{operation}");
    assert_eq!(*after, timeout);
}

#[test]
fn another_build_is_a_fingerprint_error() {
    let address = unix_address("impostor");
    let key = Key::generate();
    let listener = Listener::bind(&address.parse::<Address>().unwrap()).unwrap();
    let impostor = Fingerprint([7; 32]);
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        fingerprint: impostor,
        role: Role::Server,
        pid: std::process::id(),
        host: "here".into(),
        program: "another-build".into(),
    };
    let serving = {
        let key = key.clone();
        std::thread::spawn(move || {
            let mut connection: Connection = listener.accept().expect("the client connects");
            // Fails: the client runs another build.
            let _ = connection.handshake(Side::Acceptor, &Handshake::new(key, hello));
        })
    };
    let error = ClientBuilder::new(&address)
        .unwrap()
        .key(key)
        .connect()
        .expect_err("another build");
    let Error::Fingerprint {
        peer, ours, theirs, ..
    } = &error
    else {
        panic!("expected a fingerprint error, got {error:?}");
    };
    assert_eq!(peer, &address);
    assert_eq!(*ours, processional::fingerprint());
    assert_eq!(*theirs, impostor);
    serving.join().unwrap();
}

#[test]
fn a_remote_passed_to_another_slave_says_why_it_cannot_travel() {
    let holder = slave().expect("spawn");
    let other = slave().expect("spawn");
    let remote: Remote<u32> = holder.wrap(func!(|| 5u32)).unwrap();
    let error = other
        .invoke_with(remote, func!(|r: Remote<u32>| r.id()))
        .expect_err("the handle belongs to the other slave");
    let Error::Codec {
        type_name,
        direction,
        source,
    } = &error
    else {
        panic!("expected a codec error, got {error:?}");
    };
    assert!(type_name.contains("Remote<u32>"), "{type_name}");
    assert_eq!(*direction, CodecDirection::Encode);
    assert!(
        matches!(source, CodecError::Custom(message)
            if message.contains("can only be passed to that slave")),
        "{source:?}"
    );
    assert!(
        error
            .to_string()
            .contains("can only be passed to that slave")
    );
    // Both slaves keep working.
    assert_eq!(other.invoke(func!(|| 1u8)).unwrap(), 1);
    assert_eq!(holder.invoke(func!(|| 2u8)).unwrap(), 2);
}

#[test]
fn shared_mutable_memory_over_tcp_says_why_it_cannot_travel() {
    let key = Key::generate();
    let handle = serve_here("tcp://127.0.0.1:0", &key);
    let remote = ClientBuilder::new(&handle.address().to_string())
        .unwrap()
        .key(key)
        .connect()
        .unwrap();
    let error = remote
        .invoke_with(
            SharedMutBuf::new(8).unwrap(),
            func!(|b: SharedMutBuf| b.len()),
        )
        .expect_err("no descriptors over TCP");
    assert!(
        matches!(&error, Error::Codec {
            source: CodecError::Custom(message), ..
        } if message.contains("only travel by file descriptor")),
        "{error:?}"
    );
    drop(remote);
    handle.stop();
}

#[test]
fn a_remote_panic_is_a_remote_error_with_its_backtrace_in_lines() {
    let process = slave().expect("spawn");
    let error = process
        .invoke(func!(|| -> u8 { panic!("remote-boom") }))
        .expect_err("it panics");
    assert!(error.is_panic() && !error.is_worker_lost(), "{error:?}");
    let Error::Remote(remote) = &error else {
        panic!("expected a remote error, got {error:?}");
    };
    assert_eq!(remote.kind, RemoteErrorKind::Panicked);
    assert_eq!(remote.message, "remote-boom");
    let backtrace = remote.backtrace.as_deref().expect("slaves send backtraces");
    let first_frame = backtrace.lines().next().expect("a frame");
    // What `unwrap()` prints reads like a local panic: what and where, the
    // message, then the backtrace as lines if RUST_BACKTRACE asks for it.
    let debug = format!("{error:?}");
    let location = remote.location.as_deref().expect("a location");
    assert!(
        debug.starts_with(&format!(
            "Remote(the remote process panicked at {location}:\nremote-boom\n"
        )),
        "{debug}"
    );
    let asked = std::env::var_os("RUST_BACKTRACE").is_some_and(|value| value != "0");
    assert_eq!(
        debug.contains(&format!("\n{first_frame}\n")),
        asked,
        "a backtrace line on a line of its own, if asked for: {debug}"
    );
    assert_eq!(
        debug.contains("note: run with `RUST_BACKTRACE=1`"),
        !asked,
        "{debug}"
    );
    assert!(!debug.contains("\\n"), "no escaped newlines: {debug}");
    // The fields, backtrace as lines, in the alternate form.
    let fields = format!("{error:#?}");
    assert!(fields.contains(&format!("{first_frame}\n")), "{fields}");
    assert!(!fields.contains("\\n"), "no escaped newlines: {fields}");
}

#[test]
fn a_slave_that_exits_under_a_call_has_exited() {
    let process = slave().expect("spawn");
    let error = process
        .invoke(func!(|| -> u8 { std::process::exit(3) }))
        .expect_err("the slave is gone");
    assert!(
        matches!(error, Error::Exited(ExitReason::Code(3))),
        "{error:?}"
    );
    assert!(error.is_worker_lost());
}

#[test]
fn a_client_whose_server_leaves_is_disconnected() {
    let address = unix_address("leaves");
    let spawned = server(&address).expect("spawn a server");
    let process = client(&address).expect("connect");
    let error = process
        .invoke(func!(|| -> u8 { std::process::exit(0) }))
        .expect_err("the server is gone");
    let Error::Disconnected { source } = &error else {
        panic!("expected a disconnection, got {error:?}");
    };
    assert!(error.is_worker_lost());
    let source = source.as_ref().expect("how it broke");
    assert!(
        source
            .downcast_ref::<processional::transport::Error>()
            .is_some(),
        "{source:?}"
    );
    drop(spawned);
}

/// The failure the helper leaves behind, unwaited.
const UNWAITED_MARKER: &str = "unwaited-failure-5c1e";

#[test]
fn a_failure_nobody_waits_for_reaches_stderr_without_a_logger() {
    let name = "a_failure_nobody_waits_for_reaches_stderr_without_a_logger";
    if is_helper() {
        // No logger is installed in this process.
        let task = processional::thread(|| -> u8 { panic!("{UNWAITED_MARKER}") });
        assert!(wait_until(PATIENCE, || task.is_finished()));
        drop(task);
        println!("helper-done");
        return;
    }
    let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("PROCESSIONAL_TEST_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut helper = KillOnDrop(command.spawn().expect("spawn the helper"));
    let mut stderr = helper.0.stderr.take().unwrap();
    let stdout = helper.0.stdout.take().unwrap();
    // Read to the end: a helper whose stdout closed early would fail.
    let done = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .filter(|line| line.contains("helper-done"))
        .count();
    let mut printed = String::new();
    stderr.read_to_string(&mut printed).unwrap();
    let status = helper.0.wait().unwrap();
    assert!(status.success() && done == 1, "{status}: {printed}");
    let reports: Vec<&str> = printed
        .lines()
        .filter(|line| line.contains(UNWAITED_MARKER))
        .collect();
    assert_eq!(reports.len(), 1, "reported once: {printed}");
    assert!(
        reports[0].starts_with("processional: a task failed and nobody waited for it"),
        "{}",
        reports[0]
    );
}
