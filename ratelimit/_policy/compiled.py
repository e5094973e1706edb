"""The compiled request plan: what can be decided before the first request, decided once.

An Enforcer's :class:`~ratelimit.enforce.Snapshot` (its rules and settings at one moment)
carries one :class:`CompiledRules`. Per request that leaves: find the rules of the route
(a dict lookup after the first request of a route), read the key, one backend call, and
header fields rendered from numbers into precomputed text.

Only rules whose charge is fixed before the request compile to a :class:`RulePlan`
(no tiers, overrides or ``replaces``, a constant cost, not shadow, one lookup): the
common case. A request that matches anything else, or several rules, or whose key
finds no identity, takes the general path; both give the same decisions and headers
(``tests/policy/test_compiled.py`` checks it with hypothesis).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from .._core.decision import Decision
from .._core.rate import Rate
from ..headers import (
    encode_fields,
    policy_field,
    problem_body,
    problem_detail,
    problem_document,
    rate_limit_headers,
    retry_after_header,
    sf_string,
)
from ..keys import answers_directly
from ..request import KeyFunc, RequestInfo
from ..rules import Rule

__all__ = ["CompiledRules", "HeaderRenderer", "RulePlan"]

_ROUTE_CACHE_SIZE = 4096
"""Distinct (method, path) pairs remembered per rule set; paths with ids in them churn it."""


class HeaderRenderer:
    """``rate_limit_headers`` for one fixed list of policies, its text built once.

    :meth:`render` gives text pairs (WSGI, gRPC, decorators); :meth:`render_raw` the
    same fields as ASGI's lower-case latin-1 bytes, built from precomputed prefixes
    instead of encoding text.
    """

    __slots__ = ("_body", "_current", "_current_raw", "_legacy", "_names", "_policy", "_policy_raw", "_rates")

    def __init__(self, names: tuple[str, ...], rates: tuple[Rate, ...], legacy: bool) -> None:
        self._names, self._rates, self._legacy = names, rates, legacy
        self._policy = policy_field(names, rates)
        self._policy_raw = (b"ratelimit-policy", self._policy.encode("latin-1"))
        # One limit: the RateLimit field is this prefix and two numbers.
        self._current = sf_string(names[0]) + ";r=" if len(names) == 1 else None
        self._current_raw = self._current.encode("latin-1") if self._current is not None else None
        # One limit: a denial's problem+json body is this document around its detail text.
        self._body: tuple[bytes, bytes] | None = None
        if len(names) == 1:
            marker = "\x00"  # JSON writes it as \u0000; the detail is the first string that could be it
            pre, post = problem_document(marker, [names[0]]).split(json.dumps(marker).encode(), 1)
            self._body = (pre, post)

    def render(self, decision: Decision) -> list[tuple[str, str]]:
        """The fields of ``decision``; equal to ``rate_limit_headers(decision, names, rates, ...)``."""
        current = self._current
        if current is None or decision.fallback:
            return rate_limit_headers(decision, self._names, self._rates, legacy=self._legacy)
        allowed = decision.allowed
        t = decision.retry_after if decision.retry_after > 0 else decision.reset_after
        remaining = str(decision.remaining)
        out = [
            ("RateLimit-Policy", self._policy),
            ("RateLimit", f"{current}{remaining};t={_seconds(t)}"),
        ]
        if self._legacy:
            reset = decision.reset_after if allowed else decision.retry_after
            out += [
                ("X-RateLimit-Limit", str(decision.limit)),
                ("X-RateLimit-Remaining", remaining),
                ("X-RateLimit-Reset", str(_seconds(reset))),
            ]
        if not allowed:
            out.append(retry_after_header(decision))
        return out

    def render_raw(self, decision: Decision) -> list[tuple[bytes, bytes]]:
        """:meth:`render` as ASGI header bytes (``encode_fields(render(decision))``)."""
        current = self._current_raw
        allowed, retry = decision.allowed, decision.retry_after
        if current is None or decision.fallback or (allowed and retry > 0):
            # Several limits, a failure-policy answer, or an allowed decision with a
            # retry time (never made by the engine): the text's one code path.
            return encode_fields(self.render(decision))
        remaining = b"%d" % decision.remaining
        t = _seconds(retry if retry > 0 else decision.reset_after)
        reset = _seconds(decision.reset_after if allowed else retry)
        out = [
            self._policy_raw,
            (b"ratelimit", b"%s%s;t=%d" % (current, remaining, t)),
        ]
        if self._legacy:
            out += [
                (b"x-ratelimit-limit", b"%d" % decision.limit),
                (b"x-ratelimit-remaining", remaining),
                (b"x-ratelimit-reset", b"%d" % reset),
            ]
        if not allowed:
            out.append((b"retry-after", b"%d" % max(1, _seconds(retry))))
        return out

    def body(self, decision: Decision) -> bytes:
        """The 429 body of denied ``decision``; equal to ``problem_body(decision, names)``."""
        parts = self._body
        if parts is None:
            return problem_body(decision, self._names)
        # The detail is plain ASCII without quotes or backslashes: no JSON escaping needed.
        detail = problem_detail(max(1, _seconds(decision.retry_after))).encode()
        return b'%s"%s"%s' % (parts[0], detail, parts[1])


def _seconds(value: float) -> int:
    # As in ratelimit.headers: whole seconds, rounded up, never negative.
    return max(0, math.ceil(value - 1e-9))


class RulePlan:
    """One rule whose charge is known before the request: only the identity varies."""

    __slots__ = (
        "body",
        "cost",
        "direct",
        "key",
        "name",
        "names",
        "prefix",
        "rates",
        "render",
        "render_raw",
        "rule",
    )

    def __init__(self, rule: Rule, legacy: bool) -> None:
        self.rule = rule
        self.key: KeyFunc = rule.key
        self.direct = answers_directly(rule.key)  # no coroutine needed to read the identity
        self.name = rule.name
        # Rule names cannot contain "/", so the first "/" separates them unambiguously.
        self.prefix = rule.name + "/"
        self.rates = rule.rates
        self.names = rule.policy_names
        assert isinstance(rule.cost, int)
        self.cost: int = rule.cost
        renderer = HeaderRenderer(rule.policy_names, rule.rates, legacy)
        self.render = renderer.render
        self.render_raw = renderer.render_raw
        self.body = renderer.body

    @staticmethod
    def compiles(rule: Any) -> bool:
        """Whether ``rule``'s charge is fixed before the request (see the module docstring)."""
        return (
            isinstance(rule, Rule)
            and rule.simple
            and not rule.shadow
            and bool(rule.rates)
            and not callable(rule.cost)
            and len(rule.lookups) == 1
        )


class CompiledRules:
    """A rule set's rules, with a route cache and a :class:`RulePlan` per compilable rule.

    Immutable once built except for its caches, which only ever remember answers that
    depend on the rules it was built from; a reload builds a new one.
    """

    __slots__ = ("_plans", "_routes", "rules")

    def __init__(self, rules: Sequence[Any], legacy: bool) -> None:
        self.rules = tuple(rules)
        self._plans: dict[int, RulePlan] = {
            id(r): RulePlan(r, legacy) for r in self.rules if RulePlan.compiles(r)
        }
        self._routes: dict[tuple[str, str], tuple[tuple[Any, ...], bool]] = {}

    def route(self, method: str, path: str, request: RequestInfo) -> tuple[tuple[Any, ...], bool]:
        """The rules whose paths and methods fit, and whether any has conditions left to check."""
        key = (method, path)
        found = self._routes.get(key)
        if found is None:
            routed = tuple(r for r in self.rules if r.matches_route(request))
            found = (routed, any(r.conditional for r in routed))
            if len(self._routes) >= _ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[key] = found
        return found

    def matching(self, request: RequestInfo) -> Sequence[Any]:
        """The rules that apply to ``request`` (the same as filtering with ``Rule.matches``)."""
        routed, conditional = self.route(request.method, request.path, request)
        if not conditional:
            return routed
        return [r for r in routed if not r.conditional or r.matches_conditions(request)]

    def plan_for(self, matched: Sequence[Any]) -> RulePlan | None:
        """The compiled plan when ``matched`` is one compilable rule, else None."""
        if len(matched) != 1:
            return None
        return self._plans.get(id(matched[0]))
