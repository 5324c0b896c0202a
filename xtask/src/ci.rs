//! `cargo xtask ci`: every check, in order, stopping at the first failure.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::workspace::Workspace;

/// One check: a cargo command and the environment it needs.
#[derive(Debug)]
struct Step {
    /// Extra environment, shown before the command.
    env: &'static [(&'static str, &'static str)],
    /// The cargo arguments.
    args: &'static [&'static str],
}

impl Step {
    /// The step as a shell line, e.g. `RUSTDOCFLAGS="-D warnings" cargo doc`.
    fn display(&self) -> String {
        let mut line = String::new();
        for (name, value) in self.env {
            if value.contains(' ') {
                let _ = write!(line, "{name}=\"{value}\" ");
            } else {
                let _ = write!(line, "{name}={value} ");
            }
        }
        line.push_str("cargo");
        for arg in self.args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }
}

/// The checks `ci` runs, cheapest first so that the usual mistakes fail fast.
const STEPS: &[Step] = &[
    Step {
        env: &[],
        args: &["fmt", "--all", "--check"],
    },
    Step {
        env: &[],
        args: &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    },
    Step {
        env: &[],
        args: &["test", "--workspace"],
    },
    Step {
        env: &[("RUSTDOCFLAGS", "-D warnings")],
        args: &["doc", "--workspace", "--no-deps"],
    },
    Step {
        env: &[],
        // Only the bench targets: the libraries' test harnesses in release
        // mode would double the build for nothing `cargo test` misses.
        args: &["bench", "--workspace", "--benches", "--no-run"],
    },
];

/// Runs every step; the exit code is that of the first failing step.
///
/// First of all, the declared `rust-version` must be the toolchain that runs
/// the checks: what CI builds and tests with is the only version it proves.
pub(crate) fn run(workspace: &Workspace) -> Result<ExitCode> {
    let started = Instant::now();
    println!("==> rust-version of every package = rustc --version");
    let toolchain = workspace.rustc_version()?;
    let mismatches = rust_version_mismatches(&workspace.rust_versions()?, &toolchain);
    if !mismatches.is_empty() {
        for mismatch in &mismatches {
            eprintln!("ci: {mismatch}");
        }
        eprintln!(
            "ci: FAILED: the declared rust-version must be the toolchain CI runs ({toolchain}); \
             run ci with that toolchain or change `rust-version` in the root Cargo.toml"
        );
        return Ok(ExitCode::FAILURE);
    }
    let mut timings: Vec<(String, Duration, bool)> = Vec::new();
    let mut failure = None;
    for step in STEPS {
        let line = step.display();
        println!("==> {line}");
        let step_started = Instant::now();
        let status = workspace
            .cargo(step.args)
            .envs(step.env.iter().copied())
            .status()
            .with_context(|| format!("could not start `{line}`"))?;
        let ok = status.success();
        timings.push((line.clone(), step_started.elapsed(), ok));
        if !ok {
            // A signal leaves no code; report a plain failure then.
            let code = status.code().map_or(1, |code| code.clamp(1, 255));
            failure = Some((line, u8::try_from(code).unwrap_or(1)));
            break;
        }
    }
    println!();
    println!("==> timings");
    for (line, elapsed, ok) in &timings {
        let mark = if *ok { "ok    " } else { "FAILED" };
        println!("{mark} {:>9}  {line}", format_duration(*elapsed));
    }
    let total = format_duration(started.elapsed());
    match failure {
        None => {
            println!("ci: all {} steps passed in {total}", STEPS.len());
            Ok(ExitCode::SUCCESS)
        }
        Some((line, code)) => {
            eprintln!("ci: FAILED at `{line}` after {total} (exit code {code})");
            Ok(ExitCode::from(code))
        }
    }
}

/// The packages whose declared `rust-version` is not the `major.minor` of
/// `rustc_version` (the output of `rustc --version`, e.g. `rustc 1.95.0
/// (59807616e 2026-04-14)`), one line each. Packages that declare none
/// (the xtask, tests, benches) are not published and are skipped.
fn rust_version_mismatches(
    declared: &[(String, Option<String>)],
    rustc_version: &str,
) -> Vec<String> {
    let Some(installed) = rustc_major_minor(rustc_version) else {
        return vec![format!("cannot read a version in `{rustc_version}`")];
    };
    declared
        .iter()
        .filter_map(|(package, version)| {
            let version = version.as_deref()?;
            let declared_major_minor = version.split('.').take(2).collect::<Vec<_>>().join(".");
            (declared_major_minor != installed).then(|| {
                format!("{package} declares rust-version {version}, CI runs rustc {installed}")
            })
        })
        .collect()
}

/// `1.95` from `rustc 1.95.0 (59807616e 2026-04-14)` (or `1.96.0-nightly`).
fn rustc_major_minor(rustc_version: &str) -> Option<String> {
    let version = rustc_version.split_whitespace().nth(1)?;
    let mut parts = version.split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some(format!("{major}.{minor}"))
}

/// `1m05.3s`, `12.0s`.
fn format_duration(elapsed: Duration) -> String {
    let tenths = elapsed.as_millis() / 100;
    let (minutes, tenths) = (tenths / 600, tenths % 600);
    if minutes > 0 {
        format!("{minutes}m{:02}.{}s", tenths / 10, tenths % 10)
    } else {
        format!("{}.{}s", tenths / 10, tenths % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_display_as_shell_lines() {
        let lines: Vec<String> = STEPS.iter().map(Step::display).collect();
        assert_eq!(lines[0], "cargo fmt --all --check");
        assert_eq!(
            lines[3],
            "RUSTDOCFLAGS=\"-D warnings\" cargo doc --workspace --no-deps"
        );
        assert_eq!(lines[4], "cargo bench --workspace --benches --no-run");
    }

    #[test]
    fn rust_version_must_be_the_running_toolchain() {
        let rustc = "rustc 1.95.0 (59807616e 2026-04-14)";
        let declared =
            |version: Option<&str>| vec![("processional".to_owned(), version.map(str::to_owned))];
        assert!(rust_version_mismatches(&declared(Some("1.95")), rustc).is_empty());
        assert!(rust_version_mismatches(&declared(Some("1.95.0")), rustc).is_empty());
        assert!(rust_version_mismatches(&declared(None), rustc).is_empty());
        assert_eq!(
            rust_version_mismatches(&declared(Some("1.85")), rustc),
            ["processional declares rust-version 1.85, CI runs rustc 1.95"]
        );
        assert_eq!(
            rust_version_mismatches(
                &declared(Some("1.95")),
                "rustc 1.96.0-nightly (abc 2026-05-01)"
            ),
            ["processional declares rust-version 1.95, CI runs rustc 1.96"]
        );
        assert_eq!(rust_version_mismatches(&[], "garbage").len(), 1);
    }

    #[test]
    fn durations_read_as_minutes_and_seconds() {
        assert_eq!(format_duration(Duration::from_millis(12_040)), "12.0s");
        assert_eq!(format_duration(Duration::from_millis(65_300)), "1m05.3s");
        assert_eq!(format_duration(Duration::from_millis(50)), "0.0s");
    }
}
