"""A gRPC server process for bench_servers.py: unary ``GetCart`` of examples/grpc/shop.proto.

    BENCH_VARIANT=sync-interceptor BENCH_REDIS_URL=redis://127.0.0.1:PORT/0 \\
    BENCH_PORT=50051 BENCH_STATS_PORT=50052 python bench/_servers/grpc_server.py

``sync-*`` variants run ``grpc.server(ThreadPoolExecutor(BENCH_GRPC_THREADS))`` (8 by
default), ``aio-*`` variants ``grpc.aio.server()``; ``*-interceptor`` adds the package's
``RateLimitInterceptor`` / ``AsyncRateLimitInterceptor`` keyed by the ``x-user-id``
metadata, on Redis (or the memory backend for ``*-memory``). The load comes from
``grpc_load.py`` processes, which count the status codes; this process counts the
failure-policy decisions and serves them as JSON on ``GET /__stats`` of a small HTTP
server in a daemon thread on ``BENCH_STATS_PORT`` (idle while the load runs). It prints
``READY`` once both listen, and runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))  # bench/, for _servers.common
sys.path.insert(1, str(_HERE.parent.parent / "examples" / "grpc"))  # the generated stubs

import grpc  # noqa: E402
import shop_pb2  # noqa: E402
import shop_pb2_grpc  # noqa: E402

from _servers.common import GRPC_METHOD, STATS_PATH, SUBJECT_HEADER, ServerSettings, Stats  # noqa: E402

VARIANTS = (
    "sync-bare",
    "sync-interceptor",
    "sync-interceptor-memory",
    "aio-bare",
    "aio-interceptor",
    "aio-interceptor-memory",
)


def serve_stats(stats: Stats, port: int) -> ThreadingHTTPServer:
    """``GET /__stats`` on 127.0.0.1:port, in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != STATS_PATH:
                self.send_error(404)
                return
            body = stats.json()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=httpd.serve_forever, name="stats", daemon=True).start()
    return httpd


def _limiter(s: ServerSettings, stats: Stats) -> Any:
    from ratelimit import Limiter

    sink = stats.sink()
    return (
        Limiter(metrics=sink) if s.variant.endswith("-memory") else Limiter(s.require_redis(), metrics=sink)
    )


def _interceptors(s: ServerSettings, stats: Stats, aio: bool) -> list[Any]:
    if s.variant.endswith("-bare"):
        return []
    from ratelimit.grpc import AsyncRateLimitInterceptor, RateLimitInterceptor
    from ratelimit.keys import header

    cls = AsyncRateLimitInterceptor if aio else RateLimitInterceptor
    return [cls(_limiter(s, stats), {GRPC_METHOD: s.rate}, key=header(SUBJECT_HEADER), metrics=stats.sink())]


class SyncCart(shop_pb2_grpc.CartServicer):  # type: ignore[misc]
    def GetCart(self, request: Any, context: Any) -> Any:
        return shop_pb2.ShoppingCart(cart_id=request.cart_id)


class AioCart(shop_pb2_grpc.CartServicer):  # type: ignore[misc]
    async def GetCart(self, request: Any, context: Any) -> Any:
        return shop_pb2.ShoppingCart(cart_id=request.cart_id)


def run_sync(s: ServerSettings, stats: Stats, port: int, threads: int) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=threads), interceptors=_interceptors(s, stats, False))
    shop_pb2_grpc.add_CartServicer_to_server(SyncCart(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("READY", flush=True)
    stop.wait()
    server.stop(grace=None).wait(5)


async def run_aio(s: ServerSettings, stats: Stats, port: int) -> None:
    server = grpc.aio.server(interceptors=_interceptors(s, stats, True))
    shop_pb2_grpc.add_CartServicer_to_server(AioCart(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("READY", flush=True)
    await stop.wait()
    await server.stop(grace=None)


def main() -> None:
    settings = ServerSettings.from_env()
    if settings.variant not in VARIANTS:
        raise SystemExit(f"unknown gRPC variant {settings.variant!r}; one of {VARIANTS}")
    stats = Stats()
    serve_stats(stats, int(os.environ["BENCH_STATS_PORT"]))
    port = int(os.environ["BENCH_PORT"])
    if settings.variant.startswith("sync-"):
        run_sync(settings, stats, port, int(os.environ.get("BENCH_GRPC_THREADS", "8")))
    else:
        asyncio.run(run_aio(settings, stats, port))


if __name__ == "__main__":
    main()
