"""One place for the command-line overrides of a role's configuration (cli.py, ops/workers.py,
ops/runtime.py), server names with brackets, SIGUSR1 before the runtime's handlers are in place
(a worker being built, the ``--workers`` supervisor), and the supervisor's notify socket under a
long ``$TMPDIR``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from atls_proxy import cli
from atls_proxy.errors import ConfigError
from atls_proxy.ops import config as c
from atls_proxy.ops import runtime as rt
from atls_proxy.ops import workers as wk
from atls_proxy.ops.config import Address, OpsConfig
from atls_proxy.ops.devinit import dev_init
from atls_proxy.ops.metrics import Metrics


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dev") / "dev"
    dev_init(folder)
    return folder


@pytest.fixture
def no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's setup_logging replaces the root handlers (pytest's capture among them)."""
    from atls_proxy.ops import logs

    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)


def _without(text: str, key: str) -> str:
    out, n = re.subn(rf"^{key} = .*\n", "", text, count=1, flags=re.M)
    assert n == 1, key
    return out


async def _until(cond: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def _handler_installed(sig: int) -> bool:
    return signal.getsignal(sig) not in (signal.SIG_DFL, signal.SIG_IGN, None)


# -- 1. the overrides of each role, in one place -------------------------------------------------


def test_flag_overrides_per_role() -> None:
    args = argparse.Namespace(listen="127.0.0.1:1", backend="unix:/b", server="s:2", admin=None)
    assert c.flag_overrides(args, "server") == {
        "listen": "127.0.0.1:1",
        "backend": "unix:/b",
        "admin": None,
    }
    assert c.flag_overrides(args, "client") == {
        "listen": "127.0.0.1:1",
        "server": "s:2",
        "admin": None,
    }
    # A namespace without the flags (the supervisor's tests build such ones): all None.
    assert c.flag_overrides(argparse.Namespace(), "client") == dict.fromkeys(
        ("listen", "server", "admin")
    )


@pytest.mark.parametrize(
    ("role", "target", "log_format", "expected"),
    [
        (
            "server",
            {"backend": "unix:/run/app.sock"},
            "json",
            "serve --config /c.toml --listen 127.0.0.1:1 --backend unix:/run/app.sock "
            "--log-level info --log-format json",
        ),
        (
            "client",
            {"server": "127.0.0.1:2"},
            None,
            "connect --config /c.toml --listen 127.0.0.1:1 --server 127.0.0.1:2 --log-level info",
        ),
    ],
)
def test_worker_argv_passes_the_overrides_and_log_flags_but_admin(
    role: str, target: dict[str, str], log_format: str | None, expected: str
) -> None:
    args = argparse.Namespace(
        config="/c.toml",
        listen="127.0.0.1:1",
        admin="127.0.0.1:3",
        log_level="info",
        log_format=log_format,
        workers=4,
        **target,
    )
    assert wk.worker_argv(args, role)[1:] == ["-m", "atls_proxy", *expected.split()]


@pytest.mark.parametrize("role", ["server", "client"])
def test_the_supervisors_reread_honours_backend_and_server_overrides(
    dev: Path, tmp_path: Path, role: str
) -> None:
    """The file has no backend (serve) / server (connect): only the flag makes it load, so the
    drain_timeout in the file (7 s) counts only if the re-read passes the flag."""
    name, section, key, flag = (
        ("serve.toml", "server", "backend", "127.0.0.1:9")
        if role == "server"
        else ("connect.toml", "client", "server", "127.0.0.1:9")
    )
    text = _without((dev / name).read_text(), key)
    text = text.replace(f"[{section}]\n", f"[{section}]\ndrain_timeout = 7\n", 1)
    for f in dev.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    cfg_path = tmp_path / name
    cfg_path.write_text(text)
    load = c.load_server_config if role == "server" else c.load_client_config
    with pytest.raises(ConfigError):
        load(cfg_path)  # the flag is needed
    args = argparse.Namespace(workers=2, config=cfg_path, **{key: flag})
    start = SimpleNamespace(ops=SimpleNamespace(admin=None, drain_timeout=1.0))
    sup = wk.Supervisor(args, role, start)
    try:
        assert asyncio.run(sup._drain_timeout()) == 7.0
    finally:
        shutil.rmtree(sup.tmp, ignore_errors=True)


# -- 2. a listen address that cannot be bound ----------------------------------------------------


async def test_listen_turns_a_bind_failure_into_a_configuration_error() -> None:
    async def refused() -> list[tuple[str, int]]:
        raise OSError(errno.EADDRINUSE, "in use")

    addr = Address("tcp", host="127.0.0.1", port=1)
    with pytest.raises(ConfigError) as err:
        await rt._listen(refused(), None, "client.listen", addr)
    assert err.value.key == "client.listen"
    assert "cannot listen on 127.0.0.1:1" in err.value.message
    assert f"errno {errno.EADDRINUSE}" in err.value.message
    # An inherited socket's failure is no configuration error: raised as it is.
    with pytest.raises(OSError):
        await rt._listen(refused(), cast(Any, object()), "client.listen", addr)


@pytest.mark.parametrize("from_flag", [True, False])
async def test_client_service_names_what_set_a_taken_port(dev: Path, from_flag: bool) -> None:
    # The file's key, or the flag that overrode it (docs/OPERATIONS.md, exit codes).
    import socket

    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        overrides: dict[str, str | None] = {"listen": f"127.0.0.1:{port}"}
        cfg = c.load_client_config(dev / "connect.toml", **overrides)
        if not from_flag:
            overrides = {}
        service = rt.ClientService(cfg, overrides, Metrics())
        with pytest.raises(ConfigError) as err:
            await service.start(None, reuse_port=False)
        await service.close()
    finally:
        taken.close()
    assert err.value.key == ("--listen" if from_flag else "client.listen")
    assert f"127.0.0.1:{port}" in err.value.message


@pytest.mark.parametrize(
    ("listen", "inherit", "warned"),
    [
        ("0.0.0.0", None, True),
        ("127.0.0.1", None, False),
        ("127.0.0.1", "0.0.0.0", True),  # an inherited socket is what listens (systemd)
        ("0.0.0.0", "127.0.0.1", False),
    ],
)
async def test_client_service_warns_of_a_listener_other_hosts_reach(
    dev: Path, listen: str, inherit: str | None, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Plaintext in, attested channel out, no authentication: like the admin listener's warning.
    import socket

    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    overrides: dict[str, str | None] = {"listen": f"{listen}:{port}"}
    cfg = c.load_client_config(dev / "connect.toml", **overrides)
    service = rt.ClientService(cfg, overrides, Metrics())
    sock = socket.create_server((inherit, 0)) if inherit else None
    try:
        with caplog.at_level(logging.WARNING):
            await service.start(sock, reuse_port=False)
    finally:
        await service.close()
        if sock is not None:
            sock.close()
    assert ("client listener on" in caplog.text) is warned, caplog.text


# -- 3. server names in brackets -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("[fe80::1]", "fe80::1"),
        ("localhost", "localhost"),
        ("api.example.com.", "api.example.com."),
        ("192.0.2.1", "192.0.2.1"),
    ],
)
def test_server_names_accepted(name: str, want: str) -> None:
    assert c.parse_server_name(name, "client.server_name") == want


BAD_BRACKETS = ["[::1", "::1]", "[[::1]]", "[]", "[", "]", "[example.com]", "[192.0.2.1]"]


@pytest.mark.parametrize("name", BAD_BRACKETS)
def test_unbalanced_or_misused_brackets_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError) as err:
        c.parse_server_name(name, "--server-name")
    assert err.value.key == "--server-name"


@pytest.mark.parametrize("name", BAD_BRACKETS)
def test_client_server_name_with_bad_brackets_is_a_config_error(
    dev: Path, tmp_path: Path, name: str
) -> None:
    text = (dev / "connect.toml").read_text().replace('"localhost"', f'"{name}"', 1)
    for f in dev.iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    (tmp_path / "connect.toml").write_text(text)
    with pytest.raises(ConfigError) as err:
        c.load_client_config(tmp_path / "connect.toml")
    assert err.value.key == "client.server_name"


@pytest.mark.parametrize("name", ["[::1", "[example.com]", "[192.0.2.1]"])
def test_attest_server_name_with_bad_brackets_exits_2(
    dev: Path, name: str, capsys: pytest.CaptureFixture[str], no_logging_setup: None
) -> None:
    # Rejected before any connection is tried (port 9 is nobody's).
    argv = ["attest", "127.0.0.1:9", "--config", str(dev / "connect.toml")]
    assert cli.main([*argv, "--server-name", name]) == 2
    assert "--server-name" in capsys.readouterr().err


# -- 4. SIGUSR1 before the runtime's handlers --------------------------------------------------


async def test_runtime_answers_a_sigusr1_that_came_while_the_service_was_built(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = SimpleNamespace(watched_files=lambda: [tmp_path / "a.toml"])
    runtime = rt.Runtime(
        cast(rt.Service, cast(Any, service)),
        OpsConfig(),
        Metrics(),
        config_path=tmp_path / "a.toml",
        status_line=lambda: "accepted=0",
        early_usr1=lambda: True,
    )

    class Started(Exception):
        pass

    async def no_start(loop: object) -> int:
        raise Started

    runtime._run = no_start  # type: ignore[method-assign,assignment]
    with caplog.at_level("INFO", logger="atls_proxy"), pytest.raises(Started):
        await runtime.run()
    assert caplog.text.count("status accepted=0") == 1


@pytest.mark.parametrize("command", ["serve", "connect"])
def test_the_early_handlers_are_in_place_before_the_configuration_is_read(
    command: str, dev: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed first thing: a SIGUSR1 or SIGHUP during the imports and the configuration's
    reading (~0.2 s) ended the process when they were installed after them."""
    seen: dict[str, bool] = {}

    class Read(Exception):
        pass

    def load_config(*args: object) -> object:
        seen.update({s.name: _handler_installed(s) for s in (signal.SIGHUP, signal.SIGUSR1)})
        raise Read

    monkeypatch.setattr(c, "load_config", load_config)
    previous = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
    try:
        with pytest.raises(Read):
            name = "serve.toml" if command == "serve" else "connect.toml"
            cli.main([command, "--config", str(dev / name)])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    assert seen == {"SIGHUP": True, "SIGUSR1": True}


def test_serve_is_safe_from_sighup_and_sigusr1_while_the_service_is_built(
    dev: Path, monkeypatch: pytest.MonkeyPatch, no_logging_setup: None
) -> None:
    """Both early handlers are in place when ServerService is built (a TPM may take seconds to
    open there); the stand-in service signals itself as an operator would meanwhile."""
    seen: dict[str, object] = {}

    class Built(Exception):
        pass

    class SlowService:
        def __init__(self, *args: object) -> None:
            for sig in (signal.SIGHUP, signal.SIGUSR1):
                seen[sig.name] = _handler_installed(sig)
                if seen[sig.name]:  # never deliver a signal whose default action kills
                    os.kill(os.getpid(), sig)
            raise Built

    monkeypatch.setattr(rt, "ServerService", SlowService)
    monkeypatch.delenv("ATLS_PROXY_WORKER", raising=False)
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    previous = {s: signal.getsignal(s) for s in (signal.SIGHUP, signal.SIGUSR1)}
    try:
        with pytest.raises(Built):
            # (Nothing binds: the stand-in stops the start before any listener exists.)
            cli.main(["serve", "--config", str(dev / "serve.toml"), "--listen", "127.0.0.1:9"])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    assert seen == {"SIGHUP": True, "SIGUSR1": True}


# -- 4b/5. the supervisor: SIGUSR1, and its notify socket under a long TMPDIR --------------------

READY_WORKER = (
    "import os, time\n"
    "from atls_proxy.ops import systemd\n"
    "systemd.notify('READY=1', f'WORKER_PID={os.getpid()}')\n"
    "time.sleep(60)\n"
)


def _supervisor(folder: Path, monkeypatch: pytest.MonkeyPatch) -> wk.Supervisor:
    """2 stand-in workers that report READY=1 and sleep; temporary files under ``folder``."""
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(wk, "worker_argv", lambda a, r: [sys.executable, "-c", READY_WORKER])
    args = argparse.Namespace(workers=2, config=folder / "serve.toml")
    cfg = SimpleNamespace(ops=SimpleNamespace(admin=None, drain_timeout=1.0))
    return wk.Supervisor(args, "server", cfg)


@pytest.fixture
def long_tmpdir() -> Iterator[Path]:
    """A $TMPDIR of 150 characters (a container's or CI's deep work folder)."""
    base = Path(tempfile.mkdtemp(prefix="atls-long-", dir="/tmp"))
    folder = base / ("d" * (150 - len(str(base)) - 1))
    folder.mkdir()
    assert len(str(folder)) == 150
    try:
        yield folder
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_workers_notify_socket_under_a_long_tmpdir(
    long_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sup = _supervisor(long_tmpdir, monkeypatch)
    assert sup.tmp.parent == long_tmpdir  # the metrics stay under $TMPDIR
    assert len(os.fsencode(sup.notify_path)) > c.MAX_UNIX_PATH_BYTES  # too long to bind

    async def main() -> tuple[int, Path]:
        task = asyncio.ensure_future(sup.run())
        await _until(lambda: task.done() or all(w.ready for w in sup.workers))
        assert not task.done(), task.result()  # raises what ended it
        path = sup.notify_path
        # Only this user may send to it (a forged READY=1 would mark a worker ready).
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        await _until(lambda: _handler_installed(signal.SIGTERM))
        os.kill(os.getpid(), signal.SIGTERM)  # the supervisor's own handler (this loop)
        return await asyncio.wait_for(task, 10.0), path

    code, path = asyncio.run(main())
    assert len(os.fsencode(path)) <= c.MAX_UNIX_PATH_BYTES
    assert not path.is_relative_to(long_tmpdir)
    assert code == 1  # the stand-ins die of SIGTERM
    assert not path.parent.exists() and not sup.tmp.exists()  # both folders removed


def test_workers_notify_socket_stays_in_a_short_tmpdir(monkeypatch: pytest.MonkeyPatch) -> None:
    short = Path(tempfile.mkdtemp(prefix="atls-s-", dir="/tmp"))
    try:
        sup = _supervisor(short, monkeypatch)
        bound = sup._bind_notify()
        bound.close()
        assert sup.notify_path == sup.tmp / "notify.sock" and sup._notify_dir is None
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_supervisor_logs_a_status_line_on_sigusr1(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`systemctl kill -s SIGUSR1 atls-proxy` signals the supervisor too: it must not die."""
    short = Path(tempfile.mkdtemp(prefix="atls-s-", dir="/tmp"))
    sup = _supervisor(short, monkeypatch)

    async def main() -> int:
        task = asyncio.ensure_future(sup.run())
        await _until(lambda: task.done() or all(w.ready for w in sup.workers))
        await _until(lambda: _handler_installed(signal.SIGTERM))
        # Installed with SIGTERM's, before any await; checked so that it never kills pytest.
        assert _handler_installed(signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)
        await _until(lambda: "status workers=2" in caplog.text, 5.0)
        os.kill(os.getpid(), signal.SIGTERM)
        return await asyncio.wait_for(task, 10.0)

    try:
        with caplog.at_level("INFO", logger="atls_proxy"):
            asyncio.run(main())
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert "status workers=2 ready=2 restarts=0 draining=0" in caplog.text


def test_a_reload_that_turns_on_serve_unattested_warns(
    dev: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Not only at start: a reload (SIGHUP, or reload_interval after a ConfigMap edit) that turns
    # the insecure mode on says so too.
    cfg_path = tmp_path / "serve.toml"
    text = (dev / "serve.toml").read_text().replace('"server.pem"', f'"{dev / "server.pem"}"')
    text = text.replace('"server-key.pem"', f'"{dev / "server-key.pem"}"')
    text = text.replace('"platform-key.pem"', f'"{dev / "platform-key.pem"}"')
    cfg_path.write_text(text)
    cfg = c.load_server_config(cfg_path)
    service = rt.ServerService(cfg, {}, Metrics())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        service._build()
    assert "UNATTESTED" not in caplog.text
    cfg_path.write_text(
        text.replace("[server]\n", '[server]\nplain_clients = "serve-unattested"\n')
    )
    with caplog.at_level(logging.WARNING):
        service._build()
    assert "forwarded UNATTESTED" in caplog.text
