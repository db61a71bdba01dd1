"""The attacks the design exists to stop (docs/SECURITY.md), each performed against the real CLI.

Every test asserts the client's rejection (the failed check, by name) and that no request reached
the backend. The relaying attackers forward to the genuine server after the exchange, so there
the test also counts the bytes that would have come back; the replaying ones have no upstream.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Stack, backend_requests, serve_variant, start_server
from tests.support.evil import RelayMITM, ReplayServer, issue_leaf, record_genuine, write_identity
from tests.support.procs import CLI, Procs, env, free_port, require, run_cli, wait_port

pytestmark = pytest.mark.integration


async def attest(port: int, config: Path, *extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "attest",
        f"127.0.0.1:{port}",
        "--config",
        str(config),
        "--json",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert b"Traceback" not in err, err.decode()
    return proc.returncode or 0, json.loads(out)


async def curl_through_connect(ps: Procs, config: Path, server_port: int) -> bytes:
    """Start `atls-proxy connect` towards ``server_port`` and fetch through it with curl."""
    port = free_port()
    client = ps.cli(
        "connect",
        "connect",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        "--server",
        f"127.0.0.1:{server_port}",
    )
    await asyncio.to_thread(wait_port, port, client)
    proc = await asyncio.create_subprocess_exec(
        require("curl"),
        "-s",
        "--max-time",
        "15",
        f"http://127.0.0.1:{port}/hello.txt",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return out


# --- relay --------------------------------------------------------------------------------------


@pytest.mark.parametrize("resign", [False, True], ids=["pure-relay", "relay-with-stolen-tls-key"])
async def test_relay_is_rejected(stack: Stack, ps: Procs, resign: bool) -> None:
    """A man in the middle the client's PKI trusts relays the Expat exchange to the genuine server.

    Pure relay: the authenticator is bound to the MITM↔server connection, so its CertificateVerify
    fails on the client↔MITM connection. With the server's TLS key stolen, the MITM re-signs the
    authenticator for the client's connection, but the evidence's binder is still the upstream
    connection's: the binder check fails.
    """
    front = issue_leaf(stack.dev, "localhost") if not resign else _stolen(stack.dev)
    mitm = RelayMITM(front, stack.server_port, resign=resign)
    port = await mitm.start()
    try:
        before = backend_requests(stack.backend)
        code, doc = await attest(port, stack.dev / "connect.toml")
        assert code == 1
        expected = "evidence.binder" if resign else "ea.signature"
        assert doc["atls.failed-check"]["name"] == expected, doc["atls.failed-check"]
        assert await curl_through_connect(ps, stack.dev / "connect.toml", port) == b""
        await asyncio.sleep(0.3)
        assert backend_requests(stack.backend) == before
        assert mitm.relayed_bytes_from_server == 0
    finally:
        mitm.close()


def _stolen(dev: Path):  # type: ignore[no-untyped-def]
    from atls_proxy.tls.context import load_server_identity

    return load_server_identity(dev / "server.pem", dev / "server-key.pem")


# --- replay -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,check", [("authenticator", "ea.context"), ("evidence", "evidence.binder")]
)
async def test_replay_is_rejected(stack: Stack, ps: Procs, mode: str, check: str) -> None:
    """What was recorded on one connection is replayed on another by a holder of the TLS key."""
    auth, cmw = await record_genuine(stack.server_port)
    replay = ReplayServer(stack.dev, auth, cmw, mode)
    port = await replay.start()
    try:
        before = backend_requests(stack.backend)
        code, doc = await attest(port, stack.dev / "connect.toml")
        assert code == 1 and doc["atls.failed-check"]["name"] == check, doc["atls.failed-check"]
        assert await curl_through_connect(ps, stack.dev / "connect.toml", port) == b""
        assert backend_requests(stack.backend) == before
    finally:
        replay.close()


# --- diversion ----------------------------------------------------------------------------------


async def test_diversion_to_wrong_pki_identity(stack: Stack, ps: Procs, tmp_path: Path) -> None:
    """A genuine attested server with valid evidence, but not the server the client asked for."""
    other = issue_leaf(stack.dev, "other.internal")
    write_identity(other, tmp_path / "other.pem", tmp_path / "other-key.pem")
    cfg = tmp_path / "serve-other.toml"
    text = (stack.dev / "serve.toml").read_text()
    text = text.replace('"server.pem"', f'"{tmp_path / "other.pem"}"').replace(
        '"server-key.pem"', f'"{tmp_path / "other-key.pem"}"'
    )
    text = text.replace('"platform-key.pem"', f'"{stack.dev / "platform-key.pem"}"')
    cfg.write_text(text)
    _, port = await asyncio.to_thread(start_server, ps, cfg, stack.backend_port)
    before = backend_requests(stack.backend)
    code, doc = await attest(port, stack.dev / "connect.toml")
    assert code == 1 and doc["atls.failed-check"]["name"] == "tls.hostname"
    assert doc["atls.failed-check"]["observed"] == "other.internal"
    assert await curl_through_connect(ps, stack.dev / "connect.toml", port) == b""
    assert backend_requests(stack.backend) == before


async def test_diversion_to_another_instance(stack: Stack, ps: Procs, tmp_path: Path) -> None:
    """Same measured software, another instance: rejected when the policy pins the instance."""
    from cryptography.hazmat.primitives import serialization

    from atls_proxy.attest.software import platform_ueid
    from atls_proxy.ops.devinit import dev_init

    second = tmp_path / "second"
    dev_init(second)
    # The second instance shares the TLS certificate (a fleet behind one name) and runs the same
    # measured software, but has its own platform key.
    cfg = tmp_path / "serve-second.toml"
    text = (stack.dev / "serve.toml").read_text()
    for name in ("server.pem", "server-key.pem"):
        text = text.replace(f'"{name}"', f'"{stack.dev / name}"')
    text = text.replace('"platform-key.pem"', f'"{second / "platform-key.pem"}"')
    cfg.write_text(text)
    _, port2 = await asyncio.to_thread(start_server, ps, cfg, stack.backend_port)

    pub = serialization.load_pem_public_key((stack.dev / "platform.pem").read_bytes())
    pinned = platform_ueid(pub).hex()  # type: ignore[arg-type]
    policy = (stack.dev / "policy.toml").read_text()
    policy = policy.replace(
        'platform_keys = ["platform.pem"]',
        f'platform_keys = ["{stack.dev / "platform.pem"}", "{second / "platform.pem"}"]\n'
        f'instances = ["{pinned}"]',
    )
    (tmp_path / "pinned-policy.toml").write_text(policy)
    conn = (
        (stack.dev / "connect.toml")
        .read_text()
        .replace('"policy.toml"', f'"{tmp_path / "pinned-policy.toml"}"')
    )
    conn = conn.replace('"ca.pem"', f'"{stack.dev / "ca.pem"}"')
    (tmp_path / "connect-pinned.toml").write_text(conn)

    ok, _ = await attest(stack.server_port, tmp_path / "connect-pinned.toml")
    assert ok == 0  # the pinned instance passes
    code, doc = await attest(port2, tmp_path / "connect-pinned.toml")
    assert code == 1 and doc["atls.failed-check"]["name"] == "evidence.instance"
    before = backend_requests(stack.backend)
    assert await curl_through_connect(ps, tmp_path / "connect-pinned.toml", port2) == b""
    assert backend_requests(stack.backend) == before


# --- downgrade ----------------------------------------------------------------------------------


def test_tls12_client_refused(stack: Stack) -> None:
    before = backend_requests(stack.backend)
    seen = len(stack.server.output())  # start-up's own lines (the readiness probe's) are not this
    res = subprocess.run(
        [
            require("openssl"),
            "s_client",
            "-connect",
            f"127.0.0.1:{stack.server_port}",
            "-tls1_2",
            "-quiet",
        ],
        input=b"GET /hello.txt HTTP/1.0\r\n\r\n",
        capture_output=True,
        timeout=30,
    )
    assert b"hello" not in res.stdout and res.returncode != 0
    assert backend_requests(stack.backend) == before
    # Refused in the handshake, for its version: by the context (OpenSSL: "unsupported
    # protocol") or, behind it, by the engine's own check ("not TLS 1.3").
    deadline = time.monotonic() + 5
    while "check=tls.handshake" not in stack.server.output()[seen:]:
        assert time.monotonic() < deadline, stack.server.output()[seen:]
        time.sleep(0.05)
    new = stack.server.output()[seen:]
    assert "unsupported protocol" in new or "not TLS 1.3" in new, new


def test_tls12_server_refused(stack: Stack, ps: Procs) -> None:
    port = free_port()
    srv = ps.start(
        "s_server12",
        [
            require("openssl"),
            "s_server",
            "-accept",
            str(port),
            "-tls1_2",
            "-www",
            "-cert",
            str(stack.dev / "server.pem"),
            "-key",
            str(stack.dev / "server-key.pem"),
        ],
    )
    wait_port(port, srv)
    res = run_cli(
        "attest", f"127.0.0.1:{port}", "--config", str(stack.dev / "connect.toml"), "--json"
    )
    assert res.returncode == 1
    assert json.loads(res.stdout)["atls.failed-check"]["name"] == "tls.handshake"


def test_silent_client_gets_nothing(stack: Stack, ps: Procs, tmp_path: Path) -> None:
    """A client that completes TLS but never asks for attestation gets nothing, then is closed."""
    import socket
    import ssl
    import time

    cfg = serve_variant(stack.dev, "serve-fast", "attestation_timeout = 1.0")
    srv, port = start_server(ps, cfg, stack.backend_port)
    ctx = ssl.create_default_context(cafile=str(stack.dev / "ca.pem"))
    with ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", port)), server_hostname="localhost"
    ) as s:
        s.settimeout(10)
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - t0 < 5
    assert "check=expat.exchange" in srv.output()
