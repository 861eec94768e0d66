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
//! - [`election`]: sans-IO leader election with terms, tested by a seeded simulator.
//! - [`net`]: the libp2p event loop (the one task that owns the Swarm) and its client.
//! - [`mesh`]: typed mesh messages in the versioned wire envelope; membership table.
//! - [`api`]: the HTTP API (axum) used by the CLI and scripts.
//! - [`client`]: the CLI's side of that API (`submit`, `dag`, `dags`, `cancel`, `status`).
//! - `fuzzing` (tests, and the `fuzzing` feature for `fuzz/`): one function per fuzz target,
//!   every decoder and handler a peer or a user reaches.

pub mod api;
pub mod client;
pub mod config;
pub mod controller;
pub mod election;
pub mod executor;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod mesh;
pub mod net;
pub mod node;
pub mod store;
