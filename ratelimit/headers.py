"""Response header fields and the 429 body: the one place their names and formats live.

Follows the IETF httpapi RateLimit header fields, draft-10: ``RateLimit-Policy`` and
``RateLimit`` are Structured Field Lists with one item per limit that applied::

    RateLimit-Policy: "per-user";q=100;w=60, "global";q=5000;w=60
    RateLimit: "per-user";r=41;t=17, "global";r=4990;t=12

plus ``Retry-After`` on denials (which clients must prefer) and the legacy
``X-RateLimit-Limit/-Remaining/-Reset`` of the tightest limit (``Reset`` in seconds
from now). ``t`` is the seconds until the limit's quota is available again: the
retry-after of a limit that denies, else the seconds until its counter has decayed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from ._decision import Decision, LimitStatus

__all__ = [
    "PROBLEM_TYPE",
    "policy_name",
    "problem_body",
    "rate_limit_headers",
    "retry_after_header",
    "sf_string",
]

PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
PROBLEM_TITLE = "Request cannot be satisfied as assigned quota has been exceeded"
_SF_UNSAFE = re.compile(r"[^\x20-\x7e]")


def sf_string(value: str) -> str:
    """A Structured Field String: printable ASCII in quotes, ``"`` and ``\\`` escaped.

    Characters outside printable ASCII cannot appear in an sf-string; they become ``?``.
    """
    safe = _SF_UNSAFE.sub("?", value)
    return '"' + safe.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _seconds(value: float) -> int:
    # Header fields carry whole seconds; rounding up never invites an early retry.
    return max(0, math.ceil(value - 1e-9))


def policy_name(rule: str, status: LimitStatus, several: bool) -> str:
    """The policy name of one limit: the rule's name, plus the window when it has several."""
    if not several:
        return rule
    window = status.rate.window
    label = f"{int(window)}s" if window >= 1 and window == int(window) else f"{round(window * 1000)}ms"
    return f"{rule}-{label}"


def _t(status: LimitStatus) -> int:
    return _seconds(status.retry_after if status.retry_after > 0 else status.reset_after)


def rate_limit_headers(
    decision: Decision, names: Sequence[str], *, legacy: bool = True
) -> list[tuple[str, str]]:
    """The RateLimit header fields for ``decision``; ``names`` has one name per limit."""
    limits = decision.limits
    if not limits:
        return []
    policy = ", ".join(
        f"{sf_string(name)};q={s.rate.limit};w={max(1, _seconds(s.rate.window))}"
        for name, s in zip(names, limits, strict=True)
    )
    current = ", ".join(
        f"{sf_string(name)};r={s.remaining};t={_t(s)}" for name, s in zip(names, limits, strict=True)
    )
    out = [("RateLimit-Policy", policy), ("RateLimit", current)]
    if legacy:
        reset = decision.retry_after if not decision.allowed else decision.reset_after
        out += [
            ("X-RateLimit-Limit", str(decision.limit)),
            ("X-RateLimit-Remaining", str(decision.remaining)),
            ("X-RateLimit-Reset", str(_seconds(reset))),
        ]
    if not decision.allowed:
        out.append(retry_after_header(decision))
    return out


def retry_after_header(decision: Decision) -> tuple[str, str]:
    """``Retry-After`` in whole seconds, at least 1 for a denial."""
    return ("Retry-After", str(max(1, _seconds(decision.retry_after))))


def problem_body(decision: Decision, names: Sequence[str]) -> bytes:
    """The ``application/problem+json`` body of a 429 (the draft's quota-exceeded type)."""
    violated = [n for n, s in zip(names, decision.limits, strict=True) if not s.allowed] or list(names)
    retry = max(1, _seconds(decision.retry_after))
    doc = {
        "type": PROBLEM_TYPE,
        "title": PROBLEM_TITLE,
        "status": 429,
        "detail": f"Rate limit exceeded; retry after {retry} second{'s' if retry != 1 else ''}.",
        "violated-policies": violated,
    }
    return json.dumps(doc, separators=(",", ":")).encode()
