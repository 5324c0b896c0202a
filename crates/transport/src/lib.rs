//! Bytes between processes: framed, authenticated connections over unix
//! sockets and TCP, file descriptor passing, and a listener that
//! authenticates its connections (all on one thread) before handing them out.
//!
//! **Internal crate.** This is a layer of [processional](https://docs.rs/processional);
//! its API is not stable and may change in any release. Depend on the
//! `processional` crate, which re-exports what users need (this crate as
//! `processional::transport`).
//!
//! ```
//! use processional_transport::{Connection, Handshake, Key, Side};
//! use processional_proto::{Fingerprint, Hello, Message, Role, PROTOCOL_VERSION};
//!
//! let hello = |role| Hello {
//!     protocol: PROTOCOL_VERSION,
//!     fingerprint: Fingerprint([1; 32]),
//!     role,
//!     pid: std::process::id(),
//!     host: "localhost".into(),
//!     program: "example".into(),
//! };
//! let key = Key::generate();
//! let (mut master, mut slave) = Connection::pair()?;
//!
//! let slave_config = Handshake::new(key.clone(), hello(Role::Slave));
//! let slave_thread = std::thread::spawn(move || -> Result<(), processional_transport::Error> {
//!     let peer = slave.handshake(Side::Acceptor, &slave_config)?;
//!     assert_eq!(peer.hello.role, Role::Master);
//!     // Answer one ping.
//!     if let Message::Ping(n) = slave.recv()?.message {
//!         slave.send(&Message::Pong(n))?;
//!     }
//!     Ok(())
//! });
//!
//! let peer = master.handshake(Side::Initiator, &Handshake::new(key, hello(Role::Master)))?;
//! assert_eq!(peer.hello.role, Role::Slave);
//! master.send(&Message::Ping(42))?;
//! assert_eq!(master.recv()?.message, Message::Pong(42));
//! slave_thread.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Addresses
//!
//! [`Address`] reads and prints:
//!
//! - `unix:/path/to/socket`: a unix socket file (at most 107 bytes of path);
//! - `unix:@name`: a name in Linux's abstract namespace (no file);
//! - `tcp://host:port`, `tcp://192.0.2.7:port`, `tcp://[::1]:port`: TCP,
//!   IPv6 addresses in brackets.
//!
//! [`runtime_dir`] is a directory only this user can enter (created if
//! needed), [`Address::private_unix`] makes a fresh socket path in it, and [`Listener`]s create unix socket files with mode
//! 0600.
//!
//! # Frames
//!
//! Every message travels as one frame of the `processional-proto` wire
//! format: a 12-byte header and the encoded message. A frame goes out with
//! one `send` (or `sendmsg` when file descriptors ride along, as
//! `SCM_RIGHTS` on the frame's first byte) and comes in with one `recv` into
//! the decoder's buffer in the common case. Descriptors arrive close-on-exec
//! and are handed out with the frame whose header counts them
//! ([`Received::fds`]); a frame announcing more descriptors than arrived is
//! an error.
//!
//! # Handshake
//!
//! Authentication is always on: both sides run [`Connection::handshake`]
//! (or the [`AuthenticatingListener`] runs it for them) before anything else, and nothing
//! else is accepted before it succeeds. Each side, symmetrically:
//!
//! 1. sends `Hello { protocol, fingerprint, role, pid, host, program }` and
//!    `Challenge { nonce }` with 32 fresh random bytes;
//! 2. receives the peer's `Hello`: its protocol version must equal ours
//!    (else `Refused { ProtocolVersion }` and [`Error::ProtocolVersion`]),
//!    its role must be one of [`Handshake::accept_roles`] (else
//!    `Refused { WrongRole }` and [`Error::WrongRole`]), and its fingerprint
//!    must equal ours unless either side is a `DataClient`, which runs no
//!    code of its peer's (else `Refused { WrongFingerprint }` and
//!    [`Error::Fingerprint`], naming both fingerprints and programs);
//! 3. receives the peer's `Challenge` and answers
//!    `Proof { mac }` with
//!    `mac = HMAC-SHA256(key, "processional-auth-v1" ‖ r ‖ peer's nonce ‖ own nonce)`,
//!    where `r` is the prover's own role as one byte (`Master` 0, `Slave` 1,
//!    `Client` 2, `Server` 3, `DataClient` 4);
//! 4. receives the peer's `Proof` and checks it in constant time: wrong →
//!    `Refused { WrongKey }` and [`Error::WrongKey`]; right → sends
//!    `Accepted`;
//! 5. the acceptor waits for the initiator's `Accepted`; a `Refused`
//!    instead fails with [`Error::Refused`]. The initiator does not wait:
//!    once it has checked the acceptor's proof it may send right away (this
//!    saves a round trip before the first call), and the acceptor's verdict
//!    arrives as the first frame after the handshake: receiving skips its
//!    `Accepted`, and turns a `Refused` into [`Error::Refused`]. The acceptor
//!    reads nothing of the initiator's before its verdict, and since every
//!    check is symmetric (equal keys prove both ways, equal versions and
//!    fingerprints match both ways), a late refusal can only come from a
//!    role the acceptor does not take, which it sends before its proof.
//!
//! Two peers that agreed on both challenge nonces beforehand, over a
//! channel only they can read, can run the same checks without the first
//! round trip: [`Connection::handshake_pipelined`] sends hello, challenge and
//! proof at once, and lets the initiator send before it has read anything
//! (it checks the acceptor's messages as the first frames it receives). The
//! process runtime uses it for the private socket of a slave it spawned.
//!
//! So whichever side rejects, both get a typed error. A peer that claims
//! this side's own role and whose challenge repeats a nonce of a handshake
//! running in this process (a reflection of our own challenge, to make us
//! compute the proof it owes) is refused. [`Handshake::timeout`] bounds the whole
//! exchange ([`Error::TimedOut`]); handshake frames are limited to 16 KiB.
//! No descriptor travels with a handshake: those a peer sends before it ends
//! are closed by the kernel unread, and the peer is refused.
//!
//! A server that serves each client on its own thread runs the handshakes
//! of all its peers on one thread with an [`AuthenticatingListener`]: at
//! most a fixed number at once, each bounded by the timeout, so peers
//! without the key never cost a thread each.
//!
//! # Security model
//!
//! The handshake proves that both sides hold the same [`Key`], that they
//! speak the same protocol and run the same build (fingerprint). It does
//! not encrypt anything, and after it frames are not individually
//! authenticated: whoever can inject into or read the byte stream (a TCP
//! path across a network someone else controls) can hijack or read the
//! session. Unix sockets (private to this machine and, for socket files,
//! to this user by their mode) and TCP on loopback are safe; TCP across an
//! untrusted network needs a tunnel or TLS underneath (e.g. an SSH tunnel or
//! a WireGuard link). The peer's `pid`, `host` and `program` in its `Hello`
//! are claims of a key holder, used for diagnostics.
//!
//! # Linux only
//!
//! The crate uses Linux interfaces: abstract socket names, `SO_PEERCRED`,
//! `MSG_CMSG_CLOEXEC`, `accept4`, `getrandom`.

// Examples are tested as code: a warning in one fails the build.
#![doc(test(attr(deny(warnings))))]

mod address;
mod authenticating_listener;
mod connection;
mod error;
mod handshake;
mod handshake_step;
mod inbound;
mod key;
mod listener;
mod outbound;
mod sys;

pub use address::{Address, AddressError, runtime_dir};
pub use authenticating_listener::{
    AcceptStopper, AuthenticatingListener, DEFAULT_MAX_PENDING_HANDSHAKES,
};
pub use connection::{
    Connection, ConnectionReader, ConnectionWriter, PendingFrame, Received, ShutdownHandle,
};
pub use error::Error;
pub use handshake::{AgreedNonces, DEFAULT_HANDSHAKE_TIMEOUT, Handshake, PeerInfo, Side};
pub use key::{GENERATED_KEY_LEN, Key, KeyError, MIN_KEY_LEN, random_bytes};
pub use listener::Listener;
