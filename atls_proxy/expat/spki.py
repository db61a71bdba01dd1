"""The certificate key this profile binds evidence to, and which keys it accepts for that.

Expat binds evidence to the end-entity certificate's DER SubjectPublicKeyInfo (docs/PROTOCOL.md
§3; digest O-3). Both ends here compute it with ``cryptography``'s ``public_bytes(DER,
SubjectPublicKeyInfo)``, which *re-encodes* the key: for the usual keys (an EC point in the
uncompressed form, an rsaEncryption or Ed25519 key) that is the certificate's own SPKI byte for
byte, but a compressed EC point comes back uncompressed, and an id-RSASSA-PSS key (RFC 4055)
comes back as rsaEncryption without its parameters. A peer that hashes the certificate's own
bytes would then compute another binder, and an RSASSA-PSS key would be used with the
``rsa_pss_rsae_*`` schemes that RFC 8446 §4.2.3 reserves for rsaEncryption keys. Such
certificates are refused — by ``serve`` at start (a configuration error) and by the relying
party (``ea.certificate``) — so that the SPKI bound is always the certificate's own.

``certificate_spki`` reads the SPKI bytes out of the certificate's DER (RFC 5280 §4.1:
TBSCertificate's seventh field, after the optional [0] version) with the project's strict DER
reader (``atls_proxy.der``).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy import der

# RFC 4055 §1.2: id-RSASSA-PSS.
OID_RSASSA_PSS = "1.2.840.113549.1.1.10"


def certificate_spki(data: bytes) -> bytes:
    """The SubjectPublicKeyInfo element of an X.509 certificate, as its DER carries it;
    ``DecodeError`` (a ValueError) for anything but one well-formed certificate."""
    what = "certificate"
    cert = der.sequence(der.parse_single(data, der.TAG_SEQUENCE, what), what)
    tbs = der.sequence(cert.read(der.TAG_SEQUENCE), f"{what}: TBSCertificate")
    tbs.read_optional(der.TAG_CONTEXT)  # [0] EXPLICIT version
    for _ in range(5):  # serialNumber, signature, issuer, validity, subject
        tbs.read()
    return tbs.read(der.TAG_SEQUENCE).raw


def canonical_key_problem(cert: x509.Certificate, cert_der: bytes | None = None) -> str | None:
    """Why this profile cannot bind evidence to ``cert``'s key (module docstring), or None."""
    if cert.public_key_algorithm_oid.dotted_string == OID_RSASSA_PSS:
        return (
            "an id-RSASSA-PSS key (RFC 4055): only rsaEncryption RSA keys are supported, with "
            "the rsa_pss_rsae_* schemes (RFC 8446 §4.2.3)"
        )
    own = certificate_spki(cert_der if cert_der is not None else cert.public_bytes(Encoding.DER))
    key = cert.public_key()
    if own != key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo):
        how = (
            "its rsaEncryption parameters must be NULL (RFC 3279 §2.3.1)"
            if isinstance(key, rsa.RSAPublicKey)
            else "its EC point must be uncompressed"
            if isinstance(key, ec.EllipticCurvePublicKey)
            else "it must be in the key type's canonical DER"
        )
        return (
            "its SubjectPublicKeyInfo is not in the canonical DER encoding: evidence is bound "
            f"to the key's canonical SPKI, which would differ from the certificate's own bytes; "
            f"reissue it ({how})"
        )
    return None
