"""The framework-neutral decorator contract: context lookup, stacking, signatures."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from ratelimit import Limiter
from ratelimit.context import RequestContext, current
from ratelimit.enforce import Outcome
from ratelimit.keys import header
from ratelimit.request import Headers, RequestInfo
from ratelimit.testing import FakeClock


def ctx(user: str = "alice") -> RequestContext:
    request = RequestInfo("http", "GET", "/x", Headers([(b"x-user", user.encode())]), "10.0.0.1")
    return RequestContext(request, render=lambda o: ("rendered", o.status, dict(o.headers)))


def test_sync_endpoint_limited_without_a_request_parameter() -> None:
    """A plain function keeps its signature; denials come back as the rendered response."""
    limiter = Limiter(clock=FakeClock())

    @limiter.limit("2/minute", key=header("x-user"))
    def items(page: int = 1) -> str:
        return f"page {page}"

    assert list(inspect.signature(items).parameters) == ["page"]
    c = ctx()
    token = current.set(c)
    try:
        assert items(page=2) == "page 2" and items() == "page 1"
        denied = items()
    finally:
        current.reset(token)
    assert denied[0] == "rendered" and denied[1] == 429 and "Retry-After" in denied[2]
    assert dict(c.headers)["RateLimit-Policy"].endswith(";q=2;w=60")


async def test_stacked_async_decorators_are_all_or_nothing() -> None:
    """Two stacked limits are one decision: when one denies, the other is not charged."""
    limiter = Limiter(clock=FakeClock())

    @limiter.limit("100/minute", key=header("x-user"), name="wide")
    @limiter.limit("1/minute", key=header("x-user"), name="narrow")
    async def items() -> str:
        return "ok"

    token = current.set(ctx())
    try:
        assert await items() == "ok"
        denied = await items()
    finally:
        current.reset(token)
    assert denied[1] == 429
    assert limiter.peek("wide/alice", "100/minute").remaining == 99
    assert [r.name for r in items.__ratelimit_rules__] == ["wide", "narrow"]  # type: ignore[attr-defined]


def test_without_context_the_error_says_what_to_do() -> None:
    """Calling a decorated endpoint with no middleware explains how to fix it."""
    limiter = Limiter()

    @limiter.limit("1/second")
    def items() -> str:
        return "ok"

    with pytest.raises(RuntimeError, match="middleware"):
        items()


def test_default_rule_names_are_stable_and_bounded() -> None:
    """Unnamed limits are named after the endpoint, valid and at most 64 characters."""
    limiter = Limiter()

    def a_very_long_endpoint_name_that_goes_on_and_on_and_on_and_on_and_on_forever() -> None:
        pass

    wrapped: Any = limiter.limit("1/second")(
        a_very_long_endpoint_name_that_goes_on_and_on_and_on_and_on_and_on_forever
    )
    (rule,) = wrapped.__ratelimit_rules__
    assert len(rule.name) <= 64 and rule.name.startswith("test_decorators.")
    assert isinstance(Outcome("skip"), Outcome)


def test_decorator_finds_the_request_without_importing_the_adapter_first() -> None:
    """A decorated endpoint with a Request parameter works though ratelimit.asgi was never imported."""
    import subprocess
    import sys

    code = (
        "import asyncio, sys, httpx\n"
        "from starlette.applications import Starlette\n"
        "from starlette.requests import Request\n"
        "from starlette.responses import PlainTextResponse\n"
        "from starlette.routing import Route\n"
        "from ratelimit import Limiter\n"
        "assert 'ratelimit.asgi' not in sys.modules\n"
        "limiter = Limiter()\n"
        "@limiter.limit('1/minute')\n"
        "async def ep(request: Request):\n"
        "    return PlainTextResponse('ok')\n"
        "app = Starlette(routes=[Route('/', ep)])\n"
        "async def main():\n"
        "    t = httpx.ASGITransport(app=app)\n"
        "    async with httpx.AsyncClient(transport=t, base_url='http://t') as c:\n"
        "        print([(await c.get('/')).status_code for _ in range(2)])\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[200, 429]"
