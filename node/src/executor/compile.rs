//! The node's one module compiler: every module from an upload or a peer is checked and
//! compiled here, a bounded number at a time, each in a child process of its own.
//!
//! ```text
//!  api (PUT /v1/modules) ──┐                       ┌─ bx3-node __compile --hash H (stdin: bytes)
//!  peer fetch (mesh) ──────┼─▶ Compiler::compile ──┤    rlimits: CPU time, address space
//!  executor pool (ensure) ─┘   dedup by hash,      └─ writes <data-dir>/compiled/H-<tag>.bin
//!                              N slots, wall timeout
//! ```
//!
//! Why a process: compiling costs CPU and memory roughly in proportion to what the module
//! declares, and a module is data from a stranger. An 800 KB module with 200,000 empty
//! functions took 3.4 s of CPU and 300 MB in the node; in a child it costs the child, which
//! is limited in CPU time and address space and killed after a wall-clock limit, and the
//! node's async threads never wait on it. Modules over the function/code budget
//! ([`runtime::check_budget`]) are refused before any of that, in the node, from the section
//! headers alone. Concurrent requests for one hash share one compilation.
//!
//! The executor processes load the artifacts from the shared cache; they only compile
//! themselves if an artifact vanished (and they are processes with a timeout too).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OnceCell, Semaphore};

use super::runtime::{self, ExecError, Runtime};
use crate::store::modules::sha256_hex;

/// Limits of one compile process.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Killed by the node after this long.
    pub wall: Duration,
    /// `RLIMIT_CPU` of the process, seconds.
    pub cpu_secs: u64,
    /// `RLIMIT_AS` of the process, bytes.
    pub address_space: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            wall: Duration::from_secs(120),
            cpu_secs: 60,
            address_space: 2 << 30,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    /// The module itself is refused (not wasm, not a WASI command, over the budget, ...).
    #[error("{0}")]
    Refused(String),
    /// The compile process was stopped: over its time or memory limit, or killed.
    #[error("compiling it {0}")]
    Stopped(String),
    /// The node could not run the compile process.
    #[error("could not compile it: {0}")]
    Host(String),
}

/// One compilation that concurrent requests for the same hash wait on together.
type Shared = Arc<OnceCell<Result<(), CompileError>>>;

/// Handle to the compile service (cheap to clone).
#[derive(Clone)]
pub struct Compiler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler")
            .field("exe", &self.inner.exe)
            .field("cache_dir", &self.inner.cache_dir)
            .field("limits", &self.inner.limits)
            .finish()
    }
}

struct Inner {
    /// `bx3-node` to run as `__compile`; `None` compiles in this process on the blocking
    /// pool (unit tests, which have no binary).
    exe: Option<PathBuf>,
    /// A program the compile process is started through (`--executor-wrapper`, e.g. an
    /// emulator); empty: none.
    wrapper: Vec<String>,
    /// Where artifacts go (`<data-dir>/compiled`), shared with the executor processes.
    cache_dir: PathBuf,
    slots: Semaphore,
    limits: Limits,
    /// Compilations under way, by hash: a second request for one waits for the first.
    inflight: Mutex<HashMap<String, Shared>>,
    /// Hashes known to be in the cache, so the check before every job is a lookup, not a
    /// stat. (An executor that finds an artifact unusable recompiles it itself.)
    compiled: Mutex<HashSet<String>>,
}

impl Compiler {
    /// A compiler running `exe __compile` processes, `slots` at a time.
    pub fn new(exe: Option<PathBuf>, cache_dir: PathBuf, slots: usize, limits: Limits) -> Compiler {
        Compiler {
            inner: Arc::new(Inner {
                exe,
                wrapper: Vec::new(),
                cache_dir,
                slots: Semaphore::new(slots.max(1)),
                limits,
                inflight: Mutex::new(HashMap::new()),
                compiled: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Starts its processes through `wrapper` (as executors are). Call it before the
    /// compiler is cloned; on a shared one it changes nothing and says so.
    pub fn with_wrapper(mut self, wrapper: Vec<String>) -> Compiler {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.wrapper = wrapper,
            None => tracing::warn!("compile wrapper set on a shared compiler; ignored"),
        }
        self
    }

    /// How many compilations may run at once on this machine: half the cores, 1 to 4.
    pub fn default_slots() -> usize {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 2)
            .clamp(1, 4)
    }

    pub fn cache_dir(&self) -> &Path {
        &self.inner.cache_dir
    }

    /// Whether an artifact for `hash` is in the cache (known, or a stat on the blocking pool).
    pub async fn is_compiled(&self, hash: &str) -> bool {
        if self.compiled_set().contains(hash) {
            return true;
        }
        let path = runtime::artifact_path(&self.inner.cache_dir, hash);
        let present = tokio::task::spawn_blocking(move || path.is_file())
            .await
            .unwrap_or(false);
        if present {
            self.compiled_set().insert(hash.to_string());
        }
        present
    }

    fn compiled_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.inner
            .compiled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Checks and compiles `wasm` (whose SHA-256 is `hash`) into the cache, unless it is
    /// there already. Concurrent calls for one hash share one compilation.
    pub async fn compile(&self, hash: &str, wasm: Arc<Vec<u8>>) -> Result<(), CompileError> {
        // Hashing 64 MiB takes a while: on the blocking pool, with the header scan.
        let (h, w) = (hash.to_string(), Arc::clone(&wasm));
        tokio::task::spawn_blocking(move || {
            if sha256_hex(&w) != h {
                return Err(CompileError::Refused(format!(
                    "the bytes do not match the module hash {h}"
                )));
            }
            runtime::check_budget(&w).map_err(|e| CompileError::Refused(e.to_string()))
        })
        .await
        .map_err(|e| CompileError::Host(e.to_string()))??;
        if self.is_compiled(hash).await {
            return Ok(());
        }
        let cell = {
            let mut inflight = self
                .inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            Arc::clone(inflight.entry(hash.to_string()).or_default())
        };
        let result = cell
            .get_or_init(|| async {
                let Ok(_slot) = self.inner.slots.acquire().await else {
                    return Err(CompileError::Host("the node is shutting down".into()));
                };
                match &self.inner.exe {
                    Some(exe) => self.in_child(exe, hash, &wasm).await,
                    None => self.in_process(hash, Arc::clone(&wasm)).await,
                }
            })
            .await
            .clone();
        // Done (either way): the next request for this hash looks at the cache again.
        self.inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
        if result.is_ok() {
            self.compiled_set().insert(hash.to_string());
        }
        result
    }

    async fn in_child(&self, exe: &Path, hash: &str, wasm: &[u8]) -> Result<(), CompileError> {
        let limits = self.inner.limits;
        let mut cmd = match self.inner.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = tokio::process::Command::new(program);
                c.args(args).arg(exe);
                c
            }
            None => tokio::process::Command::new(exe),
        };
        cmd.arg("__compile")
            .arg("--cache-dir")
            .arg(&self.inner.cache_dir)
            .arg("--hash")
            .arg(hash)
            .arg("--cpu-secs")
            .arg(limits.cpu_secs.to_string())
            .arg("--address-space")
            .arg(limits.address_space.to_string())
            // One compile is one core (the slots bound how many run), and its address space
            // stays predictable on machines with many cores: cranelift compiles functions on
            // rayon's pool (a thread per core by default), and glibc reserves an arena of
            // 64 MiB of address space per thread.
            .env("RAYON_NUM_THREADS", "1")
            .env("MALLOC_ARENA_MAX", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| CompileError::Host(format!("cannot start {}: {e}", exe.display())))?;
        let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(CompileError::Host("compile process has no pipes".into()));
        };
        let run = async {
            // A child that dies early closes its stdin: its exit status says why.
            let _ = stdin.write_all(wasm).await;
            drop(stdin);
            let mut answer = Vec::new();
            let _ = (&mut stdout).take(64 * 1024).read_to_end(&mut answer).await;
            let status = child.wait().await;
            (status, answer)
        };
        let (status, answer) = match tokio::time::timeout(limits.wall, run).await {
            Ok(done) => done,
            Err(_) => {
                // Returning drops `child`, which kills it (`kill_on_drop`).
                return Err(CompileError::Stopped(format!(
                    "took longer than {} s and was stopped",
                    limits.wall.as_secs()
                )));
            }
        };
        let status = status.map_err(|e| CompileError::Host(e.to_string()))?;
        let message = String::from_utf8_lossy(&answer).trim().to_string();
        if status.success() {
            return Ok(());
        }
        if status.code() == Some(CHILD_REFUSED) && !message.is_empty() {
            return Err(CompileError::Refused(message));
        }
        use std::os::unix::process::ExitStatusExt;
        Err(CompileError::Stopped(match status.signal() {
            Some(SIGXCPU) | Some(SIGKILL_NUM) => format!(
                "used more than {} s of CPU time and was stopped",
                limits.cpu_secs
            ),
            Some(sig) => format!("was stopped by signal {sig} (out of memory?)"),
            None if message.is_empty() => format!("failed ({status})"),
            None => message,
        }))
    }

    async fn in_process(&self, hash: &str, wasm: Arc<Vec<u8>>) -> Result<(), CompileError> {
        let dir = self.inner.cache_dir.clone();
        let hash = hash.to_string();
        tokio::task::spawn_blocking(move || {
            Runtime::new(dir)
                .and_then(|mut rt| rt.prepare(&hash, &wasm))
                .map_err(refusal)
        })
        .await
        .map_err(|e| CompileError::Host(format!("compiler thread failed: {e}")))?
    }
}

const SIGXCPU: i32 = 24;
const SIGKILL_NUM: i32 = 9;

/// Exit status of a compile process that refused the module (its reason on stdout).
const CHILD_REFUSED: i32 = 1;

fn refusal(e: ExecError) -> CompileError {
    match e {
        ExecError::Cache(io) => CompileError::Host(io.to_string()),
        other => CompileError::Refused(other.to_string()),
    }
}

/// The compile process (`bx3-node __compile`): limits itself, reads the module from stdin,
/// checks and compiles it into `cache_dir`. Exit 0: compiled (or already cached); exit 1:
/// refused, the reason on stdout; anything else: it failed or was stopped.
pub fn serve_child(cache_dir: &Path, hash: &str, cpu_secs: u64, address_space: u64) -> i32 {
    use std::io::{Read, Write};
    // Compiling is CPU-heavy; heartbeats and the API come first (as for executors).
    let _ = crate::executor::lower_thread_priority();
    if let Err(e) = limit_self(cpu_secs, address_space) {
        let _ = writeln!(std::io::stdout(), "cannot limit the compile process: {e}");
        return 3;
    }
    let mut wasm = Vec::new();
    let max = crate::api::MAX_MODULE_BYTES as u64 + 1;
    if let Err(e) = std::io::stdin().take(max).read_to_end(&mut wasm) {
        let _ = writeln!(std::io::stdout(), "cannot read the module: {e}");
        return 3;
    }
    if wasm.len() as u64 >= max {
        let _ = writeln!(std::io::stdout(), "the module is over the size limit");
        return CHILD_REFUSED;
    }
    let outcome = Runtime::new(cache_dir.to_path_buf()).and_then(|mut rt| rt.prepare(hash, &wasm));
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(std::io::stdout(), "{e}");
            match e {
                ExecError::Cache(_) => 3,
                _ => CHILD_REFUSED,
            }
        }
    }
}

fn limit_self(cpu_secs: u64, address_space: u64) -> std::io::Result<()> {
    let set = |resource, value: u64| {
        let limit = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: setrlimit only reads the struct passed by reference; it changes this
        // process's limits, which is the point.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::RLIMIT_CPU, cpu_secs)?;
    set(libc::RLIMIT_AS, address_space)?;
    // No core dumps of a process killed for its limits.
    set(libc::RLIMIT_CORE, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../wasm_modules")
                .join(name),
        )
        .expect("example module")
    }

    #[tokio::test]
    async fn compiles_once_and_refuses_with_reasons() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Compiler::new(None, dir.path().join("compiled"), 1, Limits::default());
        let echo = Arc::new(fixture("echo.wasm"));
        let hash = sha256_hex(&echo);
        let (a, b) = tokio::join!(
            c.compile(&hash, Arc::clone(&echo)),
            c.compile(&hash, Arc::clone(&echo))
        );
        assert_eq!((a, b), (Ok(()), Ok(())));
        assert!(c.is_compiled(&hash).await);

        let err = c
            .compile(&"0".repeat(64), Arc::clone(&echo))
            .await
            .expect_err("wrong hash");
        assert!(matches!(err, CompileError::Refused(_)), "{err}");
        let junk = Arc::new(b"\0asm\x01\0\0\0garbage".to_vec());
        let err = c.compile(&sha256_hex(&junk), junk).await.expect_err("junk");
        assert!(matches!(err, CompileError::Refused(_)), "{err}");
    }

    /// An 800 KB module with 200,000 empty functions is refused from its headers, before
    /// any compilation, naming the count and the limit.
    #[tokio::test]
    async fn a_module_over_the_function_budget_is_refused_before_compiling() {
        let wasm = Arc::new(many_functions(200_000));
        assert!(wasm.len() < 1_000_000, "{} bytes", wasm.len());
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Compiler::new(None, dir.path().join("compiled"), 1, Limits::default());
        let started = std::time::Instant::now();
        let err = c
            .compile(&sha256_hex(&wasm), wasm)
            .await
            .expect_err("over budget");
        assert!(
            err.to_string().contains("200001 functions")
                && err.to_string().contains("at most 100000"),
            "{err}"
        );
        eprintln!("refused in {:?}", started.elapsed());
    }

    /// A WASI command (`_start`) with `n` more empty functions `[] -> []`.
    pub(crate) fn many_functions(n: u32) -> Vec<u8> {
        fn leb(mut v: u32, out: &mut Vec<u8>) {
            loop {
                let byte = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(byte);
                    return;
                }
                out.push(byte | 0x80);
            }
        }
        fn section(id: u8, body: Vec<u8>, out: &mut Vec<u8>) {
            out.push(id);
            leb(body.len() as u32, out);
            out.extend(body);
        }
        let total = n + 1;
        let mut out = b"\0asm\x01\0\0\0".to_vec();
        section(1, vec![1, 0x60, 0, 0], &mut out); // one type: [] -> []
        let mut funcs = Vec::new();
        leb(total, &mut funcs);
        funcs.extend(std::iter::repeat_n(0u8, total as usize));
        section(3, funcs, &mut out);
        let mut exports = vec![1, 6];
        exports.extend(b"_start");
        exports.extend([0, 0]);
        section(7, exports, &mut out);
        let mut code = Vec::new();
        leb(total, &mut code);
        for _ in 0..total {
            code.extend([2, 0, 0x0b]); // body size 2: no locals, end
        }
        section(10, code, &mut out);
        out
    }
}
