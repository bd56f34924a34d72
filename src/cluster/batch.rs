//! Group commit of client writes on the leader: writes that arrive while earlier ones are on
//! their way through Raft travel together in one log entry ([`Request::Batch`]).
//!
//! Why: openraft 0.9's core waits for each log append to be durable before it handles the next
//! message, so one entry per write means one fsync per write on every node, one after another:
//! a cluster's write rate would be its disk's fsync rate whatever the number of clients. With
//! at most [`IN_FLIGHT`] entries on their way, everything that arrives meanwhile waits in a queue
//! and becomes the next entry: one fsync (per node) for up to [`MAX_MEMBERS`] writes. A lone
//! write goes as a plain entry, so it pays nothing for this.
//!
//! Invariants: a write's answer is the index of the entry that carries it and its position in
//! the batch (`None` for a plain entry); members are applied in order and each has its own
//! outcome, so a refused member changes nothing and does not affect the others. A batch is
//! never nested. Writes that openraft refuses as a whole (this node is no longer the leader)
//! are refused as a whole, before anything was appended, so the caller may retry them.
//! A write whose leader is deposed while it is on its way gets an answer within
//! [`DEPOSED_GRACE`] (openraft 0.9 may otherwise never answer it, see [`deposed`]).
//! May import `cluster::types` only; openraft and tokio.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::types::{NodeId, Request, TypeConfig};

/// Entries on their way through Raft at once; what arrives meanwhile forms the next one.
pub const IN_FLIGHT: usize = 2;
/// Writes in one entry at most (bounds an entry's size and its apply time).
pub const MAX_MEMBERS: usize = 128;
/// Writes waiting for an entry; a full queue holds callers back.
const QUEUE: usize = 4096;
/// How long after this node stops leading a write still on its way may wait for its answer.
pub const DEPOSED_GRACE: Duration = Duration::from_secs(1);

/// Where a write landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub index: u64,
    /// The write's position in a batch entry; `None` when it has the entry to itself.
    pub position: Option<u32>,
}

/// Why a write was not appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteFailure {
    /// This node does not lead (any more): nothing was appended, try the leader.
    NotLeader(Option<NodeId>),
    /// openraft refused the entry for another reason (e.g. a membership change in progress).
    Refused(String),
    /// Storage failed or Raft stopped: the outcome is unknown.
    Fatal(String),
    /// This node stopped leading while the entry was on its way: it may or may not commit.
    Unknown(String),
}

struct Pending {
    request: Request,
    reply: oneshot::Sender<Result<Slot, WriteFailure>>,
}

/// The leader's write queue. Cheap to clone; the batching task stops when every handle is gone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
    slots: Arc<Semaphore>,
    raft: Raft<TypeConfig>,
}

impl Batcher {
    /// Starts the task that turns queued writes into entries of `raft`.
    pub fn start(raft: Raft<TypeConfig>) -> Batcher {
        let (tx, rx) = mpsc::channel(QUEUE);
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(run(raft.clone(), rx, slots.clone()));
        Batcher { tx, slots, raft }
    }

    /// Appends `request` (alone or with others) and waits until its entry is committed.
    /// Dropping the future abandons the answer, not the write.
    pub async fn write(&self, request: Request) -> Result<Slot, WriteFailure> {
        // Nothing on its way and nobody waiting (a free slot means the queue's task is not
        // waiting for one): append at once from here, without the hops through the queue.
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            let (reply, answer) = oneshot::channel();
            let raft = self.raft.clone();
            // Its own task, so that a caller giving up does not abandon the entry half-way.
            tokio::spawn(async move {
                let _permit = permit;
                commit(&raft, vec![Pending { request, reply }]).await;
            });
            return answer.await.map_err(|_| WriteFailure::Fatal("the write was dropped before its entry was committed".into()))?;
        }
        let (reply, answer) = oneshot::channel();
        self.tx.send(Pending { request, reply }).await.map_err(|_| WriteFailure::Fatal("the write queue has stopped".into()))?;
        answer.await.map_err(|_| WriteFailure::Fatal("the write was dropped before its entry was committed".into()))?
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::Receiver<Pending>, slots: Arc<Semaphore>) {
    while let Some(first) = rx.recv().await {
        // Waiting for a slot is what lets the next batch grow.
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_MEMBERS {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            commit(&raft, batch).await;
        });
    }
}

/// Appends one entry for `batch` and answers every member.
async fn commit(raft: &Raft<TypeConfig>, mut batch: Vec<Pending>) {
    let (request, replies): (Request, Vec<_>) = if batch.len() == 1 {
        let p = batch.remove(0);
        (p.request, vec![p.reply])
    } else {
        let (requests, replies): (Vec<Request>, Vec<_>) = batch.into_iter().map(|p| (p.request, p.reply)).unzip();
        (Request::Batch(requests), replies)
    };
    let single = replies.len() == 1;
    let result = tokio::select! {
        written = raft.client_write(request) => match written {
            Ok(resp) => Ok(resp.log_id.index),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(WriteFailure::NotLeader(f.leader_id)),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => Err(WriteFailure::Refused(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(WriteFailure::Fatal(e.to_string())),
        },
        why = deposed(raft, DEPOSED_GRACE) => Err(WriteFailure::Unknown(why)),
    };
    for (i, reply) in replies.into_iter().enumerate() {
        let answer = match &result {
            Ok(index) => Ok(Slot { index: *index, position: if single { None } else { u32::try_from(i).ok() } }),
            Err(e) => Err(e.clone()),
        };
        // The caller may have given up waiting; the write stands regardless.
        let _ = reply.send(answer);
    }
}

/// Resolves `grace` after this node stops leading (or at once if Raft stopped), with why.
///
/// openraft 0.9 answers a deposed leader's pending writes when their entries are applied or
/// when the new leader's log overwrites them, but not when the node catches up by a snapshot
/// that covers them without a conflict at the snapshot's last index: such a write would wait
/// for ever and keep its in-flight slot, and two of them would stop this node's batcher.
/// Watches the server metrics, which change only with the vote, role or leader.
async fn deposed(raft: &Raft<TypeConfig>, grace: Duration) -> String {
    let mut rx = raft.server_metrics();
    loop {
        let leading = {
            let m = rx.borrow_and_update();
            m.current_leader == Some(m.id)
        };
        if !leading {
            break;
        }
        if rx.changed().await.is_err() {
            return "the Raft core stopped while the write was on its way".into();
        }
    }
    tokio::time::sleep(grace).await;
    "this node stopped leading while the write was on its way, and no answer came; it may or may not have been applied".into()
}
