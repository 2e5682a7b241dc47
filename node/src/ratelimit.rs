//! A token bucket for bandwidth limits: callers reserve bytes and sleep until the bucket allows
//! them. A rate of 0 means unlimited.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct RateLimiter {
    bytes_per_sec: std::sync::atomic::AtomicU64,
    /// The time at which everything reserved so far has been paid for.
    paid_until: Mutex<Instant>,
}

/// How far ahead of the rate a burst may run.
const BURST: Duration = Duration::from_millis(250);

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter { bytes_per_sec: bytes_per_sec.into(), paid_until: Mutex::new(Instant::now()) }
    }

    /// Changes the rate (0 = unlimited) for reservations from now on.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.bytes_per_sec.store(bytes_per_sec, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn acquire(&self, bytes: u64) {
        let rate = self.bytes_per_sec.load(std::sync::atomic::Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let wake = {
            let mut paid = self.paid_until.lock().await;
            let now = Instant::now();
            if *paid < now {
                *paid = now;
            }
            *paid += Duration::from_secs_f64(bytes as f64 / rate as f64);
            paid.checked_sub(BURST).unwrap_or(now)
        };
        tokio::time::sleep_until(wake).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limiter_spaces_out_reservations_at_the_configured_rate() {
        let l = RateLimiter::new(1000);
        let start = Instant::now();
        for _ in 0..10 {
            l.acquire(500).await;
        }
        // 5000 bytes at 1000 B/s: 5 s, minus the burst allowance.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(4700) && took <= Duration::from_millis(5000), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_rate_is_unlimited() {
        let l = RateLimiter::new(0);
        let start = Instant::now();
        l.acquire(u64::MAX).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
