//! Executors: a RAM-sized pool of executor processes running WASI modules on wasmer.
//!
//! ```text
//!  controller ──Job──▶ Pool dispatcher ──spawns──▶ job task ──frame──▶ executor process
//!      ▲                    ▲  (idle list)            │      ◀─frame──   (`__executor`)
//!      └────────Done────────┴──────returns executor───┘
//! ```
//!
//! The controller never sends more jobs than `capacity`, so the dispatcher only has to pair a
//! job with an idle process (or start one). Processes start lazily and idle ones are retired
//! after a while, so an idle node holds no executor processes. A job that passes its timeout,
//! is cancelled, or whose process dies, costs that process: it is killed and a fresh one is
//! started for the next job.

pub mod child;
pub mod compile;
pub mod frame;
pub mod local;
pub mod runtime;
pub mod sizing;
pub mod wasi;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bx3_protocol::ids::DagId;
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::AttemptOutcome;
use frame::{Request, Response};
use sizing::{Capacity, Sizer};

/// How often the executor count is re-evaluated.
const SIZING_INTERVAL: Duration = Duration::from_secs(3);

/// How much lower than the node an executor process runs (`nice` increment): tasks are
/// CPU-bound, and the control plane (heartbeats, gossip, API) must not starve behind them.
pub const EXECUTOR_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority by [`EXECUTOR_NICE`] (on Linux niceness
/// is per thread, and threads it creates afterwards inherit it). For executor processes (at
/// their start) and for CPU-heavy work the node does on a thread of its own, such as compiling
/// a module fetched from a peer: it must not delay heartbeats under load.
pub fn lower_thread_priority() -> std::io::Result<()> {
    // SAFETY: getpriority/setpriority only read and change this thread's scheduling
    // priority; no memory of ours is involved. (getpriority's -1 may be a real value or an
    // error: either way the target below is still a valid niceness, clamped to 19.)
    let result = unsafe {
        let current = libc::getpriority(libc::PRIO_PROCESS, 0);
        let target = current.saturating_add(EXECUTOR_NICE).min(19);
        libc::setpriority(libc::PRIO_PROCESS, 0, target)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A task's stdout beyond this fails the task (outputs travel between nodes; see the mesh).
pub const MAX_OUTPUT: usize = 8 * 1024 * 1024;
/// How much of a task's stderr is kept (for its error message, and in `Done::stderr`).
pub const STDERR_TAIL: usize = 4 * 1024;
/// Idle executor processes older than this are stopped.
const IDLE_RETIRE: Duration = Duration::from_secs(30);

const MB: u64 = 1024 * 1024;

/// One task for the pool.
#[derive(Debug)]
pub struct Job {
    pub dag: DagId,
    pub task: u32,
    pub attempt: u32,
    pub module: String,
    pub request: Request,
    pub timeout: Duration,
    /// Cancelled when the DAG is cancelled: the process running the job is killed.
    pub cancel: CancellationToken,
}

/// How a job ended.
#[derive(Debug)]
pub struct Done {
    pub dag: DagId,
    pub task: u32,
    pub attempt: u32,
    pub outcome: Result<String, String>,
    /// Time inside the executor for the wasm run itself (successful runs only).
    pub run_us: Option<u64>,
    /// The tail of the attempt's stderr (at most [`STDERR_TAIL`] bytes), successful or not;
    /// `None` when it wrote nothing there (or never ran).
    pub stderr: Option<String>,
}

/// Handle to the pool dispatcher.
#[derive(Clone)]
pub struct Pool {
    jobs: mpsc::Sender<Job>,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The bx3-node binary (executors are `bx3-node __executor`).
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    /// Attempts started and finished here, and how long they took.
    pub metrics: crate::metrics::Metrics,
    /// A program (and its arguments) that executor processes are started through, e.g. an
    /// emulator (`qemu-aarch64-static`) when the node itself runs under one; empty: none.
    pub wrapper: Vec<String>,
    /// The executor size (`--ram-per-executor`): no job's memory limit goes above it,
    /// whatever the job asks, since the pool's size was worked out from it.
    pub max_memory_bytes: u64,
    /// The node's compile service: a job's module is compiled through it (once, bounded,
    /// in a limited process) before an executor loads it. `None`: executors compile.
    pub compiler: Option<compile::Compiler>,
}

/// Makes sure the job's module is compiled into the shared cache before an executor loads
/// it, through the compile service. `Err` with the reason if the module cannot run; a module
/// file that is missing is left to the executor, which reports it.
async fn ensure_compiled(config: &PoolConfig, hash: &str) -> Result<(), String> {
    let Some(compiler) = &config.compiler else {
        return Ok(());
    };
    if !crate::store::modules::is_hash(hash) || compiler.is_compiled(hash).await {
        return Ok(());
    }
    let path = config.data_dir.join("modules").join(format!("{hash}.wasm"));
    let bytes = match tokio::task::spawn_blocking(move || std::fs::read(path)).await {
        Ok(Ok(bytes)) => bytes,
        _ => return Ok(()),
    };
    compiler
        .compile(hash, std::sync::Arc::new(bytes))
        .await
        .map_err(|e| e.to_string())
}

impl Pool {
    /// Starts the dispatcher. `done` receives one `Done` per job, always. The returned watch
    /// carries the executor count, re-evaluated from RAM every few seconds.
    pub fn start(
        config: PoolConfig,
        mut sizer: Sizer,
        done: mpsc::Sender<Done>,
        shutdown: CancellationToken,
    ) -> (Pool, watch::Receiver<Capacity>, tokio::task::JoinHandle<()>) {
        let (jobs_tx, jobs_rx) = mpsc::channel(1024);
        let (back_tx, back_rx) = mpsc::channel(1024);
        let (capacity_tx, capacity_rx) = watch::channel(sizer.evaluate(&[]));
        let dispatcher = Dispatcher {
            config,
            jobs: jobs_rx,
            back_tx,
            back: back_rx,
            done,
            idle: Vec::new(),
            sizer,
            capacity: capacity_tx,
            pids: Default::default(),
            shutdown,
        };
        (
            Pool { jobs: jobs_tx },
            capacity_rx,
            tokio::spawn(dispatcher.run()),
        )
    }

    /// Hands a job to the pool. Fails only if the pool has stopped.
    pub async fn submit(&self, job: Job) -> Result<(), Job> {
        self.jobs.send(job).await.map_err(|e| e.0)
    }
}

struct Dispatcher {
    config: PoolConfig,
    jobs: mpsc::Receiver<Job>,
    /// Executors come back here after a job that left them healthy.
    back_tx: mpsc::Sender<Back>,
    back: mpsc::Receiver<Back>,
    done: mpsc::Sender<Done>,
    /// Healthy idle processes, most recently used last.
    idle: Vec<Executor>,
    /// Decides the executor count from RAM.
    sizer: Sizer,
    /// Publishes the executor count to the controller.
    capacity: watch::Sender<Capacity>,
    /// Pids of live executor processes (their RSS counts as available to executors).
    pids: std::collections::HashSet<u32>,
    shutdown: CancellationToken,
}

impl Dispatcher {
    async fn run(mut self) {
        let mut retire = tokio::time::interval(IDLE_RETIRE);
        retire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resize = tokio::time::interval(SIZING_INTERVAL);
        resize.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break,
                Some(back) = self.back.recv() => match back {
                    Back::Idle(ex) => {
                        if self.idle.len() < self.capacity.borrow().executors {
                            self.idle.push(*ex);
                        } else {
                            // The pool shrank: retire this one now that its task is done.
                            self.pids.remove(&ex.pid);
                            tokio::spawn(ex.kill());
                        }
                    }
                    Back::Started(pid) => {
                        self.pids.insert(pid);
                    }
                    Back::Gone(pid) => {
                        self.pids.remove(&pid);
                    }
                },
                Some(job) = self.jobs.recv() => {
                    let ex = self.idle.pop();
                    let ctx = (self.config.clone(), self.back_tx.clone(), self.done.clone());
                    tokio::spawn(run_job(job, ex, ctx));
                }
                _ = resize.tick() => self.resize(),
                _ = retire.tick() => {
                    let before = self.idle.len();
                    let pids = &mut self.pids;
                    self.idle.retain(|e| {
                        let keep = e.last_used.elapsed() < IDLE_RETIRE;
                        if !keep {
                            pids.remove(&e.pid);
                        }
                        keep
                    });
                    if before != self.idle.len() {
                        tracing::debug!(retired = before - self.idle.len(), idle = self.idle.len(), "retired idle executor processes");
                    }
                }
            }
        }
        // Dropping the idle executors kills their processes (kill_on_drop).
    }

    /// Re-evaluates the executor count; a change goes to the controller at once.
    fn resize(&mut self) {
        let pids: Vec<u32> = self.pids.iter().copied().collect();
        let sizer = &mut self.sizer;
        let next = sizer.evaluate(&pids);
        let prev = *self.capacity.borrow();
        if next.executors != prev.executors {
            tracing::info!(
                from = prev.executors,
                to = next.executors,
                available_ram_mb = next.available_ram_mb,
                "executor count changed"
            );
        }
        if next != prev {
            self.capacity.send_replace(next);
        }
        while self.idle.len() > next.executors {
            if let Some(ex) = self.idle.pop() {
                self.pids.remove(&ex.pid);
            }
        }
    }
}

/// What job tasks tell the dispatcher about executor processes.
enum Back {
    /// Healthy and free again.
    Idle(Box<Executor>),
    Started(u32),
    /// Killed or died.
    Gone(u32),
}

/// A running executor process.
struct Executor {
    pid: u32,
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    last_used: Instant,
}

impl Executor {
    async fn spawn(config: &PoolConfig) -> std::io::Result<Executor> {
        let mut command = match config.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&config.exe);
                c
            }
            None => Command::new(&config.exe),
        };
        let mut child = command
            .arg("__executor")
            .arg("--data-dir")
            .arg(&config.data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("executor has no stdin pipe"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("executor has no stdout pipe"))?;
        let pid = child.id().unwrap_or(0);
        tracing::debug!(pid, "started executor process");
        Ok(Executor {
            pid,
            child,
            stdin,
            stdout,
            last_used: Instant::now(),
        })
    }

    async fn call(&mut self, request: &[u8]) -> Result<Response, frame::FrameError> {
        self.stdin.write_all(request).await?;
        self.stdin.flush().await?;
        let body = frame::read_async(&mut self.stdout).await?;
        frame::decode(&body)
    }

    /// Kills the process and says how it ended.
    async fn kill(mut self) -> String {
        let _ = self.child.start_kill();
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("status unknown: {e}"),
            Err(_) => "did not exit within 5 s of SIGKILL".into(),
        }
    }

    /// After a broken pipe: how did the process end?
    async fn reap(mut self) -> String {
        match tokio::time::timeout(Duration::from_millis(500), self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            _ => self.kill().await,
        }
    }
}

enum Ended {
    Response(Response),
    Cancelled,
    TimedOut,
    Broken(frame::FrameError),
}

async fn run_job(
    mut job: Job,
    ex: Option<Executor>,
    (config, back, done): (PoolConfig, mpsc::Sender<Back>, mpsc::Sender<Done>),
) {
    // A job (from any controller) asking more memory than an executor of this node has is
    // held to the executor's size; if it needs more, it fails saying both.
    let asked_memory = job.request.memory_bytes;
    job.request.memory_bytes = asked_memory.min(config.max_memory_bytes.max(1));
    let began = Instant::now();
    config.metrics.task_started();
    let metrics = config.metrics.clone();
    let record = |outcome: AttemptOutcome| metrics.task_finished(outcome, began.elapsed());
    let finish =
        |outcome: Result<String, String>, run_us: Option<u64>, stderr: Option<String>| Done {
            dag: job.dag,
            task: job.task,
            attempt: job.attempt,
            outcome,
            run_us,
            stderr,
        };
    if let Err(e) = ensure_compiled(&config, &job.request.module_hash).await {
        if let Some(ex) = ex {
            let _ = back.send(Back::Idle(Box::new(ex))).await;
        }
        record(AttemptOutcome::failed);
        let _ = done
            .send(finish(
                Err(format!("module {:?} cannot run: {e}", job.module)),
                None,
                None,
            ))
            .await;
        return;
    }
    let bytes = match frame::encode(&job.request) {
        Ok(b) => b,
        Err(e) => {
            if let Some(ex) = ex {
                let _ = back.send(Back::Idle(Box::new(ex))).await;
            }
            record(AttemptOutcome::failed);
            let _ = done
                .send(finish(
                    Err(format!("task inputs cannot be sent to an executor: {e}")),
                    None,
                    None,
                ))
                .await;
            return;
        }
    };
    let mut ex = match ex {
        Some(ex) => ex,
        None => match Executor::spawn(&config).await {
            Ok(ex) => {
                let _ = back.send(Back::Started(ex.pid)).await;
                ex
            }
            Err(e) => {
                record(AttemptOutcome::crashed);
                let _ = done
                    .send(finish(
                        Err(format!("could not start an executor process: {e}")),
                        None,
                        None,
                    ))
                    .await;
                return;
            }
        },
    };
    let ended = tokio::select! {
        biased;
        _ = job.cancel.cancelled() => Ended::Cancelled,
        r = tokio::time::timeout(job.timeout, ex.call(&bytes)) => match r {
            Err(_) => Ended::TimedOut,
            Ok(Err(e)) => Ended::Broken(e),
            Ok(Ok(resp)) => Ended::Response(resp),
        },
    };
    let (outcome, run_us, stderr) = match ended {
        Ended::Response(resp) => {
            ex.last_used = Instant::now();
            let _ = back.send(Back::Idle(Box::new(ex))).await;
            let stderr = stderr_of(&resp);
            let (outcome, run_us) =
                describe(&job.module, job.request.memory_bytes, asked_memory, resp);
            record(if outcome.is_ok() {
                AttemptOutcome::succeeded
            } else {
                AttemptOutcome::failed
            });
            (outcome, run_us, stderr)
        }
        Ended::Cancelled => {
            let _ = back.send(Back::Gone(ex.pid)).await;
            ex.kill().await;
            record(AttemptOutcome::cancelled);
            (Err("cancelled".to_string()), None, None)
        }
        Ended::TimedOut => {
            let _ = back.send(Back::Gone(ex.pid)).await;
            ex.kill().await;
            record(AttemptOutcome::timed_out);
            (
                Err(format!(
                    "timed out after {} (the task's timeout); the executor was stopped",
                    humantime_short(job.timeout)
                )),
                None,
                None,
            )
        }
        Ended::Broken(e) => {
            let _ = back.send(Back::Gone(ex.pid)).await;
            let how = ex.reap().await;
            record(AttemptOutcome::crashed);
            tracing::warn!(dag = %job.dag, task = job.task, how = ?how, error = ?e.to_string(), "executor process died");
            (
                Err(format!(
                    "executor process died while running the task ({how})"
                )),
                None,
                None,
            )
        }
    };
    let _ = done.send(finish(outcome, run_us, stderr)).await;
}

/// The stderr tail an executor reported, if the task wrote any.
fn stderr_of(resp: &Response) -> Option<String> {
    let tail = match resp {
        Response::Success { stderr_tail, .. }
        | Response::Exit { stderr_tail, .. }
        | Response::Trap { stderr_tail, .. }
        | Response::MemoryExceeded { stderr_tail, .. } => stderr_tail,
        Response::OutputTooLarge { .. } | Response::Error { .. } => return None,
    };
    (!tail.is_empty()).then(|| tail.clone())
}

fn humantime_short(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn tail(stderr: &str) -> String {
    let t = stderr.trim();
    if t.is_empty() {
        return String::new();
    }
    // Keep the last 2,000 characters: the end of stderr is where the reason usually is.
    let chars: Vec<char> = t.chars().collect();
    let start = chars.len().saturating_sub(2000);
    format!("; stderr: {}", chars[start..].iter().collect::<String>())
}

/// Turns an executor's answer into the task's output or its error message. `memory_bytes`
/// is the limit the job ran with, `asked_memory` what it asked for (more when it was held
/// to this node's executor size).
fn describe(
    module: &str,
    memory_bytes: u64,
    asked_memory: u64,
    resp: Response,
) -> (Result<String, String>, Option<u64>) {
    match resp {
        Response::Success { stdout, run_us, .. } => {
            let text = String::from_utf8_lossy(&stdout);
            (Ok(text.trim_end().to_string()), Some(run_us))
        }
        Response::Exit { code, stderr_tail } => (
            Err(format!("exited with status {code}{}", tail(&stderr_tail))),
            None,
        ),
        Response::Trap {
            message,
            stderr_tail,
        } => (
            Err(format!("trapped: {message}{}", tail(&stderr_tail))),
            None,
        ),
        Response::MemoryExceeded {
            limit_bytes,
            stderr_tail,
        } if asked_memory > memory_bytes => (
            Err(format!(
                "memory limit exceeded: the task asked for {} MB of memory, but executors on \
                 this node have {} MB (--ram-per-executor), and it tried to grow past that{}",
                asked_memory / MB,
                limit_bytes.min(memory_bytes) / MB,
                tail(&stderr_tail)
            )),
            None,
        ),
        Response::MemoryExceeded {
            limit_bytes,
            stderr_tail,
        } => (
            Err(format!(
                "memory limit exceeded: the task tried to grow its memory past {} MB{}",
                limit_bytes.max(memory_bytes) / MB,
                tail(&stderr_tail)
            )),
            None,
        ),
        Response::OutputTooLarge { limit_bytes } => (
            Err(format!(
                "output too large: stdout passed the {} MiB limit",
                limit_bytes / (MB as usize)
            )),
            None,
        ),
        Response::Error { message } => (Err(format!("could not run {module}: {message}")), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_outcomes_for_people() {
        let (ok, _) = describe(
            "m.wasm",
            0,
            0,
            Response::Success {
                stdout: b"hi \n\n".to_vec(),
                run_us: 1,
                stderr_tail: String::new(),
            },
        );
        assert_eq!(ok, Ok("hi".to_string()), "trailing whitespace trimmed");
        let (err, _) = describe(
            "m.wasm",
            0,
            0,
            Response::Exit {
                code: 3,
                stderr_tail: "bad thing\n".into(),
            },
        );
        assert_eq!(
            err,
            Err("exited with status 3; stderr: bad thing".to_string())
        );
        let (err, _) = describe(
            "m.wasm",
            64 * MB,
            64 * MB,
            Response::MemoryExceeded {
                limit_bytes: 64 * MB,
                stderr_tail: String::new(),
            },
        );
        assert!(err.expect_err("fails").contains("memory limit exceeded"));
        let (err, _) = describe(
            "m.wasm",
            128 * MB,
            4096 * MB,
            Response::MemoryExceeded {
                limit_bytes: 128 * MB,
                stderr_tail: String::new(),
            },
        );
        let err = err.expect_err("fails");
        assert!(
            err.contains("asked for 4096 MB") && err.contains("have 128 MB"),
            "{err}"
        );
        let (err, _) = describe(
            "m.wasm",
            0,
            0,
            Response::Error {
                message: "nope".into(),
            },
        );
        assert_eq!(err, Err("could not run m.wasm: nope".to_string()));
    }

    #[test]
    fn stderr_is_kept_for_successful_attempts_too() {
        let ok = Response::Success {
            stdout: b"out".to_vec(),
            run_us: 1,
            stderr_tail: "warning: something odd\n".into(),
        };
        assert_eq!(stderr_of(&ok).as_deref(), Some("warning: something odd\n"));
        let quiet = Response::Exit {
            code: 1,
            stderr_tail: String::new(),
        };
        assert_eq!(stderr_of(&quiet), None);
    }
}
