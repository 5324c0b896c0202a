//! Brief busy-waiting before blocking.
//!
//! Handing a value to a thread that is about to look for it is much cheaper
//! when that thread is still running than when it has to be woken by the
//! kernel (a futex wake, and on virtual machines often an inter-processor
//! interrupt: several microseconds, during which the other side may fall
//! asleep too). Waiters therefore spin for a microsecond or two, then yield
//! the processor until [`SPIN_WINDOW`] has passed, and only then block.
//! [`Task`](crate::Task) waits this way, and so do the runtimes' workers
//! waiting for their next call.

use std::hint;
use std::thread;
use std::time::{Duration, Instant};

/// How many spin-loop hints a waiter spends before it starts yielding: one
/// to a few microseconds (a `pause` takes some 10 to 50 ns on current x86
/// cores), several times a hand-off between two running cores (a few hundred
/// nanoseconds for a round trip).
///
/// Not more: when the other side shares this core (a busy machine), every
/// hint spent delays it, and the yields that follow let it run. The waiter
/// checks its flag after every hint: a value handed over while it spins is
/// seen within one hint, not a batch of them (which would add half a batch
/// to each side of a round trip).
const SPIN_ROUNDS: u32 = 64;

/// How long a waiter keeps the processor (spinning, then yielding) before it
/// blocks.
pub(crate) const SPIN_WINDOW: Duration = Duration::from_micros(50);

/// The spin-then-yield schedule of one wait.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// let flag = AtomicBool::new(false);
/// let mut backoff = processional_task::Backoff::new();
/// while !flag.load(Ordering::Acquire) {
///     if backoff.is_exhausted() {
///         // Time to block on something (a condvar, a channel, park).
///         break;
///     }
///     backoff.snooze();
/// }
/// ```
#[derive(Debug, Default)]
pub struct Backoff {
    step: u32,
    /// When yielding started.
    yielding_since: Option<Instant>,
}

impl Backoff {
    /// A fresh schedule.
    pub fn new() -> Self {
        Backoff::default()
    }

    /// Waits a little: one spin-loop hint (the caller checks its flag
    /// between calls), then, once a microsecond or two of hints is spent,
    /// yields the processor.
    pub fn snooze(&mut self) {
        if self.step < SPIN_ROUNDS {
            hint::spin_loop();
            self.step += 1;
        } else {
            if self.yielding_since.is_none() {
                self.yielding_since = Some(Instant::now());
            }
            thread::yield_now();
        }
    }

    /// Whether waiting has lasted long enough and the waiter should block.
    pub fn is_exhausted(&self) -> bool {
        self.yielding_since
            .is_some_and(|since| since.elapsed() >= SPIN_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausts_after_the_spin_window() {
        let started = Instant::now();
        let mut backoff = Backoff::new();
        let mut snoozes = 0;
        while !backoff.is_exhausted() {
            backoff.snooze();
            snoozes += 1;
        }
        assert!(snoozes > SPIN_ROUNDS);
        assert!(started.elapsed() >= SPIN_WINDOW);
    }
}
