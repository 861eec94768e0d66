//! One real `bx3-node` process (127.0.0.1, `--no-mdns`) running DAGs end to end through the
//! CLI, as a user would.

use std::time::Duration;

use crate::common::{repo, write_dag, TestNode};
use bx3_protocol::api::{DagState, TaskState};

const MIN: Duration = Duration::from_secs(60);

/// The original system's example runs unchanged and `aggregate` sees both greetings.
#[test]
fn hello_fanout_end_to_end() {
    let node = TestNode::start(4);
    let (code, dag) = node.submit_wait(&repo().join("dags/hello_fanout.yaml"), MIN);
    assert_eq!(code, 0, "{dag:#?}");
    assert_eq!(dag.state, DagState::Succeeded);
    assert_eq!(dag.order, vec!["init", "greet_1", "greet_2", "aggregate"]);
    let agg = dag.tasks["aggregate"]
        .output
        .as_deref()
        .expect("aggregate output");
    assert!(
        agg.contains("Hello, world!") && agg.contains("Bonjour, world!"),
        "{agg}"
    );
    let me = node.status().peer_id;
    for (id, t) in &dag.tasks {
        assert_eq!(t.state, TaskState::Succeeded, "{id}");
        assert_eq!(t.attempts, 1, "{id}");
        assert_eq!(
            t.node.as_deref(),
            Some(me.as_str()),
            "{id} ran on this node"
        );
    }
    // The human form shows every task's output too.
    let out = node.cli(&["dag", &dag.id], MIN);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Bonjour, world!") && text.contains("succeeded"),
        "{text}"
    );
    // And the listing knows it.
    let out = node.cli(&["dags", "--json"], MIN);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dags JSON");
    assert_eq!(list[0]["id"], dag.id.as_str());
}

/// Whole-output inputs and `${id}` templates through a diamond; a 200-task fan-in sums right.
#[test]
fn diamond_and_wide_fan_in() {
    let node = TestNode::start(4);
    let (code, dag) = node.submit_wait(&repo().join("dags/diamond.yaml"), MIN);
    assert_eq!(code, 0, "{dag:#?}");
    assert_eq!(dag.tasks["b"].output.as_deref(), Some("10 5"));
    assert_eq!(dag.tasks["d"].output.as_deref(), Some("34"));

    let tmp = tempfile::tempdir().expect("tempdir");
    let mut yaml = String::from("name: fan_in\ntasks:\n");
    let mut ids = Vec::new();
    for i in 0..200 {
        yaml.push_str(&format!(
            "  - {{id: n{i}, module: sum.wasm, inputs: [\"{i}\"]}}\n"
        ));
        ids.push(format!("n{i}"));
    }
    yaml.push_str(&format!(
        "  - id: total\n    module: sum.wasm\n    inputs: [{}]\n    depends_on: [{}]\n",
        ids.join(", "),
        ids.join(", ")
    ));
    let file = write_dag(tmp.path(), "fan_in.yaml", &yaml);
    let (code, dag) = node.submit_wait(&file, Duration::from_secs(180));
    assert_eq!(code, 0, "{:?}", dag.counts);
    assert_eq!(
        dag.tasks["total"].output.as_deref(),
        Some("19900"),
        "sum of 0..200"
    );
    assert_eq!(dag.counts.succeeded, 201);
}

/// A 1 MiB output reaches its dependent intact, and unicode passes through unchanged.
#[test]
fn big_outputs_and_unicode_round_trip() {
    let node = TestNode::start(2);
    let tmp = tempfile::tempdir().expect("tempdir");
    let text = "héllo wörld — 日本語 🎉 ünïcödé";
    let file = write_dag(
        tmp.path(),
        "big.yaml",
        &format!(
            r#"
name: big
tasks:
  - {{id: big, module: big_output.wasm, inputs: ["1048576"]}}
  - {{id: size, module: len.wasm, inputs: [big], depends_on: [big]}}
  - {{id: uni, module: echo.wasm, inputs: ["{text}"]}}
  - {{id: uni2, module: echo.wasm, inputs: ["<${{uni}}>"], depends_on: [uni]}}
"#
        ),
    );
    let (code, dag) = node.submit_wait(&file, MIN);
    assert_eq!(code, 0, "{:#?}", dag.tasks.get("size"));
    assert_eq!(
        dag.tasks["big"].output.as_ref().map(|o| o.len()),
        Some(1_048_576)
    );
    assert_eq!(dag.tasks["size"].output.as_deref(), Some("1048576"));
    assert_eq!(dag.tasks["uni"].output.as_deref(), Some(text));
    assert_eq!(
        dag.tasks["uni2"].output.as_deref(),
        Some(format!("<{text}>").as_str())
    );
}

/// An infinite loop, a memory bomb, a trap, a non-zero exit and a stdout flood each fail only
/// their own task, with an error that says what happened; the node then runs the next DAG.
#[test]
fn bad_tasks_fail_alone_with_clear_errors() {
    let node = TestNode::start(4);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write_dag(
        tmp.path(),
        "bad.yaml",
        r#"
name: bad
defaults: {retries: 0, timeout: 20s}
tasks:
  - {id: spin, module: loop_forever.wasm, timeout: 2s}
  - {id: bomb, module: memory_bomb.wasm, memory: 64}
  - {id: trap, module: trap.wasm}
  - {id: exit, module: exit_code.wasm, inputs: ["disk on fire"]}
  - {id: flood, module: stdout_flood.wasm}
  - {id: after_trap, module: echo.wasm, inputs: [trap], depends_on: [trap]}
  - {id: fine, module: echo.wasm, inputs: ["still fine"]}
"#,
    );
    let (code, dag) = node.submit_wait(&file, MIN);
    assert_eq!(code, 1, "a failed DAG exits 1");
    assert_eq!(dag.state, DagState::Failed);
    let err = |id: &str| dag.tasks[id].error.clone().unwrap_or_default();
    assert_eq!(dag.tasks["spin"].state, TaskState::Failed);
    assert!(
        err("spin").contains("timed out after 2s"),
        "{}",
        err("spin")
    );
    assert!(
        err("bomb").contains("memory limit exceeded"),
        "{}",
        err("bomb")
    );
    assert!(
        err("trap").contains("trapped") && err("trap").contains("unreachable"),
        "{}",
        err("trap")
    );
    assert!(
        err("exit").contains("exited with status 3") && err("exit").contains("disk on fire"),
        "{}",
        err("exit")
    );
    assert!(
        err("flood").contains("output too large"),
        "{}",
        err("flood")
    );
    assert_eq!(dag.tasks["after_trap"].state, TaskState::Skipped);
    assert_eq!(dag.tasks["fine"].state, TaskState::Succeeded);
    assert_eq!(dag.tasks["fine"].output.as_deref(), Some("still fine"));

    // No executor leaked, and the node still runs work.
    assert_eq!(node.status().executors.busy, 0);
    let (code, dag) = node.submit_wait(&repo().join("dags/hello_fanout.yaml"), MIN);
    assert_eq!((code, dag.state), (0, DagState::Succeeded));
}

/// A failing task is retried `retries` times, then its dependents are skipped while the
/// other branch finishes (the shipped failures.yaml).
#[test]
fn retries_then_skip_dependents() {
    let node = TestNode::start(2);
    let (code, dag) = node.submit_wait(&repo().join("dags/failures.yaml"), MIN);
    assert_eq!(code, 1);
    assert_eq!(dag.tasks["flaky"].state, TaskState::Failed);
    assert_eq!(dag.tasks["flaky"].attempts, 2, "1 try + 1 retry");
    assert_eq!(dag.tasks["after_flaky"].state, TaskState::Skipped);
    assert_eq!(dag.tasks["after_flaky"].attempts, 0);
    assert_eq!(
        dag.tasks["greet"].output.as_deref(),
        Some("Salut, survivor!")
    );
}

/// kill -9 in the middle of a DAG, restart on the same data dir: the DAG finishes, finished
/// tasks are not run again and keep their outputs.
#[test]
fn crash_mid_dag_resumes_without_rerunning_finished_tasks() {
    let node = TestNode::start(2);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write_dag(
        tmp.path(),
        "long.yaml",
        r#"
name: long
tasks:
  - {id: a, module: echo.wasm, inputs: ["alpha"]}
  - {id: b, module: echo.wasm, inputs: ["beta"]}
  - {id: slow1, module: cpu_heavy.wasm, inputs: ["600000000"], depends_on: [a]}
  - {id: slow2, module: cpu_heavy.wasm, inputs: ["600000000"], depends_on: [b]}
  - {id: slow3, module: cpu_heavy.wasm, inputs: ["600000000"], depends_on: [a, b]}
  - {id: end, module: echo.wasm, inputs: [a, b, "${slow1}${slow2}${slow3}"], depends_on: [a, b, slow1, slow2, slow3]}
"#,
    );
    let id = node.submit(&file);
    node.wait_for(&id, MIN, "a and b done, a slow task running", |v| {
        v.tasks["a"].state == TaskState::Succeeded
            && v.tasks["b"].state == TaskState::Succeeded
            && v.counts.running > 0
    });
    let mut node = node;
    node.kill9();
    let node = node.restart();
    let (code, dag) = {
        let out = node.cli(&["dag", &id, "--wait", "--json"], Duration::from_secs(180));
        let dag: bx3_protocol::api::DagView =
            serde_json::from_slice(&out.stdout).expect("DAG JSON");
        (out.status.code(), dag)
    };
    assert_eq!(code, Some(0), "{dag:#?}\n{}", node.log());
    for id in ["a", "b", "slow1", "slow2", "slow3", "end"] {
        assert_eq!(
            dag.tasks[id].attempts, 1,
            "{id} ran once (an interrupted attempt is not counted)"
        );
    }
    assert_eq!(dag.tasks["a"].output.as_deref(), Some("alpha"));
    let end = dag.tasks["end"].output.as_deref().expect("end output");
    assert!(end.starts_with("alpha beta "), "{end}");
    assert!(
        node.log().contains("resuming unfinished DAGs"),
        "resume is logged"
    );
}

/// `cancel` stops a running DAG at once: the running task's executor is freed, pending tasks
/// are cancelled, and waiting on it exits 1.
#[test]
fn cancel_stops_running_work() {
    let node = TestNode::start(2);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write_dag(
        tmp.path(),
        "spin.yaml",
        "name: spin\ntasks:\n  - {id: spin, module: loop_forever.wasm, timeout: 10m}\n  - {id: next, module: echo.wasm, depends_on: [spin]}\n",
    );
    let id = node.submit(&file);
    node.wait_for(&id, MIN, "spin running", |v| v.counts.running == 1);
    let out = node.cli(&["cancel", &id], MIN);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = node.cli(&["dag", &id, "--wait", "--json"], MIN);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a cancelled DAG is not a success"
    );
    let dag: bx3_protocol::api::DagView = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(dag.state, DagState::Cancelled);
    assert_eq!(dag.tasks["next"].state, TaskState::Cancelled);
    let deadline = std::time::Instant::now() + MIN;
    while node.status().executors.busy != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "executor not freed after cancel"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = node.cli(&["cancel", &id], MIN);
    assert_eq!(
        again.status.code(),
        Some(1),
        "cancelling a finished DAG says so"
    );
}

/// Two DAGs with the same task ids run at the same time without mixing their state.
#[test]
fn concurrent_dags_are_independent() {
    let node = TestNode::start(4);
    let hello = repo().join("dags/hello_fanout.yaml");
    let first = node.submit(&hello);
    let second = node.submit(&hello);
    assert_ne!(first, second);
    for id in [&first, &second] {
        let out = node.cli(&["dag", id, "--wait", "--json"], MIN);
        assert_eq!(out.status.code(), Some(0));
        let dag: bx3_protocol::api::DagView = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(dag.id, *id);
        assert_eq!(dag.counts.succeeded, 4);
    }
}

/// Bad input is refused before anything runs, exit code 2, with a message that names the
/// file, the task and the field.
#[test]
fn bad_input_is_refused_with_exit_2() {
    let node = TestNode::start(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let typo = write_dag(
        tmp.path(),
        "typo.yaml",
        "name: t\ntasks:\n  - id: a\n    module: echo.wasm\n    depend_on: []\n",
    );
    let out = node.cli(&["submit", typo.to_str().expect("utf-8")], MIN);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("typo.yaml") && err.contains("depend_on") && err.contains("line 5"),
        "{err}"
    );

    let unknown = write_dag(
        tmp.path(),
        "unknown.yaml",
        "name: t\ntasks:\n  - {id: a, module: echo.wasm, depends_on: [ghost]}\n",
    );
    let out = node.cli(&["submit", unknown.to_str().expect("utf-8")], MIN);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("\"a\"") && err.contains("ghost"), "{err}");

    // A module file that is not WebAssembly: refused at submit, naming the file.
    std::fs::write(tmp.path().join("fake.wasm"), b"#!/bin/sh\necho not wasm\n").expect("write");
    let fake = write_dag(
        tmp.path(),
        "fake.yaml",
        "name: t\ntasks:\n  - {id: a, module: fake.wasm}\n",
    );
    let out = node.cli(&["submit", fake.to_str().expect("utf-8")], MIN);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("fake.wasm"), "{err}");

    let missing = write_dag(
        tmp.path(),
        "missing.yaml",
        "name: t\ntasks:\n  - {id: a, module: nowhere.wasm}\n",
    );
    let out = node.cli(&["submit", missing.to_str().expect("utf-8")], MIN);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("nowhere.wasm") && err.contains("not found"),
        "{err}"
    );

    let out = node.cli(&["dag", "00000000000000000000"], MIN);
    assert_eq!(out.status.code(), Some(2), "unknown DAG id");

    // Nothing was accepted.
    let out = node.cli(&["dags", "--json"], MIN);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

/// A second node on the same data dir refuses to start; a client with no node exits 2.
#[test]
fn data_dir_lock_and_unreachable_node() {
    let node = TestNode::start(1);
    let out = crate::common::run_bounded(
        {
            let mut c = std::process::Command::new(crate::common::BIN);
            c.args(["run", "--no-mdns", "--api", "127.0.0.1:0", "--data-dir"])
                .arg(node.data_dir());
            c
        },
        MIN,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("in use by another bx3-node"), "{err}");

    let out = crate::common::run_bounded(
        {
            let mut c = std::process::Command::new(crate::common::BIN);
            c.args(["status", "--api", "http://127.0.0.1:1"]);
            c
        },
        MIN,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("cannot reach"), "{err}");
}
