"""RFC 9261 Exported Authenticators: request, authenticate, validate — sans-IO.

Theory of operation
-------------------
An exported authenticator proves possession of a certificate's key *on one TLS connection*: it is
signed and MACed over values exported from that connection's ``exporter_master_secret``, so it is
worthless on any other connection (RFC 9261 §5.1, §9).

The caller supplies an ``Exporter`` — a function ``(label, length, context) -> bytes`` backed by the
live TLS connection (``SSL_export_keying_material``) — and the suite's hash. From it we derive, with
an *empty* exporter context and the hash's output length (RFC 9261 §5.1):

    HandshakeContext = Exporter("EXPORTER-<sender> authenticator handshake context", "", Hash.len)
    FinishedMACKey   = Exporter("EXPORTER-<sender> authenticator finished key",      "", Hash.len)

where ``<sender>`` is the role of the peer that *sends* the authenticator (``client``/``server``);
the validator uses the sender's labels too.

    Authenticator = Certificate ‖ CertificateVerify ‖ Finished                  (RFC 9261 §5.2)
    CV content    = 0x20*64 ‖ "Exported Authenticator" ‖ 0x00 ‖
                    Hash(HandshakeContext ‖ AuthenticatorRequest ‖ Certificate)  (RFC 9261 §5.2.2)
    verify_data   = HMAC(FinishedMACKey,
                    Hash(HandshakeContext ‖ AuthenticatorRequest ‖ Certificate ‖ CertificateVerify))
                                                                                  (RFC 9261 §5.2.3)
    Empty (refusal) = Finished only, MACed over a Certificate with the request's context and an empty
                      certificate_list that is hashed but never sent               (RFC 9261 §6)

``AuthenticatorRequest`` is the full request handshake message including its 4-byte header, as
RFC 9261 §4 defines it. Draft-era implementations (Fizz) hash the body without the header; the
``include_header=False`` switch reproduces that for interop and for Fizz's known-answer tests.

Validation follows the order of RFC 9261 §5.2.4 (digest §2.6): message sequence, context,
extensions offered, CertificateVerify, Finished (constant time). Chain validation is the caller's
(the Expat layer requires the authenticator's end-entity certificate to be the TLS peer certificate,
whose chain TLS already validated).
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import DecodeError, ProtocolError, VerificationError
from atls_proxy.expat import schemes
from atls_proxy.expat.binding import new_hash
from atls_proxy.expat.memo import keep_short
from atls_proxy.expat.messages import (
    CERTIFICATE,
    CERTIFICATE_VERIFY,
    EXT_SIGNATURE_ALGORITHMS,
    FINISHED,
    REQUEST_ONLY_EXTENSIONS,
    AuthenticatorRequest,
    Certificate,
    CertificateEntry,
    CertificateVerify,
    Extension,
    Finished,
    encode_extensions,
    handshake,
    parse_signature_algorithms,
    signature_algorithms_extension,
    split_handshake_messages,
)
from atls_proxy.expat.schemes import SigningKey
from atls_proxy.expat.spki import canonical_key_problem
from atls_proxy.expat.wire import opaque

Exporter = Callable[[bytes, int, bytes], bytes]
"""``exporter(label, length, context)``: RFC 8446 §7.5 TLS-Exporter of the live connection."""

HASH_LENGTHS = {"sha256": 32, "sha384": 48}

# RFC 9261 §5.2.2 CertificateVerify content prefix.
_CV_PREFIX = b"\x20" * 64 + b"Exported Authenticator" + b"\x00"


class Role(Enum):
    CLIENT = "client"
    SERVER = "server"

    @property
    def peer(self) -> Role:
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


# RFC 9261 §5.1 exporter labels per sending role: (handshake context, finished key).
_LABELS = {
    role: (
        f"EXPORTER-{role.value} authenticator handshake context".encode(),
        f"EXPORTER-{role.value} authenticator finished key".encode(),
    )
    for role in Role
}


@dataclass(frozen=True, slots=True)
class AuthenticatorKeys:
    """The two exporter-derived values of RFC 9261 §5.1 for one sender role on one connection."""

    hash_name: str
    handshake_context: bytes
    finished_key: bytes

    @classmethod
    def derive(cls, exporter: Exporter, sender: Role, hash_name: str) -> AuthenticatorKeys:
        n = HASH_LENGTHS[hash_name]
        context_label, finished_label = _LABELS[sender]
        return cls(hash_name, exporter(context_label, n, b""), exporter(finished_label, n, b""))

    def transcript_hash(self, *parts: bytes) -> bytes:
        h = new_hash(self.hash_name, self.handshake_context)
        for p in parts:
            h.update(p)
        return h.digest()

    def finished(self, *parts: bytes) -> bytes:
        """``HMAC(FinishedMACKey, Hash(HandshakeContext ‖ parts...))`` (RFC 9261 §5.2.3)."""
        return hmac.digest(self.finished_key, self.transcript_hash(*parts), self.hash_name)


def request_transcript(request_bytes: bytes, include_header: bool = True) -> bytes:
    """The request bytes as hashed: the full handshake message (RFC 9261 §4) or Fizz's body-only form."""
    return request_bytes if include_header else request_bytes[4:]


def build_request(
    msg_type: int,
    context: bytes,
    offered_schemes: Sequence[int] = schemes.DEFAULT_OFFERED,
    extra_extensions: Iterable[Extension] = (),
) -> AuthenticatorRequest:
    """RFC 9261 §4 request with ``signature_algorithms`` first (mandatory, RFC 9261 §7.1)."""
    if not context:
        # An empty context would make every request on a connection share one binder (digest §2.2).
        raise ValueError("certificate_request_context must not be empty")
    exts = (_signature_algorithms(tuple(offered_schemes)), *extra_extensions)
    return AuthenticatorRequest(msg_type, context, exts)


@functools.lru_cache(maxsize=16)
def _signature_algorithms(offered: tuple[int, ...]) -> Extension:
    return signature_algorithms_extension(offered)


def _empty_certificate(context: bytes) -> bytes:
    return Certificate(context, ()).encode()


def empty_authenticator(
    keys: AuthenticatorKeys, request_bytes: bytes, context: bytes, include_header: bool = True
) -> bytes:
    """RFC 9261 §6: refusal — a lone Finished over an empty Certificate that is not sent."""
    req = request_transcript(request_bytes, include_header)
    return Finished(keys.finished(req, _empty_certificate(context))).encode()


def authenticate(
    keys: AuthenticatorKeys,
    request: AuthenticatorRequest,
    request_bytes: bytes,
    chain: Sequence[bytes],
    private_key: SigningKey,
    entry0_extensions: Sequence[Extension] = (),
    include_header: bool = True,
) -> bytes:
    """Build ``Certificate ‖ CertificateVerify ‖ Finished`` answering ``request`` (RFC 9261 §5.2).

    The scheme is the first of the key's schemes that the request offers; with none in common the
    empty authenticator is returned, as RFC 9261 §5.2.2 requires. ``entry0_extensions`` must all
    have been offered in the request (RFC 9261 §5.2.1).
    """
    if not chain:
        raise ValueError("an authenticator needs at least the end-entity certificate")
    offered_types = {e.ext_type for e in request.extensions}
    for ext in entry0_extensions:
        if ext.ext_type not in offered_types:
            raise ValueError(f"extension 0x{ext.ext_type:04x} was not offered in the request")
    scheme = _scheme_for(request, private_key)
    if scheme is None:
        return empty_authenticator(keys, request_bytes, request.context, include_header)

    cert_msg = certificate_message(request.context, tuple(chain), entry0_extensions)
    req = request_transcript(request_bytes, include_header)
    content = _CV_PREFIX + keys.transcript_hash(req, cert_msg)
    cv_msg = CertificateVerify(scheme, schemes.sign(private_key, scheme, content)).encode()
    fin_msg = Finished(keys.finished(req, cert_msg, cv_msg)).encode()
    return cert_msg + cv_msg + fin_msg


def _scheme_for(request: AuthenticatorRequest, private_key: SigningKey) -> int | None:
    """The first of the key's schemes that the request offers (RFC 9261 §5.2.2), or None."""
    sig_ext = request.extension(EXT_SIGNATURE_ALGORITHMS)
    offered = parse_signature_algorithms(sig_ext) if sig_ext else ()
    return next((s for s in schemes.schemes_for_key(private_key) if s in offered), None)


def can_answer(request: AuthenticatorRequest, private_key: SigningKey) -> bool:
    """Whether ``authenticate`` would answer with an identity (not the empty authenticator)."""
    return _scheme_for(request, private_key) is not None


def certificate_message(
    context: bytes, chain: tuple[bytes, ...], entry0_extensions: Sequence[Extension] = ()
) -> bytes:
    """``Certificate(context, [chain[0] + entry0_extensions, *chain[1:]]).encode()``; the parts
    that are the same on every connection (the certificates) are encoded once per chain."""
    leaf, rest = _chain_parts(chain)
    entries = leaf + opaque(2, encode_extensions(entry0_extensions)) + rest
    return handshake(CERTIFICATE, opaque(1, context) + opaque(3, entries))


@functools.lru_cache(maxsize=8)
def _chain_parts(chain: tuple[bytes, ...]) -> tuple[bytes, bytes]:
    rest = b"".join(CertificateEntry(der).encode() for der in chain[1:])
    return opaque(3, chain[0], minimum=1), rest


@dataclass(frozen=True, slots=True)
class ValidatedAuthenticator:
    """Outcome of ``validate``. ``empty`` is a well-formed refusal: valid MAC, no identity (RFC 9261 §7.4)."""

    empty: bool
    certificate: Certificate | None = None
    scheme: int | None = None
    # The key the CertificateVerify signature was verified with (the leaf's), and its DER
    # SubjectPublicKeyInfo.
    signer: CertificatePublicKeyTypes | None = None
    signer_spki: bytes | None = None


def validate(
    keys: AuthenticatorKeys,
    request: AuthenticatorRequest,
    request_bytes: bytes,
    authenticator: bytes,
    include_header: bool = True,
    entry0_only: frozenset[int] = frozenset(),
) -> ValidatedAuthenticator:
    """Validate an authenticator answering ``request`` (RFC 9261 §5.2.4, digest §2.6).

    Raises ``DecodeError``/``ProtocolError`` for malformed or illegal messages and
    ``VerificationError`` (check ``ea.signature`` / ``ea.finished``) for failed cryptography.
    ``entry0_only`` lists extension types allowed only in the first CertificateEntry.
    """
    req = request_transcript(request_bytes, include_header)
    msgs = split_handshake_messages(authenticator, limit=3)
    types = [m[0] for m in msgs]

    if types == [FINISHED]:
        expected = keys.finished(req, _empty_certificate(request.context))
        if not hmac.compare_digest(msgs[0][1], expected):
            raise VerificationError("ea.finished", "empty authenticator Finished does not match")
        return ValidatedAuthenticator(empty=True)
    if types != [CERTIFICATE, CERTIFICATE_VERIFY, FINISHED]:
        raise ProtocolError(
            f"authenticator message sequence {types} is neither [11, 15, 20] nor [20]",
            ProtocolError.UNEXPECTED_MESSAGE,
            check="ea.messages",
        )
    (_, cert_body, cert_msg), (_, cv_body, cv_msg), (_, fin_body, _) = msgs

    cert = Certificate.decode_body(cert_body)
    if not hmac.compare_digest(cert.context, request.context):
        raise ProtocolError(
            "certificate_request_context does not match the request",
            ProtocolError.ILLEGAL_PARAMETER,
            check="ea.context",
        )
    if not cert.entries:
        raise ProtocolError(
            "Certificate has no certificates", ProtocolError.DECODE_ERROR, check="ea.certificate"
        )

    # RFC 9261 §5.2.1: only extensions present in the request; RFC 8446 §4.4.2 alert for others.
    offered_types = {e.ext_type for e in request.extensions}
    for i, entry in enumerate(cert.entries):
        for ext in entry.extensions:
            if ext.ext_type in REQUEST_ONLY_EXTENSIONS:
                # RFC 8446 §4.2: a known extension in a message it is not specified for
                raise ProtocolError(
                    f"CertificateEntry {i} carries 0x{ext.ext_type:04x}, an extension of the "
                    "request only (RFC 8446 §4.2)",
                    ProtocolError.ILLEGAL_PARAMETER,
                    check="ea.extensions",
                )
            if ext.ext_type not in offered_types:
                raise ProtocolError(
                    f"CertificateEntry {i} carries extension 0x{ext.ext_type:04x} that was not offered",
                    ProtocolError.UNSUPPORTED_EXTENSION,
                    check="ea.extensions",
                )
            if i > 0 and ext.ext_type in entry0_only:
                raise ProtocolError(
                    f"extension 0x{ext.ext_type:04x} is only allowed in the first CertificateEntry",
                    ProtocolError.UNSUPPORTED_EXTENSION,
                    check="ea.extensions",
                )

    try:
        _, public_key, spki = parse_leaf(cert.entries[0].cert_data)
    except (ValueError, TypeError) as exc:  # cryptography's parse errors
        raise ProtocolError(
            f"end-entity certificate does not parse: {exc}",
            ProtocolError.BAD_CERTIFICATE,
            check="ea.certificate",
        ) from None
    except Exception as exc:  # unsupported key algorithms raise UnsupportedAlgorithm
        raise ProtocolError(
            f"end-entity certificate unusable: {exc}",
            ProtocolError.BAD_CERTIFICATE,
            check="ea.certificate",
        ) from None

    cv = CertificateVerify.decode_body(cv_body)
    sig_ext = request.extension(EXT_SIGNATURE_ALGORITHMS)
    offered_schemes = parse_signature_algorithms(sig_ext) if sig_ext else ()
    if cv.scheme not in offered_schemes:
        raise ProtocolError(
            f"CertificateVerify uses {schemes.scheme_name(cv.scheme)}, which was not offered",
            ProtocolError.ILLEGAL_PARAMETER,
            check="ea.signature",
        )
    content = _CV_PREFIX + keys.transcript_hash(req, cert_msg)
    schemes.verify(public_key, cv.scheme, cv.signature, content)

    expected = keys.finished(req, cert_msg, cv_msg)
    if len(fin_body) != len(expected) or not hmac.compare_digest(fin_body, expected):
        raise VerificationError("ea.finished", "Finished does not match the transcript")
    return ValidatedAuthenticator(
        empty=False,
        certificate=cert,
        scheme=cv.scheme,
        signer=public_key,
        signer_spki=spki,
    )


Leaf = tuple[x509.Certificate, CertificatePublicKeyTypes, bytes]


# A relying party sees the same server certificate on every connection and parsing is
# deterministic, so the parse is kept (expat/memo.py): certificates up to 16 KiB, at most 64.
@keep_short(16 * 1024, maxsize=64)
def parse_leaf(der: bytes) -> Leaf:
    """The certificate in ``der``, its public key and DER SPKI; raises what ``cryptography``
    raises for a certificate or key it cannot use, and ValueError for a key this profile cannot
    bind evidence to (expat/spki.py)."""
    leaf = x509.load_der_x509_certificate(der)
    problem = canonical_key_problem(leaf, der)
    if problem is not None:
        raise ValueError(f"unsupported end-entity key: {problem}")
    key = leaf.public_key()
    return leaf, key, key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def request_from_bytes(data: bytes) -> AuthenticatorRequest:
    """Decode a request and check what RFC 9261 §4 and §7.1 require of it."""
    req = AuthenticatorRequest.decode(data)
    sig = req.extension(EXT_SIGNATURE_ALGORITHMS)
    if sig is None:
        raise ProtocolError(
            "authenticator request without signature_algorithms",
            ProtocolError.DECODE_ERROR,
            check="ea.request",
        )
    try:
        parse_signature_algorithms(sig)
    except DecodeError as exc:
        raise ProtocolError(str(exc), ProtocolError.DECODE_ERROR, check="ea.request") from None
    return req
