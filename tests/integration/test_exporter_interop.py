"""The TLS exporter (RFC 8446 §7.5) of our engine against an independent implementation: the
``openssl`` command-line tool's ``-keymatexport``, as client and as server."""

from __future__ import annotations

import asyncio
import re
import shutil

import pytest
from cryptography.hazmat.primitives import serialization

from atls_proxy.proxy.stream import TLSStream
from atls_proxy.tls.context import client_context, server_context
from atls_proxy.tls.engine import TLSEngine
from tests.support.pki import identity

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI absent"),
]

LABELS = [
    (b"EXPORTER-cmw-attestation", 32),
    (b"EXPORTER-server authenticator handshake context", 48),
    (b"EXPORTER-client authenticator finished key", 32),
]


def _parse(output: str) -> dict[bytes, bytes]:
    found = {}
    for label, hexval in re.findall(
        r"Label: '([^']+)'.*?Keying material: ([0-9A-Fa-f]+)", output, re.S
    ):
        found[label.encode()] = bytes.fromhex(hexval)
    return found


@pytest.mark.parametrize("label,length", LABELS)
@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"])
async def test_server_exporter_matches_s_client(label: bytes, length: int, suite: str) -> None:
    ident = identity("p256")
    ctx = server_context(ident)
    ctx.set_tls13_ciphersuites(suite.encode())
    ours: list[tuple[bytes, bytes, str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = TLSStream(reader, writer, TLSEngine(ctx, server_side=True))
        await asyncio.wait_for(stream.handshake(), 10)
        e = stream.engine
        ours.append((e.export(label, length, None), e.export(label, length, b""), e.cipher))
        await stream.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-tls1_3",
        "-keymatexport",
        label.decode(),
        "-keymatexportlen",
        str(length),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    server.close()
    theirs = _parse(out.decode(errors="replace"))
    assert ours, out.decode(errors="replace")
    no_ctx, empty_ctx, cipher = ours[0]
    assert cipher == suite
    assert theirs[label] == no_ctx == empty_ctx  # TLS 1.3: no context equals an empty context


@pytest.mark.parametrize("label,length", LABELS)
async def test_client_exporter_matches_s_server(tmp_path, label: bytes, length: int) -> None:  # type: ignore[no-untyped-def]
    ident = identity("p384")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(ident.chain[0].public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        ident.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    from tests.support.procs import free_port

    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_server",
        "-accept",
        str(port),
        "-cert",
        str(cert),
        "-key",
        str(key),
        "-tls1_3",
        "-naccept",
        "1",
        "-keymatexport",
        label.decode(),
        "-keymatexportlen",
        str(length),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(200):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("s_server did not start")
        stream = TLSStream(
            reader,
            writer,
            TLSEngine(client_context(None, False), server_side=False, server_name="localhost"),
        )
        await asyncio.wait_for(stream.handshake(), 10)
        ours = stream.engine.export(label, length, b"")
        await stream.close()
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert _parse(out.decode(errors="replace"))[label] == ours
