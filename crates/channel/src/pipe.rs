//! Pipes: a pair of duplex ends for a 1:1 conversation.
//!
//! Each end sends and receives [`Message<T>`]s over one unix socketpair, as
//! length-prefixed postcard frames. An end travels to a child process as a
//! call argument: under the process runtime's descriptor transfer (the way
//! shared memory travels) it is sent as a file descriptor beside the call.

use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec;
use crate::error::{RecvError, SendError};
use crate::message::{Message, Request};
use crate::sys;

/// How much a receive reads at once.
const READ_CHUNK: usize = 64 * 1024;

/// The largest message a pipe carries (encoded), as the wire's frame limit:
/// a receiver never allocates more for one message.
pub const MAX_MESSAGE: usize = 64 << 20;

/// A new pipe: two connected ends. Keep one, give the other to a child.
///
/// ```
/// use processional_channel::{Request, pipe};
/// # fn main() -> Result<(), processional_channel::Error> {
/// let (left, right) = pipe::<String>()?;
/// left.send(Request::Do, Some("ping".into()))?;
/// let got = right.recv()?;
/// assert_eq!(got.data.as_deref(), Some("ping"));
/// assert_eq!(got.sender, std::process::id());
/// drop(left);
/// assert!(matches!(right.recv(), Err(processional_channel::RecvError::Disconnected)));
/// # Ok(())
/// # }
/// ```
pub fn pipe<T>() -> Result<(PipeEnd<T>, PipeEnd<T>), crate::Error> {
    let (a, b) = UnixStream::pair().map_err(|source| crate::Error::Io {
        context: "cannot make a socketpair for a pipe",
        source,
    })?;
    Ok((PipeEnd::from_stream(a), PipeEnd::from_stream(b)))
}

/// Bytes read and not yet decoded: `buf[start..end]`. The buffer is
/// initialized once and reused (it grows only for a frame larger than it).
struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Reader {
    /// A whole frame at the front, if there is one: its payload's range.
    fn frame(&self) -> Option<(usize, usize)> {
        let unread = &self.buf[self.start..self.end];
        let len = u32::from_le_bytes(unread.get(..4)?.try_into().ok()?) as usize;
        (unread.len() >= 4 + len).then_some((self.start + 4, self.start + 4 + len))
    }

    /// The length the next frame declares, once its header is in.
    fn declared(&self) -> Option<usize> {
        let header = self.buf.get(self.start..self.end)?.get(..4)?;
        Some(u32::from_le_bytes(header.try_into().ok()?) as usize)
    }

    /// Room to read into, at the end (compacting, or growing for a frame
    /// larger than the buffer).
    fn room(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let len = (self.buf.len() * 2).max(READ_CHUNK);
                self.buf.resize(len, 0);
            }
        }
        &mut self.buf[self.end..]
    }
}

struct Inner {
    stream: UnixStream,
    reader: Mutex<Reader>,
    writer: Mutex<Vec<u8>>,
}

/// One end of a [`pipe`]: sends and receives [`Message<T>`]s.
///
/// `Send + Sync`: one thread may send while another receives. Sending
/// stamps this process's pid as the sender. When the other end is gone
/// (dropped, or its process died), sending fails with
/// [`SendError::Disconnected`] handing the message back, and receiving,
/// once every message already sent is read, with
/// [`RecvError::Disconnected`].
///
/// It serializes as a file descriptor, so it can be a call argument of a
/// slave on this host (the sending process's copy closes when the argument
/// is dropped). Serialize an end before reading from it: bytes already read
/// into its buffer stay behind.
///
/// **Limit:** one message is at most [`MAX_MESSAGE`] bytes encoded (64 MiB);
/// for larger data, send a shared-memory buffer (`processional_shm`) inside it.
///
/// ```
/// use std::time::Duration;
/// use processional_channel::{PipeEnd, RecvError, Request, SendError, pipe};
/// use processional_process::func;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (here, there) = pipe::<String>()?;
/// let child = processional_process::slave()?;
/// // The end travels to the child as a file descriptor beside the call.
/// let echo = child.schedule_with(there, func!(|end: PipeEnd<String>| {
///     while let Ok(message) = end.recv() {
///         let _ = end.send(Request::Finished, message.data.map(|s| s.to_uppercase()));
///     }
/// }));
/// here.send(Request::Do, Some("hi".to_owned()))?;
/// assert_eq!(here.recv()?.data.as_deref(), Some("HI"));
/// assert!(here.try_recv()?.is_none()); // nothing more now
/// assert!(matches!(here.recv_timeout(Duration::from_millis(20)), Err(RecvError::Timeout)));
/// drop(child); // the child and its end go away
/// echo.wait().ok();
/// let refused = loop {
///     match here.send(Request::Die, Some("bye".to_owned())) {
///         Err(SendError::Disconnected(message)) => break message,
///         _ => std::thread::sleep(Duration::from_millis(10)),
///     }
/// };
/// assert_eq!(refused.data.as_deref(), Some("bye")); // the message comes back
/// # Ok(())
/// # }
/// ```
pub struct PipeEnd<T> {
    inner: Arc<Inner>,
    _messages: PhantomData<fn(T) -> T>,
}

impl<T> Clone for PipeEnd<T> {
    fn clone(&self) -> Self {
        PipeEnd {
            inner: self.inner.clone(),
            _messages: PhantomData,
        }
    }
}

impl<T> fmt::Debug for PipeEnd<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeEnd")
            .field("fd", &self.inner.stream.as_fd())
            .finish()
    }
}

fn lock<X>(mutex: &Mutex<X>) -> MutexGuard<'_, X> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T> PipeEnd<T> {
    fn from_stream(stream: UnixStream) -> Self {
        PipeEnd {
            inner: Arc::new(Inner {
                stream,
                reader: Mutex::new(Reader {
                    buf: Vec::new(),
                    start: 0,
                    end: 0,
                }),
                writer: Mutex::new(Vec::new()),
            }),
            _messages: PhantomData,
        }
    }

    /// An end over a connected unix stream (one inherited, say), whose peer
    /// is another `PipeEnd<T>`.
    pub fn from_unix_stream(stream: UnixStream) -> Self {
        Self::from_stream(stream)
    }
}

impl<T: Serialize> PipeEnd<T> {
    /// Sends a message of this process to the other end.
    pub fn send(&self, request: Request, data: Option<T>) -> Result<(), SendError<T>> {
        self.send_message(Message::new(request, data))
    }

    /// Sends `message` as it is (its sender may be explicit).
    pub fn send_message(&self, message: Message<T>) -> Result<(), SendError<T>> {
        let mut buf = lock(&self.inner.writer);
        buf.clear();
        buf.extend_from_slice(&[0; 4]);
        if let Err(source) = codec::encode_into(&message, &mut buf) {
            return Err(SendError::Failed {
                message,
                source: Box::new(source),
            });
        }
        if buf.len() - 4 > MAX_MESSAGE {
            let error = io::Error::new(io::ErrorKind::InvalidInput, "a message over MAX_MESSAGE");
            return Err(SendError::Failed {
                message,
                source: Box::new(processional_task::Error::io(
                    "cannot send on the pipe",
                    error,
                )),
            });
        }
        let len = u32::try_from(buf.len() - 4).expect("a message under MAX_MESSAGE");
        buf[..4].copy_from_slice(&len.to_le_bytes());
        match (&self.inner.stream).write_all(&buf) {
            Ok(()) => Ok(()),
            Err(e) if sys::is_disconnect(&e) => Err(SendError::Disconnected(message)),
            Err(e) => Err(SendError::Failed {
                message,
                source: Box::new(processional_task::Error::io("cannot write to the pipe", e)),
            }),
        }
    }
}

impl<T: DeserializeOwned> PipeEnd<T> {
    /// Waits for the next message.
    pub fn recv(&self) -> Result<Message<T>, RecvError> {
        self.receive(None, false)
            .map(|m| m.expect("a blocking receive"))
    }

    /// The next message if one is there now; `Ok(None)` if not.
    pub fn try_recv(&self) -> Result<Option<Message<T>>, RecvError> {
        self.receive(None, true)
    }

    /// Waits at most `timeout` for the next message
    /// ([`RecvError::Timeout`] then).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message<T>, RecvError> {
        // A timeout past any instant (`Duration::MAX`) is no deadline.
        let deadline = Instant::now().checked_add(timeout);
        self.receive(deadline, false)?.ok_or(RecvError::Timeout)
    }

    fn receive(
        &self,
        deadline: Option<Instant>,
        now_only: bool,
    ) -> Result<Option<Message<T>>, RecvError> {
        let mut reader = lock(&self.inner.reader);
        loop {
            if let Some((from, to)) = reader.frame() {
                let decoded = codec::decode(&reader.buf[from..to]);
                reader.start = to;
                return decoded
                    .map(Some)
                    .map_err(|e| RecvError::Failed(Box::new(e)));
            }
            let wait = match (now_only, deadline) {
                (true, _) => Some(Duration::ZERO),
                (false, Some(deadline)) => Some(deadline.saturating_duration_since(Instant::now())),
                (false, None) => None,
            };
            if let Some(wait) = wait {
                let ready =
                    sys::wait_readable(self.inner.stream.as_fd(), Some(wait)).map_err(|e| {
                        RecvError::Failed(Box::new(processional_task::Error::io(
                            "cannot wait on the pipe",
                            e,
                        )))
                    })?;
                if !ready {
                    return if now_only {
                        Ok(None)
                    } else {
                        Err(RecvError::Timeout)
                    };
                }
            }
            if reader.declared().is_some_and(|len| len > MAX_MESSAGE) {
                let error = io::Error::new(io::ErrorKind::InvalidData, "a frame over MAX_MESSAGE");
                return Err(RecvError::Failed(Box::new(processional_task::Error::io(
                    "the pipe's peer sent a message too large",
                    error,
                ))));
            }
            let read = (&self.inner.stream).read(reader.room());
            match read {
                Ok(0) => return Err(RecvError::Disconnected),
                Ok(n) => reader.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if sys::is_disconnect(&e) => return Err(RecvError::Disconnected),
                Err(e) => {
                    return Err(RecvError::Failed(Box::new(processional_task::Error::io(
                        "cannot read the pipe",
                        e,
                    ))));
                }
            }
        }
    }
}

impl<T: DeserializeOwned + Send + 'static> PipeEnd<T> {
    /// The next message, for async code: a future that a pooled thread
    /// completes (no executor of ours needed).
    pub fn recv_async(&self) -> RecvFuture<T> {
        let end = self.clone();
        RecvFuture {
            task: processional_thread::thread(move || end.recv()),
        }
    }
}

/// The future of [`PipeEnd::recv_async`].
#[must_use = "a future does nothing unless polled"]
pub struct RecvFuture<T> {
    task: processional_task::Task<Result<Message<T>, RecvError>>,
}

impl<T> fmt::Debug for RecvFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvFuture").finish_non_exhaustive()
    }
}

impl<T> Future for RecvFuture<T> {
    type Output = Result<Message<T>, RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.task).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(error)) => Poll::Ready(Err(RecvError::Failed(Box::new(error)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Serialize for PipeEnd<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        if !processional_shm::transfer::is_collecting() {
            return Err(S::Error::custom(
                "a pipe end travels only as a file descriptor, to a process on this host",
            ));
        }
        let fd: OwnedFd = self
            .inner
            .stream
            .try_clone()
            .map_err(|e| S::Error::custom(format!("cannot duplicate the pipe's descriptor: {e}")))?
            .into();
        let index = processional_shm::transfer::attach(fd.into())
            .map_err(|_| S::Error::custom("too many descriptors in one message"))?;
        serializer.serialize_newtype_struct("PipeEnd", &index)
    }
}

impl<'de, T> Deserialize<'de> for PipeEnd<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(rename = "PipeEnd")]
        struct Index(u32);
        let Index(index) = Index::deserialize(deserializer)?;
        let fd = processional_shm::transfer::take_fd(index).map_err(D::Error::custom)?;
        Ok(PipeEnd::from_stream(UnixStream::from(fd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_in_order_and_carry_the_sender() {
        let (a, b) = pipe::<u64>().unwrap();
        for i in 0..100 {
            a.send(Request::Do, Some(i)).unwrap();
        }
        for i in 0..100 {
            let m = b.recv().unwrap();
            assert_eq!(m.data, Some(i));
            assert_eq!(m.sender, std::process::id());
        }
        assert!(b.try_recv().unwrap().is_none());
        assert!(matches!(
            b.recv_timeout(Duration::from_millis(1)),
            Err(RecvError::Timeout)
        ));
        b.send_message(Message::new(Request::Finished, None).with_sender(7))
            .unwrap();
        assert_eq!(a.recv().unwrap().sender, 7);
    }

    #[test]
    fn a_gone_end_hands_the_message_back() {
        let (a, b) = pipe::<String>().unwrap();
        a.send(Request::Do, Some("last".into())).unwrap();
        drop(a);
        assert_eq!(b.recv().unwrap().data.as_deref(), Some("last"));
        assert!(matches!(b.recv(), Err(RecvError::Disconnected)));
        match b.send(Request::Do, Some("lost?".into())) {
            Err(SendError::Disconnected(m)) => assert_eq!(m.data.as_deref(), Some("lost?")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_larger_than_the_buffer_and_many_small_ones() {
        let (a, b) = pipe::<Vec<u8>>().unwrap();
        let big = vec![7u8; 3 * READ_CHUNK + 5];
        let writer = std::thread::spawn(move || {
            for i in 0..200u8 {
                a.send(Request::Do, Some(vec![i; usize::from(i)])).unwrap();
            }
            a.send(Request::Do, Some(big)).unwrap();
            a.send(Request::Do, Some(vec![1])).unwrap();
        });
        for i in 0..200u8 {
            assert_eq!(b.recv().unwrap().data, Some(vec![i; usize::from(i)]));
        }
        assert_eq!(
            b.recv().unwrap().data.map(|d| d.len()),
            Some(3 * READ_CHUNK + 5)
        );
        assert_eq!(b.recv().unwrap().data, Some(vec![1]));
        writer.join().unwrap();
    }

    #[test]
    fn an_end_does_not_travel_without_descriptor_transfer() {
        let (a, _b) = pipe::<u8>().unwrap();
        assert!(postcard::to_stdvec(&a).is_err());
    }

    #[test]
    fn async_receive() {
        let (a, b) = pipe::<u8>().unwrap();
        a.send(Request::Do, Some(1)).unwrap();
        let got = pollster_block_on(b.recv_async()).unwrap();
        assert_eq!(got.data, Some(1));
    }

    /// A minimal executor: park until woken.
    fn pollster_block_on<F: Future>(future: F) -> F::Output {
        use std::task::{Wake, Waker};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
}
