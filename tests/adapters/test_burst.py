"""A burst on a healthy Redis is limited exactly, with the default budget and no fallbacks.

Issue 8: the budget once counted the time a check queued in this process, so a busy
server turned a healthy Redis into failure-policy answers and let 362-947 of 1000
requests through a limit of 50. These tests send the burst through real servers
(uvicorn, several processes, several client processes) and in process, and count what
was admitted and how many answers the failure policy gave (must be 0).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ratelimit import Limiter
from ratelimit.asgi import RateLimitMiddleware
from ratelimit.keys import header
from ratelimit.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 50

# One client process: fires N requests at once (at a shared start time) and prints
# what came back: status counts, and 200s without RateLimit fields (fallbacks).
CLIENT = """
import asyncio, json, sys, time
import httpx

async def main(urls, n, user, start):
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=30) as c:
        delay = start - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        async def one(i):
            r = await c.get(urls[i % len(urls)] + "/limited", headers={"x-user": user})
            return r.status_code, "ratelimit" in r.headers
        got = await asyncio.gather(*(one(i) for i in range(n)))
    out = {}
    for status, has_fields in got:
        out[str(status)] = out.get(str(status), 0) + 1
        if status == 200 and not has_fields:
            out["fallback_200"] = out.get("fallback_200", 0) + 1
    print(json.dumps(out))

asyncio.run(main(sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])))
"""


class Server:
    """uvicorn serving tests/apps/burst_app.py on a socket bound here (default settings)."""

    def __init__(self, redis_url: str, prefix: str, log_path: Path) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        env = {**os.environ, "REDIS_URL": redis_url, "RL_PREFIX": prefix, "PYTHONDONTWRITEBYTECODE": "1"}
        self.log = log_path.open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "tests.support.burst_app:app", "--fd", str(self.sock.fileno())],
            cwd=ROOT,
            env=env,
            pass_fds=[self.sock.fileno()],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"uvicorn did not come up:\n{self.output()}")
            time.sleep(0.05)

    def stats(self) -> dict[str, float]:
        """What this process's metrics counted (decisions by result, backend errors)."""
        return dict(httpx.get(self.url + "/stats", timeout=5).json())

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        self.log.close()


def fire(urls: list[str], clients: int, per_client: int, user: str) -> dict[str, int]:
    """``clients`` processes send ``per_client`` concurrent requests each, all at once."""
    start = time.time() + 2.0  # every client has imported httpx and is waiting by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, ",".join(urls), str(per_client), user, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(clients)
    ]
    total: dict[str, int] = {}
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        for k, v in json.loads(out).items():
            total[k] = total.get(k, 0) + v
    return total


@pytest.fixture
def servers(redis_url: str, tmp_path: Path) -> Iterator[list[Server]]:
    """Two uvicorn processes on one Redis, sharing one counter prefix."""
    prefix = f"burst-{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        started = []
        for i in range(2):
            server = Server(redis_url, prefix, tmp_path / f"uvicorn{i}.log")
            stack.callback(server.close)
            started.append(server)
        yield started


@pytest.mark.slow
def test_uvicorn_burst_of_1000_admits_exactly_the_limit(servers: list[Server]) -> None:
    """uvicorn + FastAPI, 4 client processes x 250 concurrent requests, one user: exactly 50 admitted."""
    one = servers[:1]
    for round_no in range(3):
        got = fire([s.url for s in one], clients=4, per_client=250, user=f"u{round_no}")
        assert got.get("200", 0) == LIMIT, got
        assert got.get("429", 0) == 1000 - LIMIT, got
        assert got.get("fallback_200", 0) == 0, got
    stats = one[0].stats()
    assert stats.get("fallback", 0) == 0 and stats.get("errors", 0) == 0, stats


@pytest.mark.slow
def test_two_server_processes_share_one_limit(servers: list[Server]) -> None:
    """Two uvicorn processes on one Redis, 1000 concurrent requests split over both: exactly 50."""
    got = fire([s.url for s in servers], clients=4, per_client=250, user="shared")
    assert got.get("200", 0) == LIMIT and got.get("fallback_200", 0) == 0, got
    for server in servers:
        stats = server.stats()
        assert stats.get("fallback", 0) == 0 and stats.get("errors", 0) == 0, stats


def burst_app(limiter: Limiter, metrics: Metrics) -> Any:
    async def work(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/work", work)])
    return RateLimitMiddleware(
        app, limiter, key=header("x-user"), limits={"/work": f"{LIMIT}/minute"}, metrics=metrics
    )


async def test_in_process_middleware_burst_of_200_is_exact(redis_url: str) -> None:
    """RateLimitMiddleware on Redis, 200 concurrent requests for one subject: exactly 50, 5 rounds."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    async with Limiter(redis_url, prefix=f"mw-{uuid.uuid4().hex[:8]}", metrics=metrics) as limiter:
        app = burst_app(limiter, metrics)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for round_no in range(5):
                responses = await asyncio.gather(
                    *(client.get("/work", headers={"x-user": f"r{round_no}"}) for _ in range(200))
                )
                codes = [r.status_code for r in responses]
                assert codes.count(200) == LIMIT and codes.count(429) == 200 - LIMIT, round_no
                assert all("RateLimit" in r.headers for r in responses)
    fallbacks = registry.get_sample_value(
        "ratelimit_decisions_total", {"rule": "/work", "result": "fallback", "adapter": "asgi"}
    )
    assert not fallbacks
    queued = registry.get_sample_value(
        "ratelimit_backend_phase_seconds_count", {"backend": "redis", "phase": "queued"}
    )
    assert queued and queued > 0  # the time queued vs in Redis is observed per script call
