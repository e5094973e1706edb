"""Smoke test of bench/bench_asgi.py: it runs and prints its table. Nothing about speed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "bench_asgi.py"
TABLE_TITLE = "ASGI in-process benchmark"
IN_CI = os.environ.get("CI", "").strip().lower() == "true"


def run_bench(*args: str) -> str:
    """Run the benchmark in a subprocess; fail with its output unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    return proc.stdout


def table_rows(stdout: str) -> dict[str, str]:
    """The rows of the printed table, by variant name."""
    lines = stdout.splitlines()
    assert TABLE_TITLE in lines, stdout
    start = lines.index(TABLE_TITLE)
    assert lines[start + 1].split()[:2] == ["variant", "req/s"], stdout
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


def test_bench_runs_without_redis() -> None:
    rows = table_rows(run_bench("--variants", "bare,ambient-memory"))
    assert_measured(rows, ["bare", "ambient-memory"])


@pytest.mark.redis
def test_bench_runs_with_redis() -> None:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server not found; CI must install it (apt-get install -y redis-server)")
        pytest.skip('redis-server not found on PATH; deselect with -m "not redis"')
    variants = ["bare", "ambient-redis", "ambient-redis-hotkey"]
    if importlib.util.find_spec("limits") is not None:
        variants.append("limits-async")
    rows = table_rows(run_bench("--variants", ",".join(variants)))
    assert_measured(rows, variants)
    # Redis variants report their commands per request as a number (not "-").
    float(rows["ambient-redis"].split()[4])
