//! A deterministic, seeded simulation of whole meshes running the production cluster core
//! ([`Core`]): the same `step` the node's runtime calls, with the simulator in the runtime's
//! place. Nothing of the core is mirrored here; what the simulator supplies is the world:
//!
//! - **a network of connections.** A node knows the peers it was given (full mesh, star,
//!   chain) and those it learns from announcements (`Output::LearnAddrs`, peer exchange);
//!   it connects to every known peer it can reach. (Every node must be able to reach every
//!   other: a node reachable only through another, behind a NAT, is out of the model, and
//!   out of what bx3 supports today; see the mesh section of README.) Gossip floods over connections (the author to all its neighbours,
//!   each receiver on to a few of its own, once per message, as gossipsub does); a request
//!   needs a direct connection (made on demand when the peer is known and reachable) and
//!   fails when the connection drops before its answer. Messages are lost and delayed at
//!   random; partitions cut connections; connections drop and are redialled.
//! - **disks.** Each node's store is in memory; a `Flush` makes a copy of it the durable
//!   one, and a crash (kill -9) puts the store back to that copy: every write not yet
//!   flushed is lost.
//! - **modules and executors.** Only the node a DAG was submitted at has its modules; every
//!   other node fetches them by hash (`Output::Fetch`) from the peers the core names. A
//!   task's output is a pure function of its module, arguments and attempt number
//!   (`fail.wasm` always fails, `flaky.wasm` fails its first attempt).
//! - **clients.** DAGs are submitted at random live nodes (not only the controller), with a
//!   client-chosen id, and sometimes submitted again elsewhere after an error (a retry).
//!
//! Invariants, checked on every tick and at the end:
//!
//! - one leader per term, and no node's term ever goes down (across restarts too);
//! - one controller per connected group: two controllers in one group (the connected
//!   components of the connection graph) last at most `GRACE` ticks once the group stops
//!   changing; and no DAG is active on two controllers of one group for longer;
//! - an acknowledged DAG is on the disk of at least two nodes at the moment of its
//!   acknowledgement, unless its controller was alone;
//! - no acknowledged DAG is lost: at the end (faults over, every node but the one killed for
//!   good back up, the network whole) each one is finished on the controller, equal task by
//!   task to the fault-free run (state, output, error, attempts) — so failover, lost nodes
//!   and retried submissions never cost an attempt or run a DAG twice;
//! - every task record that says succeeded, on any node at any check, carries the output of
//!   the fault-free run;
//! - task times: within every attempt, queued <= started <= finished.
//!
//! Replay one seed with a trace: `CLUSTER_SEED=1234 cargo test -p bx3-node
//! cluster::sim::replay -- --ignored --nocapture`; hunt longer with
//! `CLUSTER_SEEDS=0..100000 cargo test --release -p bx3-node cluster::sim::random --
//! --nocapture`; the scale table: `cargo test --release -p bx3-node cluster::sim::scale --
//! --ignored --nocapture`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bx3_protocol::api::{AttemptOutcome, Counts, DagState, TaskState};
use bx3_protocol::dag::parse_dag;
use bx3_protocol::ids::{DagId, ModuleHash, NodeId};
use bx3_protocol::mesh::{Gossip, Job, Request, Response};
use rand::{Rng, SeedableRng};

use super::planner::{Planner, Report};
use super::records::{Reads, Write};
use super::{Answer, Call, Capacity, Config, Core, Input, JobDone, Now, Output, TICK_MS};
use crate::election::sim::{over_seeds, seeds_from_env, Rng64};
use crate::election::{HashVotes, LogPos, Params, Persistent, Term};
use crate::store::{DagMeta, SpecRecord, StoreError, TaskRecord};

/// Faults happen in the first `FAULT_TICKS`; then the network is whole and every node but
/// the one killed for good is up, for `CALM_TICKS` in which all work must finish.
const FAULT_TICKS: u64 = 800;
const CALM_TICKS: u64 = 900;
/// Executors per node.
const EXECUTORS: usize = 2;
/// Most DAGs submitted per run.
const MAX_DAGS: usize = 8;
/// Content checks every this many ticks (they read every store).
const CHECK_EVERY: u64 = 25;
/// How long two controllers may coexist in one connected group that stopped changing
/// (failure detection and one election: the members table drops a silent peer after 3 s).
const GRACE: u64 = 40;
/// A request without an answer after this many ticks fails at its sender.
const RPC_TIMEOUT: u64 = 20;
/// Gossip receivers forward a new message to at most this many neighbours (gossipsub's D).
const GOSSIP_FANOUT: usize = 6;
/// The wall clock at tick 0 (any plausible time: DAG ids carry it).
const BASE_WALL_MS: u64 = 1_800_000_000_000;
/// Trace lines kept for a failure report.
const TRACE_KEEP: usize = 80;

// ---- the world's pieces ------------------------------------------------------------------

/// What a task returns: a pure function of the task and its attempt.
fn outcome(job: &Job) -> Result<String, String> {
    match job.module.as_str() {
        "fail.wasm" => Err("boom".into()),
        "flaky.wasm" if job.attempt == 1 => Err("flaky first attempt".into()),
        _ => Ok(fnv(
            std::iter::once(job.module.as_str()).chain(job.argv.iter().map(String::as_str))
        )),
    }
}

fn fnv<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

fn module_hash(name: &str) -> ModuleHash {
    let h = fnv(std::iter::once(name));
    h.repeat(4).parse().expect("64 hex digits")
}

/// A random DAG of 1–10 tasks, each depending on some earlier ones, some using their outputs.
fn random_dag(rng: &mut Rng64, n: usize) -> SpecRecord {
    let tasks = rng.gen_range(1..=10);
    let mut yaml = format!("name: sim{n}\ntasks:\n");
    for i in 0..tasks {
        let module = match rng.gen_range(0..10) {
            0 => "fail.wasm",
            1 | 2 => "flaky.wasm",
            _ => "ok.wasm",
        };
        yaml.push_str(&format!(
            "  - id: t{i}\n    module: {module}\n    retries: {}\n",
            rng.gen_range(0..3)
        ));
        let deps: Vec<usize> = (0..i).filter(|_| rng.gen_bool(0.3)).collect();
        if !deps.is_empty() {
            let names: Vec<String> = deps.iter().map(|d| format!("t{d}")).collect();
            yaml.push_str(&format!("    depends_on: [{}]\n", names.join(", ")));
            let inputs: Vec<String> = names
                .iter()
                .filter(|_| rng.gen_bool(0.6))
                .map(|d| format!("\"x${{{d}}}\""))
                .collect();
            if !inputs.is_empty() {
                yaml.push_str(&format!("    inputs: [{}]\n", inputs.join(", ")));
            }
        }
    }
    let dag = match parse_dag(&yaml) {
        Ok(d) => d,
        Err(e) => panic!("simulator built an invalid DAG: {e}\n{yaml}"),
    };
    let modules = dag
        .module_names()
        .into_iter()
        .map(|m| {
            let h = module_hash(&m);
            (m, h)
        })
        .collect();
    SpecRecord { dag, modules }
}

/// The fault-free run: the planner alone, every attempt answered at once.
fn expected(spec: &SpecRecord) -> Vec<TaskRecord> {
    let id = DagId::new(1, 1);
    let me: NodeId = "x".parse().expect("id");
    let meta = DagMeta {
        name: spec.dag.name.clone(),
        description: None,
        source: None,
        state: DagState::Pending,
        created_at_ms: 0,
        finished_at_ms: None,
        version: 1,
        counts: Counts::default(),
    };
    let mut p = Planner::new();
    p.add(id, meta, Arc::new(spec.clone()), Vec::new(), 0);
    for _ in 0..10_000 {
        let Some(a) = p.next_assignment(&me, 0, |_| true) else {
            break;
        };
        let job: Job = a.into();
        let out = outcome(&job);
        let report = Report {
            from: &me,
            run_ms: 0,
            stderr: None,
        };
        p.on_result(id, job.task, job.attempt, out, report, 1);
    }
    let run = p.run(&id).expect("run");
    assert!(run.is_finished(), "fault-free run did not finish");
    run.tasks.clone()
}

/// Same outcome, ignoring which node ran it and when. A skipped task names the first failed
/// upstream task its controller heard of, which depends on timing when two failed.
fn same(a: &TaskRecord, b: &TaskRecord) -> bool {
    let errors_match = match a.state {
        TaskState::Skipped => a
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("skipped: upstream task")),
        _ => a.error == b.error,
    };
    a.state == b.state && a.output == b.output && errors_match && a.attempts == b.attempts
}

/// A node's store, in memory.
#[derive(Debug, Clone, Default)]
struct Mem {
    metas: BTreeMap<DagId, DagMeta>,
    specs: BTreeMap<DagId, Arc<SpecRecord>>,
    tasks: BTreeMap<(DagId, u32), TaskRecord>,
    election: Option<Persistent<NodeId>>,
    pos: LogPos<NodeId>,
}

impl Mem {
    fn apply(&mut self, w: &Write) {
        match w {
            Write::Dag { id, meta, spec } => {
                self.specs.insert(*id, Arc::clone(spec));
                self.metas.insert(*id, meta.clone());
            }
            Write::Meta(id, meta) => {
                self.metas.insert(*id, meta.clone());
            }
            Write::Tasks(records) => {
                for (d, i, r) in records {
                    self.tasks.insert((*d, *i), r.clone());
                }
            }
            Write::Election(p) => self.election = Some(p.clone()),
            Write::ReplPos(p) => self.pos = p.clone(),
        }
    }

    fn holds(&self, id: &DagId) -> bool {
        self.specs.contains_key(id) && self.metas.contains_key(id)
    }
}

struct SimReads<'a> {
    mem: &'a Mem,
    modules: &'a BTreeSet<ModuleHash>,
}

impl Reads for SimReads<'_> {
    fn meta(&self, id: &DagId) -> Result<Option<DagMeta>, StoreError> {
        Ok(self.mem.metas.get(id).cloned())
    }
    fn spec(&self, id: &DagId) -> Result<Option<Arc<SpecRecord>>, StoreError> {
        Ok(self.mem.specs.get(id).cloned())
    }
    fn tasks(&self, id: &DagId, count: usize) -> Result<Vec<TaskRecord>, StoreError> {
        let mut out = vec![TaskRecord::default(); count];
        for ((_, i), r) in self.mem.tasks.range((*id, 0)..=(*id, u32::MAX)) {
            if let Some(slot) = out.get_mut(*i as usize) {
                *slot = r.clone();
            }
        }
        Ok(out)
    }
    fn task(&self, id: &DagId, idx: u32) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.mem.tasks.get(&(*id, idx)).cloned())
    }
    fn list(&self, limit: usize) -> Result<Vec<(DagId, DagMeta)>, StoreError> {
        Ok(self
            .mem
            .metas
            .iter()
            .rev()
            .filter(|(id, _)| self.mem.specs.contains_key(id))
            .take(limit)
            .map(|(id, m)| (*id, m.clone()))
            .collect())
    }
    fn unfinished(&self) -> Result<Vec<DagId>, StoreError> {
        Ok(self
            .mem
            .metas
            .iter()
            .filter(|(id, m)| !m.state.is_terminal() && self.mem.specs.contains_key(id))
            .map(|(id, _)| *id)
            .collect())
    }
    fn has_module(&self, hash: &ModuleHash) -> bool {
        self.modules.contains(hash)
    }
}

/// Who can reach whom, and who knows whom at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Topology {
    /// Everyone is given everyone's address.
    Full,
    /// Everyone is given node 0's address only (one `--peer`).
    Star,
    /// Node i is given node i-1's address.
    Chain,
}

impl Topology {
    fn bootstrap(self, i: usize, n: usize) -> Vec<usize> {
        match self {
            Topology::Full => (0..n).filter(|&j| j != i).collect(),
            Topology::Star => {
                if i == 0 {
                    Vec::new()
                } else {
                    vec![0]
                }
            }
            Topology::Chain => {
                if i == 0 {
                    Vec::new()
                } else {
                    vec![i - 1]
                }
            }
        }
    }
}

#[derive(Debug)]
enum Event {
    /// A gossip message crossing one connection.
    Hop { msg: u64, from: usize, to: usize },
    Req {
        from: usize,
        from_gen: u64,
        to: usize,
        token: u64,
        req: Request,
    },
    /// An answer (or the failure of a request) arriving back at its sender.
    Answer {
        to: usize,
        gen: u64,
        token: u64,
        answer: Result<Response, String>,
    },
    Fetched {
        node: usize,
        gen: u64,
        token: u64,
        hashes: Vec<ModuleHash>,
        ok: bool,
    },
}

struct RunningJob {
    job: Job,
    done_at: u64,
    started: u64,
}

struct Node {
    id: NodeId,
    core: Option<Core>,
    /// Incarnation: bumped on every crash, so answers meant for a previous life are dropped.
    gen: u64,
    live: Mem,
    durable: Mem,
    /// Writes since the last flush: a flush applies them to `durable` (cheaper than a copy
    /// of the whole store at every flush).
    unflushed: Vec<Write>,
    modules: BTreeSet<ModuleHash>,
    /// Peers it may dial: given at start, learned from announcements.
    known: BTreeSet<usize>,
    inputs: Vec<Input>,
    /// Peers' requests waiting for this node's answer: rid -> (sender, its incarnation, token).
    inbound: HashMap<u64, (usize, u64, u64)>,
    next_rid: u64,
    running: Vec<RunningJob>,
    /// Gossip seen (by message number).
    seen: HashSet<u64>,
    max_term: Option<Term<NodeId>>,
    restart_at: Option<u64>,
    gone_for_good: bool,
    next_call: u64,
    /// API calls made here: call -> DAG number.
    calls: HashMap<u64, usize>,
    /// Messages received (gossip hops and requests), for the scale figures.
    received: u64,
    /// Time spent in `step`, ns (scale figures).
    step_ns: u128,
}

/// A DAG the simulated clients submit.
struct Submission {
    id: DagId,
    spec: Arc<SpecRecord>,
    expected: Vec<TaskRecord>,
    acked: bool,
    /// Acknowledged by a controller that was alone (one copy, by design).
    acked_alone: bool,
    submitted: bool,
}

/// Scale and timing figures of one run.
#[derive(Debug, Default, Clone)]
pub(crate) struct Figures {
    pub first_agreement_tick: Option<u64>,
    pub worst_dual_controllers: u64,
    pub worst_dual_dag: u64,
    pub acked: usize,
    pub finished: usize,
    pub retried_submits: usize,
    pub controller_changes: u64,
}

struct Sim {
    seed: u64,
    rng: Rng64,
    now: u64,
    topology: Topology,
    nodes: Vec<Node>,
    /// Partition side of each node (equal sides reach each other).
    side: Vec<u8>,
    /// Connections: each node's neighbours.
    adj: Vec<BTreeSet<usize>>,
    events: BTreeMap<u64, Vec<Event>>,
    gossip: HashMap<u64, (NodeId, Gossip)>,
    gossip_age: VecDeque<(u64, u64)>,
    next_msg: u64,
    loss: f64,
    subs: Vec<Submission>,
    /// Leader of each term seen.
    leaders: HashMap<Term<NodeId>, NodeId>,
    /// Consecutive ticks with two controllers, per group (its sorted members).
    dual: HashMap<Vec<usize>, u64>,
    dual_dag: HashMap<(Vec<usize>, DagId), u64>,
    figures: Figures,
    trace: VecDeque<String>,
    verbose: bool,
    /// Record scale figures (time spent in steps).
    timed: bool,
}

fn wall(now: u64) -> u64 {
    BASE_WALL_MS + now * TICK_MS
}

impl Sim {
    fn new(seed: u64, n: usize, topology: Topology, verbose: bool) -> Sim {
        let mut rng = Rng64::seed_from_u64(seed);
        let nodes = (0..n)
            .map(|i| Node {
                id: format!("n{i}").parse().expect("id"),
                core: None,
                gen: 0,
                live: Mem::default(),
                durable: Mem::default(),
                unflushed: Vec::new(),
                modules: BTreeSet::new(),
                known: topology.bootstrap(i, n).into_iter().collect(),
                inputs: Vec::new(),
                inbound: HashMap::new(),
                next_rid: 0,
                running: Vec::new(),
                seen: HashSet::new(),
                max_term: None,
                restart_at: None,
                gone_for_good: false,
                next_call: 0,
                calls: HashMap::new(),
                received: 0,
                step_ns: 0,
            })
            .collect();
        let loss = if rng.gen_bool(0.5) {
            rng.gen_range(0.0..0.05)
        } else {
            0.0
        };
        let mut sim = Sim {
            seed,
            rng,
            now: 0,
            topology,
            nodes,
            side: vec![0; n],
            adj: vec![BTreeSet::new(); n],
            events: BTreeMap::new(),
            gossip: HashMap::new(),
            gossip_age: VecDeque::new(),
            next_msg: 0,
            loss,
            subs: Vec::new(),
            leaders: HashMap::new(),
            dual: HashMap::new(),
            dual_dag: HashMap::new(),
            figures: Figures::default(),
            trace: VecDeque::new(),
            verbose,
            timed: false,
        };
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn log(&mut self, line: String) {
        if self.verbose {
            println!("t={} {line}", self.now);
        }
        self.trace.push_back(format!("t={} {line}", self.now));
        while self.trace.len() > TRACE_KEEP {
            self.trace.pop_front();
        }
    }

    fn report(&self, what: &str) -> String {
        let mut s = format!(
            "cluster sim seed {} ({:?}, {} nodes) failed at tick {}: {what}\nnodes:\n",
            self.seed,
            self.topology,
            self.nodes.len(),
            self.now
        );
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.core {
                Some(c) => s.push_str(&format!(
                    "  {} side {} leader {:?} term {:?} members {} conns {:?}\n",
                    n.id,
                    self.side[i],
                    c.leader(),
                    c.term().map(|t| (t.epoch, t.candidate.to_string())),
                    c.members().len(),
                    self.neighbours(i)
                )),
                None => s.push_str(&format!("  {} down\n", n.id)),
            }
        }
        s.push_str("trace:\n");
        for l in &self.trace {
            s.push_str(&format!("  {l}\n"));
        }
        s
    }

    fn now(&self) -> Now {
        Now {
            mono_ms: self.now * TICK_MS,
            wall_ms: wall(self.now),
        }
    }

    fn live(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        a != b && self.side[a] == self.side[b]
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.adj[a].contains(&b)
    }

    fn neighbours(&self, i: usize) -> Vec<usize> {
        self.adj[i].iter().copied().collect()
    }

    /// Every connection once, as (smaller, larger).
    fn connections(&self) -> Vec<(usize, usize)> {
        self.adj
            .iter()
            .enumerate()
            .flat_map(|(a, set)| set.iter().filter(move |&&b| b > a).map(move |&b| (a, b)))
            .collect()
    }

    fn index(&self, id: &NodeId) -> Option<usize> {
        id.as_str().strip_prefix('n')?.parse().ok()
    }

    fn delay(&mut self) -> u64 {
        self.rng.gen_range(1..=2)
    }

    fn schedule(&mut self, at: u64, e: Event) {
        self.events.entry(at).or_default().push(e);
    }

    // ---- lifecycle ---------------------------------------------------------------------

    fn start(&mut self, i: usize) {
        let seed = self.rng.gen::<u64>();
        let n = &mut self.nodes[i];
        let core = Core::new(
            Config {
                me: n.id.clone(),
                election: Params::default(),
                ram_per_executor_mb: 128,
                min_free_ram_mb: 0,
                max_executors: None,
                version: "sim".into(),
                private_mesh: false,
                seed,
            },
            n.live.election.clone(),
            n.live.pos.clone(),
            Arc::new(HashVotes::new(n.id.clone())),
            Capacity {
                executors: EXECUTORS,
                available_ram_mb: 1024,
                ram_slots: EXECUTORS as u64,
                cpu_cores: EXECUTORS as u64,
                limited_by: None,
            },
        );
        n.core = Some(core);
        n.inputs.push(Input::Listening(format!("sim/{i}")));
    }

    /// kill -9: memory gone, the disk back to its last flush, connections closed.
    fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.core = None;
        n.gen += 1;
        n.live = n.durable.clone();
        n.unflushed.clear();
        n.inputs.clear();
        n.inbound.clear();
        n.running.clear();
        n.seen.clear();
        n.calls.clear();
        let id = n.id.clone();
        for j in self.neighbours(i) {
            self.disconnect(i, j);
        }
        self.log(format!("{id} crashes"));
    }

    fn connect(&mut self, a: usize, b: usize) {
        if self.adj[a].insert(b) {
            self.adj[b].insert(a);
            let (ia, ib) = (self.nodes[a].id.clone(), self.nodes[b].id.clone());
            self.nodes[a].inputs.push(Input::Connected(ib));
            self.nodes[b].inputs.push(Input::Connected(ia));
        }
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        if self.adj[a].remove(&b) {
            self.adj[b].remove(&a);
            let (ia, ib) = (self.nodes[a].id.clone(), self.nodes[b].id.clone());
            if self.live(a) {
                self.nodes[a].inputs.push(Input::Disconnected(ib));
            }
            if self.live(b) {
                self.nodes[b].inputs.push(Input::Disconnected(ia));
            }
        }
    }

    fn partition(&mut self, sides: Vec<u8>) {
        self.side = sides;
        let cut: Vec<(usize, usize)> = self
            .connections()
            .into_iter()
            .filter(|&(a, b)| !self.reachable(a, b))
            .collect();
        for (a, b) in cut {
            self.disconnect(a, b);
        }
        self.log(format!("partition {:?}", self.side));
    }

    /// Every live node dials every known peer it is not connected to and can reach.
    fn dial(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.live(i) {
                continue;
            }
            let known: Vec<usize> = self.nodes[i].known.iter().copied().collect();
            for j in known {
                if self.live(j) && self.reachable(i, j) && !self.connected(i, j) {
                    self.connect(i, j);
                }
            }
        }
    }

    // ---- the network -------------------------------------------------------------------

    fn broadcast(&mut self, i: usize, g: Gossip) {
        self.next_msg += 1;
        let msg = self.next_msg;
        let author = self.nodes[i].id.clone();
        self.gossip.insert(msg, (author, g));
        self.gossip_age.push_back((self.now, msg));
        self.nodes[i].seen.insert(msg);
        for j in self.neighbours(i) {
            self.hop(msg, i, j);
        }
    }

    fn hop(&mut self, msg: u64, from: usize, to: usize) {
        if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
            return;
        }
        let at = self.now + self.delay();
        self.schedule(at, Event::Hop { msg, from, to });
    }

    fn send(&mut self, i: usize, to: &NodeId, token: u64, req: Request) {
        let gen = self.nodes[i].gen;
        let fail = |sim: &mut Sim, why: &str, after: u64| {
            let at = sim.now + after;
            sim.schedule(
                at,
                Event::Answer {
                    to: i,
                    gen,
                    token,
                    answer: Err(why.to_string()),
                },
            );
        };
        let Some(j) = self.index(to) else {
            return fail(self, "unknown peer", 1);
        };
        if !self.connected(i, j) {
            // A request dials on demand a peer whose address this node knows.
            if self.live(j) && self.reachable(i, j) && self.nodes[i].known.contains(&j) {
                self.connect(i, j);
            } else {
                return fail(
                    self,
                    "dialing failed: no connection and no reachable known address",
                    1,
                );
            }
        }
        if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
            return fail(self, "request timed out", RPC_TIMEOUT);
        }
        let at = self.now + self.delay();
        self.schedule(
            at,
            Event::Req {
                from: i,
                from_gen: gen,
                to: j,
                token,
                req,
            },
        );
    }

    fn deliver(&mut self, e: Event) {
        match e {
            Event::Hop { msg, from, to } => {
                if !self.live(to) || !self.connected(from, to) || self.nodes[to].seen.contains(&msg)
                {
                    return;
                }
                let Some((author, g)) = self.gossip.get(&msg).cloned() else {
                    return;
                };
                self.nodes[to].seen.insert(msg);
                self.nodes[to].received += 1;
                if author != self.nodes[to].id {
                    self.nodes[to].inputs.push(Input::Gossip {
                        from: author,
                        msg: g,
                    });
                }
                // On to a few neighbours (gossipsub's mesh), not back where it came from.
                let mut next: Vec<usize> = self
                    .neighbours(to)
                    .into_iter()
                    .filter(|&k| k != from)
                    .collect();
                while next.len() > GOSSIP_FANOUT {
                    let k = self.rng.gen_range(0..next.len());
                    next.swap_remove(k);
                }
                for k in next {
                    self.hop(msg, to, k);
                }
            }
            Event::Req {
                from,
                from_gen,
                to,
                token,
                req,
            } => {
                if !self.live(to) || !self.connected(from, to) {
                    let at = self.now + 1;
                    self.schedule(
                        at,
                        Event::Answer {
                            to: from,
                            gen: from_gen,
                            token,
                            answer: Err("connection closed before a response was received".into()),
                        },
                    );
                    return;
                }
                let n = &mut self.nodes[to];
                n.next_rid += 1;
                let rid = n.next_rid;
                n.inbound.insert(rid, (from, from_gen, token));
                n.received += 1;
                let from_id = self.nodes[from].id.clone();
                self.nodes[to].inputs.push(Input::Request {
                    from: from_id,
                    rid,
                    req,
                });
            }
            Event::Answer {
                to,
                gen,
                token,
                answer,
            } => {
                if self.live(to) && self.nodes[to].gen == gen {
                    self.nodes[to].inputs.push(Input::Answer { token, answer });
                }
            }
            Event::Fetched {
                node,
                gen,
                token,
                hashes,
                ok,
            } => {
                if !self.live(node) || self.nodes[node].gen != gen {
                    return;
                }
                if ok {
                    self.nodes[node].modules.extend(hashes);
                }
                let result = if ok {
                    Ok(())
                } else {
                    Err("no peer could give the modules".to_string())
                };
                self.nodes[node]
                    .inputs
                    .push(Input::Fetched { token, result });
            }
        }
    }

    fn respond(&mut self, j: usize, rid: u64, resp: Response) {
        let Some((i, gen, token)) = self.nodes[j].inbound.remove(&rid) else {
            return;
        };
        let answer = if self.connected(i, j) && !(self.loss > 0.0 && self.rng.gen_bool(self.loss)) {
            Ok(resp)
        } else {
            Err("connection closed before a response was received".into())
        };
        let at = self.now + self.delay();
        self.schedule(
            at,
            Event::Answer {
                to: i,
                gen,
                token,
                answer,
            },
        );
    }

    // ---- a node's step -----------------------------------------------------------------

    fn step(&mut self, i: usize, extra: Vec<Input>) -> Result<(), String> {
        let now = self.now();
        let mut inputs = std::mem::take(&mut self.nodes[i].inputs);
        inputs.extend(extra);
        let n = &mut self.nodes[i];
        let Some(core) = n.core.as_mut() else {
            return Ok(());
        };
        let started = self.timed.then(std::time::Instant::now);
        let outputs = core
            .step(
                now,
                inputs,
                &SimReads {
                    mem: &n.live,
                    modules: &n.modules,
                },
            )
            .map_err(|e| format!("store error: {e}"))?;
        if let Some(t) = started {
            n.step_ns += t.elapsed().as_nanos();
        }
        for o in outputs {
            self.output(i, o)?;
        }
        self.check_term(i)
    }

    fn output(&mut self, i: usize, o: Output) -> Result<(), String> {
        match o {
            Output::Write(w) => {
                let n = &mut self.nodes[i];
                n.live.apply(&w);
                n.unflushed.push(w);
            }
            Output::Flush => {
                let n = &mut self.nodes[i];
                for w in n.unflushed.drain(..) {
                    n.durable.apply(&w);
                }
            }
            Output::Changed => {}
            Output::Broadcast(g) => self.broadcast(i, g),
            Output::Send { to, token, req } => self.send(i, &to, token, req),
            Output::Respond { rid, resp } => {
                if let Response::Submitted { id } = &resp {
                    self.check_ack(i, *id)?;
                }
                self.respond(i, rid, resp);
            }
            Output::Run(job) => {
                let done_at = self.now + self.rng.gen_range(1..=4);
                let started = self.now;
                self.nodes[i].running.push(RunningJob {
                    job,
                    done_at,
                    started,
                });
            }
            Output::Stop(key) => {
                let n = &mut self.nodes[i];
                if let Some(k) = n
                    .running
                    .iter()
                    .position(|r| (r.job.dag, r.job.task, r.job.attempt) == key)
                {
                    n.running.remove(k);
                    n.inputs.push(Input::JobDone(JobDone {
                        key,
                        outcome: Err("cancelled".into()),
                        run_ms: 0,
                        stderr: None,
                    }));
                }
            }
            Output::Fetch {
                token,
                hashes,
                from,
            } => {
                let source = from.iter().filter_map(|f| self.index(f)).find(|&j| {
                    self.live(j)
                        && self.reachable(i, j)
                        && (self.connected(i, j) || self.nodes[i].known.contains(&j))
                        && hashes.iter().all(|h| self.nodes[j].modules.contains(h))
                });
                let at = self.now + self.delay();
                let gen = self.nodes[i].gen;
                self.schedule(
                    at,
                    Event::Fetched {
                        node: i,
                        gen,
                        token,
                        hashes,
                        ok: source.is_some(),
                    },
                );
            }
            Output::Reply { call, reply } => {
                let Some(dag) = self.nodes[i].calls.remove(&call) else {
                    return Ok(());
                };
                match reply {
                    Ok(Answer::Submitted(id)) => {
                        self.check_ack(i, id)?;
                        if !self.subs[dag].acked {
                            self.log(format!("DAG {dag} acknowledged at {}", self.nodes[i].id));
                        }
                        self.subs[dag].acked = true;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.log(format!(
                            "DAG {dag} submit at {} failed: {e}",
                            self.nodes[i].id
                        ));
                        // The client tries again later, at some other node, with the same id.
                        if self.rng.gen_bool(0.5) {
                            self.subs[dag].submitted = false;
                            self.figures.retried_submits += 1;
                        }
                    }
                }
            }
            Output::LearnAddrs { node, .. } => {
                if let Some(j) = self.index(&node) {
                    if j != i && self.nodes[i].known.len() < 64 {
                        self.nodes[i].known.insert(j);
                    }
                }
            }
        }
        Ok(())
    }

    // ---- invariants --------------------------------------------------------------------

    fn check_term(&mut self, i: usize) -> Result<(), String> {
        let Some(core) = &self.nodes[i].core else {
            return Ok(());
        };
        let me = self.nodes[i].id.clone();
        let term = core.term().cloned();
        if core.is_leader() {
            if let Some(t) = &term {
                if t.candidate != me {
                    return Err(format!("{me} leads {t:?}, which is not its own term"));
                }
                match self.leaders.get(t) {
                    Some(other) if *other != me => {
                        return Err(format!("two leaders of {t:?}: {other} and {me}"))
                    }
                    Some(_) => {}
                    None => {
                        self.leaders.insert(t.clone(), me.clone());
                        self.log(format!("{me} leads {t:?}"));
                    }
                }
            }
        }
        if let Some(t) = term {
            if let Some(max) = &self.nodes[i].max_term {
                if t < *max {
                    return Err(format!("{me}: term went down from {max:?} to {t:?}"));
                }
            }
            self.nodes[i].max_term = Some(t);
        }
        Ok(())
    }

    /// An acknowledgement leaves the DAG on two disks, unless its controller was alone.
    fn check_ack(&mut self, i: usize, id: DagId) -> Result<(), String> {
        let holders = self.nodes.iter().filter(|n| n.durable.holds(&id)).count();
        let alone = self.nodes[i]
            .core
            .as_ref()
            .is_some_and(|c| c.is_leader() && c.alone());
        if alone {
            if let Some(s) = self.subs.iter_mut().find(|s| s.id == id) {
                s.acked_alone = true;
            }
        }
        if holders < 2 && !alone {
            return Err(format!(
                "DAG {id} acknowledged by {} while on {holders} disk(s)",
                self.nodes[i].id
            ));
        }
        Ok(())
    }

    /// Connected groups of live nodes.
    fn groups(&self) -> Vec<Vec<usize>> {
        let mut seen = vec![false; self.nodes.len()];
        let mut out = Vec::new();
        for s in 0..self.nodes.len() {
            if seen[s] || !self.live(s) {
                continue;
            }
            let mut group = Vec::new();
            let mut stack = vec![s];
            seen[s] = true;
            while let Some(i) = stack.pop() {
                group.push(i);
                for j in self.neighbours(i) {
                    if !seen[j] && self.live(j) {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
            group.sort_unstable();
            out.push(group);
        }
        out
    }

    /// One controller per connected group (after a grace period), and no DAG active on two
    /// controllers of one group.
    fn check_groups(&mut self) -> Result<(), String> {
        let mut dual = HashMap::new();
        let mut dual_dag = HashMap::new();
        for group in self.groups() {
            let leaders: Vec<usize> = group
                .iter()
                .copied()
                .filter(|&i| self.nodes[i].core.as_ref().is_some_and(Core::is_leader))
                .collect();
            if leaders.len() < 2 {
                continue;
            }
            let n = self.dual.get(&group).copied().unwrap_or(0) + 1;
            let mut active: HashMap<DagId, usize> = HashMap::new();
            for &l in &leaders {
                if let Some(lead) = self.nodes[l].core.as_ref().and_then(Core::lead) {
                    for (id, run) in lead.planner.runs() {
                        if !run.is_finished() && run.meta.counts.running > 0 {
                            *active.entry(*id).or_default() += 1;
                        }
                    }
                }
            }
            for (id, count) in active {
                if count > 1 {
                    let key = (group.clone(), id);
                    let d = self.dual_dag.get(&key).copied().unwrap_or(0) + 1;
                    self.figures.worst_dual_dag = self.figures.worst_dual_dag.max(d);
                    if d > GRACE {
                        return Err(format!(
                            "DAG {id} run by {} controllers in one group for {d} ticks",
                            count
                        ));
                    }
                    dual_dag.insert(key, d);
                }
            }
            self.figures.worst_dual_controllers = self.figures.worst_dual_controllers.max(n);
            if n > GRACE {
                let names: Vec<String> = leaders
                    .iter()
                    .map(|&l| self.nodes[l].id.to_string())
                    .collect();
                return Err(format!(
                    "{} controllers ({}) in one connected group for {n} ticks",
                    leaders.len(),
                    names.join(", ")
                ));
            }
            dual.insert(group, n);
        }
        self.dual = dual;
        self.dual_dag = dual_dag;
        Ok(())
    }

    /// Every succeeded record, anywhere, carries the fault-free output; attempt times are
    /// ordered.
    fn check_contents(&self) -> Result<(), String> {
        let by_id: HashMap<DagId, &Submission> = self.subs.iter().map(|s| (s.id, s)).collect();
        for n in &self.nodes {
            for ((dag, idx), r) in &n.live.tasks {
                for a in &r.log {
                    let (q, s, f) = (a.queued_ms, a.started_ms, a.finished_ms);
                    let ordered = match (q, s, f) {
                        (Some(q), Some(s), Some(f)) => q <= s && s <= f,
                        (Some(q), Some(s), None) => q <= s,
                        (None, Some(s), Some(f)) => s <= f,
                        _ => true,
                    };
                    if !ordered || (a.outcome != AttemptOutcome::Running && f.is_none()) {
                        return Err(format!(
                            "{}: DAG {dag} task {idx}: attempt times out of order: {a:?}",
                            n.id
                        ));
                    }
                }
                if r.state != TaskState::Succeeded {
                    continue;
                }
                let Some(sub) = by_id.get(dag) else {
                    return Err(format!("{}: a DAG nobody submitted: {dag}", n.id));
                };
                let want = sub
                    .expected
                    .get(*idx as usize)
                    .and_then(|t| t.output.as_ref());
                if r.output.as_ref() != want {
                    return Err(format!(
                        "{}: DAG {dag} task {idx} succeeded with {:?}, expected {want:?}",
                        n.id, r.output
                    ));
                }
            }
        }
        Ok(())
    }

    // ---- the run -----------------------------------------------------------------------

    fn tick(&mut self, faults: bool) -> Result<(), String> {
        self.now += 1;
        if faults {
            self.faults();
        }
        // Restarts due.
        for i in 0..self.nodes.len() {
            if self.nodes[i].restart_at.is_some_and(|t| t <= self.now) && !self.live(i) {
                self.nodes[i].restart_at = None;
                self.start(i);
                let id = self.nodes[i].id.clone();
                self.log(format!("{id} restarts"));
            }
        }
        self.dial();
        if let Some(events) = self.events.remove(&self.now) {
            for e in events {
                self.deliver(e);
            }
        }
        while self
            .gossip_age
            .front()
            .is_some_and(|(t, _)| t + 10 < self.now)
        {
            if let Some((_, m)) = self.gossip_age.pop_front() {
                self.gossip.remove(&m);
                for n in &mut self.nodes {
                    n.seen.remove(&m);
                }
            }
        }
        // Executors finishing.
        for i in 0..self.nodes.len() {
            let now = self.now;
            let n = &mut self.nodes[i];
            let (done, running): (Vec<RunningJob>, Vec<RunningJob>) =
                std::mem::take(&mut n.running)
                    .into_iter()
                    .partition(|r| r.done_at <= now);
            n.running = running;
            for r in done {
                n.inputs.push(Input::JobDone(JobDone {
                    key: (r.job.dag, r.job.task, r.job.attempt),
                    outcome: outcome(&r.job),
                    run_ms: (now - r.started) * TICK_MS,
                    stderr: None,
                }));
            }
        }
        for i in 0..self.nodes.len() {
            self.step(i, vec![Input::Tick])?;
        }
        self.check_groups()?;
        if self.now.is_multiple_of(CHECK_EVERY) {
            self.check_contents()?;
        }
        if self.figures.first_agreement_tick.is_none() && self.agreed().is_some() {
            self.figures.first_agreement_tick = Some(self.now);
        }
        Ok(())
    }

    fn faults(&mut self) {
        let n = self.nodes.len();
        // Submissions at random live nodes.
        if self.subs.len() < MAX_DAGS && self.rng.gen_bool(0.02) {
            let k = self.subs.len();
            let spec = random_dag(&mut self.rng, k);
            let expected = expected(&spec);
            let id = DagId::new(wall(self.now), k as u32);
            self.subs.push(Submission {
                id,
                spec: Arc::new(spec),
                expected,
                acked: false,
                acked_alone: false,
                submitted: false,
            });
        }
        let unsubmitted: Vec<usize> = (0..self.subs.len())
            .filter(|&k| !self.subs[k].submitted)
            .collect();
        for k in unsubmitted {
            let live: Vec<usize> = (0..n).filter(|&i| self.live(i)).collect();
            if live.is_empty() || !self.rng.gen_bool(0.2) {
                continue;
            }
            let at = live[self.rng.gen_range(0..live.len())];
            self.submit(k, at);
        }
        // Crashes and restarts.
        if self.rng.gen_bool(0.01) {
            let i = self.rng.gen_range(0..n);
            if self.live(i) {
                self.crash(i);
                // Only a node whose loss leaves the others able to find each other (what
                // they know of each other still connects them): a star or chain whose
                // bootstrap node is gone before the others learned of each other never
                // forms, as in life.
                let forever = !self.nodes.iter().any(|m| m.gone_for_good)
                    && self.rng.gen_bool(0.15)
                    && n >= 3
                    && self.known_connected_without(i);
                if forever {
                    self.nodes[i].gone_for_good = true;
                    let id = self.nodes[i].id.clone();
                    self.log(format!("{id} is gone for good"));
                } else {
                    let back = self.now + self.rng.gen_range(5..80);
                    self.nodes[i].restart_at = Some(back);
                }
            }
        }
        // Partitions come and go.
        if self.rng.gen_bool(0.005) {
            if self.side.iter().all(|&s| s == 0) {
                let sides: Vec<u8> = (0..n).map(|_| u8::from(self.rng.gen_bool(0.5))).collect();
                self.partition(sides);
            } else {
                self.partition(vec![0; n]);
            }
        }
        // Connections drop (and are redialled).
        if self.rng.gen_bool(0.02) {
            let conns = self.connections();
            if !conns.is_empty() {
                let k = self.rng.gen_range(0..conns.len());
                let (a, b) = conns[k];
                self.disconnect(a, b);
                let (ia, ib) = (self.nodes[a].id.clone(), self.nodes[b].id.clone());
                self.log(format!("connection {ia}-{ib} drops"));
            }
        }
    }

    /// Whether the nodes other than `gone` still know each other, transitively.
    fn known_connected_without(&self, gone: usize) -> bool {
        let n = self.nodes.len();
        let start = (0..n).find(|&i| i != gone);
        let Some(start) = start else {
            return true;
        };
        let mut seen = vec![false; n];
        seen[start] = true;
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            for (j, seen_j) in seen.iter_mut().enumerate() {
                let knows = self.nodes[i].known.contains(&j) || self.nodes[j].known.contains(&i);
                if j != gone && !*seen_j && knows {
                    *seen_j = true;
                    stack.push(j);
                }
            }
        }
        (0..n).all(|i| i == gone || seen[i])
    }

    fn submit(&mut self, k: usize, at: usize) {
        let sub = &mut self.subs[k];
        sub.submitted = true;
        let (id, spec) = (sub.id, Arc::clone(&sub.spec));
        // The CLI uploads the modules to the node it submits at.
        self.nodes[at]
            .modules
            .extend(spec.modules.values().cloned());
        let n = &mut self.nodes[at];
        n.next_call += 1;
        let call = n.next_call;
        n.calls.insert(call, k);
        n.inputs.push(Input::Call {
            call,
            what: Call::Submit {
                id,
                spec,
                source: None,
            },
        });
        let name = self.nodes[at].id.clone();
        self.log(format!("DAG {k} ({id}) submitted at {name}"));
    }

    /// Faults over: the network whole, everyone but the one gone for good back up.
    fn calm(&mut self) {
        let n = self.nodes.len();
        self.partition(vec![0; n]);
        self.loss = 0.0;
        for i in 0..n {
            if !self.live(i) && !self.nodes[i].gone_for_good {
                self.nodes[i].restart_at = Some(self.now + 1);
            }
        }
    }

    /// The live leader every live node agrees on, if they do.
    fn agreed(&self) -> Option<NodeId> {
        let mut leader: Option<&NodeId> = None;
        for n in &self.nodes {
            let Some(c) = &n.core else { continue };
            let l = c.leader()?;
            match leader {
                None => leader = Some(l),
                Some(x) if x != l => return None,
                _ => {}
            }
        }
        let leader = leader?;
        self.live(self.index(leader)?).then(|| leader.clone())
    }

    fn controller(&self) -> Option<&Core> {
        let id = self.agreed()?;
        self.nodes[self.index(&id)?].core.as_ref()
    }

    /// At the end: every acknowledged DAG finished on the controller, as in the fault-free
    /// run.
    fn check_end(&mut self) -> Result<(), String> {
        let Some(ctl) = self.controller() else {
            return Err("no agreed controller at the end".into());
        };
        let i = self.index(ctl.me()).expect("controller index");
        let reads = SimReads {
            mem: &self.nodes[i].live,
            modules: &self.nodes[i].modules,
        };
        let mut finished = 0;
        for (k, sub) in self.subs.iter().enumerate() {
            let meta = reads.meta(&sub.id).map_err(|e| e.to_string())?;
            let Some(meta) = meta else {
                // A DAG acknowledged by a lone controller lives on one disk; it is lost only
                // with that node.
                let lone_copy_gone = sub.acked_alone
                    && self
                        .nodes
                        .iter()
                        .all(|n| !n.durable.holds(&sub.id) || n.gone_for_good);
                if sub.acked && !lone_copy_gone {
                    let holders: Vec<String> = self
                        .nodes
                        .iter()
                        .filter(|n| n.durable.holds(&sub.id))
                        .map(|n| {
                            format!("{}{}", n.id, if n.gone_for_good { " (gone)" } else { "" })
                        })
                        .collect();
                    return Err(format!(
                        "acknowledged DAG {k} ({}) is lost (acknowledged alone: {}; on the disks of {holders:?})",
                        sub.id, sub.acked_alone
                    ));
                }
                continue;
            };
            if !meta.state.is_terminal() {
                if sub.acked {
                    return Err(format!(
                        "acknowledged DAG {k} ({}) never finished: {meta:?}",
                        sub.id
                    ));
                }
                continue;
            }
            finished += 1;
            let tasks = reads
                .tasks(&sub.id, sub.spec.dag.tasks.len())
                .map_err(|e| e.to_string())?;
            for (t, (got, want)) in tasks.iter().zip(&sub.expected).enumerate() {
                if !same(got, want) {
                    return Err(format!(
                        "DAG {k} task {t} ended as {got:?}, the fault-free run gives {want:?}"
                    ));
                }
            }
        }
        self.figures.acked = self.subs.iter().filter(|s| s.acked).count();
        self.figures.finished = finished;
        self.figures.controller_changes = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| c.stats().controller_changes)
            .max()
            .unwrap_or(0);
        Ok(())
    }
}

/// One random run: `n` nodes (3–5), a random topology, faults, then calm.
fn random_run(seed: u64, verbose: bool) -> Result<Figures, String> {
    let mut rng = Rng64::seed_from_u64(seed ^ 0x5eed);
    let n = rng.gen_range(3..=5);
    let topology = match rng.gen_range(0..3) {
        0 => Topology::Full,
        1 => Topology::Star,
        _ => Topology::Chain,
    };
    let mut sim = Sim::new(seed, n, topology, verbose);
    let run = (|| {
        for _ in 0..FAULT_TICKS {
            sim.tick(true)?;
        }
        sim.calm();
        // Clients submit again what they never saw acknowledged (same id: the same DAG).
        for k in 0..sim.subs.len() {
            if !sim.subs[k].acked && sim.rng.gen_bool(0.5) {
                sim.subs[k].submitted = false;
            }
        }
        for t in 0..CALM_TICKS {
            sim.tick(false)?;
            // Clients retry what failed, now that the network is whole.
            if t == 50 {
                let unsubmitted: Vec<usize> = (0..sim.subs.len())
                    .filter(|&k| !sim.subs[k].submitted)
                    .collect();
                for k in unsubmitted {
                    let live: Vec<usize> = (0..n).filter(|&i| sim.live(i)).collect();
                    let at = live[sim.rng.gen_range(0..live.len())];
                    sim.submit(k, at);
                }
            }
        }
        sim.check_contents()?;
        sim.check_end()
    })();
    run.map_err(|e| sim.report(&e))?;
    Ok(sim.figures)
}

#[test]
fn random_meshes_keep_the_invariants() {
    let started = std::time::Instant::now();
    let seeds = seeds_from_env("CLUSTER_SEEDS", 0..2000);
    let figures = over_seeds(seeds.clone(), |seed| random_run(seed, false));
    let acked: usize = figures.iter().map(|f| f.acked).sum();
    let finished: usize = figures.iter().map(|f| f.finished).sum();
    let retried: usize = figures.iter().map(|f| f.retried_submits).sum();
    let worst_dual = figures
        .iter()
        .map(|f| f.worst_dual_controllers)
        .max()
        .unwrap_or(0);
    let worst_dag = figures.iter().map(|f| f.worst_dual_dag).max().unwrap_or(0);
    println!(
        "cluster sim: {} seeds in {:.1?}: {acked} DAGs acknowledged, {finished} finished, {retried} submissions retried; worst two-controller stretch in one group {worst_dual} ticks, worst DAG on two controllers {worst_dag} ticks",
        seeds.end - seeds.start,
        started.elapsed()
    );
    assert!(acked > 0 && finished > 0, "the runs did some work");
}

/// Replays one seed with a trace: `CLUSTER_SEED=n`.
#[test]
#[ignore]
fn replay() {
    let seed = std::env::var("CLUSTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    match random_run(seed, true) {
        Ok(f) => println!("seed {seed} ok: {f:?}"),
        Err(e) => panic!("{e}"),
    }
}

// ---- scale --------------------------------------------------------------------------------

/// One row of the scale table.
#[derive(Debug, Default)]
struct ScaleRow {
    agree_ms: u64,
    failover_ms: u64,
    idle_msgs_per_node_s: f64,
    load_msgs_per_node_s: f64,
    tasks_per_s: f64,
    /// The controller's own CPU (its `Core::step` calls), ms per simulated second, idle.
    controller_ms_per_s_idle: f64,
    controller_us_per_task: f64,
}

/// A DAG of `n` independent tasks.
fn wide_dag(n: usize, k: usize) -> SpecRecord {
    let mut yaml = format!("name: wide{k}\ntasks:\n");
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{id: t{i}, module: ok.wasm, inputs: [\"{k}-{i}\"]}}\n"
        ));
    }
    let dag = parse_dag(&yaml).expect("valid");
    let modules = BTreeMap::from([("ok.wasm".to_string(), module_hash("ok.wasm"))]);
    SpecRecord { dag, modules }
}

fn messages(sim: &Sim) -> u64 {
    sim.nodes.iter().map(|n| n.received).sum()
}

/// `n` nodes joined through one bootstrap address (a star of known addresses; peer exchange
/// does the rest), no faults: time to a controller, messages at idle and under a stream of
/// DAGs, controller cost per task, and failover when the controller dies.
fn scale_run(n: usize, seed: u64) -> ScaleRow {
    let mut sim = Sim::new(seed, n, Topology::Star, false);
    sim.loss = 0.0;
    sim.timed = true;
    let mut row = ScaleRow::default();
    while sim.agreed().is_none() && sim.now < 600 {
        sim.tick(false).expect("invariants");
    }
    row.agree_ms = sim.now * TICK_MS;
    // Settle (every node announced, connections made), then measure idle traffic.
    for _ in 0..50 {
        sim.tick(false).expect("invariants");
    }
    let (m0, t0) = (messages(&sim), sim.now);
    for node in &mut sim.nodes {
        node.step_ns = 0;
    }
    for _ in 0..200 {
        sim.tick(false).expect("invariants");
    }
    let secs = (sim.now - t0) as f64 * TICK_MS as f64 / 1000.0;
    row.idle_msgs_per_node_s = (messages(&sim) - m0) as f64 / n as f64 / secs;
    if let Some(i) = sim.agreed().and_then(|l| sim.index(&l)) {
        row.controller_ms_per_s_idle = sim.nodes[i].step_ns as f64 / 1e6 / secs;
    }
    // Load: a 200-task DAG every second, submitted at node 1, for 20 s.
    let leader = sim
        .agreed()
        .and_then(|l| sim.index(&l))
        .expect("controller");
    for node in &mut sim.nodes {
        node.step_ns = 0;
    }
    let done_before: u64 = sim
        .nodes
        .iter()
        .filter_map(|n| n.core.as_ref())
        .map(|c| c.stats().jobs_succeeded)
        .sum();
    let (m0, t0) = (messages(&sim), sim.now);
    for k in 0..20 {
        let spec = wide_dag(200, k);
        let id = DagId::new(wall(sim.now), k as u32 + 1000);
        sim.subs.push(Submission {
            id,
            expected: expected(&spec),
            spec: Arc::new(spec),
            acked: false,
            acked_alone: false,
            submitted: false,
        });
        let at = 1 % n;
        sim.submit(sim.subs.len() - 1, at);
        for _ in 0..10 {
            sim.tick(false).expect("invariants");
        }
    }
    let secs = (sim.now - t0) as f64 * TICK_MS as f64 / 1000.0;
    row.load_msgs_per_node_s = (messages(&sim) - m0) as f64 / n as f64 / secs;
    let done: u64 = sim
        .nodes
        .iter()
        .filter_map(|n| n.core.as_ref())
        .map(|c| c.stats().jobs_succeeded)
        .sum::<u64>()
        - done_before;
    row.tasks_per_s = done as f64 / secs;
    // Per task: the controller's CPU under load less what it spends idle (membership,
    // heartbeats, replication acknowledgements), over the tasks finished.
    let idle_ns = row.controller_ms_per_s_idle * 1e6 * secs;
    row.controller_us_per_task =
        (sim.nodes[leader].step_ns as f64 - idle_ns).max(0.0) / 1000.0 / done.max(1) as f64;
    // Failover: the controller dies; time until every live node agrees on another.
    sim.crash(leader);
    let t0 = sim.now;
    while sim.now < t0 + 600 {
        sim.tick(false).expect("invariants");
        if sim.agreed().is_some() {
            break;
        }
    }
    row.failover_ms = (sim.now - t0) * TICK_MS;
    row
}

/// The scale table of BENCHMARKS.md: `cargo test --release -p bx3-node cluster::sim::scale
/// -- --ignored --nocapture` (SCALE_NODES=3,10 to pick sizes).
#[test]
#[ignore]
fn scale() {
    let sizes: Vec<usize> = std::env::var("SCALE_NODES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![3, 10, 30, 100]);
    println!("| nodes | controller agreed | failover | msgs/node/s idle | msgs/node/s load | tasks/s | controller CPU idle, ms/s | controller µs/task |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let rows: Vec<ScaleRow> = (0..3).map(|seed| scale_run(n, seed)).collect();
        let med = |f: &dyn Fn(&ScaleRow) -> f64| {
            let mut v: Vec<f64> = rows.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "| {n} | {:.1} s | {:.1} s | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} |",
            med(&|r| r.agree_ms as f64) / 1000.0,
            med(&|r| r.failover_ms as f64) / 1000.0,
            med(&|r| r.idle_msgs_per_node_s),
            med(&|r| r.load_msgs_per_node_s),
            med(&|r| r.tasks_per_s),
            med(&|r| r.controller_ms_per_s_idle),
            med(&|r| r.controller_us_per_task),
        );
    }
}
