"""A RuleSet: the rules and enforcement settings a config file gives a limiter.

:meth:`ratelimit.Limiter.from_config` puts one on ``limiter.ruleset``; every adapter
handed that limiter enforces it. A reload swaps the whole object in one assignment, so
a request sees either the old rules or the new ones, never a mix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ._core.rate import Rate
from .request import KeyFunc, RequestInfo

__all__ = ["Charge", "ChargingRule", "RuleSet"]


@dataclass(frozen=True, slots=True)
class Charge:
    """One counter a request is charged to, with the limits that apply to it.

    Attributes:
        label: the rule (or named Envoy limit) in metrics and ``replaces``.
        counted: the identity passed to the limiter (``rule/identity``).
        rates: the limits; empty means unlimited (not counted).
        names: one policy name per rate, for the RateLimit headers.
        cost: hits charged.
        shadow: counted and reported, never denying.
        replaces: labels of charges this one removes from the request.
    """

    label: str
    counted: str
    rates: tuple[Rate, ...]
    names: tuple[str, ...]
    cost: int = 1
    shadow: bool = False
    replaces: frozenset[str] = frozenset()


class ChargingRule(Protocol):
    """A rule that works out its own charges (the Envoy descriptor engine).

    Its charges need no key function resolution, so sync and async adapters share it.
    """

    name: str
    conditional: bool
    lookups: tuple[KeyFunc, ...]  # key functions to resolve first: none for these rules

    def matches_route(self, request: RequestInfo) -> bool:
        """Whether the request's path and method are this rule's (cacheable per route)."""
        ...

    def matches_conditions(self, request: RequestInfo) -> bool:
        """Whether the request's headers and host meet the rule's other conditions."""
        ...

    def matches(self, request: RequestInfo) -> bool:
        """Both of the above."""
        ...

    def charges(self, request: RequestInfo, ip_key: Callable[[RequestInfo], str | None]) -> list[Charge]:
        """The counters ``request`` is charged to (``ip_key`` counts per client address)."""
        ...


@dataclass(frozen=True, eq=False)
class RuleSet:
    """Rules plus the settings they are enforced with (from the config file).

    Adapters' own arguments win over these settings; these win over the defaults.
    """

    rules: tuple[Any, ...] = ()
    missing_identity: Literal["ip", "anonymous", "reject"] = "ip"
    trusted_proxies: int = 0
    headers: bool = True
    legacy_headers: bool = True
    source: str | None = None
