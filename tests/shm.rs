//! Acceptance tests of shared memory across processes: buffers travel by
//! file descriptor, large byte payloads go through pooled segments, and
//! nothing leaks (descriptors, mappings, segments of killed processes).

use processional::func;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;

use processional::{SharedMutBuf, ShmBuf, ShmSlice, ShmVec, slave};
use processional_tests::{
    KillOnDrop, PATIENCE, gate, is_helper, kill_hard, process_exists, spawn_helper, wait_until,
};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The shared-memory segments this process maps (memfd mappings): not
/// every line of its maps, since a thread the runtime starts under load
/// (the watchdog lends one to a busy connection) adds a stack of its own.
fn mappings() -> usize {
    segment_mappings(&std::fs::read_to_string("/proc/self/maps").unwrap())
}

fn segment_mappings(maps: &str) -> usize {
    maps.lines().filter(|line| line.contains("/memfd:")).count()
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

/// Runs the test `name` alone in a helper process (this test binary again)
/// and checks that it passed. For tests that count what their process
/// holds, which concurrent tests would disturb.
fn run_alone(name: &str) {
    let mut helper = KillOnDrop(spawn_helper(name, &[]));
    let status = helper.0.wait().expect("the helper ran");
    assert!(status.success(), "the helper failed: {status:?}");
}

#[test]
fn a_thousand_transfers_leak_nothing() {
    if !is_helper() {
        return run_alone("a_thousand_transfers_leak_nothing");
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
                        .filter(|line| line.contains("/memfd:"))
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
    assert!(
        maps_before > 0,
        "the warm pool maps segments: the count must see them"
    );
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

/// The segments of ours this process holds, by inode number: those it has
/// a descriptor of, and those it maps.
#[derive(Debug, PartialEq)]
struct HeldSegments {
    by_descriptor: BTreeSet<u64>,
    by_mapping: BTreeSet<u64>,
}

/// How the kernel names our segments (memfds) in /proc.
const SEGMENT_NAME: &str = "/memfd:processional-shm";

fn held_segments() -> HeldSegments {
    let mut by_descriptor = BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let path = entry.unwrap().path();
        // Descriptors may close meanwhile (the directory's own, say).
        let Ok(target) = std::fs::read_link(&path) else {
            continue;
        };
        if target.to_string_lossy().starts_with(SEGMENT_NAME)
            && let Ok(file) = std::fs::metadata(&path)
        {
            by_descriptor.insert(file.ino());
        }
    }
    // Fields: address, permissions, offset, device, inode, path.
    let by_mapping = std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|line| line.contains(SEGMENT_NAME))
        .map(|line| line.split_whitespace().nth(4).unwrap().parse().unwrap())
        .collect();
    HeldSegments {
        by_descriptor,
        by_mapping,
    }
}

impl HeldSegments {
    /// What `self` holds that `earlier` did not.
    fn beyond(&self, earlier: &HeldSegments) -> HeldSegments {
        HeldSegments {
            by_descriptor: &self.by_descriptor - &earlier.by_descriptor,
            by_mapping: &self.by_mapping - &earlier.by_mapping,
        }
    }

    fn is_empty(&self) -> bool {
        self.by_descriptor.is_empty() && self.by_mapping.is_empty()
    }
}

#[test]
fn a_killed_slave_leaves_no_segment_in_its_master() {
    if !is_helper() {
        return run_alone("a_killed_slave_leaves_no_segment_in_its_master");
    }
    // Idle pooled segments are kept on purpose: none before, none after.
    let pool = processional::shm::Pool::global();
    pool.clear();
    let before = held_segments();
    let process = slave().expect("spawn");
    let pid = process.pid();
    // At the kill, segments of every kind are in use: one sent, one
    // received, one lent as the large argument of a call that runs.
    let sent = ShmBuf::from_slice(&[5u8; 65536]).unwrap();
    let len = process
        .invoke_with(sent.clone(), func!(|buf: ShmBuf| buf.len()))
        .unwrap();
    assert_eq!(len, 65536);
    let received = process
        .invoke(func!(|| ShmBuf::from_slice(&[6u8; 65536]).unwrap()))
        .unwrap();
    let running = process.schedule_with(
        vec![1u8; 1 << 20],
        func!(|bytes: Vec<u8>| {
            gate::start_then_wait(gate::LONGER_THAN_PATIENCE);
            bytes.len()
        }),
    );
    gate::wait_for_start(&process);
    let in_use = held_segments().beyond(&before);
    assert!(
        in_use.by_descriptor.len() >= 2 && in_use.by_mapping.len() >= 3,
        "the probe sees the segments in use: {in_use:?}"
    );
    kill_hard(pid);
    let outcome = running.wait_timeout(PATIENCE).expect("the call ended");
    assert!(outcome.is_err(), "the slave was killed: {outcome:?}");
    drop((sent, received, process));
    pool.clear();
    let left = held_segments().beyond(&before);
    assert!(left.is_empty(), "segments left in the master: {left:?}");
}

/// The size of each of the two segments [`killing_both_sides_frees_their_shared_memory`] watches.
const BIG: usize = 128 << 20;

/// A buffer of `len` bytes whose every page is allocated.
fn touched_buffer(len: usize) -> ShmBuf {
    let mut buf = ShmBuf::new(len).unwrap();
    let bytes = buf.as_mut_slice().unwrap();
    for page in bytes.chunks_mut(4096) {
        page[0] = 1;
    }
    buf
}

/// Helper of the next test: a master and its slave that both map two large
/// segments (one made by each), waiting to be killed.
#[test]
fn helper_master_holding_shared_memory() {
    if !is_helper() {
        return;
    }
    let process = slave().expect("spawn");
    let ours = touched_buffer(BIG);
    let _kept_there = process
        .wrap_with(ours.clone(), func!(|buf: ShmBuf| buf))
        .unwrap();
    let theirs = process.wrap(func!(|| touched_buffer(BIG))).unwrap();
    let _kept_here: ShmBuf = theirs
        .invoke(func!(|buf: &mut ShmBuf| buf.clone()))
        .unwrap();
    println!("slave-pid {}", process.pid());
    println!("holding");
    std::thread::sleep(PATIENCE);
}

/// The kernel's count of shared memory in use, host-wide, in KiB.
fn shmem_kib() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("Shmem:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("Shmem in /proc/meminfo")
}

#[test]
fn killing_both_sides_frees_their_shared_memory() {
    let mut master = KillOnDrop(spawn_helper("helper_master_holding_shared_memory", &[]));
    let stdout = master.0.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut next_line = || {
        lines
            .next()
            .expect("the helper printed its state")
            .expect("read")
    };
    // libtest prints "test <name> ... " before the helper's own output.
    let slave_pid: u32 = loop {
        if let Some((_, pid)) = next_line().split_once("slave-pid ") {
            break pid.trim().parse().expect("pid");
        }
    };
    while !next_line().contains("holding") {}
    let holding = shmem_kib();
    kill_hard(slave_pid);
    kill_hard(master.0.id());
    let _ = master.0.wait();
    assert!(
        wait_until(PATIENCE, || !process_exists(slave_pid)),
        "slave {slave_pid} survived the kill"
    );
    // Both segments are freed. The margin absorbs what other processes of
    // the host allocate meanwhile (a count that stays up fails the test).
    let expected_kib = (2 * BIG - BIG / 2) as u64 / 1024;
    let mut freed_kib = 0;
    let freed = wait_until(PATIENCE, || {
        freed_kib = holding.saturating_sub(shmem_kib());
        freed_kib >= expected_kib
    });
    assert!(
        freed,
        "only {freed_kib} KiB of shared memory were freed when both sides died, \
         expected at least {expected_kib} KiB of {} KiB",
        2 * BIG / 1024
    );
}
