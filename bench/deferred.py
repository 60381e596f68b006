#!/usr/bin/env python3
"""Deferred delivery benchmark (docs/deferred.md, docs/benchmarks.md "Deferred delivery"):
deferrals per second and publish-to-202 latency on one node, then how fast a backlog
drains, for each backend:

    spool            the embedded queue and store (redb, fsync per commit), no broker
    broker-everysec  a private RabbitMQ broker (quorum queue) + Redis, AOF `appendfsync everysec`
    broker-always    the same, Redis with `appendfsync always`

    python3 bench/deferred.py                       # every backend, 10,000 queued each
    python3 bench/deferred.py --backend spool --requests 2000

Per backend:
 1. Deferral: a node whose upstream is a closed port (so its consumers hold their few
    deliveries and do not compete for the CPU), `POST /v1/messages` with
    `strait-defer: always` and a client key, from oha in a closed loop: first one
    connection (the unloaded latency), then `--concurrency` connections until
    `--requests` are queued. Every answer must be 202. The node's own
    `strait_deferred_publish_seconds` histogram (publish to confirm alone) is read
    from /metrics before and after each run.
 2. Drain: that node is stopped (SIGTERM), a mock upstream answering at once is
    started, and a node on the same queue (the spool: the same state directory; the
    broker: a fresh state directory on the same broker and Redis) delivers the whole
    backlog. Time from its start to `strait_deferred_delivered_total{outcome="done"}`
    reaching the number queued, read from /metrics every 50 ms; deliveries per second
    over the steady part (10 % to 90 % of the backlog) and overall. One id is then
    read with GET and must be the mock's 200.

Binaries: CARGO_TARGET_DIR (or target)/release/strait-node and strait-mock-upstream
(`cargo build --release -p strait-node -p strait-chaos`). Needs oha, redis-server and
rabbitmq-server. Every process is started on free loopback ports and stopped by pid at
the end (RabbitMQ: `rabbitmqctl stop`, then its epmd with `epmd -kill`)."""

import argparse
import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loadgen  # noqa: E402
import procs  # noqa: E402
from procs import ROOT  # noqa: E402

BACKENDS = ("spool", "broker-everysec", "broker-always")
LIMITS = "rpm=1000000000,itpm=1000000000000,otpm=1000000000000,concurrency=1000000"
T0 = time.monotonic()


def say(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", action="append", choices=BACKENDS, help="backends to run (repeatable; default all)")
    p.add_argument("--requests", type=int, default=10000, help="deferrals queued per backend (the backlog drained)")
    p.add_argument("--unloaded", type=int, default=500, help="deferrals sent over one connection first")
    p.add_argument("--concurrency", type=int, default=32, help="connections for the loaded run")
    p.add_argument("--node-cpus", default="0", help="CPUs for strait-node (taskset list)")
    p.add_argument("--other-cpus", default="1", help="CPUs for oha, the mock, Redis and RabbitMQ")
    p.add_argument("--out", default=os.path.join(ROOT, "bench-results"), help="results directory")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    return p.parse_args()


def binaries():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    node = os.path.join(target, "release", "strait-node")
    mock = os.path.join(target, "release", "strait-mock-upstream")
    for b in (node, mock):
        if not os.path.exists(b):
            sys.exit(f"missing {b}: build with cargo build --release -p strait-node -p strait-chaos")
    return node, mock


# ---------------------------------------------------------------- services


def start_redis(workdir, fsync):
    """Redis as docs/deferred.md asks for the store: AOF on, no eviction."""
    d = os.path.join(workdir, "redis")
    os.makedirs(d)
    port = procs.free_port()
    cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "yes",
           "--appendfsync", fsync, "--maxmemory-policy", "noeviction", "--dir", d]
    proc = procs.Proc("redis", procs.pinned(cmd, ARGS.other_cpus), log_path=os.path.join(workdir, "redis.log"))
    procs.wait_port(port, proc=proc.popen)
    return proc, f"redis://127.0.0.1:{port}/"


class RabbitMq:
    """A private broker: its own HOME, cookie, ports and data (chaos-tests/src/rabbitmq.rs)."""

    def __init__(self, workdir):
        found = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin/rabbitmq-server"))
        if not found:
            sys.exit("no RabbitMQ: apt-get install rabbitmq-server")
        self.sbin = os.path.dirname(found[-1])
        self.dir = os.path.join(workdir, "rabbitmq")
        os.makedirs(os.path.join(self.dir, "home"))
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            f.write("disk_free_limit.absolute = 1MB\nloopback_users.guest = true\n")
        self.port, self.dist_port, self.epmd_port = procs.free_port(), procs.free_port(), procs.free_port()
        self.env = {
            "HOME": os.path.join(self.dir, "home"),
            "RABBITMQ_NODENAME": f"straitbench{os.getpid()}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(self.dir, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.dir, "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.dir, "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": os.path.join(self.dir, "rabbitmq"),
            "RABBITMQ_PID_FILE": os.path.join(self.dir, "broker.pid"),
            # Erlang's busy-waiting schedulers burn whole cores of a small machine.
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
            # The script then execs the VM instead of waiting on it from a shell.
            "RUNNING_UNDER_SYSTEMD": "true",
        }
        self.proc = procs.Proc("rabbitmq", procs.pinned([os.path.join(self.sbin, "rabbitmq-server")],
                                                        ARGS.other_cpus),
                               env=self.env, log_path=os.path.join(workdir, "rabbitmq.log"))
        procs.wait_port(self.port, timeout=90, proc=self.proc.popen)
        out = self.ctl("-q", "await_startup", "--timeout", "60")
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl await_startup failed: {out.stdout} {out.stderr}")
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"

    def ctl(self, *args):
        env = dict(os.environ)
        env.update(self.env)
        return subprocess.run([os.path.join(self.sbin, "rabbitmqctl")] + list(args), env=env,
                              capture_output=True, text=True, timeout=90)

    def stop(self):
        if self.proc.poll() is None:
            self.ctl("-q", "stop")
        self.proc.stop(timeout=30)
        env = dict(os.environ)
        env["ERL_EPMD_PORT"] = str(self.epmd_port)
        subprocess.run(["epmd", "-kill"], env=env, capture_output=True)


def start_node(node_bin, workdir, name, state_dir, upstream, config):
    port, admin = procs.free_port(), procs.free_port()
    cmd = [node_bin, "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}", "--workers", "1",
           "--no-access-log", "--log-format", "json", "--log-level", "warn", "--upstream", upstream,
           "--state-dir", state_dir, "--default-limits", LIMITS]
    if config:
        cmd += ["--config", config]
    env = {"STRAIT_UPSTREAM_KEYS": "k1", "STRAIT_CLIENT_KEYS": "c1"}
    started = time.monotonic()
    proc = procs.Proc(name, procs.pinned(cmd, ARGS.node_cpus), env=env,
                      log_path=os.path.join(workdir, f"{name}.log"))
    procs.wait_port(port, timeout=30, proc=proc.popen)
    procs.wait_port(admin, timeout=30, proc=proc.popen)
    return proc, port, admin, started


# ---------------------------------------------------------------- measuring

DEFER_HEADERS = dict(loadgen.HEADERS, **{"strait-defer": "always"})


def metrics(admin):
    status, body = procs.http_get(admin, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    return body.decode()


def histogram(text, name):
    """{le: cumulative count}, sum, count of a Prometheus histogram without labels."""
    buckets = {}
    for m in re.finditer(rf'^{name}_bucket\{{le="([^"]+)"\}} (\S+)$', text, re.M):
        buckets[float(m.group(1))] = float(m.group(2))
    return buckets, procs.metric_value(text, f"{name}_sum"), procs.metric_value(text, f"{name}_count")


def histogram_delta(before, after):
    b0, s0, c0 = before
    b1, s1, c1 = after
    return {le: b1[le] - b0.get(le, 0) for le in b1}, s1 - s0, c1 - c0


def quantile(buckets, count, q):
    """The q-quantile by linear interpolation inside its bucket (as Prometheus'
    histogram_quantile does): an estimate, as good as the buckets."""
    if count <= 0:
        return None
    rank = q * count
    prev_le, prev_c = 0.0, 0.0
    for le in sorted(buckets):
        c = buckets[le]
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le


def run_oha_n(port, n, connections, oha):
    """Closed loop: `n` requests over `connections` connections; latency and req/s."""
    cmd = [oha, "-n", str(n), "-c", str(connections), "--no-tui", "--output-format", "json", "-m", "POST",
           "-d", loadgen.BODY.decode()]
    for k, v in DEFER_HEADERS.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(f"http://127.0.0.1:{port}{loadgen.PATH}")
    out = subprocess.run(procs.pinned(cmd, ARGS.other_cpus), capture_output=True, text=True, timeout=1800)
    r = json.loads(out.stdout)
    pct = r["latencyPercentiles"]
    codes = {str(k): v for k, v in r.get("statusCodeDistribution", {}).items()}
    return {
        "requests": n, "connections": connections, "rps": r["summary"]["requestsPerSec"],
        "p50_ms": pct["p50"] * 1000, "p90_ms": pct["p90"] * 1000, "p99_ms": pct["p99"] * 1000,
        "p999_ms": pct["p99.9"] * 1000, "max_ms": r["summary"]["slowest"] * 1000,
        "status_codes": codes, "errors": r.get("errorDistribution", {}),
    }


def defer_one(port):
    """One deferral by hand: its id (for the GET after the drain)."""
    deadline = time.monotonic() + 30
    while True:
        status, body = procs.http_post(port, loadgen.PATH, loadgen.BODY, DEFER_HEADERS)
        if status == 202:
            return json.loads(body)["id"]
        if time.monotonic() > deadline:
            raise RuntimeError(f"no 202 after 30 s: {status} {body[:300]!r}")
        time.sleep(0.5)


def deferral_phase(port, admin, oha, result):
    first_id = defer_one(port)
    runs = []
    for n, c in ((ARGS.unloaded, 1), (ARGS.requests - ARGS.unloaded - 1, ARGS.concurrency)):
        h0 = histogram(metrics(admin), "strait_deferred_publish_seconds")
        r = run_oha_n(port, n, c, oha)
        b, s, cnt = histogram_delta(h0, histogram(metrics(admin), "strait_deferred_publish_seconds"))
        r["publish_confirm"] = {"count": cnt, "mean_ms": 1000 * s / cnt if cnt else None,
                                "p50_ms": 1000 * (quantile(b, cnt, 0.5) or 0),
                                "p99_ms": 1000 * (quantile(b, cnt, 0.99) or 0),
                                "buckets": {str(k): v for k, v in sorted(b.items())}}
        ok = r["status_codes"].get("202", 0)
        say(f"  defer -c{c:<3} {n:>6} requests: {r['rps']:8,.0f}/s  p50 {r['p50_ms']:.2f}  p99 {r['p99_ms']:.2f}"
            f"  p99.9 {r['p999_ms']:.2f} ms  (202: {ok}, other {r['status_codes']}, errors {r['errors']});"
            f"  publish->confirm mean {r['publish_confirm']['mean_ms']:.2f} ms, p50 ~{r['publish_confirm']['p50_ms']:.2f},"
            f" p99 ~{r['publish_confirm']['p99_ms']:.2f} ms")
        if ok != n:
            raise RuntimeError(f"not every deferral was a 202: {r['status_codes']} {r['errors']}")
        runs.append(r)
    result["deferral"] = runs
    queued = procs.metric_value(metrics(admin), "strait_deferred_queued_total")
    result["queued"] = int(queued)
    return first_id, int(queued)


def drain_phase(node_bin, mock_bin, workdir, state_dir, config, queued, first_id, result):
    mock, mock_url, _ = procs.start_mock(mock_bin, workdir, "mock", ARGS.other_cpus, 0, 0, 12)
    node, port, admin, started = start_node(node_bin, workdir, "node-drain", state_dir, mock_url, config)
    samples = []
    deadline = time.monotonic() + 1800
    done = 0
    while done < queued:
        if time.monotonic() > deadline or node.poll() is not None:
            raise RuntimeError(f"drain stopped at {done}/{queued}")
        text = metrics(admin)
        done = int(procs.metric_value(text, "strait_deferred_delivered_total", {"outcome": "done"}))
        samples.append((time.monotonic() - started, done))
        time.sleep(0.05)
    total_s = samples[-1][0]

    def time_at(k):
        return next(t for t, d in samples if d >= k)

    first = next(t for t, d in samples if d > 0)
    lo, hi = time_at(queued // 10), time_at(queued * 9 // 10)
    steady = (queued * 9 // 10 - queued // 10) / (hi - lo)
    text = metrics(admin)
    other = {o: procs.metric_value(text, "strait_deferred_delivered_total", {"outcome": o})
             for o in ("outcome_unknown", "gone", "malformed")}
    status, body = get_result(port, first_id)
    result["drain"] = {"queued": queued, "seconds_from_start": total_s, "first_delivery_s": first,
                       "rate_overall": queued / total_s, "rate_steady_10_90": steady,
                       "other_outcomes": other, "requeued": procs.metric_value(text, "strait_deferred_redeliveries_total"),
                       "get_status": status}
    say(f"  drain {queued} from node start: {total_s:.1f} s ({queued / total_s:,.0f}/s overall, first delivery at "
        f"{first:.2f} s, steady 10-90 %: {steady:,.0f}/s); other outcomes {other}; GET first id: {status}")
    if status != 200 or b"msg_" not in body:
        raise RuntimeError(f"GET {first_id} answered {status}: {body[:300]!r}")
    node.stop()
    mock.stop()


def get_result(port, ident):
    """GET /v1/strait/deferred/{id} with the client key: (status, body)."""
    req = (f"GET /v1/strait/deferred/{ident} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
           f"x-api-key: c1\r\nanthropic-version: 2023-06-01\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(req)
        data = procs.read_to_end(s)
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        rest = procs._dechunk(rest)
    return status, rest


def run_backend(backend, node_bin, mock_bin, oha, root):
    say(f"{backend}")
    workdir = os.path.join(root, backend)
    os.makedirs(workdir)
    result = {"backend": backend}
    config = None
    broker = redis = None
    if backend.startswith("broker"):
        fsync = backend.split("-", 1)[1]
        redis, redis_url = start_redis(workdir, fsync)
        t = time.monotonic()
        broker = RabbitMq(workdir)
        say(f"  redis {redis_url} (appendfsync {fsync}), rabbitmq :{broker.port} ready in {time.monotonic() - t:.1f} s")
        config = os.path.join(workdir, "node.toml")
        with open(config, "w") as f:
            f.write(f'[deferred]\namqp_url = "{broker.url}"\nredis = "{redis_url}"\n')
    state_a = os.path.join(workdir, "state-a")
    closed = f"http://127.0.0.1:{procs.free_port()}"
    node, port, admin, _ = start_node(node_bin, workdir, "node-defer", state_a, closed, config)
    first_id, queued = deferral_phase(port, admin, oha, result)
    t = time.monotonic()
    node.stop(timeout=60)
    say(f"  deferring node stopped in {time.monotonic() - t:.1f} s; {queued} queued")
    # The spool is one node's: the draining node opens the same state directory. With a
    # broker, a fresh node on the same queue and store.
    state_b = state_a if backend == "spool" else os.path.join(workdir, "state-b")
    drain_phase(node_bin, mock_bin, workdir, state_b, config, queued, first_id, result)
    if broker:
        broker.stop()
    if redis:
        redis.stop()
    return result


def main():
    global ARGS
    ARGS = parse_args()
    procs.raise_nofile()
    node_bin, mock_bin = binaries()
    oha = loadgen.find_oha()
    if not oha:
        sys.exit("needs oha (cargo install oha --locked)")
    root = tempfile.mkdtemp(prefix="strait-deferred-bench.")
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": procs.git_commit(),
           "machine": procs.machine_info(), "oha": procs.tool_version([oha, "--version"]),
           "args": vars(ARGS), "backends": []}
    try:
        for backend in ARGS.backend or BACKENDS:
            out["backends"].append(run_backend(backend, node_bin, mock_bin, oha, root))
    finally:
        procs.stop_all()
        if not ARGS.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            say(f"work directory kept: {root}")
    os.makedirs(ARGS.out, exist_ok=True)
    path = os.path.join(ARGS.out, "deferred-" + out["date"].replace(":", "").replace("-", "") + ".json")
    procs.dump_json(path, out)
    print()
    print(table(out))
    say(f"wrote {path}")


def table(out):
    rows = ["| backend | connections | deferrals/s | 202 latency p50 | p99 | p99.9 | publish->confirm mean "
            "| p50 (buckets) | p99 (buckets) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for b in out["backends"]:
        for r in b["deferral"]:
            pc = r["publish_confirm"]
            rows.append(f"| {b['backend']} | {r['connections']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} ms | "
                        f"{r['p99_ms']:.2f} ms | {r['p999_ms']:.2f} ms | {pc['mean_ms']:.2f} ms | "
                        f"~{pc['p50_ms']:.2f} ms | ~{pc['p99_ms']:.2f} ms |")
    rows += ["", "| backend | backlog | drained in (from node start) | deliveries/s overall | steady (10-90 %) |",
             "| --- | --- | --- | --- | --- |"]
    for b in out["backends"]:
        d = b["drain"]
        rows.append(f"| {b['backend']} | {d['queued']:,} | {d['seconds_from_start']:.1f} s | "
                    f"{d['rate_overall']:,.0f} | {d['rate_steady_10_90']:,.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
