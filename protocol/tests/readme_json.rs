//! README's JSON examples cannot drift from the API's types.
//!
//! Every ```json block in README.md preceded by `<!-- json: TYPE -->` must (1) deserialize into
//! that type and (2) name exactly the fields a fully populated value of the type serializes:
//! a field added to a type and not to README, or named in README and not in the type, fails.
//! The "fully populated" values below are struct literals without `..Default::default()`, so
//! adding a field to a type does not compile until it is added here too.

use std::collections::{BTreeMap, BTreeSet};

use bx3_protocol::api::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    std::fs::read_to_string(path).expect("README.md")
}

/// (type name, JSON text) of every tagged block.
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(ty) = line
            .trim()
            .strip_prefix("<!-- json: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        assert_eq!(lines.next().map(str::trim), Some("```json"), "{ty}");
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        out.push((ty.to_string(), body.join("\n")));
    }
    out
}

/// Object keys are paths; maps keyed by data (task ids, module names) count as one `*`;
/// array elements are merged.
fn paths(v: &Value, at: &str, maps: &[&str], out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            let is_map = maps.contains(&at);
            for (k, v) in m {
                let key = if is_map { "*" } else { k.as_str() };
                let p = if at.is_empty() {
                    key.to_string()
                } else {
                    format!("{at}.{key}")
                };
                out.insert(p.clone());
                paths(v, &p, maps, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                paths(item, &format!("{at}[]"), maps, out);
            }
        }
        _ => {}
    }
}

const MAPS: &[&str] = &["tasks", "modules", "[]tasks"];

fn check<T: DeserializeOwned + Serialize>(ty: &str, json: &str, full: &T) {
    let example: Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("README {ty}: not JSON: {e}"));
    let typed: T = serde_json::from_value(example.clone())
        .unwrap_or_else(|e| panic!("README {ty} does not parse as the type: {e}"));
    let mut documented = BTreeSet::new();
    paths(&example, "", MAPS, &mut documented);
    // What the example holds survives a round trip through the type (no field is ignored).
    let mut round = BTreeSet::new();
    paths(
        &serde_json::to_value(&typed).expect("serializes"),
        "",
        MAPS,
        &mut round,
    );
    let ignored: Vec<_> = documented.difference(&round).collect();
    // `null` values are serialized too; only unknown names go missing here.
    assert!(
        ignored.is_empty(),
        "README {ty} names fields the type does not have: {ignored:?}"
    );
    let mut all = BTreeSet::new();
    paths(
        &serde_json::to_value(full).expect("serializes"),
        "",
        MAPS,
        &mut all,
    );
    let undocumented: Vec<_> = all.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "README {ty} lacks fields the type has: {undocumented:?}"
    );
}

fn executors() -> ExecutorsView {
    ExecutorsView {
        total: 2,
        busy: 1,
        ram_per_executor_mb: 128,
        available_ram_mb: 1000,
        min_free_ram_mb: 512,
        max_executors: Some(2),
        ram_slots: 3,
        cpu_cores: 2,
        limited_by: Some(ExecutorLimit::MaxExecutors),
    }
}

fn counts() -> Counts {
    Counts {
        total: 1,
        pending: 0,
        running: 0,
        succeeded: 1,
        failed: 0,
        skipped: 0,
        cancelled: 0,
    }
}

fn full_dag() -> DagView {
    let attempt = AttemptView {
        attempt: 1,
        node: Some("n".into()),
        outcome: AttemptOutcome::Failed,
        queued_at_ms: Some(1),
        started_at_ms: Some(2),
        finished_at_ms: Some(3),
        error: Some("e".into()),
        stderr: Some("s".into()),
    };
    let task = TaskView {
        state: TaskState::Succeeded,
        output: Some("o".into()),
        error: Some("e".into()),
        attempts: 1,
        node: Some("n".into()),
        module: "m.wasm".into(),
        depends_on: vec!["a".into()],
        inputs: vec!["a".into()],
        stderr: Some("s".into()),
        queued_at_ms: Some(1),
        started_at_ms: Some(2),
        finished_at_ms: Some(3),
        attempt_log: vec![attempt],
    };
    DagView {
        id: "01a2322129edd02f44de".into(),
        name: "n".into(),
        state: DagState::Succeeded,
        tasks: BTreeMap::from([("t".to_string(), task)]),
        order: vec!["t".into()],
        counts: counts(),
        description: Some("d".into()),
        source: Some("s".into()),
        created_at_ms: 1,
        finished_at_ms: Some(2),
        version: 3,
        coordinator: Some("c".into()),
        // Only in answers to a page query (the API table shows those parameters).
        page: None,
    }
}

fn full_status() -> StatusView {
    StatusView {
        peer_id: "p".into(),
        leader: Some("p".into()),
        term: 1,
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
        executors: executors(),
        peers: vec![PeerView {
            peer_id: "q".into(),
            executors: executors(),
            addrs: vec!["/ip4/127.0.0.1/tcp/2".into()],
            replica_seq: 1,
            replica_behind: 0,
            alive: true,
            last_seen_ms: Some(1),
            version: "0.1.0".into(),
            connected: true,
        }],
        version: "0.1.0".into(),
        dags_active: 1,
        replica_seq: 1,
        role: NodeRole::Controller,
        private_mesh: false,
        controller_changes: vec![ControllerChange {
            at_ms: 1,
            term: 1,
            controller: Some("p".into()),
        }],
    }
}

#[test]
fn readme_json_examples_match_the_types() {
    let text = readme();
    let blocks = blocks(&text);
    let mut seen = BTreeSet::new();
    for (ty, json) in &blocks {
        match ty.as_str() {
            "DagView" => check(ty, json, &full_dag()),
            "DagSummary[]" => check(
                ty,
                json,
                &vec![DagSummary {
                    id: "i".into(),
                    name: "n".into(),
                    state: DagState::Running,
                    counts: counts(),
                    created_at_ms: 1,
                    finished_at_ms: Some(2),
                }],
            ),
            "StatusView" => check(ty, json, &full_status()),
            "SubmitRequest" => check(
                ty,
                json,
                &SubmitRequest {
                    yaml: "y".into(),
                    source: Some("s".into()),
                    modules: BTreeMap::from([("m.wasm".to_string(), "h".to_string())]),
                    id: Some("i".into()),
                },
            ),
            "SubmitResponse" => check(ty, json, &SubmitResponse { id: "i".into() }),
            "ModuleUploaded" => check(
                ty,
                json,
                &ModuleUploaded {
                    hash: "h".into(),
                    size: 1,
                },
            ),
            "ErrorBody" => check(
                ty,
                json,
                &ErrorBody {
                    error: "e".into(),
                    code: Some("c".into()),
                },
            ),
            // Not a protocol type: the CLI's error object, checked by node/tests/it/cli.rs.
            "CliError" => {}
            other => panic!("README tags a JSON block with unknown type {other:?}"),
        }
        seen.insert(ty.clone());
    }
    for ty in [
        "DagView",
        "DagSummary[]",
        "StatusView",
        "SubmitRequest",
        "SubmitResponse",
        "ModuleUploaded",
        "ErrorBody",
        "CliError",
    ] {
        assert!(seen.contains(ty), "README has no example of {ty}");
    }
}

#[test]
fn the_checker_notices_drift() {
    // A missing field and an unknown one are both caught.
    let mut v = serde_json::to_value(full_dag()).expect("serializes");
    v["tasks"]["t"]
        .as_object_mut()
        .expect("task")
        .remove("stderr");
    let missing = std::panic::catch_unwind(|| check("DagView", &v.to_string(), &full_dag()));
    assert!(missing.is_err(), "a missing field must fail");
    let mut v = serde_json::to_value(full_dag()).expect("serializes");
    v["colour"] = Value::from("blue");
    let unknown = std::panic::catch_unwind(|| check("DagView", &v.to_string(), &full_dag()));
    assert!(unknown.is_err(), "an unknown field must fail");
    assert!(std::panic::catch_unwind(|| check(
        "DagView",
        &serde_json::to_value(full_dag()).expect("ok").to_string(),
        &full_dag()
    ))
    .is_ok());
}
