//! Every OS call of the state crate: process groups, so that stopping a
//! context's process stops what it spawned too.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

/// A process file descriptor for `pid` (Linux 5.3 and later): it names
/// that very process, and no other once the number is reused. Only for a
/// child of ours not reaped yet, so that the number still names it.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a process id and flags (none), no pointers.
    let fd = syscall!(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this new descriptor; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` (0: none, a check) to the process of `pidfd`. `Ok(false)`
/// once it has been reaped; a zombie still counts (its pid, and so the
/// process group it leads, is still reserved).
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<bool> {
    // SAFETY: pidfd_send_signal takes a descriptor we hold, a signal, a null
    // siginfo (the kernel fills in the usual one) and no flags.
    let sent = syscall!(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    });
    match sent {
        Ok(_) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(error) => Err(error),
    }
}

/// Whether group `group` still has a process (zombies included).
pub(crate) fn group_exists(group: u32) -> bool {
    signal_group(group, 0).unwrap_or(false)
}
