"""Config file rules: ``rules[]`` entries, their ``match``, ``tiers`` and ``overrides``."""

from __future__ import annotations

import re
from typing import Any

from .._core.reader import Field
from ..keys import api_key, constant
from ..matchers import HeaderMatch, HostPattern
from ..request import Headers, RequestInfo
from ..rules import RULE_NAME, Rule, Tiers, compile_path, parse_limits
from .keys import HEADER_NAME, KeyMaker

__all__ = ["MISSING", "read_match", "read_rule"]

_RULE = (
    "name",
    "match",
    "key",
    "limits",
    "limit",
    "tiers",
    "overrides",
    "cost",
    "shadow",
    "missing",
    "replaces",
)
_MATCH = ("paths", "path", "methods", "hosts", "headers", "grpc")
_HEADER_MATCH = ("exact", "prefix", "suffix", "contains", "regex", "present", "invert", "ignore_case")
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
MISSING = ("ip", "anonymous", "reject")
_GRPC_NAME = re.compile(r"\*|[A-Za-z_][A-Za-z0-9_.]*")
_RATES = "a rate like '100/minute', a list of rates, or 'unlimited'"


def _read_limits(f: Field) -> Any:
    return f.convert(parse_limits, _RATES)


def read_rule(f: Field, maker: KeyMaker, shadow: bool, taken: set[str]) -> Rule | None:
    keys = f.mapping(_RULE, required=("name",))
    if keys is None or "name" not in keys:
        return None
    name = keys["name"].string(RULE_NAME, "a rule name (letters, digits, . _ -, at most 64)")
    if name is not None and name in taken:
        keys["name"].fail("a name no other rule has", "duplicate")
    taken.add(name or "")
    given = [k for k in ("limits", "limit") if k in keys]
    if len(given) > 1:
        f.report.add(f.pos, f.path, "give limits or limit, not both")
    if not given and "tiers" not in keys:
        f.report.add(f.pos, f.path, "missing required key 'limits' (or 'tiers')")
    rates = _read_limits(keys[given[0]]) if given else ()
    match = read_match(keys["match"]) if "match" in keys else {}
    key = maker.read(keys["key"]) if "key" in keys else constant()
    tiers = _read_tiers(keys["tiers"], maker) if "tiers" in keys else None
    overrides = _read_overrides(keys["overrides"], key) if "overrides" in keys else {}
    cost = keys["cost"].integer() if "cost" in keys else 1
    own_shadow = keys["shadow"].boolean() if "shadow" in keys else False
    missing = keys["missing"].choice(MISSING) if "missing" in keys else None
    replaces = [g.string() for g in keys["replaces"].many()] if "replaces" in keys else []
    parts = (rates, key, own_shadow)
    if name is None or match is None or cost is None or overrides is None or any(p is None for p in parts):
        return None
    if ("tiers" in keys and tiers is None) or None in replaces or ("missing" in keys and missing is None):
        return None
    try:
        return Rule.of(
            name, rates, key, cost=cost, shadow=shadow or bool(own_shadow), tiers=tiers,
            overrides=overrides, replaces=frozenset(r for r in replaces if r), missing=missing, **match,
        )  # fmt: skip
    except (ValueError, TypeError) as exc:
        f.fail("a valid rule", str(exc))
        return None


def read_match(f: Field) -> dict[str, Any] | None:
    keys = f.mapping(_MATCH)
    if keys is None:
        return None
    out: dict[str, Any] = {}
    ok = True
    paths: list[str] = []
    for name in ("paths", "path"):
        for g in keys[name].many() if name in keys else []:
            p = g.string()
            if (
                p is not None
                and g.convert(compile_path, "a path pattern: /exact, /one/*, /below/**, {param}, re:...")
                is None
            ):
                p = None
            ok = ok and p is not None
            paths.append(p or "")
    for g in keys["grpc"].many() if "grpc" in keys else []:
        gk = g.mapping(("service", "method"), required=("service",)) or {}
        service = (
            gk["service"].string(_GRPC_NAME, "a gRPC service name like shop.Cart, or *")
            if "service" in gk
            else None
        )
        method = gk["method"].string(_GRPC_NAME, "a gRPC method name, or *") if "method" in gk else "*"
        ok = ok and service is not None and method is not None
        paths.append(f"/{service}/{method}")
    if paths:
        out["paths"] = paths
    if "methods" in keys:
        methods = [g.choice(_METHODS) for g in keys["methods"].many()]
        ok = ok and None not in methods
        out["methods"] = [m for m in methods if m]
    if "hosts" in keys:
        hosts = [
            g.convert(lambda v: HostPattern(str(v)), "a host name, or *.example.com")
            for g in keys["hosts"].many()
        ]
        ok = ok and None not in hosts
        out["hosts"] = hosts
    if "headers" in keys:
        matchers = [_read_header_match(n, g) for n, g in (keys["headers"].entries() or {}).items()]
        ok = ok and None not in matchers
        out["headers"] = matchers
    return out if ok else None


def _read_header_match(name: str, f: Field) -> HeaderMatch | None:
    if not HEADER_NAME.fullmatch(name.lstrip(":")):
        f.fail("a header name as the key")
        return None
    if not isinstance(f.value, dict):
        value = f.string(expected="a value, or a mapping with exact/prefix/suffix/contains/regex/present")
        return HeaderMatch(name, "exact", value) if value is not None else None
    keys = f.mapping(_HEADER_MATCH) or {}
    ways = [k for k in keys if k not in ("invert", "ignore_case")]
    if len(ways) != 1:
        f.fail("exactly one of exact, prefix, suffix, contains, regex, present")
        return None
    way = ways[0]
    value = ("true" if keys[way].boolean() else "false") if way == "present" else keys[way].string()
    invert = keys["invert"].boolean() if "invert" in keys else False
    ignore = keys["ignore_case"].boolean() if "ignore_case" in keys else False
    if value is None or invert is None or ignore is None:
        return None
    kind: Any = way
    return f.convert(lambda _: HeaderMatch(name, kind, value, invert, ignore), "a valid header condition")


def _read_tiers(f: Field, maker: KeyMaker) -> Tiers | None:
    keys = f.mapping(("by", "limits", "default"), required=("by", "limits", "default"))
    if keys is None or len(keys) < 3:
        if keys is not None and "default" not in keys:
            f.report.add(f.pos, f.path, "hint: 'default: unlimited' lets requests of other tiers through")
        return None
    by = maker.read(keys["by"])
    table = keys["limits"].entries()
    levels = {tier: _read_limits(g) for tier, g in (table or {}).items()}
    default = _read_limits(keys["default"])
    if by is None or table is None or default is None or None in levels.values():
        return None
    return Tiers(by, levels, default)


def _read_overrides(f: Field, key: Any) -> dict[str, Any] | None:
    table = f.entries()
    if table is None:
        return None
    out: dict[str, Any] = {}
    for identity, g in table.items():
        limits = _read_limits(g)
        if limits is None:
            return None
        if isinstance(key, api_key):  # written as the API key, counted by its hash
            probe = RequestInfo("http", "GET", "/", Headers([(key.header_name, identity)]))
            identity = key(probe) or ""
        out[identity] = limits
    return out
