"""Config files: every feature decides requests as documented, on memory and on real Redis."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.config_helpers import Driver, write

from ratelimit import Limiter
from ratelimit.config import load_config, parse_config


@pytest.fixture(params=["memory", "redis"])
def storage(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for the memory backend (with a fake clock), else a real Redis URL."""
    if request.param == "memory":
        yield None
    else:
        yield request.getfixturevalue("redis_url")


@pytest.fixture
def drive(tmp_path: Path, storage: str | None) -> Iterator[Any]:
    """Build a Driver from config text on the parametrized backend."""
    made: list[Driver] = []

    def build(text: str, **options: Any) -> Driver:
        d = Driver(write(tmp_path, text), storage, **options)
        made.append(d)
        return d

    yield build
    for d in made:
        d.close()


def test_tiers_by_claim_header_with_default(drive: Any) -> None:
    """Each plan gets its tier's limit, others the default; unlimited is never counted."""
    d = drive("""
        identity: {claim_headers: {sub: x-user-id, plan: x-user-plan}}
        rules:
          - name: api
            key: claim:sub
            tiers:
              by: claim:plan
              limits: {free: 3/minute, pro: 6/minute, internal: unlimited}
              default: 2/minute
    """)
    assert d.allowed(10, x_user_id="a", x_user_plan="free") == 3
    assert d.allowed(10, x_user_id="b", x_user_plan="pro") == 6
    assert d.allowed(10, x_user_id="c", x_user_plan="gold") == 2
    assert d.allowed(10, x_user_id="d") == 2
    assert d.allowed(50, x_user_id="e", x_user_plan="internal") == 50


def test_tiers_share_counters_on_upgrade(drive: Any) -> None:
    """A user who upgrades keeps what they used: the pro limit applies to the same counter."""
    d = drive("""
        identity: {claim_headers: {sub: x-user-id, plan: x-user-plan}}
        rules:
          - name: api
            key: claim:sub
            tiers: {by: claim:plan, limits: {free: 3/minute, pro: 5/minute}, default: 1/minute}
    """)
    assert d.allowed(3, x_user_id="a", x_user_plan="free") == 3
    assert d.allowed(5, x_user_id="a", x_user_plan="pro") == 2


def test_overrides_win_over_tiers_and_limits(drive: Any) -> None:
    """A named identity gets its override, including unlimited; others the rule's limit."""
    d = drive("""
        rules:
          - name: per-key
            key: header:x-client
            limits: 2/minute
            overrides: {heavy: 7/minute, trusted: unlimited}
    """)
    assert d.allowed(10, x_client="someone") == 2
    assert d.allowed(10, x_client="heavy") == 7
    assert d.allowed(30, x_client="trusted") == 30


def test_api_key_overrides_are_written_as_the_key(drive: Any) -> None:
    """Overrides of an api_key rule name the API key itself; it is hashed on load and never stored."""
    d = drive("""
        rules:
          - name: keys
            key: api_key:x-api-key
            limits: 1/minute
            overrides: {sk-live-123: 4/minute}
    """)
    rule = d.limiter.ruleset.rules[0]
    assert "sk-live-123" not in rule.overrides
    assert "key-" + hashlib.sha256(b"sk-live-123").hexdigest()[:32] in rule.overrides
    assert d.allowed(10, x_api_key="sk-live-123") == 4
    assert d.allowed(10, x_api_key="other") == 1


def test_several_limits_all_apply(drive: Any) -> None:
    """10/second and a daily cap: the tighter one binds, and headers describe both."""
    d = drive("""
        rules:
          - name: burst-and-day
            key: ip
            limits: [4/second, 6/day]
    """)
    out = d.enforcer.check(_req())
    assert d.allowed(10) == 3
    policy = dict(out.headers)["RateLimit-Policy"]
    assert '"burst-and-day-1s";q=4;w=1' in policy and '"burst-and-day-86400s";q=6;w=86400' in policy


def _req(**kw: Any) -> Any:
    from support.config_helpers import request

    return request(**kw)


def test_rule_shadow_counts_but_never_denies(drive: Any) -> None:
    """A shadow rule lets everything through but still reports its count in headers."""
    d = drive("""
        rules:
          - name: watch
            key: ip
            limits: 2/minute
            shadow: true
    """)
    outs = [d.enforcer.check(_req()) for _ in range(4)]
    assert [o.action for o in outs] == ["allow"] * 4
    assert outs[-1].shadow is not None and not outs[-1].shadow.allowed
    assert dict(outs[0].headers)["RateLimit"].startswith('"watch";r=1;')
    assert "Retry-After" not in dict(outs[-1].headers)


def test_global_shadow_applies_to_every_rule(drive: Any) -> None:
    """Top-level shadow: true turns every rule (native and Envoy) into shadow rules."""
    d = drive("""
        shadow: true
        rules:
          - {name: a, key: ip, limits: 1/minute}
        envoy:
          - domain: edge
            descriptors: [{key: remote_address, rate_limit: {unit: minute, requests_per_unit: 1}}]
    """)
    assert d.allowed(5) == 5
    native, envoy = d.limiter.ruleset.rules
    assert native.shadow and envoy.shadow


def test_match_paths_methods_hosts_headers(drive: Any) -> None:
    """A rule applies only where all its conditions hold; other requests are skipped."""
    d = drive("""
        rules:
          - name: narrow
            match:
              paths: ["/api/**"]
              methods: [POST]
              hosts: ["*.example.com"]
              headers: {x-tenant: acme, x-debug: {present: false}, x-ver: {regex: "v[23]"}}
            limits: 1/minute
    """)
    ok = {"path": "/api/x", "method": "POST", "x_tenant": "acme", "x_ver": "v2"}
    assert d.actions(2, **ok) == ["allow", "deny"]
    assert d.actions(1, **{**ok, "path": "/other"}) == ["skip"]
    assert d.actions(1, **{**ok, "method": "GET"}) == ["skip"]
    assert d.actions(1, **{**ok, "host": "evil.test"}) == ["skip"]
    assert d.actions(1, **{**ok, "x_tenant": "other"}) == ["skip"]
    assert d.actions(1, **{**ok, "x_ver": "v1"}) == ["skip"]
    assert d.actions(1, **{**ok, "x_debug": "1"}) == ["skip"]
    assert d.actions(1, **{**ok, "host": "API.Example.com:8443"}) == ["deny"]


def test_grpc_match_names_service_and_method(drive: Any) -> None:
    """grpc: {service, method} matches the full method path; * is any method."""
    d = drive("""
        rules:
          - {name: cart, match: {grpc: {service: shop.Cart}}, limits: 1/minute}
          - {name: pay, match: {grpc: [{service: shop.Pay, method: Charge}]}, limits: 2/minute}
    """)
    assert d.actions(2, path="/shop.Cart/GetCart", protocol="grpc") == ["allow", "deny"]
    assert d.actions(3, path="/shop.Pay/Charge", protocol="grpc") == ["allow", "allow", "deny"]
    assert d.actions(1, path="/shop.Pay/Refund", protocol="grpc") == ["skip"]


def test_keys_ip_behind_proxies_header_composite_and_path(drive: Any) -> None:
    """ip trusts exactly identity.trusted_proxies; composite keys count each combination apart."""
    d = drive("""
        identity: {trusted_proxies: 1}
        rules:
          - {name: by-ip, match: {path: /ip}, key: ip, limits: 1/minute}
          - {name: by-pair, match: {path: /pair}, key: [header:x-tenant, ip], limits: 1/minute}
          - {name: by-path, match: {path: "/p/*"}, key: path, limits: 1/minute}
    """)
    # The client-written left entry is ignored: both requests come from 1.1.1.1.
    assert d.actions(1, path="/ip", x_forwarded_for="6.6.6.6, 1.1.1.1") == ["allow"]
    assert d.actions(1, path="/ip", x_forwarded_for="7.7.7.7, 1.1.1.1") == ["deny"]
    assert d.actions(1, path="/pair", x_tenant="a") == ["allow"]
    assert d.actions(1, path="/pair", x_tenant="b") == ["allow"]
    assert d.actions(1, path="/pair", x_tenant="a") == ["deny"]
    assert d.actions(1, path="/p/1") == ["allow"]
    assert d.actions(1, path="/p/2") == ["allow"]
    assert d.actions(1, path="/p/1") == ["deny"]


def test_cost_charges_several_hits(drive: Any) -> None:
    """cost: 3 uses three hits of the limit per request."""
    d = drive("rules: [{name: heavy, key: ip, limits: 10/minute, cost: 3}]\n")
    assert d.allowed(5) == 3


def test_replaces_drops_the_named_rule(drive: Any) -> None:
    """A rule with replaces takes the place of the named rule for the requests it matches."""
    d = drive("""
        rules:
          - {name: general, key: ip, limits: 1/minute}
          - {name: health, match: {path: /healthz}, limits: unlimited, replaces: [general]}
          - {name: uploads, match: {path: /upload}, key: ip, limits: 3/minute, replaces: [general]}
    """)
    assert d.allowed(20, path="/healthz") == 20
    assert d.allowed(5, path="/upload") == 3
    assert d.actions(2, path="/other") == ["allow", "deny"]


def test_missing_identity_reject_per_rule(drive: Any) -> None:
    """missing: reject answers 401 when the rule's key finds nothing; the global policy counts per ip."""
    d = drive("""
        identity: {claim_headers: {sub: x-user-id}, missing: ip}
        rules:
          - {name: strict, match: {path: /s}, key: claim:sub, limits: 5/minute, missing: reject}
          - {name: lenient, match: {path: /l}, key: claim:sub, limits: 1/minute}
    """)
    assert d.actions(1, path="/s") == ["reject"]
    assert d.actions(1, path="/s", x_user_id="u") == ["allow"]
    assert d.actions(2, path="/l") == ["allow", "deny"]
    assert d.actions(1, path="/l", client="10.9.9.9") == ["allow"]


def test_headers_settings_turn_headers_off(drive: Any) -> None:
    """headers.enabled: false leaves allowed responses bare; denials still carry them."""
    d = drive("""
        headers: {enabled: false, legacy: false}
        rules: [{name: r, key: ip, limits: 1/minute}]
    """)
    first, second = (d.enforcer.check(_req()) for _ in range(2))
    assert first.headers == []
    names = [h[0] for h in second.headers]
    assert "RateLimit" in names and "Retry-After" in names and "X-RateLimit-Limit" not in names


def test_jwt_verified_claims(tmp_path: Path, drive: Any) -> None:
    """identity.jwt verifies bearer tokens; a forged token counts as no identity."""
    jwt = pytest.importorskip("jwt")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "key.pem").write_bytes(pem)
    d = drive(f"""
        identity:
          missing: reject
          jwt: {{key_file: {tmp_path / "key.pem"}, issuer: https://idp, algorithms: [RS256]}}
        rules:
          - name: api
            key: claim:sub
            tiers: {{by: claim:plan, limits: {{pro: 3/minute}}, default: 1/minute}}
    """)
    import time

    def token(sub: str, plan: str, signer: Any = key) -> str:
        claims = {"sub": sub, "plan": plan, "iss": "https://idp", "exp": int(time.time()) + 600}
        return "Bearer " + jwt.encode(claims, signer, algorithm="RS256")

    assert d.allowed(5, authorization=token("ann", "pro")) == 3
    assert d.allowed(5, authorization=token("bob", "free")) == 1
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert d.actions(1, authorization=token("ann", "pro", other)) == ["reject"]


def test_env_expansion_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """${VAR} and ${VAR:-default} read the environment when the file is loaded."""
    monkeypatch.setenv("RL_PREFIX", "from-env")
    config = parse_config("backend: {prefix: '${RL_PREFIX}', storage: '${RL_UNSET:-memory://}'}\n")
    assert config.limiter_options == {"prefix": "from-env", "storage": "memory://"}


def test_backend_section_builds_the_limiter(tmp_path: Path, redis_url: str) -> None:
    """backend: storage, prefix, timeout and failure_mode reach the Limiter."""
    path = write(
        tmp_path,
        f"""
        backend: {{storage: "{redis_url}", prefix: cfg-test, timeout: 80ms, failure_mode: closed}}
        rules: [{{name: r, limits: 1/minute}}]
    """,
    )
    with Limiter.from_config(path, reload=False) as limiter:
        assert limiter.failure_mode == "closed"
        assert limiter.keyspace.prefix == "cfg-test"
        assert "redis" in repr(limiter.backend).lower()


def test_example_in_docs_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    """The complete example in docs/configuration.md loads."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    block = text.split("## A complete example", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    monkeypatch.delenv("REDIS_URL", raising=False)
    config = parse_config(block)
    assert [r.name for r in config.ruleset.rules] == ["api-per-user", "login", "cart-grpc", "search-shadow"]


def test_load_config_reports_unreadable_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError naming it, not an OSError."""
    from ratelimit.config import ConfigError

    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_jwt_require_and_leeway_reach_the_verifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """identity.jwt's require is enforced: a token without a required claim counts as no identity."""
    jwt = pytest.importorskip("jwt")
    import time

    secret = "s" * 32
    monkeypatch.setenv("RL_TEST_SECRET", secret)
    path = write(
        tmp_path,
        """
        identity:
          missing: reject
          jwt:
            {key_env: RL_TEST_SECRET, algorithms: [HS256], require: [exp, tenant], leeway: 2s, jwks_ttl: 60s}
        rules: [{name: r, key: claim:sub, limits: 5/minute}]
    """,
    )
    d = Driver(path, None)
    try:
        exp = int(time.time()) + 60
        with_tenant = jwt.encode({"sub": "a", "tenant": "t", "exp": exp}, secret, algorithm="HS256")
        without = jwt.encode({"sub": "a", "exp": exp}, secret, algorithm="HS256")
        assert d.actions(1, authorization=f"Bearer {with_tenant}") == ["allow"]
        assert d.actions(1, authorization=f"Bearer {without}") == ["reject"]
    finally:
        d.close()


def test_numeric_identities_and_tiers_are_data_keys(drive: Any) -> None:
    """Overrides and tiers keyed by numbers in YAML (a user id 42, plan 2) match their string identity."""
    d = drive("""
        rules:
          - name: ids
            key: header:x-user
            tiers: {by: header:x-plan, limits: {2: 3/minute}, default: 1/minute}
            overrides: {42: 5/minute}
    """)
    assert d.allowed(10, x_user="42") == 5
    assert d.allowed(10, x_user="7", x_plan="2") == 3
