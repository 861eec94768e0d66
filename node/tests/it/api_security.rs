//! The HTTP API keeps web pages out: requests a browser page can send to 127.0.0.1 on its
//! own (a `text/plain` POST from a foreign origin, DNS rebinding with a foreign `Host`) are
//! refused and change nothing; with a token, nothing is served without it; a node whose API
//! is reachable from other machines does not start without a token.
//!
//! Requests are written by hand on a TCP socket to 127.0.0.1, so every header is exactly what
//! a hostile page would send.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;

/// Sends one HTTP/1.1 request to the node's API; returns (status, body).
fn http(
    api: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let addr = api.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect to the API");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("write head");
    stream.write_all(body).expect("write body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn dag_count(node: &TestNode, extra: &[&str]) -> usize {
    let mut args = vec!["dags", "--json"];
    args.extend_from_slice(extra);
    let out = node.cli(&args, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    list.len()
}

/// Uploads echo.wasm properly; returns its hash.
fn upload_echo(node: &TestNode, auth: Option<&str>) -> String {
    let wasm = std::fs::read(wasm_modules().join("echo.wasm")).expect("echo.wasm");
    let mut headers = vec![("Content-Type", "application/wasm")];
    if let Some(a) = auth {
        headers.push(("Authorization", a));
    }
    let (status, body) = http(
        &node.api,
        "PUT",
        "/v1/modules?name=echo.wasm",
        &headers,
        &wasm,
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["hash"].as_str().expect("hash").to_string()
}

/// A web page's `fetch("http://127.0.0.1:7420/v1/dags", {method: "POST", mode: "no-cors",
/// body: ...})` goes out as `text/plain` with the page's `Origin` and no preflight. It is
/// refused, and no DAG exists afterwards; the same body sent as the CLI sends it is accepted
/// (so the refusal is the headers', not the body's).
#[test]
fn a_cross_origin_text_plain_post_is_refused_and_nothing_runs() {
    let node = TestNode::start(1);
    let hash = upload_echo(&node, None);
    let body = serde_json::json!({
        "yaml": "name: evil\ntasks:\n  - {id: a, module: echo.wasm, inputs: [pwned]}\n",
        "modules": {"echo.wasm": hash},
    })
    .to_string();

    let (status, answer) = http(
        &node.api,
        "POST",
        "/v1/dags",
        &[
            ("Content-Type", "text/plain"),
            ("Origin", "http://evil.example"),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("other origins"), "{answer}");
    // Without an Origin (a form post from a page that strips it), text/plain is refused too.
    let (status, answer) = http(
        &node.api,
        "POST",
        "/v1/dags",
        &[("Content-Type", "text/plain")],
        body.as_bytes(),
    );
    assert_eq!(status, 415, "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    let (status, _) = http(
        &node.api,
        "POST",
        "/v1/dags",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        body.as_bytes(),
    );
    assert_eq!(status, 415);
    // A JSON POST with a foreign Origin (after a preflight we never approve) is refused too.
    let (status, _) = http(
        &node.api,
        "POST",
        "/v1/dags",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "http://evil.example"),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 403);
    assert_eq!(dag_count(&node, &[]), 0, "nothing was submitted");

    // The API's own origin (the dashboard) and plain clients are served.
    let own = node.api.clone();
    let (status, answer) = http(
        &node.api,
        "POST",
        "/v1/dags",
        &[
            ("Content-Type", "application/json; charset=utf-8"),
            ("Origin", &own),
        ],
        body.as_bytes(),
    );
    assert_eq!(status, 201, "{answer}");
    assert_eq!(dag_count(&node, &[]), 1);
}

/// DNS rebinding: a page on attacker.example whose name now resolves to 127.0.0.1 sends
/// `Host: attacker.example`; nothing is served to it, reads included.
#[test]
fn a_foreign_host_is_refused() {
    let node = TestNode::start(1);
    let (code, view) = node.submit_wait(
        &repo().join("dags/hello_fanout.yaml"),
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "{view:#?}");
    for path in ["/v1/status", "/v1/dags", &format!("/v1/dags/{}", view.id)] {
        let (status, body) = http(
            &node.api,
            "GET",
            path,
            &[("Host", "attacker.example:7420")],
            b"",
        );
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body.contains("DNS rebinding") && !body.contains("Bonjour"),
            "{body}"
        );
    }
    let (status, _) = http(
        &node.api,
        "GET",
        "/v1/status",
        &[("Host", "localhost")],
        b"",
    );
    assert_eq!(status, 200, "localhost is loopback");
    let (status, _) = http(
        &node.api,
        "GET",
        "/v1/status",
        &[("Host", "127.0.0.1")],
        b"",
    );
    assert_eq!(status, 200);
}

/// With a token: every request needs `Authorization: Bearer <token>` (401 otherwise, wrong
/// tokens included); the CLI sends it from --api-token-file; the dashboard's page and assets
/// are not behind it but `/metrics` is.
#[test]
fn a_token_is_required_and_accepted() {
    let secrets = tempfile::tempdir().expect("tempdir");
    let token = "bx3-test-token-0123456789abcdef";
    let file = secrets.path().join("token");
    std::fs::write(&file, format!("{token}\n")).expect("write token");
    let wrong = secrets.path().join("wrong");
    std::fs::write(&wrong, "bx3-test-token-0123456789abcdeX").expect("write token");
    let file_arg = file.to_str().expect("utf-8");
    let node = TestNode::start_with(&["--max-executors", "1", "--api-token-file", file_arg]);

    let bearer = format!("Bearer {token}");
    for (headers, want) in [
        (vec![], 401),
        (
            vec![("Authorization", "Bearer bx3-test-token-0123456789abcdeX")],
            401,
        ),
        (
            vec![("Authorization", "Bearer bx3-test-token-0123456789abcde")],
            401,
        ),
        (vec![("Authorization", token)], 401),
        (vec![("Authorization", bearer.as_str())], 200),
    ] {
        let (status, body) = http(&node.api, "GET", "/v1/status", &headers, b"");
        assert_eq!(status, want, "{headers:?}: {body}");
    }
    let (status, _) = http(&node.api, "GET", "/metrics", &[], b"");
    assert_eq!(status, 401, "/metrics needs the token");
    for path in ["/", "/ui/app.js"] {
        let (status, _) = http(&node.api, "GET", path, &[], b"");
        assert_ne!(status, 401, "{path} is served without the token");
    }
    let (status, _) = http(&node.api, "GET", "/", &[("Host", "attacker.example")], b"");
    assert_eq!(status, 403, "the page is still under the Host rule");
    // Uploads need it too.
    let wasm = std::fs::read(wasm_modules().join("echo.wasm")).expect("echo.wasm");
    let (status, _) = http(
        &node.api,
        "PUT",
        "/v1/modules?name=echo.wasm",
        &[("Content-Type", "application/wasm")],
        &wasm,
    );
    assert_eq!(status, 401);

    let out = node.cli(&["status"], Duration::from_secs(30));
    assert_eq!(
        out.status.code(),
        Some(2),
        "no token: the CLI cannot use the node"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a token"));
    let out = node.cli(
        &["status", "--api-token-file", wrong.to_str().expect("utf-8")],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));

    let dag = repo().join("dags/hello_fanout.yaml");
    let modules = wasm_modules();
    let out = node.cli(
        &[
            "submit",
            dag.to_str().expect("utf-8"),
            "--wait",
            "--json",
            "--modules",
            modules.to_str().expect("utf-8"),
            "--api-token-file",
            file_arg,
        ],
        Duration::from_secs(120),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(dag_count(&node, &["--api-token-file", file_arg]), 1);
}

/// `--api` on an address other machines can reach, without a token, is refused before the
/// node binds anything (exit 2, naming the fix); nothing is left running.
#[test]
fn a_reachable_api_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new(BIN);
    cmd.args([
        "run",
        "--no-mdns",
        "--api",
        "0.0.0.0:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--data-dir",
    ])
    .arg(dir.path())
    .env_remove("BX3_API_TOKEN")
    .env_remove("BX3_API_TOKEN_FILE")
    .env_remove("BX3_API_INSECURE");
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reachable from other machines") && err.contains("--api-insecure"),
        "{err}"
    );
    assert!(!dir.path().join("api.addr").exists());
}
