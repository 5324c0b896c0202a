//! Peers in other processes: this bench executable, started again in a role.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Names the role of a bench child; unset in the bench itself.
pub const CHILD_ROLE_ENV: &str = "PROCESSIONAL_BENCH_CHILD";
/// The number of the descriptor a child inherits, see [`inherited_fd`].
pub const CHILD_FD_ENV: &str = "PROCESSIONAL_BENCH_FD";
/// An address a child connects to, when its role needs one.
pub const CHILD_ADDR_ENV: &str = "PROCESSIONAL_BENCH_ADDR";
/// A key a child authenticates with (hex), when its role needs one.
pub const CHILD_KEY_ENV: &str = "PROCESSIONAL_BENCH_KEY";

/// What a child role returns; an error makes the child exit with status 1.
pub type ChildResult = Result<(), Box<dyn std::error::Error>>;

/// Something a bench child can be asked to do.
#[derive(Debug, Clone, Copy)]
pub struct ChildRole {
    /// The value of [`CHILD_ROLE_ENV`] that selects it.
    pub name: &'static str,
    /// Runs the role; the child exits when it returns.
    pub run: fn() -> ChildResult,
}

/// If this process is a bench child, runs the role [`CHILD_ROLE_ENV`] names
/// and exits; otherwise returns at once. Call it first thing in `main`.
pub fn run_child_if_requested(roles: &[ChildRole]) {
    let Some(name) = std::env::var_os(CHILD_ROLE_ENV) else {
        return;
    };
    let name = name.to_string_lossy();
    let code = match roles.iter().find(|role| role.name == name) {
        Some(role) => match (role.run)() {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("bench child `{name}` failed: {error}");
                1
            }
        },
        None => {
            let known: Vec<&str> = roles.iter().map(|role| role.name).collect();
            eprintln!("bench child: unknown role `{name}` (known: {known:?})");
            2
        }
    };
    std::process::exit(code);
}

/// A child process running this executable in a role. Dropping it kills the
/// child and reaps it, so no bench leaves a process behind.
#[derive(Debug)]
pub struct PeerProcess {
    child: Child,
    role: &'static str,
}

impl PeerProcess {
    /// Starts this executable in `role` with the extra environment `env`.
    /// When `inherit` is given, the child inherits that descriptor and finds
    /// it with [`inherited_fd`]; the caller closes its own copy afterwards.
    pub fn spawn(
        role: &'static str,
        env: &[(&str, &str)],
        inherit: Option<BorrowedFd<'_>>,
    ) -> io::Result<Self> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .env(CHILD_ROLE_ENV, role)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(fd) = inherit {
            command.env(CHILD_FD_ENV, fd.as_raw_fd().to_string());
            keep_open_across_exec(&mut command, fd);
        }
        let child = command.spawn()?;
        Ok(PeerProcess { child, role })
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// An error if the child has already exited.
    pub fn check_alive(&mut self) -> io::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(io::Error::other(format!(
                "bench child `{}` exited early ({status})",
                self.role
            ))),
        }
    }

    /// Repeats `attempt` while it fails with `WouldBlock`, until it succeeds,
    /// fails otherwise, the child exits, or `timeout` passes. For accepting
    /// the child's connection on a non-blocking listener.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut attempt: impl FnMut() -> io::Result<T>,
    ) -> io::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            match attempt() {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                result => return result,
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "bench child `{}` did not connect within {timeout:?}",
                        self.role
                    ),
                ));
            }
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        // Errors mean the child is already gone, which is the goal.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clears `FD_CLOEXEC` on `fd` in the child `command` starts, so that the
/// descriptor survives `exec` there (and only there).
fn keep_open_across_exec(command: &mut Command, fd: BorrowedFd<'_>) {
    let fd: RawFd = fd.as_raw_fd();
    let clear_cloexec = move || {
        // `fd` is open in the child because the caller keeps it open in the
        // parent until `spawn` returns.
        crate::sys::set_cloexec(fd, false)
    };
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe work is allowed: `sys::set_cloexec` makes one `fcntl`
    // call (async-signal-safe per POSIX), reads `errno` on failure, takes no
    // lock and allocates nothing.
    unsafe {
        command.pre_exec(clear_cloexec);
    }
}

/// Set once the inherited descriptor has been taken, so it has one owner.
static FD_TAKEN: AtomicBool = AtomicBool::new(false);

/// The descriptor the parent passed with [`PeerProcess::spawn`]; callable
/// once per process.
pub fn inherited_fd() -> io::Result<OwnedFd> {
    let value = std::env::var(CHILD_FD_ENV)
        .map_err(|_| io::Error::other(format!("{CHILD_FD_ENV} is not set")))?;
    let fd: RawFd = value
        .parse()
        .map_err(|_| io::Error::other(format!("{CHILD_FD_ENV}={value} is not a descriptor")))?;
    if fd < 0 {
        return Err(io::Error::other(format!(
            "{CHILD_FD_ENV}={value} is negative"
        )));
    }
    if FD_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other(
            "the inherited descriptor was already taken",
        ));
    }
    // Fails with EBADF if `fd` is not open. Setting FD_CLOEXEC keeps it
    // from leaking into our own children.
    crate::sys::set_cloexec(fd, true)?;
    // SAFETY: the descriptor is open (checked just above); the parent passed
    // it to this process alone, nothing else here owns it, and `FD_TAKEN`
    // makes this the only `OwnedFd` ever built from it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
