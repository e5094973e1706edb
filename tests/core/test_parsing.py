"""Rates, costs and identities: valid input parses, bad input gets a clear error."""

from __future__ import annotations

import doctest
import importlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ratelimit
from ratelimit import Limiter, Rate, RateParseError, parse_rates
from ratelimit._core.keyspace import KeySpace, identity_tag


@pytest.mark.parametrize(
    ("text", "limit", "window"),
    [
        ("100/minute", 100, 60),
        ("10/second", 10, 1),
        ("5000/hour", 5000, 3600),
        ("1000/day", 1000, 86400),
        ("20/30s", 20, 30),
        ("300/5m", 300, 300),
        ("1/2h", 1, 7200),
        ("10 per hour", 10, 3600),
        (" 7 / 1 MINUTE ", 7, 60),
        ("5/500ms", 5, 0.5),
        ("1_000/week", 1000, 604800),
        ("3/month", 3, 30 * 86400),
        ("0/second", 0, 1),
        ("2/1.5s", 2, 1.5),
    ],
)
def test_rate_strings(text: str, limit: int, window: float) -> None:
    """The documented rate forms parse to the expected limit and window."""
    assert Rate.parse(text) == Rate(limit, window)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "100",
        "100/",
        "/minute",
        "100/fortnight",
        "-1/minute",
        "1.5/minute",
        "100/0s",
        "abc",
        "100//minute",
        "10/1000000000d",
        f"{10**13}/second",
        "100/minute/x",
        "1/0.0001s",
    ],
)
def test_bad_rate_strings_name_the_input(text: str) -> None:
    """A bad rate string raises RateParseError quoting the input."""
    with pytest.raises(RateParseError) as info:
        Rate.parse(text)
    assert repr(text) in str(info.value) or "rate" in str(info.value)


@pytest.mark.parametrize("value", [None, 100, 1.5, b"100/minute", object()])
def test_bad_rate_types(value: object) -> None:
    """Non-string rates raise RateParseError, never a TypeError from deep inside."""
    with pytest.raises(RateParseError):
        parse_rates(value)  # type: ignore[arg-type]
    with pytest.raises(RateParseError):
        Rate.parse(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limit", "window"), [(-1, 60), (1, 0), (1, -5), (True, 60), (1, float("nan")), ("5", 60)]
)
def test_bad_rate_objects(limit: object, window: object) -> None:
    """Rate() validates its fields."""
    with pytest.raises(RateParseError):
        Rate(limit, window)  # type: ignore[arg-type]


def test_several_rates_in_one_string() -> None:
    """'10/second;1000/hour' and lists give several rates, in order."""
    assert parse_rates("10/second; 1000/hour") == (Rate(10, 1), Rate(1000, 3600))
    assert parse_rates(["10/second", Rate(5, 60)]) == (Rate(10, 1), Rate(5, 60))
    with pytest.raises(RateParseError):
        parse_rates(";")
    with pytest.raises(RateParseError):
        parse_rates([])


@given(st.integers(0, 10**12), st.integers(1, 10 * 365 * 86400 * 1000))
def test_rate_str_round_trips(limit: int, window_ms: int) -> None:
    """str(rate) parses back to the same rate."""
    rate = Rate(limit, window_ms / 1000)
    assert Rate.parse(str(rate)) == rate


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_rate_error(text: str) -> None:
    """Arbitrary text never raises anything but RateParseError."""
    try:
        rates = parse_rates(text)
    except RateParseError:
        return
    assert all(isinstance(r, Rate) for r in rates)


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_identity_tags_are_bounded_and_safe(identity: str | bytes) -> None:
    """Any identity maps to a short tag without key-structure characters."""
    tag = identity_tag(identity)
    assert 1 <= len(tag) <= 64
    assert not set(tag) & set("{}: \x00*?[]\\")


@given(
    st.lists(
        st.one_of(st.text(max_size=80), st.binary(max_size=80)),
        min_size=2,
        max_size=30,
        unique=True,
    )
)
def test_distinct_identities_never_share_keys(identities: list[str | bytes]) -> None:
    """Distinct identities get distinct counter keys (str and its UTF-8 bytes are one identity)."""
    norm = {i.encode("utf-8", "surrogatepass") if isinstance(i, str) else i for i in identities}
    keys = {KeySpace().counter_key(i, 60_000_000) for i in identities}
    assert len(keys) == len(norm)


def test_tricky_identities_do_not_collide() -> None:
    """Identities with braces, colons or NUL cannot reach another identity's keys."""
    ks = KeySpace()
    names = [
        "a",
        "{a}",
        "a}",
        "{a",
        "a:60000",
        "a\x00",
        "#a",
        "a:{b}:1",
        "",
        " ",
        "a" * 65,
        "a" * 64,
    ]
    keys = [ks.counter_key(n, 60_000_000) for n in names]
    assert len(set(keys)) == len(names)
    assert all(k.count("{") == 1 and k.count("}") == 1 for k in keys)
    assert max(len(k) for k in keys) < 100


def test_fixed_hash_tag_puts_every_key_in_one_slot() -> None:
    """With hash_tag set, every identity's keys share the tag; prefixes must not contain braces."""
    ks = KeySpace("rl", hash_tag="app")
    assert ks.counter_key("alice", 1_000_000).startswith("rl:{app}:")
    assert ks.identity_prefix("alice") == "rl:{app}:alice:"
    with pytest.raises(ValueError):
        KeySpace("r{l}")
    with pytest.raises(ValueError):
        KeySpace("rl", hash_tag="")


@pytest.mark.parametrize("cost", [-1, 1.5, True, "1", None])
def test_bad_costs(cost: object) -> None:
    """A cost must be an int >= 0; anything else is a clear TypeError or ValueError."""
    limiter = Limiter()
    with pytest.raises((TypeError, ValueError), match="cost"):
        limiter.hit("a", "1/second", cost=cost)  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError), match="cost"):
        limiter.hit_many([("a", "1/second", cost)])  # type: ignore[list-item]


@pytest.mark.parametrize("identity", [None, 5, 1.0, ["a"], object()])
def test_bad_identities(identity: object) -> None:
    """Identities are str or bytes; others raise TypeError naming the type."""
    with pytest.raises(TypeError, match="identity"):
        Limiter().hit(identity, "1/second")  # type: ignore[arg-type]


def test_bad_hit_many_items() -> None:
    """hit_many rejects malformed items and empty requests."""
    limiter = Limiter()
    with pytest.raises(TypeError):
        limiter.hit_many(["a"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        limiter.hit_many([])


@pytest.mark.parametrize(
    "storage", ["mongodb://x", "nonsense", "redis+cluster://h:notaport", "redis+sentinel://h:26379"]
)
def test_bad_storage_urls(storage: str) -> None:
    """Unknown or malformed storage URLs raise ValueError naming them."""
    with pytest.raises(ValueError):
        Limiter(storage)


@pytest.mark.parametrize(
    "module",
    [
        "ratelimit",
        "ratelimit._core.rate",
        "ratelimit._core.keyspace",
        "ratelimit.testing",
        "ratelimit._core.decision",
    ],
)
def test_doctests(module: str) -> None:
    """The examples in docstrings run."""
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0
    assert ratelimit.__version__


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0?socket_timeout=10",
        "rediss://h:6380/0?socket_connect_timeout=5",
        "redis+cluster://h:7000,h:7001?retry_on_timeout=true",
        "unix:///tmp/redis.sock?socket_timeout=3",
    ],
)
def test_url_options_cannot_override_the_budget(url: str) -> None:
    """Socket timeouts in a Redis URL are refused: the limiter's timeout= governs."""
    with pytest.raises(ValueError, match="timeout budget"):
        Limiter(url)


def test_clock_with_a_backend_instance_is_refused() -> None:
    """clock= with a ready backend is an error, not silently ignored."""
    from ratelimit.backends import MemoryBackend
    from ratelimit.testing import FakeClock

    with pytest.raises(ValueError, match="clock"):
        Limiter(MemoryBackend(), clock=FakeClock())
