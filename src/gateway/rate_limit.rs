//! Per-subscription traffic control (G6): a token bucket for `per_second` and a daily quota
//! (`per_day`, reset at midnight Asia/Ho_Chi_Minh).
//!
//! Across the cluster (see `shared`): every call this node admits is also counted as *unsent*
//! usage, which [`RateLimiter::take_usage`] hands to the gossip; usage other nodes admitted is
//! charged here by [`RateLimiter::charge`], so the bucket and the quota count the whole
//! cluster's calls, at most one gossip interval plus one network delay late.
//!
//! Invariants: state is a sharded map keyed by subscription id, so unrelated subscriptions
//! never contend on one lock; a refusal says when to retry; a bucket holds at most `per_second`
//! tokens and, after remote usage, owes at most [`MAX_DEBT_SECONDS`] of refill, so however
//! large a peer's batch, this node refuses for at most about five seconds; unsent usage is a
//! counter per bucket, so it is exact and costs no memory beyond the bucket itself.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::registry::RateLimit;

const SHARDS: usize = 32;

/// Most refill a bucket may owe after other nodes' usage, in seconds. Genuine debt is at most
/// (N−1) seconds (every other node spent its full burst before hearing of the rest), so with up
/// to 5 nodes nothing genuine is forgiven and the long-run rate stays exact; the cap only stops
/// a faulty peer's batch from locking a subscription out for longer.
pub const MAX_DEBT_SECONDS: f64 = 4.0;

struct Bucket {
    /// Calls that may be made now; negative after other nodes' usage arrived (a debt).
    tokens: f64,
    /// When `tokens` was last brought up to date (never moves backwards).
    last: Instant,
    /// The local day `used_today` counts.
    day: NaiveDate,
    /// Calls made cluster-wide on `day`, as far as this node knows.
    used_today: u64,
    /// The limit last seen for this subscription: remote usage is charged with it.
    limit: RateLimit,
    /// Calls admitted here since the last [`RateLimiter::take_usage`].
    unsent: u64,
}

impl Bucket {
    fn new(limit: &RateLimit, now: Instant, today: NaiveDate) -> Bucket {
        let burst = f64::from(limit.per_second.unwrap_or(1));
        Bucket { tokens: burst, last: now, day: today, used_today: 0, limit: *limit, unsent: 0 }
    }

    /// Resets the quota on a new day and refills the bucket up to `now`.
    fn advance(&mut self, now: Instant, today: NaiveDate) {
        if self.day != today {
            self.day = today;
            self.used_today = 0;
        }
        if let Some(rate) = self.limit.per_second {
            let rate = f64::from(rate.max(1));
            let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(rate);
        }
        self.last = self.last.max(now);
    }
}

/// Why a call was refused and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    PerSecond { retry_after: u64 },
    Daily { retry_after: u64 },
}

/// Calls one node admitted for one subscription since its previous batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub sub_id: String,
    /// The admitting node's local day of these calls; a node on another day does not count them
    /// toward its quota (only toward its per-second bucket).
    pub day: NaiveDate,
    pub calls: u64,
    /// The limit the admitting node applied; used only if this node has no bucket for the
    /// subscription yet (otherwise its own view's limit counts).
    pub limit: RateLimit,
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

fn unlimited(limit: &RateLimit) -> bool {
    limit.per_second.is_none() && limit.per_day.is_none()
}

impl RateLimiter {
    /// Takes one call from the subscription's allowance, or says why not.
    /// `secs_to_midnight` is the wait until the daily quota resets. An admitted call is also
    /// counted as unsent usage for [`RateLimiter::take_usage`].
    pub fn check(&self, sub_id: &str, limit: &RateLimit, now: Instant, today: NaiveDate, secs_to_midnight: u64) -> Result<(), Limited> {
        if unlimited(limit) {
            return Ok(());
        }
        let mut shard = self.lock(sub_id);
        let b = shard.entry(sub_id.to_owned()).or_insert_with(|| Bucket::new(limit, now, today));
        b.limit = *limit;
        b.advance(now, today);
        if let Some(per_day) = limit.per_day {
            if b.used_today >= per_day {
                return Err(Limited::Daily { retry_after: secs_to_midnight.max(1) });
            }
        }
        if let Some(rate) = limit.per_second {
            let rate = f64::from(rate.max(1));
            if b.tokens < 1.0 {
                let wait = ((1.0 - b.tokens) / rate).ceil().max(1.0) as u64;
                return Err(Limited::PerSecond { retry_after: wait });
            }
            b.tokens -= 1.0;
        }
        b.used_today += 1;
        b.unsent = b.unsent.saturating_add(1);
        Ok(())
    }

    /// The calls admitted here since the previous call, one entry per subscription; the
    /// counters are reset. Exact: nothing is dropped, and the result is at most one entry per
    /// rate-limited subscription this node has served.
    pub fn take_usage(&self) -> Vec<Usage> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (id, b) in shard.iter_mut().filter(|(_, b)| b.unsent > 0) {
                out.push(Usage { sub_id: id.clone(), day: b.day, calls: b.unsent, limit: b.limit });
                b.unsent = 0;
            }
        }
        out
    }

    /// Charges calls another node admitted: the bucket loses that many tokens (down to a debt of
    /// [`MAX_DEBT_SECONDS`] of refill) and, if they were made on this node's `today`, the daily quota
    /// counts them. Never counts them as unsent (no echo).
    pub fn charge(&self, usage: &Usage, now: Instant, today: NaiveDate) {
        if usage.calls == 0 || unlimited(&usage.limit) {
            return;
        }
        let mut shard = self.lock(&usage.sub_id);
        let b = shard.entry(usage.sub_id.clone()).or_insert_with(|| Bucket::new(&usage.limit, now, today));
        b.advance(now, today);
        if usage.day == b.day {
            b.used_today = b.used_today.saturating_add(usage.calls);
        }
        if let Some(rate) = b.limit.per_second {
            let rate = f64::from(rate.max(1));
            // u64 -> f64 rounds only above 2^53 calls, far beyond the debt bound anyway.
            b.tokens = (b.tokens - usage.calls as f64).max(-rate * MAX_DEBT_SECONDS);
        }
    }

    fn lock(&self, sub_id: &str) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        self.shards[shard_of(sub_id)].lock().unwrap_or_else(|e| e.into_inner())
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
        assert!(rl.take_usage().iter().all(|u| u.sub_id == "s"));
    }

    #[test]
    fn usage_is_taken_exactly_once() {
        let rl = RateLimiter::default();
        let day = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let t = Instant::now();
        let lim = RateLimit { per_second: Some(100), per_day: None };
        for _ in 0..7 {
            assert!(rl.check("s", &lim, t, day, 100).is_ok());
        }
        assert!(rl.check("q", &RateLimit { per_second: None, per_day: Some(1) }, t, day, 100).is_ok());
        assert!(rl.check("q", &RateLimit { per_second: None, per_day: Some(1) }, t, day, 100).is_err(), "refusals are not usage");
        let mut u = rl.take_usage();
        u.sort_by(|a, b| a.sub_id.cmp(&b.sub_id));
        assert_eq!(u.iter().map(|u| (u.sub_id.as_str(), u.calls)).collect::<Vec<_>>(), [("q", 1), ("s", 7)]);
        assert!(rl.take_usage().is_empty());
    }

    #[test]
    fn remote_usage_is_a_bounded_debt() {
        let rl = RateLimiter::default();
        let day = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let t = Instant::now();
        let lim = RateLimit { per_second: Some(10), per_day: Some(10_000_000) };
        assert!(rl.check("s", &lim, t, day, 100).is_ok());
        // A huge batch (a faulty peer, say) costs at most MAX_DEBT_SECONDS of refill.
        rl.charge(&Usage { sub_id: "s".into(), day, calls: 1_000_000, limit: lim }, t, day);
        assert_eq!(rl.check("s", &lim, t, day, 100), Err(Limited::PerSecond { retry_after: 5 }));
        let repaid = t + Duration::from_millis(4_100);
        assert!(rl.check("s", &lim, repaid, day, 100).is_ok());
        // The quota counts all of it, and charged calls are not sent on (no echo).
        assert_eq!(rl.take_usage().iter().map(|u| u.calls).sum::<u64>(), 2);
        // Usage from another day does not count toward this day's quota.
        let q = RateLimit { per_second: None, per_day: Some(2) };
        rl.charge(&Usage { sub_id: "d".into(), day: day.pred_opt().unwrap(), calls: 5, limit: q }, t, day);
        assert!(rl.check("d", &q, t, day, 100).is_ok());
        rl.charge(&Usage { sub_id: "d".into(), day, calls: 1, limit: q }, t, day);
        assert_eq!(rl.check("d", &q, t, day, 100), Err(Limited::Daily { retry_after: 100 }));
    }
}
