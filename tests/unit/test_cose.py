"""COSE_Sign1 (RFC 9052 §4.2, §4.4) ES256: round trips, strict decoding, pycose interop, fuzzing."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycose.algorithms import Es256
from pycose.headers import KID, Algorithm
from pycose.keys.curves import P256
from pycose.keys.ec2 import EC2Key
from pycose.messages.sign1message import Sign1Message

from atls_proxy.errors import DecodeError, VerificationError
from atls_proxy.verify.cose import (
    MAX_CBOR_DEPTH,
    MAX_COSE_SIGN1_SIZE,
    decode_cbor,
    decode_sign1,
    sign1,
    verify_sign1,
)

KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())
PAYLOAD = b"\xa1\x0aHnonce-00"


def raw_sign(key: ec.EllipticCurvePrivateKey, protected: bytes, payload: bytes) -> bytes:
    """An independent ES256 signer: RFC 9052 §4.4 Sig_structure, RFC 9053 §2.1 r ‖ s."""
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def build(
    protected: Any = None,
    unprotected: Any = None,
    payload: Any = PAYLOAD,
    signature: Any = None,
    *,
    tag: int | None = 18,
    key: ec.EllipticCurvePrivateKey = KEY,
    elements: list[Any] | None = None,
) -> bytes:
    """A COSE_Sign1 with any part replaced; signs with ``key`` unless ``signature`` is given."""
    if protected is None:
        protected = cbor2.dumps({1: -7})
    elif isinstance(protected, dict):
        protected = cbor2.dumps(protected)
    if unprotected is None:
        unprotected = {}
    if signature is None:
        signature = raw_sign(key, protected, payload if isinstance(payload, bytes) else b"")
    body = elements if elements is not None else [protected, unprotected, payload, signature]
    return cbor2.dumps(cbor2.CBORTag(tag, body) if tag is not None else body)


def pycose_key(key: ec.EllipticCurvePrivateKey, private: bool = False) -> EC2Key:
    nums = key.public_key().public_numbers()
    d = key.private_numbers().private_value.to_bytes(32, "big") if private else b""
    return EC2Key(crv=P256, x=nums.x.to_bytes(32, "big"), y=nums.y.to_bytes(32, "big"), d=d)


# -- round trips --------------------------------------------------------------------------------


def test_round_trip_without_kid() -> None:
    msg = sign1(PAYLOAD, KEY, None)
    tag = cbor2.loads(msg)
    assert tag.tag == 18
    protected, unprotected, payload, signature = tag.value
    assert protected == bytes.fromhex("a10126")  # {1: -7}, RFC 9052 §3.1 alg
    assert unprotected == {}
    assert payload == PAYLOAD
    assert len(signature) == 64
    assert verify_sign1(msg, [KEY.public_key()]) == (PAYLOAD, 0)
    assert decode_sign1(msg).kid is None


def test_round_trip_with_kid_and_key_index() -> None:
    msg = sign1(PAYLOAD, KEY, b"kid-0001")
    assert cbor2.loads(cbor2.loads(msg).value[0]) == {1: -7, 4: b"kid-0001"}
    assert decode_sign1(msg).kid == b"kid-0001"
    keys = [OTHER.public_key(), ec.generate_private_key(ec.SECP256R1()).public_key()]
    assert verify_sign1(msg, [*keys, KEY.public_key()]) == (PAYLOAD, 2)


def test_signature_is_raw_r_s_over_the_rfc_sig_structure() -> None:
    msg = sign1(PAYLOAD, KEY, b"k")
    protected, _u, payload, signature = cbor2.loads(msg).value
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    der = encode_dss_signature(
        int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    )
    KEY.public_key().verify(der, tbs, ec.ECDSA(hashes.SHA256()))  # raises if wrong


def test_independently_signed_message_verifies() -> None:
    assert verify_sign1(build(), [KEY.public_key()]) == (PAYLOAD, 0)


# -- signature failures -------------------------------------------------------------------------


def test_wrong_key_is_a_verification_error() -> None:
    with pytest.raises(VerificationError) as info:
        verify_sign1(sign1(PAYLOAD, KEY, None), [OTHER.public_key()])
    assert info.value.check == "evidence.signature"


def test_no_keys_is_a_verification_error() -> None:
    with pytest.raises(VerificationError):
        verify_sign1(sign1(PAYLOAD, KEY, None), [])


def test_tampered_payload_byte() -> None:
    msg = bytearray(sign1(PAYLOAD, KEY, None))
    msg[msg.index(b"nonce-00") + 3] ^= 0x01
    with pytest.raises(VerificationError):
        verify_sign1(bytes(msg), [KEY.public_key()])


def test_tampered_signature_byte() -> None:
    msg = bytearray(sign1(PAYLOAD, KEY, None))
    msg[-1] ^= 0x80
    with pytest.raises(VerificationError):
        verify_sign1(bytes(msg), [KEY.public_key()])


def test_zero_signature_is_a_verification_error() -> None:
    with pytest.raises(VerificationError):
        verify_sign1(build(signature=b"\x00" * 64), [KEY.public_key()])


def test_unprotected_header_is_not_signed_but_protected_is() -> None:
    # RFC 9052 §3: changing the unprotected bucket does not break the signature...
    assert verify_sign1(build(unprotected={4: b"hint"}), [KEY.public_key()])[1] == 0
    # ...changing the protected bucket does.
    sig = raw_sign(KEY, cbor2.dumps({1: -7}), PAYLOAD)
    with pytest.raises(VerificationError):
        verify_sign1(build(protected={1: -7, 4: b"x"}, signature=sig), [KEY.public_key()])


def test_bad_key_types_are_programming_errors() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ValueError):
        sign1(PAYLOAD, p384, None)
    with pytest.raises(ValueError):
        verify_sign1(sign1(PAYLOAD, KEY, None), [p384.public_key()])


# -- strict decoding ----------------------------------------------------------------------------


def test_accepts_known_critical_and_unknown_noncritical_headers() -> None:
    ok = build(protected={1: -7, 2: [4], 4: b"k", 3: "application/eat+cwt", 99: "x"})
    assert verify_sign1(ok, [KEY.public_key()]) == (PAYLOAD, 0)


@pytest.mark.parametrize(
    ("label", "data"),
    [
        ("untagged", build(tag=None)),
        ("wrong tag", build(tag=17)),
        ("CWT tag 61 wrapper", cbor2.dumps(cbor2.CBORTag(61, cbor2.loads(build())))),
        ("three elements", build(elements=[b"\xa1\x01\x26", {}, PAYLOAD])),
        ("five elements", build(elements=[b"\xa1\x01\x26", {}, PAYLOAD, b"\x00" * 64, b""])),
        ("not an array", cbor2.dumps(cbor2.CBORTag(18, {1: 2}))),
        ("protected is a map", build(elements=[{1: -7}, {}, PAYLOAD, b"\x00" * 64])),
        ("protected not a map", build(protected=cbor2.dumps([1, -7]))),
        ("protected empty", build(protected=b"")),
        ("protected garbage", build(protected=b"\xff\x00")),
        ("no alg", build(protected={4: b"k"})),
        ("alg ES384", build(protected={1: -35})),
        ("alg as text", build(protected={1: "ES256"})),
        ("alg as float", build(protected=bytes.fromhex("a101f9c700"))),  # {1: -7.0}
        ("alg unprotected too", build(unprotected={1: -7})),
        ("label in both buckets", build(protected={1: -7, 4: b"k"}, unprotected={4: b"k"})),
        ("crit unprotected", build(unprotected={2: [4]})),
        ("unknown critical", build(protected={1: -7, 2: [99], 99: 1})),
        ("crit names absent label", build(protected={1: -7, 2: [4]})),
        ("crit empty", build(protected={1: -7, 2: []})),
        ("crit not array", build(protected={1: -7, 2: 4, 4: b"k"})),
        ("crit bad label type", build(protected={1: -7, 2: [b"x"]})),
        ("kid not bytes", build(protected={1: -7, 4: "text-kid"})),
        ("unprotected not a map", build(unprotected=[])),
        ("detached payload", build(payload=None)),
        ("payload text", build(payload="text")),
        ("signature 63 bytes", build(signature=b"\x01" * 63)),
        ("signature 65 bytes", build(signature=b"\x01" * 65)),
        ("signature text", build(signature="x" * 64)),
        ("trailing byte", build() + b"\x00"),
        ("truncated", build()[:-1]),
        ("empty input", b""),
        ("oversized", b"\x00" * (MAX_COSE_SIGN1_SIZE + 1)),
        ("tag inside unprotected", build(unprotected={5: cbor2.CBORTag(1, 0)})),
    ],
)
def test_malformed_is_a_decode_error(label: str, data: bytes) -> None:
    with pytest.raises(DecodeError):
        verify_sign1(data, [KEY.public_key()])


def test_indefinite_length_array_rejected() -> None:
    good = build()
    # d2 84 ... -> d2 9f ... ff : the same four elements as an indefinite-length array.
    assert good[:2] == b"\xd2\x84"
    with pytest.raises(DecodeError, match="indefinite"):
        verify_sign1(b"\xd2\x9f" + good[2:] + b"\xff", [KEY.public_key()])


def test_non_shortest_head_rejected() -> None:
    good = build()
    # Array length 4 written with a one-byte argument (0x98 0x04) instead of 0x84.
    with pytest.raises(DecodeError, match="non-shortest"):
        verify_sign1(b"\xd2\x98\x04" + good[2:], [KEY.public_key()])


def test_duplicate_protected_label_rejected() -> None:
    # {1: -7, 1: -7}: parsers disagreeing on duplicates is a classic confusion; refuse it.
    protected = bytes.fromhex("a2012601 26".replace(" ", ""))
    with pytest.raises(DecodeError, match="duplicate"):
        decode_sign1(build(protected=protected))


def test_invalid_utf8_in_header_rejected() -> None:
    unprotected = b"\xa1\x05\x62\xc3\x28"  # {5: <text "\xc3(">}: not UTF-8 (RFC 8949 §3.1)
    data = (
        b"\xd2\x84\x43\xa1\x01\x26"
        + unprotected
        + cbor2.dumps(PAYLOAD)
        + cbor2.dumps(raw_sign(KEY, b"\xa1\x01\x26", PAYLOAD))
    )
    with pytest.raises(DecodeError):
        decode_sign1(data)


def test_decode_cbor_limits() -> None:
    deep = b"\x81" * (MAX_CBOR_DEPTH + 1) + b"\x00"
    with pytest.raises(DecodeError, match="nesting"):
        decode_cbor(deep, "x")
    assert decode_cbor(b"\x81" * MAX_CBOR_DEPTH + b"\x00", "x") is not None
    with pytest.raises(DecodeError, match="trailing"):
        decode_cbor(b"\x01\x02", "x")
    with pytest.raises(DecodeError, match="simple"):
        decode_cbor(b"\xe0", "x")
    with pytest.raises(DecodeError, match="map key"):
        decode_cbor(cbor2.dumps({b"k": 1}), "x")
    with pytest.raises(DecodeError, match="tag"):
        decode_cbor(cbor2.dumps(cbor2.CBORTag(28, [1])), "x")  # shared-reference tags: cycles
    with pytest.raises(DecodeError, match="longer than the input"):
        decode_cbor(b"\x9b" + (2**40).to_bytes(8, "big"), "x")
    with pytest.raises(DecodeError, match="truncated"):
        decode_cbor(b"\x5a\xff\xff\xff\xff", "x")
    assert decode_cbor(cbor2.dumps({"a": [1, -2, b"x", True, None, 1.5]}), "x") == {
        "a": [1, -2, b"x", True, None, 1.5]
    }


# -- interop with pycose ------------------------------------------------------------------------


def test_ours_verifies_with_pycose() -> None:
    msg = Sign1Message.decode(sign1(PAYLOAD, KEY, b"kid"))
    msg.key = pycose_key(KEY)
    assert msg.verify_signature()
    assert msg.payload == PAYLOAD
    tampered = bytearray(sign1(PAYLOAD, KEY, b"kid"))
    tampered[-5] ^= 1
    msg = Sign1Message.decode(bytes(tampered))
    msg.key = pycose_key(KEY)
    assert not msg.verify_signature()


def test_pycose_verifies_with_ours() -> None:
    msg = Sign1Message(phdr={Algorithm: Es256, KID: b"pycose"}, payload=PAYLOAD)
    msg.key = pycose_key(KEY, private=True)
    encoded = msg.encode()
    assert verify_sign1(encoded, [OTHER.public_key(), KEY.public_key()]) == (PAYLOAD, 1)
    assert decode_sign1(encoded).kid == b"pycose"
    with pytest.raises(VerificationError):
        verify_sign1(encoded, [OTHER.public_key()])


def test_pycose_unprotected_kid_is_not_reported_as_signed() -> None:
    msg = Sign1Message(phdr={Algorithm: Es256}, uhdr={KID: b"hint"}, payload=PAYLOAD)
    msg.key = pycose_key(KEY, private=True)
    decoded = decode_sign1(msg.encode())
    assert decoded.kid is None
    assert decoded.verify([KEY.public_key()]) == 0


# -- property tests -----------------------------------------------------------------------------

VALID = sign1(PAYLOAD, KEY, b"kid-0001")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_decode_or_verification_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError, VerificationError):
        verify_sign1(data, [KEY.public_key()])


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
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
@given(mutations())
def test_mutated_messages_never_verify_with_other_content(data: bytes) -> None:
    try:
        payload, index = verify_sign1(data, [KEY.public_key()])
    except (DecodeError, VerificationError):
        return
    # Success is possible only when the signed content survived (e.g. only the unprotected
    # bucket changed); the signed payload must then be the original one.
    assert payload == PAYLOAD
    assert index == 0


@pytest.mark.parametrize("header", [{1: "A" * 60_000}, {1: -7, 2: ["A" * 60_000]}])
def test_a_huge_header_value_is_not_copied_into_the_error(header: dict[int, Any]) -> None:
    with pytest.raises(DecodeError) as e:
        decode_sign1(build(header))
    assert len(str(e.value)) < 300 and "AAAA" in str(e.value), str(e.value)[:200]
