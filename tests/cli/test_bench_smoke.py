"""Smoke test of bench/bench_asgi.py: it runs and prints its table. Nothing about speed."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import require_redis_server
from support.bench_tables import assert_measured, run_bench, table_rows

TABLE_TITLE = "ASGI in-process benchmark"


def test_bench_runs_without_redis() -> None:
    rows = table_rows(run_bench("bench_asgi.py", "--variants", "bare,ambient-memory"), TABLE_TITLE)
    assert_measured(rows, ["bare", "ambient-memory"])


@pytest.mark.redis
def test_bench_runs_with_redis() -> None:
    require_redis_server()
    variants = ["bare", "ambient-redis", "ambient-redis-hotkey"]
    if importlib.util.find_spec("limits") is not None:
        variants.append("limits-async")
    rows = table_rows(run_bench("bench_asgi.py", "--variants", ",".join(variants)), TABLE_TITLE)
    assert_measured(rows, variants)
    # Redis variants report their commands per request as a number (not "-").
    float(rows["ambient-redis"].split()[4])
