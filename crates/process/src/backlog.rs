//! The bound on the calls a connection has read and not yet started.
//!
//! A serving process reads its peer's calls as they come (it must: credit,
//! cancellations and releases travel behind them) and queues them for the
//! connection's executor, or for a slot among the `thread` calls. Without a
//! bound, a peer that sends calls faster than they run (or never reads its
//! replies) grew that queue, and the process's memory, for ever; a
//! data-only client could do it too. So each connection counts what waits:
//! the calls, their argument bytes and their descriptors ([`Backlog`]). A
//! call read past one of the limits ([`CALL_BACKLOG`],
//! [`CALL_BACKLOG_BYTES`], [`CALL_BACKLOG_FDS`], each overridable by an
//! environment variable of the serving process) is refused at once with a
//! [`RemoteErrorKind::Overloaded`](processional_proto::RemoteErrorKind::Overloaded)
//! error and its descriptors are closed; the connection goes on. A call
//! counts from the moment it is read until it starts (or is dropped): a
//! running or deferred call no longer waits.
//!
//! The counts are atomics (the reader admits, the executor or a `thread`
//! call's thread releases): a few uncontended atomic operations per call,
//! no lock, no allocation.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use processional_proto::Payload;

/// How many calls may wait to start on one connection (queued for its
/// executor, or `thread` calls waiting for a slot), unless
/// [`CALL_BACKLOG_VAR`] says otherwise. Further calls are refused with an
/// [`Overloaded`](processional_proto::RemoteErrorKind::Overloaded) error.
pub const CALL_BACKLOG: usize = 32768;

/// The environment variable (of the serving process) that overrides
/// [`CALL_BACKLOG`] (a number of calls, at least 1).
pub const CALL_BACKLOG_VAR: &str = "PROCESSIONAL_CALL_BACKLOG";

/// How many bytes of arguments the calls waiting to start on one connection
/// may hold in all (64 MiB), unless [`CALL_BACKLOG_BYTES_VAR`] says
/// otherwise. A call alone may exceed it (no bytes wait before it).
pub const CALL_BACKLOG_BYTES: usize = 64 << 20;

/// The environment variable (of the serving process) that overrides
/// [`CALL_BACKLOG_BYTES`] (bytes, at least 1).
pub const CALL_BACKLOG_BYTES_VAR: &str = "PROCESSIONAL_CALL_BACKLOG_BYTES";

/// How many file descriptors the calls waiting to start on one connection
/// may hold in all, unless [`CALL_BACKLOG_FDS_VAR`] says otherwise. A call
/// alone may exceed it (no descriptor waits before it).
pub const CALL_BACKLOG_FDS: usize = 256;

/// The environment variable (of the serving process) that overrides
/// [`CALL_BACKLOG_FDS`] (descriptors, at least 1).
pub const CALL_BACKLOG_FDS_VAR: &str = "PROCESSIONAL_CALL_BACKLOG_FDS";

/// The limits of every connection's backlog in a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) calls: usize,
    pub(crate) bytes: usize,
    pub(crate) fds: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            calls: CALL_BACKLOG,
            bytes: CALL_BACKLOG_BYTES,
            fds: CALL_BACKLOG_FDS,
        }
    }
}

impl Limits {
    /// This process's limits, read from its environment once.
    pub(crate) fn global() -> Limits {
        static LIMITS: OnceLock<Limits> = OnceLock::new();
        *LIMITS.get_or_init(|| Limits::from_vars(|name| std::env::var(name).ok()))
    }

    /// The limits the variables that `var` looks up say; a variable unset
    /// keeps its default, one that is no number of at least 1 too (with a
    /// warning).
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Limits {
        let limit = |name: &str, default: usize| match var(name) {
            None => default,
            Some(value) => match value.trim().parse::<usize>() {
                Ok(limit) if limit >= 1 => limit,
                _ => {
                    log::warn!(
                        "processional: ignoring {name}={value:?} (not a number of at least 1); \
                         the limit stays {default}"
                    );
                    default
                }
            },
        };
        Limits {
            calls: limit(CALL_BACKLOG_VAR, CALL_BACKLOG),
            bytes: limit(CALL_BACKLOG_BYTES_VAR, CALL_BACKLOG_BYTES),
            fds: limit(CALL_BACKLOG_FDS_VAR, CALL_BACKLOG_FDS),
        }
    }
}

/// What one waiting call holds: its argument bytes (inline, or in a
/// segment it keeps alive) and its descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cost {
    bytes: usize,
    fds: usize,
}

impl Cost {
    /// The cost of a call with arguments `args` and `fds` descriptors.
    pub(crate) fn of(args: &Payload, fds: usize) -> Cost {
        Cost {
            bytes: usize::try_from(args.len()).unwrap_or(usize::MAX),
            fds,
        }
    }
}

/// Which limit a refused call would have passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overload {
    Calls,
    Bytes,
    Fds,
}

/// Adds `amount` to `count` unless that takes it past `limit` (then it is
/// left as it was); whether it was added. One call alone may exceed the
/// limit, so that a limit below a call's size refuses it only while others
/// wait.
fn add_within(count: &AtomicUsize, amount: usize, limit: usize) -> bool {
    if amount == 0 {
        return true;
    }
    let before = count.fetch_add(amount, Ordering::Relaxed);
    if before > 0 && before.saturating_add(amount) > limit {
        count.fetch_sub(amount, Ordering::Relaxed);
        return false;
    }
    true
}

/// The calls of one connection that wait to start: how many, and what they
/// hold, within [`Limits`].
#[derive(Debug)]
pub(crate) struct Backlog {
    limits: Limits,
    calls: AtomicUsize,
    bytes: AtomicUsize,
    fds: AtomicUsize,
}

impl Backlog {
    /// An empty backlog within `limits`.
    pub(crate) fn new(limits: Limits) -> Backlog {
        Backlog {
            limits,
            calls: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            fds: AtomicUsize::new(0),
        }
    }

    /// Counts a call that was just read, or says which limit it would pass
    /// (it is not counted then). Each [`Ok`] is to be matched by one
    /// [`release`](Self::release) of the same cost.
    pub(crate) fn admit(&self, cost: Cost) -> Result<(), Overload> {
        // Relaxed: these are counts, they publish nothing.
        let calls = self.calls.fetch_add(1, Ordering::Relaxed);
        if calls >= self.limits.calls {
            self.calls.fetch_sub(1, Ordering::Relaxed);
            return Err(Overload::Calls);
        }
        if !add_within(&self.bytes, cost.bytes, self.limits.bytes) {
            self.calls.fetch_sub(1, Ordering::Relaxed);
            return Err(Overload::Bytes);
        }
        if !add_within(&self.fds, cost.fds, self.limits.fds) {
            self.release_calls_and_bytes(cost);
            return Err(Overload::Fds);
        }
        Ok(())
    }

    /// A call admitted with `cost` has started, or was dropped unrun.
    pub(crate) fn release(&self, cost: Cost) {
        if cost.fds > 0 {
            self.fds.fetch_sub(cost.fds, Ordering::Relaxed);
        }
        self.release_calls_and_bytes(cost);
    }

    fn release_calls_and_bytes(&self, cost: Cost) {
        if cost.bytes > 0 {
            self.bytes.fetch_sub(cost.bytes, Ordering::Relaxed);
        }
        self.calls.fetch_sub(1, Ordering::Relaxed);
    }

    /// The calls waiting, their bytes and their descriptors.
    #[cfg(test)]
    fn waiting(&self) -> (usize, usize, usize) {
        (
            self.calls.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.fds.load(Ordering::Relaxed),
        )
    }

    /// Why a call passing `overload` is refused, for its caller: the limit,
    /// and the variable that moves it.
    pub(crate) fn refusal_message(&self, overload: Overload) -> String {
        let (what, limit, var) = match overload {
            Overload::Calls => ("calls", self.limits.calls, CALL_BACKLOG_VAR),
            Overload::Bytes => (
                "bytes of arguments",
                self.limits.bytes,
                CALL_BACKLOG_BYTES_VAR,
            ),
            Overload::Fds => ("file descriptors", self.limits.fds, CALL_BACKLOG_FDS_VAR),
        };
        format!(
            "refused without running: this connection's calls waiting to start would hold more \
             than {limit} {what}, its limit ({var} in the serving process's environment); \
             make the call again once earlier calls have started, or raise the limit"
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cost(bytes: usize, fds: usize) -> Cost {
        Cost { bytes, fds }
    }

    fn small() -> Backlog {
        Backlog::new(Limits {
            calls: 3,
            bytes: 100,
            fds: 4,
        })
    }

    #[test]
    fn counts_admitted_calls_until_released() {
        let backlog = small();
        assert_eq!(backlog.admit(cost(10, 1)), Ok(()));
        assert_eq!(backlog.admit(cost(20, 0)), Ok(()));
        assert_eq!(backlog.waiting(), (2, 30, 1));
        backlog.release(cost(10, 1));
        assert_eq!(backlog.waiting(), (1, 20, 0));
        backlog.release(cost(20, 0));
        assert_eq!(backlog.waiting(), (0, 0, 0));
    }

    #[test]
    fn refuses_past_the_number_of_calls_and_counts_nothing_refused() {
        let backlog = small();
        for _ in 0..3 {
            assert_eq!(backlog.admit(cost(1, 0)), Ok(()));
        }
        assert_eq!(backlog.admit(cost(1, 0)), Err(Overload::Calls));
        assert_eq!(backlog.waiting(), (3, 3, 0));
        backlog.release(cost(1, 0));
        assert_eq!(backlog.admit(cost(1, 0)), Ok(()), "room again");
    }

    #[test]
    fn refuses_past_the_bytes_but_takes_one_large_call_alone() {
        let backlog = small();
        assert_eq!(backlog.admit(cost(60, 0)), Ok(()));
        assert_eq!(backlog.admit(cost(41, 0)), Err(Overload::Bytes));
        assert_eq!(backlog.waiting(), (1, 60, 0));
        assert_eq!(backlog.admit(cost(40, 0)), Ok(()), "exactly the limit");
        backlog.release(cost(60, 0));
        backlog.release(cost(40, 0));
        assert_eq!(backlog.admit(cost(1000, 0)), Ok(()), "alone, however large");
        assert_eq!(backlog.admit(cost(1, 0)), Err(Overload::Bytes));
        assert_eq!(backlog.admit(cost(0, 0)), Ok(()), "no bytes to hold");
        assert_eq!(backlog.waiting(), (2, 1000, 0));
    }

    #[test]
    fn refuses_past_the_descriptors_and_undoes_the_rest() {
        let backlog = small();
        assert_eq!(backlog.admit(cost(5, 3)), Ok(()));
        assert_eq!(backlog.admit(cost(5, 2)), Err(Overload::Fds));
        assert_eq!(backlog.waiting(), (1, 5, 3), "its calls and bytes undone");
        assert_eq!(backlog.admit(cost(5, 1)), Ok(()));
        backlog.release(cost(5, 3));
        backlog.release(cost(5, 1));
        assert_eq!(backlog.admit(cost(0, 10)), Ok(()), "alone, however many");
        assert_eq!(backlog.waiting(), (1, 0, 10));
    }

    #[test]
    fn the_cost_of_a_call_is_its_payload_and_descriptors() {
        assert_eq!(Cost::of(&Payload::Inline(vec![0; 7]), 2), cost(7, 2));
        assert_eq!(
            Cost::of(
                &Payload::Segment {
                    fd: 0,
                    len: 1 << 20
                },
                1
            ),
            cost(1 << 20, 1)
        );
    }

    #[test]
    fn a_refusal_names_its_limit_and_variable() {
        let backlog = small();
        let calls = backlog.refusal_message(Overload::Calls);
        assert!(
            calls.contains("3 calls") && calls.contains(CALL_BACKLOG_VAR),
            "{calls}"
        );
        let bytes = backlog.refusal_message(Overload::Bytes);
        assert!(
            bytes.contains("100 bytes") && bytes.contains(CALL_BACKLOG_BYTES_VAR),
            "{bytes}"
        );
        let fds = backlog.refusal_message(Overload::Fds);
        assert!(
            fds.contains("4 file") && fds.contains(CALL_BACKLOG_FDS_VAR),
            "{fds}"
        );
    }

    fn limits_from(vars: &[(&str, &str)]) -> Limits {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Limits::from_vars(|name| vars.get(name).cloned())
    }

    #[test]
    fn limits_come_from_the_environment_or_stay_the_defaults() {
        assert_eq!(limits_from(&[]), Limits::default());
        assert_eq!(
            limits_from(&[
                (CALL_BACKLOG_VAR, "8"),
                (CALL_BACKLOG_BYTES_VAR, " 4096 "),
                (CALL_BACKLOG_FDS_VAR, "2"),
            ]),
            Limits {
                calls: 8,
                bytes: 4096,
                fds: 2
            }
        );
        // Invalid values are ignored, each on its own.
        assert_eq!(
            limits_from(&[
                (CALL_BACKLOG_VAR, "0"),
                (CALL_BACKLOG_BYTES_VAR, "lots"),
                (CALL_BACKLOG_FDS_VAR, "-1"),
            ]),
            Limits::default()
        );
        assert_eq!(
            limits_from(&[(CALL_BACKLOG_VAR, ""), (CALL_BACKLOG_FDS_VAR, "9")]),
            Limits {
                fds: 9,
                ..Limits::default()
            }
        );
    }
}
