//! Lifetimes of spawned servers without races: a new client keeps a
//! non-persistent server alive even if the master leaves right after it
//! connected, and a server whose master goes away (killed, or exiting right
//! after dropping its handle) leaves no socket or key file behind.

use processional::func;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use processional::{client, server};
use processional_tests::{
    KillOnDrop, PATIENCE, is_helper, kill_hard, process_exists, spawn_helper, wait_until,
};

/// Where the helper (the master) is told to spawn its server.
const ADDRESS_VAR: &str = "PROCESSIONAL_LIFETIME_ADDRESS";

/// How long a server whose master went away may take to remove its files:
/// generous, since the death signal and the cleanup take milliseconds.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(20);

/// A fresh unix socket address in a private directory, its socket path and
/// the path of the key file beside it.
fn unix_address() -> (String, PathBuf, PathBuf) {
    let address = processional::Address::private_unix().expect("a private socket path");
    let processional::Address::Unix(socket) = &address else {
        unreachable!("private_unix makes unix socket paths")
    };
    let mut key = socket.as_os_str().to_owned();
    key.push(".key");
    (address.to_string(), socket.clone(), PathBuf::from(key))
}

/// Kills a process by id (if it still runs) when dropped.
struct KillPidOnDrop(u32);

impl Drop for KillPidOnDrop {
    fn drop(&mut self) {
        if process_exists(self.0) {
            kill_hard(self.0);
        }
    }
}

/// In a helper: spawns a server on the address it was given and tells the
/// test its pid on standard output.
fn helper_spawns_a_server() -> processional::SlaveProcess {
    let address = std::env::var(ADDRESS_VAR).expect("the helper is given an address");
    let process = server(&address).expect("spawn the server");
    println!("server-pid {}", process.pid());
    process
}

/// The helper, the master of a server, and the rest of its output (kept
/// open, so that its last words do not hit a closed pipe).
struct Master {
    helper: KillOnDrop,
    _output: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

/// Starts the helper running test `name` as the master of a server on
/// `address`; returns it and its server's pid.
fn start_master(name: &str, address: &str) -> (Master, u32) {
    let mut helper = KillOnDrop(spawn_helper(name, &[(ADDRESS_VAR, address.to_owned())]));
    let stdout = helper.0.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let pid = loop {
        let line = lines
            .next()
            .expect("the helper ended before it spawned its server")
            .expect("read the helper's output");
        // libtest may print the test's name on the same line first.
        if let Some((_, pid)) = line.split_once("server-pid ") {
            break pid.trim().parse::<u32>().expect("a pid");
        }
    };
    let master = Master {
        helper,
        _output: lines,
    };
    (master, pid)
}

fn assert_files_removed(socket: &Path, key: &Path, what: &str) {
    let gone = wait_until(CLEANUP_PATIENCE, || !socket.exists() && !key.exists());
    assert!(
        gone,
        "{what}: the server left {} (exists: {}) or {} (exists: {}) behind",
        socket.display(),
        socket.exists(),
        key.display(),
        key.exists()
    );
}

#[test]
fn a_new_client_keeps_a_non_persistent_server_when_the_master_leaves_at_once() {
    for round in 0..50u32 {
        let (address, _, _) = unix_address();
        let master = server(&address).expect("spawn the server");
        let pid = master.pid();
        let second = client(&address).expect("connect a second client");
        drop(master);
        let answer = second.invoke_with(round, func!(|x: u32| x + 1));
        assert_eq!(
            answer.as_ref().ok(),
            Some(&(round + 1)),
            "round {round}: the server stopped under its new client: {answer:?}"
        );
        drop(second);
        assert!(
            wait_until(PATIENCE, || !process_exists(pid)),
            "round {round}: server {pid} still runs after its last client left"
        );
    }
}

#[test]
fn a_server_removes_its_files_when_its_master_is_killed() {
    if is_helper() {
        let _process = helper_spawns_a_server();
        // Killed long before this ends.
        std::thread::sleep(PATIENCE);
        return;
    }
    let (address, socket, key) = unix_address();
    let (mut master, server_pid) = start_master(
        "a_server_removes_its_files_when_its_master_is_killed",
        &address,
    );
    let _server = KillPidOnDrop(server_pid);
    assert!(socket.exists() && key.exists(), "the server made its files");
    kill_hard(master.helper.0.id());
    let _ = master.helper.0.wait();
    assert_files_removed(&socket, &key, "master killed");
    assert!(
        wait_until(CLEANUP_PATIENCE, || !process_exists(server_pid)),
        "server {server_pid} outlived its master"
    );
}

#[test]
fn a_server_removes_its_files_when_its_master_exits_after_dropping_it() {
    if is_helper() {
        drop(helper_spawns_a_server());
        // The test ends, so does this process.
        return;
    }
    for round in 0..10 {
        let (address, socket, key) = unix_address();
        let (mut master, server_pid) = start_master(
            "a_server_removes_its_files_when_its_master_exits_after_dropping_it",
            &address,
        );
        let _server = KillPidOnDrop(server_pid);
        let status = master.helper.0.wait().expect("wait for the master");
        assert!(
            status.success(),
            "round {round}: the master failed: {status}"
        );
        assert_files_removed(&socket, &key, &format!("round {round}, master exited"));
    }
}
