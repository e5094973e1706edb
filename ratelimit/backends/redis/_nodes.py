"""Script calls routed to Redis servers over pipelined connections (the asyncio path).

A :class:`Node` owns one connection to one server: calls are written as soon as they
are ready and pipelined, up to ``max_in_flight`` unanswered ones; past that they queue
here, unbudgeted (the budget starts when a call is written, see ``_wire``), and go out as
replies come back. A :class:`Cluster` keeps the slot map and one Node per master: calls
for one node go out in one write, ``MOVED``/``ASK``/``TRYAGAIN`` are followed within the
budget (those replies mean the script did not run, so resending is safe), and a lost
connection or a timeout makes it re-read the slot map (a failover moves slots).

What is at most once: a call whose connection failed or timed out after it was written
may have run; it is never resent. Its requests get the failure policy's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..._core.scripts import LuaScript
from ..base import BackendError
from ._wire import BackendTimeout, Connection, Endpoint, ReplyError, WireError, open_connection, pack_command

__all__ = ["Cluster", "Node", "ScriptCall"]

log = logging.getLogger("ratelimit")

Resolve = Callable[[], Awaitable[Endpoint]]
Observe = Callable[[float, float], None]
"""Called per answered call with (seconds queued in this process, seconds in Redis)."""

_MAX_REDIRECTS = 5
_SLOTS = 16384
_DOWN_REFRESH = 0.2  # seconds between slot map reads while a master is unreachable


class ScriptCall:
    """One EVALSHA (EVAL after NOSCRIPT) on one hash slot, and who wants its reply."""

    __slots__ = (
        "argv",
        "asking",
        "created",
        "deadline",
        "done",
        "evaled",
        "keys",
        "redirects",
        "script",
        "sent",
        "slot",
    )

    def __init__(
        self,
        script: LuaScript,
        keys: Sequence[Any],
        argv: Sequence[Any],
        done: Callable[[Any], None],
        created: float,
        slot: int = 0,
    ) -> None:
        self.script = script
        self.keys = keys
        self.argv = argv
        self.done = done  # gets the reply, or a BackendError
        self.created = created
        self.slot = slot
        self.deadline = 0.0  # set when first written (again for the EVAL after NOSCRIPT): now + budget
        self.sent = 0.0
        self.evaled = False
        self.asking = False
        self.redirects = 0

    def packed(self) -> bytes:
        head = ("EVAL", self.script.source) if self.evaled else ("EVALSHA", self.script.sha)
        command = pack_command((*head, len(self.keys), *self.keys, *self.argv))
        return pack_command(("ASKING",)) + command if self.asking else command


def _ignore(reply: Any) -> None:
    pass


class Node:
    """One Redis server: a pipelined connection, reconnected on demand, and a queue."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        resolve: Resolve,
        address: str,
        budget: float,
        max_in_flight: int,
        observe: Observe | None = None,
        on_redirect: Callable[[ScriptCall, str], bool] | None = None,
        on_failure: Callable[[Node, BackendError], None] | None = None,
    ) -> None:
        self.loop = loop
        self.address = address
        self._resolve = resolve
        self._budget = budget
        self._max_in_flight = max_in_flight
        self._observe = observe
        self._on_redirect = on_redirect
        self._on_failure = on_failure
        self._conn: Connection | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._queue: list[ScriptCall] = []
        self._in_flight = 0
        self._drain_soon = False

    def submit(self, calls: Sequence[ScriptCall]) -> None:
        """Write ``calls`` now if the connection has room, else queue them."""
        conn = self._conn
        if conn is not None and conn.usable and not self._queue:
            room = self._max_in_flight - self._in_flight
            if room >= len(calls):
                self._write(conn, calls)
                return
            if room > 0:
                self._write(conn, calls[:room])
                calls = calls[room:]
        self._queue.extend(calls)
        if conn is None or not conn.usable:
            self._connect()

    def _write(self, conn: Connection, calls: Sequence[ScriptCall]) -> None:
        now = self.loop.time()
        handlers: list[Callable[[Any], None]] = []
        for call in calls:
            if call.deadline == 0.0:
                call.deadline = now + self._budget
            call.sent = now
            if call.asking:
                handlers.append(_ignore)
            handlers.append(self._handler(call))
        self._in_flight += len(calls)
        budget = max(min(call.deadline for call in calls) - now, 0.001)
        packed = calls[0].packed() if len(calls) == 1 else b"".join(c.packed() for c in calls)
        conn.send(packed, handlers, budget)

    def _handler(self, call: ScriptCall) -> Callable[[Any], None]:
        return lambda reply: self._answered(call, reply)

    def _answered(self, call: ScriptCall, reply: Any) -> None:
        self._in_flight -= 1
        if isinstance(reply, ReplyError):
            message = str(reply)
            if message.startswith("NOSCRIPT") and not call.evaled:
                call.evaled = True  # the script did not run: EVAL it (and cache it)
                # A new call, so a new budget from its write: the time until this reply
                # was read (a busy loop, a slow network) must not be charged to the EVAL.
                call.deadline = 0.0
                self.submit([call])
            elif self._on_redirect is not None and self._on_redirect(call, message):
                pass
            else:
                call.done(BackendError(f"Redis at {self.address} answered an error: {message}", self.address))
        elif isinstance(reply, BackendError):
            call.done(reply)
            if self._on_failure is not None:
                self._on_failure(self, reply)
            self._fail_queue(reply)
            return
        else:
            if self._observe is not None:
                now = self.loop.time()
                self._observe(call.sent - call.created, now - call.sent)
            call.done(reply)
        if self._queue and not self._drain_soon:
            # Replies arrive many per read: send what they made room for in one write
            # once they are all handled, not one write per reply.
            self._drain_soon = True
            self.loop.call_soon(self._drain_later)

    def _drain_later(self) -> None:
        self._drain_soon = False
        if self._queue:
            self._drain()

    def _drain(self) -> None:
        conn = self._conn
        if conn is None or not conn.usable:
            self._connect()
            return
        room = self._max_in_flight - self._in_flight
        if room <= 0:
            return
        calls, self._queue = self._queue[:room], self._queue[room:]
        self._write(conn, calls)

    def _fail_queue(self, error: BackendError) -> None:
        queue, self._queue = self._queue, []
        for call in queue:
            call.done(error)

    def _connect(self) -> None:
        if self._connecting is None or self._connecting.done():
            self._connecting = self.loop.create_task(self._open())

    async def _open(self) -> None:
        try:
            endpoint = await asyncio.wait_for(self._resolve(), self._budget)
            conn = await open_connection(endpoint, self._budget)
        except asyncio.CancelledError:
            self._fail_queue(WireError("rate limiter closed", self.address))
            raise
        except BackendError as exc:
            self._fail_and_report(exc)
            return
        except (asyncio.TimeoutError, TimeoutError):
            self._fail_and_report(
                BackendTimeout(f"finding the Redis server took over {self._budget}s", self.address)
            )
            return
        except Exception as exc:  # a resolver (Sentinel) error
            self._fail_and_report(WireError(f"cannot reach Redis at {self.address}: {exc}", self.address))
            return
        self._use(conn)
        if self._queue:
            self._drain()

    def _use(self, conn: Connection) -> None:
        """Make ``conn`` this node's connection, closing the one it replaces."""
        old, self._conn = self._conn, conn
        if old is not None:
            old.close()

    @property
    def connected(self) -> bool:
        """An open connection that has not failed."""
        return self._conn is not None and self._conn.usable

    def _fail_and_report(self, error: BackendError) -> None:
        if self._on_failure is not None:
            self._on_failure(self, error)
        self._fail_queue(error)

    async def command(self, *args: Any) -> Any:
        """One command outside the pipeline's bookkeeping (CLUSTER SLOTS); raises BackendError."""
        conn = self._conn
        if conn is None or not conn.usable:
            conn = await open_connection(await asyncio.wait_for(self._resolve(), self._budget), self._budget)
            self._use(conn)
        reply = await conn.call(*args, budget=self._budget)
        if isinstance(reply, ReplyError):
            raise BackendError(f"Redis at {self.address} answered an error: {reply}", self.address)
        return reply

    async def aclose(self) -> None:
        """Close the connection; queued calls fail."""
        task, self._connecting = self._connecting, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._fail_queue(WireError("rate limiter closed", self.address))
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _static(endpoint: Endpoint) -> Resolve:
    async def resolve() -> Endpoint:
        return endpoint

    return resolve


class Cluster:
    """Routes script calls to the master owning their slot, following redirects."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        startup: Sequence[Endpoint],
        budget: float,
        max_in_flight: int,
        observe: Observe | None = None,
    ) -> None:
        self.loop = loop
        self._startup = list(startup)
        self._template = startup[0]
        self._budget = budget
        self._max_in_flight = max_in_flight
        self._observe = observe
        self._nodes: dict[str, Node] = {}
        self._slots: list[str | None] = [None] * _SLOTS
        self._loaded = False
        self._waiting: list[ScriptCall] = []  # calls that arrived before the first slot map
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = -1e9
        self._down: set[str] = set()  # masters that failed and still serve slots
        self._recheck: asyncio.TimerHandle | None = None
        self._closed = False

    def shard_of(self, slot: int) -> str | None:
        """The address of the master serving ``slot`` (None before the slot map is known)."""
        return self._slots[slot]

    def node(self, address: str) -> Node:
        """The Node for ``address`` (made on first use)."""
        found = self._nodes.get(address)
        if found is None:
            endpoint = self._template.moved(address)
            found = self._nodes[address] = Node(
                self.loop,
                _static(endpoint),
                address,
                self._budget,
                self._max_in_flight,
                self._observe,
                self._redirect,
                self._node_failed,
            )
        return found

    def submit(self, calls: Sequence[ScriptCall]) -> None:
        """Send each call to its slot's master; calls for one master go in one write."""
        if not self._loaded:
            self._waiting.extend(calls)
            self.refresh()
            return
        by_node: dict[str, list[ScriptCall]] = {}
        for call in calls:
            address = self._slots[call.slot]
            if address is None:
                call.done(BackendError(f"no Redis Cluster node serves slot {call.slot}"))
                self.refresh()
            else:
                by_node.setdefault(address, []).append(call)
        for address, group in by_node.items():
            self.node(address).submit(group)

    def _redirect(self, call: ScriptCall, message: str) -> bool:
        """Follow MOVED/ASK/TRYAGAIN (at most 5 times); False: not a redirect.

        These replies say the script did not run, so the call is sent again, each time
        with a budget of its own from its write, like the EVAL after NOSCRIPT: the time
        until this reply was read must not be charged to the next server.
        """
        kind, _, rest = message.partition(" ")
        if kind not in ("MOVED", "ASK", "TRYAGAIN"):
            return False
        call.redirects += 1
        if call.redirects > _MAX_REDIRECTS:
            call.done(
                BackendError(f"Redis Cluster redirects did not settle after {_MAX_REDIRECTS}: {message}")
            )
            return True
        call.asking = False
        call.deadline = 0.0
        if kind == "TRYAGAIN":  # a slot mid-migration: try again shortly
            self.loop.call_later(0.005, self.submit, [call])
            return True
        slot_text, _, address = rest.partition(" ")
        if kind == "MOVED":
            self._slots[int(slot_text)] = address
            self.refresh()
        else:
            call.asking = True
        self.node(address).submit([call])
        return True

    def _node_failed(self, node: Node, error: BackendError) -> None:
        # A dead or unreachable master is how a failover starts: learn the new map, and
        # keep reading it until the master's slots move or it answers again. Otherwise
        # the map would be read again only when a later call to the dead master fails,
        # which the limiter's circuit breaker for that master delays by up to seconds.
        self._down.add(node.address)
        self.refresh()

    def _watch_down(self) -> None:
        if self._closed:
            return
        serving = set(self._slots)
        self._down = {a for a in self._down if a in serving and not self.node(a).connected}
        if self._down and self._recheck is None:
            self._recheck = self.loop.call_later(_DOWN_REFRESH, self._refresh_down)

    def _refresh_down(self) -> None:
        self._recheck = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the slot map in the background (at most every 100 ms)."""
        if self._closed:  # closing fails the calls in flight, which would ask for a map
            return
        if self._refreshing is not None and not self._refreshing.done():
            return
        if self.loop.time() - self._refreshed_at < 0.1 and self._loaded:
            return
        self._refreshing = self.loop.create_task(self._refresh())

    async def _refresh(self) -> None:
        self._refreshed_at = self.loop.time()
        known = list(dict.fromkeys([*(n for n in self._nodes), *(e.address for e in self._startup)]))
        known.sort(key=lambda address: address in self._down)  # ask the failed masters last
        error: BaseException | None = None
        for address in known:
            try:
                reply = await self.node(address).command("CLUSTER", "SLOTS")
            except (BackendError, OSError, asyncio.TimeoutError, TimeoutError) as exc:
                error = exc
                continue
            self._apply(reply)
            break
        else:
            log.warning("cannot read the Redis Cluster slot map from %s: %s", known, error)
            waiting, self._waiting = self._waiting, []
            err = (
                error
                if isinstance(error, BackendError)
                else BackendError(f"Redis Cluster unreachable: {error}")
            )
            for call in waiting:
                call.done(err)
            self._watch_down()
            return
        self._watch_down()
        waiting, self._waiting = self._waiting, []
        if waiting:
            self.submit(waiting)

    def _apply(self, reply: Any) -> None:
        slots: list[str | None] = [None] * _SLOTS
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            host = host or self._template.host
            address = f"{host}:{int(master[1])}"
            slots[start : end + 1] = [address] * (end - start + 1)
        self._slots = slots
        self._loaded = True

    async def aclose(self) -> None:
        """Close every node's connection."""
        self._closed = True
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        self._down = set()
        task, self._refreshing = self._refreshing, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for node in list(self._nodes.values()):
            await node.aclose()
        self._nodes = {}
