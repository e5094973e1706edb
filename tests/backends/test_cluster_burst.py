"""Bursts on a real Redis Cluster with the default 50 ms budget: exact, no fallbacks, few calls.

Issue 8 on a Cluster: concurrent checks are coalesced into one script call per hash slot,
the calls of one flush go to each master in one write, and a circuit breaker per master
sends only a dead master's keys to the failure policy. These tests send bursts through
``Limiter(url)`` with no ``timeout=`` (the 50 ms default) and count what was admitted,
how many answers the failure policy gave, and how many script calls Redis ran.
"""

from __future__ import annotations

import asyncio
import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from support.redis_servers import RedisCluster

from ratelimit import Decision, Limiter, parse_rates
from ratelimit.asgi import RateLimitMiddleware
from ratelimit.backends.redis import _backend as redis_backend
from ratelimit.backends.redis import _nodes
from ratelimit.backends.redis._slots import slot_of
from ratelimit.keys import header
from ratelimit.metrics import NullMetrics

Address = tuple[str, int]


def prefix() -> str:
    """A counter prefix no other test shares."""
    return f"cb{uuid.uuid4().hex[:10]}"


def slot_for(limiter: Limiter, identity: str, rate: str) -> int:
    """The hash slot of ``identity``'s counter for ``rate`` (its first limit)."""
    return slot_of(limiter.keyspace.counter_key(identity, parse_rates(rate)[0].window_us))


def script_calls(cluster: RedisCluster) -> dict[Address, int]:
    """EVALSHA + EVAL calls each live master has run so far (INFO commandstats)."""
    out: dict[Address, int] = {}
    for address in {a for a in cluster.slot_map() if a is not None}:
        with cluster.node_at(address).client(socket_timeout=5) as client:
            stats = client.info("commandstats")
        out[address] = sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))
    return out


def delta(after: dict[Address, int], before: dict[Address, int]) -> dict[Address, int]:
    """Per-master difference of two :func:`script_calls` readings."""
    return {a: after[a] - before.get(a, 0) for a in after}


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Counts the socket writes of script calls, per master (each write may carry many calls)."""
    counted: Counter[str] = Counter()
    original = _nodes.Node._write

    def counting(self: _nodes.Node, conn: Any, calls: Any) -> None:
        counted[self.address] += 1
        original(self, conn, calls)

    monkeypatch.setattr(_nodes.Node, "_write", counting)
    yield counted


async def test_200_distinct_users_burst_is_exact_with_few_script_calls(
    redis_cluster: RedisCluster, writes: Counter[str]
) -> None:
    """200 concurrent users on a warm cluster: all allowed x5, then all denied; <= 1 EVALSHA per slot."""
    rate, users = "5/minute", [f"user{i}" for i in range(200)]
    async with Limiter(redis_cluster.url, prefix=prefix()) as limiter:
        # Warm: connections open, slot map read, script cached on every master.
        warm = [f"warm{i}" for i in range(30)]
        assert not any(d.fallback for d in await asyncio.gather(*(limiter.ahit(u, rate) for u in warm)))
        slots = {slot_for(limiter, u, rate) for u in users}
        per_round: list[int] = []
        writes.clear()
        for round_no in range(5):
            before = script_calls(redis_cluster)
            decisions = await asyncio.gather(*(limiter.ahit(u, rate) for u in users))
            calls = delta(script_calls(redis_cluster), before)
            assert [d.fallback for d in decisions].count(True) == 0, round_no
            assert all(d.allowed and d.remaining == 4 - round_no for d in decisions), round_no
            assert sum(calls.values()) <= len(slots), (round_no, calls, len(slots))
            per_round.append(sum(calls.values()))
        writes_per_round = {a: n / 5 for a, n in writes.items()}
        denied = await asyncio.gather(*(limiter.ahit(u, rate) for u in users))
        assert not any(d.allowed or d.fallback for d in denied)
    print(
        f"\n200-user burst: {len(slots)} distinct slots, script calls per round {per_round}, "
        f"writes per master per round {writes_per_round}"
    )
    assert all(n <= 10 for n in writes_per_round.values()), writes_per_round


async def test_1000_hits_for_one_user_admit_exactly_the_limit(redis_cluster: RedisCluster) -> None:
    """1000 concurrent hits for one user, limit 50: exactly 50 allowed and no fallback, 3 rounds."""
    figures = []
    for round_no in range(3):
        async with Limiter(redis_cluster.url, prefix=prefix()) as limiter:
            await limiter.ahit("warm", "50/minute")
            before = script_calls(redis_cluster)
            decisions = await asyncio.gather(*(limiter.ahit("hot", "50/minute") for _ in range(1000)))
            calls = sum(delta(script_calls(redis_cluster), before).values())
        allowed, fallbacks = sum(d.allowed for d in decisions), sum(d.fallback for d in decisions)
        figures.append((allowed, fallbacks, calls))
        assert (allowed, fallbacks) == (50, 0), round_no
        assert calls <= 8, calls  # one slot: 1000 plans in calls of at most 128
    print(f"\n1000 hits, one user, limit 50: (allowed, fallbacks, script calls) per round {figures}")


class RecordingMetrics(NullMetrics):
    """Counts decisions by result (the adapter reports ``fallback`` ones)."""

    __slots__ = ("results",)

    def __init__(self) -> None:
        self.results: Counter[str] = Counter()

    def decision(self, rule: str, result: str, adapter: str) -> None:
        """Count one decision."""
        self.results[result] += 1


async def test_mixed_middleware_burst_is_exact_per_user(redis_cluster: RedisCluster) -> None:
    """200 concurrent requests of 5 users on mixed paths through the ASGI middleware: exact per user."""

    async def work(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/items", work), Route("/items/{n}", work), Route("/cart", work)])
    metrics = RecordingMetrics()
    wanted = {"ann": 80, "bob": 55, "cy": 35, "dee": 20, "eve": 10}
    paths = ["/items", "/items/7", "/cart"]
    requests = [(user, paths[i % 3]) for user, n in wanted.items() for i in range(n)]
    random.Random(8).shuffle(requests)
    async with Limiter(redis_cluster.url, prefix=prefix()) as limiter:
        guarded = RateLimitMiddleware(
            app, limiter=limiter, key=header("x-user"), limits={"/**": "50/minute"}, metrics=metrics
        )
        transport = httpx.ASGITransport(app=guarded)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            responses = await asyncio.gather(
                *(client.get(path, headers={"x-user": user}) for user, path in requests)
            )
    admitted: Counter[str] = Counter()
    for (user, _), response in zip(requests, responses, strict=True):
        assert response.status_code in (200, 429)
        assert "RateLimit" in response.headers  # a fallback answer carries no RateLimit fields
        admitted[user] += response.status_code == 200
    sent = Counter(user for user, _ in requests)
    assert sent == wanted
    print(
        f"\nmiddleware burst: sent {dict(sent)}, admitted {dict(admitted)}, results {dict(metrics.results)}"
    )
    assert dict(admitted) == {user: min(n, 50) for user, n in wanted.items()}
    assert metrics.results["fallback"] == 0, metrics.results


def test_sync_threads_admit_exactly_the_limit(
    redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync path (redis-py RedisCluster): 200 hits for one user from 8 threads, limit 50: exactly 50."""
    made: list[Any] = []
    make_clients = redis_backend.make_clients

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(args)
        return make_clients(*args, **kwargs)

    monkeypatch.setattr(redis_backend, "make_clients", counting)
    start = threading.Barrier(8)

    def worker(limiter: Limiter) -> list[Decision]:
        start.wait(timeout=10)
        return [limiter.hit("hot", "50/minute") for _ in range(25)]

    with Limiter(redis_cluster.url, prefix=prefix()) as limiter, ThreadPoolExecutor(8) as pool:
        decisions = [d for ds in pool.map(worker, [limiter] * 8) for d in ds]
    assert len(decisions) == 200
    assert sum(d.fallback for d in decisions) == 0
    assert sum(d.allowed for d in decisions) == 50
    assert len(made) == 1  # the threads' first hits shared one client (none leaked)


# -- a master dies under load ----------------------------------------------------------

LOAD_RATE = "1000000/minute"  # never denies: every answer is either Redis's or a fallback


def users_by_master(limiter: Limiter, slots: list[Address | None], per_master: int) -> dict[str, Address]:
    """``per_master`` users for each master, by the master their counter's slot has now."""
    masters = {a for a in slots if a is not None}
    found: dict[str, Address] = {}
    have: Counter[Address] = Counter()
    n = 0
    while min(have[m] for m in masters) < per_master:
        user = f"load{n}"
        n += 1
        owner = slots[slot_for(limiter, user, LOAD_RATE)]
        assert owner is not None
        if have[owner] < per_master:
            found[user] = owner
            have[owner] += 1
    return found


@pytest.mark.slow
async def test_killed_master_sends_only_its_users_to_the_failure_policy(
    redis_cluster_replicas: RedisCluster,
) -> None:
    """Steady load on 60 users; a master is SIGKILLed: only its users fall back, until the failover."""
    cluster = redis_cluster_replicas
    slots = cluster.slot_map()
    async with Limiter(cluster.url, prefix=prefix()) as limiter:
        users = users_by_master(limiter, slots, per_master=20)
        victim = min(users.values())
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        log: list[tuple[float, str, bool]] = []  # (seconds since start, user, fallback)

        async def one_round() -> None:
            decisions = await asyncio.gather(*(limiter.ahit(u, LOAD_RATE) for u in users))
            now = loop.time() - t0
            log.extend((now, u, d.fallback) for u, d in zip(users, decisions, strict=True))
            await asyncio.sleep(0.005)  # pacing: a steady load, not a busy loop

        while loop.time() - t0 < 0.5:
            await one_round()
        killed_at = loop.time() - t0
        await asyncio.to_thread(cluster.kill_master, victim)
        failover = asyncio.ensure_future(asyncio.to_thread(cluster.wait_for_failover, victim, 15.0))
        failover_done: float | None = None
        clean_since: float | None = None
        deadline = loop.time() + 20.0
        while loop.time() < deadline:
            await one_round()
            if failover_done is None and failover.done():
                failover_done = loop.time() - t0
            last = log[-len(users) :]
            if any(fb for _, u, fb in last if users[u] == victim):
                clean_since = None
            elif clean_since is None:
                clean_since = last[0][0]
            if failover_done is not None and clean_since is not None and loop.time() - t0 - clean_since > 0.5:
                break
        new_master = await failover
        assert failover_done is not None, "the failover did not complete"

        # After the failover, counting is exact again on every master, the new one included.
        fresh_slots = cluster.slot_map()
        assert new_master in set(fresh_slots) and victim not in set(fresh_slots)
        fresh = [f"fresh{n}" for n in range(60)]
        assert new_master in {fresh_slots[slot_for(limiter, u, "10/minute")] for u in fresh}
        hits = [u for u in fresh for _ in range(25)]
        decisions = await asyncio.gather(*(limiter.ahit(u, "10/minute") for u in hits))
        after_allowed = Counter(u for u, d in zip(hits, decisions, strict=True) if d.allowed)
        after_fallbacks = sum(d.fallback for d in decisions)

    per_master = Counter({a: 0 for a in set(users.values())})
    per_master.update(users[u] for _, u, fb in log if fb)
    healthy_fallbacks = sum(n for a, n in per_master.items() if a != victim)
    victim_times = [t for t, u, fb in log if users[u] == victim and fb]
    assert victim_times, "the killed master's users never fell back: was it killed?"
    first_fb, last_fb = min(victim_times), max(victim_times)
    recovered = min(t for t, u, fb in log if users[u] == victim and t > last_fb)
    print(
        f"\nfailover: {len(log)} decisions over {log[-1][0]:.1f}s; killed at {killed_at:.2f}s; "
        f"failover done (harness) after {failover_done - killed_at:.2f}s; "
        f"fallbacks per master {dict(per_master)} (killed: {victim[0]}:{victim[1]}) "
        f"(first {first_fb - killed_at:+.2f}s, last {last_fb - killed_at:+.2f}s); "
        f"killed master's users answered by Redis again {recovered - killed_at:.2f}s after the kill; "
        f"after: {sum(after_allowed.values())} allowed for {len(fresh)} fresh users x 10, "
        f"{after_fallbacks} fallbacks"
    )
    assert healthy_fallbacks == 0
    assert first_fb >= killed_at
    assert recovered - killed_at <= 15.0
    assert last_fb <= failover_done + 0.75  # no fallbacks once the failover has settled
    assert after_fallbacks == 0
    assert after_allowed == dict.fromkeys(fresh, 10)


async def test_moved_replies_are_followed_and_fix_the_slot_map(redis_cluster: RedisCluster) -> None:
    """A stale slot map gets MOVED from the wrong master: the call follows it, no fallback, map fixed."""
    async with Limiter(redis_cluster.url, prefix=prefix()) as limiter:
        assert not (await limiter.ahit("warm", "5/minute")).fallback
        router = limiter.backend._router  # type: ignore[attr-defined]
        assert isinstance(router, _nodes.Cluster)
        slot = slot_for(limiter, "moved-user", "5/minute")
        right = router.shard_of(slot)
        wrong = next(a for a in set(router._slots) if a is not None and a != right)
        router._slots[slot] = wrong  # as if the slot had moved since the map was read
        got = await asyncio.gather(*(limiter.ahit("moved-user", "5/minute") for _ in range(8)))
        assert [d.allowed for d in got] == [True] * 5 + [False] * 3
        assert not any(d.fallback for d in got)
        assert router.shard_of(slot) == right
