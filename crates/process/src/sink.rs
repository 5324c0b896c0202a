//! The serving side of a stream: [`ItemSink`], which pushes the items of a
//! call's stream to its caller, within the credit the caller granted.
//!
//! A streaming call answers like a deferred one: its `Reply` (the end of the
//! stream, a value or an error) is sent once the function has returned *and*
//! its sink is gone, so every item the sink sent comes before it. The sink
//! may move to another thread and feed the stream long after the function
//! returned (watchers, queue deliveries).

use std::any::Any;
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use processional_proto::{Message, Payload, RemoteError, TaskId};
use processional_thread::CancelToken;
use serde::Serialize;

use crate::codec;
use crate::context::CallContext;
use crate::payload::{self, Outgoing};
use crate::reply::{NobodyListening, Replier};
use crate::serve::Served;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many items the caller of a streaming call has granted so far (its
/// `Credit` messages add up); kept with the call on the serving side.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    granted: AtomicU64,
}

impl Flow {
    /// Adds the caller's credit.
    pub(crate) fn grant(&self, items: u32) {
        self.granted.fetch_add(u64::from(items), Ordering::SeqCst);
    }

    fn granted(&self) -> u64 {
        self.granted.load(Ordering::SeqCst)
    }
}

/// Why [`ItemSink::try_send`] did not send an item; the item comes back.
///
/// ```
/// use processional_process::TrySendError;
///
/// let error: TrySendError<String> = TrySendError::Full("item".into());
/// assert_eq!(error.to_string(), "the caller's window is full");
/// assert_eq!(error.into_inner(), "item"); // nothing is lost
/// ```
#[derive(Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<T> {
    /// The caller has not granted credit for another item yet (it has not
    /// consumed the earlier ones).
    #[error("the caller's window is full")]
    Full(T),
    /// Nobody listens any more: the caller dropped the stream or left.
    #[error("nobody is listening any more")]
    NobodyListening(T),
}

impl<T> TrySendError<T> {
    /// The item that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(item) | TrySendError::NobodyListening(item) => item,
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::NobodyListening(_) => f.write_str("NobodyListening(..)"),
        }
    }
}

/// The end of the stream: sent when both the function returned and the sink
/// is gone.
struct End {
    replier: Option<Replier>,
    /// The function's value (or error), once it returned.
    outcome: Option<Result<Outgoing, RemoteError>>,
    sink_alive: bool,
    /// An item that could not be encoded ends the stream with this error.
    failure: Option<RemoteError>,
}

/// What the sink and the stream's entry point share.
struct Stream {
    /// Weak: a sink kept after its caller left does not keep the
    /// connection open.
    served: Weak<Served>,
    unix: bool,
    task: TaskId,
    token: CancelToken,
    flow: Arc<Flow>,
    end: Mutex<End>,
}

impl Stream {
    /// The connection, while it is served.
    fn served(&self) -> Option<Arc<Served>> {
        self.served.upgrade().filter(|served| !served.ended())
    }

    fn is_closed(&self) -> bool {
        self.token.is_cancelled() || self.served().is_none() || lock(&self.end).failure.is_some()
    }

    /// Sends the end if both halves are done.
    fn settle(&self, mut end: MutexGuard<'_, End>) {
        if end.sink_alive || end.outcome.is_none() {
            return;
        }
        let outcome = end.outcome.take().expect("checked above");
        let outcome = match end.failure.take() {
            Some(failure) => Err(failure),
            None => outcome,
        };
        let replier = end.replier.take();
        drop(end);
        if let Some(replier) = replier {
            replier.send_outcome(outcome);
        }
    }
}

/// The stream's end, as the entry point sees it.
pub(crate) struct StreamEnd {
    stream: Arc<Stream>,
}

impl StreamEnd {
    /// The function returned (or panicked): the stream ends with `outcome`
    /// once the sink is gone too.
    pub(crate) fn function_returned(self, outcome: Result<Outgoing, RemoteError>) {
        let mut end = lock(&self.stream.end);
        end.outcome = Some(outcome);
        self.stream.settle(end);
    }
}

/// Opens the stream of the call `cx` serves: the sink for the function, and
/// the end for the entry point.
pub(crate) fn open<T>(cx: &CallContext<'_>) -> (ItemSink<T>, StreamEnd) {
    let replier = cx.replier();
    let stream = Arc::new(Stream {
        served: Arc::downgrade(cx.served),
        unix: cx.unix,
        task: cx.task,
        token: cx.token.clone(),
        flow: cx.served.flow(cx.task),
        end: Mutex::new(End {
            replier: Some(replier),
            outcome: None,
            sink_alive: true,
            failure: None,
        }),
    });
    (
        ItemSink {
            stream: stream.clone(),
            sent: Cell::new(0),
            _items: PhantomData,
        },
        StreamEnd { stream },
    )
}

/// Pushes the items of a stream to its caller, in order.
///
/// A function shipped with [`SlaveProcess::stream`](crate::SlaveProcess::stream)
/// (or `stream_with`) gets one. The caller grants credit as it consumes
/// items (a window of [`DEFAULT_STREAM_WINDOW`](crate::DEFAULT_STREAM_WINDOW)
/// by default), so [`send`](Self::send) blocks while the caller is that far
/// behind, and [`try_send`](Self::try_send) reports the window full: a
/// consumer that stops reading never makes the server buffer without bound.
///
/// The sink is `Send`: it may move to another thread and feed the stream
/// later. The stream ends, with the function's value, once the function has
/// returned and the sink is dropped. Once the caller drops its stream or
/// leaves, sending hands the item back in a [`NobodyListening`].
///
/// ```
/// use processional_process::{ItemSink, func};
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = processional_process::slave()?;
/// let squares = process.stream_with(4u64, func!(|n: u64, sink: ItemSink<u64>| -> String {
///     for i in 1..=n {
///         if sink.send(i * i).is_err() {
///             return "the caller left".into();
///         }
///     }
///     "done".into()
/// }))?;
/// let mut squares = squares;
/// let items: Vec<u64> = squares.by_ref().collect::<Result<_, _>>()?;
/// assert_eq!(items, [1, 4, 9, 16]);
/// assert_eq!(squares.finish()?, "done");
/// # Ok(())
/// # }
/// ```
pub struct ItemSink<T> {
    stream: Arc<Stream>,
    /// Items sent so far (only the sink sends).
    sent: Cell<u64>,
    _items: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for ItemSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemSink")
            .field("task", &self.stream.task)
            .field("sent", &self.sent.get())
            .field("granted", &self.stream.flow.granted())
            .finish()
    }
}

impl<T> ItemSink<T> {
    /// Whether the caller is gone: it dropped the stream (cancelled it) or
    /// disconnected. Sending fails from then on.
    pub fn is_closed(&self) -> bool {
        self.stream.is_closed()
    }

    /// How many items were sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.get()
    }

    fn has_credit(&self) -> bool {
        self.stream.flow.granted() > self.sent.get()
    }
}

impl<T: Serialize + Any> ItemSink<T> {
    /// Sends `item`, waiting while the caller's window is full. Fails, with
    /// the item, once nobody listens any more.
    ///
    /// An item that cannot be encoded ends the stream with that codec error
    /// (the caller sees it after the items before it); it comes back here as
    /// [`NobodyListening`], like every later item.
    pub fn send(&self, item: T) -> Result<(), NobodyListening<T>> {
        if !self.has_credit() {
            let stream = &*self.stream;
            if let Some(served) = stream.served() {
                served.wait_for_credit(&|| self.has_credit() || stream.is_closed());
            }
        }
        self.push(item)
            .map_err(|error| NobodyListening(error.into_inner()))
    }

    /// Sends `item` if the caller's window has room for it, without
    /// waiting.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        if !self.has_credit() {
            // Read whatever credit has arrived.
            if let Some(served) = self.stream.served() {
                served.poll_incoming();
            }
            if !self.has_credit() && !self.stream.is_closed() {
                return Err(TrySendError::Full(item));
            }
        }
        self.push(item)
    }

    fn push(&self, item: T) -> Result<(), TrySendError<T>> {
        let stream = &*self.stream;
        let served = match stream.served() {
            Some(served) if !stream.is_closed() => served,
            _ => return Err(TrySendError::NobodyListening(item)),
        };
        if !self.has_credit() {
            return Err(TrySendError::Full(item));
        }
        let Outgoing {
            payload,
            transfers,
            loan,
        } = match payload::encode(&item, stream.unix) {
            Ok(outgoing) => outgoing,
            Err(error) => {
                lock(&stream.end).failure = Some(codec::remote_codec_error(error));
                return Err(TrySendError::NobodyListening(item));
            }
        };
        let message = Message::Item {
            task: stream.task,
            payload,
        };
        let mut fds: Vec<BorrowedFd<'_>> = transfers.iter().map(|fd| fd.as_fd()).collect();
        fds.extend(loan.as_ref().map(|loan| loan.as_fd()));
        let sent = served.send_with_fds(&message, &fds);
        if let Message::Item {
            payload: Payload::Inline(bytes),
            ..
        } = message
        {
            codec::recycle(bytes);
        }
        if !sent {
            return Err(TrySendError::NobodyListening(item));
        }
        // An item's segment is handed over, like a value's.
        drop(loan);
        self.sent.set(self.sent.get() + 1);
        Ok(())
    }
}

impl<T> Drop for ItemSink<T> {
    fn drop(&mut self) {
        let mut end = lock(&self.stream.end);
        end.sink_alive = false;
        self.stream.settle(end);
    }
}
