//! The supervisor: opens the data dir, starts the actors, serves the API, and shuts it all
//! down in order on Ctrl-C / SIGTERM.
//!
//! ```text
//!  run() ── lock data dir ── identity ── Store ── Pool ── net ── runtime::Runtime ── api (axum)
//!              every actor shares one CancellationToken; run() waits on a JoinSet
//! ```

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libp2p::identity::Keypair;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::election;
use crate::executor::compile::{self, Compiler};
use crate::executor::{self, Pool, PoolConfig};
use crate::metrics::Metrics;
use crate::net;
use crate::runtime::{self, Runtime};
use crate::store::{ModuleStore, Store, StoreError};
use bx3_protocol::wire;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    // The io error is part of the message, not a `source`: a message plus its source chain
    // printed it twice ("Address already in use (os error 98): Address already in use ...").
    #[error("cannot use data dir {path}: {error}")]
    DataDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "data dir {path} is in use by another bx3-node{holder}; stop it or pass another --data-dir"
    )]
    Locked { path: PathBuf, holder: String },
    #[error("identity key {path} is unreadable ({reason}); move it away to create a new identity")]
    Identity { path: PathBuf, reason: String },
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen for the API on {addr}: {error}")]
    Bind { addr: String, error: std::io::Error },
    #[error("cannot find the bx3-node executable to start executors: {0}")]
    Exe(std::io::Error),
    #[error("cannot start networking: {0}")]
    Net(String),
    #[error("{0}")]
    MeshKey(#[from] net::psk::KeyError),
    #[error("a node task failed: {0}")]
    Task(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |error| NodeError::DataDir {
        path: path.to_path_buf(),
        error,
    }
}

/// Holds the data dir's lock for the life of the node (released when the file closes, also
/// on kill -9, so a crashed node never blocks its restart).
pub struct DirLock {
    _file: File,
}

pub fn lock_data_dir(dir: &Path) -> Result<DirLock, NodeError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join("LOCK");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err(dir))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            return Err(NodeError::Locked {
                path: dir.to_path_buf(),
                holder,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(dir)(e)),
    }
    file.set_len(0).map_err(io_err(dir))?;
    write!(file, "pid {}", std::process::id()).map_err(io_err(dir))?;
    Ok(DirLock { _file: file })
}

/// Loads the node's ed25519 identity, creating it on first start.
pub fn load_identity(dir: &Path) -> Result<Keypair, NodeError> {
    let path = dir.join("identity.key");
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| NodeError::Identity {
            path: path.clone(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| NodeError::Identity {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            write_private(&path, &bytes).map_err(io_err(dir))?;
            Ok(key)
        }
        Err(e) => Err(io_err(dir)(e)),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

/// Runs a node until `shutdown` is cancelled (or a part of it fails).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let dir = config.data_dir.clone();
    let _lock = lock_data_dir(&dir)?;
    let key = load_identity(&dir)?;
    let peer_id = key.public().to_peer_id().to_string();
    // Before anything else starts: a node told to run a private mesh never joins an open one.
    let psk = match &config.mesh_key {
        Some(path) => {
            let psk = net::psk::load(path)?;
            if net::psk::readable_by_others(path) {
                tracing::warn!(file = %path.display(), "the mesh key file is readable by other users; `chmod 600` it");
            }
            tracing::info!(fingerprint = %psk.fingerprint(), "mesh: private (only nodes holding this key can connect)");
            Some(psk)
        }
        None => {
            tracing::info!("mesh: open (no --mesh-key: any node that can reach this one can join; see README, Security)");
            None
        }
    };
    let store = Store::open(&dir.join("db"))?;
    let compiled_dir = dir.join("compiled");
    std::fs::create_dir_all(&compiled_dir).map_err(io_err(&dir))?;
    let exe = std::env::current_exe().map_err(NodeError::Exe)?;
    // One compile service for uploads, peer fetches and the executors (see executor::compile).
    let compiler = Compiler::new(
        Some(exe.clone()),
        compiled_dir,
        Compiler::default_slots(),
        compile::Limits::default(),
    )
    .with_wrapper(config.executor_wrapper.clone());
    let modules = ModuleStore::open(dir.join("modules"))
        .map_err(io_err(&dir))?
        .with_compiler(compiler.clone());

    let ram_source: Box<dyn executor::sizing::RamSource> = match &config.ram_file {
        Some(path) => Box::new(executor::sizing::FileRam {
            path: path.clone(),
            fallback: executor::sizing::SysRam::new(),
        }),
        None => Box::new(executor::sizing::SysRam::new()),
    };
    let sizer = executor::sizing::Sizer {
        source: ram_source,
        ram_per_executor_mb: config.ram_per_executor_mb,
        min_free_ram_mb: config.min_free_ram_mb,
        max_executors: config.max_executors,
        cpu_cores: executor::sizing::cpu_cores(),
    };

    let metrics = Metrics::new();
    let mut tasks = JoinSet::new();
    let (done_tx, done_rx) = mpsc::channel(4096);
    let (pool, capacity, pool_task) = Pool::start(
        PoolConfig {
            exe,
            data_dir: dir.clone(),
            metrics: metrics.clone(),
            wrapper: config.executor_wrapper.clone(),
            max_memory_bytes: config.ram_per_executor_mb.saturating_mul(1024 * 1024),
            compiler: Some(compiler.clone()),
        },
        sizer,
        done_tx,
        shutdown.clone(),
    );
    {
        let c = *capacity.borrow();
        tracing::info!(
            %peer_id,
            executors = c.executors,
            ram_slots = c.ram_slots,
            cpu_cores = c.cpu_cores,
            limited_by = ?c.limited_by,
            ram_per_executor_mb = config.ram_per_executor_mb,
            available_ram_mb = c.available_ram_mb,
            min_free_ram_mb = config.min_free_ram_mb,
            max_executors = ?config.max_executors,
            "node starting"
        );
    }
    let (net_tx, net_rx) = mpsc::channel(1024);
    // Gossip that does not decode as one of our messages is rejected and never forwarded.
    let validator: net::Validator =
        Arc::new(|_, data| bx3_protocol::mesh::decode_gossip(data).is_ok());
    let (net_client, net_task) = net::start(
        net::Config {
            keypair: key.clone(),
            listen: config.listen.clone(),
            peers: config.peers.clone(),
            mdns: config.mdns,
            max_message: wire::MAX_RPC,
            max_gossip: wire::MAX_GOSSIP,
            request_timeout: std::time::Duration::from_secs(30),
            psk,
            metrics: metrics.clone(),
        },
        validator,
        net_tx,
        shutdown.clone(),
    )
    .map_err(|e| NodeError::Net(e.to_string()))?;
    let replica = store.clone();
    let debug_net = config.debug_api.then(|| net_client.clone());
    let (actor, handle) = Runtime::new(runtime::Parts {
        keypair: key.clone(),
        store,
        modules: modules.clone(),
        pool,
        done: done_rx,
        capacity,
        info: runtime::NodeInfo {
            ram_per_executor_mb: config.ram_per_executor_mb,
            min_free_ram_mb: config.min_free_ram_mb,
            max_executors: config.max_executors,
            private_mesh: net_client.is_private(),
        },
        net: net_client,
        net_events: net_rx,
        election: election::Params::default(),
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
    })?;
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let r = actor
                .run()
                .await
                .map_err(|e| NodeError::Task(format!("cluster: {e}")));
            shutdown.cancel();
            r
        });
    }

    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .map_err(|error| NodeError::Bind {
            addr: config.api.to_string(),
            error,
        })?;
    let local = listener.local_addr().map_err(|error| NodeError::Bind {
        addr: config.api.to_string(),
        error,
    })?;
    let url = format!("http://{local}");
    let state = ApiState {
        controller: handle,
        modules,
        compiler,
        security: api::security::Policy::new(local, config.api_token.as_deref()),
        metrics,
        store: replica,
        debug: debug_net.map(|net| api::Debug { net }),
    };
    if state.debug.is_some() {
        tracing::warn!(
            "debug API enabled (--debug-api): whoever reaches the API can cut this node off \
             from its peers; for tests only"
        );
    }
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            axum::serve(listener, api::router(state))
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .map_err(|e| NodeError::Task(format!("api: {e}")))
        });
    }
    let addr_file = dir.join("api.addr");
    write_private(&addr_file, url.as_bytes()).map_err(io_err(&dir))?;
    tracing::info!(
        api = %url,
        token = if config.api_token.is_some() { "required" } else { "none" },
        "API ready"
    );

    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let r = joined.unwrap_or_else(|e| Err(NodeError::Task(e.to_string())));
        if let Err(e) = r {
            tracing::error!(error = ?e.to_string(), "a part of the node failed");
            shutdown.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    let _ = pool_task.await;
    let _ = net_task.await;
    let _ = std::fs::remove_file(&addr_file);
    tracing::info!("node stopped");
    result
}
