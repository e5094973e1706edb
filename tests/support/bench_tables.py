"""Running a benchmark script at --quick size and reading the table it prints (smoke tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str) -> str:
    """Run ``bench/<script>`` at --quick size in a subprocess; fail with its output unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *args],
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
    """Every variant in ``names`` has a row with a numeric req/s, none failed."""
    for name in names:
        assert name in rows, f"no row for {name}: {rows}"
        assert "failed" not in rows[name], rows[name]
        float(rows[name].split()[1].replace(",", ""))
