//! The controller: sole owner of DAG state. Accepts DAGs, schedules their tasks onto
//! executors, records results, and persists every change before it is acknowledged.
//!
//! ```text
//!   api ──Command (bounded, oneshot reply)──▶ Actor ──Job──▶ executor::Pool
//!                                              │  ▲               │
//!            watch<u64> (something changed) ◀──┤  └────Done───────┘
//!                                              ▼
//!                                        store::Store (sled)
//! ```
//!
//! Each loop turn handles one wake-up plus whatever else is already queued (results first,
//! then commands), hands ready tasks to free executors, then writes the changes as one batch
//! with a single flush (group commit) and only then acknowledges submissions.

pub mod planner;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bx3_protocol::api::{Counts, DagState, DagSummary, DagView, TaskView};
use bx3_protocol::ids::DagId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::executor::{self, frame::Request, sizing::Capacity, Done, Job, Pool};
use crate::store::{DagMeta, SpecRecord, Store, StoreError, TaskRecord};
use planner::Planner;

const MB: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("the node is shutting down")]
    Stopped,
    #[error("no DAG with id {0}")]
    NotFound(DagId),
    #[error("DAG {0} has already finished ({1})")]
    AlreadyFinished(DagId, &'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub enum Command {
    Submit {
        spec: SpecRecord,
        source: Option<String>,
        reply: oneshot::Sender<Result<DagId, ControllerError>>,
    },
    Get {
        id: DagId,
        tasks: bool,
        reply: oneshot::Sender<Result<DagView, ControllerError>>,
    },
    List {
        limit: usize,
        reply: oneshot::Sender<Result<Vec<DagSummary>, ControllerError>>,
    },
    Cancel {
        id: DagId,
        reply: oneshot::Sender<Result<DagView, ControllerError>>,
    },
    Status {
        reply: oneshot::Sender<LocalStatus>,
    },
}

/// What the controller knows about this node's executors and work.
#[derive(Debug, Clone, Copy)]
pub struct LocalStatus {
    pub executors_total: usize,
    pub available_ram_mb: u64,
    pub executors_busy: usize,
    pub dags_active: usize,
}

/// Cloneable handle used by the API.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    changes: watch::Receiver<u64>,
}

impl Handle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ControllerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| ControllerError::Stopped)?;
        rx.await.map_err(|_| ControllerError::Stopped)
    }

    /// Returns once the DAG is durably stored.
    pub async fn submit(
        &self,
        spec: SpecRecord,
        source: Option<String>,
    ) -> Result<DagId, ControllerError> {
        self.ask(|reply| Command::Submit {
            spec,
            source,
            reply,
        })
        .await?
    }

    pub async fn get(&self, id: DagId, tasks: bool) -> Result<DagView, ControllerError> {
        self.ask(|reply| Command::Get { id, tasks, reply }).await?
    }

    pub async fn list(&self, limit: usize) -> Result<Vec<DagSummary>, ControllerError> {
        self.ask(|reply| Command::List { limit, reply }).await?
    }

    pub async fn cancel(&self, id: DagId) -> Result<DagView, ControllerError> {
        self.ask(|reply| Command::Cancel { id, reply }).await?
    }

    pub async fn status(&self) -> Result<LocalStatus, ControllerError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// A receiver that wakes whenever any DAG changed (for long polls).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

pub struct Actor {
    /// This node's peer id, recorded on every task it runs.
    peer_id: String,
    store: Store,
    planner: Planner,
    pool: Pool,
    /// How many jobs the pool may run at once (executor count), re-evaluated by the pool.
    capacity: watch::Receiver<Capacity>,
    /// Jobs handed to the pool and not yet reported back.
    busy: usize,
    /// Default per-task memory limit.
    ram_per_executor_mb: u64,
    /// Cancel tokens of running jobs, to stop them when their DAG is cancelled.
    running: HashMap<(DagId, u32), CancellationToken>,
    commands: mpsc::Receiver<Command>,
    done: mpsc::Receiver<Done>,
    /// Submissions written but not yet flushed; answered after the next flush.
    acks: Vec<(oneshot::Sender<Result<DagId, ControllerError>>, DagId)>,
    /// Bumped after every persisted change.
    changes: watch::Sender<u64>,
    shutdown: CancellationToken,
}

pub struct Parts {
    pub peer_id: String,
    pub store: Store,
    pub pool: Pool,
    pub done: mpsc::Receiver<Done>,
    pub capacity: watch::Receiver<Capacity>,
    pub ram_per_executor_mb: u64,
    pub shutdown: CancellationToken,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Actor {
    pub fn new(parts: Parts) -> (Actor, Handle) {
        let (tx, rx) = mpsc::channel(256);
        let (changes_tx, changes_rx) = watch::channel(0);
        let actor = Actor {
            peer_id: parts.peer_id,
            store: parts.store,
            planner: Planner::new(),
            pool: parts.pool,
            capacity: parts.capacity,
            busy: 0,
            ram_per_executor_mb: parts.ram_per_executor_mb,
            running: HashMap::new(),
            commands: rx,
            done: parts.done,
            acks: Vec::new(),
            changes: changes_tx,
            shutdown: parts.shutdown,
        };
        (
            actor,
            Handle {
                tx,
                changes: changes_rx,
            },
        )
    }

    /// Loads every unfinished DAG from the store so it continues where it stopped.
    fn recover(&mut self) -> Result<(), StoreError> {
        let ids = self.store.unfinished()?;
        let mut resumed_tasks = 0usize;
        for id in &ids {
            let (Some(meta), Some(spec)) = (self.store.meta(id)?, self.store.spec(id)?) else {
                tracing::warn!(dag = %id, "DAG record without its spec; skipping it");
                continue;
            };
            let tasks = self.store.tasks(id, spec.dag.tasks.len())?;
            resumed_tasks += tasks.iter().filter(|t| !t.state.is_terminal()).count();
            self.planner.add(*id, meta, Arc::new(spec), tasks);
        }
        if !ids.is_empty() {
            tracing::info!(
                dags = ids.len(),
                tasks_to_run = resumed_tasks,
                "resuming unfinished DAGs"
            );
        }
        Ok(())
    }

    pub async fn run(mut self) -> Result<(), StoreError> {
        self.recover()?;
        self.persist().await?;
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(done) = self.done.recv() => {
                    self.handle_done(done);
                    for _ in 0..4096 {
                        match self.done.try_recv() {
                            Ok(d) => self.handle_done(d),
                            Err(_) => break,
                        }
                    }
                }
                Ok(()) = self.capacity.changed() => {
                    // More executors: dispatch below. Fewer: busy ones finish, no new work
                    // goes to them.
                }
                Some(cmd) = self.commands.recv() => {
                    self.handle_command(cmd);
                    for _ in 0..64 {
                        match self.commands.try_recv() {
                            Ok(c) => self.handle_command(c),
                            Err(_) => break,
                        }
                    }
                }
            }
            self.dispatch().await;
            if let Err(e) = self.persist().await {
                // Without the store nothing can be acknowledged or recorded: stop the node
                // rather than run on with state that will not survive.
                for (reply, _) in self.acks.drain(..) {
                    let _ = reply.send(Err(ControllerError::Stopped));
                }
                return Err(e);
            }
        }
        for token in self.running.values() {
            token.cancel();
        }
        self.store.flush().await
    }

    fn handle_done(&mut self, done: Done) {
        self.busy = self.busy.saturating_sub(1);
        self.running.remove(&(done.dag, done.task));
        if let Err(e) = &done.outcome {
            tracing::debug!(dag = %done.dag, task = done.task, attempt = done.attempt, "task attempt failed: {e}");
        }
        self.planner
            .on_result(done.dag, done.task, done.attempt, done.outcome, now_ms());
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit {
                spec,
                source,
                reply,
            } => {
                let now = now_ms();
                let id = DagId::new(now, rand::random());
                let meta = DagMeta {
                    name: spec.dag.name.clone(),
                    description: spec.dag.description.clone(),
                    source,
                    state: DagState::Pending,
                    created_at_ms: now,
                    finished_at_ms: None,
                    version: 1,
                    counts: Counts {
                        total: spec.dag.tasks.len() as u64,
                        pending: spec.dag.tasks.len() as u64,
                        ..Counts::default()
                    },
                };
                match self.store.insert_dag(&id, &meta, &spec) {
                    Ok(()) => {
                        tracing::info!(dag = %id, name = %meta.name, tasks = spec.dag.tasks.len(), "DAG accepted");
                        self.planner.add(id, meta, Arc::new(spec), Vec::new());
                        self.acks.push((reply, id));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Command::Get { id, tasks, reply } => {
                let _ = reply.send(self.view(id, tasks));
            }
            Command::List { limit, reply } => {
                let _ = reply.send(self.list(limit));
            }
            Command::Cancel { id, reply } => {
                let _ = reply.send(self.cancel(id));
            }
            Command::Status { reply } => {
                let capacity = *self.capacity.borrow();
                let _ = reply.send(LocalStatus {
                    executors_total: capacity.executors,
                    available_ram_mb: capacity.available_ram_mb,
                    executors_busy: self.busy,
                    dags_active: self.planner.active_count(),
                });
            }
        }
    }

    fn cancel(&mut self, id: DagId) -> Result<DagView, ControllerError> {
        match self.planner.cancel(id, now_ms()) {
            Some(running) => {
                for task in running {
                    if let Some(token) = self.running.get(&(id, task)) {
                        token.cancel();
                    }
                }
                tracing::info!(dag = %id, "DAG cancelled");
                self.view(id, false)
            }
            None => {
                let view = self.view(id, false)?;
                Err(ControllerError::AlreadyFinished(id, view.state.as_str()))
            }
        }
    }

    async fn dispatch(&mut self) {
        let capacity = self.capacity.borrow().executors.max(1);
        while self.busy < capacity {
            let Some(a) = self.planner.next_assignment(&self.peer_id) else {
                break;
            };
            let token = self.shutdown.child_token();
            let job = Job {
                dag: a.dag,
                task: a.task,
                attempt: a.attempt,
                module: a.module,
                request: Request {
                    module_hash: a.module_hash,
                    argv: a.argv,
                    env: a.env,
                    stdin: a.stdin.into_bytes(),
                    memory_bytes: a
                        .memory_mb
                        .unwrap_or(self.ram_per_executor_mb)
                        .saturating_mul(MB),
                    max_stdout: executor::MAX_OUTPUT,
                    max_stderr_tail: executor::STDERR_TAIL,
                },
                timeout: Duration::from_millis(a.timeout_ms),
                cancel: token.clone(),
            };
            self.running.insert((a.dag, a.task), token);
            self.busy += 1;
            if let Err(job) = self.pool.submit(job).await {
                self.busy -= 1;
                self.running.remove(&(job.dag, job.task));
                self.planner.on_result(
                    job.dag,
                    job.task,
                    job.attempt,
                    Err("the executor pool has stopped".into()),
                    now_ms(),
                );
                break;
            }
        }
    }

    /// Writes what changed, flushes once, then acknowledges submissions and wakes watchers.
    async fn persist(&mut self) -> Result<(), StoreError> {
        let dirty = self.planner.take_dirty();
        if dirty.tasks.is_empty() && dirty.runs.is_empty() && self.acks.is_empty() {
            return Ok(());
        }
        let records: Vec<(DagId, u32, &TaskRecord)> = dirty
            .tasks
            .iter()
            .filter_map(|(dag, idx)| {
                let run = self.planner.run(dag)?;
                Some((*dag, *idx, run.tasks.get(*idx as usize)?))
            })
            .collect();
        self.store.put_tasks(records)?;
        let mut finished = Vec::new();
        for id in &dirty.runs {
            if let Some(run) = self.planner.run(id) {
                self.store.put_meta(id, &run.meta)?;
                if run.is_finished() {
                    finished.push(*id);
                }
            }
        }
        self.store.flush().await?;
        for (reply, id) in self.acks.drain(..) {
            let _ = reply.send(Ok(id));
        }
        for id in finished {
            if let Some(run) = self.planner.evict(&id) {
                let c = run.meta.counts;
                tracing::info!(dag = %id, name = %run.meta.name, state = run.meta.state.as_str(),
                    succeeded = c.succeeded, failed = c.failed, skipped = c.skipped, cancelled = c.cancelled,
                    "DAG finished");
            }
        }
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    fn view(&self, id: DagId, with_tasks: bool) -> Result<DagView, ControllerError> {
        if let Some(run) = self.planner.run(&id) {
            return Ok(make_view(id, &run.meta, &run.spec, &run.tasks, with_tasks));
        }
        let meta = self.store.meta(&id)?.ok_or(ControllerError::NotFound(id))?;
        let spec = self.store.spec(&id)?.ok_or(ControllerError::NotFound(id))?;
        let tasks = if with_tasks {
            self.store.tasks(&id, spec.dag.tasks.len())?
        } else {
            Vec::new()
        };
        Ok(make_view(id, &meta, &spec, &tasks, with_tasks))
    }

    fn list(&self, limit: usize) -> Result<Vec<DagSummary>, ControllerError> {
        Ok(self
            .store
            .list(limit)?
            .into_iter()
            .map(|(id, stored)| {
                let meta = self.planner.run(&id).map(|r| &r.meta).unwrap_or(&stored);
                DagSummary {
                    id: id.to_string(),
                    name: meta.name.clone(),
                    state: meta.state,
                    counts: meta.counts,
                    created_at_ms: meta.created_at_ms,
                    finished_at_ms: meta.finished_at_ms,
                }
            })
            .collect())
    }
}

pub fn make_view(
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
    };
    if with_tasks {
        for (task, rec) in spec.dag.tasks.iter().zip(tasks) {
            view.order.push(task.id.clone());
            view.tasks.insert(
                task.id.clone(),
                TaskView {
                    state: rec.state,
                    output: rec.output.clone(),
                    error: rec.error.clone(),
                    attempts: rec.attempts,
                    node: rec.node.clone(),
                },
            );
        }
    }
    view
}
