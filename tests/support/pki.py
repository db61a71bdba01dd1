"""Self-signed certificates of every key type the RFC 9261 code supports, and in-memory TLS pairs."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from atls_proxy.expat.schemes import SigningKey
from atls_proxy.tls.context import ServerIdentity, client_context, server_context
from atls_proxy.tls.engine import TLSEngine

NOW = datetime.datetime.now(datetime.UTC)


def make_key(kind: str) -> SigningKey:
    if kind == "p256":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "p384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    if kind == "rsa":
        return rsa.generate_private_key(65537, 2048)
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "ed448":
        return ed448.Ed448PrivateKey.generate()
    raise ValueError(kind)


def self_signed(
    key: SigningKey, name: str = "localhost", extra_names: tuple[str, ...] = ()
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    algo = (
        None
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
        else hashes.SHA256()
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in (name, *extra_names)]),
            critical=False,
        )
        .sign(key, algo)
    )


def identity(kind: str = "p256") -> ServerIdentity:
    key = make_key(kind)
    return ServerIdentity((self_signed(key),), key)


def tls_pair(
    ident: ServerIdentity, ciphersuite: str | None = None, client_ctx: SSL.Context | None = None
) -> tuple[TLSEngine, TLSEngine]:
    """A client and a server engine with a completed TLS 1.3 handshake, joined in memory; the
    client's context is ``client_ctx``, or one that does not verify the server's chain."""
    sctx = server_context(ident)
    if ciphersuite:
        sctx.set_tls13_ciphersuites(ciphersuite.encode())
    server = TLSEngine(sctx, server_side=True)
    client = TLSEngine(
        client_ctx or client_context(None, verify_pki=False),
        server_side=False,
        server_name="localhost",
    )
    for _ in range(8):
        client.handshake()
        server.feed(client.outgoing())
        server.handshake()
        client.feed(server.outgoing())
        if client.handshake() and server.handshake_complete:
            server.feed(client.outgoing())
            return client, server
    raise AssertionError("handshake did not complete")
