//! Remote contexts: a target registered on a remote-worker server under an
//! id, with its default state, which persistent remote workers use by that
//! id ([`RemoteContext`]); waiting on the context ends its workers once
//! their work is done, terminating it ends them at once.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use processional_process::{Func, Later, SlaveProcess, func};
use processional_task::Task;
use processional_transport::Address;

use crate::error::WorkerError;
use crate::host::{Data, Host, Ops, Program, SlotHandle, stateless};
use crate::identity::WorkerKind;
use crate::job::{BatchOut, Failure, ShotOut};
use crate::persistent::PersistentWorker;
use crate::remote::{self, Hosted, forward_holding, refuse};
use crate::worker::WorkerBuilder;

/// In a server: one registered context.
struct Entry {
    /// An `Arc<dyn Ops<A, R, S>>`.
    ops: Box<dyn Any + Send>,
    /// An `S`.
    defaults: Box<dyn Any + Send>,
    /// The processes of the workers that use it.
    children: Vec<SlaveProcess>,
    /// The pids of those whose workers may still send batches: not closed
    /// (a worker says so after its last batch, on the same connection, so
    /// that its batches are counted in `in_flight` first) and not dropped.
    open: HashSet<u32>,
    /// Batches of its workers that the server forwarded and whose answers
    /// have not left yet (shared with their [`InFlight`]s, so that a
    /// re-registered id does not count another entry's batches).
    in_flight: Arc<AtomicUsize>,
    /// Which registration made it: the handle that registered it removes
    /// it only if no other registration of the id replaced it since.
    registration: u64,
    /// Closed by [`RemoteContext::wait`]: it takes no new workers, nor
    /// batches of workers no longer open.
    closed: bool,
}

/// In a server: the contexts registered there, by id.
static CONTEXTS: Mutex<Option<HashMap<String, Entry>>> = Mutex::new(None);

/// Notified when a context's last batch in flight has been answered, or
/// one of its workers closed or went away.
static DRAINED: Condvar = Condvar::new();

type Contexts = HashMap<String, Entry>;

fn contexts() -> MutexGuard<'static, Option<Contexts>> {
    CONTEXTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn with_contexts<T>(f: impl FnOnce(&mut Contexts) -> T) -> T {
    f(contexts().get_or_insert_with(HashMap::new))
}

/// In a server: forgets the worker process `pid` in every context (its
/// worker is gone), so that the process ends with its last handle.
pub(crate) fn forget_child(pid: u32) {
    let forgotten: Vec<SlaveProcess> = with_contexts(|contexts| {
        let mut forgotten = Vec::new();
        for entry in contexts.values_mut() {
            let (gone, kept) = std::mem::take(&mut entry.children)
                .into_iter()
                .partition(|child| child.pid() == pid);
            entry.children = kept;
            entry.open.remove(&pid);
            forgotten.extend::<Vec<_>>(gone);
        }
        DRAINED.notify_all();
        forgotten
    });
    // Dropped outside the lock.
    drop(forgotten);
}

/// In a server: counts one forwarded batch of a context until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Counts a batch of the context `id` from the worker whose process is
    /// `pid`, unless the context is unknown, or closed and that worker was
    /// closed too (a worker still open when the context closed may send
    /// what it was given).
    fn start(id: &str, pid: u32) -> Result<InFlight, Failure> {
        with_contexts(|contexts| match contexts.get(id) {
            Some(entry) if entry.closed && !entry.open.contains(&pid) => {
                Err(Failure::Lost(closed(id)))
            }
            Some(entry) => {
                entry.in_flight.fetch_add(1, Ordering::AcqRel);
                Ok(InFlight(entry.in_flight.clone()))
            }
            None => Err(Failure::Lost(unknown(id))),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Under the lock, so that a drain between its look and its wait
        // cannot miss the notification.
        let _contexts = contexts();
        if self.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            DRAINED.notify_all();
        }
    }
}

fn closed(id: &str) -> String {
    format!("the remote context {id:?} was closed (waited on)")
}

fn unknown(id: &str) -> String {
    format!("no remote context {id:?} on this server")
}

/// In a server: closes the context `id`, waits until `deadline` for its
/// workers to be closed and their batches in flight answered, then stops
/// their processes (asked, then forced, by the deadline); whether it
/// drained.
fn drain(id: &str, deadline: Option<Instant>) -> Result<bool, Failure> {
    let mut guard = contexts();
    let children = loop {
        let entry = guard
            .get_or_insert_with(HashMap::new)
            .get_mut(id)
            .ok_or_else(|| Failure::Lost(unknown(id)))?;
        entry.closed = true;
        if entry.in_flight.load(Ordering::Acquire) == 0 && entry.open.is_empty() {
            break std::mem::take(&mut entry.children);
        }
        guard = match deadline {
            None => DRAINED.wait(guard).unwrap_or_else(|p| p.into_inner()),
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                DRAINED
                    .wait_timeout(guard, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    };
    drop(guard);
    let left = deadline.map_or(STOP_WITHOUT_DEADLINE, |deadline| {
        deadline.saturating_duration_since(Instant::now())
    });
    stop_all(&children, left);
    Ok(true)
}

/// How long [`drain`] without a deadline gives the idle processes to stop.
const STOP_WITHOUT_DEADLINE: Duration = Duration::from_secs(10);

/// Stops `children` in parallel, within `timeout` each.
fn stop_all(children: &[SlaveProcess], timeout: Duration) {
    std::thread::scope(|scope| {
        for child in children {
            scope.spawn(move || child.terminate(timeout));
        }
    });
}

/// A context's operations (its target, type erased) and default state.
type Found<A, R, S> = (Arc<dyn Ops<A, R, S>>, S);

/// In a server: the context's operations and defaults, if `id` is
/// registered with these types.
fn lookup<A: 'static, R: 'static, S: Clone + 'static>(id: &str) -> Result<Found<A, R, S>, Failure> {
    with_contexts(|contexts| {
        let entry = contexts.get(id).ok_or_else(|| Failure::Lost(unknown(id)))?;
        match (
            entry.ops.downcast_ref::<Arc<dyn Ops<A, R, S>>>(),
            entry.defaults.downcast_ref::<S>(),
        ) {
            (Some(ops), Some(defaults)) => Ok((ops.clone(), defaults.clone())),
            _ => Err(Failure::Lost(format!(
                "the remote context {id:?} has other input, value or state types"
            ))),
        }
    })
}

/// In a server: starts a worker's child for the context `id`.
pub(crate) fn start_in_context(id: String) -> Hosted {
    let refused = with_contexts(|contexts| match contexts.get(&id) {
        Some(entry) if entry.closed => Some(closed(&id)),
        Some(_) => None,
        None => Some(unknown(&id)),
    });
    if let Some(why) = refused {
        // Answered to the client as the failure of its `wrap`.
        panic!("{why}");
    }
    let hosted = Hosted::start();
    let child = hosted.child().clone();
    let kept = with_contexts(|contexts| match contexts.get_mut(&id) {
        Some(entry) if !entry.closed => {
            entry.open.insert(child.pid());
            entry.children.push(child);
            None
        }
        // Closed (or gone) while the process started.
        _ => Some(child),
    });
    if kept.is_some() {
        drop(kept);
        drop(hosted);
        panic!("{}", closed(&id));
    }
    hosted
}

/// A target registered on a remote-worker server under an id, with the
/// default state its workers start with; persistent workers made from it
/// ([`worker`](Self::worker)) run it there by that id.
/// [`wait`](Self::wait) ends them all once the work they sent is done;
/// [`terminate`](Self::terminate) ends them at once.
///
/// ```
/// use processional_worker::{RemoteContext, spawn_server};
/// use processional_process::func;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = spawn_server("tcp://127.0.0.1:0")?;
/// let context = RemoteContext::register_stateful(
///     server.address(),
///     "scaled",
///     func!(|factor: &mut u64, x: u64| *factor * x),
///     10u64, // the default state: the factor
/// )?;
/// let worker = context.worker()?;
/// worker.enqueue(4)?;
/// worker.close();
/// worker.wait(None);
/// assert_eq!(worker.results().collect::<Result<Vec<_>, _>>()?, [40]);
/// assert_eq!(context.terminate(std::time::Duration::from_secs(10))?, 1);
/// # Ok(())
/// # }
/// ```
pub struct RemoteContext<A, R, S = ()> {
    connection: SlaveProcess,
    address: Address,
    id: String,
    /// The registration this handle made, if it registered the context
    /// (it unregisters it when dropped, unless another registration
    /// replaced it; the workers it has go on until they end).
    registration: Option<u64>,
    _types: PhantomData<fn(A, S) -> R>,
}

impl<A, R, S> Drop for RemoteContext<A, R, S> {
    fn drop(&mut self) {
        if let Some(registration) = self.registration {
            self.connection
                .schedule_with(
                    (self.id.clone(), registration),
                    func!(|(id, registration): (String, u64)| unregister(&id, registration)),
                )
                .detach();
        }
    }
}

/// In a server: removes the context `id` if `registration` made it (not a
/// later registration of the same id, which another client may have made).
fn unregister(id: &str, registration: u64) {
    let removed = with_contexts(|contexts| match contexts.get(id) {
        Some(entry) if entry.registration == registration => contexts.remove(id),
        _ => None,
    });
    // Dropped outside the lock.
    drop(removed);
}

impl<A, R, S> std::fmt::Debug for RemoteContext<A, R, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteContext")
            .field("address", &self.address)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<A: Data + Clone, R: Data> RemoteContext<A, R> {
    /// Registers `target` on the server at `server` under `id` (replacing
    /// a context of that id). Dropping the handle unregisters it, unless a
    /// later registration of `id` replaced it; the workers made from it go
    /// on until they end.
    pub fn register<F>(server: &Address, id: &str, target: Func<F>) -> Result<Self, WorkerError>
    where
        F: Fn(A) -> R + Send + Sync + Copy + 'static,
    {
        RemoteContext::register_stateful(server, id, stateless(target), ())
    }
}

impl<A: Data + Clone, R: Data, S: Data + Clone> RemoteContext<A, R, S> {
    /// Registers `target` (`Fn(&mut S, A) -> R`) under `id`, its workers
    /// starting with `defaults` for state.
    pub fn register_stateful<F>(
        server: &Address,
        id: &str,
        target: Func<F>,
        defaults: S,
    ) -> Result<Self, WorkerError>
    where
        F: Fn(&mut S, A) -> R + Send + Sync + Copy + 'static,
    {
        let connection = remote::connect(server)?;
        let registration = connection.invoke_with(
            (id.to_owned(), defaults),
            register_func::<F, A, R, S>(target),
        )?;
        Ok(RemoteContext {
            connection,
            address: server.clone(),
            id: id.to_owned(),
            registration: Some(registration),
            _types: PhantomData,
        })
    }

    /// The context `id` registered on `server` by someone else (checked to
    /// exist with these types).
    pub fn open(server: &Address, id: &str) -> Result<Self, WorkerError> {
        let connection = remote::connect(server)?;
        connection
            .invoke_with(id.to_owned(), check_func::<A, R, S>())?
            .map_err(WorkerError::from_failure)?;
        Ok(RemoteContext {
            connection,
            address: server.clone(),
            id: id.to_owned(),
            registration: None,
            _types: PhantomData,
        })
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The server's address.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// A new persistent worker running the context's target, in a process
    /// the server starts for it, with the context's default state.
    pub fn worker(&self) -> Result<PersistentWorker<A, R, S>, WorkerError> {
        let defaults: S = self
            .connection
            .invoke_with(self.id.clone(), defaults_func::<A, R, S>())?
            .map_err(WorkerError::from_failure)?;
        let mut builder =
            WorkerBuilder::new(WorkerKind::Remote(self.address.clone())).state(defaults);
        builder.naming.context = Some(self.id.clone());
        builder.persistent_with(Arc::new(ContextOps::<A, R, S> {
            id: self.id.clone(),
            _types: PhantomData,
        }))
    }

    /// Ends the context's workers once their work is done: closes the
    /// context (it takes no new workers), waits until each of its workers
    /// is closed ([`PersistentWorker::close`]) or dropped and every input
    /// they were given has been answered, then stops their processes (each
    /// is idle, so it exits when asked). `true` if all of this ended within
    /// `timeout` (`None`: no limit, so a worker never closed keeps it
    /// waiting); on `false` the workers still run what they had and
    /// [`terminate`](Self::terminate) forces them.
    ///
    /// The context stays closed after a `false` too: inputs that reach it
    /// later fail with the *closed* error.
    ///
    /// ```
    /// use std::time::Duration;
    /// use processional_worker::{RemoteContext, spawn_server};
    /// use processional_process::func;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let server = spawn_server("tcp://127.0.0.1:0")?;
    /// let context = RemoteContext::register(server.address(), "double", func!(|x: u64| 2 * x))?;
    /// let worker = context.worker()?;
    /// worker.enqueue(21)?;
    /// worker.close();
    /// assert!(context.wait(Some(Duration::from_secs(30)))?);
    /// assert_eq!(worker.results().collect::<Result<Vec<_>, _>>()?, [42]);
    /// assert!(context.worker().is_err(), "closed");
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, WorkerError> {
        let millis = timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let drained = self.connection.invoke_with(
            (self.id.clone(), millis),
            func!(
                |(id, millis): (String, Option<u64>)| -> Result<bool, Failure> {
                    let deadline = millis.map(|m| Instant::now() + Duration::from_millis(m));
                    drain(&id, deadline)
                }
            ),
        )?;
        drained.map_err(WorkerError::from_failure)
    }

    /// Ends every worker that uses the context, in parallel, within
    /// `timeout` each (asked, then SIGTERM, then SIGKILL); how many there
    /// were. The context stays registered for new workers.
    pub fn terminate(&self, timeout: Duration) -> Result<usize, WorkerError> {
        let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        Ok(self.connection.invoke_with(
            (self.id.clone(), millis),
            func!(|(id, millis): (String, u64)| -> usize {
                let children = with_contexts(|contexts| {
                    contexts.get_mut(&id).map(|e| {
                        // Their workers send nothing that could still run.
                        e.open.clear();
                        DRAINED.notify_all();
                        std::mem::take(&mut e.children)
                    })
                })
                .unwrap_or_default();
                stop_all(&children, Duration::from_millis(millis));
                children.len()
            }),
        )?)
    }
}

fn register_func<F, A, R, S>(
    target: Func<F>,
) -> Func<impl Fn((String, S)) -> u64 + Send + Sync + Copy + 'static>
where
    F: Fn(&mut S, A) -> R + Send + Sync + Copy + 'static,
    A: Data,
    R: Data,
    S: Data,
{
    target.pass_to(func!(|target: Func<F>,
                          (id, defaults): (String, S)|
     -> u64 {
        static REGISTRATIONS: AtomicU64 = AtomicU64::new(1);
        let registration = REGISTRATIONS.fetch_add(1, Ordering::Relaxed);
        let ops: Arc<dyn Ops<A, R, S>> = Arc::new(Program::new(target));
        let entry = Entry {
            registration,
            ops: Box::new(ops),
            defaults: Box::new(defaults),
            children: Vec::new(),
            open: HashSet::new(),
            in_flight: Arc::default(),
            closed: false,
        };
        let replaced = with_contexts(|contexts| contexts.insert(id, entry));
        // Dropped outside the lock.
        drop(replaced);
        registration
    }))
}

fn check_func<A: Data, R: Data, S: Data + Clone>()
-> Func<impl Fn(String) -> Result<(), Failure> + Send + Sync + Copy + 'static> {
    func!(|id: String| lookup::<A, R, S>(&id).map(drop))
}

fn defaults_func<A: Data, R: Data, S: Data + Clone>()
-> Func<impl Fn(String) -> Result<S, Failure> + Send + Sync + Copy + 'static> {
    func!(|id: String| lookup::<A, R, S>(&id).map(|(_, defaults)| defaults))
}

/// What a context's worker does: the context's operations, looked up by id
/// on the server.
struct ContextOps<A, R, S> {
    id: String,
    _types: PhantomData<fn(A, S) -> R>,
}

impl<A: Data + Clone, R: Data, S: Data + Clone> Ops<A, R, S> for ContextOps<A, R, S> {
    fn shot(&self, _host: &Host, _state: S, _input: A) -> Task<ShotOut<R, S>> {
        Task::ready(Ok(Err(Failure::Lost(
            "a remote context runs persistent workers only".into(),
        ))))
    }

    fn open(&self, host: &Host, state: S) -> Result<SlotHandle<S>, WorkerError> {
        match host {
            Host::Remote { hosted, .. } => {
                hosted
                    .invoke_with(state, remote::forward_open::<S>())?
                    .map_err(WorkerError::from_failure)?;
                Ok(SlotHandle::Remote)
            }
            _ => unreachable!("a context's workers are remote"),
        }
    }

    fn batch(
        &self,
        host: &Host,
        _slot: &SlotHandle<S>,
        resilient: bool,
        inputs: Vec<A>,
    ) -> Task<BatchOut<R>> {
        match host {
            Host::Remote { hosted, .. } => hosted.schedule_later_with(
                (self.id.clone(), resilient, inputs),
                context_batch_func::<A, R, S>(),
            ),
            _ => unreachable!("a context's workers are remote"),
        }
    }

    fn fetch(&self, host: &Host, _slot: &SlotHandle<S>) -> Option<S> {
        match host {
            Host::Remote { hosted, .. } => {
                hosted.invoke(remote::forward_fetch::<S>()).ok().flatten()
            }
            _ => None,
        }
    }

    fn closed(&self, host: &Host) {
        if let Host::Remote { hosted, .. } = host {
            // Behind the worker's batches on its connection. A server that
            // is gone has nothing to count.
            let _ = hosted.invoke_with(
                self.id.clone(),
                func!(|h: &mut Hosted, id: String| {
                    let pid = h.child().pid();
                    with_contexts(|contexts| {
                        if let Some(entry) = contexts.get_mut(&id) {
                            entry.open.remove(&pid);
                        }
                        DRAINED.notify_all();
                    });
                }),
            );
        }
    }
}

// The signature of a shipped function is its whole type.
#[allow(clippy::type_complexity)]
fn context_batch_func<A: Data + Clone, R: Data, S: Data + Clone>() -> Func<
    impl Fn(&mut Hosted, (String, bool, Vec<A>)) -> Later<BatchOut<R>> + Send + Sync + Copy + 'static,
> {
    func!(
        |h: &mut Hosted, (id, resilient, inputs): (String, bool, Vec<A>)| {
            let (ops, _) = match lookup::<A, R, S>(&id) {
                Ok(found) => found,
                Err(failure) => return refuse(failure),
            };
            let Some(slot) = h.slot::<S>().cloned() else {
                return refuse(Failure::Lost("the worker's state is not set up".into()));
            };
            let in_flight = match InFlight::start(&id, h.child().pid()) {
                Ok(in_flight) => in_flight,
                Err(failure) => return refuse(failure),
            };
            let host = Host::Process(h.child().clone());
            let batch = ops.batch(&host, &SlotHandle::Process(slot), resilient, inputs);
            forward_holding(batch, in_flight)
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two registrations of one id (two clients, or one twice): the handle
    /// of the first, dropped, must not remove the second's context.
    #[test]
    fn a_replaced_registration_does_not_unregister_its_successor() {
        let register = register_func::<_, u64, u64, ()>(stateless(func!(|x: u64| x + 1)));
        let first = (register.get())(("review.dup".to_owned(), ()));
        let second = (register.get())(("review.dup".to_owned(), ()));
        unregister("review.dup", first);
        assert!(
            lookup::<u64, u64, ()>("review.dup").is_ok(),
            "the second registration stays"
        );
        unregister("review.dup", second);
        assert!(lookup::<u64, u64, ()>("review.dup").is_err());
    }
}
