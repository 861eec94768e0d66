//! The CLI's client side: finds the node, uploads modules, submits DAGs, waits with progress,
//! and prints results for people (tables) or scripts (`--json`).
//!
//! Exit codes (`ExitCode`): 0 success; 1 the DAG failed or was cancelled; 2 bad input, usage
//! errors, or a node that cannot be reached or refused the request.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bx3_protocol::api::{
    DagState, DagSummary, DagView, ErrorBody, ModuleUploaded, StatusView, SubmitRequest,
    SubmitResponse, TaskState,
};
use bx3_protocol::dag::parse_dag;
use serde::de::DeserializeOwned;

use crate::config::{default_data_dir, DEFAULT_API};
use crate::store::modules::sha256_hex;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad input: a DAG file, a module, an id.
    #[error("{0}")]
    Input(String),
    #[error("cannot reach the bx3 node at {url}: {reason}\n  (is `bx3-node` running? point at it with --api URL, BX3_API or --data-dir DIR)")]
    Unreachable { url: String, reason: String },
    /// The node answered with an error.
    #[error("{0}")]
    Api(String),
    /// Not an error of the tool: the DAG ended failed or cancelled.
    #[error("DAG {id} {state}")]
    DagDidNotSucceed { id: String, state: &'static str },
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::DagDidNotSucceed { .. } => 1,
            _ => 2,
        }
    }
}

/// Where the node's API is: `--api URL`, else `BX3_API` (clap fills `api` from both), else the
/// `api.addr` file in `--data-dir` (or the default data dir), else the default address.
pub fn resolve_api(api: Option<&str>, data_dir: Option<&Path>) -> Result<String, ClientError> {
    if let Some(api) = api {
        let api = api.trim().trim_end_matches('/');
        return Ok(
            if api.starts_with("http://") || api.starts_with("https://") {
                api.to_string()
            } else {
                format!("http://{api}")
            },
        );
    }
    let explicit = data_dir.is_some();
    if let Some(dir) = data_dir.map(Path::to_path_buf).or_else(default_data_dir) {
        let file = dir.join("api.addr");
        match std::fs::read_to_string(&file) {
            Ok(s) if !s.trim().is_empty() => return Ok(s.trim().trim_end_matches('/').to_string()),
            _ if explicit => {
                return Err(ClientError::Input(format!(
                    "no running node found in {}: {} is missing (is a node running with --data-dir {}?)",
                    dir.display(),
                    file.display(),
                    dir.display()
                )))
            }
            _ => {}
        }
    }
    Ok(format!("http://{DEFAULT_API}"))
}

/// Finds a module named in a DAG file: next to the DAG, then in `wasm_modules/` in the DAG's
/// folder or any folder above it, then in `--modules DIR`.
pub fn find_module(
    name: &str,
    dag_file: &Path,
    modules_dir: Option<&Path>,
) -> Result<PathBuf, ClientError> {
    let dag_dir = dag_file
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."));
    let dag_dir = dag_dir
        .canonicalize()
        .unwrap_or_else(|_| dag_dir.to_path_buf());
    let mut tried = vec![dag_dir.join(name)];
    for ancestor in dag_dir.ancestors().take(64) {
        tried.push(ancestor.join("wasm_modules").join(name));
    }
    if let Some(dir) = modules_dir {
        tried.push(dir.join(name));
    }
    if let Some(found) = tried.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let shown: Vec<String> = tried
        .iter()
        .take(4)
        .map(|p| p.display().to_string())
        .collect();
    Err(ClientError::Input(format!(
        "{}: module {name} not found (looked in {}{}; pass --modules DIR)",
        dag_file.display(),
        shown.join(", "),
        if tried.len() > 4 {
            ", and wasm_modules/ further up"
        } else {
            ""
        }
    )))
}

/// The API token the CLI sends: the file given with `--api-token-file`, else the
/// `BX3_API_TOKEN` variable, else none.
pub fn api_token(file: Option<&Path>) -> Result<Option<String>, ClientError> {
    let raw = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            ClientError::Input(format!(
                "cannot read the API token file {}: {e}",
                path.display()
            ))
        })?,
        None => match std::env::var("BX3_API_TOKEN") {
            Ok(v) if !v.trim().is_empty() => v,
            _ => return Ok(None),
        },
    };
    let token = raw.trim();
    if token.is_empty() {
        return Err(ClientError::Input("the API token is empty".into()));
    }
    Ok(Some(token.to_string()))
}

pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the node at `base`, sending `BX3_API_TOKEN` if it is set.
    pub fn new(base: String) -> Client {
        let token = api_token(None).ok().flatten();
        Client::with_token(base, token)
    }

    /// A client sending `Authorization: Bearer <token>` with every request when `token` is
    /// set (the node requires it when it was started with one).
    pub fn with_token(base: String, token: Option<String>) -> Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            if let Ok(mut value) =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            {
                value.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .default_headers(headers)
            .build()
            .unwrap_or_default();
        Client { base, http }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: error_chain(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| format!("HTTP {status}: {}", text.trim()));
        Err(ClientError::Api(message))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.send(req).await?;
        resp.json()
            .await
            .map_err(|e| ClientError::Api(format!("unexpected answer from {}: {e}", self.base)))
    }

    pub async fn has_module(&self, hash: &str) -> Result<bool, ClientError> {
        let resp = self
            .http
            .head(format!("{}/v1/modules/{hash}", self.base))
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                reason: error_chain(&e),
            })?;
        Ok(resp.status().is_success())
    }

    pub async fn upload_module(
        &self,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<ModuleUploaded, ClientError> {
        self.json(
            self.http
                .put(format!("{}/v1/modules", self.base))
                .query(&[("name", name)])
                .header(reqwest::header::CONTENT_TYPE, "application/wasm")
                .body(bytes),
        )
        .await
    }

    pub async fn submit(&self, req: &SubmitRequest) -> Result<SubmitResponse, ClientError> {
        self.json(self.http.post(format!("{}/v1/dags", self.base)).json(req))
            .await
    }

    /// A DAG; with `after`, waits (up to `wait`) until its version passes `after`.
    pub async fn dag(
        &self,
        id: &str,
        tasks: bool,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<DagView, ClientError> {
        let mut q = vec![("tasks", tasks.to_string())];
        if let Some(a) = after {
            q.push(("after", a.to_string()));
            q.push(("wait_ms", wait.as_millis().to_string()));
        }
        self.json(
            self.http
                .get(format!("{}/v1/dags/{id}", self.base))
                .query(&q),
        )
        .await
    }

    pub async fn dags(&self, limit: usize) -> Result<Vec<DagSummary>, ClientError> {
        self.json(
            self.http
                .get(format!("{}/v1/dags", self.base))
                .query(&[("limit", limit.to_string())]),
        )
        .await
    }

    pub async fn cancel(&self, id: &str) -> Result<DagView, ClientError> {
        // A JSON content type even without a body: the API refuses state changes that a web
        // page could send without a CORS preflight.
        self.json(
            self.http
                .post(format!("{}/v1/dags/{id}/cancel", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/json"),
        )
        .await
    }

    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.json(self.http.get(format!("{}/v1/status", self.base)))
            .await
    }

    /// Reads and checks a DAG file, uploads the modules the node lacks, submits it.
    pub async fn submit_file(
        &self,
        file: &Path,
        modules_dir: Option<&Path>,
    ) -> Result<String, ClientError> {
        let yaml = std::fs::read_to_string(file)
            .map_err(|e| ClientError::Input(format!("cannot read {}: {e}", file.display())))?;
        // Checked here first so a bad file fails before anything is uploaded.
        let dag =
            parse_dag(&yaml).map_err(|e| ClientError::Input(format!("{}: {e}", file.display())))?;
        let mut modules = BTreeMap::new();
        for name in dag.module_names() {
            let path = find_module(&name, file, modules_dir)?;
            let bytes = std::fs::read(&path).map_err(|e| {
                ClientError::Input(format!("cannot read module {}: {e}", path.display()))
            })?;
            let hash = sha256_hex(&bytes);
            if !self.has_module(&hash).await? {
                self.upload_module(&name, bytes)
                    .await
                    .map_err(|e| match e {
                        ClientError::Api(m) => {
                            ClientError::Input(format!("{}: {m}", path.display()))
                        }
                        other => other,
                    })?;
            }
            modules.insert(name, hash);
        }
        let req = SubmitRequest {
            yaml,
            source: Some(file.display().to_string()),
            modules,
        };
        let resp = self.submit(&req).await.map_err(|e| match e {
            ClientError::Api(m) => ClientError::Input(m),
            other => other,
        })?;
        Ok(resp.id)
    }

    /// Waits for a DAG to finish, showing progress on stderr: a bar on a terminal, a line per
    /// change (at most one a second) otherwise. Returns the final DAG with its tasks.
    pub async fn wait(&self, id: &str, quiet: bool) -> Result<DagView, ClientError> {
        let tty = std::io::stderr().is_terminal();
        let mut view = self.dag(id, false, None, Duration::ZERO).await?;
        let bar = (tty && !quiet).then(|| {
            let bar = indicatif::ProgressBar::new(view.counts.total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} tasks {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let mut last_line = Instant::now() - Duration::from_secs(10);
        let mut last_counts = None;
        while !view.state.is_terminal() {
            if let Some(bar) = &bar {
                bar.set_position(view.counts.done());
                bar.set_message(progress_text(&view));
            } else if !quiet
                && last_counts != Some(view.counts)
                && last_line.elapsed() >= Duration::from_secs(1)
            {
                eprintln!(
                    "{} [{}/{}] {}",
                    view.id,
                    view.counts.done(),
                    view.counts.total,
                    progress_text(&view)
                );
                last_line = Instant::now();
                last_counts = Some(view.counts);
            }
            view = self
                .dag(id, false, Some(view.version), Duration::from_secs(20))
                .await?;
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        self.dag(id, true, None, Duration::ZERO).await
    }
}

fn progress_text(v: &DagView) -> String {
    let c = &v.counts;
    let mut parts = vec![format!("{} running", c.running)];
    if c.failed > 0 {
        parts.push(format!("{} failed", c.failed));
    }
    if c.skipped > 0 {
        parts.push(format!("{} skipped", c.skipped));
    }
    format!("{} ({})", v.state.as_str(), parts.join(", "))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `Ok` if the DAG succeeded, the exit-1 error otherwise.
pub fn outcome(view: &DagView) -> Result<(), ClientError> {
    match view.state {
        DagState::Succeeded => Ok(()),
        s => Err(ClientError::DagDidNotSucceed {
            id: view.id.clone(),
            state: s.as_str(),
        }),
    }
}

fn short_peer(p: &str) -> String {
    let n = p.chars().count();
    if n <= 12 {
        p.to_string()
    } else {
        format!("…{}", p.chars().skip(n - 8).collect::<String>())
    }
}

/// A DAG as a table for people; long outputs are shown in full up to 20 lines each.
pub fn render_dag(v: &DagView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let took = match v.finished_at_ms {
        Some(f) => format!(
            ", {:.2} s",
            f.saturating_sub(v.created_at_ms) as f64 / 1000.0
        ),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "DAG {} {:?}: {} ({}/{} tasks done{took})",
        v.id,
        v.name,
        v.state.as_str(),
        v.counts.done(),
        v.counts.total
    );
    let width = v
        .order
        .iter()
        .map(|t| t.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 32);
    for id in &v.order {
        let Some(t) = v.tasks.get(id) else { continue };
        let node = t
            .node
            .as_deref()
            .map(short_peer)
            .unwrap_or_else(|| "-".into());
        let text = match (t.state, &t.output, &t.error) {
            (TaskState::Succeeded, Some(o), _) => o.clone(),
            (_, _, Some(e)) => format!("error: {e}"),
            _ => String::new(),
        };
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("");
        let _ = writeln!(
            out,
            "  {id:<width$}  {:<9}  {:>2}x  {node:<9}  {first}",
            t.state.as_str(),
            t.attempts
        );
        let rest: Vec<&str> = lines.collect();
        let pad = " ".repeat(width + 30);
        for l in rest.iter().take(19) {
            let _ = writeln!(out, "{pad}{l}");
        }
        if rest.len() > 19 {
            let _ = writeln!(
                out,
                "{pad}… {} more lines (`dag {} --json` shows all)",
                rest.len() - 19,
                v.id
            );
        }
    }
    out
}

pub fn render_dags(list: &[DagSummary]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if list.is_empty() {
        out.push_str("no DAGs yet (submit one with `bx3-node submit FILE`)\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<20}  {:<9}  {:>13}  NAME",
        "ID", "STATE", "DONE/TOTAL"
    );
    for d in list {
        let _ = writeln!(
            out,
            "{:<20}  {:<9}  {:>13}  {}",
            d.id,
            d.state.as_str(),
            format!("{}/{}", d.counts.done(), d.counts.total),
            d.name
        );
    }
    out
}

pub fn render_status(s: &StatusView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let e = &s.executors;
    let _ = writeln!(out, "node      {}", s.peer_id);
    let _ = writeln!(
        out,
        "leader    {} (term {})",
        s.leader.as_deref().unwrap_or("none yet"),
        s.term
    );
    let _ = writeln!(
        out,
        "executors {} busy / {} total, {} MB each (available RAM {} MB, keeping {} MB free{})",
        e.busy,
        e.total,
        e.ram_per_executor_mb,
        e.available_ram_mb,
        e.min_free_ram_mb,
        e.max_executors
            .map(|m| format!(", capped at {m}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "dags      {} active, replica at batch {}",
        s.dags_active, s.replica_seq
    );
    if !s.listen_addrs.is_empty() {
        let _ = writeln!(out, "listening {}", s.listen_addrs.join(", "));
    }
    let _ = writeln!(out, "peers     {}", s.peers.len());
    for p in &s.peers {
        let _ = writeln!(
            out,
            "  {}  {} busy / {} executors, replica at batch {} ({} behind)",
            p.peer_id, p.executors.busy, p.executors.total, p.replica_seq, p.replica_behind
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_resolution_order() {
        assert_eq!(
            resolve_api(Some("127.0.0.1:1"), None).expect("ok"),
            "http://127.0.0.1:1"
        );
        assert_eq!(
            resolve_api(Some("http://h:2/"), None).expect("ok"),
            "http://h:2"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            resolve_api(None, Some(dir.path())).is_err(),
            "explicit data dir without a node"
        );
        std::fs::write(dir.path().join("api.addr"), "http://127.0.0.1:41234\n").expect("write");
        assert_eq!(
            resolve_api(None, Some(dir.path())).expect("ok"),
            "http://127.0.0.1:41234"
        );
    }

    #[test]
    fn modules_found_next_to_dag_or_in_wasm_modules_above() {
        let root = tempfile::tempdir().expect("tempdir");
        let dags = root.path().join("dags");
        let mods = root.path().join("wasm_modules");
        std::fs::create_dir_all(&dags).expect("mkdir");
        std::fs::create_dir_all(&mods).expect("mkdir");
        std::fs::write(mods.join("a.wasm"), b"a").expect("write");
        std::fs::write(dags.join("b.wasm"), b"b").expect("write");
        let dag = dags.join("x.yaml");
        assert!(find_module("a.wasm", &dag, None)
            .expect("found")
            .ends_with("wasm_modules/a.wasm"));
        assert!(find_module("b.wasm", &dag, None)
            .expect("found")
            .ends_with("dags/b.wasm"));
        let err = find_module("c.wasm", &dag, None)
            .expect_err("missing")
            .to_string();
        assert!(err.contains("c.wasm") && err.contains("--modules"), "{err}");
        let extra = tempfile::tempdir().expect("tempdir");
        std::fs::write(extra.path().join("c.wasm"), b"c").expect("write");
        assert!(find_module("c.wasm", &dag, Some(extra.path())).is_ok());
    }
}
