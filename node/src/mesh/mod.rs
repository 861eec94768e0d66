//! What nodes say to each other: typed messages inside the versioned envelope of
//! `bx3_protocol::wire`, and the membership table built from announcements.
//!
//! Gossip (topic `bx3/mesh/1`, ≤ 64 KiB) carries only small periodic traffic: announcements
//! and election heartbeats / vote requests. Everything else is a direct request-response on
//! `/bx3/rpc/1`: assignments, results, module fetches, forwarded API calls.

pub mod members;

use bx3_protocol::api::{DagSummary, DagView};
use bx3_protocol::ids::DagId;
use bx3_protocol::wire::{self, CodecError};
use serde::{Deserialize, Serialize};

use crate::election;
use crate::store::{DagMeta, SpecRecord, TaskRecord};

/// Peer ids travel as their base58 text.
pub type Id = String;
pub type Term = election::Term<Id>;
pub type ElectionMsg = election::Message<Id>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Gossip {
    Announce(Announce),
    Election(ElectionMsg),
}

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
    pub leader: Option<Id>,
    #[serde(default)]
    pub addrs: Vec<String>,
    /// Last replicated batch this node applied.
    #[serde(default)]
    pub replica_seq: u64,
}

/// One task assigned to a worker, inputs already resolved: the planner's assignment as is.
pub use crate::controller::planner::Assignment as WireJob;

/// How an attempt ended on a worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WireResult {
    pub dag: DagId,
    pub task: u32,
    pub attempt: u32,
    pub outcome: Result<String, String>,
}

/// Everything that changed about one DAG in one batch. `spec` only when the DAG is new to the
/// receiver (or in a snapshot); `tasks` only the records that changed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DagDelta {
    pub id: DagId,
    pub meta: DagMeta,
    #[serde(default)]
    pub spec: Option<SpecRecord>,
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
    pub state: bx3_protocol::api::DagState,
    /// Tasks in a final state.
    pub done: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Election messages addressed to one node (votes).
    Election(ElectionMsg),
    /// The leader orders a worker to run jobs. Refused for a term lower than the worker's.
    Assign {
        term: Term,
        jobs: Vec<WireJob>,
    },
    /// A worker reports finished attempts to the leader.
    Results {
        results: Vec<WireResult>,
    },
    /// Module bytes by SHA-256.
    FetchModule {
        hash: String,
    },
    /// A DAG accepted by a node's API, handed to the leader. Modules the leader lacks are
    /// fetched back from the sender.
    Submit {
        spec: SpecRecord,
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
        // hook(dash): a page of tasks instead of all of them (dashboard, `logs`).
        #[serde(default)]
        page: Option<bx3_protocol::api::TaskQuery>,
    },
    ListDags {
        limit: u32,
    },
    Cancel {
        id: DagId,
    },
    /// The controller cancelled this DAG: stop its jobs here.
    Abort {
        dag: DagId,
    },
    /// The controller's state changes, in order: batches follow the receiver's `prev`, or
    /// (`snapshot`) replace what it knows of the DAGs they carry, merged record by record.
    Replicate {
        term: Term,
        prev: u64,
        snapshot: bool,
        batches: Vec<Batch>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Ok,
    /// Refused, with the reason (e.g. a stale term).
    Rejected {
        reason: String,
    },
    /// Only the leader does this; here is who we think it is.
    NotLeader {
        leader: Option<Id>,
    },
    Module {
        bytes: serde_bytes_vec::Bytes,
    },
    NotFound {
        what: String,
    },
    Submitted {
        id: DagId,
    },
    Dag(Box<DagView>),
    Dags(Vec<DagSummary>),
    /// The request failed; `status` is the HTTP status the API should answer with.
    Error {
        status: u16,
        message: String,
    },
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
    /// Internal to a node, never sent: replicated state applied, modules still to fetch
    /// before answering `Replicated { seq }`.
    NeedModules {
        seq: u64,
        hashes: Vec<String>,
    },
}

/// `Vec<u8>` as a CBOR byte string (not an array of numbers).
pub mod serde_bytes_vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Bytes(pub Vec<u8>);

    impl Serialize for Bytes {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
            match serde_cbor::value::Value::deserialize(d)? {
                serde_cbor::value::Value::Bytes(b) => Ok(Bytes(b)),
                _ => Err(serde::de::Error::custom("expected a byte string")),
            }
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_the_envelope() {
        let a = Gossip::Announce(Announce {
            version: "0.1.0".into(),
            executors_total: 4,
            executors_busy: 1,
            leader: Some("12D3KooW".into()),
            ..Announce::default()
        });
        let bytes = encode_gossip(&a).expect("encodes");
        assert_eq!(decode_gossip(&bytes).expect("decodes"), a);

        let r = Request::Results {
            results: vec![WireResult {
                dag: DagId::new(5, 6),
                task: 3,
                attempt: 1,
                outcome: Ok("héllo".into()),
            }],
        };
        let bytes = encode_rpc(&r).expect("encodes");
        match decode_rpc::<Request>(&bytes).expect("decodes") {
            Request::Results { results } => assert_eq!(results[0].outcome, Ok("héllo".to_string())),
            other => panic!("wrong variant {other:?}"),
        }
    }

    #[test]
    fn module_bytes_are_a_byte_string() {
        let bytes = encode_rpc(&Response::Module {
            bytes: serde_bytes_vec::Bytes(vec![0, 97, 115, 109]),
        })
        .expect("encodes");
        // 0x44 = CBOR byte string of length 4, not an array (0x84).
        assert!(
            bytes.windows(5).any(|w| w == [0x44, 0, 97, 115, 109]),
            "{bytes:02x?}"
        );
    }

    #[test]
    fn garbage_and_oversize_gossip_is_refused() {
        assert!(decode_gossip(b"\x00garbage").is_err());
        assert!(decode_gossip(&vec![0u8; wire::MAX_GOSSIP + 1]).is_err());
        // A valid envelope around a body that is not a Gossip.
        let other = wire::encode(&"just a string", wire::MAX_GOSSIP).expect("encodes");
        assert!(decode_gossip(&other).is_err());
    }
}
