//! Every OS call of the crate, each wrapped once.
//!
//! The rest of the crate never writes `unsafe`: it calls these functions with
//! safe types (`BorrowedFd`, slices, `Duration`) and gets `io::Result`s back.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::time::Duration;

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

/// The most file descriptors one `SCM_RIGHTS` message may carry on Linux
/// (`SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = 253;

/// Bytes of control buffer needed for [`MAX_FDS`] descriptors, rounded up to
/// whole `u64`s so the buffer is aligned for `cmsghdr`.
const CMSG_WORDS: usize = cmsg_space(MAX_FDS * mem::size_of::<RawFd>()).div_ceil(8);

/// `CMSG_SPACE` as a const fn (the libc one is not const on every version).
const fn cmsg_space(data: usize) -> usize {
    let align = mem::size_of::<usize>();
    let header = (mem::size_of::<libc::cmsghdr>() + align - 1) & !(align - 1);
    header + ((data + align - 1) & !(align - 1))
}

/// Retries `call` while it fails with `EINTR`.
fn retry<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Wraps a descriptor a call just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful call that creates a new
    // descriptor (socket, accept4, socketpair); nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// A connected pair of unix stream sockets, both close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: `fds` is a valid, writable array of two ints, as socketpair
    // requires; the flags and domain are plain constants.
    syscall!(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// A new unbound, unconnected unix stream socket, close-on-exec.
pub(crate) fn unix_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes only integer arguments.
    let fd = syscall!(unsafe {
        libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
    })?;
    Ok(owned(fd))
}

/// A unix socket name: a file path or a name in Linux's abstract namespace.
#[derive(Clone, Copy, Debug)]
pub(crate) enum UnixName<'a> {
    /// A path in the file system.
    Path(&'a Path),
    /// A name in the abstract namespace (without the leading NUL).
    Abstract(&'a [u8]),
}

/// A `sockaddr_un` and its length.
pub(crate) struct UnixAddr {
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl UnixAddr {
    /// Builds the address of `name`; fails if it does not fit `sun_path` or
    /// a path contains a NUL byte.
    pub(crate) fn new(name: UnixName<'_>) -> io::Result<UnixAddr> {
        // SAFETY: sockaddr_un is plain old data (integers and a byte array);
        // all-zero is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let capacity = addr.sun_path.len();
        let base = mem::offset_of!(libc::sockaddr_un, sun_path);
        let len = match name {
            UnixName::Path(path) => {
                let bytes = path.as_os_str().as_bytes();
                if bytes.is_empty() || bytes.contains(&0) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "unix socket path is empty or contains a NUL byte",
                    ));
                }
                // Keep room for the terminating NUL.
                if bytes.len() >= capacity {
                    return Err(too_long(bytes.len(), capacity - 1));
                }
                for (slot, byte) in addr.sun_path.iter_mut().zip(bytes) {
                    *slot = *byte as libc::c_char;
                }
                base + bytes.len() + 1
            }
            UnixName::Abstract(bytes) => {
                if bytes.len() >= capacity {
                    return Err(too_long(bytes.len(), capacity - 1));
                }
                // sun_path[0] stays 0: that is what makes the name abstract.
                for (slot, byte) in addr.sun_path[1..].iter_mut().zip(bytes) {
                    *slot = *byte as libc::c_char;
                }
                base + 1 + bytes.len()
            }
        };
        Ok(UnixAddr {
            addr,
            len: len as libc::socklen_t,
        })
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        (&raw const self.addr).cast()
    }
}

fn too_long(len: usize, max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("unix socket name is {len} bytes long; at most {max} fit"),
    )
}

/// Binds `fd` to `addr`.
pub(crate) fn bind(fd: BorrowedFd<'_>, addr: &UnixAddr) -> io::Result<()> {
    // SAFETY: `addr.as_ptr()` points to a live sockaddr_un of which the first
    // `addr.len` bytes are initialized; `fd` is an open descriptor.
    syscall!(unsafe { libc::bind(fd.as_raw_fd(), addr.as_ptr(), addr.len) })?;
    Ok(())
}

/// The largest backlog [`listen`] may ask for (`SOMAXCONN`).
pub(crate) const MAX_BACKLOG: i32 = libc::SOMAXCONN;

/// Marks `fd` as a listening socket.
pub(crate) fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: integer arguments only; `fd` is open.
    syscall!(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(())
}

/// Connects the unix socket `fd` to `addr`, blocking (bounded by the send
/// timeout of the socket, see [`set_send_timeout`]).
pub(crate) fn connect(fd: BorrowedFd<'_>, addr: &UnixAddr) -> io::Result<()> {
    let mut first = true;
    loop {
        // SAFETY: as for `bind`: a valid address of `addr.len` bytes and an
        // open descriptor.
        match syscall!(unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), addr.len) }) {
            Ok(_) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => first = false,
            // A retry after EINTR may find the connection already made.
            Err(error) if !first && error.raw_os_error() == Some(libc::EISCONN) => return Ok(()),
            Err(error) => return Err(error),
        }
    }
}

/// Whether a failed [`connect`] found nobody listening (`ECONNREFUSED`): on a
/// socket file, one left behind by a listener that is gone.
pub(crate) fn is_connection_refused(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ECONNREFUSED)
}

/// Whether a failed blocking [`connect`] gave up when the send timeout
/// ([`set_send_timeout`]) ran out, the listener's backlog being full
/// (`EAGAIN`, or `EINPROGRESS`).
pub(crate) fn is_connect_timeout(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EINPROGRESS))
}

/// Whether a failed [`accept`] lost only the connection it was taking
/// (`ECONNABORTED`: the peer gave up while queued; `EPROTO`; `EPERM`: a
/// firewall refused it), so accepting may go on at once.
pub(crate) fn is_lost_connection_on_accept(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM)
    )
}

/// Accepts one connection on the listening socket `fd` (blocking unless `fd`
/// is non-blocking); the new descriptor is close-on-exec, and non-blocking
/// if asked.
pub(crate) fn accept(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::SOCK_CLOEXEC;
    if nonblocking {
        flags |= libc::SOCK_NONBLOCK;
    }
    retry(|| {
        // SAFETY: null address pointers are allowed (we do not want the peer
        // address); `fd` is open.
        syscall!(unsafe { libc::accept4(fd.as_raw_fd(), ptr::null_mut(), ptr::null_mut(), flags) })
    })
    .map(owned)
}

/// Sets the permission bits of the inode behind `fd`. On an unbound unix
/// socket this decides the mode of the file `bind` creates.
pub(crate) fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: integer arguments only; `fd` is open.
    syscall!(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
    Ok(())
}

/// Switches `O_NONBLOCK` on or off.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    let mut value = libc::c_int::from(nonblocking);
    // SAFETY: FIONBIO reads one c_int through the pointer, which points to a
    // live local.
    syscall!(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONBIO, &mut value) })?;
    Ok(())
}

fn setsockopt<T>(fd: BorrowedFd<'_>, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of exactly the size we pass; the
    // callers pick `T` to match what the option expects.
    syscall!(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<c_void>(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn getsockopt<T: Copy>(fd: BorrowedFd<'_>, level: i32, name: i32, mut value: T) -> io::Result<T> {
    let mut len = mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is a live, writable `T` and `len` holds its size; the
    // kernel writes at most `len` bytes. Callers pick `T` to match the option.
    syscall!(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast::<c_void>(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Asks for a send buffer of `bytes` (`SO_SNDBUF`; the kernel caps it at
/// `net.core.wmem_max` and doubles it for its bookkeeping).
pub(crate) fn set_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &value)
}

/// The send buffer the kernel granted (`SO_SNDBUF`).
#[cfg(test)]
pub(crate) fn send_buffer(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let value: libc::c_int = getsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, 0)?;
    Ok(usize::try_from(value).unwrap_or(0))
}

/// Disables Nagle's algorithm on a TCP socket.
pub(crate) fn set_nodelay(fd: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_NODELAY,
        &(1 as libc::c_int),
    )
}

/// Sets `SO_SNDTIMEO` (`None`: no timeout). On a unix socket it also bounds a
/// blocking `connect`.
pub(crate) fn set_send_timeout(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<()> {
    let value = match timeout {
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        Some(timeout) => {
            // A zero timeval means "no timeout": round tiny ones up.
            let timeout = timeout.max(Duration::from_micros(1));
            libc::timeval {
                tv_sec: timeout.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
                tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
            }
        }
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &value)
}

/// The kind of a socket, from `SO_DOMAIN` and `SO_TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SocketKind {
    /// A unix-domain stream socket.
    UnixStream,
    /// An IPv4 or IPv6 stream socket.
    InetStream,
    /// Anything else.
    Other,
}

/// What kind of socket `fd` is; fails with `ENOTSOCK` for a non-socket.
pub(crate) fn socket_kind(fd: BorrowedFd<'_>) -> io::Result<SocketKind> {
    let domain: libc::c_int = getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, 0)?;
    let kind: libc::c_int = getsockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE, 0)?;
    Ok(match (domain, kind) {
        (libc::AF_UNIX, libc::SOCK_STREAM) => SocketKind::UnixStream,
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM) => SocketKind::InetStream,
        _ => SocketKind::Other,
    })
}

/// Who the peer of a unix socket was when it connected (or, for the
/// accepting side of a connection we made, when it called `listen`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerCredentials {
    /// Its process id (0 if unknown, e.g. from another pid namespace).
    pub(crate) pid: u32,
    /// Its effective user id.
    pub(crate) uid: u32,
}

/// `SO_PEERCRED` of a unix socket.
pub(crate) fn peer_credentials(fd: BorrowedFd<'_>) -> io::Result<PeerCredentials> {
    let cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let cred: libc::ucred = getsockopt(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, cred)?;
    Ok(PeerCredentials {
        pid: cred.pid as u32,
        uid: cred.uid,
    })
}

/// Which directions [`shutdown`] closes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shutdown {
    /// No more sends; the peer reads end-of-stream.
    Write,
    /// Both directions.
    Both,
}

/// Whether a failed [`shutdown`] only found the socket not connected
/// (`ENOTCONN`): the peer went first, so there is nothing left to shut.
pub(crate) fn is_not_connected(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ENOTCONN)
}

/// Shuts a connected socket down.
pub(crate) fn shutdown(fd: BorrowedFd<'_>, how: Shutdown) -> io::Result<()> {
    let how = match how {
        Shutdown::Write => libc::SHUT_WR,
        Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: integer arguments only; `fd` is open.
    syscall!(unsafe { libc::shutdown(fd.as_raw_fd(), how) })?;
    Ok(())
}

/// Flags for [`send`] and [`recv`].
pub(crate) const DONTWAIT: i32 = libc::MSG_DONTWAIT;

/// Whether a failed send found the peer's end closed (`EPIPE`).
pub(crate) fn is_broken_pipe(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EPIPE)
}

/// Sends bytes (never raising `SIGPIPE`); returns how many went out.
pub(crate) fn send(fd: BorrowedFd<'_>, data: &[u8], flags: i32) -> io::Result<usize> {
    retry(|| {
        // SAFETY: `data` is a live slice of `data.len()` readable bytes.
        syscall!(unsafe {
            libc::send(
                fd.as_raw_fd(),
                data.as_ptr().cast::<c_void>(),
                data.len(),
                flags | libc::MSG_NOSIGNAL,
            )
        })
    })
    .map(|sent| sent as usize)
}

/// Sends bytes with file descriptors attached as `SCM_RIGHTS` (unix sockets
/// only); the descriptors travel with the first byte sent.
pub(crate) fn send_with_fds(
    fd: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: i32,
) -> io::Result<usize> {
    if fds.is_empty() {
        return send(fd, data, flags);
    }
    if fds.len() > MAX_FDS || data.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors must ride on at least one byte, at most 253 per message",
        ));
    }
    let mut iov = [libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast::<c_void>(),
        iov_len: data.len(),
    }];
    sendmsg_with_fds(fd, &mut iov, fds, flags)
}

/// Sends `head` then `tail` in one `sendmsg` (two iovecs), with file
/// descriptors attached as `SCM_RIGHTS` if any (unix sockets only; they
/// travel with the first byte sent). Returns how many bytes went out, from
/// the start of `head`.
pub(crate) fn send_parts_with_fds(
    fd: BorrowedFd<'_>,
    head: &[u8],
    tail: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: i32,
) -> io::Result<usize> {
    if head.is_empty() || tail.is_empty() {
        let data = if head.is_empty() { tail } else { head };
        return send_with_fds(fd, data, fds, flags);
    }
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "at most 253 descriptors per message",
        ));
    }
    let mut iov = [
        libc::iovec {
            iov_base: head.as_ptr().cast_mut().cast::<c_void>(),
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: tail.as_ptr().cast_mut().cast::<c_void>(),
            iov_len: tail.len(),
        },
    ];
    sendmsg_with_fds(fd, &mut iov, fds, flags)
}

/// One `sendmsg` of the bytes `iov` points to, with `fds` (at most
/// [`MAX_FDS`], checked by the callers) attached as `SCM_RIGHTS` if any.
fn sendmsg_with_fds(
    fd: BorrowedFd<'_>,
    iov: &mut [libc::iovec],
    fds: &[BorrowedFd<'_>],
    flags: i32,
) -> io::Result<usize> {
    debug_assert!(fds.len() <= MAX_FDS);
    let mut msg = message_over(&mut iov[0]);
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    let mut control = [0u64; CMSG_WORDS];
    if !fds.is_empty() {
        let data_len = fds.len() * mem::size_of::<RawFd>();
        msg.msg_control = control.as_mut_ptr().cast::<c_void>();
        msg.msg_controllen = cmsg_space(data_len) as _;
        // SAFETY: `msg.msg_control` points to `control`, which is 8-byte
        // aligned and at least `msg_controllen` bytes long (CMSG_WORDS covers
        // MAX_FDS and the callers checked `fds.len() <= MAX_FDS`), so
        // CMSG_FIRSTHDR returns a pointer to a writable cmsghdr at its start,
        // and CMSG_DATA to `data_len` writable bytes after it. The
        // descriptors are written unaligned-safe.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
            let out = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (index, fd) in fds.iter().enumerate() {
                out.add(index).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    retry(|| {
        // SAFETY: `msg` points to the iovecs over live slices of the callers
        // and, if any, to the filled control buffer; all outlive the call.
        syscall!(unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags | libc::MSG_NOSIGNAL) })
    })
    .map(|sent| sent as usize)
}

/// What one [`recv`] brought.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Reception {
    /// Bytes read; 0 means end of stream.
    pub(crate) bytes: usize,
    /// The kernel had more descriptors than fit the control buffer, and closed
    /// the rest: the stream can no longer be trusted. (For
    /// [`recv_refusing_fds`], whose control buffer takes none: descriptors
    /// came, and the kernel closed every one.)
    pub(crate) fds_truncated: bool,
}

/// A `msghdr` over one buffer: no address, no control buffer yet.
fn message_over(iov: &mut libc::iovec) -> libc::msghdr {
    // SAFETY: msghdr is plain old data; all-zero is valid (null pointers,
    // zero lengths).
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg
}

/// Reads bytes from a unix socket into `buf`, taking no descriptors: any
/// that ride on these bytes are closed by the kernel without ever entering
/// our descriptor table, and reported as `fds_truncated`.
pub(crate) fn recv_refusing_fds(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: i32,
) -> io::Result<Reception> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<c_void>(),
        iov_len: buf.len(),
    };
    let mut msg = message_over(&mut iov);
    let bytes = retry(|| {
        // SAFETY: `msg` points to one iovec over the writable `buf`, which
        // outlives the call; without a control buffer the kernel writes no
        // ancillary data (it drops SCM_RIGHTS and sets MSG_CTRUNC).
        syscall!(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) })
    })?;
    Ok(Reception {
        bytes: bytes as usize,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Reads bytes into `buf`. With `fds = Some(queue)` (unix sockets) it also
/// accepts `SCM_RIGHTS` descriptors, close-on-exec, and appends them to the
/// queue.
pub(crate) fn recv(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: Option<&mut VecDeque<OwnedFd>>,
    flags: i32,
) -> io::Result<Reception> {
    let Some(queue) = fds else {
        let bytes = retry(|| {
            // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
            syscall!(unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<c_void>(),
                    buf.len(),
                    flags,
                )
            })
        })?;
        return Ok(Reception {
            bytes: bytes as usize,
            fds_truncated: false,
        });
    };
    let mut control = MaybeUninit::<[u64; CMSG_WORDS]>::uninit();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<c_void>(),
        iov_len: buf.len(),
    };
    let mut msg = message_over(&mut iov);
    msg.msg_control = control.as_mut_ptr().cast::<c_void>();
    msg.msg_controllen = mem::size_of_val(&control) as _;
    let bytes = retry(|| {
        // SAFETY: `msg` points to one iovec over the writable `buf` and to a
        // writable, 8-byte aligned control buffer of `msg_controllen` bytes;
        // all outlive the call. (On EINTR nothing was received, so `msg` is
        // unchanged and reusable.)
        syscall!(unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) })
    })?;
    // SAFETY: after a successful recvmsg, the kernel has written
    // `msg.msg_controllen` initialized bytes of control messages at the start
    // of the buffer; CMSG_FIRSTHDR/CMSG_NXTHDR only return headers that lie
    // entirely within that length, and each SCM_RIGHTS payload holds
    // `(cmsg_len - CMSG_LEN(0)) / 4` descriptors that are now ours (each was
    // installed in our table for this message), so wrapping each in an
    // OwnedFd exactly once is sound. Reads are unaligned-safe.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload =
                    ((*cmsg).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for index in 0..payload / mem::size_of::<RawFd>() {
                    queue.push_back(OwnedFd::from_raw_fd(data.add(index).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Reception {
        bytes: bytes as usize,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Readiness to wait for in [`poll`].
pub(crate) const POLLIN: i16 = libc::POLLIN;
/// Readiness to wait for in [`poll`].
pub(crate) const POLLOUT: i16 = libc::POLLOUT;

/// Waits until `fd` is ready for `events` (or has an error or hang-up), at
/// most `timeout` (`None`: forever). Returns the ready events, 0 on timeout
/// or when interrupted by a signal.
pub(crate) fn poll(fd: BorrowedFd<'_>, events: i16, timeout: Option<Duration>) -> io::Result<i16> {
    let millis = match timeout {
        None => -1,
        // Round up so a short wait does not become a busy loop.
        Some(timeout) => {
            timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int
        }
    };
    let mut entry = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: `entry` is one live, writable pollfd and we pass a count of 1.
    match syscall!(unsafe { libc::poll(&mut entry, 1, millis) }) {
        Ok(_) => Ok(entry.revents),
        Err(error) if error.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(error) => Err(error),
    }
}

/// Fills `buf` with random bytes from the kernel's CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a live, writable slice of `rest.len()` bytes.
        match syscall!(unsafe {
            libc::getrandom(rest.as_mut_ptr().cast::<c_void>(), rest.len(), 0)
        }) {
            Ok(got) => filled += got as usize,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => {
                // Kernels before 3.17: the device gives the same bytes.
                use std::io::Read;
                return std::fs::File::open("/dev/urandom")?.read_exact(rest);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The real user id of this process.
pub(crate) fn uid() -> u32 {
    // SAFETY: getuid has no arguments and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn fds_travel_with_bytes_and_arrive_cloexec() {
        let (a, b) = socketpair().unwrap();
        let (r, w) = socketpair().unwrap();
        let sent = send_with_fds(a.as_fd(), b"xyz", &[r.as_fd(), w.as_fd()], 0).unwrap();
        assert_eq!(sent, 3);
        let mut queue = VecDeque::new();
        let mut buf = [0u8; 16];
        let got = recv(b.as_fd(), &mut buf, Some(&mut queue), 0).unwrap();
        assert_eq!(got.bytes, 3);
        assert!(!got.fds_truncated);
        assert_eq!(&buf[..3], b"xyz");
        assert_eq!(queue.len(), 2);
        for fd in &queue {
            // SAFETY: F_GETFD on an open descriptor takes no pointer.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
    }

    #[test]
    fn refused_fds_are_reported() {
        let (a, b) = socketpair().unwrap();
        let (r, _w) = socketpair().unwrap();
        send_with_fds(a.as_fd(), b"xy", &[r.as_fd(), r.as_fd()], 0).unwrap();
        let mut buf = [0u8; 16];
        let got = recv_refusing_fds(b.as_fd(), &mut buf, 0).unwrap();
        assert_eq!(got.bytes, 2);
        assert!(got.fds_truncated, "the descriptors went unreported");
        // A plain read after them sees no descriptors at all.
        send(a.as_fd(), b"z", 0).unwrap();
        let got = recv_refusing_fds(b.as_fd(), &mut buf, 0).unwrap();
        assert_eq!((got.bytes, got.fds_truncated), (1, false));
    }

    #[test]
    fn parts_arrive_in_order_with_their_descriptors() {
        let (a, b) = socketpair().unwrap();
        let (r, _w) = socketpair().unwrap();
        let sent = send_parts_with_fds(a.as_fd(), b"head", b"tail", &[r.as_fd()], 0).unwrap();
        assert_eq!(sent, 8);
        let mut buf = [0u8; 16];
        let mut fds = VecDeque::new();
        let got = recv(b.as_fd(), &mut buf, Some(&mut fds), 0).unwrap();
        assert_eq!(&buf[..got.bytes], b"headtail");
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn poll_times_out_then_sees_data() {
        let (a, b) = socketpair().unwrap();
        assert_eq!(
            poll(b.as_fd(), POLLIN, Some(Duration::from_millis(1))).unwrap(),
            0
        );
        send(a.as_fd(), b"!", 0).unwrap();
        assert_ne!(
            poll(b.as_fd(), POLLIN, Some(Duration::from_secs(10))).unwrap() & POLLIN,
            0
        );
    }

    #[test]
    fn random_bytes_differ() {
        let mut x = [0u8; 32];
        let mut y = [0u8; 32];
        random_bytes(&mut x).unwrap();
        random_bytes(&mut y).unwrap();
        assert_ne!(x, y);
    }

    #[test]
    fn peer_credentials_name_this_process() {
        let (a, _b) = socketpair().unwrap();
        let cred = peer_credentials(a.as_fd()).unwrap();
        assert_eq!(cred.pid, std::process::id());
        assert_eq!(cred.uid, uid());
    }

    #[test]
    fn socket_kind_rejects_pipes() {
        let (a, _b) = socketpair().unwrap();
        assert_eq!(socket_kind(a.as_fd()).unwrap(), SocketKind::UnixStream);
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(socket_kind(file.as_fd()).is_err());
    }

    #[test]
    fn unix_addr_limits() {
        assert!(UnixAddr::new(UnixName::Path(Path::new(&"a".repeat(107)))).is_ok());
        assert!(UnixAddr::new(UnixName::Path(Path::new(&"a".repeat(108)))).is_err());
        assert!(UnixAddr::new(UnixName::Abstract(&[b'x'; 107])).is_ok());
        assert!(UnixAddr::new(UnixName::Abstract(&[b'x'; 108])).is_err());
    }
}
