//! Child processes: spawning them safely, reaping them, stopping them.
//!
//! Children are spawned from a long-lived thread (the main thread, or a
//! spawner thread of ours), because `PR_SET_PDEATHSIG` fires when the
//! *thread* that created the child exits, not the process: a slave spawned
//! from a short-lived thread would otherwise die with that thread.
//! `std::process::Command` spawns with `posix_spawn` (we install no
//! `pre_exec` hook), so no code runs in a copy of a multi-threaded process.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child as StdChild, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use processional_thread::ExitReason;

use crate::session::ExitProbe;
use crate::slave::SLAVE_FD_VAR;

/// Names the master's process id in a child that must die with it.
pub(crate) const PARENT_VAR: &str = "PROCESSIONAL_SLAVE_PARENT";
use crate::sys::{self, WaitStatus};

/// How a [`terminate`](crate::SlaveProcess::terminate) ended the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// It exited by itself after being asked to (or had already ended).
    Graceful(ExitReason),
    /// It did not exit in time and was sent SIGTERM, which ended it.
    Terminated(ExitReason),
    /// It ignored SIGTERM and was killed with SIGKILL.
    Killed(ExitReason),
    /// It was not our child, or could not be reaped: its end is not known.
    Unknown,
}

impl Termination {
    /// How the process ended, if known.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        match self {
            Termination::Graceful(r) | Termination::Terminated(r) | Termination::Killed(r) => {
                Some(*r)
            }
            Termination::Unknown => None,
        }
    }
}

type SpawnRequest = (Command, OwnedFd, bool, mpsc::Sender<io::Result<StdChild>>);

/// Spawns `command` from the spawner thread, passing `inherited` to the child
/// (it keeps its number) and, when `die_with_parent`, asking the kernel to
/// SIGKILL the child when this process dies.
pub(crate) fn spawn(
    mut command: Command,
    inherited: OwnedFd,
    die_with_parent: bool,
) -> io::Result<StdChild> {
    // The main thread lives as long as the process: spawning from it is safe
    // and saves a hand-off.
    if !die_with_parent || sys::is_main_thread() {
        return spawn_here(&mut command, &inherited, die_with_parent);
    }
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("processional-spawner".into())
            .spawn(move || {
                for (mut command, inherited, die_with_parent, reply) in receiver {
                    let _ = reply.send(spawn_here(&mut command, &inherited, die_with_parent));
                }
            })
            .expect("cannot start the processional spawner thread");
        Mutex::new(sender)
    });
    let (reply, result) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((command, inherited, die_with_parent, reply))
        .map_err(|_| io::Error::other("the processional spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the processional spawner thread is gone"))?
}

fn spawn_here(
    command: &mut Command,
    inherited: &OwnedFd,
    die_with_parent: bool,
) -> io::Result<StdChild> {
    // No `pre_exec` hook: without one, std spawns with `posix_spawn` (a
    // vfork-like clone that copies no page tables), much cheaper than
    // `fork` from a large, multi-threaded master, and no code of ours runs
    // between the clone and the exec. The child gets its end of the socket as
    // a duplicate without close-on-exec, made just for this spawn; our own
    // spawns take turns so that none inherits another's descriptor. The
    // child asks for its death signal itself, before `main` (see `init`).
    static SPAWNING: Mutex<()> = Mutex::new(());
    let _turn = SPAWNING.lock().unwrap_or_else(|p| p.into_inner());
    let inheritable = sys::duplicate_inheritable(inherited)?;
    command.env(SLAVE_FD_VAR, inheritable.as_raw_fd().to_string());
    if die_with_parent {
        command.env(PARENT_VAR, std::process::id().to_string());
    } else {
        command.env_remove(PARENT_VAR);
    }
    let child = command.spawn();
    drop(inheritable);
    child
}

/// A child process we spawned and must reap.
#[derive(Debug)]
pub(crate) struct ChildProcess {
    pid: u32,
    status: Mutex<Option<ExitReason>>,
}

impl ChildProcess {
    pub(crate) fn new(pid: u32) -> ChildProcess {
        ChildProcess {
            pid,
            status: Mutex::new(None),
        }
    }

    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Reaps the child if it ended; its exit reason then.
    pub(crate) fn try_wait(&self) -> Option<ExitReason> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.is_none() {
            match sys::wait_pid(self.pid, false) {
                Ok(Some(WaitStatus::Exited(code))) => *status = Some(ExitReason::Code(code)),
                Ok(Some(WaitStatus::Signaled(signal))) => {
                    *status = Some(ExitReason::Signal(signal))
                }
                Ok(None) => {}
                // Reaped by someone else (e.g. a SIGCHLD handler of the program).
                Err(_) => *status = Some(ExitReason::Unknown),
            }
        }
        *status
    }

    /// Waits up to `timeout` for the child to end.
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Option<ExitReason> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_micros(100);
        loop {
            if let Some(reason) = self.try_wait() {
                return Some(reason);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits `grace` for the child to end by itself, then SIGTERM, then
    /// SIGKILL; always reaps it.
    pub(crate) fn stop(&self, grace: Duration) -> Termination {
        self.stop_after(grace, grace)
    }

    /// Waits `graceful` for the child to end by itself, then sends SIGTERM
    /// and waits `terminated`, then SIGKILL; always reaps it.
    pub(crate) fn stop_after(&self, graceful: Duration, terminated: Duration) -> Termination {
        if let Some(reason) = self.wait_timeout(graceful) {
            return Termination::Graceful(reason);
        }
        let _ = sys::kill(self.pid, sys::SIGTERM);
        if let Some(reason) = self.wait_timeout(terminated) {
            return Termination::Terminated(reason);
        }
        let _ = sys::kill(self.pid, sys::SIGKILL);
        match self.wait_timeout(Duration::from_secs(10)) {
            Some(reason) => Termination::Killed(reason),
            None => Termination::Unknown,
        }
    }

    /// Sends a signal to the child (if it has not been reaped yet).
    pub(crate) fn signal(&self, signal: i32) -> io::Result<bool> {
        if self.try_wait().is_some() {
            return Ok(false);
        }
        sys::kill(self.pid, signal)
    }
}

/// Lets a session report a dead child's exit status.
#[derive(Debug)]
pub(crate) struct ChildExitProbe(pub(crate) std::sync::Arc<ChildProcess>);

impl ExitProbe for ChildExitProbe {
    fn exit_reason(&self) -> Option<ExitReason> {
        // The socket closed: the child is exiting or exited; give it a moment
        // to become reapable.
        self.0.wait_timeout(Duration::from_millis(500))
    }
}
