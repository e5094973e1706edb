"""The verified-token cache is sized by users: ``token_cache_size`` on jwt_claim/jwt_subject
and under ``identity.jwt`` in config files reaches the verifier; ``0`` verifies every time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import jwt
import pytest

from ratelimit.config import ConfigError, parse_config
from ratelimit.keys import jwt_claim, jwt_subject, resolve, resolve_async
from ratelimit.request import Headers, RequestInfo

SECRET = "s" * 32
ENV = "RL_TEST_TOKEN_CACHE_SECRET"


def token(sub: str = "alice") -> str:
    return str(jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256"))


def request(bearer: str) -> RequestInfo:
    """A fresh request each time: nothing is remembered per request between calls."""
    return RequestInfo("http", "GET", "/", Headers([("authorization", f"Bearer {bearer}")]))


@pytest.fixture
def decodes() -> Iterator[list[str]]:
    """Every token PyJWT verifies from now on, in order."""
    with mock.patch.object(jwt, "decode", wraps=jwt.decode) as spy:
        calls: list[str] = []
        spy.side_effect = lambda token, *args, **kwargs: calls.append(token) or mock.DEFAULT
        yield calls


def subject(**options: Any) -> jwt_claim:
    return jwt_subject(key=SECRET, algorithms=["HS256"], **options)


def config(jwt_settings: str, rules: str = "[{name: r, key: claim:sub, limits: 5/minute}]") -> Any:
    text = f"identity:\n  jwt: {{key_env: {ENV}, algorithms: [HS256], {jwt_settings}}}\nrules: {rules}\n"
    return parse_config(text, "rl.yaml")


def test_keyword_reaches_the_verifier() -> None:
    """jwt_subject/jwt_claim pass token_cache_size to the verifier they build; 4096 by default."""
    assert subject().verifier._cache_size == 4096
    assert subject(token_cache_size=7).verifier._cache_size == 7
    assert jwt_claim("tenant", key=SECRET, algorithms=["HS256"], token_cache_size=0).verifier._cache_size == 0


def test_a_bounded_cache_verifies_what_it_could_not_keep(decodes: list[str]) -> None:
    """token_cache_size=1 remembers one token: the other is verified again, the kept one is not."""
    key = subject(token_cache_size=1)
    first, second = token("alice"), token("bob")
    answers = [resolve(key, request(t)) for t in (first, second, second, first)]
    assert answers == ["alice", "bob", "bob", "alice"]
    assert decodes == [first, second, first]


def test_zero_verifies_a_resent_token_again(decodes: list[str]) -> None:
    """token_cache_size=0: the same token sent twice is verified twice (sync path)."""
    key = subject(token_cache_size=0)
    sent = token()
    assert [resolve(key, request(sent)) for _ in range(2)] == ["alice", "alice"]
    assert decodes == [sent, sent]


async def test_zero_verifies_a_resent_token_again_async(decodes: list[str]) -> None:
    """token_cache_size=0 on the asyncio path too; the default remembers the token."""
    sent = token()
    for size, checks in ((0, 2), (4096, 1)):
        decodes.clear()
        key = subject(token_cache_size=size)
        assert [await resolve_async(key, request(sent)) for _ in range(2)] == ["alice", "alice"]
        assert decodes == [sent] * checks


@pytest.mark.parametrize("bad", [-1, True, 1.5, "10", None])
def test_bad_sizes_are_refused(bad: Any) -> None:
    """A size that is not an integer >= 0 is a ValueError naming the parameter."""
    with pytest.raises(ValueError, match="token_cache_size must be an integer >= 0"):
        subject(token_cache_size=bad)
    with pytest.raises(ValueError, match="token_cache_size"):
        jwt_subject(trusted_header="x-user-id", token_cache_size=bad)  # refused even unused


def test_config_field_reaches_the_verifier(monkeypatch: pytest.MonkeyPatch, decodes: list[str]) -> None:
    """identity.jwt.token_cache_size sizes the config's verifier; 0 verifies a re-sent token again."""
    monkeypatch.setenv(ENV, SECRET)
    (rule,) = config("token_cache_size: 0").ruleset.rules
    assert rule.key.verifier._cache_size == 0
    sent = token()
    assert [resolve(rule.key, request(sent)) for _ in range(2)] == ["alice", "alice"]
    assert decodes == [sent, sent]
    (rule,) = config("token_cache_size: 12").ruleset.rules
    assert rule.key.verifier._cache_size == 12
    (rule,) = config("leeway: 1s").ruleset.rules
    assert rule.key.verifier._cache_size == 4096


@pytest.mark.parametrize("bad", ["-1", "lots", "true", "1.5", "[1]"])
def test_config_bad_size_names_file_line_and_field(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    """A bad identity.jwt.token_cache_size is an error at its file, line and column, naming the field."""
    monkeypatch.setenv(ENV, SECRET)
    with pytest.raises(ConfigError) as caught:
        config(f"token_cache_size: {bad}", rules="[]")
    (error,) = caught.value.errors
    assert error.startswith("rl.yaml:2:")
    assert "identity.jwt.token_cache_size: expected an integer >= 0" in error
