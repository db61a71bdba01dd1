"""TLS 1.3 signature schemes for CertificateVerify (RFC 8446 §4.2.3), through ``cryptography``.

Only schemes valid in TLS 1.3 are accepted (RFC 9261 §5.2.2): no RSASSA-PKCS1-v1_5, no SHA-1, and
each ECDSA scheme is tied to its curve.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from atls_proxy.errors import VerificationError

SigningKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
"""Private key types that can sign a TLS 1.3 CertificateVerify."""
SIGNING_KEY_TYPES = (
    ec.EllipticCurvePrivateKey,
    rsa.RSAPrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

ECDSA_SECP256R1_SHA256 = 0x0403
ECDSA_SECP384R1_SHA384 = 0x0503
ECDSA_SECP521R1_SHA512 = 0x0603
RSA_PSS_RSAE_SHA256 = 0x0804
RSA_PSS_RSAE_SHA384 = 0x0805
RSA_PSS_RSAE_SHA512 = 0x0806
ED25519 = 0x0807
ED448 = 0x0808
RSA_PSS_PSS_SHA256 = 0x0809
RSA_PSS_PSS_SHA384 = 0x080A
RSA_PSS_PSS_SHA512 = 0x080B

SCHEME_NAMES = {
    ECDSA_SECP256R1_SHA256: "ecdsa_secp256r1_sha256",
    ECDSA_SECP384R1_SHA384: "ecdsa_secp384r1_sha384",
    ECDSA_SECP521R1_SHA512: "ecdsa_secp521r1_sha512",
    RSA_PSS_RSAE_SHA256: "rsa_pss_rsae_sha256",
    RSA_PSS_RSAE_SHA384: "rsa_pss_rsae_sha384",
    RSA_PSS_RSAE_SHA512: "rsa_pss_rsae_sha512",
    ED25519: "ed25519",
    ED448: "ed448",
    RSA_PSS_PSS_SHA256: "rsa_pss_pss_sha256",
    RSA_PSS_PSS_SHA384: "rsa_pss_pss_sha384",
    RSA_PSS_PSS_SHA512: "rsa_pss_pss_sha512",
}

# What a requester offers by default, most preferred first.
DEFAULT_OFFERED = (
    ECDSA_SECP256R1_SHA256,
    ECDSA_SECP384R1_SHA384,
    ED25519,
    RSA_PSS_RSAE_SHA256,
    RSA_PSS_RSAE_SHA384,
    ECDSA_SECP521R1_SHA512,
    RSA_PSS_RSAE_SHA512,
    ED448,
)

_ECDSA: dict[int, tuple[type[ec.EllipticCurve], hashes.HashAlgorithm]] = {
    ECDSA_SECP256R1_SHA256: (ec.SECP256R1, hashes.SHA256()),
    ECDSA_SECP384R1_SHA384: (ec.SECP384R1, hashes.SHA384()),
    ECDSA_SECP521R1_SHA512: (ec.SECP521R1, hashes.SHA512()),
}
# The signature-algorithm objects are immutable: one per scheme, not one per signature.
_ECDSA_ALG = {scheme: ec.ECDSA(h) for scheme, (_, h) in _ECDSA.items()}
_RSA_PSS_RSAE: dict[int, hashes.HashAlgorithm] = {
    RSA_PSS_RSAE_SHA256: hashes.SHA256(),
    RSA_PSS_RSAE_SHA384: hashes.SHA384(),
    RSA_PSS_RSAE_SHA512: hashes.SHA512(),
}


def scheme_name(scheme: int) -> str:
    return SCHEME_NAMES.get(scheme, f"0x{scheme:04x}")


def schemes_for_key(
    key: SigningKey | CertificatePublicKeyTypes,
) -> tuple[int, ...]:
    """The TLS 1.3 schemes a key can sign with, most preferred first.

    rsa_pss_pss_* need an RSASSA-PSS SPKI, which ``cryptography`` keys do not carry; RSA keys here
    are rsaEncryption keys and use rsa_pss_rsae_* (RFC 8446 §4.2.3): certificates with an
    RSASSA-PSS key are refused before a key reaches this (expat/spki.py).
    """
    cls = type(key)
    if cls in _EC_CLASSES:  # the per-signature path: no ABC isinstance checks
        return _EC_SCHEMES.get(key.curve.name, ())  # type: ignore[union-attr]  # EC classes only
    hit = _CLASS_SCHEMES.get(cls)
    if hit is not None:
        return hit
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        _EC_CLASSES.add(cls)
        return _EC_SCHEMES.get(key.curve.name, ())
    found = _schemes_by_class(key)
    if found:
        _CLASS_SCHEMES[cls] = found
    return found


# Concrete key class -> schemes (EC classes: by curve name). Filled as keys are seen.
_EC_CLASSES: set[type] = set()
_EC_SCHEMES: dict[str, tuple[int, ...]] = {curve().name: (s,) for s, (curve, _) in _ECDSA.items()}
_CLASS_SCHEMES: dict[type, tuple[int, ...]] = {}


def _schemes_by_class(key: SigningKey | CertificatePublicKeyTypes) -> tuple[int, ...]:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return (RSA_PSS_RSAE_SHA256, RSA_PSS_RSAE_SHA384, RSA_PSS_RSAE_SHA512)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return (ED25519,)
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return (ED448,)
    return ()


def sign(key: SigningKey, scheme: int, content: bytes) -> bytes:
    if scheme not in schemes_for_key(key):
        raise ValueError(f"key cannot sign with {scheme_name(scheme)}")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(content, _ECDSA_ALG[scheme])
    if isinstance(key, rsa.RSAPrivateKey):
        h = _RSA_PSS_RSAE[scheme]
        return key.sign(content, padding.PSS(padding.MGF1(h), h.digest_size), h)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return key.sign(content)
    raise ValueError(f"unsupported key type {type(key).__name__}")


def verify(key: CertificatePublicKeyTypes, scheme: int, signature: bytes, content: bytes) -> None:
    """Raise ``VerificationError('ea.signature', ...)`` unless ``signature`` is valid."""
    if scheme not in schemes_for_key(key):
        raise VerificationError(
            "ea.signature", f"{scheme_name(scheme)} does not fit the certificate's key"
        )
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, content, _ECDSA_ALG[scheme])
        elif isinstance(key, rsa.RSAPublicKey):
            h = _RSA_PSS_RSAE[scheme]
            # RFC 8446 §4.2.3: salt length equals the digest length.
            key.verify(signature, content, padding.PSS(padding.MGF1(h), h.digest_size), h)
        elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            key.verify(signature, content)
        else:  # pragma: no cover - schemes_for_key() returned () above
            raise VerificationError("ea.signature", "unsupported key type")
    except InvalidSignature:
        raise VerificationError(
            "ea.signature", "CertificateVerify signature does not verify"
        ) from None
