"""Streaming clients: time-to-first-token per stream (strait-ttft-client), and a
holder on raw asyncio sockets that keeps thousands of slow streams open at once."""

import asyncio
import json
import subprocess
import time

from procs import pinned

# max_tokens stays modest: the mock prepares a reply's text up front, and a huge one
# would make the mock, not the proxy, slow to start each stream.
STREAM_BODY = (b'{"model":"claude-sonnet-4-5","max_tokens":300,"stream":true,'
               b'"messages":[{"role":"user","content":"Hello, Claude"}]}')


def _request(body=STREAM_BODY):
    return (b"POST /v1/messages HTTP/1.1\r\nHost: bench\r\ncontent-type: application/json\r\n"
            b"x-api-key: c1\r\nanthropic-version: 2023-06-01\r\nConnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def ttft_samples(client, port, n, concurrency, cpus):
    """Returns (list of TTFT in ms, error count) for `n` streams, each on a new
    connection, timed by strait-ttft-client (chaos-tests/src/bin/ttft_client.rs) pinned
    to `cpus`: from the request write to the first content_block_delta."""
    cmd = pinned([client, "--target", f"127.0.0.1:{port}", "--streams", str(n),
                  "--concurrency", str(concurrency)], cpus)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120 + n)
    if out.returncode != 0:
        raise RuntimeError(f"{client} exited with {out.returncode}: {out.stderr[-500:]}")
    result = json.loads(out.stdout)
    return result["ttft_ms"], result["errors"]


class StreamHolder:
    """Opens `n` streams and keeps them open until `close()`. A stream counts as held
    once its response status and first event arrived."""

    def __init__(self, port, n, batch=250):
        self.port = port
        self.n = n
        self.batch = batch
        self.writers = []
        self.held = 0
        self.failed = 0
        self._drains = []

    async def _open(self):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            self.failed += 1
            return
        writer.write(_request())
        buf = b""
        try:
            while b"message_start" not in buf:
                chunk = await asyncio.wait_for(reader.read(65536), 60)
                if not chunk:
                    raise ConnectionError("closed before the first event")
                buf += chunk
            if not buf.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(f"answered {buf[:40]!r}")
        except Exception:  # noqa: BLE001 - counted
            self.failed += 1
            writer.close()
            return
        self.held += 1
        self.writers.append(writer)
        # Keep reading (and discarding) the slow tokens, as a real client would.
        self._drains.append(asyncio.ensure_future(self._drain(reader)))

    @staticmethod
    async def _drain(reader):
        try:
            while await reader.read(65536):
                pass
        except Exception:  # noqa: BLE001 - the harness closes these itself
            pass

    async def open_all(self, progress=None):
        started = time.monotonic()
        for i in range(0, self.n, self.batch):
            await asyncio.gather(*(self._open() for _ in range(min(self.batch, self.n - i))))
            if progress:
                progress(self.held, self.failed, time.monotonic() - started)
        return time.monotonic() - started

    async def close(self):
        for w in self.writers:
            w.close()
        for d in self._drains:
            d.cancel()
        await asyncio.sleep(0.5)
        self.writers.clear()
        self._drains.clear()
