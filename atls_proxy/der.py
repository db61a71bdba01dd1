"""A minimal, strict DER reader (ITU-T X.690 §8 and §10): AMD certificates (verify/snp/certs.py)
and the SubjectPublicKeyInfo bytes of a certificate (expat/spki.py).

Why our own: AMD's VCEK and VLEK certificates carry serial number 0, which RFC 5280 §4.1.2.2
forbids. ``cryptography`` 44-50 parse them with a ``CryptographyDeprecationWarning`` and announce
that a future release will raise. The SNP verifier must keep working across that change, so it
walks the certificate DER itself (``certs.py``) and uses ``cryptography`` only for the public-key
operations. Nothing here is AMD-specific.

Only definite lengths in their shortest form, single-byte tags (tag numbers below 31) and
primitive/constructed bits as X.690 sets them are accepted; anything else raises ``DecodeError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from atls_proxy.errors import DecodeError

# X.690 §8.1.2: universal tags (class 0) used in X.509.
TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_UTF8_STRING = 0x0C
TAG_PRINTABLE_STRING = 0x13
TAG_TELETEX_STRING = 0x14
TAG_IA5_STRING = 0x16
TAG_UTC_TIME = 0x17
TAG_GENERALIZED_TIME = 0x18
TAG_BMP_STRING = 0x1E
TAG_SEQUENCE = 0x30
TAG_SET = 0x31
# Context-specific constructed [n] is 0xA0 | n.
TAG_CONTEXT = 0xA0

STRING_TAGS = (TAG_UTF8_STRING, TAG_PRINTABLE_STRING, TAG_TELETEX_STRING, TAG_IA5_STRING)

# A length needs at most 4 bytes here: no certificate element reaches 4 GiB (callers cap the
# input far lower anyway).
MAX_LENGTH_BYTES = 4
# An OID arc or an INTEGER this verifier interprets fits in far fewer bytes; the cap stops
# quadratic big-int work on hostile input. (RSA moduli are read by cryptography, not here.)
MAX_INTEGER_BYTES = 64
MAX_OID_BYTES = 64


@dataclass(frozen=True, slots=True)
class Element:
    """One TLV: ``tag`` byte, ``raw`` = the whole encoding, ``content`` = the value bytes."""

    tag: int
    raw: bytes
    content: bytes


class Reader:
    """Sequential reader over the content of one constructed element (or a whole buffer)."""

    def __init__(self, data: bytes, what: str = "DER") -> None:
        self._data = data
        self._pos = 0
        self._what = what

    def at_end(self) -> bool:
        return self._pos >= len(self._data)

    def peek_tag(self) -> int | None:
        return None if self.at_end() else self._data[self._pos]

    def read(self, tag: int | None = None) -> Element:
        data, pos, what = self._data, self._pos, self._what
        if pos + 2 > len(data):
            raise DecodeError(f"{what}: truncated element")
        got = data[pos]
        if got & 0x1F == 0x1F:
            raise DecodeError(f"{what}: multi-byte tags are not supported")
        if tag is not None and got != tag:
            raise DecodeError(f"{what}: expected tag 0x{tag:02x}, found 0x{got:02x}")
        first = data[pos + 1]
        header = 2
        if first < 0x80:
            length = first
        elif first == 0x80:
            raise DecodeError(f"{what}: indefinite length is not DER")
        else:
            count = first & 0x7F
            if count > MAX_LENGTH_BYTES or pos + 2 + count > len(data):
                raise DecodeError(f"{what}: bad long-form length")
            length = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
            if length < 0x80 or data[pos + 2] == 0:
                raise DecodeError(f"{what}: length not in its shortest form")
            header = 2 + count
        end = pos + header + length
        if end > len(data):
            raise DecodeError(f"{what}: element runs past its container")
        self._pos = end
        return Element(got, data[pos:end], data[pos + header : end])

    def read_optional(self, tag: int) -> Element | None:
        return self.read(tag) if self.peek_tag() == tag else None

    def expect_end(self) -> None:
        if not self.at_end():
            raise DecodeError(f"{self._what}: unexpected data after the last element")


def parse_single(data: bytes, tag: int, what: str) -> Element:
    """``data`` is exactly one element with ``tag``."""
    reader = Reader(data, what)
    element = reader.read(tag)
    reader.expect_end()
    return element


def sequence(element: Element, what: str) -> Reader:
    if not element.tag & 0x20:  # X.690 §8.1.2.5: bit 6 set = constructed
        raise DecodeError(f"{what}: not a constructed element")
    return Reader(element.content, what)


def integer(element: Element, what: str) -> int:
    """X.690 §8.3: two's complement, minimal encoding."""
    content = element.content
    if element.tag != TAG_INTEGER or not content:
        raise DecodeError(f"{what}: not an INTEGER")
    if len(content) > MAX_INTEGER_BYTES:
        raise DecodeError(f"{what}: INTEGER longer than {MAX_INTEGER_BYTES} bytes")
    if len(content) > 1 and (
        (content[0] == 0 and content[1] < 0x80) or (content[0] == 0xFF and content[1] >= 0x80)
    ):
        raise DecodeError(f"{what}: INTEGER not minimally encoded")
    return int.from_bytes(content, "big", signed=True)


def oid(element: Element, what: str) -> str:
    """X.690 §8.19: dotted form."""
    content = element.content
    if element.tag != TAG_OID or not content or len(content) > MAX_OID_BYTES:
        raise DecodeError(f"{what}: not an OBJECT IDENTIFIER")
    if content[-1] & 0x80:
        raise DecodeError(f"{what}: OID ends inside an arc")
    arcs: list[int] = []
    value = 0
    started = False
    for byte in content:
        if not started and byte == 0x80:
            raise DecodeError(f"{what}: OID arc not minimally encoded")
        started = True
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
            started = False
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


def boolean(element: Element, what: str) -> bool:
    if element.tag != TAG_BOOLEAN or len(element.content) != 1:
        raise DecodeError(f"{what}: not a BOOLEAN")
    if element.content[0] not in (0x00, 0xFF):
        raise DecodeError(f"{what}: BOOLEAN is not 0x00 or 0xFF")
    return element.content[0] == 0xFF


def bit_string(element: Element, what: str) -> bytes:
    """The bytes of a BIT STRING with no unused bits (signatures, keys)."""
    if element.tag != TAG_BIT_STRING or not element.content or element.content[0] != 0:
        raise DecodeError(f"{what}: not a BIT STRING of whole bytes")
    return element.content[1:]


def string(element: Element, what: str) -> str:
    if element.tag == TAG_UTF8_STRING:
        try:
            return element.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{what}: bad UTF8String") from exc
    if element.tag in (TAG_PRINTABLE_STRING, TAG_IA5_STRING):
        if any(b > 0x7F for b in element.content):
            raise DecodeError(f"{what}: non-ASCII byte in an ASCII string")
        return element.content.decode("ascii")
    if element.tag == TAG_TELETEX_STRING:
        return element.content.decode("latin-1")
    if element.tag == TAG_BMP_STRING and len(element.content) % 2 == 0:
        try:
            return element.content.decode("utf-16-be")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"{what}: bad BMPString") from exc
    raise DecodeError(f"{what}: not a character string (tag 0x{element.tag:02x})")


def time(element: Element, what: str) -> datetime:
    """RFC 5280 §4.1.2.5: UTCTime YYMMDDHHMMSSZ (YY < 50 is 20YY) or GeneralizedTime
    YYYYMMDDHHMMSSZ, always in UTC with seconds and no fraction."""
    text = element.content
    if element.tag == TAG_UTC_TIME and len(text) == 13:
        pattern = "%y%m%d%H%M%SZ"
    elif element.tag == TAG_GENERALIZED_TIME and len(text) == 15:
        pattern = "%Y%m%d%H%M%SZ"
    else:
        raise DecodeError(f"{what}: not an RFC 5280 UTCTime/GeneralizedTime")
    try:
        moment = datetime.strptime(text.decode("ascii"), pattern)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"{what}: bad time {text!r}") from exc
    if element.tag == TAG_UTC_TIME and moment.year >= 2050:  # RFC 5280: YY >= 50 is 19YY
        moment = moment.replace(year=moment.year - 100)
    return moment.replace(tzinfo=UTC)
