//! Replicated DAG state: the controller's persisted changes, numbered (term, seq), pushed to
//! every follower, which merges them into its own store; snapshots for followers that fell
//! too far behind; and, when a node starts following a controller, a digest exchange through
//! which the controller pulls the DAGs it lacks (a healed partition, a full restart).
//!
//! ```text
//!  controller: persist() ─batch(seq)─▶ repl_log ─Replicate{prev, batches | snapshot}─▶ follower
//!                ▲                                                                   │ merge,
//!                └── ack the submit once one follower has seq ◀──Replicated{seq}─────┘ flush
//!  follower (on following): Sync{digest} ─▶ controller ─SyncWant{ids}─▶ Push{dags} ─▶ merge
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bx3_protocol::ids::DagId;

use super::planner::Dirty;
use super::{Actor, Internal, Reply, StoreError};
use crate::election::{Input, LogPos};
use crate::mesh::{Batch, DagDelta, DagDigest, Id, Request, Response};

/// Recent batches kept for followers that are a little behind.
const LOG_WINDOW: usize = 4096;
/// Most batches in one Replicate request.
const BATCHES_PER_SEND: usize = 16;
/// Most DAGs (newest first) in one anti-entropy digest.
const SYNC_DIGEST: usize = 1000;
/// How long a submission waits for a replica before it is acknowledged anyway.
const ACK_REPLICA_WAIT: Duration = Duration::from_secs(10);

/// What the controller knows about one follower's copy.
#[derive(Debug, Default)]
pub(super) struct Follower {
    /// Last sequence number the follower applied.
    acked: u64,
    /// A Replicate request is on its way.
    in_flight: bool,
    /// Send everything active instead of a range (new follower, or it fell out of the window).
    snapshot: bool,
}

impl Follower {
    pub(super) fn acked(&self) -> u64 {
        self.acked
    }
}

/// A submission durable here, waiting for a replica.
pub(super) struct PendingAck {
    pub reply: Reply<DagId>,
    pub id: DagId,
    pub seq: u64,
    pub deadline: Instant,
}

impl Actor {
    /// Controller: turns what changed in this persist round into the next numbered batch.
    pub(super) fn make_batch(&mut self, dirty: &Dirty) -> Result<Option<Arc<Batch>>, StoreError> {
        let mut by_dag: HashMap<DagId, Vec<u32>> = HashMap::new();
        for (dag, idx) in &dirty.tasks {
            by_dag.entry(*dag).or_default().push(*idx);
        }
        for dag in &dirty.runs {
            by_dag.entry(*dag).or_default();
        }
        if by_dag.is_empty() {
            return Ok(None);
        }
        let mut dags = Vec::with_capacity(by_dag.len());
        for (id, mut idxs) in by_dag {
            let Some(run) = self.planner.run(&id) else {
                continue;
            };
            idxs.sort_unstable();
            let spec = self.new_dags.remove(&id).then(|| (*run.spec).clone());
            dags.push(DagDelta {
                id,
                meta: run.meta.clone(),
                spec,
                tasks: idxs
                    .into_iter()
                    .filter_map(|i| run.tasks.get(i as usize).map(|r| (i, r.clone())))
                    .collect(),
            });
        }
        let seq = self.repl_pos.seq + 1;
        self.repl_pos = LogPos {
            term: self.election.term().cloned(),
            seq,
        };
        self.store.put_repl_pos(&self.repl_pos)?;
        let batch = Arc::new(Batch { seq, dags });
        self.repl_log.push_back(Arc::clone(&batch));
        while self.repl_log.len() > LOG_WINDOW {
            self.repl_log.pop_front();
        }
        Ok(Some(batch))
    }

    /// Whether any peer could hold a replica.
    fn has_followers(&self) -> bool {
        self.members.iter().any(|(_, m)| m.announced)
    }

    /// Acknowledges a durable submission now (no peers), or once a follower has it.
    pub(super) fn ack_after_replication(&mut self, reply: Reply<DagId>, id: DagId) {
        if !self.election.is_leader() || !self.has_followers() {
            let _ = reply.send(Ok(id));
            return;
        }
        self.pending_acks.push(PendingAck {
            reply,
            id,
            seq: self.repl_pos.seq,
            deadline: Instant::now() + ACK_REPLICA_WAIT,
        });
    }

    fn release_acks(&mut self, replicated: u64) {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_acks)
            .into_iter()
            .partition(|a| a.seq <= replicated);
        self.pending_acks = waiting;
        for a in ready {
            let _ = a.reply.send(Ok(a.id));
        }
    }

    /// On every tick: acknowledge submissions whose replica did not come in time (they are
    /// durable here, and merged into any later controller from this node's store).
    pub(super) fn expire_acks(&mut self) {
        let now = Instant::now();
        let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_acks)
            .into_iter()
            .partition(|a| a.deadline <= now);
        self.pending_acks = waiting;
        for a in late {
            tracing::warn!(dag = %a.id, "no follower confirmed a replica within {ACK_REPLICA_WAIT:?}; acknowledging with the controller's copy only");
            let _ = a.reply.send(Ok(a.id));
        }
    }

    /// Controller: sends each follower what it is missing (one request in flight each).
    pub(super) fn replicate(&mut self) {
        let Some(term) = self.election.term().cloned() else {
            return;
        };
        if !self.election.is_leader() {
            return;
        }
        let current = self.repl_pos.seq;
        let members: Vec<Id> = self
            .members
            .iter()
            .filter(|(_, m)| m.announced)
            .map(|(id, _)| id.clone())
            .collect();
        self.followers.retain(|id, _| members.contains(id));
        for id in members {
            let (acked, needs_snapshot, in_flight) = {
                let f = self
                    .followers
                    .entry(id.clone())
                    .or_insert_with(|| Follower {
                        snapshot: true,
                        ..Follower::default()
                    });
                (f.acked, f.snapshot, f.in_flight)
            };
            if in_flight || (acked >= current && !needs_snapshot) {
                continue;
            }
            let window_start = self.repl_log.front().map(|b| b.seq).unwrap_or(u64::MAX);
            let (snapshot, prev, batches) = if !needs_snapshot && acked + 1 >= window_start {
                let batches: Vec<Batch> = self
                    .repl_log
                    .iter()
                    .filter(|b| b.seq > acked)
                    .take(BATCHES_PER_SEND)
                    .map(|b| (**b).clone())
                    .collect();
                (false, acked, batches)
            } else {
                (true, 0, vec![self.snapshot(current)])
            };
            if let Some(f) = self.followers.get_mut(&id) {
                f.in_flight = true;
            }
            let node = id.clone();
            self.spawn_request(
                &id,
                Request::Replicate {
                    term: term.clone(),
                    prev,
                    snapshot,
                    batches,
                },
                move |answer| Some(Internal::ReplicaAnswer { node, answer }),
            );
        }
    }

    /// Everything the controller is working on, in full.
    fn snapshot(&self, seq: u64) -> Batch {
        let dags = self
            .planner
            .runs()
            .map(|(id, run)| DagDelta {
                id: *id,
                meta: run.meta.clone(),
                spec: Some((*run.spec).clone()),
                tasks: run
                    .tasks
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| **r != crate::store::TaskRecord::default())
                    .map(|(i, r)| (i as u32, r.clone()))
                    .collect(),
            })
            .collect();
        Batch { seq, dags }
    }

    pub(super) fn replica_answer(&mut self, node: Id, answer: Result<Response, String>) {
        let current = self.repl_pos.seq;
        let window_start = self.repl_log.front().map(|b| b.seq).unwrap_or(u64::MAX);
        let Some(f) = self.followers.get_mut(&node) else {
            return;
        };
        f.in_flight = false;
        match answer {
            Ok(Response::Replicated { seq }) => {
                f.acked = seq;
                f.snapshot = false;
                self.release_acks(seq);
            }
            Ok(Response::Behind { seq }) => {
                f.acked = seq;
                f.snapshot = seq > current || seq + 1 < window_start;
            }
            Ok(other) => tracing::debug!(peer = %node, "replication refused: {other:?}"),
            Err(e) => tracing::debug!(peer = %node, "replication failed: {e}"),
        }
    }

    /// Follower: applies the controller's batches (or snapshot) and says how far it got.
    pub(super) async fn apply_replicate(
        &mut self,
        term: crate::mesh::Term,
        prev: u64,
        snapshot: bool,
        batches: Vec<Batch>,
    ) -> Result<Response, StoreError> {
        if !self.election.accepts(&term) {
            return Ok(Response::Rejected {
                reason: format!("stale term {}", term.epoch),
            });
        }
        if self.election.is_leader() {
            return Ok(Response::Rejected {
                reason: "this node is a controller itself".into(),
            });
        }
        if !snapshot && prev != self.repl_pos.seq {
            return Ok(Response::Behind {
                seq: self.repl_pos.seq,
            });
        }
        let Some(last) = batches.last().map(|b| b.seq) else {
            return Ok(Response::Replicated {
                seq: self.repl_pos.seq,
            });
        };
        let mut missing: Vec<String> = Vec::new();
        for batch in &batches {
            for d in &batch.dags {
                self.store
                    .merge_dag(&d.id, &d.meta, d.spec.as_ref(), &d.tasks)?;
                if let Some(spec) = &d.spec {
                    for hash in spec.modules.values() {
                        if !self.modules.contains(hash) && !missing.contains(hash) {
                            missing.push(hash.clone());
                        }
                    }
                }
            }
        }
        self.repl_pos = LogPos {
            term: Some(term),
            seq: last,
        };
        self.store.put_repl_pos(&self.repl_pos)?;
        self.store.flush().await?;
        self.elect(Input::LogPos(self.repl_pos.clone())).await?;
        self.changes.send_modify(|v| *v += 1);
        Ok(if missing.is_empty() {
            Response::Replicated { seq: last }
        } else {
            // Answered once the modules are here too, so an acknowledged DAG can run on
            // this node if the controller dies.
            Response::NeedModules {
                seq: last,
                hashes: missing,
            }
        })
    }

    /// Follower: tells the new controller which DAGs this node holds.
    pub(super) fn send_sync(&mut self, leader: &Id) {
        let digest: Vec<DagDigest> = match self.store.list(SYNC_DIGEST) {
            Ok(list) => list
                .into_iter()
                .map(|(id, meta)| DagDigest {
                    id,
                    state: meta.state,
                    done: meta.counts.done(),
                })
                .collect(),
            Err(e) => {
                tracing::warn!("cannot list DAGs for the controller: {e}");
                return;
            }
        };
        if digest.is_empty() {
            return;
        }
        let store = self.store.clone();
        let net = self.net.clone();
        let Some(peer) = self.peer_of(leader) else {
            return;
        };
        tokio::spawn(async move {
            let Ok(Response::SyncWant { ids }) =
                super::mesh::call(&net, peer, Request::Sync { digest }).await
            else {
                return;
            };
            if ids.is_empty() {
                return;
            }
            let mut dags = Vec::new();
            for id in ids {
                match full_delta(&store, &id) {
                    Ok(Some(d)) => dags.push(d),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(dag = %id, "cannot read DAG for the controller: {e}"),
                }
            }
            let n = dags.len();
            match super::mesh::call(&net, peer, Request::Push { dags }).await {
                Ok(_) => tracing::info!(dags = n, "gave the controller the DAGs it lacked"),
                Err(e) => tracing::warn!("could not give the controller our DAGs: {e}"),
            }
        });
    }

    /// Controller: which of a follower's DAGs do we lack, or know less about?
    pub(super) fn sync_want(&self, digest: Vec<DagDigest>) -> Result<Response, StoreError> {
        let mut ids = Vec::new();
        for d in digest {
            let ours = match self.planner.run(&d.id) {
                Some(run) => Some((run.meta.state, run.meta.counts.done())),
                None => self.store.meta(&d.id)?.map(|m| (m.state, m.counts.done())),
            };
            match ours {
                None => ids.push(d.id),
                Some((state, done)) => {
                    if d.done > done || (d.state.is_terminal() && !state.is_terminal()) {
                        ids.push(d.id);
                    }
                }
            }
        }
        Ok(Response::SyncWant { ids })
    }

    /// Controller: merges DAGs a follower pushed, resumes the unfinished ones, and has every
    /// follower re-sent a snapshot so the merge spreads.
    pub(super) fn merge_pushed(
        &mut self,
        from: &Id,
        dags: Vec<DagDelta>,
    ) -> Result<(), StoreError> {
        let mut resumed = HashSet::new();
        for d in &dags {
            let conflicts = self
                .store
                .merge_dag(&d.id, &d.meta, d.spec.as_ref(), &d.tasks)?;
            if conflicts > 0 {
                tracing::warn!(dag = %d.id, peer = %from, conflicts, "merged DAG has tasks with two different successful outputs");
            }
            let (Some(meta), Some(spec)) = (self.store.meta(&d.id)?, self.store.spec(&d.id)?)
            else {
                continue;
            };
            let active = self.planner.evict(&d.id).is_some();
            if active || !meta.state.is_terminal() {
                let tasks = self.store.tasks(&d.id, spec.dag.tasks.len())?;
                self.planner.add(d.id, meta, Arc::new(spec), tasks);
                resumed.insert(d.id);
            }
        }
        tracing::info!(peer = %from, dags = dags.len(), resumed = resumed.len(), "merged DAG state from a peer");
        for f in self.followers.values_mut() {
            f.snapshot = true;
        }
        Ok(())
    }

    /// This node just won the controller role: take over every unfinished DAG from its copy.
    pub(super) fn take_over(&mut self) -> Result<(), StoreError> {
        self.drop_controller_state();
        self.recover()
    }

    /// Forgets the in-memory side of being (or having been) the controller; the store keeps
    /// every DAG.
    fn drop_controller_state(&mut self) {
        self.planner = super::planner::Planner::new();
        self.remote.clear();
        self.inflight.clear();
        self.followers.clear();
        self.repl_log.clear();
        self.new_dags.clear();
    }

    /// This node now follows another: drop the controller's working state (the store keeps
    /// everything), and hand the new controller what it may lack.
    pub(super) fn step_down(&mut self, leader: &Id) {
        self.drop_controller_state();
        for r in self.running.values_mut() {
            r.origin = super::Origin::Remote;
        }
        // Submissions we accepted but could not replicate are in our store: the new
        // controller pulls them through the sync below.
        let pending = std::mem::take(&mut self.pending_acks);
        for a in pending {
            let _ = a.reply.send(Ok(a.id));
        }
        self.send_sync(leader);
    }
}

fn full_delta(store: &crate::store::Store, id: &DagId) -> Result<Option<DagDelta>, StoreError> {
    let (Some(meta), Some(spec)) = (store.meta(id)?, store.spec(id)?) else {
        return Ok(None);
    };
    let tasks = store
        .tasks(id, spec.dag.tasks.len())?
        .into_iter()
        .enumerate()
        .filter(|(_, r)| *r != crate::store::TaskRecord::default())
        .map(|(i, r)| (i as u32, r))
        .collect();
    Ok(Some(DagDelta {
        id: *id,
        meta,
        spec: Some(spec),
        tasks,
    }))
}
