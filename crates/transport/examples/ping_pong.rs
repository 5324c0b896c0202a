//! Measures the round trip of a small frame over a unix socket pair between
//! two threads, against a raw 8-byte write/read ping-pong on the same kind
//! of socket. Run with `cargo run --release --example ping_pong`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use processional_proto::Message;
use processional_transport::Connection;

const ROUND_TRIPS: u64 = 200_000;

fn raw() -> Duration {
    let (mut a, mut b) = UnixStream::pair().expect("socketpair");
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 8];
        for _ in 0..ROUND_TRIPS {
            b.read_exact(&mut buf).expect("read");
            b.write_all(&buf).expect("write");
        }
    });
    let start = Instant::now();
    let mut buf = [0u8; 8];
    for n in 0..ROUND_TRIPS {
        a.write_all(&n.to_le_bytes()).expect("write");
        a.read_exact(&mut buf).expect("read");
    }
    let elapsed = start.elapsed();
    echo.join().expect("echo thread");
    elapsed
}

fn framed() -> Duration {
    let (mut a, mut b) = Connection::pair().expect("pair");
    let echo = thread::spawn(move || {
        for _ in 0..ROUND_TRIPS {
            let received = b.recv().expect("recv");
            b.send(&received.message).expect("send");
        }
    });
    // Values near u64::MAX: an 8-byte payload or more after varint coding.
    let base = u64::MAX - ROUND_TRIPS;
    let start = Instant::now();
    for n in 0..ROUND_TRIPS {
        a.send(&Message::Ping(base + n)).expect("send");
        let reply = a.recv().expect("recv");
        assert_eq!(reply.message, Message::Ping(base + n));
    }
    let elapsed = start.elapsed();
    echo.join().expect("echo thread");
    elapsed
}

fn main() {
    // Alternate to even out noise from other work on the machine.
    let mut best_raw = Duration::MAX;
    let mut best_framed = Duration::MAX;
    for _ in 0..3 {
        best_raw = best_raw.min(raw());
        best_framed = best_framed.min(framed());
    }
    let per = |total: Duration| total.as_nanos() as f64 / ROUND_TRIPS as f64 / 1000.0;
    println!(
        "raw socketpair ping-pong: {:.2} µs per round trip",
        per(best_raw)
    );
    println!(
        "framed Message::Ping:     {:.2} µs per round trip",
        per(best_framed)
    );
    println!(
        "ratio: {:.3}",
        best_framed.as_secs_f64() / best_raw.as_secs_f64()
    );
}
