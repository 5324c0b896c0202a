//! `cargo xtask bench`: run the criterion benches, then compare every case
//! with its baseline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use crate::cases::{self, CASES, Case};
use crate::chart;
use crate::machine::{self, Machine};
use crate::report::{Measurement, Report};
use crate::workspace::Workspace;

/// The package holding the benches.
const PACKAGE: &str = "processional-benches";

/// Criterion options of `--quick`: short warm-up and measurement, the fewest
/// samples criterion accepts, and a lighter bootstrap. The whole run stays
/// well under five minutes once the benches are built.
const QUICK: &[&str] = &[
    "--warm-up-time",
    "0.5",
    "--measurement-time",
    "1.5",
    "--sample-size",
    "10",
    "--nresamples",
    "10000",
];

/// What `cargo xtask bench` was asked to do.
#[derive(Debug, Default)]
pub(crate) struct Options {
    /// Short measurements; see [`QUICK`].
    pub(crate) quick: bool,
    /// How many times to run the benches (0 counts as 1); see [`combine`].
    pub(crate) passes: usize,
    /// Passed to criterion after ours, e.g. a filter such as `transport`.
    pub(crate) criterion_args: Vec<String>,
}

/// Runs the benches, prints the comparison, writes the JSON and Markdown.
pub(crate) fn run(workspace: &Workspace, options: &Options) -> Result<ExitCode> {
    let target_dir = workspace.target_dir()?;
    let criterion_dir = target_dir.join("criterion");
    let mut criterion_args: Vec<String> = vec!["--noplot".to_owned()];
    if options.quick {
        criterion_args.extend(QUICK.iter().map(|arg| (*arg).to_owned()));
    }
    criterion_args.extend(options.criterion_args.iter().cloned());
    let mut cargo_args: Vec<String> = ["bench", "-p", PACKAGE, "--benches", "--"]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
    cargo_args.extend(criterion_args);
    let cargo_line = format!("cargo {}", cargo_args.join(" "));
    let passes = options.passes.max(1);
    let mut results = Vec::with_capacity(passes);
    for pass in 1..=passes {
        println!("==> pass {pass} of {passes}: {cargo_line}");
        results.push(run_pass(
            workspace,
            &cargo_args,
            &cargo_line,
            &criterion_dir,
        )?);
    }
    let measurements = combine(results);

    let mut command = String::from("cargo xtask bench");
    if options.quick {
        command.push_str(" --quick");
    }
    if passes > 1 {
        command.push_str(&format!(" --passes {passes}"));
    }
    if !options.criterion_args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&options.criterion_args.join(" "));
    }
    let report = Report {
        measurements,
        date: machine::utc_now(),
        machine: Machine::describe(),
        command,
        cargo_line,
    };
    println!();
    print!("{}", report.terminal());

    let json_path = target_dir.join("processional-bench.json");
    let json = serde_json::to_string_pretty(&report.json())? + "\n";
    write(&json_path, &json)?;
    let markdown_path = workspace.root().join("docs").join("benchmarks.md");
    write(&markdown_path, &report.markdown())?;
    println!();
    println!("wrote {}", json_path.display());
    println!("wrote {}", markdown_path.display());
    if report.measurements.is_empty() {
        println!("no case measured: docs/benchmarks.svg left as it was");
    } else {
        write_chart(workspace, &report.json())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the benches once; the cases this pass measured.
fn run_pass(
    workspace: &Workspace,
    cargo_args: &[String],
    cargo_line: &str,
    criterion_dir: &Path,
) -> Result<Vec<Measurement>> {
    // Results older than this belong to an earlier pass and are ignored, so
    // that every ratio compares two numbers of this pass.
    let started = SystemTime::now();
    let status = workspace
        .cargo(cargo_args)
        .env("CRITERION_HOME", criterion_dir)
        .status()
        .context("could not start `cargo bench`")?;
    if !status.success() {
        bail!("`{cargo_line}` failed ({status})");
    }
    let mut measurements = Vec::new();
    for case in CASES {
        if let Some(measurement) = measure(criterion_dir, case, started)? {
            measurements.push(measurement);
        }
    }
    for group in unlisted_groups(criterion_dir, started)? {
        eprintln!(
            "warning: criterion group `{group}` has fresh results but is not in CASES \
             (xtask/src/cases.rs); add it there to report it"
        );
    }
    Ok(measurements)
}

/// One measurement per case out of several passes: the pass whose ratio is
/// the median (the upper one of an even count, so two passes report the
/// worse), carrying every pass's ratio in pass order.
fn combine(passes: Vec<Vec<Measurement>>) -> Vec<Measurement> {
    let mut combined = Vec::new();
    for case in CASES {
        let mut found: Vec<Measurement> = passes
            .iter()
            .filter_map(|pass| pass.iter().find(|m| m.case.name == case.name).cloned())
            .collect();
        if found.is_empty() {
            continue;
        }
        let ratios: Vec<f64> = found.iter().map(Measurement::ratio).collect();
        found.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
        let mut median = found.swap_remove(found.len() / 2);
        median.pass_ratios = if ratios.len() > 1 { ratios } else { Vec::new() };
        combined.push(median);
    }
    combined
}

/// `cargo xtask chart`: redraws `docs/benchmarks.svg` from the last run's
/// `target/processional-bench.json`, without running the benches.
pub(crate) fn chart(workspace: &Workspace) -> Result<ExitCode> {
    let json_path = workspace.target_dir()?.join("processional-bench.json");
    let text = std::fs::read_to_string(&json_path).with_context(|| {
        format!(
            "reading {} (run `cargo xtask bench` first)",
            json_path.display()
        )
    })?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("in {}", json_path.display()))?;
    write_chart(workspace, &json)?;
    Ok(ExitCode::SUCCESS)
}

/// Draws the report's JSON as `docs/benchmarks.svg`.
fn write_chart(workspace: &Workspace, json: &serde_json::Value) -> Result<()> {
    let (bars, caption) = chart::bars(json)?;
    let svg_path = workspace.root().join("docs").join("benchmarks.svg");
    write(&svg_path, &chart::svg(&bars, &caption)?)?;
    println!("wrote {}", svg_path.display());
    Ok(())
}

/// Both medians of `case`, if this run measured both.
fn measure(
    criterion_dir: &Path,
    case: &'static Case,
    since: SystemTime,
) -> Result<Option<Measurement>> {
    let group = criterion_dir.join(case.name);
    let subject = median_ns(&estimates_path(&group, "subject"), since)?;
    let baseline = median_ns(&estimates_path(&group, "baseline"), since)?;
    Ok(match (subject, baseline) {
        (Some(ns), Some(baseline_ns)) => Some(Measurement {
            case,
            ns,
            baseline_ns,
            pass_ratios: Vec::new(),
        }),
        (Some(_), None) => {
            eprintln!(
                "warning: {} has a subject but no baseline result",
                case.name
            );
            None
        }
        (None, Some(_)) => {
            eprintln!(
                "warning: {} has a baseline but no subject result",
                case.name
            );
            None
        }
        (None, None) => None,
    })
}

/// Where criterion keeps the latest estimates of `function` in `group`.
fn estimates_path(group: &Path, function: &str) -> PathBuf {
    group.join(function).join("new").join("estimates.json")
}

/// The median of an `estimates.json` written after `since`, in nanoseconds per
/// iteration; `None` if there is none.
fn median_ns(path: &Path, since: SystemTime) -> Result<Option<f64>> {
    let modified = match std::fs::metadata(path) {
        Ok(metadata) => metadata.modified()?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    if modified < since {
        return Ok(None);
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_median(&text)
        .with_context(|| format!("in {}", path.display()))
        .map(Some)
}

/// The `median.point_estimate` of criterion's `estimates.json`.
fn parse_median(text: &str) -> Result<f64> {
    let estimates: serde_json::Value = serde_json::from_str(text).context("invalid JSON")?;
    let median = estimates["median"]["point_estimate"]
        .as_f64()
        .context("no median.point_estimate")?;
    if !(median.is_finite() && median > 0.0) {
        bail!("median.point_estimate is {median}, not a positive duration");
    }
    Ok(median)
}

/// Groups with fresh `subject` results that [`CASES`] does not list.
fn unlisted_groups(criterion_dir: &Path, since: SystemTime) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(criterion_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("listing {}", criterion_dir.display()));
        }
    };
    let mut unlisted = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if cases::find(&name).is_some() {
            continue;
        }
        let fresh = std::fs::metadata(estimates_path(&entry.path(), "subject"))
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|modified| modified >= since);
        if fresh {
            unlisted.push(name);
        }
    }
    unlisted.sort();
    Ok(unlisted)
}

/// Writes `contents` to `path`, creating its directory.
fn write(path: &Path, contents: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(name: &str, ns: f64) -> Measurement {
        Measurement {
            case: cases::find(name).expect("listed"),
            ns,
            baseline_ns: 100.0,
            pass_ratios: Vec::new(),
        }
    }

    #[test]
    fn passes_combine_into_the_median_pass_with_every_ratio() {
        let rtt = "transport.unix_echo_rtt";
        let tcp = "transport.tcp_echo_rtt";
        let combined = combine(vec![
            vec![measured(rtt, 130.0), measured(tcp, 90.0)],
            vec![measured(rtt, 110.0)],
            vec![measured(rtt, 120.0), measured(tcp, 150.0)],
        ]);
        assert_eq!(combined.len(), 2);
        assert_eq!(combined[0].case.name, rtt);
        assert_eq!(combined[0].ns, 120.0, "the middle of three");
        assert_eq!(combined[0].pass_ratios, [1.3, 1.1, 1.2], "in pass order");
        assert_eq!(combined[1].ns, 150.0, "the upper of two");
        assert_eq!(combined[1].pass_ratios, [0.9, 1.5]);
        let single = combine(vec![vec![measured(rtt, 130.0)]]);
        assert!(single[0].pass_ratios.is_empty(), "one pass lists no passes");
    }

    #[test]
    fn the_median_comes_from_criterion_estimates() {
        let text = r#"{"mean":{"point_estimate":20.5},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":14.0,"upper_bound":16.0},"point_estimate":15012.25,"standard_error":3.0}}"#;
        assert_eq!(parse_median(text).expect("valid"), 15012.25);
        assert!(parse_median(r#"{"mean":{"point_estimate":1.0}}"#).is_err());
        assert!(parse_median(r#"{"median":{"point_estimate":-1.0}}"#).is_err());
        assert!(parse_median("not json").is_err());
    }

    #[test]
    fn only_fresh_complete_results_count() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let case = cases::find("transport.unix_echo_rtt").expect("listed");
        let before = SystemTime::now() - std::time::Duration::from_secs(60);
        let estimates = |function: &str, median: f64| {
            let path = estimates_path(&dir.join(case.name), function);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            let json = format!(r#"{{"median":{{"point_estimate":{median}}}}}"#);
            std::fs::write(&path, json).expect("write");
        };

        assert!(measure(&dir, case, before).expect("readable").is_none());
        estimates("subject", 18.0);
        assert!(measure(&dir, case, before).expect("readable").is_none());
        estimates("baseline", 15.0);
        let measurement = measure(&dir, case, before)
            .expect("readable")
            .expect("measured");
        assert_eq!((measurement.ns, measurement.baseline_ns), (18.0, 15.0));
        assert!((measurement.ratio() - 1.2).abs() < 1e-12);

        let later = SystemTime::now() + std::time::Duration::from_secs(60);
        assert!(measure(&dir, case, later).expect("readable").is_none());

        let other = estimates_path(&dir.join("other.case"), "subject");
        std::fs::create_dir_all(other.parent().expect("parent")).expect("mkdir");
        std::fs::write(&other, "{}").expect("write");
        assert_eq!(
            unlisted_groups(&dir, before).expect("listable"),
            ["other.case"]
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
