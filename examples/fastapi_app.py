"""A FastAPI service limited per user: a middleware rule plus limits on single routes.

    uvicorn examples.fastapi_app:app

Environment:
    JWKS_URL, JWT_ISSUER: verify bearer tokens against this JWKS and issuer; the limits
        count per token subject. Unset: trust the ``x-user-id`` header (see below).
    REDIS_URL: count on this Redis (shared by every replica); unset: in process memory.
    RATELIMIT_TIMEOUT: seconds Redis may take per decision before the failure policy
        (fail open) answers; default 0.05.

Requests without an identity (no valid token) are counted per client IP.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from ratelimit import Limiter
from ratelimit.asgi import RateLimit, RateLimitMiddleware
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


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await limiter.aclose()


app = FastAPI(title="ambient-ratelimit example", lifespan=lifespan)
# Every /api request: 100 a minute per user, whatever the route.
app.add_middleware(RateLimitMiddleware, limiter=limiter, key=user, limits={"/api/**": "100/minute"})


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


# Stacked limits are decided together: a request denied by one is not counted by the other.
@app.get("/api/items")
@limiter.limit("5/minute", key=user, name="items-burst")
@limiter.limit("1000/day", key=user, name="items-daily")
async def list_items(page: int = 1) -> dict[str, object]:
    return {"page": page, "items": [f"item-{page}-{i}" for i in range(3)]}


@app.post("/api/reports")
@limiter.limit("2/minute", key=user, name="reports")
def create_report() -> dict[str, str]:  # sync endpoints work too (they run in a thread)
    return {"status": "queued"}


@app.get("/api/search", dependencies=[Depends(RateLimit(limiter, "10/minute", key=user))])
async def search(q: str = "") -> dict[str, str]:
    return {"q": q}
