//! [`TaskSet`]: many tasks, handed back as they finish.
//!
//! No thread per task and no polling: each task, when inserted, is polled
//! once as a future with a waker of the set's own. The thread that completes
//! the task wakes that waker, which pushes the task's id onto the set's
//! ready queue and wakes whoever waits for the set (a blocked thread through
//! a condition variable, an async task through its waker).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_core::Stream;

use crate::error::Result;
use crate::task::{Task, report_uncollected};

/// Names a task in the [`TaskSet`] it was inserted into.
///
/// Ids are given in the order of insertion, starting at 0, and never reused
/// within a set: [`index`](Self::index) is the task's position in that
/// order.
///
/// ```
/// use processional_task::{Task, TaskSet};
///
/// let mut set = TaskSet::new();
/// let first = set.insert(Task::ready(Ok("first")));
/// let second = set.insert(Task::ready(Ok("second")));
/// assert_eq!((first.index(), second.index()), (0, 1));
/// let mut finished: Vec<_> = set.map(|(id, outcome)| (id, outcome.unwrap())).collect();
/// finished.sort();
/// assert_eq!(finished, [(first, "first"), (second, "second")]);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(u64);

impl TaskId {
    /// The task's position in the order of insertion into its set: 0 for
    /// the first task inserted, 1 for the next, …
    pub fn index(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task #{}", self.0)
    }
}

/// The ids of finished tasks, in the order they finished, and whoever waits
/// for one.
struct Ready {
    state: Mutex<ReadyState>,
    /// Signalled when an id is pushed, for a thread blocked in `next`.
    available: Condvar,
}

struct ReadyState {
    ids: VecDeque<TaskId>,
    /// The waker of an async task waiting for an id.
    waker: Option<Waker>,
}

impl Ready {
    fn new() -> Arc<Self> {
        Arc::new(Ready {
            state: Mutex::new(ReadyState {
                ids: VecDeque::new(),
                waker: None,
            }),
            available: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ReadyState> {
        // No user code runs under this lock: a poisoned lock still guards a
        // consistent queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, id: TaskId) {
        let waker = {
            let mut state = self.lock();
            state.ids.push_back(id);
            state.waker.take()
        };
        self.available.notify_one();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The waker a set polls one task with: the task's completer wakes it once
/// the outcome is stored.
struct Finished {
    id: TaskId,
    ready: Arc<Ready>,
}

impl Wake for Finished {
    fn wake(self: Arc<Self>) {
        self.ready.push(self.id);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.push(self.id);
    }
}

/// One task of a set.
enum Member<T> {
    /// Not finished when last looked at; its waker is registered.
    Running(Task<T>),
    /// Finished when inserted (its id is already in the ready queue).
    Finished(Result<T>),
}

/// Tasks handed back as they finish, in the order they finish.
///
/// [`insert`](Self::insert) any [`Task<T>`]: from `thread()`, a slave
/// thread, a slave process or a server, or [`Task::pending`]; each gets a
/// [`TaskId`]. Then take them back as they finish, each with its outcome:
///
/// - blocking: a `TaskSet` is an [`Iterator`] whose `next` waits for the
///   next task to finish (`for (id, outcome) in &mut set`), and
///   [`next_timeout`](Self::next_timeout) waits at most so long;
/// - async: [`next_async`](Self::next_async), or the set as a
///   [`Stream`](https://docs.rs/futures-core/0.3/futures_core/stream/trait.Stream.html).
///
/// Both end (`None`) when the set is empty; inserting more tasks later
/// brings them back. No thread is started per task: the thread that
/// completes a task wakes the set (a process task asks its connection for
/// progress, as an awaited task does).
///
/// Dropping the set detaches the tasks still in it: they run on, and the
/// errors of those that fail, or had failed unseen, are reported through
/// `log::error!` (or on standard error when no logger is installed), as for
/// a dropped [`Task`].
///
/// ```
/// use processional_task::{Task, TaskSet};
///
/// # fn main() -> processional_task::Result<()> {
/// let mut set = TaskSet::new();
/// let (slow, slow_completer) = Task::pending();
/// let (fast, fast_completer) = Task::pending();
/// let slow = set.insert(slow);
/// let fast = set.insert(fast);
///
/// fast_completer.complete(Ok("fast"));
/// let (first, outcome) = set.next().expect("a task is in the set");
/// assert_eq!((first, outcome?), (fast, "fast"));
///
/// slow_completer.complete(Ok("slow"));
/// let (second, outcome) = set.next().expect("a task is in the set");
/// assert_eq!((second, outcome?), (slow, "slow"));
/// assert!(set.next().is_none());
/// # Ok(())
/// # }
/// ```
pub struct TaskSet<T> {
    members: HashMap<TaskId, Member<T>>,
    ready: Arc<Ready>,
    next_index: u64,
}

impl<T> TaskSet<T> {
    /// An empty set.
    pub fn new() -> Self {
        TaskSet {
            members: HashMap::new(),
            ready: Ready::new(),
            next_index: 0,
        }
    }

    /// Adds `task`; its outcome comes back with the returned id once it
    /// finishes (at once if it already has).
    pub fn insert(&mut self, task: Task<T>) -> TaskId {
        let id = TaskId(self.next_index);
        self.next_index += 1;
        self.watch(id, task);
        id
    }

    /// How many tasks are in the set: running, or finished and not yet
    /// taken back.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the set holds no task.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Waits at most `timeout` for the next task to finish; takes it out of
    /// the set and returns its id and outcome.
    ///
    /// `None` if the set is empty (at once) or no task finished in time (the
    /// tasks stay in the set): [`is_empty`](Self::is_empty) tells which.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<(TaskId, Result<T>)> {
        // A deadline past the clock's range is no deadline.
        self.next_until(Instant::now().checked_add(timeout))
    }

    /// Waits for the next task to finish without blocking the thread; takes
    /// it out of the set. `None` if the set is empty.
    ///
    /// The same as the [`Stream`](https://docs.rs/futures-core/0.3/futures_core/stream/trait.Stream.html) item, without
    /// needing a stream extension trait.
    ///
    /// ```
    /// use processional_task::{Task, TaskSet};
    ///
    /// let mut set: TaskSet<u32> = [Task::ready(Ok(1)), Task::ready(Ok(2))].into_iter().collect();
    /// let sum = pollster::block_on(async {
    ///     let mut sum = 0;
    ///     while let Some((_, outcome)) = set.next_async().await {
    ///         sum += outcome.unwrap();
    ///     }
    ///     sum
    /// });
    /// assert_eq!(sum, 3);
    /// ```
    pub async fn next_async(&mut self) -> Option<(TaskId, Result<T>)> {
        poll_fn(|cx| self.poll_finished(cx)).await
    }

    /// Registers the set's waker for `task`, or records its outcome if it
    /// has finished.
    fn watch(&mut self, id: TaskId, mut task: Task<T>) {
        let waker = Waker::from(Arc::new(Finished {
            id,
            ready: self.ready.clone(),
        }));
        // Polling also asks a driven task (a process call) for progress
        // without anyone driving it, as for an awaited task.
        match Pin::new(&mut task).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(outcome) => {
                self.members.insert(id, Member::Finished(outcome));
                self.ready.push(id);
            }
            Poll::Pending => {
                self.members.insert(id, Member::Running(task));
            }
        }
    }

    /// Takes the task named by an id from the ready queue out of the set,
    /// with its outcome; `None` if the id is stale (the task was already
    /// taken) or the wake was spurious (the task is watched again).
    fn take(&mut self, id: TaskId) -> Option<Result<T>> {
        match self.members.remove(&id)? {
            Member::Finished(outcome) => Some(outcome),
            Member::Running(task) if task.is_finished() => Some(task.wait()),
            Member::Running(task) => {
                self.watch(id, task);
                None
            }
        }
    }

    fn next_until(&mut self, deadline: Option<Instant>) -> Option<(TaskId, Result<T>)> {
        loop {
            if self.members.is_empty() {
                return None;
            }
            let id = {
                let mut state = self.ready.lock();
                loop {
                    if let Some(id) = state.ids.pop_front() {
                        break id;
                    }
                    state = match deadline {
                        None => self
                            .ready
                            .available
                            .wait(state)
                            .unwrap_or_else(PoisonError::into_inner),
                        Some(deadline) => {
                            let now = Instant::now();
                            if now >= deadline {
                                return None;
                            }
                            self.ready
                                .available
                                .wait_timeout(state, deadline - now)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0
                        }
                    };
                }
            };
            if let Some(outcome) = self.take(id) {
                return Some((id, outcome));
            }
        }
    }

    fn poll_finished(&mut self, cx: &mut Context<'_>) -> Poll<Option<(TaskId, Result<T>)>> {
        loop {
            if self.members.is_empty() {
                return Poll::Ready(None);
            }
            let id = {
                let mut state = self.ready.lock();
                match state.ids.pop_front() {
                    Some(id) => id,
                    None => {
                        match &state.waker {
                            Some(waker) if waker.will_wake(cx.waker()) => {}
                            _ => state.waker = Some(cx.waker().clone()),
                        }
                        return Poll::Pending;
                    }
                }
            };
            if let Some(outcome) = self.take(id) {
                return Poll::Ready(Some((id, outcome)));
            }
        }
    }
}

/// Blocking: `next` waits for the next task to finish and takes it out of
/// the set; `None` when the set is empty. `for (id, outcome) in &mut set`
/// takes every task back; `set.collect::<Vec<_>>()` waits for all of them.
///
/// (With a stream extension trait such as `futures::StreamExt` in scope,
/// `set.next()` is ambiguous: write `Iterator::next(&mut set)`, or use
/// [`next_async`](TaskSet::next_async).)
impl<T> Iterator for TaskSet<T> {
    type Item = (TaskId, Result<T>);

    fn next(&mut self) -> Option<(TaskId, Result<T>)> {
        self.next_until(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len(), Some(self.len()))
    }
}

/// Async: the next task to finish, taken out of the set; `None` (the end of
/// the stream) when the set is empty.
impl<T> Stream for TaskSet<T> {
    type Item = (TaskId, Result<T>);

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_finished(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len(), Some(self.len()))
    }
}

/// A set of the tasks, with ids in the order of the iterator.
impl<T> FromIterator<Task<T>> for TaskSet<T> {
    fn from_iter<I: IntoIterator<Item = Task<T>>>(tasks: I) -> Self {
        let mut set = TaskSet::new();
        for task in tasks {
            set.insert(task);
        }
        set
    }
}

/// The set never pins what it holds (a value is moved out, never polled in
/// place), so pinning the set pins nothing inside it.
impl<T> Unpin for TaskSet<T> {}

impl<T> Default for TaskSet<T> {
    fn default() -> Self {
        TaskSet::new()
    }
}

impl<T> Drop for TaskSet<T> {
    fn drop(&mut self) {
        // Running tasks report their own errors when dropped; outcomes the
        // set took on insertion are the set's to report.
        for (_, member) in self.members.drain() {
            if let Member::Finished(Err(error)) = member {
                report_uncollected(&error);
            }
        }
    }
}

impl<T> fmt::Debug for TaskSet<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskSet")
            .field("len", &self.len())
            .field("finished", &self.ready.lock().ids.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::task::{Completer, Driver};
    use crate::test_log;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::thread;

    /// Generous bound for waits that must succeed.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// A task completed with `value` by another thread once `go` is sent.
    fn gated<T: Send + 'static>(value: T) -> (Task<T>, mpsc::Sender<()>, thread::JoinHandle<()>) {
        let (task, completer) = Task::pending();
        let (go, gate) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            gate.recv().expect("the test opens the gate");
            completer.complete(Ok(value));
        });
        (task, go, thread)
    }

    #[test]
    fn yields_tasks_in_the_order_they_finish() {
        let mut set = TaskSet::new();
        let mut completers: Vec<(TaskId, Completer<&str>)> = Vec::new();
        for _ in 0..3 {
            let (task, completer) = Task::pending();
            completers.push((set.insert(task), completer));
        }
        assert_eq!(set.len(), 3);
        let (c, completer_c) = completers.pop().unwrap();
        let (b, completer_b) = completers.pop().unwrap();
        let (a, completer_a) = completers.pop().unwrap();
        assert_eq!((a.index(), b.index(), c.index()), (0, 1, 2));

        completer_b.complete(Ok("b"));
        completer_c.complete(Ok("c"));
        completer_a.complete(Ok("a"));
        let order: Vec<(TaskId, &str)> = set
            .by_ref()
            .map(|(id, outcome)| (id, outcome.unwrap()))
            .collect();
        assert_eq!(order, [(b, "b"), (c, "c"), (a, "a")]);
        assert!(set.is_empty());
    }

    #[test]
    fn blocking_next_wakes_when_another_thread_completes() {
        let (first, go_first, first_thread) = gated(1u32);
        let (second, go_second, second_thread) = gated(2u32);
        let mut set = TaskSet::new();
        let first = set.insert(first);
        let second = set.insert(second);

        go_second.send(()).unwrap();
        let (id, outcome) = set.next().unwrap();
        assert_eq!((id, outcome.unwrap()), (second, 2));
        go_first.send(()).unwrap();
        let (id, outcome) = set.next().unwrap();
        assert_eq!((id, outcome.unwrap()), (first, 1));
        assert!(set.next().is_none());
        first_thread.join().unwrap();
        second_thread.join().unwrap();
    }

    #[test]
    fn finished_tasks_come_back_at_once_and_errors_too() {
        let mut set = TaskSet::new();
        let (pending, completer) = Task::<u8>::pending();
        let pending = set.insert(pending);
        let ready = set.insert(Task::ready(Ok(9)));
        let (id, outcome) = set.next().unwrap();
        assert_eq!((id, outcome.unwrap()), (ready, 9));

        drop(completer);
        let (id, outcome) = set.next().unwrap();
        assert_eq!(id, pending);
        assert!(matches!(outcome, Err(Error::Stopped)));
    }

    #[test]
    fn next_timeout_keeps_unfinished_tasks() {
        let mut set = TaskSet::new();
        let (task, completer) = Task::pending();
        let id = set.insert(task);
        assert!(set.next_timeout(Duration::from_millis(10)).is_none());
        assert_eq!(set.len(), 1, "a timed-out wait leaves the task in the set");
        assert!(set.next_timeout(Duration::ZERO).is_none());

        completer.complete(Ok('x'));
        let (finished, outcome) = set.next_timeout(PATIENCE).expect("it finished");
        assert_eq!((finished, outcome.unwrap()), (id, 'x'));
        assert!(set.is_empty());
    }

    #[test]
    fn an_empty_set_ends_at_once() {
        let mut set = TaskSet::<()>::new();
        assert!(set.is_empty());
        assert_eq!(set.len(), 0);
        assert!(set.next().is_none());
        assert!(set.next_timeout(PATIENCE).is_none());
        assert!(pollster::block_on(set.next_async()).is_none());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            Pin::new(&mut set).poll_next(&mut cx),
            Poll::Ready(None)
        ));
        // Usable again after it ran empty.
        set.insert(Task::ready(Ok(())));
        assert!(set.next().is_some());
    }

    #[test]
    fn many_tasks_from_many_threads() {
        const TASKS: u64 = 2000;
        const THREADS: u64 = 4;
        let mut set = TaskSet::new();
        let mut batches: Vec<Vec<(u64, Completer<u64>)>> =
            (0..THREADS).map(|_| Vec::new()).collect();
        for n in 0..TASKS {
            let (task, completer) = Task::pending();
            let id = set.insert(task);
            assert_eq!(id.index(), n);
            batches[(n % THREADS) as usize].push((n, completer));
        }
        let threads: Vec<_> = batches
            .into_iter()
            .map(|batch| {
                thread::spawn(move || {
                    for (n, completer) in batch {
                        completer.complete(Ok(n * 2));
                    }
                })
            })
            .collect();
        let mut seen = vec![false; TASKS as usize];
        for (id, outcome) in &mut set {
            assert_eq!(outcome.unwrap(), id.index() * 2);
            assert!(!seen[id.index() as usize], "{id} came back twice");
            seen[id.index() as usize] = true;
        }
        assert!(seen.iter().all(|&seen| seen));
        for thread in threads {
            thread.join().unwrap();
        }
    }

    #[test]
    fn async_tasks_come_back_in_the_order_they_finish() {
        let (first, go_first, first_thread) = gated("first");
        let (second, go_second, second_thread) = gated("second");
        let mut set = TaskSet::new();
        let first = set.insert(first);
        let second = set.insert(second);

        let order = pollster::block_on(async {
            go_second.send(()).unwrap();
            let (a, _) = set.next_async().await.unwrap();
            go_first.send(()).unwrap();
            let (b, _) = set.next_async().await.unwrap();
            assert!(set.next_async().await.is_none());
            [a, b]
        });
        assert_eq!(order, [second, first]);
        first_thread.join().unwrap();
        second_thread.join().unwrap();
    }

    /// Counts wakes, for polling the stream by hand.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_stream_waits_then_is_woken_by_the_completion() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let mut set = TaskSet::new();
        let (task, completer) = Task::pending();
        let id = set.insert(task);
        assert_eq!(Stream::size_hint(&set), (1, Some(1)));

        assert!(Pin::new(&mut set).poll_next(&mut cx).is_pending());
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        completer.complete(Ok(5));
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "the completion wakes the stream"
        );
        match Pin::new(&mut set).poll_next(&mut cx) {
            Poll::Ready(Some((finished, outcome))) => {
                assert_eq!((finished, outcome.unwrap()), (id, 5));
            }
            other => panic!("expected the finished task, got {other:?}"),
        }
        assert!(matches!(
            Pin::new(&mut set).poll_next(&mut cx),
            Poll::Ready(None)
        ));
    }

    /// A driver that only counts requests for progress.
    struct CountingDriver(AtomicUsize);

    impl Driver for CountingDriver {
        fn drive(&self, _done: &dyn Fn() -> bool, _deadline: Option<Instant>) {}

        fn ensure_progress(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn inserting_a_driven_task_asks_for_progress() {
        let driver = Arc::new(CountingDriver(AtomicUsize::new(0)));
        let (task, completer) = Task::<u8>::pending_driven(driver.clone());
        let mut set = TaskSet::new();
        set.insert(task);
        assert_eq!(
            driver.0.load(Ordering::SeqCst),
            1,
            "nobody drives a task in a set: its runtime must make progress alone"
        );
        completer.complete(Ok(1));
        assert_eq!(set.next().unwrap().1.unwrap(), 1);
    }

    /// A driver whose request for progress completes the task at once,
    /// while `insert` polls it.
    struct CompletingDriver(Mutex<Option<Completer<u8>>>);

    impl Driver for CompletingDriver {
        fn drive(&self, _done: &dyn Fn() -> bool, _deadline: Option<Instant>) {}

        fn ensure_progress(&self) {
            if let Some(completer) = self.0.lock().unwrap().take() {
                completer.complete(Ok(3));
            }
        }
    }

    #[test]
    fn a_completion_during_insert_is_not_lost() {
        let driver = Arc::new(CompletingDriver(Mutex::new(None)));
        let (task, completer) = Task::pending_driven(driver.clone());
        *driver.0.lock().unwrap() = Some(completer);
        let mut set = TaskSet::new();
        let id = set.insert(task);
        let (finished, outcome) = set
            .next_timeout(PATIENCE)
            .expect("the completion came back");
        assert_eq!((finished, outcome.unwrap()), (id, 3));
        assert!(set.is_empty());
    }

    #[test]
    fn errors_left_in_a_dropped_set_are_logged_once() {
        test_log::install();
        let marker = "left-in-a-set-4b7e";
        let mut set = TaskSet::<()>::new();
        set.insert(Task::ready(Err(Error::Panicked(crate::PanicReport::new(
            marker,
        )))));
        let (task, completer) = Task::<()>::pending();
        set.insert(task);
        let later = "completed-after-the-set-9d21";
        drop(set);
        assert_eq!(test_log::count(marker), 1);
        completer.complete(Err(Error::Panicked(crate::PanicReport::new(later))));
        assert_eq!(test_log::count(later), 1);
    }
}
