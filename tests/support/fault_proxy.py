"""A TCP proxy for tests that injects network faults between a client and a server.

The proxy listens on a free 127.0.0.1 port and forwards to a target. Its mode can be
switched while connections are open; each switch has taken effect when the call returns:

- ``passthrough()``: forward every byte at once (the initial mode).
- ``delay(seconds)``: hold every chunk, in both directions, ``seconds`` before forwarding
  it (order is kept: a chunk never overtakes an earlier one).
- ``blackhole()``: accept and read, forward nothing, answer nothing (bytes are dropped).
- ``slow_accept()``: accept no new connection: the listening queue is shrunk to one and
  filled by the proxy itself, so a new client's SYN is dropped and its connect hangs.
  Open connections keep forwarding.
- ``reset()``: close every connection with a TCP RST, and new ones as they come.

Everything runs on one event loop in a background thread; :meth:`FaultProxy.close` (or
leaving the ``with`` block) closes every connection and stops the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["FaultProxy"]

T = TypeVar("T")

_BACKLOG = 128
_SWITCH_TIMEOUT = 5.0  # bound on every cross-thread wait
_FILL_CONNECT_TIMEOUT = 0.05  # a filler connect slower than this means the queue is full
_MAX_FILLERS = 8


def _linger_zero(sock: Any) -> None:
    """Make ``close()`` send RST instead of FIN."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Direction:
    """Bytes from one side on their way to the other, released in order at their time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_eof_sent: Callable[[], None]) -> None:
        self._loop = loop
        self._on_eof_sent = on_eof_sent
        self._queue: deque[tuple[float, bytes]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.sink: asyncio.Transport | None = None
        self.eof = False
        self.eof_sent = False

    def push(self, data: bytes, delay: float) -> None:
        """Forward ``data`` after ``delay`` seconds (and after every earlier chunk)."""
        if delay <= 0 and not self._queue and self.sink is not None:
            self.sink.write(data)
            return
        self._queue.append((self._loop.time() + delay, data))
        self.schedule()

    def finish(self) -> None:
        """The source sent EOF: pass it on once the queued bytes are out."""
        self.eof = True
        self.schedule()

    def schedule(self) -> None:
        """Arrange for the head of the queue (or a pending EOF) to go out on time."""
        if self._timer is None and self.sink is not None and (self._queue or self.eof):
            when = self._queue[0][0] if self._queue else self._loop.time()
            self._timer = self._loop.call_at(when, self._release)

    def _release(self) -> None:
        self._timer = None
        sink = self.sink
        if sink is None or sink.is_closing():
            return
        now = self._loop.time() + 0.001  # timers may fire a hair early
        while self._queue and self._queue[0][0] <= now:
            sink.write(self._queue.popleft()[1])
        if self._queue:
            self.schedule()
        elif self.eof and not self.eof_sent:
            self.eof_sent = True
            try:
                if sink.can_write_eof():
                    sink.write_eof()
            except OSError:  # the other side is gone already
                sink.abort()
            self._on_eof_sent()

    def cancel(self) -> None:
        """Drop what is queued."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()


class _Side(asyncio.Protocol):
    """One socket of a proxied connection; what it receives goes to the other side."""

    def __init__(self, pair: _Pair, outgoing: _Direction) -> None:
        self.pair = pair
        self.outgoing = outgoing
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.pair.closed:  # reset (or shut down) while this side was connecting
            _linger_zero(transport.get_extra_info("socket"))
            transport.abort()

    def data_received(self, data: bytes) -> None:
        mode, seconds = self.pair.proxy._mode
        if mode == "blackhole":
            return
        self.outgoing.push(data, seconds if mode == "delay" else 0.0)

    def eof_received(self) -> bool:
        self.outgoing.finish()
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pair.close()


class _Pair:
    """A client connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy, ident: int) -> None:
        loop = proxy._loop
        self.proxy = proxy
        self.ident = ident
        self.up = _Direction(loop, self._half_closed)  # client -> server
        self.down = _Direction(loop, self._half_closed)  # server -> client
        self.client = _Side(self, self.up)
        self.server = _Side(self, self.down)
        self.closed = False

    def attach(self) -> None:
        """Both sockets are connected: start forwarding what was queued meanwhile."""
        self.up.sink = self.server.transport
        self.down.sink = self.client.transport
        self.up.schedule()
        self.down.schedule()

    def _half_closed(self) -> None:
        if self.up.eof_sent and self.down.eof_sent:
            self.close()

    def close(self, rst: bool = False) -> None:
        """Close both sockets (with RST when ``rst``)."""
        if self.closed:
            return
        self.closed = True
        self.up.cancel()
        self.down.cancel()
        for side in (self.client, self.server):
            transport = side.transport
            if transport is None:
                continue
            if rst:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    _linger_zero(sock)
            transport.abort()
        self.proxy._pairs.pop(self.ident, None)


class FaultProxy:
    """A TCP proxy from a free 127.0.0.1 port to ``target``, with switchable faults.

    Example::

        with FaultProxy(("127.0.0.1", redis.port)) as proxy:
            limiter = Limiter(proxy.url)
            proxy.delay(0.2)
            ...
            proxy.passthrough()
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._mode: tuple[str, float] = ("pass", 0.0)
        self._pairs: dict[int, _Pair] = {}
        self._ids = itertools.count(1)
        self._fillers: list[socket.socket] = []
        self._filler_ports: set[int] = set()
        self.accepted = 0
        """Client connections accepted so far (fillers of ``slow_accept`` not counted)."""
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(_BACKLOG)
        self._listener.setblocking(False)
        self.host, self.port = self._listener.getsockname()[:2]
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._closed = False
        self._thread.start()
        self._on_loop(self._accepting, True)

    # -- the public switches ----------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://HOST:PORT/0`` through the proxy."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def mode(self) -> str:
        """The current mode, as text (``"delay(0.2)"``)."""
        name, seconds = self._mode
        return f"delay({seconds:g})" if name == "delay" else name

    def connection_ids(self) -> set[int]:
        """The identifiers of the proxied connections open now."""
        return self._on_loop(lambda: set(self._pairs))

    def passthrough(self) -> None:
        """Forward everything at once (the initial mode)."""
        self._switch("pass")

    def delay(self, seconds: float) -> None:
        """Hold every chunk in both directions ``seconds`` before forwarding it."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0, got {seconds!r}")
        self._switch("delay", seconds)

    def blackhole(self) -> None:
        """Read and drop everything; answer nothing."""
        self._switch("blackhole")

    def slow_accept(self) -> None:
        """Accept no new connection: a new client's connect hangs (its SYN is dropped)."""
        self._switch("slow_accept")
        self._fill_backlog()

    def reset(self) -> None:
        """Close every connection with RST, now and as new ones come."""
        self._switch("reset")

    # -- switching ----------------------------------------------------------------

    def _switch(self, mode: str, seconds: float = 0.0) -> None:
        if self._closed:
            raise RuntimeError("the proxy is closed")
        self._on_loop(self._apply, mode, seconds)

    def _apply(self, mode: str, seconds: float) -> None:
        """Runs on the proxy's loop."""
        previous = self._mode[0]
        self._mode = (mode, seconds)
        if previous == "slow_accept" and mode != "slow_accept":
            self._drop_fillers()
            self._listener.listen(_BACKLOG)
            self._accepting(True)
        if mode == "slow_accept":
            self._accepting(False)
            self._listener.listen(0)  # the kernel queues one connection, then drops SYNs
        if mode == "reset":
            for pair in list(self._pairs.values()):
                pair.close(rst=True)

    def _fill_backlog(self) -> None:
        """Occupy the listening queue with our own connections (runs in the caller's thread)."""
        while len(self._fillers) < _MAX_FILLERS:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(_FILL_CONNECT_TIMEOUT)
            try:
                sock.connect((self.host, self.port))
            except OSError:  # timed out: the queue is full
                sock.close()
                return
            port = sock.getsockname()[1]
            self._on_loop(self._add_filler, sock, port)
        raise RuntimeError("could not fill the proxy's listening queue")

    def _add_filler(self, sock: socket.socket, port: int) -> None:
        self._fillers.append(sock)
        self._filler_ports.add(port)

    def _drop_fillers(self) -> None:
        for sock in self._fillers:
            _linger_zero(sock)
            sock.close()
        self._fillers = []

    # -- accepting --------------------------------------------------------------

    def _accepting(self, on: bool) -> None:
        if on:
            self._loop.add_reader(self._listener.fileno(), self._accept_ready)
        else:
            self._loop.remove_reader(self._listener.fileno())

    def _accept_ready(self) -> None:
        while True:
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if peer[1] in self._filler_ports:  # one of ours, from slow_accept
                self._filler_ports.discard(peer[1])
                sock.close()
                continue
            self.accepted += 1
            if self._mode[0] == "reset":
                _linger_zero(sock)
                sock.close()
                continue
            task = self._loop.create_task(self._open(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(self, next(self._ids))
        self._pairs[pair.ident] = pair
        try:
            await self._loop.connect_accepted_socket(lambda: pair.client, sock)
            await self._loop.create_connection(lambda: pair.server, *self.target)
        except BaseException as exc:
            pair.close(rst=True)
            if pair.client.transport is None:
                sock.close()
            if isinstance(exc, OSError):
                return
            raise
        if pair.closed:
            return
        server_sock = pair.server.transport.get_extra_info("socket") if pair.server.transport else None
        if server_sock is not None:
            server_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair.attach()

    # -- plumbing -----------------------------------------------------------------

    def _on_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the proxy's loop and wait (bounded) for its result."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return done.result(timeout=_SWITCH_TIMEOUT)

    async def _shutdown(self) -> None:
        self._accepting(False)
        self._drop_fillers()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=_SWITCH_TIMEOUT)
        for pair in list(self._pairs.values()):
            pair.close()
        await asyncio.sleep(0)  # let the transports run their connection_lost
        self._listener.close()

    def close(self) -> None:
        """Close every connection and the listener, and stop the thread."""
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=_SWITCH_TIMEOUT)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=_SWITCH_TIMEOUT)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FaultProxy({self.host}:{self.port} -> {self.target[0]}:{self.target[1]}, {self.mode})"
