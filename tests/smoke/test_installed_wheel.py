"""Smoke tests of an *installed wheel* of ambient-ratelimit against a real redis-server.

Run by the nox ``wheel`` sessions, from a directory outside the checkout, in a fresh venv
holding only the built wheel with ``[all]``, pytest, pytest-asyncio and httpx. So this
module is self-contained: nothing from tests/ is importable, no ini options apply (async
code runs under ``asyncio.run``), and it starts its own Redis on a free loopback port.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import time
import types
import uuid
from collections.abc import Coroutine, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

import ratelimit
from ratelimit import Limiter
from ratelimit.metrics import NullMetrics

HOST = "127.0.0.1"
RATE = "2/minute"
# A sliding window counter may ask for up to 1.5 windows before the 3rd hit fits.
MAX_RETRY = 91
CI = os.environ.get("CI", "").strip().lower() == "true"
GRPC_METHOD = "/smoke.Echo/Call"


def _start_redis(binary: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server answering PING on a free loopback port (never 6379); three tries."""
    for _ in range(3):
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port: int = sock.getsockname()[1]
        if port == 6379:  # never the machine's own Redis
            continue
        args = [binary, "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
        args += ["--dir", str(workdir), "--logfile", str(workdir / f"redis-{port}.log")]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if client.ping():
                        return proc, port
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        _stop(proc)  # lost the port to someone else, or too slow: try another
    raise RuntimeError(f"redis-server did not answer PING; logs in {workdir}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for this module (skipped without one, failed under CI=true)."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not on PATH: the installed-wheel smoke tests need a real Redis"
        if CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    proc, port = _start_redis(binary, tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://{HOST}:{port}/0"
    finally:
        _stop(proc)


class Recorder(NullMetrics):
    """Metrics that remember what the limiter and the adapters reported (other hooks: no-ops)."""

    def __init__(self) -> None:
        self.decisions: list[str] = []
        self.errors: list[str] = []
        self.backend_calls = 0

    def decision(self, rule: str, result: str, adapter: str) -> None:
        self.decisions.append(result)  # "fallback" when the failure policy answered

    def backend_latency(self, backend: str, seconds: float) -> None:
        self.backend_calls += 1  # one per script call that Redis answered

    def backend_error(self, backend: str, kind: str) -> None:
        self.errors.append(kind)


@dataclass
class Smoke:
    """A Redis limiter with its own key prefix, and what it reported."""

    url: str
    prefix: str
    limiter: Limiter
    metrics: Recorder

    def assert_redis_decided(self, calls: int, decisions: list[str] | None = None) -> None:
        """Every decision came from Redis (no error, no fallback) and left counters there."""
        assert self.metrics.errors == []
        assert self.metrics.backend_calls == calls
        if decisions is not None:
            assert self.metrics.decisions == decisions
        with redis.Redis.from_url(self.url, socket_timeout=5) as client:
            assert client.keys(f"{self.prefix}:*"), f"no counters under {self.prefix}:"


@pytest.fixture
def smoke(redis_url: str) -> Iterator[Smoke]:
    """A fresh limiter on the module's Redis, with a unique prefix and a generous timeout."""
    prefix, metrics = f"smoke-{uuid.uuid4().hex[:12]}", Recorder()
    limiter = Limiter(redis_url, prefix=prefix, timeout=5.0, metrics=metrics)
    try:
        yield Smoke(redis_url, prefix, limiter, metrics)
    finally:
        limiter.close()


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


def assert_http_limited(responses: list[tuple[int, Mapping[str, str]]]) -> None:
    """200, 200, 429 with RateLimit fields on each, Retry-After and problem+json on the 429."""
    assert [status for status, _ in responses] == [200, 200, 429]
    headers = [{k.lower(): v for k, v in h.items()} for _, h in responses]
    for h in headers:
        assert "q=2;w=60" in h["ratelimit-policy"], h
    assert [re.findall(r";r=(\d+)", h["ratelimit"]) for h in headers] == [["1"], ["0"], ["0"]]
    denied = headers[2]
    assert 1 <= int(denied["retry-after"]) <= MAX_RETRY
    assert denied["content-type"].startswith("application/problem+json")


def test_package_is_the_installed_wheel() -> None:
    """ratelimit is imported from site-packages with its metadata version, Lua scripts and py.typed."""
    here = Path(ratelimit.__file__).resolve()
    assert "site-packages" in ratelimit.__file__, ratelimit.__file__
    checkout = Path(__file__).resolve().parents[2] / "ratelimit"  # tests/smoke/ -> the repository
    assert not here.is_relative_to(checkout), f"imported the checkout: {here}"
    assert ratelimit.__version__ == importlib.metadata.version("ambient-ratelimit")
    from ratelimit._core.scripts import lua_script

    for name in ("sliding_window", "refund"):
        assert lua_script(name).origin.startswith("package:"), lua_script(name).origin
    assert here.with_name("py.typed").is_file()


def test_core_hit_and_ahit(smoke: Smoke) -> None:
    """Limiter.hit and Limiter.ahit on Redis allow two hits of 2/minute, then deny."""
    sync = [smoke.limiter.hit("sync-user", RATE) for _ in range(3)]
    async_: list[ratelimit.Decision] = []

    async def main() -> None:
        try:
            for _ in range(3):
                async_.append(await smoke.limiter.ahit("async-user", RATE))
        finally:
            await smoke.limiter.aclose()

    run(main())
    for decisions in (sync, async_):
        assert [d.allowed for d in decisions] == [True, True, False]
        assert [d.remaining for d in decisions] == [1, 0, 0]
        assert not any(d.fallback for d in decisions)
        assert 0 < decisions[2].retry_after <= MAX_RETRY
    smoke.assert_redis_decided(calls=6)


def test_asgi_starlette(smoke: Smoke) -> None:
    """Starlette with RateLimitMiddleware: a middleware rule and @limiter.limit each answer 429."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ratelimit.asgi import RateLimitMiddleware

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    @smoke.limiter.limit(RATE, name="deco")
    async def decorated(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/mw", plain), Route("/deco", decorated)])
    app.add_middleware(
        RateLimitMiddleware, limiter=smoke.limiter, limits={"GET /mw": RATE}, metrics=smoke.metrics
    )
    results: dict[str, list[tuple[int, Mapping[str, str]]]] = {"/mw": [], "/deco": []}

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://smoke") as client:
                for path, got in results.items():
                    for _ in range(3):
                        response = await client.get(path)
                        got.append((response.status_code, response.headers))
        finally:
            await smoke.limiter.aclose()

    run(main())
    for got in results.values():
        assert_http_limited(got)
    smoke.assert_redis_decided(calls=6, decisions=["allowed", "allowed", "denied"])


def test_wsgi_flask(smoke: Smoke) -> None:
    """Flask with ratelimit.flask.RateLimit: a middleware rule and @limiter.limit each answer 429."""
    import flask

    from ratelimit.flask import RateLimit

    app = flask.Flask("smoke")
    RateLimit(app, limiter=smoke.limiter, limits={"GET /mw": RATE}, metrics=smoke.metrics)

    @app.get("/mw")
    def plain() -> str:
        return "ok"

    @app.get("/deco")
    @smoke.limiter.limit(RATE, name="deco")
    def decorated() -> str:
        return "ok"

    client = app.test_client()
    for path in ("/mw", "/deco"):
        assert_http_limited([(r.status_code, r.headers) for r in (client.get(path) for _ in range(3))])
    smoke.assert_redis_decided(calls=6, decisions=["allowed", "allowed", "denied"])


def test_django(smoke: Smoke) -> None:
    """Django with ratelimit.django.RateLimitMiddleware: a LIMITS rule and @limiter.limit each answer 429."""
    import django
    from django.conf import settings
    from django.http import HttpRequest, HttpResponse
    from django.test import Client, override_settings
    from django.urls import path

    def plain(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    @smoke.limiter.limit(RATE, name="deco")
    def decorated(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    urls = types.ModuleType("smoke_urls")  # ROOT_URLCONF may be a module object
    urls.urlpatterns = [path("mw", plain), path("deco", decorated)]  # type: ignore[attr-defined]
    if not settings.configured:
        settings.configure(
            SECRET_KEY="smoke-only",
            ALLOWED_HOSTS=["testserver"],
            MIDDLEWARE=["ratelimit.django.RateLimitMiddleware"],
            USE_TZ=True,
        )
        django.setup()
    config = {"LIMITER": smoke.limiter, "LIMITS": {"GET /mw": RATE}, "METRICS": smoke.metrics}
    with override_settings(ROOT_URLCONF=urls, RATELIMIT=config):
        client = Client()
        for url in ("/mw", "/deco"):
            assert_http_limited([(r.status_code, r.headers) for r in (client.get(url) for _ in range(3))])
    smoke.assert_redis_decided(calls=6, decisions=["allowed", "allowed", "denied"])


def _generic_handler(behaviour: Any) -> Any:
    import grpc

    # No serializers: requests and responses are raw bytes (no generated protobuf code).
    handler = grpc.unary_unary_rpc_method_handler(behaviour)
    return grpc.method_handlers_generic_handler("smoke.Echo", {"Call": handler})


def assert_grpc_denied(code: Any, trailers: Mapping[str, Any]) -> None:
    """RESOURCE_EXHAUSTED with retry-after, RateLimit, pushback and rich-status trailers."""
    import grpc

    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 1 <= int(trailers["retry-after"]) <= MAX_RETRY
    assert "q=2;w=60" in trailers["ratelimit-policy"]
    assert re.findall(r";r=(\d+)", trailers["ratelimit"]) == ["0"]
    assert int(trailers["grpc-retry-pushback-ms"]) > 0
    assert "grpc-status-details-bin" in trailers


def test_grpc_sync(smoke: Smoke) -> None:
    """grpc.server with RateLimitInterceptor: two calls pass, the third ends RESOURCE_EXHAUSTED."""
    import grpc
    from google.rpc import code_pb2
    from grpc_status import rpc_status

    from ratelimit.grpc import RateLimitInterceptor

    interceptor = RateLimitInterceptor(smoke.limiter, {"/smoke.Echo/*": RATE}, metrics=smoke.metrics)
    with ThreadPoolExecutor(max_workers=4) as pool:
        server = grpc.server(pool, interceptors=[interceptor])
        server.add_generic_rpc_handlers((_generic_handler(lambda request, context: request),))
        port = server.add_insecure_port(f"{HOST}:0")
        server.start()
        try:
            with grpc.insecure_channel(f"{HOST}:{port}") as channel:
                call = channel.unary_unary(GRPC_METHOD)
                assert [call(b"ping", timeout=10) for _ in range(2)] == [b"ping", b"ping"]
                with pytest.raises(grpc.RpcError) as denied:
                    call(b"ping", timeout=10)
        finally:
            server.stop(None).wait(10)
    error: Any = denied.value
    assert_grpc_denied(error.code(), dict(error.trailing_metadata()))
    status = rpc_status.from_call(error)
    assert status is not None and status.code == code_pb2.RESOURCE_EXHAUSTED
    smoke.assert_redis_decided(calls=3, decisions=["allowed", "allowed", "denied"])


def test_grpc_aio(smoke: Smoke) -> None:
    """grpc.aio.server with AsyncRateLimitInterceptor: two calls pass, the third ends RESOURCE_EXHAUSTED."""
    import grpc

    from ratelimit.grpc import AsyncRateLimitInterceptor

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    denied: list[Any] = []

    async def main() -> None:
        interceptor = AsyncRateLimitInterceptor(smoke.limiter, {"/smoke.Echo/*": RATE}, metrics=smoke.metrics)
        server = grpc.aio.server(interceptors=[interceptor])
        server.add_generic_rpc_handlers((_generic_handler(echo),))
        port = server.add_insecure_port(f"{HOST}:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
                call = channel.unary_unary(GRPC_METHOD)
                for _ in range(2):
                    assert await call(b"ping", timeout=10) == b"ping"
                try:
                    await call(b"ping", timeout=10)
                except grpc.aio.AioRpcError as exc:
                    denied.append((exc.code(), dict(exc.trailing_metadata() or ())))
        finally:
            await server.stop(None)
            await smoke.limiter.aclose()

    run(main())
    assert len(denied) == 1, "the third call was not denied"
    assert_grpc_denied(*denied[0])
    smoke.assert_redis_decided(calls=3, decisions=["allowed", "allowed", "denied"])
