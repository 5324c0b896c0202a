//! Running one call the way this runtime does.

use processional_task::{Completer, Error, catch_panic, with_token};

/// Runs `f` as the call of `completer`: skipped with [`Error::Cancelled`] if
/// already cancelled, otherwise under the call's token with panics caught.
/// `before_complete` runs after the call, right before the outcome is
/// delivered.
pub(crate) fn run_call<T>(
    completer: Completer<T>,
    f: impl FnOnce() -> T,
    before_complete: impl FnOnce(),
) {
    let token = completer.token();
    let outcome = if token.is_cancelled() {
        Err(Error::Cancelled)
    } else {
        with_token(token, || catch_panic(f))
    };
    before_complete();
    completer.complete(outcome);
}
