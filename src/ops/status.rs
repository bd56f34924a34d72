//! Level 2 status, `GET /status/services` on the metrics listener (SPEC §2): the node's overall
//! state and one entry per component (storage, raft, disk, memory, clock).
//!
//! Meaning of each state, for a component and for the node (the node takes its worst
//! component's state):
//! - `up`: working as intended.
//! - `degraded`: the node still serves gateway traffic but needs an operator's attention
//!   (no Raft quorum: it proxies with the last replicated registry and admin writes fail;
//!   disk or memory below its threshold; clock obviously wrong). HTTP 200: keep it in the load
//!   balancer.
//! - `down`: the node cannot do its work correctly (registry store unreadable, data directory
//!   not writable, data directory's filesystem nearly full). HTTP 503: take it out.
//!
//! Invariants: every component answers within [`CHECK_TIMEOUT`] or is reported `down` with the
//! reason; the JSON is an object keyed by component name, so components are added without
//! breaking readers; nothing here knows the cluster or the registry (`app` hands in closures).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::StatusConfig;
use crate::ops::host::{Host, HostFigures};

/// A component that has not answered by then is `down`.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Below this much free space the registry, Raft log and audit log can no longer be written
/// safely: the `disk` component is `down` whatever the configured thresholds.
pub const DISK_DOWN_BELOW_BYTES: u64 = 64 << 20;
/// A clock before this instant has not been set (tokens, signatures and audit times would be
/// wrong).
const CLOCK_SANE_AFTER: &str = "2025-01-01T00:00:00Z";

/// Proves the registry store can be read and the data directory written; returns details to
/// show (e.g. the applied index on disk) or what failed. Blocking.
pub type StorageFn = Arc<dyn Fn() -> Result<Value, String> + Send + Sync>;

/// A component's or the node's state. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Up,
    Degraded,
    Down,
}

/// One component's entry: its state, a sentence for the operator, and figures.
#[derive(Debug, Clone)]
pub struct Component {
    pub status: Level,
    pub message: String,
    pub details: Value,
}

impl Component {
    fn new(status: Level, message: impl Into<String>, details: Value) -> Component {
        Component { status, message: message.into(), details }
    }

    /// `{"status": ..., "message": ..., <details>}`
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "status": self.status, "message": self.message });
        if let (Some(obj), Value::Object(extra)) = (v.as_object_mut(), &self.details) {
            for (k, x) in extra {
                obj.entry(k.clone()).or_insert_with(|| x.clone());
            }
        }
        v
    }
}

/// What the Level 2 checks read, handed in by `app`.
#[derive(Clone)]
pub struct Services {
    pub host: Host,
    pub data_dir: PathBuf,
    pub thresholds: StatusConfig,
    pub storage: StorageFn,
    /// The `probes` component (absent when this node does not probe).
    pub probes: Option<ProbesFn>,
}

/// Figures of the probe scheduler, read when `/status/services` is asked: (targets, checks
/// completed, checks started late in the last minute).
pub type ProbesFn = Arc<dyn Fn() -> (usize, u64, u64) + Send + Sync>;

/// The node's state: the worst of its components (`up` when there are none).
pub fn overall<'a>(components: impl IntoIterator<Item = &'a Component>) -> Level {
    components.into_iter().map(|c| c.status).max().unwrap_or(Level::Up)
}

/// 200 while the node serves traffic (`up`, `degraded`), 503 when it is `down`.
pub fn http_status(level: Level) -> u16 {
    match level {
        Level::Up | Level::Degraded => 200,
        Level::Down => 503,
    }
}

/// The `storage` component from the storage probe's result.
pub fn storage_component(probe: Result<Value, String>) -> Component {
    match probe {
        Ok(details) => Component::new(Level::Up, "registry store readable, data directory writable", details),
        Err(e) => Component::new(
            Level::Down,
            format!("{e}; check the disk and the file permissions of the data directory (owned by the lgsp user)"),
            json!({}),
        ),
    }
}

/// The `raft` component from the cluster health (`Metrics::with_health`): no quorum is
/// `degraded`, since the gateway keeps serving the last replicated registry.
pub fn raft_component(quorum: bool, details: Value) -> Component {
    if quorum {
        Component::new(Level::Up, "a leader reaches a quorum; admin writes work", details)
    } else {
        Component::new(
            Level::Degraded,
            "no quorum: the gateway serves the last replicated registry and admin writes fail; check `lgsp cluster status` and the network between the nodes",
            details,
        )
    }
}

/// The `disk` component: free space on the data directory's filesystem.
pub fn disk_component(free: Option<u64>, total: Option<u64>, data_dir: &std::path::Path, t: &StatusConfig) -> Component {
    let (Some(free), Some(total)) = (free, total) else {
        return Component::new(
            Level::Degraded,
            format!("cannot read the free space of the filesystem holding {}", data_dir.display()),
            json!({ "path": data_dir }),
        );
    };
    let ratio = if total == 0 { 0.0 } else { free as f64 / total as f64 };
    let min_ratio = f64::from(t.disk_min_free_percent) / 100.0;
    let details = json!({
        "path": data_dir,
        "free_bytes": free,
        "total_bytes": total,
        "free_ratio": (ratio * 10_000.0).round() / 10_000.0,
        "min_free_bytes": t.disk_min_free_bytes,
        "min_free_ratio": min_ratio,
    });
    let what = format!("{} free of {} on the filesystem holding {}", bytes(free), bytes(total), data_dir.display());
    if free < DISK_DOWN_BELOW_BYTES {
        Component::new(Level::Down, format!("{what}: writes will fail; free space now"), details)
    } else if free < t.disk_min_free_bytes || ratio < min_ratio {
        Component::new(
            Level::Degraded,
            format!(
                "{what}: below the threshold ({}% or {}, status.disk_min_free_*); free space or grow the filesystem",
                t.disk_min_free_percent,
                bytes(t.disk_min_free_bytes)
            ),
            details,
        )
    } else {
        Component::new(Level::Up, what, details)
    }
}

/// The `memory` component: memory available on the host, and this process's share.
pub fn memory_component(f: &HostFigures, t: &StatusConfig) -> Component {
    let total = f.memory_total_bytes;
    let available = total.saturating_sub(f.memory_used_bytes);
    let ratio = if total == 0 { 0.0 } else { available as f64 / total as f64 };
    let min_ratio = f64::from(t.memory_min_available_percent) / 100.0;
    let details = json!({
        "used_bytes": f.memory_used_bytes,
        "total_bytes": total,
        "available_ratio": (ratio * 10_000.0).round() / 10_000.0,
        "min_available_ratio": min_ratio,
        "process_resident_bytes": f.process_resident_bytes,
    });
    let what = format!("{} available of {}", bytes(available), bytes(total));
    if total == 0 {
        Component::new(Level::Degraded, "cannot read the host's memory figures", details)
    } else if ratio < min_ratio {
        Component::new(
            Level::Degraded,
            format!("{what}: below {}% (status.memory_min_available_percent)", t.memory_min_available_percent),
            details,
        )
    } else {
        Component::new(Level::Up, what, details)
    }
}

/// The `clock` component: the node's UTC time (compare it across nodes); `degraded` when the
/// clock has plainly never been set.
pub fn clock_component(now: DateTime<Utc>) -> Component {
    let details = json!({ "utc": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "unix_seconds": now.timestamp() });
    let sane = DateTime::parse_from_rfc3339(CLOCK_SANE_AFTER).map(|d| now >= d).unwrap_or(true);
    if sane {
        Component::new(Level::Up, "the node's UTC time; nodes must agree within the signature window", details)
    } else {
        Component::new(
            Level::Degraded,
            format!("the clock reads {now}, before {CLOCK_SANE_AFTER}: it was never set; configure NTP (systemd-timesyncd or chrony)"),
            details,
        )
    }
}

/// The `probes` component from the probe scheduler's figures (`app` reads them from
/// `probes::runner::Runner`): `degraded` when checks started more than an interval late in
/// the last minute (the node cannot keep up with its targets).
pub fn probes_component(targets: usize, checks: u64, late_last_minute: u64) -> Component {
    let details = json!({ "targets": targets, "checks": checks, "late_last_minute": late_last_minute });
    if late_last_minute > 0 {
        Component::new(
            Level::Degraded,
            format!("{late_last_minute} probe checks ran more than an interval late in the last minute; the node is overloaded: raise probes.max_in_flight or add nodes"),
            details,
        )
    } else {
        Component::new(Level::Up, format!("probing {targets} targets on time"), details)
    }
}

/// Runs every check (each bounded by [`CHECK_TIMEOUT`]) and returns the components by name.
pub async fn check(services: &Services, health: Option<(bool, Value)>) -> BTreeMap<&'static str, Component> {
    let mut out = BTreeMap::new();
    let storage = services.storage.clone();
    let probe = bounded(move || storage()).await.and_then(|r| r);
    out.insert("storage", storage_component(probe));
    if let Some((quorum, details)) = health {
        out.insert("raft", raft_component(quorum, details));
    }
    let host = services.host.clone();
    match bounded(move || host.sample()).await {
        Ok(f) => {
            out.insert("disk", disk_component(f.data_dir_free_bytes, f.data_dir_total_bytes, &services.data_dir, &services.thresholds));
            out.insert("memory", memory_component(&f, &services.thresholds));
        }
        Err(e) => {
            out.insert("disk", Component::new(Level::Down, e.clone(), json!({ "path": services.data_dir })));
            out.insert("memory", Component::new(Level::Degraded, e, json!({})));
        }
    }
    out.insert("clock", clock_component(Utc::now()));
    if let Some(p) = &services.probes {
        let (targets, checks, late) = p();
        out.insert("probes", probes_component(targets, checks, late));
    }
    out
}

/// Runs a blocking check on the blocking pool, giving up after [`CHECK_TIMEOUT`].
async fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    match tokio::time::timeout(CHECK_TIMEOUT, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("the check failed: {e}")),
        Err(_) => Err(format!("the check did not answer within {} s (disk or /proc stuck?)", CHECK_TIMEOUT.as_secs())),
    }
}

/// `1.5 GiB`-style sizes for messages.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const GIB: u64 = 1 << 30;

    fn t() -> StatusConfig {
        StatusConfig { disk_min_free_percent: 10, disk_min_free_bytes: GIB, memory_min_available_percent: 5 }
    }

    #[test]
    fn disk_thresholds() {
        let dir = Path::new("/var/lib/lgsp");
        assert_eq!(disk_component(Some(50 * GIB), Some(100 * GIB), dir, &t()).status, Level::Up);
        // Below the share, above the byte floor.
        assert_eq!(disk_component(Some(5 * GIB), Some(100 * GIB), dir, &t()).status, Level::Degraded);
        // Below the byte floor on a small disk where the share is fine.
        assert_eq!(disk_component(Some(GIB / 2), Some(2 * GIB), dir, &t()).status, Level::Degraded);
        assert_eq!(disk_component(Some(10 << 20), Some(100 * GIB), dir, &t()).status, Level::Down);
        let unknown = disk_component(None, None, dir, &t());
        assert_eq!(unknown.status, Level::Degraded);
        assert!(unknown.message.contains("/var/lib/lgsp"), "{}", unknown.message);
        let j = disk_component(Some(5 * GIB), Some(100 * GIB), dir, &t()).to_json();
        assert_eq!(j["status"], "degraded");
        assert_eq!(j["free_bytes"], 5 * GIB);
        assert_eq!(j["free_ratio"], 0.05);
    }

    #[test]
    fn memory_threshold() {
        let f = |used: u64| HostFigures { memory_total_bytes: 100 * GIB, memory_used_bytes: used, ..HostFigures::default() };
        assert_eq!(memory_component(&f(50 * GIB), &t()).status, Level::Up);
        assert_eq!(memory_component(&f(99 * GIB), &t()).status, Level::Degraded);
        assert_eq!(memory_component(&HostFigures::default(), &t()).status, Level::Degraded);
    }

    #[test]
    fn clock_never_set_is_degraded() {
        let now = Utc::now();
        assert_eq!(clock_component(now).status, Level::Up);
        let epoch = DateTime::from_timestamp(0, 0).expect("epoch");
        let c = clock_component(epoch);
        assert_eq!(c.status, Level::Degraded);
        assert!(c.message.contains("NTP"), "{}", c.message);
        assert_eq!(clock_component(now).to_json()["unix_seconds"], now.timestamp());
    }

    #[test]
    fn the_worst_component_decides_and_only_down_is_503() {
        let c = |s| Component::new(s, "", json!({}));
        assert_eq!(overall(&[]), Level::Up);
        let up_and_degraded = [c(Level::Up), c(Level::Degraded)];
        assert_eq!(overall(&up_and_degraded), Level::Degraded);
        assert_eq!(http_status(overall(&up_and_degraded)), 200);
        let with_down = [c(Level::Degraded), c(Level::Down), c(Level::Up)];
        assert_eq!(overall(&with_down), Level::Down);
        assert_eq!(http_status(Level::Down), 503);
        assert_eq!(http_status(Level::Up), 200);
    }

    #[test]
    fn storage_failure_is_down_and_says_what_to_do() {
        let c = storage_component(Err("cannot read registry.redb: I/O error".into()));
        assert_eq!(c.status, Level::Down);
        assert!(c.message.contains("registry.redb") && c.message.contains("permissions"), "{}", c.message);
        assert_eq!(storage_component(Ok(json!({"applied_index": 7}))).to_json()["applied_index"], 7);
    }

    #[test]
    fn no_quorum_is_degraded_not_down() {
        assert_eq!(raft_component(false, json!({"quorum": false})).status, Level::Degraded);
        assert_eq!(raft_component(true, json!({"quorum": true})).to_json()["quorum"], true);
    }

    #[test]
    fn late_probes_are_degraded() {
        assert_eq!(probes_component(10, 100, 0).status, Level::Up);
        let c = probes_component(10, 100, 3);
        assert_eq!(c.status, Level::Degraded);
        assert!(c.message.contains("overloaded"), "{}", c.message);
        assert_eq!(c.to_json()["targets"], 10);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * GIB / 2), "1.5 GiB");
    }
}
