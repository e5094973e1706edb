"""``ratelimit serve``: a drop-in for the envoyproxy/ratelimit service, on this package's engine.

Envoy (an Istio waypoint or gateway, or any Envoy with the ``envoy.filters.http.ratelimit``
filter) calls ``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``; this
server answers from the same config file, Redis counters and sliding windows as an app
using :meth:`ratelimit.Limiter.from_config`, so gateway and app share one budget. See
docs/serve.md for the command, the environment variables and the metrics.

Needs the ``serve`` extra: ``pip install 'ambient-ratelimit[serve]'``.
"""

from __future__ import annotations

from ._runner import ServeError, run
from ._service import BadRequest, RateLimitCore
from ._settings import ServeSettings, SettingsError

__all__ = ["BadRequest", "RateLimitCore", "ServeError", "ServeSettings", "SettingsError", "run"]
