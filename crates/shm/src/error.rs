//! The crate's error type.

use std::io;

use crate::Seals;

/// Everything that can go wrong with shared memory.
///
/// ```
/// use processional_shm::{ShmBuf, ShmError};
///
/// # fn main() -> Result<(), ShmError> {
/// let mut buf = ShmBuf::new(16)?;
/// buf.share()?; // sealed read-only from now on
/// assert!(matches!(buf.as_mut_slice(), Err(ShmError::ReadOnly)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Os {
        /// The operation that failed, such as `"memfd_create"`.
        op: &'static str,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The memory has been shared read-only (sealed): it can no longer be written or resized.
    #[error("the shared memory is sealed read-only: it can no longer be written or resized")]
    ReadOnly,
    /// The segment's size is sealed: it can no longer grow or shrink.
    #[error("the segment's size is sealed: it can no longer grow or shrink")]
    SizeSealed,
    /// The segment has been handed to other holders: only its sole owner may resize it.
    #[error("the segment has been handed to other holders: only its sole owner may resize it")]
    NotExclusive,
    /// Other handles to this buffer exist in this process: mutable access needs the only one.
    #[error("other handles to this buffer exist: mutable access needs the only handle")]
    Aliased,
    /// A writable shared mapping of the segment is still alive, so it cannot be sealed
    /// read-only.
    #[error(
        "a writable shared mapping of the segment is still alive: it cannot be sealed read-only"
    )]
    WritableMappingAlive,
    /// The file cannot carry seals (it is not a memfd created with sealing allowed).
    #[error("the file cannot carry seals")]
    NotSealable,
    /// The segment's seals are locked (`F_SEAL_SEAL`) and do not include the ones asked for.
    #[error("the segment's seals are locked at {found} and cannot include {wanted}")]
    SealsLocked {
        /// The seals the segment carries.
        found: Seals,
        /// The seals that were asked for.
        wanted: Seals,
    },
    /// A received segment lacks the seals needed to map it safely the way it was asked for.
    #[error("the segment lacks the seals {missing} (it carries {found})")]
    MissingSeals {
        /// The seals that are required but absent.
        missing: Seals,
        /// The seals the segment carries.
        found: Seals,
    },
    /// The file descriptor does not refer to a regular file (memfds are regular files).
    #[error("the file descriptor is not a regular file or memfd (st_mode {mode:#o})")]
    NotRegularFile {
        /// The descriptor's `st_mode`.
        mode: u32,
    },
    /// A length or offset falls outside the memory it refers to.
    #[error("{len} bytes at offset {offset} do not fit in {size} bytes")]
    OutOfBounds {
        /// Where the access starts.
        offset: u64,
        /// How many bytes it covers.
        len: u64,
        /// The size of the memory.
        size: u64,
    },
    /// An offset is not aligned for the element type accessed there.
    #[error("offset {offset} is not aligned to {align} bytes")]
    Misaligned {
        /// The offending offset.
        offset: usize,
        /// The alignment the access needs.
        align: usize,
    },
    /// A requested size does not fit in the address space or a file size.
    #[error("a size of {len} elements of {elem_size} bytes is too large")]
    TooLarge {
        /// The number of elements asked for.
        len: u64,
        /// The size of one element in bytes.
        elem_size: usize,
    },
    /// A byte length is not a whole number of elements.
    #[error("{len} bytes are not a whole number of {elem_size}-byte elements")]
    ElementSize {
        /// The byte length.
        len: u64,
        /// The size of one element in bytes.
        elem_size: usize,
    },
    /// A file descriptor reference was decoded outside
    /// [`transfer::provide_fds`](crate::transfer::provide_fds).
    #[error("a file descriptor reference was received, but no descriptors were provided")]
    NoFdContext,
    /// A file descriptor reference names an index past the descriptors received.
    #[error("file descriptor index {index} is out of range ({count} descriptors received)")]
    FdIndexOutOfRange {
        /// The index that was asked for.
        index: u32,
        /// How many descriptors were provided.
        count: usize,
    },
    /// A file descriptor reference names a descriptor that was already taken.
    #[error("file descriptor index {index} was used twice")]
    FdAlreadyTaken {
        /// The index that was asked for twice.
        index: u32,
    },
    /// A shared-mutable buffer can only travel by file descriptor (over a unix connection,
    /// inside [`transfer::collect_fds`](crate::transfer::collect_fds)): a copy of its bytes would
    /// silently stop being shared.
    #[error(
        "a shared-mutable buffer can only travel by file descriptor, not as a copy of its bytes"
    )]
    NeedsFdTransfer,
}

impl ShmError {
    /// Wraps an OS error with the name of the operation that produced it.
    pub(crate) fn os(op: &'static str) -> impl FnOnce(io::Error) -> ShmError {
        move |source| ShmError::Os { op, source }
    }
}

/// `Result` with [`ShmError`] as the default error.
pub type Result<T, E = ShmError> = std::result::Result<T, E>;
