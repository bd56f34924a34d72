//! Per-subscription traffic control (G6): a token bucket for `per_second` and a daily quota
//! (`per_day`, reset at midnight Asia/Ho_Chi_Minh).
//!
//! Invariants: this node's counters only (cluster-wide sharing is the cluster issue's); state
//! is a sharded map keyed by subscription id, so unrelated subscriptions never contend on one
//! lock; a refusal says when to retry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use chrono::NaiveDate;

use crate::registry::RateLimit;

const SHARDS: usize = 32;

struct Bucket {
    tokens: f64,
    last: Instant,
    day: NaiveDate,
    used_today: u64,
}

/// Why a call was refused and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    PerSecond { retry_after: u64 },
    Daily { retry_after: u64 },
}

pub struct RateLimiter {
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect() }
    }
}

fn shard_of(key: &str) -> usize {
    // FNV-1a: cheap and good enough to spread subscription ids.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

impl RateLimiter {
    /// Takes one call from the subscription's allowance, or says why not.
    /// `secs_to_midnight` is the wait until the daily quota resets.
    pub fn check(&self, sub_id: &str, limit: &RateLimit, now: Instant, today: NaiveDate, secs_to_midnight: u64) -> Result<(), Limited> {
        if limit.per_second.is_none() && limit.per_day.is_none() {
            return Ok(());
        }
        let mut shard = self.shards[shard_of(sub_id)].lock().unwrap_or_else(|e| e.into_inner());
        if !shard.contains_key(sub_id) {
            let burst = f64::from(limit.per_second.unwrap_or(1));
            shard.insert(sub_id.to_owned(), Bucket { tokens: burst, last: now, day: today, used_today: 0 });
        }
        let Some(b) = shard.get_mut(sub_id) else { return Ok(()) };
        if b.day != today {
            b.day = today;
            b.used_today = 0;
        }
        if let Some(per_day) = limit.per_day {
            if b.used_today >= per_day {
                return Err(Limited::Daily { retry_after: secs_to_midnight.max(1) });
            }
        }
        if let Some(rate) = limit.per_second {
            let rate = f64::from(rate.max(1));
            let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
            b.tokens = (b.tokens + elapsed * rate).min(rate);
            b.last = now;
            if b.tokens < 1.0 {
                let wait = ((1.0 - b.tokens) / rate).ceil().max(1.0) as u64;
                return Err(Limited::PerSecond { retry_after: wait });
            }
            b.tokens -= 1.0;
        }
        b.used_today += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_and_quota() {
        let rl = RateLimiter::default();
        let day = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let t = Instant::now();
        let lim = RateLimit { per_second: Some(2), per_day: Some(5) };
        assert!(rl.check("s", &lim, t, day, 100).is_ok());
        assert!(rl.check("s", &lim, t, day, 100).is_ok());
        assert_eq!(rl.check("s", &lim, t, day, 100), Err(Limited::PerSecond { retry_after: 1 }));
        let t2 = t + Duration::from_secs(1);
        assert!(rl.check("s", &lim, t2, day, 100).is_ok());
        assert!(rl.check("s", &lim, t2, day, 100).is_ok());
        let t3 = t + Duration::from_secs(3);
        assert!(rl.check("s", &lim, t3, day, 100).is_ok());
        assert_eq!(rl.check("s", &lim, t3, day, 100), Err(Limited::Daily { retry_after: 100 }));
        // A new day resets the quota.
        assert!(rl.check("s", &lim, t3 + Duration::from_secs(5), day.succ_opt().unwrap(), 100).is_ok());
        // Unlimited subscriptions are never refused and keep no state.
        assert!(rl.check("u", &RateLimit::default(), t, day, 1).is_ok());
    }
}
