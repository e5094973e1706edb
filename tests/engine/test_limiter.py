"""The Limiter on the memory backend, and its failure policy and deny cache on fake backends."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from support.flaky import FlakyBackend

from ratelimit import BackendError, Decision, Limiter
from ratelimit._engine.denycache import DenyCache
from ratelimit._engine.failure import CircuitBreaker
from ratelimit.backends.base import Backend
from ratelimit.backends.memory import MemoryBackend
from ratelimit.testing import FakeClock


def test_hit_api_and_truthiness() -> None:
    """hit returns a truthy Decision while allowed and a falsy one when denied."""
    limiter = Limiter(clock=FakeClock())
    first = limiter.hit("alice", "2/minute")
    assert first and first.allowed and not first.denied
    assert (first.limit, first.remaining, first.retry_after) == (2, 1, 0.0)
    assert limiter.hit("alice", "2/minute")
    third = limiter.hit("alice", "2/minute")
    assert not third and third.retry_after > 0 and not third.fallback


async def test_async_twins_share_state_with_sync() -> None:
    """ahit, apeek, ahit_many and areset see the same counters as the sync methods."""
    limiter = Limiter(clock=FakeClock())
    assert (await limiter.ahit("a", "3/minute", cost=2)).remaining == 1
    assert limiter.peek("a", "3/minute").remaining == 1
    assert (await limiter.apeek("a", "3/minute", cost=2)).allowed is False
    assert (await limiter.ahit_many([("a", "3/minute"), ("b", "1/minute")])).allowed
    assert (await limiter.apeek_many([("b", "1/minute")])).allowed is False
    assert await limiter.areset("a") == 1
    assert (await limiter.ahit("a", "3/minute")).remaining == 2
    async with limiter:
        pass


def test_memory_threads_admit_exactly_n() -> None:
    """Sixteen threads hammering one key on the memory backend admit exactly N."""
    limiter = Limiter()
    admitted = []

    def worker() -> None:
        admitted.append(sum(limiter.hit("hot", "500/day").allowed for _ in range(200)))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 500


async def test_memory_tasks_admit_exactly_n() -> None:
    """Thousands of concurrent tasks on one event loop admit exactly N."""
    limiter = Limiter()
    results = await asyncio.gather(*(limiter.ahit("hot", "300/day") for _ in range(2000)))
    assert sum(d.allowed for d in results) == 300


@pytest.mark.slow
def test_a_million_subjects_stay_under_the_cap() -> None:
    """A flood of one million distinct subjects grows neither the store nor any cache past its cap."""
    from ratelimit._core.keyspace import _tag_of_str
    from ratelimit._engine.engine import _PLAN_CACHE_SIZE

    limiter = Limiter(max_keys=10_000)
    backend = limiter.backend
    assert isinstance(backend, MemoryBackend)
    for i in range(1_000_000):
        limiter.hit(f"user-{i}", "5/minute")
    assert len(backend) == 10_000
    assert backend.evictions == 1_000_000 - 10_000
    assert len(limiter._plans) <= _PLAN_CACHE_SIZE
    assert _tag_of_str.cache_info().currsize <= 16_384
    # The newest subjects are still limited: eviction only dropped the oldest.
    assert limiter.hit("user-999999", "5/minute").remaining == 3


def test_expired_counters_are_evicted_first() -> None:
    """When full, counters that can no longer matter go before live ones."""
    clock = FakeClock()
    limiter = Limiter(max_keys=3, clock=clock)
    for name in ("a", "b"):
        limiter.hit(name, "1/second")
    clock.advance(5)  # a and b are now irrelevant
    limiter.hit("c", "1/minute")
    limiter.hit("d", "1/minute")
    limiter.hit("e", "1/minute")
    assert isinstance(limiter.backend, MemoryBackend)
    assert limiter.backend.evictions == 0
    assert limiter.hit("c", "1/minute").allowed is False  # c survived


def test_flaky_backend_is_a_backend() -> None:
    """The Backend protocol is checkable at runtime."""
    assert isinstance(FlakyBackend(), Backend)
    with pytest.raises(TypeError):
        Limiter(object())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "allowed", "remaining"), [("open", True, 5), ("closed", False, 0), ("local", True, 4)]
)
async def test_failure_modes(mode: Any, allowed: bool, remaining: int) -> None:
    """open allows, closed denies, local decides in process; all say fallback=True."""
    backend = FlakyBackend()
    backend.broken = True
    limiter = Limiter(backend, failure_mode=mode, closed_retry_after=2.0)
    for d in (limiter.hit("a", "5/minute"), await limiter.ahit("a", "5/minute")):
        assert d.fallback and d.allowed is allowed
        if mode != "local":
            assert d.remaining == remaining
        if mode == "closed":
            assert d.retry_after == 2.0


def test_local_failure_mode_still_limits() -> None:
    """In local mode an outage keeps limiting per process instead of letting all through."""
    backend = FlakyBackend()
    backend.broken = True
    limiter = Limiter(backend, failure_mode="local")
    answers = [limiter.hit("a", "3/minute").allowed for _ in range(5)]
    assert answers == [True, True, True, False, False]


def test_bad_failure_mode() -> None:
    """An unknown failure mode is refused at construction."""
    with pytest.raises(ValueError, match="failure_mode"):
        Limiter(failure_mode="maybe")  # type: ignore[arg-type]


def test_breaker_skips_the_backend_while_open_then_probes() -> None:
    """After a failure, hits fall back without calling the backend until the pause ends."""
    now = [100.0]
    breaker = CircuitBreaker(base=1.0, cap=4.0, clock=lambda: now[0])
    assert breaker.allow()
    breaker.failure(BackendError("x"))
    assert not breaker.allow() and breaker.is_open
    now[0] += 1.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # others wait for it
    breaker.failure(BackendError("x"))  # probe failed: pause doubles
    now[0] += 1.5
    assert not breaker.allow()
    now[0] += 0.6
    assert breaker.allow()
    breaker.success()
    assert breaker.allow() and breaker.allow() and not breaker.is_open


def test_limiter_recovers_when_backend_returns() -> None:
    """Once the backend answers again, decisions stop being fallbacks."""
    backend = FlakyBackend()
    limiter = Limiter(backend)
    limiter._breaker = CircuitBreaker(base=0.0, cap=0.0)
    backend.broken = True
    assert limiter.hit("a", "5/minute").fallback
    backend.broken = False
    d = limiter.hit("a", "5/minute")
    assert not d.fallback and d.remaining == 4


def test_deny_cache_answers_hot_denials_locally() -> None:
    """A denied request shape is answered without the backend until its retry-after."""
    backend = FlakyBackend()
    limiter = Limiter(backend, deny_cache=True)
    assert limiter.hit("a", "1/minute").allowed
    first_denial = limiter.hit("a", "1/minute")
    calls = backend.calls
    again = [limiter.hit("a", "1/minute") for _ in range(50)]
    assert backend.calls == calls
    assert all(not d.allowed and 0 < d.retry_after <= first_denial.retry_after for d in again)
    assert limiter.deny_cache is not None and limiter.deny_cache.hits == 50
    # Other shapes still ask the backend; a reset forgets the denial.
    assert limiter.hit("b", "1/minute").allowed
    limiter.reset("a")
    assert limiter.hit("a", "1/minute").allowed


def test_deny_cache_expires_and_is_bounded() -> None:
    """Entries expire at retry-after, never grow past the cap, and ignore fallbacks."""
    now = [0.0]
    cache = DenyCache(max_entries=2, clock=lambda: now[0])
    limiter = Limiter(clock=FakeClock())
    plans = [limiter._plan_one(f"u{i}", "1/minute", 1, True) for i in range(3)]
    denial = Decision(False, 1, 0, 60.0, 10.0)
    for plan in plans:
        cache.put(plan, denial)
    assert len(cache) == 2
    cached = cache.get(plans[2])
    assert cached is not None and cached.retry_after == 10.0
    now[0] = 4.0
    cached = cache.get(plans[2])
    assert cached is not None and cached.retry_after == pytest.approx(6.0)
    now[0] = 10.0
    assert cache.get(plans[2]) is None
    cache.put(plans[0], Decision(False, 1, 0, 1.0, 1.0, fallback=True))
    assert cache.get(plans[0]) is None


def test_clock_only_for_memory() -> None:
    """A clock cannot be injected into a Redis backend: Redis TIME is authoritative."""
    with pytest.raises(ValueError, match="clock"):
        Limiter("redis://localhost:1/0", clock=FakeClock())


def test_deny_cache_survives_threads() -> None:
    """Concurrent puts, gets and sweeps from many threads never raise."""
    cache = DenyCache(max_entries=50)
    limiter = Limiter(clock=FakeClock())
    plans = [limiter._plan_one(f"u{i}", "1/minute", 1, True) for i in range(400)]
    denial = Decision(False, 1, 0, 60.0, 30.0)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for n in range(3000):
                plan = plans[(offset + n) % len(plans)]
                cache.put(plan, denial)
                cache.get(plan)
                if n % 500 == 0:
                    cache.forget({plan.keys[0]})
        except BaseException as exc:  # collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i * 37,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(cache) <= 50


@pytest.mark.parametrize("value", [0, -1, "1", float("nan")])
def test_bad_closed_retry_after(value: object) -> None:
    """closed_retry_after must be a positive number of seconds."""
    with pytest.raises(ValueError, match="closed_retry_after"):
        Limiter(closed_retry_after=value)  # type: ignore[arg-type]


def test_storage_schemes_come_from_a_registry() -> None:
    """A backend registered for a scheme serves Limiter(URL); unknown schemes name the known ones."""
    from ratelimit.backends import BackendOptions, MemoryBackend, register_scheme

    made: list[tuple[str, BackendOptions]] = []

    def factory(url: str, options: BackendOptions) -> MemoryBackend:
        made.append((url, options))
        return MemoryBackend(max_keys=options.max_keys)

    register_scheme(factory, "test-only")
    limiter = Limiter("test-only://anything", max_keys=123)
    assert made == [("test-only://anything", BackendOptions(0.05, True, 123, None))]
    assert limiter.hit("a", "1/minute").allowed
    with pytest.raises(ValueError, match="redis://"):
        Limiter("nosuch://x")
