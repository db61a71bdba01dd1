"""Strict decoding of an Arm CCA attestation token (sans-IO; nothing here verifies a signature).

Theory of operation
-------------------
A CCA attestation token (RMM specification DEN0137 §A7.2 "Realm attestation token";
draft-ffm-rats-cca-token "CCA Attestation Token") is a CBOR tag 399 around a map of exactly two
entries, each a byte string holding a tagged COSE_Sign1 (RFC 9052 §4.2, tag 18)::

    399({ 44234: bstr .cbor COSE_Sign1_Tagged,     # CCA platform token, signed by the CPAK
          44241: bstr .cbor COSE_Sign1_Tagged })   # realm token, signed by the RAK

Decoding happens in three layers, each strict and bounded:

1. ``_collection_length`` reads only the CBOR heads of the collection (tag, map of two, two
   uint keys, two bstr lengths) to find where the signed structure ends, so that padding after it
   can be reported instead of rejected (the shared verifier contract, point 3).
2. ``atls_proxy.verify.cose.decode_cbor`` (size cap, well-formedness walk: shortest heads, no
   indefinite lengths, no tags but the outer one, no duplicate map keys, depth cap) decodes the
   collection, each COSE_Sign1, each protected header and each claims map.
3. ``parse_platform_claims`` / ``parse_realm_claims`` type-check every claim this verifier uses:
   mandatory claims present, CBOR major types exact (``type() is``, so ``True`` is not an int),
   byte strings of the sizes the specifications fix. Unknown claims are ignored (RFC 8392 §3).

COSE algorithms (RFC 9053 §2.1): ES256, ES384 and ES512. The algorithm MUST be in the protected
header; the verifier later insists that the key's curve is the algorithm's curve, so there is no
algorithm confusion. The realm public key claim (44237) comes in two encodings: a raw uncompressed
SEC1 point (RMM 1.0-EAC5 and the legacy ``http://arm.com/CCA-SSD/1.0.0`` tokens, both vectors) or
a CBOR-encoded COSE_Key (RFC 9052 §7, EC2; RMM 1.0-REL0, realm profile
``tag:arm.com,2023:realm#1.0.0``). Both are accepted; the platform challenge binds the claim's
bytes as they appear, whatever the encoding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from atls_proxy.errors import DecodeError
from atls_proxy.untrusted import shown
from atls_proxy.verify.cose import COSE_SIGN1_TAG, decode_cbor

# Evidence travels in a CMW inside cmw_attestation (uint16 lengths, expat-04 §3): 64 KiB is the
# most that can arrive; a real CCA token is 1-3 KB. Checked before any parsing.
MAX_TOKEN_SIZE = 64 * 1024

# RMM DEN0137 §A7.2.1 / draft-ffm-rats-cca-token: the collection tag and its two keys.
CCA_COLLECTION_TAG = 399
PLATFORM_TOKEN_KEY = 44234
REALM_TOKEN_KEY = 44241

# RFC 9052 §3.1 Table 2: header labels.
HEADER_ALG = 1
HEADER_CRIT = 2
_UNDERSTOOD_LABELS = frozenset({1, 2, 3, 4})  # alg, crit, content type, kid


@dataclass(frozen=True, slots=True)
class CoseAlg:
    """One ECDSA COSE algorithm (RFC 9053 §2.1)."""

    name: str
    curve: type[ec.EllipticCurve]
    hash: type[hashes.HashAlgorithm]
    coordinate_size: int  # r and s are each this many bytes, big-endian


# RFC 9053 §2.1, Table 1: ES256 = -7, ES384 = -35, ES512 = -36; the signature is r ‖ s, each the
# size of the curve order (32, 48, 66 bytes).
COSE_ALGS: dict[int, CoseAlg] = {
    -7: CoseAlg("ES256", ec.SECP256R1, hashes.SHA256, 32),
    -35: CoseAlg("ES384", ec.SECP384R1, hashes.SHA384, 48),
    -36: CoseAlg("ES512", ec.SECP521R1, hashes.SHA512, 66),
}

# IANA "Named Information Hash Algorithm" names used by the hash-algo-id claims (RMM §A7.2.3,
# draft-ffm-rats-cca-token), with their hashlib name and digest size.
HASH_ALGS: dict[str, tuple[str, int]] = {
    "sha-256": ("sha256", 32),
    "sha-384": ("sha384", 48),
    "sha-512": ("sha512", 64),
}

# Platform claim keys (draft-ffm-rats-cca-token "CCA Platform Claims"; PSA token RFC 9783 keys).
CLAIM_PROFILE = 265  # eat_profile, RFC 9711 §4.3.2
CLAIM_CHALLENGE = 10  # eat nonce, RFC 9711 §4.1
CLAIM_INSTANCE_ID = 256  # ueid, RFC 9711 §4.2.1
CLAIM_LIFECYCLE = 2395
CLAIM_IMPLEMENTATION_ID = 2396
CLAIM_SW_COMPONENTS = 2399
CLAIM_VERIFICATION_SERVICE = 2400
CLAIM_PLATFORM_CONFIG = 2401
CLAIM_PLATFORM_HASH_ALG = 2402
# sw-component map keys (RFC 9783 §4.4.1 "Software Components", reused by CCA).
SW_MEASUREMENT_TYPE = 1
SW_MEASUREMENT_VALUE = 2
SW_VERSION = 4
SW_SIGNER_ID = 5
SW_MEASUREMENT_DESC = 6

# Realm claim keys (RMM DEN0137 §A7.2.3 "Realm token claims").
CLAIM_REALM_PERSONALIZATION = 44235
CLAIM_REALM_HASH_ALG = 44236
CLAIM_REALM_PUBLIC_KEY = 44237
CLAIM_REALM_RIM = 44238
CLAIM_REALM_REMS = 44239
CLAIM_REALM_PUBLIC_KEY_HASH_ALG = 44240

# Profiles (draft-ffm-rats-cca-token "Profile"): the legacy one both vectors carry, and the 2023
# platform and realm profiles of RMM 1.0-REL0.
PLATFORM_PROFILES = ("http://arm.com/CCA-SSD/1.0.0", "tag:arm.com,2023:cca_platform#1.0.0")
REALM_PROFILES = ("tag:arm.com,2023:realm#1.0.0",)

# Security lifecycle ranges (draft-ffm-rats-cca-token "CCA Platform Lifecycle"; the PSA ranges of
# RFC 9783 §4.3.2 with CCA names): each state is a 0x_000..0x_0ff range of the claim.
LIFECYCLE_STATES: tuple[tuple[str, int, int], ...] = (
    ("unknown", 0x0000, 0x00FF),
    ("assembly-and-test", 0x1000, 0x10FF),
    ("cca-platform-rot-provisioning", 0x2000, 0x20FF),
    ("secured", 0x3000, 0x30FF),
    ("non-cca-platform-rot-debug", 0x4000, 0x40FF),
    ("recoverable-cca-platform-rot-debug", 0x5000, 0x50FF),
    ("decommissioned", 0x6000, 0x60FF),
)
LIFECYCLE_NAMES = tuple(name for name, _, _ in LIFECYCLE_STATES)

# Sizes the specifications fix.
PLATFORM_CHALLENGE_SIZES = (32, 48, 64)  # a hash of the RAK (draft-ffm-rats-cca-token)
REALM_CHALLENGE_SIZE = 64  # RMM §A7.2.3: the challenge the realm passed to RSI_ATTEST_TOKEN_INIT
PERSONALIZATION_SIZE = 64  # RMM §A7.2.3: Realm Personalization Value
IMPLEMENTATION_ID_SIZE = 32  # RFC 9783 §4.2.2 (PSA) / CCA: 32 bytes
INSTANCE_ID_SIZE = 33  # RFC 9783 §4.2.1: UEID type RAND (0x01) ‖ 32-byte hash of the CPAK
UEID_TYPE_RAND = 0x01
DIGEST_SIZES = (32, 48, 64)  # measurement values and signer IDs (RFC 9783 §4.4.1)
REM_COUNT = 4  # RMM §A7.2.3: four Realm Extensible Measurements
# Claim caps, not spec sizes: a TF-A/RSE boot measures about a dozen components; 64 bounds the
# per-token work. Text claims (profile URIs, component names, versions, the verification-service
# URL) are short; 512 characters keeps an absurd value out of reports. Platform config is opaque
# (the FVP puts 4 bytes there); 4 KiB bounds it.
MAX_SW_COMPONENTS = 64
MAX_TEXT_LENGTH = 512
MAX_CONFIG_SIZE = 4096

# SEC1 §2.3.3 uncompressed point: 0x04 ‖ x ‖ y. Lengths for P-256, P-384, P-521.
_RAW_POINT_CURVES: dict[int, type[ec.EllipticCurve]] = {
    65: ec.SECP256R1,
    97: ec.SECP384R1,
    133: ec.SECP521R1,
}
# RFC 9053 §7.1 Table 18: COSE elliptic curves for EC2 keys; RFC 9052 §7.1 key labels.
_COSE_CURVES: dict[int, type[ec.EllipticCurve]] = {
    1: ec.SECP256R1,
    2: ec.SECP384R1,
    3: ec.SECP521R1,
}
COSE_KEY_KTY, COSE_KEY_CRV, COSE_KEY_X, COSE_KEY_Y, COSE_KEY_D = 1, -1, -2, -3, -4
COSE_KTY_EC2 = 2


# ----------------------------------------------------------------------------------------------
# Structures
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CoseSign1:
    """A structurally valid, not yet verified, COSE_Sign1 with an ECDSA algorithm."""

    protected: bytes  # the serialized protected header exactly as received (RFC 9052 §3)
    alg_id: int
    payload: bytes
    signature: bytes  # raw r ‖ s

    @property
    def alg(self) -> CoseAlg:
        return COSE_ALGS[self.alg_id]

    def to_be_signed(self) -> bytes:
        """RFC 9052 §4.4: ``["Signature1", protected, external_aad = h'', payload]``."""
        return cbor2.dumps(["Signature1", self.protected, b"", self.payload])


@dataclass(frozen=True, slots=True)
class SwComponent:
    """One entry of the platform's sw-components claim (RFC 9783 §4.4.1)."""

    measurement_type: str | None
    measurement_value: bytes
    version: str | None
    signer_id: bytes
    description: str | None  # the measurement's hash algorithm, e.g. "sha-256"

    def label(self) -> str:
        return self.measurement_type if self.measurement_type is not None else "(untyped)"


@dataclass(frozen=True, slots=True)
class PlatformClaims:
    profile: str
    challenge: bytes
    implementation_id: bytes
    instance_id: bytes
    config: bytes
    lifecycle: int
    sw_components: tuple[SwComponent, ...]
    verification_service: str | None
    hash_algorithm: str


@dataclass(frozen=True, slots=True)
class RealmClaims:
    profile: str | None
    challenge: bytes
    personalization_value: bytes
    hash_algorithm: str  # of RIM and REMs
    public_key_claim: bytes  # the RAK claim bytes as received (bound by the platform challenge)
    public_key_encoding: str  # "raw" or "cose-key"
    public_key_hash_algorithm: str
    initial_measurement: bytes
    extensible_measurements: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class CcaToken:
    """A decoded, type-checked and not yet verified CCA attestation token."""

    platform: CoseSign1
    realm: CoseSign1
    platform_claims: PlatformClaims
    realm_claims: RealmClaims
    realm_key: ec.EllipticCurvePublicKey
    signed_length: int  # bytes of the tag-399 item
    trailing: bytes  # whatever followed it (padding), not part of the token


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------


def _head(data: bytes, pos: int) -> tuple[int, int, int]:
    """Return (major type, argument, next position) of the CBOR head at ``pos`` (RFC 8949 §3)."""
    if pos >= len(data):
        raise DecodeError("CCA token: truncated")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        raise DecodeError(f"CCA token: unsupported CBOR head at offset {pos - 1}")
    size = 1 << (info - 24)
    if pos + size > len(data):
        raise DecodeError("CCA token: truncated")
    return major, int.from_bytes(data[pos : pos + size], "big"), pos + size


def _collection_length(data: bytes) -> int:
    """Length of the tag-399 collection at the start of ``data`` (heads only; see the docstring)."""
    major, arg, pos = _head(data, 0)
    if major != 6 or arg != CCA_COLLECTION_TAG:
        raise DecodeError(f"CCA token: not a CBOR tag {CCA_COLLECTION_TAG} collection")
    major, count, pos = _head(data, pos)
    if major != 5 or count != 2:
        raise DecodeError("CCA token: the collection is not a map of exactly two tokens")
    for _ in range(count):
        major, _key, pos = _head(data, pos)
        if major != 0:
            raise DecodeError("CCA token: a collection key is not an unsigned integer")
        major, length, pos = _head(data, pos)
        if major != 2:
            raise DecodeError("CCA token: a collection entry is not a byte string")
        if length > len(data) - pos:
            raise DecodeError("CCA token: truncated")
        pos += length
    return pos


def parse_sign1(data: bytes, what: str) -> CoseSign1:
    """Parse a tagged COSE_Sign1 with an ES256/ES384/ES512 protected alg. Raises ``DecodeError``."""
    msg = decode_cbor(data, what, outer_tag=COSE_SIGN1_TAG)
    # RFC 9052 §4.2: [protected: bstr, unprotected: map, payload: bstr / nil, signature: bstr]
    if not isinstance(msg, list) or len(msg) != 4:
        raise DecodeError(f"{what}: not a COSE_Sign1 array of 4 elements")
    protected, unprotected, payload, signature = msg
    if type(protected) is not bytes or not protected:
        raise DecodeError(f"{what}: protected header is not a non-empty byte string")
    if not isinstance(unprotected, dict):
        raise DecodeError(f"{what}: unprotected header is not a map")
    if type(payload) is not bytes:
        raise DecodeError(f"{what}: payload is not a byte string (detached payloads refused)")
    if type(signature) is not bytes:
        raise DecodeError(f"{what}: signature is not a byte string")
    header = decode_cbor(protected, f"{what} protected header")
    if not isinstance(header, dict):
        raise DecodeError(f"{what}: protected header is not a map")
    alg_id = header.get(HEADER_ALG)
    if type(alg_id) is not int or alg_id not in COSE_ALGS:
        names = ", ".join(f"{a.name} ({i})" for i, a in COSE_ALGS.items())
        raise DecodeError(f"{what}: protected alg {shown(alg_id)} is not one of {names}")
    if HEADER_ALG in unprotected or HEADER_CRIT in unprotected:
        raise DecodeError(f"{what}: alg and crit must be protected (RFC 9052 §3.1)")
    if set(header) & set(unprotected):
        raise DecodeError(f"{what}: a header label is both protected and unprotected")
    if HEADER_CRIT in header:
        crit = header[HEADER_CRIT]
        if not isinstance(crit, list) or not crit:
            raise DecodeError(f"{what}: crit must be a non-empty array (RFC 9052 §3.1)")
        for label in crit:
            # RFC 9052 §3.1: a label is an int or a tstr. Checked first, by exact type: an array
            # label is unhashable (the membership tests would raise TypeError) and True / 1.0
            # compare equal to the label 1 (alg) without being it.
            if type(label) not in (int, str):
                raise DecodeError(f"{what}: crit label {shown(label)} is not an int or text")
            if label not in header or label not in _UNDERSTOOD_LABELS:
                raise DecodeError(f"{what}: critical header {shown(label)} not understood")
    alg = COSE_ALGS[alg_id]
    if len(signature) != 2 * alg.coordinate_size:
        raise DecodeError(
            f"{what}: {alg.name} signature is {len(signature)} bytes, not {2 * alg.coordinate_size}"
        )
    return CoseSign1(protected=protected, alg_id=alg_id, payload=payload, signature=signature)


def _get(claims: dict[Any, Any], key: int, name: str, kind: type, what: str) -> Any:
    if key not in claims:
        raise DecodeError(f"{what}: mandatory claim {name} ({key}) is missing")
    value = claims[key]
    if type(value) is not kind:
        raise DecodeError(f"{what}: claim {name} ({key}) is not a {kind.__name__}")
    return value


def _opt(claims: dict[Any, Any], key: int, name: str, kind: type, what: str) -> Any:
    return _get(claims, key, name, kind, what) if key in claims else None


def _sized(value: bytes, sizes: tuple[int, ...], name: str, what: str) -> bytes:
    if len(value) not in sizes:
        allowed = ", ".join(map(str, sizes))
        raise DecodeError(f"{what}: {name} is {len(value)} bytes, not {allowed}")
    return value


def _text(value: str | None, name: str, what: str) -> str | None:
    if value is not None and len(value) > MAX_TEXT_LENGTH:
        raise DecodeError(f"{what}: {name} is longer than {MAX_TEXT_LENGTH} characters")
    return value


def _hash_alg(value: str, name: str, what: str) -> str:
    if value not in HASH_ALGS:
        raise DecodeError(
            f"{what}: {name} {value[:32]!r} is not one of {', '.join(HASH_ALGS)} "
            "(IANA Named Information names)"
        )
    return value


def _claims_map(payload: bytes, what: str) -> dict[Any, Any]:
    claims = decode_cbor(payload, what)
    if not isinstance(claims, dict):
        raise DecodeError(f"{what}: not a map")
    return claims


def _sw_component(raw: Any, index: int) -> SwComponent:
    what = f"platform sw-component [{index}]"
    if not isinstance(raw, dict):
        raise DecodeError(f"{what}: not a map")
    mtype = _text(_opt(raw, SW_MEASUREMENT_TYPE, "measurement-type", str, what), "type", what)
    value = _get(raw, SW_MEASUREMENT_VALUE, "measurement-value", bytes, what)
    version = _text(_opt(raw, SW_VERSION, "version", str, what), "version", what)
    signer = _get(raw, SW_SIGNER_ID, "signer-id", bytes, what)
    desc = _text(_opt(raw, SW_MEASUREMENT_DESC, "measurement-desc", str, what), "desc", what)
    return SwComponent(
        measurement_type=mtype,
        measurement_value=_sized(value, DIGEST_SIZES, "measurement-value", what),
        version=version,
        signer_id=_sized(signer, DIGEST_SIZES, "signer-id", what),
        description=desc,
    )


def parse_platform_claims(payload: bytes) -> PlatformClaims:
    """Decode and type-check the CCA platform claims. Raises ``DecodeError``."""
    what = "platform claims"
    c = _claims_map(payload, what)
    profile = _text(_get(c, CLAIM_PROFILE, "profile", str, what), "profile", what)
    assert profile is not None
    challenge = _get(c, CLAIM_CHALLENGE, "challenge", bytes, what)
    impl = _get(c, CLAIM_IMPLEMENTATION_ID, "implementation-id", bytes, what)
    inst = _get(c, CLAIM_INSTANCE_ID, "instance-id", bytes, what)
    if len(inst) != INSTANCE_ID_SIZE or inst[0] != UEID_TYPE_RAND:
        raise DecodeError(f"{what}: instance-id is not a 33-byte RAND UEID (0x01 ‖ 32 bytes)")
    config = _get(c, CLAIM_PLATFORM_CONFIG, "platform-config", bytes, what)
    if len(config) > MAX_CONFIG_SIZE:
        raise DecodeError(f"{what}: platform-config is larger than {MAX_CONFIG_SIZE} bytes")
    lifecycle = _get(c, CLAIM_LIFECYCLE, "lifecycle", int, what)
    if not 0 <= lifecycle <= 0xFFFF:
        raise DecodeError(f"{what}: lifecycle {lifecycle} is not a uint16")
    raw_sw = _get(c, CLAIM_SW_COMPONENTS, "sw-components", list, what)
    if not raw_sw:
        raise DecodeError(f"{what}: sw-components is empty (at least one is required)")
    if len(raw_sw) > MAX_SW_COMPONENTS:
        raise DecodeError(f"{what}: more than {MAX_SW_COMPONENTS} sw-components")
    vsi = _text(_opt(c, CLAIM_VERIFICATION_SERVICE, "verification-service", str, what), "vsi", what)
    hash_alg = _hash_alg(_get(c, CLAIM_PLATFORM_HASH_ALG, "hash-algo-id", str, what), "hash", what)
    return PlatformClaims(
        profile=profile,
        challenge=_sized(challenge, PLATFORM_CHALLENGE_SIZES, "challenge", what),
        implementation_id=_sized(impl, (IMPLEMENTATION_ID_SIZE,), "implementation-id", what),
        instance_id=inst,
        config=config,
        lifecycle=lifecycle,
        sw_components=tuple(_sw_component(s, i) for i, s in enumerate(raw_sw)),
        verification_service=vsi,
        hash_algorithm=hash_alg,
    )


def parse_realm_claims(payload: bytes) -> RealmClaims:
    """Decode and type-check the realm claims (RMM §A7.2.3). Raises ``DecodeError``."""
    what = "realm claims"
    c = _claims_map(payload, what)
    profile = _text(_opt(c, CLAIM_PROFILE, "profile", str, what), "profile", what)
    challenge = _get(c, CLAIM_CHALLENGE, "challenge", bytes, what)
    rpv = _get(c, CLAIM_REALM_PERSONALIZATION, "personalization-value", bytes, what)
    hash_alg = _hash_alg(_get(c, CLAIM_REALM_HASH_ALG, "hash-algo-id", str, what), "hash", what)
    key = _get(c, CLAIM_REALM_PUBLIC_KEY, "public-key", bytes, what)
    key_hash = _hash_alg(
        _get(c, CLAIM_REALM_PUBLIC_KEY_HASH_ALG, "public-key-hash-algo-id", str, what),
        "public-key-hash-algo-id",
        what,
    )
    size = HASH_ALGS[hash_alg][1]
    rim = _sized(_get(c, CLAIM_REALM_RIM, "initial-measurement", bytes, what), (size,), "RIM", what)
    rems = _get(c, CLAIM_REALM_REMS, "extensible-measurements", list, what)
    if len(rems) != REM_COUNT:
        raise DecodeError(f"{what}: {len(rems)} extensible measurements, not {REM_COUNT}")
    for i, rem in enumerate(rems):
        if type(rem) is not bytes:
            raise DecodeError(f"{what}: REM{i} is not a byte string")
        _sized(rem, (size,), f"REM{i} ({hash_alg})", what)
    encoding = "raw" if key[:1] == b"\x04" and len(key) in _RAW_POINT_CURVES else "cose-key"
    return RealmClaims(
        profile=profile,
        challenge=_sized(challenge, (REALM_CHALLENGE_SIZE,), "challenge", what),
        personalization_value=_sized(rpv, (PERSONALIZATION_SIZE,), "personalization", what),
        hash_algorithm=hash_alg,
        public_key_claim=key,
        public_key_encoding=encoding,
        public_key_hash_algorithm=key_hash,
        initial_measurement=rim,
        extensible_measurements=tuple(rems),
    )


def realm_public_key(claims: RealmClaims) -> ec.EllipticCurvePublicKey:
    """The RAK from claim 44237: a raw SEC1 point or a COSE_Key (module docstring)."""
    data = claims.public_key_claim
    if claims.public_key_encoding == "raw":
        curve = _RAW_POINT_CURVES[len(data)]
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(curve(), data)
        except ValueError as exc:
            raise DecodeError(f"realm public key: not a point on {curve.name}") from exc
    key = decode_cbor(data, "realm public key (COSE_Key)")
    if not isinstance(key, dict):
        raise DecodeError("realm public key: neither a raw EC point nor a COSE_Key map")
    if key.get(COSE_KEY_KTY) != COSE_KTY_EC2 or type(key.get(COSE_KEY_KTY)) is not int:
        raise DecodeError("realm public key: COSE_Key kty is not EC2 (2)")
    if COSE_KEY_D in key:
        raise DecodeError("realm public key: COSE_Key carries a private key (d)")
    crv = key.get(COSE_KEY_CRV)
    x, y = key.get(COSE_KEY_X), key.get(COSE_KEY_Y)
    if type(crv) is not int or crv not in _COSE_CURVES:
        raise DecodeError(f"realm public key: COSE_Key crv {crv!r} is not P-256/P-384/P-521")
    curve = _COSE_CURVES[crv]
    n = (curve().key_size + 7) // 8
    if type(x) is not bytes or type(y) is not bytes or len(x) != n or len(y) != n:
        raise DecodeError(f"realm public key: COSE_Key x/y are not {n}-byte strings")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve(), b"\x04" + x + y)
    except ValueError as exc:
        raise DecodeError(f"realm public key: not a point on {curve.name}") from exc


def parse_token(data: bytes) -> CcaToken:
    """Decode a CCA attestation token strictly (module docstring). Raises ``DecodeError`` only."""
    data = bytes(data)
    if len(data) > MAX_TOKEN_SIZE:
        raise DecodeError(f"CCA token: {len(data)} bytes exceeds the {MAX_TOKEN_SIZE}-byte cap")
    end = _collection_length(data)
    collection = decode_cbor(data[:end], "CCA token", outer_tag=CCA_COLLECTION_TAG)
    if not isinstance(collection, dict) or set(collection) != {
        PLATFORM_TOKEN_KEY,
        REALM_TOKEN_KEY,
    }:
        raise DecodeError(
            f"CCA token: the collection must hold exactly keys {PLATFORM_TOKEN_KEY} (platform) "
            f"and {REALM_TOKEN_KEY} (realm)"
        )
    platform = parse_sign1(collection[PLATFORM_TOKEN_KEY], "platform token")
    realm = parse_sign1(collection[REALM_TOKEN_KEY], "realm token")
    platform_claims = parse_platform_claims(platform.payload)
    realm_claims = parse_realm_claims(realm.payload)
    return CcaToken(
        platform=platform,
        realm=realm,
        platform_claims=platform_claims,
        realm_claims=realm_claims,
        realm_key=realm_public_key(realm_claims),
        signed_length=end,
        trailing=data[end:],
    )


def lifecycle_state(value: int) -> str | None:
    """The lifecycle state name of a claim value, or None outside every defined range."""
    for name, low, high in LIFECYCLE_STATES:
        if low <= value <= high:
            return name
    return None


def hash_of(algorithm: str, data: bytes) -> bytes:
    """Digest of ``data`` with an IANA-named algorithm from ``HASH_ALGS``."""
    return hashlib.new(HASH_ALGS[algorithm][0], data).digest()
