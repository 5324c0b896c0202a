//! [`Task`], the handle to one call, and [`Completer`], the side that
//! delivers its outcome.

use std::cell::UnsafeCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::AtomicPtr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crate::backoff::Backoff;
use crate::cancel::{CancelToken, TokenSource, with_token_source};
use crate::error::{Error, Result};
use crate::panic::catch_panic;

// The state of a block: a set of these bits (see `Shared`).

/// The outcome is in the block, and belongs to the task side.
const DONE: u8 = 1;
/// The task side took the outcome.
const TAKEN: u8 = 2;
/// A waiter is in the block, and belongs to the completing side.
const WAITER: u8 = 4;
/// The task handle is gone: nobody will collect the outcome.
const ABANDONED: u8 = 8;

/// Makes progress on driven tasks (see [`Task::pending_driven`]).
///
/// A runtime whose replies arrive on a socket implements it so that the
/// thread waiting for a reply can read the socket itself, instead of having a
/// reader thread read it and wake the waiter (a thread hand-off saved on the
/// hot path).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Instant;
/// use processional_task::{Driver, Task};
///
/// /// Completes nothing itself; a real driver reads its socket here.
/// struct Spin;
///
/// impl Driver for Spin {
///     fn drive(&self, done: &dyn Fn() -> bool, _deadline: Option<Instant>) {
///         while !done() {
///             std::thread::yield_now();
///         }
///     }
///     fn ensure_progress(&self) {}
/// }
///
/// let (task, completer) = Task::<u8>::pending_driven(Arc::new(Spin));
/// std::thread::spawn(move || completer.complete(Ok(5)));
/// assert_eq!(task.wait().unwrap(), 5); // the waiting thread ran `drive`
/// ```
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

/// Whoever waits for the outcome (boxed in the block, which stays small:
/// most outcomes are collected without waiting).
enum Waiter {
    Thread(Thread),
    Waker(Waker),
}

impl Waiter {
    /// Wakes the waiter. A waker that panics is reported through `log`: the
    /// completing thread (a slave's loop, a reader) goes on.
    fn wake(self) {
        match self {
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

/// What a task block carries after its completion state: nothing for
/// [`Task::pending`], the call itself for [`Task::with_call`].
trait Tail: Send + Sync {
    /// The driver of a driven task ([`Task::pending_driven`]).
    fn driver(&self) -> Option<&Arc<dyn Driver>> {
        None
    }
}

impl Tail for () {}

/// The tail of a driven task.
struct Driven(Arc<dyn Driver>);

impl Tail for Driven {
    fn driver(&self) -> Option<&Arc<dyn Driver>> {
        Some(&self.0)
    }
}

/// The completion block: the state shared by a [`Task`] and whatever
/// completes it (a [`Completer`] or a [`Call`]), in one allocation.
///
/// `C` is the tail: `()`, or a [`CallCell`] holding the call's closure, so
/// that a call and its task cost one allocation. The task sees every block
/// as `Shared<T, dyn Tail>`.
///
/// No lock: `state` says who owns each cell, and every hand-over of a cell
/// is one atomic operation on it.
/// - `outcome` belongs to the completing side until it sets [`DONE`] (it
///   writes the outcome, then sets the bit), then to the task side. If the
///   task side set [`ABANDONED`] before, the completing side sees it in the
///   same operation and keeps the outcome, to drop it.
/// - `waiter` belongs to the task side while [`WAITER`] is clear: it writes
///   a waiter, then sets the bit with a compare-exchange that fails if
///   [`DONE`] came meanwhile (it then keeps its waiter). While the bit is set
///   the waiter belongs to the completing side, which takes it once it has
///   set [`DONE`] and wakes it; the task side gets it back only by clearing
///   the bit while [`DONE`] is still clear.
/// - Only one side ever completes a block (a completer, a call, or nobody
///   for a ready task), once; only the task handle, which is not `Clone`,
///   acts for the task side, from methods that own it or borrow it
///   mutably.
/// - The memory itself is reference counted (`Arc`): whichever side goes
///   last frees it, so no hand-over above ever races with freeing.
struct Shared<T, C: ?Sized = ()> {
    state: AtomicU8,
    outcome: UnsafeCell<Option<Stored<T>>>,
    waiter: UnsafeCell<Option<Box<Waiter>>>,
    /// Made on demand: most calls are never cancelled, nor asked for it.
    token: LazyBox<CancelToken>,
    tail: C,
}

// SAFETY: the cells are only accessed as the protocol above allows, which
// gives each access to one thread at a time, ordered by acquire/release
// operations on `state`. The outcome moves between threads (`T: Send`); the
// tail is shared as it is (`C: Sync`).
unsafe impl<T: Send, C: ?Sized + Sync> Sync for Shared<T, C> {}

impl<T, C> Shared<T, C> {
    fn with_tail(outcome: Option<Result<T>>, tail: C) -> Arc<Self> {
        let state = if outcome.is_some() { DONE } else { 0 };
        Arc::new(Shared {
            state: AtomicU8::new(state),
            outcome: UnsafeCell::new(outcome.map(store)),
            waiter: UnsafeCell::new(None),
            token: LazyBox::new(),
            tail,
        })
    }
}

impl<T, C: ?Sized> Shared<T, C> {
    fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) & DONE != 0
    }

    fn is_abandoned(&self) -> bool {
        self.state.load(Ordering::Acquire) & ABANDONED != 0
    }

    fn token(&self) -> &CancelToken {
        self.token.get_or_init(CancelToken::new)
    }

    fn is_cancelled(&self) -> bool {
        self.token.get().is_some_and(CancelToken::is_cancelled)
    }

    /// Stores the outcome and wakes whoever waits; if the task handle is
    /// gone, drops the outcome instead (reporting an error). The completing
    /// side calls it once.
    ///
    /// A panic of the user's code here (a value whose `Drop` panics, a
    /// waker that panics) is caught and reported: it must not unwind into
    /// whatever completes tasks.
    fn deliver(&self, outcome: Result<T>) {
        // SAFETY: `DONE` is not set (only this call, made once, sets it):
        // the outcome cell belongs to this side.
        unsafe { *self.outcome.get() = Some(store(outcome)) };
        let previous = self.state.fetch_or(DONE, Ordering::AcqRel);
        if previous & ABANDONED != 0 {
            // SAFETY: the task side abandoned the block before `DONE`: it
            // never reads the outcome; the cell still belongs to this side.
            let outcome = unsafe { (*self.outcome.get()).take() };
            if let Some(Err(error)) = &outcome {
                report_uncollected(error);
            }
            discard(outcome);
            return;
        }
        if previous & WAITER != 0 {
            // SAFETY: `WAITER` was set when `DONE` came: the waiter belongs
            // to this side, and the task side can no longer clear the bit.
            let waiter = unsafe { (*self.waiter.get()).take() };
            if let Some(waiter) = waiter {
                waiter.wake();
            }
        }
    }

    /// Task side: puts `waiter` in the block, unless the outcome is there;
    /// whether it did. Replaces the waiter put before.
    fn set_waiter(&self, waiter: Waiter) -> bool {
        if !self.reclaim_waiter() {
            return false;
        }
        // SAFETY: `WAITER` is clear: the cell belongs to the task side.
        let previous = unsafe { (*self.waiter.get()).replace(Box::new(waiter)) };
        drop(previous);
        let state = self.state.load(Ordering::Acquire);
        if state & DONE == 0
            && self
                .state
                .compare_exchange(state, state | WAITER, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return true;
        }
        // `DONE` came: the waiter stays with the task side, unused.
        // SAFETY: `WAITER` is still clear.
        let unused = unsafe { (*self.waiter.get()).take() };
        drop(unused);
        false
    }

    /// Task side: takes the waiter back from the block (clears `WAITER`)
    /// while the outcome is not there; `false` once it is (the completing
    /// side then owns the waiter, if one was set, and wakes it).
    fn reclaim_waiter(&self) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & DONE != 0 {
                return false;
            }
            if state & WAITER == 0 {
                return true;
            }
            match self.state.compare_exchange_weak(
                state,
                state & !WAITER,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => state = actual,
            }
        }
    }

    /// Task side: takes the outcome of a finished task (`DONE` seen);
    /// `None` if it was already taken.
    fn take_outcome(&self) -> Option<Result<T>> {
        let state = self.state.load(Ordering::Acquire);
        debug_assert!(state & DONE != 0);
        if state & TAKEN != 0 {
            return None;
        }
        // SAFETY: `DONE` is set: the outcome belongs to the task side, and
        // the completing side no longer writes `state`, so a plain store
        // marks it taken.
        let outcome = unsafe { (*self.outcome.get()).take() };
        self.state.store(state | TAKEN, Ordering::Relaxed);
        outcome.map(|outcome| outcome.map_err(|error| *error))
    }

    /// Task side, on drop: the outcome if it is there (to drop), else marks
    /// the block abandoned, so that the completing side drops it.
    fn abandon(&self) -> Option<Stored<T>> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & DONE != 0 {
                if state & TAKEN != 0 {
                    return None;
                }
                // SAFETY: `DONE` is set: the outcome belongs to the task
                // side.
                return unsafe { (*self.outcome.get()).take() };
            }
            match self.state.compare_exchange_weak(
                state,
                (state & !WAITER) | ABANDONED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    if state & WAITER != 0 {
                        // SAFETY: this exchange cleared `WAITER` before
                        // `DONE`: the waiter is the task side's again.
                        let waiter = unsafe { (*self.waiter.get()).take() };
                        drop(waiter);
                    }
                    return None;
                }
                Err(actual) => state = actual,
            }
        }
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

/// A value made on first use, in a box of its own: one word in the block
/// (a `OnceLock` takes two).
struct LazyBox<V> {
    /// Null, or from `Box::into_raw`, published once and then constant.
    ptr: AtomicPtr<V>,
    /// Owns a `V`: `Send` and `Sync` as a box of it is.
    _owns: PhantomData<Box<V>>,
}

impl<V> LazyBox<V> {
    fn new() -> Self {
        LazyBox {
            ptr: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    fn get(&self) -> Option<&V> {
        let value = self.ptr.load(Ordering::Acquire);
        // SAFETY: non-null, the pointer comes from `Box::into_raw` and was
        // published with release ordering (the acquire load sees the value
        // made); the box is freed only by `drop`, which borrows `self`
        // mutably, so it outlives this borrow; nothing mutates it.
        unsafe { value.as_ref() }
    }

    fn get_or_init(&self, make: impl FnOnce() -> V) -> &V {
        if let Some(value) = self.get() {
            return value;
        }
        let made = Box::into_raw(Box::new(make()));
        match self
            .ptr
            .compare_exchange(ptr::null_mut(), made, Ordering::AcqRel, Ordering::Acquire)
        {
            // SAFETY: published just now; lives as long as `self` (see `get`).
            Ok(_) => unsafe { &*made },
            Err(first) => {
                // SAFETY: `made` lost the race and was never published: this
                // is its only owner.
                drop(unsafe { Box::from_raw(made) });
                // SAFETY: `first` was published (see `get`).
                unsafe { &*first }
            }
        }
    }
}

impl<V> Drop for LazyBox<V> {
    fn drop(&mut self) {
        let value = *self.ptr.get_mut();
        if !value.is_null() {
            // SAFETY: from `Box::into_raw`, published once, freed only here.
            drop(unsafe { Box::from_raw(value) });
        }
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
/// Every runtime hands one out: `thread(f)`, `SlaveThread::schedule`,
/// `SlaveProcess::schedule`, `Remote::schedule`, ... Wait for it with
/// [`wait`](Self::wait), [`wait_timeout`](Self::wait_timeout) or `.await`
/// (it is a [`Future`], woken by the thread that completes it); ask the call
/// to stop with [`cancel`](Self::cancel); put many in a
/// [`TaskSet`](crate::TaskSet) to take them back as they finish, or make one
/// many can wait for with [`shared`](Self::shared).
///
/// ```
/// use std::time::Duration;
/// use processional_task::{Error, Task};
///
/// # fn some_call() -> Task<u64> {
/// #     let (task, completer) = Task::pending();
/// #     std::thread::spawn(move || completer.complete(Ok(42)));
/// #     task
/// # }
/// # fn main() -> Result<(), Error> {
/// let task: Task<u64> = some_call(); // e.g. processional::thread(|| 42)
/// match task.wait_timeout(Duration::from_secs(30)) {
///     Ok(outcome) => assert_eq!(outcome?, 42),
///     Err(task) => task.cancel(), // still running: ask it to stop
/// }
/// # Ok(())
/// # }
/// ```
///
/// The value `T` is whatever the call returns; the error is the library's
/// [`Error`]: a panic, a cancellation, a lost worker, a value that could not
/// cross processes. Runtimes make tasks with [`Task::pending`] and a
/// [`Completer`]: see [For runtimes](#for-runtimes-making-tasks).
/// A task dropped without being waited for is *detached*: the call keeps
/// running, and if it fails, its error is reported once through
/// `log::error!`, or, when no logger is installed (`log::max_level()` is
/// `Off`), printed once to standard error with the prefix `processional:`.
#[must_use = "a task does nothing when dropped but detach the call; `wait` for it or call `detach`"]
pub struct Task<T> {
    shared: Arc<Shared<T, dyn Tail>>,
}

impl<T> Task<T> {
    /// Whether the call has finished (its outcome is available).
    pub fn is_finished(&self) -> bool {
        let done = self.shared.is_done();
        if !done && let Some(driver) = self.shared.tail.driver() {
            driver.ensure_progress();
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
            match self.shared.tail.driver() {
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
            || match self.shared.tail.driver() {
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
        if !shared.set_waiter(Waiter::Thread(thread::current())) {
            return true;
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
                        // Either the waiter is back, or the outcome came.
                        return !shared.reclaim_waiter();
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
    }

    /// Takes the outcome of a finished task.
    fn take(&self) -> Result<T> {
        match self.shared.take_outcome() {
            Some(outcome) => outcome,
            None => panic!(
                "the outcome of a processional Task was already taken (polled after completion)"
            ),
        }
    }
}

/// # For runtimes: making tasks
///
/// A runtime makes a task with [`pending`](Task::pending) (or
/// [`pending_driven`](Task::pending_driven), with a [`Driver`] that lets the
/// waiting thread make progress itself) and hands the [`Completer`] to
/// whatever runs the call; the completer delivers the outcome, and a
/// completer dropped unused completes the task with [`Error::Stopped`].
///
/// ```
/// use processional_task::Task;
///
/// let (task, completer) = Task::<u32>::pending();
/// std::thread::spawn(move || {
///     if !completer.token().is_cancelled() {
///         completer.complete(Ok(7));
///     }
/// });
/// assert_eq!(task.wait().unwrap(), 7);
/// assert_eq!(Task::ready(Ok(1)).wait().unwrap(), 1);
/// ```
impl<T> Task<T> {
    /// A task and the [`Completer`] that will deliver its outcome.
    ///
    /// For runtimes: hand the completer to whatever runs the call.
    pub fn pending() -> (Task<T>, Completer<T>) {
        let shared: Arc<Shared<T, dyn Tail>> = Shared::with_tail(None, ());
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
        let shared: Arc<Shared<T, dyn Tail>> = Shared::with_tail(None, Driven(driver));
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
            shared: Shared::with_tail(Some(outcome), ()),
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
        if shared.is_done() || !shared.set_waiter(Waiter::Waker(cx.waker().clone())) {
            return Poll::Ready(self.take());
        }
        if let Some(driver) = shared.tail.driver() {
            driver.ensure_progress();
        }
        Poll::Pending
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        let shared = &*self.shared;
        if shared.state.load(Ordering::Acquire) & TAKEN != 0 {
            return;
        }
        let outcome = shared.abandon();
        match outcome {
            Some(Err(error)) => report_uncollected(&error),
            Some(Ok(_)) => {}
            None => {
                if let Some(driver) = shared.tail.driver() {
                    driver.ensure_progress();
                }
            }
        }
    }
}

impl<T> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.load(Ordering::Acquire);
        let state = if state & TAKEN != 0 {
            "collected"
        } else if state & DONE != 0 {
            "finished"
        } else {
            "pending"
        };
        f.debug_struct("Task")
            .field("state", &state)
            .field("driven", &self.shared.tail.driver().is_some())
            .field("cancelled", &self.shared.is_cancelled())
            .finish()
    }
}

/// Delivers the outcome of a [`Task`]; held by whatever runs the call.
///
/// Dropping a completer without calling [`complete`](Self::complete)
/// completes the task with [`Error::Stopped`]: a task never hangs because
/// its call was lost.
///
/// ```
/// use processional_task::{Error, Task};
///
/// let (task, completer) = Task::<u8>::pending();
/// assert!(!completer.is_abandoned());
/// drop(completer); // the call was lost
/// assert!(matches!(task.wait(), Err(Error::Stopped)));
/// ```
pub struct Completer<T> {
    shared: Option<Arc<Shared<T, dyn Tail>>>,
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
            .is_none_or(|shared| shared.is_abandoned())
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
            CallCell {
                f: UnsafeCell::new(Some(f)),
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
    f: UnsafeCell<Option<F>>,
}

// SAFETY: only the block's `Call` touches `f` (through `Runnable`, whose
// methods it calls at most once, from `run` or `drop`, both owning it), and
// a `Call` is not `Clone`: one thread at a time. The closure moves to the
// thread that runs it (`F: Send`).
unsafe impl<F: Send> Sync for CallCell<F> {}

impl<F: Send> Tail for CallCell<F> {}

impl<F> CallCell<F> {
    /// # Safety
    ///
    /// Only the block's [`Call`] may call it (see the `Sync` impl).
    unsafe fn take(&self) -> Option<F> {
        // SAFETY: the caller is the block's only `Call`: no other access.
        unsafe { (*self.f.get()).take() }
    }
}

/// A block seen by its call: what runs or stops it, whatever its types.
trait Runnable: TokenSource {
    /// # Safety
    ///
    /// Only the block's [`Call`] may call `run` or `stop`, once.
    unsafe fn run(&self, before_complete: &mut dyn FnMut());
    /// # Safety
    ///
    /// As for [`run`](Self::run).
    unsafe fn stop(&self);
}

impl<T, F> Runnable for Shared<T, CallCell<F>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    unsafe fn run(&self, before_complete: &mut dyn FnMut()) {
        // SAFETY: called by the block's `Call` (this method's contract).
        let Some(f) = (unsafe { self.tail.take() }) else {
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

    unsafe fn stop(&self) {
        // SAFETY: called by the block's `Call` (this method's contract).
        let Some(f) = (unsafe { self.tail.take() }) else {
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
            // SAFETY: this is the block's only `Call`, and `take` leaves
            // nothing for a second call of `run` or `stop`.
            unsafe { block.run(&mut before_complete) };
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
            // SAFETY: as in `run_then`.
            unsafe { block.stop() };
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
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// Panics when dropped (unless it is being dropped by an unwinding
    /// panic), after counting the drop.
    struct PanicsOnDrop(Arc<AtomicUsize>, &'static str);

    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
            if !thread::panicking() {
                panic!("{}", self.1);
            }
        }
    }

    /// A waker that panics when woken.
    struct PanickingWaker;

    impl std::task::Wake for PanickingWaker {
        fn wake(self: Arc<Self>) {
            panic!("the waker failed 5be1");
        }
    }

    const PATIENCE: Duration = Duration::from_secs(30);

    #[test]
    fn a_call_dropped_unrun_stops_its_task_even_if_its_closure_panics_on_drop() {
        test_log::install();
        let drops = Arc::new(AtomicUsize::new(0));
        let guard = PanicsOnDrop(drops.clone(), "closure drop failed 0c3a");
        let (task, call) = Task::with_call(move || {
            let _guard = &guard;
            1
        });
        // Dropped on another thread, as a slave's queue is: that thread
        // does not unwind, and the task is finished.
        let dropper = thread::spawn(move || drop(call));
        assert!(dropper.join().is_ok(), "dropping the call unwound");
        match task.wait_timeout(PATIENCE) {
            Ok(outcome) => assert!(matches!(outcome, Err(Error::Stopped))),
            Err(_) => panic!("the task of a dropped call never finished"),
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert_eq!(test_log::count("closure drop failed 0c3a"), 1);
    }

    #[test]
    fn a_panicking_waker_neither_unwinds_into_the_completer_nor_leaks_the_block() {
        test_log::install();
        let (task, completer) = Task::<u32>::pending();
        let block = Arc::downgrade(&task.shared);
        {
            let mut task = std::pin::pin!(task);
            let waker = Waker::from(Arc::new(PanickingWaker));
            assert!(
                task.as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
            let completing = thread::spawn(move || completer.complete(Ok(3)));
            assert!(completing.join().is_ok(), "the waker's panic unwound");
            assert!(matches!(
                task.as_mut().poll(&mut Context::from_waker(Waker::noop())),
                Poll::Ready(Ok(3))
            ));
        }
        assert!(block.upgrade().is_none(), "the block was leaked");
        assert_eq!(test_log::count("the waker failed 5be1"), 1);
    }

    #[test]
    fn an_uncollected_value_that_panics_on_drop_neither_unwinds_nor_leaks_the_block() {
        test_log::install();
        let drops = Arc::new(AtomicUsize::new(0));
        let value = PanicsOnDrop(drops.clone(), "value drop failed 77d4");
        let (task, call) = Task::with_call(move || value);
        let block = Arc::downgrade(&task.shared);
        drop(task);
        let running = thread::spawn(move || call.run());
        assert!(running.join().is_ok(), "dropping the value unwound");
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(block.upgrade().is_none(), "the block was leaked");
        assert_eq!(test_log::count("value drop failed 77d4"), 1);
    }

    #[test]
    fn a_call_runs_under_its_task_token_made_on_demand() {
        let (task, call) = Task::with_call(|| {
            let token = crate::current_token().expect("a call has a token");
            (token.is_cancelled(), crate::checkpoint().is_ok())
        });
        assert!(task.shared.token.get().is_none(), "no token made yet");
        call.run();
        assert_eq!(task.wait().unwrap(), (false, true));

        let (task, call) = Task::with_call(|| unreachable!("a cancelled call does not run"));
        task.cancel();
        call.run();
        assert!(matches!(task.wait(), Err::<(), _>(Error::Cancelled)));

        let (started, running) = std::sync::mpsc::sync_channel(0);
        let (task, call) = Task::with_call(move || -> Result<()> {
            started.send(()).unwrap();
            loop {
                crate::checkpoint()?;
                thread::yield_now();
            }
        });
        let canceller = call.canceller();
        let runner = thread::spawn(move || call.run());
        running.recv_timeout(PATIENCE).unwrap();
        canceller.cancel();
        assert!(task.cancel_token().is_cancelled());
        assert!(matches!(task.wait(), Ok(Err(Error::Cancelled))));
        runner.join().unwrap();
    }

    /// Many tasks completed on other threads while their handles wait,
    /// poll, time out or are dropped at the same time: each value is seen or
    /// dropped exactly once, and every block is freed.
    #[test]
    fn racing_completions_and_handles_lose_and_leak_nothing() {
        const TASKS: usize = 4_000;
        let drops = Arc::new(AtomicUsize::new(0));
        struct Counted(Arc<AtomicUsize>, usize);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let mut calls = Vec::new();
        let mut handles = Vec::new();
        let mut blocks = Vec::new();
        for i in 0..TASKS {
            let counter = drops.clone();
            let (task, call) = Task::with_call(move || Counted(counter, i));
            blocks.push(Arc::downgrade(&task.shared));
            calls.push(call);
            handles.push((i, task));
        }
        // Hand the calls out round-robin to four runner threads.
        let mut parts: Vec<Vec<Call>> = (0..4).map(|_| Vec::new()).collect();
        for (i, call) in calls.into_iter().enumerate() {
            parts[i % 4].push(call);
        }
        let runners: Vec<_> = parts
            .into_iter()
            .enumerate()
            .map(|(part, calls)| {
                thread::spawn(move || {
                    for (i, call) in calls.into_iter().enumerate() {
                        // Some calls are dropped unrun.
                        if (i + part) % 7 == 0 {
                            drop(call);
                        } else {
                            call.run();
                        }
                    }
                })
            })
            .collect();
        let mut seen = 0;
        for (i, task) in handles {
            match i % 4 {
                0 => {
                    if let Ok(value) = task.wait() {
                        assert_eq!(value.1, i);
                        seen += 1;
                    }
                }
                1 => drop(task),
                2 => match task.wait_timeout(Duration::from_micros(1)) {
                    Ok(outcome) => seen += usize::from(outcome.is_ok()),
                    Err(task) => drop(task),
                },
                _ => {
                    let mut task = std::pin::pin!(task);
                    let waker = Waker::noop();
                    if let Poll::Ready(outcome) =
                        task.as_mut().poll(&mut Context::from_waker(waker))
                    {
                        seen += usize::from(outcome.is_ok());
                    }
                }
            }
        }
        for runner in runners {
            runner.join().unwrap();
        }
        assert!(seen > 0);
        let ran = (0..TASKS).filter(|i| (i / 4 + i % 4) % 7 != 0).count();
        assert_eq!(
            drops.load(Ordering::SeqCst),
            ran,
            "every value dropped once"
        );
        assert!(
            blocks.iter().all(|block| block.upgrade().is_none()),
            "a block leaked"
        );
    }

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
            if self.drives.load(Ordering::SeqCst).is_multiple_of(2)
                && let Some(completer) = self.completer.lock().unwrap().take()
            {
                completer.complete(Ok(7));
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
