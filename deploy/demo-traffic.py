#!/usr/bin/env python3
"""A little traffic for the demo cluster (deploy/demo.sh): a few requests per second
to random nodes, mostly Messages, some streamed, a few deferred, now and then a wrong
key, so that every panel of the dashboard has something to show. Standard library
only; stops on SIGTERM or SIGINT."""

import argparse
import json
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request

STOP = threading.Event()


def one_request(node, key, rng):
    """Sends one request and returns a short label of what it was and its status."""
    kind = rng.choices(["message", "stream", "deferred", "bad-key"], weights=[70, 20, 7, 3])[0]
    body = {
        "model": rng.choice(["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]),
        "max_tokens": rng.choice([32, 64, 128]),
        "messages": [{"role": "user", "content": "Say something short about straits."}],
    }
    headers = {
        "authorization": f"Bearer {'sk-strait-wrong' if kind == 'bad-key' else key}",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    if kind == "stream":
        body["stream"] = True
    if kind == "deferred":
        headers["strait-defer"] = "always"
    req = urllib.request.Request(node + "/v1/messages", data=json.dumps(body).encode(),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return kind, resp.status
    except urllib.error.HTTPError as e:
        e.read()
        return kind, e.code
    except OSError as e:
        return kind, f"error: {e}"


def worker(nodes, key, rps, seed):
    rng = random.Random(seed)
    while not STOP.is_set():
        kind, status = one_request(rng.choice(nodes), key, rng)
        print(f"{time.strftime('%H:%M:%S')} {kind} {status}", flush=True)
        # Exponential gaps: a Poisson stream of `rps` requests per second per worker.
        STOP.wait(rng.expovariate(rps))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", required=True, help="node base URLs, comma-separated")
    ap.add_argument("--key-file", required=True, help="file holding the client key")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--rps", type=float, default=1.5, help="requests per second per worker")
    args = ap.parse_args()
    nodes = [n for n in args.nodes.split(",") if n]
    key = open(args.key_file).read().strip()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: STOP.set())
    threads = [threading.Thread(target=worker, args=(nodes, key, args.rps, i), daemon=True)
               for i in range(args.workers)]
    for t in threads:
        t.start()
    while not STOP.is_set():
        STOP.wait(1.0)
    sys.exit(0)


if __name__ == "__main__":
    main()
