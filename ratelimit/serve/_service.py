"""``RateLimitService/ShouldRateLimit``: an Envoy request in, one decision, the Envoy response out.

The request's descriptors become charges of the domain's
:class:`~ratelimit.envoy.DescriptorRule` (the counters an app using the same config file
charges), every counted descriptor is decided in one ``ahit_many`` (all or nothing:
a denied request consumes no other quota), shadow ones in a second, and the
:class:`~ratelimit.Decision` is translated back: per-descriptor statuses, the overall
code and the RateLimit header fields. No decision logic lives here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._core.decision import Decision, LimitStatus
from .._core.rate import Rate
from ..envoy import UNITS, DescriptorLimit, DescriptorRule
from ..headers import rate_limit_headers
from ..limiter import Limiter
from ..ruleset import RuleSet
from ._metrics import ServiceMetrics
from ._settings import ServeSettings

__all__ = ["BadRequest", "RateLimitCore"]

log = logging.getLogger("ratelimit.serve")

MAX_UINT32 = 2**32 - 1
# The proto's unit enum values (envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit).
UNIT_ENUM = {"second": 1, "minute": 2, "hour": 3, "day": 4, "month": 5, "year": 6, "week": 7}
ENUM_UNIT = {v: k for k, v in UNIT_ENUM.items()}
_LEGACY = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


class BadRequest(ValueError):
    """The request cannot be answered (INVALID_ARGUMENT on gRPC, 400 on /json)."""


@dataclass
class _Slot:
    """One request descriptor on its way through a decision."""

    entries: list[tuple[str, str]]
    cost: int
    limit: DescriptorLimit | None = None  # the config's (or the request's override) limit
    rate: Rate | None = None
    counted: str | None = None
    shadow: bool = False
    quota: bool = False
    unlimited: bool = False
    item: int = -1  # index of its limit in the enforcing or shadow decision
    metric_key: str = ""


class _Domains:
    """The envoy domains of one rule set, by name (rebuilt when a reload swaps the rule set)."""

    def __init__(self, ruleset: RuleSet | None) -> None:
        self.ruleset = ruleset
        self.rules: dict[str, DescriptorRule] = {}
        for rule in ruleset.rules if ruleset is not None else ():
            if isinstance(rule, DescriptorRule):
                self.rules.setdefault(rule.tree.domain, rule)  # one domain's counters are shared anyway


class RateLimitCore:
    """Answers ShouldRateLimit requests from a :class:`~ratelimit.Limiter` built from a config.

    Protocol-neutral: :meth:`should_rate_limit` takes and returns the published
    ``envoy.service.ratelimit.v3`` messages; the gRPC servicer and the ``/json``
    endpoint both call it.

    Args:
        limiter: the limiter (its ``ruleset`` has the envoy domains; reloads swap it).
        settings: the server's settings (global shadow and quota mode, header options).
        metrics: per-domain and per-descriptor metrics.
    """

    def __init__(self, limiter: Limiter, settings: ServeSettings, metrics: ServiceMetrics) -> None:
        from envoy.service.ratelimit.v3 import rls_pb2  # type: ignore[import-untyped]

        self.pb = rls_pb2
        self.limiter = limiter
        self.settings = settings
        self.metrics = metrics
        self._domains = _Domains(limiter.ruleset)

    def domains(self) -> dict[str, DescriptorRule]:
        """The envoy domains in force now, by name."""
        domains = self._domains
        if domains.ruleset is not self.limiter.ruleset:
            domains = self._domains = _Domains(self.limiter.ruleset)
        return domains.rules

    async def should_rate_limit(self, request: Any) -> Any:
        """The RateLimitResponse for a RateLimitRequest.

        Raises:
            BadRequest: no domain, no descriptors, or an unusable limit override.
        """
        started = time.perf_counter()
        try:
            return await self._answer(request)
        except BadRequest:
            self.metrics.error("service_error")
            raise
        finally:
            self.metrics.response_time(time.perf_counter() - started)

    async def _answer(self, request: Any) -> Any:
        if not request.domain:
            raise BadRequest("rate limit domain must not be empty")
        if not request.descriptors:
            raise BadRequest("rate limit descriptor list must not be empty")
        rule = self.domains().get(request.domain)
        if rule is None:
            self.metrics.unknown_domain(request.domain)
        slots = [self._slot(request, i, d, rule) for i, d in enumerate(request.descriptors)]
        self._apply_replaces(slots)
        enforcing, shadows = self._items(slots)
        decision = await self._decide(enforcing)
        shadow = await self._decide(shadows)
        if (decision is not None and decision.fallback) or (shadow is not None and shadow.fallback):
            self.metrics.error("redis_error")
        return self._response(request.domain, slots, decision, shadow, enforcing, shadows)

    # -- request -> charges ------------------------------------------------------------

    def _slot(self, request: Any, index: int, descriptor: Any, rule: DescriptorRule | None) -> _Slot:
        entries = [(e.key, e.value) for e in descriptor.entries]
        if descriptor.HasField("hits_addend"):
            cost = int(descriptor.hits_addend.value)  # 0: look without counting
        else:
            cost = max(1, int(request.hits_addend))
        slot = _Slot(entries, cost)
        if rule is None:
            return slot
        if descriptor.HasField("limit"):
            return self._override(slot, index, descriptor.limit, rule)
        match = getattr(rule.tree, "match", None)  # the tree's stats key, where envoy.py gives one
        found = match(entries) if match is not None else None
        limit = found.limit if found is not None else rule.tree.lookup(entries)
        if limit is None:
            return slot
        slot.limit = limit
        slot.quota = self.settings.quota or bool(getattr(limit, "quota_mode", False))
        slot.metric_key = _key_label(rule, found.stats_key if found is not None else limit.policy)
        if limit.unlimited:
            slot.unlimited = True
            return slot
        charge = rule.charge(entries)
        if charge is None:  # pragma: no cover - lookup found a limit, so charge does too
            return slot
        slot.rate = charge.rates[0]
        slot.counted = charge.counted
        slot.shadow = charge.shadow
        return slot

    def _override(self, slot: _Slot, index: int, override: Any, rule: DescriptorRule) -> _Slot:
        """A limit the request brings along (Envoy's ``limit`` override); never shadow, as upstream."""
        unit = ENUM_UNIT.get(override.unit)
        if unit is None:
            raise BadRequest(
                f"descriptor {index}: limit override has unit {override.unit}, expected SECOND..YEAR"
            )
        count = int(override.requests_per_unit)
        rate = Rate(count, float(UNITS[unit]))
        path = ".".join(f"{k}_{v}" if v else k for k, v in slot.entries)
        slot.limit = DescriptorLimit(
            (rate,), f"{rule.tree.domain}.{path}", None, frozenset(), False, unit, count
        )
        slot.rate = rate
        found = rule.charge(slot.entries) if slot.entries else None
        # The descriptor's counter: the same one the config's limit counts on, when there is one.
        slot.counted = found.counted if found is not None else _counter(rule, slot.entries)
        slot.metric_key = path
        return slot

    @staticmethod
    def _apply_replaces(slots: list[_Slot]) -> None:
        gone = frozenset().union(*(s.limit.replaces for s in slots if s.limit is not None))
        if not gone:
            return
        for s in slots:
            if s.limit is not None and s.limit.label is not None and s.limit.label in gone:
                s.limit = s.rate = s.counted = None
                s.unlimited = s.shadow = False

    @staticmethod
    def _items(slots: list[_Slot]) -> tuple[list[list[Any]], list[list[Any]]]:
        """Limiter items ``[counted, rate, cost, policy name]``: enforcing ones, and those decided apart.

        Shadow and quota-mode descriptors are decided apart: they count, and never keep
        the enforcing ones from counting.

        Descriptors on the same counter and rate are one item whose cost is their sum,
        as the Go service increments the key once per descriptor.
        """
        groups: tuple[list[list[Any]], list[list[Any]]] = ([], [])
        index: dict[tuple[str, Rate, bool], int] = {}
        for s in slots:
            if s.counted is None or s.rate is None or s.limit is None:
                continue
            apart = s.shadow or s.quota  # never blocks the other descriptors from counting
            target = groups[1 if apart else 0]
            key = (s.counted, s.rate, apart)
            at = index.get(key)
            if at is None:
                at = index[key] = len(target)
                target.append([s.counted, s.rate, 0, s.limit.policy])
            target[at][2] += s.cost
            s.item = at
        for target in groups:
            for item in target:
                # A cost above the limit never fits: the answer (denied, nothing counted) is
                # the same with limit + 1, which keeps huge hits_addend values inside Redis's numbers.
                item[2] = min(item[2], item[1].limit + 1)
        return groups

    async def _decide(self, items: list[list[Any]]) -> Decision | None:
        if not items:
            return None
        return await self.limiter.ahit_many([(i[0], i[1], i[2]) for i in items])

    # -- decision -> response ------------------------------------------------------------

    def _response(
        self,
        domain: str,
        slots: Sequence[_Slot],
        decision: Decision | None,
        shadow: Decision | None,
        enforcing: list[list[Any]],
        shadows: list[list[Any]],
    ) -> Any:
        pb = self.pb
        response = pb.RateLimitResponse()
        over = quota_total = quota_over = 0
        for s in slots:
            status = response.statuses.add()
            if s.unlimited:
                status.code = pb.RateLimitResponse.OK
                status.limit_remaining = MAX_UINT32
                continue
            if s.limit is None or s.item < 0:
                status.code = pb.RateLimitResponse.OK
                continue
            decided = shadow if (s.shadow or s.quota) else decision
            assert decided is not None and s.rate is not None
            limit_status = decided.limits[s.item]
            exceeded = not limit_status.allowed
            _fill(status, s, limit_status, pb)
            if s.quota:
                quota_total += 1
                quota_over += exceeded
            elif exceeded and not s.shadow:
                over += 1
            if exceeded and not s.shadow:
                status.code = pb.RateLimitResponse.OVER_LIMIT
            else:
                status.code = pb.RateLimitResponse.OK
            self.metrics.descriptor(domain, s.metric_key, s.cost, limit_status, s.shadow, decided.fallback)
            self._count_decision(s, decided, exceeded)
        limited = over > 0 or (quota_total > 0 and quota_total == quota_over)
        if limited and self.settings.shadow:
            self.metrics.global_shadow()
            limited = False
        response.overall_code = pb.RateLimitResponse.OVER_LIMIT if limited else pb.RateLimitResponse.OK
        for name, value in self._headers(decision, enforcing, shadow, shadows):
            response.response_headers_to_add.add(key=name, value=value)
        return response

    def _count_decision(self, slot: _Slot, decided: Decision, exceeded: bool) -> None:
        assert slot.limit is not None
        if decided.fallback:
            result = "fallback"
        elif slot.shadow:
            result = "shadow" if exceeded else "allowed"
        else:
            result = "denied" if not decided.allowed else "allowed"
        self.metrics.decision(slot.limit.label or slot.metric_key, result)

    def _headers(
        self,
        decision: Decision | None,
        enforcing: list[list[Any]],
        shadow: Decision | None,
        shadows: list[list[Any]],
    ) -> list[tuple[str, str]]:
        ruleset = self.limiter.ruleset
        enabled = (
            self.settings.headers
            if self.settings.headers is not None
            else (ruleset.headers if ruleset is not None else True)
        )
        legacy = ruleset.legacy_headers if ruleset is not None else True
        if decision is not None:
            if not enabled and decision.allowed:
                return []
            fields = rate_limit_headers(
                decision, [i[3] for i in enforcing], [i[1] for i in enforcing], legacy=legacy
            )
        elif shadow is not None and enabled:
            fields = rate_limit_headers(
                shadow, [i[3] for i in shadows], [i[1] for i in shadows], legacy=legacy
            )
            fields = [f for f in fields if f[0] != "Retry-After"]  # shadow limits never deny
        else:
            return []
        rename = dict(zip(_LEGACY, self.settings.header_names, strict=True))
        return [(rename.get(n, n), v) for n, v in fields]


def _fill(status: Any, slot: _Slot, limit_status: LimitStatus, pb: Any) -> None:
    """current_limit, limit_remaining and duration_until_reset of one counted descriptor."""
    limit = slot.limit
    assert limit is not None
    current = status.current_limit
    current.name = limit.label or ""
    current.requests_per_unit = min(MAX_UINT32, limit.requests_per_unit or limit_status.rate.limit)
    current.unit = UNIT_ENUM.get(limit.unit or "", 0)
    status.limit_remaining = min(MAX_UINT32, max(0, limit_status.remaining))
    # A sliding window has no reset instant: a denied descriptor reports when the same
    # hit would fit again, an allowed one when its counter has decayed to zero.
    seconds = limit_status.retry_after if limit_status.retry_after > 0 else limit_status.reset_after
    if not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    status.duration_until_reset.FromNanoseconds(int(seconds * 1e9))


def _key_label(rule: DescriptorRule, key: str) -> str:
    """The metrics ``key`` label: the stats key without its domain (upstream's key1.key2...)."""
    return key.removeprefix(rule.tree.domain + ".")


def _counter(rule: DescriptorRule, entries: list[tuple[str, str]]) -> str:
    # The key DescriptorRule.charge gives a descriptor of this domain (envoy.py keys them so).
    return f"envoy:{rule.tree.domain}/" + "/".join(f"{k}={v}" for k, v in entries)
