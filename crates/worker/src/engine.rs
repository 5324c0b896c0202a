//! [`Engine`]: a host with a target and its kept state, which persistent
//! workers and pools feed batches of inputs.

use std::sync::Arc;
use std::time::Duration;

use processional_task::{Task, Termination};

use crate::error::WorkerError;
use crate::host::{Host, Naming, Ops, SlotHandle};
use crate::identity::{Identity, WorkerKind};
use crate::job::BatchOut;

/// A started host, the target's operations, and the state kept there.
pub(crate) struct Engine<A, R, S> {
    host: Host,
    slot: SlotHandle<S>,
    identity: Identity,
    ops: Arc<dyn Ops<A, R, S>>,
}

impl<A: 'static, R: 'static, S: 'static> Engine<A, R, S> {
    /// Starts a host of `kind` and sets `state` up there.
    pub(crate) fn start(
        kind: &WorkerKind,
        naming: &Naming,
        ops: Arc<dyn Ops<A, R, S>>,
        state: S,
    ) -> Result<Self, WorkerError> {
        let (host, identity) = Host::spawn(kind, naming)?;
        let slot = ops.open(&host, state)?;
        Ok(Engine {
            host,
            slot,
            identity,
            ops,
        })
    }

    /// Runs a batch, in order, after the batches sent before.
    pub(crate) fn batch(&self, resilient: bool, inputs: Vec<A>) -> Task<BatchOut<R>> {
        self.ops.batch(&self.host, &self.slot, resilient, inputs)
    }

    /// Takes the kept state back.
    pub(crate) fn fetch(&self) -> Option<S> {
        self.ops.fetch(&self.host, &self.slot)
    }

    /// No batch follows those already sent (a remote context counts its
    /// workers' work as done only then).
    pub(crate) fn closed(&self) {
        self.ops.closed(&self.host)
    }
}

impl<A, R, S> Engine<A, R, S> {
    /// Stops the host.
    pub(crate) fn terminate(&self, timeout: Duration) -> Termination {
        self.host.terminate(timeout)
    }

    pub(crate) fn host(&self) -> &Host {
        &self.host
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.identity
    }
}
