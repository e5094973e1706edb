"""Rules + limiter -> what to do with a request. Adapters only translate this outcome.

Every adapter (ASGI, WSGI, gRPC, decorators) calls :meth:`Enforcer.check` or
:meth:`Enforcer.acheck` with a :class:`~ratelimit.request.RequestInfo` and renders the
:class:`Outcome`: pass on (adding ``headers``), answer 429, or answer 401.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._core.decision import Decision
from ._core.sinks import MetricsSink
from ._engine.engine import Engine
from ._policy.charges import plan_charges, policies, split_charges
from ._policy.compiled import CompiledRules, RulePlan
from .headers import encode_fields, problem_body, rate_limit_headers
from .keys import AsyncKeyError, client_ip, resolve, resolve_async
from .metrics import NullMetrics
from .request import KeyFunc, RequestInfo
from .rules import Rule, rules_from_limits
from .ruleset import Charge, RuleSet

__all__ = ["Enforcer", "MissingIdentity", "Outcome", "Snapshot"]

MissingIdentity = Literal["ip", "anonymous", "reject"]
"""What a rule does when its key function finds no identity: count per client IP, count
all such requests as one ``anonymous`` identity, or reject them (401)."""

log = logging.getLogger("ratelimit")

_UNAUTHENTICATED = (
    b'{"type":"about:blank","title":"Unauthorized","status":401,'
    b'"detail":"This endpoint is rate limited per identity and the request carries none."}'
)


class Outcome:
    """What to do with a request.

    ``action`` is ``"allow"`` (pass on, adding ``headers``), ``"deny"`` (answer
    ``status`` 429 with ``headers`` and ``body``), ``"reject"`` (401: no identity and
    the policy says so) or ``"skip"`` (no rule applied).

    ``headers`` are text pairs; :attr:`raw_headers` are the same fields as the
    lower-case latin-1 bytes ASGI servers send. A compiled rule's outcome renders
    whichever an adapter asks for, straight from the decision's numbers.
    """

    __slots__ = (
        "_headers",
        "_plan",
        "action",
        "body",
        "content_type",
        "decision",
        "names",
        "shadow",
        "status",
    )

    def __init__(
        self,
        action: Literal["allow", "deny", "reject", "skip"],
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        content_type: str = "application/problem+json",
        decision: Decision | None = None,
        shadow: Decision | None = None,
        names: tuple[str, ...] = (),
    ) -> None:
        self.action = action
        self.status = status
        self._headers = [] if headers is None else headers
        self._plan: RulePlan | None = None  # set: the fields are rendered from decision on demand
        self.body = body
        self.content_type = content_type
        self.decision = decision
        self.shadow = shadow
        self.names = names

    @classmethod
    def _rendered(
        cls,
        action: Literal["allow", "deny"],
        status: int,
        body: bytes,
        decision: Decision,
        plan: RulePlan,
        fields: bool,
    ) -> Outcome:
        """A compiled rule's outcome: its fields (if ``fields``) rendered from ``decision`` on demand."""
        out = cls(action, status, None, body, "application/problem+json", decision, None, plan.names)
        if fields:
            out._plan = plan
        return out

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The header fields to add to the response, as text."""
        plan = self._plan
        if plan is not None:
            self._plan = None
            assert self.decision is not None
            self._headers = plan.render(self.decision)
        return self._headers

    @headers.setter
    def headers(self, value: list[tuple[str, str]]) -> None:
        self._plan = None
        self._headers = value

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """:attr:`headers` as ASGI's ``(bytes, bytes)`` pairs, lower-case names."""
        plan = self._plan
        if plan is not None:
            assert self.decision is not None
            return plan.render_raw(self.decision)
        return encode_fields(self._headers) if self._headers else []

    @property
    def retry_after(self) -> float:
        """Seconds until the request could succeed (0 unless denied)."""
        return self.decision.retry_after if self.decision is not None and self.action == "deny" else 0.0

    def _key(self) -> tuple[Any, ...]:
        return (
            self.action,
            self.status,
            self.headers,
            self.body,
            self.content_type,
            self.decision,
            self.shadow,
            self.names,
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Outcome:
            return NotImplemented
        assert isinstance(other, Outcome)
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __repr__(self) -> str:
        return (
            f"Outcome(action={self.action!r}, status={self.status!r}, headers={self.headers!r}, "
            f"body={self.body!r}, content_type={self.content_type!r}, decision={self.decision!r}, "
            f"shadow={self.shadow!r}, names={self.names!r})"
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The rules an Enforcer applies and the settings it applies them with, at one moment."""

    rules: tuple[Any, ...]
    own: tuple[Any, ...]  # the adapter's rules and its limits rules (rules without the config's)
    missing_identity: MissingIdentity
    headers: bool
    legacy_headers: bool
    ip_key: Callable[[RequestInfo], str | None]
    ruleset: RuleSet | None
    compiled: CompiledRules  # the rules, compiled for the per-request work (route cache, plans)


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
            :meth:`ratelimit.Limiter.from_config`), following its reloads. The file's
            settings fill in the arguments left at None either way.
        limit_rules: builds more rules from the client-IP key in force (the default key
            of the ``limits`` shorthand), again whenever the settings change.
        compiled: decide a request that matches one plain rule through its compiled plan
            (see ``ratelimit._policy.compiled``); False sends every request through the
            general path, which gives the same answers more slowly (for comparison).

    Build it with :meth:`for_adapter`, as every adapter does.

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
        metrics: MetricsSink | None = None,
        adapter: str = "custom",
        trusted_proxies: int | None = None,
        config_rules: bool = False,
        limit_rules: Callable[[Any], Iterable[Any]] | None = None,
        compiled: bool = True,
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
        self._with_config_rules = config_rules
        self._limit_rules = limit_rules
        self.metrics = metrics if metrics is not None else NullMetrics()
        self._counting = metrics is not None  # skip per-rule metric calls when nobody listens
        self.adapter = adapter
        self._compiled = compiled
        self._snap = self._build(limiter.ruleset, None)

    def _build(self, ruleset: RuleSet | None, previous: Snapshot | None) -> Snapshot:
        """The rules and settings to enforce with ``ruleset`` (the limiter's, maybe None).

        The file's settings always apply where the code left an argument at None; its
        rules only with ``config_rules``. A clash of rule names keeps ``previous``.
        """
        base = ruleset if ruleset is not None else RuleSet()
        asked = self._asked
        proxies = base.trusted_proxies if asked["trusted_proxies"] is None else asked["trusted_proxies"]
        ip_key = client_ip(proxies)
        made = tuple(self._limit_rules(ip_key)) if self._limit_rules is not None else ()
        extra = ruleset.rules if ruleset is not None and self._with_config_rules else ()
        rules = self._own + made + extra
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if previous is None:
                raise ValueError(f"rule names must be unique, got {dupes} more than once")
            log.error("config rules %s clash with an adapter's own rules; keeping the previous rules", dupes)
            return dataclasses.replace(previous, ruleset=ruleset)
        legacy = base.legacy_headers if asked["legacy_headers"] is None else asked["legacy_headers"]
        return Snapshot(
            rules=rules,
            own=self._own + made,
            missing_identity=asked["missing_identity"] or base.missing_identity,
            headers=base.headers if asked["headers"] is None else asked["headers"],
            legacy_headers=legacy,
            ip_key=ip_key,
            ruleset=ruleset,
            compiled=CompiledRules(rules, legacy),
        )

    def snapshot(self) -> Snapshot:
        """The rules and settings in force now, as one object (a config reload swaps it whole).

        A request reads this once and uses only it, so a reload in the middle of the
        request cannot mix old rules with new settings.
        """
        snap = self._snap
        current = self.limiter.ruleset
        if current is not snap.ruleset:
            snap = self._snap = self._build(current, snap)
        return snap

    @property
    def missing_identity(self) -> MissingIdentity:
        """The policy for requests without an identity, in force now."""
        return self.snapshot().missing_identity

    @property
    def headers(self) -> bool:
        """Whether allowed responses get RateLimit headers, in force now."""
        return self.snapshot().headers

    @property
    def legacy_headers(self) -> bool:
        """Whether ``X-RateLimit-*`` headers are added, in force now."""
        return self.snapshot().legacy_headers

    @property
    def ip_key(self) -> Callable[[RequestInfo], str | None]:
        """The client-IP key function (with the trusted proxies in force now)."""
        return self.snapshot().ip_key

    @property
    def own_rules(self) -> tuple[Any, ...]:
        """The rules given to this enforcer and its ``limits`` rules (without the config file's)."""
        return self.snapshot().own

    @property
    def rules(self) -> tuple[Any, ...]:
        """Every rule enforced now (the adapter's own, then the config's)."""
        return self.snapshot().rules

    @classmethod
    def for_adapter(
        cls,
        limiter: Engine,
        adapter: str,
        rules: Iterable[Rule] = (),
        *,
        limits: Mapping[str, Any] | None = None,
        key: KeyFunc | None = None,
        config_rules: bool = True,
        from_limits: Callable[[Mapping[str, Any], Any], Iterable[Any]] = rules_from_limits,
        **options: Any,
    ) -> Enforcer:
        """The one way adapters build their Enforcer: own rules, the ``limits`` shorthand, the config's.

        Every adapter (the middlewares, the decorators, the FastAPI dependency, the gRPC
        interceptors) builds it here, so they agree on defaults: arguments left at None
        take the config file's settings (``identity.trusted_proxies`` and the others),
        then the defaults.

        Args:
            limiter: decides.
            adapter: the adapter's name in metrics.
            rules: the adapter's own rules.
            limits: the shorthand ``{pattern: rate}``, turned into rules by ``from_limits``
                (default :func:`~ratelimit.rules.rules_from_limits`), keyed by ``key`` or,
                by default, by the client IP behind the trusted proxies in force.
            config_rules: also enforce the config file's rules (the middlewares do; a
                decorator or a dependency, which sit behind one, do not).
            options: the other :class:`Enforcer` arguments.
        """
        limit_rules = None
        if limits is not None:
            spec = dict(limits)

            def limit_rules(default_key: KeyFunc) -> Iterable[Any]:
                return from_limits(spec, key if key is not None else default_key)

        return cls(
            limiter, rules, adapter=adapter, config_rules=config_rules, limit_rules=limit_rules, **options
        )

    def matching(self, request: RequestInfo, rules: Sequence[Any] | None = None) -> list[Any]:
        """The rules that apply to ``request``."""
        return list(self._matched(self.snapshot(), request, rules))

    # -- the shared steps (no I/O) -------------------------------------------------

    @staticmethod
    def _headers(
        snap: Snapshot, decision: Decision, charges: Sequence[Charge], denied: bool
    ) -> list[tuple[str, str]]:
        if not (snap.headers or denied):
            return []
        names, rates = policies(charges)
        return rate_limit_headers(decision, names, rates, legacy=snap.legacy_headers)

    def _outcome(
        self,
        snap: Snapshot,
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
            hdrs = [h for h in self._headers(snap, shadow, shadows, False) if h[0] != "Retry-After"]
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
            hdrs = self._headers(snap, decision, enforcing, False)
            return Outcome("allow", headers=hdrs, decision=decision, shadow=shadow, names=names)
        hdrs = self._headers(snap, decision, enforcing, True)
        body = problem_body(decision, names)
        return Outcome("deny", 429, hdrs, body, decision=decision, shadow=shadow, names=names)

    def _planned(self, snap: Snapshot, plan: RulePlan, decision: Decision) -> Outcome:
        """:meth:`_outcome` for one compiled rule: the same answer, with its text precomputed."""
        if self._counting:
            result = "fallback" if decision.fallback else ("allowed" if decision.allowed else "denied")
            self.metrics.decision(plan.name, result, self.adapter)
            if decision.from_cache:
                self.metrics.deny_cache_hit(plan.name)
        if decision.allowed:
            return Outcome._rendered("allow", 200, b"", decision, plan, snap.headers)
        return Outcome._rendered("deny", 429, plan.body(decision), decision, plan, True)

    def _matched(self, snap: Snapshot, request: RequestInfo, rules: Sequence[Any] | None) -> Sequence[Any]:
        if rules is None:
            return snap.compiled.matching(request)
        return [r for r in rules if r.matches(request)]

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
        snap = self.snapshot()  # read once: a reload during this request cannot mix
        if matched is None:
            matched = self._matched(snap, request, rules)
        if not matched:
            return Outcome("skip")
        plan = snap.compiled.plan_for(matched) if self._compiled else None
        if plan is not None:
            identity = _identity_of(plan.key, plan.rule, request)
            if identity is not None:
                decided = self.limiter.hit(plan.prefix + identity, plan.rates, plan.cost)
                return self._planned(snap, plan, decided)
        resolved = [[_identity_of(k, r, request) for k in r.lookups] for r in matched]
        charges = plan_charges(matched, resolved, request, snap.ip_key, snap.missing_identity)
        if charges is None:
            return self._reject(matched)
        items, shadow_items, enforcing, shadows = split_charges(charges)
        decision = self.limiter.hit_many(items) if items else None
        shadow = self.limiter.hit_many(shadow_items) if shadow_items else None
        return self._outcome(snap, decision, enforcing, shadow, shadows)

    async def acheck(
        self,
        request: RequestInfo,
        rules: Sequence[Any] | None = None,
        *,
        matched: Sequence[Any] | None = None,
    ) -> Outcome:
        """Decide ``request`` from an asyncio adapter (``matched``: rules the caller already matched)."""
        snap = self.snapshot()  # read once: a reload during this request cannot mix
        if matched is None:
            matched = self._matched(snap, request, rules)
        if not matched:
            return Outcome("skip")
        plan = snap.compiled.plan_for(matched) if self._compiled else None
        if plan is not None:
            try:
                if plan.direct:
                    identity = resolve(plan.key, request)
                else:
                    identity = await resolve_async(plan.key, request)
            except Exception:
                log.exception("key function of rule %r failed; treating the identity as missing", plan.name)
                identity = None
                request.memo[id(plan.key)] = (plan.key, None)  # the general path below reads this
            if identity is not None:
                limiter = self.limiter
                if limiter._inline:  # a backend without I/O: no coroutine to await
                    decided = limiter.hit(plan.prefix + identity, plan.rates, plan.cost)
                else:
                    decided = await limiter.ahit(plan.prefix + identity, plan.rates, plan.cost)
                return self._planned(snap, plan, decided)
        # A loop, not a nested comprehension: `await` inside one is a SyntaxError on 3.10.
        resolved: list[list[str | None]] = []
        for r in matched:
            resolved.append([await _aidentity_of(k, r, request) for k in r.lookups])
        charges = plan_charges(matched, resolved, request, snap.ip_key, snap.missing_identity)
        if charges is None:
            return self._reject(matched)
        items, shadow_items, enforcing, shadows = split_charges(charges)
        decision = await self.limiter.ahit_many(items) if items else None
        shadow = await self.limiter.ahit_many(shadow_items) if shadow_items else None
        return self._outcome(snap, decision, enforcing, shadow, shadows)


def _identity_of(key: Any, rule: Rule, request: RequestInfo) -> str | None:
    """A key function's answer for ``rule``; a failing key function counts as no identity."""
    try:
        return resolve(key, request)
    except AsyncKeyError:
        raise  # a configuration error, not a request-time failure
    except Exception:
        log.exception("key function of rule %r failed; treating the identity as missing", rule.name)
        request.memo[id(key)] = (key, None)  # asked again for this request: not run again
        return None


async def _aidentity_of(key: Any, rule: Rule, request: RequestInfo) -> str | None:
    """Async :func:`_identity_of`."""
    try:
        return await resolve_async(key, request)
    except Exception:
        log.exception("key function of rule %r failed; treating the identity as missing", rule.name)
        request.memo[id(key)] = (key, None)  # asked again for this request: not run again
        return None
