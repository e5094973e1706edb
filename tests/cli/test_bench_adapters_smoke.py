"""Smoke test of bench/bench_adapters.py: each family runs at --quick size and prints its table.

Nothing about speed is asserted. The Redis parts (the package's Redis variants and the
peers, which all use Redis) need a redis-server binary: they are skipped without one,
except under CI=true, where a missing redis-server fails.
"""

from __future__ import annotations

import importlib.util

import pytest
from conftest import require_redis_server
from support.bench_tables import assert_measured, run_bench, table_rows

TITLES = {
    "asgi": "ASGI adapters (in-process)",
    "wsgi": "WSGI / Flask adapters (in-process)",
    "grpc": "gRPC interceptors (real server and client, loopback)",
}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def need_family(family: str) -> None:
    """Skip when the family's optional framework is not installed (dev installs all of them)."""
    if family == "asgi":
        pytest.importorskip("starlette")
    elif family == "wsgi":
        pytest.importorskip("flask")
    else:
        pytest.importorskip("grpc")
        pytest.importorskip("grpc_status")


def memory_rows(family: str) -> list[str]:
    """The rows expected without Redis."""
    if family == "asgi":
        rows = ["bare", "middleware-memory", "decorator-memory"]
        if installed("fastapi"):
            rows += ["bare-fastapi", "dependency-memory"]
        return rows
    if family == "wsgi":
        return ["bare-flask", "wsgi-memory", "flask-decorator-memory"]
    return ["sync-bare", "sync-memory", "aio-bare", "aio-memory"]


def redis_rows(family: str) -> list[str]:
    """The Redis rows expected when redis-server is available (peers only when installed)."""
    if family == "asgi":
        return ["middleware-redis"] + (["slowapi"] if installed("slowapi") else [])
    if family == "wsgi":
        return ["wsgi-redis"] + (["flask-limiter"] if installed("flask_limiter") else [])
    return ["sync-redis", "aio-redis"]


@pytest.mark.parametrize("family", list(TITLES))
def test_family_runs_without_redis(family: str) -> None:
    need_family(family)
    stdout = run_bench("bench_adapters.py", "--adapters", family, "--no-redis")
    rows = table_rows(stdout, TITLES[family])
    assert_measured(rows, memory_rows(family))
    for other in set(TITLES) - {family}:
        assert TITLES[other] not in stdout.splitlines()


@pytest.mark.redis
@pytest.mark.parametrize("family", list(TITLES))
def test_family_runs_with_redis(family: str) -> None:
    need_family(family)
    require_redis_server()
    rows = table_rows(run_bench("bench_adapters.py", "--adapters", family), TITLES[family])
    assert_measured(rows, memory_rows(family) + redis_rows(family))
    # A Redis row reports its Redis commands per request as a number (not "-").
    for name in redis_rows(family):
        float(rows[name].split()[5])
