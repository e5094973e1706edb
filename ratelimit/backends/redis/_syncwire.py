"""Blocking RESP connections for the sync hot path: one script call per write, budgeted.

Why not redis-py here: its sync client spends about 140 µs of CPU per command on this
path (connection pool, retry wrapper, observability hooks: some 140 Python calls), four
times what the command itself costs a blocking socket and ``hiredis``. That CPU holds
the GIL the application's threads need. Admin commands (SCAN, DEL) and Redis Cluster
stay on redis-py.

The budget: a call's replies must arrive within ``budget`` seconds from the moment it is
written (connecting, when a connection must be made first, is bounded separately).
A connection that failed or timed out is closed, never reused: replies are ordered, so
one lost reply makes the rest unreadable. A failed call may or may not have run.

Fork safety: a :class:`SyncPool` belongs to the process that made it. In a forked child
(gunicorn forks its workers after the app is imported) it closes its copies of the
parent's sockets, without a shutdown, which leaves the parent's connections working,
and connects anew.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from time import monotonic
from typing import Any

from ..._core.scripts import LuaScript
from ..base import BackendError
from ._wire import BackendTimeout, Endpoint, ReplyError, WireError, pack_command

try:
    import hiredis
except ImportError as exc:  # pragma: no cover - hiredis comes with the redis extra
    raise ImportError("the Redis backend needs hiredis: pip install 'ambient-ratelimit[redis]'") from exc

__all__ = ["SyncConnection", "SyncPool", "connect"]

_READ_SIZE = 65536
_LAST_LOOK = 0.0005  # seconds a read past the deadline may wait for bytes already on their way


class SyncConnection:
    """One blocking RESP2 connection; :meth:`call` writes commands and reads their replies."""

    __slots__ = ("_reader", "_sock", "address", "budget")

    def __init__(self, sock: socket.socket, address: str, budget: float) -> None:
        self._sock = sock
        self._reader = hiredis.Reader(replyError=ReplyError)
        self.address = address
        self.budget = budget
        sock.settimeout(budget)

    def call(self, packed: bytes, count: int) -> list[Any]:
        """Write ``packed`` (``count`` commands) and return their replies, within the budget.

        Error replies come back as :class:`ReplyError` values. A failure raises
        :class:`WireError` (:class:`BackendTimeout` past the budget) and closes this
        connection.
        """
        sock, reader, budget = self._sock, self._reader, self.budget
        start = monotonic()
        try:
            sock.sendall(packed)  # the socket's timeout is the budget
            replies: list[Any] = []
            shortened = looked = False
            while True:
                reply = reader.gets()
                if reply is False:
                    # The first read gets the whole budget unless the write took long;
                    # later reads (a reply in several packets) only what is left of it.
                    left = start + budget - monotonic()
                    if left <= 0:
                        # Past the deadline by this process's clock: it may have been
                        # descheduled (GIL, a loaded machine) while the reply arrived in
                        # time. Read what is there before judging, as the asyncio wire does.
                        if looked:
                            raise TimeoutError("budget spent")
                        looked, left = True, _LAST_LOOK
                    if shortened or left < budget - 0.001:
                        sock.settimeout(left)
                        shortened = True
                    data = sock.recv(_READ_SIZE)
                    if not data:
                        raise ConnectionError("Redis closed the connection")
                    reader.feed(data)
                    continue
                replies.append(reply)
                if len(replies) == count:
                    break
            if shortened:
                sock.settimeout(budget)
            return replies
        except TimeoutError as exc:
            self.close()
            raise BackendTimeout(
                f"Redis at {self.address} did not answer within the budget", self.address
            ) from exc
        except (OSError, hiredis.ProtocolError) as exc:
            self.close()
            raise WireError(f"connection to Redis at {self.address} failed: {exc}", self.address) from exc

    def close(self) -> None:
        """Close the socket (idempotent)."""
        with contextlib.suppress(OSError):  # closing a broken socket
            self._sock.close()


def connect(endpoint: Endpoint, budget: float) -> SyncConnection:
    """Connect and log in (AUTH, SELECT), each step within the budget, or raise :class:`WireError`.

    The TCP (or unix socket) connect gets ``budget``; a TLS handshake ``max(budget, 1 s)``,
    as on the asyncio path; the login commands go out in one write with the budget.
    """
    address = endpoint.address
    try:
        if endpoint.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(budget)
                sock.connect(endpoint.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((endpoint.host, endpoint.port), timeout=budget)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if endpoint.ssl is not None:
            sock.settimeout(max(budget, 1.0))
            try:
                sock = endpoint.ssl.wrap_socket(
                    sock, server_hostname=endpoint.server_hostname or endpoint.host
                )
            except BaseException:
                sock.close()
                raise
    except TimeoutError as exc:
        raise BackendTimeout(f"connecting to Redis at {address} took over the budget", address) from exc
    except (OSError, ssl.SSLError) as exc:
        raise WireError(f"cannot connect to Redis at {address}: {exc}", address) from exc
    conn = SyncConnection(sock, address, budget)
    login: list[tuple[Any, ...]] = []
    if endpoint.password is not None:
        user = (endpoint.username,) if endpoint.username else ()
        login.append(("AUTH", *user, endpoint.password))
    if endpoint.db:
        login.append(("SELECT", endpoint.db))
    if login:
        for reply in conn.call(b"".join(pack_command(c) for c in login), len(login)):
            if isinstance(reply, ReplyError):
                conn.close()
                raise WireError(f"Redis at {address} refused the login: {reply}", address)
    return conn


class SyncPool:
    """Idle connections to one server, taken by one call at a time, made on demand.

    ``resolve`` names the server for each new connection (a Sentinel asks for the
    current master). Threads take and give back connections with atomic list
    operations, no lock: the pool holds at most as many as calls ever ran at once.
    """

    def __init__(self, resolve: Callable[[], Endpoint], address: str, budget: float) -> None:
        self._resolve = resolve
        self.address = address
        self._budget = budget
        self._idle: list[SyncConnection] = []
        self._pid = os.getpid()
        self._closed = False

    def scripts(self, script: LuaScript, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run ``script`` once per ``(keys, argv)`` in ``calls``, pipelined in one write.

        Returns one reply per call, or a BackendError for a call Redis refused; raises
        :class:`WireError` when the connection fails (every call then may or may not have
        run). A call answered NOSCRIPT did not run: it is repeated as EVAL, with a
        budget of its own.
        """
        head = ("EVALSHA", script.sha)
        replies, refused = self._call([pack_command((*head, len(k), *k, *a)) for k, a in calls])
        if not refused:  # the hot path
            return replies
        missing = [i for i, r in enumerate(replies) if isinstance(r, ReplyError) and _noscript(r)]
        if missing:
            head = ("EVAL", script.source)
            again, _ = self._call(
                [pack_command((*head, len(k), *k, *a)) for k, a in (calls[i] for i in missing)]
            )
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return [
            BackendError(f"Redis at {self.address} answered an error: {r}", self.address)
            if isinstance(r, ReplyError)
            else r
            for r in replies
        ]

    def _call(self, commands: list[bytes]) -> tuple[list[Any], bool]:
        """The replies to ``commands``, and whether any is an error reply."""
        if self._pid != os.getpid():
            # A forked child: the parent's connections are the parent's (see the module docstring).
            self._pid = os.getpid()
            self.close()
            self._closed = False
        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self._connect()
        replies = conn.call(commands[0] if len(commands) == 1 else b"".join(commands), len(commands))
        refused, healthy = False, True
        for reply in replies:
            if reply.__class__ is ReplyError:
                refused = True
                # READONLY (a master turned replica), LOADING, ...: the next call reconnects,
                # which asks a Sentinel for the master again. NOSCRIPT is no such sign.
                healthy = healthy and _noscript(reply)
        if self._closed or not healthy:
            conn.close()
        else:
            self._idle.append(conn)
        return replies, refused

    def _connect(self) -> SyncConnection:
        try:
            endpoint = self._resolve()
        except BackendError:
            raise
        except Exception as exc:  # a Sentinel's errors
            cls = BackendTimeout if "Timeout" in type(exc).__name__ else WireError
            raise cls(f"cannot find the Redis server {self.address}: {exc}", self.address) from exc
        return connect(endpoint, self._budget)

    def close(self) -> None:
        """Close the idle connections; calls in flight close theirs when done."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _noscript(reply: ReplyError) -> bool:
    return str(reply).startswith("NOSCRIPT")
