//! [`Worker`]: one call of a target on a thread, in a process, or on a
//! remote-worker server, behind one API; [`WorkerBuilder`] for its options.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use processional_process::Func;
use processional_task::{CancelToken, ExitReason, Task, Termination};
use processional_transport::Address;

use crate::error::{Stop, WorkerError};
use crate::host::{Data, Host, Naming, Ops, Program, stateless};
use crate::identity::{Identity, WorkerId, WorkerKind};
use crate::job::{Failure, ShotOut};

/// How a worker ended.
#[derive(Debug)]
enum End<R> {
    Value(R),
    Error(WorkerError),
    /// Told not to run.
    Nothing,
}

/// One call of a target, on a thread, in a child process, or in a child of
/// a remote-worker server: the same API for all three.
///
/// The worker starts when it is created, and its [`identity`](Self::identity)
/// is valid at once. [`wait`](Self::wait) says whether it ended (never
/// failing on a timeout); [`result`](Self::result), [`error`](Self::error)
/// and [`has_error`](Self::has_error) never block. [`terminate`](Self::terminate)
/// asks first (the target sees it at [`checkpoint`](crate::checkpoint)),
/// then forces.
///
/// ```
/// use processional_worker::{Worker, WorkerKind};
/// use processional_process::func;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> Result<(), processional_worker::WorkerError> {
/// for kind in [WorkerKind::Thread, WorkerKind::Process] {
///     let worker = Worker::spawn(kind, func!(square), 7)?;
///     assert!(worker.wait(None));
///     assert_eq!(worker.result(), Some(&49));
///     assert!(!worker.has_error());
/// }
/// # Ok(())
/// # }
/// ```
pub struct Worker<R, S = ()> {
    identity: Identity,
    host: Option<Host>,
    token: Option<CancelToken>,
    task: Mutex<Option<Task<ShotOut<R, S>>>>,
    changed: Condvar,
    end: OnceLock<End<R>>,
    state: Mutex<Option<S>>,
    terminating: AtomicBool,
    termination: OnceLock<Termination>,
    /// The thread waiting on the task of a thread worker, if any: woken
    /// when `terminate` ends a worker whose target ignores it (its task
    /// would not end).
    waiter: Mutex<Option<std::thread::Thread>>,
}

/// A wait on a worker's task: its outcome, or the task if it has not ended.
type Waited<R, S> = Result<processional_task::Result<ShotOut<R, S>>, Task<ShotOut<R, S>>>;

impl<R, S> std::fmt::Debug for Worker<R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("identity", &self.identity)
            .field("ended", &self.end.get().is_some())
            .finish_non_exhaustive()
    }
}

impl<R: Data> Worker<R> {
    /// Runs `target(input)` on a new slave thread.
    pub fn thread<F, A>(target: Func<F>, input: A) -> Result<Worker<R>, WorkerError>
    where
        F: Fn(A) -> R + Send + Sync + Copy + 'static,
        A: Data,
    {
        Worker::spawn(WorkerKind::Thread, target, input)
    }

    /// Runs `target(input)` in a new child process of this program.
    pub fn process<F, A>(target: Func<F>, input: A) -> Result<Worker<R>, WorkerError>
    where
        F: Fn(A) -> R + Send + Sync + Copy + 'static,
        A: Data,
    {
        Worker::spawn(WorkerKind::Process, target, input)
    }

    /// Runs `target(input)` in a child process that the remote-worker server
    /// at `server` starts for this worker.
    pub fn remote<F, A>(
        server: &Address,
        target: Func<F>,
        input: A,
    ) -> Result<Worker<R>, WorkerError>
    where
        F: Fn(A) -> R + Send + Sync + Copy + 'static,
        A: Data,
    {
        Worker::spawn(WorkerKind::Remote(server.clone()), target, input)
    }

    /// Runs `target(input)` on a worker of this kind.
    pub fn spawn<F, A>(
        kind: WorkerKind,
        target: Func<F>,
        input: A,
    ) -> Result<Worker<R>, WorkerError>
    where
        F: Fn(A) -> R + Send + Sync + Copy + 'static,
        A: Data,
    {
        WorkerBuilder::new(kind).spawn(target, input)
    }
}

/// Options of a new [`Worker`] (or [`PersistentWorker`](crate::PersistentWorker)):
/// its kind, name, user id, state, and whether it runs at all.
///
/// ```
/// use processional_worker::{WorkerBuilder, WorkerKind};
/// use processional_process::func;
///
/// # fn main() -> Result<(), processional_worker::WorkerError> {
/// let worker = WorkerBuilder::new(WorkerKind::Process)
///     .name("adder")
///     .user_id(7)
///     .state(40u64)
///     .spawn_stateful(func!(|total: &mut u64, x: u64| { *total += x; *total }), 2)?;
/// worker.wait(None);
/// assert_eq!(worker.result(), Some(&42));
/// assert_eq!(worker.state(), Some(42)); // the final state comes back
/// assert_eq!(worker.identity().name, "adder");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct WorkerBuilder<S = ()> {
    pub(crate) kind: WorkerKind,
    pub(crate) naming: Naming,
    pub(crate) state: S,
    pub(crate) run: bool,
    pub(crate) resilient: bool,
}

impl WorkerBuilder {
    /// A worker of this kind, with `()` for state.
    pub fn new(kind: WorkerKind) -> Self {
        WorkerBuilder {
            kind,
            naming: Naming::default(),
            state: (),
            run: true,
            resilient: false,
        }
    }

    /// Starts a worker running `target(input)`.
    pub fn spawn<F, A, R>(self, target: Func<F>, input: A) -> Result<Worker<R>, WorkerError>
    where
        F: Fn(A) -> R + Send + Sync + Copy + 'static,
        A: Data,
        R: Data,
    {
        self.spawn_stateful(stateless(target), input)
    }
}

impl<S> WorkerBuilder<S> {
    /// Its name (default `worker-<id>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.naming.name = Some(name.into());
        self
    }

    /// A number of the caller's choosing, in its identity.
    pub fn user_id(mut self, user_id: u64) -> Self {
        self.naming.user_id = user_id;
        self
    }

    /// Whether it runs (default `true`). A worker told not to run is born
    /// ended, with neither result nor error.
    pub fn run(mut self, run: bool) -> Self {
        self.run = run;
        self
    }

    /// For a persistent worker: whether it goes on after an input fails
    /// (`true`), or stops there (`false`, the default, as pyworkers does).
    pub fn resilient(mut self, resilient: bool) -> Self {
        self.resilient = resilient;
        self
    }

    /// The initial user state, which the target gets as `&mut S`; its final
    /// value comes back when the worker ends.
    pub fn state<T>(self, state: T) -> WorkerBuilder<T> {
        WorkerBuilder {
            kind: self.kind,
            naming: self.naming,
            state,
            run: self.run,
            resilient: self.resilient,
        }
    }

    /// Starts a worker running `target(&mut state, input)`.
    pub fn spawn_stateful<F, A, R>(
        self,
        target: Func<F>,
        input: A,
    ) -> Result<Worker<R, S>, WorkerError>
    where
        F: Fn(&mut S, A) -> R + Send + Sync + Copy + 'static,
        A: Data,
        R: Data,
        S: Data,
    {
        Worker::start(self, Program::new(target), input)
    }
}

impl<R: Data, S: Data> Worker<R, S> {
    fn start<A: Data>(
        builder: WorkerBuilder<S>,
        program: impl Ops<A, R, S>,
        input: A,
    ) -> Result<Worker<R, S>, WorkerError> {
        if !builder.run {
            let id = WorkerId::next();
            let identity = Identity {
                id,
                kind: builder.kind,
                name: builder.naming.name.unwrap_or_else(|| id.to_string()),
                user_id: builder.naming.user_id,
                host: String::new(),
                pid: None,
                tid: None,
            };
            let end = OnceLock::new();
            let _ = end.set(End::Nothing);
            return Ok(Worker {
                identity,
                host: None,
                token: None,
                task: Mutex::new(None),
                changed: Condvar::new(),
                end,
                state: Mutex::new(Some(builder.state)),
                terminating: AtomicBool::new(false),
                termination: OnceLock::new(),
                waiter: Mutex::new(None),
            });
        }
        let (host, identity) = Host::spawn(&builder.kind, &builder.naming)?;
        let task = program.shot(&host, builder.state, input);
        Ok(Worker {
            identity,
            token: Some(task.cancel_token().clone()),
            host: Some(host),
            task: Mutex::new(Some(task)),
            changed: Condvar::new(),
            end: OnceLock::new(),
            state: Mutex::new(None),
            terminating: AtomicBool::new(false),
            termination: OnceLock::new(),
            waiter: Mutex::new(None),
        })
    }
}

impl<R, S> Worker<R, S> {
    /// Who it is: id, kind, name, user id, host, pid, tid.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Its id (unique in this process).
    pub fn id(&self) -> WorkerId {
        self.identity.id
    }

    /// Where it runs.
    pub fn kind(&self) -> &WorkerKind {
        &self.identity.kind
    }

    /// The process it runs in (`None` if told not to run).
    pub fn pid(&self) -> Option<u32> {
        self.identity.pid
    }

    /// The OS thread it runs on, for a thread worker.
    pub fn tid(&self) -> Option<u32> {
        self.identity.tid
    }

    /// The host it runs on.
    pub fn host(&self) -> &str {
        &self.identity.host
    }

    /// Waits at most `timeout` (`None`: as long as it takes) for the worker
    /// to end; whether it has ended. Never fails on a timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let mut slot = self.lock();
            if self.end.get().is_some() {
                return true;
            }
            match slot.take() {
                Some(task) => {
                    drop(slot);
                    let waited = match (&self.host, deadline) {
                        // Its task may never end: `terminate` may end it.
                        (Some(Host::Thread(_)), _) => self.wait_or_end(task, deadline),
                        (_, None) => Ok(task.wait()),
                        (_, Some(deadline)) => {
                            task.wait_timeout(deadline.saturating_duration_since(Instant::now()))
                        }
                    };
                    match waited {
                        Ok(outcome) => {
                            self.settle(outcome);
                            return true;
                        }
                        Err(task) => {
                            *self.lock() = Some(task);
                            self.changed.notify_all();
                            return self.end.get().is_some();
                        }
                    }
                }
                // Another thread waits on the task: wait for its news.
                None => match deadline {
                    None => drop(
                        self.changed
                            .wait(slot)
                            .unwrap_or_else(PoisonError::into_inner),
                    ),
                    Some(deadline) => {
                        let now = Instant::now();
                        if now >= deadline {
                            return false;
                        }
                        drop(
                            self.changed
                                .wait_timeout(slot, deadline - now)
                                .unwrap_or_else(PoisonError::into_inner),
                        );
                    }
                },
            }
        }
    }

    /// Whether it has ended, without blocking.
    pub fn is_ended(&self) -> bool {
        self.poll();
        self.end.get().is_some()
    }

    /// Its value, if it ended with one. Never blocks.
    pub fn result(&self) -> Option<&R> {
        self.poll();
        match self.end.get() {
            Some(End::Value(value)) => Some(value),
            _ => None,
        }
    }

    /// Its error, if it ended with one. Never blocks.
    pub fn error(&self) -> Option<&WorkerError> {
        self.poll();
        match self.end.get() {
            Some(End::Error(error)) => Some(error),
            _ => None,
        }
    }

    /// Whether it ended with an error. Never blocks.
    pub fn has_error(&self) -> bool {
        self.error().is_some()
    }

    /// The final user state, once it ended (the initial one for a worker
    /// told not to run; `None` if its process died with it).
    pub fn state(&self) -> Option<S>
    where
        S: Clone,
    {
        self.poll();
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the worker: asks first, and forces it once half of `timeout`
    /// has passed.
    ///
    /// The target sees the request at [`checkpoint`](crate::checkpoint) and
    /// the worker ends with [`WorkerError::Terminated`] (`Stop::Cancelled`).
    /// If it is still running after half of `timeout`, its process is
    /// terminated (asked to exit, then SIGTERM, then SIGKILL, within the
    /// rest of `timeout`); a thread cannot be killed, and the outcome says
    /// so ([`Termination::Unstoppable`]). Returns how the host ended, or
    /// `None` if it has not ended yet: `terminate(Duration::ZERO)` only
    /// asks and returns at once, and a later [`wait`](Self::wait) sees the
    /// end. Calling it again is fine.
    ///
    /// ```
    /// use std::time::Duration;
    /// use processional_worker::{Worker, checkpoint};
    /// use processional_process::func;
    ///
    /// # fn main() -> Result<(), processional_worker::WorkerError> {
    /// // A long job that checks for a stop request between steps.
    /// let worker = Worker::process(func!(|steps: u64| -> u64 {
    ///     for _ in 0..steps {
    ///         checkpoint(); // ends the job here once terminate asked
    ///         std::thread::sleep(Duration::from_millis(10));
    ///     }
    ///     steps
    /// }), u64::MAX)?;
    /// worker.terminate(Duration::from_secs(20));
    /// assert!(worker.wait(None));
    /// assert!(worker.error().is_some_and(|e| e.is_terminated()));
    /// assert_eq!(worker.result(), None);
    /// # Ok(())
    /// # }
    /// ```
    pub fn terminate(&self, timeout: Duration) -> Option<Termination> {
        if let Some(termination) = self.termination.get() {
            return Some(*termination);
        }
        let Some(host) = &self.host else {
            return Some(Termination::Graceful(ExitReason::Code(0)));
        };
        let start = Instant::now();
        self.terminating.store(true, Ordering::Release);
        if let Some(token) = &self.token {
            token.cancel();
        }
        if timeout.is_zero() {
            self.poll();
            return None;
        }
        let ended = self.wait(Some(timeout / 2));
        let forcing = self.lock();
        let termination = host.terminate(timeout.saturating_sub(start.elapsed()));
        let _ = self.termination.set(termination);
        drop(forcing);
        if !ended && !self.wait(Some(Duration::from_millis(100))) {
            // A thread that ignores its cancellation (or a task the host's
            // end has not failed yet): the worker ends here.
            let slot = self.lock();
            let _ = self.end.set(End::Error(WorkerError::Terminated {
                how: Stop::Forced(termination),
            }));
            drop(slot);
            self.changed.notify_all();
            if let Some(waiter) = &*self.waiter.lock().unwrap_or_else(PoisonError::into_inner) {
                waiter.unpark();
            }
        }
        self.termination.get().copied()
    }

    /// Waits for `task` until `deadline`, or until the worker ended without
    /// it (`terminate` gave up on a target that ignores it): the task back
    /// if it did not end.
    fn wait_or_end(
        &self,
        mut task: Task<ShotOut<R, S>>,
        deadline: Option<Instant>,
    ) -> Waited<R, S> {
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.unpark();
            }
        }
        let me = std::thread::current();
        let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(me.clone())));
        let mut cx = std::task::Context::from_waker(&waker);
        // Before looking at `end`: `terminate` sets it, then wakes us.
        *self.waiter.lock().unwrap_or_else(PoisonError::into_inner) = Some(me);
        let waited = loop {
            if let std::task::Poll::Ready(outcome) = std::pin::Pin::new(&mut task).poll(&mut cx) {
                break Ok(outcome);
            }
            if self.end.get().is_some() {
                break Err(task);
            }
            match deadline {
                None => std::thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break Err(task);
                    }
                    std::thread::park_timeout(deadline - now);
                }
            }
        };
        *self.waiter.lock().unwrap_or_else(PoisonError::into_inner) = None;
        waited
    }

    fn lock(&self) -> MutexGuard<'_, Option<Task<ShotOut<R, S>>>> {
        self.task.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the outcome if the task finished.
    fn poll(&self) {
        if self.end.get().is_some() {
            return;
        }
        let Ok(mut slot) = self.task.try_lock() else {
            return;
        };
        if slot.as_ref().is_some_and(Task::is_finished) {
            let task = slot.take().expect("checked");
            drop(slot);
            self.settle(task.wait());
        }
    }

    fn settle(&self, outcome: processional_task::Result<ShotOut<R, S>>) {
        // Under the lock: `terminate` holds it while it forces the host, so
        // that a task failed by the forcing sees how it was forced.
        let slot = self.lock();
        let forced = || {
            Stop::Forced(
                self.termination
                    .get()
                    .copied()
                    .unwrap_or(Termination::Unknown),
            )
        };
        let terminating = self.terminating.load(Ordering::Acquire);
        let end = match outcome {
            Ok(Ok((Ok(value), state))) => {
                *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
                End::Value(value)
            }
            Ok(Ok((Err(failure), state))) => {
                *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
                End::Error(self.error_of(failure, terminating, forced))
            }
            Ok(Err(failure)) => End::Error(self.error_of(failure, terminating, forced)),
            Err(error) if error.is_cancelled() => End::Error(WorkerError::Terminated {
                how: Stop::Cancelled,
            }),
            Err(_) if terminating => End::Error(WorkerError::Terminated { how: forced() }),
            Err(error) => End::Error(WorkerError::from(error)),
        };
        let _ = self.end.set(end);
        drop(slot);
        self.changed.notify_all();
    }

    fn error_of(
        &self,
        failure: Failure,
        terminating: bool,
        forced: impl Fn() -> Stop,
    ) -> WorkerError {
        match failure {
            Failure::Terminated => WorkerError::Terminated {
                how: Stop::Cancelled,
            },
            Failure::Panicked(_) => WorkerError::from_failure(failure),
            _ if terminating => WorkerError::Terminated { how: forced() },
            other => WorkerError::from_failure(other),
        }
    }
}
