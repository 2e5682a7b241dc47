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
