//! Raw peers for the baselines of the process, server and shm benches: plain
//! std sockets to a child process (this executable in a role, see
//! [`PeerProcess`]) that echoes 8-byte pings or swallows bulk transfers, plus
//! the guards and worker threads those benches share.
//!
//! A bench lists the roles it uses in the table it gives
//! [`run_child_if_requested`](crate::run_child_if_requested), e.g.
//! `&[RAW_UNIX_ECHO, RAW_SINK_FRESH]`.

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::ops::Deref;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, SamplingMode};
use processional::SlaveProcess;

use crate::{
    CHILD_ADDR_ENV, ChildResult, ChildRole, PING_BYTES, PeerProcess, echo_raw, inherited_fd,
    round_trip_raw,
};

/// How many connections a [`RAW_UNIX_PATH_ECHO`] child opens.
pub const CHILD_CONNECTIONS_ENV: &str = "PROCESSIONAL_BENCH_CONNECTIONS";

/// How long a bench waits for a child to connect, or a slave to stop.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// The size of one write of a bulk transfer ([`send_bulk`]).
pub const BULK_CHUNK: usize = 64 * 1024;

/// Child: echoes 8-byte pings over the inherited socket.
pub const RAW_UNIX_ECHO: ChildRole = ChildRole {
    name: "raw-unix-echo",
    run: raw_unix_echo,
};

/// Child: connects [`CHILD_CONNECTIONS_ENV`] times to the unix socket path in
/// [`CHILD_ADDR_ENV`] and echoes 8-byte pings on each, one thread each.
pub const RAW_UNIX_PATH_ECHO: ChildRole = ChildRole {
    name: "raw-unix-path-echo",
    run: raw_unix_path_echo,
};

/// Child: connects to the TCP address in [`CHILD_ADDR_ENV`] (TCP_NODELAY)
/// and echoes 8-byte pings.
pub const RAW_TCP_ECHO: ChildRole = ChildRole {
    name: "raw-tcp-echo",
    run: raw_tcp_echo,
};

/// Child: receives each [`send_bulk`] transfer into a freshly allocated
/// `Vec<u8>`, drops it, and answers with its length.
pub const RAW_SINK_FRESH: ChildRole = ChildRole {
    name: "raw-sink-fresh",
    run: raw_sink_fresh,
};

/// Child: receives each [`send_bulk`] transfer into one buffer it keeps
/// from transfer to transfer, and answers with its length.
pub const RAW_SINK_REUSED: ChildRole = ChildRole {
    name: "raw-sink-reused",
    run: raw_sink_reused,
};

/// Settings for a group whose iterations take milliseconds (a spawn, a
/// 100 MiB transfer): ten samples of equal size, a short measurement.
pub fn configure_slow_group(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

/// A stream to a raw child process. Dropping it closes the stream, then
/// kills and reaps the child.
#[derive(Debug)]
pub struct RawPeer<S> {
    /// Our end of the stream; the child holds the other.
    pub stream: S,
    // Declared after `stream`, so the stream closes first.
    process: PeerProcess,
}

impl<S> RawPeer<S> {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.process.id()
    }
}

/// Starts `role` over a socketpair whose far end the child inherits.
pub fn spawn_socketpair_peer(role: &ChildRole) -> io::Result<RawPeer<UnixStream>> {
    let (near, far) = UnixStream::pair()?;
    let process = PeerProcess::spawn(role.name, &[], Some(far.as_fd()))?;
    drop(far);
    Ok(RawPeer {
        stream: near,
        process,
    })
}

/// The baseline of the spawn cases: `iters` bare spawns of this executable
/// ([`RAW_UNIX_ECHO`]), each until it answered one 8-byte ping; the time.
/// Killing and reaping each child is not timed.
pub fn bare_spawns(iters: u64) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let mut child = spawn_raw_unix_echo().expect("cannot start a bare child");
        round_trip_raw(&mut child.stream, 1).expect("the bare child answers");
        timed += start.elapsed();
        drop(child);
    }
    timed
}

/// `connections` raw connections to one echo child ([`RAW_UNIX_PATH_ECHO`],
/// bound at `path`), one crew thread each doing `work` (windowed pings, say);
/// the child goes once the crew is dropped.
pub fn raw_echo_crew(
    path: &Path,
    connections: usize,
    work: fn(&mut UnixStream, u64) -> Result<(), String>,
) -> io::Result<(Crew, RawPeer<Vec<UnixStream>>)> {
    let mut echo = spawn_raw_unix_path_echo(path, connections)?;
    let streams = std::mem::take(&mut echo.stream);
    Ok((Crew::new(streams, work)?, echo))
}

/// `count` trivial calls (`schedule(|| 1u64)`) on `client`, `window` in
/// flight at a time: the work of a server throughput case's client.
pub fn scheduled_calls(client: &SlaveProcess, count: u64, window: usize) -> Result<(), String> {
    let mut tasks = Vec::with_capacity(window);
    let mut done = 0;
    while done < count {
        let batch = (count - done).min(window as u64);
        for _ in 0..batch {
            tasks.push(client.schedule(processional::func!(|| black_box(1u64))));
        }
        for task in tasks.drain(..) {
            if task.wait().map_err(|error| error.to_string())? != 1 {
                return Err("a call returned a wrong value".into());
            }
        }
        done += batch;
    }
    Ok(())
}

/// A child echoing 8-byte pings over a socketpair ([`RAW_UNIX_ECHO`]).
pub fn spawn_raw_unix_echo() -> io::Result<RawPeer<UnixStream>> {
    spawn_socketpair_peer(&RAW_UNIX_ECHO)
}

/// A loopback TCP connection (TCP_NODELAY on both ends) to a child echoing
/// 8-byte pings ([`RAW_TCP_ECHO`]).
pub fn spawn_raw_tcp_echo() -> io::Result<RawPeer<TcpStream>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?.to_string();
    let mut process = PeerProcess::spawn(RAW_TCP_ECHO.name, &[(CHILD_ADDR_ENV, &address)], None)?;
    let (stream, _) = process.wait_for(PEER_TIMEOUT, || listener.accept())?;
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    Ok(RawPeer { stream, process })
}

/// `connections` connected unix stream sockets (bound at `path`) to one child
/// echoing 8-byte pings on each ([`RAW_UNIX_PATH_ECHO`]).
pub fn spawn_raw_unix_path_echo(
    path: &Path,
    connections: usize,
) -> io::Result<RawPeer<Vec<UnixStream>>> {
    let listener = UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    let address = path
        .to_str()
        .ok_or_else(|| io::Error::other(format!("{} is not UTF-8", path.display())))?;
    let count = connections.to_string();
    let mut process = PeerProcess::spawn(
        RAW_UNIX_PATH_ECHO.name,
        &[(CHILD_ADDR_ENV, address), (CHILD_CONNECTIONS_ENV, &count)],
        None,
    )?;
    let mut streams = Vec::with_capacity(connections);
    while streams.len() < connections {
        let (stream, _) = process.wait_for(PEER_TIMEOUT, || listener.accept())?;
        stream.set_nonblocking(false)?;
        streams.push(stream);
    }
    drop(listener);
    std::fs::remove_file(path)?;
    Ok(RawPeer {
        stream: streams,
        process,
    })
}

fn raw_unix_echo() -> ChildResult {
    echo_raw(UnixStream::from(inherited_fd()?))?;
    Ok(())
}

fn raw_tcp_echo() -> ChildResult {
    let stream = TcpStream::connect(std::env::var(CHILD_ADDR_ENV)?)?;
    stream.set_nodelay(true)?;
    echo_raw(stream)?;
    Ok(())
}

fn raw_unix_path_echo() -> ChildResult {
    let path = std::env::var(CHILD_ADDR_ENV)?;
    let connections: usize = std::env::var(CHILD_CONNECTIONS_ENV)?.parse()?;
    let echoes = (0..connections)
        .map(|_| {
            let stream = UnixStream::connect(&path)?;
            thread::Builder::new()
                .name("raw-echo".into())
                .spawn(move || echo_raw(stream))
        })
        .collect::<io::Result<Vec<_>>>()?;
    for echo in echoes {
        echo.join().map_err(|_| "an echo thread panicked")??;
    }
    Ok(())
}

/// Sends `data` as one bulk transfer (its length as 8 bytes, then the bytes
/// in [`BULK_CHUNK`] writes) and waits for the receiver to answer with the
/// length, 8 bytes.
pub fn send_bulk(stream: &mut UnixStream, data: &[u8]) -> io::Result<()> {
    let len = data.len() as u64;
    stream.write_all(&len.to_le_bytes())?;
    for chunk in data.chunks(BULK_CHUNK) {
        stream.write_all(chunk)?;
    }
    let mut answer = [0; PING_BYTES];
    stream.read_exact(&mut answer)?;
    if u64::from_le_bytes(answer) != len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the sink answered {} for {len} bytes",
                u64::from_le_bytes(answer)
            ),
        ));
    }
    Ok(())
}

/// Reads the length of the next bulk transfer; `None` when the sender closed
/// the stream.
fn next_bulk_len(stream: &mut UnixStream) -> io::Result<Option<usize>> {
    let mut header = [0; PING_BYTES];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let len = usize::try_from(u64::from_le_bytes(header))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "transfer too large"))?;
    Ok(Some(len))
}

fn raw_sink_fresh() -> ChildResult {
    let mut stream = UnixStream::from(inherited_fd()?);
    while let Some(len) = next_bulk_len(&mut stream)? {
        let mut received = vec![0u8; len];
        stream.read_exact(&mut received)?;
        let received = std::hint::black_box(received);
        // Like the function of the subject, which consumes its vector.
        let len = received.len() as u64;
        drop(received);
        stream.write_all(&len.to_le_bytes())?;
    }
    Ok(())
}

fn raw_sink_reused() -> ChildResult {
    let mut stream = UnixStream::from(inherited_fd()?);
    let mut buffer = Vec::new();
    while let Some(len) = next_bulk_len(&mut stream)? {
        buffer.resize(len, 0);
        stream.read_exact(&mut buffer)?;
        let len = std::hint::black_box(&buffer).len() as u64;
        stream.write_all(&len.to_le_bytes())?;
    }
    Ok(())
}

/// `count` 8-byte pings over `stream` to an echo, at most `window` in
/// flight: write `window` pings (one write each), then read their echoes,
/// and again. `window` must be small enough for the socket buffers to hold.
pub fn round_trips_windowed<S: Read + Write>(
    stream: &mut S,
    count: u64,
    window: usize,
) -> io::Result<()> {
    let mut replies = vec![0u8; window * PING_BYTES];
    let mut sent = 0u64;
    while sent < count {
        let batch = (count - sent).min(window as u64);
        for value in sent..sent + batch {
            stream.write_all(&value.to_le_bytes())?;
        }
        let replies = &mut replies[..batch as usize * PING_BYTES];
        stream.read_exact(replies)?;
        check_echoes(replies, sent)?;
        sent += batch;
    }
    Ok(())
}

/// Checks that `replies` holds the pings `first`, `first + 1`, … in order.
fn check_echoes(replies: &[u8], first: u64) -> io::Result<()> {
    for (expected, reply) in (first..).zip(replies.chunks_exact(PING_BYTES)) {
        let mut value = [0; PING_BYTES];
        value.copy_from_slice(reply);
        if u64::from_le_bytes(value) != expected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("echo returned {value:?} for ping {expected}"),
            ));
        }
    }
    Ok(())
}

/// Pipelined 8-byte pings over a unix stream to an echo: a writer thread
/// writes them (one write each) while the caller reads the echoes, so that
/// neither side's socket buffer ever blocks the other.
#[derive(Debug)]
pub struct PipelinedPings {
    reader: UnixStream,
    orders: Option<mpsc::Sender<u64>>,
    writer: Option<JoinHandle<io::Result<()>>>,
    buffer: Vec<u8>,
}

impl PipelinedPings {
    /// Pipelines over `stream` (a clone of it goes to the writer thread).
    pub fn new(stream: &UnixStream) -> io::Result<PipelinedPings> {
        let mut writer_stream = stream.try_clone()?;
        let reader = stream.try_clone()?;
        let (orders, orders_received) = mpsc::channel::<u64>();
        let writer = thread::Builder::new()
            .name("raw-ping-writer".into())
            .spawn(move || {
                for count in orders_received {
                    for value in 0..count {
                        writer_stream.write_all(&value.to_le_bytes())?;
                    }
                }
                Ok(())
            })?;
        Ok(PipelinedPings {
            reader,
            orders: Some(orders),
            writer: Some(writer),
            buffer: vec![0; BULK_CHUNK],
        })
    }

    /// Sends `count` pings and reads all their echoes.
    pub fn round_trips(&mut self, count: u64) -> io::Result<()> {
        let orders = self.orders.as_ref().ok_or_else(closed_writer)?;
        orders.send(count).map_err(|_| closed_writer())?;
        let mut received = 0u64;
        let mut pending = 0usize; // bytes of a partial echo at the start of `buffer`
        while received < count {
            let read = self.reader.read(&mut self.buffer[pending..])?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let filled = pending + read;
            let whole = filled / PING_BYTES * PING_BYTES;
            check_echoes(&self.buffer[..whole], received)?;
            received += (whole / PING_BYTES) as u64;
            self.buffer.copy_within(whole..filled, 0);
            pending = filled - whole;
        }
        if received != count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more echoes than pings",
            ));
        }
        Ok(())
    }
}

fn closed_writer() -> io::Error {
    io::Error::other("the ping writer thread has stopped")
}

impl Drop for PipelinedPings {
    fn drop(&mut self) {
        self.orders = None;
        if let Some(writer) = self.writer.take() {
            // Its error (a peer gone) matters no more.
            let _ = writer.join();
        }
    }
}

/// Threads that each own a member (a connection, a client handle) and share
/// work among them: [`Crew::run`] splits a number of items between the
/// members and returns when all are done.
#[derive(Debug)]
pub struct Crew {
    workers: Vec<CrewWorker>,
}

#[derive(Debug)]
struct CrewWorker {
    orders: Option<mpsc::Sender<u64>>,
    done: mpsc::Receiver<Result<(), String>>,
    thread: Option<JoinHandle<()>>,
}

impl Crew {
    /// One thread per member; `work(member, count)` does `count` items.
    pub fn new<M: Send + 'static>(
        members: Vec<M>,
        work: fn(&mut M, u64) -> Result<(), String>,
    ) -> io::Result<Crew> {
        let mut workers = Vec::with_capacity(members.len());
        for mut member in members {
            let (orders, orders_received) = mpsc::channel::<u64>();
            let (done_sender, done) = mpsc::channel();
            let thread = thread::Builder::new()
                .name("bench-crew".into())
                .spawn(move || {
                    for count in orders_received {
                        if done_sender.send(work(&mut member, count)).is_err() {
                            return;
                        }
                    }
                })?;
            workers.push(CrewWorker {
                orders: Some(orders),
                done,
                thread: Some(thread),
            });
        }
        Ok(Crew { workers })
    }

    /// Splits `items` as evenly as possible between the members, and waits
    /// until every member has done its share.
    pub fn run(&self, items: u64) -> Result<(), String> {
        let members = self.workers.len() as u64;
        if members == 0 {
            return Err("a crew without members".into());
        }
        for (index, worker) in self.workers.iter().enumerate() {
            let share = items / members + u64::from((index as u64) < items % members);
            worker
                .orders
                .as_ref()
                .and_then(|orders| orders.send(share).ok())
                .ok_or("a crew thread has stopped")?;
        }
        let mut outcome = Ok(());
        for worker in &self.workers {
            let done = worker
                .done
                .recv()
                .unwrap_or_else(|_| Err("a crew thread has stopped".into()));
            if outcome.is_ok() {
                outcome = done;
            }
        }
        outcome
    }
}

impl Drop for Crew {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            worker.orders = None;
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

/// A slave process (or spawned server) that is terminated, and waited for,
/// when this guard drops, so that no bench leaves it behind.
#[derive(Debug)]
pub struct SlaveGuard(pub SlaveProcess);

impl Deref for SlaveGuard {
    type Target = SlaveProcess;

    fn deref(&self) -> &SlaveProcess {
        &self.0
    }
}

impl Drop for SlaveGuard {
    fn drop(&mut self) {
        self.0.terminate(PEER_TIMEOUT);
    }
}

/// A private directory for the sockets of one bench run, removed with
/// everything in it when dropped.
#[derive(Debug)]
pub struct BenchDir {
    path: PathBuf,
}

impl BenchDir {
    /// Creates `<temp dir>/processional-bench-<tag>-<pid>`.
    pub fn new(tag: &str) -> io::Result<BenchDir> {
        let path =
            std::env::temp_dir().join(format!("processional-bench-{tag}-{}", std::process::id()));
        match std::fs::remove_dir_all(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        std::fs::create_dir_all(&path)?;
        Ok(BenchDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path named `name` in the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for BenchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windowed_round_trips_come_back_in_order() {
        let (mut near, far) = UnixStream::pair().expect("socketpair");
        let echo = thread::spawn(move || echo_raw(far));
        round_trips_windowed(&mut near, 1000, 64).expect("round trips");
        round_trips_windowed(&mut near, 3, 64).expect("a partial window");
        drop(near);
        echo.join()
            .expect("echo thread")
            .expect("echo ends cleanly");
    }

    #[test]
    fn pipelined_pings_survive_full_buffers() {
        let (near, far) = UnixStream::pair().expect("socketpair");
        let echo = thread::spawn(move || echo_raw(far));
        let mut pings = PipelinedPings::new(&near).expect("writer thread");
        pings.round_trips(100_000).expect("pipelined");
        pings.round_trips(1).expect("one more");
        drop(pings);
        drop(near);
        echo.join()
            .expect("echo thread")
            .expect("echo ends cleanly");
    }

    #[test]
    fn a_crew_does_every_item_once() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let total = Arc::new(AtomicU64::new(0));
        let members: Vec<Arc<AtomicU64>> = (0..7).map(|_| total.clone()).collect();
        let crew = Crew::new(members, |total, count| {
            total.fetch_add(count, Ordering::Relaxed);
            Ok(())
        })
        .expect("threads");
        for items in [0, 1, 6, 7, 1000] {
            crew.run(items).expect("run");
        }
        assert_eq!(total.load(Ordering::Relaxed), 1 + 6 + 7 + 1000);
    }

    #[test]
    fn bulk_transfers_reach_an_in_thread_sink() {
        let (mut near, mut far) = UnixStream::pair().expect("socketpair");
        let sink = thread::spawn(move || -> io::Result<Vec<u8>> {
            let len = next_bulk_len(&mut far)?.expect("a transfer");
            let mut received = vec![0; len];
            far.read_exact(&mut received)?;
            far.write_all(&(len as u64).to_le_bytes())?;
            assert_eq!(next_bulk_len(&mut far)?, None);
            Ok(received)
        });
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        send_bulk(&mut near, &data).expect("transfer");
        drop(near);
        assert_eq!(sink.join().expect("sink").expect("received"), data);
    }
}
