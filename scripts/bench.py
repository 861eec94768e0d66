#!/usr/bin/env python3
"""bx3 mesh benchmarks, driven by scripts/bench.sh.

Starts real bx3-node processes on 127.0.0.1 only (--no-mdns, explicit --peer), measures each
figure several times, and prints a table of medians with min/max. Every node it starts is
stopped by pid. Sizes shrink with --smoke (used by CI so this script cannot rot).

Sections (--only): single (throughput 2,000 and 10,000 no-op tasks + fan-in, submit to first
task start, one-task latency parts on a lone node), mesh (the same on 3 nodes, follower
latency p50/p99, one-task parts at the controller and at a follower), scale (one 100,000-task
DAG on a fresh 3-node mesh: accept, first task, finish, peak RSS), convergence (3 and 10
nodes, failover), topology (a 10-node star becoming fully connected; failover in a star and a
chain), load (one-task latency at a leaf while CPU-bound work saturates the mesh; executor
count and CPU-bound throughput with the old RAM-only sizing and the new default, same run),
executors (scale reaction, idle cost), dashboard (the controller's CPU and RSS with the
dashboard open on a 100,000-task DAG versus not; throughput with /metrics scraped every
second versus not).

Every heavy run also counts controller changes (the new controllers each node's `status`
recorded during the run, `controller_changes`; a leader re-winning its own higher term is
not a change): it must be 0. The table ends with them, and --smoke
exits 1 if any is not 0.
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = os.path.join(REPO, "wasm_modules")


def http(method, url, body=None, timeout=120):
    data = None
    # The API refuses state changes with a content type a web page could send cross-origin
    # (text/plain, forms): JSON for everything, wasm for module uploads, also without a body.
    headers = {"content-type": "application/json"}
    if body is not None:
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
            headers["content-type"] = "application/wasm"
        else:
            data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kb(pid, field):
    """A field of /proc/PID/status in kB (VmRSS, VmHWM), or 0 if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_ms(pid):
    """CPU time of process `pid` so far (all its threads, ns precision from schedstat), ms."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return total / 1e6


def descendants(pid):
    """pid and every live process below it (the node's executor processes)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class Background:
    """A `run` method on a daemon thread for the length of a `with` block."""

    def __init__(self):
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_flag.set()
        self.thread.join(timeout=30)


class RssSampler(Background):
    """Samples VmRSS of each node process plus its executor processes every `period` s in a
    background thread; keeps the largest sum per node and the largest sum over all nodes."""

    def __init__(self, nodes, period=0.5):
        self.nodes, self.period = nodes, period
        self.max_node = [0] * len(nodes)
        self.max_total = 0
        self.samples = 0
        super().__init__()

    def sample(self):
        total = 0
        for i, n in enumerate(self.nodes):
            kb = sum(proc_kb(p, "VmRSS") for p in descendants(n.proc.pid))
            self.max_node[i] = max(self.max_node[i], kb)
            total += kb
        self.max_total = max(self.max_total, total)
        self.samples += 1

    def run(self):
        deadline = time.time() + 3600
        while not self.stop_flag.is_set() and time.time() < deadline:
            self.sample()
            self.stop_flag.wait(self.period)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.sample()


class FirstStart(Background):
    """Watches, from a background thread, for the first sign of a DAG (found by its unique
    name) on `node` (the controller: it answers from its live state without forwarding), by
    polling GET /v1/dags?limit=1 every ~2 ms from `t0` (perf_counter) on; so it sees tasks
    start even while the POST that submitted the DAG has not been answered yet. Records the
    seconds from t0 to the first answer listing the DAG, showing a task assigned
    (`counts.running + succeeded + failed > 0`), and showing a task succeeded."""

    def __init__(self, node, name, t0, limit=120):
        self.node, self.name, self.t0, self.limit = node, name, t0, limit
        self.seen = self.started = self.succeeded = None
        super().__init__()

    def run(self):
        while not self.stop_flag.is_set() and time.perf_counter() - self.t0 < self.limit:
            try:
                dags = http("GET", f"{self.node.api}/v1/dags?limit=1", timeout=10)
            except (urllib.error.URLError, OSError):
                dags = []
            now = time.perf_counter() - self.t0
            for d in dags or []:
                if d["name"] != self.name:
                    continue
                c = d["counts"]
                if self.seen is None:
                    self.seen = now
                if self.started is None and c["running"] + c["succeeded"] + c["failed"] > 0:
                    self.started = now
                if self.succeeded is None and c["succeeded"] > 0:
                    self.succeeded = now
                    return
            time.sleep(0.002)


class Scraper(Background):
    """GET /metrics of every node every `period` s, as a Prometheus server would; keeps the
    time and size of each scrape."""

    def __init__(self, nodes, period=1.0):
        self.nodes, self.period = nodes, period
        self.ms, self.bytes = [], []
        super().__init__()

    def run(self):
        deadline = time.time() + 3600
        while not self.stop_flag.is_set() and time.time() < deadline:
            for n in self.nodes:
                t = time.perf_counter()
                try:
                    with urllib.request.urlopen(n.api + "/metrics", timeout=10) as r:
                        body = r.read()
                except (urllib.error.URLError, OSError):
                    continue
                self.ms.append((time.perf_counter() - t) * 1000)
                self.bytes.append(len(body))
            self.stop_flag.wait(self.period)


class PageEmulator(Background):
    """What the dashboard's DAG page asks for, for when no Chromium is installed: status every
    2 s, a long poll on the DAG's version, and after each change (at most two a second) the
    first window of 100 tasks with previews."""

    def __init__(self, node, dag_id):
        self.node, self.dag_id = node, dag_id
        self.requests = 0
        super().__init__()

    def run(self):
        version, last_status = 0, 0.0
        deadline = time.time() + 3600
        base = f"{self.node.api}/v1/dags/{self.dag_id}"
        while not self.stop_flag.is_set() and time.time() < deadline:
            try:
                if time.time() - last_status >= 2:
                    http("GET", self.node.api + "/v1/status", timeout=10)
                    last_status = time.time()
                    self.requests += 1
                t = time.time()
                v = http("GET", f"{base}?tasks=false&after={version}&wait_ms=25000", timeout=30)
                http("GET", f"{base}?tasks=false&task_offset=0&task_limit=100&preview=160", timeout=30)
                self.requests += 2
                if v["state"] in ("succeeded", "failed", "cancelled"):
                    return
                version = v["version"]
                self.stop_flag.wait(max(0.0, 0.5 - (time.time() - t)))
            except (urllib.error.URLError, OSError):
                self.stop_flag.wait(0.5)


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


class Page:
    """The dashboard open on a DAG in headless Chromium (the real page, its own polling), or
    the PageEmulator when Chromium is missing. With `blank`, the same browser on about:blank
    (so a run without the page pays the same browser start-up on this machine's cores).
    Stopped by pid."""

    def __init__(self, node, dag_id, root, blank=False):
        self.exe = chromium()
        self.url = "about:blank" if blank else f"{node.api}/#/dag/{dag_id}"
        self.node, self.dag_id, self.root, self.blank = node, dag_id, root, blank
        self.proc = self.emulator = None

    def __enter__(self):
        if self.blank and not self.exe:
            return self
        if self.exe:
            profile = tempfile.mkdtemp(prefix="chromium-", dir=self.root)
            self.proc = subprocess.Popen(
                [self.exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--disable-dev-shm-usage", "--window-size=1400,1000",
                 f"--user-data-dir={profile}", "--remote-debugging-port=0", self.url],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            self.emulator = PageEmulator(self.node, self.dag_id).__enter__()
        return self

    def kind(self):
        return "headless Chromium" if self.exe else "emulated page (no Chromium installed)"

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self.emulator is not None:
            self.emulator.__exit__(*exc)


class Node:
    def __init__(self, binary, root, name, executors, peers=(), extra=()):
        """`executors=None`: the node's default sizing (min(RAM slots, CPU cores))."""
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        self.p2p_port = free_port()
        self.p2p = f"/ip4/127.0.0.1/tcp/{self.p2p_port}"
        limit = [] if executors is None else ["--max-executors", str(executors)]
        args = [binary, "run", "--data-dir", self.dir, "--api", "127.0.0.1:0", "--no-mdns",
                "--listen", self.p2p, *limit, *extra]
        for p in peers:
            args += ["--peer", p]
        self.log = open(os.path.join(self.dir, "node.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log,
                                     env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")})
        addr_file = os.path.join(self.dir, "api.addr")
        deadline = time.time() + 60
        while time.time() < deadline:
            if os.path.exists(addr_file) and open(addr_file).read().strip():
                self.api = open(addr_file).read().strip()
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"node {name} exited; see {self.dir}/node.log")
            time.sleep(0.02)
        raise RuntimeError(f"node {name} did not start")

    def status(self):
        return http("GET", self.api + "/v1/status", timeout=10)

    def kill9(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()


class Bench:
    def __init__(self, binary, smoke):
        self.binary = binary
        self.smoke = smoke
        self.root = tempfile.mkdtemp(prefix="bx3-bench-")
        self.nodes = []
        self.rows = []
        self.count = 0
        # (run label, controller changes) for every heavy run.
        self.changes = []

    def node(self, executors, peers=(), extra=()):
        self.count += 1
        n = Node(self.binary, self.root, f"n{self.count}", executors, peers, extra)
        self.nodes.append(n)
        return n

    def mesh(self, size, executors, topology="full"):
        """`size` nodes. full: each names every node started before it; star: each names
        node 0 only; chain: each names the node before it only."""
        nodes = []
        for i in range(size):
            if topology == "full":
                peers = [m.p2p for m in nodes]
            elif topology == "star":
                peers = [nodes[0].p2p] if nodes else []
            else:
                peers = [nodes[-1].p2p] if nodes else []
            nodes.append(self.node(executors, peers=peers))
        return nodes

    @staticmethod
    def terms(nodes):
        out = {}
        for n in nodes:
            if n.proc.poll() is None:
                s = n.status()
                out[s["peer_id"]] = (s["leader"], s["term"])
        return out

    def watch_controller(self, nodes, label):
        """A context manager: counts controller changes during the block, as the nodes'
        `status` records them (`controller_changes`: a new controller, not a term a leader
        re-won), the most any live node saw."""
        bench = self

        class Watch:
            def __enter__(self):
                self.before = bench.terms(nodes)
                self.started_ms = int(time.time() * 1000)
                return self

            def __exit__(self, *exc):
                if exc[0] is not None:
                    return False
                n = 0
                for node in nodes:
                    if node.proc.poll() is not None:
                        continue
                    seen = [
                        c
                        for c in node.status().get("controller_changes", [])
                        if c["at_ms"] >= self.started_ms and c.get("controller")
                    ]
                    n = max(n, len(seen))
                after = bench.terms(nodes)
                common = [p for p in self.before if p in after]
                rise = max([0, *[after[p][1] - self.before[p][1] for p in common]])
                bench.changes.append((label, n))
                print(
                    f"  controller changes during {label}: {n} (term rose by {rise})",
                    file=sys.stderr,
                    flush=True,
                )
                return False

        return Watch()

    def wait_connected(self, nodes, limit=60):
        """Waits until every node has a direct connection to every other; returns seconds."""
        t = time.perf_counter()
        ids = [n.status()["peer_id"] for n in nodes]
        while time.perf_counter() - t < limit:
            ok = True
            for n in nodes:
                s = n.status()
                conn = {p["peer_id"] for p in s["peers"] if p.get("connected")}
                if not all(i in conn for i in ids if i != s["peer_id"]):
                    ok = False
                    break
            if ok:
                return time.perf_counter() - t
            time.sleep(0.02)
        raise RuntimeError(f"{len(nodes)} nodes not fully connected within {limit} s")

    def stop_all(self):
        for n in self.nodes:
            n.stop()
        self.nodes = []

    def cleanup(self):
        self.stop_all()
        shutil.rmtree(self.root, ignore_errors=True)

    def row(self, name, values, unit, note=""):
        if not values:
            return
        v = sorted(values)
        self.rows.append((name, statistics.median(v), v[0], v[-1], unit, len(v), note))
        print(f"  {name}: median {statistics.median(v):.3f} {unit} (min {v[0]:.3f}, max {v[-1]:.3f}, n={len(v)}) {note}",
              file=sys.stderr, flush=True)

    # --- helpers -------------------------------------------------------------------------

    @staticmethod
    def upload(node, name):
        data = open(os.path.join(MODULES, name), "rb").read()
        h = hashlib.sha256(data).hexdigest()
        http("PUT", f"{node.api}/v1/modules?name={name}", data)
        return h

    def submit(self, node, yaml, modules):
        t = time.perf_counter()
        r = http("POST", node.api + "/v1/dags", {"yaml": yaml, "modules": modules})
        return r["id"], time.perf_counter() - t

    @staticmethod
    def wait(node, dag_id, limit=600):
        deadline = time.time() + limit
        version = 0
        while time.time() < deadline:
            v = http("GET", f"{node.api}/v1/dags/{dag_id}?tasks=false&after={version}&wait_ms=20000", timeout=30)
            if v["state"] in ("succeeded", "failed", "cancelled"):
                return v
            version = v["version"]
        raise RuntimeError(f"DAG {dag_id} did not finish in {limit} s")

    @staticmethod
    def wait_leader(nodes, limit=30):
        deadline = time.time() + limit
        while time.time() < deadline:
            try:
                s = [n.status() for n in nodes]
            except (urllib.error.URLError, OSError):
                time.sleep(0.01)
                continue
            leaders = {x["leader"] for x in s}
            ids = {x["peer_id"] for x in s}
            if len(leaders) == 1 and next(iter(leaders)) in ids:
                return next(iter(leaders))
            time.sleep(0.01)
        raise RuntimeError("no agreed leader")

    def controller(self, nodes):
        leader = self.wait_leader(nodes)
        return next(n for n in nodes if n.status()["peer_id"] == leader)

    def follower(self, nodes):
        """The last node that is not the controller (the node itself when alone)."""
        if len(nodes) == 1:
            return nodes[0]
        leader = self.wait_leader(nodes)
        return next(n for n in reversed(nodes) if n.status()["peer_id"] != leader)

    @staticmethod
    def wait_peers(nodes, limit=30):
        deadline = time.time() + limit
        while time.time() < deadline:
            s = [n.status() for n in nodes]
            # Peers that are down (a killed controller) stay listed a while, `alive: false`.
            live = [[p for p in x["peers"] if p.get("alive", True)] for x in s]
            if all(len(ps) == len(nodes) - 1 and all(p["executors"]["total"] > 0 for p in ps) for ps in live):
                return
            time.sleep(0.05)
        raise RuntimeError("mesh did not form")

    @staticmethod
    def fanout_yaml(n, fanin="deps", name="fanout"):
        """n independent no-op tasks and one fan-in task `join`.

        fanin="deps": `join` lists every task in depends_on and has no inputs (argv is just
        the module name). fanin="inputs": `join` also takes every output as an input
        (`inputs: [t0, t1, ...]`, the whole-output form: n argv entries, empty for noop)."""
        lines = [f"name: {name}", "tasks:"]
        for i in range(n):
            lines.append(f"  - {{id: t{i}, module: noop.wasm}}")
        deps = ", ".join(f"t{i}" for i in range(n))
        extra = f", inputs: [{deps}]" if fanin == "inputs" else ""
        lines.append(f"  - {{id: join, module: noop.wasm, depends_on: [{deps}]{extra}}}")
        return "\n".join(lines) + "\n"

    @staticmethod
    def wait_timed(node, dag_id, t_send, limit=600):
        """wait(), plus the perf_counter seconds from t_send to the answer showing it finished."""
        v = Bench.wait(node, dag_id, limit)
        return v, time.perf_counter() - t_send

    # --- measurements --------------------------------------------------------------------

    def throughput(self, nodes, size, label, runs):
        submit_at = self.follower(nodes)
        h = self.upload(submit_at, "noop.wasm")
        yaml = self.fanout_yaml(size)
        rates, accept = [], []
        # Warm-up: followers fetch and compile the module on the first run.
        dag_id, _ = self.submit(submit_at, yaml, {"noop.wasm": h})
        self.wait(submit_at, dag_id)
        leader = self.controller(nodes)
        cpu0 = {n.proc.pid: cpu_ms(n.proc.pid) for n in nodes}
        for _ in range(runs):
            dag_id, took = self.submit(submit_at, yaml, {"noop.wasm": h})
            v = self.wait(submit_at, dag_id)
            assert v["state"] == "succeeded", v
            ms = max(1, v["finished_at_ms"] - v["created_at_ms"])
            rates.append((size + 1) / (ms / 1000.0))
            accept.append(took * 1000)
        per_k = {n.proc.pid: (cpu_ms(n.proc.pid) - cpu0[n.proc.pid]) * 1000 / (runs * (size + 1)) for n in nodes}
        self.row(f"throughput {size}+1 no-op tasks, {label}", rates, "tasks/s", "accept to finish, server clock")
        self.row(f"accept (durable) {size}+1-task DAG, {label}", accept, "ms", "POST /v1/dags round trip")
        self.row(f"node CPU per 1,000 tasks, {size}+1 DAG, {label}: controller", [per_k[leader.proc.pid]], "ms",
                 "node process only (executors excluded), over all runs; steadier than tasks/s on a shared machine")
        if len(nodes) > 1:
            self.row(f"node CPU per 1,000 tasks, {size}+1 DAG, {label}: followers",
                     [v for p, v in per_k.items() if p != leader.proc.pid], "ms", "one value per follower")

    def throughput_first(self, nodes, size, label, runs):
        """Throughput of a large fan-out (+ fan-in), and how long after the POST is sent its
        first task starts (watched at the controller, see FirstStart)."""
        submit_at = self.follower(nodes)
        watch_at = self.controller(nodes)
        h = self.upload(submit_at, "noop.wasm")
        rates, accept, seen, started, succeeded = [], [], [], [], []
        for k in range(runs):
            name = f"fanout-{size}-{k}-{os.getpid()}-{time.time_ns() % 10**9}"
            body = {"yaml": self.fanout_yaml(size, name=name), "modules": {"noop.wasm": h}}
            t = time.perf_counter()
            with FirstStart(watch_at, name, t) as w:
                r = http("POST", submit_at.api + "/v1/dags", body, timeout=300)
                accept.append((time.perf_counter() - t) * 1000)
                w.thread.join(timeout=120)
            v = self.wait(submit_at, r["id"])
            assert v["state"] == "succeeded", v
            assert w.succeeded is not None, f"the controller never listed {name} with a task succeeded"
            ms = max(1, v["finished_at_ms"] - v["created_at_ms"])
            rates.append((size + 1) / (ms / 1000.0))
            for xs, x in ((seen, w.seen), (started, w.started), (succeeded, w.succeeded)):
                if x is not None:
                    xs.append(x * 1000)
        where = "at the controller" if watch_at is submit_at else "at the controller, submitted at a follower"
        self.row(f"throughput {size}+1 no-op tasks, {label}", rates, "tasks/s", "accept to finish, server clock")
        self.row(f"accept (durable) {size}+1-task DAG, {label}", accept, "ms", "POST /v1/dags round trip")
        note = f"POST sent to first GET /v1/dags?limit=1 {where} (polled every ~2 ms during the POST) showing "
        self.row(f"submit to DAG listed, {size}+1-task DAG, {label}", seen, "ms", note + "the DAG")
        self.row(f"submit to first task start, {size}+1-task DAG, {label}", started, "ms",
                 note + "counts.running+succeeded > 0 (a task assigned to an executor)")
        self.row(f"submit to first task succeeded, {size}+1-task DAG, {label}", succeeded, "ms",
                 note + "counts.succeeded > 0")

    def scale(self, nodes, size, fanin="deps"):
        """One big DAG (fan-out + fan-in) submitted at a follower of a fresh mesh: accept time,
        first task start, finish time, peak memory of every node."""
        submit_at = self.follower(nodes)
        watch_at = self.controller(nodes)
        h = self.upload(submit_at, "noop.wasm")
        name = f"scale-{size}-{os.getpid()}"
        yaml = self.fanout_yaml(size, fanin, name)
        body = {"yaml": yaml, "modules": {"noop.wasm": h}}
        label = f"{size:,}+1 tasks, 3 nodes x 2 executors"
        print(f"  submitting {label} ({len(yaml) / 1e6:.1f} MB of YAML, fan-in {fanin})", file=sys.stderr, flush=True)
        with RssSampler(nodes) as sampler:
            t = time.perf_counter()
            with FirstStart(watch_at, name, t, limit=600) as w:
                try:
                    r = http("POST", submit_at.api + "/v1/dags", body, timeout=600)
                except urllib.error.HTTPError as e:
                    raise RuntimeError(f"scale DAG refused: HTTP {e.code}: {e.read()[:2000]!r}")
                accept = (time.perf_counter() - t) * 1000
                print(f"  accepted in {accept:.0f} ms", file=sys.stderr, flush=True)
                w.thread.join(timeout=600)
            v, done = self.wait_timed(submit_at, r["id"], t, limit=1800)
        if v["state"] != "succeeded":
            raise RuntimeError(f"scale DAG ended {v['state']}: {json.dumps(v)[:2000]}")
        fanin_note = ("fan-in: join has depends_on on all tasks, no inputs" if fanin == "deps"
                      else "fan-in: join has depends_on and inputs naming all tasks")
        self.row(f"scale: accept (durable) {label}", [accept], "ms", f"POST /v1/dags at a follower; {fanin_note}")
        note = "POST sent to first GET /v1/dags?limit=1 at the controller (polled every ~2 ms) showing "
        for what, x, shows in (("DAG listed", w.seen, "the DAG"),
                               ("first task start", w.started, "counts.running+succeeded > 0"),
                               ("first task succeeded", w.succeeded, "counts.succeeded > 0")):
            if x is not None:
                self.row(f"scale: submit to {what}, {label}", [x * 1000], "ms", note + shows)
        self.row(f"scale: submit to finish, {label}", [done * 1000], "ms",
                 "POST sent to long poll at the submit node showing succeeded, client clock")
        ms = max(1, v["finished_at_ms"] - v["created_at_ms"])
        self.row(f"scale: throughput, {label}", [(size + 1) / (ms / 1000.0)], "tasks/s",
                 "accept to finish, server clock")
        for i, n in enumerate(nodes):
            role = ("controller" if n is watch_at else "follower") + (", submitted here" if n is submit_at else "")
            self.row(f"scale: peak RSS (VmHWM) of bx3-node process, {role}", [proc_kb(n.proc.pid, "VmHWM") / 1024],
                     "MB", "node process only, read at the end; the mesh was fresh")
            self.row(f"scale: max sampled RSS node + executors, {role}", [sampler.max_node[i] / 1024], "MB",
                     f"VmRSS summed over the process tree every 0.5 s ({sampler.samples} samples)")
        self.row("scale: max sampled RSS, all 3 nodes + executors", [sampler.max_total / 1024], "MB",
                 "largest per-sample sum over the 3 process trees")

    def breakdown(self, lone, nodes, samples):
        """Parts of one-task latency that can be told apart from outside: the same series at
        a lone node (no forwarding, no replica), at the controller of 3 nodes (a replica, no
        forwarding) and at a follower of 3 nodes (both). Differences between the series are
        the forwarding and replica costs; fsync, assignment and result delivery are not
        visible separately from outside."""
        yaml = "name: one\ntasks:\n  - {id: t, module: noop.wasm}\n"

        def series(node, what, read_note, accept_note):
            h = self.upload(node, "noop.wasm")
            self.wait(node, self.submit(node, yaml, {"noop.wasm": h})[0])  # warm: module compiled
            status, submit, total, read = [], [], [], []
            for _ in range(samples):
                t = time.perf_counter()
                node.status()
                status.append((time.perf_counter() - t) * 1000)
            for _ in range(samples):
                t = time.perf_counter()
                dag_id, took = self.submit(node, yaml, {"noop.wasm": h})
                v = self.wait(node, dag_id)
                total.append((time.perf_counter() - t) * 1000)
                submit.append(took * 1000)
                assert v["state"] == "succeeded", v
                t = time.perf_counter()
                http("GET", f"{node.api}/v1/dags/{dag_id}?tasks=false")
                read.append((time.perf_counter() - t) * 1000)
            rest = [a - b for a, b in zip(total, submit)]
            self.row(f"one-task {what}: GET /v1/status", status, "ms",
                     "HTTP + node actor round trip, answered by the node itself (HTTP floor)")
            self.row(f"one-task {what}: GET finished DAG", read, "ms", read_note)
            self.row(f"one-task {what}: POST answered (durable accept)", submit, "ms", accept_note)
            self.row(f"one-task {what}: POST answered to result seen", rest, "ms",
                     "per sample total - accept: assignment + execution + result + store + long poll "
                     "(the task may already run before the POST is answered)")
            self.row(f"one-task {what}: submit to result", total, "ms", "POST sent to long poll showing succeeded")

        if lone is not None:
            series(lone[0], "lone node", "tasks=false, answered locally",
                   "parse + validate + store + flush; no forwarding, no replica")
        if nodes is not None:
            at_leader = self.controller(nodes)
            follower = self.follower(nodes)
            series(at_leader, "3 nodes, at the controller", "tasks=false, answered locally",
                   "parse + validate + store + flush + one follower's copy (replication round trip)")
            series(follower, "3 nodes, at a follower",
                   "tasks=false, forwarded to the controller over libp2p and back",
                   "parse + forward to the controller + its store/flush + one follower's copy")

    def latency(self, nodes, samples):
        follower = self.follower(nodes)
        h = self.upload(follower, "noop.wasm")
        yaml = "name: one\ntasks:\n  - {id: t, module: noop.wasm}\n"
        self.submit(follower, yaml, {"noop.wasm": h})  # warm: module fetched and compiled
        time.sleep(0.5)
        total = []
        for _ in range(samples):
            t = time.perf_counter()
            dag_id, _ = self.submit(follower, yaml, {"noop.wasm": h})
            v = self.wait(follower, dag_id)
            total.append((time.perf_counter() - t) * 1000)
            assert v["state"] == "succeeded", v
        total.sort()
        self.row("one-task DAG at a follower, submit to result (p50)", total, "ms", "HTTP submit + long poll")
        p99 = total[min(len(total) - 1, int(len(total) * 0.99))]
        self.rows.append(("one-task DAG at a follower, p99", p99, p99, p99, "ms", len(total), ""))
        print(f"  p99 {p99:.3f} ms", file=sys.stderr)

    def convergence(self, size, runs):
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            nodes = self.mesh(size, 1)
            self.wait_leader(nodes)
            times.append((time.perf_counter() - t) * 1000)
            self.stop_all()
        self.row(f"convergence, {size} local nodes (start to agreed leader)", times, "ms",
                 "includes process start")

    def failover(self, runs, topology="full"):
        """kill -9 the controller while a DAG of small tasks runs: time until the survivors
        agree on a new controller, and until the next task finishes under it. In a star or a
        chain, the nodes name only the hub or the one before them (peer exchange connects the
        rest); the replacement node names one survivor only."""
        leader_times, task_times = [], []
        nodes = self.mesh(3, 2, topology)
        self.wait_leader(nodes)
        self.wait_peers(nodes)
        rounds = 300_000 if self.smoke else 3_000_000
        for _ in range(runs):
            leader = self.wait_leader(nodes)
            victim = next(n for n in nodes if n.status()["peer_id"] == leader)
            survivors = [n for n in nodes if n is not victim]
            watcher = survivors[0]
            h = self.upload(watcher, "cpu_heavy.wasm")
            lines = ["name: steady", "tasks:"] + [
                f"  - {{id: t{i}, module: cpu_heavy.wasm, inputs: [\"{rounds + i}\"]}}" for i in range(400)]
            dag_id, _ = self.submit(watcher, "\n".join(lines) + "\n", {"cpu_heavy.wasm": h})
            deadline = time.time() + 60
            while http("GET", f"{watcher.api}/v1/dags/{dag_id}?tasks=false")["counts"]["succeeded"] < 10:
                if time.time() > deadline:
                    raise RuntimeError("steady DAG did not start")
                time.sleep(0.01)
            t = time.perf_counter()
            victim.kill9()
            new = self.wait_leader(survivors)
            leader_times.append((time.perf_counter() - t) * 1000)
            assert new != leader
            done_at = None
            while True:
                try:
                    done = http("GET", f"{watcher.api}/v1/dags/{dag_id}?tasks=false", timeout=10)["counts"]["succeeded"]
                except (urllib.error.URLError, OSError):
                    done = None
                if done is not None:
                    if done_at is None:
                        done_at = done
                    elif done > done_at:
                        break
                if time.perf_counter() - t > 60:
                    raise RuntimeError("no task finished after the failover")
                time.sleep(0.005)
            task_times.append((time.perf_counter() - t) * 1000)
            try:
                http("POST", f"{watcher.api}/v1/dags/{dag_id}/cancel")
            except urllib.error.URLError:
                pass
            # Bring a replacement in so the next round again kills a controller of three.
            names = [n.p2p for n in survivors] if topology == "full" else [survivors[-1].p2p]
            nodes = survivors + [self.node(2, peers=names)]
            self.wait_peers(nodes)
        what = "3 nodes" if topology == "full" else f"3 nodes, {topology}"
        self.row(f"failover: kill -9 controller to agreed new controller ({what})", leader_times, "ms",
                 "election timeout 0.5-1.0 s")
        self.row(f"failover: kill -9 controller to next task finished ({what})", task_times, "ms",
                 "DAG of 400 small tasks running")

    def star_convergence(self, size, runs):
        """A star (every node names node 0 only): seconds from the last node's API being up to
        every node holding a direct connection to every other (peer exchange)."""
        times = []
        for _ in range(runs):
            nodes = self.mesh(size, 1, "star")
            times.append(self.wait_connected(nodes) * 1000)
            self.stop_all()
        self.row(f"star of {size} nodes: last node up to fully connected", times, "ms",
                 "each node names only node 0; addresses learned from relayed announcements")

    def cpu_dag(self, n, rounds, name="cpu"):
        lines = [f"name: {name}", "tasks:"] + [
            f"  - {{id: t{i}, module: cpu_heavy.wasm, inputs: [\"{rounds + i}\"]}}" for i in range(n)]
        return "\n".join(lines) + "\n"

    def leaf_latency_under_load(self, tasks, rounds, samples):
        """3 nodes in a star with default executor counts; a CPU-bound DAG keeps every core
        busy while one-task DAGs are submitted at a leaf, one after the other."""
        nodes = self.mesh(3, None, "star")
        self.wait_leader(nodes)
        self.wait_connected(nodes)
        leaf = self.follower(nodes)
        if leaf is nodes[0]:
            leaf = nodes[1]
        hc = self.upload(leaf, "cpu_heavy.wasm")
        he = self.upload(leaf, "echo.wasm")
        one = "name: one\ntasks:\n  - {id: t, module: echo.wasm, inputs: [hi]}\n"
        self.wait(leaf, self.submit(leaf, one, {"echo.wasm": he})[0])  # warm
        idle = []
        for _ in range(samples):
            t = time.perf_counter()
            self.wait(leaf, self.submit(leaf, one, {"echo.wasm": he})[0])
            idle.append((time.perf_counter() - t) * 1000)
        loaded = []
        with self.watch_controller(nodes, f"the CPU-bound DAG ({tasks} tasks, 3 nodes, default executors)"):
            dag_id, _ = self.submit(leaf, self.cpu_dag(tasks, rounds), {"cpu_heavy.wasm": hc})
            deadline = time.time() + 120
            while http("GET", f"{leaf.api}/v1/dags/{dag_id}?tasks=false")["counts"]["succeeded"] < 3:
                if time.time() > deadline:
                    raise RuntimeError("CPU-bound DAG did not start")
                time.sleep(0.05)
            for _ in range(samples):
                if http("GET", f"{leaf.api}/v1/dags/{dag_id}?tasks=false")["state"] != "running":
                    break
                t = time.perf_counter()
                v = self.wait(leaf, self.submit(leaf, one, {"echo.wasm": he})[0])
                assert v["state"] == "succeeded", v
                loaded.append((time.perf_counter() - t) * 1000)
            v = self.wait(leaf, dag_id, limit=1800)
            assert v["state"] == "succeeded", v
        execs = [n.status()["executors"] for n in nodes]
        self.row("one-task DAG at a leaf, idle mesh (3-node star)", idle, "ms", "submit to result, echo.wasm")
        self.row("one-task DAG at a leaf while CPU-bound work saturates the mesh", loaded, "ms",
                 f"{tasks} cpu_heavy tasks running; executors {[e['total'] for e in execs]} "
                 f"(limited by {execs[0].get('limited_by')})")
        if idle and loaded:
            self.row("  ratio loaded / idle (one-task latency at a leaf)",
                     [statistics.median(loaded) / statistics.median(idle)], "x", "same run")
        self.stop_all()

    def sizing(self, tasks, rounds):
        """Executor count and CPU-bound throughput of a 3-node mesh with the old default
        (RAM-sized: --max-executors set to the RAM slots) and the new one (min(RAM slots,
        CPU cores)), in the same run, with the controller changes during each."""
        results = {}
        probe = self.node(None)
        ram_slots = probe.status()["executors"].get("ram_slots", 0)
        self.stop_all()
        for label, executors in (("before: RAM-sized", ram_slots), ("after: min(RAM, cores)", None)):
            nodes = self.mesh(3, executors)
            self.wait_leader(nodes)
            self.wait_peers(nodes)
            submit_at = self.follower(nodes)
            h = self.upload(submit_at, "cpu_heavy.wasm")
            self.wait(submit_at, self.submit(submit_at, self.cpu_dag(6, 1000), {"cpu_heavy.wasm": h})[0])
            total = nodes[0].status()["executors"]["total"]
            with self.watch_controller(nodes, f"the CPU-bound DAG, {label}"):
                dag_id, _ = self.submit(submit_at, self.cpu_dag(tasks, rounds, "sizing"), {"cpu_heavy.wasm": h})
                v = self.wait(submit_at, dag_id, limit=1800)
            ok = v["state"] == "succeeded"
            ms = max(1, v["finished_at_ms"] - v["created_at_ms"])
            results[label] = (total, tasks / (ms / 1000.0), ok)
            self.row(f"executors per node, {label}", [total], "", f"RAM slots {ram_slots}")
            self.row(f"CPU-bound throughput, {label}", [tasks / (ms / 1000.0)], "tasks/s",
                     f"{tasks} cpu_heavy tasks of ~{rounds / 1e6:.0f} M rounds, 3 nodes; DAG {v['state']}")
            self.stop_all()
        (_, before, _), (_, after, _) = results.values()
        self.row("  ratio after / before (CPU-bound throughput)", [after / before], "x", "same run")

    def scale_reaction(self, runs):
        ram = os.path.join(self.root, "ram")
        open(ram, "w").write("1024")
        n = self.node(64, extra=["--ram-file", ram])
        times = []
        for i in range(runs):
            target_mb, expect = (2048, 12) if i % 2 == 0 else (1024, 4)
            t = time.perf_counter()
            open(ram, "w").write(str(target_mb))
            while n.status()["executors"]["total"] != expect:
                time.sleep(0.01)
                if time.perf_counter() - t > 20:
                    raise RuntimeError("executor count did not follow RAM")
            times.append((time.perf_counter() - t) * 1000)
        self.stop_all()
        self.row("executor scale reaction (RAM change to new count)", times, "ms", "re-evaluated every 3 s")

    def dashboard_cost(self, nodes, size, runs):
        """What a dashboard open on a big DAG costs the node serving it (the controller, where
        the page's reads are answered): node CPU per 1,000 tasks, peak sampled RSS and
        throughput of the same DAG with and without the page, alternating, same mesh."""
        ctl = self.controller(nodes)
        h = self.upload(ctl, "noop.wasm")
        self.wait(ctl, self.submit(ctl, self.fanout_yaml(200, name="warm-up"), {"noop.wasm": h})[0])
        res = {False: ([], [], []), True: ([], [], [])}
        browser_cpu = []
        kind = "no page"
        # ABBA order: a store that grows run after run (sled keeps every DAG) weighs on both.
        for k in range(2 * runs):
            with_page = k % 4 in (1, 2)
            yaml = self.fanout_yaml(size, name=f"dash-{size}-{k}")
            cpu0 = cpu_ms(ctl.proc.pid)
            with RssSampler([ctl]) as sampler:
                dag_id, _ = self.submit(ctl, yaml, {"noop.wasm": h})
                with Page(ctl, dag_id, self.root, blank=not with_page) as page:
                    if with_page:
                        kind = page.kind()
                    v = self.wait(ctl, dag_id, limit=1800)
                    if with_page and page.proc is not None:
                        browser_cpu.append(sum(cpu_ms(p) for p in descendants(page.proc.pid)) / 1000)
            assert v["state"] == "succeeded", v
            ms = max(1, v["finished_at_ms"] - v["created_at_ms"])
            rates, cpu, rss = res[with_page]
            rates.append((size + 1) / (ms / 1000.0))
            cpu.append((cpu_ms(ctl.proc.pid) - cpu0) * 1000 / (size + 1))
            rss.append(sampler.max_node[0] / 1024)
        label = (f"{size:,}+1-task DAG at the controller, 3 nodes x 2 executors; a browser starts after the POST"
                 " in both runs (about:blank without the page)")
        for with_page, what in ((False, "no page open"), (True, f"dashboard open on it ({kind})")):
            rates, cpu, rss = res[with_page]
            self.row(f"dashboard: controller CPU per 1,000 tasks, {what}", cpu, "ms", label)
            self.row(f"dashboard: controller max sampled RSS, {what}", rss, "MB", "node + executors, every 0.5 s")
            self.row(f"dashboard: throughput, {what}", rates, "tasks/s", "accept to finish, server clock")
        self.row("dashboard: CPU of the browser itself while the page was open", browser_cpu, "s",
                 "Chromium's process tree, on the same 2 cores as the mesh (a person's browser is elsewhere)")
        ratio = statistics.median(res[True][0]) / statistics.median(res[False][0])
        self.row("dashboard: throughput with page / without", [ratio], "ratio", "medians of the runs above")
        cpu_ratio = statistics.median(res[True][1]) / statistics.median(res[False][1])
        self.row("dashboard: controller CPU with page / without", [cpu_ratio], "ratio", "medians of the runs above")

    def metrics_cost(self, nodes, size, runs):
        """Throughput of the same DAG with every node's /metrics scraped every second versus
        not, alternating in one run on one mesh; and what one scrape costs."""
        submit_at = self.follower(nodes)
        h = self.upload(submit_at, "noop.wasm")
        self.wait(submit_at, self.submit(submit_at, self.fanout_yaml(200, name="warm-up"), {"noop.wasm": h})[0])
        rates = {False: [], True: []}
        scrape_ms, scrape_bytes = [], []
        for k in range(2 * runs):
            scraped = k % 4 in (1, 2)  # ABBA, as above
            yaml = self.fanout_yaml(size, name=f"metrics-{size}-{k}")
            if scraped:
                with Scraper(nodes) as sc:
                    dag_id, _ = self.submit(submit_at, yaml, {"noop.wasm": h})
                    v = self.wait(submit_at, dag_id)
                scrape_ms += sc.ms
                scrape_bytes += sc.bytes
            else:
                dag_id, _ = self.submit(submit_at, yaml, {"noop.wasm": h})
                v = self.wait(submit_at, dag_id)
            assert v["state"] == "succeeded", v
            ms = max(1, v["finished_at_ms"] - v["created_at_ms"])
            rates[scraped].append((size + 1) / (ms / 1000.0))
        label = f"{size:,}+1 no-op tasks, 3 nodes x 2 executors"
        self.row(f"metrics: throughput, not scraped, {label}", rates[False], "tasks/s", "accept to finish")
        self.row(f"metrics: throughput, every node scraped every 1 s, {label}", rates[True], "tasks/s",
                 "accept to finish")
        self.row("metrics: throughput scraped / not scraped", [statistics.median(rates[True]) / statistics.median(rates[False])],
                 "ratio", "medians of the runs above, same mesh, alternating")
        self.row("metrics: one scrape of /metrics under load", scrape_ms, "ms", "GET round trip, client clock")
        self.row("metrics: size of one scrape", [b / 1024 for b in scrape_bytes], "KiB", "OpenMetrics text")

    def idle(self, seconds):
        """CPU and RSS of idle nodes over `seconds`: a lone node, then each node of an idle
        3-node mesh (controller heartbeats, announces, replication checks, gossip)."""
        tick = os.sysconf("SC_CLK_TCK")

        def cpu(pid):
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / tick

        def measure(nodes):
            c0, t0 = [cpu(n.proc.pid) for n in nodes], time.time()
            time.sleep(seconds)
            c1, t1 = [cpu(n.proc.pid) for n in nodes], time.time()
            pct = [100 * (b - a) / (t1 - t0) for a, b in zip(c0, c1)]
            rss = [proc_kb(n.proc.pid, "VmRSS") / 1024 for n in nodes]
            return pct, rss

        one = [self.node(2)]
        self.wait_leader(one)
        time.sleep(1)
        pct, rss = measure(one)
        self.row(f"idle lone node CPU over {seconds} s", pct, "%", "target < 1 %")
        self.row("idle lone node RSS", rss, "MB", "target < 50 MB")
        self.stop_all()
        three = self.mesh(3, 2)
        leader = self.wait_leader(three)
        self.wait_peers(three)
        time.sleep(2)
        pct, rss = measure(three)
        ids = [n.status()["peer_id"] for n in three]
        ctl = [p for p, i in zip(pct, ids) if i == leader]
        fol = [p for p, i in zip(pct, ids) if i != leader]
        self.row(f"idle 3-node mesh: controller CPU over {seconds} s", ctl, "%", "target < 1 %")
        self.row(f"idle 3-node mesh: follower CPU over {seconds} s", fol, "%", "target < 1 %; one value per follower")
        self.row("idle 3-node mesh: RSS per node", rss, "MB", "target < 50 MB")
        self.stop_all()


SECTIONS = ("single", "mesh", "scale", "convergence", "topology", "load", "executors", "dashboard")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    ap.add_argument("--only", help="comma-separated sections to run (default all): " + ",".join(SECTIONS))
    ap.add_argument("--scale-tasks", type=int, help="size of the scale DAG (default 100000, smoke 2000)")
    ap.add_argument("--scale-fanin", choices=("deps", "inputs"), default="deps",
                    help="fan-in of the scale DAG: depends_on only (default), or every output as an input too")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    b = Bench(args.bin, args.smoke)
    s = args.smoke
    big = 1000 if s else 10_000
    try:
        if "single" in only:
            print("--- single node", file=sys.stderr)
            one = [b.node(2)]
            b.wait_leader(one)
            b.throughput(one, 200 if s else 2000, "1 node x 2 executors", 1 if s else 5)
            b.throughput_first(one, big, "1 node x 2 executors", 1 if s else 5)
            b.breakdown(one, None, 3 if s else 100)
            b.stop_all()
        if "mesh" in only:
            print("--- 3-node mesh", file=sys.stderr)
            three = b.mesh(3, 2)
            b.wait_leader(three)
            b.wait_peers(three)
            with b.watch_controller(three, "the 3-node throughput runs"):
                b.throughput(three, 200 if s else 2000, "3 nodes x 2 executors", 1 if s else 5)
                b.throughput_first(three, big, "3 nodes x 2 executors (submitted at a follower)", 1 if s else 5)
            b.latency(three, 3 if s else 100)
            b.breakdown(None, three, 3 if s else 100)
            b.stop_all()
        if "scale" in only:
            print("--- scale: one big DAG on a fresh 3-node mesh", file=sys.stderr)
            three = b.mesh(3, 2)
            b.wait_leader(three)
            b.wait_peers(three)
            with b.watch_controller(three, "the scale run"):
                b.scale(three, args.scale_tasks or (2000 if s else 100_000), args.scale_fanin)
            b.stop_all()
        if "convergence" in only:
            print("--- convergence and failover", file=sys.stderr)
            b.convergence(3, 1 if s else 5)
            if not s:
                b.convergence(10, 3)
            b.failover(1 if s else 10)
            b.stop_all()
        if "topology" in only:
            print("--- topology: star and chain", file=sys.stderr)
            b.star_convergence(4 if s else 10, 1 if s else 5)
            if not s:
                b.failover(10, "star")
                b.failover(10, "chain")
            b.stop_all()
        if "load" in only:
            print("--- load: the control plane under CPU-bound work", file=sys.stderr)
            b.leaf_latency_under_load(24 if s else 300, 20_000_000 if s else 40_000_000, 2 if s else 20)
            if not s:
                b.sizing(60, 100_000_000)
            b.stop_all()
        if "executors" in only:
            print("--- executors", file=sys.stderr)
            b.scale_reaction(2 if s else 6)
            b.idle(3 if s else 30)
        if "dashboard" in only:
            print("--- dashboard and metrics: what watching costs", file=sys.stderr)
            three = b.mesh(3, 2)
            b.wait_leader(three)
            b.wait_peers(three)
            b.dashboard_cost(three, 2000 if s else 100_000, 1 if s else 2)
            b.metrics_cost(three, 500 if s else 10_000, 1 if s else 3)
            b.stop_all()
    finally:
        b.cleanup()
    print(f"{'measurement':<62} {'median':>12} {'min':>12} {'max':>12}  unit      n  note")
    for name, med, lo, hi, unit, n, note in b.rows:
        print(f"{name:<62} {med:>12.3f} {lo:>12.3f} {hi:>12.3f}  {unit:<8} {n:>2}  {note}")
    if args.json:
        json.dump([dict(zip(["name", "median", "min", "max", "unit", "n", "note"], r)) for r in b.rows],
                  open(args.json, "w"), indent=1)
    print()
    print("controller changes during heavy runs (must be 0):")
    for label, n in b.changes:
        print(f"  {n:>3}  {label}")
    bad = [label for label, n in b.changes if n != 0]
    if bad and args.smoke:
        print(f"bench smoke: controller changed during {bad}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
