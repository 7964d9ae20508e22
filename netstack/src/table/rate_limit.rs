//! A token bucket: at most so many events a second on average, and so many back to
//! back. The router limits the ICMP errors it originates with it (RFC 1812 section
//! 4.3.2.8). Time comes in as an argument; it never reads a clock.

use smoltcp::time::{Duration, Instant};

/// Errors sent per second at most, on average.
pub const ERRORS_PER_SEC: u32 = 100;
/// Errors sent back to back at most (a traceroute sends a few probes per hop at once).
pub const ERROR_BURST: u32 = 50;

/// A token bucket: `per_sec` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    per_sec: u32,
    burst: u32,
    /// Tokens in millionths, so that refills at any rate stay exact in µs.
    micro_tokens: u64,
    last: Option<Instant>,
}

impl RateLimit {
    /// A full bucket.
    pub const fn new(per_sec: u32, burst: u32) -> RateLimit {
        RateLimit {
            per_sec,
            burst,
            micro_tokens: burst as u64 * 1_000_000,
            last: None,
        }
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let full = self.burst as u64 * 1_000_000;
        if let Some(last) = self.last {
            // Time that runs backwards refills nothing.
            let elapsed = if now > last {
                (now - last).total_micros()
            } else {
                0
            };
            let refill = elapsed.saturating_mul(self.per_sec as u64);
            self.micro_tokens = self.micro_tokens.saturating_add(refill).min(full);
        }
        self.last = Some(self.last.map_or(now, |l| if now > l { now } else { l }));
        if self.micro_tokens >= 1_000_000 {
            self.micro_tokens -= 1_000_000;
            true
        } else {
            false
        }
    }

    /// How long until a token is back, for a caller that wants to wait.
    pub fn wait(&self) -> Duration {
        let missing = 1_000_000u64.saturating_sub(self.micro_tokens);
        Duration::from_micros(missing.div_ceil(self.per_sec.max(1) as u64))
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(ERRORS_PER_SEC, ERROR_BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_rate() {
        let mut limit = RateLimit::new(100, 50);
        let t0 = Instant::from_secs(10);
        let burst = (0..200).filter(|_| limit.allow(t0)).count();
        assert_eq!(burst, 50);
        assert_eq!(limit.wait(), Duration::from_millis(10));
        // 10 ms later one more; 1 s later 100 more (bucket holds up to 50).
        assert!(limit.allow(t0 + Duration::from_millis(10)));
        assert!(!limit.allow(t0 + Duration::from_millis(10)));
        let later = t0 + Duration::from_secs(1);
        assert_eq!((0..200).filter(|_| limit.allow(later)).count(), 50);
        // Over 10 s at 1000 tries a second, about 100 a second get through.
        let mut now = later;
        let mut sent = 0;
        for _ in 0..10_000 {
            now += Duration::from_millis(1);
            sent += limit.allow(now) as u32;
        }
        assert_eq!(sent, 1000);
        // Time running backwards refills nothing.
        let mut limit = RateLimit::new(1, 1);
        assert!(limit.allow(t0));
        assert!(!limit.allow(Instant::from_secs(0)));
        assert!(!limit.allow(t0));
        assert!(limit.allow(t0 + Duration::from_secs(1)));
    }
}
