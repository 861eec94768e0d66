//! A private mesh on real nodes (127.0.0.1, `--no-mdns`): `keygen` writes a key, nodes given
//! it with `--mesh-key` form a mesh, and a node without it (or with another key) never
//! becomes a member. A bad key file stops the node with exit 3.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{free_port, run_bounded, TestNode, BIN};

const MIN: Duration = Duration::from_secs(60);

fn keygen(path: &std::path::Path) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.arg("keygen").arg(path);
    run_bounded(c, MIN)
}

/// `keygen` writes a 0600 swarm.key and refuses to overwrite it; a node with a bad key file
/// exits 3 naming the problem.
#[test]
fn keygen_and_bad_key_files() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = tmp.path().join("swarm.key");
    let out = keygen(&key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&key).expect("key file");
    assert!(
        text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"),
        "{text}"
    );
    let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = keygen(&key);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(&key).expect("key"),
        text,
        "untouched"
    );

    let bad = tmp.path().join("bad.key");
    std::fs::write(&bad, "/key/swarm/psk/1.0.0/\n/base16/\nnothex\n").expect("write");
    for (file, want) in [
        (&bad, "not 64 hex digits"),
        (&tmp.path().join("missing.key"), "missing.key"),
    ] {
        let mut c = Command::new(BIN);
        c.args([
            "run",
            "--no-mdns",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--data-dir",
        ])
        .arg(tmp.path().join("node"))
        .arg("--mesh-key")
        .arg(file);
        let out = run_bounded(c, MIN);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
}

/// Two nodes with the same key form a mesh (status says private); a node without a key and a
/// node with another key, both naming a keyed node, never become members of it, and the
/// keyed mesh never lists them.
#[test]
fn only_key_holders_join_a_private_mesh() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (k1, k2) = (tmp.path().join("k1"), tmp.path().join("k2"));
    assert!(keygen(&k1).status.success() && keygen(&k2).status.success());
    let k1s = k1.to_str().expect("utf-8");
    let port = free_port();
    let a_listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let a = TestNode::start_with(&[
        "--max-executors",
        "1",
        "--listen",
        &a_listen,
        "--mesh-key",
        k1s,
    ]);
    let b = TestNode::start_with(&[
        "--max-executors",
        "1",
        "--peer",
        &a_listen,
        "--mesh-key",
        k1s,
    ]);
    let c = TestNode::start_with(&["--max-executors", "1", "--peer", &a_listen]);
    let d = TestNode::start_with(&[
        "--max-executors",
        "1",
        "--peer",
        &a_listen,
        "--mesh-key",
        k2.to_str().expect("utf-8"),
    ]);
    let b_id = b.status().peer_id;
    let sa = a.wait_status(MIN, "B a member", |s| {
        s.peers.iter().any(|p| p.peer_id == b_id && p.connected)
    });
    assert!(sa.private_mesh && b.status().private_mesh);
    assert!(!c.status().private_mesh, "no key: an open mesh");
    assert!(a.log().contains("mesh: private"), "startup log says so");
    assert!(c.log().contains("mesh: open"), "startup log says so");
    let (c_id, d_id) = (c.status().peer_id, d.status().peer_id);
    for n in [&c, &d] {
        n.wait_status(MIN, "a stranger alone, its own controller", |s| {
            s.leader.as_deref() == Some(s.peer_id.as_str())
        });
    }
    // The strangers redial A with backoff all along; watch for a while.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for (n, who) in [(&a, "A"), (&b, "B")] {
            let s = n.status();
            assert!(
                s.peers
                    .iter()
                    .all(|p| p.peer_id != c_id && p.peer_id != d_id),
                "{who} lists a node without the key: {s:#?}"
            );
        }
        for (n, who) in [(&c, "C (no key)"), (&d, "D (other key)")] {
            let s = n.status();
            assert!(s.peers.is_empty(), "{who} joined: {s:#?}");
            assert_eq!(
                s.leader.as_deref(),
                Some(s.peer_id.as_str()),
                "{who} is alone"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let tmpd = tempfile::tempdir().expect("tempdir");
    let file = crate::common::write_dag(
        tmpd.path(),
        "one.yaml",
        "name: one\ntasks:\n  - {id: a, module: echo.wasm, inputs: [private]}\n",
    );
    let (code, dag) = b.submit_wait(&file, MIN);
    assert_eq!(code, 0, "{dag:#?}");
    assert_eq!(a.dag(&dag.id).tasks["a"].output.as_deref(), Some("private"));
}
