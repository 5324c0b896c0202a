//! Brief busy-waiting before blocking.
//!
//! Handing a value to a thread that is about to look for it is much cheaper
//! when that thread is still running than when it has to be woken by the
//! kernel (a futex wake, and on virtual machines often an inter-processor
//! interrupt: several microseconds, during which the other side may fall
//! asleep too). Waiters therefore spin for a few microseconds, then yield
//! the processor until [`SPIN_WINDOW`] has passed, and only then block.
//! [`Task`](crate::Task) waits this way, and so do the runtimes' workers
//! waiting for their next call.

use std::hint;
use std::thread;
use std::time::{Duration, Instant};

/// How many times a waiter spins before it starts yielding.
const SPIN_ROUNDS: u32 = 32;
/// Spin-loop hints per round: the flag is checked this often.
const PAUSES_PER_ROUND: u32 = 8;

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

    /// Waits a little longer than the previous call: spins, then yields the
    /// processor.
    pub fn snooze(&mut self) {
        if self.step < SPIN_ROUNDS {
            for _ in 0..PAUSES_PER_ROUND {
                hint::spin_loop();
            }
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
