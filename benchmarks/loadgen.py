"""A lean closed-loop HTTP/1.1 load generator: asyncio streams, keep-alive, prebuilt requests.

Why not a library client: on a 2-core machine the client must cost far less than
the server it measures. Requests are prebuilt byte strings (headers + body), one
keep-alive connection per simulated user, and a response is read by its
`Content-Length` (or chunks) without parsing the body. Each run reports the CPU
it used (`client_cpu`, fraction of one core) so that a reader can see it was not
the bottleneck; `__main__` pins it to its own core.

Run as a process (the benchmark does) so it never shares an interpreter with
the code under test:

    python -m benchmarks.loadgen --url http://127.0.0.1:3000/encode --bodies DIR \
        --concurrency 32 --duration 10 --warmup 2

prints one JSON object: requests, errors (non-2xx or broken), status counts,
requests/s, latency percentiles in ms, client CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit


def build_request(host: str, port: int, path: str, body: bytes, content_type: str) -> bytes:
    """One complete HTTP/1.1 keep-alive POST as bytes."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
    """Status, body length and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, chunked, keep = None, False, True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
    if length is not None:
        await reader.readexactly(length)
        return status, length, keep
    if chunked:
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            total += size
            if size == 0:
                return status, total, keep
    await reader.read()  # no length: the body ends with the connection
    return status, 0, False


class _Run:
    """Shared state of one load run."""

    def __init__(
        self, requests: list[bytes], total: int | None, end: float | None, warm: float, least: int
    ):
        self.requests = requests
        self.min_requests = least  # a timed run measures at least this many, however slow
        self.total = total  # measured requests to send, or None for a timed run
        self.end = end
        self.warm_until = warm
        self.issued = 0
        self.warmup_requests = 0
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.bytes_in = 0
        self.first: float | None = None
        self.last = 0.0

    def take(self, now: float) -> bool | None:
        """Whether the next request is measured (False during warm-up); None when over."""
        if now < self.warm_until:
            self.warmup_requests += 1
            return False
        if self.end is not None and now >= self.end and self.issued >= self.min_requests:
            return None
        if self.total is not None and self.issued >= self.total:
            return None
        self.issued += 1
        if self.first is None:
            self.first = now
        return True


async def _user(host: str, port: int, run: _Run, index: int) -> None:
    reader = writer = None
    i = index
    while True:
        measured = run.take(time.perf_counter())
        if measured is None:
            break
        payload = run.requests[i % len(run.requests)]
        i += 1
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(payload)
            status, size, keep = await _read_response(reader)
            if not keep:
                writer.close()
                reader = writer = None
            outcome = str(status)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            outcome, size = type(e).__name__, 0
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.01)
        done = time.perf_counter()
        if measured:
            run.latencies.append(done - start)
            run.statuses[outcome] += 1
            run.bytes_in += size
            run.last = max(run.last, done)
    if writer is not None:
        writer.close()


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def load(
    url: str,
    bodies: list[bytes],
    content_type: str,
    concurrency: int,
    duration: float | None = None,
    requests: int | None = None,
    warmup: float = 1.0,
) -> dict:
    """Drive `url` with `concurrency` keep-alive users; return the summary (see module doc)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    prebuilt = [build_request(host, port, path, b, content_type) for b in bodies]
    t0 = time.perf_counter()
    end = None if duration is None else t0 + warmup + duration
    run = _Run(prebuilt, requests, end, t0 + warmup, least=2 * concurrency)
    cpu0 = time.process_time()
    await asyncio.gather(*(_user(host, port, run, i) for i in range(concurrency)))
    cpu = time.process_time() - cpu0
    wall_total = time.perf_counter() - t0
    lat = sorted(run.latencies)
    wall = (run.last - run.first) if run.first is not None and run.last > run.first else 0.0
    ok = sum(n for s, n in run.statuses.items() if s.isdigit() and 200 <= int(s) < 300)
    count = len(lat)
    return {
        "url": url,
        "concurrency": concurrency,
        "requests": count,
        "warmup_requests": run.warmup_requests,
        "ok": ok,
        "errors": count - ok,
        "statuses": dict(run.statuses),
        "wall_s": round(wall, 3),
        "rps": count / wall if wall else 0.0,
        "ok_rps": ok / wall if wall else 0.0,
        "latency_ms": {
            "p50": 1e3 * percentile(lat, 50),
            "p90": 1e3 * percentile(lat, 90),
            "p99": 1e3 * percentile(lat, 99),
            "max": 1e3 * lat[-1] if lat else float("nan"),
            "mean": 1e3 * sum(lat) / count if count else float("nan"),
        },
        "bytes_in": run.bytes_in,
        "client_cpu": cpu / wall_total if wall_total else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--bodies", type=Path, required=True, help="folder of request bodies")
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=float, help="measured seconds (after warm-up)")
    parser.add_argument("--requests", type=int, help="measured requests (after warm-up)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not measured")
    parser.add_argument("--cpu", type=int, help="pin this process to one CPU")
    args = parser.parse_args(argv)
    if args.duration is None and args.requests is None:
        parser.error("give --duration or --requests")
    if args.cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    bodies = [p.read_bytes() for p in sorted(args.bodies.iterdir()) if p.is_file()]
    result = asyncio.run(
        load(
            args.url,
            bodies,
            args.content_type,
            args.concurrency,
            duration=args.duration,
            requests=args.requests,
            warmup=args.warmup,
        )
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
