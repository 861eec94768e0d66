//! bx3-node: a zero-config peer-to-peer mesh that runs DAGs of WebAssembly tasks.
//!
//! # Layout
//!
//! - [`config`]: flags, `BX3_*` variables and defaults, validated into one `Config`.
//! - [`node`]: the supervisor; opens the data dir, starts the actors, shuts down in order.
//! - [`controller`]: sole owner of DAG state; the pure [`controller::planner`] decides what
//!   runs next, the actor does the I/O (store, executors, replies).
//! - [`executor`]: RAM-sized pool of executor processes running WASI modules on wasmer with a
//!   hand-rolled WASI preview1 host; timeouts, memory and output limits.
//! - [`store`]: sled behind a typed `Store`, and content-addressed module files.
//! - [`api`]: the HTTP API (axum) used by the CLI and scripts.
//! - [`client`]: the CLI's side of that API (`submit`, `dag`, `dags`, `cancel`, `status`).

pub mod api;
pub mod client;
pub mod config;
pub mod controller;
pub mod executor;
pub mod node;
pub mod store;
