"""The ``--workers`` supervisor (atls_proxy/ops/workers.py) without the proxy: its stop logic with
stand-in worker processes, SIGHUP forwarding, and the bound on dead workers' metrics files.
The real CLI with real workers is exercised in tests/integration/test_operations.py."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from atls_proxy.ops import metrics as mm
from atls_proxy.ops import workers as wk
from tests.unit.test_metrics import run_worker

# -- the supervisor with stand-in workers ------------------------------------------------------------


@pytest.fixture
def supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[wk.Supervisor]:
    """A Supervisor of 2 workers whose processes are ``sleep``-like Python one-liners (they never
    report READY=1). Its temporary folder goes under a short private folder, so that the notify
    socket stays in it (under a long one, such as pytest's tmp_path, the socket would move to a
    folder of its own under /tmp: tests/unit/test_ops_tidy.py); tmp_path is requested here only
    so that pytest picks its own base folder before ``tempfile.tempdir`` is patched."""
    short = tempfile.mkdtemp(prefix="atls-u-", dir="/tmp")
    monkeypatch.setattr(tempfile, "tempdir", short)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(
        wk, "worker_argv", lambda args, role: [sys.executable, "-c", "import time; time.sleep(60)"]
    )
    args = argparse.Namespace(workers=2, config=Path(short) / "serve.toml")
    cfg = SimpleNamespace(ops=SimpleNamespace(admin=None, drain_timeout=1.0))
    try:
        yield wk.Supervisor(args, "server", cfg)
    finally:
        shutil.rmtree(short, ignore_errors=True)


async def _until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def handlers_installed() -> bool:
    return signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN, None)


def test_a_failed_restart_is_retried(
    supervisor: wk.Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker died and its restart's fork failed once (EAGAIN on a host under pressure): the
    supervisor tries again after a back-off instead of leaving the slot empty for good."""
    sup = supervisor
    real = asyncio.create_subprocess_exec
    calls = {"n": 0}

    async def flaky(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:  # the two starts, then the first restart
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return await real(*a, **k)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", flaky)

    async def main() -> tuple[bool, int, int]:
        task = asyncio.ensure_future(sup.run())
        await _until(lambda: all(w.proc is not None for w in sup.workers))
        await _until(handlers_installed)
        w0 = sup.workers[0]
        w0.backoff = 0.05
        assert w0.proc is not None
        old = w0.proc.pid
        os.kill(old, signal.SIGKILL)
        await _until(lambda: w0.running and w0.proc is not None and w0.proc.pid != old)
        state = (w0.running, w0.restarts, calls["n"])
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, 10)
        return state

    running, restarts, spawns = asyncio.run(main())
    assert running and restarts == 1 and spawns == 4  # one restart; the failed try not counted


def test_sigterm_while_every_worker_waits_out_its_backoff(supervisor: wk.Supervisor) -> None:
    """Both workers dead (in a long back-off) when SIGTERM arrives: the supervisor must exit at
    once, not wait for a worker exit that will never come."""
    sup = supervisor

    async def main() -> tuple[int, float]:
        task = asyncio.ensure_future(sup.run())
        await _until(lambda: all(w.proc is not None for w in sup.workers))
        await _until(handlers_installed)  # never SIGTERM the test runner itself
        for w in sup.workers:
            w.backoff = 30.0  # the next restart is far away
            assert w.proc is not None
            os.kill(w.proc.pid, signal.SIGKILL)
        await _until(lambda: all(w.last_exit == -signal.SIGKILL for w in sup.workers))
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's own handler (this event loop)
        code = await asyncio.wait_for(task, 5.0)
        return code, time.monotonic() - t0

    code, took = asyncio.run(main())
    assert took < 2.0
    assert code == 1  # the workers had died: a runtime failure (docs/OPERATIONS.md, Workers)
    assert not sup.tmp.exists()
    assert [w.restarts for w in sup.workers] == [0, 0]  # not restarted after the stop


def test_stop_kills_a_worker_that_outlives_drain_timeout(
    supervisor: wk.Supervisor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that ignores SIGTERM is killed drain_timeout + STOP_MARGIN after the signal."""
    monkeypatch.setattr(wk, "STOP_MARGIN", 0.5)
    monkeypatch.setattr(
        wk,
        "worker_argv",
        lambda args, role: [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('up', flush=True); time.sleep(60)",
        ],
    )
    sup = supervisor

    async def main() -> tuple[int, float]:
        task = asyncio.ensure_future(sup.run())
        await _until(lambda: all(w.proc is not None for w in sup.workers))
        await _until(handlers_installed)
        await asyncio.sleep(1.0)  # let them ignore SIGTERM
        t0 = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        code = await asyncio.wait_for(task, 10.0)
        return code, time.monotonic() - t0

    code, took = asyncio.run(main())
    assert 1.4 <= took < 5.0  # drain_timeout (1 s) + STOP_MARGIN (0.5 s)
    assert code == 1
    assert [w.exit_code() for w in sup.workers] == [-signal.SIGKILL] * 2
    assert not sup.tmp.exists()


def test_stop_bound_uses_the_longest_drain_timeout(
    supervisor: wk.Supervisor, tmp_path: Path
) -> None:
    """Workers reload drain_timeout; the supervisor reads the file again at the stop, so a raised
    value is not cut short, while a lowered one or an unreadable file leaves the start value."""
    from atls_proxy.ops.devinit import dev_init

    dev_init(tmp_path / "dev")
    base = (tmp_path / "dev" / "serve.toml").read_text()
    cfg = tmp_path / "dev" / "serve-drain.toml"
    supervisor.args.config = cfg  # the start value is 1 s (the fixture's cfg)
    for in_file, want in ((7, 7.0), (0.5, 1.0)):
        cfg.write_text(base.replace("[server]\n", f"[server]\ndrain_timeout = {in_file}\n", 1))
        assert asyncio.run(supervisor._drain_timeout()) == want
    cfg.write_text("not toml [")
    assert asyncio.run(supervisor._drain_timeout()) == 1.0


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.signals: list[int] = []

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


def test_sighup_only_to_ready_workers_and_later_to_starting_ones(
    supervisor: wk.Supervisor,
) -> None:
    sup = supervisor
    ready, starting = FakeProc(101), FakeProc(102)
    sup.workers[0].proc, sup.workers[0].ready = ready, True  # type: ignore[assignment]
    sup.workers[1].proc = starting  # type: ignore[assignment]
    sup._forward_hup()
    assert ready.signals == [signal.SIGHUP]
    assert starting.signals == []  # it has no handler yet: SIGHUP would kill it
    sup._on_notify(b"READY=1\nWORKER_PID=102\n")
    assert starting.signals == [signal.SIGHUP]  # once ready, the reload it missed
    sup._on_notify(b"RELOADING=1\nWORKER_PID=102\n")
    sup._on_notify(b"READY=1\nWORKER_PID=102\n")
    assert starting.signals == [signal.SIGHUP]  # only once

    dead = FakeProc(103)
    dead.returncode = -9
    sup.workers[1].proc, sup.workers[1].ready = dead, False  # type: ignore[assignment]
    sup._forward_hup()
    assert dead.signals == [] and not sup.workers[1].hup_pending  # it reads the files at restart


# -- dead workers' metrics files -------------------------------------------------------------------


def summed_series(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The counter and histogram series of the merged exposition."""
    body, _ = mm.multiprocess_exposition(path)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        if fam.type in ("counter", "histogram")
        for s in fam.samples
    }


def test_dead_workers_files_are_merged_totals_kept_folder_bounded(tmp_path: Path) -> None:
    d = tmp_path / "prom"
    mm.prepare_multiprocess_dir(d)
    pid1 = run_worker(d, 1)
    pid2 = run_worker(d, 2)
    first = {f.name for f in d.iterdir()}
    assert f"counter_{pid1}.db" in first and f"histogram_{pid1}.db" in first
    per_worker = len([f for f in first if f.endswith(f"_{pid1}.db")])

    # 40 restarts of a worker like pid1 (its files copied under a new pid each time).
    for i in range(40):
        fake = 4_000_000 + i
        for f in list(d.glob(f"*_{pid1}.db")):
            shutil.copy(f, d / f.name.replace(str(pid1), str(fake)))
        before = summed_series(d)
        mm.mark_worker_dead(fake, d)
        wk.merge_dead_worker_files(fake, d)
        # nothing lost, nothing double-counted (float sums in another order: approx)
        assert summed_series(d) == pytest.approx(before)
        assert not list(d.glob(f"*_{fake}.db"))
        # the live workers' files and one archive per summed type, whatever i is
        assert len(list(d.iterdir())) <= 2 * per_worker + len(wk.SUMMED_TYPES)

    got = summed_series(d)
    assert got[("atls_proxy_connections_accepted_total", ())] == 1 + 2 + 40 * 1
    assert got[("atls_proxy_quote_batch_size_count", ())] == 2 + 40

    for pid in (pid1, pid2):
        before = summed_series(d)
        mm.mark_worker_dead(pid, d)
        wk.merge_dead_worker_files(pid, d)
        assert summed_series(d) == pytest.approx(before)
    assert {f.name for f in d.iterdir()} == {"counter_archive.db", "histogram_archive.db"}


@pytest.mark.parametrize("step", ["archive-replace", "dead-unlink"])
def test_a_merge_that_fails_midway_never_counts_a_dead_worker_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    d = tmp_path / "prom"
    mm.prepare_multiprocess_dir(d)
    pid = run_worker(d, 1)
    mm.mark_worker_dead(pid, d)
    before = summed_series(d)
    real_replace, real_unlink = os.replace, Path.unlink

    def replace(src: Any, dst: Any) -> None:
        if step == "archive-replace" and str(dst).endswith("_archive.db"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if step == "dead-unlink" and str(pid) in self.name:
            raise OSError(13, "Permission denied")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(wk.os, "replace", replace)
    monkeypatch.setattr(Path, "unlink", unlink)
    wk.merge_dead_worker_files(pid, d)  # logged, not raised
    # Its counts are collected once: from its own files, or from the archive only.
    assert summed_series(d) == pytest.approx(before)


# -- the supervisor's admin listener ---------------------------------------------------------------


class _AdminStarted(Exception):
    """Raised by the stand-in admin server's start: the run ends there, before any worker."""


class _FakeAdmin:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def start(self) -> None:
        raise _AdminStarted

    async def close(self) -> None:
        pass


def _warnings_of(
    supervisor: wk.Supervisor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> str:
    """Run the supervisor up to its admin server and return what it logged (warnings)."""
    monkeypatch.setattr(wk, "AdminServer", _FakeAdmin)
    # Directly on the package logger: a test before this one may have stopped its propagation.
    logger = logging.getLogger("atls_proxy")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="atls_proxy"), pytest.raises(_AdminStarted):
            asyncio.run(supervisor.run())
    finally:
        logger.removeHandler(caplog.handler)
    return caplog.text


@pytest.mark.parametrize(
    "host,warned", [("0.0.0.0", True), ("192.0.2.1", True), ("127.0.0.1", False), ("::1", False)]
)
def test_the_supervisor_warns_of_an_admin_address_other_hosts_reach(
    supervisor: wk.Supervisor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    host: str,
    warned: bool,
) -> None:
    """With --workers the supervisor serves the admin port: the same warning as one process."""
    from atls_proxy.ops.config import Address

    supervisor.cfg.ops.admin = Address("tcp", host, 9901)
    text = _warnings_of(supervisor, monkeypatch, caplog)
    want = f"admin listener on {Address('tcp', host, 9901)} is reachable from other hosts"
    assert (want in text) is warned, text
    assert not supervisor.tmp.exists()


@pytest.mark.parametrize(("bound", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_the_supervisors_warning_looks_at_an_inherited_admin_socket(
    supervisor: wk.Supervisor,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    bound: str,
    warned: bool,
) -> None:
    """A socket systemd passes is what listens, whatever address the configuration names."""
    import socket

    from atls_proxy.ops.config import Address

    supervisor.cfg.ops.admin = Address("tcp", "0.0.0.0" if bound != "0.0.0.0" else "127.0.0.1", 1)
    with socket.create_server((bound, 0)) as sock:
        supervisor.inherited["admin"] = [sock]
        text = _warnings_of(supervisor, monkeypatch, caplog)
    assert ("is reachable from other hosts" in text) is warned, text


@pytest.mark.parametrize(
    ("codes", "forced", "expected"),
    [
        ([0, 0], False, 0),
        ([0, 3], False, 3),
        ([3, -signal.SIGKILL], False, 1),  # a killed worker is not a drain timeout
        ([3, 1], False, 1),
        ([0, None], False, 1),  # never exited: killed at the deadline or never started
        ([1, 4], False, 4),
        ([0, 0], True, 4),  # a second stop signal
    ],
)
def test_the_pool_exit_code_is_the_worst(
    codes: list[int | None], forced: bool, expected: int
) -> None:
    assert wk.pool_exit_code(codes, forced=forced) == expected
