"""What a platform team expects around the RPC: failures, SIGTERM, health, reflection, HTTP, metrics."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import grpc, rls_pb2, start
from test_service import write_config

from ratelimit.serve import ServeSettings, SettingsError
from ratelimit.serve._settings import redis_url_from_env

OK, OVER = rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT


def get(port: int, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST" if body is not None else "GET", path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(("mode", "code"), [("open", OK), ("closed", OVER)])
def test_redis_down_is_answered_by_the_failure_policy(
    tmp_path: Path, fresh_redis: Any, prefix: str, serve: Any, mode: str, code: int
) -> None:
    """With Redis killed, every call is answered (within the client's deadline) as failure_mode says."""
    server = serve(write_config(tmp_path, fresh_redis.url, prefix, failure_mode=mode))
    assert server.ask([("user", "a")]).overall_code == OK
    fresh_redis.kill()
    for _ in range(5):
        answer = server.ask([("user", "a")], timeout=5)  # an answer, not a hang
        assert answer.overall_code == code
        assert answer.statuses[0].code == code
    _, metrics = get(server.http_port, "/metrics")
    assert b'ratelimit_service_should_rate_limit_error_total{err_type="redis_error"}' in metrics
    fresh_redis.restart()


def test_sigterm_drains_calls_in_flight(tmp_path: Path, fresh_redis: Any, prefix: str, serve: Any) -> None:
    """SIGTERM: health turns NOT_SERVING, the call in flight is answered, then the process exits 0."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    server = serve(write_config(tmp_path, fresh_redis.url, prefix, timeout="2s"))
    assert server.ask([("user", "a")]).overall_code == OK
    fresh_redis.pause()  # the next call waits its 2 s budget
    answers: list[Any] = []
    caller = threading.Thread(target=lambda: answers.append(server.ask([("user", "b")], timeout=20)))
    caller.start()
    time.sleep(0.5)  # let the call reach the server (its budget is 2 s): ordering, not speed
    try:
        health = health_pb2_grpc.HealthStub(server.channel)
        server.proc.send_signal(signal.SIGTERM)
        server.wait_log("shutting down")
        try:  # draining: NOT_SERVING, or already refusing new calls
            status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE
        caller.join(20)
    finally:
        fresh_redis.resume()
    assert answers and answers[0].overall_code == OK  # the failure policy answered it, in time
    assert server.proc.wait(20) == 0
    server.wait_log("stopped")


def test_health_and_reflection(tmp_path: Path, redis_url: str, prefix: str, serve: Any) -> None:
    """grpc.health.v1 says SERVING; reflection lists the RateLimitService."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = serve(write_config(tmp_path, redis_url, prefix))
    health = health_pb2_grpc.HealthStub(server.channel)
    for name in ("", "ratelimit", "envoy.service.ratelimit.v3.RateLimitService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert "envoy.service.ratelimit.v3.RateLimitService" in names
    assert "grpc.health.v1.Health" in names


def test_http_endpoints(tmp_path: Path, redis_url: str, prefix: str, serve: Any) -> None:
    """/healthcheck, /json (200, 429, 400) and /metrics, as the Go service's HTTP port."""
    server = serve(write_config(tmp_path, redis_url, prefix))
    port = server.http_port
    assert get(port, "/healthcheck") == (200, b"OK")
    body = json.dumps({"domain": "shop", "descriptors": [{"entries": [{"key": "path", "value": "/login"}]}]})
    for _ in range(2):
        status, payload = get(port, "/json", body.encode())
        assert status == 200
        assert json.loads(payload)["overallCode"] == "OK"
    status, payload = get(port, "/json", body.encode())
    assert status == 429
    answer = json.loads(payload)
    assert answer["statuses"][0]["code"] == "OVER_LIMIT"
    assert answer["statuses"][0]["currentLimit"] == {"requestsPerUnit": 2, "unit": "HOUR"}
    assert get(port, "/json", b"{not json")[0] == 400
    assert get(port, "/json", b'{"domain": "shop", "hitsAddend": -1, "descriptors": []}')[0] == 400
    assert get(port, "/json", b'{"domain": "", "descriptors": [{"entries": []}]}')[0] == 400
    assert get(port, "/json")[0] == 405
    assert get(port, "/nowhere")[0] == 404
    status, metrics = get(port, "/metrics")
    assert status == 200
    text = metrics.decode()
    assert 'ratelimit_service_rate_limit_over_limit_total{domain="shop",key="path_/login"} 1.0' in text
    assert 'ratelimit_service_rate_limit_total_hits_total{domain="shop",key="path_/login"} 3.0' in text
    assert 'ratelimit_decisions_total{adapter="serve"' in text
    assert 'ratelimit_service_should_rate_limit_error_total{err_type="service_error"} 1.0' in text
    # A broken connection does not take the port down.
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        assert b"400" in sock.recv(1024)
    assert get(port, "/healthcheck") == (200, b"OK")


def test_detailed_metric_labels_are_bounded(tmp_path: Path, redis_url: str, prefix: str, serve: Any) -> None:
    """detailed_metric puts the request's values in the key label, and the label stays bounded."""
    service = """
domain: shop
descriptors:
  - key: user
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 5}
"""
    server = serve(write_config(tmp_path, redis_url, prefix, service))
    for first in range(0, 1100, 220):  # 1100 distinct values, in requests under the 256 cap
        server.ask(*[[("user", f"u{i}")] for i in range(first, first + 220)])
    text = get(server.http_port, "/metrics")[1].decode()
    hits = [
        line for line in text.splitlines() if line.startswith("ratelimit_service_rate_limit_total_hits_total")
    ]
    assert 'key="user_u1"' in text
    assert len(hits) <= 1001 and 'key="other"' in text


def test_workers_share_the_ports(tmp_path: Path, redis_url: str, prefix: str) -> None:
    """--workers 2: two processes answer on the same ports; SIGTERM stops them all."""
    from support.redis_servers import free_port

    grpc_port, http_port = free_port(), free_port()
    config = write_config(tmp_path, redis_url, prefix)
    env = {"GRPC_PORT": str(grpc_port), "HTTP_PORT": str(http_port)}
    import os
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.Popen(
        [sys.executable, "-m", "ratelimit", "serve", str(config), "--workers", "2"],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines: list[str] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if sum("listening" in x for x in lines) == 2:
                break
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        from envoy.service.ratelimit.v3 import rls_pb2_grpc

        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        from conftest import request

        for _ in range(3):
            assert stub.ShouldRateLimit(request("shop", [("user", "w")]), timeout=5).overall_code == OK
        assert stub.ShouldRateLimit(request("shop", [("user", "w")]), timeout=5).overall_code == OVER
        channel.close()
        assert get(http_port, "/healthcheck") == (200, b"OK")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_settings_from_upstream_variables() -> None:
    """Ports, Redis, headers and the runtime directory from the Go service's variables."""
    env = {
        "GRPC_PORT": "9001",
        "PORT": "9002",
        "REDIS_SOCKET_TYPE": "tcp",
        "REDIS_URL": "redis.default.svc:6379",
        "REDIS_AUTH": "s3cret",
        "RUNTIME_ROOT": "/data",
        "RUNTIME_SUBDIRECTORY": "ratelimit",
        "LIMIT_RESPONSE_HEADERS_ENABLED": "true",
        "LIMIT_REMAINING_HEADER": "RateLimit-Remaining",
        "SHADOW_MODE": "true",
        "REDIS_TIMEOUT": "100ms",
        "USE_STATSD": "false",
        "BACKEND_TYPE": "memcache",
    }
    s = ServeSettings.from_env(None, env=env)
    assert (s.grpc_port, s.http_port) == (9001, 9002)
    assert s.storage == "redis://:s3cret@redis.default.svc:6379"
    assert s.config == Path("/data/ratelimit/config")
    assert s.headers is True and s.header_names[1] == "RateLimit-Remaining"
    assert s.shadow and s.timeout == pytest.approx(0.1)
    assert s.ignored == ("BACKEND_TYPE",)
    flags = ServeSettings.from_env(
        "x.yaml", grpc_port=1, http_port=2, env={"GRPC_PORT": "5", "HTTP_PORT": "6"}
    )
    assert (flags.grpc_port, flags.http_port) == (1, 2)
    assert ServeSettings.from_env("x.yaml", env={"HTTP_PORT": "6", "PORT": "7"}).http_port == 6
    assert redis_url_from_env({"REDIS_URL": "rediss://h:1/0"}) == "rediss://h:1/0"
    assert redis_url_from_env({"REDIS_TYPE": "cluster", "REDIS_URL": "a:1,b:2"}) == "redis+cluster://a:1,b:2"
    assert (
        redis_url_from_env(
            {"REDIS_TYPE": "SENTINEL", "REDIS_URL": "mymaster,s1:26379,s2:26379", "REDIS_TLS": "1"}
        )
        == "rediss+sentinel://s1:26379,s2:26379/mymaster"
    )
    assert redis_url_from_env({"REDIS_URL": "/var/run/redis.sock"}) == "unix:///var/run/redis.sock"
    for bad in (
        {"GRPC_PORT": "x"},
        {"NEAR_LIMIT_RATIO": "2"},
        {"LOG_LEVEL": "loud"},
        {"REDIS_TYPE": "X", "REDIS_URL": "h"},
    ):
        with pytest.raises(SettingsError):
            ServeSettings.from_env("x.yaml", env=bad)


def test_a_config_without_storage_is_refused(tmp_path: Path) -> None:
    """No backend.storage and no REDIS_URL: a clear error and exit 1, not per-process counters."""
    config = tmp_path / "shop.yaml"
    config.write_text("domain: shop\ndescriptors: []\n")
    with pytest.raises(AssertionError, match="no storage"):
        start(config)


UPSTREAM_VARIABLES = [
    "HOST",
    "PORT",
    "DEBUG_HOST",
    "DEBUG_PORT",
    "GRPC_UDS",
    "GRPC_HOST",
    "GRPC_PORT",
    "GRPC_MAX_CONNECTION_AGE",
    "GRPC_MAX_CONNECTION_AGE_GRACE",
    "GRPC_SERVER_USE_TLS",
    "GRPC_SERVER_TLS_CERT",
    "GRPC_SERVER_TLS_KEY",
    "GRPC_CLIENT_TLS_CACERT",
    "GRPC_CLIENT_TLS_SAN",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "CONFIG_TYPE",
    "FORCE_START_WITHOUT_INITIAL_CONFIG",
    "CONFIG_GRPC_XDS_NODE_ID",
    "CONFIG_GRPC_XDS_NODE_METADATA",
    "CONFIG_GRPC_XDS_SERVER_URL",
    "CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL",
    "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS",
    "CONFIG_GRPC_XDS_SERVER_USE_TLS",
    "CONFIG_GRPC_XDS_CLIENT_TLS_CERT",
    "CONFIG_GRPC_XDS_CLIENT_TLS_KEY",
    "CONFIG_GRPC_XDS_SERVER_TLS_CACERT",
    "CONFIG_GRPC_XDS_SERVER_TLS_SAN",
    "XDS_CLIENT_BACKOFF_INITIAL_INTERVAL",
    "XDS_CLIENT_BACKOFF_MAX_INTERVAL",
    "XDS_CLIENT_BACKOFF_RANDOM_FACTOR",
    "XDS_CLIENT_BACKOFF_JITTER",
    "XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES",
    "USE_DOG_STATSD",
    "USE_DOG_STATSD_MOGRIFIERS",
    "USE_STATSD",
    "STATSD_HOST",
    "STATSD_PORT",
    "EXTRA_TAGS",
    "STATS_FLUSH_INTERVAL",
    "DISABLE_STATS",
    "USE_PROMETHEUS",
    "PROMETHEUS_ADDR",
    "PROMETHEUS_PATH",
    "PROMETHEUS_MAPPER_YAML",
    "PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS",
    "RUNTIME_ROOT",
    "RUNTIME_SUBDIRECTORY",
    "RUNTIME_APPDIRECTORY",
    "RUNTIME_IGNOREDOTFILES",
    "RUNTIME_WATCH_ROOT",
    "EXPIRATION_JITTER_MAX_SECONDS",
    "LOCAL_CACHE_SIZE_IN_BYTES",
    "NEAR_LIMIT_RATIO",
    "CACHE_KEY_PREFIX",
    "BACKEND_TYPE",
    "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT",
    "LIMIT_RESPONSE_HEADERS_ENABLED",
    "LIMIT_LIMIT_HEADER",
    "LIMIT_REMAINING_HEADER",
    "LIMIT_RESET_HEADER",
    "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED",
    "REDIS_SOCKET_TYPE",
    "REDIS_TYPE",
    "REDIS_URL",
    "REDIS_POOL_SIZE",
    "REDIS_AUTH",
    "REDIS_TLS",
    "REDIS_TLS_CLIENT_CERT",
    "REDIS_TLS_CLIENT_KEY",
    "REDIS_TLS_CACERT",
    "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION",
    "REDIS_PIPELINE_WINDOW",
    "REDIS_PIPELINE_LIMIT",
    "REDIS_CLUSTER_PIPELINE_PARALLELISM",
    "REDIS_PERSECOND",
    "REDIS_PERSECOND_SOCKET_TYPE",
    "REDIS_PERSECOND_TYPE",
    "REDIS_PERSECOND_URL",
    "REDIS_PERSECOND_POOL_SIZE",
    "REDIS_PERSECOND_AUTH",
    "REDIS_PERSECOND_TLS",
    "REDIS_SENTINEL_AUTH",
    "REDIS_PERSECOND_SENTINEL_AUTH",
    "REDIS_PERSECOND_PIPELINE_WINDOW",
    "REDIS_PERSECOND_PIPELINE_LIMIT",
    "REDIS_PERSECOND_CLUSTER_PIPELINE_PARALLELISM",
    "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION",
    "REDIS_TIMEOUT",
    "REDIS_PERSECOND_TIMEOUT",
    "REDIS_POOL_ON_EMPTY_BEHAVIOR",
    "REDIS_PERSECOND_POOL_ON_EMPTY_BEHAVIOR",
    "REDIS_STARTUP_INITIAL_INTERVAL",
    "REDIS_STARTUP_MAX_INTERVAL",
    "REDIS_STARTUP_MAX_ELAPSED_TIME",
    "MEMCACHE_HOST_PORT",
    "MEMCACHE_MAX_IDLE_CONNS",
    "MEMCACHE_SRV",
    "MEMCACHE_SRV_REFRESH",
    "MEMCACHE_TLS",
    "MEMCACHE_TLS_CLIENT_CERT",
    "MEMCACHE_TLS_CLIENT_KEY",
    "MEMCACHE_TLS_CACERT",
    "MEMCACHE_TLS_SKIP_HOSTNAME_VERIFICATION",
    "SHADOW_MODE",
    "QUOTA_MODE",
    "RESPONSE_DYNAMIC_METADATA",
    "MERGE_DOMAIN_CONFIG",
    "TRACING_ENABLED",
    "TRACING_SERVICE_NAME",
    "TRACING_SERVICE_NAMESPACE",
    "TRACING_SERVICE_INSTANCE_ID",
    "TRACING_EXPORTER_PROTOCOL",
    "TRACING_SAMPLING_RATE",
]
"""Every variable envoyproxy/ratelimit reads (src/settings/settings.go at f2fb157)."""


def test_the_docs_table_names_every_upstream_variable() -> None:
    """docs/serve.md says for each upstream variable: honoured, mapped or ignored."""
    from conftest import ROOT

    rows = {
        name: line.split("|")[2].strip()
        for line in (ROOT / "docs" / "serve.md").read_text().splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`([A-Z_]+)`", line.split("|")[1])
    }
    missing = [v for v in UPSTREAM_VARIABLES if v not in rows]
    assert not missing
    assert {rows[v] for v in UPSTREAM_VARIABLES} <= {"honoured", "mapped", "ignored"}


async def test_http_port_closes_idle_and_unfinished_connections() -> None:
    """A connection that sends nothing, or a head without its end, is closed after the idle timeout."""
    import asyncio

    from ratelimit.serve._http import HttpEndpoints

    async def never(request: Any) -> Any:  # pragma: no cover - no request reaches it
        raise AssertionError("no request should be answered")

    endpoints = HttpEndpoints(never, lambda: True, None, idle_timeout=0.2)
    server = await asyncio.start_server(endpoints.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for sent in (b"", b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(sent)
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server, no answer
            assert time.monotonic() - started < 3
            writer.close()
        # A healthy keep-alive client is still served.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"OK"), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
