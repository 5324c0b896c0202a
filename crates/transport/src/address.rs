//! Where a peer listens: a unix socket path, a Linux abstract name, or a TCP
//! host and port.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

/// The longest unix socket name the kernel accepts (`sun_path` is 108 bytes,
/// one of which terminates a path or starts an abstract name).
const MAX_UNIX_NAME: usize = 107;

/// Where a peer listens or connects.
///
/// The text form, parsed by [`FromStr`] and printed by [`Display`](fmt::Display):
///
/// | text                   | address                                         |
/// |------------------------|-------------------------------------------------|
/// | `unix:/run/app.sock`   | [`Address::Unix`]: a socket file                |
/// | `unix:@app`            | [`Address::Abstract`]: Linux abstract namespace |
/// | `tcp://example.org:7000` | [`Address::Tcp`] with a host name            |
/// | `tcp://127.0.0.1:7000` | [`Address::Tcp`] with an IPv4 address           |
/// | `tcp://[::1]:7000`     | [`Address::Tcp`] with an IPv6 address (brackets required) |
///
/// ```
/// use processional_transport::Address;
///
/// let address: Address = "tcp://[::1]:7000".parse()?;
/// assert_eq!(address, Address::Tcp { host: "::1".into(), port: 7000 });
/// assert_eq!(address.to_string(), "tcp://[::1]:7000");
/// assert!(address.is_loopback());
/// # Ok::<(), processional_transport::AddressError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// A unix socket file.
    Unix(PathBuf),
    /// A unix socket in Linux's abstract namespace: no file, gone when the
    /// listener closes, reachable by every process in the network namespace.
    Abstract(String),
    /// A TCP endpoint.
    Tcp {
        /// Host name or IP address, IPv6 without brackets.
        host: String,
        /// Port; 0 when binding asks the kernel to pick one.
        port: u16,
    },
}

/// What is wrong with the text of an [`Address`].
///
/// Every message starts with `address "<the text>"`, so that the library's
/// `Error::Address` can say `invalid address "..." ...` without naming the
/// address twice.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// No `scheme:` prefix.
    #[error("address {0:?} has no scheme; expected unix:/path, unix:@name or tcp://host:port")]
    MissingScheme(String),
    /// A scheme other than `unix:` and `tcp://`.
    #[error("address {address:?} has unknown scheme {scheme:?}; expected unix: or tcp://")]
    UnknownScheme {
        /// The whole text.
        address: String,
        /// The scheme found.
        scheme: String,
    },
    /// `tcp:` without `//`.
    #[error("address {0:?}: write TCP addresses as tcp://host:port")]
    MissingSlashes(String),
    /// `unix:` with nothing after it.
    #[error("address {0:?} has an empty socket path")]
    EmptyPath(String),
    /// `unix:@` with nothing after it.
    #[error("address {0:?} has an empty abstract name")]
    EmptyName(String),
    /// A unix name longer than the kernel accepts.
    #[error("address {address:?}: the socket name is {len} bytes long; at most {max} fit")]
    TooLong {
        /// The whole text.
        address: String,
        /// Length of the name in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A NUL byte in a unix name.
    #[error("address {0:?} contains a NUL byte")]
    NulByte(String),
    /// `tcp://:port`.
    #[error("address {0:?} has an empty host")]
    EmptyHost(String),
    /// `tcp://host` without `:port`.
    #[error("address {0:?} has no port; expected tcp://host:port")]
    MissingPort(String),
    /// A port that is not a number from 0 to 65535.
    #[error("address {address:?} has an invalid port {port:?}; expected a number from 0 to 65535")]
    InvalidPort {
        /// The whole text.
        address: String,
        /// The text found where the port belongs.
        port: String,
    },
    /// An IPv6 address without brackets, e.g. `tcp://::1:80`.
    #[error("address {0:?}: put IPv6 addresses in brackets, as in tcp://[::1]:7000")]
    UnbracketedIpv6(String),
    /// `[` without a matching `]`.
    #[error("address {0:?} has an unclosed '['")]
    UnclosedBracket(String),
}

impl Address {
    /// A unix socket file address.
    pub fn unix(path: impl Into<PathBuf>) -> Address {
        Address::Unix(path.into())
    }

    /// A TCP address.
    pub fn tcp(host: impl Into<String>, port: u16) -> Address {
        Address::Tcp {
            host: host.into(),
            port,
        }
    }

    /// Whether this is a TCP address.
    pub fn is_tcp(&self) -> bool {
        matches!(self, Address::Tcp { .. })
    }

    /// Whether this address can only be reached from this machine: a TCP
    /// address whose host is `localhost` or a loopback IP (`127.0.0.0/8`,
    /// `::1`, and IPv4-mapped loopback). Unix and abstract addresses are
    /// local by nature and also answer `true`.
    pub fn is_loopback(&self) -> bool {
        match self {
            Address::Unix(_) | Address::Abstract(_) => true,
            Address::Tcp { host, .. } => {
                if host.eq_ignore_ascii_case("localhost") {
                    return true;
                }
                match host.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => ip.is_loopback(),
                    Ok(IpAddr::V6(ip)) => {
                        ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|ip| ip.is_loopback())
                    }
                    Err(_) => false,
                }
            }
        }
    }

    /// A fresh unix socket path that no other call returns, inside a
    /// directory only this user can enter (mode 0700):
    /// `$XDG_RUNTIME_DIR/processional/` when that variable names an absolute
    /// directory, else `/tmp/processional-<uid>/`. The directory is created if
    /// needed; an existing one must belong to this user and be closed to
    /// others, or the call fails rather than use it.
    pub fn private_unix() -> io::Result<Address> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = private_dir()?;
        let mut random = [0u8; 6];
        sys::random_bytes(&mut random)?;
        let mut name = format!(
            "{}-{}-",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        for byte in random {
            name.push_str(&format!("{byte:02x}"));
        }
        name.push_str(".sock");
        let path = dir.join(name);
        if path.as_os_str().len() > MAX_UNIX_NAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "private socket path {} is longer than {MAX_UNIX_NAME} bytes",
                    path.display()
                ),
            ));
        }
        Ok(Address::Unix(path))
    }

    /// The unix socket name, for unix and abstract addresses.
    pub(crate) fn unix_name(&self) -> Option<sys::UnixName<'_>> {
        match self {
            Address::Unix(path) => Some(sys::UnixName::Path(path)),
            Address::Abstract(name) => Some(sys::UnixName::Abstract(name.as_bytes())),
            Address::Tcp { .. } => None,
        }
    }
}

/// A directory for this user's sockets and key files that no other user can
/// enter: `$XDG_RUNTIME_DIR/processional/` when that variable names an
/// absolute directory, else `/tmp/processional-<uid>/`. It is created (mode
/// 0700) if needed; an existing one must belong to this user and be closed
/// to others, or the call fails rather than use it. Paths in it leave room
/// for a unix socket name of about 40 bytes.
///
/// [`Address::private_unix`] makes its fresh socket paths here.
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
///
/// let dir = processional_transport::runtime_dir().unwrap();
/// let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
/// assert_eq!(mode & 0o077, 0, "closed to group and others");
/// ```
pub fn runtime_dir() -> io::Result<PathBuf> {
    private_dir()
}

/// Creates (if needed) and checks the directory of [`Address::private_unix`].
fn private_dir() -> io::Result<PathBuf> {
    let uid = sys::uid();
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute() && dir.is_dir());
    let candidates = runtime
        .map(|dir| dir.join("processional"))
        .into_iter()
        .chain(std::iter::once(PathBuf::from(format!(
            "/tmp/processional-{uid}"
        ))));
    let mut last_error = None;
    for dir in candidates {
        // Leave room for the file name (about 40 bytes).
        if dir.as_os_str().len() + 48 > MAX_UNIX_NAME {
            continue;
        }
        match ensure_private_dir(&dir, uid) {
            Ok(()) => return Ok(dir),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "no private directory short enough for a unix socket path",
        )
    }))
}

fn ensure_private_dir(dir: &Path, uid: u32) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(error),
    }
    // symlink_metadata: a symlink planted by someone else is refused, not
    // followed.
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a directory owned by uid {uid} with mode 0700 (found uid {}, mode {:o})",
                dir.display(),
                meta.uid(),
                meta.permissions().mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

impl From<SocketAddr> for Address {
    fn from(addr: SocketAddr) -> Address {
        Address::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for Address {
    /// Prints the form [`FromStr`] reads back. A relative path that starts
    /// with `@` is printed as `./@…` so it is not read back as an abstract
    /// name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => {
                let prefix = if path.as_os_str().as_bytes().first() == Some(&b'@') {
                    "./"
                } else {
                    ""
                };
                write!(f, "unix:{prefix}{}", path.display())
            }
            Address::Abstract(name) => write!(f, "unix:@{name}"),
            Address::Tcp { host, port } if host.contains(':') => write!(f, "tcp://[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Address, AddressError> {
        let owned = || text.to_owned();
        if let Some(rest) = text.strip_prefix("unix:") {
            return parse_unix(text, rest);
        }
        if let Some(rest) = text.strip_prefix("tcp://") {
            return parse_tcp(text, rest);
        }
        match text.split_once(':') {
            Some(("tcp", _)) => Err(AddressError::MissingSlashes(owned())),
            Some((scheme, _)) if !scheme.is_empty() && !scheme.contains('/') => {
                Err(AddressError::UnknownScheme {
                    address: owned(),
                    scheme: scheme.to_owned(),
                })
            }
            _ => Err(AddressError::MissingScheme(owned())),
        }
    }
}

fn parse_unix(text: &str, rest: &str) -> Result<Address, AddressError> {
    let (name, abstract_name) = match rest.strip_prefix('@') {
        Some(name) => (name, true),
        None => (rest, false),
    };
    if name.is_empty() {
        return Err(if abstract_name {
            AddressError::EmptyName(text.to_owned())
        } else {
            AddressError::EmptyPath(text.to_owned())
        });
    }
    if name.contains('\0') {
        return Err(AddressError::NulByte(text.to_owned()));
    }
    if name.len() > MAX_UNIX_NAME {
        return Err(AddressError::TooLong {
            address: text.to_owned(),
            len: name.len(),
            max: MAX_UNIX_NAME,
        });
    }
    Ok(if abstract_name {
        Address::Abstract(name.to_owned())
    } else {
        Address::Unix(PathBuf::from(name))
    })
}

fn parse_tcp(text: &str, rest: &str) -> Result<Address, AddressError> {
    let owned = || text.to_owned();
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| AddressError::UnclosedBracket(owned()))?;
        let port = match after.strip_prefix(':') {
            Some(port) => port,
            None if after.is_empty() => return Err(AddressError::MissingPort(owned())),
            None => {
                return Err(AddressError::InvalidPort {
                    address: owned(),
                    port: after.to_owned(),
                });
            }
        };
        (host, port)
    } else {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| AddressError::MissingPort(owned()))?;
        if host.contains(':') {
            return Err(AddressError::UnbracketedIpv6(owned()));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(AddressError::EmptyHost(owned()));
    }
    if port.is_empty() {
        return Err(AddressError::MissingPort(owned()));
    }
    let valid = port.bytes().all(|byte| byte.is_ascii_digit());
    let port =
        port.parse::<u16>()
            .ok()
            .filter(|_| valid)
            .ok_or_else(|| AddressError::InvalidPort {
                address: owned(),
                port: port.to_owned(),
            })?;
    Ok(Address::Tcp {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Address, AddressError> {
        text.parse()
    }

    #[test]
    fn every_error_names_the_address_once_at_the_start() {
        let long = format!("unix:@{}", "n".repeat(200));
        for text in [
            "nowhere",
            "http://x",
            "tcp:x:1",
            "unix:",
            "unix:@",
            long.as_str(),
            "unix:/a\0b",
            "tcp://:1",
            "tcp://host",
            "tcp://host:99999",
            "tcp://::1:80",
            "tcp://[::1:80",
        ] {
            let message = parse(text).expect_err(text).to_string();
            let quoted = format!("{text:?}");
            assert!(
                message.starts_with(&format!("address {quoted}")),
                "{message}"
            );
            assert_eq!(message.matches(&quoted).count(), 1, "{message}");
        }
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(
            parse("unix:/run/a.sock").unwrap(),
            Address::unix("/run/a.sock")
        );
        assert_eq!(
            parse("unix:rel/a.sock").unwrap(),
            Address::unix("rel/a.sock")
        );
        assert_eq!(
            parse("unix:@name").unwrap(),
            Address::Abstract("name".into())
        );
        assert_eq!(
            parse("tcp://example.org:80").unwrap(),
            Address::tcp("example.org", 80)
        );
        assert_eq!(
            parse("tcp://127.0.0.1:0").unwrap(),
            Address::tcp("127.0.0.1", 0)
        );
        assert_eq!(
            parse("tcp://[::1]:65535").unwrap(),
            Address::tcp("::1", 65535)
        );
    }

    #[test]
    fn displays_what_it_parses() {
        for text in [
            "unix:/run/a.sock",
            "unix:@name",
            "tcp://example.org:80",
            "tcp://[::1]:7000",
            "tcp://127.0.0.1:0",
        ] {
            assert_eq!(parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Address::unix("@odd").to_string(), "unix:./@odd");
        assert_eq!(parse("unix:./@odd").unwrap(), Address::unix("./@odd"));
    }

    #[test]
    fn says_what_is_wrong() {
        use AddressError as E;
        assert!(matches!(parse("/tmp/x"), Err(E::MissingScheme(_))));
        assert!(matches!(parse(""), Err(E::MissingScheme(_))));
        assert!(
            matches!(parse("http://x:1"), Err(E::UnknownScheme { scheme, .. }) if scheme == "http")
        );
        assert!(matches!(parse("tcp:x:1"), Err(E::MissingSlashes(_))));
        assert!(matches!(parse("unix:"), Err(E::EmptyPath(_))));
        assert!(matches!(parse("unix:@"), Err(E::EmptyName(_))));
        assert!(matches!(parse("unix:a\0b"), Err(E::NulByte(_))));
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(matches!(
            parse(&long),
            Err(E::TooLong {
                len: 201,
                max: 107,
                ..
            })
        ));
        assert!(matches!(parse("tcp://:80"), Err(E::EmptyHost(_))));
        assert!(matches!(parse("tcp://[]:80"), Err(E::EmptyHost(_))));
        assert!(matches!(parse("tcp://host"), Err(E::MissingPort(_))));
        assert!(matches!(parse("tcp://host:"), Err(E::MissingPort(_))));
        assert!(matches!(parse("tcp://[::1]"), Err(E::MissingPort(_))));
        assert!(
            matches!(parse("tcp://host:65536"), Err(E::InvalidPort { port, .. }) if port == "65536")
        );
        assert!(matches!(
            parse("tcp://host:+80"),
            Err(E::InvalidPort { .. })
        ));
        assert!(matches!(
            parse("tcp://host:80/"),
            Err(E::InvalidPort { .. })
        ));
        assert!(matches!(parse("tcp://[::1]x"), Err(E::InvalidPort { .. })));
        assert!(matches!(parse("tcp://::1:80"), Err(E::UnbracketedIpv6(_))));
        assert!(matches!(parse("tcp://[::1:80"), Err(E::UnclosedBracket(_))));
        let message = parse("tcp://host:99999").unwrap_err().to_string();
        assert!(message.contains("99999"), "{message}");
    }

    #[test]
    fn loopback() {
        assert!(Address::tcp("127.0.0.1", 1).is_loopback());
        assert!(Address::tcp("127.3.2.1", 1).is_loopback());
        assert!(Address::tcp("::1", 1).is_loopback());
        assert!(Address::tcp("::ffff:127.0.0.1", 1).is_loopback());
        assert!(Address::tcp("LocalHost", 1).is_loopback());
        assert!(!Address::tcp("10.0.0.1", 1).is_loopback());
        assert!(!Address::tcp("example.org", 1).is_loopback());
        assert!(Address::unix("/x").is_loopback());
        assert!(Address::tcp("x", 1).is_tcp());
        assert!(!Address::Abstract("x".into()).is_tcp());
    }

    #[test]
    fn private_unix_is_fresh_and_private() {
        let a = Address::private_unix().unwrap();
        let b = Address::private_unix().unwrap();
        assert_ne!(a, b);
        let Address::Unix(path) = a else {
            panic!("not a unix address: {a:?}")
        };
        let meta = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(meta.uid(), sys::uid());
        assert!(!path.exists());
    }

    proptest! {
        #[test]
        fn unix_paths_round_trip(path in "/[a-zA-Z0-9._ -]{1,100}") {
            let address = Address::unix(&path);
            prop_assert_eq!(parse(&address.to_string()).unwrap(), address);
        }

        #[test]
        fn abstract_names_round_trip(name in "[^\0]{1,30}") {
            prop_assume!(name.len() <= MAX_UNIX_NAME);
            let address = Address::Abstract(name);
            prop_assert_eq!(parse(&address.to_string()).unwrap(), address);
        }

        #[test]
        fn tcp_round_trips(ip in any::<IpAddr>(), port in any::<u16>()) {
            let address = Address::from(SocketAddr::new(ip, port));
            prop_assert_eq!(parse(&address.to_string()).unwrap(), address);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,40}") {
            let _ = parse(&text);
        }
    }
}
