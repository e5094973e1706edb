"""The Limiter: hit, peek and reset counters on a backend, sync and async."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from time import perf_counter
from types import TracebackType
from typing import Any

from ._decision import Decision
from ._denycache import DenyCache
from ._failure import FAILURE_MODES, CircuitBreaker, FailureMode
from ._keyspace import Identity, KeySpace
from ._plan import HitItem, Plan, check_cost, decide, fallback_decision, make_plan
from ._rate import RateLike, parse_rates
from .backends.base import Backend, BackendError
from .backends.memory import DEFAULT_MAX_KEYS, MemoryBackend

__all__ = ["Limiter"]

log = logging.getLogger("ratelimit")

_PLAN_CACHE_SIZE = 8192


class Limiter:
    """Sliding-window-counter rate limiting on a memory or Redis backend.

    Args:
        storage: ``"memory://"`` (default: per process), a Redis URL (``redis://``,
            ``rediss://``, ``unix://``, ``redis+cluster://``, ``redis+sentinel://``)
            or a :class:`~ratelimit.backends.base.Backend` instance.
        prefix: the first part of every counter key (default ``"rl"``).
        hash_tag: on Redis Cluster, put every counter in this one hash slot so that
            every request is atomic even across identities (default: one slot per
            identity; see docs/concepts.md).
        failure_mode: when the backend fails or exceeds ``timeout``: ``"open"``
            (allow, the default), ``"closed"`` (deny, ``Retry-After: closed_retry_after``)
            or ``"local"`` (decide on an in-process memory backend meanwhile).
            Decisions made this way have ``fallback=True``.
        timeout: the backend's budget per decision, in seconds (default 0.05).
        closed_retry_after: the retry-after of decisions denied by ``"closed"``.
        deny_cache: answer requests already denied locally until their retry-after
            (default: on for Redis, off for memory, where it gains nothing).
        clock: a ``time.time``-like function for the memory backend (tests).
        max_keys: the memory backend's cap on counters.
        coalesce: batch concurrent asyncio checks into shared Redis calls.
        metrics: a :class:`ratelimit.metrics.Metrics` to report backend latency and
            errors to (decisions per rule are reported by the adapters).

    Example::

        limiter = Limiter("redis://localhost:6379/0")
        d = limiter.hit("alice", "100/minute")
        if not d.allowed:
            print(f"retry in {d.retry_after:.1f}s")
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
        metrics: Any = None,
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
        self.metrics = metrics
        if metrics is not None and hasattr(self.backend, "metrics"):
            self.backend.metrics = metrics  # queueing vs Redis time, per script call
        # Rules from a config file (see from_config), which adapters handed this limiter enforce.
        self.ruleset: Any = None
        self.config: Any = None  # the ratelimit.config.ConfigSource that loaded them, if any

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str], *, reload: bool | float = True, **options: Any
    ) -> Limiter:
        """A limiter built from a config file (docs/configuration.md), carrying its rules.

        Hand it to any adapter (``RateLimitMiddleware(app, limiter=...)``, the WSGI
        middleware, the gRPC interceptors) and the file's rules are enforced there.

        Args:
            path: the YAML file (this project's format, or an envoyproxy/ratelimit config).
            reload: watch the file and apply valid changes without a restart, every 2 s
                (or every ``reload`` seconds); ``False`` to load once.
            options: :class:`Limiter` arguments that win over the file's ``backend``
                (``storage=``, ``prefix=``, ``clock=``...).

        Raises:
            ratelimit.config.ConfigError: the file is invalid (every error, with its line).
        """
        from .config import limiter_from_config

        limiter: Limiter = limiter_from_config(cls, path, reload=reload, options=options)
        return limiter

    def reload_config(self) -> bool:
        """Re-read the config file now: True if new rules were applied, False if unchanged or invalid."""
        if self.config is None:
            raise RuntimeError("this limiter was not built by Limiter.from_config")
        return bool(self.config.reload(self))

    def __repr__(self) -> str:
        return f"Limiter({self.backend!r}, failure_mode={self.failure_mode!r})"

    # -- planning (no I/O) ---------------------------------------------------------

    def _plan_one(self, identity: Identity, rate: RateLike, cost: int, commit: bool) -> Plan:
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

    def _finish(self, plan: Plan, raw: tuple[bool, Any, Any], breaker: CircuitBreaker) -> Decision:
        if breaker.is_open:
            breaker.success()
        decision = decide(plan, *raw)
        if not decision.allowed:
            if self.deny_cache is not None:
                self.deny_cache.put(plan, decision)
        elif plan.commit:
            decision._charge = (plan, raw[1])
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
        if self.deny_cache is not None:
            cached = self.deny_cache.get(plan)
            if cached is not None:
                return cached
        breaker = self._breaker if self._shard_of is None else self._breaker_for(self._shard_of(plan))
        if not breaker.allow():
            return self._fallback(plan, None)
        started = perf_counter() if self.metrics is not None else 0.0
        try:
            raw = self.backend.evaluate(plan)
        except BackendError as exc:
            return self._fallback(plan, exc, breaker)
        if self.metrics is not None:
            self.metrics.backend_latency(self.backend.name, perf_counter() - started)
        return self._finish(plan, raw, breaker)

    def hit(self, identity: Identity, rate: RateLike, cost: int = 1) -> Decision:
        """Count a hit of ``cost`` against ``identity``'s ``rate`` if it fits.

        ``rate`` is a :class:`Rate`, a string like ``"100/minute"``, or several
        (``"10/second;1000/hour"``), all decided together. Denied hits consume nothing.
        """
        return self._run(self._plan_one(identity, rate, cost, True))

    def hit_many(self, items: Iterable[HitItem], cost: int = 1) -> Decision:
        """Decide several limits together, all or nothing, in one round trip.

        ``items`` are ``(identity, rate)`` or ``(identity, rate, cost)``::

            limiter.hit_many([("alice", "10/second"), ("alice", "1000/hour"), ("global", "5000/minute")])
        """
        return self._run(self._plan_many(items, cost, True))

    def peek(self, identity: Identity, rate: RateLike, cost: int = 1) -> Decision:
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

    def limit(
        self,
        rates: RateLike | list[RateLike],
        key: Any = None,
        *,
        name: str | None = None,
        cost: Any = 1,
        methods: Any = (),
        shadow: bool = False,
        missing_identity: Any = "ip",
        trusted_proxies: int = 0,
    ) -> Callable[[Any], Any]:
        """Decorate an endpoint (Starlette, FastAPI, Flask, Django; sync or async) with limits.

        ``key`` is a key function from :mod:`ratelimit.keys` (default: one counter for
        every caller of the endpoint). Stacked decorators are decided together, all or
        nothing. The endpoint's signature is left alone: the request comes from the
        framework's ratelimit middleware. Denied calls get the framework's 429 response
        with RateLimit headers and a problem+json body::

            @app.get("/items")
            @limiter.limit("100/minute", key=jwt_subject(jwks_url=JWKS, issuer=ISSUER))
            async def items(): ...
        """
        from .decorators import limit

        return limit(
            self,
            rates,
            key,
            name=name,
            cost=cost,
            methods=methods,
            shadow=shadow,
            missing_identity=missing_identity,
            trusted_proxies=trusted_proxies,
        )

    def refund(self, decision: Decision) -> bool:
        """Give back what an allowed ``decision`` of this limiter charged.

        For compensating a request that another check denied later (a route decorator
        after the middleware, say), so that a denied request ends up consuming nothing.
        Best effort: returns False when there is nothing to refund (a denial, a peek,
        a fallback) or the backend failed (logged, never raised).
        """
        charge = _take_charge(decision)
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
        charge = _take_charge(decision)
        if charge is None:
            return False
        try:
            await self.backend.arefund(*charge)
        except Exception:
            log.warning("rate limit refund failed", exc_info=True)
            return False
        return True

    def close(self) -> None:
        """Release the backend's sync connections (and stop watching a config file)."""
        if self.config is not None:
            self.config.stop()
        self.backend.close()

    def __enter__(self) -> Limiter:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- async: the same steps, awaiting the backend -----------------------------------

    async def _arun(self, plan: Plan) -> Decision:
        if self.deny_cache is not None:
            cached = self.deny_cache.get(plan)
            if cached is not None:
                return cached
        breaker = self._breaker if self._shard_of is None else self._breaker_for(self._shard_of(plan))
        if not breaker.allow():
            return self._fallback(plan, None)
        started = perf_counter() if self.metrics is not None else 0.0
        try:
            raw = await self.backend.aevaluate(plan)
        except BackendError as exc:
            return self._fallback(plan, exc, breaker)
        if self.metrics is not None:
            self.metrics.backend_latency(self.backend.name, perf_counter() - started)
        return self._finish(plan, raw, breaker)

    async def ahit(self, identity: Identity, rate: RateLike, cost: int = 1) -> Decision:
        """Async :meth:`hit`."""
        return await self._arun(self._plan_one(identity, rate, cost, True))

    async def ahit_many(self, items: Iterable[HitItem], cost: int = 1) -> Decision:
        """Async :meth:`hit_many`."""
        return await self._arun(self._plan_many(items, cost, True))

    async def apeek(self, identity: Identity, rate: RateLike, cost: int = 1) -> Decision:
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
        """Release the backend's connections (async and sync; stop watching a config file)."""
        if self.config is not None:
            self.config.stop()
        await self.backend.aclose()

    async def __aenter__(self) -> Limiter:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _take_charge(decision: Decision) -> Any:
    """What ``decision`` charged, at most once (a refund must not give back twice)."""
    charge, decision._charge = decision._charge, None
    return charge


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
    scheme = storage.split("://", 1)[0].lower() if "://" in storage else ""
    if scheme == "memory":
        return MemoryBackend(max_keys=max_keys, clock=clock)
    if clock is not None:
        raise ValueError(
            "clock= applies to the memory backend only: Redis TIME is the clock of Redis backends"
        )
    if scheme in (
        "redis",
        "rediss",
        "unix",
        "redis+cluster",
        "rediss+cluster",
        "redis+sentinel",
        "rediss+sentinel",
    ):
        from .backends.redis import RedisBackend

        return RedisBackend(storage, timeout=timeout, coalesce=coalesce)
    raise ValueError(
        f"unknown storage {storage!r}: use 'memory://' or a Redis URL "
        "(redis://, rediss://, unix://, redis+cluster://, redis+sentinel://)"
    )
