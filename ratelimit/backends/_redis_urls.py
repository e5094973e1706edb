"""Redis URLs -> redis-py clients (standalone, TLS, unix socket, Cluster, Sentinel).

Accepted forms (the conventions of the ``limits`` library, so its users feel at home)::

    redis://[[user]:password@]host[:port][/db][?option=value...]
    rediss://...                       TLS; ?ssl_ca_certs=/path/ca.pem&ssl_cert_reqs=required
    unix:///path/redis.sock[?db=0]
    redis+cluster://[[user]:password@]host:port[,host:port...]   (rediss+cluster:// for TLS)
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]
        ?sentinel_password=...&sentinel_username=...              (rediss+sentinel:// for TLS)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["RedisTarget", "make_clients", "parse_redis_url"]

_SCHEMES = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("standalone", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL."""

    url: str
    kind: str  # standalone | cluster | sentinel
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    db: int = 0
    service: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def redacted(self) -> str:
        """The URL with any password replaced by ``***`` (safe to log)."""
        if self.password is None:
            return self.url
        return self.url.replace(f":{self.password}@", ":***@", 1)


def _port(text: str, url: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ValueError(f"invalid port {text!r} in Redis URL {url!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port} in Redis URL {url!r}")
    return port


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a Redis URL; raises ValueError naming the URL when it is not one we accept."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"not a Redis URL: {url!r} (expected e.g. 'redis://localhost:6379/0')")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"unsupported Redis URL scheme {scheme!r} in {url!r}; use one of {sorted(_SCHEMES)}")
    kind, tls = _SCHEMES[scheme]
    if scheme == "unix":
        _refuse_budget_options(dict(parse_qsl(urlsplit(url).query)), url)
        return RedisTarget(url, kind, tls)  # redis-py parses unix URLs itself
    parts = urlsplit(url)
    creds, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if creds:
        user, has_pw, pw = creds.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if has_pw else None
    hosts = []
    for item in hostlist.split(","):
        if not item:
            continue
        host, _, port = item.rpartition(":") if item.rfind(":") > item.rfind("]") else (item, "", "")
        default = 26379 if kind == "sentinel" else 6379
        hosts.append((host.strip("[]") or "localhost", _port(port, url) if port else default))
    if not hosts:
        hosts.append(("localhost", 26379 if kind == "sentinel" else 6379))
    path = [p for p in parts.path.split("/") if p]
    service = None
    if kind == "sentinel":
        if not path:
            raise ValueError(
                f"a Sentinel URL names the service: redis+sentinel://host:26379/mymaster, got {url!r}"
            )
        service, path = unquote(path[0]), path[1:]
    db = 0
    if path:
        if kind == "cluster" or len(path) > 1 or not path[0].isdigit():
            raise ValueError(f"invalid database {'/'.join(path)!r} in Redis URL {url!r}")
        db = int(path[0])
    if kind == "standalone" and len(hosts) > 1:
        raise ValueError(f"several hosts need redis+cluster:// or redis+sentinel://, got {url!r}")
    options = dict(parse_qsl(parts.query))
    _refuse_budget_options(options, url)
    return RedisTarget(url, kind, tls, tuple(hosts), username, password, db, service, options)


_BUDGET_OPTIONS = ("socket_timeout", "socket_connect_timeout", "retry_on_timeout", "retry_on_error")


def _refuse_budget_options(options: dict[str, str], url: str) -> None:
    # These would override the limiter's timeout budget and let Redis hang requests.
    clashes = sorted(set(options) & set(_BUDGET_OPTIONS))
    if clashes:
        raise ValueError(
            f"Redis URL option(s) {', '.join(clashes)} in {url!r} would override the limiter's "
            "timeout budget; set Limiter(timeout=...) instead"
        )


_SSL_OPTIONS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "ssl_ca_path",
)


def _tls_kwargs(target: RedisTarget) -> dict[str, Any]:
    if not target.tls:
        return {}
    out: dict[str, Any] = {"ssl": True}
    for name in _SSL_OPTIONS:
        if name in target.options:
            value: Any = target.options[name]
            if name == "ssl_check_hostname":
                value = value.lower() in ("1", "true", "yes")
            out[name] = value
    return out


def make_clients(target: RedisTarget, timeout: float, aio: bool) -> tuple[Any, list[Any]]:
    """Build a sync (``aio=False``) or asyncio client for ``target``.

    Returns the client and the objects to close with it (the client itself, and for
    Sentinel the Sentinel connection manager, which the master client does not close).

    Every socket wait is bounded by ``timeout`` and redis-py's own retries are off: the
    limiter's failure policy decides what happens when Redis is slow or gone, and a
    request must never wait for several retries.
    """
    import redis
    import redis.asyncio
    import redis.asyncio.cluster
    import redis.asyncio.retry
    import redis.asyncio.sentinel
    import redis.cluster
    import redis.retry
    import redis.sentinel
    from redis.backoff import NoBackoff

    # The sync and asyncio flavours of each class, chosen once.
    r: Any = redis.asyncio if aio else redis
    Retry: Any = redis.asyncio.retry.Retry if aio else redis.retry.Retry
    cluster: Any = redis.asyncio.cluster if aio else redis.cluster
    Sentinel: Any = redis.asyncio.sentinel.Sentinel if aio else redis.sentinel.Sentinel

    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    if target.kind == "standalone":
        client = r.Redis.from_url(target.url, **common)
        return client, [client]
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.kind == "cluster":
        nodes = [cluster.ClusterNode(h, p) for h, p in target.hosts]
        client = cluster.RedisCluster(startup_nodes=nodes, **auth, **_tls_kwargs(target), **common)
        return client, [client]
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if "sentinel_password" in target.options:
        sentinel_kwargs["password"] = target.options["sentinel_password"]
    if "sentinel_username" in target.options:
        sentinel_kwargs["username"] = target.options["sentinel_username"]
    sentinel_kwargs.update(_tls_kwargs(target))
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(target.service, db=target.db, **auth, **_tls_kwargs(target), **common)
    return client, [client, sentinel]
