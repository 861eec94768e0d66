//! Golden bytes of every mesh message variant at wire version 2. A message a node of this
//! version sends must stay decodable by every later node of the same version: if one of
//! these tests fails, the change needs a new wire version (and protocol names), not an edit
//! of the golden file. `BLESS=1 cargo test -p bx3-protocol --test golden` writes the files
//! anew (only for a deliberate version bump).

use std::collections::BTreeMap;
use std::path::PathBuf;

use bx3_protocol::api::{AttemptOutcome, Counts, DagState, DagSummary, DagView, TaskState};
use bx3_protocol::dag::parse_dag;
use bx3_protocol::ids::{DagId, ModuleHash, NodeId};
use bx3_protocol::mesh::*;

fn node(s: &str) -> NodeId {
    s.parse().expect("node id")
}

fn hash(c: char) -> ModuleHash {
    c.to_string().repeat(64).parse().expect("hash")
}

fn term() -> NodeTerm {
    Term {
        epoch: 7,
        candidate: node("12D3KooWA"),
    }
}

fn spec() -> Spec {
    Spec {
        dag: parse_dag(
            "name: g\ntasks:\n  - {id: a, module: m.wasm, inputs: [\"x\"]}\n  - {id: b, module: m.wasm, inputs: [\"${a}!\"], depends_on: [a]}\n",
        )
        .expect("valid"),
        modules: BTreeMap::from([("m.wasm".to_string(), hash('a'))]),
    }
}

fn record() -> TaskRecord {
    TaskRecord {
        state: TaskState::Succeeded,
        attempts: 2,
        output: Some("out".into()),
        error: None,
        node: Some(node("n1")),
        queued_ms: Some(10),
        log: vec![AttemptRecord {
            attempt: 2,
            node: Some(node("n1")),
            outcome: AttemptOutcome::Succeeded,
            queued_ms: Some(10),
            started_ms: Some(11),
            finished_ms: Some(12),
            error: None,
            stderr: Some("warn".into()),
        }],
    }
}

fn delta() -> DagDelta {
    DagDelta {
        id: DagId::new(1_800_000_000_000, 9),
        meta: DagRecord {
            name: "g".into(),
            description: None,
            source: Some("g.yaml".into()),
            state: DagState::Running,
            created_at_ms: 1_800_000_000_000,
            finished_at_ms: None,
            version: 3,
            counts: Counts {
                total: 2,
                succeeded: 1,
                pending: 1,
                ..Counts::default()
            },
        },
        spec: Some(spec()),
        tasks: vec![(0, record())],
    }
}

fn gossip() -> Vec<(&'static str, Gossip)> {
    vec![
        (
            "gossip-announce",
            Gossip::Announce(Announce {
                version: "0.1.0".into(),
                executors_total: 4,
                executors_busy: 1,
                ram_per_executor_mb: 128,
                available_ram_mb: 4096,
                min_free_ram_mb: 512,
                leader: Some(node("12D3KooWA")),
                addrs: vec!["/ip4/127.0.0.1/tcp/4001".into()],
                replica_seq: 5,
                ram_slots: 28,
                cpu_cores: 4,
                limited_by: "cpu".into(),
            }),
        ),
        (
            "gossip-heartbeat",
            Gossip::Election(ElectionMessage::Heartbeat {
                term: term(),
                pos: LogPos {
                    term: Some(term()),
                    seq: 5,
                },
                cert: vec![SignedVote {
                    voter: node("n2"),
                    sig: Signature(vec![1, 2, 3]),
                }],
            }),
        ),
        (
            "gossip-vote-request",
            Gossip::Election(ElectionMessage::VoteRequest {
                term: term(),
                pos: LogPos::default(),
            }),
        ),
    ]
}

fn requests() -> Vec<(&'static str, Request)> {
    vec![
        (
            "request-election-vote",
            Request::Election(ElectionMessage::Vote {
                term: term(),
                granted: true,
                sig: Some(Signature(vec![9; 4])),
            }),
        ),
        (
            "request-assign",
            Request::Assign {
                term: term(),
                jobs: vec![Job {
                    dag: DagId::new(1_800_000_000_000, 9),
                    task: 1,
                    attempt: 1,
                    module: "m.wasm".into(),
                    module_hash: hash('a'),
                    argv: vec!["m.wasm".into(), "x!".into()],
                    env: vec![("K".into(), "V".into())],
                    stdin: "in".into(),
                    timeout_ms: 60_000,
                    memory_mb: Some(64),
                }],
            },
        ),
        (
            "request-results",
            Request::Results {
                results: vec![JobResult {
                    dag: DagId::new(1_800_000_000_000, 9),
                    task: 1,
                    attempt: 1,
                    outcome: Err("boom".into()),
                    run_ms: 12,
                    stderr: Some("trace".into()),
                    interrupted: false,
                }],
            },
        ),
        (
            "request-fetch-module",
            Request::FetchModule { hash: hash('b') },
        ),
        (
            "request-submit",
            Request::Submit {
                id: DagId::new(1_800_000_000_000, 9),
                spec: spec(),
                source: Some("g.yaml".into()),
            },
        ),
        (
            "request-get-dag",
            Request::GetDag {
                id: DagId::new(1_800_000_000_000, 9),
                tasks: true,
                after: Some(3),
                wait_ms: 25_000,
                page: None,
            },
        ),
        ("request-list-dags", Request::ListDags { limit: 100 }),
        (
            "request-cancel",
            Request::Cancel {
                id: DagId::new(1_800_000_000_000, 9),
            },
        ),
        (
            "request-abort",
            Request::Abort {
                term: term(),
                dag: DagId::new(1_800_000_000_000, 9),
            },
        ),
        (
            "request-replicate",
            Request::Replicate {
                term: term(),
                prev: 4,
                snapshot: false,
                batches: vec![std::sync::Arc::new(Batch {
                    seq: 5,
                    dags: vec![delta()],
                })],
            },
        ),
        (
            "request-sync",
            Request::Sync {
                digest: vec![DagDigest {
                    id: DagId::new(1_800_000_000_000, 9),
                    state: DagState::Running,
                    done: 1,
                }],
            },
        ),
        (
            "request-push",
            Request::Push {
                dags: vec![delta()],
            },
        ),
    ]
}

fn responses() -> Vec<(&'static str, Response)> {
    let view = DagView {
        id: DagId::new(1_800_000_000_000, 9).to_string(),
        name: "g".into(),
        state: DagState::Succeeded,
        tasks: BTreeMap::new(),
        order: vec!["a".into()],
        counts: Counts::default(),
        description: None,
        source: None,
        created_at_ms: 1,
        finished_at_ms: Some(2),
        version: 4,
        coordinator: None,
        page: None,
    };
    vec![
        ("response-ok", Response::Ok),
        (
            "response-refused-not-leader",
            Response::Refused(Refusal::NotLeader {
                leader: Some(node("n1")),
            }),
        ),
        (
            "response-refused-wrong-term",
            Response::Refused(Refusal::WrongTerm {
                got: 3,
                ours: Some(4),
            }),
        ),
        (
            "response-refused-not-entitled",
            Response::Refused(Refusal::NotEntitled("x".into())),
        ),
        (
            "response-refused-not-found",
            Response::Refused(Refusal::NotFound("DAG".into())),
        ),
        (
            "response-refused-already-finished",
            Response::Refused(Refusal::AlreadyFinished {
                dag: DagId::new(1_800_000_000_000, 9),
                state: DagState::Failed,
            }),
        ),
        (
            "response-refused-no-leader",
            Response::Refused(Refusal::NoLeader),
        ),
        (
            "response-refused-not-replicated",
            Response::Refused(Refusal::NotReplicated(DagId::new(1_800_000_000_000, 9))),
        ),
        (
            "response-refused-invalid",
            Response::Refused(Refusal::Invalid("bad".into())),
        ),
        (
            "response-refused-unavailable",
            Response::Refused(Refusal::Unavailable("busy".into())),
        ),
        (
            "response-refused-internal",
            Response::Refused(Refusal::Internal("oops".into())),
        ),
        (
            "response-module",
            Response::Module {
                bytes: Bytes(b"\0asm\x01\0\0\0".to_vec()),
            },
        ),
        (
            "response-submitted",
            Response::Submitted {
                id: DagId::new(1_800_000_000_000, 9),
            },
        ),
        ("response-dag", Response::Dag(Box::new(view))),
        (
            "response-dags",
            Response::Dags(vec![DagSummary {
                id: DagId::new(1_800_000_000_000, 9).to_string(),
                name: "g".into(),
                state: DagState::Running,
                counts: Counts::default(),
                created_at_ms: 1,
                finished_at_ms: None,
            }]),
        ),
        ("response-replicated", Response::Replicated { seq: 5 }),
        ("response-behind", Response::Behind { seq: 4 }),
        (
            "response-sync-want",
            Response::SyncWant {
                ids: vec![DagId::new(1_800_000_000_000, 9)],
            },
        ),
    ]
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares (or, with BLESS=1, writes) one message's golden bytes and decodes them back.
fn check<T>(name: &str, msg: &T, encode: impl Fn(&T) -> Vec<u8>, decode: impl Fn(&[u8]) -> T)
where
    T: PartialEq + std::fmt::Debug,
{
    let path = golden_dir().join(format!("{name}.hex"));
    let bytes = encode(msg);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&path, format!("{hex}\n")).expect("write golden file");
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (BLESS=1 writes it)", path.display()));
    let golden = golden.trim();
    let golden_bytes: Vec<u8> = (0..golden.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&golden[i..i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(
        decode(&golden_bytes),
        *msg,
        "{name}: the golden bytes no longer decode to the same message"
    );
    assert_eq!(hex, golden, "{name}: this build encodes it differently");
}

#[test]
fn every_gossip_variant_keeps_its_bytes() {
    for (name, msg) in gossip() {
        check(
            name,
            &msg,
            |m| encode_gossip(m).expect("encodes"),
            |b| decode_gossip(b).expect("decodes"),
        );
    }
}

#[test]
fn every_request_variant_keeps_its_bytes() {
    let all = requests();
    // Every variant is here (the names list each one once).
    assert_eq!(all.len(), 12);
    for (name, msg) in all {
        check(
            name,
            &msg,
            |m| encode_rpc(m).expect("encodes"),
            |b| decode_rpc(b).expect("decodes"),
        );
    }
}

#[test]
fn every_response_variant_keeps_its_bytes() {
    for (name, msg) in responses() {
        check(
            name,
            &msg,
            |m| encode_rpc(m).expect("encodes"),
            |b| decode_rpc(b).expect("decodes"),
        );
    }
}

#[test]
fn golden_files_are_all_used() {
    let mut names: Vec<&str> = gossip().iter().map(|(n, _)| *n).collect();
    names.extend(requests().iter().map(|(n, _)| *n));
    names.extend(responses().iter().map(|(n, _)| *n));
    for entry in std::fs::read_dir(golden_dir()).expect("golden dir") {
        let path = entry.expect("entry").path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        assert!(
            names.contains(&stem),
            "stale golden file {}",
            path.display()
        );
    }
}
