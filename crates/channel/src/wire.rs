//! What a queue handle and the process hosting the queue say to each other:
//! the arguments and answers of its operations. Data is carried encoded
//! (postcard bytes of the user's `T`), so the host needs no `T`, and these
//! types are the queue's contract with programs of other builds.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::core::Filter;
use crate::message::{Message, Request};

/// A message as the host keeps it: the data encoded.
pub type WireMessage = Message<ByteBuf>;

/// Which messages a receive takes (the built-in filters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Pick {
    /// Any message.
    Any,
    /// Addressed to this pid, or to nobody in particular ("for me", the
    /// handle filling in its own pid).
    ForPid(u32),
    /// Addressed to this pid exactly.
    To(u32),
    /// From this sender.
    From(u32),
    /// Of this request kind.
    Kind(Request),
}

impl Pick {
    pub(crate) fn filter<T>(self) -> Filter<T> {
        match self {
            Pick::Any => Filter::Any,
            Pick::ForPid(pid) => Filter::ForMe(pid),
            Pick::To(pid) => Filter::To(pid),
            Pick::From(pid) => Filter::From(pid),
            Pick::Kind(kind) => Filter::Kind(kind),
        }
    }
}

/// How long an operation may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wait {
    /// Not at all.
    Now,
    /// Up to this many milliseconds.
    Millis(u64),
    /// As long as it takes.
    Forever,
}

/// The options of a new queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// At most this many messages held (`None`: unbounded).
    pub capacity: Option<u64>,
    /// Whether `join` waits for `task_done` rather than receipt.
    pub explicit_ack: bool,
}

/// Send messages, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendArgs {
    /// The queue's id on its host (128 random bits: see [`Queue::id`](crate::Queue::id)).
    pub queue: u128,
    /// The messages.
    pub messages: Vec<WireMessage>,
    /// How long a full queue may make the (single) message wait.
    pub wait: Wait,
}

/// The answer to a send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendReply {
    /// Every message was accepted.
    Accepted,
    /// The queue was full: the messages from the first refused one on
    /// come back.
    Full(Vec<WireMessage>),
    /// The queue is closed: these come back.
    Closed(Vec<WireMessage>),
    /// No such queue on this host.
    NoQueue(Vec<WireMessage>),
}

/// Receive messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecvArgs {
    /// The queue's id on its host (128 random bits: see [`Queue::id`](crate::Queue::id)).
    pub queue: u128,
    /// Which messages.
    pub pick: Pick,
    /// At most this many (at least one; more only if they are there).
    pub max: u32,
    /// How long to wait for the first.
    pub wait: Wait,
}

/// The answer to a receive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecvReply {
    /// Messages, in queue order.
    Got(Vec<WireMessage>),
    /// Nothing for this receiver now (`Wait::Now`).
    Empty,
    /// Nothing came in time.
    TimedOut,
    /// The queue is closed and holds nothing for this receiver.
    Closed,
    /// No such queue on this host.
    NoQueue,
}

/// The answer to `len`, `join`, `close` and `task_done`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Done; for `len`, the number of messages held.
    Ok(u64),
    /// `task_done` with nothing to acknowledge.
    NothingToAcknowledge,
    /// No such queue on this host.
    NoQueue,
}

/// The names of the queue's services in its host: what a data-only client
/// of another build calls (with the argument and answer types of this
/// module).
pub mod services {
    /// `SendArgs` → `SendReply` (deferred while a full queue makes a single
    /// message wait).
    pub const SEND: &str = "processional.channel.v1.send";
    /// `RecvArgs` → `RecvReply` (deferred until a message, the deadline or
    /// the end of the queue).
    pub const RECV: &str = "processional.channel.v1.recv";
    /// queue id (`u128`) → `Status::Ok(messages held)`.
    pub const LEN: &str = "processional.channel.v1.len";
    /// queue id → `Status`, once every message sent was handled (deferred).
    pub const JOIN: &str = "processional.channel.v1.join";
    /// queue id → `Status`: closes the queue.
    pub const CLOSE: &str = "processional.channel.v1.close";
    /// queue id → `Status`: acknowledges one received message.
    pub const TASK_DONE: &str = "processional.channel.v1.task_done";
    /// queue id → `Status::Ok(calls waiting in the host)`.
    pub const WAITING: &str = "processional.channel.v1.waiting";
}
