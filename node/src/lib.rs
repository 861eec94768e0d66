//! bx3-node: a zero-config peer-to-peer mesh that runs DAGs of WebAssembly tasks.
//!
//! # Layout, and who owns what
//!
//! Each piece of mutable state has one owner; the others talk to it over bounded channels.
//!
//! | module | what it is | owns |
//! |---|---|---|
//! | [`config`] | flags, `BX3_*` variables, a YAML config file (its keys found on the clap command itself) and defaults, validated into one `Config` | — |
//! | [`node`] | the supervisor: data-dir lock, identity, starts the actors, shutdown | the `JoinSet` of actors |
//! | [`cluster`] | the sans-IO cluster core: `Core::step(now, inputs) -> outputs` | membership, election, planner, placements, replication, worker queue, results outbox, parked API calls, long polls |
//! | [`runtime`] | the actor around the core: a select loop carrying out its outputs | the `Core`; requests in flight (`JoinSet`); API callbacks |
//! | [`election`] | sans-IO leader election with terms and signed votes (its own simulator) | (inside the core) |
//! | [`net`] | the libp2p event loop and its cloneable client | the `Swarm`, connections, dials |
//! | [`executor`] | RAM- and CPU-sized pool of executor processes running WASI modules on wasmer; `executor::local` runs one task the same way without a node (`exec`, `check`) | executor processes, compiled-module cache |
//! | [`store`] | sled behind a typed `Store`; content-addressed module files | the database (written only by the runtime, as the core says) |
//! | [`api`] | the HTTP API (axum) used by the CLI, scripts and the dashboard (`GET /`); resolves DAG id prefixes against this node's replica; `/v1/debug/*` only with `--debug-api` | — (asks the runtime) |
//! | [`metrics`] | the Prometheus registry behind `GET /metrics` | counters (atomics), the runtime's latest sample |
//! | [`client`] | the CLI's side of that API | — |
//!
//! ```text
//!   api ──Call──▶ runtime (Core) ──Run──▶ executor::Pool ──Done──▶ runtime
//!                   │   ▲                                          
//!       Write/Flush ▼   │ Event                                    
//!                 store  net ◀──▶ peers (gossip, request-response)
//! ```
//!
//! `fuzzing` (tests, and the `fuzzing` feature for `fuzz/`) has one function per fuzz target:
//! every decoder and handler a peer or a user reaches.
//!
//! Mesh messages themselves (gossip, requests, responses) are wire types in
//! `bx3_protocol::mesh`.

pub mod api;
pub mod client;
pub mod cluster;
pub mod config;
pub mod election;
pub mod executor;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod net;
pub mod node;
pub mod runtime;
pub mod store;
