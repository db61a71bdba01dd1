"""Codecs for the handshake messages RFC 9261 exchanges, each a full ``Handshake`` message
(``uint8 msg_type ‖ uint24 length ‖ body``, RFC 8446 §4) without record framing.

Every structure has a ``encode()`` method and a ``decode()`` classmethod; ``decode`` consumes
exactly the given bytes and raises ``DecodeError`` on anything else, so ``decode(x).encode() == x``
holds for every accepted input (the golden-byte tests check it).

    CertificateRequest (13) / ClientCertificateRequest (17)    RFC 9261 §4; RFC 8446 §4.3.2
    Certificate (11), CertificateEntry                          RFC 9261 §5.2.1; RFC 8446 §4.4.2
    CertificateVerify (15)                                      RFC 9261 §5.2.2; RFC 8446 §4.4.3
    Finished (20)                                               RFC 9261 §5.2.3; RFC 8446 §4.4.4
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

from atls_proxy.errors import DecodeError, ProtocolError
from atls_proxy.expat.memo import keep_short
from atls_proxy.expat.wire import Reader, opaque, u8, u16, u24

# RFC 8446 §4 / RFC 9261 §8.3 HandshakeType values.
CERTIFICATE = 11
CERTIFICATE_REQUEST = 13
CERTIFICATE_VERIFY = 15
CLIENT_CERTIFICATE_REQUEST = 17
FINISHED = 20
REQUEST_TYPES = frozenset({CERTIFICATE_REQUEST, CLIENT_CERTIFICATE_REQUEST})

# RFC 8446 §4.2 extension code points used by the authenticator request.
EXT_SERVER_NAME = 0x0000
EXT_STATUS_REQUEST = 0x0005
EXT_SIGNATURE_ALGORITHMS = 0x000D
EXT_SIGNED_CERTIFICATE_TIMESTAMP = 0x0012
EXT_CERTIFICATE_AUTHORITIES = 0x002F
EXT_OID_FILTERS = 0x0030
EXT_SIGNATURE_ALGORITHMS_CERT = 0x0032
# RFC 8446 §4.2's table: the extensions a CertificateRequest or a CertificateEntry may carry;
# a cmw_attestation code point must be none of them (ops/config.py).
REQUEST_AND_ENTRY_EXTENSIONS = {
    EXT_STATUS_REQUEST: "status_request",
    EXT_SIGNATURE_ALGORITHMS: "signature_algorithms",
    EXT_SIGNED_CERTIFICATE_TIMESTAMP: "signed_certificate_timestamp",
    EXT_CERTIFICATE_AUTHORITIES: "certificate_authorities",
    EXT_OID_FILTERS: "oid_filters",
    EXT_SIGNATURE_ALGORITHMS_CERT: "signature_algorithms_cert",
}
# Of those, the ones RFC 8446 §4.2 allows in a CertificateRequest only (no "CT" in its table):
# never in a CertificateEntry.
REQUEST_ONLY_EXTENSIONS = frozenset(
    {
        EXT_SIGNATURE_ALGORITHMS,
        EXT_CERTIFICATE_AUTHORITIES,
        EXT_OID_FILTERS,
        EXT_SIGNATURE_ALGORITHMS_CERT,
    }
)

# certificate_request_context<0..2^8-1> (RFC 8446 §4.3.2).
MAX_CONTEXT = 255
# An authenticator carries at most a short chain with one CMW: 256 KiB of handshake message is
# far above any real chain plus a 64 KiB CMW (Expat's nested uint16s inside the entry's extensions cap
# cmw_data at 65529 bytes, digest O-13) and bounds what one peer can make us buffer and hash.
MAX_HANDSHAKE_MESSAGE = 256 * 1024
# A sane chain: leaf plus a few intermediates. Longer lists are refused before parsing certificates.
MAX_CERTIFICATE_ENTRIES = 8
# Extensions in one request or one entry; real ones carry a handful.
MAX_EXTENSIONS = 32


@dataclass(frozen=True, slots=True)
class Extension:
    """RFC 8446 §4.2 ``Extension { ExtensionType extension_type; opaque extension_data<0..2^16-1> }``."""

    ext_type: int
    data: bytes = b""

    def encode(self) -> bytes:
        return u16(self.ext_type) + opaque(2, self.data)


def encode_extensions(exts: Iterable[Extension]) -> bytes:
    return b"".join(e.encode() for e in exts)


# A peer sends the same short extension blocks on every connection (a request's
# signature_algorithms and cmw_attestation offer): their parse is kept (expat/memo.py; immutable
# Extensions, bounded in entries and block size, failures never kept).
_MEMO_BLOCK = 256


@keep_short(_MEMO_BLOCK, maxsize=128)
def decode_extensions(block: bytes, what: str) -> tuple[Extension, ...]:
    """Parse an extension list; duplicate types are an error (RFC 8446 §4.2)."""
    r = Reader(block, what)
    out: list[Extension] = []
    seen: set[int] = set()
    while r.remaining:
        ext_type = r.uint(2)
        data = r.opaque(2)
        if ext_type in seen:
            raise ProtocolError(
                f"{what}: duplicate extension 0x{ext_type:04x}",
                ProtocolError.ILLEGAL_PARAMETER,
                check="ea.extensions",
            )
        if len(out) >= MAX_EXTENSIONS:
            raise DecodeError(f"{what}: more than {MAX_EXTENSIONS} extensions")
        seen.add(ext_type)
        out.append(Extension(ext_type, data))
    return tuple(out)


def handshake(msg_type: int, body: bytes) -> bytes:
    """Wrap ``body`` in the 4-byte handshake header."""
    if len(body) > MAX_HANDSHAKE_MESSAGE:
        raise ValueError(f"handshake message of {len(body)} bytes exceeds {MAX_HANDSHAKE_MESSAGE}")
    return u8(msg_type) + u24(len(body)) + body


def split_handshake_messages(data: bytes, limit: int = 3) -> list[tuple[int, bytes, bytes]]:
    """Split concatenated handshake messages into ``(type, body, full_message_bytes)``.

    At most ``limit`` messages; anything more, or a truncated message, is a ``DecodeError``.
    """
    r = Reader(data, "handshake messages")
    out: list[tuple[int, bytes, bytes]] = []
    while r.remaining:
        if len(out) == limit:
            raise DecodeError(f"more than {limit} handshake messages")
        start = len(data) - r.remaining
        msg_type = r.uint(1)
        length = r.uint(3)
        if length > MAX_HANDSHAKE_MESSAGE:
            raise DecodeError(f"handshake message length {length} exceeds {MAX_HANDSHAKE_MESSAGE}")
        body = r.take(length)
        out.append((msg_type, body, data[start : start + 4 + length]))
    return out


def _single(data: bytes, expected_type: int | frozenset[int], what: str) -> tuple[int, bytes]:
    msgs = split_handshake_messages(data, limit=1)
    if not msgs:
        raise DecodeError(f"{what}: empty")
    msg_type, body, _ = msgs[0]
    allowed = expected_type if isinstance(expected_type, frozenset) else frozenset({expected_type})
    if msg_type not in allowed:
        raise ProtocolError(
            f"{what}: unexpected handshake type {msg_type}", ProtocolError.UNEXPECTED_MESSAGE
        )
    return msg_type, body


@dataclass(frozen=True, slots=True)
class AuthenticatorRequest:
    """RFC 9261 §4: a CertificateRequest (13, sent by a server) or ClientCertificateRequest (17)."""

    msg_type: int
    context: bytes
    extensions: tuple[Extension, ...]

    def __post_init__(self) -> None:
        if self.msg_type not in REQUEST_TYPES:
            raise ValueError(f"authenticator request type must be 13 or 17, not {self.msg_type}")
        if len(self.context) > MAX_CONTEXT:
            raise ValueError("certificate_request_context is at most 255 bytes")

    def body(self) -> bytes:
        # extensions<2..2^16-1>: RFC 9261 §4 requires at least signature_algorithms.
        return opaque(1, self.context) + _extensions_block(self.extensions)

    def encode(self) -> bytes:
        return handshake(self.msg_type, self.body())

    @classmethod
    def decode(cls, data: bytes) -> AuthenticatorRequest:
        msg_type, body = _single(data, REQUEST_TYPES, "authenticator request")
        r = Reader(body, "authenticator request")
        context = r.opaque(1)
        exts = decode_extensions(r.opaque(2, minimum=2), "authenticator request extensions")
        r.end()
        return cls(msg_type, context, exts)

    def extension(self, ext_type: int) -> Extension | None:
        return next((e for e in self.extensions if e.ext_type == ext_type), None)


@functools.lru_cache(maxsize=64)
def _extensions_block(exts: tuple[Extension, ...]) -> bytes:
    """A request's ``extensions<2..2^16-1>``; a client sends the same ones on every connection."""
    return opaque(2, encode_extensions(exts), minimum=2)


@dataclass(frozen=True, slots=True)
class CertificateEntry:
    """RFC 8446 §4.4.2 ``CertificateEntry`` with X.509 ``cert_data<1..2^24-1>`` (RFC 9261 §5.2.1)."""

    cert_data: bytes
    extensions: tuple[Extension, ...] = ()

    def encode(self) -> bytes:
        return opaque(3, self.cert_data, minimum=1) + opaque(2, encode_extensions(self.extensions))


@dataclass(frozen=True, slots=True)
class Certificate:
    """RFC 8446 §4.4.2 ``Certificate`` (type 11) echoing the request's context."""

    context: bytes
    entries: tuple[CertificateEntry, ...]

    def encode(self) -> bytes:
        entries = b"".join(e.encode() for e in self.entries)
        return handshake(CERTIFICATE, opaque(1, self.context) + opaque(3, entries))

    @classmethod
    def decode_body(cls, body: bytes) -> Certificate:
        r = Reader(body, "Certificate")
        context = r.opaque(1)
        entries_r = Reader(r.opaque(3), "Certificate entries")
        r.end()
        entries: list[CertificateEntry] = []
        while entries_r.remaining:
            if len(entries) == MAX_CERTIFICATE_ENTRIES:
                raise DecodeError(f"Certificate: more than {MAX_CERTIFICATE_ENTRIES} entries")
            cert_data = entries_r.opaque(3, minimum=1)
            exts = decode_extensions(entries_r.opaque(2), "CertificateEntry extensions")
            entries.append(CertificateEntry(cert_data, exts))
        return cls(context, tuple(entries))

    @classmethod
    def decode(cls, data: bytes) -> Certificate:
        return cls.decode_body(_single(data, CERTIFICATE, "Certificate")[1])


@dataclass(frozen=True, slots=True)
class CertificateVerify:
    """RFC 8446 §4.4.3 ``CertificateVerify { SignatureScheme algorithm; opaque signature<0..2^16-1> }``."""

    scheme: int
    signature: bytes

    def encode(self) -> bytes:
        return handshake(CERTIFICATE_VERIFY, u16(self.scheme) + opaque(2, self.signature))

    @classmethod
    def decode_body(cls, body: bytes) -> CertificateVerify:
        r = Reader(body, "CertificateVerify")
        scheme = r.uint(2)
        sig = r.opaque(2)
        r.end()
        return cls(scheme, sig)

    @classmethod
    def decode(cls, data: bytes) -> CertificateVerify:
        return cls.decode_body(_single(data, CERTIFICATE_VERIFY, "CertificateVerify")[1])


@dataclass(frozen=True, slots=True)
class Finished:
    """RFC 8446 §4.4.4 ``Finished { opaque verify_data[Hash.length] }``."""

    verify_data: bytes

    def encode(self) -> bytes:
        return handshake(FINISHED, self.verify_data)

    @classmethod
    def decode(cls, data: bytes) -> Finished:
        return cls(_single(data, FINISHED, "Finished")[1])


def signature_algorithms_extension(
    schemes: Iterable[int], ext_type: int = EXT_SIGNATURE_ALGORITHMS
) -> Extension:
    """``SignatureScheme supported_signature_algorithms<2..2^16-2>`` (RFC 8446 §4.2.3)."""
    body = b"".join(u16(s) for s in schemes)
    return Extension(ext_type, opaque(2, body, minimum=2))


def parse_signature_algorithms(ext: Extension) -> tuple[int, ...]:
    return _schemes(ext.data)


# Peers send the same short list on every connection: its parse is kept, like the extension blocks.
@keep_short(_MEMO_BLOCK, maxsize=64)
def _schemes(data: bytes) -> tuple[int, ...]:
    r = Reader(data, "signature_algorithms")
    block = r.opaque(2, minimum=2)
    r.end()
    if len(block) % 2:
        raise DecodeError("signature_algorithms: odd length")
    return tuple(int.from_bytes(block[i : i + 2], "big") for i in range(0, len(block), 2))
