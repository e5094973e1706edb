"""Coalesce the checks of concurrent requests into shared script calls.

Under load, many requests of one event loop ask Redis at once. Plans are grouped by
destination (one group on a single server; one per hash slot on a Cluster, since a
script call's keys share a slot) and sent as script calls of at most ``max_batch``
plans: the script decides a call's plans in arrival order, each all-or-nothing, exactly
as if they had been sent one by one.

When a group sends follows Nagle's rule, with a clock. A group is *idle* when none of
its calls is unanswered and its last call went out at least ``pace`` seconds ago.

- An idle group sends everything it holds at the end of the loop iteration its first
  plan arrived in (so the plans of one iteration go together, as before holding).
- A group that is not idle holds new plans: it sends them all as soon as it is idle
  again (when the reply to the call ahead is read, or when ``pace`` has passed), and
  sends full batches (``max_batch`` plans) meanwhile at the end of their iteration.

So a lone request on a quiet server is sent in the iteration it arrived in, and a busy
one sends at most one partial call per round trip and per ``pace`` per group, carrying
what arrived meanwhile. The clock is what makes batches behind servers that hand the
loop about one request per iteration (grpc.aio): there Redis answers before the next
request arrives, so holding only while a call is unanswered would hold nothing, and
every request would pay a script call of its own.

What a held plan may wait, on top of its own call: until its group is idle (``pace``
after the last call went out, or longer while calls of the group are unanswered), or
until plans behind it fill a batch, whichever comes first. An unanswered call is bounded
by the timeout budget from its write (``_wire`` fails it when Redis does not answer in
time); a NOSCRIPT reply (EVAL follows) or a Cluster redirect (at most 5) give it one
more budget each. When a call fails on the connection (a timeout, a lost connection),
the plans held behind it fail with it at once: they get the failure policy's answer no
later than that call's deadline, never a second budget against a server that just
stopped answering. Otherwise a held plan's own budget starts, like every call's, when it
is written, never while it waits in this process. Calls are pipelined (see ``_nodes``);
``hold=False`` turns holding off (each iteration's plans go at its end).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from ..._core.plan import Plan
from ..._core.scripts import LuaScript
from ..base import BackendError, RawResult
from ._codec import decode, encode
from ._nodes import ScriptCall
from ._wire import WireError

__all__ = ["PACE", "Batcher", "Router"]

PACE = 0.002
"""Seconds between a group's partial calls under load (see the module docstring).

Behind grpc.aio (bench/bench_servers.py) 2 ms took script calls per request from 0.97 to
0.38, 1 ms to 0.59, holding only while a call is unanswered to 0.70. It delays nothing
below 500 calls per second per group, and any call by at most this much."""

_NO_LIMIT = 1 << 62


class Router(Protocol):
    """Where script calls go: one :class:`~._nodes.Node`, or a :class:`~._nodes.Cluster`."""

    def submit(self, calls: list[ScriptCall]) -> None: ...


class _Group:
    """The plans for one destination waiting to be sent, and its calls unanswered."""

    __slots__ = ("busy", "due", "futures", "next_at", "plans", "since", "slot", "timer")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.plans: list[Plan] = []
        self.futures: list[asyncio.Future[RawResult]] = []
        self.since = 0.0  # when the oldest plan waiting arrived
        self.busy = 0  # calls sent and not yet decided
        self.due = False  # in the batcher's list for the end of this iteration
        self.next_at = 0.0  # a partial call may go from then on
        self.timer: asyncio.TimerHandle | None = None  # for next_at, while plans wait for it


class Batcher:
    """Queues plans on one event loop and sends them as script calls (see the module docstring).

    Args:
        loop: the event loop every plan is submitted on.
        router: where the script calls go.
        script: the script deciding a batch.
        max_batch: plans per script call.
        slot_of: a plan's hash slot on a Cluster (None: one server, one group).
        hold: hold plans as the module docstring says (False: each loop iteration's
            plans go at its end, whatever is unanswered).
        pace: seconds between a group's partial calls (0: only the unanswered call
            holds plans).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        router: Router,
        script: LuaScript,
        max_batch: int = 128,
        slot_of: Callable[[Plan], int] | None = None,
        hold: bool = True,
        pace: float = PACE,
    ) -> None:
        self._loop = loop
        self._router = router
        self._script = script
        self._max_batch = max_batch
        self._slot_of = slot_of
        # A partial batch may go while fewer calls than this of its group are unanswered.
        self._idle = 1 if hold else _NO_LIMIT
        self._pace = pace if hold else 0.0
        self._single = _Group(0)  # the one group of a single server
        self._groups: dict[int, _Group] = {}  # by slot, on a Cluster
        self._due: list[_Group] = []
        self._scheduled = False

    def submit(self, plan: Plan) -> asyncio.Future[RawResult]:
        """Queue ``plan``; the future resolves to its raw result or a BackendError."""
        fut: asyncio.Future[RawResult] = self._loop.create_future()
        if self._slot_of is None:
            group = self._single
        else:
            slot = self._slot_of(plan)
            found = self._groups.get(slot)
            if found is None:
                found = self._groups[slot] = _Group(slot)
            group = found
        plans = group.plans
        if not plans:
            group.since = self._loop.time()
        plans.append(plan)
        group.futures.append(fut)
        if group.due:
            return fut
        if len(plans) % self._max_batch == 0:  # a full batch: it goes, whatever is unanswered
            self._schedule(group)
        elif group.busy < self._idle and group.timer is None:
            if group.next_at <= self._loop.time():
                # Let the requests of this loop iteration join before sending.
                self._schedule(group)
            else:
                group.timer = self._loop.call_at(group.next_at, self._paced, group)
        return fut

    def _schedule(self, group: _Group) -> None:
        group.due = True
        self._due.append(group)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _paced(self, group: _Group) -> None:
        group.timer = None
        if not group.due:
            calls: list[ScriptCall] = []
            self._take(group, calls)
            if calls:
                self._router.submit(calls)

    def _flush(self) -> None:
        self._scheduled = False
        due, self._due = self._due, []
        calls: list[ScriptCall] = []
        for group in due:
            group.due = False
            self._take(group, calls)
        if calls:
            self._router.submit(calls)

    def _take(self, group: _Group, calls: list[ScriptCall]) -> None:
        """What ``group`` may send now by the module docstring's rule, appended to ``calls``."""
        plans, size = group.plans, self._max_batch
        if not plans:
            return
        now = self._loop.time()
        if group.busy >= self._idle or now < group.next_at:
            count = len(plans) - len(plans) % size  # full batches only
            if count < len(plans) and group.busy < self._idle and group.timer is None:
                group.timer = self._loop.call_at(group.next_at, self._paced, group)
            if not count:
                return
        else:
            count = len(plans)
        futures = group.futures
        group.plans, group.futures = plans[count:], futures[count:]
        for i in range(0, count, size):
            part, waiting = plans[i : i + size], futures[i : i + size]
            keys, argv = encode(part)
            done = self._replied(group, part, waiting)
            calls.append(ScriptCall(self._script, keys, argv, done, group.since, group.slot))
            group.busy += 1
        group.next_at = now + self._pace

    def _replied(
        self, group: _Group, plans: list[Plan], futures: list[asyncio.Future[RawResult]]
    ) -> Callable[[Any], None]:
        def done(reply: Any) -> None:
            group.busy -= 1
            _deliver(reply, plans, futures)
            if isinstance(reply, WireError):
                # The connection failed under the calls ahead of the plans held: they fail
                # with them rather than wait a second budget on a server that stopped
                # answering. The clock is for a busy server: the next plan goes at once.
                group.next_at = 0.0
                if group.plans:
                    _fail(group, reply)
            elif group.plans and not group.due:
                # Send at the end of this loop iteration, not here as the reply is read:
                # a write here would be followed by everything else this iteration runs
                # (uvloop runs timers before reading), which must not count against the
                # budget; and the requests this reply wakes may join.
                self._schedule(group)

        return done

    def close(self, error: BackendError) -> None:
        """Fail every plan still held (the connections are closing)."""
        groups = [self._single, *self._groups.values()]
        self._groups = {}
        for group in groups:
            _fail(group, error)


def _fail(group: _Group, error: BackendError) -> None:
    if group.timer is not None:
        group.timer.cancel()
        group.timer = None
    futures, group.plans, group.futures = group.futures, [], []
    for fut in futures:
        if not fut.done():
            fut.set_exception(error)


def _deliver(reply: Any, plans: list[Plan], futures: list[asyncio.Future[RawResult]]) -> None:
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
