"""Read envoyproxy/ratelimit service configs from ConfigMaps (or bare files), kept as they are.

The descriptor engine implements the service's matching, so the tree is copied verbatim;
only fields the service does not define (or the engine does not read) are left out, by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .._core.rate import MAX_LIMIT
from ..envoy import DESCRIPTOR_KEYS, LIMIT_KEYS
from ..envoy import UNITS as _UNIT_SECONDS
from ..rules import RULE_NAME
from ._manifest import Manifest, Report, as_dict, as_list

__all__ = ["ServiceConfig", "read_service_configs"]

# The service's own field names and units, as the engine reads them.
UNITS = tuple(_UNIT_SECONDS)
_DESCRIPTOR = DESCRIPTOR_KEYS
_RATE_LIMIT = LIMIT_KEYS


@dataclass
class ServiceConfig:
    """One service config: a domain and its descriptor tree."""

    source: Manifest
    where: str
    domain: str
    descriptors: list[dict[str, Any]]


def read_service_configs(m: Manifest, report: Report) -> list[ServiceConfig]:
    """The service configs in ConfigMap (or bare config file) ``m``; other data is reported."""
    import yaml

    if m.kind == "ServiceConfig":
        return [_config(m, "", m.body, report)]
    found: list[ServiceConfig] = []
    others: list[str] = []
    for key, text in as_dict(m.body.get("data")).items():
        try:
            doc = yaml.safe_load(text) if isinstance(text, str) else None
        except yaml.YAMLError:
            doc = None
        if isinstance(doc, dict) and "domain" in doc:
            found.append(_config(m, f"data.{key}", doc, report))
        else:
            others.append(f"data.{key}")
    if not found:
        report.add(m, "note", "", "ignored (no envoyproxy/ratelimit config with a domain in its data)")
    for where in others if found else ():
        report.add(m, "note", where, "not a service config (no domain); ignored")
    return found


def _config(m: Manifest, where: str, doc: dict[str, Any], report: Report) -> ServiceConfig:
    prefix = f"{where}: " if where else ""
    for extra in sorted(set(doc) - {"domain", "descriptors"}):
        report.add(m, "untranslated", f"{prefix}{extra}", "not a service config field; left out")
    descriptors = _descriptors(as_list(doc.get("descriptors")), f"{prefix}descriptors", m, report)
    return ServiceConfig(m, where or "(file)", str(doc["domain"]), descriptors)


def _descriptors(items: list[Any], where: str, m: Manifest, report: Report) -> list[dict[str, Any]]:
    out, seen = [], set()
    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"]:
            report.add(m, "untranslated", here, "descriptor without a key; left out")
            continue
        # The service keys a level by "key_value" ("key" alone for no or an empty value).
        value = "" if item.get("value") is None else str(item["value"])
        joined = f"{item['key']}_{value}" if value else item["key"]
        if joined in seen:
            report.add(
                m,
                "untranslated",
                here,
                f"duplicate descriptor composite key {joined!r};"
                " left out (the service refuses the whole config)",
            )
            continue
        seen.add(joined)
        desc: dict[str, Any] = {}
        for name, field_value in item.items():
            if name not in _DESCRIPTOR:
                report.add(m, "untranslated", f"{here}.{name}", "unknown descriptor field; left out")
            elif name == "rate_limit":
                limit = _rate_limit(as_dict(field_value), f"{here}.rate_limit", m, report)
                if limit is not None:
                    desc[name] = limit
            elif name == "descriptors":
                desc[name] = _descriptors(as_list(field_value), f"{here}.descriptors", m, report)
            elif name == "value":
                desc[name] = value
            elif name == "share_threshold" and field_value and "*" not in joined:
                report.add(
                    m,
                    "untranslated",
                    f"{here}.share_threshold",
                    "share_threshold without a wildcard value;"
                    " left out (the service refuses the whole config)",
                )
            else:
                desc[name] = field_value
            if name in _NO_EFFECT and field_value:
                report.add(m, "note", f"{here}.{name}", _NO_EFFECT[name])
        out.append(desc)
    return out


_NO_EFFECT = {
    "detailed_metric": "kept; it names the service's stats only, the app's metrics are per rule",
    "value_to_metric": "kept; it names the service's stats only, the app's metrics are per rule",
    "metadata": "kept for ratelimit serve's response metadata; no effect in the app",
    "quota_mode": "kept: denies only when all of a request's quota-mode limits are over"
    " (in the app, several per request count without denying; docs/configuration.md)",
}


def _rate_limit(limit: dict[str, Any], where: str, m: Manifest, report: Report) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for name, value in limit.items():
        if name not in _RATE_LIMIT:
            report.add(m, "untranslated", f"{where}.{name}", "unknown rate_limit field; left out")
        elif name == "replaces":
            names = []
            for i, r in enumerate(as_list(value)):
                gone = as_dict(r).get("name")
                if not gone or gone == limit.get("name"):
                    why = "an empty replaces entry" if not gone else "a limit that replaces itself"
                    report.add(
                        m,
                        "untranslated",
                        f"{where}.replaces[{i}]",
                        f"{why}; left out (the service refuses it)",
                    )
                else:
                    names.append(str(gone))
            out[name] = [{"name": _limit_name(n, f"{where}.replaces", m, report)} for n in names]
        elif name == "name":
            out[name] = _limit_name(str(value), f"{where}.name", m, report)
        else:
            out[name] = value
    if out.get("unlimited"):
        for extra in ("unit", "unit_multiplier"):
            if extra in out:
                del out[extra]
                report.add(
                    m,
                    "approximated",
                    f"{where}.{extra}",
                    "left out: the limit is unlimited (the service refuses a unit with unlimited)",
                )
        return out
    unit = str(out.get("unit", "")).lower()
    count = out.get("requests_per_unit")
    if unit not in UNITS:
        report.add(
            m,
            "untranslated",
            f"{where}.unit",
            f"unit {out.get('unit')!r} is not one of {UNITS}; this limit was left out",
        )
        return None
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        report.add(
            m,
            "untranslated",
            f"{where}.requests_per_unit",
            f"{count!r} is not a count; this limit was left out",
        )
        return None
    if count > MAX_LIMIT:
        report.add(
            m,
            "approximated",
            f"{where}.requests_per_unit",
            f"{count} is above the {MAX_LIMIT} the app counts to; written as {MAX_LIMIT}",
        )
        out["requests_per_unit"] = MAX_LIMIT
    return out


def _limit_name(name: str, where: str, m: Manifest, report: Report) -> str:
    """A limit name the engine accepts (it names metrics); the same input always maps alike."""
    if RULE_NAME.fullmatch(name):
        return name
    fixed = (re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._") or "limit")[:64]
    report.add(m, "approximated", where, f"name {name!r} written as {fixed!r} (letters, digits, . _ -)")
    return fixed
