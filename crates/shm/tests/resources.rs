//! Creating, transferring and dropping shared memory leaks neither descriptors nor mappings.
//!
//! One test in this binary on purpose: it counts the process's descriptors and mappings, which
//! concurrent tests would disturb.

use std::os::fd::{AsFd, OwnedFd};

use processional_shm::transfer::{self, TransferFd};
use processional_shm::{Pool, PoolLimits, SegmentView, SharedMutBuf, ShmBuf, ShmSlice, ShmVec};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

fn as_received(fds: Vec<TransferFd>) -> Vec<OwnedFd> {
    fds.iter()
        .map(|fd| fd.as_fd().try_clone_to_owned().unwrap())
        .collect()
}

/// One round of everything the crate does with descriptors and mappings.
fn cycle(pool: &Pool, i: usize) {
    let len = if i.is_multiple_of(100) {
        1 << 20
    } else {
        4096 + i
    };

    // ShmBuf, ShmVec, ShmSlice, SharedMutBuf through the descriptor context.
    let mut buf = ShmBuf::new(len).unwrap();
    buf.as_mut_slice().unwrap()[len - 1] = i as u8;
    let mut vec = ShmVec::<u64>::new();
    vec.extend_from_slice(&[i as u64; 1000]).unwrap();
    let slice = ShmSlice::<u16>::from_slice(&[7; 100]).unwrap();
    let shared_mut = SharedMutBuf::new(4096).unwrap();
    let value = (buf, vec, slice, shared_mut);
    let (message, fds) = transfer::collect_fds(|| postcard::to_stdvec(&value).unwrap());
    assert_eq!(fds.len(), 4);
    let received: (ShmBuf, ShmVec<u64>, ShmSlice<u16>, SharedMutBuf) =
        transfer::provide_fds(as_received(fds), || postcard::from_bytes(&message)).unwrap();
    assert_eq!(received.0[len - 1], i as u8);
    assert_eq!(received.1.len(), 1000);

    // Inline, and resizing.
    let mut inline: ShmVec<u64> =
        postcard::from_bytes(&postcard::to_stdvec(&value.1).unwrap()).unwrap();
    inline.push(1).unwrap();
    inline.reserve(100_000).unwrap();

    // A pooled segment, lent and mapped on the other side.
    let mut segment = pool.take(len).unwrap();
    segment[0] = 1;
    let loan = segment.lend();
    let view = SegmentView::map(loan.try_clone_fd().unwrap(), len).unwrap();
    // SAFETY: the lent segment is not written while the view reads it.
    assert_eq!(unsafe { view.as_slice() }[0], 1);
    drop(view);
    if i.is_multiple_of(2) {
        drop(loan.reclaim());
    }
}

#[test]
fn thousand_transfers_leave_descriptors_and_mappings_as_they_were() {
    let pool = Pool::new(PoolLimits::default());
    // Warm up whatever allocates once (thread-locals, allocator arenas).
    for i in 0..3 {
        cycle(&pool, i);
    }
    pool.clear();
    let (fds_before, maps_before) = (open_fds(), mappings());

    for i in 0..1000 {
        cycle(&pool, i);
    }
    assert!(
        pool.idle_segments() > 0,
        "reclaimed segments were kept for reuse"
    );
    pool.clear();

    let (fds_after, maps_after) = (open_fds(), mappings());
    assert_eq!(fds_after, fds_before, "open descriptors");
    assert_eq!(maps_after, maps_before, "mappings");
}
