//! The comparison of each case with its baseline: on the terminal, as JSON,
//! and as the Markdown of `docs/benchmarks.md` (the chart beside it is
//! drawn from the JSON, see `chart.rs`).

use std::fmt::Write as _;

use serde_json::json;

use crate::cases::{CASES, Case};
use crate::machine::Machine;

/// The two medians of one case, measured in the same run.
#[derive(Debug, Clone)]
pub(crate) struct Measurement {
    /// The case.
    pub(crate) case: &'static Case,
    /// Median nanoseconds per operation of `subject`.
    pub(crate) ns: f64,
    /// Median nanoseconds per operation of `baseline`.
    pub(crate) baseline_ns: f64,
    /// With several passes, each pass's ratio, in pass order (this
    /// measurement is the median pass); empty after one pass.
    pub(crate) pass_ratios: Vec<f64>,
}

impl Measurement {
    /// `ns / baseline_ns`: below 1 the subject is faster than its baseline.
    pub(crate) fn ratio(&self) -> f64 {
        self.ns / self.baseline_ns
    }
}

/// Everything one bench run reports.
#[derive(Debug)]
pub(crate) struct Report {
    /// The measured cases, in [`CASES`] order.
    pub(crate) measurements: Vec<Measurement>,
    /// When, as `YYYY-MM-DD HH:MM UTC`.
    pub(crate) date: String,
    /// Where.
    pub(crate) machine: Machine,
    /// The xtask command that produced the report.
    pub(crate) command: String,
    /// The cargo command it ran.
    pub(crate) cargo_line: String,
}

/// One line of a table: measured or not.
struct Row {
    case: &'static Case,
    /// The cells of [`Report::header`].
    cells: Vec<String>,
}

impl Report {
    fn measurement(&self, case: &Case) -> Option<&Measurement> {
        self.measurements
            .iter()
            .find(|measurement| measurement.case.name == case.name)
    }

    /// Whether the report combines several passes (and lists their ratios).
    fn has_passes(&self) -> bool {
        self.measurements.iter().any(|m| !m.pass_ratios.is_empty())
    }

    /// The columns: name, ns, baseline, baseline ns, ratio, target, and the
    /// ratio of each pass when there were several.
    fn header(&self) -> Vec<&'static str> {
        let mut header = vec!["case", "ns", "baseline", "baseline_ns", "ratio", "target"];
        if self.has_passes() {
            header.push("passes");
        }
        header
    }

    /// Every case of [`CASES`], one cell per column of [`header`](Self::header).
    fn rows(&self) -> Vec<Row> {
        let passes = self.has_passes();
        CASES
            .iter()
            .map(|case| {
                let target = case
                    .target
                    .map_or_else(|| "-".to_owned(), |target| format!("≤ {target:?}"));
                let mut cells = match self.measurement(case) {
                    Some(measurement) => vec![
                        case.name.to_owned(),
                        format_ns(measurement.ns),
                        case.baseline.to_owned(),
                        format_ns(measurement.baseline_ns),
                        format!("{:.3}", measurement.ratio()),
                        target,
                    ],
                    None => vec![
                        case.name.to_owned(),
                        "-".to_owned(),
                        case.baseline.to_owned(),
                        "-".to_owned(),
                        "-".to_owned(),
                        target,
                    ],
                };
                if passes {
                    let ratios: Vec<String> = self
                        .measurement(case)
                        .map(|m| m.pass_ratios.iter().map(|r| format!("{r:.3}")).collect())
                        .unwrap_or_default();
                    cells.push(if ratios.is_empty() {
                        "-".to_owned()
                    } else {
                        ratios.join(" / ")
                    });
                }
                Row { case, cells }
            })
            .collect()
    }

    /// `met`, `missed`, `no target` or `not measured`.
    fn status(&self, case: &Case) -> &'static str {
        match self.measurement(case) {
            None => "not measured",
            Some(measurement) => match case.meets(measurement.ratio()) {
                Some(true) => "met",
                Some(false) => "missed",
                None => "no target",
            },
        }
    }

    /// An aligned table for the terminal.
    pub(crate) fn terminal(&self) -> String {
        let header = self.header();
        let rows = self.rows();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(&row.cells) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &[&str], status: &str| {
            let start = out.len();
            for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
                let pad = width - cell.chars().count();
                // Numbers right-aligned, text left-aligned.
                if matches!(index, 1 | 3 | 4) {
                    let _ = write!(out, "{}{cell}  ", " ".repeat(pad));
                } else {
                    let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
                }
            }
            out.push_str(status);
            out.truncate(start + out[start..].trim_end().len());
            out.push('\n');
        };
        line(&header, "");
        for row in &rows {
            let cells: Vec<&str> = row.cells.iter().map(String::as_str).collect();
            line(&cells, self.status(row.case));
        }
        out
    }

    /// `{"cases":[{"name", "ns", "baseline", "baseline_ns", "ratio", "target", "met"}]}`
    /// for the measured cases; `not_measured` lists the others.
    pub(crate) fn json(&self) -> serde_json::Value {
        let cases: Vec<serde_json::Value> = self
            .measurements
            .iter()
            .map(|measurement| {
                json!({
                    "name": measurement.case.name,
                    "ns": measurement.ns,
                    "baseline": measurement.case.baseline,
                    "baseline_ns": measurement.baseline_ns,
                    "ratio": measurement.ratio(),
                    "target": measurement.case.target,
                    "met": measurement.case.meets(measurement.ratio()),
                    "pass_ratios": measurement.pass_ratios,
                })
            })
            .collect();
        let not_measured: Vec<&str> = CASES
            .iter()
            .filter(|case| self.measurement(case).is_none())
            .map(|case| case.name)
            .collect();
        json!({
            "date": self.date,
            "machine": self.machine.summary(),
            "command": self.command,
            "cases": cases,
            "not_measured": not_measured,
        })
    }

    /// The whole `docs/benchmarks.md`.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Benchmarks\n");
        let _ = writeln!(
            out,
            "Written by `cargo xtask bench`; do not edit by hand, rerun it instead.\n"
        );
        let _ = writeln!(out, "- Date: {}", self.date);
        let _ = writeln!(out, "- Machine: {}", self.machine.summary());
        let _ = writeln!(out, "- Toolchain: {}", self.machine.rustc);
        let _ = writeln!(
            out,
            "- Command: `{}` (runs `{}`)\n",
            self.command, self.cargo_line
        );
        let _ = writeln!(
            out,
            "Each case is a criterion group holding two functions measured in the same run: \
             `subject` (processional) and `baseline` (the same work done the plainest way). \
             ns is the median nanoseconds per operation; ratio = ns / baseline ns; the target \
             is the largest acceptable ratio. See `benches/README.md`.\n"
        );
        if self.has_passes() {
            let _ = writeln!(
                out,
                "The benches ran several times (passes). Each row is the pass whose ratio is \
                 the median for that case (the upper middle of an even count); `passes` lists \
                 the ratio of every pass, in order, each from two numbers of that pass.\n"
            );
        }
        let _ = writeln!(
            out,
            "![Each case's ratio against its target](benchmarks.svg)\n"
        );
        let passes = self.has_passes();
        let (extra_header, extra_rule) = if passes {
            (" passes |", "---:|")
        } else {
            ("", "")
        };
        let _ = writeln!(
            out,
            "| case | ns | baseline | baseline ns | ratio | target | status |{extra_header}"
        );
        let _ = writeln!(out, "|---|---:|---|---:|---:|---:|---|{extra_rule}");
        for row in self.rows() {
            let [name, ns, baseline, baseline_ns, ratio, target] = &row.cells[..6] else {
                unreachable!("every row has the six cells of the header");
            };
            let extra = row
                .cells
                .get(6)
                .map_or_else(String::new, |p| format!(" {p} |"));
            let _ = writeln!(
                out,
                "| `{name}` | {ns} | {baseline} | {baseline_ns} | {ratio} | {target} | {} |{extra}",
                self.status(row.case)
            );
        }
        out
    }
}

/// Nanoseconds with a precision that suits their size: `85.25`, `1523.4`,
/// `15234`.
fn format_ns(ns: f64) -> String {
    if ns < 100.0 {
        format!("{ns:.2}")
    } else if ns < 10_000.0 {
        format!("{ns:.1}")
    } else {
        format!("{ns:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases;

    fn report() -> Report {
        Report {
            measurements: vec![
                Measurement {
                    case: cases::find("transport.unix_echo_rtt").expect("listed"),
                    ns: 16_500.0,
                    baseline_ns: 15_000.0,
                    pass_ratios: Vec::new(),
                },
                Measurement {
                    case: cases::find("transport.tcp_echo_rtt").expect("listed"),
                    ns: 30_000.0,
                    baseline_ns: 20_000.0,
                    pass_ratios: Vec::new(),
                },
            ],
            date: "2026-01-02 03:04 UTC".to_owned(),
            machine: Machine {
                cpus: 2,
                cpu_model: "Example CPU".to_owned(),
                os: "linux 6.0".to_owned(),
                rustc: "rustc 1.95.0".to_owned(),
            },
            command: "cargo xtask bench --quick".to_owned(),
            cargo_line: "cargo bench -p processional-benches --benches -- --noplot".to_owned(),
        }
    }

    #[test]
    fn json_lists_measured_cases_with_their_ratio() {
        let json = report().json();
        let cases = json["cases"].as_array().expect("array");
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0]["name"], "transport.unix_echo_rtt");
        assert_eq!(cases[0]["ns"], 16_500.0);
        assert_eq!(cases[0]["baseline"], "raw socketpair ping-pong, 8 bytes");
        assert_eq!(cases[0]["baseline_ns"], 15_000.0);
        assert!((cases[0]["ratio"].as_f64().expect("number") - 1.1).abs() < 1e-12);
        assert_eq!(cases[0]["met"], true);
        assert_eq!(cases[1]["met"], false);
        let not_measured = json["not_measured"].as_array().expect("array");
        assert_eq!(not_measured.len(), CASES.len() - 2);
    }

    #[test]
    fn markdown_has_every_case_and_the_context() {
        let markdown = report().markdown();
        assert!(markdown.contains("2026-01-02 03:04 UTC"));
        assert!(markdown.contains("2 CPUs, Example CPU, linux 6.0"));
        assert!(markdown.contains("`cargo xtask bench --quick`"));
        assert!(markdown.contains(
            "| `transport.unix_echo_rtt` | 16500 | raw socketpair ping-pong, 8 bytes | 15000 | 1.100 | ≤ 1.2 | met |"
        ));
        assert!(markdown.contains("| `transport.tcp_echo_rtt` | 30000 |"));
        assert!(markdown.contains("| 1.500 | ≤ 1.2 | missed |"));
        assert!(markdown.contains("| `thread.spawn_wait` | - |"));
        assert_eq!(markdown.matches("not measured").count(), CASES.len() - 2);
    }

    #[test]
    fn several_passes_add_a_column_of_their_ratios() {
        let mut report = report();
        report.measurements[0].pass_ratios = vec![1.2, 1.1, 0.9];
        let markdown = report.markdown();
        assert!(markdown.contains("| status | passes |"));
        assert!(markdown.contains("| 1.100 | ≤ 1.2 | met | 1.200 / 1.100 / 0.900 |"));
        assert!(markdown.contains("| 1.500 | ≤ 1.2 | missed | - |"));
        assert!(
            report
                .terminal()
                .lines()
                .next()
                .expect("header")
                .ends_with("passes")
        );
        assert_eq!(report.json()["cases"][0]["pass_ratios"][2], 0.9);
        assert!(!super::tests::report().markdown().contains("passes |"));
    }

    #[test]
    fn terminal_aligns_columns() {
        let terminal = report().terminal();
        let lines: Vec<&str> = terminal.lines().collect();
        assert_eq!(lines.len(), CASES.len() + 1, "{terminal}");
        assert!(
            lines[0].starts_with("case ") && lines[0].ends_with("target"),
            "{terminal}"
        );
        // Numbers are right-aligned under their header.
        let ratio_end = lines[0].find("ratio").expect("header") + "ratio".len();
        assert_eq!(
            lines[1].find("1.100").expect("ratio") + "1.100".len(),
            ratio_end
        );
        assert_eq!(
            lines[2].find("1.500").expect("ratio") + "1.500".len(),
            ratio_end
        );
        assert!(
            lines[1].ends_with("met") && lines[2].ends_with("missed"),
            "{terminal}"
        );
        assert!(lines[3].ends_with("not measured"), "{terminal}");
    }

    #[test]
    fn nanoseconds_keep_meaningful_digits() {
        assert_eq!(format_ns(85.254), "85.25");
        assert_eq!(format_ns(1523.44), "1523.4");
        assert_eq!(format_ns(15234.4), "15234");
    }
}
