"""A deliberately small COSE_Sign1 (RFC 9052 §4.2, §4.4) for ES256 only, on cbor2 + cryptography.

Theory of operation
-------------------
Only what the software evidence format needs, and nothing that could be tricked:

* one algorithm, ES256 (RFC 9053 §2.1: ECDSA over P-256 with SHA-256). ``alg`` MUST be in the
  protected header; there is no algorithm negotiation, so no downgrade to a weaker algorithm;
* the signature is the raw ``r ‖ s``, 32 bytes each, big-endian (RFC 9053 §2.1), never DER;
* the ``Sig_structure`` is ``["Signature1", body_protected, external_aad = h'', payload]``
  (RFC 9052 §4.4), built from the protected header bytes *as received* — never re-encoded;
* decoding is strict and bounded (``decode_cbor``): a size cap before anything is parsed, a CBOR
  well-formedness walk that rejects indefinite lengths, non-shortest heads, tags, unassigned simple
  values, non-int/text map keys and duplicate map keys, and a nesting-depth cap; only then does cbor2
  convert the bytes. Any exception cbor2 might still raise becomes ``DecodeError``.

Tagging: this module writes tag 18 (COSE_Sign1, RFC 9052 §2) and **requires** it on input. RFC 9052
§2 lets the application context stand in for the tag, but the only producer of this format is our
own software attester, whose profile fixes tag 18 (docs/PROTOCOL.md); one accepted encoding means
one parse path. A CWT tag 61 wrapper (RFC 8392 §6) is rejected for the same reason.

Duplicate map keys are rejected (RFC 8949 §5.6 leaves them to the application; RFC 9052 §3 forbids
duplicate header labels): otherwise two parsers could read different claims under one signature.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from atls_proxy.cborwalk import Walker
from atls_proxy.errors import DecodeError, VerificationError
from atls_proxy.untrusted import shown

# Evidence arrives in the cmw_attestation extension, whose data is uint16-length-prefixed inside a
# uint16-prefixed extension (expat-04 §3; digest open point O-13): nothing larger than 64 KiB can
# ever arrive there. Refusing bigger input before decoding also bounds what cbor2 may allocate.
MAX_COSE_SIGN1_SIZE = 64 * 1024

# COSE_Sign1 is tag → array → bstr; the software claims nest map → map (measurements). Eight levels
# leave headroom for any sane header or claims layout while stopping deep-nesting recursion long
# before Python's recursion limit (cbor2's own default is 400).
MAX_CBOR_DEPTH = 8

# RFC 9052 §2, Table 1: CBOR tag of COSE_Sign1.
COSE_SIGN1_TAG = 18
# RFC 9052 §3.1, Table 2: common header parameter labels.
HEADER_ALG = 1
HEADER_CRIT = 2
HEADER_KID = 4
# RFC 9053 §2.1: ES256 = ECDSA w/ SHA-256 on P-256.
ALG_ES256 = -7
# RFC 9053 §2.1: the signature is r ‖ s, each the size of the curve order (32 bytes for P-256).
ES256_COORDINATE_SIZE = 32
ES256_SIGNATURE_SIZE = 2 * ES256_COORDINATE_SIZE
# RFC 9052 §4.4: the context string of a COSE_Sign1 Sig_structure.
SIGNATURE1_CONTEXT = "Signature1"
# Protected-header labels this module understands, for the ``crit`` check (RFC 9052 §3.1).
_UNDERSTOOD_LABELS = frozenset({HEADER_ALG, HEADER_CRIT, HEADER_KID})


# ----------------------------------------------------------------------------------------------
# Strict CBOR decoding
# ----------------------------------------------------------------------------------------------


def decode_cbor(data: bytes, what: str, *, outer_tag: int | None = None) -> Any:
    """Decode one CBOR item strictly (module docstring); raise ``DecodeError`` on any problem.

    With ``outer_tag``, the item must be exactly that tag (shortest head) around the content, and
    the content is returned; tags are rejected everywhere else.
    """
    if len(data) > MAX_COSE_SIGN1_SIZE:
        raise DecodeError(f"{what}: {len(data)} bytes exceeds the {MAX_COSE_SIGN1_SIZE}-byte cap")
    data = bytes(data)
    walker = Walker(data, what, max_depth=MAX_CBOR_DEPTH)
    body = data
    if outer_tag is not None:
        walker.tag(outer_tag)
        body = data[walker.position :]
    walker.item(1 if outer_tag is not None else 0)
    walker.end()
    try:
        # The walk proved the input tame; cbor2 only converts. Still, nothing it raises escapes.
        return cbor2.CBORDecoder(io.BytesIO(body), max_depth=MAX_CBOR_DEPTH + 1).decode()
    except Exception as exc:
        raise DecodeError(f"{what}: CBOR decoding failed: {exc}") from exc


# ----------------------------------------------------------------------------------------------
# COSE_Sign1
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sign1:
    """A structurally valid, not yet verified, ES256 COSE_Sign1."""

    protected: bytes  # the serialized protected header exactly as received (RFC 9052 §3)
    kid: bytes | None  # the protected ``kid`` (RFC 9052 §3.1), a hint only
    payload: bytes
    signature: bytes  # raw r ‖ s

    def to_be_signed(self) -> bytes:
        """RFC 9052 §4.4: ``Sig_structure = ["Signature1", protected, external_aad, payload]``."""
        return _sig_structure(self.protected, self.payload)

    def verify(self, keys: Sequence[ec.EllipticCurvePublicKey]) -> int:
        """Return the index of the first key in ``keys`` whose signature check passes.

        Raises ``VerificationError("evidence.signature", ...)`` when none does.
        """
        _check_public_keys(keys)
        if not keys:
            raise VerificationError("evidence.signature", "no trusted keys to verify against")
        r = int.from_bytes(self.signature[:ES256_COORDINATE_SIZE], "big")
        s = int.from_bytes(self.signature[ES256_COORDINATE_SIZE:], "big")
        der = encode_dss_signature(r, s)
        tbs = self.to_be_signed()
        for index, key in enumerate(keys):
            try:
                key.verify(der, tbs, ec.ECDSA(hashes.SHA256()))
            except (InvalidSignature, ValueError):
                continue
            return index
        raise VerificationError(
            "evidence.signature", f"the ES256 signature verifies with none of {len(keys)} keys"
        )


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    # RFC 9052 §4.4 (external_aad is empty here) encoded deterministically (RFC 9052 §9; cbor2
    # writes definite lengths with shortest heads).
    return cbor2.dumps([SIGNATURE1_CONTEXT, protected, b"", payload])


def _check_public_keys(keys: Sequence[ec.EllipticCurvePublicKey]) -> None:
    for key in keys:
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ValueError("ES256 verification keys must be P-256 public keys (RFC 9053 §2.1)")


def _check_protected(header: Any, unprotected: dict[Any, Any]) -> bytes | None:
    """Validate the decoded protected header map; return its ``kid`` (or None)."""
    if not isinstance(header, dict):
        raise DecodeError("COSE_Sign1: protected header is not a map")
    alg = header.get(HEADER_ALG)
    if alg is None:
        raise DecodeError("COSE_Sign1: the protected header has no alg (RFC 9052 §3.1)")
    if type(alg) is not int or alg != ALG_ES256:
        raise DecodeError(f"COSE_Sign1: protected alg is {shown(alg)}, only ES256 (-7) is accepted")
    if HEADER_CRIT in header:
        crit = header[HEADER_CRIT]
        # RFC 9052 §3.1: crit is a non-empty array of labels that must all be present and understood.
        if not isinstance(crit, list) or not crit:
            raise DecodeError("COSE_Sign1: crit must be a non-empty array")
        for label in crit:
            if type(label) not in (int, str):
                raise DecodeError(f"COSE_Sign1: crit label {shown(label)} is not an int or text")
            if label not in header:
                raise DecodeError(f"COSE_Sign1: crit names absent header {shown(label)}")
            if label not in _UNDERSTOOD_LABELS:
                raise DecodeError(f"COSE_Sign1: unknown critical header {shown(label)}")
    kid = header.get(HEADER_KID)
    if kid is not None and not isinstance(kid, bytes):
        raise DecodeError("COSE_Sign1: kid is not a byte string")
    # RFC 9052 §3: a label must not appear in both buckets; alg and crit belong in the protected one.
    both = set(header) & set(unprotected)
    if both:
        labels = ", ".join(sorted(map(repr, both)))
        raise DecodeError(f"COSE_Sign1: header labels {labels} in both protected and unprotected")
    if HEADER_ALG in unprotected or HEADER_CRIT in unprotected:
        raise DecodeError("COSE_Sign1: alg and crit must be protected")
    return kid


def decode_sign1(data: bytes) -> Sign1:
    """Parse a tagged ES256 COSE_Sign1 strictly, without verifying it. Raises ``DecodeError``."""
    msg = decode_cbor(data, "COSE_Sign1", outer_tag=COSE_SIGN1_TAG)
    # RFC 9052 §4.2: COSE_Sign1 = [protected: bstr, unprotected: map, payload: bstr / nil, sig: bstr]
    if not isinstance(msg, list) or len(msg) != 4:
        raise DecodeError("COSE_Sign1: not an array of exactly 4 elements")
    protected, unprotected, payload, signature = msg
    if not isinstance(protected, bytes):
        raise DecodeError("COSE_Sign1: protected header is not a byte string")
    if not isinstance(unprotected, dict):
        raise DecodeError("COSE_Sign1: unprotected header is not a map")
    if not isinstance(payload, bytes):
        # nil would mean a detached payload (RFC 9052 §4.1); evidence is never detached.
        raise DecodeError("COSE_Sign1: payload is not a byte string")
    if not isinstance(signature, bytes) or len(signature) != ES256_SIGNATURE_SIZE:
        raise DecodeError(f"COSE_Sign1: signature is not {ES256_SIGNATURE_SIZE} bytes (r ‖ s)")
    # RFC 9052 §3: a zero-length protected bstr stands for the empty map.
    header = decode_cbor(protected, "COSE_Sign1 protected header") if protected else {}
    kid = _check_protected(header, unprotected)
    return Sign1(protected=protected, kid=kid, payload=payload, signature=signature)


def verify_sign1(data: bytes, keys: Sequence[ec.EllipticCurvePublicKey]) -> tuple[bytes, int]:
    """Decode and verify an ES256 COSE_Sign1; return ``(payload, index of the verifying key)``.

    Raises ``DecodeError`` for malformed input and ``VerificationError("evidence.signature", ...)``
    when no key in ``keys`` verifies the signature. ``ValueError`` if a key is not P-256.
    """
    message = decode_sign1(data)
    return message.payload, message.verify(keys)


def sign1(payload: bytes, key: ec.EllipticCurvePrivateKey, kid: bytes | None = None) -> bytes:
    """Produce a tagged COSE_Sign1 over ``payload`` with ES256 (RFC 9052 §4.2, §4.4)."""
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("ES256 needs a P-256 private key (RFC 9053 §2.1)")
    header: dict[int, Any] = {HEADER_ALG: ALG_ES256}
    if kid is not None:
        header[HEADER_KID] = bytes(kid)
    # RFC 8949 §4.2.1 deterministic encoding (keys sorted: 1 before 4).
    protected = cbor2.dumps(header, canonical=True)
    der = key.sign(_sig_structure(protected, payload), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = r.to_bytes(ES256_COORDINATE_SIZE, "big") + s.to_bytes(ES256_COORDINATE_SIZE, "big")
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))
