//! Integration tests: real `bx3-node` processes on 127.0.0.1 (`--no-mdns`), the CLI, a
//! browser, network namespaces where root allows. One test binary with a module per area,
//! so wasmer and libp2p are linked once, not once per file. Run one area with
//! `cargo test -p bx3-node --test it mesh::`.

mod common;

mod api_security;
mod churn;
mod cli;
mod compile_service;
mod dashboard;
mod executors;
mod failover;
mod hostile_input;
mod hostile_peer;
mod load;
mod mesh;
mod netns;
mod private_mesh;
mod single_node;
mod topology;
