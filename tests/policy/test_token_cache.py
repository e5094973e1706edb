"""JWTVerifier's cache of verified tokens: one signature check per token, never a wrong answer.

A token verified once is served from memory until its ``exp`` (with leeway), keyed by the
exact token string; rejected tokens are never remembered; a JWKS refresh that brings a
different key set voids every remembered verdict. Whatever the cache holds, the answer
for a token must be the one a verifier without a cache gives at that moment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import jwt.api_jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.algorithms import RSAAlgorithm

from ratelimit._policy import jwt_verify
from ratelimit._policy.jwks import JWKSCache, parse_jwks
from ratelimit._policy.jwt_verify import NO_EXP_TTL, JWTVerifier
from ratelimit.keys import jwt_subject, resolve, resolve_async
from ratelimit.request import Headers, RequestInfo
from ratelimit.testing import FakeClock

ISSUER = "https://idp.test"
AUDIENCE = "orders"
T0 = 1_700_000_000  # the fake wall clock's start

# ---------------------------------------------------------------------------- keys and tokens


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """The IdP's RSA signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    """A second RSA key: the attacker's, or the IdP's next one."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private: rsa.RSAPrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(private: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return {**data, "kid": kid}


def claims(now: float | None = None, **overrides: Any) -> dict[str, Any]:
    at = int(time.time() if now is None else now)
    return {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": at, "exp": at + 300, **overrides}


def sign(private: rsa.RSAPrivateKey, payload: dict[str, Any] | None = None, *, kid: str | None = "k1") -> str:
    """Sign raw JSON claims (PyJWS, so PyJWT's own claim checks at encoding don't interfere)."""
    body = json.dumps(claims() if payload is None else payload).encode()
    headers = {"kid": kid} if kid is not None else None
    return jwt.PyJWS().encode(body, private, algorithm="RS256", headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def static(private: rsa.RSAPrivateKey, **options: Any) -> JWTVerifier:
    return JWTVerifier(key=public_pem(private), issuer=ISSUER, audience=AUDIENCE, **options)


def cached_tokens(verifier: JWTVerifier) -> int:
    return len(verifier._cache)  # the bound is a property of the private cache itself


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token PyJWT decodes (verifies) from now on, in order."""
    calls: list[str] = []
    real = jwt.decode

    def counting(token: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return calls


# ---------------------------------------------------------------------------- a fake wall clock


@contextlib.contextmanager
def wall_clock(start: float = T0) -> Iterator[FakeClock]:
    """One fake wall clock for the token cache and for PyJWT's exp/nbf/iat checks."""
    clock = FakeClock(start)

    class FakeDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Any:
            return datetime.datetime.fromtimestamp(clock(), tz)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jwt_verify, "_wall_clock", clock)
        patch.setattr(jwt.api_jwt, "datetime", FakeDatetime)
        yield clock


@pytest.fixture
def wall() -> Iterator[FakeClock]:
    with wall_clock() as clock:
        yield clock


def test_the_fake_wall_clock_reaches_pyjwt(rsa_key: rsa.RSAPrivateKey, wall: FakeClock) -> None:
    """Sanity for the tests below: PyJWT itself judges exp by the fake clock."""
    token = sign(rsa_key, claims(T0))
    assert static(rsa_key, cache_size=0).verify(token) is not None
    wall.advance(300)
    assert static(rsa_key, cache_size=0).verify(token) is None


# ---------------------------------------------------------------------------- one check per token


def test_a_token_is_verified_once_for_many_requests(rsa_key: rsa.RSAPrivateKey, decodes: list[str]) -> None:
    """verify() checks the signature of a re-sent token once."""
    verifier = static(rsa_key)
    token = sign(rsa_key)
    results = [verifier.verify(token) for _ in range(50)]
    assert all(r is not None and r["sub"] == "alice" for r in results)
    assert decodes == [token]


async def test_averify_uses_the_cache_too(rsa_key: rsa.RSAPrivateKey, decodes: list[str]) -> None:
    """averify() shares the cache with verify(): one check whichever path sees the token first."""
    verifier = static(rsa_key)
    token, other = sign(rsa_key), sign(rsa_key, claims(sub="bob"))
    for _ in range(20):
        result = await verifier.averify(token)
        assert result is not None and result["sub"] == "alice"
    assert verifier.verify(other) is not None
    assert await verifier.averify(other) is not None
    assert decodes == [token, other]


async def test_jwt_subject_resolves_from_the_cache(rsa_key: rsa.RSAPrivateKey, decodes: list[str]) -> None:
    """The key function of issue 10: per-request resolution reuses the verdict on both paths."""
    key = jwt_subject(key=public_pem(rsa_key), issuer=ISSUER, audience=AUDIENCE)
    tokens = [sign(rsa_key, claims(sub=f"user-{i}")) for i in range(5)]

    def request(token: str) -> RequestInfo:
        return RequestInfo("http", "GET", "/", Headers([(b"authorization", f"Bearer {token}".encode())]))

    for _ in range(10):
        for i, token in enumerate(tokens):
            assert resolve(key, request(token)) == f"user-{i}"
            assert await resolve_async(key, request(token)) == f"user-{i}"
    assert decodes == tokens


def test_returned_claims_are_the_callers_own(rsa_key: rsa.RSAPrivateKey, decodes: list[str]) -> None:
    """A caller mutating the claims it got (nested values too) changes nothing for later callers."""
    verifier = static(rsa_key)
    payload = claims(aud=[AUDIENCE, "x"], roles={"admin": False})
    token = sign(rsa_key, payload)
    for _ in range(3):
        result = verifier.verify(token)
        assert result == payload
        assert result is not None
        result["sub"] = "mallory"
        result["aud"].append("billing")
        result["roles"]["admin"] = True
    flat = sign(rsa_key)
    first = verifier.verify(flat)
    assert first is not None
    first["sub"] = "mallory"
    second = verifier.verify(flat)
    assert second is not None and second["sub"] == "alice"
    assert len(decodes) == 2


def test_unverified_mode_caches_too(rsa_key2: rsa.RSAPrivateKey, decodes: list[str], wall: FakeClock) -> None:
    """verify=False decodes a token once, and still refuses it once expired."""
    verifier = JWTVerifier(verify=False, audience=AUDIENCE)
    token = sign(rsa_key2, claims(T0, exp=T0 + 60), kid="whatever")
    for _ in range(10):
        assert verifier.verify(token) is not None
    assert len(decodes) == 1
    wall.advance(60)
    assert verifier.verify(token) is None
    assert cached_tokens(verifier) == 0


# ---------------------------------------------------------------------------- time


@pytest.mark.parametrize("leeway", [0, 5, 0.5])
def test_a_cached_token_expires_at_exp_plus_leeway(
    rsa_key: rsa.RSAPrivateKey, decodes: list[str], wall: FakeClock, leeway: float
) -> None:
    """Served from memory until exp + leeway; from then verified again, refused and forgotten."""
    verifier = static(rsa_key, leeway=leeway)
    token = sign(rsa_key, claims(T0, exp=T0 + 100))
    assert verifier.verify(token) is not None
    wall.set(T0 + 100 + leeway - 0.25)
    assert verifier.verify(token) is not None
    assert len(decodes) == 1
    wall.set(T0 + 100 + leeway)
    assert verifier.verify(token) is None
    assert len(decodes) == 2
    assert cached_tokens(verifier) == 0
    assert verifier.verify(token) is None


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_not_yet_valid_is_not_served_from_the_cache(
    rsa_key: rsa.RSAPrivateKey, wall: FakeClock, claim: str
) -> None:
    """A token accepted thanks to leeway is refused from memory too when the clock steps back."""
    verifier = static(rsa_key, leeway=10)
    token = sign(rsa_key, claims(T0, **{claim: T0 + 5}))
    assert verifier.verify(token) is not None
    wall.set(T0 - 5)  # nbf/iat - leeway: still valid
    assert verifier.verify(token) is not None
    wall.set(T0 - 5.25)
    assert verifier.verify(token) is None
    wall.set(T0)
    assert verifier.verify(token) is not None


def test_a_token_without_exp_is_cached_for_a_bounded_time(
    rsa_key: rsa.RSAPrivateKey, decodes: list[str], wall: FakeClock
) -> None:
    """With `require` not listing exp, a token without one is verified again every NO_EXP_TTL."""
    verifier = static(rsa_key, require=(), leeway=30)
    payload = {k: v for k, v in claims(T0).items() if k != "exp"}
    token = sign(rsa_key, payload)
    assert verifier.verify(token) is not None
    wall.advance(NO_EXP_TTL - 0.25)
    assert verifier.verify(token) is not None
    assert len(decodes) == 1
    wall.advance(0.25)
    assert verifier.verify(token) is not None
    assert len(decodes) == 2


def test_a_huge_exp_is_cached_without_overflow(rsa_key: rsa.RSAPrivateKey, decodes: list[str]) -> None:
    """An exp far beyond what a float holds is a valid (if odd) token, and is remembered."""
    verifier = static(rsa_key, leeway=1.5)
    token = sign(rsa_key, claims(exp=10**400))
    assert verifier.verify(token) is not None
    assert verifier.verify(token) is not None
    assert len(decodes) == 1


offsets = st.one_of(st.none(), st.integers(-40, 40))
instants = st.integers(-240, 240).map(lambda q: q / 4)  # quarter seconds: exact in floats and datetimes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    exp=offsets,
    nbf=offsets,
    iat=offsets,
    leeway=st.sampled_from([0, 0.5, 5, 30]),
    first=instants,
    later=instants,
)
def test_the_cache_never_changes_an_answer(
    rsa_key: rsa.RSAPrivateKey,
    exp: int | None,
    nbf: int | None,
    iat: int | None,
    leeway: float,
    first: float,
    later: float,
) -> None:
    """Verified at one moment and asked again at another (earlier or later), a cached
    verifier answers exactly like one without a cache."""
    payload: dict[str, Any] = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE}
    for name, offset in (("exp", exp), ("nbf", nbf), ("iat", iat)):
        if offset is not None:
            payload[name] = T0 + offset
    token = sign(rsa_key, payload)
    cached = static(rsa_key, leeway=leeway, require=())
    uncached = static(rsa_key, leeway=leeway, require=(), cache_size=0)
    with wall_clock(T0 + first) as clock:
        assert cached.verify(token) == uncached.verify(token)
        clock.set(T0 + later)
        assert cached.verify(token) == uncached.verify(token)


# ---------------------------------------------------------------------------- keyed by the token


def test_a_forged_token_with_cached_claims_is_refused(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    """Header and claims of a cached token, signed by another key, still give None."""
    verifier = static(rsa_key)
    payload = claims()
    genuine = sign(rsa_key, payload)
    forged = sign(rsa_key2, payload)
    assert genuine.rsplit(".", 1)[0] == forged.rsplit(".", 1)[0]
    assert verifier.verify(genuine) is not None
    for _ in range(3):
        assert verifier.verify(forged) is None
    assert verifier.verify(genuine) is not None


@settings(max_examples=50, deadline=None)
@given(subject=st.text(min_size=1, max_size=20), extra=st.dictionaries(st.text(max_size=5), st.integers()))
def test_a_cached_signature_on_other_claims_is_refused(
    rsa_key: rsa.RSAPrivateKey, subject: str, extra: dict[str, int]
) -> None:
    """Another payload spliced in front of a cached token's valid signature gives None."""
    verifier = static(rsa_key)
    genuine = sign(rsa_key)
    assert verifier.verify(genuine) is not None
    header, _, signature = genuine.split(".")
    payload = {**extra, **claims(sub=subject)}
    spliced = f"{header}.{b64(json.dumps(payload).encode())}.{signature}"
    if spliced != genuine:
        assert verifier.verify(spliced) is None
    assert verifier.verify(genuine) is not None


def test_invalid_tokens_are_not_cached(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey, decodes: list[str]
) -> None:
    """Refused tokens stay refused, are checked every time, and a valid one still works after."""
    verifier = static(rsa_key)
    bad = [
        sign(rsa_key2),
        sign(rsa_key, claims(exp=int(time.time()) - 1)),
        sign(rsa_key, claims(aud="billing")),
        sign(rsa_key, claims(sub=42)),
    ]
    for _ in range(3):
        for token in bad:
            assert verifier.verify(token) is None
    assert len(decodes) == 3 * len(bad)
    assert cached_tokens(verifier) == 0
    assert verifier.verify(sign(rsa_key)) is not None
    assert cached_tokens(verifier) == 1


def test_only_exact_strings_are_cached(rsa_key: rsa.RSAPrivateKey, decodes: list[str]) -> None:
    """A str subclass (whose equality could be anything) is verified, never remembered."""

    class Token(str):
        pass

    verifier = static(rsa_key)
    token = Token(sign(rsa_key))
    assert verifier.verify(token) is not None
    assert verifier.verify(token) is not None
    assert len(decodes) == 2
    assert cached_tokens(verifier) == 0


# ---------------------------------------------------------------------------- bound


def test_the_cache_holds_at_most_cache_size_tokens(rsa_key: rsa.RSAPrivateKey, decodes: list[str]) -> None:
    """More distinct tokens than cache_size: the oldest make room; every answer stays right."""
    verifier = static(rsa_key, cache_size=8)
    tokens = [sign(rsa_key, claims(sub=f"user-{i}")) for i in range(30)]
    for i, token in enumerate(tokens):
        result = verifier.verify(token)
        assert result is not None and result["sub"] == f"user-{i}"
        assert cached_tokens(verifier) <= 8
    assert cached_tokens(verifier) == 8
    decodes.clear()
    assert verifier.verify(tokens[-1]) is not None  # among the newest 8
    assert verifier.verify(tokens[0]) is not None  # evicted long ago
    assert decodes == [tokens[0]]
    assert cached_tokens(verifier) == 8


def test_cache_size_zero_disables_the_cache(rsa_key: rsa.RSAPrivateKey, decodes: list[str]) -> None:
    """cache_size=0 verifies every time."""
    verifier = static(rsa_key, cache_size=0)
    token = sign(rsa_key)
    for _ in range(5):
        assert verifier.verify(token) is not None
    assert len(decodes) == 5
    assert cached_tokens(verifier) == 0


@pytest.mark.parametrize("size", [-1, True, 1.5, "10"])
def test_bad_cache_size_raises(rsa_key: rsa.RSAPrivateKey, size: Any) -> None:
    """cache_size must be an integer >= 0."""
    with pytest.raises(ValueError, match="cache_size"):
        static(rsa_key, cache_size=size)


# ---------------------------------------------------------------------------- key rotation


class JWKSServer:
    """A local IdP serving the mutable ``jwks`` document at ``url``, counting requests."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.requests = 0
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                state.requests += 1
                body = json.dumps(state.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = False  # server_close() joins the handler threads

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def idp(rsa_key: rsa.RSAPrivateKey) -> Iterator[JWKSServer]:
    """A running JWKS server publishing ``rsa_key`` as kid ``k1``."""
    server = JWKSServer({"keys": [jwk(rsa_key, "k1")]})
    yield server
    server.stop()


def remote(idp: JWKSServer, clock: FakeClock, **options: Any) -> JWTVerifier:
    return JWTVerifier(jwks_url=idp.url, issuer=ISSUER, audience=AUDIENCE, clock=clock, **options)


async def test_a_cached_token_of_a_removed_key_is_refused_after_the_ttl(
    idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey, decodes: list[str]
) -> None:
    """Past the JWKS TTL a cache hit refreshes the keys; the retired key's tokens then give None."""
    clock = FakeClock()
    verifier = remote(idp, clock, jwks_ttl=300)
    old, new = sign(rsa_key), sign(rsa_key2, kid="k2")
    for _ in range(3):
        assert verifier.verify(old) is not None
        assert await verifier.averify(old) is not None
    assert decodes == [old]
    idp.jwks = {"keys": [jwk(rsa_key2, "k2")]}
    clock.advance(299)
    assert verifier.verify(old) is not None  # within the TTL the keys are not asked for
    assert idp.requests == 1
    clock.advance(1)
    assert verifier.verify(old) is None
    assert await verifier.averify(old) is None
    assert idp.requests == 2
    assert cached_tokens(verifier) == 0
    assert await verifier.averify(new) is not None


def test_a_rotation_seen_through_an_unknown_kid_voids_the_cache(
    idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    """A refresh for a new kid that drops the old key voids cached tokens before the TTL is up."""
    clock = FakeClock()
    verifier = remote(idp, clock)
    old, new = sign(rsa_key), sign(rsa_key2, kid="k2")
    assert verifier.verify(old) is not None
    idp.jwks = {"keys": [jwk(rsa_key2, "k2")]}
    clock.advance(11)  # past jwks_min_refresh_interval, far from jwks_ttl
    assert verifier.verify(new) is not None
    assert idp.requests == 2
    assert verifier.verify(old) is None


def test_a_rotation_landing_during_a_verification_voids_its_verdict(
    idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verdict is tagged with the generation of the keys that reached it, not a later one."""
    clock = FakeClock()
    verifier = remote(idp, clock, jwks_min_refresh_interval=0)
    old = sign(rsa_key)
    assert verifier.verify(sign(rsa_key, claims(sub="warm-up"))) is not None
    real_decode = verifier._decode
    jwks = verifier._jwks
    assert jwks is not None

    def decode_while_keys_rotate(*args: Any) -> Any:
        result = real_decode(*args)
        idp.jwks = {"keys": [jwk(rsa_key2, "k2")]}
        jwks.refresh()  # lands after the old key said yes, before the verdict is stored
        return result

    monkeypatch.setattr(verifier, "_decode", decode_while_keys_rotate)
    generation = jwks.generation
    assert verifier.verify(old) is not None
    assert jwks.generation == generation + 1
    monkeypatch.undo()
    assert verifier.verify(old) is None


def test_a_refresh_with_the_same_keys_keeps_the_cache(
    idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey, decodes: list[str]
) -> None:
    """A TTL refresh bringing the same keys (reordered, one more) does not void cached tokens."""
    clock = FakeClock()
    verifier = remote(idp, clock, jwks_ttl=300)
    alice, bob = sign(rsa_key), sign(rsa_key, claims(sub="bob"))
    assert verifier.verify(alice) is not None
    assert verifier.verify(bob) is not None
    idp.jwks = {"keys": [{"kty": "RSA", "use": "enc", "kid": "e"}, jwk(rsa_key, "k1")]}
    clock.advance(301)
    assert verifier.verify(alice) is not None  # the hit that refreshes, and needs no check
    assert idp.requests == 2
    assert verifier.verify(bob) is not None
    assert decodes == [alice, bob]


def test_jwks_generation_counts_key_set_changes(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    """The generation moves when keys are added, removed or re-kidded; not for order or enc keys."""
    server = JWKSServer({"keys": [jwk(rsa_key, "k1")]})
    try:
        clock = FakeClock()
        cache = JWKSCache(server.url, ttl=0, min_refresh_interval=0, timeout=2, clock=clock)
        assert cache.generation == 0
        steps: list[tuple[list[dict[str, Any]], int]] = [
            ([jwk(rsa_key, "k1")], 1),
            ([jwk(rsa_key, "k1")], 1),
            ([jwk(rsa_key, "k1"), jwk(rsa_key2, "k2")], 2),
            ([jwk(rsa_key2, "k2"), jwk(rsa_key, "k1"), {"kty": "oct", "use": "enc", "k": "x"}], 2),
            ([jwk(rsa_key2, "k2")], 3),
            ([jwk(rsa_key2, "k3")], 4),
            ([{**jwk(rsa_key2, "k3"), "alg": "RS256"}], 5),
        ]
        for keys, generation in steps:
            server.jwks = {"keys": keys}
            clock.advance(1)
            cache.refresh()
            assert cache.generation == generation
            assert cache.snapshot() == (cache.keys, generation)
        assert cache.keys == parse_jwks(server.jwks, strict=False)
    finally:
        server.stop()


# ---------------------------------------------------------------------------- concurrency


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Threads switch as often as the interpreter allows, to shake out races."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


@pytest.mark.parametrize("cache_size", [4096, 4])
def test_concurrent_threads_get_the_right_answers(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey, busy_switching: None, cache_size: int
) -> None:
    """Threads verifying valid, forged, expired and garbage tokens, with the cache churning."""
    verifier = static(rsa_key, cache_size=cache_size)
    expected: dict[str, str | None] = {}
    for i in range(12):
        payload = claims(sub=f"user-{i}")
        expected[sign(rsa_key, payload)] = f"user-{i}"
        expected[sign(rsa_key2, payload)] = None  # same claims, forged
    expected[sign(rsa_key, claims(exp=int(time.time()) - 1))] = None
    expected["garbage.token.here"] = None
    tokens = list(expected)
    wrong: list[tuple[str, Any]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def worker(seed: int) -> None:
        try:
            start.wait()
            for n in range(150):
                token = tokens[(seed * 7 + n * 5) % len(tokens)]
                result = verifier.verify(token)
                got = None if result is None else result["sub"]
                if got != expected[token]:
                    wrong.append((token, got))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert wrong == []
    assert cached_tokens(verifier) <= cache_size


async def test_concurrent_tasks_get_the_right_answers(
    rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    """asyncio tasks and a thread share one verifier and one cache."""
    verifier = static(rsa_key, cache_size=4)
    valid = [sign(rsa_key, claims(sub=f"user-{i}")) for i in range(6)]
    forged = [sign(rsa_key2, claims(sub=f"user-{i}")) for i in range(6)]

    def in_thread() -> list[Any]:
        return [verifier.verify(t) for _ in range(20) for t in valid + forged]

    thread_results = asyncio.get_running_loop().run_in_executor(None, in_thread)
    results = await asyncio.gather(*(verifier.averify(t) for _ in range(20) for t in valid + forged))
    for n, result in enumerate(results):
        i = n % 12
        assert (result is None) if i >= 6 else (result is not None and result["sub"] == f"user-{i}")
    for n, result in enumerate(await thread_results):
        i = n % 12
        assert (result is None) if i >= 6 else (result is not None and result["sub"] == f"user-{i}")
