"""The shim framing: preamble sniffing, frames split anywhere, caps, sticky errors."""

from __future__ import annotations

import pytest

from atls_proxy.errors import ProtocolError
from atls_proxy.expat import framing as f


def test_golden_preamble_and_frames() -> None:
    assert bytes.fromhex("8945585041540d0a01") == f.PREAMBLE
    assert f.encode_frame(f.FrameType.AUTH_REQUEST, b"abc") == bytes.fromhex("01000003616263")
    assert f.encode_frame(f.FrameType.ACCEPT) == bytes.fromhex("03000000")
    assert (
        f.encode_error(f.ErrorCode.VERIFICATION_FAILED, "no")
        == bytes.fromhex("040000040005") + b"no"
    )


@pytest.mark.parametrize(
    "first,expected",
    [
        (b"", f.Sniff.NEED_MORE),
        (b"\x89EXP", f.Sniff.NEED_MORE),
        (f.PREAMBLE, f.Sniff.EXPAT),
        (b"GET / HTTP/1.1\r\n", f.Sniff.OTHER),
        (b"\x16\x03\x01", f.Sniff.OTHER),
        (b"\x89EXPAX", f.Sniff.OTHER),
    ],
)
def test_sniff(first: bytes, expected: f.Sniff) -> None:
    assert f.sniff_preamble(first) is expected


def test_byte_at_a_time_decoding() -> None:
    stream = (
        f.PREAMBLE
        + f.encode_frame(f.FrameType.AUTH_REQUEST, b"x" * 300)
        + f.encode_frame(f.FrameType.ACCEPT)
        + b"app"
    )
    d = f.FrameDecoder()
    frames = []
    for i in range(len(stream) - 3):
        frames += d.feed(stream[i : i + 1])
    frames += d.feed(b"app")
    assert [fr.type for fr in frames] == [f.FrameType.AUTH_REQUEST, f.FrameType.ACCEPT]
    assert d.take_rest() == b"app"


@pytest.mark.parametrize("last", [f.FrameType.ACCEPT, f.FrameType.AUTHENTICATOR])
def test_decoder_stops_after_accept_and_authenticator(last: f.FrameType) -> None:
    """What follows ACCEPT is application data; what follows an AUTHENTICATOR is early data for
    the relying party to refuse — in both cases bytes, even when they are not a valid frame."""
    d = f.FrameDecoder()
    behind = f.encode_frame(f.FrameType.ERROR, b"\x00\x01") + b"\xff not a frame"
    frames = d.feed(
        f.PREAMBLE + f.encode_frame(last, b"p" if last != f.FrameType.ACCEPT else b"") + behind
    )
    assert [fr.type for fr in frames] == [last]
    assert d.buffered == len(behind) and d.take_rest() == behind


@pytest.mark.parametrize(
    "data,check",
    [
        (b"\x89EXPAT\r\n\x02", "expat.version"),
        (b"HELLO", "expat.preamble"),
        (f.PREAMBLE + b"\x09\x00\x00\x00", "expat.frame"),
        (f.PREAMBLE + b"\x02\xff\xff\xff", "expat.frame"),
    ],
)
def test_bad_streams(data: bytes, check: str) -> None:
    d = f.FrameDecoder()
    with pytest.raises(ProtocolError) as e:
        d.feed(data)
    assert e.value.check == check
    with pytest.raises(ProtocolError):  # sticky
        d.feed(f.encode_frame(f.FrameType.ACCEPT))


@pytest.mark.parametrize(
    ("ftype", "limit"),
    [
        (f.FrameType.AUTH_REQUEST, f.MAX_REQUEST_PAYLOAD),
        (f.FrameType.AUTHENTICATOR, f.MAX_FRAME_PAYLOAD),
        (f.FrameType.ACCEPT, 0),
        (f.FrameType.ERROR, 2 + f.MAX_REASON),
    ],
)
def test_each_frame_type_has_its_own_length_cap(ftype: f.FrameType, limit: int) -> None:
    """A length over the type's cap fails at the header, before the payload is waited for: a
    client cannot make the server hold 256 KiB of a request that never completes."""
    at_limit = f.FrameDecoder().feed(f.PREAMBLE + f.encode_frame(ftype, bytes(limit)))
    assert at_limit == [f.Frame(ftype, bytes(limit))]
    over = f.FrameDecoder()
    with pytest.raises(ProtocolError) as e:
        over.feed(f.PREAMBLE + bytes([ftype]) + (limit + 1).to_bytes(3, "big"))
    assert e.value.check == "expat.frame" and f"exceeds {limit}" in str(e.value)


def test_error_payload_bounds() -> None:
    with pytest.raises(ProtocolError):
        f.decode_error(b"\x00")
    assert f.decode_error(b"\x00\x05bad") == (5, "bad")


def test_error_reason_is_cut_at_a_character_boundary() -> None:
    """<= 1024 bytes of UTF-8 (docs/PROTOCOL.md §4): a cut through a multi-byte character would
    leave the peer an undecodable reason."""
    for reason in ("a" + "é" * 600, "€" * 400, "x" * 2000, "ab" + "😀" * 300):
        frame = f.encode_error(f.ErrorCode.MALFORMED, reason)
        _, text = f.decode_error(frame[4:])
        raw = frame[6:]
        assert len(raw) <= f.MAX_REASON and raw.decode("utf-8") == text
        assert reason.startswith(text) and len(text.encode()) > f.MAX_REASON - 4


def test_error_codes_for_protocol_violations() -> None:
    from atls_proxy.errors import ProtocolError as P

    assert f.error_code_for("expat.version", P.PROTOCOL_VERSION) is f.ErrorCode.UNSUPPORTED_VERSION
    assert f.error_code_for("expat.frame", P.UNEXPECTED_MESSAGE) is f.ErrorCode.UNEXPECTED_FRAME
    assert f.error_code_for("expat.frame", P.DECODE_ERROR) is f.ErrorCode.MALFORMED  # unknown type
    assert f.error_code_for("ea.request", P.UNEXPECTED_MESSAGE) is f.ErrorCode.MALFORMED


def test_the_largest_valid_request_fits_its_cap() -> None:
    """RFC 9261 §4: a 255-byte context and 65535 bytes of extensions (a long
    certificate_authorities list, say) is a valid request; the frame cap must not refuse it."""
    from atls_proxy.expat import authenticator as ea
    from atls_proxy.expat import messages as m

    sig = ea.build_request(m.CLIENT_CERTIFICATE_REQUEST, b"c").extensions[0]
    filler = 0xFFFF - 4 - len(sig.data) - 4  # the rest of the extensions block, one extension
    req = m.AuthenticatorRequest(
        m.CLIENT_CERTIFICATE_REQUEST,
        bytes(255),
        (sig, m.Extension(m.EXT_CERTIFICATE_AUTHORITIES, bytes(filler))),
    ).encode()
    assert len(req) == f.MAX_REQUEST_PAYLOAD
    (frame,) = f.FrameDecoder().feed(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, req))
    assert ea.request_from_bytes(frame.payload).context == bytes(255)
