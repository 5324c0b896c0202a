//! Every OS call of the state crate: process groups, so that stopping a
//! context's process stops what it spawned too.

use std::io;

/// Turns the `-1`-means-`errno` convention of a libc call into an
/// `io::Result`. The argument is the (unsafe) call itself, so each call site
/// keeps its own `// SAFETY:` comment.
macro_rules! syscall {
    ($call:expr) => {{
        let result = $call;
        if result == -1 {
            Err(::std::io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }};
}

/// Asks a process to stop.
pub(crate) const SIGTERM: i32 = libc::SIGTERM;
/// Ends a process at once.
pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// Makes the calling process the leader of a new process group (its id is
/// the process id), which its children join unless they leave it.
pub(crate) fn become_group_leader() -> io::Result<()> {
    // SAFETY: setpgid takes two integers and touches no memory of ours.
    syscall!(unsafe { libc::setpgid(0, 0) })?;
    Ok(())
}

/// Sends `signal` to every process of group `group`. `Ok(false)` if the
/// group has no process left.
pub(crate) fn signal_group(group: u32, signal: i32) -> io::Result<bool> {
    let Ok(group) = libc::pid_t::try_from(group) else {
        return Ok(false);
    };
    if group <= 1 {
        return Ok(false);
    }
    // SAFETY: kill takes two integers; a negative pid names a group.
    match syscall!(unsafe { libc::kill(-group, signal) }) {
        Ok(_) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Sends `signal` to process `pid`. `Ok(false)` if it is gone.
pub(crate) fn signal_process(pid: u32, signal: i32) -> io::Result<bool> {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return Ok(false);
    };
    if pid <= 1 {
        return Ok(false);
    }
    // SAFETY: kill takes two integers.
    match syscall!(unsafe { libc::kill(pid, signal) }) {
        Ok(_) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Whether group `group` still has a process (zombies included).
pub(crate) fn group_exists(group: u32) -> bool {
    signal_group(group, 0).unwrap_or(false)
}
