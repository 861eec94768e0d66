//! The cluster core: everything a node decides, without I/O.
//!
//! One [`Core`] owns this node's membership table, its election, and — while it is the
//! controller — the planner, the placements of running work and the replication log; on every
//! node it owns the worker queue, the results outbox, API calls waiting for (or forwarded to)
//! the controller, and long polls. It is driven as
//!
//! ```text
//!   step(now, inputs, reads) -> outputs
//!     inputs:  Tick, Gossip, Request, Answer, JobDone, Capacity, Fetched, Call, (dis)connections
//!     outputs: Write, Flush, Changed, Broadcast, Send, Respond, Run, Stop, Fetch, Reply, LearnAddrs
//! ```
//!
//! in the style of the election (`election::Election::step`) and of openraft's engine. Reads of
//! stored records go through [`records::Reads`]; writes are outputs, applied by the caller in
//! order, and a `Flush` makes everything before it durable before anything after it happens
//! (persist, then send). The node's runtime (`crate::runtime`) carries the outputs out; the
//! simulator (`sim`, tests only) drives this same code on an in-memory network of connections.
//!
//! # Layout
//!
//! - `mod.rs`: the [`Core`], its inputs, and the glue: election, membership, persistence.
//! - `lead`: what the controller does: accept, schedule, take results, replicate, serve reads.
//! - `worker`: jobs this node runs and the results it owes the controller.
//! - `calls`: API calls waiting for a controller, forwarded to it, long polls.
//! - `planner`: the DAG scheduler (pure); `dispatch`: placements and node choice.
//! - `replication`: batches, snapshots, merges, digests (pure).
//! - `members`: who is in the mesh; `records`: the read trait and the write type;
//!   `out`: outputs; `view`: what users see.

pub mod calls;
pub mod dispatch;
mod lead;
pub mod members;
pub mod out;
pub mod planner;
pub mod records;
pub mod replication;
mod serve;
#[cfg(test)]
mod sim;
pub mod view;
pub mod worker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bx3_protocol::api::{
    ControllerChange, ExecutorLimit, ExecutorsView, NodeRole, PeerView, StatusView,
};
use bx3_protocol::ids::{DagId, ModuleHash, NodeId};
use bx3_protocol::mesh::{Announce, Gossip, JobResult, Refusal, Request, Response};

use crate::election::{self, Election, LogPos, Persistent, RoleChange, Votes};
use crate::store::{SpecRecord, StoreError};
pub use calls::Call;
use calls::Calls;
pub use lead::Lead;
use members::Members;
pub use out::{Answer, Asker, Output};
use out::{Out, Pending, PendingMap};
use records::{Reads, Write};
use replication::PendingAcks;
use worker::{JobKey, Taken, Worker};

/// The core's clock: one tick every 100 ms (the election counts its timeouts in these).
pub const TICK_MS: u64 = 100;
/// A node announces itself every 10 ticks (1 s).
const ANNOUNCE_EVERY_TICKS: u64 = 10;
/// A follower sends the controller a digest of its DAGs every 50 ticks (5 s).
const SYNC_EVERY_TICKS: u64 = 50;
/// How long a submission waits for a replica before its caller is told it is not (yet)
/// durable on two nodes. Generous: a follower that must first fetch the DAG's modules on a
/// loaded machine can take seconds.
pub const ACK_REPLICA_WAIT_MS: u64 = 30_000;
/// How long status remembers controller changes and peers that went down.
const HISTORY_MS: u64 = 3_600_000;
/// Most controller changes and gone peers remembered.
const MAX_HISTORY: usize = 256;
/// A node that had peers this recently is not alone: a submission waits for one of them to
/// come back and hold a copy, rather than being acknowledged on one disk because a
/// connection just dropped. As long as a silent peer stays a member (`members`), so a node
/// cut off by a partition is alone, and acknowledges on its own, as soon as its peers would
/// have expired anyway.
const ALONE_AFTER_MS: u64 = members::DOWN_AFTER_MS;

/// The core's two clocks: monotonic (timeouts) and wall (what users see), both in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Now {
    pub mono_ms: u64,
    pub wall_ms: u64,
}

/// What this node is, fixed at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub me: NodeId,
    pub election: election::Params,
    /// Size of one executor: a task's default memory cap, and the most it may ask.
    pub ram_per_executor_mb: u64,
    pub min_free_ram_mb: u64,
    pub max_executors: Option<usize>,
    pub version: String,
    pub private_mesh: bool,
    /// Seeds the election's timeouts and the announce phase.
    pub seed: u64,
}

/// How many executors this node runs and why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    pub executors: usize,
    pub available_ram_mb: u64,
    pub ram_slots: u64,
    pub cpu_cores: u64,
    pub limited_by: Option<ExecutorLimit>,
}

/// How an attempt on this node's executor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDone {
    pub key: JobKey,
    pub outcome: Result<String, String>,
    pub run_ms: u64,
    pub stderr: Option<String>,
}

/// Everything that can happen to a node.
#[derive(Debug, Clone)]
pub enum Input {
    /// One clock tick (`TICK_MS`).
    Tick,
    Connected(NodeId),
    /// The last connection to this peer closed.
    Disconnected(NodeId),
    /// This node listens on this address (it goes into announcements).
    Listening(String),
    /// Gossip, decoded; `from` is its signed author.
    Gossip {
        from: NodeId,
        msg: Gossip,
    },
    /// A peer's request, decoded; answer with `Output::Respond { rid }`.
    Request {
        from: NodeId,
        rid: u64,
        req: Request,
    },
    /// The answer to our request `token`, or why there is none (the transport's error).
    Answer {
        token: u64,
        answer: Result<Response, String>,
    },
    JobDone(JobDone),
    Capacity(Capacity),
    /// Module fetch `token` ended.
    Fetched {
        token: u64,
        result: Result<(), String>,
    },
    /// An API call; answer with `Output::Reply { call }`.
    Call {
        call: u64,
        what: Call,
    },
}

/// What a module fetch is for.
#[derive(Debug)]
enum Fetching {
    /// A peer's submission, accepted once its modules are here.
    Submit {
        rid: u64,
        id: DagId,
        spec: Arc<SpecRecord>,
        source: Option<String>,
    },
    /// A replicated DAG's modules: the follower confirms the batch once they are here.
    Replica { rid: u64, seq: u64 },
    /// Jobs waiting for their module.
    Jobs { hash: ModuleHash },
}

/// Counters the runtime exports as metrics.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub controller_changes: u64,
    /// Jobs started on this node's executors, and how they ended.
    pub jobs_started: u64,
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    /// Sum of run times of finished jobs, ms.
    pub jobs_run_ms: u64,
    /// Peer messages refused at the boundary (not entitled, wrong term, bad content).
    pub refused: u64,
}

/// The cluster core of one node. See the module docs.
pub struct Core {
    cfg: Config,
    election: Election<NodeId>,
    members: Members,
    /// How far this node's copy of the controller's state goes (persisted with each change).
    pos: LogPos<NodeId>,
    /// The controller's working state, while this node is the controller.
    lead: Option<Lead>,
    worker: Worker,
    calls: Calls,
    /// Submissions written this step, answered after the flush that makes them durable.
    acks: Vec<(Asker, DagId)>,
    /// Submissions durable here, waiting for a second node's copy.
    pending_acks: PendingAcks<Asker>,
    /// Our requests on their way, by token: what their answer means.
    pending: PendingMap,
    /// Module fetches on their way, by token.
    fetching: HashMap<u64, Fetching>,
    capacity: Capacity,
    listen_addrs: Vec<String>,
    ticks: u64,
    /// Spreads announcements of nodes started together over the second.
    announce_phase: u64,
    now: Now,
    out: Out,
    /// DAGs changed since the last flush: long polls on them are answered after it.
    changed: HashSet<DagId>,
    /// The controller this node last knew, and the changes it saw (last hour).
    controller: Option<NodeId>,
    changes: VecDeque<ControllerChange>,
    /// Peers that went down (last hour): wall time, and what they last announced.
    gone: HashMap<NodeId, (u64, Announce)>,
    /// When this node last had a member (core clock), if ever.
    had_peer_ms: Option<u64>,
    /// Peers this node holds a direct connection to (others are heard of through gossip).
    connected: HashSet<NodeId>,
    /// The planner's totals from this node's earlier terms as controller (metrics only
    /// ever grow).
    planner_stats: planner::Stats,
    /// A follower answered a Replicate: send what it still lacks at the end of this step
    /// (once for all the answers a step brings, not once per answer).
    replicate_due: bool,
    /// The tick's group commit: flush at the end of this step, after its own writes.
    flush_due: bool,
    stats: Stats,
}

impl Core {
    /// A node starting (or restarting from its stored election state and replica position).
    pub fn new(
        cfg: Config,
        persisted: Option<Persistent<NodeId>>,
        pos: LogPos<NodeId>,
        signer: Arc<dyn Votes<NodeId>>,
        capacity: Capacity,
    ) -> Core {
        let mut election = Election::new(cfg.me.clone(), cfg.election, persisted, cfg.seed, signer);
        // The election prefers the most up-to-date node: it needs our position from the start.
        let mut ignored = Vec::new();
        election.step(election::Input::LogPos(pos.clone()), &mut ignored);
        Core {
            announce_phase: cfg.seed % ANNOUNCE_EVERY_TICKS,
            election,
            members: Members::new(),
            pos,
            lead: None,
            worker: Worker::new(capacity.executors),
            calls: Calls::default(),
            acks: Vec::new(),
            pending_acks: PendingAcks::default(),
            pending: PendingMap::new(),
            fetching: HashMap::new(),
            capacity,
            listen_addrs: Vec::new(),
            ticks: 0,
            now: Now::default(),
            out: Out::default(),
            changed: HashSet::new(),
            controller: None,
            changes: VecDeque::new(),
            gone: HashMap::new(),
            had_peer_ms: None,
            connected: HashSet::new(),
            planner_stats: planner::Stats::default(),
            replicate_due: false,
            flush_due: false,
            stats: Stats::default(),
            cfg,
        }
    }

    pub fn me(&self) -> &NodeId {
        &self.cfg.me
    }

    pub fn is_leader(&self) -> bool {
        self.election.is_leader()
    }

    pub fn leader(&self) -> Option<&NodeId> {
        self.election.leader()
    }

    pub fn term(&self) -> Option<&election::Term<NodeId>> {
        self.election.term()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Whether this node is alone: no announced member now, and none for a while. Only then
    /// does a controller acknowledge a submission that no other node holds.
    pub fn alone(&self) -> bool {
        !self.members.iter().any(|(_, m)| m.announced)
            && self
                .had_peer_ms
                .is_none_or(|t| self.now.mono_ms.saturating_sub(t) >= ALONE_AFTER_MS)
    }

    /// The planner's totals (tasks by state entered, DAGs finished by state), over every term
    /// this node led.
    pub fn planner_stats(&self) -> planner::Stats {
        self.lead
            .as_ref()
            .map_or(self.planner_stats, |l| l.planner.stats())
    }

    /// The controller's working state (planner, placements), if this node is the controller.
    pub fn lead(&self) -> Option<&Lead> {
        self.lead.as_ref()
    }

    pub fn members(&self) -> &Members {
        &self.members
    }

    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Feeds inputs; returns what to do, in order. An error means the store failed: the
    /// node stops rather than run on with state that will not survive.
    pub fn step(
        &mut self,
        now: Now,
        inputs: impl IntoIterator<Item = Input>,
        reads: &dyn Reads,
    ) -> Result<Vec<Output>, StoreError> {
        self.now = now;
        for input in inputs {
            self.input(input, reads)?;
        }
        self.end_of_step(reads)?;
        Ok(self.out.take())
    }

    fn input(&mut self, input: Input, reads: &dyn Reads) -> Result<(), StoreError> {
        match input {
            Input::Tick => self.tick(reads)?,
            Input::Connected(peer) => {
                // A follower that was out of reach is worth a try again at once.
                if let Some(lead) = &mut self.lead {
                    lead.repl.reachable(&peer);
                }
                if self.connected.len() < members::MAX_MEMBERS {
                    self.connected.insert(peer);
                }
            }
            Input::Disconnected(peer) => {
                self.connected.remove(&peer);
                if self.members.get(&peer).is_some() {
                    tracing::info!(peer = %peer, "peer disconnected");
                    self.node_down(&peer);
                }
            }
            Input::Listening(addr) => {
                if !self.listen_addrs.contains(&addr) && self.listen_addrs.len() < 16 {
                    self.listen_addrs.push(addr);
                }
            }
            Input::Gossip { from, msg } => {
                if from == self.cfg.me {
                    return Ok(());
                }
                self.heard(&from, reads)?;
                match msg {
                    Gossip::Announce(a) => {
                        self.elect(
                            election::Input::Supports {
                                from: from.clone(),
                                leader: a.leader.clone(),
                            },
                            reads,
                        )?;
                        if !a.addrs.is_empty() {
                            self.out.push(Output::LearnAddrs {
                                node: from.clone(),
                                addrs: a.addrs.clone(),
                            });
                        }
                        if self.members.announce(&from, a, self.now.mono_ms) {
                            tracing::debug!(peer = %from, "peer joined or changed its executors");
                        }
                        self.gone.remove(&from);
                    }
                    Gossip::Election(m) => {
                        self.elect(election::Input::Receive { from, msg: m }, reads)?
                    }
                }
            }
            Input::Request { from, rid, req } => {
                self.heard(&from, reads)?;
                self.request(from, rid, req, reads)?;
            }
            Input::Answer { token, answer } => self.answer(token, answer, reads)?,
            Input::JobDone(done) => self.job_done(done),
            Input::Capacity(c) => {
                self.worker.set_executors(c.executors);
                let changed = c.executors != self.capacity.executors;
                self.capacity = c;
                if changed {
                    // More executors: dispatch below, and tell the controller at once.
                    self.announce();
                }
            }
            Input::Fetched { token, result } => self.fetched(token, result, reads)?,
            Input::Call { call, what } => {
                let give_up = self.now.mono_ms + what.retry_window_ms();
                self.call(Asker::Api(call), what, 0, give_up, reads)?;
            }
        }
        Ok(())
    }

    /// What every step ends with: calls due, work handed out and started, results sent,
    /// changes persisted and replicated.
    fn end_of_step(&mut self, reads: &dyn Reads) -> Result<(), StoreError> {
        for (asker, call, tries, give_up) in self.calls.due(self.now.mono_ms) {
            self.call(asker, call, tries, give_up, reads)?;
        }
        if self.lead.is_some() {
            self.dispatch(reads);
        }
        for job in self.worker.start() {
            self.stats.jobs_started += 1;
            self.out.push(Output::Run(job));
        }
        self.send_results();
        self.persist(reads)?;
        if std::mem::take(&mut self.flush_due) {
            self.flush(reads)?;
        }
        if std::mem::take(&mut self.replicate_due) {
            self.replicate(reads)?;
        }
        Ok(())
    }

    // ---- clock -------------------------------------------------------------------------

    fn tick(&mut self, reads: &dyn Reads) -> Result<(), StoreError> {
        self.ticks = self.ticks.wrapping_add(1);
        // Group commit: what was written since the last flush is durable within one tick
        // (flushed at the end of this step, so that this step's own writes go with it).
        self.flush_due = true;
        self.elect(election::Input::Tick, reads)?;
        if self.is_leader() && self.alone() && !self.pending_acks.is_empty() {
            // Everyone else is gone: no copy is coming. The submissions stay as they are (on
            // this disk, running); waiting longer would only end in "not replicated". (One
            // forwarded by a peer waits on: that peer is there to hold a copy.)
            let local = |a: &Asker| matches!(a, Asker::Api(_));
            for (asker, id) in self.pending_acks.release_where(local) {
                tracing::warn!(dag = %id, "acknowledged on this node alone: no other node is reachable");
                self.out.answer(asker, Ok(Answer::Submitted(id)));
            }
        }
        for (asker, id) in self.pending_acks.expired(self.now.mono_ms) {
            tracing::warn!(dag = %id, "no other node confirmed a replica in time");
            self.out.answer(asker, Err(Refusal::NotReplicated(id)));
        }
        self.replicate(reads)?;
        // Anti-entropy: every few seconds a follower offers the controller a digest of its
        // recent DAGs, so anything a lost message or a missed role change left behind is
        // still pulled in.
        if self.ticks.is_multiple_of(SYNC_EVERY_TICKS) && !self.is_leader() {
            if let Some(leader) = self.election.leader().cloned() {
                self.send_sync(&leader, reads)?;
            }
        }
        if self.members.iter().any(|(_, m)| m.announced) {
            self.had_peer_ms = Some(self.now.mono_ms);
        }
        for down in self.members.expire(self.now.mono_ms) {
            tracing::info!(peer = %down, "peer is down (silent too long)");
            self.node_down(&down);
        }
        // Long polls whose time is up are answered as the DAG stands.
        for poll in self.calls.polls_due(&|_| false, self.now.mono_ms) {
            self.answer_poll(poll, reads)?;
        }
        if (self.ticks + self.announce_phase).is_multiple_of(ANNOUNCE_EVERY_TICKS) {
            self.announce();
        }
        if let Some(lead) = &mut self.lead {
            let now = self.now.mono_ms;
            lead.backoff.retain(|_, until| *until > now);
        }
        let horizon = self.now.wall_ms.saturating_sub(HISTORY_MS);
        while self.changes.front().is_some_and(|c| c.at_ms < horizon) {
            self.changes.pop_front();
        }
        self.gone.retain(|_, (at, _)| *at >= horizon);
        Ok(())
    }

    /// Makes unflushed writes durable, then answers the long polls they concern.
    fn flush(&mut self, reads: &dyn Reads) -> Result<(), StoreError> {
        if self.out.flush() {
            self.after_flush(reads)?;
        }
        Ok(())
    }

    ///
    /// A poll on a DAG changed again in this step (not written yet) waits for the flush
    /// that makes that change durable: what a poll shows is on disk.
    fn after_flush(&mut self, reads: &dyn Reads) -> Result<(), StoreError> {
        let changed = std::mem::take(&mut self.changed);
        let planner = self.lead.as_ref().map(|l| &l.planner);
        let dirty = |id: &DagId| planner.is_some_and(|p| p.is_dirty(id));
        let due = self.calls.polls_due(
            &|p| (p.unseen || changed.contains(&p.id)) && !dirty(&p.id),
            self.now.mono_ms,
        );
        for poll in due {
            if poll.unseen && !changed.contains(&poll.id) && poll.deadline_ms > self.now.mono_ms {
                // Parked before anything was known: answered now only if the DAG moved.
                self.look_at_poll(poll, reads)?;
            } else {
                self.answer_poll(poll, reads)?;
            }
        }
        Ok(())
    }

    // ---- election ----------------------------------------------------------------------

    /// Feeds the election and carries out what it says: persist (and flush) first, then
    /// send, then act on a role change.
    fn elect(
        &mut self,
        input: election::Input<NodeId>,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        let mut eo = Vec::new();
        self.election.step(input, &mut eo);
        for o in eo {
            match o {
                election::Output::Persist(p) => {
                    self.out.write(Write::Election(p));
                    self.flush(reads)?;
                }
                election::Output::Broadcast(m) => {
                    self.out.push(Output::Broadcast(Gossip::Election(m)))
                }
                election::Output::Send { to, msg } => {
                    let token = self.out.send(to, Request::Election(msg));
                    self.pending.insert(token, Pending::Ignore);
                }
                election::Output::Role(change) => self.role_changed(change, reads)?,
            }
        }
        Ok(())
    }

    fn role_changed(
        &mut self,
        change: RoleChange<NodeId>,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        match change {
            RoleChange::Leader { term } => {
                if let Some(lead) = &mut self.lead {
                    // Re-won ourselves a newer term: same controller, same work; what we
                    // hand out from now on carries the new term.
                    lead.term = term;
                    return Ok(());
                }
                let mut lead = Lead::new(term.clone(), self.planner_stats);
                let resumed = lead.recover(&self.out.view(reads), self.now.wall_ms)?;
                tracing::info!(epoch = term.epoch, leader = %self.cfg.me, dags = lead.planner.active_count(),
                    tasks_to_run = resumed, peers = self.members.len(), replica_seq = self.pos.seq,
                    "this node is now the controller");
                self.lead = Some(lead);
                self.controller_is(Some(self.cfg.me.clone()), term.epoch);
            }
            RoleChange::Follower { term, leader } => {
                tracing::info!(epoch = term.epoch, %leader, "following controller");
                self.stand_down(reads)?;
                self.controller_is(Some(leader.clone()), term.epoch);
                // Hand the new controller what it may lack.
                self.send_sync(&leader, reads)?;
            }
            RoleChange::Candidate { term } => {
                tracing::debug!(epoch = term.epoch, "standing for controller");
                // Not the controller while standing: a stale planner must not go on writing
                // over what a new controller replicates to us. Winning reloads it.
                self.stand_down(reads)?;
            }
        }
        Ok(())
    }

    /// This node is not the controller (any more): the controller's working state goes, the
    /// store keeps everything. Long polls parked here are answered as their DAG stands.
    /// Submissions accepted here but not yet confirmed by a follower stay pending: they are
    /// answered once another controller has pulled them (sync), or, if this node wins again,
    /// once a follower confirms a batch at or past theirs.
    fn stand_down(&mut self, reads: &dyn Reads) -> Result<(), StoreError> {
        if let Some(lead) = self.lead.take() {
            self.planner_stats = lead.planner.stats();
            for poll in self.calls.take_polls() {
                self.answer_poll(poll, reads)?;
            }
        }
        Ok(())
    }

    fn controller_is(&mut self, controller: Option<NodeId>, epoch: u64) {
        if self.controller == controller {
            return;
        }
        self.controller = controller.clone();
        self.stats.controller_changes += 1;
        self.changes.push_back(ControllerChange {
            at_ms: self.now.wall_ms,
            term: epoch,
            controller: controller.map(|c| c.to_string()),
        });
        while self.changes.len() > MAX_HISTORY {
            self.changes.pop_front();
        }
    }

    // ---- membership --------------------------------------------------------------------

    fn heard(&mut self, from: &NodeId, reads: &dyn Reads) -> Result<(), StoreError> {
        if self.members.heard(from, self.now.mono_ms) {
            tracing::info!(peer = %from, "peer joined");
        }
        self.elect(election::Input::Heard(from.clone()), reads)
    }

    /// A peer left: its executors leave the pool and its running tasks go back to the queue
    /// (not counted as failed attempts: the task did nothing wrong).
    fn node_down(&mut self, node: &NodeId) {
        if let Some(m) = self.members.remove(node) {
            if m.announced {
                self.had_peer_ms = Some(self.now.mono_ms);
            }
            if self.gone.len() < MAX_HISTORY || self.gone.contains_key(node) {
                self.gone
                    .insert(node.clone(), (self.now.wall_ms, m.announce));
            }
        }
        if let Some(lead) = &mut self.lead {
            lead.task_ms.remove(node);
            let lost = lead
                .placements
                .node_down(&mut lead.planner, node, self.now.wall_ms);
            if lost > 0 {
                tracing::info!(peer = %node, tasks = lost, "re-queued the tasks of a lost node");
            }
        }
    }

    fn announce(&mut self) {
        let c = self.capacity;
        let a = Announce {
            version: self.cfg.version.clone(),
            executors_total: u32::try_from(c.executors).unwrap_or(u32::MAX),
            executors_busy: u32::try_from(self.worker.busy()).unwrap_or(u32::MAX),
            ram_per_executor_mb: self.cfg.ram_per_executor_mb,
            available_ram_mb: c.available_ram_mb,
            min_free_ram_mb: self.cfg.min_free_ram_mb,
            leader: self.election.leader().cloned(),
            addrs: self.listen_addrs.clone(),
            replica_seq: self.pos.seq,
            ram_slots: c.ram_slots,
            cpu_cores: c.cpu_cores,
            limited_by: c
                .limited_by
                .map(|l| l.as_str().to_string())
                .unwrap_or_default(),
        };
        self.out.push(Output::Broadcast(Gossip::Announce(a)));
    }

    // ---- requests from peers -----------------------------------------------------------

    /// Whether `from` is the controller this node follows, in `term`: the only node whose
    /// orders it obeys.
    fn entitled(&self, from: &NodeId, term: &election::Term<NodeId>) -> Result<(), Refusal> {
        if term.candidate != *from {
            return Err(Refusal::NotEntitled(format!(
                "an order for term {} comes from {from}, not from that term's controller",
                term.epoch
            )));
        }
        if self.election.term() != Some(term) || self.election.leader() != Some(from) {
            return Err(Refusal::WrongTerm {
                got: term.epoch,
                ours: self.election.term().map(|t| t.epoch),
            });
        }
        Ok(())
    }

    fn not_leader(&self) -> Response {
        Response::Refused(Refusal::NotLeader {
            leader: self.election.leader().cloned(),
        })
    }

    fn request(
        &mut self,
        from: NodeId,
        rid: u64,
        req: Request,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        let leader = self.is_leader();
        match req {
            Request::Election(msg) => {
                self.elect(election::Input::Receive { from, msg }, reads)?;
                self.out.respond(rid, Response::Ok);
            }
            Request::Assign { term, jobs } => {
                let resp = match self.entitled(&from, &term) {
                    Err(e) => {
                        self.stats.refused += 1;
                        Response::Refused(e)
                    }
                    Ok(()) if jobs.len() > self.worker.room() => Response::Refused(
                        Refusal::Unavailable("this worker's queue is full".into()),
                    ),
                    Ok(()) => {
                        for job in jobs {
                            self.take_job(job, &from, reads);
                        }
                        Response::Ok
                    }
                };
                self.out.respond(rid, resp);
            }
            Request::Abort { term, dag } => {
                let resp = match self.entitled(&from, &term) {
                    Err(e) => Response::Refused(e),
                    Ok(()) => {
                        for k in self.worker.abort(dag) {
                            self.out.push(Output::Stop(k));
                        }
                        Response::Ok
                    }
                };
                self.out.respond(rid, resp);
            }
            Request::Replicate {
                term,
                prev,
                snapshot,
                batches,
            } => self.apply_replicate(from, rid, term, prev, snapshot, batches, reads)?,
            // Served by the runtime (module bytes are files, not cluster state).
            Request::FetchModule { .. } => self.out.respond(
                rid,
                Response::Refused(Refusal::Internal(
                    "module fetches are served elsewhere".into(),
                )),
            ),
            Request::Results { results } if leader => {
                for r in results {
                    self.lead_result(&from, r);
                }
                self.out.respond(rid, Response::Ok);
            }
            Request::Submit { id, spec, source } if leader => {
                let spec: Arc<SpecRecord> = Arc::new(spec.into());
                let missing: Vec<ModuleHash> = spec
                    .modules
                    .values()
                    .filter(|h| !reads.has_module(h))
                    .cloned()
                    .collect();
                if missing.is_empty() {
                    self.accept(Asker::Peer(rid), id, spec, source, reads)?;
                } else {
                    // Fetched from the node that had them, before anything is accepted.
                    let token = self.out.token();
                    self.out.push(Output::Fetch {
                        token,
                        hashes: missing,
                        from: vec![from],
                    });
                    self.fetching.insert(
                        token,
                        Fetching::Submit {
                            rid,
                            id,
                            spec,
                            source,
                        },
                    );
                }
            }
            Request::GetDag {
                id,
                tasks,
                after,
                wait_ms,
                page,
            } if leader => {
                // A page query from a peer is bounded like one from a user.
                let page = match page.map(|q| q.checked()).transpose() {
                    Ok(page) => page,
                    Err(e) => {
                        self.stats.refused += 1;
                        self.out
                            .respond(rid, Response::Refused(Refusal::Invalid(e)));
                        return Ok(());
                    }
                };
                let call = Call::Get {
                    id,
                    tasks,
                    page,
                    after,
                    wait_ms: wait_ms.min(calls::FORWARDED_POLL_WAIT_MS),
                };
                self.serve(Asker::Peer(rid), call, reads)?;
            }
            Request::ListDags { limit } if leader => {
                self.serve(
                    Asker::Peer(rid),
                    Call::List {
                        limit: limit as usize,
                    },
                    reads,
                )?;
            }
            Request::Cancel { id } if leader => {
                self.serve(Asker::Peer(rid), Call::Cancel { id }, reads)?
            }
            Request::Sync { digest } if leader => {
                let resp = match &self.lead {
                    Some(lead) => Response::SyncWant {
                        ids: replication::sync_want(&self.out.view(reads), &lead.planner, &digest)?,
                    },
                    None => self.not_leader(),
                };
                self.out.respond(rid, resp);
            }
            Request::Push { dags } if leader => {
                self.merge_pushed(&from, &dags, reads)?;
                self.flush(reads)?;
                self.out.respond(rid, Response::Ok);
            }
            Request::Results { .. }
            | Request::Submit { .. }
            | Request::GetDag { .. }
            | Request::ListDags { .. }
            | Request::Cancel { .. }
            | Request::Sync { .. }
            | Request::Push { .. } => {
                let resp = self.not_leader();
                self.out.respond(rid, resp);
            }
        }
        Ok(())
    }

    /// A job assigned to this node (by a controller elsewhere, or by our own planner): run
    /// it once its module is here and an executor is free.
    fn take_job(&mut self, job: bx3_protocol::mesh::Job, from: &NodeId, reads: &dyn Reads) {
        let hash = job.module_hash.clone();
        let has = reads.has_module(&hash);
        if let Taken::NeedsModule { fetch: true } = self.worker.take(job, has) {
            // The assigning controller first, then every other peer: a controller killed
            // right after assigning must not turn its jobs into failed attempts.
            let token = self.out.token();
            let from = self.module_sources(from);
            self.out.push(Output::Fetch {
                token,
                hashes: vec![hash.clone()],
                from,
            });
            self.fetching.insert(token, Fetching::Jobs { hash });
        }
    }

    /// Where to fetch a module from: `first`, then every other member.
    fn module_sources(&self, first: &NodeId) -> Vec<NodeId> {
        let mut out = Vec::new();
        if *first != self.cfg.me {
            out.push(first.clone());
        }
        let mut others: Vec<NodeId> = self
            .members
            .iter()
            .map(|(id, _)| id.clone())
            .filter(|id| id != first && *id != self.cfg.me)
            .collect();
        others.sort();
        out.extend(others);
        out
    }

    /// Follower: applies the controller's batches (or snapshot), says how far it got.
    ///
    /// The answer is what lets the controller acknowledge a submission, so a range that
    /// brings a DAG new to this node (its spec), or a snapshot, is flushed before answering,
    /// and a new DAG's modules are fetched first. Other ranges are flushed on the next tick:
    /// a follower killed before then holds a shorter prefix of the controller's batches,
    /// which the controller's catch-up (or a snapshot) repairs like any lagging follower.
    #[allow(clippy::too_many_arguments)]
    fn apply_replicate(
        &mut self,
        from: NodeId,
        rid: u64,
        term: election::Term<NodeId>,
        prev: u64,
        snapshot: bool,
        batches: Vec<Arc<bx3_protocol::mesh::Batch>>,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        if let Err(e) = self.entitled(&from, &term) {
            self.stats.refused += 1;
            self.out.respond(rid, Response::Refused(e));
            return Ok(());
        }
        if !snapshot {
            let ours = self.pos.term.as_ref().map(|t| &t.candidate);
            if ours != Some(&term.candidate) {
                // Our sequence numbers come from another controller's numbering: nothing
                // lines up, ask for the full state (Behind past the end means "snapshot").
                self.out.respond(rid, Response::Behind { seq: u64::MAX });
                return Ok(());
            }
            if prev != self.pos.seq {
                self.out
                    .respond(rid, Response::Behind { seq: self.pos.seq });
                return Ok(());
            }
        }
        let Some(last) = batches.last().map(|b| b.seq) else {
            self.out
                .respond(rid, Response::Replicated { seq: self.pos.seq });
            return Ok(());
        };
        // Sequence numbers from a peer: each batch after the one before, and after `prev`.
        let ordered = batches
            .iter()
            .try_fold(prev, |p, b| (b.seq > p || snapshot).then_some(b.seq))
            .is_some();
        if !ordered {
            self.stats.refused += 1;
            self.out.respond(
                rid,
                Response::Refused(Refusal::Invalid("batches out of order".into())),
            );
            return Ok(());
        }
        let must_flush = replication::must_flush_before_answer(snapshot, &batches);
        let merged = replication::merge_deltas(
            &self.out.view(reads),
            batches.iter().flat_map(|b| b.dags.iter()),
        )?;
        if merged.refused > 0 {
            tracing::warn!(peer = %from, refused = merged.refused, "replicated records refused (bad index or no spec)");
        }
        for w in merged.writes {
            self.out.write(w);
        }
        self.changed.extend(merged.dags);
        self.pos = LogPos {
            term: Some(term),
            seq: last,
        };
        self.out.write(Write::ReplPos(self.pos.clone()));
        if must_flush {
            self.flush(reads)?;
        }
        self.elect(election::Input::LogPos(self.pos.clone()), reads)?;
        if merged.missing_modules.is_empty() {
            self.out.respond(rid, Response::Replicated { seq: last });
        } else {
            // Answered once the modules are here too, so an acknowledged DAG can run on this
            // node if the controller dies.
            let token = self.out.token();
            let sources = self.module_sources(&from);
            self.out.push(Output::Fetch {
                token,
                hashes: merged.missing_modules,
                from: sources,
            });
            self.fetching
                .insert(token, Fetching::Replica { rid, seq: last });
        }
        Ok(())
    }

    // ---- answers -----------------------------------------------------------------------

    fn answer(
        &mut self,
        token: u64,
        answer: Result<Response, String>,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        let Some(pending) = self.pending.remove(&token) else {
            return Ok(());
        };
        match pending {
            Pending::Ignore => {}
            Pending::Assign { node, jobs } => {
                if !matches!(answer, Ok(Response::Ok)) {
                    let reason = match &answer {
                        Ok(other) => format!("{other:?}"),
                        Err(e) => e.clone(),
                    };
                    tracing::info!(peer = %node, jobs = jobs.len(), reason = ?reason.to_string(), "assignment failed; re-queueing");
                    if let Some(lead) = &mut self.lead {
                        lead.placements
                            .refused(&mut lead.planner, &node, &jobs, self.now.wall_ms);
                        // Not following our term yet, full, or unreachable: no new work
                        // for it for a moment, instead of a request per step.
                        lead.backoff.insert(node, self.now.mono_ms + 500);
                    }
                }
            }
            Pending::Results(results) => {
                if matches!(answer, Ok(Response::Ok)) {
                    self.worker.results_in_flight = false;
                } else {
                    self.worker.undelivered(results);
                }
            }
            Pending::Replicate { node } => {
                let current = self.pos.seq;
                let unreachable_at = (answer.is_err() && !self.connected.contains(&node))
                    .then_some(self.now.mono_ms);
                let acked = self.lead.as_mut().and_then(|lead| {
                    lead.repl.answer(
                        &node,
                        answer.as_ref().map_err(String::as_str),
                        current,
                        unreachable_at,
                    )
                });
                if let Some(seq) = acked {
                    for (asker, id) in self.pending_acks.release_seq(seq) {
                        self.out.answer(asker, Ok(Answer::Submitted(id)));
                    }
                }
                // A follower catching up gets its next range at once, not on the next tick.
                self.replicate_due = true;
            }
            Pending::Forward(f) => self.forwarded(f, answer, reads)?,
            Pending::Sync { leader, held } => {
                if let Ok(Response::SyncWant { ids }) = answer {
                    self.push_wanted(&leader, ids, held, reads)?;
                }
            }
            Pending::Push { held } => match answer {
                Ok(Response::Ok) => self.synced(held),
                Ok(other) => tracing::warn!("the controller refused our DAGs: {other:?}"),
                Err(e) => {
                    tracing::warn!(error = ?e.to_string(), "could not give the controller our DAGs")
                }
            },
        }
        Ok(())
    }

    fn fetched(
        &mut self,
        token: u64,
        result: Result<(), String>,
        reads: &dyn Reads,
    ) -> Result<(), StoreError> {
        let Some(f) = self.fetching.remove(&token) else {
            return Ok(());
        };
        match f {
            Fetching::Submit {
                rid,
                id,
                spec,
                source,
            } => match result {
                Ok(()) if self.is_leader() => {
                    self.accept(Asker::Peer(rid), id, spec, source, reads)?
                }
                Ok(()) => {
                    let resp = self.not_leader();
                    self.out.respond(rid, resp);
                }
                Err(e) => self.out.respond(
                    rid,
                    Response::Refused(Refusal::Unavailable(format!(
                        "could not fetch the DAG's modules from the node it was submitted to: {e}"
                    ))),
                ),
            },
            Fetching::Replica { rid, seq } => match result {
                Ok(()) => self.out.respond(rid, Response::Replicated { seq }),
                Err(e) => {
                    // Not confirmed: a copy this node could not run is no copy. The
                    // controller sends the range (or a snapshot) again, and we fetch again.
                    tracing::warn!(error = ?e.to_string(), "replicated DAG's modules could not all be fetched");
                    self.out.respond(
                        rid,
                        Response::Refused(Refusal::Unavailable(format!(
                            "the DAG's modules could not be fetched: {e}"
                        ))),
                    );
                }
            },
            Fetching::Jobs { hash } => match result {
                Ok(()) => self.worker.module_ready(&hash),
                Err(e) => {
                    tracing::warn!(%hash, error = ?e.to_string(), "module could not be fetched");
                    for r in self.worker.module_failed(&hash, &e) {
                        self.result(r);
                    }
                }
            },
        }
        Ok(())
    }

    // ---- work on this node -------------------------------------------------------------

    fn job_done(&mut self, done: JobDone) {
        if !self.worker.finished(&done.key) {
            return;
        }
        let (dag, task, attempt) = done.key;
        match &done.outcome {
            Ok(_) => self.stats.jobs_succeeded += 1,
            Err(e) => {
                self.stats.jobs_failed += 1;
                tracing::debug!(%dag, task, attempt, error = ?e.to_string(), "task attempt failed");
            }
        }
        self.stats.jobs_run_ms += done.run_ms;
        self.result(JobResult {
            dag,
            task,
            attempt,
            outcome: done.outcome,
            run_ms: done.run_ms,
            stderr: done.stderr,
            interrupted: false,
        });
    }

    /// A finished attempt on this node: recorded here when we are the controller, else
    /// reported to it.
    fn result(&mut self, r: JobResult) {
        if self.is_leader() {
            let me = self.cfg.me.clone();
            self.lead_result(&me, r);
        } else {
            self.worker.report(r);
        }
    }

    /// Reports finished attempts to the controller (one request in flight at a time).
    fn send_results(&mut self) {
        if !self.worker.has_results() || self.worker.results_in_flight {
            return;
        }
        if self.is_leader() {
            // We became the controller: record them ourselves.
            let me = self.cfg.me.clone();
            for r in self.worker.take_results() {
                self.lead_result(&me, r);
            }
            return;
        }
        let Some(leader) = self.election.leader().cloned() else {
            return;
        };
        let results = self.worker.take_results();
        self.worker.results_in_flight = true;
        let token = self.out.send(
            leader,
            Request::Results {
                results: results.clone(),
            },
        );
        self.pending.insert(token, Pending::Results(results));
    }

    // ---- status ------------------------------------------------------------------------

    pub fn status(&self) -> StatusView {
        let c = self.capacity;
        let wall = |mono: u64| {
            self.now
                .wall_ms
                .saturating_sub(self.now.mono_ms.saturating_sub(mono))
        };
        let behind = |id: &NodeId, seq: u64| {
            let acked = self
                .lead
                .as_ref()
                .and_then(|l| l.repl.follower_acked(id))
                .unwrap_or(seq)
                .max(seq);
            self.pos.seq.saturating_sub(acked)
        };
        let peer_view = |id: &NodeId, a: &Announce, alive: bool, seen: u64| PeerView {
            peer_id: id.to_string(),
            executors: ExecutorsView {
                total: u64::from(a.executors_total),
                busy: u64::from(a.executors_busy),
                ram_per_executor_mb: a.ram_per_executor_mb,
                available_ram_mb: a.available_ram_mb,
                min_free_ram_mb: a.min_free_ram_mb,
                max_executors: None,
                ram_slots: a.ram_slots,
                cpu_cores: a.cpu_cores,
                limited_by: ExecutorLimit::parse(&a.limited_by),
            },
            addrs: a.addrs.clone(),
            replica_seq: a.replica_seq,
            replica_behind: behind(id, a.replica_seq),
            alive,
            last_seen_ms: Some(seen),
            version: a.version.clone(),
            connected: self.connected.contains(id),
        };
        let mut peers: Vec<PeerView> = self
            .members
            .iter()
            .map(|(id, m)| peer_view(id, &m.announce, true, wall(m.last_heard_ms)))
            .chain(
                self.gone
                    .iter()
                    .map(|(id, (at, a))| peer_view(id, a, false, *at)),
            )
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        StatusView {
            peer_id: self.cfg.me.to_string(),
            leader: self.election.leader().map(ToString::to_string),
            term: self.election.term().map(|t| t.epoch).unwrap_or(0),
            listen_addrs: self.listen_addrs.clone(),
            executors: ExecutorsView {
                total: c.executors as u64,
                busy: self.worker.busy() as u64,
                ram_per_executor_mb: self.cfg.ram_per_executor_mb,
                available_ram_mb: c.available_ram_mb,
                min_free_ram_mb: self.cfg.min_free_ram_mb,
                max_executors: self.cfg.max_executors.map(|m| m as u64),
                ram_slots: c.ram_slots,
                cpu_cores: c.cpu_cores,
                limited_by: c.limited_by,
            },
            peers,
            version: self.cfg.version.clone(),
            dags_active: self
                .lead
                .as_ref()
                .map_or(0, |l| l.planner.active_count() as u64),
            replica_seq: self.pos.seq,
            role: if self.is_leader() {
                NodeRole::Controller
            } else if self.election.leader().is_some() {
                NodeRole::Follower
            } else {
                NodeRole::Candidate
            },
            private_mesh: self.cfg.private_mesh,
            controller_changes: self.changes.iter().cloned().collect(),
        }
    }
}
