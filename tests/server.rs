//! Acceptance tests of servers and clients: sharing one process between
//! many clients, shared objects, security, bad input and load.

use processional::func;
use std::io::{Read, Write};

use processional::{ClientBuilder, Error, ExitReason, ServerBuilder, Termination, client, server};
use processional_tests::{PATIENCE, kill_hard, process_exists, wait_until};

/// A fresh unix socket address in a private directory.
fn unix_address(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("processional-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    format!("unix:{}/{tag}.sock", dir.display())
}

fn publish_heavy_resource() {
    processional::export("heavy_resource", (0..1_000_000u64).collect::<Vec<_>>()).unwrap();
}

#[test]
fn two_clients_share_a_resource() {
    let address = unix_address("share");
    let process = server(&address).expect("spawn the server");
    process
        .invoke(func!(publish_heavy_resource))
        .expect("publish");
    let sum = process
        .lookup::<Vec<u64>>("heavy_resource")
        .unwrap()
        .schedule(func!(|v: &mut Vec<u64>| v.iter().sum::<u64>()));
    assert_eq!(sum.wait().unwrap(), 499_999_500_000);

    let second = client(&address).expect("second client");
    assert_eq!(second.pid(), process.pid());
    let resource: processional::Remote<Vec<u64>> = second.lookup("heavy_resource").unwrap();
    assert_eq!(
        resource
            .invoke(func!(|v: &mut Vec<u64>| v.iter().product::<u64>()))
            .unwrap(),
        0
    );
}

#[test]
fn a_hundred_more_clients_connect_then_drop() {
    let address = unix_address("hundred");
    let process = server(&address).expect("spawn");
    let clients: Vec<_> = (0..100)
        .map(|_| client(&address).expect("connect"))
        .collect();
    for (i, c) in clients.iter().enumerate().step_by(10) {
        assert_eq!(
            c.invoke_with(i as u64, func!(|x| x + 1)).unwrap(),
            i as u64 + 1
        );
    }
    drop(clients);
    assert_eq!(process.invoke(func!(|| 5u8)).unwrap(), 5);
}

#[test]
fn each_clients_results_come_back_in_order() {
    let address = unix_address("order");
    let process = server(&address).expect("spawn");
    process
        .invoke(func!(|| processional::export(
            "log",
            Vec::<(u32, u32)>::new()
        )
        .unwrap()))
        .unwrap();
    let other = client(&address).unwrap();
    let threads: Vec<_> = [process.clone(), other]
        .into_iter()
        .enumerate()
        .map(|(who, c)| {
            std::thread::spawn(move || {
                let log = c.lookup::<Vec<(u32, u32)>>("log").unwrap();
                let tasks: Vec<_> = (0..100u32)
                    .map(|i| {
                        log.schedule_with(
                            (who as u32, i),
                            func!(|log: &mut Vec<(u32, u32)>, entry: (u32, u32)| {
                                log.push(entry);
                                entry.1
                            }),
                        )
                    })
                    .collect();
                let results: Vec<u32> = tasks
                    .into_iter()
                    .map(|t| t.wait_timeout(PATIENCE).ok().unwrap().unwrap())
                    .collect();
                assert_eq!(results, (0..100).collect::<Vec<_>>());
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let log = process
        .lookup::<Vec<(u32, u32)>>("log")
        .unwrap()
        .fetch()
        .unwrap();
    for who in 0..2 {
        let mine: Vec<u32> = log.iter().filter(|e| e.0 == who).map(|e| e.1).collect();
        assert_eq!(mine, (0..100).collect::<Vec<_>>());
    }
}

/// Kills a process, if it still runs, when dropped (teardown for a server
/// that outlives its handle).
struct KillPidOnDrop(u32);

impl Drop for KillPidOnDrop {
    fn drop(&mut self) {
        if process_exists(self.0) {
            kill_hard(self.0);
        }
    }
}

/// How many threads of server `pid` serve a connection, or `None` if the
/// server is gone. Each connection is served on a thread named
/// `processional-client` (`comm` keeps 15 bytes of it), which ends only
/// after the server has decided whether that client's departure stops it.
fn client_threads(pid: u32) -> Option<usize> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let serving = tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end() == "processional-cl")
        })
        .count();
    process_exists(pid).then_some(serving)
}

#[test]
fn a_persistent_server_survives_its_clients_and_stops_on_request() {
    let address = unix_address("persistent");
    // Detached, so that dropping the spawning handle only disconnects it
    // (instead of asking the server to shut down): every client can leave.
    let builder = ServerBuilder::new(&address)
        .unwrap()
        .persistent(true)
        .detach(true);
    let process = builder.spawn().expect("spawn");
    let pid = process.pid();
    let _teardown = KillPidOnDrop(pid);
    let c = client(&address).unwrap();
    // Both connections are being served.
    assert_eq!(process.invoke(func!(|| 1u8)).unwrap(), 1);
    assert_eq!(c.invoke(func!(|| 2u8)).unwrap(), 2);
    drop(c);
    drop(process);
    // Once no thread serves a connection, the server has seen every client
    // leave: a server that stops when its last client leaves has stopped.
    assert!(
        wait_until(PATIENCE, || client_threads(pid).is_none_or(|n| n == 0)),
        "server {pid} still serves a departed client"
    );
    assert!(
        process_exists(pid),
        "the persistent server stopped when its last client left"
    );
    let again = client(&address).unwrap();
    assert_eq!(again.invoke(func!(|| 1u8)).unwrap(), 1);
    assert_eq!(
        again.terminate(PATIENCE),
        Termination::Graceful(ExitReason::Unknown),
        "the server acknowledges a request to stop"
    );
    assert!(
        wait_until(PATIENCE, || !process_exists(pid)),
        "server {pid} did not stop"
    );
}

#[test]
fn a_dropped_non_persistent_server_exits_and_removes_its_socket() {
    let address = unix_address("transient");
    let process = server(&address).expect("spawn");
    let pid = process.pid();
    let path = address.trim_start_matches("unix:").to_owned();
    assert!(std::path::Path::new(&path).exists());
    drop(process);
    assert!(
        wait_until(PATIENCE, || !process_exists(pid)),
        "server {pid} still runs"
    );
    assert!(wait_until(PATIENCE, || !std::path::Path::new(&path).exists()));
}

#[test]
fn objects_only_a_departed_client_held_are_freed() {
    let address = unix_address("release");
    let process = server(&address).expect("spawn");
    let other = client(&address).unwrap();
    let object = other.wrap(func!(|| vec![1u8; 1024])).unwrap();
    other.publish("temporary", &object).unwrap();
    assert!(process.lookup::<Vec<u8>>("temporary").is_ok());
    drop(object);
    drop(other);
    let gone = wait_until(PATIENCE, || {
        matches!(
            process.lookup::<Vec<u8>>("temporary"),
            Err(Error::Remote(ref e)) if e.kind == processional::RemoteErrorKind::NotFound
        )
    });
    assert!(gone, "the object outlived every holder");
}

#[test]
fn a_client_killed_mid_call_releases_its_objects() {
    let address = unix_address("killed");
    let process = server(&address).expect("spawn");
    let helper = processional::slave().unwrap();
    let helper_pid = helper.pid();
    helper
        .invoke_with(
            address.clone(),
            func!(|address: String| {
                let c = processional::client(&address).unwrap();
                let object = c.wrap(func!(|| vec![7u8; 64])).unwrap();
                c.publish("orphan", &object).unwrap();
                std::mem::forget(object);
                // Runs for longer than the test waits for the release, so the
                // objects cannot be freed by the call ending first.
                let pending = c.schedule(func!(|| std::thread::sleep(3 * PATIENCE)));
                pending.detach();
                std::mem::forget(c);
            }),
        )
        .unwrap();
    assert!(process.lookup::<Vec<u8>>("orphan").is_ok());
    kill_hard(helper_pid);
    let freed = wait_until(PATIENCE, || process.lookup::<Vec<u8>>("orphan").is_err());
    assert!(freed);
    assert_eq!(process.invoke(func!(|| 9u8)).unwrap(), 9);
}

#[test]
fn a_client_with_the_wrong_key_is_refused() {
    let address = unix_address("wrongkey");
    let process = server(&address).expect("spawn");
    let error = ClientBuilder::new(&address)
        .unwrap()
        .key(processional::Key::generate())
        .connect()
        .expect_err("refused");
    assert!(matches!(error, Error::Auth { .. }), "{error:?}");
    assert_eq!(process.invoke(func!(|| 2u8)).unwrap(), 2);
}

/// A persistent TCP server in this process, with a fresh key, and a client
/// of it.
fn tcp_server_and_client() -> (processional::ServerHandle, processional::SlaveProcess) {
    let key = processional::Key::generate();
    let handle = ServerBuilder::new("tcp://127.0.0.1:0")
        .unwrap()
        .key(key.clone())
        .persistent(true)
        .start()
        .expect("start");
    let c = ClientBuilder::new(&handle.address().to_string())
        .unwrap()
        .key(key)
        .connect()
        .unwrap();
    (handle, c)
}

#[test]
fn a_tcp_server_in_this_process_serves_a_client() {
    let (handle, c) = tcp_server_and_client();
    assert_eq!(c.pid(), std::process::id());
    assert_eq!(c.invoke_with(20u32, func!(|x| x + 1)).unwrap(), 21);
    drop(c);
    handle.stop();
}

/// Over TCP every payload travels inline, in one frame: a value or an
/// argument over what a frame carries fails alone, with a typed error, and
/// the connection goes on (before, the receiving side closed it, failing
/// every call and handle on it).
#[test]
fn a_payload_over_a_frame_fails_alone_over_tcp() {
    let (handle, c) = tcp_server_and_client();
    const OVER: usize = 65 << 20;

    let returned = c.invoke(func!(|| vec![7u8; 65 << 20]));
    match returned {
        Err(Error::Remote(remote)) => {
            assert!(remote.message.contains("frame"), "{remote:?}");
        }
        other => panic!("a too large value: {:?}", other.map(|v| v.len())),
    }
    assert_eq!(c.invoke_with(1u32, func!(|x: u32| x + 1)).unwrap(), 2);

    let sent = c.invoke_with(vec![0u8; OVER], func!(|v: Vec<u8>| v.len()));
    match sent {
        Err(error @ Error::Codec { .. }) => {
            assert!(error.to_string().contains("frame"), "{error}");
        }
        other => panic!("a too large argument: {other:?}"),
    }
    assert_eq!(c.invoke_with(2u32, func!(|x: u32| x + 1)).unwrap(), 3);
    drop(c);
    handle.stop();
}

#[test]
fn bad_peers_do_not_disturb_a_good_client() {
    let address = unix_address("bad-peers");
    let process = server(&address).expect("spawn");
    let path = address.trim_start_matches("unix:").to_owned();
    let good = {
        let process = process.clone();
        std::thread::spawn(move || {
            for i in 0..2000u64 {
                assert_eq!(process.invoke_with(i, func!(|x| x * 3)).unwrap(), i * 3);
            }
        })
    };
    // Random bytes.
    let mut garbage = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let _ = garbage.write_all(&[0xAB; 4096]);
    // A header announcing 4 GiB.
    let mut huge = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let mut header = b"PRCL".to_vec();
    header.extend_from_slice(&1u16.to_le_bytes());
    header.extend_from_slice(&[0, 0]);
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    let _ = huge.write_all(&header);
    // A truncated frame, then gone.
    let mut truncated = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let _ = truncated.write_all(&header[..7]);
    drop(truncated);
    // Wrong key.
    let refused = ClientBuilder::new(&address)
        .unwrap()
        .key(processional::Key::generate())
        .connect();
    assert!(matches!(refused, Err(Error::Auth { .. })));
    good.join().unwrap();
    // The peers that can still read got a typed refusal before the server
    // dropped them.
    for mut peer in [garbage, huge] {
        let mut bytes = Vec::new();
        peer.set_read_timeout(Some(PATIENCE)).unwrap();
        let _ = peer.read_to_end(&mut bytes);
        let mut decoder = processional::proto::Decoder::new();
        decoder.feed(&bytes);
        let mut refused = false;
        while let Ok(Some(message)) = decoder.next() {
            refused |= matches!(
                message,
                processional::proto::Message::Refused { .. }
                    | processional::proto::Message::Error(_)
            );
        }
        assert!(refused, "no typed refusal in {} bytes", bytes.len());
    }

    assert_eq!(process.invoke(func!(|| 1u8)).unwrap(), 1);
}

#[test]
fn many_clients_many_calls() {
    let address = unix_address("load");
    let process = server(&address).expect("spawn");
    let clients = 64;
    let calls = 10_000u64;
    let threads: Vec<_> = (0..clients)
        .map(|n| {
            let address = address.clone();
            std::thread::spawn(move || {
                let c = client(&address).unwrap();
                let window = 64;
                let mut in_flight = std::collections::VecDeque::new();
                for i in 0..calls {
                    in_flight.push_back((
                        i,
                        c.schedule_with((n, i), func!(|(n, i): (u64, u64)| n * 1_000_000 + i)),
                    ));
                    if in_flight.len() == window {
                        let (i, task) = in_flight.pop_front().unwrap();
                        assert_eq!(
                            task.wait_timeout(PATIENCE).ok().unwrap().unwrap(),
                            n * 1_000_000 + i
                        );
                    }
                }
                for (i, task) in in_flight {
                    assert_eq!(
                        task.wait_timeout(PATIENCE).ok().unwrap().unwrap(),
                        n * 1_000_000 + i
                    );
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(process.invoke(func!(|| 1u8)).unwrap(), 1);
}

#[test]
fn a_client_of_another_build_is_refused_with_both_fingerprints() {
    use processional::proto::{Fingerprint, Role};
    let address = unix_address("fingerprint");
    let process = server(&address).expect("spawn");
    let forged = Fingerprint([0xEE; 32]);
    let (_connection, outcome) =
        processional_tests::handshake_as_another_program(&address, Role::Client, forged);
    let error = outcome.expect_err("refused");
    let text = error.to_string();
    assert!(text.contains(&forged.to_string()), "{text}");
    assert!(
        text.contains(&processional::fingerprint().to_string()),
        "{text}"
    );
    assert_eq!(process.invoke(func!(|| 4u8)).unwrap(), 4);
}

#[test]
fn terminate_stops_a_spawned_server() {
    let address = unix_address("terminate");
    let process = ServerBuilder::new(&address)
        .unwrap()
        .persistent(true)
        .spawn()
        .unwrap();
    let pid = process.pid();
    let ending = process.terminate(PATIENCE);
    assert!(
        matches!(ending, processional::Termination::Graceful(_)),
        "{ending:?}"
    );
    assert!(!process_exists(pid));
}

#[test]
fn remote_handles_move_between_clients_of_a_server() {
    let address = unix_address("moving");
    let process = server(&address).expect("spawn");
    let baseline = process.invoke(func!(processional::live_objects)).unwrap();
    let numbers = process.wrap(func!(|| vec![1u64, 2, 3, 4])).expect("wrap");
    // A slave of ours becomes a client of the same server when the handle
    // arrives, and works on the object where it lives.
    let other = processional::slave().unwrap();
    let (sum, server_pid) = other
        .invoke_with(
            numbers.clone(),
            func!(|numbers: processional::Remote<Vec<u64>>| {
                assert!(!numbers.is_local());
                let sum = numbers
                    .invoke(func!(|v: &mut Vec<u64>| v.iter().sum::<u64>()))
                    .unwrap();
                numbers.invoke(func!(|v: &mut Vec<u64>| v.push(5))).unwrap();
                (
                    sum,
                    numbers
                        .invoke(func!(|_: &mut Vec<u64>| std::process::id()))
                        .unwrap(),
                )
            }),
        )
        .unwrap();
    assert_eq!(sum, 10);
    assert_eq!(server_pid, process.pid());
    assert_eq!(numbers.fetch().unwrap(), vec![1, 2, 3, 4, 5]);
    // Sent, then dropped here at once: the handle still arrives.
    let task = other.schedule_with(
        numbers,
        func!(|numbers: processional::Remote<Vec<u64>>| {
            numbers.invoke(func!(|v: &mut Vec<u64>| v.len())).unwrap()
        }),
    );
    assert_eq!(task.wait_timeout(PATIENCE).ok().unwrap().unwrap(), 5);
    // Everyone let go: the object is freed in the server.
    assert!(wait_until(PATIENCE, || {
        process.invoke(func!(processional::live_objects)).unwrap() == baseline
    }));
}
