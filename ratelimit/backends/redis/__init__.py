"""The Redis backend: standalone, TLS, Cluster and Sentinel; sync and asyncio.

One script call decides a request, with Redis TIME as the only clock. The sync path has
its own blocking connections (``_syncwire``), every socket wait bounded by the timeout
budget, and threads' concurrent checks combined into shared script calls
(``_combiner``); Redis Cluster and clients passed in use redis-py. The asyncio path (the one
ASGI and grpc.aio services use) has its own pipelined connections (``_wire``,
``_nodes``): concurrent requests are coalesced into shared script calls
(``_batcher``), calls are pipelined per server, and the budget bounds Redis's answer
from the moment a call is written, never the time it waited in this process. EVALSHA
is used throughout; when the server does not know the script (restart, failover,
SCRIPT FLUSH) the call is repeated once as EVAL, which also caches it.
"""

from __future__ import annotations

from ._backend import RedisBackend

__all__ = ["RedisBackend"]
