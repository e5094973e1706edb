"""The envoyproxy/ratelimit service format, read as it is and matched with that service's precedence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.config_helpers import Driver, write
from support.config_helpers import request as config_request

SERVICE = """
domain: shop
descriptors:
  - key: plan
    value: free
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: plan
    value: "team*"
    rate_limit: {unit: minute, requests_per_unit: 4}
  - key: plan
    rate_limit: {unit: minute, requests_per_unit: 6}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
    descriptors:
      - key: :path
        value: /upload
        rate_limit: {unit: minute, requests_per_unit: 1}
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 100}
"""


@pytest.fixture(params=["memory", "redis"])
def drive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Build a Driver from config text on memory or on real Redis."""
    storage = None if request.param == "memory" else request.getfixturevalue("redis_url")
    made: list[Driver] = []

    def build(text: str, name: str = "limits.yaml", **files: str) -> Driver:
        for fname, body in files.items():
            write(tmp_path, body, fname.replace("_", "-") + ".yaml")
        d = Driver(write(tmp_path, text, name), storage)
        made.append(d)
        return d

    yield build
    for d in made:
        d.close()


def test_exact_then_wildcard_then_key_only(drive: Any) -> None:
    """An exact value wins over a wildcard, which wins over the key alone (one counter per value)."""
    d = drive(SERVICE, name="config.yaml")  # a bare service config, loaded as it is
    assert d.allowed(10, x_plan="free", plan="free") == 2
    assert d.allowed(10, plan="team-a") == 4
    assert d.allowed(10, plan="team-b") == 4  # wildcard: a counter per value
    assert d.allowed(10, plan="gold") == 6
    assert d.allowed(10, plan="silver") == 6


def test_limit_applies_only_at_the_last_entrys_depth(drive: Any) -> None:
    """user alone is limited by its own limit; user + :path by the nested one, with the actions given."""
    d = drive(
        """
        envoy:
          - file: svc.yaml
            rate_limits:
              - actions:
                  - request_headers: {header_name: x-user-id, descriptor_key: user}
                  - request_headers: {header_name: ":path", descriptor_key: ":path"}
        """,
        svc=SERVICE,
    )
    assert d.allowed(5, path="/upload", x_user_id="ann") == 1
    # /other: [user, :path=/other] has no nested match, so no limit applies at that depth.
    assert d.allowed(8, path="/other", x_user_id="ann") == 8


def test_convention_generates_every_limited_key_path(drive: Any) -> None:
    """Without rate_limits every limited key path is a descriptor: user, and user + :path, both apply."""
    d = drive(SERVICE, name="config.yaml")
    assert d.allowed(5, path="/upload", user="bob") == 1
    assert d.allowed(5, path="/x", user="bob") == 2  # user's 3/minute, one already used


def test_unlimited_and_replaces(drive: Any) -> None:
    """unlimited is never counted; a limit that replaces another removes it for that request."""
    d = drive("""
        envoy:
          - domain: api
            descriptors:
              - key: generic_key
                value: everyone
                rate_limit: {name: base, unit: minute, requests_per_unit: 2}
              - key: user
                value: vip
                rate_limit: {unlimited: true, replaces: [{name: base}]}
              - key: user
                value: bulk
                rate_limit: {unit: minute, requests_per_unit: 5, replaces: [{name: base}]}
            rate_limits:
              - actions: [{generic_key: {descriptor_value: everyone}}]
              - actions: [{request_headers: {header_name: x-user, descriptor_key: user}}]
    """)
    assert d.allowed(20, x_user="vip") == 20
    assert d.allowed(20, x_user="bulk") == 5
    assert d.allowed(5, x_user="normal") == 2


def test_shadow_mode_descriptor_counts_without_denying(drive: Any) -> None:
    """shadow_mode: true lets requests over the limit through and marks the decision."""
    d = drive("""
        envoy:
          - domain: api
            descriptors:
              - {key: remote_address, shadow_mode: true, rate_limit: {unit: minute, requests_per_unit: 1}}
    """)
    outs = [d.enforcer.check(config_request()) for _ in range(3)]
    assert [o.action for o in outs] == ["allow"] * 3
    assert outs[-1].shadow is not None and not outs[-1].shadow.allowed


def test_actions_header_value_match_skip_if_absent_and_remote_address(drive: Any) -> None:
    """header_value_match builds an entry only when headers match (or not, with expect_match: false)."""
    d = drive("""
        envoy:
          - domain: api
            match: {paths: ["/api/**"]}
            descriptors:
              - key: header_match
                value: writes
                descriptors:
                  - {key: remote_address, rate_limit: {unit: minute, requests_per_unit: 2}}
              - key: header_match
                value: not-admin
                rate_limit: {unit: minute, requests_per_unit: 3}
              - key: tenant
                rate_limit: {unit: minute, requests_per_unit: 50}
            rate_limits:
              - actions:
                  - header_value_match:
                      descriptor_value: writes
                      headers: [{name: ":method", string_match: {exact: post, ignore_case: true}}]
                  - remote_address: {}
              - actions:
                  - header_value_match:
                      descriptor_value: not-admin
                      expect_match: false
                      headers: [{name: x-role, exact_match: admin}]
                  - request_headers: {header_name: x-tenant, descriptor_key: tenant, skip_if_absent: true}
    """)
    assert d.allowed(5, path="/api/a", method="POST", x_role="admin") == 2
    assert d.allowed(5, path="/api/a", method="POST", x_role="admin", client="10.1.1.1") == 2
    assert d.allowed(5, path="/api/b", method="GET") == 3  # not admin, no tenant: the entry is skipped
    assert d.allowed(5, path="/api/b", method="GET", x_role="admin") == 5
    assert d.allowed(5, path="/elsewhere", method="POST") == 5


def test_blocked_requests_count_against_no_other_descriptor(drive: Any) -> None:
    """Unlike the service, a request denied by one descriptor is not counted by the others."""
    d = drive("""
        envoy:
          - domain: api
            descriptors:
              - {key: user, rate_limit: {unit: minute, requests_per_unit: 1}}
              - {key: remote_address, rate_limit: {unit: minute, requests_per_unit: 3}}
    """)
    assert d.allowed(5, user="ann") == 1  # 4 denied by user: remote_address saw only 1
    assert d.allowed(5, user="bob") == 1
    assert d.allowed(1, user="cat") == 1  # remote_address is at 3 of 3 only now
    assert d.allowed(1, user="dan") == 0


def test_headers_name_the_descriptor_or_its_limit_name(drive: Any) -> None:
    """RateLimit-Policy names a named limit by its name, others by their path in the tree."""
    d = drive("""
        envoy:
          - domain: api
            descriptors:
              - {key: user, rate_limit: {name: per-user, unit: minute, requests_per_unit: 5}}
              - {key: remote_address, rate_limit: {unit: hour, requests_per_unit: 50}}
    """)
    out = d.enforcer.check(config_request(user="ann"))
    policy = dict(out.headers)["RateLimit-Policy"]
    assert '"per-user";q=5;w=60' in policy and '"api.remote_address";q=50;w=3600' in policy


def test_entries_of_one_domain_share_its_counters(drive: Any) -> None:
    """Two envoy entries of one domain (one per route) share its counters, as the service does."""
    d = drive("""
        envoy:
          - name: api-reads
            domain: shop
            match: {methods: [GET]}
            descriptors: [{key: user, rate_limit: {unit: minute, requests_per_unit: 3}}]
            rate_limits: [{actions: [{request_headers: {header_name: x-user, descriptor_key: user}}]}]
          - name: api-writes
            domain: shop
            match: {methods: [POST]}
            descriptors: [{key: user, rate_limit: {unit: minute, requests_per_unit: 3}}]
            rate_limits: [{actions: [{request_headers: {header_name: x-user, descriptor_key: user}}]}]
    """)
    assert d.allowed(2, method="GET", x_user="ann") == 2
    assert d.allowed(3, method="POST", x_user="ann") == 1


def test_config_rules_on_redis_cluster(tmp_path: Path, redis_cluster: Any) -> None:
    """Tiers and Envoy descriptors count correctly on a Redis Cluster (keys spread over slots)."""
    d = Driver(
        write(
            tmp_path,
            """
            identity: {claim_headers: {sub: x-user-id, plan: x-plan}}
            rules:
              - name: api
                key: claim:sub
                tiers: {by: claim:plan, limits: {pro: 4/minute}, default: 2/minute}
            envoy:
              - domain: edge
                descriptors: [{key: remote_address, rate_limit: {unit: minute, requests_per_unit: 30}}]
            """,
        ),
        redis_cluster.url,
    )
    try:
        for i in range(6):
            assert d.allowed(
                6, x_user_id=f"u{i}", x_plan="pro" if i % 2 else "free", client=f"10.0.0.{i}"
            ) == (4 if i % 2 else 2)
        assert d.allowed(40, x_user_id="solo", x_plan="pro", client="10.9.9.9") == 4
    finally:
        d.close()


def test_path_pseudo_header_carries_the_query_string_as_envoys() -> None:
    """``:path`` is the path with its query string, as Envoy's (ASGI, WSGI, Django); gRPC has none.

    A gateway and an app charging one ``PATH`` domain must build the same descriptor value,
    or ``/login?next=/`` would count on a counter of its own in the one and not the other.
    """
    from ratelimit.matchers import header_value
    from ratelimit.request import Headers, RequestInfo

    def info(native: Any) -> RequestInfo:
        return RequestInfo("http", "GET", "/login", Headers([]), native=native)

    class DjangoRequest:
        def __init__(self) -> None:
            self.META = {"QUERY_STRING": "next=%2F"}

    assert header_value(info({"type": "http", "query_string": b"next=%2F"}), ":path") == "/login?next=%2F"
    assert header_value(info({"QUERY_STRING": "next=%2F"}), ":path") == "/login?next=%2F"
    assert header_value(info(DjangoRequest()), ":path") == "/login?next=%2F"
    assert header_value(info({"type": "http", "query_string": b""}), ":path") == "/login"
    assert header_value(info(object()), ":path") == "/login"  # a gRPC context: no query
