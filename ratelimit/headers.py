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
import sys
from collections.abc import Iterable, Sequence
from functools import lru_cache

from ._core.decision import Decision, LimitStatus
from ._core.rate import Rate

__all__ = [
    "PROBLEM_TYPE",
    "RATE_FIELDS",
    "combine_fields",
    "combine_raw",
    "encode_fields",
    "merge_fields",
    "policy_name",
    "problem_body",
    "problem_detail",
    "problem_document",
    "rate_limit_headers",
    "retry_after_header",
    "sf_string",
]

PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
"""The ``type`` of the 429 problem+json body (the RateLimit draft's quota-exceeded type)."""
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


def policy_name(rule: str, rate: Rate, several: bool) -> str:
    """The policy name of one limit: the rule's name, plus the window when it has several."""
    if not several:
        return rule
    window = rate.window
    label = f"{int(window)}s" if window >= 1 and window == int(window) else f"{round(window * 1000)}ms"
    return f"{rule}-{label}"


def _t(status: LimitStatus) -> int:
    return _seconds(status.retry_after if status.retry_after > 0 else status.reset_after)


@lru_cache(maxsize=4096)
def policy_field(names: tuple[str, ...], rates: tuple[Rate, ...]) -> str:
    # Depends only on the rules, so it is built once per rule set.
    return ", ".join(
        f"{sf_string(name)};q={rate.limit};w={max(1, _seconds(rate.window))}"
        for name, rate in zip(names, rates, strict=True)
    )


@lru_cache(maxsize=4096)
def _sf_cached(name: str) -> str:
    return sf_string(name)


def rate_limit_headers(
    decision: Decision,
    names: Sequence[str],
    rates: Sequence[Rate] | None = None,
    *,
    legacy: bool = True,
) -> list[tuple[str, str]]:
    """The RateLimit header fields for ``decision``; ``names`` (and ``rates``) have one entry per limit.

    A fallback decision (the failure policy answered) gets no RateLimit fields, only
    ``Retry-After`` when it denies.

    ``rates`` defaults to the rates in ``decision.limits``; passing them lets a
    single-limit decision skip building its per-limit statuses.
    """
    if not names:
        return []
    if decision.fallback:
        # The failure policy answered (docs/failure.md): its numbers describe no real
        # quota, so no RateLimit fields; a denial still says when to come back.
        return [] if decision.allowed else [retry_after_header(decision)]
    if rates is None:
        rates = tuple(s.rate for s in decision.limits)
    policy = policy_field(tuple(names), tuple(rates))
    if len(names) == 1:
        t = decision.retry_after if decision.retry_after > 0 else decision.reset_after
        current = f"{_sf_cached(names[0])};r={decision.remaining};t={_seconds(t)}"
    else:
        current = ", ".join(
            f"{_sf_cached(name)};r={s.remaining};t={_t(s)}"
            for name, s in zip(names, decision.limits, strict=True)
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
    return problem_document(problem_detail(retry), violated)


def problem_detail(retry: int) -> str:
    """The 429 body's ``detail`` for a retry after ``retry`` whole seconds (plain ASCII)."""
    return f"Rate limit exceeded; retry after {retry} second{'s' if retry != 1 else ''}."


def problem_document(detail: str, violated: list[str]) -> bytes:
    """The 429 problem+json document with ``detail`` and ``violated-policies`` filled in."""
    doc = {
        "type": PROBLEM_TYPE,
        "title": PROBLEM_TITLE,
        "status": 429,
        "detail": detail,
        "violated-policies": violated,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


# -- merging the fields of several decisions into one response ------------------------

_POLICY, _CURRENT, _RETRY = b"ratelimit-policy", b"ratelimit", b"retry-after"
_LIMIT, _REMAINING = b"x-ratelimit-limit", b"x-ratelimit-remaining"
RATE_FIELDS = frozenset((_POLICY, _CURRENT, _RETRY, _LIMIT, _REMAINING, b"x-ratelimit-reset"))
"""The lower-case names of every header field this package writes on a response."""


def encode_fields(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header fields as the lower-cased latin-1 bytes ASGI servers use."""
    names = _ENCODED_NAMES
    out = []
    for k, v in headers:
        name = names.get(k)
        if name is None:
            name = k.lower().encode("latin-1")
            if len(names) < 256:
                names[k] = name
        out.append((name, v.encode("latin-1")))
    return out


_ENCODED_NAMES: dict[str, bytes] = {}


def _number(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return sys.maxsize


def combine_fields(
    response: Iterable[tuple[bytes, bytes]], added: list[tuple[str, str]]
) -> list[tuple[bytes, bytes]]:
    """The response's header fields plus ``added``, with one set of rate limit fields.

    Several limiters may describe one response (middleware rules, decorators, a
    dependency, a 429 the endpoint returned): ``RateLimit-Policy`` and ``RateLimit``
    become one structured-field list each, ``X-RateLimit-*`` come from the tightest
    (fewest remaining) and ``Retry-After`` is the longest.
    """
    return combine_raw(response, encode_fields(added))


def combine_raw(
    response: Iterable[tuple[bytes, bytes]], added: list[tuple[bytes, bytes]], *, unique: bool = False
) -> list[tuple[bytes, bytes]]:
    """:func:`combine_fields` with ``added`` already encoded (lower-case latin-1 bytes).

    ``unique``: the caller knows ``added`` names each field at most once (one decision's).
    """
    response = response if isinstance(response, list) else list(response)
    for name, _ in response:
        if name.lower() in RATE_FIELDS:
            break
    else:
        if unique or len(added) <= 1 or len({k for k, _ in added}) == len(added):
            # The common case: one decision's fields on a response that has none.
            return response + added
    out: list[tuple[bytes, bytes]] = []
    fields: list[tuple[bytes, bytes]] = []
    for name, value in response:
        lname = name.lower()
        if lname in RATE_FIELDS:
            fields.append((lname, value))
        else:
            out.append((name, value))
    fields += added
    if len({name for name, _ in fields}) == len(fields):
        return out + fields
    policy: list[bytes] = []
    current: list[bytes] = []
    retry: list[bytes] = []
    legacy: list[dict[bytes, bytes]] = []
    for name, value in fields:
        if name == _POLICY:
            policy.append(value)
        elif name == _CURRENT:
            current.append(value)
        elif name == _RETRY:
            retry.append(value)
        else:
            if name == _LIMIT or not legacy:
                legacy.append({})
            legacy[-1][name] = value
    if policy:
        out.append((_POLICY, b", ".join(policy)))
    if current:
        out.append((_CURRENT, b", ".join(current)))
    if legacy:
        out += min(legacy, key=lambda group: _number(group.get(_REMAINING, b""))).items()
    if retry:
        out.append((_RETRY, max(retry, key=_number)))
    return out


def merge_fields(fields: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``fields`` with one set of rate limit fields, however many decisions added some.

    The text-header twin of :func:`combine_fields` (which works on ASGI's bytes), for
    the WSGI, Flask and Django adapters: ``RateLimit-Policy`` and ``RateLimit`` joined
    into one list each, ``X-RateLimit-*`` from the tightest decision, the longest
    ``Retry-After``. Other fields keep their order; rate limit fields keep the spelling
    they were first given.
    """
    rate = [(n, v) for n, v in fields if n.lower().encode("latin-1", "replace") in RATE_FIELDS]
    if len({n.lower() for n, _ in rate}) == len(rate):
        return list(fields)
    spelling = {n.lower(): n for n, _ in reversed(rate)}
    merged = [(spelling[n.decode("latin-1")], v.decode("latin-1")) for n, v in combine_fields((), rate)]
    return [(n, v) for n, v in fields if n.lower().encode("latin-1", "replace") not in RATE_FIELDS] + merged
