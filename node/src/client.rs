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
    AttemptOutcome, DagState, DagSummary, DagView, ErrorBody, ModuleUploaded, NodeRole, StatusView,
    SubmitRequest, SubmitResponse, TaskState, TaskView,
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
    /// The node answered with an error; `code` says what kind (`ErrorBody::code`).
    #[error("{message}")]
    Api {
        code: Option<String>,
        message: String,
    },
    /// Not an error of the tool: the DAG ended failed or cancelled.
    #[error("DAG {id} {state}")]
    DagDidNotSucceed { id: String, state: &'static str },
    /// `cancel` of a DAG that had already finished (exit 1, like a DAG that did not succeed).
    #[error("{0}")]
    NotCancelled(String),
    /// Ctrl-C while waiting: the DAG itself is not affected.
    #[error(
        "interrupted; DAG {id} keeps running on the mesh.\n  watch it:  bx3-node dag {id} --wait\n  \
         cancel it: bx3-node cancel {id}"
    )]
    Interrupted { id: String },
}

/// How long `submit` keeps retrying a submission that failed for a transient reason.
const SUBMIT_RETRY: Duration = Duration::from_secs(60);

impl ClientError {
    /// Worth trying again with the same request: the node or the controller is busy,
    /// restarting or being elected.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api {
                code: Some(code), ..
            } => matches!(code.as_str(), "unavailable" | "no_controller" | "stopping"),
            _ => false,
        }
    }

    /// 1 the DAG failed or was cancelled; 2 bad input or an unreachable node; 130 interrupted
    /// by Ctrl-C (128 + SIGINT, as shells report it).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::DagDidNotSucceed { .. } | ClientError::NotCancelled(_) => 1,
            ClientError::Interrupted { .. } => 130,
            _ => 2,
        }
    }

    /// What kind of error, for `--json` output: `input`, `unreachable`, `api`, `dag`,
    /// `interrupted`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Input(_) => "input",
            ClientError::Unreachable { .. } => "unreachable",
            ClientError::Api { .. } => "api",
            ClientError::DagDidNotSucceed { .. } | ClientError::NotCancelled(_) => "dag",
            ClientError::Interrupted { .. } => "interrupted",
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

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            reason: unreachable_reason(e),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => (b.code, b.error),
            Err(_) => (None, format!("HTTP {status}: {}", text.trim())),
        };
        Err(ClientError::Api { code, message })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = self.send(req).await?;
        resp.json().await.map_err(|e| ClientError::Api {
            code: None,
            message: format!("unexpected answer from {}: {e}", self.base),
        })
    }

    pub async fn has_module(&self, hash: &str) -> Result<bool, ClientError> {
        let resp = self
            .http
            .head(format!("{}/v1/modules/{hash}", self.base))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
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

    /// One task of a DAG, with its full texts (`logs`). Asks the node for that task only.
    pub async fn task(&self, id: &str, task: &str) -> Result<TaskView, ClientError> {
        let mut view: DagView = self
            .json(
                self.http
                    .get(format!("{}/v1/dags/{id}", self.base))
                    .query(&[("tasks", "false"), ("task", task), ("task_limit", "1")]),
            )
            .await?;
        view.tasks.remove(task).ok_or_else(|| {
            let known = if view.counts.total > 0 {
                format!(
                    " (it has {} tasks; `bx3-node dag {id}` lists them)",
                    view.counts.total
                )
            } else {
                String::new()
            };
            ClientError::Input(format!("DAG {id} has no task {task:?}{known}"))
        })
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

    /// Testing only (a node with `--debug-api`): cut it off from `peer`, or connect them again.
    pub async fn block(&self, peer: &str, blocked: bool) -> Result<(), ClientError> {
        let req = bx3_protocol::api::BlockRequest {
            peer: peer.to_string(),
            blocked,
        };
        self.send(
            self.http
                .post(format!("{}/v1/debug/block", self.base))
                .json(&req),
        )
        .await
        .map(drop)
    }

    pub async fn status(&self) -> Result<StatusView, ClientError> {
        self.json(self.http.get(format!("{}/v1/status", self.base)))
            .await
    }

    /// Reads and checks a DAG file (`-`: standard input, with modules looked up from the
    /// current directory), uploads the modules the node lacks, submits it.
    pub async fn submit_file(
        &self,
        file: &Path,
        modules_dir: Option<&Path>,
    ) -> Result<String, ClientError> {
        let stdin = file.as_os_str() == "-";
        let (yaml, shown, file) = if stdin {
            (read_stdin_dag()?, "<stdin>".to_string(), Path::new("./-"))
        } else {
            let yaml = read_dag_file(file)?;
            (yaml, file.display().to_string(), file)
        };
        // Checked here first so a bad file fails before anything is uploaded.
        let dag = parse_dag(&yaml).map_err(|e| ClientError::Input(format!("{shown}: {e}")))?;
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
                        ClientError::Api { message, .. } => {
                            ClientError::Input(format!("{}: {message}", path.display()))
                        }
                        other => other,
                    })?;
            }
            modules.insert(name, hash);
        }
        // The id is chosen here, so a submission retried after a lost answer (the node
        // restarting, a connection closing) is recognised and the DAG runs once.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let req = SubmitRequest {
            yaml,
            source: Some(shown),
            modules,
            id: Some(bx3_protocol::ids::DagId::new(now, rand::random()).to_string()),
        };
        let deadline = Instant::now() + SUBMIT_RETRY;
        let mut pause = Duration::from_millis(200);
        loop {
            match self.submit(&req).await {
                Ok(resp) => return Ok(resp.id),
                Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                    tracing::debug!(error = ?e.to_string(), "submit will be retried");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(ClientError::Api {
                    code: Some(code),
                    message,
                }) if code == "invalid" => return Err(ClientError::Input(message)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits for a DAG to finish, showing progress on stderr: a bar on a terminal, a line per
    /// change (at most one a second) otherwise. Returns the final DAG with its tasks.
    ///
    /// `id` may be a prefix; it is resolved once, then the full id is followed. Ctrl-C stops
    /// the waiting (not the DAG): [`ClientError::Interrupted`] says how to go on.
    pub async fn wait(
        &self,
        id: &str,
        quiet: bool,
        interrupt: &mut Interrupt,
    ) -> Result<DagView, ClientError> {
        let first = tokio::select! {
            r = self.dag(id, false, None, Duration::ZERO) => r?,
            _ = interrupt.recv() => return Err(ClientError::Interrupted { id: id.to_string() }),
        };
        let id = first.id.clone();
        let interrupted = || ClientError::Interrupted { id: id.clone() };
        let mut bar = None;
        let waited = tokio::select! {
            r = self.wait_from(first, quiet, &mut bar) => r,
            _ = interrupt.recv() => Err(interrupted()),
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let view = waited?;
        tokio::select! {
            r = self.dag(&view.id, true, None, Duration::ZERO) => r,
            _ = interrupt.recv() => Err(interrupted()),
        }
    }

    async fn wait_from(
        &self,
        mut view: DagView,
        quiet: bool,
        bar_slot: &mut Option<indicatif::ProgressBar>,
    ) -> Result<DagView, ClientError> {
        let tty = std::io::stderr().is_terminal();
        let id = view.id.clone();
        if tty && !quiet {
            let bar = indicatif::ProgressBar::new(view.counts.total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} tasks {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            *bar_slot = Some(bar);
        }
        let mut last_line = Instant::now() - Duration::from_secs(10);
        let mut last_counts = None;
        while !view.state.is_terminal() {
            if let Some(bar) = bar_slot.as_ref() {
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
                .dag(&id, false, Some(view.version), Duration::from_secs(20))
                .await?;
        }
        Ok(view)
    }
}

/// Ctrl-C (SIGINT), listened for from the moment this is made: make it before telling the user
/// anything they might answer with Ctrl-C, so no signal falls between the two.
pub struct Interrupt {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Interrupt {
    /// Must be called inside a tokio runtime.
    pub fn new() -> Interrupt {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Interrupt {
                signal: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            Interrupt {}
        }
    }

    /// Resolves on the next Ctrl-C (never, if signals are unavailable).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        match &mut self.signal {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Default for Interrupt {
    fn default() -> Interrupt {
        Interrupt::new()
    }
}

/// Longest DAG file read (the API's own limit on a submission).
const MAX_DAG_BYTES: u64 = 32 * 1024 * 1024;

fn read_dag_file(file: &Path) -> Result<String, ClientError> {
    let f = std::fs::File::open(file)
        .map_err(|e| ClientError::Input(format!("cannot read {}: {e}", file.display())))?;
    read_dag_text(f, &file.display().to_string())
}

fn read_stdin_dag() -> Result<String, ClientError> {
    if std::io::stdin().is_terminal() {
        eprintln!("reading the DAG from standard input (end with Ctrl-D)");
    }
    read_dag_text(std::io::stdin().lock(), "<stdin>")
}

fn read_dag_text(r: impl std::io::Read, shown: &str) -> Result<String, ClientError> {
    use std::io::Read;
    let mut bytes = Vec::new();
    r.take(MAX_DAG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ClientError::Input(format!("cannot read {shown}: {e}")))?;
    if bytes.len() as u64 > MAX_DAG_BYTES {
        return Err(ClientError::Input(format!(
            "{shown} is larger than the {} MiB a node accepts for a DAG",
            MAX_DAG_BYTES >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        ClientError::Input(format!(
            "{shown} is not a DAG file: it is not text (UTF-8); a DAG file is YAML"
        ))
    })
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

/// Why a request got no answer, in a few words: reqwest's chain repeats the URL and wraps
/// the cause three times (`error sending request for url (...): client error (Connect): tcp
/// connect error: Connection refused (os error 111)`); the innermost cause is the news.
fn unreachable_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time".into();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
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

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A duration for people: `850 ms`, `2.40 s`, `12.3 s`, `3 min 05 s`, `2 h 04 min`.
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let s = ms as f64 / 1000.0;
    if s < 10.0 {
        return format!("{s:.2} s");
    }
    if s < 60.0 {
        return format!("{s:.1} s");
    }
    let m = ms / 60_000;
    if m < 60 {
        return format!("{m} min {:02} s", (ms / 1000) % 60);
    }
    if m < 48 * 60 {
        return format!("{} h {:02} min", m / 60, m % 60);
    }
    format!("{} d {} h", m / (24 * 60), (m / 60) % 24)
}

/// How long a task took, or (running) has been running so far (`…` marks a running one).
pub fn task_time(t: &TaskView, now: u64) -> String {
    match (t.started_at_ms, t.finished_at_ms) {
        (Some(s), Some(f)) => human_ms(f.saturating_sub(s)),
        (Some(s), None) if t.state == TaskState::Running => {
            format!("{}…", human_ms(now.saturating_sub(s)))
        }
        _ => "-".into(),
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

/// Lines of one task's output or error shown in the table.
const SHOWN_LINES: usize = 20;
/// Characters of one such line shown (a 5,000-character line would fill the screen).
const SHOWN_CHARS: usize = 160;

/// A DAG as a table for people. Outputs and errors are cut to [`SHOWN_LINES`] lines of
/// [`SHOWN_CHARS`] characters, with a hint naming the command that shows all of them.
pub fn render_dag(v: &DagView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let now = now_ms();
    let took = match v.finished_at_ms {
        Some(f) => format!(
            ", {:.2} s",
            f.saturating_sub(v.created_at_ms) as f64 / 1000.0
        ),
        None => format!(
            ", running for {}",
            human_ms(now.saturating_sub(v.created_at_ms))
        ),
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
        let (lines, cut) = cut_text(&text, SHOWN_LINES, SHOWN_CHARS);
        let first = lines.first().map(String::as_str).unwrap_or("");
        let _ = writeln!(
            out,
            "  {id:<width$}  {:<9}  {:>2}x  {node:<9}  {:>9}  {first}",
            t.state.as_str(),
            t.attempts,
            task_time(t, now)
        );
        let pad = " ".repeat(width + 41);
        for l in lines.iter().skip(1) {
            let _ = writeln!(out, "{pad}{l}");
        }
        if cut {
            let _ = writeln!(
                out,
                "{pad}… cut: {} lines, {} characters in all (`bx3-node dag {} --json` shows all)",
                text.lines().count(),
                text.chars().count(),
                v.id
            );
        }
    }
    out
}

/// At most `max_lines` lines of at most `max_chars` characters each (a cut line ends in `…`);
/// `true` if anything was left out.
fn cut_text(text: &str, max_lines: usize, max_chars: usize) -> (Vec<String>, bool) {
    let mut cut = text.lines().count() > max_lines;
    let lines = text
        .lines()
        .take(max_lines)
        .map(|l| {
            if l.chars().count() > max_chars {
                cut = true;
                let mut s: String = l.chars().take(max_chars).collect();
                s.push('…');
                s
            } else {
                l.to_string()
            }
        })
        .collect();
    (lines, cut)
}

pub fn render_dags(list: &[DagSummary]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if list.is_empty() {
        out.push_str("no DAGs yet (submit one with `bx3-node submit FILE`)\n");
        return out;
    }
    let now = now_ms();
    let _ = writeln!(
        out,
        "{:<20}  {:<9}  {:>13}  {:>12}  {:>12}  NAME",
        "ID", "STATE", "DONE/TOTAL", "AGE", "DURATION"
    );
    for d in list {
        let duration = match d.finished_at_ms {
            Some(f) => human_ms(f.saturating_sub(d.created_at_ms)),
            None => format!("{}…", human_ms(now.saturating_sub(d.created_at_ms))),
        };
        let _ = writeln!(
            out,
            "{:<20}  {:<9}  {:>13}  {:>12}  {:>12}  {}",
            d.id,
            d.state.as_str(),
            format!("{}/{}", d.counts.done(), d.counts.total),
            human_ms(now.saturating_sub(d.created_at_ms)),
            duration,
            d.name
        );
    }
    out
}

/// `logs DAG TASK`: the task's stderr, attempt by attempt, each under a header.
pub fn render_logs(dag: &str, task: &str, t: &TaskView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let now = now_ms();
    let body = |out: &mut String, stderr: Option<&str>, error: Option<&str>| {
        match stderr.filter(|s| !s.trim().is_empty()) {
            Some(s) => {
                out.push_str(s);
                if !s.ends_with('\n') {
                    out.push('\n');
                }
            }
            None => out.push_str("(no stderr)\n"),
        }
        if let Some(e) = error {
            let _ = writeln!(out, "error: {e}");
        }
    };
    if t.attempt_log.is_empty() {
        // No per-attempt record: the latest attempt's tail is all there is.
        let _ = writeln!(
            out,
            "== {dag} {task}: {} after {} attempt(s){} ==",
            t.state.as_str(),
            t.attempts,
            t.node
                .as_deref()
                .map(|n| format!(", last on {n}"))
                .unwrap_or_default()
        );
        let error = (t.state != TaskState::Succeeded)
            .then_some(t.error.as_deref())
            .flatten();
        body(&mut out, t.stderr.as_deref(), error);
        return out;
    }
    for a in &t.attempt_log {
        let outcome = match a.outcome {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Interrupted => "interrupted",
            AttemptOutcome::Cancelled => "cancelled",
        };
        let took = match (a.started_at_ms, a.finished_at_ms) {
            (Some(s), Some(f)) => format!(", took {}", human_ms(f.saturating_sub(s))),
            (Some(s), None) => format!(", running for {}", human_ms(now.saturating_sub(s))),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "== attempt {} on {}: {outcome}{took} ==",
            a.attempt,
            a.node.as_deref().unwrap_or("(no node)")
        );
        body(&mut out, a.stderr.as_deref(), a.error.as_deref());
    }
    out
}

pub fn render_status(s: &StatusView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let e = &s.executors;
    let role = match s.role {
        NodeRole::Controller => "controller",
        NodeRole::Follower => "follower",
        NodeRole::Candidate => "candidate (an election is under way)",
    };
    let _ = writeln!(out, "node      {}", s.peer_id);
    let _ = writeln!(out, "role      {role} (term {})", s.term);
    let leader = match s.leader.as_deref() {
        None => "none yet".to_string(),
        Some(l) if l == s.peer_id => "this node".to_string(),
        Some(l) => l.to_string(),
    };
    let _ = writeln!(out, "leader    {leader}");
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
    if e.cpu_cores > 0 {
        let _ = writeln!(out, "          {}", executor_limits(e));
    }
    let _ = writeln!(
        out,
        "mesh      {}",
        if s.private_mesh {
            "private (--mesh-key: only nodes holding the key can connect)"
        } else {
            "open (no --mesh-key: any node that reaches this one can join)"
        }
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
        let leader = if s.leader.as_deref() == Some(p.peer_id.as_str()) {
            " (leader)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "  {}{leader}{}  {} busy / {} executors{}, replica at batch {} ({} behind), {}",
            p.peer_id,
            if p.alive { "" } else { " DOWN" },
            p.executors.busy,
            p.executors.total,
            p.executors
                .limited_by
                .map(|l| format!(" ({}-bound)", l.as_str()))
                .unwrap_or_default(),
            p.replica_seq,
            p.replica_behind,
            if p.connected {
                "connected"
            } else {
                "not connected (heard through other nodes)"
            }
        );
        if !p.addrs.is_empty() {
            let _ = writeln!(out, "    at {}", p.addrs.join(", "));
        }
    }
    out
}

/// "limited by cpu: 2 cores; RAM allows 180": both limits and which one decided.
fn executor_limits(e: &bx3_protocol::api::ExecutorsView) -> String {
    use bx3_protocol::api::ExecutorLimit;
    let which = match e.limited_by {
        Some(ExecutorLimit::Ram) => "RAM",
        Some(ExecutorLimit::Cpu) => "CPU cores",
        Some(ExecutorLimit::MaxExecutors) => "--max-executors",
        None => "unknown",
    };
    format!(
        "limited by {which}: RAM allows {}, {} CPU cores{}",
        e.ram_slots,
        e.cpu_cores,
        e.max_executors
            .map(|m| format!(", --max-executors {m}"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_for_people() {
        assert_eq!(human_ms(850), "850 ms");
        assert_eq!(human_ms(2_400), "2.40 s");
        assert_eq!(human_ms(12_340), "12.3 s");
        assert_eq!(human_ms(185_000), "3 min 05 s");
        assert_eq!(human_ms(7_440_000), "2 h 04 min");
        let mut t = TaskView {
            state: TaskState::Running,
            started_at_ms: Some(1_000),
            ..TaskView::default()
        };
        assert_eq!(task_time(&t, 3_500), "2.50 s…", "elapsed of a running task");
        t.state = TaskState::Succeeded;
        t.finished_at_ms = Some(1_250);
        assert_eq!(task_time(&t, 9_999), "250 ms");
        assert_eq!(
            task_time(&TaskView::default(), 5),
            "-",
            "no times recorded yet"
        );
    }

    #[test]
    fn logs_show_every_attempt_under_a_header() {
        use bx3_protocol::api::AttemptView;
        let t = TaskView {
            state: TaskState::Succeeded,
            attempts: 2,
            attempt_log: vec![
                AttemptView {
                    attempt: 1,
                    node: Some("n1".into()),
                    outcome: AttemptOutcome::Failed,
                    started_at_ms: Some(10),
                    finished_at_ms: Some(30),
                    error: Some("exited with status 1".into()),
                    stderr: Some("boom".into()),
                    ..AttemptView::default()
                },
                AttemptView {
                    attempt: 2,
                    node: Some("n2".into()),
                    outcome: AttemptOutcome::Succeeded,
                    stderr: Some("warning: something odd\n".into()),
                    ..AttemptView::default()
                },
            ],
            ..TaskView::default()
        };
        let text = render_logs("D", "t", &t);
        assert_eq!(
            text,
            "== attempt 1 on n1: failed, took 20 ms ==\nboom\nerror: exited with status 1\n\
             == attempt 2 on n2: succeeded ==\nwarning: something odd\n"
        );
        let bare = TaskView {
            state: TaskState::Succeeded,
            attempts: 1,
            node: Some("n3".into()),
            ..TaskView::default()
        };
        assert_eq!(
            render_logs("D", "t", &bare),
            "== D t: succeeded after 1 attempt(s), last on n3 ==\n(no stderr)\n"
        );
    }

    #[test]
    fn long_outputs_are_cut_with_a_hint() {
        let mut v: DagView = serde_json::from_value(serde_json::json!({
            "id": "01a231d7ac28aabbccdd", "name": "n", "state": "succeeded",
            "tasks": {}, "order": ["a", "b"]
        }))
        .expect("view");
        let long_line = "x".repeat(5000);
        let many_lines: String = (0..100).map(|i| format!("line {i}\n")).collect();
        for (id, output) in [("a", long_line), ("b", many_lines)] {
            v.tasks.insert(
                id.into(),
                bx3_protocol::api::TaskView {
                    state: TaskState::Succeeded,
                    output: Some(output),
                    attempts: 1,
                    ..Default::default()
                },
            );
        }
        let shown = render_dag(&v);
        assert!(shown.len() < 2000, "{} characters shown", shown.len());
        assert!(shown.contains("5000 characters in all"), "{shown}");
        assert!(shown.contains("100 lines"), "{shown}");
        assert!(
            shown.contains("line 19") && !shown.contains("line 20"),
            "{shown}"
        );
        assert!(
            shown.contains("bx3-node dag 01a231d7ac28aabbccdd --json"),
            "{shown}"
        );
        let (lines, cut) = cut_text("short\ntext", 20, 160);
        assert_eq!((lines.len(), cut), (2, false));
    }

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
