"""Integration fixtures: the real CLI as subprocesses on 127.0.0.1, a real HTTP backend."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.procs import Proc, Procs, free_port, procs, run_cli, wait_port

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    dev: Path
    www: Path
    backend_port: int
    server_port: int
    client_port: int
    backend: Proc
    server: Proc
    client: Proc
    procs: Procs


def dev_init(dir: Path) -> Path:
    res = run_cli("dev-init", str(dir))
    assert res.returncode == 0, res.stderr
    return dir


@pytest.fixture
def ps(tmp_path: Path) -> Iterator[Procs]:
    with procs(tmp_path) as p:
        yield p


def start_backend(ps: Procs, www: Path) -> tuple[Proc, int]:
    port = free_port()
    proc = ps.start(
        "backend",
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            str(port),
            "--directory",
            str(www),
        ],
    )
    wait_port(port, proc)
    return proc, port


def start_server(ps: Procs, config: Path, backend_port: int, *extra: str) -> tuple[Proc, int]:
    port = free_port()
    proc = ps.cli(
        "serve",
        "serve",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--backend",
        f"127.0.0.1:{backend_port}",
        *extra,
    )
    wait_port(port, proc)
    return proc, port


def start_client(ps: Procs, config: Path, server_port: int) -> tuple[Proc, int]:
    port = free_port()
    proc = ps.cli(
        "connect",
        "connect",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--server",
        f"127.0.0.1:{server_port}",
    )
    wait_port(port, proc)
    return proc, port


@pytest.fixture
def stack(tmp_path: Path, ps: Procs) -> Stack:
    dev = dev_init(tmp_path / "dev")
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_bytes(b"hello through atls-proxy\n")
    (www / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    backend, bport = start_backend(ps, www)
    server, sport = start_server(ps, dev / "serve.toml", bport)
    client, cport = start_client(ps, dev / "connect.toml", sport)
    return Stack(dev, www, bport, sport, cport, backend, server, client, ps)


def backend_requests(backend: Proc) -> int:
    """How many HTTP requests the backend logged (http.server logs one line per request)."""
    return sum(1 for line in backend.output().splitlines() if '"GET ' in line or '"POST ' in line)


def serve_variant(dev: Path, name: str, server_lines: str) -> Path:
    """A copy of dev/serve.toml with extra [server] keys, written beside it (relative paths hold)."""
    text = (
        (dev / "serve.toml")
        .read_text()
        .replace("[server]\n", "[server]\n" + server_lines.strip() + "\n", 1)
    )
    out = dev / f"serve-{name}.toml"
    out.write_text(text)
    return out


def attester_variant(
    dev: Path, name: str, *, tier: str | None = None, quote_ms: int | None = None
) -> Path:
    """A copy of dev/serve.toml with the software attester's ``tier`` and simulated quote
    latency set, written beside it (relative paths hold)."""
    text = (dev / "serve.toml").read_text()
    if tier is not None:
        text = text.replace('kind = "software"\n', f'kind = "software"\ntier = "{tier}"\n', 1)
    if quote_ms is not None:
        text = text.replace(
            "[attester.software]\n", f"[attester.software]\nsimulated_quote_ms = {quote_ms}\n", 1
        )
    assert (tier is None or f'tier = "{tier}"' in text) and (
        quote_ms is None or f"simulated_quote_ms = {quote_ms}" in text
    ), "dev-init's serve.toml changed shape"
    out = dev / f"serve-{name}.toml"
    out.write_text(text)
    return out
