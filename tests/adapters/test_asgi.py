"""The ASGI adapter: middleware, decorators and the FastAPI dependency, in-process and behind uvicorn."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Depends, FastAPI, Request
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ratelimit import Limiter
from ratelimit.asgi import ASGIApp, RateLimit, RateLimitMiddleware, Receive, Scope, Send
from ratelimit.decorators import RateLimitExceeded
from ratelimit.enforce import Outcome
from ratelimit.keys import client_ip, header, jwt_subject
from ratelimit.rules import Rule
from ratelimit.testing import FakeClock

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient and warns once, at import, with httpx.
    warnings.filterwarnings("ignore", "Using `httpx`", StarletteDeprecationWarning)
    from starlette.testclient import TestClient, WebSocketDenialResponse

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://idp.test"
USER = header("x-user-id")
USER_U = {"x-user-id": "u"}
RATE_FIELDS = (
    "RateLimit-Policy",
    "RateLimit",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)


def limiter() -> Limiter:
    return Limiter(clock=FakeClock())


def client(app: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers)


def assert_rate_headers(response: httpx.Response) -> None:
    missing = [name for name in RATE_FIELDS if name not in response.headers]
    assert not missing, (missing, dict(response.headers))


def assert_problem(response: httpx.Response, violated: list[str]) -> None:
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["violated-policies"] == violated
    assert_rate_headers(response)


async def ok(request: Any) -> PlainTextResponse:
    return PlainTextResponse("ok")


def starlette_app(lim: Limiter, **options: Any) -> Starlette:
    app = Starlette(routes=[Route("/items", ok), Route("/other", ok)])
    app.add_middleware(RateLimitMiddleware, limiter=lim, **options)
    return app


# -- the middleware ---------------------------------------------------------------------


async def test_starlette_limits_and_headers() -> None:
    """Allowed responses carry RateLimit headers; the N+1th is a 429 problem; others are untouched."""
    app = starlette_app(limiter(), key=USER, limits={"GET /items": "2/minute"})
    async with client(app, x_user_id="alice") as c:
        first = await c.get("/items")
        assert first.status_code == 200 and first.text == "ok"
        assert_rate_headers(first)
        assert first.headers["RateLimit-Policy"] == '"get-items";q=2;w=60'
        assert first.headers["X-RateLimit-Remaining"] == "1"
        assert (await c.get("/items")).status_code == 200
        assert_problem(await c.get("/items"), ["get-items"])
        assert (await c.get("/items", headers={"x-user-id": "bob"})).status_code == 200
        other = await c.get("/other")
        assert other.status_code == 200 and "RateLimit" not in other.headers
        assert (await c.post("/items")).status_code == 405  # POST is not limited: the route answers


async def test_plain_asgi_app_with_rules() -> None:
    """Any ASGI callable can be wrapped; Rule objects and headers=False work."""
    seen: list[Scope] = []

    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]})
        await send({"type": "http.response.body", "body": b"raw"})

    rule = Rule.of("api", "1/minute", USER, paths="/api/**")
    quiet = RateLimitMiddleware(raw, limiter=limiter(), rules=[rule], headers=False)
    async with client(quiet, x_user_id="u") as c:
        allowed = await c.get("/api/x")
        assert allowed.headers["x-app"] == "1" and "RateLimit" not in allowed.headers
        denied = await c.get("/api/y")
        assert_problem(denied, ["api"])
    assert len(seen) == 1 and seen[0]["path"] == "/api/x"


async def test_missing_identity_reject_is_401() -> None:
    """With missing_identity='reject', a request without identity gets 401 and is not served."""
    app = starlette_app(limiter(), key=USER, limits={"/items": "5/minute"}, missing_identity="reject")
    async with client(app) as c:
        response = await c.get("/items")
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/problem+json"
        assert (await c.get("/items", headers={"x-user-id": "alice"})).status_code == 200


async def test_client_ip_trusts_exactly_n_proxies() -> None:
    """trusted_proxies=1: spoofed leftmost X-Forwarded-For entries do not escape the limit."""
    app = starlette_app(limiter(), key=client_ip(trusted_proxies=1), limits={"/items": "2/minute"})
    async with client(app) as c:
        codes = [
            (await c.get("/items", headers={"x-forwarded-for": f"6.6.6.{i}, 203.0.113.7"})).status_code
            for i in range(3)
        ]
        assert codes == [200, 200, 429]
        assert (await c.get("/items", headers={"x-forwarded-for": "203.0.113.8"})).status_code == 200


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    """The IdP's RSA signing key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def attacker_key() -> rsa.RSAPrivateKey:
    """Another RSA key, which the IdP never published."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private: rsa.RSAPrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.parametrize("trusted", [False, True])
async def test_user_header_counts_only_when_trusted(rsa_key: rsa.RSAPrivateKey, trusted: bool) -> None:
    """A client-sent x-user-id is ignored (counted per IP) unless trusted_header names it."""
    options: dict[str, Any] = {"key": public_pem(rsa_key), "issuer": ISSUER}
    if trusted:
        options["trusted_header"] = "x-user-id"
    app = starlette_app(limiter(), key=jwt_subject(**options), limits={"/items": "1/minute"})
    async with client(app) as c:
        assert (await c.get("/items", headers={"x-user-id": "mallory"})).status_code == 200
        second = await c.get("/items", headers={"x-user-id": "someone-else"})
    assert second.status_code == (200 if trusted else 429)


async def test_backend_failure_fails_open() -> None:
    """When Redis is unreachable, middleware rules and decorators let requests through: 200, never 500."""
    down = Limiter("redis://127.0.0.1:1/0", timeout=0.05)
    app = FastAPI()
    app.add_middleware(RateLimitMiddleware, limiter=down, key=USER, limits={"/items": "1/minute"})

    @app.get("/items")
    @down.limit("1/minute", key=USER)
    async def items() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/sync")
    @down.limit("1/minute", key=USER)
    def sync_items() -> dict[str, str]:
        return {"ok": "yes"}

    try:
        async with client(app, x_user_id="alice") as c:
            for path in ("/items", "/items", "/sync", "/sync"):
                assert (await c.get(path)).status_code == 200
    finally:
        await down.aclose()


async def test_rate_limit_exceeded_from_the_app_becomes_the_response() -> None:
    """RateLimitExceeded raised by the app before it responds is answered with the outcome's status."""
    outcome = Outcome("deny", 429, [("Retry-After", "7")], b'{"violated-policies":["x"]}')

    async def raising(scope: Scope, receive: Receive, send: Send) -> None:
        raise RateLimitExceeded(outcome)

    async with client(RateLimitMiddleware(raising, limiter=limiter())) as c:
        response = await c.get("/anything")
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert response.json() == {"violated-policies": ["x"]}


async def test_on_denied_hook() -> None:
    """on_denied may answer with its own ASGI app; returning None keeps the default 429."""
    calls: list[str] = []

    async def on_denied(scope: Scope, outcome: Outcome) -> ASGIApp | None:
        calls.append(scope["path"])
        if scope["path"] == "/other":
            return None
        return JSONResponse({"error": "slow down", "retry": outcome.retry_after}, 503)

    app = starlette_app(
        limiter(), key=USER, limits={"/items": "1/minute", "/other": "1/minute"}, on_denied=on_denied
    )
    async with client(app, x_user_id="u") as c:
        await c.get("/items")
        custom = await c.get("/items")
        assert custom.status_code == 503 and custom.json()["error"] == "slow down"
        await c.get("/other")
        assert_problem(await c.get("/other"), ["other"])
    assert calls == ["/items", "/other"]


def test_lifespan_passes_through() -> None:
    """Startup and shutdown handlers of the wrapped app run; the lifespan scope is untouched."""
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/items", ok)], lifespan=lifespan)
    app.add_middleware(RateLimitMiddleware, limiter=limiter(), limits={"/items": "5/minute"})
    with TestClient(app) as c:
        assert events == ["startup"]
        assert c.get("/items").status_code == 200
    assert events == ["startup", "shutdown"]


async def test_other_scopes_reach_the_app_as_given() -> None:
    """Non-HTTP scopes are handed on with the very same scope, receive and send."""
    got: list[tuple[Any, ...]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        got.append((scope, receive, send))

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        pass

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    await RateLimitMiddleware(app, limiter=limiter(), limits={"/**": "1/minute"})(scope, receive, send)
    assert got == [(scope, receive, send)] and got[0][0] is scope


# -- websockets --------------------------------------------------------------------------


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


def ws_app(**options: Any) -> Starlette:
    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    app.add_middleware(
        RateLimitMiddleware, limiter=limiter(), key=USER, limits={"/ws": "1/minute"}, **options
    )
    return app


def test_websocket_denied_with_denial_response() -> None:
    """The connection over the limit gets a 429 denial response (the server supports the extension)."""
    with TestClient(ws_app()) as c:
        with c.websocket_connect("/ws", headers={"x-user-id": "u"}) as ws:
            assert dict(ws.extra_headers or [])[b"ratelimit-policy"] == b'"ws";q=1;w=60'
            ws.send_text("hi")
            assert ws.receive_text() == "hi"
        with pytest.raises(WebSocketDenialResponse) as denied, c.websocket_connect("/ws", headers=USER_U):
            pass
    assert denied.value.status_code == 429 and int(denied.value.headers["Retry-After"]) >= 1
    assert denied.value.json()["violated-policies"] == ["ws"]


def test_websocket_closed_1008_without_the_extension() -> None:
    """Without the denial response extension, the handshake over the limit is closed with 1008."""
    inner = ws_app()

    async def no_extension(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope = {**scope, "extensions": {}}
        await inner(scope, receive, send)

    with TestClient(no_extension) as c:
        with c.websocket_connect("/ws", headers={"x-user-id": "u"}) as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "hi"
        with pytest.raises(WebSocketDisconnect) as closed, c.websocket_connect("/ws", headers=USER_U):
            pass
    assert closed.value.code == 1008


def test_decorated_websocket_endpoint_is_denied_by_the_middleware() -> None:
    """A denied decorated websocket endpoint gets the handshake denied, as a middleware rule would."""
    lim = limiter()

    @lim.limit("1/minute", key=USER, name="ws-ep")
    async def limited_echo(websocket: WebSocket) -> None:
        await echo(websocket)

    app = Starlette(routes=[WebSocketRoute("/ws", limited_echo)])
    app.add_middleware(RateLimitMiddleware, limiter=lim)
    with TestClient(app) as c:
        with c.websocket_connect("/ws", headers=USER_U) as ws:
            assert dict(ws.extra_headers or [])[b"ratelimit-policy"] == b'"ws-ep";q=1;w=60'
            ws.send_text("hi")
            assert ws.receive_text() == "hi"
        with pytest.raises(WebSocketDenialResponse) as denied, c.websocket_connect("/ws", headers=USER_U):
            pass
    assert denied.value.status_code == 429 and denied.value.json()["violated-policies"] == ["ws-ep"]


def test_websockets_false_leaves_websockets_alone() -> None:
    """websockets=False: handshakes are neither limited nor given headers."""
    with TestClient(ws_app(websockets=False)) as c:
        for _ in range(3):
            with c.websocket_connect("/ws", headers={"x-user-id": "u"}) as ws:
                assert not ws.extra_headers
                ws.send_text("hi")
                assert ws.receive_text() == "hi"


# -- decorators and the FastAPI dependency ------------------------------------------------


def fastapi_app(lim: Limiter, middleware: bool = True, **options: Any) -> FastAPI:
    app = FastAPI()
    if middleware:
        app.add_middleware(RateLimitMiddleware, limiter=lim, **options)

    @app.get("/async")
    @lim.limit("2/minute", key=USER, name="async-ep")
    async def async_endpoint(page: int = 1) -> dict[str, int]:
        return {"page": page}

    @app.get("/sync")
    @lim.limit("2/minute", key=USER, name="sync-ep")
    def sync_endpoint(page: int = 1) -> dict[str, int]:
        return {"page": page}

    @app.get("/stacked")
    @lim.limit("100/minute", name="wide")
    @lim.limit("2/minute", name="narrow")
    async def stacked() -> str:
        return "ok"

    return app


@pytest.mark.parametrize("path", ["/async", "/sync"])
async def test_fastapi_decorator_needs_no_request_parameter(path: str) -> None:
    """Decorated sync and async endpoints without a request parameter are limited, with headers."""
    async with client(fastapi_app(limiter()), x_user_id="alice") as c:
        first = await c.get(path, params={"page": 3})
        assert first.status_code == 200 and first.json() == {"page": 3}
        assert_rate_headers(first)
        assert (await c.get(path)).headers["X-RateLimit-Remaining"] == "0"
        assert_problem(await c.get(path), [f"{path[1:]}-ep"])
        assert (await c.get(path, headers={"x-user-id": "bob"})).status_code == 200


async def test_stacked_decorators_are_all_or_nothing() -> None:
    """When the narrow limit denies, the wide one is not charged; headers list both policies."""
    lim = limiter()
    async with client(fastapi_app(lim)) as c:
        first = await c.get("/stacked")
        assert first.headers["RateLimit-Policy"] == '"wide";q=100;w=60, "narrow";q=2;w=60'
        await c.get("/stacked")
        assert_problem(await c.get("/stacked"), ["narrow"])
    assert lim.peek("wide/global", "100/minute").remaining == 98


async def test_middleware_and_decorator_headers_are_merged() -> None:
    """Middleware rule + decorator: one RateLimit list each, legacy fields of the tightest."""
    async with client(fastapi_app(limiter(), key=USER, limits={"/**": "10/minute"}), x_user_id="a") as c:
        response = await c.get("/async")
    assert response.headers.get_list("RateLimit-Policy") == ['"all";q=10;w=60, "async-ep";q=2;w=60']
    assert response.headers.get_list("X-RateLimit-Remaining") == ["1"]
    assert response.headers.get_list("X-RateLimit-Limit") == ["2"]


def test_openapi_schema_is_unaffected() -> None:
    """Decorated endpoints show their own parameters only: no request parameter appears."""
    schema = fastapi_app(limiter()).openapi()
    for path in ("/async", "/sync"):
        params = schema["paths"][path]["get"]["parameters"]
        assert [p["name"] for p in params] == ["page"]
    assert "parameters" not in schema["paths"]["/stacked"]["get"]


async def test_decorator_without_middleware_finds_the_request_parameter() -> None:
    """Without the middleware, a decorated endpoint taking a Request is still limited (no headers then)."""
    lim = limiter()
    app = FastAPI()

    @app.get("/items")
    @lim.limit("1/minute", key=USER, name="items")
    async def items(request: Request) -> dict[str, str]:
        return {"path": request.url.path}

    async with client(app, x_user_id="u") as c:
        allowed = await c.get("/items")
        assert allowed.json() == {"path": "/items"} and "RateLimit" not in allowed.headers
        assert_problem(await c.get("/items"), ["items"])


def dependency_app(lim: Limiter, middleware: bool) -> FastAPI:
    app = FastAPI()
    if middleware:
        app.add_middleware(RateLimitMiddleware, limiter=lim)
    per_route = RateLimit(lim, "2/minute", key=USER)
    shared = RateLimit(lim, "3/minute", key=USER, name="shared")

    @app.get("/a", dependencies=[Depends(per_route)])
    async def a() -> str:
        return "a"

    @app.get("/b", dependencies=[Depends(per_route)])
    def b() -> str:
        return "b"

    @app.get("/s1", dependencies=[Depends(shared)])
    async def s1() -> str:
        return "s1"

    @app.get("/s2")
    async def s2(_: None = Depends(shared)) -> str:
        return "s2"

    return app


@pytest.mark.parametrize("middleware", [True, False])
async def test_fastapi_dependency(middleware: bool) -> None:
    """Depends(RateLimit(...)): 429 HTTPException with headers; per-route budgets unless named."""
    async with client(dependency_app(limiter(), middleware), x_user_id="u") as c:
        first = await c.get("/a")
        assert first.status_code == 200
        if middleware:
            assert first.headers["RateLimit-Policy"] == '"dep-a";q=2;w=60'
        else:
            assert "RateLimit" not in first.headers
        await c.get("/a")
        denied = await c.get("/a")
        assert denied.status_code == 429 and int(denied.headers["Retry-After"]) >= 1
        assert denied.json()["detail"]["violated-policies"] == ["dep-a"]
        assert (await c.get("/b")).status_code == 200  # its own budget
        codes = [(await c.get(path)).status_code for path in ("/s1", "/s2", "/s1", "/s2")]
        assert codes == [200, 200, 200, 429]  # one budget named "shared"


def test_dependency_keeps_the_openapi_schema_clean() -> None:
    """The dependency's request parameter does not show up in the schema."""
    schema = dependency_app(limiter(), True).openapi()
    for path in ("/a", "/s2"):
        assert "parameters" not in schema["paths"][path]["get"]


def load_example(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for var in ("JWKS_URL", "JWT_ISSUER", "REDIS_URL", "RATELIMIT_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_starlette_example_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/starlette_app.py: per-user limits from the waypoint header, websockets limited too."""
    example = load_example("starlette_app", monkeypatch)
    with TestClient(example.app) as c:
        codes = [c.get("/api/items", headers={"x-user-id": "ann"}).status_code for _ in range(6)]
        assert codes == [200] * 5 + [429]
        assert c.get("/api/items", headers={"x-user-id": "ben"}).status_code == 200
        with c.websocket_connect("/ws", headers={"x-user-id": "ann"}) as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "hi"


# -- end to end: uvicorn, Redis, real RS256 tokens -----------------------------------------


class JWKS:
    """A JWKS endpoint on a free loopback port, serving one RSA key."""

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        body = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def example_server(redis_url: str, rsa_key: rsa.RSAPrivateKey, tmp_path: Path) -> Iterator[str]:
    """uvicorn serving examples/fastapi_app.py on a socket bound here, against Redis and a JWKS."""
    jwks = JWKS(rsa_key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    env = {
        **os.environ,
        "JWKS_URL": jwks.url,
        "JWT_ISSUER": ISSUER,
        "REDIS_URL": redis_url,
        "RATELIMIT_TIMEOUT": "2",  # a loaded CI machine must not turn decisions into fail-open ones
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    log = (tmp_path / "uvicorn.log").open("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--fd", str(sock.fileno())],
        cwd=ROOT,
        env=env,
        pass_fds=[sock.fileno()],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"uvicorn did not come up:\n{log.read()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        sock.close()
        log.close()
        jwks.close()


def token(key: rsa.RSAPrivateKey, sub: str, *, expires_in: int = 300) -> str:
    now = int(time.time())
    claims = {"sub": sub, "iss": ISSUER, "iat": now, "exp": now + expires_in}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


def unsigned(sub: str) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"sub": sub, "iss": ISSUER, "exp": int(time.time()) + 300}
    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': 'k1'})}.{part(claims)}."


def burst(response: httpx.Response) -> str:
    """The items-burst item of the RateLimit field, e.g. ``r=4;t=60``."""
    for item in response.headers["RateLimit"].split(", "):
        if item.startswith('"items-burst";'):
            return item.split(";", 1)[1]
    raise AssertionError(response.headers["RateLimit"])


async def test_end_to_end_behind_uvicorn(
    example_server: str, rsa_key: rsa.RSAPrivateKey, attacker_key: rsa.RSAPrivateKey
) -> None:
    """uvicorn + Redis + RS256: users apart; forged, unsigned, expired tokens never count as their sub."""
    run = uuid.uuid4().hex[:8]
    victim, other = f"victim-{run}", f"other-{run}"
    async with httpx.AsyncClient(base_url=example_server, timeout=10) as c:

        async def get(bearer: str) -> httpx.Response:
            return await c.get("/api/items", headers={"authorization": f"Bearer {bearer}"})

        for forged in (
            token(attacker_key, victim),
            unsigned(victim),
            token(rsa_key, victim, expires_in=-60),
        ):
            for _ in range(2):
                await get(forged)  # counted per client IP, if at all, never as the victim

        victim_token, other_token = token(rsa_key, victim), token(rsa_key, other)
        first = await get(victim_token)
        assert first.status_code == 200, first.text
        assert burst(first).startswith("r=4;"), first.headers["RateLimit"]
        assert first.headers["RateLimit-Policy"].startswith('"api-all";q=100;w=60')
        codes = [(await get(victim_token)).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 200, 429]

        denied = await get(victim_token)
        assert_problem(denied, ["items-burst"])
        theirs = await get(other_token)
        assert theirs.status_code == 200 and burst(theirs).startswith("r=4;")
