//! Measures what shared memory costs here: first touch of fresh pages, refilling pooled ones,
//! sharing and mapping on the other side.
//!
//! `cargo run --release -p processional-shm --example measure`

use std::hint::black_box;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use processional_shm::{Pool, PoolLimits, SegmentView, ShmBuf, transfer};

const LEN: usize = 100 << 20;
const PAGES: usize = LEN / 4096;
const ROUNDS: usize = 7;

/// The median of `ROUNDS` runs of `f`, which returns the part it timed.
fn median(mut f: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..ROUNDS).map(|_| f()).collect();
    times.sort();
    times[ROUNDS / 2]
}

fn report(what: &str, time: Duration) {
    let per_page = time.as_secs_f64() * 1e6 / PAGES as f64;
    println!(
        "{what:<58} {:>9.3} ms  {per_page:>6.3} µs/page",
        time.as_secs_f64() * 1e3
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("100 MiB = {PAGES} pages of 4 KiB; median of {ROUNDS} runs");

    report(
        "ShmBuf::new + fill (first touch, page faults)",
        median(|| {
            let start = Instant::now();
            let mut buf = ShmBuf::new(LEN).unwrap();
            buf.as_mut_slice().unwrap().fill(1);
            let time = start.elapsed();
            black_box(&buf);
            time
        }),
    );

    let source = vec![3u8; LEN];
    report(
        "ShmBuf::from_slice (populated in one call, then copied)",
        median(|| {
            let start = Instant::now();
            let buf = ShmBuf::from_slice(&source).unwrap();
            let time = start.elapsed();
            black_box(&buf);
            time
        }),
    );

    report(
        "Pool::take fresh + fill",
        median(|| {
            let pool = Pool::new(PoolLimits::default());
            let start = Instant::now();
            let mut segment = pool.take(LEN).unwrap();
            segment.copy_from_slice(&source);
            let time = start.elapsed();
            black_box(&segment);
            time
        }),
    );

    let pool = Pool::new(PoolLimits::default());
    drop(pool.take(LEN)?);
    report(
        "Pool::take pooled + fill (reused segment and mapping)",
        median(|| {
            let start = Instant::now();
            let mut segment = pool.take(LEN).unwrap();
            segment.copy_from_slice(&source);
            let time = start.elapsed();
            black_box(&segment);
            time
        }),
    );

    report(
        "memcpy into a warm Vec (reference)",
        median(|| {
            let mut target = vec![0u8; LEN];
            target.fill(1);
            let start = Instant::now();
            target.copy_from_slice(&source);
            let time = start.elapsed();
            black_box(&target);
            time
        }),
    );

    report(
        "ShmBuf::share of a filled buffer (remap + seal)",
        median(|| {
            let buf = ShmBuf::from_slice(&source).unwrap();
            let start = Instant::now();
            buf.share().unwrap();
            start.elapsed()
        }),
    );

    let sent = ShmBuf::from_slice(&source)?;
    report(
        "ShmBuf serialize by fd + deserialize (map), no read",
        median(|| {
            let start = Instant::now();
            let (message, fds) = transfer::collect_fds(|| postcard::to_stdvec(&sent).unwrap());
            let fds = fds
                .iter()
                .map(|fd| fd.as_fd().try_clone_to_owned().unwrap())
                .collect();
            let received: ShmBuf =
                transfer::provide_fds(fds, || postcard::from_bytes(&message).unwrap());
            let time = start.elapsed();
            black_box(&received);
            time
        }),
    );

    report(
        "received ShmBuf: read every page (read faults)",
        median(|| {
            let received = ShmBuf::from_fd(sent.try_clone_fd().unwrap()).unwrap();
            let start = Instant::now();
            let sum: u64 = received.iter().step_by(4096).map(|&b| u64::from(b)).sum();
            let time = start.elapsed();
            black_box(sum);
            time
        }),
    );

    let mut lent = pool.take(LEN)?;
    lent.copy_from_slice(&source);
    let loan = lent.lend();
    report(
        "SegmentView::map of a loan + copy into a fresh Vec",
        median(|| {
            let start = Instant::now();
            let view = SegmentView::map(loan.try_clone_fd().unwrap(), LEN).unwrap();
            // SAFETY: the loan is not written while it is out.
            let copy = unsafe { view.as_slice() }.to_vec();
            let time = start.elapsed();
            black_box(&copy);
            time
        }),
    );
    drop(loan.reclaim());
    Ok(())
}
