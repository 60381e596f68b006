#!/usr/bin/env python3
"""Memory after large bodies (docs/benchmarks.md "Memory after large bodies"): bursts of
parallel large Messages uploads through strait-node to the mock upstream, then the
node's resident set sampled while it idles, to see whether the memory goes back to the
system.

    bench/rss_bursts.py --node BIN --mock BIN [--rounds 3] [--parallel 20]
                        [--size-mb 31] [--idle 60] [--every 5] [--budget-mib N]

--budget-mib sets limits.max_inflight_body_bytes (default: the node's own default), so
the allocator alone can be measured with a budget above the burst. Prints one line per
sample and a JSON summary at the end.
"""

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import procs  # noqa: E402


def upload(port, body, out, i):
    """One POST /v1/messages with the whole body; records the status (0 on failure).
    Not procs.http_post: a body refused unread fails to send, and its 503 must still
    be read."""
    head = (f"POST /v1/messages HTTP/1.1\r\nHost: bench\r\nx-api-key: c1\r\n"
            f"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
            f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n").encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
            s.sendall(head)
            try:
                s.sendall(body)
            except OSError:
                pass  # refused unread (503): the answer is still there to read
            data = procs.read_to_end(s)
        out[i] = int(data.split(b" ", 2)[1]) if data else 0
    except OSError:
        out[i] = 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--node", required=True)
    p.add_argument("--mock", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parallel", type=int, default=20)
    p.add_argument("--size-mb", type=float, default=31)
    p.add_argument("--idle", type=int, default=60, help="seconds sampled after the last round")
    p.add_argument("--every", type=int, default=5, help="seconds between samples")
    p.add_argument("--pause", type=float, default=5, help="seconds between rounds")
    p.add_argument("--budget-mib", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="node workers (default: the node's)")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE for the node (e.g. MALLOC_ARENA_MAX=2)")
    args = p.parse_args()

    work = tempfile.mkdtemp(prefix="strait-rss.")
    mock, mock_url, _ = procs.start_mock(args.mock, work, "mock", None, 0, 0, 4)
    port, admin = procs.free_port(), procs.free_port()
    cfg = os.path.join(work, "node.toml")
    with open(cfg, "w") as f:
        f.write("[limits]\n")
        if args.budget_mib is not None:
            f.write(f"max_inflight_body_bytes = {args.budget_mib * 1024 * 1024}\n")
    cmd = [args.node, "--config", cfg, "--listen", f"127.0.0.1:{port}", "--admin-listen",
           f"127.0.0.1:{admin}", "--no-access-log", "--log-format", "json", "--log-level", "warn",
           "--upstream", mock_url]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    env = {"STRAIT_UPSTREAM_KEYS": "k1", "STRAIT_CLIENT_KEYS": "c1"}
    env.update(kv.split("=", 1) for kv in args.env)
    node = procs.Proc("node", cmd, env=env, log_path=os.path.join(work, "node.log"))
    procs.wait_port(port, proc=node.popen)

    size = int(args.size_mb * 1_000_000)
    prefix = b'{"model":"claude-sonnet-4-5","max_tokens":16,"messages":[{"role":"user","content":"'
    suffix = b'"}]}'
    body = prefix + b"a" * (size - len(prefix) - len(suffix)) + suffix
    start = time.monotonic()
    samples = []

    def sample(what):
        s = {"t": round(time.monotonic() - start, 1), "what": what,
             "rss_mib": round(procs.status_kib(node.pid, "VmRSS") / 1024, 1),
             "hwm_mib": round(procs.status_kib(node.pid, "VmHWM") / 1024, 1)}
        samples.append(s)
        print(f"{s['t']:7.1f}s  {what:<22} RSS {s['rss_mib']:7.1f} MiB  (peak {s['hwm_mib']:.1f})", flush=True)

    sample("idle, before")
    statuses = []
    for r in range(args.rounds):
        out = [None] * args.parallel
        threads = [threading.Thread(target=upload, args=(port, body, out, i)) for i in range(args.parallel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses.append({str(c): out.count(c) for c in sorted(set(out))})
        sample(f"after round {r + 1} {statuses[-1]}")
        if r + 1 < args.rounds:
            time.sleep(args.pause)
    idle_start = time.monotonic()
    while time.monotonic() - idle_start < args.idle:
        time.sleep(args.every)
        sample(f"idle {int(time.monotonic() - idle_start)} s")
    node.stop()
    mock.stop()
    print(json.dumps({"samples": samples, "statuses": statuses, "size_bytes": size,
                      "parallel": args.parallel, "budget_mib": args.budget_mib, "env": args.env}))


if __name__ == "__main__":
    main()
