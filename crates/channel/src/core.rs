//! The queue itself, without processes: messages, filtered receive,
//! waiting receivers and senders, close and join.
//!
//! [`QueueCore`] knows no sockets and no clock: waiting receivers, senders
//! and joiners are opaque tokens `W` (a hosted queue keeps the deferred
//! replies of their calls there), deadlines are `Instant`s it is given, and
//! what must happen to tokens comes out as [`Effect`]s for the caller to
//! carry out. So every rule of the queue is tested here, against a model,
//! without a process.
//!
//! Messages are kept by a global sequence number (the order they were
//! accepted in) and indexed by recipient, by sender and by request kind, so
//! that the first message of a built-in filter is found at the head of one
//! or two indexes, whatever the number of messages for others: receiving
//! leaves every other message in place, unchanged, in order. Indexes drop
//! their entries of taken messages lazily, when they reach the head.
//!
//! ```
//! use processional_channel::core::{Filter, QueueCore};
//! use processional_channel::{Message, Request};
//!
//! let mut queue: QueueCore<u32, ()> = QueueCore::new(None, false);
//! let mut effects = Vec::new();
//! queue.try_send(Message::new(Request::Do, Some(1)).to(7), &mut effects).unwrap();
//! queue.try_send(Message::new(Request::Do, Some(2)).to(8), &mut effects).unwrap();
//! let mine = queue.recv(&Filter::ForMe(8), &mut effects).unwrap().unwrap();
//! assert_eq!(mine.message.data, Some(2));
//! assert_eq!(queue.len(), 1); // the message for 7 is still there
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::time::Instant;

use crate::message::{Message, Request};

/// A predicate a [`Filter::Where`] runs on messages.
pub type Predicate<T> = Box<dyn Fn(&Message<T>) -> bool + Send>;

/// Which messages a receiver takes.
pub enum Filter<T> {
    /// Any message.
    Any,
    /// A message addressed to this pid, or to nobody in particular.
    ForMe(u32),
    /// A message addressed to this pid exactly.
    To(u32),
    /// A message from this sender.
    From(u32),
    /// A message of this request kind.
    Kind(Request),
    /// A message the predicate accepts (found by scanning, in order).
    Where(Predicate<T>),
}

impl<T> fmt::Debug for Filter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Any => f.write_str("Any"),
            Filter::ForMe(pid) => f.debug_tuple("ForMe").field(pid).finish(),
            Filter::To(pid) => f.debug_tuple("To").field(pid).finish(),
            Filter::From(pid) => f.debug_tuple("From").field(pid).finish(),
            Filter::Kind(kind) => f.debug_tuple("Kind").field(kind).finish(),
            Filter::Where(_) => f.write_str("Where(..)"),
        }
    }
}

impl<T> Filter<T> {
    /// Whether `message` passes the filter.
    pub fn matches(&self, message: &Message<T>) -> bool {
        match self {
            Filter::Any => true,
            Filter::ForMe(pid) => message.is_for(*pid),
            Filter::To(pid) => message.recipient == Some(*pid),
            Filter::From(pid) => message.sender == *pid,
            Filter::Kind(kind) => message.request == *kind,
            Filter::Where(predicate) => predicate(message),
        }
    }
}

/// A message with its place in the queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<T> {
    /// Its sequence number: the order the queue accepted it in.
    pub seq: u64,
    /// The message.
    pub message: Message<T>,
}

/// Why a message was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The queue is full (a waiting sender: it still was at its deadline).
    Full,
    /// The queue is closed.
    Closed,
}

/// What the caller must do to a waiting token.
#[derive(Debug)]
pub enum Effect<T, W> {
    /// A waiting receiver gets this message. If it cannot be delivered (the
    /// receiver is gone), give it back with [`QueueCore::restore`].
    Deliver(W, Envelope<T>),
    /// A waiting receiver gets the end of the queue: it is closed and holds
    /// nothing for it.
    EndOfQueue(W),
    /// A waiting receiver's deadline passed.
    TimedOut(W),
    /// A waiting sender's message was accepted.
    Accepted(W),
    /// A waiting sender's message was refused; it comes back.
    Refused(W, Refusal, Message<T>),
    /// A joiner: every message accepted has been handled.
    Joined(W),
}

/// What a receive that may wait did (the token comes back unless it waits).
#[derive(Debug, PartialEq, Eq)]
pub enum RecvNow<T, W> {
    /// A message was there.
    Got(W, Envelope<T>),
    /// The queue is closed and holds nothing for this receiver.
    EndOfQueue(W),
    /// The receiver waits (its token is kept).
    Waiting,
}

/// What a send that may wait did (the token comes back unless it waits).
#[derive(Debug, PartialEq, Eq)]
pub enum SendNow<T, W> {
    /// The message was accepted.
    Accepted(W),
    /// The queue is full: the sender waits (its token and message are kept).
    Waiting,
    /// The message was refused and comes back.
    Refused(W, Refusal, Message<T>),
}

/// `task_done` was called more often than messages were received.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("task_done() called more times than messages were received")]
pub struct NothingToAcknowledge;

struct WaitingReceiver<T, W> {
    filter: Filter<T>,
    token: W,
    deadline: Option<Instant>,
}

struct WaitingSender<T, W> {
    message: Message<T>,
    token: W,
    deadline: Option<Instant>,
}

/// The queue: see the [module docs](self).
pub struct QueueCore<T, W> {
    capacity: Option<usize>,
    explicit_ack: bool,
    next_seq: u64,
    messages: BTreeMap<u64, Message<T>>,
    by_recipient: HashMap<Option<u32>, VecDeque<u64>>,
    by_sender: HashMap<u32, VecDeque<u64>>,
    by_kind: HashMap<Request, VecDeque<u64>>,
    receivers: VecDeque<WaitingReceiver<T, W>>,
    senders: VecDeque<WaitingSender<T, W>>,
    joiners: Vec<W>,
    closed: bool,
    /// Accepted and not yet handled (received, or acknowledged).
    unfinished: u64,
    /// Received and not yet acknowledged (explicit acknowledgement only).
    unacknowledged: u64,
}

impl<T, W> fmt::Debug for QueueCore<T, W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueCore")
            .field("len", &self.messages.len())
            .field("capacity", &self.capacity)
            .field("closed", &self.closed)
            .field("unfinished", &self.unfinished)
            .field("waiting_receivers", &self.receivers.len())
            .field("waiting_senders", &self.senders.len())
            .finish_non_exhaustive()
    }
}

/// The first live entry of an index, dropping those of taken messages.
fn head<K: Hash + Eq, T>(
    index: &mut HashMap<K, VecDeque<u64>>,
    key: &K,
    messages: &BTreeMap<u64, Message<T>>,
) -> Option<u64> {
    let entries = index.get_mut(key)?;
    while let Some(&seq) = entries.front() {
        if messages.contains_key(&seq) {
            return Some(seq);
        }
        entries.pop_front();
    }
    index.remove(key);
    None
}

/// Adds `seq` to an index, in order (at the back, unless restoring).
fn insert<K: Hash + Eq>(index: &mut HashMap<K, VecDeque<u64>>, key: K, seq: u64) {
    let entries = index.entry(key).or_default();
    match entries.back() {
        Some(&last) if last > seq => {
            let at = entries.partition_point(|&s| s < seq);
            entries.insert(at, seq);
        }
        _ => entries.push_back(seq),
    }
}

impl<T, W> QueueCore<T, W> {
    /// An empty queue holding at most `capacity` messages (`None`:
    /// unbounded). With `explicit_ack`, a message counts as handled for
    /// [`join`](Self::join_or_wait) once acknowledged with
    /// [`task_done`](Self::task_done), not when it is received.
    pub fn new(capacity: Option<usize>, explicit_ack: bool) -> Self {
        QueueCore {
            capacity,
            explicit_ack,
            next_seq: 0,
            messages: BTreeMap::new(),
            by_recipient: HashMap::new(),
            by_sender: HashMap::new(),
            by_kind: HashMap::new(),
            receivers: VecDeque::new(),
            senders: VecDeque::new(),
            joiners: Vec::new(),
            closed: false,
            unfinished: 0,
            unacknowledged: 0,
        }
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a new message would have to wait.
    pub fn is_full(&self) -> bool {
        self.capacity.is_some_and(|c| self.messages.len() >= c)
    }

    /// Messages accepted and not yet handled.
    pub fn unfinished(&self) -> u64 {
        self.unfinished
    }

    /// Tokens waiting (receivers, senders, joiners).
    pub fn waiting(&self) -> usize {
        self.receivers.len() + self.senders.len() + self.joiners.len()
    }

    /// The messages it holds, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Message<T>> {
        self.messages.values()
    }

    /// Accepts `message` now, or hands it back with the reason.
    pub fn try_send(
        &mut self,
        message: Message<T>,
        effects: &mut Vec<Effect<T, W>>,
    ) -> Result<(), (Refusal, Message<T>)> {
        if self.closed {
            return Err((Refusal::Closed, message));
        }
        // A message a waiting receiver takes at once is never held, so a
        // full queue still lets it through.
        if self.is_full() && !self.receivers.iter().any(|r| r.filter.matches(&message)) {
            return Err((Refusal::Full, message));
        }
        self.accept(message, effects);
        Ok(())
    }

    /// Accepts `message`, or keeps it with `token` until there is room
    /// (an [`Effect::Accepted`]), the deadline passes or the queue closes
    /// (an [`Effect::Refused`]).
    pub fn send_or_wait(
        &mut self,
        message: Message<T>,
        token: W,
        deadline: Option<Instant>,
        effects: &mut Vec<Effect<T, W>>,
    ) -> SendNow<T, W> {
        match self.try_send(message, effects) {
            Ok(()) => SendNow::Accepted(token),
            Err((Refusal::Full, message)) => {
                self.senders.push_back(WaitingSender {
                    message,
                    token,
                    deadline,
                });
                SendNow::Waiting
            }
            Err((refusal, message)) => SendNow::Refused(token, refusal, message),
        }
    }

    /// Takes the first message `filter` accepts: `Ok(None)` if there is
    /// none yet, `Err(EndOfQueue)` if there is none and the queue is closed.
    pub fn recv(
        &mut self,
        filter: &Filter<T>,
        effects: &mut Vec<Effect<T, W>>,
    ) -> Result<Option<Envelope<T>>, EndOfQueue> {
        match self.find(filter) {
            Some(seq) => Ok(Some(self.take(seq, effects))),
            None if self.closed => Err(EndOfQueue),
            None => Ok(None),
        }
    }

    /// The first message `filter` accepts, left in place.
    pub fn peek(&mut self, filter: &Filter<T>) -> Option<&Message<T>> {
        let seq = self.find(filter)?;
        self.messages.get(&seq)
    }

    /// Takes the first message `filter` accepts, or keeps `token` waiting
    /// for one (an [`Effect::Deliver`]), for the deadline
    /// ([`Effect::TimedOut`]) or the end of the queue
    /// ([`Effect::EndOfQueue`]).
    pub fn recv_or_wait(
        &mut self,
        filter: Filter<T>,
        token: W,
        deadline: Option<Instant>,
        effects: &mut Vec<Effect<T, W>>,
    ) -> RecvNow<T, W> {
        match self.recv(&filter, effects) {
            Ok(Some(envelope)) => RecvNow::Got(token, envelope),
            Err(EndOfQueue) => RecvNow::EndOfQueue(token),
            Ok(None) => {
                self.receivers.push_back(WaitingReceiver {
                    filter,
                    token,
                    deadline,
                });
                RecvNow::Waiting
            }
        }
    }

    /// Puts back a message that could not be delivered (its receiver was
    /// gone), at its place: as if it had never been received.
    pub fn restore(&mut self, envelope: Envelope<T>, effects: &mut Vec<Effect<T, W>>) {
        if self.explicit_ack {
            self.unacknowledged -= 1;
        } else {
            self.unfinished += 1;
        }
        self.place(envelope.seq, envelope.message, effects);
    }

    /// Acknowledges one received message (explicit acknowledgement).
    pub fn task_done(
        &mut self,
        effects: &mut Vec<Effect<T, W>>,
    ) -> Result<(), NothingToAcknowledge> {
        if !self.explicit_ack || self.unacknowledged == 0 {
            return Err(NothingToAcknowledge);
        }
        self.unacknowledged -= 1;
        self.unfinished -= 1;
        self.settle(effects);
        Ok(())
    }

    /// If every message accepted was handled, gives `token` back; if not,
    /// keeps it waiting for that ([`Effect::Joined`]).
    pub fn join_or_wait(&mut self, token: W) -> Option<W> {
        if self.unfinished == 0 {
            return Some(token);
        }
        self.joiners.push(token);
        None
    }

    /// Closes the queue: no message is accepted any more (waiting senders
    /// get theirs back), and receivers that find nothing for them get the
    /// end of the queue, at once or once they drained what is theirs.
    pub fn close(&mut self, effects: &mut Vec<Effect<T, W>>) {
        self.closed = true;
        // A waiting receiver has nothing in the queue for it.
        for receiver in self.receivers.drain(..) {
            effects.push(Effect::EndOfQueue(receiver.token));
        }
        for sender in self.senders.drain(..) {
            effects.push(Effect::Refused(
                sender.token,
                Refusal::Closed,
                sender.message,
            ));
        }
    }

    /// The earliest deadline of a waiting token.
    pub fn next_deadline(&self) -> Option<Instant> {
        let receivers = self.receivers.iter().filter_map(|r| r.deadline);
        let senders = self.senders.iter().filter_map(|s| s.deadline);
        receivers.chain(senders).min()
    }

    /// Ends the waits whose deadline is `now` or earlier.
    pub fn expire(&mut self, now: Instant, effects: &mut Vec<Effect<T, W>>) {
        let due = |deadline: Option<Instant>| deadline.is_some_and(|d| d <= now);
        let mut kept = VecDeque::with_capacity(self.receivers.len());
        for receiver in self.receivers.drain(..) {
            if due(receiver.deadline) {
                effects.push(Effect::TimedOut(receiver.token));
            } else {
                kept.push_back(receiver);
            }
        }
        self.receivers = kept;
        let mut kept = VecDeque::with_capacity(self.senders.len());
        for sender in self.senders.drain(..) {
            if due(sender.deadline) {
                effects.push(Effect::Refused(sender.token, Refusal::Full, sender.message));
            } else {
                kept.push_back(sender);
            }
        }
        self.senders = kept;
    }

    /// Forgets the waiting tokens `keep` refuses (their callers are gone)
    /// and hands them back, for the caller to dispose of (a hosted queue
    /// answers them once its lock is released); a forgotten sender's
    /// message is dropped, never accepted.
    pub fn forget(&mut self, mut keep: impl FnMut(&W) -> bool) -> Vec<W> {
        let mut gone = Vec::new();
        if self.waiting() == 0 {
            return gone;
        }
        let receivers = std::mem::take(&mut self.receivers);
        for receiver in receivers {
            if keep(&receiver.token) {
                self.receivers.push_back(receiver);
            } else {
                gone.push(receiver.token);
            }
        }
        let senders = std::mem::take(&mut self.senders);
        for sender in senders {
            if keep(&sender.token) {
                self.senders.push_back(sender);
            } else {
                gone.push(sender.token);
            }
        }
        let joiners = std::mem::take(&mut self.joiners);
        for joiner in joiners {
            if keep(&joiner) {
                self.joiners.push(joiner);
            } else {
                gone.push(joiner);
            }
        }
        gone
    }

    fn accept(&mut self, message: Message<T>, effects: &mut Vec<Effect<T, W>>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unfinished += 1;
        self.place(seq, message, effects);
    }

    /// Hands a message to the first waiting receiver that takes it, or
    /// stores it.
    fn place(&mut self, seq: u64, message: Message<T>, effects: &mut Vec<Effect<T, W>>) {
        if let Some(at) = self
            .receivers
            .iter()
            .position(|r| r.filter.matches(&message))
        {
            let receiver = self.receivers.remove(at).expect("a position found");
            self.received(effects);
            effects.push(Effect::Deliver(receiver.token, Envelope { seq, message }));
            return;
        }
        insert(&mut self.by_recipient, message.recipient, seq);
        insert(&mut self.by_sender, message.sender, seq);
        insert(&mut self.by_kind, message.request, seq);
        self.messages.insert(seq, message);
    }

    fn find(&mut self, filter: &Filter<T>) -> Option<u64> {
        let messages = &self.messages;
        match filter {
            Filter::Any => messages.keys().next().copied(),
            Filter::ForMe(pid) => {
                let mine = head(&mut self.by_recipient, &Some(*pid), messages);
                let anyone = head(&mut self.by_recipient, &None, messages);
                match (mine, anyone) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
            Filter::To(pid) => head(&mut self.by_recipient, &Some(*pid), messages),
            Filter::From(pid) => head(&mut self.by_sender, pid, messages),
            Filter::Kind(kind) => head(&mut self.by_kind, kind, messages),
            Filter::Where(predicate) => messages
                .iter()
                .find(|(_, message)| predicate(message))
                .map(|(&seq, _)| seq),
        }
    }

    fn take(&mut self, seq: u64, effects: &mut Vec<Effect<T, W>>) -> Envelope<T> {
        let message = self.messages.remove(&seq).expect("a message found");
        // Keep the indexes' heads live, so entries of taken messages do
        // not pile up behind an index nobody reads.
        head(&mut self.by_recipient, &message.recipient, &self.messages);
        head(&mut self.by_sender, &message.sender, &self.messages);
        head(&mut self.by_kind, &message.request, &self.messages);
        // Room for a waiting sender (accepted before this one counts as
        // received, so a joiner never sees a moment with nothing to do
        // while a sender was let in).
        while !self.is_full() {
            let Some(sender) = self.senders.pop_front() else {
                break;
            };
            effects.push(Effect::Accepted(sender.token));
            self.accept(sender.message, effects);
        }
        self.received(effects);
        Envelope { seq, message }
    }

    fn received(&mut self, effects: &mut Vec<Effect<T, W>>) {
        if self.explicit_ack {
            self.unacknowledged += 1;
        } else {
            self.unfinished -= 1;
            self.settle(effects);
        }
    }

    fn settle(&mut self, effects: &mut Vec<Effect<T, W>>) {
        if self.unfinished == 0 {
            effects.extend(self.joiners.drain(..).map(Effect::Joined));
        }
    }
}

/// The queue is closed and holds nothing for this receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the queue is closed and holds nothing more for this receiver")]
pub struct EndOfQueue;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Core = QueueCore<u32, usize>;

    fn message(request: Request, sender: u32, recipient: Option<u32>, data: u32) -> Message<u32> {
        Message {
            request,
            sender,
            recipient,
            data: Some(data),
        }
    }

    #[test]
    fn filtered_receive_leaves_foreign_messages_in_place_and_in_order() {
        let mut core = Core::new(None, false);
        let mut fx = Vec::new();
        core.try_send(message(Request::Do, 1, Some(10), 0), &mut fx)
            .unwrap();
        core.try_send(message(Request::Do, 1, Some(20), 1), &mut fx)
            .unwrap();
        core.try_send(message(Request::Do, 1, Some(10), 2), &mut fx)
            .unwrap();
        let got = core.recv(&Filter::ForMe(20), &mut fx).unwrap().unwrap();
        assert_eq!(got.message.data, Some(1));
        let left: Vec<_> = core.iter().cloned().collect();
        assert_eq!(
            left,
            [
                message(Request::Do, 1, Some(10), 0),
                message(Request::Do, 1, Some(10), 2)
            ]
        );
        assert_eq!(core.recv(&Filter::ForMe(20), &mut fx), Ok(None));
    }

    #[test]
    fn for_me_takes_the_older_of_mine_and_anyones() {
        let mut core = Core::new(None, false);
        let mut fx = Vec::new();
        core.try_send(message(Request::Do, 1, None, 0), &mut fx)
            .unwrap();
        core.try_send(message(Request::Do, 1, Some(5), 1), &mut fx)
            .unwrap();
        core.try_send(message(Request::Do, 1, None, 2), &mut fx)
            .unwrap();
        let order: Vec<_> = (0..3)
            .map(|_| {
                core.recv(&Filter::ForMe(5), &mut fx)
                    .unwrap()
                    .unwrap()
                    .message
                    .data
            })
            .collect();
        assert_eq!(order, [Some(0), Some(1), Some(2)]);
    }

    #[test]
    fn a_waiting_receiver_gets_only_its_message_however_many_come_first() {
        let mut core = Core::new(None, false);
        let mut fx = Vec::new();
        assert_eq!(
            core.recv_or_wait(Filter::To(9), 77, None, &mut fx),
            RecvNow::Waiting
        );
        for i in 0..1000 {
            core.try_send(message(Request::Do, 1, Some(8), i), &mut fx)
                .unwrap();
        }
        assert!(fx.is_empty());
        core.try_send(message(Request::Do, 1, Some(9), 5000), &mut fx)
            .unwrap();
        match fx.as_slice() {
            [Effect::Deliver(77, envelope)] => assert_eq!(envelope.message.data, Some(5000)),
            other => panic!("{other:?}"),
        }
        assert_eq!(core.len(), 1000);
    }

    #[test]
    fn full_queue_refuses_then_admits_waiting_sender_in_order() {
        let mut core = Core::new(Some(1), false);
        let mut fx = Vec::new();
        core.try_send(message(Request::Do, 1, None, 0), &mut fx)
            .unwrap();
        let refused = core.try_send(message(Request::Do, 1, None, 1), &mut fx);
        assert_eq!(
            refused,
            Err((Refusal::Full, message(Request::Do, 1, None, 1)))
        );
        let now = Instant::now();
        assert_eq!(
            core.send_or_wait(message(Request::Do, 1, None, 2), 3, Some(now), &mut fx),
            SendNow::Waiting
        );
        core.expire(now, &mut fx);
        assert!(
            matches!(fx.as_slice(), [Effect::Refused(3, Refusal::Full, m)] if m.data == Some(2))
        );
        fx.clear();
        core.send_or_wait(message(Request::Do, 1, None, 4), 5, None, &mut fx);
        let got = core.recv(&Filter::Any, &mut fx).unwrap().unwrap();
        assert_eq!(got.message.data, Some(0));
        assert!(matches!(fx.as_slice(), [Effect::Accepted(5)]));
        assert_eq!(core.iter().next().unwrap().data, Some(4));
    }

    #[test]
    fn close_drains_then_ends() {
        let mut core = Core::new(None, false);
        let mut fx = Vec::new();
        core.try_send(message(Request::Do, 1, Some(2), 0), &mut fx)
            .unwrap();
        core.recv_or_wait(Filter::To(3), 1, None, &mut fx);
        core.close(&mut fx);
        assert!(matches!(fx.as_slice(), [Effect::EndOfQueue(1)]));
        assert!(
            core.try_send(message(Request::Do, 1, None, 0), &mut fx)
                .is_err()
        );
        assert!(core.recv(&Filter::ForMe(2), &mut fx).unwrap().is_some());
        assert_eq!(core.recv(&Filter::ForMe(2), &mut fx), Err(EndOfQueue));
    }

    #[test]
    fn join_counts_restored_messages_once() {
        let mut core = Core::new(None, false);
        let mut fx = Vec::new();
        core.recv_or_wait(Filter::Any, 1, None, &mut fx);
        core.try_send(message(Request::Do, 1, None, 0), &mut fx)
            .unwrap();
        let Some(Effect::Deliver(_, envelope)) = fx.pop() else {
            panic!("delivered")
        };
        assert_eq!(core.unfinished(), 0);
        // The receiver was gone: the message goes back, unfinished again.
        core.restore(envelope, &mut fx);
        assert!(core.join_or_wait(9).is_none());
        core.recv(&Filter::Any, &mut fx).unwrap().unwrap();
        assert!(matches!(fx.as_slice(), [Effect::Joined(9)]));
        assert_eq!(core.join_or_wait(10), Some(10));
    }

    #[test]
    fn explicit_ack_joins_after_task_done() {
        let mut core = Core::new(None, true);
        let mut fx = Vec::new();
        core.try_send(message(Request::Do, 1, None, 0), &mut fx)
            .unwrap();
        core.recv(&Filter::Any, &mut fx).unwrap().unwrap();
        assert!(core.join_or_wait(1).is_none());
        core.task_done(&mut fx).unwrap();
        assert!(matches!(fx.as_slice(), [Effect::Joined(1)]));
        assert_eq!(core.task_done(&mut fx), Err(NothingToAcknowledge));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Send(Request, u32, Option<u32>, u32),
        Recv(u8, u32),
        Wait(u8, u32),
        Restore,
        Close,
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::Do),
            Just(Request::Finished),
            Just(Request::Die),
            (0..2u32).prop_map(Request::User)
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (request(), 0..3u32, proptest::option::of(0..3u32), any::<u32>())
                .prop_map(|(r, s, to, d)| Op::Send(r, s, to, d)),
            3 => (0..6u8, 0..3u32).prop_map(|(f, p)| Op::Recv(f, p)),
            1 => (0..6u8, 0..3u32).prop_map(|(f, p)| Op::Wait(f, p)),
            1 => Just(Op::Restore),
            1 => Just(Op::Close),
        ]
    }

    fn filter(kind: u8, p: u32) -> Filter<u32> {
        match kind {
            0 => Filter::Any,
            1 => Filter::ForMe(p),
            2 => Filter::To(p),
            3 => Filter::From(p),
            4 => Filter::Kind(if p == 0 {
                Request::Do
            } else {
                Request::User(p % 2)
            }),
            _ => Filter::Where(Box::new(move |m| m.data.is_some_and(|d| d % 3 == p % 3))),
        }
    }

    proptest! {
        /// The core against a Vec model: a receive takes the first match,
        /// everything else stays in order; waiting receivers get the first
        /// message they match, in the order they came; a restored message
        /// goes back to its place; capacity and join counts agree.
        #[test]
        fn core_matches_a_vec_model(ops in proptest::collection::vec(op(), 0..200), capacity in proptest::option::of(1..6usize)) {
            let mut core = Core::new(capacity, false);
            let mut model: Vec<(u64, Message<u32>)> = Vec::new();
            let mut waiting: Vec<(usize, u8, u32)> = Vec::new();
            let mut delivered: Vec<Envelope<u32>> = Vec::new();
            let mut next_seq = 0u64;
            let mut unfinished = 0u64;
            let mut token = 0usize;
            let mut closed = false;
            let mut fx = Vec::new();
            for op in ops {
                fx.clear();
                match op {
                    Op::Send(r, s, to, d) => {
                        let m = message(r, s, to, d);
                        let result = core.try_send(m.clone(), &mut fx);
                        if closed {
                            prop_assert_eq!(result, Err((Refusal::Closed, m)));
                            continue;
                        }
                        let taken = waiting.iter().any(|(_, f, p)| filter(*f, *p).matches(&m));
                        if capacity.is_some_and(|c| model.len() >= c) && !taken {
                            prop_assert_eq!(result, Err((Refusal::Full, m)));
                            continue;
                        }
                        prop_assert!(result.is_ok());
                        let seq = next_seq;
                        next_seq += 1;
                        unfinished += 1;
                        match waiting.iter().position(|(_, f, p)| filter(*f, *p).matches(&m)) {
                            Some(at) => {
                                let (t, _, _) = waiting.remove(at);
                                unfinished -= 1;
                                match fx.as_slice() {
                                    [Effect::Deliver(got, envelope)] => {
                                        prop_assert_eq!(*got, t);
                                        prop_assert_eq!(envelope.seq, seq);
                                        prop_assert_eq!(&envelope.message, &m);
                                        delivered.push(envelope.clone());
                                    }
                                    other => prop_assert!(false, "{:?}", other),
                                }
                            }
                            None => {
                                prop_assert!(fx.is_empty());
                                model.push((seq, m));
                            }
                        }
                    }
                    Op::Recv(f, p) => {
                        let expected = model.iter().position(|(_, m)| filter(f, p).matches(m));
                        let got = core.recv(&filter(f, p), &mut fx);
                        if closed && expected.is_none() {
                            prop_assert_eq!(got, Err(EndOfQueue));
                            continue;
                        }
                        let got = got.unwrap();
                        match expected {
                            Some(at) => {
                                let (seq, m) = model.remove(at);
                                unfinished -= 1;
                                let got = got.expect("a message");
                                prop_assert_eq!(got.seq, seq);
                                prop_assert_eq!(&got.message, &m);
                                delivered.push(got);
                            }
                            None => prop_assert!(got.is_none()),
                        }
                    }
                    Op::Wait(f, p) => {
                        token += 1;
                        match core.recv_or_wait(filter(f, p), token, None, &mut fx) {
                            RecvNow::Got(_, got) => {
                                let at = model.iter().position(|(_, m)| filter(f, p).matches(m));
                                let (seq, m) = model.remove(at.expect("the model has one"));
                                unfinished -= 1;
                                prop_assert_eq!(got.seq, seq);
                                prop_assert_eq!(&got.message, &m);
                                delivered.push(got);
                            }
                            RecvNow::Waiting => {
                                prop_assert!(!model.iter().any(|(_, m)| filter(f, p).matches(m)));
                                waiting.push((token, f, p));
                            }
                            RecvNow::EndOfQueue(_) => {
                                prop_assert!(closed);
                                prop_assert!(!model.iter().any(|(_, m)| filter(f, p).matches(m)));
                            }
                        }
                    }
                    Op::Close => {
                        core.close(&mut fx);
                        closed = true;
                        let ended: Vec<usize> = fx
                            .iter()
                            .map(|e| match e {
                                Effect::EndOfQueue(t) => Ok(*t),
                                other => Err(format!("{other:?}")),
                            })
                            .collect::<Result<_, _>>()
                            .map_err(TestCaseError::fail)?;
                        let expected: Vec<usize> = waiting.drain(..).map(|(t, _, _)| t).collect();
                        prop_assert_eq!(ended, expected);
                    }
                    Op::Restore => {
                        if let Some(envelope) = delivered.pop() {
                            unfinished += 1;
                            let m = envelope.message.clone();
                            let seq = envelope.seq;
                            core.restore(envelope, &mut fx);
                            match waiting.iter().position(|(_, f, p)| filter(*f, *p).matches(&m)) {
                                Some(at) => {
                                    let (t, _, _) = waiting.remove(at);
                                    unfinished -= 1;
                                    match fx.as_slice() {
                                        [Effect::Deliver(got, e)] => {
                                            prop_assert_eq!(*got, t);
                                            prop_assert_eq!(e.seq, seq);
                                            delivered.push(e.clone());
                                        }
                                        other => prop_assert!(false, "{:?}", other),
                                    }
                                }
                                None => {
                                    let at = model.partition_point(|(s, _)| *s < seq);
                                    model.insert(at, (seq, m));
                                }
                            }
                        }
                    }
                }
                let held: Vec<_> = core.iter().cloned().collect();
                let expected: Vec<_> = model.iter().map(|(_, m)| m.clone()).collect();
                prop_assert_eq!(held, expected);
                prop_assert_eq!(core.unfinished(), unfinished);
                prop_assert_eq!(core.len(), model.len());
            }
        }
    }
}
