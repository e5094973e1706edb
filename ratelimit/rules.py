"""Rules: which requests a limit applies to, what it is counted per, and how much it costs."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._core.rate import Rate, RateLike, parse_rates
from .headers import policy_name
from .keys import constant
from .matchers import HeaderMatch, HostPattern
from .request import KeyFunc, RequestInfo

__all__ = [
    "RULE_NAME",
    "UNLIMITED",
    "Rule",
    "Tiers",
    "bounded_name",
    "compile_path",
    "parse_limits",
    "rule_slug",
    "rules_from_limits",
    "unique_name",
]

UNLIMITED: tuple[Rate, ...] = ()
"""The limits of an identity or tier that is never counted."""


def parse_limits(value: Any) -> tuple[Rate, ...]:
    """Rates as :func:`~ratelimit.parse_rates` reads them, or ``"unlimited"`` (no rates: never counted)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "unlimited"):
        return UNLIMITED
    if isinstance(value, tuple) and not value:
        return UNLIMITED
    return parse_rates(value)


@dataclass(frozen=True, eq=False)
class Tiers:
    """Limits chosen per request by a value, e.g. the ``plan`` claim.

    Args:
        by: the key function giving the tier (``jwt_claim("plan", ...)``).
        limits: tier value -> limits (``"unlimited"`` allowed).
        default: the limits of any other value, or of a request without one.
    """

    by: Any
    limits: Mapping[str, tuple[Rate, ...]]
    default: tuple[Rate, ...]

    def __post_init__(self) -> None:
        if not callable(self.by):
            raise TypeError(f"tiers: by must be a key function, got {self.by!r}")
        object.__setattr__(self, "limits", {str(k): parse_limits(v) for k, v in self.limits.items()})
        object.__setattr__(self, "default", parse_limits(self.default))


RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""What a rule name may be: letters, digits, ``.``, ``_`` and ``-``, at most 64 characters."""


def compile_path(pattern: str) -> re.Pattern[str]:
    """Compile a path pattern.

    - ``/items`` matches exactly; ``/items/*`` one more segment; ``/api/**`` anything below.
    - ``{name}`` matches one segment (``/users/{id}/orders``).
    - gRPC: ``/shop.Cart/GetCart``, ``/shop.Cart/*`` (every method), ``/shop.*/*``.
    - ``re:`` followed by a regular expression, matched against the whole path.
    """
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern[3:]!r}: {exc}") from None
    if not pattern.startswith("/"):
        raise ValueError(f"a path pattern starts with '/' (or 're:'), got {pattern!r}")
    out = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "{":
            end = pattern.find("}", i)
            if end < 0:
                raise ValueError(f"unclosed '{{' in path pattern {pattern!r}")
            out.append("[^/]+")
            i = end + 1
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("".join(out))


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: rules are configuration objects
class Rule:
    """A named limit: which requests (paths, methods), per what (key), how many (rates).

    Args:
        name: names the policy in headers and metrics, and namespaces the counters
            (letters, digits, ``.``, ``_``, ``-``; at most 64).
        rates: one rate, a ``";"``-separated string, or a list (all must allow).
        key: the key function (default: one counter shared by every request).
        paths: path patterns (see :func:`compile_path`); empty means every path.
        methods: HTTP methods; empty means every method.
        cost: hits charged per request, or a function of the request.
        shadow: count, report and emit headers, but never deny.
        hosts: host patterns (:class:`~ratelimit.matchers.HostPattern`); empty means any host.
        headers: header conditions (:class:`~ratelimit.matchers.HeaderMatch`), all must hold.
        tiers: limits chosen by a request value (:class:`Tiers`); ``rates`` is then unused.
        overrides: identity -> limits, winning over ``rates`` and ``tiers``.
        replaces: names of rules that do not apply to a request this rule applies to.
        missing: this rule's missing-identity policy (default: the enforcer's).

    ``rates`` may be empty (``"unlimited"``): the rule then counts nothing, which is
    useful with ``replaces`` or when only tiers and overrides set limits.
    """

    name: str
    rates: tuple[Rate, ...]
    key: KeyFunc = field(default_factory=constant)
    paths: tuple[str, ...] = ()
    methods: frozenset[str] = frozenset()
    cost: int | Callable[[RequestInfo], int] = 1
    shadow: bool = False
    hosts: tuple[HostPattern, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()
    tiers: Tiers | None = None
    overrides: Mapping[str, tuple[Rate, ...]] = field(default_factory=dict)
    replaces: frozenset[str] = frozenset()
    missing: str | None = None
    _patterns: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)
    policy_names: tuple[str, ...] = field(default=(), repr=False, compare=False)
    simple: bool = field(default=True, repr=False, compare=False)
    conditional: bool = field(default=False, repr=False, compare=False)
    lookups: tuple[KeyFunc, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not RULE_NAME.fullmatch(self.name):
            raise ValueError(f"rule name must match {RULE_NAME.pattern}, got {self.name!r}")
        object.__setattr__(self, "rates", parse_limits(self.rates))
        object.__setattr__(self, "overrides", {str(k): parse_limits(v) for k, v in self.overrides.items()})
        object.__setattr__(self, "replaces", frozenset(self.replaces))
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "headers", tuple(self.headers))
        if self.missing not in (None, "ip", "anonymous", "reject"):
            raise ValueError(f"rule {self.name!r}: missing must be 'ip', 'anonymous' or 'reject'")
        # Rules without per-request limits take the enforcer's fast path.
        object.__setattr__(self, "simple", self.tiers is None and not self.overrides and not self.replaces)
        object.__setattr__(self, "conditional", bool(self.hosts or self.headers))
        # The key functions a request is resolved with: the identity, then the tier.
        object.__setattr__(self, "lookups", (self.key,) if self.tiers is None else (self.key, self.tiers.by))
        paths = (self.paths,) if isinstance(self.paths, str) else tuple(self.paths)
        object.__setattr__(self, "paths", paths)
        object.__setattr__(self, "_patterns", tuple(compile_path(p) for p in paths))
        several = len(self.rates) > 1
        object.__setattr__(
            self, "policy_names", tuple(policy_name(self.name, r, several) for r in self.rates)
        )
        methods = (self.methods,) if isinstance(self.methods, str) else self.methods
        object.__setattr__(self, "methods", frozenset(m.upper() for m in methods))
        if not callable(self.key):
            raise TypeError(f"rule {self.name!r}: key must be a key function, got {self.key!r}")
        if not callable(self.cost) and (
            isinstance(self.cost, bool) or not isinstance(self.cost, int) or self.cost < 0
        ):
            raise ValueError(f"rule {self.name!r}: cost must be an integer >= 0 or a function")

    @classmethod
    def of(
        cls,
        name: str,
        rates: RateLike | Sequence[RateLike],
        key: KeyFunc | None = None,
        *,
        paths: str | Iterable[str] = (),
        methods: str | Iterable[str] = (),
        cost: int | Callable[[RequestInfo], int] = 1,
        shadow: bool = False,
        **conditions: Any,
    ) -> Rule:
        """Build a rule from loose arguments: ``Rule.of("per-user", "10/second", jwt_subject(...))``.

        ``conditions`` are the other fields (``hosts``, ``headers``, ``tiers``,
        ``overrides``, ``replaces``, ``missing``).
        """
        return cls(
            name,
            rates,  # type: ignore[arg-type]
            key if key is not None else constant(),
            tuple([paths] if isinstance(paths, str) else paths),
            frozenset([methods] if isinstance(methods, str) else methods),
            cost,
            shadow,
            **conditions,
        )

    def matches(self, request: RequestInfo) -> bool:
        """Does this rule apply to ``request``?"""
        if not self.matches_route(request):
            return False
        return not self.conditional or self.matches_conditions(request)

    def matches_route(self, request: RequestInfo) -> bool:
        """Do the path and method fit (what a per-method cache may remember)?"""
        if self.methods and request.method.upper() not in self.methods:
            return False
        return not self._patterns or any(p.fullmatch(request.path) for p in self._patterns)

    def matches_conditions(self, request: RequestInfo) -> bool:
        """Do the host and header conditions hold (they vary per request)?"""
        if self.hosts and not any(h(request) for h in self.hosts):
            return False
        return all(h(request) for h in self.headers)

    def limits_for(self, identity: str, tier: str | None) -> tuple[Rate, ...]:
        """The limits of ``identity`` whose tier is ``tier``: an override, its tier's, or ``rates``."""
        found = self.overrides.get(identity)
        if found is not None:
            return found
        if self.tiers is not None:
            return self.tiers.limits.get(tier, self.tiers.default) if tier is not None else self.tiers.default
        return self.rates

    def cost_of(self, request: RequestInfo) -> int:
        """What ``request`` costs under this rule (a bad cost function's answer costs 1)."""
        if not callable(self.cost):
            return self.cost
        value = self.cost(request)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return 1
        return value


_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})


def rule_slug(text: str) -> str:
    """A rule name from a pattern or path: ``GET /items/*`` -> ``get-items-any``."""
    plain = text.replace("**", "all").replace("*", "any")
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", plain).strip("-._").lower() or "root"
    return bounded_name(name, text)


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base-2``, ``base-3``... whichever is not in ``taken`` (which it joins)."""
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base[:60]}-{n}"
    taken.add(name)
    return name


def bounded_name(name: str, source: str) -> str:
    """``name`` cut to the 64 characters a rule name may have, kept unique by a hash of ``source``."""
    if len(name) <= 64:
        return name
    return name[:55].rstrip("-._") + "-" + hashlib.sha256(source.encode()).hexdigest()[:8]


def rules_from_limits(limits: Mapping[str, RateLike], key: KeyFunc) -> list[Rule]:
    """Rules from the shorthand ``{"GET,POST /items/*": "100/minute", "/admin/**": "10/minute"}``.

    Each key is optional comma-separated HTTP methods (or ``*`` for any) and a path
    pattern; each rule is named after its key (``get-post-items-any``), so the same
    mapping gives the same counters under every adapter. Unknown methods are refused.
    """
    rules: list[Rule] = []
    taken: set[str] = set()
    for spec, rates in limits.items():
        spec = spec.strip()
        head, _, path = ("", "", spec) if spec.startswith(("/", "re:")) else spec.partition(" ")
        methods = [m.strip().upper() for m in head.split(",") if m.strip() and m.strip() != "*"]
        unknown = [m for m in methods if m not in _HTTP_METHODS]
        if unknown:
            raise ValueError(f"unknown HTTP method(s) {unknown} in limits key {spec!r}")
        path = path.strip()
        name = unique_name(rule_slug(" ".join([*methods, path])), taken)
        rules.append(Rule.of(name, rates, key, paths=path, methods=methods))
    return rules
