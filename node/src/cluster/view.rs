//! What users see of the core's state: DAG views and summaries, built from the planner (on
//! the controller) or from stored records (a follower's replica).

use bx3_protocol::api::{AttemptView, DagSummary, DagView, TaskView};
use bx3_protocol::dag::{Input, Part, ValidDag};
use bx3_protocol::ids::DagId;

use crate::store::{AttemptRecord, DagMeta, SpecRecord, TaskRecord};

/// A DAG as users see it; `with_tasks` adds every task.
pub fn dag_view(
    id: DagId,
    meta: &DagMeta,
    spec: &SpecRecord,
    tasks: &[TaskRecord],
    with_tasks: bool,
) -> DagView {
    let mut view = DagView {
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
    };
    if with_tasks {
        let default = TaskRecord::default();
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
        inputs: task
            .inputs
            .iter()
            .map(|input| as_written(input, &name))
            .collect(),
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

/// An input as the DAG file wrote it (`${id}` for embedded outputs).
fn as_written(input: &Input, name: &impl Fn(u32) -> String) -> String {
    let escape = |s: &str| s.replace("${", "$${");
    match input {
        Input::Literal(s) => escape(s),
        Input::Output(i) => name(*i),
        Input::Template(parts) => parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => escape(t),
                Part::Output(i) => format!("${{{}}}", name(*i)),
            })
            .collect(),
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
