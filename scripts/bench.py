#!/usr/bin/env python3
"""bx3 mesh benchmarks, driven by scripts/bench.sh.

Starts real bx3-node processes on 127.0.0.1 only (--no-mdns, explicit --peer), measures each
figure several times, and prints a table of medians with min/max. Every node it starts is
stopped by pid. Sizes shrink with --smoke (used by CI so this script cannot rot).
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
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = os.path.join(REPO, "wasm_modules")


def http(method, url, body=None, timeout=120):
    data = None
    headers = {}
    if body is not None:
        if isinstance(body, (bytes, bytearray)):
            data = bytes(body)
        else:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
        return json.loads(raw) if raw else None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    def fanout_yaml(n):
        lines = ["name: fanout", "tasks:"]
        for i in range(n):
            lines.append(f"  - {{id: t{i}, module: noop.wasm}}")
        deps = ", ".join(f"t{i}" for i in range(n))
        lines.append(f"  - {{id: join, module: noop.wasm, depends_on: [{deps}]}}")
        return "\n".join(lines) + "\n"

    # --- measurements --------------------------------------------------------------------

    def throughput(self, nodes, size, label, runs):
        submit_at = nodes[-1]
        h = self.upload(submit_at, "noop.wasm")
        yaml = self.fanout_yaml(size)
        rates, accept = [], []
        for _ in range(runs):
            dag_id, took = self.submit(submit_at, yaml, {"noop.wasm": h})
            v = self.wait(submit_at, dag_id)
            assert v["state"] == "succeeded", v
            ms = max(1, v["finished_at_ms"] - v["created_at_ms"])
            rates.append((size + 1) / (ms / 1000.0))
            accept.append(took * 1000)
        self.row(f"throughput {size}+1 no-op tasks, {label}", rates, "tasks/s", "accept to finish, server clock")
        self.row(f"accept (durable) {size}+1-task DAG, {label}", accept, "ms", "POST /v1/dags round trip")

    def latency(self, nodes, samples):
        follower = nodes[-1]
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
        n = self.node(2)
        time.sleep(1)
        pid = n.proc.pid
        tick = os.sysconf("SC_CLK_TCK")

        def cpu():
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / tick

        c0, t0 = cpu(), time.time()
        time.sleep(seconds)
        c1, t1 = cpu(), time.time()
        rss = int([l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]) / 1024
        self.row(f"idle node CPU over {seconds} s", [100 * (c1 - c0) / (t1 - t0)], "%", "target < 1 %")
        self.row("idle node RSS", [rss], "MB", "target < 50 MB")
        self.stop_all()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json", help="also write the rows as JSON to this file")
    args = ap.parse_args()
    b = Bench(args.bin, args.smoke)
    s = args.smoke
    try:
        print("--- single node", file=sys.stderr)
        one = [b.node(2)]
        b.wait_leader(one)
        b.throughput(one, 200 if s else 2000, "1 node x 2 executors", 1 if s else 5)
        b.stop_all()
        print("--- 3-node mesh", file=sys.stderr)
        three = b.mesh(3, 2)
        b.wait_leader(three)
        b.wait_peers(three)
        b.throughput(three, 200 if s else 2000, "3 nodes x 2 executors", 1 if s else 5)
        b.latency(three, 3 if s else 100)
        b.stop_all()
        print("--- convergence and failover", file=sys.stderr)
        b.convergence(3, 1 if s else 5)
        if not s:
            b.convergence(10, 3)
        b.failover(1 if s else 10)
        b.stop_all()
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
