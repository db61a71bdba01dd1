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
  would to systemd, tagged with ``WORKER_PID`` (the socket is in the temporary folder, or in a
  private folder under /tmp when a long ``$TMPDIR`` would make its path too long for AF_UNIX);
* serves the admin endpoints: ``/readyz`` is 200 when every worker is ready and no drain is under
  way; ``/status`` lists the workers (pid, ready, restarts, last exit code);
* stops (and exits 2) when a worker exits with 2 — a bad configuration, such as a listen address
  it cannot bind — before the pool was first all ready: every restart would fail the same way
  (later, a worker that rereads a file being edited is restarted like any other);
* restarts a worker that exits otherwise while not stopping, with a back-off (1 s doubling to 30 s; reset
  after a worker has run for 60 s), marks its metrics dead and folds its counter and histogram
  files into one archive file per type (``merge_dead_worker_files``), so the metrics folder holds
  the live workers' files plus at most one archive per type however often workers restart;
* forwards SIGHUP (reload) to every *ready* worker (a worker still starting has no handler yet and
  would die of it; it gets the SIGHUP once it reports ``READY=1``) and SIGTERM (drain) to every
  running worker; a second SIGTERM/SIGINT is forwarded too (the workers then force-close). It tells
  systemd ``READY=1`` once all workers are ready and ``STOPPING=1`` when the drain starts;
  logs a status line of its own on SIGUSR1 (not forwarded);
* stops once no worker process runs (workers that were dead, waiting out their back-off, are not
  restarted), or ``drain_timeout`` (the longer of the start and the current file's value: workers
  reload it) + ``STOP_MARGIN`` seconds after the stop signal, killing the workers still running
  then; and exits 2 after a worker's configuration error, else with the worst worker exit code
  (``pool_exit_code``: 0 < 3 < 1 < 4, where anything but 0, 3 and 4 — a worker that had died or
  had to be killed — counts as 1).
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
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.mmap_dict import MmapedDict

from atls_proxy import __version__
from atls_proxy.errors import ConfigError
from atls_proxy.ops import systemd
from atls_proxy.ops.admin import AdminServer
from atls_proxy.ops.config import MAX_UNIX_PATH_BYTES, flag_overrides, load_config
from atls_proxy.ops.metrics import (
    mark_worker_dead,
    multiprocess_exposition,
    prepare_multiprocess_dir,
)
from atls_proxy.ops.runtime import warn_if_admin_exposed

log = logging.getLogger("atls_proxy")

# "fd:name,fd:name": the listening sockets a worker inherits from the supervisor.
WORKER_FDS_ENV = "ATLS_PROXY_WORKER_FDS"
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
STABLE_AFTER = 60.0
# A worker's exit code for a bad configuration or usage (cli.py's table): not restarted.
EXIT_CONFIG = 2
MAX_NOTIFY_DATAGRAM = 4096
# Seconds the supervisor waits beyond drain_timeout for its workers to exit before it kills them
# (a worker closes what is left at drain_timeout by itself). 30 + 10 s stays inside systemd's
# TimeoutStopSec=45 of the shipped unit.
STOP_MARGIN = 10.0
# prometheus multiprocess file types whose values are plain sums over processes (gauges are not:
# their files are per mode, and mark_worker_dead removes the live* ones).
SUMMED_TYPES = ("counter", "histogram", "summary")
ARCHIVE_PID = "archive"  # counter_archive.db: the summed files of every dead worker
# Where the notify socket goes when the temporary folder's path is too long for AF_UNIX.
SHORT_TMP = "/tmp"


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
    spawning: bool = False  # between the decision to start it and ``proc`` being set
    hup_pending: bool = False  # a SIGHUP arrived while it was starting: send it once ready

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        """A worker process exists (or is being created) and has not exited."""
        return self.spawning or (self.proc is not None and self.proc.returncode is None)

    def exit_code(self) -> int | None:
        """Its last exit code, including an exit the watcher task has not processed yet."""
        if self.proc is not None and self.proc.returncode is not None:
            return self.proc.returncode
        return self.last_exit


def merge_dead_worker_files(pid: int, path: str | os.PathLike[str]) -> None:
    """Fold a dead worker's counter/histogram/summary files into ``<type>_archive.db``.

    Their values are plain sums over processes (for histograms each bucket file entry is
    per-bucket, made cumulative only at collection), so adding the dead worker's entries, key by
    key, to the archive keeps every merged total exactly as it was, while the folder stops growing
    with every restart. The archive is written beside under a name that does not end in ``.db``;
    the dead file is renamed off ``*.db``, the archive renamed over the old one, and the renamed
    dead file removed (so a failure never leaves its counts in two collected files); the caller
    must not run a
    collection in between (the supervisor holds ``Supervisor._metrics_lock``). A file that cannot
    be read is left alone (it would break the collection anyway) and logged.
    """
    folder = Path(path)
    for typ in SUMMED_TYPES:
        dead = folder / f"{typ}_{pid}.db"
        if not dead.exists():
            continue
        archive = folder / f"{typ}_{ARCHIVE_PID}.db"
        totals: dict[str, tuple[float, float]] = {}
        try:
            for f in (archive, dead):
                if not f.exists():
                    continue
                entries = MmapedDict.read_all_values_from_file(str(f))  # type: ignore[no-untyped-call]
                for key, value, stamp, _ in entries:
                    old, old_stamp = totals.get(key, (0.0, 0.0))
                    totals[key] = (old + value, max(old_stamp, stamp))
            tmp = folder / f"{typ}_{ARCHIVE_PID}.db.tmp"
            tmp.unlink(missing_ok=True)
            out = MmapedDict(str(tmp))  # type: ignore[no-untyped-call]
            try:
                for key, (value, stamp) in totals.items():
                    out.write_value(key, value, stamp)  # type: ignore[no-untyped-call]
            finally:
                out.close()  # type: ignore[no-untyped-call]
            # The dead file leaves the collection (renamed off *.db) before the archive that now
            # holds its counts enters it: whatever fails from here, no scrape counts them twice.
            staged = dead.with_name(dead.name + ".merging")
            os.replace(dead, staged)
            try:
                os.replace(tmp, archive)
            except OSError:
                os.replace(staged, dead)  # the archive is unchanged: the dead file counts again
                raise
            staged.unlink(missing_ok=True)
        except (OSError, RuntimeError, ValueError, struct.error):
            log.warning("could not merge the metrics file %s into %s", dead, archive, exc_info=True)


def worker_argv(args: argparse.Namespace, role: str) -> list[str]:
    """The command line a worker runs: the supervisor's own, without --workers and --admin."""
    argv = [sys.executable, "-m", "atls_proxy", "serve" if role == "server" else "connect"]
    argv += ["--config", str(args.config)]
    flags = {f"--{name}": value for name, value in flag_overrides(args, role).items()}
    del flags["--admin"]
    flags |= {"--log-level": args.log_level, "--log-format": args.log_format}
    for flag, value in flags.items():
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
        # A worker exited with 2 (bad configuration, e.g. a listen address it cannot bind): a
        # restart would fail the same way, so the supervisor stops and exits 2 too.
        self.config_failed = False
        self._stop = asyncio.Event()
        self.started_at = time.time()
        self.tmp = Path(tempfile.mkdtemp(prefix="atls-proxy-workers-"))
        self.metrics_dir = self.tmp / "metrics"
        prepare_multiprocess_dir(self.metrics_dir)
        self.notify_path = self.tmp / "notify.sock"  # moved by _bind_notify if too long
        self._notify_dir: Path | None = None  # its own folder then
        self.systemd_notify = os.environ.get("NOTIFY_SOCKET")
        self.inherited = systemd.listen_fds()
        self.admin: AdminServer | None = None
        self._all_ready_sent = False
        self._done = asyncio.Event()
        # Held while merging a dead worker's metric files and while collecting /metrics, so a
        # scrape never sees the archive and the dead file at once (or neither).
        self._metrics_lock = threading.Lock()

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

    def _metrics(self) -> tuple[bytes, str]:
        with self._metrics_lock:
            return multiprocess_exposition(self.metrics_dir)

    async def _drain_timeout(self) -> float:
        """The longest ``drain_timeout`` a worker may be using: the workers reload it (SIGHUP,
        ``reload_interval``) while this process keeps the configuration it started with, so the
        file is read again (best effort: on any failure the start value alone counts) and the
        larger of the two is used — a worker whose reload failed keeps the older value."""
        start = float(self.cfg.ops.drain_timeout)

        def reread() -> float:
            overrides = flag_overrides(self.args, self.role)
            return float(load_config(self.role, self.args.config, overrides).ops.drain_timeout)

        try:
            now = await asyncio.wait_for(asyncio.to_thread(reread), 5.0)
        except Exception:  # best effort: the start value stands
            return start
        return max(start, now)

    def _check_done(self) -> None:
        """Stopping and no worker process left: ``run`` may finish. Called by the stop handler and
        by every watcher that ends because of the stop (a worker exited, or a back-off ended)."""
        if self.stopping and not any(w.running for w in self.workers):
            self._done.set()

    async def _spawn(self, w: Worker) -> None:
        w.ready = False
        w.hup_pending = False  # the new process reads the files as they are now
        w.started = time.monotonic()
        w.spawning = True
        try:
            w.proc = await asyncio.create_subprocess_exec(
                *worker_argv(self.args, self.role), env=self._env(), pass_fds=self._fds()
            )
        finally:
            w.spawning = False
        log.info("worker %d started pid=%d", w.index, w.proc.pid, extra={"event": "worker"})
        w.waiter = asyncio.ensure_future(self._watch(w))
        if self.stopping:
            # The stop signal came while the process was being created: it missed the SIGTERM.
            # It has no handler yet, so this ends it; its watcher then completes the stop.
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGTERM)

    async def _watch(self, w: Worker) -> None:
        assert w.proc is not None
        code = await w.proc.wait()
        pid = w.proc.pid
        w.ready, w.last_exit = False, code
        with self._metrics_lock:
            mark_worker_dead(pid, self.metrics_dir)
            merge_dead_worker_files(pid, self.metrics_dir)
        if self.stopping:
            log.info("worker %d (pid %d) exited with %d", w.index, pid, code)
            self._check_done()
            return
        if code == EXIT_CONFIG and not self._all_ready_sent:
            # At start (the pool never was all ready) a configuration error is the operator's
            # to fix: restarting would fail the same way. Later, a worker restarted while its
            # file is being edited may read it broken: that one is retried with back-off while
            # the others keep serving (a reload keeps their state the same way).
            log.error(
                "worker %d (pid %d) exited with %d (bad configuration; its log says why): "
                "stopping, a restart would fail the same way",
                w.index,
                pid,
                code,
                extra={"event": "worker", "result": "exited", "code": code},
            )
            self.config_failed = True
            self._begin_stop()
            self._check_done()
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
        while not self.stopping:
            try:
                await self._spawn(w)
                w.restarts += 1
                break
            except Exception as exc:
                # fork/exec failed (EAGAIN, ENOMEM, EMFILE on a host under pressure; with the
                # stdlib loop, also a child watcher's thread that could not start): the slot must
                # not stay empty for good; the same back-off, doubling, then again.
                delay, w.backoff = w.backoff, min(BACKOFF_MAX, w.backoff * 2)
                log.error(
                    "worker %d could not be started (%s); retrying in %.0f s",
                    w.index,
                    exc,
                    delay,
                    extra={"event": "worker", "result": "spawn_failed"},
                )
                await asyncio.sleep(delay)
        # A stop during the back-off: not restarted, and this may have been the last worker.
        self._check_done()

    def _begin_stop(self) -> None:
        """The drain: a stop signal, or a worker's configuration error. Idempotent."""
        if self.stopping:
            return
        self.stopping = True
        self._notify_systemd("STOPPING=1", "STATUS=draining workers")
        self._stop.set()
        self._signal_workers(signal.SIGTERM)

    def _signal_workers(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    def _forward_hup(self) -> None:
        """SIGHUP to the workers that reported ``READY=1``. A worker still starting has not
        installed its handlers, and SIGHUP's default action would kill it (and double its
        back-off). A worker started after this SIGHUP reads the files as they are now, so it
        misses nothing; but one already starting may have read them before they changed, so it is
        marked and gets its SIGHUP when it reports ``READY=1`` (``_on_notify``): one reload more
        at worst, never one less. A worker that is dead (in its back-off) reads them at restart."""
        for w in self.workers:
            if w.proc is None or w.proc.returncode is not None:
                continue
            if w.ready:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGHUP)
            else:
                w.hup_pending = True

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
            if w.hup_pending and w.proc is not None and w.proc.returncode is None:
                w.hup_pending = False  # its handlers are installed before it reports READY=1
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGHUP)
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

    def _log_status(self) -> None:
        """SIGUSR1: one status line (``systemctl kill -s SIGUSR1`` signals the workers too, and
        each logs its own)."""
        ready = sum(w.ready for w in self.workers)
        restarts = sum(w.restarts for w in self.workers)
        pids = ",".join(str(w.pid) if w.pid is not None else "-" for w in self.workers)
        log.info(
            "status workers=%d ready=%d restarts=%d draining=%d pids=%s",
            self.n,
            ready,
            restarts,
            self.stopping,
            pids,
        )

    # -- main ------------------------------------------------------------------------------------

    def _bind_notify(self) -> socket.socket:
        """The workers' notify socket, bound at ``notify_path``. Under a long ``$TMPDIR`` that
        path does not fit an AF_UNIX address (``MAX_UNIX_PATH_BYTES``): the socket then goes to
        a private folder of its own under ``SHORT_TMP`` (mode 0700, like the temporary folder:
        only this user can send to it), removed with the temporary folder."""
        if len(os.fsencode(self.notify_path)) > MAX_UNIX_PATH_BYTES:
            too_long = self.notify_path
            try:
                self._notify_dir = Path(tempfile.mkdtemp(prefix="atls-proxy-", dir=SHORT_TMP))
            except OSError as exc:
                raise ConfigError(
                    "TMPDIR",
                    f"the workers' notify socket {too_long} is longer than "
                    f"{MAX_UNIX_PATH_BYTES} bytes and no folder could be made in {SHORT_TMP} "
                    f"instead ({exc.strerror or exc}): use a shorter TMPDIR",
                ) from None
            self.notify_path = self._notify_dir / "notify.sock"
            log.debug("the notify socket is %s (%s is too long)", self.notify_path, too_long)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(self.notify_path))
        except BaseException:
            sock.close()
            raise
        return sock

    def _remove_folders(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self._notify_dir is not None:
            shutil.rmtree(self._notify_dir, ignore_errors=True)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            sock = self._bind_notify()
        except BaseException:
            self._remove_folders()
            raise
        sock.setblocking(False)

        def readable() -> None:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while True:
                    self._on_notify(sock.recv(MAX_NOTIFY_DATAGRAM))

        def on_stop() -> None:
            self.signals += 1
            if self.signals == 1:
                self._begin_stop()
            else:
                self._signal_workers(signal.SIGTERM)
            self._check_done()  # every worker may be dead already (waiting out its back-off)

        # From here on every exit path runs the clean-up below (folders removed included).
        try:
            # Handlers first: a stop signal during start-up then stops the workers started so far.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_stop)
            loop.add_signal_handler(signal.SIGHUP, self._forward_hup)
            loop.add_signal_handler(signal.SIGUSR1, self._log_status)  # its default action kills
            loop.add_reader(sock.fileno(), readable)
            admin_addr = self.cfg.ops.admin
            inherited_admin = self.inherited.pop("admin", [])
            if admin_addr is not None or inherited_admin:
                warn_if_admin_exposed(admin_addr, inherited_admin)
                self.admin = AdminServer(
                    admin_addr.host if admin_addr else "",
                    admin_addr.port if admin_addr else 0,
                    ready=self.ready,
                    status=self.status,
                    metrics=self._metrics,
                    sock=systemd.only_socket(inherited_admin, "admin"),
                )
            if self.admin is not None:
                try:
                    await self.admin.start()  # it logs where it listens
                except ConfigError as exc:
                    # As a single process says it (ops/runtime.py): the flag, when it set it.
                    if exc.key == "admin.listen" and getattr(self.args, "admin", None):
                        raise ConfigError("--admin", exc.message) from None
                    raise
            for w in self.workers:
                if self.stopping:
                    break
                await self._spawn(w)
            await self._stop.wait()
            self._check_done()
            if not self._done.is_set():
                limit = await self._drain_timeout() + STOP_MARGIN
                try:
                    await asyncio.wait_for(self._done.wait(), limit)
                except TimeoutError:
                    left = [w.index for w in self.workers if w.running]
                    log.error(
                        "worker(s) %s still running %.0f s after the stop signal; killing them",
                        ", ".join(map(str, left)),
                        limit,
                        extra={"event": "worker", "result": "killed"},
                    )
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
            self._remove_folders()
            # Last: a signal during the clean-up above is still handled, not the default action
            # that would end the process before the folders are removed.
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
        if self.config_failed:
            return EXIT_CONFIG
        return pool_exit_code([w.exit_code() for w in self.workers], forced=self.signals > 1)


def pool_exit_code(codes: list[int | None], *, forced: bool) -> int:
    """The supervisor's exit code from its workers' last ones: the worst, ranked 0 < 3 (a drain
    cut connections) < 1 (a worker died, was killed or failed) < 4 (a forced stop). A killed
    worker is never hidden behind another's 3, which ``SuccessExitStatus=3`` reports as clean."""
    if forced or any(c == 4 for c in codes):
        return 4
    if any(c not in (0, 3) for c in codes):
        return 1
    return 3 if any(c == 3 for c in codes) else 0


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
