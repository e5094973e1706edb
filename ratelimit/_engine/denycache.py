"""Answer a hot key that is over its limit locally until its retry-after passes.

A denied request moves no counter, and other traffic can only add to the counts, so
the same request stays denied at least until its ``retry_after``. Remembering that
saves a round trip per request for clients that keep knocking (the common shape of a
flood). The cache errs only one way: it may deny a request for slightly less time than
Redis would, never allow one Redis would deny.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from .._core.decision import Decision
from .._core.plan import Plan

__all__ = ["DenyCache"]


class DenyCache:
    """Denied decisions by request shape (counters, limits, cost), bounded in size."""

    __slots__ = ("_clock", "_entries", "_lock", "_max", "hits")

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[tuple[tuple[str, ...], tuple[int, ...]], tuple[float, float, Decision]] = {}
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()  # for sweeps; single dict operations need none
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, plan: Plan) -> Decision | None:
        """The cached denial for ``plan``, its times brought up to date, or None."""
        entries = self._entries
        if not entries:
            return None
        key = (plan.keys, plan.args)
        entry = entries.get(key)
        if entry is None:
            return None
        stored_at, until, decision = entry
        now = self._clock()
        if now >= until:
            entries.pop(key, None)
            return None
        self.hits += 1
        age = now - stored_at
        return Decision(
            False,
            decision.limit,
            decision.remaining,
            max(0.0, decision.reset_after - age),
            max(0.0, decision.retry_after - age),
            lambda: tuple(
                replace(
                    s,
                    retry_after=max(0.0, s.retry_after - age),
                    reset_after=max(0.0, s.reset_after - age),
                )
                for s in decision.limits
            ),
            from_cache=True,
        )

    def put(self, plan: Plan, decision: Decision) -> None:
        """Remember a denial (from the backend, not a fallback) until its retry-after."""
        if decision.allowed or decision.fallback or decision.retry_after <= 0:
            return
        entries = self._entries
        now = self._clock()
        if len(entries) >= self._max:
            with self._lock:
                for key in [k for k, v in list(entries.items()) if v[1] <= now]:
                    entries.pop(key, None)
                while len(entries) >= self._max:
                    entries.pop(next(iter(entries)), None)
        entries[(plan.keys, plan.args)] = (now, now + decision.retry_after, decision)

    def forget(self, keys: set[str] | None = None, prefixes: tuple[str, ...] = ()) -> None:
        """Drop denials touching ``keys`` or keys under ``prefixes`` (all when both empty)."""
        if not keys and not prefixes:
            self._entries.clear()
            return
        wanted = keys or set()
        with self._lock:
            for k in [
                k for k in list(self._entries) if any(c in wanted or c.startswith(prefixes) for c in k[0])
            ]:
                self._entries.pop(k, None)
