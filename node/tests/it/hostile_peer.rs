//! A hostile member against real nodes (127.0.0.1, `--no-mdns`): a peer with its own libp2p
//! identity joins a 2-node mesh and sends what a stranger, a stale node
//! or a bug would: orders in the controller's name and in a term of its own, a forged
//! replication batch, aborts, results for tasks it never ran, votes and heartbeats for
//! itself, an announcement of 4 billion executors, and bytes that do not decode. Each is
//! answered with a refusal (or ignored), both nodes stay up with the same controller, and
//! the DAG that runs meanwhile finishes with its real outputs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::Mesh;
use bx3_node::net;
use bx3_protocol::api::DagState;
use bx3_protocol::ids::{DagId, NodeId};
use bx3_protocol::mesh::{
    self, Announce, Batch, DagDelta, DagRecord, ElectionMessage, Gossip, Job, JobResult, LogPos,
    Refusal, Request, Response, Signature, SignedVote, Term,
};
use bx3_protocol::wire;
use libp2p::{Multiaddr, PeerId};

const MIN: Duration = Duration::from_secs(60);

/// A DAG that runs a few seconds on 2 × 2 executors: long enough to be attacked mid-run.
const DAG: &str = "name: under-attack
tasks:
  - {id: c0, module: cpu_heavy.wasm, inputs: [\"40000000\"]}
  - {id: c1, module: cpu_heavy.wasm, inputs: [\"40000001\"]}
  - {id: c2, module: cpu_heavy.wasm, inputs: [\"40000002\"]}
  - {id: c3, module: cpu_heavy.wasm, inputs: [\"40000003\"]}
  - {id: c4, module: cpu_heavy.wasm, inputs: [\"40000004\"]}
  - {id: c5, module: cpu_heavy.wasm, inputs: [\"40000005\"]}
  - {id: sum, module: sum.wasm, inputs: [c0, c1, c2, c3, c4, c5], depends_on: [c0, c1, c2, c3, c4, c5]}
";

struct Mallory {
    net: net::Client,
    id: NodeId,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Mallory {
    /// A peer of its own identity that dials one node, accepts every gossip, and answers
    /// no request (a dropped reply fails the requester, as a dead peer would).
    fn join(rt: &tokio::runtime::Runtime, addrs: &[String]) -> Mallory {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let id: NodeId = keypair
            .public()
            .to_peer_id()
            .to_string()
            .parse()
            .expect("a peer id is a node id");
        let mut config = net::Config::new(keypair);
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
        config.peers = addrs
            .iter()
            .map(|a| a.parse::<Multiaddr>().expect("addr"))
            .collect();
        config.mdns = false;
        config.max_message = wire::MAX_RPC;
        config.max_gossip = wire::MAX_GOSSIP;
        config.request_timeout = Duration::from_secs(10);
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let validator: net::Validator = Arc::new(|_, _| true);
        let net = rt.block_on(async {
            let (client, _task) =
                net::start(config, validator, tx, shutdown.clone()).expect("mallory's net");
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
            client
        });
        Mallory { net, id, shutdown }
    }

    fn ask(&self, rt: &tokio::runtime::Runtime, to: &str, req: &Request) -> Response {
        let bytes = mesh::encode_rpc(req).expect("encodes");
        self.ask_raw(rt, to, bytes)
            .unwrap_or_else(|e| panic!("{} to {to}: no answer: {e}", req.kind()))
    }

    fn ask_raw(
        &self,
        rt: &tokio::runtime::Runtime,
        to: &str,
        bytes: Vec<u8>,
    ) -> Result<Response, String> {
        let peer: PeerId = to.parse().expect("peer id");
        let reply = rt
            .block_on(self.net.request(peer, bytes))
            .map_err(|e| e.to_string())?;
        mesh::decode_rpc::<Response>(&reply).map_err(|e| e.to_string())
    }

    fn gossip(&self, rt: &tokio::runtime::Runtime, msg: &Gossip) {
        let bytes = mesh::encode_gossip(msg).expect("encodes");
        // Publishing fails while no one subscribed yet: bounded retries.
        let deadline = Instant::now() + Duration::from_secs(10);
        while rt.block_on(self.net.publish(bytes.clone())).is_err() {
            assert!(Instant::now() < deadline, "mallory cannot publish gossip");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn connected_to(&self, peer: &str) -> bool {
        self.net
            .is_connected(&peer.parse::<PeerId>().expect("peer id"))
    }
}

impl Drop for Mallory {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn refused(resp: &Response) -> Option<&Refusal> {
    match resp {
        Response::Refused(r) => Some(r),
        _ => None,
    }
}

fn job(dag: DagId, hash: &str) -> Job {
    Job {
        dag,
        task: 0,
        attempt: 1,
        module: "echo.wasm".into(),
        module_hash: hash.parse().expect("hash"),
        argv: vec!["echo.wasm".into(), "pwned".into()],
        env: Vec::new(),
        stdin: String::new(),
        timeout_ms: 1000,
        memory_mb: None,
    }
}

#[test]
fn a_hostile_member_changes_nothing() {
    let _heavy = crate::common::heavy();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mesh = Mesh::start(2, 2);
    let leader = mesh.wait_leader(MIN);
    let li = mesh.index_of(&leader);
    let (l, f) = (&mesh.nodes[li], &mesh.nodes[1 - li]);
    let follower = f.status().peer_id;
    let epoch = l.status().term;
    let their_term = Term {
        epoch,
        candidate: leader.parse::<NodeId>().expect("node id"),
    };

    // Mallory has no runtime of its own (no peer exchange): it dials both nodes.
    let mallory = Mallory::join(&rt, &[f.p2p_addr(), l.p2p_addr()]);
    let deadline = Instant::now() + MIN;
    while !(mallory.connected_to(&leader) && mallory.connected_to(&follower)) {
        assert!(
            Instant::now() < deadline,
            "mallory did not reach both nodes"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The DAG runs while everything below happens.
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = crate::common::write_dag(tmp.path(), "under-attack.yaml", DAG);
    let id: DagId = f.submit(&file).parse().expect("a DAG id");
    let echo = {
        use sha2::Digest;
        let bytes =
            std::fs::read(crate::common::wasm_modules().join("echo.wasm")).expect("echo.wasm");
        hex::encode(sha2::Sha256::digest(bytes))
    };

    // 1. Orders in the controller's name, and in a term of mallory's own.
    let theirs = Request::Assign {
        term: their_term.clone(),
        jobs: vec![job(id, &echo)],
    };
    let resp = mallory.ask(&rt, &follower, &theirs);
    assert!(
        matches!(refused(&resp), Some(Refusal::NotEntitled(_))),
        "{resp:?}"
    );
    let own_term = Term {
        epoch: epoch + 7,
        candidate: mallory.id.clone(),
    };
    let ours = Request::Assign {
        term: own_term.clone(),
        jobs: vec![job(id, &echo)],
    };
    let resp = mallory.ask(&rt, &follower, &ours);
    assert!(refused(&resp).is_some(), "{resp:?}");

    // 2. A replication batch that would plant a finished DAG of mallory's on the follower.
    let forged_dag = DagId::new(1_700_000_000_000, 4242);
    let spec_yaml = "name: planted\ntasks:\n  - {id: a, module: echo.wasm}\n";
    let dag = bx3_protocol::dag::parse_dag(spec_yaml).expect("valid");
    let delta = DagDelta {
        id: forged_dag,
        meta: DagRecord {
            name: "planted".into(),
            description: None,
            source: None,
            state: DagState::Succeeded,
            created_at_ms: 1,
            finished_at_ms: Some(2),
            version: 9,
            counts: Default::default(),
        },
        spec: Some(mesh::Spec {
            dag,
            modules: [("echo.wasm".to_string(), echo.parse().expect("hash"))].into(),
        }),
        tasks: Vec::new(),
    };
    for term in [their_term.clone(), own_term.clone()] {
        let resp = mallory.ask(
            &rt,
            &follower,
            &Request::Replicate {
                term,
                prev: 0,
                snapshot: true,
                batches: vec![Arc::new(Batch {
                    seq: u64::MAX,
                    dags: vec![delta.clone()],
                })],
            },
        );
        assert!(refused(&resp).is_some(), "{resp:?}");
    }

    // 3. Aborts of the running DAG's work.
    for term in [their_term.clone(), own_term.clone()] {
        let resp = mallory.ask(&rt, &follower, &Request::Abort { term, dag: id });
        assert!(refused(&resp).is_some(), "{resp:?}");
    }

    // 4. Results for tasks it never ran, every attempt number that could be current.
    let forged: Vec<JobResult> = (0..7u32)
        .flat_map(|task| {
            [0u32, 1, 2, u32::MAX].map(|attempt| JobResult {
                dag: id,
                task,
                attempt,
                outcome: Ok("forged".into()),
                run_ms: 1,
                stderr: None,
                interrupted: false,
            })
        })
        .collect();
    let _ = mallory.ask(&rt, &leader, &Request::Results { results: forged });

    // 5. A vote for itself, and a heartbeat of a term far ahead with a forged certificate.
    let _ = mallory.ask_raw(
        &rt,
        &leader,
        mesh::encode_rpc(&Request::Election(ElectionMessage::Vote {
            term: Term {
                epoch: u64::MAX,
                candidate: mallory.id.clone(),
            },
            granted: true,
            sig: Some(Signature(vec![7; 64])),
        }))
        .expect("encodes"),
    );
    let far = Term {
        epoch: epoch + 100,
        candidate: mallory.id.clone(),
    };
    mallory.gossip(
        &rt,
        &Gossip::Election(ElectionMessage::Heartbeat {
            term: far.clone(),
            pos: LogPos {
                term: Some(far.clone()),
                seq: u64::MAX,
            },
            cert: vec![
                SignedVote {
                    voter: leader.parse().expect("id"),
                    sig: Signature(vec![1; 64]),
                },
                SignedVote {
                    voter: follower.parse().expect("id"),
                    sig: Signature(vec![2; 64]),
                },
            ],
        }),
    );

    // 6. Four billion executors.
    mallory.gossip(
        &rt,
        &Gossip::Announce(Announce {
            version: "9.9.9".into(),
            executors_total: u32::MAX,
            executors_busy: 0,
            ram_per_executor_mb: u64::MAX,
            available_ram_mb: u64::MAX,
            ram_slots: u64::MAX,
            cpu_cores: u64::MAX,
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            replica_seq: u64::MAX,
            ..Announce::default()
        }),
    );
    // The controller lists mallory with what a node can have, not what it said.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let s = l.status();
        if let Some(p) = s
            .peers
            .into_iter()
            .find(|p| p.peer_id == mallory.id.as_str())
        {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the controller never listed mallory"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(seen.executors.total <= 4096, "clamped: {seen:#?}");

    // 7. A submission whose spec has an index out of range (it used to panic the planner,
    //    and again after every restart), and bytes that are no message at all.
    let mut bad = bx3_protocol::dag::parse_dag(
        "name: x\ntasks:\n  - {id: a, module: echo.wasm}\n  - {id: b, module: echo.wasm, inputs: [a], depends_on: [a]}\n",
    )
    .expect("valid");
    bad.tasks[1].deps.push(40);
    let bytes = mesh::encode_rpc(&Request::Submit {
        id: DagId::new(1_700_000_000_000, 7),
        spec: mesh::Spec {
            dag: bad,
            modules: [("echo.wasm".to_string(), echo.parse().expect("hash"))].into(),
        },
        source: None,
    })
    .expect("encodes");
    for raw in [bytes, vec![0xff; 64], Vec::new()] {
        let resp = mallory.ask_raw(&rt, &leader, raw).expect("an answer");
        assert!(
            matches!(refused(&resp), Some(Refusal::Invalid(_))),
            "{resp:?}"
        );
    }
    // A peer's list request is bounded like the API's.
    let list = mallory.ask(&rt, &leader, &Request::ListDags { limit: u32::MAX });
    let Response::Dags(list) = list else {
        panic!("ListDags to {leader}: {list:?}");
    };
    assert!(list.len() <= 10_000);

    // The DAG finishes with its real outputs; the controller never changed hands.
    let view = f.wait_for(&id.to_string(), 3 * MIN, "the DAG to finish", |v| {
        v.state.is_terminal()
    });
    assert_eq!(view.state, DagState::Succeeded, "{view:#?}");
    for t in view.tasks.values() {
        let out = t.output.as_deref().unwrap_or("");
        assert!(!out.contains("forged") && !out.contains("pwned"), "{t:#?}");
        assert!(!out.is_empty(), "{t:#?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    for node in [l, f] {
        // Up (it answers), and with the same controller.
        let s = node.status();
        assert_eq!(s.leader.as_deref(), Some(leader.as_str()), "{s:#?}");
    }
    // Nothing was planted on the follower.
    let out = f.cli(&["dags", "--json"], MIN);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&forged_dag.to_string()), "{text}");
    assert!(!text.contains("planted"), "{text}");
    drop(mallory);
}
