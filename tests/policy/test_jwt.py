"""JWTVerifier: only a fully verified token may name an identity; everything else is None."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ratelimit._policy.jwt_verify import MAX_TOKEN_LENGTH, JWTVerifier, bearer_token
from ratelimit.testing import FakeClock

ISSUER = "https://idp.test"
AUDIENCE = "orders"

# ---------------------------------------------------------------------------- keys


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """The IdP's RSA signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key2() -> rsa.RSAPrivateKey:
    """A second RSA key: the attacker's, or the IdP's next one."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    """A P-256 signing key."""
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(private: Any) -> str:
    return str(
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(private: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(private, rsa.RSAPrivateKey) else ECAlgorithm
    data: dict[str, Any] = algorithm.to_jwk(private.public_key(), as_dict=True)
    if kid is not None:
        data["kid"] = kid
    return {**data, **extra}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **overrides}


def sign(
    private: Any, payload: dict[str, Any] | None = None, *, kid: str | None = "k1", alg: str = "RS256"
) -> str:
    """Sign raw JSON claims (PyJWS, so PyJWT's own claim checks at encoding don't interfere)."""
    body = json.dumps(claims() if payload is None else payload).encode()
    return jwt.PyJWS().encode(body, private, algorithm=alg, headers={"kid": kid} if kid is not None else None)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: Any, payload: Any, signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"


# ---------------------------------------------------------------------------- JWKS server


class JWKSServer:
    """A local IdP serving ``jwks`` at ``url``, counting requests; ``delay`` stalls answers."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.requests = 0
        self.delay = 0.0
        self.status = 200
        self.body: bytes | None = None
        self.wake = threading.Event()
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                state.requests += 1
                if state.delay:
                    state.wake.wait(state.delay)
                body = state.body if state.body is not None else json.dumps(state.jwks).encode()
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = False  # server_close() joins the handler threads

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and hung up is expected here

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        """Take the IdP down: connections are refused from now on."""
        if not self._stopped:
            self._stopped = True
            self.wake.set()
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()


@pytest.fixture
def idp(rsa_key: rsa.RSAPrivateKey) -> Iterator[JWKSServer]:
    """A running JWKS server publishing ``rsa_key`` as kid ``k1``."""
    server = JWKSServer()
    server.jwks = {"keys": [jwk(rsa_key, "k1")]}
    yield server
    server.stop()


def remote(idp: JWKSServer, **options: Any) -> JWTVerifier:
    return JWTVerifier(jwks_url=idp.url, issuer=ISSUER, audience=AUDIENCE, **options)


# ---------------------------------------------------------------------------- claims


def test_valid_token_gives_claims(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """A token signed by the published key with the right iss/aud yields its claims."""
    result = remote(idp).verify(sign(rsa_key))
    assert result is not None
    assert result["sub"] == "alice"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(claims(exp=int(time.time()) - 1), id="expired"),
        pytest.param(claims(nbf=int(time.time()) + 600), id="nbf-future"),
        pytest.param(claims(iss="https://evil.test"), id="wrong-issuer"),
        pytest.param(claims(aud="billing"), id="wrong-audience"),
        pytest.param({k: v for k, v in claims().items() if k != "exp"}, id="no-exp"),
        pytest.param({k: v for k, v in claims().items() if k != "iss"}, id="no-iss"),
        pytest.param({k: v for k, v in claims().items() if k != "aud"}, id="no-aud"),
    ],
)
def test_invalid_claims_give_none(
    idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, payload: dict[str, Any]
) -> None:
    """Expired, not-yet-valid, wrong iss/aud and missing required claims are refused."""
    assert remote(idp).verify(sign(rsa_key, payload)) is None


@pytest.mark.parametrize(
    "override",
    [
        {"exp": "99999999999"},
        {"exp": True},
        {"exp": float("inf")},
        {"exp": [1]},
        {"nbf": "soon"},
        {"iat": {"at": 1}},
        {"sub": 42},
        {"iss": ["https://idp.test"]},
        {"aud": 7},
        {"aud": ["orders", 7]},
        {"jti": 5},
    ],
    ids=repr,
)
def test_wrongly_typed_claims_give_none(
    idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, override: dict[str, Any]
) -> None:
    """A correctly signed token whose standard claims have the wrong JSON type is refused."""
    assert remote(idp).verify(sign(rsa_key, claims(**override))) is None


@pytest.mark.parametrize("override", [{"nbf": 10**400}, {"iat": 10**400}, {"exp": -(10**400)}], ids=repr)
def test_huge_numbers_give_none(
    idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, override: dict[str, Any]
) -> None:
    """Integers too large for a float are refused without raising."""
    assert remote(idp).verify(sign(rsa_key, claims(**override))) is None


def test_leeway_and_audience_lists(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """Leeway tolerates clock skew; one matching audience out of several suffices."""
    verifier = JWTVerifier(jwks_url=idp.url, audience=["billing", "orders"], leeway=30)
    token = sign(rsa_key, claims(exp=int(time.time()) - 5, aud=["x", "orders"]))
    assert verifier.verify(token) is not None


def test_unconfigured_audience_is_not_checked(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """Without `audience`, a token carrying any aud verifies (PyJWT alone would refuse it)."""
    assert JWTVerifier(jwks_url=idp.url).verify(sign(rsa_key, claims(aud="anything"))) is not None


# ---------------------------------------------------------------------------- forgery


def test_token_signed_by_another_key_gives_none(idp: JWKSServer, rsa_key2: rsa.RSAPrivateKey) -> None:
    """A forged token (right kid, attacker's key) is refused."""
    assert remote(idp).verify(sign(rsa_key2)) is None


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_gives_none(idp: JWKSServer, alg: str) -> None:
    """Unsigned tokens are refused whatever the spelling of `none`."""
    assert remote(idp).verify(raw_token({"alg": alg, "kid": "k1"}, claims())) is None
    with pytest.raises(ValueError, match="none"):
        JWTVerifier(jwks_url=idp.url, algorithms=["RS256", "none"])


def hs256_with_pem_secret(pem: str, kid: str | None) -> str:
    header = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    unsigned = raw_token(header, claims()).rsplit(".", 1)[0]
    mac = hmac.new(pem.encode(), unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{b64(mac)}"


def test_rs256_to_hs256_confusion_gives_none(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """An HS256 token MACed with the public RSA key as secret is refused in every setup."""
    pem = public_pem(rsa_key)
    token = hs256_with_pem_secret(pem, "k1")
    assert remote(idp).verify(token) is None
    assert JWTVerifier(key=pem, issuer=ISSUER, audience=AUDIENCE).verify(token) is None
    assert JWTVerifier(key=pem, algorithms=["RS256"]).verify(hs256_with_pem_secret(pem, None)) is None
    secret = "s" * 32
    mixed = JWTVerifier(key=[pem, secret], algorithms=["RS256", "HS256"], audience=AUDIENCE)
    assert mixed.verify(token) is None
    assert mixed.verify(hs256_with_pem_secret(pem, None)) is None
    assert mixed.verify(jwt.encode(claims(), secret, algorithm="HS256")) is not None
    assert mixed.verify(sign(rsa_key)) is not None
    with pytest.raises(ValueError, match="shared secret"):
        JWTVerifier(key=pem, algorithms=["RS256", "HS256"])
    with pytest.raises(ValueError, match="JWKS URL"):
        JWTVerifier(jwks_url=idp.url, algorithms=["HS256"])


def test_header_alg_outside_the_list_gives_none(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """A token is refused when its header alg is not in `algorithms`, even with a valid signature."""
    assert remote(idp, algorithms=["ES256"]).verify(sign(rsa_key)) is None
    assert remote(idp, algorithms=["RS256"]).verify(sign(rsa_key, alg="PS256")) is None
    assert remote(idp, algorithms=["PS256"]).verify(sign(rsa_key, alg="PS256")) is not None
    pinned = JWTVerifier(
        key=jwk(rsa_key, "k1", alg="RS256"), algorithms=["RS256", "PS256"], audience=AUDIENCE
    )
    assert pinned.verify(sign(rsa_key, alg="PS256")) is None
    assert pinned.verify(sign(rsa_key, alg="RS256")) is not None


# ---------------------------------------------------------------------------- malformed input

MALFORMED: list[Any] = [
    None,
    42,
    b"a.b.c",
    "",
    "abc",
    "a.b",
    "a.b.c.d.e",
    "!!!.@@@.###",
    "eyJhbGciOiJSUzI1NiJ9.e30",
    "äöü.äöü.äöü",
    " eyJhbGciOiJSUzI1NiJ9.e30.e30",
    raw_token([1, 2], {}),
    raw_token("RS256", {}),
    raw_token({"alg": "RS256", "kid": 7}, claims()),
    raw_token({"alg": ["RS256"]}, claims()),
    raw_token({"alg": "RS256", "kid": "k1"}, [1, 2]),
    raw_token({"alg": "RS256", "kid": "k1"}, None),
    raw_token({"alg": "RS256", "kid": "k1", "crit": ["exp"]}, claims()),
    b64(b"{not json") + "." + b64(b"{}") + "." + b64(b"sig"),
    b64(b"[" * 5000) + ".e30.e30",
]


@pytest.mark.parametrize("token", MALFORMED, ids=lambda t: repr(t)[:40])
def test_malformed_input_gives_none(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, token: Any) -> None:
    """Garbage of any type or shape yields None and never raises, with static keys or a JWKS."""
    assert JWTVerifier(key=public_pem(rsa_key)).verify(token) is None
    assert remote(idp).verify(token) is None


def test_token_over_16_kib_gives_none(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """Tokens longer than 16 KiB are refused before parsing; a padded token just under verifies."""
    big = sign(rsa_key, claims(pad="x" * 11_000))
    huge = sign(rsa_key, claims(pad="x" * 12_500))
    assert len(big) <= MAX_TOKEN_LENGTH < len(huge)
    verifier = remote(idp)
    assert verifier.verify(big) is not None
    assert verifier.verify(huge) is None


# ---------------------------------------------------------------------------- static keys


@pytest.mark.parametrize("form", ["pem", "pem-bytes", "jwk", "jwks", "list"])
def test_static_key_forms(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey, form: str) -> None:
    """`key` accepts PEM str/bytes, a JWK, a JWKS and a list of those."""
    pem = public_pem(rsa_key)
    key: Any = {
        "pem": pem,
        "pem-bytes": pem.encode(),
        "jwk": jwk(rsa_key, "k1"),
        "jwks": {"keys": [jwk(ec_key, "e1"), jwk(rsa_key, "k1"), {"kty": "RSA", "use": "enc"}]},
        "list": [public_pem(ec_key), jwk(rsa_key, "k1")],
    }[form]
    verifier = JWTVerifier(key=key, audience=AUDIENCE)
    assert verifier.verify(sign(rsa_key)) is not None
    assert verifier.verify(sign(rsa_key, kid=None)) is not None


def test_kid_selects_the_key(rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey) -> None:
    """A token is checked against the key its kid names, not any key that happens to match."""
    verifier = JWTVerifier(key={"keys": [jwk(rsa_key, "k1"), jwk(rsa_key2, "k2")]}, audience=AUDIENCE)
    assert verifier.verify(sign(rsa_key2, kid="k2")) is not None
    assert verifier.verify(sign(rsa_key2, kid="k1")) is None
    assert verifier.verify(sign(rsa_key2, kid=None)) is not None


def test_ec_and_eddsa_keys(ec_key: ec.EllipticCurvePrivateKey) -> None:
    """ES256 and EdDSA tokens verify with their keys, and never with each other's."""
    ed_key = ed25519.Ed25519PrivateKey.generate()
    verifier = JWTVerifier(key=[public_pem(ec_key), public_pem(ed_key)], audience=AUDIENCE)
    assert verifier.verify(sign(ec_key, alg="ES256")) is not None
    assert verifier.verify(sign(ed_key, alg="EdDSA")) is not None
    assert verifier.verify(sign(ec.generate_private_key(ec.SECP256R1()), alg="ES256")) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one"),
        ({"key": "x", "jwks_url": "http://idp.test/jwks"}, "exactly one"),
        ({"jwks_url": "file:///etc/passwd"}, "http"),
        ({"key": "not a pem"}, "PEM"),
        ({"key": "short", "algorithms": ["HS256"]}, "32 bytes"),
        ({"key": "s" * 32, "algorithms": ["RS256", "XS999"]}, "unsupported"),
        ({"jwks_url": "http://idp.test/jwks", "algorithms": []}, "non-empty"),
    ],
)
def test_bad_configuration_raises(options: dict[str, Any], message: str) -> None:
    """Configuration mistakes fail loudly at construction, unlike bad tokens."""
    with pytest.raises(ValueError, match=message):
        JWTVerifier(**options)


def test_weak_rsa_key_is_refused() -> None:
    """RSA keys under 2048 bits are refused in configuration."""
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="2048"):
        JWTVerifier(key=public_pem(weak))


def test_missing_pyjwt_raises_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PyJWT the verifier explains which extra to install."""
    monkeypatch.setitem(sys.modules, "jwt", None)
    with pytest.raises(ImportError, match=r"ambient-ratelimit\[jwt\]"):
        JWTVerifier(jwks_url="http://idp.test/jwks")


# ---------------------------------------------------------------------------- JWKS fetching


def test_jwks_is_fetched_lazily_and_cached(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """The JWKS is fetched on the first verify, then served from cache."""
    verifier = remote(idp)
    assert idp.requests == 0
    for _ in range(50):
        assert verifier.verify(sign(rsa_key)) is not None
    assert idp.requests == 1


def test_jwks_is_refetched_after_ttl(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """Keys older than jwks_ttl are fetched again, once."""
    clock = FakeClock()
    verifier = remote(idp, jwks_ttl=300, clock=clock)
    token = sign(rsa_key)
    assert verifier.verify(token) is not None
    clock.advance(299)
    assert verifier.verify(token) is not None
    assert idp.requests == 1
    clock.advance(2)
    assert verifier.verify(token) is not None
    assert verifier.verify(token) is not None
    assert idp.requests == 2


def test_key_rotation_triggers_one_refresh(
    idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    """A token with a new kid refreshes the JWKS once and then verifies."""
    clock = FakeClock()
    verifier = remote(idp, clock=clock)
    assert verifier.verify(sign(rsa_key)) is not None
    idp.jwks = {"keys": [jwk(rsa_key, "k1"), jwk(rsa_key2, "k2")]}
    clock.advance(60)
    for _ in range(5):
        assert verifier.verify(sign(rsa_key2, kid="k2")) is not None
    assert verifier.verify(sign(rsa_key)) is not None
    assert idp.requests == 2


def test_unknown_kid_within_min_interval_waits(
    idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    """A new kid seen right after a fetch is refused until jwks_min_refresh_interval has passed."""
    clock = FakeClock()
    verifier = remote(idp, jwks_min_refresh_interval=10, clock=clock)
    assert verifier.verify(sign(rsa_key)) is not None
    idp.jwks = {"keys": [jwk(rsa_key2, "k2")]}
    clock.advance(9)
    assert verifier.verify(sign(rsa_key2, kid="k2")) is None
    clock.advance(1)
    assert verifier.verify(sign(rsa_key2, kid="k2")) is not None
    assert idp.requests == 2


def test_unknown_kid_flood_refreshes_at_most_once(
    idp: JWKSServer, rsa_key: rsa.RSAPrivateKey, rsa_key2: rsa.RSAPrivateKey
) -> None:
    """100 tokens with random kids cause one refresh per min interval, not one each."""
    clock = FakeClock()
    verifier = remote(idp, jwks_min_refresh_interval=10, clock=clock)
    assert verifier.verify(sign(rsa_key)) is not None
    clock.advance(11)
    for _ in range(100):
        assert verifier.verify(sign(rsa_key2, kid=uuid.uuid4().hex)) is None
    assert idp.requests == 2
    clock.advance(11)
    for _ in range(100):
        assert verifier.verify(sign(rsa_key2, kid=uuid.uuid4().hex)) is None
    assert idp.requests == 3
    assert verifier.verify(sign(rsa_key)) is not None


def test_concurrent_first_verifies_share_one_fetch(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """Threads verifying while the first fetch is in flight wait for it instead of fetching."""
    idp.delay = 0.2
    verifier = remote(idp)
    token = sign(rsa_key)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(verifier.verify(token))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert idp.requests == 1
    assert len(results) == 16
    assert all(r is not None for r in results)


@pytest.mark.parametrize("failure", ["refused", "http-503", "not-json", "no-keys", "bad-key"])
def test_idp_down_keeps_cached_keys(
    idp: JWKSServer,
    rsa_key: rsa.RSAPrivateKey,
    rsa_key2: rsa.RSAPrivateKey,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    """When the IdP fails, unknown kids give None and the cached keys keep working, even past the TTL."""
    clock = FakeClock()
    verifier = remote(idp, clock=clock)
    assert verifier.verify(sign(rsa_key)) is not None
    if failure == "refused":
        idp.stop()
    idp.status = 503 if failure == "http-503" else 200
    idp.body = {"not-json": b"<html>", "no-keys": b'{"keys": []}'}.get(failure)
    if failure == "bad-key":
        idp.jwks = {"keys": [{"kty": "RSA", "kid": "k2", "n": "!!", "e": "AQAB"}]}
    clock.advance(400)
    with caplog.at_level(logging.WARNING, logger="ratelimit"):
        assert verifier.verify(sign(rsa_key2, kid="k2")) is None
        assert verifier.verify(sign(rsa_key)) is not None
    assert "JWKS fetch" in caplog.text


def test_idp_never_reached_gives_none(rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture) -> None:
    """With no keys ever fetched every token is refused, and retries respect the min interval."""
    server = JWKSServer()
    server.stop()
    clock = FakeClock()
    verifier = JWTVerifier(jwks_url=server.url, audience=AUDIENCE, clock=clock)
    token = sign(rsa_key)
    with caplog.at_level(logging.WARNING, logger="ratelimit"):
        for _ in range(20):
            assert verifier.verify(token) is None
        assert caplog.text.count("JWKS fetch") == 1
        clock.advance(10)
        assert verifier.verify(token) is None
        assert caplog.text.count("JWKS fetch") == 2


def test_fetch_timeout_is_bounded(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """A stalled IdP costs about fetch_timeout, not forever."""
    idp.delay = 5.0
    verifier = remote(idp, fetch_timeout=0.3)
    started = time.monotonic()
    assert verifier.verify(sign(rsa_key)) is None
    assert time.monotonic() - started < 1.5
    assert idp.requests == 1


async def test_averify_does_not_block_the_loop(idp: JWKSServer, rsa_key: rsa.RSAPrivateKey) -> None:
    """averify fetches the JWKS in a thread while other tasks keep running."""
    idp.delay = 0.3
    verifier = remote(idp)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await verifier.averify(sign(rsa_key))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert result is not None
    assert ticks >= 10
    assert await verifier.averify(sign(rsa_key)) is not None
    assert await verifier.averify("garbage") is None
    assert idp.requests == 1


# ---------------------------------------------------------------------------- verify=False


def test_unverified_mode_decodes_but_checks_time_and_shape(
    rsa_key2: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """verify=False accepts unsigned or unknown-key tokens but still refuses expired and malformed ones."""
    with caplog.at_level(logging.WARNING, logger="ratelimit"):
        verifier = JWTVerifier(verify=False, audience=AUDIENCE)
    assert "NOT verified" in caplog.text
    unsigned = raw_token({"alg": "none"}, claims())
    result = verifier.verify(unsigned)
    assert result is not None
    assert result["sub"] == "alice"
    assert verifier.verify(sign(rsa_key2, kid="whatever")) is not None
    assert verifier.verify(sign(rsa_key2, claims(exp=int(time.time()) - 1))) is None
    assert verifier.verify(sign(rsa_key2, claims(aud="billing"))) is None
    for token in MALFORMED:
        assert verifier.verify(token) is None
    with pytest.raises(ValueError, match="neither"):
        JWTVerifier(verify=False, key=public_pem(rsa_key2))


# ---------------------------------------------------------------------------- bearer_token


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("BEARER abc", "abc"),
        ("  Bearer   abc.def  ", "abc.def"),
        ("Bearer\tabc", "abc"),
        ("Bearer a-b_c~d+e/f==", "a-b_c~d+e/f=="),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer a b", None),
        ("Bearer a, Bearer b", None),
        ("Bearer a=b", None),
        ("Bearerabc", None),
        ("abc.def.ghi", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    """bearer_token extracts exactly one token from a Bearer Authorization value."""
    assert bearer_token(header) == expected
