"""TLSEngine in memory: every outcome of the direct-to-OpenSSL fast paths (feed, outgoing, read,
write, export) against pyOpenSSL's own behaviour — data, "need more", close_notify, truncation,
tampering, output larger than one scratch buffer, exporter values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from atls_proxy.tls.context import server_context
from atls_proxy.tls.engine import READ_CHUNK, TLSEngine, TLSError
from tests.support.pki import identity, tls_pair


def _drain(engine: TLSEngine) -> bytes:
    out = b""
    while (chunk := engine.read()) not in (None, b""):
        out += chunk
    return out


def test_round_trip_and_need_more() -> None:
    client, server = tls_pair(identity())
    assert server.read() is None  # nothing sent yet: "need more", not an error
    assert client.outgoing() == b""  # empty BIO
    client.write(b"hello")
    wire = client.outgoing()
    server.feed(wire[:3])  # a partial record is buffered, not an error
    assert server.read() is None
    server.feed(wire[3:])
    assert server.read() == b"hello"
    assert server.read() is None


def test_output_larger_than_one_scratch_buffer() -> None:
    """A write of several records whose ciphertext exceeds READ_CHUNK leaves in full."""
    client, server = tls_pair(identity())
    payload = os.urandom(3 * READ_CHUNK + 123)
    client.write(payload)
    wire = client.outgoing()
    assert len(wire) > 3 * READ_CHUNK
    assert client.outgoing() == b""
    server.feed(wire)
    assert _drain(server) == payload


def test_close_notify_reads_as_empty() -> None:
    client, server = tls_pair(identity())
    client.write(b"last")
    client.close_notify()
    server.feed(client.outgoing())
    assert server.read() == b"last"
    assert server.read() == b""


def test_eof_without_close_notify_is_truncation() -> None:
    client, server = tls_pair(identity())
    client.write(b"partial")
    server.feed(client.outgoing())
    assert server.read() == b"partial"
    server.feed_eof()
    with pytest.raises(TLSError, match="unexpected EOF"):
        server.read()
    with pytest.raises(TLSError):  # the engine stays broken
        server.read()


def test_tampered_record_is_an_error() -> None:
    client, server = tls_pair(identity())
    client.write(b"x" * 100)
    wire = bytearray(client.outgoing())
    wire[-5] ^= 0x01  # inside the AEAD tag
    server.feed(bytes(wire))
    with pytest.raises(TLSError, match="TLS error"):
        server.read()
    with pytest.raises(TLSError):
        server.write(b"after")


def test_exporter_matches_pyopenssl_and_both_sides() -> None:
    client, server = tls_pair(identity())
    for context in (None, b"", b"ctx"):
        ours = client.export(b"EXPORTER-test", 32, context)
        assert ours == server.export(b"EXPORTER-test", 32, context)
        assert ours == client._conn.export_keying_material(b"EXPORTER-test", 32, context)
    # RFC 8446 §7.5: under TLS 1.3 no context and an empty context export the same value.
    assert client.export(b"EXPORTER-test", 48, None) == client.export(b"EXPORTER-test", 48, b"")
    assert client.export(b"EXPORTER-test", 32, b"a") != client.export(b"EXPORTER-test", 32, b"b")


def test_exporter_and_hash_need_the_handshake() -> None:
    engine = TLSEngine(server_context(identity()), server_side=True)
    with pytest.raises(RuntimeError):
        engine.export(b"EXPORTER-test", 32, None)
    with pytest.raises(RuntimeError):
        _ = engine.hash_name


@pytest.mark.parametrize(
    ("suite", "expected"),
    [("TLS_AES_128_GCM_SHA256", "sha256"), ("TLS_AES_256_GCM_SHA384", "sha384")],
)
def test_hash_name_follows_the_suite(suite: str, expected: str) -> None:
    client, server = tls_pair(identity(), ciphersuite=suite)
    assert client.hash_name == server.hash_name == expected


def test_peer_certificate_der_is_the_peer_certificate() -> None:
    client, server = tls_pair(identity("p256"))
    leaf = client.peer_certificate()
    assert leaf is not None
    assert client.peer_certificate_der() == leaf.public_bytes(Encoding.DER)
    assert server.peer_certificate_der() is None  # no client certificate was asked for


def test_a_failed_exporter_call_leaves_no_openssl_error_for_the_next_connection() -> None:
    from OpenSSL._util import lib

    client, _ = tls_pair(identity("p256"))
    lib.ERR_clear_error()
    with pytest.raises(TLSError):
        client.export(b"x" * 300, 32, None)  # longer than OpenSSL accepts for a label
    assert lib.ERR_peek_error() == 0  # else another connection's failure would be named by it


def test_sni_is_sent_without_a_trailing_dot() -> None:
    # RFC 6066 §3: the host name in SNI has no trailing dot ("name." is the same host).
    from atls_proxy.tls.engine import _sni

    assert _sni("example.com.") == b"example.com" == _sni("example.com")
    assert _sni("127.0.0.1") is None and _sni("[::1]") is None


def test_chain_verified_says_what_the_handshake_did(tmp_path: Path) -> None:
    # The client's report claims "chain verified" from this, not from its settings: a context
    # that does not verify (verify_pki = false, or an embedder's own) reads False.
    from atls_proxy.ops.devinit import dev_init
    from atls_proxy.tls.context import client_context, load_server_identity

    dev_init(tmp_path)
    ident = load_server_identity(tmp_path / "server.pem", tmp_path / "server-key.pem")
    for ctx, verified in (
        (client_context(tmp_path / "ca.pem", verify_pki=True), True),
        (client_context(None, verify_pki=False), False),
    ):
        client, server = tls_pair(ident, client_ctx=ctx)
        assert client.handshake_complete
        assert client.chain_verified() is verified
        assert client.session_reused() is False and server.session_reused() is False
