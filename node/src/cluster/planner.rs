//! The DAG scheduler as a pure state machine: no clock (times are passed in), no I/O.
//!
//! The cluster core feeds it submissions, results and cancellations, asks it for the next
//! assignment while executors are free, and persists whatever it marks dirty. It also keeps
//! each task's attempt log (where and when each attempt ran, how it ended): times are the
//! controller's clock, so `queued <= started <= finished` holds whichever node ran it.
//!
//! Fair sharing: runs with ready tasks sit in a round-robin queue and each assignment takes one
//! task from the run at the front, so a 3-task DAG submitted behind a 10,000-task DAG gets
//! every other free executor instead of waiting for the big one to drain.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bx3_protocol::api::{AttemptOutcome, Counts, DagState, TaskState};
use bx3_protocol::dag::ValidTask;
use bx3_protocol::ids::{DagId, ModuleHash, NodeId};
use bx3_protocol::mesh;

use crate::store::{AttemptRecord, DagMeta, SpecRecord, TaskRecord, MAX_ATTEMPT_LOG};

/// Most ready tasks looked at for one node before giving up on finding one that fits it.
const FIT_SCAN: usize = 64;

/// One task the planner hands out (to this node's executors, or as a `mesh::Job` to a
/// worker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub dag: DagId,
    pub task: u32,
    /// 1-based attempt number; a result for an older attempt is stale and ignored.
    pub attempt: u32,
    pub module: String,
    pub module_hash: ModuleHash,
    /// argv[0] is the module file name, argv[1..] the resolved inputs.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: String,
    pub timeout_ms: u64,
    pub memory_mb: Option<u64>,
}

impl From<Assignment> for mesh::Job {
    fn from(a: Assignment) -> mesh::Job {
        mesh::Job {
            dag: a.dag,
            task: a.task,
            attempt: a.attempt,
            module: a.module,
            module_hash: a.module_hash,
            argv: a.argv,
            env: a.env,
            stdin: a.stdin,
            timeout_ms: a.timeout_ms,
            memory_mb: a.memory_mb,
        }
    }
}

/// How an attempt ended.
pub type Outcome = Result<String, String>;

/// Who reports an attempt's end, and what it says besides the outcome.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// The node that ran it: a result is taken only from the node the attempt went to.
    pub from: &'a NodeId,
    /// How long it ran there (its own clock).
    pub run_ms: u64,
    pub stderr: Option<String>,
}

/// Appends to a task's attempt log, dropping the oldest entries past the cap.
fn log_attempt(record: &mut TaskRecord, entry: AttemptRecord) {
    // Most tasks run once: room for exactly one more, not the four a first `push` makes
    // (~380 bytes per task of a 100,000-task DAG held in memory; heaptrack's largest
    // allocation site of the controller on the scale run).
    record.log.reserve_exact(1);
    record.log.push(entry);
    let excess = record.log.len().saturating_sub(MAX_ATTEMPT_LOG);
    if excess > 0 {
        record.log.drain(..excess);
    }
}

/// `now`, but never before anything already in the log: a new controller's clock may be
/// behind the old one's.
fn not_before_log(record: &TaskRecord, now_ms: u64) -> u64 {
    record
        .log
        .iter()
        .filter_map(|a| a.finished_ms.or(a.started_ms).or(a.queued_ms))
        .max()
        .map_or(now_ms, |t| t.max(now_ms))
}

/// Closes the running entry of `attempt` in the log.
fn close_attempt(
    record: &mut TaskRecord,
    attempt: u32,
    outcome: AttemptOutcome,
    now_ms: u64,
    run_ms: Option<u64>,
) -> Option<&mut AttemptRecord> {
    let now = not_before_log(record, now_ms);
    let entry = record
        .log
        .iter_mut()
        .rev()
        .find(|a| a.attempt == attempt && a.outcome == AttemptOutcome::Running)?;
    let started = entry.started_ms.unwrap_or(now);
    entry.finished_ms = Some(now);
    // The worker says how long it ran; where it started is then the later of when it was
    // handed out and when it must have begun (the difference is the network and the queue).
    if let Some(run) = run_ms {
        entry.started_ms = Some(now.saturating_sub(run).clamp(started, now));
    }
    entry.outcome = outcome;
    Some(entry)
}

/// An in-flight DAG.
#[derive(Debug)]
pub struct Run {
    pub meta: DagMeta,
    pub spec: Arc<SpecRecord>,
    pub tasks: Vec<TaskRecord>,
    /// Per task: dependencies not yet succeeded.
    waiting: Vec<u32>,
    dependents: Vec<Vec<u32>>,
    /// Tasks whose dependencies all succeeded, in the order they became ready.
    ready: VecDeque<u32>,
    /// Whether this run sits in the planner's round-robin queue.
    queued: bool,
}

impl Run {
    pub fn is_finished(&self) -> bool {
        self.meta.state.is_terminal()
    }
}

#[derive(Debug, Default)]
pub struct Planner {
    runs: HashMap<DagId, Run>,
    /// Runs that may have ready tasks, served one task at a time in turn.
    rr: VecDeque<DagId>,
    dirty_tasks: HashSet<(DagId, u32)>,
    dirty_runs: HashSet<DagId>,
    /// What this planner did, for metrics (pure counts, no I/O).
    stats: Stats,
}

/// Totals since the planner was made: transitions into each task state (`running` = attempts
/// handed out, `pending` = attempts put back, the final states = tasks finished) and DAGs
/// finished by state. Only ever grow.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub tasks: Counts,
    pub dags: crate::metrics::DagCounts,
}

/// What changed since the last `take_dirty`, for the actor to persist.
#[derive(Debug, Default)]
pub struct Dirty {
    pub tasks: Vec<(DagId, u32)>,
    pub runs: Vec<DagId>,
}

impl Planner {
    pub fn new() -> Planner {
        Planner::default()
    }

    pub fn run(&self, id: &DagId) -> Option<&Run> {
        self.runs.get(id)
    }

    pub fn runs(&self) -> impl Iterator<Item = (&DagId, &Run)> {
        self.runs.iter()
    }

    pub fn active_count(&self) -> usize {
        self.runs.len()
    }

    /// What this planner did (for metrics).
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// An empty planner that goes on counting from `stats` (a node that loses and regains
    /// the controller role keeps its totals: they only ever grow).
    pub fn with_stats(stats: Stats) -> Planner {
        Planner {
            stats,
            ..Planner::default()
        }
    }

    /// Whether any DAG has a task ready to hand out (cheap: the round-robin queue).
    pub fn has_ready(&self) -> bool {
        !self.rr.is_empty()
    }

    /// Tasks ready to run, waiting for an executor (the controller's queue depth).
    pub fn ready_len(&self) -> usize {
        self.runs.values().map(|r| r.ready.len()).sum()
    }

    /// Adds a DAG, new or recovered from the store. Tasks found `running` were interrupted by
    /// a crash: they go back to pending and the interrupted attempt is not counted, since it
    /// never ended. Succeeded tasks keep their outputs and are never run again.
    pub fn add(
        &mut self,
        id: DagId,
        meta: DagMeta,
        spec: Arc<SpecRecord>,
        mut tasks: Vec<TaskRecord>,
        now_ms: u64,
    ) {
        let n = spec.dag.tasks.len();
        tasks.resize(n, TaskRecord::default());
        let dependents: Vec<Vec<u32>> = spec.dag.dependents();
        let mut run = Run {
            meta,
            spec,
            tasks,
            waiting: vec![0; n],
            dependents,
            ready: VecDeque::new(),
            queued: false,
        };
        let mut recovered = false;
        for t in run.tasks.iter_mut() {
            if t.state == TaskState::Running {
                t.state = TaskState::Pending;
                t.attempts = t.attempts.saturating_sub(1);
                for a in t.log.iter_mut() {
                    if a.outcome == AttemptOutcome::Running {
                        a.outcome = AttemptOutcome::Interrupted;
                        a.finished_ms = Some(a.started_ms.unwrap_or(now_ms).max(now_ms));
                    }
                }
                recovered = true;
            }
        }
        let mut counts = Counts::default();
        for (i, task) in run.spec.dag.tasks.iter().enumerate() {
            counts.add(run.tasks[i].state);
            // indices from a spec are read with `get` (a verified spec never
            // has one out of range, but a panic here would be a crash loop on restart).
            run.waiting[i] = task
                .deps
                .iter()
                .filter(|&&d| {
                    run.tasks
                        .get(d as usize)
                        .is_none_or(|t| t.state != TaskState::Succeeded)
                })
                .count() as u32;
        }
        counts.total = n as u64;
        run.meta.counts = counts;
        // A dependency that failed (or was skipped, or cancelled) while its dependents were
        // still pending, e.g. a crash between the two writes: finish the skip now.
        let mut to_skip = Vec::new();
        for (i, t) in run.tasks.iter().enumerate() {
            if matches!(t.state, TaskState::Failed | TaskState::Skipped) {
                to_skip.push(i as u32);
            }
        }
        for (i, t) in run.tasks.iter_mut().enumerate() {
            if t.state == TaskState::Pending && run.waiting[i] == 0 {
                run.ready.push_back(i as u32);
                if t.queued_ms.is_none() {
                    t.queued_ms = Some(not_before_log(t, now_ms));
                }
            }
        }
        self.runs.insert(id, run);
        for i in to_skip {
            self.skip_dependents(id, i);
        }
        if recovered {
            self.touch(id);
        }
        self.enqueue(id);
        self.check_finished(id, None);
    }

    /// Removes a finished run from memory (its records stay in the store).
    pub fn evict(&mut self, id: &DagId) -> Option<Run> {
        let run = self.runs.remove(id)?;
        self.rr.retain(|r| r != id);
        Some(run)
    }

    fn enqueue(&mut self, id: DagId) {
        if let Some(run) = self.runs.get_mut(&id) {
            if !run.queued && !run.ready.is_empty() && !run.meta.state.is_terminal() {
                run.queued = true;
                self.rr.push_back(id);
            }
        }
    }

    fn touch(&mut self, id: DagId) {
        if let Some(run) = self.runs.get_mut(&id) {
            // saturating (a meta from a peer or disk can say anything).
            run.meta.version = run.meta.version.saturating_add(1);
            self.dirty_runs.insert(id);
        }
    }

    fn set_state(&mut self, id: DagId, idx: u32, state: TaskState) {
        if let Some(run) = self.runs.get_mut(&id) {
            if let Some(t) = run.tasks.get_mut(idx as usize) {
                run.meta.counts.remove(t.state);
                run.meta.counts.add(state);
                t.state = state;
                self.stats.tasks.add(state);
                self.dirty_tasks.insert((id, idx));
            }
        }
        self.touch(id);
    }

    /// Takes the next task to run on `node`, round-robin over runs, or `None` when nothing
    /// ready fits it. `fits` says whether a task can run there (its memory ask against the
    /// node's executor size); a task that does not fit stays queued for another node.
    pub fn next_assignment(
        &mut self,
        node: &NodeId,
        now_ms: u64,
        fits: impl Fn(&ValidTask) -> bool,
    ) -> Option<Assignment> {
        loop {
            let (id, idx) = self.next_ready(&fits)?;
            let run = self.runs.get_mut(&id)?;
            let spec = Arc::clone(&run.spec);
            let task = spec.dag.tasks.get(idx as usize)?;
            let Some(module_hash) = spec.modules.get(&task.module).cloned() else {
                // Only a corrupt record can get here (a spec's module table is checked
                // against its tasks where it is decoded): the task cannot run.
                let error = format!(
                    "module {:?} is missing from the DAG's module table",
                    task.module
                );
                if let Some(record) = run.tasks.get_mut(idx as usize) {
                    record.error = Some(error);
                }
                self.set_state(id, idx, TaskState::Failed);
                self.skip_dependents(id, idx);
                self.enqueue(id);
                self.check_finished(id, Some(now_ms));
                continue;
            };
            // Inputs are sized before they are built: a task whose inputs would be too large
            // fails alone, at once, without using up attempts (retrying would build the same
            // inputs); the rest of the DAG runs on.
            let outputs = &run.tasks;
            let inputs = match spec.dag.resolve_inputs(idx as usize, |i| {
                outputs
                    .get(i as usize)
                    .and_then(|t| t.output.as_deref())
                    .unwrap_or("")
            }) {
                Ok(inputs) => inputs,
                Err(e) => {
                    if let Some(record) = run.tasks.get_mut(idx as usize) {
                        record.error = Some(e.to_string());
                        record.node = None;
                    }
                    self.set_state(id, idx, TaskState::Failed);
                    self.skip_dependents(id, idx);
                    self.enqueue(id);
                    self.check_finished(id, Some(now_ms));
                    continue;
                }
            };
            let record = run.tasks.get_mut(idx as usize)?;
            // Saturating: a task record from a peer or disk may carry `attempts: u32::MAX`
            // (found by fuzzing: overflowed here).
            record.attempts = record.attempts.saturating_add(1);
            record.node = Some(node.clone());
            let attempt = record.attempts;
            let queued = record.queued_ms;
            let started = not_before_log(record, now_ms).max(queued.unwrap_or(0));
            log_attempt(
                record,
                AttemptRecord {
                    attempt,
                    node: Some(node.clone()),
                    outcome: AttemptOutcome::Running,
                    queued_ms: queued,
                    started_ms: Some(started),
                    ..AttemptRecord::default()
                },
            );
            let mut argv = Vec::with_capacity(inputs.len() + 1);
            argv.push(task.module.clone());
            argv.extend(inputs);
            if run.meta.state == DagState::Pending {
                run.meta.state = DagState::Running;
            }
            let assignment = Assignment {
                dag: id,
                task: idx,
                attempt,
                module: task.module.clone(),
                module_hash,
                argv,
                env: task
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                stdin: task.stdin.clone(),
                timeout_ms: task.timeout_ms,
                memory_mb: task.memory_mb,
            };
            self.set_state(id, idx, TaskState::Running);
            self.enqueue(id);
            return Some(assignment);
        }
    }

    /// The next ready task that fits, round-robin over runs, taken off its run's queue.
    fn next_ready(&mut self, fits: &impl Fn(&ValidTask) -> bool) -> Option<(DagId, u32)> {
        let mut passed_over: Vec<DagId> = Vec::new();
        let found = loop {
            let Some(id) = self.rr.pop_front() else {
                break None;
            };
            let Some(run) = self.runs.get_mut(&id) else {
                continue;
            };
            run.queued = false;
            // The first ready task that fits this node; the ones before it keep their place.
            let mut skipped: Vec<u32> = Vec::new();
            let mut pick = None;
            while let Some(idx) = run.ready.pop_front() {
                let Some(task) = run.spec.dag.tasks.get(idx as usize) else {
                    continue;
                };
                if run.tasks.get(idx as usize).map(|t| t.state) != Some(TaskState::Pending) {
                    // Cancelled or skipped after it became ready.
                    continue;
                }
                if fits(task) {
                    pick = Some(idx);
                    break;
                }
                skipped.push(idx);
                if skipped.len() >= FIT_SCAN {
                    break;
                }
            }
            for idx in skipped.into_iter().rev() {
                run.ready.push_front(idx);
            }
            match pick {
                Some(idx) => break Some((id, idx)),
                None if !run.ready.is_empty() => passed_over.push(id),
                None => {}
            }
        };
        for id in passed_over {
            self.enqueue(id);
        }
        found
    }

    /// Records how an attempt ended. Returns false (and changes nothing) for a result that
    /// is stale or not the sender's to give: unknown DAG or task, an attempt other than the
    /// current one, or a node other than the one the attempt went to.
    ///
    /// One exception keeps a failover cheap: a task that is back in the queue because the
    /// attempt running under an earlier controller was interrupted (a new controller took
    /// over, or the node seemed lost) takes the result of exactly that attempt from exactly
    /// the node the records say ran it: the outcome of an attempt is the task's, whoever
    /// ordered it. A result from any other node, or for an attempt the records do not show
    /// as interrupted there, is refused (the task runs again).
    pub fn on_result(
        &mut self,
        dag: DagId,
        idx: u32,
        attempt: u32,
        outcome: Outcome,
        report: Report<'_>,
        now_ms: u64,
    ) -> bool {
        let Some(run) = self.runs.get_mut(&dag) else {
            return false;
        };
        let Some(retries) = run.spec.dag.tasks.get(idx as usize).map(|t| t.retries) else {
            return false;
        };
        let Some(record) = run.tasks.get_mut(idx as usize) else {
            return false;
        };
        let running = record.state == TaskState::Running
            && record.attempts == attempt
            && record.node.as_ref() == Some(report.from);
        let adopted = record.state == TaskState::Pending
            && attempt == record.attempts.saturating_add(1)
            && record.log.last().is_some_and(|a| {
                a.attempt == attempt
                    && a.outcome == AttemptOutcome::Interrupted
                    && a.node.as_ref() == Some(report.from)
            })
            && run.ready.contains(&idx);
        if !running && !adopted {
            return false;
        }
        if adopted {
            run.ready.retain(|&t| t != idx);
            let Some(record) = run.tasks.get_mut(idx as usize) else {
                return false;
            };
            record.attempts = attempt;
            record.node = Some(report.from.clone());
            // The interrupted entry is that attempt: it was running after all.
            if let Some(entry) = record.log.last_mut() {
                entry.outcome = AttemptOutcome::Running;
                entry.finished_ms = None;
            }
            let old = record.state;
            run.meta.counts.remove(old);
            run.meta.counts.add(TaskState::Running);
            record.state = TaskState::Running;
        }
        let Some(record) = run.tasks.get_mut(idx as usize) else {
            return false;
        };
        let ended = if outcome.is_ok() {
            AttemptOutcome::Succeeded
        } else {
            AttemptOutcome::Failed
        };
        if let Some(entry) = close_attempt(record, attempt, ended, now_ms, Some(report.run_ms)) {
            entry.stderr = report.stderr;
            entry.error = outcome.as_ref().err().cloned();
        }
        match outcome {
            Ok(output) => {
                record.output = Some(output);
                record.error = None;
                self.set_state(dag, idx, TaskState::Succeeded);
                let Some(run) = self.runs.get_mut(&dag) else {
                    return true;
                };
                let dependents = run
                    .dependents
                    .get(idx as usize)
                    .cloned()
                    .unwrap_or_default();
                for d in dependents {
                    let Some(w) = run.waiting.get_mut(d as usize) else {
                        continue;
                    };
                    *w = w.saturating_sub(1);
                    if *w == 0 {
                        if let Some(t) = run.tasks.get_mut(d as usize) {
                            if t.state == TaskState::Pending {
                                t.queued_ms = Some(not_before_log(t, now_ms));
                                run.ready.push_back(d);
                            }
                        }
                    }
                }
                self.enqueue(dag);
            }
            Err(error) => {
                record.error = Some(error);
                if record.attempts <= retries {
                    record.queued_ms = Some(not_before_log(record, now_ms));
                    self.set_state(dag, idx, TaskState::Pending);
                    if let Some(run) = self.runs.get_mut(&dag) {
                        run.ready.push_back(idx);
                    }
                    self.enqueue(dag);
                } else {
                    self.set_state(dag, idx, TaskState::Failed);
                    self.skip_dependents(dag, idx);
                }
            }
        }
        self.check_finished(dag, Some(now_ms));
        true
    }

    /// Puts a running attempt back in the queue without counting it: its node was lost or
    /// refused it, which says nothing about the task. Ignored for a stale attempt.
    pub fn requeue(&mut self, dag: DagId, idx: u32, attempt: u32, now_ms: u64) -> bool {
        let Some(run) = self.runs.get_mut(&dag) else {
            return false;
        };
        let Some(record) = run.tasks.get_mut(idx as usize) else {
            return false;
        };
        if record.state != TaskState::Running || record.attempts != attempt {
            return false;
        }
        close_attempt(record, attempt, AttemptOutcome::Interrupted, now_ms, None);
        record.attempts = record.attempts.saturating_sub(1);
        record.node = None;
        record.queued_ms = Some(not_before_log(record, now_ms));
        run.ready.push_front(idx);
        self.set_state(dag, idx, TaskState::Pending);
        self.enqueue(dag);
        true
    }

    /// Marks every transitive dependent of `idx` that has not run as skipped.
    fn skip_dependents(&mut self, dag: DagId, idx: u32) {
        let Some(run) = self.runs.get(&dag) else {
            return;
        };
        let mut stack: Vec<u32> = run
            .dependents
            .get(idx as usize)
            .cloned()
            .unwrap_or_default();
        let mut to_skip = Vec::new();
        let mut seen = HashSet::new();
        while let Some(d) = stack.pop() {
            if !seen.insert(d) {
                continue;
            }
            if run.tasks.get(d as usize).map(|t| t.state) == Some(TaskState::Pending) {
                to_skip.push(d);
                stack.extend(
                    run.dependents
                        .get(d as usize)
                        .into_iter()
                        .flatten()
                        .copied(),
                );
            }
        }
        for d in to_skip {
            if let Some(run) = self.runs.get_mut(&dag) {
                let upstream = run
                    .spec
                    .dag
                    .tasks
                    .get(idx as usize)
                    .map(|t| t.id.clone())
                    .unwrap_or_default();
                if let Some(t) = run.tasks.get_mut(d as usize) {
                    t.error = Some(format!(
                        "skipped: upstream task {upstream:?} did not succeed"
                    ));
                }
            }
            self.set_state(dag, d, TaskState::Skipped);
        }
    }

    /// Cancels a DAG. Returns the tasks that were running (their attempts are abandoned; the
    /// caller stops them) or `None` if the DAG is unknown or already finished.
    pub fn cancel(&mut self, dag: DagId, now_ms: u64) -> Option<Vec<u32>> {
        let run = self.runs.get(&dag)?;
        if run.is_finished() {
            return None;
        }
        let mut running = Vec::new();
        let mut to_cancel = Vec::new();
        for (i, t) in run.tasks.iter().enumerate() {
            match t.state {
                TaskState::Running => {
                    running.push(i as u32);
                    to_cancel.push(i as u32);
                }
                TaskState::Pending => to_cancel.push(i as u32),
                _ => {}
            }
        }
        if let Some(run) = self.runs.get_mut(&dag) {
            for &i in &running {
                if let Some(t) = run.tasks.get_mut(i as usize) {
                    let attempt = t.attempts;
                    close_attempt(t, attempt, AttemptOutcome::Cancelled, now_ms, None);
                }
            }
        }
        for i in to_cancel {
            self.set_state(dag, i, TaskState::Cancelled);
        }
        if let Some(run) = self.runs.get_mut(&dag) {
            run.ready.clear();
            run.meta.state = DagState::Cancelled;
            run.meta.finished_at_ms = Some(now_ms);
            self.stats.dags.add(DagState::Cancelled);
        }
        self.touch(dag);
        Some(running)
    }

    /// Sets the DAG's final state once every task is final.
    fn check_finished(&mut self, dag: DagId, now_ms: Option<u64>) {
        let Some(run) = self.runs.get_mut(&dag) else {
            return;
        };
        if run.is_finished() || run.meta.counts.done() < run.meta.counts.total {
            return;
        }
        let c = run.meta.counts;
        run.meta.state = if c.cancelled > 0 {
            DagState::Cancelled
        } else if c.failed > 0 || c.skipped > 0 {
            DagState::Failed
        } else {
            DagState::Succeeded
        };
        run.meta.finished_at_ms = Some(now_ms.unwrap_or(run.meta.created_at_ms));
        self.stats.dags.add(run.meta.state);
        self.touch(dag);
    }

    /// Whether run `id` changed since the last `take_dirty` (not written yet).
    pub fn is_dirty(&self, id: &DagId) -> bool {
        self.dirty_runs.contains(id)
    }

    /// What changed since the last call, for the actor to write and replicate.
    ///
    /// A task that is now `running` is left out: a stored `running` record is read back as
    /// the pending task it was before that attempt (see `add`), which is exactly the record
    /// already stored, so writing it (and replicating it) would be work for nothing. That
    /// halves the store and replication traffic per task.
    pub fn take_dirty(&mut self) -> Dirty {
        let runs = &self.runs;
        Dirty {
            tasks: self
                .dirty_tasks
                .drain()
                .filter(|(dag, idx)| {
                    runs.get(dag)
                        .and_then(|r| r.tasks.get(*idx as usize))
                        .is_some_and(|t| t.state != TaskState::Running)
                })
                .collect(),
            runs: self.dirty_runs.drain().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bx3_protocol::dag::parse_dag;
    use std::collections::BTreeMap;

    fn node(s: &str) -> NodeId {
        s.parse().expect("node id")
    }

    /// A 100,000-task DAG holds 100,000 attempt logs in memory: each grows by exactly what
    /// it holds (a first `push` reserved four entries, heaptrack's largest site), and the
    /// log keeps at most `MAX_ATTEMPT_LOG` entries.
    #[test]
    fn attempt_logs_hold_what_they_log_and_no_more() {
        let mut record = TaskRecord::default();
        log_attempt(&mut record, AttemptRecord::default());
        assert_eq!(record.log.capacity(), 1);
        for _ in 0..MAX_ATTEMPT_LOG + 5 {
            log_attempt(&mut record, AttemptRecord::default());
        }
        assert_eq!(record.log.len(), MAX_ATTEMPT_LOG);
        assert!(record.log.capacity() <= 2 * MAX_ATTEMPT_LOG);
    }

    fn next(p: &mut Planner, who: &str) -> Option<Assignment> {
        p.next_assignment(&node(who), 0, |_| true)
    }

    /// A result from the node the attempt went to.
    fn done(p: &mut Planner, id: DagId, task: u32, attempt: u32, out: Outcome, now: u64) -> bool {
        let from = p
            .run(&id)
            .and_then(|r| r.tasks[task as usize].node.clone())
            .unwrap_or_else(|| node("me"));
        let report = Report {
            from: &from,
            run_ms: 0,
            stderr: None,
        };
        p.on_result(id, task, attempt, out, report, now)
    }

    fn add(p: &mut Planner, yaml: &str, seed: u32) -> DagId {
        let dag = parse_dag(yaml).expect("valid dag");
        let modules: BTreeMap<String, ModuleHash> = dag
            .module_names()
            .into_iter()
            .map(|m| (m, "ab".repeat(32).parse().expect("hash")))
            .collect();
        let id = DagId::new(1000, seed);
        let meta = DagMeta {
            name: dag.name.clone(),
            description: None,
            source: None,
            state: DagState::Pending,
            created_at_ms: 1000,
            finished_at_ms: None,
            version: 0,
            counts: Counts::default(),
        };
        p.add(
            id,
            meta,
            Arc::new(SpecRecord { dag, modules }),
            Vec::new(),
            0,
        );
        id
    }

    const FANOUT: &str = r#"
name: hello
tasks:
  - {id: init, module: init.wasm, inputs: ["world"], depends_on: []}
  - {id: g1, module: g.wasm, inputs: ["init"], depends_on: [init]}
  - {id: g2, module: g.wasm, inputs: ["hi ${init}"], depends_on: [init]}
  - {id: agg, module: a.wasm, inputs: [g1, g2], depends_on: [g1, g2]}
"#;

    fn drain(p: &mut Planner) -> Vec<Assignment> {
        std::iter::from_fn(|| next(p, "me")).collect()
    }

    /// The totals behind the metrics: transitions into each state and finished DAGs, kept
    /// across a planner replaced on take-over.
    #[test]
    fn stats_count_transitions_and_survive_a_new_planner() {
        let mut p = Planner::new();
        let id = add(&mut p, FANOUT, 1);
        for a in [drain(&mut p), Vec::new()].concat() {
            assert!(done(&mut p, id, a.task, a.attempt, Err("boom".into()), 5));
        }
        // init failed once (retried), then ran again.
        let a = drain(&mut p);
        assert_eq!(a.len(), 1);
        let s = p.stats();
        assert_eq!((s.tasks.running, s.tasks.pending), (2, 1));
        let mut p = Planner::with_stats(s);
        let id = add(&mut p, FANOUT, 2);
        let cancelled = p.cancel(id, 9).expect("running DAG");
        assert!(cancelled.is_empty(), "nothing ran in the new planner yet");
        let s = p.stats();
        assert_eq!(s.tasks.running, 2, "kept from the first planner");
        assert_eq!(s.tasks.cancelled, 4);
        assert_eq!(s.dags.cancelled, 1);
    }

    #[test]
    fn fanout_runs_in_dependency_order_with_outputs_passed() {
        let mut p = Planner::new();
        let id = add(&mut p, FANOUT, 1);
        let a = drain(&mut p);
        assert_eq!(a.len(), 1, "only the root is ready");
        assert_eq!(a[0].argv, vec!["init.wasm", "world"]);
        assert!(done(&mut p, id, 0, 1, Ok("earth".into()), 5));
        let a = drain(&mut p);
        assert_eq!(
            a.iter().map(|a| a.task).collect::<Vec<_>>(),
            vec![1, 2],
            "both branches in parallel"
        );
        assert_eq!(a[0].argv, vec!["g.wasm", "earth"]);
        assert_eq!(a[1].argv, vec!["g.wasm", "hi earth"]);
        assert!(done(&mut p, id, 1, 1, Ok("A".into()), 6));
        assert!(drain(&mut p).is_empty(), "agg waits for g2");
        assert!(done(&mut p, id, 2, 1, Ok("B".into()), 7));
        let a = drain(&mut p);
        assert_eq!(a[0].argv, vec!["a.wasm", "A", "B"]);
        assert!(done(&mut p, id, 3, 1, Ok("done".into()), 8));
        let run = p.run(&id).expect("run");
        assert_eq!(run.meta.state, DagState::Succeeded);
        assert_eq!(run.meta.counts.succeeded, 4);
        assert_eq!(run.meta.finished_at_ms, Some(8));
    }

    #[test]
    fn retries_then_fails_and_skips_only_dependents() {
        let mut p = Planner::new();
        let id = add(
            &mut p,
            r#"
name: f
defaults: {retries: 1}
tasks:
  - {id: bad, module: x.wasm}
  - {id: after, module: x.wasm, depends_on: [bad]}
  - {id: after2, module: x.wasm, depends_on: [after]}
  - {id: other, module: x.wasm}
"#,
            2,
        );
        let a = drain(&mut p);
        assert_eq!(a.len(), 2);
        assert!(done(&mut p, id, 3, 1, Ok("ok".into()), 1));
        assert!(done(&mut p, id, 0, 1, Err("boom".into()), 1));
        let again = drain(&mut p);
        assert_eq!((again[0].task, again[0].attempt), (0, 2), "retried once");
        assert!(
            !done(&mut p, id, 0, 1, Err("late".into()), 1),
            "stale attempt ignored"
        );
        assert!(done(&mut p, id, 0, 2, Err("boom".into()), 2));
        let run = p.run(&id).expect("run");
        assert_eq!(run.tasks[0].state, TaskState::Failed);
        assert_eq!(run.tasks[1].state, TaskState::Skipped);
        assert_eq!(run.tasks[2].state, TaskState::Skipped);
        assert_eq!(run.tasks[3].state, TaskState::Succeeded);
        assert_eq!(run.meta.state, DagState::Failed);
        assert!(drain(&mut p).is_empty());
    }

    #[test]
    fn cancel_abandons_running_and_cancels_pending() {
        let mut p = Planner::new();
        let id = add(&mut p, FANOUT, 3);
        drain(&mut p);
        let running = p.cancel(id, 9).expect("cancellable");
        assert_eq!(running, vec![0]);
        assert!(
            !done(&mut p, id, 0, 1, Ok("late".into()), 10),
            "late result after cancel is ignored"
        );
        let run = p.run(&id).expect("run");
        assert_eq!(run.meta.state, DagState::Cancelled);
        assert_eq!(run.meta.counts.cancelled, 4);
        assert!(p.cancel(id, 11).is_none(), "already finished");
    }

    #[test]
    fn small_dag_is_not_starved_behind_a_big_one() {
        let mut p = Planner::new();
        let mut big = String::from("name: big\ntasks:\n");
        for i in 0..1000 {
            big.push_str(&format!("  - {{id: t{i}, module: n.wasm}}\n"));
        }
        let big_id = add(&mut p, &big, 4);
        // Big DAG already occupies the executors.
        for _ in 0..4 {
            next(&mut p, "me").expect("ready");
        }
        let small_id = add(&mut p, "name: s\ntasks:\n  - {id: a, module: n.wasm}\n  - {id: b, module: n.wasm}\n  - {id: c, module: n.wasm}\n", 5);
        let next: Vec<DagId> = (0..6)
            .filter_map(|_| next(&mut p, "me"))
            .map(|a| a.dag)
            .collect();
        let small_in_first_six = next.iter().filter(|d| **d == small_id).count();
        assert_eq!(
            small_in_first_six, 3,
            "small DAG's tasks interleave: {next:?}"
        );
        assert!(next.contains(&big_id));
    }

    #[test]
    fn requeue_after_a_lost_node_does_not_count_an_attempt() {
        let mut p = Planner::new();
        let id = add(&mut p, FANOUT, 7);
        let a = next(&mut p, "worker").expect("root ready");
        assert!(p.requeue(id, a.task, a.attempt, 0));
        assert!(!p.requeue(id, a.task, a.attempt, 0), "not running any more");
        let again = next(&mut p, "other").expect("ready again");
        assert_eq!(
            (again.task, again.attempt),
            (0, 1),
            "same attempt number, not counted"
        );
        assert!(
            !done(&mut p, id, 0, 2, Ok("x".into()), 1),
            "unknown attempt ignored"
        );
        assert!(done(&mut p, id, 0, 1, Ok("x".into()), 1));
        assert_eq!(
            p.run(&id).expect("run").tasks[0]
                .node
                .as_ref()
                .map(NodeId::as_str),
            Some("other")
        );
    }

    #[test]
    fn recovery_requeues_interrupted_tasks_and_keeps_finished_ones() {
        let mut p = Planner::new();
        let id = add(&mut p, FANOUT, 6);
        drain(&mut p);
        assert!(done(&mut p, id, 0, 1, Ok("w".into()), 1));
        drain(&mut p); // g1, g2 running
        assert!(done(&mut p, id, 1, 1, Ok("A".into()), 2));
        let run = p.evict(&id).expect("run");
        // Simulate a restart from the persisted records.
        let mut p2 = Planner::new();
        p2.add(
            id,
            run.meta.clone(),
            Arc::clone(&run.spec),
            run.tasks.clone(),
            0,
        );
        let a = drain(&mut p2);
        assert_eq!(a.len(), 1, "only the interrupted g2 runs again");
        assert_eq!(
            (a[0].task, a[0].attempt),
            (2, 1),
            "interrupted attempt not counted"
        );
        assert!(done(&mut p2, id, 2, 1, Ok("B".into()), 3));
        let a = drain(&mut p2);
        assert_eq!(
            a[0].argv,
            vec!["a.wasm", "A", "B"],
            "outputs from before the crash are used"
        );
    }

    /// After a takeover, the attempt that was running under the old controller is taken
    /// from the node that ran it (no second run), and from no one else: a result from
    /// another node, for any attempt, changes nothing.
    #[test]
    fn a_new_controller_takes_an_interrupted_result_only_from_its_node() {
        let mut p = Planner::new();
        let id = add(&mut p, FANOUT, 7);
        let init = next(&mut p, "w1").expect("init");
        assert_eq!((init.task, init.attempt), (0, 1));
        let run = p.evict(&id).expect("run");
        let mut p2 = Planner::new();
        p2.add(
            id,
            run.meta.clone(),
            Arc::clone(&run.spec),
            run.tasks.clone(),
            5,
        );
        let (w1, mallory) = (node("w1"), node("mallory"));
        let report = |from| Report {
            from,
            run_ms: 1,
            stderr: None,
        };
        for attempt in [0, 1, 2, u32::MAX] {
            assert!(
                !p2.on_result(id, 0, attempt, Ok("forged".into()), report(&mallory), 6),
                "attempt {attempt} from a node that never ran it"
            );
        }
        assert!(
            !p2.on_result(id, 0, 2, Ok("late".into()), report(&w1), 6),
            "not that attempt"
        );
        assert!(p2.on_result(id, 0, 1, Ok("real".into()), report(&w1), 7));
        let run = p2.run(&id).expect("run");
        assert_eq!(run.tasks[0].output.as_deref(), Some("real"));
        assert_eq!(run.tasks[0].attempts, 1, "no second run");
        let log = &run.tasks[0].log;
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(log[0].outcome, AttemptOutcome::Succeeded);
        // And on a task never handed out, nobody's result counts.
        assert!(!p2.on_result(id, 3, 1, Ok("forged".into()), report(&mallory), 8));
        assert!(!p2.on_result(id, 3, 1, Ok("forged".into()), report(&w1), 8));
    }

    /// inputs that would resolve to more than 8 MiB fail their task alone, with
    /// the task and the size in the error, and build nothing; the rest of the DAG runs on.
    #[test]
    fn oversized_inputs_fail_the_task_alone() {
        let template = "${a}".repeat(200);
        let yaml = format!(
            "name: big\ntasks:\n  - {{id: a, module: m.wasm}}\n  - {{id: b, module: m.wasm, depends_on: [a], inputs: [\"{template}\"]}}\n  - {{id: c, module: m.wasm, depends_on: [b]}}\n  - {{id: d, module: m.wasm, depends_on: [a], inputs: [a]}}\n"
        );
        let mut p = Planner::new();
        let id = add(&mut p, &yaml, 11);
        let a = next(&mut p, "me").expect("a is ready");
        assert!(done(
            &mut p,
            id,
            a.task,
            a.attempt,
            Ok("o".repeat(1 << 20)),
            5
        ));
        let next = drain(&mut p);
        assert_eq!(
            next.iter().map(|a| a.task).collect::<Vec<_>>(),
            vec![3],
            "only d runs"
        );
        assert_eq!(next[0].argv[1].len(), 1 << 20, "one 1 MiB output passes");
        let run = p.run(&id).expect("run");
        assert_eq!(run.tasks[1].state, TaskState::Failed);
        assert_eq!(run.tasks[1].attempts, 0, "nothing ran");
        let error = run.tasks[1].error.clone().unwrap_or_default();
        assert!(
            error.contains("task \"b\"") && error.contains("209715200 bytes"),
            "{error}"
        );
        assert_eq!(run.tasks[2].state, TaskState::Skipped);
        assert!(done(&mut p, id, 3, 1, Ok("ok".into()), 6));
        let run = p.run(&id).expect("run");
        assert_eq!(run.meta.state, DagState::Failed);
        assert_eq!(run.meta.finished_at_ms, Some(6));
    }

    /// Found by fuzzing (`fuzz/`, target `planner`): task records and a meta as a peer or a
    /// damaged disk may hold them, at the top of their ranges, are scheduled without an
    /// arithmetic overflow.
    #[test]
    fn records_at_the_top_of_their_ranges_do_not_overflow() {
        let dag = parse_dag(FANOUT).expect("valid dag");
        let modules = dag
            .module_names()
            .into_iter()
            .map(|m| (m, "ab".repeat(32).parse().expect("hash")))
            .collect();
        let meta = DagMeta {
            name: "x".into(),
            description: None,
            source: None,
            state: DagState::Running,
            created_at_ms: u64::MAX,
            finished_at_ms: None,
            version: u64::MAX,
            counts: Counts {
                total: u64::MAX,
                pending: u64::MAX,
                succeeded: u64::MAX,
                ..Counts::default()
            },
        };
        let top = TaskRecord {
            attempts: u32::MAX,
            ..TaskRecord::default()
        };
        let mut p = Planner::new();
        let id = DagId::new(1, 1);
        p.add(
            id,
            meta,
            Arc::new(SpecRecord { dag, modules }),
            vec![top; 4],
            0,
        );
        let a = next(&mut p, "me").expect("init is ready");
        assert_eq!(a.attempt, u32::MAX);
        assert!(done(&mut p, id, a.task, a.attempt, Err("boom".into()), 1));
        let run = p.run(&id).expect("run");
        assert_eq!(run.meta.counts.total, 4);
        assert_eq!(
            run.meta.counts.done(),
            4,
            "failed, and its dependents skipped"
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// A random acyclic DAG (task i depends on a subset of tasks < i), a per-task outcome
        /// script, and a number of executors.
        fn case() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<Vec<bool>>, u32, usize)> {
            (1usize..25, 0u32..3, 1usize..5).prop_flat_map(|(n, retries, execs)| {
                let deps = (0..n)
                    .map(|i| proptest::collection::vec(0..i.max(1), 0..i.min(3) + 1))
                    .collect::<Vec<_>>();
                // For each task: success or failure of its 1st, 2nd, ... attempt.
                let script =
                    proptest::collection::vec(proptest::collection::vec(any::<bool>(), 4), n);
                (deps, script, Just(retries), Just(execs))
            })
        }

        proptest! {
            /// Random DAGs through validate + plan with random failures: every task ends in a
            /// final state, never runs before its dependencies succeeded, never runs more than
            /// retries + 1 times, is skipped exactly when an upstream task did not succeed, and
            /// the DAG's final state says so.
            #[test]
            fn random_dags_run_to_a_consistent_end((deps, script, retries, execs) in case()) {
                let n = deps.len();
                let mut yaml = format!("name: r\ndefaults: {{retries: {retries}}}\ntasks:\n");
                for (i, d) in deps.iter().enumerate() {
                    let d: Vec<String> = d.iter().filter(|&&j| j < i).map(|j| format!("t{j}")).collect();
                    yaml.push_str(&format!("  - {{id: t{i}, module: m.wasm, depends_on: [{}]}}\n", d.join(", ")));
                }
                let mut p = Planner::new();
                let id = add(&mut p, &yaml, 9);
                let mut running: Vec<Assignment> = Vec::new();
                let mut runs = vec![0u32; n];
                for _ in 0..10_000 {
                    while running.len() < execs {
                        let Some(a) = next(&mut p, "me") else { break };
                        let run = p.run(&id).expect("run");
                        for &d in &run.spec.dag.tasks[a.task as usize].deps {
                            prop_assert_eq!(run.tasks[d as usize].state, TaskState::Succeeded, "ran before its dependency");
                        }
                        running.push(a);
                    }
                    let Some(a) = running.pop() else { break };
                    let k = runs[a.task as usize] as usize;
                    runs[a.task as usize] += 1;
                    let ok = script[a.task as usize][k.min(3)];
                    let outcome = if ok { Ok(format!("o{}", a.task)) } else { Err("boom".to_string()) };
                    prop_assert!(done(&mut p, id, a.task, a.attempt, outcome, 1));
                }
                let run = p.run(&id).expect("run");
                prop_assert!(run.meta.state.is_terminal(), "DAG did not finish: {:?}", run.meta.state);
                let mut ok = vec![false; n];
                for i in 0..n {
                    let t = &run.tasks[i];
                    prop_assert!(t.state.is_terminal());
                    prop_assert!(t.attempts <= retries + 1);
                    prop_assert_eq!(t.attempts, runs[i]);
                    let upstream_ok = run.spec.dag.tasks[i].deps.iter().all(|&d| ok[d as usize]);
                    if upstream_ok {
                        prop_assert!(matches!(t.state, TaskState::Succeeded | TaskState::Failed));
                    } else {
                        prop_assert_eq!(t.state, TaskState::Skipped);
                    }
                    ok[i] = t.state == TaskState::Succeeded;
                }
                let all_ok = ok.iter().all(|&b| b);
                prop_assert_eq!(run.meta.state == DagState::Succeeded, all_ok);
                prop_assert_eq!(run.meta.counts.done(), n as u64);
            }
        }
    }
}
