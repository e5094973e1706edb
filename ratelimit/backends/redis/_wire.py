"""One pipelined RESP connection to one Redis server, for the asyncio hot path.

Why not redis-py's asyncio connection here: the timeout budget must bound how long Redis
takes to answer, never how busy this event loop is. redis-py reads replies in a task
that the loop resumes *after* its timers of the same iteration, so a budget timer fires
before a reply that arrived in time is read, and a busy loop turns a healthy Redis into
timeouts. This connection parses replies in ``data_received`` (hiredis, in C), which the
loop runs before that iteration's timers: a reply that reached the socket before the
deadline is always seen before the deadline is checked.

Commands are pipelined: they are written as soon as they are ready, replies are matched
to them in order, and each carries its own deadline from the moment it was written.
When the oldest command outlives its deadline the connection is closed and every
command on it fails with :class:`BackendTimeout`: replies are ordered, so one lost
reply makes the rest unreadable. A failed command may or may not have run on Redis.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import select
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from ..base import BackendError

try:
    import hiredis
except ImportError as exc:  # pragma: no cover - hiredis comes with the redis extra
    raise ImportError("the Redis backend needs hiredis: pip install 'ambient-ratelimit[redis]'") from exc

__all__ = ["BackendTimeout", "Connection", "Endpoint", "ReplyError", "WireError", "open_connection"]

log = logging.getLogger("ratelimit")

pack_command: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command

OnReply = Callable[[Any], None]
"""Called with a command's reply: a value, a :class:`ReplyError`, or a BackendError."""


class WireError(BackendError):
    """The connection to one server failed (``shard`` names it)."""


class BackendTimeout(WireError):
    """The backend did not answer within the timeout budget."""


class ReplyError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-MOVED ...``, ``-NOSCRIPT ...``)."""


@dataclass(frozen=True)
class Endpoint:
    """Where one Redis server listens and how to log in."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None  # a unix socket instead of host:port
    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0

    @property
    def address(self) -> str:
        """``host:port`` or the socket path: the shard name used by breakers and errors."""
        return self.path if self.path is not None else f"{self.host}:{self.port}"

    def moved(self, address: str) -> Endpoint:
        """The same credentials at another ``host:port`` (a Cluster redirect)."""
        host, _, port = address.rpartition(":")
        return Endpoint(
            host or self.host, int(port), None, self.ssl, None, self.username, self.password, self.db
        )


class _Pending:
    __slots__ = ("deadline", "on_reply")

    def __init__(self, on_reply: OnReply, deadline: float) -> None:
        self.on_reply = on_reply
        self.deadline = deadline


class Connection(asyncio.Protocol):
    """A pipelined RESP2 connection (see the module docstring). Build it with :func:`open_connection`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, address: str, budget: float) -> None:
        self._loop = loop
        self.address = address
        # How long past a deadline an answer that already arrived may still be read.
        self._grace = max(10 * budget, 0.5)
        self._reader = hiredis.Reader(replyError=ReplyError)
        self._pending: deque[_Pending] = deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed: BackendError | None = None

    # -- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but not always an asyncio.Transport instance: uvloop's
        # TCPTransport (uvicorn[standard]) derives from no asyncio class.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self._pending
        while pending:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(WireError(f"Redis protocol error from {self.address}: {exc}", self.address))
                return
            if reply is False:
                break
            _deliver(pending.popleft().on_reply, reply)

    def connection_lost(self, exc: Exception | None) -> None:
        why = f": {exc}" if exc else ""
        self._fail(WireError(f"connection to Redis at {self.address} lost{why}", self.address))

    # -- commands -------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Open and not failed: new commands may be written."""
        return self._closed is None and self._transport is not None and not self._transport.is_closing()

    @property
    def in_flight(self) -> int:
        """Commands written whose replies have not arrived."""
        return len(self._pending)

    def send(self, packed: bytes, replies: Sequence[OnReply], budget: float) -> None:
        """Write ``packed`` (one or more commands); ``replies`` get their answers in order.

        Every command must be answered within ``budget`` seconds from now, else the
        connection closes and each gets :class:`BackendTimeout`.
        """
        if self._closed is not None:
            for on_reply in replies:
                _deliver(on_reply, self._closed)
            return
        assert self._transport is not None
        deadline = self._loop.time() + budget
        self._pending.extend(_Pending(r, deadline) for r in replies)
        self._transport.write(packed)
        if self._timer is None:
            self._timer = self._loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._pending:
            return
        head = self._pending[0].deadline
        now = self._loop.time()
        if head > now:
            self._timer = self._loop.call_at(head, self._check_deadline)
            return
        if self._answer_waiting() and now < head + self._grace:
            # Redis has answered, but this process has not read it yet: it was busy (or
            # not scheduled) when the deadline passed. Read first, then judge: a timer
            # due now runs after the next iteration's I/O callbacks.
            self._timer = self._loop.call_at(now, self._check_deadline)
            return
        self._fail(BackendTimeout(f"Redis at {self.address} did not answer within the budget", self.address))

    def _answer_waiting(self) -> bool:
        """Bytes from Redis wait in the socket, unread by this loop."""
        sock = self._transport.get_extra_info("socket") if self._transport is not None else None
        if sock is None:
            return False
        try:
            return bool(select.select([sock.fileno()], [], [], 0)[0])
        except (OSError, ValueError):
            return False

    def _fail(self, error: BackendError) -> None:
        if self._closed is None:
            self._closed = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._transport.abort()
        pending, self._pending = self._pending, deque()
        for p in pending:
            _deliver(p.on_reply, error)

    def close(self) -> None:
        """Close the connection; commands still waiting fail."""
        self._fail(WireError(f"connection to Redis at {self.address} closed", self.address))

    async def call(self, *args: Any, budget: float) -> Any:
        """One command, awaited (the handshake and rare commands; the hot path uses :meth:`send`)."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.send(pack_command(args), [_resolver(fut)], budget)
        reply = await fut
        if isinstance(reply, BackendError):
            raise reply
        return reply  # a ReplyError is returned, for the caller to judge


def _resolver(fut: asyncio.Future[Any]) -> OnReply:
    def on_reply(reply: Any) -> None:
        if not fut.done():
            fut.set_result(reply)

    return on_reply


async def open_connection(endpoint: Endpoint, budget: float) -> Connection:
    """Connect and log in (AUTH, SELECT) within ``budget`` seconds, or raise :class:`WireError`.

    The TCP connect gets the budget, to every address a name resolves to together, and is
    judged like a reply (see :func:`_connect_tcp`); resolving a name and a TLS handshake,
    whose steps asyncio runs internally, get ``max(budget, 1 s)`` each; the login
    commands are ordinary pipelined commands that share one more budget: a server that
    never completes the connect, or never answers the login, costs one budget, not one
    per address or per command.
    """
    loop = asyncio.get_running_loop()
    address = endpoint.address

    def factory() -> Connection:
        return Connection(loop, address, budget)

    try:
        if endpoint.path is not None:
            connecting = loop.create_unix_connection(factory, endpoint.path, ssl=endpoint.ssl)
            _, conn = await asyncio.wait_for(connecting, budget)
        else:
            sock = await _connect_tcp(loop, endpoint.host, endpoint.port, budget)
            try:
                _, conn = await loop.create_connection(
                    factory,
                    sock=sock,
                    ssl=endpoint.ssl,
                    server_hostname=(endpoint.server_hostname or endpoint.host) if endpoint.ssl else None,
                    ssl_handshake_timeout=max(budget, 1.0) if endpoint.ssl else None,
                )
            except BaseException:
                sock.close()
                raise
    except (asyncio.TimeoutError, TimeoutError) as exc:
        raise BackendTimeout(f"connecting to Redis at {address} took over the budget", address) from exc
    except (OSError, ssl.SSLError) as exc:
        raise WireError(f"cannot connect to Redis at {address}: {exc}", address) from exc
    deadline = loop.time() + budget
    try:
        if endpoint.password is not None:
            auth: tuple[str, ...] = ("AUTH", endpoint.password)
            if endpoint.username:
                auth = ("AUTH", endpoint.username, endpoint.password)
            _check(await conn.call(*auth, budget=_left(loop, deadline)), address)
        if endpoint.db:
            _check(await conn.call("SELECT", endpoint.db, budget=_left(loop, deadline)), address)
    except BaseException:
        conn.close()
        raise
    return conn


async def _connect_tcp(loop: asyncio.AbstractEventLoop, host: str, port: int, budget: float) -> socket.socket:
    """A connected non-blocking socket, or TimeoutError/OSError.

    Like replies, the connect is judged by the socket, not by when this loop gets round
    to it: when the deadline timer runs, a socket that is already writable has connected
    in time (asyncio runs that iteration's I/O callbacks before its timers).
    """
    try:
        ipaddress.ip_address(host)
        infos: list[tuple[int, Any]] = [(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))]
    except ValueError:  # a name: resolve it (asyncio's resolver thread), within the budget
        found = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), max(budget, 1.0)
        )
        infos = [(family, addr) for family, _, _, _, addr in found]
    error: OSError | None = None
    deadline = loop.time() + budget
    for tried, (family, addr) in enumerate(infos):
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # An equal share of what is left: an address that hangs leaves the others
            # time, and one that refuses at once passes its share on to them.
            await _connected(loop, sock, addr, _left(loop, deadline) / (len(infos) - tried))
            return sock
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error or OSError(f"no address for {host}")


async def _connected(loop: asyncio.AbstractEventLoop, sock: socket.socket, addr: Any, budget: float) -> None:
    err = sock.connect_ex(addr)
    if err == 0:
        return
    if err not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
        raise OSError(err, os.strerror(err))
    done: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def writable() -> None:
        if not done.done():
            done.set_result(None)

    def deadline() -> None:
        if done.done():
            return
        if select.select([], [fd], [], 0)[1]:
            done.set_result(None)  # connected (or refused) in time; this loop was late
        else:
            done.set_exception(TimeoutError())

    loop.add_writer(fd, writable)
    timer = loop.call_later(budget, deadline)
    try:
        await done
    finally:
        timer.cancel()
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def _left(loop: asyncio.AbstractEventLoop, deadline: float) -> float:
    """Seconds until ``deadline``; never 0, so that an answer already in is still read."""
    return max(deadline - loop.time(), 0.001)


def _deliver(on_reply: OnReply, reply: Any) -> None:
    try:
        on_reply(reply)
    except Exception:  # a failing hook must not stop the replies behind it
        log.exception("rate limit reply handler failed")


def _check(reply: Any, address: str) -> Any:
    if isinstance(reply, ReplyError):
        raise WireError(f"Redis at {address} refused the login: {reply}", address)
    return reply
