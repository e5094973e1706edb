"""The sliding window counter, in Python: the reference twin of ``lua/sliding_window.lua``.

Everything here is pure (no I/O, no clock): the memory backend runs :func:`run_batch`
on its own store, and tests run it beside the Lua script on real Redis and fakeredis
to prove both return identical results. The arithmetic is written in the same order as
the Lua so that the IEEE double results agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import floor
from typing import Protocol

__all__ = [
    "CounterStore",
    "ScriptRequest",
    "refund_one",
    "reset_after_us",
    "retry_after_us",
    "run_batch",
    "run_one",
]

# One request as the script sees it: (commit, counter keys, [window_us, limit, cost] * n).
ScriptRequest = tuple[bool, Sequence[str], Sequence[int]]


class CounterStore(Protocol):
    """Where :func:`run_batch` keeps counters: ``[window index, previous, current]``."""

    def get(self, key: str, now_us: int) -> list[int] | None: ...

    def put(self, key: str, idx: int, prev: int, cur: int, expire_at_us: int) -> None: ...


def run_batch(
    store: CounterStore, now_us: int, requests: Sequence[ScriptRequest]
) -> list[tuple[bool, list[int]]]:
    """Decide ``requests`` in order, all-or-nothing each, exactly as the Lua script does.

    Returns, per request, whether it was allowed and the flat ``[p, c, p, c, ...]`` counts
    of its counters afterwards.
    """
    return [run_one(store, now_us, commit, keys, args) for commit, keys, args in requests]


def run_one(
    store: CounterStore, now_us: int, commit: bool, keys: Sequence[str], args: Sequence[int]
) -> tuple[bool, list[int]]:
    """Decide one request (one iteration of the script's request loop)."""
    if len(keys) == 1:
        return _run_single(store, now_us, commit, keys[0], args[0], args[1], args[2])
    get = store.get
    allowed = True
    counts: list[int] = []
    idxs: list[int] = []
    a = 0
    for key in keys:
        w, limit, cost = args[a], args[a + 1], args[a + 2]
        idx = floor(now_us / w)
        st = get(key, now_us)
        p = c = 0
        if st is not None:
            if st[0] == idx:
                p, c = st[1], st[2]
            elif st[0] == idx - 1:
                p = st[2]
        if p * ((w - (now_us - idx * w)) / w) + c + cost > limit:
            allowed = False
        idxs.append(idx)
        counts.append(p)
        counts.append(c)
        a += 3
    if allowed and commit:
        for i, key in enumerate(keys):
            w, cost = args[3 * i], args[3 * i + 2]
            if cost > 0:
                c = counts[2 * i + 1] + cost
                counts[2 * i + 1] = c
                store.put(key, idxs[i], counts[2 * i], c, (idxs[i] + 2) * w)
    return allowed, counts


def _run_single(
    store: CounterStore, now_us: int, commit: bool, key: str, w: int, limit: int, cost: int
) -> tuple[bool, list[int]]:
    # run_one for one counter (the common case), without the loops: the same arithmetic.
    idx = floor(now_us / w)
    st = store.get(key, now_us)
    p = c = 0
    if st is not None:
        if st[0] == idx:
            p, c = st[1], st[2]
        elif st[0] == idx - 1:
            p = st[2]
    if p * ((w - (now_us - idx * w)) / w) + c + cost > limit:
        return False, [p, c]
    if commit and cost > 0:
        c += cost
        store.put(key, idx, p, c, (idx + 2) * w)
    return True, [p, c]


def refund_one(store: CounterStore, now_us: int, keys: Sequence[str], args: Sequence[int]) -> None:
    """Give back a charge made at ``now_us``: the twin of ``lua/refund.lua``.

    ``args`` holds ``window_us, cost`` per key. The hit was counted in window
    ``floor(now_us / W)``; if that window has since become the previous one, the
    refund comes off the previous count. Counts never go below zero.
    """
    for i, key in enumerate(keys):
        w, cost = args[2 * i], args[2 * i + 1]
        idx = floor(now_us / w)
        st = store.get(key, now_us)
        if st is None:
            continue
        if st[0] == idx:
            store.put(key, st[0], st[1], max(0, st[2] - cost), (st[0] + 2) * w)
        elif st[0] == idx + 1:
            store.put(key, st[0], max(0, st[1] - cost), st[2], (st[0] + 2) * w)


def _fits(p: int, c: int, elapsed: int, w: int, limit: int, cost: int) -> bool:
    # The script's admission test, in the script's operation order.
    return p * ((w - elapsed) / w) + c + cost <= limit


def _earliest(p: int, c: int, lo: int, w: int, limit: int, cost: int) -> int:
    """Smallest elapsed in [lo, w] at which a hit of ``cost`` fits, given c + cost <= limit."""
    if p == 0:
        return lo
    # Exact integer bound for p * (w - e) / w + c + cost <= limit, then settle float edges.
    e = max(lo, w - ((limit - cost - c) * w) // p)
    e = min(e, w)
    while e < w and not _fits(p, c, e, w, limit, cost):
        e += 1
    while e > lo and _fits(p, c, e - 1, w, limit, cost):
        e -= 1
    return e


def retry_after_us(p: int, c: int, now_us: int, w: int, limit: int, cost: int) -> int:
    """Microseconds until a hit of ``cost`` would be allowed on counter ``(p, c)``.

    Assumes no other traffic: the estimate only decays, so the first time it fits is
    the answer (0 when it fits now). A cost above the limit never fits; such a hit is
    told to retry after one window, the documented answer for "never".
    """
    if cost > limit:
        return w
    idx = floor(now_us / w)
    elapsed = now_us - idx * w
    if _fits(p, c, elapsed, w, limit, cost):
        return 0
    if c + cost <= limit:
        return _earliest(p, c, elapsed, w, limit, cost) - elapsed
    # Not before the next window, where the current count becomes the previous one.
    return (w - elapsed) + _earliest(c, 0, 0, w, limit, cost)


def reset_after_us(p: int, c: int, now_us: int, w: int) -> int:
    """Microseconds until the counter has decayed to zero (no other traffic)."""
    elapsed = now_us - floor(now_us / w) * w
    if c > 0:
        return 2 * w - elapsed
    if p > 0:
        return w - elapsed
    return 0
