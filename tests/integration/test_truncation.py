"""A stream cut short is never passed on as a finished one, through the real ``serve`` and
``connect``. TLS tells a truncation (TCP EOF without close_notify) from an end; a proxy that
answered either with a clean close (FIN, close_notify) would hand that truncation on as an end to
a peer that relies on EOF to delimit its data. Each test performs the cut and looks at what the
peer on the far side sees: a reset, not an EOF.

    local program ── connect ── [relay: the on-path attacker] ── serve ── backend
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import dev_init, start_client, start_server
from tests.support.procs import Procs

pytestmark = pytest.mark.integration

MB = 1024 * 1024


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _drain(sock: socket.socket, limit: float = 20) -> tuple[int, str]:
    """Read to the end: (bytes read, "eof" for a clean end or "reset")."""
    sock.settimeout(limit)
    n = 0
    try:
        while chunk := sock.recv(65536):
            n += len(chunk)
    except (ConnectionResetError, BrokenPipeError):
        return n, "reset"
    return n, "eof"


class _Server:
    """A TCP server on 127.0.0.1 running ``handle(conn)`` in a thread per connection."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.handle = handle
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.handle(conn)

    def close(self) -> None:
        self.sock.close()


class Relay(_Server):
    """Forwards one way and the other; ``cut`` = (direction, after): after that many bytes in
    that direction ("up": towards serve, "down": towards connect) it stops forwarding and sends
    a FIN — a TCP end with no close_notify, what an on-path attacker can do."""

    def __init__(self, target: int, cut: tuple[str, int]) -> None:
        self.target, self.cut = target, cut
        super().__init__(self._relay)

    def _relay(self, near: socket.socket) -> None:
        far = socket.create_connection(("127.0.0.1", self.target))
        up = threading.Thread(target=self._copy, args=(near, far, "up"), daemon=True)
        up.start()
        self._copy(far, near, "down")
        up.join(30)
        with contextlib.suppress(OSError):
            near.close()
            far.close()

    def _copy(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        limit = self.cut[1] if self.cut[0] == direction else None
        sent = 0
        with contextlib.suppress(OSError):
            src.settimeout(30)
            while chunk := src.recv(65536):
                if limit is not None and sent + len(chunk) > limit:
                    dst.sendall(chunk[: limit - sent])
                    break
                dst.sendall(chunk)
                sent += len(chunk)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    return dev_init(tmp_path / "dev")


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    made: list[_Server] = []
    yield made
    for s in made:
        s.close()


def _stack(
    ps: Procs, dev: Path, servers: list[_Server], backend: _Server, cut: tuple[str, int] | None
) -> int:
    """serve in front of ``backend``, connect in front of serve (through a cutting relay when
    ``cut``); the port of connect's local listener."""
    servers.append(backend)
    _, sport = start_server(ps, dev / "serve.toml", backend.port)
    if cut is not None:
        relay = Relay(sport, cut)
        servers.append(relay)
        sport = relay.port
    _, cport = start_client(ps, dev / "connect.toml", sport)
    return cport


def test_a_download_cut_on_the_wire_reaches_the_local_program_as_a_reset(
    ps: Procs, dev: Path, servers: list[_Server]
) -> None:
    def big(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"x" * MB)
        conn.close()

    cport = _stack(ps, dev, servers, _Server(big), ("down", 200_000))
    with socket.create_connection(("127.0.0.1", cport)) as local:
        local.sendall(b"GET\n")
        n, end = _drain(local)
    assert end == "reset" and n < MB, (n, end)


def test_an_upload_cut_on_the_wire_reaches_the_backend_as_a_reset(
    ps: Procs, dev: Path, servers: list[_Server]
) -> None:
    seen: list[tuple[int, str]] = []

    def sink(conn: socket.socket) -> None:
        seen.append(_drain(conn))
        conn.close()

    cport = _stack(ps, dev, servers, _Server(sink), ("up", 300_000))
    with socket.create_connection(("127.0.0.1", cport)) as local, contextlib.suppress(OSError):
        local.sendall(b"y" * MB)
        local.shutdown(socket.SHUT_WR)
        _drain(local, 10)
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen and seen[0][1] == "reset" and seen[0][0] < MB, seen


def test_a_backend_reset_reaches_the_local_program_as_a_reset(
    ps: Procs, dev: Path, servers: list[_Server]
) -> None:
    def resets(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"z" * 300_000)
        time.sleep(0.2)
        _reset(conn)

    cport = _stack(ps, dev, servers, _Server(resets), None)
    with socket.create_connection(("127.0.0.1", cport)) as local:
        local.sendall(b"GET\n")
        n, end = _drain(local)
    assert end == "reset", (n, end)


def test_a_complete_exchange_still_ends_cleanly(
    ps: Procs, dev: Path, servers: list[_Server]
) -> None:
    # The control: nothing cut, so the local program sees every byte and then a clean EOF.
    def big(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"x" * MB)
        conn.close()

    cport = _stack(ps, dev, servers, _Server(big), None)
    with socket.create_connection(("127.0.0.1", cport)) as local:
        local.sendall(b"GET\n")
        assert _drain(local) == (MB, "eof")


def test_a_local_program_that_resets_during_attestation_is_not_forwarded(
    ps: Procs, dev: Path, servers: list[_Server]
) -> None:
    # The request and then a reset arrive while connect still attests the server: the reset
    # is not a half-close, so the request goes nowhere, and connect logs no traceback.
    got: list[bytes] = []

    def records(conn: socket.socket) -> None:
        conn.settimeout(5)
        with contextlib.suppress(OSError):
            got.append(conn.recv(100))
        conn.close()

    slow = dev / "serve-slow.toml"
    slow.write_text(
        (dev / "serve.toml")
        .read_text()
        .replace("[attester.software]\n", "[attester.software]\nsimulated_quote_ms = 500\n", 1)
    )
    servers.append(backend := _Server(records))
    _server, sport = start_server(ps, slow, backend.port)
    client, cport = start_client(ps, dev / "connect.toml", sport)
    for _ in range(3):
        local = socket.create_connection(("127.0.0.1", cport))
        local.sendall(b"DELETE /everything\n")
        time.sleep(0.1)  # connect has it, and is waiting for the 500 ms quote
        _reset(local)
    time.sleep(2.0)  # three attestations done, had anything been forwarded it has arrived
    # (connect's readiness probe, a connection that only half-closed, may reach it empty)
    assert b"DELETE" not in b"".join(got), got
    assert "Traceback" not in client.output(), client.output()
    assert "handler failed" not in client.output(), client.output()
