//! The process runtime of processional: call functions in other processes
//! as easily as in a thread.
//!
//! ```
//! # fn main() -> Result<(), processional_thread::Error> {
//! let process = processional_process::slave()?; // spawn and connect
//! let resource = process.wrap(|| (0..1_000_000u64).collect::<Vec<_>>())?;
//! let sum = resource.schedule(|v| v.iter().sum::<u64>())?;
//! let product = resource.schedule(|v| v.iter().product::<u64>())?;
//! assert_eq!(sum.wait()?, 499_999_500_000);
//! assert_eq!(product.wait()?, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Slaves
//! [`slave()`] re-executes the current program with a private marker; the
//! child becomes a slave before its `main` runs (see [`init`]) and serves
//! the calls of its master over an inherited unix socket, after the
//! authenticated handshake of `processional-transport` (the key is generated
//! per slave and handed to it on that private socket).
//!
//! # Shipping functions
//! A task is a closure that captures nothing, or a fn item; its data travels
//! as explicit serde arguments (`invoke_with`, `schedule_with`, …):
//!
//! ```
//! # fn main() -> Result<(), processional_thread::Error> {
//! # let process = processional_process::slave()?;
//! let words = vec!["shipped".to_string(), "as".into(), "arguments".into()];
//! let count = process.invoke_with(words, |words: Vec<String>| words.len())?;
//! assert_eq!(count, 3);
//! # Ok(())
//! # }
//! ```
//!
//! A capturing closure fails to build, with a message saying to pass the
//! data as arguments (the check runs when the code is compiled to a binary,
//! so `cargo check` alone does not report it):
//!
//! ```compile_fail
//! # fn main() -> Result<(), processional_thread::Error> {
//! # let process = processional_process::slave()?;
//! let words = vec!["captured".to_string()];
//! let count = process.invoke(move || words.len())?; // error: must not capture anything
//! # Ok(())
//! # }
//! ```
//!
//! Arguments and values are any `Serialize + DeserializeOwned` type, encoded
//! with postcard; a value that fails to encode or decode fails that call only.
//! `Vec<u8>` takes a fast path, large payloads travel through shared memory,
//! and `ShmBuf` / `ShmVec` values travel as file descriptors on unix sockets
//! (see `processional-shm`). See `docs/ARCHITECTURE.md` for how function
//! references are validated.
//!
//! # Servers and clients
//! [`server()`] spawns a server process (this same program) listening on a
//! unix socket or TCP address and connects to it; [`client()`] connects to a
//! running one; [`serve()`] / [`ServerBuilder`] run one in this process.
//! Each client's queued calls run in FIFO order, clients never wait for each
//! other, and objects are shared by name ([`SlaveProcess::publish`],
//! [`SlaveProcess::lookup`], [`export`]) as [`Remote`] handles that can also
//! move between clients of the same server. Objects are capabilities: each
//! server has its own objects and names, and a client may use only the
//! objects it holds (wrapped, exported, looked up, or received as a handle);
//! naming any other object's id fails with `UnknownObject`. Every connection is
//! authenticated; the key comes from [`ClientBuilder::key`], else
//! `PROCESSIONAL_KEY` (hex), else the file named by `PROCESSIONAL_KEY_FILE`,
//! else the key file a server writes beside its unix socket. A key file must
//! belong to this user and be closed to group and others
//! ([`Error::UntrustedKeyFile`]), and the server behind a unix socket must
//! run as this user or root ([`Error::UntrustedServer`]). Put sockets in
//! [`runtime_dir()`], a directory only this user can enter.
//! A server runs the handshakes of all pending peers on its accept thread,
//! at most [`DEFAULT_MAX_PENDING_HANDSHAKES`] at once and each for at most
//! [`DEFAULT_SERVER_HANDSHAKE_TIMEOUT`] unless its [`ServerBuilder`] says
//! otherwise, so peers without the key cost it no thread.
//!
//! # Lifetime
//! Dropping the last handle stops the slave (a shutdown message, then
//! SIGTERM after a grace period, then SIGKILL; it is always reaped). If the
//! master dies, even by SIGKILL, its slaves die too (`PR_SET_PDEATHSIG`,
//! and end of stream on the socket). A slave that dies fails every pending
//! task with [`Error::Exited`]. A spawned server's death signal is SIGTERM:
//! on it (and on SIGHUP and SIGINT) it removes its socket and key file, then
//! dies by that signal.

mod child;
mod codec;
mod context;
mod entry;
mod fingerprint;
mod func;
mod function;
mod init;
mod objects;
mod payload;
mod remote;
mod serve;
mod server;
mod session;
mod slave;
mod sys;
mod trust;

pub use child::Termination;
pub use fingerprint::{fingerprint, program_name};
pub use func::Func;
pub use init::init;
pub use objects::live_objects;
pub use payload::{INLINE_LIMIT, INLINE_LIMIT_VAR};
pub use processional_thread::{Error, ExitReason, Task};
pub use remote::Remote;
pub use server::{
    ClientBuilder, DEFAULT_MAX_PENDING_HANDSHAKES, DEFAULT_SERVER_HANDSHAKE_TIMEOUT, KEY_FILE_VAR,
    KEY_VAR, ServerBuilder, ServerHandle, client, export, runtime_dir, serve, server,
};
pub use slave::{Output, SlaveProcess, SlaveProcessBuilder, slave};
