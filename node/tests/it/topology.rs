//! The mesh in the topologies users build (127.0.0.1, `--no-mdns`): every node names one
//! bootstrap node (a star) or the one before it (a chain), and still every node ends up with
//! a direct connection to every other, so losing the bootstrap node or the middle of the chain
//! splits nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{chain, star, write_dag, Mesh, TestNode};
use bx3_protocol::api::{DagState, DagView};

use crate::common::cpu;

const MIN: Duration = Duration::from_secs(60);

/// `n` CPU tasks of `rounds` each and a fan-in; the expected total is computed natively.
fn work_dag(dir: &Path, name: &str, n: u64, rounds: u64) -> (PathBuf, String) {
    let mut yaml = format!("name: {name}\ntasks:\n");
    let mut ids = Vec::new();
    let mut total: u128 = 0;
    for i in 0..n {
        yaml.push_str(&format!(
            "  - {{id: w{i}, module: cpu_heavy.wasm, inputs: [\"{}\"]}}\n",
            rounds + i
        ));
        ids.push(format!("w{i}"));
        total += u128::from(cpu::cpu_kernel(rounds + i));
    }
    yaml.push_str(&format!(
        "  - {{id: total, module: sum.wasm, inputs: [{}], depends_on: [{}]}}\n",
        ids.join(", "),
        ids.join(", ")
    ));
    (
        write_dag(dir, &format!("{name}.yaml"), &yaml),
        total.to_string(),
    )
}

fn wait_done(node: &TestNode, id: &str) -> DagView {
    let out = node.cli(&["dag", id, "--wait", "--json"], Duration::from_secs(240));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no DAG JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.log()
        )
    })
}

/// How many times each DAG was reported finished by a controller, over every node's log.
fn finish_reports(logs: &str, ids: &[String]) -> HashMap<String, usize> {
    ids.iter()
        .map(|id| {
            let n = logs
                .lines()
                .filter(|l| l.contains("DAG finished") && l.contains(id.as_str()))
                .count();
            (id.clone(), n)
        })
        .collect()
}

/// A 4-node star (each leaf names only the hub) becomes fully connected; a DAG submitted at
/// every leaf survives kill -9 of the hub: the leaves agree on one controller, each DAG
/// finishes once (one controller reports it finished, no task counts two attempts, the
/// checksums are right), and a DAG submitted at one leaf afterwards is readable at another.
#[test]
fn star_survives_losing_its_hub() {
    let _heavy = crate::common::heavy();
    let mut mesh = Mesh::start_topology(4, Some(1), star, &[]);
    let took = mesh.wait_fully_connected(MIN);
    eprintln!("4-node star fully connected {took:?} after the last node started");
    let leader = mesh.wait_leader(MIN);
    eprintln!("--- controller {leader}; a DAG at every leaf");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dags = Vec::new();
    for leaf in 1..4 {
        let (file, expected) = work_dag(tmp.path(), &format!("leaf{leaf}"), 4, 250_000_000);
        let id = mesh.nodes[leaf].submit(&file);
        dags.push((leaf, id, expected));
    }
    for (leaf, id, _) in &dags {
        mesh.nodes[*leaf].wait_for(id, MIN, "work under way", |v| {
            v.counts.running + v.counts.succeeded > 0
        });
    }

    eprintln!("--- kill -9 the hub");
    mesh.nodes[0].kill9();
    let new_leader = mesh.wait_leader(MIN);
    assert_ne!(new_leader, mesh.nodes[0].dir.path().display().to_string());
    let term = mesh.nodes[1].status().term;
    for (leaf, id, expected) in &dags {
        let dag = wait_done(&mesh.nodes[*leaf], id);
        assert_eq!(dag.state, DagState::Succeeded, "{dag:#?}");
        assert_eq!(
            dag.tasks["total"].output.as_deref(),
            Some(expected.as_str())
        );
        for (tid, t) in &dag.tasks {
            if t.attempts != 1 {
                let logs: Vec<String> = mesh
                    .logs()
                    .lines()
                    .filter(|l| {
                        l.contains("attempt")
                            || l.contains("WARN")
                            || l.contains("controller")
                            || l.contains("re-queue")
                            || l.contains("peer")
                    })
                    .map(str::to_string)
                    .collect();
                panic!(
                    "{id}/{tid} counted {} attempts: {t:#?}\n{}",
                    t.attempts,
                    logs.join("\n")
                );
            }
        }
        for other in 1..4 {
            let seen = mesh.nodes[other].dag(id);
            assert_eq!(seen.state, DagState::Succeeded, "DAG {id} at leaf {other}");
        }
    }
    let ids: Vec<String> = dags.iter().map(|(_, id, _)| id.clone()).collect();
    let reports = finish_reports(&mesh.logs(), &ids);
    assert!(
        reports.values().all(|n| *n == 1),
        "each DAG finished by exactly one controller: {reports:?}"
    );
    for leaf in 1..4 {
        let s = mesh.nodes[leaf].status();
        assert_eq!(
            s.leader.as_deref(),
            Some(new_leader.as_str()),
            "leaf {leaf}"
        );
        assert_eq!(
            s.term, term,
            "no controller change once agreed (leaf {leaf})"
        );
    }

    eprintln!("--- a DAG submitted at leaf 1 is readable at leaves 2 and 3");
    let (file, expected) = work_dag(tmp.path(), "after", 2, 1_000_000);
    let (code, dag) = mesh.nodes[1].submit_wait(&file, MIN);
    assert_eq!(code, 0, "{dag:#?}");
    for other in [2, 3] {
        let seen = mesh.nodes[other].dag(&dag.id);
        assert_eq!(
            seen.tasks["total"].output.as_deref(),
            Some(expected.as_str())
        );
    }
}

/// A 3-node chain (C names B, B names A) becomes fully connected, so killing the middle
/// leaves A and C connected to each other, agreeing on one controller and running DAGs.
#[test]
fn chain_survives_losing_its_middle() {
    let _heavy = crate::common::heavy();
    let mut mesh = Mesh::start_topology(3, Some(1), chain, &[]);
    let took = mesh.wait_fully_connected(MIN);
    eprintln!("3-node chain fully connected {took:?} after the last node started");
    mesh.wait_leader(MIN);
    eprintln!("--- kill -9 the middle node");
    mesh.nodes[1].kill9();
    let a_id = mesh.nodes[0].status().peer_id;
    let c_id = mesh.nodes[2].status().peer_id;
    let leader = mesh.wait_leader(MIN);
    assert!(leader == a_id || leader == c_id, "{leader}");
    for (me, other) in [(0, &c_id), (2, &a_id)] {
        let s = mesh.nodes[me].wait_status(MIN, "the other end still connected", |s| {
            s.peers.iter().any(|p| p.peer_id == *other && p.connected)
        });
        assert_eq!(s.leader.as_deref(), Some(leader.as_str()));
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (file, expected) = work_dag(tmp.path(), "ends", 4, 1_000_000);
    let (code, dag) = mesh.nodes[2].submit_wait(&file, MIN);
    assert_eq!(code, 0, "{dag:#?}");
    let seen = mesh.nodes[0].dag(&dag.id);
    assert_eq!(
        seen.tasks["total"].output.as_deref(),
        Some(expected.as_str())
    );
}
