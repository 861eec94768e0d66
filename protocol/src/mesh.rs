//! What nodes say to each other: gossip (topic `bx3/mesh/2`) and direct request-response
//! (`/bx3/rpc/2`), each body inside the versioned, size-limited envelope of [`crate::wire`].
//!
//! Gossip carries only small periodic traffic: announcements and election messages.
//! Everything else is a request with exactly one response: assignments, results, module
//! fetches, forwarded API calls, replication.
//!
//! These are wire types only. A node's storage records and its scheduler's working types are
//! its own (they convert at the edge), so the wire can keep its compatibility rules (fields
//! only added, with `#[serde(default)]`; variants only appended) while storage and scheduling
//! evolve on their own.
//!
//! Everything here is decoded from untrusted bytes. Types that carry an invariant check it
//! while they are decoded ([`NodeId`], [`ModuleHash`], the DAG spec through `ValidDag`); the
//! numbers a peer sends (task indices, counts, terms) are checked by the receiver against its
//! own state before it uses them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::api::{DagState, DagSummary, DagView, TaskQuery, TaskState};
use crate::dag::ValidDag;
pub use crate::ids::{DagId, ModuleHash, NodeId};
use crate::wire::{self, CodecError};

// ---- election ----------------------------------------------------------------------------

/// A leadership term: epoch first, then the candidate that stood (and only it can lead it).
/// Generic over the node id so the election's own simulator can use small integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term<Id> {
    pub epoch: u64,
    pub candidate: Id,
}

/// Position in the replicated state: the term of its last entry, then a sequence number.
/// Ordered: a later term beats any sequence number of an earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LogPos<Id> {
    pub term: Option<Term<Id>>,
    pub seq: u64,
}

impl<Id> Default for LogPos<Id> {
    fn default() -> Self {
        LogPos { term: None, seq: 0 }
    }
}

/// A signature (ed25519 in the node: 64 bytes), as a CBOR byte string of at most
/// [`Signature::MAX_LEN`] bytes.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Signature(pub Vec<u8>);

impl Signature {
    pub const MAX_LEN: usize = 256;
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({} bytes)", self.0.len())
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Signature, D::Error> {
        let Bytes(b) = Bytes::deserialize(d)?;
        if b.len() > Signature::MAX_LEN {
            return Err(serde::de::Error::custom("signature too long"));
        }
        Ok(Signature(b))
    }
}

/// A granted vote, as proof: `voter` signed (epoch, candidate) of the term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedVote<Id> {
    pub voter: Id,
    pub sig: Signature,
}

/// Most votes a heartbeat's certificate carries (a certificate needs a majority of the
/// members the receiver knows; the mesh keeps direct connections to at most 64 peers).
pub const MAX_CERT_VOTES: usize = 128;

/// What nodes say to each other about the election.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElectionMessage<Id> {
    /// Broadcast by a leader every heartbeat interval and at once on winning. `cert` holds
    /// the signed votes that won the term, so a node that did not take part can check that
    /// the sender won it (see the election's rules).
    Heartbeat {
        term: Term<Id>,
        pos: LogPos<Id>,
        #[serde(default = "Vec::new")]
        cert: Vec<SignedVote<Id>>,
    },
    /// Broadcast by a candidate standing in `term` (its own).
    VoteRequest { term: Term<Id>, pos: LogPos<Id> },
    /// The answer to a vote request, sent to its candidate; `term` is the candidacy's. A
    /// granted vote carries the voter's signature over the term.
    Vote {
        term: Term<Id>,
        granted: bool,
        #[serde(default)]
        sig: Option<Signature>,
    },
}

impl<Id> ElectionMessage<Id> {
    pub fn term(&self) -> &Term<Id> {
        match self {
            ElectionMessage::Heartbeat { term, .. }
            | ElectionMessage::VoteRequest { term, .. }
            | ElectionMessage::Vote { term, .. } => term,
        }
    }
}

/// The bytes a voter signs: a fixed prefix, the epoch, then the candidate's id.
pub fn vote_statement(epoch: u64, candidate: &str) -> Vec<u8> {
    let mut out = b"bx3 vote v1\0".to_vec();
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(candidate.as_bytes());
    out
}

// ---- gossip ------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Gossip {
    Announce(Announce),
    Election(ElectionMessage<NodeId>),
}

/// Most addresses one announcement carries.
pub const MAX_ANNOUNCED_ADDRS: usize = 16;

/// A node telling the mesh it is alive and what it can run. Sent every second and at once
/// when its executor count changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Announce {
    pub version: String,
    pub executors_total: u32,
    pub executors_busy: u32,
    #[serde(default)]
    pub ram_per_executor_mb: u64,
    #[serde(default)]
    pub available_ram_mb: u64,
    #[serde(default)]
    pub min_free_ram_mb: u64,
    #[serde(default)]
    pub leader: Option<NodeId>,
    /// Addresses other nodes can dial (peer exchange).
    #[serde(default)]
    pub addrs: Vec<String>,
    /// Last replicated batch this node applied.
    #[serde(default)]
    pub replica_seq: u64,
    /// Executors its RAM allows, and its CPU cores (the pool is the smaller, unless capped).
    #[serde(default)]
    pub ram_slots: u64,
    #[serde(default)]
    pub cpu_cores: u64,
    /// Which limit decided `executors_total` (`ram`, `cpu`, `max-executors`; a string, so
    /// that a limit a later version adds does not make the announcement undecodable).
    #[serde(default)]
    pub limited_by: String,
}

// ---- work --------------------------------------------------------------------------------

/// One task attempt a controller orders a worker to run, inputs already resolved.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Job {
    pub dag: DagId,
    pub task: u32,
    /// 1-based attempt number; a result for another attempt is stale and ignored.
    pub attempt: u32,
    pub module: String,
    pub module_hash: ModuleHash,
    /// argv[0] is the module file name, argv[1..] the resolved inputs.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: String,
    pub timeout_ms: u64,
    pub memory_mb: Option<u64>,
}

/// How an attempt ended on a worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobResult {
    pub dag: DagId,
    pub task: u32,
    pub attempt: u32,
    pub outcome: Result<String, String>,
    /// How long the attempt ran on the worker (its own clock), ms.
    #[serde(default)]
    pub run_ms: u64,
    /// Tail of the attempt's stderr.
    #[serde(default)]
    pub stderr: Option<String>,
    /// The attempt never ran: the worker could not get its module. Not the task's fault:
    /// the controller hands the task out again without counting the attempt.
    #[serde(default)]
    pub interrupted: bool,
}

// ---- replicated state --------------------------------------------------------------------

/// The validated DAG and the modules it runs, fixed at submit time.
///
/// Decodes only when it is whole: the DAG verifies (`ValidDag` decodes through `verify`),
/// every module a task names has a hash (each a SHA-256, `ModuleHash`), and there are no
/// more entries than tasks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(try_from = "UncheckedSpec")]
pub struct Spec {
    pub dag: ValidDag,
    /// Module file name -> SHA-256 of its bytes.
    pub modules: BTreeMap<String, ModuleHash>,
}

#[derive(Deserialize)]
struct UncheckedSpec {
    dag: ValidDag,
    modules: BTreeMap<String, ModuleHash>,
}

impl TryFrom<UncheckedSpec> for Spec {
    type Error = String;

    fn try_from(raw: UncheckedSpec) -> Result<Spec, String> {
        let spec = Spec {
            dag: raw.dag,
            modules: raw.modules,
        };
        spec.check()?;
        Ok(spec)
    }
}

impl Spec {
    /// Whether the module table fits the DAG (see the type's docs).
    pub fn check(&self) -> Result<(), String> {
        if self.modules.len() > self.dag.tasks.len() {
            return Err(format!(
                "the spec lists {} modules for {} tasks",
                self.modules.len(),
                self.dag.tasks.len()
            ));
        }
        if let Some(task) = self
            .dag
            .tasks
            .iter()
            .find(|t| !self.modules.contains_key(&t.module))
        {
            return Err(format!(
                "task {:?} runs module {:?}, which the spec has no hash for",
                task.id, task.module
            ));
        }
        Ok(())
    }
}

/// What a node knows about a DAG besides its spec and tasks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DagRecord {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    pub state: DagState,
    pub created_at_ms: u64,
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub counts: crate::api::Counts,
}

/// One attempt of a task, as recorded by its controller.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AttemptRecord {
    pub attempt: u32,
    #[serde(default)]
    pub node: Option<NodeId>,
    pub outcome: crate::api::AttemptOutcome,
    #[serde(default)]
    pub queued_ms: Option<u64>,
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub finished_ms: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub stderr: Option<String>,
}

/// One task's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TaskRecord {
    pub state: TaskState,
    pub attempts: u32,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub node: Option<NodeId>,
    /// When the task was last queued (became ready, or went back to the queue).
    #[serde(default)]
    pub queued_ms: Option<u64>,
    #[serde(default)]
    pub log: Vec<AttemptRecord>,
}

/// Everything that changed about one DAG in one batch. `spec` only when the DAG is new to the
/// receiver (or in a snapshot); `tasks` only the records that changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DagDelta {
    pub id: DagId,
    pub meta: DagRecord,
    #[serde(default)]
    pub spec: Option<Spec>,
    #[serde(default)]
    pub tasks: Vec<(u32, TaskRecord)>,
}

/// One persisted round of the controller's state changes, numbered in order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Batch {
    pub seq: u64,
    pub dags: Vec<DagDelta>,
}

/// A DAG as a digest entry: enough to tell who knows more about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DagDigest {
    pub id: DagId,
    pub state: DagState,
    /// Tasks in a final state.
    pub done: u64,
}

// ---- requests ----------------------------------------------------------------------------

pub type NodeTerm = Term<NodeId>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Request {
    /// Election messages addressed to one node (votes).
    Election(ElectionMessage<NodeId>),
    /// The controller orders a worker to run jobs. Obeyed only from the controller the
    /// worker follows, in its term.
    Assign {
        term: NodeTerm,
        jobs: Vec<Job>,
    },
    /// A worker reports finished attempts to the controller.
    Results {
        results: Vec<JobResult>,
    },
    /// Module bytes by SHA-256.
    FetchModule {
        hash: ModuleHash,
    },
    /// A DAG accepted by a node's API, handed to the controller. `id` is chosen where the DAG
    /// entered the mesh, so a retried submission is recognised. The controller fetches the
    /// modules it lacks from the sender.
    Submit {
        id: DagId,
        spec: Spec,
        source: Option<String>,
    },
    /// A DAG; with `after`, answered once its version passes `after` (or `wait_ms` passes).
    GetDag {
        id: DagId,
        tasks: bool,
        #[serde(default)]
        after: Option<u64>,
        #[serde(default)]
        wait_ms: u64,
        /// Only this page of tasks (checked by the receiver: `TaskQuery::checked`).
        #[serde(default)]
        page: Option<TaskQuery>,
    },
    ListDags {
        limit: u32,
    },
    Cancel {
        id: DagId,
    },
    /// The controller cancelled this DAG: stop its jobs here.
    Abort {
        term: NodeTerm,
        dag: DagId,
    },
    /// The controller's state changes, in order: batches follow the receiver's `prev`, or
    /// (`snapshot`) replace what it knows of the DAGs they carry, merged record by record.
    Replicate {
        term: NodeTerm,
        prev: u64,
        snapshot: bool,
        /// Shared, not copied: the controller sends the same batches to every follower
        /// (`Arc` encodes as the batch itself; the bytes are unchanged).
        batches: Vec<std::sync::Arc<Batch>>,
    },
    /// A node that starts following a controller says which DAGs it holds, so the controller
    /// can pull what it lacks (after a partition heals, or a full restart).
    Sync {
        digest: Vec<DagDigest>,
    },
    /// The DAGs the controller asked for after a `Sync`, in full.
    Push {
        dags: Vec<DagDelta>,
    },
}

impl Request {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Election(_) => "election",
            Request::Assign { .. } => "assign",
            Request::Results { .. } => "results",
            Request::FetchModule { .. } => "fetch-module",
            Request::Submit { .. } => "submit",
            Request::GetDag { .. } => "get-dag",
            Request::ListDags { .. } => "list-dags",
            Request::Cancel { .. } => "cancel",
            Request::Abort { .. } => "abort",
            Request::Replicate { .. } => "replicate",
            Request::Sync { .. } => "sync",
            Request::Push { .. } => "push",
        }
    }
}

/// Why a request was not carried out, typed so that the receiver decides what to do (retry
/// elsewhere, give up, tell the user) without reading text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Only the controller does this; here is who this node thinks it is.
    #[error("this node is not the controller")]
    NotLeader { leader: Option<NodeId> },
    /// The order's term is not the one this node follows (older, or not yet known here).
    #[error("term {got} is not the term this node follows ({ours:?})")]
    WrongTerm { got: u64, ours: Option<u64> },
    /// The sender is not entitled to this (e.g. a result from a node the task was not
    /// assigned to, an order from a node that is not the controller).
    #[error("not accepted from this sender: {0}")]
    NotEntitled(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("DAG {dag} has already finished ({state:?})")]
    AlreadyFinished { dag: DagId, state: DagState },
    #[error("no controller has been elected yet; try again in a moment")]
    NoLeader,
    /// Stored and will run, but no second node confirmed a copy in time.
    #[error("DAG {0} is stored on the controller and will run, but no other node confirmed a copy in time")]
    NotReplicated(DagId),
    /// The request's content is unacceptable (bad index, over a limit, id reused, ...).
    #[error("{0}")]
    Invalid(String),
    /// Temporarily unable (overloaded, shutting down, a fetch failed): retry later.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Response {
    Ok,
    Refused(Refusal),
    Module {
        bytes: Bytes,
    },
    Submitted {
        id: DagId,
    },
    Dag(Box<DagView>),
    Dags(Vec<DagSummary>),
    /// A follower applied replicated state up to `seq`.
    Replicated {
        seq: u64,
    },
    /// A follower cannot apply batches after `prev`: its position is `seq`; send a snapshot.
    Behind {
        seq: u64,
    },
    /// After a `Sync`: send these DAGs in full.
    SyncWant {
        ids: Vec<DagId>,
    },
}

/// `Vec<u8>` as a CBOR byte string (not an array of numbers).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

// ---- codec -------------------------------------------------------------------------------

pub fn encode_gossip(msg: &Gossip) -> Result<Vec<u8>, CodecError> {
    wire::encode(msg, wire::MAX_GOSSIP)
}

pub fn decode_gossip(bytes: &[u8]) -> Result<Gossip, CodecError> {
    wire::decode(bytes, wire::MAX_GOSSIP)
}

pub fn encode_rpc<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    wire::encode(msg, wire::MAX_RPC)
}

pub fn decode_rpc<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    wire::decode(bytes, wire::MAX_RPC)
}
