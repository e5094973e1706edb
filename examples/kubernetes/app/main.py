"""shop-api: a FastAPI service whose rate limits live in a config file, not in code.

    RATELIMIT_CONFIG=limits.yaml REDIS_URL=redis://localhost:6379/0 uvicorn main:app

In the cluster (../app.yaml) the file is the ConfigMap of ../limits-configmap.yaml,
mounted at /etc/ratelimit, and REDIS_URL points at the redis Service. The limiter
watches the file: editing the ConfigMap changes the limits without a restart.

Identities come from the headers the Istio waypoint writes from the verified JWT
(x-user-id, x-user-plan: see ../request-authentication.yaml); the app never sees the
token itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ratelimit import Limiter
from ratelimit.asgi import RateLimitMiddleware
from ratelimit.metrics import Metrics

# Uvicorn configures only its own loggers; this lets the limiter's lines (a reloaded or
# rejected config file, Redis trouble) reach `kubectl logs` too.
logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")

metrics = Metrics()  # backend latency and errors from the limiter, decisions from the middleware
limiter = Limiter.from_config(os.environ.get("RATELIMIT_CONFIG", "limits.yaml"), metrics=metrics)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await limiter.aclose()


app = FastAPI(title="shop-api", lifespan=lifespan)
# Every rule comes from the file; none is given here.
app.add_middleware(RateLimitMiddleware, limiter=limiter, metrics=metrics)


@app.get("/metrics")
def prometheus_metrics() -> Response:
    # Matches no rule, so it is never limited; see the README on who may scrape it.
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/login")
async def login() -> dict[str, str]:
    return {"status": "a real service would check the password and issue a token here"}


@app.get("/api/me")
async def me(request: Request) -> dict[str, str | None]:
    # Written by the waypoint from the verified token; a client-sent value never arrives.
    return {"user": request.headers.get("x-user-id"), "plan": request.headers.get("x-user-plan")}


@app.get("/api/items")
async def list_items(page: int = 1) -> dict[str, object]:
    return {"page": page, "items": [f"item-{page}-{i}" for i in range(3)]}


@app.get("/api/search")
async def search(q: str = "") -> dict[str, object]:
    return {"q": q, "results": []}
