//! Test harness: real `bx3-node` processes on 127.0.0.1 with `--no-mdns`, each in its own temp
//! data dir, stopped by pid when dropped. Every wait is bounded.

pub mod browser;
/// The CPU kernel of `cpu_heavy.wasm`, run natively to know its output.
#[path = "../../../../wasm_modules/src/kernels/cpu.rs"]
pub mod cpu;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bx3_protocol::api::{DagView, StatusView};

/// Tests that start meshes, load the CPU or measure time take this, so that at most one of
/// them runs at a time (the others, light ones, run beside it): on two cores, two of them
/// together starve the nodes they are looking at.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding it poisons nothing the next one needs.
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

pub const BIN: &str = env!("CARGO_BIN_EXE_bx3-node");

/// The repository root (for dags/ and wasm_modules/).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ has a parent")
        .to_path_buf()
}

pub fn wasm_modules() -> PathBuf {
    repo().join("wasm_modules")
}

pub struct TestNode {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub api: String,
    extra: Vec<String>,
}

impl TestNode {
    /// Starts a node with at most `executors` executors.
    pub fn start(executors: usize) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let extra = vec!["--max-executors".to_string(), executors.to_string()];
        Self::start_in(dir, extra)
    }

    /// A stopped node that owns nothing but a temp dir (to move a real node out of a Vec).
    fn placeholder(dir: tempfile::TempDir) -> TestNode {
        TestNode {
            child: None,
            dir,
            api: String::new(),
            extra: Vec::new(),
        }
    }

    fn start_in(dir: tempfile::TempDir, extra: Vec<String>) -> TestNode {
        let addr_file = dir.path().join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("node.log"))
            .expect("log file");
        let child = Command::new(BIN)
            .arg("run")
            .arg("--data-dir")
            .arg(dir.path())
            .args([
                "--api",
                "127.0.0.1:0",
                "--no-mdns",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
            ])
            .args(&extra)
            .env("RUST_LOG", "info,bx3_node=debug")
            .env_remove("BX3_API")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bx3-node");
        let deadline = Instant::now() + Duration::from_secs(60);
        let api = loop {
            if let Ok(s) = std::fs::read_to_string(&addr_file) {
                if !s.trim().is_empty() {
                    break s.trim().to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "node did not write api.addr within 60 s; log:\n{}",
                read_log(dir.path())
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        TestNode {
            child: Some(child),
            dir,
            api,
            extra,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        read_log(self.dir.path())
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the node again on the same data dir.
    pub fn restart(mut self) -> TestNode {
        self.kill9();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let extra = std::mem::take(&mut self.extra);
        TestNode::start_in(dir, extra)
    }

    /// Runs the CLI against this node; fails the test if it takes longer than `limit`.
    pub fn cli(&self, args: &[&str], limit: Duration) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).args(["--api", &self.api]);
        run_bounded(cmd, limit)
    }

    pub fn status(&self) -> StatusView {
        let out = self.cli(&["status", "--json"], Duration::from_secs(30));
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// `submit FILE --wait --json`: (exit code, final DAG).
    pub fn submit_wait(&self, file: &Path, limit: Duration) -> (i32, DagView) {
        let modules = wasm_modules();
        let file = file.to_str().expect("utf-8 path");
        let out = self.cli(
            &[
                "submit",
                file,
                "--wait",
                "--json",
                "--modules",
                modules.to_str().expect("utf-8 path"),
            ],
            limit,
        );
        let code = out.status.code().unwrap_or(-1);
        let view = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "submit --wait --json printed no DAG ({e}); exit {code}; stderr:\n{}\nnode log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log()
            )
        });
        (code, view)
    }

    /// `submit FILE` (no wait): the id.
    pub fn submit(&self, file: &Path) -> String {
        let modules = wasm_modules();
        let out = self.cli(
            &[
                "submit",
                file.to_str().expect("utf-8 path"),
                "--json",
                "--modules",
                modules.to_str().expect("utf-8 path"),
            ],
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "submit failed: {}\nnode log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        v["id"].as_str().expect("id").to_string()
    }

    pub fn dag(&self, id: &str) -> DagView {
        let out = self.cli(&["dag", id, "--json"], Duration::from_secs(30));
        assert!(
            out.status.success(),
            "dag failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("DAG JSON")
    }

    /// Polls the DAG until `pred` holds (bounded).
    pub fn wait_for(
        &self,
        id: &str,
        limit: Duration,
        what: &str,
        pred: impl Fn(&DagView) -> bool,
    ) -> DagView {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.dag(id);
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last view: {v:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
        // A failing test keeps its nodes' logs (the data dirs are temporary): set
        // BX3_TEST_LOGS=DIR to find them there after the run.
        if std::thread::panicking() {
            if let Some(dir) = std::env::var_os("BX3_TEST_LOGS") {
                let dir = PathBuf::from(dir);
                let _ = std::fs::create_dir_all(&dir);
                let name = format!(
                    "{}-{}.log",
                    std::process::id(),
                    self.dir
                        .path()
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("node")
                );
                let _ = std::fs::copy(self.dir.path().join("node.log"), dir.join(name));
            }
        }
    }
}

pub fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("node.log")).unwrap_or_default()
}

/// Runs a command, killing it (by pid) if it outlives `limit`.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Read pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command {cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t_out.join().expect("reader"),
        stderr: t_err.join().expect("reader"),
    }
}

/// Writes a DAG file into `dir` and returns its path.
pub fn write_dag(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).expect("write DAG");
    path
}

/// Pids of the processes whose parent is `parent` (Linux /proc).
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Resident memory of a process in KiB (Linux /proc).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

impl TestNode {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("node running")
    }

    /// Starts a node with extra `run` flags.
    pub fn start_with(args: &[&str]) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, args.iter().map(|s| s.to_string()).collect())
    }

    /// Polls `status` until `pred` holds (bounded).
    pub fn wait_status(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&StatusView) -> bool,
    ) -> StatusView {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Several nodes on 127.0.0.1 (`--no-mdns`), each dialing all the ones started before it.
pub struct Mesh {
    pub nodes: Vec<TestNode>,
}

impl Mesh {
    pub fn start(n: usize, executors: usize) -> Mesh {
        // Ports chosen up front so every node can name all the others, and a node restarted
        // on its data dir comes back at the same address.
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes: Vec<TestNode> = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let mut args = vec![
                "--max-executors".to_string(),
                executors.to_string(),
                "--listen".to_string(),
                format!("/ip4/127.0.0.1/tcp/{port}"),
            ];
            for (j, other) in ports.iter().enumerate() {
                if j != i {
                    args.push("--peer".into());
                    args.push(format!("/ip4/127.0.0.1/tcp/{other}"));
                }
            }
            let dir = tempfile::tempdir().expect("temp dir");
            nodes.push(TestNode::start_in(dir, args));
        }
        Mesh { nodes }
    }

    /// kill -9 node `i` and start it again on its data dir and address.
    pub fn restart(&mut self, i: usize) {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = std::mem::replace(&mut self.nodes[i], TestNode::placeholder(dir));
        self.nodes[i] = node.restart();
    }

    /// Waits until every live node names the same leader, and it is one of them.
    pub fn wait_leader(&self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let statuses: Vec<StatusView> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| n.status())
                .collect();
            let leaders: std::collections::HashSet<Option<String>> =
                statuses.iter().map(|s| s.leader.clone()).collect();
            if leaders.len() == 1 {
                if let Some(Some(l)) = leaders.into_iter().next() {
                    if statuses.iter().any(|s| s.peer_id == l) {
                        return l;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {limit:?}: {statuses:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn index_of(&self, peer: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.child.is_some() && n.status().peer_id == peer)
            .expect("peer is one of the mesh's live nodes")
    }
}

impl TestNode {
    /// The node's libp2p address on 127.0.0.1, with its peer id.
    pub fn p2p_addr(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.status();
            if let Some(a) = s
                .listen_addrs
                .iter()
                .find(|a| a.starts_with("/ip4/127.0.0.1/"))
            {
                return format!("{a}/p2p/{}", s.peer_id);
            }
            assert!(
                Instant::now() < deadline,
                "node has no listen address: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Who names whom: the `--peer` list of each node, by index.
pub type Topology = fn(usize) -> Vec<usize>;

/// Node 0 is the hub; every other node names only it.
pub fn star(i: usize) -> Vec<usize> {
    if i == 0 {
        Vec::new()
    } else {
        vec![0]
    }
}

/// Node i names node i - 1 only.
pub fn chain(i: usize) -> Vec<usize> {
    if i == 0 {
        Vec::new()
    } else {
        vec![i - 1]
    }
}

impl Mesh {
    /// `n` nodes on fixed loopback ports, each naming only the nodes `names(i)` gives, with
    /// `executors` (`None`: the node's own default sizing) and `extra` flags.
    pub fn start_topology(
        n: usize,
        executors: Option<usize>,
        names: Topology,
        extra: &[&str],
    ) -> Mesh {
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let mut args: Vec<String> =
                vec!["--listen".into(), format!("/ip4/127.0.0.1/tcp/{port}")];
            if let Some(e) = executors {
                args.push("--max-executors".into());
                args.push(e.to_string());
            }
            for j in names(i) {
                args.push("--peer".into());
                args.push(format!("/ip4/127.0.0.1/tcp/{}", ports[j]));
            }
            args.extend(extra.iter().map(|s| s.to_string()));
            nodes.push(TestNode::start_in(
                tempfile::tempdir().expect("temp dir"),
                args,
            ));
        }
        Mesh { nodes }
    }

    /// Live nodes.
    pub fn live(&self) -> impl Iterator<Item = &TestNode> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// Waits until every live node has a direct connection to every other live node (and
    /// sees each with its executors); returns how long that took.
    pub fn wait_fully_connected(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        let ids: Vec<String> = self.live().map(|n| n.status().peer_id).collect();
        loop {
            let statuses: Vec<StatusView> = self.live().map(|n| n.status()).collect();
            let full = statuses.iter().all(|s| {
                ids.iter().filter(|id| **id != s.peer_id).all(|id| {
                    s.peers
                        .iter()
                        .any(|p| p.peer_id == *id && p.connected && p.executors.total > 0)
                })
            });
            if full {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "not fully connected within {limit:?}: {:#?}",
                statuses
                    .iter()
                    .map(|s| (
                        s.peer_id.clone(),
                        s.peers
                            .iter()
                            .map(|p| (p.peer_id.clone(), p.connected))
                            .collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's log, killed ones included, concatenated (for log checks and failures).
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.log())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A WASI command (`_start`) with `n` more empty functions `[] -> []`: a module that is
/// cheap to send and expensive to compile (the compile budget's tests).
pub fn many_functions(n: u32) -> Vec<u8> {
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
    section(1, vec![1, 0x60, 0, 0], &mut out);
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
        code.extend([2, 0, 0x0b]);
    }
    section(10, code, &mut out);
    out
}
