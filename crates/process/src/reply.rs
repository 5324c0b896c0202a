//! Deferred replies: a served call that answers later, from any thread.
//!
//! A function shipped with one of the `*_later` methods
//! ([`SlaveProcess::schedule_later`](crate::SlaveProcess::schedule_later),
//! [`Remote::schedule_later`](crate::Remote::schedule_later), …) returns a
//! [`Later<T>`] instead of a `T`. It gets one, with the [`Reply<T>`] that
//! will answer the call, from [`reply_later`]; the executor then moves on to
//! the connection's next call while the reply waits, holding no thread, until
//! someone sends it, from any thread. Internally the serving side answers
//! through a [`Replier`]: the call id and a shareable handle to the
//! connection's writer, also what services of the runtime use directly.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::ThreadId;

use processional_proto::{RemoteError, RemoteErrorKind, TaskId};
use processional_thread::{CancelToken, Completer, Error};
use serde::Serialize;

use crate::codec;
use crate::entry;
use crate::function::Answer;
use crate::payload::{self, Outgoing};
use crate::serve::Served;

/// Nobody listens for what was sent any more (the caller disconnected, gave
/// the call up, or the call was already answered): the value comes back.
///
/// The shape of crossbeam's `SendError<T>`: the unsent value is the field.
///
/// ```
/// use processional_process::NobodyListening;
///
/// let error = NobodyListening(vec![1, 2, 3]);
/// assert_eq!(error.to_string(), "nobody is listening any more");
/// assert_eq!(error.0, [1, 2, 3]); // the value comes back
/// ```
#[derive(Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nobody is listening any more")]
pub struct NobodyListening<T>(pub T);

impl<T> NobodyListening<T> {
    /// The value that was not delivered.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for NobodyListening<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NobodyListening { .. }")
    }
}

/// What a [`Replier`] shares with the entry point that made it.
#[derive(Debug)]
struct ReplyState {
    /// Set by whoever answers first; nobody answers twice.
    answered: AtomicBool,
    /// The executor thread of the entry point, and whether the entry still
    /// runs the function there: a replier dropped by a panic of that function
    /// leaves the answer to the entry, which knows the panic.
    entry_thread: ThreadId,
    entry_running: AtomicBool,
    /// A replier was dropped unanswered by a panic on the entry's thread,
    /// leaving the answer to the entry: if the function caught that panic
    /// and returned, the entry must still answer.
    left_to_entry: AtomicBool,
}

/// Answers one served call later: its id and a handle to the connection's
/// writer. Dropped without answering, it answers with a `Stopped` error, so
/// the caller's task always ends.
pub(crate) struct Replier {
    served: Weak<Served>,
    task: TaskId,
    unix: bool,
    token: CancelToken,
    state: Arc<ReplyState>,
    /// Whether dropping it unanswered answers `Stopped`.
    armed: bool,
}

impl fmt::Debug for Replier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replier")
            .field("task", &self.task)
            .field("answered", &self.state.answered.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Replier {
    /// A replier for call `task` of `served`, made by its entry point on the
    /// executor's thread.
    pub(crate) fn new(served: &Arc<Served>, task: TaskId, token: CancelToken) -> Replier {
        Replier {
            served: Arc::downgrade(served),
            task,
            unix: served.is_unix(),
            token,
            state: Arc::new(ReplyState {
                answered: AtomicBool::new(false),
                entry_thread: std::thread::current().id(),
                entry_running: AtomicBool::new(true),
                left_to_entry: AtomicBool::new(false),
            }),
            armed: true,
        }
    }

    /// The call's id on its connection.
    pub(crate) fn task(&self) -> TaskId {
        self.task
    }

    /// The connection, while it is served.
    pub(crate) fn served(&self) -> Option<Arc<Served>> {
        self.served.upgrade().filter(|served| !served.ended())
    }

    /// Whether the caller asked to cancel the call.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Whether an answer would still reach the caller.
    pub(crate) fn is_listening(&self) -> bool {
        !self.state.answered.load(Ordering::Acquire) && self.served().is_some()
    }

    /// Answers with `value`. A value that cannot be encoded answers with
    /// that codec error (the caller is told; `Ok` here).
    pub(crate) fn send_value<T: Serialize + Any>(self, value: T) -> Result<(), NobodyListening<T>> {
        if !self.is_listening() {
            self.abandon();
            return Err(NobodyListening(value));
        }
        let outcome = payload::encode(&value, self.unix).map_err(codec::remote_codec_error);
        if self.send_outcome(outcome) {
            Ok(())
        } else {
            Err(NobodyListening(value))
        }
    }

    /// Answers with an error.
    pub(crate) fn send_error(self, error: RemoteError) -> Result<(), NobodyListening<RemoteError>> {
        if !self.is_listening() {
            self.abandon();
            return Err(NobodyListening(error));
        }
        if self.send_outcome(Err(error.clone())) {
            Ok(())
        } else {
            Err(NobodyListening(error))
        }
    }

    /// Answers with an encoded outcome; whether it was written.
    pub(crate) fn send_outcome(mut self, outcome: Result<Outgoing, RemoteError>) -> bool {
        self.answer(outcome)
    }

    /// Marks the call answered without sending anything (nobody listens).
    fn abandon(mut self) {
        self.state.answered.store(true, Ordering::Release);
        if let Some(served) = self.served.upgrade() {
            served.forget_call(self.task);
        }
        self.armed = false;
    }

    /// Drops it without answering: someone else answers.
    fn disarm(mut self) {
        self.armed = false;
    }

    fn answer(&mut self, outcome: Result<Outgoing, RemoteError>) -> bool {
        if self.state.answered.swap(true, Ordering::AcqRel) {
            return false;
        }
        match self.served.upgrade() {
            Some(served) => served.send_reply(self.task, outcome),
            None => false,
        }
    }
}

impl Drop for Replier {
    fn drop(&mut self) {
        if !self.armed || self.state.answered.load(Ordering::Acquire) {
            return;
        }
        let state = &self.state;
        if std::thread::panicking()
            && state.entry_running.load(Ordering::Acquire)
            && std::thread::current().id() == state.entry_thread
        {
            // The deferring function panics: its entry answers with the panic
            // (or, if the function caught it, with `Stopped`).
            state.left_to_entry.store(true, Ordering::Release);
            return;
        }
        self.answer(Err(dropped_unanswered()));
    }
}

/// The answer of a call whose reply was dropped unsent.
fn dropped_unanswered() -> RemoteError {
    RemoteError {
        kind: RemoteErrorKind::Stopped,
        message: "the reply was dropped without an answer".into(),
        location: None,
        backtrace: None,
    }
}

/// What [`reply_later`] finds on the thread of a call that may answer later.
enum Deferrable {
    /// A call served for a peer.
    Served(Replier),
    /// A method called on an object of this very process (a
    /// [`Remote`](crate::Remote) resolved locally): a `Completer<T>`.
    Local(Box<dyn Any + Send>),
}

thread_local! {
    static DEFERRABLE: RefCell<Option<Deferrable>> = const { RefCell::new(None) };
}

/// Puts `deferrable` on this thread for [`reply_later`] while `f` runs (`f`
/// catches panics), and takes it back if `f` did not take it.
fn with_deferrable<R>(deferrable: Deferrable, f: impl FnOnce() -> R) -> (R, Option<Deferrable>) {
    let previous = DEFERRABLE.with(|d| d.replace(Some(deferrable)));
    let result = f();
    let left = DEFERRABLE.with(|d| d.replace(previous));
    (result, left)
}

/// Runs a deferring function for a served call: the executor answers only
/// if it fails before anyone else answered.
pub(crate) fn run_deferring<R>(
    replier: Replier,
    f: impl FnOnce() -> Later<R>,
) -> Result<Answer, RemoteError> {
    let state = replier.state.clone();
    let (served, task) = (replier.served.clone(), replier.task);
    let (outcome, left) = with_deferrable(Deferrable::Served(replier), || entry::catch(f));
    state.entry_running.store(false, Ordering::Release);
    match (outcome, left) {
        // Its replier was dropped by a panic the function caught: nobody
        // else will answer.
        (Ok(_later), None)
            if state.left_to_entry.load(Ordering::Acquire)
                && !state.answered.swap(true, Ordering::AcqRel) =>
        {
            if let Some(served) = served.upgrade() {
                served.send_reply(task, Err(dropped_unanswered()));
            }
            Ok(Answer::Later)
        }
        (Ok(_later), None) => Ok(Answer::Later),
        // A `Later` of another call: this one would never be answered.
        (Ok(_later), Some(Deferrable::Served(replier))) => {
            let _ = replier.send_error(RemoteError {
                kind: RemoteErrorKind::Other,
                message: "the function returned a Later without calling reply_later() in this call"
                    .into(),
                location: None,
                backtrace: None,
            });
            Ok(Answer::Later)
        }
        (Err(error), left) => {
            if let Some(Deferrable::Served(replier)) = left {
                // The executor answers with the panic, not the replier with
                // `Stopped`.
                replier.disarm();
            }
            if state.answered.swap(true, Ordering::AcqRel) {
                // The reply already left (or was abandoned) before the panic.
                Ok(Answer::Later)
            } else {
                Err(error)
            }
        }
        (Ok(_), Some(Deferrable::Local(_))) => unreachable!("a served call defers to a replier"),
    }
}

/// Runs a deferring method on an object of this process; `completer`
/// delivers its answer. Returns the function's panic, if it panicked before
/// taking its reply.
pub(crate) fn run_deferring_locally<T: Send + 'static, R>(
    completer: Completer<T>,
    f: impl FnOnce() -> Later<R>,
) {
    let (outcome, left) = with_deferrable(Deferrable::Local(Box::new(completer)), || {
        processional_thread::catch_panic(f)
    });
    let Some(Deferrable::Local(completer)) = left else {
        // Taken by `reply_later`: the `Reply` answers (or, dropped, stops).
        return;
    };
    let completer = completer
        .downcast::<Completer<T>>()
        .expect("the completer put there");
    completer.complete(match outcome {
        Ok(_) => Err(Error::Remote(RemoteError {
            kind: RemoteErrorKind::Other,
            message: "the function returned a Later without calling reply_later() in this call"
                .into(),
            location: None,
            backtrace: None,
        })),
        Err(error) => Err(error),
    });
}

/// The answer a deferring function promises: returned instead of a `T` by a
/// function shipped with a `*_later` method, it tells the executor that the
/// matching [`Reply<T>`] will answer the call.
///
/// Only [`reply_later`] makes one. It is not `Send`: it belongs to the call
/// running on this thread.
///
/// ```
/// use processional_process::{Later, func, reply_later};
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = processional_process::slave()?;
/// let task = process.schedule_later(func!(|| -> Later<String> {
///     let (reply, later) = reply_later();
///     std::thread::spawn(move || reply.send("answered from another thread".into()));
///     later // the promise; the executor serves the next call meanwhile
/// }));
/// assert_eq!(task.wait()?, "answered from another thread");
/// # Ok(())
/// # }
/// ```
#[must_use = "return the Later from the function, or the call is answered with an error"]
pub struct Later<T> {
    _answer: PhantomData<fn() -> T>,
    /// Not `Send`: it belongs to this thread's call.
    _here: PhantomData<*const ()>,
}

impl<T> fmt::Debug for Later<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Later<{}>", std::any::type_name::<T>())
    }
}

enum ReplyTo<T> {
    Served(Replier, PhantomData<fn(T)>),
    Local(Completer<T>),
}

/// The answer of a call still to come: send it from any thread, at any time.
///
/// Made with the call's [`Later`] by [`reply_later`]. Dropping it unsent
/// answers the call with a `Stopped` error, so the caller never waits
/// forever; if the caller is gone, [`send`](Self::send) hands the value back.
///
/// ```
/// use processional_process::{Error, Later, func, reply_later};
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = processional_process::slave()?;
/// // A reply dropped unsent answers `Stopped`: nobody waits forever.
/// let dropped = process.invoke_later(func!(|| -> Later<u8> {
///     let (reply, later) = reply_later();
///     drop(reply);
///     later
/// }));
/// assert!(matches!(dropped, Err(Error::Remote(_)) | Err(Error::Stopped)), "{dropped:?}");
/// # Ok(())
/// # }
/// ```
pub struct Reply<T> {
    to: ReplyTo<T>,
}

impl<T> fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.to {
            ReplyTo::Served(replier, _) => f
                .debug_struct("Reply")
                .field("task", &replier.task())
                .finish_non_exhaustive(),
            ReplyTo::Local(_) => f.debug_struct("Reply").finish_non_exhaustive(),
        }
    }
}

impl<T: Serialize + Send + 'static> Reply<T> {
    /// Answers the call with `value`. If nobody listens any more (the caller
    /// disconnected), the value comes back in the error.
    ///
    /// A value that cannot be encoded answers the call with that codec
    /// error; that still counts as answered (`Ok`).
    pub fn send(self, value: T) -> Result<(), NobodyListening<T>> {
        match self.to {
            ReplyTo::Served(replier, _) => replier.send_value(value),
            ReplyTo::Local(completer) => {
                if completer.is_abandoned() {
                    return Err(NobodyListening(value));
                }
                completer.complete(Ok(value));
                Ok(())
            }
        }
    }
}

impl<T> Reply<T> {
    /// Whether the caller asked to cancel the call (answering is still
    /// expected: typically with a value that says so).
    pub fn is_cancelled(&self) -> bool {
        match &self.to {
            ReplyTo::Served(replier, _) => replier.is_cancelled(),
            ReplyTo::Local(completer) => completer.token().is_cancelled(),
        }
    }

    /// Whether an answer would still reach the caller: `false` once it
    /// disconnected (or the call was answered otherwise).
    pub fn is_listening(&self) -> bool {
        match &self.to {
            ReplyTo::Served(replier, _) => replier.is_listening(),
            ReplyTo::Local(completer) => !completer.is_abandoned(),
        }
    }

    /// The number of the connection the call came on, unique in this
    /// process while the connection is served (`None` for a call of this
    /// very process, or once the connection ended): what a service counts
    /// per client, to bound what one client may keep waiting.
    pub fn connection(&self) -> Option<u64> {
        match &self.to {
            ReplyTo::Served(replier, _) => replier.served().map(|served| served.id()),
            ReplyTo::Local(_) => None,
        }
    }
}

/// Inside a function shipped with a `*_later` method: the [`Reply`] that
/// will answer this call, and the [`Later`] the function returns.
///
/// The executor moves on to the next call as soon as the function returns;
/// the call stays pending, holding no thread, until the reply is sent (from
/// any thread) or dropped.
///
/// ```
/// use processional_process::{Later, Reply, func, reply_later};
/// use std::sync::Mutex;
///
/// /// Callers waiting for the next value, in the slave.
/// static WAITING: Mutex<Vec<Reply<u64>>> = Mutex::new(Vec::new());
///
/// # fn main() -> Result<(), processional_thread::Error> {
/// let process = processional_process::slave()?;
/// let next = process.schedule_later(func!(|| -> Later<u64> {
///     let (reply, later) = reply_later();
///     WAITING.lock().unwrap().push(reply);
///     later
/// }));
/// // The slave served the call above and moved on: it serves this one.
/// process.invoke(func!(|| {
///     for reply in WAITING.lock().unwrap().drain(..) {
///         let _ = reply.send(42);
///     }
/// }))?;
/// assert_eq!(next.wait()?, 42);
/// # Ok(())
/// # }
/// ```
///
/// # Panics
///
/// Outside such a function, or if called twice in one call.
pub fn reply_later<T: Send + 'static>() -> (Reply<T>, Later<T>) {
    let deferrable = DEFERRABLE.with(|d| d.borrow_mut().take());
    let to = match deferrable {
        Some(Deferrable::Served(replier)) => ReplyTo::Served(replier, PhantomData),
        Some(Deferrable::Local(completer)) => match completer.downcast::<Completer<T>>() {
            Ok(completer) => ReplyTo::Local(*completer),
            Err(_) => panic!(
                "reply_later::<{}>() in a function that does not return Later<{0}>",
                std::any::type_name::<T>()
            ),
        },
        None => panic!(
            "reply_later() is only for functions shipped with a *_later method \
             (schedule_later, invoke_later, …), once per call"
        ),
    };
    (
        Reply { to },
        Later {
            _answer: PhantomData,
            _here: PhantomData,
        },
    )
}
