"""A Flask service rate limited per user (JWT subject) and per client IP.

Run it (memory backend, identities from the x-user-id header)::

    pip install -e '.[flask]'
    flask --app examples/flask_app.py run
    curl -i -H 'x-user-id: alice' localhost:5000/api/items

Environment:
    JWKS_URL      verify bearer tokens against this JWKS (no waypoint in front of the app)
    JWT_ISSUER    the accepted ``iss`` (with JWKS_URL)
    JWT_AUDIENCE  the accepted ``aud`` (with JWKS_URL; optional)
    REDIS_URL     share counters between replicas, e.g. redis://redis:6379/0
    API_RATE      the per-user limit of /api/** (default 100/minute)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, jsonify

from ratelimit import Limiter
from ratelimit.flask import RateLimit
from ratelimit.keys import jwt_subject
from ratelimit.rules import Rule


def user_key(env: Mapping[str, str]) -> Any:
    """Who a request is: the verified ``sub`` of its JWT."""
    if env.get("JWKS_URL"):
        # ztunnel only (no waypoint): nothing upstream verified the token, so we do.
        # Forged, expired or alg=none tokens have no identity (401 below).
        return jwt_subject(
            jwks_url=env["JWKS_URL"], issuer=env.get("JWT_ISSUER"), audience=env.get("JWT_AUDIENCE")
        )
    # Behind an Istio waypoint: RequestAuthentication verifies the JWT and, with
    #   outputClaimToHeaders: [{header: x-user-id, claim: sub}]
    # writes the subject into x-user-id, overwriting anything the client sent. Trust that
    # header only when every request reaches the app through the waypoint.
    return jwt_subject(trusted_header="x-user-id")


def create_app(env: Mapping[str, str] = os.environ) -> Flask:
    """The example app; ``env`` stands in for the process environment."""
    limiter = Limiter(env.get("REDIS_URL", "memory://"))
    user = user_key(env)

    app = Flask(__name__)
    # Installs ratelimit.wsgi.RateLimitMiddleware around app.wsgi_app; the same as
    #   app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter, rules=..., limits=...)
    RateLimit(
        app,
        limiter=limiter,
        rules=[Rule.of("per-user", env.get("API_RATE", "100/minute"), user, paths="/api/**")],
        limits={"POST /login": "5/minute"},  # per client IP (key=client_ip() by default)
        missing_identity="reject",  # /api/** without a valid identity: 401, counted nowhere
    )

    @app.get("/")
    def index() -> Any:
        return jsonify(service="example", docs="/api/items")

    @app.post("/login")
    def login() -> Any:
        return jsonify(token="issued by your identity provider, not here")

    @app.get("/api/items")
    def items() -> Any:
        return jsonify(items=["apple", "pear"])

    # Endpoint limits on top of the middleware's, decided together (all or nothing).
    @app.route("/api/reports", methods=["GET", "POST"])
    @limiter.limit("2/minute", key=user, name="reports-burst", methods="POST")
    @limiter.limit("20/day", key=user, name="reports-daily", methods="POST")
    def reports() -> Any:
        return jsonify(report="ok")

    app.extensions["limiter"] = limiter
    return app


app = create_app()

if __name__ == "__main__":
    app.run(debug=True)
