"""The Limiter: the engine plus what users touch on top of it (decorators, config files)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ._core.rate import RateLike
from ._engine.engine import Engine
from .config import ConfigSource, open_config
from .decorators import limit as _limit
from .enforce import MissingIdentity
from .request import KeyFunc

__all__ = ["Limiter"]


class Limiter(Engine):
    """Sliding-window-counter rate limiting on a memory or Redis backend.

    Args:
        storage: ``"memory://"`` (default: per process), a Redis URL (``redis://``,
            ``rediss://``, ``unix://``, ``redis+cluster://``, ``redis+sentinel://``)
            or a :class:`~ratelimit.backends.base.Backend` instance.
        prefix: the first part of every counter key (default ``"rl"``).
        hash_tag: on Redis Cluster, put every counter in this one hash slot so that
            every request is atomic even across identities (default: one slot per
            identity; see docs/concepts.md).
        failure_mode: when the backend fails or exceeds ``timeout``: ``"open"``
            (allow, the default), ``"closed"`` (deny, ``Retry-After: closed_retry_after``)
            or ``"local"`` (decide on an in-process memory backend meanwhile).
            Decisions made this way have ``fallback=True``.
        timeout: the backend's budget per decision, in seconds (default 0.05).
        closed_retry_after: the retry-after of decisions denied by ``"closed"``.
        deny_cache: answer requests already denied locally until their retry-after
            (default: on for Redis, off for memory, where it gains nothing).
        clock: a ``time.time``-like function for the memory backend (tests).
        max_keys: the memory backend's cap on counters.
        coalesce: batch concurrent asyncio checks into shared Redis calls.
        metrics: a :class:`ratelimit.metrics.Metrics` to report backend latency and
            errors to (decisions per rule are reported by the adapters).

    Example::

        limiter = Limiter("redis://localhost:6379/0")
        d = limiter.hit("alice", "100/minute")
        if not d.allowed:
            print(f"retry in {d.retry_after:.1f}s")
    """

    config: ConfigSource | None = None
    """The config file source that loaded ``ruleset`` (see :meth:`from_config`), if any."""

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str], *, reload: bool | float = True, **options: Any
    ) -> Limiter:
        """A limiter built from a config file (docs/configuration.md), carrying its rules.

        Hand it to any adapter (``RateLimitMiddleware(app, limiter=...)``, the WSGI
        middleware, the gRPC interceptors) and the file's rules are enforced there.

        Args:
            path: the YAML file (this project's format, or an envoyproxy/ratelimit config),
                or a directory of envoyproxy/ratelimit configs.
            reload: watch the file and apply valid changes without a restart, every 2 s
                (or every ``reload`` seconds); ``False`` to load once.
            options: :class:`Limiter` arguments that win over the file's ``backend``
                (``storage=``, ``prefix=``, ``clock=``...).

        Raises:
            ratelimit.config.ConfigError: the file is invalid (every error, with its line).
        """
        source = open_config(path, reload=reload)
        limiter = cls(**{**source.current.limiter_options, **options})
        limiter.ruleset = source.current.ruleset
        limiter.config = source
        source.start(limiter)
        return limiter

    def reload_config(self) -> bool:
        """Re-read the config file now: True if new rules were applied, False if unchanged or invalid."""
        if self.config is None:
            raise RuntimeError("this limiter was not built by Limiter.from_config")
        return bool(self.config.reload(self))

    def limit(
        self,
        rates: RateLike | list[RateLike],
        key: KeyFunc | None = None,
        *,
        name: str | None = None,
        cost: Any = 1,
        methods: Any = (),
        shadow: bool = False,
        missing_identity: MissingIdentity | None = None,
        trusted_proxies: int | None = None,
    ) -> Callable[[Any], Any]:
        """Decorate an endpoint (Starlette, FastAPI, Flask, Django; sync or async) with limits.

        ``key`` is a key function from :mod:`ratelimit.keys` (default: one counter for
        every caller of the endpoint). Stacked decorators are decided together, all or
        nothing. The endpoint's signature is left alone: the request comes from the
        framework's ratelimit middleware. Denied calls get the framework's 429 response
        with RateLimit headers and a problem+json body::

            @app.get("/items")
            @limiter.limit("100/minute", key=jwt_subject(jwks_url=JWKS, issuer=ISSUER))
            async def items(): ...
        """
        return _limit(
            self,
            rates,
            key,
            name=name,
            cost=cost,
            methods=methods,
            shadow=shadow,
            missing_identity=missing_identity,
            trusted_proxies=trusted_proxies,
        )

    def close(self) -> None:
        """Release the backend's sync connections and stop watching a config file."""
        if self.config is not None:
            self.config.stop()
        super().close()

    async def aclose(self) -> None:
        """Release the backend's connections (async and sync) and stop watching a config file."""
        if self.config is not None:
            self.config.stop()
        await super().aclose()
