//! Restoring a backup's registry part into a fresh data directory (`lgsp backup restore`): the
//! replicated state of a [`SnapshotDoc`] becomes the state of a new one-node cluster.
//!
//! Invariants: the data directory already holds the new cluster's identity (`init_offline`)
//! and no registry or Raft log; the restored node starts as if it had compacted its log up to
//! the backup's index: the state is installed as the current snapshot (so a node joining later
//! receives all of it, never a replay from index 1 onto an empty registry), the log is purged
//! up to that index, and the membership is this node alone. The snapshot point carries term 0,
//! so every term the new cluster elects is newer. Registry rows, settings and the admin audit
//! trail are written byte for byte; only the cluster bookkeeping (nodes, join tokens,
//! draining) is reset to the new cluster's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::{CommittedLeaderId, LogId, Membership, SnapshotMeta, StoredMembership};

use super::snapshot::{new_snapshot_id, SnapshotDoc};
use super::store::{open_storage, StoreError, LOG_FILE, REGISTRY_FILE};
use super::types::{NodeInfo, NodeRecord, FIRST_NODE};

/// Installs `registry` (an encoded [`SnapshotDoc`]) as the whole state of the new cluster whose
/// first node (`info`) lives in `data_dir`. Returns the restored index.
pub fn restore_registry(data_dir: &Path, registry: &[u8], info: NodeInfo, at: crate::registry::Timestamp) -> Result<u64, StoreError> {
    if data_dir.join(REGISTRY_FILE).exists() || data_dir.join(LOG_FILE).exists() {
        return Err(StoreError::Snapshot(format!(
            "{} already holds a registry or a Raft log; restore only into a fresh data directory",
            data_dir.display()
        )));
    }
    let mut doc = SnapshotDoc::decode(registry)?;
    let index = doc.last_applied.map_or(0, |l| l.index);
    let log_id = LogId::new(CommittedLeaderId::new(0, 0), index);
    let membership = Membership::new(vec![BTreeSet::from([FIRST_NODE])], BTreeMap::from([(FIRST_NODE, info.clone())]));
    doc.last_applied = Some(log_id);
    doc.membership = StoredMembership::new(Some(log_id), membership);
    doc.cluster.nodes = BTreeMap::from([(FIRST_NODE, NodeRecord { name: info.name.clone(), joined_at: at, voter: true })]);
    doc.cluster.join_tokens.clear();
    doc.cluster.draining.clear();
    let bytes = doc.encode()?;
    let meta =
        SnapshotMeta { last_log_id: Some(log_id), last_membership: doc.membership.clone(), snapshot_id: new_snapshot_id(Some(&log_id)) };

    let (store, log, _) = open_storage(data_dir)?;
    store.install_snapshot(&meta, bytes)?;
    log.purge_upto(log_id)?;
    Ok(index)
}

/// The replicated state of the registry file in `data_dir`, as a snapshot document (to prove a
/// restore reproduced it). Opens the file; the node must not be running.
pub fn read_state(data_dir: &Path) -> Result<SnapshotDoc, StoreError> {
    let (store, _, _) = open_storage(data_dir)?;
    store.snapshot_doc()
}
