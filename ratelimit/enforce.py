"""Rules + limiter -> what to do with a request. Adapters only translate this outcome.

Every adapter (ASGI, WSGI, gRPC, decorators) calls :meth:`Enforcer.check` or
:meth:`Enforcer.acheck` with a :class:`~ratelimit.request.RequestInfo` and renders the
:class:`Outcome`: pass on (adding ``headers``), answer 429, or answer 401.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ._charges import plan_charges, policies, split_charges
from ._decision import Decision
from ._engine import Engine
from ._rate import RateLike
from .headers import problem_body, rate_limit_headers
from .keys import AsyncKeyError, client_ip, resolve, resolve_async
from .metrics import NullMetrics
from .request import RequestInfo
from .rules import Rule, rules_from_limits
from .ruleset import Charge, RuleSet

__all__ = ["Enforcer", "MissingIdentity", "Outcome"]

MissingIdentity = Literal["ip", "anonymous", "reject"]
"""What a rule does when its key function finds no identity: count per client IP, count
all such requests as one ``anonymous`` identity, or reject them (401)."""

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
            ``"reject"`` (answer 401). A rule's own ``missing`` wins.
        headers: add RateLimit headers to allowed responses too (denials always get them).
        legacy_headers: add ``X-RateLimit-Limit/-Remaining/-Reset`` as well.
        metrics: a :class:`ratelimit.metrics.Metrics`, or None for none.
        adapter: the adapter's name in metrics.
        trusted_proxies: proxies in front of the app (an Istio waypoint, an ingress);
            the ``"ip"`` policy counts per :class:`~ratelimit.keys.client_ip` with
            that many trusted proxies, not per peer (which would be the proxy).
        config_rules: also enforce ``limiter.ruleset`` (a config file's rules, see
            :meth:`ratelimit.Limiter.from_config`), following its reloads. Its
            settings fill in the arguments left at None.

    All matching rules are decided together, all or nothing, in one round trip;
    shadow rules are decided apart (they count but never deny, and never block the
    enforcing ones from counting).
    """

    def __init__(
        self,
        limiter: Engine,
        rules: Iterable[Any] = (),
        *,
        missing_identity: MissingIdentity | None = None,
        headers: bool | None = None,
        legacy_headers: bool | None = None,
        metrics: Any = None,
        adapter: str = "custom",
        trusted_proxies: int | None = None,
        config_rules: bool = False,
    ) -> None:
        if missing_identity not in (None, "ip", "anonymous", "reject"):
            raise ValueError(
                f"missing_identity must be 'ip', 'anonymous' or 'reject', got {missing_identity!r}"
            )
        self.limiter = limiter
        self._own = tuple(rules)
        self._asked: dict[str, Any] = {
            "missing_identity": missing_identity,
            "headers": headers,
            "legacy_headers": legacy_headers,
            "trusted_proxies": trusted_proxies,
        }
        self._follows = config_rules
        self.metrics = metrics if metrics is not None else NullMetrics()
        self._counting = metrics is not None  # skip per-rule metric calls when nobody listens
        self.adapter = adapter
        self._ruleset: RuleSet | None = None
        self._apply(limiter.ruleset if config_rules else None, strict=True)

    def _apply(self, ruleset: RuleSet | None, *, strict: bool) -> None:
        """Take the rules and settings of ``ruleset`` (None: this enforcer's own only)."""
        rules = self._own + (ruleset.rules if ruleset is not None else ())
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if strict:
                raise ValueError(f"rule names must be unique, got {dupes} more than once")
            log.error("config rules %s clash with an adapter's own rules; keeping the previous rules", dupes)
            self._ruleset = ruleset
            return
        base = ruleset if ruleset is not None else RuleSet()
        asked = self._asked
        self.missing_identity: MissingIdentity = asked["missing_identity"] or base.missing_identity
        self.headers: bool = base.headers if asked["headers"] is None else asked["headers"]
        self.legacy_headers: bool = (
            base.legacy_headers if asked["legacy_headers"] is None else asked["legacy_headers"]
        )
        proxies = base.trusted_proxies if asked["trusted_proxies"] is None else asked["trusted_proxies"]
        self.ip_key = client_ip(proxies)
        self._rules = rules
        self._ruleset = ruleset

    @property
    def own_rules(self) -> tuple[Any, ...]:
        """The rules given to this enforcer (without the config file's)."""
        return self._own

    @property
    def rules(self) -> tuple[Any, ...]:
        """Every rule enforced now (the adapter's own, then the config's)."""
        if self._follows and self.limiter.ruleset is not self._ruleset:
            self._apply(self.limiter.ruleset, strict=False)
        return self._rules

    @classmethod
    def for_adapter(
        cls,
        limiter: Engine,
        adapter: str,
        rules: Iterable[Rule] = (),
        *,
        limits: Mapping[str, RateLike] | None = None,
        key: Any = None,
        trusted_proxies: int | None = None,
        **options: Any,
    ) -> Enforcer:
        """What every middleware builds: its rules, the ``limits`` shorthand and the config's rules.

        ``limits`` rules (:func:`~ratelimit.rules.rules_from_limits`) are keyed by
        ``key``, by default the client IP behind ``trusted_proxies`` proxies.
        """
        default_key = client_ip(trusted_proxies or 0) if key is None else key
        all_rules = [*rules, *rules_from_limits(limits or {}, default_key)]
        return cls(
            limiter, all_rules, adapter=adapter, trusted_proxies=trusted_proxies, config_rules=True, **options
        )

    def matching(self, request: RequestInfo, rules: Sequence[Any] | None = None) -> list[Any]:
        """The rules that apply to ``request``."""
        return [r for r in (self.rules if rules is None else rules) if r.matches(request)]

    # -- the shared steps (no I/O) -------------------------------------------------

    def _headers(self, decision: Decision, charges: Sequence[Charge], denied: bool) -> list[tuple[str, str]]:
        if not (self.headers or denied):
            return []
        names, rates = policies(charges)
        return rate_limit_headers(decision, names, rates, legacy=self.legacy_headers)

    def _outcome(
        self,
        decision: Decision | None,
        enforcing: list[Charge],
        shadow: Decision | None,
        shadows: list[Charge],
    ) -> Outcome:
        metrics, adapter = self.metrics, self.adapter
        if shadow is not None:
            for c in shadows:
                metrics.decision(c.label, "shadow" if not shadow.allowed else "allowed", adapter)
        if decision is None:
            # Only shadow rules applied: headers describe them, nothing is denied.
            if shadow is None:
                return Outcome("skip")
            hdrs = [h for h in self._headers(shadow, shadows, False) if h[0] != "Retry-After"]
            names = policies(shadows)[0]
            return Outcome("allow", headers=hdrs, decision=shadow, shadow=shadow, names=names)
        if self._counting:
            result = "fallback" if decision.fallback else ("allowed" if decision.allowed else "denied")
            for c in enforcing:
                metrics.decision(c.label, result, adapter)
                if decision.from_cache:
                    metrics.deny_cache_hit(c.label)
        names = policies(enforcing)[0]
        if decision.allowed:
            hdrs = self._headers(decision, enforcing, False)
            return Outcome("allow", headers=hdrs, decision=decision, shadow=shadow, names=names)
        hdrs = self._headers(decision, enforcing, True)
        body = problem_body(decision, names)
        return Outcome("deny", 429, hdrs, body, decision=decision, shadow=shadow, names=names)

    def _reject(self, rules: Sequence[Any]) -> Outcome:
        for rule in rules:
            self.metrics.decision(rule.name, "unauthenticated", self.adapter)
        return Outcome("reject", 401, [("WWW-Authenticate", "Bearer")], _UNAUTHENTICATED)

    # -- sync and async: the same steps, with or without await ------------------------

    def check(
        self,
        request: RequestInfo,
        rules: Sequence[Any] | None = None,
        *,
        matched: Sequence[Any] | None = None,
    ) -> Outcome:
        """Decide ``request`` from a sync adapter (``matched``: rules the caller already matched)."""
        if matched is None:
            matched = self.matching(request, rules)
        if not matched:
            return Outcome("skip")
        resolved = [[_identity_of(k, r, request) for k in r.lookups] for r in matched]
        charges = plan_charges(matched, resolved, request, self.ip_key, self.missing_identity)
        if charges is None:
            return self._reject(matched)
        items, shadow_items, enforcing, shadows = split_charges(charges)
        decision = self.limiter.hit_many(items) if items else None
        shadow = self.limiter.hit_many(shadow_items) if shadow_items else None
        return self._outcome(decision, enforcing, shadow, shadows)

    async def acheck(
        self,
        request: RequestInfo,
        rules: Sequence[Any] | None = None,
        *,
        matched: Sequence[Any] | None = None,
    ) -> Outcome:
        """Decide ``request`` from an asyncio adapter (``matched``: rules the caller already matched)."""
        if matched is None:
            matched = self.matching(request, rules)
        if not matched:
            return Outcome("skip")
        # A loop, not a nested comprehension: `await` inside one is a SyntaxError on 3.10.
        resolved: list[list[str | None]] = []
        for r in matched:
            resolved.append([await _aidentity_of(k, r, request) for k in r.lookups])
        charges = plan_charges(matched, resolved, request, self.ip_key, self.missing_identity)
        if charges is None:
            return self._reject(matched)
        items, shadow_items, enforcing, shadows = split_charges(charges)
        decision = await self.limiter.ahit_many(items) if items else None
        shadow = await self.limiter.ahit_many(shadow_items) if shadow_items else None
        return self._outcome(decision, enforcing, shadow, shadows)


def _identity_of(key: Any, rule: Rule, request: RequestInfo) -> str | None:
    """A key function's answer for ``rule``; a failing key function counts as no identity."""
    try:
        return resolve(key, request)
    except AsyncKeyError:
        raise  # a configuration error, not a request-time failure
    except Exception:
        log.exception("key function of rule %r failed; treating the identity as missing", rule.name)
        return None


async def _aidentity_of(key: Any, rule: Rule, request: RequestInfo) -> str | None:
    """Async :func:`_identity_of`."""
    try:
        return await resolve_async(key, request)
    except Exception:
        log.exception("key function of rule %r failed; treating the identity as missing", rule.name)
        return None
