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

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ._wire import Endpoint

__all__ = [
    "RedisTarget",
    "client_endpoints",
    "make_clients",
    "make_sentinel",
    "parse_redis_url",
    "redact_url",
    "target_endpoints",
]


def redact_url(url: str) -> str:
    """``url`` with every password (userinfo, ``*password=`` options) replaced by ``***``: safe to print."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    if "password" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if "password" in k else v) for k, v in pairs], safe="/*")
    return parts._replace(netloc=netloc, query=query).geturl()


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
        """The URL with every password (userinfo, ``password=``, ``sentinel_password=``) as ``***``."""
        return redact_url(self.url)


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


SSL_OPTIONS = (
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
    for name in SSL_OPTIONS:
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
    import redis.cluster
    import redis.retry
    from redis.backoff import NoBackoff

    # The sync and asyncio flavours of each class, chosen once.
    r: Any = redis.asyncio if aio else redis
    Retry: Any = redis.asyncio.retry.Retry if aio else redis.retry.Retry
    cluster: Any = redis.asyncio.cluster if aio else redis.cluster

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
    sentinel = make_sentinel(target, timeout, aio)
    client = sentinel.master_for(target.service, db=target.db, **auth, **_tls_kwargs(target), **common)
    return client, [client, sentinel]


def make_sentinel(target: RedisTarget, timeout: float, aio: bool) -> Any:
    """A redis-py Sentinel manager for ``target`` (asks the sentinels where the master is)."""
    import redis.asyncio.sentinel
    import redis.sentinel

    sentinel_kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if "sentinel_password" in target.options:
        sentinel_kwargs["password"] = target.options["sentinel_password"]
    if "sentinel_username" in target.options:
        sentinel_kwargs["username"] = target.options["sentinel_username"]
    sentinel_kwargs.update(_tls_kwargs(target))
    Sentinel: Any = redis.asyncio.sentinel.Sentinel if aio else redis.sentinel.Sentinel
    return Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs)


# -- endpoints for the asyncio wire (``_wire``), which does not use redis-py's clients --


def _ssl_context(options: dict[str, Any]) -> ssl.SSLContext:
    """A client TLS context from redis-py's ``ssl_*`` options, with redis-py's defaults."""
    reqs = str(options.get("ssl_cert_reqs", "required")).lower()
    ctx = ssl.create_default_context(
        cafile=options.get("ssl_ca_certs") or None,
        capath=options.get("ssl_ca_path") or None,
        cadata=options.get("ssl_ca_data") or None,
    )
    check = options.get("ssl_check_hostname", True)
    ctx.check_hostname = (
        check if isinstance(check, bool) else str(check).lower() in ("1", "true", "yes")
    ) and (reqs == "required")
    ctx.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(reqs, ssl.CERT_REQUIRED)
    if options.get("ssl_certfile"):
        ctx.load_cert_chain(
            options["ssl_certfile"], options.get("ssl_keyfile") or None, options.get("ssl_password")
        )
    return ctx


def target_endpoints(target: RedisTarget) -> list[Endpoint]:
    """The servers a URL names: the standalone server, or a Cluster's startup nodes.

    (A Sentinel URL names sentinels, not Redis servers; the master is asked of them.)
    """
    if target.url.lower().startswith("unix://"):
        parts = urlsplit(target.url)
        query = dict(parse_qsl(parts.query))
        user, _, pw = parts.netloc.rpartition("@")[0].partition(":")
        password = query.get("password") or (unquote(pw) if pw else None)
        username = query.get("username") or (unquote(user) if user else None)
        return [Endpoint(path=parts.path, username=username, password=password, db=int(query.get("db", 0)))]
    context = _ssl_context(target.options) if target.tls else None
    return [
        Endpoint(h, p, None, context, None, target.username, target.password, target.db)
        for h, p in target.hosts
    ]


def client_endpoints(client: Any) -> list[Endpoint]:
    """The servers a redis-py asyncio client (standalone or Cluster) talks to, and its login."""
    if hasattr(client, "get_nodes") and hasattr(client, "nodes_manager"):  # RedisCluster
        nodes = client.nodes_manager.startup_nodes.values() or client.get_nodes()
        kwargs = dict(client.connection_kwargs)
        return [_endpoint_from_kwargs({**kwargs, "host": n.host, "port": n.port}) for n in nodes]
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    if pool.connection_class.__name__ == "SSLConnection":
        kwargs["ssl"] = True
    return [_endpoint_from_kwargs(kwargs)]


def _endpoint_from_kwargs(kw: dict[str, Any]) -> Endpoint:
    ssl_options = {k: v for k, v in kw.items() if k.startswith("ssl_") and v is not None}
    context = _ssl_context(ssl_options) if kw.get("ssl") or ssl_options else None
    return Endpoint(
        str(kw.get("host", "localhost")),
        int(kw.get("port", 6379)),
        kw.get("path"),
        context,
        None,
        kw.get("username"),
        kw.get("password"),
        int(kw.get("db", 0) or 0),
    )
