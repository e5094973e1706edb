"""Coalesce the checks of concurrent requests into one script call per loop iteration.

Under load, many requests of one event loop ask Redis at once. The plans submitted
during one iteration of the loop go out together at its end, as one script call (per
hash slot on a Cluster, and at most ``max_batch`` plans per call): the script decides
them in arrival order, each all-or-nothing, exactly as if they had been sent one by
one. Calls are pipelined (see ``_nodes``), so a new batch never waits for the previous
one's reply, and the timeout budget starts when a call is written, never while it
waits in this process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..._core.plan import Plan
from ..._core.scripts import LuaScript
from ..base import BackendError, RawResult
from ._codec import decode, encode
from ._nodes import ScriptCall

__all__ = ["Batcher", "Router"]


class Router(Protocol):
    """Where script calls go: one :class:`~._nodes.Node`, or a :class:`~._nodes.Cluster`."""

    def submit(self, calls: Sequence[ScriptCall]) -> None: ...


class Batcher:
    """Queues plans on one event loop and sends each iteration's plans as script calls."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        router: Router,
        script: LuaScript,
        max_batch: int = 128,
        slot_of: Callable[[Plan], int] | None = None,
    ) -> None:
        self._loop = loop
        self._router = router
        self._script = script
        self._max_batch = max_batch
        self._slot_of = slot_of
        self._plans: list[Plan] = []
        self._futures: list[asyncio.Future[RawResult]] = []
        self._since = 0.0

    def submit(self, plan: Plan) -> asyncio.Future[RawResult]:
        """Queue ``plan``; the future resolves to its raw result or a BackendError."""
        fut: asyncio.Future[RawResult] = self._loop.create_future()
        if not self._plans:
            # Let the requests of this loop iteration join before sending.
            self._since = self._loop.time()
            self._loop.call_soon(self._flush)
        self._plans.append(plan)
        self._futures.append(fut)
        return fut

    def _flush(self) -> None:
        plans, futures = self._plans, self._futures
        self._plans, self._futures = [], []
        if self._slot_of is None:
            groups = [(0, plans, futures)]
        else:
            by_slot: dict[int, tuple[int, list[Plan], list[asyncio.Future[RawResult]]]] = {}
            for plan, fut in zip(plans, futures, strict=True):
                slot = self._slot_of(plan)
                group = by_slot.get(slot)
                if group is None:
                    group = by_slot[slot] = (slot, [], [])
                group[1].append(plan)
                group[2].append(fut)
            groups = list(by_slot.values())
        size = self._max_batch
        calls = []
        for slot, group_plans, group_futures in groups:
            for i in range(0, len(group_plans), size):
                part, waiting = group_plans[i : i + size], group_futures[i : i + size]
                keys, argv = encode(part)
                calls.append(ScriptCall(self._script, keys, argv, _deliver(part, waiting), self._since, slot))
        self._router.submit(calls)


def _deliver(plans: list[Plan], futures: list[asyncio.Future[RawResult]]) -> Callable[[Any], None]:
    def done(reply: Any) -> None:
        if not isinstance(reply, BackendError):
            try:
                results = decode(reply, plans)
            except BackendError as exc:
                reply = exc
            else:
                for fut, result in zip(futures, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
                return
        for fut in futures:
            if not fut.done():
                fut.set_exception(reply)

    return done
