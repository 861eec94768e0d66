//! A deterministic, seeded simulator for the election, in the style of iroh-gossip's
//! `proto/sim.rs` and raft-rs's test harness: `u64` node ids on an in-memory router, messages
//! delayed 0–2 ticks, and per-seed faults (loss, partitions, crashes with restarts from the
//! last persisted state — a crash may tear a step's outputs part-way — and joins of new
//! nodes). Checked as the run goes:
//!
//! - (a) no two nodes are ever seen leading the same term, and a node leads only its own;
//! - (b) no node's term ever decreases, across restarts too;
//! - (c) no node votes for two candidates in one epoch (from its persisted votes and the
//!   votes it sends, across restarts);
//! - durability: a vote is persisted before it is sent, a self-vote before the request, a
//!   won term before the node acts as its leader;
//! - up-to-date: a vote goes only to a candidate that asked with a log at least the voter's;
//! - (d) once the faults stop (the last 200 ticks: whole, no loss), all live nodes agree on
//!   one live leader within 40 ticks, and it stays put to the end.
//!
//! A failure reports the seed, the node states and the last events. Replay one seed with its
//! full trace:
//!
//! ```text
//! ELECTION_SEED=1234 cargo test -p bx3-node election::sim::replay -- --ignored --nocapture
//! ```
//!
//! and hunt longer with `ELECTION_SEEDS=0..200000 cargo test --release -p bx3-node
//! election::sim::random -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::{Rng, RngCore, SeedableRng};

use super::*;

type Id = u64;

/// Every node tells every other it is alive this often (membership traffic, seen as `Heard`).
const ANNOUNCE_EVERY: u64 = 20;
/// Random runs: this many ticks, the last `CALM` of them fault-free.
const RUN_TICKS: u64 = 600;
const CALM: u64 = 200;
/// After faults stop, all live nodes must agree on a live leader within this many ticks.
const AGREE_WITHIN: u64 = 40;
/// Events kept for a failure report.
const TRACE_KEEP: usize = 60;

/// splitmix64 behind `rand`'s traits: the simulator draws millions of numbers and the
/// ChaCha-based `StdRng` is slow in debug builds.
pub(crate) struct Rng64(pub(crate) u64);

impl RngCore for Rng64 {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl SeedableRng for Rng64 {
    type Seed = [u8; 8];

    fn from_seed(seed: [u8; 8]) -> Self {
        Rng64(u64::from_le_bytes(seed))
    }
}

struct Node {
    id: Id,
    /// `None` while crashed.
    m: Option<Election<Id>>,
    /// The last `Persist` output: all that survives a crash.
    disk: Option<Persistent<Id>>,
    /// The node's replicated log position (on disk too).
    pos: LogPos<Id>,
    /// Partition side; messages only flow within a side.
    side: u8,
    /// Crashes by the end of this tick: at the first step with outputs that it tears (a coin
    /// flip each), else at the end of that tick.
    doomed: Option<u64>,
    restart_at: Option<u64>,
    /// Offset of its announcements.
    phase: u64,
    /// Highest term observed, across restarts.
    max_term: Option<Term<Id>>,
}

struct Envelope {
    from: usize,
    to: usize,
    /// `None`: an announcement, naming the sender's leader (delivered as `Supports`).
    msg: Option<Message<Id>>,
    leader: Option<Id>,
}

struct Sim {
    seed: u64,
    rng: Rng64,
    params: Params,
    now: u64,
    nodes: Vec<Node>,
    /// Messages due at tick `t` wait in `queues[t % 3]` (delays are 0–2 ticks).
    queues: [Vec<Envelope>; 3],
    spare: Vec<Envelope>,
    loss: f64,
    /// One-way blocks: messages from the first slot to the second are dropped.
    blocked: BTreeSet<(usize, usize)>,
    /// A new leader appends a first entry of its term (Raft's no-op).
    noop: bool,
    /// Leaders append entries now and then.
    appends: bool,
    /// Followers catch up with their leader's log.
    replicate: bool,
    /// Followers stamp what they replicate with the leader's current term (as bx3's
    /// replication does) instead of copying the leader's position (as Raft's log does).
    stamp: bool,
    /// The log position each candidacy asked with.
    asked: BTreeMap<Term<Id>, LogPos<Id>>,
    /// Every term ever seen led, and by whom.
    leaders: BTreeMap<Term<Id>, Id>,
    /// Every vote ever cast: (voter, epoch) -> candidate.
    votes: BTreeMap<(Id, u64), Id>,
    trace: VecDeque<String>,
    verbose: bool,
    /// A random run: its seed can be replayed with `replay`.
    replayable: bool,
    out: Vec<Output<Id>>,
    stats: Stats,
}

/// What happened in a run (summed over seeds for the report).
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    candidacies: u64,
    wins: u64,
    partitions: u64,
    crashes: u64,
    /// Crashes part-way through the outputs of a step.
    torn: u64,
    restarts: u64,
    joins: u64,
    delivered: u64,
    lost: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.candidacies += o.candidacies;
        self.wins += o.wins;
        self.partitions += o.partitions;
        self.crashes += o.crashes;
        self.torn += o.torn;
        self.restarts += o.restarts;
        self.joins += o.joins;
        self.delivered += o.delivered;
        self.lost += o.lost;
    }
}

impl Sim {
    fn new(seed: u64, verbose: bool) -> Sim {
        Sim {
            seed,
            rng: Rng64::seed_from_u64(seed),
            params: Params::default(),
            now: 0,
            nodes: Vec::new(),
            queues: [Vec::new(), Vec::new(), Vec::new()],
            spare: Vec::new(),
            loss: 0.0,
            blocked: BTreeSet::new(),
            noop: true,
            appends: true,
            replicate: true,
            stamp: false,
            asked: BTreeMap::new(),
            leaders: BTreeMap::new(),
            votes: BTreeMap::new(),
            trace: VecDeque::new(),
            verbose,
            replayable: false,
            out: Vec::new(),
            stats: Stats::default(),
        }
    }

    fn log(&mut self, event: String) {
        if self.verbose {
            println!("t={} {event}", self.now);
        }
        self.trace.push_back(format!("t={} {event}", self.now));
        if self.trace.len() > TRACE_KEEP {
            self.trace.pop_front();
        }
    }

    /// The failure report: seed, what broke, the node states and the last events.
    fn report(&self, what: &str) -> String {
        let mut s = format!(
            "election sim seed {} failed at tick {}: {what}\nnodes:\n",
            self.seed, self.now
        );
        for n in &self.nodes {
            match &n.m {
                None => s.push_str(&format!("  {} down\n", n.id)),
                Some(m) => s.push_str(&format!(
                    "  {} side {} leader {:?} term {:?} epoch {} pos {:?}\n",
                    n.id,
                    n.side,
                    m.leader(),
                    m.term().map(|t| (t.epoch, t.candidate)),
                    m.epoch(),
                    (n.pos.term.map(|t| (t.epoch, t.candidate)), n.pos.seq),
                )),
            }
        }
        s.push_str("last events:\n");
        for e in &self.trace {
            s.push_str("  ");
            s.push_str(e);
            s.push('\n');
        }
        if self.replayable {
            s.push_str(&format!(
                "replay: ELECTION_SEED={} cargo test -p bx3-node election::sim::replay -- --ignored --nocapture",
                self.seed
            ));
        }
        s
    }

    fn live(&self, i: usize) -> bool {
        self.nodes[i].m.is_some()
    }

    fn slot(&self, id: Id) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn fresh_id(&mut self) -> Id {
        loop {
            let id = self.rng.gen_range(1..1000);
            if self.slot(id).is_none() {
                return id;
            }
        }
    }

    fn join(&mut self, id: Id) -> usize {
        let seed = self.rng.next_u64();
        let phase = self.rng.gen_range(0..ANNOUNCE_EVERY);
        self.nodes.push(Node {
            id,
            m: Some(Election::new(
                id,
                self.params,
                None,
                seed,
                std::sync::Arc::new(super::HashVotes::new(id)),
            )),
            disk: None,
            pos: LogPos::default(),
            side: 0,
            doomed: None,
            restart_at: None,
            phase,
            max_term: None,
        });
        self.stats.joins += 1;
        self.log(format!("{id} joins"));
        self.nodes.len() - 1
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i].m = None;
        self.nodes[i].doomed = None;
        let id = self.nodes[i].id;
        self.stats.crashes += 1;
        self.log(format!("{id} crashes"));
    }

    fn restart(&mut self, i: usize) -> Result<(), String> {
        let seed = self.rng.next_u64();
        let n = &mut self.nodes[i];
        n.m = Some(Election::new(
            n.id,
            self.params,
            n.disk.clone(),
            seed,
            std::sync::Arc::new(super::HashVotes::new(n.id)),
        ));
        n.restart_at = None;
        let (id, pos) = (n.id, n.pos);
        self.stats.restarts += 1;
        self.log(format!("{id} restarts from {:?}", self.nodes[i].disk));
        self.step(i, Input::LogPos(pos))
    }

    fn partition(&mut self, sides: &[u8]) {
        for (n, side) in self.nodes.iter_mut().zip(sides) {
            n.side = *side;
        }
        self.stats.partitions += 1;
        let desc: Vec<(Id, u8)> = self.nodes.iter().map(|n| (n.id, n.side)).collect();
        self.log(format!("partition {desc:?}"));
    }

    fn heal(&mut self) {
        for n in &mut self.nodes {
            n.side = 0;
        }
        self.log("heal".to_string());
    }

    /// All live nodes report the same leader, and it is one of them.
    fn agreed(&self) -> Option<Id> {
        self.agreed_among(|_| true)
    }

    fn agreed_among(&self, member: impl Fn(&Node) -> bool) -> Option<Id> {
        let mut leader = None;
        for n in self.nodes.iter().filter(|n| member(n)) {
            let Some(m) = &n.m else { continue };
            let l = *m.leader()?;
            match leader {
                None => leader = Some(l),
                Some(x) if x != l => return None,
                _ => {}
            }
        }
        let l = leader?;
        self.nodes
            .iter()
            .any(|n| n.id == l && n.m.is_some() && member(n))
            .then_some(l)
    }

    fn term_of(&self, id: Id) -> Option<Term<Id>> {
        let i = self.slot(id)?;
        self.nodes[i].m.as_ref()?.term().copied()
    }

    // ---- the router --------------------------------------------------------------------

    fn send(&mut self, from: usize, to: usize, msg: Option<Message<Id>>) {
        let leader = match msg {
            None => self.nodes[from]
                .m
                .as_ref()
                .and_then(|m| m.leader().copied()),
            Some(_) => None,
        };
        if self.nodes[from].side != self.nodes[to].side || self.blocked.contains(&(from, to)) {
            return;
        }
        if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
            self.stats.lost += 1;
            return;
        }
        let delay = self.rng.gen_range(0..3u64);
        self.queues[((self.now + delay) % 3) as usize].push(Envelope {
            from,
            to,
            msg,
            leader,
        });
    }

    fn deliver(&mut self, env: Envelope) -> Result<(), String> {
        let (from, to) = (env.from, env.to);
        if !self.live(to)
            || self.nodes[from].side != self.nodes[to].side
            || self.blocked.contains(&(from, to))
        {
            return Ok(());
        }
        let from_id = self.nodes[from].id;
        self.stats.delivered += 1;
        self.step(to, Input::Heard(from_id))?;
        let Some(msg) = env.msg else {
            return self.step(
                to,
                Input::Supports {
                    from: from_id,
                    leader: env.leader,
                },
            );
        };
        if self.verbose {
            let to_id = self.nodes[to].id;
            self.log(format!("{from_id} -> {to_id}: {msg:?}"));
        }
        let heartbeat = match &msg {
            Message::Heartbeat { term, pos, .. } => Some((*term, *pos)),
            _ => None,
        };
        self.step(to, Input::Receive { from: from_id, msg })?;
        // Replication, crudely: a follower catches up to its leader's log from the heartbeat.
        if let Some((term, pos)) = heartbeat {
            let follows = self.nodes[to]
                .m
                .as_ref()
                .is_some_and(|m| m.term() == Some(&term) && m.leader() == Some(&term.candidate));
            let pos = if self.stamp {
                LogPos {
                    term: Some(term),
                    seq: pos.seq,
                }
            } else {
                pos
            };
            if self.replicate && follows && pos > self.nodes[to].pos {
                self.nodes[to].pos = pos;
                self.step(to, Input::LogPos(pos))?;
            }
        }
        Ok(())
    }

    /// Feeds one input to node `i` and carries out its outputs. A doomed node may crash
    /// part-way through them: only what it persisted before survives.
    fn step(&mut self, i: usize, input: Input<Id>) -> Result<(), String> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        match self.nodes[i].m.as_mut() {
            Some(m) => m.step(input, &mut out),
            None => {
                self.out = out;
                return Ok(());
            }
        }
        let (mut keep, mut dies) = (out.len(), false);
        if self.nodes[i].doomed.is_some() && !out.is_empty() && self.rng.gen_bool(0.5) {
            keep = self.rng.gen_range(0..=out.len());
            dies = true;
            self.stats.torn += 1;
        }
        let mut result = Ok(());
        let mut won = None;
        for o in out.drain(..).take(keep) {
            result = self.output(i, o, &mut won);
            if result.is_err() {
                break;
            }
        }
        self.out = out;
        result?;
        if dies {
            self.crash(i);
        } else if let Some(term) = won.filter(|_| self.noop) {
            self.append(i, term)?;
        }
        Ok(())
    }

    fn output(
        &mut self,
        i: usize,
        o: Output<Id>,
        won: &mut Option<Term<Id>>,
    ) -> Result<(), String> {
        let id = self.nodes[i].id;
        match o {
            Output::Persist(p) => {
                if let Some((epoch, candidate)) = p.voted {
                    self.vote(id, epoch, candidate)?;
                }
                self.nodes[i].disk = Some(p);
            }
            Output::Broadcast(msg) => {
                if let Message::VoteRequest { term, pos } = &msg {
                    self.asked.insert(*term, *pos);
                    // Rule 7: the self-vote is durable before the request goes out.
                    let voted = self.nodes[i].disk.as_ref().and_then(|d| d.voted);
                    if voted != Some((term.epoch, id)) || term.candidate != id {
                        return Err(format!("{id} asks for votes in {term:?} before persisting its own vote (disk {voted:?})"));
                    }
                }
                for j in 0..self.nodes.len() {
                    if j != i && self.live(j) {
                        self.send(i, j, Some(msg.clone()));
                    }
                }
            }
            Output::Send { to, msg } => {
                if let Message::Vote {
                    term,
                    granted: true,
                    ..
                } = &msg
                {
                    self.vote(id, term.epoch, term.candidate)?;
                    let voted = self.nodes[i].disk.as_ref().and_then(|d| d.voted);
                    if voted != Some((term.epoch, term.candidate)) {
                        return Err(format!(
                            "{id} grants {term:?} before persisting it (disk {voted:?})"
                        ));
                    }
                    // Rule 6: only for a log at least ours.
                    let theirs = self.asked.get(term).copied();
                    if theirs.is_none_or(|p| p < self.nodes[i].pos) {
                        return Err(format!(
                            "{id} at {:?} grants {term:?} which asked with {theirs:?}",
                            self.nodes[i].pos
                        ));
                    }
                }
                if let Some(j) = self.slot(to) {
                    self.send(i, j, Some(msg));
                }
            }
            Output::Role(change) => {
                match &change {
                    RoleChange::Leader { term } => {
                        if term.candidate != id {
                            return Err(format!("{id} leads {term:?}, not its own term"));
                        }
                        let disk = self.nodes[i].disk.as_ref().and_then(|d| d.term);
                        if disk != Some(*term) {
                            return Err(format!(
                                "{id} leads {term:?} before persisting it (disk {disk:?})"
                            ));
                        }
                        self.stats.wins += 1;
                        *won = Some(*term);
                    }
                    RoleChange::Candidate { .. } => self.stats.candidacies += 1,
                    RoleChange::Follower { .. } => {}
                }
                self.log(format!("{id} {change:?}"));
            }
        }
        Ok(())
    }

    /// Invariant (c): nobody votes for two candidates in one epoch, across restarts.
    fn vote(&mut self, voter: Id, epoch: u64, candidate: Id) -> Result<(), String> {
        match self.votes.insert((voter, epoch), candidate) {
            Some(earlier) if earlier != candidate => Err(format!(
                "{voter} voted for {earlier} and {candidate} in epoch {epoch}"
            )),
            _ => Ok(()),
        }
    }

    fn append(&mut self, i: usize, term: Term<Id>) -> Result<(), String> {
        let pos = LogPos {
            term: Some(term),
            seq: self.nodes[i].pos.seq + 1,
        };
        self.nodes[i].pos = pos;
        self.step(i, Input::LogPos(pos))
    }

    // ---- time --------------------------------------------------------------------------

    fn tick(&mut self) -> Result<(), String> {
        self.now += 1;
        for i in 0..self.nodes.len() {
            self.step(i, Input::Tick)?;
        }
        // Leaders add to the log now and then.
        for i in 0..self.nodes.len() {
            let Some(m) = &self.nodes[i].m else { continue };
            if self.appends && m.is_leader() && self.rng.gen_ratio(1, 8) {
                if let Some(term) = m.term().copied() {
                    self.append(i, term)?;
                }
            }
        }
        for i in 0..self.nodes.len() {
            if self.live(i) && (self.now + self.nodes[i].phase).is_multiple_of(ANNOUNCE_EVERY) {
                for j in 0..self.nodes.len() {
                    if j != i && self.live(j) {
                        self.send(i, j, None);
                    }
                }
            }
        }
        let q = (self.now % 3) as usize;
        loop {
            let mut batch = std::mem::replace(&mut self.queues[q], std::mem::take(&mut self.spare));
            if batch.is_empty() {
                self.spare = batch;
                break;
            }
            for env in batch.drain(..) {
                self.deliver(env)?;
            }
            self.spare = batch;
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].doomed.is_some_and(|by| by <= self.now) {
                self.crash(i);
            }
        }
        self.check()
    }

    fn run(&mut self, ticks: u64) -> Result<(), String> {
        for _ in 0..ticks {
            self.tick()?;
        }
        Ok(())
    }

    /// Invariants (a) and (b), after every tick.
    fn check(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            let Some(m) = &n.m else { continue };
            let term = m.term().copied();
            if term < n.max_term {
                return Err(format!(
                    "{} went back from term {:?} to {term:?}",
                    n.id, n.max_term
                ));
            }
            let (id, leads) = (n.id, m.is_leader());
            self.nodes[i].max_term = term;
            if leads {
                let Some(term) = term else {
                    return Err(format!("{id} leads without a term"));
                };
                if term.candidate != id {
                    return Err(format!("{id} leads {term:?}, not its own term"));
                }
                if let Some(other) = self.leaders.insert(term, id) {
                    if other != id {
                        return Err(format!("{other} and {id} both led {term:?}"));
                    }
                }
            }
        }
        Ok(())
    }
}

// ---- random runs ---------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Outcome {
    /// Ticks after the faults stopped until the final agreement.
    agreed_after: u64,
    nodes: usize,
    stats: Stats,
}

/// One seeded run: 3–7 nodes, 600 ticks, faults for the first 400, then 200 calm ticks.
fn random_run(seed: u64, verbose: bool) -> Result<Outcome, String> {
    let mut sim = Sim::new(seed, verbose);
    sim.replayable = true;
    let n0 = sim.rng.gen_range(3..=7);
    for _ in 0..n0 {
        let id = sim.fresh_id();
        sim.join(id);
    }
    sim.stats.joins = 0;
    sim.loss = sim.rng.gen_range(0.0..0.2);
    sim.noop = sim.rng.gen_bool(0.5);
    sim.appends = sim.rng.gen_bool(0.7);
    sim.replicate = sim.rng.gen_bool(0.9);
    sim.stamp = sim.rng.gen_bool(0.5);
    // How stormy this seed is: some seeds are nearly quiet, some busy.
    let storm: f64 = sim.rng.gen_range(0.0..1.0);
    let calm_from = RUN_TICKS - CALM + 1;
    let mut heal_at: Option<u64> = None;
    let mut agreed: Option<(u64, Id)> = None;
    for t in 1..=RUN_TICKS {
        if t < calm_from {
            random_faults(&mut sim, t, calm_from, storm, &mut heal_at)
                .map_err(|e| sim.report(&e))?;
        } else if t == calm_from {
            sim.heal();
            sim.loss = 0.0;
            for i in 0..sim.nodes.len() {
                if !sim.live(i) {
                    sim.restart(i).map_err(|e| sim.report(&e))?;
                }
            }
            sim.log("faults stop".to_string());
        }
        sim.tick().map_err(|e| sim.report(&e))?;
        if t >= calm_from {
            // Invariant (d): agreement on a live leader that then stays put.
            match sim.agreed() {
                Some(l) if agreed.is_some_and(|(_, x)| x == l) => {}
                Some(l) => agreed = Some((t, l)),
                None => agreed = None,
            }
        }
    }
    let Some((since, _)) = agreed else {
        return Err(sim.report("no agreement on a leader at the end"));
    };
    let agreed_after = since + 1 - calm_from;
    if agreed_after > AGREE_WITHIN {
        return Err(sim.report(&format!(
            "agreement only {agreed_after} ticks after the faults stopped (at most {AGREE_WITHIN})"
        )));
    }
    Ok(Outcome {
        agreed_after,
        nodes: sim.nodes.len(),
        stats: sim.stats,
    })
}

fn random_faults(
    sim: &mut Sim,
    t: u64,
    calm_from: u64,
    storm: f64,
    heal_at: &mut Option<u64>,
) -> Result<(), String> {
    match *heal_at {
        Some(h) if t >= h => {
            sim.heal();
            *heal_at = None;
        }
        Some(_) => {}
        None if sim.rng.gen_bool(storm / 100.0) => {
            let n = sim.nodes.len();
            let mut sides: Vec<u8> = (0..n).map(|_| sim.rng.gen_range(0..2)).collect();
            // Both sides non-empty.
            let flip = sim.rng.gen_range(0..n);
            if sides.iter().all(|s| *s == sides[flip]) {
                sides[flip] ^= 1;
            }
            sim.partition(&sides);
            *heal_at = Some((t + sim.rng.gen_range(10..160)).min(calm_from));
        }
        None => {}
    }
    let live: Vec<usize> = (0..sim.nodes.len())
        .filter(|i| sim.live(*i) && sim.nodes[*i].doomed.is_none())
        .collect();
    if live.len() > 1 && sim.rng.gen_bool(storm / 80.0) {
        let i = live[sim.rng.gen_range(0..live.len())];
        let by = (t + sim.rng.gen_range(0..20)).min(calm_from - 1);
        sim.nodes[i].doomed = Some(by);
        let down_for = if sim.rng.gen_bool(0.5) {
            sim.rng.gen_range(1..5)
        } else {
            sim.rng.gen_range(5..120)
        };
        sim.nodes[i].restart_at = Some(by + down_for);
    }
    for i in 0..sim.nodes.len() {
        if !sim.live(i) && sim.nodes[i].restart_at.is_some_and(|r| r <= t) {
            sim.restart(i)?;
        }
    }
    if sim.nodes.len() < 9 && sim.rng.gen_bool(storm / 250.0) {
        let id = sim.fresh_id();
        let i = sim.join(id);
        if heal_at.is_some() {
            sim.nodes[i].side = sim.rng.gen_range(0..2);
        }
    }
    Ok(())
}

/// A 3-node mesh with a stable leader; kill the leader; ticks until both survivors agree on
/// one of them.
fn failover_run(seed: u64) -> Result<u64, String> {
    let mut sim = Sim::new(seed, false);
    for _ in 0..3 {
        let id = sim.fresh_id();
        sim.join(id);
    }
    // Let it settle, then kill the leader at a random moment of its heartbeat cycle.
    let settle = 100 + sim.rng.gen_range(0..10);
    sim.run(settle)?;
    let Some(old) = sim.agreed() else {
        return Err(sim.report("no leader before the kill"));
    };
    let Some(i) = sim.slot(old) else {
        return Err(sim.report("leader has no slot"));
    };
    sim.crash(i);
    let killed_at = sim.now;
    while sim.now < killed_at + 200 {
        sim.tick()?;
        if let Some(new) = sim.agreed() {
            let took = sim.now - killed_at;
            // It must hold.
            for _ in 0..100 {
                sim.tick()?;
                if sim.agreed() != Some(new) {
                    return Err(sim.report(&format!("new leader {new} did not hold")));
                }
            }
            return Ok(took);
        }
    }
    Err(sim.report("no new leader within 200 ticks"))
}

/// `VAR=start..end` overrides a test's seeds, for a longer hunt (e.g. in release mode).
pub(crate) fn seeds_from_env(var: &str, default: std::ops::Range<u64>) -> std::ops::Range<u64> {
    std::env::var(var)
        .ok()
        .and_then(|s| {
            let (a, b) = s.split_once("..")?;
            Some(a.parse().ok()?..b.parse().ok()?)
        })
        .unwrap_or(default)
}

/// Runs `f` over `seeds` on two threads; the first failure panics with its report.
pub(crate) fn over_seeds<T: Send>(
    seeds: std::ops::Range<u64>,
    f: fn(u64) -> Result<T, String>,
) -> Vec<T> {
    let threads = 2;
    let results: Vec<Vec<(u64, Result<T, String>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|k| {
                let seeds = seeds.clone();
                s.spawn(move || {
                    seeds
                        .filter(|seed| seed % threads == k)
                        .map(|seed| (seed, f(seed)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("simulation thread panicked"))
            .collect()
    });
    let mut all: Vec<(u64, Result<T, String>)> = results.into_iter().flatten().collect();
    all.sort_by_key(|(seed, _)| *seed);
    all.into_iter()
        .map(|(_, r)| match r {
            Ok(v) => v,
            Err(report) => panic!("{report}"),
        })
        .collect()
}

// ---- tests ---------------------------------------------------------------------------------

#[test]
fn random_meshes_keep_the_invariants_and_agree_after_faults() {
    let started = std::time::Instant::now();
    let seeds = seeds_from_env("ELECTION_SEEDS", 0..2000);
    let outcomes = over_seeds(seeds.clone(), |seed| random_run(seed, false));
    let slowest = (seeds.start..)
        .zip(&outcomes)
        .max_by_key(|(_, o)| o.agreed_after)
        .map(|(seed, _)| seed);
    let mut agree: Vec<u64> = outcomes.iter().map(|o| o.agreed_after).collect();
    agree.sort_unstable();
    let node_ticks: u64 = outcomes.iter().map(|o| o.nodes as u64 * RUN_TICKS).sum();
    let mut stats = Stats::default();
    for o in &outcomes {
        stats += o.stats;
    }
    println!(
        "{} seeds x {RUN_TICKS} ticks ({node_ticks} node-ticks) in {:?}\n\
         agreement after faults stop: median {} p99 {} max {} ticks (seed {slowest:?})\n{stats:?}",
        seeds.end - seeds.start,
        started.elapsed(),
        agree[agree.len() / 2],
        agree[agree.len() * 99 / 100],
        agree[agree.len() - 1],
    );
}

#[test]
fn leader_failover_in_three_node_meshes() {
    let seeds = seeds_from_env("ELECTION_FAILOVER_SEEDS", 0..500);
    let mut ticks = over_seeds(seeds.clone(), failover_run);
    ticks.sort_unstable();
    let (min, median, max) = (ticks[0], ticks[ticks.len() / 2], ticks[ticks.len() - 1]);
    let p99 = ticks[ticks.len() * 99 / 100];
    println!(
        "failover after a leader kill, 3 nodes, {} seeds: min {min} median {median} p99 {p99} max {max} ticks",
        ticks.len()
    );
    // The simulated network delivers in 1–2 ticks (100–200 ms one way, far slower than a LAN),
    // so this bounds the protocol's rounds more than real time (measured: scripts/bench.sh).
    assert!(max <= 20, "failover took {max} ticks (at most 20 = 2 s)");
}

#[test]
fn a_single_node_elects_itself_after_the_election_timeout() {
    for seed in 0..50 {
        let mut sim = Sim::new(seed, false);
        sim.join(7);
        let mut elected = None;
        for _ in 0..100 {
            sim.tick().expect("invariants");
            if sim.agreed() == Some(7) {
                elected = Some(sim.now);
                break;
            }
        }
        let at = elected.expect("a lone node leads itself");
        let p = Params::default();
        assert!(
            (p.election_timeout_max..=2 * p.election_timeout_max).contains(&at),
            "elected at tick {at}"
        );
    }
}

/// A healthy 5-node mesh keeps its leader (and its term) while nodes with smaller and larger
/// ids join, and while followers restart.
#[test]
fn joins_and_restarts_do_not_depose_a_healthy_leader() {
    for seed in 0..40 {
        let mut sim = Sim::new(seed, false);
        for id in [10, 20, 30, 40, 50] {
            sim.join(id);
        }
        sim.run(150).expect("invariants");
        let leader = sim.agreed().expect("a leader");
        let term = sim.term_of(leader);
        let hold = |sim: &mut Sim, ticks: u64| {
            for _ in 0..ticks {
                sim.tick().map_err(|e| sim.report(&e)).expect("invariants");
                assert_eq!(
                    sim.term_of(leader),
                    term,
                    "seed {seed}: leader changed term"
                );
                let slot = sim.slot(leader).expect("leader slot");
                assert!(
                    sim.nodes[slot].m.as_ref().is_some_and(|m| m.is_leader()),
                    "seed {seed}: {leader} deposed\n{}",
                    sim.report("deposed")
                );
            }
            assert_eq!(sim.agreed(), Some(leader), "seed {seed}: everyone follows");
        };
        sim.join(1);
        hold(&mut sim, 100);
        sim.join(99);
        hold(&mut sim, 100);
        let followers: Vec<Id> = [1, 10, 20, 30, 40, 50, 99]
            .into_iter()
            .filter(|id| *id != leader)
            .collect();
        for id in [followers[0], followers[followers.len() - 1]] {
            let slot = sim.slot(id).expect("slot");
            sim.crash(slot);
            hold(&mut sim, 60);
            sim.restart(slot).expect("restart");
            hold(&mut sim, 100);
        }
    }
}

/// A follower that stops hearing the leader (but still reaches everyone else) stands again
/// and again; the lease keeps the others from voting for it, so the leader stays.
#[test]
fn a_follower_cut_off_from_the_leader_does_not_depose_it() {
    for seed in 0..40 {
        let mut sim = Sim::new(seed, false);
        sim.stamp = seed % 2 == 1;
        for id in [10, 20, 30, 40, 50] {
            sim.join(id);
        }
        sim.run(150).expect("invariants");
        let leader = sim.agreed().expect("a leader");
        let l = sim.slot(leader).expect("slot");
        let f = (l + 1 + sim.rng.gen_range(0..4)) % 5;
        sim.blocked.insert((l, f));
        for _ in 0..200 {
            sim.tick().map_err(|e| sim.report(&e)).expect("invariants");
            let leads = sim.nodes[l].m.as_ref().is_some_and(|m| m.is_leader());
            assert!(
                leads,
                "{}",
                sim.report("the cut-off follower deposed the leader")
            );
        }
        assert!(sim.stats.candidacies > 0, "seed {seed}: the follower stood");
        sim.blocked.clear();
        sim.run(40).map_err(|e| sim.report(&e)).expect("invariants");
        assert_eq!(sim.agreed(), Some(leader), "{}", sim.report("all follow"));
    }
}

/// A node left holding a term above the mesh's leader (its own side's leader died as the
/// partition healed) can never follow that leader. Without logs the leader re-wins itself a
/// term above it; with a log from that newer term the stranded node is preferred and wins.
#[test]
fn a_node_stranded_above_the_leaders_term_is_brought_back() {
    for (seed, with_log) in (0..80).map(|s| (s, s % 2 == 0)) {
        let mut sim = Sim::new(seed, false);
        sim.noop = with_log;
        sim.appends = with_log;
        sim.replicate = with_log;
        sim.stamp = seed % 4 >= 2;
        for id in [10, 20, 30, 40, 50] {
            sim.join(id);
        }
        sim.run(150).expect("invariants");
        let leader = sim.agreed().expect("a leader");
        let l = sim.slot(leader).expect("slot");
        // The leader and one follower on one side, three on the other.
        let mate = (l + 1) % 5;
        let sides: Vec<u8> = (0..5).map(|i| u8::from(i != l && i != mate)).collect();
        sim.partition(&sides);
        sim.run(150)
            .map_err(|e| sim.report(&e))
            .expect("invariants");
        let other = sim
            .agreed_among(|n| n.side == 1)
            .expect("the other side elected");
        let stranded: Vec<Id> = sim
            .nodes
            .iter()
            .filter(|n| n.side == 1 && n.id != other)
            .map(|n| n.id)
            .collect();
        assert!(
            sim.term_of(other) > sim.term_of(leader),
            "seed {seed}: newer term"
        );
        let o = sim.slot(other).expect("slot");
        sim.crash(o);
        sim.heal();
        let healed_at = sim.now;
        while sim.agreed().is_none() && sim.now < healed_at + 40 {
            sim.tick().map_err(|e| sim.report(&e)).expect("invariants");
        }
        let agreed = sim.agreed();
        assert!(
            agreed.is_some(),
            "{}",
            sim.report("no agreement within 40 ticks of the heal")
        );
        if with_log {
            assert!(
                agreed.is_some_and(|a| stranded.contains(&a)),
                "{}",
                sim.report("a stranded node with the newer log leads")
            );
        } else {
            assert_eq!(
                agreed,
                Some(leader),
                "{}",
                sim.report("the leader re-won itself a term")
            );
        }
        for _ in 0..100 {
            sim.tick().expect("invariants");
            assert_eq!(sim.agreed(), agreed, "seed {seed}: it holds");
        }
    }
}

/// Both sides of a partition elect; after the heal the mesh agrees on one leader within a
/// few election timeouts and keeps it. Which one depends on the logs (the most up-to-date
/// wins votes) and on what each side can prove: the higher term is followed outright when
/// its side is at least half of the mesh; otherwise the other leader re-wins itself a term
/// above it, and whichever then gathers a majority leads.
#[test]
fn partition_sides_elect_and_one_wins_after_heal() {
    for seed in 0..100 {
        let mut sim = Sim::new(seed, false);
        for _ in 0..6 {
            let id = sim.fresh_id();
            sim.join(id);
        }
        sim.run(150).expect("invariants");
        assert!(sim.agreed().is_some(), "seed {seed}: a leader first");
        let cut = sim.rng.gen_range(1..6);
        let sides: Vec<u8> = (0..6).map(|i| u8::from(i >= cut)).collect();
        sim.partition(&sides);
        sim.run(150)
            .map_err(|e| sim.report(&e))
            .expect("invariants");
        let mut side_leaders = Vec::new();
        for side in 0..2 {
            let l = sim.agreed_among(|n| n.side == side);
            let l = l
                .unwrap_or_else(|| panic!("{}", sim.report(&format!("side {side} has no leader"))));
            side_leaders.push((sim.term_of(l), l));
        }
        assert_ne!(side_leaders[0].1, side_leaders[1].1);
        sim.heal();
        let healed_at = sim.now;
        while sim.agreed().is_none() && sim.now < healed_at + 40 {
            sim.tick().map_err(|e| sim.report(&e)).expect("invariants");
        }
        let winner = sim.agreed();
        assert!(
            winner.is_some(),
            "seed {seed}: {}",
            sim.report("no agreement after heal")
        );
        for _ in 0..100 {
            sim.tick().expect("invariants");
            assert_eq!(sim.agreed(), winner, "seed {seed}: the winner holds");
        }
    }
}

/// Replays one seed of the random test with a full trace: `ELECTION_SEED=n`.
#[test]
#[ignore]
fn replay() {
    let seed = std::env::var("ELECTION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    match random_run(seed, true) {
        Ok(o) => println!("seed {seed}: ok, {o:?}"),
        Err(report) => panic!("{report}"),
    }
}
