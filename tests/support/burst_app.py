"""The app of the burst tests: one FastAPI route limited per ``x-user`` with the defaults.

    REDIS_URL=redis://... uvicorn tests.support.burst_app:app

Default budget, default failure policy (open): a fallback is visible to clients as a 200
without RateLimit fields (fallback answers carry none), and is counted at ``/stats``.
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from ratelimit import Limiter
from ratelimit.asgi import RateLimitMiddleware
from ratelimit.keys import header
from ratelimit.metrics import Metrics

registry = CollectorRegistry()
metrics = Metrics(registry)
limiter = Limiter(os.environ["REDIS_URL"], prefix=os.environ.get("RL_PREFIX", "burst"), metrics=metrics)
app = FastAPI()
app.add_middleware(RateLimitMiddleware, limiter=limiter, metrics=metrics)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/limited")
@limiter.limit("50/minute", key=header("x-user"), name="burst")
async def limited() -> dict[str, str]:
    return {"ok": "yes"}


@app.get("/stats")
async def stats() -> dict[str, float]:
    """Decisions by result, and backend errors, as this process counted them."""
    out: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "ratelimit_decisions_total":
                key = sample.labels["result"]
                out[key] = out.get(key, 0) + sample.value
            elif sample.name == "ratelimit_backend_errors_total":
                out["errors"] = out.get("errors", 0) + sample.value
    return out
