//! What a function running on behalf of a peer can reach.

use std::cell::{Cell, RefCell};

use std::sync::Arc;

use processional_proto::{ObjectId, RemoteError, RemoteErrorKind, TaskId};
use processional_thread::CancelToken;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::function::Answer;
use crate::objects::{ConnectionObjects, ObjectSlot};
use crate::payload::{self, Encoded, Incoming};
use crate::reply::Replier;
use crate::serve::Served;

/// The state an entry point needs besides its arguments.
#[derive(Debug)]
pub(crate) struct CallContext<'a> {
    /// The objects the connection the call came from holds.
    pub(crate) objects: &'a Arc<ConnectionObjects>,
    /// Whether the connection can carry descriptors (a unix socket).
    pub(crate) unix: bool,
    /// The connection the call came from.
    pub(crate) served: &'a Arc<Served>,
    /// The call's id on that connection.
    pub(crate) task: TaskId,
    /// The call's cancellation token.
    pub(crate) token: &'a CancelToken,
    /// Whether it is a `thread` call (releases read after it wait until it
    /// has decoded its arguments).
    pub(crate) thread: bool,
}

thread_local! {
    /// Set while a serving process decodes arguments: `Remote` handles then
    /// resolve to the objects of this process.
    static SERVING: Cell<bool> = const { Cell::new(false) };
    /// Why decoding a `Remote` in the arguments was refused, so that the
    /// caller gets that error rather than a codec error.
    static REFUSAL: RefCell<Option<RemoteError>> = const { RefCell::new(None) };
    /// The objects of the connection whose call runs on this thread.
    static CURRENT: RefCell<Option<Arc<ConnectionObjects>>> = const { RefCell::new(None) };
}

/// Runs `f` with `objects` as the current connection's objects (what
/// [`export`] charges new objects to, and what handles in the arguments may
/// name).
pub(crate) fn with_connection<R>(objects: &Arc<ConnectionObjects>, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|c| c.replace(Some(objects.clone())));
    let result = f();
    CURRENT.with(|c| *c.borrow_mut() = previous);
    result
}

fn outside_a_task(what: &str) -> RemoteError {
    RemoteError {
        kind: RemoteErrorKind::Other,
        message: format!("{what} can only be done inside a task served for a peer"),
        location: None,
        backtrace: None,
    }
}

/// Keeps `value` as an object of this server (or slave), published under
/// `name` and held by the connection whose call runs on this thread.
pub(crate) fn export<T: Send + 'static>(name: &str, value: T) -> Result<(), RemoteError> {
    let objects = CURRENT
        .with(|c| c.borrow().clone())
        .ok_or_else(|| outside_a_task("export()"))?;
    objects.insert_published(name.to_owned(), ObjectSlot::new(value));
    Ok(())
}

/// While decoding arguments: the object `id`, if the calling connection
/// holds it. A refusal is also kept for [`CallContext::decode`] to report.
pub(crate) fn resolve_argument(id: ObjectId) -> Result<Arc<ObjectSlot>, RemoteError> {
    let resolved = CURRENT
        .with(|c| c.borrow().clone())
        .ok_or_else(|| outside_a_task("decoding a Remote"))
        .and_then(|objects| objects.get(id));
    if let Err(error) = &resolved {
        REFUSAL.with(|r| *r.borrow_mut() = Some(error.clone()));
    }
    resolved
}

/// Whether the current thread is decoding arguments for a call it serves.
pub(crate) fn is_serving() -> bool {
    SERVING.with(Cell::get)
}

impl CallContext<'_> {
    /// Decodes the arguments of a call. A handle naming an object the
    /// connection does not hold fails the call with that refusal.
    pub(crate) fn decode<A: DeserializeOwned + 'static>(
        &self,
        args: &Incoming,
    ) -> Result<A, RemoteError> {
        let previous = SERVING.with(|s| s.replace(true));
        REFUSAL.with(|r| r.borrow_mut().take());
        // A `Deserialize` that panics must not leave this thread serving.
        let result = processional_task::catch_panic(|| args.decode()).and_then(|value| value);
        SERVING.with(|s| s.set(previous));
        if self.thread {
            // Its handles are resolved: releases read after it may run.
            self.served.arguments_decoded(self.task);
        }
        let refusal = REFUSAL.with(|r| r.borrow_mut().take());
        result.map_err(|error| match error {
            processional_task::Error::Panicked(_) => crate::entry::to_remote(&error),
            error => refusal.unwrap_or_else(|| codec::remote_codec_error(error)),
        })
    }

    /// Encodes the value of a call.
    pub(crate) fn encode<R: Serialize + 'static>(&self, value: &R) -> Result<Encoded, RemoteError> {
        payload::encode_value(value, self.unix).map_err(codec::remote_codec_error)
    }

    /// Encodes the value of a call, for the executor to send now.
    pub(crate) fn answer<R: Serialize + 'static>(&self, value: &R) -> Result<Answer, RemoteError> {
        self.encode(value).map(Answer::Now)
    }

    /// What answers this call later instead of the executor. An entry that
    /// makes one must answer [`Answer::Later`] (or an error before the
    /// replier was handed out, see [`crate::reply::run_deferring`]).
    pub(crate) fn replier(&self) -> Replier {
        Replier::new(self.served, self.task, self.token.clone())
    }
}
