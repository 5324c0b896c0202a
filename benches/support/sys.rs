//! The OS calls of the bench support, wrapped once (the workspace's rule:
//! no `libc` outside `sys` modules).

use std::io;
use std::os::fd::RawFd;

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

/// Sets or clears `FD_CLOEXEC` on the descriptor number `fd`.
///
/// Async-signal-safe: one `fcntl` call and, on failure, a read of `errno`;
/// no lock, no allocation. So it may run between `fork` and `exec`.
pub(crate) fn set_cloexec(fd: RawFd, cloexec: bool) -> io::Result<()> {
    let flags = if cloexec { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: `fcntl(F_SETFD)` takes an integer flag and no pointer: it only
    // changes the descriptor flags of `fd`, and fails with EBADF if `fd` is
    // not open. No memory is involved.
    syscall!(unsafe { libc::fcntl(fd, libc::F_SETFD, flags) })?;
    Ok(())
}
