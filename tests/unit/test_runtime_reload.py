"""The runtime's reload watcher and socket choice, with a fake service (ops/runtime.py).

* A reload the watcher started that fails is tried again without another change (next interval,
  then 2, 4, ... intervals), an unchanged error is logged once, and a later success (SIGHUP)
  ends the retries.
* The watcher's fingerprint notices a change of permissions alone (change time, mode).
* Socket activation: the only inherited socket not named ``admin`` is the attested listener,
  whatever its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from atls_proxy.errors import ConfigError
from atls_proxy.ops import runtime
from atls_proxy.ops.config import OpsConfig
from atls_proxy.ops.metrics import Metrics
from atls_proxy.ops.runtime import Runtime, Service, _stat_fingerprint

INTERVAL = 0.02  # the watcher's period in these tests (the configuration allows >= 1 s)


class FakeService:
    """Counts the watcher's ticks (one listing per tick) and the reloads, failing as told."""

    role = "server"

    def __init__(self, files: list[Path], outcomes: list[Exception | None]) -> None:
        self.files = files
        self.outcomes = outcomes  # one per reload; the last one repeats
        self.ticks = 0
        self.reload_ticks: list[int] = []  # the tick of each reload
        self.ops = OpsConfig(reload_interval=INTERVAL)

    def watched_files(self) -> list[Path]:
        self.ticks += 1
        return self.files

    async def reload(self) -> list[str]:
        outcome = self.outcomes[min(len(self.reload_ticks), len(self.outcomes) - 1)]
        self.reload_ticks.append(self.ticks)
        if outcome is not None:
            raise outcome
        return []

    def ops_config(self) -> OpsConfig:
        return self.ops


def _runtime(service: FakeService, config: Path) -> Runtime:
    return Runtime(
        cast(Service, cast(Any, service)),
        OpsConfig(reload_interval=INTERVAL),
        Metrics(),
        config_path=config,
    )


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(INTERVAL / 4)


@contextlib.asynccontextmanager
async def _watching(rt: Runtime) -> Any:
    task = asyncio.ensure_future(rt._watch_files())
    try:
        await asyncio.sleep(INTERVAL * 2)  # the watcher has its first fingerprint
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture(autouse=True)
def _no_notify(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    # Directly on the package logger: a test before this one may have stopped its propagation.
    logger = logging.getLogger("atls_proxy")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    caplog.handler.setLevel(logging.DEBUG)
    direct = not logger.propagate
    if direct:
        logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        if direct:
            logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)


# --- retry of a failed reload -------------------------------------------------------------------


async def test_a_failed_reload_on_change_is_retried_without_another_change(
    tmp_path: Path,
) -> None:
    key = tmp_path / "server-key.pem"
    key.write_text("old key")
    not_yet = ConfigError("server.private_key", f"file not readable by this process: {key}")
    svc = FakeService([key], [not_yet, None])
    rt = _runtime(svc, key)
    async with _watching(rt):
        key.write_text("the renewed key")  # the change; its reload fails
        await _until(lambda: rt.reload_state.last_ok is True)  # the retry, no change needed
        assert len(svc.reload_ticks) == 2
        ticks = svc.ticks
        await _until(lambda: svc.ticks >= ticks + 5)
    assert len(svc.reload_ticks) == 2  # loaded: no more reloads without a change
    assert rt.reload_state.generation == 2 and rt.reload_state.last_error is None


async def test_retries_back_off_and_an_unchanged_error_is_logged_once(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "server-key.pem"
    key.write_text("old key")
    tee = ConfigError("attester", "TEE busy")
    other = ConfigError("attester", "TEE gone")
    svc = FakeService([key], [tee, tee, tee, tee, other, None])
    rt = _runtime(svc, key)
    async with _watching(rt):
        key.write_text("the renewed key")
        await _until(lambda: "reloaded (" in logs.text, timeout=20)
    # After the change's reload (tick t), retries at t+1, t+1+2, t+1+2+4, ... intervals.
    gaps = [b - a for a, b in zip(svc.reload_ticks, svc.reload_ticks[1:], strict=False)]
    assert gaps == [1, 2, 4, 8, 16]
    failures = [r for r in logs.records if r.getMessage().startswith("reload failed")]
    assert [r.levelno for r in failures] == [
        logging.ERROR,  # TEE busy
        logging.DEBUG,  # TEE busy again (retry 1)
        logging.DEBUG,  # retry 2
        logging.DEBUG,  # retry 3
        logging.ERROR,  # TEE gone: a new error is news
    ]
    assert "(file change, retry 1) again" in failures[1].getMessage()
    assert [getattr(r, "retry", None) for r in failures] == [0, 1, 2, 3, 4]
    assert any("reloaded (file change, retry 5)" in r.getMessage() for r in logs.records)


async def test_retries_are_at_most_retry_backoff_max_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The back-off stops doubling at RETRY_BACKOFF_MAX (5 minutes; here 3.5 intervals: 3)."""
    monkeypatch.setattr(runtime, "RETRY_BACKOFF_MAX", INTERVAL * 3.5)
    key = tmp_path / "server-key.pem"
    key.write_text("old key")
    busy = ConfigError("attester", "TEE busy")
    svc = FakeService([key], [busy, busy, busy, busy, busy, None])
    rt = _runtime(svc, key)
    async with _watching(rt):
        key.write_text("the renewed key")
        await _until(lambda: rt.reload_state.last_ok is True, timeout=20)
    gaps = [b - a for a, b in zip(svc.reload_ticks, svc.reload_ticks[1:], strict=False)]
    assert gaps == [1, 2, 3, 3, 3]


async def test_a_sighup_that_succeeds_ends_the_retries(tmp_path: Path) -> None:
    key = tmp_path / "server-key.pem"
    key.write_text("old key")
    svc = FakeService([key], [ConfigError("server.private_key", "not readable"), None])
    rt = _runtime(svc, key)
    # Without the SIGHUP, the first retry would come at the next tick.
    async with _watching(rt):
        key.write_text("the renewed key")
        await _until(lambda: len(svc.reload_ticks) == 1)
        assert await rt.reload("SIGHUP")
        ticks = svc.ticks
        await _until(lambda: svc.ticks >= ticks + 5)
    assert len(svc.reload_ticks) == 2  # the watcher did not reload what SIGHUP loaded


async def test_a_new_change_during_retries_is_reloaded_at_once(tmp_path: Path) -> None:
    key = tmp_path / "server-key.pem"
    key.write_text("old key")
    bad = ConfigError("server.private_key", "does not match the certificate")
    svc = FakeService([key], [bad, bad, bad, bad, None])
    rt = _runtime(svc, key)
    async with _watching(rt):
        key.write_text("a wrong key")
        await _until(lambda: len(svc.reload_ticks) == 4)  # back-off: the next in 8 intervals
        key.write_text("the right key, at last")
        await _until(lambda: rt.reload_state.last_ok is True)
    assert len(svc.reload_ticks) == 5 and svc.reload_ticks[4] - svc.reload_ticks[3] < 8


# --- the fingerprint ----------------------------------------------------------------------------


def test_a_permission_change_alone_changes_the_fingerprint(tmp_path: Path) -> None:
    key = tmp_path / "server-key.pem"
    key.write_text("renewed")
    key.chmod(0o000)
    before = _stat_fingerprint([key])
    key.chmod(0o640)  # made readable: the contents, size and inode are the same
    assert _stat_fingerprint([key]) != before


def test_a_change_time_alone_changes_the_fingerprint(tmp_path: Path) -> None:
    key = tmp_path / "server-key.pem"
    key.write_text("renewed")
    before = _stat_fingerprint([key])
    st = key.stat()
    deadline = time.monotonic() + 5
    while key.stat().st_ctime_ns == st.st_ctime_ns and time.monotonic() < deadline:
        time.sleep(0.01)
        os.chown(key, st.st_uid, st.st_gid)  # same owner: only the change time moves
    assert key.stat().st_ctime_ns != st.st_ctime_ns
    assert (key.stat().st_mode, key.stat().st_uid) == (st.st_mode, st.st_uid)
    assert _stat_fingerprint([key]) != before


# --- socket activation: which inherited socket is the attested listener -------------------------


@contextlib.contextmanager
def _with_sockets(
    tmp_path: Path, names: list[str]
) -> Iterator[tuple[Runtime, list[socket.socket]]]:
    """A Runtime that inherited sockets of ``names``; they are closed after the block."""
    socks = [socket.socket() for _ in names]
    inherited: dict[str, list[socket.socket]] = {}
    for name, s in zip(names, socks, strict=True):
        inherited.setdefault(name, []).append(s)
    rt = Runtime(
        cast(Service, cast(Any, FakeService([], [None]))),
        OpsConfig(),
        Metrics(),
        config_path=tmp_path / "serve.toml",
        inherited=inherited,
    )
    try:
        yield rt, socks
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize(
    ("names", "chosen"),
    [
        (["attested"], 0),
        (["unknown"], 0),
        (["atls-proxy.socket"], 0),  # systemd's default FileDescriptorName: the unit's name
        (["admin", "atls-proxy.socket"], 1),
        (["web.socket", "admin"], 0),
        (["other.socket", "attested", "admin"], 1),
        (["admin"], None),  # only the admin socket: the attested listener binds its address
        ([], None),
    ],
)
def test_the_attested_socket(tmp_path: Path, names: list[str], chosen: int | None) -> None:
    with _with_sockets(tmp_path, names) as (rt, socks):
        got = rt._attested_socket()
        assert got is (None if chosen is None else socks[chosen])


def test_several_unnamed_sockets_are_a_configuration_error(tmp_path: Path) -> None:
    with (
        _with_sockets(tmp_path, ["a.socket", "b.socket", "admin"]) as (rt, _),
        pytest.raises(ConfigError, match=r"a\.socket, b\.socket.*FileDescriptorName"),
    ):
        rt._attested_socket()


@pytest.mark.parametrize("name", ["unknown", "attested"])
def test_several_sockets_of_the_one_name_are_a_configuration_error(
    tmp_path: Path, name: str
) -> None:
    # Without $LISTEN_FDNAMES every socket is "unknown": serving the first (perhaps the admin
    # port) left the other listening and never served.
    with (
        _with_sockets(tmp_path, [name, name]) as (rt, _),
        pytest.raises(ConfigError, match=rf"2 inherited sockets named '{name}'"),
    ):
        rt._attested_socket()


async def test_readyz_says_when_the_cached_tiers_epoch_is_not_current() -> None:
    # Not only "never quoted": an epoch that expired (the TEE failed past its refresh) too.
    from cryptography.hazmat.primitives.asymmetric import ec

    from atls_proxy.attest.engine import EvidenceEngine, Tier
    from atls_proxy.attest.software import SoftwareAttester

    now = [1_000_000.0]
    key = ec.generate_private_key(ec.SECP256R1())
    eng = EvidenceEngine(
        SoftwareAttester(key, {}, clock=lambda: now[0]),
        Tier.CACHED,
        aik_key=key,
        epoch_seconds=100,
        clock=lambda: now[0],
    )
    svc = runtime.ServerService.__new__(runtime.ServerService)
    svc.server = cast(Any, type("S", (), {"engine": eng})())
    assert svc.not_ready() == ["no current evidence epoch (sha256, sha384)"]  # none quoted yet
    await eng.start()
    assert svc.not_ready() == []
    now[0] += 99
    assert svc.not_ready() == []
    now[0] += 2  # expired, nothing refreshed it
    assert svc.not_ready() == ["no current evidence epoch (sha256, sha384)"]
    # One suite hash's epoch is enough to be not ready: clients of that suite would fail.
    await eng.prepare_key(key)  # fresh epochs for both
    assert svc.not_ready() == []
    sha384 = next(k for k in eng._epochs if k[0] == "sha384")
    eng._epochs[sha384].expires = int(now[0])  # only the SHA-384 one expired
    assert svc.not_ready() == ["no current evidence epoch (sha384)"]
    assert eng.epoch_age() == now[0] - eng._epochs[sha384].start  # the older of the two
    await eng.close()


@pytest.mark.parametrize(
    ("bound", "configured", "warned"),
    [
        ("0.0.0.0", "127.0.0.1", True),  # the inherited socket is what listens
        ("127.0.0.1", "0.0.0.0", False),
    ],
)
async def test_the_admin_warning_looks_at_an_inherited_socket(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    bound: str,
    configured: str,
    warned: bool,
) -> None:
    class Quiet:
        def __init__(self, *a: object, **k: object) -> None:
            pass

        async def start(self) -> None:
            pass

    monkeypatch.setattr(runtime, "AdminServer", Quiet)
    sock = socket.socket()
    sock.bind((bound, 0))
    try:
        rt = Runtime(
            cast(Service, cast(Any, FakeService([], [None]))),
            OpsConfig(admin=runtime.Address("tcp", configured, 9901)),
            Metrics(),
            config_path=tmp_path / "serve.toml",
            inherited={"admin": [sock]},
        )
        with caplog.at_level(logging.WARNING):
            await rt._start_admin()
    finally:
        sock.close()
    assert ("reachable from other hosts" in caplog.text) is warned, caplog.text


async def test_two_inherited_admin_sockets_are_a_configuration_error(tmp_path: Path) -> None:
    with (
        _with_sockets(tmp_path, ["attested", "admin", "admin"]) as (rt, _),
        pytest.raises(ConfigError, match="2 inherited sockets named 'admin'"),
    ):
        await rt._start_admin()
