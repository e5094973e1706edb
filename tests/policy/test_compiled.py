"""The compiled request plan gives the same decisions and headers as the general path.

Two enforcers with the same rules and settings, one deciding through compiled plans
(the default) and one with ``compiled=False``, each on its own memory limiter under one
shared fake clock, answer the same random request sequences; every outcome must match
field for field. Also on Redis: the fast path's counters are the general path's.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimit import Enforcer, Limiter, RequestInfo, Rule
from ratelimit._policy.compiled import CompiledRules, HeaderRenderer, RulePlan
from ratelimit.enforce import Outcome
from ratelimit.headers import encode_fields, problem_body, rate_limit_headers
from ratelimit.keys import header
from ratelimit.matchers import HeaderMatch
from ratelimit.request import Headers
from ratelimit.testing import FakeClock

RATES = ["3/second", "5/minute", "2/second;4/minute", "1/second", "10/hour"]
PATHS = ["/items", "/items/1", "/other", "/admin/x"]
USERS = [None, "alice", "bob", "", "  carol  "]


@st.composite
def rules(draw: st.DrawFn) -> list[Rule]:
    n = draw(st.integers(1, 3))
    out = []
    for i in range(n):
        out.append(
            Rule.of(
                f"r{i}",
                draw(st.sampled_from(RATES)),
                header(draw(st.sampled_from(["x-user", "x-tenant"]))),
                paths=draw(st.sampled_from([(), ("/items",), ("/items/*",), ("/items", "/other")])),
                methods=draw(st.sampled_from([(), ("GET",), ("POST",)])),
                cost=draw(st.sampled_from([1, 1, 0, 2])),
                shadow=draw(st.booleans()) and i > 0,
                missing=draw(st.sampled_from([None, "ip", "anonymous", "reject"])),
                headers=draw(st.sampled_from([(), (HeaderMatch("x-beta", "exact", "1"),)])),
            )
        )
    return out


requests = st.lists(
    st.tuples(
        st.sampled_from(PATHS),
        st.sampled_from(["GET", "POST"]),
        st.sampled_from(USERS),
        st.sampled_from([None, "t1", "t2"]),
        st.booleans(),  # x-beta: 1
        st.sampled_from([0.0, 0.0, 0.05, 0.4, 1.0, 30.0]),
    ),
    min_size=1,
    max_size=40,
)


def request_info(path: str, method: str, user: str | None, tenant: str | None, beta: bool) -> RequestInfo:
    pairs = [(b"host", b"example.test")]
    if user is not None:
        pairs.append((b"x-user", user.encode()))
    if tenant is not None:
        pairs.append((b"x-tenant", tenant.encode()))
    if beta:
        pairs.append((b"x-beta", b"1"))
    return RequestInfo("http", method, path, Headers(pairs), "10.0.0.7", "example.test")


def view(outcome: Outcome) -> tuple[Any, ...]:
    raw = outcome.raw_headers  # before .headers: a compiled outcome renders bytes directly
    assert raw == encode_fields(outcome.headers)
    assert outcome.raw_headers == raw  # and again, once the text exists
    d = outcome.decision
    numbers = None if d is None else (d.allowed, d.limit, d.remaining, d.reset_after, d.retry_after)
    return (outcome.action, outcome.status, outcome.headers, outcome.body, outcome.names, numbers)


def pair(
    rule_list: list[Rule], headers: bool, legacy: bool, missing: str
) -> tuple[FakeClock, Enforcer, Enforcer]:
    clock = FakeClock()
    made = [
        Enforcer.for_adapter(
            Limiter(clock=clock),
            "test",
            rule_list,
            headers=headers,
            legacy_headers=legacy,
            missing_identity=missing,  # type: ignore[arg-type]
            compiled=compiled,
        )
        for compiled in (True, False)
    ]
    return clock, made[0], made[1]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules(), requests, st.booleans(), st.booleans(), st.sampled_from(["ip", "anonymous", "reject"]))
def test_compiled_equals_general_sync(
    rule_list: list[Rule], seq: list[Any], headers: bool, legacy: bool, missing: str
) -> None:
    """Sync check: identical outcomes, request after request."""
    clock, fast, slow = pair(rule_list, headers, legacy, missing)
    for path, method, user, tenant, beta, step in seq:
        clock.advance(step)
        a = fast.check(request_info(path, method, user, tenant, beta))
        b = slow.check(request_info(path, method, user, tenant, beta))
        assert view(a) == view(b)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules(), requests, st.booleans(), st.booleans())
def test_compiled_equals_general_async(
    rule_list: list[Rule], seq: list[Any], headers: bool, legacy: bool
) -> None:
    """Async acheck: identical outcomes too."""
    clock, fast, slow = pair(rule_list, headers, legacy, "ip")

    async def run() -> None:
        for path, method, user, tenant, beta, step in seq:
            clock.advance(step)
            a = await fast.acheck(request_info(path, method, user, tenant, beta))
            b = await slow.acheck(request_info(path, method, user, tenant, beta))
            assert view(a) == view(b)

    asyncio.run(run())


def test_the_fast_path_is_taken() -> None:
    """A plain rule compiles; tiers, shadow, cost functions and several lookups do not."""
    plain = Rule.of("plain", "5/minute", header("x-user"))
    assert RulePlan.compiles(plain)
    assert not RulePlan.compiles(Rule.of("s", "5/minute", header("x-user"), shadow=True))
    assert not RulePlan.compiles(Rule.of("c", "5/minute", header("x-user"), cost=lambda r: 2))
    assert not RulePlan.compiles(Rule.of("u", "unlimited", header("x-user")))
    compiled = CompiledRules([plain], legacy=False)
    matched = compiled.matching(request_info("/x", "GET", "alice", None, False))
    assert compiled.plan_for(matched) is not None


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(RATES),
    st.booleans(),
    st.integers(0, 10),
    st.floats(0, 4000, allow_nan=False),
    st.floats(0, 4000, allow_nan=False),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_renderer_equals_rate_limit_headers(
    rates: str,
    allowed: bool,
    remaining: int,
    reset: float,
    retry: float,
    legacy: bool,
    fallback: bool,
    odd_retry: bool,
) -> None:
    """The precomputed renderer writes what ``rate_limit_headers`` writes, as text and as bytes."""
    from ratelimit import Decision, LimitStatus
    from ratelimit.rules import parse_limits

    parsed = parse_limits(rates)
    rule = Rule.of("p", rates)
    # odd_retry: an allowed decision that still carries a retry time (never made by the
    # engine today) must render as the general function would, not as the fast path.
    retry_after = retry if odd_retry or not allowed else 0.0
    status = LimitStatus("u", parsed[0], 1, allowed, remaining, reset, retry_after)
    decision = Decision(allowed, parsed[0].limit, remaining, reset, retry_after, (status,), fallback)
    if len(parsed) > 1:
        return  # several limits render through rate_limit_headers itself
    renderer = HeaderRenderer(rule.policy_names, rule.rates, legacy)
    expected = rate_limit_headers(decision, rule.policy_names, rule.rates, legacy=legacy)
    assert renderer.render(decision) == expected
    assert renderer.render_raw(decision) == encode_fields(expected)
    if not allowed:
        assert renderer.body(decision) == problem_body(decision, rule.policy_names)


def test_compiled_and_general_share_redis_counters(redis_url: str) -> None:
    """On Redis the fast path writes the counters the general path reads."""
    prefix = f"cmp-{uuid.uuid4().hex[:8]}"
    rule = Rule.of("shared", "3/minute", header("x-user"))
    with Limiter(redis_url, prefix=prefix) as limiter:
        fast = Enforcer.for_adapter(limiter, "test", [rule])
        slow = Enforcer.for_adapter(limiter, "test", [rule], compiled=False)
        info = request_info("/items", "GET", "dave", None, False)
        actions = [e.check(info).action for e in (fast, slow, fast, slow)]
    assert actions == ["allow", "allow", "allow", "deny"]


def test_a_failing_key_runs_once_and_counts_as_missing(caplog: Any) -> None:
    """A key function that raises is run once per request, logged once, and the
    missing-identity policy applies (per client IP here), on both paths alike."""
    calls = []

    def broken(request: RequestInfo) -> str:
        calls.append(1)
        raise RuntimeError("boom")

    rule = Rule.of("broken", "5/minute", broken)
    clock = FakeClock()
    for compiled in (True, False):
        enforcer = Enforcer.for_adapter(Limiter(clock=clock), "test", [rule], compiled=compiled)
        calls.clear()
        caplog.clear()
        outcome = enforcer.check(request_info("/items", "GET", "alice", None, False))
        assert outcome.action == "allow" and outcome.decision is not None
        assert (
            asyncio.run(enforcer.acheck(request_info("/items", "GET", "alice", None, False))).action
            == "allow"
        )
        assert len(calls) == 2  # once per request, sync and async
        assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 2
        assert enforcer.limiter.peek("broken/ip:10.0.0.7", "5/minute").remaining == 3
