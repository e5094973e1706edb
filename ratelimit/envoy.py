"""The envoyproxy/ratelimit service's config format, evaluated in the app.

A service config (``domain`` plus nested ``descriptors``) is read as the service reads it
today and matched with its precedence: at each level an exact ``key``/``value``, then
the wildcard values in the order they are written (``*`` anywhere in a value matches any
run of characters, ``/api/*/action`` included), then the key alone (one counter per
distinct value); a limit applies only at the depth of the request descriptor's last
entry. As in the service, a level is matched on ``key_value`` joined by ``_``.
``share_threshold`` makes every value a wildcard matches share one counter. Request
descriptors come from Envoy route ``rate_limits`` actions
(:mod:`ratelimit._policy.envoy_actions`) or, without them, from every key path of the tree.

Differences from the service, on purpose: counting is a sliding window counter, not
a fixed window; all of a request's limits are decided together, so a denied request
counts against none of its other descriptors. docs/configuration.md lists every field
of the format with what the app does with it.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
    "LIMIT_KEYS",
    "UNITS",
    "DescriptorLimit",
    "DescriptorMatch",
    "DescriptorRule",
    "DescriptorTree",
    "read_service_config",
    "wildcard_match",
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
"""Seconds per ``rate_limit.unit`` of an envoyproxy/ratelimit config (month 30 days, year 365)."""
DESCRIPTOR_KEYS = (
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "quota_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
    "metadata",
)
"""The keys a descriptor entry of an envoyproxy/ratelimit config may have."""
LIMIT_KEYS = ("requests_per_unit", "unit", "unit_multiplier", "unlimited", "name", "replaces")
"""The keys a descriptor's ``rate_limit`` may have (``unit_multiplier`` is this package's own)."""


@dataclass(frozen=True)
class DescriptorLimit:
    """A descriptor's ``rate_limit``, as read (what ``ratelimit serve`` reports back).

    Attributes:
        rates: the limit as counted; empty when ``unlimited``.
        policy: its name in RateLimit headers (its ``name``, else the descriptor path).
        label: its ``name``, if it has one (what ``replaces`` refers to).
        replaces: names of limits this one removes from the request.
        shadow: counted and reported, never denying (the descriptor's ``shadow_mode``).
        unit: ``rate_limit.unit`` in lower case (None when unlimited).
        requests_per_unit: ``rate_limit.requests_per_unit`` (None when unlimited).
        unit_multiplier: ``rate_limit.unit_multiplier`` (1 when absent).
        quota_mode: the descriptor's ``quota_mode``: over its limit, it denies a request only
            when every quota-mode limit of that request is over too.
        detailed_metric: the descriptor's ``detailed_metric`` (changes only the stats key,
            ``DescriptorMatch.stats_key``).
        metadata: the descriptor's ``metadata`` (JSON-like values), which the service puts in
            its response's dynamic metadata when the descriptor passes; None when absent.
        stats_key: the service's stats key of the limit as configured
            (``domain.key_value.key``: the tree path, values as written, wildcards with ``*``).
    """

    rates: tuple[Rate, ...]
    policy: str
    label: str | None
    replaces: frozenset[str]
    shadow: bool
    unit: str | None = None
    requests_per_unit: int | None = None
    unit_multiplier: int = 1
    quota_mode: bool = False
    detailed_metric: bool = False
    metadata: Mapping[str, Any] | None = field(default=None, compare=False)
    stats_key: str = ""

    @property
    def unlimited(self) -> bool:
        """``unlimited: true``: matched, never counted."""
        return not self.rates


@dataclass(frozen=True)
class DescriptorMatch:
    """What one request descriptor matched in a domain (:meth:`DescriptorTree.match`).

    Attributes:
        limit: the limit that applies.
        entries: the request descriptor, as given.
        counter_entries: the entries the counter is keyed by: ``entries`` with the value of
            each entry matched by a ``share_threshold`` wildcard replaced by that wildcard
            (``files/*``), so every value it matches shares one counter.
        domain: the domain it matched in.
        shown: per entry, the value the service's stats key shows for it without
            ``detailed_metric`` (the configured value or wildcard; "" for a key alone).
    """

    limit: DescriptorLimit
    entries: tuple[tuple[str, str], ...]
    counter_entries: tuple[tuple[str, str], ...]
    domain: str = field(repr=False)
    shown: tuple[str, ...] = field(repr=False)

    @property
    def shared(self) -> bool:
        """Whether a ``share_threshold`` wildcard stands for some value in the counter."""
        return self.counter_entries != self.entries

    @property
    def stats_key(self) -> str:
        """The service's stats key for this request (``detailed_metric``, ``value_to_metric``
        and ``share_threshold`` applied as the service applies them).

        Built on demand: the app's request path never needs it.
        """
        pairs: Iterable[tuple[str, str]]
        if not self.limit.detailed_metric:
            pairs = zip((k for k, _ in self.entries), self.shown, strict=True)
        elif self.shared:
            pairs = self.counter_entries
        else:
            return ".".join([self.domain, *(f"{k}_{v}" for k, v in self.entries)])
        return ".".join([self.domain, *(f"{k}_{v}" if v else k for k, v in pairs)])


def wildcard_match(pattern: str, text: str) -> bool:
    """Whether ``text`` matches ``pattern``, where each ``*`` matches any run of characters.

    The service's wildcard semantics: ``"/api/*/action"`` matches ``"/api/1/action"``
    and ``"/api//action"``, not ``"/api/1/other"``; without ``*``, only ``pattern`` itself.
    """
    return _parts_match(tuple(pattern.split("*")), text)


def _parts_match(parts: tuple[str, ...], text: str) -> bool:
    if len(parts) == 1:
        return parts[0] == text
    first, last = parts[0], parts[-1]
    if len(text) < sum(map(len, parts)) or not text.startswith(first) or not text.endswith(last):
        return False
    at, end = len(first), len(text) - len(last)
    for part in parts[1:-1]:  # leftmost first is enough: any later fit leaves less room
        found = text.find(part, at, end)
        if found < 0:
            return False
        at = found + len(part)
    return True


@dataclass
class _Level:
    nodes: dict[str, _Node] = field(default_factory=dict)  # by "key" or "key_value", as the service
    wildcards: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)  # in file order


@dataclass
class _Node:
    key: str
    value: str | None
    limit: DescriptorLimit | None
    children: _Level
    value_to_metric: bool = False
    share_threshold: bool = False


class DescriptorTree:
    """One domain's descriptors, ready to look request descriptors up."""

    def __init__(
        self,
        domain: str,
        root: _Level,
        paths: list[tuple[tuple[str, str | None], ...]],
        notes: list[str] | None = None,
    ) -> None:
        self.domain = domain
        self.root = root
        self.key_paths = paths  # every key path ending in a limit (generic_key keeps its value)
        self.notes = notes or []  # "file:line:col: field: message" of fields without effect here

    def walk(self) -> Iterator[tuple[int, str, str | None, bool, DescriptorLimit | None]]:
        """Every descriptor of the tree in file order: ``(depth, key, value, share_threshold, limit)``."""
        stack = [(0, node) for node in reversed(self.root.nodes.values())]
        while stack:
            depth, node = stack.pop()
            yield depth, node.key, node.value, node.share_threshold, node.limit
            stack += [(depth + 1, child) for child in reversed(node.children.nodes.values())]

    def lookup(self, entries: Sequence[tuple[str, str]]) -> DescriptorLimit | None:
        """The limit for a request descriptor, with the service's precedence."""
        found = self.match(entries)
        return found.limit if found is not None else None

    def match(self, entries: Sequence[tuple[str, str]]) -> DescriptorMatch | None:
        """What a request descriptor matches: its limit, counter entries and stats key; None for no limit."""
        level = self.root
        last = len(entries) - 1
        limit: DescriptorLimit | None = None
        shared: dict[int, str] = {}
        shown: list[str] = []
        for i, (key, value) in enumerate(entries):
            joined = f"{key}_{value}"
            node = level.nodes.get(joined)
            wildcard = None
            if node is None:
                for name, parts in level.wildcards:
                    if _parts_match(parts, joined):
                        node, wildcard = level.nodes[name], name
                        break
            by_value = node is not None
            if node is None:
                node = level.nodes.get(key)
                if node is None:
                    return None
            if wildcard is not None:
                pattern = wildcard.removeprefix(f"{key}_")
                if node.share_threshold:
                    shared[i] = pattern
                shown.append(shared.get(i) or (value if node.value_to_metric else pattern))
            else:
                shown.append(value if by_value or node.value_to_metric else "")
            if i == last:
                limit = node.limit
            if not node.children.nodes:
                break
            level = node.children
        if limit is None:
            return None
        given = tuple(entries)
        counter = tuple((k, shared.get(i, v)) for i, (k, v) in enumerate(given)) if shared else given
        return DescriptorMatch(limit, given, counter, self.domain, tuple(shown))


def read_service_config(f: Field) -> DescriptorTree | None:
    """Read ``domain`` and ``descriptors`` as the envoyproxy/ratelimit service does.

    Errors (in the service's words, with file:line:field) go to ``f``'s report, and the
    result is None when there were any. Fields accepted without effect in the app are
    listed on the tree's ``notes``.
    """
    keys = f.mapping(("domain", "descriptors"))
    if keys is None:
        return None
    domain = keys["domain"].string() if "domain" in keys and keys["domain"].value is not None else ""
    if domain == "":
        where = keys.get("domain", f)
        named = where.path if "domain" in keys else f"{f.path}.domain".lstrip(".")
        where.report.add(where.pos, named, "config file cannot have empty domain")
        domain = None
    reader = _Reader()
    root: _Level | None = _Level()
    if "descriptors" in keys and keys["descriptors"].value is not None:  # "descriptors:" alone is none
        root = reader.level(keys["descriptors"], domain or "", f"{domain}.", ())
    if domain is None or root is None:
        return None
    return DescriptorTree(domain, root, reader.paths, reader.notes)


@dataclass
class _Reader:
    paths: list[tuple[tuple[str, str | None], ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def level(self, f: Field, where: str, stats: str, path: tuple[Any, ...]) -> _Level | None:
        """One ``descriptors`` list; ``where`` is its label, ``stats`` the service's key so far."""
        items = f.items()
        if items is None:
            return None
        level = _Level()
        ok = True
        for item in items:
            node = self.node(item, where, stats, path)
            if node is None:
                ok = False
                continue
            joined = node.key if node.value is None else f"{node.key}_{node.value}"
            if joined in level.nodes:
                item.report.add(item.pos, item.path, f"duplicate descriptor composite key '{stats}{joined}'")
                ok = False
                continue
            level.nodes[joined] = node
            if "*" in joined:
                level.wildcards.append((joined, tuple(joined.split("*"))))
        return level if ok else None

    def node(self, item: Field, where: str, stats: str, path: tuple[Any, ...]) -> _Node | None:
        keys = item.mapping(DESCRIPTOR_KEYS)
        if keys is None:
            return None
        key = keys["key"].string() if "key" in keys and keys["key"].value is not None else ""
        if key == "":
            item.report.add(
                item.pos, keys["key"].path if "key" in keys else item.path, "descriptor has empty key"
            )
            return None
        # The service reads a value of "" (or null) as no value: the key alone.
        value = keys["value"].string() if "value" in keys and keys["value"].value is not None else ""
        if key is None or value is None:
            return None
        joined = f"{key}_{value}" if value else key
        flags = {name: bool(keys[name].boolean()) if name in keys else False for name in _FLAGS}
        ok = True
        if flags["share_threshold"] and "*" not in joined:
            g = keys["share_threshold"]
            g.report.add(
                g.pos,
                g.path,
                "share_threshold can only be used with wildcard values (containing '*'),"
                f" but found key '{joined}'",
            )
            ok = False
        for name in ("detailed_metric", "value_to_metric"):
            if flags[name]:
                _note(self.notes, keys[name], "changes the service's stats key only; no effect in the app")
        metadata = None
        if "metadata" in keys:
            read, metadata = _read_metadata(keys["metadata"], self.notes)
            ok = ok and read
        label = f"{where}.{key}" + (f"={value}" if value else "")
        step = (*path, (key, (value or None) if key == "generic_key" else None))
        limit = None
        if "rate_limit" in keys:
            limit = _read_limit(keys["rate_limit"], label, flags, metadata, stats + joined, self.notes)
            ok = ok and limit is not None
        children: _Level | None = _Level()
        if "descriptors" in keys and keys["descriptors"].value is not None:
            children = self.level(keys["descriptors"], label, f"{stats}{joined}.", step)
        if children is None or not ok:
            return None
        if limit is not None and step not in self.paths:
            self.paths.append(step)
        return _Node(key, value or None, limit, children, flags["value_to_metric"], flags["share_threshold"])


_FLAGS = ("shadow_mode", "quota_mode", "detailed_metric", "value_to_metric", "share_threshold")


def _note(notes: list[str], f: Field, message: str) -> None:
    """An accepted field the app gives no meaning to (``ratelimit check`` prints it)."""
    notes.append(f.report.line(f.pos, f.path, message))


def _read_limit(
    f: Field,
    label: str,
    flags: dict[str, bool],
    metadata: dict[str, Any] | None,
    stats: str,
    notes: list[str],
) -> DescriptorLimit | None:
    keys = f.mapping(LIMIT_KEYS)
    if keys is None:
        return None
    ok = True
    name = keys["name"].string(RULE_NAME, "a name (letters, digits, . _ -)") if "name" in keys else None
    replaces: set[str] = set()
    for r in (keys["replaces"].items() or []) if "replaces" in keys else []:
        got = r.mapping(("name",))
        if got is None:
            ok = False
            continue
        gone = got["name"].string() if "name" in got and got["name"].value is not None else ""
        if gone == "":
            r.report.add(r.pos, r.path, "should not have an empty replaces entry")
            ok = False
        elif gone is not None and gone == name:
            got["name"].report.add(
                got["name"].pos, got["name"].path, "replaces should not contain name of same descriptor"
            )
            ok = False
        elif gone is not None:
            replaces.add(gone)
    unlimited = keys["unlimited"].boolean() if "unlimited" in keys else False
    common: dict[str, Any] = {
        "quota_mode": flags["quota_mode"],
        "detailed_metric": flags["detailed_metric"],
        "metadata": metadata,
        "stats_key": stats,
    }
    head = (label if name is None else name, name, frozenset(replaces), flags["shadow_mode"])
    if unlimited:
        for extra in ("unit", "unit_multiplier"):
            if extra in keys:
                keys[extra].report.add(
                    keys[extra].pos, keys[extra].path, f"should not specify rate limit {extra} when unlimited"
                )
                ok = False
        if "requests_per_unit" in keys:
            _note(notes, keys["requests_per_unit"], "ignored: the limit is unlimited (as in the service)")
        named = "name" not in keys or name is not None
        return DescriptorLimit((), *head, **common) if ok and named else None
    unit = keys["unit"].string() if "unit" in keys and keys["unit"].value is not None else ""
    if unit is not None and unit.lower() not in UNITS:
        where = keys.get("unit", f)
        where.report.add(
            where.pos,
            where.path if "unit" in keys else f"{f.path}.unit",
            f"invalid rate limit unit '{unit}' (expected one of: {', '.join(UNITS)})",
        )
        return None
    if "requests_per_unit" not in keys:
        f.report.add(
            f.pos,
            f.path,
            "needs requests_per_unit (the service reads a missing one as 0, denying every request:"
            " write 0 for that)",
        )
        return None
    count = keys["requests_per_unit"].integer()
    multiplier = keys["unit_multiplier"].integer(1) if "unit_multiplier" in keys else 1
    if count is None or unit is None or multiplier is None or not ok or ("name" in keys and name is None):
        return None
    try:
        rate = Rate(count, float(UNITS[unit.lower()] * multiplier))
    except ValueError as exc:
        f.fail("a limit this library can count", str(exc))
        return None
    return DescriptorLimit((rate,), *head, unit.lower(), count, multiplier, **common)


def _read_metadata(f: Field, notes: list[str]) -> tuple[bool, dict[str, Any] | None]:
    """``metadata``: any mapping of JSON-like values, as the service turns it into a Struct."""
    if not isinstance(f.value, Mapping):
        f.fail("a mapping")
        return False, None
    try:
        converted = _json_like(f.value)
    except ValueError as exc:
        f.report.add(f.pos, f.path, f"error parsing metadata: {exc}")
        return False, None
    _note(notes, f, "kept for ratelimit serve's response metadata; no effect in the app")
    return True, converted or None


def _json_like(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_like(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_like(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    raise ValueError(f"invalid type: {type(value).__name__} ({value!r:.40})")


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

    def charge(self, entries: Sequence[tuple[str, str]]) -> Charge | None:
        """The charge of one request descriptor, or None when no limit applies to it.

        Its ``counted`` is the counter's identity, keyed by domain as the service keys
        counters (entries of one domain share them); a value matched by a
        ``share_threshold`` wildcard is replaced by the wildcard, so all such values share
        one counter.
        """
        found = self.tree.match(entries)
        return None if found is None else self.charge_of(found)

    def counter(self, entries: Sequence[tuple[str, str]]) -> str:
        """The counter identity of ``entries`` in this domain (``envoy:<domain>/k=v/k=v``)."""
        return self._prefix + "/".join(f"{k}={v}" for k, v in entries)

    def charge_of(self, found: DescriptorMatch) -> Charge:
        """The charge of a request descriptor :meth:`DescriptorTree.match` found a limit for."""
        limit = found.limit
        counted = self.counter(found.counter_entries)
        names = (limit.policy,) * len(limit.rates)
        shadow = limit.shadow or self.shadow
        return Charge(limit.label or self.name, counted, limit.rates, names, 1, shadow, limit.replaces)

    def charges(self, request: RequestInfo, ip_key: Callable[[RequestInfo], str | None]) -> list[Charge]:
        """One charge per request descriptor that has a limit (unlimited ones included, for replaces).

        ``quota_mode`` limits deny only when all of a request's quota-mode limits are over.
        With one, that is its own limit; several are decided together in the service, which
        an all-or-nothing decision cannot do, so several count and report without denying.
        """
        charges: dict[str, Charge] = {}
        quota: list[str] = []
        for entries in self.entries(request, ip_key):
            found = self.tree.match(entries)
            if found is None:
                continue
            charge = self.charge_of(found)
            if charge.counted in charges:
                continue
            charges[charge.counted] = charge
            if found.limit.quota_mode and found.limit.rates:
                quota.append(charge.counted)
        if len(quota) > 1:
            for counted in quota:
                charges[counted] = dataclasses.replace(charges[counted], shadow=True)
        return list(charges.values())
