"""The SIMULATED software attester and its verifier: claims, every check, interop, fuzzing."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import cbor2
import cwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycose.keys.curves import P256
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

from atls_proxy.attest.software import (
    CLAIM_AIK_PUB_HASH,
    CLAIM_EAT_NONCE,
    CLAIM_EAT_PROFILE,
    CLAIM_HASH_ALG,
    CLAIM_IAT,
    CLAIM_MEASUREMENTS,
    CLAIM_SIMULATED,
    CLAIM_SWNAME,
    CLAIM_UEID,
    MAX_MEASUREMENTS,
    SOFTWARE_EAT_PROFILE,
    SOFTWARE_MEDIA_TYPE,
    SOFTWARE_SWNAME,
    SoftwareAttester,
)
from atls_proxy.expat.binding import Binding
from atls_proxy.verify.cose import decode_sign1, sign1
from atls_proxy.verify.policy import SoftwarePolicy
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.software import SoftwareVerifier, parse_media_type

NOW = 1_790_000_000.75
PLATFORM = ec.generate_private_key(ec.SECP256R1())
ROGUE = ec.generate_private_key(ec.SECP256R1())
SECOND = ec.generate_private_key(ec.SECP256R1())
FIRMWARE = hashlib.sha256(b"firmware v1").digest()
FIRMWARE_OLD = hashlib.sha256(b"firmware v0").digest()
KERNEL = hashlib.sha384(b"kernel 6.12").digest()
MEASUREMENTS = {"firmware": FIRMWARE, "kernel": KERNEL}
BINDING = Binding("sha256", os.urandom(32), os.urandom(32))

CHECKS_IN_ORDER = [
    "evidence.simulated-allowed",
    "evidence.format",
    "evidence.signature",
    "evidence.profile",
    "evidence.binder",
    "evidence.aik-hash",
    "evidence.hash-alg",
    "measurement.firmware",
    "measurement.kernel",
]


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_policy(
    allow_simulated: bool = True,
    keys: tuple[ec.EllipticCurvePrivateKey, ...] = (PLATFORM,),
    measurements: dict[str, frozenset[bytes]] | None = None,
) -> SoftwarePolicy:
    if measurements is None:
        measurements = {
            "firmware": frozenset({FIRMWARE, FIRMWARE_OLD}),
            "kernel": frozenset({KERNEL}),
        }
    return SoftwarePolicy(
        allow_simulated=allow_simulated,
        platform_keys=tuple(k.public_key() for k in keys),
        platform_key_names=tuple(f"key{i}.pem" for i in range(len(keys))),
        measurements=measurements,
    )


def make_attester(
    key: ec.EllipticCurvePrivateKey = PLATFORM, measurements: dict[str, bytes] | None = None
) -> SoftwareAttester:
    return SoftwareAttester(key, MEASUREMENTS if measurements is None else measurements)


def appraise(
    evidence: bytes,
    policy: SoftwarePolicy | None = None,
    expected: Binding = BINDING,
    media_type: str = SOFTWARE_MEDIA_TYPE,
) -> Appraisal:
    return SoftwareVerifier(policy or make_policy(), policy_id="test-policy").appraise(
        media_type, evidence, expected, NOW
    )


def check(appraisal: Appraisal, name: str) -> Any:
    found = [c for c in appraisal.checks if c.name == name]
    assert len(found) == 1, f"{name} appears {len(found)} times in {appraisal.checks}"
    return found[0]


def failed(appraisal: Appraisal) -> list[str]:
    return [c.name for c in appraisal.checks if not c.passed]


def resign(claims: dict[int, Any], key: ec.EllipticCurvePrivateKey = PLATFORM) -> bytes:
    """Software evidence with arbitrary claims, properly signed by ``key``."""
    kid = hashlib.sha256(spki(key)).digest()[:8]
    return sign1(cbor2.dumps(claims), key, kid)


ATTESTER = make_attester()


def good_claims() -> dict[int, Any]:
    return ATTESTER.claims(BINDING, NOW)


# -- the attester -------------------------------------------------------------------------------


def test_attester_identity_and_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="atls_proxy.attest.software"):
        attester = make_attester()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "SIMULATED" in warnings[0].getMessage()
    assert attester.name == "software"
    assert attester.simulated is True
    caplog.clear()
    attester.produce(BINDING, NOW)
    assert not caplog.records  # once at construction, not per evidence


def test_claims_and_header() -> None:
    evidence = make_attester().produce(BINDING, NOW)
    message = decode_sign1(evidence)
    platform_hash = hashlib.sha256(spki(PLATFORM)).digest()
    assert message.kid == platform_hash[:8]
    claims = cbor2.loads(message.payload)
    assert claims == {
        CLAIM_EAT_NONCE: BINDING.binder,
        CLAIM_EAT_PROFILE: SOFTWARE_EAT_PROFILE,
        CLAIM_IAT: 1_790_000_000,
        CLAIM_UEID: b"\x01" + platform_hash,
        CLAIM_SWNAME: SOFTWARE_SWNAME,
        CLAIM_AIK_PUB_HASH: BINDING.aik_hash,
        CLAIM_MEASUREMENTS: MEASUREMENTS,
        CLAIM_SIMULATED: True,
        CLAIM_HASH_ALG: "sha256",
    }
    assert (CLAIM_EAT_NONCE, CLAIM_EAT_PROFILE, CLAIM_IAT) == (10, 265, 6)
    assert (CLAIM_UEID, CLAIM_SWNAME) == (256, 270)
    assert all(k < -65536 for k in (CLAIM_AIK_PUB_HASH, CLAIM_MEASUREMENTS, CLAIM_SIMULATED))
    assert CLAIM_HASH_ALG < -65536
    assert "SIMULATED" in SOFTWARE_SWNAME
    assert SOFTWARE_MEDIA_TYPE == (
        'application/eat+cwt; eat_profile="tag:atls-proxy.invalid,2026:software-evidence/1"'
    )


def test_produce_is_deterministic_in_payload() -> None:
    attester = make_attester()
    a = decode_sign1(attester.produce(BINDING, NOW))
    b = decode_sign1(attester.produce(BINDING, NOW))
    assert a.payload == b.payload
    assert a.protected == b.protected


async def test_attest_uses_the_clock() -> None:
    attester = SoftwareAttester(PLATFORM, MEASUREMENTS, clock=lambda: 1234.9)
    evidence = await attester.attest(BINDING)
    assert evidence.media_type == SOFTWARE_MEDIA_TYPE
    assert cbor2.loads(decode_sign1(evidence.data).payload)[CLAIM_IAT] == 1234
    assert appraise(evidence.data).passed


@pytest.mark.parametrize(
    ("key", "measurements"),
    [
        (ec.generate_private_key(ec.SECP384R1()), MEASUREMENTS),
        (PLATFORM, {"bad name": FIRMWARE}),
        (PLATFORM, {"": FIRMWARE}),
        (PLATFORM, {"firmware": b"short"}),
        (PLATFORM, {"firmware": FIRMWARE.hex()}),
        (PLATFORM, {f"m{i}": FIRMWARE for i in range(MAX_MEASUREMENTS + 1)}),
    ],
)
def test_attester_rejects_bad_configuration(key: Any, measurements: Any) -> None:
    with pytest.raises(ValueError):
        SoftwareAttester(key, measurements)


# -- media type ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "media_type",
    [
        SOFTWARE_MEDIA_TYPE,
        f'application/eat+cwt;eat_profile="{SOFTWARE_EAT_PROFILE}"',
        f'  Application/EAT+CWT ;  EAT_PROFILE = "{SOFTWARE_EAT_PROFILE}"  ',
        f'application/eat+cwt;\teat_profile="{SOFTWARE_EAT_PROFILE}";',
        'application/eat+cwt; eat_profile="tag:atls-proxy.invalid,2026:software-evidence\\/1"',
    ],
)
def test_accepts_media_type_spellings(media_type: str) -> None:
    assert SoftwareVerifier(make_policy()).accepts(media_type)


@pytest.mark.parametrize(
    "media_type",
    [
        "application/eat+cwt",
        'application/eat+jwt; eat_profile="tag:atls-proxy.invalid,2026:software-evidence/1"',
        'application/eat+cwt; eat_profile="tag:atls-proxy.invalid,2026:SOFTWARE-evidence/1"',
        'application/eat+cwt; eat_profile="tag:atls-proxy.invalid,2026:software-evidence/2"',
        "application/eat+cwt; eat_profile=tag:atls-proxy.invalid,2026:software-evidence/1",
        f'application/eat+cwt; eat_profile="{SOFTWARE_EAT_PROFILE}"; charset=utf-8',
        f'application/eat+cwt; eat_profile="{SOFTWARE_EAT_PROFILE}"; eat_profile="x"',
        f'application/eat+cwt; eat_profile="{SOFTWARE_EAT_PROFILE}',
        f'application/eat+cwt eat_profile="{SOFTWARE_EAT_PROFILE}"',
        "",
        "application",
        f'application/eat+cwt; eat_profile="{SOFTWARE_EAT_PROFILE}"' + " " * 600,
    ],
)
def test_rejects_other_media_types(media_type: str) -> None:
    assert not SoftwareVerifier(make_policy()).accepts(media_type)


def test_parse_media_type() -> None:
    assert parse_media_type('A/B; x="a\\"b;c" ; Y=tok') == ("a/b", {"x": 'a"b;c', "y": "tok"})
    assert parse_media_type("a/b;") == ("a/b", {})
    assert parse_media_type("a/b; x") is None
    assert parse_media_type("a/b; x=") is None


# -- a passing appraisal ------------------------------------------------------------------------


def test_valid_evidence_passes_every_check_in_order() -> None:
    result = appraise(make_attester().produce(BINDING, NOW))
    assert [c.name for c in result.checks] == CHECKS_IN_ORDER
    assert result.passed, result.first_failure
    assert result.evidence_type == "software"
    assert result.simulated is True
    assert result.policy_id == "test-policy"
    assert result.trust_vector == {"hardware": 32, "instance-identity": 2, "executables": 2}
    # Observed values come from the evidence actually parsed.
    assert check(result, "evidence.binder").observed == BINDING.binder.hex()
    assert check(result, "evidence.aik-hash").observed == BINDING.aik_hash.hex()
    kid = hashlib.sha256(spki(PLATFORM)).digest()[:8].hex()
    assert check(result, "evidence.signature").observed == f"kid {kid}, verified by key0.pem"
    assert check(result, "evidence.signature").expected == "key0.pem"
    assert check(result, "measurement.kernel").observed == KERNEL.hex()
    assert check(result, "measurement.firmware").expected == " | ".join(
        sorted([FIRMWARE.hex(), FIRMWARE_OLD.hex()])
    )
    # Every check passed, but SIMULATED evidence has no hardware root (hardware 32): the EAR
    # status is never better than the worst claim of its vector (draft-ietf-rats-ear).
    doc = result.to_json()
    assert doc["ear.trustworthiness-vector"]["hardware"] == 32
    assert result.passed and doc["ear.status"] == "warning"


def test_sha384_binding() -> None:
    binding = Binding("sha384", os.urandom(48), os.urandom(48))
    result = appraise(make_attester().produce(binding, NOW), expected=binding)
    assert result.passed, result.first_failure
    assert check(result, "evidence.hash-alg").observed == "sha384"


def test_second_trusted_key_is_named() -> None:
    policy = make_policy(keys=(PLATFORM, SECOND))
    result = appraise(make_attester(SECOND).produce(BINDING, NOW), policy)
    assert result.passed
    assert check(result, "evidence.signature").observed.endswith("verified by key1.pem")


def test_extra_measurement_is_reported_not_constrained() -> None:
    extra = hashlib.sha256(b"app").digest()
    attester = make_attester(measurements={**MEASUREMENTS, "app": extra})
    result = appraise(attester.produce(BINDING, NOW))
    assert result.passed
    app = check(result, "measurement.app")
    assert app.passed and app.detail == "not constrained by policy"
    assert app.observed == extra.hex()
    assert [c.name for c in result.checks][-1] == "measurement.app"


def test_unknown_claims_are_ignored() -> None:
    claims = good_claims()
    claims[-80000] = "something new"
    claims[258] = b"oemid"
    assert appraise(resign(claims)).passed


# -- each check failing for the right reason ----------------------------------------------------


def test_simulated_not_allowed() -> None:
    result = appraise(make_attester().produce(BINDING, NOW), make_policy(allow_simulated=False))
    assert failed(result) == ["evidence.simulated-allowed"]
    first = result.checks[0]
    assert "SIMULATED" in first.detail and "no hardware root of trust" in first.detail
    assert [c.name for c in result.checks] == CHECKS_IN_ORDER  # the rest is still reported
    assert not result.passed
    assert result.to_json()["ear.status"] == "contraindicated"


def test_wrong_platform_key() -> None:
    result = appraise(make_attester(ROGUE).produce(BINDING, NOW))
    assert failed(result) == ["evidence.signature"]
    assert [c.name for c in result.checks] == CHECKS_IN_ORDER[:3]  # unsigned claims not judged
    sig = check(result, "evidence.signature")
    assert "unknown platform" in sig.detail
    assert sig.observed == "kid " + hashlib.sha256(spki(ROGUE)).digest()[:8].hex()
    assert result.trust_vector == {"hardware": 32, "instance-identity": 96}


def test_rogue_key_claiming_a_trusted_kid() -> None:
    trusted_kid = hashlib.sha256(spki(PLATFORM)).digest()[:8]
    evidence = sign1(cbor2.dumps(good_claims()), ROGUE, trusted_kid)
    result = appraise(evidence)
    assert failed(result) == ["evidence.signature"]
    assert "altered or signed by another key" in check(result, "evidence.signature").detail


def test_tampered_payload_byte() -> None:
    evidence = bytearray(make_attester().produce(BINDING, NOW))
    evidence[evidence.index(BINDING.binder) + 5] ^= 0x01  # still valid CBOR, no longer signed
    result = appraise(bytes(evidence))
    assert failed(result) == ["evidence.signature"]
    assert "altered" in check(result, "evidence.signature").detail


def test_tampered_signature_byte() -> None:
    evidence = bytearray(make_attester().produce(BINDING, NOW))
    evidence[-10] ^= 0x40
    result = appraise(bytes(evidence))
    assert failed(result) == ["evidence.signature"]


def test_wrong_binder() -> None:
    other = Binding("sha256", os.urandom(32), BINDING.aik_hash)
    result = appraise(make_attester().produce(BINDING, NOW), expected=other)
    assert failed(result) == ["evidence.binder"]
    binder = check(result, "evidence.binder")
    assert binder.observed == BINDING.binder.hex()
    assert binder.expected == other.binder.hex()


def test_wrong_aik_hash() -> None:
    other = Binding("sha256", BINDING.binder, os.urandom(32))
    result = appraise(make_attester().produce(BINDING, NOW), expected=other)
    assert failed(result) == ["evidence.aik-hash"]
    aik = check(result, "evidence.aik-hash")
    assert (aik.observed, aik.expected) == (BINDING.aik_hash.hex(), other.aik_hash.hex())


def test_hash_alg_mismatch() -> None:
    sha384 = Binding("sha384", os.urandom(48), os.urandom(48))
    result = appraise(make_attester().produce(sha384, NOW), expected=BINDING)
    assert failed(result) == ["evidence.binder", "evidence.aik-hash", "evidence.hash-alg"]
    hash_alg = check(result, "evidence.hash-alg")
    assert (hash_alg.observed, hash_alg.expected) == ("sha384", "sha256")


def test_hash_alg_claim_inconsistent_with_lengths() -> None:
    claims = good_claims()
    claims[CLAIM_HASH_ALG] = "sha256"
    claims[CLAIM_EAT_NONCE] = os.urandom(48)
    result = appraise(resign(claims))
    assert failed(result) == ["evidence.binder", "evidence.hash-alg"]
    assert "length" in check(result, "evidence.hash-alg").detail


def test_measurement_not_in_policy() -> None:
    bad = hashlib.sha256(b"firmware v2 (unapproved)").digest()
    attester = make_attester(measurements={**MEASUREMENTS, "firmware": bad})
    result = appraise(attester.produce(BINDING, NOW))
    assert failed(result) == ["measurement.firmware"]
    firmware = check(result, "measurement.firmware")
    assert firmware.observed == bad.hex()
    assert FIRMWARE.hex() in firmware.expected and FIRMWARE_OLD.hex() in firmware.expected
    assert result.trust_vector["executables"] == 96
    assert result.trust_vector["instance-identity"] == 2


def test_missing_measurement() -> None:
    attester = make_attester(measurements={"firmware": FIRMWARE})
    result = appraise(attester.produce(BINDING, NOW))
    assert failed(result) == ["measurement.kernel"]
    kernel = check(result, "measurement.kernel")
    assert kernel.observed == "absent"
    assert kernel.expected == KERNEL.hex()
    assert result.trust_vector["executables"] == 96


def test_wrong_profile_claim() -> None:
    claims = good_claims()
    claims[CLAIM_EAT_PROFILE] = "tag:example.com,2026:other"
    result = appraise(resign(claims))
    assert failed(result) == ["evidence.profile"]
    assert check(result, "evidence.profile").observed == "tag:example.com,2026:other"
    assert result.trust_vector["instance-identity"] == 96


def test_ueid_must_name_the_signing_key() -> None:
    claims = good_claims()
    claims[CLAIM_UEID] = b"\x01" + hashlib.sha256(spki(SECOND)).digest()
    result = appraise(resign(claims))
    assert failed(result) == ["evidence.profile"]
    assert "ueid" in check(result, "evidence.profile").detail


def test_wrong_media_type_is_a_format_failure() -> None:
    result = appraise(make_attester().produce(BINDING, NOW), media_type="application/eat+cwt")
    assert [c.name for c in result.checks] == ["evidence.simulated-allowed", "evidence.format"]
    assert failed(result) == ["evidence.format"]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda c: c.pop(CLAIM_EAT_NONCE), "eat_nonce"),
        (lambda c: c.__setitem__(CLAIM_EAT_NONCE, b"short"), "eat_nonce"),
        (lambda c: c.__setitem__(CLAIM_EAT_NONCE, [os.urandom(32), os.urandom(32)]), "eat_nonce"),
        (lambda c: c.__setitem__(CLAIM_IAT, True), "iat"),
        (lambda c: c.__setitem__(CLAIM_IAT, 1.5), "iat"),
        (lambda c: c.pop(CLAIM_AIK_PUB_HASH), "aik_pub_hash"),
        (lambda c: c.__setitem__(CLAIM_SIMULATED, False), "simulated"),
        (lambda c: c.pop(CLAIM_SIMULATED), "simulated"),
        (lambda c: c.__setitem__(CLAIM_MEASUREMENTS, {"kernel": "hex"}), "kernel"),
        (lambda c: c.__setitem__(CLAIM_MEASUREMENTS, {"a b": FIRMWARE}), "measurement name"),
        (lambda c: c.__setitem__(CLAIM_MEASUREMENTS, []), "measurements"),
        (lambda c: c.__setitem__(CLAIM_UEID, b"\x01"), "ueid"),
        (lambda c: c.__setitem__(CLAIM_HASH_ALG, 256), "hash_alg"),
        (lambda c: c.__setitem__(CLAIM_SWNAME, b"bytes"), "swname"),
    ],
)
def test_bad_claims_are_format_failures(mutate: Any, reason: str) -> None:
    claims = good_claims()
    mutate(claims)
    result = appraise(resign(claims))
    assert [c.name for c in result.checks] == ["evidence.simulated-allowed", "evidence.format"]
    assert reason in check(result, "evidence.format").detail
    assert result.trust_vector == {"hardware": 32}


def test_claims_not_a_map() -> None:
    result = appraise(sign1(cbor2.dumps([1, 2]), PLATFORM, None))
    assert failed(result) == ["evidence.format"]


def test_garbage_is_a_format_failure() -> None:
    result = appraise(b"\x00not cose")
    assert failed(result) == ["evidence.format"]
    assert not result.passed


# -- interop ------------------------------------------------------------------------------------


def test_evidence_verifies_with_pycose() -> None:
    evidence = make_attester().produce(BINDING, NOW)
    nums = PLATFORM.public_key().public_numbers()
    msg = Sign1Message.decode(evidence)
    msg.key = EC2Key(crv=P256, x=nums.x.to_bytes(32, "big"), y=nums.y.to_bytes(32, "big"))
    assert msg.verify_signature()
    assert msg.payload is not None
    assert cbor2.loads(msg.payload)[CLAIM_EAT_NONCE] == BINDING.binder


def test_evidence_decodes_as_a_cwt_with_python_cwt() -> None:
    attester = make_attester()
    evidence = attester.produce(BINDING, NOW)
    pem = PLATFORM.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # python-cwt selects the key by kid when the message carries one.
    key = cwt.COSEKey.from_pem(pem, alg="ES256", kid=attester.kid)
    claims = cwt.decode(evidence, key)
    assert claims == attester.claims(BINDING, NOW)
    wrong = cwt.COSEKey.from_pem(
        ROGUE.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        alg="ES256",
        kid=attester.kid,
    )
    with pytest.raises(cwt.VerifyError):
        cwt.decode(evidence, wrong)


# -- property tests: appraise never raises ------------------------------------------------------

VALID = ATTESTER.produce(BINDING, NOW)
VERIFIER = SoftwareVerifier(make_policy())


def assert_sane(result: Appraisal) -> None:
    assert result.checks
    assert all(c.name != "verifier.internal-error" for c in result.checks), result.checks
    result.to_json()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = VERIFIER.appraise(SOFTWARE_MEDIA_TYPE, data, BINDING, NOW)
    assert_sane(result)
    assert not result.passed


@st.composite
def mutated_evidence(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_evidence())
def test_mutated_evidence_never_raises(data: bytes) -> None:
    result = VERIFIER.appraise(SOFTWARE_MEDIA_TYPE, data, BINDING, NOW)
    assert_sane(result)
    if result.passed:
        # Only possible if the signed content survived the mutation untouched.
        original, mutated = decode_sign1(VALID), decode_sign1(data)
        assert (mutated.protected, mutated.payload) == (original.protected, original.payload)


cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.binary(max_size=70)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.integers(-70010, 300) | st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def signed_claims(draw: st.DrawFn) -> bytes:
    claims = good_claims()
    for key in draw(st.lists(st.sampled_from(sorted(claims)), max_size=4)):
        if draw(st.booleans()):
            claims[key] = draw(cbor_values)
        else:
            claims.pop(key, None)
    extra = draw(st.dictionaries(st.integers(-70010, 300), cbor_values, max_size=3))
    for key, value in extra.items():
        claims[key] = value
    return resign(claims)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signed_claims())
def test_validly_signed_arbitrary_claims_never_raise(evidence: bytes) -> None:
    assert_sane(VERIFIER.appraise(SOFTWARE_MEDIA_TYPE, evidence, BINDING, NOW))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_any_media_type_string_is_handled(media_type: str) -> None:
    assert isinstance(VERIFIER.accepts(media_type), bool)
    assert_sane(VERIFIER.appraise(media_type, VALID, BINDING, NOW))
