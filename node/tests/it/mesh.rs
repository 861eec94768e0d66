//! Three real nodes on 127.0.0.1 (`--no-mdns`, explicit `--peer`): one controller, DAGs spread
//! over every node's executors, submit and read anywhere, lost workers' tasks re-run.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{write_dag, Mesh};
use bx3_protocol::api::{DagState, TaskState};

const MIN: Duration = Duration::from_secs(60);

/// Three nodes agree on one controller, and each sees the other two with their executors.
#[test]
fn three_nodes_converge_on_one_leader() {
    let _heavy = crate::common::heavy();
    let mesh = Mesh::start(3, 2);
    let leader = mesh.wait_leader(MIN);
    for node in &mesh.nodes {
        let s = node.wait_status(MIN, "two peers with executors", |s| {
            s.peers.len() == 2 && s.peers.iter().all(|p| p.executors.total == 2)
        });
        assert_eq!(s.leader.as_deref(), Some(leader.as_str()));
        assert!(s.term > 0, "a leader was elected in some term");
    }
}

/// A DAG submitted at a follower runs on at least two nodes with correct outputs, using
/// modules that only the submitter had; every node shows its result.
#[test]
fn dag_submitted_at_a_follower_spreads_over_the_mesh() {
    let _heavy = crate::common::heavy();
    let mesh = Mesh::start(3, 2);
    let leader = mesh.wait_leader(MIN);
    for n in &mesh.nodes {
        n.wait_status(MIN, "two peers", |s| {
            s.peers.len() == 2 && s.peers.iter().all(|p| p.executors.total > 0)
        });
    }
    let follower = mesh
        .nodes
        .iter()
        .find(|n| n.status().peer_id != leader)
        .expect("a follower");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut yaml = String::from("name: spread\ntasks:\n");
    let mut ids = Vec::new();
    for i in 0..12 {
        yaml.push_str(&format!(
            "  - {{id: w{i}, module: cpu_heavy.wasm, inputs: [\"{}\"]}}\n",
            30_000_000 + i
        ));
        ids.push(format!("w{i}"));
    }
    yaml.push_str(&format!(
        "  - {{id: total, module: sum.wasm, inputs: [{}], depends_on: [{}]}}\n",
        ids.join(", "),
        ids.join(", ")
    ));
    let file = write_dag(tmp.path(), "spread.yaml", &yaml);
    let (code, dag) = follower.submit_wait(&file, MIN);
    assert_eq!(code, 0, "{dag:#?}");
    let nodes: HashSet<String> = dag.tasks.values().filter_map(|t| t.node.clone()).collect();
    assert!(
        nodes.len() >= 2,
        "tasks ran on {} node(s): {nodes:?}",
        nodes.len()
    );
    assert!(dag
        .tasks
        .values()
        .all(|t| t.state == TaskState::Succeeded && t.attempts == 1));

    // Same computation alone on one node gives the same checksums.
    let single = crate::common::TestNode::start(2);
    let (code, alone) = single.submit_wait(&file, MIN);
    assert_eq!(code, 0);
    assert_eq!(alone.tasks["total"].output, dag.tasks["total"].output);

    for n in &mesh.nodes {
        let seen = n.dag(&dag.id);
        assert_eq!(seen.state, DagState::Succeeded, "readable from every node");
    }
}

/// Killing a worker in the middle of its task re-runs that task on another node.
#[test]
fn killing_a_worker_reruns_its_tasks_elsewhere() {
    let _heavy = crate::common::heavy();
    let mut mesh = Mesh::start(3, 1);
    let leader = mesh.wait_leader(MIN);
    for n in &mesh.nodes {
        n.wait_status(MIN, "two peers", |s| {
            s.peers.len() == 2 && s.peers.iter().all(|p| p.executors.total > 0)
        });
    }
    let li = mesh.index_of(&leader);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut yaml = String::from("name: slow\ntasks:\n");
    for i in 0..3 {
        yaml.push_str(&format!(
            "  - {{id: s{i}, module: cpu_heavy.wasm, inputs: [\"{}\"]}}\n",
            900_000_000 + i
        ));
    }
    let file = write_dag(tmp.path(), "slow.yaml", &yaml);
    let id = mesh.nodes[li].submit(&file);
    // Wait until some task runs on a node that is not the controller, then kill that node.
    let view = mesh.nodes[li].wait_for(&id, MIN, "a task running on a worker", |v| {
        v.tasks.values().any(|t| {
            t.state == TaskState::Running && t.node.as_deref().is_some_and(|n| n != leader)
        })
    });
    let victim_peer = view
        .tasks
        .values()
        .find(|t| t.state == TaskState::Running && t.node.as_deref().is_some_and(|n| n != leader))
        .and_then(|t| t.node.clone())
        .expect("worker");
    let vi = mesh.index_of(&victim_peer);
    mesh.nodes[vi].kill9();
    let out = mesh.nodes[li].cli(&["dag", &id, "--wait", "--json"], Duration::from_secs(180));
    let dag: bx3_protocol::api::DagView = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        dag.state,
        DagState::Succeeded,
        "{dag:#?}\n{}",
        mesh.nodes[li].log()
    );
    for t in dag.tasks.values() {
        assert_ne!(
            t.node.as_deref(),
            Some(victim_peer.as_str()),
            "re-run away from the dead node"
        );
        assert_eq!(
            t.attempts, 1,
            "a lost node does not use up the task's retries"
        );
    }
}
