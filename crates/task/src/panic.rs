//! Catching panics of calls and turning them into [`Error::Panicked`].
//!
//! The first [`catch_panic`] installs a process-wide panic hook (chained to
//! the previous one). For a panic inside `catch_panic`, the hook records the
//! message, the location and (when asked for) a backtrace for the report, and
//! prints nothing: a panicking call is an error value, not console noise. Any
//! other panic goes to the previous hook unchanged.

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe, PanicHookInfo};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, PanicReport, RemoteError, RemoteErrorKind, Result};

/// Message used when the panic payload is not a string.
const OPAQUE_PAYLOAD: &str = "Box<dyn Any>";

static CAPTURE_BACKTRACES: AtomicBool = AtomicBool::new(false);
static INSTALL_HOOK: Once = Once::new();

thread_local! {
    /// How many `catch_panic` scopes are active on this thread.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
    /// What the hook saw of the latest caught panic on this thread.
    static RECORDED: RefCell<Option<PanicReport>> = const { RefCell::new(None) };
}

/// Runs `f`, turning a panic into [`Error::Panicked`] with the panic's
/// message, location and (see [`set_capture_backtraces`]) backtrace.
///
/// The panic is not printed. Panics outside `catch_panic` keep their usual
/// behaviour (the previously installed hook runs). A hook installed later
/// with [`std::panic::set_hook`] replaces processional's: caught panics are
/// then printed by that hook and their reports lack a location.
///
/// ```
/// let error = processional_task::catch_panic(|| panic!("out of cheese")).unwrap_err();
/// assert_eq!(error.message(), Some("out of cheese"));
/// assert_eq!(processional_task::catch_panic(|| 7).unwrap(), 7);
/// ```
pub fn catch_panic<R>(f: impl FnOnce() -> R) -> Result<R> {
    install_hook();
    let outcome = {
        let _scope = CatchScope::enter();
        // `AssertUnwindSafe`: like a thread boundary, the call's state is
        // abandoned after a panic; the caller only receives the report.
        panic::catch_unwind(AssertUnwindSafe(f))
    };
    match outcome {
        Ok(value) => Ok(value),
        Err(payload) => {
            let report = PanicReport::from_payload(&*payload);
            drop_payload(payload);
            Err(Error::Panicked(report))
        }
    }
}

/// Whether the reports of caught panics carry a backtrace even when
/// `RUST_BACKTRACE` does not ask for one. Off by default; process workers turn
/// it on so that remote panics come back with their backtrace.
///
/// ```
/// use processional_task::{Error, catch_panic, set_capture_backtraces};
///
/// set_capture_backtraces(true);
/// let Err(Error::Panicked(report)) = catch_panic(|| -> () { panic!("traced") }) else {
///     unreachable!()
/// };
/// assert!(report.backtrace.is_some());
/// set_capture_backtraces(false);
/// ```
pub fn set_capture_backtraces(capture: bool) {
    CAPTURE_BACKTRACES.store(capture, Ordering::Relaxed);
}

impl PanicReport {
    /// A report with only a message.
    pub fn new(message: impl Into<String>) -> Self {
        PanicReport {
            message: message.into(),
            location: None,
            backtrace: None,
        }
    }

    /// The report of a panic just caught on this thread with
    /// [`std::panic::catch_unwind`] inside a [`catch_panic`] scope: the
    /// message comes from `payload`, the location and backtrace from what
    /// the panic hook recorded (absent if the hook did not see this panic).
    pub fn from_payload(payload: &(dyn Any + Send)) -> Self {
        let message = payload_message(payload)
            .unwrap_or(OPAQUE_PAYLOAD)
            .to_owned();
        let recorded = RECORDED
            .try_with(|slot| slot.borrow_mut().take())
            .ok()
            .flatten();
        match recorded {
            Some(recorded) if recorded.message == message => recorded,
            _ => PanicReport::new(message),
        }
    }

    /// The report as a [`RemoteError`] of kind
    /// [`Panicked`](RemoteErrorKind::Panicked), to send to another process.
    pub fn to_remote_error(&self) -> RemoteError {
        RemoteError {
            kind: RemoteErrorKind::Panicked,
            message: self.message.clone(),
            location: self.location.clone(),
            backtrace: self.backtrace.clone(),
        }
    }
}

/// Marks the current thread as catching panics while alive.
struct CatchScope;

impl CatchScope {
    fn enter() -> Self {
        CATCHING.with(|depth| depth.set(depth.get() + 1));
        CatchScope
    }
}

impl Drop for CatchScope {
    fn drop(&mut self) {
        let _ = CATCHING.try_with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

fn install_hook() {
    if INSTALL_HOOK.is_completed() || std::thread::panicking() {
        // Installing a hook while panicking would itself panic; such late
        // reports simply lack a location.
        return;
    }
    INSTALL_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let catching = CATCHING.try_with(|depth| depth.get() > 0).unwrap_or(false);
            if catching {
                record(info);
            } else {
                previous(info);
            }
        }));
    });
}

fn record(info: &PanicHookInfo<'_>) {
    let message = payload_message(info.payload()).unwrap_or(OPAQUE_PAYLOAD);
    let backtrace = if CAPTURE_BACKTRACES.load(Ordering::Relaxed) {
        Some(Backtrace::force_capture().to_string())
    } else {
        let backtrace = Backtrace::capture();
        (backtrace.status() == BacktraceStatus::Captured).then(|| backtrace.to_string())
    };
    let report = PanicReport {
        message: message.to_owned(),
        location: info.location().map(|location| location.to_string()),
        backtrace,
    };
    let _ = RECORDED.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = Some(report);
        }
    });
}

fn payload_message(payload: &(dyn Any + Send)) -> Option<&str> {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        Some(message)
    } else {
        payload.downcast_ref::<String>().map(String::as_str)
    }
}

/// Drops a panic payload; a payload whose destructor panics too is leaked
/// rather than allowed to unwind into the caller.
fn drop_payload(payload: Box<dyn Any + Send>) {
    let _scope = CatchScope::enter();
    if let Err(second) = panic::catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(second);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_message_and_location() {
        let line = line!() + 1;
        let error = catch_panic(|| panic!("broken {}", 42)).unwrap_err();
        let Error::Panicked(report) = error else {
            panic!("expected a panic report");
        };
        assert_eq!(report.message, "broken 42");
        let location = report.location.expect("the hook records the location");
        assert!(
            location.contains(&format!("panic.rs:{line}:")),
            "location {location}"
        );
    }

    #[test]
    fn non_string_payloads_get_a_placeholder_message() {
        let error = catch_panic(|| std::panic::panic_any(17u8)).unwrap_err();
        assert_eq!(error.message(), Some(OPAQUE_PAYLOAD));
    }

    #[test]
    fn nested_scopes_report_their_own_panics() {
        let outer = catch_panic(|| {
            let inner = catch_panic(|| panic!("inner")).unwrap_err();
            assert_eq!(inner.message(), Some("inner"));
            panic!("outer after {inner}");
        })
        .unwrap_err();
        assert!(
            outer
                .message()
                .unwrap()
                .starts_with("outer after task panicked: inner")
        );
    }

    #[test]
    fn forced_backtraces_are_captured() {
        set_capture_backtraces(true);
        let error = catch_panic(|| panic!("with trace")).unwrap_err();
        set_capture_backtraces(false);
        let Error::Panicked(report) = error else {
            panic!("expected a panic report");
        };
        assert!(report.backtrace.is_some());
        let remote = report.to_remote_error();
        assert_eq!(remote.kind, RemoteErrorKind::Panicked);
        assert_eq!(remote.message, "with trace");
    }

    #[test]
    fn panicking_payload_destructors_are_contained() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("payload destructor");
            }
        }
        let error = catch_panic(|| std::panic::panic_any(Bomb)).unwrap_err();
        assert_eq!(error.message(), Some(OPAQUE_PAYLOAD));
    }
}
