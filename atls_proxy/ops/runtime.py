"""The life of one ``serve`` or ``connect`` process: admin listener, signals, reload and drain.

Theory of operation
-------------------
A ``Service`` (the attested server or the client forwarder, adapted below) knows how to start
listening, how to build its next state from the files on disk, and how to swap it in. ``run``
wraps it with everything an operator expects (docs/OPERATIONS.md):

* **Admin listener** (``[admin] listen`` / ``--admin``, off by default): ``/healthz`` is 200 while
  the process runs; ``/readyz`` is 200 only while listening, not draining, and the service has
  nothing to report (e.g. the cached tier has a current epoch, the attester is not failing);
  ``/metrics``; ``/status`` (JSON: version, config revision, last reload and its result, tier,
  epoch age, connection counters).
* **Reload** on SIGHUP, and every ``reload_interval`` seconds when a watched file (the config, the
  certificate and key, the policy and its trust folders) changed. The new state is built *off the
  event loop* (a thread: file reads, PEM and policy parsing) and swapped in one assignment;
  connections already open keep the state they captured when they were accepted. A reload that
  fails — a missing file, a key that does not match its certificate, a policy that does not
  parse, a TEE that cannot quote the new key's epoch — changes nothing: the old state keeps
  serving, the error is logged, shown in ``/status`` and counted in
  ``atls_proxy_reloads_total{result="failure"}``. Settings that only a restart can change (the
  listen address, the attester) are reported and left as they were.
* **Drain** on SIGTERM/SIGINT: readiness turns false at once, the listening sockets close, open
  connections get up to ``drain_timeout`` to finish, then the rest are closed. Exit code 0 when
  every connection finished by itself, 3 when some were cut at the deadline, 4 when a second
  signal forced the exit.
* **systemd**: ``READY=1`` once listening, ``RELOADING=1`` / ``READY=1`` around a reload,
  ``STOPPING=1`` when the drain starts, ``STATUS=`` lines (``ops/systemd.py``); inherited
  listening sockets (socket activation) are used instead of binding.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from atls_proxy import __version__
from atls_proxy.expat.tiers import Tier
from atls_proxy.ops import systemd
from atls_proxy.ops.admin import AdminServer
from atls_proxy.ops.config import ClientConfig, OpsConfig, ServerConfig
from atls_proxy.ops.metrics import Metrics
from atls_proxy.proxy.listener import Listener

log = logging.getLogger("atls_proxy")

EXIT_OK = 0
EXIT_DRAIN_TIMEOUT = 3
EXIT_FORCED = 4


class Service(Protocol):
    listener: Listener
    role: str

    async def start(
        self, sock: socket.socket | None, reuse_port: bool
    ) -> list[tuple[str, int]]: ...

    async def reload(self) -> list[str]:
        """Build the next state off the loop and swap it in; return restart-only changes.

        Raises on any problem, having changed nothing."""
        ...

    def watched_files(self) -> list[Path]: ...

    def not_ready(self) -> list[str]: ...

    def status(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


@dataclass
class ReloadState:
    generation: int = 0
    last_at: float | None = None
    last_ok: bool | None = None
    last_error: str | None = None
    pending_restart: list[str] = field(default_factory=list)
    revision: str = ""


def file_revision(paths: Iterable[Path]) -> str:
    """A short digest of the watched files' contents (the ``/status`` config revision)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode() + b"\0")
        try:
            h.update(p.read_bytes())
        except OSError as exc:
            h.update(f"<{exc.strerror}>".encode())
    return h.hexdigest()[:16]


def _stat_fingerprint(paths: Iterable[Path]) -> tuple[tuple[str, int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(p), -1, -1, -1))
    return tuple(out)


class Runtime:
    def __init__(
        self,
        service: Service,
        ops: OpsConfig,
        metrics: Metrics,
        *,
        config_path: Path,
        inherited: dict[str, list[socket.socket]] | None = None,
        worker: bool = False,
        status_line: Callable[[], str] | None = None,
    ) -> None:
        self.service = service
        self.ops = ops
        self.metrics = metrics
        self.config_path = config_path
        self.inherited = inherited or {}
        self.worker = worker
        self.status_line = status_line
        self.reload_state = ReloadState()
        self.started_at = time.time()
        self.draining = False
        self.addresses: list[tuple[str, int]] = []
        self.admin: AdminServer | None = None
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._reload_again = False
        self._signals = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- readiness and status ----------------------------------------------------------------

    def ready(self) -> tuple[bool, list[str]]:
        reasons = []
        if not self.service.listener.listening:
            reasons.append("not listening")
        if self.draining:
            reasons.append("draining")
        reasons += self.service.not_ready()
        return not reasons, reasons

    def status(self) -> dict[str, Any]:
        r = self.reload_state
        ok, reasons = self.ready()
        return {
            "version": __version__,
            "role": self.service.role,
            "pid": os.getpid(),
            "started_at": round(self.started_at, 3),
            "uptime_seconds": round(time.time() - self.started_at, 3),
            "config": str(self.config_path),
            "config_revision": r.revision,
            "ready": ok,
            "not_ready": reasons,
            "draining": self.draining,
            "listen": [f"{h}:{p}" for h, p in self.addresses],
            "last_reload": {
                "generation": r.generation,
                "at": r.last_at,
                "ok": r.last_ok,
                "error": r.last_error,
                "pending_restart": r.pending_restart,
            },
            **self.service.status(),
        }

    # -- the main flow ---------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        attested = self.inherited.get("attested") or self.inherited.get("unknown") or []
        sock = attested[0] if attested else None
        self.addresses = await self.service.start(sock, reuse_port=self.worker)
        self.reload_state.revision = file_revision(self.service.watched_files())
        self.metrics.reload(True)  # start-up counts as the first successful load
        await self._start_admin()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        if self.status_line is not None:
            status_line = self.status_line
            loop.add_signal_handler(signal.SIGUSR1, lambda: log.info("status %s", status_line()))
        serve = asyncio.ensure_future(self.service.listener.serve_forever())
        self._spawn(self.metrics.refresh_forever())
        if self.ops.reload_interval > 0:
            self._spawn(self._watch_files())
        self._notify("READY=1", f"STATUS=listening on {self._listen_text()}")
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({serve, stop}, return_when=asyncio.FIRST_COMPLETED)
            if serve.done() and not stop.done():
                serve.result()  # the listener died on its own: raise what killed it
                return 1
            return await self._drain()
        finally:
            for t in (serve, stop, *self._tasks):
                t.cancel()
            for t in (serve, stop, *self._tasks):
                with contextlib.suppress(BaseException):
                    await t
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await self.service.close()
            if self.admin is not None:
                await self.admin.close()

    async def _start_admin(self) -> None:
        if self.worker:
            return  # the supervisor serves the admin endpoints of a worker pool
        inherited = self.inherited.get("admin") or []
        if self.ops.admin is None and not inherited:
            return
        host = self.ops.admin.host if self.ops.admin is not None else ""
        port = self.ops.admin.port if self.ops.admin is not None else 0
        if self.ops.admin is not None and not self.ops.admin.is_loopback():
            log.warning(
                "admin listener on %s is reachable from other hosts (status and metrics)",
                self.ops.admin,
            )
        self.admin = AdminServer(
            host,
            port,
            ready=self.ready,
            status=self.status,
            metrics=self.metrics.exposition,
            sock=inherited[0] if inherited else None,
        )
        await self.admin.start()  # it logs where it listens

    def _listen_text(self) -> str:
        return ", ".join(f"{h}:{p}" for h, p in self.addresses)

    def _notify(self, *fields: str) -> None:
        if self.worker:
            fields = (*fields, f"WORKER_PID={os.getpid()}")
        systemd.notify(*fields)

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # -- signals ---------------------------------------------------------------------------------

    def _on_stop_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            self._stop.set()
        else:
            log.warning("second stop signal: closing every connection now")
            self._force.set()

    def _on_hup(self) -> None:
        self._spawn(self.reload("SIGHUP"))

    # -- reload ----------------------------------------------------------------------------------

    async def reload(self, why: str) -> bool:
        """Reload once (a reload asked for while one runs is run right after it)."""
        if self.draining:
            return False
        if self._reload_lock.locked():
            self._reload_again = True
            return False
        async with self._reload_lock:
            ok = await self._reload_once(why)
            while self._reload_again and not self.draining:
                self._reload_again = False
                ok = await self._reload_once(why)
            return ok

    async def _reload_once(self, why: str) -> bool:
        r = self.reload_state
        r.generation += 1
        self._notify(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        t0 = time.monotonic()
        try:
            pending = await self.service.reload()
        except Exception as exc:  # any failure keeps the old state
            r.last_at, r.last_ok, r.last_error = time.time(), False, f"{type(exc).__name__}: {exc}"
            self.metrics.reload(False)
            log.error(
                "reload failed (%s); still serving the previous configuration: %s",
                why,
                r.last_error,
                extra={
                    "event": "reload",
                    "result": "failure",
                    "trigger": why,
                    "error": r.last_error,
                },
            )
            self._notify("READY=1", f"STATUS=reload failed: {exc}")
            return False
        r.last_at, r.last_ok, r.last_error, r.pending_restart = time.time(), True, None, pending
        r.revision = await asyncio.to_thread(file_revision, self.service.watched_files())
        self.metrics.reload(True)
        log.info(
            "reloaded (%s) in %.1f ms%s",
            why,
            (time.monotonic() - t0) * 1000,
            f"; needs a restart to change: {', '.join(pending)}" if pending else "",
            extra={"event": "reload", "result": "success", "trigger": why, "revision": r.revision},
        )
        self._notify("READY=1", f"STATUS=reloaded; listening on {self._listen_text()}")
        return True

    async def _watch_files(self) -> None:
        last = _stat_fingerprint(self._watched())
        while True:
            await asyncio.sleep(self.ops.reload_interval)
            now = _stat_fingerprint(self._watched())
            if now != last:
                last = now
                await self.reload("file change")

    def _watched(self) -> list[Path]:
        # Listing the files may read a policy that is being edited: whatever goes wrong, the
        # watcher keeps its configuration file and goes on (the reload reports the error) —
        # a watcher task that died would silently stop every later reload on change.
        try:
            return self.service.watched_files()
        except Exception:
            log.exception("listing the watched files failed; watching the configuration only")
            return [self.config_path]

    # -- drain -----------------------------------------------------------------------------------

    async def _drain(self) -> int:
        listener = self.service.listener
        self.draining = True
        self.metrics.draining(True)
        open_now = listener.active
        log.info(
            "draining: stopped accepting; %d connection(s) open, waiting up to %.0f s",
            open_now,
            self.ops.drain_timeout,
            extra={"event": "drain", "open": open_now},
        )
        self._notify("STOPPING=1", f"STATUS=draining {open_now} connection(s)")
        listener.stop_accepting()
        idle = asyncio.ensure_future(listener.wait_idle(self.ops.drain_timeout))
        force = asyncio.ensure_future(self._force.wait())
        try:
            await asyncio.wait({idle, force}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            force.cancel()
        if idle.done() and idle.result():
            log.info(
                "drained: every connection finished", extra={"event": "drain", "result": "clean"}
            )
            return EXIT_OK
        idle.cancel()
        cut = listener.active
        await listener.close()
        if self._force.is_set():
            log.warning(
                "forced exit: closed %d connection(s)",
                cut,
                extra={"event": "drain", "result": "forced", "closed": cut},
            )
            return EXIT_FORCED
        log.warning(
            "drain timeout: closed %d connection(s) still open after %.0f s",
            cut,
            self.ops.drain_timeout,
            extra={"event": "drain", "result": "timeout", "closed": cut},
        )
        return EXIT_DRAIN_TIMEOUT


_C = TypeVar("_C", ServerConfig, ClientConfig)


def _keep_restart_only(old: _C, new: _C, fields: dict[str, str]) -> tuple[_C, list[str]]:
    """``new`` with the settings only a restart can change (``fields``: attribute → the name
    reported, plus the admin address) taken from ``old``; and the names of those that differ."""
    pending = [name for attr, name in fields.items() if getattr(new, attr) != getattr(old, attr)]
    if new.ops.admin != old.ops.admin:
        pending.append("admin.listen")
    kept = replace(
        new,
        ops=replace(new.ops, admin=old.ops.admin),
        **{attr: getattr(old, attr) for attr in fields},
    )
    return kept, pending


# --- the two services ---------------------------------------------------------------------------


class ServerService:
    """``atls-proxy serve`` as a ``Service``."""

    role = "server"

    def __init__(
        self, cfg: ServerConfig, overrides: dict[str, str | None], metrics: Metrics
    ) -> None:
        from atls_proxy.app import build_server

        self.cfg = cfg
        self.overrides = overrides
        self.metrics = metrics
        self.server = build_server(cfg, metrics)
        self.listener = self.server

    async def start(self, sock: socket.socket | None, reuse_port: bool) -> list[tuple[str, int]]:
        self.metrics.epoch_age_source(self.server.engine.epoch_age)
        return await self.server.start(sock=sock, reuse_port=reuse_port)

    def _build(self) -> tuple[ServerConfig, Any, Any, list[str]]:
        from atls_proxy.app import profile_from
        from atls_proxy.ops.config import load_server_config
        from atls_proxy.proxy.server import ServerKeys
        from atls_proxy.tls.context import load_server_identity, server_context

        assert self.cfg.source is not None
        new = load_server_config(self.cfg.source, **self.overrides)
        identity = load_server_identity(new.certificate, new.private_key)
        keys = ServerKeys.build(identity, server_context(identity))
        new, pending = _keep_restart_only(
            self.cfg, new, {"listen": "server.listen", "attester": "attester", "log": "log"}
        )
        return new, keys, profile_from(new.expat), pending

    async def reload(self) -> list[str]:
        new, keys, profile, pending = await asyncio.to_thread(self._build)
        await self.server.swap(new, keys, profile)
        self.cfg = new
        return pending

    def watched_files(self) -> list[Path]:
        assert self.cfg.source is not None
        return [self.cfg.source, self.cfg.certificate, self.cfg.private_key]

    def not_ready(self) -> list[str]:
        eng = self.server.engine
        reasons = []
        if eng.tier is Tier.CACHED and eng.epoch_age() is None:
            reasons.append("no current evidence epoch")
        if eng.stats.consecutive_failures >= 3:
            reasons.append(f"attester failing ({eng.stats.consecutive_failures} quotes in a row)")
        return reasons

    def status(self) -> dict[str, Any]:
        eng = self.server.engine
        age = eng.epoch_age()
        return {
            "tier": eng.tier.value,
            "attester": eng.attester.name,
            "simulated": bool(getattr(eng.attester, "simulated", False)),
            "epoch_age_seconds": None if age is None else round(age, 3),
            "quotes": eng.stats.quotes,
            "quote_failures": eng.stats.quote_failures,
            "connections": self.server.counters(),
        }

    async def close(self) -> None:
        await self.server.close()


class ClientService:
    """``atls-proxy connect`` as a ``Service``."""

    role = "client"

    def __init__(
        self, cfg: ClientConfig, overrides: dict[str, str | None], metrics: Metrics
    ) -> None:
        from atls_proxy.app import build_client_settings
        from atls_proxy.errors import ConfigError
        from atls_proxy.proxy.forwarder import ClientForwarder

        self.cfg = cfg
        self.overrides = overrides
        self.metrics = metrics
        if cfg.listen.kind != "tcp":
            raise ConfigError("client.listen", "the local listener is HOST:PORT")
        settings = replace(build_client_settings(cfg), metrics=metrics)
        self.fwd = ClientForwarder(
            settings, cfg.listen.host, cfg.listen.port, cfg.max_connections, metrics
        )
        self.listener = self.fwd

    async def start(self, sock: socket.socket | None, reuse_port: bool) -> list[tuple[str, int]]:
        return await self.fwd.start(sock=sock, reuse_port=reuse_port)

    def _build(self) -> tuple[ClientConfig, Any, list[str]]:
        from atls_proxy.app import build_client_settings
        from atls_proxy.ops.config import load_client_config

        assert self.cfg.source is not None
        new = load_client_config(self.cfg.source, **self.overrides)
        # A fresh appraisal cache: nothing appraised under the old policy is reused.
        settings = replace(build_client_settings(new), metrics=self.metrics)
        new, pending = _keep_restart_only(self.cfg, new, {"listen": "client.listen", "log": "log"})
        return new, settings, pending

    async def reload(self) -> list[str]:
        new, settings, pending = await asyncio.to_thread(self._build)
        self.fwd.settings = settings
        self.fwd.max_connections = new.max_connections
        self.cfg = new
        return pending

    def watched_files(self) -> list[Path]:
        from atls_proxy.ops.policyfile import trust_files

        assert self.cfg.source is not None
        files = [self.cfg.source, self.cfg.policy]
        if self.cfg.ca is not None:
            files.append(self.cfg.ca)
        return files + trust_files(self.cfg.policy)

    def not_ready(self) -> list[str]:
        return []

    def status(self) -> dict[str, Any]:
        return {
            "server": f"{self.fwd.settings.host}:{self.fwd.settings.port}",
            "connections": self.fwd.counters(),
        }

    async def close(self) -> None:
        await self.fwd.close()
