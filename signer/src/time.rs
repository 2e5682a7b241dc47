//! Times on the command line: `now`, a duration from now (`30d`, `+2h`), a Unix timestamp
//! (`@1767225600`) or an RFC 3339 date (`2026-12-01T02:00:00Z`).

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use lanpatch_protocol::Timestamp;

pub fn now() -> Timestamp {
    Timestamp(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

pub fn parse_time(s: &str, now: Timestamp) -> Result<Timestamp> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(secs) = s.strip_prefix('@') {
        return secs.parse().map(Timestamp).map_err(|_| anyhow::anyhow!("{s:?}: expected @<unix seconds>"));
    }
    if let Ok(d) = humantime::parse_duration(s.trim_start_matches('+')) {
        return Ok(now.plus_secs(d.as_secs()));
    }
    match humantime::parse_rfc3339_weak(s) {
        Ok(t) => Ok(Timestamp(t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))),
        Err(_) => {
            bail!("{s:?} is not a time: use now, a duration like 30d or 12h, @<unix seconds>, or 2026-12-01T02:00:00Z")
        }
    }
}

pub fn show(t: Timestamp) -> String {
    let st = UNIX_EPOCH + std::time::Duration::from_secs(t.0);
    humantime::format_rfc3339_seconds(st).to_string()
}
