//! Runs one bx3 task: a WASI preview1 *command* module (`_start`), with argv, env and stdin in,
//! stdout (or why it failed) out.
//!
//! This is plain wasmer plus our own WASI host ([`super::wasi`]) rather than `wasmer-wasix`:
//! wasix costs about 1.2 ms per run for things a task never needs (a virtual file system, a
//! task runtime, threads), while a fresh store + instance of an already compiled module costs
//! a few microseconds (about 4 µs for an empty module, 20 µs for a small Rust std program). Hand-rolling also gives a tight sandbox: no file system, stdout
//! capped (the task is stopped at once when it writes too much), only a bounded tail of stderr,
//! and a per-task memory limit enforced by our own [`Tunables`].
//!
//! * One [`Engine`] (cranelift, optimised for speed) per [`Runtime`].
//! * Modules are compiled once and kept in memory by hash; compiled artifacts are also kept on
//!   disk (`<cache_dir>/<hash>-<tag>.bin`), so a restarted node does not recompile.
//! * Every run gets a fresh [`Store`] and [`Instance`]: nothing leaks between tasks.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use wasmer::sys::vm::{
    LinearMemory, Trap, VMMemory, VMMemoryDefinition, VMTable, VMTableDefinition,
};
use wasmer::sys::{
    BaseTunables, Cranelift, CraneliftOptLevel, EngineBuilder, NativeEngineExt, Tunables,
};
use wasmer::{
    Engine, Extern, ExternType, FunctionEnv, FunctionType, Instance, InstantiationError,
    MemoryError, MemoryStyle, MemoryType, Module, Pages, RuntimeError, Store, TableStyle,
    TableType, WASM_PAGE_SIZE,
};

use super::wasi::{self, HostStop, ImportPlan, WasiCtx};

/// Resource limits of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cap on every linear memory of the instance (rounded down to whole 64 KiB pages).
    pub memory_bytes: u64,
    /// Writing more than this to stdout stops the task with [`Outcome::OutputTooLarge`].
    pub max_stdout: usize,
    /// How many trailing bytes of stderr to keep for error reports.
    pub max_stderr_tail: usize,
}

/// One task to run.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// `argv[0]` is by convention the program name.
    pub argv: &'a [String],
    pub env: &'a [(String, String)],
    pub stdin: &'a [u8],
    pub limits: Limits,
}

/// How a run ended (as far as the task is concerned; host problems are [`ExecError`]s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `_start` returned, or the task called `proc_exit(0)`. A successful task's stderr
    /// (warnings, progress) is kept too: people look for it when an output surprises them.
    Success {
        stdout: Vec<u8>,
        stderr_tail: String,
    },
    /// `proc_exit(code)` with `code != 0`.
    Exit { code: u32, stderr_tail: String },
    /// A wasm trap (unreachable, out-of-bounds access, stack exhausted, ...), `proc_raise`, or
    /// a call to a WASI function bx3 does not provide.
    Trap {
        message: String,
        stderr_tail: String,
    },
    /// The memory limit refused a `memory.grow` (and the task then did not succeed), or the
    /// module's minimum memory (or table) size is above the limit.
    MemoryExceeded {
        limit_bytes: u64,
        stderr_tail: String,
    },
    /// The task wrote more than `max_stdout` bytes to stdout; it was stopped right there.
    OutputTooLarge { limit_bytes: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("invalid WebAssembly module: {0}")]
    Compile(String),
    /// Not a core WebAssembly module at all (the header says what it is instead).
    #[error("{0}")]
    NotWasm(String),
    #[error("not a WASI command: the module must export a function `_start` of type [] -> []")]
    NotCommand,
    #[error(
        "the module imports `{module}.{name}`, but only functions of `wasi_snapshot_preview1` \
         are available"
    )]
    BadImport { module: String, name: String },
    #[error("the module imports `wasi_snapshot_preview1.{name}` as {found}, but it is {expected}")]
    BadImportType {
        name: String,
        expected: String,
        found: String,
    },
    /// More than one of the problems above.
    #[error("{}", list(.0))]
    Invalid(Vec<ExecError>),
    #[error("module hash {0:?} is not a lowercase hex SHA-256")]
    BadHash(String),
    #[error("module bytes do not match their hash: expected {expected}, got {actual}")]
    HashMismatch { expected: String, actual: String },
    #[error("module {0} has not been prepared")]
    NotPrepared(String),
    #[error("could not instantiate the module: {0}")]
    Instantiate(String),
    #[error("module cache: {0}")]
    Cache(#[from] io::Error),
    /// Over the compile budget: refused before any compilation.
    #[error("the module has {count} {what}; at most {max} are accepted (compiling it would cost the node too much)")]
    OverBudget {
        what: &'static str,
        count: u64,
        max: u64,
    },
}

fn list(problems: &[ExecError]) -> String {
    let all: Vec<String> = problems.iter().map(ToString::to_string).collect();
    all.join("; ")
}

/// Check bytes without a [`Runtime`] (upload validation): valid wasm for our engine's
/// features, a `_start` export of type `[] -> []`, and only `wasi_snapshot_preview1` function
/// imports with the right types. Does not compile (validation + a header scan: fast).
pub fn check_module(wasm: &[u8]) -> Result<(), ExecError> {
    check_header(wasm)?;
    Module::validate(validation_engine(), wasm).map_err(|e| ExecError::Compile(e.to_string()))?;
    let (imports, start) = scan(wasm).map_err(ExecError::Compile)?;
    plan_imports(imports, start).map(drop)
}

/// The first 8 bytes, said in words: wasmer's own message for a wrong magic number is a dump
/// of both byte arrays, and a component (`wasm32-wasip2`) deserves a hint.
fn check_header(wasm: &[u8]) -> Result<(), ExecError> {
    const MAGIC: &[u8; 4] = b"\0asm";
    let Some(head) = wasm.get(..8) else {
        return Err(ExecError::NotWasm(format!(
            "not a WebAssembly module: {} bytes is too short to be one",
            wasm.len()
        )));
    };
    if &head[..4] != MAGIC {
        let text = head
            .iter()
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace());
        return Err(ExecError::NotWasm(format!(
            "not a WebAssembly module (a .wasm file starts with \\0asm){}",
            if text {
                "; this looks like a text file"
            } else {
                ""
            }
        )));
    }
    match [head[4], head[5], head[6], head[7]] {
        [1, 0, 0, 0] => Ok(()),
        [0x0d, 0x00, 0x01, 0x00] => Err(ExecError::NotWasm(
            "this is a WebAssembly component (WASI preview 2), not a core module: build for \
             wasm32-wasip1 (preview 1)"
                .into(),
        )),
        [a, b, c, d] => Err(ExecError::NotWasm(format!(
            "WebAssembly binary version {} is not supported (bx3 runs version 1)",
            u32::from_le_bytes([a, b, c, d])
        ))),
    }
}

/// Most functions (defined in the module) accepted for compilation. Cranelift spends time
/// and memory per function even on empty ones: 200,000 empty functions in 800 KB took 3.4 s
/// and 300 MB. Real task modules have hundreds to a few thousand.
pub const MAX_FUNCTIONS: u64 = 100_000;
/// Largest code section accepted for compilation, bytes.
pub const MAX_CODE_BYTES: u64 = 32 * 1024 * 1024;

/// The compile budget, from the section headers only (no function body is read): at most
/// [`MAX_FUNCTIONS`] functions and [`MAX_CODE_BYTES`] of code. Cheap enough to run in the
/// node itself before a module goes to the compile process.
pub fn check_budget(wasm: &[u8]) -> Result<(), ExecError> {
    use wasmer::sys::wasmparser::{Parser, Payload};
    // Not a module at all (text, a component) is said in words, not as a parser's dump.
    check_header(wasm)?;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(|e| ExecError::Compile(e.to_string()))? {
            Payload::FunctionSection(reader) => {
                let count = u64::from(reader.count());
                if count > MAX_FUNCTIONS {
                    return Err(ExecError::OverBudget {
                        what: "functions",
                        count,
                        max: MAX_FUNCTIONS,
                    });
                }
            }
            Payload::CodeSectionStart { count, size, .. } => {
                if u64::from(count) > MAX_FUNCTIONS {
                    return Err(ExecError::OverBudget {
                        what: "function bodies",
                        count: u64::from(count),
                        max: MAX_FUNCTIONS,
                    });
                }
                if u64::from(size) > MAX_CODE_BYTES {
                    return Err(ExecError::OverBudget {
                        what: "bytes of code",
                        count: u64::from(size),
                        max: MAX_CODE_BYTES,
                    });
                }
                // Everything after is function bodies and data: not needed here.
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where a compiled artifact of module `hash` is cached under `cache_dir` by this build on
/// this machine (what [`Runtime::prepare`] writes and [`Runtime::load_cached`] reads).
pub fn artifact_path(cache_dir: &std::path::Path, hash: &str) -> PathBuf {
    static TAG: OnceLock<String> = OnceLock::new();
    let tag = TAG.get_or_init(|| cache_tag(&new_engine(true)));
    cache_dir.join(format!("{hash}-{tag}.bin"))
}

/// Version of wasmer whose artifacts we cache: must follow the `=7.1.0` pin in Cargo.toml.
/// (wasmer's own artifact header check is a second line of defence.)
pub const WASMER_VERSION: &str = "7.1.0";
/// Bump when anything about how we configure the engine or lay out cache files changes.
const CACHE_FORMAT: u32 = 1;
/// Cache files end with `sha256(payload) ++ CACHE_MAGIC`.
const CACHE_MAGIC: &[u8; 8] = b"bx3wasm1";
const CACHE_TRAILER: usize = 32 + CACHE_MAGIC.len();

/// Tables larger than this (in elements) are refused, like memories above the limit.
const MAX_TABLE_ELEMENTS: u32 = 1 << 20;

struct Prepared {
    module: Module,
    imports: Vec<ImportPlan>,
}

/// Compiles, caches and runs modules. `Send + Sync`, but `prepare` / `run` take `&mut self`:
/// use one per worker thread (each has its own engine and in-memory module table; they can
/// share the disk cache directory: files are written atomically). The memory limit is
/// per thread (see [`JobMemory`]), so runtimes on different threads never interfere.
pub struct Runtime {
    engine: Engine,
    cache_dir: PathBuf,
    tag: String,
    modules: HashMap<String, Prepared>,
}

impl Runtime {
    /// A runtime caching compiled modules in `cache_dir` (created if missing).
    pub fn new(cache_dir: PathBuf) -> Result<Runtime, ExecError> {
        fs::create_dir_all(&cache_dir)?;
        let engine = new_engine(true);
        let tag = cache_tag(&engine);
        Ok(Runtime {
            engine,
            cache_dir,
            tag,
            modules: HashMap::new(),
        })
    }

    /// Compile (or load from the on-disk cache) and check the module is a WASI command we can
    /// run. `hash` must be the lowercase hex SHA-256 of `wasm` (it is checked).
    pub fn prepare(&mut self, hash: &str, wasm: &[u8]) -> Result<(), ExecError> {
        check_hash(hash)?;
        if self.modules.contains_key(hash) {
            return Ok(());
        }
        if let Some(prepared) = self.load_from_disk(hash) {
            self.modules.insert(hash.to_owned(), prepared);
            return Ok(());
        }
        let actual = hex::encode(Sha256::digest(wasm));
        if actual != hash {
            return Err(ExecError::HashMismatch {
                expected: hash.to_owned(),
                actual,
            });
        }
        // Cheap structural checks first, so we do not compile something we will refuse.
        check_budget(wasm)?;
        let (imports, start) = scan(wasm).map_err(ExecError::Compile)?;
        plan_imports(imports, start)?;
        let module =
            Module::new(&self.engine, wasm).map_err(|e| ExecError::Compile(e.to_string()))?;
        let imports = module_plan(&module)?;
        if let Err(e) = self.write_cache(hash, &module) {
            tracing::warn!(%hash, error = %e, "could not write the compiled module to the cache");
        }
        self.modules
            .insert(hash.to_owned(), Prepared { module, imports });
        Ok(())
    }

    /// Like [`Runtime::prepare`] but only from memory or the disk cache: `Ok(false)` if the
    /// module is not cached anywhere.
    pub fn load_cached(&mut self, hash: &str) -> Result<bool, ExecError> {
        check_hash(hash)?;
        if self.modules.contains_key(hash) {
            return Ok(true);
        }
        match self.load_from_disk(hash) {
            Some(prepared) => {
                self.modules.insert(hash.to_owned(), prepared);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Run a prepared module. `Err` only for host-side problems (module not prepared, an
    /// instantiation failure that is not the memory limit).
    pub fn run(&mut self, hash: &str, job: &Job) -> Result<Outcome, ExecError> {
        let prepared = self
            .modules
            .get(hash)
            .ok_or_else(|| ExecError::NotPrepared(hash.to_owned()))?;
        let limits = job.limits;
        let mut store = Store::new(self.engine.clone());
        let ctx = WasiCtx::new(
            job.argv,
            job.env,
            job.stdin,
            limits.max_stdout,
            limits.max_stderr_tail,
        );
        let env = FunctionEnv::new(&mut store, ctx);
        let externs: Vec<Extern> = prepared
            .imports
            .iter()
            .map(|plan| wasi::make_function(&mut store, &env, plan))
            .collect();

        let refused = Arc::new(AtomicBool::new(false));
        let instance = {
            let _limit = JobMemory::enter(pages_of(limits.memory_bytes), refused.clone());
            Instance::new_by_index(&mut store, &prepared.module, &externs)
        };
        let result = match instance {
            Ok(instance) => {
                let memory = instance.exports.get_memory("memory").ok().cloned();
                env.as_mut(&mut store).set_memory(memory);
                let start = instance
                    .exports
                    .get_typed_function::<(), ()>(&store, "_start")
                    .map_err(|e| ExecError::Instantiate(e.to_string()))?;
                start.call(&mut store)
            }
            // A `start` section ran and failed: that is the task failing, not the host.
            Err(InstantiationError::Start(e)) => Err(e),
            Err(e) => {
                if refused.load(Ordering::Relaxed) {
                    let stderr_tail = env.as_ref(&store).stderr_tail();
                    return Ok(Outcome::MemoryExceeded {
                        limit_bytes: limits.memory_bytes,
                        stderr_tail,
                    });
                }
                return Err(ExecError::Instantiate(e.to_string()));
            }
        };
        let ctx = env.as_mut(&mut store);
        Ok(outcome(
            result,
            ctx,
            refused.load(Ordering::Relaxed),
            &limits,
        ))
    }

    fn cache_path(&self, hash: &str) -> PathBuf {
        self.cache_dir.join(format!("{hash}-{}.bin", self.tag))
    }

    fn write_cache(&self, hash: &str, module: &Module) -> io::Result<()> {
        let payload = module.serialize().map_err(io::Error::other)?;
        let digest = Sha256::digest(&payload);
        let path = self.cache_path(hash);
        let tmp = self.cache_dir.join(format!(
            ".{hash}-{}.{}.{:016x}.tmp",
            self.tag,
            std::process::id(),
            rand::random::<u64>()
        ));
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&payload)?;
            f.write_all(&digest)?;
            f.write_all(CACHE_MAGIC)?;
            // No fsync: a torn file after a crash fails the digest check and is recompiled.
            drop(f);
            fs::rename(&tmp, &path)
        };
        let r = write();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    fn load_from_disk(&self, hash: &str) -> Option<Prepared> {
        let path = self.cache_path(hash);
        let mut data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot read cached module");
                return None;
            }
        };
        let reject = |why: &str| {
            tracing::debug!(path = %path.display(), why, "ignoring cached module; recompiling");
            let _ = fs::remove_file(&path);
            None
        };
        let Some(payload_len) = data.len().checked_sub(CACHE_TRAILER) else {
            return reject("file too short");
        };
        let (payload, trailer) = data.split_at(payload_len);
        if &trailer[32..] != CACHE_MAGIC {
            return reject("bad magic");
        }
        if Sha256::digest(payload).as_slice() != &trailer[..32] {
            return reject("checksum mismatch");
        }
        data.truncate(payload_len);
        // SAFETY: `Module::deserialize` trusts its input to be an artifact produced by
        // `Module::serialize` of a compatible wasmer. That holds here: we only read files in our
        // own cache directory, that we wrote ourselves (`write_cache`, atomically via rename);
        // their name carries a tag of the wasmer version, target triple, CPU features and our
        // engine configuration, so a different wasmer or machine never picks them up; and the
        // SHA-256 trailer proves the bytes are exactly what `serialize` returned (no truncation,
        // no bit rot). wasmer additionally checks its artifact header and the CPU features.
        let module = match unsafe { Module::deserialize(&self.engine, data) } {
            Ok(module) => module,
            Err(e) => return reject(&format!("cannot deserialize: {e}")),
        };
        match module_plan(&module) {
            Ok(imports) => Some(Prepared { module, imports }),
            Err(e) => reject(&format!("cached module fails checks: {e}")),
        }
    }
}

/// Classify how the call to `_start` ended.
fn outcome(
    result: Result<(), RuntimeError>,
    ctx: &mut WasiCtx,
    memory_refused: bool,
    limits: &Limits,
) -> Outcome {
    let err = match result {
        Ok(()) => {
            return Outcome::Success {
                stdout: ctx.take_stdout(),
                stderr_tail: ctx.stderr_tail(),
            }
        }
        Err(err) => err,
    };
    let stderr_tail = ctx.stderr_tail();
    match ctx.stop() {
        Some(HostStop::Exit(0)) => Outcome::Success {
            stdout: ctx.take_stdout(),
            stderr_tail,
        },
        Some(HostStop::OutputTooLarge(limit)) => Outcome::OutputTooLarge {
            limit_bytes: *limit,
        },
        _ if memory_refused => Outcome::MemoryExceeded {
            limit_bytes: limits.memory_bytes,
            stderr_tail,
        },
        Some(HostStop::Exit(code)) => Outcome::Exit {
            code: *code,
            stderr_tail,
        },
        Some(stop @ (HostStop::Raise(_) | HostStop::Unsupported(_))) => Outcome::Trap {
            message: stop.to_string(),
            stderr_tail,
        },
        None => Outcome::Trap {
            message: trap_message(&err),
            stderr_tail,
        },
    }
}

/// The trap message plus the top of the wasm stack.
fn trap_message(err: &RuntimeError) -> String {
    let mut msg = err.message();
    for frame in err.trace().iter().take(8) {
        let _ = write!(
            msg,
            "\n  at {} ({}[{}]:0x{:x})",
            frame.function_name().unwrap_or("<unnamed>"),
            frame.module_name(),
            frame.func_index(),
            frame.module_offset()
        );
    }
    msg
}

fn check_hash(hash: &str) -> Result<(), ExecError> {
    let ok = hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ExecError::BadHash(hash.to_owned()))
    }
}

fn pages_of(bytes: u64) -> u32 {
    let pages = bytes / WASM_PAGE_SIZE as u64;
    u32::try_from(pages.min(u64::from(Pages::max_value().0))).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------
// Module shape checks, shared by `check_module` (a wasmparser scan of the raw bytes) and
// `prepare` / the disk cache (wasmer's view of the compiled module).

enum ImportSig {
    Func(FunctionType),
    Other,
}

/// `(module, name, signature)` of every import, in order.
type Imports = Vec<(String, String, ImportSig)>;

/// `None`: no `_start` export; `Some(None)`: `_start` is not a function.
type StartSig = Option<Option<FunctionType>>;

fn plan_imports(imports: Imports, start: StartSig) -> Result<Vec<ImportPlan>, ExecError> {
    let mut problems = Vec::new();
    match start {
        Some(Some(ty)) if ty.params().is_empty() && ty.results().is_empty() => {}
        _ => problems.push(ExecError::NotCommand),
    }
    let mut plans = Vec::with_capacity(imports.len());
    for (module, name, sig) in imports {
        match sig {
            ImportSig::Func(ty) if module == wasi::MODULE => {
                match ImportPlan::for_import(&name, &ty) {
                    Ok(plan) => plans.push(plan),
                    Err((expected, found)) => problems.push(ExecError::BadImportType {
                        name,
                        expected: expected.to_string(),
                        found: found.to_string(),
                    }),
                }
            }
            _ => problems.push(ExecError::BadImport { module, name }),
        }
    }
    match problems.len() {
        0 => Ok(plans),
        1 => Err(problems.remove(0)),
        _ => Err(ExecError::Invalid(problems)),
    }
}

fn module_plan(module: &Module) -> Result<Vec<ImportPlan>, ExecError> {
    let imports = module
        .imports()
        .map(|i| {
            let sig = match i.ty() {
                ExternType::Function(ft) => ImportSig::Func(ft.clone()),
                _ => ImportSig::Other,
            };
            (i.module().to_owned(), i.name().to_owned(), sig)
        })
        .collect();
    let start = module
        .exports()
        .find(|e| e.name() == "_start")
        .map(|e| match e.ty() {
            ExternType::Function(ft) => Some(ft.clone()),
            _ => None,
        });
    plan_imports(imports, start)
}

/// Imports and the `_start` signature, straight from the bytes (stops after the export section).
fn scan(wasm: &[u8]) -> Result<(Imports, StartSig), String> {
    use wasmer::sys::wasmparser::{
        CompositeInnerType, ExternalKind, Parser, Payload, TypeRef, ValType,
    };
    fn ty(v: &ValType) -> wasmer::Type {
        match v {
            ValType::I32 => wasmer::Type::I32,
            ValType::I64 => wasmer::Type::I64,
            ValType::F32 => wasmer::Type::F32,
            ValType::F64 => wasmer::Type::F64,
            ValType::V128 => wasmer::Type::V128,
            ValType::Ref(r) if r.is_func_ref() => wasmer::Type::FuncRef,
            ValType::Ref(_) => wasmer::Type::ExternRef,
        }
    }
    let err = |e: wasmer::sys::wasmparser::BinaryReaderError| e.to_string();
    let mut types: Vec<Option<FunctionType>> = Vec::new();
    let mut funcs: Vec<u32> = Vec::new(); // function index -> type index
    let mut imports = Vec::new();
    let mut start: StartSig = None;
    let mut start_index = None;
    for payload in Parser::new(0).parse_all(wasm) {
        match payload.map_err(err)? {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for sub in group.map_err(err)?.into_types() {
                        types.push(match &sub.composite_type.inner {
                            CompositeInnerType::Func(f) => Some(FunctionType::new(
                                f.params().iter().map(ty).collect::<Vec<_>>(),
                                f.results().iter().map(ty).collect::<Vec<_>>(),
                            )),
                            _ => None,
                        });
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.map_err(err)?;
                    let sig = match import.ty {
                        TypeRef::Func(t) | TypeRef::FuncExact(t) => {
                            funcs.push(t);
                            match types.get(t as usize) {
                                Some(Some(ft)) => ImportSig::Func(ft.clone()),
                                _ => ImportSig::Other,
                            }
                        }
                        _ => ImportSig::Other,
                    };
                    imports.push((import.module.to_owned(), import.name.to_owned(), sig));
                }
            }
            Payload::FunctionSection(reader) => {
                for t in reader {
                    funcs.push(t.map_err(err)?);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(err)?;
                    if export.name == "_start" {
                        start_index = match export.kind {
                            ExternalKind::Func | ExternalKind::FuncExact => Some(export.index),
                            _ => None,
                        };
                        start = Some(None);
                    }
                }
                break; // everything we need comes before the code
            }
            _ => {}
        }
    }
    if let Some(index) = start_index {
        start = Some(
            funcs
                .get(index as usize)
                .and_then(|t| types.get(*t as usize))
                .cloned()
                .flatten(),
        );
    }
    Ok((imports, start))
}

// ---------------------------------------------------------------------------------------
// Engine, tunables and the per-job memory limit.

fn new_engine(limit_memory: bool) -> Engine {
    let mut cranelift = Cranelift::new();
    cranelift.opt_level(CraneliftOptLevel::Speed);
    let mut engine: Engine = EngineBuilder::new(cranelift).into();
    if limit_memory {
        let base = BaseTunables::for_target(engine.target());
        engine.set_tunables(LimitingTunables { base });
    }
    engine
}

/// Used by [`check_module`] only (validation needs an engine for its feature set).
fn validation_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| new_engine(false))
}

/// `w<wasmer>-<arch>-<os>-<hash of triple, CPU features, engine config, cache format>`.
fn cache_tag(engine: &Engine) -> String {
    let target = engine.target();
    let config = format!(
        "{}|{:?}|cranelift-speed|{CACHE_FORMAT}",
        target.triple(),
        target.cpu_features()
    );
    let digest = Sha256::digest(config.as_bytes());
    format!(
        "w{WASMER_VERSION}-{}-{}-{}",
        std::env::consts::ARCH,
        std::env::consts::OS,
        hex::encode(&digest[..6])
    )
}

/// The memory limit of the job being instantiated on this thread.
///
/// wasmer ties [`Tunables`] to the [`Engine`], and memories are created inside
/// `Instance::new`, synchronously on the calling thread. So the run sets the limit in a
/// thread-local for the duration of the instantiation, and the tunables read it there. Each
/// memory created that way carries its limit and the job's "refused" flag with it, so grows
/// later in the run need no thread-local. Memory *styles* (which are compiled into the code)
/// do not depend on the limit, so one compiled module serves every limit.
struct JobMemory {
    limit_pages: u32,
    refused: Arc<AtomicBool>,
}

thread_local! {
    static JOB_MEMORY: RefCell<Option<JobMemory>> = const { RefCell::new(None) };
}

/// Clears the thread-local limit when dropped.
struct JobMemoryGuard;

impl JobMemory {
    fn enter(limit_pages: u32, refused: Arc<AtomicBool>) -> JobMemoryGuard {
        JOB_MEMORY.with(|j| {
            *j.borrow_mut() = Some(JobMemory {
                limit_pages,
                refused,
            })
        });
        JobMemoryGuard
    }

    fn current() -> Option<(u32, Arc<AtomicBool>)> {
        JOB_MEMORY.with(|j| {
            j.borrow()
                .as_ref()
                .map(|m| (m.limit_pages, m.refused.clone()))
        })
    }
}

impl Drop for JobMemoryGuard {
    fn drop(&mut self) {
        JOB_MEMORY.with(|j| *j.borrow_mut() = None);
    }
}

/// [`BaseTunables`], except that memories and tables are created under the current job's limit.
struct LimitingTunables {
    base: BaseTunables,
}

impl LimitingTunables {
    /// The memory type to really create (maximum capped to the limit), and the wrapper info.
    fn cap_memory(
        ty: &MemoryType,
    ) -> Result<Option<(MemoryType, u32, Arc<AtomicBool>)>, MemoryError> {
        let Some((limit, refused)) = JobMemory::current() else {
            return Ok(None);
        };
        if ty.minimum.0 > limit {
            refused.store(true, Ordering::Relaxed);
            return Err(MemoryError::MinimumMemoryTooLarge {
                min_requested: ty.minimum,
                max_allowed: Pages(limit),
            });
        }
        let declared = ty.maximum.unwrap_or_else(Pages::max_value);
        let capped = MemoryType {
            maximum: Some(declared.min(Pages(limit))),
            ..*ty
        };
        Ok(Some((capped, limit, refused)))
    }

    fn cap_table(ty: &TableType) -> Result<TableType, String> {
        if ty.minimum > MAX_TABLE_ELEMENTS {
            if let Some((_, refused)) = JobMemory::current() {
                refused.store(true, Ordering::Relaxed);
            }
            return Err(format!(
                "table of {} elements is above the limit of {MAX_TABLE_ELEMENTS}",
                ty.minimum
            ));
        }
        let maximum = ty
            .maximum
            .map_or(MAX_TABLE_ELEMENTS, |m| m.min(MAX_TABLE_ELEMENTS));
        Ok(TableType::new(ty.ty, ty.minimum, Some(maximum)))
    }
}

impl Tunables for LimitingTunables {
    fn memory_style(&self, memory: &MemoryType) -> MemoryStyle {
        self.base.memory_style(memory)
    }

    fn table_style(&self, table: &TableType) -> TableStyle {
        self.base.table_style(table)
    }

    fn create_host_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
    ) -> Result<VMMemory, MemoryError> {
        match Self::cap_memory(ty)? {
            None => VMMemory::new(ty, style),
            Some((capped, limit, refused)) => {
                let inner = VMMemory::new(&capped, style)?;
                Ok(LimitedMemory::wrap(inner, ty, limit, refused))
            }
        }
    }

    unsafe fn create_vm_memory(
        &self,
        ty: &MemoryType,
        style: &MemoryStyle,
        vm_definition_location: NonNull<VMMemoryDefinition>,
    ) -> Result<VMMemory, MemoryError> {
        match Self::cap_memory(ty)? {
            // SAFETY: forwarded from our caller (a valid, owned `VMMemoryDefinition`).
            None => unsafe { VMMemory::from_definition(ty, style, vm_definition_location) },
            Some((capped, limit, refused)) => {
                // SAFETY: as above.
                let inner =
                    unsafe { VMMemory::from_definition(&capped, style, vm_definition_location)? };
                Ok(LimitedMemory::wrap(inner, ty, limit, refused))
            }
        }
    }

    fn create_host_table(&self, ty: &TableType, style: &TableStyle) -> Result<VMTable, String> {
        VMTable::new(&Self::cap_table(ty)?, style)
    }

    unsafe fn create_vm_table(
        &self,
        ty: &TableType,
        style: &TableStyle,
        vm_definition_location: NonNull<VMTableDefinition>,
    ) -> Result<VMTable, String> {
        let ty = Self::cap_table(ty)?;
        // SAFETY: forwarded from our caller (a valid, owned `VMTableDefinition`).
        unsafe { VMTable::from_definition(&ty, style, vm_definition_location) }
    }
}

/// A linear memory that refuses to grow past the job's limit, and says so in `refused`.
/// The inner memory is also created with its maximum capped to the limit (belt and braces);
/// the wrapper is what tells "refused by our limit" apart from "refused by the module's own
/// declared maximum" (which is not a limit violation), exactly, by comparing pages.
#[derive(Debug)]
struct LimitedMemory {
    inner: VMMemory,
    limit_pages: u32,
    /// The module's own maximum (or the 4 GiB wasm32 maximum).
    declared_max: u32,
    refused: Arc<AtomicBool>,
}

impl LimitedMemory {
    fn wrap(inner: VMMemory, ty: &MemoryType, limit: u32, refused: Arc<AtomicBool>) -> VMMemory {
        let declared_max = ty.maximum.unwrap_or_else(Pages::max_value).0;
        VMMemory(Box::new(LimitedMemory {
            inner,
            limit_pages: limit,
            declared_max,
            refused,
        }))
    }

    /// Would growing to `new_pages` be refused *because of our limit*?
    fn refuse(&self, new_pages: u64) -> bool {
        let ours =
            new_pages > u64::from(self.limit_pages) && new_pages <= u64::from(self.declared_max);
        if ours {
            self.refused.store(true, Ordering::Relaxed);
        }
        ours
    }
}

impl LinearMemory for LimitedMemory {
    fn ty(&self) -> MemoryType {
        self.inner.ty()
    }

    fn size(&self) -> Pages {
        self.inner.size()
    }

    fn style(&self) -> MemoryStyle {
        self.inner.style()
    }

    fn grow(&mut self, delta: Pages) -> Result<Pages, MemoryError> {
        let current = self.inner.size();
        if self.refuse(u64::from(current.0) + u64::from(delta.0)) {
            return Err(MemoryError::CouldNotGrow {
                current,
                attempted_delta: delta,
            });
        }
        self.inner.grow(delta)
    }

    fn grow_at_least(&mut self, min_size: u64) -> Result<(), MemoryError> {
        let pages = min_size.div_ceil(WASM_PAGE_SIZE as u64);
        if pages > u64::from(self.inner.size().0) && self.refuse(pages) {
            let current = self.inner.size();
            let delta = u32::try_from(pages - u64::from(current.0)).unwrap_or(u32::MAX);
            return Err(MemoryError::CouldNotGrow {
                current,
                attempted_delta: Pages(delta),
            });
        }
        self.inner.grow_at_least(min_size)
    }

    fn reset(&mut self) -> Result<(), MemoryError> {
        self.inner.reset()
    }

    fn vmmemory(&self) -> NonNull<VMMemoryDefinition> {
        self.inner.vmmemory()
    }

    fn try_clone(&self) -> Result<Box<dyn LinearMemory + 'static>, MemoryError> {
        Ok(Box::new(LimitedMemory {
            inner: VMMemory(self.inner.try_clone()?),
            limit_pages: self.limit_pages,
            declared_max: self.declared_max,
            refused: self.refused.clone(),
        }))
    }

    unsafe fn initialize_with_data(&self, start: usize, data: &[u8]) -> Result<(), Trap> {
        // SAFETY: forwarded from our caller.
        unsafe { self.inner.initialize_with_data(start, data) }
    }

    // `do_wait` / `do_notify` / `thread_conditions` are deliberately not forwarded: a task has
    // a single thread, so `memory.atomic.wait` could only block forever; with the trait's
    // default it traps instead.

    fn copy(&mut self) -> Result<Box<dyn LinearMemory + 'static>, MemoryError> {
        Ok(Box::new(LimitedMemory {
            inner: VMMemory(self.inner.copy()?),
            limit_pages: self.limit_pages,
            declared_max: self.declared_max,
            refused: self.refused.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::time::Instant;

    const MIB: u64 = 1 << 20;

    fn limits() -> Limits {
        Limits {
            memory_bytes: 64 * MIB,
            max_stdout: 1 << 20,
            max_stderr_tail: 4096,
        }
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
        fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn sha(wasm: &[u8]) -> String {
        hex::encode(Sha256::digest(wasm))
    }

    /// A temporary cache directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let dir = std::env::temp_dir().join(format!(
                "bx3-runtime-test-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn runtime() -> (Runtime, TempDir) {
        let dir = TempDir::new();
        (Runtime::new(dir.0.clone()).unwrap(), dir)
    }

    fn job<'a>(
        argv: &'a [String],
        env: &'a [(String, String)],
        stdin: &'a [u8],
        limits: Limits,
    ) -> Job<'a> {
        Job {
            argv,
            env,
            stdin,
            limits,
        }
    }

    fn run_with(wasm: &[u8], argv: &[&str], stdin: &[u8], limits: Limits) -> Outcome {
        let (mut rt, _dir) = runtime();
        let hash = sha(wasm);
        rt.prepare(&hash, wasm).unwrap();
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        rt.run(&hash, &job(&argv, &[], stdin, limits)).unwrap()
    }

    fn run(name: &str) -> Outcome {
        run_with(&fixture(name), &["prog"], b"", limits())
    }

    fn stdout(o: Outcome) -> Vec<u8> {
        match o {
            Outcome::Success { stdout, .. } => stdout,
            other => panic!("expected success, got {other:?}"),
        }
    }

    #[test]
    fn runtime_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Runtime>();
        check::<Outcome>();
        check::<ExecError>();
    }

    #[test]
    fn hello_writes_stdout() {
        assert_eq!(stdout(run("hello")), b"hello, world\n");
    }

    #[test]
    fn trivial_module_succeeds_with_empty_stdout() {
        assert_eq!(stdout(run("trivial")), b"");
    }

    #[test]
    fn argv_and_env_are_visible() {
        let wasm = fixture("args");
        let (mut rt, _dir) = runtime();
        let hash = sha(&wasm);
        rt.prepare(&hash, &wasm).unwrap();
        let argv = vec!["prog".to_string(), "a b".to_string(), "ü".to_string()];
        let env = vec![
            ("K".to_string(), "v".to_string()),
            ("EMPTY".to_string(), String::new()),
        ];
        let out = stdout(rt.run(&hash, &job(&argv, &env, b"", limits())).unwrap());
        // args blob, environ blob, then the first byte at every argv[i] pointer.
        let mut expected = "prog\0a b\0ü\0K=v\0EMPTY=\0pa".as_bytes().to_vec();
        expected.push("ü".as_bytes()[0]);
        assert_eq!(out, expected);
        // no args, no env
        let out = stdout(rt.run(&hash, &job(&[], &[], b"", limits())).unwrap());
        assert_eq!(out, b"");
    }

    #[test]
    fn stdin_is_readable() {
        let input: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            stdout(run_with(&fixture("cat"), &["cat"], &input, limits())),
            input
        );
        assert_eq!(
            stdout(run_with(&fixture("cat"), &["cat"], b"", limits())),
            b""
        );
    }

    #[test]
    fn proc_exit_nonzero_is_exit_with_stderr_tail() {
        assert_eq!(
            run("exit3"),
            Outcome::Exit {
                code: 3,
                stderr_tail: "oops\n".into()
            }
        );
    }

    #[test]
    fn proc_exit_zero_is_success() {
        assert_eq!(stdout(run("exit0")), b"bye\n");
    }

    #[test]
    fn unreachable_is_a_trap() {
        match run("trap") {
            Outcome::Trap {
                message,
                stderr_tail,
            } => {
                assert!(message.contains("unreachable"), "{message}");
                assert_eq!(stderr_tail, "about to trap\n");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn proc_raise_is_a_trap() {
        match run("raise") {
            Outcome::Trap { message, .. } => {
                assert!(message.contains("proc_raise(6)"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn proc_exit_in_a_start_section() {
        assert_eq!(
            run("startsec"),
            Outcome::Exit {
                code: 7,
                stderr_tail: String::new()
            }
        );
    }

    #[test]
    fn huge_table_is_refused() {
        assert!(matches!(run("bigtable"), Outcome::MemoryExceeded { .. }));
    }

    #[test]
    fn atomic_wait_traps_instead_of_hanging() {
        match run("atomicwait") {
            Outcome::Trap { .. } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stack_exhaustion_is_a_trap() {
        match run("recurse") {
            Outcome::Trap { message, .. } => {
                assert!(message.contains("call stack exhausted"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn growing_past_the_limit_is_memory_exceeded() {
        let limits = Limits {
            memory_bytes: 2 * MIB,
            ..limits()
        };
        match run_with(&fixture("grow"), &["grow"], b"", limits) {
            Outcome::MemoryExceeded { limit_bytes, .. } => assert_eq!(limit_bytes, 2 * MIB),
            other => panic!("{other:?}"),
        }
        // The same module with room to spare: grow.wat stops at 64 pages (4 MiB) and succeeds.
        let limits = Limits {
            memory_bytes: 8 * MIB,
            ..limits
        };
        assert_eq!(
            stdout(run_with(&fixture("grow"), &["grow"], b"", limits)),
            b"grew\n"
        );
    }

    #[test]
    fn module_own_maximum_is_not_memory_exceeded() {
        // (memory 1 2): grow to 3 pages fails because of the module's own maximum -> it traps.
        match run("ownmax") {
            Outcome::Trap { message, .. } => assert!(message.contains("unreachable"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn minimum_above_the_limit_is_memory_exceeded() {
        let limits = Limits {
            memory_bytes: 2 * MIB,
            ..limits()
        };
        assert!(matches!(
            run_with(&fixture("bigmem"), &["x"], b"", limits),
            Outcome::MemoryExceeded { limit_bytes, .. } if limit_bytes == 2 * MIB
        ));
    }

    #[test]
    fn stdout_flood_is_stopped_quickly() {
        let limits = Limits {
            max_stdout: 1 << 20,
            ..limits()
        };
        let t = Instant::now();
        let o = run_with(&fixture("flood"), &["flood"], b"", limits);
        assert_eq!(
            o,
            Outcome::OutputTooLarge {
                limit_bytes: 1 << 20
            }
        );
        assert!(t.elapsed().as_secs() < 5);
        // exactly at the limit is fine: flood writes 64 KiB chunks forever, so 16 chunks fit
        // in 1 MiB and the 17th is refused.
    }

    #[test]
    fn stderr_keeps_only_the_tail() {
        let limits = Limits {
            max_stderr_tail: 16,
            ..limits()
        };
        match run_with(&fixture("errflood"), &["x"], b"", limits) {
            Outcome::Exit {
                code: 1,
                stderr_tail,
            } => assert_eq!(stderr_tail, "89ABCDEFGHIJEND\n"),
            other => panic!("{other:?}"),
        }
        let limits = Limits {
            max_stderr_tail: 0,
            ..limits
        };
        assert_eq!(
            run_with(&fixture("errflood"), &["x"], b"", limits),
            Outcome::Exit {
                code: 1,
                stderr_tail: String::new()
            }
        );
    }

    #[test]
    fn env_import_is_bad_import() {
        let wasm = fixture("envimport");
        let (mut rt, _dir) = runtime();
        match rt.prepare(&sha(&wasm), &wasm) {
            Err(ExecError::BadImport { module, name }) => {
                assert_eq!((module.as_str(), name.as_str()), ("env", "foo"))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_module(&wasm),
            Err(ExecError::BadImport { .. })
        ));
    }

    #[test]
    fn missing_start_is_not_command() {
        let wasm = fixture("nostart");
        let (mut rt, _dir) = runtime();
        assert!(matches!(
            rt.prepare(&sha(&wasm), &wasm),
            Err(ExecError::NotCommand)
        ));
        assert!(matches!(check_module(&wasm), Err(ExecError::NotCommand)));
        // _start with the wrong type is not a command either
        let wasm = fixture("badstart");
        assert!(matches!(check_module(&wasm), Err(ExecError::NotCommand)));
    }

    #[test]
    fn several_problems_are_all_reported() {
        let wasm = fixture("manyproblems");
        match check_module(&wasm) {
            Err(ExecError::Invalid(problems)) => {
                let text = ExecError::Invalid(problems).to_string();
                assert!(text.contains("_start"), "{text}");
                assert!(text.contains("env.foo"), "{text}");
                assert!(text.contains("wasi_snapshot_preview1.fd_write"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrong_wasi_signature_is_rejected() {
        let wasm = fixture("badsig");
        let (mut rt, _dir) = runtime();
        match rt.prepare(&sha(&wasm), &wasm) {
            Err(ExecError::BadImportType { name, .. }) => assert_eq!(name, "fd_write"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_a_compile_error() {
        let wasm = b"definitely not wasm".to_vec();
        let (mut rt, _dir) = runtime();
        // Not wasm at all: said in words, in one line (wasmer's own message dumps the bytes).
        let err = rt.prepare(&sha(&wasm), &wasm).expect_err("not wasm");
        assert!(matches!(err, ExecError::NotWasm(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "not a WebAssembly module (a .wasm file starts with \\0asm); this looks like a text file"
        );
        assert!(matches!(check_module(&wasm), Err(ExecError::NotWasm(_))));
        assert!(matches!(check_module(b"\0as"), Err(ExecError::NotWasm(_))));
        let component = b"\0asm\x0d\0\x01\0";
        let err = check_module(component).expect_err("a component");
        assert!(err.to_string().contains("wasm32-wasip1"), "{err}");
        // valid header, broken body
        let mut wasm = fixture("hello");
        let n = wasm.len();
        wasm.truncate(n - 3);
        assert!(matches!(
            rt.prepare(&sha(&wasm), &wasm),
            Err(ExecError::Compile(_))
        ));
        assert!(matches!(check_module(&wasm), Err(ExecError::Compile(_))));
    }

    #[test]
    fn good_modules_pass_check_module() {
        for name in ["hello", "args", "cat", "misc", "unsupported", "trivial"] {
            check_module(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn hashes_are_checked() {
        let wasm = fixture("hello");
        let (mut rt, _dir) = runtime();
        assert!(matches!(
            rt.prepare("../../etc/passwd", &wasm),
            Err(ExecError::BadHash(_))
        ));
        assert!(matches!(rt.load_cached("ABC"), Err(ExecError::BadHash(_))));
        let other = sha(b"something else");
        assert!(matches!(
            rt.prepare(&other, &wasm),
            Err(ExecError::HashMismatch { .. })
        ));
        assert!(matches!(
            rt.run(&other, &job(&[], &[], b"", limits())),
            Err(ExecError::NotPrepared(_))
        ));
    }

    #[test]
    fn disk_cache_survives_a_new_runtime() {
        let wasm = fixture("hello");
        let hash = sha(&wasm);
        let dir = TempDir::new();
        {
            let mut rt = Runtime::new(dir.0.clone()).unwrap();
            assert!(!rt.load_cached(&hash).unwrap());
            rt.prepare(&hash, &wasm).unwrap();
            assert!(rt.load_cached(&hash).unwrap());
        }
        let files: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}"); // no leftover temp files
        let name = files[0].to_string_lossy().into_owned();
        assert!(
            name.starts_with(&format!("{hash}-w{WASMER_VERSION}-")) && name.ends_with(".bin"),
            "{name}"
        );

        let mut rt = Runtime::new(dir.0.clone()).unwrap();
        assert!(rt.load_cached(&hash).unwrap());
        assert_eq!(
            stdout(rt.run(&hash, &job(&[], &[], b"", limits())).unwrap()),
            b"hello, world\n"
        );
    }

    #[test]
    fn corrupt_cache_file_is_recompiled() {
        let wasm = fixture("hello");
        let hash = sha(&wasm);
        let dir = TempDir::new();
        let path = {
            let mut rt = Runtime::new(dir.0.clone()).unwrap();
            rt.prepare(&hash, &wasm).unwrap();
            rt.cache_path(&hash)
        };
        let good = fs::read(&path).unwrap();
        let corruptions: Vec<Vec<u8>> = vec![
            b"garbage".to_vec(),
            Vec::new(),
            good[..good.len() / 2].to_vec(),
            {
                let mut v = good.clone();
                v[good.len() / 3] ^= 0x40; // one flipped bit in the payload
                v
            },
        ];
        for bad in corruptions {
            fs::write(&path, &bad).unwrap();
            let mut rt = Runtime::new(dir.0.clone()).unwrap();
            assert!(!rt.load_cached(&hash).unwrap());
            fs::write(&path, &bad).unwrap();
            rt.prepare(&hash, &wasm).unwrap();
            assert_eq!(
                stdout(rt.run(&hash, &job(&[], &[], b"", limits())).unwrap()),
                b"hello, world\n"
            );
            assert_eq!(
                fs::read(&path).unwrap().len(),
                good.len(),
                "cache file rewritten"
            );
        }
    }

    #[test]
    fn bad_pointers_get_efault() {
        // badptr.wat checks every call returns EFAULT (21) and prints "ok"; a host panic
        // would abort the test.
        assert_eq!(stdout(run("badptr")), b"ok\n");
    }

    #[test]
    fn misc_wasi_calls() {
        // misc.wat exits with a distinct code for each failed check, else prints 16 random bytes.
        let a = stdout(run("misc"));
        let b = stdout(run("misc"));
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }

    #[test]
    fn unsupported_wasi_functions_link() {
        // path_open returns ENOSYS; the module prints "ok" and then calls a made-up function
        // without an errno result, which traps with a clear message.
        let o = run("unsupported");
        match o {
            Outcome::Trap {
                message,
                stderr_tail,
            } => {
                assert_eq!(message, "WASI function bx3_nope is not supported by bx3");
                assert_eq!(stderr_tail, "ok\n");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn runs_do_not_share_state() {
        // counter.wat increments a global and a memory cell and prints both.
        let wasm = fixture("counter");
        let (mut rt, _dir) = runtime();
        let hash = sha(&wasm);
        rt.prepare(&hash, &wasm).unwrap();
        for _ in 0..3 {
            assert_eq!(
                stdout(rt.run(&hash, &job(&[], &[], b"", limits())).unwrap()),
                b"11"
            );
        }
    }

    /// Rust std modules built for wasm32-wasip1 (by the examples in /wasm_modules), if present.
    fn example(name: &str) -> Option<Vec<u8>> {
        let path = format!("{}/../wasm_modules/{name}.wasm", env!("CARGO_MANIFEST_DIR"));
        match fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                eprintln!("skipping: {path} not built");
                None
            }
        }
    }

    /// Runs the example modules of `/wasm_modules` (Rust std on wasm32-wasip1 and WAT), when
    /// they are there; checks the reference outputs of `wasm_modules/README.md`.
    #[test]
    fn example_modules_run() {
        let (mut rt, _dir) = runtime();
        let mut run =
            |name: &str, inputs: &[&str], env: &[(&str, &str)], stdin: &[u8], limits: Limits| {
                let wasm = example(name)?;
                check_module(&wasm).unwrap_or_else(|e| panic!("{name}: {e}"));
                let hash = sha(&wasm);
                rt.prepare(&hash, &wasm).unwrap();
                let mut argv = vec![format!("{name}.wasm")];
                argv.extend(inputs.iter().map(|s| s.to_string()));
                let env: Vec<(String, String)> = env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                Some(rt.run(&hash, &job(&argv, &env, stdin, limits)).unwrap())
            };
        let l = limits();
        let text = |o: Outcome| String::from_utf8(stdout(o)).unwrap().trim_end().to_owned();
        if let Some(o) = run("echo", &["hello", "wörld"], &[], b"", l) {
            assert_eq!(stdout(o), "hello wörld".as_bytes());
        }
        if let Some(o) = run("echo", &[], &[], b"from\xffstdin\n", l) {
            assert_eq!(stdout(o), b"from\xffstdin\n"); // fd_read, bytes unchanged
        }
        if let Some(o) = run("sum", &["1", "2 3", "-10", "+4"], &[], b"", l) {
            assert_eq!(text(o), "0");
        }
        if let Some(o) = run("sum", &["1", "2 x3"], &[], b"", l) {
            match o {
                Outcome::Exit {
                    code: 2,
                    stderr_tail,
                } => assert!(stderr_tail.contains("x3"), "{stderr_tail}"),
                other => panic!("{other:?}"),
            }
        }
        if let Some(o) = run("greet_1", &["world"], &[], b"", l) {
            assert_eq!(text(o), "Hello, world!");
        }
        if let Some(o) = run("greet_1", &["bx3"], &[("GREETING", "Howdy")], b"", l) {
            assert_eq!(text(o), "Howdy, bx3!");
        }
        if let Some(o) = run("sha256", &["abc"], &[], b"", l) {
            assert_eq!(
                text(o),
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            );
        }
        if let Some(o) = run("exit_code", &["disk on fire"], &[], b"", l) {
            assert_eq!(
                o,
                Outcome::Exit {
                    code: 3,
                    stderr_tail: "something went wrong: disk on fire\n".into()
                }
            );
        }
        if let Some(o) = run("big_output", &[], &[], b"", l) {
            assert_eq!(stdout(o).len(), 1 << 20);
        }
        if let Some(o) = run("big_output", &["2000000"], &[], b"", l) {
            assert_eq!(
                o,
                Outcome::OutputTooLarge {
                    limit_bytes: 1 << 20
                }
            );
        }
        if let Some(o) = run("noop", &[], &[], b"", l) {
            assert_eq!(stdout(o), b"");
        }
        if let Some(o) = run("trap", &[], &[], b"", l) {
            assert!(
                matches!(o, Outcome::Trap { ref message, .. } if message.contains("unreachable")),
                "{o:?}"
            );
        }
        if let Some(o) = run(
            "memory_bomb",
            &[],
            &[],
            b"",
            Limits {
                memory_bytes: 32 * MIB,
                ..l
            },
        ) {
            assert!(
                matches!(o, Outcome::MemoryExceeded { limit_bytes, .. } if limit_bytes == 32 * MIB),
                "{o:?}"
            );
        }
        if let Some(o) = run("stdout_flood", &[], &[], b"", l) {
            assert_eq!(
                o,
                Outcome::OutputTooLarge {
                    limit_bytes: 1 << 20
                }
            );
        }
    }

    /// `cargo test --release -- --ignored bench --nocapture`
    #[test]
    #[ignore]
    fn bench_trivial_run() {
        let wasm = fixture("trivial");
        let (mut rt, _dir) = runtime();
        let hash = sha(&wasm);
        rt.prepare(&hash, &wasm).unwrap();
        let argv = vec!["prog".to_string()];
        let j = job(&argv, &[], b"", limits());
        for _ in 0..200 {
            rt.run(&hash, &j).unwrap();
        }
        let mut times: Vec<f64> = (0..2000)
            .map(|_| {
                let t = Instant::now();
                let o = rt.run(&hash, &j).unwrap();
                let dt = t.elapsed().as_secs_f64() * 1e6;
                assert!(matches!(o, Outcome::Success { .. }));
                dt
            })
            .collect();
        times.sort_by(f64::total_cmp);
        eprintln!(
            "trivial run: median {:.1} µs, p10 {:.1} µs, p90 {:.1} µs",
            times[1000], times[200], times[1800]
        );

        phases(&rt, &hash, &argv);
    }

    /// Where the time of a run goes (the same steps as `run`), medians over 2,000 runs.
    fn phases(rt: &Runtime, hash: &str, argv: &[String]) {
        let prepared = rt.modules.get(hash).unwrap();
        let mut phases = [(); 6].map(|()| Vec::new());
        for _ in 0..2000 {
            let t0 = Instant::now();
            let mut store = Store::new(rt.engine.clone());
            let t1 = Instant::now();
            let env = FunctionEnv::new(&mut store, WasiCtx::new(argv, &[], b"", 1 << 20, 4096));
            let externs: Vec<Extern> = prepared
                .imports
                .iter()
                .map(|p| wasi::make_function(&mut store, &env, p))
                .collect();
            let t2 = Instant::now();
            let refused = Arc::new(AtomicBool::new(false));
            let instance = {
                let _g = JobMemory::enter(1024, refused);
                Instance::new_by_index(&mut store, &prepared.module, &externs).unwrap()
            };
            let t3 = Instant::now();
            let memory = instance.exports.get_memory("memory").ok().cloned();
            env.as_mut(&mut store).set_memory(memory);
            let start = instance
                .exports
                .get_typed_function::<(), ()>(&store, "_start")
                .unwrap();
            let t4 = Instant::now();
            let _ = start.call(&mut store);
            let t5 = Instant::now();
            drop((instance, start, store));
            let t6 = Instant::now();
            let spans = [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6)];
            for (i, (a, b)) in spans.into_iter().enumerate() {
                phases[i].push((b - a).as_secs_f64() * 1e6);
            }
        }
        let names = [
            "Store::new",
            "env + imports",
            "instantiate",
            "exports lookup",
            "call _start",
            "drop",
        ];
        for (name, mut v) in names.into_iter().zip(phases) {
            v.sort_by(f64::total_cmp);
            eprintln!("  {name:>15}: median {:.2} µs", v[v.len() / 2]);
        }
    }

    /// `cargo test --release -- --ignored bench --nocapture`
    #[test]
    #[ignore]
    fn bench_compile_vs_cached_load() {
        let Some(wasm) = example("wc_map").or_else(|| example("sum")) else {
            return;
        };
        let hash = sha(&wasm);
        let dir = TempDir::new();
        let t = Instant::now();
        Runtime::new(dir.0.clone())
            .unwrap()
            .prepare(&hash, &wasm)
            .unwrap();
        let compile = t.elapsed();
        let mut loads = Vec::new();
        for _ in 0..20 {
            let mut rt = Runtime::new(dir.0.clone()).unwrap();
            let t = Instant::now();
            assert!(rt.load_cached(&hash).unwrap());
            loads.push(t.elapsed().as_secs_f64() * 1e3);
        }
        loads.sort_by(f64::total_cmp);
        let size = fs::metadata(Runtime::new(dir.0.clone()).unwrap().cache_path(&hash))
            .unwrap()
            .len();
        eprintln!(
            "module {} KiB: compile+check+cache-write {:.1} ms; load_cached from disk median {:.2} ms (cache file {} KiB)",
            wasm.len() / 1024,
            compile.as_secs_f64() * 1e3,
            loads[loads.len() / 2],
            size / 1024
        );
        let mut rt = Runtime::new(dir.0.clone()).unwrap();
        rt.load_cached(&hash).unwrap();
        let argv = vec!["wc_map.wasm".to_string(), "the cat, the hat".to_string()];
        let j = job(&argv, &[], b"", limits());
        let mut times: Vec<f64> = (0..500)
            .map(|_| {
                let t = Instant::now();
                rt.run(&hash, &j).unwrap();
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        eprintln!("rust module run: median {:.1} µs", times[250]);
        phases(&rt, &hash, &argv);
    }
}
