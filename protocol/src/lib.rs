//! bx3 wire and file formats.
//!
//! This crate has no I/O and no async: it only defines data and the rules
//! for turning untrusted text into trusted values, so that every node (and
//! every tool) agrees on what a DAG file means.
//!
//! # Layout
//!
//! - [`dag`]: the DAG file format (YAML), its validation into a [`ValidDag`],
//!   and the task input ABI ([`Input`], `${id}` output references).
//! - [`api`]: JSON bodies of the HTTP API (DAG and status views, submit requests).
//! - [`ids`]: identifiers that cross process boundaries (`DagId`, `NodeId`, `ModuleHash`).
//! - [`mesh`]: what nodes say to each other (gossip, requests, responses), typed.
//! - [`wire`]: the versioned, size-limited envelope of every mesh message.
//! - [`yaml_guard`]: the linear pre-scan that bounds what the YAML parser may be asked to do.

pub mod api;
pub mod dag;
pub mod ids;
pub mod mesh;
pub mod wire;
pub mod yaml_guard;

pub use dag::{
    parse_dag, DagError, DagSpec, Input, InputsTooLarge, Part, Subject, TaskDefaults, TaskSpec,
    Timeout, TimeoutParseError, ValidDag, ValidTask, DEFAULT_RETRIES, DEFAULT_TIMEOUT_MS,
    MAX_DAG_BYTES, MAX_ID_LEN, MAX_INPUTS, MAX_MEMORY_MB, MAX_RETRIES, MAX_TASKS,
    MAX_TASK_TEXT_BYTES, MAX_TIMEOUT_MS,
};
