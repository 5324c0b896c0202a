//! Acceptance tests of `TaskSet` and `SharedTask` across runtimes: thread
//! tasks and slave-process tasks in one set, taken back in the order they
//! finish, blocking and async.
//!
//! The finishing order is decided by the test alone: a thread task waits on
//! a channel, a process task waits for a gate file the test creates (the
//! slave checks for it every few milliseconds, up to a bound). No test
//! sleeps to order anything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use processional::{Error, RemoteErrorKind, SlaveProcess, Task, TaskId, TaskSet, func, slave};
use processional_tests::{PATIENCE, kill_hard};

/// How long a slave waits for its gate before giving up (the task then
/// fails with a clear panic instead of hanging the test).
const GATE_PATIENCE: Duration = Duration::from_secs(60);

/// Runs in the slave: waits until the file `path` exists, then answers with
/// its name and this process's id.
fn after_gate(path: String) -> (String, u32) {
    let deadline = Instant::now() + GATE_PATIENCE;
    while !Path::new(&path).exists() {
        assert!(
            Instant::now() < deadline,
            "the gate {path} was not opened within {GATE_PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let name = Path::new(&path)
        .file_name()
        .expect("gates are files")
        .to_string_lossy()
        .into_owned();
    (name, std::process::id())
}

/// A directory of gate files, removed when the test ends.
struct Gates(PathBuf);

impl Gates {
    fn new(test: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "processional-task-set-{}-{}-{test}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the gate directory");
        Gates(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }

    fn open(&self, name: &str) {
        std::fs::write(self.0.join(name), b"open").expect("open a gate");
    }
}

impl Drop for Gates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A process task that finishes once the gate `name` is opened.
fn process_task(process: &SlaveProcess, gates: &Gates, name: &str) -> Task<(String, u32)> {
    process.schedule_with(gates.path(name), func!(after_gate))
}

/// A thread task that finishes once the returned sender sends.
fn thread_task(name: &str) -> (Task<(String, u32)>, mpsc::Sender<()>) {
    let (go, gate) = mpsc::channel::<()>();
    let name = name.to_owned();
    let task = processional::thread(move || {
        gate.recv_timeout(GATE_PATIENCE)
            .expect("the test opens the gate");
        (name, std::process::id())
    });
    (task, go)
}

/// The next task of `set` to finish, within [`PATIENCE`].
fn next<T>(set: &mut TaskSet<T>) -> (TaskId, Result<T, Error>) {
    set.next_timeout(PATIENCE)
        .unwrap_or_else(|| panic!("no task finished within {PATIENCE:?} ({} left)", set.len()))
}

#[test]
fn thread_and_process_tasks_come_back_as_they_finish() {
    let gates = Gates::new("order");
    let first_slave = slave().expect("spawn a slave");
    let second_slave = slave().expect("spawn a slave");
    let mut set = TaskSet::new();

    let (task, open_thread_a) = thread_task("thread-a");
    let thread_a = set.insert(task);
    let process_b = set.insert(process_task(&first_slave, &gates, "process-b"));
    let (task, open_thread_c) = thread_task("thread-c");
    let thread_c = set.insert(task);
    let process_d = set.insert(process_task(&second_slave, &gates, "process-d"));
    assert_eq!(set.len(), 4);

    let me = std::process::id();
    gates.open("process-d");
    let (id, outcome) = next(&mut set);
    assert_eq!(id, process_d);
    assert_eq!(
        outcome.unwrap(),
        ("process-d".to_owned(), second_slave.pid())
    );

    open_thread_a.send(()).unwrap();
    let (id, outcome) = next(&mut set);
    assert_eq!(id, thread_a);
    assert_eq!(outcome.unwrap(), ("thread-a".to_owned(), me));

    gates.open("process-b");
    let (id, outcome) = next(&mut set);
    assert_eq!(id, process_b);
    assert_eq!(
        outcome.unwrap(),
        ("process-b".to_owned(), first_slave.pid())
    );

    open_thread_c.send(()).unwrap();
    let (id, outcome) = next(&mut set);
    assert_eq!(id, thread_c);
    assert_eq!(outcome.unwrap(), ("thread-c".to_owned(), me));

    assert!(set.is_empty());
    assert!(set.next_timeout(PATIENCE).is_none());
}

#[test]
fn async_waits_take_mixed_tasks_back_as_they_finish() {
    let gates = Gates::new("async");
    let process = slave().expect("spawn a slave");
    let mut set = TaskSet::new();
    let process_task = set.insert(process_task(&process, &gates, "process"));
    let (task, open_thread) = thread_task("thread");
    let thread_task = set.insert(task);

    let order = pollster::block_on(async {
        open_thread.send(()).unwrap();
        let (first, outcome) = set.next_async().await.expect("two tasks in the set");
        assert_eq!(outcome.unwrap().0, "thread");
        gates.open("process");
        let (second, outcome) = set.next_async().await.expect("one task in the set");
        assert_eq!(outcome.unwrap().0, "process");
        assert!(set.next_async().await.is_none());
        [first, second]
    });
    assert_eq!(order, [thread_task, process_task]);
}

#[test]
fn failures_of_either_runtime_come_back_with_their_ids() {
    let process = slave().expect("spawn a slave");
    let mut set = TaskSet::<u32>::new();
    let thread_panic = set.insert(processional::thread(|| panic!("thread boom")));
    let process_panic = set.insert(process.schedule(func!(|| -> u32 { panic!("process boom") })));
    let process_value = set.insert(process.schedule(func!(|| 7u32)));
    let thread_value = set.insert(processional::thread(|| 8u32));

    let mut outcomes: HashMap<TaskId, Result<u32, Error>> = HashMap::new();
    while !set.is_empty() {
        let (id, outcome) = next(&mut set);
        assert!(
            outcomes.insert(id, outcome).is_none(),
            "{id} came back twice"
        );
    }
    match &outcomes[&thread_panic] {
        Err(Error::Panicked(report)) => assert_eq!(report.message, "thread boom"),
        other => panic!("expected a local panic, got {other:?}"),
    }
    match &outcomes[&process_panic] {
        Err(Error::Remote(remote)) => {
            assert_eq!(remote.kind, RemoteErrorKind::Panicked);
            assert_eq!(remote.message, "process boom");
        }
        other => panic!("expected a remote panic, got {other:?}"),
    }
    assert_eq!(*outcomes[&process_value].as_ref().unwrap(), 7);
    assert_eq!(*outcomes[&thread_value].as_ref().unwrap(), 8);
}

#[test]
fn many_tasks_of_both_runtimes_each_come_back_once() {
    const EACH: u64 = 100;
    let process = slave().expect("spawn a slave");
    let mut set = TaskSet::new();
    let mut expected = HashMap::new();
    for n in 0..EACH {
        let id = set.insert(process.schedule_with(n, func!(|n: u64| n * 3)));
        expected.insert(id, n * 3);
        let id = set.insert(processional::thread(move || n * 5));
        expected.insert(id, n * 5);
    }
    assert_eq!(set.len() as u64, 2 * EACH);
    while let Some((id, outcome)) = set.next_timeout(PATIENCE) {
        let want = expected.remove(&id).expect("each id comes back once");
        assert_eq!(outcome.unwrap(), want);
    }
    assert!(
        expected.is_empty(),
        "{} tasks did not come back within {PATIENCE:?}",
        expected.len()
    );
}

#[test]
fn a_killed_slave_fails_its_tasks_in_the_set() {
    let gates = Gates::new("killed");
    let process = slave().expect("spawn a slave");
    let mut set = TaskSet::new();
    let running = set.insert(process_task(&process, &gates, "never-opened"));
    let queued = set.insert(process_task(&process, &gates, "never-opened-either"));
    let (task, open_thread) = thread_task("thread");
    let thread = set.insert(task);

    kill_hard(process.pid());
    let mut failed = Vec::new();
    for _ in 0..2 {
        let (id, outcome) = next(&mut set);
        assert!(
            outcome.as_ref().is_err_and(Error::is_worker_lost),
            "{id}: {outcome:?}"
        );
        failed.push(id);
    }
    failed.sort();
    assert_eq!(failed, [running, queued]);

    open_thread.send(()).unwrap();
    let (id, outcome) = next(&mut set);
    assert_eq!(id, thread);
    assert_eq!(outcome.unwrap().0, "thread");
}

#[test]
fn a_shared_process_task_is_waited_for_by_many_threads() {
    let gates = Gates::new("shared");
    let process = slave().expect("spawn a slave");
    let shared = process_task(&process, &gates, "shared").shared();
    let (started, waiting) = mpsc::channel();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let shared = shared.clone();
            let started = started.clone();
            std::thread::spawn(move || {
                started.send(()).unwrap();
                shared.wait_timeout(PATIENCE)
            })
        })
        .collect();
    for _ in 0..4 {
        waiting.recv_timeout(PATIENCE).expect("every waiter starts");
    }
    gates.open("shared");
    let awaited = pollster::block_on(shared.clone());
    assert_eq!(awaited.unwrap(), ("shared".to_owned(), process.pid()));
    for waiter in waiters {
        let outcome = waiter
            .join()
            .unwrap()
            .unwrap_or_else(|| panic!("a waiter got nothing within {PATIENCE:?}"));
        assert_eq!(outcome.unwrap(), ("shared".to_owned(), process.pid()));
    }
}
