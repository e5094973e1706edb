"""Run the server: the limiter from the config, the gRPC and HTTP ports, signals, workers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from ..config import ConfigError, load_config
from ..limiter import Limiter
from ._http import HttpEndpoints
from ._metrics import ServiceMetrics
from ._service import BadRequest, RateLimitCore
from ._settings import ServeSettings, SettingsError

__all__ = ["ServeError", "build_limiter", "run", "serve_forever"]

log = logging.getLogger("ratelimit.serve")
SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
# As the Go service: the ports may be shared by several processes (--workers, or a restart
# overlapping the old process), the kernel spreading connections between them.
_REUSE_PORT = hasattr(socket, "SO_REUSEPORT")


class ServeError(RuntimeError):
    """The server cannot start: the message says why."""


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra=`` fields."""

    _PLAIN = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self._PLAIN})
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _TextFormatter(logging.Formatter):
    """``time level logger: message key=value...`` (the ``extra=`` fields appended)."""

    _PLAIN = _JsonFormatter._PLAIN

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in self._PLAIN)
        return f"{line} {extra}" if extra else line


def configure_logging(settings: ServeSettings) -> None:
    """Log to stderr at LOG_LEVEL, as text or JSON lines (LOG_FORMAT)."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


def build_limiter(settings: ServeSettings, metrics: ServiceMetrics) -> tuple[Limiter, bool]:
    """The limiter of the config (file or directory), with storage from the file or REDIS_URL.

    The config file's ``backend`` wins; the environment fills in what it leaves out.
    Also says whether the config is in upstream's own format (a service config file or
    a directory of them).

    Raises:
        ServeError: the config is invalid or names no storage and REDIS_URL is unset.
    """
    path = settings.config
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise ServeError(f"invalid config:\n{exc}") from None
    file_options = config.limiter_options
    extra: dict[str, Any] = {
        name: value
        for name, value in (
            ("storage", settings.storage),
            ("timeout", settings.timeout),
            ("prefix", settings.prefix),
        )
        if name not in file_options and value is not None
    }
    if "storage" not in file_options and "storage" not in extra:
        raise ServeError(
            f"no storage: {path} names no backend.storage and REDIS_URL is unset "
            "(REDIS_URL=redis://host:6379/0; memory:// keeps counters in this process only)"
        )
    try:
        limiter = Limiter.from_config(path, reload=settings.reload, metrics=metrics.engine, **extra)
    except (ValueError, TypeError, ImportError, ConfigError) as exc:
        raise ServeError(f"cannot build the limiter: {exc}") from None
    return limiter, config.service_format


async def serve_forever(settings: ServeSettings, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (SIGTERM and SIGINT set it), then drain and close."""
    import grpc  # type: ignore[import-untyped]
    from envoy.service.ratelimit.v3 import rls_pb2_grpc  # type: ignore[import-untyped]
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]
    from grpc_reflection.v1alpha import reflection  # type: ignore[import-untyped]

    try:
        import prometheus_client  # noqa: F401

        has_prometheus = True
    except ImportError:
        has_prometheus = False
    metrics = ServiceMetrics(has_prometheus, settings.near_limit_ratio)
    limiter, service_format = build_limiter(settings, metrics)
    if settings.headers is None and service_format:
        # Upstream's format, upstream's default: response headers only when asked for.
        settings = dataclasses.replace(settings, headers=False)
    core = RateLimitCore(limiter, settings, metrics)
    domains = sorted(core.domains())
    if not domains:
        log.warning("the config %s has no envoy domains: every request is answered OK", settings.config)
    for name in settings.ignored:
        log.warning("%s is set but not supported by ratelimit serve (see docs/serve.md); ignored", name)

    class Servicer(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
        async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
            try:
                return await core.should_rate_limit(request)
            except BadRequest as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    options = [
        ("grpc.so_reuseport", 1 if _REUSE_PORT else 0),
        ("grpc.max_connection_age_ms", int(settings.max_connection_age * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace * 1000)),
    ]
    server = grpc.aio.server(options=options)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Servicer(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    try:
        grpc_port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    except RuntimeError as exc:
        raise ServeError(
            f"cannot listen for gRPC on {settings.grpc_host}:{settings.grpc_port}: {exc}"
        ) from None
    healthy = True
    endpoints = HttpEndpoints(
        core.should_rate_limit, lambda: healthy, settings.metrics_path if has_prometheus else None
    )
    reuse = _REUSE_PORT
    try:
        http = await asyncio.start_server(
            endpoints.handle, settings.http_host, settings.http_port, reuse_port=reuse
        )
        extra = None
        if settings.metrics_address is not None and has_prometheus:
            host, port = settings.metrics_address
            extra = await asyncio.start_server(endpoints.handle, host, port, reuse_port=reuse)
    except OSError as exc:
        await server.stop(None)
        raise ServeError(f"cannot listen for HTTP: {exc}") from None
    http_port = http.sockets[0].getsockname()[1]
    await server.start()
    for name in ("", "ratelimit", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "listening",
        extra={
            "grpc_port": grpc_port,
            "http_port": http_port,
            "domains": ",".join(domains),
            "storage": _redacted(limiter),
            "pid": os.getpid(),
        },
    )
    await stop.wait()
    # Drain: report NOT_SERVING at once, stop taking calls, let the in-flight ones finish.
    log.info("shutting down", extra={"grace_seconds": settings.grace})
    healthy = False
    await health_servicer.enter_graceful_shutdown()
    http.close()
    if extra is not None:
        extra.close()
    await server.stop(settings.grace)
    if endpoints.inflight:
        await asyncio.wait(endpoints.inflight, timeout=max(settings.grace, 0.1))
    await limiter.aclose()
    log.info("stopped")


def _redacted(limiter: Limiter) -> str:
    target = getattr(limiter.backend, "target", None)
    redacted = getattr(target, "redacted", None)
    return redacted() if callable(redacted) else type(limiter.backend).__name__


def run(settings: ServeSettings) -> int:
    """Run ``ratelimit serve`` in this process (or supervise ``workers`` of them); the exit code."""
    configure_logging(settings)
    if settings.workers > 1:
        return _supervise(settings)
    try:
        asyncio.run(serve_forever(settings))
    except ServeError as exc:
        log.error("%s", exc)
        return 1
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    except ImportError as exc:
        log.error("%s; install it with: pip install 'ambient-ratelimit[serve]'", exc)
        return 1
    return 0


def _supervise(settings: ServeSettings) -> int:
    """Start ``workers`` processes on the same ports (SO_REUSEPORT); forward SIGTERM/SIGINT to them."""
    if settings.grpc_port == 0 or settings.http_port == 0:
        log.error("--workers needs fixed ports: the workers share them")
        return 2
    argv = [
        *(sys.executable, "-m", "ratelimit", "serve", str(settings.config)),
        *("--grpc-port", str(settings.grpc_port), "--http-port", str(settings.http_port)),
        *("--grace", str(settings.grace), "--workers", "1"),
    ]
    children = [subprocess.Popen(argv) for _ in range(settings.workers)]
    log.info("started workers", extra={"workers": ",".join(str(c.pid) for c in children)})
    stopping = False

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    while any(c.poll() is None for c in children):
        for child in children:
            rc = child.poll()
            if rc is not None and rc != 0 and not stopping:
                # A worker died on its own: stop the others, let the orchestrator restart the pod.
                log.error("worker %d exited with %d; stopping the others", child.pid, rc)
                forward(signal.SIGTERM, None)
                code = 1
        time.sleep(0.2)
    return code or max((c.returncode or 0) for c in children)
