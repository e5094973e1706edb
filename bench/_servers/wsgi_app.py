"""Flask apps for gunicorn: ``gunicorn -k gthread -w 1 --threads 8 '_servers.wsgi_app:create_app()'``.

``BENCH_VARIANT`` picks the variant (see ``VARIANTS``). Every variant serves ``GET
/items`` -> ``"ok"`` from a Flask view, with or without a rate limiter; all of them sit
behind :class:`CountingWSGI`, which counts the statuses and answers ``GET /__stats``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from _servers.common import ITEMS_PATH, STATS_PATH, SUBJECT_HEADER, ServerSettings, Stats


class CountingWSGI:
    """Outermost WSGI wrapper: counts statuses (under a lock: gthread), serves ``/__stats``."""

    def __init__(self, app: Any, stats: Stats) -> None:
        self.app = app
        self.stats = stats

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == STATS_PATH:
            body = self.stats.json()
            start_response(
                "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            )
            return [body]
        self.stats.start_locked()
        count = self.stats.count_locked
        started = False

        def counting_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            nonlocal started
            if not started:
                started = True
                count(int(status[:3]))
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, counting_start_response)  # type: ignore[no-any-return]
        except BaseException:
            if not started:
                count(500)
            raise


def bare_flask(view: Callable[[], Any] | None = None) -> Any:
    """Flask, one view: ``GET /items`` -> ``"ok"``."""
    import flask

    app = flask.Flask("bench_flask")

    def items() -> str:
        return "ok"

    app.add_url_rule(ITEMS_PATH, "items", view or items, methods=["GET"])
    return app


def _bare(s: ServerSettings, stats: Stats) -> Any:
    return bare_flask()


def _wsgi_middleware(redis: bool) -> Callable[[ServerSettings, Stats], Any]:
    def build(s: ServerSettings, stats: Stats) -> Any:
        from ratelimit import Limiter
        from ratelimit.keys import header
        from ratelimit.wsgi import RateLimitMiddleware

        sink = stats.sink()
        limiter = Limiter(s.require_redis(), metrics=sink) if redis else Limiter(metrics=sink)
        app = bare_flask()
        app.wsgi_app = RateLimitMiddleware(
            app.wsgi_app,
            limiter,
            key=header(SUBJECT_HEADER),
            limits={ITEMS_PATH: s.rate},
            metrics=stats.sink(),
        )
        return app

    return build


def _flask_decorator(s: ServerSettings, stats: Stats) -> Any:
    """``ratelimit.flask.RateLimit(app, limiter=...)`` (no rules) + ``@limiter.limit`` on the view."""
    from ratelimit import Limiter
    from ratelimit.flask import RateLimit
    from ratelimit.keys import header

    limiter = Limiter(s.require_redis(), metrics=stats.sink())

    @limiter.limit(s.rate, key=header(SUBJECT_HEADER))
    def items() -> str:
        return "ok"

    app = bare_flask(items)
    RateLimit(app, limiter=limiter, metrics=stats.sink())
    return app


def _flask_limiter(s: ServerSettings, stats: Stats) -> Any:
    """flask-limiter on the same Redis, sliding-window-counter, its default (no headers)."""
    import flask
    from flask_limiter import Limiter

    def user_id() -> str:
        return flask.request.headers.get(SUBJECT_HEADER, "anonymous")

    limiter = Limiter(key_func=user_id, storage_uri=s.require_redis(), strategy="sliding-window-counter")

    @limiter.limit(s.rate)
    def items() -> str:
        return "ok"

    app = bare_flask(items)
    limiter.init_app(app)
    stats.observable = False
    return app


VARIANTS: dict[str, Callable[[ServerSettings, Stats], Any]] = {
    "bare-flask": _bare,
    "wsgi-middleware": _wsgi_middleware(redis=True),
    "wsgi-middleware-memory": _wsgi_middleware(redis=False),
    "flask-decorator": _flask_decorator,
    "flask-limiter": _flask_limiter,
}


def create_app() -> Any:
    """The gunicorn factory: the variant named by ``BENCH_VARIANT``, behind :class:`CountingWSGI`."""
    settings = ServerSettings.from_env()
    stats = Stats()
    return CountingWSGI(VARIANTS[settings.variant](settings, stats), stats)
