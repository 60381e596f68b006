"""Load generators: wrk (closed loop), oha (fixed rate, coordinated omission corrected)
and h2load (HTTP/2), each run pinned and parsed into one result shape:
{"rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "ok", "errors", ...}."""

import json
import os
import re
import shutil
import subprocess

from procs import HERE, pinned

# The request every contender gets: a small Messages call, as an SDK would send it.
BODY = (b'{"model":"claude-sonnet-4-5","max_tokens":64,'
        b'"messages":[{"role":"user","content":"Hello, Claude"}]}')
HEADERS = {
    "content-type": "application/json",
    "x-api-key": "c1",
    "anthropic-version": "2023-06-01",
}
PATH = "/v1/messages"


def find_oha():
    return shutil.which("oha") or (os.path.expanduser("~/.cargo/bin/oha")
                                   if os.path.exists(os.path.expanduser("~/.cargo/bin/oha")) else None)


def write_body(workdir):
    path = os.path.join(workdir, "body.json")
    with open(path, "wb") as f:
        f.write(BODY)
    return path


def run_wrk(port, duration_s, connections, cpus):
    """Closed loop: `connections` connections, each sending its next request when the
    last answer arrived. Gives throughput; its latencies are not coordinated-omission safe."""
    script = os.path.join(HERE, "wrk_post.lua")
    cmd = pinned(["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "5s", "-s", script,
                  f"http://127.0.0.1:{port}{PATH}"], cpus)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 30)
    m = re.search(r"^WRKJSON (\{.*\})$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk produced no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(m.group(1))
    seconds = r["duration_us"] / 1e6
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return {
        "rps": r["requests"] / seconds,
        "requests": r["requests"],
        "ok": r["requests"] - r["status"],
        "errors": errors,
        "p50_ms": r["p50"] / 1000, "p90_ms": r["p90"] / 1000, "p99_ms": r["p99"] / 1000,
        "p999_ms": r["p999"] / 1000, "max_ms": r["max"] / 1000,
    }


def run_oha(port, rate, duration_s, connections, cpus, oha):
    """Open loop at a fixed rate; latency counted from when each request was due
    (`--latency-correction`), so a stall shows up in every request it delayed."""
    cmd = [oha, "-z", f"{duration_s}s", "-q", str(rate), "-c", str(connections), "--latency-correction",
           "--no-tui", "--output-format", "json", "-m", "POST", "-d", BODY.decode()]
    for k, v in HEADERS.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(f"http://127.0.0.1:{port}{PATH}")
    out = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, timeout=duration_s + 60)
    try:
        r = json.loads(out.stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"oha output not JSON: {out.stdout[-500:]} {out.stderr[-500:]}") from e
    pct = r["latencyPercentiles"]
    codes = r.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if str(k).startswith("2"))
    # Requests still in flight when the duration ends are cut off by oha itself
    # ("aborted due to deadline"); they say nothing about the contender.
    errs = {k: v for k, v in r.get("errorDistribution", {}).items() if "deadline" not in k}
    total = sum(codes.values()) + sum(errs.values())

    def ms(key):
        v = pct.get(key)
        return None if v is None else v * 1000

    return {
        "rate": rate,
        "rps": r["summary"]["requestsPerSec"],
        "requests": total,
        "ok": ok,
        "errors": total - ok,
        "error_kinds": errs,
        "p50_ms": ms("p50"), "p90_ms": ms("p90"), "p99_ms": ms("p99"), "p999_ms": ms("p99.9"),
        "max_ms": r["summary"]["slowest"] * 1000 if r["summary"].get("slowest") is not None else None,
    }


def run_h2load(port, duration_s, clients, streams, cpus, body_path):
    """HTTP/2 with prior knowledge (h2c): `clients` connections with `streams` requests
    in flight on each. h2load reports mean latency, not percentiles."""
    cmd = ["h2load", "-D", str(duration_s), "--warm-up-time", "1", "-c", str(clients), "-m", str(streams),
           "-t", "1", "-d", body_path]
    for k, v in HEADERS.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(f"http://127.0.0.1:{port}{PATH}")
    out = subprocess.run(pinned(cmd, cpus), capture_output=True, text=True, timeout=duration_s + 30)
    text = out.stdout
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    reqs = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                     r"(\d+) errored, (\d+) timeout", text)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    lat = re.search(r"time for request:\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", text)
    if not (m and reqs and codes and lat):
        raise RuntimeError(f"h2load output not understood: {text[-800:]} {out.stderr[-300:]}")
    done = int(reqs.group(3))
    # Errors are what h2load counts as failed, errored or timed out, and answers that
    # were not 2xx. Not `done - 2xx`: with a warm-up, h2load counts a response that
    # straddles the warm-up's end in one tally and not the other, so that difference
    # came out as -1 or +1 on runs without a single error.
    errors = sum(int(reqs.group(g)) for g in (5, 6, 7)) + sum(int(codes.group(g)) for g in (2, 3, 4))
    return {
        "rps": float(m.group(3)),
        "requests": done,
        "ok": int(codes.group(1)),
        "errors": errors,
        "mean_ms": _h2_ms(lat.group(3)),
        "max_ms": _h2_ms(lat.group(2)),
    }


def _h2_ms(s):
    for unit, mult in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * mult
    return float(s)
