"""The Redis backend: standalone, TLS, Cluster and Sentinel; sync and asyncio.

One script call decides a request, with Redis TIME as the only clock. On the asyncio
path, concurrent requests are coalesced into shared script calls (see ``_batcher``).
EVALSHA is used throughout; when the server does not know the script (restart,
failover, SCRIPT FLUSH) the call is repeated once as EVAL, which also caches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .._plan import Plan
from .._scripts import lua_script
from ._batcher import BackendTimeout, Batcher
from ._codec import decode, encode
from ._redis_urls import RedisTarget, make_clients, parse_redis_url
from ._slots import merge_slots, refund_calls, slot_groups, slot_of, subplan
from .base import BackendError, RawResult

try:
    from redis.exceptions import NoScriptError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the Redis backend needs redis-py: pip install 'ambient-ratelimit[redis]'") from exc

_pack: Callable[..., bytes] | None
try:
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis comes with the redis extra
    _pack = None

__all__ = ["RedisBackend"]

_WINDOW = lua_script("sliding_window")
_REFUND = lua_script("refund")


def _error(exc: BaseException) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, (RedisTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return BackendTimeout(f"Redis timed out: {exc}")
    return BackendError(f"Redis failed: {type(exc).__name__}: {exc}")


class RedisBackend:
    """Counters in Redis, decided by ``lua/sliding_window.lua``.

    Args:
        url: a Redis URL (see :mod:`ratelimit.backends._redis_urls` for the forms:
            ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``,
            ``redis+sentinel://``). Or pass ready clients instead.
        client: a sync ``redis.Redis``/``RedisCluster`` to use instead of ``url``.
        async_client: an asyncio client to use instead of ``url``.
        timeout: the budget in seconds for one decision (socket connect and read).
        coalesce: batch the checks of concurrent asyncio requests into shared calls.
        max_batch / max_inflight: batch size and the calls in flight at once.

    Clients made from a URL are created lazily (the asyncio one per event loop) and
    closed by :meth:`close`/:meth:`aclose`; clients passed in are left to their owner.
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
        max_inflight: int = 2,
    ) -> None:
        if url is None and client is None and async_client is None:
            raise ValueError("RedisBackend needs a URL or a client")
        if not (isinstance(timeout, (int, float)) and 0 < timeout <= 60):
            raise ValueError(f"timeout must be a number of seconds in (0, 60], got {timeout!r}")
        self.target: RedisTarget | None = parse_redis_url(url) if url is not None else None
        self.timeout = float(timeout)
        self._client = client
        self._closers: list[Any] = []  # what this backend made (sync)
        self._aclosers: list[Any] = []  # what this backend made (asyncio)
        self._given_async = async_client
        self._coalesce = coalesce
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aclient: Any = None
        self._batcher: Batcher | None = None
        self._slot_batchers: dict[int, Batcher] = {}
        self.cluster = self.target.kind == "cluster" if self.target else _is_cluster(client or async_client)

    def __repr__(self) -> str:
        where = self.target.redacted() if self.target else "given client"
        return f"RedisBackend({where!r}, timeout={self.timeout})"

    # -- clients -----------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The sync redis-py client (created on first use)."""
        if self._client is None:
            if self.target is None:
                raise BackendError("no sync Redis client: pass client= or a URL")
            self._client, self._closers = make_clients(self.target, self.timeout, aio=False)
        return self._client

    def _batcher_for(self, plan: Plan) -> Batcher | None:
        """The batcher that may carry ``plan``: one per loop, or per hash slot on a cluster."""
        _, batcher = self._async_state()
        if not self._coalesce:
            return None
        if not self.cluster:
            return batcher
        groups = slot_groups(plan)
        if len(groups) > 1:
            return None  # cross-slot: decided per slot, see _aevaluate_cross_slot
        slot = slot_of(plan.keys[0])
        found = self._slot_batchers.get(slot)
        if found is None:
            assert self._loop is not None
            found = self._slot_batchers[slot] = Batcher(
                self._asend, self._loop, self.timeout, self._max_batch, self._max_inflight
            )
        return found

    def _async_state(self) -> tuple[Any, Batcher | None]:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (or the first): its own connections and batcher.
            self._loop = loop
            if self._given_async is not None:
                self._aclient = self._given_async
            elif self.target is not None:
                # Socket reads may take longer than the budget; the batch timer still
                # answers every request within it, and a slow reply is not torn down.
                self._aclient, self._aclosers = make_clients(self.target, max(self.timeout, 0.25), aio=True)
            else:
                raise BackendError("no asyncio Redis client: pass async_client= or a URL")
            self._slot_batchers = {}
            use_batcher = self._coalesce and not self.cluster
            self._batcher = (
                Batcher(self._asend, loop, self.timeout, self._max_batch, self._max_inflight)
                if use_batcher
                else None
            )
        return self._aclient, self._batcher

    # -- sync --------------------------------------------------------------------

    def _call(self, client: Any, keys: list[str], argv: list[Any], script: Any = _WINDOW) -> Any:
        try:
            try:
                return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *argv)
            except NoScriptError:
                return client.execute_command("EVAL", script.source, len(keys), *keys, *argv)
        except Exception as exc:
            raise _error(exc) from exc

    def evaluate(self, plan: Plan) -> RawResult:
        """Decide ``plan`` with one script call (per hash slot on a cluster)."""
        if self.cluster:
            groups = slot_groups(plan)
            if len(groups) > 1:
                return self._evaluate_crossslot_of(plan, groups)
        keys, argv = encode((plan,))
        return decode(self._call(self.client, keys, argv), (plan,))[0]

    def _evaluate_crossslot_of(self, plan: Plan, groups: list[list[int]]) -> RawResult:
        parts = [subplan(plan, g) for g in groups]
        results = [decode(self._call(self.client, *encode((p,))), (p,))[0] for p in parts]
        merged, refunds = merge_slots(plan, groups, parts, results)
        for _, (keys, argv) in refunds:
            self._call(self.client, keys, argv, _REFUND)
        return merged

    def refund(self, plan: Plan, nows: Sequence[int]) -> None:
        """Give back what ``plan`` charged (``lua/refund.lua``, one call per hash slot)."""
        for keys, argv in refund_calls(plan, nows, self.cluster):
            self._call(self.client, keys, argv, _REFUND)

    async def arefund(self, plan: Plan, nows: Sequence[int]) -> None:
        """Async :meth:`refund`."""
        client, _ = self._async_state()
        for keys, argv in refund_calls(plan, nows, self.cluster):
            await self._acall(client, keys, argv, _REFUND)

    def delete(self, keys: Sequence[str], prefixes: Sequence[str]) -> int:
        """Delete counters by key and by literal key prefix (via SCAN)."""
        try:
            return _delete_sync(self.client, keys, prefixes)
        except Exception as exc:
            raise _error(exc) from exc

    def close(self) -> None:
        """Close the sync clients this backend made (clients passed in stay open)."""
        for obj in self._closers:
            _close_quietly(obj)
        if self._closers:
            self._client = None
        self._closers = []

    # -- asyncio -----------------------------------------------------------------

    async def _acall(self, client: Any, keys: list[str], argv: list[Any], script: Any = _WINDOW) -> Any:
        try:
            try:
                return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *argv)
            except NoScriptError:
                return await client.execute_command("EVAL", script.source, len(keys), *keys, *argv)
        except Exception as exc:
            raise _error(exc) from exc

    async def _asend(self, plans: Sequence[Plan]) -> list[RawResult]:
        keys, argv = encode(plans)
        if self.cluster or _pack is None:
            return decode(await self._acall(self._aclient, keys, argv), plans)
        return decode(await self._araw(self._aclient, keys, argv), plans)

    async def _araw(self, client: Any, keys: list[str], argv: list[Any]) -> Any:
        """EVALSHA packed by hiredis (in C) and sent on a pooled connection.

        redis-py's asyncio client packs every argument in Python, which cost more than
        everything else a coalesced request does; a batch is one command, so packing it
        in one C call and skipping the per-command machinery is the fast path.
        """
        pack = _pack
        assert pack is not None
        pool = client.connection_pool
        try:
            conn = await pool.get_connection()
            try:
                try:
                    await conn.send_packed_command(
                        pack(("EVALSHA", _WINDOW.sha, len(keys), *keys, *argv)), False
                    )
                    return await conn.read_response()
                except NoScriptError:
                    await conn.send_packed_command(
                        pack(("EVAL", _WINDOW.source, len(keys), *keys, *argv)), False
                    )
                    return await conn.read_response()
            except BaseException:
                await conn.disconnect()
                raise
            finally:
                await pool.release(conn)
        except Exception as exc:
            raise _error(exc) from exc

    async def aevaluate(self, plan: Plan) -> RawResult:
        """Decide ``plan``; concurrent calls share script calls when coalescing."""
        if self._batcher is not None and asyncio.get_running_loop() is self._loop:
            return await self._batcher.submit(plan)  # the hot path: standalone, same loop
        batcher = self._batcher_for(plan)
        if batcher is not None:
            return await batcher.submit(plan)
        client = self._aclient
        try:
            return await _bounded(self._aevaluate_direct(client, plan), self.timeout)  # type: ignore[no-any-return]
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise BackendTimeout("Redis did not answer within the timeout budget") from exc

    async def _aevaluate_direct(self, client: Any, plan: Plan) -> RawResult:
        if self.cluster:
            groups = slot_groups(plan)
            if len(groups) > 1:
                return await self._aevaluate_crossslot_of(client, plan, groups)
        keys, argv = encode((plan,))
        return decode(await self._acall(client, keys, argv), (plan,))[0]

    async def _aevaluate_crossslot_of(self, client: Any, plan: Plan, groups: list[list[int]]) -> RawResult:
        parts = [subplan(plan, g) for g in groups]
        replies = await asyncio.gather(*(self._acall(client, *encode((p,))) for p in parts))
        results = [decode(r, (p,))[0] for r, p in zip(replies, parts, strict=True)]
        merged, refunds = merge_slots(plan, groups, parts, results)
        await asyncio.gather(*(self._acall(client, k, a, _REFUND) for _, (k, a) in refunds))
        return merged

    async def adelete(self, keys: Sequence[str], prefixes: Sequence[str]) -> int:
        """Delete counters by key and by literal key prefix (via SCAN)."""
        client, _ = self._async_state()
        try:
            return await _delete_async(client, keys, prefixes)
        except Exception as exc:
            raise _error(exc) from exc

    async def aclose(self) -> None:
        """Drain the batcher and close the clients this backend made."""
        for batcher in [self._batcher, *self._slot_batchers.values()]:
            if batcher is not None:
                await batcher.aclose()
        self._batcher = None
        self._slot_batchers = {}
        for obj in self._aclosers:
            with contextlib.suppress(Exception):  # closing a broken connection may fail
                await obj.aclose()
        self._aclosers = []
        self._aclient = None
        self._loop = None
        self.close()


# -- helpers ------------------------------------------------------------------------


def _close_quietly(obj: Any) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection may fail
        obj.close()


def _is_cluster(client: Any) -> bool:
    return type(client).__name__ == "RedisCluster"


async def _bounded(coro: Any, seconds: float) -> Any:
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await coro
    return await asyncio.wait_for(coro, seconds)  # pragma: no cover - Python 3.10


def _delete_sync(client: Any, keys: Sequence[str], prefixes: Sequence[str]) -> int:
    from .._keyspace import glob_escape

    found = set(keys)
    for prefix in prefixes:
        found.update(
            k.decode() if isinstance(k, bytes) else k
            for k in client.scan_iter(match=glob_escape(prefix) + "*")
        )
    # One DEL per key: on a cluster the keys of several identities live in several slots.
    return sum(int(client.delete(k)) for k in found)


async def _delete_async(client: Any, keys: Sequence[str], prefixes: Sequence[str]) -> int:
    from .._keyspace import glob_escape

    found = set(keys)
    for prefix in prefixes:
        async for k in client.scan_iter(match=glob_escape(prefix) + "*"):
            found.add(k.decode() if isinstance(k, bytes) else k)
    total = 0
    for k in found:
        total += int(await client.delete(k))
    return total
