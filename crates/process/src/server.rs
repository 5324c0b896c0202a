//! Servers and clients: one process shared by many, over unix sockets or TCP.
//!
//! A server accepts connections on a [`Listener`] and authenticates them
//! all on its accept thread ([`AuthenticatingListener`]: non-blocking
//! sockets, at most [`ServerBuilder::max_pending_handshakes`] at once, each
//! bounded by [`ServerBuilder::handshake_timeout`]), so a peer without the
//! key costs a socket for a few seconds, never a thread. It then serves each
//! authenticated client exactly like a slave serves its master: one executor
//! thread per client, so each client's queued calls run in FIFO order and
//! clients never wait for each other. Each server has an object table of its
//! own (ids, names, tickets), shared by its clients under the capability rule
//! of [`crate::objects`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use processional_proto::{Role, RunMode};
use processional_task::{AuthFailure, Error};
use processional_transport::{
    AcceptStopper, Address, AuthenticatingListener, Connection, Handshake, Key, Listener, Side,
};
use serde::{Deserialize, Serialize};

use crate::entry::{LookupEntry, PublishEntry};
use crate::error::{address_error, connect_error, handshake_error, listen_error};
use crate::function::Described;
use crate::objects::ObjectTable;
use crate::remote::{Remote, encode_for};
use crate::serve::{End, Served, ShutdownHook};
use crate::session::Session;
use crate::slave::{Kind, SlaveProcess, hello};
use crate::sys;
use crate::trust::{
    configured_key, is_trusted_server_uid, key_file_for, resolve_key, write_key_file,
};

/// How long a server gives a peer to complete the handshake, unless
/// [`ServerBuilder::handshake_timeout`] says otherwise.
pub const DEFAULT_SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many handshakes a server runs at once, unless
/// [`ServerBuilder::max_pending_handshakes`] says otherwise.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize =
    processional_transport::DEFAULT_MAX_PENDING_HANDSHAKES;

/// The environment variable holding the key, in hex.
pub const KEY_VAR: &str = "PROCESSIONAL_KEY";
/// The environment variable naming a file that holds the key, in hex.
pub const KEY_FILE_VAR: &str = "PROCESSIONAL_KEY_FILE";

fn parse_address(address: &str) -> Result<Address, Error> {
    address.parse().map_err(|e| address_error(address, e))
}

/// A directory for this user's server sockets (and their key files) that
/// no other user can enter: `$XDG_RUNTIME_DIR/processional/`, else
/// `/tmp/processional-<uid>/`, created with mode 0700 if needed (an existing
/// one must be this user's and closed to others).
///
/// ```
/// # fn main() -> Result<(), processional_thread::Error> {
/// let address = format!("unix:{}/my-server", processional_process::runtime_dir()?.display());
/// # let _ = address;
/// # Ok(())
/// # }
/// ```
pub fn runtime_dir() -> Result<PathBuf, Error> {
    processional_transport::runtime_dir()
        .map_err(|e| Error::io("cannot make a private runtime directory", e))
}

/// How a server treats peers that have not authenticated yet.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct HandshakeLimits {
    /// Handshakes run at once; a newer connection displaces the oldest.
    pub(crate) max_pending: usize,
    /// How long one handshake may take.
    pub(crate) timeout: Duration,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            max_pending: DEFAULT_MAX_PENDING_HANDSHAKES,
            timeout: DEFAULT_SERVER_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Options of a server run in this process ([`serve`]) or spawned
/// ([`server`]).
///
/// ```
/// use std::time::Duration;
/// use processional_process::{ServerBuilder, func};
/// use processional_transport::Key;
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let address = format!(
///     "unix:{}/doc-builder-{}.sock",
///     processional_process::runtime_dir()?.display(),
///     std::process::id()
/// );
/// let key = Key::generate();
/// // In this process, on background threads, until stopped.
/// let handle = ServerBuilder::new(&address)?
///     .key(key.clone())
///     .persistent(true) // do not stop when the last client leaves
///     .handshake_timeout(Duration::from_secs(2))
///     .start()?;
/// let process = processional_process::ClientBuilder::new(&address)?.key(key).connect()?;
/// assert_eq!(process.invoke(func!(|| std::process::id()))?, std::process::id());
/// assert_eq!(handle.clients(), 1);
/// drop(process);
/// handle.stop();
/// handle.join();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    address: Address,
    key: Option<Key>,
    persistent: bool,
    detach: bool,
    handshakes: HandshakeLimits,
}

impl ServerBuilder {
    /// A server on `address` (`unix:/path`, `unix:@name`, `tcp://host:port`).
    pub fn new(address: &str) -> Result<Self, Error> {
        let address = parse_address(address)?;
        Ok(ServerBuilder {
            address,
            key: None,
            persistent: false,
            detach: false,
            handshakes: HandshakeLimits::default(),
        })
    }

    /// The key clients must prove they hold (default: `PROCESSIONAL_KEY`,
    /// else the file `PROCESSIONAL_KEY_FILE` names; [`spawn`](Self::spawn)
    /// generates one when neither is set, and writes it beside a unix
    /// socket for this user's clients, ignoring a key file an earlier
    /// server left there).
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// Keep serving when no client is connected (default: exit after the
    /// last client leaves).
    pub fn persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// For [`spawn`](Self::spawn): the server outlives this process and its
    /// handle (default: it dies with this process).
    pub fn detach(mut self, detach: bool) -> Self {
        self.detach = detach;
        self
    }

    /// How many connections may be in their handshake at once (default
    /// [`DEFAULT_MAX_PENDING_HANDSHAKES`], at least 1). All handshakes run on
    /// the server's accept thread, so a peer that connects and says nothing
    /// costs a socket, never a thread; when this many are pending, a new
    /// connection closes the one that has waited longest (a legitimate
    /// client needs one round trip, so only a flood of connections crowds it
    /// out).
    pub fn max_pending_handshakes(mut self, max_pending: usize) -> Self {
        self.handshakes.max_pending = max_pending.max(1);
        self
    }

    /// How long a peer has to complete the handshake before it is closed
    /// (default [`DEFAULT_SERVER_HANDSHAKE_TIMEOUT`]).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshakes.timeout = timeout;
        self
    }

    fn key_or_error(&self) -> Result<Key, Error> {
        match resolve_key(self.key.as_ref(), &self.address)? {
            Some(key) => Ok(key),
            // A TCP port is open to everyone: only a key keeps them out.
            None if self.address.is_tcp() => Err(Error::Auth {
                peer: format!("the clients of {}", self.address),
                failure: AuthFailure::NoKey {
                    looked_in: format!("ServerBuilder::key, {KEY_VAR}, {KEY_FILE_VAR}"),
                },
            }),
            // Unix sockets (0600): generate a key and publish it in the key
            // file beside a socket file.
            None => Ok(Key::generate()),
        }
    }

    /// Runs the server in this process until it stops (a client asked for
    /// it, or the last client left and the server is not persistent).
    pub fn run(self) -> Result<(), Error> {
        self.start()?.join();
        Ok(())
    }

    /// Starts the server on background threads of this process.
    pub fn start(self) -> Result<ServerHandle, Error> {
        let key = self.key_or_error()?;
        let listener = Listener::bind(&self.address).map_err(|e| listen_error(&self.address, e))?;
        let address = listener.local_addr();
        let key_file = match (&self.key, key_file_for(&address)) {
            (None, Some(path)) if std::env::var_os(KEY_VAR).is_none() => {
                write_key_file(&path, &key)?;
                Some(path)
            }
            _ => None,
        };
        start_accepting(listener, key, key_file, self.persistent, self.handshakes, 0)
    }
}

struct ServerState {
    /// Clients served or in their handshake.
    clients: AtomicUsize,
    /// Whether a client (a spawned server's master included) ever passed the
    /// handshake: a non-persistent server stops when its count falls to zero
    /// after that.
    served_any: AtomicBool,
    stopped: Mutex<bool>,
    stopped_changed: Condvar,
    persistent: bool,
    key: Key,
    address: Address,
    key_file: Option<PathBuf>,
    objects: Arc<ObjectTable>,
    accepting: AcceptStopper,
}

impl ServerState {
    fn stop(&self) {
        // Files first: a spawned server exits as soon as `join` sees the
        // stop, possibly before this thread runs another line.
        let socket = match &self.address {
            Address::Unix(path) => Some(path.as_path()),
            _ => None,
        };
        remove_server_files(&[self.key_file.as_deref(), socket]);
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        // Wakes the accept thread, which drops the listener and every
        // pending handshake.
        self.accepting.stop();
        self.stopped_changed.notify_all();
    }

    /// Whether a non-persistent server that has served someone now serves
    /// nobody. It stops then, unless a handshake is still running: the
    /// accept thread decides (see [`accept_loop`]).
    fn is_idle(&self) -> bool {
        !self.persistent
            && self.served_any.load(Ordering::Acquire)
            && self.clients.load(Ordering::Acquire) == 0
    }

    /// A client counted in [`clients`](Self::clients) is gone: after a
    /// shutdown request the server stops; when it was the last one, the
    /// accept thread is woken to see whether the server is idle.
    fn client_left(&self, shutdown: bool) {
        let left = self.clients.fetch_sub(1, Ordering::AcqRel) - 1;
        if shutdown {
            self.stop();
        } else if left == 0 {
            self.accepting.wake();
        }
    }
}

/// The files (socket and key file) a spawned server made and has not
/// removed yet. Its stop and a stop signal (see [`remove_files_on_signals`])
/// both take them from here, so each is removed once, by whichever comes
/// first, and never after another server made a file of the same name.
static SERVER_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes the files a spawned server made, when it cannot start after all.
pub(crate) fn remove_spawned_server_files() {
    let mut files = SERVER_FILES.lock().unwrap_or_else(|p| p.into_inner());
    for path in files.drain(..) {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes these files of a server (and forgets them in [`SERVER_FILES`]).
fn remove_server_files(paths: &[Option<&Path>]) {
    let mut registered = SERVER_FILES.lock().unwrap_or_else(|p| p.into_inner());
    for path in paths.iter().flatten() {
        registered.retain(|registered| registered != path);
        let _ = std::fs::remove_file(path);
    }
}

/// The signals that stop a spawned server, its master's death included
/// (its death signal is SIGTERM): they remove the server's files first.
const STOP_SIGNALS: [i32; 3] = [sys::SIGTERM, sys::SIGHUP, sys::SIGINT];

/// In a spawned server: on a [stop signal](STOP_SIGNALS), removes the files
/// in [`SERVER_FILES`] (waiting for a bind in progress to register them),
/// then dies by that signal.
fn remove_files_on_signals() -> Result<(), Error> {
    use std::io::Read;
    let mut pipe = sys::report_signals(&STOP_SIGNALS)
        .map_err(|e| Error::io("cannot handle stop signals", e))?;
    std::thread::Builder::new()
        .name("processional-signals".into())
        .spawn(move || {
            let mut signal = [0u8];
            let signal = match pipe.read_exact(&mut signal) {
                Ok(()) => i32::from(signal[0]),
                // Cannot happen (we hold the only read end, the write end is
                // never closed); if it did, stop as SIGTERM would.
                Err(error) => {
                    log::error!("processional: lost the stop signal pipe: {error}");
                    sys::SIGTERM
                }
            };
            remove_spawned_server_files();
            sys::die_by_signal(signal)
        })
        .map_err(|e| Error::io("cannot start the signal thread", e))?;
    Ok(())
}

/// A server running in this process, started by [`ServerBuilder::start`]:
/// its address and key, its clients, and how to stop it.
///
/// ```
/// use processional_process::ServerBuilder;
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let address = format!(
///     "unix:{}/doc-handle-{}.sock",
///     processional_process::runtime_dir()?.display(),
///     std::process::id()
/// );
/// let handle = ServerBuilder::new(&address)?.start()?;
/// assert_eq!(handle.address().to_string(), address);
/// assert_eq!(handle.clients(), 0);
/// handle.stop(); // removes the socket and its key file
/// handle.join();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ServerHandle {
    state: Arc<ServerState>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("address", &self.state.address)
            .field("clients", &self.clients())
            .finish()
    }
}

impl ServerHandle {
    /// The address it listens on (with the real port for `tcp://…:0`).
    pub fn address(&self) -> &Address {
        &self.state.address
    }

    /// The key clients must hold.
    pub fn key(&self) -> &Key {
        &self.state.key
    }

    /// How many clients are connected now (counting those in their
    /// handshake).
    pub fn clients(&self) -> usize {
        self.state.clients.load(Ordering::Acquire)
    }

    /// How many objects this server keeps for its clients now (held by a
    /// client, or by a handle in transit between two). See also the
    /// process-wide [`live_objects`](crate::live_objects).
    pub fn live_objects(&self) -> usize {
        self.state.objects.len()
    }

    /// Stops accepting clients and returns.
    pub fn stop(&self) {
        self.state.stop();
    }

    /// Waits until the server stops.
    pub fn join(&self) {
        let mut stopped = self.state.stopped.lock().unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            stopped = self
                .state
                .stopped_changed
                .wait(stopped)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The state of a server listening on `listener`, with its accept loop
/// started on a thread of its own; `clients` are counted already (a spawned
/// server's master).
fn start_accepting(
    listener: Listener,
    key: Key,
    key_file: Option<PathBuf>,
    persistent: bool,
    handshakes: HandshakeLimits,
    clients: usize,
) -> Result<ServerHandle, Error> {
    let address = listener.local_addr();
    let handshake = Handshake {
        key: key.clone(),
        hello: hello(Role::Server),
        accept_roles: vec![Role::Client, Role::Master, Role::DataClient],
        timeout: Some(handshakes.timeout),
    };
    let listener = AuthenticatingListener::new(listener, handshake, handshakes.max_pending)
        .map_err(|e| listen_error(&address, e))?;
    let state = Arc::new(ServerState {
        clients: AtomicUsize::new(clients),
        served_any: AtomicBool::new(clients > 0),
        stopped: Mutex::new(false),
        stopped_changed: Condvar::new(),
        persistent,
        key,
        address,
        key_file,
        objects: ObjectTable::new(),
        accepting: listener.stopper(),
    });
    let accept_state = state.clone();
    std::thread::Builder::new()
        .name("processional-accept".into())
        .spawn(move || accept_loop(listener, accept_state))
        .map_err(|e| Error::io("cannot start the server thread", e))?;
    Ok(ServerHandle { state })
}

/// Runs every handshake and starts serving each client that passes, until
/// the server stops, or is idle with no handshake running.
///
/// A client may start (its `client()` returns) once it has checked the
/// server's proof, before the server has read its verdict; so a handshake
/// that runs keeps a non-persistent server alive, and only this thread,
/// which sees both the handshakes and (through `is_idle`) the clients,
/// decides that the server is idle. A client is counted here, before a
/// later `is_idle` can look.
fn accept_loop(mut listener: AuthenticatingListener, state: Arc<ServerState>) {
    loop {
        match listener.accept_unless(|pending| pending == 0 && state.is_idle()) {
            Ok(Some((connection, peer))) => {
                let data_only = peer.hello.role == Role::DataClient;
                state.clients.fetch_add(1, Ordering::AcqRel);
                state.served_any.store(true, Ordering::Release);
                let client_state = state.clone();
                let spawned = std::thread::Builder::new()
                    .name("processional-client".into())
                    .spawn(move || serve_counted(connection, data_only, &client_state));
                if let Err(error) = spawned {
                    log::error!("processional: cannot start a thread for a client: {error}");
                    state.client_left(false);
                }
            }
            Ok(None) => {
                state.stop();
                break;
            }
            Err(error) => {
                log::error!("processional: the server cannot wait for connections: {error}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    drop(listener);
}

/// Serves an authenticated client, already counted in `state.clients`.
fn serve_counted(connection: Connection, data_only: bool, state: &Arc<ServerState>) {
    let stopper = state.clone();
    let stop: ShutdownHook = Arc::new(move || stopper.stop());
    let served = Served::new(connection, &state.objects, Some(stop), data_only);
    let end = served.serve();
    drop(served);
    // A data-only client's shutdown ends only its own connection.
    state.client_left(end == End::Shutdown && !data_only);
}

/// Runs a server on `address` in this process, blocking until it stops.
/// See [`ServerBuilder`] for options (persistence, key, background thread).
///
/// This is how a program serves from its own `main`, e.g. behind a
/// command-line switch; its clients must be the same build (see
/// [how it works and its limitations](https://docs.rs/processional/latest/processional/#how-it-works-and-limitations)):
///
/// ```no_run
/// fn main() -> Result<(), processional_process::Error> {
///     let address = "unix:/run/user/1000/myapp.sock";
///     if std::env::args().any(|arg| arg == "--serve") {
///         return processional_process::serve(address); // until stopped
///     }
///     let process = processional_process::client(address)?;
///     # drop(process);
///     Ok(())
/// }
/// ```
pub fn serve(address: &str) -> Result<(), Error> {
    ServerBuilder::new(address)?.persistent(true).run()
}

/// How long connecting to a server, and then the handshake, may take each,
/// unless [`ClientBuilder::timeout`] says otherwise.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Options of a connection to a server.
///
/// ```
/// # fn main() -> Result<(), processional_process::Error> {
/// use std::time::Duration;
/// use processional_process::{ClientBuilder, Error, ServerBuilder, func};
///
/// let address = format!(
///     "unix:{}/doc-client-builder-{}.sock",
///     processional_process::runtime_dir()?.display(),
///     std::process::id()
/// );
/// // Fails at once, naming the address, when nobody listens there.
/// match ClientBuilder::new(&address)?.connect() {
///     Err(Error::Connect { address: named, .. }) => assert_eq!(named, address),
///     other => panic!("{other:?}"),
/// }
/// // A server that is still starting: try again for a while.
/// let key = processional_transport::Key::generate();
/// let starting = {
///     let (address, key) = (address.clone(), key.clone());
///     std::thread::spawn(move || ServerBuilder::new(&address)?.key(key).start())
/// };
/// let process = ClientBuilder::new(&address)?
///     .key(key)
///     .retry_for(Duration::from_secs(30))
///     .timeout(Duration::from_secs(30))
///     .connect()?;
/// assert_eq!(process.invoke(func!(|| 1u8))?, 1);
/// let handle = starting.join().unwrap()?;
/// handle.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    address: Address,
    key: Option<Key>,
    timeout: Duration,
    retry_for: Duration,
    data_only: bool,
}

impl ClientBuilder {
    /// A client of the server at `address`.
    pub fn new(address: &str) -> Result<Self, Error> {
        let address = parse_address(address)?;
        Ok(ClientBuilder {
            address,
            key: None,
            timeout: DEFAULT_CLIENT_TIMEOUT,
            retry_for: Duration::ZERO,
            data_only: false,
        })
    }

    /// The key to prove (default: from the environment or the key file).
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// How long connecting may take, and then the handshake (default
    /// [`DEFAULT_CLIENT_TIMEOUT`]): a server that accepts the connection
    /// but does not answer fails [`connect`](Self::connect) with
    /// [`Error::TimedOut`] after this long.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Keeps trying to connect for up to `patience` while the server cannot
    /// be reached (nobody listens at the address yet: it is still
    /// starting, say). By default a connection that fails fails
    /// [`connect`](Self::connect) at once, with [`Error::Connect`] naming
    /// the address.
    pub fn retry_for(mut self, patience: Duration) -> Self {
        self.retry_for = patience;
        self
    }

    /// Connects as a data-only client: one that calls the server's named
    /// services ([`SlaveProcess::call_service`]) and nothing else. Such a
    /// client ships no code, so the server may run another build, or
    /// another program altogether, as long as both hold the key; the
    /// server refuses its `func!` calls, and its shutdown requests end
    /// only its own connection.
    ///
    /// ```no_run
    /// use processional_process::ClientBuilder;
    ///
    /// # fn main() -> Result<(), processional_process::Error> {
    /// // An inspection tool, built separately from the server it reads.
    /// let server = ClientBuilder::new("unix:/run/myapp/state.sock")?
    ///     .data_only(true)
    ///     .connect()?;
    /// let count: u64 = server.call_service("myapp.v1.count", ()).wait()?;
    /// println!("{count}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn data_only(mut self, data_only: bool) -> Self {
        self.data_only = data_only;
        self
    }

    /// Connects and authenticates.
    pub fn connect(self) -> Result<SlaveProcess, Error> {
        let deadline = Instant::now().checked_add(self.retry_for);
        let mut connection = loop {
            match Connection::connect_timeout(&self.address, self.timeout) {
                Ok(connection) => break connection,
                Err(error) if deadline.is_none_or(|deadline| Instant::now() < deadline) => {
                    log::trace!("processional: {} not there yet: {error}", self.address);
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(error) => return Err(connect_error(&self.address, self.timeout, error)),
            }
        };
        // Whoever listens on a unix socket of ours must be us (or root):
        // another user's process there could be impersonating our server.
        let peer_uid = connection
            .peer_uid()
            .map_err(|e| Error::io("cannot tell who runs the server", e))?;
        if let Some(uid) = peer_uid {
            let euid = sys::euid();
            if !is_trusted_server_uid(uid, euid) {
                return Err(Error::UntrustedServer {
                    address: self.address.to_string(),
                    uid,
                    euid,
                });
            }
        }
        let Some(key) = resolve_key(self.key.as_ref(), &self.address)? else {
            let key_file = key_file_for(&self.address)
                .map(|path| format!(", {}", path.display()))
                .unwrap_or_default();
            return Err(Error::Auth {
                peer: self.address.to_string(),
                failure: AuthFailure::NoKey {
                    looked_in: format!("ClientBuilder::key, {KEY_VAR}, {KEY_FILE_VAR}{key_file}"),
                },
            });
        };
        let peer = connection
            .handshake(
                Side::Initiator,
                &Handshake {
                    key,
                    hello: hello(if self.data_only {
                        Role::DataClient
                    } else {
                        Role::Client
                    }),
                    accept_roles: vec![Role::Server],
                    timeout: Some(self.timeout),
                },
            )
            .map_err(|e| handshake_error(&self.address.to_string(), self.timeout, e))?;
        let session = Session::new(connection, peer);
        session.set_origin(self.address.to_string());
        Ok(SlaveProcess::from_session(session, Kind::Client))
    }
}

/// Connects to the server at `address`. Fails at once, with
/// [`Error::Connect`] naming the address, if nobody listens there (see
/// [`ClientBuilder::retry_for`] to wait for a server that is starting).
///
/// The key comes from [`KEY_VAR`], [`KEY_FILE_VAR`] or the key file a
/// server writes beside its unix socket ([`ClientBuilder::key`] to give one).
/// The server must run the same build as this client.
///
/// ```
/// use processional_process::{Remote, func};
///
/// fn fill() {
///     processional_process::export("primes", vec![2u64, 3, 5, 7]).unwrap();
/// }
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let address = format!(
///     "unix:{}/doc-client-{}.sock",
///     processional_process::runtime_dir()?.display(),
///     std::process::id()
/// );
/// let spawned = processional_process::server(&address)?; // this program, as a server
/// spawned.invoke(func!(fill))?;
///
/// // Any process of this user (and this build) can now connect.
/// let process = processional_process::client(&address)?;
/// let primes: Remote<Vec<u64>> = process.lookup("primes")?;
/// assert_eq!(primes.invoke(func!(|p: &mut Vec<u64>| p.iter().sum::<u64>()))?, 17);
/// # Ok(())
/// # }
/// ```
pub fn client(address: &str) -> Result<SlaveProcess, Error> {
    ClientBuilder::new(address)?.connect()
}

/// Spawns a server process (this same program) listening on `address`, and
/// connects to it. It exits after its last client leaves (unless built
/// persistent with [`ServerBuilder::spawn`]). Its address works as soon as
/// this returns; `ps` shows it as `<program> [server]`.
///
/// ```
/// use processional_process::func;
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let address = format!(
///     "unix:{}/doc-server-{}.sock",
///     processional_process::runtime_dir()?.display(),
///     std::process::id()
/// );
/// let server = processional_process::server(&address)?;
/// assert_eq!(server.invoke(func!(|| 1 + 1))?, 2);
/// let other = processional_process::client(&address)?; // a second client
/// assert_eq!(other.pid(), server.pid());
/// # Ok(())
/// # }
/// ```
pub fn server(address: &str) -> Result<SlaveProcess, Error> {
    ServerBuilder::new(address)?.spawn()
}

/// What a spawned server is told on its private socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ServerBootstrap {
    pub(crate) address: String,
    pub(crate) persistent: bool,
    pub(crate) handshakes: HandshakeLimits,
}

impl ServerBuilder {
    /// Spawns a server process with these options and connects to it.
    pub fn spawn(self) -> Result<SlaveProcess, Error> {
        let key = configured_key(self.key.as_ref(), &self.address)?.unwrap_or_else(Key::generate);
        let bootstrap = ServerBootstrap {
            address: self.address.to_string(),
            persistent: self.persistent,
            handshakes: self.handshakes,
        };
        let process = crate::slave::SlaveProcessBuilder::new()
            .detach(self.detach)
            .spawn_with(key, Some(bootstrap))?;
        process.session().set_origin(self.address.to_string());
        Ok(process)
    }
}

/// A spawned server binds before it answers its master's handshake, so the
/// address works as soon as `server()` returns.
///
/// Its files must not outlive it, whichever way it stops: it takes the
/// [stop signals](STOP_SIGNALS) over and, when it must die with its master
/// (`parent`), asks for SIGTERM rather than SIGKILL as its death signal,
/// before it makes any file; a signal during the bind waits for the files
/// to be registered, then removes them.
pub(crate) fn bind_spawned_server(
    bootstrap: &ServerBootstrap,
    key: &Key,
    parent: Option<i32>,
) -> Result<Listener, Error> {
    let address = parse_address(&bootstrap.address)?;
    remove_files_on_signals()?;
    if let Some(parent) = parent {
        sys::die_with_parent(parent, sys::SIGTERM)
            .map_err(|e| Error::io("cannot follow the master", e))?;
    }
    let mut files = SERVER_FILES.lock().unwrap_or_else(|p| p.into_inner());
    let listener = Listener::bind(&address).map_err(|e| listen_error(&address, e))?;
    let bound = listener.local_addr();
    if let Address::Unix(path) = &bound {
        files.push(path.clone());
    }
    if let Some(path) = key_file_for(&bound) {
        if let Err(error) = write_key_file(&path, key) {
            drop(files);
            remove_spawned_server_files();
            return Err(error);
        }
        files.push(path);
    }
    Ok(listener)
}

/// The server side of a spawned server: serve the master's connection as
/// the first client, then everyone else.
pub(crate) fn run_spawned_server(
    master: Connection,
    listener: Listener,
    key: Key,
    bootstrap: ServerBootstrap,
) -> Result<(), Error> {
    let key_file = key_file_for(&listener.local_addr());
    // The master is counted from the start: a client that comes and goes
    // before the master's thread runs must not stop the server.
    let ServerHandle { state } = start_accepting(
        listener,
        key,
        key_file,
        bootstrap.persistent,
        bootstrap.handshakes,
        1,
    )?;
    let master_state = state.clone();
    std::thread::Builder::new()
        .name("processional-client".into())
        .spawn(move || serve_counted(master, false, &master_state))
        .map_err(|e| Error::io("cannot start the server thread", e))?;
    ServerHandle { state }.join();
    Ok(())
}

impl SlaveProcess {
    /// Gives the object of `remote` a name other clients of the same server
    /// can [`lookup`](Self::lookup). `remote` must be a handle of this
    /// connection: the server refuses to name an object this connection does
    /// not hold (`UnknownObject`).
    pub fn publish<T: Send + 'static>(&self, name: &str, remote: &Remote<T>) -> Result<(), Error> {
        let session = self.session();
        let bytes = encode_for(session, &(name.to_owned(), remote.id()))?;
        session
            .call::<()>(PublishEntry::function_ref(), RunMode::Queued, bytes)?
            .wait()
    }

    /// A handle to the object published under `name`; it stays alive while
    /// this handle (or any other client's) does.
    pub fn lookup<T: Send + 'static>(&self, name: &str) -> Result<Remote<T>, Error> {
        let session = self.session();
        let bytes = encode_for(session, &name.to_owned())?;
        let id = session
            .call::<u64>(LookupEntry::<T>::function_ref(), RunMode::Queued, bytes)?
            .wait()?;
        Ok(Remote::new(session.clone(), id))
    }
}

/// Inside a task running in a server (or slave): keeps `value` as an object
/// published under `name`, held on behalf of the client whose call runs.
/// Other clients reach it with [`SlaveProcess::lookup`]; see [`client`] for
/// the whole round.
///
/// ```
/// use processional_process::{Remote, func};
///
/// # fn main() -> Result<(), processional_process::Error> {
/// let process = processional_process::slave()?;
/// let exported = process.invoke(func!(|| {
///     processional_process::export("greeting", "hello".to_string()).is_ok()
/// }))?;
/// assert!(exported);
/// let greeting: Remote<String> = process.lookup("greeting")?;
/// assert_eq!(greeting.fetch()?, "hello");
/// # Ok(())
/// # }
/// ```
pub fn export<T: Send + 'static>(name: &str, value: T) -> Result<(), Error> {
    crate::context::export(name, value).map_err(Error::Remote)
}
