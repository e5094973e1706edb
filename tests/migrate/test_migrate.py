"""``ratelimit migrate``: every corpus case loads and decides requests as Envoy did."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.config_helpers import Driver, request

from ratelimit.config import load_config
from ratelimit.migrate import Migration, cli, migrate

CORPUS = Path(__file__).parent / "migration"
CASES = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())


def migrated(case: str) -> Migration:
    """The migration of every YAML file of corpus case ``case``."""
    return migrate(sorted((CORPUS / case).glob("*.yaml")))


def messages(result: Migration, severity: str | None = None) -> str:
    """Every finding of ``result`` (of one severity), one per line."""
    return "\n".join(str(f) for f in result.findings if severity in (None, f.severity))


@pytest.fixture(autouse=True)
def redis_url_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generated backend.storage reads REDIS_URL; storage= overrides it where it matters."""
    monkeypatch.setenv("REDIS_URL", "memory://")


@pytest.fixture
def drive(tmp_path: Path) -> Iterator[Any]:
    """Build a Driver (tests/support/config_helpers.py) from a corpus case's migrated config."""
    made: list[Driver] = []

    def build(case: str, storage: str | None = None) -> Driver:
        path = tmp_path / f"{case}.yaml"
        path.write_text(migrated(case).text)
        made.append(Driver(path, storage))
        return made[-1]

    yield build
    for d in made:
        d.close()


def write_case(tmp_path: Path, text: str) -> Path:
    """Write manifests given inline to a file."""
    path = tmp_path / "input.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# -- every case ------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_every_case_loads_with_the_config_loader(case: str, tmp_path: Path) -> None:
    """The generated file passes the project's own validation."""
    path = tmp_path / "limits.yaml"
    path.write_text(migrated(case).text)
    assert load_config(path).ruleset.rules


@pytest.mark.parametrize("case", CASES)
def test_every_case_is_deterministic(case: str) -> None:
    """Migrating the same inputs twice gives the same text."""
    assert migrated(case).text == migrated(case).text


@pytest.mark.parametrize("case", CASES)
def test_header_comment_lists_every_finding(case: str) -> None:
    """Each finding appears in the header comment, and the config below it is the document."""
    import yaml

    result = migrated(case)
    comment = " ".join(line.lstrip("#").strip() for line in result.text.splitlines() if line.startswith("#"))
    for finding in result.findings:
        assert " ".join(str(finding).split()) in " ".join(comment.split())
    assert yaml.safe_load(result.text) == result.config


# -- global limits, by behaviour ---------------------------------------------------------


def test_global_per_path_limits_each_listed_path(drive: Any) -> None:
    """Listed paths get their own limit; other paths share the key-only fallback per path."""
    d = drive("global-per-path")
    assert d.allowed(8, path="/api/orders") == 5
    assert d.allowed(12, path="/api/search") == 10
    assert d.allowed(3, path="/api/orders") == 0
    assert d.allowed(5, path="/api/carts") == 5


def test_global_per_path_keeps_the_virtual_host(drive: Any) -> None:
    """The EnvoyFilter patched the api.example.com virtual host: other hosts are not limited."""
    d = drive("global-per-path")
    d.allowed(5, path="/api/orders")
    assert d.actions(3, path="/api/orders", host="www.example.com") == ["skip"] * 3


def test_global_per_path_failure_mode_and_timeout(tmp_path: Path) -> None:
    """failure_mode_deny false is open; the filter's 25ms timeout becomes backend.timeout."""
    path = tmp_path / "limits.yaml"
    path.write_text(migrated("global-per-path").text)
    assert load_config(path).limiter_options == {
        "storage": "memory://",
        "failure_mode": "open",
        "timeout": 0.025,
    }


def test_per_user_counts_each_user_apart(drive: Any) -> None:
    """The 11th request of alice within 10/minute is denied while bob is still allowed."""
    d = drive("per-user")
    assert d.actions(11, x_user_id="alice") == ["allow"] * 10 + ["deny"]
    assert d.actions(1, x_user_id="bob") == ["allow"]
    assert d.actions(1) == ["skip"]  # no x-user-id: no descriptor, as in Envoy
    assert migrated("per-user").config["identity"] == {"claim_headers": {"sub": "x-user-id"}}


def test_tiers_by_plan_with_wildcard_and_fallback(drive: Any) -> None:
    """free 3, pro 10, trial-* 2, any other plan 1; every user has a counter of their own."""
    d = drive("tiers")
    assert d.allowed(5, x_user_plan="free", x_user_id="a") == 3
    assert d.allowed(12, x_user_plan="pro", x_user_id="b") == 10
    assert d.allowed(5, x_user_plan="trial-30d", x_user_id="c") == 2
    assert d.allowed(5, x_user_plan="enterprise", x_user_id="d") == 1
    assert d.allowed(5, x_user_plan="free", x_user_id="e") == 3


def test_nested_user_then_path(drive: Any) -> None:
    """The export path has 2/minute per user inside the user's 10/minute; denials count nowhere."""
    d = drive("nested")
    assert d.allowed(3, path="/reports/export", x_user_id="alice") == 2
    assert d.allowed(10, path="/reports/list", x_user_id="alice") == 8
    assert d.allowed(3, path="/reports/export", x_user_id="bob") == 2


def test_replaces_gives_partners_their_own_limit(drive: Any) -> None:
    """Per client IP 5/minute, unless the per-partner limit (50/minute) replaces it."""
    d = drive("replaces")
    assert d.allowed(8, client="10.0.0.1") == 5
    assert d.allowed(20, client="10.0.0.2", x_partner="acme") == 20


def test_shadow_mode_reports_but_never_denies(drive: Any) -> None:
    """The shadow tenant limit (3/minute) denies nothing; the enforced 8/minute does."""
    d = drive("shadow-mode")
    outcomes = [d.enforcer.check(request("/search", x_tenant="t1")) for _ in range(9)]
    assert [o.action for o in outcomes] == ["allow"] * 8 + ["deny"]
    assert outcomes[3].shadow is not None and not outcomes[3].shadow.allowed


def test_multi_document_input_with_a_list(drive: Any) -> None:
    """One file with many documents and a kind: List: 3 POSTs, 20 other requests per tenant."""
    d = drive("multi-document")
    assert d.allowed(5, method="POST", x_tenant_id="acme") == 3
    assert d.allowed(25, method="GET", x_tenant_id="acme") == 20
    assert d.allowed(5, method="POST", x_tenant_id="globex") == 3
    found = messages(migrated("multi-document"))
    assert "Namespace billing: ignored" in found and "data.README: not a service config" in found


def test_untranslatable_actions_are_reported_by_name(drive: Any) -> None:
    """destination_cluster and metadata entries are dropped, by name; remote_address still limits."""
    result = migrated("untranslatable")
    untranslated = messages(result, "untranslated")
    for name in ("action destination_cluster", "action metadata", "envoy.filters.network.local_ratelimit"):
        assert name in untranslated
    assert "rate_limit.quota" in untranslated
    assert [e["rate_limits"] for e in result.config["envoy"]] == [[{"actions": [{"remote_address": {}}]}]]
    d = drive("untranslatable")
    assert d.allowed(6, client="10.0.0.1", host="www.example.com") == 4
    assert d.allowed(3, client="10.1.2.3", host="www.example.com") == 1  # its exact descriptor: 1/hour


def test_legacy_v2_filter_names_and_typed_struct(drive: Any) -> None:
    """envoy.rate_limit with a v2 config and a TypedStruct local limit are both translated."""
    result = migrated("legacy-v2")
    assert result.config["backend"]["failure_mode"] == "closed"
    assert result.config["rules"] == [{"name": "legacy-local-ratelimit", "key": "global", "limits": "30/3s"}]
    d = drive("legacy-v2")
    host = "legacy.legacy.svc.cluster.local"
    assert d.allowed(3, path="/admin/users", host=host) == 2
    assert d.allowed(40, path="/public", host=host) == 28  # the local 30/3s counted the 2 admin requests


# -- local limits, by behaviour ----------------------------------------------------------


def test_local_bucket_per_route(drive: Any) -> None:
    """checkout: 5/minute for every path under it, shared; other routes are not limited by it."""
    d = drive("local-per-route")
    assert d.allowed(4, path="/api/checkout/pay", method="POST") == 4
    assert d.actions(2, path="/api/checkout/cart") == ["allow", "deny"]
    assert d.actions(2, path="/api/orders") == ["skip", "skip"]
    d.clock.advance(120)
    assert d.actions(1, path="/api/checkout/pay") == ["allow"]


def test_local_descriptor_counts_per_api_key(drive: Any) -> None:
    """search: 4 per 2 s per API key, inside 20 per 10 s for the route; POST is another route."""
    d = drive("local-per-route")
    assert d.allowed(6, path="/api/search", x_api_key="k1") == 4
    assert d.allowed(6, path="/api/search", x_api_key="k2") == 4
    assert d.allowed(20, path="/api/search") == 12
    assert d.actions(1, path="/api/search", method="POST") == ["skip"]
    rule = migrated("local-per-route").config["rules"][2]
    assert rule["key"] == "api_key:x-api-key" and rule["limits"] == "4/2s"


def test_local_route_not_in_inputs_is_reported() -> None:
    """A route name no VirtualService defines is named in an untranslated finding, not guessed."""
    result = migrated("local-per-route")
    assert "route 'legacy-v1' is not in the inputs" in messages(result, "untranslated")
    assert all("legacy" not in r["name"] for r in result.config["rules"])


def test_filter_enforced_zero_is_shadow(drive: Any) -> None:
    """Enforced 0%: the listener bucket only counts; enabled 0%: the admin rule never ran."""
    result = migrated("enforced-zero")
    rules = {r["name"]: r for r in result.config["rules"]}
    assert rules["catalog-local-ratelimit"]["shadow"] is True
    assert rules["catalog-local-ratelimit-admin"]["shadow"] is True
    assert "0% enabled" in messages(result, "approximated") and "0% enforced" in messages(result, "note")
    d = drive("enforced-zero")
    assert d.actions(10, path="/products") == ["allow"] * 10
    assert d.actions(3, path="/admin/reindex") == ["allow"] * 3


def test_route_rules_replace_the_listener_rule(drive: Any) -> None:
    """The exports route uses its own bucket (1 per 10 s) instead of the listener's, as in Envoy."""
    d = drive("enforced-zero")
    assert d.actions(2, path="/exports/42") == ["allow", "deny"]
    d.clock.advance(20)
    assert d.actions(1, path="/exports/42") == ["allow"]
    assert d.actions(3, path="/exports/csv") == ["allow"] * 3  # route exports.csv: not targeted


# -- the same on real Redis ---------------------------------------------------------------


def test_per_user_on_real_redis(drive: Any, redis_url: str) -> None:
    """Alice's 11th request is denied on Redis too, and bob still passes."""
    d = drive("per-user", redis_url)
    assert d.actions(11, x_user_id="alice") == ["allow"] * 10 + ["deny"]
    assert d.actions(1, x_user_id="bob") == ["allow"]


def test_global_per_path_on_real_redis(drive: Any, redis_url: str) -> None:
    """Per-path limits decide alike on Redis."""
    d = drive("global-per-path", redis_url)
    assert d.allowed(8, path="/api/orders") == 5
    assert d.allowed(3, path="/api/search") == 3


# -- token buckets and percentages ------------------------------------------------------


@pytest.mark.parametrize(
    ("bucket", "rate"),
    [
        ((10, 1, 6.0), "10/minute"),
        ((5, 5, 60.0), "5/minute"),
        ((20, 2, 1.0), "20/10s"),
        ((100, 1000, 1.0), "100/second"),  # a fill never overfills: 100 per second at most
        ((10, 3, 1.0), "10/3333ms"),
        ((1, 1, 3600.0), "1/hour"),
    ],
)
def test_token_bucket_rate(bucket: tuple[int, int, float], rate: str) -> None:
    """The burst is the limit; the window makes the sustained rate equal the refill rate."""
    from ratelimit.migrate._bucket import token_bucket_rate

    assert token_bucket_rate(*bucket) == rate


@given(
    max_tokens=st.integers(1, 10**6),
    tokens_per_fill=st.integers(1, 10**6),
    fill_ms=st.integers(50, 86_400_000),
)
def test_token_bucket_rate_keeps_burst_and_sustained_rate(
    max_tokens: int, tokens_per_fill: int, fill_ms: int
) -> None:
    """For any valid bucket: limit == max_tokens, limit/window == refill rate (to the millisecond)."""
    from ratelimit import Rate
    from ratelimit.migrate._bucket import token_bucket_rate

    try:
        rate = Rate.parse(token_bucket_rate(max_tokens, tokens_per_fill, fill_ms / 1000))
    except ValueError:  # windows above ten years are refused, and say so
        assert fill_ms * max_tokens / min(tokens_per_fill, max_tokens) > 10 * 366 * 86400 * 1000
        return
    refill = min(tokens_per_fill, max_tokens) / (fill_ms / 1000)
    assert rate.limit == max_tokens  # windows are whole ms: off by half a ms at most
    assert rate.window == pytest.approx(max_tokens / refill, abs=0.0005 + 1e-9)


@pytest.mark.parametrize(("bucket"), [(0, 1, 1.0), (1, 0, 1.0), (1, 1, 0.0), (True, 1, 1.0), (1, 1, -1.0)])
def test_token_bucket_rate_refuses_invalid_buckets(bucket: tuple[Any, Any, float]) -> None:
    """Zero tokens, zero refills or no interval are not buckets."""
    from ratelimit.migrate._bucket import token_bucket_rate

    with pytest.raises(ValueError):
        token_bucket_rate(*bucket)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, 0.0),
        ({"default_value": {"numerator": 100}}, 100.0),
        ({"default_value": {"numerator": 5000, "denominator": "TEN_THOUSAND"}}, 50.0),
        ({"default_value": {"numerator": 10000, "denominator": "MILLION"}}, 1.0),
        ({"runtime_key": "k"}, 0.0),
    ],
)
def test_fractional_percent(spec: Any, expected: float) -> None:
    """Envoy's RuntimeFractionalPercent, with absent meaning 0%."""
    from ratelimit.migrate._manifest import percent

    assert percent(spec)[0] == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("0.5s", 0.5), ("250ms", 0.25), ({"seconds": 2, "nanos": 500000000}, 2.5), (3, 3.0)],
)
def test_durations(text: Any, seconds: float) -> None:
    """Protobuf Duration spellings found in EnvoyFilters."""
    from ratelimit.migrate._manifest import duration

    assert duration(text) == seconds


def test_partial_percentages_are_approximated(tmp_path: Path) -> None:
    """50% enabled applies to every request; the runtime key is reported too."""
    path = write_case(
        tmp_path,
        LOCAL_FILTER.format(
            extra="""
                filter_enabled: {runtime_key: rl_on, default_value: {numerator: 50}}
                filter_enforced: {default_value: {numerator: 100}}"""
        ),
    )
    result = migrate([path])
    assert "50% enabled" in messages(result, "approximated")
    assert "runtime key rl_on" in messages(result, "note")
    assert "shadow" not in result.config["rules"][0]


# -- inline cases -----------------------------------------------------------------------

LOCAL_FILTER = """
    apiVersion: networking.istio.io/v1alpha3
    kind: EnvoyFilter
    metadata: {{name: api-local, namespace: api}}
    spec:
      workloadSelector: {{labels: {{app: api}}}}
      configPatches:
        - applyTo: HTTP_FILTER
          match: {{context: SIDECAR_INBOUND}}
          patch:
            operation: INSERT_BEFORE
            value:
              name: envoy.filters.http.local_ratelimit
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                stat_prefix: http_local_rate_limiter
                token_bucket: {{max_tokens: 50, tokens_per_fill: 50, fill_interval: 60s}}{extra}
"""


JWT = """
    ---
    apiVersion: security.istio.io/v1
    kind: RequestAuthentication
    metadata: {name: jwt, namespace: api}
    spec:
      jwtRules:
        - issuer: https://auth.example.com
          outputClaimToHeaders: [{header: x-user-id, claim: sub}]
"""


def test_local_descriptors_by_claim_header_and_path(tmp_path: Path) -> None:
    """A descriptor keyed by a claim header counts per claim; a header_value_match becomes a match."""
    path = write_case(
        tmp_path,
        LOCAL_FILTER.format(
            extra="""
                filter_enabled: {default_value: {numerator: 100}}
                filter_enforced: {default_value: {numerator: 100}}
                always_consume_default_token_bucket: false
                rate_limits:
                  - actions: [{request_headers: {header_name: x-user-id, descriptor_key: user}}]
                  - actions:
                      - header_value_match:
                          descriptor_value: exports
                          headers: [{name: ":path", string_match: {prefix: /exports/}}]
                descriptors:
                  - entries: [{key: user}]
                    token_bucket: {max_tokens: 3, fill_interval: 20s}
                  - entries: [{key: header_match, value: exports}]
                    token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s}"""
        )
        + JWT,
    )
    rules = {r["name"]: r for r in migrate([path]).config["rules"]}
    assert rules["api-local-user"]["key"] == "claim:sub"
    assert rules["api-local-user"]["replaces"] == ["api-local"]
    assert rules["api-local-exports"]["match"] == {"paths": ["/exports/**"]}
    out = tmp_path / "limits.yaml"
    assert cli([str(path)], str(out)) == 0
    d = Driver(out, None)
    try:
        assert d.allowed(5, path="/items", x_user_id="alice") == 3
        assert d.allowed(1, path="/items", x_user_id="bob") == 1
        assert d.allowed(3, path="/exports/csv") == 2
        assert d.allowed(10, path="/items") == 10  # no descriptor matches: the default bucket only
    finally:
        d.close()


def test_outbound_context_and_missing_pieces_are_reported(tmp_path: Path) -> None:
    """SIDECAR_OUTBOUND, a domain without its ConfigMap, and a rate_limits without a filter."""
    path = write_case(
        tmp_path,
        """
        apiVersion: networking.istio.io/v1alpha3
        kind: EnvoyFilter
        metadata: {name: client-side, namespace: web}
        spec:
          configPatches:
            - applyTo: HTTP_FILTER
              match: {context: SIDECAR_OUTBOUND}
              patch:
                operation: INSERT_BEFORE
                value:
                  name: envoy.filters.http.ratelimit
                  typed_config:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
                    domain: nowhere
            - applyTo: VIRTUAL_HOST
              match: {context: SIDECAR_OUTBOUND, routeConfiguration: {vhost: {name: "api.example.com:80"}}}
              patch:
                operation: MERGE
                value:
                  rate_limits:
                    - actions: [{generic_key: {descriptor_value: all}}]
                      stage: 1
                    - actions: [{generic_key: {descriptor_value: all}}]
    """,
    )
    result = migrate([path])
    assert "SIDECAR_OUTBOUND" in messages(result, "approximated")
    untranslated = messages(result, "untranslated")
    assert "no rate limit filter (stage 1)" in untranslated
    assert "no service config for domain 'nowhere'" in untranslated
    assert "envoy" not in result.config


def test_duplicate_domains_and_descriptors_are_reported(tmp_path: Path) -> None:
    """The service refuses duplicates: the first config and descriptor are kept, the rest named."""
    path = write_case(
        tmp_path,
        """
        domain: api
        descriptors:
          - {key: user, rate_limit: {unit: minute, requests_per_unit: 5}}
          - {key: user, rate_limit: {unit: minute, requests_per_unit: 6}}
          - {key: path, rate_limit: {unit: fortnight, requests_per_unit: 6}}
          - {key: tenant, rate_limit: {unit: hour, requests_per_unit: 6, name: "per tenant"}}
        ---
        domain: api
        descriptors: []
    """,
    )
    result = migrate([path])
    untranslated = messages(result, "untranslated")
    assert "duplicate descriptor" in untranslated and "a second config for domain 'api'" in untranslated
    assert "unit 'fortnight'" in untranslated
    assert "written as 'per-tenant'" in messages(result, "approximated")
    out = tmp_path / "limits.yaml"
    out.write_text(result.text)
    assert [r.name for r in load_config(out).ruleset.rules] == ["envoy-api"]


# -- the command line -------------------------------------------------------------------


def test_cli_writes_a_file_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cli() writes the config, prints findings to stderr, and returns 0."""
    out = tmp_path / "limits.yaml"
    inputs = [str(p) for p in sorted((CORPUS / "untranslatable").glob("*.yaml"))]
    assert cli(inputs, str(out)) == 0
    assert load_config(out).ruleset.rules
    err = capsys.readouterr().err
    assert "untranslated: EnvoyFilter istio-system/gateway-ratelimit" in err
    assert f"wrote {out}" in err


def test_cli_without_output_prints_the_config(capsys: pytest.CaptureFixture[str]) -> None:
    """Without -o the config goes to stdout and the findings to stderr."""
    import yaml

    assert cli([str(p) for p in sorted((CORPUS / "per-user").glob("*.yaml"))], None) == 0
    captured = capsys.readouterr()
    assert yaml.safe_load(captured.out) == migrated("per-user").config
    assert "note: RequestAuthentication shop/api-jwt" in captured.err


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "cannot read"), ("kind: [unclosed", "not valid YAML"), (b"\xff\xfe", "cannot read")],
)
def test_cli_names_the_file_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, problem: str
) -> None:
    """A missing, non-YAML or non-UTF-8 input: exit 1, and the message names the file."""
    bad = tmp_path / "bad.yaml"
    if isinstance(content, str):
        bad.write_text(content)
    elif isinstance(content, bytes):
        bad.write_bytes(content)
    out = tmp_path / "limits.yaml"
    assert cli([str(CORPUS / "per-user" / "envoyfilter.yaml"), str(bad)], str(out)) == 1
    err = capsys.readouterr().err
    assert f"{bad}: {problem}" in err
    assert not out.exists()


def test_cli_cannot_write_the_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An output in a missing directory: exit 1, naming it."""
    out = tmp_path / "missing" / "limits.yaml"
    assert cli([str(CORPUS / "per-user" / "ratelimit-config.yaml")], str(out)) == 1
    assert f"{out}: cannot write" in capsys.readouterr().err


def test_findings_follow_source_order() -> None:
    """Findings are sorted by file, then document, whatever the order of translation."""
    result = migrated("multi-document")
    kinds = [f.kind for f in result.findings]
    assert kinds.index("Namespace") < kinds.index("RequestAuthentication") < kinds.index("EnvoyFilter")
    assert os.path.basename(result.findings[0].file) == "all.yaml"


GLOBAL_FILTER = """
    apiVersion: networking.istio.io/v1alpha3
    kind: EnvoyFilter
    metadata: {name: api-global, namespace: api}
    spec:
      workloadSelector: {labels: {app: api}}
      configPatches:
        - applyTo: HTTP_FILTER
          match: {context: SIDECAR_INBOUND}
          patch:
            operation: INSERT_BEFORE
            value:
              name: envoy.filters.http.ratelimit
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
                domain: api
                timeout: 0.05s
        - applyTo: VIRTUAL_HOST
          match: {context: SIDECAR_INBOUND, routeConfiguration: {vhost: {name: "inbound|http|8080"}}}
          patch:
            operation: MERGE
            value:
              rate_limits: [{actions: [{generic_key: {descriptor_value: everything}}]}]
        - applyTo: HTTP_ROUTE
          match:
            context: SIDECAR_INBOUND
            routeConfiguration: {vhost: {name: "inbound|http|8080", route: {name: uploads}}}
          patch:
            operation: MERGE
            value:
              route:
                rate_limits: [{actions: [{generic_key: {descriptor_value: uploads}}]}]
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: api, namespace: api}
    spec:
      hosts: [api]
      http:
        - name: uploads
          match: [{uri: {prefix: /uploads/}, method: {exact: PUT}}]
          route: [{destination: {host: api}}]
    ---
    domain: api
    descriptors:
      - {key: generic_key, value: everything, rate_limit: {unit: minute, requests_per_unit: 6}}
      - {key: generic_key, value: uploads, rate_limit: {unit: minute, requests_per_unit: 2}}
"""


def test_virtual_host_and_route_entries(tmp_path: Path) -> None:
    """A route's rate_limits get their own entry (matched by the VirtualService); both are reported."""
    result = migrate([write_case(tmp_path, GLOBAL_FILTER)])
    entries = result.config["envoy"]
    assert [e["name"] for e in entries] == ["envoy-api", "envoy-api-2"]
    assert entries[1]["match"] == {"paths": ["/uploads/**"], "methods": ["PUT"]}
    approximated = messages(result, "approximated")
    assert "skipped a virtual host's rate_limits" in approximated
    assert "feeds 2 entries" not in approximated  # entries of one domain share its counters, as in Envoy
    out = tmp_path / "limits.yaml"
    out.write_text(result.text)
    d = Driver(out, None)
    try:
        assert d.allowed(3, path="/uploads/a", method="PUT") == 2
        assert d.allowed(6, path="/items") == 4  # the 2 uploads counted against "everything" too
    finally:
        d.close()


def test_rate_limits_nobody_reads_are_reported(tmp_path: Path) -> None:
    """Without a global filter, rate_limits no local descriptor reads are untranslated, by field."""
    text = (
        LOCAL_FILTER.format(extra="")
        + """
        - applyTo: VIRTUAL_HOST
          match: {context: SIDECAR_INBOUND}
          patch:
            operation: MERGE
            value:
              rate_limits: [{actions: [{remote_address: {}}]}]
    """
    )
    result = migrate([write_case(tmp_path, text)])
    assert "rate_limits[0]: no rate limit filter (stage 0)" in messages(result, "untranslated")
    assert "no rate limit filter" not in messages(migrated("local-per-route"))


ALL_FILES = sorted(CORPUS.glob("*/*.yaml"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(ALL_FILES), min_size=1, max_size=6, unique=True))
def test_any_mix_of_corpus_files_loads(files: list[Path]) -> None:
    """Whatever manifests are passed together (pieces missing, several teams'), the output loads."""
    from ratelimit.config import parse_config

    assert parse_config(migrate(files).text).ruleset is not None


def test_regexes_python_cannot_compile_are_left_out(tmp_path: Path) -> None:
    """An RE2 pattern Python's re refuses makes its route untranslated rather than the file invalid."""
    text = (
        LOCAL_FILTER.format(extra="")
        + """
        - applyTo: HTTP_ROUTE
          match: {routeConfiguration: {vhost: {route: {name: odd}}}}
          patch:
            operation: MERGE
            value:
              typed_per_filter_config:
                envoy.filters.http.local_ratelimit:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
                  token_bucket: {max_tokens: 1, fill_interval: 1s}
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: odd, namespace: api}
    spec:
      http: [{name: odd, match: [{uri: {regex: "/(?P<x"}}]}]
    """
    )
    result = migrate([write_case(tmp_path, text)])
    assert "route 'odd': the path regex" in messages(result, "untranslated")
    out = tmp_path / "limits.yaml"
    out.write_text(result.text)
    assert [r.name for r in load_config(out).ruleset.rules] == ["api-local"]


def test_wildcards_and_share_threshold_keep_their_meaning(drive: Any) -> None:
    """A middle wildcard limits each matching path; share_threshold keeps one counter for all matches."""
    result = migrated("wildcards-share")
    assert "unknown" not in messages(result)
    d = drive("wildcards-share")
    assert d.allowed(5, path="/api/1/action") == 3
    assert d.allowed(5, path="/api/2/action") == 3  # a counter per value, as in the service
    assert d.allowed(3, path="/files/a.pdf") == 3
    assert d.allowed(3, path="/files/b.csv") == 1  # the 4/minute is shared by every /files/* path
    assert d.allowed(3, path="/api/1/other") == 3


def test_fields_without_effect_in_the_app_are_noted() -> None:
    """detailed_metric, value_to_metric, metadata and quota_mode are kept, each with a note saying so."""
    notes = messages(migrated("wildcards-share"), "note")
    for field in ("detailed_metric", "value_to_metric", "metadata", "quota_mode"):
        assert f".{field}: kept" in notes, field


def test_output_has_no_yaml_anchors(tmp_path: Path) -> None:
    """Two entries sharing a ConfigMap's descriptors are both written in full, without &id001/*id001."""
    text = migrate([write_case(tmp_path, GLOBAL_FILTER)]).text
    assert "&id" not in text and "*id" not in text
    assert text.count("        value: everything\n") == 2  # the descriptors of both entries


def test_configs_the_service_refuses_are_reported_by_field(tmp_path: Path) -> None:
    """A self-replacing or empty replaces, a unit with unlimited and share_threshold without * are named."""
    path = write_case(
        tmp_path,
        """
        domain: api
        descriptors:
          - key: a
            rate_limit: {name: a, replaces: [{name: a}, {name: ""}], unit: minute, requests_per_unit: 1}
          - {key: b, rate_limit: {unlimited: true, unit: day}}
          - {key: c, value: v, share_threshold: true, rate_limit: {unit: minute, requests_per_unit: 1}}
    """,
    )
    result = migrate([path])
    untranslated = messages(result, "untranslated")
    assert "descriptors[0].rate_limit.replaces[0]: a limit that replaces itself" in untranslated
    assert "descriptors[0].rate_limit.replaces[1]: an empty replaces entry" in untranslated
    assert "descriptors[2].share_threshold: share_threshold without a wildcard value" in untranslated
    approximated = messages(result, "approximated")
    assert "descriptors[1].rate_limit.unit: left out: the limit is unlimited" in approximated
    out = tmp_path / "limits.yaml"
    out.write_text(result.text)
    assert [r.name for r in load_config(out).ruleset.rules] == ["envoy-api"]
