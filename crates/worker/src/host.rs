//! Where a worker runs: a [`Host`] (a slave thread, a slave process, or a
//! child of a remote-worker server), and the [`Program`] that runs a target
//! there, erased behind [`Ops`] so that worker types do not name the
//! target's type.

use std::any::Any;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use processional_process::{Func, Remote, SlaveProcess, func};
use processional_task::{Error, Task, Termination};
use processional_thread::SlaveThread;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::WorkerError;
use crate::identity::{Identity, WorkerId, WorkerKind};
use crate::job::{BatchOut, ShotOut, Slot, run_batch, run_shot};
use crate::remote::{self, Hosted};

/// A value a worker can take, return, or keep: it may travel to another
/// process.
pub trait Data: Serialize + DeserializeOwned + Send + 'static {}
impl<T: Serialize + DeserializeOwned + Send + 'static> Data for T {}

/// A worker's place to run.
pub(crate) enum Host {
    Thread(SlaveThread),
    Process(SlaveProcess),
    Remote {
        /// This worker's connection to the server.
        _connection: SlaveProcess,
        /// The server's handle on the child it started for this worker.
        hosted: Remote<Hosted>,
    },
}

/// Names and numbers given to a new worker.
#[derive(Clone, Debug, Default)]
pub(crate) struct Naming {
    pub(crate) name: Option<String>,
    pub(crate) user_id: u64,
    /// The remote context whose worker this is (remote kind only).
    pub(crate) context: Option<String>,
}

impl Host {
    /// Starts a host of this kind; its identity.
    pub(crate) fn spawn(
        kind: &WorkerKind,
        naming: &Naming,
    ) -> Result<(Host, Identity), WorkerError> {
        let id = WorkerId::next();
        let name = naming.name.clone().unwrap_or_else(|| id.to_string());
        let (host, host_name, pid, tid) = match kind {
            WorkerKind::Thread => {
                let thread = SlaveThread::builder()
                    .name(name.clone())
                    .spawn()
                    .map_err(|e| {
                        WorkerError::Runtime(Error::io("cannot start a worker thread", e))
                    })?;
                let identity = (thread.host().to_owned(), Some(thread.pid()), thread.tid());
                (Host::Thread(thread), identity.0, identity.1, identity.2)
            }
            WorkerKind::Process => {
                let process = processional_process::SlaveProcessBuilder::new()
                    .name(name.clone())
                    .spawn()?;
                let identity = (process.host().to_owned(), Some(process.pid()));
                (Host::Process(process), identity.0, identity.1, None)
            }
            WorkerKind::Remote(address) => {
                let (connection, hosted, pid, host) =
                    remote::start_hosted(address, naming.context.as_deref())?;
                (
                    Host::Remote {
                        _connection: connection,
                        hosted,
                    },
                    host,
                    Some(pid),
                    None,
                )
            }
        };
        let identity = Identity {
            id,
            kind: kind.clone(),
            name,
            user_id: naming.user_id,
            host: host_name,
            pid,
            tid,
        };
        Ok((host, identity))
    }

    /// Stops the host (see `SlaveThread::terminate` and
    /// `SlaveProcess::terminate`).
    pub(crate) fn terminate(&self, timeout: Duration) -> Termination {
        match self {
            Host::Thread(thread) => thread.terminate(timeout),
            Host::Process(process) => process.terminate(timeout),
            Host::Remote { hosted, .. } => remote::terminate_hosted(hosted, timeout),
        }
    }
}

/// Where a persistent worker keeps its state.
pub(crate) enum SlotHandle<S> {
    Local(Arc<Mutex<Slot<S>>>),
    Process(Remote<Slot<S>>),
    /// In the server's record of the child.
    Remote,
}

/// A target `F` (`Fn(&mut S, A) -> R`), made from nothing in any process.
pub(crate) struct Program<F>(Func<F>);

impl<F: Copy> Program<F> {
    pub(crate) fn new(target: Func<F>) -> Self {
        Program(target)
    }
}

/// What a worker does with its host, for any target: the target's type is
/// erased here.
pub(crate) trait Ops<A, R, S>: Send + Sync + 'static {
    /// Runs the target once on `input` with `state`.
    fn shot(&self, host: &Host, state: S, input: A) -> Task<ShotOut<R, S>>;
    /// Sets a persistent worker's state up on its host.
    fn open(&self, host: &Host, state: S) -> Result<SlotHandle<S>, WorkerError>;
    /// Runs the target on a batch of inputs, in order, with the kept state.
    fn batch(
        &self,
        host: &Host,
        slot: &SlotHandle<S>,
        resilient: bool,
        inputs: Vec<A>,
    ) -> Task<BatchOut<R>>;
    /// Takes the kept state back (`None` if it is lost).
    fn fetch(&self, host: &Host, slot: &SlotHandle<S>) -> Option<S>;
    /// Tells the host that no batch will follow those already sent.
    fn closed(&self, _host: &Host) {}
}

impl<F, A, R, S> Ops<A, R, S> for Program<F>
where
    F: Fn(&mut S, A) -> R + Send + Sync + Copy + 'static,
    A: Data,
    R: Data,
    S: Data,
{
    fn shot(&self, host: &Host, state: S, input: A) -> Task<ShotOut<R, S>> {
        match host {
            Host::Thread(thread) => {
                let f = *self.0.get();
                thread.schedule(move || run_shot(&f, state, input))
            }
            Host::Process(process) => process.schedule_with((state, input), shot_func(self.0)),
            Host::Remote { hosted, .. } => {
                hosted.schedule_later_with((state, input), remote::forward_shot(self.0))
            }
        }
    }

    fn open(&self, host: &Host, state: S) -> Result<SlotHandle<S>, WorkerError> {
        match host {
            Host::Thread(_) => Ok(SlotHandle::Local(Arc::new(Mutex::new(Slot::new(state))))),
            Host::Process(process) => Ok(SlotHandle::Process(
                process.wrap_with(state, slot_func::<S>())?,
            )),
            Host::Remote { hosted, .. } => {
                hosted
                    .invoke_with(state, remote::forward_open::<S>())?
                    .map_err(WorkerError::from_failure)?;
                Ok(SlotHandle::Remote)
            }
        }
    }

    fn batch(
        &self,
        host: &Host,
        slot: &SlotHandle<S>,
        resilient: bool,
        inputs: Vec<A>,
    ) -> Task<BatchOut<R>> {
        match (host, slot) {
            (Host::Thread(thread), SlotHandle::Local(slot)) => {
                let f = *self.0.get();
                let slot = slot.clone();
                thread.schedule(move || {
                    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
                    Ok(run_batch(&f, &mut slot, resilient, inputs))
                })
            }
            (Host::Process(_), SlotHandle::Process(slot)) => {
                slot.schedule_with((resilient, inputs), batch_func(self.0))
            }
            (Host::Remote { hosted, .. }, SlotHandle::Remote) => {
                hosted.schedule_later_with((resilient, inputs), remote::forward_batch(self.0))
            }
            _ => unreachable!("a slot is opened on its own host"),
        }
    }

    fn fetch(&self, host: &Host, slot: &SlotHandle<S>) -> Option<S> {
        match (host, slot) {
            (_, SlotHandle::Local(slot)) => slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .state
                .take(),
            (_, SlotHandle::Process(slot)) => slot.invoke(fetch_func::<S>()).ok().flatten(),
            (Host::Remote { hosted, .. }, SlotHandle::Remote) => {
                hosted.invoke(remote::forward_fetch::<S>()).ok().flatten()
            }
            _ => None,
        }
    }
}

/// `target` with `()` for state: a target of one argument.
pub(crate) fn stateless<F, A, R>(
    target: Func<F>,
) -> Func<impl Fn(&mut (), A) -> R + Send + Sync + Copy + 'static>
where
    F: Fn(A) -> R + Send + Sync + Copy + 'static,
{
    target.pass_to_method(func!(|f: Func<F>, _: &mut (), input: A| (f.get())(input)))
}

/// The one-shot call shipped to a process.
pub(crate) fn shot_func<F, A, R, S>(
    target: Func<F>,
) -> Func<impl Fn((S, A)) -> ShotOut<R, S> + Send + Sync + Copy + 'static>
where
    F: Fn(&mut S, A) -> R + Send + Sync + Copy + 'static,
{
    target.pass_to(func!(|f: Func<F>, (state, input): (S, A)| run_shot(
        f.get(),
        state,
        input
    )))
}

/// The batch call shipped to a process, on its kept [`Slot`].
// The signature of a shipped function is its whole type.
#[allow(clippy::type_complexity)]
pub(crate) fn batch_func<F, A, R, S>(
    target: Func<F>,
) -> Func<impl Fn(&mut Slot<S>, (bool, Vec<A>)) -> BatchOut<R> + Send + Sync + Copy + 'static>
where
    F: Fn(&mut S, A) -> R + Send + Sync + Copy + 'static,
{
    target.pass_to_method(func!(
        |f: Func<F>, slot: &mut Slot<S>, (resilient, inputs): (bool, Vec<A>)| {
            Ok(run_batch(f.get(), slot, resilient, inputs))
        }
    ))
}

/// Makes the [`Slot`] of a persistent worker in its process.
pub(crate) fn slot_func<S>() -> Func<impl Fn(S) -> Slot<S> + Send + Sync + Copy + 'static> {
    func!(|state: S| Slot::new(state))
}

/// Takes the state out of a [`Slot`].
pub(crate) fn fetch_func<S>()
-> Func<impl Fn(&mut Slot<S>) -> Option<S> + Send + Sync + Copy + 'static> {
    func!(|slot: &mut Slot<S>| slot.state.take())
}

/// Keeps a boxed value for the server's record of a child.
pub(crate) type AnySlot = Box<dyn Any + Send>;
