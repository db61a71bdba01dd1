"""Golden bytes for every RFC 9261 structure: decode, check end of buffer, re-encode, compare."""

from __future__ import annotations

import pytest

from atls_proxy.errors import DecodeError, ProtocolError
from atls_proxy.expat import messages as m
from atls_proxy.expat.wire import Reader, opaque

CTX = bytes(range(32))

# ClientCertificateRequest (RFC 9261 §4): type 17, uint24 len, ctx<0..255>, extensions<2..2^16-1>
# with signature_algorithms [0x0403, 0x0807] and an empty cmw_attestation (0xFF00).
REQUEST = bytes.fromhex(
    "11"
    "000031"  # type 17, length 49
    "20"
    + CTX.hex()  # context
    + "000e"  # extensions length 14
    "000d"
    "0006"
    "0004"
    "0403"
    "0807"  # signature_algorithms
    "ff00"
    "0000"  # cmw_attestation, empty
)

CERT_DER = b"\x30\x03\x02\x01\x01"  # any non-empty cert_data round-trips at this layer
# Certificate (RFC 8446 §4.4.2) with one entry carrying cmw_attestation = uint16 len ‖ cmw.
CERTIFICATE = bytes.fromhex(
    "0b"
    "000036"  # type 11, length 54
    "20"
    + CTX.hex()  # context echo
    + "000012"  # certificate_list length 18
    "000005"
    "3003020101"  # cert_data
    "0008"
    "ff00"
    "0004"
    "0002"
    "8200"  # extensions: cmw_attestation(uint16 2, CMW 0x8200)
)
CERT_VERIFY = bytes.fromhex("0f00000804030004deadbeef")
FINISHED = bytes.fromhex("14000020") + b"\xaa" * 32


def test_request_golden() -> None:
    req = m.AuthenticatorRequest.decode(REQUEST)
    assert req.msg_type == m.CLIENT_CERTIFICATE_REQUEST
    assert req.context == CTX
    assert [e.ext_type for e in req.extensions] == [0x000D, 0xFF00]
    assert m.parse_signature_algorithms(req.extensions[0]) == (0x0403, 0x0807)
    assert req.encode() == REQUEST
    built = m.AuthenticatorRequest(
        17, CTX, (m.signature_algorithms_extension([0x0403, 0x0807]), m.Extension(0xFF00))
    )
    assert built.encode() == REQUEST


def test_certificate_golden() -> None:
    cert = m.Certificate.decode(CERTIFICATE)
    assert cert.context == CTX
    assert cert.entries[0].cert_data == CERT_DER
    assert cert.entries[0].extensions == (m.Extension(0xFF00, bytes.fromhex("00028200")),)
    assert cert.encode() == CERTIFICATE


def test_certificate_verify_and_finished_golden() -> None:
    cv = m.CertificateVerify.decode(CERT_VERIFY)
    assert (cv.scheme, cv.signature) == (0x0403, bytes.fromhex("deadbeef"))
    assert cv.encode() == CERT_VERIFY
    assert m.Finished.decode(FINISHED).encode() == FINISHED


def test_split_three_messages() -> None:
    msgs = m.split_handshake_messages(CERTIFICATE + CERT_VERIFY + FINISHED)
    assert [t for t, _, _ in msgs] == [11, 15, 20]
    assert b"".join(full for _, _, full in msgs) == CERTIFICATE + CERT_VERIFY + FINISHED
    with pytest.raises(DecodeError):
        m.split_handshake_messages(CERTIFICATE + CERT_VERIFY + FINISHED + FINISHED)


@pytest.mark.parametrize("cut", [1, 3, 4, 10, len(REQUEST) - 1])
def test_truncated_request(cut: int) -> None:
    with pytest.raises(DecodeError):
        m.AuthenticatorRequest.decode(REQUEST[:cut])


def test_trailing_bytes_rejected() -> None:
    with pytest.raises(DecodeError):
        m.AuthenticatorRequest.decode(REQUEST + b"\x00")
    # inner trailing byte: length says one more than the structure holds
    bad = bytearray(REQUEST)
    bad[3] += 1
    with pytest.raises(DecodeError):
        m.AuthenticatorRequest.decode(bytes(bad) + b"\x00")


def test_request_needs_extensions_and_known_type() -> None:
    no_ext = bytes.fromhex("11000003000000")
    with pytest.raises(DecodeError):
        m.AuthenticatorRequest.decode(no_ext)
    with pytest.raises(ProtocolError) as e:
        m.AuthenticatorRequest.decode(b"\x0b" + REQUEST[1:])
    assert e.value.alert == ProtocolError.UNEXPECTED_MESSAGE


def test_duplicate_extension_rejected() -> None:
    block = m.Extension(0xFF00).encode() * 2
    with pytest.raises(ProtocolError) as e:
        m.decode_extensions(block, "x")
    assert e.value.check == "ea.extensions"  # named in logs and metrics, not "expat.protocol"


def test_oversized_length_rejected_before_allocation() -> None:
    huge = b"\x0b\xff\xff\xff"
    with pytest.raises(DecodeError, match="exceeds"):
        m.split_handshake_messages(huge)


def test_opaque_bounds() -> None:
    assert opaque(1, b"ab") == b"\x02ab"
    with pytest.raises(ValueError):
        opaque(1, b"x" * 256)
    with pytest.raises(ValueError):
        opaque(2, b"", minimum=2)
    r = Reader(b"\x00\x03ab", "t")
    with pytest.raises(DecodeError, match="truncated"):
        r.opaque(2)


def test_extension_block_and_signature_list_parses_are_kept() -> None:
    """Both parsers go through expat/memo.py (tested there): equal short input, the same parse;
    failures still raise; long input parses the same, and is not kept."""
    block = m.encode_extensions([m.signature_algorithms_extension([0x0403]), m.Extension(0xFF00)])
    again = bytes(bytearray(block))  # equal bytes, another object: the kept parse
    assert again is not block and m.decode_extensions(block, "x") is m.decode_extensions(again, "x")
    assert m.decode_extensions(block, "x") == (
        m.signature_algorithms_extension([0x0403]),
        m.Extension(0xFF00),
    )
    with pytest.raises(ProtocolError):
        m.decode_extensions(block + m.Extension(0xFF00).encode(), "x")  # duplicate
    with pytest.raises(DecodeError):
        m.decode_extensions(block[:-1], "x")
    big = m.encode_extensions([m.Extension(0x1234, b"\x00" * (m._MEMO_BLOCK + 1))])
    before = m.decode_extensions.cache_info().currsize
    assert m.decode_extensions(big, "x") == (m.Extension(0x1234, b"\x00" * (m._MEMO_BLOCK + 1)),)
    assert m.decode_extensions.cache_info().currsize == before

    short = m.signature_algorithms_extension([0x0403, 0x0804])
    assert m.parse_signature_algorithms(short) == (0x0403, 0x0804)
    long = m.signature_algorithms_extension([0x0403] * 200)  # 402 bytes: parsed, not kept
    before = m._schemes.cache_info().currsize
    assert m.parse_signature_algorithms(long) == (0x0403,) * 200
    assert m._schemes.cache_info().currsize == before
    with pytest.raises(DecodeError):
        m.parse_signature_algorithms(
            m.Extension(m.EXT_SIGNATURE_ALGORITHMS, b"\x00\x03\x04\x03\x01")
        )
