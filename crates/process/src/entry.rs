//! The entry points the compiler instantiates for each shipped task type.

use std::marker::PhantomData;

use processional_proto::{ObjectId, RemoteError, RemoteErrorKind};
use processional_task::Error;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec;
use crate::context::CallContext;
use crate::function::{Answer, Described, conjure};
use crate::objects::{ObjectSlot, Ticket};
use crate::payload::{self, Incoming};
use crate::reply::{self, Later};
use crate::sink::{self, ItemSink};

/// Names the types an entry point is instantiated for; never constructed.
type Marker<T> = PhantomData<fn() -> T>;

/// Runs `f`, turning a panic into the error the caller receives.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, RemoteError> {
    processional_task::catch_panic(f).map_err(|error| to_remote(&error))
}

/// The wire form of a local error.
pub(crate) fn to_remote(error: &Error) -> RemoteError {
    match error {
        Error::Panicked(report) => RemoteError {
            kind: RemoteErrorKind::Panicked,
            message: report.message.clone(),
            location: report.location.clone(),
            backtrace: report.backtrace.clone(),
        },
        Error::Remote(remote) => remote.clone(),
        Error::Cancelled => RemoteError {
            kind: RemoteErrorKind::Cancelled,
            message: "the task was cancelled".into(),
            location: None,
            backtrace: None,
        },
        Error::Stopped => RemoteError {
            kind: RemoteErrorKind::Stopped,
            message: error.to_string(),
            location: None,
            backtrace: None,
        },
        other => RemoteError {
            kind: RemoteErrorKind::Other,
            message: other.to_string(),
            location: None,
            backtrace: None,
        },
    }
}

/// Call `F(A) -> R`.
pub(crate) struct CallEntry<F, A, R>(Marker<(F, A, R)>);

impl<F, A, R> Described for CallEntry<F, A, R>
where
    F: Fn(A) -> R + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError> {
        let args: A = cx.decode(args)?;
        let task = conjure::<F>();
        let value = catch(move || task(args))?;
        cx.answer(&value)
    }
}

/// Call `F(&mut T, A) -> R` on the object named in the arguments.
pub(crate) struct MethodEntry<F, T, A, R>(Marker<(F, T, A, R)>);

impl<F, T, A, R> Described for MethodEntry<F, T, A, R>
where
    F: Fn(&mut T, A) -> R + 'static,
    T: 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError> {
        let (object, args): (ObjectId, A) = cx.decode(args)?;
        let slot = cx.objects.get(object)?;
        let task = conjure::<F>();
        let value = slot.with(move |value: &mut T| catch(move || task(value, args)))??;
        cx.answer(&value)
    }
}

/// Build a `T` with `F(A) -> T` and keep it; the value is its id.
pub(crate) struct WrapEntry<F, A, T>(Marker<(F, A, T)>);

impl<F, A, T> Described for WrapEntry<F, A, T>
where
    F: Fn(A) -> T + 'static,
    A: DeserializeOwned + 'static,
    T: Send + 'static,
{
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError> {
        let args: A = cx.decode(args)?;
        let task = conjure::<F>();
        let value = catch(move || task(args))?;
        let id = cx.objects.insert(ObjectSlot::new(value));
        cx.answer(&id)
    }
}

/// Copy the object back: the value is the serialized `T`.
pub(crate) struct FetchEntry<T>(Marker<T>);

impl<T> Described for FetchEntry<T>
where
    T: Serialize + 'static,
{
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError> {
        let object: ObjectId = cx.decode(args)?;
        let slot = cx.objects.get(object)?;
        slot.with(|value: &mut T| cx.answer(value))?
    }
}

/// Publish an object the caller holds under a name (servers).
pub(crate) struct PublishEntry;

impl Described for PublishEntry {
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError> {
        let (name, object): (String, ObjectId) = cx.decode(args)?;
        cx.objects.publish(name, object)?;
        cx.answer(&())
    }
}

/// Look up a published `T` and take a reference to it for the caller.
pub(crate) struct LookupEntry<T>(Marker<T>);

impl<T: 'static> Described for LookupEntry<T> {
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError> {
        let name: String = cx.decode(args)?;
        let id = cx.objects.lookup::<T>(&name)?;
        cx.answer(&id)
    }
}

/// Take a reference to an object the caller holds on behalf of a handle in
/// transit to another client of this server; the value is the ticket to
/// redeem.
pub(crate) struct TicketEntry;

impl Described for TicketEntry {
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError> {
        let id: ObjectId = cx.decode(args)?;
        let ticket = cx.objects.issue_ticket(id)?;
        cx.answer(&ticket)
    }
}

/// Redeem a ticket: the caller now holds the reference; the value is the
/// object id.
pub(crate) struct RedeemEntry;

impl Described for RedeemEntry {
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError> {
        let ticket: Ticket = cx.decode(args)?;
        let id = cx.objects.redeem_ticket(ticket)?;
        cx.answer(&id)
    }
}

/// Call `F(A) -> Later<R>`: the function keeps a [`Reply`](crate::Reply) and
/// answers later, from anywhere; the executor moves on at once.
pub(crate) struct DeferredEntry<F, A, R>(Marker<(F, A, R)>);

impl<F, A, R> Described for DeferredEntry<F, A, R>
where
    F: Fn(A) -> Later<R> + 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError> {
        let args: A = cx.decode(args)?;
        let task = conjure::<F>();
        reply::run_deferring(cx.replier(), move || task(args))
    }
}

/// Call `F(&mut T, A) -> Later<R>` on the object named in the arguments.
pub(crate) struct DeferredMethodEntry<F, T, A, R>(Marker<(F, T, A, R)>);

impl<F, T, A, R> Described for DeferredMethodEntry<F, T, A, R>
where
    F: Fn(&mut T, A) -> Later<R> + 'static,
    T: 'static,
    A: DeserializeOwned + 'static,
    R: Serialize + 'static,
{
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError> {
        let (object, args): (ObjectId, A) = cx.decode(args)?;
        let slot = cx.objects.get(object)?;
        let task = conjure::<F>();
        // The replier is made only once the call will run: an error before
        // that is the executor's to send.
        slot.with(move |value: &mut T| {
            reply::run_deferring(cx.replier(), move || task(value, args))
        })?
    }
}

/// Call `F(A, ItemSink<T>) -> R`: a stream of `T`s ended by the `R`.
pub(crate) struct StreamEntry<F, A, T, R>(Marker<(F, A, T, R)>);

impl<F, A, T, R> Described for StreamEntry<F, A, T, R>
where
    F: Fn(A, ItemSink<T>) -> R + 'static,
    A: DeserializeOwned + 'static,
    T: Serialize + 'static,
    R: Serialize + 'static,
{
    fn run(cx: &CallContext<'_>, args: &Incoming) -> Result<Answer, RemoteError> {
        let args: A = cx.decode(args)?;
        let task = conjure::<F>();
        let (items, end) = sink::open::<T>(cx);
        let outcome = catch(move || task(args, items)).and_then(|value| {
            // Encoded with its own descriptors: the end may leave later,
            // from the thread that drops the sink.
            payload::encode(&value, cx.unix).map_err(codec::remote_codec_error)
        });
        end.function_returned(outcome);
        Ok(Answer::Later)
    }
}
