//! Raw ping-pong from several client *processes* to one echo process: the
//! baseline of a case whose subject runs its clients as processes (their
//! switches cross address spaces, which threads of one process do not).
//!
//! A [`PingerCrew`] starts an echo server ([`RAW_UNIX_ECHO_SERVER`], a
//! thread per connection) and one [`RAW_UNIX_PINGER`] per client; each
//! pinger connects to the server, then does the share of round trips the
//! crew sends it over its control socket and answers when done.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::thread;

use crate::process_peer::{CHILD_CONNECTIONS_ENV, PEER_TIMEOUT, round_trips_windowed};
use crate::{CHILD_ADDR_ENV, ChildResult, ChildRole, PeerProcess, echo_raw, inherited_fd};

/// Child: listens on the unix socket path in [`CHILD_ADDR_ENV`], accepts
/// [`CHILD_CONNECTIONS_ENV`] connections and echoes 8-byte pings on each,
/// one thread each.
pub const RAW_UNIX_ECHO_SERVER: ChildRole = ChildRole {
    name: "raw-unix-echo-server",
    run: raw_unix_echo_server,
};

/// Child: connects to the echo server at [`CHILD_ADDR_ENV`]; then, for each
/// count (8 bytes) read from the inherited control socket, does that many
/// 8-byte round trips and writes the count back. A count of 0 ends it.
pub const RAW_UNIX_PINGER: ChildRole = ChildRole {
    name: "raw-unix-pinger",
    run: raw_unix_pinger,
};

/// Client processes doing raw round trips to one echo process; see the
/// module docs. Dropping it ends the pingers, then the server.
#[derive(Debug)]
pub struct PingerCrew {
    /// Each pinger's control socket, with its process.
    pingers: Vec<(UnixStream, PeerProcess)>,
    // Declared last: the server outlives its clients.
    _server: PeerProcess,
}

impl PingerCrew {
    /// An echo server listening at `path` and `clients` pingers connected
    /// to it.
    pub fn new(path: &Path, clients: usize) -> io::Result<PingerCrew> {
        let address = path
            .to_str()
            .ok_or_else(|| io::Error::other(format!("{} is not UTF-8", path.display())))?;
        let count = clients.to_string();
        let server = PeerProcess::spawn(
            RAW_UNIX_ECHO_SERVER.name,
            &[(CHILD_ADDR_ENV, address), (CHILD_CONNECTIONS_ENV, &count)],
            None,
        )?;
        // Each pinger connects once the server listens.
        let pingers = (0..clients)
            .map(|_| {
                let (control, far) = UnixStream::pair()?;
                let process = PeerProcess::spawn(
                    RAW_UNIX_PINGER.name,
                    &[(CHILD_ADDR_ENV, address)],
                    Some(far.as_fd()),
                )?;
                Ok((control, process))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let crew = PingerCrew {
            pingers,
            _server: server,
        };
        // Every pinger connected and answers.
        crew.run(clients as u64).map_err(io::Error::other)?;
        Ok(crew)
    }

    /// Splits `items` round trips as evenly as possible between the
    /// pingers, and waits until every one has done its share.
    pub fn run(&self, items: u64) -> Result<(), String> {
        let members = self.pingers.len() as u64;
        if members == 0 {
            return Err("a crew without pingers".into());
        }
        let shares: Vec<u64> = (0..members)
            .map(|index| items / members + u64::from(index < items % members))
            .collect();
        for ((control, _), share) in self.pingers.iter().zip(&shares) {
            // A share of 0 would end the pinger: it has nothing to do.
            if *share > 0 {
                let mut control: &UnixStream = control;
                control
                    .write_all(&share.to_le_bytes())
                    .map_err(|e| format!("a pinger has stopped: {e}"))?;
            }
        }
        for ((control, _), share) in self.pingers.iter().zip(&shares) {
            if *share == 0 {
                continue;
            }
            let mut control: &UnixStream = control;
            let mut done = [0u8; 8];
            control
                .read_exact(&mut done)
                .map_err(|e| format!("a pinger has stopped: {e}"))?;
            if u64::from_le_bytes(done) != *share {
                return Err(format!("a pinger did {done:?} round trips for {share}"));
            }
        }
        Ok(())
    }
}

fn raw_unix_echo_server() -> ChildResult {
    let path = std::env::var(CHILD_ADDR_ENV)?;
    let connections: usize = std::env::var(CHILD_CONNECTIONS_ENV)?.parse()?;
    let listener = UnixListener::bind(&path)?;
    let mut echoes = Vec::with_capacity(connections);
    while echoes.len() < connections {
        let (stream, _) = listener.accept()?;
        echoes.push(
            thread::Builder::new()
                .name("raw-echo".into())
                .spawn(move || echo_raw(stream))?,
        );
    }
    drop(listener);
    std::fs::remove_file(&path)?;
    for echo in echoes {
        // Each ends when its pinger exits.
        echo.join().map_err(|_| "an echo thread panicked")??;
    }
    Ok(())
}

fn raw_unix_pinger() -> ChildResult {
    let mut control = UnixStream::from(inherited_fd()?);
    let mut echo = connect_when_listening(&std::env::var(CHILD_ADDR_ENV)?)?;
    let mut count = [0u8; 8];
    loop {
        if control.read_exact(&mut count).is_err() {
            return Ok(());
        }
        let rounds = u64::from_le_bytes(count);
        if rounds == 0 {
            return Ok(());
        }
        round_trips_windowed(&mut echo, rounds, 1)?;
        control.write_all(&count)?;
    }
}

/// Connects to the unix socket at `path`, retrying (within
/// [`PEER_TIMEOUT`]) while it is not there or not listening yet.
fn connect_when_listening(path: &str) -> io::Result<UnixStream> {
    let deadline = std::time::Instant::now() + PEER_TIMEOUT;
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && std::time::Instant::now() < deadline =>
            {
                thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(error) => return Err(error),
        }
    }
}
