"""Building pyOpenSSL contexts for attested listeners and clients, and checking server names.

Decisions (DESIGN.md §3, digest §1.6, §9):

* TLS 1.3 only. Exported authenticators over TLS 1.2 would need the Extended Master Secret and the
  Expat profile assumes 1.3; nothing is gained by allowing 1.2.
* No resumption: ``OP_NO_TICKET`` plus ``SESS_CACHE_OFF`` on the server (pyOpenSSL cannot set
  ``SSL_CTX_set_num_tickets(0)``: OpenSSL's default stateful tickets are still sent but can
  never resume, digest O-9);
  clients never call ``set_session``. No 0-RTT: OpenSSL's default ``max_early_data`` is 0.
* ``MODE_RELEASE_BUFFERS`` frees OpenSSL's record buffers on idle connections.
* Server names are checked against subjectAltName only (RFC 6125 §6.4.4: no CN fallback), with a
  wildcard allowed only as the whole left-most label.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID
from OpenSSL import SSL

from atls_proxy.errors import ConfigError
from atls_proxy.expat.schemes import SIGNING_KEY_TYPES, SigningKey
from atls_proxy.expat.spki import canonical_key_problem
from atls_proxy.ops.files import read_capped

# A certificate or key file larger than this is not a certificate or key.
MAX_PEM_FILE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """The server's PKI identity: leaf first, then intermediates, and the leaf's key (the AIK)."""

    chain: tuple[x509.Certificate, ...]
    private_key: SigningKey

    @property
    def chain_der(self) -> tuple[bytes, ...]:
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in self.chain)


def _read(path: Path, key: str) -> bytes:
    try:
        data = read_capped(path, MAX_PEM_FILE)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_PEM_FILE:
        raise ConfigError(key, f"{path} is larger than {MAX_PEM_FILE} bytes")
    return data


def load_certificates(path: Path, key: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(_read(path, key))
    except ValueError as exc:
        raise ConfigError(key, f"{path} holds no PEM certificate: {exc}") from None
    return certs


def load_server_identity(cert_path: Path, key_path: Path) -> ServerIdentity:
    chain = load_certificates(cert_path, "server.certificate")
    try:
        key = serialization.load_pem_private_key(
            _read(key_path, "server.private_key"), password=None
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            "server.private_key", f"{key_path} is not an unencrypted PEM private key: {exc}"
        ) from None
    if not isinstance(key, SIGNING_KEY_TYPES):
        raise ConfigError(
            "server.private_key", f"{key_path}: unsupported key type {type(key).__name__}"
        )
    try:
        problem = canonical_key_problem(chain[0])
    except ValueError as exc:
        problem = f"its DER does not parse: {exc}"
    if problem is not None:
        raise ConfigError("server.certificate", f"{cert_path}: unsupported certificate: {problem}")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != chain[0].public_key().public_bytes(der, spki):
        raise ConfigError(
            "server.private_key", f"{key_path} does not match the certificate in {cert_path}"
        )
    return ServerIdentity(tuple(chain), key)


def _base_context() -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return ctx


def server_context(identity: ServerIdentity) -> SSL.Context:
    ctx = _base_context()
    ctx.use_certificate(identity.chain[0])
    for extra in identity.chain[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(identity.private_key)
    ctx.check_privatekey()
    return ctx


def client_context(ca_path: Path | None, verify_pki: bool) -> SSL.Context:
    """A client context; with ``verify_pki`` the handshake fails unless the chain reaches ``ca_path``."""
    ctx = _base_context()
    if verify_pki:
        if ca_path is None:
            raise ConfigError("client.ca", "a CA file is required unless verify_pki = false")
        load_certificates(ca_path, "client.ca")  # clear error before OpenSSL's
        ctx.load_verify_locations(str(ca_path))
        # OpenSSL's own verification, no Python callback: nothing to run per certificate, and no
        # cffi callback trampoline (which needs writable+executable memory, so the connect unit
        # could not use MemoryDenyWriteExecute).
        ctx.set_verify(SSL.VERIFY_PEER)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


def hostname_matches(cert: x509.Certificate, name: str) -> bool:
    """RFC 6125 §6.4: match ``name`` (DNS name or IP literal) against subjectAltName only."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        assert isinstance(san, x509.SubjectAlternativeName)
        dns_names = san.get_values_for_type(x509.DNSName)
        ips = san.get_values_for_type(x509.IPAddress)
    except x509.ExtensionNotFound:
        return False
    except ValueError:  # OpenSSL verified it, but cryptography cannot decode a name: no match
        return False
    try:
        ip = ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        ip = None
    if ip is not None:
        return ip in ips
    want = name.lower().rstrip(".")
    if not want:
        return False
    for pattern in dns_names:
        pat = pattern.lower().rstrip(".")
        if pat == want:
            return True
        # "*.example.com" matches exactly one left-most label; not "*.com" (needs >= 2 labels).
        if pat.startswith("*.") and pat.count(".") >= 2 and "." in want:
            left, rest = want.split(".", 1)
            if left and rest == pat[2:]:
                return True
    return False
