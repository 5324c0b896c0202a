//! The bound on `thread` calls: at most [`MAX_THREAD_CALLS`] run at once in
//! a serving process, each on a pooled thread; more wait in FIFO order and
//! hold no thread while they wait.
//!
//! Without a bound, every pending `thread` call held an OS thread: ten
//! thousand of them made ten thousand threads, and a few tens of thousands
//! ran the host out of pids. A queued `thread` call starts as soon as a
//! running one ends, so a program whose `thread` calls wait for *later*
//! `thread` calls of the same process (beyond the bound) waits forever: raise
//! the bound for it (`PROCESSIONAL_THREAD_CALLS`, read once by the serving
//! process, e.g. set with `SlaveProcessBuilder::env`), or let the later
//! calls be queued calls, which never wait for `thread` calls.

use std::collections::VecDeque;
use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// How many `thread` calls run at once in a serving process, unless
/// [`MAX_THREAD_CALLS_VAR`] says otherwise; further ones wait, in the order
/// they arrived, for one of them to end.
pub const MAX_THREAD_CALLS: usize = 256;

/// The environment variable (of the serving process) that overrides
/// [`MAX_THREAD_CALLS`]; values below 1 count as 1.
pub const MAX_THREAD_CALLS_VAR: &str = "PROCESSIONAL_THREAD_CALLS";

/// A `thread` call to run. One that cannot get a thread is dropped unrun,
/// so its drop must answer its call.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// Starts a thread that runs the closure, or says why it could not (the
/// closure is dropped then).
type Spawn = fn(Box<dyn FnOnce() + Send>) -> io::Result<()>;

/// Runs jobs on at most `limit` threads at once, the others in FIFO order.
pub(crate) struct Bounded {
    limit: usize,
    state: Mutex<State>,
    spawn: Spawn,
}

#[derive(Default)]
struct State {
    running: usize,
    waiting: VecDeque<Job>,
}

impl Bounded {
    /// A runner of at most `limit` (at least 1) jobs at once, starting
    /// threads with `spawn`.
    pub(crate) fn new(limit: usize, spawn: Spawn) -> Bounded {
        Bounded {
            limit: limit.max(1),
            state: Mutex::new(State::default()),
            spawn,
        }
    }

    /// The process's runner of `thread` calls, on processional's pooled
    /// threads.
    pub(crate) fn global() -> &'static Bounded {
        static GLOBAL: OnceLock<Bounded> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let limit = std::env::var(MAX_THREAD_CALLS_VAR)
                .ok()
                .and_then(|value| value.trim().parse().ok())
                .unwrap_or(MAX_THREAD_CALLS);
            Bounded::new(limit, |run| {
                processional_thread::Builder::new()
                    .spawn(run)
                    .map(processional_task::Task::detach)
            })
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a few plain writes: consistent across a panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `job` now on a thread of its own if fewer than the limit run,
    /// else once those before it have started and one has ended.
    pub(crate) fn submit(&'static self, job: Job) {
        let mut state = self.lock();
        if state.running >= self.limit {
            state.waiting.push_back(job);
            return;
        }
        state.running += 1;
        drop(state);
        if let Err(error) = (self.spawn)(Box::new(move || self.run(job))) {
            // The runner was dropped unrun, and its job with it (which
            // answers its call). Its slot is free again; were it the last
            // runner, the jobs queued meanwhile would wait for nobody: they
            // are dropped too.
            log::warn!("processional: cannot start a thread for a `thread` call: {error}");
            let orphans = {
                let mut state = self.lock();
                state.running -= 1;
                if state.running == 0 {
                    std::mem::take(&mut state.waiting)
                } else {
                    VecDeque::new()
                }
            };
            drop(orphans);
        }
    }

    /// Runs `job`, then the waiting ones, until none waits.
    fn run(&self, mut job: Job) {
        loop {
            // A panicking job must not take the slot with it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            let mut state = self.lock();
            match state.waiting.pop_front() {
                Some(next) => job = next,
                None => {
                    state.running -= 1;
                    return;
                }
            }
        }
    }

    /// How many jobs run and how many wait.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.running, state.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Condvar, Mutex};

    use super::*;

    /// Jobs a test holds back until it releases them, counting how many run
    /// at once.
    #[derive(Default)]
    struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
        running: AtomicUsize,
        most: AtomicUsize,
        done: AtomicUsize,
    }

    impl Gate {
        fn job(self: &Arc<Self>) -> Job {
            let gate = self.clone();
            Box::new(move || {
                let now = gate.running.fetch_add(1, Ordering::SeqCst) + 1;
                gate.most.fetch_max(now, Ordering::SeqCst);
                let mut open = gate.open.lock().unwrap();
                while !*open {
                    open = gate.opened.wait(open).unwrap();
                }
                drop(open);
                gate.running.fetch_sub(1, Ordering::SeqCst);
                gate.done.fetch_add(1, Ordering::SeqCst);
            })
        }

        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    fn spawn_std(run: Box<dyn FnOnce() + Send>) -> io::Result<()> {
        std::thread::spawn(run);
        Ok(())
    }

    /// A job that counts its drop (whether it ran or not) in `dropped`.
    fn counted(dropped: &Arc<AtomicUsize>) -> Job {
        struct Count(Arc<AtomicUsize>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Count(dropped.clone());
        Box::new(move || drop(count))
    }

    /// A job submitted while the one runner is starting, kept for
    /// `spawn_fails` to submit.
    static SUBMITTED_WHILE_STARTING: Mutex<Option<(&'static Bounded, Job)>> = Mutex::new(None);

    /// No thread can start (the process is out of threads): the runner is
    /// dropped, after a job was queued behind it.
    fn spawn_fails(run: Box<dyn FnOnce() + Send>) -> io::Result<()> {
        if let Some((bounded, job)) = SUBMITTED_WHILE_STARTING.lock().unwrap().take() {
            bounded.submit(job);
        }
        drop(run);
        Err(io::Error::other("no thread can start"))
    }

    /// Before, a runner that could not start kept its slot: with a limit
    /// of one, every later `thread` call of the process queued behind a
    /// runner that did not exist, and neither it nor the job queued
    /// meanwhile was ever run or answered.
    #[test]
    fn a_runner_that_cannot_start_gives_its_slot_back() {
        let bounded: &'static Bounded = Box::leak(Box::new(Bounded::new(1, spawn_fails)));
        let dropped = Arc::new(AtomicUsize::new(0));
        *SUBMITTED_WHILE_STARTING.lock().unwrap() = Some((bounded, counted(&dropped)));
        bounded.submit(counted(&dropped));
        assert_eq!(bounded.counts(), (0, 0), "the slot and the queue are free");
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            2,
            "both jobs were dropped, to answer their calls"
        );
    }

    #[test]
    fn at_most_the_limit_run_the_rest_wait_in_order() {
        let bounded: &'static Bounded = Box::leak(Box::new(Bounded::new(3, spawn_std)));
        let gate = Arc::new(Gate::default());
        for _ in 0..50 {
            bounded.submit(gate.job());
        }
        let (running, waiting) = bounded.counts();
        assert_eq!((running, waiting), (3, 47));
        gate.open();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while gate.done.load(Ordering::SeqCst) < 50 {
            assert!(
                std::time::Instant::now() < deadline,
                "the jobs did not all run"
            );
            std::thread::yield_now();
        }
        assert!(gate.most.load(Ordering::SeqCst) <= 3);
        while bounded.counts() != (0, 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "a runner kept its slot"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_panicking_job_gives_its_slot_back() {
        let bounded: &'static Bounded = Box::leak(Box::new(Bounded::new(1, spawn_std)));
        let ran = Arc::new(AtomicUsize::new(0));
        bounded.submit(Box::new(|| panic!("a job that panics")));
        let counter = ran.clone();
        bounded.submit(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while ran.load(Ordering::SeqCst) == 0 || bounded.counts() != (0, 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "the second job never ran"
            );
            std::thread::yield_now();
        }
    }
}
