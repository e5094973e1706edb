"""``ratelimit demo``: the limiter deciding requests, as a served app sees it and up close.

It runs on the memory backend with a simulated clock (instant, same output every run),
or on a real Redis with ``--redis URL``. Its RateLimit header values are for display only.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from secrets import token_hex

from .. import headers
from .._core.decision import Decision, LimitStatus
from ..backends.base import BackendError
from ..limiter import Limiter
from ..testing import FakeClock
from .demo_app import serve_demo_app

__all__ = ["DemoError", "rate_limit_headers", "run_demo", "tightest"]

T0 = 1_700_000_040.0  # a whole minute since the epoch: the demo's windows start at t=0
_BURST, _SUSTAINED, _GLOBAL = "10/second", "20/minute", "15/minute"
_NAMES = {"5/10s": "user", _BURST: "burst", _SUSTAINED: "sustained", _GLOBAL: "global"}
REDIS_HELP = (
    "use this Redis instead (needs the [redis] extra). Keys go under a random rl-demo-* prefix and are"
    " deleted afterwards; Redis gets 1 s per call (the library default is 50 ms); no time travel."
)
_SLIDING = (  # (seconds to wait, hits, why) for erin against 10/minute
    (0, 10, "10 hits fill the window"),
    (0, 1, "the current window is full"),
    (60, 1, "new window; the previous 10 still weigh 10*(1-0/60) = 10"),
    (6, 1, "10*(1-6/60) = 9, and 9 + 1 fits"),
    (9, 1, "10*(1-15/60) = 7.5, and 7.5 + 1 (t=66) + 1 = 9.5 fits"),
    (0, 1, "7.5 + 2 + 1 = 10.5 does not fit"),
    (105, 1, "two windows later the old hits no longer count"),
)


class DemoError(Exception):
    """The demo cannot go on (Redis unreachable or not installed, a bad URL)."""


def tightest(decision: Decision) -> LimitStatus:
    """The limit whose numbers head ``decision`` (its limit, remaining and reset_after)."""
    want = (decision.limit, decision.remaining, decision.reset_after, decision.retry_after)
    for s in decision.limits:
        if (s.rate.limit, s.remaining, s.reset_after, s.retry_after) == want:
            return s
    return decision.limits[0]


def rate_limit_headers(decision: Decision, names: dict[str, str] = _NAMES) -> list[tuple[str, str]]:
    """The IETF draft-10 RateLimit fields a response would carry, for the tightest limit.

    ``names`` maps ``str(rate)`` to policy names. The fields come from
    :func:`ratelimit.headers.rate_limit_headers` (the adapters' own), narrowed to the
    tightest limit to keep the demo readable; a denial also carries ``Retry-After``.
    """
    s = tightest(decision)
    one = Decision.from_limits(decision.allowed, (s,))
    return headers.rate_limit_headers(one, [names.get(str(s.rate), "user")], legacy=False)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in (head, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    print("\n".join("  " + line.rstrip() for line in lines))


def _collapse(rows: list[list[str]], col: int) -> list[list[str]]:
    """Keep the first and last row of each run of equal ``col`` values; mark the gaps."""
    out: list[list[str]] = []
    for i, row in enumerate(rows):
        if i in (0, len(rows) - 1) or not rows[i - 1][col] == row[col] == rows[i + 1][col]:
            out.append(row)
        elif out[-1][0] != "...":
            out.append(["..."] + [""] * (len(row) - 1))
    return out


def _said(d: Decision) -> str:
    return "allowed" if d.allowed else "limited"


def _headers(d: Decision) -> None:
    print("\n  Response headers for the tightest limit (draft-10, seconds rounded up):")
    print("\n".join(f"    {name}: {value}" for name, value in rate_limit_headers(d)))


class _Demo:
    """Runs the demo's sections on one limiter and prints what it decided."""

    def __init__(self, limiter: Limiter, clock: FakeClock | None) -> None:
        self.limiter, self.clock, self.started = limiter, clock, time.monotonic()

    def check(self, d: Decision) -> Decision:
        if d.fallback:
            raise DemoError("the backend did not answer (see the warning above); is Redis up?")
        return d

    def one_limit(self) -> None:
        pace = "one request a second" if self.clock else "back to back"
        print(f"\n1. One user, one limit: alice against 5/10s, {pace}")
        rows = []
        for n in range(1, 7):
            d = self.check(self.limiter.hit("alice", "5/10s"))
            t = self.clock() - T0 if self.clock else time.monotonic() - self.started
            cells = [d.limit, d.remaining, f"{d.retry_after:.1f}", f"{d.reset_after:.1f}"]
            rows.append([f"{t:.1f}", f"alice #{n}", _said(d), *map(str, cells)])
            if self.clock:
                self.clock.advance(1)
        _table(["t(s)", "request", "result", "limit", "remaining", "retry_after", "reset_after"], rows)
        _headers(d)

    def many_limits(self) -> None:
        print(
            f"\n2. Several limits, all or nothing (hit_many): {_BURST} and {_SUSTAINED} per"
            f" user,\n   plus {_GLOBAL} shared by everyone. Remaining per limit:"
        )
        rows: list[list[str]] = []
        for user, count in (("bob", 11), ("carol", 6)):
            for n in range(1, count + 1):
                items = [(user, _BURST), (user, _SUSTAINED), ("global", _GLOBAL)]
                d = self.check(self.limiter.hit_many(items))
                by = ", ".join(f"{s.identity!s} {s.rate}" for s in d.limits if not s.allowed)
                rows.append([f"{user} #{n}", _said(d), *(str(s.remaining) for s in d.limits), by or "-"])
        head = ["request", "result", f"user {_BURST}", f"user {_SUSTAINED}", f"global {_GLOBAL}"]
        _table([*head, "limited by"], _collapse(rows, 1))
        print("  A limited request consumes nothing: when one limit said no, no counter moved.")
        _headers(d)

    def cost(self) -> None:
        print("\n3. Cost: dave's exports weigh more than one request (limit 10/minute)")
        rows = []
        for cost in (4, 4, 4, 2, 0, 11):
            d = self.check(self.limiter.hit("dave", "10/minute", cost=cost))
            rows.append([f"cost {cost}", _said(d), str(d.remaining), f"{d.retry_after:.1f}"])
        _table(["request", "result", "remaining", "retry_after"], rows)
        print("  Cost 0 checks without consuming; a cost above the limit never fits: retry after a window.")

    def sliding(self, clock: FakeClock) -> None:
        print(
            "\n4. The sliding window over time: erin against 10/minute (simulated clock)\n"
            "   estimate = previous * (1 - elapsed/60) + current; a hit needs estimate + 1 <= 10"
        )
        start, rows = T0 + 3600, []
        clock.set(start)
        for wait, hits, why in _SLIDING:
            clock.advance(wait)
            for _ in range(hits):
                d = self.limiter.hit("erin", "10/minute")
            rows.append([f"{clock() - start:.0f}", _said(d), str(d.remaining), f"{d.retry_after:.1f}", why])
        _table(["t(s)", "result", "remaining", "retry_after", "why"], rows)
        print("  A fixed window (envoyproxy/ratelimit) would let 10 more through at t=60: a 2x edge burst.")


def run_demo(redis_url: str | None) -> int:
    """Run the demo (served app first, then the limiter up close); the exit code."""
    clock = None if redis_url else FakeClock(T0)
    if redis_url:
        try:
            limiter = Limiter(redis_url, prefix=f"rl-demo-{token_hex(4)}", timeout=1.0)
        except (ImportError, ValueError) as exc:
            raise DemoError(str(exc)) from exc
        print(f"ambient-ratelimit demo on {limiter.backend!r}.\nThe clock is Redis TIME (real).")
    else:
        limiter = Limiter(clock=clock)
        print(
            "ambient-ratelimit demo on the memory backend.\nThe clock is SIMULATED"
            " (ratelimit.testing.FakeClock): no waiting, the same output every run."
        )
    demo = _Demo(limiter, clock)
    try:
        serve_demo_app(limiter)
        demo.one_limit()
        demo.many_limits()
        demo.cost()
        if clock is not None:
            demo.sliding(clock)
        else:
            print("\n4. The sliding window over time: skipped with --redis (Redis TIME cannot time-travel).")
    finally:
        for who in (
            ("alice", "bob", "carol", "dave", "global", "items/alice", "items/bob") if redis_url else ()
        ):
            with contextlib.suppress(BackendError):
                limiter.reset(who)
        limiter.close()
    print("\nMore: docs/index.md (concepts, Redis, failure policy, API).")
    return 0
