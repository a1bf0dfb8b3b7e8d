//! Measurements: per-thread counters read live by the progress line, and per-thread latency
//! histograms (HDR, nanoseconds) with one histogram per interval for the HDR log and the
//! latency-over-time plot. Threads record without sharing anything but their own counters;
//! the runner merges the histograms at the end.
//!
//! Latency is recorded from a record's *intended* send time: with `--rate` that is its slot
//! in the schedule (start + i/rate), so a stalled broker shows up as latency of every record
//! that should have been sent meanwhile (no coordinated omission); without `--rate` it is the
//! time the record was handed to the client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stamp::RunClock;

/// Largest latency a histogram holds: one hour, in nanoseconds (larger values saturate).
const LATENCY_NS_MAX: u64 = 3_600_000_000_000;

/// Significant figures of every histogram (0.1% resolution).
const SIGNIFICANT_FIGURES: u8 = 3;

/// A new empty latency histogram.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, SIGNIFICANT_FIGURES)
        .expect("constant histogram bounds are valid")
}

/// Live counters of one harness thread, summed by the progress line. Each thread owns one
/// (cache-line aligned so threads never share a line); relaxed atomics: they are statistics.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Counters {
    /// Records handed to the client.
    pub sent_records: AtomicU64,
    /// Records acknowledged by the broker (acks=0: written to the socket).
    pub acked_records: AtomicU64,
    /// Key and value bytes of the acknowledged records.
    pub acked_bytes: AtomicU64,
    /// Records consumed.
    pub consumed_records: AtomicU64,
    /// Key and value bytes of the consumed records.
    pub consumed_bytes: AtomicU64,
    /// Records whose produce failed.
    pub errors: AtomicU64,
}

impl Counters {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A snapshot of the counters.
    pub fn snapshot(&self) -> Totals {
        Totals {
            sent_records: self.sent_records.load(Ordering::Relaxed),
            acked_records: self.acked_records.load(Ordering::Relaxed),
            acked_bytes: self.acked_bytes.load(Ordering::Relaxed),
            consumed_records: self.consumed_records.load(Ordering::Relaxed),
            consumed_bytes: self.consumed_bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Summed counter values at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// See [`Counters::sent_records`].
    pub sent_records: u64,
    /// See [`Counters::acked_records`].
    pub acked_records: u64,
    /// See [`Counters::acked_bytes`].
    pub acked_bytes: u64,
    /// See [`Counters::consumed_records`].
    pub consumed_records: u64,
    /// See [`Counters::consumed_bytes`].
    pub consumed_bytes: u64,
    /// See [`Counters::errors`].
    pub errors: u64,
}

impl std::ops::Add for Totals {
    type Output = Totals;

    fn add(self, other: Totals) -> Totals {
        Totals {
            sent_records: self.sent_records + other.sent_records,
            acked_records: self.acked_records + other.acked_records,
            acked_bytes: self.acked_bytes + other.acked_bytes,
            consumed_records: self.consumed_records + other.consumed_records,
            consumed_bytes: self.consumed_bytes + other.consumed_bytes,
            errors: self.errors + other.errors,
        }
    }
}

/// Sums the counters of every thread.
pub fn sum(counters: &[std::sync::Arc<Counters>]) -> Totals {
    counters
        .iter()
        .fold(Totals::default(), |total, c| total + c.snapshot())
}

/// Latencies of one kind (produce acknowledgement or end to end) on one thread: the whole
/// measured run, and one histogram per interval since the start of the run.
#[derive(Debug)]
pub struct LatencySeries {
    /// Every measured latency.
    pub total: Histogram<u64>,
    /// `intervals[i]` holds latencies completed in `[start + i*interval, start + (i+1)*interval)`.
    pub intervals: Vec<Histogram<u64>>,
    interval: Duration,
}

impl LatencySeries {
    /// An empty series with intervals of `interval`.
    pub fn new(interval: Duration) -> LatencySeries {
        assert!(!interval.is_zero(), "a zero interval");
        LatencySeries {
            total: histogram(),
            intervals: Vec::new(),
            interval,
        }
    }

    /// Records one latency that completed `since_start` into the run.
    pub fn record(&mut self, since_start: Duration, latency_ns: u64) {
        let index = (since_start.as_nanos() / self.interval.as_nanos()) as usize;
        while self.intervals.len() <= index {
            self.intervals.push(histogram());
        }
        let value = latency_ns.clamp(1, LATENCY_NS_MAX);
        self.total.saturating_record(value);
        self.intervals[index].saturating_record(value);
    }

    /// Adds `other` (another thread's series with the same interval) into this one.
    pub fn merge(&mut self, other: &LatencySeries) {
        assert_eq!(self.interval, other.interval, "merging unlike series");
        self.total
            .add(&other.total)
            .expect("histograms with equal bounds add");
        while self.intervals.len() < other.intervals.len() {
            self.intervals.push(histogram());
        }
        for (mine, theirs) in self.intervals.iter_mut().zip(&other.intervals) {
            mine.add(theirs).expect("histograms with equal bounds add");
        }
    }

    /// The interval length.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

/// Everything one thread measured. Lives on its thread while the run goes (inside an
/// `Rc<RefCell<_>>` shared by the thread's tasks; no borrow is held across an await), then
/// moves to the runner to be merged.
#[derive(Debug)]
pub struct Recorder {
    /// The shared run clock.
    pub run: RunClock,
    /// Produce latency: intended send time to acknowledgement.
    pub ack: LatencySeries,
    /// End-to-end latency: intended send time (the value's stamp) to consumption.
    pub e2e: LatencySeries,
    /// Open loop only: how late each record was handed to the client after its intended
    /// send time (the harness's own delay: timer overshoot, waiting for a CPU, backpressure).
    pub lag: LatencySeries,
}

impl Recorder {
    /// An empty recorder.
    pub fn new(run: RunClock, interval: Duration) -> Recorder {
        Recorder {
            run,
            ack: LatencySeries::new(interval),
            e2e: LatencySeries::new(interval),
            lag: LatencySeries::new(interval),
        }
    }

    /// Records a produce acknowledgement at `done` of a record intended for `intended`;
    /// records intended before the end of the warmup are not measured.
    pub fn record_ack(&mut self, intended: Instant, done: Instant) {
        if intended < self.run.measure_from {
            return;
        }
        let latency = done.saturating_duration_since(intended).as_nanos() as u64;
        self.ack
            .record(done.saturating_duration_since(self.run.start), latency);
    }

    /// Records that a record intended for `intended` was handed to the client at `now`.
    pub fn record_lag(&mut self, intended: Instant, now: Instant) {
        if intended < self.run.measure_from {
            return;
        }
        let lag = now.saturating_duration_since(intended).as_nanos() as u64;
        self.lag
            .record(now.saturating_duration_since(self.run.start), lag);
    }

    /// Records the consumption, at wall-clock stamp `now_stamp`, of a record stamped
    /// `sent_stamp`; records stamped before the end of the warmup are not measured.
    pub fn record_e2e(&mut self, sent_stamp: u64, now_stamp: u64) {
        if sent_stamp < self.run.measure_from_stamp() {
            return;
        }
        let since_start =
            Duration::from_nanos(now_stamp.saturating_sub(self.run.start_realtime_ns));
        self.e2e
            .record(since_start, now_stamp.saturating_sub(sent_stamp));
    }

    /// Adds another thread's measurements.
    pub fn merge(&mut self, other: &Recorder) {
        self.ack.merge(&other.ack);
        self.e2e.merge(&other.e2e);
        self.lag.merge(&other.lag);
    }
}

/// What a producer or consumer task reports into: its thread's recorder and counters.
/// Shard-local (`Rc`); cheap to clone.
#[derive(Clone, Debug)]
pub struct Probe {
    /// The thread's latency recorder.
    pub recorder: std::rc::Rc<std::cell::RefCell<Recorder>>,
    /// The thread's live counters.
    pub counters: std::sync::Arc<Counters>,
}

/// Latency percentiles in microseconds, the perf JSON contract (`latency_us`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    /// Values measured.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// 99.99th percentile.
    pub p9999: f64,
    /// Largest value.
    pub max: f64,
}

impl LatencySummary {
    /// Summarises a nanosecond histogram in microseconds.
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        LatencySummary {
            count: histogram.len(),
            mean: histogram.mean() / 1000.0,
            p50: us(histogram.value_at_quantile(0.50)),
            p90: us(histogram.value_at_quantile(0.90)),
            p99: us(histogram.value_at_quantile(0.99)),
            p999: us(histogram.value_at_quantile(0.999)),
            p9999: us(histogram.value_at_quantile(0.9999)),
            max: us(histogram.max()),
        }
    }
}

/// Writes the per-interval histograms of `series` as an HDR interval log (values in
/// nanoseconds; the `max` column in milliseconds), tagged `tag`.
pub fn write_hdr_log(
    out: &mut Vec<u8>,
    run: &RunClock,
    tagged: &[(&str, &LatencySeries)],
) -> anyhow::Result<()> {
    use hdrhistogram::serialization::V2DeflateSerializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    let start = std::time::UNIX_EPOCH + Duration::from_nanos(run.start_realtime_ns);
    let mut serializer = V2DeflateSerializer::new();
    let mut builder = IntervalLogWriterBuilder::new();
    builder
        .add_comment("sluice-perf latency log; values in nanoseconds")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1e6);
    let mut writer = builder.begin_log_with(out, &mut serializer)?;
    for (tag, series) in tagged {
        let tag = Tag::new(tag).ok_or_else(|| anyhow::anyhow!("invalid hdr log tag {tag}"))?;
        for (i, histogram) in series.intervals.iter().enumerate() {
            if histogram.is_empty() {
                continue;
            }
            let at = series.interval() * i as u32;
            writer
                .write_histogram(histogram, at, series.interval(), Some(tag))
                .map_err(|e| anyhow::anyhow!("cannot write hdr log: {e:?}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: records land in the interval of their completion time, warmup records are left
    // out, and merging two threads adds their counts. Method: record known values.
    #[test]
    fn series_intervals_warmup_and_merge() {
        let run = RunClock::new(Duration::from_millis(100));
        let mut a = Recorder::new(run, Duration::from_secs(1));
        let mut b = Recorder::new(run, Duration::from_secs(1));
        a.record_ack(run.start, run.start + Duration::from_millis(150));
        assert!(a.ack.total.is_empty(), "a warmup record was measured");
        let intended = run.start + Duration::from_millis(200);
        a.record_ack(intended, intended + Duration::from_micros(500));
        b.record_ack(intended, run.start + Duration::from_millis(2500));
        a.merge(&b);
        assert_eq!(a.ack.total.len(), 2);
        assert_eq!(a.ack.intervals.len(), 3);
        assert_eq!(a.ack.intervals[0].len(), 1);
        assert_eq!(a.ack.intervals[2].len(), 1);
        let summary = LatencySummary::of(&a.ack.total);
        assert!((summary.p50 - 500.0).abs() < 1.0, "{summary:?}");
        let stamp = run.measure_from_stamp() + 10;
        a.record_e2e(stamp, stamp + 2_000_000);
        assert_eq!(a.e2e.total.len(), 1);
        let mut log = Vec::new();
        write_hdr_log(&mut log, &run, &[("ack", &a.ack)]).expect("log written");
        let text = String::from_utf8(log).expect("text log");
        assert!(text.contains("Tag=ack"), "{text}");
    }
}
