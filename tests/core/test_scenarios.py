"""One scenario table, run on every implementation of the algorithm.

Each scenario is a list of steps on a fresh limiter whose clock the test controls. The
same table runs on the memory backend (the Python reference), on the Lua script in
fakeredis, and on the Lua script in a real redis-server, so the three agree on every
documented behaviour, not only on random traffic (see test_model.py for that).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from support.lua_harness import LuaClockBackend

from ratelimit import Limiter
from ratelimit.testing import FakeClock

T0 = 1_700_000_040.0  # aligned to a minute (and a second): elapsed starts at 0
_prefixes = itertools.count()


@dataclass
class Step:
    """Advance the clock, then hit (or peek/reset) and check the decision."""

    advance: float = 0.0
    op: str = "hit"  # hit | hit_many | peek | reset
    items: Any = None  # (identity, rate) for hit/peek; a list for hit_many
    cost: int = 1
    allowed: bool | None = None
    remaining: int | None = None
    retry_after: float | None = None
    reset_after: float | None = None
    limit: int | None = None
    per_limit_remaining: list[int] | None = None
    repeat: int = 1
    note: str = field(default="")


def hits(rate: str, n: int, allowed: bool, ident: str = "a", cost: int = 1) -> Step:
    return Step(items=(ident, rate), allowed=allowed, repeat=n, cost=cost)


SCENARIOS: dict[str, list[Step]] = {
    "exactly N per window, then the documented retry-after": [
        Step(items=("a", "3/minute"), allowed=True, remaining=2, reset_after=120.0, retry_after=0.0),
        Step(items=("a", "3/minute"), allowed=True, remaining=1),
        Step(items=("a", "3/minute"), allowed=True, remaining=0),
        # Next window starts with p=3: 3*(60-e)/60 + 1 <= 3 once e >= 20 -> 60 + 20 s.
        Step(items=("a", "3/minute"), allowed=False, remaining=0, retry_after=80.0, limit=3),
    ],
    "denied hits consume nothing": [
        hits("2/minute", 2, True),
        hits("2/minute", 5, False),
        Step(advance=60, items=("a", "2/minute"), allowed=False, retry_after=30.0),
        Step(advance=30, items=("a", "2/minute"), allowed=True, remaining=0),
    ],
    "the previous window weighs in linearly": [
        hits("10/minute", 10, True),
        Step(advance=60, items=("a", "10/minute"), allowed=False),
        # 15 s into the next window: 10 * 45/60 = 7.5, so two more fit (8.5, 9.5).
        Step(advance=15, items=("a", "10/minute"), allowed=True, remaining=1),
        Step(items=("a", "10/minute"), allowed=True, remaining=0),
        # 10*(60-e)/60 + 2 + 1 <= 10 once e >= 18: three seconds from now.
        Step(items=("a", "10/minute"), allowed=False, retry_after=3.0),
        Step(advance=3, items=("a", "10/minute"), allowed=True),
    ],
    "several limits are all or nothing": [
        Step(op="hit_many", items=[("a", "2/minute"), ("b", "1/minute")], allowed=True),
        Step(op="hit_many", items=[("a", "2/minute"), ("b", "1/minute")], allowed=False, limit=1),
        # The denied request did not charge "a".
        Step(op="peek", items=("a", "2/minute"), allowed=True, remaining=1),
        Step(items=("a", "2/minute"), allowed=True, remaining=0),
    ],
    "the tightest limit heads the decision": [
        Step(
            op="hit_many",
            items=[("a", "10/second"), ("a", "1000/hour"), ("g", "5/minute")],
            allowed=True,
            limit=5,
            remaining=4,
            per_limit_remaining=[9, 999, 4],
        ),
    ],
    "limits on one counter share it and it is charged once": [
        Step(
            op="hit_many",
            items=[("a", "10/minute"), ("a", "3/minute")],
            allowed=True,
            per_limit_remaining=[9, 2],
        ),
        Step(op="hit_many", items=[("a", "10/minute"), ("a", "3/minute")], allowed=True),
        Step(op="hit_many", items=[("a", "10/minute"), ("a", "3/minute")], allowed=True, remaining=0),
        Step(op="hit_many", items=[("a", "10/minute"), ("a", "3/minute")], allowed=False, limit=3),
    ],
    "cost is charged and checked whole": [
        hits("10/minute", 2, True, cost=4),
        Step(items=("a", "10/minute"), cost=4, allowed=False, remaining=2),
        Step(items=("a", "10/minute"), cost=2, allowed=True, remaining=0),
    ],
    "cost 0 checks without consuming": [
        Step(items=("a", "1/minute"), cost=0, allowed=True, remaining=1, reset_after=0.0),
        Step(items=("a", "1/minute"), allowed=True, remaining=0),
        Step(items=("a", "1/minute"), cost=0, allowed=True, remaining=0),
        Step(items=("a", "1/minute"), allowed=False),
    ],
    "a cost above the limit is never allowed, retry after one window": [
        Step(items=("a", "5/minute"), cost=6, allowed=False, remaining=5, retry_after=60.0),
        Step(items=("a", "5/minute"), cost=5, allowed=True, remaining=0),
    ],
    "a zero limit denies every hit": [
        Step(items=("a", "0/minute"), allowed=False, remaining=0, retry_after=60.0),
        Step(items=("a", "0/minute"), cost=0, allowed=True),
    ],
    "peek never consumes": [
        Step(op="peek", items=("a", "1/minute"), allowed=True, remaining=1, repeat=5),
        Step(items=("a", "1/minute"), allowed=True, remaining=0),
        Step(op="peek", items=("a", "1/minute"), allowed=False, remaining=0),
    ],
    "reset clears an identity": [
        hits("2/minute", 2, True),
        Step(op="reset", items=("a", None)),
        Step(items=("a", "2/minute"), allowed=True, remaining=1),
    ],
    "reset of one rate keeps the others": [
        Step(op="hit_many", items=[("a", "1/minute"), ("a", "5/hour")], allowed=True),
        Step(op="reset", items=("a", "1/minute")),
        Step(
            op="hit_many",
            items=[("a", "1/minute"), ("a", "5/hour")],
            allowed=True,
            per_limit_remaining=[0, 3],
        ),
    ],
    "counters vanish after two windows": [
        hits("2/second", 2, True),
        Step(advance=2, items=("a", "2/second"), allowed=True, remaining=1, reset_after=2.0),
    ],
    "custom windows": [
        hits("20/30s", 20, True),
        Step(items=("a", "20/30s"), allowed=False),
        Step(advance=60, items=("a", "20/30s"), allowed=True, remaining=19),
        hits("1/500ms", 1, True, ident="b"),
        Step(items=("b", "1/500ms"), allowed=False),
    ],
    "odd identities are separate subjects": [
        Step(items=("{x}", "1/minute"), allowed=True),
        Step(items=("x", "1/minute"), allowed=True),
        Step(items=("a:b", "1/minute"), allowed=True),
        Step(items=("a\x00b", "1/minute"), allowed=True),
        Step(items=("é" * 300, "1/minute"), allowed=True),
        Step(items=(b"\xff\xfe", "1/minute"), allowed=True),
        Step(items=("{x}", "1/minute"), allowed=False),
    ],
}


@pytest.fixture(params=["memory", "fakeredis-lua", "redis-lua"])
def clocked(request: pytest.FixtureRequest) -> Any:
    """A (limiter, clock) pair on each implementation, all at T0."""
    clock = FakeClock(T0)
    prefix = f"scn{next(_prefixes)}"
    if request.param == "memory":
        yield Limiter(clock=clock, prefix=prefix), clock
        return
    if request.param == "fakeredis-lua":
        import fakeredis

        client = fakeredis.FakeRedis()
    else:
        client = request.getfixturevalue("redis_server").client()
    yield Limiter(LuaClockBackend(client, clock), prefix=prefix, deny_cache=False), clock
    client.close()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(clocked: Any, name: str) -> None:
    """Every implementation answers each scenario step as documented."""
    limiter, clock = clocked
    for number, step in enumerate(SCENARIOS[name]):
        for _ in range(step.repeat):
            clock.advance(step.advance) if step.advance else None
            where = f"{name!r} step {number}"
            if step.op == "reset":
                limiter.reset(*step.items)
                continue
            if step.op == "hit_many":
                d = limiter.hit_many(step.items, cost=step.cost)
            elif step.op == "peek":
                d = limiter.peek(*step.items, cost=step.cost)
            else:
                d = limiter.hit(*step.items, cost=step.cost)
            checks = {
                "allowed": step.allowed,
                "remaining": step.remaining,
                "retry_after": step.retry_after,
                "reset_after": step.reset_after,
                "limit": step.limit,
            }
            for attr, want in checks.items():
                if want is not None:
                    assert getattr(d, attr) == pytest.approx(want), f"{where}: {attr} {d}"
            if step.per_limit_remaining is not None:
                assert [s.remaining for s in d.limits] == step.per_limit_remaining, where
            if not d.allowed:
                assert d.retry_after > 0, where
