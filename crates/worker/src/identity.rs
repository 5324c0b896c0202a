//! Who a worker is: [`WorkerKind`], [`WorkerId`], [`Identity`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use processional_transport::Address;

/// Where a worker runs.
///
/// The kind is a value: the same code spawns on any of them.
///
/// ```
/// use processional_worker::{Worker, WorkerKind};
/// use processional_process::func;
///
/// # fn main() -> Result<(), processional_worker::WorkerError> {
/// for kind in [WorkerKind::Thread, WorkerKind::Process] {
///     let worker = Worker::spawn(kind.clone(), func!(|x: u32| x + 1), 1)?;
///     worker.wait(None);
///     assert_eq!(worker.result(), Some(&2));
///     assert_eq!(worker.kind(), &kind);
/// }
/// assert_eq!(WorkerKind::Process.to_string(), "process");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum WorkerKind {
    /// On a thread of this process (a `SlaveThread`).
    Thread,
    /// In a child process of this program (a slave).
    Process,
    /// In a child process of the remote-worker server at this address
    /// (see [`spawn_server`](crate::spawn_server)).
    Remote(Address),
}

impl fmt::Display for WorkerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkerKind::Thread => f.write_str("thread"),
            WorkerKind::Process => f.write_str("process"),
            WorkerKind::Remote(address) => write!(f, "remote({address})"),
        }
    }
}

/// A worker's id, unique in this process; a restarted worker gets a new
/// one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(u64);

impl WorkerId {
    pub(crate) fn next() -> WorkerId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        WorkerId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The number behind the id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker-{}", self.0)
    }
}

/// Everything that identifies a worker, valid from its creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Unique in this process.
    pub id: WorkerId,
    /// Where it runs.
    pub kind: WorkerKind,
    /// Its name (`worker-<id>` unless given).
    pub name: String,
    /// A number of the caller's choosing (0 unless given).
    pub user_id: u64,
    /// The host it runs on.
    pub host: String,
    /// The process it runs in; `None` for a worker told not to run.
    pub pid: Option<u32>,
    /// The OS thread it runs on, for a thread worker.
    pub tid: Option<u32>,
}
