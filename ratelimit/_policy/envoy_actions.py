"""Envoy route ``rate_limits`` actions: how a request becomes descriptor entries.

Supported, as Envoy evaluates them: ``request_headers`` (with ``skip_if_absent``),
``remote_address``, ``generic_key`` and ``header_value_match``. An action that cannot
produce its entry drops the whole descriptor, as in Envoy. Actions that need Envoy's
own state (clusters, metadata) cannot run in the app and are refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .._core.reader import Field
from ..matchers import HeaderMatch, header_value
from ..request import RequestInfo

__all__ = [
    "ENVOY_ONLY_ACTIONS",
    "SKIP",
    "Action",
    "constant_entry",
    "header_entry",
    "read_actions",
    "read_header_matcher",
    "remote_address_entry",
]

SKIP = ("", "")  # an entry left out (request_headers with skip_if_absent)
Action = Callable[[RequestInfo, Any], "tuple[str, str] | None"]

ENVOY_ONLY_ACTIONS = (
    "source_cluster",
    "destination_cluster",
    "dynamic_metadata",
    "metadata",
    "masked_remote_address",
    "query_parameters",
    "query_parameter_value_match",
    "extension",
)
_ACTIONS = ("request_headers", "remote_address", "generic_key", "header_value_match")
_HEADER = re.compile(r":?[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_MATCH_KEYS = (
    "name", "exact_match", "prefix_match", "suffix_match", "contains_match", "safe_regex_match",
    "present_match", "string_match", "invert_match", "treat_missing_header_as_empty",
)  # fmt: skip


def read_header_matcher(f: Field) -> HeaderMatch | None:
    """An Envoy ``HeaderMatcher`` (``name`` plus one way to match)."""
    keys = f.mapping(_MATCH_KEYS, required=("name",))
    if keys is None or "name" not in keys:
        return None
    name = keys["name"].string(_HEADER, "a header name")
    invert = keys["invert_match"].boolean() if "invert_match" in keys else False
    ways = [k for k in keys if k not in ("name", "invert_match", "treat_missing_header_as_empty")]
    if len(ways) > 1:
        f.fail("one way to match", f"got {', '.join(ways)}")
        return None
    kind, value, ignore_case = "present", "true", False
    if ways:
        way = ways[0]
        g = keys[way]
        if way == "present_match":
            kind, value = "present", "true" if g.boolean() else "false"
        elif way == "safe_regex_match":
            regex = g.mapping(("google_re2", "regex"), required=("regex",))
            kind, value = "regex", (regex["regex"].string() or "") if regex and "regex" in regex else ""
        elif way == "string_match":
            kind, value, ignore_case = _string_match(g)
        else:
            kind, value = way.removesuffix("_match"), g.string() or ""
    if name is None or invert is None:
        return None
    matcher: Any = kind
    return f.convert(
        lambda _: HeaderMatch(name, matcher, value, invert, ignore_case), "a valid header matcher"
    )


def _string_match(f: Field) -> tuple[str, str, bool]:
    keys = f.mapping(("exact", "prefix", "suffix", "contains", "safe_regex", "ignore_case")) or {}
    ignore = bool(keys["ignore_case"].boolean()) if "ignore_case" in keys else False
    ways = [k for k in keys if k != "ignore_case"]
    if len(ways) != 1:
        f.fail("exactly one of exact, prefix, suffix, contains, safe_regex")
        return "exact", "", ignore
    if ways[0] == "safe_regex":
        regex = keys["safe_regex"].mapping(("google_re2", "regex"), required=("regex",)) or {}
        return "regex", (regex["regex"].string() or "") if "regex" in regex else "", ignore
    return ways[0], keys[ways[0]].string() or "", ignore


def header_entry(name: str, key: str, skip_if_absent: bool = False) -> Action:
    """``(key, value of header name)``; an absent header drops the descriptor (or is skipped)."""
    lname = name.lower()

    def action(request: RequestInfo, ip_key: Callable[[RequestInfo], str | None]) -> tuple[str, str] | None:
        value = header_value(request, lname)
        if value is None:
            return SKIP if skip_if_absent else None
        return (key, value)

    return action


def remote_address_entry(
    request: RequestInfo, ip_key: Callable[[RequestInfo], str | None]
) -> tuple[str, str] | None:
    """``("remote_address", client IP)``, the IP read behind the trusted proxies."""
    ip = ip_key(request)
    return ("remote_address", ip) if ip else None


def constant_entry(key: str, value: str) -> Action:
    """The same entry for every request (``generic_key``)."""
    entry = (key, value)
    return lambda request, ip_key: entry


def _request_headers(f: Field) -> Action | None:
    keys = f.mapping(("header_name", "descriptor_key", "skip_if_absent"), ("header_name", "descriptor_key"))
    if not keys or "header_name" not in keys or "descriptor_key" not in keys:
        return None
    name = keys["header_name"].string(_HEADER, "a header name")
    key = keys["descriptor_key"].string()
    skip = keys["skip_if_absent"].boolean() if "skip_if_absent" in keys else False
    if name is None or key is None:
        return None
    return header_entry(name, key, bool(skip))


def _remote_address(f: Field) -> Action | None:
    if f.value not in (None, {}) and f.mapping(()) is None:
        return None
    return remote_address_entry


def _generic_key(f: Field) -> Action | None:
    keys = f.mapping(("descriptor_value", "descriptor_key"), ("descriptor_value",))
    if not keys or "descriptor_value" not in keys:
        return None
    key = (keys["descriptor_key"].string() or "generic_key") if "descriptor_key" in keys else "generic_key"
    return constant_entry(key, keys["descriptor_value"].string() or "")


def _header_value_match(f: Field) -> Action | None:
    keys = f.mapping(("descriptor_value", "descriptor_key", "expect_match", "headers"), ("descriptor_value",))
    if not keys or "descriptor_value" not in keys:
        return None
    key = (keys["descriptor_key"].string() or "header_match") if "descriptor_key" in keys else "header_match"
    entry = (key, keys["descriptor_value"].string() or "")
    expect = keys["expect_match"].boolean() if "expect_match" in keys else True
    matchers = [read_header_matcher(g) for g in keys["headers"].items() or []] if "headers" in keys else []
    if None in matchers or expect is None:
        return None
    found = [m for m in matchers if m is not None]

    def action(request: RequestInfo, ip_key: Callable[[RequestInfo], str | None]) -> tuple[str, str] | None:
        return entry if all(m(request) for m in found) == expect else None

    return action


_READERS = {
    "request_headers": _request_headers,
    "remote_address": _remote_address,
    "generic_key": _generic_key,
    "header_value_match": _header_value_match,
}


def read_actions(f: Field) -> list[Action] | None:
    """One ``rate_limits`` entry's ``actions``: a list of one-key mappings."""
    out: list[Action] = []
    for item in f.items() or []:
        if not isinstance(item.value, dict) or len(item.value) != 1:
            item.fail("an action: a mapping with one of " + ", ".join(_ACTIONS))
            return None
        (name,) = item.value
        if name in ENVOY_ONLY_ACTIONS:
            item.report.add(
                item.pos, item.path, f"the action {name!r} needs Envoy's own state and cannot run in the app"
            )
            return None
        if name not in _READERS:
            item.fail("an action: one of " + ", ".join(_ACTIONS), f"unknown action {name!r}")
            return None
        action = _READERS[name](item.child(name))
        if action is None:
            return None
        out.append(action)
    return out or None
