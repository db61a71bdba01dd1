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
  ``atls_proxy_reloads_total{result="failure"}``. A reload the watcher started that failed is
  tried again without waiting for another change (next interval, then backing off), since the
  cause may be fixed without touching the files' contents (a permission, a TEE that recovers);
  an error that repeats unchanged is logged once. Settings that only a restart can change (the
  listen address, the attester, ``reload_interval``) are reported and left as they were;
  ``drain_timeout`` takes the reloaded value.
* **Signals before start-up is done**: a SIGHUP that arrives while the service is built
  (``early_signals.remember_early_hup``) or starting (the cached tier waits for its first quote) does not kill
  the process: it is remembered and honoured by one reload once the service listens. A SIGUSR1
  while the service is built (``remember_early_usr1``) is answered by one status line once it
  is built (``early_usr1`` needs ``status_line``); while it starts, at once. Both early
  handlers live in ops/early_signals.py.
* **Drain** on SIGTERM/SIGINT: readiness turns false at once, the listening sockets close, open
  connections get up to ``drain_timeout`` to finish, then the rest are closed. Exit code 0 when
  every connection finished by itself, 3 when some were cut at the deadline, 4 when a second
  signal forced the exit.
* **systemd**: ``READY=1`` once listening, ``RELOADING=1`` / ``READY=1`` around a reload,
  ``STOPPING=1`` when the drain starts, ``STATUS=`` lines (``ops/systemd.py``); inherited
  listening sockets (socket activation) are used instead of binding: the one named ``attested``
  (or ``unknown``, without names), else the only one not named ``admin``, whatever its name.
  A listen address that cannot be bound is a configuration error (exit 2) naming it.
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
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from atls_proxy import __version__
from atls_proxy.attest.engine import EPOCH_HASHES
from atls_proxy.errors import ConfigError
from atls_proxy.expat.tiers import Tier
from atls_proxy.ops import systemd
from atls_proxy.ops.admin import AdminServer
from atls_proxy.ops.config import Address, ClientConfig, OpsConfig, ServerConfig
from atls_proxy.ops.files import read_capped
from atls_proxy.ops.metrics import Metrics
from atls_proxy.proxy.conn import reset_closing, wait_flushed
from atls_proxy.proxy.listener import Listener

log = logging.getLogger("atls_proxy")

EXIT_OK = 0
EXIT_DRAIN_TIMEOUT = 3
EXIT_FORCED = 4

# The watcher retries a failed reload after 1, 2, 4, ... intervals, at most this many seconds
# apart (but never more often than every interval).
RETRY_BACKOFF_MAX = 300.0


class Service(Protocol):
    listener: Listener
    role: str
    # The command-line overrides of the configuration (config.flag_overrides): a flag's value
    # or None; errors about an overridden key name the flag.
    overrides: dict[str, str | None]

    async def start(
        self, sock: socket.socket | None, reuse_port: bool
    ) -> list[tuple[str, int]]: ...

    async def reload(self) -> list[str]:
        """Build the next state off the loop and swap it in; return restart-only changes.

        Raises on any problem, having changed nothing."""
        ...

    def watched_files(self) -> list[Path]: ...

    # The watched files as the service found them just before it read them: their stat
    # fingerprint and content revision (``files_snapshot``). ``Runtime`` starts watching from it,
    # so that a change during a slow start-up (the cached tier's first quote, a TPM's open) is
    # reloaded once the service is up instead of being taken for the loaded state.
    loaded: FilesSnapshot | None

    def ops_config(self) -> OpsConfig:
        """The operations settings in force (after the last successful reload)."""
        ...

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


def warn_if_reachable(
    what: str, configured: Address | None, inherited: Sequence[socket.socket], gives: str
) -> None:
    """Log that a listener meant for this host is reachable from other hosts: the admin
    endpoint (the single process's ``Runtime`` and the ``--workers`` supervisor) and connect's
    plaintext listener. Where it really listens: an inherited socket (systemd) wins over the
    configured address."""
    where = _socket_address(inherited[0]) if inherited else configured
    if where is not None and not where.is_loopback():
        log.warning("%s on %s is reachable from other hosts (%s)", what, where, gives)


def warn_if_admin_exposed(
    configured: Address | None, inherited: Sequence[socket.socket] = ()
) -> None:
    warn_if_reachable("admin listener", configured, inherited, "status and metrics")


def _socket_address(sock: socket.socket) -> Address:
    """The address a listening socket is bound to."""
    if sock.family == socket.AF_UNIX:
        return Address("unix", path=str(sock.getsockname()))
    host, port = sock.getsockname()[:2]
    return Address("tcp", str(host), int(port))


# file_revision reads at most this much of each watched file (the largest trust files, CRLs, are
# a few MiB): a revision is a change detector, not a checksum of gigabytes.
MAX_REVISION_READ = 16 * 1024 * 1024


def file_revision(paths: Iterable[Path]) -> str:
    """A short digest of the watched files' contents (the ``/status`` config revision)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode() + b"\0")
        try:
            h.update(read_capped(p, MAX_REVISION_READ))
        except OSError as exc:
            h.update(f"<{exc.strerror}>".encode())
    return h.hexdigest()[:16]


_Fingerprint = tuple[tuple[str, int, int, int, int, int, int, int], ...]


@dataclass(frozen=True)
class FilesSnapshot:
    fingerprint: _Fingerprint
    revision: str


def files_snapshot(paths: list[Path]) -> FilesSnapshot | None:
    """The stat fingerprint and content revision of ``paths`` (None if they cannot be read: the
    service's own reading then reports why)."""
    try:
        return FilesSnapshot(_stat_fingerprint(paths), file_revision(paths))
    except Exception:
        return None


def _stat_fingerprint(paths: Iterable[Path]) -> _Fingerprint:
    """What the watcher compares between intervals. Besides the contents' modification time,
    size and inode, the change time, mode and owner: a change of permissions alone (a renewed
    key made readable by ``chmod``, ``chown`` or an ACL) counts as a change."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append(
                (
                    str(p),
                    st.st_mtime_ns,
                    st.st_ctime_ns,
                    st.st_size,
                    st.st_ino,
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                )
            )
        except OSError:
            out.append((str(p), -1, -1, -1, -1, -1, -1, -1))
    return tuple(out)


async def _listen(
    start: Awaitable[list[tuple[str, int]]], sock: socket.socket | None, key: str, address: Address
) -> list[tuple[str, int]]:
    """Await a service's ``start``. A failure to bind the configured ``address`` (``sock`` is
    None) is the configuration error it is (``ConfigError(key, ...)``: exit 2); an inherited
    socket's failure is raised as it is."""
    try:
        return await start
    except OSError as exc:
        if sock is not None:
            raise
        why = os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__
        raise ConfigError(key, f"cannot listen on {address}: {why} (errno {exc.errno})") from exc


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
        early_hup: Callable[[], bool] | None = None,
        early_usr1: Callable[[], bool] | None = None,
    ) -> None:
        self.service = service
        self._early_hup = early_hup
        self._early_usr1 = early_usr1
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
        self._hup_during_start = False
        self._watch_list: list[Path] = []
        self._watch_error = ""
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
        # From the first moment, before the (possibly slow: the cached tier's first quote)
        # start-up: SIGHUP's default action would kill the process. It is remembered and honoured
        # once the service is up. SIGTERM/SIGINT keep their default actions until then (nothing
        # to drain yet).
        loop.add_signal_handler(signal.SIGHUP, self._on_hup_during_start)
        if self._early_hup is not None and self._early_hup():
            self._on_hup_during_start()  # it arrived while the service was being built
        if self.status_line is not None:
            status_line = self.status_line

            def log_status() -> None:
                log.info("status %s", status_line())

            loop.add_signal_handler(signal.SIGUSR1, log_status)
            if self._early_usr1 is not None and self._early_usr1():
                log_status()  # it arrived while the service was being built
        try:
            return await self._run(loop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)

    async def _run(self, loop: asyncio.AbstractEventLoop) -> int:
        try:
            self.addresses = await self.service.start(
                self._attested_socket(), reuse_port=self.worker
            )
            loaded = getattr(self.service, "loaded", None)
            self.reload_state.revision = (
                loaded.revision
                if loaded is not None
                else file_revision(self.service.watched_files())
            )
            self.metrics.reload(True)  # start-up counts as the first successful load
            await self._start_admin()
        except Exception:
            with contextlib.suppress(Exception):
                await self.service.close()
            raise
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        serve = asyncio.ensure_future(self.service.listener.serve_forever())
        self._spawn(self.metrics.refresh_forever())
        if self.ops.reload_interval > 0:
            self._spawn(self._watch_files())
        self._notify("READY=1", f"STATUS=listening on {self._listen_text()}")
        if self._hup_during_start:
            self._on_hup()  # the SIGHUP that arrived during start-up: one reload now
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
            await self.service.close()
            if self.admin is not None:
                await self.admin.close()

    def _attested_socket(self) -> socket.socket | None:
        """The inherited socket to serve on (socket activation), or None to bind the configured
        address: the one named ``attested`` (``unknown`` without ``$LISTEN_FDNAMES``), else the
        only one not named ``admin`` whatever its name (systemd names a socket after its unit,
        e.g. ``atls-proxy.socket``, unless ``FileDescriptorName=`` says otherwise)."""
        for name in ("attested", "unknown"):
            # (two unnamed: an admin socket passed without names must not become the TLS one)
            sock = systemd.only_socket(self.inherited.get(name), name)
            if sock is not None:
                return sock
        others = [(n, s) for n, socks in self.inherited.items() if n != "admin" for s in socks]
        if len(others) == 1:
            name, sock = others[0]
            log.info("socket activation: the attested listener is the inherited socket %r", name)
            return sock
        if others:
            names = ", ".join(sorted({n for n, _ in others}))
            raise ConfigError(
                "LISTEN_FDNAMES",
                f"{len(others)} inherited sockets ({names}) and none named 'attested': "
                "set FileDescriptorName=attested on the attested listener's socket unit",
            )
        return None

    async def _start_admin(self) -> None:
        if self.worker:
            return  # the supervisor serves the admin endpoints of a worker pool
        inherited = self.inherited.get("admin") or []
        if self.ops.admin is None and not inherited:
            return
        host = self.ops.admin.host if self.ops.admin is not None else ""
        port = self.ops.admin.port if self.ops.admin is not None else 0
        warn_if_admin_exposed(self.ops.admin, inherited)
        self.admin = AdminServer(
            host,
            port,
            ready=self.ready,
            status=self.status,
            metrics=self.metrics.exposition,
            sock=systemd.only_socket(inherited, "admin"),
        )
        try:
            await self.admin.start()  # it logs where it listens
        except ConfigError as exc:
            # The address came from the flag, not the file: name what the operator typed.
            if exc.key == "admin.listen" and self.service.overrides.get("admin"):
                raise ConfigError("--admin", exc.message) from None
            raise

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

    def _on_hup_during_start(self) -> None:
        if not self._hup_during_start:
            log.info("SIGHUP during start-up: reloading once the service has started")
        self._hup_during_start = True

    # -- reload ----------------------------------------------------------------------------------

    async def reload(self, why: str, retry: int = 0) -> bool:
        """Reload once (a reload asked for while one runs is run right after it).

        ``retry``: the watcher's count of attempts at a change that failed to load so far (a
        repeated, unchanged error is then logged at debug level only)."""
        if self.draining:
            return False
        if self._reload_lock.locked():
            self._reload_again = True
            return False
        async with self._reload_lock:
            ok = await self._reload_once(why, retry)
            while self._reload_again and not self.draining:
                self._reload_again = False
                ok = await self._reload_once(why)
            return ok

    async def _reload_once(self, why: str, retry: int = 0) -> bool:
        r = self.reload_state
        previous_error = r.last_error
        label = f"{why}, retry {retry}" if retry else why
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
            # A retry that fails as the previous attempt did is not news: logged at debug level
            # (it is still counted and shown in /status).
            repeated = bool(retry) and r.last_error == previous_error
            log.log(
                logging.DEBUG if repeated else logging.ERROR,
                "reload failed (%s)%s; still serving the previous configuration: %s",
                label,
                " again" if repeated else "",
                r.last_error,
                extra={
                    "event": "reload",
                    "result": "failure",
                    "trigger": why,
                    "retry": retry,
                    "error": r.last_error,
                },
            )
            self._notify("READY=1", f"STATUS=reload failed: {exc}")
            return False
        r.last_at, r.last_ok, r.last_error, r.pending_restart = time.time(), True, None, pending
        # drain_timeout applies from now on (reload_interval is restart-only: in ``pending``).
        self.ops = replace(self.ops, drain_timeout=self.service.ops_config().drain_timeout)
        r.revision = await asyncio.to_thread(file_revision, self.service.watched_files())
        self.metrics.reload(True)
        log.info(
            "reloaded (%s) in %.1f ms%s",
            label,
            (time.monotonic() - t0) * 1000,
            f"; needs a restart to change: {', '.join(pending)}" if pending else "",
            extra={
                "event": "reload",
                "result": "success",
                "trigger": why,
                "retry": retry,
                "revision": r.revision,
            },
        )
        self._notify("READY=1", f"STATUS=reloaded; listening on {self._listen_text()}")
        return True

    async def _watch_files(self) -> None:
        """Every ``reload_interval``: reload when a watched file changed; and while the reload
        of a change failed (and no later reload succeeded), try again after 1, 2, 4, ...
        intervals (at most ``RETRY_BACKOFF_MAX`` s apart): what made it fail may be fixed
        without a new change (a TEE that recovers)."""
        interval = self.ops.reload_interval  # restart-only: fixed for this process
        max_ticks = max(1, int(RETRY_BACKOFF_MAX // interval))
        # Listing the files reads the policy (and lists trust folders): off the event loop.
        # From the files as the service read them, not as they are now: a change made while it
        # started is one to load.
        loaded = getattr(self.service, "loaded", None)
        last = (
            loaded.fingerprint
            if loaded is not None
            else await asyncio.to_thread(lambda: _stat_fingerprint(self._watched()))
        )
        unloaded = False  # a change seen here is not loaded yet (its reload failed or waits)
        attempts = 0  # failed reloads of that change
        wait = 0  # intervals left before the next retry
        while True:
            await asyncio.sleep(interval)
            now = await asyncio.to_thread(lambda: _stat_fingerprint(self._watched()))
            if now != last:
                last, unloaded, attempts, wait = now, True, 0, 0
            elif not unloaded or self._reload_lock.locked():
                continue  # nothing to do, or a reload runs (ours may be queued behind it)
            elif self.reload_state.last_ok:
                unloaded = False  # a later reload (SIGHUP, or ours once queued) loaded it
                continue
            elif wait > 1:
                wait -= 1
                continue
            generation = self.reload_state.generation
            if await self.reload("file change", retry=attempts):
                unloaded = False
            elif self.reload_state.generation != generation:  # it ran, and failed
                attempts += 1
                wait = min(2 ** min(attempts - 1, 30), max_ticks)

    def _watched(self) -> list[Path]:
        # Listing the files may read a policy that is being edited: whatever goes wrong, the
        # watcher goes on with the last list it had (the configuration file at first) — a
        # watcher task that died would silently stop every later reload on change, and a list
        # that changed because listing failed would look like a file change. Logged once per
        # distinct error, not every interval.
        try:
            self._watch_list = self.service.watched_files()
            self._watch_error = ""
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._watch_error:
                log.error("listing the watched files failed, watching the last list: %s", error)
                self._watch_error = error
        return self._watch_list or [self.config_path]

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
        deadline = time.monotonic() + self.ops.drain_timeout
        # Finished connections whose last bytes are still leaving count as open until they are
        # out (conn.wait_flushed): the process's exit would otherwise drop them and close the
        # sockets with a FIN — a truncated stream that its peer reads as a clean end.
        idle = asyncio.ensure_future(self._until_idle_and_flushed(listener, deadline))
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
        # Finished connections whose last bytes are still unsent: reset, not ended with a FIN
        # (counted by socket: a connection may hold bytes for both its peers).
        reset = reset_closing()
        also = f"; reset {reset} finished socket(s) still holding unsent bytes" if reset else ""
        if self._force.is_set():
            log.warning(
                "forced exit: closed %d connection(s)%s",
                cut,
                also,
                extra={"event": "drain", "result": "forced", "closed": cut, "reset_unsent": reset},
            )
            return EXIT_FORCED
        log.warning(
            "drain timeout: closed %d connection(s) still open after %.0f s%s",
            cut,
            self.ops.drain_timeout,
            also,
            extra={"event": "drain", "result": "timeout", "closed": cut, "reset_unsent": reset},
        )
        return EXIT_DRAIN_TIMEOUT

    @staticmethod
    async def _until_idle_and_flushed(listener: Listener, deadline: float) -> bool:
        """Every connection finished, and what finished ones still held handed to the kernel,
        before ``deadline``: True; else False (the caller resets those still holding bytes)."""
        if not await listener.wait_idle(max(0.0, deadline - time.monotonic())):
            return False
        return await wait_flushed(max(0.0, deadline - time.monotonic()))


_C = TypeVar("_C", ServerConfig, ClientConfig)


def _keep_restart_only(
    old: _C, new: _C, section: str, fields: dict[str, str]
) -> tuple[_C, list[str]]:
    """``new`` with the settings only a restart can change (``fields``: attribute → the name
    reported, plus the admin address and ``[section] reload_interval``, the watcher's period)
    taken from ``old``; and the names of those that differ. ``drain_timeout`` is ``new``'s."""
    pending = [name for attr, name in fields.items() if getattr(new, attr) != getattr(old, attr)]
    if new.ops.reload_interval != old.ops.reload_interval:
        pending.append(f"{section}.reload_interval")
    if new.ops.admin != old.ops.admin:
        pending.append("admin.listen")
    kept = replace(
        new,
        ops=replace(new.ops, admin=old.ops.admin, reload_interval=old.ops.reload_interval),
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
        self.loaded = files_snapshot(self.watched_files())  # before the build reads them
        self.server = build_server(cfg, metrics)
        self.listener = self.server

    async def start(self, sock: socket.socket | None, reuse_port: bool) -> list[tuple[str, int]]:
        self.metrics.epoch_age_source(self.server.engine.epoch_age)
        # An OSError is the listener's: the engine reports its failures as AttestationUnavailable.
        started = self.server.start(sock=sock, reuse_port=reuse_port)
        key = "--listen" if self.overrides.get("listen") else "server.listen"
        return await _listen(started, sock, key, self.cfg.listen)

    def _build(self) -> tuple[ServerConfig, Any, Any, list[str]]:
        from atls_proxy.app import profile_from, warn_insecure_server
        from atls_proxy.ops.config import load_server_config
        from atls_proxy.proxy.server import ServerKeys
        from atls_proxy.tls.context import load_server_identity, server_context

        assert self.cfg.source is not None
        new = load_server_config(self.cfg.source, **self.overrides)
        identity = load_server_identity(new.certificate, new.private_key)
        keys = ServerKeys.build(identity, server_context(identity))
        new, pending = _keep_restart_only(
            self.cfg,
            new,
            "server",
            {"listen": "server.listen", "attester": "attester", "log": "log"},
        )
        warn_insecure_server(new)
        return new, keys, profile_from(new.expat), pending

    async def reload(self) -> list[str]:
        new, keys, profile, pending = await asyncio.to_thread(self._build)
        await self.server.swap(new, keys, profile)
        self.cfg = new
        return pending

    def watched_files(self) -> list[Path]:
        assert self.cfg.source is not None
        return [self.cfg.source, self.cfg.certificate, self.cfg.private_key]

    def ops_config(self) -> OpsConfig:
        return self.cfg.ops

    def not_ready(self) -> list[str]:
        eng = self.server.engine
        reasons = []
        if eng.tier is Tier.CACHED:
            # None quoted yet, or one expired: the TEE failed (the engine keeps epochs warm
            # without traffic, and retries; the next connection would wait for a quote). Every
            # suite hash's: a client's cipher suite picks which one it is served.
            stale = [h for h in EPOCH_HASHES if not eng.epoch_current(h)]
            if stale:
                reasons.append(f"no current evidence epoch ({', '.join(stale)})")
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
        self.loaded = files_snapshot(self.watched_files())  # before the build reads them
        if cfg.listen.kind != "tcp":
            raise ConfigError("client.listen", "the local listener is HOST:PORT")
        settings = replace(build_client_settings(cfg), metrics=metrics)
        self.fwd = ClientForwarder(
            settings, cfg.listen.host, cfg.listen.port, cfg.max_connections, metrics
        )
        self.listener = self.fwd

    async def start(self, sock: socket.socket | None, reuse_port: bool) -> list[tuple[str, int]]:
        # Plaintext in, an attested channel out, no authentication: whoever reaches it uses
        # this relying party's attested sessions (docs/SECURITY.md).
        warn_if_reachable(
            "client listener",
            self.cfg.listen,
            [sock] if sock is not None else [],
            "plaintext access through the attested connection; keep it on 127.0.0.1",
        )
        started = self.fwd.start(sock=sock, reuse_port=reuse_port)
        key = "--listen" if self.overrides.get("listen") else "client.listen"
        return await _listen(started, sock, key, self.cfg.listen)

    def _build(self) -> tuple[ClientConfig, Any, list[str]]:
        from atls_proxy.app import build_client_settings
        from atls_proxy.ops.config import load_client_config

        assert self.cfg.source is not None
        new = load_client_config(self.cfg.source, **self.overrides)
        # A fresh appraisal cache: nothing appraised under the old policy is reused.
        settings = replace(build_client_settings(new), metrics=self.metrics)
        new, pending = _keep_restart_only(
            self.cfg, new, "client", {"listen": "client.listen", "log": "log"}
        )
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

    def ops_config(self) -> OpsConfig:
        return self.cfg.ops

    def not_ready(self) -> list[str]:
        return []

    def status(self) -> dict[str, Any]:
        return {
            "server": f"{self.fwd.settings.host}:{self.fwd.settings.port}",
            "connections": self.fwd.counters(),
        }

    async def close(self) -> None:
        await self.fwd.close()
