//! Anonymous shared memory for processional: large data crosses processes without being copied.
//!
//! **Internal crate.** This is a layer of [processional](https://docs.rs/processional);
//! its API is not stable and may change in any release. Depend on the
//! `processional` crate, which re-exports what users need (this crate as
//! `processional::shm`).
//!
//! ```
//! use processional_shm::ShmBuf;
//!
//! # fn main() -> Result<(), processional_shm::ShmError> {
//! // Create and fill: the buffer belongs to us alone, so it is writable.
//! let mut buf = ShmBuf::new(1 << 20)?;
//! buf.as_mut_slice()?[..5].copy_from_slice(b"hello");
//!
//! // Share: the segment is sealed read-only, and we get a descriptor to send to another
//! // process (over a unix socket, see below).
//! let fd = buf.try_clone_fd()?;
//! assert!(buf.as_mut_slice().is_err());
//!
//! // The other side maps the descriptor: the same pages, no copy.
//! let received = ShmBuf::from_fd(fd)?;
//! assert_eq!(&received[..5], b"hello");
//! assert_eq!(received.len(), 1 << 20);
//! # Ok(())
//! # }
//! ```
//!
//! # Segments
//!
//! A [`Segment`] is an anonymous memory file: `memfd_create` on Linux, so it has no name in any
//! file system — nothing ever appears in `/dev/shm`, and the memory is freed when the last
//! descriptor and mapping go, even if every process using it is killed with `SIGKILL`.
//! (Elsewhere, `shm_open` of a random name followed at once by `shm_unlink`.) Descriptors are
//! close-on-exec.
//!
//! # The sealing model
//!
//! Who may change shared memory is decided by the kernel, with file seals ([`Seals`]), not by
//! trust:
//!
//! - **Exclusive.** A new [`ShmBuf`] / [`ShmVec`] belongs to its creator alone; nobody else has
//!   its descriptor. It is writable and resizable.
//! - **Shared read-only.** Sharing ([`ShmBuf::share`], handing out its descriptor, or sending it
//!   through serde) seals it with [`Seals::READ_ONLY`]: no process can write, shrink or grow it
//!   ever again, so every holder can read it through a plain `&[u8]`. The owner's writable
//!   mapping is first swapped, at the same address, for a read-only one (the kernel refuses
//!   `F_SEAL_WRITE` while any writable shared mapping exists), so slices borrowed before stay
//!   valid. Writing afterwards fails with [`ShmError::ReadOnly`]; mapping the descriptor
//!   writable fails in any process. A receiver refuses descriptors without these seals.
//! - **Shared mutable**, by explicit choice: [`SharedMutBuf`]. Its size is sealed (nobody can
//!   cut it under another's mapping), its contents are not: every holder maps it writable and
//!   sees the others' writes. You bring the synchronization (atomics, volatile accesses, or
//!   `unsafe` slices under your own protocol).
//! - **Pooled.** A [`PooledSegment`] has a sealed size and `F_SEAL_FUTURE_WRITE`: the pool's
//!   mapping writes, every other mapping is read-only. Its contents change between uses, so a
//!   receiver reads a [`Loan`] through a [`SegmentView`] under the lending protocol.
//!
//! # Typed arrays
//!
//! [`ShmVec<T>`] and [`ShmSlice<T>`] hold plain-old-data elements ([`bytemuck::Pod`]): a
//! growable, single-owner vector, and its read-only, cheaply cloned counterpart.
//!
//! # The pool
//!
//! The first write to a fresh page costs a page fault (≈ 2.2 µs per 4 KiB page, ≈ 55 ms per
//! 100 MiB here), several times the copy itself. The [`Pool`] keeps segments *and their
//! mappings* between uses, so refilling one costs only the copy (≈ 15 ms per 100 MiB, as into
//! warm memory). See [the `pool` module](pool) for lending a pooled segment to another process.
//!
//! Its policy: sizes round up to a class (at most 25% more); idle segments are kept within
//! [`PoolLimits`] (256 MiB in 64 segments by default), the least recently returned freed first,
//! and the latest segment larger than that limit is kept besides, so that a payload of any
//! size, sent again, reuses its segment. [`Pool::stats`] counts the segments made, reused and
//! freed.
//!
//! Sharing a filled [`ShmBuf`] once costs ≈ 5 ms per 100 MiB (its mapping is replaced by a
//! read-only one, which the kernel has to unmap page by page); sending it afterwards, and
//! mapping it on the other side, costs a few microseconds whatever its size.
//!
//! # Through serde: the transfer context
//!
//! [`ShmBuf`], [`ShmVec`], [`ShmSlice`] and [`SharedMutBuf`] implement `Serialize` and
//! `Deserialize`. Inside [`transfer::collect_fds`], they serialize as a reference to a
//! descriptor that is collected beside the message; inside [`transfer::provide_fds`], the
//! reference maps the received descriptor. So shared memory anywhere inside a message travels
//! by descriptor over a unix socket, with no byte copied. Without a context (over TCP, or plain
//! postcard use), a `ShmBuf`, `ShmVec` or `ShmSlice` travels as its bytes and is read back
//! into a fresh segment. See [the `transfer` module](transfer).
//!
//! # Usable alone
//!
//! Nothing here needs the processional runtimes: send [`ShmBuf::shared_fd`] with any message
//! over a `processional-transport` unix connection, and map the descriptor that arrives with
//! [`ShmBuf::from_fd`].
//!
//! ```
//! use processional_proto::Message;
//! use processional_shm::ShmBuf;
//! use processional_transport::Connection;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (mut here, mut there) = Connection::pair()?;
//!
//! let mut image = ShmBuf::new(64 << 20)?;
//! image.as_mut_slice()?.fill(0x80);
//! here.send_with_fds(&Message::Ping(image.len() as u64), &[image.shared_fd()?])?;
//!
//! let mut received = there.recv()?;
//! let fd = received.fds.pop().ok_or("no descriptor")?;
//! let mapped = ShmBuf::from_fd(fd)?;
//! assert_eq!(mapped.len(), 64 << 20);
//! assert!(mapped.iter().all(|&b| b == 0x80));
//! # Ok(())
//! # }
//! ```

// Examples are tested as code: a warning in one fails the build.
#![doc(test(attr(deny(warnings))))]

mod buf;
mod error;
mod mapping;
pub mod pool;
mod seals;
mod segment;
mod shared_mut;
mod slice;
mod sys;
pub mod transfer;
mod vec;
mod view;
mod wire;

pub use buf::ShmBuf;
pub use error::{Result, ShmError};
pub use pool::{Loan, Pool, PoolLimits, PoolStats, PooledSegment};
pub use seals::Seals;
pub use segment::Segment;
pub use shared_mut::SharedMutBuf;
pub use slice::ShmSlice;
pub use transfer::TransferFd;
pub use vec::ShmVec;
pub use view::SegmentView;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Segment>();
        send_sync::<ShmBuf>();
        send_sync::<ShmVec<f64>>();
        send_sync::<ShmSlice<u8>>();
        send_sync::<SharedMutBuf>();
        send_sync::<Pool>();
        send_sync::<PooledSegment>();
        send_sync::<Loan>();
        send_sync::<SegmentView>();
        send_sync::<TransferFd>();
    }
}
