"""The WSGI middleware, the Flask extension and the Django middleware, plus a real server."""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import os
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import flask
import pytest
from werkzeug.test import Client

import ratelimit.wsgi
from ratelimit import Limiter
from ratelimit.context import current
from ratelimit.decorators import RateLimitExceeded
from ratelimit.enforce import Outcome
from ratelimit.flask import RateLimit
from ratelimit.keys import client_ip, header
from ratelimit.request import RequestInfo
from ratelimit.rules import Rule
from ratelimit.testing import FakeClock
from ratelimit.wsgi import RateLimitMiddleware

T0 = 1_700_000_040.0
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETUPS = ("wsgi", "extension", "hooks")
DEAD_REDIS = "redis://127.0.0.1:1/0"


def flask_app(setup: str, limiter: Limiter, **options: Any) -> flask.Flask:
    """A Flask app with plain and decorated views, rate limited by ``setup``."""
    app = flask.Flask("test_wsgi")
    user = header("x-user")

    @app.get("/items")
    def items() -> str:
        return "items"

    @app.get("/decorated")
    @limiter.limit("2/minute", key=user, name="view")
    def decorated() -> str:
        return "decorated"

    @app.get("/stacked")
    @limiter.limit("100/minute", key=user, name="wide")
    @limiter.limit("1/minute", key=user, name="narrow")
    def stacked() -> str:
        return "stacked"

    @app.route("/orders", methods=["GET", "POST"])
    @limiter.limit("1/minute", key=user, name="orders", methods="POST")
    def orders() -> str:
        return flask.request.method

    if setup == "wsgi":
        app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter, **options)  # type: ignore[method-assign]
    elif setup in ("extension", "hooks"):
        RateLimit(app, limiter=limiter, mode="hooks" if setup == "hooks" else "middleware", **options)
    return app


def limiter_() -> Limiter:
    return Limiter(clock=FakeClock(T0))


@pytest.fixture(params=SETUPS)
def setup(request: pytest.FixtureRequest) -> str:
    """Every Flask test runs with the bare middleware, the extension, and its hooks."""
    return str(request.param)


# -- Flask ----------------------------------------------------------------------------


def test_allowed_responses_carry_headers(setup: str) -> None:
    """Allowed responses carry RateLimit-Policy, RateLimit and the legacy X-RateLimit-* fields."""
    client = flask_app(setup, limiter_(), limits={"GET /items": "3/minute"}).test_client()
    r = client.get("/items")
    assert r.status_code == 200 and r.text == "items"
    assert r.headers["RateLimit-Policy"] == '"get-items";q=3;w=60'
    assert r.headers["RateLimit"] == '"get-items";r=2;t=120'
    assert (r.headers["X-RateLimit-Limit"], r.headers["X-RateLimit-Remaining"]) == ("3", "2")
    assert "Retry-After" not in r.headers
    assert "RateLimit" not in client.get("/orders").headers  # no rule matched


def test_over_the_limit_is_429_problem_json(setup: str) -> None:
    """The request after the quota is a 429 with Retry-After and a problem+json body."""
    client = flask_app(setup, limiter_(), limits={"GET /items": "3/minute"}).test_client()
    assert [client.get("/items").status_code for _ in range(3)] == [200, 200, 200]
    r = client.get("/items")
    assert r.status_code == 429 and r.mimetype == "application/problem+json"
    assert int(r.headers["Retry-After"]) >= 1 and r.headers["X-RateLimit-Remaining"] == "0"
    body = json.loads(r.data)
    assert body["status"] == 429 and body["violated-policies"] == ["get-items"]
    assert client.get("/items", environ_base={"REMOTE_ADDR": "10.9.9.9"}).status_code == 200


def test_decorated_views_need_no_request_parameter(setup: str) -> None:
    """@limiter.limit on a view without parameters counts per key and answers 429 as Flask."""
    client = flask_app(setup, limiter_()).test_client()
    alice = {"x-user": "alice"}
    first = client.get("/decorated", headers=alice)
    assert first.text == "decorated" and first.headers["RateLimit"] == '"view";r=1;t=120'
    assert client.get("/decorated", headers=alice).status_code == 200
    denied = client.get("/decorated", headers=alice)
    assert denied.status_code == 429 and denied.mimetype == "application/problem+json"
    assert "Retry-After" in denied.headers
    assert client.get("/decorated", headers={"x-user": "bob"}).status_code == 200


def test_stacked_decorators_are_all_or_nothing(setup: str) -> None:
    """When the narrow limit denies, the wide one is not charged."""
    limiter = limiter_()
    client = flask_app(setup, limiter).test_client()
    r = client.get("/stacked", headers={"x-user": "alice"})
    assert r.headers["RateLimit-Policy"] == '"wide";q=100;w=60, "narrow";q=1;w=60'
    assert client.get("/stacked", headers={"x-user": "alice"}).status_code == 429
    assert limiter.peek("wide/alice", "100/minute").remaining == 99


def test_methods_filter(setup: str) -> None:
    """A limit with methods="POST" leaves GET on the same view alone."""
    client = flask_app(setup, limiter_()).test_client()
    assert client.post("/orders", headers={"x-user": "a"}).status_code == 200
    assert client.post("/orders", headers={"x-user": "a"}).status_code == 429
    assert [client.get("/orders", headers={"x-user": "a"}).text for _ in range(3)] == ["GET"] * 3


def test_middleware_and_decorator_headers_are_merged(setup: str) -> None:
    """A view limited twice sends one field per name: both policies, the tightest legacy triple."""
    client = flask_app(setup, limiter_(), limits={"/decorated": "10/minute"}).test_client()
    r = client.get("/decorated", headers={"x-user": "alice"})
    assert r.headers.getlist("RateLimit-Policy") == ['"decorated";q=10;w=60, "view";q=2;w=60']
    assert r.headers.getlist("RateLimit") == ['"decorated";r=9;t=120, "view";r=1;t=120']
    assert r.headers.getlist("X-RateLimit-Limit") == ["2"]
    assert r.headers.getlist("X-RateLimit-Remaining") == ["1"]
    client.get("/decorated", headers={"x-user": "alice"})
    denied = client.get("/decorated", headers={"x-user": "alice"})
    assert denied.status_code == 429 and len(denied.headers.getlist("Retry-After")) == 1


def test_missing_identity_reject_is_401(setup: str) -> None:
    """With missing_identity="reject", a request without identity gets 401 and is counted nowhere."""
    rule = Rule.of("per-user", "5/minute", header("x-user"), paths="/items")
    client = flask_app(setup, limiter_(), rules=[rule], missing_identity="reject").test_client()
    r = client.get("/items")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert json.loads(r.data)["status"] == 401
    assert client.get("/items", headers={"x-user": "alice"}).status_code == 200


def test_client_ip_ignores_spoofed_forwarded_for() -> None:
    """client_ip(trusted_proxies=1) counts the proxy-written entry, whatever the client prepends."""
    app = flask_app("wsgi", limiter_(), limits={"/items": "2/minute"}, key=client_ip(trusted_proxies=1))
    client = app.test_client()
    statuses = [
        client.get("/items", headers={"X-Forwarded-For": f"6.6.6.{i}, 1.2.3.4"}).status_code for i in range(3)
    ]
    assert statuses == [200, 200, 429]
    assert client.get("/items", headers={"X-Forwarded-For": "1.2.3.4, 5.6.7.8"}).status_code == 200


def test_backend_failure_fails_open(setup: str) -> None:
    """Redis down: the middleware and decorators allow (200), never a 500."""
    limiter = Limiter(DEAD_REDIS, timeout=0.05)
    try:
        client = flask_app(setup, limiter, limits={"/items": "1/minute"}).test_client()
        assert [client.get("/items").status_code for _ in range(3)] == [200] * 3
        assert client.get("/decorated", headers={"x-user": "a"}).status_code == 200
    finally:
        limiter.close()


def test_decorators_work_without_any_setup() -> None:
    """With ratelimit.flask imported but nothing installed, decorators still deny (no allowed headers)."""
    client = flask_app("none", limiter_()).test_client()
    first = client.get("/decorated", headers={"x-user": "a"})
    assert first.status_code == 200 and "RateLimit" not in first.headers
    client.get("/decorated", headers={"x-user": "a"})
    assert client.get("/decorated", headers={"x-user": "a"}).status_code == 429


@pytest.mark.parametrize("setup", ["extension", "hooks"])
def test_rate_limit_exceeded_raised_in_a_view_is_answered(setup: str) -> None:
    """With the extension, a view raising RateLimitExceeded gets its 429 from the error handler."""
    limiter = limiter_()
    app = flask_app(setup, limiter)
    denied = Outcome("deny", 429, [("Retry-After", "7")], b'{"status":429}')

    @app.get("/raise")
    def raising() -> str:
        raise RateLimitExceeded(denied)

    r = app.test_client().get("/raise")
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"


# -- bare WSGI ------------------------------------------------------------------------


def echo_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    """A generator WSGI app that reports whether it sees the request context while streaming."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"seen" if current.get() is not None else b"unseen"


def test_context_is_set_while_streaming_and_never_leaks() -> None:
    """The context is visible in generator bodies and unset afterwards, closed or not."""
    client = Client(RateLimitMiddleware(echo_app, limiter_(), limits={"/": "5/minute"}))
    responses = [client.get("/") for _ in range(2)]  # never closed
    assert [r.get_data() for r in responses] == [b"seen", b"seen"]
    assert responses[0].headers["RateLimit"].startswith('"root";r=4;')
    assert current.get() is None


@pytest.mark.parametrize("werkzeug", [True, False])
def test_decorated_bare_wsgi_callable(monkeypatch: pytest.MonkeyPatch, werkzeug: bool) -> None:
    """A decorated bare WSGI callable is denied with or without werkzeug (then via RateLimitExceeded)."""
    if not werkzeug:
        monkeypatch.setattr(ratelimit.wsgi, "_werkzeug_response", lambda: None)
    limiter = limiter_()
    seen: list[tuple[RequestInfo, Outcome]] = []

    @limiter.limit("1/minute", name="bare")
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    def on_denied(request: RequestInfo, outcome: Outcome) -> None:
        seen.append((request, outcome))

    client = Client(RateLimitMiddleware(app, limiter, on_denied=on_denied))
    assert client.get("/x").get_data() == b"ok"
    r = client.get("/x")
    assert r.status_code == 429 and r.headers["Content-Type"] == "application/problem+json"
    assert r.headers["RateLimit-Policy"] == '"bare";q=1;w=60'
    assert [(req.path, o.status) for req, o in seen] == [("/x", 429)]


def test_on_denied_may_answer_instead() -> None:
    """A WSGI app returned by on_denied answers the denial; the request info names the path."""

    def teapot(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("418 I'm a teapot", [])
        return [b"slow down"]

    middleware = RateLimitMiddleware(
        echo_app, limiter_(), limits={"/": "1/minute"}, on_denied=lambda request, outcome: teapot
    )
    client = Client(middleware)
    client.get("/")
    assert client.get("/").status_code == 418


def test_script_name_is_not_part_of_the_path() -> None:
    """Rules match PATH_INFO, the path inside the app, and UTF-8 paths arrive decoded."""
    client = Client(RateLimitMiddleware(echo_app, limiter_(), limits={"/café": "1/minute"}))
    assert client.get("/café", environ_overrides={"SCRIPT_NAME": "/shop"}).status_code == 200
    assert client.get("/café", environ_overrides={"SCRIPT_NAME": "/shop"}).status_code == 429


# -- Django ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_ready() -> Any:
    """Django configured once for this module; each test overrides what it needs."""
    try:
        import django
        from django.conf import settings
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("Django is not installed; CI must install the dev extra", pytrace=False)
        pytest.skip("Django is not installed (pip install django)")
    if not settings.configured:
        settings.configure(
            SECRET_KEY="tests", ALLOWED_HOSTS=["testserver"], INSTALLED_APPS=[], DATABASES={}, USE_TZ=True
        )
        django.setup()
    return settings


def django_client(
    ratelimit_settings: dict[str, Any], limiter: Limiter | None = None, *, asynchronous: bool = False
) -> Iterator[Any]:
    """A django.test.Client (or AsyncClient) for a tiny URLconf with plain and decorated views."""
    from django.http import HttpResponse
    from django.test import AsyncClient, override_settings
    from django.test import Client as DjangoClient
    from django.urls import path

    limiter = limiter or limiter_()

    def items(request: Any, item_id: int) -> HttpResponse:
        return HttpResponse(f"item {item_id}")

    @limiter.limit("1/minute", key=header("x-user"), name="orders-view", methods="POST")
    def orders(request: Any) -> HttpResponse:
        return HttpResponse(request.method)

    @limiter.limit("1/minute", key=header("x-user"), name="async-view")
    async def async_view(request: Any) -> HttpResponse:
        return HttpResponse("async")

    urls = types.ModuleType("ratelimit_test_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("items/<int:item_id>", items),
        path("orders", orders),
        path("async", async_view),
    ]
    with override_settings(
        ROOT_URLCONF=urls, MIDDLEWARE=["ratelimit.django.RateLimitMiddleware"], RATELIMIT=ratelimit_settings
    ):
        yield AsyncClient() if asynchronous else DjangoClient()


def test_django_limits_headers_and_429(django_ready: Any) -> None:
    """LIMITS with a dotted KEY: allowed responses carry headers, then a 429 problem."""
    for client in django_client({"LIMITS": {"GET /items/*": "2/minute"}, "KEY": "ratelimit.keys.client_ip"}):
        r = client.get("/items/1")
        assert r.status_code == 200 and r.headers["RateLimit-Policy"] == '"get-items-any";q=2;w=60'
        assert r.headers["X-RateLimit-Remaining"] == "1"
        client.get("/items/2")
        denied = client.get("/items/3")
        assert denied.status_code == 429 and denied["Content-Type"] == "application/problem+json"
        assert "Retry-After" in denied.headers and json.loads(denied.content)["status"] == 429


def test_django_decorated_views(django_ready: Any) -> None:
    """Decorated Django views share the middleware's context; methods filter; headers merged."""
    limiter = limiter_()
    options = {"LIMITER": limiter, "LIMITS": {"/orders": "10/minute"}}
    for client in django_client(options, limiter):
        r = client.post("/orders", headers={"x-user": "alice"})
        assert r.content == b"POST" and r.headers["X-RateLimit-Limit"] == "1"
        assert r.headers["RateLimit-Policy"] == '"orders";q=10;w=60, "orders-view";q=1;w=60'
        assert client.post("/orders", headers={"x-user": "alice"}).status_code == 429
        assert client.get("/orders", headers={"x-user": "alice"}).content == b"GET"


async def test_django_async_views_under_asgi(django_ready: Any) -> None:
    """Under Django's ASGI handler the sync middleware still serves decorated async views."""
    for client in django_client({"LIMITS": {"/async": "5/minute"}}, asynchronous=True):
        r = await client.get("/async", headers={"x-user": "alice"})
        assert r.content == b"async"
        assert r.headers["RateLimit-Policy"] == '"async";q=5;w=60, "async-view";q=1;w=60'
        assert (await client.get("/async", headers={"x-user": "alice"})).status_code == 429


def test_django_reject_and_fail_open(django_ready: Any) -> None:
    """MISSING_IDENTITY="reject" answers 401; a LIMITER URL whose Redis is down fails open."""
    rule = Rule.of("per-user", "5/minute", header("x-user"), paths="/items/*")
    for client in django_client({"RULES": [rule], "MISSING_IDENTITY": "reject"}):
        r = client.get("/items/1")
        assert r.status_code == 401 and r["WWW-Authenticate"] == "Bearer"
        assert client.get("/items/1", headers={"x-user": "a"}).status_code == 200
    for client in django_client({"LIMITER": DEAD_REDIS, "LIMITS": {"/items/*": "1/minute"}}):
        assert [client.get("/items/1").status_code for _ in range(2)] == [200, 200]


def test_django_bad_settings_are_improperly_configured(django_ready: Any) -> None:
    """A misspelt setting or a bad value is reported when the middleware loads."""
    from django.core.exceptions import ImproperlyConfigured

    bad: list[dict[str, Any]] = [
        {"LIMIT": {}},
        {"MISSING_IDENTITY": "nobody"},
        {"LIMITER": "ratelimit.keys.client_ip"},
    ]
    for options in bad:
        for client in django_client(options):
            with pytest.raises(ImproperlyConfigured):
                client.get("/items/1")


# -- end to end: examples/flask_app.py on a real server, Redis, a JWKS, real tokens -----


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class JWKS:
    """An RSA signing key, a JWKS endpoint serving its public half, and token minting."""

    ISSUER = "https://idp.test"

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa
        from jwt.algorithms import RSAAlgorithm

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, sub: str, *, exp: float = 300, key: Any = None) -> str:
        import jwt

        claims = {"sub": sub, "iss": self.ISSUER, "exp": int(time.time() + exp)}
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": "k1"})

    def unsigned(self, sub: str) -> str:
        header_ = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": "k1"}).encode())
        claims = b64url(json.dumps({"sub": sub, "iss": self.ISSUER, "exp": int(time.time()) + 300}).encode())
        return f"{header_}.{claims}."

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def example_server(redis_url: str) -> Iterator[tuple[int, JWKS]]:
    """examples/flask_app.py on werkzeug's threaded server, with Redis and a local JWKS."""
    from werkzeug.serving import make_server

    spec = importlib.util.spec_from_file_location("flask_app_example", EXAMPLES / "flask_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    jwks = JWKS()
    env = {"JWKS_URL": jwks.url, "JWT_ISSUER": JWKS.ISSUER, "REDIS_URL": redis_url, "API_RATE": "3/minute"}
    app = module.create_app(env)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, jwks
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        jwks.close()
        app.extensions["limiter"].close()


def call(port: int, method: str, path: str, token: str | None = None, **headers: str) -> Any:
    """One request over a fresh connection: (status, headers, body)."""
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def test_example_limits_verified_users_separately(example_server: tuple[int, JWKS], redis_url: str) -> None:
    """Two users have separate budgets in Redis; forged, alg=none and expired tokens count as no one."""
    port, jwks = example_server
    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    status, headers, _ = call(port, "GET", "/api/items", jwks.token(alice))
    assert status == 200 and headers["RateLimit"].startswith('"per-user";r=2;')

    impostors = [jwks.token(alice, key=jwks.other), jwks.unsigned(alice), jwks.token(alice, exp=-3600)]
    for token in impostors:
        status, headers, _ = call(port, "GET", "/api/items", token)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    assert call(port, "GET", "/api/items", x_user_id=alice)[0] == 401  # no waypoint: header not trusted

    remaining = [call(port, "GET", "/api/items", jwks.token(alice))[1]["X-RateLimit-Remaining"] for _ in "ab"]
    assert remaining == ["1", "0"]  # the impostors took nothing from alice
    status, headers, body = call(port, "GET", "/api/items", jwks.token(alice))
    assert status == 429 and int(headers["Retry-After"]) >= 1
    assert json.loads(body)["violated-policies"] == ["per-user"]
    assert [call(port, "GET", "/api/items", jwks.token(bob))[0] for _ in range(3)] == [200] * 3

    with Limiter(redis_url) as other_process:  # the counters live in Redis, not in the app
        assert other_process.peek(f"per-user/{alice}", "3/minute").remaining == 0


def test_example_decorated_view_on_a_real_server(example_server: tuple[int, JWKS]) -> None:
    """The example's stacked view limit denies on a real server, with the middleware's policy merged."""
    port, jwks = example_server
    token = jwks.token(f"carol-{uuid.uuid4().hex[:8]}")
    assert [call(port, "POST", "/api/reports", token)[0] for _ in range(2)] == [200, 200]
    status, headers, _ = call(port, "POST", "/api/reports", token)
    assert status == 429
    assert headers.get_all("RateLimit-Policy") == [  # the denying policies first, then the middleware's
        '"reports-burst";q=2;w=60, "reports-daily";q=20;w=86400, "per-user";q=3;w=60'
    ]
    assert call(port, "GET", "/api/reports", jwks.token(f"dave-{uuid.uuid4().hex[:8]}"))[0] == 200
