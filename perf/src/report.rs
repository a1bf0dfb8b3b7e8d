//! The report of a load run: the JSON file (the perf contract: `records_per_sec`,
//! `mb_per_sec`, `latency_us` with `p50 p90 p99 p999 p9999 max`, the configuration, the
//! machine, the reference and the ratio to the run's limit), the summary table, the HDR
//! interval log and the plot.
//!
//! Throughput counts the key and value bytes of records (not protocol or batch framing),
//! over the measurement window: from the end of the warmup to the end of `--duration`, or
//! to the instant the last producer (consumer, for catch-up) finished. MB are 10^6 bytes.
//!
//! The limit of a run is the lower of the disk figure it depends on (O_DIRECT write for
//! produce and end to end, read for catch-up consume) and the transport figure of its
//! protocol (one QUIC stream or one TCP connection over loopback), both from a `reference`
//! run on the same machine.

use std::path::Path;

use serde::Serialize;

use crate::load::{LoadArgs, Measured, Mode, Protocol};
use crate::machine::Machine;
use crate::stats::{LatencySeries, LatencySummary, Totals};

/// One side of a run (producers or consumers).
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    /// Records in the measurement window.
    pub records: u64,
    /// Key and value bytes in the window.
    pub bytes: u64,
    /// Records per second.
    pub records_per_sec: f64,
    /// MB (10^6 bytes) per second.
    pub mb_per_sec: f64,
}

/// The ceiling a run is judged against.
#[derive(Clone, Debug, Serialize)]
pub struct Limit {
    /// Reference key of the disk figure.
    pub disk: &'static str,
    /// Its value.
    pub disk_mb_per_sec: f64,
    /// Reference key of the transport figure.
    pub transport: &'static str,
    /// Its value.
    pub transport_mb_per_sec: f64,
    /// The lower of the two.
    pub limit_mb_per_sec: f64,
    /// The run's `mb_per_sec` over the limit.
    pub ratio: f64,
}

/// One interval of the timeline.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// End of the interval, seconds since the start.
    pub t_sec: f64,
    /// Acknowledged records per second.
    pub produce_records_per_sec: f64,
    /// Acknowledged MB per second.
    pub produce_mb_per_sec: f64,
    /// Consumed records per second.
    pub consume_records_per_sec: f64,
    /// Consumed MB per second.
    pub consume_mb_per_sec: f64,
    /// Median latency of the interval (the run's kind), microseconds.
    pub p50_us: Option<f64>,
    /// 99th percentile latency of the interval, microseconds.
    pub p99_us: Option<f64>,
    /// Largest latency of the interval, microseconds.
    pub max_us: Option<f64>,
    /// Broker resident memory, MiB (with `--broker-pid`).
    pub broker_rss_mib: Option<f64>,
}

/// Broker memory over the run.
#[derive(Clone, Debug, Serialize)]
pub struct BrokerMemory {
    /// The pid sampled.
    pub pid: u32,
    /// Largest resident set seen, MiB.
    pub rss_max_mib: f64,
    /// Resident set at the end, MiB.
    pub rss_last_mib: f64,
}

/// CPU the processes used over the measurement window, in cores (CPU seconds per second):
/// on a shared machine this says how much of the throughput the run paid for itself.
#[derive(Clone, Debug, Serialize)]
pub struct CpuUse {
    /// The harness process.
    pub harness_cores: Option<f64>,
    /// The broker process (with `--broker-pid`).
    pub broker_cores: Option<f64>,
    /// Harness CPU seconds per GB of headline throughput.
    pub harness_sec_per_gb: Option<f64>,
    /// Broker CPU seconds per GB of headline throughput.
    pub broker_sec_per_gb: Option<f64>,
}

/// The JSON report of a load run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always `sluice-perf`.
    pub tool: &'static str,
    /// produce, consume or e2e.
    pub command: Mode,
    /// quic or kafka.
    pub protocol: Protocol,
    /// Free text from `--label`.
    pub label: Option<String>,
    /// The command line that produced this report.
    pub command_line: String,
    /// Wall clock at the start, ms since the epoch.
    pub started_at_unix_ms: u64,
    /// Length of the measurement window.
    pub window_sec: f64,
    /// Records in the window (acknowledged for produce, consumed otherwise).
    pub records: u64,
    /// Their key and value bytes.
    pub bytes: u64,
    /// Headline throughput: produce side for produce, consume side otherwise.
    pub records_per_sec: f64,
    /// Headline throughput in MB/s.
    pub mb_per_sec: f64,
    /// What `latency_us` measures: `produce_ack`, `end_to_end` or `none`.
    pub latency_kind: &'static str,
    /// Headline latency.
    pub latency_us: LatencySummary,
    /// Whether sends followed a schedule (`--rate`): latency then counts from each record's
    /// intended send time (corrected for coordinated omission).
    pub open_loop: bool,
    /// Producer side, if any.
    pub produce: Option<Side>,
    /// Consumer side, if any.
    pub consume: Option<Side>,
    /// Produce acknowledgement latency, if producers ran.
    pub ack_latency_us: Option<LatencySummary>,
    /// End-to-end latency, for e2e runs.
    pub e2e_latency_us: Option<LatencySummary>,
    /// Open loop: how late records were handed to the client after their intended send time
    /// (the harness's own delay; large values mean the load generator could not keep its
    /// schedule, e.g. for want of a CPU).
    pub send_lag_us: Option<LatencySummary>,
    /// Records whose produce failed.
    pub errors: u64,
    /// The ceiling from the reference, if one was given.
    pub limit: Option<Limit>,
    /// Broker memory, with `--broker-pid`.
    pub broker_memory: Option<BrokerMemory>,
    /// CPU used over the window.
    pub cpu: CpuUse,
    /// Throughput and latency per interval.
    pub timeline: Vec<Point>,
    /// The flags of the run.
    pub config: LoadArgs,
    /// The reference JSON the ratios come from.
    pub reference: Option<serde_json::Value>,
    /// Where it ran.
    pub machine: Machine,
}

fn side(records: u64, bytes: u64, seconds: f64) -> Side {
    let seconds = seconds.max(1e-9);
    Side {
        records,
        bytes,
        records_per_sec: records as f64 / seconds,
        mb_per_sec: bytes as f64 / 1e6 / seconds,
    }
}

/// Builds the report of a measured run.
pub fn build(
    measured: &Measured,
    reference: Option<serde_json::Value>,
    machine: Machine,
    label: Option<String>,
) -> Report {
    let plan = &measured.plan;
    let (start, end) = &measured.window;
    let seconds = end.at_sec - start.at_sec;
    let delta = |f: fn(&Totals) -> u64| f(&end.totals).saturating_sub(f(&start.totals));
    let produce = (plan.mode != Mode::Consume).then(|| {
        side(
            delta(|t| t.acked_records),
            delta(|t| t.acked_bytes),
            seconds,
        )
    });
    let consume = (plan.mode != Mode::Produce).then(|| {
        side(
            delta(|t| t.consumed_records),
            delta(|t| t.consumed_bytes),
            seconds,
        )
    });
    let headline = match plan.mode {
        Mode::Produce => produce.clone(),
        _ => consume.clone(),
    }
    .expect("the headline side ran");
    let recorder = &measured.recorder;
    let ack = (plan.mode != Mode::Consume).then(|| LatencySummary::of(&recorder.ack.total));
    let e2e = (plan.mode == Mode::E2e).then(|| LatencySummary::of(&recorder.e2e.total));
    let (latency_kind, latency, series) = match plan.mode {
        Mode::Produce => ("produce_ack", ack.clone(), Some(&recorder.ack)),
        Mode::E2e => ("end_to_end", e2e.clone(), Some(&recorder.e2e)),
        Mode::Consume => ("none", None, None),
    };
    // An open-loop run moves what its schedule asks for: a ratio to the limit says nothing.
    let limit = reference
        .as_ref()
        .filter(|_| plan.args.rate.is_none())
        .and_then(|r| limit_of(r, plan.mode, plan.args.protocol, headline.mb_per_sec));
    let broker_memory = plan.args.broker_pid.and_then(|pid| {
        let seen: Vec<f64> = measured
            .samples
            .iter()
            .filter_map(|s| s.broker_rss_mib)
            .collect();
        Some(BrokerMemory {
            pid,
            rss_max_mib: seen.iter().copied().fold(f64::NAN, f64::max),
            rss_last_mib: *seen.last()?,
        })
    });
    let used = |f: fn(&crate::load::Sample) -> Option<f64>| Some(f(end)? - f(start)?);
    let per_gb = |cpu: Option<f64>| {
        cpu.filter(|_| headline.bytes > 0)
            .map(|c| c / (headline.bytes as f64 / 1e9))
    };
    let harness_cpu = used(|s| s.harness_cpu_sec);
    let broker_cpu = used(|s| s.broker_cpu_sec);
    let cpu = CpuUse {
        harness_cores: harness_cpu.map(|c| c / seconds.max(1e-9)),
        broker_cores: broker_cpu.map(|c| c / seconds.max(1e-9)),
        harness_sec_per_gb: per_gb(harness_cpu),
        broker_sec_per_gb: per_gb(broker_cpu),
    };
    Report {
        tool: "sluice-perf",
        command: plan.mode,
        protocol: plan.args.protocol,
        label,
        command_line: std::env::args().collect::<Vec<_>>().join(" "),
        started_at_unix_ms: measured.run.start_realtime_ns / 1_000_000,
        window_sec: seconds,
        records: headline.records,
        bytes: headline.bytes,
        records_per_sec: headline.records_per_sec,
        mb_per_sec: headline.mb_per_sec,
        latency_kind,
        latency_us: latency.unwrap_or_default(),
        open_loop: plan.args.rate.is_some(),
        produce,
        consume,
        ack_latency_us: ack,
        e2e_latency_us: e2e,
        send_lag_us: (plan.args.rate.is_some() && plan.mode != Mode::Consume)
            .then(|| LatencySummary::of(&recorder.lag.total)),
        errors: measured.last.errors,
        limit,
        broker_memory,
        cpu,
        timeline: timeline(measured, series),
        config: plan.args.clone(),
        reference,
        machine,
    }
}

/// The limit of a run from a reference JSON.
fn limit_of(
    reference: &serde_json::Value,
    mode: Mode,
    protocol: Protocol,
    mb_per_sec: f64,
) -> Option<Limit> {
    let disk = match mode {
        Mode::Consume => "direct_read_mb_per_sec",
        Mode::Produce | Mode::E2e => "direct_write_mb_per_sec",
    };
    let transport = match protocol {
        Protocol::Quic => "quic_loopback_mb_per_sec",
        Protocol::Kafka => "tcp_loopback_mb_per_sec",
    };
    let disk_mb_per_sec = reference.get(disk)?.as_f64()?;
    let transport_mb_per_sec = reference.get(transport)?.as_f64()?;
    let limit_mb_per_sec = disk_mb_per_sec.min(transport_mb_per_sec);
    Some(Limit {
        disk,
        disk_mb_per_sec,
        transport,
        transport_mb_per_sec,
        limit_mb_per_sec,
        ratio: mb_per_sec / limit_mb_per_sec,
    })
}

fn timeline(measured: &Measured, series: Option<&LatencySeries>) -> Vec<Point> {
    measured
        .samples
        .windows(2)
        .enumerate()
        .map(|(i, pair)| {
            let (a, b) = (&pair[0], &pair[1]);
            let span = (b.at_sec - a.at_sec).max(1e-9);
            let rate =
                |f: fn(&Totals) -> u64| f(&b.totals).saturating_sub(f(&a.totals)) as f64 / span;
            let interval = series
                .and_then(|s| s.intervals.get(i))
                .filter(|h| !h.is_empty())
                .map(LatencySummary::of);
            Point {
                t_sec: b.at_sec,
                produce_records_per_sec: rate(|t| t.acked_records),
                produce_mb_per_sec: rate(|t| t.acked_bytes) / 1e6,
                consume_records_per_sec: rate(|t| t.consumed_records),
                consume_mb_per_sec: rate(|t| t.consumed_bytes) / 1e6,
                p50_us: interval.as_ref().map(|s| s.p50),
                p99_us: interval.as_ref().map(|s| s.p99),
                max_us: interval.as_ref().map(|s| s.max),
                broker_rss_mib: b.broker_rss_mib,
            }
        })
        .collect()
}

/// Prints the summary table.
pub fn print_summary(report: &Report) {
    let mut out = String::new();
    let mut row = |name: &str, value: String| {
        out.push_str(&format!("  {name:<22} {value}\n"));
    };
    row(
        "run",
        format!(
            "{:?} over {:?}, {} partition(s), window {:.1} s{}",
            report.command,
            report.protocol,
            report.config.partitions,
            report.window_sec,
            if report.open_loop {
                ", open loop"
            } else {
                ", closed loop"
            }
        ),
    );
    for (name, side) in [("produce", &report.produce), ("consume", &report.consume)] {
        if let Some(side) = side {
            row(
                name,
                format!(
                    "{:>12.0} records/s {:>9.1} MB/s ({} records)",
                    side.records_per_sec, side.mb_per_sec, side.records
                ),
            );
        }
    }
    for (name, latency) in [
        ("produce ack latency", &report.ack_latency_us),
        ("end-to-end latency", &report.e2e_latency_us),
        ("send lag (harness)", &report.send_lag_us),
    ] {
        if let Some(l) = latency {
            row(
                name,
                format!(
                    "p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} (n={})",
                    us(l.p50),
                    us(l.p90),
                    us(l.p99),
                    us(l.p999),
                    us(l.p9999),
                    us(l.max),
                    l.count
                ),
            );
        }
    }
    if let Some(limit) = &report.limit {
        row(
            "limit",
            format!(
                "{:.1} MB/s = min({} {:.1}, {} {:.1})",
                limit.limit_mb_per_sec,
                limit.disk,
                limit.disk_mb_per_sec,
                limit.transport,
                limit.transport_mb_per_sec
            ),
        );
        row("ratio to limit", format!("{:.2}", limit.ratio));
    }
    if let Some(memory) = &report.broker_memory {
        row(
            "broker rss",
            format!(
                "max {:.1} MiB, last {:.1} MiB",
                memory.rss_max_mib, memory.rss_last_mib
            ),
        );
    }
    let cores = |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{c:.2}"));
    row(
        "cpu (cores busy)",
        format!(
            "harness {}, broker {}",
            cores(report.cpu.harness_cores),
            cores(report.cpu.broker_cores)
        ),
    );
    row("errors", report.errors.to_string());
    row(
        "load average",
        format!("{:?} at start", report.machine.load_average),
    );
    let round_trip = reference_section(report, "tcp_round_trip_us")
        .filter(|_| report.ack_latency_us.is_some() || report.e2e_latency_us.is_some());
    if let Some(field) = round_trip {
        row(
            "tcp round trip",
            format!(
                "p50 {} p99 {} p99.9 {} (reference: 1 KiB each way, both sides woken)",
                us(field("p50")),
                us(field("p99")),
                us(field("p999"))
            ),
        );
    }
    if let Some(field) = reference_section(report, "cpu_stalls") {
        row(
            "cpu stalls",
            format!(
                "max gap {:.1} ms, {:.1}% lost (reference, all CPUs spinning)",
                field("max_gap_ms"),
                100.0 * field("lost_share")
            ),
        );
    }
    print!("{out}");
}

/// A section of the run's reference JSON, its fields read as numbers (NaN where one is
/// missing); `None` without a reference or without that section.
fn reference_section<'a>(report: &'a Report, name: &str) -> Option<impl Fn(&str) -> f64 + 'a> {
    let section = report.reference.as_ref()?.get(name)?;
    Some(move |key: &str| {
        section
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    })
}

/// Microseconds, shown in the unit that reads best.
pub fn us(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.1}ms", value / 1000.0)
    } else {
        format!("{value:.0}us")
    }
}

/// Writes the HDR interval log of the run's latencies.
pub fn write_hdr_log(measured: &Measured, path: &Path) -> anyhow::Result<()> {
    let recorder = &measured.recorder;
    let mut tagged: Vec<(&str, &LatencySeries)> = Vec::new();
    if measured.plan.mode != Mode::Consume {
        tagged.push(("produce_ack", &recorder.ack));
    }
    if measured.plan.mode == Mode::E2e {
        tagged.push(("end_to_end", &recorder.e2e));
    }
    let mut out = Vec::new();
    crate::stats::write_hdr_log(&mut out, &measured.run, &tagged)?;
    std::fs::write(path, out).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}
