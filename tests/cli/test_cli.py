"""The command line: ``python -m ratelimit demo`` and ``--help`` run and say what they should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.redis_servers import RedisServer

from ratelimit._cli.main import main, rate_limit_headers
from ratelimit.limiter import Limiter
from ratelimit.testing import FakeClock

ROOT = Path(__file__).resolve().parents[2]


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ratelimit ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "ratelimit", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_demo_runs_and_shows_the_key_lines() -> None:
    """The demo exits 0 and shows allowed, limited, the simulated clock and draft-10 headers."""
    proc = run_module("demo")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "SIMULATED" in out
    assert "allowed" in out and "limited" in out
    # The served app: three 200s, then a 429 with Retry-After, then another user's 200.
    served = out.split("0. A served app", 1)[1].split("\n1. ", 1)[0]
    codes = [line.rsplit("->", 1)[1].strip() for line in served.splitlines() if "->" in line]
    assert codes == ["200", "200", "200", "429", "200"]
    assert 'RateLimit: "items";r=0' in served and "Retry-After:" in served
    # alice's sixth request in 10 s, one a second: denied, back 7 s later.
    assert 'RateLimit-Policy: "user";q=5;w=10' in out
    assert 'RateLimit: "user";r=0;t=7' in out
    assert "Retry-After: 7" in out
    # carol's sixth request is denied by the global limit, which heads the decision.
    assert 'RateLimit-Policy: "global";q=15;w=60' in out
    assert "global 15/minute" in out
    assert proc.stderr == ""


def test_demo_is_deterministic() -> None:
    """Two runs on the simulated clock print the same output."""
    assert run_module("demo").stdout == run_module("demo").stdout


def test_help_exits_zero() -> None:
    """``--help`` prints usage naming the demo subcommand and exits 0."""
    proc = run_module("--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: ratelimit" in proc.stdout and "demo" in proc.stdout
    assert run_module("demo", "--help").returncode == 0


def test_main_returns_exit_codes() -> None:
    """main() returns instead of exiting: 0 for --help, 2 without a command or with a bad one."""
    assert main(["--help"]) == 0
    assert main([]) == 2
    assert main(["nonsense"]) == 2


def test_bad_storage_url_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL that is not Redis ends the demo with exit code 1 and a one-line error."""
    assert main(["demo", "--redis", "mongodb://x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ratelimit demo: error: unknown storage") and err.count("\n") == 1


def test_headers_for_an_allowed_decision() -> None:
    """When allowed, t is the reset-after of the tightest limit, and there is no Retry-After."""
    limiter = Limiter(clock=FakeClock(1_700_000_040.0))
    d = limiter.hit_many([("a", "10/second"), ("a", "3/minute")])
    assert rate_limit_headers(d, {"3/minute": "daily"}) == [
        ("RateLimit-Policy", '"daily";q=3;w=60'),
        ("RateLimit", '"daily";r=2;t=120'),
    ]


def test_demo_on_redis_cleans_up(redis_server: RedisServer) -> None:
    """With --redis the demo runs on real Redis TIME, skips time travel and deletes its keys."""
    proc = run_module("demo", "--redis", redis_server.url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Redis TIME" in proc.stdout and "skipped with --redis" in proc.stdout
    assert "limited" in proc.stdout and "RateLimit-Policy" in proc.stdout
    client = redis_server.client()
    try:
        assert list(client.scan_iter(match="rl-demo-*")) == []
    finally:
        client.close()
