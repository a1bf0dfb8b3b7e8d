//! `sluice-perf compare A.json B.json`: two reports (or two reference runs) side by side,
//! with B/A for every figure both have. Works on the JSON alone, so reports of older
//! versions and other machines compare as long as the keys match.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;

/// Figures compared, as JSON pointers, with whether higher is better.
const FIGURES: &[(&str, bool)] = &[
    ("/records_per_sec", true),
    ("/mb_per_sec", true),
    ("/produce/records_per_sec", true),
    ("/produce/mb_per_sec", true),
    ("/consume/records_per_sec", true),
    ("/consume/mb_per_sec", true),
    ("/latency_us/p50", false),
    ("/latency_us/p90", false),
    ("/latency_us/p99", false),
    ("/latency_us/p999", false),
    ("/latency_us/p9999", false),
    ("/latency_us/max", false),
    ("/ack_latency_us/p50", false),
    ("/ack_latency_us/p99", false),
    ("/ack_latency_us/p999", false),
    ("/e2e_latency_us/p50", false),
    ("/e2e_latency_us/p99", false),
    ("/e2e_latency_us/p999", false),
    ("/send_lag_us/p99", false),
    ("/cpu/harness_sec_per_gb", false),
    ("/cpu/broker_sec_per_gb", false),
    ("/limit/limit_mb_per_sec", true),
    ("/limit/ratio", true),
    ("/broker_memory/rss_max_mib", false),
    ("/errors", false),
    ("/direct_write_mb_per_sec", true),
    ("/direct_write_new_file_mb_per_sec", true),
    ("/direct_read_mb_per_sec", true),
    ("/fdatasync_4k_us/p50", false),
    ("/fdatasync_4k_us/p99", false),
    ("/fdatasync_64k_us/p50", false),
    ("/fdatasync_64k_us/p99", false),
    ("/tcp_loopback_mb_per_sec", true),
    ("/quic_loopback_mb_per_sec", true),
    ("/tcp_round_trip_us/p50", false),
    ("/tcp_round_trip_us/p99", false),
    ("/cpu_stalls/max_gap_ms", false),
    ("/cpu_stalls/lost_share", false),
];

/// Settings shown so a reader sees whether the runs are comparable.
const SETTINGS: &[&str] = &[
    "/command",
    "/protocol",
    "/label",
    "/config/partitions",
    "/config/producers",
    "/config/consumers",
    "/config/record_size",
    "/config/batch_bytes",
    "/config/linger_ms",
    "/config/acks",
    "/config/compression",
    "/config/rate",
    "/machine/git",
    "/machine/load_average",
];

fn load(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn show(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.fract() != 0.0 => format!("{f:.2}"),
            _ => n.to_string(),
        },
        Some(other) => other.to_string(),
    }
}

/// Renders the comparison as text.
pub fn render(a: &Value, b: &Value, a_name: &str, b_name: &str) -> String {
    let mut out = format!("{:<34} {:>16} {:>16} {:>8}\n", "", a_name, b_name, "B/A");
    for pointer in SETTINGS {
        let (x, y) = (a.pointer(pointer), b.pointer(pointer));
        if x.is_some() || y.is_some() {
            out.push_str(&format!(
                "{:<34} {:>16} {:>16}\n",
                pointer.trim_start_matches('/'),
                show(x),
                show(y)
            ));
        }
    }
    for (pointer, higher_is_better) in FIGURES {
        let x = a.pointer(pointer).and_then(Value::as_f64);
        let y = b.pointer(pointer).and_then(Value::as_f64);
        if x.is_none() && y.is_none() {
            continue;
        }
        let ratio = match (x, y) {
            (Some(x), Some(y)) if x != 0.0 => {
                let r = y / x;
                let better = if *higher_is_better { r > 1.0 } else { r < 1.0 };
                format!("{r:.2}{}", if better { "+" } else { "" })
            }
            _ => "-".to_owned(),
        };
        out.push_str(&format!(
            "{:<34} {:>16} {:>16} {:>8}\n",
            pointer.trim_start_matches('/'),
            show(a.pointer(pointer)),
            show(b.pointer(pointer)),
            ratio
        ));
    }
    out.push_str("(+ marks B better than A)\n");
    out
}

/// Compares two JSON files.
pub fn run(a: &Path, b: &Path) -> anyhow::Result<String> {
    let name = |p: &Path| {
        p.file_stem()
            .map_or_else(|| "?".to_owned(), |s| s.to_string_lossy().into_owned())
    };
    Ok(render(&load(a)?, &load(b)?, &name(a), &name(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: figures present in both show their ratio and which side is better; figures in one
    // only show a dash. Method: render two small hand-written reports.
    #[test]
    fn ratios_and_missing_figures() {
        let a: Value = serde_json::json!({
            "mb_per_sec": 100.0, "latency_us": {"p99": 2000.0}, "protocol": "quic"
        });
        let b: Value = serde_json::json!({
            "mb_per_sec": 80.0, "latency_us": {"p99": 1000.0}, "protocol": "kafka",
            "errors": 0
        });
        let text = render(&a, &b, "a", "b");
        let line = |key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_default()
                .to_owned()
        };
        assert!(line("mb_per_sec").ends_with("0.80"), "{text}");
        assert!(line("latency_us/p99").ends_with("0.50+"), "{text}");
        assert!(line("errors").ends_with('-'), "{text}");
        assert!(line("protocol").contains("kafka"), "{text}");
    }
}
