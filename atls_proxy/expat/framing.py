"""The attestation shim: a small versioned framing for the Expat exchange over the TLS stream.

This is the project's own transport (DESIGN.md §3): the ALTEA draft's wire format could not be
obtained, so everything ALTEA would carry is isolated here, behind ``encode_*`` and ``FrameDecoder``,
to be swapped for ALTEA later. docs/PROTOCOL.md §4 is the normative description.

    Preamble  = magic[8] ‖ uint8 version              magic = 89 45 58 50 41 54 0D 0A  ("\\x89EXPAT\\r\\n")
    Frame     = uint8 type ‖ uint24 length ‖ payload[length]

The client opens the application stream with its preamble, so a server tells an Expat client from a
plain TLS client on the first byte (0x89 starts no text protocol and no TLS record). The server answers
with its own preamble before its first frame, so the client tells an Expat server from anything else.

    client → server   Preamble(1) ‖ AUTH_REQUEST(RFC 9261 request)
    server → client   Preamble(1) ‖ AUTHENTICATOR(RFC 9261 authenticator)
    client → server   ACCEPT()            — application data follows in both directions, unframed
                   or ERROR(code, reason) — then close_notify
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from atls_proxy.errors import ProtocolError
from atls_proxy.expat.wire import u16, u24

MAGIC = b"\x89EXPAT\r\n"
VERSION = 1
PREAMBLE = MAGIC + bytes([VERSION])
PREAMBLE_LEN = len(PREAMBLE)
HEADER_LEN = 4
# An authenticator is one Certificate (a short chain plus a CMW of at most 65529 bytes), a
# CertificateVerify and a Finished: well under 128 KiB in practice. 256 KiB bounds what one peer can
# make us buffer before any check has run.
MAX_FRAME_PAYLOAD = 256 * 1024
# ERROR reasons are for logs; a line of text is enough.
MAX_REASON = 1024
# The largest valid request (RFC 9261 §4: a handshake header, a context of at most 255 bytes and
# at most 65535 bytes of extensions): 65797 bytes. This client's is 68; a peer's may carry a long
# certificate_authorities list. What a client that never finishes its request can make the
# server hold is about a quarter of the authenticator's cap.
MAX_REQUEST_PAYLOAD = 4 + 1 + 255 + 2 + 0xFFFF


class FrameType(enum.IntEnum):
    AUTH_REQUEST = 0x01
    AUTHENTICATOR = 0x02
    ACCEPT = 0x03
    ERROR = 0x04


# The largest payload each frame type may announce; a larger length fails at its header. Keyed by
# the type byte (an IntEnum member is equal to its value), so the decoder looks the byte up.
_MAX_PAYLOAD: dict[int, int] = {
    FrameType.AUTH_REQUEST: MAX_REQUEST_PAYLOAD,
    FrameType.AUTHENTICATOR: MAX_FRAME_PAYLOAD,
    FrameType.ACCEPT: 0,
    FrameType.ERROR: 2 + MAX_REASON,
}


class ErrorCode(enum.IntEnum):
    UNSUPPORTED_VERSION = 1
    MALFORMED = 2
    UNEXPECTED_FRAME = 3
    ATTESTATION_UNAVAILABLE = 4
    VERIFICATION_FAILED = 5
    TIMEOUT = 6
    INTERNAL = 7


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    payload: bytes


def encode_frame(ftype: FrameType, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_FRAME_PAYLOAD}")
    return bytes([ftype]) + u24(len(payload)) + payload


def encode_error(code: ErrorCode, reason: str) -> bytes:
    text = reason.encode("utf-8", "replace")
    if len(text) > MAX_REASON:
        # Cut at a character boundary: the reason stays valid UTF-8 (a continuation byte is
        # 0b10xxxxxx; at most three precede a character's first byte).
        cut = MAX_REASON
        while cut > 0 and text[cut] & 0xC0 == 0x80:
            cut -= 1
        text = text[:cut]
    return encode_frame(FrameType.ERROR, u16(code) + text)


def error_code_for(check: str, alert: int) -> ErrorCode:
    """The ERROR code that answers a peer's protocol violation (docs/PROTOCOL.md §4): an
    unsupported shim version, a frame the state does not allow, else malformed."""
    if check == "expat.version":
        return ErrorCode.UNSUPPORTED_VERSION
    if check == "expat.frame" and alert == ProtocolError.UNEXPECTED_MESSAGE:
        return ErrorCode.UNEXPECTED_FRAME
    return ErrorCode.MALFORMED


def decode_error(payload: bytes) -> tuple[int, str]:
    if len(payload) < 2 or len(payload) > 2 + MAX_REASON:
        raise ProtocolError("ERROR frame payload has a bad length", check="expat.frame")
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8", "replace")


class Sniff(enum.Enum):
    NEED_MORE = 0
    EXPAT = 1
    OTHER = 2


def sniff_preamble(buf: bytes) -> Sniff:
    """Classify the first bytes of a stream: an Expat preamble, something else, or not yet known."""
    n = min(len(buf), len(MAGIC))
    if buf[:n] != MAGIC[:n]:
        return Sniff.OTHER
    return Sniff.EXPAT if len(buf) >= PREAMBLE_LEN else Sniff.NEED_MORE


# Frames after which the decoder stops: the bytes behind them are not (yet) frames.
_LAST_FRAMES = frozenset({FrameType.ACCEPT, FrameType.AUTHENTICATOR})


class FrameDecoder:
    """Incremental decoder: preamble first, then frames. Errors are sticky (h11's habit)."""

    __slots__ = ("_broken", "_buf", "_preamble_seen")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._preamble_seen = False
        self._broken = False

    def feed(self, data: bytes) -> list[Frame]:
        if self._broken:
            raise ProtocolError("frame stream already failed", check="expat.frame")
        self._buf += data
        try:
            return self._drain()
        except ProtocolError:
            self._broken = True
            raise

    def _drain(self) -> list[Frame]:
        out: list[Frame] = []
        if not self._preamble_seen:
            sniff = sniff_preamble(bytes(self._buf[:PREAMBLE_LEN]))
            if sniff is Sniff.OTHER:
                raise ProtocolError(
                    "peer does not speak the Expat shim (bad magic)", check="expat.preamble"
                )
            if sniff is Sniff.NEED_MORE:
                return out
            version = self._buf[len(MAGIC)]
            if version != VERSION:
                raise ProtocolError(
                    f"unsupported shim version {version} (this side speaks {VERSION})",
                    ProtocolError.PROTOCOL_VERSION,
                    check="expat.version",
                )
            del self._buf[:PREAMBLE_LEN]
            self._preamble_seen = True
        while len(self._buf) >= HEADER_LEN:
            ftype = self._buf[0]
            length = int.from_bytes(self._buf[1:4], "big")
            limit = _MAX_PAYLOAD.get(ftype)
            if limit is None:
                raise ProtocolError(f"unknown frame type 0x{ftype:02x}", check="expat.frame")
            if length > limit:
                raise ProtocolError(
                    f"{FrameType(ftype).name} frame length {length} exceeds {limit}",
                    check="expat.frame",
                )
            if len(self._buf) < HEADER_LEN + length:
                break
            payload = bytes(self._buf[HEADER_LEN : HEADER_LEN + length])
            del self._buf[: HEADER_LEN + length]
            out.append(Frame(FrameType(ftype), payload))
            if ftype in _LAST_FRAMES:
                # After ACCEPT everything is application data (take_rest()); after an
                # AUTHENTICATOR nothing may come before the relying party's ACCEPT
                # (expat-04 §7.3): the caller judges what is left as early data, not as frames.
                break
        return out

    def take_rest(self) -> bytes:
        """Bytes buffered after the last decoded frame: application data after ACCEPT (what
        follows an AUTHENTICATOR is early data, which the relying party refuses)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    @property
    def buffered(self) -> int:
        return len(self._buf)
