//! The scheduler: runs this node's targets at their intervals from one task and a timer heap,
//! feeds results to each target's [`Tracker`], keeps the latest result per target and emits
//! status-change events.
//!
//! Invariants: at most one check per target is scheduled at a time (a stale heap entry of a
//! removed or replaced target is skipped by generation); checks in flight are bounded by a
//! semaphore; a target's first check is offset by a hash of its id within its interval, so
//! many targets with one interval spread evenly; a scheduler behind by more than an interval
//! skips the missed runs (counted in [`Runner::late`]) instead of bursting. Which targets this
//! node owns is decided by the caller (`assign`), and events are sent to the caller, who
//! deduplicates them cluster-wide (Raft) before anyone is notified.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use super::check::{Checker, Outcome};
use super::history::Sample;
use super::state::{Event, Rules, Tracker};
use super::Health;
use crate::registry::model::ProbeSpec;

/// A target this node probes.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `system:{id}` or `service:{id}:{version}`.
    pub id: String,
    pub spec: ProbeSpec,
    /// Normally `spec.interval_s`; shorter only in tests.
    pub interval: Duration,
    /// The cluster's confirmed status, when the target was probed elsewhere before.
    pub seed: Option<Health>,
}

/// The latest result of one target, as shown by the API and gossiped to the peers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latest {
    pub target: String,
    pub node: String,
    pub status: Option<Health>,
    pub flapping: bool,
    pub checked_at: i64,
    pub last: Outcome,
}

struct Entry {
    tracker: Tracker,
    latest: Option<Latest>,
}

struct Inner {
    node: String,
    checker: Checker,
    rules: Rules,
    entries: Mutex<HashMap<String, Entry>>,
    events: mpsc::UnboundedSender<(String, Event, Outcome)>,
    samples: Mutex<Vec<Sample>>,
    permits: Arc<Semaphore>,
    late: AtomicU64,
    checks: AtomicU64,
}

/// Handle on the running scheduler; dropping it stops the schedule.
pub struct Runner {
    inner: Arc<Inner>,
    targets: watch::Sender<Arc<Vec<Target>>>,
}

impl Runner {
    /// Starts the scheduler with no targets. Events arrive on the returned receiver.
    pub fn start(
        node: String,
        checker: Checker,
        rules: Rules,
        max_in_flight: usize,
    ) -> (Runner, mpsc::UnboundedReceiver<(String, Event, Outcome)>) {
        let (events, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            node,
            checker,
            rules,
            entries: Mutex::new(HashMap::new()),
            events,
            samples: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            late: AtomicU64::new(0),
            checks: AtomicU64::new(0),
        });
        let (targets, targets_rx) = watch::channel(Arc::new(Vec::new()));
        tokio::spawn(schedule(inner.clone(), targets_rx));
        (Runner { inner, targets }, rx)
    }

    /// Replaces the set of targets this node probes (unchanged targets keep their schedule
    /// and status).
    pub fn set_targets(&self, targets: Vec<Target>) {
        self.targets.send_replace(Arc::new(targets));
    }

    /// The latest result of every target this node probes and has checked at least once.
    pub fn latest(&self) -> Vec<Latest> {
        let entries = self.inner.entries.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Latest> = entries.values().filter_map(|e| e.latest.clone()).collect();
        out.sort_by(|a, b| a.target.cmp(&b.target));
        out
    }

    /// Results since the last call, for the history (bounded: new results are dropped beyond
    /// [`MAX_SAMPLES`] if nobody takes them).
    pub fn take_samples(&self) -> Vec<Sample> {
        std::mem::take(&mut *self.inner.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many targets this node probes.
    pub fn targets(&self) -> usize {
        self.targets.borrow().len()
    }

    /// Checks started more than one interval after they were due (an overloaded node).
    pub fn late(&self) -> u64 {
        self.inner.late.load(Ordering::Relaxed)
    }

    /// Checks completed since start.
    pub fn checks(&self) -> u64 {
        self.inner.checks.load(Ordering::Relaxed)
    }
}

/// Results kept for [`Runner::take_samples`] at most.
pub const MAX_SAMPLES: usize = 200_000;

/// Where in its interval a target's checks fall.
fn offset(id: &str, interval: Duration) -> Duration {
    let h = Sha256::digest(id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[..8]);
    let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(u64::from_be_bytes(b) % ms)
}

async fn schedule(inner: Arc<Inner>, mut rx: watch::Receiver<Arc<Vec<Target>>>) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64, String)>> = BinaryHeap::new();
    let mut current: HashMap<String, (Target, u64)> = HashMap::new();
    let mut generation = 0u64;
    loop {
        let next = heap.peek().map(|Reverse((at, _, _))| *at);
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return; // the Runner was dropped
                }
                let wanted = rx.borrow_and_update().clone();
                let now = Instant::now();
                let mut keep = HashMap::new();
                for t in wanted.iter() {
                    match current.remove(&t.id) {
                        Some((old, g)) if old.interval == t.interval => {
                            keep.insert(t.id.clone(), (t.clone(), g));
                        }
                        _ => {
                            generation += 1;
                            heap.push(Reverse((now + offset(&t.id, t.interval), generation, t.id.clone())));
                            keep.insert(t.id.clone(), (t.clone(), generation));
                            let mut entries = inner.entries.lock().unwrap_or_else(|e| e.into_inner());
                            entries.entry(t.id.clone()).or_insert_with(|| Entry {
                                tracker: t.seed.map(Tracker::seeded).unwrap_or_default(),
                                latest: None,
                            });
                        }
                    }
                }
                // What is left in `current` is no longer ours.
                let mut entries = inner.entries.lock().unwrap_or_else(|e| e.into_inner());
                for id in current.keys() {
                    entries.remove(id);
                }
                drop(entries);
                current = keep;
            }
            () = sleep_until(next) => {
                let now = Instant::now();
                while let Some(Reverse((at, g, id))) = heap.peek().cloned() {
                    if at > now {
                        break;
                    }
                    heap.pop();
                    let Some((t, cur)) = current.get(&id) else { continue };
                    if *cur != g {
                        continue;
                    }
                    let mut due = at + t.interval;
                    if due <= now {
                        inner.late.fetch_add(1, Ordering::Relaxed);
                        due = now + t.interval;
                    }
                    heap.push(Reverse((due, g, id)));
                    tokio::spawn(run_one(inner.clone(), t.clone()));
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn run_one(inner: Arc<Inner>, t: Target) {
    let Ok(_permit) = inner.permits.clone().acquire_owned().await else { return };
    let out = inner.checker.check(&t.spec).await;
    inner.checks.fetch_add(1, Ordering::Relaxed);
    let now = chrono::Utc::now().timestamp();
    let mut entries = inner.entries.lock().unwrap_or_else(|e| e.into_inner());
    let Some(entry) = entries.get_mut(&t.id) else { return }; // no longer ours
    for e in entry.tracker.observe(out.health, now, &inner.rules) {
        if inner.events.send((t.id.clone(), e, out.clone())).is_err() {
            tracing::debug!(target_id = %t.id, "nobody listens to probe events");
        }
    }
    {
        let mut samples = inner.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() < MAX_SAMPLES {
            samples.push(Sample { target: t.id.clone(), at: now, health: out.health, latency_ms: out.latency_ms });
        }
    }
    entry.latest = Some(Latest {
        target: t.id.clone(),
        node: inner.node.clone(),
        status: entry.tracker.status(),
        flapping: entry.tracker.flapping(),
        checked_at: now,
        last: out,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::model::ProbeKind;
    use std::sync::atomic::AtomicU16;

    async fn answer(axum::extract::State(code): axum::extract::State<Arc<AtomicU16>>) -> impl axum::response::IntoResponse {
        let c = code.load(Ordering::SeqCst);
        (http::StatusCode::from_u16(c).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR), [(http::header::CONNECTION, "close")], "")
    }

    async fn next_change(rx: &mut mpsc::UnboundedReceiver<(String, Event, Outcome)>) -> (String, Option<Health>, Health) {
        loop {
            let (id, e, _) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await.expect("an event within 30 s").expect("open");
            if let Event::Changed { from, to, .. } = e {
                return (id, from, to);
            }
        }
    }

    #[tokio::test]
    async fn runs_targets_and_reports_confirmed_changes() {
        let code = Arc::new(AtomicU16::new(200));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = axum::Router::new().route("/", axum::routing::get(answer)).with_state(code.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let checker = Checker::new(Arc::new(rustls::RootCertStore::empty())).expect("checker");
        let (runner, mut rx) = Runner::start("node-a".into(), checker, Rules::default(), 16);
        let spec =
            |kind, target: String| ProbeSpec { kind, target, interval_s: 10, timeout_ms: 1000, expect_status: 200, tls_warn_days: 21 };
        let fast = Duration::from_millis(100);
        runner.set_targets(vec![
            Target { id: "system:web".into(), spec: spec(ProbeKind::Http, format!("http://{addr}/")), interval: fast, seed: None },
            Target { id: "system:port".into(), spec: spec(ProbeKind::Tcp, addr.to_string()), interval: fast, seed: None },
        ]);
        let mut first = vec![next_change(&mut rx).await, next_change(&mut rx).await];
        first.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(first, vec![("system:port".into(), None, Health::Up), ("system:web".into(), None, Health::Up)]);

        code.store(500, Ordering::SeqCst);
        assert_eq!(next_change(&mut rx).await, ("system:web".into(), Some(Health::Up), Health::Down));
        let latest = runner.latest();
        assert_eq!(latest.len(), 2);
        assert_eq!(latest[1].status, Some(Health::Down));
        assert!(latest[1].last.detail.contains("500"), "{:?}", latest[1]);

        // Removing a target forgets it; the other keeps running.
        runner.set_targets(vec![Target {
            id: "system:port".into(),
            spec: spec(ProbeKind::Tcp, addr.to_string()),
            interval: fast,
            seed: None,
        }]);
        server.abort();
        let _ = server.await;
        assert_eq!(next_change(&mut rx).await, ("system:port".into(), Some(Health::Up), Health::Down));
        assert_eq!(runner.latest().iter().map(|l| l.target.as_str()).collect::<Vec<_>>(), vec!["system:port"]);
        assert!(runner.checks() >= 4);
    }
}
