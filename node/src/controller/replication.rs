//! Replicated DAG state: the controller's persisted changes, numbered (term, seq), pushed to
//! every follower, which merges them into its own store; snapshots for followers that fell
//! too far behind; and, when a node starts following a controller, a digest exchange through
//! which the controller pulls the DAGs it lacks (a healed partition, a full restart).
//!
//! ```text
//!  controller: persist() ─batch(seq)─▶ log ─Replicate{prev, batches | snapshot}─▶ follower
//!                ▲                                                              │ merge,
//!                └── ack the submit once one follower has seq ◀──Replicated{seq}┘ flush
//!  follower (on following): Sync{digest} ─▶ controller ─SyncWant{ids}─▶ Push{dags} ─▶ merge
//! ```
//!
//! The protocol itself lives in [`Replication`] and [`PendingAcks`]: no I/O, no clock, no
//! channels. The actor (below) and the controller simulator (`controller::sim`) both drive
//! that same code; only the transport differs.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bx3_protocol::ids::DagId;

use super::planner::{Dirty, Planner};
use super::{Actor, ControllerError, Internal, Reply, StoreError};
use crate::election::{Election, Input, LogPos};
use crate::mesh::{Batch, DagDelta, DagDigest, Id, Request, Response, Term};
use crate::store::{Store, TaskRecord};

/// Recent batches kept for followers that are a little behind.
const LOG_WINDOW: usize = 4096;
/// Most batches in one Replicate request.
const BATCHES_PER_SEND: usize = 64;
/// Finished DAGs a snapshot still carries (a follower that missed their last batches learns
/// how they ended).
const RECENT_FINISHED: usize = 256;
/// Most DAGs (newest first) in one anti-entropy digest.
pub(super) const SYNC_DIGEST: usize = 1000;
/// How long a submission waits for a replica before its caller is told it is not (yet)
/// durable on two nodes. Generous: a follower that must first fetch the DAG's modules on a
/// loaded machine can take seconds.
pub(super) const ACK_REPLICA_WAIT: Duration = Duration::from_secs(30);

/// What the controller knows about one follower's copy.
#[derive(Debug, Default)]
pub(super) struct Follower {
    /// Last sequence number the follower applied.
    acked: u64,
    /// A Replicate request is on its way.
    in_flight: bool,
    /// ... and it is a snapshot (only its answer satisfies `snapshot`).
    in_flight_snapshot: bool,
    /// Send everything active instead of a range (new follower, or it fell out of the window).
    snapshot: bool,
}

/// The replication protocol's state on one node, controller or follower.
#[derive(Debug)]
pub(super) struct Replication {
    /// How far this node's copy of the controller's state goes (term, seq); persisted.
    pos: LogPos<Id>,
    /// Controller: recent batches, for followers a little behind.
    log: VecDeque<Arc<Batch>>,
    /// Controller: each follower's progress.
    followers: HashMap<Id, Follower>,
    /// Controller: DAGs accepted since the last batch (their spec goes into it).
    new_dags: HashSet<DagId>,
    /// Controller: DAGs that finished lately, newest last (snapshots include them).
    recent_finished: VecDeque<DagId>,
    /// Controller: DAGs merged from a peer; the next batch carries them whole.
    full_next: HashSet<DagId>,
}

impl Replication {
    pub(super) fn new(pos: LogPos<Id>) -> Replication {
        Replication {
            pos,
            log: VecDeque::new(),
            followers: HashMap::new(),
            new_dags: HashSet::new(),
            recent_finished: VecDeque::new(),
            full_next: HashSet::new(),
        }
    }

    /// Whether the next persist round must make a batch even if the planner changed nothing.
    pub(super) fn has_unsent(&self) -> bool {
        !self.full_next.is_empty()
    }

    pub(super) fn pos(&self) -> &LogPos<Id> {
        &self.pos
    }

    pub(super) fn seq(&self) -> u64 {
        self.pos.seq
    }

    /// What a follower has confirmed, if this node (as controller) tracks it.
    pub(super) fn follower_acked(&self, id: &Id) -> Option<u64> {
        self.followers.get(id).map(|f| f.acked)
    }

    /// Controller: a DAG was accepted; its spec goes into the next batch.
    pub(super) fn accepted(&mut self, id: DagId) {
        self.new_dags.insert(id);
    }

    /// Forgets the controller side (followers, recent batches); the position stays.
    pub(super) fn reset(&mut self) {
        self.log.clear();
        self.followers.clear();
        self.new_dags.clear();
        self.recent_finished.clear();
        self.full_next.clear();
    }

    /// Controller: a DAG finished and leaves the planner; snapshots keep carrying it a while.
    pub(super) fn finished(&mut self, id: DagId) {
        self.recent_finished.push_back(id);
        while self.recent_finished.len() > RECENT_FINISHED {
            self.recent_finished.pop_front();
        }
    }

    /// Controller: turns what changed in this persist round into the next numbered batch and
    /// records the new position in the store (flushed with the round).
    pub(super) fn make_batch(
        &mut self,
        store: &Store,
        planner: &Planner,
        dirty: &Dirty,
        term: Option<Term>,
    ) -> Result<Option<Arc<Batch>>, StoreError> {
        let mut by_dag: HashMap<DagId, Vec<u32>> = HashMap::new();
        for (dag, idx) in &dirty.tasks {
            by_dag.entry(*dag).or_default().push(*idx);
        }
        // A DAG accepted this round goes out even if none of its tasks moved yet (no free
        // executor): its submitter is acknowledged once a follower holds this batch.
        for dag in dirty.runs.iter().chain(self.new_dags.iter()) {
            by_dag.entry(*dag).or_default();
        }
        let full: Vec<DagId> = self.full_next.drain().collect();
        if by_dag.is_empty() && full.is_empty() {
            return Ok(None);
        }
        let mut dags = Vec::with_capacity(by_dag.len() + full.len());
        // DAGs merged from a peer go whole (spec and every record), so a follower never holds
        // a merged DAG's final state without the task records that make it final.
        for id in full {
            by_dag.remove(&id);
            let delta = match planner.run(&id) {
                Some(run) => Some(whole(&id, run)),
                None => full_delta(store, &id)?,
            };
            dags.extend(delta);
        }
        for (id, mut idxs) in by_dag {
            let Some(run) = planner.run(&id) else {
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
        // Deterministic order (the simulator replays seeds; followers merge per DAG anyway).
        dags.sort_by_key(|d| d.id);
        // hook(trust): saturating (the position comes from disk or a peer's snapshot).
        let seq = self.pos.seq.saturating_add(1);
        self.pos = LogPos { term, seq };
        store.put_repl_pos(&self.pos)?;
        let batch = Arc::new(Batch { seq, dags });
        self.log.push_back(Arc::clone(&batch));
        while self.log.len() > LOG_WINDOW {
            self.log.pop_front();
        }
        Ok(Some(batch))
    }

    /// Controller: what each follower is missing, as requests to send now (at most one in
    /// flight per follower). `members` are the peers that could hold a replica; `waiting`
    /// are DAGs whose submitters wait for a replica (a snapshot carries them even when they
    /// already finished, so the acknowledgement it earns is true).
    pub(super) fn requests(
        &mut self,
        store: &Store,
        planner: &Planner,
        term: &Term,
        mut members: Vec<Id>,
        waiting: &[DagId],
    ) -> Result<Vec<(Id, Request)>, StoreError> {
        members.sort();
        let current = self.pos.seq;
        self.followers.retain(|id, _| members.contains(id));
        let mut out = Vec::new();
        let mut full: Option<Batch> = None;
        for id in members {
            let f = self
                .followers
                .entry(id.clone())
                .or_insert_with(|| Follower {
                    snapshot: true,
                    ..Follower::default()
                });
            if f.in_flight || (f.acked >= current && !f.snapshot) {
                continue;
            }
            let (acked, needs_snapshot) = (f.acked, f.snapshot);
            f.in_flight = true;
            f.in_flight_snapshot = false;
            let window_start = self.log.front().map(|b| b.seq).unwrap_or(u64::MAX);
            let next = acked.saturating_add(1); // hook(trust): a follower's answer: saturating
            let (snapshot, prev, batches) = if !needs_snapshot && next >= window_start {
                let batches: Vec<Batch> = self
                    .log
                    .iter()
                    .filter(|b| b.seq > acked)
                    .take(BATCHES_PER_SEND)
                    .map(|b| (**b).clone())
                    .collect();
                (false, acked, batches)
            } else {
                let snap = match &full {
                    Some(b) => b.clone(),
                    None => {
                        let extra = self.recent_finished.iter().chain(waiting);
                        let b = snapshot(store, planner, current, extra)?;
                        full = Some(b.clone());
                        b
                    }
                };
                if let Some(f) = self.followers.get_mut(&id) {
                    f.in_flight_snapshot = true;
                }
                (true, 0, vec![snap])
            };
            out.push((
                id,
                Request::Replicate {
                    term: term.clone(),
                    prev,
                    snapshot,
                    batches,
                },
            ));
        }
        Ok(out)
    }

    /// Controller: a follower answered (or the request failed). Returns the sequence number
    /// it now holds when it confirmed a copy.
    pub(super) fn answer(&mut self, node: &Id, answer: Result<Response, String>) -> Option<u64> {
        let current = self.pos.seq;
        let window_start = self.log.front().map(|b| b.seq).unwrap_or(u64::MAX);
        let f = self.followers.get_mut(node)?;
        f.in_flight = false;
        let was_snapshot = std::mem::take(&mut f.in_flight_snapshot);
        match answer {
            Ok(Response::Replicated { seq }) => {
                f.acked = seq;
                // A snapshot asked for while a range was on its way (a merge) still goes out.
                if was_snapshot {
                    f.snapshot = false;
                }
                Some(seq)
            }
            Ok(Response::Behind { seq }) => {
                f.snapshot = seq > current || seq.saturating_add(1) < window_start;
                f.acked = if f.snapshot { 0 } else { seq };
                None
            }
            Ok(other) => {
                tracing::debug!(peer = %node, "replication refused: {other:?}");
                None
            }
            Err(e) => {
                tracing::debug!(peer = ?node, error = ?e, "replication failed"); // hook(trust): `?`
                None
            }
        }
    }

    /// Follower: merges the controller's batches (or snapshot) into the store. The caller
    /// flushes, then feeds the new position to the election, before it answers. Returns the
    /// answer and whether the position moved.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply(
        &mut self,
        store: &Store,
        election: &Election<Id>,
        has_module: impl Fn(&str) -> bool,
        term: Term,
        prev: u64,
        snapshot: bool,
        batches: Vec<Batch>,
    ) -> Result<(Response, bool), StoreError> {
        if !election.accepts(&term) {
            return Ok((
                Response::Rejected {
                    reason: format!("stale term {}", term.epoch),
                },
                false,
            ));
        }
        if election.is_leader() {
            return Ok((
                Response::Rejected {
                    reason: "this node is a controller itself".into(),
                },
                false,
            ));
        }
        if !snapshot {
            if self.pos.term.as_ref() != Some(&term) {
                // Our sequence numbers come from another controller's numbering: nothing
                // lines up, ask for the full state (Behind past the end means "snapshot").
                return Ok((Response::Behind { seq: u64::MAX }, false));
            }
            if prev != self.pos.seq {
                return Ok((Response::Behind { seq: self.pos.seq }, false));
            }
        }
        let Some(last) = batches.last().map(|b| b.seq) else {
            return Ok((Response::Replicated { seq: self.pos.seq }, false));
        };
        let mut missing: Vec<String> = Vec::new();
        for batch in &batches {
            for d in &batch.dags {
                store.merge_dag(&d.id, &d.meta, d.spec.as_ref(), &d.tasks)?;
                if let Some(spec) = &d.spec {
                    for hash in spec.modules.values() {
                        if !has_module(hash) && !missing.contains(hash) {
                            missing.push(hash.clone());
                        }
                    }
                }
            }
        }
        self.pos = LogPos {
            term: Some(term),
            seq: last,
        };
        store.put_repl_pos(&self.pos)?;
        let resp = if missing.is_empty() {
            Response::Replicated { seq: last }
        } else {
            // Answered once the modules are here too, so an acknowledged DAG can run on
            // this node if the controller dies.
            Response::NeedModules {
                seq: last,
                hashes: missing,
            }
        };
        Ok((resp, true))
    }

    /// Controller: merges DAGs a follower pushed and resumes the unfinished ones; the next
    /// batch carries them whole so the merge spreads. Returns how many DAGs were resumed.
    /// The caller flushes before it answers.
    pub(super) fn merge_pushed(
        &mut self,
        store: &Store,
        planner: &mut Planner,
        from: &Id,
        dags: &[DagDelta],
    ) -> Result<usize, StoreError> {
        let mut resumed = HashSet::new();
        for d in dags {
            let conflicts = store.merge_dag(&d.id, &d.meta, d.spec.as_ref(), &d.tasks)?;
            if conflicts > 0 {
                tracing::warn!(dag = %d.id, peer = %from, conflicts, "merged DAG has tasks with two different successful outputs");
            }
            let (Some(meta), Some(spec)) = (store.meta(&d.id)?, store.spec(&d.id)?) else {
                continue;
            };
            let active = planner.evict(&d.id).is_some();
            if active || !meta.state.is_terminal() {
                let tasks = store.tasks(&d.id, spec.dag.tasks.len())?;
                planner.add(d.id, meta, Arc::new(spec), tasks);
                resumed.insert(d.id);
            } else {
                // Finished elsewhere: the snapshots below carry it to every follower.
                self.finished(d.id);
            }
        }
        tracing::info!(peer = %from, dags = dags.len(), resumed = resumed.len(), "merged DAG state from a peer");
        self.full_next.extend(dags.iter().map(|d| d.id));
        Ok(resumed.len())
    }
}

/// Follower: whether a Replicate request must be on disk before it is answered. The answer
/// lets the controller acknowledge submissions, so a range that brings a DAG new to this node
/// (its spec) or a snapshot must; other ranges are flushed on the next tick.
pub(super) fn must_flush_before_answer(snapshot: bool, batches: &[Batch]) -> bool {
    snapshot
        || batches
            .iter()
            .any(|b| b.dags.iter().any(|d| d.spec.is_some()))
}

/// Everything the controller is working on, in full, plus the `extra` DAGs it no longer
/// works on (read back from the store).
fn snapshot<'a>(
    store: &Store,
    planner: &Planner,
    seq: u64,
    extra: impl Iterator<Item = &'a DagId>,
) -> Result<Batch, StoreError> {
    let mut dags: Vec<DagDelta> = planner.runs().map(|(id, run)| whole(id, run)).collect();
    let mut seen: HashSet<DagId> = dags.iter().map(|d| d.id).collect();
    for id in extra {
        if seen.insert(*id) {
            dags.extend(full_delta(store, id)?);
        }
    }
    dags.sort_by_key(|d| d.id);
    Ok(Batch { seq, dags })
}

/// An active DAG in full: spec and every task record that is not the default.
fn whole(id: &DagId, run: &super::planner::Run) -> DagDelta {
    DagDelta {
        id: *id,
        meta: run.meta.clone(),
        spec: Some((*run.spec).clone()),
        tasks: run
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, r)| **r != TaskRecord::default())
            .map(|(i, r)| (i as u32, r.clone()))
            .collect(),
    }
}

/// Follower: the DAGs this node holds, newest first, for the controller to compare.
pub(super) fn digest(store: &Store) -> Result<Vec<DagDigest>, StoreError> {
    Ok(store
        .list(SYNC_DIGEST)?
        .into_iter()
        .map(|(id, meta)| DagDigest {
            id,
            state: meta.state,
            done: meta.counts.done(),
        })
        .collect())
}

/// Controller: which of a follower's DAGs do we lack, or know less about?
pub(super) fn sync_want(
    store: &Store,
    planner: &Planner,
    digest: &[DagDigest],
) -> Result<Vec<DagId>, StoreError> {
    let mut ids = Vec::new();
    for d in digest {
        let ours = match planner.run(&d.id) {
            Some(run) => Some((run.meta.state, run.meta.counts.done())),
            None => store.meta(&d.id)?.map(|m| (m.state, m.counts.done())),
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
    Ok(ids)
}

/// Follower: one DAG in full, for the controller.
pub(super) fn full_delta(store: &Store, id: &DagId) -> Result<Option<DagDelta>, StoreError> {
    let (Some(meta), Some(spec)) = (store.meta(id)?, store.spec(id)?) else {
        return Ok(None);
    };
    let tasks = store
        .tasks(id, spec.dag.tasks.len())?
        .into_iter()
        .enumerate()
        .filter(|(_, r)| *r != TaskRecord::default())
        .map(|(i, r)| (i as u32, r))
        .collect();
    Ok(Some(DagDelta {
        id: *id,
        meta,
        spec: Some(spec),
        tasks,
    }))
}

/// Submissions durable on this node, waiting until a second node holds them. `R` is how the
/// caller is answered (a oneshot in the actor, a token in the simulator); `now` is any
/// monotonic milliseconds clock.
#[derive(Debug)]
pub(super) struct PendingAcks<R> {
    items: Vec<PendingAck<R>>,
}

#[derive(Debug)]
struct PendingAck<R> {
    reply: R,
    id: DagId,
    /// Released once a follower confirms this sequence number (controller side).
    seq: u64,
    deadline_ms: u64,
}

impl<R> Default for PendingAcks<R> {
    fn default() -> Self {
        PendingAcks { items: Vec::new() }
    }
}

impl<R> PendingAcks<R> {
    /// The DAGs waiting.
    pub(super) fn ids(&self) -> Vec<DagId> {
        self.items.iter().map(|a| a.id).collect()
    }

    pub(super) fn push(&mut self, reply: R, id: DagId, seq: u64, deadline_ms: u64) {
        self.items.push(PendingAck {
            reply,
            id,
            seq,
            deadline_ms,
        });
    }

    fn take_where(&mut self, mut f: impl FnMut(&PendingAck<R>) -> bool) -> Vec<(R, DagId)> {
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.items)
            .into_iter()
            .partition(|a| f(a));
        self.items = waiting;
        ready.into_iter().map(|a| (a.reply, a.id)).collect()
    }

    /// A follower confirmed everything up to `seq`.
    pub(super) fn release_seq(&mut self, seq: u64) -> Vec<(R, DagId)> {
        self.take_where(|a| a.seq <= seq)
    }

    /// These DAGs are now held by the (new) controller too.
    pub(super) fn release_ids(&mut self, ids: &HashSet<DagId>) -> Vec<(R, DagId)> {
        self.take_where(|a| ids.contains(&a.id))
    }

    /// Waited too long for a second copy.
    pub(super) fn expired(&mut self, now_ms: u64) -> Vec<(R, DagId)> {
        self.take_where(|a| a.deadline_ms <= now_ms)
    }
}

impl Actor {
    /// Whether any peer could hold a replica.
    fn has_followers(&self) -> bool {
        self.members.iter().any(|(_, m)| m.announced)
    }

    /// Acknowledges a durable submission now (no peers), or once a second node has it.
    pub(super) fn ack_after_replication(&mut self, reply: Reply<DagId>, id: DagId) {
        if !self.election.is_leader() || !self.has_followers() {
            let _ = reply.send(Ok(id));
            return;
        }
        let deadline = self.clock_ms() + ACK_REPLICA_WAIT.as_millis() as u64;
        self.pending_acks
            .push(reply, id, self.replication.seq(), deadline);
    }

    /// On every tick: a submission no second node confirmed in time is answered with an
    /// error that says so (it stays accepted here and will run).
    pub(super) fn expire_acks(&mut self) {
        for (reply, id) in self.pending_acks.expired(self.clock_ms()) {
            tracing::warn!(dag = %id, "no other node confirmed a replica within {ACK_REPLICA_WAIT:?}");
            let _ = reply.send(Err(ControllerError::NotReplicated(id)));
        }
    }

    /// Controller: sends each follower what it is missing (one request in flight each).
    pub(super) fn replicate(&mut self) {
        if !self.election.is_leader() {
            return;
        }
        let Some(term) = self.election.term().cloned() else {
            return;
        };
        let members: Vec<Id> = self
            .members
            .iter()
            .filter(|(_, m)| m.announced)
            .map(|(id, _)| id.clone())
            .collect();
        let waiting = self.pending_acks.ids();
        let requests =
            match self
                .replication
                .requests(&self.store, &self.planner, &term, members, &waiting)
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = ?e.to_string(), "cannot build a replication snapshot");
                    return;
                }
            };
        for (node, req) in requests {
            let n = node.clone();
            self.spawn_request(&node, req, move |answer| {
                Some(Internal::ReplicaAnswer { node: n, answer })
            });
        }
    }

    pub(super) fn replica_answer(&mut self, node: Id, answer: Result<Response, String>) {
        if let Some(seq) = self.replication.answer(&node, answer) {
            for (reply, id) in self.pending_acks.release_seq(seq) {
                let _ = reply.send(Ok(id));
            }
        }
    }

    /// Follower: applies the controller's batches (or snapshot), says how far it got.
    ///
    /// The answer is what lets the controller acknowledge a submission, so a range that brings
    /// a DAG new to this node (its spec), or a snapshot, is flushed before answering. Other
    /// ranges (task results, progress) are flushed on the next tick: a follower killed before
    /// then holds a shorter prefix of the controller's batches, which the controller's
    /// catch-up (or a snapshot) repairs like any lagging follower.
    pub(super) async fn apply_replicate(
        &mut self,
        term: Term,
        prev: u64,
        snapshot: bool,
        batches: Vec<Batch>,
    ) -> Result<Response, StoreError> {
        let modules = self.modules.clone();
        let must_flush = must_flush_before_answer(snapshot, &batches);
        let (resp, moved) = self.replication.apply(
            &self.store,
            &self.election,
            |h| modules.contains(h),
            term,
            prev,
            snapshot,
            batches,
        )?;
        if moved {
            self.unflushed = true;
            if must_flush {
                self.flush_unflushed().await?;
            }
            let pos = self.replication.pos().clone();
            self.elect(Input::LogPos(pos)).await?;
        }
        Ok(resp)
    }

    /// Follower: tells the controller which DAGs this node holds and pushes the ones it
    /// lacks; then submissions waiting here for a second copy are answered.
    pub(super) fn send_sync(&mut self, leader: &Id) {
        let digest = match digest(&self.store) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = ?e.to_string(), "cannot list DAGs for the controller");
                return;
            }
        };
        if digest.is_empty() {
            return;
        }
        let store = self.store.clone();
        let net = self.net.clone();
        let back = self.internal_tx.clone();
        let Some(peer) = self.peer_of(leader) else {
            return;
        };
        tokio::spawn(async move {
            let held: HashSet<DagId> = digest.iter().map(|d| d.id).collect();
            let Ok(Response::SyncWant { ids }) =
                super::mesh::call(&net, peer, Request::Sync { digest }).await
            else {
                return;
            };
            if !ids.is_empty() {
                let mut dags = Vec::new();
                for id in ids {
                    match full_delta(&store, &id) {
                        Ok(Some(d)) => dags.push(d),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(dag = %id, error = ?e.to_string(), "cannot read DAG for the controller")
                        }
                    }
                }
                let n = dags.len();
                match super::mesh::call(&net, peer, Request::Push { dags }).await {
                    Ok(Response::Ok) => {
                        tracing::info!(dags = n, "gave the controller the DAGs it lacked")
                    }
                    Ok(other) => {
                        tracing::warn!("the controller refused our DAGs: {other:?}");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = ?e, "could not give the controller our DAGs");
                        return;
                    }
                }
            }
            let _ = back.send(Internal::Synced(held)).await;
        });
    }

    /// Controller: merges DAGs a follower pushed and makes them durable before answering.
    pub(super) async fn merge_pushed(
        &mut self,
        from: &Id,
        dags: Vec<DagDelta>,
    ) -> Result<(), StoreError> {
        self.replication
            .merge_pushed(&self.store, &mut self.planner, from, &dags)?;
        self.store.flush().await
    }

    /// This node just won the controller role: take over every unfinished DAG from its copy.
    pub(super) fn take_over(&mut self) -> Result<(), StoreError> {
        self.drop_controller_state();
        self.recover()
    }

    /// Forgets the in-memory side of being (or having been) the controller; the store keeps
    /// every DAG.
    fn drop_controller_state(&mut self) {
        self.planner = Planner::new();
        self.remote.clear();
        self.replication.reset();
    }

    /// This node is no longer the controller (it stands again, or follows another): drop
    /// the controller's working state; the store keeps everything. Its running tasks report
    /// to whoever leads next. Submissions accepted here but not yet confirmed by a follower
    /// stay pending: they are in our store and are answered once another controller has
    /// pulled them (sync), or, if this node wins again, once a follower confirms a batch at
    /// or past theirs: a confirmation in a later term comes from a follower that took this
    /// node's snapshot of that term, which carries every waiting DAG.
    pub(super) fn stand_down(&mut self) {
        self.drop_controller_state();
        for r in self.running.values_mut() {
            r.origin = super::Origin::Remote;
        }
    }

    /// This node now follows another: stand down and hand the new controller what it may
    /// lack.
    pub(super) fn step_down(&mut self, leader: &Id) {
        self.stand_down();
        self.send_sync(leader);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_acks_release_by_seq_by_id_and_expire() {
        let (a, b, c) = (DagId::new(1, 1), DagId::new(2, 2), DagId::new(3, 3));
        let mut acks = PendingAcks::default();
        acks.push("a", a, 5, 1_000);
        acks.push("b", b, 7, 1_000);
        acks.push("c", c, 9, 2_000);
        assert_eq!(acks.release_seq(6), vec![("a", a)]);
        assert_eq!(acks.release_ids(&HashSet::from([c])), vec![("c", c)]);
        assert!(acks.expired(999).is_empty());
        assert_eq!(acks.expired(1_000), vec![("b", b)]);
        assert!(acks.ids().is_empty());
    }

    #[test]
    fn a_follower_with_another_controllers_numbering_asks_for_a_snapshot() {
        let store = Store::temporary().expect("store");
        let old = Term {
            epoch: 3,
            candidate: "old".to_string(),
        };
        let new = Term {
            epoch: 4,
            candidate: "new".to_string(),
        };
        let mut repl = Replication::new(LogPos {
            term: Some(old),
            seq: 10,
        });
        let election: Election<Id> =
            Election::new("me".into(), crate::election::Params::default(), None, 1);
        let batch = Batch {
            seq: 11,
            dags: Vec::new(),
        };
        // Same sequence number, another controller's numbering: nothing lines up.
        let (resp, moved) = repl
            .apply(
                &store,
                &election,
                |_| true,
                new.clone(),
                10,
                false,
                vec![batch],
            )
            .expect("apply");
        assert!(
            matches!(resp, Response::Behind { seq: u64::MAX }),
            "{resp:?}"
        );
        assert!(!moved);
        // The controller answers with a snapshot; after it, ranges line up.
        let snap = Batch {
            seq: 20,
            dags: Vec::new(),
        };
        let (resp, moved) = repl
            .apply(
                &store,
                &election,
                |_| true,
                new.clone(),
                0,
                true,
                vec![snap],
            )
            .expect("apply");
        assert!(matches!(resp, Response::Replicated { seq: 20 }), "{resp:?}");
        assert!(moved);
        let next = Batch {
            seq: 21,
            dags: Vec::new(),
        };
        let (resp, _) = repl
            .apply(&store, &election, |_| true, new, 20, false, vec![next])
            .expect("apply");
        assert!(matches!(resp, Response::Replicated { seq: 21 }), "{resp:?}");
    }

    #[test]
    fn a_snapshot_asked_for_while_a_range_is_in_flight_still_goes_out() {
        let store = Store::temporary().expect("store");
        let planner = Planner::new();
        let term = Term {
            epoch: 1,
            candidate: "me".to_string(),
        };
        let mut repl = Replication::new(LogPos::default());
        let f = "f".to_string();
        // First contact: a snapshot.
        let reqs = repl
            .requests(&store, &planner, &term, vec![f.clone()], &[])
            .expect("requests");
        assert!(matches!(
            reqs[0].1,
            Request::Replicate { snapshot: true, .. }
        ));
        assert_eq!(
            repl.answer(&f, Ok(Response::Replicated { seq: 0 })),
            Some(0)
        );
        // A batch goes out as a range...
        repl.pos.seq = 1;
        repl.log.push_back(Arc::new(Batch {
            seq: 1,
            dags: Vec::new(),
        }));
        let reqs = repl
            .requests(&store, &planner, &term, vec![f.clone()], &[])
            .expect("requests");
        assert!(matches!(
            reqs[0].1,
            Request::Replicate {
                snapshot: false,
                ..
            }
        ));
        // ...a merge asks for a snapshot meanwhile; the range's answer must not cancel it.
        repl.followers.get_mut(&f).expect("follower").snapshot = true;
        assert_eq!(
            repl.answer(&f, Ok(Response::Replicated { seq: 1 })),
            Some(1)
        );
        let reqs = repl
            .requests(&store, &planner, &term, vec![f.clone()], &[])
            .expect("requests");
        assert!(matches!(
            reqs[0].1,
            Request::Replicate { snapshot: true, .. }
        ));
    }
}
