"""TLS context decisions and server-name matching (RFC 6125 §6.4)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from atls_proxy.errors import ConfigError
from atls_proxy.tls.context import (
    client_context,
    hostname_matches,
    load_server_identity,
    server_context,
)
from atls_proxy.tls.engine import TLSEngine, TLSError
from tests.support.pki import NOW, identity, make_key, self_signed, tls_pair


def _cert_with(names: list[x509.GeneralName]) -> x509.Certificate:
    key = make_key("p256")
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "cn.example")]))
        .issuer_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "cn.example")]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW)
    )
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(key, hashes.SHA256())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "san,name,ok",
    [
        ([x509.DNSName("svc.example")], "svc.example", True),
        ([x509.DNSName("svc.example")], "SVC.Example.", True),
        ([x509.DNSName("*.example.com")], "a.example.com", True),
        ([x509.DNSName("*.example.com")], "a.b.example.com", False),
        ([x509.DNSName("*.example.com")], "example.com", False),
        ([x509.DNSName("*.com")], "example.com", False),
        ([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], "127.0.0.1", True),
        ([x509.IPAddress(ipaddress.ip_address("::1"))], "[::1]", True),
        ([x509.DNSName("127.0.0.1")], "127.0.0.1", False),  # an IP must match an iPAddress entry
        ([], "cn.example", False),  # no CN fallback
        ([x509.DNSName("svc.example")], "", False),
    ],
)
def test_hostname_matching(san: list[x509.GeneralName], name: str, ok: bool) -> None:
    assert hostname_matches(_cert_with(san), name) is ok


def _write(tmp: Path, cert: x509.Certificate, key: object) -> tuple[Path, Path]:
    c, k = tmp / "c.pem", tmp / "k.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )  # type: ignore[attr-defined]
    return c, k


def test_identity_errors(tmp_path: Path) -> None:
    key, other = make_key("p256"), make_key("p256")
    cert = self_signed(key)
    c, k = _write(tmp_path, cert, other)
    with pytest.raises(ConfigError) as e:
        load_server_identity(c, k)
    assert e.value.key == "server.private_key"
    c.write_text("not a pem")
    with pytest.raises(ConfigError) as e:
        load_server_identity(c, k)
    assert e.value.key == "server.certificate"
    with pytest.raises(ConfigError):
        client_context(None, verify_pki=True)


def test_tls12_only_peer_refused() -> None:
    from OpenSSL import SSL

    server = TLSEngine(server_context(identity()), server_side=True)
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    client = TLSEngine(ctx, server_side=False)
    client.handshake()
    server.feed(client.outgoing())
    with pytest.raises(TLSError):
        server.handshake()


def test_no_resumption_and_tls13() -> None:
    client, _server = tls_pair(identity())
    assert client.version == "TLSv1.3" and not client.session_reused()


def test_unverified_chain_fails_handshake(tmp_path: Path) -> None:
    ident = identity()
    other_ca = self_signed(make_key("p256"), "other")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(other_ca.public_bytes(serialization.Encoding.PEM))
    server = TLSEngine(server_context(ident), server_side=True)
    client = TLSEngine(
        client_context(ca_file, verify_pki=True), server_side=False, server_name="localhost"
    )
    with pytest.raises(TLSError, match="certificate verify failed"):
        for _ in range(4):
            client.handshake()
            server.feed(client.outgoing())
            server.handshake()
            client.feed(server.outgoing())


def _leaf_with_undecodable_dns_name() -> x509.Certificate:
    """A leaf whose subjectAltName dNSName holds bytes that are not text: OpenSSL verifies such a
    chain, cryptography refuses to decode the name."""
    der = self_signed(make_key("p256"), "leaf", ("localhost",)).public_bytes(
        serialization.Encoding.DER
    )
    # Same length, so every DER length stays right; the signature no longer matters here.
    return x509.load_der_x509_certificate(der.replace(b"localhost", b"localh\xff\xfes"))


def test_an_undecodable_subject_alt_name_is_no_match_not_an_exception() -> None:
    leaf = _leaf_with_undecodable_dns_name()
    with pytest.raises(ValueError):  # the fixture really is undecodable, not merely another name
        leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert hostname_matches(leaf, "localhost") is False
