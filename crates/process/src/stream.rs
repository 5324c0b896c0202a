//! The calling side of a stream: [`ItemStream`], the items a call pushes,
//! in order, then the value that ends it.
//!
//! The session's reader puts each `Item` frame into the call's [`Inbox`]
//! undecoded; the consumer decodes it as it takes it, and grants the server
//! more credit as it consumes (half a window at a time), so at most a window
//! of items waits here and the server's sink blocks beyond that.

use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use processional_proto::{Message, Payload, TaskId};
use processional_thread::{Driver, Error};
use serde::de::DeserializeOwned;

use crate::payload;
use crate::session::{RawOutcome, Session};

/// How many items a stream's caller lets the server send ahead of what it
/// consumed, unless
/// [`SlaveProcess::stream_with_window`](crate::SlaveProcess::stream_with_window)
/// says otherwise.
pub const DEFAULT_STREAM_WINDOW: u32 = 64;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Default)]
struct InboxState {
    items: VecDeque<(Payload, Vec<OwnedFd>)>,
    end: Option<RawOutcome>,
    /// The end was an error that the iterator already yielded.
    failure_yielded: bool,
    waker: Option<Waker>,
    lent: Option<crate::session::Lent>,
    /// Items the consumer granted the server so far, and items that came.
    granted: u64,
    received: u64,
}

/// What arrived for one streaming call and was not consumed yet.
#[derive(Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
}

/// An item refused by an inbox: the server had sent all the items its
/// caller granted (`granted`).
#[derive(Debug)]
pub(crate) struct BeyondCredit {
    pub(crate) granted: u64,
}

/// What the consumer takes next from an inbox.
enum Next {
    Item(Payload, Vec<OwnedFd>),
    /// The stream ended with a value (left in the inbox for `finish`), or
    /// with an error already yielded.
    Ended,
    /// The stream ended with this error (a copy; the inbox keeps it).
    Failed(Error),
    Empty,
}

impl Inbox {
    /// Keeps the segment lent for the call's arguments until its reply.
    pub(crate) fn lend(&self, lent: Option<crate::session::Lent>) {
        lock(&self.state).lent = lent;
    }

    /// The consumer grants the server `items` more (before it tells the
    /// server).
    fn allow(&self, items: u32) {
        lock(&self.state).granted += u64::from(items);
    }

    /// An item arrived; refused (and dropped) if the server had no credit
    /// left for it: what waits here stays within the window.
    pub(crate) fn push(&self, payload: Payload, fds: Vec<OwnedFd>) -> Result<(), BeyondCredit> {
        let waker = {
            let mut state = lock(&self.state);
            if state.received >= state.granted {
                return Err(BeyondCredit {
                    granted: state.granted,
                });
            }
            state.received += 1;
            state.items.push_back((payload, fds));
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// The reply arrived (or the connection died): the stream ends.
    pub(crate) fn end(&self, outcome: RawOutcome) {
        let waker = {
            let mut state = lock(&self.state);
            if let (Some(lent), Ok(_)) = (state.lent.take(), &outcome)
                && let Some(loan) = lent.try_lock().ok().and_then(|mut l| l.take())
            {
                drop(loan.reclaim());
            }
            state.end = Some(outcome);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn has_news(&self) -> bool {
        let state = lock(&self.state);
        !state.items.is_empty() || state.end.is_some()
    }

    fn is_ended(&self) -> bool {
        lock(&self.state).end.is_some()
    }

    /// Takes the next thing; with `waker`, registers it if there is none.
    fn next(&self, waker: Option<&Waker>) -> Next {
        let mut state = lock(&self.state);
        if let Some((payload, fds)) = state.items.pop_front() {
            return Next::Item(payload, fds);
        }
        let state = &mut *state;
        match &state.end {
            Some(Ok(_)) => Next::Ended,
            Some(Err(_)) if state.failure_yielded => Next::Ended,
            Some(Err(error)) => {
                state.failure_yielded = true;
                Next::Failed(duplicate(error))
            }
            None => {
                if let Some(waker) = waker {
                    match &state.waker {
                        Some(old) if old.will_wake(waker) => {}
                        _ => state.waker = Some(waker.clone()),
                    }
                }
                Next::Empty
            }
        }
    }

    fn take_end(&self) -> Option<RawOutcome> {
        lock(&self.state).end.take()
    }
}

/// A copy of an error that ended a stream, for the iterator (the original
/// stays for [`ItemStream::finish`]). A stream ends with the server's error
/// or with the connection's end, which are all copied exactly; the end value
/// is decoded only by `finish`, so no codec error reaches here.
fn duplicate(error: &Error) -> Error {
    match error {
        Error::Remote(remote) => Error::Remote(remote.clone()),
        Error::Exited(reason) => Error::Exited(*reason),
        Error::Disconnected { source } => Error::Disconnected {
            source: source.clone(),
        },
        Error::Panicked(report) => Error::Panicked(report.clone()),
        Error::Cancelled => Error::Cancelled,
        // `Stopped`, and what cannot end a stream.
        _ => Error::Stopped,
    }
}

/// The items a call streams, in order, then the value that ends the stream.
///
/// Made by [`SlaveProcess::stream`](crate::SlaveProcess::stream) and
/// `stream_with`. It is an [`Iterator`] that blocks for the next item (and
/// a [`futures_core::Stream`] for async code): `Some(Ok(item))` for each
/// item, then `None` once the stream ended with a value, which
/// [`finish`](Self::finish) returns. A stream that ends with an error (the
/// function panicked, the process died) yields that error last, after the
/// items before it; `finish` returns it too. An item that cannot be decoded
/// yields a codec error in its place and the stream goes on.
///
/// Consuming items grants the server credit for more: it never sends more
/// than a window beyond what was consumed ([`DEFAULT_STREAM_WINDOW`] items,
/// or what `stream_with_window` asked for; granted as soon as the stream is
/// opened, so the server starts at once). Dropping
/// the stream before its end cancels it: the server's sink fails from then
/// on.
///
/// ```
/// use processional_process::{ItemSink, func};
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = processional_process::slave()?;
/// let lines = process.stream(func!(|sink: ItemSink<String>| -> usize {
///     let words = ["one", "two", "three"];
///     for word in words {
///         let _ = sink.send(word.to_uppercase());
///     }
///     words.len()
/// }))?;
/// let mut lines = lines;
/// assert_eq!(lines.next().transpose()?.as_deref(), Some("ONE"));
/// // `finish` skips what is left and returns the function's value.
/// assert_eq!(lines.finish()?, 3);
/// # Ok(())
/// # }
/// ```
#[must_use = "a stream does nothing when dropped but cancel the call; iterate it or `finish` it"]
pub struct ItemStream<T, R> {
    session: Arc<Session>,
    task: TaskId,
    inbox: Arc<Inbox>,
    window: u32,
    /// Items granted to the server so far, and consumed here.
    granted: u64,
    consumed: u64,
    _types: PhantomData<fn() -> (T, R)>,
}

impl<T, R> fmt::Debug for ItemStream<T, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemStream")
            .field("task", &self.task)
            .field("window", &self.window)
            .field("consumed", &self.consumed)
            .field("ended", &self.inbox.is_ended())
            .finish()
    }
}

impl<T, R> ItemStream<T, R> {
    /// The stream of call `task`, granting the server `window` items at
    /// once.
    pub(crate) fn new(session: Arc<Session>, task: TaskId, inbox: Arc<Inbox>, window: u32) -> Self {
        let mut stream = ItemStream {
            session,
            task,
            inbox,
            window: window.max(1),
            granted: 0,
            consumed: 0,
            _types: PhantomData,
        };
        stream.grant();
        stream
    }

    /// How many items the server may send ahead of what was consumed.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Grants credit up to the window, half a window at a time (at least
    /// one item), so that credit costs one small frame per half window.
    fn grant(&mut self) {
        let window = u64::from(self.window);
        let outstanding = self.granted - self.consumed;
        let batch = (window / 2).max(1);
        if outstanding + batch <= window {
            let items = (window - outstanding) as u32;
            self.granted += u64::from(items);
            // Counted before the server can use it.
            self.inbox.allow(items);
            let credit = Message::Credit {
                task: self.task,
                items,
            };
            // A dead session ends the inbox with its error.
            let _ = self.session.send(&credit);
        }
    }

    fn took_item(&mut self) {
        self.consumed += 1;
        self.grant();
    }
}

impl<T: DeserializeOwned + 'static, R> ItemStream<T, R> {
    fn decode(payload: Payload, fds: Vec<OwnedFd>) -> Result<T, Error> {
        payload::decode::<T>(payload, fds)
    }
}

impl<T, R: DeserializeOwned + 'static> ItemStream<T, R> {
    /// Waits for the end of the stream and returns its value (or error).
    /// Items not consumed yet are taken and dropped on the way.
    pub fn finish(mut self) -> Result<R, Error> {
        loop {
            match self.inbox.next(None) {
                Next::Item(..) => self.took_item(),
                Next::Ended | Next::Failed(_) => break,
                Next::Empty => {
                    self.grant();
                    let inbox = &self.inbox;
                    self.session.drive(&|| inbox.has_news(), None);
                }
            }
        }
        match self.inbox.take_end() {
            Some(Ok((payload, fds))) => payload::decode::<R>(payload, fds),
            Some(Err(error)) => Err(error),
            None => unreachable!("the stream ended"),
        }
    }
}

impl<T: DeserializeOwned + 'static, R> Iterator for ItemStream<T, R> {
    type Item = Result<T, Error>;

    fn next(&mut self) -> Option<Result<T, Error>> {
        loop {
            match self.inbox.next(None) {
                Next::Item(payload, fds) => {
                    self.took_item();
                    return Some(Self::decode(payload, fds));
                }
                Next::Ended => return None,
                Next::Failed(error) => return Some(Err(error)),
                Next::Empty => {
                    self.grant();
                    let inbox = &self.inbox;
                    self.session.drive(&|| inbox.has_news(), None);
                }
            }
        }
    }
}

impl<T: DeserializeOwned + 'static, R> futures_core::Stream for ItemStream<T, R> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T, Error>>> {
        let this = self.get_mut();
        match this.inbox.next(Some(cx.waker())) {
            Next::Item(payload, fds) => {
                this.took_item();
                Poll::Ready(Some(Self::decode(payload, fds)))
            }
            Next::Ended => Poll::Ready(None),
            Next::Failed(error) => Poll::Ready(Some(Err(error))),
            Next::Empty => {
                this.grant();
                // A pump thread reads while nobody blocks on the session.
                this.session.ensure_progress();
                Poll::Pending
            }
        }
    }
}

impl<T, R> Drop for ItemStream<T, R> {
    fn drop(&mut self) {
        if !self.inbox.is_ended() {
            // Cancel it on the server; what is still in flight is ignored.
            self.session.forget(self.task);
            let _ = self.session.send(&Message::Cancel { task: self.task });
        }
    }
}
