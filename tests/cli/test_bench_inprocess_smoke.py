"""Smoke test of bench/bench_inprocess.py: it runs and every row measured real, allowed requests."""

from __future__ import annotations

from support.bench_tables import run_bench

VARIANTS = ("bare", "middleware-rule", "decorator", "jwt-subject")


def test_bench_inprocess_runs() -> None:
    out = run_bench("bench_inprocess.py")
    assert "INVALID" not in out, out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] != []}
    for name in VARIANTS:
        assert name in rows, out
        float(rows[name][1])  # microseconds per request
        assert rows[name][3] == "200:500", out  # --quick: 500 requests, all allowed
