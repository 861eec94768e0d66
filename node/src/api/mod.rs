//! The HTTP API (axum): what the CLI, scripts and tests use. JSON everywhere; every error is
//! `{"error": "..."}` with a status that fits. Request bodies are bounded.
//!
//! ```text
//! PUT  /v1/modules?name=NAME   raw wasm bytes       -> {"hash","size"}      (validated + compiled)
//! GET  /v1/modules/{hash}      -> raw bytes (HEAD: does the node have it?)
//! POST /v1/dags                SubmitRequest        -> 201 {"id"}            (after it is durable)
//! GET  /v1/dags?limit=N        -> [DagSummary]
//! GET  /v1/dags/{id}?tasks=BOOL&after=VERSION&wait_ms=MS -> DagView   (long poll when `after`)
//!      &task_offset=N&task_limit=N&state=S,S&q=TEXT&task=ID&preview=CHARS -> a page of tasks
//! POST /v1/dags/{id}/cancel    -> DagView
//!      ({id}: the full id or a unique prefix of at least 4 hex digits)
//! GET  /v1/status              -> StatusView
//! GET  /metrics                -> OpenMetrics text (Prometheus)
//! GET  /  and  /ui/{file}      -> the dashboard (static files built into the binary)
//! ```
//!
//! Every route sits behind [`security::check`]: `Host` must name this API, no foreign
//! `Origin`, a JSON (or wasm) content type for anything that changes state, and the bearer
//! token when one is configured. See that module for why.

pub mod security;

mod ui;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bx3_protocol::api::{
    ErrorBody, ModuleUploaded, StatusView, SubmitRequest, SubmitResponse, TaskQuery, TaskState,
};
use bx3_protocol::dag::parse_dag;
use bx3_protocol::ids::{DagId, DagIdPrefix, ModuleHash};
use serde::Deserialize;

use crate::executor::compile::{CompileError, Compiler};
use crate::metrics::Metrics;
use crate::runtime::{CallError, Handle};
use crate::store::modules::{is_hash, sha256_hex};
use crate::store::{ModuleStore, SpecRecord, Store};
use bx3_protocol::mesh::Refusal;

/// Largest module accepted.
pub const MAX_MODULE_BYTES: usize = 64 * 1024 * 1024;
/// Largest DAG submission (the YAML plus the module table).
pub const MAX_SUBMIT_BYTES: usize = 32 * 1024 * 1024;
/// Longest accepted `source` of a submission (a file path), bytes.
pub const MAX_SOURCE_BYTES: usize = 4096;
/// Longest a long poll waits before answering with the unchanged DAG.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct ApiState {
    pub controller: Handle,
    pub modules: ModuleStore,
    /// The node's compile service: uploads are checked and compiled there (bounded, in a
    /// limited child process) before they are stored.
    pub compiler: Compiler,
    /// Host, Origin, content-type and token checks, applied to every route.
    pub security: security::Policy,
    /// The node's metrics, served at `/metrics` (module compile times are recorded here).
    pub metrics: Metrics,
    /// This node's replica, read-only: resolves DAG id prefixes (`dag 01a231d7`) on any node.
    pub store: Store,
    /// The testing endpoints under `/v1/debug/`, only with `--debug-api`.
    pub debug: Option<Debug>,
}

/// What the debug endpoints act on.
#[derive(Clone)]
pub struct Debug {
    /// To cut this node off from a peer and back (`net::Client::block`).
    pub net: crate::net::Client,
}

pub fn router(state: ApiState) -> Router {
    let security = state.security.clone();
    let debug = state.debug.is_some();
    let router = Router::new();
    // Testing only, and absent (404) unless the node runs with --debug-api.
    let router = if debug {
        router.route("/v1/debug/block", post(debug_block))
    } else {
        router
    };
    router
        .route(
            "/v1/modules",
            put(put_module).layer(DefaultBodyLimit::max(MAX_MODULE_BYTES)),
        )
        .route("/v1/modules/{hash}", get(get_module))
        .route(
            "/v1/dags",
            post(submit)
                .get(list)
                .layer(DefaultBodyLimit::max(MAX_SUBMIT_BYTES)),
        )
        .route("/v1/dags/{id}", get(get_dag))
        .route("/v1/dags/{id}/cancel", post(cancel))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; see README for the API",
            )
        })
        .with_state(state)
        // Outermost, so it wraps every route above (and any added later) and the fallback.
        .layer(middleware::from_fn_with_state(security, security::check))
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let code = match status {
            StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY => "invalid",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::CONFLICT => "already_finished",
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "unauthorized",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            StatusCode::GATEWAY_TIMEOUT => "not_replicated",
            _ => "internal",
        };
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
                code: Some(self.code.to_string()),
            }),
        )
            .into_response()
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> ApiError {
        let (status, code) = match &e {
            CallError::Stopped => (StatusCode::SERVICE_UNAVAILABLE, "stopping"),
            CallError::Refused(r) => match r {
                Refusal::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                Refusal::AlreadyFinished { .. } => (StatusCode::CONFLICT, "already_finished"),
                Refusal::NotReplicated(_) => (StatusCode::GATEWAY_TIMEOUT, "not_replicated"),
                Refusal::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
                Refusal::NoLeader | Refusal::NotLeader { .. } | Refusal::WrongTerm { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "no_controller")
                }
                Refusal::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                Refusal::NotEntitled(_) | Refusal::Internal(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            },
        };
        let message = match &e {
            CallError::Refused(Refusal::NotReplicated(id)) => format!(
                "DAG {id} is stored on the controller and will run, but no other node confirmed a copy within 30 s, so it would not survive the loss of that node; follow it with `bx3-node dag {id}` (do not resubmit)"
            ),
            CallError::Refused(Refusal::NotLeader { .. } | Refusal::WrongTerm { .. }) => {
                "no controller could be reached; try again in a moment".to_string()
            }
            _ => e.to_string(),
        };
        ApiError {
            status,
            code,
            message,
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> ApiError {
        ApiError::new(e.status(), e.body_text())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How many candidates an ambiguous prefix lists.
const MAX_CANDIDATES: usize = 10;

/// A DAG id as a user typed it: the full id, or (like a short git hash) a prefix of at least
/// four hex digits that only one DAG in this node's replica starts with. Every node holds a
/// replica of every DAG, so any node resolves prefixes; a DAG too new to have reached this
/// node's replica is found by its full id.
async fn resolve_id(st: &ApiState, text: &str) -> Result<DagId, ApiError> {
    let prefix: DagIdPrefix = text
        .parse()
        .map_err(|e: bx3_protocol::ids::BadDagIdPrefix| {
            ApiError::new(StatusCode::NOT_FOUND, e.to_string())
        })?;
    if let Some(id) = prefix.as_id() {
        return Ok(id);
    }
    let store = st.store.clone();
    let shown = text.to_string();
    let found = tokio::task::spawn_blocking(move || {
        let ids = store.ids_with_prefix(&prefix, MAX_CANDIDATES + 1)?;
        ids.into_iter()
            .map(|id| Ok((id, store.meta(&id)?)))
            .collect::<Result<Vec<_>, crate::store::StoreError>>()
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match found.as_slice() {
        [] => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no DAG id starts with {shown:?} (`bx3-node dags` lists them)"),
        )),
        [(id, _)] => Ok(*id),
        many => {
            let listed: Vec<String> = many
                .iter()
                .take(MAX_CANDIDATES)
                .map(|(id, meta)| match meta {
                    Some(m) => format!("{id} {:?} ({})", m.name, m.state.as_str()),
                    None => id.to_string(),
                })
                .collect();
            let more = if many.len() > MAX_CANDIDATES {
                ", and more"
            } else {
                ""
            };
            Err(ApiError::bad_request(format!(
                "DAG id prefix {shown:?} is ambiguous: {}{more}; give more digits",
                listed.join(", ")
            )))
        }
    }
}

#[derive(Deserialize)]
struct ModuleQuery {
    name: Option<String>,
}

async fn put_module(
    State(st): State<ApiState>,
    Query(q): Query<ModuleQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ModuleUploaded>, ApiError> {
    let bytes = Arc::new(body?.to_vec());
    let name = q.name.unwrap_or_else(|| "module".into());
    let size = bytes.len() as u64;
    let b = Arc::clone(&bytes);
    let hash = tokio::task::spawn_blocking(move || sha256_hex(&b))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if !st.modules.contains(&hash) {
        // Checked and compiled first, by the compile service (a limited child process),
        // which proves the module is one we can run: a bad module is refused now, naming
        // the file, not at its first task, and is never stored.
        let began = Instant::now();
        let compiled = st.compiler.compile(&hash, Arc::clone(&bytes)).await;
        st.metrics.module_compiled(began.elapsed());
        compiled.map_err(|e| {
            let status = match e {
                CompileError::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            ApiError::new(
                status,
                format!(
                    "{name:?} is not a usable WASI module: {}",
                    crate::executor::local::one_line(&e)
                ),
            )
        })?;
        st.modules.put_async(bytes).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("could not store {name:?}: {e}"),
            )
        })?;
        tracing::info!(name = ?name, %hash, size, "module stored");
    }
    Ok(Json(ModuleUploaded { hash, size }))
}

async fn get_module(
    State(st): State<ApiState>,
    Path(hash): Path<String>,
) -> Result<Response, ApiError> {
    if !is_hash(&hash) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{hash:?} is not a module hash (64 hex digits)"),
        ));
    }
    match st.modules.get_async(&hash).await {
        Ok(Some(bytes)) => {
            Ok(([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
        }
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("module {hash} is not on this node"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not read module {hash}: {e}"),
        )),
    }
}

async fn submit(
    State(st): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let body = body?;
    // Parsing a large DAG takes a while (~0.5 s for 100,000 tasks): off the async workers.
    let (req, origin, dag) = tokio::task::spawn_blocking(move || {
        let req: SubmitRequest = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("bad submit request: {e}")))?;
        // `source` is kept with the DAG's state, rewritten and replicated on every change.
        if let Some(source) = &req.source {
            if source.len() > MAX_SOURCE_BYTES || source.chars().any(char::is_control) {
                return Err(ApiError::bad_request(format!(
                    "bad submit request: `source` must be one line of at most {MAX_SOURCE_BYTES} bytes"
                )));
            }
        }
        let origin = req.source.clone().unwrap_or_else(|| "DAG".into());
        let dag =
            parse_dag(&req.yaml).map_err(|e| ApiError::bad_request(format!("{origin}: {e}")))?;
        Ok::<_, ApiError>((req, origin, dag))
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("DAG parser stopped: {e}"),
        )
    })??;
    check_memory_asks(&st, &origin, &dag).await?;
    let mut modules = std::collections::BTreeMap::new();
    for name in dag.module_names() {
        let Some(hash) = req.modules.get(&name) else {
            return Err(ApiError::bad_request(format!(
                "{origin}: module {name:?} is used by the DAG but was not uploaded with it"
            )));
        };
        let hash: ModuleHash = hash
            .parse()
            .map_err(|e| ApiError::bad_request(format!("{origin}: module {name:?}: {e}")))?;
        if !st.modules.contains(hash.as_str()) {
            return Err(ApiError::bad_request(format!(
                "{origin}: module {name:?} ({hash}) is not on this node; upload it first (PUT /v1/modules)"
            )));
        }
        modules.insert(name, hash);
    }
    // The id is fixed here (or by the client), before the DAG travels: a retry anywhere on
    // the way is then the same submission.
    let id = match &req.id {
        Some(id) => id
            .parse::<DagId>()
            .map_err(|e| ApiError::bad_request(format!("{origin}: {e}")))?,
        None => DagId::new(now_ms(), rand::random()),
    };
    let id = st
        .controller
        .submit(id, SpecRecord { dag, modules }, req.source)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(SubmitResponse { id: id.to_string() }),
    ))
}

/// Refuses a DAG with a task that asks more `memory` than any node's executors have: it
/// could never run anywhere. "Any node" is this node and the peers in its status (each
/// announces its `--ram-per-executor`).
async fn check_memory_asks(
    st: &ApiState,
    origin: &str,
    dag: &bx3_protocol::dag::ValidDag,
) -> Result<(), ApiError> {
    let Some(task) = dag
        .tasks
        .iter()
        .filter(|t| t.memory_mb.is_some())
        .max_by_key(|t| t.memory_mb)
    else {
        return Ok(());
    };
    let asked = task.memory_mb.unwrap_or(0);
    let status = st.controller.status().await?;
    let here = status.executors.ram_per_executor_mb;
    let peer_max = status
        .peers
        .iter()
        .map(|p| p.executors.ram_per_executor_mb)
        .max();
    let largest = peer_max.map_or(here, |p| p.max(here));
    if asked > largest {
        let peers = match peer_max {
            None => String::from("no peers"),
            Some(p) => format!("{} peers, the largest {p} MB", status.peers.len()),
        };
        return Err(ApiError::bad_request(format!(
            "{origin}: task {:?} asks for memory: {asked} MB, but the largest executor in the \
             mesh has {largest} MB (this node: {here} MB; {peers}); lower `memory` or start \
             nodes with a larger --ram-per-executor",
            task.id
        )));
    }
    Ok(())
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list(
    State(st): State<ApiState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let list = st
        .controller
        .list(q.limit.unwrap_or(100).min(10_000))
        .await?;
    Ok(Json(list).into_response())
}

#[derive(Deserialize)]
struct DagQuery {
    tasks: Option<bool>,
    /// Answer once the DAG's version is above this (or it finished, or `wait_ms` passed).
    after: Option<u64>,
    wait_ms: Option<u64>,
    /// A page of tasks (any of these set): see [`TaskQuery`].
    task_offset: Option<u64>,
    task_limit: Option<u64>,
    /// Comma-separated task states.
    state: Option<String>,
    q: Option<String>,
    task: Option<String>,
    preview: Option<u32>,
}

impl DagQuery {
    /// The page of tasks asked for, if any, checked.
    fn page(&self) -> Result<Option<TaskQuery>, ApiError> {
        if self.task_offset.is_none()
            && self.task_limit.is_none()
            && self.state.is_none()
            && self.q.is_none()
            && self.task.is_none()
        {
            return Ok(None);
        }
        let mut states = Vec::new();
        for s in self.state.iter().flat_map(|s| s.split(',')) {
            let s = s.trim();
            if s.is_empty() {
                continue;
            }
            let state: TaskState =
                serde_json::from_value(serde_json::Value::String(s.to_string())).map_err(|_| {
                    ApiError::bad_request(format!(
                        "state={s:?} is not a task state (pending, running, succeeded, failed, skipped, cancelled)"
                    ))
                })?;
            if !states.contains(&state) {
                states.push(state);
            }
        }
        TaskQuery {
            offset: self.task_offset.unwrap_or(0),
            limit: self.task_limit.unwrap_or(0),
            states,
            q: self.q.clone().filter(|q| !q.is_empty()),
            task: self.task.clone(),
            preview: self.preview,
        }
        .checked()
        .map(Some)
        .map_err(ApiError::bad_request)
    }
}

async fn get_dag(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<DagQuery>,
) -> Result<Response, ApiError> {
    let id = resolve_id(&st, &id).await?;
    let tasks = q.tasks.unwrap_or(true);
    let page = q.page()?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(30_000)).min(MAX_WAIT);
    Ok(Json(
        st.controller
            .get_page(id, tasks, page, q.after, wait)
            .await?,
    )
    .into_response())
}

async fn cancel(State(st): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = resolve_id(&st, &id).await?;
    Ok(Json(st.controller.cancel(id).await?).into_response())
}

/// `POST /v1/debug/block {"peer": ID, "blocked": BOOL}`: drop and refuse every connection with
/// the peer (or allow them again): one side of a partition, without root or namespaces.
async fn debug_block(
    State(st): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<bx3_protocol::api::BlockRequest>, ApiError> {
    let body = body?;
    let req: bx3_protocol::api::BlockRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("bad block request: {e}")))?;
    let peer: libp2p::PeerId = req
        .peer
        .parse()
        .map_err(|e| ApiError::bad_request(format!("{:?} is not a peer id: {e}", req.peer)))?;
    let Some(debug) = &st.debug else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "the debug API is off"));
    };
    debug.net.block(peer, req.blocked).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot block: {e}"),
        )
    })?;
    tracing::warn!(%peer, blocked = req.blocked, "debug API: peer {}", if req.blocked { "blocked" } else { "unblocked" });
    Ok(Json(req))
}

async fn status(State(st): State<ApiState>) -> Result<Json<StatusView>, ApiError> {
    Ok(Json(st.controller.status().await?))
}

/// Prometheus scrapes this. Never waits on the controller: the values it shows of the
/// controller were pushed by the actor (at most a second old).
async fn metrics(State(st): State<ApiState>) -> Result<Response, ApiError> {
    let text = st.metrics.encode().map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not encode metrics: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}
