//! What the controller does: accept DAGs, hand ready tasks to executors across the mesh,
//! take results, persist and replicate every change, merge what followers push.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bx3_protocol::api::{Counts, DagState};
use bx3_protocol::ids::{DagId, NodeId};
use bx3_protocol::mesh::{DagDelta, JobResult, Refusal, Request};

use super::dispatch::{self, Placements, Slot};
use super::out::{Answer, Asker, Pending};
use super::planner::{Planner, Report};
use super::records::{Reads, Write};
use super::replication::{self, Leader};
use super::{Core, ACK_REPLICA_WAIT_MS};
use crate::election::{self, LogPos};
use crate::store::{DagMeta, SpecRecord, StoreError, TaskRecord};

/// Most jobs in one Assign request (keeps each request well under the size limit for small
/// inputs; large inputs are bounded by the wire limit itself).
const ASSIGN_BATCH: usize = 256;
/// Jobs the controller keeps in flight per remote executor (running + queued on the worker):
/// one running and one queued behind it, so a worker does not idle for a round trip between
/// two tasks. Kept low so that a new DAG's tasks do not wait behind a queue of long ones.
const REMOTE_DEPTH: usize = 2;
/// ... and for a worker whose tasks take less than `SHORT_TASK_MS` (moving average): one
/// queued job covers less than a round trip there, so its executors idled between tasks and
/// every result travelled in a request of its own (on 3 nodes with no-op tasks, depth 2 cost
/// the controller ~1.3x the CPU per task of depth 4, and throughput). A queue of short tasks
/// drains in milliseconds, so a new DAG does not wait behind it.
const SHORT_DEPTH: usize = 4;
/// Below this average run time a worker's tasks count as short (ms).
const SHORT_TASK_MS: u64 = 5;
/// The average a worker starts with (nothing known: not short).
const FIRST_TASK_MS: u64 = 4 * SHORT_TASK_MS;
/// Longest run time a worker's report counts with (its number is the worker's word).
const MAX_COUNTED_TASK_MS: u64 = 3_600_000;
/// A client-chosen DAG id may be at most this far in the future (clocks differ a little).
const ID_FUTURE_MS: u64 = 24 * 3_600_000;

/// The controller's working state: made when this node wins a term (from its store), gone
/// when it stops being the controller (the store keeps everything).
#[derive(Debug)]
pub struct Lead {
    pub term: election::Term<NodeId>,
    pub planner: Planner,
    /// Which node runs which attempt.
    pub placements: Placements,
    pub repl: Leader,
    /// Workers that just refused work (not yet following our term, full, unreachable): no
    /// new work for them until then (core clock, ms).
    pub backoff: HashMap<NodeId, u64>,
    /// Moving average of how long tasks run on each worker (ms, as the workers report it):
    /// chooses between `REMOTE_DEPTH` and `SHORT_DEPTH`. Members only (dropped when one
    /// goes down).
    pub task_ms: HashMap<NodeId, u64>,
}

impl Lead {
    /// `stats`: the planner's totals so far (they carry over from an earlier term).
    pub fn new(term: election::Term<NodeId>, stats: super::planner::Stats) -> Lead {
        Lead {
            term,
            planner: Planner::with_stats(stats),
            placements: Placements::default(),
            repl: Leader::default(),
            backoff: HashMap::new(),
            task_ms: HashMap::new(),
        }
    }

    /// Loads every unfinished DAG from the store so it continues where it stopped: tasks
    /// that were running go back to the queue without counting an attempt. Returns how many
    /// tasks are left to run.
    pub fn recover(&mut self, reads: &dyn Reads, now_ms: u64) -> Result<usize, StoreError> {
        let mut left = 0;
        let ids = reads.unfinished()?;
        for id in ids.iter().copied() {
            let (Some(meta), Some(spec)) = (reads.meta(&id)?, reads.spec(&id)?) else {
                tracing::warn!(dag = %id, "DAG record without its spec; skipping it");
                continue;
            };
            let tasks = reads.tasks(&id, spec.dag.tasks.len())?;
            left += tasks.iter().filter(|t| !t.state.is_terminal()).count();
            self.planner.add(id, meta, spec, tasks, now_ms);
        }
        if !ids.is_empty() {
            tracing::info!(
                dags = ids.len(),
                tasks_to_run = left,
                "resuming unfinished DAGs"
            );
        }
        Ok(left)
    }
}

impl Core {
    /// Records a new DAG (answered after the flush that makes it durable, and once a second
    /// node holds it). A submission is idempotent: the id was chosen where the DAG entered
    /// the mesh, so a retry of the same DAG is answered like the first, and an id already
    /// used by another DAG is refused.
    pub(super) fn accept(
        &mut self,
        asker: Asker,
        id: DagId,
        spec: Arc<SpecRecord>,
        source: Option<String>,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        let Some(lead) = &mut self.lead else {
            self.out.answer(
                asker,
                Err(Refusal::NotLeader {
                    leader: self.election.leader().cloned(),
                }),
            );
            return Ok(());
        };
        if id.created_ms() > self.now.wall_ms.saturating_add(ID_FUTURE_MS) {
            self.out.answer(
                asker,
                Err(Refusal::Invalid(format!(
                    "DAG id {id} is dated in the future; ids start with their creation time"
                ))),
            );
            return Ok(());
        }
        let existing = match lead.planner.run(&id) {
            Some(run) => Some(Arc::clone(&run.spec)),
            None => self.out.view(reads).spec(&id)?,
        };
        if let Some(existing) = existing {
            if *existing == *spec {
                // A retry: answered as the first one is, after a flush and a replica. The
                // DAG goes out whole in the next batch (followers may never have had it: the
                // first try may have been cut short), and the answer waits for that batch.
                lead.repl.merged(std::iter::once(id));
                self.acks.push((asker, id));
            } else {
                self.out.answer(
                    asker,
                    Err(Refusal::Invalid(format!(
                        "DAG id {id} is already used by another DAG"
                    ))),
                );
            }
            return Ok(());
        }
        let n = spec.dag.tasks.len() as u64;
        let meta = DagMeta {
            name: spec.dag.name.clone(),
            description: spec.dag.description.clone(),
            source,
            state: DagState::Pending,
            created_at_ms: self.now.wall_ms,
            finished_at_ms: None,
            version: 1,
            counts: Counts {
                total: n,
                pending: n,
                ..Counts::default()
            },
        };
        self.out.write(Write::Dag {
            id,
            meta: meta.clone(),
            spec: Arc::clone(&spec),
        });
        lead.repl.accepted(id);
        tracing::info!(dag = %id, name = ?meta.name, tasks = n, "DAG accepted");
        lead.planner
            .add(id, meta, spec, Vec::new(), self.now.wall_ms);
        self.changed.insert(id);
        self.acks.push((asker, id));
        Ok(())
    }

    /// A result from a node (this one included), on the controller. Taken only from the
    /// node the attempt went to (see `Planner::on_result`).
    pub(super) fn lead_result(&mut self, from: &NodeId, r: JobResult) {
        let Some(lead) = &mut self.lead else {
            return;
        };
        let (dag, task, attempt) = (r.dag, r.task, r.attempt);
        if r.interrupted {
            // The worker never ran it (its module could not be fetched): back to the queue
            // without counting, and no new work for that node for a moment.
            let assigned = lead
                .planner
                .run(&dag)
                .and_then(|run| run.tasks.get(task as usize))
                .is_some_and(|t| t.node.as_ref() == Some(from));
            if assigned && lead.planner.requeue(dag, task, attempt, self.now.wall_ms) {
                lead.placements.ended(dag, task, attempt);
            }
            if *from != self.cfg.me {
                lead.backoff.insert(from.clone(), self.now.mono_ms + 1_000);
            }
            return;
        }
        let run_ms = r.run_ms;
        let report = Report {
            from,
            run_ms,
            stderr: r.stderr,
        };
        if lead
            .planner
            .on_result(dag, task, attempt, r.outcome, report, self.now.wall_ms)
        {
            lead.placements.ended(dag, task, attempt);
            if *from != self.cfg.me {
                let avg = lead.task_ms.entry(from.clone()).or_insert(FIRST_TASK_MS);
                *avg = (*avg * 7 + run_ms.min(MAX_COUNTED_TASK_MS)) / 8;
            }
        } else {
            tracing::debug!(peer = %from, %dag, task, attempt, "stale or foreign result ignored");
        }
    }

    /// Hands ready tasks to free executors across the mesh, this node's included.
    pub(super) fn dispatch(&mut self, reads: &dyn Reads) {
        let Some(lead) = &mut self.lead else {
            return;
        };
        // Free slots per node: this node's free executors, and each announced peer's total
        // minus what we have in flight there.
        if !lead.planner.has_ready() {
            return;
        }
        let mut slots = vec![Slot {
            node: self.cfg.me.clone(),
            free: self.worker.free(),
            total: self.worker.executors(),
            executor_mb: self.cfg.ram_per_executor_mb,
        }];
        for (id, m) in self.members.iter() {
            if !m.announced || m.announce.executors_total == 0 || lead.backoff.contains_key(id) {
                continue;
            }
            // Keep a job queued behind each remote executor (more when its tasks are short),
            // so a worker never idles for a network round trip between two tasks.
            let short = lead.task_ms.get(id).is_some_and(|ms| *ms < SHORT_TASK_MS);
            let depth = if short { SHORT_DEPTH } else { REMOTE_DEPTH };
            let total = m.announce.executors_total as usize * depth;
            let used = lead.placements.in_flight(id);
            slots.push(Slot {
                node: id.clone(),
                free: total.saturating_sub(used),
                total,
                executor_mb: m.announce.ram_per_executor_mb,
            });
        }
        let planned = dispatch::plan(&mut lead.planner, slots, self.now.wall_ms);
        if planned.is_empty() {
            return;
        }
        let mut batches: HashMap<NodeId, Vec<bx3_protocol::mesh::Job>> = HashMap::new();
        let mut local = Vec::new();
        for (node, a) in planned {
            if node == self.cfg.me {
                local.push(a.into());
            } else {
                lead.placements.placed(&node, &a);
                batches.entry(node).or_default().push(a.into());
            }
        }
        let term = lead.term.clone();
        let me = self.cfg.me.clone();
        for job in local {
            // Through the worker's queue: a module this node lacks (it took over from a
            // controller that had it) is fetched from a peer first.
            self.take_job(job, &me, reads);
        }
        let mut nodes: Vec<NodeId> = batches.keys().cloned().collect();
        nodes.sort();
        for node in nodes {
            let Some(jobs) = batches.remove(&node) else {
                continue;
            };
            for chunk in jobs.chunks(ASSIGN_BATCH) {
                let keys = chunk.iter().map(|j| (j.dag, j.task, j.attempt)).collect();
                let token = self.out.send(
                    node.clone(),
                    Request::Assign {
                        term: term.clone(),
                        jobs: chunk.to_vec(),
                    },
                );
                self.pending.insert(
                    token,
                    Pending::Assign {
                        node: node.clone(),
                        jobs: keys,
                    },
                );
            }
        }
    }

    /// Writes what changed, replicates it, and acknowledges what became durable.
    ///
    /// Group commit: a flush (write + fsync) happens when something waits on it — a
    /// submission to acknowledge, a DAG that finished — and otherwise on the next tick.
    /// Under load, results then reach the disk in a few large flushes instead of one per
    /// result. What a controller killed inside that window loses is task results not yet on
    /// disk, never an acknowledged DAG: those tasks run again (and the batch carrying them
    /// already went to the followers, one of which takes over).
    pub(super) fn persist(&mut self, reads: &dyn Reads) -> Result<(), StoreError> {
        let Some(lead) = &mut self.lead else {
            // Not the controller: a submission accepted in this step (we were the controller
            // when it arrived, and stood down since) is answered once it is durable.
            if !self.acks.is_empty() {
                self.flush(reads)?;
                for (asker, id) in std::mem::take(&mut self.acks) {
                    self.ack_after_replication(asker, id);
                }
            }
            return Ok(());
        };
        let dirty = lead.planner.take_dirty();
        if dirty.tasks.is_empty()
            && dirty.runs.is_empty()
            && self.acks.is_empty()
            && !lead.repl.has_unsent()
        {
            return Ok(());
        }
        let records: Vec<(DagId, u32, TaskRecord)> = dirty
            .tasks
            .iter()
            .filter_map(|(dag, idx)| {
                let run = lead.planner.run(dag)?;
                Some((*dag, *idx, run.tasks.get(*idx as usize)?.clone()))
            })
            .collect();
        if !records.is_empty() {
            self.out.write(Write::Tasks(records));
        }
        let seq = self.pos.seq + 1;
        let made = lead
            .repl
            .make_batch(&self.out.view(reads), &lead.planner, &dirty, seq)?;
        let mut finished = Vec::new();
        for id in &dirty.runs {
            if let Some(run) = lead.planner.run(id) {
                self.out.write(Write::Meta(*id, run.meta.clone()));
                if run.is_finished() {
                    finished.push(*id);
                }
            }
        }
        self.changed.extend(dirty.runs.iter().copied());
        if made.is_some() {
            self.pos = LogPos {
                term: Some(lead.term.clone()),
                seq,
            };
            self.out.write(Write::ReplPos(self.pos.clone()));
            // The election advertises our position when we stand again (re-election): it
            // must be the one our followers hold, or none of them can vote for us.
            self.elect(election::Input::LogPos(self.pos.clone()), reads)?;
        }
        // The batch goes to the followers while our own flush runs (as a Raft leader sends
        // entries while it appends them): a submission then waits for the slower of the two
        // fsyncs, not their sum. It is acknowledged only after both.
        self.replicate(reads)?;
        if self.acks.is_empty() && finished.is_empty() {
            // Durable on the next tick; watchers are woken by that flush.
            return Ok(());
        }
        self.out.flush();
        for (asker, id) in std::mem::take(&mut self.acks) {
            self.ack_after_replication(asker, id);
        }
        if let Some(lead) = &mut self.lead {
            for id in finished {
                if let Some(run) = lead.planner.evict(&id) {
                    lead.repl.finished(id);
                    let c = run.meta.counts;
                    tracing::info!(dag = %id, name = ?run.meta.name, state = run.meta.state.as_str(),
                        succeeded = c.succeeded, failed = c.failed, skipped = c.skipped, cancelled = c.cancelled,
                        "DAG finished");
                }
            }
        }
        self.after_flush(reads)
    }

    /// Acknowledges a durable submission now (this node is alone), or once a second node
    /// holds it. A submission forwarded by a peer always waits for a copy: that peer is
    /// there to hold one even before its first announcement arrives.
    ///
    /// A node that stopped being the controller since it accepted the DAG waits too: the
    /// new controller pulls the DAG from it (sync), and that releases the answer.
    fn ack_after_replication(&mut self, asker: Asker, id: DagId) {
        if self.is_leader() && self.alone() && matches!(asker, Asker::Api(_)) {
            self.out.answer(asker, Ok(Answer::Submitted(id)));
            return;
        }
        let deadline = self.now.mono_ms + ACK_REPLICA_WAIT_MS;
        self.pending_acks.push(asker, id, self.pos.seq, deadline);
    }

    /// Sends each follower what it is missing (one request in flight each).
    pub(super) fn replicate(&mut self, reads: &dyn Reads) -> Result<(), StoreError> {
        let Some(lead) = &mut self.lead else {
            return Ok(());
        };
        let members: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| m.announced)
            .map(|(id, _)| id.clone())
            .collect();
        // Submitters waiting for a copy, those accepted in this step included: their batch
        // goes out at once, never paced (see `replication::PACE_MS`).
        let mut waiting = self.pending_acks.ids();
        waiting.extend(self.acks.iter().map(|(_, id)| *id));
        let term = lead.term.clone();
        let requests = lead.repl.requests(
            &self.out.view(reads),
            &lead.planner,
            replication::Round {
                term: &term,
                current: self.pos.seq,
                now_ms: self.now.mono_ms,
            },
            members,
            &waiting,
        )?;
        for (node, req) in requests {
            let token = self.out.send(node.clone(), req);
            self.pending.insert(token, Pending::Replicate { node });
        }
        Ok(())
    }

    /// Merges DAGs a follower pushed and resumes the unfinished ones; the next batch carries
    /// them whole so the merge spreads. The caller flushes before it answers.
    pub(super) fn merge_pushed(
        &mut self,
        from: &NodeId,
        dags: &[DagDelta],
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        let merged = replication::merge_deltas(
            &self.out.view(reads),
            dags.iter().take(replication::SYNC_DIGEST),
        )?;
        if merged.conflicts > 0 {
            tracing::warn!(peer = %from, conflicts = merged.conflicts, "merged DAGs have tasks with two different successful outputs");
        }
        for w in merged.writes {
            self.out.write(w);
        }
        let Some(lead) = &mut self.lead else {
            return Ok(());
        };
        let view = self.out.view(reads);
        let mut resumed = 0;
        for id in &merged.dags {
            let (Some(meta), Some(spec)) = (view.meta(id)?, view.spec(id)?) else {
                continue;
            };
            let active = lead.planner.evict(id).is_some();
            if active || !meta.state.is_terminal() {
                let tasks = view.tasks(id, spec.dag.tasks.len())?;
                lead.planner.add(*id, meta, spec, tasks, self.now.wall_ms);
                resumed += 1;
            } else {
                // Finished elsewhere: the snapshots carry it to every follower.
                lead.repl.finished(*id);
            }
        }
        tracing::info!(peer = %from, dags = merged.dags.len(), resumed, "merged DAG state from a peer");
        lead.repl.merged(merged.dags.iter().copied());
        self.changed.extend(merged.dags);
        Ok(())
    }

    /// Follower: tells the controller which DAGs this node holds; it answers with the ones
    /// it lacks or knows less about (pushed next); then submissions waiting here for a second
    /// copy are answered.
    pub(super) fn send_sync(
        &mut self,
        leader: &NodeId,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        let digest = replication::digest(&self.out.view(reads))?;
        if digest.is_empty() {
            return Ok(());
        }
        let held: HashSet<DagId> = digest.iter().map(|d| d.id).collect();
        let token = self.out.send(leader.clone(), Request::Sync { digest });
        self.pending.insert(
            token,
            Pending::Sync {
                leader: leader.clone(),
                held,
            },
        );
        Ok(())
    }

    /// Follower: the controller asked for these DAGs after our digest.
    pub(super) fn push_wanted(
        &mut self,
        leader: &NodeId,
        ids: Vec<DagId>,
        held: HashSet<DagId>,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            self.synced(held);
            return Ok(());
        }
        let view = self.out.view(reads);
        let mut dags = Vec::new();
        // Only DAGs we named in our digest (the controller cannot make us read others).
        for id in ids
            .iter()
            .filter(|id| held.contains(id))
            .take(replication::SYNC_DIGEST)
        {
            dags.extend(replication::full_delta(&view, id)?);
        }
        let n = dags.len();
        let token = self.out.send(leader.clone(), Request::Push { dags });
        self.pending.insert(token, Pending::Push { held });
        tracing::info!(dags = n, "giving the controller the DAGs it lacks");
        Ok(())
    }

    /// The controller now holds these DAGs of ours.
    pub(super) fn synced(&mut self, held: HashSet<DagId>) {
        for (asker, id) in self.pending_acks.release_ids(&held) {
            self.out.answer(asker, Ok(Answer::Submitted(id)));
        }
    }

    /// Cancels a DAG on the controller: running tasks are stopped where they run.
    pub(super) fn cancel(
        &mut self,
        id: DagId,
        reads: &dyn Reads,
    ) -> Result<Result<Answer, Refusal>, StoreError> {
        let Some(lead) = &mut self.lead else {
            return Ok(Err(Refusal::NotLeader {
                leader: self.election.leader().cloned(),
            }));
        };
        match lead.planner.cancel(id, self.now.wall_ms) {
            Some(running) => {
                let mut nodes: Vec<NodeId> = lead
                    .placements
                    .cancelled(id, &running)
                    .into_iter()
                    .collect();
                nodes.sort();
                let term = lead.term.clone();
                for node in nodes {
                    let token = self.out.send(
                        node,
                        Request::Abort {
                            term: term.clone(),
                            dag: id,
                        },
                    );
                    self.pending.insert(token, Pending::Ignore);
                }
                for k in self.worker.abort(id) {
                    self.out.push(super::Output::Stop(k));
                }
                tracing::info!(dag = %id, "DAG cancelled");
                Ok(self
                    .view(id, false, None, reads)?
                    .map(|v| Answer::Dag(Box::new(v))))
            }
            None => Ok(match self.view(id, false, None, reads)? {
                Ok(v) => Err(Refusal::AlreadyFinished {
                    dag: id,
                    state: v.state,
                }),
                Err(e) => Err(e),
            }),
        }
    }
}
