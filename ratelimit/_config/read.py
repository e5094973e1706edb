"""Read a config document (docs/configuration.md) into rules, settings and limiter options."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._core.located_yaml import YAMLError, load_documents
from .._core.reader import Field
from .._policy.envoy_actions import Action, read_actions
from ..envoy import DescriptorRule, read_service_config
from ..rules import RULE_NAME, Rule
from .keys import HEADER_NAME, KeyMaker
from .rules import MISSING, read_match, read_rule

__all__ = ["Document", "read_document"]

_TOP = ("version", "backend", "identity", "headers", "shadow", "rules", "envoy")
_BACKEND = ("storage", "prefix", "hash_tag", "timeout", "failure_mode", "deny_cache")
_IDENTITY = ("trusted_proxies", "missing", "claim_headers", "jwt")
_JWT = (
    "jwks_url",
    "key_file",
    "key_env",
    "issuer",
    "audience",
    "algorithms",
    "leeway",
    "require",
    "jwks_ttl",
    "token_cache_size",
)
_ENVOY = ("name", "file", "domain", "descriptors", "match", "rate_limits")


@dataclass
class Document:
    """What a config file says: rules and settings, plus the files it was read from."""

    rules: list[Any] = field(default_factory=list)
    limiter: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    service_format: bool = False  # a bare envoyproxy/ratelimit service config


def read_document(text: str, source: str, base: Path | None) -> Document:
    """Read one config file's text; errors go to ``report`` (raised by the caller)."""
    from .._core.reader import Report

    report = Report(source)
    doc = Document()
    try:
        docs = load_documents(text)
    except YAMLError as exc:
        report.errors.append(f"{source}:{exc}")
        raise Invalid(report.errors) from None
    if len(docs) != 1:
        report.add(None, "", f"expected one YAML document, found {len(docs)}")
        raise Invalid(report.errors)
    top = Field(docs[0], "", getattr(docs[0], "at", None), report)
    if _is_service_config(top.value):  # a bare envoyproxy/ratelimit config
        doc.service_format = True
        tree = read_service_config(top)
        if tree is not None:
            doc.rules.append(DescriptorRule(_envoy_slug(f"envoy-{tree.domain}"), tree))
    else:
        _read_top(top, doc, base)
    if report.errors:
        raise Invalid(report.errors)
    return doc


def _is_service_config(value: Any) -> bool:
    """A top level with ``domain``, or ``descriptors`` and none of this format's keys."""
    if not isinstance(value, dict):
        return False
    return "domain" in value or ("descriptors" in value and not set(value) & set(_TOP))


class Invalid(Exception):
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
    maker = _read_identity(keys["identity"], settings) if "identity" in keys else KeyMaker(0, {}, None)
    taken: set[str] = set()
    read: list[tuple[Field, Rule]] = []
    for rf in keys["rules"].items() or [] if "rules" in keys else []:
        rule = read_rule(rf, maker, shadow, taken)
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


def _read_identity(f: Field, settings: dict[str, Any]) -> KeyMaker:
    keys = f.mapping(_IDENTITY) or {}
    proxies = keys["trusted_proxies"].integer() if "trusted_proxies" in keys else 0
    settings["trusted_proxies"] = proxies or 0
    if "missing" in keys and (m := keys["missing"].choice(MISSING)) is not None:
        settings["missing_identity"] = m
    claim_headers: dict[str, str] = {}
    for claim, g in (keys["claim_headers"].entries() or {} if "claim_headers" in keys else {}).items():
        h = g.string(HEADER_NAME, "a header name")
        if h is not None:
            claim_headers[claim] = h.lower()
    verifier = _read_jwt(keys["jwt"]) if "jwt" in keys else None
    return KeyMaker(proxies or 0, claim_headers, verifier)


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
    for name in ("issuer", "audience", "algorithms", "require"):
        if name in keys:
            values = [g.string() for g in keys[name].many()]
            options[name] = values if name in ("algorithms", "require") or len(values) > 1 else values[0]
    for name in ("leeway", "jwks_ttl"):
        if name in keys:
            options[name] = keys[name].duration()
    if "token_cache_size" in keys:
        options["cache_size"] = keys["token_cache_size"].integer()
    if any(v is None or (isinstance(v, list) and None in v) for v in options.values()):
        return None
    from .._policy.jwt_verify import JWTVerifier

    try:
        return JWTVerifier(**options)
    except (ValueError, TypeError, ImportError) as exc:
        f.fail("valid JWT verification settings", str(exc))
        return None


def _read_envoy(f: Field, shadow: bool, taken: set[str], base: Path | None, doc: Document) -> Any:
    keys = f.mapping(_ENVOY)
    if keys is None:
        return None
    if ("file" in keys) == ("domain" in keys or "descriptors" in keys):
        f.report.add(f.pos, f.path, "needs either file, or domain and descriptors inline")
        return None
    if "file" in keys:
        config = _read_envoy_file(keys["file"], base, doc)
    else:
        inline = {k: f.value[k] for k in ("domain", "descriptors") if k in f.value}
        config = read_service_config(Field(inline, f.path, f.pos, f.report))
    route = read_match(keys["match"]) if "match" in keys else {}
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
    name = (
        keys["name"].string(RULE_NAME, "a rule name")
        if "name" in keys
        else _envoy_slug(f"envoy-{config.domain}")
    )
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
    except Invalid as exc:
        f.report.errors.extend(exc.errors)
        return None
    found = [r for r in inner.rules if isinstance(r, DescriptorRule)]
    if len(found) != 1:
        f.fail("a file with top-level domain and descriptors")
        return None
    return found[0].tree


def _envoy_slug(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "envoy"
    return (
        cleaned[:55] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8] if len(cleaned) > 64 else cleaned
    )
