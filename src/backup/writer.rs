//! The node's backup writer: receives each committed backup point from the store (with the
//! state at exactly that log entry), adds this node's audit segments and configuration, writes
//! the backup file, applies retention, runs the post-backup hook, and tells whoever waits for
//! that backup id (the admin API call that asked for it) where the file is.
//!
//! Invariants: one backup at a time per node, in commit order; the audit log is checkpointed
//! and flushed before its segments are read, and the newest segment is copied only up to its
//! last complete line; a backup point whose file already exists (an entry applied again after
//! a crash) is not written twice. Failures are logged and reported to the waiter, never retried
//! in a loop.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{file, Header, AUDIT_PREFIX, CONFIG_PART, EXTENSION, KEYS_PART, REGISTRY_PART};
use crate::audit::AuditLog;
use crate::cluster::BackupSnapshot;

/// Where and how this node writes its backups.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub dir: PathBuf,
    pub node_id: u64,
    pub node_name: String,
    pub cluster_id: String,
    pub audit_dir: PathBuf,
    /// The configuration file the node runs with (`None` in dev mode).
    pub config_file: Option<PathBuf>,
    /// Keep at most this many of this node's backup files (0: no limit).
    pub keep: usize,
    /// Delete this node's backup files older than this many days (0: no limit).
    pub keep_days: u64,
    /// A command run with the new file's path as its only argument.
    pub post_hook: Option<PathBuf>,
    /// age recipients of `keys.age` (empty: no keys in the backup).
    pub recipients: Vec<String>,
    /// Encrypt the whole file to `recipients` as well.
    pub encrypt: bool,
    /// The data directory, where the sealed files are read.
    pub data_dir: PathBuf,
}

/// The outcome of one backup point on this node: the file, or why there is none.
pub type Outcome = Result<PathBuf, String>;

/// A handle on the writer, shared with the admin API.
pub struct BackupService {
    cfg: WriterConfig,
    metrics: std::sync::OnceLock<BackupMetrics>,
    audit: Option<AuditLog>,
    results: Mutex<HashMap<String, Outcome>>,
    done: tokio::sync::Notify,
}

impl std::fmt::Debug for BackupService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupService").field("dir", &self.cfg.dir).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl BackupService {
    pub fn new(cfg: WriterConfig, audit: Option<AuditLog>) -> Arc<BackupService> {
        Arc::new(BackupService {
            cfg,
            metrics: std::sync::OnceLock::new(),
            audit,
            results: Mutex::new(HashMap::new()),
            done: tokio::sync::Notify::new(),
        })
    }

    /// Registers the backup metrics (once; later calls change nothing).
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> Result<(), prometheus::Error> {
        let total = prometheus::IntCounterVec::new(
            prometheus::Opts::new("lgsp_backups_total", "Backup files this node tried to write, by result (ok, failed)"),
            &["result"],
        )?;
        let last = prometheus::Gauge::new(
            "lgsp_backup_last_success_timestamp_seconds",
            "Unix time of this node's last backup file written (0: none since start)",
        )?;
        let hook = prometheus::IntCounter::new("lgsp_backup_hook_failures_total", "Post-backup hook runs that failed or could not start")?;
        // Both results exported from the start at 0, so that an alert on `increase()` sees the
        // first failure.
        for result in ["ok", "failed"] {
            total.with_label_values(&[result]);
        }
        registry.register(Box::new(total.clone()))?;
        registry.register(Box::new(last.clone()))?;
        registry.register(Box::new(hook.clone()))?;
        let _ = self.metrics.set(BackupMetrics { total, last, hook });
        Ok(())
    }

    /// The directory holding this node's backup files.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// Runs until the store drops its sink (the node stops).
    pub async fn run(self: Arc<Self>, mut rx: tokio::sync::mpsc::UnboundedReceiver<BackupSnapshot>) {
        while let Some(snap) = rx.recv().await {
            let id = snap.point.id.clone();
            let outcome = self.clone().write_one(snap).await;
            match &outcome {
                Ok(path) => tracing::info!(backup = %id, file = %path.display(), "backup written"),
                Err(e) => tracing::error!(backup = %id, error = %e, "backup failed on this node"),
            }
            if let Some(m) = self.metrics.get() {
                m.total.with_label_values(&[if outcome.is_ok() { "ok" } else { "failed" }]).inc();
                if outcome.is_ok() {
                    m.last.set(chrono::Utc::now().timestamp() as f64);
                }
            }
            {
                let mut r = lock(&self.results);
                if r.len() > 256 {
                    r.clear();
                }
                r.insert(id, outcome);
            }
            self.done.notify_waiters();
        }
    }

    /// Waits (at most `timeout`) for this node's outcome of backup `id`.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Option<Outcome> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.done.notified();
            if let Some(r) = lock(&self.results).get(id) {
                return Some(r.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    async fn write_one(self: Arc<Self>, snap: BackupSnapshot) -> Outcome {
        if let Some(existing) = self.existing(&snap.point.id) {
            return Ok(existing);
        }
        // The copy of the audit log ends with a signed checkpoint and holds everything
        // recorded before the backup was written.
        if let Some(a) = &self.audit {
            if let Err(e) = a.checkpoint().await {
                tracing::warn!(error = %e, "cannot sign the audit log before a backup; its copy ends with an unsigned tail");
            }
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.write_blocking(&snap)).await.map_err(|e| format!("the backup task failed: {e}"))?
    }

    fn existing(&self, id: &str) -> Option<PathBuf> {
        let suffix = format!("-{id}.{EXTENSION}");
        fs::read_dir(&self.cfg.dir).ok()?.flatten().map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(&suffix))
    }

    fn write_blocking(&self, snap: &BackupSnapshot) -> Outcome {
        let mut parts = vec![(REGISTRY_PART.to_owned(), "registry".to_owned(), snap.registry.clone())];
        for (name, bytes) in audit_segments(&self.cfg.audit_dir)? {
            parts.push((format!("{AUDIT_PREFIX}{name}"), "audit".to_owned(), bytes));
        }
        let config = match &self.cfg.config_file {
            Some(p) => fs::read(p).map_err(|e| format!("cannot read the configuration {}: {e}", p.display()))?,
            None => b"# lgsp dev: the embedded development configuration (no file)\n".to_vec(),
        };
        parts.push((CONFIG_PART.to_owned(), "config".to_owned(), config));
        if !self.cfg.recipients.is_empty() {
            let mut files = Vec::new();
            for name in super::keys::SEALED_FILES {
                let p = self.cfg.data_dir.join(name);
                match fs::read(&p) {
                    Ok(b) => files.push((name.to_owned(), b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
                }
            }
            parts.push((KEYS_PART.to_owned(), "keys".to_owned(), super::keys::seal(&files, &self.cfg.recipients)?));
        }
        let header = Header {
            id: snap.point.id.clone(),
            reason: snap.point.reason.clone(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            actor: snap.point.by.clone(),
            cluster_id: self.cfg.cluster_id.clone(),
            node_id: self.cfg.node_id,
            node_name: self.cfg.node_name.clone(),
            log_index: snap.log_id.index,
            log_term: snap.log_id.leader_id.term,
        };
        let encrypt_to: &[String] = if self.cfg.encrypt { &self.cfg.recipients } else { &[] };
        let path = file::write(&self.cfg.dir, &header, &parts, encrypt_to).map_err(|e| e.to_string())?;
        self.prune(&path);
        self.run_hook(&path);
        Ok(path)
    }

    /// Retention: this node's files beyond `keep` (oldest first) or older than `keep_days`;
    /// never the file just written.
    fn prune(&self, newest: &Path) {
        let Ok(listed) = file::list(&self.cfg.dir) else { return };
        let mut mine: Vec<(u64, PathBuf, Option<std::time::SystemTime>)> = listed
            .into_iter()
            .filter_map(|l| {
                let m = l.manifest?;
                (m.node_id == self.cfg.node_id)
                    .then(|| (m.log_index, l.file.clone(), fs::metadata(&l.file).and_then(|x| x.modified()).ok()))
            })
            .collect();
        mine.sort();
        let cutoff = (self.cfg.keep_days > 0)
            .then(|| std::time::SystemTime::now().checked_sub(Duration::from_secs(self.cfg.keep_days * 86_400)))
            .flatten();
        let excess = if self.cfg.keep > 0 { mine.len().saturating_sub(self.cfg.keep) } else { 0 };
        for (i, (_, path, modified)) in mine.iter().enumerate() {
            if path == newest {
                continue;
            }
            let too_old = matches!((cutoff, modified), (Some(c), Some(m)) if *m < c);
            if i < excess || too_old {
                match fs::remove_file(path) {
                    Ok(()) => tracing::info!(file = %path.display(), "old backup deleted by retention"),
                    Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot delete an old backup"),
                }
            }
        }
    }

    fn run_hook(&self, path: &Path) {
        let Some(hook) = &self.cfg.post_hook else { return };
        let failed = || {
            if let Some(m) = self.metrics.get() {
                m.hook.inc();
            }
        };
        match std::process::Command::new(hook).arg(path).status() {
            Ok(s) if s.success() => tracing::info!(hook = %hook.display(), file = %path.display(), "post-backup hook succeeded"),
            Ok(s) => {
                failed();
                tracing::error!(hook = %hook.display(), file = %path.display(), status = %s, "post-backup hook failed; the backup is only on this machine")
            }
            Err(e) => {
                failed();
                tracing::error!(hook = %hook.display(), error = %e, "cannot run the post-backup hook; the backup is only on this machine")
            }
        }
    }
}

/// The node's backup metrics.
struct BackupMetrics {
    total: prometheus::IntCounterVec,
    last: prometheus::Gauge,
    hook: prometheus::IntCounter,
}

/// This node's audit segments (`audit-*.jsonl`) by name, the newest cut after its last
/// complete line.
fn audit_segments(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read the audit directory {}: {e}", dir.display())),
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let mut bytes = fs::read(&path).map_err(|e| format!("cannot read the audit segment {}: {e}", path.display()))?;
        let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(end);
        out.push((name, bytes));
    }
    Ok(out)
}

/// Scheduled backups: while this node leads, asks for a backup (`reason = "scheduled"`, by the
/// system) whenever the newest backup point is older than `every`. Any node may run it; only
/// the leader proposes, and a change of leader at worst yields one extra backup.
pub async fn schedule(cluster: Arc<crate::cluster::node::ClusterNode>, every: Duration) {
    let tick = (every / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(tick).await;
        if cluster.leader() != Some(cluster.id) {
            continue;
        }
        let last = cluster.store().cluster().backups.last().map(|b| b.at);
        let now = chrono::Utc::now();
        let due = last.is_none_or(|at| now.signed_duration_since(at).to_std().unwrap_or_default() >= every);
        if !due {
            continue;
        }
        let id = super::new_id(now);
        match cluster.backup(crate::registry::Actor::system(), id.clone(), "scheduled".into()).await {
            Ok(index) => tracing::info!(backup = %id, index, "scheduled backup requested"),
            Err(e) => tracing::warn!(error = %e, "cannot request the scheduled backup; retrying at the next tick"),
        }
    }
}
