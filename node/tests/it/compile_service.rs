//! The compile service with its real child processes (`bx3-node __compile`): modules are
//! compiled outside the node's process, a module that needs too much CPU is stopped by its
//! own limit, and the node process pays neither the CPU nor the memory.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use bx3_node::executor::compile::{CompileError, Compiler, Limits};
use bx3_node::store::modules::sha256_hex;

fn compiler(dir: &std::path::Path, limits: Limits) -> Compiler {
    Compiler::new(Some(BIN.into()), dir.join("compiled"), 1, limits)
}

/// This process's own CPU time (user + system), in seconds.
fn self_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat.rsplit_once(") ").expect("stat format").1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

fn self_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

fn is_compile_process(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.windows(9).any(|w| w == b"__compile"))
        .unwrap_or(false)
}

/// A real module compiles in a child into the shared cache; a module that is not a WASI
/// command is refused with the child's reason; concurrent requests share one compilation.
#[test]
fn modules_compile_in_a_child_and_bad_ones_are_refused_with_the_reason() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = compiler(dir.path(), Limits::default());
        let wasm = Arc::new(std::fs::read(wasm_modules().join("wc_map.wasm")).expect("module"));
        let hash = sha256_hex(&wasm);
        let (a, b) = tokio::join!(
            c.compile(&hash, Arc::clone(&wasm)),
            c.compile(&hash, Arc::clone(&wasm))
        );
        assert_eq!((a, b), (Ok(()), Ok(())));
        assert!(c.is_compiled(&hash).await);

        // Valid wasm, but no `_start`: refused by the child, with wasm's own words.
        let mut no_start = crate::common::many_functions(1);
        let at = no_start
            .windows(6)
            .position(|w| w == b"_start")
            .expect("export");
        no_start[at..at + 6].copy_from_slice(b"_stop_");
        let no_start = Arc::new(no_start);
        let err = c
            .compile(&sha256_hex(&no_start), no_start)
            .await
            .expect_err("no _start");
        assert!(
            matches!(&err, CompileError::Refused(m) if m.contains("_start")),
            "{err:?}"
        );
    });
}

/// A module that compiles for longer than the CPU limit allows is stopped in its child, and
/// the node's process spends next to nothing on it, in CPU and in memory (the row:
/// 3.4 s of the node's CPU and +300 MB before). Under the function budget, so only the
/// process limits stop it.
#[test]
fn an_expensive_module_costs_its_child_not_the_node() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            wall: Duration::from_secs(60),
            cpu_secs: 1,
            address_space: 2 << 30,
        };
        let c = compiler(dir.path(), limits);
        let wasm = Arc::new(crate::common::many_functions(99_000));
        let hash = sha256_hex(&wasm);
        let cpu_before = self_cpu_secs();
        let hwm_before = self_hwm_kib();
        let result = c.compile(&hash, wasm).await;
        let cpu = self_cpu_secs() - cpu_before;
        let grew = self_hwm_kib().saturating_sub(hwm_before);
        match &result {
            // A fast machine (release build) may compile it within a second: then it must
            // simply have worked.
            Ok(()) => assert!(c.is_compiled(&hash).await),
            Err(CompileError::Stopped(m)) => assert!(m.contains("CPU time"), "{m}"),
            Err(e) => panic!("unexpected: {e:?}"),
        }
        eprintln!("compile: {result:?}; this process: {cpu:.2} s CPU, VmHWM +{grew} KiB");
        assert!(cpu < 1.0, "the node's own CPU for the compile: {cpu} s");
        assert!(grew < 50 * 1024, "the node's memory grew by {grew} KiB");
    });
}

/// The wall-clock limit stops a compile process that does not finish (here: the CPU limit
/// is high and the wall limit short).
#[test]
fn a_compile_over_the_wall_clock_limit_is_stopped() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = Limits {
            wall: Duration::from_millis(300),
            cpu_secs: 600,
            address_space: 2 << 30,
        };
        let c = compiler(dir.path(), limits);
        let wasm = Arc::new(crate::common::many_functions(99_000));
        let hash = sha256_hex(&wasm);
        match c.compile(&hash, wasm).await {
            Err(CompileError::Stopped(m)) => assert!(m.contains("longer than"), "{m}"),
            Ok(()) => eprintln!("compiled within 300 ms: nothing to stop on this machine"),
            Err(e) => panic!("unexpected: {e:?}"),
        }
        // Killed at once; reaped in the background (bounded wait). Other tests of this file
        // may have children of their own meanwhile, so look for compile processes of ours.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while children_of(std::process::id())
            .iter()
            .any(|pid| is_compile_process(*pid))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "a compile process outlived its limit"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
