//! What users see of the core's state: DAG views and summaries, built from the planner (on
//! the controller) or from stored records (a follower's replica).

use bx3_protocol::api::{AttemptView, DagSummary, DagView, TaskQuery, TaskView};
use bx3_protocol::dag::ValidDag;
use bx3_protocol::ids::DagId;

use crate::store::{AttemptRecord, DagMeta, SpecRecord, TaskRecord};

/// A DAG's view without its tasks: all of it comes from the meta record.
pub fn head(id: DagId, meta: &DagMeta) -> DagView {
    DagView {
        id: id.to_string(),
        name: meta.name.clone(),
        state: meta.state,
        tasks: Default::default(),
        order: Vec::new(),
        counts: meta.counts,
        description: meta.description.clone(),
        source: meta.source.clone(),
        created_at_ms: meta.created_at_ms,
        finished_at_ms: meta.finished_at_ms,
        version: meta.version,
        coordinator: None,
        page: None,
    }
}

/// A DAG as users see it: with all its tasks (`with_tasks`), none, or (`page`) the page of
/// tasks the query selects. Only the tasks on the page are turned into views, so a page of a
/// 100,000-task DAG costs a scan of task states, not 100,000 views.
pub fn dag_view(
    id: DagId,
    meta: &DagMeta,
    spec: &SpecRecord,
    tasks: &[TaskRecord],
    with_tasks: bool,
    page: Option<&TaskQuery>,
) -> DagView {
    let mut view = head(id, meta);
    let default = TaskRecord::default();
    if let Some(query) = page {
        // A task without a record yet is pending (as `Planner::add` reads it).
        let states = spec.dag.tasks.iter().enumerate().map(|(i, t)| {
            let state = tasks.get(i).map(|r| r.state).unwrap_or_default();
            (t.id.as_str(), state)
        });
        let (picked, info) = query.select(states);
        for i in picked {
            let Some(task) = spec.dag.tasks.get(i) else {
                continue;
            };
            let mut tv = task_view(&spec.dag, i, tasks.get(i).unwrap_or(&default));
            query.cut(&mut tv);
            view.order.push(task.id.clone());
            view.tasks.insert(task.id.clone(), tv);
        }
        view.page = Some(info);
    } else if with_tasks {
        for (i, task) in spec.dag.tasks.iter().enumerate() {
            let rec = tasks.get(i).unwrap_or(&default);
            view.order.push(task.id.clone());
            view.tasks
                .insert(task.id.clone(), task_view(&spec.dag, i, rec));
        }
    }
    view
}

fn task_view(dag: &ValidDag, i: usize, rec: &TaskRecord) -> TaskView {
    let Some(task) = dag.tasks.get(i) else {
        return TaskView::default();
    };
    let name = |d: u32| {
        dag.tasks
            .get(d as usize)
            .map(|t| t.id.clone())
            .unwrap_or_default()
    };
    let last = rec.log.last();
    let last_finished = rec.log.iter().rev().find(|a| a.finished_ms.is_some());
    TaskView {
        state: rec.state,
        output: rec.output.clone(),
        error: rec.error.clone(),
        attempts: rec.attempts,
        node: rec.node.as_ref().map(ToString::to_string),
        module: task.module.clone(),
        depends_on: task.deps.iter().map(|d| name(*d)).collect(),
        inputs: dag.inputs_as_written(i),
        stderr: last_finished.and_then(|a| a.stderr.clone()),
        queued_at_ms: last.and_then(|a| a.queued_ms).or(rec.queued_ms),
        started_at_ms: last.and_then(|a| a.started_ms),
        finished_at_ms: last.and_then(|a| a.finished_ms),
        attempt_log: rec.log.iter().map(attempt_view).collect(),
    }
}

fn attempt_view(a: &AttemptRecord) -> AttemptView {
    AttemptView {
        attempt: a.attempt,
        node: a.node.as_ref().map(ToString::to_string),
        outcome: a.outcome,
        queued_at_ms: a.queued_ms,
        started_at_ms: a.started_ms,
        finished_at_ms: a.finished_ms,
        error: a.error.clone(),
        stderr: a.stderr.clone(),
    }
}

pub fn summary(id: DagId, meta: &DagMeta) -> DagSummary {
    DagSummary {
        id: id.to_string(),
        name: meta.name.clone(),
        state: meta.state,
        counts: meta.counts,
        created_at_ms: meta.created_at_ms,
        finished_at_ms: meta.finished_at_ms,
    }
}
