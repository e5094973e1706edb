"""A backend that fails on demand, for the failure-policy and refund tests."""

from __future__ import annotations

from collections.abc import Sequence

from ratelimit._core.plan import Plan
from ratelimit.backends.base import BackendError, RawResult, SyncBackend
from ratelimit.backends.memory import MemoryBackend


class FlakyBackend(SyncBackend):
    """A backend that fails while ``broken`` is set and counts its calls."""

    name = "flaky"

    def __init__(self) -> None:
        self.inner = MemoryBackend()
        self.broken = False
        self.calls = 0

    def evaluate(self, plan: Plan) -> RawResult:
        self.calls += 1
        if self.broken:
            raise BackendError("connection refused")
        return self.inner.evaluate(plan)

    def delete(self, keys: Sequence[str], prefixes: Sequence[str]) -> int:
        return self.inner.delete(keys, prefixes)

    def refund(self, plan: Plan, nows: Sequence[int]) -> None:
        if self.broken:
            raise BackendError("connection refused")
        self.inner.refund(plan, nows)
