"""ShouldRateLimit answered by a real ``ratelimit serve`` process on a real Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import descriptor, grpc, rls_pb2

from ratelimit import Limiter
from ratelimit.enforce import Enforcer
from ratelimit.request import Headers, RequestInfo

OK, OVER = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT
Unit = rls_pb2.RateLimitResponse.RateLimit

SHOP = """
domain: shop
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3, name: per-user}
  - key: path
    value: /login
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: path
    value: /api/*
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: free
    rate_limit: {unlimited: true}
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 5, name: tenant}
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 1, name: tenant-user, replaces: [{name: tenant}]}
  - key: vip
    rate_limit: {unlimited: true, replaces: [{name: per-user}]}
  - key: trial
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1, name: trial}
"""


def write_config(tmp: Path, redis_url: str, prefix: str, service: str = SHOP, **backend: Any) -> Path:
    """A config file with ``service`` as its one envoy entry, on ``redis_url`` under ``prefix``."""
    doc = {
        "version": 1,
        "backend": {"storage": redis_url, "prefix": prefix, **backend},
        "envoy": [yaml.safe_load(service)],
    }
    path = tmp / "limits.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def shop(tmp_path: Path, redis_url: str, prefix: str, serve: Any) -> Any:
    """A server for the ``shop`` domain above, on the session's Redis."""
    return serve(write_config(tmp_path, redis_url, prefix))


def test_every_response_field(shop: Any) -> None:
    """Statuses carry code, current_limit (name, unit, rate), remaining and reset; headers follow."""
    first = shop.ask([("user", "alice")])
    assert first.overall_code == OK
    (status,) = first.statuses
    assert status.code == OK
    assert (status.current_limit.name, status.current_limit.unit) == ("per-user", Unit.MINUTE)
    assert status.current_limit.requests_per_unit == 3
    assert status.limit_remaining == 2
    assert 0 < status.duration_until_reset.ToNanoseconds() <= 120e9
    headers = {h.key: h.value for h in first.response_headers_to_add}
    assert headers["RateLimit-Policy"] == '"per-user";q=3;w=60'
    assert headers["RateLimit"].startswith('"per-user";r=2;t=')
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("3", "2")
    shop.ask([("user", "alice")])
    shop.ask([("user", "alice")])
    denied = shop.ask([("user", "alice")])
    assert denied.overall_code == OVER
    (status,) = denied.statuses
    assert (status.code, status.limit_remaining) == (OVER, 0)
    assert status.duration_until_reset.ToNanoseconds() > 0  # when the same hit fits again
    headers = {h.key: h.value for h in denied.response_headers_to_add}
    assert int(headers["Retry-After"]) >= 1
    assert shop.ask([("user", "bob")]).overall_code == OK  # key-only: one counter per value


def test_a_descriptor_without_a_limit_is_ok_without_current_limit(shop: Any) -> None:
    """No matching limit: OK, no current_limit, as upstream; an unknown domain too."""
    answer = shop.ask([("path", "/elsewhere")], [("nothing", "here")])
    assert [s.code for s in answer.statuses] == [OK, OK]
    assert not any(s.HasField("current_limit") for s in answer.statuses)
    assert not answer.response_headers_to_add
    other = shop.ask([("user", "x")], domain="no-such-domain")
    assert other.overall_code == OK and not other.statuses[0].HasField("current_limit")


def test_exact_and_wildcard_values(shop: Any) -> None:
    """An exact value has its limit; a wildcard value is one counter per distinct value."""
    for _ in range(2):
        assert shop.ask([("path", "/login")]).statuses[0].current_limit.unit == Unit.HOUR
    assert shop.ask([("path", "/login")]).overall_code == OVER
    for path in ("/api/a", "/api/b"):
        assert shop.ask([("path", path)]).statuses[0].current_limit.requests_per_unit == 2
    assert shop.ask([("path", "/api/a")]).statuses[0].limit_remaining == 0


def test_unlimited_answers_max_remaining_and_counts_nothing(shop: Any) -> None:
    """An unlimited descriptor is OK with limit_remaining 2^32-1 and no current_limit."""
    for _ in range(5):
        (status,) = shop.ask([("free", "x")]).statuses
        assert (status.code, status.limit_remaining) == (OK, 2**32 - 1)
        assert not status.HasField("current_limit")


def test_replaces_drops_the_named_limit(shop: Any) -> None:
    """tenant-user replaces tenant; an unlimited vip replaces per-user."""
    answer = shop.ask([("tenant", "t1")], [("tenant", "t1"), ("user", "u")])
    tenant, tenant_user = answer.statuses
    assert not tenant.HasField("current_limit") and tenant.code == OK
    assert tenant_user.current_limit.name == "tenant-user"
    answer = shop.ask([("user", "carol")], [("vip", "yes")])
    assert not answer.statuses[0].HasField("current_limit")
    for _ in range(4):
        assert shop.ask([("user", "carol")], [("vip", "yes")]).overall_code == OK


def test_a_denied_request_consumes_no_other_quota(shop: Any) -> None:
    """All descriptors are decided together: one over its limit, the others are not charged."""
    shop.ask([("path", "/api/x")])
    shop.ask([("path", "/api/x")])
    denied = shop.ask([("user", "dave")], [("path", "/api/x")])
    assert denied.overall_code == OVER
    user, path = denied.statuses
    assert (user.code, path.code) == (OK, OVER)
    assert user.limit_remaining == 3  # dave was not charged
    assert shop.ask([("user", "dave")]).statuses[0].limit_remaining == 2


def test_shadow_mode_counts_and_never_denies(shop: Any) -> None:
    """A shadow_mode descriptor is counted and reported, its code stays OK, and it blocks nothing."""
    shop.ask([("trial", "e")])
    answer = shop.ask([("trial", "e")], [("user", "erin")])
    trial, user = answer.statuses
    assert answer.overall_code == OK
    assert (trial.code, trial.limit_remaining, trial.current_limit.name) == (OK, 0, "trial")
    assert user.limit_remaining == 2


def test_global_shadow_mode(tmp_path: Path, redis_url: str, prefix: str, serve: Any) -> None:
    """SHADOW_MODE=true: the statuses tell OVER_LIMIT, the overall code stays OK."""
    server = serve(write_config(tmp_path, redis_url, prefix), env={"SHADOW_MODE": "true"})
    for _ in range(2):
        server.ask([("path", "/login")])
    answer = server.ask([("path", "/login")])
    assert answer.statuses[0].code == OVER
    assert answer.overall_code == OK


def test_hits_addend_per_request_and_per_descriptor(shop: Any) -> None:
    """The request's hits_addend applies to every descriptor; a descriptor's own wins, 0 only looks."""
    answer = shop.ask([("user", "fay")], hits=2)
    assert answer.statuses[0].limit_remaining == 1
    answer = shop.ask(descriptor(("user", "fay"), hits=0), hits=3)
    assert (answer.overall_code, answer.statuses[0].limit_remaining) == (OK, 1)
    answer = shop.ask(descriptor(("user", "fay"), hits=2))
    assert answer.overall_code == OVER
    assert shop.ask(descriptor(("user", "fay"), hits=1)).overall_code == OK


def test_limit_override_from_the_request(shop: Any) -> None:
    """A descriptor's own limit (Envoy's override) is enforced on the descriptor's counter."""
    ask = descriptor(("user", "gus"), override=(1, Unit.SECOND))
    first = shop.ask(ask)
    assert (first.statuses[0].current_limit.unit, first.statuses[0].current_limit.requests_per_unit) == (
        Unit.SECOND,
        1,
    )
    assert shop.ask(ask).overall_code == OVER


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: [], "descriptor list must not be empty"),
        (lambda: [descriptor(("user", "x"), override=(1, 0))], "limit override has unit 0"),
        (lambda: [[("user", f"u{i}")] for i in range(257)], "257 descriptors in one request; at most 256"),
    ],
)
def test_bad_requests_get_invalid_argument(shop: Any, build: Any, expected: str) -> None:
    """No descriptors, too many, or an override without a unit: INVALID_ARGUMENT, server unharmed."""
    with pytest.raises(grpc.RpcError) as err:
        shop.ask(*build())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        shop.ask([("user", "x")], domain="")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert shop.ask([("user", "still-up")]).overall_code == OK


def test_huge_and_odd_input_is_answered(shop: Any) -> None:
    """A huge hits_addend is over the limit and counts nothing; empty and huge descriptors are answered."""
    answer = shop.ask(descriptor(("user", "hal"), hits=2**64 - 1), hits=2**32 - 1)
    assert answer.overall_code == OVER
    assert shop.ask([("user", "hal")]).statuses[0].limit_remaining == 2
    assert shop.ask(descriptor()).statuses[0].code == OK
    assert shop.ask([("user", "v" * 100_000)]).overall_code == OK
    many = shop.ask(*[[("user", f"m{i}")] for i in range(200)])
    assert len(many.statuses) == 200 and many.overall_code == OK


def test_reload_applies_a_changed_file(tmp_path: Path, redis_url: str, prefix: str, serve: Any) -> None:
    """A valid change is in force without a restart; an invalid one is rejected and the old rules stay."""
    path = write_config(tmp_path, redis_url, prefix)
    server = serve(path)
    assert server.ask([("user", "ivy")]).statuses[0].current_limit.requests_per_unit == 3
    path.write_text(path.read_text().replace("requests_per_unit: 3", "requests_per_unit: 30"))
    server.wait_log("loaded")
    assert server.ask([("user", "ivy")]).statuses[0].current_limit.requests_per_unit == 30
    path.write_text(path.read_text().replace("unit: minute", "unit: fortnight"))
    server.wait_log("rejected")
    assert server.ask([("user", "ivy")]).statuses[0].current_limit.requests_per_unit == 30


def test_a_directory_of_upstream_configs(tmp_path: Path, redis_url: str, prefix: str, serve: Any) -> None:
    """A directory of bare service configs is served, one domain per file, and follows new files."""
    conf = tmp_path / "config"
    conf.mkdir()
    (conf / "shop.yaml").write_text(SHOP)
    (conf / "..data").mkdir()  # a ConfigMap volume's own entries are not configs
    server = serve(conf, env={"REDIS_URL": redis_url, "CACHE_KEY_PREFIX": prefix})
    assert server.ask([("user", "jo")]).statuses[0].current_limit.name == "per-user"
    assert not server.ask([("k", "v")], domain="other").statuses[0].HasField("current_limit")
    other = "domain: other\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 7}\n"
    (conf / "other.yml").write_text(other)
    server.wait_log("loaded 2 domains")
    assert server.ask([("k", "v")], domain="other").statuses[0].current_limit.requests_per_unit == 7


@pytest.mark.parametrize(("enabled", "expected"), [(None, False), ("true", True), ("false", False)])
def test_upstream_format_has_upstream_header_default(
    tmp_path: Path, redis_url: str, prefix: str, serve: Any, enabled: str | None, expected: bool
) -> None:
    """A service config (file or directory) adds no headers unless LIMIT_RESPONSE_HEADERS_ENABLED asks."""
    conf = tmp_path / "config"
    conf.mkdir()
    (conf / "shop.yaml").write_text(SHOP)
    env = {"REDIS_URL": redis_url, "CACHE_KEY_PREFIX": prefix}
    if enabled is not None:
        env["LIMIT_RESPONSE_HEADERS_ENABLED"] = enabled
    for config in (conf, conf / "shop.yaml"):
        server = serve(config, env=env)
        answer = server.ask([("user", "hd")])
        assert answer.statuses[0].current_limit.name == "per-user"
        names = {h.key for h in answer.response_headers_to_add}
        assert bool(names) is expected, (config, names)
        if expected:
            assert {"RateLimit-Policy", "RateLimit", "X-RateLimit-Remaining"} <= names


def test_gateway_and_app_share_one_budget(tmp_path: Path, redis_url: str, prefix: str, serve: Any) -> None:
    """The server and an app with Limiter.from_config on the same file and Redis count on one counter."""
    path = write_config(tmp_path, redis_url, prefix)
    server = serve(path)
    limiter = Limiter.from_config(path, reload=False)
    try:
        enforcer = Enforcer.for_adapter(limiter, "test")
        app_request = RequestInfo("http", "GET", "/", Headers([("user", "kim")]), "10.0.0.1")
        assert enforcer.check(app_request).action == "allow"
        assert enforcer.check(app_request).action == "allow"
        gateway = server.ask([("user", "kim")])
        assert (gateway.overall_code, gateway.statuses[0].limit_remaining) == (OK, 0)
        assert server.ask([("user", "kim")]).overall_code == OVER
        assert enforcer.check(app_request).action == "deny"
    finally:
        limiter.close()


def test_share_threshold_makes_a_wildcard_one_counter(
    tmp_path: Path, redis_url: str, prefix: str, serve: Any
) -> None:
    """share_threshold: every value the wildcard matches counts on one shared counter."""
    service = """
domain: shop
descriptors:
  - key: files
    value: top*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 2}
"""
    server = serve(write_config(tmp_path, redis_url, prefix, service))
    assert server.ask([("files", "top-a")]).overall_code == OK
    assert server.ask([("files", "top-b")]).overall_code == OK
    assert server.ask([("files", "top-c")]).overall_code == OVER


def test_response_dynamic_metadata(tmp_path: Path, redis_url: str, prefix: str, serve: Any) -> None:
    """RESPONSE_DYNAMIC_METADATA=true: the request, and the merged metadata of the limits it passed."""
    from google.protobuf import json_format

    service = """
domain: meta
descriptors:
  - key: a
    metadata: {team: {name: checkout, tier: 1}, owner: first}
    rate_limit: {unit: minute, requests_per_unit: 5}
  - key: b
    metadata: {team: {region: eu}, owner: second}
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: c
    metadata: {never: shown}
    rate_limit: {unlimited: true}
"""
    path = write_config(tmp_path, redis_url, prefix, service)
    quiet = serve(path)
    assert not quiet.ask([("a", "1")], domain="meta").HasField("dynamic_metadata")  # off by default
    server = serve(path, env={"RESPONSE_DYNAMIC_METADATA": "true"})
    first = server.ask([("a", "1")], [("b", "1")], [("c", "1")], domain="meta", hits=1)
    meta = json_format.MessageToDict(first.dynamic_metadata)
    assert meta["domain"] == "meta"
    assert [d["entries"] for d in meta["descriptors"]] == [["a=1"], ["b=1"], ["c=1"]]
    assert meta["hitsAddend"] == 1
    # Nested mappings merge; for any other key the first passed limit's value stays.
    assert meta["metadata"] == {"team": {"name": "checkout", "tier": 1, "region": "eu"}, "owner": "first"}
    # b is over its limit now: only a's metadata is left (c is unlimited: never "passed").
    second = server.ask([("a", "1")], [("b", "1")], domain="meta")
    assert second.overall_code == OVER
    assert json_format.MessageToDict(second.dynamic_metadata)["metadata"] == {
        "team": {"name": "checkout", "tier": 1},
        "owner": "first",
    }
