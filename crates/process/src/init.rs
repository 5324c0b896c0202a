//! Entering slave mode (or server mode, see [`SERVE_VAR`]): before `main`,
//! or first thing in it.

use std::io::Write;

/// The environment variable that turns any program of this build into a
/// server before its `main` runs: `PROCESSIONAL_SERVE=tcp://0.0.0.0:6006 ./app`
/// serves on that address (a persistent [`ServerBuilder`](crate::ServerBuilder)
/// server, its key handled as for [`server()`](crate::server): `PROCESSIONAL_KEY`
/// or `PROCESSIONAL_KEY_FILE` for TCP, a key file beside a unix socket),
/// prints `processional: serving on <address>` (with the bound port for
/// port 0) on standard output, and never returns to `main`. This is what a
/// remote-worker server is (`processional::worker`): its workers' processes
/// are its slaves, which the worker layer stops on SIGTERM before the server
/// dies, and which die with it however it ends.
pub const SERVE_VAR: &str = "PROCESSIONAL_SERVE";

/// Turns this process into a slave if its master spawned it as one, or into
/// a server if [`SERVE_VAR`] is set, and never returns then; returns at once
/// otherwise.
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
    serve_if_asked();
}

/// Serves on the address in [`SERVE_VAR`], if set, until the server stops;
/// then exits.
fn serve_if_asked() {
    let Some(address) = std::env::var_os(SERVE_VAR) else {
        return;
    };
    // SAFETY: `init` runs before `main` (or first thing in it, as its docs
    // require), before any other thread reads the environment; the variable
    // goes so that the server's own children do not serve too.
    unsafe { std::env::remove_var(SERVE_VAR) };
    let address = address.to_string_lossy().into_owned();
    let started =
        crate::ServerBuilder::new(&address).and_then(|builder| builder.persistent(true).start());
    match started {
        Ok(handle) => {
            log::info!("processional: serving on {}", handle.address());
            let mut out = std::io::stdout();
            let _ = writeln!(out, "processional: serving on {}", handle.address());
            let _ = out.flush();
            handle.join();
            std::process::exit(0);
        }
        Err(error) => {
            log::error!("processional: cannot serve on {address}: {error}");
            eprintln!("processional: cannot serve on {address}: {error}");
            std::process::exit(70);
        }
    }
}

#[cfg(feature = "auto-init")]
#[ctor::ctor]
fn enter_slave_mode_before_main() {
    init();
}
