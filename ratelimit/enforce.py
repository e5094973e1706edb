"""Rules + limiter -> what to do with a request. Adapters only translate this outcome.

Every adapter (ASGI, WSGI, gRPC, decorators) calls :meth:`Enforcer.check` or
:meth:`Enforcer.acheck` with a :class:`~ratelimit.request.RequestInfo` and renders the
:class:`Outcome`: pass on (adding ``headers``), answer 429, or answer 401.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from ._decision import Decision
from ._rate import Rate, RateLike
from .headers import problem_body, rate_limit_headers
from .keys import AsyncKeyError, client_ip, resolve, resolve_async
from .limiter import Limiter
from .metrics import NullMetrics
from .request import RequestInfo
from .rules import Rule, rules_from_limits

__all__ = ["Enforcer", "MissingIdentity", "Outcome"]

MissingIdentity = Literal["ip", "anonymous", "reject"]
log = logging.getLogger("ratelimit")

_UNAUTHENTICATED = (
    b'{"type":"about:blank","title":"Unauthorized","status":401,'
    b'"detail":"This endpoint is rate limited per identity and the request carries none."}'
)


@dataclass(slots=True)
class Outcome:
    """What to do with a request.

    ``action`` is ``"allow"`` (pass on, adding ``headers``), ``"deny"`` (answer
    ``status`` 429 with ``headers`` and ``body``), ``"reject"`` (401: no identity and
    the policy says so) or ``"skip"`` (no rule applied).
    """

    action: Literal["allow", "deny", "reject", "skip"]
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    content_type: str = "application/problem+json"
    decision: Decision | None = None
    shadow: Decision | None = None
    names: tuple[str, ...] = ()

    @property
    def retry_after(self) -> float:
        """Seconds until the request could succeed (0 unless denied)."""
        return self.decision.retry_after if self.decision is not None and self.action == "deny" else 0.0


class Enforcer:
    """Applies rules to requests with one limiter; shared by every adapter.

    Args:
        limiter: decides.
        rules: the rules to enforce (each request is checked against those it matches).
        missing_identity: when a key function finds no identity: ``"ip"`` (count per
            peer address, the default), ``"anonymous"`` (one shared bucket) or
            ``"reject"`` (answer 401).
        headers: add RateLimit headers to allowed responses too (denials always get them).
        legacy_headers: add ``X-RateLimit-Limit/-Remaining/-Reset`` as well.
        metrics: a :class:`ratelimit.metrics.Metrics`, or None for none.
        adapter: the adapter's name in metrics.
        trusted_proxies: proxies in front of the app (an Istio waypoint, an ingress);
            the ``"ip"`` policy counts per :class:`~ratelimit.keys.client_ip` with
            that many trusted proxies, not per peer (which would be the proxy).

    All matching rules are decided together, all or nothing, in one round trip;
    shadow rules are decided apart (they count but never deny, and never block the
    enforcing ones from counting).
    """

    def __init__(
        self,
        limiter: Limiter,
        rules: Iterable[Rule] = (),
        *,
        missing_identity: MissingIdentity = "ip",
        headers: bool = True,
        legacy_headers: bool = True,
        metrics: Any = None,
        adapter: str = "custom",
        trusted_proxies: int = 0,
    ) -> None:
        if missing_identity not in ("ip", "anonymous", "reject"):
            raise ValueError(
                f"missing_identity must be 'ip', 'anonymous' or 'reject', got {missing_identity!r}"
            )
        self.limiter = limiter
        self.rules = tuple(rules)
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique, got {names}")
        self.missing_identity = missing_identity
        self.headers = headers
        self.legacy_headers = legacy_headers
        self.metrics = metrics if metrics is not None else NullMetrics()
        self._counting = metrics is not None  # skip per-rule metric calls when nobody listens
        self.adapter = adapter
        self.ip_key = client_ip(trusted_proxies)

    @classmethod
    def for_adapter(
        cls,
        limiter: Limiter,
        adapter: str,
        rules: Iterable[Rule] = (),
        *,
        limits: Mapping[str, RateLike] | None = None,
        key: Any = None,
        trusted_proxies: int = 0,
        **options: Any,
    ) -> Enforcer:
        """What every middleware builds: its rules plus the ``limits`` shorthand.

        ``limits`` rules (:func:`~ratelimit.rules.rules_from_limits`) are keyed by
        ``key``, by default the client IP behind ``trusted_proxies`` proxies.
        """
        default_key = client_ip(trusted_proxies) if key is None else key
        all_rules = [*rules, *rules_from_limits(limits or {}, default_key)]
        return cls(limiter, all_rules, adapter=adapter, trusted_proxies=trusted_proxies, **options)

    def matching(self, request: RequestInfo, rules: Sequence[Rule] | None = None) -> list[Rule]:
        """The rules that apply to ``request``."""
        return [r for r in (self.rules if rules is None else rules) if r.matches(request)]

    # -- the shared steps (no I/O) -------------------------------------------------

    def _identity(self, rule: Rule, identity: str | None, request: RequestInfo) -> str | None:
        if identity is not None:
            return identity
        if self.missing_identity == "ip":
            ip = self.ip_key(request)
            return f"ip:{ip}" if ip else "anonymous"
        if self.missing_identity == "anonymous":
            return "anonymous"
        return None

    def _items(
        self, rules: Sequence[Rule], identities: Sequence[str | None], request: RequestInfo
    ) -> tuple[list[tuple[str, Any, int]], list[tuple[str, Any, int]], list[Rule], list[Rule]] | None:
        items: list[tuple[str, Any, int]] = []
        shadow_items: list[tuple[str, Any, int]] = []
        enforcing: list[Rule] = []
        shadows: list[Rule] = []
        for rule, raw in zip(rules, identities, strict=True):
            identity = self._identity(rule, raw, request)
            if identity is None:
                return None
            try:
                cost = rule.cost_of(request)
            except Exception:
                log.exception("cost function of rule %r failed; charging 1", rule.name)
                cost = 1
            target, group = (shadow_items, shadows) if rule.shadow else (items, enforcing)
            # Rule names cannot contain "/", so the first "/" separates them unambiguously.
            counted = f"{rule.name}/{identity}"
            for rate in rule.rates:
                target.append((counted, rate, cost))
            group.append(rule)
        return items, shadow_items, enforcing, shadows

    def _headers(self, decision: Decision, rules: Sequence[Rule], denied: bool) -> list[tuple[str, str]]:
        if not (self.headers or denied):
            return []
        names, rates = _policies(tuple(rules))
        return rate_limit_headers(decision, names, rates, legacy=self.legacy_headers)

    def _outcome(
        self, decision: Decision | None, enforcing: list[Rule], shadow: Decision | None, shadows: list[Rule]
    ) -> Outcome:
        metrics, adapter = self.metrics, self.adapter
        if shadow is not None:
            for rule in shadows:
                metrics.decision(rule.name, "shadow" if not shadow.allowed else "allowed", adapter)
        if decision is None:
            # Only shadow rules applied: headers describe them, nothing is denied.
            if shadow is None:
                return Outcome("skip")
            hdrs = [h for h in self._headers(shadow, shadows, False) if h[0] != "Retry-After"]
            names = _policies(tuple(shadows))[0]
            return Outcome("allow", headers=hdrs, decision=shadow, shadow=shadow, names=names)
        if self._counting:
            result = "fallback" if decision.fallback else ("allowed" if decision.allowed else "denied")
            for rule in enforcing:
                metrics.decision(rule.name, result, adapter)
                if decision.from_cache:
                    metrics.deny_cache_hit(rule.name)
        names = _policies(tuple(enforcing))[0]
        if decision.allowed:
            hdrs = self._headers(decision, enforcing, False)
            return Outcome("allow", headers=hdrs, decision=decision, shadow=shadow, names=names)
        hdrs = self._headers(decision, enforcing, True)
        body = problem_body(decision, names)
        return Outcome("deny", 429, hdrs, body, decision=decision, shadow=shadow, names=names)

    def _reject(self, rules: Sequence[Rule]) -> Outcome:
        for rule in rules:
            self.metrics.decision(rule.name, "unauthenticated", self.adapter)
        return Outcome("reject", 401, [("WWW-Authenticate", "Bearer")], _UNAUTHENTICATED)

    # -- sync and async: the same steps, with or without await ------------------------

    def check(
        self,
        request: RequestInfo,
        rules: Sequence[Rule] | None = None,
        *,
        matched: Sequence[Rule] | None = None,
    ) -> Outcome:
        """Decide ``request`` from a sync adapter (``matched``: rules the caller already matched)."""
        if matched is None:
            matched = self.matching(request, rules)
        if not matched:
            return Outcome("skip")
        planned = self._items(matched, [_identity_of(r, request) for r in matched], request)
        if planned is None:
            return self._reject(matched)
        items, shadow_items, enforcing, shadows = planned
        decision = self.limiter.hit_many(items) if items else None
        shadow = self.limiter.hit_many(shadow_items) if shadow_items else None
        return self._outcome(decision, enforcing, shadow, shadows)

    async def acheck(
        self,
        request: RequestInfo,
        rules: Sequence[Rule] | None = None,
        *,
        matched: Sequence[Rule] | None = None,
    ) -> Outcome:
        """Decide ``request`` from an asyncio adapter (``matched``: rules the caller already matched)."""
        if matched is None:
            matched = self.matching(request, rules)
        if not matched:
            return Outcome("skip")
        planned = self._items(matched, [await _aidentity_of(r, request) for r in matched], request)
        if planned is None:
            return self._reject(matched)
        items, shadow_items, enforcing, shadows = planned
        decision = await self.limiter.ahit_many(items) if items else None
        shadow = await self.limiter.ahit_many(shadow_items) if shadow_items else None
        return self._outcome(decision, enforcing, shadow, shadows)


def _identity_of(rule: Rule, request: RequestInfo) -> str | None:
    """The rule's key function's answer; a failing key function counts as no identity."""
    try:
        return resolve(rule.key, request)
    except AsyncKeyError:
        raise  # a configuration error, not a request-time failure
    except Exception:
        log.exception("key function of rule %r failed; treating the identity as missing", rule.name)
        return None


async def _aidentity_of(rule: Rule, request: RequestInfo) -> str | None:
    """Async :func:`_identity_of`."""
    try:
        return await resolve_async(rule.key, request)
    except Exception:
        log.exception("key function of rule %r failed; treating the identity as missing", rule.name)
        return None


@lru_cache(maxsize=1024)
def _policies(rules: tuple[Rule, ...]) -> tuple[tuple[str, ...], tuple[Rate, ...]]:
    """Policy names and rates of a group of rules, one per limit (fixed per rule set)."""
    names: list[str] = []
    rates: list[Rate] = []
    for rule in rules:
        names += rule.policy_names
        rates += rule.rates
    return tuple(names), tuple(rates)
