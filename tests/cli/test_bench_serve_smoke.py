"""Smoke test of bench/bench_serve.py at --quick size: `ratelimit serve` under real load.

Nothing about speed is asserted: the benchmark must run a real ``ratelimit serve``
process on a private Redis, load it with its grpc.aio client, replay the server's own
script call with redis-benchmark, and print a table in which every row answered only OK
from real decisions (no failure-policy answer, scripts ran on Redis).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_redis_server

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def test_serve_and_inapp_rows_are_valid() -> None:
    require_redis_server()
    pytest.importorskip("envoy.service.ratelimit.v3.rls_pb2", reason="the serve extra is not installed")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_serve.py"), "--quick", "--descriptors", "1,3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| serve |", "| in-app |"))]
    assert len(rows) == 4, proc.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2].replace(",", "")) > 0, row  # calls/s
        assert float(cells[8]) > 0, row  # scripts per call: Redis decided
        assert cells[-1] == "valid", row
    assert "of one Redis core's worth of the script" in proc.stdout, proc.stdout
