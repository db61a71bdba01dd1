"""Run the real CLI and real peers (curl, openssl, python -m http.server) as subprocesses on loopback.

Every process is bounded: started with a deadline, polled for readiness (never a blind sleep),
terminated and then killed at teardown. Logs are captured to files so tests can assert on them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLI = [sys.executable, "-m", "atls_proxy.cli"]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e["PYTHONUNBUFFERED"] = "1"
    return e


def run_cli(
    *args: str, timeout: float = 60, input: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        input=input.decode() if input else None,
    )


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    extra: dict[str, object] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10) -> int:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode


def wait_port(port: int, proc: Proc | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise AssertionError(
                f"{proc.name} exited early ({proc.popen.returncode}):\n{proc.output()}"
            )
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise AssertionError(
        f"port {port} not listening after {timeout}s" + (f":\n{proc.output()}" if proc else "")
    )


class Procs:
    """Starts processes and stops all of them at the end (a pytest fixture wraps it)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def start(self, name: str, argv: Sequence[str], stdin: int | None = subprocess.DEVNULL) -> Proc:
        log = self.tmp / f"{name}-{len(self.procs)}.log"
        fh = log.open("wb")
        p = subprocess.Popen(
            list(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=stdin, env=env(), cwd=self.tmp
        )
        proc = Proc(name, p, log)
        self.procs.append(proc)
        return proc

    def cli(self, name: str, *args: str) -> Proc:
        return self.start(name, [*CLI, *args])

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()


@contextlib.contextmanager
def procs(tmp: Path) -> Iterator[Procs]:
    ps = Procs(tmp)
    try:
        yield ps
    finally:
        ps.stop_all()


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        import pytest

        pytest.skip(f"{tool} is not installed")
    return path


def log_messages(text: str) -> list[str]:
    """The message of every log line: the "msg" of JSON lines (the CLI's default when stderr is
    not a terminal), else the text after the logger name."""
    import json

    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(str(json.loads(line).get("msg", "")))
                continue
        out.append(line.split(": ", 1)[1] if ": " in line else line)
    return out


def status_counters(text: str) -> list[dict[str, int]]:
    """The SIGUSR1 status lines in a log, oldest first, as counters."""
    import re

    return [
        {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", m)}
        for m in log_messages(text)
        if m.startswith("status active=")
    ]
