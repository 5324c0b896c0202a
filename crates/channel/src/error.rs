//! The errors of pipes and queues, in crossbeam's shape: a failed send
//! hands its message back.

use std::fmt;

use crate::core::NothingToAcknowledge;
use crate::message::Message;

/// A message that could not be sent; it comes back inside.
///
/// The message comes back inside, to send again or elsewhere:
///
/// ```
/// use processional_channel::{Queue, Request, SendError, Message};
/// # fn main() -> Result<(), processional_channel::Error> {
/// let queue = Queue::<u32>::bounded(1)?;
/// queue.try_send(Message::new(Request::Do, Some(1)))?;
/// match queue.try_send(Message::new(Request::Do, Some(2))) {
///     Err(SendError::Full(message)) => assert_eq!(message.data, Some(2)),
///     other => panic!("{other:?}"),
/// }
/// queue.close()?;
/// assert!(matches!(queue.send(Request::Do, Some(3)), Err(SendError::Closed(_))));
/// # Ok(())
/// # }
/// ```
#[derive(thiserror::Error)]
pub enum SendError<T> {
    /// A bounded queue stayed full (for `try_send`: is full now; for
    /// `send_timeout`: until the deadline).
    #[error("the queue is full")]
    Full(Message<T>),
    /// The queue is closed.
    #[error("the queue is closed")]
    Closed(Message<T>),
    /// The other end of the pipe, or the process hosting the queue, is gone.
    #[error("the other end is gone")]
    Disconnected(Message<T>),
    /// The message could not be sent for another reason (it does not
    /// encode, a call failed).
    #[error("the message could not be sent")]
    Failed {
        /// The message.
        message: Message<T>,
        /// Why.
        #[source]
        source: Box<processional_task::Error>,
    },
}

impl<T> SendError<T> {
    /// The message that was not sent.
    pub fn into_message(self) -> Message<T> {
        match self {
            SendError::Full(m) | SendError::Closed(m) | SendError::Disconnected(m) => m,
            SendError::Failed { message, .. } => message,
        }
    }

    /// Whether the queue was full.
    pub fn is_full(&self) -> bool {
        matches!(self, SendError::Full(_))
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full(_) => f.write_str("Full(..)"),
            SendError::Closed(_) => f.write_str("Closed(..)"),
            SendError::Disconnected(_) => f.write_str("Disconnected(..)"),
            SendError::Failed { source, .. } => f
                .debug_struct("Failed")
                .field("source", source)
                .finish_non_exhaustive(),
        }
    }
}

/// A receive that got no message.
///
/// `try_recv` answers `Ok(None)` for "nothing yet": emptiness is not a
/// failure.
///
/// ```
/// use std::time::Duration;
/// use processional_channel::{Queue, RecvError, Request};
/// # fn main() -> Result<(), processional_channel::Error> {
/// let queue = Queue::<u32>::new()?;
/// assert!(matches!(queue.recv_timeout(Duration::from_millis(20)), Err(RecvError::Timeout)));
/// queue.send(Request::Do, Some(1))?;
/// queue.close()?;
/// assert_eq!(queue.recv()?.data, Some(1)); // what was sent is still there
/// assert!(matches!(queue.recv(), Err(RecvError::Closed)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The deadline passed (`recv_timeout`).
    #[error("no message arrived in time")]
    Timeout,
    /// End of queue: it is closed and holds nothing more for this receiver.
    #[error("the queue is closed and holds nothing more for this receiver")]
    Closed,
    /// The other end of the pipe, or the process hosting the queue, is gone.
    #[error("the other end is gone")]
    Disconnected,
    /// A message arrived that does not decode, or a call failed.
    #[error("the receive failed")]
    Failed(#[source] Box<processional_task::Error>),
}

/// Any failure of this crate, for `?` in code that mixes pipes, queues and
/// process calls. Messages of failed sends are dropped here; match the
/// operation's own error to keep them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A send found the queue full (its message dropped).
    #[error("the queue is full")]
    Full,
    /// A send found the queue closed (its message dropped).
    #[error("the queue is closed")]
    Closed,
    /// A send found the other end gone (its message dropped).
    #[error("the other end is gone")]
    Disconnected,
    /// A receive failed.
    #[error(transparent)]
    Recv(#[from] RecvError),
    /// `task_done` with nothing to acknowledge.
    #[error(transparent)]
    TaskDone(#[from] NothingToAcknowledge),
    /// A process call failed.
    #[error(transparent)]
    Process(Box<processional_task::Error>),
    /// An OS call failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl<T> From<SendError<T>> for Error {
    fn from(error: SendError<T>) -> Self {
        match error {
            SendError::Full(_) => Error::Full,
            SendError::Closed(_) => Error::Closed,
            SendError::Disconnected(_) => Error::Disconnected,
            SendError::Failed { source, .. } => Error::Process(source),
        }
    }
}

/// A batch send that stopped: the messages not accepted come back, in
/// order, split by what is known of them.
///
/// - [`unsent`](Self::unsent): certainly not accepted (the host refused
///   them, said it has no such queue, or they never left), so sending them
///   again cannot duplicate anything.
/// - [`unknown`](Self::unknown): on their way when the connection broke or
///   the call failed: the host may have accepted some or all of them
///   (receivers may have them already), or none. Sending them again may
///   duplicate; dropping them may lose. Only the application can tell
///   (say, with ids in the data).
///
/// In send order, `unknown` comes first, then `unsent`.
///
/// ```
/// use processional_channel::{BatchSendError, Error, Message, Request};
///
/// let error = BatchSendError {
///     unknown: vec![Message::new(Request::Do, Some(1))],
///     unsent: vec![Message::new(Request::Do, Some(2))],
///     reason: Error::Disconnected,
/// };
/// assert_eq!(
///     error.to_string(),
///     "1 messages were not sent and 1 may or may not have been: the other end is gone"
/// );
/// ```
#[derive(thiserror::Error)]
#[error("{} messages were not sent and {} may or may not have been: {reason}", unsent.len(), unknown.len())]
pub struct BatchSendError<T> {
    /// Messages the host may or may not have accepted (in flight when the
    /// connection broke or the call failed): resending may duplicate them.
    pub unknown: Vec<Message<T>>,
    /// Messages certainly not accepted: from the first refused one on (or
    /// all of them, when none left or the queue is gone).
    pub unsent: Vec<Message<T>>,
    /// Why (its own message is empty: `Full(_)` and the like carry the
    /// first unsent message only when sent singly).
    #[source]
    pub reason: Error,
}

impl<T> BatchSendError<T> {
    /// Every message not known to be accepted, in send order: `unknown`,
    /// then `unsent`.
    pub fn into_messages(self) -> Vec<Message<T>> {
        let mut all = self.unknown;
        all.extend(self.unsent);
        all
    }
}

impl<T> fmt::Debug for BatchSendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchSendError")
            .field("unknown", &self.unknown.len())
            .field("unsent", &self.unsent.len())
            .field("reason", &self.reason)
            .finish()
    }
}

impl<T> From<BatchSendError<T>> for Error {
    fn from(error: BatchSendError<T>) -> Self {
        error.reason
    }
}

impl From<processional_task::Error> for Error {
    fn from(error: processional_task::Error) -> Self {
        Error::Process(Box::new(error))
    }
}
