//! Inputs that used to amplify (issue 13's table), each against a real node: refused
//! quickly with a clear message, or failing alone, while the node stays up and small.
//!
//! | input                                                   | before                      |
//! |---------------------------------------------------------|-----------------------------|
//! | 456 KB YAML reusing one 2,000-string list in 5,000 tasks | node RSS 1.67 GB            |
//! | 200 KB of nested flow sequences `[[[…]]]`                | 58 s of CPU                 |
//! | `inputs: ["${a}${a}…"]` ×200 over a 1 MiB output         | node RSS 40 → 656 MB        |
//! | `memory: 4096` on a node of 128 MB executors             | accepted; 1 GB executor     |
//! | an 800 KB module with 200,000 empty functions            | 3.4 s in the node, +300 MB  |
//! | a module name containing a newline                       | a forged `ERROR` log line   |
//!
//! Costs are read from /proc: the node's CPU time (user + system, immune to a busy machine)
//! and its peak resident memory (VmHWM). No wall-clock timing is asserted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use bx3_protocol::api::{DagState, TaskState};

const MIN: Duration = Duration::from_secs(60);

/// The node's CPU time so far (user + system), seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = stat.rsplit_once(") ").expect("stat format").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime")) / 100.0
}

/// Peak resident memory of a process (VmHWM), MiB.
fn hwm_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("VmHWM")
        / 1024
}

/// One HTTP/1.1 request to the node's API (a well-behaved client: own Host, JSON or wasm
/// content type); returns (status, body).
fn http(api: &str, method: &str, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let addr = api.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write");
    stream.write_all(body).expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn post_yaml(node: &TestNode, yaml: &str) -> (u16, String) {
    let body = serde_json::json!({"yaml": yaml, "modules": {}}).to_string();
    http(
        &node.api,
        "POST",
        "/v1/dags",
        "application/json",
        body.as_bytes(),
    )
}

fn assert_up(node: &TestNode) {
    let s = node.status();
    assert!(!s.peer_id.is_empty());
}

/// The alias row: one 2,000-string list, used by alias in 5,000 tasks (456 KB).
/// Refused by the node, with the line, for a few MB and a fraction of a second of CPU; the
/// CLI refuses it too before uploading anything.
#[test]
fn a_yaml_alias_bomb_is_refused_and_the_node_stays_small() {
    let node = TestNode::start(1);
    let list: Vec<String> = (0..2000).map(|i| format!("string-number-{i:05}")).collect();
    let mut yaml = format!(
        "name: bomb\ntasks:\n  - id: t0\n    module: echo.wasm\n    inputs: &list [{}]\n",
        list.join(", ")
    );
    for i in 1..5000 {
        yaml.push_str(&format!(
            "  - {{id: task-number-{i:05}-of-the-pipeline, module: echo.wasm, inputs: *list}}\n"
        ));
    }
    assert!(
        (400_000..520_000).contains(&yaml.len()),
        "{} bytes",
        yaml.len()
    );
    let (cpu0, pid) = (cpu_secs(node.pid()), node.pid());
    let (status, body) = post_yaml(&node, &yaml);
    let cpu = cpu_secs(pid) - cpu0;
    eprintln!(
        "alias bomb ({} bytes): {status}, node CPU {cpu:.3} s, VmHWM {} MiB",
        yaml.len(),
        hwm_mib(pid)
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("aliases") && body.contains("line"), "{body}");
    assert!(cpu < 5.0, "the node spent {cpu:.2} s of CPU on it");
    assert!(
        hwm_mib(pid) < 150,
        "node VmHWM {} MiB (1.67 GB before)",
        hwm_mib(pid)
    );

    // Under the alias count, the expansion budget stops it while deserializing.
    let few = yaml.lines().take(5 + 900).collect::<Vec<_>>().join("\n");
    let (status, body) = post_yaml(&node, &few);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("expands to far more text"), "{body}");
    assert!(hwm_mib(pid) < 150, "node VmHWM {} MiB", hwm_mib(pid));

    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write_dag(tmp.path(), "bomb.yaml", &yaml);
    let out = node.cli(&["submit", file.to_str().expect("utf-8")], MIN);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("aliases"));
    assert_up(&node);
}

/// The nesting row: 200 KB of `[[[…]]]` (quadratic in libyaml: a minute of CPU).
#[test]
fn nested_flow_sequences_are_refused_for_almost_no_cpu() {
    let node = TestNode::start(1);
    let n = 100_000;
    let yaml = format!("name: deep\ntasks: {}{}\n", "[".repeat(n), "]".repeat(n));
    let (cpu0, pid) = (cpu_secs(node.pid()), node.pid());
    let (status, body) = post_yaml(&node, &yaml);
    let cpu = cpu_secs(pid) - cpu0;
    eprintln!(
        "nested ({} bytes): {status}, node CPU {cpu:.3} s, VmHWM {} MiB",
        yaml.len(),
        hwm_mib(pid)
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("nested more than 32 levels") && body.contains("line 2"),
        "{body}"
    );
    assert!(cpu < 5.0, "the node spent {cpu:.2} s of CPU on it");
    let mapping = format!(
        "name: deep\ntasks: [{}]\n",
        "{a: ".repeat(n) + &"}".repeat(n)
    );
    let (status, _) = post_yaml(&node, &mapping);
    assert_eq!(status, 400);
    assert_up(&node);
}

/// The template row: `"${a}"` 200 times over a 1 MiB output would be 200 MiB of argv
/// per attempt. The task fails alone with a message naming it and the size; its sibling runs;
/// the node's memory stays bounded (656 MB before).
#[test]
fn a_template_over_a_large_output_fails_its_task_alone() {
    let node = TestNode::start(2);
    let tmp = tempfile::tempdir().expect("tempdir");
    let template = "${big}".repeat(200);
    let file = write_dag(
        tmp.path(),
        "amplify.yaml",
        &format!(
            "name: amplify\ntasks:\n  - {{id: big, module: big_output.wasm}}\n  - {{id: blowup, module: echo.wasm, depends_on: [big], inputs: [\"{template}\"]}}\n  - {{id: after, module: echo.wasm, depends_on: [blowup], inputs: [x]}}\n  - {{id: size, module: len.wasm, depends_on: [big], inputs: [big]}}\n"
        ),
    );
    let (code, dag) = node.submit_wait(&file, MIN * 2);
    assert_eq!(code, 1, "{dag:#?}");
    assert_eq!(dag.state, DagState::Failed);
    let blowup = &dag.tasks["blowup"];
    assert_eq!(blowup.state, TaskState::Failed);
    let err = blowup.error.clone().unwrap_or_default();
    assert!(
        err.contains("\"blowup\"") && err.contains("209715200 bytes") && err.contains("8 MiB"),
        "{err}"
    );
    assert_eq!(dag.tasks["after"].state, TaskState::Skipped);
    assert_eq!(dag.tasks["size"].state, TaskState::Succeeded);
    assert_eq!(dag.tasks["size"].output.as_deref(), Some("1048576"));
    let hwm = hwm_mib(node.pid());
    eprintln!("template: {err}; node VmHWM {hwm} MiB");
    assert!(hwm < 250, "node VmHWM {hwm} MiB (656 MB before)");
    assert_up(&node);
}

/// The memory row: a task asking 4096 MB where the largest executor has 128 MB is
/// refused at submit (exit 2) naming the task and both sizes, and nothing is stored.
#[test]
fn memory_beyond_every_executor_is_refused_at_submit() {
    let node = TestNode::start(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write_dag(
        tmp.path(),
        "greedy.yaml",
        "name: greedy\ntasks:\n  - {id: small, module: echo.wasm, inputs: [x], memory: 64}\n  - {id: greedy, module: memory_bomb.wasm, memory: 4096}\n",
    );
    let modules = wasm_modules();
    let out = node.cli(
        &[
            "submit",
            file.to_str().expect("utf-8"),
            "--modules",
            modules.to_str().expect("utf-8"),
        ],
        MIN,
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"greedy\"") && err.contains("4096 MB") && err.contains("128 MB"),
        "{err}"
    );
    let list = node.cli(&["dags", "--json"], MIN);
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]");
}

/// The module row: 200,000 empty functions in 800 KB. Refused from its headers
/// (422, the count and the limit), for almost no CPU or memory in the node.
#[test]
fn a_module_with_200000_functions_is_refused_cheaply() {
    let node = TestNode::start(1);
    let wasm = crate::common::many_functions(200_000);
    assert!(wasm.len() < 1_000_000);
    let (cpu0, pid) = (cpu_secs(node.pid()), node.pid());
    let (status, body) = http(
        &node.api,
        "PUT",
        "/v1/modules?name=huge.wasm",
        "application/wasm",
        &wasm,
    );
    let cpu = cpu_secs(pid) - cpu0;
    eprintln!(
        "module: {status} {body}; node CPU {cpu:.3} s, VmHWM {} MiB",
        hwm_mib(pid)
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("200001 functions") && body.contains("100000"),
        "{body}"
    );
    assert!(
        cpu < 2.0,
        "the node spent {cpu:.2} s of CPU on it (3.4 s before)"
    );
    assert!(hwm_mib(pid) < 150, "node VmHWM {} MiB", hwm_mib(pid));

    // Through the CLI, the same module fails the submission with exit 2.
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("huge.wasm"), &wasm).expect("write");
    let file = write_dag(
        tmp.path(),
        "huge.yaml",
        "name: huge\ntasks:\n  - {id: a, module: huge.wasm}\n",
    );
    let out = node.cli(&["submit", file.to_str().expect("utf-8")], MIN);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("functions"));
    assert_up(&node);
}

/// The log row: a module name with a newline (and a task's stderr with one) cannot
/// forge a line in the node's log: untrusted text is logged escaped.
#[test]
fn untrusted_text_cannot_forge_a_log_line() {
    let node = TestNode::start(1);
    let forged = "2099-01-01T00:00:00.000000Z ERROR bx3_node: FORGED";
    let wasm = std::fs::read(wasm_modules().join("echo.wasm")).expect("echo.wasm");
    let name = format!("echo.wasm\n{forged}");
    let path = format!("/v1/modules?name={}", url_encode(&name));
    let (status, body) = http(&node.api, "PUT", &path, "application/wasm", &wasm);
    assert_eq!(status, 200, "{body}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let file = write_dag(
        tmp.path(),
        "stderr.yaml",
        &format!(
            "name: stderr\ntasks:\n  - {{id: noisy, module: exit_code.wasm, retries: 0, inputs: [\"x\\n{forged}\"]}}\n"
        ),
    );
    let (code, dag) = node.submit_wait(&file, MIN);
    assert_eq!(code, 1, "{dag:#?}");
    let log = node.log();
    assert!(
        log.contains("module stored"),
        "the upload was logged:\n{log}"
    );
    assert!(
        log.contains("FORGED"),
        "the text is in the log, escaped:\n{log}"
    );
    for line in log.lines() {
        assert!(
            !line.starts_with("2099-01-01"),
            "forged line in the log: {line:?}"
        );
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A spec on disk that fails its check (here: a dependency index out of range, which
/// panicked the planner on every start) is quarantined on restart with one log line; the
/// node comes up, does not list that DAG, and runs new ones.
#[test]
fn a_damaged_spec_on_disk_is_quarantined_not_a_crash_loop() {
    let mut node = TestNode::start(1);
    let (code, _) = node.submit_wait(&repo().join("dags/diamond.yaml"), MIN);
    assert_eq!(code, 0);
    node.kill9();
    let bad = {
        let store = (0..200)
            .find_map(|_| {
                bx3_node::store::Store::open(&node.data_dir().join("db"))
                    .ok()
                    .or_else(|| {
                        std::thread::sleep(Duration::from_millis(25));
                        None
                    })
            })
            .expect("open the node's database");
        let mut dag = bx3_protocol::parse_dag("name: bad\ntasks:\n  - {id: a, module: echo.wasm}\n  - {id: b, module: echo.wasm, depends_on: [a]}\n").expect("valid");
        dag.tasks[1].deps.push(40);
        let id = bx3_protocol::ids::DagId::new(1, 7);
        let meta = bx3_node::store::DagMeta {
            name: "bad".into(),
            description: None,
            source: None,
            state: DagState::Running,
            created_at_ms: 1,
            finished_at_ms: None,
            version: 1,
            counts: Default::default(),
        };
        let spec = bx3_node::store::SpecRecord {
            dag,
            modules: Default::default(),
        };
        store
            .insert_dag(&id, &meta, &spec)
            .expect("write the damaged DAG");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("rt");
        rt.block_on(store.flush()).expect("flush");
        id
    };
    let node = node.restart();
    let s = node.wait_status(MIN, "a controller", |s| s.leader.is_some());
    assert!(s.leader.is_some());
    let log = node.log();
    assert!(
        log.contains("quarantine.v1") && log.contains("task index 40"),
        "one clear line:\n{log}"
    );
    let list = node.cli(&["dags", "--json"], MIN);
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&bad.to_string()));
    let (code, _) = node.submit_wait(&repo().join("dags/hello_fanout.yaml"), MIN);
    assert_eq!(code, 0, "the node works on");
}

/// The executor side of the memory row: a job that asks for more memory than this node's
/// executors have (as a peer's assignment could) is held to the executor size and fails
/// saying both sizes, instead of growing to 1 GB.
#[test]
fn a_job_is_held_to_the_executor_size_whatever_it_asks() {
    use bx3_node::executor::frame::Request;
    use bx3_node::executor::sizing::{FixedRam, Sizer};
    use bx3_node::executor::{Job, Pool, PoolConfig, MAX_OUTPUT, STDERR_TAIL};

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let wasm = std::fs::read(wasm_modules().join("memory_bomb.wasm")).expect("module");
        let hash = bx3_node::store::modules::sha256_hex(&wasm);
        std::fs::create_dir_all(dir.path().join("modules")).expect("mkdir");
        std::fs::write(
            dir.path().join("modules").join(format!("{hash}.wasm")),
            &wasm,
        )
        .expect("write");
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(4);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let sizer = Sizer {
            source: Box::new(FixedRam(1 << 30)),
            ram_per_executor_mb: 64,
            min_free_ram_mb: 0,
            max_executors: Some(1),
            cpu_cores: 1,
        };
        let (pool, _capacity, task) = Pool::start(
            PoolConfig {
                exe: BIN.into(),
                data_dir: dir.path().to_path_buf(),
                max_memory_bytes: 64 << 20,
                compiler: None,
                metrics: bx3_node::metrics::Metrics::new(),
                wrapper: Vec::new(),
            },
            sizer,
            done_tx,
            shutdown.clone(),
        );
        let job = Job {
            dag: bx3_protocol::ids::DagId::new(1, 1),
            task: 0,
            attempt: 1,
            module: "memory_bomb.wasm".into(),
            request: Request {
                module_hash: hash,
                argv: vec!["memory_bomb.wasm".into()],
                env: vec![],
                stdin: vec![],
                memory_bytes: 4096 << 20,
                max_stdout: MAX_OUTPUT,
                max_stderr_tail: STDERR_TAIL,
            },
            timeout: Duration::from_secs(120),
            cancel: shutdown.child_token(),
        };
        assert!(pool.submit(job).await.is_ok());
        let done = tokio::time::timeout(Duration::from_secs(120), done_rx.recv())
            .await
            .expect("the job ends")
            .expect("a result");
        let err = done.outcome.expect_err("the bomb cannot succeed");
        assert!(
            err.contains("asked for 4096 MB") && err.contains("have 64 MB"),
            "{err}"
        );
        shutdown.cancel();
        let _ = task.await;
    });
}
