"""Route ``rate_limits`` entries: keep the actions the app can evaluate, report the rest by name."""

from __future__ import annotations

from typing import Any

from ._manifest import Manifest, Report, as_dict, as_list, is_header, valid_regex

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
                f"action {name} cannot be evaluated in the app (it"
                " needs Envoy's view of the request); this rate_limits entry was dropped",
            )
            return None
        body = {
            k: str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for k, v in as_dict(body).items()
        }
        for extra in sorted(set(body) - ACTIONS[name]):
            report.add(source, "untranslated", f"{here}.{name}.{extra}", "field not translated; left out")
            del body[extra]
        problem = _problem(name, body)
        if problem:
            report.add(
                source, "untranslated", f"{here}.{name}", f"{problem}; this rate_limits entry was dropped"
            )
            return None
        if name == "request_headers" and str(body.get("header_name")).lower() == ":path":
            report.add(
                source,
                "approximated",
                here,
                "Envoy's :path included the query string (/a?b=1"
                " matched no value /a); the app's path has none, so such requests now match /a",
            )
        if name == "remote_address":
            report.add(
                source,
                "note",
                here,
                "the client IP is read behind identity.trusted_proxies"
                " proxies: set it (1 behind a waypoint), or every request counts as the proxy's address",
            )
        actions.append({name: body})
    for extra in sorted(set(entry) - {"actions", "stage"}):
        report.add(
            source,
            "untranslated",
            f"{where}.{extra}",
            f"{extra} is not translated (runtime keys, dynamic overrides and hits_addend need Envoy)",
        )
    return {"actions": actions} if actions else None


_REQUIRED = {
    "request_headers": ("header_name", "descriptor_key"),
    "generic_key": ("descriptor_value",),
    "header_value_match": ("descriptor_value",),
    "remote_address": (),
}
_WAYS = (
    "exact_match",
    "prefix_match",
    "suffix_match",
    "contains_match",
    "safe_regex_match",
    "present_match",
    "string_match",
)


def _problem(name: str, body: dict[str, Any]) -> str | None:
    """Why the engine would refuse this action (Envoy would too), or None; fixes what it can."""
    for field in _REQUIRED[name]:
        if not isinstance(body.get(field), str):
            return f"{field} must be a string"
    if name == "request_headers" and not is_header(body["header_name"]):
        return f"{body['header_name']!r} is not a header name"
    for flag in ("skip_if_absent", "expect_match"):
        if flag in body and not isinstance(body[flag], bool):
            return f"{flag} must be true or false"
    headers = []
    for matcher in as_list(body.get("headers")) if "headers" in body else []:
        matcher = dict(as_dict(matcher))
        if "regex_match" in matcher:  # v2: the regex was RE2 as well
            matcher["safe_regex_match"] = {"regex": matcher.pop("regex_match")}
        ways = [k for k in matcher if k in _WAYS]
        unknown = set(matcher) - {"name", "invert_match", "treat_missing_header_as_empty", *_WAYS}
        if not is_header(matcher.get("name")) or len(ways) > 1 or unknown:
            return f"header matcher {matcher!r} is not one name with one way to match"
        regex = as_dict(matcher.get("safe_regex_match")).get("regex")
        regex = regex or as_dict(as_dict(matcher.get("string_match")).get("safe_regex")).get("regex")
        if regex is not None and not valid_regex(regex):
            return f"the regex {regex!r} is not one Python's re accepts"
        headers.append(matcher)
    if "headers" in body:
        body["headers"] = headers
    return None
