//! Moving shared memory through serde by file descriptor.
//!
//! [`ShmBuf`](crate::ShmBuf), [`ShmVec`](crate::ShmVec), [`ShmSlice`](crate::ShmSlice) and
//! [`SharedMutBuf`](crate::SharedMutBuf) implement `Serialize` and `Deserialize`. How they
//! travel depends on a thread-local context that the code around serialization sets up:
//!
//! - Inside [`collect_fds`], serializing one of them shares it (seals a `ShmBuf` read-only),
//!   adds its descriptor to the list `collect_fds` returns, and writes only a reference
//!   `Fd { index, len }` into the message. The caller sends those descriptors along with the
//!   message, over a unix socket (`SCM_RIGHTS`). No byte of the memory is copied.
//! - Inside [`provide_fds`], deserializing such a reference takes descriptor `index` from the
//!   list given and maps it. A reference to a missing index, a descriptor used twice, or a
//!   segment without the seals its type needs is a deserialization error, never a panic.
//! - Outside any context (over TCP, or a plain `postcard::to_stdvec`), a `ShmBuf`, `ShmVec` or
//!   `ShmSlice` is written inline as bytes (`serialize_bytes`), and read back into a fresh
//!   segment that the receiver owns (and may write). A `SharedMutBuf` cannot travel that way —
//!   a copy would silently stop being shared — and fails with
//!   [`ShmError::NeedsFdTransfer`].
//!
//! The contexts nest: each call sets up a fresh one and restores the previous one when it
//! returns, even by panic.
//!
//! ```
//! use processional_shm::{ShmBuf, transfer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let buf = ShmBuf::from_slice(b"big pixels")?;
//! // Sender: the message holds a reference, the descriptor goes beside it.
//! let (message, fds) = transfer::collect_fds(|| postcard::to_stdvec(&buf));
//! let message = message?;
//! assert_eq!(fds.len(), 1);
//! assert!(message.len() < 8);
//!
//! // (send `message` with `fds` over a unix socket; the receiver gets new descriptors)
//! let received: Vec<_> = fds.into_iter().map(|fd| fd.into_owned_fd()).collect::<Result<_, _>>()?;
//!
//! // Receiver: the reference maps the same pages.
//! let copy: ShmBuf = transfer::provide_fds(received, || postcard::from_bytes(&message))?;
//! assert_eq!(&copy[..], b"big pixels");
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::error::{Result, ShmError};

/// Something that keeps a descriptor open for as long as it lives.
pub(crate) trait HeldFd: Send + Sync + fmt::Debug {
    /// The descriptor.
    fn held_fd(&self) -> BorrowedFd<'_>;
}

/// A descriptor collected by [`collect_fds`], to send beside the message.
///
/// It either owns its descriptor or keeps the shared memory that owns it alive, so collecting
/// costs no `dup`. Borrow it with [`AsFd`] to send it (the kernel duplicates descriptors sent
/// over a unix socket), or turn it into an [`OwnedFd`].
pub struct TransferFd {
    repr: Repr,
}

enum Repr {
    Owned(OwnedFd),
    Held(Arc<dyn HeldFd>),
}

impl TransferFd {
    /// A descriptor kept open by shared memory that lives as long as this value.
    pub(crate) fn held(holder: Arc<dyn HeldFd>) -> TransferFd {
        TransferFd {
            repr: Repr::Held(holder),
        }
    }

    /// The descriptor as an [`OwnedFd`] (duplicated if it was held by shared memory).
    pub fn into_owned_fd(self) -> io::Result<OwnedFd> {
        match self.repr {
            Repr::Owned(fd) => Ok(fd),
            Repr::Held(holder) => holder.held_fd().try_clone_to_owned(),
        }
    }
}

impl From<OwnedFd> for TransferFd {
    fn from(fd: OwnedFd) -> TransferFd {
        TransferFd {
            repr: Repr::Owned(fd),
        }
    }
}

impl AsFd for TransferFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.repr {
            Repr::Owned(fd) => fd.as_fd(),
            Repr::Held(holder) => holder.held_fd(),
        }
    }
}

impl fmt::Debug for TransferFd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TransferFd").field(&self.as_fd()).finish()
    }
}

thread_local! {
    /// Descriptors collected by the innermost `collect_fds` on this thread.
    static COLLECTING: RefCell<Option<Vec<TransferFd>>> = const { RefCell::new(None) };
    /// Descriptors provided by the innermost `provide_fds` on this thread; `None` once taken.
    static PROVIDED: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Runs `f` (which serializes) with a fresh descriptor sink, and returns what it returned with
/// the descriptors of the shared memory it serialized, in reference-index order.
///
/// Shared memory serialized inside `f` is shared for good (a `ShmBuf` is sealed read-only), even
/// if the message is never sent. Unix sockets carry at most 253 descriptors per message
/// (`SCM_MAX_FD`); more have to be split by the transport.
pub fn collect_fds<R>(f: impl FnOnce() -> R) -> (R, Vec<TransferFd>) {
    let outer = COLLECTING.replace(Some(Vec::new()));
    let scope = Restore {
        slot: &COLLECTING,
        outer: Some(outer),
    };
    let result = f();
    let fds = scope.finish();
    (result, fds.unwrap_or_default())
}

/// Runs `f` (which deserializes) with `fds` available to the references it decodes: the one at
/// position `index` of `fds` answers `Fd { index, .. }`. Descriptors nobody took are closed when
/// `f` returns.
pub fn provide_fds<R>(fds: Vec<OwnedFd>, f: impl FnOnce() -> R) -> R {
    let outer = PROVIDED.replace(Some(fds.into_iter().map(Some).collect()));
    let scope = Restore {
        slot: &PROVIDED,
        outer: Some(outer),
    };
    let result = f();
    drop(scope.finish());
    result
}

/// Whether a [`collect_fds`] context is active on this thread: shared memory serialized now
/// travels by descriptor.
pub fn is_collecting() -> bool {
    COLLECTING.with_borrow(Option::is_some)
}

/// Adds a descriptor to the innermost [`collect_fds`] context and returns its index, or gives
/// it back when no context is active.
///
/// For `Serialize` implementations of other types that travel by descriptor.
pub fn attach(fd: TransferFd) -> Result<u32, TransferFd> {
    COLLECTING.with_borrow_mut(|sink| match sink {
        Some(fds) => match u32::try_from(fds.len()) {
            Ok(index) => {
                fds.push(fd);
                Ok(index)
            }
            Err(_) => Err(fd),
        },
        None => Err(fd),
    })
}

/// Takes descriptor `index` from the innermost [`provide_fds`] context.
///
/// For `Deserialize` implementations of other types that travel by descriptor. Each index can be
/// taken once.
pub fn take_fd(index: u32) -> Result<OwnedFd> {
    PROVIDED.with_borrow_mut(|provided| {
        let fds = provided.as_mut().ok_or(ShmError::NoFdContext)?;
        let count = fds.len();
        let slot = usize::try_from(index)
            .ok()
            .and_then(|i| fds.get_mut(i))
            .ok_or(ShmError::FdIndexOutOfRange { index, count })?;
        slot.take().ok_or(ShmError::FdAlreadyTaken { index })
    })
}

/// Puts back the context that was active before a `collect_fds` or `provide_fds`, when the
/// call returns or unwinds.
struct Restore<T: 'static> {
    slot: &'static std::thread::LocalKey<RefCell<Option<T>>>,
    outer: Option<Option<T>>,
}

impl<T: 'static> Restore<T> {
    /// Restores the outer context and returns the inner one.
    fn finish(mut self) -> Option<T> {
        let outer = self.outer.take().flatten();
        self.slot.replace(outer)
    }
}

impl<T: 'static> Drop for Restore<T> {
    fn drop(&mut self) {
        if let Some(outer) = self.outer.take() {
            // Unwinding out of `f`: drop the inner context (closing its descriptors).
            drop(self.slot.replace(outer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Segment;

    fn memfd() -> OwnedFd {
        Segment::create(1).unwrap().into_fd()
    }

    #[test]
    fn attach_outside_a_context_gives_the_fd_back() {
        assert!(!is_collecting());
        assert!(attach(TransferFd::from(memfd())).is_err());
        assert!(matches!(take_fd(0), Err(ShmError::NoFdContext)));
    }

    #[test]
    fn contexts_nest_and_restore() {
        let ((inner, outer_index), outer) = collect_fds(|| {
            let first = attach(TransferFd::from(memfd())).unwrap();
            assert_eq!(first, 0);
            let (_, inner) = collect_fds(|| {
                assert_eq!(attach(TransferFd::from(memfd())).unwrap(), 0);
                assert_eq!(attach(TransferFd::from(memfd())).unwrap(), 1);
            });
            (inner, attach(TransferFd::from(memfd())).unwrap())
        });
        assert_eq!(inner.len(), 2);
        assert_eq!(outer.len(), 2);
        assert_eq!(outer_index, 1);
        assert!(!is_collecting());
    }

    #[test]
    fn take_checks_indices() {
        provide_fds(vec![memfd(), memfd()], || {
            take_fd(1).unwrap();
            assert!(matches!(
                take_fd(1),
                Err(ShmError::FdAlreadyTaken { index: 1 })
            ));
            assert!(matches!(
                take_fd(2),
                Err(ShmError::FdIndexOutOfRange { index: 2, count: 2 })
            ));
            assert!(matches!(
                take_fd(u32::MAX),
                Err(ShmError::FdIndexOutOfRange { .. })
            ));
        });
        assert!(matches!(take_fd(0), Err(ShmError::NoFdContext)));
    }

    #[test]
    fn a_panic_inside_restores_the_outer_context() {
        let result = std::panic::catch_unwind(|| {
            collect_fds(|| {
                let _ = attach(TransferFd::from(memfd()));
                panic!("inside");
            })
        });
        assert!(result.is_err());
        assert!(!is_collecting());
    }
}
