//! Acceptance tests of shared memory across processes: buffers travel by
//! file descriptor, large byte payloads go through pooled segments, and
//! nothing leaks (descriptors, mappings, /dev/shm entries).

use processional::func;
use std::time::Duration;

use processional::{SharedMutBuf, ShmBuf, ShmSlice, ShmVec, slave};
use processional_tests::{
    KillOnDrop, PATIENCE, is_helper, kill_hard, process_exists, spawn_helper, wait_until,
};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn a_shm_buf_travels_to_the_slave_and_back() {
    let process = slave().expect("spawn");
    let buf = ShmBuf::from_slice(&[7u8; 4096]).unwrap();
    let sum = process
        .invoke_with(
            buf.clone(),
            func!(|buf: ShmBuf| { buf.iter().map(|&b| u64::from(b)).sum::<u64>() }),
        )
        .unwrap();
    assert_eq!(sum, 7 * 4096);
    let made = process
        .invoke(func!(|| {
            let mut buf = ShmBuf::new(1 << 20).unwrap();
            buf.as_mut_slice().unwrap().fill(3);
            buf
        }))
        .unwrap();
    assert_eq!(made.len(), 1 << 20);
    assert!(made.iter().all(|&b| b == 3));
}

#[test]
fn a_shm_vec_of_f64_round_trips() {
    let process = slave().expect("spawn");
    let mut values = ShmVec::<f64>::with_capacity(1000).unwrap();
    for i in 0..1000 {
        values.push(f64::from(i) * 0.5).unwrap();
    }
    let doubled: ShmSlice<f64> = process
        .invoke_with(
            values.share().unwrap(),
            func!(|values: ShmSlice<f64>| {
                let doubled: Vec<f64> = values.iter().map(|v| v * 2.0).collect();
                ShmVec::from_slice(&doubled).unwrap().share().unwrap()
            }),
        )
        .unwrap();
    assert_eq!(doubled.len(), 1000);
    assert_eq!(doubled[999], 999.0);
}

#[test]
fn shared_mutable_writes_are_seen_across_processes() {
    let process = slave().expect("spawn");
    let shared = SharedMutBuf::new(4096).unwrap();
    shared.write(0, 41u64).unwrap();
    let seen = process
        .invoke_with(
            shared
                .try_clone_fd()
                .map(|fd| SharedMutBuf::from_fd(fd).unwrap())
                .unwrap(),
            func!(|buf: SharedMutBuf| {
                let before: u64 = buf.read(0).unwrap();
                buf.write(8, before + 1).unwrap();
                before
            }),
        )
        .unwrap();
    assert_eq!(seen, 41);
    assert_eq!(shared.read::<u64>(8).unwrap(), 42);
}

#[test]
fn a_shared_buffer_refuses_writes_everywhere() {
    let process = slave().expect("spawn");
    let mut buf = ShmBuf::from_slice(b"sealed").unwrap();
    buf.share().unwrap();
    assert!(buf.as_mut_slice().is_err());
    let refused = process
        .invoke_with(buf, func!(|mut buf: ShmBuf| buf.as_mut_slice().is_err()))
        .unwrap();
    assert!(refused);
}

#[test]
fn two_segments_never_alias() {
    let process = slave().expect("spawn");
    let a = ShmBuf::from_slice(&[1u8; 100]).unwrap();
    let b = ShmBuf::from_slice(&[2u8; 100]).unwrap();
    let (x, y) = process
        .invoke_with((a, b), func!(|(a, b): (ShmBuf, ShmBuf)| (a[0], b[0])))
        .unwrap();
    assert_eq!((x, y), (1, 2));
}

#[test]
fn large_byte_vectors_take_the_segment_path() {
    let process = slave().expect("spawn");
    for len in [300 * 1024usize, 8 << 20] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let checksum: u64 = data.iter().map(|&b| u64::from(b)).sum();
        let (got_len, got_sum) = process
            .invoke_with(
                data,
                func!(|v: Vec<u8>| { (v.len(), v.iter().map(|&b| u64::from(b)).sum::<u64>()) }),
            )
            .unwrap();
        assert_eq!((got_len, got_sum), (len, checksum));
        let back = process
            .invoke_with(len, func!(|len: usize| vec![9u8; len]))
            .unwrap();
        assert_eq!(back.len(), len);
        assert!(back.iter().all(|&b| b == 9));
    }
}

#[test]
fn a_thousand_transfers_leak_nothing() {
    // Descriptor and mapping counts are per process: run alone in a helper
    // so that no concurrent test opens or maps anything meanwhile.
    if !is_helper() {
        let mut helper = KillOnDrop(spawn_helper("a_thousand_transfers_leak_nothing", &[]));
        let status = helper.0.wait().expect("the helper ran");
        assert!(status.success(), "the helper failed: {status:?}");
        return;
    }
    let process = slave().expect("spawn");
    let slave_counts = || {
        process
            .invoke(func!(|| {
                (
                    std::fs::read_dir("/proc/self/fd").unwrap().count(),
                    std::fs::read_to_string("/proc/self/maps")
                        .unwrap()
                        .lines()
                        .count(),
                )
            }))
            .unwrap()
    };
    // Warm up pools and caches on both sides.
    for _ in 0..10 {
        let buf = ShmBuf::from_slice(&[1u8; 8192]).unwrap();
        process
            .invoke_with(buf, func!(|b: ShmBuf| b.len()))
            .unwrap();
        process
            .invoke_with(vec![0u8; 512 * 1024], func!(|v: Vec<u8>| v.len()))
            .unwrap();
    }
    let (fds_before, maps_before) = (open_fds(), mappings());
    let slave_before = slave_counts();
    for i in 0..1000 {
        let buf = ShmBuf::from_slice(&[i as u8; 8192]).unwrap();
        assert_eq!(
            process
                .invoke_with(buf, func!(|b: ShmBuf| b.len()))
                .unwrap(),
            8192
        );
        if i % 50 == 0 {
            process
                .invoke_with(vec![0u8; 512 * 1024], func!(|v: Vec<u8>| v.len()))
                .unwrap();
        }
    }
    assert_eq!(open_fds(), fds_before);
    assert_eq!(mappings(), maps_before);
    assert_eq!(slave_counts(), slave_before);
}

#[test]
fn killing_both_sides_leaves_nothing_in_dev_shm() {
    let before: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let process = slave().expect("spawn");
    let pid = process.pid();
    let buf = ShmBuf::from_slice(&[5u8; 65536]).unwrap();
    process
        .invoke_with(buf, func!(|b: ShmBuf| b.len()))
        .unwrap();
    process
        .invoke_with(vec![1u8; 1 << 20], func!(|v: Vec<u8>| v.len()))
        .unwrap();
    kill_hard(pid);
    assert!(wait_until(PATIENCE, || !process_exists(pid)));
    std::thread::sleep(Duration::from_millis(50));
    let after: Vec<_> = std::fs::read_dir("/dev/shm")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let new: Vec<_> = after.iter().filter(|name| !before.contains(name)).collect();
    assert!(new.is_empty(), "left in /dev/shm: {new:?}");
}
