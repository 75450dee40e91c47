"""A lean HTTP/1.1 load generator (keep-alive connections, pre-built requests) so that the client
takes as little as possible of the CPU it shares with the server under test."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return statistics.quantiles(self.latencies_ms, n=100, method="inclusive")[int(q) - 1]


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def _run(
    host: str, port: int, request: bytes, concurrency: int, warmup_s: float, duration_s: float
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup_s
    stop_at = measure_from + duration_s

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (now := loop.time()) < stop_at:
                began = time.perf_counter()
                status = await _one(reader, writer, request)
                if now >= measure_from:
                    latencies.append((time.perf_counter() - began) * 1000)
                    errors += status != 200
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(concurrency, len(latencies), errors, duration_s, latencies)


def run_load(
    host: str, port: int, request: bytes, concurrency: int, warmup_s: float = 1.0, duration_s: float = 6.0
) -> LoadResult:
    """Closed loop: `concurrency` connections each send the request again as soon as it is answered."""
    return asyncio.run(_run(host, port, request, concurrency, warmup_s, duration_s))
