//! [`Task`], the handle to one call, and [`Completer`], the side that
//! delivers its outcome.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::cancel::{CancelToken, TokenSource, with_token_source};
use crate::error::{Error, Result};
use crate::panic::catch_panic;

/// The outcome is not there yet.
const PENDING: u8 = 0;
/// The outcome is stored in the slot.
const DONE: u8 = 1;
/// The outcome was handed to the task's owner.
const TAKEN: u8 = 2;

/// Makes progress on driven tasks (see [`Task::pending_driven`]).
///
/// A runtime whose replies arrive on a socket implements it so that the
/// thread waiting for a reply can read the socket itself, instead of having a
/// reader thread read it and wake the waiter (a thread hand-off saved on the
/// hot path).
pub trait Driver: Send + Sync {
    /// Blocks until `done()` returns `true` or `deadline` passes, making
    /// progress (e.g. reading and dispatching replies) meanwhile. May return
    /// early; the task calls it again while neither holds.
    fn drive(&self, done: &dyn Fn() -> bool, deadline: Option<Instant>);

    /// Makes sure progress happens without the caller driving it (e.g. wakes
    /// a reader thread), for a task that is polled as a future, queried or
    /// dropped. Must not block.
    fn ensure_progress(&self);
}

/// Whoever waits for the outcome.
enum Waiter {
    None,
    Thread(Thread),
    Waker(Waker),
}

impl Waiter {
    /// Wakes the waiter. A waker that panics is reported through `log`: the
    /// completing thread (a slave's loop, a reader) goes on.
    fn wake(self) {
        match self {
            Waiter::None => {}
            Waiter::Thread(thread) => thread.unpark(),
            Waiter::Waker(waker) => {
                if let Err(error) = catch_panic(move || waker.wake()) {
                    log::error!("processional: waking the waiter of a task failed: {error}");
                }
            }
        }
    }
}

/// An outcome as stored in a block: the error boxed, so that the block of
/// a small value stays small (an [`Error`] is large, and rare).
type Stored<T> = std::result::Result<T, Box<Error>>;

fn store<T>(outcome: Result<T>) -> Stored<T> {
    outcome.map_err(Box::new)
}

struct Slot<T> {
    outcome: Option<Stored<T>>,
    waiter: Waiter,
    /// The task handle is gone: nobody will collect the outcome.
    abandoned: bool,
}

/// What a task block carries after its completion state: nothing for
/// [`Task::pending`], the call itself for [`Task::with_call`].
trait Tail: Send + Sync {}

impl Tail for () {}

/// The completion block: the state shared by a [`Task`] and whatever
/// completes it (a [`Completer`] or a [`Call`]), in one allocation.
///
/// `C` is the tail: `()`, or a [`CallCell`] holding the call's closure, so
/// that a call and its task cost one allocation. The task sees every block
/// as `Shared<T, dyn Tail>`.
struct Shared<T, C: ?Sized = ()> {
    state: AtomicU8,
    slot: Mutex<Slot<T>>,
    /// Made on demand: most calls are never cancelled, nor asked for it.
    token: OnceLock<CancelToken>,
    driver: Option<Arc<dyn Driver>>,
    tail: C,
}

impl<T> Shared<T> {
    fn new(outcome: Option<Result<T>>, driver: Option<Arc<dyn Driver>>) -> Arc<Self> {
        Shared::with_tail(outcome, driver, ())
    }
}

impl<T, C> Shared<T, C> {
    fn with_tail(
        outcome: Option<Result<T>>,
        driver: Option<Arc<dyn Driver>>,
        tail: C,
    ) -> Arc<Self> {
        let state = if outcome.is_some() { DONE } else { PENDING };
        Arc::new(Shared {
            state: AtomicU8::new(state),
            slot: Mutex::new(Slot {
                outcome: outcome.map(store),
                waiter: Waiter::None,
                abandoned: false,
            }),
            token: OnceLock::new(),
            driver,
            tail,
        })
    }
}

impl<T, C: ?Sized> Shared<T, C> {
    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        // No user code runs under this lock, so a poisoned lock still guards
        // a consistent slot.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) != PENDING
    }

    fn token(&self) -> &CancelToken {
        self.token.get_or_init(CancelToken::new)
    }

    fn is_cancelled(&self) -> bool {
        self.token.get().is_some_and(CancelToken::is_cancelled)
    }

    /// Stores the outcome and wakes whoever waits; if the task handle is
    /// gone, drops the outcome instead (reporting an error).
    ///
    /// Nothing of the user's runs under the lock. The outcome of an
    /// abandoned task is dropped after the lock is released, and a panic
    /// there (a value whose `Drop` panics) is caught and reported: it must
    /// not unwind into whatever completes tasks.
    fn deliver(&self, outcome: Result<T>) {
        let mut slot = self.lock();
        if slot.abandoned {
            self.state.store(DONE, Ordering::Release);
            drop(slot);
            if let Err(error) = &outcome {
                report_uncollected(error);
            }
            discard(outcome);
            return;
        }
        slot.outcome = Some(store(outcome));
        self.state.store(DONE, Ordering::Release);
        let waiter = std::mem::replace(&mut slot.waiter, Waiter::None);
        drop(slot);
        waiter.wake();
    }
}

impl<T: Send, C: ?Sized + Send + Sync> TokenSource for Shared<T, C> {
    fn made(&self) -> Option<&CancelToken> {
        self.token.get()
    }

    fn token(&self) -> &CancelToken {
        Shared::token(self)
    }
}

/// Drops a value nobody will collect, reporting a panic of its `Drop`
/// instead of unwinding.
fn discard<V>(value: V) {
    if let Err(error) = catch_panic(move || drop(value)) {
        log::error!("processional: dropping the value of an uncollected task failed: {error}");
    }
}

/// Reports the error of a task whose handle is gone, once: through
/// `log::error!`, or on standard error when no logger listens
/// (`log::max_level()` is `Off`, as in a program that installed none), so
/// that a failure nobody waits for is never lost silently.
pub(crate) fn report_uncollected(error: &Error) {
    let no_logger = log::max_level() == log::LevelFilter::Off;
    report_uncollected_to(error, no_logger, &mut std::io::stderr().lock());
}

/// [`report_uncollected`] with the choice of sink made: `stderr` when
/// `no_logger`, else the `log` facade.
fn report_uncollected_to(error: &Error, no_logger: bool, stderr: &mut dyn std::io::Write) {
    if no_logger {
        // One write of the whole line, so that lines of concurrent reports
        // do not interleave. Nothing to do if standard error is gone.
        let line = format!("processional: a task failed and nobody waited for it: {error}\n");
        let _ = stderr.write_all(line.as_bytes());
    } else {
        log::error!("processional: a task failed and nobody waited for it: {error}");
    }
}

/// The handle to one call: its value or its error, once it finishes.
///
/// Wait for it with [`wait`](Self::wait), [`wait_timeout`](Self::wait_timeout)
/// or `.await` (it is a [`Future`], woken by the thread that completes it).
/// A task dropped without being waited for is *detached*: the call keeps
/// running, and if it fails, its error is reported once through
/// `log::error!`, or, when no logger is installed (`log::max_level()` is
/// `Off`), printed once to standard error with the prefix `processional:`.
#[must_use = "a task does nothing when dropped but detach the call; `wait` for it or call `detach`"]
pub struct Task<T> {
    shared: Arc<Shared<T, dyn Tail>>,
}

impl<T> Task<T> {
    /// A task and the [`Completer`] that will deliver its outcome.
    ///
    /// For runtimes: hand the completer to whatever runs the call.
    pub fn pending() -> (Task<T>, Completer<T>) {
        let shared = Shared::new(None, None);
        (
            Task {
                shared: shared.clone(),
            },
            Completer {
                shared: Some(shared),
            },
        )
    }

    /// Like [`pending`](Self::pending), but waits on the task call
    /// `driver.drive` on the waiting thread instead of parking it, and
    /// polling, querying or dropping it unfinished calls
    /// `driver.ensure_progress`.
    pub fn pending_driven(driver: Arc<dyn Driver>) -> (Task<T>, Completer<T>) {
        let shared = Shared::new(None, Some(driver));
        (
            Task {
                shared: shared.clone(),
            },
            Completer {
                shared: Some(shared),
            },
        )
    }

    /// A task that is already finished with `outcome`.
    pub fn ready(outcome: Result<T>) -> Task<T> {
        Task {
            shared: Shared::new(Some(outcome), None),
        }
    }

    /// Whether the call has finished (its outcome is available).
    pub fn is_finished(&self) -> bool {
        let done = self.shared.is_done();
        if !done {
            if let Some(driver) = &self.shared.driver {
                driver.ensure_progress();
            }
        }
        done
    }

    /// Requests the cancellation of the call: it ends with
    /// [`Error::Cancelled`] at its next [`checkpoint`](crate::checkpoint), or
    /// without running if it has not started. A call that never checks runs
    /// to its end: threads cannot be killed safely.
    pub fn cancel(&self) {
        self.shared.token().cancel();
    }

    /// The call's cancellation token.
    pub fn cancel_token(&self) -> &CancelToken {
        self.shared.token()
    }

    /// Blocks until the call finishes; returns its value or its error.
    pub fn wait(self) -> Result<T> {
        if !self.shared.is_done() {
            match &self.shared.driver {
                Some(driver) => {
                    let shared = &*self.shared;
                    while !shared.is_done() {
                        driver.drive(&|| shared.is_done(), None);
                    }
                }
                None => {
                    self.block(None);
                }
            }
        }
        self.take()
    }

    /// Waits at most `timeout` for the call: `Ok(outcome)` if it finished,
    /// `Err(task)` (the same task, to wait again later) if time ran out.
    pub fn wait_timeout(self, timeout: Duration) -> std::result::Result<Result<T>, Task<T>> {
        let deadline = Instant::now().checked_add(timeout);
        let finished = self.shared.is_done()
            || match &self.shared.driver {
                Some(driver) => {
                    let shared = &*self.shared;
                    loop {
                        if shared.is_done() {
                            break true;
                        }
                        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                            break false;
                        }
                        driver.drive(&|| shared.is_done(), deadline);
                    }
                }
                None => self.block(deadline),
            };
        if finished { Ok(self.take()) } else { Err(self) }
    }

    /// Cancels the call, then waits at most `timeout` for it to end, like
    /// [`wait_timeout`](Self::wait_timeout).
    pub fn terminate(self, timeout: Duration) -> std::result::Result<Result<T>, Task<T>> {
        self.cancel();
        self.wait_timeout(timeout)
    }

    /// Lets the call run on without anyone waiting for it. If it fails, its
    /// error is reported through `log::error!` (or on standard error when no
    /// logger is installed). Dropping the task does the same; `detach` says
    /// it on purpose.
    pub fn detach(self) {
        drop(self);
    }

    /// Parks until done or the deadline passes; whether it is done.
    fn block(&self, deadline: Option<Instant>) -> bool {
        let shared = &*self.shared;
        let mut backoff = Backoff::new();
        while !backoff.is_exhausted() {
            if shared.is_done() {
                return true;
            }
            backoff.snooze();
        }
        {
            let mut slot = shared.lock();
            if shared.is_done() {
                return true;
            }
            slot.waiter = Waiter::Thread(thread::current());
        }
        loop {
            if shared.is_done() {
                return true;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        let mut slot = shared.lock();
                        if matches!(slot.waiter, Waiter::Thread(_)) {
                            slot.waiter = Waiter::None;
                        }
                        return shared.is_done();
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }

    /// Takes the outcome of a finished task.
    fn take(&self) -> Result<T> {
        let mut slot = self.shared.lock();
        Self::take_locked(&self.shared, &mut slot)
    }

    fn take_locked(shared: &Shared<T, dyn Tail>, slot: &mut Slot<T>) -> Result<T> {
        match slot.outcome.take() {
            Some(outcome) => {
                shared.state.store(TAKEN, Ordering::Release);
                outcome.map_err(|error| *error)
            }
            None => panic!(
                "the outcome of a processional Task was already taken (polled after completion)"
            ),
        }
    }
}

/// `.await` the call's outcome.
///
/// # Panics
///
/// If polled again after it returned [`Poll::Ready`], like most futures.
impl<T> Future for Task<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let shared = &*self.shared;
        {
            let mut slot = shared.lock();
            if shared.is_done() {
                return Poll::Ready(Self::take_locked(shared, &mut slot));
            }
            match &slot.waiter {
                Waiter::Waker(waker) if waker.will_wake(cx.waker()) => {}
                _ => slot.waiter = Waiter::Waker(cx.waker().clone()),
            }
        }
        if let Some(driver) = &shared.driver {
            driver.ensure_progress();
        }
        Poll::Pending
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        let shared = &*self.shared;
        if shared.state.load(Ordering::Acquire) == TAKEN {
            return;
        }
        let (outcome, waiter) = {
            let mut slot = shared.lock();
            slot.abandoned = true;
            let waiter = std::mem::replace(&mut slot.waiter, Waiter::None);
            (slot.outcome.take(), waiter)
        };
        // Dropped outside the lock: a waker is the user's code.
        drop(waiter);
        match outcome {
            Some(Err(error)) => report_uncollected(&error),
            Some(Ok(_)) => {}
            None => {
                if let Some(driver) = &shared.driver {
                    driver.ensure_progress();
                }
            }
        }
    }
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.shared.state.load(Ordering::Acquire) {
            PENDING => "pending",
            DONE => "finished",
            _ => "collected",
        };
        f.debug_struct("Task")
            .field("state", &state)
            .field("driven", &self.shared.driver.is_some())
            .field("cancelled", &self.shared.is_cancelled())
            .finish()
    }
}

/// Delivers the outcome of a [`Task`]; held by whatever runs the call.
///
/// Dropping a completer without calling [`complete`](Self::complete)
/// completes the task with [`Error::Stopped`]: a task never hangs because
/// its call was lost.
pub struct Completer<T> {
    shared: Option<Arc<Shared<T>>>,
}

impl<T> Completer<T> {
    /// Delivers the outcome and wakes whoever waits. If the task was
    /// dropped, the value is dropped here and an error is reported through
    /// `log::error!` (or on standard error when no logger is installed).
    pub fn complete(mut self, outcome: Result<T>) {
        if let Some(shared) = self.shared.take() {
            shared.deliver(outcome);
        }
    }

    /// The call's cancellation token; [`Task::cancel`] cancels it. Runtimes
    /// install it around the call with [`with_token`](crate::with_token) and can subscribe to
    /// it with [`CancelToken::on_cancel`].
    pub fn token(&self) -> &CancelToken {
        match &self.shared {
            Some(shared) => shared.token(),
            // `shared` is only taken by `complete` and `drop`, which consume
            // the completer.
            None => unreachable!("a completer is used after completing"),
        }
    }

    /// Whether the task handle was dropped (nobody will collect the value;
    /// an error would be logged).
    pub fn is_abandoned(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|shared| shared.lock().abandoned)
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.take() {
            shared.deliver(Err(Error::Stopped));
        }
    }
}

impl<T> fmt::Debug for Completer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completer")
            .field("abandoned", &self.is_abandoned())
            .finish()
    }
}

impl<T: Send + 'static> Task<T> {
    /// A task and the [`Call`] that computes it with `f`, in one
    /// allocation: for runtimes that queue calls, a cheaper
    /// [`pending`](Self::pending) plus a boxed closure.
    ///
    /// [`Call::run`] runs `f` under the task's token with panics caught
    /// (skipping it with [`Error::Cancelled`] if the task was cancelled
    /// first); dropping the call unrun completes the task with
    /// [`Error::Stopped`].
    ///
    /// ```
    /// use processional_task::Task;
    ///
    /// let (task, call) = Task::with_call(|| 6 * 7);
    /// std::thread::spawn(move || call.run());
    /// assert_eq!(task.wait().unwrap(), 42);
    ///
    /// let (task, call) = Task::with_call(|| 1);
    /// drop(call);
    /// assert!(matches!(task.wait(), Err(processional_task::Error::Stopped)));
    /// ```
    pub fn with_call<F>(f: F) -> (Task<T>, Call)
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let block = Shared::with_tail(
            None,
            None,
            CallCell {
                f: Mutex::new(Some(f)),
            },
        );
        (
            Task {
                shared: block.clone(),
            },
            Call { block: Some(block) },
        )
    }
}

/// The closure of a [`Call`], in its task's block; taken once, by the run
/// or by the drop of the call.
struct CallCell<F> {
    f: Mutex<Option<F>>,
}

impl<F: Send> Tail for CallCell<F> {}

impl<F> CallCell<F> {
    fn take(&self) -> Option<F> {
        // Only `take` runs under this lock: a poisoned lock is consistent.
        self.f.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// A block seen by its call: what runs or stops it, whatever its types.
trait Runnable: TokenSource {
    fn run(&self, before_complete: &mut dyn FnMut());
    fn stop(&self);
}

impl<T, F> Runnable for Shared<T, CallCell<F>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    fn run(&self, before_complete: &mut dyn FnMut()) {
        let Some(f) = self.tail.take() else {
            return;
        };
        let outcome = if self.is_cancelled() {
            discard(f);
            Err(Error::Cancelled)
        } else {
            with_token_source(self, || catch_panic(f))
        };
        before_complete();
        self.deliver(outcome);
    }

    fn stop(&self) {
        let Some(f) = self.tail.take() else {
            return;
        };
        // The closure is dropped first (its captures are gone once the task
        // reports `Stopped`), and a panic there is caught: the task is
        // completed whatever the closure's `Drop` does.
        discard(f);
        self.deliver(Err(Error::Stopped));
    }
}

/// The call of a task made by [`Task::with_call`]: run it with
/// [`run`](Self::run) where calls run; dropping it unrun completes the task
/// with [`Error::Stopped`] (a task never hangs because its call was lost).
pub struct Call {
    /// `None` once run.
    block: Option<Arc<dyn Runnable>>,
}

impl Call {
    /// Runs the call on this thread and completes its task: with
    /// [`Error::Cancelled`] without running it if the task was cancelled,
    /// else with its value, or its panic as [`Error::Panicked`].
    /// [`checkpoint`](crate::checkpoint) and
    /// [`current_token`](crate::current_token) see the task's token
    /// meanwhile.
    pub fn run(self) {
        self.run_then(|| {});
    }

    /// [`run`](Self::run), calling `before_complete` after the call and
    /// before its task completes (on this thread; also when the call is
    /// skipped because it was cancelled).
    pub fn run_then(mut self, mut before_complete: impl FnMut()) {
        if let Some(block) = self.block.take() {
            block.run(&mut before_complete);
        }
    }

    /// A handle that cancels this call's task token, as
    /// [`Task::cancel`] does, after the call was moved away (to cancel
    /// the call that runs).
    pub fn canceller(&self) -> Canceller {
        Canceller {
            source: self
                .block
                .clone()
                .map(|block| block as Arc<dyn TokenSource>),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(block) = self.block.take() {
            block.stop();
        }
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field(
                "cancelled",
                &self
                    .block
                    .as_ref()
                    .is_some_and(|block| block.made().is_some_and(CancelToken::is_cancelled)),
            )
            .finish()
    }
}

/// Cancels the task of a [`Call`]; see [`Call::canceller`].
pub struct Canceller {
    source: Option<Arc<dyn TokenSource>>,
}

impl Canceller {
    /// Cancels the task's token (making it if need be), running its
    /// callbacks on this thread.
    pub fn cancel(&self) {
        if let Some(source) = &self.source {
            source.token().cancel();
        }
    }
}

impl fmt::Debug for Canceller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Canceller").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_log;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    #[test]
    fn completes_from_another_thread() {
        let (task, completer) = Task::pending();
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            completer.complete(Ok("hi"));
        });
        assert_eq!(task.wait().unwrap(), "hi");
        sender.join().unwrap();
    }

    #[test]
    fn wait_timeout_hands_the_task_back() {
        let (task, completer) = Task::<u32>::pending();
        let task = task
            .wait_timeout(Duration::from_millis(10))
            .expect_err("nothing completed it yet");
        assert!(!task.is_finished());
        completer.complete(Ok(5));
        assert!(task.is_finished());
        assert_eq!(
            task.wait_timeout(Duration::from_secs(60)).unwrap().unwrap(),
            5
        );
    }

    #[test]
    fn dropped_completer_stops_the_task() {
        let (task, completer) = Task::<u32>::pending();
        drop(completer);
        assert!(matches!(task.wait(), Err(Error::Stopped)));
    }

    #[test]
    fn ready_tasks_are_finished() {
        let task = Task::ready(Ok(3));
        assert!(task.is_finished());
        assert_eq!(task.wait().unwrap(), 3);
        let task = Task::<u8>::ready(Err(Error::Cancelled));
        assert!(task.wait().unwrap_err().is_cancelled());
    }

    #[test]
    fn cancel_reaches_the_completer_token() {
        let (task, completer) = Task::<()>::pending();
        let notified = Arc::new(AtomicBool::new(false));
        let flag = notified.clone();
        completer
            .token()
            .on_cancel(Box::new(move || flag.store(true, Ordering::SeqCst)));
        let task = task
            .terminate(Duration::from_millis(1))
            .expect_err("the completer has not answered");
        assert!(notified.load(Ordering::SeqCst));
        assert!(completer.token().is_cancelled());
        completer.complete(Err(Error::Cancelled));
        assert!(task.wait().unwrap_err().is_cancelled());
    }

    #[test]
    fn awaits_under_an_executor() {
        let (task, completer) = Task::pending();
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            completer.complete(Ok(41));
        });
        let value = pollster::block_on(async { task.await.unwrap() + 1 });
        assert_eq!(value, 42);
        sender.join().unwrap();
        assert_eq!(pollster::block_on(Task::ready(Ok(1))).unwrap(), 1);
    }

    #[test]
    fn uncollected_errors_are_logged_exactly_once() {
        test_log::install();
        // Completed with an error after its handle was dropped.
        let marker = "uncollected-after-drop-6f1c";
        let (task, completer) = Task::<()>::pending();
        drop(task);
        completer.complete(Err(Error::Panicked(crate::PanicReport::new(marker))));
        assert_eq!(test_log::count(marker), 1);

        // Dropped after it completed with an error.
        let marker = "uncollected-before-drop-a93e";
        let (task, completer) = Task::<()>::pending();
        completer.complete(Err(Error::Panicked(crate::PanicReport::new(marker))));
        assert_eq!(test_log::count(marker), 0);
        drop(task);
        assert_eq!(test_log::count(marker), 1);

        // Collected errors are not logged.
        let marker = "collected-c2d0";
        let (task, completer) = Task::<()>::pending();
        completer.complete(Err(Error::Panicked(crate::PanicReport::new(marker))));
        assert!(task.wait().is_err());
        assert_eq!(test_log::count(marker), 0);
    }

    #[test]
    fn without_a_logger_uncollected_errors_go_to_stderr_once() {
        test_log::install();
        let marker = "uncollected-to-stderr-41b7";
        let error = Error::Panicked(crate::PanicReport::new(marker));
        let mut stderr = Vec::new();
        report_uncollected_to(&error, true, &mut stderr);
        assert_eq!(
            String::from_utf8(stderr).unwrap(),
            format!(
                "processional: a task failed and nobody waited for it: task panicked: {marker}\n"
            )
        );
        assert_eq!(test_log::count(marker), 0, "not logged as well");

        let marker = "uncollected-to-log-9e02";
        let error = Error::Panicked(crate::PanicReport::new(marker));
        let mut stderr = Vec::new();
        report_uncollected_to(&error, false, &mut stderr);
        assert!(stderr.is_empty(), "not printed as well");
        assert_eq!(test_log::count(marker), 1);
    }

    /// A driver that completes the task itself when asked to drive.
    struct FakeDriver {
        completer: Mutex<Option<Completer<u32>>>,
        drives: AtomicUsize,
        progress_requests: AtomicUsize,
    }

    impl Driver for FakeDriver {
        fn drive(&self, done: &dyn Fn() -> bool, _deadline: Option<Instant>) {
            self.drives.fetch_add(1, Ordering::SeqCst);
            // Progress only every second call, to exercise the re-checks.
            if self.drives.load(Ordering::SeqCst) % 2 == 0 {
                if let Some(completer) = self.completer.lock().unwrap().take() {
                    completer.complete(Ok(7));
                }
            }
            let _ = done();
        }

        fn ensure_progress(&self) {
            self.progress_requests.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn driven() -> (Task<u32>, Arc<FakeDriver>) {
        let driver = Arc::new(FakeDriver {
            completer: Mutex::new(None),
            drives: AtomicUsize::new(0),
            progress_requests: AtomicUsize::new(0),
        });
        let (task, completer) = Task::pending_driven(driver.clone());
        *driver.completer.lock().unwrap() = Some(completer);
        (task, driver)
    }

    #[test]
    fn driven_tasks_are_completed_by_their_driver() {
        let (task, driver) = driven();
        assert!(!task.is_finished());
        assert_eq!(driver.progress_requests.load(Ordering::SeqCst), 1);
        assert_eq!(task.wait().unwrap(), 7);
        assert_eq!(driver.drives.load(Ordering::SeqCst), 2);

        let (task, driver) = driven();
        assert_eq!(
            task.wait_timeout(Duration::from_secs(60)).unwrap().unwrap(),
            7
        );
        assert_eq!(driver.drives.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn driven_tasks_ask_for_progress_when_polled_or_dropped() {
        let (task, driver) = driven();
        let mut task = std::pin::pin!(task);
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(task.as_mut().poll(&mut cx).is_pending());
        assert_eq!(driver.progress_requests.load(Ordering::SeqCst), 1);
        driver.drive(&|| false, None);
        driver.drive(&|| false, None);
        assert!(matches!(task.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));

        let (task, driver) = driven();
        drop(task);
        assert_eq!(driver.progress_requests.load(Ordering::SeqCst), 1);
    }
}
