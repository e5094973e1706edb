"""Read a config document (docs/configuration.md) into rules, settings and limiter options."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._envoy_actions import Action, read_actions
from ._reader import Field
from ._yaml import YAMLError, load_documents
from .envoy import DescriptorRule, read_service_config
from .keys import api_key, client_ip, compose, constant, header, jwt_claim
from .matchers import HeaderMatch, HostPattern
from .request import Headers, RequestInfo
from .rules import _NAME, Rule, Tiers, compile_path, parse_limits

__all__ = ["Document", "read_document"]

_TOP = ("version", "backend", "identity", "headers", "shadow", "rules", "envoy")
_BACKEND = ("storage", "prefix", "hash_tag", "timeout", "failure_mode", "deny_cache")
_IDENTITY = ("trusted_proxies", "missing", "claim_headers", "jwt")
_JWT = ("jwks_url", "key_file", "key_env", "issuer", "audience", "algorithms", "leeway")
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
_ENVOY = ("name", "file", "domain", "descriptors", "match", "rate_limits")
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")
_MISSING = ("ip", "anonymous", "reject")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_GRPC_NAME = re.compile(r"\*|[A-Za-z_][A-Za-z0-9_.]*")
_RATES = "a rate like '100/minute', a list of rates, or 'unlimited'"


class _RequestPart:
    """A key from the request itself: its path, method or host."""

    def __init__(self, part: str) -> None:
        self.part = part

    def __repr__(self) -> str:
        return self.part

    def __call__(self, request: RequestInfo) -> str | None:
        value: str | None = getattr(request, self.part)
        return value or None


@dataclass
class Document:
    """What a config file says: rules and settings, plus the files it was read from."""

    rules: list[Any] = field(default_factory=list)
    limiter: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


class _Keys:
    """Key expressions (``claim:sub``, ``ip``, ``[claim:tenant, ip]``) -> key functions, one object each."""

    def __init__(self, proxies: int, claim_headers: dict[str, str], verifier: Any) -> None:
        self.proxies, self.claim_headers, self.verifier = proxies, claim_headers, verifier
        self.made: dict[str, Any] = {}

    def read(self, f: Field) -> Any:
        if isinstance(f.value, list):
            parts = [self.read(g) for g in f.items() or []]
            if not parts or any(p is None for p in parts):
                if not parts:
                    f.fail("a non-empty list of keys")
                return None
            return parts[0] if len(parts) == 1 else compose(*parts)
        text = f.string(
            expected="a key: global, ip, header:NAME, claim:NAME, api_key:NAME, path, method, host"
        )
        if text is None:
            return None
        try:
            return self.make(text.strip())
        except ValueError as exc:
            f.fail("a key: global, ip, header:NAME, claim:NAME, api_key:NAME, path, method, host", str(exc))
            return None

    def make(self, text: str) -> Any:
        if text in self.made:
            return self.made[text]
        kind, _, arg = text.partition(":")
        if kind in ("global", "ip", "path", "method", "host") and arg:
            raise ValueError(f"{kind!r} takes no argument")
        if kind in ("header", "claim", "api_key") and not _HEADER_NAME.fullmatch(arg):
            raise ValueError(f"{kind}: needs a name after the colon")
        if kind == "global":
            key: Any = constant()
        elif kind == "ip":
            key = client_ip(self.proxies)
        elif kind in ("path", "method", "host"):
            key = _RequestPart(kind)
        elif kind == "header":
            key = header(arg)
        elif kind == "api_key":
            key = api_key(arg)
        elif kind == "claim":
            trusted = self.claim_headers.get(arg)
            if trusted is None and self.verifier is None:
                raise ValueError(f"claim {arg!r} needs identity.jwt, or identity.claim_headers.{arg}")
            key = jwt_claim(arg, trusted_header=trusted, verifier=self.verifier)
        else:
            raise ValueError(f"unknown key kind {kind!r}")
        self.made[text] = key
        return key


def read_document(text: str, source: str, base: Path | None) -> Document:
    """Read one config file's text; errors go to ``report`` (raised by the caller)."""
    from ._reader import Report

    report = Report(source)
    doc = Document()
    try:
        docs = load_documents(text)
    except YAMLError as exc:
        report.errors.append(f"{source}:{exc}")
        raise _Invalid(report.errors) from None
    if len(docs) != 1:
        report.add(None, "", f"expected one YAML document, found {len(docs)}")
        raise _Invalid(report.errors)
    top = Field(docs[0], "", getattr(docs[0], "at", None), report)
    if isinstance(top.value, dict) and "domain" in top.value:  # a bare envoyproxy/ratelimit config
        tree = read_service_config(top)
        if tree is not None:
            doc.rules.append(DescriptorRule(_slug(f"envoy-{tree.domain}"), tree))
    else:
        _read_top(top, doc, base)
    if report.errors:
        raise _Invalid(report.errors)
    return doc


class _Invalid(Exception):
    def __init__(self, errors: list[str]) -> None:
        errors = sorted(errors, key=_place)
        super().__init__("\n".join(errors))
        self.errors = errors


def _place(error: str) -> tuple[str, int, int]:
    """Sort errors by file, then line and column."""
    m = re.match(r"(.*?):(\d+):(\d+): ", error)
    return (m.group(1), int(m.group(2)), int(m.group(3))) if m else (error.split(":")[0], 0, 0)


def _read_top(top: Field, doc: Document, base: Path | None) -> None:
    keys = top.mapping(_TOP)
    if keys is None:
        return
    if "version" in keys and keys["version"].value != 1:
        keys["version"].fail("1")
    if "backend" in keys:
        _read_backend(keys["backend"], doc.limiter)
    shadow = bool(keys["shadow"].boolean()) if "shadow" in keys else False
    settings = doc.settings
    if "headers" in keys and (h := keys["headers"].mapping(("enabled", "legacy"))) is not None:
        for name, target in (("enabled", "headers"), ("legacy", "legacy_headers")):
            if name in h and (b := h[name].boolean()) is not None:
                settings[target] = b
    maker = _read_identity(keys["identity"], settings) if "identity" in keys else _Keys(0, {}, None)
    taken: set[str] = set()
    read: list[tuple[Field, Rule]] = []
    for rf in keys["rules"].items() or [] if "rules" in keys else []:
        rule = _read_rule(rf, maker, shadow, taken)
        if rule is not None:
            read.append((rf, rule))
            doc.rules.append(rule)
    for ef in keys["envoy"].items() or [] if "envoy" in keys else []:
        envoy_rule = _read_envoy(ef, shadow, taken, base, doc)
        if envoy_rule is not None:
            doc.rules.append(envoy_rule)
    for rf, rule in read:
        for gone in sorted(rule.replaces - taken):
            rf.report.add(rf.pos, f"{rf.path}.replaces", f"no rule named {gone!r}")


def _read_backend(f: Field, out: dict[str, Any]) -> None:
    keys = f.mapping(_BACKEND)
    if keys is None:
        return
    readers = {
        "storage": lambda g: g.string(),
        "prefix": lambda g: g.string(
            re.compile(r"[A-Za-z0-9._:-]{1,64}"), "a key prefix (letters, digits, . _ : -)"
        ),
        "hash_tag": lambda g: g.string(),
        "timeout": lambda g: g.duration(),
        "failure_mode": lambda g: g.choice(("open", "closed", "local")),
        "deny_cache": lambda g: g.boolean(),
    }
    for name, g in keys.items():
        value = readers[name](g)
        if value is not None:
            out[name] = value
    if "timeout" in out and not 0 < out["timeout"] <= 60:
        keys["timeout"].fail("a timeout between 1ms and 60s")


def _read_identity(f: Field, settings: dict[str, Any]) -> _Keys:
    keys = f.mapping(_IDENTITY) or {}
    proxies = keys["trusted_proxies"].integer() if "trusted_proxies" in keys else 0
    settings["trusted_proxies"] = proxies or 0
    if "missing" in keys and (m := keys["missing"].choice(_MISSING)) is not None:
        settings["missing_identity"] = m
    claim_headers: dict[str, str] = {}
    if "claim_headers" in keys and (
        ch := keys["claim_headers"].mapping(list(keys["claim_headers"].value or {}))
    ):
        for claim, g in ch.items():
            h = g.string(_HEADER_NAME, "a header name")
            if h is not None:
                claim_headers[str(claim)] = h.lower()
    verifier = _read_jwt(keys["jwt"]) if "jwt" in keys else None
    return _Keys(proxies or 0, claim_headers, verifier)


def _read_jwt(f: Field) -> Any:
    keys = f.mapping(_JWT)
    if keys is None:
        return None
    sources = [k for k in ("jwks_url", "key_file", "key_env") if k in keys]
    if len(sources) != 1:
        f.report.add(f.pos, f.path, "needs exactly one of jwks_url, key_file, key_env")
        return None
    options: dict[str, Any] = {}
    if "jwks_url" in keys:
        options["jwks_url"] = keys["jwks_url"].string()
    elif "key_file" in keys and (path := keys["key_file"].string()) is not None:
        try:
            options["key"] = Path(path).read_bytes()
        except OSError as exc:
            keys["key_file"].fail("a readable PEM file", exc.strerror or str(exc))
            return None
    elif "key_env" in keys and (name := keys["key_env"].string()) is not None:
        if not os.environ.get(name):
            keys["key_env"].fail("the name of a set environment variable")
            return None
        options["key"] = os.environ[name]
    for name in ("issuer", "audience", "algorithms"):
        if name in keys:
            values = [g.string() for g in keys[name].many()]
            options[name] = values if name == "algorithms" or len(values) > 1 else values[0]
    if "leeway" in keys:
        options["leeway"] = keys["leeway"].duration()
    if any(v is None or (isinstance(v, list) and None in v) for v in options.values()):
        return None
    from ._jwt import JWTVerifier

    try:
        return JWTVerifier(**options)
    except (ValueError, TypeError, ImportError) as exc:
        f.fail("valid JWT verification settings", str(exc))
        return None


def _read_limits(f: Field) -> Any:
    return f.convert(parse_limits, _RATES)


def _read_rule(f: Field, maker: _Keys, shadow: bool, taken: set[str]) -> Rule | None:
    keys = f.mapping(_RULE, required=("name",))
    if keys is None or "name" not in keys:
        return None
    name = keys["name"].string(_NAME, "a rule name (letters, digits, . _ -, at most 64)")
    if name is not None and name in taken:
        keys["name"].fail("a name no other rule has", "duplicate")
    taken.add(name or "")
    given = [k for k in ("limits", "limit") if k in keys]
    if len(given) > 1:
        f.report.add(f.pos, f.path, "give limits or limit, not both")
    if not given and "tiers" not in keys:
        f.report.add(f.pos, f.path, "missing required key 'limits' (or 'tiers')")
    rates = _read_limits(keys[given[0]]) if given else ()
    match = _read_match(keys["match"]) if "match" in keys else {}
    key = maker.read(keys["key"]) if "key" in keys else constant()
    tiers = _read_tiers(keys["tiers"], maker) if "tiers" in keys else None
    overrides = _read_overrides(keys["overrides"], key) if "overrides" in keys else {}
    cost = keys["cost"].integer() if "cost" in keys else 1
    own_shadow = keys["shadow"].boolean() if "shadow" in keys else False
    missing = keys["missing"].choice(_MISSING) if "missing" in keys else None
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


def _read_match(f: Field) -> dict[str, Any] | None:
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
        matchers = [
            _read_header_match(str(n), keys["headers"].child(n))
            for n in keys["headers"].mapping(list(keys["headers"].value or {})) or {}
        ]
        ok = ok and None not in matchers
        out["headers"] = matchers
    return out if ok else None


def _read_header_match(name: str, f: Field) -> HeaderMatch | None:
    if not _HEADER_NAME.fullmatch(name.lstrip(":")):
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
    try:
        return HeaderMatch(name, way, value, invert, ignore)  # type: ignore[arg-type]
    except ValueError as exc:
        f.fail("a valid header condition", str(exc))
        return None


def _read_tiers(f: Field, maker: _Keys) -> Tiers | None:
    keys = f.mapping(("by", "limits", "default"), required=("by", "limits", "default"))
    if keys is None or len(keys) < 3:
        if keys is not None and "default" not in keys:
            f.report.add(f.pos, f.path, "hint: 'default: unlimited' lets requests of other tiers through")
        return None
    by = maker.read(keys["by"])
    levels: dict[str, Any] = {}
    table = (
        keys["limits"].mapping([str(k) for k in keys["limits"].value or {}])
        if isinstance(keys["limits"].value, dict)
        else keys["limits"].mapping(())
    )
    for tier, g in (table or {}).items():
        levels[str(tier)] = _read_limits(g)
    default = _read_limits(keys["default"])
    if by is None or table is None or default is None or None in levels.values():
        return None
    return Tiers(by, levels, default)


def _read_overrides(f: Field, key: Any) -> dict[str, Any] | None:
    table = f.mapping([str(k) for k in f.value]) if isinstance(f.value, dict) else f.mapping(())
    if table is None:
        return None
    out: dict[str, Any] = {}
    for identity, g in table.items():
        limits = _read_limits(g)
        if limits is None:
            return None
        if isinstance(key, api_key):  # written as the API key, counted by its hash
            probe = RequestInfo("http", "GET", "/", Headers([(key.header_name, str(identity))]))
            identity = key(probe) or ""
        out[str(identity)] = limits
    return out


def _read_envoy(f: Field, shadow: bool, taken: set[str], base: Path | None, doc: Document) -> Any:
    keys = f.mapping(_ENVOY)
    if keys is None:
        return None
    if ("file" in keys) == ("domain" in keys):
        f.report.add(f.pos, f.path, "needs either file, or domain and descriptors inline")
        return None
    if "file" in keys:
        config = _read_envoy_file(keys["file"], base, doc)
    else:
        inline = {k: f.value[k] for k in ("domain", "descriptors") if k in f.value}
        config = read_service_config(Field(inline, f.path, f.pos, f.report), shadow)
    route = _read_match(keys["match"]) if "match" in keys else {}
    descriptors: list[list[Action]] | None = None
    if "rate_limits" in keys:
        descriptors = []
        for g in keys["rate_limits"].items() or []:
            gk = g.mapping(("actions",), required=("actions",)) or {}
            actions = read_actions(gk["actions"]) if "actions" in gk else None
            if actions is None:
                return None
            descriptors.append(actions)
    if config is None or route is None:
        return None
    name = keys["name"].string(_NAME, "a rule name") if "name" in keys else _slug(f"envoy-{config.domain}")
    if name is None or name in taken:
        f.report.add(f.pos, f.path, f"rule name {name!r} is taken; give this entry a name")
        return None
    taken.add(name)
    return DescriptorRule(name, config, descriptors, Rule.of(name, "unlimited", **route), shadow)


def _read_envoy_file(f: Field, base: Path | None, doc: Document) -> Any:
    name = f.string()
    if name is None:
        return None
    path = (base / name) if base is not None and not os.path.isabs(name) else Path(name)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        f.fail("a readable envoyproxy/ratelimit config file", f"{path}: {exc.strerror or exc}")
        return None
    doc.files.append(path)
    try:
        inner = read_document(text, str(path), path.parent)
    except _Invalid as exc:
        f.report.errors.extend(exc.errors)
        return None
    found = [r for r in inner.rules if isinstance(r, DescriptorRule)]
    if len(found) != 1:
        f.fail("a file with top-level domain and descriptors")
        return None
    return found[0].tree


def _slug(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "envoy"
    return (
        cleaned[:55] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8] if len(cleaned) > 64 else cleaned
    )
