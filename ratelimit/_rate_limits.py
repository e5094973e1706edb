"""Route ``rate_limits`` entries: keep the actions the app can evaluate, report the rest by name."""

from __future__ import annotations

from typing import Any

from ._manifest import Manifest, Report, as_dict, as_list

__all__ = ["ACTIONS", "action_key", "clean_entry"]

# The actions the descriptor engine evaluates, with the fields it reads.
ACTIONS: dict[str, set[str]] = {
    "request_headers": {"header_name", "descriptor_key", "skip_if_absent"},
    "remote_address": set(),
    "generic_key": {"descriptor_value", "descriptor_key"},
    "header_value_match": {"descriptor_value", "descriptor_key", "expect_match", "headers"},
}
_DEFAULT_KEYS = {
    "remote_address": "remote_address",
    "generic_key": "generic_key",
    "header_value_match": "header_match",
}


def action_key(action: dict[str, Any]) -> str:
    """The descriptor key an action produces (``descriptor_key`` or Envoy's default)."""
    name, body = next(iter(action.items()))
    return str(as_dict(body).get("descriptor_key") or _DEFAULT_KEYS.get(name, ""))


def clean_entry(entry: dict[str, Any], where: str, source: Manifest, report: Report) -> dict[str, Any] | None:
    """A ``rate_limits`` entry with only what the engine evaluates; None (reported) if it cannot be."""
    actions = []
    for i, action in enumerate(as_list(entry.get("actions"))):
        here = f"{where}.actions[{i}]"
        name, body = next(iter(as_dict(action).items()), ("(empty)", None))
        if name not in ACTIONS:
            report.add(
                source,
                "untranslated",
                here,
                f"action {name} cannot be evaluated in the app"
                " (it needs Envoy's view of the request); this rate_limits entry was dropped",
            )
            return None
        body = dict(as_dict(body))
        if name == "request_headers" and str(body.get("header_name")).lower() == ":path":
            report.add(
                source,
                "approximated",
                here,
                "Envoy's :path included the query string (/a?b=1 matched"
                " no value /a); the app's path has none, so such requests now match /a",
            )
        if name == "remote_address":
            report.add(
                source,
                "note",
                here,
                "the client IP is read behind identity.trusted_proxies proxies:"
                " set it (1 behind a waypoint), or every request counts as the proxy's address",
            )
        for extra in sorted(set(body) - ACTIONS[name]):
            report.add(source, "untranslated", f"{here}.{name}.{extra}", "field not translated; left out")
            del body[extra]
        for j, matcher in enumerate(as_list(body.get("headers"))):
            matcher = as_dict(matcher)
            if "range_match" in matcher:
                report.add(
                    source,
                    "untranslated",
                    f"{here}.{name}.headers[{j}]",
                    "range_match cannot be translated; this rate_limits entry was dropped",
                )
                return None
        actions.append({name: body})
    for extra in sorted(set(entry) - {"actions", "stage"}):
        report.add(
            source,
            "untranslated",
            f"{where}.{extra}",
            f"{extra} is not translated (runtime keys, dynamic overrides and hits_addend need Envoy)",
        )
    return {"actions": actions} if actions else None
