"""Refunds: a request denied by a later check ends up consuming nothing anywhere."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.lua_harness import LuaClockBackend

from ratelimit import Limiter
from ratelimit._core.keyspace import KeySpace
from ratelimit._core.plan import make_plan
from ratelimit._core.rate import Rate
from ratelimit._core.scripts import lua_script
from ratelimit._core.window import refund_one, run_one
from ratelimit.backends.memory import _BoundedStore
from ratelimit.backends.redis._codec import refund_args
from ratelimit.keys import header
from ratelimit.testing import FakeClock

T0 = 1_700_000_040.0
_prefixes = itertools.count()
RATES = [Rate(5, 1), Rate(10, 60), Rate(3, 2.5)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 3_000_000), st.integers(0, 1), st.sampled_from(RATES), st.integers(1, 3)),
        min_size=1,
        max_size=25,
    ),
    st.data(),
)
def test_lua_refund_matches_python(steps: list[Any], data: st.DataObject) -> None:
    """refund.lua (fakeredis) and refund_one give back the same counts on random histories."""
    import fakeredis

    client = fakeredis.FakeRedis()
    keyspace = KeySpace(f"rf{next(_prefixes)}")
    store = _BoundedStore(1000)
    source = lua_script("refund").source
    from support.lua_harness import run_lua

    now = 1_700_000_000_000_000
    charges = []
    for advance, who, rate, cost in steps:
        now += advance
        plan = make_plan(keyspace, [(f"u{who}", rate, cost)], True)
        store.now = now
        allowed, _ = run_one(store, now, True, plan.keys, plan.args)
        ((lua_allowed, _, _),) = run_lua(client, [plan], now)
        assert allowed == lua_allowed
        if allowed:
            charges.append((plan, now))
    if charges:
        plan, at = data.draw(st.sampled_from(charges))
        keys, argv = refund_args(plan, [0], at)
        refund_one(store, argv[0], keys, argv[1:])  # argv[0] is the charge's server time
        client.eval(source, len(keys), *keys, *argv)
    for who, rate in itertools.product((0, 1), RATES):
        probe = make_plan(keyspace, [(f"u{who}", rate, 0)], False)
        store.now = now
        mine = run_one(store, now, False, probe.keys, probe.args)
        ((theirs_allowed, _, theirs_counts),) = run_lua(client, [probe], now)
        assert (mine[0], list(mine[1])) == (theirs_allowed, list(theirs_counts))
    client.close()


def clocked(kind: str, request: pytest.FixtureRequest) -> tuple[Limiter, FakeClock]:
    clock = FakeClock(T0)
    if kind == "memory":
        return Limiter(clock=clock, prefix=f"rf{next(_prefixes)}"), clock
    client = request.getfixturevalue("redis_server").client()
    request.addfinalizer(client.close)
    return Limiter(LuaClockBackend(client, clock), prefix=f"rf{next(_prefixes)}", deny_cache=False), clock


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_refund_gives_back_exactly_the_charge(kind: str, request: pytest.FixtureRequest) -> None:
    """A refund restores the counters, once; denials, peeks and rolled windows behave."""
    limiter, clock = clocked(kind, request)
    d = limiter.hit_many([("a", "3/minute", 2), ("b", "5/hour", 2)])
    assert d.allowed and limiter.refund(d) is True
    assert limiter.refund(d) is False  # only once
    assert limiter.peek("a", "3/minute").remaining == 3
    assert limiter.peek("b", "5/hour").remaining == 5
    limiter.hit("a", "3/minute", cost=3)
    denied = limiter.hit("a", "3/minute")
    assert limiter.refund(denied) is False and limiter.refund(limiter.peek("a", "3/minute")) is False
    # A charge whose window has rolled over comes off the previous count.
    limiter.reset("a")
    charged = limiter.hit("a", "10/minute", cost=4)
    clock.advance(60)
    before = limiter.peek("a", "10/minute").remaining
    assert limiter.refund(charged)
    assert limiter.peek("a", "10/minute").remaining > before


def test_refund_on_a_real_redis_server_time(redis_url: str) -> None:
    """With Redis TIME (the production path), refund undoes a hit."""
    with Limiter(redis_url, prefix=f"rf{next(_prefixes)}") as limiter:
        d = limiter.hit("x", "2/minute")
        assert limiter.refund(d)
        assert limiter.peek("x", "2/minute").remaining == 2


async def test_refund_async(redis_url: str) -> None:
    """arefund works through the asyncio client."""
    async with Limiter(redis_url, prefix=f"rf{next(_prefixes)}") as limiter:
        d = await limiter.ahit("x", "2/minute")
        assert await limiter.arefund(d)
        assert (await limiter.apeek("x", "2/minute")).remaining == 2


def test_refund_failure_is_logged_not_raised() -> None:
    """A backend that fails during a refund costs a log line, never an exception."""
    from support.flaky import FlakyBackend

    backend = FlakyBackend()
    limiter = Limiter(backend)
    d = limiter.hit("a", "1/minute")
    backend.broken = True
    assert limiter.refund(d) is False


async def test_asgi_decorator_denial_refunds_the_middleware() -> None:
    """A request the route decorator denies leaves the middleware rule's counter alone."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ratelimit.asgi import RateLimitMiddleware

    limiter = Limiter(clock=FakeClock(T0))

    @limiter.limit("1/minute", key=header("x-user"), name="reports")
    async def reports(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/reports", reports)])
    app.add_middleware(
        RateLimitMiddleware, limiter=limiter, limits={"/**": "100/minute"}, key=header("x-user")
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
        answers = [await client.get("/reports", headers={"x-user": "al"}) for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 429, 429, 429]
    assert json.loads(answers[1].content)["violated-policies"] == ["reports"]
    assert limiter.peek("all/al", "100/minute").remaining == 99


def test_flask_decorator_denial_refunds_the_middleware() -> None:
    """The same holds for the WSGI middleware with a Flask view."""
    flask = pytest.importorskip("flask")
    from ratelimit.wsgi import RateLimitMiddleware

    limiter = Limiter(clock=FakeClock(T0))
    app = flask.Flask(__name__)

    @app.get("/reports")
    @limiter.limit("1/minute", key=header("x-user"), name="reports")
    def reports() -> str:
        return "ok"

    app.wsgi_app = RateLimitMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, limiter=limiter, limits={"/**": "100/minute"}, key=header("x-user")
    )
    client = app.test_client()
    codes = [client.get("/reports", headers={"x-user": "al"}).status_code for _ in range(4)]
    assert codes == [200, 429, 429, 429]
    assert limiter.peek("all/al", "100/minute").remaining == 99


def test_refund_across_cluster_slots(redis_cluster: Any) -> None:
    """On a cluster, a charge spanning several hash slots is refunded slot by slot."""
    with Limiter(redis_cluster.url, prefix=f"rf{next(_prefixes)}", timeout=2.0) as limiter:
        d = limiter.hit_many([("alice", "3/minute"), ("bob", "3/minute"), ("carol", "3/minute")])
        assert d.allowed and limiter.refund(d)
        assert [limiter.peek(who, "3/minute").remaining for who in ("alice", "bob", "carol")] == [3, 3, 3]


def test_a_receipt_refunds_once_even_from_many_threads() -> None:
    """Concurrent refunds of one decision give the charge back exactly once."""
    from concurrent.futures import ThreadPoolExecutor

    from ratelimit import Limiter, Receipt

    with Limiter() as limiter:
        for _ in range(20):
            d = limiter.hit("r", "100/minute")
            assert isinstance(d.receipt, Receipt)
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(limiter.refund, [d] * 8))
            assert answers.count(True) == 1
        assert limiter.peek("r", "100/minute").remaining == 100  # every charge came back once
        assert limiter.peek("r", "1/minute").receipt is None  # a peek charges nothing
