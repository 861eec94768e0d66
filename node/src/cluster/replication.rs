//! Replicated DAG state, without I/O: the controller's persisted changes, numbered
//! (term, seq), pushed to every follower, which merges them into its own store; snapshots for
//! followers that fell too far behind; and, when a node starts following a controller, a
//! digest exchange through which the controller pulls the DAGs it lacks (a healed partition,
//! a full restart).
//!
//! ```text
//!  controller: persist ─batch(seq)─▶ log ─Replicate{prev, batches | snapshot}─▶ follower
//!                ▲                                                            │ merge,
//!                └── ack the submit once one follower has seq ◀─Replicated{seq}┘ flush
//!  follower (on following): Sync{digest} ─▶ controller ─SyncWant{ids}─▶ Push{dags} ─▶ merge
//! ```
//!
//! Merging is record by record with the monotone rules of `store::merge`, so applying the
//! same batch twice, or batches from two controllers, never loses a finished task.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bx3_protocol::ids::{DagId, ModuleHash, NodeId};
use bx3_protocol::mesh::{Batch, DagDelta, DagDigest, NodeTerm, Request, Response};

use super::planner::{Dirty, Planner, Run};
use super::records::{Reads, Write};
use crate::store::{merge, DagMeta, SpecRecord, StoreError, TaskRecord};

/// Recent batches kept for followers that are a little behind.
const LOG_WINDOW: usize = 4096;
/// Most batches in one Replicate request.
const BATCHES_PER_SEND: usize = 64;
/// Finished DAGs a snapshot still carries (a follower that missed their last batches learns
/// how they ended).
const RECENT_FINISHED: usize = 256;
/// Most DAGs (newest first) in one anti-entropy digest; also the most a controller takes.
pub const SYNC_DIGEST: usize = 1000;

/// What the controller knows about one follower's copy.
#[derive(Debug, Default)]
struct Follower {
    /// Last sequence number the follower applied.
    acked: u64,
    /// A Replicate request is on its way.
    in_flight: bool,
    /// ... and it is a snapshot (only its answer satisfies `snapshot`).
    in_flight_snapshot: bool,
    /// Send everything active instead of a range (new follower, or it fell out of the window).
    snapshot: bool,
    /// The last request failed and the follower is out of reach (no connection): not
    /// before this (monotonic ms), doubling from `RETRY_MIN_MS` to `RETRY_MAX_MS` while it
    /// keeps failing, so an unreachable member costs no snapshot build per step.
    retry_at_ms: u64,
    retry_ms: u64,
    /// When the last request went out (monotonic ms; see `PACE_MS`).
    sent_at_ms: Option<u64>,
}

/// What a round of replication sends under: the controller's term, the last batch made, and
/// the monotonic clock (for followers in backoff).
#[derive(Debug, Clone, Copy)]
pub struct Round<'a> {
    pub term: &'a NodeTerm,
    pub current: u64,
    pub now_ms: u64,
}

/// Backoff for a follower whose Replicate failed on the way.
const RETRY_MIN_MS: u64 = 200;
/// Least time between two Replicate requests to one follower, unless a submitter waits for
/// its copy. Under load the controller makes a batch every few hundred microseconds; one
/// request per batch cost a libp2p stream, its framing and a store write on the follower
/// each (1,600 requests of ~4 KB for 6,000 no-op tasks on 3 nodes), and the controller and
/// followers spent more CPU on that than on the tasks. Paced, a request carries every batch
/// made meanwhile (up to `BATCHES_PER_SEND`). The delay this adds to a follower's copy of
/// task results is at most this, or one tick when nothing else happens; what a follower
/// lacks when it takes over runs again, as before.
pub const PACE_MS: u64 = 10;
const RETRY_MAX_MS: u64 = 5_000;

/// The controller's side of replication: the recent log and each follower's progress. Made
/// when a node becomes the controller, dropped when it stops being one.
#[derive(Debug, Default)]
pub struct Leader {
    log: VecDeque<Arc<Batch>>,
    followers: HashMap<NodeId, Follower>,
    /// DAGs accepted since the last batch (their spec goes into it).
    new_dags: HashSet<DagId>,
    /// DAGs that finished lately, newest last (snapshots include them).
    recent_finished: VecDeque<DagId>,
    /// DAGs merged from a peer; the next batch carries them whole.
    full_next: HashSet<DagId>,
}

impl Leader {
    /// Whether the next persist round must make a batch even if the planner changed nothing.
    pub fn has_unsent(&self) -> bool {
        !self.full_next.is_empty()
    }

    /// What a follower has confirmed.
    pub fn follower_acked(&self, id: &NodeId) -> Option<u64> {
        self.followers.get(id).map(|f| f.acked)
    }

    /// A DAG was accepted; its spec goes into the next batch.
    pub fn accepted(&mut self, id: DagId) {
        self.new_dags.insert(id);
    }

    /// A DAG finished and leaves the planner; snapshots keep carrying it a while.
    pub fn finished(&mut self, id: DagId) {
        self.recent_finished.push_back(id);
        while self.recent_finished.len() > RECENT_FINISHED {
            self.recent_finished.pop_front();
        }
    }

    /// DAGs merged from a peer go out whole in the next batch.
    pub fn merged(&mut self, ids: impl IntoIterator<Item = DagId>) {
        self.full_next.extend(ids);
    }

    /// A connection to `id` opened: a follower in backoff after failed sends is tried again
    /// on the next round.
    pub fn reachable(&mut self, id: &NodeId) {
        if let Some(f) = self.followers.get_mut(id) {
            f.retry_at_ms = 0;
        }
    }

    /// A follower should get a full snapshot next (e.g. it was merged from).
    pub fn resnapshot(&mut self, id: &NodeId) {
        if let Some(f) = self.followers.get_mut(id) {
            f.snapshot = true;
        }
    }

    /// Turns what changed in this persist round into batch `seq`.
    pub fn make_batch(
        &mut self,
        reads: &dyn Reads,
        planner: &Planner,
        dirty: &Dirty,
        seq: u64,
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
                None => full_delta(reads, &id)?,
            };
            dags.extend(delta);
        }
        for (id, mut idxs) in by_dag {
            let Some(run) = planner.run(&id) else {
                continue;
            };
            idxs.sort_unstable();
            idxs.dedup();
            let spec = self.new_dags.remove(&id).then(|| (&*run.spec).into());
            dags.push(DagDelta {
                id,
                meta: (&run.meta).into(),
                spec,
                tasks: idxs
                    .into_iter()
                    .filter_map(|i| run.tasks.get(i as usize).map(|r| (i, r.into())))
                    .collect(),
            });
        }
        // Deterministic order (the simulator replays seeds; followers merge per DAG anyway).
        dags.sort_by_key(|d| d.id);
        let batch = Arc::new(Batch { seq, dags });
        self.log.push_back(Arc::clone(&batch));
        while self.log.len() > LOG_WINDOW {
            self.log.pop_front();
        }
        Ok(Some(batch))
    }

    /// What each follower is missing, as requests to send now (at most one in flight per
    /// follower). `members` are the peers that could hold a replica; `waiting` are DAGs whose
    /// submitters wait for a replica (a snapshot carries them even when they already
    /// finished, so the acknowledgement it earns is true). `current` is the last batch made.
    pub fn requests(
        &mut self,
        reads: &dyn Reads,
        planner: &Planner,
        round: Round<'_>,
        mut members: Vec<NodeId>,
        waiting: &[DagId],
    ) -> Result<Vec<(NodeId, Request)>, StoreError> {
        let Round {
            term,
            current,
            now_ms,
        } = round;
        members.sort();
        let present: HashSet<&NodeId> = members.iter().collect();
        self.followers.retain(|id, _| present.contains(id));
        let mut out = Vec::new();
        // One snapshot for all the followers that need one; batches are shared, not copied.
        let mut full: Option<Arc<Batch>> = None;
        for id in members {
            let f = self
                .followers
                .entry(id.clone())
                .or_insert_with(|| Follower {
                    snapshot: true,
                    ..Follower::default()
                });
            if f.in_flight || (f.acked >= current && !f.snapshot) || now_ms < f.retry_at_ms {
                continue;
            }
            let paced = f
                .sent_at_ms
                .is_some_and(|t| now_ms < t.saturating_add(PACE_MS));
            if paced && !f.snapshot && waiting.is_empty() {
                continue;
            }
            f.sent_at_ms = Some(now_ms);
            let (acked, needs_snapshot) = (f.acked, f.snapshot);
            f.in_flight = true;
            f.in_flight_snapshot = false;
            let window_start = self.log.front().map(|b| b.seq).unwrap_or(u64::MAX);
            let (snapshot, prev, batches) = if !needs_snapshot && acked + 1 >= window_start {
                let batches: Vec<Arc<Batch>> = self
                    .log
                    .iter()
                    .filter(|b| b.seq > acked)
                    .take(BATCHES_PER_SEND)
                    .map(Arc::clone)
                    .collect();
                (false, acked, batches)
            } else {
                let snap = match &full {
                    Some(b) => Arc::clone(b),
                    None => {
                        let extra = self.recent_finished.iter().chain(waiting);
                        let b = Arc::new(snapshot(reads, planner, current, extra)?);
                        full = Some(Arc::clone(&b));
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

    /// A follower answered (or the request failed). Returns the sequence number it now
    /// holds when it confirmed a copy. `unreachable_at`: the request failed and this node
    /// has no connection to the follower (the time, for the backoff); a request that failed
    /// on a live connection is sent again on the next round, as before.
    pub fn answer(
        &mut self,
        node: &NodeId,
        answer: Result<&Response, &str>,
        current: u64,
        unreachable_at: Option<u64>,
    ) -> Option<u64> {
        let window_start = self.log.front().map(|b| b.seq).unwrap_or(u64::MAX);
        let f = self.followers.get_mut(node)?;
        f.in_flight = false;
        let was_snapshot = std::mem::take(&mut f.in_flight_snapshot);
        match (answer.is_err(), unreachable_at) {
            (true, Some(now_ms)) => {
                f.retry_ms = (f.retry_ms * 2).clamp(RETRY_MIN_MS, RETRY_MAX_MS);
                f.retry_at_ms = now_ms.saturating_add(f.retry_ms);
            }
            (true, None) => {}
            (false, _) => {
                f.retry_ms = 0;
                f.retry_at_ms = 0;
            }
        }
        match answer {
            Ok(Response::Replicated { seq }) => {
                // A follower cannot hold more than we made.
                let seq = (*seq).min(current);
                f.acked = seq;
                // A snapshot asked for while a range was on its way (a merge) still goes out.
                if was_snapshot {
                    f.snapshot = false;
                }
                Some(seq)
            }
            Ok(Response::Behind { seq }) => {
                f.snapshot = *seq > current || seq.saturating_add(1) < window_start;
                f.acked = if f.snapshot { 0 } else { *seq };
                None
            }
            Ok(other) => {
                tracing::debug!(peer = %node, "replication refused: {other:?}");
                None
            }
            Err(e) => {
                tracing::debug!(peer = %node, error = ?e.to_string(), "replication failed");
                None
            }
        }
    }
}

/// Whether a Replicate request must be on disk before it is answered. The answer lets the
/// controller acknowledge submissions, so a range that brings a DAG new to this node (its
/// spec) or a snapshot must; other ranges are flushed on the next tick.
pub fn must_flush_before_answer(snapshot: bool, batches: &[Arc<Batch>]) -> bool {
    snapshot
        || batches
            .iter()
            .any(|b| b.dags.iter().any(|d| d.spec.is_some()))
}

/// What merging deltas into a store comes to.
#[derive(Debug, Default)]
pub struct Merged {
    /// The writes that make it so, in order.
    pub writes: Vec<Write>,
    /// DAGs touched (in the order first seen).
    pub dags: Vec<DagId>,
    /// Modules the merged specs name that this node lacks.
    pub missing_modules: Vec<ModuleHash>,
    /// Task records with two different successful outputs (ours kept).
    pub conflicts: usize,
    /// Records refused: a task index outside its DAG, tasks of a DAG with no spec.
    pub refused: usize,
}

/// Merges deltas (from a controller's batches, or pushed by a follower) into what `reads`
/// holds, record by record (`store::merge`). Everything is merged in memory first, so a
/// record touched by two deltas merges twice in order, as if each were written in turn.
pub fn merge_deltas<'a>(
    reads: &dyn Reads,
    deltas: impl Iterator<Item = &'a DagDelta>,
) -> Result<Merged, StoreError> {
    struct Acc {
        /// Tasks in the DAG's spec (checked specs only), `None` until one is seen.
        count: Option<usize>,
        /// A spec this node did not have, from a delta: written with the DAG.
        new_spec: Option<Arc<SpecRecord>>,
        meta: Option<DagMeta>,
        meta_changed: bool,
        /// Records read (or merged) so far, by index; only the indices the deltas touch.
        tasks: HashMap<u32, Option<TaskRecord>>,
        changed: HashSet<u32>,
    }
    let mut out = Merged::default();
    let mut accs: HashMap<DagId, Acc> = HashMap::new();
    for d in deltas {
        let acc = match accs.entry(d.id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                out.dags.push(d.id);
                e.insert(Acc {
                    // The count, not the spec: a follower does not decode (or keep) a
                    // 100,000-task spec to check the indices of a batch's records.
                    count: reads.task_count(&d.id)?,
                    new_spec: None,
                    meta: reads.meta(&d.id)?,
                    meta_changed: false,
                    tasks: HashMap::new(),
                    changed: HashSet::new(),
                })
            }
        };
        if acc.count.is_none() {
            if let Some(spec) = &d.spec {
                let spec: SpecRecord = spec.clone().into();
                for hash in spec.modules.values() {
                    if !reads.has_module(hash) && !out.missing_modules.contains(hash) {
                        out.missing_modules.push(hash.clone());
                    }
                }
                acc.count = Some(spec.dag.tasks.len());
                acc.new_spec = Some(Arc::new(spec));
            }
        }
        let Some(n) = acc.count else {
            // Records of a DAG whose spec we never saw cannot be checked: wait for a
            // snapshot (it always carries the spec).
            out.refused += d.tasks.len() + 1;
            continue;
        };
        for (idx, incoming) in &d.tasks {
            // An index from a peer: checked against the spec before anything is read.
            if *idx as usize >= n {
                out.refused += 1;
                continue;
            }
            // Only the records this delta touches are read: a batch carries a few results
            // of a DAG that may have 100,000 tasks.
            let slot = match acc.tasks.entry(*idx) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    // Never written reads as the default record, as `tasks` gives it.
                    e.insert(Some(reads.task(&d.id, *idx)?.unwrap_or_default()))
                }
            };
            let incoming: TaskRecord = incoming.clone().into();
            let (merged, conflict) = merge::merge_task(slot.as_ref(), &incoming);
            if conflict {
                out.conflicts += 1;
                tracing::warn!(dag = %d.id, task = idx, "two different successful outputs for one task; keeping ours");
            }
            if slot.as_ref() != Some(&merged) {
                *slot = Some(merged);
                acc.changed.insert(*idx);
            }
        }
        let incoming: DagMeta = d.meta.clone().into();
        let merged = merge::merge_meta(acc.meta.as_ref(), &incoming);
        if acc.meta.as_ref() != Some(&merged) {
            acc.meta = Some(merged);
            acc.meta_changed = true;
        }
    }
    for id in &out.dags {
        let Some(acc) = accs.remove(id) else {
            continue;
        };
        let (Some(_), Some(meta)) = (acc.count, acc.meta) else {
            continue;
        };
        // A new DAG's spec and meta first (the store writes the spec before the meta), then
        // the task records: a crash in between leaves a DAG that a later merge completes,
        // never a meta without its spec, and the counts are recomputed from the records
        // whenever a controller loads it.
        let new_dag = acc.new_spec.is_some();
        if let Some(spec) = acc.new_spec {
            out.writes.push(Write::Dag {
                id: *id,
                meta: meta.clone(),
                spec,
            });
        }
        if !acc.changed.is_empty() {
            let mut idxs: Vec<u32> = acc.changed.into_iter().collect();
            idxs.sort_unstable();
            let records = idxs
                .into_iter()
                .filter_map(|i| acc.tasks.get(&i).cloned().flatten().map(|r| (*id, i, r)))
                .collect();
            out.writes.push(Write::Tasks(records));
        }
        if acc.meta_changed && !new_dag {
            out.writes.push(Write::Meta(*id, meta));
        }
    }
    Ok(out)
}

/// Everything the controller is working on, in full, plus the `extra` DAGs it no longer
/// works on (read back from the store).
fn snapshot<'a>(
    reads: &dyn Reads,
    planner: &Planner,
    seq: u64,
    extra: impl Iterator<Item = &'a DagId>,
) -> Result<Batch, StoreError> {
    let mut dags: Vec<DagDelta> = planner.runs().map(|(id, run)| whole(id, run)).collect();
    let mut seen: HashSet<DagId> = dags.iter().map(|d| d.id).collect();
    for id in extra {
        if seen.insert(*id) {
            dags.extend(full_delta(reads, id)?);
        }
    }
    dags.sort_by_key(|d| d.id);
    Ok(Batch { seq, dags })
}

/// An active DAG in full: spec and every task record that is not the default.
fn whole(id: &DagId, run: &Run) -> DagDelta {
    DagDelta {
        id: *id,
        meta: (&run.meta).into(),
        spec: Some((&*run.spec).into()),
        tasks: run
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, r)| **r != TaskRecord::default())
            .map(|(i, r)| (i as u32, r.into()))
            .collect(),
    }
}

/// The DAGs this node holds, newest first, for the controller to compare.
pub fn digest(reads: &dyn Reads) -> Result<Vec<DagDigest>, StoreError> {
    Ok(reads
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
pub fn sync_want(
    reads: &dyn Reads,
    planner: &Planner,
    digest: &[DagDigest],
) -> Result<Vec<DagId>, StoreError> {
    let mut ids = Vec::new();
    for d in digest.iter().take(SYNC_DIGEST) {
        let ours = match planner.run(&d.id) {
            Some(run) => Some((run.meta.state, run.meta.counts.done())),
            None => reads.meta(&d.id)?.map(|m| (m.state, m.counts.done())),
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

/// One DAG in full, as this node holds it.
pub fn full_delta(reads: &dyn Reads, id: &DagId) -> Result<Option<DagDelta>, StoreError> {
    let (Some(meta), Some(spec)) = (reads.meta(id)?, reads.spec(id)?) else {
        return Ok(None);
    };
    let tasks = reads
        .tasks(id, spec.dag.tasks.len())?
        .into_iter()
        .enumerate()
        .filter(|(_, r)| *r != TaskRecord::default())
        .map(|(i, r)| (i as u32, (&r).into()))
        .collect();
    Ok(Some(DagDelta {
        id: *id,
        meta: (&meta).into(),
        spec: Some(spec.as_ref().into()),
        tasks,
    }))
}

/// Submissions durable on this node, waiting until a second node holds them. `R` says who
/// to answer (an API call or a peer's request); `now` is the core's monotonic clock.
#[derive(Debug)]
pub struct PendingAcks<R> {
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
    pub fn ids(&self) -> Vec<DagId> {
        self.items.iter().map(|a| a.id).collect()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn push(&mut self, reply: R, id: DagId, seq: u64, deadline_ms: u64) {
        self.items.push(PendingAck {
            reply,
            id,
            seq,
            deadline_ms,
        });
    }

    fn take_where(&mut self, mut f: impl FnMut(&PendingAck<R>) -> bool) -> Vec<(R, DagId)> {
        if self.items.is_empty() {
            return Vec::new();
        }
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.items)
            .into_iter()
            .partition(|a| f(a));
        self.items = waiting;
        ready.into_iter().map(|a| (a.reply, a.id)).collect()
    }

    /// A follower confirmed everything up to `seq`.
    pub fn release_seq(&mut self, seq: u64) -> Vec<(R, DagId)> {
        self.take_where(|a| a.seq <= seq)
    }

    /// These DAGs are now held by the (new) controller too.
    pub fn release_ids(&mut self, ids: &HashSet<DagId>) -> Vec<(R, DagId)> {
        self.take_where(|a| ids.contains(&a.id))
    }

    /// Those whose caller `f` accepts (e.g. every local caller, when no follower is left to
    /// wait for).
    pub fn release_where(&mut self, mut f: impl FnMut(&R) -> bool) -> Vec<(R, DagId)> {
        self.take_where(|a| f(&a.reply))
    }

    /// Waited too long for a second copy.
    pub fn expired(&mut self, now_ms: u64) -> Vec<(R, DagId)> {
        self.take_where(|a| a.deadline_ms <= now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store and a module store in a temporary directory.
    struct Disk {
        store: crate::store::Store,
        modules: crate::store::ModuleStore,
        _dir: tempfile::TempDir,
    }

    impl Disk {
        fn new() -> Disk {
            let dir = tempfile::tempdir().expect("tempdir");
            Disk {
                store: crate::store::Store::temporary().expect("store"),
                modules: crate::store::ModuleStore::open(dir.path().join("m")).expect("modules"),
                _dir: dir,
            }
        }

        fn reads(&self) -> super::super::records::NodeReads<'_> {
            super::super::records::NodeReads {
                store: &self.store,
                modules: &self.modules,
            }
        }
    }

    fn term() -> NodeTerm {
        NodeTerm {
            epoch: 1,
            candidate: "me".parse().expect("id"),
        }
    }

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
    fn a_snapshot_asked_for_while_a_range_is_in_flight_still_goes_out() {
        let disk = Disk::new();
        let reads = disk.reads();
        let planner = Planner::new();
        let term = term();
        let mut lead = Leader::default();
        let f: NodeId = "f".parse().expect("id");
        // First contact: a snapshot.
        let reqs = lead
            .requests(
                &reads,
                &planner,
                Round {
                    term: &term,
                    current: 0,
                    now_ms: 0,
                },
                vec![f.clone()],
                &[],
            )
            .expect("requests");
        assert!(matches!(
            reqs[0].1,
            Request::Replicate { snapshot: true, .. }
        ));
        assert_eq!(
            lead.answer(&f, Ok(&Response::Replicated { seq: 0 }), 0, None),
            Some(0)
        );
        // A batch goes out as a range...
        lead.log.push_back(Arc::new(Batch {
            seq: 1,
            dags: Vec::new(),
        }));
        let reqs = lead
            .requests(
                &reads,
                &planner,
                Round {
                    term: &term,
                    current: 1,
                    now_ms: PACE_MS,
                },
                vec![f.clone()],
                &[],
            )
            .expect("requests");
        assert!(matches!(
            reqs[0].1,
            Request::Replicate {
                snapshot: false,
                ..
            }
        ));
        // ...a merge asks for a snapshot meanwhile; the range's answer must not cancel it.
        lead.resnapshot(&f);
        assert_eq!(
            lead.answer(&f, Ok(&Response::Replicated { seq: 1 }), 1, None),
            Some(1)
        );
        let reqs = lead
            .requests(
                &reads,
                &planner,
                Round {
                    term: &term,
                    current: 1,
                    now_ms: 2 * PACE_MS,
                },
                vec![f.clone()],
                &[],
            )
            .expect("requests");
        assert!(matches!(
            reqs[0].1,
            Request::Replicate { snapshot: true, .. }
        ));
        // A follower claiming more than was made is believed only up to what was made.
        assert_eq!(
            lead.answer(&f, Ok(&Response::Replicated { seq: 1_000_000 }), 1, None),
            Some(1)
        );
    }

    /// Under load batches are made faster than followers need them one by one: a range goes
    /// to a follower at most every `PACE_MS` and carries every batch made meanwhile, unless
    /// a submitter waits for its copy (then at once, as before).
    #[test]
    fn ranges_are_paced_unless_a_submitter_waits() {
        let disk = Disk::new();
        let reads = disk.reads();
        let planner = Planner::new();
        let term = term();
        let mut lead = Leader::default();
        let f: NodeId = "f".parse().expect("id");
        let waiting = [DagId::new(9, 9)];
        let send = |lead: &mut Leader, current: u64, now: u64, wait: bool| {
            let reqs = lead
                .requests(
                    &reads,
                    &planner,
                    Round {
                        term: &term,
                        current,
                        now_ms: now,
                    },
                    vec![f.clone()],
                    if wait { &waiting[..] } else { &[] },
                )
                .expect("requests");
            reqs.into_iter()
                .map(|(_, r)| match r {
                    Request::Replicate { batches, .. } => batches.len(),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        let now = 1_000;
        assert_eq!(
            send(&mut lead, 0, now, false),
            vec![1],
            "first contact: a snapshot"
        );
        assert_eq!(
            lead.answer(&f, Ok(&Response::Replicated { seq: 0 }), 0, None),
            Some(0)
        );
        let made = |lead: &mut Leader, seqs: std::ops::RangeInclusive<u64>| {
            for seq in seqs {
                lead.log.push_back(Arc::new(Batch {
                    seq,
                    dags: Vec::new(),
                }));
            }
        };
        made(&mut lead, 1..=5);
        assert!(send(&mut lead, 5, now + 1, false).is_empty(), "paced");
        assert_eq!(
            send(&mut lead, 5, now + 1, true),
            vec![5],
            "a waiting submitter is not kept waiting"
        );
        assert_eq!(
            lead.answer(&f, Ok(&Response::Replicated { seq: 5 }), 5, None),
            Some(5)
        );
        made(&mut lead, 6..=8);
        assert!(send(&mut lead, 8, now + PACE_MS, false).is_empty());
        assert_eq!(
            send(&mut lead, 8, now + 1 + PACE_MS, false),
            vec![3],
            "one request with every batch made meanwhile"
        );
    }

    /// A merge reads only the records its deltas touch: a batch with two results of a
    /// 10,000-task DAG costs two lookups, not a scan of the DAG (per batch, that was
    /// quadratic in the DAG's size on every follower).
    #[test]
    fn a_merge_reads_only_the_records_it_touches() {
        use std::cell::Cell;
        struct Counting<'a> {
            inner: super::super::records::NodeReads<'a>,
            scans: Cell<usize>,
            lookups: Cell<usize>,
            specs: Cell<usize>,
        }
        impl Reads for Counting<'_> {
            fn meta(&self, id: &DagId) -> Result<Option<DagMeta>, StoreError> {
                self.inner.meta(id)
            }
            fn spec(&self, id: &DagId) -> Result<Option<Arc<SpecRecord>>, StoreError> {
                self.specs.set(self.specs.get() + 1);
                self.inner.spec(id)
            }
            fn task_count(&self, id: &DagId) -> Result<Option<usize>, StoreError> {
                self.inner.task_count(id)
            }
            fn tasks(&self, id: &DagId, count: usize) -> Result<Vec<TaskRecord>, StoreError> {
                self.scans.set(self.scans.get() + 1);
                self.inner.tasks(id, count)
            }
            fn task(&self, id: &DagId, idx: u32) -> Result<Option<TaskRecord>, StoreError> {
                self.lookups.set(self.lookups.get() + 1);
                self.inner.task(id, idx)
            }
            fn list(&self, limit: usize) -> Result<Vec<(DagId, DagMeta)>, StoreError> {
                self.inner.list(limit)
            }
            fn unfinished(&self) -> Result<Vec<DagId>, StoreError> {
                self.inner.unfinished()
            }
            fn has_module(&self, hash: &bx3_protocol::ids::ModuleHash) -> bool {
                self.inner.has_module(hash)
            }
        }
        let disk = Disk::new();
        let store = &disk.store;
        let n = 10_000;
        let mut yaml = String::from("name: big\ntasks:\n");
        for i in 0..n {
            yaml.push_str(&format!("  - {{id: t{i}, module: m.wasm}}\n"));
        }
        let dag = bx3_protocol::dag::parse_dag(&yaml).expect("a DAG");
        let spec = SpecRecord {
            dag,
            modules: [(
                "m.wasm".to_string(),
                "cd".repeat(32).parse().expect("a hash"),
            )]
            .into_iter()
            .collect(),
        };
        let id = DagId::new(5, 5);
        let meta = DagMeta {
            name: "big".into(),
            description: None,
            source: None,
            state: bx3_protocol::api::DagState::Running,
            created_at_ms: 1,
            finished_at_ms: None,
            counts: Default::default(),
            version: 1,
        };
        store.insert_dag(&id, &meta, &spec).expect("insert");
        let done = TaskRecord {
            state: bx3_protocol::api::TaskState::Succeeded,
            attempts: 1,
            output: Some("x".into()),
            ..TaskRecord::default()
        };
        store
            .put_tasks([(id, 7, &done)])
            .expect("a record to merge into");
        let reads = Counting {
            inner: disk.reads(),
            scans: Cell::new(0),
            lookups: Cell::new(0),
            specs: Cell::new(0),
        };
        let running = TaskRecord {
            state: bx3_protocol::api::TaskState::Running,
            attempts: 1,
            ..TaskRecord::default()
        };
        let delta = DagDelta {
            id,
            meta: (&DagMeta {
                version: 2,
                ..meta.clone()
            })
                .into(),
            spec: None,
            tasks: vec![
                (7, (&running).into()),
                (8, (&done).into()),
                (n as u32, (&done).into()),
            ],
        };
        let merged = merge_deltas(&reads, std::iter::once(&delta)).expect("merge");
        assert_eq!(reads.scans.get(), 0, "no scan of the DAG");
        assert_eq!(reads.lookups.get(), 2, "one lookup per record touched");
        assert_eq!(
            reads.specs.get(),
            0,
            "the spec is not decoded, only counted"
        );
        assert_eq!(
            merged.refused, 1,
            "the index past the end is refused unread"
        );
        // Task 7 stays succeeded (a late `running` does not undo it); task 8 is new.
        let written: Vec<(u32, TaskRecord)> = merged
            .writes
            .iter()
            .flat_map(|w| match w {
                Write::Tasks(r) => r.iter().map(|(_, i, t)| (*i, t.clone())).collect(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(written, vec![(8, done)]);
    }

    /// A follower whose requests fail on the way (unreachable) is tried again after a
    /// backoff that doubles up to 5 s, not every step (each try of a new follower builds a
    /// snapshot); a new connection to it ends the wait.
    #[test]
    fn an_unreachable_follower_backs_off_until_it_connects() {
        let disk = Disk::new();
        let reads = disk.reads();
        let planner = Planner::new();
        let term = term();
        let mut lead = Leader::default();
        let f: NodeId = "f".parse().expect("id");
        let send = |lead: &mut Leader, now: u64| {
            lead.requests(
                &reads,
                &planner,
                Round {
                    term: &term,
                    current: 0,
                    now_ms: now,
                },
                vec![f.clone()],
                &[],
            )
            .expect("requests")
            .len()
        };
        let mut now = 1_000;
        assert_eq!(send(&mut lead, now), 1, "first contact");
        assert_eq!(lead.answer(&f, Err("no connection"), 0, Some(now)), None);
        let mut waits = Vec::new();
        let mut last = now;
        for _ in 0..7 {
            while send(&mut lead, now) == 0 {
                now += 100;
            }
            waits.push(now - last);
            assert_eq!(lead.answer(&f, Err("no connection"), 0, Some(now)), None);
            last = now;
        }
        assert_eq!(waits, [200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
        // It connects: tried at once.
        lead.reachable(&f);
        assert_eq!(send(&mut lead, now), 1);
        assert_eq!(
            lead.answer(&f, Ok(&Response::Replicated { seq: 0 }), 0, None),
            Some(0)
        );
    }
}
