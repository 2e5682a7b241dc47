//! Wall-clock time, in the units the protocol uses.

use std::time::{SystemTime, UNIX_EPOCH};

use lanpatch_protocol::Timestamp;

/// Seconds since the epoch.
pub fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Seconds since the epoch as a UTC date and time for people (`2027-12-07 09:15 UTC`).
pub fn format_time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(|| format!("@{secs}"), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}
