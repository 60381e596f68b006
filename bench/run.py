#!/usr/bin/env python3
"""Strait proxy benchmark: strait-node against nginx and a direct connection, side by
side, on one machine, in one run. See docs/benchmarks.md.

    python3 bench/run.py --quick      # under 3 minutes
    python3 bench/run.py --full       # more rounds, rates and samples

Writes bench-results/<date>.json, .md (tables) and .svg (latency chart)."""

import argparse
import asyncio
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loadgen  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
import streams  # noqa: E402
from procs import ROOT  # noqa: E402

MODES = {
    # Sized so that the whole quick run, builds aside, stays under 3 minutes.
    # Fixed rates are fractions of nginx's closed-loop throughput measured earlier in the
    # same run: on a shared machine an absolute rate can be idle one hour and overload
    # the next. --rates gives absolute rates instead.
    "quick": dict(rounds=2, wrk_s=4, rate_fractions=[0.25, 0.5], rate_rounds=2, oha_s=4, h2_s=3, h2_rounds=1,
                  ttft_n=300, ttft_rounds=2, streams=10000),
    "full": dict(rounds=5, wrk_s=10, rate_fractions=[0.1, 0.25, 0.5, 0.75], rate_rounds=3, oha_s=10, h2_s=8,
                 h2_rounds=3, ttft_n=1000, ttft_rounds=3, streams=10000),
}
SECTIONS = ("wrk", "oha", "h2", "ttft", "streams")
T0 = time.monotonic()


def say(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="short run, under 3 minutes (default)")
    mode.add_argument("--full", action="store_true", help="more rounds, rates and samples")
    p.add_argument("--only", action="append", choices=SECTIONS, help="run only these sections (repeatable)")
    p.add_argument("--skip", action="append", choices=SECTIONS, default=[], help="skip a section (repeatable)")
    p.add_argument("--rounds", type=int, help="alternating rounds for the closed-loop runs")
    p.add_argument("--rates", help="comma-separated fixed rates (req/s) for oha")
    p.add_argument("--streams", type=int, help="concurrent slow streams for the memory test")
    p.add_argument("--strait-arg", action="append", default=[],
                   help="extra strait-node flag, passed through (repeatable), e.g. --strait-arg=--config=x.toml")
    p.add_argument("--no-limits", action="store_true",
                   help="run strait without its rate limiter (by default every client key has "
                        "limits far above the load, so each request pays for the limiter's decision)")
    p.add_argument("--proxy-cpus", default="0", help="CPUs for the proxy under test (taskset list)")
    p.add_argument("--load-cpus", default="1", help="CPUs for the load generators and clients")
    p.add_argument("--upstream-cpus", default="1", help="CPUs for the canned upstream and the mock")
    p.add_argument("--connections", type=int, default=32, help="connections for wrk and oha")
    p.add_argument("--no-build", action="store_true", help="use the existing release binaries")
    p.add_argument("--strait-bin", help="strait-node binary to test instead of target/release (before/after runs)")
    p.add_argument("--out", default=os.path.join(ROOT, "bench-results"), help="results directory")
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, process logs)")
    p.add_argument("--label", default="", help="a note stored with the results (e.g. 'before fix')")
    return p.parse_args()


def build():
    say("building release binaries (cargo build --release -p strait-node -p strait-chaos)")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "strait-node", "-p", "strait-chaos"], cwd=ROOT,
                   check=True)


def binaries():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    node = os.path.join(target, "release", "strait-node")
    mock = os.path.join(target, "release", "strait-mock-upstream")
    for b in (node, mock, ttft_client(mock)):
        if not os.path.exists(b):
            sys.exit(f"missing {b}: build with cargo build --release -p strait-node -p strait-chaos")
    return node, mock


def ttft_client(mock_bin):
    """strait-ttft-client, built next to the mock by the same cargo command."""
    return os.path.join(os.path.dirname(mock_bin), "strait-ttft-client")


def cpu_seconds(pids):
    """User + system CPU time of processes (and their threads), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / tick


class Contender:
    """A target for the canned runs: name, HTTP/1.1 port, h2c port, and the pids whose
    CPU time is its cost."""

    def __init__(self, name, port, h2port, pids):
        self.name, self.port, self.h2port, self.pids = name, port, h2port, pids


def order(rnd):
    """A B C, then B C A, ...: each contender takes each position in turn, so drift over
    the run does not favour one of them."""
    cs = list(report.CONTENDERS)
    k = rnd % len(cs)
    return cs[k:] + cs[:k]


BENCH_LIMITS = "rpm=1000000000,itpm=1000000000000,otpm=1000000000000,concurrency=1000000"


def start_canned(args, node_bin, workdir):
    up_port, up_h2 = procs.free_port(), procs.free_port()
    upstream, _ = procs.start_nginx("upstream", "upstream.conf", workdir, {"PORT": up_port, "H2PORT": up_h2},
                                    args.upstream_cpus)
    procs.wait_port(up_port, proc=upstream.popen)
    px_port, px_h2 = procs.free_port(), procs.free_port()
    nginx, _ = procs.start_nginx("nginx", "proxy.conf", workdir, {"PORT": px_port, "H2PORT": px_h2,
                                 "UPSTREAM": f"127.0.0.1:{up_port}", "BUFFERING": "on",
                                 "WORKERS": 1, "ACCESS_LOG": "off"}, args.proxy_cpus)
    procs.wait_port(px_port, proc=nginx.popen)
    st_port, st_admin = procs.free_port(), procs.free_port()
    strait = procs.start_strait(node_bin, workdir, "strait", st_port, st_admin, f"http://127.0.0.1:{up_port}",
                                args.proxy_cpus, args.strait_arg)
    procs.wait_port(st_port, proc=strait.popen)
    time.sleep(0.3)
    contenders = {
        "direct": Contender("direct", up_port, up_h2, [upstream.pid] + procs.child_pids(upstream.pid)),
        "nginx": Contender("nginx", px_port, px_h2, [nginx.pid] + procs.child_pids(nginx.pid)),
        "strait": Contender("strait", st_port, st_port, [strait.pid]),
    }
    for c in contenders.values():
        status, body = procs.http_post(c.port, loadgen.PATH, loadgen.BODY, loadgen.HEADERS)
        if status != 200 or b"msg_01Bench" not in body:
            raise RuntimeError(f"{c.name} answered {status}: {body[:200]!r}")
    say(f"canned upstream :{up_port}, nginx :{px_port}, strait :{st_port} (admin :{st_admin}); all answer 200")
    return contenders, strait, st_admin


def run_wrk_section(args, cfg, contenders):
    runs = []
    for c in contenders.values():  # warm-up: connections, pools, caches
        loadgen.run_wrk(c.port, 1, args.connections, args.load_cpus)
    for rnd in range(cfg["rounds"]):
        for name in order(rnd):
            c = contenders[name]
            cpu0 = cpu_seconds(c.pids)
            r = loadgen.run_wrk(c.port, cfg["wrk_s"], args.connections, args.load_cpus)
            cpu = cpu_seconds(c.pids) - cpu0
            r["cpu_pct"] = 100 * cpu / cfg["wrk_s"]
            # CPU time per request of the process under test: steadier than req/s when
            # other work on the machine steals time from the load generator.
            r["cpu_us_per_req"] = 1e6 * cpu / r["requests"] if r["requests"] else None
            r.update(round=rnd, contender=name)
            runs.append(r)
            say(f"wrk    round {rnd + 1}/{cfg['rounds']} {name:7s} {r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:.3f}"
                f"  p99 {r['p99_ms']:.3f} ms  cpu {r['cpu_pct']:.0f}% ({r['cpu_us_per_req']:.1f} us/req)  errors {r['errors']}")
    sec = report.summarize(runs, ["rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "cpu_pct", "cpu_us_per_req"])
    sec["runs"] = runs
    sec["command"] = f"wrk -t1 -c{args.connections} -d{cfg['wrk_s']}s -s bench/wrk_post.lua"
    print("\nClosed loop (wrk): throughput, median of rounds; ratios are medians of per-round ratios\n"
          + report.latency_table(sec) + "\n", flush=True)
    return sec


def run_oha_section(args, cfg, contenders, oha):
    out = {}
    for rate in cfg["rates"]:
        runs = []
        for rnd in range(cfg["rate_rounds"]):
            for name in order(rnd):
                r = loadgen.run_oha(contenders[name].port, rate, cfg["oha_s"], args.connections, args.load_cpus, oha)
                r.update(round=rnd, contender=name)
                runs.append(r)
                say(f"oha    {rate:>6,}/s round {rnd + 1}/{cfg['rate_rounds']} {name:7s} p50 {r['p50_ms']:.3f}  "
                    f"p99 {r['p99_ms']:.3f}  p99.9 {r['p999_ms']:.3f} ms  ({r['rps']:,.0f} req/s, errors {r['errors']})")
        sec = report.summarize(runs, ["rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"])
        sec["runs"] = runs
        out[str(rate)] = sec
        print(f"\nFixed rate {rate:,} req/s (oha, latency corrected for coordinated omission)\n"
              + report.latency_table(sec) + "\n", flush=True)
    return out


def run_h2_section(args, cfg, contenders, body_path):
    runs = []
    for rnd in range(cfg["h2_rounds"]):
        for name in order(rnd):
            r = loadgen.run_h2load(contenders[name].h2port, cfg["h2_s"], 16, 4, args.load_cpus, body_path)
            r.update(round=rnd, contender=name)
            runs.append(r)
            say(f"h2load round {rnd + 1}/{cfg['h2_rounds']} {name:7s} {r['rps']:>9,.0f} req/s  mean {r['mean_ms']:.3f} ms"
                f"  errors {r['errors']}")
    sec = report.summarize(runs, ["rps", "mean_ms"])
    sec["runs"] = runs
    sec["command"] = f"h2load -D {cfg['h2_s']} -c 16 -m 4 -t 1 (h2c prior knowledge)"
    print("\nHTTP/2 (h2load, 16 connections x 4 streams)\n" + report.h2_table(sec) + "\n", flush=True)
    return sec


def run_ttft_section(args, cfg, node_bin, mock_bin, workdir):
    """Direct to the streaming mock, via nginx (proxy_buffering off) and via strait.
    Added TTFT is a proxy's percentile minus direct's, from the same round."""
    mock, mock_url, _ = procs.start_mock(mock_bin, workdir, "mock-ttft", args.upstream_cpus, ttft_ms=20,
                                         interval_ms=2, tokens=5)
    mock_port = int(mock_url.rsplit(":", 1)[1])
    px_port, px_h2 = procs.free_port(), procs.free_port()
    nginx, _ = procs.start_nginx("nginx-sse", "proxy.conf", workdir, {"PORT": px_port, "H2PORT": px_h2,
                                 "UPSTREAM": f"127.0.0.1:{mock_port}", "BUFFERING": "off",
                                 "WORKERS": 1, "ACCESS_LOG": "off"}, args.proxy_cpus)
    st_port, st_admin = procs.free_port(), procs.free_port()
    strait = procs.start_strait(node_bin, workdir, "strait-sse", st_port, st_admin, mock_url, args.proxy_cpus,
                                args.strait_arg)
    procs.wait_port(px_port, proc=nginx.popen)
    procs.wait_port(st_port, proc=strait.popen)
    ports = {"direct": mock_port, "nginx": px_port, "strait": st_port}
    client = ttft_client(mock_bin)
    runs = []
    for name in report.CONTENDERS:  # warm-up
        streams.ttft_samples(client, ports[name], 20, 4, args.load_cpus)
    for rnd in range(cfg["ttft_rounds"]):
        for name in order(rnd):
            samples, errors = streams.ttft_samples(client, ports[name], cfg["ttft_n"], 4, args.load_cpus)
            r = {"round": rnd, "contender": name, "samples": len(samples), "errors": errors}
            r.update(_pcts(samples))
            runs.append(r)
            say(f"ttft   round {rnd + 1}/{cfg['ttft_rounds']} {name:7s} p50 {r['p50_ms']:.3f}  p99 {r['p99_ms']:.3f} ms"
                f"  ({len(samples)} streams, errors {errors})")
    for p in (strait, nginx, mock):
        p.stop()
    sec = report.summarize(runs, ["p50_ms", "p90_ms", "p99_ms", "samples"])
    # Added TTFT: per round, proxy percentile minus direct percentile; median over rounds.
    added = {}
    for name in ("nginx", "strait"):
        added[name] = {}
        for k in ("p50_ms", "p90_ms", "p99_ms"):
            diffs = []
            for rnd in range(cfg["ttft_rounds"]):
                a = [r[k] for r in runs if r["round"] == rnd and r["contender"] == name]
                d = [r[k] for r in runs if r["round"] == rnd and r["contender"] == "direct"]
                if a and d:
                    diffs.append(a[0] - d[0])
            added[name][k] = report.median(diffs)
    sec["added"] = added
    sec["runs"] = runs
    sec["mock"] = {"ttft_ms": 20, "token_interval_ms": 2, "tokens": 5, "client_concurrency": 4}
    sec["client"] = "strait-ttft-client (chaos-tests/src/bin/ttft_client.rs), new connection per stream"
    print("\nStreaming time to first token (mock ttft 20 ms; added = via proxy minus direct, same round)\n"
          + report.ttft_table(sec) + "\n", flush=True)
    return sec


def run_streams_section(args, cfg, node_bin, mock_bin, workdir):
    """Holds N slow streams open through a fresh strait-node and reports its RSS growth
    per stream. Upstream is the mock over TLS with ALPN h2 (as with the real API), so
    the streams share pooled upstream connections."""
    n = args.streams or cfg["streams"]
    mock, mock_url, ca = procs.start_mock(mock_bin, workdir, "mock-slow", args.upstream_cpus, ttft_ms=0,
                                          interval_ms=1000, tokens=300, tls=True)
    conf = os.path.join(workdir, "strait-streams.toml")
    with open(conf, "w") as f:
        f.write(f'[upstream]\nca_file = "{ca}"\n')
    st_port, st_admin = procs.free_port(), procs.free_port()
    strait = procs.start_strait(node_bin, workdir, "strait-streams", st_port, st_admin, mock_url, args.proxy_cpus,
                                args.strait_arg, config_file=conf)
    procs.wait_port(st_port, proc=strait.popen)
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, _cpus(args.load_cpus) or old)
    result = {"target": n, "upstream": "mock over TLS, HTTP/2 (ALPN)", "token_interval_ms": 1000}
    try:
        async def go():
            warm = streams.StreamHolder(st_port, 200)
            await warm.open_all()
            await warm.close()
            await asyncio.sleep(1.0)
            result["rss_idle_kib"] = procs.rss_kib(strait.pid)
            holder = streams.StreamHolder(st_port, n)
            last = [0.0]

            def progress(held, failed, elapsed):
                if elapsed - last[0] >= 2 or held + failed >= n:
                    last[0] = elapsed
                    say(f"streams {held:,}/{n:,} held ({failed} failed), strait RSS "
                        f"{procs.rss_kib(strait.pid) / 1024:.1f} MiB")

            result["open_s"] = await holder.open_all(progress)
            await asyncio.sleep(2.0)
            result["held"] = holder.held
            result["failed"] = holder.failed
            result["rss_held_kib"] = procs.rss_kib(strait.pid)
            _, metrics = procs.http_get(st_admin, "/metrics")
            text = metrics.decode()
            result["active_streams_metric"] = int(procs.metric_value(text, "strait_active_streams"))
            result["upstream_connections_metric"] = int(procs.metric_value(text, "strait_upstream_connections"))
            await holder.close()
            await asyncio.sleep(2.0)
            result["rss_after_close_kib"] = procs.rss_kib(strait.pid)

        asyncio.run(go())
    finally:
        os.sched_setaffinity(0, old)
        strait.stop()
        mock.stop()
    if result.get("held"):
        result["kib_per_stream"] = (result["rss_held_kib"] - result["rss_idle_kib"]) / result["held"]
    sec = {"strait": result}
    print(f"\n{n:,} concurrent slow streams through strait-node (RSS from /proc VmRSS)\n"
          + report.memory_table(sec) + "\n", flush=True)
    return sec


def fixed_rates(cfg, throughput):
    """Rates as fractions of nginx's closed-loop req/s in this run (rounded to 100)."""
    base = None
    if throughput:
        base = throughput["summary"].get("nginx", {}).get("rps")
    if not base:
        base = 10000  # no closed-loop run to go by
    return [max(100, int(round(base * f / 100.0)) * 100) for f in cfg["rate_fractions"]]


def _cpus(spec):
    if spec in (None, "", "all"):
        return None
    out = set()
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.update(range(int(a), int(b) + 1))
        else:
            out.add(int(part))
    return out


def _pcts(samples):
    s = sorted(samples)
    if not s:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None}

    def q(p):
        return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]

    return {"p50_ms": q(50), "p90_ms": q(90), "p99_ms": q(99)}


def strait_check(admin_port):
    """What strait's own metrics say about the canned runs: every request a 200 from
    the upstream, no gateway errors."""
    _, body = procs.http_get(admin_port, "/metrics")
    text = body.decode()
    return {
        "requests_200": int(procs.metric_value(text, "strait_requests_total", {"status": "200"})),
        "requests_total": int(procs.metric_value(text, "strait_requests_total")),
        "gateway_errors": int(procs.metric_value(text, "strait_gateway_errors_total")),
        "upstream_connections": int(procs.metric_value(text, "strait_upstream_connections")),
    }


def main():
    args = parse_args()
    mode = "full" if args.full else "quick"
    cfg = dict(MODES[mode])
    if args.rounds:
        cfg["rounds"] = args.rounds
    if args.rates:
        cfg["rates"] = [int(x) for x in args.rates.split(",")]
    sections = [s for s in SECTIONS if (not args.only or s in args.only) and s not in args.skip]
    nofile = procs.raise_nofile()
    oha = loadgen.find_oha()
    for tool, sec in (("wrk", "wrk"), ("h2load", "h2")):
        if sec in sections and not shutil.which(tool):
            say(f"{tool} not found: skipping {sec} (apt-get install -y wrk nghttp2-client)")
            sections.remove(sec)
    if "oha" in sections and not oha:
        say("oha not found: skipping fixed-rate runs (cargo install oha --locked)")
        sections.remove("oha")
    if not args.no_limits:
        # Limits on, as the target says, and set far above the load so none rejects:
        # every request still takes the limiter's full path (reserve, settle).
        args.strait_arg = ["--default-limits", BENCH_LIMITS] + args.strait_arg
    if not args.no_build:
        build()
    node_bin, mock_bin = binaries()
    if args.strait_bin:
        node_bin = os.path.abspath(args.strait_bin)
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    workdir = tempfile.mkdtemp(prefix="strait-bench-")
    results = {
        "meta": {
            "date": stamp, "mode": mode, "label": args.label, "command": " ".join(["python3", "bench/run.py"]
                                                                                  + sys.argv[1:]),
            "git_commit": procs.git_commit(), "machine": procs.machine_info(), "nofile_limit": nofile,
            "pinning": {"proxy": args.proxy_cpus, "load": args.load_cpus, "upstream": args.upstream_cpus},
            "strait_args": ["--workers", "1", "--no-access-log"] + args.strait_arg,
            "strait_bin": node_bin,
            "versions": {"nginx": procs.tool_version(["nginx", "-v"]), "wrk": procs.tool_version(["wrk", "-v"]),
                         "h2load": procs.tool_version(["h2load", "--version"]),
                         "oha": procs.tool_version([oha, "--version"]) if oha else None},
            "config": cfg, "sections": sections,
        }
    }
    say(f"mode {mode}, sections {', '.join(sections)}; work dir {workdir}")
    try:
        if any(s in sections for s in ("wrk", "oha", "h2")):
            contenders, strait, st_admin = start_canned(args, node_bin, workdir)
            if "wrk" in sections:
                results["throughput"] = run_wrk_section(args, cfg, contenders)
            if "oha" in sections:
                if not cfg.get("rates"):
                    cfg["rates"] = fixed_rates(cfg, results.get("throughput"))
                say(f"fixed rates: {', '.join(f'{r:,}' for r in cfg['rates'])} req/s")
                results["fixed_rate"] = run_oha_section(args, cfg, contenders, oha)
            if "h2" in sections:
                results["h2"] = run_h2_section(args, cfg, contenders, loadgen.write_body(workdir))
            results["strait_metrics_after_canned"] = strait_check(st_admin)
            procs.stop_all()
        if "ttft" in sections:
            results["ttft"] = run_ttft_section(args, cfg, node_bin, mock_bin, workdir)
        if "streams" in sections:
            results["streams"] = run_streams_section(args, cfg, node_bin, mock_bin, workdir)
    finally:
        procs.stop_all()
        results["meta"]["elapsed_s"] = round(time.monotonic() - T0, 1)
        results["meta"]["loadavg_at_end"] = open("/proc/loadavg").read().split()[:3]
        write_outputs(args.out, stamp, results)
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def write_outputs(out, stamp, results):
    base = os.path.join(out, stamp)
    procs.dump_json(base + ".json", results)
    md = markdown(results)
    with open(base + ".md", "w") as f:
        f.write(md)
    svg = report.svg_chart(results)
    if svg:
        with open(base + ".svg", "w") as f:
            f.write(svg)
    print("\n" + "=" * 78 + "\n" + md, flush=True)
    say(f"wrote {base}.json, {base}.md" + (f", {base}.svg" if svg else ""))


def markdown(results):
    """All tables of a run, as pasted into docs/benchmarks.md."""
    m = results["meta"]
    out = [f"### Run {m['date']} ({m['mode']}{', ' + m['label'] if m['label'] else ''})", "",
           f"`{m['command']}` at commit `{m['git_commit']}`; {m['machine'].get('cpus')} x "
           f"{m['machine'].get('cpu_model', '?')}; load average at start {' '.join(m['machine']['loadavg_at_start'])}; "
           f"pinning proxy={m['pinning']['proxy']} load={m['pinning']['load']} upstream={m['pinning']['upstream']}; "
           f"{m.get('elapsed_s', '?')} s.", ""]
    if "throughput" in results:
        t = results["throughput"]
        out += [f"Closed loop ({t['command']}), median of {m['config']['rounds']} alternating rounds:", "",
                report.latency_table(t), ""]
        out += ["CPU of the process under test during those runs (user + system, from /proc): "
                + ", ".join(f"{c} {report.fmt(s.get('cpu_pct'), 0)}% of a core, "
                            f"{report.fmt(s.get('cpu_us_per_req'), 1)} us per request"
                            for c, s in t["summary"].items())
                + f" (CPU per request vs nginx: strait {report.ratio(t, 'strait', 'nginx', 'cpu_us_per_req')}).", ""]
    nginx_rps = results.get("throughput", {}).get("summary", {}).get("nginx", {}).get("rps")
    for rate, sec in sorted(results.get("fixed_rate", {}).items(), key=lambda kv: int(kv[0])):
        # With --rates and no closed-loop section there is no nginx figure to relate to.
        share = f"; {int(rate) / nginx_rps:.0%} of nginx's closed-loop req/s" if nginx_rps else ""
        out += [f"Fixed rate {int(rate):,} req/s (oha -c32 --latency-correction{share}), median of "
                f"{m['config']['rate_rounds']} alternating rounds:", "", report.latency_table(sec), ""]
    if "h2" in results:
        out += [f"HTTP/2 ({results['h2']['command']}):", "", report.h2_table(results["h2"]), ""]
    if "ttft" in results:
        out += ["Streaming time to first token (mock: 20 ms to message_start; added = proxy minus direct, "
                "same round):", "", report.ttft_table(results["ttft"]), ""]
    if "streams" in results:
        out += ["Concurrent slow streams through strait-node:", "", report.memory_table(results["streams"]), ""]
    if "strait_metrics_after_canned" in results:
        s = results["strait_metrics_after_canned"]
        out += [f"strait's own metrics after the canned runs: {s['requests_200']:,} of {s['requests_total']:,} "
                f"requests answered 200, {s['gateway_errors']} gateway errors, {s['upstream_connections']} upstream "
                "connections open.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
