//! The listener's limits: timeouts, the connection cap, and the bucket that
//! rate-limits wrong bearer tokens.
//!
//! Without them, sockets that never finish a request hold file descriptors
//! until the process has none left, and then outbox and snapshot writes fail.

use std::time::{Duration, Instant};

/// How long a client may take, and how many clients are served at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Longest wait for a request's headers: from the connection's start, and
    /// on a kept-alive connection from the end of the previous answer.
    pub header_read: Duration,
    /// Longest a connection may go without a byte read or written while no
    /// request is being answered; also the longest a query body may take to arrive.
    pub idle: Duration,
    /// Most connections served at once; more wait in the kernel's accept backlog.
    pub max_connections: usize,
    /// Wrong bearer tokens answered 401 in a burst, before 429 ...
    pub bearer_burst: u32,
    /// ... and the rate at which the bucket refills after it.
    pub bearer_refill_per_sec: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(30),
            max_connections: 64,
            bearer_burst: 10,
            bearer_refill_per_sec: 1.0,
        }
    }
}

/// A token bucket: `burst` tokens, refilled at `per_sec`. The caller passes
/// the time, so tests drive a clock of their own.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, per_sec: f64, now: Instant) -> Self {
        TokenBucket {
            capacity: f64::from(burst),
            per_sec: per_sec.max(0.0),
            tokens: f64::from(burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that goes back refills nothing and moves nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Whether a token is there at `now`, without taking it.
    pub fn has_token(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= 1.0
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whole seconds until the next token, at least 1 (for `Retry-After`).
    pub fn retry_after_secs(&mut self, now: Instant) -> u64 {
        self.refill(now);
        if self.per_sec <= 0.0 {
            return 3600;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        ((missing / self.per_sec).ceil() as u64).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_bucket_refills_with_time() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 1.0, start);
        for i in 0..10 {
            assert!(bucket.take(start), "token {i} of the burst");
        }
        assert!(!bucket.has_token(start));
        assert!(!bucket.take(start + Duration::from_millis(999)));
        assert_eq!(
            bucket.retry_after_secs(start + Duration::from_millis(999)),
            1
        );
        assert!(bucket.take(start + Duration::from_millis(1000)));
        assert!(!bucket.take(start + Duration::from_millis(1500)));
        // A long pause refills the burst, never more.
        let later = start + Duration::from_secs(3600);
        for i in 0..10 {
            assert!(bucket.take(later), "token {i} after the pause");
        }
        assert!(!bucket.take(later));
        // A clock that steps back takes nothing away and gives nothing.
        assert!(!bucket.take(start));
    }
}
