#!/usr/bin/env python3
"""bx3 mesh benchmarks, driven by scripts/bench.sh.

Starts real bx3-node processes on 127.0.0.1 only (--no-mdns, explicit --peer), measures each
figure several times, and prints a table of medians with min/max. Every node it starts is
stopped by pid. Sizes shrink with --smoke (used by CI so this script cannot rot).

Sections (--only): single (throughput 2,000 and 10,000 no-op tasks + fan-in, submit to first
task start, one-task latency parts on a lone node), mesh (the same on 3 nodes, follower
latency p50/p99, one-task parts at the controller and at a follower), scale (one 100,000-task
DAG on a fresh 3-node mesh: accept, first task, finish, peak RSS), convergence (3 and 10
nodes, failover), executors (scale reaction, idle cost).
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


class Node:
    def __init__(self, binary, root, name, executors, peers=(), extra=()):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        self.p2p_port = free_port()
        self.p2p = f"/ip4/127.0.0.1/tcp/{self.p2p_port}"
        args = [binary, "run", "--data-dir", self.dir, "--api", "127.0.0.1:0", "--no-mdns",
                "--listen", self.p2p, "--max-executors", str(executors), *extra]
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

    def node(self, executors, peers=(), extra=()):
        self.count += 1
        n = Node(self.binary, self.root, f"n{self.count}", executors, peers, extra)
        self.nodes.append(n)
        return n

    def mesh(self, size, executors):
        nodes = []
        for _ in range(size):
            nodes.append(self.node(executors, peers=[m.p2p for m in nodes]))
        return nodes

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
            if all(len(x["peers"]) == len(nodes) - 1 and all(p["executors"]["total"] > 0 for p in x["peers"]) for x in s):
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

    def failover(self, runs):
        """kill -9 the controller while a DAG of small tasks runs: time until the survivors
        agree on a new controller, and until the next task finishes under it."""
        leader_times, task_times = [], []
        nodes = self.mesh(3, 2)
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
            nodes = survivors + [self.node(2, peers=[n.p2p for n in survivors])]
            self.wait_peers(nodes)
        self.row("failover: kill -9 controller to agreed new controller (3 nodes)", leader_times, "ms",
                 "election timeout 0.5-1.0 s")
        self.row("failover: kill -9 controller to next task finished", task_times, "ms",
                 "DAG of 400 small tasks running")

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


SECTIONS = ("single", "mesh", "scale", "convergence", "executors")


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
            b.scale(three, args.scale_tasks or (2000 if s else 100_000), args.scale_fanin)
            b.stop_all()
        if "convergence" in only:
            print("--- convergence and failover", file=sys.stderr)
            b.convergence(3, 1 if s else 5)
            if not s:
                b.convergence(10, 3)
            b.failover(1 if s else 10)
            b.stop_all()
        if "executors" in only:
            print("--- executors", file=sys.stderr)
            b.scale_reaction(2 if s else 6)
            b.idle(3 if s else 30)
    finally:
        b.cleanup()
    print(f"{'measurement':<62} {'median':>12} {'min':>12} {'max':>12}  unit      n  note")
    for name, med, lo, hi, unit, n, note in b.rows:
        print(f"{name:<62} {med:>12.3f} {lo:>12.3f} {hi:>12.3f}  {unit:<8} {n:>2}  {note}")
    if args.json:
        json.dump([dict(zip(["name", "median", "min", "max", "unit", "n", "note"], r)) for r in b.rows],
                  open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
