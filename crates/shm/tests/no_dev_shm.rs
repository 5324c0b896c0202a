//! Segments are memfds: nothing ever appears in /dev/shm.
//!
//! A memfd has no name in any file system, so checking that every kind of
//! segment is one proves it; a listing of /dev/shm would add nothing but
//! the entries other processes of the host create meanwhile.

use std::os::fd::AsRawFd;

use processional_shm::{Pool, PoolLimits, Segment, SharedMutBuf, ShmBuf, ShmVec};

/// What the descriptor refers to, as the kernel names it.
fn target(fd: &impl AsRawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn nothing_appears_in_dev_shm() {
    let buf = ShmBuf::from_slice(&[1; 100_000]).unwrap();
    let buf_fd = buf.try_clone_fd().unwrap();
    let mut vec = ShmVec::<f32>::new();
    vec.extend_from_slice(&[1.0; 10_000]).unwrap();
    let shared_mut = SharedMutBuf::new(1 << 20).unwrap();
    let pooled = Pool::new(PoolLimits::default()).take(1 << 20).unwrap();
    let segment = Segment::create(4096).unwrap();

    for fd in [
        target(&buf_fd),
        target(&shared_mut.try_clone_fd().unwrap()),
        target(&pooled.try_clone_fd().unwrap()),
        target(&segment),
    ] {
        assert!(fd.starts_with("/memfd:"), "{fd} is not an anonymous memfd");
        assert!(!fd.contains("/dev/shm"), "{fd}");
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(!maps.contains("/dev/shm"), "a mapping from /dev/shm");
    assert!(
        maps.contains("/memfd:processional-shm"),
        "our mappings are memfds"
    );
}
