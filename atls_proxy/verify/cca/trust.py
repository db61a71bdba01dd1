"""Trust inputs of the CCA verifier: the CPAK public keys an operator trusts (sans-IO).

A CCA platform token is signed by the CCA Platform Attestation Key (CPAK). Arm publishes no root
certificate for it: each silicon vendor endorses its CPAKs (usually through Veraison-style
endorsement stores). This verifier therefore takes the trusted CPAKs as public keys, in any of:

* a PEM ``PUBLIC KEY`` (SubjectPublicKeyInfo, RFC 5280 §4.1.2.7) — e.g. ``cca_platform.pub``;
* a DER SubjectPublicKeyInfo;
* a JWK (RFC 7517 §4, ``kty`` = ``EC``, RFC 7518 §6.2.1) — e.g. trustee's ``cpak-pub.json``;
* a JWK Set (RFC 7517 §5, ``{"keys": [...]}``);
* a Veraison/trustee trust-anchor store: a JSON list of ``{"pkey": JWK, "implementation-id":
  hex, "instance-id": hex}``; the two ids bind the key to one platform, and the appraisal checks
  them (``cca.platform.cpak-binding``). A key bound by any entry stays bound: an unbound copy of
  it (the same key as a PEM or a bare JWK) does not lift the binding (``CcaTrust.bindings_of``).

Keys must be P-256, P-384 or P-521 (the curves of ES256/ES384/ES512). Known TEST keys are
recognised by fingerprint and named in the appraisal (``KNOWN_TEST_CPAKS``); they are not rejected:
an operator who put one in the trust folder chose to trust it.
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
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import DecodeError
from atls_proxy.untrusted import json_loads

# A key file is a few hundred bytes; a trust-anchor store with one entry per platform of a fleet
# a few KiB per dozen. 1 MiB bounds what a wrong file can make us parse.
MAX_KEY_FILE_SIZE = 1024 * 1024
# Every trusted key may be tried on each token (the token carries no key id): 256 covers a fleet
# of platform types while bounding the ECDSA work one token can cause.
MAX_TRUSTED_CPAKS = 256

# RFC 7518 §6.2.1.1: JWK "crv" names.
_JWK_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)

# SHA-256 of the DER SubjectPublicKeyInfo of CPAKs whose private key is published test material.
# The TF-M / TF-RMM test CPAK (P-384): its private key ships as cca_platform.pem in TF-M tools
# (iat-verifier) and in veraison/ccatoken realm/testvectors/tf-rmm, and as cpak-priv.json in
# trustee's deps/verifier/test_data/cca; both vector tokens are signed with it.
KNOWN_TEST_CPAKS: dict[str, str] = {
    "0928f896cb02326566530a62a1e36329a12d0a4a308f4fc81e8ff5560bca6bca": (
        "the published TF-M/TF-RMM TEST CPAK (its private key is public): not silicon"
    ),
}


@dataclass(frozen=True, slots=True)
class TrustedCpak:
    """One trusted CPAK public key, with where it came from and optional platform binding."""

    key: ec.EllipticCurvePublicKey
    source: str
    implementation_id: bytes | None = None
    instance_id: bytes | None = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER SubjectPublicKeyInfo, hex."""
        der = self.key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()

    @property
    def test_key_note(self) -> str | None:
        return KNOWN_TEST_CPAKS.get(self.fingerprint)

    @property
    def bound(self) -> bool:
        """True when a trust-anchor store binds this key to an implementation-id / instance-id."""
        return self.implementation_id is not None or self.instance_id is not None


@dataclass(frozen=True, slots=True)
class CcaTrust:
    """The trusted CPAKs (built by ``atls_proxy.ops.cca_files.load_cca_trust``)."""

    cpaks: tuple[TrustedCpak, ...]

    def __post_init__(self) -> None:
        if len(self.cpaks) > MAX_TRUSTED_CPAKS:
            raise ValueError(f"more than {MAX_TRUSTED_CPAKS} trusted CPAKs")
        object.__setattr__(self, "cpaks", tuple(self.cpaks))

    def same_key(self, cpak: TrustedCpak) -> tuple[TrustedCpak, ...]:
        """Every trusted entry holding ``cpak``'s key (the same key may come from several files)."""
        fingerprint = cpak.fingerprint
        return tuple(c for c in self.cpaks if c is cpak or c.fingerprint == fingerprint)

    def bindings_of(self, cpak: TrustedCpak) -> tuple[TrustedCpak, ...]:
        """The entries binding ``cpak``'s key to a platform; a token signed by it must match one.

        An unbound entry for the same key does not lift the binding: whoever installed a
        trust-anchor store said which platform the key speaks for.
        """
        return tuple(c for c in self.same_key(cpak) if c.bound)


def _check_curve(key: object, source: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _CURVES):
        raise DecodeError(f"{source}: a CPAK must be a P-256, P-384 or P-521 EC public key")
    return key


def _b64url(value: Any, name: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise DecodeError(f"{source}: JWK {name} is not a string")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"{source}: JWK {name} is not base64url") from exc


def jwk_public_key(jwk: Any, source: str) -> ec.EllipticCurvePublicKey:
    """An EC public key from a JWK object (RFC 7518 §6.2.1). Raises ``DecodeError``."""
    if not isinstance(jwk, dict):
        raise DecodeError(f"{source}: a JWK is a JSON object")
    if jwk.get("kty") != "EC":
        raise DecodeError(f"{source}: JWK kty is {jwk.get('kty')!r}, a CPAK is an EC key")
    if "d" in jwk:
        raise DecodeError(f"{source}: the JWK holds a private key (d); give the public key only")
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


def _hex_id(value: Any, name: str, source: str) -> bytes:
    if not isinstance(value, str):
        raise DecodeError(f"{source}: {name} is not a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise DecodeError(f"{source}: {name} is not hex") from exc


def parse_cpak_file(data: bytes, source: str) -> list[TrustedCpak]:
    """The trusted CPAK(s) in one file's bytes (module docstring for the formats).

    Raises ``DecodeError`` naming ``source``.
    """
    if len(data) > MAX_KEY_FILE_SIZE:
        raise DecodeError(f"{source}: larger than {MAX_KEY_FILE_SIZE} bytes")
    stripped = data.lstrip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise DecodeError(f"{source}: not a PEM public key: {exc}") from exc
        return [TrustedCpak(_check_curve(key, source), source)]
    if stripped.startswith((b"{", b"[")):
        try:
            doc = json_loads(data)
        except ValueError as exc:
            raise DecodeError(f"{source}: not JSON: {exc}") from exc
        return _from_json(doc, source)
    try:
        key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DecodeError(f"{source}: neither PEM, JSON (JWK) nor a DER public key") from exc
    return [TrustedCpak(_check_curve(key, source), source)]


def _from_json(doc: Any, source: str) -> list[TrustedCpak]:
    if isinstance(doc, dict) and "keys" in doc:
        keys = doc["keys"]
        if not isinstance(keys, list) or not keys:
            raise DecodeError(f"{source}: JWK Set 'keys' is not a non-empty list")
        return [
            TrustedCpak(jwk_public_key(k, f"{source} keys[{i}]"), f"{source} keys[{i}]")
            for i, k in enumerate(keys)
        ]
    if isinstance(doc, dict):
        return [TrustedCpak(jwk_public_key(doc, source), source)]
    if isinstance(doc, list) and doc:
        out = []
        for i, entry in enumerate(doc):
            where = f"{source}[{i}]"
            if not isinstance(entry, dict) or "pkey" not in entry:
                raise DecodeError(f"{where}: a trust-anchor entry is an object with a 'pkey' JWK")
            impl = entry.get("implementation-id")
            inst = entry.get("instance-id")
            out.append(
                TrustedCpak(
                    jwk_public_key(entry["pkey"], where),
                    where,
                    implementation_id=None if impl is None else _hex_id(impl, "impl-id", where),
                    instance_id=None if inst is None else _hex_id(inst, "instance-id", where),
                )
            )
        return out
    raise DecodeError(f"{source}: JSON is neither a JWK, a JWK Set nor a trust-anchor list")


def build_cca_trust(cpaks: Sequence[TrustedCpak]) -> CcaTrust:
    """A ``CcaTrust`` from keys (duplicates by fingerprint and binding dropped, order kept)."""
    seen: set[tuple[str, bytes | None, bytes | None]] = set()
    out: list[TrustedCpak] = []
    for c in cpaks:
        ident = (c.fingerprint, c.implementation_id, c.instance_id)
        if ident not in seen:
            seen.add(ident)
            out.append(c)
    return CcaTrust(tuple(out))
