//! Tests of the Raft storage: openraft's conformance suite against [`LogStore`] and
//! [`StateMachine`], then what openraft does not check: everything survives a restart, a
//! refused command is an outcome that changes nothing, a snapshot installed on a fresh node
//! reproduces the registry and the audit trail, and a foreign or damaged snapshot is refused.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine, Snapshot};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use serde_json::json;
use tempfile::TempDir;

use super::log_store::LogStore;
use super::store::{open_storage, Applied, StateMachine, Store};
use super::types::{ClusterCommand, ClusterEnvelope, ClusterOutcome, ClusterRefusal, NodeId, NodeInfo, Request, TypeConfig};
use crate::registry::{Actor, Command, Envelope, Outcome, RegistryError, SecurityClearance, State, Timestamp};

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let (_store, log, sm) = open_storage(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

/// As a running node opens its log: it reports its leader's own entries before they are
/// flushed (`log_store`). (The state machine is not made to wait for the log here: the suite
/// applies entries it never appended.)
struct ServingBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for ServingBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = TempDir::new().map_err(|e| StorageIOError::write(&e))?;
        let (_store, mut log, sm) = open_storage(dir.path()).map_err(|e| StorageIOError::write(&e))?;
        // The suite's own node id.
        log.serve_as(0).map_err(|e| StorageIOError::write(&e))?;
        Ok((dir, log, sm))
    }
}

/// openraft's own storage conformance suite (a plain test: it makes its own runtimes).
#[test]
fn openraft_conformance_suite() {
    if let Err(e) = Suite::test_all(RedbBuilder) {
        panic!("openraft's storage suite failed: {e}");
    }
    if let Err(e) = Suite::test_all(ServingBuilder) {
        panic!("openraft's storage suite failed on a serving log: {e}");
    }
}

/// The leader's own entries are reported at once, readable at once (replication reads them),
/// and made durable by the flusher; a follower's entries are durable before the append returns.
#[tokio::test]
async fn a_leaders_own_entries_are_flushed_in_the_background_and_a_followers_at_once() {
    let dir = TempDir::new().expect("temp dir");
    let entries = workload();
    {
        let (_store, mut log, _sm) = open(dir.path());
        log.serve_as(1).expect("serve");
        let mut durable = log.durable();
        // Node 1 leads term 2 (the workload's entries of term 2 are node 1's own).
        log.save_vote(&Vote::new_committed(2, 1)).await.expect("vote");
        log.blocking_append(entries.clone()).await.expect("append");
        assert_eq!(log.try_get_log_entries(0..100).await.expect("log"), entries, "readable before the flush");
        let last = entries.last().expect("entries").log_id;
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), durable.wait_for(|d| d.covers(last.index)))
            .await
            .expect("flushed within 10 s")
            .expect("log open")
            .clone();
        assert_eq!(d, super::log_store::Durable { last: Some(last), failed: None });

        // Node 1 now follows node 2 in term 3: entries of node 2's are durable on return.
        log.save_vote(&Vote::new_committed(3, 2)).await.expect("vote");
        let theirs = Entry { log_id: LogId::new(CommittedLeaderId::new(3, 2), last.index + 1), payload: EntryPayload::Blank };
        log.blocking_append(vec![theirs.clone()]).await.expect("append");
        assert_eq!(log.durable().borrow().last, Some(theirs.log_id), "a follower's append is durable when it returns");

        // Truncations and purges keep what is durable at the log's end, as openraft reads it.
        log.truncate(theirs.log_id).await.expect("truncate");
        assert_eq!(log.durable().borrow().last, Some(last));
        assert_eq!(log.get_log_state().await.expect("state").last_log_id, Some(last));
        log.blocking_append(vec![theirs.clone()]).await.expect("append");
        let beyond = LogId::new(CommittedLeaderId::new(3, 2), last.index + 50);
        log.purge(beyond).await.expect("purge past the end (a snapshot installed beyond the log)");
        assert_eq!(log.durable().borrow().last, Some(beyond));
        assert_eq!(log.get_log_state().await.expect("state").last_log_id, Some(beyond));
    }
    let (_store, mut log, _sm) = open(dir.path());
    assert_eq!(
        log.get_log_state().await.expect("state").last_log_id.map(|l| l.index),
        Some(entries.len() as u64 + 50),
        "survives a reopening"
    );
    assert_eq!(log.durable().borrow().last.map(|l| l.index), Some(entries.len() as u64 + 50));
}

/// The tail in memory serves reads with the file: any range over written entries, the
/// leader's entries not yet written, and both; a truncation drops unwritten entries for good
/// and writes the ones before it, so the file never has a hole.
#[tokio::test]
async fn the_logs_tail_and_file_read_as_one_log_and_unwritten_entries_never_leave_a_hole() {
    let dir = TempDir::new().expect("temp dir");
    let blank = |term: u64, leader: NodeId, index: u64| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
        payload: EntryPayload::Blank,
    };
    // 300 entries from leader 2 (durable at once), then 10 of this node's own as leader 1.
    let theirs: Vec<_> = (1..=300).map(|i| blank(1, 2, i)).collect();
    let own: Vec<_> = (301..=310).map(|i| blank(2, 1, i)).collect();
    let all: Vec<_> = theirs.iter().chain(&own).cloned().collect();
    {
        let (_store, mut log, _sm) = open(dir.path());
        log.serve_as_without_flusher(1);
        log.save_vote(&Vote::new_committed(1, 2)).await.expect("vote");
        for chunk in theirs.chunks(50) {
            log.blocking_append(chunk.to_vec()).await.expect("append");
        }
        log.save_vote(&Vote::new_committed(2, 1)).await.expect("vote");
        log.blocking_append(own.clone()).await.expect("append");
        assert_eq!(log.durable().borrow().last, Some(theirs[299].log_id), "the leader's own entries are not written yet");
        for (from, to) in [(0, 311), (1, 2), (40, 60), (250, 305), (299, 311), (305, 400), (301, 302)] {
            let want: Vec<_> = all.iter().filter(|e| (from..to).contains(&e.log_id.index)).cloned().collect();
            assert_eq!(log.try_get_log_entries(from..to).await.expect("read"), want, "entries {from}..{to}");
        }
        assert_eq!(log.try_get_log_entries(..=3).await.expect("read"), all[..3].to_vec());
        assert_eq!(log.try_get_log_entries(308..).await.expect("read"), all[307..].to_vec());
        assert_eq!(log.get_log_state().await.expect("state").last_log_id, Some(own[9].log_id));

        // Deposed by node 2 in term 3, whose log differs from 305 on: the truncation writes 301..=304
        // and drops 305..=310, written or not.
        log.save_vote(&Vote::new_committed(3, 2)).await.expect("vote");
        log.truncate(own[4].log_id).await.expect("truncate");
        assert_eq!(log.durable().borrow().last, Some(own[3].log_id), "the file ends just before the truncation");
        assert_eq!(log.try_get_log_entries(0..400).await.expect("read"), all[..304].to_vec());
        assert_eq!(log.get_log_state().await.expect("state").last_log_id, Some(own[3].log_id));
        let next = blank(3, 2, 305);
        log.blocking_append(vec![next.clone()]).await.expect("append after the truncation");
        assert_eq!(log.try_get_log_entries(303..).await.expect("read"), vec![all[302].clone(), all[303].clone(), next.clone()]);
    }
    let (_store, mut log, _sm) = open(dir.path());
    let mut want = all[..304].to_vec();
    want.push(blank(3, 2, 305));
    assert_eq!(log.try_get_log_entries(0..400).await.expect("read"), want, "the same log after reopening, without a hole");
}

/// On a node the state machine writes applied entries to the file in groups (a thread, a
/// little later); whatever reads the file (the admin audit, snapshots) still sees every applied
/// entry at once, and a reopened store holds them all.
#[tokio::test]
async fn applied_entries_reach_the_file_later_but_every_reader_of_the_file_sees_them() {
    let dir = TempDir::new().expect("temp dir");
    let entries = workload();
    let before = {
        let (store, mut log, mut sm) = open(dir.path());
        store.start_flusher().expect("flusher");
        log.blocking_append(entries.clone()).await.expect("append");
        sm.apply(entries.clone()).await.expect("apply");
        let actions: Vec<String> = store.audit(10, |_| true).expect("audit").into_iter().map(|e| e.action).collect();
        assert!(actions.contains(&"cluster.join".to_owned()), "the audit search sees the last entries at once: {actions:?}");
        assert_eq!(store.snapshot_doc().expect("doc").last_applied, Some(lid(2, 9)), "a snapshot holds every applied entry");

        // More entries after that: the flusher writes them by itself.
        let more = vec![registry(2, 10, agency("000.00.02.H31")), registry(2, 11, agency("000.00.03.H31"))];
        log.blocking_append(more.clone()).await.expect("append");
        sm.apply(more).await.expect("apply");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.probe().expect("probe") < 11 {
            assert!(std::time::Instant::now() < deadline, "the flusher wrote the entries within 10 s");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        everything(&store)
    };
    let (store, _log, _sm) = open(dir.path());
    assert_eq!(everything(&store), before, "everything applied is in the reopened file");
    assert_eq!(store.read().agencies.len(), 4);
}

fn at() -> Timestamp {
    "2026-01-05T02:00:00Z".parse().expect("instant")
}

fn lid(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn registry(term: u64, index: u64, command: Command) -> Entry<TypeConfig> {
    Entry { log_id: lid(term, index), payload: EntryPayload::Normal(Request::Registry(Envelope::new(at(), Actor::system(), command))) }
}

fn cluster(term: u64, index: u64, command: ClusterCommand) -> Entry<TypeConfig> {
    let env = ClusterEnvelope { at: at(), actor: Actor::system(), command };
    Entry { log_id: lid(term, index), payload: EntryPayload::Normal(Request::Cluster(env)) }
}

fn members(term: u64, index: u64, ids: &[NodeId]) -> Entry<TypeConfig> {
    let set: BTreeSet<NodeId> = ids.iter().copied().collect();
    Entry { log_id: lid(term, index), payload: EntryPayload::Membership(Membership::new(vec![set], ())) }
}

fn agency(code: &str) -> Command {
    Command::CreateAgency { code: code.into(), name: format!("Agency {code}"), parent: None, contacts: vec![] }
}

fn system(id: &str, agency: &str) -> Command {
    Command::CreateSystem {
        id: id.into(),
        agency: agency.into(),
        name: id.into(),
        description: String::new(),
        security: SecurityClearance::Level { level: 3, decision: String::new() },
        contacts: vec![],
    }
}

fn token(id: &str) -> ClusterCommand {
    ClusterCommand::CreateJoinToken {
        id: id.into(),
        secret_sha256: "aa".into(),
        expires_at: "2026-01-05T03:00:00Z".parse().expect("instant"),
        voter: true,
    }
}

/// A workload touching every kind of replicated data: registry rows, settings, the admin
/// audit trail, cluster bookkeeping and the membership.
fn workload() -> Vec<Entry<TypeConfig>> {
    vec![
        members(1, 1, &[1]),
        registry(1, 2, agency("000.00.00.H31")),
        registry(1, 3, agency("000.00.01.H31")),
        registry(1, 4, system("prov", "000.00.00.H31")),
        registry(1, 5, Command::SetHolidays { holidays: vec!["2026-04-30".parse().expect("date")] }),
        cluster(1, 6, token("t1")),
        cluster(1, 7, ClusterCommand::ConsumeJoinToken { id: "t1".into(), secret_sha256: "aa".into(), name: "n2".into() }),
        members(1, 8, &[1, 2]),
        Entry { log_id: lid(2, 9), payload: EntryPayload::Blank },
    ]
}

/// The whole registry as comparable JSON.
fn registry_json(s: &State) -> serde_json::Value {
    json!({
        "agencies": s.agencies.values().collect::<Vec<_>>(),
        "systems": s.systems.values().collect::<Vec<_>>(),
        "services": s.services.values().collect::<Vec<_>>(),
        "subscriptions": s.subscriptions.values().collect::<Vec<_>>(),
        "credentials": s.credentials.values().collect::<Vec<_>>(),
        "catalogs": s.catalogs.values().collect::<Vec<_>>(),
        "users": s.users.values().collect::<Vec<_>>(),
        "tokens": s.tokens.values().collect::<Vec<_>>(),
        "revoked_tokens": s.revoked_tokens.values().collect::<Vec<_>>(),
        "settings": s.settings,
    })
}

/// Everything a node's replicated state consists of, for comparing two stores.
fn everything(store: &Store) -> serde_json::Value {
    let audit = store.audit(usize::MAX, |_| true).expect("audit");
    json!({
        "registry": registry_json(&store.read()),
        "audit": audit,
        "cluster": store.cluster_state(),
        "applied": store.applied_log_id(),
        "membership": store.membership(),
    })
}

fn open(dir: &Path) -> (Arc<Store>, LogStore, StateMachine) {
    open_storage(dir).expect("open storage")
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = TempDir::new().expect("temp dir");
    let entries = workload();
    let (before, snap_meta) = {
        let (store, mut log, mut sm) = open(dir.path());
        log.save_vote(&Vote::new(2, 1)).await.expect("vote");
        log.blocking_append(entries.clone()).await.expect("append");
        let replies = sm.apply(entries[..8].to_vec()).await.expect("apply");
        assert_eq!(replies.len(), 8, "one reply per entry");
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
        assert_eq!(snap.meta.last_log_id, Some(lid(1, 8)));
        sm.apply(entries[8..].to_vec()).await.expect("apply the rest");
        assert_eq!(store.last_applied(), 9);
        assert_eq!(store.outcome(7), Some(Applied::Cluster(Ok(ClusterOutcome::Joined { node_id: 2 }))));
        (everything(&store), snap.meta)
    };

    let (store, mut log, mut sm) = open(dir.path());
    assert_eq!(everything(&store), before, "registry, audit, cluster state, applied id and membership survive");
    assert_eq!(store.last_applied(), 9);
    assert_eq!(*store.subscribe().borrow(), 9);
    assert_eq!(store.read().agencies.len(), 2);
    assert_eq!(store.read().settings.holidays.len(), 1);
    assert!(store.cluster_state().nodes.contains_key(&2));
    assert_eq!(store.membership().log_id(), &Some(lid(1, 8)));
    let actions: Vec<String> = store.audit(10, |_| true).expect("audit").into_iter().map(|e| e.action).collect();
    assert!(actions.contains(&"cluster.join".to_owned()) && actions.contains(&"cluster.join_token.create".to_owned()), "{actions:?}");
    assert_eq!(sm.applied_state().await.expect("applied"), (Some(lid(2, 9)), store.membership()));
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
    assert_eq!(log.try_get_log_entries(0..100).await.expect("log"), entries);
    assert_eq!(log.get_log_state().await.expect("state").last_log_id, Some(lid(2, 9)));
    let current = sm.get_current_snapshot().await.expect("snapshot").expect("a current snapshot");
    assert_eq!(current.meta, snap_meta, "the current snapshot keeps its meta across a restart");
}

/// Appends, truncations and purges apply in order: whatever mix of them openraft makes, the
/// log read back at once and after a restart is the model's.
#[tokio::test]
async fn queued_log_changes_apply_in_order_and_survive_a_restart() {
    let dir = TempDir::new().expect("temp dir");
    let entry = |term: u64, index: u64| registry(term, index, agency(&format!("000.00.{:02}.H{:02}", index % 100, term % 100)));
    let mut model: Vec<Entry<TypeConfig>> = Vec::new();
    {
        let (_store, mut log, _sm) = open(dir.path());
        for index in 1..=40 {
            let e = entry(1, index);
            model.push(e.clone());
            log.blocking_append([e]).await.expect("append");
        }
        // A follower's conflicting tail is replaced by the new leader's entries.
        log.truncate(lid(1, 31)).await.expect("truncate");
        model.truncate(30);
        let newer: Vec<_> = (31..=45).map(|i| entry(2, i)).collect();
        model.extend(newer.clone());
        log.blocking_append(newer).await.expect("append after truncate");
        assert_eq!(log.try_get_log_entries(0..100).await.expect("read"), model, "read back at once");
        log.purge(lid(1, 10)).await.expect("purge");
        model.drain(..10);
        let state = log.get_log_state().await.expect("state");
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(lid(1, 10)), Some(lid(2, 45))));
    }
    let (_store, mut log, _sm) = open(dir.path());
    assert_eq!(log.try_get_log_entries(0..100).await.expect("read"), model, "the same log after a restart");
    let state = log.get_log_state().await.expect("state");
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(lid(1, 10)), Some(lid(2, 45))));
}

/// A batch entry (group commit): members apply in order, each with its own outcome; a refused
/// member changes nothing and does not stop the others; every accepted member has its own audit
/// line under the entry's index, and the entries after it keep theirs.
#[tokio::test]
async fn a_batch_entry_applies_each_member_with_its_own_outcome() {
    let dir = TempDir::new().expect("temp dir");
    let batch = |index: u64, members: Vec<Request>| Entry { log_id: lid(1, index), payload: EntryPayload::Normal(Request::Batch(members)) };
    let reg = |c: Command| Request::Registry(Envelope::new(at(), Actor::system(), c));
    {
        let (store, _log, mut sm) = open(dir.path());
        sm.apply(vec![
            registry(1, 1, agency("000.00.00.H31")),
            batch(2, vec![reg(agency("000.00.01.H31")), reg(agency("000.00.00.H31")), reg(agency("000.00.02.H31"))]),
            registry(1, 3, agency("000.00.03.H31")),
        ])
        .await
        .expect("apply");
        let outcome = store.outcome(2).expect("outcome of the batch");
        let Applied::Batch(members) = outcome.clone() else { panic!("a batch outcome: {outcome:?}") };
        assert_eq!(members.len(), 3);
        assert!(matches!(&members[0], Applied::Registry(Ok(_))), "{members:?}");
        assert!(matches!(&members[1], Applied::Registry(Err(RegistryError::AlreadyExists { .. }))), "{members:?}");
        assert!(matches!(&members[2], Applied::Registry(Ok(_))), "{members:?}");
        assert_eq!(outcome.clone().member(Some(1)), Some(members[1].clone()), "a member's own outcome");
        assert_eq!(outcome.clone().member(Some(3)), None, "no such member");
        assert_eq!(store.outcome(3).expect("outcome").member(Some(0)), None, "a plain entry has no members");
    }
    let (store, _log, _sm) = open(dir.path());
    assert_eq!(store.read().agencies.len(), 4, "the refused member changed nothing, the others stand");
    let audit = store.audit(10, |_| true).expect("audit");
    let lines: Vec<(u64, String)> = audit.iter().rev().map(|e| (e.index, e.target.clone())).collect();
    assert_eq!(
        lines,
        vec![
            (1, "agency/000.00.00.H31".into()),
            (2, "agency/000.00.01.H31".into()),
            (2, "agency/000.00.02.H31".into()),
            (3, "agency/000.00.03.H31".into())
        ],
        "one audit line per accepted write, in log order"
    );
}

#[tokio::test]
async fn a_refused_command_is_an_outcome_and_changes_nothing() {
    let dir = TempDir::new().expect("temp dir");
    {
        let (store, _log, mut sm) = open(dir.path());
        sm.apply(vec![
            registry(1, 1, agency("000.00.00.H31")),
            registry(1, 2, agency("000.00.00.H31")),
            cluster(1, 3, ClusterCommand::ConsumeJoinToken { id: "nope".into(), secret_sha256: "x".into(), name: "n".into() }),
        ])
        .await
        .expect("apply");
        assert!(matches!(store.outcome(1), Some(Applied::Registry(Ok(Outcome { kind: "create_agency", .. })))), "{:?}", store.outcome(1));
        assert!(matches!(store.outcome(2), Some(Applied::Registry(Err(RegistryError::AlreadyExists { .. })))), "{:?}", store.outcome(2));
        assert_eq!(store.outcome(3), Some(Applied::Cluster(Err(ClusterRefusal::BadJoinToken))));
        assert_eq!(store.last_applied(), 3, "a refusal still takes its index");
        assert_eq!(store.audit(10, |_| true).expect("audit").len(), 1, "only the accepted command is audited");

        // Applied directly on the store as well (as the state machine does).
        let applied = store.apply(vec![registry(1, 4, agency("000.00.00.H31")), registry(1, 5, agency("000.00.01.H31"))]).expect("apply");
        assert!(matches!(applied[0], (4, Applied::Registry(Err(RegistryError::AlreadyExists { .. })))), "{applied:?}");
        assert!(matches!(applied[1], (5, Applied::Registry(Ok(Outcome { kind: "create_agency", .. })))), "{applied:?}");
        assert_eq!(store.last_applied(), 5);
    }
    let (store, _log, _sm) = open(dir.path());
    assert_eq!(store.read().agencies.len(), 2);
    assert_eq!(store.last_applied(), 5);
    assert_eq!(store.audit(10, |_| true).expect("audit").iter().map(|e| e.index).collect::<Vec<_>>(), vec![5, 1]);
}

/// Readers that depend on some tables only (the gateway view) learn from `last_changed`
/// whether anything they read changed since they were built.
#[test]
fn last_changed_names_the_last_entry_that_changed_each_table() {
    let dir = TempDir::new().expect("temp dir");
    {
        let (store, _log, _sm) = open(dir.path());
        store.apply(vec![registry(1, 1, agency("000.00.00.H31"))]).expect("apply");
        store.apply(vec![registry(1, 2, system("s1", "000.00.00.H31"))]).expect("apply");
        store.apply(vec![registry(1, 3, agency("000.00.00.H31"))]).expect("apply"); // refused: changes nothing
        assert_eq!(store.last_applied(), 3);
        assert_eq!(store.last_changed(&["agencies"]), 1);
        assert_eq!(store.last_changed(&["systems"]), 2);
        assert_eq!(store.last_changed(&["agencies", "systems"]), 2);
        assert_eq!(store.last_changed(&["users", "notices"]), 0, "untouched since the store was opened empty");
        // Entries applied together count at the last index of their batch (an upper bound).
        store.apply(vec![registry(1, 4, agency("000.00.01.H31")), registry(1, 5, system("s2", "000.00.00.H31"))]).expect("apply");
        assert_eq!(store.last_changed(&["agencies"]), 5);
        assert_eq!(store.last_changed(&["users"]), 0);
    }
    // Reopened, the store cannot tell what changed before: everything counts as changed then.
    let (store, _log, _sm) = open(dir.path());
    assert_eq!(store.last_changed(&["users"]), 5);
}

#[test]
fn settling_names_the_tables_changed_and_keeps_their_rows_for_the_next_write() {
    // The store applies in memory and writes later: `settle` ends a batch (its refused commands
    // already rolled back) and names what it changed; the rows wait for `drain_changes`.
    let mut s = State::default();
    let env = |c| Envelope::new(at(), Actor::system(), c);
    crate::registry::apply(&mut s, &env(agency("000.00.00.H31"))).expect("apply");
    assert!(crate::registry::apply(&mut s, &env(system("prov", "000.00.09.H31"))).is_err(), "no such agency");
    assert_eq!(s.settle(), vec!["agencies"], "the refused command changed nothing");
    assert!(s.settle().is_empty(), "nothing changed since");
    crate::registry::apply(&mut s, &env(agency("000.00.01.H31"))).expect("apply");
    assert_eq!(s.settle(), vec!["agencies"]);
    let rows: Vec<String> = s.drain_changes().rows.into_iter().map(|(_, key, _)| key).collect();
    assert_eq!(rows.len(), 2, "both batches' rows wait for the write: {rows:?}");
    assert!(s.drain_changes().rows.is_empty(), "written once");
}

async fn transfer(from: &mut StateMachine, to: &mut StateMachine) -> Snapshot<TypeConfig> {
    let snap = from.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let current = from.get_current_snapshot().await.expect("current").expect("a current snapshot");
    assert_eq!(current.meta, snap.meta);
    let mut rx = to.begin_receiving_snapshot().await.expect("begin");
    *rx = *current.snapshot;
    to.install_snapshot(&snap.meta, rx).await.expect("install");
    snap
}

#[tokio::test]
async fn a_snapshot_installed_on_a_fresh_node_reproduces_everything() {
    let (dir_a, dir_b) = (TempDir::new().expect("temp dir"), TempDir::new().expect("temp dir"));
    let (store_a, _log_a, mut sm_a) = open(dir_a.path());
    sm_a.apply(workload()).await.expect("apply");
    let expected = everything(&store_a);
    let snap_meta = {
        let (store_b, _log_b, mut sm_b) = open(dir_b.path());
        sm_b.apply(vec![registry(1, 1, agency("000.00.09.H31"))]).await.expect("state to be replaced");
        let changes = store_b.subscribe();
        let snap = transfer(&mut sm_a, &mut sm_b).await;
        assert!(changes.has_changed().expect("watch"), "installing announces the new applied index");
        assert_eq!(everything(&store_b), expected, "registry, audit trail, cluster state and membership are identical");
        assert_eq!(store_b.outcome(1), None, "outcomes from before the snapshot are forgotten");
        assert_eq!(sm_b.applied_state().await.expect("applied"), (snap.meta.last_log_id, snap.meta.last_membership.clone()));
        snap.meta
    };
    // ... and it stays that way after a restart.
    let (store_b, _log_b, mut sm_b) = open(dir_b.path());
    assert_eq!(everything(&store_b), expected);
    assert_eq!(sm_b.get_current_snapshot().await.expect("current").expect("snapshot").meta, snap_meta);
    assert_eq!(std::fs::read_dir(dir_b.path().join("snapshots")).expect("dir").count(), 1, "older snapshots are deleted");
}

#[tokio::test]
async fn a_purged_log_and_its_snapshot_survive_a_restart() {
    let dir = TempDir::new().expect("temp dir");
    let entries = workload();
    let meta = {
        let (_store, mut log, mut sm) = open(dir.path());
        log.blocking_append(entries.clone()).await.expect("append");
        sm.apply(entries.clone()).await.expect("apply");
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.expect("build");
        log.purge(lid(1, 6)).await.expect("purge");
        snap.meta
    };
    let (_store, mut log, mut sm) = open(dir.path());
    let state = log.get_log_state().await.expect("log state");
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(lid(1, 6)), Some(lid(2, 9))));
    assert_eq!(log.try_get_log_entries(0..100).await.expect("log"), entries[6..].to_vec());
    assert_eq!(sm.get_current_snapshot().await.expect("current").expect("snapshot").meta, meta);
    assert_eq!(sm.applied_state().await.expect("applied").0, Some(lid(2, 9)));
}

#[tokio::test]
async fn a_foreign_or_damaged_snapshot_is_refused() {
    let (dir_a, dir_b) = (TempDir::new().expect("temp dir"), TempDir::new().expect("temp dir"));
    let (_store_a, _log_a, mut sm_a) = open(dir_a.path());
    sm_a.apply(workload()).await.expect("apply");
    let snap = sm_a.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let bytes = snap.snapshot.into_inner();
    let (store_b, _log_b, mut sm_b) = open(dir_b.path());

    let mut doc: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    doc["version"] = json!(99);
    let newer = serde_json::to_vec(&doc).expect("encode");
    doc["version"] = json!(1);
    doc["format"] = json!("something-else");
    let foreign = serde_json::to_vec(&doc).expect("encode");
    let mut wrong_meta = snap.meta.clone();
    wrong_meta.last_log_id = Some(lid(7, 70));
    let cases: Vec<(SnapshotMeta<NodeId, NodeInfo>, Vec<u8>, &str)> = vec![
        (snap.meta.clone(), newer, "format version 99, but this node reads only version 1; run the same lgsp version"),
        (snap.meta.clone(), foreign, "not \"lgsp-state-snapshot\""),
        (snap.meta.clone(), b"\x00not a snapshot".to_vec(), "damaged or is not an lgsp snapshot"),
        (snap.meta.clone(), bytes[..bytes.len() / 2].to_vec(), "damaged"),
        (wrong_meta, bytes.clone(), "damaged or mislabelled"),
    ];
    for (meta, data, why) in cases {
        let err = sm_b.install_snapshot(&meta, Box::new(Cursor::new(data))).await.expect_err("refused");
        assert!(err.to_string().contains(why), "{err} should say {why:?}");
        assert_eq!(store_b.last_applied(), 0, "nothing changed");
        assert!(sm_b.get_current_snapshot().await.expect("current").is_none(), "nothing changed");
    }
    assert_eq!(store_b.membership(), StoredMembership::default());
    // The genuine one is accepted.
    sm_b.install_snapshot(&snap.meta, Box::new(Cursor::new(bytes))).await.expect("install");
    assert_eq!(store_b.last_applied(), 9);
}

fn blanks(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry<TypeConfig>> {
    indexes.map(|i| Entry { log_id: lid(1, i), payload: EntryPayload::Blank }).collect()
}

/// A serving node's purge is one small durable write: the purged entries leave the log at
/// once (never read again, also after a restart) while their rows are deleted afterwards by the
/// flusher, a slice at a time between its writes. A purge beyond the log's end, with rows still
/// waiting for deletion, leaves a log that ends at the purge point, also after a restart.
#[tokio::test]
async fn a_serving_log_purges_at_once_and_deletes_the_rows_afterwards() {
    let dir = TempDir::new().expect("temp dir");
    let entries = blanks(1..=100);
    {
        let (_store, mut log, _sm) = open(dir.path());
        log.serve_as_without_flusher(1);
        log.save_vote(&Vote::new(1, 1)).await.expect("vote");
        log.blocking_append(entries.clone()).await.expect("append");
        log.purge(lid(1, 70)).await.expect("purge");
        let state = log.get_log_state().await.expect("state");
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(lid(1, 70)), Some(lid(1, 100))));
        assert_eq!(log.try_get_log_entries(0..200).await.expect("log"), entries[70..].to_vec(), "purged entries are not read");
        assert_eq!(log.rows_in_file().len(), 100, "without the flusher the rows wait");
    }
    let more = blanks(101..=110);
    {
        // Restarted before the rows were deleted: the same log.
        let (_store, mut log, _sm) = open(dir.path());
        let state = log.get_log_state().await.expect("state");
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(lid(1, 70)), Some(lid(1, 100))));
        assert_eq!(log.try_get_log_entries(0..200).await.expect("log"), entries[70..].to_vec());
        // Serving: the file thread deletes them (more than one slice) while appends go on.
        log.serve_as(1).expect("serve");
        log.blocking_append(more.clone()).await.expect("append");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while log.rows_in_file().first().is_some_and(|f| *f <= 70) {
            assert!(std::time::Instant::now() < deadline, "the purged rows were not deleted within 10 s");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The new entries are in the journal until a checkpoint.
        assert_eq!(log.rows_in_file(), (71..=100).collect::<Vec<u64>>());
        let expected: Vec<_> = entries[70..].iter().chain(&more).cloned().collect();
        assert_eq!(log.try_get_log_entries(0..200).await.expect("log"), expected);
    }
    {
        // A snapshot installed beyond the log's end purges all of it.
        let (_store, mut log, _sm) = open(dir.path());
        log.serve_as_without_flusher(1);
        log.purge(lid(1, 120)).await.expect("purge");
        assert_eq!(log.get_log_state().await.expect("state").last_log_id, Some(lid(1, 120)));
        assert_eq!(log.rows_in_file().len(), 40, "the rows wait for the flusher");
    }
    let (_store, mut log, _sm) = open(dir.path());
    let state = log.get_log_state().await.expect("state");
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(lid(1, 120)), Some(lid(1, 120))));
    assert!(log.try_get_log_entries(0..200).await.expect("log").is_empty());
}

/// The flusher thread writes without the writer lock: a reader of the file who comes while
/// such a write is in flight (nothing new waiting) waits for it, and sees every applied entry.
#[tokio::test]
async fn a_reader_of_the_file_waits_for_a_write_in_flight() {
    let dir = TempDir::new().expect("temp dir");
    let entries = workload();
    let (store, mut log, mut sm) = open(dir.path());
    let _writes_wait = store.defer_writes();
    log.blocking_append(entries.clone()).await.expect("append");
    sm.apply(entries).await.expect("apply");
    let in_flight = store.begin_flush().expect("drain").expect("the applied entries wait for their write");
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || store.snapshot_doc().map(|d| d.last_applied))
    };
    // Long enough for the reader to reach the file; it must then wait for the write.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    store.write(in_flight).expect("write");
    let seen = reader.join().expect("reader thread").expect("snapshot document");
    assert_eq!(seen, Some(lid(2, 9)), "the reader saw the file before the write in flight had finished");
}

/// The Raft log's files as a crash would leave them: copied while the log is open.
fn crash_copy(from: &Path) -> TempDir {
    let to = TempDir::new().expect("temp dir");
    for file in [super::store::LOG_FILE, "raft-log.wal"] {
        std::fs::copy(from.join(file), to.path().join(file)).expect("copy the log's files");
    }
    to
}

async fn log_after_crash(from: &Path) -> Vec<Entry<TypeConfig>> {
    let copy = crash_copy(from);
    let (_store, mut log, _sm) = open(copy.path());
    log.try_get_log_entries(0..1000).await.expect("log")
}

/// A serving follower's append is durable in the journal when it returns, before the file
/// holds it: a crash then loses none of it, nor the committed marker the journal carried. A
/// durable transaction of the file (here a truncation) retires the journal's records, so a
/// crash never brings truncated entries back, and the journal restarted at its beginning holds
/// what comes after.
#[tokio::test]
async fn a_followers_entries_survive_a_crash_in_the_journal_and_a_truncation_is_never_undone() {
    let dir = TempDir::new().expect("temp dir");
    let (_store, mut log, _sm) = open(dir.path());
    // No flusher: the entries stay in the journal only.
    log.serve_as_without_flusher(1);
    log.save_vote(&Vote::new_committed(1, 2)).await.expect("vote");
    let first = blanks(1..=20);
    log.blocking_append(first[..10].to_vec()).await.expect("append");
    log.save_committed(Some(lid(1, 5))).await.expect("committed");
    log.blocking_append(first[10..].to_vec()).await.expect("append");
    assert!(log.rows_in_file().is_empty(), "the file does not hold them yet");
    assert_eq!(log.durable().borrow().last, Some(lid(1, 20)), "durable when the append returns");
    assert_eq!(log_after_crash(dir.path()).await, first, "the journal brings them back");
    {
        let copy = crash_copy(dir.path());
        let (_store, mut log, _sm) = open(copy.path());
        assert_eq!(log.read_committed().await.expect("committed"), Some(lid(1, 5)), "and the committed marker they carried");
    }

    log.truncate(lid(1, 15)).await.expect("truncate");
    assert_eq!(log_after_crash(dir.path()).await, first[..14].to_vec(), "the truncated entries stay gone");

    log.save_vote(&Vote::new_committed(2, 2)).await.expect("vote");
    let newer: Vec<_> = (15..=16).map(|i| Entry { log_id: lid(2, i), payload: EntryPayload::Blank }).collect();
    log.blocking_append(newer.clone()).await.expect("append");
    let expected: Vec<_> = first[..14].iter().chain(&newer).cloned().collect();
    assert_eq!(log_after_crash(dir.path()).await, expected);
    let reopened = crash_copy(dir.path());
    let (_store, mut log, _sm) = open(reopened.path());
    assert_eq!(log.get_log_state().await.expect("state").last_log_id, Some(lid(2, 16)));
    assert_eq!(log.rows_in_file(), (1..=16).collect::<Vec<u64>>(), "opening writes the journal's entries into the file");
}

/// Once the journal holds enough the file thread checkpoints: the journaled entries move into the
/// file while appends go on; a clean stop writes the rest.
#[tokio::test]
async fn the_flusher_checkpoints_a_full_journal_and_a_stop_writes_the_rest() {
    let dir = TempDir::new().expect("temp dir");
    let mut appended = Vec::new();
    {
        let (_store, mut log, _sm) = open(dir.path());
        log.serve_as(1).expect("serve");
        log.save_vote(&Vote::new_committed(1, 2)).await.expect("vote");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while log.rows_in_file().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no checkpoint within 30 s");
            let next = appended.len() as u64 + 1;
            let chunk = blanks(next..=next + 199);
            log.blocking_append(chunk.clone()).await.expect("append");
            appended.extend(chunk);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let in_file = log.rows_in_file();
        assert_eq!(in_file, (1..=in_file.len() as u64).collect::<Vec<u64>>(), "the file's log has no hole");
    }
    let (_store, mut log, _sm) = open(dir.path());
    assert_eq!(log.rows_in_file().len(), appended.len());
    assert_eq!(log.try_get_log_entries(0..100_000).await.expect("log"), appended);
}

/// A crash during a checkpoint (the journal already in its next epoch, the file not yet
/// written) or after it loses nothing: the journal's two epochs are read in order.
#[tokio::test]
async fn a_crash_during_or_after_a_checkpoint_loses_nothing() {
    let dir = TempDir::new().expect("temp dir");
    let (_store, mut log, _sm) = open(dir.path());
    log.serve_as_without_flusher(1);
    log.save_vote(&Vote::new_committed(1, 2)).await.expect("vote");
    let all = blanks(1..=30);
    log.blocking_append(all[..10].to_vec()).await.expect("append");
    log.blocking_append(all[10..20].to_vec()).await.expect("append");
    // The file as it is before the checkpoint's transaction.
    let before = TempDir::new().expect("temp dir");
    std::fs::copy(dir.path().join(super::store::LOG_FILE), before.path().join(super::store::LOG_FILE)).expect("copy");
    log.checkpoint_now().expect("checkpoint");
    assert_eq!(log.rows_in_file(), (1..=20).collect::<Vec<u64>>());
    log.blocking_append(all[20..].to_vec()).await.expect("append");
    assert_eq!(log_after_crash(dir.path()).await, all, "after the checkpoint");
    // During it: the journal moved on, the file did not.
    std::fs::copy(dir.path().join("raft-log.wal"), before.path().join("raft-log.wal")).expect("copy");
    assert_eq!(log_after_crash(before.path()).await, all, "during the checkpoint");
}
