//! Entering slave mode: before `main`, or first thing in it.

/// Turns this process into a slave if its master spawned it as one, and
/// never returns then; returns at once otherwise.
///
/// With the default `auto-init` feature this already ran before `main` (a
/// pre-main constructor), so calling it is harmless and unnecessary. Without
/// the feature, call it first thing in `main`, before any other thread starts
/// (it reads and clears an environment variable). Code that runs before it,
/// a `#[ctor]` of yours or of a dependency, runs in every slave too: see
/// [how it works and its limitations](https://docs.rs/processional/latest/processional/#how-it-works-and-limitations).
///
/// ```
/// // First thing in `main`:
/// processional_process::init();
/// // … the program, which may now spawn slaves …
/// ```
pub fn init() {
    crate::slave::run_if_slave();
}

#[cfg(feature = "auto-init")]
#[ctor::ctor]
fn enter_slave_mode_before_main() {
    init();
}
