//! processional: call a function in another thread, another process, or a
//! server on another machine as easily as calling it here.
//!
//! ```
//! use processional::func;
//! # fn main() -> Result<(), processional::Error> {
//! // A function on another thread: its value, or its panic as an error.
//! let task = processional::thread(|| (0..1_000_000u64).sum::<u64>());
//! assert_eq!(task.wait()?, 499_999_500_000);
//!
//! // A thread that keeps a resource and takes orders.
//! let slave = processional::SlaveThread::new();
//! let resource = slave.wrap(|| (0..1_000_000u64).collect::<Vec<_>>());
//! let sum = resource.schedule(|v| v.iter().sum::<u64>());
//! assert_eq!(sum.wait()?, 499_999_500_000);
//!
//! // The same across a process boundary: functions sent to another process
//! // are written with `func!`, which refuses any closure that captures.
//! let process = processional::slave()?;
//! let resource = process.wrap(func!(|| (0..1_000_000u64).collect::<Vec<_>>()))?;
//! let product = resource.schedule(func!(|v: &mut Vec<u64>| v.iter().product::<u64>()));
//! assert_eq!(product.wait()?, 0);
//! # Ok(())
//! # }
//! ```
//!
//! **Linux only today** (see [what a port needs](#linux-only-today-what-a-port-needs)).
//! This crate is the stable API; the `processional-*` crates below it are
//! internal layers, re-exported here as modules for the rare program that
//! needs them.
//!
//! # The layers
//! This crate re-exports the runtimes; each layer is also a crate of its own:
//!
//! | module | what it holds |
//! |---|---|
//! | [`proto`] (`processional-proto`) | the wire format: frames, messages, the incremental decoder |
//! | [`transport`] (`processional-transport`) | unix/TCP connections, fd passing, authentication, the authenticating listener |
//! | [`shm`] (`processional-shm`) | shared-memory segments, `ShmBuf`, `ShmVec`, the segment pool |
//! | [`task`] (`processional-task`) | [`Task`], `Completer`, [`TaskSet`], [`SharedTask`], cancellation, [`Error`]: what every runtime shares |
//! | [`thread`](mod@thread) (`processional-thread`) | [`thread()`], [`SlaveThread`], thread-bound objects |
//! | [`process`] (`processional-process`) | [`slave()`], [`SlaveProcess`], [`Remote`], servers and clients, services |
//! | [`state`] (`processional-state`) | a global state for many processes: [`state::State`], [`state::Context`], watchers |
//! | [`channel`] (`processional-channel`) | pipes and hosted queues of [`channel::Message`]s: filtered receive, join, poison pills |
//!
//! # Threads
//! [`thread()`] runs a closure on a pooled thread and returns its [`Task`];
//! [`SlaveThread`] owns resources and runs orders in FIFO order
//! (`invoke`, `schedule`, `wrap`). Cancellation is cooperative: a task calls
//! [`checkpoint()`] where stopping is safe, since Rust cannot kill a thread.
//!
//! # Many tasks
//! Every runtime hands out a [`Task`]. A [`TaskSet`] takes tasks of any of
//! them (threads, slave processes, servers) and gives each back as soon as
//! it finishes, blocking or as an async stream; [`Task::shared`] makes a
//! [`SharedTask`] that many can wait for. Neither starts a thread.
//!
//! # Processes
//! [`slave()`] re-executes this program as a slave process. Tasks sent to it
//! are [`Func`]s, written with [`func!`]: a closure that captures nothing, or
//! a fn item (data travels as serde arguments: `invoke_with`,
//! `schedule_with`), and objects it keeps are reached through [`Remote`]
//! handles. The slave enters its serving loop before `main` runs
//! (feature `auto-init`, on by default); without that feature, call
//! [`init()`] first thing in `main`. Read [how it works and its
//! limitations](#how-it-works-and-limitations) before the first slave.
//!
//! # Servers
//! [`server()`] spawns a server (this same program) on a unix socket or TCP
//! address, [`client()`] connects to one, [`serve()`] runs one here. Clients
//! share objects by name ([`SlaveProcess::publish`], [`SlaveProcess::lookup`],
//! [`export()`]); every connection proves it holds the key first: a peer
//! without the key runs nothing and costs the server no thread. Frames are
//! not encrypted after the handshake: across untrusted networks, run TCP
//! inside a tunnel.
//!
//! # Shared memory
//! [`ShmBuf`], [`ShmVec`] and [`ShmSlice`] inside arguments and values travel
//! to processes on this host as file descriptors: the receiver maps the same
//! pages, sealed read-only. Large encoded payloads (say a big `Vec<u8>`) go
//! through a pooled shared-memory segment automatically.
//!
//! # Workers
//! [`worker`] puts one API over threads, processes and remote processes
//! (`Worker`), feeds a worker a stream of inputs (`PersistentWorker`), and
//! spreads inputs over a pool of mixed workers that survives a worker's
//! death (`Pool`); `worker::spawn_server` (or `PROCESSIONAL_SERVE=addr`)
//! makes a remote-worker server.
//!
//! ```
//! use processional::func;
//! use processional::worker::{PoolBuilder, WorkerKind};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut pool = PoolBuilder::new(func!(|x: u64| x * x))
//!     .worker(WorkerKind::Thread)
//!     .worker(WorkerKind::Process)
//!     .spawn()?;
//! assert_eq!(pool.map(0..4u64)?, [0, 1, 4, 9]);
//! # Ok(())
//! # }
//! ```
//!
//! # The state store
//! [`state`] serves a map shared by many processes: a [`state::Context`]
//! starts the server and spawns processes that each get a [`state::State`]
//! handle (dict methods, one atomic request each, typed values, revisions),
//! transactions, atomic updates that roll back on failure, waits
//! (`when_equal`, `when_available`, …) that never poll, and watchers that
//! never miss a change within the server's bounded history (past it, one
//! [`state::StateError::Compacted`] with the state now). Atomic closures
//! and predicate waits ship code: they need the same build; the data
//! operations are services that another build may call (see [below](#both-sides-run-the-same-build)).
//!
//! ```
//! use processional::func;
//! use processional::state::{Context, State, StateError};
//! # fn main() -> Result<(), StateError> {
//! let context = Context::new()?;
//! let state = context.state();
//! let child = context.spawn(func!(|state: State, n: i64| state.increment("total", n)), 5)?;
//! assert_eq!(child.wait(None)?, 5);
//! state.when_equal("total", &5i64, None)?;
//! assert_eq!(state.get::<i64>("total")?, Some(5));
//! # Ok(())
//! # }
//! ```
//!
//! # Channels
//! [`channel`] holds typed pipes ([`channel::pipe`], 1:1, at most
//! [`channel::MAX_MESSAGE`] bytes a message) and hosted queues
//! ([`channel::Queue`], 1:N, N:1, N:M) of [`channel::Message`]s: filtered
//! receives (for me, from a pid, of a kind, any predicate) that leave the
//! other messages in place and in order, bounded queues with a send
//! timeout, join, poison pills. Handles travel to other processes as
//! arguments; [`channel::Queue::recv_where`] ships its predicate (same
//! build), the rest are services.
//!
//! ```
//! use processional::channel::{Queue, Request};
//! # fn main() -> Result<(), processional::channel::Error> {
//! let queue = Queue::<u32>::new()?;
//! queue.send(Request::Do, Some(1))?;
//! queue.send(Request::Die, None)?;
//! assert_eq!(queue.recv_kind(Request::Die)?.request, Request::Die);
//! assert_eq!(queue.recv()?.data, Some(1));
//! queue.join()?; // every message received
//! # Ok(())
//! # }
//! ```
//!
//! # How it works and limitations
//!
//! A slave is this same program, started again from its executable
//! (`/proc/self/exe`) with a private marker in its environment. Before
//! `main` runs, the marker turns it into a server of its master's calls
//! over an inherited unix socket. A call names its function by the place of
//! the function's code in the executable, and carries its arguments
//! encoded with serde (postcard). The rules below follow from that.
//!
//! ## Tasks capture nothing: data goes as arguments
//! The receiving process makes the function from its type alone, so a
//! function sent to another process cannot carry state: [`func!`] accepts a
//! closure that captures nothing (the compiler refuses one that does) or a
//! fn item. Whatever the function needs travels as arguments
//! ([`SlaveProcess::invoke_with`], [`SlaveProcess::schedule_with`],
//! [`Remote::invoke_with`], ...) or lives in the other process already (an
//! object behind a [`Remote`], a value [`export()`]ed there):
//!
//! ```
//! use processional::func;
//! # fn main() -> Result<(), processional::Error> {
//! let process = processional::slave()?;
//! let factor = 3u64; // a local: it goes as an argument, not captured
//! let scaled = process.invoke_with(
//!     (factor, vec![1u64, 2, 3]),
//!     func!(|(factor, values): (u64, Vec<u64>)| values.iter().map(|v| v * factor).collect::<Vec<_>>()),
//! )?;
//! assert_eq!(scaled, [3, 6, 9]);
//! # Ok(())
//! # }
//! ```
//!
//! Arguments and values must be `Serialize + DeserializeOwned`; postcard
//! cannot carry types that need a self-describing format
//! (`#[serde(flatten)]`, `#[serde(untagged)]`): wrap those in [`Json<T>`].
//! Threads have none of these limits: [`thread()`] and [`SlaveThread`] take
//! ordinary closures.
//!
//! ## Both sides run the same build
//! A function reference is only meaningful in the same executable, so the
//! handshake compares a fingerprint of the build ([`fingerprint()`]: the
//! executable's build id, or its layout) and refuses a peer that runs
//! anything else, with [`Error::Fingerprint`]. For a slave this always
//! holds. For a server and its clients it means: the clients are the same
//! binary as the server (the same program started in another role, e.g.
//! by a command-line switch), built once and deployed together. A server
//! left running across an upgrade refuses the new clients until it is
//! restarted from the new build; rebuilding the program, even without a
//! change, may give another fingerprint.
//!
//! The one door for other builds is *services*: functions a serving process
//! registers under a name ([`register_service`]). A client connected with
//! [`ClientBuilder::data_only`] ships no code, so the handshake lets it run
//! another build, or be another program, as long as it holds the key; it
//! may call services ([`SlaveProcess::call_service`]) and nothing else. The
//! data operations of the state store and the queues are services; what
//! ships code (an atomic closure, a predicate) still needs the same build.
//!
//! ## Large values: shared memory on unix sockets, one frame over TCP
//! On a unix socket (a slave, a `unix:` server) a payload past
//! [`INLINE_LIMIT`](process::INLINE_LIMIT) travels in shared memory, whatever
//! its size. Over TCP every payload travels inline, in one frame of at most
//! 64 MiB (less a little room for the message around it): a larger argument
//! fails its call with [`Error::Codec`] before anything is sent, and a
//! larger value fails its call with an [`Error::Remote`] codec error; the
//! connection goes on either way. Send such data in parts, or over a unix
//! socket. Inline payloads up to 1 MiB reuse one encoding buffer per
//! process; past 1 MiB each call allocates (and faults in) its own, which
//! costs about three times as much per byte.
//!
//! ## A connection takes a bounded backlog of calls
//! A serving process (a slave, a server) reads its peer's calls as they
//! come and queues those that cannot start yet. Per connection, the calls
//! waiting to start (queued calls, and `thread` calls waiting for one of
//! the [`MAX_THREAD_CALLS`](process::MAX_THREAD_CALLS) slots) may be at most
//! [`CALL_BACKLOG`](process::CALL_BACKLOG) (32 768) calls, holding at most
//! [`CALL_BACKLOG_BYTES`](process::CALL_BACKLOG_BYTES) (64 MiB) of
//! arguments and [`CALL_BACKLOG_FDS`](process::CALL_BACKLOG_FDS) (256) file
//! descriptors (one call alone may exceed the last two). A call past a
//! limit is not run: it fails at once with an [`Error::Remote`] of kind
//! `Overloaded` ([`Error::is_overloaded`]), its descriptors closed, and the
//! connection goes on; make it again once earlier calls have started. The
//! variables `PROCESSIONAL_CALL_BACKLOG`, `PROCESSIONAL_CALL_BACKLOG_BYTES`
//! and `PROCESSIONAL_CALL_BACKLOG_FDS` in the serving process's environment
//! (e.g. [`SlaveProcessBuilder::env`]) move them. So a client that floods
//! calls, or never reads its replies, cannot grow a server's memory without
//! bound; its refusals and replies wait for it within the 64 MiB
//! [`OUTBOUND_BUDGET`](process::OUTBOUND_BUDGET), past which its connection
//! is closed. A call that has started (running, or answering later) no
//! longer counts. Releases of dropped [`Remote`]s wait behind the calls
//! before them too, at most about twice as many as the handles the peer
//! holds: a peer that releases handles it never held is cut off.
//!
//! ```
//! use processional::{SlaveProcessBuilder, func};
//! use processional::process::CALL_BACKLOG_VAR;
//! # fn main() -> Result<(), processional::Error> {
//! // A slave that takes up to 100 000 calls waiting on its connection.
//! let process = SlaveProcessBuilder::new()
//!     .env(CALL_BACKLOG_VAR, "100000")
//!     .spawn()?;
//! assert_eq!(process.invoke(func!(|| 7))?, 7);
//! # Ok(())
//! # }
//! ```
//!
//! ## `Send` bounds
//! - [`thread()`] and [`SlaveThread::invoke`] need `F: Send + 'static` and
//!   a value that is `Send`: both cross threads.
//! - [`SlaveThread::wrap`] builds the object on the slave thread, so the
//!   object itself need not be `Send` (an `Rc`, a `RefCell` work); its
//!   [`Bound`] handle is.
//! - In a process, a [`Func`]'s closure is `Fn + Send + Sync + 'static` (the
//!   serving side may run it on any of its threads), an object behind a
//!   [`Remote<T>`] is `T: Send + 'static`, and values are serde values.
//! - A [`Task<T>`] is `Send` when `T` is, so it can be waited for anywhere.
//!
//! ## Code before `main` runs in slaves too
//! A slave is the whole program started again: static constructors run in
//! it as in the master, before processional's own (with `auto-init`, a
//! `ctor`) turns it into a slave. Your own `#[ctor]` functions, and those of
//! your dependencies, therefore run once in every slave and server: keep
//! them cheap and free of side effects that must happen once (writing a
//! file, connecting somewhere, printing). `main` itself never runs in a
//! slave. To run nothing of the program before the slave takes over, turn
//! `auto-init` off and call [`init()`] first thing in `main`, and put the
//! setup after it.
//!
//! ## `std::env::args()` in a slave
//! A slave gets its master's arguments: `std::env::args().skip(1)` is the
//! same in both. Its `argv[0]` is its title instead (`myapp [slave 2]`,
//! `myapp [server]`, or [`SlaveProcessBuilder::name`]), which `ps` and `top`
//! show, and which it also takes as its process name (cut to 15 bytes). For
//! the program's path, use [`std::env::current_exe`].
//!
//! ## Linux only today: what a port needs
//! The portable code names no system call: every OS call lives in one
//! `sys.rs` per crate. A port implements those for the new system. What
//! Linux gives and another system must replace:
//! - re-executing the running build (`/proc/self/exe`) and reading its
//!   build id for the fingerprint;
//! - anonymous shared memory that can be sealed read-only (`memfd_create`
//!   and `F_SEAL_*`), mapped by the receiver;
//! - passing descriptors over unix sockets (`SCM_RIGHTS`) and the peer's
//!   credentials (`SO_PEERCRED`); abstract socket names (`unix:@name`);
//! - a child that dies with its master (`PR_SET_PDEATHSIG`) and waiting for
//!   children without a thread each (pidfds; a thread per child before
//!   Linux 5.3);
//! - the process name (`PR_SET_NAME`) and `epoll` (through mio) for the
//!   authenticating listener.
//!
//! Other unix systems have most of these under other names (`shm_open`,
//! `kqueue` with `EVFILT_PROC`, `getpeereid`); Windows would need another
//! transport too (named pipes, handle duplication).

// Examples are tested as code: a warning in one fails the build.
#![doc(test(attr(deny(warnings))))]

#[doc(inline)]
pub use processional_channel as channel;
#[doc(inline)]
pub use processional_process as process;
#[doc(inline)]
pub use processional_proto as proto;
#[doc(inline)]
pub use processional_shm as shm;
#[doc(inline)]
pub use processional_state as state;
#[doc(inline)]
pub use processional_task as task;
#[doc(inline)]
pub use processional_thread as thread;
#[doc(inline)]
pub use processional_transport as transport;
pub use processional_worker as worker;

pub use processional_process::{
    ClientBuilder, Func, ItemSink, ItemStream, Json, Later, NobodyListening, Output, Remote, Reply,
    ServerBuilder, ServerHandle, ServiceExists, SlaveProcess, SlaveProcessBuilder, Termination,
    TrySendError, client, export, fingerprint, func, has_service, init, live_objects,
    register_deferred_service, register_service, register_stream_service, reply_later, runtime_dir,
    serve, server, slave,
};
pub use processional_shm::{SharedMutBuf, ShmBuf, ShmSlice, ShmVec};
pub use processional_task::{
    AuthFailure, CancelToken, CodecDirection, CodecError, Error, ExitReason, KeyFileProblem,
    PanicReport, RemoteError, RemoteErrorKind, Result, SharedResult, SharedTask, Task, TaskId,
    TaskSet, checkpoint,
};
pub use processional_thread::{
    Bound, Builder as ThreadBuilder, SlaveBuilder as SlaveThreadBuilder, SlaveDriver, SlaveThread,
    thread,
};
pub use processional_transport::{Address, Key};
