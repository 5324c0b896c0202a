//! How a process ended: [`ExitReason`], and [`Termination`] when it was
//! stopped on purpose.

use std::fmt;

/// How a process ended: in [`Error::Exited`](crate::Error::Exited) when a
/// worker dies under its calls, and in a [`Termination`].
///
/// ```
/// use processional_task::ExitReason;
///
/// assert_eq!(ExitReason::Code(3).to_string(), "exit code 3");
/// assert_eq!(ExitReason::Signal(9).to_string(), "signal 9");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It ended, but how is not known (e.g. reaped by someone else, or on
    /// another host).
    Unknown,
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Code(code) => write!(f, "exit code {code}"),
            ExitReason::Signal(signal) => write!(f, "signal {signal}"),
            ExitReason::Unknown => f.write_str("unknown exit status"),
        }
    }
}

/// How stopping a worker on purpose ended it: the answer of `terminate` on
/// a slave process or a slave thread.
///
/// A process is asked to exit, then sent SIGTERM, then SIGKILL. A thread
/// cannot be killed: it is asked to stop (its queued orders are dropped and
/// the running one is cancelled, see `checkpoint`), and if it does not, it
/// is left running, detached, and reported [`Unstoppable`](Self::Unstoppable).
///
/// ```
/// use processional_task::{ExitReason, Termination};
///
/// let stopped = Termination::Terminated(ExitReason::Signal(15));
/// assert_eq!(stopped.exit_reason(), Some(ExitReason::Signal(15)));
/// assert_eq!(Termination::Unstoppable.exit_reason(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// It ended by itself after being asked to (or had already ended). A
    /// thread that stopped reports `Graceful(ExitReason::Code(0))`.
    Graceful(ExitReason),
    /// It did not exit in time and was sent SIGTERM, which ended it.
    Terminated(ExitReason),
    /// It ignored SIGTERM and was killed with SIGKILL.
    Killed(ExitReason),
    /// A thread that ignored its cancellation and still ran at the deadline:
    /// nothing can stop it, so it was left running, detached.
    Unstoppable,
    /// It was not our child, or could not be reaped: its end is not known.
    Unknown,
}

impl Termination {
    /// How the process ended, if known.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        match self {
            Termination::Graceful(r) | Termination::Terminated(r) | Termination::Killed(r) => {
                Some(*r)
            }
            Termination::Unstoppable | Termination::Unknown => None,
        }
    }
}
