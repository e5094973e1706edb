"""Coalesce the sync checks of concurrent threads into shared script calls (flat combining).

A thread whose check finds no script call in flight sends its plan at once, alone: an
idle process pays no extra latency. Threads that arrive while a call is in flight queue
their plans and block on a lock of their own. When the call in flight is answered, the
plans queued meanwhile are handed to the first of their threads, which sends them all
in one write (one script call per ``max_batch`` plans, pipelined) and hands each thread
its result; the thread that sent the previous call returns at once. The script decides
the plans of one call in order, each all-or-nothing, exactly as if they had been sent
one by one. So under load there is one round trip in flight per process, and each
carries every check that arrived during the previous one.

How long a thread may wait: for the call in flight when it arrived, then for its own.
Each is bounded by the budget from its write (plus a connect when a connection must be
made first, and one more budget for the EVAL after NOSCRIPT): with an open connection
and a 50 ms budget, at most 100 ms. A thread never waits on a queue for longer than
``patience`` (a guard against a leader that never hands over, which only a bug could
cause); it then gets :class:`BackendTimeout` and its plan is not sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..._core.plan import Plan
from ..base import BackendError, RawResult
from ._wire import BackendTimeout

__all__ = ["Combiner", "Send"]

Send = Callable[[Sequence[Plan]], list["RawResult | BackendError"]]
"""Decides plans in one round trip: a raw result, or the error, per plan; raises only BackendError."""


class _Waiter:
    __slots__ = ("batch", "lock", "plan", "result")

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.lock = threading.Lock()
        self.lock.acquire()  # a one-shot semaphore: released once, by whoever answers
        self.batch: list[_Waiter] | None = None  # set when this thread is to send the batch
        self.result: RawResult | BackendError | None = None


class Combiner:
    """One process's queue of sync checks in front of one server (see the module docstring)."""

    def __init__(self, send: Send, address: str, patience: float) -> None:
        self._send = send
        self._address = address
        self._patience = patience
        self._mutex = threading.Lock()
        self._busy = False  # a call is in flight; arriving plans queue
        self._queue: list[_Waiter] = []

    def submit(self, plan: Plan) -> RawResult:
        """Decide ``plan``, alone or with the plans of other threads; raise BackendError on failure."""
        waiter: _Waiter | None = None
        with self._mutex:
            if self._busy:
                waiter = _Waiter(plan)
                self._queue.append(waiter)
            else:
                self._busy = True
        result: RawResult | BackendError | None
        if waiter is None:
            try:
                result = self._send((plan,))[0]
            finally:
                self._hand_over()
        else:
            self._wait(waiter)
            if waiter.batch is not None:
                try:
                    self._lead(waiter.batch)
                finally:
                    self._hand_over()
            result = waiter.result
        assert result is not None
        if isinstance(result, BackendError):
            raise result
        return result

    def _wait(self, waiter: _Waiter) -> None:
        if waiter.lock.acquire(timeout=self._patience):
            return
        with self._mutex:
            if waiter in self._queue:
                self._queue.remove(waiter)
                raise BackendTimeout(
                    f"no script call to Redis at {self._address} took this check for {self._patience}s",
                    self._address,
                )
        # Already taken into a batch, whose answer is bounded by the budget: wait for it.
        waiter.lock.acquire()

    def _hand_over(self) -> None:
        """Give the plans queued during the last call to the first of their threads, or go idle."""
        with self._mutex:
            batch, self._queue = self._queue, []
            if not batch:
                self._busy = False
                return
            head = batch[0]
            head.batch = batch
            head.lock.release()

    def _lead(self, batch: list[_Waiter]) -> None:
        results: list[RawResult | BackendError]
        try:
            results = self._send([w.plan for w in batch])
        except BackendError as exc:
            results = [exc] * len(batch)
        except BaseException as exc:
            results = [BackendError(f"the check that sent this batch failed: {exc!r}")] * len(batch)
            self._answer(batch, results)
            raise
        self._answer(batch, results)

    @staticmethod
    def _answer(batch: list[_Waiter], results: list[RawResult | BackendError]) -> None:
        for waiter, result in zip(batch, results, strict=True):
            waiter.result = result
            if waiter.batch is None:  # the others; the leader is running this
                waiter.lock.release()
