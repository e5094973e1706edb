"""Smoke tests of the suite's own Redis servers (tests/support/redis_servers.py), plain redis-py."""

from __future__ import annotations

import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import key_slot
from redis.retry import Retry
from support.redis_servers import (
    RedisACLServer,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    RedisTLSServer,
)


def _key(name: str) -> str:
    return f"test-harness:{uuid.uuid4().hex}:{name}"


def test_standalone_ping_set_get(redis_server: RedisServer, redis_url: str) -> None:
    """The shared standalone server answers PING, SET and GET through its URL."""
    key = _key("k")
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping() is True
        assert client.set(key, "v", ex=60) is True
        assert client.get(key) == b"v"
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"


def test_kill_then_restart_on_same_port(fresh_redis: RedisServer) -> None:
    """After SIGKILL the server is unreachable; restart() brings it back on the same port."""
    port = fresh_redis.port
    fresh_redis.kill()
    assert not fresh_redis.is_running
    no_retry = Retry(NoBackoff(), 0)
    with (
        fresh_redis.client(socket_connect_timeout=0.5, retry=no_retry) as client,
        pytest.raises(redis.ConnectionError),
    ):
        client.ping()
    fresh_redis.restart()
    assert fresh_redis.port == port
    with fresh_redis.client() as client:
        assert client.ping() is True


def test_pause_times_out_and_resume_recovers(fresh_redis: RedisServer) -> None:
    """A paused (SIGSTOP) server makes a 0.2 s socket_timeout client time out; resume heals."""
    with fresh_redis.client(socket_timeout=0.2, retry=Retry(NoBackoff(), 0)) as client:
        assert client.ping() is True
        fresh_redis.pause()
        try:
            with pytest.raises(redis.TimeoutError):
                client.ping()
        finally:
            fresh_redis.resume()
        assert client.ping() is True


def test_tls_ping_with_ca_verification(redis_tls: RedisTLSServer) -> None:
    """The rediss:// URL verifies the server against the throwaway CA and PINGs."""
    assert redis_tls.url.startswith(f"rediss://127.0.0.1:{redis_tls.port}/0?")
    with redis.Redis.from_url(redis_tls.url) as client:
        assert client.ping() is True
        conn = client.connection_pool.get_connection()
        try:
            assert conn.ca_certs == str(redis_tls.ca_path)  # type: ignore[attr-defined]
        finally:
            client.connection_pool.release(conn)


def test_tls_rejects_unknown_ca(redis_tls: RedisTLSServer) -> None:
    """Without the CA the certificate fails verification (so the URL's CA really is used)."""
    url = f"rediss://127.0.0.1:{redis_tls.port}/0"
    with (
        redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0)) as client,
        pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.ping()


def test_acl_user_can_write_and_wrong_password_is_refused(redis_acl: RedisACLServer) -> None:
    """The ACL user's URL can SET/GET; a wrong password is refused."""
    key = _key("acl")
    assert redis_acl.url == f"redis://app:apppw@127.0.0.1:{redis_acl.port}/0"
    with redis.Redis.from_url(redis_acl.url) as client:
        assert client.acl_whoami() == "app"
        assert client.set(key, "1", ex=60) is True
        assert client.get(key) == b"1"
    bad = f"redis://app:wrong@127.0.0.1:{redis_acl.port}/0"
    with redis.Redis.from_url(bad) as client, pytest.raises(redis.AuthenticationError):
        client.ping()
    with redis.Redis.from_url(redis_acl.admin_url) as admin:
        assert admin.acl_whoami() == "default"


def test_cluster_spreads_hash_tags_over_nodes(redis_cluster: RedisCluster) -> None:
    """Keys with different hash tags land on different nodes of an ok cluster."""
    prefix = uuid.uuid4().hex
    with redis_cluster.client() as client:
        info = client.cluster_info(target_nodes=client.get_primaries())
        assert {i["cluster_state"] for i in info.values()} == {"ok"}
        owners: dict[int, str] = {}
        for n in range(100):
            key = f"{{{prefix}-{n}}}:counter"
            owners.setdefault(client.get_node_from_key(key).port, key)
            if len(owners) == len(redis_cluster.nodes):
                break
        assert len(owners) == 3
        for key in owners.values():
            assert client.set(key, "1", ex=60) is True
    for port, key in owners.items():
        node = next(n for n in redis_cluster.nodes if n.port == port)
        slot = key_slot(key.encode())
        with node.client() as direct:
            assert direct.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 1
            assert direct.get(key) == b"1"


@pytest.mark.slow
def test_sentinel_failover_by_kill(redis_sentinel: RedisSentinel) -> None:
    """failover_by_kill() promotes the replica, and the new master accepts writes."""
    old = redis_sentinel.master_addr()
    assert old == redis_sentinel.master.address
    new = redis_sentinel.failover_by_kill()
    assert new == redis_sentinel.replica.address
    assert redis_sentinel.master_addr() == new
    key = _key("after-failover")
    with redis_sentinel.master_client(socket_timeout=2) as client:
        assert client.set(key, "1") is True
        assert client.connection_pool.get_master_address() == new  # type: ignore[attr-defined]
    with redis_sentinel.server_at(new).client() as direct:
        assert direct.get(key) == b"1"
