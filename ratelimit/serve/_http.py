"""The HTTP port: ``/healthcheck``, upstream's ``/json`` endpoint and ``/metrics``.

A small HTTP/1.1 server on asyncio streams (keep-alive, Content-Length bodies), enough
for kubelet probes, Prometheus scrapes and clients that cannot speak gRPC. The
``/json`` body is a RateLimitRequest in proto3 JSON, answered with the RateLimitResponse
in proto3 JSON: 200 when OK, 429 when OVER_LIMIT, 400 for a request that cannot be
answered, as the Go service does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["HttpEndpoints"]

log = logging.getLogger("ratelimit.serve")

MAX_BODY = 1 << 20  # 1 MiB: a RateLimitRequest is a few hundred bytes
IDLE_TIMEOUT = 30.0  # seconds a connection may wait between requests, or send one request's head or body
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Content Too Large", 429: "Too Many Requests", 500: "Internal Server Error",
            503: "Service Unavailable"}  # fmt: skip

Handler = Callable[[str, bytes], Awaitable[tuple[int, str, bytes]]]


class HttpEndpoints:
    """Routes of the HTTP port.

    Args:
        answer: ShouldRateLimit on a RateLimitRequest (raises BadRequest for bad input).
        healthy: whether /healthcheck answers 200.
        metrics_path: where Prometheus metrics are served (None: nowhere).
        idle_timeout: seconds a connection may stay idle between requests, or take to
            send one request's head or body, before it is closed.
    """

    def __init__(
        self,
        answer: Callable[[Any], Awaitable[Any]],
        healthy: Callable[[], bool],
        metrics_path: str | None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        from envoy.service.ratelimit.v3 import rls_pb2  # type: ignore[import-untyped]

        self.pb = rls_pb2
        self.answer = answer
        self.healthy = healthy
        self.metrics_path = metrics_path
        self.idle_timeout = idle_timeout
        self.inflight: set[asyncio.Task[Any]] = set()

    async def route(self, method: str, path: str, body: bytes) -> tuple[int, str, bytes]:
        """Status, content type and body for one request."""
        path = path.split("?", 1)[0]
        if path == "/healthcheck":
            if self.healthy():
                return 200, "text/plain", b"OK"
            return 500, "text/plain", b"NOT OK"
        if path == "/json":
            if method != "POST":
                return 405, "text/plain", b"POST a RateLimitRequest as JSON\n"
            return await self._json(body)
        if self.metrics_path is not None and path == self.metrics_path:
            from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

            return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        return 404, "text/plain", b"not found\n"

    async def _json(self, body: bytes) -> tuple[int, str, bytes]:
        from google.protobuf import json_format  # type: ignore[import-untyped]

        from ._service import BadRequest

        request = self.pb.RateLimitRequest()
        try:
            json_format.Parse(body.decode("utf-8"), request)
        except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
            return 400, "text/plain", f"invalid RateLimitRequest: {exc}\n".encode()
        try:
            response = await self.answer(request)
        except BadRequest as exc:
            return 400, "text/plain", f"{exc}\n".encode()
        text = json_format.MessageToJson(response, indent=None)
        status = 429 if response.overall_code == self.pb.RateLimitResponse.OVER_LIMIT else 200
        return status, "application/json", text.encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection until it closes or asks to."""
        task = asyncio.current_task()
        if task is not None:
            self.inflight.add(task)
        try:
            while True:
                try:
                    # An idle keep-alive connection, or a head that never ends, is closed.
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
                except (
                    asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError,
                    ConnectionError,
                    asyncio.TimeoutError,  # TimeoutError itself only from 3.11
                ):
                    return
                request_line, *lines = head.decode("latin-1").split("\r\n")
                parts = request_line.split(" ")
                if len(parts) != 3:
                    await _write(writer, 400, "text/plain", b"bad request line\n", close=True)
                    return
                method, target, version = parts
                headers = {}
                for line in lines:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                try:
                    length = int(headers.get("content-length") or 0)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY or "chunked" in headers.get("transfer-encoding", "").lower():
                    await _write(
                        writer,
                        413,
                        "text/plain",
                        b"send a Content-Length body of at most 1 MiB\n",
                        close=True,
                    )
                    return
                try:
                    body = (
                        await asyncio.wait_for(reader.readexactly(length), self.idle_timeout)
                        if length
                        else b""
                    )
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
                    return
                try:
                    status, ctype, payload = await self.route(method, target, body)
                except Exception:
                    log.exception("HTTP %s %s failed", method, target)
                    status, ctype, payload = 500, "text/plain", b"internal error\n"
                close = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
                await _write(writer, status, ctype, payload, close=close)
                if close:
                    return
        finally:
            if task is not None:
                self.inflight.discard(task)
            writer.close()


async def _write(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes, *, close: bool) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
