//! The running probe service of one node: decides which targets this node probes, runs them,
//! turns confirmed changes into registry commands, records history and exchanges results with
//! the other nodes.
//!
//! Invariants: talks to the cluster only through the [`Cluster`] trait (implemented in
//! `app.rs`), so `probes` never imports `cluster`, `admin` or `gateway`. A target is probed by
//! this node only when rendezvous hashing over the live members picks it; a peer is live while
//! its gossip (sent at least every second) arrived within [`LIVE_FOR`]. Nothing is probed during
//! the first [`LIVE_FOR`] after start, so a restarted node first hears who else is alive.
//! Gossip is never echoed: what a peer sent is merged and recorded, not forwarded. Every node
//! records every result it hears in its own history, so history and uptime read from any node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::check::{Checker, Outcome};
use super::history::{History, Sample};
use super::runner::{Latest, Runner, Target};
use super::state::{Event, Rules};
use super::{assign, Health};
use crate::config::ProbesConfig;
use crate::registry::{notice, CertNotified, Command, ProbeSpec};

/// A peer silent for longer than this is considered dead and its targets move.
pub const LIVE_FOR: Duration = Duration::from_secs(3);
/// Gossip is sent at least this often (a heartbeat when nothing changed).
const GOSSIP_EVERY: Duration = Duration::from_secs(1);
/// Every latest result is re-sent this often (a restarted peer learns them all).
const FULL_EVERY: Duration = Duration::from_secs(30);

/// One registered probe as the cluster's registry lists it.
#[derive(Debug, Clone)]
pub struct Registered {
    pub target: String,
    pub spec: ProbeSpec,
    /// The replicated status (seeds a target that moves here).
    pub status: Option<Health>,
    /// The certificate-expiry notice already queued for the target, if any.
    pub cert_notified: Option<CertNotified>,
}

/// What the probe service needs from the cluster (implemented in `app.rs`).
pub trait Cluster: Send + Sync + 'static {
    /// Names of the members that take a share of the probes (Raft members not drained), this
    /// node included when it probes.
    fn members(&self) -> Vec<String>;
    /// The probes registered, from the locally applied registry.
    fn registered(&self) -> Vec<Registered>;
    /// A number that changes whenever the registry may have changed (the applied index).
    fn registry_version(&self) -> u64;
    /// The replicated status of one registered probe (`None`: no such probe; `Some(None)`:
    /// registered but never confirmed).
    fn status_of(&self, target: &str) -> Option<Option<Health>>;
    /// Proposes a registry command as the appliance itself; `Err` is the refusal or failure.
    fn propose(&self, command: Command) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>>;
}

/// What travels in the shared-state gossip under the key `probes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Gossip {
    #[serde(default)]
    pub latest: Vec<Latest>,
    #[serde(default)]
    pub samples: Vec<Sample>,
}

struct Shared {
    /// Last time each peer's gossip arrived.
    heard: HashMap<String, Instant>,
    /// Latest results of targets probed elsewhere (newest `checked_at` wins).
    remote: HashMap<String, Latest>,
    last_gossip: Option<Instant>,
    last_full: Option<Instant>,
    /// `checked_at` of the newest result already gossiped, per target.
    sent: HashMap<String, i64>,
    /// This node's results not yet gossiped.
    outgoing: Vec<Sample>,
    /// Checks started late, sampled each second over the last minute.
    late_window: std::collections::VecDeque<u64>,
    /// What the scheduler was last given.
    assigned: Vec<(String, ProbeSpec, Duration)>,
    /// The live set and registry version it was computed for.
    assigned_for: Option<(Vec<String>, u64)>,
}

/// The probe service of this node.
pub struct ProbeService {
    node: String,
    cfg: ProbesConfig,
    runner: Runner,
    history: Arc<History>,
    cluster: Arc<dyn Cluster>,
    started: Instant,
    shared: Mutex<Shared>,
}

impl ProbeService {
    /// Starts probing (in the background, until the returned service is dropped and its
    /// tasks notice). `history` is `DATA_DIR/probes.redb`.
    pub fn start(node: String, cfg: ProbesConfig, checker: Checker, history: History, cluster: Arc<dyn Cluster>) -> Arc<ProbeService> {
        let rules = Rules { confirm: cfg.confirm, ..Rules::default() };
        let (runner, events) = Runner::start(node.clone(), checker, rules, cfg.max_in_flight);
        let svc = Arc::new(ProbeService {
            node,
            cfg,
            runner,
            history: Arc::new(history),
            cluster,
            started: Instant::now(),
            shared: Mutex::new(Shared {
                heard: HashMap::new(),
                remote: HashMap::new(),
                last_gossip: None,
                last_full: None,
                sent: HashMap::new(),
                outgoing: Vec::new(),
                late_window: std::collections::VecDeque::new(),
                assigned: Vec::new(),
                assigned_for: None,
            }),
        });
        tokio::spawn(assign_loop(Arc::downgrade(&svc)));
        tokio::spawn(event_loop(Arc::downgrade(&svc), events));
        tokio::spawn(history_loop(Arc::downgrade(&svc)));
        svc
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The members this node hears from (itself included when it probes), sorted.
    pub fn live(&self) -> Vec<String> {
        let now = Instant::now();
        let sh = self.lock();
        let mut live: Vec<String> = self
            .cluster
            .members()
            .into_iter()
            .filter(|m| (*m == self.node && self.cfg.enabled) || sh.heard.get(m).is_some_and(|t| now.duration_since(*t) <= LIVE_FOR))
            .collect();
        live.sort();
        live
    }

    /// Recomputes which targets are this node's and hands them to the scheduler.
    fn reassign(&self) {
        if !self.cfg.enabled || self.started.elapsed() < LIVE_FOR {
            return;
        }
        let live = self.live();
        let version = self.cluster.registry_version();
        {
            let mut sh = self.lock();
            let late = self.runner.late();
            sh.late_window.push_back(late);
            while sh.late_window.len() > 61 {
                sh.late_window.pop_front();
            }
            // Same live set, same registry: the assignment cannot have changed.
            if sh.assigned_for.as_ref() == Some(&(live.clone(), version)) {
                return;
            }
            sh.assigned_for = Some((live.clone(), version));
        }
        let targets: Vec<Target> = self
            .cluster
            .registered()
            .into_iter()
            .filter(|r| assign::is_mine(&self.node, &r.target, &live))
            .map(|r| {
                let interval =
                    self.cfg.interval_override_ms.map(Duration::from_millis).unwrap_or(Duration::from_secs(r.spec.interval_s.into()));
                Target { id: r.target, spec: r.spec, interval, seed: r.status }
            })
            .collect();
        let mut sh = self.lock();
        // Unchanged assignment (the usual case): leave the scheduler alone. Seeds matter only
        // for targets new to this node, so they are not compared.
        let key: Vec<(String, ProbeSpec, Duration)> = targets.iter().map(|t| (t.id.clone(), t.spec.clone(), t.interval)).collect();
        if sh.assigned != key {
            sh.assigned = key;
            self.runner.set_targets(targets);
        }
    }

    /// (targets, checks, checks late in the last minute) for the `probes` status component.
    pub fn figures(&self) -> (usize, u64, u64) {
        let late = self.runner.late();
        let first = self.lock().late_window.front().copied().unwrap_or(late);
        (self.runner.targets(), self.runner.checks(), late.saturating_sub(first))
    }

    /// Whether this node probes at all.
    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// The latest result of every target, cluster-wide (this node's own and what peers sent).
    pub fn latest(&self) -> BTreeMap<String, Latest> {
        let mut out: BTreeMap<String, Latest> = self.lock().remote.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for l in self.runner.latest() {
            match out.get(&l.target) {
                Some(o) if o.checked_at > l.checked_at => {}
                _ => {
                    out.insert(l.target.clone(), l);
                }
            }
        }
        out
    }

    /// The targets this node probes now.
    pub fn mine(&self) -> Vec<String> {
        self.runner.latest().into_iter().map(|l| l.target).collect()
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// What to gossip now (`None`: nothing, and no heartbeat due). Called by the share loop.
    pub fn gossip_out(&self) -> Option<Gossip> {
        let now = Instant::now();
        let mut sh = self.lock();
        if sh.last_gossip.is_some_and(|t| now.duration_since(t) < GOSSIP_EVERY) {
            return None;
        }
        sh.last_gossip = Some(now);
        let full = sh.last_full.is_none_or(|t| now.duration_since(t) >= FULL_EVERY);
        if full {
            sh.last_full = Some(now);
        }
        let mut latest = Vec::new();
        for l in self.runner.latest() {
            let newer = sh.sent.get(&l.target).is_none_or(|at| *at < l.checked_at);
            if full || newer {
                sh.sent.insert(l.target.clone(), l.checked_at);
                latest.push(l);
            }
        }
        let samples = std::mem::take(&mut sh.outgoing);
        Some(Gossip { latest, samples })
    }

    /// Takes in a peer's gossip: the peer is alive, its results are merged and recorded.
    pub fn absorb(&self, from: &str, g: Gossip) {
        {
            let mut sh = self.lock();
            sh.heard.insert(from.to_owned(), Instant::now());
            for l in g.latest {
                if l.node == self.node {
                    continue; // never our own results back
                }
                let newer = sh.remote.get(&l.target).is_none_or(|o| o.checked_at <= l.checked_at);
                if newer {
                    sh.remote.insert(l.target.clone(), l);
                }
            }
        }
        if !g.samples.is_empty() {
            let history = self.history.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = history.record(&g.samples) {
                    tracing::warn!(error = %e, "probe results from a peer not recorded");
                }
            });
        }
    }

    fn flush_history(&self) {
        let samples = self.runner.take_samples();
        if samples.is_empty() {
            return;
        }
        if let Err(e) = self.history.record(&samples) {
            tracing::warn!(error = %e, "probe results not recorded in the history");
        }
        let mut sh = self.lock();
        if sh.outgoing.len() < super::runner::MAX_SAMPLES {
            sh.outgoing.extend(samples);
        }
    }
}

async fn assign_loop(svc: std::sync::Weak<ProbeService>) {
    let mut tick = 0u64;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(s) = svc.upgrade() else { return };
        s.reassign();
        tick += 1;
        if tick % 10 == 0 {
            reconcile(&s).await;
        }
    }
}

/// Proposes the confirmed status of this node's targets where the registry still shows
/// another one (a proposal that failed earlier, e.g. without quorum). Flapping targets wait.
/// Where the status agrees, a certificate that crossed an expiry threshold (30, 14, 7, 1 days)
/// not yet notified for it is proposed for its notice: a status change notifies the threshold
/// of the moment, this catches the later ones while the status stays the same.
async fn reconcile(s: &ProbeService) {
    let registered: HashMap<String, (Option<Health>, Option<CertNotified>)> =
        s.cluster.registered().into_iter().map(|r| (r.target, (r.status, r.cert_notified))).collect();
    for l in s.runner.latest() {
        let (Some(status), Some((stored, cert_notified))) = (l.status, registered.get(&l.target)) else { continue };
        if l.flapping {
            continue;
        }
        if *stored == Some(status) {
            let at = chrono::DateTime::from_timestamp(l.checked_at, 0).unwrap_or_else(chrono::Utc::now);
            let Some(days_left) = l.last.cert_days_left else { continue };
            if !notice::cert_notice_due(cert_notified.as_ref(), days_left, at) {
                continue;
            }
            let command = Command::ProbeCertChecked { target: l.target.clone(), days_left, at, node: s.node.clone() };
            match s.cluster.propose(command).await {
                Ok(()) => tracing::info!(probe_target = %l.target, days_left, "certificate expiry notice queued"),
                Err(e) => tracing::debug!(probe_target = %l.target, error = %e, "certificate expiry notice not queued yet"),
            }
            continue;
        }
        let command = Command::ProbeStatusChanged {
            target: l.target.clone(),
            from: *stored,
            to: status,
            at: chrono::DateTime::from_timestamp(l.checked_at, 0).unwrap_or_else(chrono::Utc::now),
            notify: true,
            flapping: false,
            reason: l.last.detail.clone(),
            cert_days_left: l.last.cert_days_left,
            node: s.node.clone(),
        };
        if let Err(e) = s.cluster.propose(command).await {
            tracing::debug!(probe_target = %l.target, error = %e, "probe status not reconciled yet");
        }
    }
}

async fn history_loop(svc: std::sync::Weak<ProbeService>) {
    let mut last_prune: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(s) = svc.upgrade() else { return };
        let s2 = s.clone();
        let prune = last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600));
        if prune {
            last_prune = Some(Instant::now());
        }
        let res = tokio::task::spawn_blocking(move || {
            s2.flush_history();
            if prune {
                let now = chrono::Utc::now().timestamp();
                match s2.history.prune(now, s2.cfg.hourly_days.into(), s2.cfg.history_days.into()) {
                    Ok(n) if n > 0 => tracing::info!(rows = n, "old probe history pruned"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "probe history not pruned"),
                }
            }
        })
        .await;
        if let Err(e) = res {
            tracing::error!(error = %e, "probe history task failed");
        }
    }
}

/// Turns confirmed changes into `ProbeStatusChanged` proposals. A refusal because the
/// replicated status already moved (another node proposed first) is expected and ignored.
async fn event_loop(svc: std::sync::Weak<ProbeService>, mut events: tokio::sync::mpsc::UnboundedReceiver<(String, Event, Outcome)>) {
    while let Some((target, event, out)) = events.recv().await {
        let Some(s) = svc.upgrade() else { return };
        let at = |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap_or_else(chrono::Utc::now);
        let Some(current) = s.cluster.status_of(&target) else { continue }; // the probe was removed meanwhile
        let command = match event {
            Event::Changed { from, to, at: t, notify } => {
                let flapping = s.runner.latest().iter().any(|l| l.target == target && l.flapping);
                Command::ProbeStatusChanged {
                    target: target.clone(),
                    from,
                    to,
                    at: at(t),
                    notify,
                    flapping,
                    reason: out.detail.clone(),
                    cert_days_left: out.cert_days_left,
                    node: s.node.clone(),
                }
            }
            Event::FlappingStarted { .. } => continue, // carried by the change that started it
            Event::FlappingEnded { status, at: t } => Command::ProbeStatusChanged {
                target: target.clone(),
                from: current,
                to: status,
                at: at(t),
                notify: true,
                flapping: false,
                reason: out.detail.clone(),
                cert_days_left: out.cert_days_left,
                node: s.node.clone(),
            },
        };
        let (from, to) = match &command {
            Command::ProbeStatusChanged { from, to, .. } => (*from, *to),
            _ => continue,
        };
        match s.cluster.propose(command).await {
            Ok(()) => tracing::info!(
                probe_target = %target,
                from = from.map_or("unconfirmed", Health::as_str),
                to = to.as_str(),
                detail = %out.detail,
                "probe status changed"
            ),
            Err(e) if e.contains("PROBE_STATUS_STALE") || e.contains("already recorded") || e.contains("already") => {
                tracing::debug!(probe_target = %target, error = %e, "probe status change already recorded")
            }
            Err(e) => {
                tracing::warn!(probe_target = %target, error = %e, "probe status change not recorded; it is proposed again at the next change")
            }
        }
    }
}
