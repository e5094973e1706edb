"""Model-based proof: the Lua script and the Python reference give identical answers.

Random sequences of (time step, identities, rates, costs, commit, batching) are run on
the Python reference (``run_batch``, what the memory backend executes), on the Lua
script in fakeredis and on the Lua script in a real redis-server, all on the same
clock. Every raw answer (allowed, counts, server time) must be identical, and so must
the Decisions built from them.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.lua_harness import run_lua

from ratelimit._core.keyspace import KeySpace
from ratelimit._core.plan import Plan, decide, make_plan
from ratelimit._core.rate import Rate
from ratelimit._core.window import run_batch
from ratelimit.backends.memory import _BoundedStore

T0_US = 1_700_000_000_123_456
RATES = [Rate(limit, window) for limit in (0, 1, 3, 10, 1000) for window in (1, 2.5, 60, 3600)]
_prefixes = itertools.count()

item = st.tuples(st.integers(0, 2), st.sampled_from(RATES), st.integers(0, 4))
request = st.tuples(st.lists(item, min_size=1, max_size=3), st.booleans())
# A step: advance the clock, then send 1-4 requests in one script call.
step = st.tuples(
    st.one_of(
        st.integers(0, 300_000),
        st.integers(0, 5_000_000),
        st.sampled_from([0, 1, 999_999, 1_000_000, 2_500_000, 60_000_000, 7_200_000_000]),
    ),
    st.lists(request, min_size=1, max_size=4),
)
history = st.lists(step, min_size=1, max_size=40)


def plans_for(keyspace: KeySpace, requests: list[tuple[list[tuple[int, Rate, int]], bool]]) -> list[Plan]:
    out = []
    for items, commit in requests:
        # make_plan merges limits sharing a counter; that is part of what is compared.
        out.append(make_plan(keyspace, [(f"id{i}", rate, cost) for i, rate, cost in items], commit))
    return out


def reference(store: _BoundedStore, plans: list[Plan], now: int) -> list[tuple[bool, Any, Any]]:
    store.now = now
    answers = run_batch(store, now, [(p.commit, p.keys, p.args) for p in plans])
    pairs = zip(answers, plans, strict=True)
    return [(allowed, (now,) * len(p.keys), counts) for (allowed, counts), p in pairs]


def check_history(client: Any, steps: list[Any]) -> None:
    keyspace = KeySpace(f"model{next(_prefixes)}")
    store = _BoundedStore(10_000)
    now = T0_US
    for advance, requests in steps:
        now += advance
        plans = plans_for(keyspace, requests)
        want = reference(store, plans, now)
        got = run_lua(client, plans, now)
        assert [(a, tuple(n), list(c)) for a, n, c in got] == [(a, tuple(n), list(c)) for a, n, c in want]
        for plan, mine, theirs in zip(plans, want, got, strict=True):
            assert decide(plan, *mine) == decide(plan, *theirs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history)
def test_lua_in_fakeredis_matches_reference(steps: list[Any]) -> None:
    """fakeredis running the Lua agrees with the Python reference on random traffic."""
    import fakeredis

    client = fakeredis.FakeRedis()
    try:
        check_history(client, steps)
    finally:
        client.close()


@pytest.fixture(scope="module")
def real_client(redis_server: Any) -> Any:
    client = redis_server.client()
    yield client
    client.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=history)
def test_lua_in_real_redis_matches_reference(real_client: Any, steps: list[Any]) -> None:
    """A real redis-server running the Lua agrees with the Python reference."""
    check_history(real_client, steps)


@settings(max_examples=300, deadline=None)
@given(history, st.sampled_from(RATES[4:]), st.integers(1, 4))
def test_retry_after_is_exact(steps: list[Any], rate: Rate, cost: int) -> None:
    """After a denial, the same hit fits exactly retry_after later, not a microsecond sooner."""
    keyspace = KeySpace("retry")
    store = _BoundedStore(10_000)
    now = T0_US
    for advance, requests in steps:
        now += advance
        reference(store, plans_for(keyspace, requests), now)
    probe = make_plan(keyspace, [("id0", rate, cost)], False)
    d = decide(probe, *reference(store, [probe], now)[0])
    if d.allowed:
        assert d.retry_after == 0
        return
    wait = round(d.retry_after * 1e6)
    if cost > rate.limit:
        assert wait == rate.window_us
        return
    # Earlier probe first: the store forgets expired counters, so time must not go back.
    assert reference(store, [probe], now + wait - 1)[0][0] is False
    assert reference(store, [probe], now + wait)[0][0] is True
