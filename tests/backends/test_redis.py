"""The Redis backend against real redis-server processes: standalone, TLS, ACL, Cluster, Sentinel."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from ratelimit import Limiter
from ratelimit.backends.redis import RedisBackend


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def evalsha_calls(client: Any) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


def test_hits_peek_reset_sync(redis_url: str) -> None:
    """The sync API works end to end on a real Redis, with Redis time."""
    with Limiter(redis_url, prefix=prefix()) as limiter:
        assert [limiter.hit("alice", "3/minute").remaining for _ in range(3)] == [2, 1, 0]
        denied = limiter.hit("alice", "3/minute")
        assert not denied.allowed and 0 < denied.retry_after <= 120 and not denied.fallback
        assert limiter.peek("bob", "3/minute").remaining == 3
        d = limiter.hit_many([("alice", "10/second"), ("bob", "1/minute")])
        assert d.allowed and [s.remaining for s in d.limits] == [9, 0]
        assert limiter.reset("alice") == 2
        assert limiter.hit("alice", "3/minute").remaining == 2


async def test_hits_peek_reset_async(redis_url: str) -> None:
    """The async API works end to end on a real Redis."""
    async with Limiter(redis_url, prefix=prefix()) as limiter:
        assert (await limiter.ahit("alice", "2/minute", cost=2)).remaining == 0
        assert not (await limiter.ahit("alice", "2/minute")).allowed
        assert not (await limiter.apeek("alice", "2/minute")).allowed
        assert (await limiter.ahit_many([("x", "1/minute"), ("y", "1/minute")])).allowed
        assert not (await limiter.apeek_many([("x", "1/minute")])).allowed
        assert await limiter.areset("alice", "2/minute") == 1
        assert (await limiter.ahit("alice", "2/minute")).allowed


def test_keys_are_hashes_with_ttl(redis_server: Any) -> None:
    """A counter is one small hash that expires after two windows."""
    p = prefix()
    with Limiter(redis_server.url, prefix=p) as limiter, redis_server.client() as client:
        limiter.hit("alice", "5/minute")
        key = f"{p}:{{alice}}:60000"
        assert client.type(key) == b"hash"
        assert set(client.hgetall(key)) == {b"w", b"p", b"c"}
        assert 60_000 < client.pttl(key) <= 120_001


def test_odd_identities_on_redis(redis_server: Any) -> None:
    """Identities of any bytes and length become short, distinct keys."""
    p = prefix()
    names: list[str | bytes] = [
        "{a}",
        "a",
        "a:b",
        "a\x00",
        "x" * 10_000,
        b"\xff" * 5000,
        "",
        "ü{}:*?",
    ]
    with Limiter(redis_server.url, prefix=p) as limiter, redis_server.client() as client:
        for name in names:
            assert limiter.hit(name, "1/minute").allowed
        for name in names:
            assert not limiter.hit(name, "1/minute").allowed
        keys = list(client.scan_iter(match=f"{p}:*"))
        assert len(keys) == len(names)
        assert max(len(k) for k in keys) < 60


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_noscript_recovery(redis_server: Any, mode: str) -> None:
    """After SCRIPT FLUSH (as after a restart or failover) hits go on transparently."""
    p = prefix()

    async def ahits(limiter: Limiter, n: int) -> list[bool]:
        return [(await limiter.ahit("a", "10/minute")).allowed for _ in range(n)]

    limiter = Limiter(redis_server.url, prefix=p)
    with redis_server.client() as client:
        for _ in range(3):
            client.script_flush()
            d = limiter.hit("a", "10/minute") if mode == "sync" else asyncio.run(_one(limiter))
            assert d.allowed and not d.fallback
    assert limiter.peek("a", "10/minute").remaining == 7
    limiter.close()


async def _one(limiter: Limiter) -> Any:
    try:
        return await limiter.ahit("a", "10/minute")
    finally:
        await limiter.aclose()


async def test_concurrent_async_checks_are_coalesced_and_exact(redis_server: Any) -> None:
    """Thousands of concurrent ahit calls share script calls and still admit exactly N."""
    p = prefix()
    with redis_server.client() as client:
        before = evalsha_calls(client)
        async with Limiter(redis_server.url, prefix=p, deny_cache=False, timeout=2.0) as limiter:
            results = await asyncio.gather(*(limiter.ahit("hot", "250/day") for _ in range(2000)))
            others = await asyncio.gather(*(limiter.ahit(f"u{i}", "5/day") for i in range(500)))
        calls = evalsha_calls(client) - before
    assert sum(d.allowed for d in results) == 250
    assert all(d.allowed and not d.fallback for d in others)
    assert calls < 2500 / 4, f"{calls} script calls for 2500 requests: not coalesced"


async def test_coalescing_can_be_turned_off(redis_server: Any) -> None:
    """With coalesce=False every request is its own script call."""
    with redis_server.client() as client:
        before = evalsha_calls(client)
        async with Limiter(redis_server.url, prefix=prefix(), coalesce=False, timeout=2.0) as limiter:
            results = await asyncio.gather(*(limiter.ahit("k", "10/day") for _ in range(50)))
        assert evalsha_calls(client) - before == 50
    assert sum(d.allowed for d in results) == 10


def test_given_clients_are_used_and_not_closed(redis_server: Any) -> None:
    """A backend built from a client uses it and leaves closing it to its owner."""
    client = redis_server.client()
    limiter = Limiter(RedisBackend(client=client), prefix=prefix())
    assert limiter.hit("a", "1/minute").allowed
    limiter.close()
    assert client.ping()
    client.close()


def test_tls(redis_tls: Any) -> None:
    """rediss:// with CA verification works."""
    assert redis_tls.url.startswith("rediss://")
    with Limiter(redis_tls.url, prefix=prefix(), timeout=2.0) as limiter:
        assert [limiter.hit("a", "2/minute").allowed for _ in range(3)] == [True, True, False]


async def test_tls_async(redis_tls: Any) -> None:
    """The asyncio client speaks TLS too."""
    async with Limiter(redis_tls.url, prefix=prefix(), timeout=2.0) as limiter:
        assert (await limiter.ahit("a", "1/minute")).allowed
        assert not (await limiter.ahit("a", "1/minute")).allowed


def test_acl_user(redis_acl: Any) -> None:
    """An ACL user and password from the URL authenticate; a wrong password falls back."""
    with Limiter(redis_acl.url, prefix=prefix(), timeout=2.0) as limiter:
        d = limiter.hit("a", "1/minute")
        assert d.allowed and not d.fallback
    bad = redis_acl.url.replace(":apppw@", ":wrong@")
    with Limiter(bad, prefix=prefix(), timeout=2.0, failure_mode="closed") as limiter:
        d = limiter.hit("a", "1/minute")
        assert d.fallback and not d.allowed


# -- Redis Cluster ------------------------------------------------------------------


def test_cluster_one_identity(redis_cluster: Any) -> None:
    """On a cluster, one identity's limits are one atomic script call."""
    with Limiter(redis_cluster.url, prefix=prefix(), timeout=2.0) as limiter:
        for _ in range(2):
            assert limiter.hit_many([("a", "2/minute"), ("a", "100/hour")]).allowed
        d = limiter.hit_many([("a", "2/minute"), ("a", "100/hour")])
        assert not d.allowed and not d.fallback
        assert [s.remaining for s in d.limits] == [0, 98]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cluster_cross_slot_is_all_or_nothing(redis_cluster: Any, mode: str) -> None:
    """Limits on identities in different slots: a denial in one slot refunds the others."""
    p = prefix()
    # Pick identities whose keys land in different slots (and so, usually, nodes).
    items = [("alice", "3/minute"), ("bob", "1/minute"), ("carol", "10/minute")]

    async def run(limiter: Limiter) -> list[Any]:
        try:
            return [await limiter.ahit_many(items) for _ in range(3)]
        finally:
            await limiter.aclose()

    limiter = Limiter(redis_cluster.url, prefix=p, timeout=2.0, deny_cache=False)
    answers = [limiter.hit_many(items) for _ in range(3)] if mode == "sync" else asyncio.run(run(limiter))
    assert [d.allowed for d in answers] == [True, False, False]
    assert not any(d.fallback for d in answers)
    # The denied requests consumed nothing anywhere.
    assert limiter.peek("alice", "3/minute").remaining == 2
    assert limiter.peek("carol", "10/minute").remaining == 9
    assert limiter.reset("alice") == 1
    limiter.close()


def test_cluster_fixed_hash_tag(redis_cluster: Any) -> None:
    """hash_tag puts every counter in one slot: one call decides across identities."""
    from redis.crc import key_slot

    limiter = Limiter(redis_cluster.url, prefix=prefix(), hash_tag="app", timeout=2.0)
    plan = limiter._plan_many([("alice", "1/minute"), ("bob", "1/minute")], 1, True)
    assert len({key_slot(k.encode()) for k in plan.keys}) == 1
    assert limiter.hit_many([("alice", "1/minute"), ("bob", "1/minute")]).allowed
    assert not limiter.hit_many([("alice", "1/minute"), ("bob", "1/minute")]).allowed
    limiter.close()


async def test_cluster_async_concurrency_exact(redis_cluster: Any) -> None:
    """Concurrent async hits on a cluster admit exactly N."""
    async with Limiter(redis_cluster.url, prefix=prefix(), timeout=2.0, deny_cache=False) as limiter:
        results = await asyncio.gather(*(limiter.ahit("hot", "40/day") for _ in range(300)))
    assert sum(d.allowed for d in results) == 40


# -- Sentinel -----------------------------------------------------------------------


@pytest.mark.slow
def test_sentinel_failover(redis_sentinel: Any) -> None:
    """Through Sentinel, hits survive a master failover (NOSCRIPT on the new master included)."""
    limiter = Limiter(redis_sentinel.url, prefix=prefix(), timeout=0.5)
    limiter._breaker._base = 0.05  # probe often so the test does not wait long
    assert limiter.hit("a", "100/minute").allowed
    redis_sentinel.failover_by_kill()
    end = time.monotonic() + 20
    d = limiter.hit("a", "100/minute")
    while d.fallback and time.monotonic() < end:
        time.sleep(0.05)
        d = limiter.hit("a", "100/minute")
    assert not d.fallback and d.allowed
    limiter.close()


async def test_sentinel_async(redis_sentinel: Any) -> None:
    """The asyncio Sentinel client finds the master and decides."""
    async with Limiter(redis_sentinel.url, prefix=prefix(), timeout=2.0) as limiter:
        assert (await limiter.ahit("a", "1/minute")).allowed
        assert not (await limiter.ahit("a", "1/minute")).allowed
