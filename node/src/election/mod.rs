//! Controller election: which node of the mesh is the controller (the leader).
//!
//! An I/O-free state machine in the style of raft-rs: the node's actor feeds it [`Input`]s
//! (clock ticks, election messages, liveness of peers, the node's log position) and carries
//! out the [`Output`]s (persist, broadcast, send, role changes) in order. Time is counted in
//! ticks (100 ms in production) and the randomized timeouts come from a seed given to
//! [`Election::new`], so a run is a pure function of its inputs; `sim.rs` drives thousands of
//! seeded meshes through partitions, loss, crashes and joins.
//!
//! # Terms, epochs and votes
//!
//! A term is `(epoch, candidate)`, ordered epoch first then candidate id. Only `candidate`
//! can ever lead its term, so **two candidates never share a term** and "at most one leader
//! per term" holds by construction; the simulator checks the stronger observable form: no two
//! nodes are ever seen leading the same term (which also catches a node claiming to lead a
//! term that is not its own). Votes are per epoch: a node votes at most once per epoch,
//! itself included, so within one epoch at most one candidate can gather a majority of any
//! one group.
//!
//! Each node keeps three durable values ([`Persistent`]):
//!
//! - `epoch`: the highest epoch it has seen in any message or candidacy;
//! - `term`: the highest term it has followed or led, which never decreases. Standing as a
//!   candidate does *not* change it (a candidacy only becomes a term when it is won), so a
//!   candidate that turns out to be wrong — its leader was alive after all — can go back to
//!   following without moving backwards;
//! - `voted`: its vote in its latest voting epoch.
//!
//! # Availability first
//!
//! A candidate wins with a strict majority of its *alive set* (peers heard within
//! `alive_window` ticks) plus itself, not of a fixed membership: each side of a partition
//! elects its own leader and keeps working, and a node alone leads itself. When the sides
//! meet again the higher term wins. Orders from an old term are fenced with
//! [`Election::accepts`].
//!
//! # The rules at a glance (each is documented where it is applied, with why)
//!
//! - A follower that hears no heartbeat for a random `[min, max)` timeout stands in a new
//!   epoch; a (re)started node first listens `max..2·max - min` ticks.
//! - A heartbeat of a higher term is followed at once (a leader steps down); of our term it
//!   renews the leader; of a lower term it is ignored — except that a listener that can
//!   never follow that leader stands within `min` ticks rather than waiting out its timer.
//! - A vote goes at most once per epoch, only to a term above ours and a log at least ours,
//!   and — while our leader was heard within `min` (the lease) — only to that leader itself
//!   or to a log with entries from a newer term than the leader's.
//! - Two candidates in one epoch: the better log, then the higher id, stands again at once;
//!   the other backs off.
//! - A leader that sees a candidacy in a newer epoch re-wins itself a term above it, staying
//!   leader meanwhile (so a node stranded above its term can follow it); a leader votes for a
//!   log from a newer term than its own.
//!
//! # Outputs and durability
//!
//! Whenever `epoch`, `term` or `voted` change, an [`Output::Persist`] is emitted before any
//! other output of the same step; the actor makes it durable before sending what follows.
//! A restarted node is built from its last `Persistent` and so never votes twice in an epoch
//! or goes back in term.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[cfg(test)]
pub(crate) mod sim;

/// A message from an epoch more than this far ahead of ours is ignored as garbage. Why: no
/// real mesh runs four billion elections, and adopting an epoch near `u64::MAX` would leave
/// no room for any later candidacy.
const MAX_EPOCH_JUMP: u64 = 1 << 32;

/// What a node id must be: the mesh uses peer ids as text, the simulator `u64`.
pub trait ElectionId: Clone + Ord + Hash + Debug + Serialize + DeserializeOwned {}
impl<T: Clone + Ord + Hash + Debug + Serialize + DeserializeOwned> ElectionId for T {}

pub use bx3_protocol::mesh::{LogPos, Signature, SignedVote, Term, MAX_CERT_VOTES};

/// What nodes say to each other about the election (the wire type).
pub type Message<Id> = bx3_protocol::mesh::ElectionMessage<Id>;

/// Signs this node's votes and checks other nodes' votes. The node signs with its libp2p
/// identity key (a voter's peer id holds its public key); the simulators use a keyed hash.
pub trait Votes<Id>: Send + Sync {
    /// This node's signature over its vote for `term`.
    fn sign(&self, term: &Term<Id>) -> Signature;
    /// Whether `sig` is `voter`'s signature over a vote for `term`.
    fn verify(&self, voter: &Id, term: &Term<Id>, sig: &Signature) -> bool;
}

/// Timing, in ticks (100 ms in production).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// A leader broadcasts a heartbeat this often (2 = 200 ms): at least two heartbeats fit in
    /// the shortest election timeout, so one lost heartbeat never starts an election.
    pub heartbeat_ticks: u64,
    /// A follower that has not heard its leader for a random time in
    /// `[election_timeout_min, election_timeout_max)` stands (5..10 = 0.5–1 s). The lower
    /// bound is also the leader lease: a follower refuses other candidates while its leader
    /// was heard more recently than that.
    pub election_timeout_min: u64,
    pub election_timeout_max: u64,
    /// A peer heard within this many ticks is alive and counts in the quorum (15 = 1.5 s).
    pub alive_window: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            heartbeat_ticks: 2,
            election_timeout_min: 5,
            election_timeout_max: 10,
            alive_window: 15,
        }
    }
}

impl Params {
    /// Every value at least 1 and a non-empty timeout range.
    fn sanitized(self) -> Params {
        let heartbeat_ticks = self.heartbeat_ticks.max(1);
        let election_timeout_min = self.election_timeout_min.clamp(1, u64::MAX - 1);
        let election_timeout_max = self
            .election_timeout_max
            .max(election_timeout_min.saturating_add(1));
        Params {
            heartbeat_ticks,
            election_timeout_min,
            election_timeout_max,
            alive_window: self.alive_window.max(1),
        }
    }
}

/// What must survive a restart; written by the actor before it acts on anything that follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persistent<Id> {
    /// Highest epoch seen.
    pub epoch: u64,
    /// Highest term followed or led.
    pub term: Option<Term<Id>>,
    /// The vote cast in the latest epoch this node voted in: `(epoch, candidate)`.
    pub voted: Option<(u64, Id)>,
}

impl<Id> Default for Persistent<Id> {
    fn default() -> Self {
        Persistent {
            epoch: 0,
            term: None,
            voted: None,
        }
    }
}

/// What the actor feeds the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input<Id> {
    /// One clock tick.
    Tick,
    /// An election message from a peer (also counts as hearing from it).
    Receive { from: Id, msg: Message<Id> },
    /// Any traffic from a peer (membership announcements, RPCs): keeps it in the alive set.
    Heard(Id),
    /// This node's current log position.
    LogPos(LogPos<Id>),
    /// A peer says which leader it follows (its membership announcements carry it). Part of
    /// what proves a term to a node that did not take part in its election.
    Supports { from: Id, leader: Option<Id> },
}

/// What the machine asks of the actor, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<Id> {
    /// Make this durable before carrying out any output that follows it.
    Persist(Persistent<Id>),
    /// To every peer (heartbeats and vote requests).
    Broadcast(Message<Id>),
    /// To one peer (votes).
    Send { to: Id, msg: Message<Id> },
    /// This node's role changed.
    Role(RoleChange<Id>),
}

/// Emitted when this node wins a term (also when a leader re-wins itself a newer term), starts
/// following a leader, or stands as a candidate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoleChange<Id> {
    Leader { term: Term<Id> },
    Follower { term: Term<Id>, leader: Id },
    Candidate { term: Term<Id> },
}

/// Votes gathered for one candidacy.
#[derive(Clone, Debug)]
struct Campaign<Id> {
    term: Term<Id>,
    /// Who granted, this node included, with their signatures (the certificate of the term
    /// once it is won).
    votes: BTreeMap<Id, Signature>,
}

#[derive(Clone, Debug)]
enum Role<Id> {
    /// Following `term.candidate`, last heard at tick `leader_seen`; without it, listening
    /// (just started, or gave its vote to a candidate and waits to hear who won).
    Follower {
        leader_seen: Option<u64>,
    },
    Candidate {
        campaign: Campaign<Id>,
    },
    Leader {
        next_heartbeat: u64,
        /// Re-winning itself a newer term while staying leader, with its deadline.
        campaign: Option<(Campaign<Id>, u64)>,
    },
}

/// Decided while looking at a vote request, carried out after.
enum Answer {
    Grant,
    Refuse,
    /// Refuse and back off: a better-placed competitor stands in our epoch.
    BackOff,
    /// Refuse and stand again at once in the next epoch.
    Restand,
    /// (Leader) refuse, and re-win ourselves a term above the candidate's epoch.
    Reelect,
}

/// The election state machine of one node. See the module docs.
#[derive(Clone)]
pub struct Election<Id> {
    me: Id,
    params: Params,
    /// Signs our votes, checks others'.
    signer: std::sync::Arc<dyn Votes<Id>>,
    /// The signed votes that won the term we lead (sent with every heartbeat).
    cert: Vec<SignedVote<Id>>,
    rng: u64,
    now: u64,
    // Durable.
    epoch: u64,
    term: Option<Term<Id>>,
    voted: Option<(u64, Id)>,
    /// Durable state changed and has not been emitted yet.
    dirty: bool,
    // Volatile.
    pos: LogPos<Id>,
    role: Role<Id>,
    /// Election timer of followers and candidates (absolute tick).
    deadline: u64,
    /// Peers and the tick they were last heard.
    alive: BTreeMap<Id, u64>,
    /// The leader each peer last said it follows.
    support: BTreeMap<Id, Option<Id>>,
    /// No entry of `alive` expires before this tick.
    prune_at: u64,
}

impl<Id: Debug> Debug for Election<Id> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Election")
            .field("me", &self.me)
            .field("epoch", &self.epoch)
            .field("term", &self.term)
            .field("voted", &self.voted)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Votes "signed" with a keyed hash: what the simulators and tests use in place of ed25519.
/// Unforgeable inside a simulation (no simulated node forges), deterministic across runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct HashVotes<Id> {
    me: Option<Id>,
}

impl<Id> HashVotes<Id> {
    pub fn new(me: Id) -> Self {
        HashVotes { me: Some(me) }
    }
}

impl<Id: Hash> HashVotes<Id> {
    fn mac(voter: &Id, term: &Term<Id>) -> Signature {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        b"bx3 test vote".hash(&mut h);
        voter.hash(&mut h);
        term.hash(&mut h);
        Signature(h.finish().to_be_bytes().to_vec())
    }
}

impl<Id: Hash + Send + Sync> Votes<Id> for HashVotes<Id> {
    fn sign(&self, term: &Term<Id>) -> Signature {
        match &self.me {
            Some(me) => Self::mac(me, term),
            None => Signature::default(),
        }
    }
    fn verify(&self, voter: &Id, term: &Term<Id>, sig: &Signature) -> bool {
        Self::mac(voter, term) == *sig
    }
}

impl<Id: ElectionId> Election<Id> {
    /// A node starting (or restarting from its last [`Persistent`]). `seed` drives the
    /// randomized timeouts; give each node its own.
    pub fn new(
        me: Id,
        params: Params,
        persisted: Option<Persistent<Id>>,
        seed: u64,
        signer: std::sync::Arc<dyn Votes<Id>>,
    ) -> Self {
        let params = params.sanitized();
        let p = persisted.unwrap_or_default();
        // A hand-edited or corrupt record: the epoch covers the term and the vote.
        let mut epoch = p.epoch;
        if let Some(t) = &p.term {
            epoch = epoch.max(t.epoch);
        }
        if let Some((e, _)) = &p.voted {
            epoch = epoch.max(*e);
        }
        let mut e = Election {
            me,
            params,
            signer,
            cert: Vec::new(),
            rng: seed,
            now: 0,
            dirty: epoch != p.epoch,
            epoch,
            term: p.term,
            voted: p.voted,
            pos: LogPos::default(),
            role: Role::Follower { leader_seen: None },
            deadline: 0,
            alive: BTreeMap::new(),
            support: BTreeMap::new(),
            prune_at: u64::MAX,
        };
        // Rule: a (re)started node listens a full election timeout before standing.
        // Why: it should find and follow the current leader, not challenge it.
        let spread = params.election_timeout_max - params.election_timeout_min;
        e.deadline = e.timeout().saturating_add(spread);
        e
    }

    /// Feeds one input; appends what to do to `out`.
    pub fn step(&mut self, input: Input<Id>, out: &mut Vec<Output<Id>>) {
        match input {
            Input::Tick => self.tick(out),
            Input::Heard(id) => self.heard(id),
            Input::LogPos(pos) => self.pos = pos,
            Input::Supports { from, leader } => {
                if from != self.me {
                    self.heard(from.clone());
                    self.support.insert(from, leader);
                }
            }
            Input::Receive { from, msg } => {
                if from != self.me {
                    self.heard(from.clone());
                    self.receive(from, msg, out);
                }
            }
        }
        self.flush(out);
    }

    /// The leader this node knows of: itself when leading, `None` while there is none.
    pub fn leader(&self) -> Option<&Id> {
        match &self.role {
            Role::Leader { .. } => Some(&self.me),
            Role::Follower {
                leader_seen: Some(_),
            } => self.term.as_ref().map(|t| &t.candidate),
            _ => None,
        }
    }

    /// The term this node leads or follows (the last one if it has no leader right now). A
    /// candidacy is not a term until it is won.
    pub fn term(&self) -> Option<&Term<Id>> {
        self.term.as_ref()
    }

    /// The highest epoch this node has seen.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader { .. })
    }

    /// Peers heard within `alive_window` ticks (not this node).
    pub fn alive(&self) -> impl Iterator<Item = &Id> + '_ {
        let (now, window) = (self.now, self.params.alive_window);
        self.alive
            .iter()
            .filter(move |(_, at)| now.saturating_sub(**at) < window)
            .map(|(id, _)| id)
    }

    /// Fencing: should an order stamped with `term` be obeyed? Not if it is older than the
    /// term this node follows or leads.
    pub fn accepts(&self, term: &Term<Id>) -> bool {
        self.term.as_ref().is_none_or(|mine| term >= mine)
    }

    /// The durable state as it is now.
    pub fn persistent(&self) -> Persistent<Id> {
        Persistent {
            epoch: self.epoch,
            term: self.term.clone(),
            voted: self.voted.clone(),
        }
    }

    // ---- inputs ------------------------------------------------------------------------

    fn heard(&mut self, id: Id) {
        if id != self.me {
            self.alive.insert(id, self.now);
            let expires = self.now.saturating_add(self.params.alive_window);
            self.prune_at = self.prune_at.min(expires);
        }
    }

    fn tick(&mut self, out: &mut Vec<Output<Id>>) {
        self.now = self.now.saturating_add(1);
        let now = self.now;
        if now >= self.prune_at {
            let window = self.params.alive_window;
            let mut oldest = u64::MAX;
            self.alive.retain(|_, at| {
                let keep = now.saturating_sub(*at) < window;
                if keep {
                    oldest = oldest.min(*at);
                }
                keep
            });
            let alive = &self.alive;
            self.support.retain(|id, _| alive.contains_key(id));
            self.prune_at = oldest.saturating_add(window);
        }
        match &self.role {
            Role::Leader { .. } => self.leader_tick(out),
            Role::Candidate { campaign } => {
                // Rule: the quorum is re-counted every tick. Why: on a minority side of a
                // partition the unreachable peers drop out of the alive set after
                // `alive_window`, and then the side can elect.
                if self.has_quorum(&campaign.votes) {
                    let term = campaign.term.clone();
                    self.win(term, out);
                } else if now >= self.deadline {
                    // Rule: a candidacy that has not won within a timeout is retried in a new
                    // epoch. Why: the vote split or requests were lost.
                    self.stand(out);
                }
            }
            Role::Follower { .. } => {
                if now >= self.deadline {
                    // Rule: no heartbeat for a randomized election timeout: stand.
                    // Why: the leader is presumed gone; the randomization lets one node
                    // usually stand alone and win before the others time out.
                    self.stand(out);
                }
            }
        }
    }

    fn leader_tick(&mut self, out: &mut Vec<Output<Id>>) {
        let now = self.now;
        let Role::Leader {
            next_heartbeat,
            campaign,
        } = &self.role
        else {
            return;
        };
        let next_heartbeat = *next_heartbeat;
        if let Some((c, until)) = campaign {
            if self.has_quorum(&c.votes) {
                let term = c.term.clone();
                // Winning broadcasts a heartbeat, which also restarts the heartbeat clock.
                self.win(term, out);
                return;
            }
            if now >= *until {
                // Rule: a re-election that has not gathered a quorum in time is dropped; we
                // stay leader of our current term. Why: nothing was lost, the next trigger
                // retries.
                if let Role::Leader { campaign, .. } = &mut self.role {
                    *campaign = None;
                }
            }
        }
        if now >= next_heartbeat {
            self.heartbeat(out);
        }
    }

    fn receive(&mut self, from: Id, msg: Message<Id>, out: &mut Vec<Output<Id>>) {
        if msg.term().epoch > self.epoch.saturating_add(MAX_EPOCH_JUMP) {
            return;
        }
        match msg {
            Message::Heartbeat { term, cert, .. } => self.on_heartbeat(from, term, cert, out),
            Message::VoteRequest { term, pos } => self.on_vote_request(from, term, pos, out),
            Message::Vote { term, granted, sig } => self.on_vote(from, term, granted, sig, out),
        }
    }

    fn on_heartbeat(
        &mut self,
        from: Id,
        term: Term<Id>,
        cert: Vec<SignedVote<Id>>,
        out: &mut Vec<Output<Id>>,
    ) {
        // Rule: only a term's own candidate sends its heartbeats. Why: leadership is never
        // delegated; a relayed or forged heartbeat could make us follow a dead node.
        if from != term.candidate {
            return;
        }
        // Rule: adopt a higher epoch from any message. Why: our next candidacy must be above
        // every epoch already in use.
        self.observe(term.epoch);
        let order = match &self.term {
            None => Ordering::Greater,
            Some(mine) => term.cmp(mine),
        };
        match order {
            // Rule: a heartbeat of a higher term is followed at once, by a leader too (it
            // steps down) — if this node can see that the sender won it: it voted for it
            // itself, or at least half of the members this node knows (itself and the peers
            // it hears) back the sender: signed votes in the heartbeat's certificate, or
            // announcements naming it as their leader. Why: the higher term wins; this is how
            // two sides of a healed partition agree, and how a new leader is recognised; the
            // proof keeps a stale node, a bug or a stranger from taking the mesh over with
            // one message.
            Ordering::Greater if self.proven(&term, &cert) => self.follow(term, out),
            // Rule: an unproven higher term makes a leader re-win itself a term above it;
            // others ignore it (a listener's timer keeps running: the announcements that
            // prove a real leader arrive within a second). Why: if that term is real, its
            // side is smaller than ours as we see it (a healed partition): our re-won term,
            // backed by more of the group, then proves itself to that side; if it is not
            // real, nothing follows it.
            Ordering::Greater => {
                if let Role::Leader { campaign, .. } = &self.role {
                    if campaign
                        .as_ref()
                        .is_none_or(|(c, _)| c.term.epoch <= term.epoch)
                    {
                        self.reelect(out);
                    }
                }
            }
            Ordering::Equal => match &mut self.role {
                // Rule: a heartbeat of our term keeps the leader alive: reset the election
                // timer and renew the lease. Why: the leader is fine.
                Role::Follower {
                    leader_seen: Some(seen),
                } => {
                    *seen = self.now;
                    self.deadline = self.now.saturating_add(self.timeout());
                }
                // Cannot happen: our own term's heartbeats come only from us.
                Role::Leader { .. } => {}
                // Rule: a candidate or listener hearing the leader of its own term follows it
                // again. Why: that leader is alive after all; no term moves backwards.
                _ => self.follow(term, out),
            },
            Ordering::Less => {
                // Rule: a stale leader is ignored; but a listener (no leader, not standing)
                // that hears one stands within `election_timeout_min` instead of waiting out
                // its timer. Why: it can never follow a lower term, and its candidacy makes
                // that leader re-win itself a term above ours (see `reelect`) instead of
                // leaving us stranded. (A candidate has already told it.)
                if matches!(self.role, Role::Follower { leader_seen: None }) {
                    // Randomized: every stranded node hears that leader at the same moment.
                    let soon = 1 + self.next_random() % self.params.election_timeout_min;
                    self.deadline = self.deadline.min(self.now.saturating_add(soon));
                }
            }
        }
    }

    fn on_vote_request(
        &mut self,
        from: Id,
        term: Term<Id>,
        pos: LogPos<Id>,
        out: &mut Vec<Output<Id>>,
    ) {
        // Rule: only a candidate asks for votes for its own term. Why: the vote is sent to
        // the sender, and counted for the term's candidate.
        if from != term.candidate {
            return;
        }
        self.observe(term.epoch);
        let eligible = self.eligible(&term, &pos);
        let answer = match &self.role {
            Role::Leader { campaign, .. } => {
                let ours = self.term.as_ref().map_or(0, |t| t.epoch);
                let newer = pos.term.as_ref() > self.term.as_ref();
                if eligible && newer {
                    // Rule: a leader votes for a candidate whose log comes from a newer term
                    // than its own, and keeps leading until that candidate's heartbeat.
                    // Why: that node holds state we lack; it is the preferred leader.
                    Answer::Grant
                } else if !newer
                    && term.epoch > ours
                    && campaign
                        .as_ref()
                        .is_none_or(|(c, _)| c.term.epoch <= term.epoch)
                {
                    Answer::Reelect
                } else {
                    Answer::Refuse
                }
            }
            Role::Follower {
                leader_seen: Some(seen),
            } => {
                let in_lease = self.now.saturating_sub(*seen) < self.params.election_timeout_min;
                let newer = pos.term.as_ref() > self.term.as_ref();
                let own_leader = self.term.as_ref().map(|t| &t.candidate) == Some(&term.candidate);
                // Rule (lease, as Raft's check-quorum/pre-vote): while our leader was heard
                // within `election_timeout_min` we vote only for that leader itself
                // (re-winning a term) or for a log with entries from a term newer than the
                // leader's.
                // Why: a node that rejoins, restarts or merely missed a few heartbeats must
                // not depose a healthy leader.
                if eligible && (!in_lease || own_leader || newer) {
                    Answer::Grant
                } else {
                    Answer::Refuse
                }
            }
            Role::Follower { leader_seen: None } => {
                if eligible {
                    Answer::Grant
                } else {
                    Answer::Refuse
                }
            }
            Role::Candidate { campaign } => {
                if term.epoch == campaign.term.epoch {
                    // Rule: two candidates in one epoch (both voted for themselves, so
                    // neither can collect the other's vote): the one the other would vote for
                    // — the more up-to-date log, then the higher id — stands again at once in
                    // the next epoch; the other backs off a full timeout and votes for it.
                    // Why: a split otherwise costs another whole timeout.
                    if (&pos, &term.candidate) > (&self.pos, &self.me) {
                        Answer::BackOff
                    } else {
                        Answer::Restand
                    }
                } else if eligible {
                    Answer::Grant
                } else {
                    Answer::Refuse
                }
            }
        };
        match answer {
            Answer::Grant => self.grant(term, out),
            Answer::Refuse => self.refuse(term, out),
            Answer::BackOff => {
                self.deadline = self.now.saturating_add(self.timeout());
                self.refuse(term, out);
            }
            Answer::Restand => {
                self.refuse(term, out);
                self.stand(out);
            }
            Answer::Reelect => {
                self.refuse(term, out);
                self.reelect(out);
            }
        }
    }

    fn on_vote(
        &mut self,
        from: Id,
        term: Term<Id>,
        granted: bool,
        sig: Option<Signature>,
        out: &mut Vec<Output<Id>>,
    ) {
        if !granted || term.candidate != self.me {
            return;
        }
        // Rule: a vote counts only with its voter's signature over the term. Why: the votes
        // become the term's certificate, which other nodes check.
        let Some(sig) = sig.filter(|s| self.signer.verify(&from, &term, s)) else {
            return;
        };
        let votes = match &mut self.role {
            Role::Candidate { campaign } if campaign.term == term => &mut campaign.votes,
            Role::Leader {
                campaign: Some((campaign, _)),
                ..
            } if campaign.term == term => &mut campaign.votes,
            _ => return,
        };
        if votes.len() < MAX_CERT_VOTES {
            votes.insert(from, sig);
        }
        if self.campaign().is_some_and(|c| self.has_quorum(&c.votes)) {
            self.win(term, out);
        }
    }

    /// Vote for `term` if it were not for the lease / our own candidacy.
    fn eligible(&self, term: &Term<Id>, pos: &LogPos<Id>) -> bool {
        // An older epoch is a stale candidacy (and voting in it could be a second vote).
        term.epoch == self.epoch
            // One vote per epoch; asking again gets the same answer.
            && self
                .voted
                .as_ref()
                .is_none_or(|(e, c)| *e != term.epoch || *c == term.candidate)
            // Rule: only for a term we could follow if it wins. Why: terms never go back.
            && self.term.as_ref().is_none_or(|mine| term > mine)
            // Rule (up-to-date): only for a candidate whose log is at least ours.
            // Why: the leader should be the node that has the most.
            && *pos >= self.pos
    }

    // ---- transitions -------------------------------------------------------------------

    fn stand(&mut self, out: &mut Vec<Output<Id>>) {
        let Some(epoch) = self.epoch.checked_add(1) else {
            // Why: the epoch space is exhausted (corrupt state only); standing again in the
            // same epoch would be a second vote.
            self.deadline = self.now.saturating_add(self.timeout());
            return;
        };
        self.epoch = epoch;
        self.voted = Some((epoch, self.me.clone()));
        self.dirty = true;
        let term = Term {
            epoch,
            candidate: self.me.clone(),
        };
        let own = self.signer.sign(&term);
        self.role = Role::Candidate {
            campaign: Campaign {
                term: term.clone(),
                votes: BTreeMap::from([(self.me.clone(), own)]),
            },
        };
        self.deadline = self.now.saturating_add(self.timeout());
        self.emit(
            out,
            Output::Role(RoleChange::Candidate { term: term.clone() }),
        );
        let pos = self.pos.clone();
        self.emit(
            out,
            Output::Broadcast(Message::VoteRequest {
                term: term.clone(),
                pos,
            }),
        );
        // A node alone wins at once.
        if self.campaign().is_some_and(|c| self.has_quorum(&c.votes)) {
            self.win(term, out);
        }
    }

    /// Rule: a leader that sees a candidacy in an epoch above its term's re-wins itself a
    /// term in a still newer epoch, staying leader meanwhile; its followers vote for it
    /// despite the lease. Why: the candidate may hold a term above ours (it followed a leader
    /// that has since died) and could never follow us; a newer term of ours lets it, without
    /// deposing anyone.
    fn reelect(&mut self, out: &mut Vec<Output<Id>>) {
        let Some(epoch) = self.epoch.checked_add(1) else {
            return;
        };
        self.epoch = epoch;
        self.voted = Some((epoch, self.me.clone()));
        self.dirty = true;
        let term = Term {
            epoch,
            candidate: self.me.clone(),
        };
        let until = self.now.saturating_add(self.params.election_timeout_max);
        let own = self.signer.sign(&term);
        if let Role::Leader { campaign, .. } = &mut self.role {
            *campaign = Some((
                Campaign {
                    term: term.clone(),
                    votes: BTreeMap::from([(self.me.clone(), own)]),
                },
                until,
            ));
        }
        let pos = self.advertised_pos();
        self.emit(
            out,
            Output::Broadcast(Message::VoteRequest {
                term: term.clone(),
                pos,
            }),
        );
        if self.campaign().is_some_and(|c| self.has_quorum(&c.votes)) {
            self.win(term, out);
        }
    }

    fn win(&mut self, term: Term<Id>, out: &mut Vec<Output<Id>>) {
        // Terms never go back (cannot happen: a candidacy is always above our term).
        if self.term.as_ref().is_some_and(|mine| *mine >= term) {
            return;
        }
        self.cert = self
            .campaign()
            .filter(|c| c.term == term)
            .map(|c| {
                c.votes
                    .iter()
                    .map(|(voter, sig)| SignedVote {
                        voter: voter.clone(),
                        sig: sig.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.term = Some(term.clone());
        self.dirty = true;
        self.role = Role::Leader {
            next_heartbeat: 0,
            campaign: None,
        };
        self.emit(out, Output::Role(RoleChange::Leader { term }));
        // Rule: a new leader heartbeats at once. Why: it stops the other candidacies and
        // tells everyone before their timers run out.
        self.heartbeat(out);
    }

    fn heartbeat(&mut self, out: &mut Vec<Output<Id>>) {
        let next = self.now.saturating_add(self.params.heartbeat_ticks);
        if let Role::Leader { next_heartbeat, .. } = &mut self.role {
            *next_heartbeat = next;
        }
        if let Some(term) = self.term.clone() {
            let pos = self.advertised_pos();
            let cert = self.cert.clone();
            self.emit(
                out,
                Output::Broadcast(Message::Heartbeat { term, pos, cert }),
            );
        }
    }

    /// The log position this node tells others. Rule: a leader speaks for its term — its
    /// position carries its current term even before it has added anything in it (as if it
    /// had appended Raft's no-op entry). Why: followers may stamp what they replicate with
    /// the leader's current term; the leader must not look behind its own followers, or they
    /// would refuse it when it re-wins itself a term.
    fn advertised_pos(&self) -> LogPos<Id> {
        match (&self.role, &self.term) {
            (Role::Leader { .. }, Some(term)) if self.pos.term.as_ref() < Some(term) => LogPos {
                term: Some(term.clone()),
                seq: self.pos.seq,
            },
            _ => self.pos.clone(),
        }
    }

    fn follow(&mut self, term: Term<Id>, out: &mut Vec<Output<Id>>) {
        let already = self.term.as_ref() == Some(&term)
            && matches!(
                self.role,
                Role::Follower {
                    leader_seen: Some(_)
                }
            );
        if self.term.as_ref() != Some(&term) {
            self.term = Some(term.clone());
            self.dirty = true;
        }
        self.role = Role::Follower {
            leader_seen: Some(self.now),
        };
        self.deadline = self.now.saturating_add(self.timeout());
        if !already {
            let leader = term.candidate.clone();
            self.emit(out, Output::Role(RoleChange::Follower { term, leader }));
        }
    }

    fn grant(&mut self, term: Term<Id>, out: &mut Vec<Output<Id>>) {
        self.voted = Some((term.epoch, term.candidate.clone()));
        self.dirty = true;
        let own_leader = self.term.as_ref().map(|t| &t.candidate) == Some(&term.candidate);
        match &mut self.role {
            // Our own leader re-winning a term: keep following it.
            Role::Follower { .. } if own_leader => {}
            // Rule: having voted for another, wait to hear who won, with a fresh timer.
            // Why: give the candidate time to win before standing ourselves.
            Role::Follower { .. } | Role::Candidate { .. } => {
                self.role = Role::Follower { leader_seen: None };
                self.deadline = self.now.saturating_add(self.timeout());
            }
            // A leader keeps leading until the winner's heartbeat arrives.
            Role::Leader { .. } => {}
        }
        let to = term.candidate.clone();
        let sig = Some(self.signer.sign(&term));
        self.emit(
            out,
            Output::Send {
                to,
                msg: Message::Vote {
                    term,
                    granted: true,
                    sig,
                },
            },
        );
    }

    fn refuse(&mut self, term: Term<Id>, out: &mut Vec<Output<Id>>) {
        let to = term.candidate.clone();
        self.emit(
            out,
            Output::Send {
                to,
                msg: Message::Vote {
                    term,
                    granted: false,
                    sig: None,
                },
            },
        );
    }

    // ---- helpers -----------------------------------------------------------------------

    fn observe(&mut self, epoch: u64) {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.dirty = true;
        }
    }

    fn campaign(&self) -> Option<&Campaign<Id>> {
        match &self.role {
            Role::Candidate { campaign } => Some(campaign),
            Role::Leader {
                campaign: Some((campaign, _)),
                ..
            } => Some(campaign),
            _ => None,
        }
    }

    /// A strict majority of the electorate: the alive set, this node, and anyone who voted.
    fn has_quorum(&self, votes: &BTreeMap<Id, Signature>) -> bool {
        let outside = votes
            .keys()
            .filter(|v| **v != self.me && !self.alive.contains_key(*v))
            .count();
        let electorate = 1 + self.alive.len() + outside;
        votes.len() * 2 > electorate
    }

    /// Whether this node can see that `term` was won: it voted for it itself; or at least
    /// half of the members it knows (itself and the peers it hears) back its candidate; or,
    /// while it has a leader, the candidate has at least the backing its own leader has.
    ///
    /// A candidate's backing is the candidate itself (its authorship of the message counts),
    /// valid signed votes for the term in `cert`, and peers whose announcements name it as
    /// their leader; only members this node hears are counted. Half rather than a majority,
    /// and the comparison with the current leader: when two or more sides of a healed
    /// partition meet, one of them must be followable, or the group keeps two controllers.
    /// One node alone (a stale node, a bug, a stranger) never has the backing of a leader
    /// followed by others.
    fn proven(&self, term: &Term<Id>, cert: &[SignedVote<Id>]) -> bool {
        if self
            .voted
            .as_ref()
            .is_some_and(|(e, c)| *e == term.epoch && *c == term.candidate)
        {
            return true;
        }
        let mut voters: BTreeSet<&Id> = self.backers(&term.candidate);
        for v in cert.iter().take(MAX_CERT_VOTES) {
            if v.voter != self.me
                && self.alive.contains_key(&v.voter)
                && !voters.contains(&v.voter)
                && self.signer.verify(&v.voter, term, &v.sig)
            {
                voters.insert(&v.voter);
            }
        }
        let electorate = 1 + self.alive.len();
        if voters.len() * 2 >= electorate {
            return true;
        }
        // Our own leader's backing, us included.
        match self.leader() {
            Some(ours) if *ours != term.candidate => {
                let mut own = self.backers(ours);
                own.insert(&self.me);
                // A leader knows who voted for it before their announcements say so: a
                // stranger's lone heartbeat right after an election must not tie with it.
                // A voter whose announcement names another leader (it moved on) no longer
                // counts; one that names none may simply have announced before the election.
                if *ours == self.me {
                    for v in &self.cert {
                        let still = match self.support.get(&v.voter) {
                            Some(Some(leader)) => *leader == self.me,
                            Some(None) | None => true,
                        };
                        if still && self.alive.contains_key(&v.voter) {
                            own.insert(&v.voter);
                        }
                    }
                }
                voters.len() >= own.len()
            }
            _ => false,
        }
    }

    /// `candidate` and the members heard from that announce it as their leader.
    fn backers<'a>(&'a self, candidate: &'a Id) -> BTreeSet<&'a Id> {
        let mut out = BTreeSet::new();
        if *candidate == self.me || self.alive.contains_key(candidate) {
            out.insert(candidate);
        }
        for (peer, leader) in &self.support {
            if leader.as_ref() == Some(candidate) && self.alive.contains_key(peer) {
                out.insert(peer);
            }
        }
        out
    }

    fn emit(&mut self, out: &mut Vec<Output<Id>>, o: Output<Id>) {
        self.flush(out);
        out.push(o);
    }

    /// Durable state goes out before anything that depends on it.
    fn flush(&mut self, out: &mut Vec<Output<Id>>) {
        if self.dirty {
            self.dirty = false;
            out.push(Output::Persist(self.persistent()));
        }
    }

    /// A random election timeout in `[min, max)`.
    fn timeout(&mut self) -> u64 {
        let spread = self.params.election_timeout_max - self.params.election_timeout_min;
        self.params.election_timeout_min + self.next_random() % spread
    }

    /// splitmix64.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn signer(id: u64) -> Arc<dyn Votes<u64>> {
        Arc::new(HashVotes::new(id))
    }

    fn sig(voter: u64, t: &Term<u64>) -> Option<Signature> {
        Some(HashVotes::new(voter).sign(t))
    }

    type Out = Vec<Output<u64>>;

    /// The rules are tested at a finer clock than production's (a heartbeat every 3 ticks, an
    /// election timeout of 10..20, 30 ticks alive), which leaves room between the steps
    /// these tests place in time. The simulator runs production's `Params::default()`.
    const P: Params = Params {
        heartbeat_ticks: 3,
        election_timeout_min: 10,
        election_timeout_max: 20,
        alive_window: 30,
    };

    fn node(me: u64) -> Election<u64> {
        Election::new(me, P, None, me, signer(me))
    }

    fn step(e: &mut Election<u64>, input: Input<u64>) -> Out {
        let mut out = Vec::new();
        e.step(input, &mut out);
        out
    }

    fn ticks(e: &mut Election<u64>, n: u64) -> Out {
        let mut out = Vec::new();
        for _ in 0..n {
            e.step(Input::Tick, &mut out);
        }
        out
    }

    fn term(epoch: u64, candidate: u64) -> Term<u64> {
        Term { epoch, candidate }
    }

    fn pos(epoch: u64, leader: u64, seq: u64) -> LogPos<u64> {
        LogPos {
            term: Some(term(epoch, leader)),
            seq,
        }
    }

    fn heartbeat(epoch: u64, leader: u64) -> Input<u64> {
        Input::Receive {
            from: leader,
            msg: Message::Heartbeat {
                term: term(epoch, leader),
                pos: LogPos::default(),
                cert: vec![],
            },
        }
    }

    fn request(epoch: u64, candidate: u64, pos: LogPos<u64>) -> Input<u64> {
        Input::Receive {
            from: candidate,
            msg: Message::VoteRequest {
                term: term(epoch, candidate),
                pos,
            },
        }
    }

    /// The answer to `candidate` in `out`, if any.
    fn answer(out: &Out, candidate: u64) -> Option<bool> {
        out.iter().find_map(|o| match o {
            Output::Send {
                to,
                msg: Message::Vote { granted, .. },
            } if *to == candidate => Some(*granted),
            _ => None,
        })
    }

    fn stood(out: &Out) -> Option<Term<u64>> {
        out.iter().find_map(|o| match o {
            Output::Broadcast(Message::VoteRequest { term, .. }) => Some(*term),
            _ => None,
        })
    }

    #[test]
    fn a_lone_node_leads_itself_after_a_full_election_timeout() {
        let mut e = node(1);
        let mut out = Vec::new();
        let mut at = 0;
        while !e.is_leader() && at < 100 {
            out = ticks(&mut e, 1);
            at += 1;
        }
        assert!((20..30).contains(&at), "led at tick {at}");
        let t = term(1, 1);
        assert_eq!(
            out,
            vec![
                Output::Persist(Persistent {
                    epoch: 1,
                    term: None,
                    voted: Some((1, 1)),
                }),
                Output::Role(RoleChange::Candidate { term: t }),
                Output::Broadcast(Message::VoteRequest {
                    term: t,
                    pos: LogPos::default(),
                }),
                Output::Persist(Persistent {
                    epoch: 1,
                    term: Some(t),
                    voted: Some((1, 1)),
                }),
                Output::Role(RoleChange::Leader { term: t }),
                // A leader's position carries its term.
                Output::Broadcast(Message::Heartbeat {
                    term: t,
                    pos: LogPos {
                        term: Some(t),
                        seq: 0,
                    },
                    cert: vec![SignedVote {
                        voter: 1,
                        sig: HashVotes::new(1).sign(&t),
                    }],
                }),
            ]
        );
        assert_eq!(e.leader(), Some(&1));
        // Heartbeats follow every `heartbeat_ticks`.
        let out = ticks(&mut e, 3);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_vote_is_persisted_before_it_is_sent() {
        let mut e = node(1);
        let out = step(&mut e, request(1, 2, LogPos::default()));
        assert_eq!(
            out,
            vec![
                Output::Persist(Persistent {
                    epoch: 1,
                    term: None,
                    voted: Some((1, 2)),
                }),
                Output::Send {
                    to: 2,
                    msg: Message::Vote {
                        term: term(1, 2),
                        granted: true,
                        sig: sig(1, &term(1, 2)),
                    },
                },
            ]
        );
    }

    #[test]
    fn one_vote_per_epoch_even_across_a_restart() {
        let mut e = node(1);
        assert_eq!(
            answer(&step(&mut e, request(1, 2, LogPos::default())), 2),
            Some(true)
        );
        assert_eq!(
            answer(&step(&mut e, request(1, 3, LogPos::default())), 3),
            Some(false)
        );
        let mut e = Election::new(1, P, Some(e.persistent()), 9, signer(1));
        assert_eq!(
            answer(&step(&mut e, request(1, 3, LogPos::default())), 3),
            Some(false)
        );
        // Asking again gets the same answer.
        assert_eq!(
            answer(&step(&mut e, request(1, 2, LogPos::default())), 2),
            Some(true)
        );
        // A stale epoch is refused, a new one is open.
        assert_eq!(
            answer(&step(&mut e, request(2, 3, LogPos::default())), 3),
            Some(true)
        );
        assert_eq!(
            answer(&step(&mut e, request(1, 4, LogPos::default())), 4),
            Some(false)
        );
    }

    #[test]
    fn terms_never_go_back_and_older_terms_are_fenced() {
        let mut e = node(1);
        let out = step(&mut e, heartbeat(5, 2));
        assert!(out.contains(&Output::Role(RoleChange::Follower {
            term: term(5, 2),
            leader: 2,
        })));
        assert!(step(&mut e, heartbeat(3, 4)).is_empty());
        assert!(step(&mut e, heartbeat(5, 0)).is_empty());
        assert_eq!((e.term(), e.leader()), (Some(&term(5, 2)), Some(&2)));
        assert!(!e.accepts(&term(3, 4)));
        assert!(!e.accepts(&term(5, 1)));
        assert!(e.accepts(&term(5, 2)));
        assert!(e.accepts(&term(6, 0)));
        // A restart remembers the term.
        let e = Election::new(1, P, Some(e.persistent()), 3, signer(1));
        assert_eq!((e.term(), e.leader()), (Some(&term(5, 2)), None));
    }

    #[test]
    fn when_leaders_meet_the_higher_term_wins() {
        let mut e = node(1);
        ticks(&mut e, 30);
        assert_eq!(e.term(), Some(&term(1, 1)));
        // Same epoch, lower candidate: ignored.
        assert!(step(&mut e, heartbeat(1, 0)).is_empty());
        assert!(e.is_leader());
        // Same epoch, higher candidate, backed by half of what node 1 knows (0 voted for
        // it, 2 is its candidate, out of 0, 1 and 2): step down and follow.
        let backed = Input::Receive {
            from: 2,
            msg: Message::Heartbeat {
                term: term(1, 2),
                pos: LogPos::default(),
                cert: vec![SignedVote {
                    voter: 0,
                    sig: HashVotes::new(0).sign(&term(1, 2)),
                }],
            },
        };
        let out = step(&mut e, backed);
        assert_eq!(
            out,
            vec![
                Output::Persist(Persistent {
                    epoch: 1,
                    term: Some(term(1, 2)),
                    voted: Some((1, 1)),
                }),
                Output::Role(RoleChange::Follower {
                    term: term(1, 2),
                    leader: 2,
                }),
            ]
        );
        assert!(!e.is_leader());
        assert_eq!(e.leader(), Some(&2));
    }

    /// A stale node, a bug or a stranger claiming a higher term is not followed without
    /// proof; a leader answers it by re-winning itself a term above it, so that the claimant
    /// (if it is real, a smaller side of a healed partition) can follow.
    #[test]
    fn an_unproven_higher_term_is_not_followed() {
        let mut e = node(1);
        ticks(&mut e, 30);
        assert!(e.is_leader());
        // 3 and 4 follow us (their announcements say so).
        for peer in [3, 4] {
            step(
                &mut e,
                Input::Supports {
                    from: peer,
                    leader: Some(1),
                },
            );
        }
        // Node 9 claims epoch 7 with a forged certificate: votes it signed for 3 and 4.
        let forged = Input::Receive {
            from: 9,
            msg: Message::Heartbeat {
                term: term(7, 9),
                pos: LogPos::default(),
                cert: vec![
                    SignedVote {
                        voter: 3,
                        sig: HashVotes::new(9).sign(&term(7, 9)),
                    },
                    SignedVote {
                        voter: 4,
                        sig: HashVotes::new(9).sign(&term(7, 9)),
                    },
                ],
            },
        };
        let out = step(&mut e, forged);
        assert!(e.is_leader(), "still leading");
        assert_eq!(e.term(), Some(&term(1, 1)));
        assert_eq!(
            stood(&out).map(|t| t.epoch),
            Some(8),
            "re-wins above it: {out:?}"
        );
        // What the members announce counts as backing: once 3 and 4 say they follow 9, its
        // term is proven.
        for peer in [3, 4] {
            step(
                &mut e,
                Input::Supports {
                    from: peer,
                    leader: Some(9),
                },
            );
        }
        step(&mut e, heartbeat(7, 9));
        assert_eq!(e.leader(), Some(&9));
    }

    #[test]
    fn the_lease_protects_a_live_leader_but_not_a_dead_one() {
        let mut e = node(1);
        step(&mut e, heartbeat(1, 2));
        e.deadline = u64::MAX; // keep our own timer out of the way
        ticks(&mut e, 5);
        // Another candidate while the leader was heard 5 ticks ago: refused.
        assert_eq!(
            answer(&step(&mut e, request(2, 3, LogPos::default())), 3),
            Some(false)
        );
        // Our own leader re-winning itself a term: granted, and we keep following it.
        assert_eq!(
            answer(&step(&mut e, request(3, 2, LogPos::default())), 2),
            Some(true)
        );
        assert_eq!(e.leader(), Some(&2));
        // A log stamped with the leader's own term is no reason: refused.
        let same = pos(1, 2, 7);
        assert_eq!(answer(&step(&mut e, request(4, 3, same)), 3), Some(false));
        // A log with entries from a newer term than the leader's: granted.
        let newer = pos(3, 2, 1);
        assert_eq!(answer(&step(&mut e, request(5, 3, newer)), 3), Some(true));
        // Once the leader is silent for `election_timeout_min`, candidates are heard.
        step(&mut e, heartbeat(1, 2)); // a stale term: no lease renewal
        let mut e = node(1);
        step(&mut e, heartbeat(1, 2));
        e.deadline = u64::MAX;
        ticks(&mut e, 10);
        assert_eq!(
            answer(&step(&mut e, request(2, 3, LogPos::default())), 3),
            Some(true)
        );
        assert_eq!(
            e.leader(),
            None,
            "voted for another: no leader until one wins"
        );
    }

    #[test]
    fn a_listener_that_hears_a_leader_it_cannot_follow_stands_sooner() {
        let stranded = Persistent {
            epoch: 7,
            term: Some(term(7, 3)),
            voted: None,
        };
        let mut e = Election::new(1, P, Some(stranded), 1, signer(1));
        assert!(e.deadline >= 20, "listens a full timeout");
        assert!(step(&mut e, heartbeat(5, 2)).is_empty());
        assert_eq!(e.leader(), None);
        assert!(
            e.deadline <= 10,
            "but not once it hears a leader below its term"
        );
        let out = ticks(&mut e, 20);
        assert_eq!(stood(&out), Some(term(8, 1)));
    }

    #[test]
    fn votes_go_only_to_logs_at_least_ours() {
        let mut e = node(1);
        step(&mut e, Input::LogPos(pos(1, 5, 10)));
        assert_eq!(
            answer(&step(&mut e, request(2, 2, pos(1, 5, 9))), 2),
            Some(false)
        );
        assert_eq!(
            answer(&step(&mut e, request(2, 3, LogPos::default())), 3),
            Some(false)
        );
        assert_eq!(
            answer(&step(&mut e, request(3, 2, pos(1, 5, 10))), 2),
            Some(true)
        );
        assert_eq!(
            answer(&step(&mut e, request(4, 3, pos(2, 3, 0))), 3),
            Some(true)
        );
    }

    #[test]
    fn a_leader_rewins_itself_a_term_above_a_higher_candidacy() {
        let mut e = node(1);
        step(&mut e, Input::Heard(2));
        step(&mut e, Input::Heard(3));
        // Alone in its alive set after the window: it leads.
        ticks(&mut e, 31);
        assert!(e.is_leader());
        let led = *e.term().expect("a term");
        step(&mut e, Input::Heard(2));
        step(&mut e, Input::Heard(3));
        // Its log has nothing of its own term yet (followers may have stamped what they
        // replicated with it, though).
        let older = LogPos { term: None, seq: 5 };
        step(&mut e, Input::LogPos(older));
        let out = step(&mut e, request(led.epoch + 5, 3, LogPos::default()));
        assert_eq!(answer(&out, 3), Some(false));
        let again = term(led.epoch + 6, 1);
        assert_eq!(stood(&out), Some(again));
        // It asks with its position stamped with the term it leads, so that such followers
        // do not find it behind them.
        let asked = out.iter().find_map(|o| match o {
            Output::Broadcast(Message::VoteRequest { pos, .. }) => Some(*pos),
            _ => None,
        });
        assert_eq!(
            asked,
            Some(LogPos {
                term: Some(led),
                seq: 5
            })
        );
        assert!(e.is_leader(), "still leading its current term meanwhile");
        let out = step(
            &mut e,
            Input::Receive {
                from: 2,
                msg: Message::Vote {
                    term: again,
                    granted: true,
                    sig: sig(2, &again),
                },
            },
        );
        assert!(out.contains(&Output::Role(RoleChange::Leader { term: again })));
        assert_eq!(e.term(), Some(&again));
    }

    #[test]
    fn a_leader_votes_for_a_log_from_a_newer_term() {
        let mut e = node(1);
        ticks(&mut e, 30);
        assert!(e.is_leader());
        step(&mut e, Input::LogPos(pos(1, 1, 4)));
        assert_eq!(
            answer(&step(&mut e, request(3, 2, pos(1, 1, 9))), 2),
            Some(false)
        );
        assert_eq!(
            answer(&step(&mut e, request(5, 2, pos(2, 7, 0))), 2),
            Some(true)
        );
        assert!(e.is_leader(), "until the winner's heartbeat");
        step(&mut e, heartbeat(5, 2));
        assert_eq!(e.leader(), Some(&2));
    }

    #[test]
    fn a_split_vote_goes_to_the_better_log_then_the_higher_id() {
        // Same epoch, 3 has the better log: 5 backs off, 3 stands again.
        let mut high = node(5);
        let mut low = node(3);
        low.step(Input::LogPos(pos(1, 9, 4)), &mut Vec::new());
        for (e, peer) in [(&mut high, 3), (&mut low, 5)] {
            e.step(Input::Heard(peer), &mut Vec::new());
            e.step(Input::Heard(9), &mut Vec::new());
            e.deadline = 0;
        }
        ticks(&mut high, 1);
        ticks(&mut low, 1);
        let out = step(&mut high, request(1, 3, pos(1, 9, 4)));
        assert_eq!((answer(&out, 3), stood(&out)), (Some(false), None));
        let out = step(&mut low, request(1, 5, LogPos::default()));
        assert_eq!(stood(&out), Some(term(2, 3)));
    }

    #[test]
    fn a_split_vote_goes_to_the_higher_id() {
        // Two candidates in epoch 1: 5 stands again at once, 3 backs off.
        let mut high = node(5);
        let mut low = node(3);
        for (e, peer) in [(&mut high, 3), (&mut low, 5)] {
            e.step(Input::Heard(peer), &mut Vec::new());
            e.step(Input::Heard(9), &mut Vec::new());
            e.deadline = 0;
        }
        assert_eq!(stood(&ticks(&mut high, 1)), Some(term(1, 5)));
        assert_eq!(stood(&ticks(&mut low, 1)), Some(term(1, 3)));
        let out = step(&mut high, request(1, 3, LogPos::default()));
        assert_eq!(answer(&out, 3), Some(false));
        assert_eq!(stood(&out), Some(term(2, 5)));
        let out = step(&mut low, request(1, 5, LogPos::default()));
        assert_eq!((answer(&out, 5), stood(&out)), (Some(false), None));
        assert!(low.deadline >= low.now + 10);
        assert_eq!(
            answer(&step(&mut low, request(2, 5, LogPos::default())), 5),
            Some(true)
        );
    }

    #[test]
    fn a_minority_side_elects_once_the_unreachable_expire() {
        let mut e = node(1);
        for p in [2, 3, 4] {
            step(&mut e, Input::Heard(p));
        }
        // 1 of 4 is no majority; after `alive_window` the others have expired.
        let out = ticks(&mut e, 29);
        assert!(stood(&out).is_some() && !e.is_leader());
        assert_eq!(e.alive().count(), 3);
        ticks(&mut e, 1);
        assert_eq!(e.alive().count(), 0);
        assert!(e.is_leader());
    }

    #[test]
    fn garbage_neither_panics_nor_wedges_the_epoch() {
        let mut e = node(1);
        let far = term(u64::MAX, 2);
        for msg in [
            Message::Heartbeat {
                term: far,
                pos: LogPos::default(),
                cert: vec![],
            },
            Message::VoteRequest {
                term: far,
                pos: LogPos::default(),
            },
            Message::Vote {
                term: term(u64::MAX, 1),
                granted: true,
                sig: sig(2, &term(u64::MAX, 1)),
            },
        ] {
            assert!(step(&mut e, Input::Receive { from: 2, msg }).is_empty());
        }
        // Relayed heartbeats, requests for someone else, votes for someone else, ourselves.
        for (from, msg) in [
            (
                3,
                Message::Heartbeat {
                    term: term(4, 2),
                    pos: LogPos::default(),
                    cert: vec![],
                },
            ),
            (
                3,
                Message::VoteRequest {
                    term: term(4, 2),
                    pos: LogPos::default(),
                },
            ),
            (
                3,
                Message::Vote {
                    term: term(4, 2),
                    granted: true,
                    sig: sig(3, &term(4, 2)),
                },
            ),
            (
                1,
                Message::Heartbeat {
                    term: term(4, 1),
                    pos: LogPos::default(),
                    cert: vec![],
                },
            ),
        ] {
            assert!(step(&mut e, Input::Receive { from, msg }).is_empty());
        }
        assert_eq!((e.epoch(), e.term()), (0, None));
        ticks(&mut e, 30);
        assert!(e.is_leader(), "still elects itself");

        // A corrupt record at the very top of the epoch space: it stands once, then never
        // again (that would be a second vote in `u64::MAX`).
        let top = Persistent {
            epoch: u64::MAX - 1,
            term: Some(term(3, 2)),
            voted: None,
        };
        let mut e = Election::new(1, P, Some(top), 1, signer(1));
        e.step(Input::Heard(2), &mut Vec::new());
        let out = ticks(&mut e, 40);
        assert_eq!(stood(&out), Some(term(u64::MAX, 1)));
        let out = ticks(&mut e, 200);
        assert_eq!(stood(&out), None);
        assert!(e.is_leader(), "alone after the window");
        // Nonsense parameters are made sane.
        let zero = Params {
            heartbeat_ticks: 0,
            election_timeout_min: 0,
            election_timeout_max: 0,
            alive_window: 0,
        };
        let mut e = Election::new(1, zero, None, 0, signer(1));
        ticks(&mut e, 10);
        assert!(e.is_leader());
        let huge = Params {
            heartbeat_ticks: u64::MAX,
            election_timeout_min: u64::MAX,
            election_timeout_max: u64::MAX,
            alive_window: u64::MAX,
        };
        let mut e = Election::new(1, huge, None, 0, signer(1));
        step(&mut e, Input::Heard(2));
        ticks(&mut e, 10);
        assert!(!e.is_leader());
        // A record whose epoch lags its own term and vote is repaired (and re-persisted).
        let lagging = Persistent {
            epoch: 1,
            term: Some(term(4, 2)),
            voted: Some((6, 3)),
        };
        let mut e = Election::new(1, P, Some(lagging), 1, signer(1));
        assert_eq!(e.epoch(), 6);
        assert!(
            matches!(step(&mut e, Input::Tick).first(), Some(Output::Persist(p)) if p.epoch == 6)
        );
    }

    #[derive(Debug, Clone)]
    enum Action {
        Tick(u8),
        Heard(u64),
        Pos(u64, u64),
        Heartbeat(u64, u64),
        Request(u64, u64, u64),
        Vote(u64, u64, bool),
        Restart,
    }

    fn action() -> impl Strategy<Value = Action> {
        let epoch = prop_oneof![8 => 0..6u64, 1 => Just(u64::MAX), 1 => Just(1u64 << 40)];
        let peer = 0..5u64;
        prop_oneof![
            4 => (1..30u8).prop_map(Action::Tick),
            2 => peer.clone().prop_map(Action::Heard),
            1 => (0..6u64, 0..4u64).prop_map(|(e, s)| Action::Pos(e, s)),
            3 => (epoch.clone(), peer.clone()).prop_map(|(e, p)| Action::Heartbeat(e, p)),
            3 => (epoch.clone(), peer.clone(), 0..4u64).prop_map(|(e, p, s)| Action::Request(e, p, s)),
            2 => (epoch, peer, any::<bool>()).prop_map(|(e, p, g)| Action::Vote(e, p, g)),
            1 => Just(Action::Restart),
        ]
    }

    proptest! {
        /// Any input sequence, restarts included: durable state goes out before what depends
        /// on it, terms never go back, one vote per epoch, only our own terms are led.
        #[test]
        fn any_inputs_keep_the_local_invariants(actions in prop::collection::vec(action(), 1..200)) {
            const ME: u64 = 1;
            let mut e = node(ME);
            let mut disk: Option<Persistent<u64>> = None;
            let mut votes: BTreeMap<u64, u64> = BTreeMap::new();
            let mut max_term: Option<Term<u64>> = None;
            for a in actions {
                let inputs = match a {
                    Action::Tick(n) => vec![Input::Tick; n as usize],
                    Action::Heard(p) => vec![Input::Heard(p)],
                    Action::Pos(e, s) => vec![Input::LogPos(pos(e, 2, s))],
                    Action::Heartbeat(ep, p) => vec![heartbeat(ep, p)],
                    Action::Request(ep, p, s) => vec![request(ep, p, pos(ep.min(5), 2, s))],
                    Action::Vote(ep, p, granted) => vec![Input::Receive {
                        from: p,
                        msg: Message::Vote { term: term(ep, ME), granted, sig: sig(p, &term(ep, ME)) },
                    }],
                    Action::Restart => {
                        e = Election::new(ME, P, disk.clone(), 5, signer(ME));
                        vec![]
                    }
                };
                for input in inputs {
                    let mut out = Vec::new();
                    e.step(input, &mut out);
                    for o in out {
                        match o {
                            Output::Persist(p) => {
                                if let Some(d) = &disk {
                                    prop_assert!(p.epoch >= d.epoch && p.term >= d.term);
                                }
                                if let Some((ep, c)) = p.voted {
                                    prop_assert_eq!(*votes.entry(ep).or_insert(c), c);
                                }
                                disk = Some(p);
                            }
                            Output::Send { msg: Message::Vote { term, granted: true, .. }, .. } => {
                                prop_assert_eq!(disk.as_ref().and_then(|d| d.voted), Some((term.epoch, term.candidate)));
                            }
                            Output::Broadcast(Message::VoteRequest { term, .. }) => {
                                prop_assert_eq!(disk.as_ref().and_then(|d| d.voted), Some((term.epoch, ME)));
                            }
                            Output::Role(RoleChange::Leader { term }) => {
                                prop_assert_eq!(term.candidate, ME);
                                prop_assert_eq!(disk.as_ref().and_then(|d| d.term), Some(term));
                            }
                            _ => {}
                        }
                    }
                    prop_assert!(e.term().copied() >= max_term);
                    max_term = e.term().copied();
                    if e.is_leader() {
                        prop_assert_eq!(e.term().map(|t| t.candidate), Some(ME));
                    }
                    if let Some(t) = e.term() {
                        prop_assert!(e.accepts(t));
                    }
                }
            }
        }
    }
}
