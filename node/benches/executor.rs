//! Executor benchmarks (run by scripts/bench.sh; `cargo bench -p bx3-node --bench executor`).
//!
//! Prints one line per figure: `name<TAB>median<TAB>min<TAB>max<TAB>unit<TAB>note`. Figures that
//! depend on machine speed come with a baseline measured in the same run (native Rust for the
//! compute kernel).
//!
//! `BX3_BENCH_SCALE` (default 1.0) scales iteration counts; the CI smoke uses a small value.

use std::hint::black_box;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use bx3_node::executor::frame::{self, Request, Response};
use bx3_node::executor::runtime::{Job, Limits, Outcome, Runtime};
use bx3_node::store::modules::sha256_hex;

#[path = "../../wasm_modules/src/kernels/cpu.rs"]
mod cpu;

fn scale() -> f64 {
    std::env::var("BX3_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn n(base: usize) -> usize {
    ((base as f64 * scale()) as usize).max(3)
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

fn report(name: &str, s: &Stats, unit: &str, note: &str) {
    println!(
        "{name}\t{:.3}\t{:.3}\t{:.3}\t{unit}\t{note}",
        s.median, s.min, s.max
    );
}

fn modules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../wasm_modules")
}

fn read(name: &str) -> (String, Vec<u8>) {
    let bytes = std::fs::read(modules_dir().join(name)).expect("example module");
    (sha256_hex(&bytes), bytes)
}

fn limits() -> Limits {
    Limits {
        memory_bytes: 128 << 20,
        max_stdout: 8 << 20,
        max_stderr_tail: 4096,
    }
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("compiled");
    let mut rt = Runtime::new(cache.clone()).expect("runtime");

    // 1. Compile time and cached (disk) load time for the example modules.
    for name in ["noop.wasm", "echo.wasm", "wc_map.wasm", "cpu_heavy.wasm"] {
        let (hash, bytes) = read(name);
        let mut compile = Vec::new();
        let mut load = Vec::new();
        for i in 0..n(5) {
            let dir = tmp.path().join(format!("c-{name}-{i}"));
            let mut fresh = Runtime::new(dir.clone()).expect("runtime");
            let t = Instant::now();
            fresh.prepare(&hash, &bytes).expect("compiles");
            compile.push(t.elapsed().as_secs_f64() * 1e3);
            let mut again = Runtime::new(dir).expect("runtime");
            let t = Instant::now();
            assert!(again.load_cached(&hash).expect("loads"));
            load.push(t.elapsed().as_secs_f64() * 1e3);
        }
        report(
            &format!("compile {name} ({} KiB)", bytes.len() / 1024),
            &stats(compile),
            "ms",
            "cranelift",
        );
        report(
            &format!("cached load {name}"),
            &stats(load),
            "ms",
            "from the on-disk cache",
        );
    }

    // 2. Per-task overhead in process: a trivial precompiled module, fresh instance per run.
    let (noop, bytes) = read("noop.wasm");
    rt.prepare(&noop, &bytes).expect("noop");
    let argv = vec!["noop.wasm".to_string()];
    let job = Job {
        argv: &argv,
        env: &[],
        stdin: &[],
        limits: limits(),
    };
    let mut runs = Vec::new();
    for _ in 0..n(2000) {
        let t = Instant::now();
        let out = rt.run(&noop, &job).expect("runs");
        runs.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(
            matches!(&out, Outcome::Success { stdout, .. } if stdout.is_empty()),
            "{out:?}"
        );
    }
    report(
        "task overhead in process (noop)",
        &stats(runs),
        "µs",
        "instantiate + WASI + _start",
    );
    let (echo, bytes) = read("echo.wasm");
    rt.prepare(&echo, &bytes).expect("echo");
    let argv = vec!["echo.wasm".to_string(), "hello".to_string()];
    let job = Job {
        argv: &argv,
        env: &[],
        stdin: &[],
        limits: limits(),
    };
    let mut runs = Vec::new();
    for _ in 0..n(2000) {
        let t = Instant::now();
        rt.run(&echo, &job).expect("runs");
        runs.push(t.elapsed().as_secs_f64() * 1e6);
    }
    report(
        "task overhead in process (Rust std echo)",
        &stats(runs),
        "µs",
        "55 KiB module",
    );

    // 3. Per-task overhead through an executor process (what the node pays): request frame
    //    over a pipe, run, response frame back.
    let data = tmp.path().join("node");
    std::fs::create_dir_all(data.join("modules")).expect("dir");
    std::fs::write(
        data.join("modules").join(format!("{noop}.wasm")),
        std::fs::read(modules_dir().join("noop.wasm")).expect("noop"),
    )
    .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bx3-node"))
        .args(["__executor", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("executor process");
    let mut to = child.stdin.take().expect("stdin");
    let mut from = child.stdout.take().expect("stdout");
    let req = frame::encode(&Request {
        module_hash: noop.clone(),
        argv: vec!["noop.wasm".into()],
        env: vec![],
        stdin: vec![],
        memory_bytes: 128 << 20,
        max_stdout: 8 << 20,
        max_stderr_tail: 4096,
    })
    .expect("encodes");
    let mut call = || {
        to.write_all(&req).expect("write");
        to.flush().expect("flush");
        let mut len = [0u8; 4];
        from.read_exact(&mut len).expect("read");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        from.read_exact(&mut body).expect("read");
        let resp: Response = frame::decode(&body).expect("decodes");
        assert!(matches!(resp, Response::Success { .. }), "{resp:?}");
    };
    call(); // first call compiles and caches
    let mut runs = Vec::new();
    for _ in 0..n(2000) {
        let t = Instant::now();
        call();
        runs.push(t.elapsed().as_secs_f64() * 1e6);
    }
    report(
        "task overhead via executor process (noop)",
        &stats(runs),
        "µs",
        "pipe round trip + run",
    );
    drop(to);
    let _ = child.wait();

    // 4. Compute: cpu_heavy in wasm versus the same kernel compiled natively, same run.
    let rounds: u64 = (200_000_000.0 * scale()).max(1_000_000.0) as u64;
    let (cpu_hash, bytes) = read("cpu_heavy.wasm");
    rt.prepare(&cpu_hash, &bytes).expect("cpu_heavy");
    let argv = vec!["cpu_heavy.wasm".to_string(), rounds.to_string()];
    let job = Job {
        argv: &argv,
        env: &[],
        stdin: &[],
        limits: limits(),
    };
    let (mut wasm, mut native) = (Vec::new(), Vec::new());
    for _ in 0..n(5) {
        let t = Instant::now();
        let out = rt.run(&cpu_hash, &job).expect("runs");
        wasm.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let expect = black_box(cpu::cpu_kernel(black_box(rounds)));
        native.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(
            matches!(&out, Outcome::Success { stdout, .. } if *stdout == format!("{expect}\n").into_bytes()),
            "same checksum: {out:?}"
        );
    }
    let (w, nat) = (stats(wasm), stats(native));
    report(&format!("cpu_heavy {rounds} rounds, wasm"), &w, "ms", "");
    report(
        &format!("cpu_heavy {rounds} rounds, native Rust"),
        &nat,
        "ms",
        "baseline",
    );
    println!(
        "cpu_heavy wasm/native\t{:.3}\t\t\tratio\ttarget <= 1.3",
        w.median / nat.median
    );
}
