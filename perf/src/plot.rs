//! The plot of a run, one SVG (plotters, no font or system-library dependency): the latency
//! percentile spectrum (log-log: x is 1/(1-q), so 90%, 99%, 99.9%... are evenly spaced), the
//! throughput over time, and the median, p99 and maximum latency over time.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::load::{Measured, Mode};
use crate::report::Report;

/// Quantiles beyond this (x = 1/(1-q)) are not plotted.
const SPECTRUM_X_MAX: f64 = 1e6;

type Spectrum = Vec<(f64, f64)>;

/// Seconds, then p50, p99 and max latency in milliseconds.
type LatencyPoint = (f64, f64, f64, f64);

/// Takes one latency out of a point.
type Pick = fn(&LatencyPoint) -> f64;

fn spectrum(histogram: &Histogram<u64>) -> Spectrum {
    let mut points: Spectrum = histogram
        .iter_quantiles(5)
        .filter_map(|v| {
            let q = v.quantile_iterated_to();
            (q < 1.0).then(|| {
                let x = (1.0 / (1.0 - q)).min(SPECTRUM_X_MAX);
                (x, v.value_iterated_to() as f64 / 1e6)
            })
        })
        .collect();
    if !histogram.is_empty() {
        points.push((SPECTRUM_X_MAX, histogram.max() as f64 / 1e6));
    }
    points
}

fn percentile_label(x: &f64) -> String {
    let q = (1.0 - 1.0 / x) * 100.0;
    let text = format!("{q:.4}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// Draws the plot of `measured` into `path` (SVG).
pub fn draw(measured: &Measured, report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 1200)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 1));
    let title = format!(
        "{:?} over {:?}: {:.0} records/s, {:.1} MB/s",
        report.command, report.protocol, report.records_per_sec, report.mb_per_sec
    );
    let recorder = &measured.recorder;
    let mut series: Vec<(&str, Spectrum, RGBColor)> = Vec::new();
    if measured.plan.mode != Mode::Consume {
        series.push(("produce ack", spectrum(&recorder.ack.total), BLUE));
    }
    if measured.plan.mode == Mode::E2e {
        series.push(("end to end", spectrum(&recorder.e2e.total), RED));
    }
    let (low, high) = series
        .iter()
        .flat_map(|(_, points, _)| points.iter().map(|p| p.1))
        .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if high > 0.0 {
        let mut chart = ChartBuilder::on(&panels[0])
            .caption(
                format!("{title}: latency by percentile"),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (1f64..SPECTRUM_X_MAX).log_scale(),
                (low.max(1e-3) * 0.8..high * 1.25).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .x_label_formatter(&percentile_label)
            .draw()?;
        for (name, points, color) in &series {
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }

    let t_max = report.timeline.last().map_or(1.0, |p| p.t_sec).max(1.0);
    let mb_max = report
        .timeline
        .iter()
        .map(|p| p.produce_mb_per_sec.max(p.consume_mb_per_sec))
        .fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(&panels[1])
        .caption("throughput over time", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..t_max, 0f64..mb_max * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("MB/s")
        .draw()?;
    if measured.plan.mode != Mode::Consume {
        let points = report
            .timeline
            .iter()
            .map(|p| (p.t_sec, p.produce_mb_per_sec));
        chart
            .draw_series(LineSeries::new(points, &BLUE))?
            .label("produce (acknowledged)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    }
    if measured.plan.mode != Mode::Produce {
        let points = report
            .timeline
            .iter()
            .map(|p| (p.t_sec, p.consume_mb_per_sec));
        chart
            .draw_series(LineSeries::new(points, &RED))?
            .label("consume")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let latency: Vec<LatencyPoint> = report
        .timeline
        .iter()
        .filter_map(|p| Some((p.t_sec, p.p50_us? / 1e3, p.p99_us? / 1e3, p.max_us? / 1e3)))
        .collect();
    if !latency.is_empty() {
        let low = latency
            .iter()
            .map(|p| p.1)
            .fold(f64::MAX, f64::min)
            .max(1e-3);
        let high = latency.iter().map(|p| p.3).fold(0.0f64, f64::max);
        let mut chart = ChartBuilder::on(&panels[2])
            .caption(
                format!(
                    "{} latency over time",
                    report.latency_kind.replace('_', " ")
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..t_max, (low * 0.8..high * 1.25).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("latency (ms)")
            .draw()?;
        let lines: [(&str, Pick, RGBColor); 3] = [
            ("p50", |p| p.1, GREEN),
            ("p99", |p| p.2, BLUE),
            ("max", |p| p.3, RED),
        ];
        for (name, pick, color) in lines {
            let points: Vec<(f64, f64)> = latency.iter().map(|p| (p.0, pick(p))).collect();
            chart
                .draw_series(LineSeries::new(points, &color))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
