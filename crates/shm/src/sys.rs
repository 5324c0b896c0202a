//! The operating-system calls this crate makes, wrapped once.
//!
//! Everything else in the crate goes through these functions; each one turns the C convention
//! (`-1` and `errno`) into an [`io::Result`], and the errno values the crate tells apart are
//! read here too (see [`SealRefusal`], [`is_permission_denied`]): no other module names `libc`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

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

/// Whether the kernel enforces file seals (`F_ADD_SEALS`) on our segments.
///
/// Where it does not, sealing is recorded by this crate only and receivers cannot verify it.
pub(crate) const SEALS_ENFORCED: bool = cfg!(target_os = "linux");

/// Seal bits, as the kernel spells them (`F_SEAL_*`); zero where sealing does not exist.
pub(crate) mod seal_bits {
    #[cfg(target_os = "linux")]
    mod values {
        pub(crate) const SEAL: u32 = libc::F_SEAL_SEAL as u32;
        pub(crate) const SHRINK: u32 = libc::F_SEAL_SHRINK as u32;
        pub(crate) const GROW: u32 = libc::F_SEAL_GROW as u32;
        pub(crate) const WRITE: u32 = libc::F_SEAL_WRITE as u32;
        pub(crate) const FUTURE_WRITE: u32 = libc::F_SEAL_FUTURE_WRITE as u32;
        pub(crate) const EXEC: u32 = libc::F_SEAL_EXEC as u32;
    }
    #[cfg(not(target_os = "linux"))]
    mod values {
        // The Linux values, so that `Seals` stays meaningful as an in-process record.
        pub(crate) const SEAL: u32 = 0x1;
        pub(crate) const SHRINK: u32 = 0x2;
        pub(crate) const GROW: u32 = 0x4;
        pub(crate) const WRITE: u32 = 0x8;
        pub(crate) const FUTURE_WRITE: u32 = 0x10;
        pub(crate) const EXEC: u32 = 0x20;
    }
    pub(crate) use values::*;
}

/// Creates an anonymous, sealable, close-on-exec memory file of size zero.
///
/// On Linux this is `memfd_create`: the file lives only as long as a descriptor or a mapping of
/// it does, and never has a name in any file system (nothing appears in `/dev/shm`).
#[cfg(target_os = "linux")]
pub(crate) fn anonymous_file() -> io::Result<OwnedFd> {
    use std::sync::atomic::{AtomicBool, Ordering};

    // `MFD_NOEXEC_SEAL` (Linux 6.3) makes the file non-executable for good and keeps newer
    // kernels from warning about memfds created without an exec policy; older kernels reject
    // the flag with EINVAL, after which we stop asking for it.
    const MFD_NOEXEC_SEAL: libc::c_uint = 0x0008;
    static NOEXEC_SEAL_REJECTED: AtomicBool = AtomicBool::new(false);

    let name = c"processional-shm";
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if !NOEXEC_SEAL_REJECTED.load(Ordering::Relaxed) {
        // SAFETY: `name` is a NUL-terminated static string, so it outlives the call; the flags
        // are `memfd_create` flags (an unknown one is refused with EINVAL, handled below).
        match syscall!(unsafe { libc::memfd_create(name.as_ptr(), base | MFD_NOEXEC_SEAL) }) {
            // SAFETY: `memfd_create` returned a new descriptor that nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                NOEXEC_SEAL_REJECTED.store(true, Ordering::Relaxed);
            }
            Err(err) => return Err(err),
        }
    }
    // SAFETY: `name` is a NUL-terminated static string, so it outlives the call; the flags are
    // valid `memfd_create` flags on every kernel with memfds.
    let fd = syscall!(unsafe { libc::memfd_create(name.as_ptr(), base) })?;
    // SAFETY: `memfd_create` returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates an anonymous, close-on-exec memory file of size zero.
///
/// Elsewhere than Linux: `shm_open` of a fresh random name followed at once by `shm_unlink`, so
/// the name exists only between those two calls.
#[cfg(not(target_os = "linux"))]
pub(crate) fn anonymous_file() -> io::Result<OwnedFd> {
    use std::ffi::CString;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut attempts = 0;
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        // macOS limits these names to 31 bytes.
        let name = format!("/pshm.{:x}.{:x}.{:x}", std::process::id(), count, nanos);
        let name = CString::new(name).map_err(io::Error::other)?;
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
        // SAFETY: `name` is a NUL-terminated CString that outlives the call; flags and mode are
        // valid `shm_open` arguments.
        match syscall!(unsafe { libc::shm_open(name.as_ptr(), flags, 0o600 as libc::c_uint) }) {
            Ok(fd) => {
                // SAFETY: `shm_open` returned a new descriptor that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: `name` is a NUL-terminated CString that outlives the call.
                syscall!(unsafe { libc::shm_unlink(name.as_ptr()) })?;
                return Ok(fd);
            }
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) && attempts < 16 => attempts += 1,
            Err(err) => return Err(err),
        }
    }
}

/// Sets the size of the file behind `fd` (`ftruncate`), retrying on `EINTR`.
pub(crate) fn set_file_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    loop {
        // SAFETY: `fd` is borrowed, so it stays open for the call; ftruncate takes integers
        // only and touches no memory of ours.
        match syscall!(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }) {
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

/// What `fstat` tells us about a descriptor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileStat {
    /// `st_mode`: file type and permissions.
    pub(crate) mode: u32,
    /// `st_size` in bytes.
    pub(crate) size: u64,
}

impl FileStat {
    /// Whether the descriptor refers to a regular file (memfds and `shm_open` objects are).
    #[allow(clippy::unnecessary_cast)] // `mode_t` is u16 on some platforms.
    pub(crate) fn is_regular_file(&self) -> bool {
        self.mode & (libc::S_IFMT as u32) == libc::S_IFREG as u32
    }
}

/// `fstat` of a descriptor.
pub(crate) fn file_stat(fd: BorrowedFd<'_>) -> io::Result<FileStat> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is borrowed, so it stays open for the call; `stat` points to live, writable
    // memory of the right type and size for `fstat` to fill.
    syscall!(unsafe { libc::fstat(fd.as_raw_fd(), stat.as_mut_ptr()) })?;
    // SAFETY: `fstat` succeeded, so it initialized the whole structure.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // `mode_t` is u16 on some platforms.
    let mode = stat.st_mode as u32;
    Ok(FileStat {
        mode,
        // A negative size would be a kernel bug; read it as zero rather than wrap around.
        size: u64::try_from(stat.st_size).unwrap_or(0),
    })
}

/// The seals set on a file (`F_GET_SEALS`), or `None` when the file cannot carry seals.
#[cfg(target_os = "linux")]
pub(crate) fn file_seals(fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    // SAFETY: `fd` is borrowed, so it stays open for the call; F_GET_SEALS takes no further
    // argument and only reads the seals.
    match syscall!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) }) {
        Ok(seals) => Ok(Some(seals as u32)),
        // Files outside tmpfs/hugetlbfs, and memfds created without MFD_ALLOW_SEALING report
        // F_SEAL_SEAL instead; EINVAL means the file system has no seals at all.
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(err) => Err(err),
    }
}

/// The seals set on a file: never any where the kernel has no seals.
#[cfg(not(target_os = "linux"))]
pub(crate) fn file_seals(_fd: BorrowedFd<'_>) -> io::Result<Option<u32>> {
    Ok(None)
}

/// Adds seals to a file (`F_ADD_SEALS`).
///
/// Fails with `EBUSY` when `F_SEAL_WRITE` is asked for while a writable shared mapping exists,
/// with `EPERM` when the file already carries `F_SEAL_SEAL`, with `EINVAL` when the file cannot
/// carry seals or the kernel does not know one of the bits.
#[cfg(target_os = "linux")]
pub(crate) fn add_file_seals(fd: BorrowedFd<'_>, seals: u32) -> io::Result<()> {
    // SAFETY: `fd` is borrowed, so it stays open for the call; F_ADD_SEALS takes an int bit
    // set, which the kernel validates, and no pointer.
    syscall!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals as libc::c_int) })
        .map(drop)
}

/// Why the kernel refused [`add_file_seals`], for the refusals the crate reports apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SealRefusal {
    /// `EBUSY`: `F_SEAL_WRITE` was asked for while a writable shared mapping exists.
    WritableMappingAlive,
    /// `EPERM`: the file already carries `F_SEAL_SEAL`.
    Locked,
    /// `EINVAL`: the file cannot carry seals, or the kernel does not know a bit.
    NotSealable,
}

/// What an error of [`add_file_seals`] means, if it is one the crate tells apart.
pub(crate) fn seal_refusal(error: &io::Error) -> Option<SealRefusal> {
    match error.raw_os_error()? {
        libc::EBUSY => Some(SealRefusal::WritableMappingAlive),
        libc::EPERM => Some(SealRefusal::Locked),
        libc::EINVAL => Some(SealRefusal::NotSealable),
        _ => None,
    }
}

/// Whether a failed writable shared `mmap` was refused because the file is write-sealed
/// (`EPERM`).
pub(crate) fn is_write_sealed_refusal(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EPERM)
}

/// Adds seals to a file: unsupported where the kernel has no seals.
#[cfg(not(target_os = "linux"))]
pub(crate) fn add_file_seals(_fd: BorrowedFd<'_>, _seals: u32) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// Replaces the mapping at `addr` with a fresh mapping of `fd` (from offset 0), at the same
/// address, in one `mmap(MAP_FIXED)` call: shared and writable, or private and read-only.
///
/// The pages are those of the same file (a private mapping that is never written reads the
/// file's pages), so the memory reads the same before and after. Unlike `mprotect`, this drops
/// the kernel's record that the mapping may be written, as `F_SEAL_WRITE` requires: a shared
/// mapping of a descriptor opened for writing counts as writable even without `PROT_WRITE`.
///
/// # Safety
///
/// `addr` must be the page-aligned start of a mapping of `fd` from offset 0, exactly
/// `len` bytes long (rounded up to whole pages), that the caller owns. If `writable` is false,
/// nothing may write through the mapping afterwards.
pub(crate) unsafe fn replace_mapping(
    addr: *mut u8,
    len: usize,
    writable: bool,
    fd: BorrowedFd<'_>,
) -> io::Result<()> {
    let (prot, flags) = if writable {
        (
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED,
        )
    } else {
        (libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_FIXED)
    };
    // SAFETY: per this function's contract `addr..addr+len` is a mapping the caller owns, so
    // replacing it with MAP_FIXED affects no other memory; `fd` is live for the call.
    let res = unsafe { libc::mmap(addr.cast(), len, prot, flags, fd.as_raw_fd(), 0) };
    if res == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        debug_assert_eq!(res.cast::<u8>(), addr);
        Ok(())
    }
}

/// The size of a memory page.
pub(crate) fn page_size() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
    match PAGE_SIZE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf takes an integer name and no pointer; it has no preconditions.
            let size = syscall!(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
            let size = usize::try_from(size)
                .ok()
                .filter(|s| s.is_power_of_two())
                .unwrap_or(4096);
            PAGE_SIZE.store(size, Ordering::Relaxed);
            size
        }
        size => size,
    }
}
