"""Trust inputs of the TPM verifier: the attestation keys (AKs) an operator trusts (sans-IO).

A TPM quote is only as good as the reason to believe its AK lives in a TPM. That reason (an EK
certificate chain and TPM2_ActivateCredential, a cloud's signed AK, or the Azure HCL report bound
to an SNP/TDX report) is established outside this verifier: it takes the resulting AK public keys
as trust anchors. Accepted forms:

* PEM ``PUBLIC KEY`` or DER SubjectPublicKeyInfo (RSA or EC P-256/P-384/P-521);
* a JWK (RFC 7517; ``kty`` RSA or EC) or a JWK Set;
* an Azure HCL report (``azure.parse_hcl_report``): its ``HCLAkPub``.

Keys are compared as DER SubjectPublicKeyInfo after parsing, so the PEM/DER/JWK spelling of one
key does not matter.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import DecodeError
from atls_proxy.untrusted import json_loads
from atls_proxy.verify.tpm.azure import rsa_jwk_public_key

# A key file is under 1 KiB; an HCL report 2600 bytes; 1 MiB bounds a wrong file.
MAX_KEY_FILE_SIZE = 1024 * 1024
# A quote without an AK hint is tried against every trusted AK: 256 bounds that work.
MAX_TRUSTED_AKS = 256
# RSA below 2048 bits is not an acceptable AK (TCG PC Client profiles require RSA-2048 or more).
MIN_RSA_BITS = 2048

AkKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_JWK_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}


def spki_der(key: AkKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def ak_fingerprint(key: AkKey) -> str:
    """SHA-256 of the AK's DER SubjectPublicKeyInfo, hex: how the AK is named in reports."""
    return hashlib.sha256(spki_der(key)).hexdigest()


def check_ak(key: object, source: str) -> AkKey:
    """``key`` if it is an acceptable AK type and size; ``DecodeError`` otherwise."""
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise DecodeError(f"{source}: RSA-{key.key_size} is too small for an AK")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _EC_CURVES):
        return key
    raise DecodeError(f"{source}: an AK must be RSA-2048+ or EC P-256/P-384/P-521")


def load_spki(data: bytes, source: str) -> AkKey:
    """An AK from DER SubjectPublicKeyInfo. Raises ``DecodeError``."""
    try:
        key = serialization.load_der_public_key(bytes(data))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DecodeError(f"{source}: not a DER SubjectPublicKeyInfo") from exc
    return check_ak(key, source)


@dataclass(frozen=True, slots=True)
class TrustedAk:
    key: AkKey
    source: str

    @property
    def spki(self) -> bytes:
        return spki_der(self.key)

    @property
    def fingerprint(self) -> str:
        return ak_fingerprint(self.key)


@dataclass(frozen=True, slots=True)
class TpmTrust:
    """The trusted AKs (built by ``atls_proxy.ops.tpm_files.load_tpm_trust``)."""

    aks: tuple[TrustedAk, ...]

    def __post_init__(self) -> None:
        if len(self.aks) > MAX_TRUSTED_AKS:
            raise ValueError(f"more than {MAX_TRUSTED_AKS} trusted AKs")
        object.__setattr__(self, "aks", tuple(self.aks))

    def find(self, spki: bytes) -> TrustedAk | None:
        return next((a for a in self.aks if a.spki == spki), None)


def build_tpm_trust(aks: Sequence[TrustedAk]) -> TpmTrust:
    """A ``TpmTrust`` from keys, duplicates dropped (same SPKI), order kept."""
    seen: set[bytes] = set()
    out = []
    for ak in aks:
        if ak.spki not in seen:
            seen.add(ak.spki)
            out.append(ak)
    return TpmTrust(tuple(out))


def _b64url(value: Any, name: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise DecodeError(f"{source}: JWK {name} is not a string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"{source}: JWK {name} is not base64url") from exc


def jwk_ak(jwk: Any, source: str) -> AkKey:
    """An AK from a JWK (RFC 7518 §6.2.1 EC, §6.3.1 RSA). Raises ``DecodeError``."""
    if not isinstance(jwk, dict):
        raise DecodeError(f"{source}: a JWK is a JSON object")
    if "d" in jwk or "p" in jwk:
        raise DecodeError(f"{source}: the JWK holds a private key; give the public key only")
    if jwk.get("kty") == "RSA":
        try:
            return check_ak(rsa_jwk_public_key(jwk), source)
        except DecodeError as exc:
            raise DecodeError(f"{source}: {exc}") from exc
    if jwk.get("kty") != "EC":
        raise DecodeError(f"{source}: JWK kty must be RSA or EC")
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in _JWK_CURVES:
        raise DecodeError(f"{source}: JWK crv {crv!r} is not P-256, P-384 or P-521")
    curve = _JWK_CURVES[crv]
    n = (curve().key_size + 7) // 8
    x, y = _b64url(jwk.get("x"), "x", source), _b64url(jwk.get("y"), "y", source)
    if len(x) != n or len(y) != n:
        raise DecodeError(f"{source}: JWK x and y must be {n} bytes for {crv}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve(), b"\x04" + x + y)
    except ValueError as exc:
        raise DecodeError(f"{source}: JWK point is not on {crv}") from exc


def parse_ak_file(data: bytes, source: str) -> list[TrustedAk]:
    """The AK(s) in one key file's bytes: PEM, DER or JSON (JWK / JWK Set). ``DecodeError``."""
    if len(data) > MAX_KEY_FILE_SIZE:
        raise DecodeError(f"{source}: larger than {MAX_KEY_FILE_SIZE} bytes")
    stripped = data.lstrip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise DecodeError(f"{source}: not a PEM public key: {exc}") from exc
        return [TrustedAk(check_ak(key, source), source)]
    if stripped.startswith(b"{"):
        try:
            doc = json_loads(data)
        except ValueError as exc:
            raise DecodeError(f"{source}: not JSON: {exc}") from exc
        if isinstance(doc, dict) and "keys" in doc:
            keys = doc["keys"]
            if not isinstance(keys, list) or not keys:
                raise DecodeError(f"{source}: JWK Set 'keys' is not a non-empty list")
            return [
                TrustedAk(jwk_ak(k, f"{source} keys[{i}]"), f"{source} keys[{i}]")
                for i, k in enumerate(keys)
            ]
        return [TrustedAk(jwk_ak(doc, source), source)]
    return [TrustedAk(load_spki(data, source), source)]
