"""A stream cut short is never passed on as a finished one, through the real ``serve`` and
``connect``. TLS tells a truncation (TCP EOF without close_notify) from an end; a proxy that
answered either with a clean close (FIN, close_notify) would hand that truncation on as an end to
a peer that relies on EOF to delimit its data. Each test performs the cut and looks at what the
peer on the far side sees: a reset, not an EOF.

    local program ── connect ── [relay: the on-path attacker] ── serve ── backend
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    attester_variant,
    dev_init,
    serve_variant,
    start_client,
    start_server,
)
from tests.support.procs import Procs, free_port

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
    ps: Procs,
    dev: Path,
    servers: list[_Server],
    backend: _Server,
    cut: tuple[str, int] | None,
    *serve_args: str,
    config: str = "serve.toml",
) -> int:
    """serve in front of ``backend``, connect in front of serve (through a cutting relay when
    ``cut``); the port of connect's local listener."""
    servers.append(backend)
    _, sport = start_server(ps, dev / config, backend.port, *serve_args)
    if cut is not None:
        relay = Relay(sport, cut)
        servers.append(relay)
        sport = relay.port
    _, cport = start_client(ps, dev / "connect.toml", sport)
    return cport


def _metrics(admin: int) -> dict[str, float]:
    """The server's /metrics samples, "name{labels}" -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _settled(admin: int) -> dict[str, float]:
    """The metrics once no connection is open (the readiness probes' have ended)."""
    deadline = time.monotonic() + 10
    while (m := _metrics(admin)).get("atls_proxy_connections_active", 0) > 0:
        assert time.monotonic() < deadline, m
        time.sleep(0.05)
    return m


def _delta(admin: int, before: dict[str, float], until: str) -> dict[str, float]:
    """The change of every sample since ``before``, once ``until`` went up by one."""
    deadline = time.monotonic() + 10
    while True:
        m = _metrics(admin)
        d = {k: v - before.get(k, 0.0) for k, v in m.items()}
        if d.get(until, 0) >= 1:
            return d
        assert time.monotonic() < deadline, d
        time.sleep(0.1)


def _status(admin: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/status", timeout=10) as r:
        return dict(json.loads(r.read())["connections"])


def test_a_download_cut_on_the_wire_reaches_the_local_program_as_a_reset(
    ps: Procs, dev: Path, servers: list[_Server]
) -> None:
    def big(conn: socket.socket) -> None:
        if conn.recv(100):  # (connect's readiness probe asks nothing and gets nothing)
            conn.sendall(b"x" * MB)
        conn.close()

    admin = free_port()
    cport = _stack(
        ps, dev, servers, _Server(big), ("down", 200_000), "--admin", f"127.0.0.1:{admin}"
    )
    before, failed = _settled(admin), _status(admin)["failed"]  # the start-up probes' connections
    with socket.create_connection(("127.0.0.1", cport)) as local:
        local.sendall(b"GET\n")
        n, end = _drain(local)
    assert end == "reset" and n < MB, (n, end)
    # serve counts it as a connection that broke, with the bytes it moved; not as its failure.
    m = _delta(admin, before, 'atls_proxy_connections_closed_total{reason="peer_reset"}')
    assert m['atls_proxy_forwarded_bytes_total{direction="to_client"}'] >= 200_000, m
    assert m['atls_proxy_forwarded_bytes_total{direction="to_backend"}'] == 4, m
    assert _status(admin)["failed"] == failed


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
    # (connect's readiness probe reaches the sink too, as an empty, clean connection)
    deadline = time.monotonic() + 10
    while not (cut := [x for x in seen if x != (0, "eof")]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cut and cut[0][1] == "reset" and cut[0][0] < MB, seen


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


def test_an_idle_timeout_still_counts_the_bytes_moved(
    ps: Procs, dev: Path, servers: list[_Server]
) -> None:
    # A long-lived connection usually ends this way: its bytes were dropped from
    # forwarded_bytes_total, which said "added once per connection when it closes".
    def chatty_then_silent(conn: socket.socket) -> None:
        if not conn.recv(100):  # connect's readiness probe: nothing asked, nothing sent
            conn.close()
            return
        conn.sendall(b"w" * 50_000)
        time.sleep(5)
        conn.close()

    admin = free_port()
    variant = serve_variant(dev, "idle", "idle_timeout = 1.0")
    cport = _stack(
        ps,
        dev,
        servers,
        _Server(chatty_then_silent),
        None,
        "--admin",
        f"127.0.0.1:{admin}",
        config=variant.name,
    )
    before = _settled(admin)  # the start-up probes' connections
    with socket.create_connection(("127.0.0.1", cport)) as local:
        local.sendall(b"GET\n")
        n, end = _drain(local)
    assert n == 50_000 and end == "reset"  # the proxy cut it: not an end of stream
    m = _delta(admin, before, 'atls_proxy_connections_closed_total{reason="idle_timeout"}')
    assert m['atls_proxy_forwarded_bytes_total{direction="to_client"}'] == 50_000, m
    assert m['atls_proxy_forwarded_bytes_total{direction="to_backend"}'] == 4, m


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

    slow = attester_variant(dev, "slow", quote_ms=500)
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
