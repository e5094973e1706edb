"""What a backend is: the only place a hit does I/O."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._core.plan import Plan

__all__ = ["Backend", "BackendError", "RawResult", "SyncBackend"]

# (allowed, server time in microseconds per counter, flat [p, c, ...] per counter)
RawResult = tuple[bool, Sequence[int], Sequence[int]]
"""A backend's answer: (allowed, server time in microseconds per counter, flat previous and
current counts per counter); :func:`ratelimit._core.plan.decide` turns it into a Decision."""


class BackendError(Exception):
    """The backend could not decide (unreachable, timed out, or answered an error).

    ``shard`` names the server that failed (``host:port``, or a socket path) when the
    backend knows it; the limiter then opens only that shard's circuit breaker.
    """

    def __init__(self, message: str = "", shard: str | None = None) -> None:
        super().__init__(message)
        self.shard = shard


@runtime_checkable
class Backend(Protocol):
    """Stores counters and runs the sliding-window script on them.

    ``evaluate``/``aevaluate`` run one :class:`~ratelimit._core.plan.Plan` atomically
    (all of its counters or none move) and return the raw counts; the limiter turns
    them into a Decision. They raise :class:`BackendError` on any failure.
    """

    name: str

    def evaluate(self, plan: Plan) -> RawResult:
        """Decide ``plan`` atomically; raise :class:`BackendError` on any failure."""
        ...

    async def aevaluate(self, plan: Plan) -> RawResult:
        """Async :meth:`evaluate`."""
        ...

    def delete(self, keys: Sequence[str], prefixes: Sequence[str]) -> int:
        """Remove counters by key and by literal key prefix; return how many went."""
        ...

    async def adelete(self, keys: Sequence[str], prefixes: Sequence[str]) -> int:
        """Async :meth:`delete`."""
        ...

    def refund(self, plan: Plan, nows: Sequence[int]) -> None:
        """Give back what ``plan`` charged at server times ``nows`` (one per counter)."""
        ...

    async def arefund(self, plan: Plan, nows: Sequence[int]) -> None:
        """Async :meth:`refund`."""
        ...

    def close(self) -> None:
        """Release sync resources (connections this backend made)."""
        ...

    async def aclose(self) -> None:
        """Release every resource, sync and async."""
        ...


class SyncBackend(ABC):
    """Base for backends without I/O to await: the async twins call the sync methods.

    Subclasses implement ``evaluate``, ``delete`` and ``refund`` (and ``close`` if they hold
    resources); this is how the memory backend is built.
    """

    name = "sync"

    @abstractmethod
    def evaluate(self, plan: Plan) -> RawResult:
        """Decide ``plan`` atomically (see :class:`Backend`)."""

    @abstractmethod
    def delete(self, keys: Sequence[str], prefixes: Sequence[str]) -> int:
        """Remove counters by key and by literal key prefix; how many went."""

    async def aevaluate(self, plan: Plan) -> RawResult:
        """Same as :meth:`evaluate`."""
        return self.evaluate(plan)

    async def adelete(self, keys: Sequence[str], prefixes: Sequence[str]) -> int:
        """Same as :meth:`delete`."""
        return self.delete(keys, prefixes)

    @abstractmethod
    def refund(self, plan: Plan, nows: Sequence[int]) -> None:
        """Give back what ``plan`` charged at server times ``nows`` (one per counter)."""

    async def arefund(self, plan: Plan, nows: Sequence[int]) -> None:
        """Same as :meth:`refund`."""
        self.refund(plan, nows)

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract: nothing to release by default
        """Nothing to release by default."""

    async def aclose(self) -> None:
        """Same as :meth:`close`."""
        self.close()
