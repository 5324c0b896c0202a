//! `docs/benchmarks.svg`: each measured case's ratio as a horizontal bar on
//! a logarithmic axis, with its target as a mark across the bar and the
//! baseline (ratio 1) as a vertical line. Drawn from the report's JSON (the
//! content of `target/processional-bench.json`), so `cargo xtask chart`
//! redraws it without running the benches again.

use anyhow::{Context, Result, anyhow};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One bar: a measured case.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Bar {
    /// The case name, e.g. `transport.unix_echo_rtt`.
    pub(crate) name: String,
    /// `subject / baseline`.
    pub(crate) ratio: f64,
    /// The largest acceptable ratio, if the case has one.
    pub(crate) target: Option<f64>,
}

impl Bar {
    /// Green when the target is met, red when missed, grey without a target.
    fn colour(&self) -> RGBColor {
        match self.target {
            Some(target) if self.ratio <= target => RGBColor(46, 139, 87),
            Some(_) => RGBColor(205, 55, 55),
            None => RGBColor(150, 150, 150),
        }
    }
}

/// The bars and the caption of a report's JSON (see `Report::json`).
pub(crate) fn bars(json: &serde_json::Value) -> Result<(Vec<Bar>, String)> {
    let cases = json["cases"]
        .as_array()
        .context("the bench report has no `cases` list")?;
    let bars = cases
        .iter()
        .map(|case| {
            let name = case["name"].as_str().context("a case without `name`")?;
            let ratio = case["ratio"]
                .as_f64()
                .filter(|ratio| ratio.is_finite() && *ratio > 0.0)
                .with_context(|| format!("{name}: no positive `ratio`"))?;
            Ok(Bar {
                name: name.to_owned(),
                ratio,
                target: case["target"].as_f64(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let caption = format!(
        "{}, {}",
        json["date"].as_str().unwrap_or("undated"),
        json["machine"].as_str().unwrap_or("unknown machine")
    );
    Ok((bars, caption))
}

/// The SVG document of `bars`, `caption` under the title.
pub(crate) fn svg(bars: &[Bar], caption: &str) -> Result<String> {
    if bars.is_empty() {
        return Err(anyhow!("no measured case to draw"));
    }
    let (low, high) = axis_range(bars);
    let rows = bars.len();
    let height = 120 + 30 * u32::try_from(rows).unwrap_or(u32::MAX / 64);
    let mut document = String::new();
    {
        let root = SVGBackend::with_string(&mut document, (960, height)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let title = format!("processional benchmarks: subject / baseline ({caption})");
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(270)
            // An integer range is inclusive as segments: `0..rows - 1` is `rows` rows.
            .build_cartesian_2d((low..high).log_scale(), (0..rows - 1).into_segmented())
            .map_err(drawing)?;
        // Row 0 at the top, in the order of the report.
        let row = |index: usize| rows - 1 - index;
        let name_of = |value: &SegmentValue<usize>| match value {
            SegmentValue::CenterOf(position) | SegmentValue::Exact(position)
                if *position < rows =>
            {
                bars[row(*position)].name.clone()
            }
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows)
            .y_label_formatter(&name_of)
            .x_label_formatter(&|ratio| format_ratio(*ratio))
            .x_desc("ratio (log scale; below 1: faster than the baseline), | = target")
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(drawing)?;

        chart
            .draw_series(bars.iter().enumerate().map(|(index, bar)| {
                let mut rectangle = Rectangle::new(
                    [
                        (low, SegmentValue::Exact(row(index))),
                        (bar.ratio, SegmentValue::Exact(row(index) + 1)),
                    ],
                    bar.colour().filled(),
                );
                rectangle.set_margin(6, 6, 0, 0);
                rectangle
            }))
            .map_err(drawing)?;
        chart
            .draw_series(bars.iter().enumerate().filter_map(|(index, bar)| {
                let target = bar.target?;
                Some(PathElement::new(
                    vec![
                        (target, SegmentValue::Exact(row(index))),
                        (target, SegmentValue::Exact(row(index) + 1)),
                    ],
                    BLACK.stroke_width(3),
                ))
            }))
            .map_err(drawing)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(index, bar)| {
                // Right of the bar and of its target mark.
                let x = bar.target.map_or(bar.ratio, |target| target.max(bar.ratio));
                Text::new(
                    format!(" {:.3}", bar.ratio),
                    (x, SegmentValue::CenterOf(row(index))),
                    ("sans-serif", 12)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Left, VPos::Center)),
                )
            }))
            .map_err(drawing)?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (1.0, SegmentValue::Exact(0)),
                    (1.0, SegmentValue::Exact(rows)),
                ],
                RGBColor(90, 90, 90).stroke_width(1),
            )))
            .map_err(drawing)?;
        root.present().map_err(drawing)?;
    }
    Ok(document)
}

/// Whole powers of ten around every ratio and target, and around 1.
fn axis_range(bars: &[Bar]) -> (f64, f64) {
    let values = bars
        .iter()
        .flat_map(|bar| std::iter::once(bar.ratio).chain(bar.target))
        .chain(std::iter::once(1.0));
    let (min, max) = values.fold((f64::MAX, f64::MIN), |(min, max), value| {
        (min.min(value), max.max(value))
    });
    // Room for the label right of the longest bar.
    (
        10f64.powf(min.log10().floor()),
        10f64.powf((max * 3.0).log10().ceil()),
    )
}

/// `0.001`, `0.5`, `1`, `20`: as few digits as the value needs.
fn format_ratio(ratio: f64) -> String {
    let text = format!("{ratio:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// plotters' drawing errors carry the backend's error; keep its message.
fn drawing<E: std::error::Error + Send + Sync + 'static>(
    error: plotters::drawing::DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow!("drawing the chart: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report() -> serde_json::Value {
        json!({
            "date": "2026-01-02 03:04 UTC",
            "machine": "2 CPUs, Example CPU, linux 6.0",
            "cases": [
                {"name": "transport.unix_echo_rtt", "ratio": 1.1, "target": 1.2},
                {"name": "transport.tcp_echo_rtt", "ratio": 1.5, "target": 1.2},
                {"name": "slave_thread.schedule_throughput", "ratio": 19.86, "target": null},
            ],
        })
    }

    #[test]
    fn bars_come_from_the_report_json() {
        let (bars, caption) = bars(&report()).expect("valid report");
        assert_eq!(
            caption,
            "2026-01-02 03:04 UTC, 2 CPUs, Example CPU, linux 6.0"
        );
        assert_eq!(bars.len(), 3);
        assert_eq!(bars[0].name, "transport.unix_echo_rtt");
        assert_eq!(bars[1].target, Some(1.2));
        assert_eq!(bars[2].target, None);
        assert!(super::bars(&json!({"cases": [{"name": "x", "ratio": 0.0}]})).is_err());
    }

    #[test]
    fn svg_shows_every_case_its_ratio_and_status_colour() {
        let (bars, caption) = bars(&report()).expect("valid report");
        let svg = svg(&bars, &caption).expect("drawn");
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for name in ["transport.unix_echo_rtt", "transport.tcp_echo_rtt"] {
            assert!(svg.contains(name), "{name} missing");
        }
        for ratio in ["1.100", "1.500", "19.860"] {
            assert!(svg.contains(ratio), "{ratio} missing");
        }
        // Met is green, missed red, no target grey.
        assert!(svg.contains("#2E8B57"), "no green bar");
        assert!(svg.contains("#CD3737"), "no red bar");
        assert!(svg.contains("#969696"), "no grey bar");
        assert!(svg.contains("2026-01-02 03:04 UTC"));
    }

    #[test]
    fn the_axis_spans_whole_decades_around_everything() {
        let bar = |ratio, target| Bar {
            name: "case".to_owned(),
            ratio,
            target,
        };
        assert_eq!(axis_range(&[bar(0.002, Some(0.05))]), (0.001, 10.0));
        assert_eq!(axis_range(&[bar(19.86, None)]), (1.0, 100.0));
        assert_eq!(format_ratio(0.001), "0.001");
        assert_eq!(format_ratio(10.0), "10");
        assert_eq!(format_ratio(0.5), "0.5");
    }

    #[test]
    fn nothing_measured_is_an_error() {
        assert!(svg(&[], "caption").is_err());
    }
}
