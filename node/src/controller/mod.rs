//! The cluster actor: sole owner of this node's cluster state — the election, the membership
//! table, the DAG planner and every store write. When this node is the elected controller it
//! schedules ready tasks onto the executors of every node (itself included); on every node it
//! runs the tasks the controller assigns to it and reports their results.
//!
//! ```text
//!   api ──Command──▶ ┌───────────────┐ ──Job──▶ executor::Pool ──Done──┐
//!                    │ cluster Actor │ ◀───────────────────────────────┘
//!   net ──Event────▶ │ election      │ ──publish / request (spawned)──▶ net::Client
//!   timers (tick,    │ members       │ ◀──Internal (replies of spawned requests)
//!   announce)  ────▶ │ planner       │
//!                    └──────┬────────┘
//!                           ▼ store::Store (sled): DAGs, tasks, election term + vote
//! ```
//!
//! Each loop turn handles one wake-up plus whatever else is queued (local completions first,
//! then remote input, then commands), hands ready tasks to free executors, then writes the
//! changes as one batch with one flush (group commit) and only then acknowledges
//! submissions. Requests to peers are spawned so the actor never waits on the network.

mod dispatch;
mod mesh;
pub mod planner;
mod replication;
#[cfg(test)]
mod sim;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bx3_protocol::api::{Counts, DagState, DagSummary, DagView, StatusView, TaskView};
use bx3_protocol::ids::DagId;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::election::{self, Election};
use crate::executor::{self, frame::Request as ExecRequest, sizing::Capacity, Done, Job, Pool};
use crate::mesh::members::Members;
use crate::mesh::{Id, Response, WireJob, WireResult};
use crate::net;
use crate::store::{DagMeta, ModuleStore, SpecRecord, Store, StoreError, TaskRecord};
use planner::Planner;

const MB: u64 = 1024 * 1024;
/// Election clock: one tick every 100 ms. Every wake-up of an idle node costs (a 50 ms tick
/// was a tenth of an idle node's CPU); the election's timing is counted in these ticks.
pub const TICK: Duration = Duration::from_millis(100);
/// How often a node announces itself.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// How long an API call waits for a controller to be elected before giving up.
const NO_LEADER_WAIT: Duration = Duration::from_secs(5);
/// Most results buffered for a leader that cannot be reached right now.
const MAX_PENDING_RESULTS: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("the node is shutting down")]
    Stopped,
    #[error("no DAG with id {0}")]
    NotFound(DagId),
    #[error("DAG {0} has already finished ({1})")]
    AlreadyFinished(DagId, &'static str),
    #[error("no controller has been elected yet; try again in a moment")]
    NoLeader,
    /// Stored by the controller, but no second node confirmed a copy in time: the DAG is
    /// accepted and will run, it is just not yet safe from the loss of one node.
    #[error("DAG {0} is stored on the controller and will run, but no other node confirmed a copy within 30 s, so it would not survive the loss of that node; follow it with `bx3-node dag {0}` (do not resubmit)")]
    NotReplicated(DagId),
    /// The controller answered with an error (its HTTP status is kept).
    #[error("{message}")]
    Remote { status: u16, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ControllerError {
    /// The HTTP status that fits, also sent over the wire for forwarded calls.
    pub fn status(&self) -> u16 {
        match self {
            ControllerError::NotFound(_) => 404,
            ControllerError::AlreadyFinished(..) => 409,
            ControllerError::Stopped | ControllerError::NoLeader => 503,
            ControllerError::NotReplicated(_) => 504,
            ControllerError::Remote { status, .. } => *status,
            ControllerError::Store(_) => 500,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, ControllerError>>;

pub enum Command {
    Submit {
        spec: SpecRecord,
        source: Option<String>,
        reply: Reply<DagId>,
    },
    Get {
        id: DagId,
        tasks: bool,
        /// Long poll: answer once the DAG's version passes this, it finishes, or `wait` ends.
        after: Option<u64>,
        wait: Duration,
        reply: Reply<DagView>,
    },
    List {
        limit: usize,
        reply: Reply<Vec<DagSummary>>,
    },
    Cancel {
        id: DagId,
        reply: Reply<DagView>,
    },
    Status {
        reply: oneshot::Sender<StatusView>,
    },
}

/// Cloneable handle used by the API (and by the actor's own spawned tasks).
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

    /// Returns once the DAG is durably stored by the controller.
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
        self.get_after(id, tasks, None, Duration::ZERO).await
    }

    /// Like `get`, but with `after` waits (up to `wait`) until the DAG's version passes it or
    /// the DAG finishes. Served by the controller, wherever it is.
    pub async fn get_after(
        &self,
        id: DagId,
        tasks: bool,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<DagView, ControllerError> {
        self.ask(|reply| Command::Get {
            id,
            tasks,
            after,
            wait,
            reply,
        })
        .await?
    }

    pub async fn list(&self, limit: usize) -> Result<Vec<DagSummary>, ControllerError> {
        self.ask(|reply| Command::List { limit, reply }).await?
    }

    pub async fn cancel(&self, id: DagId) -> Result<DagView, ControllerError> {
        self.ask(|reply| Command::Cancel { id, reply }).await?
    }

    pub async fn status(&self) -> Result<StatusView, ControllerError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// A receiver that wakes whenever any DAG changed on this node (for long polls).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

/// Who ordered a job that runs on this node's executors.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// This node's own planner (it is the controller).
    Local,
    /// A controller elsewhere; results go back to the current controller.
    Remote,
}

struct Running {
    token: CancellationToken,
    origin: Origin,
}

/// Replies of spawned network requests, back into the actor.
enum Internal {
    /// A worker could not take these jobs (unreachable, or it refused our term).
    AssignFailed {
        node: Id,
        jobs: Vec<WireJob>,
        reason: String,
    },
    /// The controller took our results.
    ResultsDelivered,
    /// Results could not be delivered to the controller; keep them for the next try.
    ResultsUndelivered(Vec<WireResult>),
    /// A follower's answer to a Replicate request.
    ReplicaAnswer {
        node: Id,
        answer: Result<Response, String>,
    },
    /// The controller now holds these DAGs of ours (it had them, or took our push).
    Synced(HashSet<DagId>),
    /// A module fetched from a peer is now in the module store (or could not be fetched).
    ModuleFetched { hash: String, error: Option<String> },
}

/// Static facts the status view shows.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub ram_per_executor_mb: u64,
    pub min_free_ram_mb: u64,
    pub max_executors: Option<usize>,
}

pub struct Parts {
    pub peer_id: PeerId,
    pub store: Store,
    pub modules: ModuleStore,
    pub pool: Pool,
    pub done: mpsc::Receiver<Done>,
    pub capacity: watch::Receiver<Capacity>,
    pub info: NodeInfo,
    pub net: net::Client,
    pub net_events: mpsc::Receiver<net::Event>,
    pub election: election::Params,
    pub shutdown: CancellationToken,
}

pub struct Actor {
    /// This node's peer id (text), recorded on every task it runs.
    me: Id,
    store: Store,
    /// Module files, to check presence before running assigned jobs.
    modules: ModuleStore,
    planner: Planner,
    pool: Pool,
    /// Executor count, re-evaluated by the pool.
    capacity: watch::Receiver<Capacity>,
    info: NodeInfo,
    /// Jobs handed to the local pool and not yet reported back.
    busy: usize,
    /// Running local jobs by (dag, task, attempt): cancel token and who ordered them.
    running: HashMap<(DagId, u32, u32), Running>,
    commands: mpsc::Receiver<Command>,
    /// A sender to our own command channel, for spawned tasks that finish a forwarded submit.
    self_handle: Handle,
    done: mpsc::Receiver<Done>,
    /// Submissions written but not yet flushed; answered after the next flush.
    acks: Vec<(Reply<DagId>, DagId)>,
    /// API calls waiting for a controller to be elected.
    parked: Vec<(Instant, Command)>,
    /// Bumped after every persisted change.
    changes: watch::Sender<u64>,
    net: net::Client,
    net_events: mpsc::Receiver<net::Event>,
    internal_tx: mpsc::Sender<Internal>,
    internal: mpsc::Receiver<Internal>,
    election: Election<Id>,
    members: Members,
    /// Peer ids by their text form, learned from connections and messages.
    peers: HashMap<Id, PeerId>,
    listen_addrs: Vec<String>,
    /// Controller side: tasks running on other nodes, and how many per node.
    remote: dispatch::Remote,
    /// Worker side: assigned jobs waiting for a free executor or for their module.
    queue: VecDeque<WireJob>,
    waiting_module: HashMap<String, Vec<WireJob>>,
    /// Worker side: finished attempts to report to the controller.
    results_out: Vec<WireResult>,
    /// Whether a Results request is on its way (one at a time keeps them ordered).
    results_in_flight: bool,
    /// This node's copy of the controller's state: position, and (as controller) followers.
    replication: replication::Replication,
    /// Submissions durable here, waiting for a second node's copy.
    pending_acks: replication::PendingAcks<Reply<DagId>>,
    /// Election ticks since start (for periodic work).
    ticks: u64,
    /// Records written but not yet flushed (flushed at the latest on the next tick).
    unflushed: bool,
    started: Instant,
    shutdown: CancellationToken,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Actor {
    pub fn new(parts: Parts) -> Result<(Actor, Handle), StoreError> {
        let (tx, rx) = mpsc::channel(256);
        let (changes_tx, changes_rx) = watch::channel(0);
        let (internal_tx, internal_rx) = mpsc::channel(1024);
        let me = parts.peer_id.to_string();
        let persisted = parts.store.election()?;
        let repl_pos = parts.store.repl_pos()?;
        let seed = u64::from_le_bytes(
            parts.peer_id.to_bytes()[parts.peer_id.to_bytes().len().saturating_sub(8)..]
                .try_into()
                .unwrap_or([7; 8]),
        ) ^ now_ms();
        let handle = Handle {
            tx,
            changes: changes_rx,
        };
        let actor = Actor {
            election: Election::new(me.clone(), parts.election, persisted, seed),
            me,
            store: parts.store,
            modules: parts.modules,
            planner: Planner::new(),
            pool: parts.pool,
            capacity: parts.capacity,
            info: parts.info,
            busy: 0,
            running: HashMap::new(),
            commands: rx,
            self_handle: handle.clone(),
            done: parts.done,
            acks: Vec::new(),
            parked: Vec::new(),
            changes: changes_tx,
            net: parts.net,
            net_events: parts.net_events,
            internal_tx,
            internal: internal_rx,
            members: Members::new(),
            peers: HashMap::new(),
            listen_addrs: Vec::new(),
            remote: dispatch::Remote::default(),
            queue: VecDeque::new(),
            waiting_module: HashMap::new(),
            results_out: Vec::new(),
            results_in_flight: false,
            replication: replication::Replication::new(repl_pos),
            pending_acks: replication::PendingAcks::default(),
            ticks: 0,
            unflushed: false,
            started: Instant::now(),
            shutdown: parts.shutdown,
        };
        Ok((actor, handle))
    }

    /// Milliseconds since the actor started: the clock for membership timeouts.
    fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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
        // Unfinished DAGs are resumed by whichever node becomes the controller (take_over).
        let pos = self.replication.pos().clone();
        self.elect(election::Input::LogPos(pos)).await?;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut announce = tokio::time::interval(ANNOUNCE_EVERY);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                Some(msg) = self.internal.recv() => self.handle_internal(msg),
                Ok(()) = self.capacity.changed() => {
                    // More executors: dispatch below, and tell the controller at once.
                    // Fewer: busy ones finish their task, no new work goes to them.
                    self.announce().await;
                }
                Some(event) = self.net_events.recv() => {
                    self.handle_net(event).await?;
                    for _ in 0..256 {
                        match self.net_events.try_recv() {
                            Ok(e) => self.handle_net(e).await?,
                            Err(_) => break,
                        }
                    }
                }
                _ = tick.tick() => self.handle_tick().await?,
                _ = announce.tick() => self.announce().await,
                Some(cmd) = self.commands.recv() => {
                    let mut cmds = vec![cmd];
                    for _ in 0..64 {
                        match self.commands.try_recv() {
                            Ok(c) => cmds.push(c),
                            Err(_) => break,
                        }
                    }
                    // What a read shows is on disk: a task shown as done stays done.
                    if cmds.iter().any(|c| matches!(c, Command::Get { .. } | Command::List { .. })) {
                        self.flush_unflushed().await?;
                    }
                    for c in cmds {
                        self.handle_command(c);
                    }
                }
            }
            self.dispatch().await;
            self.send_results();
            if let Err(e) = self.persist().await {
                // Without the store nothing can be acknowledged or recorded: stop the node
                // rather than run on with state that will not survive.
                for (reply, _) in self.acks.drain(..) {
                    let _ = reply.send(Err(ControllerError::Stopped));
                }
                return Err(e);
            }
        }
        for r in self.running.values() {
            r.token.cancel();
        }
        self.store.flush().await
    }

    fn handle_done(&mut self, done: Done) {
        self.busy = self.busy.saturating_sub(1);
        let Some(running) = self.running.remove(&(done.dag, done.task, done.attempt)) else {
            return;
        };
        if let Err(e) = &done.outcome {
            // hook(trust): untrusted text (a task's stderr) is logged with `?`, escaped.
            tracing::debug!(dag = %done.dag, task = done.task, attempt = done.attempt, error = ?e, "task attempt failed");
        }
        match running.origin {
            Origin::Local => {
                self.planner
                    .on_result(done.dag, done.task, done.attempt, done.outcome, now_ms());
            }
            Origin::Remote => {
                if self.results_out.len() >= MAX_PENDING_RESULTS {
                    tracing::warn!("too many undelivered results; dropping the oldest");
                    self.results_out.remove(0);
                }
                self.results_out.push(WireResult {
                    dag: done.dag,
                    task: done.task,
                    attempt: done.attempt,
                    outcome: done.outcome,
                });
            }
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        if let Command::Status { reply } = cmd {
            let _ = reply.send(self.status_view());
            return;
        }
        if self.election.is_leader() {
            self.handle_as_leader(cmd);
            return;
        }
        match self.election.leader().cloned() {
            Some(leader) => self.forward(leader, cmd),
            None => self.parked.push((Instant::now() + NO_LEADER_WAIT, cmd)),
        }
    }

    /// Serves an API call on the controller itself.
    fn handle_as_leader(&mut self, cmd: Command) {
        match cmd {
            Command::Submit {
                spec,
                source,
                reply,
            } => match self.accept(spec, source) {
                Ok(id) => self.acks.push((reply, id)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Get {
                id,
                tasks,
                after,
                wait,
                reply,
            } => {
                let view = self.view(id, tasks);
                match (after, view) {
                    (Some(after), Ok(v)) if v.version <= after && !v.state.is_terminal() => {
                        let handle = self.self_handle.clone();
                        tokio::spawn(async move {
                            let _ =
                                reply.send(wait_for_change(handle, id, tasks, after, wait).await);
                        });
                    }
                    (_, view) => {
                        let _ = reply.send(view);
                    }
                }
            }
            Command::List { limit, reply } => {
                let _ = reply.send(self.list(limit));
            }
            Command::Cancel { id, reply } => {
                let _ = reply.send(self.cancel(id));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status_view());
            }
        }
    }

    /// Records a new DAG (the caller acknowledges it after the next flush).
    fn accept(
        &mut self,
        spec: SpecRecord,
        source: Option<String>,
    ) -> Result<DagId, ControllerError> {
        let now = now_ms();
        let id = DagId::new(now, rand::random());
        let n = spec.dag.tasks.len() as u64;
        let meta = DagMeta {
            name: spec.dag.name.clone(),
            description: spec.dag.description.clone(),
            source,
            state: DagState::Pending,
            created_at_ms: now,
            finished_at_ms: None,
            version: 1,
            counts: Counts {
                total: n,
                pending: n,
                ..Counts::default()
            },
        };
        self.store.insert_dag(&id, &meta, &spec)?;
        self.replication.accepted(id);
        tracing::info!(dag = %id, name = ?meta.name, tasks = n, "DAG accepted"); // hook(trust): `?`
        self.planner.add(id, meta, Arc::new(spec), Vec::new());
        Ok(id)
    }

    fn cancel(&mut self, id: DagId) -> Result<DagView, ControllerError> {
        match self.planner.cancel(id, now_ms()) {
            Some(running) => {
                let abort_remote = self.remote.cancelled(id, &running);
                for r in self
                    .running
                    .iter()
                    .filter(|((dag, _, _), r)| *dag == id && r.origin == Origin::Local)
                {
                    r.1.token.cancel();
                }
                for node in abort_remote {
                    self.spawn_request(&node, crate::mesh::Request::Abort { dag: id }, |_| None);
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

    /// Free local executors, counting jobs queued for them.
    fn local_free(&self) -> usize {
        self.capacity.borrow().executors.max(1).saturating_sub(
            self.busy
                + self.queue.len()
                + self.waiting_module.values().map(Vec::len).sum::<usize>(),
        )
    }

    /// Starts queued jobs (assigned by a controller, possibly this node) on free executors.
    async fn start_queued(&mut self) {
        let capacity = self.capacity.borrow().executors.max(1);
        while self.busy < capacity {
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            let origin = if self.election.is_leader() && self.planner.run(&job.dag).is_some() {
                Origin::Local
            } else {
                Origin::Remote
            };
            self.start_job(job, origin).await;
        }
    }

    async fn start_job(&mut self, job: WireJob, origin: Origin) {
        let token = self.shutdown.child_token();
        let key = (job.dag, job.task, job.attempt);
        let exec = Job {
            dag: job.dag,
            task: job.task,
            attempt: job.attempt,
            module: job.module,
            request: ExecRequest {
                module_hash: job.module_hash,
                argv: job.argv,
                env: job.env,
                stdin: job.stdin.into_bytes(),
                memory_bytes: job
                    .memory_mb
                    .unwrap_or(self.info.ram_per_executor_mb)
                    .saturating_mul(MB),
                max_stdout: executor::MAX_OUTPUT,
                max_stderr_tail: executor::STDERR_TAIL,
            },
            timeout: Duration::from_millis(job.timeout_ms),
            cancel: token.clone(),
        };
        self.running.insert(key, Running { token, origin });
        self.busy += 1;
        if let Err(job) = self.pool.submit(exec).await {
            self.busy -= 1;
            self.running.remove(&key);
            self.handle_done(Done {
                dag: job.dag,
                task: job.task,
                attempt: job.attempt,
                outcome: Err("the executor pool has stopped".into()),
                run_us: None,
            });
        }
    }

    /// Flushes records written since the last flush, if any, and wakes watchers.
    pub(super) async fn flush_unflushed(&mut self) -> Result<(), StoreError> {
        if std::mem::take(&mut self.unflushed) {
            self.store.flush().await?;
            self.changes.send_modify(|v| *v += 1);
        }
        Ok(())
    }

    /// Writes what changed, then acknowledges submissions and wakes watchers.
    ///
    /// Group commit: a flush (write + fsync) happens when something waits on it — a submission
    /// to acknowledge, a DAG that finished — and otherwise at the latest on the next tick
    /// (100 ms). Under load, results then reach the disk in a few large flushes instead of
    /// one flush per result (a 2,000-task DAG took ~2,300 flushes). What a controller killed
    /// inside that window loses is task results not yet on disk, never an acknowledged DAG:
    /// those tasks run again (and the batch carrying them was already sent to the followers,
    /// one of which takes over).
    async fn persist(&mut self) -> Result<(), StoreError> {
        let dirty = self.planner.take_dirty();
        if dirty.tasks.is_empty()
            && dirty.runs.is_empty()
            && self.acks.is_empty()
            && !self.replication.has_unsent()
        {
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
        if self.election.is_leader() {
            let term = self.election.term().cloned();
            let made = self
                .replication
                .make_batch(&self.store, &self.planner, &dirty, term)?;
            if made.is_some() {
                // The election advertises our position when we stand again (re-election):
                // it must be the one our followers hold, or none of them can vote for us.
                let pos = self.replication.pos().clone();
                self.elect(election::Input::LogPos(pos)).await?;
            }
        }
        let mut finished = Vec::new();
        for id in &dirty.runs {
            if let Some(run) = self.planner.run(id) {
                self.store.put_meta(id, &run.meta)?;
                if run.is_finished() {
                    finished.push(*id);
                }
            }
        }
        // The batch goes to the followers while our own flush runs (as a Raft leader sends
        // entries while it appends them): a submission then waits for the slower of the two
        // fsyncs, not their sum. It is acknowledged only after both.
        self.replicate();
        if self.acks.is_empty() && finished.is_empty() {
            // Watchers are woken by the flush that makes this round durable.
            self.unflushed = true;
            return Ok(());
        }
        self.store.flush().await?;
        self.unflushed = false;
        for (reply, id) in std::mem::take(&mut self.acks) {
            self.ack_after_replication(reply, id);
        }
        for id in finished {
            if let Some(run) = self.planner.evict(&id) {
                self.replication.finished(id);
                let c = run.meta.counts;
                // hook(trust): the DAG name is user text: `?`.
                tracing::info!(dag = %id, name = ?run.meta.name, state = run.meta.state.as_str(),
                    succeeded = c.succeeded, failed = c.failed, skipped = c.skipped, cancelled = c.cancelled,
                    "DAG finished");
            }
        }
        self.changes.send_modify(|v| *v += 1);
        Ok(())
    }

    fn view(&self, id: DagId, with_tasks: bool) -> Result<DagView, ControllerError> {
        if let Some(run) = self.planner.run(&id) {
            let mut v = make_view(id, &run.meta, &run.spec, &run.tasks, with_tasks);
            v.coordinator = Some(self.me.clone());
            return Ok(v);
        }
        mesh::local_view(&self.store, id, with_tasks)
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

/// Waits until DAG `id` changes past version `after` (or finishes, or `wait` passes), then
/// answers with its view. Runs beside the actor on the controller, waking on its change
/// notifications rather than polling.
async fn wait_for_change(
    handle: Handle,
    id: DagId,
    tasks: bool,
    after: u64,
    wait: Duration,
) -> Result<DagView, ControllerError> {
    let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(60));
    let mut changes = handle.changes();
    loop {
        changes.borrow_and_update();
        let view = handle.get(id, tasks).await?;
        if view.version > after || view.state.is_terminal() {
            return Ok(view);
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return Ok(view),
        }
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
        coordinator: None,
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
                    module: task.module.clone(),
                    depends_on: task
                        .deps
                        .iter()
                        .filter_map(|d| spec.dag.tasks.get(*d as usize).map(|t| t.id.clone()))
                        .collect(),
                    ..TaskView::default()
                },
            );
        }
    }
    view
}
