//! Storage records to and from their wire twins (`bx3_protocol::mesh`). The two are kept
//! apart so that the disk layout and the wire format each follow their own compatibility
//! rules; today they hold the same fields, so the conversions are plain copies.

use bx3_protocol::mesh;

use super::{AttemptRecord, DagMeta, SpecRecord, TaskRecord};

impl From<&DagMeta> for mesh::DagRecord {
    fn from(m: &DagMeta) -> Self {
        mesh::DagRecord {
            name: m.name.clone(),
            description: m.description.clone(),
            source: m.source.clone(),
            state: m.state,
            created_at_ms: m.created_at_ms,
            finished_at_ms: m.finished_at_ms,
            version: m.version,
            counts: m.counts,
        }
    }
}

impl From<mesh::DagRecord> for DagMeta {
    fn from(m: mesh::DagRecord) -> Self {
        DagMeta {
            name: m.name,
            description: m.description,
            source: m.source,
            state: m.state,
            created_at_ms: m.created_at_ms,
            finished_at_ms: m.finished_at_ms,
            version: m.version,
            counts: m.counts,
        }
    }
}

impl From<&SpecRecord> for mesh::Spec {
    fn from(s: &SpecRecord) -> Self {
        mesh::Spec {
            dag: s.dag.clone(),
            modules: s.modules.clone(),
        }
    }
}

impl From<mesh::Spec> for SpecRecord {
    fn from(s: mesh::Spec) -> Self {
        SpecRecord {
            dag: s.dag,
            modules: s.modules,
        }
    }
}

impl From<&AttemptRecord> for mesh::AttemptRecord {
    fn from(a: &AttemptRecord) -> Self {
        mesh::AttemptRecord {
            attempt: a.attempt,
            node: a.node.clone(),
            outcome: a.outcome,
            queued_ms: a.queued_ms,
            started_ms: a.started_ms,
            finished_ms: a.finished_ms,
            error: a.error.clone(),
            stderr: a.stderr.clone(),
        }
    }
}

impl From<mesh::AttemptRecord> for AttemptRecord {
    fn from(a: mesh::AttemptRecord) -> Self {
        AttemptRecord {
            attempt: a.attempt,
            node: a.node,
            outcome: a.outcome,
            queued_ms: a.queued_ms,
            started_ms: a.started_ms,
            finished_ms: a.finished_ms,
            error: a.error,
            stderr: a.stderr,
        }
    }
}

impl From<&TaskRecord> for mesh::TaskRecord {
    fn from(t: &TaskRecord) -> Self {
        mesh::TaskRecord {
            state: t.state,
            attempts: t.attempts,
            output: t.output.clone(),
            error: t.error.clone(),
            node: t.node.clone(),
            queued_ms: t.queued_ms,
            log: t.log.iter().map(Into::into).collect(),
        }
    }
}

impl From<mesh::TaskRecord> for TaskRecord {
    fn from(t: mesh::TaskRecord) -> Self {
        TaskRecord {
            state: t.state,
            attempts: t.attempts,
            output: t.output,
            error: t.error,
            node: t.node,
            queued_ms: t.queued_ms,
            log: t
                .log
                .into_iter()
                .rev()
                .take(super::MAX_ATTEMPT_LOG)
                .rev()
                .map(Into::into)
                .collect(),
        }
    }
}
