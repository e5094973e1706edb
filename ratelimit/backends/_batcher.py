"""Coalesce the checks of concurrent requests into one script call per round trip.

Under load, many requests of one event loop ask Redis at once. Instead of one round
trip each, requests that arrive while a call is in flight wait (at most the timeout
budget) and go together in the next call: the script decides them in arrival order,
each all-or-nothing, exactly as if they had been sent one by one. One call carries up
to ``max_batch`` requests, and at most ``max_inflight`` calls are in flight at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from .._plan import Plan
from .base import BackendError, RawResult

__all__ = ["BackendTimeout", "Batcher"]

Send = Callable[[Sequence[Plan]], Awaitable[list[RawResult]]]


class BackendTimeout(BackendError):
    """The backend did not answer within the timeout budget."""


class _Batch:
    __slots__ = ("futures", "plans", "timer")

    def __init__(self) -> None:
        self.plans: list[Plan] = []
        self.futures: list[asyncio.Future[RawResult]] = []
        self.timer: asyncio.TimerHandle | None = None


class Batcher:
    """Queues plans on one event loop and sends them in batches through ``send``."""

    def __init__(
        self,
        send: Send,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        max_batch: int = 128,
        max_inflight: int = 2,
    ) -> None:
        self._send = send
        self._loop = loop
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: deque[_Batch] = deque()
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, plan: Plan) -> asyncio.Future[RawResult]:
        """Queue ``plan``; the future resolves to its raw result or a BackendError."""
        fut: asyncio.Future[RawResult] = self._loop.create_future()
        queue = self._queue
        if not queue or len(queue[-1].plans) >= self._max_batch:
            batch = _Batch()
            # One timer per batch bounds the wait of every request in it.
            batch.timer = self._loop.call_later(self._timeout, _expire, batch)
            queue.append(batch)
            if len(queue) == 1:
                # Let the requests of this loop iteration join before sending.
                self._loop.call_soon(self._pump)
        batch = queue[-1]
        batch.plans.append(plan)
        batch.futures.append(fut)
        if len(batch.plans) >= self._max_batch and self._inflight < self._max_inflight:
            # Full: send now, so Redis works on it while this loop builds the next one.
            self._pump()
        return fut

    def _pump(self) -> None:
        while self._queue and self._inflight < self._max_inflight:
            batch = self._queue.popleft()
            self._inflight += 1
            task = self._loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Batch) -> None:
        try:
            live = [i for i, f in enumerate(batch.futures) if not f.done()]
            if live:
                plans = batch.plans if len(live) == len(batch.plans) else [batch.plans[i] for i in live]
                try:
                    results = await self._send(plans)
                except BaseException as exc:
                    err = (
                        exc if isinstance(exc, BackendError) else BackendError(f"{type(exc).__name__}: {exc}")
                    )
                    for i in live:
                        fut = batch.futures[i]
                        if not fut.done():
                            fut.set_exception(err)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                else:
                    for i, result in zip(live, results, strict=True):
                        fut = batch.futures[i]
                        if not fut.done():
                            fut.set_result(result)
        finally:
            if batch.timer is not None:
                batch.timer.cancel()
            self._inflight -= 1
            self._pump()

    async def aclose(self) -> None:
        """Fail what is queued and wait for calls in flight."""
        while self._queue:
            _expire(self._queue.popleft(), BackendError("rate limiter closed"))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _expire(batch: _Batch, error: BackendError | None = None) -> None:
    err = error or BackendTimeout("Redis did not answer within the timeout budget")
    for fut in batch.futures:
        if not fut.done():
            fut.set_exception(err)
