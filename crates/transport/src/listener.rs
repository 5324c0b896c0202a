//! Listening sockets.

use std::io;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::address::Address;
use crate::connection::Connection;
use crate::error::Error;
use crate::sys;

/// Mode of the socket file of a unix listener: only this user may connect.
const SOCKET_MODE: u32 = 0o600;

/// The socket file a unix listener created, identified so that drop only
/// removes that very file.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// A socket accepting connections on an [`Address`].
///
/// A unix listener creates its socket file with mode 0600 (set on the socket
/// before `bind`, so there is no window in which others could connect),
/// replaces a stale socket file left by a dead process but refuses to
/// replace one somebody still listens on, and removes its file when dropped.
/// A TCP listener sets `SO_REUSEADDR`.
///
/// ```
/// use processional_proto::Message;
/// use processional_transport::{Address, Connection, Listener};
///
/// # fn main() -> Result<(), processional_transport::Error> {
/// let listener = Listener::bind(&Address::private_unix()?)?;
/// let address = listener.local_addr();
/// let client = std::thread::spawn(move || -> Result<(), processional_transport::Error> {
///     let mut connection = Connection::connect(&address)?;
///     connection.send(&Message::Ping(1)) // a real peer handshakes first
/// });
/// let mut accepted = listener.accept()?;
/// assert_eq!(accepted.recv()?.message, Message::Ping(1));
/// client.join().unwrap()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    unix: bool,
    local: Address,
    file: Option<SocketFile>,
}

impl Listener {
    /// Binds and listens.
    pub fn bind(address: &Address) -> Result<Listener, Error> {
        match address {
            Address::Unix(path) => bind_unix_path(path),
            Address::Abstract(name) => {
                let fd = sys::unix_socket()?;
                sys::bind(
                    fd.as_fd(),
                    &sys::UnixAddr::new(sys::UnixName::Abstract(name.as_bytes()))?,
                )?;
                sys::listen(fd.as_fd(), sys::MAX_BACKLOG)?;
                Ok(Listener {
                    fd,
                    unix: true,
                    local: address.clone(),
                    file: None,
                })
            }
            Address::Tcp { host, port } => {
                // std sets SO_REUSEADDR and close-on-exec.
                let targets: Vec<_> = (host.as_str(), *port).to_socket_addrs()?.collect();
                let listener = TcpListener::bind(&targets[..])?;
                let local = Address::from(listener.local_addr()?);
                Ok(Listener {
                    fd: listener.into(),
                    unix: false,
                    local,
                    file: None,
                })
            }
        }
    }

    /// Accepts the next connection, blocking (unless the listener is
    /// non-blocking: then an [`io::ErrorKind::WouldBlock`] error says none is
    /// waiting).
    pub fn accept(&self) -> Result<Connection, Error> {
        let fd = sys::accept(self.fd.as_fd(), false)?;
        self.wrap(fd)
    }

    /// Accepts the next connection, waiting at most `timeout`; `Ok(None)` if
    /// none came. (If several threads accept on the same listener, the
    /// one that loses the race for a connection blocks until the next.)
    pub fn accept_timeout(&self, timeout: Duration) -> Result<Option<Connection>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if sys::poll(self.fd.as_fd(), sys::POLLIN, Some(left))? != 0 {
                // Readable: a connection is waiting, so this does not block
                // (unless another thread takes it first).
                return self.accept().map(Some);
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Accepts a connection as a bare non-blocking descriptor, for the event
    /// loop.
    pub(crate) fn accept_nonblocking(&self) -> io::Result<OwnedFd> {
        let fd = sys::accept(self.fd.as_fd(), true)?;
        if !self.unix {
            sys::set_nodelay(fd.as_fd())?;
        }
        Ok(fd)
    }

    fn wrap(&self, fd: OwnedFd) -> Result<Connection, Error> {
        if self.unix {
            Connection::from_unix(fd.into())
        } else {
            Connection::from_tcp(fd.into())
        }
    }

    /// The address peers connect to; for TCP with port 0, the port the
    /// kernel picked.
    pub fn local_addr(&self) -> Address {
        self.local.clone()
    }

    /// Whether this listens on a unix socket.
    pub fn is_unix(&self) -> bool {
        self.unix
    }

    /// Makes [`accept`](Listener::accept) return at once when no connection
    /// is waiting.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<(), Error> {
        sys::set_nonblocking(self.fd.as_fd(), nonblocking)?;
        Ok(())
    }
}

fn bind_unix_path(path: &Path) -> Result<Listener, Error> {
    let target = sys::UnixAddr::new(sys::UnixName::Path(path))?;
    let fd = sys::unix_socket()?;
    // The file bind creates takes the socket inode's mode (less the umask):
    // set it first, so the file is never open to others.
    sys::fchmod(fd.as_fd(), SOCKET_MODE)?;
    match sys::bind(fd.as_fd(), &target) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
            remove_stale_socket(path, &target, error)?;
            sys::bind(fd.as_fd(), &target)?;
        }
        Err(error) => return Err(Error::Io(error)),
    }
    let meta = std::fs::symlink_metadata(path)?;
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    sys::listen(fd.as_fd(), sys::MAX_BACKLOG)?;
    Ok(Listener {
        fd,
        unix: true,
        local: Address::Unix(path.to_owned()),
        file: Some(file),
    })
}

/// Removes the socket file at `path` if nobody listens on it any more.
fn remove_stale_socket(
    path: &Path,
    target: &sys::UnixAddr,
    in_use: io::Error,
) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() {
        return Err(Error::Io(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )));
    }
    let probe = sys::unix_socket()?;
    match sys::connect(probe.as_fd(), target) {
        Ok(()) => Err(Error::Io(io::Error::new(
            in_use.kind(),
            format!("{} is in use by a live listener", path.display()),
        ))),
        Err(error) if sys::is_connection_refused(&error) => match std::fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(Error::Io(error)),
            _ => Ok(()),
        },
        Err(error) => Err(Error::Io(error)),
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            // Only our own file: another listener may have replaced it.
            if let Ok(meta) = std::fs::symlink_metadata(&file.path)
                && meta.dev() == file.dev
                && meta.ino() == file.ino
            {
                let _ = std::fs::remove_file(&file.path);
            }
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn unix_listener_file_is_private_and_removed() {
        let address = Address::private_unix().unwrap();
        let Address::Unix(path) = &address else {
            unreachable!()
        };
        let listener = Listener::bind(&address).unwrap();
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(Listener::bind(&address).is_err(), "clobbered a live socket");
        drop(listener);
        assert!(!path.exists());
    }

    #[test]
    fn stale_socket_is_replaced() {
        let address = Address::private_unix().unwrap();
        let Address::Unix(path) = &address else {
            unreachable!()
        };
        // What a crashed process leaves: a bound socket file nobody listens on.
        {
            let fd = sys::unix_socket().unwrap();
            let target = sys::UnixAddr::new(sys::UnixName::Path(path)).unwrap();
            sys::bind(fd.as_fd(), &target).unwrap();
        }
        assert!(
            std::fs::symlink_metadata(path)
                .unwrap()
                .file_type()
                .is_socket()
        );
        let listener = Listener::bind(&address).unwrap();
        let _client = Connection::connect(&address).unwrap();
        assert!(
            listener
                .accept_timeout(Duration::from_secs(30))
                .unwrap()
                .is_some()
        );
        drop(listener);
        assert!(!path.exists());
    }

    #[test]
    fn refuses_to_clobber_a_regular_file() {
        let address = Address::private_unix().unwrap();
        let Address::Unix(path) = &address else {
            unreachable!()
        };
        std::fs::write(path, b"data").unwrap();
        assert!(Listener::bind(&address).is_err());
        assert_eq!(std::fs::read(path).unwrap(), b"data");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn tcp_port_zero_reports_the_real_port() {
        let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().unwrap()).unwrap();
        match listener.local_addr() {
            Address::Tcp { host, port } => {
                assert_eq!(host, "127.0.0.1");
                assert_ne!(port, 0);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            listener
                .accept_timeout(Duration::from_millis(10))
                .unwrap()
                .is_none()
        );
        let _client = Connection::connect(&listener.local_addr()).unwrap();
        assert!(
            listener
                .accept_timeout(Duration::from_secs(30))
                .unwrap()
                .is_some()
        );
    }
}
