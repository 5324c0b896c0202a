//! Acceptance tests of the process runtime: slaves, shipped functions,
//! remote objects, errors, and the lifetime of slave processes.
//!
//! Every slave here is this test binary re-executed: it turns into a slave
//! before libtest's `main` runs.

use processional::func;
use std::io::{BufRead, BufReader};
use std::time::Duration;

use processional::{Error, SlaveProcessBuilder, slave};
use processional_tests::{
    KillOnDrop, PATIENCE, gate, is_helper, is_zombie, kill_hard, process_exists, spawn_helper,
    wait_until,
};

fn wait<T>(task: processional::Task<T>) -> Result<T, Error> {
    match task.wait_timeout(PATIENCE) {
        Ok(outcome) => outcome,
        Err(_) => panic!("a task did not complete within {PATIENCE:?}"),
    }
}

#[test]
fn the_readme_example_sums_and_multiplies() {
    let process = slave().expect("spawn");
    let resource = process
        .wrap(func!(|| (0..1_000_000u64).collect::<Vec<_>>()))
        .expect("wrap");
    let sum = resource.schedule(func!(|v: &mut Vec<u64>| v.iter().sum::<u64>()));
    let product = resource.schedule(func!(|v: &mut Vec<u64>| v.iter().product::<u64>()));
    assert_eq!(wait(sum).unwrap(), 499_999_500_000);
    assert_eq!(wait(product).unwrap(), 0);
}

#[test]
fn the_slave_is_another_process() {
    let process = slave().expect("spawn");
    let pid = process.invoke(func!(std::process::id)).expect("invoke");
    assert_ne!(pid, std::process::id());
    assert_eq!(pid, process.pid());
    assert!(process.is_alive());
}

fn double(x: u64) -> u64 {
    x * 2
}

fn nested(x: u64) -> u64 {
    double(double(x)) + 1
}

#[test]
fn closures_with_arguments_fn_items_and_nested_calls() {
    let process = slave().expect("spawn");
    assert_eq!(
        process
            .invoke_with((3u64, 4u64), func!(|(a, b)| a * b))
            .unwrap(),
        12
    );
    assert_eq!(process.invoke_with(21u64, func!(double)).unwrap(), 42);
    assert_eq!(process.invoke_with(10u64, func!(nested)).unwrap(), 41);
    assert_eq!(
        process
            .invoke_with("hello".to_string(), func!(|s: String| s.to_uppercase()))
            .unwrap(),
        "HELLO"
    );
}

#[test]
fn large_payloads_are_echoed() {
    let process = slave().expect("spawn");
    for round in 0..5u8 {
        let payload: Vec<u8> = (0..30_000).map(|i| (i as u8).wrapping_add(round)).collect();
        let echoed = process
            .invoke_with(payload.clone(), func!(|v: Vec<u8>| v))
            .expect("echo");
        assert_eq!(echoed, payload);
    }
}

#[test]
fn a_thread_task_runs_concurrently_with_queued_calls() {
    let process = slave().expect("spawn");
    let blocked = process.thread(func!(|| gate::start_then_wait(PATIENCE)));
    // Answered while the thread task cannot have ended: its gate is shut.
    assert_eq!(process.invoke(func!(|| 7u8)).unwrap(), 7);
    assert!(!blocked.is_finished());
    // A queued call opens the gate, so it too runs beside the thread task.
    process.invoke(func!(gate::open)).unwrap();
    assert!(wait(blocked).unwrap(), "the thread task saw its gate open");
}

#[test]
fn queued_calls_run_in_order() {
    let process = slave().expect("spawn");
    let counter = process.wrap(func!(Vec::<u32>::new)).expect("wrap");
    let tasks: Vec<_> = (0..200u32)
        .map(|i| {
            counter.schedule_with(
                i,
                func!(|v: &mut Vec<u32>, i| {
                    v.push(i);
                    v.len()
                }),
            )
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(wait(task).unwrap(), i + 1);
    }
    assert_eq!(counter.fetch().unwrap(), (0..200).collect::<Vec<_>>());
}

#[test]
fn a_remote_panic_is_an_error_and_the_slave_keeps_serving() {
    let process = slave().expect("spawn");
    let error = process
        .invoke(func!(|| -> u8 {
            panic!("deliberate failure in the slave")
        }))
        .expect_err("panics");
    assert!(error.is_panic(), "{error:?}");
    assert!(
        error.message().unwrap().contains("deliberate failure"),
        "{error:?}"
    );
    let Error::Remote(remote) = &error else {
        panic!("not a remote error: {error:?}")
    };
    assert!(
        remote
            .location
            .as_deref()
            .unwrap_or("")
            .contains("process.rs")
    );
    assert!(remote.backtrace.is_some());
    assert_eq!(process.invoke(func!(|| 1u8)).unwrap(), 1);
}

/// A value whose decoding fails when it holds 13.
#[derive(serde::Serialize, Debug, PartialEq)]
struct Picky(u8);

impl<'de> serde::Deserialize<'de> for Picky {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u8::deserialize(deserializer)?;
        if value == 13 {
            return Err(serde::de::Error::custom("13 is refused"));
        }
        Ok(Picky(value))
    }
}

#[test]
fn a_value_that_does_not_deserialize_fails_that_task_only() {
    let process = slave().expect("spawn");
    // Arguments the slave cannot decode.
    let error = process
        .invoke_with(Picky(13), func!(|p: Picky| p.0))
        .expect_err("the slave refuses the argument");
    let Error::Remote(remote) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(remote.kind, processional::RemoteErrorKind::Codec);
    assert!(remote.message.contains("Picky"), "{remote:?}");
    // A value the master cannot decode.
    let error = process
        .invoke(func!(|| Picky(13)))
        .expect_err("the master refuses the value");
    assert!(
        matches!(&error, Error::Codec { type_name, .. } if type_name.contains("Picky")),
        "{error:?}"
    );
    // Both sides keep working.
    assert_eq!(process.invoke(func!(|| Picky(12))).unwrap(), Picky(12));
}

#[test]
fn remote_handles_passed_back_resolve_to_the_object() {
    let process = slave().expect("spawn");
    let numbers = process.wrap(func!(|| vec![1u64, 2, 3])).expect("wrap");
    let total = process
        .invoke_with(
            numbers.clone(),
            func!(|numbers: processional::Remote<Vec<u64>>| {
                assert!(numbers.is_local());
                numbers
                    .invoke(func!(|v: &mut Vec<u64>| v.iter().sum::<u64>()))
                    .unwrap()
            }),
        )
        .unwrap();
    assert_eq!(total, 6);
}

#[test]
fn thousand_wraps_and_drops_leave_no_live_object() {
    let process = slave().expect("spawn");
    for i in 0..1000u64 {
        let object = process.wrap_with(i, func!(|i| vec![i; 16])).expect("wrap");
        if i % 100 == 0 {
            assert_eq!(object.invoke(func!(|v: &mut Vec<u64>| v[0])).unwrap(), i);
        }
    }
    // Releases travel in order with calls, so they are all applied by now.
    assert_eq!(
        process.invoke(func!(processional::live_objects)).unwrap(),
        0
    );
    let kept = process.wrap(func!(|| 1u8)).expect("wrap");
    assert_eq!(
        process.invoke(func!(processional::live_objects)).unwrap(),
        1
    );
    drop(kept);
    assert_eq!(
        process.invoke(func!(processional::live_objects)).unwrap(),
        0
    );
}

#[test]
fn a_slave_killed_mid_task_fails_the_pending_tasks() {
    let process = slave().expect("spawn");
    let pid = process.pid();
    let long = process.schedule(func!(|| std::thread::sleep(Duration::from_secs(30))));
    let queued = process.schedule(func!(|| 1u8));
    kill_hard(pid);
    let error = wait(long).expect_err("the slave died");
    assert!(
        matches!(error, Error::Exited(processional::ExitReason::Signal(9))),
        "{error:?}"
    );
    assert!(wait(queued).is_err());
    assert!(!process.is_alive());
    assert!(process.invoke(func!(|| 1u8)).is_err());
}

#[test]
fn a_dropped_slave_stops_even_while_a_task_runs() {
    let process = slave().expect("spawn");
    let pid = process.pid();
    // Blocked for longer than the test waits for the slave to stop, so the
    // slave cannot stop by finishing the task first.
    let _background = process.schedule(func!(|| gate::start_then_wait(gate::LONGER_THAN_PATIENCE)));
    gate::wait_for_start(&process);
    drop(process);
    let stopped = wait_until(PATIENCE, || !process_exists(pid));
    if !stopped {
        kill_hard(pid);
    }
    assert!(
        stopped,
        "slave {pid} still runs after its handle was dropped"
    );
    assert!(
        wait_until(PATIENCE, || !is_zombie(pid)),
        "slave {pid} was not reaped"
    );
}

#[test]
fn a_detached_slave_finishes_its_task_then_exits() {
    let marker = std::env::temp_dir().join(format!(
        "processional-detached-{}-{}",
        std::process::id(),
        line!()
    ));
    let (started, gate) = (
        marker.with_extension("started"),
        marker.with_extension("gate"),
    );
    for file in [&marker, &started, &gate] {
        let _ = std::fs::remove_file(file);
    }
    let process = SlaveProcessBuilder::new()
        .detach(true)
        .spawn()
        .expect("spawn");
    let pid = process.pid();
    let paths = [&marker, &started, &gate].map(|path| path.to_string_lossy().into_owned());
    let task = process.thread_with(
        paths,
        func!(|[marker, started, gate]: [String; 3]| {
            std::fs::write(started, b"").unwrap();
            if wait_until(PATIENCE, || std::path::Path::new(&gate).exists()) {
                std::fs::write(marker, b"done").unwrap();
            }
        }),
    );
    task.detach();
    assert!(
        wait_until(PATIENCE, || started.exists()),
        "the task never started"
    );
    drop(process);
    // Disconnected while the task waits for its gate: it can only finish
    // now, after the slave lost its master.
    std::fs::write(&gate, b"").unwrap();
    let exited = wait_until(PATIENCE, || !process_exists(pid));
    if !exited {
        kill_hard(pid);
    }
    let done = std::fs::read(&marker);
    for file in [&marker, &started, &gate] {
        let _ = std::fs::remove_file(file);
    }
    assert!(exited, "detached slave {pid} never exited");
    assert_eq!(done.expect("the task finished"), b"done");
}

#[test]
fn terminate_reports_a_graceful_end() {
    let process = slave().expect("spawn");
    let ending = process.terminate(PATIENCE);
    assert!(
        matches!(ending, processional::Termination::Graceful(_)),
        "{ending:?}"
    );
    assert!(!process.is_alive());
}

/// Helper for the next test: spawns a slave, prints its pid, then waits to be
/// killed.
#[test]
fn helper_master_that_gets_killed() {
    if !is_helper() {
        return;
    }
    let process = slave().expect("spawn");
    println!("slave-pid {}", process.pid());
    std::thread::sleep(PATIENCE);
}

#[test]
fn a_master_killed_with_sigkill_takes_its_slave_along() {
    let mut master = KillOnDrop(spawn_helper("helper_master_that_gets_killed", &[]));
    let stdout = master.0.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let slave_pid: u32 = loop {
        let line = lines
            .next()
            .expect("the helper printed the slave pid")
            .expect("read");
        // libtest prints "test <name> ... " before the helper's own output.
        if let Some((_, pid)) = line.split_once("slave-pid ") {
            break pid.trim().parse().expect("pid");
        }
    };
    assert!(process_exists(slave_pid));
    kill_hard(master.0.id());
    assert!(
        wait_until(PATIENCE, || !process_exists(slave_pid)),
        "slave {slave_pid} survived its master"
    );
}

/// The kernel's id of the calling thread.
fn thread_id() -> String {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let id = link.file_name().expect("pid/task/tid");
    id.to_string_lossy().into_owned()
}

#[test]
fn a_slave_spawned_from_a_short_lived_thread_outlives_that_thread() {
    let (process, spawning_thread) = std::thread::spawn(|| {
        let process = slave().expect("spawn");
        // Answered: the slave has asked for its death signal by now (it
        // does before serving), so it would get it when its parent dies.
        assert_eq!(process.invoke(func!(|| 4u8)).unwrap(), 4);
        (process, thread_id())
    })
    .join()
    .unwrap();
    // `join` may return before the kernel is done with the thread. The death
    // signal of the children a thread spawned (PR_SET_PDEATHSIG) is sent
    // before it leaves /proc/self/task: once it has, any such signal is on
    // its way.
    let task = format!("/proc/self/task/{spawning_thread}");
    assert!(
        wait_until(PATIENCE, || !std::path::Path::new(&task).exists()),
        "thread {spawning_thread} never ended"
    );
    assert_eq!(process.invoke(func!(|| 5u8)).unwrap(), 5);
}

#[test]
fn tasks_can_be_awaited() {
    let process = slave().expect("spawn");
    let task = process.schedule(func!(|| 40u8 + 2));
    assert_eq!(pollster::block_on(task).unwrap(), 42);
}

#[test]
fn cancelling_a_queued_task_before_it_runs() {
    let process = slave().expect("spawn");
    // The victim waits in the queue behind the blocker until the gate opens.
    let blocker = process.schedule(func!(|| gate::start_then_wait(PATIENCE)));
    let victim = process.schedule(func!(|| 1u8));
    victim.cancel();
    // Opened by a `thread` call sent after the cancellation, which the slave
    // reads in order: the victim is cancelled before the blocker returns.
    wait(process.thread(func!(gate::open))).unwrap();
    let error = wait(victim).expect_err("cancelled");
    assert!(error.is_cancelled(), "{error:?}");
    assert!(wait(blocker).unwrap(), "the blocker saw its gate open");
}

#[test]
fn a_cancelled_remote_task_sees_its_checkpoint() {
    let process = slave().expect("spawn");
    let task = process.schedule(func!(|| {
        gate::start();
        let deadline = std::time::Instant::now() + PATIENCE;
        while std::time::Instant::now() < deadline {
            if processional::checkpoint().is_err() {
                return "cancelled".to_string();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        "finished".to_string()
    }));
    // Cancelled while it runs: a task cancelled before it starts never runs.
    gate::wait_for_start(&process);
    task.cancel();
    assert_eq!(wait(task).unwrap(), "cancelled");
}

#[test]
fn the_builder_sets_environment_directory_and_captures_output() {
    use std::io::Read;
    let dir = std::env::temp_dir();
    let process = SlaveProcessBuilder::new()
        .env("PROCESSIONAL_TEST_VALUE", "forty-two")
        .current_dir(&dir)
        .stdout(processional::Output::Capture)
        .name("configured")
        .spawn()
        .expect("spawn");
    let (value, cwd) = process
        .invoke(func!(|| {
            println!("hello from the slave");
            (
                std::env::var("PROCESSIONAL_TEST_VALUE").ok(),
                std::env::current_dir().unwrap(),
            )
        }))
        .unwrap();
    assert_eq!(value.as_deref(), Some("forty-two"));
    assert_eq!(cwd.canonicalize().unwrap(), dir.canonicalize().unwrap());
    let mut stdout = process.take_stdout().expect("captured");
    assert!(process.take_stdout().is_none());
    let pid = process.pid();
    drop(process);
    let mut text = String::new();
    stdout.read_to_string(&mut text).unwrap();
    assert!(text.contains("hello from the slave"), "{text:?}");
    assert!(wait_until(PATIENCE, || !process_exists(pid)));
}

#[test]
fn the_slave_marker_does_not_leak_into_the_slave_environment() {
    let process = slave().expect("spawn");
    let leaked = process
        .invoke(func!(
            || std::env::vars().any(|(k, _)| k.starts_with("PROCESSIONAL_SLAVE"))
        ))
        .unwrap();
    assert!(!leaked);
    // A slave can spawn slaves of its own.
    let nested = process
        .invoke(func!(|| {
            let inner = processional::slave().unwrap();
            inner.invoke(func!(std::process::id)).unwrap()
        }))
        .unwrap();
    assert_ne!(nested, process.pid());
}

#[test]
fn terminate_is_graceful_even_while_a_long_task_runs() {
    let process = slave().expect("spawn");
    let pid = process.pid();
    // Blocked for longer than `terminate` waits, so a graceful end cannot
    // come from the task ending first.
    let running = process.schedule(func!(|| gate::start_then_wait(gate::LONGER_THAN_PATIENCE)));
    // Answered while the call runs: the connection is read meanwhile.
    gate::wait_for_start(&process);
    let ending = process.terminate(PATIENCE);
    assert!(
        matches!(
            ending,
            processional::Termination::Graceful(processional::ExitReason::Code(0))
        ),
        "{ending:?}"
    );
    assert!(!process_exists(pid));
    assert!(wait(running).is_err());
}

/// Calls answered before the slave dies keep their values: each reply is
/// written before the next queued call starts, so a call that ends the
/// process (here `exit`) cannot take the answers of those before it along.
#[test]
fn answers_before_an_exit_are_not_lost() {
    for round in 0..20 {
        let process = slave().unwrap();
        let answered: Vec<_> = (0..8u64)
            .map(|x| process.schedule_with(x, func!(|x: u64| x + 1)))
            .collect();
        let exiting = process.schedule(func!(|| -> u64 { std::process::exit(3) }));
        for (x, task) in answered.into_iter().enumerate() {
            assert_eq!(wait(task).unwrap(), x as u64 + 1, "round {round}, call {x}");
        }
        assert!(wait(exiting).is_err());
    }
}
