//! The CLI as people use it, on the real binary: `exec`, `check`, the config file, and the
//! papercuts of issue 15 (each test names the one it covers). Nodes run on 127.0.0.1 with
//! `--no-mdns`; every wait is bounded; every process is stopped by pid.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{repo, run_bounded, wasm_modules, BIN};

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
    assert!(text(&out.stdout).contains("warning: imports wasi_snapshot_preview1.path_open"));
    let out = bx3(&["check", "--strict", "--json", &f("unsupported.wasm")]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v[0]["ok"], true);
    assert!(v[0]["warnings"][0]
        .as_str()
        .is_some_and(|w| w.contains("ENOSYS")));
}
