//! Child processes: spawning them safely, reaping them, stopping them.
//!
//! Children are spawned from a long-lived thread (the main thread, or a
//! spawner thread of ours), because `PR_SET_PDEATHSIG` fires when the
//! *thread* that created the child exits, not the process: a slave spawned
//! from a short-lived thread would otherwise die with that thread.
//! `std::process::Command` spawns with `posix_spawn` (we install no
//! `pre_exec` hook), so no code runs in a copy of a multi-threaded process.
//!
//! A child whose handle dropped is reaped by one process-wide [reaper
//! thread](Reaper): it polls the children's pidfds (readable once a child
//! has ended) and an eventfd that announces new children, with a timeout
//! only while a stop waits for its next step (SIGTERM after the grace
//! period, then SIGKILL). It never wakes up for a child that simply runs.
//! Without pidfds (Linux before 5.3) each such child gets a thread of its
//! own that blocks in `waitid` instead.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::{Child as StdChild, Command};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use processional_task::{ExitReason, Termination};

use crate::session::ExitProbe;
use crate::slave::SLAVE_FD_VAR;
/// Names the master's process id in a child that must die with it.
pub(crate) const PARENT_VAR: &str = "PROCESSIONAL_SLAVE_PARENT";
use crate::sys::{self, WaitStatus};

/// How long a SIGKILLed child may take to be reaped before its end is
/// reported unknown (a process stuck in the kernel cannot die at once).
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(1);

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
    /// Readable once the child has ended; `None` without pidfds.
    pidfd: Option<OwnedFd>,
    status: Mutex<Option<ExitReason>>,
}

impl ChildProcess {
    /// Takes charge of our child `pid`, not reaped yet.
    pub(crate) fn new(pid: u32) -> ChildProcess {
        let pidfd = match sys::pidfd_open(pid) {
            Ok(pidfd) => Some(pidfd),
            Err(error) => {
                log::debug!("processional: no pidfd for child {pid} ({error}): polling it");
                None
            }
        };
        ChildProcess {
            pid,
            pidfd,
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

    /// Waits up to `timeout` for the child to end: on its pidfd, else by
    /// polling with growing pauses.
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
            let left = deadline - now;
            let waited = self
                .pidfd
                .as_ref()
                .map(|pidfd| sys::poll_readable(&[pidfd.as_fd()], Some(left)));
            if !matches!(waited, Some(Ok(_))) {
                std::thread::sleep(pause.min(left));
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }

    /// Blocks until the child has ended, and reaps it.
    fn wait(&self) -> ExitReason {
        loop {
            if let Some(reason) = self.try_wait() {
                return reason;
            }
            let waited = match &self.pidfd {
                Some(pidfd) => sys::poll_readable(&[pidfd.as_fd()], None).map(drop),
                None => sys::wait_for_exit(self.pid),
            };
            if let Err(error) = waited {
                // Not our child any more (reaped elsewhere): `try_wait`
                // says so. Otherwise, do not spin on a persistent error.
                log::debug!("processional: cannot wait for child {}: {error}", self.pid);
                if self.try_wait().is_none() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
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
        let now = Instant::now();
        self.stop_by(now + graceful, now + graceful + terminated)
    }

    /// Waits until `graceful` for the child to end by itself, then sends
    /// SIGTERM and waits until `deadline`, then SIGKILL; always reaps it.
    /// Returns at `deadline`, plus at most [`KILL_WAIT`] for a SIGKILLed
    /// child to be reaped.
    pub(crate) fn stop_by(&self, graceful: Instant, deadline: Instant) -> Termination {
        let left = |until: Instant| until.saturating_duration_since(Instant::now());
        if let Some(reason) = self.wait_timeout(left(graceful)) {
            return Termination::Graceful(reason);
        }
        let _ = sys::kill(self.pid, sys::SIGTERM);
        if let Some(reason) = self.wait_timeout(left(deadline)) {
            return Termination::Terminated(reason);
        }
        let _ = sys::kill(self.pid, sys::SIGKILL);
        match self.wait_timeout(KILL_WAIT) {
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

/// Reaps `child` in the background, once nobody holds its handle: with
/// `stop` (a grace period), as [`ChildProcess::stop`] does (SIGTERM after
/// the grace period, SIGKILL after another); without, whenever it exits by
/// itself. Never blocks.
pub(crate) fn reap_in_background(child: Arc<ChildProcess>, stop: Option<Duration>) {
    let child = match Reaper::global() {
        Some(reaper) if child.pidfd.is_some() => match reaper.add(child, stop) {
            Ok(()) => return,
            Err(child) => child,
        },
        _ => child,
    };
    // No pidfd, or no reaper thread: a thread of its own, which blocks.
    let _ = std::thread::Builder::new()
        .name("processional-reaper".into())
        .spawn(move || match stop {
            Some(grace) => drop(child.stop(grace)),
            None => drop(child.wait()),
        });
}

/// The next step of a stop the reaper drives.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Send SIGTERM, then give the child this long before the next step.
    Terminate { then: Duration },
    /// Send SIGKILL, then wait for the end.
    Kill,
}

/// A child the reaper waits for.
struct Reaping {
    child: Arc<ChildProcess>,
    /// When to take the next step of its stop, if it is being stopped.
    next: Option<(Instant, Step)>,
}

/// The process-wide thread that reaps children whose handles dropped.
struct Reaper {
    /// Children handed over and not yet taken by the reaper thread.
    added: Arc<Mutex<Vec<Reaping>>>,
    /// Written to announce an addition (an eventfd the thread polls).
    wake: File,
}

impl Reaper {
    /// The reaper, started on first use; `None` if it cannot be.
    fn global() -> Option<&'static Reaper> {
        static REAPER: OnceLock<Option<Reaper>> = OnceLock::new();
        REAPER
            .get_or_init(|| match Reaper::start() {
                Ok(reaper) => Some(reaper),
                Err(error) => {
                    log::debug!("processional: no reaper thread ({error}): one per child");
                    None
                }
            })
            .as_ref()
    }

    fn start() -> io::Result<Reaper> {
        let wake = File::from(sys::eventfd()?);
        let woken = wake.try_clone()?;
        let added = Arc::new(Mutex::new(Vec::new()));
        let taken = added.clone();
        std::thread::Builder::new()
            .name("processional-reaper".into())
            .spawn(move || reap(&taken, woken))?;
        Ok(Reaper { added, wake })
    }

    /// Hands `child` (which has a pidfd) to the reaper thread; gives it
    /// back if the thread cannot be told.
    fn add(
        &self,
        child: Arc<ChildProcess>,
        stop: Option<Duration>,
    ) -> Result<(), Arc<ChildProcess>> {
        let next = stop.map(|grace| (Instant::now() + grace, Step::Terminate { then: grace }));
        let mut added = self.added.lock().unwrap_or_else(|p| p.into_inner());
        added.push(Reaping { child, next });
        match (&self.wake).write_all(&1u64.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(error) => {
                log::debug!("processional: cannot wake the reaper: {error}");
                // Still ours: the thread takes additions under this lock.
                Err(added.pop().expect("just pushed").child)
            }
        }
    }
}

/// The reaper thread: waits, without a timeout unless a stop has a step
/// due, for a child to end (its pidfd) or to be added (`woken`).
fn reap(added: &Mutex<Vec<Reaping>>, woken: File) -> ! {
    let mut reaping: Vec<Reaping> = Vec::new();
    loop {
        reaping.append(&mut added.lock().unwrap_or_else(|p| p.into_inner()));
        let now = Instant::now();
        reaping.retain_mut(|reaping| {
            if reaping.child.try_wait().is_some() {
                return false;
            }
            match reaping.next {
                Some((at, Step::Terminate { then })) if now >= at => {
                    let _ = reaping.child.signal(sys::SIGTERM);
                    reaping.next = Some((now + then, Step::Kill));
                }
                Some((at, Step::Kill)) if now >= at => {
                    let _ = reaping.child.signal(sys::SIGKILL);
                    reaping.next = None;
                }
                _ => {}
            }
            true
        });
        let timeout = reaping
            .iter()
            .filter_map(|reaping| reaping.next.map(|(at, _)| at))
            .min()
            .map(|at| at.saturating_duration_since(Instant::now()));
        let mut fds: Vec<BorrowedFd<'_>> = vec![woken.as_fd()];
        fds.extend(
            reaping
                .iter()
                .filter_map(|reaping| reaping.child.pidfd.as_ref().map(AsFd::as_fd)),
        );
        match sys::poll_readable(&fds, timeout) {
            Ok(ready) => {
                if ready[0] {
                    // Resets the eventfd's count (non-blocking).
                    let _ = (&woken).read(&mut [0u8; 8]);
                }
            }
            Err(error) => {
                log::error!("processional: the reaper cannot wait: {error}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
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

#[cfg(test)]
// The children spawned here are reaped through `ChildProcess`, the code
// under test (and killed by `Guard` in teardown), not through std's `Child`.
#[allow(clippy::zombie_processes)]
mod tests {
    use super::*;
    use std::process::{ChildStdin, Stdio};

    /// The bound on every wait here: generous, finite.
    const PATIENCE: Duration = Duration::from_secs(60);

    /// Kills and reaps the child in teardown, if nobody did.
    struct Guard(Arc<ChildProcess>);

    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.signal(sys::SIGKILL);
            let _ = self.0.wait_timeout(PATIENCE);
        }
    }

    /// Takes charge of a spawned std child (with a pidfd or, to test the
    /// fallback, without).
    fn adopt(child: StdChild, pidfd: bool) -> Guard {
        let pid = child.id();
        Guard(Arc::new(if pidfd {
            ChildProcess::new(pid)
        } else {
            ChildProcess {
                pid,
                pidfd: None,
                status: Mutex::new(None),
            }
        }))
    }

    /// A child that exits (with code 3) once its stdin closes.
    fn until_stdin_closes(pidfd: bool) -> (Guard, ChildStdin) {
        let mut child = Command::new("sh")
            .args(["-c", "read line; exit 3"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let stdin = child.stdin.take().expect("piped");
        (adopt(child, pidfd), stdin)
    }

    /// A child that SIGTERM ends.
    fn sleeper() -> Guard {
        adopt(
            Command::new("sleep").arg("600").spawn().expect("spawn"),
            true,
        )
    }

    /// A child that ignores SIGTERM (only SIGKILL ends it), once it said so.
    fn ignoring_sigterm(pidfd: bool) -> Guard {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; exec sleep 600"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let mut ready = [0u8; 6];
        child
            .stdout
            .take()
            .expect("piped")
            .read_exact(&mut ready)
            .expect("the child says it ignores SIGTERM");
        assert_eq!(&ready, b"ready\n");
        adopt(child, pidfd)
    }

    /// Waits until the child is reaped (its /proc entry is gone) without
    /// reaping it ourselves; then the status the reaper stored.
    fn reaped_by_someone_else(child: &ChildProcess) -> ExitReason {
        let deadline = Instant::now() + PATIENCE;
        while std::path::Path::new(&format!("/proc/{}", child.pid)).exists() {
            assert!(
                Instant::now() < deadline,
                "child {} was not reaped",
                child.pid
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The reaper stored the status under the lock it reaped with.
        child.try_wait().expect("reaped")
    }

    #[test]
    fn a_child_gets_a_pidfd() {
        let (child, stdin) = until_stdin_closes(true);
        assert!(
            child.0.pidfd.is_some(),
            "this kernel has pidfds (Linux 5.3+)"
        );
        drop(stdin);
        assert_eq!(child.0.wait_timeout(PATIENCE), Some(ExitReason::Code(3)));
    }

    #[test]
    fn stopping_escalates_from_sigterm_to_sigkill() {
        assert_eq!(
            sleeper().0.stop_after(Duration::ZERO, PATIENCE),
            Termination::Terminated(ExitReason::Signal(sys::SIGTERM))
        );
        assert_eq!(
            ignoring_sigterm(true)
                .0
                .stop_after(Duration::ZERO, Duration::from_millis(50)),
            Termination::Killed(ExitReason::Signal(sys::SIGKILL))
        );
    }

    #[test]
    fn the_reaper_reaps_children_that_exit_by_themselves() {
        let children: Vec<(Guard, ChildStdin)> = (0..3).map(|_| until_stdin_closes(true)).collect();
        for (child, _) in &children {
            reap_in_background(child.0.clone(), None);
        }
        // In reverse order, so that the reaper sees a later child end first.
        for (child, stdin) in children.into_iter().rev() {
            drop(stdin);
            assert_eq!(reaped_by_someone_else(&child.0), ExitReason::Code(3));
        }
    }

    #[test]
    fn the_reaper_stops_children_sigterm_then_sigkill() {
        let gentle = sleeper();
        let stubborn = ignoring_sigterm(true);
        reap_in_background(gentle.0.clone(), Some(Duration::from_millis(50)));
        reap_in_background(stubborn.0.clone(), Some(Duration::from_millis(50)));
        assert_eq!(
            reaped_by_someone_else(&gentle.0),
            ExitReason::Signal(sys::SIGTERM)
        );
        assert_eq!(
            reaped_by_someone_else(&stubborn.0),
            ExitReason::Signal(sys::SIGKILL)
        );
    }

    #[test]
    fn without_pidfds_a_thread_per_child_reaps_it() {
        let (waiting, stdin) = until_stdin_closes(false);
        reap_in_background(waiting.0.clone(), None);
        let stubborn = ignoring_sigterm(false);
        reap_in_background(stubborn.0.clone(), Some(Duration::from_millis(50)));
        drop(stdin);
        assert_eq!(reaped_by_someone_else(&waiting.0), ExitReason::Code(3));
        assert_eq!(
            reaped_by_someone_else(&stubborn.0),
            ExitReason::Signal(sys::SIGKILL)
        );
    }
}
