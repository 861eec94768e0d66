//! The executor process: `bx3-node __executor --data-dir DIR`, started by the node's pool.
//!
//! Runs one task at a time: reads a request frame on stdin, runs it on its wasmer `Runtime`,
//! writes the response frame on stdout. Being a separate process is the point: a task that
//! never returns to the host is stopped by killing the process (wasmer 7.1 has no interrupt,
//! and metering would slow every task), and nothing a task does can take the node down.

use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::frame::{self, Request, Response};
use super::runtime::{Job, Limits, Outcome, Runtime};

/// Serves requests until stdin closes. Exits the process if the node (its parent) goes away,
/// so a task stuck in a loop never outlives a killed node.
pub fn serve(data_dir: &Path) -> Result<(), frame::FrameError> {
    // First, before any other thread exists (on Linux a thread's niceness is its own and
    // new threads inherit it).
    lower_priority();
    watch_parent();
    let mut runtime = Runtime::new(data_dir.join("compiled"))
        .map_err(|e| frame::FrameError::Io(std::io::Error::other(e.to_string())))?;
    let modules = data_dir.join("modules");
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let mut input = BufReader::new(stdin.lock());
    let mut output = BufWriter::new(stdout.lock());
    while let Some(body) = frame::read_blocking(&mut input)? {
        let response = match frame::decode::<Request>(&body) {
            Ok(req) => handle(&mut runtime, &modules, &req),
            Err(e) => Response::Error {
                message: format!("executor could not decode the request: {e}"),
            },
        };
        output.write_all(&frame::encode(&response)?)?;
        output.flush()?;
    }
    Ok(())
}

fn handle(runtime: &mut Runtime, modules: &Path, req: &Request) -> Response {
    if let Err(message) = ensure_loaded(runtime, modules, &req.module_hash) {
        return Response::Error { message };
    }
    let job = Job {
        argv: &req.argv,
        env: &req.env,
        stdin: &req.stdin,
        limits: Limits {
            memory_bytes: req.memory_bytes,
            max_stdout: req.max_stdout,
            max_stderr_tail: req.max_stderr_tail,
        },
    };
    let start = Instant::now();
    match runtime.run(&req.module_hash, &job) {
        Ok(Outcome::Success {
            stdout,
            stderr_tail,
        }) => Response::Success {
            stdout,
            stderr_tail,
            run_us: start.elapsed().as_micros() as u64,
        },
        Ok(Outcome::Exit { code, stderr_tail }) => Response::Exit { code, stderr_tail },
        Ok(Outcome::Trap {
            message,
            stderr_tail,
        }) => Response::Trap {
            message,
            stderr_tail,
        },
        Ok(Outcome::MemoryExceeded {
            limit_bytes,
            stderr_tail,
        }) => Response::MemoryExceeded {
            limit_bytes,
            stderr_tail,
        },
        Ok(Outcome::OutputTooLarge { limit_bytes }) => Response::OutputTooLarge { limit_bytes },
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

/// Loads the compiled module from memory or the node's on-disk cache, compiling from the
/// module file as a last resort.
fn ensure_loaded(runtime: &mut Runtime, modules: &Path, hash: &str) -> Result<(), String> {
    if !crate::store::modules::is_hash(hash) {
        return Err(format!("{hash:?} is not a module hash"));
    }
    match runtime.load_cached(hash) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) => {
            tracing::debug!(hash = ?hash, error = ?e.to_string(), "cached module unusable, recompiling")
        }
    }
    let path = modules.join(format!("{hash}.wasm"));
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "module {hash} is not on this node ({}): {e}",
            path.display()
        )
    })?;
    if crate::store::modules::sha256_hex(&bytes) != hash {
        return Err(format!(
            "module file {} does not match its hash; refusing to run it",
            path.display()
        ));
    }
    runtime.prepare(hash, &bytes).map_err(|e| e.to_string())
}

/// Runs this executor `EXECUTOR_NICE` steps below the node's scheduling priority, so that
/// when tasks keep every core busy the node's heartbeats, gossip and API still get the CPU
/// (CFS gives a nice-0 thread ~9x the share of a nice-10 one). Failing is not fatal: the
/// task still runs, only without that protection.
fn lower_priority() {
    if let Err(e) = super::lower_thread_priority() {
        tracing::warn!(error = ?e.to_string(), "could not lower the executor's priority");
    }
}

fn watch_parent() {
    let parent = std::os::unix::process::parent_id();
    let spawned = std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(0);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = ?e.to_string(), "could not start the parent watchdog");
    }
}
