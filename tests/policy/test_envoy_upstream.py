"""The envoyproxy/ratelimit format as upstream has it today: wildcards, share_threshold, quota_mode,
metadata, stats keys and upstream's validation, each checked against upstream's own examples."""

from __future__ import annotations

import re
import textwrap
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratelimit.config import ConfigError, parse_config
from ratelimit.envoy import DescriptorRule, DescriptorTree, wildcard_match


def tree(text: str) -> DescriptorTree:
    """The domain of a bare service config."""
    rules = parse_config(textwrap.dedent(text), "svc.yaml").ruleset.rules
    assert len(rules) == 1 and isinstance(rules[0], DescriptorRule)
    return rules[0].tree


def errors(text: str) -> str:
    """The errors a config gives (it must give some)."""
    with pytest.raises(ConfigError) as caught:
        parse_config(textwrap.dedent(text), "svc.yaml")
    return str(caught.value)


def entries(text: str) -> list[tuple[str, str]]:
    """``k=v,k=v`` as request descriptor entries."""
    return [(k, v) for k, v in (part.split("=", 1) for part in text.split(","))]


# -- wildcards ---------------------------------------------------------------------------


def reference(pattern: str, text: str) -> bool:
    """A straightforward wildcard matcher: each * is ``.*``, the rest literal."""
    return re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), text, re.DOTALL) is not None


@settings(max_examples=500, deadline=None)
@given(st.text("ab*/", max_size=8), st.text("ab/", max_size=10))
def test_wildcard_match_agrees_with_a_regex_reference(pattern: str, text: str) -> None:
    """``*`` anywhere matches any run of characters (empty included), everything else literally."""
    assert wildcard_match(pattern, text) == reference(pattern, text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text("ab/", max_size=3), min_size=1, max_size=4), st.data())
def test_a_value_built_from_the_pattern_matches_it(parts: list[str], data: st.DataObject) -> None:
    """Filling each ``*`` with any text yields a value the pattern matches."""
    fills = [data.draw(st.text("ab*/", max_size=3)) for _ in parts[1:]]
    value = parts[0] + "".join(f + p for f, p in zip(fills, parts[1:], strict=True))
    assert wildcard_match("*".join(parts), value)


EXAMPLE_9 = """
domain: example9
descriptors:
  - key: key1
    value: value*
    rate_limit: {unit: minute, requests_per_unit: 20}
  - key: path
    value: /api/*/action
    rate_limit: {unit: minute, requests_per_unit: 21}
  - key: route
    value: /api/*/resource/*/action
    rate_limit: {unit: minute, requests_per_unit: 22}
"""


@pytest.mark.parametrize(
    ("descriptor", "limit"),
    [
        ("key1=value1", 20),
        ("key1=valueXYZ", 20),
        ("key1=value", 20),
        ("key1=valu", None),
        ("path=/api/123/action", 21),
        ("path=/api/user-id/action", 21),
        ("path=/api//action", 21),
        ("path=/api/123/other", None),
        ("path=/api/123/action/x", None),
        ("route=/api/v1/resource/123/action", 22),
        ("route=/api/v2/resource/456/action", 22),
        ("route=/api/v1/resource/action", None),
    ],
)
def test_upstream_example_9_wildcards_anywhere(descriptor: str, limit: int | None) -> None:
    """README Example 9: trailing, middle and multiple wildcards match as upstream says."""
    found = tree(EXAMPLE_9).lookup(entries(descriptor))
    assert (found.requests_per_unit if found else None) == limit


def test_exact_then_wildcards_in_file_order_then_key_only() -> None:
    """An exact value wins; among wildcards the first written wins (not the longest); then the key."""
    t = tree("""
        domain: d
        descriptors:
          - {key: p, value: "a*", rate_limit: {unit: minute, requests_per_unit: 1}}
          - {key: p, value: "ab*", rate_limit: {unit: minute, requests_per_unit: 2}}
          - {key: p, value: abc, rate_limit: {unit: minute, requests_per_unit: 3}}
          - {key: p, rate_limit: {unit: minute, requests_per_unit: 4}}
    """)
    got = {v: t.lookup([("p", v)]) for v in ("abc", "abd", "ax", "zz")}
    assert {v: lim.requests_per_unit for v, lim in got.items() if lim} == {
        "abc": 3,
        "abd": 1,
        "ax": 1,
        "zz": 4,
    }


def test_levels_match_key_and_value_joined_by_underscore_as_upstream() -> None:
    """Upstream looks ``key_value`` up: a key with ``_`` can meet another key's value, so both match."""
    t = tree("""
        domain: d
        descriptors:
          - {key: a_b, value: c, rate_limit: {unit: minute, requests_per_unit: 1}}
          - {key: user, value: "*", rate_limit: {unit: minute, requests_per_unit: 2}}
    """)
    assert t.lookup([("a", "b_c")]).requests_per_unit == 1  # type: ignore[union-attr]
    assert t.lookup([("user_id", "7")]).requests_per_unit == 2  # type: ignore[union-attr]


def test_an_empty_config_value_is_the_key_alone() -> None:
    """``value: ""`` means no value, as upstream reads it."""
    t = tree("""
        domain: d
        descriptors: [{key: k, value: "", rate_limit: {unit: minute, requests_per_unit: 1}}]
    """)
    assert t.lookup([("k", "anything")]) is not None


def test_middle_wildcard_limits_requests_in_the_app(tmp_path: Any) -> None:
    """A ``/api/*/action`` limit applies to requests (it used to be taken literally and never apply)."""
    from support.config_helpers import Driver, write

    d = Driver(
        write(
            tmp_path,
            """
            envoy:
              - domain: api
                descriptors:
                  - {key: ":path", value: /api/*/action, rate_limit: {unit: minute, requests_per_unit: 2}}
            """,
        ),
        None,
    )
    try:
        assert d.allowed(5, path="/api/1/action") == 2
        assert d.allowed(5, path="/api/2/action") == 2  # a counter per value without share_threshold
        assert d.allowed(5, path="/api/1/other") == 5
    finally:
        d.close()


# -- share_threshold ---------------------------------------------------------------------

SHARE = """
domain: example11
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: files_no_share
    value: files_no_share/*
    share_threshold: false
    rate_limit: {unit: hour, requests_per_unit: 10}
  - key: file
    value: test1
    rate_limit: {unit: minute, requests_per_unit: 50}
  - key: file
    value: test*
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 100}
  - key: user
    value: user/*
    share_threshold: true
    descriptors:
      - key: resource
        value: res/*
        descriptors:
          - key: action
            rate_limit: {unit: minute, requests_per_unit: 150}
"""


def test_share_threshold_counter_is_the_wildcard() -> None:
    """Values a share_threshold wildcard matches share one counter, named by the wildcard."""
    rule = DescriptorRule("r", tree(SHARE))
    a, b = rule.charge([("files", "files/a.pdf")]), rule.charge([("files", "files/b.csv")])
    assert a is not None and b is not None and a.counted == b.counted == "envoy:example11/files=files/*"
    c, d = (
        rule.charge([("files_no_share", "files_no_share/a")]),
        rule.charge([("files_no_share", "files_no_share/b")]),
    )
    assert c is not None and d is not None and c.counted != d.counted
    exact = rule.charge([("file", "test1")])
    assert exact is not None and exact.counted == "envoy:example11/file=test1"  # exact wins, own counter


def test_share_threshold_above_the_limit_level_is_kept() -> None:
    """A shared wildcard at an upper level stands in the counter of the nested limit; other levels don't."""
    found = tree(SHARE).match(entries("user=user/9,resource=res/1,action=read"))
    assert found is not None and found.shared
    assert found.counter_entries == (("user", "user/*"), ("resource", "res/1"), ("action", "read"))
    assert found.stats_key == "example11.user_user/*.resource_res/*.action"


def test_share_threshold_shares_one_counter_in_the_app(tmp_path: Any) -> None:
    """Upstream Example 11: 5 requests for a.pdf and 5 for b.csv exhaust c.txt's 10 too."""
    from support.config_helpers import Driver, write

    d = Driver(write(tmp_path, SHARE, "config.yaml"), None)
    try:
        assert d.allowed(5, files="files/a.pdf") == 5
        assert d.allowed(5, files="files/b.csv") == 5
        assert d.allowed(1, files="files/c.txt") == 0
        assert d.allowed(10, files_no_share="files_no_share/a.pdf") == 10
        assert d.allowed(1, files_no_share="files_no_share/b.csv") == 1
    finally:
        d.close()


# -- stats keys (detailed_metric, value_to_metric), from upstream's tests ------------------------

STATS = """
domain: test-domain
descriptors:
  - {key: wild, value: "foo*", rate_limit: {unit: minute, requests_per_unit: 20}}
  - {key: noVal, rate_limit: {unit: minute, requests_per_unit: 20}}
  - {key: midWild, value: "bar*b", rate_limit: {unit: minute, requests_per_unit: 20}}
  - key: nestedWild
    value: val1
    descriptors: [{key: wild, value: "goo*", rate_limit: {unit: minute, requests_per_unit: 20}}]
  - {key: key7, detailed_metric: true, rate_limit: {unit: minute, requests_per_unit: 70}}
  - key: key1
    value: value1
    descriptors: [{key: subkey1, rate_limit: {unit: second, requests_per_unit: 5}}]
  - key: route
    value_to_metric: true
    descriptors:
      - key: http_method
        value_to_metric: true
        descriptors: [{key: subject_id, rate_limit: {unit: minute, requests_per_unit: 60}}]
  - key: share
    value: "api/*"
    share_threshold: true
    value_to_metric: true
    descriptors: [{key: method, rate_limit: {unit: minute, requests_per_unit: 60}}]
  - key: service
    value: "svc/*"
    share_threshold: true
    descriptors: [{key: endpoint, detailed_metric: true, rate_limit: {unit: minute, requests_per_unit: 80}}]
  - key: vw
    value_to_metric: true
    descriptors:
      - key: action
        value: "read*"
        value_to_metric: true
        rate_limit: {unit: minute, requests_per_unit: 9}
"""


@pytest.mark.parametrize(
    ("descriptor", "key"),
    [
        ("wild=foo1", "test-domain.wild_foo*"),
        ("wild=foo2", "test-domain.wild_foo*"),
        ("noVal=x", "test-domain.noVal"),
        ("midWild=barxb", "test-domain.midWild_bar*b"),
        ("nestedWild=val1,wild=goo2", "test-domain.nestedWild_val1.wild_goo*"),
        ("key7=unspecified_value", "test-domain.key7_unspecified_value"),
        ("key1=value1,subkey1=something", "test-domain.key1_value1.subkey1"),
        ("route=api,http_method=GET,subject_id=123", "test-domain.route_api.http_method_GET.subject_id"),
        ("route=,http_method=GET,subject_id=123", "test-domain.route.http_method_GET.subject_id"),
        ("share=api/v1,method=GET", "test-domain.share_api/*.method"),
        ("service=svc/a,endpoint=get", "test-domain.service_svc/*.endpoint_get"),
        ("vw=alice,action=readfile", "test-domain.vw_alice.action_readfile"),
    ],
)
def test_stats_keys_are_upstreams(descriptor: str, key: str) -> None:
    """DescriptorMatch.stats_key is the key upstream's tests expect for the same config and descriptor."""
    found = tree(STATS).match(entries(descriptor))
    assert found is not None and found.stats_key == key


def test_limit_stats_key_is_the_configured_path() -> None:
    """DescriptorLimit.stats_key names the limit as configured, wildcards with their ``*``."""
    t = tree(STATS)
    assert t.lookup(entries("nestedWild=val1,wild=goo")).stats_key == "test-domain.nestedWild_val1.wild_goo*"  # type: ignore[union-attr]


# -- quota_mode and metadata ---------------------------------------------------------------

QUOTA = """
envoy:
  - domain: q
    descriptors:
      - {key: a, quota_mode: true, rate_limit: {unit: minute, requests_per_unit: 1}}
      - {key: b, quota_mode: true, rate_limit: {unit: minute, requests_per_unit: 3}}
      - key: c
        quota_mode: true
        metadata: {service: {name: billing}, tier: 2}
        rate_limit: {unit: minute, requests_per_unit: 2}
"""


def test_quota_mode_and_metadata_are_on_the_limit() -> None:
    """quota_mode and metadata (as JSON-like values) are read onto the DescriptorLimit."""
    rules = parse_config(QUOTA, "q.yaml").ruleset.rules
    limit = rules[0].tree.lookup([("c", "x")])
    assert limit.quota_mode and limit.metadata == {"service": {"name": "billing"}, "tier": 2}
    assert not rules[0].tree.lookup([("a", "x")]).metadata


def test_one_quota_mode_limit_denies_alone_several_only_count(tmp_path: Any) -> None:
    """One quota-mode limit denies when over; with several per request, none denies in the app."""
    from support.config_helpers import Driver, write

    d = Driver(write(tmp_path, QUOTA), None)
    try:
        assert d.allowed(3, c="x") == 2
        assert d.allowed(5, a="y", b="y") == 5  # the service denies only once both are over
    finally:
        d.close()


def test_check_says_what_has_no_effect_in_the_app(tmp_path: Any, capsys: Any) -> None:
    """check lists metadata, detailed_metric, value_to_metric and an unlimited's requests_per_unit."""
    from ratelimit._cli.config import run_check

    path = tmp_path / "svc.yaml"
    path.write_text(
        textwrap.dedent("""
        domain: d
        descriptors:
          - key: a
            detailed_metric: true
            metadata: {x: 1}
            rate_limit: {unit: minute, requests_per_unit: 1}
          - {key: b, value_to_metric: true, rate_limit: {unlimited: true, requests_per_unit: 5}}
          - {key: c, value: "f*", share_threshold: true, rate_limit: {unit: minute, requests_per_unit: 1}}
        """)
    )
    assert run_check([str(path)]) == 0
    out = capsys.readouterr().out
    assert "descriptors[0].detailed_metric: changes the service's stats key only" in out
    assert "descriptors[0].metadata: kept for ratelimit serve's response metadata" in out
    assert "descriptors[1].value_to_metric: changes the service's stats key only" in out
    assert "descriptors[1].rate_limit.requests_per_unit: ignored: the limit is unlimited" in out
    assert "- c = f*  (one counter for all matches): 1/minute" in out


# -- validation, with upstream's words ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("descriptors:\n", "svc.yaml:1:1: domain: config file cannot have empty domain"),
        ('domain: ""\ndescriptors: []\n', "svc.yaml:1:1: domain: config file cannot have empty domain"),
        ("domain: d\ndescriptors:\n  - value: value1\n", "descriptors[0]: descriptor has empty key"),
        (
            "domain: d\ndescriptors:\n  - {key: key1, value: value1}\n  - {key: key1, value: value1}\n",
            "svc.yaml:4:5: descriptors[1]: duplicate descriptor composite key 'd.key1_value1'",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    descriptors: [{key: b, value: c}, {key: b, value: c}]\n",  # noqa: E501
            "duplicate descriptor composite key 'd.a.b_c'",
        ),
        (
            "domain: d\ndescriptors: [{key: k, rate_limit: {unit: foo, requests_per_unit: 5}}]\n",
            "descriptors[0].rate_limit.unit: invalid rate limit unit 'foo'",
        ),
        (
            "domain: d\ndescriptors: [{key: k, rate_limit: {name: self, replaces: [{name: self}],"
            " unit: second, requests_per_unit: 5}}]\n",
            "descriptors[0].rate_limit.replaces[0].name: replaces should not contain name of same descriptor",
        ),
        (
            "domain: d\ndescriptors: [{key: k, rate_limit: {replaces: [{name: }], unit: second, requests_per_unit: 5}}]\n",  # noqa: E501
            "descriptors[0].rate_limit.replaces[0]: should not have an empty replaces entry",
        ),
        (
            "domain: d\ndescriptors: [{key: k, rate_limit: {unlimited: true, unit: day, requests_per_unit: 25}}]\n",  # noqa: E501
            "descriptors[0].rate_limit.unit: should not specify rate limit unit when unlimited",
        ),
        (
            "domain: d\ndescriptors: [{key: k, value: v, share_threshold: true,"
            " rate_limit: {unit: day, requests_per_unit: 1}}]\n",
            "share_threshold can only be used with wildcard values (containing '*'), but found key 'k_v'",
        ),
        (
            "domain: d\ndescriptors: [{key: k, metadata: [1]}]\n",
            "descriptors[0].metadata: expected a mapping",
        ),
        (
            "domain: d\ndescriptors: [{key: k, metadata: {b: !!binary aGVsbG8=}}]\n",
            "descriptors[0].metadata: error parsing metadata: invalid type: bytes",
        ),
        ("domain: d\ndescriptors: [{key: k, ratelimit: {}}]\n", "unknown key 'ratelimit'"),
        ("domain: d\ndescriptors: [a, b]\n", "descriptors[0]: expected a mapping, got 'a'"),
    ],
)
def test_upstream_validation_with_file_line_field(text: str, expected: str) -> None:
    """Each config upstream refuses is refused here with upstream's words and our file:line:field."""
    assert expected in errors(text)


@pytest.mark.parametrize(
    "text",
    [
        "domain: d\ndescriptors: []\n",
        "domain: d\ndescriptors:\n",
        "domain: d\n",
        "domain: d\ndescriptors: [{key: k, rate_limit: {unlimited: true, requests_per_unit: 5}}]\n",
        "domain: d\ndescriptors: [{key: k, quota_mode: true, metadata: {}, rate_limit: {unlimited: true}}]\n",
    ],
)
def test_configs_upstream_accepts_load(text: str) -> None:
    """Empty or missing descriptors, and an unlimited limit with a requests_per_unit, load as upstream."""
    assert parse_config(text, "svc.yaml").ruleset.rules


def test_inline_envoy_entry_without_domain_says_so() -> None:
    """An inline envoy entry with descriptors but no domain is named as upstream names it."""
    assert "envoy[0].domain: config file cannot have empty domain" in errors("envoy: [{descriptors: []}]\n")
