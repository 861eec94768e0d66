//! Durable leadership on three real nodes (127.0.0.1, `--no-mdns`): DAG state is replicated,
//! a new controller resumes the work of a dead one, and a full restart loses nothing.

use std::time::Duration;

use crate::common::{write_dag, Mesh};
use bx3_protocol::api::{DagState, DagView, TaskState};

use crate::common::cpu;

const MIN: Duration = Duration::from_secs(60);
const ROUNDS: u64 = 250_000_000;

/// Six CPU tasks and a fan-in; the expected total is computed natively here.
fn work_dag(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let mut yaml = String::from("name: work\ntasks:\n");
    let mut ids = Vec::new();
    let mut total: u128 = 0;
    for i in 0..6u64 {
        let n = ROUNDS + i;
        yaml.push_str(&format!(
            "  - {{id: w{i}, module: cpu_heavy.wasm, inputs: [\"{n}\"]}}\n"
        ));
        ids.push(format!("w{i}"));
        total += u128::from(cpu::cpu_kernel(n));
    }
    yaml.push_str(&format!(
        "  - {{id: total, module: sum.wasm, inputs: [{}], depends_on: [{}]}}\n",
        ids.join(", "),
        ids.join(", ")
    ));
    (write_dag(dir, "work.yaml", &yaml), total.to_string())
}

fn wait_done(mesh: &Mesh, id: &str) -> DagView {
    let node = mesh
        .nodes
        .iter()
        .find(|n| n.child.is_some())
        .expect("a live node");
    let out = node.cli(&["dag", id, "--wait", "--json"], Duration::from_secs(240));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no DAG JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            node.log()
        )
    })
}

fn ready_mesh() -> (Mesh, String) {
    let mesh = Mesh::start(3, 2);
    let leader = mesh.wait_leader(MIN);
    for n in &mesh.nodes {
        n.wait_status(MIN, "two peers", |s| {
            s.peers.len() == 2 && s.peers.iter().all(|p| p.executors.total > 0)
        });
    }
    (mesh, leader)
}

/// kill -9 of the controller early (first tasks running) and late (only the fan-in left):
/// both times a new controller resumes from its replica and the DAG completes correctly.
#[test]
fn killing_the_controller_mid_dag_loses_nothing() {
    let _heavy = crate::common::heavy();
    for late in [false, true] {
        let (mut mesh, leader) = ready_mesh();
        let li = mesh.index_of(&leader);
        let tmp = tempfile::tempdir().expect("tempdir");
        let (file, expected) = work_dag(tmp.path());
        let follower = (li + 1) % 3;
        let id = mesh.nodes[follower].submit(&file);
        let what = if late { "all six done" } else { "work running" };
        mesh.nodes[follower].wait_for(&id, MIN, what, |v| {
            if late {
                v.counts.succeeded >= 6
            } else {
                v.counts.running > 0
            }
        });
        mesh.nodes[li].kill9();
        let dag = wait_done(&mesh, &id);
        assert_eq!(dag.state, DagState::Succeeded, "late={late}: {dag:#?}");
        assert_eq!(
            dag.tasks["total"].output.as_deref(),
            Some(expected.as_str()),
            "late={late}"
        );
        for (tid, t) in &dag.tasks {
            if t.attempts > 1 {
                let logs: Vec<String> = mesh
                    .nodes
                    .iter()
                    .flat_map(|n| n.log().lines().map(str::to_string).collect::<Vec<_>>())
                    .filter(|l| {
                        l.contains("attempt failed")
                            || l.contains("WARN")
                            || l.contains("controller")
                    })
                    .collect();
                panic!(
                    "late={late}: {tid} counted {} attempts across a failover\n{}",
                    t.attempts,
                    logs.join("\n")
                );
            }
        }
        let new_leader = mesh.wait_leader(MIN);
        assert_ne!(new_leader, leader);
        mesh.restart(li);
        let s = mesh.nodes[li].wait_status(MIN, "rejoined", |s| s.leader.is_some());
        assert_eq!(
            s.leader.as_deref(),
            Some(new_leader.as_str()),
            "a returning node does not depose the controller"
        );
    }
}

/// The controller acknowledges a submission only once a follower holds it: killing the
/// controller right after the acknowledgement does not lose the DAG.
#[test]
fn acknowledged_dag_survives_the_controller_dying_right_after() {
    let _heavy = crate::common::heavy();
    let (mut mesh, leader) = ready_mesh();
    let li = mesh.index_of(&leader);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (file, expected) = work_dag(tmp.path());
    let id = mesh.nodes[li].submit(&file);
    mesh.nodes[li].kill9();
    let dag = wait_done(&mesh, &id);
    assert_eq!(dag.state, DagState::Succeeded, "{dag:#?}");
    assert_eq!(
        dag.tasks["total"].output.as_deref(),
        Some(expected.as_str())
    );
}

/// Every node killed -9 in the middle of a DAG and restarted: the mesh re-forms, elects a
/// controller, and finishes the DAG without re-running tasks that had finished.
#[test]
fn full_restart_finishes_without_rerunning_finished_tasks() {
    let _heavy = crate::common::heavy();
    let (mut mesh, leader) = ready_mesh();
    let li = mesh.index_of(&leader);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (file, expected) = work_dag(tmp.path());
    let id = mesh.nodes[li].submit(&file);
    let before = mesh.nodes[li].wait_for(&id, MIN, "some tasks done, some running", |v| {
        v.counts.succeeded >= 2 && v.counts.running > 0
    });
    let finished_before: Vec<(String, Option<String>)> = before
        .tasks
        .iter()
        .filter(|(_, t)| t.state == TaskState::Succeeded)
        .map(|(id, t)| (id.clone(), t.output.clone()))
        .collect();
    for n in mesh.nodes.iter_mut() {
        n.kill9();
    }
    for i in 0..3 {
        mesh.restart(i);
    }
    mesh.wait_leader(MIN);
    let dag = wait_done(&mesh, &id);
    assert_eq!(dag.state, DagState::Succeeded, "{dag:#?}");
    assert_eq!(
        dag.tasks["total"].output.as_deref(),
        Some(expected.as_str())
    );
    for (tid, output) in finished_before {
        let t = &dag.tasks[&tid];
        assert_eq!(
            t.attempts, 1,
            "{tid} finished before the restart and was not run again"
        );
        assert_eq!(t.output, output, "{tid} kept its output");
    }
}
