"""A RateLimitService that decides nothing: bench_serve.py's reference for grpc.aio's own cost.

    python bench/_servers/rls_empty.py PORT

It answers every ShouldRateLimit call OK with one OK status per descriptor, on the same
grpc.aio server and default event loop as ``ratelimit serve``, so the gap between the
two rows is what deciding costs and this row's rate is the most one such process can do.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc


class Empty(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
        reply = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)
        for _ in request.descriptors:
            reply.statuses.add(code=rls_pb2.RateLimitResponse.OK)
        return reply


async def main(port: int) -> None:
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Empty(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
