"""A software TPM (swtpm) on loopback for the ``tpm`` tests, and the skip-or-fail rule for tools.

``start_swtpm`` runs ``swtpm socket --tpm2`` with its state in a temporary folder, a TCP command
port P and the TCP control port P + 1 (where the swtpm TCTI looks for it) on 127.0.0.1, and ``--flags not-need-init,startup-clear`` (swtpm
sends TPM2_Startup(CLEAR) itself, so a client can quote at once). It waits until the command
port accepts connections (bounded), and ``Swtpm.stop`` terminates it (then kills it).

When swtpm or tpm2-pytss is missing the tests are skipped, unless ``ATLS_PROXY_REQUIRE_TOOLS=1``
(CI sets it): then they fail, so a CI image that lost the tools cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_TOOLS_ENV = "ATLS_PROXY_REQUIRE_TOOLS"
START_TIMEOUT = 10.0
# Port collisions between choosing free ports and swtpm binding them: a few fresh tries.
START_ATTEMPTS = 3


def tools_required() -> bool:
    return os.environ.get(REQUIRE_TOOLS_ENV) == "1"


def missing(reason: str) -> None:
    """Skip, or fail when the environment requires the tools."""
    if tools_required():
        pytest.fail(f"{reason} ({REQUIRE_TOOLS_ENV}=1: the tools must be installed)")
    pytest.skip(reason)


def require_swtpm() -> str:
    """The swtpm binary, with tpm2-pytss importable; skips or fails otherwise."""
    path = shutil.which("swtpm")
    if path is None:
        missing("swtpm is not installed")
    try:
        import tpm2_pytss  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
    except ImportError as exc:
        missing(f"tpm2-pytss is not usable: {exc}")
    assert path is not None
    return path


def free_port_pair() -> tuple[int, int]:
    """Two free consecutive ports: the swtpm TCTI finds the control port at command port + 1."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port, port + 1
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


@dataclass
class Swtpm:
    binary: str
    state: Path
    port: int
    ctrl_port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start (or restart, keeping the state folder) on the same ports."""
        assert not self.alive()
        self.state.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "socket",
            "--tpm2",
            "--tpmstate",
            f"dir={self.state}",
            "--server",
            f"type=tcp,port={self.port},bindaddr=127.0.0.1",
            "--ctrl",
            f"type=tcp,port={self.ctrl_port},bindaddr=127.0.0.1",
            "--flags",
            "not-need-init,startup-clear",
            "--log",
            f"file={self.log},level=1",
        ]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"swtpm exited ({self.proc.returncode}): "
                    + (self.log.read_text(errors="replace") if self.log.exists() else "")
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"swtpm did not listen on port {self.port} within {START_TIMEOUT} s")

    def stop(self, timeout: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the TPM vanishes without a goodbye."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def start_swtpm(tmp: Path) -> Iterator[Swtpm]:
    """A running swtpm with its state under ``tmp``; stopped on exit."""
    binary = require_swtpm()
    last: Exception | None = None
    for attempt in range(START_ATTEMPTS):
        port, ctrl = free_port_pair()
        tpm = Swtpm(binary, tmp / "tpmstate", port, ctrl, tmp / f"swtpm-{attempt}.log")
        try:
            tpm.start()
        except RuntimeError as exc:
            last = exc
            continue
        try:
            yield tpm
        finally:
            tpm.stop()
        return
    raise RuntimeError(f"swtpm did not start: {last}")
