//! The CLI as people use it, on the real binary: `exec`, `check`, the config file, and the
//! papercuts of issue 15 (each test names the one it covers). Nodes run on 127.0.0.1 with
//! `--no-mdns`; every wait is bounded; every process is stopped by pid.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{repo, run_bounded, wasm_modules, BIN};

const MIN: Duration = Duration::from_secs(60);

/// `bx3-node ARGS` with no node-finding variables from the environment, bounded.
fn bx3(args: &[&str]) -> Output {
    bx3_in(args, None)
}

fn bx3_in(args: &[&str], cache: Option<&Path>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("BX3_API")
        .env_remove("BX3_DATA_DIR")
        .env_remove("BX3_CONFIG")
        .env_remove("RUST_LOG");
    if let Some(dir) = cache {
        cmd.env("BX3_EXEC_CACHE", dir);
    }
    run_bounded(cmd, MIN)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn module(name: &str) -> String {
    wasm_modules().join(name).display().to_string()
}

/// `exec` runs a module as an executor would: output on stdout, the task's error on stderr,
/// exit 0 / 1, inputs (even `-10`), env, stdin, and the limits (timeout, memory).
#[test]
fn exec_runs_a_module_like_an_executor() {
    let cache = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| bx3_in(args, Some(cache.path()));

    let out = run(&["exec", &module("greet_1.wasm"), "world"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Hello, world!\n");

    let out = run(&["exec", &module("sum.wasm"), "1", "-10", "2 3"]);
    assert_eq!(text(&out.stdout), "-4\n", "{}", text(&out.stderr));

    let out = run(&["exec", "-e", "GREETING=Hi", &module("greet_1.wasm"), "you"]);
    assert_eq!(text(&out.stdout), "Hi, you!\n");

    let out = run(&["exec", "--stdin", "abc", &module("sha256.wasm")]);
    assert_eq!(
        text(&out.stdout).trim(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );

    let out = run(&["exec", &module("exit_code.wasm"), "disk", "on", "fire"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("exited with status 3") && err.contains("something went wrong: disk on fire"),
        "{err}"
    );

    let out = run(&["exec", "--json", &module("exit_code.wasm"), "x"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["state"], "failed");
    assert_eq!(v["ended"], "exit");
    assert_eq!(v["exit_status"], 3);
    assert!(v["stderr"]
        .as_str()
        .is_some_and(|s| s.contains("went wrong")));

    let out = run(&["exec", "--timeout", "1s", &module("loop_forever.wasm")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("timed out after 1s"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["exec", "--memory", "16", &module("memory_bomb.wasm")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("memory limit exceeded") && text(&out.stderr).contains("16 MB"),
        "{}",
        text(&out.stderr)
    );

    // Bad input: exit 2, one line, nothing run.
    let out = run(&["exec", &repo().join("README.md").display().to_string()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not a WebAssembly module"), "{err}");
    let out = run(&["exec", "--timeout", "soon", &module("noop.wasm")]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["exec", "--env", "NOEQUALS", &module("noop.wasm")]);
    assert_eq!(out.status.code(), Some(2));
}

/// `check` passes the committed modules, and says in one line per problem why a module would
/// be refused (no byte dumps); `--strict` also fails on warnings.
#[test]
fn check_says_whether_modules_fit_the_abi() {
    let mut all: Vec<String> = std::fs::read_dir(wasm_modules())
        .expect("wasm_modules")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .map(|p| p.display().to_string())
        .collect();
    all.sort();
    let mut args = vec!["check", "--strict"];
    args.extend(all.iter().map(String::as_str));
    let out = bx3(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert_eq!(text(&out.stdout).lines().count(), all.len());

    let fixtures = repo().join("node/tests/fixtures");
    let f = |n: &str| fixtures.join(n).display().to_string();
    let readme = repo().join("README.md").display().to_string();
    let out = bx3(&["check", &readme, &f("badstart.wasm"), &f("envimport.wasm")]);
    assert_eq!(out.status.code(), Some(2));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("not a WebAssembly module"), "{stdout}");
    assert!(stdout.contains("`_start`"), "{stdout}");
    assert!(stdout.contains("env.foo"), "{stdout}");
    assert!(!stdout.contains("0x"), "no byte dumps: {stdout}");

    // WASI functions bx3 answers with ENOSYS: a warning; --strict makes it fail.
    let out = bx3(&["check", &f("unsupported.wasm")]);
    assert_eq!(out.status.code(), Some(0));
    let shown = text(&out.stdout);
    assert!(
        shown.contains("warning: imports 2 WASI functions"),
        "{shown}"
    );
    assert!(shown.contains("path_open, bx3_nope"), "{shown}");
    let out = bx3(&["check", "--strict", "--json", &f("unsupported.wasm")]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["ok"], true);
    assert!(v[0]["warnings"][0]
        .as_str()
        .is_some_and(|w| w.contains("ENOSYS")));
}

/// `bx3-node ARGS` with `input` on its stdin, bounded.
fn bx3_stdin(args: &[&str], input: &str, dir: &Path) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("BX3_API")
        .env_remove("BX3_DATA_DIR")
        .env_remove("BX3_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    let deadline = std::time::Instant::now() + MIN;
    while !waiter.is_finished() {
        if std::time::Instant::now() > deadline {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("bx3-node {args:?} did not finish within {MIN:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().expect("waiter").expect("output")
}

/// Papercuts: `--version`/`version`, completions, help without doubled env, and usage
/// errors as JSON when `--json` was asked for.
#[test]
fn version_completions_help_and_usage_errors() {
    let out = bx3(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).starts_with("bx3-node 0."),
        "{}",
        text(&out.stdout)
    );
    let out = bx3(&["version", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["rpc_protocol"], "/bx3/rpc/2");

    for shell in ["bash", "zsh", "fish"] {
        let out = bx3(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        assert!(
            script.contains("submit") && script.contains("max-executors"),
            "{shell}"
        );
    }
    let out = bx3(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));

    // `[env: BX3_API]` once, even with BX3_API set to nothing.
    let out = run_bounded(
        {
            let mut c = Command::new(BIN);
            c.args(["submit", "--help"]).env("BX3_API", "");
            c
        },
        MIN,
    );
    let help = text(&out.stdout);
    assert_eq!(help.matches("[env: BX3_API]").count(), 1, "{help}");
    assert!(!help.contains("BX3_API="), "{help}");

    // A usage error with --json is a JSON document on stdout, exit 2.
    let out = bx3(&["dag", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["kind"], "usage");
    assert_eq!(v["exit_code"], 2);
    // A node flag before a client subcommand is refused, naming it.
    let out = bx3(&["--max-executors", "2", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--max-executors is a flag of `run`"));
}

/// Papercuts: an unreachable node says so in a few words (no repeated URL and wrappers), and
/// with `--json` the error is JSON on stdout with the same exit code.
#[test]
fn client_errors_are_short_and_json_when_asked() {
    let out = bx3(&["status", "--api", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot reach the bx3 node at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(!err.contains("error sending request"), "{err}");
    assert_eq!(err.matches("127.0.0.1:1").count(), 1, "{err}");

    let out = bx3(&["status", "--json", "--api", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["kind"], "unreachable");
    assert_eq!(v["exit_code"], 2);
    assert!(v["error"]
        .as_str()
        .is_some_and(|e| e.contains("cannot reach")));
}

/// Papercuts on a running node: a non-DAG file is not echoed back; a bad module is one line;
/// `submit -` reads stdin; long outputs are cut in the human view with a hint; `--json`
/// errors from the node are JSON; a port in use is said once.
#[test]
fn submit_papercuts_on_a_node() {
    let node = crate::common::TestNode::start(2);
    let api = node.api.clone();
    let tmp = tempfile::tempdir().expect("tempdir");

    // README.md is not a DAG: a short message, not a paragraph of the file.
    let readme = repo().join("README.md").display().to_string();
    let out = bx3(&["submit", &readme, "--api", &api]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("not a DAG file"), "{err}");
    assert!(err.len() < 300, "{} characters: {err}", err.len());
    let out = bx3(&["submit", &readme, "--api", &api, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        (v["kind"].as_str(), v["exit_code"].as_i64()),
        (Some("input"), Some(2))
    );

    // A module that is not wasm: one line naming the file, no byte dump.
    std::fs::write(tmp.path().join("fake.wasm"), b"#!/bin/sh\necho hi\n").expect("write");
    let fake = crate::common::write_dag(
        tmp.path(),
        "fake.yaml",
        "name: t\ntasks:\n  - {id: a, module: fake.wasm}\n",
    );
    let out = bx3(&["submit", fake.to_str().expect("utf-8"), "--api", &api]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("fake.wasm") && err.contains("not a WebAssembly module"),
        "{err}"
    );
    assert!(!err.contains("0x"), "{err}");

    // `submit -`: the DAG on stdin, modules found from the current directory.
    std::fs::copy(
        module("big_output.wasm"),
        tmp.path().join("big_output.wasm"),
    )
    .expect("copy");
    let dag =
        "name: from-stdin\ntasks:\n  - {id: big, module: big_output.wasm, inputs: [\"5000\"]}\n";
    let out = bx3_stdin(&["submit", "-", "--wait", "--api", &api], dag, tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    // The 5,000-character output is cut in the table, with a hint naming the command.
    assert!(shown.contains("from-stdin"), "{shown}");
    assert!(shown.len() < 1000, "{} characters shown", shown.len());
    assert!(shown.contains("5000 characters in all") && shown.contains("--json` shows all"));
    let out = bx3_stdin(&["submit", "-", "--json", "--api", &api], dag, tmp.path());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let id = v["id"].as_str().expect("id").to_string();
    let out = bx3(&["dag", &id, "--wait", "--json", "--api", &api]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["source"], "<stdin>");
    assert_eq!(
        v["tasks"]["big"]["output"].as_str().map(str::len),
        Some(5000)
    );

    // A second node on the same API port: "Address already in use" said once, exit 3.
    let port = api.rsplit(':').next().expect("port");
    let other = tempfile::tempdir().expect("tempdir");
    let out = bx3(&[
        "run",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--api",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
        other.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(3));
    let err = text(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains("Address already in use"), "{err}");
    assert_eq!(last.matches("Address already in use").count(), 1, "{last}");
}

/// Papercut: ids resolve by prefix like short git hashes, on any node (each holds a replica);
/// an ambiguous prefix is an error listing the candidates. `status` names this node's role
/// and shows peer addresses.
#[test]
fn id_prefixes_and_status_on_a_mesh() {
    let mesh = crate::common::Mesh::start(2, 1);
    let leader = mesh.wait_leader(MIN);
    let hello = repo().join("dags/hello_fanout.yaml");
    let a = mesh.nodes[0].submit(&hello);
    let b = mesh.nodes[0].submit(&hello);
    let common_len = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    assert!(
        common_len >= 4,
        "{a} {b}: ids of one minute share their start"
    );
    let unique_a = &a[..common_len + 1];

    for node in &mesh.nodes {
        let out = node.cli(&["dag", unique_a, "--wait", "--json"], MIN);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(v["id"], a.as_str());
    }
    let shared = &a[..common_len.min(12)];
    let out = mesh.nodes[1].cli(&["dag", shared], MIN);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("ambiguous") && err.contains(&a) && err.contains(&b),
        "{err}"
    );
    assert!(
        err.contains("hello_fanout"),
        "candidates show their names: {err}"
    );
    let out = mesh.nodes[1].cli(&["dag", "0123456789"], MIN);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no DAG id starts with"));
    let out = mesh.nodes[1].cli(&["cancel", unique_a], MIN);
    assert_eq!(out.status.code(), Some(1), "already finished: exit 1");

    for node in &mesh.nodes {
        let status = node.status();
        let out = node.cli(&["status"], MIN);
        let shown = text(&out.stdout);
        let me = status.peer_id == leader;
        assert!(
            shown.contains(if me {
                "role      controller"
            } else {
                "role      follower"
            }),
            "{shown}"
        );
        assert_eq!(shown.contains("leader    this node"), me, "{shown}");
        assert!(
            shown.contains("    at /ip4/127.0.0.1/tcp/"),
            "peer addresses: {shown}"
        );
    }
}

/// Papercut: Ctrl-C during `submit --wait` stops the waiting, not the DAG, and says how to
/// watch or cancel it (exit 130).
#[test]
fn ctrl_c_during_wait_leaves_the_dag_running() {
    use std::io::BufRead;
    use std::process::Stdio;
    let node = crate::common::TestNode::start(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let slow = crate::common::write_dag(
        tmp.path(),
        "slow.yaml",
        "name: slow\ntasks:\n  - {id: spin, module: loop_forever.wasm, timeout: 2m, retries: 0}\n",
    );
    let mut child = Command::new(BIN)
        .args(["submit", slow.to_str().expect("utf-8"), "--wait"])
        .args(["--api", &node.api, "--modules"])
        .arg(wasm_modules())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(MIN).expect("a first line on stderr");
    let id = first
        .rsplit(' ')
        .next()
        .expect("submitted FILE as ID")
        .to_string();
    assert!(first.starts_with("submitted"), "{first}");
    let sent = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let deadline = std::time::Instant::now() + MIN;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "submit did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));
    // The reader ends at EOF (the process exited); bounded in case something holds the pipe.
    let mut rest = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(10)) {
        rest.push(line);
    }
    let said = rest.join("\n");
    assert!(said.contains("keeps running"), "{said}");
    assert!(
        said.contains(&format!("bx3-node dag {id} --wait")),
        "{said}"
    );
    assert!(said.contains(&format!("bx3-node cancel {id}")), "{said}");
    let view = node.dag(&id);
    assert!(!view.state.is_terminal(), "the DAG runs on: {view:?}");
    let out = node.cli(&["cancel", &id], MIN);
    assert_eq!(out.status.code(), Some(0));
}

/// Every example task module (examples/tasks: Rust, C, Zig, AssemblyScript, Python) runs in a
/// DAG on a node, and again through `bx3-node exec` with the task's resolved inputs, stdin
/// and env: the output is the same both ways.
#[test]
fn example_tasks_run_the_same_in_a_dag_and_through_exec() {
    use bx3_protocol::dag::parse_dag;
    let node = crate::common::TestNode::start(2);
    let cache = tempfile::tempdir().expect("tempdir");
    let examples = repo().join("examples/tasks");
    let mut modules_seen = std::collections::BTreeSet::new();
    for dag_file in ["hello.yaml", "sales_report.yaml"] {
        let path = examples.join(dag_file);
        let out = node.cli(
            &["submit", path.to_str().expect("utf-8"), "--wait", "--json"],
            Duration::from_secs(600),
        );
        let view: bx3_protocol::api::DagView =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "{dag_file}: no DAG JSON ({e}); stderr: {}\nlog:\n{}",
                    text(&out.stderr),
                    node.log()
                )
            });
        assert_eq!(out.status.code(), Some(0), "{dag_file}: {view:#?}");
        let spec = parse_dag(&std::fs::read_to_string(&path).expect("read")).expect("valid");
        let output_of = |i: u32| -> &str {
            let id = &spec.tasks[i as usize].id;
            view.tasks[id].output.as_deref().unwrap_or("")
        };
        for (i, task) in spec.tasks.iter().enumerate() {
            let in_dag = view.tasks[&task.id].output.clone().expect("succeeded");
            let module = examples.join("wasm_modules").join(&task.module);
            let mut args: Vec<String> = vec!["exec".into(), "--stdin".into(), task.stdin.clone()];
            for (k, v) in &task.env {
                args.push("--env".into());
                args.push(format!("{k}={v}"));
            }
            args.push(module.display().to_string());
            args.extend(
                spec.resolve_inputs(i, output_of)
                    .expect("inputs within the limit"),
            );
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = bx3_in(&argv, Some(cache.path()));
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                task.id,
                text(&out.stderr)
            );
            assert_eq!(
                text(&out.stdout).trim_end(),
                in_dag,
                "{dag_file} task {}: exec and the DAG differ",
                task.id
            );
            modules_seen.insert(task.module.clone());
        }
        if dag_file == "sales_report.yaml" {
            let report = view.tasks["report"].output.clone().unwrap_or_default();
            assert!(report.contains("| TOP REGIONS, 2026-12-01"), "{report}");
            assert!(report.contains("north 162.75"), "{report}");
            assert!(report.contains("mean 69.79"), "{report}");
        }
    }
    // Every committed example module took part.
    let committed: std::collections::BTreeSet<String> =
        std::fs::read_dir(examples.join("wasm_modules"))
            .expect("examples/tasks/wasm_modules")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wasm"))
            .collect();
    assert_eq!(modules_seen, committed);
}

/// docs/tasks.md shows each hello program as it is committed (and built, and tested above).
#[test]
fn the_task_guide_shows_the_committed_sources() {
    let guide = std::fs::read_to_string(repo().join("docs/tasks.md")).expect("docs/tasks.md");
    let mut shown = 0;
    for block in guide.split("<!-- source: ").skip(1) {
        let (path, rest) = block.split_once(" -->").expect("marker");
        let code = rest
            .split_once("```")
            .and_then(|(_, r)| r.split_once('\n'))
            .and_then(|(_, r)| r.split_once("```"))
            .map(|(code, _)| code)
            .expect("a code block after the marker");
        let file = std::fs::read_to_string(repo().join(path)).expect(path);
        assert_eq!(code, file, "docs/tasks.md shows {path} differently");
        shown += 1;
    }
    assert_eq!(shown, 5, "one hello per language");
}

/// testnet/testnet.sh on loopback, as a user drives it: up, status, submit, kill-leader and
/// status right after it (no traceback, the killed node is dead), usage errors, logs, a
/// partition and its healing without root, down keeping the logs, down --purge.
#[test]
fn testnet_commands_on_loopback() {
    let state = tempfile::tempdir().expect("tempdir");
    // Three consecutive free ports for the APIs and three for libp2p, not overlapping.
    let three_free = |avoid: Option<u16>| -> u16 {
        for _ in 0..200 {
            let p = crate::common::free_port();
            let clear = avoid.is_none_or(|a| p + 2 < a || p > a + 2);
            if p < 60000
                && clear
                && (0..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())
            {
                return p;
            }
        }
        panic!("no three consecutive free ports");
    };
    let api = three_free(None);
    let p2p = three_free(Some(api));
    let tn = |args: &[&str]| -> Output {
        let mut c = Command::new(repo().join("testnet/testnet.sh"));
        c.args(args)
            .env("BX3_BIN", BIN)
            .env("BX3_TESTNET_DIR", state.path())
            .env("BX3_TESTNET_API_PORT", api.to_string())
            .env("BX3_TESTNET_P2P_PORT", p2p.to_string())
            .env("BX3_TESTNET_EXECUTORS", "1")
            .env_remove("BX3_API")
            .env_remove("BX3_DATA_DIR");
        run_bounded(c, Duration::from_secs(120))
    };
    let says = |out: &Output| format!("{}{}", text(&out.stdout), text(&out.stderr));
    let no_traceback = |out: &Output| {
        assert!(!says(out).contains("Traceback"), "{}", says(out));
    };

    let out = tn(&["up", "3"]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    let out = tn(&["status"]);
    assert_eq!(
        text(&out.stdout).matches(" controller ").count(),
        1,
        "{}",
        says(&out)
    );

    let hello = repo().join("dags/hello_fanout.yaml");
    let out = tn(&[
        "submit",
        hello.to_str().expect("utf-8"),
        "--wait",
        "--node",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    assert!(text(&out.stdout).contains("Bonjour, world!"));

    let out = tn(&["kill-leader"]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    let killed: String = text(&out.stdout)
        .split("killed node ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("killed node I")
        .to_string();
    // Right after the kill: no traceback, and the killed node is not alive.
    let out = tn(&["status"]);
    no_traceback(&out);
    assert_eq!(out.status.code(), Some(0));
    let row = text(&out.stdout)
        .lines()
        .find(|l| l.starts_with(&format!("{killed} ")))
        .map(str::to_string)
        .expect("a row for the killed node");
    assert!(row.split_whitespace().nth(2) == Some("no"), "{row}");

    // Usage errors, not shell errors.
    for (args, expect) in [
        (vec!["restart"], "usage: testnet/testnet.sh restart I"),
        (vec!["logs", "9"], "no node 9 (this testnet has nodes 0..2)"),
        (vec!["kill", "x"], "no node x"),
        (vec!["submit"], "usage: testnet/testnet.sh submit FILE"),
        (vec!["frobnicate"], "testnet/testnet.sh up N"),
    ] {
        let out = tn(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", says(&out));
        assert!(says(&out).contains(expect), "{args:?}: {}", says(&out));
        assert!(!says(&out).contains("line "), "{args:?}: {}", says(&out));
    }
    let out = tn(&["restart", &killed]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    let out = tn(&["logs", &killed, "-n", "5"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!text(&out.stdout).is_empty());

    // Partition node 2 without root: it sees no peer; after heal, all three agree again.
    let peers_of_2 = || -> Option<String> {
        let out = tn(&["status"]);
        no_traceback(&out);
        text(&out.stdout)
            .lines()
            .find(|l| l.starts_with("2 "))
            .and_then(|l| l.split_whitespace().nth(6).map(str::to_string))
    };
    let wait_peers = |want: &str| {
        let deadline = std::time::Instant::now() + MIN;
        while peers_of_2().as_deref() != Some(want) {
            assert!(
                std::time::Instant::now() < deadline,
                "node 2 never had {want} peers"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    wait_peers("2");
    let out = tn(&["partition", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    wait_peers("0");
    let out = tn(&["heal", "2"]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    wait_peers("2");

    // down keeps the logs; down --purge removes everything.
    let out = tn(&["down"]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    assert!(state.path().join("node-0/node.log").is_file());
    assert!(!state.path().join("node-0/pid").exists());
    let out = tn(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    let out = tn(&["down", "--purge"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(!state.path().join("node-0").exists());
}

/// The systemd unit in packaging/ passes `systemd-analyze verify` with not one warning (it
/// exits 0 on parse warnings, so its output must be empty), run against the real binary.
#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(repo().join("packaging/bx3-node.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/bx3-node run --config /etc/bx3/node.yaml"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bx3-node.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/bx3-node", BIN)).expect("write");
    let out = run_bounded(
        {
            let mut c = Command::new("systemd-analyze");
            c.arg("verify").arg(&path);
            c
        },
        MIN,
    );
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.trim().is_empty(), "systemd-analyze warns: {said}");

    // The config file it points to starts a node as written (exit 2 would be a bad key).
    let data = tempfile::tempdir().expect("tempdir");
    let config = repo().join("packaging/node.yaml");
    let out = bx3(&["--config", config.to_str().expect("utf-8"), "run", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("[default: 128]"));
    drop(data);
}
