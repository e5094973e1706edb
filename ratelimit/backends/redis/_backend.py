"""The Redis backend class; the package docstring (``ratelimit.backends.redis``) says how it works."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from ..._core.plan import Plan
from ..._core.scripts import LuaScript, lua_script
from ..._core.sinks import MetricsSink
from ..base import BackendError, RawResult
from ._batcher import PACE, Batcher
from ._codec import decode, encode
from ._nodes import Cluster, Node, ScriptCall
from ._redis_urls import (
    RedisTarget,
    client_endpoints,
    make_clients,
    make_sentinel,
    parse_redis_url,
    target_endpoints,
)
from ._slots import merge_slots, refund_calls, slot_groups, slot_of, subplan
from ._syncserver import SyncServer, lean_target
from ._wire import BackendTimeout, Endpoint, WireError

try:
    from redis.exceptions import NoScriptError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Redis backend needs redis-py: pip install 'ambient-ratelimit[redis]'") from exc

__all__ = ["RedisBackend"]

_WINDOW = lua_script("sliding_window")
_REFUND = lua_script("refund")


def _error(exc: BaseException, shard: str | None = None) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, (RedisTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return BackendTimeout(f"Redis timed out: {exc}", shard)
    return BackendError(f"Redis failed: {type(exc).__name__}: {exc}", shard)


def _plan_slot(plan: Plan) -> int:
    return slot_of(plan.keys[0])


class RedisBackend:
    """Counters in Redis, decided by ``lua/sliding_window.lua``.

    Args:
        url: a Redis URL (see :mod:`ratelimit.backends.redis._redis_urls` for the forms:
            ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``,
            ``redis+sentinel://``). Or pass ready clients instead.
        client: a sync ``redis.Redis``/``RedisCluster`` to use instead of ``url``.
        async_client: a redis-py asyncio client (standalone or Cluster) whose servers
            and login the asyncio path uses instead of ``url``'s.
        timeout: the budget in seconds for Redis to answer one call, counted from the
            moment the call is written to the socket (plus connecting, when a
            connection must be made first). Time spent queued in this process is not
            counted: see docs/failure.md.
        coalesce: batch the checks of concurrent requests into shared calls: those of
            one event loop, and (standalone and Sentinel) those of one process's threads.
        max_batch: plans per script call.
        max_inflight: unanswered script calls per server connection (pipelined); more
            wait in this process until replies come back.
        pace: seconds a busy connection waits after a call before sending the next
            partial batch (asyncio path; default 0.002). Requests arriving meanwhile go
            out together; 0 holds them only while a call is unanswered. A larger value
            means fewer, fuller calls and more latency (docs/performance.md).

    Clients made from a URL are created lazily (the asyncio connections per event loop)
    and closed by :meth:`close`/:meth:`aclose`; clients passed in are left to their owner.
    """

    name = "redis"

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        async_client: Any = None,
        timeout: float = 0.05,
        coalesce: bool = True,
        max_batch: int = 128,
        max_inflight: int = 32,
        pace: float = PACE,
    ) -> None:
        if url is None and client is None and async_client is None:
            raise ValueError("RedisBackend needs a URL or a client")
        if not (isinstance(timeout, (int, float)) and 0 < timeout <= 60):
            raise ValueError(f"timeout must be a number of seconds in (0, 60], got {timeout!r}")
        for name, value in (("max_batch", max_batch), ("max_inflight", max_inflight)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(pace, bool) or not isinstance(pace, (int, float)) or not 0 <= pace <= 1:
            raise ValueError(f"pace must be a number of seconds in [0, 1], got {pace!r}")
        self.target: RedisTarget | None = parse_redis_url(url) if url is not None else None
        self.timeout = float(timeout)
        self._client = client
        self._closers: list[Any] = []  # what this backend made (sync)
        self._client_lock = threading.Lock()  # threads' first hits must make one client, not one each
        self._aclosers: list[Any] = []  # what this backend made (asyncio)
        self._given_async = async_client
        self._coalesce = coalesce
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._pace = float(pace)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._router: Node | Cluster | None = None
        self._batcher: Batcher | None = None
        self._admin: Any = None  # a redis-py asyncio client, for delete (SCAN)
        self.cluster = self.target.kind == "cluster" if self.target else _is_cluster(client or async_client)
        self.sharded = self.cluster
        """Several servers hold the counters: the limiter keeps a circuit breaker per server."""
        self.metrics: MetricsSink | None = None  # set by the Limiter
        # The sync path's lean connections (standalone, Sentinel), per process; else redis-py.
        self._lean = client is None and lean_target(self.target)
        self._sync: SyncServer | None = None

    def __repr__(self) -> str:
        where = self.target.redacted() if self.target else "given client"
        return f"RedisBackend({where!r}, timeout={self.timeout})"

    def shard_of(self, plan: Plan) -> str | None:
        """The server (``host:port``) holding ``plan``'s first counter on a Cluster, if known."""
        if not self.cluster:
            return None
        slot = slot_of(plan.keys[0])
        if isinstance(self._router, Cluster):
            found = self._router.shard_of(slot)
            if found is not None:
                return found
        if self._client is not None:
            with contextlib.suppress(Exception):  # no slot map yet
                return str(self._client.nodes_manager.get_node_from_slot(slot).name)
        return None

    # -- clients -----------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The sync redis-py client (created on first use)."""
        if self._client is None:
            if self.target is None:
                raise BackendError("no sync Redis client: pass client= or a URL")
            with self._client_lock:
                if self._client is None:
                    self._client, self._closers = make_clients(self.target, self.timeout, aio=False)
        return self._client

    def _async_state(self) -> Batcher:
        loop = asyncio.get_running_loop()
        if loop is not self._loop or self._batcher is None:
            # A new event loop (or the first): its own connections and batcher.
            self._loop = loop
            self._router = self._make_router(loop)
            self._batcher = Batcher(
                loop,
                self._router,
                _WINDOW,
                self._max_batch if self._coalesce else 1,
                _plan_slot if self.cluster else None,
                hold=self._coalesce,
                pace=self._pace,
            )
        return self._batcher

    def _make_router(self, loop: asyncio.AbstractEventLoop) -> Node | Cluster:
        observe = self._observe if self.metrics is not None else None  # set by the Limiter before first use
        if self._given_async is not None:
            endpoints = client_endpoints(self._given_async)
        elif self.target is not None and self.target.kind == "sentinel":
            return Node(
                loop,
                self._sentinel_master(),
                f"sentinel:{self.target.service}",
                self.timeout,
                self._max_inflight,
                observe,
            )
        elif self.target is not None:
            endpoints = target_endpoints(self.target)
        else:
            raise BackendError("no asyncio Redis client: pass async_client= or a URL")
        if self.cluster:
            return Cluster(loop, endpoints, self.timeout, self._max_inflight, observe)
        endpoint = endpoints[0]

        async def resolve() -> Endpoint:
            return endpoint

        return Node(loop, resolve, endpoint.address, self.timeout, self._max_inflight, observe)

    def _sentinel_master(self) -> Callable[[], Any]:
        target = self.target
        assert target is not None
        sentinel = make_sentinel(target, self.timeout, aio=True)
        self._aclosers.append(sentinel)
        template = target_endpoints(target)[0]

        async def resolve() -> Endpoint:
            host, port = await sentinel.discover_master(target.service)
            return template.moved(f"{host}:{port}")

        return resolve

    def _observe(self, queued: float, in_redis: float) -> None:
        if self.metrics is None:  # the common case: nothing to look up per reply
            return
        # Metrics objects written before backend_phases existed simply do not get it.
        record = getattr(self.metrics, "backend_phases", None)
        if record is not None:
            record(self.name, queued, in_redis)

    # -- sync --------------------------------------------------------------------

    def _call(
        self,
        client: Any,
        keys: list[str],
        argv: list[Any],
        script: LuaScript = _WINDOW,
        shard: str | None = None,
    ) -> Any:
        try:
            try:
                return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *argv)
            except NoScriptError:
                return client.execute_command("EVAL", script.source, len(keys), *keys, *argv)
        except Exception as exc:
            raise _error(exc, shard) from exc

    def _sync_server(self) -> SyncServer:
        with self._client_lock:
            server = self._sync
            if server is None or server.pid != os.getpid():
                if server is not None:  # a forked child: the parent's connections are the parent's
                    server.close()
                assert self.target is not None
                server = self._sync = SyncServer(
                    self.target, self.timeout, _WINDOW, self._max_batch, self._coalesce
                )
            return server

    def evaluate(self, plan: Plan) -> RawResult:
        """Decide ``plan`` with one script call (per hash slot on a cluster).

        On a standalone server or a Sentinel's master, the checks of concurrent threads
        share script calls (see ``_combiner``).
        """
        if self._lean:
            server = self._sync
            if server is None or server.pid != os.getpid():
                server = self._sync_server()
            return server.evaluate(plan)
        shard = None
        if self.cluster:
            groups = slot_groups(plan)
            if len(groups) > 1:
                return self._evaluate_crossslot_of(plan, groups)
            shard = self.shard_of(plan)
        keys, argv = encode((plan,))
        return decode(self._call(self.client, keys, argv, _WINDOW, shard), (plan,))[0]

    def _evaluate_crossslot_of(self, plan: Plan, groups: list[list[int]]) -> RawResult:
        parts = [subplan(plan, g) for g in groups]
        results = [
            decode(self._call(self.client, *encode((p,)), _WINDOW, self.shard_of(p)), (p,))[0] for p in parts
        ]
        merged, refunds = merge_slots(plan, groups, parts, results)
        for _, (keys, argv) in refunds:
            self._call(self.client, keys, argv, _REFUND)
        return merged

    def refund(self, plan: Plan, nows: Sequence[int]) -> None:
        """Give back what ``plan`` charged (``lua/refund.lua``, one call per hash slot)."""
        for keys, argv in refund_calls(plan, nows, self.cluster):
            if self._lean:
                self._sync_server().script(_REFUND, keys, argv)
            else:
                self._call(self.client, keys, argv, _REFUND)

    def delete(self, keys: Sequence[str], prefixes: Sequence[str]) -> int:
        """Delete counters by key and by literal key prefix (via SCAN)."""
        try:
            return _delete_sync(self.client, keys, prefixes)
        except Exception as exc:
            raise _error(exc) from exc

    def close(self) -> None:
        """Close the sync clients this backend made (clients passed in stay open)."""
        server, self._sync = self._sync, None
        if server is not None:
            server.close()
        for obj in self._closers:
            _close_quietly(obj)
        if self._closers:
            self._client = None
        self._closers = []

    # -- asyncio -----------------------------------------------------------------

    async def aevaluate(self, plan: Plan) -> RawResult:
        """Decide ``plan``; concurrent calls share script calls when coalescing."""
        batcher = self._batcher
        if batcher is None or asyncio.get_running_loop() is not self._loop:
            batcher = self._async_state()
        if self.cluster and len(plan.keys) > 1:
            groups = slot_groups(plan)
            if len(groups) > 1:
                return await self._aevaluate_crossslot_of(batcher, plan, groups)
        return await batcher.submit(plan)

    async def _aevaluate_crossslot_of(
        self, batcher: Batcher, plan: Plan, groups: list[list[int]]
    ) -> RawResult:
        parts = [subplan(plan, g) for g in groups]
        replies = await asyncio.gather(*(batcher.submit(p) for p in parts), return_exceptions=True)
        failed = [r for r in replies if isinstance(r, BaseException)]
        if failed:
            # Give back what the slots that answered charged, so the request consumes nothing.
            for part, reply in zip(parts, replies, strict=True):
                if not isinstance(reply, BaseException) and reply[0] and part.commit:
                    with contextlib.suppress(BackendError):
                        await self.arefund(part, reply[1])
            raise _error(failed[0])
        results: list[RawResult] = [r for r in replies if not isinstance(r, BaseException)]
        merged, refunds = merge_slots(plan, groups, parts, results)
        await asyncio.gather(*(self._ascript(_REFUND, k, a) for _, (k, a) in refunds))
        return merged

    async def _ascript(self, script: LuaScript, keys: list[str], argv: list[Any]) -> Any:
        """One script call outside the batches (refunds), through the same connections."""
        self._async_state()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def done(reply: Any) -> None:
            if not fut.done():
                fut.set_result(reply)

        assert self._router is not None
        slot = slot_of(keys[0]) if self.cluster else 0
        self._router.submit([ScriptCall(script, keys, argv, done, loop.time(), slot)])
        reply = await fut
        if isinstance(reply, BackendError):
            raise reply
        return reply

    async def arefund(self, plan: Plan, nows: Sequence[int]) -> None:
        """Async :meth:`refund`."""
        for keys, argv in refund_calls(plan, nows, self.cluster):
            await self._ascript(_REFUND, keys, argv)

    async def adelete(self, keys: Sequence[str], prefixes: Sequence[str]) -> int:
        """Delete counters by key and by literal key prefix (via SCAN, on redis-py)."""
        if self._admin is None:
            if self._given_async is not None:
                self._admin = self._given_async
            elif self.target is not None:
                self._admin, closers = make_clients(self.target, max(self.timeout, 1.0), aio=True)
                self._aclosers += closers
            else:
                raise BackendError("no asyncio Redis client: pass async_client= or a URL")
        try:
            return await _delete_async(self._admin, keys, prefixes)
        except Exception as exc:
            raise _error(exc) from exc

    async def aclose(self) -> None:
        """Close the connections this backend made (clients passed in stay open)."""
        router, self._router = self._router, None
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close(WireError("rate limiter closed"))
        if router is not None and self._loop is asyncio.get_running_loop():
            await router.aclose()
        for obj in self._aclosers:
            with contextlib.suppress(Exception):  # closing a broken connection may fail
                await obj.aclose()
        self._aclosers = []
        self._admin = None
        self._loop = None
        self.close()


# -- helpers ------------------------------------------------------------------------


def _close_quietly(obj: Any) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection may fail
        obj.close()


def _is_cluster(client: Any) -> bool:
    return type(client).__name__ == "RedisCluster"


def _delete_sync(client: Any, keys: Sequence[str], prefixes: Sequence[str]) -> int:
    from ..._core.keyspace import glob_escape

    found = set(keys)
    for prefix in prefixes:
        found.update(
            k.decode() if isinstance(k, bytes) else k
            for k in client.scan_iter(match=glob_escape(prefix) + "*")
        )
    # One DEL per key: on a cluster the keys of several identities live in several slots.
    return sum(int(client.delete(k)) for k in found)


async def _delete_async(client: Any, keys: Sequence[str], prefixes: Sequence[str]) -> int:
    from ..._core.keyspace import glob_escape

    found = set(keys)
    for prefix in prefixes:
        async for k in client.scan_iter(match=glob_escape(prefix) + "*"):
            found.add(k.decode() if isinstance(k, bytes) else k)
    total = 0
    for k in found:
        total += int(await client.delete(k))
    return total
