//! Another process reads a shared segment through an inherited descriptor, and cannot write it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use processional_shm::ShmBuf;

/// Duplicates `fd` without close-on-exec, so that a child process inherits it.
fn inheritable(fd: &OwnedFd) -> OwnedFd {
    // SAFETY: `fd` is a live descriptor; F_DUPFD returns a new one (or -1), which we own.
    let raw = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, 100) };
    assert!(raw >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

#[test]
fn a_child_reads_the_segment_and_cannot_write_it() {
    let buf = ShmBuf::from_slice(b"read by another process\n").unwrap();
    let fd = inheritable(&buf.try_clone_fd().unwrap());
    let n = fd.as_raw_fd();

    // Reading through /proc opens the memfd afresh, at offset 0.
    let output = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("cat /proc/self/fd/{n}"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"read by another process\n");

    let output = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("printf overwritten >&{n}"))
        .output()
        .unwrap();
    assert!(!output.status.success(), "the child wrote a sealed segment");
    assert_eq!(&buf[..], b"read by another process\n");
}
