//! The cluster actor's mesh side: election steps, membership, assignment of tasks to other
//! nodes, results coming back, forwarded API calls and module fetches.

use std::collections::HashMap;
use std::time::Instant;

use bx3_protocol::api::{ExecutorsView, NodeRole, PeerView, StatusView};
use libp2p::PeerId;

use super::{dispatch, now_ms, replication, Actor, Command, ControllerError, Internal, Origin};
use crate::election::{Input, Output, RoleChange};
use crate::mesh::serde_bytes_vec::Bytes;
use crate::mesh::{self, Announce, Gossip, Id, Request, Response, WireJob, WireResult};
use crate::net;
use crate::store::modules::sha256_hex;
use crate::store::StoreError;

/// Most jobs in one Assign request (keeps each request well under the size limit for small
/// inputs; large inputs are bounded by the wire limit itself).
const ASSIGN_BATCH: usize = 256;
/// How often a follower sends the controller a digest of its DAGs (50 ticks = 5 s).
pub(super) const SYNC_EVERY_TICKS: u64 = 50;
/// Jobs the controller keeps in flight per remote executor (running + queued on the worker).
const REMOTE_DEPTH: usize = 2;

impl Actor {
    /// Feeds one input to the election and carries out what it says: persist (and flush)
    /// first, then send.
    pub(super) async fn elect(&mut self, input: Input<Id>) -> Result<(), StoreError> {
        let mut out = Vec::new();
        self.election.step(input, &mut out);
        if out.is_empty() {
            return Ok(());
        }
        let mut persisted = false;
        for o in &out {
            if let Output::Persist(p) = o {
                self.store.put_election(p)?;
                persisted = true;
            }
        }
        if persisted {
            self.store.flush().await?;
        }
        for o in out {
            match o {
                Output::Persist(_) => {}
                Output::Broadcast(msg) => self.publish(&Gossip::Election(msg)).await,
                Output::Send { to, msg } => {
                    self.spawn_request(&to, Request::Election(msg), |_| None);
                }
                Output::Role(change) => self.role_changed(change)?,
            }
        }
        Ok(())
    }

    fn role_changed(&mut self, change: RoleChange<Id>) -> Result<(), StoreError> {
        match change {
            RoleChange::Leader { term } => {
                self.take_over()?;
                tracing::info!(epoch = term.epoch, leader = %self.me, dags = self.planner.active_count(),
                    peers = self.members.len(), replica_seq = self.replication.seq(), "this node is now the controller");
            }
            RoleChange::Follower { term, leader } => {
                // hook(trust): peer-supplied strings are logged with `?`, escaped.
                tracing::info!(epoch = term.epoch, leader = ?leader, "following controller");
                // Work we were handing out under our old term is the new controller's now.
                self.step_down(&leader);
            }
            RoleChange::Candidate { term } => {
                tracing::debug!(epoch = term.epoch, "standing for controller");
                // Not the controller while standing: a stale planner must not go on writing
                // over what a new controller replicates to us. Winning reloads it.
                self.stand_down();
            }
        }
        let parked = std::mem::take(&mut self.parked);
        for (_, cmd) in parked {
            self.handle_command(cmd);
        }
        Ok(())
    }

    pub(super) async fn handle_tick(&mut self) -> Result<(), StoreError> {
        self.flush_unflushed().await?;
        self.elect(Input::Tick).await?;
        self.expire_acks();
        self.replicate();
        // Anti-entropy: every few seconds a follower offers the controller a digest of its
        // recent DAGs, so anything a lost message or a missed role change left behind is
        // still pulled in.
        self.ticks = self.ticks.wrapping_add(1);
        if self.ticks.is_multiple_of(SYNC_EVERY_TICKS) && !self.election.is_leader() {
            if let Some(leader) = self.election.leader().cloned() {
                self.send_sync(&leader);
            }
        }
        for down in self.members.expire(self.clock_ms()) {
            tracing::info!(peer = %down, "peer is down (silent too long)");
            self.node_down(&down);
        }
        let now = Instant::now();
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.parked = kept;
        for (_, cmd) in expired {
            fail(cmd, ControllerError::NoLeader);
        }
        Ok(())
    }

    /// A peer left: its executors leave the pool and its running tasks go back to the queue
    /// (not counted as failed attempts: the task did nothing wrong).
    fn node_down(&mut self, node: &Id) {
        self.members.remove(node);
        let lost = self.remote.node_down(&mut self.planner, node);
        if lost > 0 {
            tracing::info!(peer = %node, tasks = lost, "re-queued the tasks of a lost node");
        }
    }

    pub(super) async fn announce(&mut self) {
        let c = *self.capacity.borrow();
        let a = Announce {
            version: env!("CARGO_PKG_VERSION").to_string(),
            executors_total: c.executors as u32,
            executors_busy: self.busy as u32,
            ram_per_executor_mb: self.info.ram_per_executor_mb,
            available_ram_mb: c.available_ram_mb,
            min_free_ram_mb: self.info.min_free_ram_mb,
            leader: self.election.leader().cloned(),
            addrs: self.listen_addrs.clone(),
            replica_seq: self.replication.seq(),
        };
        self.publish(&Gossip::Announce(a)).await;
    }

    async fn publish(&self, msg: &Gossip) {
        match mesh::encode_gossip(msg) {
            Ok(bytes) => {
                if let Err(e) = self.net.publish(bytes).await {
                    tracing::debug!("publish failed: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot encode gossip: {e}"),
        }
    }

    /// Sends a request without waiting for it; `then` turns the answer into a message for
    /// the actor (or nothing).
    pub(super) fn spawn_request(
        &mut self,
        to: &Id,
        req: Request,
        then: impl FnOnce(Result<Response, String>) -> Option<Internal> + Send + 'static,
    ) {
        let Some(peer) = self.peer_of(to) else {
            if let Some(msg) = then(Err(format!("unknown peer {to}"))) {
                let _ = self.internal_tx.try_send(msg);
            }
            return;
        };
        let net = self.net.clone();
        let back = self.internal_tx.clone();
        tokio::spawn(async move {
            let answer = match mesh::encode_rpc(&req) {
                Ok(bytes) => match net.request(peer, bytes).await {
                    Ok(reply) => mesh::decode_rpc::<Response>(&reply).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            if let Some(msg) = then(answer) {
                let _ = back.send(msg).await;
            }
        });
    }

    /// Where to fetch a module from: `first`, then every other known peer.
    fn module_sources(&mut self, first: &Id) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = Vec::new();
        if *first != self.me {
            out.extend(self.peer_of(first));
        }
        let others: Vec<Id> = self
            .members
            .iter()
            .map(|(id, _)| id.clone())
            .filter(|id| *id != self.me)
            .collect();
        for id in others {
            if let Some(p) = self.peer_of(&id) {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    pub(super) fn peer_of(&mut self, id: &Id) -> Option<PeerId> {
        if let Some(p) = self.peers.get(id) {
            return Some(*p);
        }
        let p: PeerId = id.parse().ok()?;
        self.peers.insert(id.clone(), p);
        Some(p)
    }

    pub(super) fn handle_internal(&mut self, msg: Internal) {
        match msg {
            Internal::AssignFailed { node, jobs, reason } => {
                tracing::info!(peer = ?node, jobs = jobs.len(), reason = ?reason, "assignment failed; re-queueing");
                self.remote.refused(&mut self.planner, &node, &jobs);
            }
            Internal::ResultsDelivered => self.results_in_flight = false,
            Internal::ReplicaAnswer { node, answer } => {
                self.replica_answer(node, answer);
                // A follower catching up gets its next range at once, not on the next tick.
                self.replicate();
            }
            Internal::Synced(ids) => {
                for (reply, id) in self.pending_acks.release_ids(&ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Internal::ResultsUndelivered(mut results) => {
                self.results_in_flight = false;
                results.append(&mut self.results_out);
                // Still bounded: the oldest go first if the controller stays out of reach.
                let excess = results.len().saturating_sub(super::MAX_PENDING_RESULTS);
                if excess > 0 {
                    tracing::warn!(
                        dropped = excess,
                        "too many undelivered results; dropping the oldest"
                    );
                    results.drain(..excess);
                }
                self.results_out = results;
            }
            Internal::ModuleFetched { hash, error } => {
                let jobs = self.waiting_module.remove(&hash).unwrap_or_default();
                match error {
                    None => self.queue.extend(jobs),
                    Some(e) => {
                        tracing::warn!(hash = ?hash, jobs = jobs.len(), error = ?e, "module could not be fetched");
                        for j in jobs {
                            self.results_out.push(WireResult {
                                dag: j.dag,
                                task: j.task,
                                attempt: j.attempt,
                                outcome: Err(format!(
                                    "module {} ({hash}) could not be fetched: {e}",
                                    j.module
                                )),
                            });
                        }
                    }
                }
            }
        }
    }

    pub(super) async fn handle_net(&mut self, event: net::Event) -> Result<(), StoreError> {
        match event {
            net::Event::Connected(peer) => {
                self.peers.insert(peer.to_string(), peer);
            }
            net::Event::Disconnected(peer) => {
                let id = peer.to_string();
                if self.members.get(&id).is_some() {
                    tracing::info!(peer = %id, "peer disconnected");
                }
                self.node_down(&id);
            }
            net::Event::Listening(addr) => {
                let a = addr.to_string();
                if !self.listen_addrs.contains(&a) {
                    self.listen_addrs.push(a);
                }
            }
            net::Event::Gossip { from, data } => {
                let id = from.to_string();
                self.peers.insert(id.clone(), from);
                let Ok(msg) = mesh::decode_gossip(&data) else {
                    return Ok(());
                };
                self.heard(&id).await?;
                match msg {
                    Gossip::Announce(a) => {
                        let clock = self.clock_ms();
                        if self.members.announce(&id, a, clock) {
                            tracing::debug!(peer = %id, "peer joined or changed its executors");
                        }
                    }
                    Gossip::Election(m) => self.elect(Input::Receive { from: id, msg: m }).await?,
                }
            }
            net::Event::Request { from, data, reply } => {
                let id = from.to_string();
                self.peers.insert(id.clone(), from);
                self.heard(&id).await?;
                match mesh::decode_rpc::<Request>(&data) {
                    Ok(req) => self.handle_request(id, req, reply).await?,
                    Err(e) => respond(
                        reply,
                        &Response::Error {
                            status: 400,
                            message: format!("bad request: {e}"),
                        },
                    ),
                }
            }
        }
        Ok(())
    }

    async fn heard(&mut self, id: &Id) -> Result<(), StoreError> {
        let clock = self.clock_ms();
        if self.members.heard(id, clock) {
            tracing::info!(peer = %id, "peer joined");
        }
        self.elect(Input::Heard(id.clone())).await
    }

    /// Answers a request, now or from a spawned task that takes `reply` along.
    async fn handle_request(
        &mut self,
        from: Id,
        req: Request,
        reply: tokio::sync::oneshot::Sender<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let leader = self.election.is_leader();
        let resp = match req {
            Request::Election(msg) => {
                self.elect(Input::Receive { from, msg }).await?;
                Response::Ok
            }
            Request::Assign { term, jobs } => {
                if !self.election.accepts(&term) {
                    Response::Rejected {
                        reason: format!(
                            "stale term {}: this node follows term {:?}",
                            term.epoch,
                            self.election.term().map(|t| t.epoch)
                        ),
                    }
                } else {
                    for job in jobs {
                        self.enqueue_job(job, &from);
                    }
                    Response::Ok
                }
            }
            Request::Results { results } => {
                if !leader {
                    Response::NotLeader {
                        leader: self.election.leader().cloned(),
                    }
                } else {
                    for r in results {
                        self.remote_result(&from, r);
                    }
                    Response::Ok
                }
            }
            Request::Replicate {
                term,
                prev,
                snapshot,
                batches,
            } => match self.apply_replicate(term, prev, snapshot, batches).await? {
                Response::NeedModules { seq, hashes } => {
                    let sources = self.module_sources(&from);
                    let net = self.net.clone();
                    let modules = self.modules.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            fetch_from_any(&net, &sources, &modules, hashes.iter()).await
                        {
                            tracing::warn!(
                                error = ?e,
                                "replicated DAG's modules could not all be fetched"
                            );
                        }
                        respond(reply, &Response::Replicated { seq });
                    });
                    return Ok(());
                }
                resp => resp,
            },
            Request::Sync { digest } => {
                if leader {
                    Response::SyncWant {
                        ids: replication::sync_want(&self.store, &self.planner, &digest)?,
                    }
                } else {
                    Response::NotLeader {
                        leader: self.election.leader().cloned(),
                    }
                }
            }
            Request::Push { dags } => {
                if leader {
                    self.merge_pushed(&from, dags).await?;
                    Response::Ok
                } else {
                    Response::NotLeader {
                        leader: self.election.leader().cloned(),
                    }
                }
            }
            Request::Abort { dag } => {
                for ((d, _, _), r) in self.running.iter() {
                    if *d == dag && r.origin == Origin::Remote {
                        r.token.cancel();
                    }
                }
                self.queue.retain(|j| j.dag != dag);
                Response::Ok
            }
            Request::FetchModule { hash } => {
                let modules = self.modules.clone();
                tokio::task::spawn_blocking(move || {
                    let resp = match modules.get(&hash) {
                        Ok(Some(bytes)) => Response::Module {
                            bytes: Bytes(bytes),
                        },
                        Ok(None) => Response::NotFound {
                            what: format!("module {hash}"),
                        },
                        Err(e) => Response::Error {
                            status: 500,
                            message: format!("cannot read module {hash}: {e}"),
                        },
                    };
                    respond(reply, &resp);
                });
                return Ok(());
            }
            Request::Submit { spec, source } => {
                if !leader {
                    Response::NotLeader {
                        leader: self.election.leader().cloned(),
                    }
                } else {
                    let handle = self.self_handle.clone();
                    let modules = self.modules.clone();
                    let net = self.net.clone();
                    let Some(peer) = self.peer_of(&from) else {
                        respond(
                            reply,
                            &Response::Error {
                                status: 400,
                                message: format!("unknown peer {from}"),
                            },
                        );
                        return Ok(());
                    };
                    tokio::spawn(async move {
                        let resp = match fetch_missing(&net, peer, &modules, spec.modules.values())
                            .await
                        {
                            Err(e) => Response::Error {
                                status: 502,
                                message: e,
                            },
                            Ok(()) => match handle.submit(spec, source).await {
                                Ok(id) => Response::Submitted { id },
                                Err(e) => Response::Error {
                                    status: e.status(),
                                    message: e.to_string(),
                                },
                            },
                        };
                        respond(reply, &resp);
                    });
                    return Ok(());
                }
            }
            Request::GetDag {
                id,
                tasks,
                after,
                wait_ms,
            } => {
                // Served through our own command path, so a long poll waits beside the
                // actor instead of inside it.
                let handle = self.self_handle.clone();
                tokio::spawn(async move {
                    let wait = std::time::Duration::from_millis(wait_ms);
                    let resp = match handle.get_after(id, tasks, after, wait).await {
                        Ok(v) => Response::Dag(Box::new(v)),
                        Err(e) => Response::Error {
                            status: e.status(),
                            message: e.to_string(),
                        },
                    };
                    respond(reply, &resp);
                });
                return Ok(());
            }
            Request::ListDags { limit } => match self
                .flush_unflushed()
                .await
                .map_err(ControllerError::from)
                // hook(trust): a peer's limit is capped like the API's.
                .and_then(|()| self.list((limit as usize).min(10_000)))
            {
                Ok(v) => Response::Dags(v),
                Err(e) => Response::Error {
                    status: e.status(),
                    message: e.to_string(),
                },
            },
            Request::Cancel { id } => {
                if !leader {
                    Response::NotLeader {
                        leader: self.election.leader().cloned(),
                    }
                } else {
                    match self.cancel(id) {
                        Ok(v) => Response::Dag(Box::new(v)),
                        Err(e) => Response::Error {
                            status: e.status(),
                            message: e.to_string(),
                        },
                    }
                }
            }
        };
        respond(reply, &resp);
        Ok(())
    }

    /// A job assigned to this node: run it once its module is here and an executor is free.
    fn enqueue_job(&mut self, job: WireJob, from: &Id) {
        if self.modules.contains(&job.module_hash) {
            self.queue.push_back(job);
            return;
        }
        let hash = job.module_hash.clone();
        let first = !self.waiting_module.contains_key(&hash);
        self.waiting_module
            .entry(hash.clone())
            .or_default()
            .push(job);
        if !first {
            return;
        }
        // The assigning controller first, then every other peer: a controller killed right
        // after assigning must not turn its jobs into failed attempts the next one counts.
        let sources = self.module_sources(from);
        let net = self.net.clone();
        let modules = self.modules.clone();
        let back = self.internal_tx.clone();
        tokio::spawn(async move {
            let error = fetch_from_any(&net, &sources, &modules, std::iter::once(&hash))
                .await
                .err();
            let _ = back.send(Internal::ModuleFetched { hash, error }).await;
        });
    }

    /// A result from a worker, on the controller.
    fn remote_result(&mut self, from: &Id, r: WireResult) {
        let (dag, task, attempt) = (r.dag, r.task, r.attempt);
        if !self.remote.result(&mut self.planner, r, now_ms()) {
            tracing::debug!(peer = ?from, %dag, task, attempt, "stale result ignored");
        }
    }

    /// Hands ready tasks to free executors across the mesh (controller only), then starts
    /// queued jobs on this node's executors.
    pub(super) async fn dispatch(&mut self) {
        if self.election.is_leader() {
            if let Some(term) = self.election.term().cloned() {
                self.assign(term).await;
            }
        }
        self.start_queued().await;
    }

    async fn assign(&mut self, term: mesh::Term) {
        // Free slots per node: this node's free executors, and each announced peer's total
        // minus what we have in flight there.
        let mut slots: Vec<(Id, usize, usize)> = Vec::new(); // (node, free, total)
        let local_total = self.capacity.borrow().executors.max(1);
        slots.push((self.me.clone(), self.local_free(), local_total));
        for (id, m) in self.members.iter() {
            if !m.announced || m.announce.executors_total == 0 {
                continue;
            }
            // Keep a second job queued behind each remote executor, so a worker never idles
            // for a network round trip between two tasks.
            let total = m.announce.executors_total as usize * REMOTE_DEPTH;
            let used = self.remote.in_flight(id);
            slots.push((id.clone(), total.saturating_sub(used), total));
        }
        let mut batches: HashMap<Id, Vec<WireJob>> = HashMap::new();
        for (node, job) in dispatch::plan(&mut self.planner, slots) {
            if node == self.me {
                // Through the queue: a module this node lacks (it took over from a controller
                // that had it) is fetched from a peer first.
                let me = self.me.clone();
                self.enqueue_job(job, &me);
            } else {
                self.remote.assigned(&node, &job);
                batches.entry(node).or_default().push(job);
            }
        }
        for (node, jobs) in batches {
            for chunk in jobs.chunks(ASSIGN_BATCH) {
                let chunk = chunk.to_vec();
                let failed = chunk.clone();
                let n = node.clone();
                self.spawn_request(
                    &node,
                    Request::Assign {
                        term: term.clone(),
                        jobs: chunk,
                    },
                    move |answer| match answer {
                        Ok(Response::Ok) => None,
                        Ok(other) => Some(Internal::AssignFailed {
                            node: n,
                            jobs: failed,
                            reason: format!("{other:?}"),
                        }),
                        Err(e) => Some(Internal::AssignFailed {
                            node: n,
                            jobs: failed,
                            reason: e,
                        }),
                    },
                );
            }
        }
    }

    /// Reports finished attempts to the controller (one request in flight at a time).
    pub(super) fn send_results(&mut self) {
        if self.results_out.is_empty() || self.results_in_flight {
            return;
        }
        if self.election.is_leader() {
            // We became the controller: record them ourselves.
            let me = self.me.clone();
            for r in std::mem::take(&mut self.results_out) {
                self.remote_result(&me, r);
            }
            return;
        }
        let Some(leader) = self.election.leader().cloned() else {
            return;
        };
        let results = std::mem::take(&mut self.results_out);
        let keep = results.clone();
        self.results_in_flight = true;
        self.spawn_request(
            &leader,
            Request::Results { results },
            move |answer| match answer {
                Ok(Response::Ok) => Some(Internal::ResultsDelivered),
                _ => Some(Internal::ResultsUndelivered(keep)),
            },
        );
    }

    /// Sends an API call to the controller and answers the caller when it replies.
    pub(super) fn forward(&mut self, leader: Id, cmd: Command) {
        let Some(peer) = self.peer_of(&leader) else {
            fail(cmd, ControllerError::NoLeader);
            return;
        };
        let net = self.net.clone();
        let store = self.store.clone();
        tokio::spawn(async move {
            match cmd {
                Command::Submit {
                    spec,
                    source,
                    reply,
                } => {
                    let r = call(&net, peer, Request::Submit { spec, source })
                        .await
                        .and_then(|resp| match resp {
                            Response::Submitted { id } => Ok(id),
                            other => Err(unexpected(other)),
                        });
                    let _ = reply.send(r);
                }
                Command::Get {
                    id,
                    tasks,
                    after,
                    wait,
                    reply,
                } => {
                    // Below the request timeout, so a long poll ends with an answer.
                    let wait = wait.min(std::time::Duration::from_secs(25));
                    let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                    let r = call_idempotent(
                        &net,
                        peer,
                        Request::GetDag {
                            id,
                            tasks,
                            after,
                            wait_ms,
                        },
                    )
                    .await
                    .and_then(|resp| match resp {
                        Response::Dag(v) => Ok(*v),
                        other => Err(unexpected(other)),
                    });
                    // The controller could not answer (an election under way, a lost
                    // connection): this node's replica is the next best answer.
                    let r = match r {
                        Err(e)
                            if !matches!(
                                &e,
                                ControllerError::Remote {
                                    status: 404 | 409,
                                    ..
                                }
                            ) =>
                        {
                            local_view(&store, id, tasks).map_err(|_| e)
                        }
                        r => r,
                    };
                    let _ = reply.send(r);
                }
                Command::List { limit, reply } => {
                    let limit = u32::try_from(limit).unwrap_or(u32::MAX);
                    let r = call_idempotent(&net, peer, Request::ListDags { limit })
                        .await
                        .and_then(|resp| match resp {
                            Response::Dags(v) => Ok(v),
                            other => Err(unexpected(other)),
                        });
                    let _ = reply.send(r);
                }
                Command::Cancel { id, reply } => {
                    let r = call(&net, peer, Request::Cancel { id })
                        .await
                        .and_then(|resp| match resp {
                            Response::Dag(v) => Ok(*v),
                            other => Err(unexpected(other)),
                        });
                    let _ = reply.send(r);
                }
                Command::Status { .. } => {}
            }
        });
    }

    pub(super) fn status_view(&self) -> StatusView {
        let c = *self.capacity.borrow();
        let mut peers: Vec<PeerView> = self
            .members
            .iter()
            .map(|(id, m)| PeerView {
                peer_id: id.clone(),
                executors: ExecutorsView {
                    total: u64::from(m.announce.executors_total),
                    busy: u64::from(m.announce.executors_busy),
                    ram_per_executor_mb: m.announce.ram_per_executor_mb,
                    available_ram_mb: m.announce.available_ram_mb,
                    min_free_ram_mb: m.announce.min_free_ram_mb,
                    max_executors: None,
                    ..ExecutorsView::default()
                },
                addrs: m.announce.addrs.clone(),
                replica_seq: m.announce.replica_seq,
                replica_behind: self.replication.seq().saturating_sub(
                    self.replication
                        .follower_acked(id)
                        .unwrap_or(m.announce.replica_seq)
                        .max(m.announce.replica_seq),
                ),
                alive: true,
                last_seen_ms: None,
                version: m.announce.version.clone(),
            })
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        StatusView {
            peer_id: self.me.clone(),
            leader: self.election.leader().cloned(),
            term: self.election.term().map(|t| t.epoch).unwrap_or(0),
            listen_addrs: self.listen_addrs.clone(),
            executors: ExecutorsView {
                total: c.executors as u64,
                busy: self.busy as u64,
                ram_per_executor_mb: self.info.ram_per_executor_mb,
                available_ram_mb: c.available_ram_mb,
                min_free_ram_mb: self.info.min_free_ram_mb,
                max_executors: self.info.max_executors.map(|m| m as u64),
                ..ExecutorsView::default()
            },
            peers,
            version: env!("CARGO_PKG_VERSION").to_string(),
            dags_active: self.planner.active_count() as u64,
            replica_seq: self.replication.seq(),
            role: if self.election.is_leader() {
                NodeRole::Controller
            } else if self.election.leader().is_some() {
                NodeRole::Follower
            } else {
                NodeRole::Candidate
            },
            private_mesh: false,
            controller_changes: Vec::new(),
        }
    }
}

/// A DAG as this node's own store has it (a follower's replica).
pub(super) fn local_view(
    store: &crate::store::Store,
    id: bx3_protocol::ids::DagId,
    tasks: bool,
) -> Result<bx3_protocol::api::DagView, ControllerError> {
    let meta = store.meta(&id)?.ok_or(ControllerError::NotFound(id))?;
    let spec = store.spec(&id)?.ok_or(ControllerError::NotFound(id))?;
    let records = if tasks {
        store.tasks(&id, spec.dag.tasks.len())?
    } else {
        Vec::new()
    };
    Ok(super::make_view(id, &meta, &spec, &records, tasks))
}

fn respond(reply: tokio::sync::oneshot::Sender<Vec<u8>>, resp: &Response) {
    match mesh::encode_rpc(resp) {
        Ok(bytes) => {
            let _ = reply.send(bytes);
        }
        Err(e) => tracing::warn!("cannot encode a response: {e}"),
    }
}

fn fail(cmd: Command, e: ControllerError) {
    let remote = |e: &ControllerError| ControllerError::Remote {
        status: e.status(),
        message: e.to_string(),
    };
    match cmd {
        Command::Submit { reply, .. } => {
            let _ = reply.send(Err(e));
        }
        Command::Get { reply, .. } => {
            let _ = reply.send(Err(remote(&e)));
        }
        Command::List { reply, .. } => {
            let _ = reply.send(Err(remote(&e)));
        }
        Command::Cancel { reply, .. } => {
            let _ = reply.send(Err(remote(&e)));
        }
        Command::Status { .. } => {}
    }
}

fn unexpected(resp: Response) -> ControllerError {
    match resp {
        Response::Error { status, message } => ControllerError::Remote { status, message },
        Response::NotLeader { .. } => ControllerError::NoLeader,
        Response::NotFound { what } => ControllerError::Remote {
            status: 404,
            message: format!("{what} not found"),
        },
        Response::Rejected { reason } => ControllerError::Remote {
            status: 409,
            message: reason,
        },
        other => ControllerError::Remote {
            status: 502,
            message: format!("unexpected answer from the controller: {other:?}"),
        },
    }
}

/// `call` for requests that are safe to send twice: one retry after a short pause when the
/// first attempt failed on the way (e.g. it went out on a duplicate connection that was being
/// closed just as two nodes that dialled each other settled on one).
async fn call_idempotent(
    net: &net::Client,
    peer: PeerId,
    req: Request,
) -> Result<Response, ControllerError> {
    match call(net, peer, req.clone()).await {
        Err(ControllerError::Remote { status: 502, .. }) => {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            call(net, peer, req).await
        }
        r => r,
    }
}

pub(super) async fn call(
    net: &net::Client,
    peer: PeerId,
    req: Request,
) -> Result<Response, ControllerError> {
    let bytes = mesh::encode_rpc(&req).map_err(|e| ControllerError::Remote {
        status: 500,
        message: e.to_string(),
    })?;
    let reply = net
        .request(peer, bytes)
        .await
        .map_err(|e| ControllerError::Remote {
            status: 502,
            message: format!("the controller ({peer}) did not answer: {e}"),
        })?;
    mesh::decode_rpc(&reply).map_err(|e| ControllerError::Remote {
        status: 502,
        message: format!("bad answer from the controller: {e}"),
    })
}

/// Like `fetch_missing`, trying each peer in turn for what is still missing.
async fn fetch_from_any<'a>(
    net: &net::Client,
    peers: &[PeerId],
    modules: &crate::store::ModuleStore,
    hashes: impl Iterator<Item = &'a String>,
) -> Result<(), String> {
    let wanted: Vec<&String> = hashes.collect();
    let mut last = String::from("no peer to fetch from");
    for peer in peers {
        match fetch_missing(net, *peer, modules, wanted.iter().copied()).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Fetches from `peer` every module in `hashes` that is not in `modules`, checking each
/// against its hash before storing it. Bytes that do not match are refused, never run.
async fn fetch_missing<'a>(
    net: &net::Client,
    peer: PeerId,
    modules: &crate::store::ModuleStore,
    hashes: impl Iterator<Item = &'a String>,
) -> Result<(), String> {
    for hash in hashes {
        if modules.contains(hash) {
            continue;
        }
        let req = mesh::encode_rpc(&Request::FetchModule { hash: hash.clone() })
            .map_err(|e| e.to_string())?;
        let reply = net
            .request(peer, req)
            .await
            .map_err(|e| format!("fetching module {hash} from {peer}: {e}"))?;
        match mesh::decode_rpc::<Response>(&reply).map_err(|e| e.to_string())? {
            Response::Module { bytes } => {
                let actual = sha256_hex(&bytes.0);
                if &actual != hash {
                    return Err(format!(
                        "peer {peer} sent bytes with hash {actual} for module {hash}; refused"
                    ));
                }
                // hook(trust): stored (and synced) off the async threads before we answer;
                // compiled in the background by the node's one bounded compile service (a
                // limited child process), not on a thread of its own per module.
                modules
                    .put_and_compile(bytes.0)
                    .await
                    .map_err(|e| format!("cannot store module {hash}: {e}"))?;
                tracing::debug!(hash = ?hash, %peer, "fetched module");
            }
            other => return Err(format!("peer {peer} has no module {hash}: {other:?}")),
        }
    }
    Ok(())
}
