"""What the EnvoyFilters held: rate limit filters, ``rate_limits`` and local limit configs.

Each piece keeps its :class:`Scope`, the requests the patch applied to, so that
:mod:`ratelimit._assemble` can pair and translate them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ._manifest import Manifest
from ._match import Match

__all__ = ["GlobalFilter", "LocalConfig", "Parsed", "RateLimits", "Scope"]


@dataclass
class Scope:
    """Where a patch applies: every request, a virtual host, or a route (``match``)."""

    source: Manifest
    where: str
    level: str  # "listener", "vhost" or "route"
    selector: str
    match: Match = field(default_factory=Match)
    label: str = ""  # the route or virtual host name, for rule names


@dataclass
class GlobalFilter:
    """An ``envoy.filters.http.ratelimit`` filter: its domain and failure settings."""

    scope: Scope
    domain: str
    stage: int
    failure_mode: str
    timeout: float | None


@dataclass
class RateLimits:
    """The translatable ``rate_limits`` entries of one vhost/route patch, each with its field."""

    scope: Scope
    entries: list[tuple[str, int, dict[str, Any]]]  # (field, stage, entry)


@dataclass
class LocalConfig:
    """A LocalRateLimit config (filter-level or per route/vhost)."""

    scope: Scope
    where: str
    config: dict[str, Any]


@dataclass
class Parsed:
    """Everything rate-limit related found in the EnvoyFilters."""

    filters: list[GlobalFilter] = field(default_factory=list)
    limits: list[RateLimits] = field(default_factory=list)
    locals: list[LocalConfig] = field(default_factory=list)
