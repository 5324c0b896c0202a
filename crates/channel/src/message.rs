//! The envelope every pipe and queue carries.

use serde::{Deserialize, Serialize};

/// What a message asks for. `Do`, `Finished` and `Die` are pymulproc's
/// kinds; `User(n)` is any kind of the program's own.
///
/// ```
/// use processional_channel::{Queue, Request};
/// # fn main() -> Result<(), processional_channel::Error> {
/// const PING: Request = Request::User(1);
/// let queue = Queue::<()>::new()?;
/// queue.send(PING, None)?;
/// queue.send(Request::Die, None)?;
/// assert_eq!(queue.recv_kind(Request::Die)?.request, Request::Die); // skips the ping
/// assert_eq!(queue.recv()?.request, PING);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Request {
    /// Do some work (the data says what).
    Do,
    /// Work is done (the data holds the result).
    Finished,
    /// The poison pill: the receiver should stop.
    Die,
    /// A kind of the program's own.
    User(u32),
}

/// A message: its request kind, the pid of the process that sent it, an
/// optional recipient pid, and typed data.
///
/// The sender is stamped by the sending handle with its own process id
/// (`std::process::id()`) unless the message was built with an explicit
/// sender ([`Message::with_sender`]).
///
/// ```
/// use processional_channel::{Message, Request};
/// let message = Message::new(Request::Do, Some(3u32)).to(42);
/// assert_eq!(message.sender, std::process::id());
/// assert_eq!(message.recipient, Some(42));
/// assert!(message.is_for(42) && !message.is_for(7));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message<T> {
    /// What the message asks for.
    pub request: Request,
    /// The sender's pid, as the sender claims it: [`Message::new`] stamps
    /// the pid of the process making the message,
    /// [`with_sender`](Self::with_sender) claims any, and nothing checks it.
    pub sender: u32,
    /// The pid it is addressed to; `None` for anyone.
    pub recipient: Option<u32>,
    /// The payload.
    pub data: Option<T>,
}

impl<T> Message<T> {
    /// A message from this process to anyone.
    pub fn new(request: Request, data: Option<T>) -> Self {
        Message {
            request,
            sender: std::process::id(),
            recipient: None,
            data,
        }
    }

    /// The same message addressed to `pid`.
    pub fn to(mut self, pid: u32) -> Self {
        self.recipient = Some(pid);
        self
    }

    /// The same message with an explicit sender pid (pymulproc allows it;
    /// the default is the pid of the process that made the message).
    ///
    /// Neither the sending handle nor the host checks it: a receiver
    /// filtering with [`Pick::From`](crate::Pick::From) gets what others
    /// claim, so treat the sender pid as a claim, not an identity.
    pub fn with_sender(mut self, pid: u32) -> Self {
        self.sender = pid;
        self
    }

    /// Whether the receiver `pid` may take it: addressed to `pid`, or to
    /// nobody in particular.
    pub fn is_for(&self, pid: u32) -> bool {
        self.recipient.is_none_or(|r| r == pid)
    }

    /// The same envelope around other data.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Message<U> {
        Message {
            request: self.request,
            sender: self.sender,
            recipient: self.recipient,
            data: self.data.map(f),
        }
    }
}
