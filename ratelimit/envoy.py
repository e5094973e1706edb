"""The envoyproxy/ratelimit service's config format, evaluated in the app.

A service config (``domain`` plus nested ``descriptors``) is read as it is and matched
with that service's precedence: at each level an exact ``key``/``value``, then a
wildcard value (``value: "api*"``), then the key alone (one counter per distinct
value); a limit applies only at the depth of the request descriptor's last entry.
Request descriptors come from Envoy route ``rate_limits`` actions
(:mod:`ratelimit._policy.envoy_actions`) or, without them, from every key path of the tree.

Differences from the service, on purpose: counting is a sliding window counter, not
a fixed window; all of a request's limits are decided together, so a denied request
counts against none of its other descriptors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._core.rate import Rate
from ._core.reader import Field
from ._policy.envoy_actions import SKIP, Action, constant_entry, header_entry, remote_address_entry
from .request import RequestInfo
from .rules import RULE_NAME, Rule
from .ruleset import Charge

__all__ = [
    "DESCRIPTOR_KEYS",
    "DescriptorLimit",
    "LIMIT_KEYS",
    "UNITS",
    "DescriptorRule",
    "DescriptorTree",
    "read_service_config",
]

UNITS = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 604800,
    "month": 2592000,
    "year": 31536000,
}
"""Seconds per ``rate_limit.unit`` of an envoyproxy/ratelimit config."""
DESCRIPTOR_KEYS = (
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "detailed_metric",
    "value_to_metric",
)
"""The keys a descriptor entry of an envoyproxy/ratelimit config may have."""
LIMIT_KEYS = ("requests_per_unit", "unit", "unit_multiplier", "unlimited", "name", "replaces")
"""The keys a descriptor's ``rate_limit`` may have."""


@dataclass(frozen=True)
class DescriptorLimit:
    """A descriptor's ``rate_limit``, as read (what ``ratelimit serve`` reports back).

    Attributes:
        rates: the limit as counted; empty when ``unlimited``.
        policy: its name in RateLimit headers (its ``name``, else the descriptor path).
        label: its ``name``, if it has one (what ``replaces`` refers to).
        replaces: names of limits this one removes from the request.
        shadow: counted and reported, never denying.
        unit: ``rate_limit.unit`` in lower case (None when unlimited).
        requests_per_unit: ``rate_limit.requests_per_unit`` (None when unlimited).
        unit_multiplier: ``rate_limit.unit_multiplier`` (1 when absent).
    """

    rates: tuple[Rate, ...]
    policy: str
    label: str | None
    replaces: frozenset[str]
    shadow: bool
    unit: str | None = None
    requests_per_unit: int | None = None
    unit_multiplier: int = 1

    @property
    def unlimited(self) -> bool:
        """``unlimited: true``: matched, never counted."""
        return not self.rates


@dataclass
class _Level:
    exact: dict[tuple[str, str], _Node] = field(default_factory=dict)
    wildcards: list[tuple[str, str, _Node]] = field(default_factory=list)
    key_only: dict[str, _Node] = field(default_factory=dict)

    def find(self, key: str, value: str) -> _Node | None:
        node = self.exact.get((key, value))
        if node is None:
            for wkey, prefix, candidate in self.wildcards:
                if wkey == key and value.startswith(prefix):
                    return candidate
            node = self.key_only.get(key)
        return node


@dataclass
class _Node:
    key: str
    value: str | None
    limit: DescriptorLimit | None
    children: _Level


class DescriptorTree:
    """One domain's descriptors, ready to look request descriptors up."""

    def __init__(self, domain: str, root: _Level, paths: list[tuple[tuple[str, str | None], ...]]) -> None:
        self.domain = domain
        self.root = root
        self.key_paths = paths  # every key path ending in a limit (generic_key keeps its value)

    def lookup(self, entries: list[tuple[str, str]]) -> DescriptorLimit | None:
        """The limit for a request descriptor, with the service's precedence."""
        level = self.root
        last = len(entries) - 1
        for i, (key, value) in enumerate(entries):
            node = level.find(key, value)
            if node is None:
                return None
            if i == last:
                return node.limit
            level = node.children
        return None


def read_service_config(f: Field) -> DescriptorTree | None:
    """Read ``domain`` and ``descriptors`` as the envoyproxy/ratelimit service does."""
    keys = f.mapping(("domain", "descriptors"), required=("domain",))
    if keys is None or "domain" not in keys:
        return None
    domain = keys["domain"].string()
    paths: list[tuple[tuple[str, str | None], ...]] = []
    root = _read_level(keys["descriptors"], domain or "", (), paths) if "descriptors" in keys else _Level()
    return DescriptorTree(domain, root, paths) if domain is not None and root is not None else None


def _read_level(f: Field, where: str, path: tuple[Any, ...], paths: list[Any]) -> _Level | None:
    level = _Level()
    ok = True
    for item in f.items() or []:
        keys = item.mapping(DESCRIPTOR_KEYS, required=("key",))
        if keys is None or "key" not in keys:
            ok = False
            continue
        key = keys["key"].string()
        value = keys["value"].string() if "value" in keys else None
        if key is None or ("value" in keys and value is None):
            ok = False
            continue
        label = f"{where}.{key}" + (f"={value}" if value is not None else "")
        step = (*path, (key, value if key == "generic_key" else None))
        node_shadow = bool(keys["shadow_mode"].boolean()) if "shadow_mode" in keys else False
        limit = _read_limit(keys["rate_limit"], label, node_shadow) if "rate_limit" in keys else None
        if "rate_limit" in keys and limit is None:
            ok = False
        children = _read_level(keys["descriptors"], label, step, paths) if "descriptors" in keys else _Level()
        if children is None:
            ok = False
            continue
        node = _Node(key, value, limit, children)
        if limit is not None and step not in paths:
            paths.append(step)
        if value is None:
            duplicate = key in level.key_only
            level.key_only[key] = node
        elif value.endswith("*"):
            duplicate = any(k == key and p == value[:-1] for k, p, _ in level.wildcards)
            level.wildcards.append((key, value[:-1], node))
        else:
            duplicate = (key, value) in level.exact
            level.exact[(key, value)] = node
        if duplicate:
            item.report.add(item.pos, item.path, f"duplicate descriptor {label!r}")
            ok = False
    return level if ok else None


def _read_limit(f: Field, label: str, shadow: bool) -> DescriptorLimit | None:
    keys = f.mapping(LIMIT_KEYS)
    if keys is None:
        return None
    name = keys["name"].string(RULE_NAME, "a name (letters, digits, . _ -)") if "name" in keys else None
    replaces: set[str] = set()
    for r in keys["replaces"].items() or [] if "replaces" in keys else []:
        got = r.mapping(("name",), required=("name",))
        if got and "name" in got and (n := got["name"].string()) is not None:
            replaces.add(n)
    unlimited = keys["unlimited"].boolean() if "unlimited" in keys else False
    policy = name or label
    if unlimited:
        return DescriptorLimit((), policy, name, frozenset(replaces), shadow)
    if "requests_per_unit" not in keys or "unit" not in keys:
        f.report.add(f.pos, f.path, "needs requests_per_unit and unit (or unlimited: true)")
        return None
    count = keys["requests_per_unit"].integer()
    unit = keys["unit"].string()
    if unit is not None and unit.lower() not in UNITS:
        keys["unit"].fail("one of: " + ", ".join(UNITS))
        return None
    multiplier = keys["unit_multiplier"].integer(1) if "unit_multiplier" in keys else 1
    if count is None or unit is None or multiplier is None:
        return None
    try:
        rate = Rate(count, float(UNITS[unit.lower()] * multiplier))
    except ValueError as exc:
        f.fail("a limit this library can count", str(exc))
        return None
    return DescriptorLimit((rate,), policy, name, frozenset(replaces), shadow, unit.lower(), count, multiplier)


def _convention(key: str, value: str | None) -> Action:
    """How a descriptor key is read from the request when no ``rate_limits`` are given."""
    if key == "generic_key" and value is not None:
        return constant_entry(key, value)
    if key == "remote_address":
        return remote_address_entry
    return header_entry(key, key)


class DescriptorRule:
    """An envoyproxy/ratelimit domain enforced as one rule.

    Args:
        name: the rule's name (metrics label of limits without their own ``name``).
        tree: the domain's descriptors.
        descriptors: action lists, one per request descriptor; None for the convention
            (every key path of the tree, keys read from the request).
        route: which requests the domain applies to (a rule used only for matching).
        shadow: count and report every limit, deny none.
    """

    def __init__(
        self,
        name: str,
        tree: DescriptorTree,
        descriptors: list[list[Action]] | None = None,
        route: Rule | None = None,
        shadow: bool = False,
    ) -> None:
        self.name = name
        self.tree = tree
        self.shadow = shadow
        self.route = route or Rule.of(name, "unlimited")
        self.conditional = self.route.conditional
        self.lookups = ()  # entries come from actions, not key functions
        self._prefix = f"envoy:{tree.domain}/"  # ":" is not allowed in rule names: no clash
        self.conventional = descriptors is None
        if descriptors is None:
            descriptors = [[_convention(k, v) for k, v in path] for path in tree.key_paths]
        self.descriptors = descriptors

    def __repr__(self) -> str:
        return f"DescriptorRule({self.name!r}, domain={self.tree.domain!r})"

    def matches_route(self, request: RequestInfo) -> bool:
        """Do the path and method fit?"""
        return self.route.matches_route(request)

    def matches_conditions(self, request: RequestInfo) -> bool:
        """Do the host and header conditions hold?"""
        return self.route.matches_conditions(request)

    def matches(self, request: RequestInfo) -> bool:
        """Does this domain apply to ``request``?"""
        return self.route.matches(request)

    def entries(
        self, request: RequestInfo, ip_key: Callable[[RequestInfo], str | None]
    ) -> list[list[tuple[str, str]]]:
        """The request's descriptors (a descriptor with an action that finds nothing is dropped)."""
        out = []
        for actions in self.descriptors:
            entries = []
            for action in actions:
                entry = action(request, ip_key)
                if entry is None:
                    break
                if entry is not SKIP:
                    entries.append(entry)
            else:
                if entries:
                    out.append(entries)
        return out

    def charge(self, entries: list[tuple[str, str]]) -> Charge | None:
        """The charge of one request descriptor, or None when no limit applies to it."""
        limit = self.tree.lookup(entries)
        if limit is None:
            return None
        # Keyed by domain, as the service keys them: entries of one domain share counters.
        counted = self._prefix + "/".join(f"{k}={v}" for k, v in entries)
        names = (limit.policy,) * len(limit.rates)
        shadow = limit.shadow or self.shadow
        return Charge(limit.label or self.name, counted, limit.rates, names, 1, shadow, limit.replaces)

    def charges(self, request: RequestInfo, ip_key: Callable[[RequestInfo], str | None]) -> list[Charge]:
        """One charge per request descriptor that has a limit (unlimited ones included, for replaces)."""
        charges: dict[str, Charge] = {}
        for entries in self.entries(request, ip_key):
            charge = self.charge(entries)
            if charge is not None:
                charges.setdefault(charge.counted, charge)
        return list(charges.values())
