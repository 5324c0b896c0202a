//! [`Context`]: a state server and the processes that share it: spawn,
//! wait, retry, stop (the whole process tree), and a parallel map.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use processional_process::{Func, ServerBuilder, SlaveProcess, SlaveProcessBuilder, func};
use processional_task::{Error, ExitReason};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Failure, StateError};
use crate::hub::{DEFAULT_MAX_WAITS, Limits};
use crate::state::{DEFAULT_NAMESPACE, Link, State, remember};
use crate::store::{DEFAULT_HISTORY, DEFAULT_HISTORY_BYTES};
use crate::sys;

/// The namespace where [`Context::map_keep`] keeps results.
pub const MAP_NAMESPACE: &str = "processional.map";

/// How long a stopped process has between SIGTERM and SIGKILL unless
/// [`ContextBuilder::grace`] says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(1);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// When a failed process of a context is started again.
///
/// ```
/// use std::time::Duration;
/// use processional_state::Retry;
///
/// let retry = Retry::times(5).delay(Duration::from_millis(10)).on_exit_codes(&[3]);
/// # let _ = retry;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// How many retries at most (`None`: as many as it takes).
    pub max: Option<u32>,
    /// The pause before each retry.
    pub delay: Duration,
    /// Retry when the function returns an error.
    pub on_error: bool,
    /// Retry when it panics.
    pub on_panic: bool,
    /// Retry on these exit codes (`None`: any).
    pub on_exit_codes: Option<Vec<i32>>,
    /// Retry when killed by one of these signals (by default none: a
    /// killed process was most likely killed on purpose).
    pub on_signals: Vec<i32>,
}

impl Default for Retry {
    fn default() -> Self {
        Retry::never()
    }
}

impl Retry {
    /// No retry.
    pub fn never() -> Retry {
        Retry {
            max: Some(0),
            delay: Duration::ZERO,
            on_error: true,
            on_panic: true,
            on_exit_codes: None,
            on_signals: Vec::new(),
        }
    }

    /// At most `retries` retries (so `retries + 1` tries), on errors,
    /// panics and exit codes.
    pub fn times(retries: u32) -> Retry {
        Retry {
            max: Some(retries),
            ..Retry::never()
        }
    }

    /// Retries until it succeeds or the context stops it.
    pub fn forever() -> Retry {
        Retry {
            max: None,
            ..Retry::never()
        }
    }

    /// The pause before each retry.
    pub fn delay(mut self, delay: Duration) -> Retry {
        self.delay = delay;
        self
    }

    /// Retry on errors the function returns (default yes).
    pub fn on_error(mut self, yes: bool) -> Retry {
        self.on_error = yes;
        self
    }

    /// Retry on panics (default yes).
    pub fn on_panic(mut self, yes: bool) -> Retry {
        self.on_panic = yes;
        self
    }

    /// Retry only on these exit codes.
    pub fn on_exit_codes(mut self, codes: &[i32]) -> Retry {
        self.on_exit_codes = Some(codes.to_vec());
        self
    }

    /// Also retry when killed by `signal`.
    pub fn on_signal(mut self, signal: i32) -> Retry {
        self.on_signals.push(signal);
        self
    }

    fn covers(&self, failure: &Failure, retries_so_far: u32) -> bool {
        if self.max.is_some_and(|max| retries_so_far >= max) {
            return false;
        }
        match failure {
            Failure::Error(_) => self.on_error,
            Failure::Panic(_) => self.on_panic,
            Failure::Exit(code) => self.on_exit_codes.as_ref().is_none_or(|c| c.contains(code)),
            Failure::Signal(signal) => self.on_signals.contains(signal),
            Failure::Lost(_) => false,
        }
    }
}

/// How a context's process ended, as it keeps it.
enum Outcome<R> {
    Done(R),
    /// Done, and its value was taken by [`Process::wait`].
    Taken,
    Failed(Failure),
    Stopped,
}

/// What a process's supervisor and its handles share.
struct Slot<R> {
    name: String,
    pid: AtomicU32,
    /// A pidfd of the current try's process (`None` without pidfds): it
    /// tells whether that very process is reaped yet.
    leader: Mutex<Option<Arc<OwnedFd>>>,
    tries: AtomicU32,
    stopping: AtomicBool,
    outcome: Mutex<Option<Outcome<R>>>,
    /// Notified when the outcome is set, and when a stop begins (to cut a
    /// retry delay short).
    changed: Condvar,
}

impl<R> Slot<R> {
    fn finish(&self, outcome: Outcome<R>) {
        // Its last try is over: a stop from now on leaves its group alone
        // (see `stop`), so its pidfd has no use. Closed here, not when the
        // context drops: a context keeps every slot it made.
        drop(lock(&self.leader).take());
        *lock(&self.outcome) = Some(outcome);
        self.changed.notify_all();
    }

    /// Waits until the outcome is set, or `deadline` passes.
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        let mut outcome = lock(&self.outcome);
        loop {
            if outcome.is_some() {
                return true;
            }
            match deadline {
                None => {
                    outcome = self
                        .changed
                        .wait(outcome)
                        .unwrap_or_else(|p| p.into_inner())
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    outcome = self
                        .changed
                        .wait_timeout(outcome, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    fn error(&self, failure: &Failure) -> StateError {
        StateError::Process {
            name: self.name.clone(),
            pid: self.pid.load(Ordering::Acquire),
            failure: failure.clone(),
        }
    }

    /// Stops the process and its tree: SIGTERM to its group, `grace`, then
    /// SIGKILL. The supervisor retries no more.
    ///
    /// The group is signalled only while it is known to be the process's:
    /// while the process is not reaped (its pid, the group's id, is
    /// reserved even for a zombie), and after that only while the group is
    /// seen non-empty without a break (every few milliseconds: a pid is not
    /// reused that fast). Once reaped with its group empty, the id may be a
    /// stranger's: a process that ended before the stop has its group left
    /// alone (what it left running there is not stopped).
    fn stop(&self, grace: Duration) {
        self.stopping.store(true, Ordering::Release);
        let running = {
            let outcome = lock(&self.outcome);
            self.changed.notify_all();
            outcome.is_none()
        };
        let pid = self.pid.load(Ordering::Acquire);
        if pid == 0 {
            return;
        }
        let leader = lock(&self.leader).clone();
        // Whether the process is not reaped yet. Without a pidfd: while it
        // runs (its pid, reaped, may be someone else's).
        let unreaped = || match &leader {
            Some(pidfd) => sys::pidfd_signal(pidfd.as_fd(), 0).unwrap_or(false),
            None => running && lock(&self.outcome).is_none(),
        };
        let signal_leader = |signal| match &leader {
            Some(pidfd) => drop(sys::pidfd_signal(pidfd.as_fd(), signal)),
            None if unreaped() => drop(sys::signal_process(pid, signal)),
            None => {}
        };
        let mut vouched = unreaped();
        if vouched {
            let _ = sys::signal_group(pid, sys::SIGTERM);
        }
        // The process itself too, in case it has not made its group yet.
        signal_leader(sys::SIGTERM);
        let deadline = Instant::now().checked_add(grace);
        loop {
            vouched = unreaped() || (vouched && sys::group_exists(pid));
            if !vouched || deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if vouched {
            let _ = sys::signal_group(pid, sys::SIGKILL);
        }
        signal_leader(sys::SIGKILL);
    }
}

/// What a context needs of each process, whatever its value type.
trait Supervised: Send + Sync {
    fn wait_until(&self, deadline: Option<Instant>) -> bool;
    fn failure(&self) -> Option<StateError>;
    fn stop(&self, grace: Duration);
    fn name(&self) -> &str;
}

impl<R: Send> Supervised for Slot<R> {
    fn wait_until(&self, deadline: Option<Instant>) -> bool {
        Slot::wait_until(self, deadline)
    }

    fn failure(&self) -> Option<StateError> {
        match &*lock(&self.outcome) {
            Some(Outcome::Failed(failure)) => Some(self.error(failure)),
            Some(Outcome::Stopped) => Some(StateError::Stopped),
            _ => None,
        }
    }

    fn stop(&self, grace: Duration) {
        Slot::stop(self, grace)
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// A process of a [`Context`]: wait for its value, stop it, see its pid
/// and how many times it was started.
///
/// ```
/// use processional_state::{Context, Failure, State, StateError, func};
/// # fn main() -> Result<(), StateError> {
/// let context = Context::new()?;
/// let ok = context.spawn(func!(|_: State, x: u32| Ok::<_, StateError>(x * 2)), 21)?;
/// assert_ne!(ok.pid(), std::process::id());
/// assert_eq!(ok.wait(None)?, 42);
///
/// let failing = context.spawn(func!(|_: State, code: i32| -> Result<(), StateError> {
///     std::process::exit(code)
/// }), 3)?;
/// match failing.wait(None) {
///     Err(error @ StateError::Process { failure: Failure::Exit(3), .. }) => {
///         assert_eq!(error.exit_code(), Some(3));
///     }
///     other => panic!("unexpected: {other:?}"),
/// }
/// # Ok(())
/// # }
/// ```
pub struct Process<R> {
    slot: Arc<Slot<R>>,
    grace: Duration,
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.slot.name)
            .field("pid", &self.pid())
            .field("tries", &self.tries())
            .finish()
    }
}

impl<R> Process<R> {
    /// Its name in the context.
    pub fn name(&self) -> &str {
        &self.slot.name
    }

    /// The process id of its current (or last) try; 0 before it started.
    pub fn pid(&self) -> u32 {
        self.slot.pid.load(Ordering::Acquire)
    }

    /// How many tries were started so far. Its supervisor thread counts a
    /// try as it starts it, so right after [`Context::spawn`] returns this
    /// may still be 0; once the process has finished it is final.
    pub fn tries(&self) -> u32 {
        self.slot.tries.load(Ordering::Acquire)
    }

    /// Whether it finished (succeeded, failed for good, or was stopped).
    pub fn is_finished(&self) -> bool {
        lock(&self.slot.outcome).is_some()
    }

    /// Waits for its value, at most `timeout` (`None`: as long as it
    /// takes). A failure (after the retries) is [`StateError::Process`],
    /// whose [`Failure`] carries the exit code, signal or error.
    ///
    /// After a [`StateError::TimedOut`] it can be waited for again. The
    /// value goes to the first wait that gets it; a later one answers
    /// [`StateError::Stopped`].
    pub fn wait(&self, timeout: Option<Duration>) -> Result<R, StateError> {
        // A timeout past any instant (`Duration::MAX`) is no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        if !self.slot.wait_until(deadline) {
            return Err(StateError::TimedOut {
                operation: format!("waiting for process {}", self.slot.name),
                after: timeout.unwrap_or_default(),
            });
        }
        let mut outcome = lock(&self.slot.outcome);
        match outcome.take() {
            Some(Outcome::Done(value)) => {
                *outcome = Some(Outcome::Taken);
                Ok(value)
            }
            Some(Outcome::Failed(failure)) => {
                let error = self.slot.error(&failure);
                *outcome = Some(Outcome::Failed(failure));
                Err(error)
            }
            Some(Outcome::Taken) => {
                *outcome = Some(Outcome::Taken);
                Err(StateError::Stopped)
            }
            Some(Outcome::Stopped) | None => {
                *outcome = Some(Outcome::Stopped);
                Err(StateError::Stopped)
            }
        }
    }

    /// Stops it and every process it started (SIGTERM to its process group,
    /// the context's grace period, then SIGKILL); it is not retried.
    /// A process that already ended and was reaped has its group left
    /// alone (the group's id may be a stranger's by then), so what it left
    /// running is not stopped.
    pub fn stop(&self) {
        self.slot.stop(self.grace);
    }
}

/// Options of a [`Context`].
///
/// **The history is bounded:** the server keeps the last
/// [`history`](Self::history) changes of each namespace
/// ([`DEFAULT_HISTORY`] unless told) for buffered [`Watcher`](crate::Watcher)s.
/// A watcher further behind gets [`StateError::Compacted`] once, with the
/// namespace as it is now, and goes on from there: never a silent gap.
///
/// ```
/// use processional_state::{ContextBuilder, Read, StateError};
/// # fn main() -> Result<(), StateError> {
/// let context = ContextBuilder::new().history(4).start()?;
/// let state = context.state();
/// let mut watcher = state.watch()?;
/// for n in 0..10u32 {
///     state.set("n", &n)?; // more changes than the history keeps
/// }
/// match watcher.next() {
///     Some(Err(StateError::Compacted(compacted))) => {
///         assert_eq!(compacted.snapshot.get::<u32>("n")?, Some(9)); // the state now
///     }
///     other => panic!("expected Compacted, got {other:?}"),
/// }
/// state.set("n", &10u32)?;
/// assert!(watcher.next().is_some_and(|change| change.is_ok())); // and on from there
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ContextBuilder {
    address: Option<String>,
    limits: Limits,
    grace: Duration,
}

impl Default for ContextBuilder {
    fn default() -> Self {
        ContextBuilder {
            address: None,
            limits: Limits {
                history: DEFAULT_HISTORY,
                history_bytes: DEFAULT_HISTORY_BYTES,
                max_waits: DEFAULT_MAX_WAITS,
            },
            grace: DEFAULT_GRACE,
        }
    }
}

static SERVERS: AtomicU64 = AtomicU64::new(0);

impl ContextBuilder {
    /// The options by default: a server on a fresh socket in this user's
    /// runtime directory, at most [`DEFAULT_HISTORY`] changes and
    /// [`DEFAULT_HISTORY_BYTES`] of them kept, [`DEFAULT_MAX_WAITS`] waits
    /// parked per connection, stops after [`DEFAULT_GRACE`].
    pub fn new() -> ContextBuilder {
        ContextBuilder::default()
    }

    /// Where the server listens (`unix:/path`, `tcp://host:port`, …).
    pub fn address(mut self, address: &str) -> ContextBuilder {
        self.address = Some(address.to_owned());
        self
    }

    /// How many changes the server keeps for watchers (at least 1;
    /// [`DEFAULT_HISTORY`] by default). A watcher further behind gets
    /// [`StateError::Compacted`].
    pub fn history(mut self, changes: usize) -> ContextBuilder {
        self.limits.history = changes;
        self
    }

    /// How many bytes of changes ([`Change::size`](crate::Change::size):
    /// namespace, keys and values) the server keeps for watchers
    /// ([`DEFAULT_HISTORY_BYTES`] by default); the last change stays
    /// whatever its size.
    pub fn history_bytes(mut self, bytes: usize) -> ContextBuilder {
        self.limits.history_bytes = bytes;
        self
    }

    /// How many waits (`when_*`) and watcher polls one connection (one per
    /// process) may have parked on the server at once
    /// ([`DEFAULT_MAX_WAITS`] by default); past that, a wait or watcher
    /// gets [`StateError::TooManyWaits`].
    pub fn max_waits(mut self, waits: usize) -> ContextBuilder {
        self.limits.max_waits = waits;
        self
    }

    /// How long a stopped process has between SIGTERM and SIGKILL.
    pub fn grace(mut self, grace: Duration) -> ContextBuilder {
        self.grace = grace;
        self
    }

    /// Starts the state server (a process of this program) and returns the
    /// context that owns it.
    pub fn start(self) -> Result<Context, StateError> {
        let address = match self.address {
            Some(address) => address,
            None => format!(
                "unix:{}/state-{}-{}.sock",
                processional_process::runtime_dir()?.display(),
                std::process::id(),
                SERVERS.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let server = ServerBuilder::new(&address)?.persistent(true).spawn()?;
        let link = Arc::new(Link::new(address.clone(), server.clone()));
        remember(&link);
        let state = State::from_link(link, DEFAULT_NAMESPACE);
        state.register_services()?;
        state.configure(self.limits)?;
        Ok(Context {
            state,
            server: Some(server),
            grace: self.grace,
            processes: Mutex::new(Vec::new()),
            counter: AtomicU32::new(0),
            workers: Mutex::new(Vec::new()),
        })
    }

    /// Attaches to the state server at `address` (someone else's): dropping
    /// the context stops its processes, not the server.
    pub fn connect(self, address: &str) -> Result<Context, StateError> {
        Ok(Context {
            state: State::connect(address)?,
            server: None,
            grace: self.grace,
            processes: Mutex::new(Vec::new()),
            counter: AtomicU32::new(0),
            workers: Mutex::new(Vec::new()),
        })
    }
}

/// A state server and the processes that share it.
///
/// [`Context::new`] starts a server (a process of this program);
/// [`Context::connect`] attaches to one. [`spawn`](Self::spawn) starts a
/// process running a function with its own [`State`] handle;
/// [`wait`](Self::wait) waits for all of them within one budget. Dropping
/// the context stops every process it started, with the processes they
/// started (each runs in a process group of its own), and the server if it
/// started it.
///
/// ```
/// use processional_state::{Context, State, StateError, func};
///
/// fn count(state: State, times: u32) -> Result<u32, StateError> {
///     for _ in 0..times {
///         state.increment("count", 1)?;
///     }
///     Ok(times)
/// }
///
/// # fn main() -> Result<(), StateError> {
/// let context = Context::new()?;
/// let workers = context.spawn_map(func!(count), [10u32, 20, 30])?;
/// context.wait(Some(std::time::Duration::from_secs(60)))?;
/// assert_eq!(context.state().get::<i64>("count")?, Some(60));
/// # drop(workers);
/// # Ok(())
/// # }
/// ```
pub struct Context {
    state: State,
    server: Option<SlaveProcess>,
    grace: Duration,
    processes: Mutex<Vec<Arc<dyn Supervised>>>,
    counter: AtomicU32,
    /// Slaves kept for [`map`](Self::map).
    workers: Mutex<Vec<SlaveProcess>>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("address", &self.state.address())
            .field("owns_server", &self.server.is_some())
            .field("processes", &lock(&self.processes).len())
            .finish()
    }
}

/// Turns how a try ended into a failure.
fn failure_of(error: &Error) -> Failure {
    match error {
        Error::Exited(ExitReason::Code(code)) => Failure::Exit(*code),
        Error::Exited(ExitReason::Signal(signal)) => Failure::Signal(*signal),
        Error::Panicked(report) => Failure::Panic(report.to_string()),
        Error::Remote(remote) => Failure::Panic(remote.message.clone()),
        other => Failure::Lost(other.to_string()),
    }
}

impl Context {
    /// Starts a state server with the default options (see
    /// [`ContextBuilder`]).
    pub fn new() -> Result<Context, StateError> {
        ContextBuilder::new().start()
    }

    /// Attaches to the state server at `address`.
    pub fn connect(address: &str) -> Result<Context, StateError> {
        ContextBuilder::new().connect(address)
    }

    /// A handle to the state (namespace [`DEFAULT_NAMESPACE`]).
    pub fn state(&self) -> State {
        self.state.clone()
    }

    /// The server's address.
    pub fn address(&self) -> &str {
        self.state.address()
    }

    /// Starts a process running `f(state, args)`, where `state` is a handle
    /// of its own to this context's state.
    pub fn spawn<A, R, E, F>(&self, f: Func<F>, args: A) -> Result<Process<R>, StateError>
    where
        A: Serialize + DeserializeOwned + Clone + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        E: fmt::Display,
        F: Fn(State, A) -> Result<R, E> + Copy + Send + Sync + 'static,
    {
        self.spawn_with(Retry::never(), f, args)
    }

    /// [`spawn`](Self::spawn), started again on the failures `retry` covers.
    /// Each try is a fresh process; the context stopping it ends the retries.
    pub fn spawn_with<A, R, E, F>(
        &self,
        retry: Retry,
        f: Func<F>,
        args: A,
    ) -> Result<Process<R>, StateError>
    where
        A: Serialize + DeserializeOwned + Clone + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        E: fmt::Display,
        F: Fn(State, A) -> Result<R, E> + Copy + Send + Sync + 'static,
    {
        let shipped = f.pass_to(func!(|f: Func<F>,
                                       (state, args): (State, A)|
         -> Result<R, String> {
            // Its own process group, which the processes it starts join:
            // stopping it stops them too.
            if let Err(error) = sys::become_group_leader() {
                return Err(format!("cannot make a process group: {error}"));
            }
            (f.get())(state, args).map_err(|error| error.to_string())
        }));
        let number = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}#{number}", short_type_name::<F>());
        let slot = Arc::new(Slot::<R> {
            name: name.clone(),
            pid: AtomicU32::new(0),
            leader: Mutex::new(None),
            tries: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            outcome: Mutex::new(None),
            changed: Condvar::new(),
        });
        let state = self.state.clone();
        let supervisor_slot = slot.clone();
        std::thread::Builder::new()
            .name(format!("processional-state-{name}"))
            .spawn(move || {
                let slot = supervisor_slot;
                let mut retries = 0u32;
                loop {
                    if slot.stopping.load(Ordering::Acquire) {
                        return slot.finish(Outcome::Stopped);
                    }
                    slot.tries.fetch_add(1, Ordering::AcqRel);
                    let outcome = SlaveProcessBuilder::new()
                        .name(slot.name.clone())
                        .spawn()
                        .map_err(|error| failure_of(&error))
                        .and_then(|process| {
                            // Opened while we hold its handle, before
                            // anything waits for it: not reaped yet.
                            *lock(&slot.leader) = sys::pidfd_open(process.pid()).ok().map(Arc::new);
                            slot.pid.store(process.pid(), Ordering::Release);
                            if slot.stopping.load(Ordering::Acquire) {
                                process.terminate(Duration::ZERO);
                                return Err(Failure::Lost("stopped".into()));
                            }
                            let task =
                                process.schedule_with((state.clone(), args.clone()), shipped);
                            match task.wait() {
                                Ok(Ok(value)) => Ok(value),
                                Ok(Err(message)) => Err(Failure::Error(message)),
                                Err(error) => Err(failure_of(&error)),
                            }
                        });
                    match outcome {
                        Ok(value) => return slot.finish(Outcome::Done(value)),
                        Err(_) if slot.stopping.load(Ordering::Acquire) => {
                            return slot.finish(Outcome::Stopped);
                        }
                        Err(failure) if retry.covers(&failure, retries) => {
                            retries += 1;
                            log::debug!(
                                "processional-state: {} {failure}; retry {retries}",
                                slot.name
                            );
                            let guard = lock(&slot.outcome);
                            let _ = slot
                                .changed
                                .wait_timeout_while(guard, retry.delay, |_| {
                                    !slot.stopping.load(Ordering::Acquire)
                                })
                                .unwrap_or_else(|p| p.into_inner());
                        }
                        Err(failure) => return slot.finish(Outcome::Failed(failure)),
                    }
                }
            })
            .map_err(|source| StateError::Os {
                what: "cannot start a supervisor thread",
                source,
            })?;
        lock(&self.processes).push(slot.clone());
        Ok(Process {
            slot,
            grace: self.grace,
        })
    }

    /// Starts one process per input, each running `f(state, input)`.
    pub fn spawn_map<A, R, E, F>(
        &self,
        f: Func<F>,
        inputs: impl IntoIterator<Item = A>,
    ) -> Result<Vec<Process<R>>, StateError>
    where
        A: Serialize + DeserializeOwned + Clone + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        E: fmt::Display,
        F: Fn(State, A) -> Result<R, E> + Copy + Send + Sync + 'static,
    {
        inputs
            .into_iter()
            .map(|input| self.spawn(f, input))
            .collect()
    }

    /// Waits for every process spawned so far, all within `timeout`
    /// together (`None`: as long as it takes). The first failure (in spawn
    /// order) comes back; the others keep running.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<(), StateError> {
        // A timeout past any instant (`Duration::MAX`) is no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let processes: Vec<_> = lock(&self.processes).clone();
        for process in &processes {
            if !process.wait_until(deadline) {
                return Err(StateError::TimedOut {
                    operation: format!("waiting for process {}", process.name()),
                    after: timeout.unwrap_or_default(),
                });
            }
        }
        match processes.iter().find_map(|process| process.failure()) {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Stops every process (and what each started), as dropping does, but
    /// keeps the server.
    pub fn stop_processes(&self) {
        let processes: Vec<_> = lock(&self.processes).drain(..).collect();
        std::thread::scope(|scope| {
            for process in &processes {
                scope.spawn(|| process.stop(self.grace));
            }
        });
        lock(&self.workers).clear();
    }

    fn workers(&self, count: usize) -> Result<Vec<SlaveProcess>, StateError> {
        let mut workers = lock(&self.workers);
        while workers.len() < count {
            workers.push(processional_process::slave()?);
        }
        Ok(workers[..count].to_vec())
    }

    /// `inputs.map(f)` on `processes` worker processes (kept for later
    /// maps), in order: the same as the local map.
    ///
    /// ```
    /// # fn main() -> Result<(), processional_state::StateError> {
    /// use processional_state::func;
    /// let context = processional_state::Context::new()?;
    /// let squares = context.map(func!(|x: u64| x * x), (0..1000u64).collect(), 2)?;
    /// assert_eq!(squares, (0..1000u64).map(|x| x * x).collect::<Vec<_>>());
    /// # Ok(())
    /// # }
    /// ```
    pub fn map<T, R, F>(
        &self,
        f: Func<F>,
        inputs: Vec<T>,
        processes: usize,
    ) -> Result<Vec<R>, StateError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(T) -> R + Copy + Send + Sync + 'static,
    {
        let mut results = Vec::with_capacity(inputs.len());
        for chunk in self.map_lazy(f, inputs, processes)? {
            results.extend(chunk?);
        }
        Ok(results)
    }

    /// The map of [`map`](Self::map) as it comes: an iterator of chunks of
    /// results, in order, each as soon as its process is done (the
    /// processes work meanwhile).
    pub fn map_lazy<T, R, F>(
        &self,
        f: Func<F>,
        inputs: Vec<T>,
        processes: usize,
    ) -> Result<impl Iterator<Item = Result<Vec<R>, StateError>> + use<T, R, F>, StateError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(T) -> R + Copy + Send + Sync + 'static,
    {
        let workers = self.workers(processes.max(1))?;
        let shipped = f.pass_to(func!(|f: Func<F>, chunk: Vec<T>| {
            chunk.into_iter().map(f.get()).collect::<Vec<R>>()
        }));
        // A few chunks per worker, so that a slow one does not hold the rest.
        let chunks = (workers.len() * 4).max(1);
        let size = inputs.len().div_ceil(chunks).max(1);
        let mut tasks = Vec::new();
        let mut inputs = inputs.into_iter().peekable();
        let mut index = 0;
        while inputs.peek().is_some() {
            let chunk: Vec<T> = inputs.by_ref().take(size).collect();
            tasks.push(workers[index % workers.len()].schedule_with(chunk, shipped));
            index += 1;
        }
        Ok(tasks
            .into_iter()
            .map(|task| task.wait().map_err(StateError::from)))
    }

    /// Runs [`map`](Self::map) and keeps its results on the server under a
    /// new id (in namespace [`MAP_NAMESPACE`]), for any process to fetch
    /// with [`State::map_results`].
    pub fn map_keep<T, R, F>(
        &self,
        f: Func<F>,
        inputs: Vec<T>,
        processes: usize,
    ) -> Result<String, StateError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
        F: Fn(T) -> R + Copy + Send + Sync + 'static,
    {
        let results = self.map(f, inputs, processes)?;
        let map = self.state.namespace(MAP_NAMESPACE);
        let id = format!("map-{}", map.increment("next-id", 1)?);
        map.set(&id, &results)?;
        Ok(id)
    }
}

impl State {
    /// The results [`Context::map_keep`] kept under `id`.
    pub fn map_results<R: DeserializeOwned>(&self, id: &str) -> Result<Option<Vec<R>>, StateError> {
        self.namespace(MAP_NAMESPACE).get(id)
    }
}

fn short_type_name<F>() -> &'static str {
    let name = std::any::type_name::<F>();
    let name = name.split('<').next().unwrap_or(name);
    name.rsplit("::")
        .find(|part| !part.starts_with('{'))
        .unwrap_or(name)
}

impl Drop for Context {
    fn drop(&mut self) {
        self.stop_processes();
        if let Some(server) = self.server.take() {
            server.terminate(self.grace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_covers_what_it_names_and_counts() {
        let retry = Retry::times(2).on_exit_codes(&[3]).on_signal(10);
        assert!(retry.covers(&Failure::Exit(3), 0));
        assert!(!retry.covers(&Failure::Exit(4), 0));
        assert!(retry.covers(&Failure::Signal(10), 1));
        assert!(!retry.covers(&Failure::Signal(9), 0));
        assert!(retry.covers(&Failure::Error("x".into()), 1));
        assert!(!retry.covers(&Failure::Error("x".into()), 2));
        assert!(!retry.covers(&Failure::Lost("gone".into()), 0));
        assert!(Retry::forever().covers(&Failure::Panic("p".into()), u32::MAX - 1));
        assert!(!Retry::never().covers(&Failure::Exit(1), 0));
    }

    fn named() {}

    #[test]
    fn processes_are_named_after_their_function() {
        fn name_of<F>(_: F) -> &'static str {
            short_type_name::<F>()
        }
        assert_eq!(name_of(named), "named");
    }
}
