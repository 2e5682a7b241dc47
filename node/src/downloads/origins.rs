//! The origins of one release download, as far as the download has seen them: which are still
//! used, how often each failed in a row, and when the next request may go out. Pure policy (no
//! I/O), so each rule below is unit-tested on its own.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// The first wait after a failed origin request; it doubles with each failure in a row.
pub const BACKOFF: Duration = Duration::from_millis(1500);
/// An origin that delivered a chunk this recently is alive: a failed request is congestion.
pub const ORIGIN_ALIVE: Duration = Duration::from_secs(30);
/// The longest wait between tries while another origin is usable.
const CAP: Duration = Duration::from_secs(60);
/// The longest wait for the last usable origin: this node owns a share of the site's origin
/// work, and waiting long on it holds that share until the others see it stall.
const CAP_LAST: Duration = Duration::from_secs(12);

/// What a failed origin request means for the rest of the download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The origin sent wrong bytes or redirected where the policy does not allow: not used again
    /// for this release.
    Refused,
    /// `failures` transient failures in a row while another origin is usable: not used again.
    Failing { failures: u32 },
    /// The origin delivered lately: congestion on the way, tried again after [`BACKOFF`].
    Congested,
    /// Tried again after `wait`.
    Retry { failures: u32, wait: Duration },
}

/// How a download sees its origins.
pub struct Origins {
    urls: Vec<String>,
    /// Origins not used again for this release.
    dropped: HashSet<usize>,
    /// Consecutive failures per origin; reset by a success.
    failures: HashMap<usize, u32>,
    /// When each origin last delivered a chunk: a failure soon after is congestion on the way to
    /// a live origin (a shaped WAN link dropping handshakes), not a dead origin.
    delivered: HashMap<usize, Instant>,
    /// No origin request goes out before this.
    backoff_until: Instant,
}

impl Origins {
    pub fn new(urls: Vec<String>, now: Instant) -> Self {
        Origins {
            urls,
            dropped: HashSet::new(),
            failures: HashMap::new(),
            delivered: HashMap::new(),
            backoff_until: now,
        }
    }

    pub fn url(&self, i: usize) -> Option<&str> {
        self.urls.get(i).map(String::as_str)
    }

    /// The origin requests go to: the first not dropped.
    pub fn usable(&self) -> Option<usize> {
        (0..self.urls.len()).find(|i| !self.dropped.contains(i))
    }

    /// Whether the usable origin failed its last request (the download then looks to other
    /// sites too, as a remote endpoint that cannot reach the origin must).
    pub fn failing(&self) -> bool {
        self.usable().is_some_and(|i| self.failures.get(&i).is_some_and(|f| *f > 0))
    }

    /// Whether a request may go to the usable origin now.
    pub fn ready(&self, now: Instant) -> bool {
        self.usable().is_some() && now >= self.backoff_until
    }

    pub fn delivered(&mut self, i: usize, now: Instant) {
        self.failures.remove(&i);
        self.delivered.insert(i, now);
    }

    /// Notes a failed request to origin `i`; `refused`: it sent wrong bytes or a refused
    /// redirect. `max_failures` transient failures in a row drop an origin, unless it is the
    /// last usable one.
    pub fn failed(&mut self, i: usize, refused: bool, max_failures: u32, now: Instant) -> Verdict {
        if refused {
            self.dropped.insert(i);
            return Verdict::Refused;
        }
        if self.delivered.get(&i).is_some_and(|t| now.saturating_duration_since(*t) < ORIGIN_ALIVE) {
            self.backoff_until = now + BACKOFF;
            return Verdict::Congested;
        }
        let failures = self.failures.entry(i).or_default();
        *failures += 1;
        let failures = *failures;
        let another = (0..self.urls.len()).any(|o| o != i && !self.dropped.contains(&o));
        if failures >= max_failures && another {
            self.dropped.insert(i);
            return Verdict::Failing { failures };
        }
        // 1.5 s, 3 s, 6 s ... up to the cap.
        let cap = if another { CAP } else { CAP_LAST };
        let wait = (BACKOFF * (1u32 << (failures - 1).min(6))).min(cap);
        self.backoff_until = now + wait;
        Verdict::Retry { failures, wait }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two(now: Instant) -> Origins {
        Origins::new(vec!["http://a".into(), "http://b".into()], now)
    }

    #[test]
    fn an_origin_that_lies_is_dropped_at_once_and_the_next_one_is_used() {
        let now = Instant::now();
        let mut o = two(now);
        assert_eq!(o.usable(), Some(0));
        assert_eq!(o.failed(0, true, 5, now), Verdict::Refused);
        assert_eq!(o.usable(), Some(1));
        assert!(o.ready(now), "a refusal does not make the next origin wait");
        assert_eq!(o.failed(1, true, 5, now), Verdict::Refused);
        assert_eq!(o.usable(), None);
        assert!(!o.ready(now));
    }

    #[test]
    fn transient_failures_back_off_doubling_and_drop_an_origin_only_while_another_is_usable() {
        let now = Instant::now();
        let mut o = two(now);
        assert_eq!(o.failed(0, false, 3, now), Verdict::Retry { failures: 1, wait: BACKOFF });
        assert!(o.failing());
        assert!(!o.ready(now) && o.ready(now + BACKOFF));
        assert_eq!(o.failed(0, false, 3, now), Verdict::Retry { failures: 2, wait: BACKOFF * 2 });
        assert_eq!(o.failed(0, false, 3, now), Verdict::Failing { failures: 3 });
        assert_eq!(o.usable(), Some(1));
        assert!(!o.failing(), "the next origin has not failed");
        // The last usable origin is kept, whatever the count, and its wait is capped lower.
        let mut waits = Vec::new();
        for _ in 0..10 {
            match o.failed(1, false, 3, now) {
                Verdict::Retry { wait, .. } => waits.push(wait),
                v => panic!("the last usable origin was dropped: {v:?}"),
            }
        }
        assert_eq!(o.usable(), Some(1));
        assert_eq!(waits.last(), Some(&CAP_LAST));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_failure_soon_after_a_delivery_is_congestion_and_a_delivery_resets_the_count() {
        let now = Instant::now();
        let mut o = two(now);
        assert!(matches!(o.failed(0, false, 2, now), Verdict::Retry { failures: 1, .. }));
        o.delivered(0, now);
        assert!(!o.failing(), "a delivery resets the failures in a row");
        assert_eq!(o.failed(0, false, 2, now + Duration::from_secs(1)), Verdict::Congested);
        assert!(!o.failing(), "congestion does not count towards dropping the origin");
        // Long after the last delivery a failure counts again.
        let later = now + ORIGIN_ALIVE + Duration::from_secs(1);
        assert!(matches!(o.failed(0, false, 2, later), Verdict::Retry { failures: 1, .. }));
        assert_eq!(o.failed(0, false, 2, later), Verdict::Failing { failures: 2 });
    }
}
