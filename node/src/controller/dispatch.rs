//! The controller's bookkeeping of work handed to other nodes, without I/O: which node runs
//! which attempt, how many jobs each has in flight, and what happens when a result comes
//! back, an assignment is refused, or a node is lost. The actor and the controller
//! simulator (`controller::sim`) share it.

use std::collections::{HashMap, HashSet};

use bx3_protocol::ids::DagId;

use super::planner::{Assignment, Planner};
use crate::mesh::{Id, WireResult};

/// Controller: tasks running on other nodes, and how many per node.
#[derive(Debug, Default)]
pub(super) struct Remote {
    tasks: HashMap<(DagId, u32), (Id, u32)>,
    inflight: HashMap<Id, usize>,
}

impl Remote {
    pub(super) fn clear(&mut self) {
        self.tasks.clear();
        self.inflight.clear();
    }

    /// Jobs in flight on `node`.
    pub(super) fn in_flight(&self, node: &Id) -> usize {
        self.inflight.get(node).copied().unwrap_or(0)
    }

    pub(super) fn assigned(&mut self, node: &Id, job: &Assignment) {
        self.tasks
            .insert((job.dag, job.task), (node.clone(), job.attempt));
        *self.inflight.entry(node.clone()).or_default() += 1;
    }

    fn forget(&mut self, dag: DagId, task: u32) -> Option<(Id, u32)> {
        let (node, attempt) = self.tasks.remove(&(dag, task))?;
        if let Some(n) = self.inflight.get_mut(&node) {
            *n = n.saturating_sub(1);
        }
        Some((node, attempt))
    }

    /// A worker reported an attempt: the planner records it unless it is stale. Returns
    /// whether it was recorded.
    pub(super) fn result(&mut self, planner: &mut Planner, r: WireResult, now_ms: u64) -> bool {
        if self.tasks.get(&(r.dag, r.task)).map(|(_, a)| *a) == Some(r.attempt) {
            self.forget(r.dag, r.task);
        }
        planner.on_result(r.dag, r.task, r.attempt, r.outcome, now_ms)
    }

    /// `node` could not take these jobs: they go back to the queue without using a retry.
    pub(super) fn refused(&mut self, planner: &mut Planner, node: &Id, jobs: &[Assignment]) {
        for j in jobs {
            if self.tasks.get(&(j.dag, j.task)).map(|(n, a)| (n, *a)) == Some((node, j.attempt)) {
                self.forget(j.dag, j.task);
                planner.requeue(j.dag, j.task, j.attempt);
            }
        }
    }

    /// `node` is gone: its running attempts go back to the queue without using a retry.
    /// Returns how many.
    pub(super) fn node_down(&mut self, planner: &mut Planner, node: &Id) -> usize {
        self.inflight.remove(node);
        let mut lost: Vec<(DagId, u32, u32)> = self
            .tasks
            .iter()
            .filter(|(_, (n, _))| n == node)
            .map(|((d, t), (_, a))| (*d, *t, *a))
            .collect();
        // Re-queued in a fixed order (each goes to the front of its DAG's queue).
        lost.sort_unstable();
        for (dag, task, attempt) in &lost {
            self.tasks.remove(&(*dag, *task));
            planner.requeue(*dag, *task, *attempt);
        }
        lost.len()
    }

    /// A DAG was cancelled with these tasks running: the nodes that must abort them.
    pub(super) fn cancelled(&mut self, dag: DagId, running: &[u32]) -> HashSet<Id> {
        running
            .iter()
            .filter_map(|t| self.forget(dag, *t).map(|(n, _)| n))
            .collect()
    }
}

/// Free slots of one node: (node, free, total).
pub(super) type Slot = (Id, usize, usize);

/// Hands ready tasks to free slots, least busy node first (by fraction in use, ties by id),
/// so load spreads over the mesh instead of filling one node before the next.
pub(super) fn plan(planner: &mut Planner, mut slots: Vec<Slot>) -> Vec<(Id, Assignment)> {
    let mut out = Vec::new();
    while let Some(i) = least_busy(&slots) {
        let node = slots[i].0.clone();
        let Some(a) = planner.next_assignment(&node) else {
            break;
        };
        slots[i].1 -= 1;
        out.push((node, a));
    }
    out
}

/// Index of the node with free slots and the smallest fraction of them in use (ties by id,
/// so the choice is deterministic).
fn least_busy(slots: &[Slot]) -> Option<usize> {
    slots
        .iter()
        .enumerate()
        .filter(|(_, (_, free, _))| *free > 0)
        .min_by(|(_, a), (_, b)| {
            let fa = (a.2 - a.1) as f64 / a.2 as f64;
            let fb = (b.2 - b.1) as f64 / b.2 as f64;
            fa.total_cmp(&fb).then_with(|| a.0.cmp(&b.0))
        })
        .map(|(i, _)| i)
}
