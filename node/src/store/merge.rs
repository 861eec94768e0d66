//! Merging what two nodes know about the same DAG, record by record.
//!
//! The rules are monotone (a record only moves towards "more final"), so merging is
//! idempotent and the order in which replicas exchange state does not matter:
//!
//! - a task in a final state beats one that is not: a task finished on either side of a
//!   partition stays finished;
//! - between two final states, `succeeded` beats the others (a retry elsewhere succeeded);
//!   two different successful outputs are a conflict: the local one is kept and the conflict
//!   is reported, never silently replaced;
//! - between two non-final states the incoming one wins (the controller's view of what runs
//!   where, and how many attempts counted, is the authority: a re-queued attempt is refunded);
//! - the winning record comes whole, attempts included.

use bx3_protocol::api::{DagState, TaskState};

use super::{DagMeta, TaskRecord};

fn rank(state: TaskState) -> u8 {
    match state {
        TaskState::Succeeded => 3,
        TaskState::Failed | TaskState::Skipped | TaskState::Cancelled => 2,
        TaskState::Running | TaskState::Pending => 1,
    }
}

/// The merged record, and whether the two sides hold different successful outputs.
pub fn merge_task(local: Option<&TaskRecord>, incoming: &TaskRecord) -> (TaskRecord, bool) {
    let Some(local) = local else {
        return (incoming.clone(), false);
    };
    let (lr, ir) = (rank(local.state), rank(incoming.state));
    let conflict = local.state == TaskState::Succeeded
        && incoming.state == TaskState::Succeeded
        && local.output != incoming.output;
    let out = if ir > lr || (ir == lr && ir == 1) {
        incoming.clone()
    } else {
        local.clone()
    };
    (out, conflict)
}

/// DAG-level facts: the incoming meta (the controller's), unless ours is final and theirs is
/// not — a finished DAG does not reopen.
pub fn merge_meta(local: Option<&DagMeta>, incoming: &DagMeta) -> DagMeta {
    match local {
        Some(l) if l.state.is_terminal() && !incoming.state.is_terminal() => {
            let mut m = l.clone();
            m.version = l.version.max(incoming.version);
            m
        }
        Some(l) => {
            let mut m = incoming.clone();
            m.version = l.version.max(incoming.version);
            if m.state == DagState::Pending && l.state == DagState::Running {
                m.state = DagState::Running;
            }
            m
        }
        None => incoming.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: TaskState, attempts: u32, output: Option<&str>) -> TaskRecord {
        TaskRecord {
            state,
            attempts,
            output: output.map(str::to_string),
            error: None,
            node: None,
            ..TaskRecord::default()
        }
    }

    #[test]
    fn finished_stays_finished_and_the_winner_comes_whole() {
        let done = rec(TaskState::Succeeded, 1, Some("x"));
        let pending = rec(TaskState::Pending, 2, None);
        let (m, c) = merge_task(Some(&done), &pending);
        assert_eq!(
            (m.state, m.attempts, m.output.as_deref(), c),
            (TaskState::Succeeded, 1, Some("x"), false)
        );
        let (m, _) = merge_task(Some(&pending), &done);
        assert_eq!((m.state, m.attempts), (TaskState::Succeeded, 1));
        // A controller re-queued an attempt (its node was lost): the refund replicates.
        let running = rec(TaskState::Running, 1, None);
        let requeued = rec(TaskState::Pending, 0, None);
        assert_eq!(merge_task(Some(&running), &requeued).0.attempts, 0);
        let failed = rec(TaskState::Failed, 3, None);
        let (m, _) = merge_task(Some(&failed), &done);
        assert_eq!(
            m.state,
            TaskState::Succeeded,
            "a success elsewhere beats a failure"
        );
    }

    #[test]
    fn two_different_successes_are_a_conflict_and_keep_ours() {
        let a = rec(TaskState::Succeeded, 1, Some("a"));
        let b = rec(TaskState::Succeeded, 1, Some("b"));
        let (m, conflict) = merge_task(Some(&a), &b);
        assert!(conflict);
        assert_eq!(m.output.as_deref(), Some("a"));
        assert!(!merge_task(Some(&a), &a).1, "same output is no conflict");
    }

    #[test]
    fn merge_is_idempotent_and_order_free_for_final_states() {
        let states = [
            TaskState::Pending,
            TaskState::Running,
            TaskState::Failed,
            TaskState::Succeeded,
            TaskState::Skipped,
        ];
        for a in states {
            for b in states {
                let ra = rec(a, 1, Some("o"));
                let rb = rec(b, 2, Some("o"));
                let (ab, _) = merge_task(Some(&ra), &rb);
                let (abb, _) = merge_task(Some(&ab), &rb);
                assert_eq!(ab, abb, "idempotent for {a:?},{b:?}");
                let (ba, _) = merge_task(Some(&rb), &ra);
                if rank(a) != rank(b) {
                    assert_eq!(ab.state, ba.state, "order-free for {a:?},{b:?}");
                }
            }
        }
    }
}
