"""Config reload: on ``SIGHUP`` and whenever the config file (or ``--auth-config``) changes.

A reload reads the files again with the start-up precedence (flags, then env, then file) and
checks all of it — auth providers included — before anything is used. An invalid file is
refused with one log line naming the key and line; the running config stays. A valid one is
applied in place: no listener is rebound and no publisher or viewer is dropped. Settings that
only a restart can change (listen addresses, the role's cluster settings, ...) keep their running
values, and the log says which changed and need a restart.

The file is polled (content, not mtime: a Kubernetes ConfigMap volume swaps a symlink, and an
editor may write twice in one second), every ``poll`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from arcly.auth import AuthConfigError, PerApp, build_auth, load_auth
from arcly.engine import PublishRegistry, ShutdownToken

from .config import ConfigSource, NodeConfig
from .configfile import ConfigFileError, auth_error

log = logging.getLogger("arcly.config")

# What a reload changes on a running node; every other setting needs a restart.
RELOADABLE = frozenset({
    "log_level", "log_json",
    "auth", "auth_config", "apps",
    "max_connections", "max_connections_per_ip", "max_publishers", "max_viewers_per_stream",
    "max_on_demand_fallbacks",
    "idle_timeout", "gop_max_bytes", "viewer_backlog_bytes",
    # Not the segment and part targets: a live playlist's must not change (RFC 8216).
    "hls_window", "hls_on_publish",
    "record_max_age", "record_max_bytes",
})
_NOT_COMPARED = frozenset({"retired"})


def auth_for(config: NodeConfig, *, node: str = "") -> PerApp | None:
    """The auth providers ``config`` names (its file's ``[auth]`` or ``--auth-config``), or
    None when it names none. Raises ``ConfigFileError``/``AuthConfigError``."""
    if config.auth is not None:
        try:
            return build_auth(config.auth, node=node, section="auth.")
        except AuthConfigError as exc:
            path = config.config or "?"
            raise auth_error(path, _read_text(path), str(exc)) from None
    if config.auth_config:
        return load_auth(config.auth_config, node=node)
    return None


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


Apply = Callable[[NodeConfig, NodeConfig, PerApp | None], Awaitable[None]]


class Reloader:
    """Owns the running config's generation; a ``ProtocolHandler`` (``run``) so the engine
    starts and stops it with the node."""

    name = "config"

    def __init__(self, source: ConfigSource | None, config: NodeConfig, apply: Apply, *,
                 node: str = "", poll: float = 0.5) -> None:
        self.source = source
        self.config = config
        self.apply = apply
        self.node = node
        self.poll = poll
        self.generation = 1
        self.loaded_at = time.time()
        self.refused = 0  # reloads refused since start
        self._seen = self._fingerprint()
        self._lock = asyncio.Lock()

    @property
    def watched(self) -> list[str]:
        """The files a reload reads (none when the node was not started from flags/env)."""
        if self.source is None:
            return []
        return [p for p in (self.config.config, self.config.auth_config) if p]

    def summary(self) -> dict[str, Any]:
        loaded = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at))
        return {"generation": self.generation, "loaded_at": loaded, "file": self.config.config,
                "refused": self.refused}

    async def run(self, registry: PublishRegistry, shutdown: ShutdownToken) -> None:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[bool]] = set()

        def hangup() -> None:
            task = loop.create_task(self.reload("SIGHUP"))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, hangup)
        try:
            while not shutdown.cancelled:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll):
                        await shutdown.wait()
                if shutdown.cancelled or not self.watched:
                    continue
                seen = await asyncio.to_thread(self._fingerprint)
                if seen != self._seen:
                    await self.reload("file changed", if_changed=True)
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
            for task in tasks:
                task.cancel()

    def _fingerprint(self) -> bytes:
        digest = hashlib.sha256()
        for path in self.watched:
            try:
                digest.update(Path(path).read_bytes())
            except OSError as exc:
                digest.update(repr(exc).encode())
        return digest.digest()

    async def reload(self, why: str, *, if_changed: bool = False) -> bool:
        """Read and apply the config again; False (and the running config stays) when the new
        one is refused. ``if_changed``: only when the files differ from what the last reload
        read (the poller's change may have been loaded meanwhile by a SIGHUP, and one edit
        must make one generation)."""
        async with self._lock:
            if not self.watched:
                log.info("config reload (%s): no config file or auth config to reload", why)
                return False
            seen = await asyncio.to_thread(self._fingerprint)
            if if_changed and seen == self._seen:
                return False
            self._seen = seen
            try:
                assert self.source is not None  # watched is empty without one
                new = await asyncio.to_thread(self.source.build)
                auth = await asyncio.to_thread(auth_for, new, node=self.node)
            except (ConfigFileError, AuthConfigError, ValueError) as exc:
                self.refused += 1
                log.error("config refused (%s): %s; still running generation %d", why, exc,
                          self.generation)
                return False
            except Exception:  # a bug reading some odd file must not stop the node
                self.refused += 1
                log.exception("config refused (%s): unexpected error; still running "
                              "generation %d", why, self.generation)
                return False
            old = self.config
            new = self._keep_unreloadable(old, new)
            changed = sorted(f.name for f in dataclasses.fields(NodeConfig)
                             if f.name not in _NOT_COMPARED
                             and getattr(old, f.name) != getattr(new, f.name))
            await self.apply(old, new, auth)
            self.config = new
            self.generation += 1
            self.loaded_at = time.time()
            log.info("config reloaded (%s) generation=%d changed=%s", why, self.generation,
                     ",".join(changed) or "nothing")
            return True

    @staticmethod
    def _keep_unreloadable(old: NodeConfig, new: NodeConfig) -> NodeConfig:
        kept = {f.name: getattr(old, f.name) for f in dataclasses.fields(NodeConfig)
                if f.name not in RELOADABLE | _NOT_COMPARED
                and getattr(old, f.name) != getattr(new, f.name)}
        for name, value in kept.items():
            log.warning("config: %s changed (%s -> %s) and needs a restart; keeping %s", name,
                        value, getattr(new, name), value)
        return dataclasses.replace(new, **kept) if kept else new
