"""Faults around the proxy: backend down or resetting, attester failing or hanging, clients vanishing,
connection floods. None may crash the server, leak a traceback or disturb other connections."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from OpenSSL import SSL

from atls_proxy.app import build_client_settings, build_server
from atls_proxy.attest.base import Evidence
from atls_proxy.errors import AttestationUnavailable
from atls_proxy.expat import framing as f
from atls_proxy.expat.binding import Binding
from atls_proxy.ops.config import Address, Timeouts, load_client_config, load_server_config
from atls_proxy.proxy.client import AttestationFailed, open_attested
from atls_proxy.proxy.server import ServerKeys
from atls_proxy.tls.engine import TLSError
from tests.integration.conftest import (
    Stack,
    attester_variant,
    dev_init,
    serve_variant,
    start_client,
    start_server,
)
from tests.support.procs import Procs, free_port, run_cli, status_counters

pytestmark = pytest.mark.integration


def _attest_ok(stack: Stack, port: int) -> None:
    res = run_cli("attest", f"127.0.0.1:{port}", "--config", str(stack.dev / "connect.toml"))
    assert res.returncode == 0, res.stdout


def test_backend_down(stack: Stack, ps: Procs) -> None:
    dead = free_port()
    srv, port = start_server(ps, stack.dev / "serve.toml", dead)
    _, cport = start_client(ps, stack.dev / "connect.toml", port)
    with socket.create_connection(("127.0.0.1", cport), timeout=15) as c:
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        # the request went nowhere: a reset, not an empty answer that looks complete
        with pytest.raises(ConnectionResetError):
            c.recv(100)
    time.sleep(0.2)
    assert "check=backend.connect" in srv.output() and "Traceback" not in srv.output()
    _attest_ok(stack, port)  # attestation itself does not need the backend


def test_connect_counts_an_unreachable_server_as_a_backend_error(stack: Stack, ps: Procs) -> None:
    # For connect the attested server is its backend: a server it cannot reach is a backend
    # connection error (closed as backend_unavailable, and now counted in
    # backend_connect_errors_total as serve counts its own).
    import urllib.request

    from tests.integration.test_operations import metric
    from tests.support.procs import wait_port

    admin, cport, dead = free_port(), free_port(), free_port()
    proc = ps.cli(
        "connect-dead",
        "connect",
        "--config",
        str(stack.dev / "connect.toml"),
        "--listen",
        f"127.0.0.1:{cport}",
        "--server",
        f"127.0.0.1:{dead}",
        "--admin",
        f"127.0.0.1:{admin}",
    )
    wait_port(cport, proc)
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", cport), timeout=15) as c:
            c.settimeout(15)
            with contextlib.suppress(ConnectionResetError):  # a reset or an EOF: both refusals
                assert c.recv(100) == b""
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
            text = r.read().decode()
        errors = metric(text, "atls_proxy_backend_connect_errors_total")
        closed = metric(text, "atls_proxy_connections_closed_total", reason="backend_unavailable")
        if closed >= 3 or time.monotonic() > deadline:  # the readiness probe's, and ours
            break
        time.sleep(0.1)
    assert closed >= 3 and errors == closed, (errors, closed)


def test_backend_resets_mid_stream(stack: Stack, ps: Procs) -> None:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    bport = lst.getsockname()[1]

    def backend() -> None:
        lst.settimeout(20)
        while True:
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            try:
                conn.recv(100)
                conn.sendall(b"A" * 100_000)
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            except OSError:
                pass
            conn.close()  # RST

    threading.Thread(target=backend, daemon=True).start()
    srv, port = start_server(ps, stack.dev / "serve.toml", bport)
    _, cport = start_client(ps, stack.dev / "connect.toml", port)
    with socket.create_connection(("127.0.0.1", cport), timeout=15) as c:
        c.sendall(b"hi")
        got = b""
        try:
            while chunk := c.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
    assert 0 < len(got) <= 100_000 and set(got) == {ord("A")}
    time.sleep(0.3)
    assert "Traceback" not in srv.output()
    _attest_ok(stack, port)
    lst.close()


def test_client_vanishes_mid_exchange(stack: Stack) -> None:
    import ssl

    from atls_proxy.expat import authenticator as ea
    from atls_proxy.expat import messages as m

    req = ea.build_request(
        m.CLIENT_CERTIFICATE_REQUEST, os.urandom(32), extra_extensions=[m.Extension(0xFF00)]
    )
    ctx = ssl.create_default_context(cafile=str(stack.dev / "ca.pem"))
    for _ in range(5):
        raw = socket.create_connection(("127.0.0.1", stack.server_port))
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        s.sendall(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, req.encode()))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()  # gone before reading the authenticator
    time.sleep(0.5)
    assert "Traceback" not in stack.server.output()
    _attest_ok(stack, stack.server_port)


def _status(proc_pid: int, log: Path, after: int) -> dict[str, int]:
    os.kill(proc_pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = status_counters(log.read_text())
        if len(lines) > after:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError("no status line")


def test_connection_flood_beyond_limit(stack: Stack, ps: Procs, tmp_path: Path) -> None:
    cfg = serve_variant(stack.dev, "serve-flood", "max_connections = 20\nhandshake_timeout = 3.0")
    srv, port = start_server(ps, cfg, stack.backend_port)
    time.sleep(0.3)
    base = _status(srv.popen.pid, srv.log, 0)
    flood = []
    for _ in range(300):  # bounded: 300 connections, far beyond the limit of 20
        try:
            flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    time.sleep(0.5)
    during = _status(srv.popen.pid, srv.log, 1)
    assert during["active"] <= 20 and during["refused_limit"] >= 250
    assert during["rss_kib"] - base["rss_kib"] < 32 * 1024  # memory bounded while flooded
    for s in flood:
        s.close()
    time.sleep(0.5)
    _attest_ok(stack, port)
    after = _status(srv.popen.pid, srv.log, 2)
    assert after["active"] == 0
    assert "Traceback" not in srv.output()


class _Failing:
    name, simulated = "failing", True

    def __init__(self, hang: bool) -> None:
        self.hang = hang

    async def attest(self, binding: Binding) -> Evidence:
        if self.hang:
            await asyncio.sleep(3600)
        raise AttestationUnavailable("TEE error (injected)")


@pytest.mark.parametrize("hang", [False, True], ids=["attester-fails", "attester-hangs"])
async def test_attester_failing_or_hanging(stack: Stack, hang: bool) -> None:
    """In process: a server whose attester fails or hangs gives the client no data and stays up."""
    scfg = load_server_config(stack.dev / "serve.toml", backend=f"127.0.0.1:{stack.backend_port}")
    scfg = replace(scfg, listen=Address("tcp", "127.0.0.1", 0), timeouts=Timeouts(attestation=1.0))
    server = build_server(scfg)
    server.engine.attester = _Failing(hang)
    (_, port), *_ = await server.start()
    task = asyncio.ensure_future(server.serve_forever())
    try:
        settings = build_client_settings(
            load_client_config(stack.dev / "connect.toml", server=f"127.0.0.1:{port}")
        )
        settings = replace(settings, timeouts=Timeouts(attestation=3.0))
        for _ in range(3):
            with pytest.raises(AttestationFailed) as e:
                await open_attested(settings)
            failure = e.value.report.first_failure
            assert failure is not None
            # The server says why: evidence unavailable (4), or its attestation timeout (6).
            assert failure.name == "expat.server-error", failure
            assert failure.detail.startswith(f"server error {6 if hang else 4}:"), failure
        assert server.stats.attested == 0
        assert server.stats.by_check.get("expat.exchange" if hang else "attester.evidence", 0) == 3
    finally:
        task.cancel()
        await server.close()


def test_backend_slow_to_read(stack: Stack, ps: Procs) -> None:
    """A backend that never reads: the client's upload stalls at bounded buffers; memory stays flat."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)
    held: list[socket.socket] = []

    def backend() -> None:
        lst.settimeout(20)
        for _ in range(2):  # connect's readiness probe, then the uploader
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            held.append(conn)  # never read

    threading.Thread(target=backend, daemon=True).start()
    srv, port = start_server(ps, stack.dev / "serve.toml", lst.getsockname()[1])
    cli, cport = start_client(ps, stack.dev / "connect.toml", port)
    time.sleep(0.3)
    base = _status(srv.popen.pid, srv.log, 0)
    sent = 0
    with socket.create_connection(("127.0.0.1", cport), timeout=15) as c:
        c.settimeout(0.2)
        block = b"\0" * 65536
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                sent += c.send(block)
            except TimeoutError:
                continue
        during = _status(srv.popen.pid, srv.log, 1)
    # Only buffers' worth crossed (kernel buffers on three hops plus the proxies' bounded ones).
    assert 0 < sent < 48 * 1024 * 1024, sent
    assert during["rss_kib"] - base["rss_kib"] < 16 * 1024, (base, during)
    for conn in held:
        conn.close()
    lst.close()
    assert "Traceback" not in srv.output() + cli.output()


async def test_the_report_claims_a_chain_check_only_when_one_ran(stack: Stack) -> None:
    # An embedder's settings that say verify_pki but carry a context that does not verify: the
    # client refuses (tls.chain) instead of reporting "chain verified".
    from atls_proxy.tls.context import client_context

    settings = build_client_settings(
        load_client_config(stack.dev / "connect.toml", server=f"127.0.0.1:{stack.server_port}")
    )
    assert (await open_attested(settings, keep_open=False)).report.passed
    lax = replace(settings, ssl_context=client_context(None, verify_pki=False))
    with pytest.raises(AttestationFailed) as e:
        await open_attested(lax, keep_open=False)
    failure = e.value.report.first_failure
    assert failure is not None and failure.name == "tls.chain", failure


async def test_verify_pki_false_reports_the_pki_checks_as_skipped_not_passed(
    stack: Stack,
) -> None:
    # verify_pki = false (the operator's choice, INSECURE): the connection is attested, but the
    # report must not say the chain and the name were checked: SKIP in the text, "skipped" in
    # the JSON, and the status at best "warning" — not "PASS, every check passed ... affirming".
    from atls_proxy.report import render_text
    from atls_proxy.tls.context import client_context

    settings = build_client_settings(
        load_client_config(stack.dev / "connect.toml", server=f"127.0.0.1:{stack.server_port}")
    )
    lax = replace(settings, ssl_context=client_context(None, verify_pki=False), verify_pki=False)
    report = (await open_attested(lax, keep_open=False)).report
    assert report.passed
    assert [c.name for c in report.skipped] == ["tls.chain", "tls.hostname"]
    doc = report.to_json()
    conn = doc["submods"]["connection"]
    assert conn["ear.status"] == "warning" and doc["ear.status"] != "affirming"
    assert [c["name"] for c in conn["atls.checks"] if c.get("skipped")] == [
        "tls.chain",
        "tls.hostname",
    ]
    text = render_text(report)
    assert "[SKIP] tls.chain" in text and "[SKIP] tls.hostname" in text
    assert "every check passed" not in text
    assert "WARNING: not checked, by configuration: tls.chain, tls.hostname." in text


async def test_a_forwarded_connection_that_times_out_in_the_kernel_is_a_break(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ETIMEDOUT (a peer's host gone; TCP gave up) is a TimeoutError in Python: on a forwarded
    # connection it is a break like a reset — peer_reset with the bytes moved, not one of
    # serve's failures (it was "timed out in forward", reason=error, no bytes).
    import errno

    import atls_proxy.proxy.listener as listener_module
    from atls_proxy.ops.metrics import Metrics

    async def backend(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await r.readuntil(b"\n")
            w.write(b"x" * 100_000)
            await w.drain()
            await asyncio.sleep(5)
        w.close()

    real_pump = listener_module.pump

    async def pump_then_etimedout(tls, plain, idle, *a, **kw):  # type: ignore[no-untyped-def]
        task = asyncio.ensure_future(real_pump(tls, plain, idle, *a, **kw))
        stats = kw["stats"]
        for _ in range(200):
            if stats.tls_to_plain and stats.plain_to_tls:
                break
            await asyncio.sleep(0.01)
        plain.transport._force_close(OSError(errno.ETIMEDOUT, "Connection timed out"))
        return await task

    monkeypatch.setattr(listener_module, "pump", pump_then_etimedout)  # forward() calls it
    be = await asyncio.start_server(backend, "127.0.0.1", 0)
    bport = be.sockets[0].getsockname()[1]
    scfg = replace(
        load_server_config(stack.dev / "serve.toml", backend=f"127.0.0.1:{bport}"),
        listen=Address("tcp", "127.0.0.1", 0),
    )
    server = build_server(scfg, metrics := Metrics())
    (_, port), *_ = await server.start()
    try:
        settings = build_client_settings(
            load_client_config(stack.dev / "connect.toml", server=f"127.0.0.1:{port}")
        )
        conn = await open_attested(settings)
        await conn.stream.write(b"GET\n")
        with contextlib.suppress(Exception):
            async with asyncio.timeout(8):
                while await conn.stream.read():
                    pass
        await conn.stream.close()
        await asyncio.sleep(0.3)
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in metrics.registry.collect()
            for s in fam.samples
        }
        assert server.stats.failed == 0, server.stats
        assert samples[("atls_proxy_connections_closed_total", (("reason", "peer_reset"),))] == 1
        assert samples[("atls_proxy_forwarded_bytes_total", (("direction", "to_backend"),))] == 4
    finally:
        await server.close()
        be.close()


def _resume_twice(port: int) -> tuple[bool, bool, bytes]:
    """A stdlib TLS 1.3 client that stores the first connection's ticket and offers it on the
    second: (first had a ticket, second resumed, what the second read)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    addr = ("127.0.0.1", port)
    with ctx.wrap_socket(socket.create_connection(addr, timeout=5)) as first:
        first.sendall(b"plain\n")  # refused as a plain client; the ticket came before that
        with contextlib.suppress(OSError):
            while first.recv(4096):
                pass
        session = first.session
    with ctx.wrap_socket(socket.create_connection(addr, timeout=5), session=session) as second:
        resumed = second.session_reused
        second.sendall(b"plain\n")
        got = b""
        with contextlib.suppress(OSError):
            while chunk := second.recv(4096):
                got += chunk
    return session is not None and session.has_ticket, resumed, got


async def test_a_resumed_tls_session_is_refused(stack: Stack) -> None:
    """Defence in depth behind the contexts' disabled resumption: a server whose context does
    issue tickets still refuses the connection that resumes with one (a resumed session has no
    fresh certificate authentication of its own, RFC 8446 §2.2), before the Expat exchange."""
    scfg = load_server_config(stack.dev / "serve.toml", backend=f"127.0.0.1:{stack.backend_port}")
    server = build_server(replace(scfg, listen=Address("tcp", "127.0.0.1", 0)))
    # tls/context.py's server context with what disables resumption left out
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.use_certificate(server.identity.chain[0])
    ctx.use_privatekey(server.identity.private_key)
    ctx.set_session_id(b"atls-resumption-test")
    server.keys = ServerKeys.build(server.identity, ctx)
    (_, port), *_ = await server.start()
    task = asyncio.ensure_future(server.serve_forever())
    try:
        had_ticket, resumed, got = await asyncio.to_thread(_resume_twice, port)
        assert had_ticket and resumed, "the test context did not let the client resume"
        assert got == b""
        # the first connection is refused as a plain client, the resumed one at the handshake
        assert server.stats.by_check == {"expat.preamble": 1, "tls.handshake": 1}
        assert server.stats.attested == server.stats.unattested == 0
    finally:
        task.cancel()
        await server.close()


async def test_backend_unavailable_after_accept_resets_the_client(stack: Stack) -> None:
    """The client sent ACCEPT and its request; the backend cannot be reached. A close_notify
    would read as a complete, empty answer (connect passed it on as a clean end, counted
    "completed"): the server resets the connection instead."""
    scfg = load_server_config(stack.dev / "serve.toml", backend=f"127.0.0.1:{free_port()}")
    server = build_server(replace(scfg, listen=Address("tcp", "127.0.0.1", 0)))
    (_, port), *_ = await server.start()
    task = asyncio.ensure_future(server.serve_forever())
    try:
        settings = build_client_settings(
            load_client_config(stack.dev / "connect.toml", server=f"127.0.0.1:{port}")
        )
        conn = await open_attested(settings)
        await conn.stream.write(b"GET / HTTP/1.0\r\n\r\n")
        with pytest.raises((TLSError, ConnectionResetError)):  # a reset, not an empty answer
            await asyncio.wait_for(conn.stream.read(), 10)
        await conn.stream.close()
        assert server.stats.by_check.get("backend.connect") == 1
    finally:
        task.cancel()
        await server.close()


def test_connect_abandons_the_attestation_of_a_local_client_that_reset(
    tmp_path: Path, ps: Procs
) -> None:
    # A local client that gives up (a reset) while `connect` attests for it, behind a strict
    # server whose quote takes 2.5 s: `connect` closes the attested connection at once instead of
    # finishing the attestation and forwarding into a dead socket.
    from tests.support.procs import log_messages

    dev = dev_init(tmp_path / "dev")
    slow = attester_variant(dev, "slow", tier="strict", quote_ms=2500)
    server, sport = start_server(ps, slow, 9)  # never forwarded to
    client, cport = start_client(ps, dev / "connect.toml", sport)
    local = socket.create_connection(("127.0.0.1", cport), timeout=5)
    time.sleep(0.5)  # connect has the TLS handshake done and waits for the authenticator
    local.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")  # RST on close
    local.close()
    reset_at = time.monotonic()
    deadline = reset_at + 10
    gone = "local client went away during attestation"
    while not any(m.startswith(gone) for m in log_messages(client.output())):
        assert time.monotonic() < deadline, client.output()
        time.sleep(0.05)
    # Noticed at the reset, not when the quote came back (2.5 s, after the one queued before it:
    # start_client's probe connection is attested too).
    assert time.monotonic() - reset_at < 1.5, client.output()
    assert "Traceback" not in client.output() + server.output()


class _SlowCounting:
    """Delegates to the real attester after `delay` seconds; counts the quotes begun."""

    def __init__(self, inner: object, delay: float) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", "software")
        self.delay = delay
        self.quotes = 0

    async def attest(self, binding: Binding) -> Evidence:
        self.quotes += 1
        await asyncio.sleep(self.delay)
        return await self.inner.attest(binding)  # type: ignore[attr-defined, no-any-return]


async def test_a_client_that_leaves_while_queued_for_a_strict_quote_costs_no_quote(
    tmp_path: Path,
) -> None:
    # Strict: one quote per connection, one at a time. B's quote is under way; A, queued behind
    # it, gives up (closes). A can never send ACCEPT, so the server drops it from the TEE's queue
    # at once — not at its attestation timeout, after spending a quote nobody will read.
    dev = dev_init(tmp_path / "dev")
    cfg = attester_variant(dev, "strict", tier="strict")
    scfg = load_server_config(cfg, backend="127.0.0.1:9")
    scfg = replace(scfg, listen=Address("tcp", "127.0.0.1", 0))
    server = build_server(scfg)
    slow = _SlowCounting(server.engine.attester, 1.0)
    server.engine.attester = slow  # type: ignore[assignment]
    (_, port), *_ = await server.start()
    task = asyncio.ensure_future(server.serve_forever())
    try:
        settings = build_client_settings(
            load_client_config(dev / "connect.toml", server=f"127.0.0.1:{port}")
        )
        b = asyncio.ensure_future(open_attested(settings, keep_open=False))
        await _until(lambda: slow.quotes == 1)  # B's quote under way
        a = asyncio.ensure_future(open_attested(settings, keep_open=False))
        await _until(lambda: server.engine.stats.waiting == 2)  # A queued behind it
        assert slow.quotes == 1
        a.cancel()  # A gives up: open_attested closes its connection
        with contextlib.suppress(asyncio.CancelledError):
            await a
        assert (await b).report.passed
        await asyncio.sleep(1.5)  # time for a second quote, had A's been made
        assert slow.quotes == 1
        assert server.stats.by_check.get("expat.exchange", 0) == 1, server.stats.by_check
    finally:
        task.cancel()
        await server.close()


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_client_that_already_ended_gets_no_strict_quote(tmp_path: Path) -> None:
    # The request and the client's EOF arrived together: no quote starts for a connection that
    # can never send ACCEPT (with the TEE idle, one would start at once and be spent).
    from atls_proxy.expat import session as xs
    from atls_proxy.proxy.server import Refused

    dev = dev_init(tmp_path / "dev")
    cfg = attester_variant(dev, "strict", tier="strict")
    server = build_server(load_server_config(cfg, backend="127.0.0.1:9"))
    slow = _SlowCounting(server.engine.attester, 0.0)
    server.engine.attester = slow  # type: ignore[assignment]

    class Ended:
        ended = True

        async def wait_ended(self) -> None:
            return None

    request = xs.AttestationRequested(
        request=None,  # type: ignore[arg-type]  # not read on this path
        binding=Binding("sha256", os.urandom(32), os.urandom(32)),
    )
    try:
        with pytest.raises(Refused, match="closed the connection"):
            await server._answer(Ended(), None, request, server.keys)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert slow.quotes == 0 and server.engine.stats.waiting == 0
    finally:
        await server.close()
