"""What ``ratelimit serve`` runs with: flags first, then envoyproxy/ratelimit's environment variables.

The variable names are upstream's (src/settings/settings.go), so a Deployment written
for the Go service keeps its ``env:`` block. docs/serve.md has the table of every
upstream variable and what becomes of it here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from .._core.reader import parse_duration

__all__ = ["ServeSettings", "SettingsError", "redis_url_from_env"]


class SettingsError(ValueError):
    """A flag or environment variable has a value ``ratelimit serve`` cannot use."""


_TRUE = ("1", "t", "true", "y", "yes", "on")
_FALSE = ("0", "f", "false", "n", "no", "off", "")
_LEVELS = {"trace": "DEBUG", "debug": "DEBUG", "info": "INFO", "warn": "WARNING", "warning": "WARNING",
           "error": "ERROR", "fatal": "CRITICAL", "panic": "CRITICAL"}  # fmt: skip


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r}: expected true or false")


def _port(env: Mapping[str, str], name: str, given: int | None, default: int) -> int:
    if given is not None:
        value = given
    else:
        raw = env.get(name)
        try:
            value = int(raw) if raw not in (None, "") else default
        except ValueError:
            raise SettingsError(f"{name}={raw!r}: expected a port number") from None
    if not 0 <= value < 65536:
        raise SettingsError(f"{name}: port {value} is out of range (0 picks a free one)")
    return value


def _duration(env: Mapping[str, str], name: str) -> float | None:
    """A Go duration (``50ms``, ``1.5s``, ``10s``) or plain seconds; None when unset."""
    raw = env.get(name)
    if raw in (None, ""):
        return None
    try:
        return parse_duration(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a duration such as 50ms or 2s") from None


def redis_url_from_env(env: Mapping[str, str]) -> str | None:
    """The storage URL that upstream's REDIS_* variables describe, or None when REDIS_URL is unset.

    ``REDIS_URL`` with a scheme (``redis://``, ``rediss://``, ``redis+sentinel://``...) is
    taken as it is. Without one it is upstream's form, completed by ``REDIS_TYPE``
    (SINGLE, SENTINEL: ``master,host:port,...``, CLUSTER: ``host:port,...``),
    ``REDIS_SOCKET_TYPE`` (tcp or unix), ``REDIS_AUTH`` (``password`` or
    ``user:password``) and ``REDIS_TLS``.
    """
    raw = (env.get("REDIS_URL") or "").strip()
    if not raw:
        return None
    if "://" in raw:
        return raw
    kind = (env.get("REDIS_TYPE") or "SINGLE").strip().upper()
    tls = _flag(env, "REDIS_TLS", False)
    auth = env.get("REDIS_AUTH") or ""
    creds = ""
    if auth:
        user, sep, password = auth.partition(":")
        creds = f"{quote(user, safe='')}:{quote(password, safe='')}@" if sep else f":{quote(auth, safe='')}@"
    s = "s" if tls else ""
    tls_query = _tls_query(env) if tls else ""
    if kind == "SINGLE":
        socket_type = (env.get("REDIS_SOCKET_TYPE") or "unix").strip().lower()
        if socket_type == "unix" or raw.startswith("/"):
            return f"unix://{raw}" + (f"?password={quote(auth, safe='')}" if auth else "")
        if socket_type != "tcp":
            raise SettingsError(f"REDIS_SOCKET_TYPE={socket_type!r}: expected tcp or unix")
        return f"redis{s}://{creds}{raw}" + (f"?{tls_query}" if tls_query else "")
    if kind == "CLUSTER":
        return f"redis{s}+cluster://{creds}{raw}" + (f"?{tls_query}" if tls_query else "")
    if kind == "SENTINEL":
        master, _, hosts = raw.partition(",")
        if not hosts:
            raise SettingsError("REDIS_TYPE=SENTINEL needs REDIS_URL=master-name,host:port[,host:port...]")
        query = (
            f"?sentinel_password={quote(env['REDIS_SENTINEL_AUTH'], safe='')}"
            if env.get("REDIS_SENTINEL_AUTH")
            else ""
        )
        return f"redis{s}+sentinel://{creds}{hosts}/{quote(master, safe='')}{query}"
    raise SettingsError(f"REDIS_TYPE={kind!r}: expected SINGLE, SENTINEL or CLUSTER")


def _tls_query(env: Mapping[str, str]) -> str:
    """REDIS_TLS_* files as the URL's ssl_* options."""
    params = [
        f"{option}={quote(env[name], safe='/')}"
        for name, option in (
            ("REDIS_TLS_CACERT", "ssl_ca_certs"),
            ("REDIS_TLS_CLIENT_CERT", "ssl_certfile"),
            ("REDIS_TLS_CLIENT_KEY", "ssl_keyfile"),
        )
        if env.get(name)
    ]
    if _flag(env, "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION", False):
        params.append("ssl_check_hostname=false")
    return "&".join(params)


def _default_config(env: Mapping[str, str]) -> Path:
    """Upstream's config directory: RUNTIME_ROOT / RUNTIME_SUBDIRECTORY / RUNTIME_APPDIRECTORY."""
    root = env.get("RUNTIME_ROOT") or "/srv/runtime_data/current"
    return Path(root, env.get("RUNTIME_SUBDIRECTORY") or "", env.get("RUNTIME_APPDIRECTORY") or "config")


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``ratelimit serve`` runs with (see :meth:`from_env`).

    Attributes:
        config: this package's config file, an envoyproxy/ratelimit service config file,
            or a directory of service config files.
        grpc_host, grpc_port, http_host, http_port: where to listen (port 0 picks a free one).
        storage: the Redis URL used when the config file names no ``backend.storage``.
        timeout: the Redis budget when the config file names none (REDIS_TIMEOUT).
        prefix: the key prefix when the config file names none (CACHE_KEY_PREFIX).
        shadow: never answer OVER_LIMIT (SHADOW_MODE), metrics and statuses still tell.
        quota: every limit in quota mode (QUOTA_MODE).
        dynamic_metadata: describe the request, and the ``metadata`` of the limits it
            passed, in the response's ``dynamic_metadata`` (RESPONSE_DYNAMIC_METADATA).
        headers: add RateLimit header fields to responses (LIMIT_RESPONSE_HEADERS_ENABLED);
            None: as this package's config file says, and off for upstream's format (a
            service config file or directory), as the Go service's default.
        header_names: names for the X-RateLimit-Limit/-Remaining/-Reset fields.
        near_limit_ratio: the share of a limit above which hits count as near the limit.
        log_level, log_format: logging (LOG_LEVEL, LOG_FORMAT text or json).
        workers: processes sharing the ports (SO_REUSEPORT).
        grace: seconds SIGTERM waits for in-flight calls before closing them.
        reload: seconds between checks of the config for changes.
        max_connection_age, max_connection_age_grace: gRPC connection lifetime, then the
            grace before it is closed (GRPC_MAX_CONNECTION_AGE, GRPC_MAX_CONNECTION_AGE_GRACE).
        metrics_address: an extra ``host:port`` serving only /metrics (USE_PROMETHEUS).
        metrics_path: where metrics are served (PROMETHEUS_PATH).
    """

    config: Path
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 8081
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    storage: str | None = None
    timeout: float | None = None
    prefix: str | None = None
    shadow: bool = False
    quota: bool = False
    dynamic_metadata: bool = False
    headers: bool | None = None
    header_names: tuple[str, str, str] = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
    near_limit_ratio: float = 0.8
    log_level: str = "INFO"
    log_format: str = "text"
    workers: int = 1
    grace: float = 15.0
    reload: float = 2.0
    max_connection_age: float = 86400.0
    max_connection_age_grace: float = 3600.0
    metrics_address: tuple[str, int] | None = None
    metrics_path: str = "/metrics"
    ignored: tuple[str, ...] = field(default=())

    @classmethod
    def from_env(
        cls,
        config: str | None = None,
        *,
        grpc_port: int | None = None,
        http_port: int | None = None,
        workers: int | None = None,
        grace: float | None = None,
        reload: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ServeSettings:
        """Settings from the command line's values, the rest from ``env`` (default ``os.environ``).

        Raises:
            SettingsError: a variable that is set has a value that cannot be used.
        """
        env = os.environ if env is None else env
        ratio_raw = env.get("NEAR_LIMIT_RATIO") or "0.8"
        try:
            ratio = float(ratio_raw)
        except ValueError:
            raise SettingsError(f"NEAR_LIMIT_RATIO={ratio_raw!r}: expected a number in [0, 1]") from None
        if not 0 <= ratio <= 1:
            raise SettingsError(f"NEAR_LIMIT_RATIO={ratio_raw!r}: expected a number in [0, 1]")
        level_raw = (env.get("LOG_LEVEL") or "INFO").strip().lower()
        if level_raw not in _LEVELS:
            raise SettingsError(f"LOG_LEVEL={level_raw!r}: expected debug, info, warn or error")
        fmt = (env.get("LOG_FORMAT") or "text").strip().lower()
        if fmt not in ("text", "json"):
            raise SettingsError(f"LOG_FORMAT={fmt!r}: expected text or json")
        headers = (
            _flag(env, "LIMIT_RESPONSE_HEADERS_ENABLED", False)
            if "LIMIT_RESPONSE_HEADERS_ENABLED" in env
            else None
        )
        names = (
            env.get("LIMIT_LIMIT_HEADER") or "X-RateLimit-Limit",
            env.get("LIMIT_REMAINING_HEADER") or "X-RateLimit-Remaining",
            env.get("LIMIT_RESET_HEADER") or "X-RateLimit-Reset",
        )
        count = workers if workers is not None else int(env.get("WORKERS") or 1)
        if not 1 <= count <= 256:
            raise SettingsError(f"--workers {count}: expected 1 to 256")
        if grace is not None and not 0 <= grace <= 3600:
            raise SettingsError(f"--grace {grace}: expected 0 to 3600 seconds")
        if reload is not None and not 0 < reload <= 3600:
            raise SettingsError(f"--reload {reload}: expected seconds in (0, 3600]")
        timeout = _duration(env, "REDIS_TIMEOUT")
        if timeout is not None and not 0 < timeout <= 60:
            raise SettingsError(f"REDIS_TIMEOUT={env['REDIS_TIMEOUT']!r}: expected between 1ms and 60s")
        age = _duration(env, "GRPC_MAX_CONNECTION_AGE")
        age_grace = _duration(env, "GRPC_MAX_CONNECTION_AGE_GRACE")
        metrics_address = None
        if _flag(env, "USE_PROMETHEUS", False):
            host, _, port = (env.get("PROMETHEUS_ADDR") or ":9090").rpartition(":")
            try:
                metrics_address = (host or "0.0.0.0", int(port))
            except ValueError:
                raise SettingsError(
                    f"PROMETHEUS_ADDR={env.get('PROMETHEUS_ADDR')!r}: expected host:port"
                ) from None
        path = env.get("PROMETHEUS_PATH") or "/metrics"
        http_env = "HTTP_PORT" if env.get("HTTP_PORT") else "PORT"
        return cls(
            config=Path(config) if config else _default_config(env),
            grpc_host=env.get("GRPC_HOST") or "0.0.0.0",
            grpc_port=_port(env, "GRPC_PORT", grpc_port, 8081),
            http_host=env.get("HOST") or "0.0.0.0",
            http_port=_port(env, http_env, http_port, 8080),
            storage=redis_url_from_env(env),
            timeout=timeout,
            prefix=env.get("CACHE_KEY_PREFIX") or None,
            shadow=_flag(env, "SHADOW_MODE", False),
            quota=_flag(env, "QUOTA_MODE", False),
            dynamic_metadata=_flag(env, "RESPONSE_DYNAMIC_METADATA", False),
            headers=headers,
            header_names=names,
            near_limit_ratio=ratio,
            log_level=_LEVELS[level_raw],
            log_format=fmt,
            workers=count,
            grace=15.0 if grace is None else grace,
            reload=2.0 if reload is None else reload,
            max_connection_age=86400.0 if age is None else age,
            max_connection_age_grace=3600.0 if age_grace is None else age_grace,
            metrics_address=metrics_address,
            metrics_path=path if path.startswith("/") else "/" + path,
            ignored=tuple(sorted(n for n, harmless in IGNORED.items() if _set(env, n, harmless))),
        )


IGNORED: dict[str, tuple[str, ...]] = {
    "GRPC_UDS": (),
    "GRPC_SERVER_USE_TLS": _FALSE,
    "GRPC_SERVER_TLS_CERT": (),
    "GRPC_SERVER_TLS_KEY": (),
    "GRPC_CLIENT_TLS_CACERT": (),
    "GRPC_CLIENT_TLS_SAN": (),
    "CONFIG_TYPE": ("file",),
    "MERGE_DOMAIN_CONFIG": _FALSE,
    "BACKEND_TYPE": ("redis",),
    "MEMCACHE_HOST_PORT": (),
    "REDIS_PERSECOND": _FALSE,
    "USE_STATSD": _FALSE,
    "USE_DOG_STATSD": _FALSE,
    "LOCAL_CACHE_SIZE_IN_BYTES": ("0",),
    "TRACING_ENABLED": _FALSE,
}
"""Variables that make the Go service do what this server does not, with their harmless values.

Set to anything else, they are named in a warning at start-up (docs/serve.md says why each is left out)."""


def _set(env: Mapping[str, str], name: str, harmless: tuple[str, ...]) -> bool:
    raw = env.get(name)
    return raw is not None and raw.strip().lower() not in (*harmless, "")
