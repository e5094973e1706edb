"""The apps under test: a bare Starlette/FastAPI app and rate-limited copies of it.

Every variant builds its own app instance. The rate-limited ones put a limiter in front
of the same ``GET /items`` route; the subject is the ``x-user-id`` request header. The
peers (limits, slowapi, throttled-py, fastapi-limiter) are used the way their own docs
show, on the same Redis as ambient-ratelimit.

To add a variant (for instance the package's own middleware once it exists), write an
``async def _build_x(ctx) -> BuiltApp`` and append a :class:`Variant` to ``VARIANTS``.
"""

from __future__ import annotations

import importlib.util
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from _driver import SUBJECT_HEADER, ASGIApp, Receive, Scope, Send

#: Per-minute limit of the "allowed" variants: high enough that no request is denied.
HIGH_LIMIT_PER_MINUTE = 1_000_000
#: Per-minute limit of the hot-key variants: one subject blows through it almost at once.
HOT_LIMIT_PER_MINUTE = 100
HOT_RATE = f"{HOT_LIMIT_PER_MINUTE}/minute"

_BODY_429 = b"Too Many Requests"


@dataclass
class BenchContext:
    """What the variant builders need to know."""

    redis_url: str | None
    limit_per_minute: int = HIGH_LIMIT_PER_MINUTE
    hot_limit_per_minute: int = HOT_LIMIT_PER_MINUTE

    @property
    def rate(self) -> str:
        """The per-subject rate of the allowed variants, e.g. ``"1000000/minute"``."""
        return f"{self.limit_per_minute}/minute"

    @property
    def hot_rate(self) -> str:
        """The rate of the hot-key variants, e.g. ``"100/minute"``."""
        return f"{self.hot_limit_per_minute}/minute"


async def _noop() -> None:
    return None


@dataclass
class BuiltApp:
    """An app ready to serve, and how to release what it holds."""

    app: ASGIApp
    close: Callable[[], Awaitable[None]] = _noop
    notes: list[str] = field(default_factory=list)
    #: Decisions so far that the limiter made without its backend (failure policy);
    #: a run with any is not a measurement of the backend and is flagged.
    fallbacks: Callable[[], int] = lambda: 0


@dataclass(frozen=True)
class Variant:
    """One line of the result table."""

    name: str
    framework: str  #: "starlette" or "fastapi": the ratio is to that framework's bare app
    description: str
    build: Callable[[BenchContext], Awaitable[BuiltApp]]
    #: importable modules, or "module:attribute"; one missing -> the variant is skipped
    requires: tuple[str, ...] = ()
    needs_redis: bool = False
    single_subject: bool = False  #: every request from ``user-0`` (hot-key variants)
    peer: bool = False  #: another library: its failure is reported, not fatal

    def missing(self) -> list[str]:
        """The requirements that cannot be imported here."""
        return [r for r in self.requires if not _importable(r)]


def _importable(requirement: str) -> bool:
    """Whether ``"module"`` (or ``"module:attribute"``) can be imported."""
    module, _, attribute = requirement.partition(":")
    if importlib.util.find_spec(module) is None:
        return False
    if not attribute:
        return True
    try:
        return hasattr(importlib.import_module(module), attribute)
    except ImportError:
        return False


BASELINES = {"starlette": "bare", "fastapi": "bare-fastapi"}


# --------------------------------------------------------------------------- bare apps


def bare_starlette() -> ASGIApp:
    """``GET /items`` -> 200 "ok", nothing else."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def items(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/items", items, methods=["GET"])])


def bare_fastapi() -> Any:
    """The FastAPI equivalent of :func:`bare_starlette` (docs/openapi routes disabled)."""
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/items", response_class=PlainTextResponse)
    async def items() -> PlainTextResponse:
        return PlainTextResponse("ok")

    return app


async def _build_bare(ctx: BenchContext) -> BuiltApp:
    return BuiltApp(bare_starlette())


async def _build_bare_fastapi(ctx: BenchContext) -> BuiltApp:
    return BuiltApp(bare_fastapi())


# ----------------------------------------------------------------- the bench middleware


class SubjectRateLimitMiddleware:
    """Pure ASGI middleware: subject from ``x-user-id``; 429 + ``Retry-After`` if denied.

    Subclasses implement :meth:`check` with one library's async API, so every library
    pays for exactly the same middleware code around its own call.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def check(self, subject: str) -> float | None:
        """None when the request is allowed, else the seconds until a retry may succeed."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        subject = "anonymous"
        for name, value in scope["headers"]:
            if name == SUBJECT_HEADER:
                subject = value.decode("latin-1")
                break
        retry_after = await self.check(subject)
        if retry_after is None:
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(_BODY_429)).encode()),
                    (b"retry-after", str(max(1, math.ceil(retry_after))).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BODY_429})


# ------------------------------------------------------------------- ambient-ratelimit


class AmbientMiddleware(SubjectRateLimitMiddleware):
    """ambient-ratelimit: ``await limiter.ahit(subject, rate)``."""

    def __init__(self, app: ASGIApp, limiter: Any, rate: str) -> None:
        super().__init__(app)
        self.limiter = limiter
        self.rate = rate
        self.fallbacks = 0  #: decisions taken by the failure policy, not the backend

    async def check(self, subject: str) -> float | None:
        d = await self.limiter.ahit(subject, self.rate)
        if d.fallback:
            self.fallbacks += 1
        return None if d.allowed else float(d.retry_after)


async def _ambient(url: str | None, rate: str) -> BuiltApp:
    from ratelimit import Limiter

    limiter = Limiter(url) if url else Limiter()
    mw = AmbientMiddleware(bare_starlette(), limiter, rate)
    return BuiltApp(mw, limiter.aclose, fallbacks=lambda: mw.fallbacks)


async def _build_ambient_memory(ctx: BenchContext) -> BuiltApp:
    return await _ambient(None, ctx.rate)


async def _build_ambient_redis(ctx: BenchContext) -> BuiltApp:
    return await _ambient(ctx.redis_url, ctx.rate)


async def _build_ambient_redis_hotkey(ctx: BenchContext) -> BuiltApp:
    return await _ambient(ctx.redis_url, ctx.hot_rate)


async def _build_ambient_middleware(ctx: BenchContext) -> BuiltApp:
    """The package's own middleware (rules, keys, headers, context var) on the memory backend."""
    from ratelimit import Limiter
    from ratelimit.asgi import RateLimitMiddleware
    from ratelimit.keys import header

    limiter = Limiter()
    app = RateLimitMiddleware(
        bare_starlette(), limiter, key=header(SUBJECT_HEADER.decode()), limits={"/items": ctx.rate}
    )
    return BuiltApp(app, limiter.aclose)


# ------------------------------------------------------------------------------ limits


class LimitsMiddleware(SubjectRateLimitMiddleware):
    """limits (async): ``strategy.hit``; on a denial also ``get_window_stats`` for headers."""

    def __init__(self, app: ASGIApp, strategy: Any, item: Any) -> None:
        super().__init__(app)
        self.strategy = strategy
        self.item = item

    async def check(self, subject: str) -> float | None:
        if await self.strategy.hit(self.item, subject):
            return None
        stats = await self.strategy.get_window_stats(self.item, subject)
        return max(0.0, float(stats.reset_time) - time.time())


async def _build_limits(ctx: BenchContext) -> BuiltApp:
    from limits import parse
    from limits.aio.strategies import SlidingWindowCounterRateLimiter
    from limits.storage import storage_from_string

    assert ctx.redis_url is not None
    # Default async implementation (coredis when installed), as storage_from_string gives it.
    storage = storage_from_string("async+" + ctx.redis_url)
    strategy = SlidingWindowCounterRateLimiter(storage)
    app = LimitsMiddleware(bare_starlette(), strategy, parse(ctx.rate))
    impl = type(getattr(storage, "bridge", None)).__name__
    return BuiltApp(app, notes=[f"limits async+redis storage bridge: {impl}"])


# ----------------------------------------------------------------------------- slowapi


async def _build_slowapi(ctx: BenchContext) -> BuiltApp:
    """slowapi as its docs show for Starlette: decorator + RateLimitExceeded handler."""
    from limits.strategies import STRATEGIES
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    def user_id(request: Request) -> str:
        return request.headers.get("x-user-id", "anonymous")

    strategy = next(s for s in ("sliding-window-counter", "moving-window", "fixed-window") if s in STRATEGIES)
    limiter = Limiter(key_func=user_id, storage_uri=ctx.redis_url, strategy=strategy, headers_enabled=True)

    @limiter.limit(ctx.rate)
    async def items(request: Request) -> Response:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/items", items, methods=["GET"])])
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    return BuiltApp(app, notes=[f"slowapi strategy: {strategy}"])


# ------------------------------------------------------------------------ throttled-py


class ThrottledMiddleware(SubjectRateLimitMiddleware):
    """throttled-py (asyncio): ``await throttle.limit(subject)``, non-blocking."""

    def __init__(self, app: ASGIApp, throttle: Any) -> None:
        super().__init__(app)
        self.throttle = throttle

    async def check(self, subject: str) -> float | None:
        result = await self.throttle.limit(subject)
        return float(result.state.retry_after) if result.limited else None


async def _build_throttled(ctx: BenchContext) -> BuiltApp:
    from throttled.asyncio import RateLimiterType, RedisStore, Throttled

    store = RedisStore(server=ctx.redis_url, options={})
    throttle = Throttled(
        using=RateLimiterType.SLIDING_WINDOW.value,
        quota=f"{ctx.limit_per_minute}/m",
        store=store,
        timeout=-1,
    )
    return BuiltApp(ThrottledMiddleware(bare_starlette(), throttle))


# --------------------------------------------------------------------- fastapi-limiter


async def _build_fastapi_limiter(ctx: BenchContext) -> BuiltApp:
    """fastapi-limiter 0.2 (pyrate-limiter 4 underneath) with pyrate's async RedisBucket.

    fastapi-limiter's documented ``Limiter(Rate(...))`` is one in-memory bucket shared by
    every caller; a per-subject Redis limit needs pyrate-limiter's documented
    "custom routing with BucketFactory": one RedisBucket (a sorted set) per key.
    """
    import redis.asyncio as aredis
    from fastapi import Depends, FastAPI, Request
    from fastapi.responses import PlainTextResponse
    from fastapi_limiter.depends import RateLimiter
    from pyrate_limiter import BucketFactory, Duration, Limiter, Rate, RateItem, RedisBucket

    rates = [Rate(ctx.limit_per_minute, Duration.MINUTE)]
    client = aredis.Redis.from_url(ctx.redis_url)  # type: ignore[arg-type]

    class PerKeyRedisFactory(BucketFactory):
        def __init__(self) -> None:
            self.buckets: dict[str, Any] = {}

        def wrap_item(self, name: str, weight: int = 1) -> RateItem:
            return RateItem(name, time.time_ns() // 1_000_000, weight=weight)

        async def _create(self, name: str) -> Any:
            bucket = await RedisBucket.init(rates, client, f"bench:fastapi-limiter:{name}")
            self.schedule_leak(bucket)
            self.buckets[name] = bucket
            return bucket

        def get(self, item: RateItem) -> Any:
            bucket = self.buckets.get(item.name)
            return bucket if bucket is not None else self._create(item.name)

    limiter = Limiter(PerKeyRedisFactory())

    async def identifier(request: Request) -> str:
        return f"{request.headers.get('x-user-id', 'anonymous')}:{request.scope['path']}"

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get(
        "/items",
        response_class=PlainTextResponse,
        dependencies=[Depends(RateLimiter(limiter=limiter, identifier=identifier))],
    )
    async def items() -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def close() -> None:
        limiter.close()
        await client.aclose()

    return BuiltApp(app, close)


# --------------------------------------------------------------------------- registry

VARIANTS: list[Variant] = [
    Variant("bare", "starlette", "Starlette, one route, no limiter", _build_bare, ("starlette",)),
    Variant(
        "ambient-memory",
        "starlette",
        "bench middleware + ratelimit.Limiter() (memory backend)",
        _build_ambient_memory,
        ("starlette", "ratelimit:Limiter"),
    ),
    Variant(
        "ambient-redis",
        "starlette",
        "bench middleware + ratelimit.Limiter(redis_url), 500 subjects",
        _build_ambient_redis,
        ("starlette", "ratelimit:Limiter", "redis"),
        needs_redis=True,
    ),
    Variant(
        "ambient-redis-hotkey",
        "starlette",
        f"as ambient-redis, one subject over {HOT_RATE}: the deny cache",
        _build_ambient_redis_hotkey,
        ("starlette", "ratelimit:Limiter", "redis"),
        needs_redis=True,
        single_subject=True,
    ),
    Variant(
        "ambient-middleware",
        "starlette",
        "ratelimit.asgi.RateLimitMiddleware(limits={'/items': ...}) (memory backend)",
        _build_ambient_middleware,
        ("starlette", "ratelimit.asgi:RateLimitMiddleware"),
    ),
    Variant(
        "limits-async",
        "starlette",
        "limits: async RedisStorage + SlidingWindowCounterRateLimiter",
        _build_limits,
        ("starlette", "limits"),
        needs_redis=True,
        peer=True,
    ),
    Variant(
        "slowapi",
        "starlette",
        "slowapi: @limiter.limit decorator, sync Redis (limits) inside async",
        _build_slowapi,
        ("starlette", "slowapi", "limits", "redis"),
        needs_redis=True,
        peer=True,
    ),
    Variant(
        "throttled-py",
        "starlette",
        "throttled-py asyncio: RedisStore + sliding_window",
        _build_throttled,
        ("starlette", "throttled", "redis"),
        needs_redis=True,
        peer=True,
    ),
    Variant(
        "bare-fastapi",
        "fastapi",
        "FastAPI, one route, no limiter",
        _build_bare_fastapi,
        ("fastapi",),
    ),
    Variant(
        "fastapi-limiter",
        "fastapi",
        "fastapi-limiter Depends(RateLimiter) + pyrate-limiter RedisBucket per key",
        _build_fastapi_limiter,
        ("fastapi", "fastapi_limiter", "pyrate_limiter", "redis"),
        needs_redis=True,
        peer=True,
    ),
]

VARIANTS_BY_NAME: dict[str, Variant] = {v.name: v for v in VARIANTS}
