"""Closed-loop HTTP load on loopback: `wrk` when installed (it costs the 2 cores far less
than a Python client), else a thread pool with one requests.Session per thread."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

# A request body for request number n (unique across the run): used by both generators.
# In Lua, `{n}` in the template is replaced by a counter unique per wrk thread and request.
_WRK_SCRIPT = """
wrk.method = "{method}"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "ApiKey {key}"
-- `base` is the global thread:set gives each thread: a local of the same name would hide it.
local threads, counter = 0, 0
function setup(thread)
  thread:set("base", threads * 100000000)
  threads = threads + 1
end
function request()
  counter = counter + 1
  local n = base + counter
  return wrk.format(nil, nil, nil, {body})
end
function done(summary, latency, requests)
  io.write(string.format(
    'BENCH {{"requests": %d, "duration_us": %d, "non2xx": %d, "errors": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class LoadResult:
    requests: int
    seconds: float
    failed: int
    p50_ms: float
    p99_ms: float
    tool: str

    @property
    def rps(self) -> float:
        return (self.requests - self.failed) / self.seconds if self.seconds else 0.0


def has_wrk() -> bool:
    return shutil.which("wrk") is not None


def wrk(
    url: str, *, key: str, method: str, body_lua: str, clients: int, seconds: float, workdir: Path
) -> LoadResult:
    """`body_lua`: a Lua expression of `n` that gives the body ('""' for none)."""
    script = workdir / f"load-{uuid.uuid4().hex[:8]}.lua"
    script.write_text(_WRK_SCRIPT.format(method=method, key=key, body=body_lua))
    command = ["wrk", "-t", "2", "-c", str(clients), "-d", f"{seconds:.0f}s", "--timeout", "10s"]
    out = subprocess.run(
        [*command, "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH "))
    data = json.loads(line.removeprefix("BENCH "))
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        failed=data["non2xx"] + data["errors"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        tool="wrk",
    )


def python_load(
    url: str,
    *,
    key: str,
    method: str,
    body: Callable[[int], dict[str, Any] | None],
    clients: int,
    seconds: float,
    max_requests: int = 200_000,
) -> LoadResult:
    """The fallback: `clients` threads, each with its own Session, until time or count runs out."""
    counter, lock = iter(range(max_requests)), threading.Lock()
    latencies: list[float] = []
    failed = [0]
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"ApiKey {key}"}

    def client() -> None:
        session = requests.Session()
        mine: list[float] = []
        bad = 0
        while time.monotonic() < deadline:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            start = time.perf_counter()
            try:
                response = session.request(method, url, json=body(n), headers=headers, timeout=10)
                ok = response.status_code < 300
            except requests.RequestException:
                ok = False
            mine.append(time.perf_counter() - start)
            bad += not ok
        with lock:
            latencies.extend(mine)
            failed[0] += bad

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    elapsed = time.monotonic() - started
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return LoadResult(
        requests=len(latencies),
        seconds=elapsed,
        failed=failed[0],
        p50_ms=quantiles[49] * 1000,
        p99_ms=quantiles[98] * 1000,
        tool="python",
    )
