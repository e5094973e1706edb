"""Holding plans on the asyncio Redis path (``_batcher``): fewer script calls, same answers.

Requests that arrive one per loop iteration (as grpc.aio hands them over) share script
calls: a group holds new plans while a call of it is unanswered or was sent less than
``PACE`` ago. These tests run on real Redis servers and check that calls really are
shared (INFO commandstats), that the answers stay exact and in arrival order, and that a
held plan still gets a bounded failure-policy answer when Redis stalls, dies or the
limiter closes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.fault_proxy import FaultProxy
from support.redis_servers import RedisCluster, RedisServer

from ratelimit import Decision, Limiter
from ratelimit.backends.redis import RedisBackend, _batcher

BUDGET = 0.05  # the Limiter's default timeout
SLACK = 0.25  # what a shared, noisy 2-core machine may add to a bounded answer

pytestmark = pytest.mark.timeout(120)


def _prefix() -> str:
    return f"hc{uuid.uuid4().hex[:10]}"


def _script_calls(server: Any) -> int:
    """EVALSHA + EVAL calls the server has run (INFO commandstats)."""
    with server.client(socket_timeout=5) as client:
        stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


async def _trickle(limiter: Limiter, user: str, rate: str, count: int) -> list[Decision]:
    """``count`` hits, the i-th submitted in the i-th loop iteration (as grpc.aio delivers them)."""

    async def one(i: int) -> Decision:
        for _ in range(i):
            await asyncio.sleep(0)
        return await limiter.ahit(user, rate)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def _batcher_of(limiter: Limiter) -> _batcher.Batcher:
    found = limiter.backend._batcher  # type: ignore[attr-defined]
    assert isinstance(found, _batcher.Batcher)
    return found


async def test_one_request_per_iteration_shares_script_calls(fresh_redis: RedisServer) -> None:
    """300 hits, one per loop iteration, on one user limited to 100: exactly 100, in far fewer calls."""
    async with Limiter(fresh_redis.url, prefix=_prefix()) as limiter:
        await limiter.ahit("warm", "10/hour")  # connect and load the script outside the count
        before = _script_calls(fresh_redis)
        answers = await _trickle(limiter, "one", "100/hour", 300)
        calls = _script_calls(fresh_redis) - before
    assert [d.allowed for d in answers] == [True] * 100 + [False] * 200  # arrival order
    assert not any(d.fallback for d in answers)
    assert calls <= 300 // 4, calls


async def test_an_unanswered_call_holds_new_plans_without_the_clock(fresh_redis: RedisServer) -> None:
    """With no pace, a 10 ms round trip alone makes the plans of later iterations wait and share a call."""
    with FaultProxy(("127.0.0.1", fresh_redis.port)) as proxy:
        async with Limiter(RedisBackend(proxy.url, pace=0), prefix=_prefix()) as limiter:
            await limiter.ahit("warm", "10/hour")
            assert _batcher_of(limiter)._pace == 0.0
            proxy.delay(0.005)
            before = _script_calls(fresh_redis)

            async def one(i: int) -> Decision:
                await asyncio.sleep(i * 0.0005)  # 200 hits over 100 ms: ~20 per round trip
                return await limiter.ahit("held", "150/hour")

            answers = await asyncio.gather(*(one(i) for i in range(200)))
            calls = _script_calls(fresh_redis) - before
    assert sum(d.allowed for d in answers) == 150
    assert not any(d.fallback for d in answers)
    assert calls <= 40, calls  # about one call per 10 ms round trip, not one per hit


@pytest.mark.parametrize("pace", [-0.001, 1.5, True, "2ms", float("nan")])
def test_a_bad_pace_is_refused(pace: Any) -> None:
    with pytest.raises(ValueError, match="pace must be a number of seconds"):
        RedisBackend("redis://127.0.0.1:1", pace=pace)


async def test_pace_reaches_the_batcher(redis_url: str) -> None:
    async with Limiter(RedisBackend(redis_url, pace=0.01), prefix=_prefix()) as limiter:
        assert (await limiter.ahit("p", "10/hour")).allowed
        assert _batcher_of(limiter)._pace == 0.01
    async with Limiter(RedisBackend(redis_url, pace=0.01, coalesce=False), prefix=_prefix()) as limiter:
        await limiter.ahit("p", "10/hour")
        assert _batcher_of(limiter)._pace == 0.0  # coalesce=False: nothing is held


async def test_a_lone_request_is_not_held(redis_url: str) -> None:
    """On a quiet limiter a check is written at the end of the iteration it was submitted in."""
    async with Limiter(redis_url, prefix=_prefix()) as limiter:
        await limiter.ahit("warm", "10/hour")
        batcher = _batcher_of(limiter)
        node = limiter.backend._router  # type: ignore[attr-defined]
        await asyncio.sleep(2 * _batcher.PACE)
        lone = asyncio.ensure_future(limiter.ahit("lone", "10/hour"))
        await asyncio.sleep(0)  # the task submits its plan
        await asyncio.sleep(0)  # the end of that iteration: written
        assert batcher._single.timer is None and not batcher._single.plans
        assert node._in_flight == 1 or lone.done()
        decision = await lone
    assert decision.allowed and not decision.fallback


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    gaps=st.lists(st.sampled_from([0, 0, 0, 1, 1, 2, 5, "sleep"]), min_size=1, max_size=120),
    limit=st.integers(min_value=1, max_value=60),
)
def test_held_batches_decide_in_arrival_order(redis_url: str, gaps: list[Any], limit: int) -> None:
    """Whatever the arrival pattern, exactly the first ``limit`` hits are allowed, none by the policy."""

    async def main() -> list[Decision]:
        async with Limiter(redis_url, prefix=_prefix()) as limiter:
            order: list[int] = []

            async def one(i: int, waits: list[Callable[[], Awaitable[None]]]) -> tuple[int, Decision]:
                for wait in waits:
                    await wait()
                order.append(i)  # ahit submits its plan before its first suspension
                return i, await limiter.ahit("burst", f"{limit}/hour")

            def waits_for(i: int) -> list[Callable[[], Awaitable[None]]]:
                out: list[Callable[[], Awaitable[None]]] = []
                for gap in gaps[: i + 1]:
                    if gap == "sleep":
                        out.append(lambda: asyncio.sleep(0.001))
                    else:
                        out.extend([lambda: asyncio.sleep(0)] * gap)
                return out

            got = dict(await asyncio.gather(*(one(i, waits_for(i)) for i in range(len(gaps)))))
            return [got[i] for i in order]

    answers = asyncio.run(main())
    assert not any(d.fallback for d in answers)
    expected = min(limit, len(gaps))
    assert [d.allowed for d in answers] == [True] * expected + [False] * (len(answers) - expected)


@pytest.mark.parametrize("fault", ["pause", "kill"])
async def test_held_plans_get_bounded_answers_when_redis_stops(fresh_redis: RedisServer, fault: str) -> None:
    """Redis stalls (SIGSTOP) or dies with plans held: every answer is the policy's, in bounded time."""
    async with Limiter(fresh_redis.url, prefix=_prefix(), failure_mode="closed") as limiter:
        assert not (await limiter.ahit("warm", "10/hour")).fallback
        batcher = _batcher_of(limiter)
        batcher._pace = 10.0  # only the unanswered call and this clock release held plans
        try:
            if fault == "pause":
                fresh_redis.pause()
            else:
                fresh_redis.kill()

            async def one(i: int) -> tuple[Decision, float]:
                for _ in range(i):
                    await asyncio.sleep(0)
                started = time.perf_counter()
                return await limiter.ahit("stalled", "1000/hour"), time.perf_counter() - started

            answers = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(100))), 10)
        finally:
            if fault == "pause":
                fresh_redis.resume()
    assert all(d.fallback and not d.allowed for d, _ in answers)
    # The first call times out after one budget and takes the plans held behind it along;
    # the breaker answers the rest at once. None waits for the 10 s clock.
    assert max(t for _, t in answers) < 2 * BUDGET + SLACK


async def test_held_plans_fail_with_a_reset_connection(redis_server: RedisServer) -> None:
    """The connection dies (RST) under a call with plans held behind it: they fail at once."""
    with FaultProxy(("127.0.0.1", redis_server.port)) as proxy:
        # A long budget: an answer within SLACK of the reset cannot be the budget's.
        async with Limiter(proxy.url, prefix=_prefix(), timeout=5.0) as limiter:
            assert not (await limiter.ahit("warm", "10/hour")).fallback
            batcher = _batcher_of(limiter)
            batcher._pace = 10.0
            proxy.blackhole()  # the next call stays unanswered...
            await asyncio.sleep(2 * _batcher.PACE)
            first = asyncio.ensure_future(limiter.ahit("reset", "1000/hour"))
            await asyncio.sleep(0.01)
            held = [asyncio.ensure_future(limiter.ahit("reset", "1000/hour")) for _ in range(20)]
            await asyncio.sleep(0.01)
            assert len(batcher._single.plans) == 20
            started = time.perf_counter()
            proxy.reset()  # ...until its connection is reset
            answers = await asyncio.wait_for(asyncio.gather(first, *held), 5)
            took = time.perf_counter() - started
            proxy.passthrough()
    assert all(d.fallback for d in answers)
    assert took < SLACK


async def test_closing_fails_plans_held_by_the_clock(redis_url: str) -> None:
    """aclose() with plans waiting for the pace: they are answered by the policy, not sent after closing."""
    limiter = Limiter(redis_url, prefix=_prefix())
    try:
        await limiter.ahit("warm", "10/hour")
        _batcher_of(limiter)._pace = 10.0
        assert not (await limiter.ahit("closing", "10/hour")).fallback  # idle: sent, the clock starts
        held = asyncio.ensure_future(limiter.ahit("closing", "10/hour"))
        await asyncio.sleep(0.01)
        assert not held.done()
    finally:
        await limiter.aclose()
    decision = await asyncio.wait_for(held, 1)
    assert decision.fallback


@pytest.mark.cluster
async def test_cluster_holds_per_slot(redis_cluster: RedisCluster) -> None:
    """On a Cluster, hits of one slot arriving one per iteration share calls there; exact count."""
    async with Limiter(redis_cluster.url, prefix=_prefix()) as limiter:
        await limiter.ahit("slot", "1000/hour")  # slot map, connection, script
        before = sum(_cluster_calls(redis_cluster).values())
        answers = await _trickle(limiter, "slot", "80/hour", 200)
        calls = sum(_cluster_calls(redis_cluster).values()) - before
    assert not any(d.fallback for d in answers)
    assert sum(d.allowed for d in answers) == 79  # one used by the warm-up hit
    assert calls <= 200 // 4, calls


def _cluster_calls(cluster: RedisCluster) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for address in {a for a in cluster.slot_map() if a is not None}:
        out[address] = _script_calls(cluster.node_at(address))
    return out


def test_uvloop_trickle_shares_calls(fresh_redis: RedisServer) -> None:
    """The same sharing and exactness under uvloop (uvicorn[standard]), whose timers run before I/O."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> tuple[list[Decision], int]:
        async with Limiter(fresh_redis.url, prefix=_prefix()) as limiter:
            await limiter.ahit("warm", "10/hour")
            before = _script_calls(fresh_redis)
            answers = await _trickle(limiter, "uv", "100/hour", 300)
            return answers, _script_calls(fresh_redis) - before

    answers, calls = uvloop.run(main())
    assert [d.allowed for d in answers] == [True] * 100 + [False] * 200
    assert not any(d.fallback for d in answers)
    assert calls <= 300 // 4, calls
