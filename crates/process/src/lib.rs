//! The process runtime of processional: call functions in other processes
//! as easily as in a thread.
//!
//! **Internal crate.** This is a layer of [processional](https://docs.rs/processional);
//! its API is not stable and may change in any release. Depend on the
//! `processional` crate, which re-exports what users need (this crate as
//! `processional::process`).
//!
//! ```
//! use processional_process::func;
//! # fn main() -> Result<(), processional_thread::Error> {
//! let process = processional_process::slave()?; // spawn and connect
//! let resource = process.wrap(func!(|| (0..1_000_000u64).collect::<Vec<_>>()))?;
//! let sum = resource.schedule(func!(|v: &mut Vec<u64>| v.iter().sum::<u64>()));
//! let product = resource.schedule(func!(|v: &mut Vec<u64>| v.iter().product::<u64>()));
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
//! per slave and handed to it on that private socket). `ps` and `top` show
//! it as `<program> [slave <n>]` (or the name given to
//! [`SlaveProcessBuilder::name`]), a spawned server as `<program> [server]`;
//! its `std::env::args()` are its master's, except the first, which is that
//! title (use [`std::env::current_exe`] for the program's path).
//!
//! # Shipping functions
//! A function sent to another process travels as its type, and the receiving
//! process makes its value from nothing; so it must carry no state at all.
//! [`func!`] makes such a [`Func`]: it evaluates a closure (or names a fn
//! item) in a `const` block, where no local variable can be captured. Data
//! travels as explicit serde arguments (`invoke_with`, `schedule_with`, …):
//!
//! ```
//! use processional_process::func;
//! # fn main() -> Result<(), processional_thread::Error> {
//! # let process = processional_process::slave()?;
//! let words = vec!["shipped".to_string(), "as".into(), "arguments".into()];
//! let count = process.invoke_with(words, func!(|words: Vec<String>| words.len()))?;
//! assert_eq!(count, 3);
//! # Ok(())
//! # }
//! ```
//!
//! A closure that captures anything, even a zero-sized "proof" value that
//! only an `init()` of this process can make, fails to build, and so does a
//! plain closure passed without `func!`:
//!
//! ```compile_fail,E0435
//! use processional_process::func;
//!
//! mod registry {
//!     use std::sync::atomic::{AtomicPtr, Ordering};
//!     static STATE: AtomicPtr<u64> = AtomicPtr::new(std::ptr::null_mut());
//!
//!     /// Proof that `init` ran in this process.
//!     #[derive(Clone, Copy)]
//!     pub struct Ready(());
//!
//!     pub fn init() -> Ready {
//!         STATE.store(Box::into_raw(Box::new(41)), Ordering::Release);
//!         Ready(())
//!     }
//!
//!     impl Ready {
//!         pub fn get(self) -> u64 {
//!             // SAFETY: a `Ready` exists only after `init` stored the pointer.
//!             unsafe { *STATE.load(Ordering::Acquire) + 1 }
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), processional_thread::Error> {
//! # let process = processional_process::slave()?;
//! let token = registry::init();
//! let value = process.invoke(func!(move || token.get()))?; // error[E0435]
//! # Ok(())
//! # }
//! ```
//!
//! ```compile_fail,E0308
//! # fn main() -> Result<(), processional_thread::Error> {
//! # let process = processional_process::slave()?;
//! let value = process.invoke(|| 42)?; // error[E0308]: expected `Func<_>`
//! # Ok(())
//! # }
//! ```
//!
//! The receiving process checks every function reference before it runs
//! anything: it must point at a descriptor the compiler emitted in the
//! program's read-only data, naming the function's type by a digest the
//! sender computed from the same type, so that bytes a peer sends can only
//! ever select a function this program ships with the types it expects.
//!
//! Arguments and values are any `Serialize + DeserializeOwned` type, encoded
//! with postcard; a value that fails to encode or decode fails that call only,
//! with [`Error::Codec`] naming its type. A `Serialize` or `Deserialize` that
//! refuses through `processional_proto::custom::serialize_error` (or
//! `deserialize_error`) has its message in the error, as [`Remote`] does:
//!
//! ```no_run
//! use processional_process::{CodecError, Error, Remote, func, slave};
//!
//! # fn main() -> Result<(), Error> {
//! let (holder, other) = (slave()?, slave()?);
//! let remote: Remote<u32> = holder.wrap(func!(|| 5u32))?;
//! match other.invoke_with(remote, func!(|r: Remote<u32>| r.id())) {
//!     Err(Error::Codec { source: CodecError::Custom(why), .. }) => {
//!         assert!(why.contains("can only be passed to that slave"))
//!     }
//!     other => panic!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! postcard is compact because it is not self-describing: the bytes carry no
//! field names or type tags. Types that need them (`#[serde(flatten)]`,
//! `#[serde(untagged)]` or internally tagged enums, `serde_json::Value`)
//! compile, then fail at run time with [`CodecError::NotSelfDescribing`];
//! carry them in a [`Json<T>`], which crosses as JSON inside the postcard
//! payload.
//!
//! `Vec<u8>` takes a fast path, large payloads travel through shared memory,
//! and `ShmBuf` / `ShmVec` values travel as file descriptors on unix sockets
//! (see `processional-shm`).
//!
//! # What grows with the work
//!
//! - An encoded payload up to [`INLINE_LIMIT`] (128 KiB) travels inline in
//!   its frame, a larger one (on unix sockets) in a segment of the
//!   shared-memory pool. The limit was placed by measurement
//!   (`benches/README.md`): the two cross at about 230 KiB on a quiet machine
//!   and higher on a busy one, and up to 128 KiB inline costs 0.4–0.7× a
//!   segment, so the limit keeps a margin below the crossing. Either way one
//!   buffer is made per transfer on each side, so the cost per byte does not
//!   jump with size.
//! - Segments are reused in both directions: an argument's segment comes
//!   back when the reply arrives, a value's when its caller has read it
//!   (the caller says so ahead of its next frame). The pool keeps the latest
//!   segment larger than its idle limit too, so a payload of any size sent
//!   again reuses its segment ([`processional_shm::PoolLimits`]).
//! - `thread` calls run at most [`MAX_THREAD_CALLS`] at once in a serving
//!   process; the others wait in FIFO order and hold no thread until they
//!   start. A `thread` call that waits for a later `thread` call of the
//!   same process beyond that bound waits forever: raise the bound
//!   ([`MAX_THREAD_CALLS_VAR`] in the serving process's environment) or make
//!   the later call a queued one.
//! - The calls a connection has read and not yet started (queued calls, and
//!   `thread` calls waiting for a slot) are at most [`CALL_BACKLOG`] calls,
//!   [`CALL_BACKLOG_BYTES`] of arguments and [`CALL_BACKLOG_FDS`]
//!   descriptors (one call alone may exceed the last two;
//!   [`CALL_BACKLOG_VAR`], [`CALL_BACKLOG_BYTES_VAR`] and
//!   [`CALL_BACKLOG_FDS_VAR`] move them). A call past a limit fails at once
//!   with a remote error of kind `Overloaded` ([`Error::is_overloaded`]),
//!   unrun, its descriptors closed; the connection goes on. The refusal is
//!   queued for the peer like any reply, within [`OUTBOUND_BUDGET`].
//!
//! ```
//! use processional_process::{MAX_THREAD_CALLS_VAR, SlaveProcessBuilder, func};
//! # fn main() -> Result<(), processional_thread::Error> {
//! // A slave that runs up to 1 000 `thread` calls at once.
//! let process = SlaveProcessBuilder::new()
//!     .env(MAX_THREAD_CALLS_VAR, "1000")
//!     .spawn()?;
//! assert_eq!(process.thread(func!(|| 7)).wait()?, 7);
//! # Ok(())
//! # }
//! ```
//!
//! # Answering later
//! A served function can keep the answer of its call and send it later, from
//! any thread: shipped with a `*_later` method
//! ([`SlaveProcess::schedule_later`], [`Remote::schedule_later`], …), it
//! returns the [`Later<T>`] that [`reply_later`] gives it with the call's
//! [`Reply<T>`]. The process serves its next calls meanwhile, and a waiting
//! call holds no thread: this is how a queue hands an item to a consumer
//! that asked before the item existed. If the caller left, [`Reply::send`]
//! hands the value back in a [`NobodyListening`].
//!
//! ```
//! use processional_process::{Later, func, reply_later};
//! # fn main() -> Result<(), processional_thread::Error> {
//! let process = processional_process::slave()?;
//! let answer = process.invoke_later(func!(|| -> Later<u32> {
//!     let (reply, later) = reply_later();
//!     std::thread::spawn(move || reply.send(42));
//!     later
//! }))?;
//! assert_eq!(answer, 42);
//! # Ok(())
//! # }
//! ```
//!
//! # Streams
//! A call can push a stream of items to its caller: shipped with
//! [`SlaveProcess::stream`] / [`stream_with`](SlaveProcess::stream_with), the
//! function gets an [`ItemSink<T>`] and its value ends the stream. The
//! caller reads an [`ItemStream<T, R>`], a blocking `Iterator` (and a
//! `futures_core::Stream`), then [`ItemStream::finish`] for the value. Flow
//! control is by credit: the server sends at most a window of items
//! ([`DEFAULT_STREAM_WINDOW`], or
//! [`stream_with_window`](SlaveProcess::stream_with_window)) beyond those the
//! caller consumed; past that, [`ItemSink::send`] waits and
//! [`ItemSink::try_send`] reports the window full. Dropping the stream
//! cancels it: sending then fails, handing the item back. The sink may move
//! to another thread and feed the stream later; the stream ends once the
//! function returned and the sink is dropped.
//!
//! ```
//! use processional_process::{ItemSink, func};
//! # fn main() -> Result<(), processional_thread::Error> {
//! let process = processional_process::slave()?;
//! let lines = process.stream_with_window(
//!     3u32,
//!     8, // at most 8 lines in flight
//!     func!(|count: u32, lines: ItemSink<String>| {
//!         std::thread::spawn(move || {
//!             for i in 0..count {
//!                 let _ = lines.send(format!("line {i}"));
//!             }
//!         });
//!     }),
//! )?;
//! let lines: Vec<String> = lines.collect::<Result<_, _>>()?;
//! assert_eq!(lines, ["line 0", "line 1", "line 2"]);
//! # Ok(())
//! # }
//! ```
//!
//! # Servers and clients
//! [`server()`] spawns a server process (this same program) listening on a
//! unix socket or TCP address and connects to it; [`client()`] connects to a
//! running one, or fails at once with [`Error::Connect`] naming the address
//! ([`ClientBuilder::retry_for`] waits for a server that is starting);
//! [`serve()`] / [`ServerBuilder`] run one in this process.
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
//! task with [`Error::Exited`] (a broken connection with
//! [`Error::Disconnected`]; both answer `is_worker_lost()`). A spawned server's death signal is SIGTERM:
//! on it (and on SIGHUP and SIGINT) it removes its socket and key file, then
//! dies by that signal.

// Examples are tested as code: a warning in one fails the build.
#![doc(test(attr(deny(warnings))))]

mod backlog;
mod child;
mod codec;
mod context;
mod entry;
mod error;
mod fingerprint;
mod func;
mod function;
mod init;
mod json;
mod objects;
mod payload;
mod remote;
mod reply;
mod serve;
mod server;
mod service;
mod session;
mod sink;
mod slave;
mod stream;
mod sys;
mod thread_calls;
mod title;
mod trust;

pub use backlog::{
    CALL_BACKLOG, CALL_BACKLOG_BYTES, CALL_BACKLOG_BYTES_VAR, CALL_BACKLOG_FDS,
    CALL_BACKLOG_FDS_VAR, CALL_BACKLOG_VAR,
};
pub use fingerprint::{fingerprint, program_name};
pub use func::Func;
pub use init::{SERVE_VAR, init};
pub use json::Json;
pub use objects::live_objects;
pub use payload::{INLINE_LIMIT, INLINE_LIMIT_VAR};
pub use processional_task::{
    AuthFailure, CodecDirection, CodecError, Error, ExitReason, Task, Termination,
};
pub use remote::Remote;
pub use reply::{Later, NobodyListening, Reply, reply_later};
pub use serve::{OUTBOUND_BUDGET, OUTBOUND_BUDGET_VAR};
pub use server::{
    ClientBuilder, DEFAULT_CLIENT_TIMEOUT, DEFAULT_MAX_PENDING_HANDSHAKES,
    DEFAULT_SERVER_HANDSHAKE_TIMEOUT, KEY_FILE_VAR, KEY_VAR, ServerBuilder, ServerHandle, client,
    export, runtime_dir, serve, server,
};
pub use service::{
    ServiceExists, has_service, register_deferred_service, register_service,
    register_stream_service,
};
pub use sink::{ItemSink, TrySendError};
pub use slave::{Output, SlaveProcess, SlaveProcessBuilder, slave};
pub use stream::{DEFAULT_STREAM_WINDOW, ItemStream};
pub use thread_calls::{MAX_THREAD_CALLS, MAX_THREAD_CALLS_VAR};
