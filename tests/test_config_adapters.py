"""Limiter.from_config handed to ASGI, WSGI, Flask and Django adapters: the file's rules apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from config_helpers import T0, write

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
