//! Every OS call of the process runtime, wrapped once.
//!
//! The rest of the crate never names `libc`: it calls these functions with
//! safe types and gets `io::Result`s back, and uses the signal numbers below.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
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

/// Asks a process to stop; a spawned server removes its files first.
pub(crate) const SIGTERM: i32 = libc::SIGTERM;
/// Ends a process at once; it cannot be caught.
pub(crate) const SIGKILL: i32 = libc::SIGKILL;
/// The terminal hung up; a spawned server stops as for [`SIGTERM`].
pub(crate) const SIGHUP: i32 = libc::SIGHUP;
/// Interrupt from the terminal (Ctrl-C); a spawned server stops as for
/// [`SIGTERM`].
pub(crate) const SIGINT: i32 = libc::SIGINT;

/// This process's id.
pub(crate) fn pid() -> u32 {
    std::process::id()
}

/// Whether the calling thread is the process's main thread.
pub(crate) fn is_main_thread() -> bool {
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    tid as u32 == pid()
}

/// The parent's process id.
pub(crate) fn parent_pid() -> i32 {
    // SAFETY: getppid has no preconditions and cannot fail.
    unsafe { libc::getppid() }
}

/// This host's name, or `"unknown"`.
pub(crate) fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the pointer and length describe `buffer`, a live, writable
    // local that outlives the call; gethostname writes at most that many
    // bytes.
    if syscall!(unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) }).is_err() {
        return "unknown".to_owned();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// A duplicate of `fd` *without* close-on-exec, for a child to inherit.
pub(crate) fn duplicate_inheritable(fd: &impl AsFd) -> io::Result<OwnedFd> {
    let fd = fd.as_fd();
    // SAFETY: `fd` is borrowed, so it stays open for the call; F_DUPFD takes
    // an integer (the lowest number the duplicate may get) and no pointer.
    let duplicate = syscall!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 3) })?;
    // SAFETY: fcntl just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(duplicate) })
}

/// In a child that must die with its master: asks for `signal` when the
/// parent (thread) dies, then leaves at once if the parent already died
/// (before the request could take effect). Asking again replaces the signal.
pub(crate) fn die_with_parent(parent: i32, signal: i32) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_PDEATHSIG takes a signal number (checked by the kernel)
    // and no pointers; the unused arguments are zero, as prctl asks.
    syscall!(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) })?;
    if parent_pid() != parent {
        std::process::exit(1);
    }
    Ok(())
}

/// Sets the name of the calling thread, which for the main thread is the
/// process name `ps` and `top` show (`/proc/<pid>/comm`). The kernel keeps
/// 15 bytes; a NUL in `name` ends it early.
pub(crate) fn set_thread_name(name: &str) -> io::Result<()> {
    let mut buf = [0u8; 16];
    let len = name.len().min(buf.len() - 1);
    buf[..len].copy_from_slice(&name.as_bytes()[..len]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes
    // at the pointer: `buf` is 16 bytes and its last byte stays 0. The
    // unused arguments are zero, as prctl asks.
    syscall!(unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

/// The effective user id of this process: the owner of the files it creates.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// The write end of the pipe [`on_reported_signal`] writes to; -1 until
/// [`report_signals`] made it. It stays open for the life of the process.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// The handler of the signals [`report_signals`] takes over: writes the
/// signal number, as one byte, to [`SIGNAL_PIPE`]. Only async-signal-safe
/// calls, and `errno` is kept for the interrupted code.
extern "C" fn on_reported_signal(signal: libc::c_int) {
    // SAFETY: __errno_location returns the calling thread's errno slot,
    // valid for the life of the thread; reading and restoring it is what a
    // signal handler that makes calls must do.
    let errno = unsafe { *libc::__errno_location() };
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        let byte = signal as u8;
        // SAFETY: write is async-signal-safe; it reads one byte from a live
        // local into a descriptor that stays open. The write end is
        // non-blocking: on a full pipe it fails, and a byte already waits.
        let _ = unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Takes `signals` over for the rest of the process's life: instead of their
/// default action, each arrival writes the signal number (one byte) to the
/// returned pipe, for a thread of ours to act on. Only once per process.
pub(crate) fn report_signals(signals: &[i32]) -> io::Result<std::fs::File> {
    use std::os::fd::IntoRawFd;
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: `fds` is a live, writable array of two ints, as pipe2 requires;
    // O_CLOEXEC is a valid flag.
    syscall!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 just created both descriptors; nothing else owns them.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETFL takes an integer flag and no pointer; `write` is owned
    // here, so open for the call.
    syscall!(unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) })?;
    let raw = write.as_raw_fd();
    if SIGNAL_PIPE
        .compare_exchange(-1, raw, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "signals are already reported",
        ));
    }
    // The handler may write to it at any time from now on: never closed.
    let _ = write.into_raw_fd();
    for &signal in signals {
        // SAFETY: sigaction is plain old data; all-zero is a valid value
        // (no flags, empty mask), completed below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction =
            on_reported_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a live, writable sigset_t.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is a live, fully initialized sigaction whose
        // handler makes only async-signal-safe calls; a null old action is
        // allowed (we do not want it back).
        syscall!(unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) })?;
    }
    Ok(std::fs::File::from(read))
}

/// Ends the process as `signal` does by default (so its parent sees it
/// killed by that signal): restores the default action and raises it.
pub(crate) fn die_by_signal(signal: i32) -> ! {
    // SAFETY: setting SIG_DFL takes no pointer of ours; `signal` is a
    // signal number whose default action ends the process.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
    // SAFETY: raise has no preconditions; it is not blocked on this thread.
    unsafe { libc::raise(signal) };
    // Not reached for the signals we report; exit like a shell would say.
    std::process::exit(128 + signal)
}

/// Ignores SIGPIPE, as Rust's runtime does before `main` (a slave runs its
/// serving loop before `main`, so it must do it itself): writing to a closed
/// pipe then fails with `EPIPE` instead of killing the process.
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no preconditions; it is what
    // the Rust runtime does at startup.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// The size of a transparent huge page on x86-64 and aarch64 (4 KiB base).
pub(crate) const HUGE_PAGE: usize = 2 * 1024 * 1024;

/// Asks for transparent huge pages on the whole huge pages inside
/// `[start, start + len)`. Purely advisory: failures are ignored.
pub(crate) fn advise_huge_pages(start: *mut u8, len: usize) {
    let begin = (start as usize).next_multiple_of(HUGE_PAGE);
    let end = (start as usize + len) / HUGE_PAGE * HUGE_PAGE;
    if end > begin {
        // SAFETY: `begin..end` lies inside `start..start + len`, an
        // allocation the caller owns; MADV_HUGEPAGE changes no contents and
        // no protection, only how the kernel backs future faults.
        let _ = syscall!(unsafe {
            libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_HUGEPAGE)
        });
    }
}

/// Sets `FD_CLOEXEC` on a descriptor (an inherited one must not leak into
/// the processes this one spawns).
pub(crate) fn set_cloexec(fd: &impl AsFd) -> io::Result<()> {
    let fd = fd.as_fd();
    // SAFETY: `fd` is borrowed, so it stays open for the call; F_SETFD takes
    // an integer flag and no pointer, and changes only that descriptor's
    // flags.
    syscall!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(())
}

/// Sends `signal` to `pid`. `Ok(false)` if the process no longer exists.
pub(crate) fn kill(pid: u32, signal: i32) -> io::Result<bool> {
    // SAFETY: kill takes integers only and touches no memory of ours. (That
    // `pid` is still our child, not a reused number, is the caller's
    // concern: callers signal only children they have not reaped.)
    match syscall!(unsafe { libc::kill(pid as libc::pid_t, signal) }) {
        Ok(_) => Ok(true),
        Err(error) if error.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        Err(error) => Err(error),
    }
}

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitStatus {
    Exited(i32),
    Signaled(i32),
}

/// Reaps `pid` if it ended; `Ok(None)` while it runs (`block` false) .
pub(crate) fn wait_pid(pid: u32, block: bool) -> io::Result<Option<WaitStatus>> {
    let mut status: libc::c_int = 0;
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: `status` is a live, writable c_int, the place waitpid
        // writes the status to; the flags are valid waitpid flags.
        let waited = syscall!(unsafe { libc::waitpid(pid as libc::pid_t, &mut status, flags) });
        let result = match waited {
            Ok(result) => result,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if result == 0 {
            return Ok(None);
        }
        return Ok(Some(if libc::WIFSIGNALED(status) {
            WaitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            WaitStatus::Exited(libc::WEXITSTATUS(status))
        }));
    }
}

/// A process file descriptor for `pid`: it becomes readable once the
/// process has ended (Linux 5.3 and later). Only for a child of ours that
/// has not been reaped yet, so that the number still names it. Close-on-exec.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a process id and flags (none), no pointers.
    let fd = syscall!(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) })?;
    // SAFETY: the kernel just returned this new descriptor; nothing else
    // owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as std::os::fd::RawFd) })
}

/// A new eventfd (close-on-exec, non-blocking, counter 0): a descriptor to
/// wake a thread that polls, by writing a `u64` to it.
pub(crate) fn eventfd() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: eventfd takes an initial count and valid flags, no pointers.
    let fd = syscall!(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: the kernel just returned this new descriptor; nothing else
    // owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Waits until one of `fds` is readable (or hung up, or in error), or
/// `timeout` passes (`None`: no limit); tells which are. An interrupted
/// wait returns early with none ready.
pub(crate) fn poll_readable(
    fds: &[std::os::fd::BorrowedFd<'_>],
    timeout: Option<std::time::Duration>,
) -> io::Result<Vec<bool>> {
    let millis = match timeout {
        None => -1,
        // Round up, so that a short wait does not become a busy loop.
        Some(timeout) => {
            timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
        }
    };
    let mut entries: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `entries` is a live, writable array of `entries.len()`
    // pollfds, each naming a descriptor borrowed (so open) for the call.
    let polled = syscall!(unsafe {
        libc::poll(entries.as_mut_ptr(), entries.len() as libc::nfds_t, millis)
    });
    match polled {
        Ok(_) => Ok(entries.iter().map(|entry| entry.revents != 0).collect()),
        Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(vec![false; fds.len()]),
        Err(error) => Err(error),
    }
}

/// Blocks until the child `pid` has ended, without reaping it (so that
/// [`wait_pid`] then collects its status). Not interrupted by signals.
pub(crate) fn wait_for_exit(pid: u32) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is plain old data; all-zero is a valid value for
        // waitid to overwrite.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a live, writable siginfo_t; P_PID with a pid and
        // valid flags. WNOWAIT leaves the child waitable.
        let waited = syscall!(unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        });
        match waited {
            Ok(_) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
}

/// One loadable segment of the main executable, as mapped in this process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LoadedSegment {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) executable: bool,
}

/// The main executable's image in memory: its load segments, the ranges
/// that are read-only once the loader is done, and its GNU build id, read
/// from the program headers the dynamic loader keeps.
#[derive(Debug, Default)]
pub(crate) struct ExecutableImage {
    pub(crate) segments: Vec<LoadedSegment>,
    /// Load segments mapped without write permission, and the `PT_GNU_RELRO`
    /// ranges the loader makes read-only after relocating them: bytes whose
    /// content the build fixed, which no code of this process can change.
    pub(crate) read_only: Vec<std::ops::Range<usize>>,
    pub(crate) build_id: Option<Vec<u8>>,
}

/// Reads the image of the object that contains `address` (the main executable
/// when `address` is one of our own statics).
pub(crate) fn executable_image(address: usize) -> ExecutableImage {
    struct Search {
        address: usize,
        found: Option<ExecutableImage>,
    }

    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut Search` passed to dl_iterate_phdr below,
        // alive and exclusively ours for the duration of the iteration.
        let search = unsafe { &mut *data.cast::<Search>() };
        // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of
        // the callback.
        let info = unsafe { &*info };
        let base = info.dlpi_addr as usize;
        let headers: &[libc::Elf64_Phdr] = if info.dlpi_phdr.is_null() {
            &[]
        } else {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers that
            // stay mapped while the object is loaded (it is: we are in it).
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) }
        };
        let mut image = ExecutableImage::default();
        for header in headers {
            let start = base + header.p_vaddr as usize;
            let end = start + header.p_memsz as usize;
            if header.p_type == libc::PT_LOAD {
                image.segments.push(LoadedSegment {
                    start,
                    end,
                    executable: header.p_flags & libc::PF_X != 0,
                });
                if header.p_flags & libc::PF_W == 0 {
                    image.read_only.push(start..end);
                }
            }
            if header.p_type == libc::PT_GNU_RELRO {
                image.read_only.push(start..end);
            }
        }
        if !image
            .segments
            .iter()
            .any(|s| (s.start..s.end).contains(&search.address))
        {
            return 0;
        }
        for header in headers {
            if header.p_type == libc::PT_NOTE {
                let start = base + header.p_vaddr as usize;
                // SAFETY: a PT_NOTE segment lies inside a PT_LOAD segment of this
                // loaded object, so its `p_memsz` bytes are mapped and readable.
                let notes = unsafe {
                    std::slice::from_raw_parts(start as *const u8, header.p_memsz as usize)
                };
                if let Some(id) = find_build_id(notes) {
                    image.build_id = Some(id.to_vec());
                }
            }
        }
        search.found = Some(image);
        1
    }

    let mut search = Search {
        address,
        found: None,
    };
    // SAFETY: `visit` only reads what the loader hands it and writes through
    // `data`, which points to `search`, alive for the whole call.
    unsafe {
        libc::dl_iterate_phdr(Some(visit), (&mut search as *mut Search).cast());
    }
    search.found.unwrap_or_default()
}

/// Finds the NT_GNU_BUILD_ID descriptor in a sequence of ELF notes.
fn find_build_id(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let align4 = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let word = |i: usize| u32::from_ne_bytes(notes[i..i + 4].try_into().expect("4 bytes"));
        let (name_size, desc_size, kind) = (word(0) as usize, word(4) as usize, word(8));
        let name_end = 12 + align4(name_size);
        let desc_end = name_end.checked_add(align4(desc_size))?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && &notes[12..12 + name_size] == b"GNU\0" {
            return Some(&notes[name_end..name_end + desc_size]);
        }
        notes = &notes[desc_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    static PROBE: u8 = 0;

    #[test]
    fn the_image_containing_a_static_has_segments() {
        let image = executable_image(&PROBE as *const u8 as usize);
        assert!(image.segments.iter().any(|s| s.executable));
        assert!(
            image
                .segments
                .iter()
                .any(|s| (s.start..s.end).contains(&(&PROBE as *const u8 as usize)))
        );
    }

    #[test]
    fn build_id_note_is_parsed() {
        let mut notes = Vec::new();
        notes.extend_from_slice(&4u32.to_ne_bytes());
        notes.extend_from_slice(&3u32.to_ne_bytes());
        notes.extend_from_slice(&3u32.to_ne_bytes());
        notes.extend_from_slice(b"GNU\0");
        notes.extend_from_slice(&[1, 2, 3, 0]);
        assert_eq!(find_build_id(&notes), Some(&[1u8, 2, 3][..]));
        assert_eq!(find_build_id(&notes[..10]), None);
    }

    #[test]
    fn waiting_for_a_missing_child_is_an_error() {
        assert!(wait_pid(u32::MAX >> 2, false).is_err());
    }
}
