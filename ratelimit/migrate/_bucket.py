"""A LocalRateLimit's own settings: its token bucket as a rate, its percentages, the rest.

A bucket of ``max_tokens`` refilled by ``tokens_per_fill`` every ``fill_interval`` becomes
``max_tokens`` per ``fill_interval * max_tokens / tokens_per_fill``: the same burst fits,
and the sustained rate equals the refill rate. A second, shorter window would forbid the
burst, so there is none; the difference is reported as an approximation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._core.rate import Rate, RateParseError
from ._manifest import Severity, as_dict, duration, percent

__all__ = ["Add", "bucket_rate", "other_fields", "percentages", "token_bucket_rate"]

Add = Callable[[Severity, str, str], None]  # report a finding: (severity, field, message)

_IGNORED = {
    "stat_prefix": "Envoy's stats under this prefix become ratelimit_decisions_total{rule=...}",
    "enable_x_ratelimit_headers": "the app sends draft-10 RateLimit headers (and X-RateLimit-* unless"
    " headers.legacy is false)",
    "vh_rate_limits": "the app applies every matching rule",
    "rate_limited_as_resource_exhausted": "gRPC denials are RESOURCE_EXHAUSTED in the app",
    "max_dynamic_descriptors": "Envoy kept buckets for that many values only; the app counts every value",
    "local_cluster_rate_limit": "Envoy shared this bucket among the cluster's pods; the app's counter"
    " is shared through Redis, which is what it approximated",
    "stage": "stages are not translated",
}
_UNTRANSLATED = ("response_headers_to_add", "request_headers_to_add_when_not_enforced")
_HANDLED = {"token_bucket", "filter_enabled", "filter_enforced", "descriptors", "rate_limits"}
_HANDLED |= {"always_consume_default_token_bucket", "status", "local_rate_limit_per_downstream_connection"}


def token_bucket_rate(max_tokens: int, tokens_per_fill: int, fill_interval: float) -> str:
    """The sliding-window rate for a token bucket: ``token_bucket_rate(10, 1, 6) == "10/minute"``.

    Raises ValueError when the bucket is not valid or the window is out of range.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if isinstance(tokens_per_fill, bool) or not isinstance(tokens_per_fill, int) or tokens_per_fill < 1:
        raise ValueError(f"tokens_per_fill must be a positive integer, got {tokens_per_fill!r}")
    if not (isinstance(fill_interval, (int, float)) and fill_interval > 0):
        raise ValueError(f"fill_interval must be a positive duration, got {fill_interval!r}")
    # A fill never raises the bucket above max_tokens: the sustained rate is capped by it.
    per_fill = min(tokens_per_fill, max_tokens)
    try:
        return str(Rate(max_tokens, round(fill_interval * 1000 * max_tokens / per_fill) / 1000))
    except RateParseError as exc:
        raise ValueError(str(exc)) from None


def bucket_rate(bucket: dict[str, Any], where: str, add: Add) -> str | None:
    """The rate for a ``token_bucket`` mapping, reporting the approximation (or why not)."""
    given = bucket.get("fill_interval")
    interval = duration(given)
    per_fill = bucket.get("tokens_per_fill", 1)
    try:
        rate = token_bucket_rate(bucket.get("max_tokens"), per_fill, interval or 0.0)  # type: ignore[arg-type]
    except ValueError as exc:
        add("untranslated", where, f"token bucket not translated: {exc}")
        return None
    add(
        "approximated",
        where,
        f"token bucket of {bucket['max_tokens']} (+{per_fill} every {given}) -> sliding window"
        f" {rate}: the same burst and sustained rate, but capacity comes back as the window slides"
        " instead of in refills",
    )
    return rate


def percentages(cfg: dict[str, Any], where: str, add: Add, translated: bool) -> bool:
    """Report ``filter_enabled``/``filter_enforced``; True when the rules must be shadow rules."""
    enabled, enabled_key = percent(cfg.get("filter_enabled"))
    enforced, enforced_key = percent(cfg.get("filter_enforced"))
    if not translated:
        return enabled == 0 or enforced == 0
    if enabled == 0:
        add(
            "approximated",
            f"{where}.filter_enabled",
            "0% enabled (an absent filter_enabled is 0%): Envoy never ran this limit; translated with"
            " shadow: true. Check its metrics before enforcing",
        )
    elif enforced == 0:
        add(
            "note",
            f"{where}.filter_enforced",
            "0% enforced (an absent filter_enforced is 0%): Envoy counted but never denied; translated"
            " with shadow: true",
        )
    if 0 < enabled < 100:
        add(
            "approximated",
            f"{where}.filter_enabled",
            f"{enabled:g}% enabled: the rules apply to every request",
        )
    if enabled and 0 < enforced < 100:
        add(
            "approximated", f"{where}.filter_enforced", f"{enforced:g}% enforced: the rules deny every excess"
        )
    for key, name in ((enabled_key, "filter_enabled"), (enforced_key, "filter_enforced")):
        if key:
            add(
                "note",
                f"{where}.{name}.runtime_key",
                f"runtime key {key} may have changed the percentage at run time; default_value was used",
            )
    return enabled == 0 or enforced == 0


def other_fields(cfg: dict[str, Any], where: str, add: Add) -> None:
    """Report the LocalRateLimit fields that have no counterpart in the app."""
    status = as_dict(cfg.get("status")).get("code")
    if status not in (None, 429, "TooManyRequests"):
        add("untranslated", f"{where}.status", f"status {status}: the app answers 429")
    if cfg.get("local_rate_limit_per_downstream_connection"):
        add(
            "approximated",
            f"{where}.local_rate_limit_per_downstream_connection",
            "Envoy counted per connection; the app counts per key (the rule's key)",
        )
    for name in _UNTRANSLATED:
        if name in cfg:
            add("untranslated", f"{where}.{name}", "header manipulation is not translated")
    for name in sorted(set(cfg) - _HANDLED - set(_UNTRANSLATED)):
        add("note", f"{where}.{name}", _IGNORED.get(name, "not translated"))
