//! Cooperative cancellation: tokens, the current call's token, checkpoints.
//!
//! Rust cannot stop a running thread safely: its locks, allocations and
//! invariants would be left half-updated. Cancelling a call therefore only
//! *asks* it to stop; the call notices the request at its next
//! [`checkpoint`] and returns [`Error::Cancelled`] from there.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::panic::catch_panic;

/// A callback run once when a token is cancelled.
type CancelCallback = Box<dyn FnOnce() + Send>;

/// The cancellation request of one call.
///
/// Cheap to clone (an `Arc`): every clone sees the same state. Once
/// cancelled, a token stays cancelled. A task's token is
/// [`Task::cancel_token`](crate::Task::cancel_token); inside the call,
/// [`checkpoint`] reads it.
///
/// ```
/// use processional_task::CancelToken;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
///
/// let token = CancelToken::new();
/// let woken = Arc::new(AtomicBool::new(false));
/// let flag = woken.clone();
/// // Wake whatever the call blocks on (a socket, a condition variable).
/// token.on_cancel(Box::new(move || flag.store(true, Ordering::SeqCst)));
/// assert!(token.check().is_ok());
/// token.clone().cancel();
/// assert!(token.is_cancelled() && woken.load(Ordering::SeqCst));
/// assert!(token.check().unwrap_err().is_cancelled());
/// ```
#[derive(Clone)]
pub struct CancelToken {
    inner: Arc<TokenState>,
}

struct TokenState {
    /// Mirrors `callbacks.cancelled` for lock-free reads.
    cancelled: AtomicBool,
    callbacks: Mutex<Callbacks>,
}

struct Callbacks {
    cancelled: bool,
    /// The first callback, in place: most tokens get one at most, and it
    /// then costs no list.
    first: Option<CancelCallback>,
    /// The callbacks after the first, in the order they came.
    rest: Vec<CancelCallback>,
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        CancelToken {
            inner: Arc::new(TokenState {
                cancelled: AtomicBool::new(false),
                callbacks: Mutex::new(Callbacks {
                    cancelled: false,
                    first: None,
                    rest: Vec::new(),
                }),
            }),
        }
    }

    /// Requests cancellation and runs the callbacks registered with
    /// [`on_cancel`](Self::on_cancel), on this thread. Later calls do nothing.
    ///
    /// A callback that panics is reported through `log::error!`; the other
    /// callbacks still run.
    pub fn cancel(&self) {
        let pending = {
            let mut callbacks = self.lock();
            if callbacks.cancelled {
                return;
            }
            callbacks.cancelled = true;
            self.inner.cancelled.store(true, Ordering::Release);
            (callbacks.first.take(), std::mem::take(&mut callbacks.rest))
        };
        let (first, rest) = pending;
        for callback in first.into_iter().chain(rest) {
            run_callback(callback);
        }
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.load(Ordering::Acquire)
    }

    /// `Err(Error::Cancelled)` if cancellation was requested, `Ok(())`
    /// otherwise.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Runs `callback` when the token is cancelled, on the cancelling thread;
    /// at once, on this thread, if it already is.
    pub fn on_cancel(&self, callback: Box<dyn FnOnce() + Send>) {
        {
            let mut callbacks = self.lock();
            if !callbacks.cancelled {
                match callbacks.first {
                    None => callbacks.first = Some(callback),
                    Some(_) => callbacks.rest.push(callback),
                }
                return;
            }
        }
        run_callback(callback);
    }

    /// Whether both handles are clones of the same token.
    pub fn same_as(&self, other: &CancelToken) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Callbacks> {
        // The state stays consistent even if a thread panicked while holding
        // the lock (callbacks never run under it).
        self.inner
            .callbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for CancelToken {
    fn default() -> Self {
        CancelToken::new()
    }
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

fn run_callback(callback: CancelCallback) {
    if let Err(error) = catch_panic(callback) {
        log::error!("processional: a cancellation callback failed: {error}");
    }
}

/// Where a call's token lives when it is made only on demand: a task's
/// block, whose token exists once someone cancels the task or asks for it
/// (most calls never do, and then never allocate one).
pub(crate) trait TokenSource: Send + Sync {
    /// The token, if it was made.
    fn made(&self) -> Option<&CancelToken>;
    /// The token, made now if need be.
    fn token(&self) -> &CancelToken;
}

/// The token of the running call, as installed on its thread: borrowed for
/// the time of [`with_token`] or [`with_token_source`], whose guard
/// uninstalls it before they return or unwind (a scoped thread-local: no
/// reference count to touch, no destructor to register, per call).
#[derive(Clone, Copy)]
enum Current {
    Token(*const CancelToken),
    Source(*const dyn TokenSource),
}

impl Current {
    /// Runs `token_f` on the installed token, or `source_f` on the
    /// installed source.
    fn with<R>(
        self,
        token_f: impl FnOnce(&CancelToken) -> R,
        source_f: impl FnOnce(&dyn TokenSource) -> R,
    ) -> R {
        // SAFETY: a pointer is installed only by `with_current`, from a
        // reference that outlives that call, whose `Restore` guard
        // uninstalls it before returning, also when unwinding; installs
        // nest and are undone in reverse order. So while it is installed, it
        // points to a live value, and only shared references are made from
        // it, for the time of this call.
        match self {
            // SAFETY: see above.
            Current::Token(token) => token_f(unsafe { &*token }),
            // SAFETY: see above.
            Current::Source(source) => source_f(unsafe { &*source }),
        }
    }
}

thread_local! {
    /// The token of the call running on this thread, if any.
    static CURRENT: Cell<Option<Current>> = const { Cell::new(None) };
}

/// Returns `Err(Error::Cancelled)` if the call running on this thread was
/// asked to stop, `Ok(())` otherwise (and always outside any call).
///
/// Put `checkpoint()?` in the loops of long computations so that
/// [`Task::cancel`](crate::Task::cancel) and `terminate` can end them.
///
/// A runtime installs the call's token with [`with_token`] (the thread and
/// process runtimes do it for every call); the call only checks:
///
/// ```
/// use processional_task::{CancelToken, checkpoint, with_token};
///
/// let token = CancelToken::new();
/// let call = {
///     let token = token.clone();
///     std::thread::spawn(move || {
///         with_token(&token, || -> processional_task::Result<u64> {
///             let mut rounds = 0u64;
///             loop {
///                 checkpoint()?; // `Err(Error::Cancelled)` once cancelled
///                 rounds += 1;
///                 if rounds == u64::MAX {
///                     return Ok(rounds);
///                 }
///                 std::thread::yield_now();
///             }
///         })
///     })
/// };
/// token.cancel();
/// assert!(call.join().unwrap().unwrap_err().is_cancelled());
/// ```
pub fn checkpoint() -> Result<()> {
    match CURRENT.with(Cell::get) {
        Some(current) => current.with(CancelToken::check, |source| {
            // Not made: nobody cancelled it.
            source.made().map_or(Ok(()), CancelToken::check)
        }),
        None => Ok(()),
    }
}

/// The token of the call running on this thread, if any.
///
/// ```
/// use processional_task::{CancelToken, current_token, with_token};
///
/// assert!(current_token().is_none()); // not inside a call
/// let token = CancelToken::new();
/// with_token(&token, || assert!(current_token().unwrap().same_as(&token)));
/// ```
pub fn current_token() -> Option<CancelToken> {
    CURRENT
        .with(Cell::get)
        .map(|current| current.with(CancelToken::clone, |source| source.token().clone()))
}

/// Runs `f` with `token` as the current call's token, so that
/// [`checkpoint`] and [`current_token`] see it; the previous token is
/// restored afterwards, even if `f` panics. Runtimes call it around every
/// call; see [`checkpoint`] for an example.
pub fn with_token<R>(token: &CancelToken, f: impl FnOnce() -> R) -> R {
    with_current(Current::Token(token), f)
}

/// [`with_token`] for a token made on demand by `source`.
pub(crate) fn with_token_source<R>(
    source: &(dyn TokenSource + 'static),
    f: impl FnOnce() -> R,
) -> R {
    with_current(Current::Source(source), f)
}

/// Installs `installed` for the time of `f`. `installed` must point to a
/// value that outlives this call (both callers pass a reference).
fn with_current<R>(installed: Current, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Current>);
    impl Drop for Restore {
        fn drop(&mut self) {
            // `try_with`: during thread teardown there is nothing to restore.
            let _ = CURRENT.try_with(|current| current.set(self.0));
        }
    }
    let previous = CURRENT.with(|current| current.replace(Some(installed)));
    let _restore = Restore(previous);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn cancel_is_sticky_and_runs_callbacks_once() {
        let token = CancelToken::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        token.on_cancel(Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        }));
        assert!(!token.is_cancelled());
        assert!(token.check().is_ok());
        token.cancel();
        token.cancel();
        assert!(token.is_cancelled());
        assert!(matches!(token.check(), Err(Error::Cancelled)));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn on_cancel_after_cancellation_runs_at_once() {
        let token = CancelToken::new();
        token.cancel();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        token.on_cancel(Box::new(move || flag.store(true, Ordering::SeqCst)));
        assert!(ran.load(Ordering::SeqCst));
    }

    #[test]
    fn a_panicking_callback_does_not_stop_the_others() {
        let token = CancelToken::new();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        token.on_cancel(Box::new(|| panic!("callback failure")));
        token.on_cancel(Box::new(move || flag.store(true, Ordering::SeqCst)));
        token.cancel();
        assert!(ran.load(Ordering::SeqCst));
    }

    #[test]
    fn callbacks_run_in_the_order_they_were_registered() {
        let token = CancelToken::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 0..4 {
            let order = order.clone();
            token.on_cancel(Box::new(move || order.lock().unwrap().push(i)));
        }
        token.cancel();
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
    }
    #[test]
    fn checkpoint_follows_the_installed_token() {
        assert!(checkpoint().is_ok());
        assert!(current_token().is_none());
        let outer = CancelToken::new();
        let inner = CancelToken::new();
        inner.cancel();
        with_token(&outer, || {
            assert!(checkpoint().is_ok());
            with_token(&inner, || {
                assert!(matches!(checkpoint(), Err(Error::Cancelled)));
            });
            assert!(current_token().unwrap().same_as(&outer));
            outer.cancel();
            assert!(checkpoint().is_err());
        });
        assert!(current_token().is_none());
    }

    #[test]
    fn with_token_restores_after_a_panic() {
        let token = CancelToken::new();
        let result = catch_panic(|| with_token(&token, || panic!("inside")));
        assert!(result.is_err());
        assert!(current_token().is_none());
    }
}
