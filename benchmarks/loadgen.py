"""The serving benchmark's HTTP load generator: prebuilt ``POST /predict`` requests sent by
``CONCURRENCY`` keep-alive connections on one asyncio loop in one thread.

Why so lean: it shares the machine's 2 cores with the server it measures, so every
microsecond it spends per request is taken from the server (about 80 us of CPU per request,
against 230-290 us with 32 ``http.client`` threads). Requests are built once, bytes and all:
one image as the raw body, or several as a ``multipart/form-data`` form, as clients send them.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

CONCURRENCY = 32
REQUEST_TIMEOUT = 300.0  # seconds: a 16-image request of a 224x224 ViT waits ~30 s at c=32
BOUNDARY = b"vitedit-bench-5b8e0c1d7a9f4e23"


def predict_requests(images: Sequence[bytes], per_request: int, count: int = 64
                     ) -> list[bytes]:
    """``POST /predict`` requests: one raw PNG body per image when ``per_request`` is 1, else
    ``count`` multipart forms of ``per_request`` PNGs each, taken from ``images`` in turn."""
    if per_request < 1 or not images:
        raise ValueError(f"need images and per_request >= 1, got {len(images)} images and "
                         f"{per_request}")
    if per_request == 1:
        return [_request(b"image/png", image) for image in images]
    out = []
    for k in range(count):
        parts = [images[(k * per_request + j) % len(images)] for j in range(per_request)]
        body = b"".join(b'--%b\r\nContent-Disposition: form-data; name="images"; '
                        b'filename="%d.png"\r\nContent-Type: image/png\r\n\r\n%b\r\n'
                        % (BOUNDARY, j, part) for j, part in enumerate(parts))
        out.append(_request(b"multipart/form-data; boundary=" + BOUNDARY,
                            body + b"--%b--\r\n" % BOUNDARY))
    return out


def _request(content_type: bytes, body: bytes) -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %b\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (content_type, len(body), body))


class _Connection:
    """One keep-alive HTTP/1.1 connection on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> _Connection:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """The status and body of one prebuilt request (uvicorn answers with a length)."""
        async with asyncio.timeout(REQUEST_TIMEOUT):
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            return int(head[9:12]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def closed_loop(port: int, requests: Sequence[bytes], seconds: float, per_request: int = 1,
                on_answer: Callable[[int, dict[str, Any]], None] | None = None,
                stop: threading.Event | None = None) -> dict[str, Any]:
    """CONCURRENCY clients, each sending its next request when the last is answered, for
    ``seconds`` (or until ``stop``); requests in flight then are answered and counted, so
    the wall time includes them."""
    deadline = time.perf_counter() + seconds
    counts = {"ok": 0, "failed": 0}

    async def client(c: int) -> None:
        connection = await _Connection.open(port)
        r = 0
        try:
            while (time.perf_counter() < deadline) if stop is None else not stop.is_set():
                status, body = await connection.send(requests[(c * 997 + r) % len(requests)])
                r += 1
                counts["ok" if status == 200 else "failed"] += 1
                if on_answer is not None:
                    on_answer(status, json.loads(body))
        finally:
            connection.close()

    async def clients() -> None:
        await asyncio.gather(*(client(c) for c in range(CONCURRENCY)))
    start = time.perf_counter()
    asyncio.run(clients())
    wall = time.perf_counter() - start
    return {**counts, "seconds": round(wall, 1), "images_per_request": per_request,
            "images_per_s": round(counts["ok"] * per_request / wall, 1)}


def open_loop(port: int, requests: Sequence[bytes], rate: float, seconds: float
              ) -> dict[str, Any]:
    """Requests scheduled at ``rate``/s for ``seconds``, at most CONCURRENCY in flight; a
    request's latency counts from its scheduled time, so falling behind shows in it."""
    total = max(1, int(rate * seconds))
    start = time.perf_counter() + 0.2
    latencies: list[float] = []
    failures = 0
    scheduled = iter(range(total))

    async def client() -> None:
        nonlocal failures
        connection = await _Connection.open(port)
        try:
            for k in scheduled:  # shared: each request is taken by the next free client
                due = start + k / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                status, _ = await connection.send(requests[k % len(requests)])
                if status == 200:
                    latencies.append(time.perf_counter() - due)
                else:
                    failures += 1
        finally:
            connection.close()

    async def clients() -> None:
        await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    asyncio.run(clients())
    wall = time.perf_counter() - start
    ordered = sorted(latencies)

    def quantile(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
    return {"target_per_s": round(rate, 1), "achieved_per_s": round(len(latencies) / wall, 1),
            "requests": total, "failed": failures, "p50_ms": quantile(0.5),
            "p99_ms": quantile(0.99)}
