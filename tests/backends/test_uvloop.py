"""The asyncio Redis path under uvloop, the loop uvicorn[standard] runs.

uvloop's transports are not ``asyncio.Transport`` instances; the wire once asserted that
they were, and every decision behind ``uvicorn[standard]`` fell back to the failure policy.
"""

from __future__ import annotations

import uuid

import pytest
from support.redis_servers import RedisCluster

from ratelimit import Limiter

# The bug made these hang, not fail: bound them.
pytestmark = pytest.mark.timeout(60)

uvloop = pytest.importorskip("uvloop", reason="uvloop comes with uvicorn[standard], in the dev extra")


def decide(url: str) -> list[tuple[bool, bool]]:
    async def main() -> list[tuple[bool, bool]]:
        limiter = Limiter(url)
        user = f"uvloop-{uuid.uuid4().hex[:8]}"
        try:
            decisions = [await limiter.ahit(user, "3/minute") for _ in range(4)]
        finally:
            await limiter.aclose()
        return [(d.allowed, d.fallback) for d in decisions]

    return uvloop.run(main())


def test_redis_decisions_under_uvloop(redis_url: str) -> None:
    """Three allowed, the fourth denied, all by Redis (none by the failure policy)."""
    assert decide(redis_url) == [(True, False)] * 3 + [(False, False)]


@pytest.mark.cluster
def test_cluster_decisions_under_uvloop(redis_cluster: RedisCluster) -> None:
    """The Cluster's per-node connections work on uvloop too."""
    assert decide(redis_cluster.url) == [(True, False)] * 3 + [(False, False)]
