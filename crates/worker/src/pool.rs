//! [`Pool`]: persistent workers of mixed kinds sharing the inputs of a run,
//! retrying on the others what a dead worker had in flight.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use processional_process::Func;
use processional_task::{TaskId, TaskSet};

use crate::engine::Engine;
use crate::error::{PoolError, Stop, WorkerError};
use crate::host::{Data, Naming, Ops, Program, stateless};
use crate::identity::{WorkerId, WorkerKind};
use crate::job::{BatchOut, Failure};
use crate::persistent::MAX_BATCH;

/// How many batches a pool keeps in flight on each worker.
const DEPTH: usize = 2;

/// The default cap on a batch when every worker is a thread.
const THREAD_MAX_BATCH: usize = 1 << 16;

/// How long dropping a pool gives its workers to stop.
const DROP_TIMEOUT: Duration = Duration::from_secs(10);

/// What happens in a pool run, for a progress bar or a log: given to the
/// callback of [`PoolBuilder::on_event`].
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use processional_worker::{PoolBuilder, PoolEvent, WorkerKind};
/// use processional_process::func;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let finished = Arc::new(Mutex::new(Vec::new()));
/// let log = finished.clone();
/// let mut pool = PoolBuilder::new(func!(|x: u32| x * 2))
///     .workers(WorkerKind::Thread, 2)
///     .on_event(move |event| {
///         if let PoolEvent::Finished { input, .. } = event {
///             log.lock().unwrap().push(*input);
///         }
///     })
///     .spawn()?;
/// assert_eq!(pool.map(0..5)?, [0, 2, 4, 6, 8]);
/// let mut done = finished.lock().unwrap().clone();
/// done.sort();
/// assert_eq!(done, [0, 1, 2, 3, 4]); // one Finished per input
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolEvent {
    /// An input was sent to a worker.
    Enqueued {
        /// The input's index in the run.
        input: usize,
        /// The worker.
        worker: WorkerId,
    },
    /// An input has its result (a value, or its error after its last try).
    Finished {
        /// The input's index.
        input: usize,
        /// The worker that answered it.
        worker: WorkerId,
    },
    /// An input will be tried again on another worker.
    Retried {
        /// The input's index.
        input: usize,
        /// The worker it failed on.
        worker: WorkerId,
    },
    /// A worker has nothing in flight.
    WorkerIdle {
        /// The worker.
        worker: WorkerId,
    },
    /// A worker died (or stopped at a failure).
    WorkerDied {
        /// The worker.
        worker: WorkerId,
        /// Why, described.
        error: String,
    },
    /// A dead worker was replaced by a new one of the same kind.
    WorkerReplaced {
        /// The dead worker.
        old: WorkerId,
        /// Its replacement.
        new: WorkerId,
    },
}

type Callback = Arc<dyn Fn(&PoolEvent) + Send + Sync>;

struct Member<A, R, S> {
    kind: WorkerKind,
    state: S,
    id: WorkerId,
    engine: Option<Arc<Engine<A, R, S>>>,
    /// Bumped by each replacement, so that answers of an old engine do not
    /// kill its successor.
    generation: u64,
    in_flight: usize,
    error: Option<WorkerError>,
}

/// Options of a [`Pool`]: its workers (by kind), retries, replacement,
/// events.
///
/// **Batching.** A run splits its inputs into batches, one call each: by
/// default the inputs spread over four batches per live worker, at most
/// 4096 inputs a batch (65 536 when every worker is a thread), with two
/// batches in flight on each worker. A slow
/// target with few inputs wants [`batch_size(1)`](Self::batch_size), so that
/// inputs spread one by one and a dead worker takes only its own input down.
///
/// ```
/// use processional_worker::{PoolBuilder, WorkerKind};
/// use processional_process::func;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // Each worker keeps a count of what it ran (its user state).
/// let mut pool = PoolBuilder::stateful(func!(|ran: &mut u32, x: u64| { *ran += 1; x + 1 }), 0u32)
///     .workers(WorkerKind::Thread, 2)
///     .worker_with_state(WorkerKind::Process, 100)
///     .retries(1)          // a failed input is tried once more, on another worker
///     .replace_dead(true)  // a dead worker is replaced by a new one of its kind
///     .resilient(true)     // a worker goes on after an input fails
///     .batch_size(8)
///     .spawn()?;
/// assert_eq!(pool.map(0..100u64)?, (1..=100u64).collect::<Vec<_>>());
/// assert_eq!(pool.alive(), 3);
/// # Ok(())
/// # }
/// ```
pub struct PoolBuilder<A, R, S = ()> {
    ops: Arc<dyn Ops<A, R, S>>,
    workers: Vec<(WorkerKind, S)>,
    default_state: S,
    retries: u32,
    replace_dead: bool,
    resilient: bool,
    batch: Option<usize>,
    on_event: Option<Callback>,
}

impl<A, R, S> std::fmt::Debug for PoolBuilder<A, R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field(
                "workers",
                &self.workers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl<A: Data + Clone, R: Data> PoolBuilder<A, R> {
    /// A pool running `target` on each input.
    pub fn new<F>(target: Func<F>) -> Self
    where
        F: Fn(A) -> R + Send + Sync + Copy + 'static,
    {
        PoolBuilder::stateful(stateless(target), ())
    }
}

impl<A: Data + Clone, R: Data, S: Data + Clone> PoolBuilder<A, R, S> {
    /// A pool running `target(&mut state, input)`; each worker starts with
    /// `state` unless added with [`worker_with_state`](Self::worker_with_state).
    pub fn stateful<F>(target: Func<F>, state: S) -> Self
    where
        F: Fn(&mut S, A) -> R + Send + Sync + Copy + 'static,
    {
        PoolBuilder {
            ops: Arc::new(Program::new(target)),
            workers: Vec::new(),
            default_state: state,
            retries: 2,
            replace_dead: false,
            resilient: false,
            batch: None,
            on_event: None,
        }
    }

    /// Adds a worker of this kind.
    pub fn worker(mut self, kind: WorkerKind) -> Self {
        let state = self.default_state.clone();
        self.workers.push((kind, state));
        self
    }

    /// Adds `count` workers of this kind.
    pub fn workers(mut self, kind: WorkerKind, count: usize) -> Self {
        for _ in 0..count {
            self = self.worker(kind.clone());
        }
        self
    }

    /// Adds a worker of this kind with its own initial state.
    pub fn worker_with_state(mut self, kind: WorkerKind, state: S) -> Self {
        self.workers.push((kind, state));
        self
    }

    /// How many more times an input is tried after it failed or its worker
    /// died under it (default 2).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Whether a dead worker is replaced by a new one of its kind (default
    /// `false`).
    pub fn replace_dead(mut self, replace: bool) -> Self {
        self.replace_dead = replace;
        self
    }

    /// Whether a worker goes on after an input fails (`true`) or stops and
    /// counts as dead (`false`, the default).
    pub fn resilient(mut self, resilient: bool) -> Self {
        self.resilient = resilient;
        self
    }

    /// How many inputs travel in one call (default: the run's inputs spread
    /// over four batches per worker, at most 4096, or 65 536 when every
    /// worker is a thread).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch = Some(size.max(1));
        self
    }

    /// Calls `callback` with each [`PoolEvent`], on the thread running the
    /// pool.
    pub fn on_event(mut self, callback: impl Fn(&PoolEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(callback));
        self
    }

    /// Starts every worker (in parallel).
    pub fn spawn(self) -> Result<Pool<A, R, S>, WorkerError> {
        let ops = self.ops.clone();
        let started: Vec<Result<Engine<A, R, S>, WorkerError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .workers
                .iter()
                .map(|(kind, state)| {
                    let ops = ops.clone();
                    let state = state.clone();
                    scope.spawn(move || Engine::start(kind, &Naming::default(), ops, state))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a worker start panicked"))
                .collect()
        });
        let mut members = Vec::with_capacity(started.len());
        for ((kind, state), engine) in self.workers.into_iter().zip(started) {
            let engine = engine?;
            members.push(Member {
                kind,
                state,
                id: engine.identity().id,
                engine: Some(Arc::new(engine)),
                generation: 0,
                in_flight: 0,
                error: None,
            });
        }
        Ok(Pool {
            ops,
            members,
            retries: self.retries,
            replace_dead: self.replace_dead,
            resilient: self.resilient,
            batch: self.batch,
            on_event: self.on_event,
        })
    }
}

/// Persistent workers of mixed kinds sharing the inputs of each run.
///
/// A run sends the inputs in batches to every live worker, keeping a few
/// batches in flight on each. A worker that dies mid-run (killed, or its
/// target panicked and it is not resilient) has its in-flight inputs
/// retried on the others, up to [`retries`](PoolBuilder::retries) times
/// each; if every worker dies first, the run fails with a [`PoolError`]
/// holding what arrived. Dropping the pool closes it.
///
/// ```
/// use processional_worker::{PoolBuilder, WorkerKind};
/// use processional_process::func;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut pool = PoolBuilder::new(func!(|x: u64| x * x))
///     .worker(WorkerKind::Thread)
///     .worker(WorkerKind::Process)
///     .spawn()?;
/// let squares = pool.map(0..100u64)?;
/// assert_eq!(squares, (0..100u64).map(|x| x * x).collect::<Vec<_>>());
/// # Ok(())
/// # }
/// ```
pub struct Pool<A, R, S = ()> {
    ops: Arc<dyn Ops<A, R, S>>,
    members: Vec<Member<A, R, S>>,
    retries: u32,
    replace_dead: bool,
    resilient: bool,
    batch: Option<usize>,
    on_event: Option<Callback>,
}

impl<A, R, S> std::fmt::Debug for Pool<A, R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.members.len())
            .field(
                "alive",
                &self.members.iter().filter(|m| m.engine.is_some()).count(),
            )
            .finish_non_exhaustive()
    }
}

impl<A: Data + Clone, R: Data, S: Data + Clone> Pool<A, R, S> {
    /// Runs the target on every input; the values in input order, or a
    /// [`PoolError`] with what arrived if an input got no value.
    pub fn map(&mut self, inputs: impl IntoIterator<Item = A>) -> Result<Vec<R>, PoolError<R>> {
        let mut run = self.map_unordered(inputs);
        let count = run.inputs.len();
        let mut collected = MapSink {
            runs: Vec::new(),
            singles: Vec::new(),
            failed: BTreeMap::new(),
        };
        run.drive(&mut collected);
        let unconsumed = std::mem::take(&mut run.unconsumed);
        drop(run);
        let MapSink {
            mut runs,
            mut singles,
            failed,
        } = collected;
        runs.sort_unstable_by_key(|(start, _)| *start);
        singles.sort_unstable_by_key(|(index, _)| *index);
        if failed.is_empty() && unconsumed.is_empty() {
            let mut values = Vec::with_capacity(count);
            let mut runs = runs.into_iter().peekable();
            let mut singles = singles.into_iter().peekable();
            while values.len() < count {
                let at = values.len();
                if runs.peek().is_some_and(|(start, _)| *start == at) {
                    values.extend(runs.next().expect("peeked").1);
                } else if singles.peek().is_some_and(|(index, _)| *index == at) {
                    values.push(singles.next().expect("peeked").1);
                } else {
                    unreachable!("input {at} answered neither in a run nor alone");
                }
            }
            return Ok(values);
        }
        let mut values: Vec<Option<R>> = Vec::with_capacity(count);
        values.resize_with(count, || None);
        for (start, run) in runs {
            for (offset, value) in run.into_iter().enumerate() {
                values[start + offset] = Some(value);
            }
        }
        for (index, value) in singles {
            values[index] = Some(value);
        }
        Err(self.error(values, failed, unconsumed))
    }

    /// Runs the target on every input; each input's result in input order.
    /// Fails only if inputs were left with no worker to run them.
    ///
    /// ```
    /// use processional_worker::{PoolBuilder, WorkerKind};
    /// use processional_process::func;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut pool = PoolBuilder::new(func!(|x: u32| -> u32 { assert!(x != 2, "two"); x }))
    ///     .worker(WorkerKind::Thread)
    ///     .resilient(true)
    ///     .retries(0)
    ///     .spawn()?;
    /// let results = pool.map_results(0..4)?;
    /// assert!(results[2].is_err());
    /// assert_eq!(results.iter().filter_map(|r| r.as_ref().ok()).collect::<Vec<_>>(), [&0, &1, &3]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn map_results(
        &mut self,
        inputs: impl IntoIterator<Item = A>,
    ) -> Result<Vec<Result<R, WorkerError>>, PoolError<R>> {
        let mut run = self.map_unordered(inputs);
        let count = run.inputs.len();
        let mut results: Vec<Option<Result<R, WorkerError>>> = Vec::with_capacity(count);
        results.resize_with(count, || None);
        run.drive(&mut |index: usize, result: Result<R, WorkerError>| {
            results[index] = Some(result)
        });
        let unconsumed = std::mem::take(&mut run.unconsumed);
        drop(run);
        if unconsumed.is_empty() {
            return Ok(results
                .into_iter()
                .map(|r| r.expect("every input answered"))
                .collect());
        }
        let mut values = Vec::with_capacity(count);
        let mut failed = BTreeMap::new();
        for (index, result) in results.into_iter().enumerate() {
            match result {
                Some(Ok(value)) => values.push(Some(value)),
                Some(Err(error)) => {
                    failed.insert(index, error);
                    values.push(None);
                }
                None => values.push(None),
            }
        }
        Err(self.error(values, failed, unconsumed))
    }

    /// Runs the target on every input, yielding `(input index, result)` as
    /// results arrive. Inputs left with no worker are not yielded; see
    /// [`PoolRun::unconsumed`].
    ///
    /// ```
    /// use processional_worker::{PoolBuilder, WorkerKind};
    /// use processional_process::func;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut pool = PoolBuilder::new(func!(|x: u32| x * 10)).workers(WorkerKind::Thread, 2).spawn()?;
    /// let mut run = pool.map_unordered(0..5);
    /// let mut got: Vec<(usize, u32)> = run.by_ref().map(|(i, r)| (i, r.expect("ran"))).collect();
    /// assert!(run.unconsumed().is_empty());
    /// got.sort();
    /// assert_eq!(got, [(0, 0), (1, 10), (2, 20), (3, 30), (4, 40)]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn map_unordered(&mut self, inputs: impl IntoIterator<Item = A>) -> PoolRun<'_, A, R, S> {
        let inputs: Vec<A> = inputs.into_iter().collect();
        let alive = self
            .members
            .iter()
            .filter(|m| m.engine.is_some())
            .count()
            .max(1);
        let chunk = self.batch.unwrap_or_else(|| {
            inputs
                .len()
                .div_ceil(alive * 2 * DEPTH)
                .clamp(1, self.largest_batch())
        });
        let mut queue = VecDeque::new();
        let mut start = 0;
        while start < inputs.len() {
            let end = (start + chunk).min(inputs.len());
            queue.push_back(Indices::Range(start, end));
            start = end;
        }
        PoolRun {
            attempts: vec![0; inputs.len()],
            inputs,
            queue,
            chunk,
            set: TaskSet::new(),
            flights: HashMap::new(),
            ready: VecDeque::new(),
            unconsumed: Vec::new(),
            done: false,
            pool: self,
        }
    }

    /// Runs the target on every input, yielding the results in input order
    /// as soon as each one and those before it arrived. An input left with
    /// no worker yields an error.
    ///
    /// ```
    /// use processional_worker::{PoolBuilder, WorkerKind};
    /// use processional_process::func;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut pool = PoolBuilder::new(func!(|x: u32| x + 1)).worker(WorkerKind::Process).spawn()?;
    /// for (i, result) in pool.imap(0..3).enumerate() {
    ///     assert_eq!(result?, i as u32 + 1); // in input order, as soon as each is in
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn imap(
        &mut self,
        inputs: impl IntoIterator<Item = A>,
    ) -> impl Iterator<Item = Result<R, WorkerError>> + '_ {
        let mut run = self.map_unordered(inputs);
        let mut waiting: BTreeMap<usize, Result<R, WorkerError>> = BTreeMap::new();
        let mut next = 0;
        std::iter::from_fn(move || {
            loop {
                if let Some(result) = waiting.remove(&next) {
                    next += 1;
                    return Some(result);
                }
                if next >= run.inputs.len() {
                    return None;
                }
                match run.next() {
                    Some((index, result)) => {
                        waiting.insert(index, result);
                    }
                    None => {
                        // Left with no worker: every missing input fails.
                        next += 1;
                        return Some(Err(WorkerError::Lost {
                            message: "no worker was left to run this input".into(),
                        }));
                    }
                }
            }
        })
    }

    fn error(
        &self,
        values: Vec<Option<R>>,
        failed: BTreeMap<usize, WorkerError>,
        unconsumed: Vec<usize>,
    ) -> PoolError<R> {
        PoolError {
            partial: values
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| (i, v)))
                .collect(),
            failed,
            unconsumed,
            workers: self
                .members
                .iter()
                .filter_map(|m| m.error.as_ref().map(|e| (m.id, e.duplicate())))
                .collect(),
        }
    }

    /// The default cap on a batch: what one message should carry, unless
    /// every live worker is a thread, whose batches cross no wire (there,
    /// fewer batches mean fewer wake-ups).
    fn largest_batch(&self) -> usize {
        let threads_only = self
            .members
            .iter()
            .filter(|m| m.engine.is_some())
            .all(|m| m.kind == WorkerKind::Thread);
        if threads_only {
            THREAD_MAX_BATCH
        } else {
            MAX_BATCH
        }
    }

    /// How many workers are alive.
    pub fn alive(&self) -> usize {
        self.members.iter().filter(|m| m.engine.is_some()).count()
    }

    /// The ids of the workers, alive or dead.
    pub fn worker_ids(&self) -> Vec<WorkerId> {
        self.members.iter().map(|m| m.id).collect()
    }

    /// The process id of each live worker.
    pub fn worker_pids(&self) -> Vec<Option<u32>> {
        self.members
            .iter()
            .map(|m| m.engine.as_ref().and_then(|e| e.identity().pid))
            .collect()
    }

    /// Each dead worker's error.
    pub fn worker_errors(&self) -> Vec<(WorkerId, &WorkerError)> {
        self.members
            .iter()
            .filter_map(|m| m.error.as_ref().map(|e| (m.id, e)))
            .collect()
    }

    /// Replaces every worker by a new one of its kind with its initial state
    /// (stopping the live ones first, in parallel).
    pub fn restart_workers(&mut self) -> Result<(), WorkerError> {
        self.stop_all(DROP_TIMEOUT, Stop::Cancelled);
        for index in 0..self.members.len() {
            self.replace(index)?;
        }
        Ok(())
    }

    /// Stops every worker gracefully, in parallel, within `timeout`: each is
    /// asked to exit and forced only if it does not. The pool then fails
    /// every run at once.
    pub fn close(&mut self, timeout: Duration) {
        self.stop_all(timeout, Stop::Cancelled);
    }

    /// Stops every worker, in parallel, within `timeout` (asked, then
    /// forced), recording each as terminated. The pool then fails every run
    /// at once.
    pub fn terminate(&mut self, timeout: Duration) {
        self.stop_all(
            timeout,
            Stop::Forced(processional_task::Termination::Unknown),
        );
    }

    fn replace(&mut self, index: usize) -> Result<(), WorkerError> {
        let member = &mut self.members[index];
        let engine = Engine::start(
            &member.kind,
            &Naming::default(),
            self.ops.clone(),
            member.state.clone(),
        )?;
        let old = member.id;
        member.id = engine.identity().id;
        member.engine = Some(Arc::new(engine));
        member.generation += 1;
        member.in_flight = 0;
        member.error = None;
        let new = member.id;
        self.emit(PoolEvent::WorkerReplaced { old, new });
        Ok(())
    }
}

impl<A, R, S> Pool<A, R, S> {
    fn emit(&self, event: PoolEvent) {
        if let Some(callback) = &self.on_event {
            callback(&event);
        }
    }

    fn stop_all(&mut self, timeout: Duration, how: Stop) {
        let engines: Vec<_> = self
            .members
            .iter_mut()
            .filter_map(|m| m.engine.take().map(|e| (m, e)))
            .collect();
        let terminations: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = engines
                .iter()
                .map(|(_, engine)| {
                    let host = engine.host();
                    scope.spawn(move || host.terminate(timeout))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(processional_task::Termination::Unknown))
                .collect()
        });
        for ((member, _), termination) in engines.into_iter().zip(terminations) {
            let how = match how {
                Stop::Forced(_) => Stop::Forced(termination),
                other => other,
            };
            member.error = Some(WorkerError::Terminated { how });
        }
    }
}

impl<A, R, S> Drop for Pool<A, R, S> {
    fn drop(&mut self) {
        self.stop_all(DROP_TIMEOUT, Stop::Cancelled);
    }
}

/// Where a run's results go.
trait Sink<R> {
    /// One input's result.
    fn one(&mut self, index: usize, result: Result<R, WorkerError>);

    /// The values of inputs `start..start + values.len()`, all successful.
    fn run(&mut self, start: usize, values: Vec<R>) {
        for (offset, value) in values.into_iter().enumerate() {
            self.one(start + offset, Ok(value));
        }
    }
}

impl<R, F: FnMut(usize, Result<R, WorkerError>)> Sink<R> for F {
    fn one(&mut self, index: usize, result: Result<R, WorkerError>) {
        self(index, result)
    }
}

/// `map`'s sink: whole runs of values are kept as they came, to be joined
/// at the end with one copy.
struct MapSink<R> {
    runs: Vec<(usize, Vec<R>)>,
    singles: Vec<(usize, R)>,
    failed: BTreeMap<usize, WorkerError>,
}

impl<R> Sink<R> for MapSink<R> {
    fn one(&mut self, index: usize, result: Result<R, WorkerError>) {
        match result {
            Ok(value) => self.singles.push((index, value)),
            Err(error) => {
                self.failed.insert(index, error);
            }
        }
    }

    fn run(&mut self, start: usize, values: Vec<R>) {
        self.runs.push((start, values));
    }
}

/// The inputs of a batch: a first try is a range, retries a list.
#[derive(Debug)]
enum Indices {
    Range(usize, usize),
    List(Vec<usize>),
}

impl Indices {
    fn len(&self) -> usize {
        match self {
            Indices::Range(start, end) => end - start,
            Indices::List(list) => list.len(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let (range, list) = match self {
            Indices::Range(start, end) => (*start..*end, &[][..]),
            Indices::List(list) => (0..0, &list[..]),
        };
        range.chain(list.iter().copied())
    }
}

struct Flight<A, R, S> {
    member: usize,
    generation: u64,
    worker: WorkerId,
    indices: Indices,
    /// Keeps the engine alive while it answers (a dead one included).
    _engine: Arc<Engine<A, R, S>>,
}

/// A pool run in progress: an iterator of `(input index, result)` in the
/// order results arrive (see [`Pool::map_unordered`]).
///
/// One thread (the caller's) drives the whole run: every batch in flight is
/// a task in one `TaskSet`, so waiting costs no thread per worker.
pub struct PoolRun<'p, A, R, S> {
    pool: &'p mut Pool<A, R, S>,
    inputs: Vec<A>,
    attempts: Vec<u32>,
    queue: VecDeque<Indices>,
    chunk: usize,
    set: TaskSet<BatchOut<R>>,
    flights: HashMap<TaskId, Flight<A, R, S>>,
    ready: VecDeque<(usize, Result<R, WorkerError>)>,
    unconsumed: Vec<usize>,
    done: bool,
}

impl<A, R, S> std::fmt::Debug for PoolRun<'_, A, R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRun")
            .field("inputs", &self.inputs.len())
            .field("in_flight", &self.flights.len())
            .finish_non_exhaustive()
    }
}

impl<A, R, S> Drop for PoolRun<'_, A, R, S> {
    /// A run given up before its end (an `imap` or `map_unordered` dropped
    /// early) gives its workers' room back: its batches still run there,
    /// ahead of the next run's, but their answers are not waited for.
    fn drop(&mut self) {
        for flight in self.flights.values() {
            let member = &mut self.pool.members[flight.member];
            if member.generation == flight.generation {
                member.in_flight = member.in_flight.saturating_sub(1);
            }
        }
    }
}

impl<A: Data + Clone, R: Data, S: Data + Clone> PoolRun<'_, A, R, S> {
    /// The inputs that no worker was left to run (known once the iterator
    /// ended).
    pub fn unconsumed(&self) -> &[usize] {
        &self.unconsumed
    }

    fn dispatch(&mut self) {
        for index in 0..self.pool.members.len() {
            loop {
                let member = &mut self.pool.members[index];
                let Some(engine) = member.engine.clone() else {
                    break;
                };
                if member.in_flight >= DEPTH {
                    break;
                }
                let Some(indices) = self.queue.pop_front() else {
                    return;
                };
                let batch: Vec<A> = match &indices {
                    Indices::Range(start, end) => self.inputs[*start..*end].to_vec(),
                    Indices::List(list) => list.iter().map(|&i| self.inputs[i].clone()).collect(),
                };
                let task = engine.batch(self.pool.resilient, batch);
                member.in_flight += 1;
                let (worker, generation) = (member.id, member.generation);
                if self.pool.on_event.is_some() {
                    for input in indices.iter() {
                        self.pool.emit(PoolEvent::Enqueued { input, worker });
                    }
                }
                let id = self.set.insert(task);
                self.flights.insert(
                    id,
                    Flight {
                        member: index,
                        generation,
                        worker,
                        indices,
                        _engine: engine,
                    },
                );
            }
        }
    }

    fn handle(
        &mut self,
        id: TaskId,
        outcome: processional_task::Result<BatchOut<R>>,
        sink: &mut dyn Sink<R>,
    ) {
        let Some(flight) = self.flights.remove(&id) else {
            return;
        };
        let current = self.pool.members[flight.member].generation == flight.generation;
        if current {
            self.pool.members[flight.member].in_flight -= 1;
        }
        let mut retry = Vec::new();
        let mut death = None;
        match outcome {
            Ok(Ok(done)) => {
                let events = self.pool.on_event.is_some();
                let done = match (&flight.indices, events) {
                    (Indices::Range(start, _), false) => {
                        match done.complete(flight.indices.len()) {
                            Ok(values) => {
                                sink.run(*start, values);
                                Err(())
                            }
                            Err(done) => Ok(done),
                        }
                    }
                    _ => Ok(done),
                };
                let outcomes = done
                    .into_iter()
                    .flat_map(|done| done.into_outcomes(flight.indices.len()));
                for (input, outcome) in flight.indices.iter().zip(outcomes) {
                    match outcome {
                        Ok(value) => {
                            if events {
                                self.pool.emit(PoolEvent::Finished {
                                    input,
                                    worker: flight.worker,
                                });
                            }
                            sink.one(input, Ok(value));
                        }
                        Err(Failure::NotRun) => retry.push(input),
                        Err(failure) => {
                            let error = WorkerError::from_failure(failure);
                            if !self.pool.resilient && death.is_none() {
                                death = Some(error.duplicate());
                            }
                            self.charge(input, error, flight.worker, &mut retry, sink);
                        }
                    }
                }
            }
            lost => {
                let error = match lost {
                    Ok(Err(failure)) => WorkerError::from_failure(failure),
                    Err(error) => WorkerError::from(error),
                    Ok(Ok(_)) => unreachable!("matched above"),
                };
                for input in flight.indices.iter() {
                    self.charge(input, error.duplicate(), flight.worker, &mut retry, sink);
                }
                death = Some(error);
            }
        }
        if let (Some(error), true) = (death, current) {
            self.kill(flight.member, error);
        }
        for indices in retry.chunks(self.chunk).rev() {
            self.queue.push_front(Indices::List(indices.to_vec()));
        }
        let member = &self.pool.members[flight.member];
        if current && member.engine.is_some() && member.in_flight == 0 {
            self.pool.emit(PoolEvent::WorkerIdle { worker: member.id });
        }
    }

    fn charge(
        &mut self,
        input: usize,
        error: WorkerError,
        worker: WorkerId,
        retry: &mut Vec<usize>,
        sink: &mut dyn Sink<R>,
    ) {
        self.attempts[input] += 1;
        if self.attempts[input] <= self.pool.retries {
            self.pool.emit(PoolEvent::Retried { input, worker });
            retry.push(input);
        } else {
            self.pool.emit(PoolEvent::Finished { input, worker });
            sink.one(input, Err(error));
        }
    }

    fn kill(&mut self, index: usize, error: WorkerError) {
        let member = &mut self.pool.members[index];
        if member.engine.take().is_none() {
            return;
        }
        let worker = member.id;
        self.pool.emit(PoolEvent::WorkerDied {
            worker,
            error: error.to_string(),
        });
        self.pool.members[index].error = Some(error);
        if self.pool.replace_dead
            && let Err(error) = self.pool.replace(index)
        {
            log::warn!("processional: cannot replace the dead {worker}: {error}");
        }
    }
}

impl<A: Data + Clone, R: Data, S: Data + Clone> PoolRun<'_, A, R, S> {
    /// Takes one step: sends what it can, waits for one batch and hands
    /// its results to `sink`. `false` once the run is over.
    fn step(&mut self, sink: &mut dyn Sink<R>) -> bool {
        if self.done {
            return false;
        }
        self.dispatch();
        if self.flights.is_empty() {
            self.unconsumed = self
                .queue
                .drain(..)
                .flat_map(|i| i.iter().collect::<Vec<_>>())
                .collect();
            self.unconsumed.sort_unstable();
            self.done = true;
            return false;
        }
        match self.set.next() {
            Some((id, outcome)) => self.handle(id, outcome, sink),
            None => self.flights.clear(),
        }
        true
    }

    /// Runs to the end, handing every result to `sink`.
    fn drive(&mut self, sink: &mut dyn Sink<R>) {
        for (index, result) in self.ready.drain(..).collect::<Vec<_>>() {
            sink.one(index, result);
        }
        while self.step(sink) {}
    }
}

impl<A: Data + Clone, R: Data, S: Data + Clone> Iterator for PoolRun<'_, A, R, S> {
    type Item = (usize, Result<R, WorkerError>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            let mut ready = std::mem::take(&mut self.ready);
            let more = self.step(&mut |index: usize, result: Result<R, WorkerError>| {
                ready.push_back((index, result))
            });
            self.ready = ready;
            if !more && self.ready.is_empty() {
                return None;
            }
        }
    }
}
