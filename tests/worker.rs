//! Workers (`processional::worker`): each behaviour on the three kinds,
//! thread, process and remote; then persistent workers.
//!
//! Every wait is bounded by `PATIENCE`; workers, servers and their
//! children are stopped when their handles drop at the end of each test.

use std::time::Duration;

use processional::worker::{
    EnqueueError, PersistentWorker, RemoteServer, Stop, Worker, WorkerBuilder, WorkerError,
    WorkerKind, checkpoint, spawn_server,
};
use processional::{Termination, func};
use processional_tests::{PATIENCE, process_exists, wait_until};

fn square(x: u64) -> u64 {
    x * x
}

/// Runs until terminated, checking at each step.
fn cooperative(_: u64) -> u64 {
    loop {
        checkpoint();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Leaves a marker file, then ignores its cancellation (for longer than
/// any test waits).
fn stubborn(marker: String) -> u64 {
    std::fs::write(&marker, b"started").expect("write the marker");
    std::thread::sleep(3 * PATIENCE);
    0
}

/// A marker file path of its own for this test and kind.
fn marker(name: &str, kind: &WorkerKind) -> String {
    let tag: String = kind
        .to_string()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let path = std::env::temp_dir().join(format!(
        "processional-worker-{}-{name}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path.to_string_lossy().into_owned()
}

fn boom(x: u64) -> u64 {
    panic!("boom at {x}")
}

/// A square that takes a while and stops when asked.
fn slow_square(x: u64) -> u64 {
    for _ in 0..5 {
        checkpoint();
        std::thread::sleep(Duration::from_millis(2));
    }
    x * x
}

fn server() -> RemoteServer {
    spawn_server("tcp://127.0.0.1:0").expect("a remote-worker server")
}

/// The three kinds, the remote one on `server`.
fn kinds(server: &RemoteServer) -> [WorkerKind; 3] {
    [
        WorkerKind::Thread,
        WorkerKind::Process,
        WorkerKind::Remote(server.address().clone()),
    ]
}

fn kill(signal: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// The example, printing exactly its lines.
#[test]
fn the_example_prints_its_lines() {
    let lines = example().expect("the example runs");
    for line in &lines {
        println!("{line}");
    }
    assert_eq!(
        lines,
        [
            "Some(1) Some(4) Some(9)",
            "4 [0, 9, 36, 81]",
            "3 [1, 16, 49]",
            "3 [4, 25, 64]",
        ]
    );
}

fn example() -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    let server = spawn_server("tcp://127.0.0.1:0")?; // a process worker running a remote-worker server
    let tw = Worker::thread(func!(square), 1)?;
    let pw = Worker::process(func!(square), 2)?;
    let rw = Worker::remote(server.address(), func!(square), 3)?;
    for w in [&tw, &pw, &rw] {
        w.wait(None);
    }
    out.push(format!(
        "{:?} {:?} {:?}",
        tw.result(),
        pw.result(),
        rw.result()
    ));

    // the same, with the kind as a value
    let kinds = [
        WorkerKind::Thread,
        WorkerKind::Process,
        WorkerKind::Remote(server.address().clone()),
    ];
    let persistent = kinds
        .iter()
        .map(|k| PersistentWorker::spawn(k.clone(), func!(square)))
        .collect::<Result<Vec<_>, _>>()?;
    for (w, x) in persistent.iter().cycle().zip(0..10) {
        w.enqueue(x)?;
    }
    for w in &persistent {
        w.close();
        w.wait(None);
        out.push(format!(
            "{} {:?}",
            w.processed(),
            w.results().collect::<Result<Vec<_>, _>>()?
        ));
    }
    Ok(out)
}

#[test]
fn identity_is_valid_at_once_on_every_kind() {
    let server = server();
    for kind in kinds(&server) {
        let worker = WorkerBuilder::new(kind.clone())
            .name("named")
            .user_id(42)
            .spawn(func!(cooperative), 0)
            .unwrap();
        let identity = worker.identity();
        assert_eq!(identity.kind, kind);
        assert_eq!((identity.name.as_str(), identity.user_id), ("named", 42));
        assert!(!worker.host().is_empty());
        let pid = worker.pid().expect("a pid");
        assert!(process_exists(pid), "{kind}: its process runs");
        match kind {
            WorkerKind::Thread => {
                assert_eq!(pid, std::process::id());
                assert!(worker.tid().is_some());
            }
            _ => {
                assert_ne!(pid, std::process::id());
                assert_ne!(Some(pid), Some(server.pid()), "{kind}: a child of its own");
                assert_eq!(worker.tid(), None);
            }
        }
        // Results never block; a running worker has neither.
        assert!(!worker.wait(Some(Duration::ZERO)));
        assert_eq!((worker.result(), worker.has_error()), (None, false));
        worker.terminate(PATIENCE);
    }
}

#[test]
fn results_and_panics_on_every_kind() {
    let server = server();
    for kind in kinds(&server) {
        let worker = Worker::spawn(kind.clone(), func!(square), 12).unwrap();
        assert!(worker.wait(Some(PATIENCE)), "{kind}: ends");
        assert_eq!(worker.result(), Some(&144), "{kind}");
        assert!(worker.error().is_none());

        let failing = Worker::spawn(kind.clone(), func!(boom), 3).unwrap();
        assert!(failing.wait(Some(PATIENCE)));
        assert!(failing.result().is_none());
        match failing.error() {
            Some(WorkerError::Panicked { message }) => {
                assert!(message.contains("boom at 3"), "{kind}: {message}")
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
}

#[test]
fn terminate_is_seen_at_a_checkpoint_on_every_kind() {
    let server = server();
    for kind in kinds(&server) {
        let worker = Worker::spawn(kind.clone(), func!(cooperative), 0).unwrap();
        let termination = worker.terminate(PATIENCE);
        assert!(termination.is_some(), "{kind}: ended");
        match worker.error() {
            Some(WorkerError::Terminated {
                how: Stop::Cancelled,
            }) => {}
            other => panic!("{kind}: {other:?}"),
        }
        assert!(worker.error().unwrap().is_terminated());
        // Twice is fine, and says the same.
        assert_eq!(worker.terminate(PATIENCE), termination);
    }
}

#[test]
fn terminate_zero_returns_at_once_and_wait_sees_the_end() {
    let server = server();
    for kind in kinds(&server) {
        let worker = Worker::spawn(kind.clone(), func!(cooperative), 0).unwrap();
        assert_eq!(worker.terminate(Duration::ZERO), None, "{kind}: not yet");
        assert!(worker.wait(Some(PATIENCE)), "{kind}: ends");
        assert!(
            worker.error().is_some_and(WorkerError::is_terminated),
            "{kind}: {:?}",
            worker.error()
        );
    }
}

#[test]
fn a_target_that_ignores_cancellation_is_forced() {
    let server = server();
    for kind in kinds(&server) {
        let started = marker("stubborn", &kind);
        let worker = Worker::spawn(kind.clone(), func!(stubborn), started.clone()).unwrap();
        assert!(
            wait_until(PATIENCE, || std::path::Path::new(&started).exists()),
            "{kind}: started"
        );
        let _ = std::fs::remove_file(&started);
        let pid = worker.pid().unwrap();
        let termination = worker.terminate(Duration::from_secs(2)).expect("it ends");
        let how = match worker.error() {
            Some(WorkerError::Terminated {
                how: Stop::Forced(how),
            }) => *how,
            other => panic!("{kind}: {other:?}"),
        };
        assert_eq!(how, termination);
        match kind {
            WorkerKind::Thread => assert_eq!(termination, Termination::Unstoppable),
            _ => {
                assert_ne!(termination, Termination::Unstoppable);
                assert!(
                    wait_until(PATIENCE, || !process_exists(pid)),
                    "{kind}: its process is gone"
                );
            }
        }
        assert_eq!(
            worker.terminate(Duration::from_secs(2)),
            Some(termination),
            "twice"
        );
    }
    // Forcing a remote worker killed only its child: the server serves on.
    assert!(process_exists(server.pid()));
    let again = Worker::remote(server.address(), func!(square), 5).unwrap();
    assert!(again.wait(Some(PATIENCE)));
    assert_eq!(again.result(), Some(&25));
}

#[test]
fn sigterm_from_outside_says_so() {
    let server = server();
    for kind in [
        WorkerKind::Process,
        WorkerKind::Remote(server.address().clone()),
    ] {
        let worker = Worker::spawn(kind.clone(), func!(cooperative), 0).unwrap();
        kill("-TERM", worker.pid().unwrap());
        assert!(worker.wait(Some(PATIENCE)), "{kind}: ends");
        let error = worker.error().expect("an error");
        assert_eq!(error.signal(), Some(15), "{kind}: {error:?}");
        assert!(error.to_string().contains("SIGTERM"), "{error}");
    }
    for kind in [
        WorkerKind::Process,
        WorkerKind::Remote(server.address().clone()),
    ] {
        let worker = Worker::spawn(kind.clone(), func!(cooperative), 0).unwrap();
        kill("-KILL", worker.pid().unwrap());
        assert!(worker.wait(Some(PATIENCE)), "{kind}: ends");
        assert_eq!(
            worker.error().and_then(WorkerError::signal),
            Some(9),
            "{kind}"
        );
        assert!(worker.error().unwrap().to_string().contains("SIGKILL"));
    }
}

#[test]
fn a_worker_told_not_to_run_is_born_ended() {
    let server = server();
    for kind in kinds(&server) {
        let worker = WorkerBuilder::new(kind.clone())
            .run(false)
            .spawn(func!(square), 2)
            .unwrap();
        assert!(worker.wait(Some(Duration::ZERO)), "{kind}");
        assert_eq!((worker.result(), worker.has_error()), (None, false));
        assert_eq!(worker.pid(), None);
    }
}

#[test]
fn user_state_comes_back() {
    let server = server();
    for kind in kinds(&server) {
        let worker = WorkerBuilder::new(kind.clone())
            .state(vec![1u64])
            .spawn_stateful(
                func!(|seen: &mut Vec<u64>, x: u64| {
                    seen.push(x);
                    seen.len()
                }),
                7,
            )
            .unwrap();
        assert!(worker.wait(Some(PATIENCE)));
        assert_eq!(worker.result(), Some(&2), "{kind}");
        assert_eq!(worker.state(), Some(vec![1, 7]), "{kind}");
    }
}

#[test]
fn persistent_workers_answer_in_order_on_every_kind() {
    let server = server();
    for kind in kinds(&server) {
        let worker = PersistentWorker::spawn(kind.clone(), func!(square)).unwrap();
        for x in 0..10u64 {
            worker.enqueue(x).unwrap();
        }
        worker.close();
        assert!(worker.wait(Some(PATIENCE)), "{kind}");
        assert_eq!(worker.processed(), 10);
        let squares: Vec<u64> = worker.results().collect::<Result<_, _>>().unwrap();
        assert_eq!(
            squares,
            (0..10).map(|x| x * x).collect::<Vec<_>>(),
            "{kind}"
        );
        match worker.enqueue(11) {
            Err(EnqueueError::Closed(11)) => {}
            other => panic!("{kind}: {other:?}"),
        }
    }
}

#[test]
fn a_failing_input_stops_a_worker_unless_it_is_resilient() {
    let server = server();
    let fail_at_3 = func!(|x: u64| {
        assert!(x != 3, "three");
        x
    });
    for kind in kinds(&server) {
        let worker = PersistentWorker::spawn(kind.clone(), fail_at_3).unwrap();
        for x in 0..6u64 {
            worker.enqueue(x).unwrap();
        }
        assert!(worker.wait(Some(PATIENCE)), "{kind}: it stopped");
        let results: Vec<_> = worker.results().collect();
        assert_eq!(results.len(), 4, "{kind}: {results:?}");
        assert!(matches!(results[3], Err(WorkerError::Panicked { .. })));
        assert!(matches!(worker.enqueue(9), Err(EnqueueError::Ended(9))));

        let resilient = WorkerBuilder::new(kind.clone())
            .resilient(true)
            .persistent(fail_at_3)
            .unwrap();
        for x in 0..6u64 {
            resilient.enqueue(x).unwrap();
        }
        resilient.close();
        assert!(resilient.wait(Some(PATIENCE)));
        let results: Vec<_> = resilient.results().collect();
        assert_eq!(results.len(), 6, "{kind}");
        assert!(results[3].is_err());
        assert_eq!(results[5].as_ref().ok(), Some(&5));
        assert_eq!(resilient.processed(), 6);
    }
}

#[test]
fn restart_gives_a_new_process_and_keeps_the_state() {
    let server = server();
    for kind in kinds(&server) {
        let worker = WorkerBuilder::new(kind.clone())
            .state(0u64)
            .persistent_stateful(func!(|total: &mut u64, x: u64| {
                *total += x;
                *total
            }))
            .unwrap();
        let (id, pid) = (worker.id(), worker.pid());
        for x in [1, 2, 3] {
            worker.enqueue(x).unwrap();
        }
        worker.close();
        assert!(worker.wait(Some(PATIENCE)));
        assert_eq!(worker.processed(), 3);
        assert_eq!(worker.state(), Some(6));
        worker.restart().unwrap();
        assert_ne!(worker.id(), id, "{kind}: a new id");
        if kind != WorkerKind::Thread {
            assert_ne!(worker.pid(), pid, "{kind}: a new process");
        }
        assert_eq!(worker.processed(), 0, "counts reset");
        worker.enqueue(10).unwrap();
        worker.close();
        assert!(worker.wait(Some(PATIENCE)));
        let totals: Vec<u64> = worker.results().collect::<Result<_, _>>().unwrap();
        assert_eq!(totals, [16], "{kind}: the state carried over");
    }
}

#[test]
fn terminate_with_pending_inputs_keeps_the_results_so_far() {
    let server = server();
    for kind in kinds(&server) {
        let worker = PersistentWorker::spawn(kind.clone(), func!(slow_square)).unwrap();
        for x in 0..10_000u64 {
            worker.enqueue(x).unwrap();
        }
        assert!(
            wait_until(PATIENCE, || worker.processed() >= 3),
            "{kind}: started"
        );
        worker.terminate(PATIENCE).expect("ended");
        let results: Vec<_> = worker.results().collect();
        let (last, delivered) = results.split_last().expect("some results");
        assert!(
            delivered.len() >= 3 && delivered.len() < 10_000,
            "{kind}: {}",
            delivered.len()
        );
        for (x, result) in delivered.iter().enumerate() {
            assert_eq!(
                result.as_ref().ok(),
                Some(&(x as u64 * x as u64)),
                "{kind}: input {x}"
            );
        }
        assert!(
            last.as_ref().is_err_and(WorkerError::is_terminated),
            "{kind}: {last:?}"
        );
        assert!(matches!(
            worker.enqueue(1),
            Err(EnqueueError::Closed(1) | EnqueueError::Ended(1))
        ));
    }
}

/// `PROCESSIONAL_SERVE` turns this very test binary into a remote-worker
/// server before its `main`; it reports its port, serves workers, and
/// stops its workers' processes on SIGTERM before it dies.
#[test]
fn any_program_becomes_a_server_with_processional_serve() {
    use std::io::BufRead;

    let key = processional::Key::generate();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(processional::process::SERVE_VAR, "tcp://127.0.0.1:0")
        .env(processional::process::KEY_VAR, key.to_hex())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the server");
    let mut server = processional_tests::KillOnDrop(child);
    let mut line = String::new();
    std::io::BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("the server reports its address");
    let address: processional::Address = line
        .trim()
        .strip_prefix("processional: serving on ")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .parse()
        .unwrap();
    assert!(
        !address.to_string().ends_with(":0"),
        "the bound port: {address}"
    );
    processional::worker::remember_key(&address, key);

    let worker = Worker::remote(&address, func!(square), 3).unwrap();
    assert!(worker.wait(Some(PATIENCE)));
    assert_eq!(worker.result(), Some(&9));

    let running = Worker::remote(&address, func!(cooperative), 0).unwrap();
    let child_pid = running.pid().unwrap();
    kill("-TERM", server.0.id());
    assert!(
        running.wait(Some(PATIENCE)),
        "the worker ends with its server"
    );
    // Its server stopped it before dying (the worker did not just lose its
    // connection).
    let error = running.error().expect("an error");
    assert!(
        matches!(error, WorkerError::Exited { .. } | WorkerError::Lost { .. }),
        "stopped by its server: {error:?}"
    );
    assert!(
        wait_until(PATIENCE, || !process_exists(child_pid)),
        "its process is gone"
    );
}

/// Stopping a remote-worker server stops its workers' processes first; the
/// workers end with an error.
#[test]
fn stopping_the_server_ends_its_workers() {
    let server = server();
    let workers: Vec<_> = (0..2)
        .map(|_| Worker::remote(server.address(), func!(cooperative), 0).unwrap())
        .collect();
    let pids: Vec<u32> = workers.iter().map(|w| w.pid().unwrap()).collect();
    let termination = server.terminate(PATIENCE);
    assert!(termination.exit_reason().is_some(), "{termination:?}");
    for (worker, pid) in workers.iter().zip(pids) {
        assert!(worker.wait(Some(PATIENCE)), "the worker ends");
        assert!(worker.has_error());
        assert!(
            wait_until(PATIENCE, || !process_exists(pid)),
            "its process is gone"
        );
    }
}

/// A remote context: a target registered on the server under an id with
/// its default state; workers use it by that id, and terminating the
/// context ends them.
#[test]
fn remote_context_workers_use_the_registered_target() {
    use processional::worker::RemoteContext;

    let server = server();
    let context = RemoteContext::register_stateful(
        server.address(),
        "offset",
        func!(|offset: &mut u64, x: u64| *offset + x),
        100u64,
    )
    .unwrap();
    // Another client finds it by id.
    let found: RemoteContext<u64, u64, u64> =
        RemoteContext::open(server.address(), "offset").unwrap();
    assert_eq!(found.id(), "offset");
    assert!(
        RemoteContext::<String, u64, u64>::open(server.address(), "offset").is_err(),
        "other types"
    );
    assert!(RemoteContext::<u64, u64, u64>::open(server.address(), "missing").is_err());

    let worker = found.worker().unwrap();
    for x in 0..3 {
        worker.enqueue(x).unwrap();
    }
    worker.close();
    assert!(worker.wait(Some(PATIENCE)));
    assert_eq!(
        worker.results().collect::<Result<Vec<_>, _>>().unwrap(),
        [100, 101, 102]
    );

    let slow = RemoteContext::register(server.address(), "slow", func!(cooperative)).unwrap();
    let running: Vec<_> = (0..2).map(|_| slow.worker().unwrap()).collect();
    for worker in &running {
        worker.enqueue(0).unwrap();
    }
    assert!(wait_until(PATIENCE, || running
        .iter()
        .all(|w| w.pid().is_some_and(process_exists))));
    assert_eq!(slow.terminate(PATIENCE).unwrap(), 2);
    for worker in &running {
        assert!(worker.wait(Some(PATIENCE)), "ends with its context");
        assert!(worker.results().last().is_some_and(|r| r.is_err()));
        let pid = worker.pid().unwrap();
        assert!(wait_until(PATIENCE, || !process_exists(pid)));
    }
    drop(context);
    drop(found);
    assert!(
        wait_until(PATIENCE, || RemoteContext::<u64, u64, u64>::open(
            server.address(),
            "offset"
        )
        .is_err()),
        "dropping the registering handle unregisters the context"
    );
}

/// Leaves `<path>.started`, then waits (bounded) for `<path>.go`; the
/// length of `path`.
fn gated(path: String) -> u64 {
    std::fs::write(format!("{path}.started"), b"").expect("write the marker");
    let go = format!("{path}.go");
    assert!(
        wait_until(PATIENCE, || std::path::Path::new(&go).exists()),
        "never let go"
    );
    path.len() as u64
}

/// Waiting on a remote context lets the batches its workers sent finish,
/// then ends their processes; a closed context takes no new workers and no
/// new inputs.
#[test]
fn waiting_on_a_remote_context_ends_its_workers_after_their_work() {
    use processional::worker::RemoteContext;

    let server = server();
    let context = RemoteContext::register(server.address(), "gated", func!(gated)).unwrap();
    let paths: Vec<String> = (0..2)
        .map(|i| marker(&format!("context-wait-{i}"), &WorkerKind::Thread))
        .collect();
    let workers: Vec<_> = paths
        .iter()
        .map(|path| {
            let worker = context.worker().unwrap();
            worker.enqueue(path.clone()).unwrap();
            worker.close();
            worker
        })
        .collect();
    for path in &paths {
        let started = format!("{path}.started");
        assert!(wait_until(PATIENCE, || std::path::Path::new(&started).exists()));
    }
    let pids: Vec<u32> = workers.iter().map(|w| w.pid().unwrap()).collect();

    // Their inputs are running: a wait that cannot wait says "not yet", and
    // ends nothing.
    assert!(!context.wait(Some(Duration::ZERO)).unwrap());
    assert!(pids.iter().all(|&pid| process_exists(pid)));
    assert!(
        context.worker().is_err(),
        "a closed context takes no workers"
    );

    for path in &paths {
        std::fs::write(format!("{path}.go"), b"").unwrap();
    }
    assert!(context.wait(Some(PATIENCE)).unwrap());
    for ((worker, path), &pid) in workers.iter().zip(&paths).zip(&pids) {
        assert!(worker.wait(Some(PATIENCE)));
        assert_eq!(
            worker.results().collect::<Result<Vec<_>, _>>().unwrap(),
            [path.len() as u64],
            "its input ran to its end"
        );
        assert!(
            wait_until(PATIENCE, || !process_exists(pid)),
            "its process ended"
        );
        let _ = std::fs::remove_file(format!("{path}.started"));
        let _ = std::fs::remove_file(format!("{path}.go"));
    }
}

/// A context worker that ended and was dropped leaves no process behind,
/// though its context stays registered.
#[test]
fn a_dropped_context_worker_leaves_no_process() {
    use processional::worker::RemoteContext;

    let server = server();
    let context = RemoteContext::register(server.address(), "square", func!(square)).unwrap();
    let worker = context.worker().unwrap();
    worker.enqueue(3).unwrap();
    worker.close();
    assert!(worker.wait(Some(PATIENCE)));
    assert_eq!(
        worker.results().collect::<Result<Vec<_>, _>>().unwrap(),
        [9]
    );
    let pid = worker.pid().unwrap();
    drop(worker);
    assert!(
        wait_until(PATIENCE, || !process_exists(pid)),
        "the context kept the process of a worker nobody uses"
    );
    assert!(context.worker().is_ok(), "the context goes on");
}

/// A server that `spawn_server` started stops its workers' processes
/// gracefully on SIGTERM (they exit when asked, not by a signal), then dies
/// by SIGTERM.
#[test]
fn sigterm_stops_a_spawned_server_and_its_workers_gracefully() {
    let server = server();
    let worker = Worker::remote(server.address(), func!(cooperative), 0).unwrap();
    let pid = worker.pid().unwrap();
    kill("-TERM", server.pid());
    assert!(worker.wait(Some(PATIENCE)), "the worker ends");
    let error = worker.error().expect("an error");
    // The server stopped the child and said so before it died (had it died
    // first, the worker would only see its connection break).
    assert!(
        matches!(error, WorkerError::Exited { .. } | WorkerError::Lost { .. }),
        "stopped by its server: {error:?}"
    );
    assert!(
        wait_until(PATIENCE, || !process_exists(pid)),
        "its process is gone"
    );
    assert!(
        wait_until(PATIENCE, || !process_exists(server.pid())),
        "the server is gone"
    );
}
