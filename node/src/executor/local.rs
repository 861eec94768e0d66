//! One task run on this machine, without a node: `bx3-node exec` and `bx3-node check`.
//!
//! `exec` goes through the very path a node's pool uses: the module is checked and compiled
//! as an upload is ([`Runtime::prepare`]), then run by a fresh executor process
//! (`bx3-node __executor`) that gets the same request frame a node would send (memory cap,
//! stdout cap, stderr tail), under the same timeout, killed the same way; its answer is turned
//! into the task's output or error by the same [`describe`]. So what `exec` prints is what the
//! task's `output` or `error` would be in a DAG.
//!
//! `check` answers "would a node accept this module, and will it behave?" without running
//! it: the upload check ([`check_module`]) plus what only shows at run time (WASI functions
//! that bx3 does not implement answer `ENOSYS`; an initial memory above the executor size).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::frame::{self, Request, Response};
use super::runtime::{check_module, ExecError, Runtime};
use super::wasi::{self, WasiFn};
use super::{describe, humantime_short, Executor, PoolConfig, MAX_OUTPUT, STDERR_TAIL};
use crate::store::modules::{sha256_hex, ModuleStore};

const MB: u64 = 1024 * 1024;

/// Cached modules (and their compiled code) unused for this long are removed by the next run.
const CACHE_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What to run, as a DAG task would be given it.
#[derive(Debug, Clone)]
pub struct LocalTask {
    /// `argv[0]`: the module's file name, as `module:` names it in a DAG.
    pub name: String,
    pub wasm: Vec<u8>,
    /// `argv[1..]`.
    pub inputs: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    pub memory_mb: u64,
    pub timeout: Duration,
}

/// How a local run ended, in the words a DAG would use, plus the details a person debugging
/// a module wants apart.
#[derive(Debug, Clone, Serialize)]
pub struct LocalResult {
    /// `succeeded` or `failed`, as the task's state would be.
    pub state: &'static str,
    /// The task's output (stdout, trailing whitespace trimmed), when it succeeded.
    pub output: Option<String>,
    /// The task's error, exactly as `dag ID` would show it, when it failed.
    pub error: Option<String>,
    /// How it ended: `success`, `exit`, `trap`, `memory`, `output_limit`, `timeout`, `error`.
    pub ended: &'static str,
    /// The module's exit status (`proc_exit`), when it called it with a non-zero status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    /// The tail of stderr (at most 4 KiB), when the executor reported one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Time to check the module and compile it (or load its compiled code from the cache).
    pub prepare_ms: f64,
    /// Time inside the executor for the wasm run itself (successful runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_ms: Option<f64>,
    /// Wall time from starting the executor process to its answer.
    pub wall_ms: f64,
}

impl LocalResult {
    pub fn succeeded(&self) -> bool {
        self.output.is_some()
    }
}

/// Why a module could not be run at all (bad input, or this machine's problem).
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The module is refused, as an upload of it would be.
    #[error("{name} is not a usable WASI module: {error}")]
    Module { name: String, error: String },
    #[error("cannot use the module cache {path}: {error}")]
    Cache {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot start an executor process: {0}")]
    Spawn(std::io::Error),
    #[error("the module checker stopped: {0}")]
    Join(String),
}

impl LocalError {
    /// Exit code: 2 for a refused module (bad input), 3 for a failure of this machine.
    pub fn exit_code(&self) -> u8 {
        match self {
            LocalError::Module { .. } => 2,
            _ => 3,
        }
    }
}

/// Where `exec` keeps modules and compiled code between runs: a data dir of its own in the
/// platform cache dir (`~/.cache/bx3/exec`), laid out as a node's (`modules/`, `compiled/`)
/// because the executor process reads it as one. `None` if the platform has no cache dir.
pub fn default_cache_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("bx3").join("exec"))
}

/// Runs one task as a node's executor would. `exe` is the bx3-node binary (for the executor
/// process), `cache` a data-dir-shaped folder for the module and its compiled code.
pub async fn exec(exe: &Path, cache: &Path, task: LocalTask) -> Result<LocalResult, LocalError> {
    let cache_err = |error| LocalError::Cache {
        path: cache.to_path_buf(),
        error,
    };
    let modules = ModuleStore::open(cache.join("modules")).map_err(cache_err)?;
    let compiled = modules.compiled_dir();
    prune(&modules.compiled_dir());
    prune(modules.dir());

    // Check + compile exactly as an upload is (and fill the compiled cache the executor
    // process reads), off the async thread.
    let hash = sha256_hex(&task.wasm);
    let started = Instant::now();
    let (wasm, name) = (task.wasm, task.name.clone());
    let (checked, wasm) = {
        let (dir, h) = (compiled.clone(), hash.clone());
        tokio::task::spawn_blocking(move || {
            let r = Runtime::new(dir).and_then(|mut rt| rt.prepare(&h, &wasm));
            (r, wasm)
        })
        .await
        .map_err(|e| LocalError::Join(e.to_string()))?
    };
    checked.map_err(|e| LocalError::Module {
        name: name.clone(),
        error: one_line(&e),
    })?;
    let prepare_ms = ms(started.elapsed());
    modules.put(&wasm).map_err(cache_err)?;

    let mut argv = Vec::with_capacity(task.inputs.len() + 1);
    argv.push(task.name.clone());
    argv.extend(task.inputs);
    let request = Request {
        module_hash: hash,
        argv,
        env: task.env,
        stdin: task.stdin,
        memory_bytes: task.memory_mb.saturating_mul(MB),
        max_stdout: MAX_OUTPUT,
        max_stderr_tail: STDERR_TAIL,
    };
    let bytes = frame::encode(&request).map_err(|e| LocalError::Module {
        name: name.clone(),
        error: format!("the task's inputs cannot be sent to an executor: {e}"),
    })?;
    let config = PoolConfig {
        exe: exe.to_path_buf(),
        data_dir: cache.to_path_buf(),
        wrapper: Vec::new(),
        metrics: crate::metrics::Metrics::new(),
        max_memory_bytes: request.memory_bytes,
        // `exec` compiles in `prepare` above, in this process, as the user asked.
        compiler: None,
    };
    let mut ex = Executor::spawn(&config).await.map_err(LocalError::Spawn)?;
    let started = Instant::now();
    let answer = tokio::time::timeout(task.timeout, ex.call(&bytes)).await;
    let wall_ms = ms(started.elapsed());
    let mut result = LocalResult {
        state: "failed",
        output: None,
        error: None,
        ended: "error",
        exit_status: None,
        stderr: None,
        prepare_ms,
        run_ms: None,
        wall_ms,
    };
    match answer {
        Err(_) => {
            ex.kill().await;
            result.ended = "timeout";
            result.error = Some(format!(
                "timed out after {} (the task's timeout); the executor was stopped",
                humantime_short(task.timeout)
            ));
        }
        Ok(Err(e)) => {
            let how = ex.reap().await;
            result.error = Some(format!(
                "executor process died while running the task ({how}; {e})"
            ));
        }
        Ok(Ok(resp)) => {
            ex.kill().await;
            result.ended = match &resp {
                Response::Success { .. } => "success",
                Response::Exit { code, .. } => {
                    result.exit_status = Some(*code);
                    "exit"
                }
                Response::Trap { .. } => "trap",
                Response::MemoryExceeded { .. } => "memory",
                Response::OutputTooLarge { .. } => "output_limit",
                Response::Error { .. } => "error",
            };
            result.stderr = stderr_tail(&resp);
            let (outcome, run_us) =
                describe(&name, request.memory_bytes, request.memory_bytes, resp);
            result.run_ms = run_us.map(|us| ms(Duration::from_micros(us)));
            match outcome {
                Ok(output) => {
                    result.state = "succeeded";
                    result.output = Some(output);
                }
                Err(error) => result.error = Some(error),
            }
        }
    }
    Ok(result)
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

/// The stderr tail the executor reported, a successful run's too (`exec` shows a successful
/// task's warnings as a node keeps them).
fn stderr_tail(resp: &Response) -> Option<String> {
    let tail = match resp {
        Response::Success { stderr_tail, .. }
        | Response::Exit { stderr_tail, .. }
        | Response::Trap { stderr_tail, .. }
        | Response::MemoryExceeded { stderr_tail, .. } => stderr_tail,
        Response::OutputTooLarge { .. } | Response::Error { .. } => return None,
    };
    (!tail.is_empty()).then(|| tail.clone())
}

/// Removes cache files not modified for [`CACHE_MAX_AGE`] (bounded: a cache dir holds what
/// this user ran lately, a few files).
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten().take(10_000) {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > CACHE_MAX_AGE);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// An error as one line: wasmer's validation errors can span lines (and used to carry a Debug
/// dump of bytes); people and logs want one line.
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len());
    for (i, line) in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(line);
    }
    out
}

/// What `check` found in one module.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    pub file: String,
    pub size: u64,
    /// The module would be accepted by a node and can run (problems would say why not).
    pub ok: bool,
    /// Why a node would refuse it; one line each.
    pub errors: Vec<String>,
    /// What it may trip over at run time; one line each.
    pub warnings: Vec<String>,
    /// Its `wasi_snapshot_preview1` imports, in order.
    pub imports: Vec<String>,
    /// Initial linear memory, MB (rounded up), when the module defines or imports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_memory_mb: Option<u64>,
}

/// Checks module bytes against the task ABI without running them. `executor_mb` is the
/// executor size the module's initial memory is compared with.
pub fn check(file: &str, wasm: &[u8], executor_mb: u64) -> CheckReport {
    let mut report = CheckReport {
        file: file.to_string(),
        size: wasm.len() as u64,
        ok: true,
        errors: Vec::new(),
        warnings: Vec::new(),
        imports: Vec::new(),
        initial_memory_mb: None,
    };
    if let Err(e) = check_module(wasm) {
        report.errors = match e {
            ExecError::Invalid(all) => all.iter().map(|e| one_line(e)).collect(),
            e => vec![one_line(&e)],
        };
    }
    match shape(wasm) {
        Ok(shape) => {
            let missing: Vec<&str> = shape
                .wasi_imports
                .iter()
                .map(String::as_str)
                .filter(|name| WasiFn::from_name(name).is_none())
                .collect();
            if !missing.is_empty() {
                report.warnings.push(format!(
                    "imports {} WASI function{} bx3 does not implement (no files, sockets or \
                     threads; a call answers ENOSYS): {}",
                    missing.len(),
                    if missing.len() == 1 { "" } else { "s" },
                    missing.join(", ")
                ));
            }
            if !shape.wasi_imports.is_empty() && !shape.exports_memory {
                report.errors.push(
                    "imports WASI functions but exports no `memory`: the host cannot pass it \
                     arguments or read its output"
                        .into(),
                );
            }
            if let Some(pages) = shape.initial_pages {
                let mb = (pages * 65536).div_ceil(MB);
                report.initial_memory_mb = Some(mb);
                if mb > executor_mb {
                    report.warnings.push(format!(
                        "starts with {mb} MB of memory, more than an executor's {executor_mb} MB: \
                         give its tasks `memory: {mb}` or more (nodes need --ram-per-executor {mb})"
                    ));
                }
            }
            report.imports = shape.wasi_imports;
        }
        // check_module already said why the bytes are unreadable.
        Err(e) if report.errors.is_empty() => report.errors.push(e),
        Err(_) => {}
    }
    report.ok = report.errors.is_empty();
    report
}

struct Shape {
    wasi_imports: Vec<String>,
    exports_memory: bool,
    initial_pages: Option<u64>,
}

/// Imports, the `memory` export and the initial memory size, from the bytes.
fn shape(wasm: &[u8]) -> Result<Shape, String> {
    use wasmer::sys::wasmparser::{ExternalKind, Parser, Payload, TypeRef};
    let mut shape = Shape {
        wasi_imports: Vec::new(),
        exports_memory: false,
        initial_pages: None,
    };
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| one_line(&e))? {
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(|e| one_line(&e))?;
                    match import.ty {
                        TypeRef::Memory(m) => {
                            shape.initial_pages.get_or_insert(m.initial);
                        }
                        TypeRef::Func(_) | TypeRef::FuncExact(_)
                            if import.module == wasi::MODULE =>
                        {
                            shape.wasi_imports.push(import.name.to_string());
                        }
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for m in reader {
                    let m = m.map_err(|e| one_line(&e))?;
                    shape.initial_pages.get_or_insert(m.initial);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(|e| one_line(&e))?;
                    if export.name == "memory" && export.kind == ExternalKind::Memory {
                        shape.exports_memory = true;
                    }
                }
                break;
            }
            _ => {}
        }
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn committed_modules_pass_the_check() {
        let r = check("init.wasm", &fixture("wasm_modules/init.wasm"), 128);
        assert!(r.ok && r.warnings.is_empty(), "{r:?}");
        assert!(r.imports.iter().any(|i| i == "args_get"), "{r:?}");
        let r = check("noop.wasm", &fixture("wasm_modules/noop.wasm"), 128);
        assert!(r.ok, "{r:?}");
    }

    #[test]
    fn bad_modules_get_one_line_reasons() {
        let r = check("x.wasm", b"hello, not wasm at all", 128);
        assert!(!r.ok);
        assert!(r.errors.iter().all(|e| !e.contains('\n')), "{r:?}");
        assert!(
            !r.errors.iter().any(|e| e.contains("0x")),
            "no byte dumps: {r:?}"
        );
        let r = check(
            "badstart.wasm",
            &fixture("node/tests/fixtures/badstart.wasm"),
            128,
        );
        assert!(!r.ok && r.errors[0].contains("_start"), "{r:?}");
        let r = check(
            "env.wasm",
            &fixture("node/tests/fixtures/envimport.wasm"),
            128,
        );
        assert!(!r.ok, "{r:?}");
    }

    #[test]
    fn memory_above_the_executor_size_is_a_warning() {
        // (module (memory (export "memory") 40) (func (export "_start")))  — 40 pages
        let wasm = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\x05\x03\x01\0\x28\
\x07\x13\x02\x06memory\x02\0\x06_start\0\0\x0a\x04\x01\x02\0\x0b";
        let r = check("m.wasm", wasm, 1);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.initial_memory_mb, Some(3));
        assert!(r.warnings[0].contains("memory: 3"), "{r:?}");
    }
}
