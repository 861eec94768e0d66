//! bx3-node: a zero-config peer-to-peer mesh that runs DAGs of WebAssembly tasks.
//!
//! # Layout
//!
//! - [`config`]: flags, `BX3_*` variables, a YAML config file and defaults, validated into one
//!   `Config`; the config file's keys are found on the clap command itself (`apply_file`).
//! - [`node`]: the supervisor; opens the data dir, starts the actors, shuts down in order.
//! - [`controller`]: sole owner of DAG state; the pure [`controller::planner`] decides what
//!   runs next, the actor does the I/O (store, executors, replies).
//! - [`executor`]: RAM-sized pool of executor processes running WASI modules on wasmer with a
//!   hand-rolled WASI preview1 host; timeouts, memory and output limits. [`executor::local`]
//!   runs one task on this machine the same way, without a node (`bx3-node exec`, `check`).
//! - [`store`]: sled behind a typed `Store`, and content-addressed module files.
//! - [`election`]: sans-IO leader election with terms, tested by a seeded simulator.
//! - [`net`]: the libp2p event loop (the one task that owns the Swarm) and its client.
//! - [`mesh`]: typed mesh messages in the versioned wire envelope; membership table.
//! - [`api`]: the HTTP API (axum) used by the CLI and scripts; resolves DAG id prefixes against
//!   this node's replica (read-only); `/v1/debug/*` only with `--debug-api`.
//! - [`client`]: the CLI's side of that API (`submit`, `dag`, `dags`, `cancel`, `status`),
//!   and how results are shown to people. The command enums themselves are in `main.rs`:
//!   `Run`, `ClientCommand`, `ToolCommand` (exec, check, version, completions) and
//!   `InternalCommand` (the executor process).

pub mod api;
pub mod client;
pub mod config;
pub mod controller;
pub mod election;
pub mod executor;
pub mod mesh;
pub mod net;
pub mod node;
pub mod store;
