//! Prometheus metrics: one registry per node, served as OpenMetrics text at `GET /metrics`.
//!
//! ```text
//!  executor::Pool ── task_started / task_finished ──▶ ┌─────────┐
//!  api (module uploads) ── module_compiled ─────────▶ │ Metrics │ ◀── GET /metrics (encode)
//!  controller actor ── observe(Sample), once a second▶│ registry│
//!  libp2p transport ── bytes in/out (libp2p_bandwidth)└─────────┘
//! ```
//!
//! [`Metrics`] is a cheap cloneable handle (an `Arc`): events are counted where they happen
//! (atomic adds, no locks); what lives inside the controller (queue depth, term, peers,
//! replication lag, DAGs by state) arrives as a [`Sample`] the actor pushes once a second, so
//! a scrape never waits on the actor and costs the actor nothing.
//!
//! Two levels of task counters, both useful on a graph:
//! - `bx3_task_attempts_*` and `bx3_task_duration_seconds`: attempts run by *this node's*
//!   executors (load per node; sum over nodes for the mesh).
//! - `bx3_tasks_started_total`, `bx3_tasks_finished_total{state}`: task transitions decided by
//!   the controller (mesh-wide; only the controller of the moment counts them, so
//!   `sum(rate(...))` over all nodes is the mesh's rate, across failovers too).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bx3_protocol::api::{Counts, DagState, StatusView, TaskState};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The OpenMetrics content type Prometheus asks for (and parses).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How an attempt on this node's executors ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values as Prometheus users write them
pub enum AttemptOutcome {
    succeeded,
    failed,
    cancelled,
    timed_out,
    /// The executor process died (or could not start).
    crashed,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: AttemptOutcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// What the controller actor knows, pushed once a second (see the module doc).
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub status: Option<StatusView>,
    /// Tasks ready to run and not yet handed to an executor (controller), plus jobs this
    /// node accepted and has not started (worker).
    pub queue_depth: u64,
    /// Transitions the planner made into each task state since this node started
    /// (`running` = attempts started; the final states = tasks finished).
    pub task_transitions: Counts,
    /// DAGs this node finished as controller, by final state.
    pub dags_finished: DagCounts,
    /// DAGs in the planner now (controller only), by state.
    pub dags_active: DagCounts,
}

/// DAG counts by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DagCounts {
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl DagCounts {
    pub fn add(&mut self, state: DagState) {
        *match state {
            DagState::Pending => &mut self.pending,
            DagState::Running => &mut self.running,
            DagState::Succeeded => &mut self.succeeded,
            DagState::Failed => &mut self.failed,
            DagState::Cancelled => &mut self.cancelled,
        } += 1;
    }
    fn by_state(&self) -> [(&'static str, u64); 5] {
        [
            ("pending", self.pending),
            ("running", self.running),
            ("succeeded", self.succeeded),
            ("failed", self.failed),
            ("cancelled", self.cancelled),
        ]
    }
}

struct Inner {
    /// Locked only to register (at start) and to encode (a scrape).
    registry: Mutex<Registry>,
    attempts_started: Counter,
    attempts_finished: Family<OutcomeLabel, Counter>,
    attempt_seconds: Family<OutcomeLabel, Histogram>,
    compile_seconds: Histogram,
    tasks_started: Counter,
    tasks_finished: Family<StateLabel, Counter>,
    tasks_requeued: Counter,
    dags_finished: Family<StateLabel, Counter>,
    dags: Family<StateLabel, Gauge>,
    queue_depth: Gauge,
    executors_busy: Gauge,
    executors_total: Gauge,
    peers_alive: Gauge,
    peers_down: Gauge,
    is_controller: Gauge,
    term: Gauge,
    controller_changes: Counter,
    replication_lag: Gauge,
    replica_seq: Gauge,
    /// What the last sample said, to turn the planner's totals into counter increments and
    /// to notice controller changes.
    last: Mutex<Last>,
}

#[derive(Default)]
struct Last {
    transitions: Counts,
    dags_finished: DagCounts,
    leader: Option<(Option<String>, u64)>,
    change_at_ms: u64,
}

/// Cheap cloneable handle to the node's metrics.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("bx3");
        let attempts_started = Counter::default();
        r.register(
            "task_attempts_started",
            "Task attempts started on this node's executors",
            attempts_started.clone(),
        );
        let attempts_finished = Family::<OutcomeLabel, Counter>::default();
        r.register(
            "task_attempts_finished",
            "Task attempts that ended on this node's executors, by outcome",
            attempts_finished.clone(),
        );
        let attempt_seconds = Family::<OutcomeLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.001, 2.5, 14))) as fn() -> Histogram,
        );
        r.register_with_unit(
            "task_duration",
            "Wall time of task attempts on this node's executors (start to result), by outcome",
            Unit::Seconds,
            attempt_seconds.clone(),
        );
        let compile_seconds = Histogram::new(exponential_buckets(0.005, 2.5, 10));
        r.register_with_unit(
            "module_compile",
            "Time to check and compile an uploaded or fetched WebAssembly module",
            Unit::Seconds,
            compile_seconds.clone(),
        );
        let tasks_started = Counter::default();
        r.register(
            "tasks_started",
            "Task attempts the controller handed out (counted by the controller of the moment)",
            tasks_started.clone(),
        );
        let tasks_finished = Family::<StateLabel, Counter>::default();
        r.register(
            "tasks_finished",
            "Tasks that reached a final state, by state (counted by the controller)",
            tasks_finished.clone(),
        );
        let tasks_requeued = Counter::default();
        r.register(
            "tasks_requeued",
            "Attempts that went back to the queue: retries of failed attempts, and attempts on lost nodes",
            tasks_requeued.clone(),
        );
        let dags_finished = Family::<StateLabel, Counter>::default();
        r.register(
            "dags_finished",
            "DAGs that finished while this node was controller, by final state",
            dags_finished.clone(),
        );
        let dags = Family::<StateLabel, Gauge>::default();
        r.register(
            "dags",
            "DAGs the controller is running now, by state (pending, running)",
            dags.clone(),
        );
        let queue_depth = Gauge::default();
        r.register(
            "queue_depth",
            "Tasks ready to run but not yet on an executor (controller: the planner's ready tasks; every node: jobs it accepted and has not started)",
            queue_depth.clone(),
        );
        let executors_busy = Gauge::default();
        r.register(
            "executors_busy",
            "This node's executors running a task",
            executors_busy.clone(),
        );
        let executors_total = Gauge::default();
        r.register(
            "executors",
            "This node's executors (sized by RAM, CPU or --max-executors)",
            executors_total.clone(),
        );
        let peers_alive = Gauge::default();
        r.register(
            "peers_alive",
            "Peers that are members of the mesh now (this node not counted)",
            peers_alive.clone(),
        );
        let peers_down = Gauge::default();
        r.register(
            "peers_down",
            "Peers seen lately that are down now",
            peers_down.clone(),
        );
        let is_controller = Gauge::default();
        r.register(
            "is_controller",
            "1 if this node is the elected controller",
            is_controller.clone(),
        );
        let term = Gauge::default();
        r.register("term", "The election term this node knows", term.clone());
        let controller_changes = Counter::default();
        r.register(
            "controller_changes",
            "Changes of controller this node saw",
            controller_changes.clone(),
        );
        let replication_lag = Gauge::default();
        r.register(
            "replication_lag_batches",
            "On the controller: batches the furthest-behind follower still has to apply",
            replication_lag.clone(),
        );
        // Every series exists from the start (at zero), so a graph or a rate() of it has no
        // gap before the first event.
        for outcome in [
            AttemptOutcome::succeeded,
            AttemptOutcome::failed,
            AttemptOutcome::cancelled,
            AttemptOutcome::timed_out,
            AttemptOutcome::crashed,
        ] {
            drop(attempts_finished.get_or_create(&OutcomeLabel { outcome }));
        }
        for outcome in [AttemptOutcome::succeeded, AttemptOutcome::failed] {
            drop(attempt_seconds.get_or_create(&OutcomeLabel { outcome }));
        }
        for state in ["succeeded", "failed", "skipped", "cancelled"] {
            drop(tasks_finished.get_or_create(&StateLabel { state }));
        }
        for state in ["succeeded", "failed", "cancelled"] {
            drop(dags_finished.get_or_create(&StateLabel { state }));
        }
        for state in ["pending", "running"] {
            drop(dags.get_or_create(&StateLabel { state }));
        }
        let replica_seq = Gauge::default();
        r.register(
            "replica_seq",
            "Sequence number of the last replicated batch this node applied or produced",
            replica_seq.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry: Mutex::new(root),
                attempts_started,
                attempts_finished,
                attempt_seconds,
                compile_seconds,
                tasks_started,
                tasks_finished,
                tasks_requeued,
                dags_finished,
                dags,
                queue_depth,
                executors_busy,
                executors_total,
                peers_alive,
                peers_down,
                is_controller,
                term,
                controller_changes,
                replication_lag,
                replica_seq,
                last: Mutex::new(Last::default()),
            }),
        }
    }

    /// The registry, for another part to register its own metrics (libp2p's bandwidth
    /// counters). Hold it only while registering: a scrape waits for it.
    pub fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// An attempt started on one of this node's executors.
    pub fn task_started(&self) {
        self.inner.attempts_started.inc();
    }

    /// An attempt on one of this node's executors ended.
    pub fn task_finished(&self, outcome: AttemptOutcome, took: Duration) {
        let label = OutcomeLabel { outcome };
        self.inner.attempts_finished.get_or_create(&label).inc();
        self.inner
            .attempt_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// A module was checked and compiled.
    pub fn module_compiled(&self, took: Duration) {
        self.inner.compile_seconds.observe(took.as_secs_f64());
    }

    /// What the controller actor knows now.
    pub fn observe(&self, sample: Sample) {
        let i = &*self.inner;
        let mut last = i.last.lock().unwrap_or_else(|e| e.into_inner());
        let t = sample.task_transitions;
        // The planner's totals only grow; a counter moves by the difference.
        i.tasks_started
            .inc_by(t.running.saturating_sub(last.transitions.running));
        i.tasks_requeued
            .inc_by(t.pending.saturating_sub(last.transitions.pending));
        for (state, now, before) in [
            (
                TaskState::Succeeded,
                t.succeeded,
                last.transitions.succeeded,
            ),
            (TaskState::Failed, t.failed, last.transitions.failed),
            (TaskState::Skipped, t.skipped, last.transitions.skipped),
            (
                TaskState::Cancelled,
                t.cancelled,
                last.transitions.cancelled,
            ),
        ] {
            i.tasks_finished
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .inc_by(now.saturating_sub(before));
        }
        last.transitions = t;
        for ((state, now), (_, before)) in sample
            .dags_finished
            .by_state()
            .into_iter()
            .zip(last.dags_finished.by_state())
            .skip(2)
        {
            i.dags_finished
                .get_or_create(&StateLabel { state })
                .inc_by(now.saturating_sub(before));
        }
        last.dags_finished = sample.dags_finished;
        for (state, n) in sample.dags_active.by_state().into_iter().take(2) {
            i.dags.get_or_create(&StateLabel { state }).set(to_i64(n));
        }
        i.queue_depth.set(to_i64(sample.queue_depth));
        let Some(s) = sample.status else { return };
        i.executors_busy.set(to_i64(s.executors.busy));
        i.executors_total.set(to_i64(s.executors.total));
        let alive = s.peers.iter().filter(|p| p.alive).count() as u64;
        i.peers_alive.set(to_i64(alive));
        i.peers_down.set(to_i64(s.peers.len() as u64 - alive));
        let leading = s.leader.as_deref() == Some(s.peer_id.as_str());
        i.is_controller.set(i64::from(leading));
        i.term.set(to_i64(s.term));
        i.replica_seq.set(to_i64(s.replica_seq));
        let lag = if leading {
            s.peers
                .iter()
                .filter(|p| p.alive)
                .map(|p| p.replica_behind)
                .max()
                .unwrap_or(0)
        } else {
            0
        };
        i.replication_lag.set(to_i64(lag));
        // Controller changes: exact from the node's own record when it keeps one, otherwise
        // noticed between samples.
        if s.controller_changes.is_empty() {
            let now = (s.leader.clone(), s.term);
            if let Some(before) = &last.leader {
                if *before != now && now.0.is_some() {
                    i.controller_changes.inc();
                }
            }
            last.leader = Some(now);
        } else {
            let newer = s
                .controller_changes
                .iter()
                .filter(|c| c.at_ms > last.change_at_ms)
                .count() as u64;
            i.controller_changes.inc_by(newer);
            last.change_at_ms = s
                .controller_changes
                .iter()
                .map(|c| c.at_ms)
                .max()
                .unwrap_or(last.change_at_ms);
        }
    }

    /// The registry as OpenMetrics text.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn events_and_samples_show_up_in_the_text() {
        let m = Metrics::new();
        m.task_started();
        m.task_finished(AttemptOutcome::succeeded, Duration::from_millis(20));
        let mut sample = Sample {
            queue_depth: 7,
            ..Sample::default()
        };
        sample.task_transitions.running = 5;
        sample.task_transitions.succeeded = 3;
        sample.dags_finished.failed = 1;
        m.observe(sample.clone());
        // A second sample with the same totals moves nothing.
        m.observe(sample.clone());
        sample.task_transitions.succeeded = 4;
        m.observe(sample);
        let text = m.encode().expect("encodes");
        assert_eq!(value(&text, "bx3_task_attempts_started_total"), Some(1.0));
        assert_eq!(
            value(
                &text,
                r#"bx3_task_attempts_finished_total{outcome="succeeded"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                r#"bx3_task_duration_seconds_count{outcome="succeeded"}"#
            ),
            Some(1.0)
        );
        assert_eq!(value(&text, "bx3_tasks_started_total"), Some(5.0));
        assert_eq!(
            value(&text, r#"bx3_tasks_finished_total{state="succeeded"}"#),
            Some(4.0)
        );
        assert_eq!(
            value(&text, r#"bx3_dags_finished_total{state="failed"}"#),
            Some(1.0)
        );
        assert_eq!(value(&text, "bx3_queue_depth"), Some(7.0));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn controller_changes_are_counted_once_each() {
        let m = Metrics::new();
        let status = |leader: &str, term: u64| StatusView {
            peer_id: "me".into(),
            leader: Some(leader.into()),
            term,
            listen_addrs: vec![],
            executors: Default::default(),
            peers: vec![],
            version: String::new(),
            dags_active: 0,
            replica_seq: 0,
            role: Default::default(),
            private_mesh: false,
            controller_changes: vec![],
        };
        for (leader, term) in [("a", 1), ("a", 1), ("b", 2), ("b", 2), ("me", 3)] {
            m.observe(Sample {
                status: Some(status(leader, term)),
                ..Sample::default()
            });
        }
        let text = m.encode().expect("encodes");
        assert_eq!(value(&text, "bx3_controller_changes_total"), Some(2.0));
        assert_eq!(value(&text, "bx3_is_controller"), Some(1.0));
        assert_eq!(value(&text, "bx3_term"), Some(3.0));
    }
}
