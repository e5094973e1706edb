"""ASGI apps for uvicorn: ``uvicorn _servers.asgi_app:create_app --factory --app-dir bench``.

``BENCH_VARIANT`` picks the variant (see ``VARIANTS``). Every variant serves ``GET
/items`` -> ``"ok"`` from the same Starlette app, with or without a rate limiter in
front; all of them sit behind :class:`Counting`, which counts the statuses sent and
answers ``GET /__stats`` itself (that request is neither counted nor limited).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from _servers.common import ITEMS_PATH, STATS_PATH, SUBJECT_HEADER, ServerSettings, Stats

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Check = Callable[[str], Awaitable[bool]]

_SUBJECT = SUBJECT_HEADER.encode()
_BODY_429 = b"Too Many Requests"
_START_429 = {
    "type": "http.response.start",
    "status": 429,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"17"), (b"retry-after", b"1")],
}


class Counting:
    """Outermost wrapper: counts response statuses, serves ``/__stats``.

    Costs every variant (the bare app too) one closure, an integer and a dict increment per
    request. An exception that escapes the app before a response started counts as a 500,
    the answer uvicorn then sends; a request that never gets an answer shows as ``started``
    minus the statuses counted.
    """

    def __init__(self, app: ASGIApp, stats: Stats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == STATS_PATH:
            body = self.stats.json()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        stats = self.stats
        stats.started += 1
        count = stats.count
        started = False

        async def counting_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                count(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except BaseException:
            if not started:
                count(500)
            raise


class CheckWrapper:
    """The ~10-line raw ASGI wrapper around one library's check (same code for every library).

    The subject is the ``x-user-id`` header; ``check(subject)`` says whether the request
    is allowed; a denied request gets a plain 429 and never reaches the app.
    """

    def __init__(self, app: ASGIApp, check: Check) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        user = "anonymous"
        for name, value in scope["headers"]:
            if name == _SUBJECT:
                user = value.decode("latin-1")
                break
        if await self.check(user):
            await self.app(scope, receive, send)
            return
        await send(_START_429)
        await send({"type": "http.response.body", "body": _BODY_429})


def bare_starlette(endpoint: Callable[..., Any] | None = None) -> Any:
    """Starlette, one route: ``GET /items`` -> ``PlainTextResponse("ok")``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def items(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route(ITEMS_PATH, endpoint or items, methods=["GET"])])


# ------------------------------------------------------------------------ variants


def _bare(s: ServerSettings, stats: Stats) -> ASGIApp:
    return bare_starlette()  # type: ignore[no-any-return]


def _wrapper_noop(s: ServerSettings, stats: Stats) -> ASGIApp:
    """The 10-line wrapper around a check that allows everything: the wrapper's own cost."""

    async def check(user: str) -> bool:
        return True

    return CheckWrapper(bare_starlette(), check)


def _limiter(s: ServerSettings, stats: Stats, redis: bool, *, sink: bool = True) -> Any:
    from ratelimit import Limiter

    options: dict[str, Any] = {"metrics": stats.sink()} if sink else {}
    return Limiter(s.require_redis(), **options) if redis else Limiter(**options)


def _engine_wrapper(redis: bool) -> Callable[[ServerSettings, Stats], ASGIApp]:
    def build(s: ServerSettings, stats: Stats) -> ASGIApp:
        # No metrics sink: Decision.fallback is read directly, which is exact and free.
        limiter = _limiter(s, stats, redis, sink=False)
        rate = s.rate

        async def check(user: str) -> bool:
            d = await limiter.ahit(user, rate)
            if d.fallback:
                stats.extra_fallbacks += 1
            return bool(d.allowed)

        return CheckWrapper(bare_starlette(), check)

    return build


def _decorator(redis: bool) -> Callable[[ServerSettings, Stats], ASGIApp]:
    def build(s: ServerSettings, stats: Stats) -> ASGIApp:
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse

        from ratelimit.asgi import RateLimitMiddleware
        from ratelimit.keys import header

        # The decorator's decisions report to no sink: backend errors (Limiter metrics)
        # are what shows a failure-policy answer here.
        limiter = _limiter(s, stats, redis)

        @limiter.limit(s.rate, key=header(SUBJECT_HEADER))
        async def items(request: Request) -> PlainTextResponse:
            return PlainTextResponse("ok")

        return RateLimitMiddleware(bare_starlette(items), limiter, metrics=stats.sink())

    return build


def _middleware_rule(
    redis: bool, deny: bool = False, headers: bool = True
) -> Callable[[ServerSettings, Stats], ASGIApp]:
    def build(s: ServerSettings, stats: Stats) -> ASGIApp:
        from ratelimit.asgi import RateLimitMiddleware
        from ratelimit.keys import header

        limiter = _limiter(s, stats, redis)
        rate = s.deny_rate if deny else s.rate
        # headers=False: no RateLimit / X-RateLimit fields on allowed responses (a diagnostic row)
        options: dict[str, Any] = {} if headers else {"headers": False, "legacy_headers": False}
        return RateLimitMiddleware(
            bare_starlette(),
            limiter,
            key=header(SUBJECT_HEADER),
            limits={ITEMS_PATH: rate},
            metrics=stats.sink(),
            **options,
        )

    return build


def _config_tiers(s: ServerSettings, stats: Stats) -> ASGIApp:
    from ratelimit import Limiter
    from ratelimit.asgi import RateLimitMiddleware

    if not s.config_file:
        raise RuntimeError("config-tiers needs BENCH_CONFIG_FILE")
    # The file names the backend (the benchmark's Redis); reload stays on, as deployed.
    limiter = Limiter.from_config(s.config_file, metrics=stats.sink())
    return RateLimitMiddleware(bare_starlette(), limiter, metrics=stats.sink())


def _jwt_subject(redis: bool) -> Callable[[ServerSettings, Stats], ASGIApp]:
    def build(s: ServerSettings, stats: Stats) -> ASGIApp:
        from ratelimit.asgi import RateLimitMiddleware
        from ratelimit.keys import jwt_subject

        limiter = _limiter(s, stats, redis)
        # missing_identity="reject": a token that fails verification is a 401 (counted as
        # "other", so the row is flagged) instead of silently counting per client IP.
        return RateLimitMiddleware(
            bare_starlette(),
            limiter,
            key=jwt_subject(key=s.jwt_public_key()),
            limits={ITEMS_PATH: s.rate},
            missing_identity="reject",
            metrics=stats.sink(),
        )

    return build


def _limits_async(s: ServerSettings, stats: Stats) -> ASGIApp:
    from limits import parse
    from limits.aio.strategies import SlidingWindowCounterRateLimiter
    from limits.storage import storage_from_string

    storage = storage_from_string("async+" + s.require_redis())  # coredis when installed (the default)
    strategy = SlidingWindowCounterRateLimiter(storage)
    item = parse(s.rate)
    stats.observable = False
    stats.notes.append(f"limits storage bridge: {type(getattr(storage, 'bridge', None)).__name__}")

    async def check(user: str) -> bool:
        return bool(await strategy.hit(item, user))

    return CheckWrapper(bare_starlette(), check)


def _throttled(s: ServerSettings, stats: Stats) -> ASGIApp:
    from throttled.asyncio import RateLimiterType, RedisStore, Throttled

    count, _, unit = s.rate.partition("/")
    if unit != "minute":
        raise RuntimeError(f"throttled-py variant expects a per-minute rate, got {s.rate}")
    throttle = Throttled(
        using=RateLimiterType.SLIDING_WINDOW.value,
        quota=f"{count}/m",
        store=RedisStore(server=s.require_redis(), options={}),
        timeout=-1,
    )
    stats.observable = False

    async def check(user: str) -> bool:
        return not (await throttle.limit(user)).limited

    return CheckWrapper(bare_starlette(), check)


VARIANTS: dict[str, Callable[[ServerSettings, Stats], ASGIApp]] = {
    "bare": _bare,
    "wrapper-noop": _wrapper_noop,
    "engine-wrapper": _engine_wrapper(redis=True),
    "decorator": _decorator(redis=True),
    "middleware-rule": _middleware_rule(redis=True),
    "config-tiers": _config_tiers,
    "jwt-subject": _jwt_subject(redis=True),
    "engine-wrapper-memory": _engine_wrapper(redis=False),
    "decorator-memory": _decorator(redis=False),
    "middleware-rule-memory": _middleware_rule(redis=False),
    "middleware-rule-memory-noheaders": _middleware_rule(redis=False, headers=False),
    "jwt-subject-memory": _jwt_subject(redis=False),
    "limits-async": _limits_async,
    "throttled-py": _throttled,
    "deny-path": _middleware_rule(redis=True, deny=True),
}


def create_app() -> ASGIApp:
    """The uvicorn factory: the variant named by ``BENCH_VARIANT``, behind :class:`Counting`."""
    settings = ServerSettings.from_env()
    stats = Stats()
    return Counting(VARIANTS[settings.variant](settings, stats), stats)
