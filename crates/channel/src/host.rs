//! The hosting side of queues: the process-wide table of queues of the
//! process that hosts them (a server started for them, or an existing one),
//! their waiting calls kept as deferred replies, and one timer thread for
//! the deadlines.
//!
//! Every operation runs on the serving thread of the calling connection,
//! never blocks there: a receive with nothing for it, a send to a full queue
//! and a join keep their [`Reply`] in the queue's core and return, and the
//! operation that unblocks them answers them. A delivery whose caller is
//! gone (`NobodyListening`) is put back in place, as if never received.
//!
//! Lock discipline: no reply is ever sent with a queue's lock (or the
//! table's, or the timer's) held. Operations collect what must be answered
//! under the lock (effects, forgotten waiters, deliveries) and send it once
//! the lock is released, so a peer that does not read its socket can hold
//! up at most the thread that writes to it, never the queue. The timer
//! thread holds nothing while it answers expired waits.
//!
//! Waiting receivers whose callers left or cancelled (an async receive
//! dropped before it got a message cancels its call) are *gone*: they are
//! forgotten, and a message is never handed to one; it stays in place for
//! the next receiver. What remains is at most once: a message handed to a
//! receiver whose cancel is still on its way to the host (the future was
//! dropped after the host checked, and before the reply reached it) is
//! received by nobody, exactly as one received by a consumer killed before
//! it read the reply.
//!
//! Queue ids are 128 random bits drawn from the OS (as object tickets are),
//! looked up in full: a handle is the capability to use a queue, and an id
//! cannot be guessed from the ids of other queues. A queue hosted in a
//! server started for it goes with that server (it stops once it serves
//! nobody); a queue hosted in an existing server stays in its table until
//! that process exits, because handles travel (serialized, or as an id to
//! programs of other builds) and the host cannot know when the last one is
//! gone. Closing such a queue releases its waiting calls, not its entry.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use processional_process::{Later, Reply, reply_later};

use crate::core::{Effect, Envelope, Filter, QueueCore, RecvNow, Refusal, SendNow};
use crate::wire::{
    Config, Pick, RecvArgs, RecvReply, SendArgs, SendReply, Status, Wait, WireMessage,
};
use serde_bytes::ByteBuf;

/// A waiting call.
enum Waiter {
    Recv {
        reply: Reply<RecvReply>,
        /// With the built-in filter of a batch receive: what else to take.
        more: Option<(Pick, u32)>,
    },
    Send(Reply<SendReply>),
    Join(Reply<Status>),
}

impl Waiter {
    /// Whether the call still wants its answer: its caller listens, and a
    /// receiver's caller did not cancel it (a dropped async receive does).
    /// Senders and joiners that cancel are still answered as usual.
    fn is_live(&self) -> bool {
        match self {
            Waiter::Recv { reply, .. } => reply.is_listening() && !reply.is_cancelled(),
            Waiter::Send(reply) => reply.is_listening(),
            Waiter::Join(reply) => reply.is_listening(),
        }
    }

    /// Disposes of a forgotten waiter (no lock held): a cancelled receiver
    /// still listening is told `TimedOut` (a value, so the caller's dropped
    /// task reports no error); one nobody listens to is only marked
    /// answered, nothing is written.
    fn dismiss(self) {
        match self {
            Waiter::Recv { reply, .. } => drop(reply.send(RecvReply::TimedOut)),
            Waiter::Send(reply) => drop(reply.send(SendReply::Full(Vec::new()))),
            Waiter::Join(reply) => drop(reply.send(Status::Ok(0))),
        }
    }
}

/// A queue's id on its host: 128 random bits.
pub(crate) type QueueId = u128;

type Core = QueueCore<ByteBuf, Waiter>;

struct Hosted {
    core: Mutex<Core>,
}

fn lock<X>(mutex: &Mutex<X>) -> MutexGuard<'_, X> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn queues() -> &'static Mutex<HashMap<QueueId, Arc<Hosted>>> {
    static QUEUES: OnceLock<Mutex<HashMap<QueueId, Arc<Hosted>>>> = OnceLock::new();
    QUEUES.get_or_init(Default::default)
}

fn find(queue: QueueId) -> Option<Arc<Hosted>> {
    lock(queues()).get(&queue).cloned()
}

/// Registers the queue's services in this process (once).
fn register_services() {
    use crate::wire::services;
    use processional_process::{func, register_deferred_service, register_service};
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // A name taken already means this process registered it: fine.
        let _ = register_deferred_service(
            services::SEND,
            func!(|a: SendArgs| -> Later<SendReply> { send(a) }),
        );
        let _ = register_deferred_service(
            services::RECV,
            func!(|a: RecvArgs| -> Later<RecvReply> { recv(a) }),
        );
        let _ = register_deferred_service(
            services::JOIN,
            func!(|q: QueueId| -> Later<Status> { join(q) }),
        );
        let _ = register_service(services::LEN, func!(|q: QueueId| len(q)));
        let _ = register_service(services::CLOSE, func!(|q: QueueId| close(q)));
        let _ = register_service(services::TASK_DONE, func!(|q: QueueId| task_done(q)));
        let _ = register_service(services::WAITING, func!(|q: QueueId| waiting(q)));
    });
}

/// Makes a queue here (registering the queue services first); its id, or
/// `None` if the OS gave no random bytes for one.
pub(crate) fn create(config: Config) -> Option<QueueId> {
    register_services();
    let capacity = config
        .capacity
        .map(|c| usize::try_from(c).unwrap_or(usize::MAX));
    let hosted = Arc::new(Hosted {
        core: Mutex::new(QueueCore::new(capacity, config.explicit_ack)),
    });
    let mut queues = lock(queues());
    loop {
        let mut bytes = [0u8; 16];
        processional_transport::random_bytes(&mut bytes).ok()?;
        let id = QueueId::from_le_bytes(bytes);
        // A collision of 128 random bits does not happen; a draw that
        // collides anyway is drawn again rather than sharing a queue.
        if let std::collections::hash_map::Entry::Vacant(slot) = queues.entry(id) {
            slot.insert(hosted);
            return Some(id);
        }
    }
}

fn deadline(wait: Wait) -> Option<Instant> {
    match wait {
        Wait::Millis(ms) => Some(Instant::now() + Duration::from_millis(ms)),
        Wait::Now | Wait::Forever => None,
    }
}

/// Carries out effects: answers waiting calls; deliveries nobody takes any
/// more go back into the queue (which may make more effects).
fn settle(hosted: &Hosted, effects: Vec<Effect<ByteBuf, Waiter>>) {
    settle_with(hosted, effects, Vec::new());
}

/// [`settle`], with waiters forgotten under the lock to dismiss too.
fn settle_with(hosted: &Hosted, mut effects: Vec<Effect<ByteBuf, Waiter>>, mut gone: Vec<Waiter>) {
    loop {
        for waiter in gone.drain(..) {
            waiter.dismiss();
        }
        if effects.is_empty() {
            return;
        }
        let mut undelivered = Vec::new();
        let mut deliveries = Vec::new();
        let mut answers = Vec::new();
        let mut joined = Vec::new();
        {
            let mut core = lock(&hosted.core);
            for effect in effects.drain(..) {
                match effect {
                    // A receiver that left or cancelled gets nothing: the
                    // message goes back in place (to the next receiver).
                    Effect::Deliver(waiter, first) if !waiter.is_live() => {
                        core.restore(first, &mut undelivered);
                        gone.push(waiter);
                    }
                    Effect::Deliver(Waiter::Recv { reply, more }, first) => {
                        let mut batch = vec![first];
                        if let Some((pick, max)) = more {
                            take_more(&mut core, pick, max, &mut batch, &mut undelivered);
                        }
                        deliveries.push((reply, batch));
                    }
                    // Only receivers receive.
                    Effect::Deliver(_, envelope) => core.restore(envelope, &mut undelivered),
                    Effect::Joined(joiner) => joined.push(joiner),
                    other => answers.push(other),
                }
            }
        }
        // Every write happens here, with no lock held.
        for other in answers {
            answer(other);
        }
        for (reply, batch) in deliveries {
            if reply.is_cancelled() {
                // Cancelled since the lock was released: checked again as
                // late as can be, to keep the at-most-once window small.
                let mut core = lock(&hosted.core);
                for envelope in batch {
                    core.restore(envelope, &mut undelivered);
                }
                gone.push(Waiter::Recv { reply, more: None });
                continue;
            }
            let seqs: Vec<u64> = batch.iter().map(|e| e.seq).collect();
            let messages: Vec<WireMessage> = batch.into_iter().map(|e| e.message).collect();
            if let Err(back) = reply.send(RecvReply::Got(messages)) {
                let RecvReply::Got(messages) = back.into_inner() else {
                    unreachable!("the value sent")
                };
                let mut core = lock(&hosted.core);
                for (seq, message) in seqs.into_iter().zip(messages) {
                    core.restore(Envelope { seq, message }, &mut undelivered);
                }
            }
        }
        // Joiners last: a delivery above that failed put its messages back,
        // so "every message was handled" may no longer hold. Asked again
        // under the lock, a joiner either is answered or waits again (and
        // the restored messages' handling answers it later).
        if !joined.is_empty() {
            let ready: Vec<Waiter> = {
                let mut core = lock(&hosted.core);
                joined
                    .into_iter()
                    .filter_map(|joiner| core.join_or_wait(joiner))
                    .collect()
            };
            for joiner in ready {
                answer(Effect::Joined(joiner));
            }
        }
        effects = undelivered;
    }
}

/// How many bytes of messages one batch receive takes at most (one message at
/// least, whatever its size): an answer fits in a frame (64 MiB), which
/// matters where it travels inline (TCP); a larger one would break the
/// connection after its messages left the queue.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// What a message weighs in a batch: its data, and its envelope (request,
/// sender, recipient: at most about 16 bytes encoded), so that a batch of
/// many empty messages is bounded too.
fn data_len(message: &WireMessage) -> usize {
    16 + message.data.as_ref().map_or(0, |data| data.len())
}

fn take_more(
    core: &mut Core,
    pick: Pick,
    max: u32,
    batch: &mut Vec<Envelope<ByteBuf>>,
    effects: &mut Vec<Effect<ByteBuf, Waiter>>,
) {
    let filter = pick.filter();
    let mut bytes: usize = batch.iter().map(|e| data_len(&e.message)).sum();
    while batch.len() < max as usize {
        // What does not fit stays in place, for the next receive.
        match core.peek(&filter) {
            Some(next) if bytes.saturating_add(data_len(next)) <= MAX_BATCH_BYTES => {}
            _ => break,
        }
        match core.recv(&filter, effects) {
            Ok(Some(envelope)) => {
                bytes += data_len(&envelope.message);
                batch.push(envelope);
            }
            _ => break,
        }
    }
}

/// Answers a waiting call that gets no message (no lock held).
fn answer(effect: Effect<ByteBuf, Waiter>) {
    // A caller that left is simply not answered.
    match effect {
        Effect::EndOfQueue(Waiter::Recv { reply, .. }) => drop(reply.send(RecvReply::Closed)),
        Effect::TimedOut(Waiter::Recv { reply, .. }) => drop(reply.send(RecvReply::TimedOut)),
        Effect::Accepted(Waiter::Send(reply)) => drop(reply.send(SendReply::Accepted)),
        Effect::Refused(Waiter::Send(reply), refusal, message) => {
            drop(reply.send(refused(refusal, vec![message])))
        }
        Effect::Joined(Waiter::Join(reply)) => drop(reply.send(Status::Ok(0))),
        // Tokens only ever wait for their own kind of answer.
        _ => {}
    }
}

/// Sends messages (a deferred call: a full queue keeps a single message
/// waiting for room, up to its deadline).
pub(crate) fn send(args: SendArgs) -> Later<SendReply> {
    let (reply, later) = reply_later();
    let Some(hosted) = find(args.queue) else {
        let _ = reply.send(SendReply::NoQueue(args.messages));
        return later;
    };
    let mut effects = Vec::new();
    let gone;
    let mut messages = args.messages.into_iter();
    let answer = {
        let mut core = lock(&hosted.core);
        // Receivers that left or cancelled neither take the message nor
        // make room for it in a full queue.
        gone = core.forget(Waiter::is_live);
        if messages.len() == 1 && args.wait != Wait::Now {
            let message = messages.next().expect("one message");
            let due = deadline(args.wait);
            match core.send_or_wait(message, Waiter::Send(reply), due, &mut effects) {
                SendNow::Accepted(waiter) => Some((waiter, SendReply::Accepted)),
                SendNow::Waiting => {
                    if let Some(due) = due {
                        timer().schedule(due, args.queue);
                    }
                    None
                }
                SendNow::Refused(waiter, refusal, message) => {
                    Some((waiter, refused(refusal, vec![message])))
                }
            }
        } else {
            let mut outcome = SendReply::Accepted;
            while let Some(message) = messages.next() {
                if let Err((refusal, message)) = core.try_send(message, &mut effects) {
                    let mut back = vec![message];
                    back.extend(messages.by_ref());
                    outcome = refused(refusal, back);
                }
            }
            Some((Waiter::Send(reply), outcome))
        }
    };
    if let Some((Waiter::Send(reply), outcome)) = answer {
        let _ = reply.send(outcome);
    }
    settle_with(&hosted, effects, gone);
    later
}

fn refused(refusal: Refusal, back: Vec<WireMessage>) -> SendReply {
    match refusal {
        Refusal::Full => SendReply::Full(back),
        Refusal::Closed => SendReply::Closed(back),
    }
}

/// Receives with a built-in filter (deferred: waits in the core for a
/// message, the deadline or the end of the queue).
pub(crate) fn recv(args: RecvArgs) -> Later<RecvReply> {
    let more = Some((args.pick, args.max.max(1)));
    recv_with(args.queue, args.pick.filter(), more, args.wait)
}

/// Receives the first message a shipped predicate accepts.
pub(crate) fn recv_where(queue: QueueId, filter: Filter<ByteBuf>, wait: Wait) -> Later<RecvReply> {
    recv_with(queue, filter, None, wait)
}

fn recv_with(
    queue: QueueId,
    filter: Filter<ByteBuf>,
    more: Option<(Pick, u32)>,
    wait: Wait,
) -> Later<RecvReply> {
    let (reply, later) = reply_later();
    let Some(hosted) = find(queue) else {
        let _ = reply.send(RecvReply::NoQueue);
        return later;
    };
    let mut effects = Vec::new();
    let gone;
    // What to answer at once, once the lock is released.
    let now = {
        let mut core = lock(&hosted.core);
        // Receivers whose callers left (a consumer killed while it waited)
        // or cancelled (an async receive dropped) go.
        gone = core.forget(Waiter::is_live);
        if wait == Wait::Now {
            match core.recv(&filter, &mut effects) {
                Ok(Some(envelope)) => Ok((reply, envelope)),
                Ok(None) => Err((reply, RecvReply::Empty)),
                Err(_) => Err((reply, RecvReply::Closed)),
            }
        } else {
            let due = deadline(wait);
            let waiter = Waiter::Recv { reply, more };
            match core.recv_or_wait(filter, waiter, due, &mut effects) {
                RecvNow::Got(Waiter::Recv { reply, .. }, envelope) => Ok((reply, envelope)),
                RecvNow::EndOfQueue(Waiter::Recv { reply, .. }) => Err((reply, RecvReply::Closed)),
                RecvNow::Waiting => {
                    if let Some(due) = due {
                        timer().schedule(due, queue);
                    }
                    drop(core);
                    settle_with(&hosted, effects, gone);
                    return later;
                }
                _ => unreachable!("the receiver's own token"),
            }
        }
    };
    match now {
        // Handed over through the same path as a waiting receiver.
        Ok((reply, first)) => {
            effects.insert(0, Effect::Deliver(Waiter::Recv { reply, more }, first))
        }
        Err((reply, nothing)) => drop(reply.send(nothing)),
    }
    settle_with(&hosted, effects, gone);
    later
}

/// How many messages the queue holds.
pub(crate) fn len(queue: QueueId) -> Status {
    match find(queue) {
        Some(hosted) => Status::Ok(lock(&hosted.core).len() as u64),
        None => Status::NoQueue,
    }
}

/// How many calls wait in the queue (receivers, senders, joiners), those
/// whose callers left (or, receivers, cancelled) forgotten first.
pub(crate) fn waiting(queue: QueueId) -> Status {
    match find(queue) {
        Some(hosted) => {
            let (gone, waiting) = {
                let mut core = lock(&hosted.core);
                let gone = core.forget(Waiter::is_live);
                (gone, core.waiting())
            };
            gone.into_iter().for_each(Waiter::dismiss);
            Status::Ok(waiting as u64)
        }
        None => Status::NoQueue,
    }
}

/// Waits (deferred) until every message sent was handled.
pub(crate) fn join(queue: QueueId) -> Later<Status> {
    let (reply, later) = reply_later();
    let Some(hosted) = find(queue) else {
        let _ = reply.send(Status::NoQueue);
        return later;
    };
    let (gone, now) = {
        let mut core = lock(&hosted.core);
        // Joiners whose callers left are dropped here, so they do not pile up.
        let gone = core.forget(Waiter::is_live);
        (gone, core.join_or_wait(Waiter::Join(reply)))
    };
    gone.into_iter().for_each(Waiter::dismiss);
    if let Some(Waiter::Join(reply)) = now {
        let _ = reply.send(Status::Ok(0));
    }
    later
}

/// Closes the queue: waiting receivers with nothing for them get the end
/// of the queue, waiting senders their message back.
pub(crate) fn close(queue: QueueId) -> Status {
    let Some(hosted) = find(queue) else {
        return Status::NoQueue;
    };
    let mut effects = Vec::new();
    lock(&hosted.core).close(&mut effects);
    settle(&hosted, effects);
    Status::Ok(0)
}

/// Acknowledges one received message (explicit acknowledgement).
pub(crate) fn task_done(queue: QueueId) -> Status {
    let Some(hosted) = find(queue) else {
        return Status::NoQueue;
    };
    let mut effects = Vec::new();
    let done = lock(&hosted.core).task_done(&mut effects);
    settle(&hosted, effects);
    match done {
        Ok(()) => Status::Ok(0),
        Err(_) => Status::NothingToAcknowledge,
    }
}

/// The deadlines of waiting calls, on one thread that sleeps until the
/// earliest (it does not wake while nothing waits with a deadline).
struct Timer {
    due: Mutex<BinaryHeap<Reverse<(Instant, QueueId)>>>,
    wake: Condvar,
}

fn timer() -> &'static Timer {
    static TIMER: OnceLock<&'static Timer> = OnceLock::new();
    TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            due: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("processional-queue-timer".into())
            .spawn(move || timer.run())
            .expect("cannot start the queue timer thread");
        timer
    })
}

impl Timer {
    fn schedule(&self, at: Instant, queue: QueueId) {
        let mut due = lock(&self.due);
        let earliest = due.peek().is_none_or(|Reverse((first, _))| at < *first);
        due.push(Reverse((at, queue)));
        if earliest {
            self.wake.notify_one();
        }
    }

    fn run(&self) {
        let mut due = lock(&self.due);
        loop {
            let now = Instant::now();
            match due.peek().copied() {
                None => due = self.wake.wait(due).unwrap_or_else(|p| p.into_inner()),
                Some(Reverse((at, queue))) if at <= now => {
                    due.pop();
                    drop(due);
                    if let Some(hosted) = find(queue) {
                        let mut effects = Vec::new();
                        lock(&hosted.core).expire(now, &mut effects);
                        settle(&hosted, effects);
                    }
                    due = lock(&self.due);
                }
                Some(Reverse((at, _))) => {
                    due = self
                        .wake
                        .wait_timeout(due, at - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}
