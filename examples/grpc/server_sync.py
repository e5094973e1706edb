"""A grpc.server (threads) with rate limits: ``python examples/grpc/server_sync.py [port]``.

The same limits and keys as server_aio.py: 5 calls per second and 100 per minute per
caller on every ``shop.Cart`` method; the caller is the JWT subject when
``JWT_PUBLIC_KEY_FILE`` is set, else the peer IP; Redis when ``REDIS_URL`` is set.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the generated shop_pb2*.py
import shop_pb2
import shop_pb2_grpc

from ratelimit import Limiter
from ratelimit.grpc import RateLimitInterceptor
from ratelimit.keys import client_ip, jwt_subject


def caller_key() -> Any:
    """Per verified JWT subject when a public key is configured, else per peer IP."""
    path = os.environ.get("JWT_PUBLIC_KEY_FILE")
    return jwt_subject(key=Path(path).read_bytes()) if path else client_ip()


class Cart(shop_pb2_grpc.CartServicer):
    def GetCart(self, request: Any, context: Any) -> Any:
        return shop_pb2.ShoppingCart(cart_id=request.cart_id)

    def WatchCart(self, request: Any, context: Any) -> Iterator[Any]:
        for _ in range(3):
            yield shop_pb2.ShoppingCart(cart_id=request.cart_id)
            time.sleep(0.5)

    def AddItems(self, request_iterator: Any, context: Any) -> Any:
        return shop_pb2.ShoppingCart(items=list(request_iterator))

    def Chat(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        yield from request_iterator


def main(port: int) -> None:
    storage = os.environ.get("REDIS_URL", "memory://")
    limiter = Limiter(storage)
    limits = {"/shop.Cart/*": "5/second;100/minute"}
    server = grpc.server(
        ThreadPoolExecutor(max_workers=16),
        interceptors=[RateLimitInterceptor(limiter, limits, key=caller_key())],
    )
    shop_pb2_grpc.add_CartServicer_to_server(Cart(), server)
    server.add_insecure_port(f"[::]:{port}")
    server.start()
    print(f"listening on :{port}, counters in {storage}", flush=True)
    try:
        server.wait_for_termination()
    finally:
        server.stop(1)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50051)
