//! Criterion micro-benchmarks of Sluice hot paths; the benchmarks live in `benches/benches/`.
//!
//! This library holds only the inputs the benchmarks share, so that every file measures the
//! same data. Must not depend on: anything but `sluice-engine` and `sluice-net`.

use sluice_engine::TimestampMs;
use sluice_engine::batch::SimpleRecord;

/// Records of `record_bytes` each, as many as fit in about `batch_bytes` of values.
///
/// Values are JSON-like text with varying numbers and words from a small vocabulary, drawn
/// from a fixed-seed generator: they compress like typical event payloads (2-5x), neither
/// like random bytes (1x) nor like runs of one byte (1000x).
pub fn sample_records(batch_bytes: usize, record_bytes: usize) -> Vec<SimpleRecord> {
    const WORDS: [&str; 12] = [
        "click", "view", "purchase", "signup", "checkout", "search", "mobile", "desktop", "europe",
        "america", "asia", "referral",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64: deterministic and cheap; quality is irrelevant here.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let count = (batch_bytes / record_bytes).max(1);
    (0..count)
        .map(|i| {
            let mut value = String::with_capacity(record_bytes + 64);
            while value.len() < record_bytes {
                let word = WORDS[(next() % WORDS.len() as u64) as usize];
                value.push_str(&format!(
                    "{{\"id\":{},\"event\":\"{word}\",\"n\":{}}},",
                    i,
                    next()
                ));
            }
            value.truncate(record_bytes);
            SimpleRecord {
                key: Some(format!("user-{}", next() % 10_000).into_bytes()),
                value: Some(value.into_bytes()),
                headers: vec![("trace-id".into(), Some(next().to_be_bytes().to_vec()))],
                timestamp: TimestampMs(1_700_000_000_000 + i as i64),
            }
        })
        .collect()
}
