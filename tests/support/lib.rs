//! Helpers shared by the integration tests: bounded waits, process probes,
//! and gates for tasks running in a slave.
//!
//! Every wait in these tests is bounded, so a broken build fails instead of
//! hanging CI; no test asserts an upper bound on how long something took.

use std::time::{Duration, Instant};

/// The bound on any single wait in the tests: generous, so that a loaded
/// 2-core machine never trips it, yet finite, so nothing hangs.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether a process with this id exists (and is not a zombie).
pub fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether `pid` is a zombie (ended, not reaped).
pub fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z")
    })
}

/// Sends SIGKILL to `pid` through the `kill` command (no unsafe in tests).
pub fn kill_hard(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// Runs `command` (another program, its stdout piped here) to its end,
/// within [`PATIENCE`], killed if the test fails first; returns its process
/// id and what it printed, and fails the test if it did not succeed.
pub fn run_to_end(command: &mut std::process::Command) -> (u32, String) {
    use std::io::Read;
    let child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
    let pid = child.id();
    let mut child = KillOnDrop(child);
    let mut status = None;
    assert!(
        wait_until(PATIENCE, || {
            status = child.0.try_wait().expect("wait for the program");
            status.is_some()
        }),
        "{command:?} did not finish"
    );
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut out)
        .expect("read what it printed");
    let status = status.expect("it finished");
    assert!(status.success(), "{command:?} failed ({status}): {out}");
    (pid, out)
}

/// Runs the current test binary again, running only the test `name`, with
/// `PROCESSIONAL_TEST_HELPER` set so that test knows it is the helper.
pub fn spawn_helper(name: &str, extra_env: &[(&str, String)]) -> std::process::Child {
    let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("PROCESSIONAL_TEST_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    for (key, value) in extra_env {
        command.env(key, value);
    }
    command.spawn().expect("spawn the helper")
}

/// Runs the test `name` as a helper ([`spawn_helper`]) to its end, within
/// three times [`PATIENCE`] (longer than the helper's own waits, so that it
/// reports its failure first), killed if this test fails first; fails the
/// test unless the helper succeeded.
pub fn run_helper(name: &str, extra_env: &[(&str, String)]) {
    let mut helper = KillOnDrop(spawn_helper(name, extra_env));
    let mut status = None;
    assert!(
        wait_until(3 * PATIENCE, || {
            status = helper.0.try_wait().expect("wait for the helper");
            status.is_some()
        }),
        "the helper {name} did not end"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "the helper {name} failed: {status:?}"
    );
}

/// Whether this test process runs as a helper started by [`spawn_helper`].
pub fn is_helper() -> bool {
    std::env::var_os("PROCESSIONAL_TEST_HELPER").is_some()
}

/// Kills a child process when dropped (teardown that never leaks children).
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Gates for tasks that run in a slave, so that a test decides when a task
/// may go on (and learns when it runs) instead of guessing with a sleep.
///
/// The state is statics of the slave process (each test spawns a slave of
/// its own), set and read by shipping these functions as tasks: e.g.
/// `process.schedule(|| gate::start_then_wait(PATIENCE))`, then
/// `gate::wait_for_start(&process)` and `process.invoke(gate::open)`.
pub mod gate {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use crate::{PATIENCE, wait_until};

    static STARTED: AtomicBool = AtomicBool::new(false);
    static OPEN: AtomicBool = AtomicBool::new(false);

    /// Longer than any wait of the tests: a task blocked this long outlives
    /// whatever the test waits for.
    pub const LONGER_THAN_PATIENCE: Duration = Duration::from_secs(3 * PATIENCE.as_secs());

    /// In a slave: records that the task runs.
    pub fn start() {
        STARTED.store(true, Ordering::SeqCst);
    }

    /// In a slave: whether a task has called [`start`].
    pub fn has_started() -> bool {
        STARTED.load(Ordering::SeqCst)
    }

    /// In a slave: lets tasks waiting for the gate go on.
    pub fn open() {
        OPEN.store(true, Ordering::SeqCst);
    }

    /// In a slave: [`start`], then waits at most `limit` for the gate to
    /// [`open`]; whether it opened.
    pub fn start_then_wait(limit: Duration) -> bool {
        start();
        wait_until(limit, || OPEN.load(Ordering::SeqCst))
    }

    /// Waits until a task of `process` has called [`start`], asking through
    /// `thread` calls, which a slave answers even while a queued call runs.
    pub fn wait_for_start(process: &processional::SlaveProcess) {
        let started = wait_until(PATIENCE, || {
            match process
                .thread(processional::func!(has_started))
                .wait_timeout(PATIENCE)
            {
                Ok(outcome) => outcome.expect("has_started"),
                Err(_) => panic!("the slave did not answer within {PATIENCE:?}"),
            }
        });
        assert!(started, "the task never started");
    }

    /// Waits until a `thread` call of `process` has called [`start`],
    /// asking through queued calls, which a slave answers even while every
    /// slot for `thread` calls is taken.
    pub fn wait_for_thread_start(process: &processional::SlaveProcess) {
        let started = wait_until(PATIENCE, || {
            process
                .invoke(processional::func!(has_started))
                .expect("has_started")
        });
        assert!(started, "the blocking thread call never started");
    }
}

/// In a process of a state context: starts a grandchild (`sleep 1000`) and
/// records its pid under `grandchild`, then this process's under `child`
/// (last, so that a test that sees `child` sees both).
pub fn start_a_grandchild(
    state: &processional::state::State,
) -> Result<(), processional::state::StateError> {
    let grandchild = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .map_err(|e| processional::state::StateError::Os {
            what: "spawn sleep",
            source: e,
        })?;
    state.set("grandchild", &grandchild.id())?;
    state.set("child", &std::process::id())?;
    Ok(())
}

/// Each thread's name and voluntary context switches, by thread id.
pub fn voluntary_switches(pid: u32) -> std::collections::HashMap<u32, (String, u64)> {
    let mut threads = std::collections::HashMap::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"));
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread may end between the listing and the read.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
        };
        let name = field("Name:").unwrap_or("?").to_owned();
        let switches = field("voluntary_ctxt_switches:")
            .and_then(|n| n.parse().ok())
            .expect("a task status has voluntary_ctxt_switches");
        threads.insert(tid, (name, switches));
    }
    threads
}

/// A raw data-only client of the unix server at `address`, as a program
/// of another build holding the key (the file beside the socket) makes it.
pub fn raw_data_client(address: &str) -> processional::transport::Connection {
    let (connection, outcome) = handshake_as_another_program(
        address,
        processional::proto::Role::DataClient,
        processional::proto::Fingerprint([0xAB; 32]),
    );
    outcome.expect("the data client is accepted");
    connection
}

/// Connects to the unix server at `address` as a program of another build
/// would: the key from the file beside the socket, a hello with `role` and
/// `fingerprint`. The connection, and how its handshake ended.
pub fn handshake_as_another_program(
    address: &str,
    role: processional::proto::Role,
    fingerprint: processional::proto::Fingerprint,
) -> (
    processional::transport::Connection,
    Result<processional::transport::PeerInfo, processional::transport::Error>,
) {
    use processional::proto::{Hello, PROTOCOL_VERSION, Role};
    use processional::transport::{Connection, Handshake, Side};
    let key_file = format!("{}.key", address.trim_start_matches("unix:"));
    let key = processional::Key::from_hex(std::fs::read_to_string(key_file).unwrap().trim())
        .expect("a key beside the socket");
    let mut connection = Connection::connect(&address.parse().unwrap()).expect("connect");
    let outcome = connection.handshake(
        Side::Initiator,
        &Handshake {
            key,
            hello: Hello {
                protocol: PROTOCOL_VERSION,
                fingerprint,
                role,
                pid: std::process::id(),
                host: "test".into(),
                program: "another-program".into(),
            },
            accept_roles: vec![Role::Server],
            timeout: Some(PATIENCE),
        },
    );
    (connection, outcome)
}

/// Accepts one client on `listener` as a server of this build that proves
/// `key` would (a fake server a test drives frame by frame): the
/// authenticated connection.
pub fn accept_as_fake_server(
    listener: &std::net::TcpListener,
    key: processional::Key,
) -> processional::transport::Connection {
    use processional::proto::{Hello, PROTOCOL_VERSION, Role};
    use processional::transport::{Connection, Handshake, Side};
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
    connection
}

/// A fresh unix socket address `tag` in a private directory of this test
/// process (named after its `suite`); a stale socket there is removed.
pub fn fresh_unix_address(suite: &str, tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("processional-{suite}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.sock"));
    let _ = std::fs::remove_file(&path);
    format!("unix:{}", path.display())
}
