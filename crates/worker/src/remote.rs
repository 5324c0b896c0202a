//! Remote workers: the server side ([`Hosted`], a child process the server
//! starts for each worker, and the calls that forward a worker's work to
//! it), the client side (`start_hosted`), and [`spawn_server`].
//!
//! A remote-worker server is any processional server: everything a worker
//! needs there is shipped as functions of this crate, which the server has
//! because it is the same build. The server starts one slave of its own per
//! worker and keeps it in a `Remote<Hosted>`; forcing a worker terminates
//! only that child, and the child dies with the server.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use processional_process::{
    ClientBuilder, Func, Later, Remote, ServerBuilder, SlaveProcess, func, reply_later,
};
use processional_task::{ExitReason, Task, Termination};
use processional_transport::{Address, Key};
use serde::{Deserialize, Serialize};

use crate::error::WorkerError;
use crate::host::{AnySlot, Data, batch_func, shot_func, slot_func};
use crate::job::{BatchOut, Failure, ShotOut, Slot};

/// In a remote-worker server: the child process started for one worker,
/// and the worker's kept state there.
pub(crate) struct Hosted {
    child: SlaveProcess,
    slot: Option<AnySlot>,
}

impl std::fmt::Debug for Hosted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosted")
            .field("child", &self.child)
            .finish_non_exhaustive()
    }
}

impl Hosted {
    /// The child's handle.
    pub(crate) fn child(&self) -> &SlaveProcess {
        &self.child
    }

    /// The kept state's handle, if it is a `Slot<S>`.
    pub(crate) fn slot<S: 'static>(&self) -> Option<&Remote<Slot<S>>> {
        self.slot.as_ref()?.downcast_ref()
    }

    /// In the server: starts the child.
    pub(crate) fn start() -> Hosted {
        match processional_process::slave() {
            Ok(child) => {
                stop_workers_on_sigterm();
                lock(&HOSTED).push(child.clone());
                Hosted { child, slot: None }
            }
            // Answered to the client as the failure of its `wrap`.
            Err(error) => panic!("the server cannot start a worker process: {error}"),
        }
    }
}

impl Drop for Hosted {
    fn drop(&mut self) {
        let pid = self.child.pid();
        lock(&HOSTED).retain(|child| child.pid() != pid);
        // A context keeps its workers' processes only while they are used.
        crate::context::forget_child(pid);
    }
}

/// In a server: every worker process it runs, so that stopping the server
/// stops them first.
static HOSTED: Mutex<Vec<SlaveProcess>> = Mutex::new(Vec::new());

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// In a server: terminates every worker process, in parallel, within
/// `timeout` each (asked, then SIGTERM, then SIGKILL).
fn stop_hosted(timeout: Duration) -> usize {
    let children = std::mem::take(&mut *lock(&HOSTED));
    std::thread::scope(|scope| {
        for child in &children {
            scope.spawn(move || child.terminate(timeout));
        }
    });
    children.len()
}

/// The keys of the servers [`spawn_server`] started, by address, for the
/// workers of this process that connect to them.
static KEYS: Mutex<Vec<(String, Key)>> = Mutex::new(Vec::new());

/// Makes the remote workers of this process use `key` for the server at
/// `address` (one that [`spawn_server`] did not start, e.g. a program run
/// with `PROCESSIONAL_SERVE`); without it they look for the key as
/// `client()` does (`PROCESSIONAL_KEY`, `PROCESSIONAL_KEY_FILE`, a key file
/// beside a unix socket).
pub fn remember_key(address: &Address, key: Key) {
    let address = address.to_string();
    let mut keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
    keys.retain(|(known, _)| *known != address);
    keys.push((address, key));
}

fn known_key(address: &str) -> Option<Key> {
    lock(&KEYS)
        .iter()
        .find(|(known, _)| known == address)
        .map(|(_, key)| key.clone())
}

/// Connects to the server at `address` and has it start this worker's
/// child: the connection, the child's handle, its pid and its host.
pub(crate) fn start_hosted(
    address: &Address,
    context: Option<&str>,
) -> Result<(SlaveProcess, Remote<Hosted>, u32, String), WorkerError> {
    let connection = connect(address)?;
    let hosted = match context {
        None => connection.wrap(func!(Hosted::start))?,
        Some(id) => connection.wrap_with(id.to_owned(), func!(crate::context::start_in_context))?,
    };
    let (pid, host) = hosted.invoke(func!(|h: &mut Hosted| (
        h.child.pid(),
        h.child.host().to_owned()
    )))?;
    Ok((connection, hosted, pid, host))
}

/// [`Termination`] as it crosses processes.
#[derive(Serialize, Deserialize)]
enum Ended {
    Graceful(Reason),
    Terminated(Reason),
    Killed(Reason),
    Unstoppable,
    Unknown,
}

#[derive(Serialize, Deserialize)]
enum Reason {
    Code(i32),
    Signal(i32),
    Unknown,
}

impl From<ExitReason> for Reason {
    fn from(reason: ExitReason) -> Self {
        match reason {
            ExitReason::Code(code) => Reason::Code(code),
            ExitReason::Signal(signal) => Reason::Signal(signal),
            ExitReason::Unknown => Reason::Unknown,
        }
    }
}

impl From<Reason> for ExitReason {
    fn from(reason: Reason) -> Self {
        match reason {
            Reason::Code(code) => ExitReason::Code(code),
            Reason::Signal(signal) => ExitReason::Signal(signal),
            Reason::Unknown => ExitReason::Unknown,
        }
    }
}

impl From<Termination> for Ended {
    fn from(termination: Termination) -> Self {
        match termination {
            Termination::Graceful(r) => Ended::Graceful(r.into()),
            Termination::Terminated(r) => Ended::Terminated(r.into()),
            Termination::Killed(r) => Ended::Killed(r.into()),
            Termination::Unstoppable => Ended::Unstoppable,
            _ => Ended::Unknown,
        }
    }
}

impl From<Ended> for Termination {
    fn from(ended: Ended) -> Self {
        match ended {
            Ended::Graceful(r) => Termination::Graceful(r.into()),
            Ended::Terminated(r) => Termination::Terminated(r.into()),
            Ended::Killed(r) => Termination::Killed(r.into()),
            Ended::Unstoppable => Termination::Unstoppable,
            Ended::Unknown => Termination::Unknown,
        }
    }
}

/// A connection to the server at `address`, with the key
/// [`remember_key`] or [`spawn_server`] recorded for it, if any.
pub(crate) fn connect(address: &Address) -> Result<SlaveProcess, WorkerError> {
    let text = address.to_string();
    let mut builder = ClientBuilder::new(&text)?;
    if let Some(key) = known_key(&text) {
        builder = builder.key(key);
    }
    Ok(builder.connect()?)
}

/// Has the server terminate this worker's child within `timeout`.
pub(crate) fn terminate_hosted(hosted: &Remote<Hosted>, timeout: Duration) -> Termination {
    let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    hosted
        .invoke_with(
            millis,
            func!(|h: &mut Hosted, millis: u64| -> Ended {
                h.child.terminate(Duration::from_millis(millis)).into()
            }),
        )
        .map(Termination::from)
        .unwrap_or(Termination::Unknown)
}

/// How often a server checks whether the caller of a forwarded call
/// cancelled it (only while the call runs).
const CANCEL_POLL: Duration = Duration::from_millis(20);

/// In the server: answers the forwarded call with `task`'s outcome once the
/// child answers, passing the caller's cancellation on.
pub(crate) fn forward<T: Data>(task: Task<Result<T, Failure>>) -> Later<Result<T, Failure>> {
    forward_holding(task, ())
}

/// [`forward`], keeping `guard` until the answer has left.
pub(crate) fn forward_holding<T: Data, G: Send + 'static>(
    task: Task<Result<T, Failure>>,
    guard: G,
) -> Later<Result<T, Failure>> {
    let (reply, later) = reply_later();
    let answering = Answering::start();
    processional_thread::thread(move || {
        let _answering = answering;
        let _guard = guard;
        let mut task = task;
        loop {
            match task.wait_timeout(CANCEL_POLL) {
                Ok(outcome) => {
                    let _ = reply.send(outcome.unwrap_or_else(|error| Err(Failure::of(&error))));
                    return;
                }
                Err(pending) => {
                    if reply.is_cancelled() || !reply.is_listening() {
                        pending.cancel();
                    }
                    task = pending;
                }
            }
        }
    })
    .detach();
    later
}

/// The forwarded calls not answered yet, in this process: a server that
/// stops its workers on SIGTERM waits (a little) for their answers to leave
/// before it dies, so that callers hear why their worker ended.
static ANSWERING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// One forwarded call being answered; counted in [`ANSWERING`] until dropped.
struct Answering;

impl Answering {
    fn start() -> Answering {
        *ANSWERING.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Answering
    }

    /// Waits until no forwarded call is left unanswered, or `patience` ran out.
    fn wait_for_all(patience: Duration) {
        let deadline = std::time::Instant::now() + patience;
        let mut count = ANSWERING.0.lock().unwrap_or_else(|p| p.into_inner());
        while *count > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            count = ANSWERING
                .1
                .wait_timeout(count, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        *ANSWERING.0.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        ANSWERING.1.notify_all();
    }
}

/// Answers a forwarded call at once with `failure`.
pub(crate) fn refuse<T: Data>(failure: Failure) -> Later<Result<T, Failure>> {
    let (reply, later) = reply_later();
    let _ = reply.send(Err(failure));
    later
}

// The signature of a shipped function is its whole type.
#[allow(clippy::type_complexity)]
pub(crate) fn forward_shot<F, A, R, S>(
    target: Func<F>,
) -> Func<impl Fn(&mut Hosted, (S, A)) -> Later<ShotOut<R, S>> + Send + Sync + Copy + 'static>
where
    F: Fn(&mut S, A) -> R + Send + Sync + Copy + 'static,
    A: Data,
    R: Data,
    S: Data,
{
    target.pass_to_method(func!(|target: Func<F>, h: &mut Hosted, job: (S, A)| {
        forward(h.child.schedule_with(job, shot_func(target)))
    }))
}

pub(crate) fn forward_open<S: Data>()
-> Func<impl Fn(&mut Hosted, S) -> Result<(), Failure> + Send + Sync + Copy + 'static> {
    func!(|h: &mut Hosted, state: S| {
        let slot: Remote<Slot<S>> = h
            .child
            .wrap_with(state, slot_func::<S>())
            .map_err(|e| Failure::of(&e))?;
        h.slot = Some(Box::new(slot));
        Ok(())
    })
}

// The signature of a shipped function is its whole type.
#[allow(clippy::type_complexity)]
pub(crate) fn forward_batch<F, A, R, S>(
    target: Func<F>,
) -> Func<impl Fn(&mut Hosted, (bool, Vec<A>)) -> Later<BatchOut<R>> + Send + Sync + Copy + 'static>
where
    F: Fn(&mut S, A) -> R + Send + Sync + Copy + 'static,
    A: Data,
    R: Data,
    S: Data,
{
    target.pass_to_method(func!(
        |target: Func<F>, h: &mut Hosted, job: (bool, Vec<A>)| {
            match h
                .slot
                .as_ref()
                .and_then(|slot| slot.downcast_ref::<Remote<Slot<S>>>())
            {
                Some(slot) => forward(slot.schedule_with(job, batch_func(target))),
                None => refuse(Failure::Lost("the worker's state is not set up".into())),
            }
        }
    ))
}

pub(crate) fn forward_fetch<S: Data>()
-> Func<impl Fn(&mut Hosted) -> Option<S> + Send + Sync + Copy + 'static> {
    func!(|h: &mut Hosted| {
        let slot = h.slot.as_ref()?.downcast_ref::<Remote<Slot<S>>>()?;
        slot.invoke(crate::host::fetch_func::<S>()).ok().flatten()
    })
}

/// A remote-worker server that [`spawn_server`] started: a child process
/// of this program serving remote workers.
///
/// Dropping it stops the server; its workers' processes die with it.
///
/// The server is this same program, so its workers run the targets of this
/// build (see [both sides run the same build](https://docs.rs/processional/latest/processional/#both-sides-run-the-same-build)).
///
/// ```
/// use std::time::Duration;
/// use processional_worker::{Worker, spawn_server};
/// use processional_process::func;
///
/// # fn main() -> Result<(), processional_worker::WorkerError> {
/// let server = spawn_server("tcp://127.0.0.1:0")?;
/// assert_ne!(server.pid(), std::process::id());
/// let worker = Worker::remote(server.address(), func!(|x: u32| x + 1), 1)?;
/// worker.wait(None);
/// assert_eq!(worker.result(), Some(&2));
/// let ended = server.terminate(Duration::from_secs(20)); // its workers' processes first
/// assert!(ended.exit_reason().is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RemoteServer {
    process: SlaveProcess,
    address: Address,
}

impl RemoteServer {
    /// The address it listens on, with the real port for `tcp://…:0`.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the server within `timeout`: first its workers' processes, in
    /// parallel, within half of it (each asked, then SIGTERM, then SIGKILL),
    /// then the server itself the same way. Workers it still ran end with
    /// an error.
    pub fn terminate(&self, timeout: Duration) -> Termination {
        let start = std::time::Instant::now();
        let millis = u64::try_from((timeout / 2).as_millis()).unwrap_or(u64::MAX);
        let stopping = self.process.schedule_with(
            millis,
            func!(|millis: u64| stop_hosted(Duration::from_millis(millis))),
        );
        // Bounded even if the server does not answer.
        let _ = stopping.wait_timeout(timeout / 2 + Duration::from_secs(1));
        self.process
            .terminate(timeout.saturating_sub(start.elapsed()))
    }
}

/// How long a server stopped by SIGTERM gives each of its workers' processes
/// to stop (asked, then SIGTERM, then SIGKILL) before it dies.
const SIGTERM_GRACE: Duration = Duration::from_secs(5);

/// How long a server stopped by SIGTERM then waits for the answers of the
/// forwarded calls its stopped workers leave behind.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

/// In a server that [`spawn_server`] started, or the first time any server
/// starts a worker's process (one run with `PROCESSIONAL_SERVE`): on
/// SIGTERM, stops the workers' processes (in parallel, gracefully then by
/// force), then dies by SIGTERM. Once per process, and only where SIGTERM
/// is still at its default action.
fn stop_workers_on_sigterm() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(take_sigterm_over);
}

fn take_sigterm_over() {
    use std::io::Read;
    let mut pipe = match crate::sys::report_sigterm() {
        Ok(Some(pipe)) => pipe,
        // Someone else handles it (a spawned `server()`).
        Ok(None) => return,
        Err(error) => {
            log::warn!("processional: cannot take SIGTERM over: {error}");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("processional-sigterm".into())
        .spawn(move || {
            let mut byte = [0u8];
            let _ = pipe.read_exact(&mut byte);
            let stopped = stop_hosted(SIGTERM_GRACE);
            log::info!("processional: SIGTERM: stopped {stopped} worker processes");
            // Their callers hear why they ended before the server goes.
            Answering::wait_for_all(ANSWER_GRACE);
            crate::sys::die_by_sigterm()
        });
    if let Err(error) = spawned {
        log::warn!("processional: cannot start the SIGTERM thread: {error}");
    }
}

/// Servers started in this process by [`spawn_server`], kept running.
static SERVING: Mutex<Vec<processional_process::ServerHandle>> = Mutex::new(Vec::new());

/// Starts a remote-worker server on `address` (`unix:/path`,
/// `tcp://host:port`; port 0 picks a free port) in a child process of this
/// program, and returns once it listens.
///
/// A TCP server gets a fresh key, which the workers of this process use
/// (another program needs it in `PROCESSIONAL_KEY`); a unix-socket server
/// writes its key file beside the socket, as `server()` does.
///
/// ```
/// use processional_worker::{Worker, spawn_server};
/// use processional_process::func;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// # fn main() -> Result<(), processional_worker::WorkerError> {
/// let server = spawn_server("tcp://127.0.0.1:0")?;
/// let worker = Worker::remote(server.address(), func!(square), 3)?;
/// worker.wait(None);
/// assert_eq!(worker.result(), Some(&9));
/// # Ok(())
/// # }
/// ```
pub fn spawn_server(address: &str) -> Result<RemoteServer, WorkerError> {
    let is_tcp = address.parse::<Address>().is_ok_and(|a| a.is_tcp());
    let key = is_tcp.then(Key::generate);
    let process = processional_process::slave()?;
    let bound: String = process.invoke_with(
        (address.to_owned(), key.as_ref().map(Key::to_hex)),
        func!(|(address, key): (String, Option<String>)| -> String {
            let mut builder = match ServerBuilder::new(&address) {
                Ok(builder) => builder.persistent(true),
                Err(error) => panic!("cannot serve on {address}: {error}"),
            };
            if let Some(key) = key {
                builder = builder.key(Key::from_hex(&key).expect("a key we made"));
            }
            match builder.start() {
                Ok(handle) => {
                    let bound = handle.address().to_string();
                    log::info!("processional: serving remote workers on {bound}");
                    lock(&SERVING).push(handle);
                    stop_workers_on_sigterm();
                    bound
                }
                Err(error) => panic!("cannot serve on {address}: {error}"),
            }
        }),
    )?;
    let address: Address = bound.parse().map_err(|_| WorkerError::Lost {
        message: format!("the server reported an address that does not parse: {bound}"),
    })?;
    if let Some(key) = key {
        // Replacing the key of a server that used this address before.
        remember_key(&address, key);
    }
    Ok(RemoteServer { process, address })
}
