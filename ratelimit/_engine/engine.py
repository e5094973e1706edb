"""The engine: hit, peek and reset counters on a backend, sync and async.

Everything a decision needs below the policy layer: plans (cached), the deny cache, a
circuit breaker per shard, the failure policy, metrics of the backend. The sync and
async paths share every step that does no I/O. :class:`ratelimit.Limiter` is this plus
what users touch on top (decorators, config files).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from time import perf_counter
from types import TracebackType
from typing import Any, TypeVar

from .._core.decision import Decision
from .._core.keyspace import Identity, KeySpace
from .._core.plan import HitItem, Plan, check_cost, decide, fallback_decision, make_plan
from .._core.rate import Rate, RateLike, parse_rates
from .._core.sinks import MetricsSink
from ..backends._schemes import BackendOptions, backend_from_url
from ..backends.base import Backend, BackendError, SyncBackend
from ..backends.memory import DEFAULT_MAX_KEYS, MemoryBackend
from ..ruleset import RuleSet
from .denycache import DenyCache
from .failure import FAILURE_MODES, CircuitBreaker, FailureMode

__all__ = ["Engine"]

log = logging.getLogger("ratelimit")

_PLAN_CACHE_SIZE = 8192
_E = TypeVar("_E", bound="Engine")


class Engine:
    """Sliding-window-counter decisions on a memory or Redis backend (see :class:`ratelimit.Limiter`).

    Takes the same arguments as :class:`ratelimit.Limiter`, which adds ``limit()`` and
    ``from_config()``; policy code (the Enforcer) needs only this.
    """

    def __init__(
        self,
        storage: str | Backend = "memory://",
        *,
        prefix: str = "rl",
        hash_tag: str | None = None,
        failure_mode: FailureMode = "open",
        timeout: float = 0.05,
        closed_retry_after: float = 1.0,
        deny_cache: bool | None = None,
        clock: Callable[[], float] | None = None,
        max_keys: int = DEFAULT_MAX_KEYS,
        coalesce: bool = True,
        metrics: MetricsSink | None = None,
    ) -> None:
        if failure_mode not in FAILURE_MODES:
            raise ValueError(f"failure_mode must be one of {FAILURE_MODES}, got {failure_mode!r}")
        self.keyspace = KeySpace(prefix, hash_tag)
        self.backend: Backend = _make_backend(storage, timeout, clock, max_keys, coalesce)
        self.failure_mode = failure_mode
        if not (isinstance(closed_retry_after, (int, float)) and 0 < closed_retry_after <= 86400):
            raise ValueError(f"closed_retry_after must be seconds in (0, 86400], got {closed_retry_after!r}")
        self.closed_retry_after = float(closed_retry_after)
        self._local = MemoryBackend(max_keys) if failure_mode == "local" else None
        self._breaker = CircuitBreaker()  # the backend's, or on a Cluster for an unknown shard
        # One breaker per server on a sharded backend (Redis Cluster): a dead master
        # sends only its own keys to the failure policy.
        self._shard_breakers: dict[str, CircuitBreaker] = {}
        self._shard_of: Callable[[Plan], str | None] | None = (
            getattr(self.backend, "shard_of", None) if getattr(self.backend, "sharded", False) else None
        )
        remote = not isinstance(self.backend, MemoryBackend)
        self.deny_cache: DenyCache | None = (
            DenyCache() if (remote if deny_cache is None else deny_cache) else None
        )
        self._plans: dict[tuple[Any, ...], Plan] = {}
        # A backend without I/O (memory) is decided inline on the asyncio path too: its
        # async twin would only call the sync method from one more coroutine.
        self._inline = type(self.backend).aevaluate is SyncBackend.aevaluate
        self.metrics = metrics
        if metrics is not None and hasattr(self.backend, "metrics"):
            self.backend.metrics = metrics  # queueing vs Redis time, per script call
        # Rules and settings (a config file's, see Limiter.from_config) that adapters handed
        # this engine enforce; swapped whole on reload.
        self.ruleset: RuleSet | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r}, failure_mode={self.failure_mode!r})"

    # -- planning (no I/O) ---------------------------------------------------------

    def _plan_one(self, identity: Identity, rate: RateLike | Sequence[Rate], cost: int, commit: bool) -> Plan:
        if cost.__class__ is not int:
            check_cost(cost)
        key = (identity, rate, cost, commit)
        try:
            return self._plans[key]
        except (KeyError, TypeError):
            return self._remember(key, make_plan(self.keyspace, ((identity, rate, cost),), commit))

    def _plan_many(self, items: Iterable[HitItem], cost: int, commit: bool) -> Plan:
        if cost.__class__ is not int:
            check_cost(cost)
        items = items if isinstance(items, (list, tuple)) else list(items)
        key = (tuple(items), cost, commit, "many")
        try:
            return self._plans[key]
        except (KeyError, TypeError):
            return self._remember(key, self._plan_many_uncached(items, cost, commit))

    def _remember(self, key: tuple[Any, ...], plan: Plan) -> Plan:
        # Plans are immutable and rates few, so repeated request shapes skip planning.
        try:
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[key] = plan
        except TypeError:  # unhashable parts (a list of rates): not cached
            pass
        return plan

    def _plan_many_uncached(self, items: Iterable[HitItem], cost: int, commit: bool) -> Plan:
        check_cost(cost)
        norm: list[tuple[Identity, RateLike, int]] = []
        for item in items:
            if not isinstance(item, tuple) or len(item) not in (2, 3):
                raise TypeError(
                    f"hit_many takes (identity, rate) or (identity, rate, cost) tuples, got {item!r}"
                )
            norm.append((item[0], item[1], item[2] if len(item) == 3 else cost))
        return make_plan(self.keyspace, norm, commit)

    def _breaker_for(self, shard: str | None) -> CircuitBreaker:
        if shard is None:
            return self._breaker
        breaker = self._shard_breakers.get(shard)
        if breaker is None:
            if len(self._shard_breakers) >= 1024:  # addresses change across failovers
                self._shard_breakers = {k: b for k, b in self._shard_breakers.items() if b.is_open}
            breaker = self._shard_breakers[shard] = CircuitBreaker()
        return breaker

    def _before(self, plan: Plan) -> tuple[Decision | None, CircuitBreaker]:
        """What comes before the backend: the deny cache, then the shard's breaker."""
        if self.deny_cache is not None:
            cached = self.deny_cache.get(plan)
            if cached is not None:
                return cached, self._breaker
        breaker = self._breaker if self._shard_of is None else self._breaker_for(self._shard_of(plan))
        if not breaker.allow():
            return self._fallback(plan, None), breaker
        return None, breaker

    def _finish(
        self, plan: Plan, raw: tuple[bool, Any, Any], breaker: CircuitBreaker, started: float
    ) -> Decision:
        if self.metrics is not None:
            self.metrics.backend_latency(self.backend.name, perf_counter() - started)
        if breaker.is_open:
            breaker.success()
        decision = decide(plan, *raw)
        if not decision.allowed and self.deny_cache is not None:
            self.deny_cache.put(plan, decision)
        return decision

    def _fallback(
        self, plan: Plan, error: BackendError | None, breaker: CircuitBreaker | None = None
    ) -> Decision:
        if error is not None:
            shard = getattr(error, "shard", None)
            if shard is not None and self._shard_of is not None:
                breaker = self._breaker_for(shard)
            (breaker or self._breaker).failure(error)
            if self.metrics is not None:
                self.metrics.backend_error(self.backend.name, _error_kind(error))
        if self._local is not None:
            return decide(plan, *self._local.evaluate(plan)).replace(fallback=True)
        if self.failure_mode == "closed":
            return fallback_decision(plan, False, self.closed_retry_after)
        return fallback_decision(plan, True, 0.0)

    def _reset_targets(self, identity: Identity, rate: RateLike | None) -> tuple[list[str], tuple[str, ...]]:
        if rate is None:
            return [], (self.keyspace.identity_prefix(identity),)
        return [self.keyspace.counter_key(identity, r.window_us) for r in parse_rates(rate)], ()

    # -- sync ----------------------------------------------------------------------

    def _run(self, plan: Plan) -> Decision:
        early, breaker = self._before(plan)
        if early is not None:
            return early
        started = perf_counter() if self.metrics is not None else 0.0
        try:
            raw = self.backend.evaluate(plan)
        except BackendError as exc:
            return self._fallback(plan, exc, breaker)
        return self._finish(plan, raw, breaker, started)

    def hit(self, identity: Identity, rate: RateLike | Sequence[Rate], cost: int = 1) -> Decision:
        """Count a hit of ``cost`` against ``identity``'s ``rate`` if it fits.

        ``rate`` is a :class:`Rate`, a string like ``"100/minute"``, or several
        (``"10/second;1000/hour"``, or a sequence of Rates), all decided together.
        Denied hits consume nothing.
        """
        return self._run(self._plan_one(identity, rate, cost, True))

    def hit_many(self, items: Iterable[HitItem], cost: int = 1) -> Decision:
        """Decide several limits together, all or nothing, in one round trip.

        ``items`` are ``(identity, rate)`` or ``(identity, rate, cost)``::

            limiter.hit_many([("alice", "10/second"), ("alice", "1000/hour"), ("global", "5000/minute")])
        """
        return self._run(self._plan_many(items, cost, True))

    def peek(self, identity: Identity, rate: RateLike | Sequence[Rate], cost: int = 1) -> Decision:
        """Would a hit of ``cost`` be allowed now? Reads without consuming."""
        return self._run(self._plan_one(identity, rate, cost, False))

    def peek_many(self, items: Iterable[HitItem], cost: int = 1) -> Decision:
        """:meth:`hit_many` without consuming."""
        return self._run(self._plan_many(items, cost, False))

    def reset(self, identity: Identity, rate: RateLike | None = None) -> int:
        """Clear ``identity``'s counter for ``rate`` (all its counters when None).

        Returns how many counters were removed; raises BackendError if the backend fails.
        """
        keys, prefixes = self._reset_targets(identity, rate)
        if self.deny_cache is not None:
            self.deny_cache.forget(set(keys), prefixes)
        return self.backend.delete(keys, prefixes)

    def refund(self, decision: Decision) -> bool:
        """Give back what an allowed ``decision`` of this limiter charged.

        For compensating a request that another check denied later (a route decorator
        after the middleware, say), so that a denied request ends up consuming nothing.
        Best effort: returns False when there is nothing to refund (a denial, a peek,
        a fallback) or the backend failed (logged, never raised).
        """
        charge = decision.receipt.take() if decision.receipt is not None else None
        if charge is None:
            return False
        try:
            self.backend.refund(*charge)
        except Exception:
            log.warning("rate limit refund failed", exc_info=True)
            return False
        return True

    async def arefund(self, decision: Decision) -> bool:
        """Async :meth:`refund`."""
        charge = decision.receipt.take() if decision.receipt is not None else None
        if charge is None:
            return False
        try:
            await self.backend.arefund(*charge)
        except Exception:
            log.warning("rate limit refund failed", exc_info=True)
            return False
        return True

    def close(self) -> None:
        """Release the backend's sync connections."""
        self.backend.close()

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- async: the same steps, awaiting the backend -----------------------------------

    async def _arun(self, plan: Plan) -> Decision:
        early, breaker = self._before(plan)
        if early is not None:
            return early
        started = perf_counter() if self.metrics is not None else 0.0
        try:
            raw = await self.backend.aevaluate(plan)
        except BackendError as exc:
            return self._fallback(plan, exc, breaker)
        return self._finish(plan, raw, breaker, started)

    async def ahit(self, identity: Identity, rate: RateLike | Sequence[Rate], cost: int = 1) -> Decision:
        """Async :meth:`hit`."""
        plan = self._plan_one(identity, rate, cost, True)
        if self._inline:
            return self._run(plan)
        return await self._arun(plan)

    async def ahit_many(self, items: Iterable[HitItem], cost: int = 1) -> Decision:
        """Async :meth:`hit_many`."""
        plan = self._plan_many(items, cost, True)
        if self._inline:
            return self._run(plan)
        return await self._arun(plan)

    async def apeek(self, identity: Identity, rate: RateLike | Sequence[Rate], cost: int = 1) -> Decision:
        """Async :meth:`peek`."""
        return await self._arun(self._plan_one(identity, rate, cost, False))

    async def apeek_many(self, items: Iterable[HitItem], cost: int = 1) -> Decision:
        """Async :meth:`peek_many`."""
        return await self._arun(self._plan_many(items, cost, False))

    async def areset(self, identity: Identity, rate: RateLike | None = None) -> int:
        """Async :meth:`reset`."""
        keys, prefixes = self._reset_targets(identity, rate)
        if self.deny_cache is not None:
            self.deny_cache.forget(set(keys), prefixes)
        return await self.backend.adelete(keys, prefixes)

    async def aclose(self) -> None:
        """Release the backend's connections (async and sync)."""
        await self.backend.aclose()

    async def __aenter__(self: _E) -> _E:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _error_kind(error: BaseException) -> str:
    if "Timeout" in type(error).__name__:
        return "timeout"
    cause = error.__cause__
    if isinstance(cause, (ConnectionError, OSError)) or "Connection" in type(cause).__name__:
        return "connection"
    return "other"


def _make_backend(
    storage: str | Backend,
    timeout: float,
    clock: Callable[[], float] | None,
    max_keys: int,
    coalesce: bool,
) -> Backend:
    if not isinstance(storage, str):
        if not isinstance(storage, Backend):
            raise TypeError(f"storage must be a URL or a Backend, got {type(storage).__name__}")
        if clock is not None:
            raise ValueError(
                "clock= applies to storage='memory://'; pass it to the backend you construct instead"
            )
        return storage
    return backend_from_url(storage, BackendOptions(timeout, coalesce, max_keys, clock))
