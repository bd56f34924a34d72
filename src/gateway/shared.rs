//! Gateway state that must hold across the whole cluster: RFC 9421 signature nonces,
//! `private_key_jwt` assertion `jti`s, and per-subscription rate limits and daily quotas.
//!
//! Every node serves the same consumers behind a load balancer, so a replay sent to another
//! node, or calls spread over several nodes, must be seen by all of them. [`SharedState`] owns
//! this node's replay caches and rate limiter, and an *outbox* of what this node admitted:
//!
//! - admitting a nonce ([`SharedState::admit_nonce`]), a jti ([`SharedState::admit_jti`]) or a
//!   rate-limited call ([`SharedState::check_rate`]) also records it for the peers;
//! - the cluster's gossip task calls [`SharedState::take_outbox`] every interval (~50 ms) and
//!   sends the [`Outbox`] to every peer;
//! - a peer's batch is handed to [`SharedState::absorb`]: its nonces and jtis enter the replay
//!   caches, its usage is charged to the rate limiter as calls made elsewhere.
//!
//! The gateway does not know how batches travel (it never imports `cluster`); the cluster does
//! not know what they mean. Gossip is deliberately not Raft: these facts are commutative and
//! short-lived, the data plane must keep its checks when quorum is lost, and a lost batch costs
//! only its own entries (those nonces stay replayable at that peer within their window, those
//! calls are not charged there).
//!
//! Bounds, with N nodes and δ = gossip interval + one network delay (~50–60 ms on a LAN):
//! - **Nonces and jtis**: a replay at another node is refused once the batch arrives, i.e. at
//!   most δ after the first use; a replay at another node within δ can succeed.
//! - **Per-second limits**: every node's token bucket is charged for every call in the cluster,
//!   at most δ late. One node alone admits at most 2 × limit in any one second (a full burst
//!   plus a second of refill). Across N nodes the others may each spend their own burst, and
//!   admit calls for δ, before hearing of the rest: in any one second at most
//!   2 × limit + (N−1) × limit × (1 s + δ). For traffic already spread over the nodes (no burst
//!   from idle) the excess is only the calls in flight, of the order of (N−1) × limit × δ.
//!   What the nodes got ahead is then owed by every node as debt, so the long-run rate stays
//!   the limit: over W seconds at most limit × (W + 1 s) + (N−1) × limit × (1 s + δ). Debt is
//!   capped at [`MAX_DEBT_SECONDS`] of refill (exact for up to 5 nodes; beyond, part of a
//!   simultaneous burst is forgiven), so a node refuses for at most about five seconds after
//!   any batch.
//! - **Daily quotas**: exact up to the batches in flight (a quota can be overrun by the calls
//!   other nodes admitted in the last δ); around midnight, calls made on one node's previous
//!   day are not counted by a node already on the next day, and vice versa.
//! - **Token revocation** is not here: it is a Raft-replicated registry command, refused on every
//!   node once applied; `POST /revoke` answers only after the local node refuses the token.
//!
//! [`MAX_DEBT_SECONDS`]: super::rate_limit::MAX_DEBT_SECONDS
//!
//! Invariants:
//! - [`SharedState::absorb`] never records anything in the outbox (no echo between peers), and
//!   a batch from this node itself is ignored: what this node admits is already in its own
//!   caches, so its own batch never needs absorbing.
//! - Memory is bounded whether or not anyone calls [`SharedState::take_outbox`]: usage is a
//!   counter in each subscription's bucket (exact, never dropped); nonces and jtis waiting to be
//!   sent are capped, the oldest dropped first. Drops are counted in
//!   `lgsp_gateway_shared_dropped_total{kind,stage}` once gossip has started (before the first
//!   take nobody listens, so a single node does not report losses it cannot have).
//! - The replay caches keep their own caps (refusing rather than forgetting, see
//!   [`NonceCache`]); they now hold the whole cluster's nonces and jtis, so the caps are
//!   cluster-wide capacities. A peer's nonce or jti that does not fit is dropped and counted.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use chrono::{NaiveDate, Utc};
use prometheus::IntCounterVec;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::httpsig::{HttpSigError, NonceCache};
pub use super::rate_limit::Usage;
use super::rate_limit::{Limited, RateLimiter};
use crate::registry::{rules, RateLimit};

/// What one node admitted since its previous batch; sent to every peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbox {
    pub nonces: Vec<SeenNonce>,
    pub jtis: Vec<SeenJti>,
    /// One entry per subscription that had admitted calls; exact counts.
    pub usage: Vec<Usage>,
}

impl Outbox {
    pub fn is_empty(&self) -> bool {
        self.nonces.is_empty() && self.jtis.is_empty() && self.usage.is_empty()
    }
}

/// An RFC 9421 nonce admitted for a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenNonce {
    pub key_id: String,
    pub nonce: String,
    /// The signature's `created` (Unix seconds): the nonce is remembered until it leaves the window.
    pub created: i64,
}

/// A `private_key_jwt` assertion `jti` admitted for a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenJti {
    pub cred_id: String,
    pub jti: String,
    /// The assertion's `exp` (Unix seconds): the jti is remembered until shortly after.
    pub exp: i64,
}

/// Why an assertion's jti was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JtiRefused {
    /// Seen before, here or (once gossip arrived) on another node.
    Replayed,
    /// The cache holds as many jtis as it may; nothing is forgotten early to make room.
    Full,
}

/// Sizes; [`Caps::default`] is what the gateway uses.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Nonces kept for the peers between two takes (~600 bytes each at most).
    pub outbox_nonces: usize,
    /// Jtis kept for the peers between two takes (an assertion is at most 16 KiB).
    pub outbox_jtis: usize,
    /// Nonces remembered (this node's and the peers'), see [`NonceCache::new`].
    pub nonce_cache: usize,
    /// Jtis remembered (this node's and the peers').
    pub jti_cache: usize,
}

impl Default for Caps {
    fn default() -> Caps {
        // 16 384 nonces per 50 ms is ~330 000 signed requests a second, far above one node's
        // capacity: the cap bites only when nobody takes the outbox.
        Caps { outbox_nonces: 16_384, outbox_jtis: 1_024, nonce_cache: 1_000_000, jti_cache: 100_000 }
    }
}

/// One reading of the clocks, passed in so that tests decide the time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Unix seconds (signature `created`, assertion `exp`).
    pub unix: i64,
    /// For token buckets.
    pub instant: Instant,
    /// The local (Asia/Ho_Chi_Minh) day, for daily quotas.
    pub today: NaiveDate,
}

impl Clock {
    pub fn now() -> Clock {
        let utc = Utc::now();
        Clock { unix: utc.timestamp(), instant: Instant::now(), today: rules::local_date(utc) }
    }
}

/// This node's share of the cluster-wide gateway state; see the module documentation.
pub struct SharedState {
    /// This node's name: a batch claiming to come from it is ignored.
    node: String,
    nonces: NonceCache,
    jtis: JtiCache,
    limiter: RateLimiter,
    /// Nonces and jtis admitted here and not yet taken.
    pending: Mutex<Pending>,
    caps: Caps,
    /// Set by the first take: from then on, drops mean lost replication and are counted.
    gossiping: AtomicBool,
    dropped: IntCounterVec,
}

#[derive(Default)]
struct Pending {
    nonces: VecDeque<SeenNonce>,
    jtis: VecDeque<SeenJti>,
}

impl SharedState {
    /// State for node `node`, with signatures accepted within ±`nonce_window_secs` and
    /// [`Caps::default`]. `dropped` is `lgsp_gateway_shared_dropped_total`, labelled
    /// `kind` (`nonce`, `jti`) and `stage` (`outbox`, `absorb`).
    pub fn new(node: &str, nonce_window_secs: i64, dropped: IntCounterVec) -> SharedState {
        SharedState::with_caps(node, nonce_window_secs, Caps::default(), dropped)
    }

    pub fn with_caps(node: &str, nonce_window_secs: i64, caps: Caps, dropped: IntCounterVec) -> SharedState {
        SharedState {
            node: node.to_owned(),
            nonces: NonceCache::new(nonce_window_secs, caps.nonce_cache),
            jtis: JtiCache::new(caps.jti_cache),
            limiter: RateLimiter::default(),
            pending: Mutex::new(Pending::default()),
            caps,
            gossiping: AtomicBool::new(false),
            dropped,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Admits an RFC 9421 nonce for `key_id` (see [`NonceCache::admit`]) and records it for the
    /// peers.
    pub fn admit_nonce(&self, key_id: &str, nonce: &str, created: i64, now: i64) -> Result<(), HttpSigError> {
        self.nonces.admit(key_id, nonce, created, now)?;
        let seen = SeenNonce { key_id: key_id.to_owned(), nonce: nonce.to_owned(), created };
        let overflow = {
            let mut p = self.pending();
            push_capped(&mut p.nonces, seen, self.caps.outbox_nonces)
        };
        self.count_outbox_drop("nonce", overflow);
        Ok(())
    }

    /// Admits an assertion's `jti` for credential `cred_id`, remembered until `exp` (plus a
    /// minute of leeway) has passed, and records it for the peers.
    pub fn admit_jti(&self, cred_id: &str, jti: &str, exp: i64, now: i64) -> Result<(), JtiRefused> {
        self.jtis.admit(cred_id, jti, exp, now)?;
        let seen = SeenJti { cred_id: cred_id.to_owned(), jti: jti.to_owned(), exp };
        let overflow = {
            let mut p = self.pending();
            push_capped(&mut p.jtis, seen, self.caps.outbox_jtis)
        };
        self.count_outbox_drop("jti", overflow);
        Ok(())
    }

    /// Takes one call from the subscription's allowance (see [`RateLimiter::check`]); an
    /// admitted call is counted for the peers.
    pub fn check_rate(
        &self,
        sub_id: &str,
        limit: &RateLimit,
        now: Instant,
        today: NaiveDate,
        secs_to_midnight: u64,
    ) -> Result<(), Limited> {
        self.limiter.check(sub_id, limit, now, today, secs_to_midnight)
    }

    /// Everything admitted here since the previous take, for the gossip to send to every peer;
    /// the outbox is left empty.
    pub fn take_outbox(&self) -> Outbox {
        self.gossiping.store(true, Ordering::Relaxed);
        let (nonces, jtis) = {
            let mut p = self.pending();
            (Vec::from(std::mem::take(&mut p.nonces)), Vec::from(std::mem::take(&mut p.jtis)))
        };
        Outbox { nonces, jtis, usage: self.limiter.take_usage() }
    }

    /// Applies a peer's batch, reading the clocks now.
    pub fn absorb(&self, from_node: &str, batch: Outbox) {
        self.absorb_at(from_node, batch, Clock::now());
    }

    /// Applies a peer's batch as of `at`: its nonces and jtis are refused here from now on, its
    /// usage is charged to the buckets and quotas. Records nothing in the outbox.
    pub fn absorb_at(&self, from_node: &str, batch: Outbox, at: Clock) {
        if from_node == self.node {
            tracing::warn!(node = from_node, "ignored a gateway gossip batch from this node itself");
            return;
        }
        let mut lost_nonces = 0u64;
        for n in &batch.nonces {
            if self.nonces.remember(&n.key_id, &n.nonce, n.created, at.unix).is_err() {
                lost_nonces += 1;
            }
        }
        let mut lost_jtis = 0u64;
        for j in &batch.jtis {
            if self.jtis.remember(&j.cred_id, &j.jti, j.exp, at.unix).is_err() {
                lost_jtis += 1;
            }
        }
        for u in &batch.usage {
            self.limiter.charge(u, at.instant, at.today);
        }
        if lost_nonces + lost_jtis > 0 {
            tracing::warn!(from = from_node, lost_nonces, lost_jtis, "replay cache full: a peer's nonces or jtis were not remembered");
            self.dropped.with_label_values(&["nonce", "absorb"]).inc_by(lost_nonces);
            self.dropped.with_label_values(&["jti", "absorb"]).inc_by(lost_jtis);
        }
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // The queues stay consistent whatever panicked while holding the lock.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count_outbox_drop(&self, kind: &str, overflow: bool) {
        if overflow && self.gossiping.load(Ordering::Relaxed) {
            self.dropped.with_label_values(&[kind, "outbox"]).inc();
        }
    }
}

/// Appends, dropping the oldest entry if `cap` is exceeded; `true` if one was dropped.
fn push_capped<T>(q: &mut VecDeque<T>, item: T, cap: usize) -> bool {
    q.push_back(item);
    if q.len() > cap.max(1) {
        q.pop_front();
        return true;
    }
    false
}

/// How long after its `exp` a jti is still remembered (the assertion's validation leeway is
/// 30 s, so it cannot be presented again after this).
const JTI_GRACE_SECS: i64 = 60;

/// Assertion `jti`s seen recently (RFC 7523 §3), as SHA-256 digests of (credential, jti) so that
/// each entry has a fixed size whatever the client sends.
struct JtiCache {
    inner: Mutex<JtiInner>,
    max: usize,
}

#[derive(Default)]
struct JtiInner {
    seen: HashMap<[u8; 32], i64>,
    by_expiry: BTreeSet<(i64, [u8; 32])>,
}

impl JtiCache {
    fn new(max: usize) -> JtiCache {
        JtiCache { inner: Mutex::new(JtiInner::default()), max: max.max(1) }
    }

    fn admit(&self, cred_id: &str, jti: &str, exp: i64, now: i64) -> Result<(), JtiRefused> {
        self.insert(cred_id, jti, exp, now, true)
    }

    /// Remembers a peer's jti; already known or already expired is fine.
    fn remember(&self, cred_id: &str, jti: &str, exp: i64, now: i64) -> Result<(), JtiRefused> {
        if exp.saturating_add(JTI_GRACE_SECS) <= now {
            return Ok(());
        }
        self.insert(cred_id, jti, exp, now, false)
    }

    fn insert(&self, cred_id: &str, jti: &str, exp: i64, now: i64, refuse_known: bool) -> Result<(), JtiRefused> {
        let mut h = Sha256::new();
        h.update((cred_id.len() as u64).to_be_bytes());
        h.update(cred_id.as_bytes());
        h.update(jti.as_bytes());
        let id: [u8; 32] = h.finalize().into();
        let until = exp.saturating_add(JTI_GRACE_SECS);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(&(t, old)) = g.by_expiry.first() {
            if t > now {
                break;
            }
            g.by_expiry.pop_first();
            g.seen.remove(&old);
        }
        if g.seen.contains_key(&id) {
            return if refuse_known { Err(JtiRefused::Replayed) } else { Ok(()) };
        }
        if g.seen.len() >= self.max {
            return Err(JtiRefused::Full);
        }
        g.seen.insert(id, until);
        g.by_expiry.insert((until, id));
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;
    use std::time::Duration;

    const NOW: i64 = 1_900_000_000;
    const WINDOW: i64 = 300;

    fn counter() -> IntCounterVec {
        IntCounterVec::new(Opts::new("lgsp_gateway_shared_dropped_total", "test"), &["kind", "stage"]).unwrap()
    }

    fn node(name: &str) -> SharedState {
        SharedState::new(name, WINDOW, counter())
    }

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2030, 3, 14).unwrap()
    }

    fn clock(t0: Instant, ms: u64) -> Clock {
        Clock { unix: NOW + i64::try_from(ms / 1000).unwrap(), instant: t0 + Duration::from_millis(ms), today: day() }
    }

    /// Node `to` absorbs what `from` admitted since its last take.
    fn gossip(from: &SharedState, to: &SharedState, at: Clock) {
        to.absorb_at(from.node(), from.take_outbox(), at);
    }

    #[test]
    fn a_nonce_admitted_on_one_node_is_refused_on_another_after_gossip() {
        let (a, b) = (node("a"), node("b"));
        let t0 = Instant::now();
        assert_eq!(a.admit_nonce("key-1", "n-1", NOW, NOW), Ok(()));
        assert_eq!(a.admit_nonce("key-1", "n-1", NOW, NOW), Err(HttpSigError::NonceReplayed), "replay at the same node");
        gossip(&a, &b, clock(t0, 50));
        assert_eq!(b.admit_nonce("key-1", "n-1", NOW, NOW), Err(HttpSigError::NonceReplayed), "replay at another node");
        // The pair is what counts: the same nonce under another key is fresh.
        assert_eq!(b.admit_nonce("key-2", "n-1", NOW, NOW), Ok(()));
        // And it travels the other way too.
        gossip(&b, &a, clock(t0, 100));
        assert_eq!(a.admit_nonce("key-2", "n-1", NOW, NOW), Err(HttpSigError::NonceReplayed));
    }

    #[test]
    fn a_replay_inside_the_gossip_delay_is_the_documented_gap() {
        let (a, b) = (node("a"), node("b"));
        assert_eq!(a.admit_nonce("key-1", "n-1", NOW, NOW), Ok(()));
        // Before A's batch reaches B, B cannot know: this is the δ bound in the module docs.
        assert_eq!(b.admit_nonce("key-1", "n-1", NOW, NOW), Ok(()));
    }

    #[test]
    fn an_assertion_jti_admitted_on_one_node_is_refused_on_another_after_gossip() {
        let (a, b) = (node("a"), node("b"));
        let t0 = Instant::now();
        let exp = NOW + 300;
        assert_eq!(a.admit_jti("cred-1", "jti-1", exp, NOW), Ok(()));
        assert_eq!(a.admit_jti("cred-1", "jti-1", exp, NOW), Err(JtiRefused::Replayed));
        gossip(&a, &b, clock(t0, 50));
        assert_eq!(b.admit_jti("cred-1", "jti-1", exp, NOW), Err(JtiRefused::Replayed));
        assert_eq!(b.admit_jti("cred-2", "jti-1", exp, NOW), Ok(()), "another credential's jti space");
        // Remembered until a minute after exp, then forgotten (the assertion is refused as expired).
        assert_eq!(b.admit_jti("cred-1", "jti-1", exp, exp + JTI_GRACE_SECS - 1), Err(JtiRefused::Replayed));
        assert_eq!(b.admit_jti("cred-1", "jti-1", exp, exp + JTI_GRACE_SECS), Ok(()));
        // A peer's jti that has already expired is not kept.
        let c = node("c");
        c.absorb_at(
            "a",
            Outbox { jtis: vec![SeenJti { cred_id: "x".into(), jti: "y".into(), exp: NOW - 61 }], ..Outbox::default() },
            clock(t0, 0),
        );
        assert_eq!(c.jtis.len(), 0);
    }

    #[test]
    fn the_jti_cache_refuses_when_full_rather_than_forgetting() {
        let caps = Caps { jti_cache: 2, ..Caps::default() };
        let a = SharedState::with_caps("a", WINDOW, caps, counter());
        assert_eq!(a.admit_jti("c", "1", NOW + 10, NOW), Ok(()));
        assert_eq!(a.admit_jti("c", "2", NOW + 10, NOW), Ok(()));
        assert_eq!(a.admit_jti("c", "3", NOW + 10, NOW), Err(JtiRefused::Full));
        // A peer's jti that does not fit is dropped and counted.
        let t0 = Instant::now();
        let batch = Outbox { jtis: vec![SeenJti { cred_id: "c".into(), jti: "4".into(), exp: NOW + 10 }], ..Outbox::default() };
        a.absorb_at("b", batch, clock(t0, 0));
        assert_eq!(a.dropped.with_label_values(&["jti", "absorb"]).get(), 1);
        // Room comes back once entries expire.
        assert_eq!(a.admit_jti("c", "3", NOW + 200, NOW + 71), Ok(()));
    }

    /// One consumer calling a subscription limited to `limit`/s through `n` nodes; `calls(ms)`
    /// says which nodes receive a call in that millisecond. Every `interval_ms` each node's
    /// outbox reaches every other node `delay_ms` later. Returns the millisecond of every
    /// admitted call.
    fn simulate(n: usize, limit: u32, interval_ms: u64, delay_ms: u64, calls: impl Fn(u64) -> Vec<usize>, until_ms: u64) -> Vec<u64> {
        let nodes: Vec<SharedState> = (0..n).map(|i| node(&format!("n{i}"))).collect();
        let t0 = Instant::now();
        let lim = RateLimit { per_second: Some(limit), per_day: None };
        let mut in_flight: Vec<(u64, usize, Outbox)> = Vec::new();
        let mut admitted = Vec::new();
        for ms in 0..until_ms {
            let at = clock(t0, ms);
            let (due, later): (Vec<_>, Vec<_>) = in_flight.into_iter().partition(|(when, _, _)| *when <= ms);
            in_flight = later;
            for (_, from, batch) in due {
                for to in nodes.iter().filter(|nd| nd.node() != format!("n{from}")) {
                    to.absorb_at(&format!("n{from}"), batch.clone(), at);
                }
            }
            for i in calls(ms) {
                if nodes[i % n].check_rate("sub-1", &lim, at.instant, at.today, 100).is_ok() {
                    admitted.push(ms);
                }
            }
            if ms % interval_ms == interval_ms - 1 {
                for (i, nd) in nodes.iter().enumerate() {
                    in_flight.push((ms + delay_ms, i, nd.take_outbox()));
                }
            }
        }
        admitted
    }

    /// The most calls admitted in any window of `window_ms` milliseconds.
    fn busiest(admitted: &[u64], window_ms: u64) -> usize {
        admitted.iter().map(|&s| admitted.iter().filter(|&&t| t >= s && t < s + window_ms).count()).max().unwrap_or(0)
    }

    /// δ in the simulations: a 50 ms gossip interval and a 10 ms network delay.
    const INTERVAL_MS: u64 = 50;
    const DELAY_MS: u64 = 10;
    const DELTA_S: f64 = 0.06;
    const LIMIT: u32 = 10;

    /// Which nodes receive a call in a given millisecond.
    type Pattern = Box<dyn Fn(u64) -> Vec<usize>>;

    /// Call patterns: round robin every millisecond; a burst of 100 calls at every node at once
    /// every `period` ms; and pseudo-random calls (a fixed LCG, so the test is deterministic).
    fn patterns(n: usize) -> Vec<(String, Pattern)> {
        let mut p: Vec<(String, Pattern)> = vec![("round robin".into(), Box::new(|ms| vec![ms as usize]))];
        for period in [1000u64, 2000, 5000] {
            p.push((
                format!("bursts every {period} ms"),
                Box::new(move |ms| if ms % period == 0 { (0..n).flat_map(|i| [i; 100]).collect() } else { vec![] }),
            ));
        }
        for seed in 1..=4u64 {
            p.push((
                format!("random {seed}"),
                Box::new(move |ms| {
                    let x = (ms ^ (seed << 32)).wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407) >> 33;
                    // About one millisecond in eight gets up to four calls.
                    if x % 8 == 0 {
                        (0..(x / 8 % 4 + 1) as usize).map(|k| (x as usize / 32 + k) % n).collect()
                    } else {
                        vec![]
                    }
                }),
            ));
        }
        p
    }

    #[test]
    fn two_nodes_share_one_per_second_limit() {
        let (a, b) = (node("a"), node("b"));
        let t0 = Instant::now();
        let lim = RateLimit { per_second: Some(LIMIT), per_day: None };
        let call = |nd: &SharedState, ms: u64| {
            let at = clock(t0, ms);
            nd.check_rate("sub-1", &lim, at.instant, at.today, 100)
        };
        // Before they hear of each other, each node spends its own burst: limit + (N−1) × limit.
        let mut admitted = 0;
        for ms in 0..20 {
            admitted += usize::from(call(&a, ms).is_ok()) + usize::from(call(&b, ms).is_ok());
        }
        assert_eq!(admitted, 2 * LIMIT as usize);
        gossip(&a, &b, clock(t0, 50));
        gossip(&b, &a, clock(t0, 50));
        // Then each owes the other's burst, and refuses for the rest of the second.
        assert_eq!(call(&a, 60), Err(Limited::PerSecond { retry_after: 2 }));
        for ms in 60..1000 {
            admitted += usize::from(call(&a, ms).is_ok()) + usize::from(call(&b, ms).is_ok());
        }
        assert!(admitted <= (LIMIT + LIMIT) as usize, "{admitted} calls admitted in the first second");
        assert_eq!(admitted, 20);
        // Once the debt is repaid, calls are admitted again.
        assert_eq!(call(&a, 1200), Ok(()));
    }

    #[test]
    fn spreading_calls_over_nodes_stays_within_the_documented_bound() {
        let limit = f64::from(LIMIT);
        for n in [1usize, 2, 3, 5] {
            let other_nodes = (n - 1) as f64 * limit * (1.0 + DELTA_S);
            for (name, pattern) in patterns(n) {
                let admitted = simulate(n, LIMIT, INTERVAL_MS, DELAY_MS, pattern, 20_000);
                // Any one second: one node's 2 × limit, plus the other nodes' bursts and calls in flight.
                let one_second = busiest(&admitted, 1000) as f64;
                assert!(one_second <= 2.0 * limit + other_nodes, "{n} nodes, {name}: {one_second} calls in one second");
                // Twenty seconds: the long-run rate stays the limit (what the others got ahead is owed).
                let total = admitted.len() as f64;
                assert!(total <= limit * 21.0 + other_nodes, "{n} nodes, {name}: {total} calls in 20 s");
            }
        }
        // A single node is the token bucket it always was.
        let one = simulate(1, LIMIT, INTERVAL_MS, DELAY_MS, |ms| vec![ms as usize], 20_000);
        assert_eq!((busiest(&one, 1000), one.len()), (19, 209));
    }

    #[test]
    fn a_daily_quota_is_used_up_by_calls_at_other_nodes() {
        let (a, b) = (node("a"), node("b"));
        let t0 = Instant::now();
        let lim = RateLimit { per_second: None, per_day: Some(5) };
        let at = clock(t0, 0);
        for _ in 0..3 {
            assert_eq!(a.check_rate("sub-1", &lim, at.instant, at.today, 3600), Ok(()));
        }
        for _ in 0..2 {
            assert_eq!(b.check_rate("sub-1", &lim, at.instant, at.today, 3600), Ok(()));
        }
        gossip(&a, &b, clock(t0, 50));
        gossip(&b, &a, clock(t0, 50));
        let at = clock(t0, 60);
        assert_eq!(a.check_rate("sub-1", &lim, at.instant, at.today, 3600), Err(Limited::Daily { retry_after: 3600 }));
        assert_eq!(b.check_rate("sub-1", &lim, at.instant, at.today, 3600), Err(Limited::Daily { retry_after: 3600 }));
        // A node that never served the subscription learns its usage too.
        let c = node("c");
        c.absorb_at(
            "a",
            Outbox { usage: vec![Usage { sub_id: "sub-1".into(), day: day(), calls: 5, limit: lim }], ..Outbox::default() },
            at,
        );
        assert_eq!(c.check_rate("sub-1", &lim, at.instant, at.today, 3600), Err(Limited::Daily { retry_after: 3600 }));
        // The next day starts afresh.
        let tomorrow = day().succ_opt().unwrap();
        assert_eq!(a.check_rate("sub-1", &lim, at.instant, tomorrow, 3600), Ok(()));
    }

    #[test]
    fn the_outbox_is_capped_but_usage_stays_exact() {
        let caps = Caps { outbox_nonces: 3, outbox_jtis: 2, ..Caps::default() };
        let a = SharedState::with_caps("a", WINDOW, caps, counter());
        let t0 = Instant::now();
        let at = clock(t0, 0);
        let lim = RateLimit { per_second: Some(1_000_000), per_day: Some(1_000_000) };
        // Nobody has taken the outbox yet (a single node): it stays bounded, and reports no loss.
        for i in 0..5 {
            assert_eq!(a.admit_nonce("k", &format!("n{i}"), NOW, NOW), Ok(()));
            assert_eq!(a.admit_jti("c", &format!("j{i}"), NOW + 60, NOW), Ok(()));
        }
        for _ in 0..1000 {
            assert_eq!(a.check_rate("sub-1", &lim, at.instant, at.today, 100), Ok(()));
        }
        assert_eq!(a.pending().nonces.len(), 3);
        assert_eq!(a.dropped.with_label_values(&["nonce", "outbox"]).get(), 0);
        let first = a.take_outbox();
        // The oldest were dropped; usage is exact.
        assert_eq!(first.nonces.iter().map(|n| n.nonce.as_str()).collect::<Vec<_>>(), ["n2", "n3", "n4"]);
        assert_eq!(first.jtis.iter().map(|j| j.jti.as_str()).collect::<Vec<_>>(), ["j3", "j4"]);
        assert_eq!(first.usage, vec![Usage { sub_id: "sub-1".into(), day: day(), calls: 1000, limit: lim }]);
        // Once gossip runs, an overflow means lost replication and is counted.
        for i in 5..10 {
            assert_eq!(a.admit_nonce("k", &format!("n{i}"), NOW, NOW), Ok(()));
        }
        assert_eq!(a.dropped.with_label_values(&["nonce", "outbox"]).get(), 2);
        assert_eq!(a.take_outbox().nonces.len(), 3);
        assert!(a.take_outbox().is_empty(), "a take leaves the outbox empty");
    }

    #[test]
    fn absorbing_never_echoes_and_a_nodes_own_batch_is_ignored() {
        let (a, b) = (node("a"), node("b"));
        let t0 = Instant::now();
        let at = clock(t0, 0);
        let lim = RateLimit { per_second: Some(3), per_day: Some(100) };
        assert_eq!(a.admit_nonce("k", "n", NOW, NOW), Ok(()));
        assert_eq!(a.admit_jti("c", "j", NOW + 60, NOW), Ok(()));
        assert_eq!(a.check_rate("sub-1", &lim, at.instant, at.today, 100), Ok(()));
        let batch = a.take_outbox();
        assert_eq!((batch.nonces.len(), batch.jtis.len(), batch.usage.len()), (1, 1, 1));
        b.absorb_at("a", batch.clone(), at);
        assert!(b.take_outbox().is_empty(), "b must not send a's facts back");
        // Nothing to send back to b either, so two nodes exchanging batches fall silent.
        assert!(a.take_outbox().is_empty());
        // A node's own batch is already in its caches; fed back, it is ignored (not charged twice).
        a.absorb_at("a", batch, at);
        assert_eq!(a.check_rate("sub-1", &lim, at.instant, at.today, 100), Ok(()));
        assert_eq!(a.check_rate("sub-1", &lim, at.instant, at.today, 100), Ok(()));
        assert_eq!(a.check_rate("sub-1", &lim, at.instant, at.today, 100), Err(Limited::PerSecond { retry_after: 1 }));
    }
}
