"""Limiter.from_config handed to ASGI, WSGI, Flask and Django adapters: the file's rules apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from support.config_helpers import T0, write

from ratelimit import Limiter
from ratelimit.testing import FakeClock

CONFIG = """
identity: {claim_headers: {sub: x-user-id, plan: x-plan}, trusted_proxies: 1}
headers: {legacy: false}
rules:
  - name: api
    match: {paths: ["/api/**"]}
    key: claim:sub
    tiers: {by: claim:plan, limits: {pro: 3/minute}, default: 1/minute}
  - name: login
    match: {path: /login, methods: [POST]}
    key: ip
    limits: 2/minute
"""


@pytest.fixture
def limiter(tmp_path: Path) -> Any:
    """A memory limiter on a fake clock, built from CONFIG."""
    with Limiter.from_config(write(tmp_path, CONFIG), reload=False, clock=FakeClock(T0)) as made:
        yield made


def starlette_app(limiter: Limiter) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ratelimit.asgi import RateLimitMiddleware

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/api/items", ok), Route("/login", ok, methods=["POST"]), Route("/free", ok)]
    )
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    return app


async def test_asgi_middleware_enforces_config_rules(limiter: Limiter) -> None:
    """Tiers, path rules and the config's header settings apply through the ASGI middleware."""
    transport = httpx.ASGITransport(app=starlette_app(limiter), client=("10.0.0.5", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        pro = [
            (await client.get("/api/items", headers={"x-user-id": "a", "x-plan": "pro"})).status_code
            for _ in range(4)
        ]
        assert pro == [200, 200, 200, 429]
        free = await client.get("/api/items", headers={"x-user-id": "b"})
        assert free.status_code == 200 and free.headers["ratelimit-policy"] == '"api";q=1;w=60'
        assert "x-ratelimit-limit" not in free.headers  # headers.legacy: false in the file
        assert (await client.get("/free")).headers.get("ratelimit") is None
        xff = {"x-forwarded-for": "1.1.1.1, 9.9.9.9"}
        logins = [(await client.post("/login", headers=xff)).status_code for _ in range(3)]
        assert logins == [200, 200, 429]
        assert (
            await client.post("/login", headers={"x-forwarded-for": "1.1.1.1, 8.8.8.8"})
        ).status_code == 200


async def test_asgi_explicit_arguments_win_over_the_file(limiter: Limiter) -> None:
    """An adapter argument (legacy_headers=True) wins over the file's headers.legacy: false."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ratelimit.asgi import RateLimitMiddleware

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/api/items", ok)])
    app.add_middleware(RateLimitMiddleware, limiter=limiter, legacy_headers=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        r = await client.get("/api/items", headers={"x-user-id": "z"})
        assert r.headers["x-ratelimit-limit"] == "1"


def test_wsgi_middleware_and_flask_enforce_config_rules(limiter: Limiter) -> None:
    """The WSGI middleware (via Flask) enforces the same file with no rules in code."""
    flask = pytest.importorskip("flask")
    from ratelimit.flask import RateLimit

    app = flask.Flask(__name__)

    @app.get("/api/items")
    def items() -> str:
        return "ok"

    RateLimit(app, limiter=limiter)
    client = app.test_client()
    codes = [client.get("/api/items", headers={"x-user-id": "c"}).status_code for _ in range(2)]
    assert codes == [200, 429]
    assert client.get("/api/items", headers={"x-user-id": "d", "x-plan": "pro"}).status_code == 200


def test_flask_hooks_mode_enforces_config_rules(limiter: Limiter) -> None:
    """Hooks mode uses the config rules too (enforced once, not twice)."""
    flask = pytest.importorskip("flask")
    from ratelimit.flask import RateLimit

    app = flask.Flask(__name__)

    @app.get("/api/items")
    def items() -> str:
        return "ok"

    RateLimit(app, limiter=limiter, mode="hooks")
    client = app.test_client()
    codes = [
        client.get("/api/items", headers={"x-user-id": "e", "x-plan": "pro"}).status_code for _ in range(4)
    ]
    assert codes == [200, 200, 200, 429]


def test_django_config_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RATELIMIT = {"CONFIG": path} builds the limiter from the file."""
    pytest.importorskip("django")
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="x")
    path = write(tmp_path, CONFIG)
    monkeypatch.setattr(settings, "RATELIMIT", {"CONFIG": str(path)}, raising=False)
    from django.http import HttpResponse
    from django.test import RequestFactory

    from ratelimit.django import RateLimitMiddleware

    middleware = RateLimitMiddleware(lambda request: HttpResponse("ok"))
    try:
        factory = RequestFactory()
        codes = [middleware(factory.get("/api/x", HTTP_X_USER_ID="f")).status_code for _ in range(2)]
        assert codes == [200, 429]
    finally:
        middleware.enforcer.limiter.close()


urlpatterns: list[Any] = []


# -- the file's settings reach every adapter, and a reload never mixes ---------------------


async def test_decorator_and_limits_follow_the_files_trusted_proxies(tmp_path: Path) -> None:
    """identity.trusted_proxies: 1 makes decorator and limits= rules count the client, not the proxy.

    Decorators once hard-coded 0 proxies: behind one proxy (a waypoint) every client
    shared the proxy's counter, while the middleware counted per client.
    """
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from ratelimit.asgi import RateLimitMiddleware

    config = write(tmp_path, "identity: {trusted_proxies: 1}\nrules: []\n")
    with Limiter.from_config(config, reload=False, clock=FakeClock(T0)) as limiter:

        @limiter.limit("2/minute", key=lambda request: None)  # no identity: the "ip" policy
        async def decorated(request: Any) -> PlainTextResponse:
            return PlainTextResponse("ok")

        async def plain(request: Any) -> PlainTextResponse:
            return PlainTextResponse("ok")

        app = Starlette(routes=[Route("/deco", decorated), Route("/short", plain)])
        app.add_middleware(RateLimitMiddleware, limiter=limiter, limits={"/short": "2/minute"})
        transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))  # the proxy
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            for path in ("/deco", "/short"):
                codes: dict[str, list[int]] = {}
                for who in ("203.0.113.7", "198.51.100.9"):
                    sent = [await client.get(path, headers={"x-forwarded-for": who}) for _ in range(3)]
                    codes[who] = [r.status_code for r in sent]
                # Each client has its own 2/minute; the proxy's address is not the identity.
                assert codes == {"203.0.113.7": [200, 200, 429], "198.51.100.9": [200, 200, 429]}, path


async def test_a_reload_during_a_request_cannot_mix_rules_and_settings(tmp_path: Path) -> None:
    """A config swap while a request resolves its key leaves that request on the old snapshot."""
    from ratelimit.enforce import Enforcer
    from ratelimit.request import Headers, RequestInfo
    from ratelimit.rules import Rule

    old = write(tmp_path, "headers: {enabled: true}\nrules: []\n", name="old.yaml")
    new = write(
        tmp_path, "headers: {enabled: false}\nidentity: {trusted_proxies: 3}\nrules: []\n", name="new.yaml"
    )
    with Limiter.from_config(old, reload=False, clock=FakeClock(T0)) as limiter:
        newer = Limiter.from_config(new, reload=False, clock=FakeClock(T0))
        seen: list[Any] = []

        async def key(request: RequestInfo) -> str:
            limiter.ruleset = newer.ruleset  # the watcher's swap, mid-request
            seen.append(enforcer.snapshot())
            return "ann"

        enforcer = Enforcer.for_adapter(limiter, "test", [Rule.of("r", "5/minute", key)])
        before = enforcer.snapshot()
        request = RequestInfo("http", "GET", "/x", Headers([]), client="10.0.0.1")
        outcome = await enforcer.acheck(request)
        # The request kept the snapshot it started with: headers on (old), not off (new).
        assert outcome.action == "allow" and any(h[0] == "RateLimit" for h in outcome.headers)
        assert seen[0] is not before and not seen[0].headers and before.headers
        # The next request sees the new snapshot whole.
        later = await enforcer.acheck(request)
        assert later.action == "allow" and not later.headers
        newer.close()
