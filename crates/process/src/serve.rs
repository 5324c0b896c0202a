//! The serving side of a connection: run the peer's calls, answer them.
//!
//! One executor thread per connection both reads the socket and runs queued
//! calls, so a call costs no thread hand-off: read, run, write. While a
//! queued call runs long, the process-wide [watchdog](Watchdog) notices (it
//! ticks every few milliseconds while calls run) and lends a pooled thread
//! to keep reading that connection: cancellations, releases, pings and
//! `thread` calls are handled at once, further queued calls wait in the
//! connection's FIFO. While no call runs (or every running call has its
//! lent reader), the watchdog sleeps until one starts, and the lent reader
//! blocks in its reads: an idle process, or one in a long quiet call, does
//! not wake up.

use std::cell::Cell;
use std::collections::{BTreeSet, VecDeque};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use processional_proto::{
    Call, Message, ObjectId, Outcome, Payload, RemoteError, RemoteErrorKind, Reply, RunMode,
    ServiceCall, TaskId,
};
use processional_task::CancelToken;
use processional_transport::{
    Connection, ConnectionReader, ConnectionWriter, PendingFrame, Received, ShutdownHandle,
};

use crate::backlog::{Backlog, Cost, Limits};
use crate::codec;
use crate::context::{self, CallContext};
use crate::function::{self, Answer, IdMap};
use crate::objects::{ConnectionObjects, ObjectTable};
use crate::payload::{self, Incoming, Outgoing};
use crate::service;
use crate::sink::Flow;
use processional_shm::{Loan, transfer};

/// How often the watchdog looks for executors stuck in a long call, while
/// calls run. A call seen running at two ticks in a row gets a reader, so a
/// `thread` call, a `Cancel` or a `Ping` queued behind it waits two ticks at
/// most (it used to be 10 ms, so up to 20 ms; the watchdog sleeps when no
/// call runs, so a shorter tick costs nothing to an idle process).
const WATCHDOG_TICK: Duration = Duration::from_millis(2);

/// How many value segments this process keeps lent at most, over all its
/// connections, waiting for their callers' [`Message::Reclaim`] (see
/// [`LentValues`]).
const MAX_LENT_VALUES: usize = 256;

/// The value segments lent by every connection of this process, oldest
/// first, until their caller's [`Message::Reclaim`] returns them to the pool.
///
/// A caller says it is done ahead of its next frame, so an idle caller keeps
/// its last value's segment lent. What is kept is bounded like the pool's
/// idle memory: at most [`MAX_LENT_VALUES`] segments and the pool's
/// `max_idle_bytes` in all (the newest loan is kept whatever its size, as
/// the pool keeps its latest oversized segment); beyond that the oldest are
/// freed, not reused (their callers may still read them, from their own
/// mappings). A connection that ends frees its own.
#[derive(Default)]
struct LentValues {
    loans: VecDeque<LentValue>,
    bytes: usize,
}

struct LentValue {
    connection: u64,
    task: TaskId,
    loan: Loan,
}

impl LentValues {
    fn global() -> MutexGuard<'static, LentValues> {
        static LENT: OnceLock<Mutex<LentValues>> = OnceLock::new();
        lock(LENT.get_or_init(Mutex::default))
    }

    /// Keeps `loan` (within `max_bytes` in all, the newest aside); returns
    /// the loans it pushed out, to be freed.
    fn keep(&mut self, connection: u64, task: TaskId, loan: Loan, max_bytes: usize) -> Vec<Loan> {
        self.bytes += loan.len();
        self.loans.push_back(LentValue {
            connection,
            task,
            loan,
        });
        let mut evicted = Vec::new();
        while self.loans.len() > 1 && (self.loans.len() > MAX_LENT_VALUES || self.bytes > max_bytes)
        {
            if let Some(oldest) = self.loans.pop_front() {
                self.bytes -= oldest.loan.len();
                evicted.push(oldest.loan);
            }
        }
        evicted
    }

    /// Takes the loan of `task` on `connection` out, if it is kept.
    fn take(&mut self, connection: u64, task: TaskId) -> Option<Loan> {
        let index = self
            .loans
            .iter()
            .position(|lent| lent.connection == connection && lent.task == task)?;
        let lent = self.loans.remove(index)?;
        self.bytes -= lent.loan.len();
        Some(lent.loan)
    }

    /// Takes every loan of `connection` out.
    fn take_all(&mut self, connection: u64) -> Vec<Loan> {
        let (mine, others): (VecDeque<LentValue>, VecDeque<LentValue>) =
            std::mem::take(&mut self.loans)
                .into_iter()
                .partition(|lent| lent.connection == connection);
        self.loans = others;
        self.bytes = self.loans.iter().map(|lent| lent.loan.len()).sum();
        mine.into_iter().map(|lent| lent.loan).collect()
    }
}

/// How many bytes of frames may wait, per connection, for a peer that does
/// not read them (frames sent from threads that are not the connection's
/// own, such as deferred replies and stream items, never wait for the
/// socket), unless [`OUTBOUND_BUDGET_VAR`] says otherwise. A peer whose
/// backlog would grow past it is a slow peer: its connection is closed, and
/// whoever answers it then gets [`NobodyListening`](crate::NobodyListening).
pub const OUTBOUND_BUDGET: usize = 64 << 20;

/// The environment variable (of the serving process) that overrides
/// [`OUTBOUND_BUDGET`] (bytes).
pub const OUTBOUND_BUDGET_VAR: &str = "PROCESSIONAL_OUTBOUND_BUDGET";

fn outbound_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        std::env::var(OUTBOUND_BUDGET_VAR)
            .ok()
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(OUTBOUND_BUDGET)
    })
}

thread_local! {
    /// The connection this thread serves (its executor, or a `thread` call
    /// of it); 0 on any other thread.
    static SERVING: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` as a thread of connection `id` (see [`SERVING`]).
fn serving<R>(id: u64, f: impl FnOnce() -> R) -> R {
    let before = SERVING.with(|serving| serving.replace(id));
    let result = f();
    SERVING.with(|serving| serving.set(before));
    result
}

/// The frames waiting to be written to a connection, oldest first, and
/// whether someone holds the writer role.
///
/// Only the holder of the role writes to the socket, and it writes what is
/// queued before anything else, so frames leave in the order they were
/// sent. A thread of the connection itself (its executor, its `thread`
/// calls) takes the role and may block on the socket; any other thread
/// (one completing a deferred reply, a stream's producer) never does: it
/// writes what the socket takes at once and queues the rest, or queues the
/// whole frame when someone else writes, and a pooled flusher thread then
/// holds the role until the queue is empty.
#[derive(Default)]
struct Outbound {
    frames: VecDeque<PendingFrame>,
    /// What is left to write of `frames`.
    bytes: usize,
    writing: bool,
    /// How many threads wait for the role (on `outbound_changed`).
    waiting: usize,
}

/// How many quiet ticks in a row (no call started, none running without a
/// lent reader) the watchdog waits before it sleeps until a call starts (so
/// that calls in quick succession do not each have to wake it): 10 ms.
const WATCHDOG_LINGER_TICKS: u32 = 5;

/// How many releases may wait before their count is first checked against
/// the handles the peer holds (see [`Served::may_queue_release`]).
const RELEASES_CHECKED_FROM: usize = 4096;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Work the executor runs in FIFO order.
enum Job {
    /// A queued call, with the token that cancels it (counted in its
    /// connection's [`Backlog`] until it starts).
    Call(Call, Vec<OwnedFd>, CancelToken),
    /// Drop one handle of the peer's, once the `thread` calls read before
    /// it (those numbered below the second field) have decoded their
    /// arguments (see [`ThreadArguments`]).
    Release(ObjectId, u64),
}

/// The `thread` calls of a connection that may still have to decode their
/// arguments, and the releases read after them, held until they have.
///
/// A release travels in the FIFO of queued calls, so that a handle dropped
/// after a queued call that uses it never frees the object under that call.
/// A `thread` call decodes its arguments on a thread of its own, maybe
/// after waiting for its turn (`MAX_THREAD_CALLS`): a handle moved into it
/// is dropped, and its release sent, right behind it, so the release must
/// wait for the call to have found its object.
#[derive(Default)]
struct ThreadArguments {
    /// The number of the next `thread` call read.
    next: u64,
    /// The numbers of those that have not decoded their arguments yet.
    undecoded: BTreeSet<u64>,
    /// Releases waiting, in the order read, each with the number of the
    /// first `thread` call read after it.
    held: VecDeque<(ObjectId, u64)>,
}

impl ThreadArguments {
    /// Whether a release read before `thread` call `before` must wait: a
    /// call read before it has not decoded its arguments yet.
    fn must_wait(&self, before: u64) -> bool {
        self.undecoded.first().is_some_and(|&first| first < before)
    }

    /// Takes the held releases out that wait for no call any more.
    fn releasable(&mut self) -> Vec<ObjectId> {
        let mut ready = Vec::new();
        while let Some(&(object, before)) = self.held.front() {
            if self.must_wait(before) {
                break;
            }
            self.held.pop_front();
            ready.push(object);
        }
        ready
    }
}

/// A `thread` call on its way to a thread of its own. Dropped without
/// running (no thread could start for it), it refuses its call; either way
/// its connection counts it done.
struct ThreadCall {
    served: Arc<Served>,
    call: Option<(Call, Vec<OwnedFd>)>,
    number: u64,
}

impl ThreadCall {
    fn run(mut self) {
        if let Some((call, fds)) = self.call.take() {
            let served = &self.served;
            // It waits no more.
            served.backlog.release(Cost::of(&call.args, fds.len()));
            serving(served.id, || served.execute(call, fds));
        }
    }
}

impl Drop for ThreadCall {
    fn drop(&mut self) {
        let served = &self.served;
        if let Some((call, fds)) = self.call.take() {
            served.backlog.release(Cost::of(&call.args, fds.len()));
            drop(fds);
            let error = refusal(
                RemoteErrorKind::Other,
                "no thread could be started for this `thread` call".into(),
            );
            served.forget_call(call.task);
            let reply = Message::Reply(Reply {
                task: call.task,
                outcome: Outcome::Error(error),
            });
            // Never waits: this may run on a reader, inside a send, or for
            // another connection.
            served.send_frame(&reply, &[], false);
        }
        // However it ended (refused, cancelled before it started): its
        // arguments hold nothing any more.
        served.thread_decoded(self.number);
        let _guard = lock(&served.threads_lock);
        served.threads_running.fetch_sub(1, Ordering::AcqRel);
        served.threads_done.notify_all();
    }
}

/// A call read from the peer and not yet answered.
struct CallState {
    token: CancelToken,
    /// The caller's credit, for a call that streams items (made by the
    /// first `Credit` or by the stream's sink, whichever comes first).
    flow: Option<Arc<Flow>>,
    /// A `thread` call's number, until it has decoded its arguments (see
    /// [`ThreadArguments`]).
    thread: Option<u64>,
}

/// What a serving process does when a peer asks it to shut down.
pub(crate) type ShutdownHook = Arc<dyn Fn() + Send + Sync>;

/// Why serving a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// The peer closed the connection (or it broke).
    PeerClosed,
    /// The peer asked this process to shut down; it was acknowledged.
    Shutdown,
}

/// One connection being served.
pub(crate) struct Served {
    reader: Mutex<ConnectionReader>,
    writer: Mutex<ConnectionWriter>,
    queue: Mutex<VecDeque<Job>>,
    queue_changed: Condvar,
    /// Sequence number of the queued call running now; 0 when idle.
    busy: AtomicU64,
    calls_run: AtomicU64,
    /// The calls read and not yet answered (queued, running, or deferred).
    calls: Mutex<IdMap<TaskId, CallState>>,
    /// The calls read and not yet started (queued for the executor, or
    /// `thread` calls waiting for a slot), within their limits.
    backlog: Backlog,
    /// The releases read and not yet done (queued for the executor, or held
    /// for `thread` calls): see [`Served::may_queue_release`].
    releases_waiting: AtomicUsize,
    /// The `thread` calls yet to decode their arguments, and the releases
    /// waiting for them.
    thread_arguments: Mutex<ThreadArguments>,
    /// The objects this connection holds, in the table of its server.
    objects: Arc<ConnectionObjects>,
    end: OnceLock<End>,
    taking_over: AtomicBool,
    /// The peer asked for a shutdown (acknowledged once, however often it asks).
    shutdown_asked: AtomicBool,
    unix: bool,
    /// The peer is a data-only client: it may call services only.
    data_only: bool,
    on_shutdown: Option<ShutdownHook>,
    threads_running: AtomicUsize,
    threads_done: Condvar,
    threads_lock: Mutex<()>,
    /// Sinks waiting for credit: bumped (under the lock) when credit
    /// arrives, a stream is cancelled, the connection ends, or the reader
    /// is given up while someone waits.
    flow_epoch: Mutex<u64>,
    flow_changed: Condvar,
    flow_waiters: AtomicUsize,
    /// This connection's number in the process, for [`LentValues`].
    id: u64,
    /// Frames not yet written (see [`Outbound`]); never held across a
    /// write.
    outbound: Mutex<Outbound>,
    /// Notified when the writer role is given up.
    outbound_changed: Condvar,
    /// How many bytes may wait in `outbound`.
    budget: usize,
    /// Shuts the socket down while a writer may be blocked on it.
    closer: ShutdownHandle,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served").finish_non_exhaustive()
    }
}

impl Served {
    /// This connection's number in the process.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Serves `connection` (already authenticated) with the objects of
    /// `table`. `on_shutdown` runs once the peer's shutdown request has been
    /// acknowledged. A `data_only` peer may call services and nothing else
    /// (it runs another build, maybe, and its shutdown requests end only its
    /// own connection).
    pub(crate) fn new(
        connection: Connection,
        table: &Arc<ObjectTable>,
        on_shutdown: Option<ShutdownHook>,
        data_only: bool,
    ) -> Arc<Served> {
        let unix = connection.is_unix();
        let on_shutdown = on_shutdown.filter(|_| !data_only);
        let (reader, writer) = connection.split();
        let closer = writer.shutdown_handle();
        let served = Arc::new(Served {
            outbound: Mutex::default(),
            outbound_changed: Condvar::new(),
            budget: outbound_budget(),
            closer,
            unix,
            data_only,
            on_shutdown,
            reader: Mutex::new(reader),
            writer: Mutex::new(writer),
            queue: Mutex::new(VecDeque::new()),
            queue_changed: Condvar::new(),
            busy: AtomicU64::new(0),
            calls_run: AtomicU64::new(0),
            calls: Mutex::new(IdMap::default()),
            backlog: Backlog::new(Limits::global()),
            releases_waiting: AtomicUsize::new(0),
            thread_arguments: Mutex::default(),
            objects: Arc::new(table.connect()),
            end: OnceLock::new(),
            taking_over: AtomicBool::new(false),
            shutdown_asked: AtomicBool::new(false),
            threads_running: AtomicUsize::new(0),
            threads_done: Condvar::new(),
            threads_lock: Mutex::new(()),
            flow_epoch: Mutex::new(0),
            flow_changed: Condvar::new(),
            flow_waiters: AtomicUsize::new(0),
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(1);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
        });
        Watchdog::global().watch(&served);
        served
    }

    /// Runs the connection's queued calls on this thread until the peer leaves
    /// or asks for a shutdown. Queued calls not yet started when that happens
    /// are dropped (their caller is gone or asked for it).
    pub(crate) fn serve(self: &Arc<Self>) -> End {
        serving(self.id, || self.serve_jobs())
    }

    fn serve_jobs(self: &Arc<Self>) -> End {
        loop {
            match self.next_job() {
                Some(Job::Call(call, fds, token)) => {
                    self.backlog.release(Cost::of(&call.args, fds.len()));
                    let sequence = self.calls_run.fetch_add(1, Ordering::Relaxed) + 1;
                    // SeqCst: pairs with the watchdog's going to sleep (see
                    // `Watchdog::wake`).
                    self.busy.store(sequence, Ordering::SeqCst);
                    Watchdog::global().wake();
                    self.execute_with(call, fds, &token);
                    self.busy.store(0, Ordering::Release);
                }
                Some(Job::Release(object, before)) => self.release(object, before),
                None => break,
            }
        }
        self.end.get().copied().unwrap_or(End::PeerClosed)
    }

    /// Waits until every `thread` call of this connection has finished.
    pub(crate) fn wait_for_threads(&self) {
        // The count falls and `threads_done` is notified under
        // `threads_lock`: no wake-up can be missed, no timeout is needed.
        let mut guard = lock(&self.threads_lock);
        while self.threads_running.load(Ordering::Acquire) > 0 {
            guard = self
                .threads_done
                .wait(guard)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether serving this connection has ended (the peer left or asked
    /// for a shutdown): nobody listens for answers any more.
    pub(crate) fn ended(&self) -> bool {
        self.end.get().is_some()
    }

    /// Whether descriptors can travel on this connection.
    pub(crate) fn is_unix(&self) -> bool {
        self.unix
    }

    /// Forgets an unanswered call (its answer will never be sent).
    pub(crate) fn forget_call(&self, task: TaskId) {
        lock(&self.calls).remove(&task);
    }

    /// Answers call `task` with `outcome`; whether the reply was written.
    pub(crate) fn send_reply(
        self: &Arc<Self>,
        task: TaskId,
        outcome: Result<Outgoing, RemoteError>,
    ) -> bool {
        self.forget_call(task);
        if self.ended() {
            return false;
        }
        let (outcome, outgoing) = match outcome {
            // The payload moves into the message (no copy); the rest (the
            // descriptors, the loan) stays until the frame is written.
            Ok(mut outgoing) => {
                let payload = std::mem::replace(&mut outgoing.payload, Payload::Inline(Vec::new()));
                (Outcome::Value(payload), Some(outgoing))
            }
            Err(error) => (Outcome::Error(error), None),
        };
        let message = Message::Reply(Reply { task, outcome });
        let Some(mut outgoing) = outgoing else {
            return self.send_with_fds(&message, &[]);
        };
        // A value's segment is lent until the caller says it has read it
        // (`Reclaim`), then reused. It is recorded before the reply leaves,
        // so that the `Reclaim` cannot come first; the frame carries a
        // duplicate of its descriptor. A segment that cannot be recorded is
        // handed over: freed once the caller has read it, never reused.
        let lent = match outgoing.loan.as_ref().map(|loan| loan.try_clone_fd()) {
            Some(Ok(fd)) => outgoing.loan.take().map(|loan| (fd, loan)),
            _ => None,
        };
        let mut fds: Vec<BorrowedFd<'_>> = outgoing.transfers.iter().map(|fd| fd.as_fd()).collect();
        fds.extend(outgoing.loan.as_ref().map(|loan| loan.as_fd()));
        let sent = match lent {
            Some((fd, loan)) => {
                self.keep_lent_value(task, loan);
                fds.push(fd.as_fd());
                let sent = self.send_with_fds(&message, &fds);
                if !sent {
                    self.forget_lent_value(task);
                }
                sent
            }
            None => self.send_with_fds(&message, &fds),
        };
        if let Message::Reply(Reply {
            outcome: Outcome::Value(Payload::Inline(bytes)),
            ..
        }) = message
        {
            codec::recycle(bytes);
        }
        sent
    }

    /// Keeps the segment of `task`'s value until its caller has read it.
    fn keep_lent_value(&self, task: TaskId, loan: Loan) {
        let max_bytes = processional_shm::Pool::global().limits().max_idle_bytes;
        let evicted = LentValues::global().keep(self.id, task, loan, max_bytes);
        // Freed (outside the lock), not reused: their callers may still
        // read them.
        drop(evicted);
    }

    /// Drops the record of `task`'s value segment (freed, not reused).
    fn forget_lent_value(&self, task: TaskId) {
        let forgotten = LentValues::global().take(self.id, task);
        drop(forgotten);
    }

    /// The caller has read `task`'s value segment: back to the pool.
    fn reclaim_lent_value(&self, task: TaskId) {
        let reclaimed = LentValues::global().take(self.id, task).map(Loan::reclaim);
        drop(reclaimed);
    }

    fn finish(&self, end: End) {
        // The first end wins.
        let _ = self.end.set(end);
        // Wakes a thread waiting for the writer role (it looks at `end`
        // under this lock before it waits).
        self.notify_outbound(lock(&self.outbound));
        if end == End::PeerClosed {
            // The peer's handles are gone with it: free what only it held,
            // even while a long call of its still runs (a running call keeps
            // the objects it uses alive by itself).
            self.objects.release_all();
            // Its `thread` calls that have not started are dropped, as its
            // queued ones are: waiting for their turn behind the process's
            // bound, they would run for nobody while other clients' calls
            // waited behind them.
            for call in lock(&self.calls).values() {
                if call.thread.is_some() {
                    call.token.cancel();
                }
            }
        }
        // Nobody will reclaim these any more: free them.
        let lent = LentValues::global().take_all(self.id);
        drop(lent);
        self.notify_queue();
        self.notify_flows();
    }

    /// Wakes the executor if it waits for work or for the reader role (see
    /// `next_job`). Taking the queue's lock first orders this with an
    /// executor between its last look and its wait: it cannot be missed.
    fn notify_queue(&self) {
        drop(lock(&self.queue));
        self.queue_changed.notify_all();
    }

    /// The credit of call `task` (a fresh one if the call is not known).
    pub(crate) fn flow(&self, task: TaskId) -> Arc<Flow> {
        match lock(&self.calls).get_mut(&task) {
            Some(call) => call.flow.get_or_insert_with(Arc::default).clone(),
            None => Arc::default(),
        }
    }

    /// Wakes the sinks waiting for credit, if any (one atomic load if none).
    fn notify_flows(&self) {
        // SeqCst: pairs with the waiter's announcement in `wait_for_credit`
        // (either it sees the new state, or we see it waiting).
        if self.flow_waiters.load(Ordering::SeqCst) > 0 {
            *lock(&self.flow_epoch) += 1;
            self.flow_changed.notify_all();
        }
    }

    /// Gives the reader role up, waking sinks that wait for someone to read.
    fn release_reader(&self, reader: MutexGuard<'_, ConnectionReader>) {
        drop(reader);
        self.notify_flows();
    }

    /// Gives back the reader role a thread other than the executor held (a
    /// lent reader, a sink): the executor may wait for it.
    fn hand_back_reader(&self, reader: MutexGuard<'_, ConnectionReader>) {
        self.release_reader(reader);
        self.notify_queue();
    }

    /// Blocks until `ready()` holds. A sink that waits for credit reads the
    /// connection itself when nobody else does (the executor may be the one
    /// waiting), queueing what it reads for the executor, like the
    /// watchdog's reader; otherwise it sleeps until whoever reads wakes it.
    pub(crate) fn wait_for_credit(self: &Arc<Self>, ready: &dyn Fn() -> bool) {
        self.flow_waiters.fetch_add(1, Ordering::SeqCst);
        loop {
            if ready() || self.ended() {
                break;
            }
            // Read before trying the reader: a reader that gives it up after
            // our attempt bumps the epoch, so we cannot sleep through that.
            let epoch = *lock(&self.flow_epoch);
            if let Ok(mut reader) = self.reader.try_lock() {
                if ready() || self.ended() {
                    self.release_reader(reader);
                    break;
                }
                let received = reader.recv();
                match received {
                    Ok(received) => {
                        if let Some(job) = self.handle(received) {
                            lock(&self.queue).push_back(job);
                        }
                    }
                    Err(error) => self.on_read_error(error),
                }
                self.hand_back_reader(reader);
                continue;
            }
            let mut guard = lock(&self.flow_epoch);
            while *guard == epoch && !ready() && !self.ended() {
                guard = self
                    .flow_changed
                    .wait(guard)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        self.flow_waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Reads what has arrived, without blocking (a sink looking for credit).
    pub(crate) fn poll_incoming(self: &Arc<Self>) {
        self.drain();
    }

    fn next_job(self: &Arc<Self>) -> Option<Job> {
        loop {
            if self.ended() {
                return None;
            }
            if let Some(job) = lock(&self.queue).pop_front() {
                return Some(job);
            }
            match self.reader.try_lock() {
                Ok(mut reader) => {
                    // The watchdog's reader queues work while it holds the
                    // socket: look again now that we hold it, before blocking.
                    if let Some(job) = lock(&self.queue).pop_front() {
                        return Some(job);
                    }
                    let received = reader.recv();
                    self.release_reader(reader);
                    match received {
                        Ok(received) => {
                            if let Some(job) = self.handle(received) {
                                return Some(job);
                            }
                        }
                        Err(error) => self.on_read_error(error),
                    }
                }
                Err(_) => {
                    // A lent reader (or a sink) holds the socket: wait for it
                    // to queue something or give the socket back. Both are
                    // told under the queue's lock (`notify_queue`), so the
                    // looks below cannot miss them; no timeout is needed.
                    let queue = lock(&self.queue);
                    if queue.is_empty() && !self.ended() && self.reader.try_lock().is_err() {
                        drop(self.queue_changed.wait(queue));
                    }
                }
            }
        }
    }

    fn on_read_error(&self, error: processional_transport::Error) {
        match error {
            processional_transport::Error::Closed => {}
            other => log::debug!("processional: connection to the peer broke: {other}"),
        }
        self.finish(End::PeerClosed);
    }

    /// Handles one incoming message; returns the work it makes for the
    /// executor, if any.
    fn handle(self: &Arc<Self>, received: Received) -> Option<Job> {
        match received.message {
            Message::Call(call) if self.data_only => {
                self.refuse_now(
                    call.task,
                    RemoteErrorKind::InvalidFunction,
                    "a data-only client may call services only".into(),
                );
                None
            }
            Message::Call(call) => self.accept(call, received.fds),
            Message::ServiceCall(ServiceCall {
                task,
                service,
                args,
            }) => match service::lookup(&service) {
                Some(function) => self.accept(
                    Call {
                        task,
                        function,
                        mode: RunMode::Queued,
                        args,
                    },
                    received.fds,
                ),
                None => {
                    self.refuse_now(
                        task,
                        RemoteErrorKind::NotFound,
                        format!("this process has no service named {service:?}"),
                    );
                    None
                }
            },
            Message::Release { object } => self
                .may_queue_release()
                .then(|| Job::Release(object, lock(&self.thread_arguments).next)),
            Message::Cancel { task } => {
                if let Some(call) = lock(&self.calls).get(&task) {
                    call.token.cancel();
                }
                // A sink of that call may wait for credit.
                self.notify_flows();
                None
            }
            Message::Credit { task, items } => {
                // Credit for a call already answered is dropped here: the
                // table keeps only unanswered calls.
                if let Some(call) = lock(&self.calls).get_mut(&task) {
                    call.flow.get_or_insert_with(Arc::default).grant(items);
                }
                self.notify_flows();
                None
            }
            Message::Ping(value) => {
                // Never waits: this may run inside a write (draining).
                self.send_frame(&Message::Pong(value), &[], false);
                None
            }
            Message::Shutdown if self.shutdown_asked.swap(true, Ordering::AcqRel) => None,
            Message::Shutdown => {
                let acknowledge = |served: &Arc<Served>| {
                    // After what is queued; blocking: the peer asked.
                    served.send_frame(&Message::ShutdownAck, &[], true);
                    served.finish(End::Shutdown);
                    // Even while a long call still runs on the executor.
                    if let Some(on_shutdown) = &served.on_shutdown {
                        on_shutdown();
                    }
                };
                let idle = self.writer.try_lock().is_ok() && {
                    let out = lock(&self.outbound);
                    !out.writing && out.frames.is_empty()
                };
                if idle {
                    acknowledge(self);
                } else {
                    // We may be inside a send (draining while the socket
                    // buffer is full), or frames wait: acknowledge once they
                    // are written, on a thread of its own (`shutdown_asked`
                    // makes it one at most).
                    let served = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("processional-shutdown".into())
                        .spawn(move || acknowledge(&served));
                    if let Err(error) = spawned {
                        // No thread to wait for the writer: end without
                        // the acknowledgement (the peer sees the close).
                        log::warn!("processional: cannot acknowledge a shutdown: {error}");
                        self.finish(End::Shutdown);
                        if let Some(on_shutdown) = &self.on_shutdown {
                            on_shutdown();
                        }
                    }
                }
                None
            }
            Message::Reclaim { task } => {
                self.reclaim_lent_value(task);
                None
            }
            Message::Pong(_) => None,
            other => {
                let detail = format!("unexpected message from the peer: {}", other.name());
                log::debug!("processional: {detail}");
                let error = Message::Error(RemoteError {
                    kind: RemoteErrorKind::Other,
                    message: detail,
                    location: None,
                    backtrace: None,
                });
                // Never waits: this may run inside a write (draining).
                self.send_frame(&error, &[], false);
                self.finish(End::PeerClosed);
                None
            }
        }
    }

    /// Counts one more release read and not yet done, and checks the
    /// count, now and then, against the handles the peer holds: an honest
    /// peer never has more releases on their way than handles. A peer that
    /// has is cut off, its socket shut at once (it would grow the
    /// executor's queue without bound while a long call runs). Checked from
    /// [`RELEASES_CHECKED_FROM`] on, at each power of two, so the queue
    /// stays within twice what the peer holds, and the table's lock is not
    /// taken for each release.
    fn may_queue_release(&self) -> bool {
        let waiting = self.releases_waiting.fetch_add(1, Ordering::Relaxed) + 1;
        if waiting < RELEASES_CHECKED_FROM
            || !waiting.is_power_of_two()
            || waiting as u64 <= self.objects.held()
        {
            return true;
        }
        log::debug!("processional: a peer released {waiting} handles, more than it holds");
        self.cut_off();
        false
    }

    /// Drops one handle of the peer's now; the release is done.
    fn release_now(&self, object: ObjectId) {
        // Counted done first: the count never passes the handles held for
        // a peer that releases only what it holds, even between the two.
        self.releases_waiting.fetch_sub(1, Ordering::Relaxed);
        self.objects.release(object);
    }

    /// Answers call `task`, unrun, with an error of `kind` at once, never
    /// waiting (this may run on a reader inside a send): the reply goes
    /// through the outbound queue, whose budget closes the connection of a
    /// peer that does not read its answers. (Queued for the executor
    /// instead, refusals read while it waits for the socket would pile up
    /// in its FIFO unbounded.)
    fn refuse_now(self: &Arc<Self>, task: TaskId, kind: RemoteErrorKind, message: String) {
        let reply = Message::Reply(Reply {
            task,
            outcome: Outcome::Error(refusal(kind, message)),
        });
        self.send_frame(&reply, &[], false);
    }

    /// Takes a call in: queued for the executor, or run on a thread; or
    /// refused with an `Overloaded` error, its descriptors closed, when its
    /// connection's backlog is full.
    fn accept(self: &Arc<Self>, call: Call, fds: Vec<OwnedFd>) -> Option<Job> {
        if let Err(overload) = self.backlog.admit(Cost::of(&call.args, fds.len())) {
            drop(fds);
            let message = self.backlog.refusal_message(overload);
            log::debug!("processional: call {} {message}", call.task);
            self.refuse_now(call.task, RemoteErrorKind::Overloaded, message);
            return None;
        }
        let token = CancelToken::new();
        let thread = (call.mode == RunMode::Thread).then(|| {
            let mut arguments = lock(&self.thread_arguments);
            let number = arguments.next;
            arguments.next += 1;
            arguments.undecoded.insert(number);
            number
        });
        lock(&self.calls).insert(
            call.task,
            CallState {
                token: token.clone(),
                flow: None,
                thread,
            },
        );
        match thread {
            None => Some(Job::Call(call, fds, token)),
            Some(number) => {
                self.threads_running.fetch_add(1, Ordering::AcqRel);
                let thread_call = ThreadCall {
                    served: self.clone(),
                    call: Some((call, fds)),
                    number,
                };
                // At most `MAX_THREAD_CALLS` at once in the process; the
                // others wait their turn, holding no thread.
                crate::thread_calls::Bounded::global().submit(Box::new(move || thread_call.run()));
                None
            }
        }
    }

    /// Drops one handle of the peer's to `object`, or holds the release
    /// until the `thread` calls read before it (numbered below `before`)
    /// have decoded their arguments.
    fn release(&self, object: ObjectId, before: u64) {
        {
            let mut arguments = lock(&self.thread_arguments);
            // Behind others held, it waits its turn in order.
            if arguments.must_wait(before) || !arguments.held.is_empty() {
                arguments.held.push_back((object, before));
                return;
            }
        }
        self.release_now(object);
    }

    /// The call `task` has decoded its arguments (nothing if it is no
    /// `thread` call, or said so already).
    pub(crate) fn arguments_decoded(&self, task: TaskId) {
        let number = lock(&self.calls)
            .get_mut(&task)
            .and_then(|call| call.thread.take());
        if let Some(number) = number {
            self.thread_decoded(number);
        }
    }

    /// `thread` call `number` has decoded its arguments: the releases that
    /// waited only for it run.
    fn thread_decoded(&self, number: u64) {
        let ready = {
            let mut arguments = lock(&self.thread_arguments);
            if !arguments.undecoded.remove(&number) {
                return;
            }
            arguments.releasable()
        };
        for object in ready {
            self.release_now(object);
        }
    }

    /// Runs a call and answers it (unless it answers later), looking up
    /// its cancellation token.
    fn execute(self: &Arc<Self>, call: Call, fds: Vec<OwnedFd>) {
        let token = lock(&self.calls)
            .get(&call.task)
            .map(|call| call.token.clone())
            .unwrap_or_default();
        self.execute_with(call, fds, &token);
    }

    /// Runs a call cancelled by `token` and answers it (unless it answers
    /// later).
    fn execute_with(self: &Arc<Self>, call: Call, fds: Vec<OwnedFd>, token: &CancelToken) {
        let task = call.task;
        let result = if token.is_cancelled() {
            Err(RemoteError {
                kind: RemoteErrorKind::Cancelled,
                message: "the task was cancelled before it started".into(),
                location: None,
                backtrace: None,
            })
        } else {
            self.run(call, fds, token)
        };
        match result {
            Ok(Some(outgoing)) => self.send_reply(task, Ok(outgoing)),
            // Answered later, by whoever holds the call's replier.
            Ok(None) => true,
            Err(error) => self.send_reply(task, Err(error)),
        };
    }

    /// Runs a call; its value, or `None` when it is answered later.
    fn run(
        self: &Arc<Self>,
        call: Call,
        fds: Vec<OwnedFd>,
        token: &CancelToken,
    ) -> Result<Option<Outgoing>, RemoteError> {
        let entry = function::resolve(call.function)?;
        let (incoming, fds) =
            Incoming::resolve(call.args, fds).map_err(codec::remote_codec_error)?;
        let cx = CallContext {
            objects: &self.objects,
            unix: self.unix,
            served: self,
            task: call.task,
            token,
            thread: call.mode == RunMode::Thread,
        };
        // The entry runs the function under its own guard; this one catches
        // the rest of the peer's types' code (their `Deserialize`,
        // `Serialize` and `Drop`), which must not unwind this thread.
        let run = || {
            context::with_connection(&self.objects, || {
                processional_task::with_token(token, || {
                    crate::entry::catch(|| entry(&cx, &incoming)).and_then(|answer| answer)
                })
            })
        };
        let collect = || {
            if self.unix {
                transfer::collect_fds(run)
            } else {
                (run(), Vec::new())
            }
        };
        let (answer, transfers) = if fds.is_empty() {
            collect()
        } else {
            transfer::provide_fds(fds, collect)
        };
        match answer? {
            Answer::Now(bytes) => Ok(Some(payload::wrap_encoded(bytes, transfers, self.unix))),
            Answer::Later => Ok(None),
        }
    }

    /// Sends `message` (with `fds`) after what is queued; whether it was
    /// written or queued. A thread of this connection waits for room in
    /// the socket buffer; any other thread never waits (see [`Outbound`]).
    pub(crate) fn send_with_fds(
        self: &Arc<Self>,
        message: &Message,
        fds: &[BorrowedFd<'_>],
    ) -> bool {
        let own = SERVING.with(Cell::get) == self.id;
        self.send_frame(message, fds, own)
    }

    /// Sends `message` after what is queued, waiting for the socket when
    /// `block`, else queueing what does not fit at once.
    fn send_frame(
        self: &Arc<Self>,
        message: &Message,
        fds: &[BorrowedFd<'_>],
        block: bool,
    ) -> bool {
        if self.ended() {
            return false;
        }
        let mut out = lock(&self.outbound);
        if block {
            while out.writing && !self.ended() {
                out.waiting += 1;
                out = self
                    .outbound_changed
                    .wait(out)
                    .unwrap_or_else(|p| p.into_inner());
                out.waiting -= 1;
            }
            if self.ended() {
                return false;
            }
            out.writing = true;
            let backlog = !out.frames.is_empty();
            drop(out);
            if backlog && !self.write_queued(false) {
                return false;
            }
            let result = lock(&self.writer).send_with(message, fds, &mut || self.drain());
            if let Err(error) = result {
                self.write_failed(error);
                return false;
            }
            // Ours is written, whatever becomes of what others queued
            // meanwhile: the answer is "written" (a caller told otherwise
            // would, say, put a delivered message back in its queue).
            self.write_queued(true);
            return true;
        }
        if out.writing || !out.frames.is_empty() {
            return match PendingFrame::encode(message, fds, self.unix) {
                Ok(frame) => self.enqueue(out, frame, false),
                Err(error) => {
                    log::debug!("processional: cannot answer the peer: {error}");
                    false
                }
            };
        }
        out.writing = true;
        drop(out);
        // Nobody else writes now: the lock is free, the write never waits.
        let result = lock(&self.writer).try_send(message, fds);
        match result {
            Ok(None) => {
                // Ours is written, whatever becomes of what others queued.
                let out = lock(&self.outbound);
                self.hand_off(out);
                true
            }
            Ok(Some(rest)) => {
                // The rest of this frame goes before anything queued since.
                let out = lock(&self.outbound);
                self.enqueue(out, rest, true)
            }
            Err(error) => {
                self.write_failed(error);
                false
            }
        }
    }

    /// Queues `frame` (first when `front`: the rest of a frame partly
    /// written by the holder of the writer role), within the budget; the
    /// caller holds the role when `front`. Whether it was queued: past the
    /// budget the peer is too slow, and its connection is closed.
    fn enqueue(
        self: &Arc<Self>,
        mut out: MutexGuard<'_, Outbound>,
        frame: PendingFrame,
        front: bool,
    ) -> bool {
        // One frame, however large, may wait alone.
        if out.bytes > 0 && out.bytes + frame.len() > self.budget {
            let queued = out.bytes;
            if front {
                out.writing = false;
            }
            drop(out);
            self.close_slow_peer(queued);
            return false;
        }
        out.bytes += frame.len();
        if front {
            out.frames.push_front(frame);
            self.hand_off(out)
        } else {
            out.frames.push_back(frame);
            if !out.writing {
                // (Only after a failed flusher start.)
                return self.hand_off(out);
            }
            true
        }
    }

    /// Gives the writer role up, or, when frames wait, to a new flusher
    /// thread (which blocks on this connection's socket only). Whether the
    /// frames that wait will be written: without a flusher, the connection
    /// ends.
    fn hand_off(self: &Arc<Self>, mut out: MutexGuard<'_, Outbound>) -> bool {
        if out.frames.is_empty() {
            out.writing = false;
            self.notify_outbound(out);
            return true;
        }
        out.writing = true;
        drop(out);
        let served = self.clone();
        if let Err(error) = spawn_for(self.id, move || {
            served.write_queued(true);
        }) {
            // Nobody would ever write the queued frames, nor give the role
            // up: the connection ends, so that its calls fail instead.
            log::warn!("processional: closing a connection: cannot start its flusher: {error}");
            self.cut_off();
            let mut out = lock(&self.outbound);
            out.writing = false;
            self.notify_outbound(out);
            return false;
        }
        true
    }

    /// Writes the queued frames, in order, as the holder of the writer
    /// role, until none is left; then gives the role up when `release`.
    /// Whether the connection still works.
    fn write_queued(self: &Arc<Self>, release: bool) -> bool {
        loop {
            let mut out = lock(&self.outbound);
            if self.ended() {
                let dropped = std::mem::take(&mut out.frames);
                out.bytes = 0;
                out.writing = false;
                self.notify_outbound(out);
                drop(dropped);
                return false;
            }
            let Some(mut frame) = out.frames.pop_front() else {
                if release {
                    out.writing = false;
                    self.notify_outbound(out);
                }
                return true;
            };
            let len = frame.len();
            drop(out);
            let result = lock(&self.writer).send_pending(&mut frame, &mut || self.drain());
            {
                let mut out = lock(&self.outbound);
                out.bytes = out.bytes.saturating_sub(len);
            }
            if let Err(error) = result {
                self.write_failed(error);
                return false;
            }
        }
    }

    /// A write failed: the connection is over; gives the writer role up.
    fn write_failed(&self, error: processional_transport::Error) {
        log::debug!("processional: cannot answer the peer: {error}");
        self.finish(End::PeerClosed);
        let mut out = lock(&self.outbound);
        out.bytes = 0;
        out.writing = false;
        let dropped = std::mem::take(&mut out.frames);
        self.notify_outbound(out);
        drop(dropped);
    }

    /// Wakes the threads waiting for the writer role, if any (no system
    /// call when none waits, the common case).
    fn notify_outbound(&self, out: MutexGuard<'_, Outbound>) {
        let waiting = out.waiting > 0;
        drop(out);
        if waiting {
            self.outbound_changed.notify_all();
        }
    }

    /// The peer lets more than the budget wait unread: it is a slow peer
    /// (stopped, or hostile). Its connection is closed, so that whoever
    /// answers it never waits for it: its calls are cancelled, their
    /// repliers and sinks find nobody listening.
    fn close_slow_peer(&self, queued: usize) {
        log::warn!(
            "processional: closing the connection of a peer that does not read \
             ({queued} bytes wait for it, over the budget of {} bytes)",
            self.budget
        );
        self.cut_off();
    }

    /// Ends the connection: its calls are cancelled, the frames that wait
    /// dropped.
    fn cut_off(&self) {
        self.finish(End::PeerClosed);
        for call in lock(&self.calls).values() {
            call.token.cancel();
        }
        let dropped = {
            let mut out = lock(&self.outbound);
            out.bytes = 0;
            std::mem::take(&mut out.frames)
        };
        drop(dropped);
        // Ends a write blocked on the socket (the role is given up then),
        // and the reads.
        let _ = self.closer.shutdown();
    }

    /// Reads what has arrived without blocking; queues the work.
    fn drain(self: &Arc<Self>) {
        let Ok(mut reader) = self.reader.try_lock() else {
            return;
        };
        loop {
            match reader.try_recv() {
                Ok(Some(received)) => {
                    if let Some(job) = self.handle(received) {
                        lock(&self.queue).push_back(job);
                        self.queue_changed.notify_one();
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    self.on_read_error(error);
                    break;
                }
            }
        }
        self.hand_back_reader(reader);
    }

    /// Keeps reading the socket while the executor is stuck in a long call.
    ///
    /// It blocks in each read, without a timeout: no wake-up while the call
    /// runs and nothing arrives. So it notices the call's end only with the
    /// next message (queued for the executor, which then takes the socket
    /// back) or the connection's end; meanwhile the executor, done with the
    /// call, waits for that on the queue.
    fn take_over(self: &Arc<Self>) {
        while self.busy.load(Ordering::Acquire) != 0 && !self.ended() {
            let Ok(mut reader) = self.reader.try_lock() else {
                break;
            };
            match reader.recv() {
                // Queue the work before letting go of the socket (see
                // `next_job`).
                Ok(received) => {
                    if let Some(job) = self.handle(received) {
                        lock(&self.queue).push_back(job);
                        self.queue_changed.notify_one();
                    }
                }
                Err(error) => self.on_read_error(error),
            }
            self.hand_back_reader(reader);
        }
        // SeqCst: pairs with the watchdog's going to sleep, as `busy` does
        // (see `Watchdog::wake`). A call still running (its own code took
        // the socket, say) is unwatched again: the watchdog must look.
        self.taking_over.store(false, Ordering::SeqCst);
        if self.busy.load(Ordering::SeqCst) != 0 {
            Watchdog::global().wake();
        }
        self.notify_queue();
    }

    /// Whether a call runs on the executor with nobody reading the socket
    /// beside it: the watchdog has something to watch.
    fn runs_unwatched(&self) -> bool {
        self.busy.load(Ordering::SeqCst) != 0 && !self.taking_over.load(Ordering::SeqCst)
    }
}

/// Starts the watchdog thread now (a serving process calls this while it
/// waits for its first peer, so that the thread's creation costs no call).
pub(crate) fn start_watchdog() {
    Watchdog::global();
}

/// A connection the watchdog looks after, and what it saw there last tick.
struct Watched {
    served: Weak<Served>,
    /// The call running at the last tick (0: none).
    busy: u64,
    /// How many calls had started at the last tick.
    calls_run: u64,
}

/// The process-wide thread that notices executors stuck in long calls.
///
/// It ticks every [`WATCHDOG_TICK`] while calls start, or run without a lent
/// reader; after [`WATCHDOG_LINGER_TICKS`] quiet ticks it sleeps on a
/// condition variable until an executor starts a call, or a lent reader
/// gives up while its call still runs ([`wake`](Self::wake)). A call then
/// counts as stuck when the watchdog sees it running at two ticks in a row,
/// as before it ever slept. So a process whose long calls all have their
/// readers (a worker, a state process, a long task) does not tick.
struct Watchdog {
    watched: Mutex<Vec<Watched>>,
    /// Whether the watchdog sleeps until a call starts. Set under
    /// `sleeping_lock`; cleared by whoever wakes it, under the same lock.
    asleep: AtomicBool,
    sleeping_lock: Mutex<()>,
    woken: Condvar,
}

impl Watchdog {
    fn global() -> &'static Watchdog {
        static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();
        WATCHDOG.get_or_init(|| {
            std::thread::Builder::new()
                .name("processional-watchdog".into())
                .spawn(|| Watchdog::global().run())
                .expect("cannot start the processional watchdog thread");
            Watchdog {
                watched: Mutex::new(Vec::new()),
                asleep: AtomicBool::new(false),
                sleeping_lock: Mutex::new(()),
                woken: Condvar::new(),
            }
        })
    }

    fn watch(&self, served: &Arc<Served>) {
        let mut watched = lock(&self.watched);
        // A sleeping watchdog does not purge: do it here.
        watched.retain(|w| w.served.strong_count() > 0);
        watched.push(Watched {
            served: Arc::downgrade(served),
            busy: 0,
            calls_run: 0,
        });
    }

    /// An executor has just published a call in its `busy`, or a lent reader
    /// its giving up in `taking_over` (both with SeqCst): wakes the watchdog
    /// if it sleeps. The watchdog publishes `asleep` (SeqCst) before it
    /// looks at both once more, so at least one of the two sides sees the
    /// other's store: a call never runs unwatched.
    fn wake(&self) {
        if self.asleep.load(Ordering::SeqCst) {
            let _guard = lock(&self.sleeping_lock);
            if self.asleep.swap(false, Ordering::SeqCst) {
                self.woken.notify_one();
            }
        }
    }

    fn run(&self) {
        let mut quiet_ticks = 0;
        loop {
            std::thread::sleep(WATCHDOG_TICK);
            if self.tick() {
                quiet_ticks = 0;
            } else {
                quiet_ticks += 1;
                if quiet_ticks >= WATCHDOG_LINGER_TICKS {
                    self.sleep_until_a_call_starts();
                    quiet_ticks = 0;
                }
            }
        }
    }

    /// Looks at every connection once: lends a reader to those stuck in the
    /// same call since the last tick. Whether any call started, or ran
    /// without a lent reader.
    fn tick(&self) -> bool {
        let mut active = false;
        let mut stuck = Vec::new();
        lock(&self.watched).retain_mut(|watched| {
            let Some(served) = watched.served.upgrade() else {
                return false;
            };
            let busy = served.busy.load(Ordering::Acquire);
            let calls_run = served.calls_run.load(Ordering::Relaxed);
            if calls_run != watched.calls_run || served.runs_unwatched() {
                active = true;
            }
            if busy != 0 && busy == watched.busy && !served.taking_over.swap(true, Ordering::AcqRel)
            {
                stuck.push(served.clone());
            }
            watched.busy = busy;
            watched.calls_run = calls_run;
            !served.ended()
        });
        for served in stuck {
            let lent = served.clone();
            if spawn_for(served.id, move || lent.take_over()).is_err() {
                // No reader lent this tick: the next one tries again.
                served.taking_over.store(false, Ordering::SeqCst);
            }
        }
        active
    }

    /// Sleeps until an executor starts a call (returns at once if one runs).
    fn sleep_until_a_call_starts(&self) {
        let mut guard = lock(&self.sleeping_lock);
        self.asleep.store(true, Ordering::SeqCst);
        // A call may have started (or lost its lent reader) before `asleep`
        // was visible to the thread that did it, which then did not wake
        // us: look once more.
        let running = lock(&self.watched).iter().any(|watched| {
            watched
                .served
                .upgrade()
                .is_some_and(|served| served.runs_unwatched())
        });
        if running {
            self.asleep.store(false, Ordering::SeqCst);
            return;
        }
        while self.asleep.load(Ordering::SeqCst) {
            guard = self.woken.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Runs `f` on a pooled thread for connection `id`; an error (and `f`
/// dropped unrun) if no thread could start.
fn spawn_for(id: u64, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    #[cfg(test)]
    if tests::spawn_fails_for(id) {
        return Err(std::io::Error::other("no thread can start (test)"));
    }
    let _ = id;
    processional_thread::Builder::new().spawn(f).map(drop)
}

/// An error answering a call that was not run.
fn refusal(kind: RemoteErrorKind, message: String) -> RemoteError {
    RemoteError {
        kind,
        message,
        location: None,
        backtrace: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Instant;

    use processional_proto::FunctionRef;
    use processional_shm::{Pool, PoolLimits};

    use super::*;

    /// The bound on every wait of these tests (never reached unless broken).
    const PATIENCE: Duration = Duration::from_secs(30);

    /// The connections whose threads cannot start, and how many starts
    /// failed for each.
    fn failing() -> MutexGuard<'static, HashMap<u64, usize>> {
        static FAILING: OnceLock<Mutex<HashMap<u64, usize>>> = OnceLock::new();
        lock(FAILING.get_or_init(Mutex::default))
    }

    /// Whether starting a thread for connection `id` fails (counted).
    pub(super) fn spawn_fails_for(id: u64) -> bool {
        failing().get_mut(&id).map(|count| *count += 1).is_some()
    }

    fn failed_spawns(id: u64) -> usize {
        failing().get(&id).copied().unwrap_or(0)
    }

    /// A connection served here, and the peer's end of it.
    fn served_pair() -> (Arc<Served>, Connection) {
        let (ours, theirs) = Connection::pair().unwrap();
        (Served::new(ours, &ObjectTable::new(), None, false), theirs)
    }

    fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while !condition() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Before, a lent reader whose thread could not start left
    /// `taking_over` set: the watchdog never lent that connection a reader
    /// again, so while its calls ran, its `Cancel`s, pings and `thread`
    /// calls waited for them (for ever, for a call that waits for one).
    #[test]
    fn a_lent_reader_that_cannot_start_is_lent_at_a_later_tick() {
        let (served, mut peer) = served_pair();
        failing().insert(served.id(), 0);
        // A call runs on the executor, as far as the watchdog can tell.
        served.busy.store(1, Ordering::SeqCst);
        Watchdog::global().wake();
        assert!(
            wait_until(|| failed_spawns(served.id()) >= 2),
            "the watchdog tried once, then never again"
        );
        failing().remove(&served.id());
        peer.send(&Message::Ping(7)).unwrap();
        let pong = peer.recv_timeout(PATIENCE).unwrap().expect("a pong");
        assert!(
            matches!(pong.message, Message::Pong(7)),
            "{:?}",
            pong.message
        );
        served.busy.store(0, Ordering::SeqCst);
    }

    /// Before, a flusher that could not start kept the writer role taken
    /// with frames queued: nobody wrote them, and every thread of the
    /// connection that sent next waited for the role for ever.
    #[test]
    fn a_flusher_that_cannot_start_ends_the_connection() {
        let (served, _peer) = served_pair();
        failing().insert(served.id(), 0);
        // From a thread that is not the connection's own, a frame larger
        // than the socket's buffer: written in part, the rest left to a
        // flusher.
        let item = Message::Item {
            task: 1,
            payload: Payload::Inline(vec![0; 16 << 20]),
        };
        let sent = served.send_with_fds(&item, &[]);
        assert_eq!(failed_spawns(served.id()), 1, "the flusher was to start");
        assert!(!sent, "the frame is not written");
        assert!(served.ended(), "the connection ended");
        let own = serving(served.id(), || served.send_with_fds(&Message::Pong(1), &[]));
        assert!(
            !own,
            "a thread of the connection does not wait for the role"
        );
        failing().remove(&served.id());
    }

    /// A `thread` call that could get no thread of its own (dropped unrun
    /// by the bound on them) is refused at once, and its connection counts
    /// it done. Before, it was never answered, and `wait_for_threads`
    /// waited for it for ever.
    #[test]
    fn a_thread_call_dropped_unrun_is_refused() {
        let (served, mut peer) = served_pair();
        served.threads_running.fetch_add(1, Ordering::AcqRel);
        let call = Call {
            task: 9,
            function: FunctionRef {
                offset: 0,
                signature: 0,
            },
            mode: RunMode::Thread,
            args: Payload::Inline(Vec::new()),
        };
        drop(ThreadCall {
            served: served.clone(),
            call: Some((call, Vec::new())),
            number: 0,
        });
        served.wait_for_threads();
        let reply = peer.recv_timeout(PATIENCE).unwrap().expect("an answer");
        let Message::Reply(Reply {
            task: 9,
            outcome: Outcome::Error(error),
        }) = reply.message
        else {
            panic!("expected a refusal, got {:?}", reply.message);
        };
        assert_eq!(error.kind, RemoteErrorKind::Other, "{error:?}");
    }

    #[test]
    fn lent_values_are_bounded_in_count_and_bytes() {
        let pool = Pool::new(PoolLimits::default());
        let loan = |len: usize| pool.take(len).unwrap().lend();
        let mut lent = LentValues::default();
        let mut evicted = 0;
        for task in 0..(MAX_LENT_VALUES as u64 + 10) {
            evicted += lent.keep(1, task, loan(100), usize::MAX).len();
        }
        assert_eq!((lent.loans.len(), evicted), (MAX_LENT_VALUES, 10));
        assert!(lent.take(1, 0).is_none(), "the oldest went first");
        assert!(lent.take(1, 10).is_some());
        assert!(lent.take(2, 11).is_none(), "another connection's task");
        let mine = lent.take_all(1);
        assert_eq!(
            (mine.len(), lent.loans.len(), lent.bytes),
            (MAX_LENT_VALUES - 1, 0, 0)
        );

        // Bytes: the newest stays whatever its size, older ones make room.
        assert!(lent.keep(1, 1, loan(1000), 1500).is_empty());
        assert_eq!(lent.keep(2, 2, loan(1000), 1500).len(), 1);
        assert_eq!(lent.keep(2, 3, loan(5000), 1500).len(), 1);
        assert_eq!((lent.loans.len(), lent.bytes), (1, 5000));
        assert!(lent.take(2, 3).is_some_and(|loan| loan.len() == 5000));
    }
}
