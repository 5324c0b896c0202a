//! [`thread`]: run a function on another thread, reusing idle threads.
//!
//! Threads that finish a call wait a while ([`IDLE_TIMEOUT`]) for another
//! one before they exit. A call is handed to the most recently idle thread
//! with the same name and stack size, or to a new thread if none is idle.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread as std_thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use processional_task::{Backoff, Completer, Error, Task};

use crate::call::run_call;

/// How long an idle cached thread waits for another call before it exits.
/// A burst of [`thread()`] calls reuses the same threads; a program that
/// stops calling has no idle threads left after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of cached threads started without an explicit name.
const DEFAULT_NAME: &str = "processional-worker";

/// Runs `f` on another thread and returns the [`Task`] of its value.
///
/// The thread comes from a cache: an idle thread left by an earlier call is
/// reused, and a new one is started only when none is idle. Idle threads
/// exit after [`IDLE_TIMEOUT`]. Because threads are reused, **thread-local
/// variables persist between calls** that run on the same thread: a call may
/// find values left by an earlier one, and a thread-local's destructor runs
/// only when the thread eventually exits. Use
/// [`Builder::dedicated`] for a fresh thread that ends with the call.
///
/// A panic in `f` ends the call with [`Error::Panicked`]; the thread
/// survives and is reused. If no thread can be started, the task fails with
/// [`Error::Io`]. `f` and its value cross threads, hence their `Send`
/// bounds (see [the `Send` bounds](https://docs.rs/processional/latest/processional/#send-bounds) of every runtime).
///
/// ```
/// let task = processional_thread::thread(|| 6 * 7);
/// assert_eq!(task.wait().unwrap(), 42);
/// ```
pub fn thread<F, T>(f: F) -> Task<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match Builder::new().spawn(f) {
        Ok(task) => task,
        Err(error) => Task::ready(Err(Error::io("cannot start a thread", error))),
    }
}

/// Configures the thread that runs a call: name, stack size, cached or
/// dedicated.
///
/// ```
/// use processional_thread::Builder;
///
/// let task = Builder::new()
///     .name("resizer")
///     .stack_size(8 << 20)
///     .spawn(|| std::thread::current().name().map(str::to_owned))?;
/// assert_eq!(task.wait().unwrap().as_deref(), Some("resizer"));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Builder {
    config: WorkerConfig,
    dedicated: bool,
}

impl Builder {
    /// A builder for a cached thread with default name and stack size.
    pub fn new() -> Self {
        Builder::default()
    }

    /// The thread's name. Cached threads are only reused for calls asking for
    /// the same name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = Some(name.into());
        self
    }

    /// The thread's stack size in bytes. Cached threads are only reused for
    /// calls asking for the same size.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.config.stack_size = Some(bytes);
        self
    }

    /// Runs the call on a fresh thread that exits after it, instead of a
    /// cached one: it starts with pristine thread-locals.
    pub fn dedicated(mut self) -> Self {
        self.dedicated = true;
        self
    }

    /// Runs `f` on the configured thread and returns the [`Task`] of its
    /// value; fails only if a needed thread cannot be started.
    pub fn spawn<F, T>(self, f: F) -> io::Result<Task<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (task, completer) = Task::pending();
        let job: Job = Box::new(CallJob { f, completer });
        if self.dedicated {
            start_dedicated(&self.config, job)?;
        } else {
            POOL.submit(self.config, job)?;
        }
        Ok(task)
    }
}

/// What a thread is started with; cached threads are shared by equal
/// configurations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct WorkerConfig {
    name: Option<String>,
    stack_size: Option<usize>,
}

impl WorkerConfig {
    fn builder(&self, default_name: &str) -> std_thread::Builder {
        let name = self.name.as_deref().unwrap_or(default_name);
        let builder = std_thread::Builder::new().name(name.to_owned());
        match self.stack_size {
            Some(bytes) => builder.stack_size(bytes),
            None => builder,
        }
    }
}

/// A call waiting for a thread.
trait RunJob: Send {
    /// Runs the call; `before_complete` runs right before the outcome is
    /// delivered.
    fn run(self: Box<Self>, before_complete: &dyn Fn());
}

type Job = Box<dyn RunJob>;

struct CallJob<F, T> {
    f: F,
    completer: Completer<T>,
}

impl<F, T> RunJob for CallJob<F, T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    fn run(self: Box<Self>, before_complete: &dyn Fn()) {
        let CallJob { f, completer } = *self;
        run_call(completer, f, before_complete);
    }
}

fn start_dedicated(config: &WorkerConfig, job: Job) -> io::Result<()> {
    config
        .builder("processional-thread")
        .spawn(move || job.run(&|| {}))
        .map(drop)
}

/// The next call for a cached thread, waiting briefly without blocking
/// first (calls often come in quick succession).
fn receive(jobs: &Receiver<Job>, timeout: Duration) -> std::result::Result<Job, RecvTimeoutError> {
    let mut backoff = Backoff::new();
    loop {
        match jobs.try_recv() {
            Ok(job) => return Ok(job),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) if backoff.is_exhausted() => {
                return jobs.recv_timeout(timeout);
            }
            Err(TryRecvError::Empty) => backoff.snooze(),
        }
    }
}

/// An idle cached thread, as seen by callers.
struct IdleWorker {
    config: WorkerConfig,
    jobs: Sender<Job>,
}

/// The cache of idle threads.
struct Pool {
    /// Most recently idle last.
    idle: Mutex<Vec<Arc<IdleWorker>>>,
    idle_timeout: Duration,
}

static POOL: Pool = Pool {
    idle: Mutex::new(Vec::new()),
    idle_timeout: IDLE_TIMEOUT,
};

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Vec<Arc<IdleWorker>>> {
        // Only pushes and removals happen under the lock: never inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn submit(&'static self, config: WorkerConfig, mut job: Job) -> io::Result<()> {
        let worker = {
            let mut idle = self.lock();
            idle.iter()
                .rposition(|worker| worker.config == config)
                .map(|position| idle.remove(position))
        };
        if let Some(worker) = worker {
            match worker.jobs.send(job) {
                Ok(()) => return Ok(()),
                // The thread died (a destructor panicked in it): start another.
                Err(returned) => job = returned.into_inner(),
            }
        }
        self.start(config, job)
    }

    fn start(&'static self, config: WorkerConfig, job: Job) -> io::Result<()> {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        let worker = Arc::new(IdleWorker {
            config: config.clone(),
            jobs: sender,
        });
        config
            .builder(DEFAULT_NAME)
            .spawn(move || self.serve(worker, receiver, job))
            .map(drop)
    }

    /// The loop of a cached thread.
    fn serve(&self, me: Arc<IdleWorker>, jobs: Receiver<Job>, first: Job) {
        let mut job = first;
        loop {
            // Become idle before delivering the outcome, so that the caller's
            // next call finds this thread.
            job.run(&|| self.lock().push(me.clone()));
            job = match receive(&jobs, self.idle_timeout) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    let mut idle = self.lock();
                    if let Some(position) = idle.iter().position(|worker| Arc::ptr_eq(worker, &me))
                    {
                        idle.remove(position);
                        return;
                    }
                    drop(idle);
                    // A caller took this thread off the idle list: its call
                    // is on the way.
                    match jobs.recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use processional_task::Result;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    /// The bound on every wait of these tests (never reached unless broken).
    const PATIENCE: Duration = Duration::from_secs(60);

    #[test]
    fn a_running_task_is_not_finished_until_it_returns() {
        let (started, running) = crossbeam_channel::bounded(0);
        let (release, gate) = crossbeam_channel::bounded::<()>(0);
        let task = thread(move || {
            started.send(()).unwrap();
            gate.recv_timeout(PATIENCE)
                .expect("the test opens the gate");
            "hello"
        });
        running.recv_timeout(PATIENCE).expect("the call started");
        // The call is blocked on the gate: it cannot have returned.
        assert!(!task.is_finished());
        release.send_timeout((), PATIENCE).unwrap();
        assert_eq!(task.wait_timeout(PATIENCE).ok().unwrap().unwrap(), "hello");
    }

    fn deep(level: u32) -> u32 {
        if level == 0 {
            panic!("bottom of the stack reached");
        }
        deep(level - 1) + 1
    }

    #[test]
    fn a_nested_panic_propagates_its_message() {
        let error = thread(|| deep(20)).wait().unwrap_err();
        assert!(error.is_panic());
        assert_eq!(error.message(), Some("bottom of the stack reached"));

        // Through a task waited for inside another task.
        let error = thread(|| thread(|| deep(5)).wait().unwrap())
            .wait()
            .unwrap_err();
        assert!(
            error
                .message()
                .unwrap()
                .contains("bottom of the stack reached"),
            "{error}"
        );
    }

    /// A pool of this test's own: calls of other tests (which share the
    /// process-wide pool) cannot take its idle threads.
    fn private_pool(idle_timeout: Duration) -> &'static Pool {
        Box::leak(Box::new(Pool {
            idle: Mutex::new(Vec::new()),
            idle_timeout,
        }))
    }

    /// Idle threads of these pools never time out during a test.
    fn long_lived_pool() -> &'static Pool {
        private_pool(Duration::from_secs(3600))
    }

    fn short_lived_pool() -> &'static Pool {
        private_pool(Duration::from_millis(5))
    }

    #[test]
    fn idle_threads_are_reused() {
        let pool = long_lived_pool();
        let first = submit(pool, || std_thread::current().id()).wait().unwrap();
        // The thread marks itself idle before delivering the outcome, so it
        // is the pool's only idle thread by now, and the next call gets it.
        assert_eq!(pool.lock().len(), 1);
        let second = submit(pool, || std_thread::current().id()).wait().unwrap();
        assert_eq!(second, first);
        assert_eq!(pool.lock().len(), 1);
    }

    fn submit<T: Send + 'static>(
        pool: &'static Pool,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Task<T> {
        let (task, completer) = Task::pending();
        pool.submit(WorkerConfig::default(), Box::new(CallJob { f, completer }))
            .unwrap();
        task
    }

    #[test]
    fn idle_threads_exit_after_the_idle_timeout() {
        let pool = short_lived_pool();
        let (exited, exits) = crossbeam_channel::bounded(1);
        struct ExitProbe(crossbeam_channel::Sender<()>);
        impl Drop for ExitProbe {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        std::thread_local!(static PROBE: std::cell::RefCell<Option<ExitProbe>> = const { std::cell::RefCell::new(None) });
        submit(pool, move || {
            PROBE.with(|probe| *probe.borrow_mut() = Some(ExitProbe(exited)))
        })
        .wait()
        .unwrap();
        exits.recv_timeout(Duration::from_secs(60)).unwrap();
        assert!(pool.lock().is_empty());
        assert_eq!(submit(pool, || 3).wait().unwrap(), 3);
    }

    #[test]
    fn concurrent_callers_race_with_expiring_threads() {
        let pool = short_lived_pool();
        let callers: Vec<_> = (0..4u64)
            .map(|caller| {
                std_thread::spawn(move || {
                    for i in 0..300u64 {
                        if i % 50 == 0 {
                            // Let some threads expire meanwhile.
                            std_thread::sleep(Duration::from_millis(6));
                        }
                        let task = submit(pool, move || caller * 1000 + i);
                        assert_eq!(task.wait().unwrap(), caller * 1000 + i);
                    }
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap();
        }
    }

    #[test]
    fn many_concurrent_calls_all_complete() {
        let tasks: Vec<_> = (0..2_000u32).map(|i| thread(move || i * 3)).collect();
        for (i, task) in (0u32..).zip(tasks) {
            assert_eq!(task.wait().unwrap(), i * 3);
        }
    }

    #[test]
    fn thread_locals_persist_on_reused_threads_but_not_dedicated_ones() {
        std::thread_local!(static MARK: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
        let name = "thread-local-probe";
        let first = Builder::new()
            .name(name)
            .spawn(|| {
                MARK.with(|mark| mark.set(7));
                std_thread::current().id()
            })
            .unwrap()
            .wait()
            .unwrap();
        let (id, mark) = Builder::new()
            .name(name)
            .spawn(|| (std_thread::current().id(), MARK.with(|mark| mark.get())))
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(id, first, "the only idle thread of that name is reused");
        assert_eq!(mark, 7);

        let (id, mark) = Builder::new()
            .name(name)
            .dedicated()
            .spawn(|| (std_thread::current().id(), MARK.with(|mark| mark.get())))
            .unwrap()
            .wait()
            .unwrap();
        assert_ne!(id, first);
        assert_eq!(mark, 0);
    }

    #[test]
    fn builder_sets_name_and_stack_size() {
        let name = Builder::new()
            .name("big-stack")
            .stack_size(16 << 20)
            .spawn(|| {
                // Would overflow a default 2 MiB stack.
                let buffer = [1u8; 8 << 20];
                assert_eq!(std::hint::black_box(&buffer)[12345], 1);
                std_thread::current().name().map(str::to_owned)
            })
            .unwrap()
            .wait()
            .unwrap();
        assert_eq!(name.as_deref(), Some("big-stack"));
    }

    #[test]
    fn cancel_is_observed_at_a_checkpoint() {
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let task = thread(move || -> Result<u32> {
            flag.store(true, Ordering::SeqCst);
            loop {
                crate::checkpoint()?;
                std_thread::sleep(Duration::from_millis(1));
            }
        });
        while !started.load(Ordering::SeqCst) {
            std_thread::yield_now();
        }
        let outcome = task
            .terminate(Duration::from_secs(60))
            .expect("the call checks its token every millisecond");
        assert!(matches!(outcome, Ok(Err(Error::Cancelled))));
    }

    #[test]
    fn uncollected_thread_errors_are_logged_once() {
        crate::test_log::install();
        let marker = "detached-thread-panic-51be";
        let pool = long_lived_pool();
        let (ran_on, ran) = crossbeam_channel::bounded(1);
        let (release, gate) = crossbeam_channel::bounded::<()>(0);
        submit(pool, move || {
            ran_on.send(std_thread::current().id()).unwrap();
            let _ = gate.recv_timeout(PATIENCE);
            panic!("{marker}");
        })
        .detach();
        release.send_timeout((), PATIENCE).unwrap();
        let deadline = Instant::now() + PATIENCE;
        while crate::test_log::count(marker) == 0 {
            assert!(Instant::now() < deadline, "the error was never logged");
            std_thread::sleep(Duration::from_millis(1));
        }
        // The thread went idle before delivering (and logging) the outcome:
        // the pool's only thread runs the next call once the detached call,
        // logging included, is over. Nothing of it can log after that.
        let next = submit(pool, || std_thread::current().id()).wait().unwrap();
        assert_eq!(
            next,
            ran.recv_timeout(PATIENCE).unwrap(),
            "one thread ran both calls"
        );
        assert_eq!(crate::test_log::count(marker), 1);
    }
}
