//! Executors on a real node: sized from RAM and re-sized while running, replaced when killed
//! from outside, shared fairly between DAGs, and bounded in memory.

use std::time::Duration;

use crate::common::{children_of, rss_kib, write_dag, TestNode};
use bx3_protocol::api::{DagState, ExecutorLimit, TaskState};

const MIN: Duration = Duration::from_secs(60);

/// The executor count follows available RAM while the node runs; shrinking never kills a
/// running task (busy executors retire after their task).
#[test]
fn executor_count_follows_ram_and_shrinking_spares_running_tasks() {
    let _heavy = crate::common::heavy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let ram = tmp.path().join("ram");
    std::fs::write(&ram, "1024").expect("write");
    // --max-executors above the RAM slots: RAM decides (not the CPU cores).
    let node = TestNode::start_with(&[
        "--ram-file",
        ram.to_str().expect("utf-8"),
        "--max-executors",
        "64",
    ]);
    // (1024 - 512) / 128 = 4
    let s = node.wait_status(MIN, "4 executors", |s| s.executors.total == 4);
    assert_eq!(s.executors.limited_by, Some(ExecutorLimit::Ram));
    assert_eq!(s.executors.ram_slots, 4);
    assert_eq!(
        (s.executors.ram_per_executor_mb, s.executors.min_free_ram_mb),
        (128, 512)
    );
    assert_eq!(s.executors.available_ram_mb, 1024);

    std::fs::write(&ram, "2048").expect("write");
    node.wait_status(MIN, "12 executors after RAM frees up", |s| {
        s.executors.total == 12
    });

    let file = write_dag(
        tmp.path(),
        "three.yaml",
        "name: three\ntasks:\n  - {id: a, module: cpu_heavy.wasm, inputs: [\"400000000\"]}\n  - {id: b, module: cpu_heavy.wasm, inputs: [\"400000000\"]}\n  - {id: c, module: cpu_heavy.wasm, inputs: [\"400000000\"]}\n",
    );
    let id = node.submit(&file);
    node.wait_for(&id, MIN, "three tasks running", |v| v.counts.running == 3);
    std::fs::write(&ram, "600").expect("write");
    node.wait_status(MIN, "1 executor after RAM gets tight", |s| {
        s.executors.total == 1
    });
    let out = node.cli(&["dag", &id, "--wait", "--json"], Duration::from_secs(120));
    let dag: bx3_protocol::api::DagView = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(dag.state, DagState::Succeeded);
    for t in dag.tasks.values() {
        assert_eq!(
            t.attempts, 1,
            "no running task was killed to shrink the pool"
        );
    }
}

/// An executor process killed from outside is detected, its task retried on a fresh one, and
/// the node carries on.
#[test]
fn executor_killed_from_outside_is_replaced_and_task_retried() {
    let _heavy = crate::common::heavy();
    let node = TestNode::start(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write_dag(
        tmp.path(),
        "slow.yaml",
        "name: slow\ntasks:\n  - {id: slow, module: cpu_heavy.wasm, inputs: [\"1500000000\"], retries: 1}\n",
    );
    let id = node.submit(&file);
    node.wait_for(&id, MIN, "slow task running", |v| v.counts.running == 1);
    let pids = children_of(node.pid());
    assert_eq!(pids.len(), 1, "one executor process: {pids:?}");
    let status = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = node.cli(&["dag", &id, "--wait", "--json"], Duration::from_secs(120));
    let dag: bx3_protocol::api::DagView = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(dag.state, DagState::Succeeded, "{dag:#?}");
    assert_eq!(
        dag.tasks["slow"].attempts, 2,
        "retried once on a fresh executor"
    );
    assert!(
        node.log().contains("executor process died"),
        "the death is logged"
    );
    let now = children_of(node.pid());
    assert!(!now.contains(&pids[0]), "the dead executor is not reused");
}

/// A small DAG submitted behind a large one does not wait for the large one to drain.
#[test]
fn small_dag_is_not_starved_by_a_large_one() {
    let _heavy = crate::common::heavy();
    let node = TestNode::start(2);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut big = String::from("name: big\ntasks:\n");
    for i in 0..300 {
        big.push_str(&format!(
            "  - {{id: t{i}, module: cpu_heavy.wasm, inputs: [\"20000000\"]}}\n"
        ));
    }
    let big = write_dag(tmp.path(), "big.yaml", &big);
    let small = write_dag(
        tmp.path(),
        "small.yaml",
        "name: small\ntasks:\n  - {id: a, module: echo.wasm, inputs: [x]}\n  - {id: b, module: echo.wasm, inputs: [y]}\n  - {id: c, module: echo.wasm, inputs: [z]}\n",
    );
    let big_id = node.submit(&big);
    node.wait_for(&big_id, MIN, "big DAG under way", |v| {
        v.counts.succeeded >= 4
    });
    let (code, _) = node.submit_wait(&small, MIN);
    assert_eq!(code, 0);
    let big_now = node.dag(&big_id);
    assert!(
        big_now.counts.done() < big_now.counts.total / 2,
        "small DAG finished while the big one was far from done ({}/{})",
        big_now.counts.done(),
        big_now.counts.total
    );
    let out = node.cli(&["cancel", &big_id], MIN);
    assert!(out.status.success());
}

/// A memory bomb limited to 64 MB fails with a memory error; the node's own memory stays
/// small (the bomb lives and dies in an executor process).
#[test]
fn memory_bomb_is_contained() {
    let _heavy = crate::common::heavy();
    let node = TestNode::start(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write_dag(
        tmp.path(),
        "bomb.yaml",
        "name: bomb\ntasks:\n  - {id: bomb, module: memory_bomb.wasm, memory: 64, retries: 0}\n  - {id: ok, module: echo.wasm, inputs: [fine], depends_on: [bomb]}\n",
    );
    let (code, dag) = node.submit_wait(&file, MIN);
    assert_eq!(code, 1);
    let err = dag.tasks["bomb"].error.clone().unwrap_or_default();
    assert!(
        err.contains("memory limit exceeded") && err.contains("64 MB"),
        "{err}"
    );
    assert_eq!(dag.tasks["ok"].state, TaskState::Skipped);
    let rss = rss_kib(node.pid()).expect("node rss");
    assert!(rss < 200 * 1024, "node RSS {rss} KiB stays bounded");
    for pid in children_of(node.pid()) {
        let rss = rss_kib(pid).unwrap_or(0);
        assert!(rss < 200 * 1024, "executor RSS {rss} KiB stays bounded");
    }
}

/// The niceness of a process (field 19 of /proc/PID/stat).
fn nice_of(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(16)?.parse().ok()
}

/// By default a node runs `min(RAM slots, CPU cores)` executors and says which limit decided;
/// `--max-executors` may go above the cores; executor processes run at a lower scheduling
/// priority (nice +10) than the node, so the node stays responsive when every core is busy.
#[test]
fn executors_are_cpu_bound_by_default_and_run_below_the_node() {
    let _heavy = crate::common::heavy();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let node = TestNode::start_with(&[]);
    let s = node.status();
    let e = &s.executors;
    assert_eq!(e.cpu_cores, cores);
    assert!(e.ram_slots >= 1);
    assert_eq!(e.total, e.ram_slots.min(cores), "{e:?}");
    let want = if e.ram_slots <= cores {
        ExecutorLimit::Ram
    } else {
        ExecutorLimit::Cpu
    };
    assert_eq!(e.limited_by, Some(want), "{e:?}");
    let text = node.cli(&["status"], MIN);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("limited by"), "{text}");
    assert!(text.contains(&format!("{cores} CPU cores")), "{text}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write_dag(
        tmp.path(),
        "one.yaml",
        "name: one\ntasks:\n  - {id: a, module: cpu_heavy.wasm, inputs: [\"2000000000\"]}\n",
    );
    let id = node.submit(&file);
    node.wait_for(&id, MIN, "the task running", |v| v.counts.running == 1);
    let deadline = std::time::Instant::now() + MIN;
    let executors = loop {
        let kids = children_of(node.pid());
        if !kids.is_empty() {
            break kids;
        }
        assert!(std::time::Instant::now() < deadline, "no executor process");
        std::thread::sleep(Duration::from_millis(50));
    };
    let node_nice = nice_of(node.pid()).expect("node nice");
    for pid in executors {
        let nice = nice_of(pid).expect("executor nice");
        assert_eq!(
            nice,
            (node_nice + 10).min(19),
            "executor {pid} runs at nice +10"
        );
    }
    node.cli(&["cancel", &id], MIN);

    let above = TestNode::start_with(&["--max-executors", &(cores + 3).to_string()]);
    let e = above.status().executors;
    if e.ram_slots >= cores + 3 {
        assert_eq!(e.total, cores + 3, "--max-executors may go above the cores");
        assert_eq!(e.limited_by, Some(ExecutorLimit::MaxExecutors));
    }
}
