"""One Redis server (standalone, or a Sentinel's master) as the sync path sees it.

It joins a :class:`~._syncwire.SyncPool` (lean blocking connections) and, when
coalescing, a :class:`~._combiner.Combiner` (threads' concurrent checks share calls).
Made per process: the backend makes a forked child its own (``pid`` says whose it is).
Redis Cluster, clients passed in and URLs with options only redis-py understands stay on
redis-py (see :func:`sync_server`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

from ..._core.plan import Plan
from ..._core.scripts import LuaScript
from ..base import BackendError, RawResult
from ._codec import decode, encode
from ._combiner import Combiner
from ._redis_urls import SSL_OPTIONS, RedisTarget, make_sentinel, target_endpoints
from ._syncwire import SyncPool
from ._wire import Endpoint

__all__ = ["SyncServer", "lean_target"]

# Options the lean path honours; a URL with any other option keeps redis-py's client.
_LEAN_OPTIONS = frozenset((*SSL_OPTIONS, "sentinel_password", "sentinel_username"))
_UNIX_OPTIONS = frozenset({"db", "password", "username"})


def lean_target(target: RedisTarget | None) -> bool:
    """Whether the sync path can serve ``target`` without redis-py (standalone or Sentinel, known options)."""
    if target is None or target.kind == "cluster":
        return False
    if target.url.lower().startswith("unix://"):
        from urllib.parse import parse_qsl, urlsplit

        return set(dict(parse_qsl(urlsplit(target.url).query))) <= _UNIX_OPTIONS
    return set(target.options) <= _LEAN_OPTIONS


class SyncServer:
    """Script calls to one server for the threads of one process."""

    def __init__(
        self, target: RedisTarget, budget: float, window: LuaScript, max_batch: int, coalesce: bool
    ) -> None:
        self.pid = os.getpid()
        self._window = window
        self._max_batch = max_batch
        self._sentinel: Any = None
        resolve: Callable[[], Endpoint]
        if target.kind == "sentinel":
            self._sentinel = sentinel = make_sentinel(target, budget, aio=False)
            template, service = target_endpoints(target)[0], target.service

            def resolve() -> Endpoint:
                host, port = sentinel.discover_master(service)
                return template.moved(f"{host}:{port}")

            address = f"sentinel:{service}"
        else:
            endpoint = target_endpoints(target)[0]

            def resolve() -> Endpoint:
                return endpoint

            address = endpoint.address
        self.pool = SyncPool(resolve, address, budget)
        # A queued check's guard only (see _combiner): far beyond any bounded call.
        patience = 1.0 + 10 * budget
        self._combiner = Combiner(self._decide, address, patience) if coalesce else None

    def evaluate(self, plan: Plan) -> RawResult:
        """Decide ``plan`` (with other threads' concurrent plans when coalescing)."""
        if self._combiner is not None:
            return self._combiner.submit(plan)
        result = self._decide((plan,))[0]
        if isinstance(result, BackendError):
            raise result
        return result

    def _decide(self, plans: Sequence[Plan]) -> list[RawResult | BackendError]:
        size = self._max_batch
        parts = [plans[i : i + size] for i in range(0, len(plans), size)]
        replies = self.pool.scripts(self._window, [encode(part) for part in parts])
        out: list[RawResult | BackendError] = []
        for part, reply in zip(parts, replies, strict=True):
            if isinstance(reply, BackendError):
                out += [reply] * len(part)
                continue
            try:
                out += decode(reply, part)
            except BackendError as exc:
                out += [exc] * len(part)
        return out

    def script(self, script: LuaScript, keys: list[str], argv: list[Any]) -> Any:
        """One call of ``script`` (refunds); raises BackendError."""
        reply = self.pool.scripts(script, [(keys, argv)])[0]
        if isinstance(reply, BackendError):
            raise reply
        return reply

    def close(self) -> None:
        """Close the connections (and the Sentinel manager) this server holds."""
        self.pool.close()
        if self._sentinel is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail
                self._sentinel.close()
