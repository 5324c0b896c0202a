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
pub(crate) fn run(workspace: &Workspace) -> Result<ExitCode> {
    let started = Instant::now();
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
    fn durations_read_as_minutes_and_seconds() {
        assert_eq!(format_duration(Duration::from_millis(12_040)), "12.0s");
        assert_eq!(format_duration(Duration::from_millis(65_300)), "1m05.3s");
        assert_eq!(format_duration(Duration::from_millis(50)), "0.0s");
    }
}
