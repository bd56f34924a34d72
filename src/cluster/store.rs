//! Durable registry storage in one redb file.
//!
//! Tables: one per entity kind (key -> JSON row), `settings`, `meta` (last applied index) and
//! `admin_audit` (index -> [`AuditEntry`]). Invariants: a command's rows, its audit entry and the
//! new applied index are committed in a single fsynced transaction, so a crash leaves either all
//! of it or none; the in-memory [`State`] is rolled back if the commit fails; commands are
//! applied one at a time in index order.

use std::path::Path;
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::registry::{self, Envelope, Outcome, RegistryError, State, Timestamp};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("admin_audit");
const LAST_APPLIED: &str = "last_applied";

fn rows(name: &'static str) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

#[derive(Debug, Error)]
pub enum StoreError {
    /// The registry refused the command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] RegistryError),
    #[error("registry storage failed: {0}; check the data directory's disk and permissions")]
    Storage(String),
    #[error("registry storage holds a row that cannot be read ({table}/{key}): {reason}; restore from backup")]
    Corrupt { table: String, key: String, reason: String },
}

fn storage<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// One line of the admin audit trail: who changed what, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub index: u64,
    pub at: Timestamp,
    pub user: String,
    pub role: String,
    #[serde(default)]
    pub agency: Option<String>,
    pub action: String,
    pub target: String,
    #[serde(default)]
    pub reason: Option<String>,
}

pub struct Store {
    db: Database,
    state: RwLock<State>,
    /// Serialises proposals; holds the last applied index.
    writer: Mutex<u64>,
    /// Announces each newly applied index (read views rebuild from it).
    applied_tx: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the registry file and loads the whole state into memory.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        // The whole registry lives in memory as `State`; redb's page cache only needs to hold
        // what a write transaction touches, so it is kept small (its default would cache the
        // whole file a second time).
        let db = redb::Builder::new()
            .set_cache_size(4 << 20)
            .create(path)
            .map_err(|e| StoreError::Storage(format!("cannot open {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(storage)?;
        {
            tx.open_table(META).map_err(storage)?;
            tx.open_table(SETTINGS).map_err(storage)?;
            tx.open_table(AUDIT).map_err(storage)?;
            for t in State::TABLES {
                tx.open_table(rows(t)).map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)?;

        // Decoded on one thread on purpose: parallel decoding used no less CPU and raised peak
        // memory (per-thread allocator arenas), see BENCHMARKS.md.
        let mut state = State::default();
        let rtx = db.begin_read().map_err(storage)?;
        for t in State::TABLES {
            let table = rtx.open_table(rows(t)).map_err(storage)?;
            for row in table.iter().map_err(storage)? {
                let (k, v) = row.map_err(storage)?;
                state.load_row(t, v.value()).map_err(|e| StoreError::Corrupt {
                    table: t.into(),
                    key: k.value().into(),
                    reason: e.to_string(),
                })?;
            }
        }
        let settings = rtx.open_table(SETTINGS).map_err(storage)?;
        if let Some(v) = settings.get("settings").map_err(storage)? {
            state.load_settings(v.value()).map_err(|e| StoreError::Corrupt {
                table: "settings".into(),
                key: "settings".into(),
                reason: e.to_string(),
            })?;
        }
        let last = rtx.open_table(META).map_err(storage)?.get(LAST_APPLIED).map_err(storage)?.map(|v| v.value()).unwrap_or(0);
        state.rebuild_indexes();
        let (applied_tx, _) = tokio::sync::watch::channel(last);
        Ok(Store { db, state: RwLock::new(state), writer: Mutex::new(last), applied_tx })
    }

    /// Applies a command and makes it durable. Blocking (fsync): call from a blocking context.
    pub fn propose(&self, env: &Envelope) -> Result<Outcome, StoreError> {
        let mut last = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let cp = state.checkpoint();
        let outcome = registry::apply(&mut state, env)?;
        let index = *last + 1;
        match self.persist(&mut state, env, &outcome, index) {
            Ok(()) => {
                *last = index;
                drop(state);
                self.applied_tx.send_replace(index);
                Ok(outcome)
            }
            Err(e) => {
                state.rollback(cp);
                let _ = state.drain_changes();
                Err(e)
            }
        }
    }

    fn persist(&self, state: &mut State, env: &Envelope, outcome: &Outcome, index: u64) -> Result<(), StoreError> {
        let changes = state.drain_changes();
        let tx = self.db.begin_write().map_err(storage)?;
        {
            for (table, key, value) in &changes.rows {
                let mut t = tx.open_table(rows(table)).map_err(storage)?;
                match value {
                    Some(bytes) => {
                        t.insert(key.as_str(), bytes.as_slice()).map_err(storage)?;
                    }
                    None => {
                        t.remove(key.as_str()).map_err(storage)?;
                    }
                }
            }
            if let Some(s) = &changes.settings {
                tx.open_table(SETTINGS).map_err(storage)?.insert("settings", s.as_slice()).map_err(storage)?;
            }
            tx.open_table(META).map_err(storage)?.insert(LAST_APPLIED, index).map_err(storage)?;
            if !env.command.is_bookkeeping() {
                let entry = AuditEntry {
                    index,
                    at: env.at,
                    user: env.actor.user.clone(),
                    role: env.actor.role.as_str().into(),
                    agency: env.actor.agency.clone(),
                    action: outcome.kind.into(),
                    target: outcome.target.clone(),
                    reason: env.command.reason().map(str::to_owned),
                };
                let bytes = serde_json::to_vec(&entry).map_err(storage)?;
                tx.open_table(AUDIT).map_err(storage)?.insert(index, bytes.as_slice()).map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)
    }

    /// The applied state, for reading. Do not hold across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes whenever a command has been applied and made durable.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    pub fn last_applied(&self) -> u64 {
        *self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admin audit entries, newest first, that pass `keep`, at most `limit`.
    pub fn audit(&self, limit: usize, keep: impl Fn(&AuditEntry) -> bool) -> Result<Vec<AuditEntry>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let rtx = self.db.begin_read().map_err(storage)?;
        let t = rtx.open_table(AUDIT).map_err(storage)?;
        for row in t.iter().map_err(storage)?.rev() {
            let (k, v) = row.map_err(storage)?;
            let e: AuditEntry = serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                table: "admin_audit".into(),
                key: k.value().to_string(),
                reason: e.to_string(),
            })?;
            if keep(&e) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
