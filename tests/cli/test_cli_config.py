"""``ratelimit check``, ``inspect`` and ``migrate`` from the command line."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from support.config_helpers import request, write

from ratelimit import Limiter
from ratelimit._cli.main import main
from ratelimit.enforce import Enforcer

GOOD = """
identity: {claim_headers: {sub: x-user-id, plan: x-plan}}
rules:
  - name: api
    match: {paths: ["/api/**"], methods: [GET]}
    key: claim:sub
    tiers: {by: claim:plan, limits: {pro: [10/second, 1000/day], internal: unlimited}, default: 5/minute}
    overrides: {heavy: 500/minute}
  - {name: login, match: {path: /login}, key: ip, limits: 5/minute, shadow: true}
envoy:
  - domain: edge
    descriptors: [{key: remote_address, rate_limit: {unit: second, requests_per_unit: 50}}]
"""


def test_check_prints_effective_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file: exit 0 and the rules with their tiers, overrides, shadow flag and Envoy domain."""
    assert main(["check", str(write(tmp_path, GOOD))]) == 0
    out = capsys.readouterr().out
    expected = [
        "OK", "api", "tiers by jwt_claim('plan')", "pro: 10/second, 1000/day", "internal: unlimited",
        "(default): 5/minute", "override heavy: 500/minute", "login  [shadow]", "domain 'edge'",
        "every key path with a limit",
    ]  # fmt: skip
    for line in expected:
        assert line in out, out


def test_check_reports_every_error_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid file: exit 1 and each error with file, line and field on stderr."""
    bad = write(
        tmp_path, "rules:\n  - name: a\n    limits: 10/minit\n  - name: b\n    limit: 1/s\n    key: nobody\n"
    )
    good = write(tmp_path, GOOD, "good.yaml")
    assert main(["check", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "good.yaml: OK" in captured.out
    assert f"{bad}: INVALID (2 errors)" in captured.err
    assert f"{bad}:3:5: rules[0].limits: expected a rate" in captured.err
    assert f"{bad}:6:5: rules[1].key: expected a key" in captured.err


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that does not exist is an error naming it."""
    assert main(["check", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read the config file" in capsys.readouterr().err


def test_inspect_shows_usage_on_redis(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """inspect peeks at a subject's counters per rule and tier, counting nothing itself."""
    prefix = f"inspect-{uuid.uuid4().hex[:8]}"
    path = write(
        tmp_path,
        GOOD.replace("identity:", f"backend: {{storage: '{redis_url}', prefix: {prefix}}}\nidentity:"),
    )
    with Limiter.from_config(path, reload=False) as limiter:
        enforcer = Enforcer.for_adapter(limiter, "test")
        for _ in range(3):
            enforcer.check(request(path="/api/x", x_user_id="ann", x_plan="pro"))
    for _ in range(2):
        assert main(["inspect", str(path), "ann", "--rule", "api", "--tier", "pro"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage of 'ann' on {redis_url}:\n"), out  # the URL, not a repr
        assert "api 10/second: used 3, remaining 7" in out and "api 1000/day: used 3, remaining 997" in out
    assert main(["inspect", str(path), "ann", "--rule", "api", "--tier", "internal"]) == 0
    assert "api: unlimited" in capsys.readouterr().out
    # An Envoy domain's counter is named by its request descriptor.
    assert main(["inspect", str(path), "remote_address=10.0.0.1", "--rule", "envoy-edge"]) == 0
    assert "envoy-edge 50/second: used 3, remaining 47" in capsys.readouterr().out


def test_inspect_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown rule or an unreachable Redis is a clear error with exit 1."""
    path = write(tmp_path, GOOD)
    assert main(["inspect", str(path), "ann", "--rule", "nope"]) == 1
    assert "no rule named 'nope'" in capsys.readouterr().err
    assert main(["inspect", str(path), "ann", "--storage", "redis://127.0.0.1:1/0"]) == 1
    assert "ratelimit inspect: error" in capsys.readouterr().err


def test_migrate_is_wired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ratelimit migrate FILE -o OUT writes a config that check accepts."""
    monkeypatch.setenv("REDIS_URL", "redis://redis.shop.svc:6379/0")
    corpus = Path(__file__).resolve().parents[1] / "migrate" / "migration" / "per-user"
    inputs = sorted(str(p) for p in corpus.glob("*.yaml"))
    out = tmp_path / "limits.yaml"
    assert main(["migrate", *inputs, "-o", str(out)]) == 0
    assert main(["check", str(out)]) == 0
    assert main(["migrate", str(tmp_path / "missing.yaml")]) == 1


@pytest.mark.parametrize("command", ["demo", "check", "migrate", "inspect"])
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each subcommand's --help exits 0 and describes it."""
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"usage: ratelimit {command}" in out and len(out.splitlines()) > 4


def test_check_env_sets_variables_the_file_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check -e NAME=VALUE fills ${NAME}; without it the unset variable is the error."""
    monkeypatch.delenv("RL_CHECK_URL", raising=False)
    path = write(tmp_path, "backend: {storage: '${RL_CHECK_URL}'}\nrules: [{name: a, limits: 1/s}]\n")
    assert main(["check", str(path)]) == 1
    assert "RL_CHECK_URL is not set" in capsys.readouterr().err
    monkeypatch.setenv("RL_CHECK_URL", "")  # restored by monkeypatch after main() sets it
    assert main(["check", "-e", "RL_CHECK_URL=redis://r:6379/0", str(path)]) == 0
    assert "backend: redis://r:6379/0" in capsys.readouterr().out
    assert main(["check", "-e", "oops", str(path)]) == 2


SHARED = """
domain: files
descriptors:
  - {key: path, value: "/files/*", share_threshold: true, rate_limit: {unit: minute, requests_per_unit: 4}}
  - {key: path, value: "/api/*/action", rate_limit: {unit: minute, requests_per_unit: 3}}
"""


def test_inspect_says_when_no_limit_matches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A descriptor that matches nothing, or is no descriptor at all, is said so instead of silence."""
    path = write(tmp_path, SHARED)
    assert main(["inspect", str(path), "path=/other"]) == 0
    assert "envoy-files: no limit of domain 'files' matches 'path=/other'" in capsys.readouterr().out
    assert main(["inspect", str(path), "ann"]) == 0
    assert "envoy-files: 'ann' is not a descriptor (key=value,key=value)" in capsys.readouterr().out


def test_inspect_names_a_shared_counter_and_the_memory_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A share_threshold match names the wildcard counter; memory:// says it holds no app counters."""
    path = write(tmp_path, SHARED)
    assert main(["inspect", str(path), "path=/files/a.pdf"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage of 'path=/files/a.pdf' on memory:// (this process only"), out
    assert "envoy-files (shared counter path=/files/*) 4/minute: used 0, remaining 4" in out
    assert main(["inspect", str(path), "path=/api/1/action"]) == 0
    assert "envoy-files 3/minute: used 0, remaining 3" in capsys.readouterr().out


def test_inspect_hides_passwords_in_the_storage_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The storage URL is printed with its password and sentinel_password replaced by ***."""
    path = write(tmp_path, SHARED)
    url = "redis://u:s3cret@127.0.0.1:1/0?sentinel_password=hush"
    assert main(["inspect", str(path), "path=/x", "--storage", url]) in (0, 1)
    out = capsys.readouterr().out
    assert "redis://u:***@127.0.0.1:1/0?sentinel_password=***" in out
    assert "s3cret" not in out and "hush" not in out


def test_check_prints_the_descriptor_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check lists each descriptor with its limit, and whether a wildcard shares one counter."""
    assert main(["check", str(write(tmp_path, SHARED))]) == 0
    out = capsys.readouterr().out
    assert "- path = /files/*  (one counter for all matches): 4/minute" in out
    assert "- path = /api/*/action  (a counter per matching value): 3/minute" in out
