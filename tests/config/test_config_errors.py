"""Config validation: every error names file, line, field and what was expected; nothing is ignored."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ratelimit.config import ConfigError, load_config, parse_config

CASES = [
    ("unknown top-level key", "rulez: []\n", "1:1: (top level): unknown key 'rulez' (did you mean 'rules'?"),
    ("wrong version", "version: 2\n", "1:1: version: expected 1, got 2"),
    ("not a mapping", "- a\n- b\n", "1:1: (top level): expected a mapping, got a list"),
    ("backend typo", "backend: {storag: x}\n", "backend: unknown key 'storag' (did you mean 'storage'?"),
    (
        "failure mode",
        "backend: {failure_mode: maybe}\n",
        "backend.failure_mode: expected one of: open, closed, local",
    ),
    ("timeout unit", "backend: {timeout: 5 minutes}\n", "backend.timeout: expected a duration like 50ms"),
    ("timeout range", "backend: {timeout: 90s}\n", "backend.timeout: expected a timeout between 1ms and 60s"),
    ("prefix chars", "backend: {prefix: 'a b'}\n", "backend.prefix: expected a key prefix"),
    ("deny cache type", "backend: {deny_cache: yes please}\n", "backend.deny_cache: expected true or false"),
    (
        "unset env",
        "backend: {storage: '${RL_TEST_UNSET_VAR}'}\n",
        "environment variable RL_TEST_UNSET_VAR is not set",
    ),
    (
        "proxies negative",
        "identity: {trusted_proxies: -1}\n",
        "identity.trusted_proxies: expected an integer >= 0",
    ),
    (
        "missing policy",
        "identity: {missing: drop}\n",
        "identity.missing: expected one of: ip, anonymous, reject",
    ),
    (
        "claim header name",
        "identity: {claim_headers: {sub: 'x user'}}\n",
        "identity.claim_headers.sub: expected a header name",
    ),
    (
        "jwt two sources",
        "identity: {jwt: {jwks_url: 'https://a', key_env: K}}\n",
        "identity.jwt: needs exactly one of",
    ),
    (
        "jwt key file",
        "identity: {jwt: {key_file: /nonexistent.pem}}\n",
        "identity.jwt.key_file: expected a readable PEM file",
    ),
    (
        "jwt key env",
        "identity: {jwt: {key_env: RL_TEST_UNSET_KEY}}\n",
        "identity.jwt.key_env: expected the name of a set",
    ),
    (
        "jwt alg none",
        "identity: {jwt: {jwks_url: 'https://a', algorithms: [none]}}\n",
        "algorithm 'none' is never accepted",
    ),
    ("headers typo", "headers: {enable: false}\n", "headers: unknown key 'enable' (did you mean 'enabled'?"),
    ("shadow type", "shadow: 1\n", "shadow: expected true or false, got 1"),
    ("rules not list", "rules: {a: 1}\n", "rules: expected a list, got a mapping"),
    ("rule no name", "rules: [{limits: 1/s}]\n", "rules[0]: missing required key 'name'"),
    ("rule bad name", "rules: [{name: 'a b', limits: 1/s}]\n", "rules[0].name: expected a rule name"),
    (
        "duplicate name",
        "rules: [{name: a, limits: 1/s}, {name: a, limits: 1/s}]\n",
        "rules[1].name: expected a name no other rule has",
    ),
    ("no limits", "rules: [{name: a}]\n", "rules[0]: missing required key 'limits' (or 'tiers')"),
    (
        "limit and limits",
        "rules: [{name: a, limit: 1/s, limits: 2/s}]\n",
        "rules[0]: give limits or limit, not both",
    ),
    (
        "bad rate",
        "rules: [{name: a, limits: 100/minit}]\n",
        "rules[0].limits: expected a rate like '100/minute'",
    ),
    ("rate type", "rules: [{name: a, limits: {x: 1}}]\n", "rules[0].limits: expected a rate like"),
    ("unknown rule key", "rules: [{name: a, limits: 1/s, burst: 3}]\n", "rules[0]: unknown key 'burst'"),
    (
        "bad key kind",
        "rules: [{name: a, limits: 1/s, key: user}]\n",
        "rules[0].key: expected a key: global, ip",
    ),
    ("key arg", "rules: [{name: a, limits: 1/s, key: 'ip:x'}]\n", "'ip' takes no argument"),
    (
        "claim unset",
        "rules: [{name: a, limits: 1/s, key: 'claim:sub'}]\n",
        "claim 'sub' needs identity.jwt, or identity.claim_headers.sub",
    ),
    (
        "empty key list",
        "rules: [{name: a, limits: 1/s, key: []}]\n",
        "rules[0].key: expected a non-empty list of keys",
    ),
    (
        "cost negative",
        "rules: [{name: a, limits: 1/s, cost: -1}]\n",
        "rules[0].cost: expected an integer >= 0",
    ),
    (
        "rule missing",
        "rules: [{name: a, limits: 1/s, missing: no}]\n",
        "rules[0].missing: expected one of: ip, anonymous, reject",
    ),
    (
        "replaces unknown",
        "rules: [{name: a, limits: 1/s, replaces: [zz]}]\n",
        "rules[0].replaces: no rule named 'zz'",
    ),
    (
        "match typo",
        "rules: [{name: a, limits: 1/s, match: {pathz: [/a]}}]\n",
        "rules[0].match: unknown key 'pathz' (did you mean 'path'?",
    ),
    (
        "path pattern",
        "rules: [{name: a, limits: 1/s, match: {paths: [items]}}]\n",
        "rules[0].match.paths[0]: expected a path pattern",
    ),
    ("path unclosed", "rules: [{name: a, limits: 1/s, match: {path: '/a/{id'}}]\n", "unclosed '{'"),
    (
        "bad regex path",
        "rules: [{name: a, limits: 1/s, match: {path: 're:('}}]\n",
        "rules[0].match.path: expected a path pattern",
    ),
    (
        "method",
        "rules: [{name: a, limits: 1/s, match: {methods: [FETCH]}}]\n",
        "rules[0].match.methods[0]: expected one of: GET",
    ),
    (
        "host",
        "rules: [{name: a, limits: 1/s, match: {hosts: ['a/b']}}]\n",
        "rules[0].match.hosts[0]: expected a host name",
    ),
    (
        "header regex",
        "rules: [{name: a, limits: 1/s, match: {headers: {x: {regex: '('}}}}]\n",
        "invalid regex",
    ),
    (
        "header two ways",
        "rules: [{name: a, limits: 1/s, match: {headers: {x: {exact: a, prefix: b}}}}]\n",
        "expected exactly one of exact",
    ),
    (
        "header unknown",
        "rules: [{name: a, limits: 1/s, match: {headers: {x: {equals: a}}}}]\n",
        "unknown key 'equals'",
    ),
    (
        "grpc service",
        "rules: [{name: a, limits: 1/s, match: {grpc: {service: 'shop Cart'}}}]\n",
        "expected a gRPC service name",
    ),
    (
        "grpc no service",
        "rules: [{name: a, limits: 1/s, match: {grpc: {method: Get}}}]\n",
        "missing required key 'service'",
    ),
    (
        "tiers no default",
        "rules: [{name: a, tiers: {by: ip, limits: {f: 1/s}}}]\n",
        "rules[0].tiers: missing required key 'default'",
    ),
    (
        "tiers bad rate",
        "rules: [{name: a, tiers: {by: ip, limits: {f: 1/x}, default: 1/s}}]\n",
        "rules[0].tiers.limits.f: expected a rate",
    ),
    (
        "tiers table",
        "rules: [{name: a, tiers: {by: ip, limits: [1/s], default: 1/s}}]\n",
        "rules[0].tiers.limits: expected a mapping",
    ),
    (
        "overrides rate",
        "rules: [{name: a, limits: 1/s, overrides: {bob: lots}}]\n",
        "rules[0].overrides.bob: expected a rate",
    ),
    (
        "overrides table",
        "rules: [{name: a, limits: 1/s, overrides: [bob]}]\n",
        "rules[0].overrides: expected a mapping",
    ),
    (
        "envoy both",
        "envoy: [{file: x.yaml, domain: d}]\n",
        "envoy[0]: needs either file, or domain and descriptors inline",
    ),
    (
        "envoy file",
        "envoy: [{file: /nonexistent/rl.yaml}]\n",
        "envoy[0].file: expected a readable envoyproxy/ratelimit config file",
    ),
    (
        "envoy unit",
        "envoy: [{domain: d, descriptors: [{key: k, rate_limit: {unit: fortnight, requests_per_unit: 1}}]}]\n",  # noqa: E501
        "rate_limit.unit: invalid rate limit unit 'fortnight' (expected one of: second, minute",
    ),
    (
        "envoy huge count",
        "domain: d\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 10000000000000}}]\n",
        "rate_limit: expected a limit this library can count",
    ),
    (
        "envoy rpu",
        "envoy: [{domain: d, descriptors: [{key: k, rate_limit: {unit: second}}]}]\n",
        "rate_limit: needs requests_per_unit (the service reads a missing one as 0",
    ),
    (
        "envoy key",
        "envoy: [{domain: d, descriptors: [{value: v}]}]\n",
        "envoy[0].descriptors[0]: descriptor has empty key",
    ),
    (
        "envoy field",
        "envoy: [{domain: d, descriptors: [{key: k, ratelimit: {}}]}]\n",
        "unknown key 'ratelimit' (did you mean 'rate_limit'?",
    ),
    (
        "envoy dup",
        "envoy: [{domain: d, descriptors: [{key: k, value: v}, {key: k, value: v}]}]\n",
        "envoy[0].descriptors[1]: duplicate descriptor composite key 'd.k_v'",
    ),
    (
        "envoy action",
        "envoy: [{domain: d, rate_limits: [{actions: [{destination_cluster: {}}]}]}]\n",
        "the action 'destination_cluster' needs Envoy's own state",
    ),
    (
        "envoy unknown action",
        "envoy: [{domain: d, rate_limits: [{actions: [{foo: {}}]}]}]\n",
        "unknown action 'foo'",
    ),
    (
        "envoy header action",
        "envoy: [{domain: d, rate_limits: [{actions: [{request_headers: {header_name: x}}]}]}]\n",
        "missing required key 'descriptor_key'",
    ),
    (
        "envoy matcher",
        "envoy: [{domain: d, rate_limits: [{actions: [{header_value_match: {descriptor_value: v, headers: [{name: x, exact_match: a, prefix_match: b}]}}]}]}]\n",  # noqa: E501
        "expected one way to match",
    ),
    (
        "envoy name taken",
        "rules: [{name: envoy-d, limits: 1/s}]\nenvoy: [{domain: d}]\n",
        "rule name 'envoy-d' is taken",
    ),
    ("duplicate yaml key", "rules: []\nrules: []\n", "2:1: not valid YAML: duplicate key 'rules'"),
    ("broken yaml", "rules: [\n", "not valid YAML"),
    ("two documents", "rules: []\n---\nrules: []\n", "expected one YAML document, found 2"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_error_is_named_with_its_place(tmp_path: Path, text: str, expected: str) -> None:
    """The error message names the file, the line and the field, and what was expected."""
    path = tmp_path / "limits.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert expected in message, message
    assert all(line.startswith(f"{path}") for line in caught.value.errors), message


def test_all_errors_reported_at_once_in_line_order() -> None:
    """Every error in the file is reported, sorted by line, each with its own line number."""
    text = textwrap.dedent("""
        backend:
          failure_mode: maybe
        rules:
          - name: ok
            limits: 1/s
          - name: bad
            limits: 1/x
            match: {methods: [NOPE]}
    """)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "f.yaml")
    errors = caught.value.errors
    assert len(errors) == 3
    assert [e.split(":")[1] for e in errors] == ["3", "8", "9"]


def test_unknown_keys_deep_in_the_tree_are_errors() -> None:
    """A misspelt key nested inside tiers is an error, not silently ignored."""
    with pytest.raises(ConfigError, match=r"rules\[0\].tiers: unknown key 'defualt'"):
        parse_config("rules: [{name: a, tiers: {by: ip, limits: {}, default: 1/s, defualt: 2/s}}]\n")


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=12))  # fmt: skip
def test_arbitrary_documents_load_or_raise_config_error(doc: object) -> None:
    """Whatever the YAML holds, loading either succeeds or raises ConfigError; never another exception."""
    import yaml

    text = yaml.safe_dump({"rules": [doc]} if not isinstance(doc, dict) else doc)
    with contextlib.suppress(ConfigError):
        parse_config(text)
