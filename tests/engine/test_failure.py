"""Redis killed, paused and restarted under a live limiter: bounded latency, policy, recovery."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from ratelimit import Decision, Limiter


def timed(fn: Any) -> tuple[Decision, float]:
    start = time.perf_counter()
    d = fn()
    return d, time.perf_counter() - start


async def atimed(coro: Any) -> tuple[Decision, float]:
    start = time.perf_counter()
    d = await coro
    return d, time.perf_counter() - start


def wait_for_recovery(limiter: Limiter, seconds: float = 10.0) -> Decision:
    end = time.monotonic() + seconds
    while True:
        d = limiter.hit("a", "1000/minute")
        if not d.fallback or time.monotonic() > end:
            return d
        time.sleep(0.02)


@pytest.mark.parametrize(("mode", "allowed"), [("open", True), ("closed", False)])
def test_killed_redis_sync(fresh_redis: Any, mode: Any, allowed: bool) -> None:
    """With Redis dead, sync hits fall back at once per policy, and recover after restart."""
    limiter = Limiter(fresh_redis.url, prefix=f"f{uuid.uuid4().hex[:8]}", failure_mode=mode)
    assert not limiter.hit("a", "1000/minute").fallback
    fresh_redis.kill()
    answers = [timed(lambda: limiter.hit("a", "1000/minute")) for _ in range(50)]
    assert all(d.fallback and d.allowed is allowed for d, _ in answers)
    # Each answer is bounded by the 50 ms budget (plus scheduling noise), never a hang.
    assert max(t for _, t in answers) < 0.5
    fresh_redis.restart()
    d = wait_for_recovery(limiter)
    assert not d.fallback and d.allowed
    limiter.close()


@pytest.mark.parametrize(("mode", "allowed"), [("open", True), ("closed", False)])
async def test_killed_redis_async(fresh_redis: Any, mode: Any, allowed: bool) -> None:
    """The asyncio path falls back the same way and recovers by itself."""
    limiter = Limiter(fresh_redis.url, prefix=f"f{uuid.uuid4().hex[:8]}", failure_mode=mode)
    assert not (await limiter.ahit("a", "1000/minute")).fallback
    fresh_redis.kill()
    answers = [await atimed(limiter.ahit("a", "1000/minute")) for _ in range(50)]
    burst = await asyncio.gather(*(atimed(limiter.ahit(f"u{i}", "1000/minute")) for i in range(200)))
    assert all(d.fallback and d.allowed is allowed for d, _ in answers + list(burst))
    assert max(t for _, t in answers + list(burst)) < 0.5
    fresh_redis.restart()
    end = time.monotonic() + 10
    d = await limiter.ahit("a", "1000/minute")
    while d.fallback and time.monotonic() < end:
        await asyncio.sleep(0.02)
        d = await limiter.ahit("a", "1000/minute")
    assert not d.fallback and d.allowed
    await limiter.aclose()


def test_hung_redis_sync_is_bounded_by_the_budget(fresh_redis: Any) -> None:
    """A Redis that stops answering (SIGSTOP) costs a request at most about the budget."""
    limiter = Limiter(fresh_redis.url, prefix="hung", timeout=0.05)
    assert not limiter.hit("a", "10/minute").fallback
    fresh_redis.pause()
    try:
        d, took = timed(lambda: limiter.hit("a", "10/minute"))
        assert d.fallback and d.allowed
        assert took < 0.5
        # The breaker is open now: following hits do not even wait for the budget.
        d, took = timed(lambda: limiter.hit("a", "10/minute"))
        assert d.fallback and took < 0.01
    finally:
        fresh_redis.resume()
    assert not wait_for_recovery(limiter).fallback
    limiter.close()


async def test_hung_redis_async_is_bounded_by_the_budget(fresh_redis: Any) -> None:
    """Concurrent async hits against a hung Redis all return within about the budget."""
    limiter = Limiter(fresh_redis.url, prefix="hung", timeout=0.05, failure_mode="closed")
    assert not (await limiter.ahit("a", "10/minute")).fallback
    fresh_redis.pause()
    try:
        answers = await asyncio.gather(*(atimed(limiter.ahit(f"u{i}", "10/minute")) for i in range(100)))
        assert all(d.fallback and not d.allowed for d, _ in answers)
        assert max(t for _, t in answers) < 0.5
    finally:
        fresh_redis.resume()
    end = time.monotonic() + 10
    d = await limiter.ahit("a", "10/minute")
    while d.fallback and time.monotonic() < end:
        await asyncio.sleep(0.02)
        d = await limiter.ahit("a", "10/minute")
    assert not d.fallback
    await limiter.aclose()


def test_local_mode_keeps_limiting_during_an_outage(fresh_redis: Any) -> None:
    """failure_mode='local' limits in process while Redis is down."""
    limiter = Limiter(fresh_redis.url, prefix="local", failure_mode="local")
    fresh_redis.kill()
    answers = [limiter.hit("a", "3/minute") for _ in range(5)]
    assert [d.allowed for d in answers] == [True, True, True, False, False]
    assert all(d.fallback for d in answers)
    fresh_redis.restart()
    limiter.close()


def test_unreachable_redis_at_start(fresh_redis: Any) -> None:
    """A limiter created while Redis is down serves fallbacks, then connects when it is up."""
    fresh_redis.kill()
    limiter = Limiter(fresh_redis.url, prefix="late")
    assert limiter.hit("a", "1000/minute").fallback
    fresh_redis.restart()
    assert not wait_for_recovery(limiter).fallback
    limiter.close()


# -- what a failure-policy answer tells the client ---------------------------------------


class _Down:
    """A backend that always fails, optionally sharded: ``shard_of`` names a key's server."""

    name = "down"

    def __init__(self, sharded: bool = False, dead: frozenset[str] = frozenset()) -> None:
        self.sharded = sharded
        self.dead = dead
        self.calls = 0

    def shard_of(self, plan: Any) -> str:
        return "dead:1" if plan.keys[0].split(":")[1] in self.dead else "alive:1"

    def evaluate(self, plan: Any) -> Any:
        self.calls += 1
        if not self.sharded or self.shard_of(plan) == "dead:1":
            from ratelimit.backends.base import BackendError

            raise BackendError("down", "dead:1" if self.sharded else None)
        return (True, (0,) * len(plan.keys), (0, 0) * len(plan.keys))

    async def aevaluate(self, plan: Any) -> Any:
        return self.evaluate(plan)

    def delete(self, keys: Any, prefixes: Any) -> int:
        return 0

    async def adelete(self, keys: Any, prefixes: Any) -> int:
        return 0

    def refund(self, plan: Any, nows: Any) -> None:
        pass

    async def arefund(self, plan: Any, nows: Any) -> None:
        pass

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(("mode", "status"), [("open", 200), ("closed", 429)])
async def test_fallback_answers_carry_no_invented_numbers(mode: Any, status: int) -> None:
    """A failure-policy answer has no RateLimit fields; a closed-mode denial says only Retry-After."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ratelimit.asgi import RateLimitMiddleware

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    limiter = Limiter(_Down(), failure_mode=mode, closed_retry_after=3.0)  # type: ignore[arg-type]
    app = RateLimitMiddleware(Starlette(routes=[Route("/", ok)]), limiter, limits={"/": "5/minute"})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        r = await client.get("/")
    assert r.status_code == status
    names = {k.lower() for k in r.headers}
    assert not names & {"ratelimit", "ratelimit-policy", "x-ratelimit-limit", "x-ratelimit-remaining"}
    assert ("retry-after" in names) is (status == 429)
    if status == 429:
        assert r.headers["retry-after"] == "3"


def test_one_breaker_per_shard() -> None:
    """On a sharded backend a dead server opens only its own breaker: other keys still reach theirs."""
    backend = _Down(sharded=True)
    limiter = Limiter(backend, prefix="s")  # type: ignore[arg-type]
    bob_key = limiter.keyspace.counter_key("bob", 60_000_000)
    backend.dead = frozenset({bob_key.split(":")[1]})
    assert limiter.hit("bob", "5/minute").fallback
    calls = backend.calls
    # bob's shard is now paused by its breaker: no backend call for him ...
    assert limiter.hit("bob", "5/minute").fallback and backend.calls == calls
    # ... while every other identity (another shard) is still decided by the backend.
    for user in ("ann", "cy", "dee"):
        d = limiter.hit(user, "5/minute")
        assert not d.fallback and d.allowed
    assert backend.calls == calls + 3
