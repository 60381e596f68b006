"""Streaming clients on raw asyncio sockets: time-to-first-token per stream, and a
holder that keeps thousands of slow streams open at once."""

import asyncio
import time

# max_tokens stays modest: the mock prepares a reply's text up front, and a huge one
# would make the mock, not the proxy, slow to start each stream.
STREAM_BODY = (b'{"model":"claude-sonnet-4-5","max_tokens":300,"stream":true,'
               b'"messages":[{"role":"user","content":"Hello, Claude"}]}')


def _request(body=STREAM_BODY):
    return (b"POST /v1/messages HTTP/1.1\r\nHost: bench\r\ncontent-type: application/json\r\n"
            b"x-api-key: c1\r\nanthropic-version: 2023-06-01\r\nConnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


async def _one_ttft(port):
    """Opens a connection, then times from the request write to the first
    content_block_delta event (the first token), and reads the stream to its end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        req = _request()
        t0 = time.perf_counter()
        writer.write(req)
        buf = b""
        ttft = None
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            if ttft is None:
                buf += chunk
                if b"content_block_delta" in buf:
                    ttft = time.perf_counter() - t0
                    if not buf.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(f"stream answered {buf[:40]!r}")
        if ttft is None:
            raise RuntimeError(f"stream ended without a token: {buf[:200]!r}")
        return ttft * 1000
    finally:
        writer.close()


async def _ttft_many(port, n, concurrency):
    sem = asyncio.Semaphore(concurrency)
    out = []
    errors = 0

    async def one():
        nonlocal errors
        async with sem:
            try:
                out.append(await asyncio.wait_for(_one_ttft(port), 30))
            except Exception:  # noqa: BLE001 - counted, reported as errors
                errors += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return out, errors


def ttft_samples(port, n, concurrency):
    """Returns (list of TTFT in ms, error count) for `n` streams."""
    return asyncio.run(_ttft_many(port, n, concurrency))


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
