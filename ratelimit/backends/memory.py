"""The in-process backend: the Python twin of the Lua script, bounded in memory."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from .._core.plan import Plan
from .._core.window import refund_one, run_one
from .base import RawResult, SyncBackend

__all__ = ["DEFAULT_MAX_KEYS", "MemoryBackend"]

DEFAULT_MAX_KEYS = 100_000
"""How many counters the memory backend keeps before it evicts the oldest."""


class _BoundedStore:
    """Counters by key, least recently used first, never more than ``max_keys``.

    A counter expires once it can no longer affect a decision (two windows after its
    last hit), so expiry never changes an answer; it only frees memory. When the store
    is full, expired counters go first, then the least recently used live one.
    """

    __slots__ = ("data", "evictions", "max_keys", "now")

    def __init__(self, max_keys: int) -> None:
        self.data: OrderedDict[str, list[int]] = OrderedDict()  # key -> [idx, p, c, expire_at]
        self.max_keys = max_keys
        self.now = 0
        self.evictions = 0  # live counters dropped because the store was full

    def get(self, key: str, now_us: int) -> list[int] | None:
        entry = self.data.get(key)
        if entry is None:
            return None
        if entry[3] <= now_us:
            del self.data[key]
            return None
        self.data.move_to_end(key)
        return entry

    def put(self, key: str, idx: int, prev: int, cur: int, expire_at_us: int) -> None:
        data = self.data
        entry = data.get(key)
        if entry is not None:
            entry[0], entry[1], entry[2], entry[3] = idx, prev, cur, expire_at_us
            data.move_to_end(key)
            return
        if len(data) >= self.max_keys:
            self._make_room()
        data[key] = [idx, prev, cur, expire_at_us]

    def _make_room(self) -> None:
        data, now = self.data, self.now
        while data:
            key, entry = next(iter(data.items()))
            del data[key]
            if entry[3] > now:
                self.evictions += 1
            if len(data) < self.max_keys:
                return


class MemoryBackend(SyncBackend):
    """Counters in this process: thread-safe, asyncio-safe, same math as the Lua.

    Args:
        max_keys: the most counters kept; beyond it the least recently used go. A flood
            of distinct identities cannot grow memory past this cap (an evicted live
            counter starts again from zero, which errs on the side of allowing).
        clock: seconds since the epoch as a float (default ``time.time``); tests inject
            a fake clock (see :class:`ratelimit.testing.FakeClock`).

    Every evaluation runs under one lock and never awaits, so async callers on one
    event loop and threads in one process all see one consistent set of counters.
    """

    name = "memory"

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], float] | None = None) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be a positive integer, got {max_keys!r}")
        self._store = _BoundedStore(max_keys)
        self._clock = clock or time.time
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._store.data)

    @property
    def evictions(self) -> int:
        """How many live counters were dropped to respect ``max_keys``."""
        return self._store.evictions

    def now_us(self) -> int:
        """The backend's clock in whole microseconds."""
        return int(self._clock() * 1_000_000)

    def evaluate(self, plan: Plan) -> RawResult:
        """Decide ``plan`` atomically against the in-process counters."""
        store = self._store
        with self._lock:
            now = int(self._clock() * 1_000_000)
            store.now = now
            allowed, counts = run_one(store, now, plan.commit, plan.keys, plan.args)
        return allowed, (now,) * len(plan.keys), counts

    def delete(self, keys: Sequence[str], prefixes: Sequence[str]) -> int:
        """Remove counters by key and by key prefix; returns how many went."""
        with self._lock:
            data = self._store.data
            gone = {k for k in keys if k in data}
            if prefixes:
                starts = tuple(prefixes)
                gone.update(k for k in data if k.startswith(starts))
            for key in gone:
                del data[key]
            return len(gone)

    def refund(self, plan: Plan, nows: Sequence[int]) -> None:
        """Give back what ``plan`` charged at ``nows`` (see :func:`ratelimit._core.window.refund_one`)."""
        keys = [k for i, k in enumerate(plan.keys) if plan.args[3 * i + 2] > 0]
        args: list[int] = []
        for i in range(len(plan.keys)):
            if plan.args[3 * i + 2] > 0:
                args += (plan.args[3 * i], plan.args[3 * i + 2])
        with self._lock:
            refund_one(self._store, nows[0], keys, args)
