"""Bad input over real connections, each class with a test, against the real CLI.

* a hostile *client* (Python's stdlib ``ssl``, an independent TLS stack) sends malformed shim traffic
  to ``atls-proxy serve``: the server logs the specific check, closes, and keeps serving others;
* a hostile *server* (in-process, our TLS engine with a tampering attester) answers
  ``atls-proxy attest``: the report names the specific failed check and the exit code is 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from atls_proxy.expat import authenticator as ea
from atls_proxy.expat import framing as f
from atls_proxy.expat import messages as m
from atls_proxy.expat.profile import ExpatProfile
from tests.integration.conftest import Stack, backend_requests, serve_variant
from tests.support.evil import EvilServer
from tests.support.procs import CLI, env, run_cli

pytestmark = pytest.mark.integration

PROFILE = ExpatProfile()


# --- hostile clients against `atls-proxy serve` ------------------------------------------------


def _tls_client(port: int, ca: Path, *, ragged_eof_is_error: bool = False) -> ssl.SSLSocket:
    """``ragged_eof_is_error``: an end without close_notify raises instead of reading b"" (so a
    test can tell a cut stream from a clean end)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(
        raw, server_hostname="localhost", suppress_ragged_eofs=not ragged_eof_is_error
    )


def _request(
    context: bytes | None = None, msg_type: int = m.CLIENT_CERTIFICATE_REQUEST, offer: bytes = b""
) -> bytes:
    req = ea.build_request(
        msg_type, context or os.urandom(32), extra_extensions=[m.Extension(0xFF00, offer)]
    )
    return req.encode()


def _read_all(s: ssl.SSLSocket, limit: float = 10) -> bytes:
    s.settimeout(limit)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ssl.SSLError, OSError):
        pass
    return out


HOSTILE_CLIENTS: dict[str, tuple[bytes, str]] = {
    "unknown-version": (f.MAGIC + b"\x07", "expat.version"),
    "unknown-frame": (f.PREAMBLE + b"\x09\x00\x00\x00", "expat.frame"),
    "oversized-frame": (f.PREAMBLE + b"\x01\xff\xff\xff", "expat.frame"),
    "malformed-request": (
        f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, b"\x11\x00\x00\x05abc"),
        "expat.decode",
    ),
    "truncated-handshake-message": (
        f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, _request()[:-3]),
        "expat.decode",
    ),
    "certificate-request-13": (
        f.PREAMBLE
        + f.encode_frame(f.FrameType.AUTH_REQUEST, _request(msg_type=m.CERTIFICATE_REQUEST)),
        "ea.request",
    ),
    "non-empty-offer": (
        f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, _request(offer=b"\x01")),
        "expat.offer",
    ),
    "accept-before-authenticator": (f.PREAMBLE + f.encode_frame(f.FrameType.ACCEPT), "expat.frame"),
}


# The ERROR code the server answers with (docs/PROTOCOL.md §4); 2 (malformed) otherwise.
ERROR_CODES = {
    "unknown-version": f.ErrorCode.UNSUPPORTED_VERSION,
    "accept-before-authenticator": f.ErrorCode.UNEXPECTED_FRAME,
}


@pytest.mark.parametrize("case", sorted(HOSTILE_CLIENTS))
def test_hostile_client(stack: Stack, case: str) -> None:
    payload, check = HOSTILE_CLIENTS[case]
    with _tls_client(stack.server_port, stack.dev / "ca.pem") as s:
        s.sendall(payload)
        got = _read_all(s)
    # The server answers with nothing but its preamble and an ERROR frame with the fitting code.
    assert b"hello" not in got
    assert got.startswith(f.PREAMBLE + bytes([f.FrameType.ERROR])), got[:32]
    frame = got[len(f.PREAMBLE) :]
    code, _ = f.decode_error(frame[4 : 4 + int.from_bytes(frame[1:4], "big")])
    assert code == ERROR_CODES.get(case, f.ErrorCode.MALFORMED), (case, code)
    _assert_logged(stack, check)


def test_a_second_request_on_a_connection_is_refused(stack: Stack) -> None:
    # One exchange per connection (expat.frame); context reuse itself: test_session.py.
    ctx = os.urandom(32)
    with _tls_client(stack.server_port, stack.dev / "ca.pem") as s:
        s.sendall(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, _request(ctx)))
        time.sleep(0.3)
        s.sendall(f.encode_frame(f.FrameType.AUTH_REQUEST, _request(ctx)))
        _read_all(s)
    _assert_logged(stack, "expat.frame")


@pytest.mark.parametrize(
    "after",
    [
        f.encode_frame(f.FrameType.ACCEPT)[:1] + b"\x00\x00\x01!",  # ACCEPT with a payload
        f.encode_frame(f.FrameType.AUTH_REQUEST, _request()),  # a second request
    ],
    ids=["malformed-accept", "second-request"],
)
def test_no_error_frame_after_the_authenticator(stack: Stack, after: bytes) -> None:
    """After the authenticator the server sends no shim bytes, whatever the client does wrong:
    a client that believes it sent ACCEPT would hand them to its application (docs/PROTOCOL.md
    §4) — nor a close_notify, which that client would read as a complete, empty answer. It
    resets the connection, and logs the check."""
    with _tls_client(stack.server_port, stack.dev / "ca.pem", ragged_eof_is_error=True) as s:
        s.sendall(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, _request()))
        s.settimeout(10)
        head, got = len(f.PREAMBLE) + 4, b""
        while len(got) < head or len(got) < head + int.from_bytes(got[head - 3 : head], "big"):
            chunk = s.recv(65536)
            assert chunk, got[:32]
            got += chunk
        assert got.startswith(f.PREAMBLE + bytes([f.FrameType.AUTHENTICATOR]))
        s.sendall(after)
        with pytest.raises((ConnectionResetError, ssl.SSLError)):  # a cut, not close_notify
            s.recv(65536)
    _assert_logged(stack, "expat.frame")


def test_truncated_frame_then_close(stack: Stack) -> None:
    with _tls_client(stack.server_port, stack.dev / "ca.pem") as s:
        s.sendall(f.PREAMBLE + b"\x01\x00\x01\x00" + b"x" * 10)
    _assert_logged(stack, "expat.exchange")


def test_a_client_that_asks_for_no_evidence_is_not_forwarded_as_attested(stack: Stack) -> None:
    # An Expat client whose request offers no cmw_attestation gets a plain RFC 9261 authenticator
    # and can ACCEPT it; with plain_clients = "refuse" (the default) that is unattested traffic,
    # refused like a plain TLS client, never counted as attested.
    before = backend_requests(stack.backend)
    req = ea.build_request(m.CLIENT_CERTIFICATE_REQUEST, os.urandom(32)).encode()
    with _tls_client(stack.server_port, stack.dev / "ca.pem") as s:
        s.sendall(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, req))
        s.settimeout(10)
        got = s.recv(65536)
        assert got.startswith(f.PREAMBLE + bytes([f.FrameType.AUTHENTICATOR]))
        s.sendall(f.encode_frame(f.FrameType.ACCEPT) + b"GET /hello.txt HTTP/1.0\r\n\r\n")
        got = _read_all(s)
    assert b"hello through" not in got
    _assert_logged(stack, "expat.unattested")
    assert backend_requests(stack.backend) == before


def _assert_logged(stack: Stack, check: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and f"check={check}" not in stack.server.output():
        time.sleep(0.05)
    log = stack.server.output()
    assert f"check={check}" in log, log[-3000:]
    assert "Traceback" not in log
    # Other connections are unaffected: a genuine client still attests.
    ok = run_cli(
        "attest", f"127.0.0.1:{stack.server_port}", "--config", str(stack.dev / "connect.toml")
    )
    assert ok.returncode == 0, ok.stdout


def test_slowloris_handshake_times_out_without_harming_others(stack: Stack, tmp_path: Path) -> None:
    cfg = serve_variant(
        stack.dev, "serve-fast", "handshake_timeout = 1.0\nattestation_timeout = 1.0"
    )
    from tests.integration.conftest import start_server

    srv, port = start_server(stack.procs, cfg, stack.backend_port)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    half = _tls_client(port, stack.dev / "ca.pem")  # handshake done, never sends the request
    ok = run_cli("attest", f"127.0.0.1:{port}", "--config", str(stack.dev / "connect.toml"))
    assert ok.returncode == 0
    time.sleep(1.6)
    log = srv.output()
    assert log.count("check=tls.handshake") >= 5 and "check=expat.exchange" in log
    for s in idle:
        s.close()
    half.close()


def _frames(stream: bytes) -> list[tuple[int, bytes]]:
    """The shim frames of a server's stream (after its preamble)."""
    assert stream.startswith(f.PREAMBLE), stream[:16]
    d = f.FrameDecoder()
    out = [(fr.type, fr.payload) for fr in d.feed(stream)]
    while d.buffered:  # the decoder stops after an AUTHENTICATOR: go on with the rest
        rest = d.take_rest()
        d = f.FrameDecoder()
        out += [(fr.type, fr.payload) for fr in d.feed(f.PREAMBLE + rest)]
    return out


def test_an_attestation_timeout_is_answered_with_error_timeout(stack: Stack) -> None:
    """At attestation_timeout the server says why (ERROR 6, docs/PROTOCOL.md §4) to a client
    still waiting for the authenticator; never after the authenticator (until ACCEPT any byte is
    early data, and a client whose ACCEPT crossed it would hand the bytes to its application);
    and a client that never spoke Expat gets no shim bytes."""
    from tests.integration.conftest import start_server

    cfg = serve_variant(stack.dev, "att-timeout", "attestation_timeout = 1.0")
    _, port = start_server(stack.procs, cfg, stack.backend_port)
    silent = _tls_client(port, stack.dev / "ca.pem")
    no_accept = _tls_client(port, stack.dev / "ca.pem")
    no_accept.sendall(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, _request()))
    with _tls_client(port, stack.dev / "ca.pem") as s:
        s.sendall(f.PREAMBLE)  # then never the request
        frames = _frames(_read_all(s))
    assert [t for t, _ in frames] == [f.FrameType.ERROR], frames
    code, reason = f.decode_error(frames[0][1])
    assert code == f.ErrorCode.TIMEOUT and "timed out" in reason
    with no_accept:
        assert [t for t, _ in _frames(_read_all(no_accept))] == [f.FrameType.AUTHENTICATOR]
    with silent:
        assert _read_all(silent) == b""


# --- hostile servers against `atls-proxy attest` ------------------------------------------------

E = f.ErrorCode
# behaviour -> (the check the client fails, the ERROR code it answers with; None: it sends none,
# because the server already closed, or sent its own ERROR and closes).
HOSTILE_SERVERS: dict[str, tuple[str, int | None]] = {
    "bad-signature": ("ea.signature", E.VERIFICATION_FAILED),
    "bad-finished": ("ea.finished", E.VERIFICATION_FAILED),
    "wrong-context": ("ea.context", E.MALFORMED),
    "unoffered-extension": ("ea.extensions", E.MALFORMED),
    "no-cmw": ("cmw.present", E.VERIFICATION_FAILED),
    "refuse": ("ea.refused", E.VERIFICATION_FAILED),
    "early-data": ("expat.early-data", E.UNEXPECTED_FRAME),
    "early-data-record": ("expat.early-data", E.UNEXPECTED_FRAME),
    "app-data-first": ("expat.preamble", E.MALFORMED),
    "bad-version": ("expat.version", E.UNSUPPORTED_VERSION),
    "wrong-binder": ("evidence.binder", E.VERIFICATION_FAILED),
    "garbage-cmw": ("cmw.decode", E.VERIFICATION_FAILED),
    "truncated": ("expat.response", None),
    "bad-scheme": ("ea.signature", E.VERIFICATION_FAILED),
    # CertificateVerify covers the Certificate message
    "bad-certificate": ("ea.signature", E.VERIFICATION_FAILED),
    "evidence-flip-payload": ("evidence.signature", E.VERIFICATION_FAILED),
    "evidence-flip-signature": ("evidence.signature", E.VERIFICATION_FAILED),
    "evidence-media-type": ("cmw.media-type", E.VERIFICATION_FAILED),
    "server-error": ("expat.server-error", None),
    "silent": ("expat.response", E.TIMEOUT),
}


@pytest.mark.parametrize("behaviour", sorted(HOSTILE_SERVERS))
async def test_hostile_server(stack: Stack, behaviour: str) -> None:
    # The client fails the right check, and tells the server why with the right ERROR code.
    config = stack.dev / "connect.toml"
    if behaviour == "silent":
        config = stack.dev / "connect-att-timeout.toml"
        config.write_text(
            (stack.dev / "connect.toml")
            .read_text()
            .replace("[client]\n", "[client]\nattestation_timeout = 1.0\n", 1)
        )
    evil = EvilServer(stack.dev, behaviour)
    port = await evil.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "attest",
            f"127.0.0.1:{port}",
            "--config",
            str(config),
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env(),
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        await asyncio.sleep(0.1)  # the server's handler records the client's ERROR frame
    finally:
        evil.close()
    assert proc.returncode == 1, out.decode() + err.decode()
    doc = json.loads(out)
    check, code = HOSTILE_SERVERS[behaviour]
    assert doc["atls.failed-check"]["name"] == check, doc["atls.failed-check"]
    assert evil.client_errors == ([] if code is None else [code])
    assert b"Traceback" not in err
