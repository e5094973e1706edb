"""A Starlette service limited per user: a middleware rule plus limits on single routes.

    uvicorn examples.starlette_app:app

Environment: as for examples/fastapi_app.py (JWKS_URL and JWT_ISSUER, REDIS_URL,
RATELIMIT_TIMEOUT).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from ratelimit import Limiter
from ratelimit.asgi import RateLimitMiddleware
from ratelimit.keys import jwt_subject

if os.environ.get("JWKS_URL"):
    # No waypoint in front (ztunnel only): the app verifies the token itself.
    user = jwt_subject(jwks_url=os.environ["JWKS_URL"], issuer=os.environ["JWT_ISSUER"])
else:
    # Behind an Istio waypoint whose RequestAuthentication has
    # outputClaimToHeaders: [{header: x-user-id, claim: sub}], the header carries the
    # verified subject and the waypoint overwrites any value a client sent. Only trust
    # it if no client can reach the pod without passing that waypoint.
    user = jwt_subject(trusted_header="x-user-id")

limiter = Limiter(
    os.environ.get("REDIS_URL") or "memory://",
    timeout=float(os.environ.get("RATELIMIT_TIMEOUT", "0.05")),
)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


# Stacked limits are decided together: a request denied by one is not counted by the other.
@limiter.limit("5/minute", key=user, name="items-burst")
@limiter.limit("1000/day", key=user, name="items-daily")
async def list_items(request: Request) -> JSONResponse:
    return JSONResponse({"items": ["a", "b", "c"]})


async def echo(websocket: WebSocket) -> None:
    # The handshake was limited by the middleware rule on /ws below.
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(text)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    yield
    await limiter.aclose()


app = Starlette(
    routes=[
        Route("/healthz", healthz),
        Route("/api/items", list_items),
        WebSocketRoute("/ws", echo),
    ],
    middleware=[
        Middleware(
            RateLimitMiddleware,
            limiter=limiter,
            key=user,
            # Every /api request: 100 a minute per user; 10 websocket connections a minute.
            limits={"/api/**": "100/minute", "/ws": "10/minute"},
        )
    ],
    lifespan=lifespan,
)
