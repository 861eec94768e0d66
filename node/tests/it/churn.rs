//! The mesh under churn (127.0.0.1, `--no-mdns`): a node restarting while DAGs are submitted
//! elsewhere fails no submission.

use std::time::{Duration, Instant};

use crate::common::{write_dag, Mesh};
use bx3_protocol::api::DagState;

const MIN: Duration = Duration::from_secs(60);

/// Submits `hello`-sized DAGs at `submitter` while `restart` (run on another thread) restarts
/// nodes; every submission must succeed, and every DAG must finish.
fn submit_while(
    mesh: &mut Mesh,
    submitter: usize,
    mut restart: impl FnMut(&mut Mesh, usize) + Send,
) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write_dag(
        tmp.path(),
        "small.yaml",
        "name: small\ntasks:\n  - {id: a, module: echo.wasm, inputs: [x]}\n  - {id: b, module: echo.wasm, inputs: [\"${a}y\"], depends_on: [a]}\n",
    );
    let ids = std::sync::Mutex::new(Vec::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let (mut left, right) = (Vec::new(), &mut mesh.nodes);
    // The submitter stays put; the others are moved into a mesh the restarter owns.
    for (i, n) in right.drain(..).enumerate() {
        left.push((i, n));
    }
    let (sub, others): (Vec<_>, Vec<_>) = left.into_iter().partition(|(i, _)| *i == submitter);
    let (_, sub_node) = sub.into_iter().next().expect("submitter");
    let order: Vec<usize> = others.iter().map(|(i, _)| *i).collect();
    let mut rest = Mesh {
        nodes: others.into_iter().map(|(_, n)| n).collect(),
    };
    std::thread::scope(|scope| {
        let (done_flag, rest_mesh) = (&done, &mut rest);
        let restarter = scope.spawn(move || {
            for round in 0..10 {
                restart(rest_mesh, round);
            }
            done_flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let deadline = Instant::now() + Duration::from_secs(600);
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "restarts did not end");
            let out = sub_node.cli(
                &[
                    "submit",
                    file.to_str().expect("utf-8"),
                    "--json",
                    "--modules",
                    crate::common::wasm_modules().to_str().expect("utf-8"),
                ],
                Duration::from_secs(120),
            );
            assert!(
                out.status.success(),
                "submit #{} failed while a node restarted: {}\nsubmitter log:\n{}",
                ids.lock().expect("lock").len() + 1,
                String::from_utf8_lossy(&out.stderr),
                sub_node.log()
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            ids.lock()
                .expect("lock")
                .push(v["id"].as_str().expect("id").to_string());
        }
        restarter.join().expect("restarter");
    });
    let ids = ids.into_inner().expect("lock");
    eprintln!(
        "{} submissions while nodes restarted, none failed",
        ids.len()
    );
    assert!(ids.len() >= 10, "submissions kept going: {}", ids.len());
    for id in &ids {
        let out = sub_node.cli(&["dag", id, "--wait", "--json"], Duration::from_secs(120));
        let v: bx3_protocol::api::DagView = serde_json::from_slice(&out.stdout).expect("DAG JSON");
        assert_eq!(v.state, DagState::Succeeded, "{v:#?}");
        assert_eq!(v.tasks["b"].output.as_deref(), Some("xy"));
    }
    // Put the mesh back together in its order (for Drop).
    let mut nodes: Vec<Option<crate::common::TestNode>> = Vec::new();
    nodes.resize_with(order.len() + 1, || None);
    nodes[submitter] = Some(sub_node);
    for (i, n) in order.into_iter().zip(rest.nodes) {
        nodes[i] = Some(n);
    }
    mesh.nodes = nodes.into_iter().flatten().collect();
}

/// A follower restarted ten times (kill -9, start again on its data dir and address) while
/// DAGs are submitted at another follower: no submission fails, every DAG finishes.
#[test]
fn restarting_a_follower_ten_times_fails_no_submission() {
    let _heavy = crate::common::heavy();
    let mut mesh = Mesh::start(3, 1);
    let leader = mesh.wait_leader(MIN);
    mesh.wait_fully_connected(MIN);
    let li = mesh.index_of(&leader);
    let submitter = (li + 1) % 3;
    submit_while(&mut mesh, submitter, |rest, _| {
        // `rest` holds the controller and the other follower; restart the follower.
        let victim = rest
            .nodes
            .iter()
            .position(|n| n.status().peer_id != leader)
            .expect("a follower");
        rest.restart(victim);
        rest.nodes[victim].wait_status(MIN, "rejoined", |s| s.leader.is_some());
        std::thread::sleep(Duration::from_millis(300));
    });
}

/// The controller killed (kill -9) and restarted ten times while DAGs are submitted, one after
/// the other, at a node that is not the controller: no submission fails. Needs submissions to
/// be idempotent (a client-chosen id), so a submission cut off by the controller's death can
/// be sent again to the next controller.
#[test]
fn restarting_the_controller_ten_times_fails_no_submission() {
    let _heavy = crate::common::heavy();
    let mut mesh = Mesh::start(3, 1);
    mesh.wait_leader(MIN);
    mesh.wait_fully_connected(MIN);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write_dag(
        tmp.path(),
        "small.yaml",
        "name: small\ntasks:\n  - {id: a, module: echo.wasm, inputs: [x]}\n",
    );
    let mut ids: Vec<(String, String)> = Vec::new();
    for round in 0..10 {
        let leader = mesh.wait_leader(MIN);
        let c = mesh.index_of(&leader);
        let submitter = (c + 1) % 3;
        let api = mesh.nodes[submitter].api.clone();
        eprintln!(
            "--- round {round}: restart the controller {leader}, submitting at node {submitter}"
        );
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let submits = scope.spawn(|| {
                let mut got = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let mut cmd = std::process::Command::new(crate::common::BIN);
                    cmd.args([
                        "submit",
                        file.to_str().expect("utf-8"),
                        "--json",
                        "--modules",
                    ])
                    .arg(crate::common::wasm_modules())
                    .args(["--api", &api]);
                    let out = crate::common::run_bounded(cmd, Duration::from_secs(120));
                    let err = String::from_utf8_lossy(&out.stderr).to_string();
                    let v: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
                    got.push((
                        out.status.success(),
                        v.and_then(|v| v["id"].as_str().map(String::from)),
                        err,
                    ));
                }
                got
            });
            std::thread::sleep(Duration::from_millis(300));
            mesh.restart(c);
            mesh.wait_leader(MIN);
            std::thread::sleep(Duration::from_millis(300));
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            for (ok, id, err) in submits.join().expect("submitter") {
                assert!(
                    ok,
                    "round {round}: a submission failed while the controller restarted: {err}"
                );
                ids.push((api.clone(), id.expect("an id")));
            }
        });
    }
    eprintln!(
        "{} submissions across 10 controller restarts, none failed",
        ids.len()
    );
    for (api, id) in &ids {
        let node = mesh
            .nodes
            .iter()
            .find(|n| n.api == *api)
            .unwrap_or(&mesh.nodes[0]);
        let out = node.cli(&["dag", id, "--wait", "--json"], Duration::from_secs(120));
        let v: bx3_protocol::api::DagView = serde_json::from_slice(&out.stdout).expect("DAG JSON");
        assert_eq!(v.state, DagState::Succeeded, "{v:#?}");
    }
}
