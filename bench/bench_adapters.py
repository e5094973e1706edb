"""Per-adapter overhead of ambient-ratelimit: ASGI, WSGI/Flask and gRPC, as ratios to bare apps.

Each adapter family gets its own table: the family's bare app(s), the package's adapters
on the memory backend and on Redis, and a peer library where one exists. Variants of a
family are interleaved over several rounds; a table shows the median req/s and the
median of per-round ratios to the variant's bare app. See bench/README.md.

    python bench/bench_adapters.py                         # every family, defaults (~2-3 min)
    python bench/bench_adapters.py --adapters wsgi,grpc
    python bench/bench_adapters.py --quick --no-redis      # smoke size, memory variants only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import itertools
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
_GRPC_EXAMPLE = _ROOT / "examples" / "grpc"
sys.dont_write_bytecode = True  # leave no __pycache__ in bench/ or examples/ (nothing written to the repo)
# Measure the working tree: the repository root (for `ratelimit`) and bench/ itself
# (for the helper modules) come first on the import path.
for _p in (str(_ROOT), str(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from _apps import (  # noqa: E402
    BenchContext,
    _build_slowapi,
    _importable,
    bare_fastapi,
    bare_starlette,
)
from _driver import RunResult, VariantResult, drive  # noqa: E402
from _redis import ZERO_COUNTS, CommandStats, redis_server, redis_server_binary, redis_version  # noqa: E402

T = TypeVar("T")

SUBJECT = "x-user-id"
PATH = "/items"
GRPC_METHOD = "/shop.Cart/GetCart"
FAMILIES = ("asgi", "wsgi", "grpc")
TITLES = {
    "asgi": "ASGI adapters (in-process)",
    "wsgi": "WSGI / Flask adapters (in-process)",
    "grpc": "gRPC interceptors (real server and client, loopback)",
}


# ------------------------------------------------------------------------ settings


@dataclass
class Settings:
    """Command-line settings."""

    rounds: int
    requests: dict[str, int]  #: measured requests per variant per round, by family
    warmup: dict[str, int]
    subjects: int
    asgi_concurrency: int
    grpc_concurrency: int
    cmdstats: bool
    redis_url: str | None
    no_redis: bool

    @property
    def rate(self) -> str:
        return BenchContext(redis_url=None).rate  # "1000000/minute", the rate of bench_asgi


DEFAULT_REQUESTS = {"asgi": 8_000, "wsgi": 6_000, "grpc": 3_000}
QUICK_REQUESTS = {"asgi": 300, "wsgi": 300, "grpc": 150}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--adapters",
        default=",".join(FAMILIES),
        help="comma-separated families to run: asgi, wsgi, grpc (default: all)",
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; --quick: 1)")
    p.add_argument(
        "--requests",
        type=int,
        default=None,
        help="measured requests per variant per round for every family "
        "(default: asgi 8000, wsgi 6000, grpc 3000)",
    )
    p.add_argument("--subjects", type=int, default=500, help="distinct x-user-id values (default 500)")
    p.add_argument(
        "--concurrency", type=int, default=64, help="ASGI: concurrent in-flight requests (default 64)"
    )
    p.add_argument(
        "--grpc-concurrency",
        type=int,
        default=8,
        help="gRPC: client threads (sync) / tasks (aio), and sync server workers (default 8)",
    )
    p.add_argument(
        "--redis-url", default=None, help="use this Redis instead of starting a private redis-server"
    )
    p.add_argument("--no-redis", action="store_true", help="skip every variant that needs Redis")
    p.add_argument("--no-cmdstats", action="store_true", help="do not read INFO commandstats")
    p.add_argument("--quick", action="store_true", help="smoke-test size: a few hundred requests, 1 round")
    p.add_argument("--list", action="store_true", help="list the variants and exit")
    args = p.parse_args(argv)
    wanted = [a.strip() for a in args.adapters.split(",") if a.strip()]
    unknown = [a for a in wanted if a not in FAMILIES]
    if unknown or not wanted:
        p.error(f"--adapters: unknown family {', '.join(unknown) or '(none)'}; choose from {FAMILIES}")
    args.families = [f for f in FAMILIES if f in wanted]
    if args.rounds is None:
        args.rounds = 1 if args.quick else 5
    sizes = QUICK_REQUESTS if args.quick else DEFAULT_REQUESTS
    args.requests_by_family = {f: args.requests or n for f, n in sizes.items()}
    if min(args.requests_by_family.values()) < 1 or args.rounds < 1 or args.subjects < 1:
        p.error("--requests, --rounds and --subjects must be positive")
    if args.concurrency < 1 or args.grpc_concurrency < 1:
        p.error("--concurrency and --grpc-concurrency must be positive")
    return args


# ---------------------------------------------------------------------- plumbing


class FallbackCounter:
    """A metrics object (``NullMetrics``' methods) that counts failure-policy decisions.

    Passed as ``metrics=`` to the package's adapters so a Redis variant whose decisions
    came from the failure policy (Redis failed or missed the timeout budget) is flagged.
    It costs what ``NullMetrics`` costs: one method call per decision.
    """

    __slots__ = ("fallbacks",)

    def __init__(self) -> None:
        self.fallbacks = 0

    def decision(self, rule: str, result: str, adapter: str) -> None:
        if result == "fallback":
            self.fallbacks += 1

    def backend_latency(self, backend: str, seconds: float) -> None:
        pass

    def backend_error(self, backend: str, kind: str) -> None:
        pass

    def deny_cache_hit(self, rule: str) -> None:
        pass


class LoopThread:
    """An asyncio event loop running in its own thread; ``call(coro)`` runs one to completion.

    The ASGI apps and the grpc.aio servers (and their clients) live on it; the main
    thread only submits work and waits, so it takes no CPU from the loop while it runs.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="bench-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        async def _drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        with contextlib.suppress(Exception):
            self.call(_drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


@dataclass
class Built:
    """A variant ready to run: ``run(n)`` measures ``n`` requests; ``close()`` releases it."""

    run: Callable[[int], RunResult]
    close: Callable[[], None] = lambda: None
    fallbacks: Callable[[], int] = lambda: 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Env:
    """What builders share within one family run."""

    settings: Settings
    redis_url: str | None
    loop: LoopThread | None = None


@dataclass(frozen=True)
class Variant:
    """One row of a family's table."""

    name: str
    description: str
    build: Callable[[Env], Built]
    baseline: str | None = None  #: the bare variant of this row's ratio (None: it is one)
    requires: tuple[str, ...] = ()  #: modules, or "module:attribute"
    needs_redis: bool = False
    peer: bool = False  #: another library: its failure is reported, not fatal

    def missing(self) -> list[str]:
        return [r for r in self.requires if not _importable(r)]


def _counting(metrics: FallbackCounter) -> Callable[[], int]:
    return lambda: metrics.fallbacks


# -------------------------------------------------------------------------- ASGI


def _asgi(env: Env, make: Callable[[], Coroutine[Any, Any, tuple[Any, Any, Any, list[str]]]]) -> Built:
    """Build an ASGI app on the family's loop; drive it with ``_driver.drive``."""
    assert env.loop is not None
    loop = env.loop
    app, aclose, fallbacks, notes = loop.call(make())
    s = env.settings

    def run(n: int) -> RunResult:
        return loop.call(drive(app, n, concurrency=s.asgi_concurrency, n_subjects=s.subjects, path=PATH))

    def close() -> None:
        if aclose is not None:
            loop.call(aclose())

    return Built(run, close, fallbacks or (lambda: 0), notes)


def _asgi_bare(env: Env) -> Built:
    async def make() -> Any:
        return bare_starlette(), None, None, []

    return _asgi(env, make)


def _asgi_bare_fastapi(env: Env) -> Built:
    async def make() -> Any:
        return bare_fastapi(), None, None, []

    return _asgi(env, make)


def _asgi_middleware(env: Env, url: str | None) -> Built:
    async def make() -> Any:
        from ratelimit import Limiter
        from ratelimit.asgi import RateLimitMiddleware
        from ratelimit.keys import header

        limiter = Limiter(url) if url else Limiter()
        metrics = FallbackCounter()
        app = RateLimitMiddleware(
            bare_starlette(),
            limiter,
            key=header(SUBJECT),
            limits={PATH: env.settings.rate},
            metrics=metrics,
        )
        return app, limiter.aclose, _counting(metrics), []

    return _asgi(env, make)


def _asgi_config(env: Env) -> Built:
    async def make() -> Any:
        import tempfile
        from pathlib import Path

        from ratelimit import Limiter
        from ratelimit.asgi import RateLimitMiddleware

        # A config file with tiers (the tier header is absent: every request takes the default).
        text = (
            f"rules:\n  - name: items\n    match: {{path: {PATH}}}\n    key: header:{SUBJECT}\n"
            f"    tiers: {{by: header:x-plan, limits: {{pro: 1000000/minute}},"
            f" default: '{env.settings.rate}'}}\n"
        )
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "limits.yaml"
            path.write_text(text)
            limiter = Limiter.from_config(path, reload=False)
        metrics = FallbackCounter()
        app = RateLimitMiddleware(bare_starlette(), limiter=limiter, metrics=metrics)
        return app, limiter.aclose, _counting(metrics), []

    return _asgi(env, make)


def _asgi_decorator(env: Env) -> Built:
    """``@limiter.limit`` on a Starlette endpoint, behind the middleware (no rules of its own)."""

    async def make() -> Any:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        from ratelimit import Limiter
        from ratelimit.asgi import RateLimitMiddleware
        from ratelimit.keys import header

        limiter = Limiter()

        @limiter.limit(env.settings.rate, key=header(SUBJECT))
        async def items(request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok")

        app = RateLimitMiddleware(Starlette(routes=[Route(PATH, items, methods=["GET"])]), limiter)
        return app, limiter.aclose, None, []

    return _asgi(env, make)


def _asgi_dependency(env: Env) -> Built:
    """FastAPI ``dependencies=[Depends(RateLimit(...))]`` on the route, no middleware."""

    async def make() -> Any:
        from fastapi import Depends, FastAPI
        from fastapi.responses import PlainTextResponse

        from ratelimit import Limiter
        from ratelimit.asgi import RateLimit
        from ratelimit.keys import header

        limiter = Limiter()
        metrics = FallbackCounter()
        dep = RateLimit(limiter, env.settings.rate, key=header(SUBJECT), metrics=metrics)
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

        @app.get(PATH, response_class=PlainTextResponse, dependencies=[Depends(dep)])
        async def items() -> PlainTextResponse:
            return PlainTextResponse("ok")

        return app, limiter.aclose, _counting(metrics), []

    return _asgi(env, make)


def _asgi_slowapi(env: Env) -> Built:
    async def make() -> Any:
        built = await _build_slowapi(BenchContext(redis_url=env.redis_url))
        return built.app, built.close, None, built.notes

    return _asgi(env, make)


ASGI_VARIANTS = [
    Variant("bare", "Starlette, one route, no limiter", _asgi_bare, requires=("starlette",)),
    Variant(
        "middleware-memory",
        "RateLimitMiddleware(limits={'/items': rate}, key=header('x-user-id')), Limiter()",
        lambda env: _asgi_middleware(env, None),
        "bare",
        ("starlette", "ratelimit.asgi:RateLimitMiddleware"),
    ),
    Variant(
        "middleware-redis",
        "the same with Limiter(redis_url)",
        lambda env: _asgi_middleware(env, env.redis_url),
        "bare",
        ("starlette", "ratelimit.asgi:RateLimitMiddleware", "redis"),
        needs_redis=True,
    ),
    Variant(
        "config-memory",
        "RateLimitMiddleware(limiter=Limiter.from_config(file)): one rule with tiers by header, Limiter()",
        _asgi_config,
        "bare",
        ("starlette", "ratelimit.asgi:RateLimitMiddleware", "yaml"),
    ),
    Variant(
        "decorator-memory",
        "@limiter.limit(rate, key=header('x-user-id')) on the endpoint, behind the middleware "
        "(no rules), Limiter()",
        _asgi_decorator,
        "bare",
        ("starlette", "ratelimit.asgi:RateLimitMiddleware"),
    ),
    Variant("bare-fastapi", "FastAPI, one route, no limiter", _asgi_bare_fastapi, requires=("fastapi",)),
    Variant(
        "dependency-memory",
        "FastAPI dependencies=[Depends(RateLimit(limiter, rate, key=header('x-user-id')))], "
        "no middleware, Limiter()",
        _asgi_dependency,
        "bare-fastapi",
        ("fastapi", "ratelimit.asgi:RateLimit"),
    ),
    Variant(
        "slowapi",
        "slowapi @limiter.limit (endpoint takes request), Redis, headers on; as in bench_asgi",
        _asgi_slowapi,
        "bare",
        ("starlette", "slowapi", "limits", "redis"),
        needs_redis=True,
        peer=True,
    ),
]


# -------------------------------------------------------------------------- WSGI


def wsgi_environs(n_subjects: int, path: str = PATH) -> list[dict[str, Any]]:
    """Pre-built WSGI environs for ``GET path``, one per subject (copied for every request)."""
    base = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "bench.local",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "bench.local",
        "HTTP_USER_AGENT": "bench-wsgi",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    return [{**base, "HTTP_X_USER_ID": f"user-{i}"} for i in range(n_subjects)]


def drive_wsgi(app: Any, n_requests: int, *, n_subjects: int = 500, path: str = PATH) -> RunResult:
    """``n_requests`` sequential GETs through a WSGI callable, as one sync worker serves them.

    Every request gets a fresh copy of its subject's environ and an empty ``wsgi.input``;
    the body is iterated and ``close()`` called, as a server does.
    """
    environs = wsgi_environs(n_subjects, path)
    n_env = len(environs)
    statuses: Counter[int] = Counter()
    status_line = [""]

    def write(data: bytes) -> None:
        pass

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        status_line[0] = status
        return write

    gc.collect()
    start = time.perf_counter()
    for i in range(n_requests):
        environ = environs[i % n_env].copy()
        environ["wsgi.input"] = io.BytesIO(b"")
        result = app(environ, start_response)
        try:
            for _chunk in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        statuses[int(status_line[0][:3])] += 1
    elapsed = time.perf_counter() - start
    return RunResult(requests=n_requests, elapsed=elapsed, statuses=statuses)


def _wsgi(env: Env, app: Any, close: Callable[[], None] = lambda: None, **kw: Any) -> Built:
    s = env.settings
    return Built(lambda n: drive_wsgi(app, n, n_subjects=s.subjects), close, **kw)


def bare_flask() -> Any:
    """Flask, ``GET /items`` -> 200 "ok"."""
    import flask

    app = flask.Flask("bench_bare_flask")

    @app.get(PATH)
    def items() -> str:
        return "ok"

    return app


def _wsgi_bare(env: Env) -> Built:
    return _wsgi(env, bare_flask())


def _wsgi_middleware(env: Env, url: str | None) -> Built:
    from ratelimit import Limiter
    from ratelimit.keys import header
    from ratelimit.wsgi import RateLimitMiddleware

    limiter = Limiter(url) if url else Limiter()
    metrics = FallbackCounter()
    app = bare_flask()
    app.wsgi_app = RateLimitMiddleware(
        app.wsgi_app, limiter, key=header(SUBJECT), limits={PATH: env.settings.rate}, metrics=metrics
    )
    return _wsgi(env, app, limiter.close, fallbacks=_counting(metrics))


def _flask_decorator(env: Env) -> Built:
    """``ratelimit.flask.RateLimit(app)`` (middleware mode, no rules) + ``@limiter.limit`` view."""
    import flask

    from ratelimit import Limiter
    from ratelimit.flask import RateLimit
    from ratelimit.keys import header

    limiter = Limiter()
    app = flask.Flask("bench_flask_decorator")
    RateLimit(app, limiter=limiter)

    @app.get(PATH)
    @limiter.limit(env.settings.rate, key=header(SUBJECT))
    def items() -> str:
        return "ok"

    return _wsgi(env, app, limiter.close)


def _flask_limiter(env: Env) -> Built:
    """flask-limiter: ``Limiter(key_func, app, storage_uri=redis, strategy=...)`` + decorator."""
    import flask
    from flask_limiter import Limiter
    from limits.strategies import STRATEGIES

    strategy = next(s for s in ("sliding-window-counter", "moving-window", "fixed-window") if s in STRATEGIES)
    app = flask.Flask("bench_flask_limiter")

    def user_id() -> str:
        return flask.request.headers.get(SUBJECT, "anonymous")

    limiter = Limiter(key_func=user_id, app=app, storage_uri=env.redis_url, strategy=strategy)

    @app.get(PATH)
    @limiter.limit(env.settings.rate)
    def items() -> str:
        return "ok"

    version = _version("flask-limiter")
    return _wsgi(env, app, notes=[f"flask-limiter {version}, strategy: {strategy}, headers off (default)"])


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


WSGI_VARIANTS = [
    Variant("bare-flask", "Flask, one view, no limiter", _wsgi_bare, requires=("flask",)),
    Variant(
        "wsgi-memory",
        "app.wsgi_app = ratelimit.wsgi.RateLimitMiddleware(limits={'/items': rate}, "
        "key=header('x-user-id')), Limiter()",
        lambda env: _wsgi_middleware(env, None),
        "bare-flask",
        ("flask", "ratelimit.wsgi:RateLimitMiddleware"),
    ),
    Variant(
        "wsgi-redis",
        "the same with Limiter(redis_url)",
        lambda env: _wsgi_middleware(env, env.redis_url),
        "bare-flask",
        ("flask", "ratelimit.wsgi:RateLimitMiddleware", "redis"),
        needs_redis=True,
    ),
    Variant(
        "flask-decorator-memory",
        "ratelimit.flask.RateLimit(app) (no rules) + @limiter.limit(rate, key=header('x-user-id')) "
        "on the view, Limiter()",
        _flask_decorator,
        "bare-flask",
        ("flask", "ratelimit.flask:RateLimit"),
    ),
    Variant(
        "flask-limiter",
        "flask-limiter: Limiter(key_func, app, storage_uri=redis, strategy=sliding-window-counter), "
        "@limiter.limit on the view",
        _flask_limiter,
        "bare-flask",
        ("flask", "flask_limiter", "limits", "redis"),
        needs_redis=True,
        peer=True,
    ),
]


# -------------------------------------------------------------------------- gRPC


def _grpc_code(code: Any) -> int:
    """An HTTP-like number for the table: OK 200, RESOURCE_EXHAUSTED 429, else 1000 + code."""
    import grpc

    if code == grpc.StatusCode.OK:
        return 200
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return 429
    return 1000 + int(code.value[0])


def _grpc_modules() -> tuple[Any, Any]:
    """The generated stubs of examples/grpc/shop.proto."""
    if str(_GRPC_EXAMPLE) not in sys.path:
        sys.path.insert(0, str(_GRPC_EXAMPLE))
    import shop_pb2
    import shop_pb2_grpc

    return shop_pb2, shop_pb2_grpc


def grpc_missing() -> str | None:
    """Why the gRPC family cannot run here, or None."""
    if not _importable("grpc"):
        return "grpcio is not installed"
    if not (_ROOT / "ratelimit" / "grpc.py").exists():
        return "ratelimit/grpc.py does not exist (yet)"
    if not (_GRPC_EXAMPLE / "shop_pb2_grpc.py").exists():
        return "examples/grpc/shop_pb2_grpc.py does not exist (yet)"
    try:
        _grpc_modules()
        import ratelimit.grpc  # noqa: F401
    except Exception as exc:
        return f"cannot import the gRPC stubs or ratelimit.grpc: {type(exc).__name__}: {exc}"
    return None


_CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]  # loopback: never through a configured proxy


def _metadata(n_subjects: int) -> list[tuple[tuple[str, str], ...]]:
    return [((SUBJECT, f"user-{i}"),) for i in range(n_subjects)]


def drive_grpc_sync(
    stub: Any, request: Any, n_requests: int, *, concurrency: int, n_subjects: int
) -> RunResult:
    """``n_requests`` unary GetCart calls from ``concurrency`` client threads on one channel."""
    import grpc

    metadata = _metadata(n_subjects)
    counter = itertools.count()
    threads = min(concurrency, n_requests)
    barrier = threading.Barrier(threads + 1)
    counts: list[Counter[int]] = []

    def worker() -> None:
        local: Counter[int] = Counter()
        counts.append(local)
        barrier.wait()
        while True:
            i = next(counter)
            if i >= n_requests:
                return
            try:
                stub.GetCart(request, metadata=metadata[i % n_subjects], timeout=30)
                local[200] += 1
            except grpc.RpcError as exc:
                local[_grpc_code(exc.code())] += 1

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    gc.collect()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - start
    return RunResult(requests=n_requests, elapsed=elapsed, statuses=sum(counts, Counter()))


async def drive_grpc_aio(
    stub: Any, request: Any, n_requests: int, *, concurrency: int, n_subjects: int
) -> RunResult:
    """``n_requests`` unary GetCart calls from ``concurrency`` asyncio tasks on one aio channel."""
    import grpc

    metadata = _metadata(n_subjects)
    counter = itertools.count()
    statuses: Counter[int] = Counter()

    async def worker() -> None:
        while True:
            i = next(counter)
            if i >= n_requests:
                return
            try:
                await stub.GetCart(request, metadata=metadata[i % n_subjects], timeout=30)
                statuses[200] += 1
            except grpc.aio.AioRpcError as exc:
                statuses[_grpc_code(exc.code())] += 1

    gc.collect()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n_requests))))
    elapsed = time.perf_counter() - start
    return RunResult(requests=n_requests, elapsed=elapsed, statuses=statuses)


def _grpc_limiter(url: str | None) -> Any:
    from ratelimit import Limiter

    return Limiter(url) if url else Limiter()


def _grpc_sync(env: Env, url: str | None, limited: bool) -> Built:
    """A ``grpc.server`` (thread pool) with or without RateLimitInterceptor, and a client."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    shop_pb2, shop_pb2_grpc = _grpc_modules()

    class Cart(shop_pb2_grpc.CartServicer):  # type: ignore[misc,name-defined]
        def GetCart(self, request: Any, context: Any) -> Any:
            return shop_pb2.ShoppingCart(cart_id=request.cart_id)

    s = env.settings
    interceptors = []
    limiter = None
    metrics = FallbackCounter()
    if limited:
        from ratelimit.grpc import RateLimitInterceptor
        from ratelimit.keys import header

        limiter = _grpc_limiter(url)
        interceptors.append(
            RateLimitInterceptor(limiter, {GRPC_METHOD: s.rate}, key=header(SUBJECT), metrics=metrics)
        )
    server = grpc.server(ThreadPoolExecutor(max_workers=s.grpc_concurrency), interceptors=interceptors)
    shop_pb2_grpc.add_CartServicer_to_server(Cart(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=_CHANNEL_OPTIONS)
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = shop_pb2_grpc.CartStub(channel)
    request = shop_pb2.CartRequest(cart_id="cart-1")

    def run(n: int) -> RunResult:
        return drive_grpc_sync(stub, request, n, concurrency=s.grpc_concurrency, n_subjects=s.subjects)

    def close() -> None:
        channel.close()
        server.stop(grace=None).wait(10)
        if limiter is not None:
            limiter.close()

    return Built(run, close, _counting(metrics))


def _grpc_aio(env: Env, url: str | None, limited: bool) -> Built:
    """A ``grpc.aio.server`` with or without AsyncRateLimitInterceptor, and an aio client (same loop)."""
    import grpc

    assert env.loop is not None
    loop = env.loop
    shop_pb2, shop_pb2_grpc = _grpc_modules()

    class Cart(shop_pb2_grpc.CartServicer):  # type: ignore[misc,name-defined]
        async def GetCart(self, request: Any, context: Any) -> Any:
            return shop_pb2.ShoppingCart(cart_id=request.cart_id)

    s = env.settings
    metrics = FallbackCounter()
    limiter = _grpc_limiter(url) if limited else None

    async def make() -> tuple[Any, Any, Any]:
        interceptors = []
        if limiter is not None:
            from ratelimit.grpc import AsyncRateLimitInterceptor
            from ratelimit.keys import header

            interceptors.append(
                AsyncRateLimitInterceptor(
                    limiter, {GRPC_METHOD: s.rate}, key=header(SUBJECT), metrics=metrics
                )
            )
        server = grpc.aio.server(interceptors=interceptors)
        shop_pb2_grpc.add_CartServicer_to_server(Cart(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=_CHANNEL_OPTIONS)
        await asyncio.wait_for(channel.channel_ready(), 10)
        return server, channel, shop_pb2_grpc.CartStub(channel)

    server, channel, stub = loop.call(make())
    request = shop_pb2.CartRequest(cart_id="cart-1")

    def run(n: int) -> RunResult:
        return loop.call(
            drive_grpc_aio(stub, request, n, concurrency=s.grpc_concurrency, n_subjects=s.subjects)
        )

    async def aclose() -> None:
        await channel.close()
        await server.stop(None)
        if limiter is not None:
            await limiter.aclose()

    return Built(run, lambda: loop.call(aclose()), _counting(metrics))


_GRPC_REQ = ("grpc", "ratelimit.grpc:RateLimitInterceptor")
_AIO_REQ = ("grpc", "ratelimit.grpc:AsyncRateLimitInterceptor")

GRPC_VARIANTS = [
    Variant(
        "sync-bare",
        "grpc.server(ThreadPoolExecutor), GetCart, no interceptor",
        lambda env: _grpc_sync(env, None, False),
        requires=("grpc",),
    ),
    Variant(
        "sync-memory",
        "RateLimitInterceptor(limiter, {'/shop.Cart/GetCart': rate}, key=header('x-user-id')), Limiter()",
        lambda env: _grpc_sync(env, None, True),
        "sync-bare",
        _GRPC_REQ,
    ),
    Variant(
        "sync-redis",
        "the same with Limiter(redis_url)",
        lambda env: _grpc_sync(env, env.redis_url, True),
        "sync-bare",
        (*_GRPC_REQ, "redis"),
        needs_redis=True,
    ),
    Variant(
        "aio-bare",
        "grpc.aio.server, async GetCart, no interceptor",
        lambda env: _grpc_aio(env, None, False),
        requires=("grpc",),
    ),
    Variant(
        "aio-memory",
        "AsyncRateLimitInterceptor(limiter, {...: rate}, key=header('x-user-id')), Limiter()",
        lambda env: _grpc_aio(env, None, True),
        "aio-bare",
        _AIO_REQ,
    ),
    Variant(
        "aio-redis",
        "the same with Limiter(redis_url)",
        lambda env: _grpc_aio(env, env.redis_url, True),
        "aio-bare",
        (*_AIO_REQ, "redis"),
        needs_redis=True,
    ),
]

VARIANTS: dict[str, list[Variant]] = {"asgi": ASGI_VARIANTS, "wsgi": WSGI_VARIANTS, "grpc": GRPC_VARIANTS}


# ------------------------------------------------------------------------ runner


def describe(family: str, s: Settings) -> str:
    """How the numbers of one family were made."""
    n, w = s.requests[family], s.warmup[family]
    head = f"{n} requests/variant/round, {w} warm-up, {s.rounds} round(s), {s.subjects} subjects, "
    if family == "asgi":
        how = f"in-process driver (_driver.drive), {s.asgi_concurrency} requests in flight"
    elif family == "wsgi":
        how = "in-process, the WSGI callable called sequentially from one thread (a sync worker)"
    else:
        how = (
            f"unary GetCart over 127.0.0.1, {s.grpc_concurrency} client threads (sync; server pool of "
            f"{s.grpc_concurrency}) or tasks (aio; client and server on one event loop)"
        )
    return head + how


def select(family: str, s: Settings, redis_available: bool) -> list[Variant]:
    """The family's variants that can run here; skipped ones get a printed note."""
    kept = []
    for v in VARIANTS[family]:
        missing = v.missing()
        if missing:
            print(f"skip {family}/{v.name}: not installed: {', '.join(missing)}")
        elif v.needs_redis and s.no_redis:
            print(f"skip {family}/{v.name}: needs Redis (--no-redis)")
        elif v.needs_redis and not redis_available:
            print(f"skip {family}/{v.name}: needs Redis: no redis-server on PATH (or pass --redis-url)")
        else:
            kept.append(v)
    names = {v.name for v in kept}
    # A variant without its bare app has no ratio: keep it (its req/s still print) but say so.
    for v in kept:
        if v.baseline is not None and v.baseline not in names:
            print(f"note: {family}/{v.name}: its baseline {v.baseline!r} is not running; no ratio")
    return kept


def run_family(family: str, variants: list[Variant], s: Settings) -> list[VariantResult[Variant]]:
    """Build the variants, run interleaved rounds (warm-up then measured run), close them."""
    n, warmup = s.requests[family], s.warmup[family]
    loop = LoopThread() if family in ("asgi", "grpc") else None
    env = Env(settings=s, redis_url=s.redis_url, loop=loop)
    built: dict[str, Built] = {}
    results: dict[str, VariantResult[Variant]] = {}
    stats = CommandStats(s.redis_url) if (s.cmdstats and s.redis_url) else None
    try:
        for v in variants:
            try:
                built[v.name] = v.build(env)
            except Exception as exc:
                if not v.peer:
                    raise
                print(f"skip {family}/{v.name}: failed to build: {type(exc).__name__}: {exc}")
                continue
            results[v.name] = VariantResult(v)
            for note in built[v.name].notes:
                print(f"note: {family}/{v.name}: {note}")
        for rnd in range(s.rounds):
            names = list(results)
            k = rnd % len(names) if names else 0
            for name in names[k:] + names[:k]:  # rotate: no variant always first or last
                res, b = results[name], built[name]
                if res.error is not None:
                    continue
                try:
                    b.run(warmup)
                    before = stats.snapshot() if stats else ZERO_COUNTS
                    fallbacks_before = b.fallbacks()
                    run = b.run(n)
                    res.fallbacks += b.fallbacks() - fallbacks_before
                    after = stats.snapshot() if stats else ZERO_COUNTS
                except Exception as exc:
                    if not res.variant.peer:
                        raise
                    res.error = f"{type(exc).__name__}: {exc}"
                    print(f"note: {family}/{name} failed in round {rnd + 1}: {res.error}")
                    continue
                res.runs.append(run)
                res.commands = res.commands + (after - before)
                print(
                    f"  {family} round {rnd + 1}/{s.rounds}  {name:<24} {run.rps:>10,.0f} req/s", flush=True
                )
    finally:
        if stats:
            stats.close()
        for name, b in built.items():
            try:
                b.close()
            except Exception as exc:  # closing must not hide the results
                print(f"note: closing {family}/{name}: {type(exc).__name__}: {exc}")
        if loop is not None:
            loop.close()
    return list(results.values())


def _ratio(res: VariantResult[Variant], by_name: dict[str, VariantResult[Variant]]) -> float | None:
    """Median over rounds of (variant req/s / its bare app's req/s in the same round)."""
    if res.variant.baseline is None:
        return 1.0 if res.runs else None
    base = by_name.get(res.variant.baseline)
    if base is None or not base.runs or not res.runs:
        return None
    ratios = [r.rps / b.rps for r, b in zip(res.runs, base.runs, strict=False) if b.rps > 0]
    return statistics.median(ratios) if ratios else None


def format_table(family: str, results: list[VariantResult[Variant]], s: Settings) -> str:
    """One family's table, as printed."""
    by_name = {r.variant.name: r for r in results}
    denied = "RE" if family == "grpc" else "429s"
    header = (
        f"{'variant':<24} {'req/s':>9} {'range':>17} {'vs bare':>8} {'bare app':<13} "
        f"{'cmds/req':>9} {denied:>6}"
    )
    lines = [TITLES[family], header, "-" * len(header)]
    for r in results:
        if not r.runs:
            lines.append(f"{r.variant.name:<24} failed: {r.error or 'no run'}")
            continue
        lo, hi = min(x.rps for x in r.runs), max(x.rps for x in r.runs)
        ratio = _ratio(r, by_name)
        base = r.variant.baseline or "(itself)"
        if s.cmdstats and s.redis_url and r.requests:
            cmds = f"{r.commands.total / r.requests:9.3f}"
        else:
            cmds = f"{'-':>9}"
        lines.append(
            f"{r.variant.name:<24} {r.median_rps:>9,.0f} {f'{lo:,.0f}-{hi:,.0f}':>17} "
            f"{(f'{ratio:.3f}' if ratio is not None else '-'):>8} {base:<13} {cmds} "
            f"{r.denied_share:>6.1%}"
        )
    return "\n".join(lines)


def warnings_for(family: str, results: list[VariantResult[Variant]]) -> list[str]:
    """Unexpected statuses and failure-policy decisions, one line each."""
    out = []
    for r in results:
        odd = r.unexpected_statuses
        if odd:
            if family == "grpc":
                odd_named = {_grpc_name(k): v for k, v in odd.items()}
                out.append(f"warning: {family}/{r.variant.name}: unexpected status codes {odd_named}")
            else:
                out.append(f"warning: {family}/{r.variant.name}: unexpected statuses {odd}")
        if r.fallbacks:
            share = r.fallbacks / r.requests if r.requests else 1.0
            verdict = "these numbers do not measure the backend" if share > 0.01 else "too few to matter"
            out.append(
                f"warning: {family}/{r.variant.name}: {r.fallbacks} of {r.requests} measured decisions "
                f"came from the failure policy (Redis failed or missed the timeout budget); {verdict}"
            )
    return out


def _grpc_name(number: int) -> str:
    import grpc

    for code in grpc.StatusCode:
        if _grpc_code(code) == number:
            return str(code.name)
    return str(number)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    if args.list:
        for family in FAMILIES:
            print(TITLES[family])
            for v in VARIANTS[family]:
                print(f"  {v.name:<24} {v.description}")
        return 0
    s = Settings(
        rounds=args.rounds,
        requests=args.requests_by_family,
        warmup={f: max(50 if args.quick else 200, n // 10) for f, n in args.requests_by_family.items()},
        subjects=args.subjects,
        asgi_concurrency=args.concurrency,
        grpc_concurrency=args.grpc_concurrency,
        cmdstats=not args.no_cmdstats,
        redis_url=args.redis_url,
        no_redis=args.no_redis,
    )
    families = list(args.families)
    if "grpc" in families:
        why = grpc_missing()
        if why is not None:
            print(f"skip grpc: {why}")
            families.remove("grpc")
    redis_available = s.redis_url is not None or redis_server_binary() is not None
    chosen = {f: select(f, s, redis_available) for f in families}
    chosen = {f: vs for f, vs in chosen.items() if vs}
    if not chosen:
        print("nothing to run")
        return 1
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs; limits {s.rate} per x-user-id "
        f"(nothing should be denied)",
        flush=True,
    )
    tables: list[str] = []
    with contextlib.ExitStack() as stack:
        if s.redis_url is None and any(v.needs_redis for vs in chosen.values() for v in vs):
            s.redis_url = stack.enter_context(redis_server())
        if s.redis_url:
            print(f"redis-server {redis_version(s.redis_url)} at {s.redis_url}", flush=True)
        for family, variants in chosen.items():
            print(f"{TITLES[family]}: {describe(family, s)}", flush=True)
            started = time.perf_counter()
            results = run_family(family, variants, s)
            print(f"  ({family}: {time.perf_counter() - started:.0f} s)", flush=True)
            tables.append("\n".join([format_table(family, results, s), *warnings_for(family, results)]))
    print()
    print(
        "req/s: median over rounds; vs bare: median of per-round ratios to the row's bare app; "
        "cmds/req: Redis commands (script-internal ones included) per request; "
        "429s / RE: share of 429 (HTTP) or RESOURCE_EXHAUSTED (gRPC) answers."
    )
    for table in tables:
        print()
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
