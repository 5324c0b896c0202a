//! [`SlaveThread`]: a thread that owns resources and runs orders in FIFO
//! order.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, ThreadId};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use processional_task::{
    Backoff, Call, CancelToken, Canceller, Completer, ExitReason, PanicReport, Result, Task,
    Termination, catch_panic,
};

use crate::bound::Bound;
use crate::identity;

/// Identifies slaves and the objects bound to them.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// What the slave's queue holds.
pub(crate) enum Work {
    /// A call of [`SlaveThread::schedule`], in its task's block (one
    /// allocation for both).
    Call(Call),
    /// Anything else.
    Order(Order),
}

/// Work for the slave other than a plain call: a call on a bound object, or
/// the creation or removal of one.
pub(crate) struct Order {
    /// The token of the call, cancelled by [`SlaveThread::terminate`] while
    /// the order runs.
    pub(crate) token: Option<CancelToken>,
    pub(crate) run: Box<dyn FnOnce(&Objects) + Send>,
}

/// A bound object, or why its construction failed.
pub(crate) type Object = std::result::Result<Rc<dyn Any>, PanicReport>;

/// The objects bound to one slave; lives on the slave's thread.
#[derive(Default)]
pub(crate) struct Objects {
    map: RefCell<HashMap<u64, Object>>,
}

impl Objects {
    pub(crate) fn insert(&self, id: u64, object: Object) {
        let replaced = self.map.borrow_mut().insert(id, object);
        drop_object(replaced);
    }

    pub(crate) fn get(&self, id: u64) -> Option<Object> {
        self.map.borrow().get(&id).cloned()
    }

    pub(crate) fn remove(&self, id: u64) {
        let removed = self.map.borrow_mut().remove(&id);
        drop_object(removed);
    }

    /// Drops every object, on this (the slave's) thread.
    fn clear(&self) {
        loop {
            let Some(id) = self.map.borrow().keys().next().copied() else {
                return;
            };
            self.remove(id);
        }
    }
}

/// Drops an object, reporting a panicking destructor instead of unwinding
/// into the slave's loop.
fn drop_object(object: Option<Object>) {
    if let Some(object) = object
        && let Err(error) = catch_panic(move || drop(object))
    {
        log::error!("processional: dropping an object bound to a slave thread failed: {error}");
    }
}

thread_local! {
    /// The slaves this thread serves, with their objects.
    static HOSTED: RefCell<Vec<(u64, Rc<Objects>)>> = const { RefCell::new(Vec::new()) };
}

/// The objects of slave `id`, if the current thread serves it.
pub(crate) fn hosted(id: u64) -> Option<Rc<Objects>> {
    HOSTED
        .try_with(|hosted| {
            hosted
                .borrow()
                .iter()
                .find(|(slave, _)| *slave == id)
                .map(|(_, objects)| objects.clone())
        })
        .ok()
        .flatten()
}

fn host(id: u64, objects: Rc<Objects>) {
    HOSTED.with(|hosted| hosted.borrow_mut().push((id, objects)));
}

fn unhost(id: u64) {
    let _ = HOSTED.try_with(|hosted| hosted.borrow_mut().retain(|(slave, _)| *slave != id));
}

/// Whether the slave still runs orders, and who waits for its end.
struct Exit {
    exited: bool,
    waiters: Vec<Completer<()>>,
}

/// What runs, for `terminate`: written by the slave's thread for every
/// order, read by `terminate`.
struct Running {
    aborted: bool,
    cancel: Option<Cancel>,
}

/// Cancels the running order.
enum Cancel {
    Call(Canceller),
    Token(CancelToken),
}

impl Cancel {
    fn cancel(&self) {
        match self {
            Cancel::Call(canceller) => canceller.cancel(),
            Cancel::Token(token) => token.cancel(),
        }
    }
}

/// The state shared by the handles and the thread of one slave.
struct SlaveState {
    id: u64,
    /// `None` once closed: orders are refused from then on.
    sender: RwLock<Option<Sender<Work>>>,
    /// A second receiver, for `abort` to drain the queue.
    queue: Receiver<Work>,
    /// On cache lines of its own, away from `sender`, which every post
    /// reads: the slave's thread locks it for every order.
    running: CacheLines<Mutex<Running>>,
    exit: Mutex<Exit>,
}

/// Keeps a value on cache lines of its own (two 64-byte lines: adjacent
/// lines are fetched together), so that threads writing other fields do not
/// slow down the thread using it.
#[repr(align(128))]
struct CacheLines<T>(T);

impl<T> std::ops::Deref for CacheLines<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

fn relock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics under these locks; a poisoned one is still consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SlaveState {
    fn new() -> (Arc<SlaveState>, Receiver<Work>) {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let state = Arc::new(SlaveState {
            id: next_id(),
            sender: RwLock::new(Some(sender)),
            queue: receiver.clone(),
            running: CacheLines(Mutex::new(Running {
                aborted: false,
                cancel: None,
            })),
            exit: Mutex::new(Exit {
                exited: false,
                waiters: Vec::new(),
            }),
        });
        (state, receiver)
    }

    /// Queues an order; if the slave is closed, drops it (which fails its
    /// task with [`Error::Stopped`](crate::Error::Stopped)).
    fn post(&self, order: Work) {
        let sender = self.sender.read().unwrap_or_else(PoisonError::into_inner);
        let refused = match &*sender {
            Some(sender) => sender.send(order).err().map(|error| error.into_inner()),
            None => Some(order),
        };
        drop(sender);
        drop(refused);
    }

    /// Refuses further orders; the queued ones still run.
    fn close_queue(&self) {
        let sender = self
            .sender
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(sender);
    }

    fn is_closed(&self) -> bool {
        self.sender
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    /// Fails every queued order with [`Error::Stopped`](crate::Error::Stopped); the running one
    /// finishes.
    fn abort(&self) {
        relock(&self.running).aborted = true;
        self.close_queue();
        for order in self.queue.try_iter() {
            drop(order);
        }
    }

    /// Runs one order on the slave's thread.
    ///
    /// The running order is recorded under the same lock that `terminate`
    /// takes to set `aborted`: either the order does not start, or
    /// `terminate` sees it and cancels it.
    fn execute(&self, objects: &Objects, work: Work) {
        let previous = {
            let mut running = relock(&self.running);
            if running.aborted {
                drop(running);
                drop(work);
                return;
            }
            let cancel = match &work {
                Work::Call(call) => Some(Cancel::Call(call.canceller())),
                Work::Order(order) => order.token.clone().map(Cancel::Token),
            };
            std::mem::replace(&mut running.cancel, cancel)
        };
        drop(previous);
        match work {
            // Forgotten before the task completes, while its block is still
            // in this thread's cache.
            Work::Call(call) => call.run_then(|| drop(relock(&self.running).cancel.take())),
            Work::Order(order) => (order.run)(objects),
        }
    }

    /// Called by the slave's thread when it stops serving: drops the objects
    /// there and completes the `close` tasks.
    fn finish(&self, objects: &Objects) {
        unhost(self.id);
        self.close_queue();
        for order in self.queue.try_iter() {
            drop(order);
        }
        objects.clear();
        let running = relock(&self.running).cancel.take();
        drop(running);
        let waiters = {
            let mut exit = relock(&self.exit);
            exit.exited = true;
            std::mem::take(&mut exit.waiters)
        };
        for waiter in waiters {
            waiter.complete(Ok(()));
        }
    }

    fn exit_task(&self) -> Task<()> {
        let mut exit = relock(&self.exit);
        if exit.exited {
            return Task::ready(Ok(()));
        }
        let (task, completer) = Task::pending();
        exit.waiters.push(completer);
        task
    }

    fn is_alive(&self) -> bool {
        !relock(&self.exit).exited
    }
}

/// The loop of a spawned slave thread.
fn serve(state: Arc<SlaveState>, orders: Receiver<Work>) {
    /// Stops the slave properly even if the loop unwinds (a panicking
    /// logger, say): its `close` tasks complete, its objects are dropped.
    struct Finish {
        state: Arc<SlaveState>,
        objects: Rc<Objects>,
    }
    impl Drop for Finish {
        fn drop(&mut self) {
            self.state.finish(&self.objects);
        }
    }
    let finish = Finish {
        state,
        objects: Rc::new(Objects::default()),
    };
    host(finish.state.id, finish.objects.clone());
    while let Some(order) = receive(&orders) {
        finish.state.execute(&finish.objects, order);
    }
}

/// The next order, waiting briefly without blocking first (orders often come
/// in quick succession); `None` once the slave is closed and drained.
fn receive(orders: &Receiver<Work>) -> Option<Work> {
    let mut backoff = Backoff::new();
    loop {
        match orders.try_recv() {
            Ok(order) => return Some(order),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if backoff.is_exhausted() => return orders.recv().ok(),
            Err(TryRecvError::Empty) => backoff.snooze(),
        }
    }
}

/// One handle's share of a slave: closes the queue when the last handle goes.
struct SlaveHandle {
    state: Arc<SlaveState>,
    thread_id: ThreadId,
    /// The operating system's id of the thread (`gettid`).
    tid: u32,
}

impl Drop for SlaveHandle {
    fn drop(&mut self) {
        self.state.close_queue();
    }
}

/// A thread that owns resources and runs orders one at a time, in the order
/// they were given.
///
/// - [`invoke`](Self::invoke) runs a function there and waits for its value;
///   [`schedule`](Self::schedule) returns a [`Task`] instead.
/// - [`wrap`](Self::wrap) creates an object *on* the slave thread and
///   returns a [`Bound`] handle to it: the object need not be `Send` (an
///   `Rc`, a `RefCell`, a GUI handle…), since it never leaves that thread.
/// - The handle is cheap to clone and can be shared between threads. When
///   the last handle (including those held by [`Bound`] objects) is dropped,
///   the thread runs the orders already queued, drops its objects and exits.
///   [`close`](Self::close) does the same on purpose; [`abort`](Self::abort)
///   fails the queued orders instead of running them.
/// - Once stopped, a slave refuses orders: their tasks fail at once with
///   [`Error::Stopped`](crate::Error::Stopped).
///
/// A panic in an order fails that order only; the slave keeps serving.
///
/// ```
/// use processional_thread::SlaveThread;
///
/// let slave = SlaveThread::new();
/// let counter = slave.wrap(|| std::rc::Rc::new(std::cell::Cell::new(0)));
/// counter.invoke(|c| c.set(c.get() + 1)).unwrap();
/// let value = counter.schedule(|c| c.get());
/// assert_eq!(value.wait().unwrap(), 1);
/// assert_eq!(slave.invoke(|| 2 + 2).unwrap(), 4);
/// ```
#[derive(Clone)]
pub struct SlaveThread {
    handle: Arc<SlaveHandle>,
}

impl SlaveThread {
    /// Starts a slave thread with default settings.
    ///
    /// # Panics
    ///
    /// If the operating system cannot start a thread (like
    /// [`std::thread::spawn`]); use [`SlaveThread::builder`] to handle that
    /// error.
    pub fn new() -> SlaveThread {
        match SlaveBuilder::new().spawn() {
            Ok(slave) => slave,
            Err(error) => panic!("cannot start a slave thread: {error}"),
        }
    }

    /// A builder to name the thread or choose its stack size.
    pub fn builder() -> SlaveBuilder {
        SlaveBuilder::new()
    }

    /// A slave served by the current thread (e.g. a GUI main loop) through the
    /// returned [`SlaveDriver`]: nothing runs until the driver is stepped.
    pub fn manual() -> (SlaveThread, SlaveDriver) {
        let (state, orders) = SlaveState::new();
        let objects = Rc::new(Objects::default());
        host(state.id, objects.clone());
        let slave = SlaveThread {
            handle: Arc::new(SlaveHandle {
                state: state.clone(),
                thread_id: thread::current().id(),
                tid: identity::current_tid(),
            }),
        };
        let driver = SlaveDriver {
            state,
            orders,
            objects,
            finished: Cell::new(false),
            _not_send: PhantomData,
        };
        (slave, driver)
    }

    fn state(&self) -> &SlaveState {
        &self.handle.state
    }

    pub(crate) fn id(&self) -> u64 {
        self.handle.state.id
    }

    pub(crate) fn post(&self, order: Order) {
        self.state().post(Work::Order(order));
    }

    /// Runs `f` on the slave thread after the orders queued before it, and
    /// waits for its value.
    ///
    /// Called from the slave thread itself (from inside an order, or by the
    /// thread driving a [manual](Self::manual) slave), `f` runs at once
    /// instead of deadlocking.
    pub fn invoke<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if hosted(self.id()).is_some() {
            return catch_panic(f);
        }
        self.schedule(f).wait()
    }

    /// Queues `f` to run on the slave thread after the orders queued before
    /// it, and returns its [`Task`]. On a stopped slave, the task has already
    /// failed with [`Error::Stopped`](crate::Error::Stopped).
    pub fn schedule<F, T>(&self, f: F) -> Task<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (task, call) = Task::with_call(f);
        self.state().post(Work::Call(call));
        task
    }

    /// Creates an object on the slave thread with `f` and returns a handle
    /// to it; see [`Bound`]. The object need not be `Send`.
    ///
    /// Construction is queued like any order (it runs at once when called
    /// from the slave thread); if `f` panics, every call on the handle fails
    /// with that panic.
    pub fn wrap<F, T>(&self, f: F) -> Bound<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: 'static,
    {
        Bound::create(self.clone(), f)
    }

    /// Stops accepting orders and returns a task that completes once the
    /// queued orders have run, the bound objects were dropped and the thread
    /// stopped serving.
    pub fn close(&self) -> Task<()> {
        self.state().close_queue();
        self.state().exit_task()
    }

    /// Stops accepting orders and fails every queued one with
    /// [`Error::Stopped`](crate::Error::Stopped); the running order, if any, finishes.
    pub fn abort(&self) {
        self.state().abort();
    }

    /// Stops the thread within `timeout`, and says how it ended.
    ///
    /// Cancels the running order (it stops at its next
    /// [`checkpoint`](crate::checkpoint)), fails the queued ones with
    /// [`Error::Stopped`](crate::Error::Stopped), and waits at most `timeout`
    /// for the thread to stop: `Termination::Graceful(ExitReason::Code(0))`
    /// if it did. A thread cannot be killed: one whose order ignores its
    /// token is left running, detached, and reported
    /// [`Termination::Unstoppable`].
    pub fn terminate(&self, timeout: Duration) -> Termination {
        let state = self.state();
        let running = {
            let mut running = relock(&state.running);
            running.aborted = true;
            running.cancel.take()
        };
        state.abort();
        if let Some(running) = running {
            running.cancel();
        }
        match self.close().wait_timeout(timeout) {
            Ok(_) => Termination::Graceful(ExitReason::Code(0)),
            Err(_) => Termination::Unstoppable,
        }
    }

    /// Whether the slave still serves orders (it may be closed and draining
    /// its queue).
    pub fn is_alive(&self) -> bool {
        self.state().is_alive()
    }

    /// Whether the slave refuses new orders (closed, aborted or stopped).
    pub fn is_closed(&self) -> bool {
        self.state().is_closed()
    }

    /// The thread that runs the orders.
    pub fn thread_id(&self) -> ThreadId {
        self.handle.thread_id
    }

    /// The process the thread runs in: this one.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// The operating system's id of the thread that runs the orders
    /// (`gettid`); `Some` always, where a slave process has none to give.
    pub fn tid(&self) -> Option<u32> {
        Some(self.handle.tid)
    }

    /// The host the thread runs on: this one.
    pub fn host(&self) -> &str {
        identity::host()
    }
}

impl Default for SlaveThread {
    fn default() -> Self {
        SlaveThread::new()
    }
}

impl fmt::Debug for SlaveThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlaveThread")
            .field("thread_id", &self.thread_id())
            .field("closed", &self.is_closed())
            .field("alive", &self.is_alive())
            .finish()
    }
}

/// Configures a [`SlaveThread`] before starting it.
///
/// ```
/// use processional_thread::SlaveThread;
///
/// let slave = SlaveThread::builder()
///     .name("indexer")
///     .stack_size(4 << 20)
///     .spawn()
///     .expect("a thread");
/// let name = slave.invoke(|| std::thread::current().name().map(str::to_owned)).unwrap();
/// assert_eq!(name.as_deref(), Some("indexer"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct SlaveBuilder {
    name: Option<String>,
    stack_size: Option<usize>,
}

impl SlaveBuilder {
    /// Default settings: named `processional-slave`, default stack size.
    pub fn new() -> Self {
        SlaveBuilder::default()
    }

    /// The thread's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The thread's stack size in bytes.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    /// Starts the slave thread.
    pub fn spawn(self) -> io::Result<SlaveThread> {
        let (state, orders) = SlaveState::new();
        let mut builder = thread::Builder::new()
            .name(self.name.unwrap_or_else(|| "processional-slave".to_owned()));
        if let Some(bytes) = self.stack_size {
            builder = builder.stack_size(bytes);
        }
        let served = state.clone();
        let (tid_sender, tid) = crossbeam_channel::bounded(1);
        let thread = builder.spawn(move || {
            let _ = tid_sender.send(identity::current_tid());
            serve(served, orders)
        })?;
        Ok(SlaveThread {
            handle: Arc::new(SlaveHandle {
                state,
                thread_id: thread.thread().id(),
                // The thread sends it before anything else; it can only
                // fail to if it could not start, which `spawn` reported.
                tid: tid.recv().unwrap_or(0),
            }),
        })
    }
}

/// Serves a [manual](SlaveThread::manual) slave from the thread that created
/// it; stays on that thread (it is not `Send`).
///
/// Dropping the driver stops the slave: queued orders fail with
/// [`Error::Stopped`](crate::Error::Stopped) and the bound objects are dropped.
///
/// Waiting on a task of this slave from the driving thread blocks forever
/// unless another thread closes it: step the driver instead, or use
/// [`SlaveThread::invoke`], which runs at once on this thread.
///
/// ```
/// use processional_thread::SlaveThread;
///
/// let (slave, driver) = SlaveThread::manual(); // served by this thread
/// let worker = std::thread::spawn(move || slave.schedule(|| 6 * 7));
/// let task = worker.join().unwrap(); // queued, not run yet
/// while !task.is_finished() {
///     driver.step(); // runs queued orders here, e.g. in a GUI loop
/// }
/// assert_eq!(task.wait().unwrap(), 42);
/// ```
pub struct SlaveDriver {
    state: Arc<SlaveState>,
    orders: Receiver<Work>,
    objects: Rc<Objects>,
    finished: Cell<bool>,
    _not_send: PhantomData<*const ()>,
}

impl SlaveDriver {
    /// Runs one queued order, if any; whether one ran. When the slave is
    /// closed and its queue is empty, stops it (completing its `close`
    /// tasks) and returns `false`.
    pub fn step(&self) -> bool {
        if self.finished.get() {
            return false;
        }
        match self.orders.try_recv() {
            Ok(order) => {
                self.state.execute(&self.objects, order);
                true
            }
            Err(TryRecvError::Empty) => false,
            Err(TryRecvError::Disconnected) => {
                self.finish();
                false
            }
        }
    }

    /// Runs the orders queued at the time of the call (not those they queue
    /// themselves); how many ran.
    pub fn run_pending(&self) -> usize {
        let queued = self.orders.len();
        let mut ran = 0;
        while ran < queued && self.step() {
            ran += 1;
        }
        // Closed first: then nothing can arrive any more.
        if !self.finished.get() && self.state.is_closed() && self.orders.is_empty() {
            self.finish();
        }
        ran
    }

    /// Runs orders as they come until the slave is closed (every handle
    /// dropped, or [`SlaveThread::close`]) and its queue is drained.
    pub fn run(&self) {
        if self.finished.get() {
            return;
        }
        while let Some(order) = receive(&self.orders) {
            self.state.execute(&self.objects, order);
        }
        self.finish();
    }

    /// Whether the slave has stopped (closed and drained, or aborted).
    pub fn is_finished(&self) -> bool {
        self.finished.get()
    }

    fn finish(&self) {
        if !self.finished.replace(true) {
            self.state.finish(&self.objects);
        }
    }
}

impl Drop for SlaveDriver {
    fn drop(&mut self) {
        if !self.finished.get() {
            self.state.abort();
            self.finish();
        }
    }
}

impl fmt::Debug for SlaveDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlaveDriver")
            .field("queued", &self.orders.len())
            .field("finished", &self.finished.get())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, unbounded};
    use processional_task::Error;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn runs_orders_in_fifo_order() {
        let slave = SlaveThread::new();
        let (sender, receiver) = unbounded();
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let sender = sender.clone();
                slave.schedule(move || sender.send(i).unwrap())
            })
            .collect();
        for task in tasks {
            task.wait().unwrap();
        }
        let seen: Vec<i32> = receiver.try_iter().collect();
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(
            slave.invoke(|| thread::current().id()).unwrap(),
            slave.thread_id()
        );
    }

    #[test]
    fn a_manual_slave_runs_nothing_before_step() {
        let (slave, driver) = SlaveThread::manual();
        let ran_on = Arc::new(Mutex::new(None));
        let record = ran_on.clone();
        let task = slave.schedule(move || {
            *record.lock().unwrap() = Some(thread::current().id());
            "done"
        });
        assert!(ran_on.lock().unwrap().is_none());
        assert!(!task.is_finished());
        // Still queued when `step` comes (it finds an order to run), and run
        // by `step` on this thread: no other thread ran it, before or since.
        assert!(driver.step());
        assert_eq!(*ran_on.lock().unwrap(), Some(thread::current().id()));
        assert_eq!(task.wait().unwrap(), "done");
        assert!(!driver.step());
        assert_eq!(slave.thread_id(), thread::current().id());
    }

    #[test]
    fn ten_thousand_panics_leave_the_slave_working() {
        let slave = SlaveThread::new();
        let tasks: Vec<Task<()>> = (0..10_000)
            .map(|i| slave.schedule(move || panic!("order {i} failed")))
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            let error = task.wait().unwrap_err();
            assert!(error.is_panic());
            assert_eq!(error.message(), Some(format!("order {i} failed").as_str()));
        }
        assert_eq!(slave.invoke(|| 1).unwrap(), 1);
        assert!(slave.is_alive());
    }

    /// Sends the id of the thread it is dropped on.
    struct DropProbe(Sender<ThreadId>);

    impl Drop for DropProbe {
        fn drop(&mut self) {
            let _ = self.0.send(thread::current().id());
        }
    }

    thread_local! {
        static EXIT_PROBE: RefCell<Option<DropProbe>> = const { RefCell::new(None) };
    }

    #[test]
    fn dropping_the_last_handle_runs_the_queue_then_stops_the_thread() {
        let slave = SlaveThread::new();
        let thread_id = slave.thread_id();
        let (exited, exit) = bounded(1);
        slave
            .invoke(move || EXIT_PROBE.with(|probe| *probe.borrow_mut() = Some(DropProbe(exited))))
            .unwrap();
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                slave.schedule(move || {
                    thread::sleep(Duration::from_millis(2));
                    i * 2
                })
            })
            .collect();
        let other = slave.clone();
        drop(slave);
        assert!(other.is_alive(), "a clone keeps the slave running");
        drop(other);
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.wait().unwrap(), i * 2);
        }
        assert_eq!(exit.recv_timeout(LONG).unwrap(), thread_id);
    }

    #[test]
    fn close_drains_the_queue_then_refuses_orders() {
        let slave = SlaveThread::new();
        let (release, gate) = bounded::<()>(0);
        let first = slave.schedule(move || gate.recv().unwrap());
        let second = slave.schedule(|| 2);
        let closed = slave.close();
        assert!(slave.is_closed());
        let refused = slave.schedule(|| 3);
        assert!(refused.is_finished());
        assert!(matches!(refused.wait(), Err(Error::Stopped)));
        assert!(matches!(slave.invoke(|| 4), Err(Error::Stopped)));
        let closed = closed.wait_timeout(Duration::from_millis(10)).unwrap_err();
        assert!(slave.is_alive());
        release.send(()).unwrap();
        first.wait().unwrap();
        assert_eq!(second.wait().unwrap(), 2);
        closed.wait().unwrap();
        assert!(!slave.is_alive());
        assert!(slave.close().is_finished());
    }

    #[test]
    fn abort_fails_the_queued_orders() {
        let slave = SlaveThread::new();
        let (started, running) = bounded(0);
        let (release, gate) = bounded::<()>(0);
        let first = slave.schedule(move || {
            started.send(()).unwrap();
            gate.recv().unwrap();
            1
        });
        let queued: Vec<_> = (0..5).map(|i| slave.schedule(move || i)).collect();
        running.recv_timeout(LONG).unwrap();
        slave.abort();
        for task in queued {
            assert!(matches!(task.wait(), Err(Error::Stopped)));
        }
        assert!(matches!(slave.schedule(|| 0).wait(), Err(Error::Stopped)));
        release.send(()).unwrap();
        assert_eq!(first.wait().unwrap(), 1, "the running order finishes");
        slave.close().wait().unwrap();
        assert!(!slave.is_alive());
    }

    #[test]
    fn terminate_cancels_the_running_order() {
        let slave = SlaveThread::new();
        let (started, running) = bounded(0);
        let looping = slave.schedule(move || -> Result<()> {
            started.send(()).unwrap();
            loop {
                crate::checkpoint()?;
                thread::sleep(Duration::from_millis(1));
            }
        });
        let queued = slave.schedule(|| ());
        running.recv_timeout(LONG).unwrap();
        assert_eq!(
            slave.terminate(LONG),
            Termination::Graceful(ExitReason::Code(0))
        );
        assert!(!slave.is_alive());
        assert!(matches!(looping.wait(), Ok(Err(Error::Cancelled))));
        assert!(matches!(queued.wait(), Err(Error::Stopped)));
    }

    #[test]
    fn cancelled_orders_stop_at_a_checkpoint_or_do_not_start() {
        let slave = SlaveThread::new();
        let (started, running) = bounded(0);
        let looping = slave.schedule(move || -> Result<u32> {
            started.send(()).unwrap();
            loop {
                crate::checkpoint()?;
                thread::sleep(Duration::from_millis(1));
            }
        });
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let queued = slave.schedule(move || flag.store(true, Ordering::SeqCst));
        queued.cancel();
        running.recv_timeout(LONG).unwrap();
        looping.cancel();
        assert!(matches!(looping.wait(), Ok(Err(Error::Cancelled))));
        assert!(matches!(queued.wait(), Err(Error::Cancelled)));
        assert!(!ran.load(Ordering::SeqCst));
        assert_eq!(slave.invoke(|| 5).unwrap(), 5);
    }

    #[test]
    fn invoke_from_the_slave_itself_runs_inline() {
        let slave = SlaveThread::new();
        let inner = slave.clone();
        let value = slave
            .invoke(move || {
                let nested = inner.clone();
                inner
                    .invoke(move || nested.invoke(|| 40).unwrap() + 1)
                    .unwrap()
                    + 1
            })
            .unwrap();
        assert_eq!(value, 42);
        // Inline panics are caught too.
        let inner = slave.clone();
        let error = slave
            .invoke(move || inner.invoke(|| panic!("inline failure")).unwrap_err())
            .unwrap();
        assert_eq!(error.message(), Some("inline failure"));
    }

    #[test]
    fn a_manual_slave_runs_invoke_inline_on_its_driving_thread() {
        let (slave, driver) = SlaveThread::manual();
        assert_eq!(slave.invoke(|| 9).unwrap(), 9);
        drop(driver);
        assert!(matches!(slave.invoke(|| 9), Err(Error::Stopped)));
    }

    #[test]
    fn manual_run_serves_until_closed() {
        let (handles, handed) = bounded(1);
        let driving = thread::spawn(move || {
            let (slave, driver) = SlaveThread::manual();
            handles.send(slave).unwrap();
            driver.run();
            assert!(driver.is_finished());
            assert!(!driver.step());
        });
        let slave: SlaveThread = handed.recv_timeout(LONG).unwrap();
        let tasks: Vec<_> = (0..50).map(|i| slave.schedule(move || i + 1)).collect();
        let closed = slave.close();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.wait().unwrap(), i + 1);
        }
        closed.wait().unwrap();
        assert!(!slave.is_alive());
        driving.join().unwrap();
    }

    #[test]
    fn run_pending_runs_what_was_queued() {
        let (slave, driver) = SlaveThread::manual();
        let count = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let count = count.clone();
                let requeue = slave.clone();
                slave.schedule(move || {
                    count.fetch_add(1, Ordering::SeqCst);
                    // Queued by an order: waits for the next round.
                    requeue.schedule(|| ()).detach();
                })
            })
            .collect();
        assert_eq!(driver.run_pending(), 3);
        assert_eq!(count.load(Ordering::SeqCst), 3);
        for task in tasks {
            task.wait().unwrap();
        }
        let closed = slave.close();
        assert!(!closed.is_finished());
        assert_eq!(driver.run_pending(), 3);
        assert!(driver.is_finished());
        closed.wait().unwrap();
    }

    #[test]
    fn dropping_a_manual_driver_fails_its_queue() {
        let (slave, driver) = SlaveThread::manual();
        let task = slave.schedule(|| 1);
        let closed = slave.close();
        drop(driver);
        assert!(matches!(task.wait(), Err(Error::Stopped)));
        closed.wait().unwrap();
        assert!(!slave.is_alive());
    }

    /// Waits (boundedly) until `count` orders are queued behind the running
    /// one.
    fn wait_until_queued(slave: &SlaveThread, count: usize) {
        let deadline = std::time::Instant::now() + LONG;
        while slave.state().queue.len() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "the order was never queued"
            );
            thread::yield_now();
        }
    }

    /// Panics when dropped outside an unwinding panic.
    struct PanicsOnDrop;

    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            if !thread::panicking() {
                panic!("an order's closure failed to drop 3e9f");
            }
        }
    }

    #[test]
    fn an_aborted_order_whose_closure_panics_on_drop_still_stops_its_task() {
        let slave = SlaveThread::new();
        let (started, running) = bounded(0);
        let (release, gate) = bounded::<()>(0);
        let first = slave.schedule(move || {
            started.send(()).unwrap();
            gate.recv().unwrap();
        });
        running.recv_timeout(LONG).unwrap();
        let guard = PanicsOnDrop;
        let queued = slave.schedule(move || {
            let _guard = &guard;
        });
        let behind = slave.schedule(|| 2);
        slave.abort();
        match queued.wait_timeout(LONG) {
            Ok(outcome) => assert!(matches!(outcome, Err(Error::Stopped))),
            Err(_) => panic!("the task of an aborted order never finished"),
        }
        assert!(matches!(behind.wait(), Err(Error::Stopped)));
        release.send(()).unwrap();
        first.wait().unwrap();
        slave.close().wait_timeout(LONG).unwrap().unwrap();
    }

    #[test]
    fn terminate_cancels_the_token_of_the_running_task() {
        let slave = SlaveThread::new();
        let (started, running) = bounded(0);
        let looping = slave.schedule(move || -> Result<()> {
            started.send(()).unwrap();
            loop {
                crate::checkpoint()?;
                thread::yield_now();
            }
        });
        // Registered on the task's side, before terminate.
        let (notified, notice) = bounded(1);
        looping
            .cancel_token()
            .on_cancel(Box::new(move || notified.send(()).unwrap()));
        running.recv_timeout(LONG).unwrap();
        assert_eq!(
            slave.terminate(LONG),
            Termination::Graceful(ExitReason::Code(0))
        );
        assert!(looping.cancel_token().is_cancelled());
        notice.recv_timeout(LONG).unwrap();
        assert!(matches!(looping.wait(), Ok(Err(Error::Cancelled))));
    }

    #[test]
    fn terminate_cancels_a_running_invoke() {
        let slave = SlaveThread::new();
        let (started, running) = bounded(0);
        let invoking = {
            let slave = slave.clone();
            thread::spawn(move || {
                slave.invoke(move || -> Result<()> {
                    started.send(()).unwrap();
                    loop {
                        crate::checkpoint()?;
                        thread::yield_now();
                    }
                })
            })
        };
        running.recv_timeout(LONG).unwrap();
        assert_eq!(
            slave.terminate(LONG),
            Termination::Graceful(ExitReason::Code(0))
        );
        assert!(matches!(
            invoking.join().unwrap(),
            Ok(Err(Error::Cancelled))
        ));
    }

    #[test]
    fn invoke_fails_when_the_slave_is_aborted_under_it() {
        let slave = SlaveThread::new();
        let (started, running) = bounded(0);
        let (release, gate) = bounded::<()>(0);
        let first = slave.schedule(move || {
            started.send(()).unwrap();
            gate.recv().unwrap();
        });
        running.recv_timeout(LONG).unwrap();
        let invoking = {
            let slave = slave.clone();
            thread::spawn(move || slave.invoke(|| 1))
        };
        wait_until_queued(&slave, 1);
        slave.abort();
        assert!(matches!(invoking.join().unwrap(), Err(Error::Stopped)));
        release.send(()).unwrap();
        first.wait().unwrap();
    }

    /// Counts its drops.
    struct Counted(Arc<AtomicUsize>);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Many threads schedule on one slave, waiting for some tasks and
    /// dropping the others unwaited: every order runs once, in each
    /// thread's order, and every value and closure is dropped once.
    #[test]
    fn many_schedulers_and_detached_tasks_lose_nothing() {
        const THREADS: usize = 8;
        const ORDERS: usize = 2_000;
        let slave = SlaveThread::new();
        let values = Arc::new(AtomicUsize::new(0));
        let closures = Arc::new(AtomicUsize::new(0));
        let schedulers: Vec<_> = (0..THREADS)
            .map(|t| {
                let slave = slave.clone();
                let values = values.clone();
                let closures = closures.clone();
                thread::spawn(move || {
                    let last = Arc::new(Mutex::new(None::<usize>));
                    let mut kept = Vec::new();
                    for i in 0..ORDERS {
                        let (values, captured, last) =
                            (values.clone(), Counted(closures.clone()), last.clone());
                        let task = slave.schedule(move || {
                            let _captured = captured;
                            let mut last = last.lock().unwrap();
                            assert!(last.is_none_or(|last| last < i), "FIFO per scheduler");
                            *last = Some(i);
                            Counted(values)
                        });
                        if (i + t) % 3 == 0 {
                            task.detach();
                        } else {
                            kept.push(task);
                        }
                    }
                    for task in kept {
                        drop(task.wait().expect("the order ran"));
                    }
                })
            })
            .collect();
        for scheduler in schedulers {
            scheduler.join().unwrap();
        }
        slave.close().wait_timeout(LONG).unwrap().unwrap();
        assert_eq!(values.load(Ordering::SeqCst), THREADS * ORDERS);
        assert_eq!(closures.load(Ordering::SeqCst), THREADS * ORDERS);
    }

    /// `terminate` races with threads that keep scheduling: every task
    /// finishes (with its value, `Stopped` or `Cancelled`), every closure
    /// is dropped once, and the slave stops.
    #[test]
    fn terminate_racing_with_schedule_loses_nothing() {
        const THREADS: usize = 6;
        for _round in 0..20 {
            let slave = SlaveThread::new();
            let closures = Arc::new(AtomicUsize::new(0));
            let scheduled = Arc::new(AtomicUsize::new(0));
            let (ready, go) = bounded::<()>(0);
            let schedulers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let slave = slave.clone();
                    let closures = closures.clone();
                    let scheduled = scheduled.clone();
                    let ready = ready.clone();
                    thread::spawn(move || {
                        drop(ready);
                        let mut kept = Vec::new();
                        for i in 0..500usize {
                            let captured = Counted(closures.clone());
                            let task = slave.schedule(move || -> Result<usize> {
                                let _captured = captured;
                                crate::checkpoint()?;
                                Ok(i)
                            });
                            scheduled.fetch_add(1, Ordering::SeqCst);
                            if (i + t) % 2 == 0 {
                                task.detach();
                            } else {
                                kept.push(task);
                            }
                        }
                        for task in kept {
                            match task.wait_timeout(LONG) {
                                Ok(Ok(Ok(_) | Err(Error::Cancelled))) => {}
                                Ok(Err(Error::Stopped | Error::Cancelled)) => {}
                                Ok(other) => panic!("unexpected outcome {other:?}"),
                                Err(_) => panic!("a task never finished"),
                            }
                        }
                    })
                })
                .collect();
            drop(ready);
            // Every scheduler has started once the channel disconnects.
            assert!(go.recv_timeout(LONG).is_err());
            let ending = slave.terminate(LONG);
            assert_eq!(ending, Termination::Graceful(ExitReason::Code(0)));
            for scheduler in schedulers {
                scheduler.join().unwrap();
            }
            assert!(!slave.is_alive());
            assert_eq!(
                closures.load(Ordering::SeqCst),
                scheduled.load(Ordering::SeqCst),
                "every closure dropped once"
            );
        }
    }

    #[test]
    fn tasks_of_a_slave_can_be_awaited() {
        let slave = SlaveThread::new();
        let task = slave.schedule(|| {
            thread::sleep(Duration::from_millis(20));
            20
        });
        let value = pollster::block_on(async move { task.await.unwrap() + 1 });
        assert_eq!(value, 21);
    }
}
