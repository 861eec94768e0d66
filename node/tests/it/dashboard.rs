//! The dashboard, the metrics and the task pages, on real nodes (127.0.0.1, `--no-mdns`), as
//! a person, a Prometheus server and a script see them. The browser tests need Chromium
//! (`.ci/run` installs Debian's `chromium`); without it they print why and skip.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::browser;
use crate::common::{repo, write_dag, Mesh, TestNode};
use bx3_protocol::api::{DagState, DagView, TaskState};

const MIN: Duration = Duration::from_secs(60);

/// `GET path` on a node's API over plain HTTP/1.1: (status, content type, body).
fn http_get(api: &str, path: &str) -> (u16, String, String) {
    let addr = api.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "this little client reads only sized bodies"
    );
    (status, ctype, body.to_string())
}

/// A small parser of the Prometheus/OpenMetrics text format: every sample as
/// `name{labels}` (labels sorted) -> value, and every `# TYPE`. Refuses malformed lines, so a
/// broken exposition fails the test.
fn parse_metrics(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    let mut eof = false;
    for line in text.lines() {
        assert!(!eof, "text after # EOF: {line:?}");
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), String::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let mut pairs: Vec<&str> = inner.split(',').filter(|p| !p.is_empty()).collect();
                for p in &pairs {
                    let (k, v) = p.split_once('=').expect("label=value");
                    assert!(
                        k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "label name {k:?}"
                    );
                    assert!(
                        v.starts_with('"') && v.ends_with('"'),
                        "quoted label value {v:?}"
                    );
                }
                pairs.sort();
                (name.to_string(), format!("{{{}}}", pairs.join(",")))
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name:?}"
        );
        samples.insert(format!("{name}{labels}"), value);
    }
    assert!(eof, "the exposition ends with # EOF");
    (samples, types)
}

/// Whatever times the node recorded are in order: queued <= started <= finished, for the task
/// and for each attempt, and attempts follow each other.
fn assert_times_monotone(v: &DagView) {
    let ordered = |what: &str, ts: [Option<u64>; 3]| {
        let set: Vec<u64> = ts.into_iter().flatten().collect();
        assert!(set.windows(2).all(|w| w[0] <= w[1]), "{what}: {ts:?}");
    };
    for (id, t) in &v.tasks {
        ordered(id, [t.queued_at_ms, t.started_at_ms, t.finished_at_ms]);
        let mut last_start = 0;
        for a in &t.attempt_log {
            ordered(
                &format!("{id} attempt {}", a.attempt),
                [a.queued_at_ms, a.started_at_ms, a.finished_at_ms],
            );
            if let Some(s) = a.started_at_ms {
                assert!(s >= last_start, "{id}: attempts out of order");
                last_start = s;
            }
        }
    }
}

fn scrape(node: &TestNode) -> BTreeMap<String, f64> {
    scrape_typed(node).0
}

fn scrape_typed(node: &TestNode) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let (status, ctype, body) = http_get(&node.api, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    parse_metrics(&body)
}

fn assert_types(types: &BTreeMap<String, String>) {
    for (name, kind) in [
        ("bx3_task_attempts_started", "counter"),
        ("bx3_tasks_finished", "counter"),
        ("bx3_task_duration_seconds", "histogram"),
        ("bx3_queue_depth", "gauge"),
        ("bx3_term", "gauge"),
        ("libp2p_bandwidth_bytes", "counter"),
    ] {
        assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
    }
}

fn get(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

/// Sum of a metric over all label sets that contain `filter`.
fn sum(samples: &BTreeMap<String, f64>, name: &str, filter: &str) -> f64 {
    samples
        .iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{"))) && k.contains(filter)
        })
        .map(|(_, v)| *v)
        .sum()
}

/// Waits (bounded) until the scrape satisfies `pred`.
fn wait_metrics(
    node: &TestNode,
    what: &str,
    pred: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + MIN;
    loop {
        let m = scrape(node);
        if pred(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}: {m:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `/metrics` is valid Prometheus text and its counters follow a DAG as it runs: attempts
/// started and finished on the node's executors, tasks finished by state on the controller
/// (a retried and failed task included), durations, executors, peers, term, and the bytes
/// the mesh moved.
#[test]
fn metrics_parse_and_counters_move_as_a_dag_runs() {
    let _heavy = crate::common::heavy();
    let mesh = Mesh::start(2, 2);
    let leader = mesh.wait_leader(MIN);
    let ctl = &mesh.nodes[mesh.index_of(&leader)];
    let before = wait_metrics(ctl, "the peer and the term", |m| {
        get(m, "bx3_peers_alive") == 1.0 && get(m, "bx3_is_controller") == 1.0
    });
    assert!(get(&before, "bx3_term") >= 1.0);
    assert_eq!(get(&before, "bx3_executors"), 2.0);
    let started_before: f64 = mesh
        .nodes
        .iter()
        .map(|n| get(&scrape(n), "bx3_task_attempts_started_total"))
        .sum();

    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_dag(
        dir.path(),
        "m.yaml",
        r#"
name: metrics
tasks:
  - {id: a, module: echo.wasm, inputs: ["x"]}
  - {id: b, module: echo.wasm, inputs: ["a"], depends_on: [a]}
  - {id: c, module: echo.wasm, inputs: ["a"], depends_on: [a]}
  - {id: bad, module: exit_code.wasm, inputs: ["3"], retries: 1}
  - {id: after_bad, module: echo.wasm, depends_on: [bad]}
"#,
    );
    let (code, dag) = ctl.submit_wait(&file, MIN);
    assert_eq!((code, dag.state), (1, DagState::Failed), "{dag:#?}");
    assert_times_monotone(&dag);

    // The controller's counters: summed over the nodes (whoever was controller counted), after
    // the DAG's end reached the metrics (pushed once a second) and every attempt that started
    // on an executor ended there (an attempt put back because its node looked lost on a
    // starved machine may still be running after the DAG finished).
    let deadline = Instant::now() + MIN;
    let (scrapes, total) = loop {
        let scrapes: Vec<_> = mesh
            .nodes
            .iter()
            .map(|n| {
                let (samples, types) = scrape_typed(n);
                assert_types(&types);
                samples
            })
            .collect();
        let total = |key: &str| -> f64 { scrapes.iter().map(|m| get(m, key)).sum() };
        let started = total("bx3_task_attempts_started_total");
        let ended: f64 = scrapes
            .iter()
            .map(|m| sum(m, "bx3_task_attempts_finished_total", ""))
            .sum();
        // ... and the queues drained (every node's figure is at most a second old).
        if total(r#"bx3_dags_finished_total{state="failed"}"#) >= 1.0
            && ended == started
            && total("bx3_queue_depth") == 0.0
        {
            let t: BTreeMap<String, f64> = [
                "bx3_tasks_started_total",
                "bx3_tasks_requeued_total",
                r#"bx3_tasks_finished_total{state="succeeded"}"#,
                r#"bx3_tasks_finished_total{state="failed"}"#,
                r#"bx3_tasks_finished_total{state="skipped"}"#,
                "bx3_queue_depth",
                "bx3_task_attempts_started_total",
            ]
            .iter()
            .map(|k| (k.to_string(), total(k)))
            .collect();
            break (scrapes, t);
        }
        assert!(
            Instant::now() < deadline,
            "the metrics never showed the DAG finished, every attempt ended and the queues empty: {scrapes:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let at = |k: &str| total.get(k).copied().unwrap_or(0.0);
    // a, b, c once each, bad twice (one retry). A stable mesh counts exactly that; a failover
    // or a node that looked lost adds starts and requeues, never finishes.
    let requeued = at("bx3_tasks_requeued_total");
    assert!(requeued >= 1.0, "bad's retry: {total:#?}");
    let stable = mesh.wait_leader(MIN) == leader
        && get(&scrape(ctl), "bx3_term") == get(&before, "bx3_term")
        && requeued == 1.0;
    if stable {
        assert_eq!(at(r#"bx3_tasks_finished_total{state="succeeded"}"#), 3.0);
        assert_eq!(at(r#"bx3_tasks_finished_total{state="failed"}"#), 1.0);
        assert_eq!(at(r#"bx3_tasks_finished_total{state="skipped"}"#), 1.0);
        assert_eq!(at("bx3_tasks_started_total"), 5.0, "{total:#?}");
    } else {
        eprintln!("the mesh was not stable (a failover or a lost node): bounds only");
        assert!(at(r#"bx3_tasks_finished_total{state="succeeded"}"#) >= 3.0);
        assert!(at(r#"bx3_tasks_finished_total{state="failed"}"#) >= 1.0);
        assert!(at(r#"bx3_tasks_finished_total{state="skipped"}"#) >= 1.0);
        assert!(at("bx3_tasks_started_total") >= 5.0, "{total:#?}");
    }

    // The attempts ran on the executors of both nodes together: 5 or more, all ended, timed.
    let started = at("bx3_task_attempts_started_total");
    assert!(started - started_before >= 5.0, "{scrapes:#?}");
    let ok: f64 = scrapes
        .iter()
        .map(|m| sum(m, "bx3_task_attempts_finished_total", "succeeded"))
        .sum();
    let failed: f64 = scrapes
        .iter()
        .map(|m| sum(m, "bx3_task_attempts_finished_total", "\"failed\""))
        .sum();
    assert!(ok >= 3.0 && failed >= 2.0, "{scrapes:#?}");
    let ended: f64 = scrapes
        .iter()
        .map(|m| sum(m, "bx3_task_attempts_finished_total", ""))
        .sum();
    assert_eq!(
        ended, started,
        "every attempt that started ended: {scrapes:#?}"
    );
    let timed: f64 = scrapes
        .iter()
        .map(|m| sum(m, "bx3_task_duration_seconds_count", ""))
        .sum();
    assert_eq!(timed, ok + failed, "every ended attempt was timed");
    for m in &scrapes {
        // Histogram buckets are cumulative and end at the count.
        let count = sum(m, "bx3_task_duration_seconds_count", "succeeded");
        let inf = sum(
            m,
            "bx3_task_duration_seconds_bucket",
            "+Inf\",outcome=\"succeeded",
        );
        assert_eq!(count, inf, "{m:#?}");
        let sent = sum(m, "libp2p_bandwidth_bytes_total", "\"Outbound\"");
        let received = sum(m, "libp2p_bandwidth_bytes_total", "\"Inbound\"");
        assert!(sent > 0.0 && received > 0.0, "the mesh moved bytes: {m:#?}");
    }
    // The uploaded modules were compiled (and timed) on the node that took the upload.
    let m = scrape(ctl);
    assert!(get(&m, "bx3_module_compile_seconds_count") >= 2.0, "{m:#?}");
}

/// `GET /v1/dags/{id}` serves pages of tasks: a window in DAG order, filtered by state and id,
/// with the count of matches, on the controller and through a follower alike; bad queries
/// are refused with 400.
#[test]
fn task_pages_window_and_filter_a_dag() {
    let _heavy = crate::common::heavy();
    let mesh = Mesh::start(2, 2);
    let leader = mesh.wait_leader(MIN);
    let follower = &mesh.nodes[1 - mesh.index_of(&leader)];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut yaml = String::from("name: pages\ntasks:\n");
    for i in 0..30 {
        yaml.push_str(&format!(
            "  - {{id: t{i:02}, module: echo.wasm, inputs: [\"out{i}\"]}}\n"
        ));
    }
    yaml.push_str("  - {id: bad, module: exit_code.wasm, inputs: [\"2\"], retries: 0}\n");
    let file = write_dag(dir.path(), "p.yaml", &yaml);
    let (code, dag) = follower.submit_wait(&file, MIN);
    assert_eq!(code, 1, "{dag:#?}");
    assert_times_monotone(&dag);
    let id = dag.id;
    for node in &mesh.nodes {
        let page = |q: &str| -> DagView {
            let (status, _, body) = http_get(&node.api, &format!("/v1/dags/{id}?{q}"));
            assert_eq!(status, 200, "{q}: {body}");
            serde_json::from_str(&body).expect("DAG JSON")
        };
        let v = page("tasks=false&task_offset=10&task_limit=5&preview=2");
        assert_eq!(v.order, vec!["t10", "t11", "t12", "t13", "t14"]);
        assert_eq!(v.tasks.len(), 5);
        let p = v.page.expect("page info");
        assert_eq!((p.offset, p.limit, p.matched), (10, 5, 31));
        assert_eq!(
            v.tasks["t12"].output.as_deref(),
            Some("ou…"),
            "preview cuts"
        );
        assert_eq!(v.tasks["t12"].module, "echo.wasm");
        assert_eq!(v.tasks["t12"].inputs, vec!["out12"]);
        assert_eq!(v.counts.total, 31, "the summary stays whole");

        let v = page("state=failed");
        assert_eq!(v.order, vec!["bad"]);
        assert_eq!(v.tasks["bad"].state, TaskState::Failed);
        assert_eq!(v.page.map(|p| p.matched), Some(1));

        let v = page("q=t2&state=succeeded,failed&task_limit=100");
        assert_eq!(v.order.len(), 10, "{:?}", v.order);
        assert!(v.order.iter().all(|t| t.starts_with("t2")));

        let v = page("task=t07");
        assert_eq!(v.order, vec!["t07"]);
        assert_eq!(v.tasks["t07"].output.as_deref(), Some("out7"), "whole text");

        let v = page("task_offset=1000");
        assert!(v.order.is_empty());
        assert_eq!(v.page.map(|p| p.matched), Some(31));

        for bad in ["state=finished", "task_limit=100000", "task_offset=x"] {
            let (status, _, body) = http_get(&node.api, &format!("/v1/dags/{id}?{bad}"));
            assert_eq!(status, 400, "{bad}: {body}");
        }
    }
    // `logs` asks for one task and prints its stderr under a header.
    let out = follower.cli(&["logs", &id, "bad"], MIN);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.starts_with("== "), "{text}");
    assert!(
        text.contains("exited with status 3") && text.contains("something went wrong: 2"),
        "{text}"
    );
    let out = follower.cli(&["logs", &id, "nope"], MIN);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no task \"nope\""));
}

/// The dashboard as a person sees it in a real browser: served without a build step at `/`
/// of a follower, it shows the controller and both nodes, the DAGs with their names and
/// states, a task's output; and its own Cancel control cancels a running DAG.
#[test]
fn dashboard_in_a_browser_shows_the_mesh_and_cancels_a_dag() {
    let _heavy = crate::common::heavy();
    let Some(exe) = browser::chromium() else {
        eprintln!("SKIPPED: no chromium on PATH (set BX3_CHROMIUM or install Debian's chromium; .ci/run does)");
        return;
    };
    let mesh = Mesh::start(2, 2);
    let leader = mesh.wait_leader(MIN);
    let follower = &mesh.nodes[1 - mesh.index_of(&leader)];
    let other = follower.status().peer_id;

    let (code, hello) = follower.submit_wait(&repo().join("dags/hello_fanout.yaml"), MIN);
    assert_eq!(code, 0, "{hello:#?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let stuck = write_dag(
        dir.path(),
        "stuck.yaml",
        r#"
name: long_haul
description: "Runs until someone cancels it. <img src=x onerror=\"document.title='pwned'\">"
tasks:
  - {id: spin, module: loop_forever.wasm, timeout: 10m, retries: 0}
  - {id: then, module: echo.wasm, inputs: ["never"], depends_on: [spin]}
"#,
    );
    let stuck_id = follower.submit(&stuck);
    follower.wait_for(&stuck_id, MIN, "spin running", |v| {
        v.tasks["spin"].state == TaskState::Running
    });

    // The static files come with the security headers and no token.
    let (status, ctype, body) = http_get(&follower.api, "/");
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(body.contains("/ui/app.js"));
    let (status, ctype, _) = http_get(&follower.api, "/ui/app.js");
    assert_eq!((status, ctype.starts_with("text/javascript")), (200, true));
    assert_eq!(http_get(&follower.api, "/ui/../../etc/passwd").0, 404);

    let mut b = browser::Browser::start(&exe, 1400, 1000);
    b.goto(&format!("{}/", follower.api));
    let text = b.wait_text(
        &[
            &leader,
            &other,
            "controller",
            "hello_fanout",
            "long_haul",
            "succeeded",
            "running",
        ],
        MIN,
    );
    assert!(text.contains("2 of 2 nodes up"), "{text}");

    // A task's output, in the task panel.
    b.goto(&format!(
        "{}/#/dag/{}/task/aggregate",
        follower.api, hello.id
    ));
    b.wait_text(
        &[
            "aggregate",
            "Hello, world!",
            "Bonjour, world!",
            "aggregate.wasm",
        ],
        MIN,
    );

    // Cancel the running DAG with the page's own control.
    b.goto(&format!("{}/#/dag/{stuck_id}", follower.api));
    // Text from a DAG file is shown as text, never run as HTML.
    b.wait_text(
        &[
            "long_haul",
            "Runs until someone cancels it. <img src=x",
            "spin",
        ],
        MIN,
    );
    assert_eq!(
        b.eval("document.querySelectorAll('img[src=\"x\"]').length + ':' + document.title"),
        serde_json::json!("0:bx3 mesh")
    );
    b.click("#cancel", MIN);
    b.click("#cancel-yes", MIN);
    let v = follower.wait_for(&stuck_id, MIN, "the DAG cancelled", |v| {
        v.state == DagState::Cancelled
    });
    assert_eq!(v.tasks["spin"].state, TaskState::Cancelled);
    assert_eq!(v.tasks["then"].state, TaskState::Cancelled);
    let deadline = Instant::now() + MIN;
    while b.eval("!!document.querySelector('#cancel')") == serde_json::Value::Bool(true) {
        assert!(Instant::now() < deadline, "the Cancel button stayed");
        std::thread::sleep(Duration::from_millis(200));
    }
    b.wait_text(&["cancelled"], MIN);
}

/// The README's screenshots, taken on a 3-node mesh in the middle of a DAG (so they show what
/// the dashboard really looks like). Written to `target/` on every run, and over the
/// committed `docs/*.png` when `BX3_UPDATE_SCREENSHOTS=1`.
#[test]
fn dashboard_screenshots_of_a_three_node_mesh_mid_dag() {
    let _heavy = crate::common::heavy();
    let Some(exe) = browser::chromium() else {
        eprintln!("SKIPPED: no chromium on PATH (set BX3_CHROMIUM or install Debian's chromium; .ci/run does)");
        return;
    };
    let mesh = Mesh::start(3, 2);
    let leader = mesh.wait_leader(MIN);
    let node = &mesh.nodes[mesh.index_of(&leader)];
    let (code, _) = node.submit_wait(&repo().join("dags/hello_fanout.yaml"), MIN);
    assert_eq!(code, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    // A realistic shape: fetch, parse in parallel, merge in pairs, a report.
    let mut yaml = String::from(
        "name: nightly_report\ndescription: \"Parse eight shards in parallel, merge them, and report.\"\n\
         defaults: {timeout: 5m, retries: 1}\ntasks:\n  - {id: fetch, module: echo.wasm, inputs: [\"8 shards\"]}\n",
    );
    // Several seconds a shard, so the pictures catch it half done even on a busy machine.
    for i in 1..=8 {
        let rounds = 150_000_000 + i * 60_000_000;
        yaml.push_str(&format!(
            "  - {{id: parse_{i}, module: cpu_heavy.wasm, inputs: [\"{rounds}\"], depends_on: [fetch]}}\n"
        ));
    }
    for j in 1..=4 {
        let (a, b) = (2 * j - 1, 2 * j);
        yaml.push_str(&format!(
            "  - {{id: merge_{j}, module: sum.wasm, inputs: [\"parse_{a}\", \"parse_{b}\"], depends_on: [parse_{a}, parse_{b}]}}\n"
        ));
    }
    yaml.push_str("  - {id: report, module: sum.wasm, inputs: [merge_1, merge_2, merge_3, merge_4], depends_on: [merge_1, merge_2, merge_3, merge_4]}\n");
    let file = write_dag(dir.path(), "nightly.yaml", &yaml);
    // The page is open (and warm) before the DAG starts: moving to it is a hash change.
    let mut b = browser::Browser::start(&exe, 1360, 820);
    b.goto(&format!("{}/", node.api));
    b.wait_text(&["3 of 3 nodes up", "hello_fanout"], MIN);
    let id = node.submit(&file);
    node.wait_for(
        &id,
        Duration::from_secs(180),
        "some tasks done and some running",
        |v| v.counts.succeeded >= 3 && v.counts.running >= 2 || v.state.is_terminal(),
    );
    let out_dir = repo().join("target");
    let update = std::env::var_os("BX3_UPDATE_SCREENSHOTS").is_some();
    b.eval(&format!("location.hash = '#/dag/{id}'"));
    b.wait_text(&["nightly_report", "parse_1", "Graph", "running"], MIN);
    std::thread::sleep(Duration::from_millis(300));
    let dag_png = b.screenshot();
    b.eval("location.hash = '#/'");
    b.wait_text(&["3 of 3 nodes up", "nightly_report", "hello_fanout"], MIN);
    std::thread::sleep(Duration::from_millis(300));
    let mesh_png = b.screenshot();
    for (name, png) in [
        ("dashboard-dag.png", dag_png),
        ("dashboard-mesh.png", mesh_png),
    ] {
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}");
        std::fs::write(out_dir.join(name), &png).expect("write screenshot");
        if update {
            std::fs::write(repo().join("docs").join(name), &png).expect("write docs/ screenshot");
        }
    }
    let _ = node.cli(&["cancel", &id], MIN);
}

/// A stand-in for a node that requires an API token: it serves the dashboard's own files
/// (from the source tree) without one, and answers `/v1/*` only with `Bearer s3cret`
/// (401 otherwise). Counts the API requests that carried the right token.
struct TokenNode {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    authorized: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenNode {
    fn start(status: String) -> TokenNode {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let authorized = Arc::new(AtomicUsize::new(0));
        let (stop2, auth2) = (stop.clone(), authorized.clone());
        let ui = repo().join("node/src/api/ui");
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(300);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let token_ok = head
                    .lines()
                    .any(|l| l.eq_ignore_ascii_case("authorization: Bearer s3cret"));
                let file = |name: &str| std::fs::read_to_string(ui.join(name)).unwrap_or_default();
                let (status_line, ctype, body) = match path.split('?').next().unwrap_or("") {
                    "/" => ("200 OK", "text/html", file("index.html")),
                    "/ui/app.js" => ("200 OK", "text/javascript", file("app.js")),
                    "/ui/style.css" => ("200 OK", "text/css", file("style.css")),
                    "/ui/icon.svg" => ("200 OK", "image/svg+xml", file("icon.svg")),
                    p if p.starts_with("/v1/") && !token_ok => (
                        "401 Unauthorized",
                        "application/json",
                        r#"{"error":"this node requires an API token"}"#.to_string(),
                    ),
                    "/v1/status" => {
                        auth2.fetch_add(1, Ordering::Relaxed);
                        ("200 OK", "application/json", status.clone())
                    }
                    "/v1/dags" => {
                        auth2.fetch_add(1, Ordering::Relaxed);
                        ("200 OK", "application/json", "[]".to_string())
                    }
                    _ => (
                        "404 Not Found",
                        "application/json",
                        r#"{"error":"no"}"#.into(),
                    ),
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status_line}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenNode {
            addr,
            stop,
            authorized,
            thread: Some(thread),
        }
    }
}

impl Drop for TokenNode {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// With a node that requires an API token, the page asks for it once (and again, saying so,
/// when the node refuses what was typed), keeps it in the tab's session storage, and sends it
/// with every API request from then on.
#[test]
fn dashboard_asks_for_the_api_token_and_keeps_it_for_the_session() {
    let _heavy = crate::common::heavy();
    let Some(exe) = browser::chromium() else {
        eprintln!("SKIPPED: no chromium on PATH (set BX3_CHROMIUM or install Debian's chromium; .ci/run does)");
        return;
    };
    let status = serde_json::json!({
        "peer_id": "12D3KooWTokenNodeTokenNodeTokenNodeTokenNode1",
        "leader": "12D3KooWTokenNodeTokenNodeTokenNodeTokenNode1",
        "term": 7, "listen_addrs": [], "peers": [], "version": "0.1.0",
        "executors": {"total": 2, "busy": 0},
        "role": "controller"
    })
    .to_string();
    let node = TokenNode::start(status);
    let mut b = browser::Browser::start(&exe, 1200, 800);
    b.goto(&format!("http://{}/", node.addr));
    b.wait_text(&["This node asks for its API token"], MIN);
    // A wrong token is refused and the page asks again, saying why.
    b.eval("document.querySelector('#token-input').value = 'wrong'");
    b.click("#token-form button[type=submit]", MIN);
    b.wait_text(&["The node refused that token"], MIN);
    b.eval("document.querySelector('#token-input').value = 's3cret'");
    b.click("#token-form button[type=submit]", MIN);
    let text = b.wait_text(&["TokenNode1", "No DAGs yet", "1 of 1 nodes up"], MIN);
    assert!(
        !text.contains("asks for its API token"),
        "the prompt closed: {text}"
    );
    assert_eq!(
        b.eval("sessionStorage.getItem('bx3.api-token')"),
        serde_json::json!("s3cret")
    );
    let before = node.authorized.load(std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(3));
    let after = node.authorized.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        after > before,
        "the page keeps polling with the token ({before} -> {after})"
    );
}
