//! The one module that reads the clocks (STYLE §10 tidy rule).
//!
//! Monotonic time for deadlines and latency; wall-clock milliseconds for record timestamps and
//! time-based retention.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::types::TimestampMs;

/// Monotonic now, for deadlines and durations.
pub fn now() -> Instant {
    Instant::now()
}

/// Wall-clock now in milliseconds since the Unix epoch.
pub fn unix_now_ms() -> TimestampMs {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    TimestampMs(i64::try_from(since.as_millis()).expect("timestamp fits in i64"))
}
