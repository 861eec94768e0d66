//! The HTTP API (axum): what the CLI, scripts and tests use. JSON everywhere; every error is
//! `{"error": "..."}` with a status that fits. Request bodies are bounded.
//!
//! ```text
//! PUT  /v1/modules?name=NAME   raw wasm bytes       -> {"hash","size"}      (validated + compiled)
//! GET  /v1/modules/{hash}      -> raw bytes (HEAD: does the node have it?)
//! POST /v1/dags                SubmitRequest        -> 201 {"id"}            (after it is durable)
//! GET  /v1/dags?limit=N        -> [DagSummary]
//! GET  /v1/dags/{id}?tasks=BOOL&after=VERSION&wait_ms=MS -> DagView   (long poll when `after`)
//! POST /v1/dags/{id}/cancel    -> DagView
//! GET  /v1/status              -> StatusView
//! ```
//!
//! Every route sits behind [`security::check`]: `Host` must name this API, no foreign
//! `Origin`, a JSON (or wasm) content type for anything that changes state, and the bearer
//! token when one is configured. See that module for why.

pub mod security;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bx3_protocol::api::{ErrorBody, ModuleUploaded, StatusView, SubmitRequest, SubmitResponse};
use bx3_protocol::dag::parse_dag;
use bx3_protocol::ids::DagId;
use serde::Deserialize;

use crate::controller::{ControllerError, Handle};
use crate::executor::compile::{CompileError, Compiler};
use crate::store::modules::{is_hash, sha256_hex};
use crate::store::{ModuleStore, SpecRecord};

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
}

pub fn router(state: ApiState) -> Router {
    let security = state.security.clone();
    Router::new()
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
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
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
            }),
        )
            .into_response()
    }
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> ApiError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> ApiError {
        ApiError::new(e.status(), e.body_text())
    }
}

fn parse_id(id: &str) -> Result<DagId, ApiError> {
    id.parse().map_err(|e: bx3_protocol::ids::BadDagId| {
        ApiError::new(StatusCode::NOT_FOUND, e.to_string())
    })
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
        st.compiler
            .compile(&hash, Arc::clone(&bytes))
            .await
            .map_err(|e| {
                let status = match e {
                    CompileError::Host(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                ApiError::new(status, format!("{name:?} is not a usable WASI module: {e}"))
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
                "{origin}: module {name} is used by the DAG but was not uploaded with it"
            )));
        };
        if !st.modules.contains(hash) {
            return Err(ApiError::bad_request(format!(
                "{origin}: module {name} ({hash}) is not on this node; upload it first (PUT /v1/modules)"
            )));
        }
        modules.insert(name, hash.clone());
    }
    let id = st
        .controller
        .submit(SpecRecord { dag, modules }, req.source)
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
}

async fn get_dag(
    State(st): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<DagQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let tasks = q.tasks.unwrap_or(true);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(30_000)).min(MAX_WAIT);
    Ok(Json(st.controller.get_after(id, tasks, q.after, wait).await?).into_response())
}

async fn cancel(State(st): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(st.controller.cancel(id).await?).into_response())
}

async fn status(State(st): State<ApiState>) -> Result<Json<StatusView>, ApiError> {
    Ok(Json(st.controller.status().await?))
}
