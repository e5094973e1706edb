"""Plan a request (which counters, which limits) and decide from the script's raw counts.

This is the I/O-free middle of every hit::

    (identity, rate, cost) items --plan--> Plan --backend--> raw counts --decide--> Decision
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .decision import Decision, LimitStatus, Receipt
from .keyspace import Identity, KeySpace
from .rate import Rate, RateLike, parse_rates
from .window import reset_after_us, retry_after_us

__all__ = ["HitItem", "Plan", "check_cost", "decide", "fallback_decision", "make_plan"]

# What hit_many accepts: (identity, rate) or (identity, rate, cost).
HitItem = tuple[Identity, RateLike] | tuple[Identity, RateLike, int]


def check_cost(cost: object) -> int:
    """Validate a cost: an integer >= 0 (0 checks without consuming)."""
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise TypeError(f"cost must be an integer >= 0, got {type(cost).__name__}: {cost!r}")
    if cost < 0:
        raise ValueError(f"cost must be an integer >= 0, got {cost}")
    return cost


@dataclass(frozen=True, slots=True)
class Plan:
    """One request, ready for a backend.

    ``keys`` are the distinct counters; ``args`` holds ``window_us, limit, cost`` per
    counter (the tightest limit and the largest cost of the limits sharing it);
    ``entries`` holds ``(counter index, identity, rate, cost)`` per requested limit.
    """

    commit: bool
    keys: tuple[str, ...]
    args: tuple[int, ...]
    entries: tuple[tuple[int, Identity, Rate, int], ...]


def make_plan(
    keyspace: KeySpace, items: Iterable[tuple[Identity, RateLike | Sequence[Rate], int]], commit: bool
) -> Plan:
    """Resolve items to counters, merging limits that share a counter."""
    index: dict[str, int] = {}
    keys: list[str] = []
    args: list[int] = []
    entries: list[tuple[int, Identity, Rate, int]] = []
    for identity, rate_like, cost in items:
        check_cost(cost)
        for rate in parse_rates(rate_like):
            w = rate.window_us
            key = keyspace.counter_key(identity, w)
            i = index.get(key)
            if i is None:
                i = index[key] = len(keys)
                keys.append(key)
                args += (w, rate.limit, cost)
            else:
                args[3 * i + 1] = min(args[3 * i + 1], rate.limit)
                args[3 * i + 2] = max(args[3 * i + 2], cost)
            entries.append((i, identity, rate, cost))
    if not entries:
        raise ValueError("a hit needs at least one (identity, rate)")
    # A shared counter is charged once, with the largest cost among its limits.
    fixed = tuple((i, ident, rate, args[3 * i + 2]) for i, ident, rate, _ in entries)
    return Plan(commit, tuple(keys), tuple(args), fixed)


def decide(plan: Plan, allowed: bool, nows: Sequence[int], counts: Sequence[int]) -> Decision:
    """Turn the script's answer into a Decision.

    ``nows`` has the server time (microseconds) each counter was decided at (one value
    per counter; they differ only across Redis Cluster nodes); ``counts`` is the flat
    ``[p, c, ...]`` the script returned, after the request.
    """
    receipt = Receipt(plan, nows) if allowed and plan.commit else None
    if len(plan.entries) > 1:
        return Decision.from_limits(allowed, _statuses(plan, allowed, nows, counts), receipt=receipt)
    # One limit (the common case): the headline numbers straight from the counts, the
    # LimitStatus only if someone asks for it.
    _, _, rate, cost = plan.entries[0]
    now, p, c, w, limit = nows[0], counts[0], counts[1], rate.window_us, rate.limit
    elapsed = now % w
    weight = (w - elapsed) / w
    remaining = int(limit - (p * weight + c))
    if remaining < 0:
        remaining = 0
    reset = 2 * w - elapsed if c > 0 else (w - elapsed if p > 0 else 0)
    retry = 0 if allowed else retry_after_us(p, c, now, w, limit, cost)
    return Decision(
        allowed,
        limit,
        remaining,
        reset / 1e6,
        retry / 1e6,
        lambda: _statuses(plan, allowed, nows, counts),
        receipt=receipt,
    )


def _statuses(
    plan: Plan, allowed: bool, nows: Sequence[int], counts: Sequence[int]
) -> tuple[LimitStatus, ...]:
    charged = allowed and plan.commit
    statuses = []
    for i, identity, rate, cost in plan.entries:
        now = nows[i]
        p, c = counts[2 * i], counts[2 * i + 1]
        w = rate.window_us
        before = c - cost if charged else c
        elapsed = now % w
        weight = (w - elapsed) / w
        ok = p * weight + before + cost <= rate.limit
        remaining = max(0, int(rate.limit - (p * weight + c)))
        retry = 0 if (ok or charged) else retry_after_us(p, before, now, w, rate.limit, cost)
        statuses.append(
            LimitStatus(identity, rate, cost, ok, remaining, reset_after_us(p, c, now, w) / 1e6, retry / 1e6)
        )
    return tuple(statuses)


def fallback_decision(plan: Plan, allowed: bool, retry_after: float) -> Decision:
    """The failure policy's answer when the backend could not decide."""
    statuses = tuple(
        LimitStatus(
            identity,
            rate,
            cost,
            allowed,
            rate.limit if allowed else 0,
            0.0 if allowed else retry_after,
            0.0 if allowed else retry_after,
        )
        for _, identity, rate, cost in plan.entries
    )
    return Decision.from_limits(allowed, statuses, fallback=True)
