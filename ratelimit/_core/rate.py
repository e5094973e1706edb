"""Rates: how many hits per how long, parsed from strings like ``"100/minute"``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

__all__ = [
    "MAX_LIMIT",
    "MAX_WINDOW",
    "MIN_WINDOW",
    "Rate",
    "RateLike",
    "RateParseError",
    "parse_rates",
]

# Counts and times are exact integers below 2**53 in both Lua (doubles) and Python.
MAX_LIMIT = 10**12
MIN_WINDOW = 0.001  # one millisecond
MAX_WINDOW = 10 * 366 * 86400.0  # ten years

_UNITS: dict[str, float] = {}
for _names, _seconds in (
    (("ms", "msec", "millisecond", "milliseconds"), 0.001),
    (("s", "sec", "secs", "second", "seconds"), 1.0),
    (("m", "min", "mins", "minute", "minutes"), 60.0),
    (("h", "hr", "hrs", "hour", "hours"), 3600.0),
    (("d", "day", "days"), 86400.0),
    (("w", "wk", "week", "weeks"), 7 * 86400.0),
    # As the envoyproxy/ratelimit service counts them: 30 and 365 days.
    (("month", "months"), 30 * 86400.0),
    (("y", "yr", "year", "years"), 365 * 86400.0),
):
    for _name in _names:
        _UNITS[_name] = _seconds

_RATE_RE = re.compile(
    r"^\s*(?P<limit>[0-9][0-9_]*)\s*(?:/|per\b)\s*(?P<count>[0-9]+(?:\.[0-9]+)?)?\s*(?P<unit>[a-z]+)\s*$",
    re.IGNORECASE,
)
_EXAMPLES = "e.g. '100/minute', '10/second', '20/30s', '300/5m', '1/2h', '10 per hour'"


class RateParseError(ValueError):
    """A rate string or value is not valid; the message names the input."""


@dataclass(frozen=True, slots=True)
class Rate:
    """A limit of ``limit`` hits per sliding window of ``window`` seconds.

    >>> Rate(100, 60)
    Rate(limit=100, window=60.0)
    >>> Rate.parse("300/5m") == Rate(300, 300)
    True
    """

    limit: int
    window: float
    _hash: int = field(default=0, init=False, repr=False, compare=False)
    window_us: int = field(default=0, init=False, repr=False, compare=False)
    """The window in whole microseconds (a multiple of 1000)."""

    def __hash__(self) -> int:
        # Rates key every plan-cache lookup: hash once, not on each lookup.
        return self._hash

    def __post_init__(self) -> None:
        limit, window = self.limit, self.window
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise RateParseError(f"rate limit must be an integer, got {limit!r}")
        if not 0 <= limit <= MAX_LIMIT:
            raise RateParseError(f"rate limit must be between 0 and {MAX_LIMIT}, got {limit}")
        if isinstance(window, bool) or not isinstance(window, (int, float)):
            raise RateParseError(f"rate window must be a number of seconds, got {window!r}")
        if not MIN_WINDOW <= window <= MAX_WINDOW:  # also rejects NaN
            raise RateParseError(
                f"rate window must be between {MIN_WINDOW} and {MAX_WINDOW:.0f} seconds, got {window!r}"
            )
        # Windows are whole milliseconds so that every backend agrees on their edges.
        window_ms = round(float(window) * 1000)
        object.__setattr__(self, "window", window_ms / 1000)
        object.__setattr__(self, "_hash", hash((limit, window_ms)))
        object.__setattr__(self, "window_us", window_ms * 1000)

    @classmethod
    def parse(cls, text: str) -> Rate:
        """Parse one rate such as ``"100/minute"``, ``"20/30s"`` or ``"10 per hour"``."""
        if not isinstance(text, str):
            raise RateParseError(f"a rate must be a string, got {type(text).__name__}: {text!r}")
        return _parse_one(text)

    def __str__(self) -> str:
        for unit, seconds in (
            ("day", 86400.0),
            ("hour", 3600.0),
            ("minute", 60.0),
            ("second", 1.0),
        ):
            if self.window == seconds:
                return f"{self.limit}/{unit}"
        if self.window >= 1 and self.window == int(self.window):
            return f"{self.limit}/{int(self.window)}s"
        return f"{self.limit}/{round(self.window * 1000)}ms"


RateLike = str | Rate


@lru_cache(maxsize=1024)
def _parse_one(text: str) -> Rate:
    m = _RATE_RE.match(text)
    if m is None:
        raise RateParseError(f"invalid rate {text!r}: expected '<limit>/<window>', {_EXAMPLES}")
    unit = m.group("unit").lower()
    seconds = _UNITS.get(unit)
    if seconds is None:
        raise RateParseError(
            f"invalid rate {text!r}: unknown unit {m.group('unit')!r} "
            "(use ms, second, minute, hour, day, week, month or year, or s/m/h/d/w)"
        )
    count = float(m.group("count")) if m.group("count") else 1.0
    try:
        return Rate(int(m.group("limit").replace("_", "")), count * seconds)
    except RateParseError as exc:
        raise RateParseError(f"invalid rate {text!r}: {exc}") from None


@lru_cache(maxsize=1024)
def _parse_many(text: str) -> tuple[Rate, ...]:
    parts = [p for p in re.split(r"[;,]", text) if p.strip()]
    if not parts:
        raise RateParseError(f"invalid rate {text!r}: empty ({_EXAMPLES})")
    return tuple(_parse_one(p) for p in parts)


def parse_rates(value: RateLike | Sequence[RateLike]) -> tuple[Rate, ...]:
    """Turn a rate, a ``";"``/``","``-separated string of rates, or a list of them into Rates.

    >>> parse_rates("10/second; 1000/hour")
    (Rate(limit=10, window=1.0), Rate(limit=1000, window=3600.0))
    """
    if isinstance(value, Rate):
        return (value,)
    if isinstance(value, str):
        return _parse_many(value)
    if isinstance(value, (list, tuple)):
        out: list[Rate] = []
        for item in value:
            out.extend(parse_rates(item))
        if not out:
            raise RateParseError("an empty list of rates")
        return tuple(out)
    raise RateParseError(f"a rate must be a string or Rate, got {type(value).__name__}: {value!r}")
