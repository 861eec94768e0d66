//! The controller's bookkeeping of work handed to other nodes, without I/O: which node runs
//! which attempt, how many jobs each has in flight, and what happens when an assignment is
//! refused or a node is lost; and the choice of node for each ready task.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::{HashMap, HashSet};

use bx3_protocol::ids::{DagId, NodeId};

use super::planner::{Assignment, Planner};

/// Controller: attempts running on other nodes, and how many per node.
#[derive(Debug, Default)]
pub struct Placements {
    tasks: HashMap<(DagId, u32), (NodeId, u32)>,
    inflight: HashMap<NodeId, usize>,
}

impl Placements {
    /// Jobs in flight on `node`.
    pub fn in_flight(&self, node: &NodeId) -> usize {
        self.inflight.get(node).copied().unwrap_or(0)
    }

    pub fn placed(&mut self, node: &NodeId, job: &Assignment) {
        if let Some((old, _)) = self
            .tasks
            .insert((job.dag, job.task), (node.clone(), job.attempt))
        {
            if let Some(n) = self.inflight.get_mut(&old) {
                *n = n.saturating_sub(1);
            }
        }
        *self.inflight.entry(node.clone()).or_default() += 1;
    }

    fn forget(&mut self, dag: DagId, task: u32) -> Option<(NodeId, u32)> {
        let (node, attempt) = self.tasks.remove(&(dag, task))?;
        if let Some(n) = self.inflight.get_mut(&node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.inflight.remove(&node);
            }
        }
        Some((node, attempt))
    }

    /// An attempt ended (the planner took its result, or it went stale): it no longer
    /// counts against its node.
    pub fn ended(&mut self, dag: DagId, task: u32, attempt: u32) {
        if self.tasks.get(&(dag, task)).map(|(_, a)| *a) == Some(attempt) {
            self.forget(dag, task);
        }
    }

    /// `node` could not take these jobs: they go back to the queue without using a retry.
    pub fn refused(
        &mut self,
        planner: &mut Planner,
        node: &NodeId,
        jobs: &[(DagId, u32, u32)],
        now_ms: u64,
    ) {
        for &(dag, task, attempt) in jobs {
            if self.tasks.get(&(dag, task)).map(|(n, a)| (n, *a)) == Some((node, attempt)) {
                self.forget(dag, task);
                planner.requeue(dag, task, attempt, now_ms);
            }
        }
    }

    /// `node` is gone: its running attempts go back to the queue without using a retry.
    /// Returns how many.
    pub fn node_down(&mut self, planner: &mut Planner, node: &NodeId, now_ms: u64) -> usize {
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
            planner.requeue(*dag, *task, *attempt, now_ms);
        }
        lost.len()
    }

    /// A DAG was cancelled with these tasks running: the nodes that must abort them.
    pub fn cancelled(&mut self, dag: DagId, running: &[u32]) -> HashSet<NodeId> {
        running
            .iter()
            .filter_map(|t| self.forget(dag, *t).map(|(n, _)| n))
            .collect()
    }
}

/// One node's room for work: free slots, total slots, and its executor size (MB), which
/// decides which tasks fit there.
#[derive(Debug, Clone)]
pub struct Slot {
    pub node: NodeId,
    pub free: usize,
    pub total: usize,
    pub executor_mb: u64,
}

/// Hands ready tasks to free slots, least busy node first (by fraction in use, ties by id),
/// so load spreads over the mesh instead of filling one node before the next. A task that
/// asks more memory than a node's executors have never goes there. O(log N) per task: the
/// nodes wait in a heap ordered by how busy they are.
pub fn plan(planner: &mut Planner, slots: Vec<Slot>, now_ms: u64) -> Vec<(NodeId, Assignment)> {
    let mut out = Vec::new();
    if !planner.has_ready() {
        return out;
    }
    let mut heap: BinaryHeap<Reverse<Busy>> = slots
        .into_iter()
        .filter(|s| s.free > 0 && s.total > 0)
        .map(|slot| Reverse(Busy(slot)))
        .collect();
    while let Some(Reverse(Busy(mut slot))) = heap.pop() {
        let size = slot.executor_mb;
        match planner.next_assignment(&slot.node, now_ms, |t| {
            t.memory_mb.is_none_or(|m| m <= size)
        }) {
            Some(a) => {
                out.push((slot.node.clone(), a));
                slot.free -= 1;
                if slot.free > 0 {
                    heap.push(Reverse(Busy(slot)));
                }
            }
            // Nothing ready fits this node: the others may still take something, unless
            // nothing at all is ready any more.
            None if planner.has_ready() => {}
            None => break,
        }
    }
    out
}

/// A slot ordered by the fraction of it in use (compared exactly, as `used_a * total_b`
/// against `used_b * total_a`), then by node id, so the choice is deterministic.
struct Busy(Slot);

impl Busy {
    fn key(&self) -> (u128, u128) {
        let s = &self.0;
        ((s.total - s.free) as u128, s.total as u128)
    }
}

impl Ord for Busy {
    fn cmp(&self, other: &Busy) -> std::cmp::Ordering {
        let ((ua, ta), (ub, tb)) = (self.key(), other.key());
        (ua * tb)
            .cmp(&(ub * ta))
            .then_with(|| self.0.node.cmp(&other.0.node))
    }
}

impl PartialOrd for Busy {
    fn partial_cmp(&self, other: &Busy) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Busy {
    fn eq(&self, other: &Busy) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Busy {}
