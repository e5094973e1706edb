"""JWKS fetches: one total budget however slowly the IdP answers, one fetch for many
requests, and never on the event loop's default executor.

A local IdP misbehaves on purpose (trickled headers, trickled body, a body over the cap,
silence after accept, a closed port, a resolver that hangs). Each test asserts an upper
bound of the budget plus a generous tolerance: the machine may be small and busy.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

from ratelimit._policy import jwks as _jwks
from ratelimit._policy import jwks_http as _jwks_http
from ratelimit._policy.jwt_verify import JWTVerifier
from ratelimit.testing import FakeClock

AUDIENCE = "orders"
BUDGET = 0.6  # fetch_timeout of the slow-IdP tests
TOLERANCE = 0.5  # on top of BUDGET for anything that must give up within it
CONCURRENT = 20
SLOW_MODES = ["trickle-headers", "trickle-body", "huge", "silent", "down", "hung-resolver"]

# ---------------------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """The IdP's signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks_body(private: rsa.RSAPrivateKey) -> bytes:
    public: dict[str, Any] = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    return json.dumps({"keys": [{**public, "kid": "k1"}]}).encode()


def sign(private: rsa.RSAPrivateKey) -> str:
    now = int(time.time())
    claims = {"sub": "alice", "aud": AUDIENCE, "iat": now, "exp": now + 300}
    return jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k1"})


# ---------------------------------------------------------------------------- a misbehaving IdP

_OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


class SlowIdP:
    """A JWKS server on a free 127.0.0.1 port answering as ``mode`` says.

    Threaded, at most ``max_connections`` at once (more are closed at once), and it stops
    by itself after ``lifetime`` seconds should a test forget to. ``connections`` counts
    accepted connections, which is the number of fetches that reached it.
    """

    def __init__(
        self,
        body: bytes,
        mode: str,
        *,
        tls: ssl.SSLContext | None = None,
        max_connections: int = 8,
        lifetime: float = 20.0,
    ) -> None:
        self.body = body
        self.mode = mode
        self.connections = 0
        self.heads: list[bytes] = []
        self._tls = tls
        self._stop = threading.Event()
        self._ends = time.monotonic() + lifetime
        self._slots = threading.BoundedSemaphore(max_connections)
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/jwks.json"
        self._acceptor = threading.Thread(target=self._accept, name="slow-idp", daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        """Stop serving and close the port (connections are refused from now on)."""
        self._stop.set()
        self._acceptor.join(5)
        for thread in self._threads:
            thread.join(5)

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False when the server is stopping instead."""
        return not self._stop.wait(min(seconds, max(0.0, self._ends - time.monotonic())))

    def _accept(self) -> None:
        try:
            while not self._stop.is_set() and time.monotonic() < self._ends:
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    continue
                if not self._slots.acquire(blocking=False):
                    conn.close()
                    continue
                self.connections += 1
                thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
                self._threads.append(thread)
                thread.start()
        finally:
            self._stop.set()
            self._listener.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(2.0)
            if self.mode == "silent":
                self._pause(float("inf"))
                return
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            self.heads.append(head)
            self._answer(conn)
        except OSError:
            pass  # the client gave up and hung up: what these tests provoke
        finally:
            conn.close()
            self._slots.release()

    def _answer(self, conn: socket.socket) -> None:
        mode, body = self.mode, self.body
        if mode == "proxy" and self.heads[-1].startswith(b"CONNECT "):
            self._tunnel(conn, self.heads[-1].split()[1].decode())
            return
        if mode == "slow-ok" and not self._pause(0.3):
            return
        if mode in ("ok", "slow-ok", "proxy"):  # a plain-http proxy answers for the origin
            conn.sendall(_OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        elif mode == "chunked":
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:]))
            conn.sendall(_OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        elif mode == "close-delimited":
            conn.sendall(_OK_HEAD + b"Connection: close\r\n\r\n" + body)
        elif mode == "trickle-headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            line = 0
            while self._pause(0.2):
                conn.sendall(b"X-Slow-%d: 1\r\n" % line)
                line += 1
        elif mode == "trickle-body":
            conn.sendall(_OK_HEAD + b"Content-Length: %d\r\n\r\n" % len(body))
            for byte in body:
                if not self._pause(0.2):
                    return
                conn.sendall(bytes([byte]))
        elif mode == "huge":  # no Content-Length: only the bytes counted can stop it
            conn.sendall(_OK_HEAD + b"Connection: close\r\n\r\n")
            for _ in range(2 * _jwks_http.MAX_JWKS_BYTES // 65536):
                conn.sendall(b" " * 65536)
        elif mode == "huge-declared":
            conn.sendall(_OK_HEAD + b"Content-Length: %d\r\n\r\n" % (2 * _jwks_http.MAX_JWKS_BYTES))
        elif mode == "cut-short":
            conn.sendall(_OK_HEAD + b"Content-Length: %d\r\n\r\n" % (len(body) + 10) + body)
        elif mode == "redirect":
            conn.sendall(
                b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere.test/\r\nContent-Length: 0\r\n\r\n"
            )
        elif mode == "http-500":
            conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
        else:
            raise AssertionError(f"unknown mode {mode}")

    def _tunnel(self, conn: socket.socket, target: str) -> None:
        host, _, port = target.rpartition(":")
        with socket.create_connection((host, int(port)), timeout=2.0) as upstream:
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            while not self._stop.is_set():
                readable, _, _ = select.select([conn, upstream], [], [], 0.05)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is conn else conn).sendall(data)


@pytest.fixture
def fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each JWKS fetch of the test ran on, one entry per fetch."""
    threads: list[str] = []
    real = _jwks._http_get

    def recorded(url: str, timeout: float) -> bytes:
        threads.append(threading.current_thread().name)
        return real(url, timeout)

    monkeypatch.setattr(_jwks, "_http_get", recorded)
    return threads


@pytest.fixture
def serve(rsa_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., SlowIdP]]:
    """Starts SlowIdPs (stopped at teardown); ``down`` is a closed port, ``hung-resolver``
    a resolver that answers only at teardown."""
    servers: list[SlowIdP] = []
    release = threading.Event()

    def hung_resolver(host: str, port: int) -> list[tuple[Any, ...]]:
        release.wait(30)
        raise socket.gaierror("the resolver gave up")

    def start(mode: str = "ok", **options: Any) -> SlowIdP:
        server = SlowIdP(jwks_body(rsa_key), "ok" if mode in ("down", "hung-resolver") else mode, **options)
        servers.append(server)
        if mode == "down":
            server.stop()
        if mode == "hung-resolver":
            monkeypatch.setattr(_jwks_http, "_resolve", hung_resolver)
        return server

    yield start
    release.set()
    for server in servers:
        server.stop()


# ---------------------------------------------------------------------------- one fetch


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("trickle-headers", "within 0.6s"),
        ("trickle-body", "within 0.6s"),
        ("huge", "larger than"),
        ("silent", "within 0.6s"),
        ("down", "refused"),
    ],
)
def test_fetch_gives_up_within_the_budget(serve: Callable[..., SlowIdP], mode: str, error: str) -> None:
    """However the IdP misbehaves, one fetch fails within its total budget.

    (A hung resolver cannot be interrupted: the request-path tests show callers bounded.)
    """
    server = serve(mode)
    started = time.monotonic()
    with pytest.raises((OSError, ValueError), match=error):
        _jwks._http_get(server.url, BUDGET)
    assert time.monotonic() - started < BUDGET + TOLERANCE


def test_tls_handshake_to_a_silent_server_is_bounded(serve: Callable[..., SlowIdP]) -> None:
    """An https server that accepts and never answers the handshake costs the budget, no more."""
    server = serve("silent")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _jwks._http_get(server.url.replace("http:", "https:"), BUDGET)
    assert time.monotonic() - started < BUDGET + TOLERANCE


@pytest.mark.parametrize("mode", ["ok", "chunked", "close-delimited"])
def test_fetch_reads_every_framing(serve: Callable[..., SlowIdP], mode: str) -> None:
    """Content-Length, chunked and close-delimited bodies all arrive whole."""
    server = serve(mode)
    assert _jwks._http_get(server.url + "?v=1", 5.0) == server.body
    head = server.heads[0].decode()
    assert head.startswith("GET /jwks.json?v=1 HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n" in head


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("redirect", "HTTP 302 .redirects are not followed"),
        ("http-500", "HTTP 500"),
        ("huge-declared", "larger than"),
        ("cut-short", "Content-Length"),
    ],
)
def test_fetch_refuses_bad_answers(serve: Callable[..., SlowIdP], mode: str, error: str) -> None:
    """Redirects, error statuses, oversized and truncated bodies fail the fetch."""
    with pytest.raises(ValueError, match=error):
        _jwks._http_get(serve(mode).url, 5.0)


# ---------------------------------------------------------------------------- TLS


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, Any] | None, **san: Any
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    signer = issuer[1] if issuer else key
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
    )
    if issuer is None:
        usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True)
    else:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in san.get("dns", [])]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in san.get("ip", [])]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _tls_server_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **san: Any) -> ssl.SSLContext:
    """A server context whose certificate (for ``san``) chains to a CA the client trusts."""
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test CA", ca_key, None)
    leaf = _certificate("idp", leaf_key, (ca, ca_key), **san)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(pem))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (tmp_path / "leaf.key").write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    # OpenSSL reads SSL_CERT_FILE whenever a default context loads its CAs.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    return context


def test_https_checks_the_certificate_chain(
    serve: Callable[..., SlowIdP], rsa_key: rsa.RSAPrivateKey, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """https verifies with the default context: a certificate from a trusted CA for the host verifies."""
    server = serve("ok", tls=_tls_server_context(tmp_path, monkeypatch, ip=["127.0.0.1"]))
    assert _jwks._http_get(server.url, 5.0) == server.body
    assert JWTVerifier(jwks_url=server.url, audience=AUDIENCE).verify(sign(rsa_key)) is not None
    monkeypatch.delenv("SSL_CERT_FILE")  # back to the system CAs, which never issued it
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _jwks._http_get(server.url, 5.0)


def test_https_checks_the_hostname(
    serve: Callable[..., SlowIdP], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trusted certificate issued for another host is refused."""
    server = serve("ok", tls=_tls_server_context(tmp_path, monkeypatch, dns=["idp.test"]))
    with pytest.raises(ssl.SSLCertVerificationError, match=r"127\.0\.0\.1"):
        _jwks._http_get(server.url, 5.0)


def test_https_goes_through_the_environment_proxy(
    serve: Callable[..., SlowIdP], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """https_proxy tunnels the fetch with CONNECT and the proxy's credentials; no_proxy bypasses it."""
    idp = serve("ok", tls=_tls_server_context(tmp_path, monkeypatch, ip=["127.0.0.1"]))
    proxy = serve("proxy")
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://jwks:p%40ss@127.0.0.1:{proxy.port}")
    assert _jwks._http_get(idp.url, 5.0) == idp.body
    assert proxy.heads[0].startswith(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n" % idp.port)
    assert b"\r\nProxy-Authorization: Basic " + base64.b64encode(b"jwks:p@ss") + b"\r\n" in proxy.heads[0]
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert _jwks._http_get(idp.url, 5.0) == idp.body
    assert proxy.connections == 1


def test_http_goes_through_the_environment_proxy(
    serve: Callable[..., SlowIdP], monkeypatch: pytest.MonkeyPatch
) -> None:
    """http_proxy is sent the whole URL; the JWKS host is never resolved locally."""
    proxy = serve("proxy")
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", f"127.0.0.1:{proxy.port}")
    assert _jwks._http_get("http://idp.test/jwks.json", 5.0) == proxy.body
    assert proxy.heads[0].startswith(b"GET http://idp.test/jwks.json HTTP/1.1\r\nHost: idp.test\r\n")


def test_silent_proxy_is_bounded(serve: Callable[..., SlowIdP], monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy that accepts and never answers CONNECT costs the budget, no more."""
    proxy = serve("silent")
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.port}")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        _jwks._http_get("https://idp.test/jwks.json", BUDGET)
    assert time.monotonic() - started < BUDGET + TOLERANCE


# ---------------------------------------------------------------------------- the request path


async def _timed(verifier: JWTVerifier, token: str) -> tuple[dict[str, Any] | None, float]:
    started = time.monotonic()
    result = await verifier.averify(token)
    return result, time.monotonic() - started


@pytest.mark.parametrize("mode", SLOW_MODES)
async def test_requests_without_keys_wait_at_most_the_budget(
    serve: Callable[..., SlowIdP], fetches: list[str], rsa_key: rsa.RSAPrivateKey, mode: str
) -> None:
    """20 requests share one fetch, get no identity within the budget, and the loop runs on."""
    server = serve(mode)
    verifier = JWTVerifier(jwks_url=server.url, audience=AUDIENCE, fetch_timeout=BUDGET)
    token = sign(rsa_key)
    loop = asyncio.get_running_loop()
    gaps: list[float] = []
    ticking = True

    async def ticker() -> None:
        last = time.monotonic()
        while ticking:
            await asyncio.sleep(0)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    requests = [asyncio.create_task(_timed(verifier, token)) for _ in range(CONCURRENT)]
    await asyncio.sleep(0)  # every request is now waiting on the fetch
    started = time.monotonic()
    await loop.getaddrinfo("127.0.0.1", 80)  # runs on the loop's default executor
    resolved_in = time.monotonic() - started
    results = await asyncio.gather(*requests)
    ticking = False
    await tick

    assert [claims for claims, _ in results] == [None] * CONCURRENT
    assert max(elapsed for _, elapsed in results) < BUDGET + TOLERANCE
    assert len(fetches) == 1
    assert fetches[0].startswith("ratelimit-jwks")
    assert server.connections == (0 if mode in ("down", "hung-resolver") else 1)
    assert resolved_in < BUDGET / 2
    assert max(gaps) < 0.25


@pytest.mark.parametrize("mode", SLOW_MODES)
async def test_requests_with_stale_keys_keep_verifying(
    serve: Callable[..., SlowIdP], fetches: list[str], rsa_key: rsa.RSAPrivateKey, mode: str
) -> None:
    """Past the TTL a slow IdP delays only the request that refreshes; all verify with the stale keys."""
    server = serve("ok")
    clock = FakeClock()
    verifier = JWTVerifier(jwks_url=server.url, audience=AUDIENCE, fetch_timeout=BUDGET, clock=clock)
    token = sign(rsa_key)
    assert await verifier.averify(token) is not None
    if mode == "down":
        server.stop()
    elif mode == "hung-resolver":
        serve("hung-resolver")
    else:
        server.mode = mode
    clock.advance(301)

    results = await asyncio.gather(*(_timed(verifier, token) for _ in range(CONCURRENT)))

    assert all(claims is not None and claims["sub"] == "alice" for claims, _ in results)
    times = sorted(elapsed for _, elapsed in results)
    assert times[-1] < BUDGET + TOLERANCE
    assert times[-2] < BUDGET / 2  # only the request that started the refresh waited for it
    assert len(fetches) == 2


@pytest.mark.parametrize("mode", SLOW_MODES)
def test_threads_share_one_fetch_and_wait_at_most_the_budget(
    serve: Callable[..., SlowIdP], fetches: list[str], rsa_key: rsa.RSAPrivateKey, mode: str
) -> None:
    """20 threads verifying at once cause one fetch and get no identity within the budget."""
    server = serve(mode)
    verifier = JWTVerifier(jwks_url=server.url, audience=AUDIENCE, fetch_timeout=BUDGET)
    token = sign(rsa_key)
    results: list[tuple[dict[str, Any] | None, float]] = []
    go = threading.Barrier(CONCURRENT)

    def request() -> None:
        go.wait()
        started = time.monotonic()
        claims = verifier.verify(token)
        results.append((claims, time.monotonic() - started))

    threads = [threading.Thread(target=request) for _ in range(CONCURRENT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [claims for claims, _ in results] == [None] * CONCURRENT
    assert max(elapsed for _, elapsed in results) < BUDGET + TOLERANCE
    assert len(fetches) == 1


async def test_sync_and_async_callers_share_one_fetch(
    serve: Callable[..., SlowIdP], fetches: list[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    """A thread and asyncio tasks needing keys at the same time wait for the same fetch."""
    server = serve("trickle-headers")
    verifier = JWTVerifier(jwks_url=server.url, audience=AUDIENCE, fetch_timeout=BUDGET)
    token = sign(rsa_key)
    thread_result: list[Any] = []
    thread = threading.Thread(target=lambda: thread_result.append(verifier.verify(token)))
    thread.start()
    tasks = await asyncio.gather(*(verifier.averify(token) for _ in range(5)))
    await asyncio.get_running_loop().run_in_executor(None, thread.join)
    assert tasks == [None] * 5
    assert thread_result == [None]
    assert len(fetches) == 1
    assert server.connections == 1


async def test_slow_idp_that_answers_in_time_serves_every_waiter(
    serve: Callable[..., SlowIdP], fetches: list[str], rsa_key: rsa.RSAPrivateKey
) -> None:
    """An IdP slow but within the budget verifies all 20 requests that waited, with one fetch."""
    server = serve("slow-ok")
    verifier = JWTVerifier(jwks_url=server.url, audience=AUDIENCE, fetch_timeout=5.0)
    results = await asyncio.gather(*(verifier.averify(sign(rsa_key)) for _ in range(CONCURRENT)))
    assert all(claims is not None for claims in results)
    assert len(fetches) == 1
    assert server.connections == 1


async def test_forked_child_does_not_wait_for_the_parents_fetch(
    serve: Callable[..., SlowIdP],
    fetches: list[str],
    rsa_key: rsa.RSAPrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a fork, a fetch in flight in the parent is not joined: the child starts its own."""
    server = serve("silent")
    verifier = JWTVerifier(jwks_url=server.url, audience=AUDIENCE, fetch_timeout=BUDGET)
    token = sign(rsa_key)
    parent = asyncio.create_task(verifier.averify(token))
    await asyncio.sleep(0)
    parent_pool = _jwks._fetch_pool()
    real_pid = os.getpid()
    with monkeypatch.context() as patch:
        patch.setattr(os, "getpid", lambda: real_pid + 1)
        assert await verifier.averify(token) is None
        assert _jwks._fetch_pool() is not parent_pool
    assert await parent is None
    assert len(fetches) == 2


def test_failed_fetch_is_logged_once_per_attempt(
    serve: Callable[..., SlowIdP], rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    """A fetch that runs out of budget logs one warning naming the budget."""
    server = serve("trickle-headers")
    verifier = JWTVerifier(jwks_url=server.url, audience=AUDIENCE, fetch_timeout=BUDGET)
    with caplog.at_level(logging.WARNING, logger="ratelimit"):
        assert verifier.verify(sign(rsa_key)) is None
        # The request stops waiting when the fetch's own budget runs out too; wait for its log.
        deadline = time.monotonic() + 5
        while "JWKS fetch" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert caplog.text.count("JWKS fetch") == 1
    assert "within 0.6s" in caplog.text
