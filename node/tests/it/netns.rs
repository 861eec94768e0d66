//! Nodes in private network namespaces, as separate devices on a LAN: mDNS only, no --peer.
//! Needs root and iproute2; skipped (with a message) where either is missing. The namespaces,
//! bridge and veth pairs are created by testnet/testnet.sh --netns and removed afterwards;
//! nothing touches the host's own interfaces.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{repo, run_bounded, BIN};
use bx3_protocol::api::StatusView;

struct Testnet {
    dir: tempfile::TempDir,
    prefix: String,
}

impl Testnet {
    fn script(&self) -> Command {
        let mut c = Command::new(repo().join("testnet/testnet.sh"));
        c.env("BX3_TESTNET_DIR", self.dir.path())
            .env("BX3_BIN", BIN)
            .env("BX3_NETNS_PREFIX", &self.prefix)
            .env("BX3_TESTNET_EXECUTORS", "2");
        c
    }

    fn run(&self, args: &[&str], limit: Duration) -> std::process::Output {
        let mut c = self.script();
        c.args(args);
        run_bounded(c, limit)
    }

    fn status(&self, i: usize) -> Option<StatusView> {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &format!("{}-n{i}", self.prefix),
            BIN,
            "status",
            "--json",
            "--data-dir",
        ])
        .arg(self.node_dir(i));
        let out = run_bounded(c, Duration::from_secs(30));
        serde_json::from_slice(&out.stdout).ok()
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}"))
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = self.run(&["down"], Duration::from_secs(60));
    }
}

fn netns_available() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let ip = Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    root && ip
}

/// Three nodes, each in its own network namespace on a private bridge, with mDNS and no
/// --peer: they find each other, agree on one controller, and run a DAG together.
#[test]
fn three_nodes_find_each_other_by_mdns_alone() {
    let _heavy = crate::common::heavy();
    if !netns_available() {
        eprintln!("skipped: network namespaces need root and iproute2");
        return;
    }
    let net = Testnet {
        dir: tempfile::tempdir().expect("tempdir"),
        prefix: format!("bx3t{}", std::process::id() % 100_000),
    };
    let out = net.run(&["up", "3", "--netns"], Duration::from_secs(120));
    assert!(
        out.status.success(),
        "testnet up failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    let leader = loop {
        let all: Vec<Option<StatusView>> = (0..3).map(|i| net.status(i)).collect();
        let agreed = all.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                s.peers.len() == 2
                    && s.leader.is_some()
                    && s.leader == all[0].as_ref().and_then(|a| a.leader.clone())
            })
        });
        if agreed {
            break all[0]
                .as_ref()
                .and_then(|s| s.leader.clone())
                .expect("leader");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no agreement by mDNS within 60 s: {all:#?}\nlog 0:\n{}",
            std::fs::read_to_string(net.node_dir(0).join("node.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "agreed on {leader} after {:?} (mDNS discovery + election)",
        start.elapsed()
    );
    let dag = repo().join("dags/hello_fanout.yaml");
    let out = net.run(
        &[
            "submit",
            dag.to_str().expect("utf-8"),
            "--wait",
            "--node",
            "1",
        ],
        Duration::from_secs(120),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Bonjour, world!"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One node cut off from the other two at the bridge: each side keeps working and accepts a
/// DAG; when the link heals the mesh agrees on one controller again and both DAGs complete,
/// readable from every node.
#[test]
fn partition_and_heal_keeps_both_sides_work() {
    let _heavy = crate::common::heavy();
    if !netns_available() {
        eprintln!("skipped: network namespaces need root and iproute2");
        return;
    }
    let net = Testnet {
        dir: tempfile::tempdir().expect("tempdir"),
        prefix: format!("bx3p{}", std::process::id() % 100_000),
    };
    let out = net.run(&["up", "3", "--netns"], Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agreed = |nodes: &[usize], limit: Duration| -> String {
        let start = Instant::now();
        loop {
            let all: Vec<Option<StatusView>> = nodes.iter().map(|i| net.status(*i)).collect();
            let first = all[0].as_ref().and_then(|s| s.leader.clone());
            let ids: Vec<String> = all.iter().flatten().map(|s| s.peer_id.clone()).collect();
            if let Some(l) = &first {
                if all
                    .iter()
                    .all(|s| s.as_ref().and_then(|s| s.leader.clone()).as_ref() == Some(l))
                    && ids.contains(l)
                {
                    return l.clone();
                }
            }
            assert!(
                start.elapsed() < limit,
                "nodes {nodes:?} did not agree: {all:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    agreed(&[0, 1, 2], Duration::from_secs(60));

    let out = net.run(&["partition", "2"], Duration::from_secs(30));
    assert!(out.status.success());
    let majority = agreed(&[0, 1], Duration::from_secs(30));
    let alone = agreed(&[2], Duration::from_secs(30));
    assert_ne!(majority, alone, "each side has its own controller");

    let dag = repo().join("dags/hello_fanout.yaml");
    let dag = dag.to_str().expect("utf-8");
    let submit = |node: &str| -> String {
        let out = net.run(&["submit", dag, "--node", node], Duration::from_secs(60));
        assert!(
            out.status.success(),
            "submit at {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let on_majority = submit("0");
    let on_minority = submit("2");

    let out = net.run(&["heal", "2"], Duration::from_secs(30));
    assert!(out.status.success());
    agreed(&[0, 1, 2], Duration::from_secs(60));

    for id in [&on_majority, &on_minority] {
        for i in 0..3 {
            let start = Instant::now();
            loop {
                let mut c = Command::new("ip");
                c.args([
                    "netns",
                    "exec",
                    &format!("{}-n{i}", net.prefix),
                    BIN,
                    "dag",
                    id,
                    "--json",
                    "--data-dir",
                ])
                .arg(net.node_dir(i));
                let out = run_bounded(c, Duration::from_secs(30));
                let view: Option<bx3_protocol::api::DagView> =
                    serde_json::from_slice(&out.stdout).ok();
                if view
                    .as_ref()
                    .is_some_and(|v| v.state == bx3_protocol::api::DagState::Succeeded)
                {
                    let v = view.expect("view");
                    let agg = v.tasks["aggregate"].output.clone().unwrap_or_default();
                    assert!(agg.contains("Bonjour, world!"), "{agg}");
                    break;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(90),
                    "DAG {id} not succeeded as seen from node {i}: {view:#?}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

/// A private mesh over mDNS: three nodes in their own namespaces, all given the same
/// `--mesh-key`, find each other by mDNS and agree on one controller (status says private);
/// a fourth node without the key, started in the first node's namespace with mDNS on, sees
/// them by mDNS but never completes a connection, and they never list it.
#[test]
fn keyed_nodes_form_a_mesh_by_mdns_and_strangers_stay_out() {
    let _heavy = crate::common::heavy();
    if !netns_available() {
        eprintln!("skipped: network namespaces need root and iproute2");
        return;
    }
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("swarm.key");
    let out = run_bounded(
        {
            let mut c = Command::new(BIN);
            c.arg("keygen").arg(&key);
            c
        },
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let net = Testnet {
        dir: tempfile::tempdir().expect("tempdir"),
        prefix: format!("bx3k{}", std::process::id() % 100_000),
    };
    let key_arg = key.to_str().expect("utf-8");
    let out = net.run(
        &["up", "3", "--netns", "--", "--mesh-key", key_arg],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "testnet up failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    let ids = loop {
        let all: Vec<Option<StatusView>> = (0..3).map(|i| net.status(i)).collect();
        let leader = all[0].as_ref().and_then(|s| s.leader.clone());
        if leader.is_some()
            && all.iter().all(|s| {
                s.as_ref().is_some_and(|s| {
                    s.private_mesh
                        && s.leader == leader
                        && s.peers.len() == 2
                        && s.peers.iter().all(|p| p.connected)
                })
            })
        {
            break all
                .into_iter()
                .flatten()
                .map(|s| s.peer_id)
                .collect::<Vec<_>>();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "keyed nodes did not form a mesh by mDNS within 60 s: {all:#?}\nlog 0:\n{}",
            std::fs::read_to_string(net.node_dir(0).join("node.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!("keyed mesh formed by mDNS after {:?}", start.elapsed());

    // A stranger without the key, mDNS on, in node 0's namespace (its own data dir and port).
    let stranger_dir = net.dir.path().join("stranger");
    let log = std::fs::File::create(net.dir.path().join("stranger.log")).expect("log");
    let mut stranger = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}-n0", net.prefix),
            BIN,
            "run",
            "--data-dir",
        ])
        .arg(&stranger_dir)
        .args([
            "--api",
            "127.0.0.1:7421",
            "--listen",
            "/ip4/0.0.0.0/tcp/4002",
        ])
        .env("RUST_LOG", "info,bx3_node=debug")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the stranger");
    let stranger_status = || -> Option<StatusView> {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &format!("{}-n0", net.prefix),
            BIN,
            "status",
            "--json",
            "--data-dir",
        ])
        .arg(&stranger_dir);
        serde_json::from_slice(&run_bounded(c, Duration::from_secs(30)).stdout).ok()
    };
    let watch_until = Instant::now() + Duration::from_secs(15);
    let mut stranger_id = None;
    while Instant::now() < watch_until {
        if let Some(s) = stranger_status() {
            assert!(!s.private_mesh);
            assert!(s.peers.is_empty(), "the stranger joined: {s:#?}");
            stranger_id = Some(s.peer_id);
        }
        for i in 0..3 {
            if let Some(s) = net.status(i) {
                assert!(
                    s.peers.iter().all(|p| ids.contains(&p.peer_id)),
                    "node {i} lists a stranger: {s:#?}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = stranger.kill();
    let _ = stranger.wait();
    assert!(
        stranger_id.is_some(),
        "the stranger never answered its status"
    );
    let slog = std::fs::read_to_string(net.dir.path().join("stranger.log")).unwrap_or_default();
    assert!(
        slog.contains("mDNS discovered peer"),
        "the stranger did see the keyed nodes by mDNS (so it was kept out by the key):\n{slog}"
    );
}
