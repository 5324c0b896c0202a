//! Shared-memory benches: handing a filled, shared `ShmBuf` to a warm slave
//! process (`subject`: it travels as a file descriptor, no byte is copied)
//! against streaming the bytes over a unix socket (`baseline`).
//!
//! - `shm.handoff_100MiB`: `process.invoke_with(buf.clone(), |b: ShmBuf|
//!   b.len())` with a 100 MiB buffer, made, filled and shared once before
//!   timing.
//! - `shm.handoff_1MiB`: the same with a 1 MiB buffer.
//!
//! Both groups hold the same `baseline`, the case xtask calls
//! `transport.unix_stream_100MiB`: 100 MiB written in 64 KiB writes over a
//! socketpair to a child process that reads them into a buffer it reuses
//! from transfer to transfer, then answers 8 bytes. It is measured in each
//! group, so each ratio compares two numbers of the same run. The 100 MiB
//! handoff should also cost about what the 1 MiB one does.

use processional::func;
use std::os::unix::net::UnixStream;

use criterion::Criterion;
use processional::ShmBuf;
use processional_benches::process_peer::{
    RAW_SINK_REUSED, RawPeer, SlaveGuard, configure_slow_group, send_bulk, spawn_socketpair_peer,
};
use processional_benches::{ChildRole, run_child_if_requested};

const ROLES: &[ChildRole] = &[RAW_SINK_REUSED];

/// The size of the baseline's stream.
const STREAM_BYTES: usize = 100 << 20;

fn main() {
    run_child_if_requested(ROLES);
    let mut criterion = Criterion::default().configure_from_args();
    let mut peers = Peers::default();
    handoff(&mut criterion, &mut peers, "shm.handoff_100MiB", 100 << 20);
    handoff(&mut criterion, &mut peers, "shm.handoff_1MiB", 1 << 20);
    drop(peers);
    criterion.final_summary();
}

/// What the cases share, each made on first use (criterion calls a bench
/// function once per sample, so nothing is started inside one).
#[derive(Default)]
struct Peers {
    slave: Option<SlaveGuard>,
    sink: Option<RawPeer<UnixStream>>,
    stream_source: Option<Vec<u8>>,
}

/// The `shm.handoff_*` group `name`: the subject hands over a `len`-byte
/// buffer, the baseline streams 100 MiB.
fn handoff(criterion: &mut Criterion, peers: &mut Peers, name: &str, len: usize) {
    let mut group = criterion.benchmark_group(name);
    configure_slow_group(&mut group);
    group.bench_function("baseline", |bencher| {
        let Peers {
            sink,
            stream_source,
            ..
        } = &mut *peers;
        let sink = sink.get_or_insert_with(|| {
            spawn_socketpair_peer(&RAW_SINK_REUSED).expect("cannot start the sink child")
        });
        let source = stream_source
            .get_or_insert_with(|| (0..STREAM_BYTES).map(|i| (i % 251) as u8).collect());
        bencher.iter(|| send_bulk(&mut sink.stream, source).expect("a raw 100 MiB stream"));
    });
    let mut buf: Option<ShmBuf> = None;
    group.bench_function("subject", |bencher| {
        let slave = peers.slave.get_or_insert_with(|| {
            SlaveGuard(processional::slave().expect("cannot spawn the warm slave"))
        });
        let buf = buf.get_or_insert_with(|| filled_shared_buf(len));
        bencher.iter(|| {
            let seen = slave
                .invoke_with(buf.clone(), func!(|b: ShmBuf| b.len()))
                .expect("a shared-memory handoff");
            assert_eq!(seen, len);
        });
    });
    group.finish();
}

/// A `len`-byte buffer, filled, then shared (sealed read-only).
fn filled_shared_buf(len: usize) -> ShmBuf {
    let mut buf = ShmBuf::new(len).expect("cannot make a shared-memory buffer");
    for (i, byte) in buf
        .as_mut_slice()
        .expect("a new buffer is writable")
        .iter_mut()
        .enumerate()
    {
        *byte = (i % 251) as u8;
    }
    buf.share().expect("cannot seal the buffer");
    buf
}
