//! The pure core of a worker: running one input, a batch of inputs, or a
//! one-shot call, wherever the worker lives; and how a failure travels back.
//!
//! Nothing here knows threads, processes or sockets: the same functions run
//! on a slave thread, in a slave process, or in a server's child, and the
//! unit tests below call them directly.

use std::cell::Cell;

use processional_task::{Error, ExitReason};
use serde::{Deserialize, Serialize};

/// Why an input produced no value, in a form that crosses processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Failure {
    /// The target panicked with this message.
    Panicked(String),
    /// The target saw its worker's termination at [`checkpoint`], or the
    /// termination came before the input started.
    Terminated,
    /// The worker had stopped at an earlier failure: the input never ran.
    NotRun,
    /// The process that ran it ended.
    Exited {
        /// Its exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// The worker was lost another way (a broken connection, a failed
    /// spawn on the server), described.
    Lost(String),
}

impl Failure {
    /// The failure that a runtime error of the call means.
    pub(crate) fn of(error: &Error) -> Failure {
        match error {
            Error::Exited(ExitReason::Code(code)) => Failure::Exited {
                code: Some(*code),
                signal: None,
            },
            Error::Exited(ExitReason::Signal(signal)) => Failure::Exited {
                code: None,
                signal: Some(*signal),
            },
            Error::Panicked(_) => Failure::Panicked(error.message().unwrap_or("panic").to_owned()),
            other => Failure::Lost(other.to_string()),
        }
    }
}

/// The outcome of one input.
pub(crate) type ItemOutcome<R> = Result<R, Failure>;

/// What a batch call answers: its inputs' outcomes ([`BatchDone`]), or why
/// the whole batch failed (a server lost the worker's process).
pub(crate) type BatchOut<R> = Result<BatchDone<R>, Failure>;

/// The outcomes of a batch, compact on the wire: the values in order, the
/// few failures by position, and how many inputs ran (those after did not).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BatchDone<R> {
    values: Vec<R>,
    failures: Vec<(usize, Failure)>,
    ran: usize,
}

impl<R> BatchDone<R> {
    /// The values, if all `len` inputs ran and none failed.
    pub(crate) fn complete(self, len: usize) -> Result<Vec<R>, Self> {
        if self.failures.is_empty() && self.ran == len && self.values.len() == len {
            Ok(self.values)
        } else {
            Err(self)
        }
    }

    /// Each input's outcome, in order, for a batch of `len` inputs.
    pub(crate) fn into_outcomes(self, len: usize) -> impl Iterator<Item = ItemOutcome<R>> {
        let mut values = self.values.into_iter();
        let mut failures = self.failures.into_iter().peekable();
        let ran = self.ran;
        (0..len).map(move |index| {
            if index >= ran {
                return Err(Failure::NotRun);
            }
            if failures.peek().is_some_and(|(at, _)| *at == index) {
                return Err(failures.next().expect("peeked").1);
            }
            values.next().ok_or(Failure::NotRun)
        })
    }
}

/// What a one-shot call answers: the outcome and the final state.
pub(crate) type ShotOut<R, S> = Result<(ItemOutcome<R>, Option<S>), Failure>;

/// The state of a persistent worker where it runs: the user's state, and
/// whether it stopped at a failure.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Slot<S> {
    pub(crate) state: Option<S>,
    pub(crate) stopped: bool,
}

impl<S> Slot<S> {
    pub(crate) fn new(state: S) -> Self {
        Slot {
            state: Some(state),
            stopped: false,
        }
    }
}

thread_local! {
    /// Set by [`checkpoint`] just before it unwinds.
    static TERMINATING: Cell<bool> = const { Cell::new(false) };
}

/// The payload [`checkpoint`] unwinds with.
struct Terminated;

/// Inside a worker's target: returns if the worker may go on, and ends the
/// current input with the worker's *terminated* error if
/// [`terminate`](crate::Worker::terminate) asked it to stop.
///
/// It unwinds (without running the panic hook) to the worker's frame, which
/// reports `WorkerError::Terminated`, an error a program tells apart from
/// the target's own failures. A target that returns `Result` can use
/// `processional::checkpoint()?` instead; its `Err(Cancelled)` is then its
/// value.
///
/// ```
/// use processional_worker::{Worker, checkpoint};
/// use processional_process::func;
///
/// fn count_forever(start: u64) -> u64 {
///     let mut n = start;
///     loop {
///         checkpoint();
///         n = n.wrapping_add(1);
///     }
/// }
///
/// # fn main() -> Result<(), processional_worker::WorkerError> {
/// let worker = Worker::thread(func!(count_forever), 0)?;
/// worker.terminate(std::time::Duration::from_secs(30));
/// assert!(worker.error().is_some_and(|e| e.is_terminated()));
/// # Ok(())
/// # }
/// ```
pub fn checkpoint() {
    if processional_task::checkpoint().is_err() {
        TERMINATING.with(|flag| flag.set(true));
        std::panic::resume_unwind(Box::new(Terminated));
    }
}

/// Runs `f` on one input, catching its panic (or its [`checkpoint`]).
pub(crate) fn run_one<S, A, R>(
    f: &impl Fn(&mut S, A) -> R,
    state: &mut S,
    input: A,
) -> ItemOutcome<R> {
    if processional_task::checkpoint().is_err() {
        return Err(Failure::Terminated);
    }
    TERMINATING.with(|flag| flag.set(false));
    let outcome = processional_task::catch_panic(|| f(state, input));
    if TERMINATING.with(|flag| flag.replace(false)) {
        return Err(Failure::Terminated);
    }
    outcome.map_err(|error| Failure::of(&error))
}

/// How many inputs of a batch run between two looks at the call's token.
const CANCEL_CHECK_EVERY: usize = 8;

/// Runs `f` on each input in order. After a failure, a worker that is not
/// `resilient` stops: the inputs after it (and in later batches) do not
/// run. A termination always stops it.
///
/// Panics are caught once per run of successes, not once per input, and
/// the call's token is read once: the loop costs an atomic load per input.
pub(crate) fn run_batch<S, A, R>(
    f: &impl Fn(&mut S, A) -> R,
    slot: &mut Slot<S>,
    resilient: bool,
    inputs: Vec<A>,
) -> BatchDone<R> {
    let mut done = BatchDone {
        values: Vec::with_capacity(inputs.len()),
        failures: Vec::new(),
        ran: 0,
    };
    let token = processional_task::current_token();
    let mut inputs = inputs.into_iter();
    while let (Some(state), false) = (slot.state.as_mut(), slot.stopped) {
        TERMINATING.with(|flag| flag.set(false));
        let values = &mut done.values;
        let rest = &mut inputs;
        let token = token.as_ref();
        let run = processional_task::catch_panic(move || {
            for (count, input) in rest.enumerate() {
                // Every few inputs: an atomic load per input shows in the
                // cost of trivial targets (the target's own `checkpoint`
                // sees a termination at once).
                if count % CANCEL_CHECK_EVERY == 0 && token.is_some_and(|t| t.is_cancelled()) {
                    return Some(Failure::Terminated);
                }
                values.push(f(state, input));
            }
            None
        });
        let failure = match run {
            Ok(None) => break,
            Ok(Some(failure)) => failure,
            Err(_) if TERMINATING.with(|flag| flag.replace(false)) => Failure::Terminated,
            Err(error) => Failure::of(&error),
        };
        let at = done.values.len() + done.failures.len();
        if failure == Failure::Terminated || !resilient {
            slot.stopped = true;
        }
        done.failures.push((at, failure));
        if inputs.len() == 0 {
            break;
        }
    }
    done.ran = done.values.len() + done.failures.len();
    done
}

/// Runs `f` once on `input` with `state`; the outcome and the final state.
pub(crate) fn run_shot<S, A, R>(
    f: &impl Fn(&mut S, A) -> R,
    mut state: S,
    input: A,
) -> ShotOut<R, S> {
    let outcome = run_one(f, &mut state, input);
    Ok((outcome, Some(state)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square_or_fail(_: &mut (), x: u64) -> u64 {
        assert!(x < 5, "too big: {x}");
        x * x
    }

    #[test]
    fn a_batch_stops_at_the_first_failure_unless_resilient() {
        let outcomes = |slot: &mut Slot<()>, resilient, inputs: Vec<u64>| {
            let len = inputs.len();
            run_batch(&square_or_fail, slot, resilient, inputs)
                .into_outcomes(len)
                .collect::<Vec<_>>()
        };
        let mut slot = Slot::new(());
        let out = outcomes(&mut slot, false, vec![3, 4, 5, 1]);
        assert_eq!(out[..2], [Ok(9), Ok(16)]);
        assert!(matches!(&out[2], Err(Failure::Panicked(m)) if m.contains("too big: 5")));
        assert_eq!(out[3], Err(Failure::NotRun));
        assert!(slot.stopped);
        assert_eq!(outcomes(&mut slot, false, vec![1]), [Err(Failure::NotRun)]);

        let mut slot = Slot::new(());
        let out = outcomes(&mut slot, true, vec![5, 2, 7, 6, 1]);
        assert!(matches!(out[0], Err(Failure::Panicked(_))));
        assert_eq!(out[1], Ok(4));
        assert!(matches!(out[2], Err(Failure::Panicked(_))));
        assert!(matches!(out[3], Err(Failure::Panicked(_))));
        assert_eq!(out[4], Ok(1));
        assert!(!slot.stopped);
        let all = run_batch(&square_or_fail, &mut slot, true, vec![1, 2]);
        assert_eq!(all.complete(2).ok(), Some(vec![1, 4]));
    }

    #[test]
    fn state_is_kept_across_inputs() {
        let mut slot = Slot::new(10u64);
        let add = |s: &mut u64, x: u64| {
            *s += x;
            *s
        };
        let done = run_batch(&add, &mut slot, false, vec![1, 2]);
        assert_eq!(done.into_outcomes(2).collect::<Vec<_>>(), [Ok(11), Ok(13)]);
        assert_eq!(slot.state, Some(13));
        assert_eq!(run_shot(&add, 1, 2), Ok((Ok(3), Some(3))));
    }

    #[test]
    fn a_checkpoint_after_cancellation_is_a_termination() {
        let token = processional_task::CancelToken::new();
        let looping = |_: &mut (), _: u64| -> u64 {
            loop {
                checkpoint();
                processional_task::current_token().expect("token").cancel();
            }
        };
        let out = processional_task::with_token(&token, || run_one(&looping, &mut (), 1));
        assert_eq!(out, Err(Failure::Terminated));
        // Not started at all once cancelled.
        let out = processional_task::with_token(&token, || run_one(&square_or_fail, &mut (), 1));
        assert_eq!(out, Err(Failure::Terminated));
    }

    #[test]
    fn runtime_errors_become_failures() {
        assert_eq!(
            Failure::of(&Error::Exited(ExitReason::Signal(9))),
            Failure::Exited {
                code: None,
                signal: Some(9)
            }
        );
        assert!(matches!(Failure::of(&Error::Stopped), Failure::Lost(_)));
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        /// A target that fails on odd inputs.
        fn fail_odd(_: &mut (), x: u64) -> u64 {
            assert!(x.is_multiple_of(2), "odd");
            x
        }

        proptest! {
            /// A batch answers each input as running them one by one would:
            /// a value, its failure, or (after the first failure of a worker
            /// that is not resilient) not run.
            #[test]
            fn a_batch_matches_running_inputs_one_by_one(
                inputs in proptest::collection::vec(0u64..8, 0..40),
                resilient: bool,
            ) {
                let len = inputs.len();
                let mut slot = Slot::new(());
                let got: Vec<_> = run_batch(&fail_odd, &mut slot, resilient, inputs.clone())
                    .into_outcomes(len)
                    .collect();
                let mut stopped = false;
                let expected: Vec<_> = inputs
                    .iter()
                    .map(|&x| {
                        if stopped {
                            Err(Failure::NotRun)
                        } else if x % 2 == 0 {
                            Ok(x)
                        } else {
                            stopped = !resilient;
                            Err(Failure::Panicked("odd".into()))
                        }
                    })
                    .collect();
                prop_assert_eq!(got.len(), expected.len());
                for (got, expected) in got.iter().zip(&expected) {
                    match (got, expected) {
                        (Err(Failure::Panicked(message)), Err(Failure::Panicked(_))) => {
                            prop_assert!(message.contains("odd"));
                        }
                        _ => prop_assert_eq!(got, expected),
                    }
                }
                prop_assert_eq!(slot.stopped, stopped);
            }
        }
    }
}
