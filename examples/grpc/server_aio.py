"""A grpc.aio server with rate limits: ``python examples/grpc/server_aio.py [port]``.

Every ``shop.Cart`` method is limited to 5 calls per second and 100 per minute per
caller: the JWT subject when ``JWT_PUBLIC_KEY_FILE`` names a PEM public key (clients
send ``authorization: Bearer <token>``), else the peer IP. Counters live in memory,
or in Redis when ``REDIS_URL`` is set (e.g. ``redis://localhost:6379/0``).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the generated shop_pb2*.py
import shop_pb2
import shop_pb2_grpc

from ratelimit import Limiter
from ratelimit.grpc import AsyncRateLimitInterceptor
from ratelimit.keys import client_ip, jwt_subject


def caller_key() -> Any:
    """Per verified JWT subject when a public key is configured, else per peer IP."""
    path = os.environ.get("JWT_PUBLIC_KEY_FILE")
    return jwt_subject(key=Path(path).read_bytes()) if path else client_ip()


class Cart(shop_pb2_grpc.CartServicer):
    async def GetCart(self, request: Any, context: Any) -> Any:
        return shop_pb2.ShoppingCart(cart_id=request.cart_id)

    async def WatchCart(self, request: Any, context: Any) -> AsyncIterator[Any]:
        for _ in range(3):
            yield shop_pb2.ShoppingCart(cart_id=request.cart_id)
            await asyncio.sleep(0.5)

    async def AddItems(self, request_iterator: Any, context: Any) -> Any:
        return shop_pb2.ShoppingCart(items=[item async for item in request_iterator])

    async def Chat(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        async for item in request_iterator:
            yield item


async def main(port: int) -> None:
    storage = os.environ.get("REDIS_URL", "memory://")
    limiter = Limiter(storage)
    limits = {"/shop.Cart/*": "5/second;100/minute"}
    server = grpc.aio.server(interceptors=[AsyncRateLimitInterceptor(limiter, limits, key=caller_key())])
    shop_pb2_grpc.add_CartServicer_to_server(Cart(), server)
    server.add_insecure_port(f"[::]:{port}")
    await server.start()
    print(f"listening on :{port}, counters in {storage}", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50051))
