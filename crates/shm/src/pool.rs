//! `Pool`: segments kept mapped between uses, so repeated large transfers skip page faults.
//!
//! Writing fresh shared memory costs a page fault per page the first time (≈ 2 µs per 4 KiB
//! page, ≈ 55 ms per 100 MiB on our machines) — several times the cost of copying the bytes.
//! A [`PooledSegment`] that comes back from the pool has its pages allocated and mapped already:
//! filling it again costs only the copy.
//!
//! # Lending a segment to another process
//!
//! ```
//! use processional_shm::{Pool, SegmentView};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let payload = vec![7u8; 3 << 20];
//!
//! // Sender: fill a pooled segment and lend it.
//! let mut segment = Pool::global().take(payload.len())?;
//! segment.copy_from_slice(&payload);
//! let loan = segment.lend();
//! let fd = loan.try_clone_fd()?; // or send `loan.as_fd()` beside the frame
//!
//! // Receiver: map what it was sent, read it, then tell the sender it is done.
//! let view = SegmentView::map(fd, payload.len())?;
//! // SAFETY: the sender does not write a lent segment before our reply.
//! let received = unsafe { view.as_slice() }.to_vec();
//! drop(view);
//!
//! // Sender, on the reply: the segment is writable again; dropping it returns it to the pool.
//! let segment = loan.reclaim();
//! drop(segment);
//! assert_eq!(received, payload);
//! # Ok(())
//! # }
//! ```
//!
//! A pooled segment's size is sealed ([`Seals::FIXED_SIZE`]) and, where the kernel has it
//! (Linux 5.1), [`Seals::FUTURE_WRITE`]: the pool's own mapping stays writable, every other
//! mapping of it, in any process, is read-only. Its contents are not sealed — the pool rewrites
//! them for the next use — so a receiver must be done with them before it replies. A [`Loan`]
//! dropped without [`reclaim`](Loan::reclaim) (no reply came) is not reused: its receiver may
//! still be reading.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};

use crate::error::{Result, ShmError};
use crate::mapping::{Access, Mapping};
use crate::{Seals, Segment, sys};

/// The smallest size class: smaller requests get a segment this large.
const MIN_CLASS: usize = 64 << 10;

/// How much idle memory a pool may keep, and in how many segments.
///
/// Segments up to `max_idle_bytes` are kept within both limits, the least recently returned
/// freed first. A segment larger than `max_idle_bytes` does not fit them; with
/// `keep_oversized` the pool still keeps the most recently returned one of those (at most
/// one, besides the others), so that a user who keeps sending payloads that large keeps
/// reusing one segment instead of making and faulting in a fresh one every time. Idle memory
/// is then at most `max_idle_bytes` plus that one segment; [`Pool::clear`] frees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Total size of the idle segments kept (the oversized one aside).
    pub max_idle_bytes: usize,
    /// Number of idle segments kept (each holds a descriptor and a mapping; the oversized one
    /// aside). Zero keeps none at all, not even an oversized one.
    pub max_idle_segments: usize,
    /// Whether the most recently returned segment larger than `max_idle_bytes` is kept.
    pub keep_oversized: bool,
}

impl Default for PoolLimits {
    /// 256 MiB in at most 64 segments (room for two 100 MiB payloads), plus the last segment
    /// larger than that.
    fn default() -> PoolLimits {
        PoolLimits {
            max_idle_bytes: 256 << 20,
            max_idle_segments: 64,
            keep_oversized: true,
        }
    }
}

/// What a pool has done since it was made: counters that only grow.
///
/// `created` counts `memfd_create` calls: a workload that keeps reusing its segments keeps it
/// still.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Fresh segments made (each one a `memfd_create`, a mapping, and page faults).
    pub created: u64,
    /// Requests served with an idle segment.
    pub reused: u64,
    /// Segments the pool freed: returned beyond its limits, evicted, or cleared.
    pub freed: u64,
}

/// A pool of writable, mapped segments, sorted by size class.
///
/// [`take`](Pool::take) hands out a segment of at least the requested size (sizes are rounded
/// up to a class: 64 KiB, then four classes per doubling, so at most 25% larger), reusing an
/// idle one of that class when there is one. Dropping the [`PooledSegment`] gives it back;
/// the pool keeps the most recently returned ones within its [`PoolLimits`] (and the latest
/// one too large for them, see [`PoolLimits`]) and frees the others.
///
/// A `Pool` is a cheap handle ([`Clone`]); idle memory is freed when the last handle goes.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<PoolShared>,
}

struct PoolShared {
    idle: Mutex<IdleSet>,
    created: AtomicU64,
    reused: AtomicU64,
    freed: AtomicU64,
}

/// The idle segments, by size class, oldest first within a class.
struct IdleSet {
    by_class: BTreeMap<usize, VecDeque<Idle>>,
    bytes: usize,
    count: usize,
    limits: PoolLimits,
    /// Counts returns, to find the least recently returned segment.
    clock: u64,
    /// The most recently returned segment larger than `limits.max_idle_bytes`, kept beside
    /// the others when `limits.keep_oversized` (not counted in `bytes` and `count`).
    oversized: Option<Slot>,
}

struct Idle {
    slot: Slot,
    returned_at: u64,
}

/// A segment of one size class and the pool's writable mapping of all of it.
struct Slot {
    segment: Segment,
    map: Mapping,
}

impl Pool {
    /// A pool with the given limits.
    pub fn new(limits: PoolLimits) -> Pool {
        let idle = IdleSet {
            by_class: BTreeMap::new(),
            bytes: 0,
            count: 0,
            limits,
            clock: 0,
            oversized: None,
        };
        Pool {
            shared: Arc::new(PoolShared {
                idle: Mutex::new(idle),
                created: AtomicU64::new(0),
                reused: AtomicU64::new(0),
                freed: AtomicU64::new(0),
            }),
        }
    }

    /// The process-wide pool, with [`PoolLimits::default`].
    pub fn global() -> &'static Pool {
        static GLOBAL: OnceLock<Pool> = OnceLock::new();
        GLOBAL.get_or_init(|| Pool::new(PoolLimits::default()))
    }

    /// The size of the segment [`take`](Pool::take) hands out for `len` bytes.
    pub fn class_size(len: usize) -> Result<usize> {
        if len <= MIN_CLASS {
            return Ok(MIN_CLASS);
        }
        let top = usize::BITS - 1 - (len - 1).leading_zeros();
        let step = (1usize << (top - 2)).max(sys::page_size());
        len.checked_next_multiple_of(step)
            .filter(|&size| size <= isize::MAX as usize)
            .ok_or(ShmError::TooLarge {
                len: len as u64,
                elem_size: 1,
            })
    }

    /// A writable segment of at least `len` bytes, whose [`len`](PooledSegment::len) is `len`.
    ///
    /// The bytes of a reused segment are whatever its last user left there; a fresh one is
    /// zeroed, and its first `len` bytes are faulted in for writing right away (cheaper than
    /// one fault per page).
    pub fn take(&self, len: usize) -> Result<PooledSegment> {
        let class = Pool::class_size(len)?;
        let slot = self.shared.take(class, len)?;
        Ok(PooledSegment {
            slot: Some(slot),
            len,
            pool: Arc::downgrade(&self.shared),
        })
    }

    /// The limits.
    pub fn limits(&self) -> PoolLimits {
        self.shared.lock().limits
    }

    /// Changes the limits, freeing idle segments beyond the new ones.
    pub fn set_limits(&self, limits: PoolLimits) {
        let (evicted, oversized) = {
            let mut idle = self.shared.lock();
            idle.limits = limits;
            let keep = limits.keep_oversized && limits.max_idle_segments > 0;
            let oversized = if keep { None } else { idle.oversized.take() };
            (idle.evict_to_fit(0), oversized)
        };
        self.shared
            .count_freed(evicted.len() + usize::from(oversized.is_some()));
        drop((evicted, oversized));
    }

    /// The total size of the idle segments (the oversized one included).
    pub fn idle_bytes(&self) -> usize {
        let idle = self.shared.lock();
        idle.bytes + idle.oversized.as_ref().map_or(0, |slot| slot.map.len())
    }

    /// The number of idle segments (the oversized one included).
    pub fn idle_segments(&self) -> usize {
        let idle = self.shared.lock();
        idle.count + usize::from(idle.oversized.is_some())
    }

    /// What the pool has done so far: segments made, reused and freed.
    ///
    /// ```
    /// use processional_shm::{Pool, PoolLimits};
    ///
    /// # fn main() -> Result<(), processional_shm::ShmError> {
    /// let pool = Pool::new(PoolLimits::default());
    /// drop(pool.take(1 << 20)?);
    /// drop(pool.take(1 << 20)?);
    /// let stats = pool.stats();
    /// assert_eq!((stats.created, stats.reused), (1, 1));
    /// # Ok(())
    /// # }
    /// ```
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            created: self.shared.created.load(Ordering::Relaxed),
            reused: self.shared.reused.load(Ordering::Relaxed),
            freed: self.shared.freed.load(Ordering::Relaxed),
        }
    }

    /// Frees every idle segment.
    pub fn clear(&self) {
        let (evicted, oversized) = {
            let mut idle = self.shared.lock();
            idle.count = 0;
            idle.bytes = 0;
            (std::mem::take(&mut idle.by_class), idle.oversized.take())
        };
        let freed = evicted.values().map(VecDeque::len).sum::<usize>();
        self.shared
            .count_freed(freed + usize::from(oversized.is_some()));
        drop((evicted, oversized));
    }
}

impl PoolShared {
    fn lock(&self) -> MutexGuard<'_, IdleSet> {
        // The idle set stays consistent across a panic (every update is a few plain writes).
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle segment of `class` if there is one, else a fresh one with its first `populate`
    /// bytes faulted in.
    fn take(&self, class: usize, populate: usize) -> Result<Slot> {
        let reused = self.lock().pop(class);
        match reused {
            Some(slot) => {
                self.reused.fetch_add(1, Ordering::Relaxed);
                Ok(slot)
            }
            None => {
                let slot = Slot::create(class, populate)?;
                self.created.fetch_add(1, Ordering::Relaxed);
                Ok(slot)
            }
        }
    }

    fn count_freed(&self, count: usize) {
        if count > 0 {
            self.freed.fetch_add(count as u64, Ordering::Relaxed);
        }
    }

    /// Keeps a returned segment if the limits allow.
    fn give_back(&self, slot: Slot) {
        let class = slot.map.len();
        let evicted: Vec<Slot> = {
            let mut idle = self.lock();
            if class > idle.limits.max_idle_bytes
                && idle.limits.keep_oversized
                && idle.limits.max_idle_segments > 0
            {
                // The user's largest payloads: keep the latest one beside the others.
                idle.oversized.replace(slot).into_iter().collect()
            } else if class > idle.limits.max_idle_bytes || idle.limits.max_idle_segments == 0 {
                vec![slot]
            } else {
                let evicted = idle.evict_to_fit(class);
                idle.clock += 1;
                let returned_at = idle.clock;
                idle.by_class
                    .entry(class)
                    .or_default()
                    .push_back(Idle { slot, returned_at });
                idle.bytes += class;
                idle.count += 1;
                evicted
            }
        };
        // Unmapping and closing happen outside the lock.
        self.count_freed(evicted.len());
        drop(evicted);
    }
}

impl IdleSet {
    /// The most recently returned idle segment of `class`.
    fn pop(&mut self, class: usize) -> Option<Slot> {
        if self
            .oversized
            .as_ref()
            .is_some_and(|slot| slot.map.len() == class)
        {
            return self.oversized.take();
        }
        let queue = self.by_class.get_mut(&class)?;
        let idle = queue.pop_back()?;
        if queue.is_empty() {
            self.by_class.remove(&class);
        }
        self.bytes -= class;
        self.count -= 1;
        Some(idle.slot)
    }

    /// Removes the least recently returned segments until `incoming` more bytes (and one more
    /// segment, if `incoming > 0`) fit within the limits; returns them to be freed.
    fn evict_to_fit(&mut self, incoming: usize) -> Vec<Slot> {
        let extra = usize::from(incoming > 0);
        let mut evicted = Vec::new();
        while self.count > 0
            && (self.bytes + incoming > self.limits.max_idle_bytes
                || self.count + extra > self.limits.max_idle_segments)
        {
            let oldest = self
                .by_class
                .iter()
                .filter_map(|(&class, queue)| queue.front().map(|idle| (idle.returned_at, class)))
                .min();
            let Some((_, class)) = oldest else { break };
            if let Some(queue) = self.by_class.get_mut(&class) {
                if let Some(idle) = queue.pop_front() {
                    self.bytes -= class;
                    self.count -= 1;
                    evicted.push(idle.slot);
                }
                if queue.is_empty() {
                    self.by_class.remove(&class);
                }
            }
        }
        evicted
    }
}

impl Slot {
    /// A fresh segment of `class` bytes, mapped writable, with its first `populate` bytes
    /// faulted in.
    fn create(class: usize, populate: usize) -> Result<Slot> {
        let mut segment = Segment::create(class)?;
        segment.seal_size()?;
        let map = Mapping::new(segment.as_fd(), class, Access::ReadWrite)?;
        // From now on, only this mapping may write: every other mapping, in any process, is
        // read-only. Kernels before 5.1 do not know FUTURE_WRITE; their receivers are trusted.
        match segment.add_seals(Seals::FUTURE_WRITE | Seals::SEAL) {
            Ok(()) | Err(ShmError::NotSealable) => {}
            Err(err) => return Err(err),
        }
        map.populate_for_write(populate);
        Ok(Slot { segment, map })
    }
}

/// A writable segment from a [`Pool`]; it goes back to the pool when dropped.
///
/// It dereferences to its first [`len`](PooledSegment::len) bytes (see
/// [`set_len`](PooledSegment::set_len)). Lend it to another process with
/// [`lend`](PooledSegment::lend).
pub struct PooledSegment {
    /// `None` only while being dropped or lent.
    slot: Option<Slot>,
    len: usize,
    pool: Weak<PoolShared>,
}

impl PooledSegment {
    fn slot(&self) -> &Slot {
        self.slot
            .as_ref()
            .unwrap_or_else(|| unreachable!("a PooledSegment always has a slot"))
    }

    /// The length in bytes: how much of the segment is in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The size of the segment: the largest length it can take.
    pub fn capacity(&self) -> usize {
        self.slot().map.len()
    }

    /// Sets the length, up to the [`capacity`](PooledSegment::capacity).
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.capacity() {
            return Err(ShmError::OutOfBounds {
                offset: 0,
                len: len as u64,
                size: self.capacity() as u64,
            });
        }
        self.len = len;
        Ok(())
    }

    /// Sets the length to zero (the capacity stays).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Makes the capacity at least `capacity`. If it has to grow, the first `len` bytes move to
    /// a larger segment from the same pool (at least twice the size), and this one goes back to
    /// the pool.
    pub fn reserve(&mut self, capacity: usize) -> Result<()> {
        if capacity <= self.capacity() {
            return Ok(());
        }
        let class = Pool::class_size(capacity.max(self.capacity().saturating_mul(2)))?;
        let slot = match self.pool.upgrade() {
            Some(pool) => pool.take(class, capacity)?,
            None => Slot::create(class, capacity)?,
        };
        // SAFETY: both mappings are valid for at least `len` bytes (`len <= old capacity <
        // new capacity`), the new one is writable, and they are distinct mappings.
        unsafe { std::ptr::copy_nonoverlapping(self.slot().map.ptr(), slot.map.ptr(), self.len) };
        let old = self.slot.replace(slot);
        if let (Some(old), Some(pool)) = (old, self.pool.upgrade()) {
            pool.give_back(old);
        }
        Ok(())
    }

    /// Appends `bytes`, growing the segment if needed (see [`reserve`](PooledSegment::reserve)).
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> Result<()> {
        let len = self
            .len
            .checked_add(bytes.len())
            .ok_or(ShmError::TooLarge {
                len: u64::MAX,
                elem_size: 1,
            })?;
        self.reserve(len)?;
        let start = self.len;
        self.len = len;
        self.as_mut_slice()[start..].copy_from_slice(bytes);
        Ok(())
    }

    /// The first `len` bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the pool's mapping is valid for `capacity >= len` bytes while the slot lives;
        // the size is sealed; only this mapping may write (FUTURE_WRITE), and only through
        // `&mut self`.
        unsafe { std::slice::from_raw_parts(self.slot().map.ptr(), self.len) }
    }

    /// The first `len` bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this the only reference, and the mapping
        // is writable.
        unsafe { std::slice::from_raw_parts_mut(self.slot().map.ptr(), self.len) }
    }

    /// Lends the segment out: it becomes read-only here until [`Loan::reclaim`].
    pub fn lend(self) -> Loan {
        Loan {
            segment: Some(self),
        }
    }

    /// Duplicates the descriptor.
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.slot().segment.dup_fd()
    }
}

impl io::Write for PooledSegment {
    /// Appends (see [`extend_from_slice`](PooledSegment::extend_from_slice)): serializers that
    /// write to an [`io::Write`] can write straight into shared memory.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.extend_from_slice(bytes).map_err(io::Error::other)?;
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.extend_from_slice(bytes).map_err(io::Error::other)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for PooledSegment {
    fn drop(&mut self) {
        if let (Some(slot), Some(pool)) = (self.slot.take(), self.pool.upgrade()) {
            pool.give_back(slot);
        }
    }
}

impl Deref for PooledSegment {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl DerefMut for PooledSegment {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl AsFd for PooledSegment {
    /// The descriptor: safe to hand out, since its size is sealed and other mappings of it are
    /// read-only.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.slot().segment.as_fd()
    }
}

impl fmt::Debug for PooledSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledSegment")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .field("fd", &self.as_fd())
            .finish()
    }
}

/// A [`PooledSegment`] lent to another process: readable here, not writable, until the
/// receiver says it is done and [`reclaim`](Loan::reclaim) takes it back.
///
/// Dropping a `Loan` frees the segment instead of returning it to the pool, since the receiver
/// may still be reading it.
pub struct Loan {
    /// `None` once reclaimed.
    segment: Option<PooledSegment>,
}

impl Loan {
    fn segment(&self) -> &PooledSegment {
        self.segment
            .as_ref()
            .unwrap_or_else(|| unreachable!("a Loan holds its segment until reclaimed"))
    }

    /// The length in bytes lent.
    pub fn len(&self) -> usize {
        self.segment().len()
    }

    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes lent.
    pub fn as_slice(&self) -> &[u8] {
        self.segment().as_slice()
    }

    /// Duplicates the descriptor, to send it.
    pub fn try_clone_fd(&self) -> Result<OwnedFd> {
        self.segment().try_clone_fd()
    }

    /// Takes the segment back, writable, once the receiver is done with it.
    pub fn reclaim(mut self) -> PooledSegment {
        self.segment
            .take()
            .unwrap_or_else(|| unreachable!("a Loan holds its segment until reclaimed"))
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(mut segment) = self.segment.take() {
            // Unreturned: free it rather than let the pool hand it out while it may be read.
            segment.pool = Weak::new();
        }
    }
}

impl AsFd for Loan {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.segment().as_fd()
    }
}

impl fmt::Debug for Loan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan")
            .field("segment", self.segment())
            .finish()
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let idle = self.shared.lock();
        f.debug_struct("Pool")
            .field("idle_bytes", &idle.bytes)
            .field("idle_segments", &idle.count)
            .field("limits", &idle.limits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_round_up_by_at_most_a_quarter() {
        assert_eq!(Pool::class_size(0).unwrap(), MIN_CLASS);
        assert_eq!(Pool::class_size(MIN_CLASS).unwrap(), MIN_CLASS);
        assert_eq!(Pool::class_size(MIN_CLASS + 1).unwrap(), 80 << 10);
        assert_eq!(Pool::class_size(1 << 20).unwrap(), 1 << 20);
        assert_eq!(Pool::class_size(100 << 20).unwrap(), 112 << 20);
        for len in [70_000, 1_000_000, 5_555_555, 123_456_789] {
            let class = Pool::class_size(len).unwrap();
            assert!(
                class >= len && class <= len + len / 4 + 4096,
                "{len} -> {class}"
            );
            assert_eq!(class % 4096, 0);
        }
        assert!(Pool::class_size(usize::MAX).is_err());
    }

    #[test]
    fn segments_are_reused_with_their_mapping() {
        let pool = Pool::new(PoolLimits::default());
        let mut first = pool.take(95_000).unwrap();
        first[94_999] = 1;
        let ptr = first.as_ptr();
        drop(first);
        assert_eq!(pool.idle_segments(), 1);
        assert_eq!(pool.idle_bytes(), Pool::class_size(95_000).unwrap());
        let second = pool.take(90_000).unwrap();
        assert_eq!(second.as_ptr(), ptr, "same class: same mapping");
        assert_eq!(second.len(), 90_000);
        assert_eq!(pool.idle_segments(), 0);
        let other_class = pool.take(1 << 20).unwrap();
        assert_ne!(other_class.as_ptr(), ptr);
    }

    #[test]
    fn limits_bound_the_idle_memory() {
        let pool = Pool::new(PoolLimits {
            max_idle_bytes: 3 * MIN_CLASS,
            max_idle_segments: 2,
            keep_oversized: false,
        });
        let taken: Vec<_> = (0..4).map(|_| pool.take(10).unwrap()).collect();
        drop(taken);
        assert_eq!(pool.idle_segments(), 2);
        let big = pool.take(4 * MIN_CLASS).unwrap();
        drop(big);
        assert_eq!(pool.idle_segments(), 2, "too large to keep");
        pool.set_limits(PoolLimits {
            max_idle_bytes: MIN_CLASS,
            max_idle_segments: 10,
            keep_oversized: false,
        });
        assert_eq!(pool.idle_segments(), 1);
        assert_eq!(pool.idle_bytes(), MIN_CLASS);
        pool.clear();
        assert_eq!(pool.idle_segments(), 0);
    }

    /// A segment larger than the idle limit (a 257 MiB payload rounds up to a 320 MiB class,
    /// above the default 256 MiB) is kept when it is the latest such one, so sending it again
    /// makes no fresh segment.
    #[test]
    fn the_latest_oversized_segment_is_kept() {
        let pool = Pool::new(PoolLimits {
            max_idle_bytes: 2 * MIN_CLASS,
            max_idle_segments: 4,
            keep_oversized: true,
        });
        let big = 2 * MIN_CLASS + 1;
        assert!(Pool::class_size(big).unwrap() > pool.limits().max_idle_bytes);
        drop(pool.take(big).unwrap());
        drop(pool.take(big).unwrap());
        assert_eq!(
            pool.stats().created,
            1,
            "the second take reused the first segment"
        );
        assert_eq!(pool.stats().reused, 1);
        drop(pool.take(10).unwrap());
        assert_eq!(
            pool.idle_segments(),
            2,
            "an ordinary one beside the oversized one"
        );
        let bigger = 4 * MIN_CLASS;
        drop(pool.take(bigger).unwrap());
        assert_eq!(
            pool.idle_segments(),
            2,
            "a newer oversized segment replaces the older"
        );
        assert_eq!(pool.idle_bytes(), MIN_CLASS + bigger);
        assert_eq!(pool.stats().freed, 1);
        pool.set_limits(PoolLimits {
            keep_oversized: false,
            ..pool.limits()
        });
        assert_eq!(pool.idle_segments(), 1);
        pool.clear();
        assert_eq!(pool.idle_segments(), 0);
        assert_eq!(pool.stats().freed, 3);
        assert_eq!(pool.stats().created, 3);
    }

    #[test]
    fn loans_come_back_only_when_reclaimed() {
        let pool = Pool::new(PoolLimits::default());
        let mut segment = pool.take(10).unwrap();
        segment.copy_from_slice(b"0123456789");
        let loan = segment.lend();
        assert_eq!(loan.as_slice(), b"0123456789");
        drop(loan.reclaim());
        assert_eq!(pool.idle_segments(), 1);
        let loan = pool.take(10).unwrap().lend();
        drop(loan);
        assert_eq!(pool.idle_segments(), 0, "an unreclaimed loan is not reused");
    }

    #[test]
    fn writing_grows_into_larger_segments() {
        use std::io::Write;
        let pool = Pool::new(PoolLimits::default());
        let mut segment = pool.take(100).unwrap();
        segment.clear();
        segment.write_all(b"head").unwrap();
        let big = vec![9u8; 3 * MIN_CLASS];
        segment.write_all(&big).unwrap();
        assert_eq!(segment.len(), 4 + big.len());
        assert!(segment.capacity() >= segment.len());
        assert_eq!(&segment[..4], b"head");
        assert!(segment[4..].iter().all(|&b| b == 9));
        assert_eq!(
            pool.idle_segments(),
            1,
            "the outgrown segment went back to the pool"
        );
        drop(segment);
        assert_eq!(pool.idle_segments(), 2);
    }

    #[test]
    fn set_len_is_bounded_by_the_capacity() {
        let mut segment = Pool::new(PoolLimits::default()).take(10).unwrap();
        segment.set_len(MIN_CLASS).unwrap();
        assert_eq!(segment.len(), MIN_CLASS);
        assert!(matches!(
            segment.set_len(MIN_CLASS + 1),
            Err(ShmError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn other_mappings_of_a_pooled_segment_are_read_only() {
        let segment = Pool::new(PoolLimits::default()).take(10).unwrap();
        let seals = Segment::from_fd(segment.try_clone_fd().unwrap())
            .unwrap()
            .seals()
            .unwrap();
        assert!(
            seals.contains(Seals::FIXED_SIZE | Seals::FUTURE_WRITE | Seals::SEAL),
            "{seals}"
        );
        let err = crate::SharedMutBuf::from_fd(segment.try_clone_fd().unwrap()).unwrap_err();
        assert!(matches!(err, ShmError::ReadOnly), "{err}");
        let err = Mapping::new(segment.as_fd(), 10, Access::ReadWrite).unwrap_err();
        assert!(matches!(err, ShmError::ReadOnly), "{err}");
    }
}
