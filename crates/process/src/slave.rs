//! Slave processes: spawn one, send it orders, stop it.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ChildStderr, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use processional_proto::{Hello, PROTOCOL_VERSION, Role, RunMode};
use processional_task::{Error, ExitReason, Task, Termination};
use processional_transport::{AgreedNonces, Connection, Handshake, Key, PeerInfo, Side};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::child::{self, ChildExitProbe, ChildProcess};
use crate::entry::{CallEntry, DeferredEntry, StreamEntry, WrapEntry};
use crate::error::{bad_key, handshake_error, setup_error};
use crate::fingerprint::{fingerprint, program_name};
use crate::func::Func;
use crate::function::Described;
use crate::objects::ObjectTable;
use crate::remote::{Remote, encode_for, scheduled};
use crate::reply::Later;
use crate::serve::{End, Served, ShutdownHook};
use crate::server::ServerBootstrap;
use crate::session::{Session, Target};
use crate::sink::ItemSink;
use crate::stream::ItemStream;
use crate::sys;
use crate::title;

/// The environment variable that tells a re-executed program it is a slave,
/// and which inherited descriptor leads to its master.
pub(crate) const SLAVE_FD_VAR: &str = "PROCESSIONAL_SLAVE_FD";

/// How long a handshake may take before the connection is dropped.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the master tells a child on the private socket before the handshake.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Bootstrap {
    pub(crate) key: Vec<u8>,
    /// The challenges of the pipelined handshake (initiator, acceptor).
    pub(crate) nonces: ([u8; 32], [u8; 32]),
    pub(crate) detached: bool,
    /// Present when the child is to be a server.
    pub(crate) server: Option<ServerBootstrap>,
}

/// What a handle is connected to, which decides what dropping it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A slave we spawned: stopped when the last handle drops.
    Slave,
    /// A server we spawned: disconnected when the last handle drops; it exits
    /// by itself after its last client unless persistent.
    SpawnedServer,
    /// A server we connected to: only disconnected.
    Client,
}

/// Our `Hello` in the given role.
pub(crate) fn hello(role: Role) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        fingerprint: fingerprint(),
        role,
        pid: sys::pid(),
        host: sys::hostname(),
        program: program_name(),
    }
}

/// Where a slave's standard output or error goes
/// ([`SlaveProcessBuilder::stdout`], [`SlaveProcessBuilder::stderr`]; see
/// the builder's example for [`Capture`](Output::Capture)).
///
/// ```
/// use processional_process::{Output, SlaveProcessBuilder, func};
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let quiet = SlaveProcessBuilder::new().stdout(Output::Null).spawn()?;
/// quiet.invoke(func!(|| println!("nobody reads this")))?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// The same as this process's.
    #[default]
    Inherit,
    /// Nowhere.
    Null,
    /// A pipe, read through [`SlaveProcess::take_stdout`] / `take_stderr`.
    Capture,
}

impl Output {
    fn stdio(self) -> Stdio {
        match self {
            Output::Inherit => Stdio::inherit(),
            Output::Null => Stdio::null(),
            Output::Capture => Stdio::piped(),
        }
    }
}

/// Configures and spawns a slave process. See [`slave`] for the default.
///
/// ```
/// use processional_process::{Output, SlaveProcessBuilder, func};
/// use std::io::Read;
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = SlaveProcessBuilder::new()
///     .name("greeter") // what `ps` and `top` show
///     .env("GREETING", "hello")
///     .stdout(Output::Capture)
///     .spawn()?;
/// process.invoke(func!(|| println!("{} from the slave", std::env::var("GREETING").unwrap())))?;
/// process.terminate(std::time::Duration::from_secs(10));
/// let mut printed = String::new();
/// process.take_stdout().expect("captured").read_to_string(&mut printed).unwrap();
/// assert_eq!(printed, "hello from the slave\n");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SlaveProcessBuilder {
    env: Vec<(OsString, Option<OsString>)>,
    env_clear: bool,
    current_dir: Option<PathBuf>,
    stdout: Output,
    stderr: Output,
    detach: bool,
    name: Option<String>,
    grace: Duration,
}

impl Default for SlaveProcessBuilder {
    fn default() -> Self {
        SlaveProcessBuilder {
            env: Vec::new(),
            env_clear: false,
            current_dir: None,
            stdout: Output::Inherit,
            stderr: Output::Inherit,
            detach: false,
            name: None,
            grace: Duration::from_secs(1),
        }
    }
}

impl SlaveProcessBuilder {
    /// A builder with the defaults: inherited environment, directory and
    /// output; stopped when its last handle drops.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets an environment variable in the slave.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable from the slave's environment.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.env.push((key.into(), None));
        self
    }

    /// Starts the slave with an empty environment (plus what `env` adds).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    /// The slave's working directory.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Where the slave's standard output goes.
    pub fn stdout(mut self, output: Output) -> Self {
        self.stdout = output;
        self
    }

    /// Where the slave's standard error goes.
    pub fn stderr(mut self, output: Output) -> Self {
        self.stderr = output;
        self
    }

    /// Detached: when the last handle drops (or this process dies), the
    /// slave finishes the calls it is running, then exits, instead of being
    /// stopped at once.
    pub fn detach(mut self, detach: bool) -> Self {
        self.detach = detach;
        self
    }

    /// A name for the slave: its title in `ps` and `top` (its `argv[0]`
    /// and its process name, cut to the kernel's 15 bytes) and in `Debug`.
    /// Without one, a slave is called `<program> [slave <n>]`, numbered
    /// from 1 in each master.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long a stopping slave may take to exit by itself before it gets
    /// SIGTERM, and then SIGKILL (default 1 s).
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Spawns the slave and connects to it.
    pub fn spawn(self) -> Result<SlaveProcess, Error> {
        self.spawn_with(Key::generate(), None)
    }

    pub(crate) fn spawn_with(
        self,
        key: Key,
        server: Option<ServerBootstrap>,
    ) -> Result<SlaveProcess, Error> {
        let nonces =
            AgreedNonces::generate().map_err(|e| Error::io("cannot draw random nonces", e))?;
        let role = if server.is_some() {
            Role::Server
        } else {
            Role::Slave
        };
        let kind = if server.is_some() {
            Kind::SpawnedServer
        } else {
            Kind::Slave
        };
        let (mut ours, theirs) =
            UnixStream::pair().map_err(|e| Error::io("cannot create a socket pair", e))?;
        let theirs = OwnedFd::from(theirs);
        let mut command = Command::new(self_executable());
        // Named in `ps` and `top` (argv[0], which the child also makes its
        // process name), with the master's arguments after it.
        let title_role = if server.is_some() {
            title::Role::Server
        } else {
            title::Role::Slave
        };
        command
            .arg0(title::next(
                &program_name(),
                title_role,
                self.name.as_deref(),
            ))
            .args(std::env::args_os().skip(1));
        if self.env_clear {
            command.env_clear();
        }
        for (key, value) in &self.env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        command
            .stdin(Stdio::null())
            .stdout(self.stdout.stdio())
            .stderr(self.stderr.stdio());
        let mut std_child = child::spawn(command, theirs, !self.detach)
            .map_err(|e| Error::io("cannot spawn the slave process", e))?;
        let child = Arc::new(ChildProcess::new(std_child.id()));
        let stdout = std_child.stdout.take();
        let stderr = std_child.stderr.take();
        let peer = match kind {
            Kind::SpawnedServer => format!("the server process {}", child.pid()),
            _ => format!("the slave process {}", child.pid()),
        };

        let result = (|| {
            write_bootstrap(
                &mut ours,
                &Bootstrap {
                    key: key.as_bytes().to_vec(),
                    nonces: (nonces.initiator, nonces.acceptor),
                    detached: self.detach,
                    server,
                },
            )
            .map_err(|e| Error::io("cannot talk to the new slave", e))?;
            let mut connection = Connection::from_unix(ours)
                .map_err(|e| setup_error("cannot talk to the new slave", e))?;
            let config = Handshake {
                key,
                hello: hello(Role::Master),
                accept_roles: vec![role],
                timeout: Some(HANDSHAKE_TIMEOUT),
            };
            let peer = if role == Role::Slave {
                // The nonces went to the child on its private socket: our
                // first call leaves with our proof, and the child's proof is
                // checked as the first thing we read (`handshake_pipelined`).
                connection
                    .handshake_pipelined(Side::Initiator, &config, &nonces)
                    .map_err(|e| handshake_error(&peer, HANDSHAKE_TIMEOUT, e))?;
                // What the child will say about itself; its hello is checked
                // against the same fingerprint before any reply is read.
                PeerInfo {
                    hello: Hello {
                        pid: child.pid(),
                        ..hello(role)
                    },
                }
            } else {
                // A server answers once it listens: its address works as
                // soon as `server()` returns.
                connection
                    .handshake(Side::Initiator, &config)
                    .map_err(|e| handshake_error(&peer, HANDSHAKE_TIMEOUT, e))?
            };
            Ok::<_, Error>(Session::new(connection, peer))
        })();
        let session = match result {
            Ok(session) => session,
            Err(error) => {
                let _ = child.signal(sys::SIGKILL);
                let reason = child.wait_timeout(Duration::from_secs(5));
                return Err(match (error, reason) {
                    (Error::Disconnected { .. }, Some(reason)) => Error::Exited(reason),
                    (error, _) => error,
                });
            }
        };
        session.set_exit_probe(Box::new(ChildExitProbe(child.clone())));
        Ok(SlaveProcess {
            inner: Arc::new(Inner {
                session,
                child: Some(child),
                kind,
                detached: self.detach,
                name: self.name,
                grace: self.grace,
                stdout: Mutex::new(stdout),
                stderr: Mutex::new(stderr),
            }),
        })
    }
}

fn self_executable() -> PathBuf {
    // /proc/self/exe still runs this very build if the file was replaced.
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        proc_exe
    } else {
        std::env::current_exe().unwrap_or(proc_exe)
    }
}

fn write_bootstrap(stream: &mut UnixStream, bootstrap: &Bootstrap) -> std::io::Result<()> {
    let bytes = postcard::to_stdvec(bootstrap).map_err(std::io::Error::other)?;
    let mut frame = (bytes.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(&bytes);
    stream.write_all(&frame)
}

fn read_bootstrap(stream: &mut UnixStream) -> std::io::Result<Bootstrap> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 64 * 1024 {
        return Err(std::io::Error::other("bootstrap message too large"));
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes)?;
    postcard::from_bytes(&bytes).map_err(std::io::Error::other)
}

/// Spawns a slave process: this same program, re-executed, serving our calls.
///
/// The slave enters its serving loop before `main` runs (see [`init`](crate::init)).
/// It is stopped when the last handle drops, and dies with this process.
/// [`SlaveProcessBuilder`] sets its environment, directory, output and name.
///
/// ```
/// use processional_process::func;
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = processional_process::slave()?;
/// assert_ne!(process.pid(), std::process::id());
/// let pid = process.invoke(func!(|| std::process::id()))?;
/// assert_eq!(pid, process.pid());
/// # Ok(())
/// # }
/// ```
///
/// A slave is this program started again: read [how it works and its
/// limitations](https://docs.rs/processional/latest/processional/#how-it-works-and-limitations) (functions capture nothing, code before `main` runs in
/// it too, what `std::env::args()` returns there).
pub fn slave() -> Result<SlaveProcess, Error> {
    SlaveProcessBuilder::new().spawn()
}

/// Runs this process as a slave if it was spawned as one; returns otherwise.
pub(crate) fn run_if_slave() {
    let Some(fd) = std::env::var_os(SLAVE_FD_VAR) else {
        return;
    };
    // SAFETY: this runs before `main` (pre-main constructor) or first thing in
    // `main` (`init`, whose docs require it), when no other thread reads or
    // writes the environment.
    unsafe { std::env::remove_var(SLAVE_FD_VAR) };
    let parent = std::env::var_os(crate::child::PARENT_VAR);
    let mut master = None;
    if let Some(parent) = &parent {
        // SAFETY: as above, no other thread touches the environment yet.
        unsafe { std::env::remove_var(crate::child::PARENT_VAR) };
        match parent.to_str().and_then(|p| p.parse::<i32>().ok()) {
            Some(parent) => {
                // A server trades SIGKILL for SIGTERM once it can handle it
                // (see `bind_spawned_server`).
                if let Err(error) = sys::die_with_parent(parent, sys::SIGKILL) {
                    eprintln!(
                        "processional: slave {} cannot follow its master: {error}",
                        sys::pid()
                    );
                    std::process::exit(71);
                }
                master = Some(parent);
            }
            None => {
                eprintln!(
                    "processional: {} is not a process id",
                    crate::child::PARENT_VAR
                );
                std::process::exit(64);
            }
        }
    }
    sys::ignore_sigpipe();
    // `ps` and `top` show the title our master gave us as argv[0], not `exe`.
    if let Some(title) = std::env::args_os().next() {
        let _ = sys::set_thread_name(&title::comm(&title.to_string_lossy()));
    }
    let code = match fd.to_str().and_then(|s| s.parse::<RawFd>().ok()) {
        Some(fd) => match run_slave(fd, master) {
            Ok(()) => 0,
            Err(error) => {
                eprintln!("processional: slave {} cannot serve: {error}", sys::pid());
                // A server that bound its address but could not serve.
                crate::server::remove_spawned_server_files();
                70
            }
        },
        None => {
            eprintln!("processional: {SLAVE_FD_VAR} is not a descriptor number");
            64
        }
    };
    std::process::exit(code);
}

/// Serves the master on the inherited socket `fd`; `master` is the pid of
/// the master this process must die with, if any.
fn run_slave(fd: RawFd, master: Option<i32>) -> Result<(), Error> {
    // SAFETY: the master passed this descriptor to us (and only us) for the
    // connection; nothing else in this process knows or owns it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut stream = UnixStream::from(owned);
    sys::set_cloexec(&stream).map_err(|e| Error::io("inherited socket", e))?;
    // Overlap the watchdog thread's creation with the master's first bytes.
    crate::serve::start_watchdog();
    let bootstrap =
        read_bootstrap(&mut stream).map_err(|e| Error::io("reading the bootstrap", e))?;
    let peer = match master {
        Some(pid) => format!("the master process {pid}"),
        None => "the master".to_owned(),
    };
    let key =
        Key::from_bytes(&bootstrap.key).map_err(|e| bad_key(peer.as_str(), "the bootstrap", e))?;
    let listener = match &bootstrap.server {
        Some(server) => Some(crate::server::bind_spawned_server(server, &key, master)?),
        None => None,
    };
    let mut connection =
        Connection::from_unix(stream).map_err(|e| setup_error("inherited socket", e))?;
    let role = if bootstrap.server.is_some() {
        Role::Server
    } else {
        Role::Slave
    };
    let nonces = AgreedNonces {
        initiator: bootstrap.nonces.0,
        acceptor: bootstrap.nonces.1,
    };
    let config = Handshake {
        key: key.clone(),
        hello: hello(role),
        accept_roles: vec![Role::Master],
        timeout: Some(HANDSHAKE_TIMEOUT),
    };
    if role == Role::Slave {
        connection.handshake_pipelined(Side::Acceptor, &config, &nonces)
    } else {
        connection.handshake(Side::Acceptor, &config).map(Some)
    }
    .map_err(|e| handshake_error(&peer, HANDSHAKE_TIMEOUT, e))?;
    processional_task::set_capture_backtraces(true);
    if let (Some(server), Some(listener)) = (bootstrap.server, listener) {
        return crate::server::run_spawned_server(connection, listener, key, server);
    }
    let exit: ShutdownHook = Arc::new(|| std::process::exit(0));
    // A slave's objects are its master's alone.
    let served = Served::new(connection, &ObjectTable::new(), Some(exit), false);
    let end = served.serve();
    if end == End::PeerClosed && bootstrap.detached {
        served.wait_for_threads();
    }
    Ok(())
}

struct Inner {
    session: Arc<Session>,
    child: Option<Arc<ChildProcess>>,
    kind: Kind,
    detached: bool,
    name: Option<String>,
    grace: Duration,
    stdout: Mutex<Option<ChildStdout>>,
    stderr: Mutex<Option<ChildStderr>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Only an attached slave is stopped; a detached slave or a spawned
        // server is only disconnected (it finishes what it runs, a server
        // serves its other clients), and a client connection closes when its
        // last user, maybe a `Remote`, drops it.
        let stop = self.kind == Kind::Slave && !self.detached;
        if stop {
            let _ = self.session.send(&processional_proto::Message::Shutdown);
        }
        if self.kind != Kind::Client {
            self.session.close();
        }
        if let Some(child) = self.child.clone() {
            // Reap in the background: dropping a handle never blocks.
            child::reap_in_background(child, stop.then_some(self.grace));
        }
    }
}

/// A handle to a process that runs our calls: a slave we spawned, or a
/// server we spawned or connected to. Cheap to clone.
///
/// When the last clone drops, an attached slave is stopped: asked to exit,
/// then SIGTERM after its grace period, then SIGKILL, and reaped in the
/// background (dropping never blocks). A detached slave and a spawned server
/// are only disconnected: the slave finishes what it runs and exits; the
/// server keeps serving its other clients and, unless persistent, stops when
/// the last one leaves. A connection to a server we did not spawn just
/// closes. [`terminate`](Self::terminate) stops any of them at once.
///
/// Calls come in the shapes the thread runtime's `SlaveThread` has:
/// [`invoke`](Self::invoke) waits for the value, [`schedule`](Self::schedule)
/// queues the call (FIFO with this handle's other queued calls) and returns
/// its [`Task`], [`thread`](Self::thread) runs it beside the queue,
/// [`wrap`](Self::wrap) builds an object there and returns its
/// [`Remote`]; each has a `_with` form that takes arguments.
///
/// ```
/// use processional_process::{Task, func};
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = processional_process::slave()?;
/// // Wait for the value.
/// assert_eq!(process.invoke_with(20u32, func!(|n: u32| n + 1))?, 21);
/// // Queue calls; they run one after another, in order.
/// let tasks: Vec<Task<u64>> = (1..=3u64)
///     .map(|n| process.schedule_with(n, func!(|n: u64| n * n)))
///     .collect();
/// let squares = tasks.into_iter().map(Task::wait).collect::<Result<Vec<_>, _>>()?;
/// assert_eq!(squares, [1, 4, 9]);
/// // Keep an object there and call it.
/// let counter = process.wrap(func!(|| 0u64))?;
/// counter.invoke(func!(|count: &mut u64| *count += 5))?;
/// assert_eq!(counter.fetch()?, 5);
/// # Ok(())
/// # }
/// ```
///
/// Functions capture nothing and take their data as arguments; arguments
/// and values are serde values (see [`Json`](crate::Json) for what postcard
/// cannot carry). See [how it works and its limitations](https://docs.rs/processional/latest/processional/#how-it-works-and-limitations).
#[derive(Clone)]
pub struct SlaveProcess {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SlaveProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlaveProcess")
            .field("name", &self.inner.name)
            .field("pid", &self.pid())
            .field("host", &self.host())
            .field("connected", &self.inner.session.is_connected())
            .finish()
    }
}

impl SlaveProcess {
    pub(crate) fn from_session(session: Arc<Session>, kind: Kind) -> SlaveProcess {
        SlaveProcess {
            inner: Arc::new(Inner {
                session,
                child: None,
                kind,
                detached: false,
                name: None,
                grace: Duration::from_secs(1),
                stdout: Mutex::new(None),
                stderr: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.inner.session
    }

    /// The process id of the process that runs the calls.
    pub fn pid(&self) -> u32 {
        self.inner.session.peer().hello.pid
    }

    /// The thread that runs the calls, if there is one to name: `None`,
    /// since a slave process serves each connection's calls on threads of
    /// its own choosing (a [`SlaveThread`](processional_thread::SlaveThread)
    /// answers `Some`).
    pub fn tid(&self) -> Option<u32> {
        None
    }

    /// The host name of the process that runs the calls.
    pub fn host(&self) -> &str {
        &self.inner.session.peer().hello.host
    }

    /// Whether the process still runs and the connection works. Reads what
    /// already arrived first (without blocking), so a server that went away
    /// while the connection was idle is seen as gone.
    pub fn is_alive(&self) -> bool {
        self.inner.session.check_connected()
            && self.inner.child.as_ref().is_none_or(|c| c.is_alive())
    }

    /// Runs `f` in the process and waits for its value.
    ///
    /// `f` is a [`Func`], made with [`func!`](crate::func!): it captures
    /// nothing; pass data with [`invoke_with`](Self::invoke_with). A panic
    /// in `f` is [`Error::Remote`] here, and the slave goes on serving.
    ///
    /// ```
    /// use processional_process::{Error, func};
    ///
    /// # fn main() -> Result<(), processional_process::Error> {
    /// let process = processional_process::slave()?;
    /// assert_eq!(process.invoke(func!(|| 6 * 7))?, 42);
    /// match process.invoke(func!(|| -> u8 { panic!("no answer") })) {
    ///     Err(Error::Remote(remote)) => assert_eq!(remote.message, "no answer"),
    ///     other => panic!("{other:?}"),
    /// }
    /// assert!(process.is_alive());
    /// # Ok(())
    /// # }
    /// ```
    pub fn invoke<F, R>(&self, f: Func<F>) -> Result<R, Error>
    where
        F: Fn() -> R + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule(f).wait()
    }

    /// Runs `f(args)` in the process and waits for its value.
    ///
    /// `args` is encoded with postcard and sent; the function receives it by
    /// value. Several arguments travel as a tuple. A type postcard cannot
    /// carry (`#[serde(flatten)]`, `#[serde(untagged)]`) fails with
    /// [`CodecError::NotSelfDescribing`](crate::CodecError::NotSelfDescribing):
    /// wrap it in [`Json`](crate::Json).
    ///
    /// ```
    /// use processional_process::func;
    ///
    /// # fn main() -> Result<(), processional_process::Error> {
    /// let process = processional_process::slave()?;
    /// let text = "the quick brown fox".to_string();
    /// let longest = process.invoke_with(
    ///     (text, 4usize),
    ///     func!(|(text, min): (String, usize)| {
    ///         text.split(' ').filter(|word| word.len() >= min).map(str::to_owned).collect::<Vec<_>>()
    ///     }),
    /// )?;
    /// assert_eq!(longest, ["quick", "brown"]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn invoke_with<A, F, R>(&self, args: A, f: Func<F>) -> Result<R, Error>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule_with(args, f).wait()
    }

    /// Queues `f` in the process (FIFO with this handle's other queued calls).
    pub fn schedule<F, R>(&self, f: Func<F>) -> Task<R>
    where
        F: Fn() -> R + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule_with((), f.with_unit_argument())
    }

    /// Queues `f(args)` in the process.
    ///
    /// `args` and the value cross as postcard: see
    /// [`invoke_with`](Self::invoke_with) for what it cannot carry.
    pub fn schedule_with<A, F, R>(&self, args: A, f: Func<F>) -> Task<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.call(args, f, RunMode::Queued)
    }

    /// Runs `f` in the process on a thread of its own, concurrently with the
    /// queued calls.
    pub fn thread<F, R>(&self, f: Func<F>) -> Task<R>
    where
        F: Fn() -> R + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.thread_with((), f.with_unit_argument())
    }

    /// Runs `f(args)` in the process on a thread of its own.
    ///
    /// `args` and the value cross as postcard: see
    /// [`invoke_with`](Self::invoke_with) for what it cannot carry.
    pub fn thread_with<A, F, R>(&self, args: A, f: Func<F>) -> Task<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.call(args, f, RunMode::Thread)
    }

    fn call<A, F, R>(&self, args: A, _f: Func<F>, mode: RunMode) -> Task<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let function = CallEntry::<F, A, R>::function_ref();
        scheduled(&self.inner.session, function, mode, &args)
    }

    /// Runs `f` in the process and waits for the answer it sends later.
    ///
    /// `f` returns a [`Later<R>`]: it took the call's [`Reply`](crate::Reply)
    /// with [`reply_later`](crate::reply_later) and keeps it, or hands it to
    /// another thread, to answer whenever it likes. The process serves its
    /// next calls meanwhile (see [`schedule_later`](Self::schedule_later)).
    pub fn invoke_later<F, R>(&self, f: Func<F>) -> Result<R, Error>
    where
        F: Fn() -> Later<R> + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule_later(f).wait()
    }

    /// Runs `f(args)` in the process and waits for the answer it sends
    /// later.
    pub fn invoke_later_with<A, F, R>(&self, args: A, f: Func<F>) -> Result<R, Error>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A) -> Later<R> + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule_later_with(args, f).wait()
    }

    /// Queues `f` in the process; the task completes when `f`'s
    /// [`Reply`](crate::Reply) is sent, from wherever it went.
    ///
    /// The `*_later` methods differ from the plain ones only in what the
    /// function returns (a [`Later<R>`] instead of an `R`); they are
    /// separate methods because one generic method cannot tell the two
    /// apart. A deferred call holds no thread while it waits: ten thousand
    /// of them cost ten thousand small records, not threads.
    pub fn schedule_later<F, R>(&self, f: Func<F>) -> Task<R>
    where
        F: Fn() -> Later<R> + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        self.schedule_later_with((), f.with_unit_argument())
    }

    /// Queues `f(args)` in the process; the task completes when `f`'s
    /// [`Reply`](crate::Reply) is sent.
    pub fn schedule_later_with<A, F, R>(&self, args: A, _f: Func<F>) -> Task<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A) -> Later<R> + Send + Sync + 'static,
        R: Serialize + DeserializeOwned + Send + 'static,
    {
        let function = DeferredEntry::<F, A, R>::function_ref();
        scheduled(&self.inner.session, function, RunMode::Queued, &args)
    }

    /// Runs `f` in the process (queued, like [`schedule`](Self::schedule))
    /// with an [`ItemSink`] it pushes items into; returns the stream of
    /// those items, which ends with `f`'s value.
    ///
    /// ```
    /// use processional_process::{ItemSink, func};
    /// # fn main() -> Result<(), processional_thread::Error> {
    /// let process = processional_process::slave()?;
    /// let mut squares = process.stream_with(
    ///     5u64,
    ///     func!(|n: u64, items: ItemSink<u64>| {
    ///         for i in 0..n {
    ///             if items.send(i * i).is_err() {
    ///                 break; // the caller dropped the stream
    ///             }
    ///         }
    ///         "done".to_string()
    ///     }),
    /// )?;
    /// let got: Vec<u64> = squares.by_ref().collect::<Result<_, _>>()?;
    /// assert_eq!(got, [0, 1, 4, 9, 16]);
    /// assert_eq!(squares.finish()?, "done");
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// The stream ends once `f` has returned *and* its sink is dropped, so
    /// `f` may hand the sink to another thread that feeds the stream later
    /// (the process serves its next calls meanwhile).
    pub fn stream<F, T, R>(&self, f: Func<F>) -> Result<ItemStream<T, R>, Error>
    where
        F: Fn(ItemSink<T>) -> R + Send + Sync + 'static,
        T: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.stream_with((), f.with_unit_stream_argument())
    }

    /// Runs `f(args, sink)` in the process; returns the stream of the items
    /// it pushes into `sink`, ended by its value. The server may send up to
    /// [`DEFAULT_STREAM_WINDOW`](crate::DEFAULT_STREAM_WINDOW) items ahead
    /// of those consumed.
    pub fn stream_with<A, F, T, R>(&self, args: A, f: Func<F>) -> Result<ItemStream<T, R>, Error>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A, ItemSink<T>) -> R + Send + Sync + 'static,
        T: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.stream_with_window(args, crate::DEFAULT_STREAM_WINDOW, f)
    }

    /// Like [`stream_with`](Self::stream_with), letting the server send up
    /// to `window` items (at least 1) ahead of those consumed: a small window
    /// bounds what waits in memory, a large one keeps a fast producer busy
    /// while the consumer works.
    pub fn stream_with_window<A, F, T, R>(
        &self,
        args: A,
        window: u32,
        _f: Func<F>,
    ) -> Result<ItemStream<T, R>, Error>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A, ItemSink<T>) -> R + Send + Sync + 'static,
        T: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let session = &self.inner.session;
        let bytes = encode_for(session, &args)?;
        let (task, inbox) = session.call_stream(
            StreamEntry::<F, A, T, R>::function_ref(),
            RunMode::Queued,
            bytes,
        )?;
        Ok(ItemStream::new(session.clone(), task, inbox, window))
    }

    /// Calls the service the process registered as `name` (see
    /// [`register_service`](crate::register_service)) with `args`: the
    /// task of its value. The call ships no code, so it works from a
    /// [data-only client](crate::ClientBuilder::data_only) of another build
    /// too. A name the process does not know fails the task with a remote
    /// error of kind [`NotFound`](processional_proto::RemoteErrorKind::NotFound).
    ///
    /// ```
    /// use processional_process::{func, register_service};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let process = processional_process::slave()?;
    /// process.invoke(func!(|| register_service("example.v1.len", func!(|s: String| s.len()))))??;
    /// let len: usize = process.call_service("example.v1.len", "four".to_string()).wait()?;
    /// assert_eq!(len, 4);
    /// assert!(process.call_service::<_, usize>("example.v1.nobody", ()).wait().is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn call_service<A, R>(&self, name: &str, args: A) -> Task<R>
    where
        A: Serialize + 'static,
        R: DeserializeOwned + Send + 'static,
    {
        let session = &self.inner.session;
        encode_for(session, &args)
            .and_then(|bytes| session.call_to::<R>(Target::Service(name.into()), bytes))
            .unwrap_or_else(|error| Task::ready(Err(error)))
    }

    /// Opens the streaming service the process registered as `name` (see
    /// [`register_stream_service`](crate::register_stream_service)), letting
    /// it send up to `window` items (at least 1) ahead of those consumed.
    pub fn stream_service<A, T, R>(
        &self,
        name: &str,
        args: A,
        window: u32,
    ) -> Result<ItemStream<T, R>, Error>
    where
        A: Serialize + 'static,
        T: DeserializeOwned + 'static,
        R: DeserializeOwned + 'static,
    {
        let session = &self.inner.session;
        let bytes = encode_for(session, &args)?;
        let (task, inbox) = session.stream_to(Target::Service(name.into()), bytes)?;
        Ok(ItemStream::new(session.clone(), task, inbox, window))
    }

    /// Builds an object in the process with `f` and keeps it there.
    pub fn wrap<F, T>(&self, f: Func<F>) -> Result<Remote<T>, Error>
    where
        F: Fn() -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        self.wrap_with((), f.with_unit_argument())
    }

    /// Builds an object in the process with `f(args)` and keeps it there.
    ///
    /// `args` cross as postcard (the object never does): see
    /// [`invoke_with`](Self::invoke_with) for what it cannot carry.
    pub fn wrap_with<A, F, T>(&self, args: A, _f: Func<F>) -> Result<Remote<T>, Error>
    where
        A: Serialize + DeserializeOwned + 'static,
        F: Fn(A) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        let session = &self.inner.session;
        let bytes = encode_for(session, &args)?;
        let id: u64 = session
            .call::<u64>(WrapEntry::<F, A, T>::function_ref(), RunMode::Queued, bytes)?
            .wait()?;
        Ok(Remote::new(session.clone(), id))
    }

    /// Stops the process within `timeout`, and says how it ended.
    ///
    /// It is asked to exit (a `Shutdown` it acknowledges) and given half of
    /// `timeout` to do so; a child of ours that is still there then gets
    /// SIGTERM and the rest of `timeout`, then SIGKILL (and at most a second
    /// more to be reaped). One deadline holds for the whole sequence.
    ///
    /// A server this process did not spawn is asked to stop too, for every
    /// client; its exit is not ours to see, so the answer is
    /// `Graceful(ExitReason::Unknown)` once it acknowledged, `Unknown`
    /// otherwise.
    pub fn terminate(&self, timeout: Duration) -> Termination {
        let start = Instant::now();
        let deadline = start + timeout;
        let graceful = start + timeout / 2;
        let acknowledged = self.inner.session.shutdown(timeout / 2);
        self.inner.session.close();
        match &self.inner.child {
            Some(child) if acknowledged => child.stop_by(graceful, deadline),
            Some(child) => child.stop_by(Instant::now(), deadline),
            None if acknowledged => Termination::Graceful(ExitReason::Unknown),
            None => Termination::Unknown,
        }
    }

    /// The pipe of the slave's standard output, if it was captured.
    pub fn take_stdout(&self) -> Option<ChildStdout> {
        self.inner
            .stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The pipe of the slave's standard error, if it was captured.
    pub fn take_stderr(&self) -> Option<ChildStderr> {
        self.inner
            .stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }
}
