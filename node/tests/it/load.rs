//! The mesh under full load (127.0.0.1, `--no-mdns`): CPU-bound work on every core does not
//! make the mesh change controller. Alone in its test binary, so that no other test's nodes
//! compete for the cores while it measures.

use std::time::{Duration, Instant};

use crate::common::{write_dag, Mesh};
use bx3_protocol::api::{DagState, StatusView};

const MIN: Duration = Duration::from_secs(60);

/// Three nodes with their default executor counts (`min(RAM slots, CPU cores)`) run a few
/// hundred CPU-bound tasks, keeping every core busy: no node sees a controller change during
/// the run, and a one-task DAG submitted meanwhile finishes.
#[test]
fn cpu_bound_load_changes_no_controller() {
    let _heavy = crate::common::heavy();
    let mesh = Mesh::start_topology(3, None, crate::common::star, &[]);
    mesh.wait_fully_connected(MIN);
    let leader = mesh.wait_leader(MIN);
    let before: Vec<StatusView> = mesh.nodes.iter().map(|n| n.status()).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    for s in &before {
        assert!(
            s.executors.total <= cores,
            "default sizing: {:?}",
            s.executors
        );
    }
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut yaml = String::from("name: heavy\ntasks:\n");
    for i in 0..300 {
        yaml.push_str(&format!(
            "  - {{id: t{i}, module: cpu_heavy.wasm, inputs: [\"{}\"]}}\n",
            20_000_000 + i
        ));
    }
    let heavy = write_dag(tmp.path(), "heavy.yaml", &yaml);
    let one = write_dag(
        tmp.path(),
        "one.yaml",
        "name: one\ntasks:\n  - {id: a, module: echo.wasm, inputs: [hi]}\n",
    );
    let follower = mesh
        .nodes
        .iter()
        .position(|n| n.status().peer_id != leader)
        .expect("a follower");
    // Warm: every node has compiled echo.wasm (a debug build compiles slowly; what is
    // measured below is the mesh, not the compiler).
    let (code, warm) = mesh.nodes[follower].submit_wait(&one, Duration::from_secs(120));
    assert_eq!(code, 0, "{warm:#?}");
    let id = mesh.nodes[follower].submit(&heavy);
    mesh.nodes[follower].wait_for(&id, MIN, "the mesh saturated", |v| {
        v.counts.running >= 3 && v.counts.succeeded >= 3
    });
    let t = Instant::now();
    let (code, small) = mesh.nodes[follower].submit_wait(&one, Duration::from_secs(60));
    let latency = t.elapsed();
    eprintln!("one-task DAG under full load: {latency:?}");
    assert_eq!(code, 0, "{small:#?}");
    assert!(
        latency < Duration::from_secs(10),
        "one-task DAG took {latency:?} under load (generous bound; the bench measures it)"
    );
    let dag = mesh.nodes[follower].cli(&["dag", &id, "--wait", "--json"], Duration::from_secs(600));
    let dag: bx3_protocol::api::DagView = serde_json::from_slice(&dag.stdout).expect("JSON");
    assert_eq!(dag.state, DagState::Succeeded);
    assert!(
        dag.tasks.values().all(|t| t.attempts == 1),
        "no task re-run by a controller change"
    );
    for (b, n) in before.iter().zip(&mesh.nodes) {
        let a = n.status();
        assert_eq!(
            (a.leader.as_deref(), a.term),
            (b.leader.as_deref(), b.term),
            "controller and term unchanged on {}",
            a.peer_id
        );
        let changes: Vec<_> = a
            .controller_changes
            .iter()
            .filter(|c| c.at_ms >= started_ms)
            .collect();
        assert!(
            changes.is_empty(),
            "controller changes during the run: {changes:?}"
        );
    }
}
