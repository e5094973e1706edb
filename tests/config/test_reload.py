"""Hot reload: a ConfigMap symlink swap applies without restart or lost counters; bad files are rejected."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from support.config_helpers import request

from ratelimit import Limiter
from ratelimit.enforce import Enforcer


class ConfigMapVolume:
    """A directory laid out as the kubelet does: limits.yaml -> ..data/limits.yaml -> ..<timestamp>/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def publish(self, text: str) -> Path:
        """Write a new version and swap ..data to it atomically (rename over the symlink)."""
        self.n += 1
        version = self.root / f"..2026_11_22_{self.n:04d}"
        version.mkdir()
        (version / "limits.yaml").write_text(text)
        tmp = self.root / "..data_tmp"
        os.symlink(version.name, tmp)
        os.replace(tmp, self.root / "..data")
        link = self.root / "limits.yaml"
        if not link.is_symlink():
            os.symlink("..data/limits.yaml", link)
        return link


RULES = "rules: [{{name: api, key: header:x-user, limits: {rate}}}]\n"


def test_symlink_swap_is_picked_up_by_the_watcher(tmp_path: Path) -> None:
    """The watcher applies a swapped ConfigMap within a few intervals, with no restart."""
    volume = ConfigMapVolume(tmp_path)
    path = volume.publish(RULES.format(rate="2/minute"))
    with Limiter.from_config(path, reload=0.05) as limiter:
        enforcer = Enforcer.for_adapter(limiter, "test")
        assert [enforcer.check(request(x_user="a")).action for _ in range(3)] == ["allow", "allow", "deny"]
        volume.publish(RULES.format(rate="5/minute"))
        deadline = time.monotonic() + 5
        while limiter.ruleset.rules[0].rates[0].limit != 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        # Counters survive: "a" has used 2 of the new 5.
        assert [enforcer.check(request(x_user="a")).action for _ in range(4)] == ["allow"] * 3 + ["deny"]


def test_invalid_new_file_is_rejected_and_old_rules_stay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broken new version is logged once with its error; the rules in force do not change."""
    volume = ConfigMapVolume(tmp_path)
    path = volume.publish(RULES.format(rate="1/minute"))
    with Limiter.from_config(path, reload=False) as limiter:
        before = limiter.ruleset
        volume.publish("rules: [{name: api, limits: 1/minit}]\n")
        with caplog.at_level(logging.ERROR, logger="ratelimit"):
            assert limiter.reload_config() is False
            assert limiter.reload_config() is False
        assert limiter.ruleset is before
        rejected = [r for r in caplog.records if "rejected" in r.getMessage()]
        assert len(rejected) == 1 and "1/minit" in rejected[0].getMessage()
        volume.publish(RULES.format(rate="3/minute"))
        assert limiter.reload_config() is True
        assert limiter.ruleset.rules[0].rates[0].limit == 3


def test_unchanged_content_is_not_reapplied(tmp_path: Path) -> None:
    """Republishing the same content keeps the same rule objects."""
    volume = ConfigMapVolume(tmp_path)
    path = volume.publish(RULES.format(rate="1/minute"))
    with Limiter.from_config(path, reload=False) as limiter:
        before = limiter.ruleset
        volume.publish(RULES.format(rate="1/minute"))
        assert limiter.reload_config() is False
        assert limiter.ruleset is before


def test_backend_change_is_logged_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Changing backend on reload keeps the running backend (and its counters) and says so."""
    volume = ConfigMapVolume(tmp_path)
    path = volume.publish(RULES.format(rate="1/minute"))
    with Limiter.from_config(path, reload=False) as limiter:
        backend = limiter.backend
        volume.publish("backend: {prefix: other}\n" + RULES.format(rate="2/minute"))
        with caplog.at_level(logging.WARNING, logger="ratelimit"):
            assert limiter.reload_config() is True
        assert limiter.backend is backend
        assert any("takes a restart" in r.getMessage() for r in caplog.records)


def test_reload_under_traffic_on_redis(tmp_path: Path, redis_url: str) -> None:
    """Threads deciding requests while the file flips between two limits: no errors, and every
    window's admissions stay within the larger limit; counters carry across swaps."""
    volume = ConfigMapVolume(tmp_path)
    rules = "rules: [{{name: api, key: header:x-user, limits: {rate}}}]\n"
    path = volume.publish(rules.format(rate="40/hour"))
    prefix = f"reload-{uuid.uuid4().hex[:8]}"
    with Limiter.from_config(
        path, reload=0.01, storage=redis_url, prefix=prefix, deny_cache=False
    ) as limiter:
        enforcer = Enforcer.for_adapter(limiter, "test")
        stop = threading.Event()
        errors: list[BaseException] = []
        allowed = [0]
        lock = threading.Lock()

        def traffic() -> None:
            try:
                while not stop.is_set():
                    out = enforcer.check(request(x_user="shared"))
                    assert out.action in ("allow", "deny")
                    if out.action == "allow":
                        with lock:
                            allowed[0] += 1
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=traffic) for _ in range(4)]
        for t in threads:
            t.start()
        for i in range(20):
            volume.publish(rules.format(rate="60/hour" if i % 2 == 0 else "40/hour"))
            time.sleep(0.03)
        stop.set()
        for t in threads:
            t.join()
        assert not errors
        # One counter throughout: never more than the larger limit admitted, and the
        # smaller one was certainly reached (traffic ran long enough to fill it).
        assert 40 <= allowed[0] <= 60
        final = limiter.peek("api/shared", "60/hour")
        assert final.remaining == 60 - allowed[0]


def test_reload_config_needs_a_config_limiter() -> None:
    """reload_config on a limiter built in code says why it cannot."""
    with pytest.raises(RuntimeError, match="from_config"):
        Limiter().reload_config()


def test_close_stops_the_watcher(tmp_path: Path) -> None:
    """Closing the limiter stops its watcher thread."""
    path = tmp_path / "limits.yaml"
    path.write_text(RULES.format(rate="1/minute"))
    limiter = Limiter.from_config(path, reload=0.01)
    assert any(t.name == "ratelimit-config" for t in threading.enumerate())
    limiter.close()
    assert not any(t.name == "ratelimit-config" for t in threading.enumerate())


def test_forked_worker_watches_again(tmp_path: Path) -> None:
    """A worker forked after from_config (gunicorn --preload) gets its own watcher and sees changes."""
    import warnings

    path = tmp_path / "limits.yaml"
    path.write_text(RULES.format(rate="1/minute"))
    limiter = Limiter.from_config(path, reload=0.02)
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() in a multi-threaded process
        pid = os.fork()
    if pid == 0:  # the worker: wait for the parent's edit to arrive through its own watcher
        os.close(read)
        ok = any(t.name == "ratelimit-config" for t in threading.enumerate())
        deadline = time.monotonic() + 5
        while ok and limiter.ruleset.rules[0].rates[0].limit != 9 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.write(write, b"1" if ok and limiter.ruleset.rules[0].rates[0].limit == 9 else b"0")
        os._exit(0)
    os.close(write)
    try:
        path.write_text(RULES.format(rate="9/minute"))
        answer = os.read(read, 1)
        os.waitpid(pid, 0)
        assert answer == b"1"
    finally:
        os.close(read)
        limiter.close()


def test_reloads_are_counted_in_metrics(tmp_path: Path) -> None:
    """ratelimit_config_reloads_total counts applied and rejected changes (a bad file once)."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from ratelimit.metrics import Metrics

    registry = prometheus_client.CollectorRegistry()
    path = tmp_path / "limits.yaml"
    path.write_text(RULES.format(rate="1/minute"))
    with Limiter.from_config(path, reload=False, metrics=Metrics(registry=registry)) as limiter:
        path.write_text(RULES.format(rate="2/minute"))
        assert limiter.reload_config()
        path.write_text("rules: [{name: api}]\n")
        assert not limiter.reload_config()
        assert not limiter.reload_config()

    def count(result: str) -> float | None:
        return registry.get_sample_value("ratelimit_config_reloads_total", {"result": result})

    assert (count("applied"), count("rejected")) == (1.0, 1.0)


def test_deleted_file_keeps_the_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file that disappears (ConfigMap deleted) is a rejected change: the last rules stay in force."""
    path = tmp_path / "limits.yaml"
    path.write_text(RULES.format(rate="1/minute"))
    with Limiter.from_config(path, reload=False) as limiter:
        before = limiter.ruleset
        path.unlink()
        with caplog.at_level(logging.ERROR, logger="ratelimit"):
            assert limiter.reload_config() is False
        assert limiter.ruleset is before
        assert any("cannot read" in r.getMessage() for r in caplog.records)
        path.write_text(RULES.format(rate="2/minute"))
        assert limiter.reload_config() is True


def test_a_directory_of_service_configs_loads_and_follows_new_files(tmp_path: Path) -> None:
    """A directory of envoyproxy/ratelimit configs is one config: a domain per file, dot entries left out."""
    conf = tmp_path / "config"
    conf.mkdir()
    (conf / "shop.yaml").write_text(
        "domain: shop\ndescriptors:\n  - key: user\n    rate_limit: {unit: minute, requests_per_unit: 1}\n"
    )
    (conf / "notes.txt").write_text("not a config")
    (conf / "..data").mkdir()
    limiter = Limiter.from_config(conf, reload=False)
    try:
        assert limiter.config is not None and limiter.config.current.service_format
        assert [r.tree.domain for r in limiter.ruleset.rules] == ["shop"]
        (conf / "other.yml").write_text("domain: other\ndescriptors: []\n")
        assert limiter.reload_config()
        assert [r.tree.domain for r in limiter.ruleset.rules] == ["other", "shop"]
        assert not limiter.reload_config()  # nothing changed since
    finally:
        limiter.close()
