"""``--workers N``: a supervisor process and N worker processes sharing the listening port.

Theory of operation
-------------------
Python runs one event loop per process on one core, so more cores mean more processes. The
supervisor does no proxying. It

* starts N workers, each a fresh interpreter running the same ``serve``/``connect`` command with
  ``ATLS_PROXY_WORKER=1``: each worker binds the port itself with SO_REUSEPORT (the kernel spreads
  new connections across the sockets), or, under socket activation, inherits the supervisor's
  listening socket (its descriptor numbers and names in ``ATLS_PROXY_WORKER_FDS``);
* gives every worker ``PROMETHEUS_MULTIPROC_DIR`` (a private temporary folder) so their metrics
  land in files it merges for ``/metrics`` (ops/metrics.py explains the merge), and its own
  ``NOTIFY_SOCKET``: workers report ``READY=1``/``STOPPING=1`` to the supervisor exactly as they
  would to systemd, tagged with ``WORKER_PID``;
* serves the admin endpoints: ``/readyz`` is 200 when every worker is ready and no drain is under
  way; ``/status`` lists the workers (pid, ready, restarts, last exit code);
* restarts a worker that exits while not stopping, with a back-off (1 s doubling to 30 s; reset
  after a worker has run for 60 s), and marks its metrics dead;
* forwards SIGHUP (reload) and SIGTERM (drain) to every worker; a second SIGTERM/SIGINT is
  forwarded too (the workers then force-close). It tells systemd ``READY=1`` once all workers are
  ready and ``STOPPING=1`` when the drain starts, and exits with the worst worker exit code
  (0 < 3 < 4; anything else is 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atls_proxy import __version__
from atls_proxy.errors import ConfigError
from atls_proxy.ops import systemd
from atls_proxy.ops.admin import AdminServer
from atls_proxy.ops.metrics import (
    mark_worker_dead,
    multiprocess_exposition,
    prepare_multiprocess_dir,
)

log = logging.getLogger("atls_proxy")

# "fd:name,fd:name": the listening sockets a worker inherits from the supervisor.
WORKER_FDS_ENV = "ATLS_PROXY_WORKER_FDS"
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0
MAX_NOTIFY_DATAGRAM = 4096


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: bool = False
    started: float = 0.0
    restarts: int = 0
    last_exit: int | None = None
    backoff: float = BACKOFF_START
    waiter: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


def worker_argv(args: argparse.Namespace, role: str) -> list[str]:
    """The command line a worker runs: the supervisor's own, without --workers and --admin."""
    argv = [sys.executable, "-m", "atls_proxy", "serve" if role == "server" else "connect"]
    argv += ["--config", str(args.config)]
    for flag, value in (
        ("--listen", args.listen),
        ("--backend", getattr(args, "backend", None)),
        ("--server", getattr(args, "server", None)),
        ("--log-level", args.log_level),
        ("--log-format", args.log_format),
    ):
        if value:
            argv += [flag, value]
    return argv


class Supervisor:
    def __init__(self, args: argparse.Namespace, role: str, cfg: Any) -> None:
        self.args = args
        self.role = role
        self.cfg = cfg
        self.n = args.workers
        self.workers = [Worker(i) for i in range(self.n)]
        self.stopping = False
        self.signals = 0
        self.started_at = time.time()
        self.tmp = Path(tempfile.mkdtemp(prefix="atls-proxy-workers-"))
        self.metrics_dir = self.tmp / "metrics"
        prepare_multiprocess_dir(self.metrics_dir)
        self.notify_path = self.tmp / "notify.sock"
        self.systemd_notify = os.environ.get("NOTIFY_SOCKET")
        self.inherited = systemd.listen_fds()
        self.admin: AdminServer | None = None
        self._all_ready_sent = False
        self._done = asyncio.Event()

    # -- admin ---------------------------------------------------------------------------------

    def ready(self) -> tuple[bool, list[str]]:
        reasons = []
        if self.stopping:
            reasons.append("draining")
        for w in self.workers:
            if not w.ready:
                reasons.append(f"worker {w.index} not ready")
        return not reasons, reasons

    def status(self) -> dict[str, Any]:
        ok, reasons = self.ready()
        return {
            "version": __version__,
            "role": self.role,
            "pid": os.getpid(),
            "started_at": round(self.started_at, 3),
            "config": str(self.args.config),
            "ready": ok,
            "not_ready": reasons,
            "draining": self.stopping,
            "workers": [
                {
                    "index": w.index,
                    "pid": w.pid,
                    "ready": w.ready,
                    "restarts": w.restarts,
                    "last_exit": w.last_exit,
                }
                for w in self.workers
            ],
            "metrics": "aggregated over all workers (prometheus multiprocess mode)",
        }

    # -- workers -------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["ATLS_PROXY_WORKER"] = "1"
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        env["NOTIFY_SOCKET"] = str(self.notify_path)
        for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(k, None)
        env.pop(WORKER_FDS_ENV, None)
        if self.inherited:
            # Descriptor numbers and names as they are in this process (kept by pass_fds). Not
            # LISTEN_FDS: sd_listen_fds(3) wants them consecutive from 3, which they are not
            # once the admin socket stays with the supervisor.
            env[WORKER_FDS_ENV] = ",".join(
                f"{s.fileno()}:{name}" for name, socks in self.inherited.items() for s in socks
            )
        return env

    def _fds(self) -> list[int]:
        return [s.fileno() for socks in self.inherited.values() for s in socks]

    async def _spawn(self, w: Worker) -> None:
        w.ready = False
        w.started = time.monotonic()
        w.proc = await asyncio.create_subprocess_exec(
            *worker_argv(self.args, self.role), env=self._env(), pass_fds=self._fds()
        )
        log.info("worker %d started pid=%d", w.index, w.proc.pid, extra={"event": "worker"})
        w.waiter = asyncio.ensure_future(self._watch(w))

    async def _watch(self, w: Worker) -> None:
        assert w.proc is not None
        code = await w.proc.wait()
        pid = w.proc.pid
        w.ready, w.last_exit = False, code
        mark_worker_dead(pid, self.metrics_dir)
        if self.stopping:
            log.info("worker %d (pid %d) exited with %d", w.index, pid, code)
            if all(x.proc is None or x.proc.returncode is not None for x in self.workers):
                self._done.set()
            return
        ran = time.monotonic() - w.started
        if ran >= STABLE_AFTER:
            w.backoff = BACKOFF_START
        log.error(
            "worker %d (pid %d) exited with %d after %.1f s; restarting in %.0f s",
            w.index,
            pid,
            code,
            ran,
            w.backoff,
            extra={"event": "worker", "result": "exited", "code": code},
        )
        delay, w.backoff = w.backoff, min(BACKOFF_MAX, w.backoff * 2)
        await asyncio.sleep(delay)
        if not self.stopping:
            w.restarts += 1
            await self._spawn(w)

    def _signal_workers(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    # -- notifications from workers ------------------------------------------------------------------

    def _on_notify(self, data: bytes) -> None:
        fields = dict(
            line.split("=", 1) for line in data.decode(errors="replace").splitlines() if "=" in line
        )
        try:
            pid = int(fields.get("WORKER_PID", ""))
        except ValueError:
            return
        w = next((x for x in self.workers if x.pid == pid), None)
        if w is None:
            return
        if fields.get("READY") == "1":
            w.ready = True
        if fields.get("STOPPING") == "1" or fields.get("RELOADING") == "1":
            w.ready = fields.get("RELOADING") == "1" and w.ready  # a reload keeps serving
        if not self._all_ready_sent and all(x.ready for x in self.workers):
            self._all_ready_sent = True
            self._notify_systemd("READY=1", f"STATUS={self.n} workers ready")
            log.info("all %d workers ready", self.n, extra={"event": "workers", "ready": self.n})

    def _notify_systemd(self, *fields: str) -> None:
        if self.systemd_notify:
            saved = os.environ.get("NOTIFY_SOCKET")
            os.environ["NOTIFY_SOCKET"] = self.systemd_notify
            try:
                systemd.notify(*fields)
            finally:
                if saved is None:
                    os.environ.pop("NOTIFY_SOCKET", None)
                else:
                    os.environ["NOTIFY_SOCKET"] = saved

    # -- main ------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.notify_path))
        sock.setblocking(False)

        def readable() -> None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while True:
                    self._on_notify(sock.recv(MAX_NOTIFY_DATAGRAM))

        loop.add_reader(sock.fileno(), readable)
        admin_addr = self.cfg.ops.admin
        inherited_admin = self.inherited.pop("admin", [])
        if admin_addr is not None or inherited_admin:
            self.admin = AdminServer(
                admin_addr.host if admin_addr else "",
                admin_addr.port if admin_addr else 0,
                ready=self.ready,
                status=self.status,
                metrics=lambda: multiprocess_exposition(self.metrics_dir),
                sock=inherited_admin[0] if inherited_admin else None,
            )
        try:
            if self.admin is not None:
                await self.admin.start()  # it logs where it listens
            for w in self.workers:
                await self._spawn(w)
            stop = asyncio.Event()

            def on_stop() -> None:
                self.signals += 1
                if self.signals == 1:
                    self.stopping = True
                    self._notify_systemd("STOPPING=1", "STATUS=draining workers")
                    stop.set()
                self._signal_workers(signal.SIGTERM)

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_stop)
            loop.add_signal_handler(signal.SIGHUP, lambda: self._signal_workers(signal.SIGHUP))
            await stop.wait()
            await self._done.wait()
        finally:
            loop.remove_reader(sock.fileno())
            sock.close()
            for w in self.workers:
                if w.waiter is not None and not w.waiter.done():
                    w.waiter.cancel()
                if w.proc is not None and w.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()
                    await w.proc.wait()
            if self.admin is not None:
                await self.admin.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
        codes = [w.last_exit for w in self.workers]
        if any(c == 4 for c in codes) or self.signals > 1:
            return 4
        if any(c == 3 for c in codes):
            return 3
        return 0 if all(c == 0 for c in codes) else 1


def supervise(args: argparse.Namespace, role: str, cfg: Any) -> int:
    from atls_proxy.cli import run

    listen = cfg.listen
    if listen.port == 0 and not os.environ.get("LISTEN_FDS"):  # (before listen_fds unsets it)
        raise ConfigError(
            "--workers", "workers share one fixed port: listen on a port other than 0"
        )
    return run(lambda: Supervisor(args, role, cfg).run())


def worker_fds() -> dict[str, list[socket.socket]]:
    """In a worker: the listening sockets the supervisor passed (``WORKER_FDS_ENV``), by name."""
    text = os.environ.pop(WORKER_FDS_ENV, "")
    out: dict[str, list[socket.socket]] = {}
    for item in filter(None, text.split(",")):
        fd_text, _, name = item.partition(":")
        try:
            fd = int(fd_text)
        except ValueError:
            raise ConfigError(WORKER_FDS_ENV, f"malformed entry {item!r}") from None
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        out.setdefault(name or "unknown", []).append(sock)
    return out
