"""Smoke test of bench/bench_servers.py: real uvicorn servers under wrk, at --quick size.

Nothing about speed is asserted: the benchmark must run, print its ASGI table, and every
allowed row must show only real decisions (no 429, no other status or unanswered
request, no failure-policy answer) and be marked valid. It needs ``wrk`` (missing: a
failure under CI=true, a skip otherwise) and ``uvicorn[standard]`` (the bench extra); the
Redis row also needs a redis-server binary (the suite's usual rule).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_redis_server

ROOT = Path(__file__).resolve().parents[2]
TITLE_PREFIX = "### ASGI behind uvicorn"
WRK_MISSING_CI = "wrk not found; CI must install it (apt-get install -y wrk) to run bench/bench_servers.py"
WRK_MISSING_LOCAL = (
    "wrk not found on PATH; bench/bench_servers.py drives its servers with it "
    "(Debian/Ubuntu: apt-get install -y wrk; macOS: brew install wrk)"
)

pytestmark = pytest.mark.slow


def require_wrk() -> None:
    if shutil.which("wrk") is not None:
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(WRK_MISSING_CI, pytrace=False)
    pytest.skip(WRK_MISSING_LOCAL)


def require_servers() -> None:
    for module in ("starlette", "uvicorn", "uvloop", "httptools"):
        pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[bench]'")


def run_bench(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_servers.py"), "--quick", "--families", "asgi", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def asgi_rows(stdout: str) -> dict[str, dict[str, str]]:
    """The cells of the ASGI results table, by variant."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(TITLE_PREFIX)]
    assert starts, stdout
    header = lines[starts[0] + 2]
    assert header.startswith("| variant | req/s"), stdout
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {}
    for line in lines[starts[0] + 4 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(columns, cells, strict=False))
    return rows


def assert_allowed_and_valid(rows: dict[str, dict[str, str]], names: list[str]) -> None:
    for name in names:
        assert name in rows, f"no row for {name}: {rows}"
        row = rows[name]
        assert float(row["req/s (median)"].replace(",", "")) > 0, row
        ok, denied, other = (int(x) for x in row["200 / 429 / other"].split("/"))
        assert ok > 0 and denied == 0 and other == 0, row
        assert row["fallbacks"] == "0", row
        assert row["valid"].startswith("ok"), row  # "ok", or "ok; 1 of 1 runs noisy"


def test_memory_rows_behind_uvicorn() -> None:
    require_wrk()
    require_servers()
    rows = asgi_rows(run_bench("--variants", "bare,decorator-memory,middleware-rule-memory"))
    assert_allowed_and_valid(rows, ["bare", "decorator-memory", "middleware-rule-memory"])


@pytest.mark.redis
def test_redis_row_behind_uvicorn() -> None:
    require_wrk()
    require_servers()
    require_redis_server()
    rows = asgi_rows(run_bench("--variants", "bare,engine-wrapper,middleware-rule"))
    assert_allowed_and_valid(rows, ["bare", "engine-wrapper", "middleware-rule"])
    # A Redis row asked Redis: commands per request is a positive number.
    assert float(rows["middleware-rule"]["redis cmds/req"]) > 0
