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
from collections.abc import Mapping, Sequence
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
MAX_DESCRIPTORS = 256  # per request; Envoy sends one per rate_limits entry of a route, a handful
# The proto's unit enum values (envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit).
UNIT_ENUM = {"second": 1, "minute": 2, "hour": 3, "day": 4, "month": 5, "year": 6, "week": 7}
ENUM_UNIT = {v: k for k, v in UNIT_ENUM.items()}
_LEGACY = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


class BadRequest(ValueError):
    """The request cannot be answered (INVALID_ARGUMENT on gRPC, 400 on /json)."""


class _Slot:
    """One request descriptor on its way through a decision."""

    __slots__ = (
        "cost",
        "counted",
        "entries",
        "item",
        "limit",
        "metric",
        "metric_key",
        "quota",
        "rate",
        "shadow",
        "unlimited",
    )

    def __init__(self, entries: Sequence[tuple[str, str]], cost: int) -> None:
        self.entries = entries
        self.cost = cost
        self.limit: DescriptorLimit | None = None  # the config's (or the request's override) limit
        self.rate: Rate | None = None
        self.counted: str | None = None
        self.shadow = False
        self.quota = False
        self.unlimited = False
        self.item = -1  # index of its limit in the enforcing or shadow decision
        self.metric_key = ""
        self.metric: Any = None  # the per-key metric series (ServiceMetrics.series)


@dataclass(frozen=True, slots=True)
class _Resolved:
    """What a request descriptor resolves to in one domain: the same for every request that sends it."""

    limit: DescriptorLimit
    quota: bool
    metric_key: str
    metric: Any
    unlimited: bool
    rate: Rate | None
    counted: str | None
    shadow: bool

    def slot(self, entries: Sequence[tuple[str, str]], cost: int) -> _Slot:
        s = _Slot(entries, cost)
        s.limit, s.quota, s.metric_key, s.metric = self.limit, self.quota, self.metric_key, self.metric
        s.unlimited, s.rate, s.counted, s.shadow = self.unlimited, self.rate, self.counted, self.shadow
        return s


_CACHE_SIZE = 16384  # distinct descriptors remembered per rule set (then the memo starts over)


class _Domains:
    """The envoy domains of one rule set, by name (rebuilt when a reload swaps the rule set).

    ``resolved`` remembers what each distinct (domain, descriptor) resolved to: the tree
    walk, the counter key and the metric series are worked out once per descriptor, not
    per call. A reload builds a new ``_Domains``, so nothing outlives the rules it came from.
    """

    def __init__(self, ruleset: RuleSet | None) -> None:
        self.ruleset = ruleset
        self.rules: dict[str, DescriptorRule] = {}
        self.resolved: dict[tuple[str, tuple[tuple[str, str], ...]], _Resolved | None] = {}
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
        # LIMIT_*_HEADER names for the X-RateLimit-* fields; None: the fields keep their names.
        rename = dict(zip(_LEGACY, settings.header_names, strict=True))
        self._rename = None if all(k == v for k, v in rename.items()) else rename

    def domains(self) -> dict[str, DescriptorRule]:
        """The envoy domains in force now, by name."""
        return self._current().rules

    def _current(self) -> _Domains:
        domains = self._domains
        if domains.ruleset is not self.limiter.ruleset:
            domains = self._domains = _Domains(self.limiter.ruleset)
        return domains

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
        if len(request.descriptors) > MAX_DESCRIPTORS:
            # One script call decides them all: a request of thousands would hold Redis past
            # the budget and open the breaker for every other caller.
            raise BadRequest(
                f"{len(request.descriptors)} descriptors in one request; at most {MAX_DESCRIPTORS}"
            )
        domains = self._current()
        rule = domains.rules.get(request.domain)
        if rule is None:
            self.metrics.unknown_domain(request.domain)
        hits = max(1, int(request.hits_addend))
        slots = [self._slot(domains, hits, i, d, rule) for i, d in enumerate(request.descriptors)]
        self._apply_replaces(slots)
        enforcing, shadows = self._items(slots)
        decision = await self._decide(enforcing)
        shadow = await self._decide(shadows)
        if (decision is not None and decision.fallback) or (shadow is not None and shadow.fallback):
            self.metrics.error("redis_error")
        return self._response(request, slots, decision, shadow, enforcing, shadows)

    # -- request -> charges ------------------------------------------------------------

    def _slot(
        self, domains: _Domains, hits: int, index: int, descriptor: Any, rule: DescriptorRule | None
    ) -> _Slot:
        entries = tuple([(e.key, e.value) for e in descriptor.entries])
        # A descriptor's own hits_addend wins (0: look without counting), else the request's.
        cost = int(descriptor.hits_addend.value) if descriptor.HasField("hits_addend") else hits
        if rule is None:
            return _Slot(entries, cost)
        if descriptor.HasField("limit"):
            return self._override(_Slot(entries, cost), index, descriptor.limit, rule)
        memo = domains.resolved
        key = (rule.tree.domain, entries)
        try:
            resolved = memo[key]
        except KeyError:
            if len(memo) >= _CACHE_SIZE:
                memo.clear()
            resolved = memo[key] = self._resolve(rule, entries)
        return _Slot(entries, cost) if resolved is None else resolved.slot(entries, cost)

    def _resolve(self, rule: DescriptorRule, entries: tuple[tuple[str, str], ...]) -> _Resolved | None:
        """What ``entries`` resolve to in ``rule``'s domain (None: no limit applies)."""
        found = rule.tree.match(entries)
        if found is None:
            return None
        limit = found.limit
        quota = self.settings.quota or limit.quota_mode
        metric_key = _key_label(rule, found.stats_key)
        metric = self.metrics.series(rule.tree.domain, metric_key)
        if limit.unlimited:
            return _Resolved(limit, quota, metric_key, metric, True, None, None, False)
        charge = rule.charge_of(found)
        return _Resolved(
            limit, quota, metric_key, metric, False, charge.rates[0], charge.counted, charge.shadow
        )

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
        slot.counted = found.counted if found is not None else rule.counter(slot.entries)
        slot.metric_key = path
        slot.metric = self.metrics.series(rule.tree.domain, path)
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
        request: Any,
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
            self.metrics.descriptor(s.metric, s.cost, limit_status, s.shadow, decided.fallback)
            self._count_decision(s, decided, exceeded)
        limited = over > 0 or (quota_total > 0 and quota_total == quota_over)
        if limited and self.settings.shadow:
            self.metrics.global_shadow()
            limited = False
        response.overall_code = pb.RateLimitResponse.OVER_LIMIT if limited else pb.RateLimitResponse.OK
        if self.settings.dynamic_metadata:
            passed = [s.limit for s, st in zip(slots, response.statuses, strict=True) if _passed(s, st, pb)]
            response.dynamic_metadata.update(_dynamic_metadata(request, passed))
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
        rename = self._rename
        return fields if rename is None else [(rename.get(n, n), v) for n, v in fields]


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


def _passed(slot: _Slot, status: Any, pb: Any) -> bool:
    """A descriptor the request passed, with a limit (upstream's "passed"; unlimited ones are not)."""
    return slot.limit is not None and not slot.unlimited and status.code != pb.RateLimitResponse.OVER_LIMIT


def _dynamic_metadata(request: Any, passed: Sequence[DescriptorLimit | None]) -> dict[str, Any]:
    """The response's ``dynamic_metadata``, as the Go service writes it with RESPONSE_DYNAMIC_METADATA.

    ``domain``; ``descriptors`` (each its ``entries`` as ``key=value``, its ``limit``
    override and ``hitsAddend`` when given); the request's ``hitsAddend`` when not 0;
    ``metadata``: the ``metadata`` of every limit the request passed, merged (nested
    mappings merged, the first value of any other key kept).
    """
    from google.protobuf import text_format  # type: ignore[import-untyped]

    descriptors = []
    for d in request.descriptors:
        item: dict[str, Any] = {"entries": [f"{e.key}={e.value}" for e in d.entries]}
        if d.HasField("limit"):
            item["limit"] = text_format.MessageToString(d.limit, as_one_line=True)
        if d.HasField("hits_addend"):
            item["hitsAddend"] = d.hits_addend.value
        descriptors.append(item)
    out: dict[str, Any] = {"domain": request.domain, "descriptors": descriptors}
    if request.hits_addend:
        out["hitsAddend"] = request.hits_addend
    merged: dict[str, Any] = {}
    for limit in passed:
        if limit is not None and limit.metadata:
            _merge(merged, limit.metadata)
    if merged:
        out["metadata"] = merged
    return out


def _merge(dest: dict[str, Any], src: Mapping[str, Any]) -> None:
    """Upstream's mergeMetadata: nested mappings merge; otherwise the value already there stays."""
    for key, value in src.items():
        if key not in dest:
            dest[key] = _plain(value)
        elif isinstance(dest[key], dict) and isinstance(value, Mapping):
            _merge(dest[key], value)


def _plain(value: Any) -> Any:
    """A copy of a metadata value as plain dicts and lists (what a protobuf Struct takes)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
