"""Redis Cluster: one request's counters grouped by hash slot, and the answers joined.

One identity's counters share a slot (the ``{tag}`` in their keys), so they are one
atomic script call. A request whose limits span several slots is decided per slot;
when one slot denies after another allowed, the charged slots are refunded with
``refund.lua`` so that the denied request consumes nothing (docs/concepts.md, "What
is atomic").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..._core.plan import Plan
from ..base import RawResult
from ._codec import refund_args

__all__ = ["merge_slots", "refund_calls", "slot_groups", "slot_of", "subplan"]


def slot_of(key: str) -> int:
    """The Redis Cluster hash slot of ``key``."""
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


def slot_groups(plan: Plan) -> list[list[int]]:
    """Indexes of ``plan``'s counters, grouped by hash slot (one atomic script call each)."""
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(plan.keys):
        groups.setdefault(slot_of(key), []).append(i)
    return list(groups.values())


def subplan(plan: Plan, indexes: list[int]) -> Plan:
    """The part of ``plan`` on the counters at ``indexes``."""
    args: list[int] = []
    for i in indexes:
        args += plan.args[3 * i : 3 * i + 3]
    return Plan(plan.commit, tuple(plan.keys[i] for i in indexes), tuple(args), ())


def merge_slots(
    plan: Plan, groups: list[list[int]], parts: list[Plan], results: list[RawResult]
) -> tuple[RawResult, list[tuple[Plan, tuple[list[str], list[Any]]]]]:
    """Join per-slot answers; when any slot denied, refund the slots that charged."""
    allowed = all(r[0] for r in results)
    n = len(plan.keys)
    nows = [0] * n
    counts = [0] * (2 * n)
    refunds = []
    for indexes, part, (ok, part_nows, part_counts) in zip(groups, parts, results, strict=True):
        charged = ok and plan.commit and not allowed
        if charged:
            local = [j for j in range(len(indexes)) if part.args[3 * j + 2] > 0]
            if local:
                refunds.append((part, refund_args(part, local, part_nows[0])))
        for j, i in enumerate(indexes):
            nows[i] = part_nows[j]
            p, c = part_counts[2 * j], part_counts[2 * j + 1]
            counts[2 * i] = p
            counts[2 * i + 1] = c - part.args[3 * j + 2] if charged else c
    return (allowed, nows, counts), refunds


def refund_calls(plan: Plan, nows: Sequence[int], cluster: bool) -> list[tuple[list[str], list[Any]]]:
    """KEYS/ARGV of the ``refund.lua`` calls that give back ``plan``'s charge (one per slot)."""
    groups = slot_groups(plan) if cluster else [list(range(len(plan.keys)))]
    out = []
    for group in groups:
        charged = [i for i in group if plan.args[3 * i + 2] > 0]
        if charged:
            out.append(refund_args(plan, charged, nows[charged[0]]))
    return out
