//! Peers without the key: what they may cost a server. Connections that
//! never authenticate must not cost a thread each, and descriptors sent
//! before the handshake must not stay in the server.

use processional::func;
use std::io::{BufRead, BufReader, IoSlice, Read};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use processional::proto::{Decoder, Message};
use processional::{ClientBuilder, Key, ServerBuilder, client};
use processional_tests::{KillOnDrop, PATIENCE, is_helper, spawn_helper};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// The handshakes a server in these tests runs at once.
const CAP: usize = 16;
/// Threads or descriptors a server may add besides the cap: the good
/// client's serving thread, a pooled thread, the odd socket.
const SLACK: usize = 8;
/// Idle connections opened against one server.
const IDLE: usize = 1000;

/// A fresh unix socket path in a private directory.
fn unix_path(tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!("processional-unauth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    format!("{}/{tag}.sock", dir.display())
}

/// Lets this process (and the servers it spawns, which inherit the limit)
/// hold a thousand connections and more.
fn raise_descriptor_limit() {
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )
        .expect("raise RLIMIT_NOFILE to its hard limit");
    }
}

fn threads_of(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .expect("a Threads line")
}

fn open_fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .count()
}

/// Samples `measure` on a thread of its own until dropped, keeping the
/// largest value seen, so that a peak between two events is not missed.
struct Peak {
    most: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Peak {
    fn watch(measure: impl Fn() -> usize + Send + 'static) -> Peak {
        let most = Arc::new(AtomicUsize::new(measure()));
        let done = Arc::new(AtomicBool::new(false));
        let thread = {
            let (most, done) = (most.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    most.fetch_max(measure(), Ordering::AcqRel);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Peak {
            most,
            done,
            thread: Some(thread),
        }
    }

    /// The largest value seen so far, sampling once more now.
    fn most(&self, measure: impl Fn() -> usize) -> usize {
        let now = measure();
        self.most.fetch_max(now, Ordering::AcqRel).max(now)
    }
}

impl Drop for Peak {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits until the server has taken `connection` off its backlog: it then
/// hears the server's hello, or the end of the stream if the cap closed it.
fn hear_from_server(index: usize, connection: &mut impl Read) {
    let mut byte = [0u8; 1];
    if let Err(error) = connection.read(&mut byte) {
        panic!("idle connection {index} never heard from the server: {error}");
    }
}

/// Opens [`IDLE`] connections that never say anything to the server `pid`,
/// checks the server's thread count meanwhile, then serves a good client
/// through `good_client` while they are still open.
fn idle_connections_leave_threads_bounded<C: Read>(
    pid: u32,
    connect: impl Fn() -> C,
    set_timeout: impl Fn(&C),
    good_client: impl FnOnce() -> u32,
) {
    let before = threads_of(pid);
    let peak = Peak::watch(move || threads_of(pid));
    let mut idle: Vec<C> = (0..IDLE)
        .map(|_| {
            let connection = connect();
            set_timeout(&connection);
            connection
        })
        .collect();
    for (index, connection) in idle.iter_mut().enumerate() {
        hear_from_server(index, connection);
    }
    // The cap is full of peers that say nothing; a good client still gets
    // its handshake done and its calls served.
    assert_eq!(
        good_client(),
        pid,
        "the good client reached another process"
    );
    let most = peak.most(|| threads_of(pid));
    assert!(
        most <= before + CAP + SLACK,
        "{IDLE} idle connections took the server from {before} to {most} threads \
         (cap {CAP}, slack {SLACK})"
    );
    drop(idle);
}

#[test]
fn idle_unix_connections_cost_no_thread_each() {
    raise_descriptor_limit();
    let path = unix_path("idle");
    let address = format!("unix:{path}");
    let process = ServerBuilder::new(&address)
        .unwrap()
        // Idle peers stay until the cap displaces them.
        .handshake_timeout(PATIENCE)
        .max_pending_handshakes(CAP)
        .spawn()
        .expect("spawn the server");
    let pid = process.pid();
    assert_eq!(process.invoke(func!(|| 1u8)).unwrap(), 1);
    idle_connections_leave_threads_bounded(
        pid,
        || UnixStream::connect(&path).expect("connect"),
        |c| c.set_read_timeout(Some(PATIENCE)).unwrap(),
        || {
            let good = client(&address).expect("a good client connects");
            good.invoke(func!(std::process::id)).unwrap()
        },
    );
    assert_eq!(process.invoke(func!(|| 2u8)).unwrap(), 2);
}

/// The helper of [`idle_tcp_connections_cost_no_thread_each`]: a TCP server
/// in a process of its own, which prints its address.
#[test]
fn helper_tcp_server() {
    if !is_helper() {
        return;
    }
    let key = Key::from_hex(&std::env::var("TEST_SERVER_KEY").unwrap()).unwrap();
    let handle = ServerBuilder::new("tcp://127.0.0.1:0")
        .unwrap()
        .key(key)
        .persistent(true)
        .handshake_timeout(PATIENCE)
        .max_pending_handshakes(CAP)
        .start()
        .expect("start the server");
    println!("server-address {}", handle.address());
    handle.join();
}

#[test]
fn idle_tcp_connections_cost_no_thread_each() {
    raise_descriptor_limit();
    let key = Key::generate();
    let mut server = KillOnDrop(spawn_helper(
        "helper_tcp_server",
        &[("TEST_SERVER_KEY", key.to_hex())],
    ));
    let pid = server.0.id();
    let stdout = server.0.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("the helper printed its address")
            .expect("read");
        // libtest prints "test <name> ... " before the helper's own output.
        if let Some((_, address)) = line.split_once("server-address ") {
            break address.trim().to_owned();
        }
    };
    let socket = address.trim_start_matches("tcp://").to_owned();
    idle_connections_leave_threads_bounded(
        pid,
        || std::net::TcpStream::connect(&socket).expect("connect"),
        |c| c.set_read_timeout(Some(PATIENCE)).unwrap(),
        || {
            let good = ClientBuilder::new(&address)
                .unwrap()
                .key(key.clone())
                .timeout(PATIENCE)
                .connect()
                .expect("a good client connects");
            good.invoke(func!(std::process::id)).unwrap()
        },
    );
}

/// Sends one byte carrying `fds` as SCM_RIGHTS.
fn send_byte_with_fds(socket: &UnixStream, fds: &[BorrowedFd<'_>]) {
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    let sent = sendmsg(
        socket,
        &[IoSlice::new(b"P")],
        &mut control,
        SendFlags::empty(),
    )
    .expect("sendmsg with descriptors");
    assert_eq!(sent, 1);
}

#[test]
fn descriptors_sent_before_the_handshake_are_not_kept() {
    raise_descriptor_limit();
    let path = unix_path("fds");
    let address = format!("unix:{path}");
    let process = ServerBuilder::new(&address)
        .unwrap()
        .max_pending_handshakes(CAP)
        .spawn()
        .expect("spawn the server");
    let pid = process.pid();
    assert_eq!(process.invoke(func!(|| 1u8)).unwrap(), 1);
    let before = open_fds_of(pid);
    let peak = Peak::watch(move || open_fds_of(pid));

    let null = std::fs::File::open("/dev/null").unwrap();
    let fds = vec![null.as_fd(); 250];
    let mut peers: Vec<UnixStream> = (0..100)
        .map(|_| {
            let peer = UnixStream::connect(&path).expect("connect");
            // The first byte of a frame header, and 250 descriptors on it.
            send_byte_with_fds(&peer, &fds);
            peer.set_read_timeout(Some(PATIENCE)).unwrap();
            peer
        })
        .collect();
    // The server closes each of them: what it said before is kept.
    let heard: Vec<Vec<u8>> = peers
        .iter_mut()
        .enumerate()
        .map(|(index, peer)| {
            let mut bytes = Vec::new();
            match peer.read_to_end(&mut bytes) {
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(error) => panic!("peer {index} was not closed by the server: {error}"),
            }
            bytes
        })
        .collect();
    let most = peak.most(|| open_fds_of(pid));
    drop(peak);
    let after = open_fds_of(pid);
    assert!(
        most <= before + CAP + SLACK,
        "descriptors sent before the handshake took the server from {before} to {most} open \
         descriptors"
    );
    assert!(
        after <= before + SLACK,
        "the server kept descriptors: {before} open before, {after} after"
    );
    // Each was refused for its descriptors, not dropped at its deadline.
    for (index, bytes) in heard.iter().enumerate() {
        let mut decoder = Decoder::new();
        decoder.feed(bytes);
        let mut refusal = None;
        while let Ok(Some(message)) = decoder.next() {
            if let Message::Refused { detail, .. } = message {
                refusal = Some(detail);
            }
        }
        let refusal = refusal.unwrap_or_else(|| panic!("peer {index} was not refused"));
        assert!(refusal.contains("descriptors"), "peer {index}: {refusal}");
    }
    assert_eq!(process.invoke(func!(|| 2u8)).unwrap(), 2);
}

#[test]
fn an_idle_connection_is_closed_at_the_handshake_deadline() {
    let path = unix_path("deadline");
    let address = format!("unix:{path}");
    let process = ServerBuilder::new(&address)
        .unwrap()
        .handshake_timeout(Duration::from_millis(200))
        .spawn()
        .expect("spawn the server");
    assert_eq!(process.invoke(func!(|| 1u8)).unwrap(), 1);
    let mut idle = UnixStream::connect(&path).unwrap();
    idle.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut bytes = Vec::new();
    idle.read_to_end(&mut bytes)
        .expect("the server closes an idle peer at its handshake deadline");
    assert!(!bytes.is_empty(), "the server never said hello");
    assert_eq!(process.invoke(func!(|| 2u8)).unwrap(), 2);
}
