#!/usr/bin/env python3
"""Strait against nginx where it is deployed: unpinned, with access logs on, on every
core (issue 19; docs/benchmarks.md "Access log and shared cores"). The pinned, logs-off section of
bench/run.py is repeated here as the reference.

    python3 bench/shared_cores.py                  # 9 rounds per section, 6 s each
    python3 bench/shared_cores.py --rounds 3 --seconds 3 --only unpinned-on

Each section starts the canned upstream, nginx (bench/nginx/proxy.conf) and strait
with that section's pinning, workers and access logs, then runs `wrk -t1 -c32` against
them in alternating order, round after round. It reports per round the req/s and p99
ratio strait/nginx, and per contender CPU time, context switches and (for strait)
access lines dropped, per request. Ratios are medians of per-round ratios.
Access logs, when on: nginx's default `combined` format to a file, strait's default
text line to a file (`--access-log-file`); both files are emptied between rounds.
Writes bench-results/shared-<date>.json and .md."""

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loadgen  # noqa: E402
import procs  # noqa: E402
from procs import ROOT  # noqa: E402

BENCH_LIMITS = "rpm=1000000000,itpm=1000000000000,otpm=1000000000000,concurrency=1000000"

# name: (pinned, workers (None: strait's default / nginx auto), access logs on)
SECTIONS = {
    "pinned-off": (True, 1, False),
    "unpinned-off": (False, 1, False),
    "unpinned-on": (False, 1, True),
    "every-core-off": (False, None, False),
    "every-core-on": (False, None, True),
}
T0 = time.monotonic()


def say(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=9, help="alternating rounds per section (default 9)")
    p.add_argument("--seconds", type=int, default=6, help="wrk duration per contender per round")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--only", action="append", choices=list(SECTIONS), help="run only these sections")
    p.add_argument("--strait-bin", help="strait-node binary (default target/release/strait-node)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench-results"))
    p.add_argument("--label", default="")
    return p.parse_args()


def proc_counters(pids):
    """CPU seconds and context switches (voluntary, involuntary) over every thread."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu, vol, invol = 0.0, 0, 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            invol += int(line.split()[1])
        except OSError:
            pass
    return cpu, vol, invol


def strait_dropped(admin_port):
    _, body = procs.http_get(admin_port, "/metrics")
    return int(procs.metric_value(body.decode(), "strait_access_log_dropped_total"))


def run_section(name, args, node_bin, workdir):
    pinned, workers, logs = SECTIONS[name]
    proxy_cpus, side_cpus = ("0", "1") if pinned else (None, None)
    sdir = os.path.join(workdir, name)
    os.makedirs(sdir)
    up_port, up_h2 = procs.free_port(), procs.free_port()
    upstream, _ = procs.start_nginx("upstream", "upstream.conf", sdir, {"PORT": up_port, "H2PORT": up_h2},
                                    side_cpus)
    procs.wait_port(up_port, proc=upstream.popen)
    nx_log = os.path.join(sdir, "nginx-access.log")
    st_log = os.path.join(sdir, "strait-access.log")
    nx_port, nx_h2 = procs.free_port(), procs.free_port()
    nginx, _ = procs.start_nginx("nginx", "proxy.conf", sdir, {
        "PORT": nx_port, "H2PORT": nx_h2, "UPSTREAM": f"127.0.0.1:{up_port}", "BUFFERING": "on",
        "WORKERS": workers or "auto", "ACCESS_LOG": f"{nx_log} combined" if logs else "off"}, proxy_cpus)
    procs.wait_port(nx_port, proc=nginx.popen)
    st_port, st_admin = procs.free_port(), procs.free_port()
    strait = procs.start_strait(node_bin, sdir, "strait", st_port, st_admin, f"http://127.0.0.1:{up_port}",
                                proxy_cpus, ["--default-limits", BENCH_LIMITS], workers=workers,
                                access_log=st_log if logs else None)
    procs.wait_port(st_port, proc=strait.popen)
    time.sleep(0.3)
    pids = {"nginx": [nginx.pid] + procs.child_pids(nginx.pid), "strait": [strait.pid]}
    ports = {"nginx": nx_port, "strait": st_port}
    for c, port in ports.items():
        status, body = procs.http_post(port, loadgen.PATH, loadgen.BODY, loadgen.HEADERS)
        if status != 200:
            raise RuntimeError(f"{name}: {c} answered {status}: {body[:200]!r}")
        loadgen.run_wrk(port, 1, args.connections, side_cpus)  # warm-up
    say(f"{name}: pinned={pinned} workers={workers or 'per core'} access logs={'on' if logs else 'off'}")
    rounds = []
    for rnd in range(args.rounds):
        row = {"round": rnd}
        for c in (("strait", "nginx") if rnd % 2 == 0 else ("nginx", "strait")):
            for path in (nx_log, st_log):
                if os.path.exists(path):
                    os.truncate(path, 0)
            cpu0, vol0, inv0 = proc_counters(pids[c])
            drop0 = strait_dropped(st_admin) if c == "strait" else 0
            r = loadgen.run_wrk(ports[c], args.seconds, args.connections, side_cpus)
            cpu1, vol1, inv1 = proc_counters(pids[c])
            n = max(r["requests"], 1)
            r["cpu_us_per_req"] = 1e6 * (cpu1 - cpu0) / n
            r["ctx_vol_per_req"] = (vol1 - vol0) / n
            r["ctx_invol_per_req"] = (inv1 - inv0) / n
            if c == "strait":
                r["dropped_lines"] = strait_dropped(st_admin) - drop0
            if logs:
                lines = sum(1 for _ in open(st_log if c == "strait" else nx_log, "rb"))
                r["log_lines"] = lines
            row[c] = r
        row["rps_ratio"] = row["strait"]["rps"] / row["nginx"]["rps"]
        row["p99_ratio"] = row["strait"]["p99_ms"] / row["nginx"]["p99_ms"]
        rounds.append(row)
        say(f"{name} round {rnd + 1}/{args.rounds}: strait {row['strait']['rps']:>8,.0f} req/s "
            f"p99 {row['strait']['p99_ms']:.3f} ms | nginx {row['nginx']['rps']:>8,.0f} req/s "
            f"p99 {row['nginx']['p99_ms']:.3f} ms | ratio {row['rps_ratio']:.3f}x, p99 {row['p99_ratio']:.2f}x")
    procs.stop_all()

    def med(c, k):
        return statistics.median(r[c][k] for r in rounds)

    summary = {
        "pinned": pinned, "workers": workers or "per core", "access_logs": logs,
        "rps_ratio_median": statistics.median(r["rps_ratio"] for r in rounds),
        "p99_ratio_median": statistics.median(r["p99_ratio"] for r in rounds),
        "rps_ratio_range": [min(r["rps_ratio"] for r in rounds), max(r["rps_ratio"] for r in rounds)],
    }
    for c in ("strait", "nginx"):
        for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "ctx_vol_per_req", "ctx_invol_per_req"):
            summary[f"{c}_{k}"] = med(c, k)
    summary["strait_dropped_lines"] = sum(r["strait"].get("dropped_lines", 0) for r in rounds)
    return {"summary": summary, "rounds": rounds}


def markdown(results):
    meta = results["meta"]
    out = [f"Shared cores, {meta['date']} ({meta['rounds']} rounds x {meta['seconds']} s, "
           f"`wrk -t1 -c{meta['connections']}`, commit {meta['git_commit']})", "",
           "| section | strait / nginx req/s (median, range) | p99 ratio | strait req/s | nginx req/s "
           "| strait p99 ms | nginx p99 ms | CPU us/req s / n | ctx switches/req s / n | dropped |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, sec in results["sections"].items():
        s = sec["summary"]
        out.append(
            f"| {name} | {s['rps_ratio_median']:.3f}x ({s['rps_ratio_range'][0]:.2f}-{s['rps_ratio_range'][1]:.2f}) "
            f"| {s['p99_ratio_median']:.2f}x | {s['strait_rps']:,.0f} | {s['nginx_rps']:,.0f} "
            f"| {s['strait_p99_ms']:.3f} | {s['nginx_p99_ms']:.3f} "
            f"| {s['strait_cpu_us_per_req']:.1f} / {s['nginx_cpu_us_per_req']:.1f} "
            f"| {s['strait_ctx_vol_per_req'] + s['strait_ctx_invol_per_req']:.3f} / "
            f"{s['nginx_ctx_vol_per_req'] + s['nginx_ctx_invol_per_req']:.3f} "
            f"| {s['strait_dropped_lines']} |")
    return "\n".join(out) + "\n"


def main():
    args = parse_args()
    node_bin = os.path.abspath(args.strait_bin or os.path.join(ROOT, "target", "release", "strait-node"))
    if not os.path.exists(node_bin):
        sys.exit(f"{node_bin} not found: cargo build --release -p strait-node, or --strait-bin")
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} not found: apt-get install -y wrk nginx")
    procs.raise_nofile()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    workdir = tempfile.mkdtemp(prefix="strait-shared-")
    results = {"meta": {"date": stamp, "label": args.label, "rounds": args.rounds, "seconds": args.seconds,
                        "connections": args.connections, "strait_bin": node_bin,
                        "command": " ".join(["python3", "bench/shared_cores.py"] + sys.argv[1:]),
                        "git_commit": procs.git_commit(), "machine": procs.machine_info()},
               "sections": {}}
    try:
        for name in SECTIONS:
            if args.only and name not in args.only:
                continue
            results["sections"][name] = run_section(name, args, node_bin, workdir)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        results["meta"]["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
        os.makedirs(args.out, exist_ok=True)
        base = os.path.join(args.out, f"shared-{stamp}")
        procs.dump_json(base + ".json", results)
        if results["sections"]:
            md = markdown(results)
            with open(base + ".md", "w") as f:
                f.write(md)
            print("\n" + md, flush=True)
        say(f"wrote {base}.json")


if __name__ == "__main__":
    main()
