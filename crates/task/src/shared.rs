//! [`SharedTask`]: one task that many may wait for.
//!
//! Like a [`TaskSet`](crate::TaskSet), a shared task polls its task once
//! with a waker of its own and lets the completing thread do the rest: the
//! waker takes the outcome, stores it, and wakes every waiting thread and
//! future. No thread is started for it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::task::Task;

/// The outcome of a [`SharedTask`]: a clone of the value, or the error
/// shared by every waiter.
///
/// The error is an `Arc<Error>` because [`Error`] is not `Clone`: some of
/// its variants keep their `std::io::Error` source, which cannot be cloned,
/// and cloning them into strings would lose it. `Arc<Error>` dereferences
/// to the [`Error`] (`error.is_cancelled()`, `matches!(*error, …)`) and is
/// itself an [`std::error::Error`].
///
/// ```
/// use processional_task::{Error, Task};
///
/// let shared = Task::<u8>::ready(Err(Error::Cancelled)).shared();
/// let (first, second) = (shared.clone().wait(), shared.wait());
/// assert!(first.unwrap_err().is_cancelled() && second.unwrap_err().is_cancelled());
/// ```
pub type SharedResult<T> = std::result::Result<T, Arc<Error>>;

/// A [`Task`] that many may wait for: cloneable, and every clone can
/// [`wait`](Self::wait), [`wait_timeout`](Self::wait_timeout) or `.await`,
/// each getting a clone of the value (or the shared error, see
/// [`SharedResult`]).
///
/// Made by [`Task::shared`]. Any clone may [`cancel`](Self::cancel) the
/// call, for everyone. When the last clone is dropped before the call
/// finishes, the task is detached, like a dropped [`Task`].
///
/// ```
/// use processional_task::Task;
///
/// let (task, completer) = Task::pending();
/// let shared = task.shared();
/// let waiters: Vec<_> = (0..3)
///     .map(|_| {
///         let shared = shared.clone();
///         std::thread::spawn(move || shared.wait().unwrap())
///     })
///     .collect();
/// completer.complete(Ok(String::from("for everyone")));
/// for waiter in waiters {
///     assert_eq!(waiter.join().unwrap(), "for everyone");
/// }
/// assert_eq!(pollster::block_on(shared).unwrap(), "for everyone");
/// ```
pub struct SharedTask<T> {
    state: Arc<State<T>>,
}

struct State<T> {
    inner: Mutex<Inner<T>>,
    /// Signalled once the outcome is stored.
    finished: Condvar,
    token: CancelToken,
}

struct Inner<T> {
    /// The task while it runs and is watched.
    task: Option<Task<T>>,
    /// The outcome, once the task finished.
    outcome: Option<SharedResult<T>>,
    /// The waker fired while the task was being watched, before it was
    /// stored in `task`.
    woken_early: bool,
    /// The futures waiting for the outcome.
    wakers: Vec<Waker>,
}

impl<T> State<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // No user code runs under this lock (cloning `T` aside, which
        // leaves the state untouched if it panics).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Send + 'static> State<T> {
    /// Polls `task` with a waker that publishes its outcome; publishes at
    /// once if it is finished. Holds no lock while polling: a driven task's
    /// poll asks its runtime for progress, which must not find us locked.
    fn watch(self: &Arc<Self>, mut task: Task<T>) {
        loop {
            let waker = Waker::from(Arc::new(Watcher {
                state: Arc::downgrade(self),
            }));
            let polled = Pin::new(&mut task).poll(&mut Context::from_waker(&waker));
            let mut inner = self.lock();
            match polled {
                Poll::Ready(outcome) => return Self::publish(inner, &self.finished, outcome),
                Poll::Pending if !std::mem::take(&mut inner.woken_early) => {
                    inner.task = Some(task);
                    return;
                }
                // Completed between the poll and the lock.
                Poll::Pending if task.is_finished() => {
                    return Self::publish(inner, &self.finished, task.wait());
                }
                // A spurious wake: watch again.
                Poll::Pending => {}
            }
        }
    }

    fn publish(mut inner: MutexGuard<'_, Inner<T>>, finished: &Condvar, outcome: Result<T>) {
        inner.outcome = Some(outcome.map_err(Arc::new));
        let wakers = std::mem::take(&mut inner.wakers);
        drop(inner);
        finished.notify_all();
        for waker in wakers {
            waker.wake();
        }
    }
}

/// The waker of the watched task; holds the state weakly, so that the last
/// clone's drop detaches the task.
struct Watcher<T> {
    state: Weak<State<T>>,
}

impl<T: Send + 'static> Wake for Watcher<T> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let Some(state) = self.state.upgrade() else {
            return;
        };
        let task = {
            let mut inner = state.lock();
            match inner.task.take() {
                Some(task) => task,
                None => {
                    if inner.outcome.is_none() {
                        inner.woken_early = true;
                    }
                    return;
                }
            }
        };
        if task.is_finished() {
            let outcome = task.wait();
            State::publish(state.lock(), &state.finished, outcome);
        } else {
            state.watch(task);
        }
    }
}

impl<T: Clone + Send + 'static> Task<T> {
    /// Turns the task into a [`SharedTask`]: cloneable, and every clone can
    /// wait for the outcome and get a clone of it.
    pub fn shared(self) -> SharedTask<T> {
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                task: None,
                outcome: None,
                woken_early: false,
                wakers: Vec::new(),
            }),
            finished: Condvar::new(),
            token: self.cancel_token().clone(),
        });
        state.watch(self);
        SharedTask { state }
    }
}

impl<T: Clone> SharedTask<T> {
    /// Blocks until the call finishes; returns a clone of its value, or its
    /// error.
    pub fn wait(&self) -> SharedResult<T> {
        let mut inner = self.state.lock();
        loop {
            if let Some(outcome) = &inner.outcome {
                return outcome.clone();
            }
            inner = self
                .state
                .finished
                .wait(inner)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits at most `timeout` for the call: its outcome, or `None` if time
    /// ran out (wait again later: nothing is lost).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<SharedResult<T>> {
        let deadline = Instant::now().checked_add(timeout);
        let mut inner = self.state.lock();
        loop {
            if let Some(outcome) = &inner.outcome {
                return Some(outcome.clone());
            }
            inner = match deadline {
                None => self
                    .state
                    .finished
                    .wait(inner)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    self.state
                        .finished
                        .wait_timeout(inner, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

impl<T> SharedTask<T> {
    /// Whether the call has finished (its outcome is available).
    pub fn is_finished(&self) -> bool {
        self.state.lock().outcome.is_some()
    }

    /// Requests the cancellation of the call, for every clone: see
    /// [`Task::cancel`].
    pub fn cancel(&self) {
        self.state.token.cancel();
    }

    /// The call's cancellation token.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.state.token
    }
}

impl<T> Clone for SharedTask<T> {
    fn clone(&self) -> Self {
        SharedTask {
            state: self.state.clone(),
        }
    }
}

/// `.await` a clone of the outcome. Each clone is a future of its own; a
/// finished one keeps answering with a clone.
impl<T: Clone> Future for SharedTask<T> {
    type Output = SharedResult<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SharedResult<T>> {
        let mut inner = self.state.lock();
        if let Some(outcome) = &inner.outcome {
            return Poll::Ready(outcome.clone());
        }
        if !inner.wakers.iter().any(|waker| waker.will_wake(cx.waker())) {
            inner.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for SharedTask<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.state.lock();
        let state = match &inner.outcome {
            None => "pending",
            Some(Ok(_)) => "finished",
            Some(Err(_)) => "failed",
        };
        f.debug_struct("SharedTask")
            .field("state", &state)
            .field("waiting_futures", &inner.wakers.len())
            .field("cancelled", &self.state.token.is_cancelled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Completer, Driver};
    use crate::test_log;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::thread;

    const PATIENCE: Duration = Duration::from_secs(30);

    #[test]
    fn every_clone_gets_the_value_from_several_threads() {
        let (task, completer) = Task::pending();
        let shared = task.shared();
        let (started, waiting) = mpsc::channel();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let shared = shared.clone();
                let started = started.clone();
                thread::spawn(move || {
                    started.send(()).unwrap();
                    shared.wait()
                })
            })
            .collect();
        for _ in 0..8 {
            waiting.recv_timeout(PATIENCE).expect("every waiter starts");
        }
        assert!(!shared.is_finished());
        completer.complete(Ok(vec![1u8, 2, 3]));
        for waiter in waiters {
            assert_eq!(waiter.join().unwrap().unwrap(), [1, 2, 3]);
        }
        assert!(shared.is_finished());
        assert_eq!(shared.wait().unwrap(), [1, 2, 3], "waiting again is fine");
    }

    #[test]
    fn errors_are_shared() {
        let (task, completer) = Task::<u32>::pending();
        let shared = task.shared();
        let other = shared.clone();
        drop(completer);
        let error = shared.wait().unwrap_err();
        assert!(matches!(*error, Error::Stopped));
        assert!(Arc::ptr_eq(&error, &other.wait().unwrap_err()));
        let as_std: &dyn std::error::Error = &error;
        assert_eq!(as_std.to_string(), Error::Stopped.to_string());
    }

    /// A driver whose request for progress completes the task at once: the
    /// completion then lands between the poll that registers the waker and
    /// the moment the task is stored.
    struct CompletingDriver(Mutex<Option<Completer<u32>>>);

    impl Driver for CompletingDriver {
        fn drive(&self, _done: &dyn Fn() -> bool, _deadline: Option<Instant>) {}

        fn ensure_progress(&self) {
            if let Some(completer) = self.0.lock().unwrap().take() {
                completer.complete(Ok(17));
            }
        }
    }

    #[test]
    fn a_completion_during_the_first_poll_is_not_lost() {
        let driver = Arc::new(CompletingDriver(Mutex::new(None)));
        let (task, completer) = Task::pending_driven(driver.clone());
        *driver.0.lock().unwrap() = Some(completer);
        let shared = task.shared();
        assert!(shared.is_finished(), "the early completion was published");
        assert_eq!(shared.wait_timeout(PATIENCE).unwrap().unwrap(), 17);
    }

    #[test]
    fn wait_timeout_gives_up_and_waits_again() {
        let (task, completer) = Task::pending();
        let shared = task.shared();
        assert!(shared.wait_timeout(Duration::from_millis(10)).is_none());
        assert!(shared.wait_timeout(Duration::ZERO).is_none());
        completer.complete(Ok(4));
        assert_eq!(shared.wait_timeout(PATIENCE).unwrap().unwrap(), 4);
    }

    #[test]
    fn finished_and_ready_tasks_share_at_once() {
        let shared = Task::ready(Ok('r')).shared();
        assert!(shared.is_finished());
        assert_eq!(shared.wait().unwrap(), 'r');
        assert_eq!(pollster::block_on(shared.clone()).unwrap(), 'r');
    }

    #[test]
    fn clones_await_under_executors_on_several_threads() {
        let (task, completer) = Task::pending();
        let shared = task.shared();
        let (started, waiting) = mpsc::channel();
        let awaiting: Vec<_> = (0..4)
            .map(|_| {
                let shared = shared.clone();
                let started = started.clone();
                thread::spawn(move || {
                    pollster::block_on(async move {
                        started.send(()).unwrap();
                        shared.await
                    })
                })
            })
            .collect();
        for _ in 0..4 {
            waiting.recv_timeout(PATIENCE).expect("every waiter starts");
        }
        completer.complete(Ok("awaited"));
        for thread in awaiting {
            assert_eq!(thread.join().unwrap().unwrap(), "awaited");
        }
    }

    /// Counts wakes, for polling by hand.
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_polled_clone_is_woken_once_the_task_finishes() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let (task, completer) = Task::pending();
        let mut shared = task.shared();
        assert!(Pin::new(&mut shared).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut shared).poll(&mut cx).is_pending());
        completer.complete(Ok(1u8));
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "one registration, one wake"
        );
        assert!(matches!(
            Pin::new(&mut shared).poll(&mut cx),
            Poll::Ready(Ok(1))
        ));
    }

    #[test]
    fn cancel_from_any_clone_reaches_the_call() {
        let (task, completer) = Task::<()>::pending();
        let shared = task.shared();
        shared.clone().cancel();
        assert!(completer.token().is_cancelled());
        assert!(shared.cancel_token().is_cancelled());
        completer.complete(Err(Error::Cancelled));
        assert!(shared.wait().unwrap_err().is_cancelled());
    }

    #[test]
    fn dropping_every_clone_detaches_the_task() {
        test_log::install();
        let marker = "shared-and-dropped-51aa";
        let (task, completer) = Task::<()>::pending();
        let shared = task.shared();
        drop(shared.clone());
        assert!(!completer.is_abandoned(), "a clone still holds it");
        drop(shared);
        assert!(completer.is_abandoned());
        completer.complete(Err(Error::Panicked(crate::PanicReport::new(marker))));
        assert_eq!(test_log::count(marker), 1);
    }
}
