//! The runtime around the cluster core: the one task that owns the [`Core`] and carries out
//! what it decides. It has no decisions of its own.
//!
//! ```text
//!   api ──Call──────▶ ┌─────────┐ ─Send (spawned, JoinSet)──▶ net::Client ─▶ peers
//!   net ──Event─────▶ │ Runtime │ ◀─answers (JoinSet)─────────┘
//!   executor::Pool ─▶ │  Core   │ ─Run/Stop──▶ executor::Pool
//!   tick (100 ms) ──▶ │ .step() │ ─Write/Flush─▶ store::Store (sled)
//!   capacity ───────▶ └─────────┘ ─Reply─▶ the API call's oneshot
//! ```
//!
//! Each loop turn takes one wake-up plus whatever else is queued (local completions first,
//! then remote input, then API calls), feeds it to `Core::step` as one batch, and carries
//! out the outputs in order: writes are applied as they come, a `Flush` is awaited before
//! anything after it, requests to peers and module fetches are spawned into `JoinSet`s whose
//! results come back as inputs. Module fetch requests from peers are served here directly
//! (they read a file by hash; no cluster state is involved).

mod fetch;
pub mod votes;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bx3_protocol::api::{DagSummary, DagView, StatusView, TaskQuery};
use bx3_protocol::ids::{DagId, NodeId};
use bx3_protocol::mesh::{self, Refusal, Request, Response};
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::records::NodeReads;
use crate::cluster::worker::JobKey;
use crate::cluster::{self, Answer, Call, Core, Input, Now, Output};
use crate::executor::{self, frame::Request as ExecRequest, sizing, Done, Pool};
use crate::net;
use crate::store::{ModuleStore, SpecRecord, Store, StoreError};

const MB: u64 = 1024 * 1024;
/// Most requests to peers in flight at once; past it a request fails at once (its answer
/// says so) and the core treats it like any failed request.
const MAX_IN_FLIGHT: usize = 4096;
/// Most module fetches in flight at once.
const MAX_FETCHES: usize = 64;

/// Why an API call got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the node is shutting down")]
    Stopped,
    #[error(transparent)]
    Refused(#[from] Refusal),
}

type CallReply = oneshot::Sender<Result<Answer, Refusal>>;

/// Cloneable handle used by the API.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<(Call, CallReply)>,
    changes: watch::Receiver<u64>,
}

impl Handle {
    async fn call(&self, call: Call) -> Result<Answer, CallError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((call, tx))
            .await
            .map_err(|_| CallError::Stopped)?;
        Ok(rx.await.map_err(|_| CallError::Stopped)??)
    }

    /// Returns once the DAG is durably stored by the controller (and, when there is one, on
    /// a second node). `id` is chosen by the caller: a retry with the same id is the same
    /// submission.
    pub async fn submit(
        &self,
        id: DagId,
        spec: SpecRecord,
        source: Option<String>,
    ) -> Result<DagId, CallError> {
        match self
            .call(Call::Submit {
                id,
                spec: Arc::new(spec),
                source,
            })
            .await?
        {
            Answer::Submitted(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// A DAG; with `after`, waits (up to `wait`) until its version passes `after` or it
    /// finishes. Served by the controller, wherever it is.
    pub async fn get_after(
        &self,
        id: DagId,
        tasks: bool,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<DagView, CallError> {
        self.get_page(id, tasks, None, after, wait).await
    }

    /// Like `get_after`, with only the page of tasks `page` selects (when set).
    pub async fn get_page(
        &self,
        id: DagId,
        tasks: bool,
        page: Option<TaskQuery>,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<DagView, CallError> {
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        match self
            .call(Call::Get {
                id,
                tasks,
                page,
                after,
                wait_ms,
            })
            .await?
        {
            Answer::Dag(v) => Ok(*v),
            other => Err(unexpected(other)),
        }
    }

    pub async fn get(&self, id: DagId, tasks: bool) -> Result<DagView, CallError> {
        self.get_after(id, tasks, None, Duration::ZERO).await
    }

    pub async fn list(&self, limit: usize) -> Result<Vec<DagSummary>, CallError> {
        match self.call(Call::List { limit }).await? {
            Answer::Dags(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    pub async fn cancel(&self, id: DagId) -> Result<DagView, CallError> {
        match self.call(Call::Cancel { id }).await? {
            Answer::Dag(v) => Ok(*v),
            other => Err(unexpected(other)),
        }
    }

    pub async fn status(&self) -> Result<StatusView, CallError> {
        match self.call(Call::Status).await? {
            Answer::Status(v) => Ok(*v),
            other => Err(unexpected(other)),
        }
    }

    /// A receiver that wakes whenever something users can see changed and is on disk.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

fn unexpected(a: Answer) -> CallError {
    CallError::Refused(Refusal::Internal(format!("unexpected answer {a:?}")))
}

/// Static facts about this node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub ram_per_executor_mb: u64,
    pub min_free_ram_mb: u64,
    pub max_executors: Option<usize>,
    pub private_mesh: bool,
}

pub struct Parts {
    pub keypair: libp2p::identity::Keypair,
    pub store: Store,
    pub modules: ModuleStore,
    pub pool: Pool,
    pub done: mpsc::Receiver<Done>,
    pub capacity: watch::Receiver<sizing::Capacity>,
    pub info: NodeInfo,
    pub net: net::Client,
    pub net_events: mpsc::Receiver<net::Event>,
    pub election: crate::election::Params,
    pub shutdown: CancellationToken,
    pub metrics: crate::metrics::Metrics,
}

/// A job running on this node's executors.
struct Running {
    cancel: CancellationToken,
    started: Instant,
}

pub struct Runtime {
    /// Every decision.
    core: Core,
    store: Store,
    modules: ModuleStore,
    pool: Pool,
    done: mpsc::Receiver<Done>,
    capacity: watch::Receiver<sizing::Capacity>,
    net: net::Client,
    net_events: mpsc::Receiver<net::Event>,
    calls: mpsc::Receiver<(Call, CallReply)>,
    /// API calls waiting for the core's answer, by call number.
    replies: HashMap<u64, CallReply>,
    next_call: u64,
    /// Peers' requests waiting for the core's answer, by request number.
    inbound: HashMap<u64, oneshot::Sender<Vec<u8>>>,
    next_rid: u64,
    /// Our requests to peers in flight: (token, answer).
    requests: JoinSet<(u64, Result<Response, String>)>,
    /// Module fetches in flight: (token, outcome).
    fetches: JoinSet<(u64, Result<(), String>)>,
    /// Inputs made here rather than by the world (a request over the in-flight cap, a job
    /// the pool would not take): fed in the next turn.
    local: Vec<Input>,
    running: HashMap<JobKey, Running>,
    ram_per_executor_mb: u64,
    /// Bumped after every flush that made something users can see durable.
    changes: watch::Sender<u64>,
    /// Where `/metrics` reads what the core knows (sampled once a second).
    metrics: crate::metrics::Metrics,
    ticks: u64,
    started: Instant,
    shutdown: CancellationToken,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn node_id(peer: &PeerId) -> Option<NodeId> {
    NodeId::from_str(&peer.to_string()).ok()
}

/// The executor pool's figures as the core counts them.
fn capacity(c: &sizing::Capacity) -> cluster::Capacity {
    cluster::Capacity {
        executors: c.executors,
        available_ram_mb: c.available_ram_mb,
        ram_slots: c.ram_slots as u64,
        cpu_cores: c.cpu_cores as u64,
        limited_by: Some(c.limited_by),
    }
}

/// Which requests are sent again when they fail on the way (the connection closed, a dial
/// raced): every one the receiver takes only once — submissions carry their DAG id, workers
/// take an attempt once, results and replication merge, reads and fetches change nothing —
/// except `Cancel`, whose second copy would answer "already finished".
fn retry_policy(req: &Request) -> net::Retry {
    match req {
        Request::Cancel { .. } => net::Retry::IfNotSent,
        _ => net::Retry::OnChurn,
    }
}

impl Runtime {
    pub fn new(parts: Parts) -> Result<(Runtime, Handle), StoreError> {
        let (tx, rx) = mpsc::channel(256);
        let (changes_tx, changes_rx) = watch::channel(0);
        let peer = parts.keypair.public().to_peer_id();
        let me = node_id(&peer).ok_or_else(|| StoreError::Corrupt {
            tree: "identity",
            key: peer.to_string(),
            reason: "peer id is not a node id".into(),
        })?;
        let persisted = parts.store.election()?;
        let pos = parts.store.repl_pos()?;
        let bytes = peer.to_bytes();
        let seed = u64::from_le_bytes(
            bytes[bytes.len().saturating_sub(8)..]
                .try_into()
                .unwrap_or([7; 8]),
        ) ^ wall_ms();
        let cap = capacity(&parts.capacity.borrow());
        let core = Core::new(
            cluster::Config {
                me,
                election: parts.election,
                ram_per_executor_mb: parts.info.ram_per_executor_mb,
                min_free_ram_mb: parts.info.min_free_ram_mb,
                max_executors: parts.info.max_executors,
                version: env!("CARGO_PKG_VERSION").to_string(),
                private_mesh: parts.info.private_mesh,
                seed,
            },
            persisted,
            pos,
            Arc::new(votes::KeyVotes::new(parts.keypair.clone())),
            cap,
        );
        let runtime = Runtime {
            core,
            store: parts.store,
            modules: parts.modules,
            pool: parts.pool,
            done: parts.done,
            capacity: parts.capacity,
            net: parts.net,
            net_events: parts.net_events,
            calls: rx,
            replies: HashMap::new(),
            next_call: 0,
            inbound: HashMap::new(),
            next_rid: 0,
            requests: JoinSet::new(),
            fetches: JoinSet::new(),
            local: Vec::new(),
            running: HashMap::new(),
            ram_per_executor_mb: parts.info.ram_per_executor_mb,
            changes: changes_tx,
            metrics: parts.metrics,
            ticks: 0,
            started: Instant::now(),
            shutdown: parts.shutdown,
        };
        Ok((
            runtime,
            Handle {
                tx,
                changes: changes_rx,
            },
        ))
    }

    fn now(&self) -> Now {
        Now {
            mono_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            wall_ms: wall_ms(),
        }
    }

    pub async fn run(mut self) -> Result<(), StoreError> {
        let mut tick = tokio::time::interval(Duration::from_millis(cluster::TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut inputs = std::mem::take(&mut self.local);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(done) = self.done.recv() => {
                    inputs.push(self.job_done(done));
                    for _ in 0..4096 {
                        match self.done.try_recv() {
                            Ok(d) => inputs.push(self.job_done(d)),
                            Err(_) => break,
                        }
                    }
                }
                Some(joined) = self.requests.join_next(), if !self.requests.is_empty() => {
                    if let Ok((token, answer)) = joined {
                        inputs.push(Input::Answer { token, answer });
                    }
                    while let Some(Ok((token, answer))) = self.requests.try_join_next() {
                        inputs.push(Input::Answer { token, answer });
                    }
                }
                Some(joined) = self.fetches.join_next(), if !self.fetches.is_empty() => {
                    if let Ok((token, result)) = joined {
                        inputs.push(Input::Fetched { token, result });
                    }
                }
                Ok(()) = self.capacity.changed() => {
                    let c = capacity(&self.capacity.borrow_and_update());
                    inputs.push(Input::Capacity(c));
                }
                Some(event) = self.net_events.recv() => {
                    self.net_event(event, &mut inputs);
                    for _ in 0..256 {
                        match self.net_events.try_recv() {
                            Ok(e) => self.net_event(e, &mut inputs),
                            Err(_) => break,
                        }
                    }
                }
                _ = tick.tick() => {
                    inputs.push(Input::Tick);
                    self.ticks += 1;
                    if self.ticks.is_multiple_of(10) {
                        self.publish_metrics();
                    }
                }
                Some((call, reply)) = self.calls.recv() => {
                    inputs.push(self.api_call(call, reply));
                    for _ in 0..64 {
                        match self.calls.try_recv() {
                            Ok((c, r)) => inputs.push(self.api_call(c, r)),
                            Err(_) => break,
                        }
                    }
                }
            }
            if inputs.is_empty() {
                continue;
            }
            let now = self.now();
            let outputs = self.core.step(
                now,
                inputs,
                &NodeReads {
                    store: &self.store,
                    modules: &self.modules,
                },
            )?;
            self.carry_out(outputs).await?;
        }
        for r in self.running.values() {
            r.cancel.cancel();
        }
        self.store.flush().await
    }

    /// What `/metrics` shows of the core, once a second (a scrape never waits on it).
    fn publish_metrics(&self) {
        let mut dags_active = crate::metrics::DagCounts::default();
        let mut ready = 0;
        if let Some(lead) = self.core.lead() {
            for (_, run) in lead.planner.runs() {
                dags_active.add(run.meta.state);
            }
            ready = lead.planner.ready_len();
        }
        let stats = self.core.planner_stats();
        let worker = self.core.worker();
        self.metrics.observe(crate::metrics::Sample {
            status: Some(self.core.status()),
            queue_depth: (ready + worker.backlog()) as u64,
            task_transitions: stats.tasks,
            dags_finished: stats.dags,
            dags_active,
        });
    }

    fn api_call(&mut self, call: Call, reply: CallReply) -> Input {
        self.next_call += 1;
        self.replies.insert(self.next_call, reply);
        Input::Call {
            call: self.next_call,
            what: call,
        }
    }

    fn job_done(&mut self, done: Done) -> Input {
        let key = (done.dag, done.task, done.attempt);
        let run_ms = self
            .running
            .remove(&key)
            .map(|r| u64::try_from(r.started.elapsed().as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Input::JobDone(cluster::JobDone {
            key,
            outcome: done.outcome,
            run_ms,
            stderr: done.stderr,
        })
    }

    /// A network event as the core's input. Bytes are decoded here, at the boundary: what
    /// does not decode never reaches the core (and a malformed request is answered with
    /// the reason).
    fn net_event(&mut self, event: net::Event, inputs: &mut Vec<Input>) {
        match event {
            net::Event::Connected(peer) => inputs.extend(node_id(&peer).map(Input::Connected)),
            net::Event::Disconnected(peer) => {
                inputs.extend(node_id(&peer).map(Input::Disconnected))
            }
            net::Event::Listening(addr) => inputs.push(Input::Listening(addr.to_string())),
            net::Event::Gossip { from, data } => {
                let (Some(from), Ok(msg)) = (node_id(&from), mesh::decode_gossip(&data)) else {
                    return;
                };
                inputs.push(Input::Gossip { from, msg });
            }
            net::Event::Request { from, data, reply } => {
                let Some(from_id) = node_id(&from) else {
                    return;
                };
                match mesh::decode_rpc::<Request>(&data) {
                    Ok(Request::FetchModule { hash }) => {
                        fetch::serve(self.modules.clone(), hash, reply);
                    }
                    Ok(req) => {
                        self.next_rid += 1;
                        self.inbound.insert(self.next_rid, reply);
                        inputs.push(Input::Request {
                            from: from_id,
                            rid: self.next_rid,
                            req,
                        });
                    }
                    Err(e) => {
                        tracing::debug!(peer = %from, error = ?e.to_string(), "bad request");
                        respond(
                            reply,
                            &Response::Refused(Refusal::Invalid(format!("bad request: {e}"))),
                        );
                    }
                }
            }
        }
    }

    /// Carries out the core's outputs, in order.
    async fn carry_out(&mut self, outputs: Vec<Output>) -> Result<(), StoreError> {
        for o in outputs {
            match o {
                Output::Write(w) => self.store.apply(&w)?,
                Output::Flush => self.store.flush().await?,
                Output::Changed => self.changes.send_modify(|v| *v += 1),
                Output::Broadcast(g) => match mesh::encode_gossip(&g) {
                    Ok(bytes) => {
                        if let Err(e) = self.net.publish(bytes).await {
                            tracing::debug!(error = ?e.to_string(), "publish failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = ?e.to_string(), "cannot encode gossip"),
                },
                Output::Send { to, token, req } => self.send(to, token, req),
                Output::Respond { rid, resp } => {
                    if let Some(reply) = self.inbound.remove(&rid) {
                        respond(reply, &resp);
                    }
                }
                Output::Run(job) => self.run_job(job).await,
                Output::Stop(key) => {
                    if let Some(r) = self.running.get(&key) {
                        r.cancel.cancel();
                    }
                }
                Output::Fetch {
                    token,
                    hashes,
                    from,
                } => {
                    if self.fetches.len() >= MAX_FETCHES {
                        self.local.push(Input::Fetched {
                            token,
                            result: Err("too many module fetches in flight".into()),
                        });
                        continue;
                    }
                    let peers: Vec<PeerId> = from
                        .iter()
                        .filter_map(|n| n.as_str().parse().ok())
                        .collect();
                    let (net, modules) = (self.net.clone(), self.modules.clone());
                    self.fetches.spawn(async move {
                        (
                            token,
                            fetch::from_any(&net, &peers, &modules, &hashes).await,
                        )
                    });
                }
                Output::Reply { call, reply } => {
                    if let Some(tx) = self.replies.remove(&call) {
                        let _ = tx.send(reply);
                    }
                }
                Output::LearnAddrs { node, addrs } => {
                    // Peer exchange: the addresses a peer gave for itself in its own signed
                    // announcement; the net layer checks and bounds them.
                    if let Ok(peer) = node.as_str().parse::<PeerId>() {
                        self.net.learn_addrs(
                            peer,
                            addrs.iter().filter_map(|a| a.parse().ok()).collect(),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, to: NodeId, token: u64, req: Request) {
        if self.requests.len() >= MAX_IN_FLIGHT {
            self.local.push(Input::Answer {
                token,
                answer: Err("too many requests in flight".into()),
            });
            return;
        }
        let Ok(peer) = to.as_str().parse::<PeerId>() else {
            self.local.push(Input::Answer {
                token,
                answer: Err(format!("{to} is not a peer id")),
            });
            return;
        };
        let net = self.net.clone();
        let retry = retry_policy(&req);
        self.requests.spawn(async move {
            let answer = match mesh::encode_rpc(&req) {
                Ok(bytes) => match net.request_with(peer, bytes, retry).await {
                    Ok(reply) => mesh::decode_rpc::<Response>(&reply).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            (token, answer)
        });
    }

    async fn run_job(&mut self, job: mesh::Job) {
        let cancel = self.shutdown.child_token();
        let key = (job.dag, job.task, job.attempt);
        let exec = executor::Job {
            dag: job.dag,
            task: job.task,
            attempt: job.attempt,
            module: job.module,
            request: ExecRequest {
                module_hash: job.module_hash.to_string(),
                argv: job.argv,
                env: job.env,
                stdin: job.stdin.into_bytes(),
                memory_bytes: job
                    .memory_mb
                    .unwrap_or(self.ram_per_executor_mb)
                    .min(self.ram_per_executor_mb.max(1))
                    .saturating_mul(MB),
                max_stdout: executor::MAX_OUTPUT,
                max_stderr_tail: executor::STDERR_TAIL,
            },
            timeout: Duration::from_millis(job.timeout_ms),
            cancel: cancel.clone(),
        };
        self.running.insert(
            key,
            Running {
                cancel,
                started: Instant::now(),
            },
        );
        if self.pool.submit(exec).await.is_err() {
            self.running.remove(&key);
            self.local.push(Input::JobDone(cluster::JobDone {
                key,
                outcome: Err("the executor pool has stopped".into()),
                run_ms: 0,
                stderr: None,
            }));
        }
    }
}

fn respond(reply: oneshot::Sender<Vec<u8>>, resp: &Response) {
    match mesh::encode_rpc(resp) {
        Ok(bytes) => {
            let _ = reply.send(bytes);
        }
        Err(e) => tracing::warn!(error = ?e.to_string(), "cannot encode a response"),
    }
}
