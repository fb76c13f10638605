//! Per-token and per-source token buckets on the HTTP API.
//!
//! A request costs one token from its source address's bucket, then one from
//! its bearer token's bucket; an empty bucket answers `429` with
//! `Retry-After` (whole seconds until a token is back) and names the limit.
//! The source is checked first, so a flood of made-up bearer tokens from one
//! address is stopped before it fills the token table. Heartbeats are gRPC
//! and never pass here.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::error::ApiError;

/// A bucket's refill rate and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Requests per second sustained.
    pub per_second: u32,
    /// Requests allowed at once after a quiet period.
    pub burst: u32,
}

/// The HTTP API's rate limits; `None` turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Per bearer token (the admin token included).
    pub per_token: Option<TokenBucket>,
    /// Per source address, whatever the token.
    pub per_source: Option<TokenBucket>,
}

/// Generous enough that a Terraform refresh of a thousand resources (one
/// GET each, ten in parallel) passes in its burst, while one client cannot
/// keep the store busy for everyone.
pub const DEFAULT_RATE_LIMITS: RateLimits = RateLimits {
    per_token: Some(TokenBucket {
        per_second: 100,
        burst: 1000,
    }),
    per_source: Some(TokenBucket {
        per_second: 200,
        burst: 2000,
    }),
};

impl RateLimits {
    /// Refuses zero rates and bursts (a bucket that never admits anyone).
    pub fn validate(&self) -> Result<(), String> {
        for (name, bucket) in [
            ("per_token", self.per_token),
            ("per_source", self.per_source),
        ] {
            if let Some(bucket) = bucket {
                if bucket.per_second == 0 || bucket.burst == 0 {
                    return Err(format!(
                        "rate_limits.{name}: per_second and burst must be greater than zero"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Buckets kept before full ones (equivalent to absent) are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// The buckets of one kind of key.
struct Buckets<K> {
    limit: TokenBucket,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: std::hash::Hash + Eq> Buckets<K> {
    fn new(limit: TokenBucket) -> Self {
        Buckets {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; `Err(wait)` when the bucket is empty.
    fn take(&self, key: K, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.limit.per_second);
        let burst = f64::from(self.limit.burst);
        let refilled = |(tokens, at): (f64, Instant)| {
            (tokens + now.saturating_duration_since(at).as_secs_f64() * rate).min(burst)
        };
        // Poisoning only means a panic elsewhere; the map is still whole.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() > PRUNE_ABOVE {
            buckets.retain(|_, bucket| refilled(*bucket) < burst);
        }
        let bucket = buckets.entry(key).or_insert((burst, now));
        let tokens = refilled(*bucket);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            Ok(())
        } else {
            *bucket = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }
}

/// The API's buckets.
pub(crate) struct RateLimiter {
    per_token: Option<Buckets<u64>>,
    per_source: Option<Buckets<IpAddr>>,
    /// Tokens are kept as keyed hashes, not as secrets.
    hasher: RandomState,
}

impl RateLimiter {
    pub fn new(limits: RateLimits) -> Self {
        RateLimiter {
            per_token: limits.per_token.map(Buckets::new),
            per_source: limits.per_source.map(Buckets::new),
            hasher: RandomState::new(),
        }
    }

    /// Spends a token of `source`'s bucket, then of `token`'s.
    pub fn check(&self, source: Option<IpAddr>, token: Option<&[u8]>) -> Result<(), ApiError> {
        let now = Instant::now();
        let refused = |limit: &'static str, bucket: TokenBucket, wait: Duration| {
            ApiError::RateLimited {
                limit,
                per_second: bucket.per_second,
                burst: bucket.burst,
                // Whole seconds, rounded up: Retry-After has no fractions.
                retry_after_seconds: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        };
        if let (Some(buckets), Some(source)) = (&self.per_source, source) {
            buckets
                .take(source, now)
                .map_err(|wait| refused("per_source", buckets.limit, wait))?;
        }
        if let (Some(buckets), Some(token)) = (&self.per_token, token) {
            buckets
                .take(self.hasher.hash_one(token), now)
                .map_err(|wait| refused("per_token", buckets.limit, wait))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let buckets = Buckets::new(TokenBucket {
            per_second: 2,
            burst: 3,
        });
        let start = Instant::now();
        for _ in 0..3 {
            buckets.take("a", start).unwrap();
        }
        let wait = buckets.take("a", start).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another key has its own bucket.
        buckets.take("b", start).unwrap();
        // Half a second later one token is back, and only one.
        let later = start + Duration::from_millis(500);
        buckets.take("a", later).unwrap();
        assert!(buckets.take("a", later).is_err());
    }
}
