//! [`PersistentWorker`]: a worker fed a stream of inputs, answered in
//! order, batched on the wire.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use processional_process::Func;
use processional_task::{CancelToken, Task, Termination};

use crate::engine::Engine;
use crate::error::{EnqueueError, Stop, WorkerError};
use crate::host::{Data, Naming, Ops, Program, stateless};
use crate::identity::{Identity, WorkerId, WorkerKind};
use crate::job::{BatchOut, Failure, ItemOutcome};
use crate::worker::WorkerBuilder;

/// The most inputs one batch call carries.
pub(crate) const MAX_BATCH: usize = 4096;

/// How many batches a persistent worker keeps in flight beyond the one
/// being waited for: enough to keep the host busy while answers travel.
const FLIGHTS: usize = 2;

/// How long a batch should take to run, about: batches grow up to
/// [`MAX_BATCH`] inputs while the target is quick, and shrink to one input
/// when it is slow, so that results of a slow target arrive one by one.
const BATCH_TIME: Duration = Duration::from_millis(2);

/// How long `restart` gives the old run to stop.
const RESTART_TIMEOUT: Duration = Duration::from_secs(10);

/// A worker that runs its target on each input it is given, in order, until
/// it is closed.
///
/// Inputs queue in this process and travel in batches: whatever queued
/// while the previous batches were in flight goes in one call, so a fast
/// producer pays one message per few thousand inputs. [`results`](Self::results)
/// yields every input's result in input order; an input that fails yields
/// its error in its place, and then the worker stops (later inputs do not
/// run, and the stream ends there), unless it was built
/// [`resilient`](WorkerBuilder::resilient), in which case it goes on.
///
/// ```
/// use processional_worker::{PersistentWorker, WorkerKind};
/// use processional_process::func;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let worker = PersistentWorker::spawn(WorkerKind::Process, func!(square))?;
/// for x in 0..10 {
///     worker.enqueue(x)?;
/// }
/// worker.close();
/// assert!(worker.wait(None));
/// assert_eq!(worker.processed(), 10);
/// let squares = worker.results().collect::<Result<Vec<_>, _>>()?;
/// assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]);
/// # Ok(())
/// # }
/// ```
pub struct PersistentWorker<A, R, S = ()> {
    config: Config<A, R, S>,
    run: Mutex<Arc<Run<A, R, S>>>,
}

impl<A, R, S> std::fmt::Debug for PersistentWorker<A, R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistentWorker")
            .field(
                "identity",
                self.run
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .engine
                    .identity(),
            )
            .finish_non_exhaustive()
    }
}

struct Config<A, R, S> {
    kind: WorkerKind,
    naming: Naming,
    initial: S,
    resilient: bool,
    ops: Arc<dyn Ops<A, R, S>>,
}

/// A batch in flight: its task, how many inputs it carries, when it left.
type Flight<R> = (Task<BatchOut<R>>, usize, Instant);

/// One life of the worker (a restart makes another).
struct Run<A, R, S> {
    engine: Engine<A, R, S>,
    resilient: bool,
    inputs: Mutex<Option<Sender<A>>>,
    progress: Mutex<Progress<R, S>>,
    changed: Condvar,
    /// The tokens of the batches in flight, oldest first.
    tokens: Mutex<VecDeque<CancelToken>>,
    terminating: AtomicBool,
    termination: OnceLock<Termination>,
    /// How long one input took lately, in nanoseconds (0: not known yet).
    per_input_ns: AtomicU64,
}

struct Progress<R, S> {
    results: VecDeque<Result<R, WorkerError>>,
    processed: u64,
    /// No more results will come.
    ended: bool,
    /// It stopped at a failure or lost its host: it takes no inputs.
    dead: bool,
    state: Option<S>,
}

impl<A: Data, R: Data> PersistentWorker<A, R> {
    /// Starts a persistent worker of this kind running `target` on each
    /// input.
    pub fn spawn<F>(kind: WorkerKind, target: Func<F>) -> Result<Self, WorkerError>
    where
        F: Fn(A) -> R + Send + Sync + Copy + 'static,
    {
        WorkerBuilder::new(kind).persistent(target)
    }
}

impl WorkerBuilder {
    /// Starts a [`PersistentWorker`] running `target` on each input.
    pub fn persistent<F, A, R>(self, target: Func<F>) -> Result<PersistentWorker<A, R>, WorkerError>
    where
        F: Fn(A) -> R + Send + Sync + Copy + 'static,
        A: Data,
        R: Data,
    {
        self.persistent_stateful(stateless(target))
    }
}

impl<S: Data + Clone> WorkerBuilder<S> {
    /// Starts a [`PersistentWorker`] running `target(&mut state, input)`
    /// on each input, with the builder's state.
    pub fn persistent_stateful<F, A, R>(
        self,
        target: Func<F>,
    ) -> Result<PersistentWorker<A, R, S>, WorkerError>
    where
        F: Fn(&mut S, A) -> R + Send + Sync + Copy + 'static,
        A: Data,
        R: Data,
    {
        self.persistent_with(Arc::new(Program::new(target)))
    }

    /// Starts a [`PersistentWorker`] with these operations.
    pub(crate) fn persistent_with<A: Data, R: Data>(
        self,
        ops: Arc<dyn Ops<A, R, S>>,
    ) -> Result<PersistentWorker<A, R, S>, WorkerError> {
        let config = Config {
            kind: self.kind,
            naming: self.naming,
            initial: self.state,
            resilient: self.resilient,
            ops,
        };
        let run = Run::start(&config, config.initial.clone())?;
        Ok(PersistentWorker {
            config,
            run: Mutex::new(run),
        })
    }
}

impl<A: Data, R: Data, S: Data + Clone> Run<A, R, S> {
    fn start(config: &Config<A, R, S>, state: S) -> Result<Arc<Self>, WorkerError> {
        let engine = Engine::start(&config.kind, &config.naming, config.ops.clone(), state)?;
        let (inputs, queued) = crossbeam_channel::unbounded();
        let (flights, landed) = crossbeam_channel::bounded(FLIGHTS);
        let run = Arc::new(Run {
            engine,
            resilient: config.resilient,
            inputs: Mutex::new(Some(inputs)),
            progress: Mutex::new(Progress {
                results: VecDeque::new(),
                processed: 0,
                ended: false,
                dead: false,
                state: None,
            }),
            changed: Condvar::new(),
            tokens: Mutex::new(VecDeque::new()),
            terminating: AtomicBool::new(false),
            termination: OnceLock::new(),
            per_input_ns: AtomicU64::new(0),
        });
        let name = run.engine.identity().name.clone();
        let feeder = run.clone();
        std::thread::Builder::new()
            .name(format!("{name}-feed"))
            .spawn(move || feeder.feed(&queued, flights))
            .map_err(|e| {
                WorkerError::Runtime(processional_task::Error::io(
                    "cannot start a feeder thread",
                    e,
                ))
            })?;
        let collector = run.clone();
        std::thread::Builder::new()
            .name(format!("{name}-collect"))
            .spawn(move || collector.collect(&landed))
            .map_err(|e| {
                WorkerError::Runtime(processional_task::Error::io(
                    "cannot start a collector thread",
                    e,
                ))
            })?;
        Ok(run)
    }

    /// Sends what queued as batches, keeping at most [`FLIGHTS`] waiting
    /// for the collector.
    fn feed(&self, queued: &Receiver<A>, flights: Sender<Flight<R>>) {
        while let Ok(first) = queued.recv() {
            let limit = match self.per_input_ns.load(Ordering::Relaxed) {
                0 => 1,
                ns => usize::try_from(BATCH_TIME.as_nanos() as u64 / ns).unwrap_or(MAX_BATCH),
            }
            .clamp(1, MAX_BATCH);
            let mut batch = Vec::with_capacity(queued.len().min(limit - 1) + 1);
            batch.push(first);
            while batch.len() < limit {
                match queued.try_recv() {
                    Ok(input) => batch.push(input),
                    Err(_) => break,
                }
            }
            if self.lock().dead {
                continue;
            }
            let count = batch.len();
            let task = self.engine.batch(self.resilient, batch);
            self.tokens().push_back(task.cancel_token().clone());
            if self.terminating.load(Ordering::Acquire) {
                task.cancel();
            }
            if flights.send((task, count, Instant::now())).is_err() {
                break;
            }
        }
        // Closed: every batch has been sent. The collector need not wait
        // for the host to hear it.
        drop(flights);
        self.engine.closed();
    }

    /// Delivers each batch's results in order.
    fn collect(&self, landed: &Receiver<Flight<R>>) {
        let mut previous: Option<Instant> = None;
        for (task, count, sent) in landed {
            let outcome = task
                .wait()
                .map(|out| out.map(|done| done.into_outcomes(count)));
            let now = Instant::now();
            // The batch ran from when it was sent or the one before it
            // ended, whichever is later.
            let began = previous.map_or(sent, |previous| previous.max(sent));
            let ns = (now - began).as_nanos() as u64 / count.max(1) as u64;
            self.per_input_ns.store(ns.max(1), Ordering::Relaxed);
            previous = Some(now);
            self.tokens().pop_front();
            self.deliver(outcome);
        }
        let state = self.engine.fetch();
        let mut progress = self.lock();
        if !progress.dead {
            progress.state = state;
        }
        progress.ended = true;
        drop(progress);
        self.changed.notify_all();
    }

    fn deliver(
        &self,
        outcome: processional_task::Result<Result<impl Iterator<Item = ItemOutcome<R>>, Failure>>,
    ) {
        let terminating = self.terminating.load(Ordering::Acquire);
        let forced = || WorkerError::Terminated {
            how: Stop::Forced(
                self.termination
                    .get()
                    .copied()
                    .unwrap_or(Termination::Unknown),
            ),
        };
        let mut stopped_at_failure = false;
        {
            let mut progress = self.lock();
            if progress.dead {
                return;
            }
            let lost = match outcome {
                Ok(Ok(outcomes)) => {
                    for outcome in outcomes {
                        match outcome {
                            Ok(value) => {
                                progress.processed += 1;
                                progress.results.push_back(Ok(value));
                            }
                            Err(Failure::NotRun) => {}
                            Err(Failure::Terminated) => {
                                progress.results.push_back(Err(WorkerError::Terminated {
                                    how: Stop::Cancelled,
                                }));
                                progress.dead = true;
                                break;
                            }
                            Err(failure) => {
                                progress.processed += 1;
                                progress
                                    .results
                                    .push_back(Err(WorkerError::from_failure(failure)));
                                if !self.resilient {
                                    progress.dead = true;
                                    stopped_at_failure = true;
                                    break;
                                }
                            }
                        }
                    }
                    None
                }
                Err(error) if error.is_cancelled() => Some(WorkerError::from(error)),
                Ok(Err(_)) | Err(_) if terminating => Some(forced()),
                Ok(Err(failure)) => Some(WorkerError::from_failure(failure)),
                Err(error) => Some(WorkerError::from(error)),
            };
            if let Some(error) = lost {
                progress.results.push_back(Err(error));
                progress.dead = true;
                progress.ended = true;
            }
        }
        if stopped_at_failure {
            // It stopped where it runs; its state is still there.
            let state = self.engine.fetch();
            self.lock().state = state;
        }
        let mut progress = self.lock();
        if progress.dead {
            progress.ended = true;
        }
        drop(progress);
        self.changed.notify_all();
    }
}

impl<A, R, S> Run<A, R, S> {
    fn lock(&self) -> MutexGuard<'_, Progress<R, S>> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tokens(&self) -> MutexGuard<'_, VecDeque<CancelToken>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        self.inputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut progress = self.lock();
        while !progress.ended {
            progress = match deadline {
                None => self
                    .changed
                    .wait(progress)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    self.changed
                        .wait_timeout(progress, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
        true
    }

    fn terminate(&self, timeout: Duration) -> Option<Termination> {
        if let Some(termination) = self.termination.get() {
            return Some(*termination);
        }
        let start = Instant::now();
        self.terminating.store(true, Ordering::Release);
        self.close();
        for token in self.tokens().iter() {
            token.cancel();
        }
        if timeout.is_zero() {
            return None;
        }
        let ended = self.wait(Some(timeout / 2));
        // The collector waits while the host is forced, so that what the
        // forcing fails says how it was forced.
        let forcing = self.lock();
        let termination = self
            .engine
            .terminate(timeout.saturating_sub(start.elapsed()));
        let _ = self.termination.set(termination);
        drop(forcing);
        if !ended && !self.wait(Some(Duration::from_millis(100))) {
            let mut progress = self.lock();
            if !progress.ended {
                progress.results.push_back(Err(WorkerError::Terminated {
                    how: Stop::Forced(termination),
                }));
                progress.dead = true;
                progress.ended = true;
            }
            drop(progress);
            self.changed.notify_all();
        }
        Some(termination)
    }
}

impl<A: Data, R: Data, S: Data + Clone> PersistentWorker<A, R, S> {
    fn current(&self) -> Arc<Run<A, R, S>> {
        self.run
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Queues `input`; it runs after the inputs queued before it. Fails,
    /// handing the input back, once the worker is closed or has ended.
    pub fn enqueue(&self, input: A) -> Result<(), EnqueueError<A>> {
        let run = self.current();
        if run.lock().dead {
            return Err(EnqueueError::Ended(input));
        }
        let inputs = run.inputs.lock().unwrap_or_else(PoisonError::into_inner);
        match &*inputs {
            None => Err(EnqueueError::Closed(input)),
            Some(sender) => sender
                .send(input)
                .map_err(|e| EnqueueError::Ended(e.into_inner())),
        }
    }

    /// No more inputs: those queued still run, then the worker ends.
    pub fn close(&self) {
        self.current().close();
    }

    /// Waits at most `timeout` (`None`: as long as it takes) for the worker
    /// to end (closed and done, stopped at a failure, terminated or lost);
    /// whether it has.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        self.current().wait(timeout)
    }

    /// How many inputs ran (succeeded or failed) in this run.
    pub fn processed(&self) -> u64 {
        self.current().lock().processed
    }

    /// The results, in input order, each taken once: blocks for the next
    /// until the worker ends, after its last result.
    pub fn results(&self) -> Results<A, R, S> {
        Results {
            run: self.current(),
        }
    }

    /// The final user state, once the worker ended (`None` before, or if
    /// its process died).
    pub fn state(&self) -> Option<S> {
        let run = self.current();
        let progress = run.lock();
        if progress.ended {
            progress.state.clone()
        } else {
            None
        }
    }

    /// Who it is now (a restart changes the id, and for processes the pid).
    pub fn identity(&self) -> Identity {
        self.current().engine.identity().clone()
    }

    /// Its id.
    pub fn id(&self) -> WorkerId {
        self.current().engine.identity().id
    }

    /// Its process id.
    pub fn pid(&self) -> Option<u32> {
        self.current().engine.identity().pid
    }

    /// Stops the worker like [`Worker::terminate`](crate::Worker::terminate):
    /// no more inputs, the running one is asked to stop, and the host is
    /// forced after half of `timeout`. The results delivered so far stay in
    /// order, and the stream then ends with the termination error.
    pub fn terminate(&self, timeout: Duration) -> Option<Termination> {
        self.current().terminate(timeout)
    }

    /// Starts the worker again (terminating the current run if it has not
    /// ended): counts reset, a process or remote worker gets a new process
    /// (a new pid and id), and the user state carries over (the initial one
    /// if the old process died with it).
    ///
    /// ```
    /// use processional_worker::{WorkerBuilder, WorkerKind};
    /// use processional_process::func;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let worker = WorkerBuilder::new(WorkerKind::Process)
    ///     .state(0u64)
    ///     .persistent_stateful(func!(|sum: &mut u64, x: u64| { *sum += x; *sum }))?;
    /// let first = worker.pid();
    /// worker.enqueue(5)?;
    /// worker.close();
    /// worker.wait(None);
    /// assert_eq!(worker.state(), Some(5));
    /// worker.restart()?; // a new process; the state carries over
    /// assert_ne!(worker.pid(), first);
    /// worker.enqueue(1)?;
    /// worker.close();
    /// worker.wait(None);
    /// assert_eq!(worker.results().collect::<Result<Vec<_>, _>>()?, [6]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn restart(&self) -> Result<(), WorkerError> {
        let old = self.current();
        if !old.wait(Some(Duration::ZERO)) {
            old.terminate(RESTART_TIMEOUT);
        }
        let state = old
            .lock()
            .state
            .take()
            .unwrap_or_else(|| self.config.initial.clone());
        let new = Run::start(&self.config, state)?;
        *self.run.lock().unwrap_or_else(PoisonError::into_inner) = new;
        Ok(())
    }
}

impl<A, R, S> Drop for PersistentWorker<A, R, S> {
    fn drop(&mut self) {
        self.run
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .close();
    }
}

/// The results of a [`PersistentWorker`], in input order.
pub struct Results<A, R, S> {
    run: Arc<Run<A, R, S>>,
}

impl<A, R, S> std::fmt::Debug for Results<A, R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Results").finish_non_exhaustive()
    }
}

impl<A, R, S> Iterator for Results<A, R, S> {
    type Item = Result<R, WorkerError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut progress = self.run.lock();
        loop {
            if let Some(result) = progress.results.pop_front() {
                return Some(result);
            }
            if progress.ended {
                return None;
            }
            progress = self
                .run
                .changed
                .wait(progress)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}
