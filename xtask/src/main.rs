//! Developer tasks of the processional workspace, run as `cargo xtask <task>`
//! (an alias in `.cargo/config.toml`) from anywhere inside the repository.
//!
//! - `cargo xtask ci` runs every check CI runs, in order, printing each
//!   command and stopping at the first failure with its exit code: that the
//!   `rust-version` every package declares is the running `rustc` (so the
//!   declared version is the one CI proves), `cargo fmt --all --check`, `cargo clippy --workspace --all-targets -- -D
//!   warnings`, `cargo test --workspace` (doctests and the tidy test included),
//!   `RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps` and
//!   `cargo bench --workspace --benches --no-run`. It ends with the time of
//!   each step.
//! - `cargo xtask bench [--quick] [--passes N] [-- <criterion args>]` runs
//!   the criterion benches of `processional-benches`, prints each case beside
//!   its baseline, writes `<target dir>/processional-bench.json`,
//!   `docs/benchmarks.md` and `docs/benchmarks.svg` (a bar chart of each
//!   ratio against its target). `--quick` shortens every measurement so the
//!   run takes a few minutes; `--passes N` runs the benches N times and
//!   reports, for each case, the pass whose ratio is the median, beside the
//!   ratio of every pass (each ratio still compares two numbers of one pass).
//! - `cargo xtask chart` redraws `docs/benchmarks.svg` from the last run's
//!   JSON, without running the benches.
//!
//! # The bench convention
//!
//! Each case is a criterion group named exactly after the case (for example
//! `transport.unix_echo_rtt`) holding two functions: `subject`, what
//! processional does, and `baseline`, the same work done the plainest way
//! (raw sockets, `std::thread`, crossbeam channels). Both are measured in the
//! same run, so their ratio holds on any machine. One criterion iteration is
//! one operation; throughput cases use `iter_custom` so that one iteration is
//! one item. The xtask reads the median of
//! `target/criterion/<group>/<function>/new/estimates.json` (nanoseconds per
//! iteration), keeps only results written by the current run, and reports
//! `ratio = subject / baseline` against the case's target in [`cases::CASES`].
//! A case without results is reported as "not measured", so benches land
//! issue by issue.

mod bench;
mod cases;
mod chart;
mod ci;
mod machine;
mod report;
mod workspace;

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::workspace::Workspace;

const HELP: &str = "\
Developer tasks of the processional workspace.

Usage: cargo xtask <task>

Tasks:
  ci                          Run every check CI runs (rust-version = rustc,
                              fmt, clippy, test, doc, bench build), stopping at
                              the first failure.
  bench [--quick] [--passes N] [-- ARGS]
                              Run the criterion benches, compare each case with
                              its baseline, write target/processional-bench.json
                              docs/benchmarks.md and docs/benchmarks.svg. --quick:
                              short measurements (a few minutes in all). --passes N:
                              run everything N times and report each case's
                              median pass, with every pass's ratio. ARGS go
                              to criterion, e.g. a filter: cargo xtask bench -- transport
  chart                       Redraw docs/benchmarks.svg from the last bench run's
                              target/processional-bench.json.
  help                        Print this help.
";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Vec<String>) -> Result<ExitCode> {
    let Some((task, rest)) = args.split_first() else {
        print!("{HELP}");
        return Ok(ExitCode::from(2));
    };
    match task.as_str() {
        "ci" => {
            if let Some(extra) = rest.first() {
                bail!("`ci` takes no arguments, got `{extra}`");
            }
            ci::run(&Workspace::locate()?)
        }
        "bench" => bench::run(&Workspace::locate()?, &bench_options(rest)?),
        "chart" => {
            if let Some(extra) = rest.first() {
                bail!("`chart` takes no arguments, got `{extra}`");
            }
            bench::chart(&Workspace::locate()?)
        }
        "help" | "-h" | "--help" => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown task `{other}`; run `cargo xtask help`"),
    }
}

/// Parses `[--quick] [--passes N] [-- <criterion args>]`.
fn bench_options(args: &[String]) -> Result<bench::Options> {
    let mut options = bench::Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--passes" => {
                let count = args.next().map(|n| n.parse::<usize>());
                match count {
                    Some(Ok(count)) if count >= 1 => options.passes = count,
                    _ => bail!("`--passes` wants a number of passes, 1 or more"),
                }
            }
            "--" => {
                options.criterion_args = args.cloned().collect();
                break;
            }
            other => bail!("unknown `bench` option `{other}`; run `cargo xtask help`"),
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|arg| (*arg).to_owned()).collect()
    }

    #[test]
    fn bench_options_parse() {
        let options =
            bench_options(&strings(&["--quick", "--", "transport", "--quick"])).expect("valid");
        assert!(options.quick);
        assert_eq!(options.criterion_args, ["transport", "--quick"]);
        assert!(!bench_options(&[]).expect("valid").quick);
        assert!(bench_options(&strings(&["--slow"])).is_err());
        let options = bench_options(&strings(&["--passes", "3", "--quick"])).expect("valid");
        assert_eq!((options.passes, options.quick), (3, true));
        assert!(bench_options(&strings(&["--passes", "0"])).is_err());
        assert!(bench_options(&strings(&["--passes"])).is_err());
    }

    #[test]
    fn unknown_tasks_are_errors() {
        assert!(run(strings(&["deploy"])).is_err());
        assert!(run(strings(&["ci", "--fast"])).is_err());
    }
}
