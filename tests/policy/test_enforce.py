"""The adapter-neutral core: headers, key functions, rules and the Enforcer."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratelimit import Decision, Limiter, LimitStatus, Rate
from ratelimit.enforce import Enforcer, Outcome
from ratelimit.headers import problem_body, rate_limit_headers, sf_string
from ratelimit.keys import api_key, client_ip, compose, constant, header, jwt_claim, resolve
from ratelimit.request import Headers, RequestInfo
from ratelimit.rules import Rule, compile_path
from ratelimit.testing import FakeClock

T0 = 1_700_000_040.0


def req(
    path: str = "/items", method: str = "GET", client: str | None = "10.0.0.9", **headers: str
) -> RequestInfo:
    pairs = [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return RequestInfo("http", method, path, Headers(pairs), client)


def status(limit: int, window: float, remaining: int, retry: float = 0.0, reset: float = 10.0) -> LimitStatus:
    return LimitStatus("x", Rate(limit, window), 1, retry == 0, remaining, reset, retry)


# -- header fields ------------------------------------------------------------------

SF_ITEM = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"(?:;[a-z]+=[0-9]+)+'
SF_LIST = re.compile(rf"^{SF_ITEM}(?:, {SF_ITEM})*$")


def test_draft10_header_fields() -> None:
    """RateLimit-Policy and RateLimit list every limit; legacy fields show the tightest."""
    limits = (status(100, 60, 41, reset=16.2), status(5000, 60, 4990, reset=11.5))
    d = Decision.from_limits(True, limits)
    h = dict(rate_limit_headers(d, ["per-user", "global"]))
    assert h["RateLimit-Policy"] == '"per-user";q=100;w=60, "global";q=5000;w=60'
    assert h["RateLimit"] == '"per-user";r=41;t=17, "global";r=4990;t=12'
    assert (h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"], h["X-RateLimit-Reset"]) == ("100", "41", "17")
    assert "Retry-After" not in h


def test_denied_headers_and_problem_body() -> None:
    """A denial carries Retry-After (rounded up) and a quota-exceeded problem naming the violated policy."""
    limits = (status(10, 1, 0, retry=0.2, reset=1.8), status(1000, 3600, 990))
    d = Decision.from_limits(False, limits)
    h = dict(rate_limit_headers(d, ["burst", "hourly"]))
    assert h["Retry-After"] == "1" and h["X-RateLimit-Limit"] == "10"
    assert h["RateLimit"] == '"burst";r=0;t=1, "hourly";r=990;t=10'
    body = json.loads(problem_body(d, ["burst", "hourly"]))
    assert body["status"] == 429 and body["violated-policies"] == ["burst"]
    assert body["type"].endswith("#quota-exceeded")


@given(st.text(max_size=30), st.integers(0, 10**12), st.integers(1, 10**6))
def test_header_values_are_valid_sf_lists(name: str, limit: int, window: int) -> None:
    """Whatever the policy name, the fields are syntactically valid Structured Field Lists."""
    d = Decision.from_limits(True, (status(limit, window, limit),))
    h = dict(rate_limit_headers(d, [name]))
    assert SF_LIST.match(h["RateLimit-Policy"]), h
    assert SF_LIST.match(h["RateLimit"]), h


def test_sf_string_escapes() -> None:
    """Quotes and backslashes are escaped; non-ASCII cannot appear."""
    assert sf_string('a"b\\c') == '"a\\"b\\\\c"'
    assert sf_string("é\n") == '"??"'


# -- key functions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("xff", "trusted", "peer", "want"),
    [
        (None, 0, "10.0.0.9", "10.0.0.9"),
        ("6.6.6.6", 0, "10.0.0.9", "10.0.0.9"),  # no trusted proxies: header ignored
        ("6.6.6.6, 1.2.3.4", 1, "10.0.0.1", "1.2.3.4"),  # client-written entry ignored
        ("6.6.6.6, 1.2.3.4, 10.0.0.2", 2, "10.0.0.1", "1.2.3.4"),
        ("1.2.3.4", 2, "10.0.0.1", "10.0.0.1"),  # fewer entries than proxies: did not pass them
        ("", 1, "10.0.0.1", "10.0.0.1"),
    ],
)
def test_client_ip_trusts_exactly_n_proxies(xff: str | None, trusted: int, peer: str, want: str) -> None:
    """The N-th X-Forwarded-For entry from the right; spoofed entries on the left never count."""
    headers = {"x_forwarded_for": xff} if xff is not None else {}
    assert client_ip(trusted)(req(client=peer, **headers)) == want


def test_simple_keys() -> None:
    """header, api_key (hashed), constant and compose resolve as documented."""
    r = req(x_tenant="acme", x_api_key="s3cret")
    assert header("X-Tenant")(r) == "acme"
    assert header("x-missing")(r) is None
    hashed = api_key()(r)
    assert hashed is not None and "s3cret" not in hashed and hashed.startswith("key-")
    assert constant()(r) == "global"
    assert compose(header("x-tenant"), constant("k"))(r) == "acme|k"
    assert compose(header("x-tenant"), header("x-missing"))(r) is None
    with pytest.raises(ValueError):
        client_ip(-1)


def test_claim_header_is_trusted_only_when_configured() -> None:
    """A client-sent x-user-id counts only when the key function was told to trust it."""
    spoofed = req(x_user_id="victim")
    trusting = jwt_claim("sub", trusted_header="x-user-id")
    assert resolve(trusting, spoofed) == "victim"
    with pytest.raises(ValueError):
        jwt_claim("sub")  # no source configured at all


def test_claim_header_with_two_values_counts_as_missing() -> None:
    """Two x-user-id values mean a client's header sits beside the proxy's: neither is trusted."""
    from ratelimit.request import Headers, RequestInfo

    both = RequestInfo("http", "GET", "/", Headers([("x-user-id", "victim"), ("x-user-id", "me")]))
    assert resolve(jwt_claim("sub", trusted_header="x-user-id"), both) is None


def test_bad_key_function_results() -> None:
    """Key functions may return str, bytes, int or None; anything else is a clear TypeError."""
    assert resolve(lambda r: b"a", req()) == "a"
    assert resolve(lambda r: 7, req()) == "7"
    assert resolve(lambda r: "", req()) is None
    with pytest.raises(TypeError):
        resolve(lambda r: ["a"], req())


# -- rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "hit"),
    [
        ("/items", "/items", True),
        ("/items", "/items/1", False),
        ("/items/*", "/items/1", True),
        ("/items/*", "/items/1/x", False),
        ("/api/**", "/api", True),
        ("/api/**", "/api/a/b", True),
        ("/api/**", "/apix", False),
        ("/users/{id}/orders", "/users/42/orders", True),
        ("/users/{id}/orders", "/users//orders", False),
        ("/shop.Cart/*", "/shop.Cart/GetCart", True),
        ("/shop.Cart/*", "/shop.Cartx/GetCart", False),
        ("/shop.*/*", "/shop.Orders/Add", True),
        ("re:/v[0-9]+/.*", "/v2/items", True),
    ],
)
def test_path_patterns(pattern: str, path: str, hit: bool) -> None:
    """Globs, segments, gRPC methods and regexes match as documented."""
    assert bool(compile_path(pattern).fullmatch(path)) is hit


def test_rule_validation() -> None:
    """Bad names, rates, costs and keys are refused when the rule is made."""
    with pytest.raises(ValueError):
        Rule.of("bad name", "1/second")
    with pytest.raises(ValueError):
        Rule.of("ok", "1/fortnight")
    with pytest.raises(ValueError):
        Rule.of("ok", "1/second", cost=-1)
    with pytest.raises(TypeError):
        Rule.of("ok", "1/second", key="x-user")
    with pytest.raises(ValueError):
        compile_path("items")
    rule = Rule.of("r", "1/second", methods="post", paths="/a")
    assert rule.matches(req("/a", "POST")) and not rule.matches(req("/a", "GET"))


# -- enforcer -------------------------------------------------------------------------


def enforcer(*rules: Rule, **options: Any) -> Enforcer:
    return Enforcer(Limiter(clock=FakeClock(T0)), rules, **options)


def test_allow_then_deny_with_headers() -> None:
    """Allowed requests pass with headers; the request over the limit gets a 429 problem."""
    e = enforcer(Rule.of("per-user", "2/minute", header("x-user-id"), paths="/items"))
    first = e.check(req(x_user_id="alice"))
    assert first.action == "allow" and dict(first.headers)["RateLimit"] == '"per-user";r=1;t=120'
    e.check(req(x_user_id="alice"))
    third = e.check(req(x_user_id="alice"))
    assert third.action == "deny" and third.status == 429
    assert dict(third.headers)["Retry-After"] == "90"  # next window, then 2*(60-e)/60+1 <= 2
    assert json.loads(third.body)["violated-policies"] == ["per-user"]
    assert e.check(req(x_user_id="bob")).action == "allow"
    assert e.check(req("/other", x_user_id="alice")).action == "skip"


def test_rules_are_all_or_nothing() -> None:
    """When one matching rule denies, the others are not charged."""
    e = enforcer(
        Rule.of("per-user", "5/minute", header("x-user-id")),
        Rule.of("global", "2/minute"),
    )
    assert e.check(req(x_user_id="a")).action == "allow"
    assert e.check(req(x_user_id="b")).action == "allow"
    denied = e.check(req(x_user_id="a"))
    assert denied.action == "deny" and denied.names == ("per-user", "global")
    assert denied.decision is not None and [s.remaining for s in denied.decision.limits] == [4, 0]


def test_several_rates_get_distinct_policy_names() -> None:
    """A rule with several rates names each policy by its window."""
    e = enforcer(Rule.of("api", "10/second;1000/hour"))
    out = e.check(req())
    assert out.names == ("api-1s", "api-3600s")


@pytest.mark.parametrize(
    ("policy", "action"), [("ip", "allow"), ("anonymous", "allow"), ("reject", "reject")]
)
def test_missing_identity_policy(policy: Any, action: str) -> None:
    """No identity: count per peer IP, in one anonymous bucket, or answer 401."""
    e = enforcer(Rule.of("per-user", "1/minute", header("x-user-id")), missing_identity=policy)
    out = e.check(req(client="10.1.1.1"))
    assert out.action == action
    if policy == "reject":
        assert out.status == 401
        return
    # A second anonymous request from another IP shares the bucket only for "anonymous".
    other = e.check(req(client="10.2.2.2"))
    assert other.action == ("allow" if policy == "ip" else "deny")


def test_shadow_rules_count_but_never_deny() -> None:
    """A shadow rule over its limit reports 'shadow' but the request passes and enforcing rules count."""
    e = enforcer(
        Rule.of("new-limit", "1/minute", header("x-user-id"), shadow=True),
        Rule.of("old-limit", "3/minute", header("x-user-id")),
    )
    outs = [e.check(req(x_user_id="a")) for _ in range(3)]
    assert [o.action for o in outs] == ["allow", "allow", "allow"]
    assert outs[2].shadow is not None and not outs[2].shadow.allowed
    assert outs[2].decision is not None and outs[2].decision.remaining == 0
    assert e.check(req(x_user_id="a")).action == "deny"


def test_shadow_only() -> None:
    """With only shadow rules, requests pass with headers and no Retry-After."""
    e = enforcer(Rule.of("trial", "1/minute", shadow=True))
    e.check(req())
    out = e.check(req())
    assert out.action == "allow" and "Retry-After" not in dict(out.headers)


def test_cost_functions() -> None:
    """Per-request cost from a function; a failing or bad cost function charges 1."""

    def boom(r: RequestInfo) -> int:
        raise RuntimeError("bug")

    e = enforcer(
        Rule.of("bulk", "10/minute", cost=lambda r: 4 if r.method == "POST" else 1),
        Rule.of("safe", "100/minute", cost=boom),
    )
    out = e.check(req(method="POST"))
    assert out.decision is not None and [s.remaining for s in out.decision.limits] == [6, 99]


async def test_async_twin() -> None:
    """acheck decides exactly like check and awaits async key functions."""

    async def akey(r: RequestInfo) -> str:
        return "alice"

    e = enforcer(Rule.of("per-user", "1/minute", akey))
    assert (await e.acheck(req())).action == "allow"
    assert (await e.acheck(req())).action == "deny"
    with pytest.raises(TypeError):
        e.check(req())


def test_duplicate_rule_names_refused() -> None:
    """Rule names namespace counters, so they must be unique."""
    with pytest.raises(ValueError):
        enforcer(Rule.of("a", "1/second"), Rule.of("a", "2/second"))


async def test_failing_key_function_counts_as_missing_identity() -> None:
    """A key function that raises is logged and treated as no identity, never a crash."""

    def boom(r: RequestInfo) -> str:
        raise RuntimeError("bug in user code")

    e = enforcer(Rule.of("per-user", "1/minute", boom), missing_identity="reject")
    assert e.check(req()).action == "reject"
    assert (await e.acheck(req())).action == "reject"


def test_skip_outcomes_are_not_shared() -> None:
    """Each skipped request gets its own Outcome, so an adapter may extend its headers."""
    e = enforcer(Rule.of("r", "1/minute", paths="/only"))
    first, second = e.check(req("/other")), e.check(req("/other"))
    assert first.action == second.action == "skip" and first is not second
    first.headers.append(("X", "1"))
    assert second.headers == [] and isinstance(Outcome("skip").headers, list)


def test_limits_shorthand() -> None:
    """'METHOD,METHOD /path' keys become named path rules; '*' means any method; typos are refused."""
    from ratelimit.rules import rules_from_limits

    rules = rules_from_limits({"GET,post /items/*": "5/minute", "* /admin/**": "1/minute"}, header("x-user"))
    assert [r.name for r in rules] == ["get-post-items-any", "admin-all"]
    assert rules[0].methods == {"GET", "POST"} and rules[1].methods == frozenset()
    assert rules[1].matches(req("/admin/x/y", "DELETE"))
    with pytest.raises(ValueError, match="GETT"):
        rules_from_limits({"GETT /x": "1/second"}, header("x"))


async def test_key_results_are_remembered_per_request() -> None:
    """One key function used by several rules runs once per request (a JWT is verified once)."""
    calls = []

    def counting(r: RequestInfo) -> str:
        calls.append(1)
        return "alice"

    e = enforcer(Rule.of("a", "10/minute", counting), Rule.of("b", "20/minute", counting))
    e.check(req())
    await e.acheck(req())
    assert len(calls) == 2


def test_memo_never_confuses_short_lived_keys() -> None:
    """Throwaway key functions resolved on one request never see each other's results."""
    r = req(x_a="1", x_b="2")
    for _ in range(200):
        assert resolve(header("x-a"), r) == "1"
        assert resolve(header("x-b"), r) == "2"
        assert resolve(header("x-missing"), r) is None


def test_ip_fallback_trusts_the_configured_proxies() -> None:
    """Behind a waypoint the peer is the proxy: the 'ip' fallback counts per X-Forwarded-For client."""
    e = enforcer(Rule.of("per-user", "1/minute", header("x-user-id")), trusted_proxies=1)
    via_proxy = {"client": "10.0.0.1"}
    assert e.check(req(**via_proxy, x_forwarded_for="1.1.1.1")).action == "allow"
    assert e.check(req(**via_proxy, x_forwarded_for="2.2.2.2")).action == "allow"
    assert e.check(req(**via_proxy, x_forwarded_for="9.9.9.9, 1.1.1.1")).action == "deny"
