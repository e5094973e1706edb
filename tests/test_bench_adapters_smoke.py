"""Smoke test of bench/bench_adapters.py: each family runs at --quick size and prints its table.

Nothing about speed is asserted. The Redis parts (the package's Redis variants and the
peers, which all use Redis) need a redis-server binary: they are skipped without one,
except under CI=true, where a missing redis-server fails.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "bench_adapters.py"
IN_CI = os.environ.get("CI", "").strip().lower() == "true"
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


def run_bench(*args: str) -> str:
    """Run the benchmark at --quick size in a subprocess; fail with its output unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def table_rows(stdout: str, title: str) -> dict[str, str]:
    """The rows of the table under ``title``, by variant name."""
    lines = stdout.splitlines()
    assert title in lines, stdout
    start = lines.index(title)
    assert lines[start + 1].split()[:2] == ["variant", "req/s"], stdout
    assert set(lines[start + 2]) == {"-"}, stdout
    rows = {}
    for line in lines[start + 3 :]:
        if not line.strip() or line.startswith(("warning:", "note:")):
            break
        rows[line.split()[0]] = line
    return rows


def assert_measured(rows: dict[str, str], names: list[str]) -> None:
    for name in names:
        assert name in rows, f"no row for {name}: {rows}"
        assert "failed" not in rows[name], rows[name]
        float(rows[name].split()[1].replace(",", ""))  # req/s is a number


@pytest.mark.parametrize("family", list(TITLES))
def test_family_runs_without_redis(family: str) -> None:
    need_family(family)
    stdout = run_bench("--adapters", family, "--no-redis")
    rows = table_rows(stdout, TITLES[family])
    assert_measured(rows, memory_rows(family))
    for other in set(TITLES) - {family}:
        assert TITLES[other] not in stdout.splitlines()


@pytest.mark.redis
@pytest.mark.parametrize("family", list(TITLES))
def test_family_runs_with_redis(family: str) -> None:
    need_family(family)
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server not found; CI must install it (apt-get install -y redis-server)")
        pytest.skip('redis-server not found on PATH; deselect with -m "not redis"')
    rows = table_rows(run_bench("--adapters", family), TITLES[family])
    assert_measured(rows, memory_rows(family) + redis_rows(family))
    # A Redis row reports its Redis commands per request as a number (not "-").
    for name in redis_rows(family):
        float(rows[name].split()[5])
