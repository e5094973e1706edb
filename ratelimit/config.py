"""Config files: load, validate, and keep a limiter's rules in step with the file.

The format is described in docs/configuration.md. Most code needs only
:meth:`ratelimit.Limiter.from_config`; this module is for tools and tests::

    from ratelimit.config import load_config, ConfigError
    try:
        config = load_config("limits.yaml")
    except ConfigError as exc:
        print(exc)                 # one line per error: file:line:col: field: message
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._config.read import Invalid, read_document
from ._engine.engine import Engine
from .ruleset import RuleSet

__all__ = ["Config", "ConfigError", "ConfigSource", "load_config", "parse_config"]

log = logging.getLogger("ratelimit")
DEFAULT_RELOAD_INTERVAL = 2.0


class ConfigError(ValueError):
    """A config file is invalid; ``errors`` has one ``file:line:col: field: message`` each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Config:
    """A loaded config: the rule set, the :class:`~ratelimit.Limiter` options, and its files."""

    ruleset: RuleSet
    limiter_options: dict[str, Any]
    files: tuple[Path, ...]
    digest: str
    service_format: bool = False
    """envoyproxy/ratelimit's own format: a bare service config, or a directory of them."""


def parse_config(text: str, source: str = "<config>", base: str | os.PathLike[str] | None = None) -> Config:
    """Read config ``text`` (``source`` names it in errors; ``base`` resolves relative ``file:``)."""
    try:
        doc = read_document(text, source, Path(base) if base is not None else None)
    except Invalid as exc:
        raise ConfigError(exc.errors) from None
    ruleset = RuleSet(tuple(doc.rules), source=source, **doc.settings)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Config(ruleset, doc.limiter, tuple(doc.files), digest, doc.service_format)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at ``path``; raises :class:`ConfigError`.

    ``path`` may also be a directory of envoyproxy/ratelimit service configs, as that
    service reads its runtime directory: every ``*.yaml``/``*.yml`` file in it (not its
    dot entries, such as a ConfigMap volume's ``..data``) is one ``envoy:`` entry. The
    directory is among the config's ``files``, so a file added or removed is a change.
    """
    path = Path(path)
    if path.is_dir():
        config = parse_config(_directory_document(path), str(path), path)
        return dataclasses.replace(config, files=(path, *config.files), service_format=True)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [f"{path}: cannot read the config file: {getattr(exc, 'strerror', None) or exc}"]
        ) from None
    config = parse_config(text, str(path), path.parent)
    return dataclasses.replace(config, files=(path, *config.files))


def _directory_document(path: Path) -> str:
    """A config whose ``envoy:`` entries are the service config files of directory ``path``."""
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config directory: {exc.strerror or exc}"]) from None
    files = [
        str((path / n).absolute())
        for n in names
        if not n.startswith(".") and n.endswith((".yaml", ".yml")) and (path / n).is_file()
    ]
    return json.dumps({"envoy": [{"file": f} for f in files]})  # JSON is YAML


def _fingerprint(files: tuple[Path, ...]) -> tuple[Any, ...]:
    """What changes when a file does, including a ConfigMap's symlink swap (stat follows links)."""
    out: list[Any] = []
    for f in files:
        try:
            st = os.stat(f)
            out.append((os.path.realpath(f), st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


class ConfigSource:
    """Where a limiter's rules come from, and the thread that watches it for changes.

    A change is read, validated and, if valid, applied by swapping ``limiter.ruleset``
    in one assignment (counters live in the backend and are untouched). An invalid
    file is logged and skipped, leaving the rules in force; the same invalid content
    is logged once, not on every poll.
    """

    def __init__(self, path: Path, config: Config, interval: float | None) -> None:
        self.path = path
        self.current = config
        self._seen = _fingerprint(config.files)
        self._rejected: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.interval = interval
        self._fork_hook = False
        self.on_reload: Callable[[Config], None] | None = None

    def start(self, limiter: Engine) -> None:
        """Watch the file from a daemon thread (restarted in forked workers, e.g. gunicorn --preload)."""
        if self.interval is None or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._watch, args=(limiter,), name="ratelimit-config", daemon=True
        )
        self._thread.start()
        if not self._fork_hook:
            self._fork_hook = True
            # A forked child has no threads but the one that forked: watch again there.
            # Weak references: a hook cannot be unregistered, and must not keep a closed limiter alive.
            source, target = weakref.ref(self), weakref.ref(limiter)
            os.register_at_fork(after_in_child=lambda: _after_fork(source(), target()))

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _watch(self, limiter: Engine) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            try:
                self.reload(limiter, only_if_changed=True)
            except Exception:  # the watcher must outlive any surprise
                log.exception("ratelimit: reloading %s failed", self.path)

    def reload(self, limiter: Engine, *, only_if_changed: bool = False) -> bool:
        """Apply the file's current content to ``limiter``: True if the rules changed."""
        with self._lock:
            stamp = _fingerprint(self.current.files)
            if only_if_changed and stamp == self._seen:
                return False
            self._seen = stamp
            try:
                config = load_config(self.path)
            except ConfigError as exc:
                key = str(exc)
                if key != self._rejected:
                    self._rejected = key
                    _count(limiter, "rejected")
                    log.error(
                        "ratelimit: rejected the new %s, the previous rules stay in force:\n%s",
                        self.path,
                        exc,
                    )
                return False
            self._rejected = None
            if config.digest == self.current.digest:
                self.current = config
                return False
            if config.limiter_options != self.current.limiter_options:
                log.warning(
                    "ratelimit: %s changed its backend section; that takes a restart (kept the old backend)",
                    self.path,
                )
            self.current = config
            self._seen = _fingerprint(config.files)
            limiter.ruleset = config.ruleset
            _count(limiter, "applied")
            what = "domains" if config.service_format else "rules"
            log.info("ratelimit: loaded %d %s from %s", len(config.ruleset.rules), what, self.path)
        if self.on_reload is not None:
            self.on_reload(config)
        return True


def _count(limiter: Engine, result: str) -> None:
    if limiter.metrics is not None:
        limiter.metrics.config_reload(result)


def _after_fork(source: ConfigSource | None, limiter: Engine | None) -> None:
    if source is None or limiter is None:
        return
    source._lock = threading.Lock()
    source._thread = None
    if not source._stop.is_set():
        source.start(limiter)


def open_config(path: str | os.PathLike[str], *, reload: bool | float) -> ConfigSource:
    """Load and validate ``path`` for :meth:`ratelimit.Limiter.from_config` (not yet watching).

    ``reload``: True watches every 2 s, a number every that many seconds, False never.
    """
    config = load_config(path)
    if reload is True:
        interval: float | None = DEFAULT_RELOAD_INTERVAL
    elif reload is False:
        interval = None
    elif isinstance(reload, (int, float)) and reload > 0:
        interval = float(reload)
    else:
        raise ValueError(f"reload must be True, False or seconds > 0, got {reload!r}")
    return ConfigSource(Path(path), config, interval)
