"""Shared pytest fixtures.

Sections (append new ones at the end, each under its own banner):

1. Real Redis servers -- started by the suite itself from ``tests/support/redis_servers.py`` on
   free loopback ports; never the machine's own Redis.
2. Redis Cluster with replicas -- for failover tests that kill masters.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.redis_servers import (
    RedisACLServer,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    RedisTLSServer,
    find_redis_server,
)

# ======================================================================================
# 1. Real Redis servers
# ======================================================================================
#
# Availability rule (``require_redis_server``): without ``redis-server``/``redis-cli`` on
# PATH the tests that need them are skipped locally, but fail when CI=true, so CI can
# never go green by skipping them.
#
# Markers: tests that use one of the fixtures below (directly or through another
# fixture) are marked automatically according to ``REDIS_FIXTURE_MARKERS``, so
# ``pytest -m "not redis"`` runs everything that needs no Redis binary.

REDIS_MISSING_CI = "redis-server not found; CI must install it (apt-get install -y redis-server)"
REDIS_MISSING_LOCAL = (
    "redis-server not found on PATH; install it to run this test "
    "(Debian/Ubuntu: apt-get install -y redis-server; macOS: brew install redis), "
    'or deselect these tests with -m "not redis"'
)

REDIS_FIXTURE_MARKERS: dict[str, tuple[str, ...]] = {
    "redis_server": ("redis",),
    "redis_url": ("redis",),
    "fresh_redis": ("redis",),
    "redis_tls": ("redis",),
    "redis_acl": ("redis",),
    "redis_cluster": ("redis", "cluster"),
    "redis_sentinel": ("redis", "sentinel"),
    "redis_cluster_replicas": ("redis", "cluster"),
}
"""Fixture name -> markers added to every test that (transitively) requests it."""


def _running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_redis_server() -> str:
    """Return the ``redis-server`` path; otherwise fail (CI=true) or skip the test."""
    path = find_redis_server()
    if path is not None:
        return path
    if _running_in_ci():
        pytest.fail(REDIS_MISSING_CI, pytrace=False)
    pytest.skip(REDIS_MISSING_LOCAL)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the Redis fixtures they use (before ``-m`` deselection runs)."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            for marker in REDIS_FIXTURE_MARKERS.get(fixture, ()):
                if item.get_closest_marker(marker) is None:
                    item.add_marker(marker)


def _tmp_dir(factory: pytest.TempPathFactory, name: str) -> Path:
    return factory.mktemp(name, numbered=True)


def _running(factory: pytest.TempPathFactory, kind: Any, name: str, stop: str = "kill") -> Iterator[Any]:
    """Start a server (or topology) of ``kind`` in a fresh directory; always stop it."""
    require_redis_server()
    server = kind(_tmp_dir(factory, name))
    server.start()
    try:
        yield server
    finally:
        getattr(server, stop)()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One standalone server shared by the whole session; isolate by key prefix."""
    yield from _running(tmp_path_factory, RedisServer, "redis")


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """``redis://127.0.0.1:PORT/0`` of the shared standalone server."""
    return redis_server.url


@pytest.fixture
def fresh_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A dedicated standalone server the test may kill, pause or restart."""
    yield from _running(tmp_path_factory, RedisServer, "fresh-redis")


@pytest.fixture(scope="session")
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisTLSServer]:
    """A TLS-only standalone server; ``.url`` is a verifying ``rediss://`` URL."""
    yield from _running(tmp_path_factory, RedisTLSServer, "redis-tls")


@pytest.fixture(scope="session")
def redis_acl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisACLServer]:
    """A server with ``requirepass`` and an ACL user; ``.url`` logs in as that user."""
    yield from _running(tmp_path_factory, RedisACLServer, "redis-acl")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster shared by the session; isolate by key prefix."""
    yield from _running(tmp_path_factory, RedisCluster, "redis-cluster", stop="stop")


@pytest.fixture
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    """A fresh master + replica + sentinel per test (a failover changes the topology)."""
    yield from _running(tmp_path_factory, RedisSentinel, "redis-sentinel", stop="stop")


# ======================================================================================
# 2. Redis Cluster with replicas
# ======================================================================================
#
# Function-scoped: a test kills masters, and a failed-over cluster must not leak into
# the next test. Start-up (3 masters + 3 replicas, replicas in sync) takes ~2-3 s.

CLUSTER_FAILOVER_NODE_TIMEOUT_MS = 1000
"""``cluster-node-timeout`` of :func:`redis_cluster_replicas`: a killed master fails over in ~2-3 s."""


@pytest.fixture
def redis_cluster_replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A fresh 3-master Redis Cluster, one replica per master, the test may kill masters of.

    ``cluster-require-full-coverage no``, as production clusters run: while a dead
    master's slots wait for its replica, the other masters keep answering (with Redis's
    default they would all refuse with CLUSTERDOWN for that second).
    """
    require_redis_server()
    cluster = RedisCluster(
        _tmp_dir(tmp_path_factory, "redis-cluster-replicas"),
        replicas=1,
        node_timeout_ms=CLUSTER_FAILOVER_NODE_TIMEOUT_MS,
        require_full_coverage=False,
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


# ======================================================================================
# The documentation site, built once per run
# ======================================================================================


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """``mkdocs build --strict`` of this repository: the site folder and the build's result."""
    site = tmp_path_factory.mktemp("site") / "site"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [
            *(sys.executable, "-m", "mkdocs", "build", "--strict"),
            *("--config-file", str(root / "mkdocs.yml"), "--site-dir", str(site)),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return site, done
