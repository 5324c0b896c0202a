//! An idle process of ours does not wake up: no periodic polling in an idle
//! slave, an idle server, or a master that let a child go. And the
//! process-wide reaper still reaps every child, escalating to SIGKILL.
//!
//! Wake-ups are counted as the voluntary context switches of every thread
//! of the process (`/proc/<pid>/task/*/status`) over a few idle seconds: a
//! thread that polls every 10 ms makes about a hundred a second; a process
//! that only blocks makes none. No bound is put on how long anything takes.

use processional::func;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use processional::{ServerBuilder, SlaveProcessBuilder, server, slave};
use processional_tests::{
    KillOnDrop, PATIENCE, is_helper, is_zombie, process_exists, spawn_helper, voluntary_switches,
    wait_until,
};

/// How long each process is watched while idle.
const IDLE_WINDOW: Duration = Duration::from_secs(5);

/// The most voluntary context switches an idle process may make in
/// [`IDLE_WINDOW`] (a few stragglers: a lingering check after the last call,
/// a cached thread retiring). A 10 ms poll makes about 500.
const MAX_WAKEUPS: u64 = 20;

/// Watches `pid` for [`IDLE_WINDOW`] and asserts that its threads, together,
/// woke up at most [`MAX_WAKEUPS`] times (threads that ended meanwhile are
/// not counted; threads that started count from zero).
fn assert_stays_asleep(pid: u32, what: &str) {
    let before = voluntary_switches(pid);
    // Not a wait for something to happen: the measurement window itself.
    std::thread::sleep(IDLE_WINDOW);
    let after = voluntary_switches(pid);
    let mut total = 0;
    let mut detail = Vec::new();
    for (tid, (name, switches)) in &after {
        let woke = switches - before.get(tid).map_or(0, |(_, s)| *s).min(*switches);
        if woke > 0 {
            detail.push(format!("{name} ({tid}): {woke}"));
        }
        total += woke;
    }
    assert!(
        total <= MAX_WAKEUPS,
        "the idle {what} {pid} woke up {total} times in {IDLE_WINDOW:?}: {}",
        detail.join(", ")
    );
}

/// A fresh unix socket address in a private directory.
fn unix_address(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("processional-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    format!("unix:{}/{tag}.sock", dir.display())
}

#[test]
fn an_idle_slave_does_not_wake_up() {
    let process = slave().expect("spawn");
    // A call long enough for the watchdog to lend a reader, then a short
    // one: the slave is idle after having worked.
    process
        .invoke(func!(|| std::thread::sleep(Duration::from_millis(100))))
        .expect("long call");
    assert_eq!(process.invoke(func!(|| 1u8)).expect("short call"), 1);
    assert_stays_asleep(process.pid(), "slave");
    // Still serving.
    assert_eq!(process.invoke(func!(|| 2u8)).expect("call after idling"), 2);
}

/// Whether the watchdog thread of `pid` sleeps until a call starts (blocked
/// on its condition variable, a futex) rather than ticking (a nanosleep).
fn watchdog_sleeps(pid: u32) -> bool {
    voluntary_switches(pid)
        .iter()
        .filter(|(_, (name, _))| name.starts_with("processional-wa"))
        .any(|(tid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/wchan"))
                .is_ok_and(|wchan| wchan.contains("futex"))
        })
}

#[test]
fn a_long_call_after_idling_is_still_watched() {
    let process = slave().expect("spawn");
    assert_eq!(process.invoke(func!(|| 1u8)).expect("call"), 1);
    let pid = process.pid();
    assert!(
        wait_until(PATIENCE, || watchdog_sleeps(pid)),
        "the watchdog of the idle slave {pid} never went to sleep"
    );
    // The call that starts now must wake the watchdog, which then lends a
    // reader: the `thread` call and the cancellation are read while the
    // long call runs.
    let long = process.schedule(func!(until_cancelled));
    let beside = process.thread(func!(|| 7u8));
    assert_eq!(
        beside
            .wait_timeout(PATIENCE)
            .expect("the thread call was read")
            .unwrap(),
        7
    );
    long.cancel();
    assert_eq!(
        long.wait_timeout(PATIENCE)
            .expect("the cancellation was read")
            .unwrap(),
        "cancelled"
    );
}

/// A call that runs until it is cancelled, checking every 10 ms.
fn until_cancelled() -> String {
    for _ in 0..6000 {
        if processional::checkpoint().is_err() {
            return "cancelled".to_string();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    "finished".to_string()
}

#[test]
fn a_long_call_with_its_reader_lets_the_watchdog_sleep() {
    let process = slave().expect("spawn");
    let pid = process.pid();
    for round in 0..2 {
        let long = process.schedule(func!(until_cancelled));
        // Answered while the long call runs: the watchdog lent a reader.
        let beside = process.thread(func!(|| 7u8));
        assert_eq!(beside.wait_timeout(PATIENCE).expect("lent").unwrap(), 7);
        // Nothing is left to watch: the watchdog sleeps instead of ticking
        // for as long as the call runs.
        assert!(
            wait_until(PATIENCE, || watchdog_sleeps(pid)),
            "round {round}: the watchdog of {pid} kept ticking beside a watched call"
        );
        // The lent reader still reads: the cancellation arrives.
        long.cancel();
        let outcome = long
            .wait_timeout(PATIENCE)
            .expect("the cancellation was read");
        assert_eq!(outcome.unwrap(), "cancelled", "round {round}");
        // Round 1: the next long call wakes the watchdog, which lends again.
    }
}

/// A call that blocks reading one byte from the unix socket at `path`: it
/// makes no wake-up of its own until the test writes it.
fn blocked_on(path: String) -> u8 {
    let mut stream = UnixStream::connect(path).expect("connect to the test");
    let mut byte = [0u8];
    stream.read_exact(&mut byte).expect("read the test's byte");
    byte[0]
}

#[test]
fn a_slave_in_a_long_quiet_call_does_not_wake_up() {
    let process = slave().expect("spawn");
    let pid = process.pid();
    let path = unix_address("quiet-call")
        .strip_prefix("unix:")
        .expect("a unix address")
        .to_owned();
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    let long = process.schedule_with(path, func!(blocked_on));
    let (mut release, _) = listener.accept().expect("the call connected");
    // The watchdog lent the call a reader: a `thread` call is answered
    // beside it. Then the watchdog has nothing left to watch.
    let beside = process.thread(func!(|| 7u8));
    assert_eq!(beside.wait_timeout(PATIENCE).expect("lent").unwrap(), 7);
    assert!(
        wait_until(PATIENCE, || watchdog_sleeps(pid)),
        "the watchdog of {pid} kept ticking"
    );
    // Neither the lent reader nor the watchdog polls while the call runs.
    assert_stays_asleep(pid, "slave in a long call");
    release.write_all(&[9]).expect("release the call");
    let outcome = long.wait_timeout(PATIENCE).expect("the long call ended");
    assert_eq!(outcome.unwrap(), 9);
    // The executor has its socket back: served at once, in order.
    assert_eq!(process.invoke(func!(|| 1u8)).expect("call after"), 1);
    assert_eq!(process.invoke(func!(|| 2u8)).expect("and another"), 2);
}

#[test]
fn an_idle_server_does_not_wake_up() {
    let address = unix_address("idle-server");
    let process = server(&address).expect("spawn the server");
    process
        .invoke(func!(|| std::thread::sleep(Duration::from_millis(100))))
        .expect("long call");
    let second = processional::client(&address).expect("a second client");
    assert_eq!(second.invoke(func!(|| 1u8)).expect("short call"), 1);
    assert_stays_asleep(process.pid(), "server");
    assert_eq!(second.invoke(func!(|| 2u8)).expect("call after idling"), 2);
}

/// Helper for the next test: spawns a persistent server, lets its handle go
/// (the reaper then waits for the server's end), prints both pids, and idles
/// until killed.
#[test]
fn helper_master_that_let_its_server_go() {
    if !is_helper() {
        return;
    }
    let address = std::env::var("IDLE_SERVER_ADDRESS").expect("address");
    let process = ServerBuilder::new(&address)
        .expect("address")
        .persistent(true)
        .spawn()
        .expect("spawn the server");
    assert_eq!(process.invoke(func!(|| 1u8)).expect("call"), 1);
    let server_pid = process.pid();
    drop(process);
    println!("master-pid {} server-pid {server_pid}", std::process::id());
    std::thread::sleep(PATIENCE);
}

#[test]
fn a_master_that_let_a_child_go_does_not_wake_up() {
    let address = unix_address("let-go");
    let mut master = KillOnDrop(spawn_helper(
        "helper_master_that_let_its_server_go",
        &[("IDLE_SERVER_ADDRESS", address)],
    ));
    let stdout = master.0.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let (master_pid, server_pid): (u32, u32) = loop {
        let line = lines
            .next()
            .expect("the helper printed the pids")
            .expect("read");
        // libtest prints "test <name> ... " before the helper's own output.
        if let Some((_, pids)) = line.split_once("master-pid ") {
            let (master, server) = pids.split_once(" server-pid ").expect("both pids");
            break (
                master.trim().parse().expect("pid"),
                server.trim().parse().expect("pid"),
            );
        }
    };
    assert_eq!(master_pid, master.0.id());
    assert!(process_exists(server_pid));
    assert_stays_asleep(master_pid, "master");
    drop(master);
    // The server dies with its master (SIGTERM), removing its files.
    assert!(
        wait_until(PATIENCE, || !process_exists(server_pid)),
        "server {server_pid} survived its master"
    );
}

#[test]
fn a_dropped_slave_that_cannot_answer_is_killed_and_reaped() {
    let process = SlaveProcessBuilder::new()
        .grace_period(Duration::from_millis(100))
        .spawn()
        .expect("spawn");
    let pid = process.pid();
    // Stopped, it neither reads the shutdown request nor acts on SIGTERM
    // (which stays pending): only the SIGKILL after both grace periods ends it.
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(stopped.success());
    drop(process);
    assert!(
        wait_until(PATIENCE, || !process_exists(pid)),
        "slave {pid} still runs after its handle was dropped"
    );
    assert!(
        wait_until(PATIENCE, || !is_zombie(pid)),
        "slave {pid} was not reaped"
    );
}

#[test]
fn terminating_a_slave_that_cannot_answer_kills_it() {
    let process = slave().expect("spawn");
    let pid = process.pid();
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(stopped.success());
    let ending = process.terminate(Duration::from_millis(100));
    assert_eq!(
        ending,
        processional::Termination::Killed(processional::ExitReason::Signal(9)),
    );
    assert!(!process_exists(pid) && !is_zombie(pid));
}

#[test]
fn dropped_detached_slaves_are_reaped_when_they_exit() {
    let slaves: Vec<_> = (0..3)
        .map(|_| {
            SlaveProcessBuilder::new()
                .detach(true)
                .spawn()
                .expect("spawn")
        })
        .collect();
    let pids: Vec<u32> = slaves.iter().map(|s| s.pid()).collect();
    // A detached slave only disconnects when dropped; with nothing running,
    // it then exits, and the reaper must collect each of them.
    drop(slaves);
    for pid in pids {
        assert!(
            wait_until(PATIENCE, || !process_exists(pid) && !is_zombie(pid)),
            "detached slave {pid} was not reaped"
        );
    }
}
