//! Shared memory through serde (postcard), with and without the descriptor context.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use processional_shm::transfer::{self, TransferFd};
use processional_shm::{Seals, SharedMutBuf, ShmBuf, ShmError, ShmSlice, ShmVec};
use serde::{Deserialize, Serialize};

/// Arguments of an imaginary task: shared memory mixed with plain data.
#[derive(Debug, Serialize, Deserialize)]
struct Args {
    name: String,
    image: ShmBuf,
    samples: ShmVec<f64>,
    labels: ShmSlice<u32>,
    scale: f32,
}

fn args() -> Args {
    let mut samples = ShmVec::new();
    for i in 0..50_000 {
        samples.push(i as f64 * 0.5).unwrap();
    }
    Args {
        name: "frame".into(),
        image: ShmBuf::from_slice(&[0xab; 300_000]).unwrap(),
        samples,
        labels: ShmSlice::from_slice(&[1, 2, 3]).unwrap(),
        scale: 2.0,
    }
}

/// What a unix socket does to descriptors: the receiver gets new ones for the same files.
fn as_received(fds: Vec<TransferFd>) -> Vec<OwnedFd> {
    fds.iter()
        .map(|fd| fd.as_fd().try_clone_to_owned().unwrap())
        .collect()
}

#[test]
fn by_descriptor_inside_the_context_no_bytes_in_the_message() {
    let sent = args();
    let (message, fds) = transfer::collect_fds(|| postcard::to_stdvec(&sent));
    let message = message.unwrap();
    assert_eq!(fds.len(), 3);
    assert!(
        message.len() < 64,
        "the message holds references only: {} bytes",
        message.len()
    );
    assert!(sent.image.is_shared() && sent.samples.is_shared() && sent.labels.as_buf().is_shared());

    let received: Args =
        transfer::provide_fds(as_received(fds), || postcard::from_bytes(&message)).unwrap();
    assert_eq!(received.name, "frame");
    assert_eq!(received.image, sent.image);
    assert_eq!(received.samples.len(), 50_000);
    assert_eq!(&received.samples[..], &sent.samples[..]);
    assert_eq!(&received.labels[..], &[1, 2, 3]);
    assert_eq!(received.scale, 2.0);
    // The receiver maps the sender's pages: same file, not a copy.
    assert_eq!(
        inode(&received.image.try_clone_fd().unwrap()),
        inode(&sent.image.try_clone_fd().unwrap())
    );
}

#[test]
fn inline_outside_the_context() {
    let sent = args();
    let message = postcard::to_stdvec(&sent).unwrap();
    assert!(
        message.len() > 300_000 + 50_000 * 8,
        "the bytes are in the message"
    );
    assert!(
        !sent.image.is_shared(),
        "an inline copy does not share the buffer"
    );
    assert!(!sent.samples.is_shared());

    let mut received: Args = postcard::from_bytes(&message).unwrap();
    assert_eq!(received.image, sent.image);
    assert_eq!(&received.samples[..], &sent.samples[..]);
    assert_eq!(&received.labels[..], &[1, 2, 3]);
    // An inline copy is the receiver's own: writable.
    received.image.as_mut_slice().unwrap()[0] = 1;
    received.samples.push(1.0).unwrap();
    assert_eq!(sent.image[0], 0xab);
}

#[test]
fn received_by_descriptor_is_sealed() {
    let (message, fds) =
        transfer::collect_fds(|| postcard::to_stdvec(&ShmBuf::from_slice(b"frozen").unwrap()));
    let mut received: ShmBuf =
        transfer::provide_fds(as_received(fds), || postcard::from_bytes(&message.unwrap()))
            .unwrap();
    assert!(matches!(received.as_mut_slice(), Err(ShmError::ReadOnly)));
    assert!((received.seals().unwrap()).contains(Seals::READ_ONLY));

    // Not through the crate either: the kernel refuses a writable shared mapping.
    let fd = received.try_clone_fd().unwrap();
    // SAFETY: a fresh mapping at an address of the kernel's choice, unmapped below if created.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    let error = std::io::Error::last_os_error();
    if ptr != libc::MAP_FAILED {
        // SAFETY: `ptr` is the mapping just created, 4096 bytes long.
        unsafe { libc::munmap(ptr, 4096) };
        panic!("a sealed segment was mapped writable");
    }
    assert_eq!(error.raw_os_error(), Some(libc::EPERM));
    // Nor can it be written or resized through the descriptor.
    let file = std::fs::File::from(fd);
    assert!(std::io::Write::write(&mut &file, b"x").is_err());
    assert!(file.set_len(1).is_err());
}

#[test]
fn writes_after_sharing_are_refused() {
    let mut buf = ShmBuf::from_slice(&[1; 10]).unwrap();
    let (_, fds) = transfer::collect_fds(|| postcard::to_stdvec(&buf).unwrap());
    assert!(matches!(buf.as_mut_slice(), Err(ShmError::ReadOnly)));
    assert!(matches!(buf.resize(20), Err(ShmError::ReadOnly)));
    let mut vec = ShmVec::<u8>::from_slice(&[1]).unwrap();
    let (_, more) = transfer::collect_fds(|| postcard::to_stdvec(&vec).unwrap());
    assert!(matches!(vec.push(2), Err(ShmError::ReadOnly)));
    drop((fds, more));
}

#[test]
fn bad_references_are_errors_not_panics() {
    let (message, fds) = transfer::collect_fds(|| {
        postcard::to_stdvec(&(
            ShmBuf::from_slice(b"a").unwrap(),
            ShmBuf::from_slice(b"b").unwrap(),
        ))
    });
    let message = message.unwrap();
    assert_eq!(fds.len(), 2);

    // No context.
    assert!(postcard::from_bytes::<(ShmBuf, ShmBuf)>(&message).is_err());
    // Too few descriptors.
    let one = as_received(fds).into_iter().take(1).collect();
    let result = transfer::provide_fds(one, || postcard::from_bytes::<(ShmBuf, ShmBuf)>(&message));
    assert!(result.is_err());
    // A descriptor that is not a sealed segment.
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let (c, _d) = std::os::unix::net::UnixStream::pair().unwrap();
    let result = transfer::provide_fds(vec![a.into(), c.into()], || {
        postcard::from_bytes::<(ShmBuf, ShmBuf)>(&message)
    });
    assert!(result.is_err());
    // Garbage.
    let result = transfer::provide_fds(Vec::new(), || {
        postcard::from_bytes::<ShmBuf>(&[1, 200, 200, 200])
    });
    assert!(result.is_err());
}

#[test]
fn a_length_beyond_the_segment_is_refused() {
    let buf = ShmBuf::from_slice(&[9; 100]).unwrap();
    // A hand-made reference claiming more bytes than the segment has: variant 1, index 0,
    // len 5000 (postcard varints).
    let too_long = [1u8, 0, 0x88, 0x27];
    let fd = buf.try_clone_fd().unwrap();
    assert!(transfer::provide_fds(vec![fd], || postcard::from_bytes::<ShmBuf>(&too_long)).is_err());
    // The same reference with a length that fits: a view of the first 60 bytes.
    let fits = [1u8, 0, 60];
    let fd = buf.try_clone_fd().unwrap();
    let prefix = transfer::provide_fds(vec![fd], || postcard::from_bytes::<ShmBuf>(&fits)).unwrap();
    assert_eq!(&prefix[..], &[9; 60]);
}

#[test]
fn shared_mutable_travels_by_descriptor_only() {
    let buf = SharedMutBuf::new(4096).unwrap();
    assert!(
        postcard::to_stdvec(&buf).is_err(),
        "no inline copy of shared-mutable memory"
    );

    let (message, fds) = transfer::collect_fds(|| postcard::to_stdvec(&buf));
    let other: SharedMutBuf =
        transfer::provide_fds(as_received(fds), || postcard::from_bytes(&message.unwrap()))
            .unwrap();
    assert_eq!(other.len(), 4096);
    other.atomic_u64s()[3].store(99, Ordering::Release);
    assert_eq!(buf.atomic_u64s()[3].load(Ordering::Acquire), 99);
    buf.write::<u16>(10, 0xbeef).unwrap();
    assert_eq!(other.read::<u16>(10).unwrap(), 0xbeef);
}

#[test]
fn segments_never_alias() {
    let mut bufs: Vec<ShmBuf> = (0..64u8)
        .map(|i| {
            let mut buf = ShmBuf::new(8192).unwrap();
            buf.as_mut_slice().unwrap().fill(i);
            buf
        })
        .collect();
    for (i, buf) in bufs.iter_mut().enumerate() {
        assert!(
            buf.iter().all(|&b| b == i as u8),
            "segment {i} was overwritten"
        );
    }
    let mut inodes: Vec<u64> = bufs
        .iter()
        .map(|buf| inode(&buf.try_clone_fd().unwrap()))
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    assert_eq!(inodes.len(), 64, "every segment is its own file");
}

#[test]
fn empty_values_round_trip_both_ways() {
    let (message, fds) = transfer::collect_fds(|| {
        postcard::to_stdvec(&(ShmBuf::new(0).unwrap(), ShmVec::<u64>::new())).unwrap()
    });
    let (buf, vec): (ShmBuf, ShmVec<u64>) =
        transfer::provide_fds(as_received(fds), || postcard::from_bytes(&message)).unwrap();
    assert!(buf.is_empty() && vec.is_empty());
    let inline = postcard::to_stdvec(&ShmVec::<u64>::new()).unwrap();
    assert!(
        postcard::from_bytes::<ShmVec<u64>>(&inline)
            .unwrap()
            .is_empty()
    );
}

fn inode(fd: &OwnedFd) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::File::from(fd.try_clone().unwrap())
        .metadata()
        .unwrap()
        .ino()
}
