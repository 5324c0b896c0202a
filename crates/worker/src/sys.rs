//! Every OS call of the worker crate, wrapped once: taking SIGTERM over in
//! a remote-worker server, so that it stops its workers before it dies.
//!
//! The rest of the crate never names `libc`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

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

/// The write end of the pipe SIGTERM is reported on, once taken over.
static SIGTERM_PIPE: AtomicI32 = AtomicI32::new(-1);

/// The SIGTERM handler: writes one byte to [`SIGTERM_PIPE`]. Only
/// async-signal-safe calls, and `errno` is kept for the interrupted code.
extern "C" fn on_sigterm(_: libc::c_int) {
    // SAFETY: __errno_location returns the calling thread's errno slot,
    // valid for the life of the thread; reading and restoring it is what a
    // signal handler that makes calls must do.
    let errno = unsafe { *libc::__errno_location() };
    let fd = SIGTERM_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = 15u8;
        // SAFETY: write is async-signal-safe; it reads one byte from a live
        // local into a descriptor that stays open. The write end is
        // non-blocking: on a full pipe it fails, and a byte already waits.
        let _ = unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Takes SIGTERM over for the rest of the process's life: each arrival
/// writes a byte to the returned pipe, for a thread of ours to act on.
/// Only once per process.
///
/// Leaves a SIGTERM that is not at its default action alone (a spawned
/// `server()` removes its files on it): `Ok(None)` then.
pub(crate) fn report_sigterm() -> io::Result<Option<std::fs::File>> {
    // SAFETY: sigaction is plain old data; all-zero is a valid value.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries; `current` is live and writable.
    syscall!(unsafe { libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut current) })?;
    if current.sa_sigaction != libc::SIG_DFL {
        return Ok(None);
    }
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: `fds` is a live, writable array of two ints, as pipe2 requires;
    // O_CLOEXEC is a valid flag.
    syscall!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 just created both descriptors; nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETFL takes an integer flag and no pointer; `write` is owned
    // here, so open for the call.
    syscall!(unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) })?;
    if SIGTERM_PIPE
        .compare_exchange(-1, write.as_raw_fd(), Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "SIGTERM is already reported",
        ));
    }
    // The handler may write to it at any time from now on: never closed.
    let _ = write.into_raw_fd();
    // SAFETY: sigaction is plain old data; all-zero is a valid value (no
    // flags, empty mask), completed below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigterm as extern "C" fn(libc::c_int) as libc::sighandler_t;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action.sa_mask` is a live, writable sigset_t.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: `action` is a live, fully initialized sigaction whose handler
    // makes only async-signal-safe calls; a null old action is allowed.
    syscall!(unsafe { libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) })?;
    Ok(Some(std::fs::File::from(read)))
}

/// Ends the process as SIGTERM does by default (so its parent sees it
/// killed by that signal): restores the default action and raises it.
pub(crate) fn die_by_sigterm() -> ! {
    // SAFETY: setting SIG_DFL takes no pointer of ours.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_DFL) };
    // SAFETY: raise has no preconditions; SIGTERM is not blocked here.
    unsafe { libc::raise(libc::SIGTERM) };
    // Not reached; exit like a shell would say.
    std::process::exit(128 + libc::SIGTERM)
}
