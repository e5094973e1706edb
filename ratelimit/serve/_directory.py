"""A directory of envoyproxy/ratelimit service configs as one config, reloaded when it changes.

The Go service loads every file of its runtime directory (a ConfigMap mounted there,
usually); each file is one domain. Here every ``*.yaml``/``*.yml`` file of the
directory (not its dot entries: a ConfigMap volume's ``..data`` links) becomes an
``envoy:`` entry of a config read by :func:`ratelimit.config.parse_config`, so the
files are validated, keyed and counted exactly as a config file's ``envoy:`` entries.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, parse_config
from ..limiter import Limiter

__all__ = ["DirectoryConfig"]

log = logging.getLogger("ratelimit")


class DirectoryConfig:
    """The service configs of ``path``, and a thread that applies their changes to a limiter."""

    def __init__(self, path: Path, interval: float) -> None:
        self.path = path
        self.interval = interval
        self._seen: tuple[Any, ...] = ()
        self._rejected: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def files(self) -> list[Path]:
        """The config files in the directory, sorted (dot entries and other suffixes left out)."""
        try:
            names = sorted(os.listdir(self.path))
        except OSError as exc:
            raise ConfigError(
                [f"{self.path}: cannot read the config directory: {exc.strerror or exc}"]
            ) from None
        return [
            self.path / n
            for n in names
            if not n.startswith(".") and n.endswith((".yaml", ".yml")) and (self.path / n).is_file()
        ]

    def _fingerprint(self) -> tuple[Any, ...]:
        out: list[Any] = []
        try:
            files = self.files()
        except ConfigError:
            return ("unreadable",)
        for f in files:
            try:
                st = os.stat(f)
                out.append((str(f), os.path.realpath(f), st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(f), None))
        return tuple(out)

    def load(self) -> Config:
        """Read every file now; raises :class:`~ratelimit.config.ConfigError` naming each bad one."""
        self._seen = self._fingerprint()
        entries = [{"file": str(f.resolve())} for f in self.files()]
        # JSON is YAML: one config whose envoy entries are the directory's files.
        return parse_config(json.dumps({"envoy": entries}), str(self.path), self.path)

    def start(self, limiter: Limiter) -> None:
        """Check the directory every ``interval`` seconds; apply a valid change to ``limiter``."""
        self._thread = threading.Thread(
            target=self._watch, args=(limiter,), name="ratelimit-config", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()

    def _watch(self, limiter: Limiter) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reload(limiter)
            except Exception:  # the watcher must outlive any surprise
                log.exception("ratelimit: reloading %s failed", self.path)

    def reload(self, limiter: Limiter, *, force: bool = False) -> bool:
        """Apply the directory's content if it changed: True when new rules are in force."""
        if not force and self._fingerprint() == self._seen:
            return False
        try:
            config = self.load()
        except ConfigError as exc:
            if str(exc) != self._rejected:
                self._rejected = str(exc)
                if limiter.metrics is not None:
                    limiter.metrics.config_reload("rejected")
                log.error(
                    "ratelimit: rejected the new %s, the previous rules stay in force:\n%s", self.path, exc
                )
            return False
        self._rejected = None
        limiter.ruleset = config.ruleset
        if limiter.metrics is not None:
            limiter.metrics.config_reload("applied")
        log.info("ratelimit: loaded %d domains from %s", len(config.ruleset.rules), self.path)
        return True
