"""The Expat exchange on one TLS connection, as two sans-IO state machines.

Theory of operation
-------------------
The adapter completes the TLS 1.3 handshake, then hands each session a ``TLSInfo`` (the connection's
exporter and the suite's hash) and feeds it the plaintext bytes it reads; the session returns
*events* and the adapter writes the bytes the session's methods return. Sessions never touch a
socket, a clock or a file; evidence production and appraisal, which may be slow, happen in the
adapter between two calls.

``AttesterSession`` (the server attests; the client is the relying party):

    PREAMBLE --Expat preamble--> REQUEST --AUTH_REQUEST(17)--> ATTESTING --authenticator()--> RESULT
        |                                                                                     |
        +--other bytes--> PLAIN (event PlainClient: the adapter refuses or serves unattested)  |
                                                      ESTABLISHED <--ACCEPT--------------------+
    any ERROR frame or violation --> CLOSED (sticky)

``RelyingPartySession`` (the client):

    START --start()--> AWAIT_AUTHENTICATOR --AUTHENTICATOR validated--> APPRAISING
        --accept()--> ESTABLISHED   |   --reject()--> CLOSED

Security rules enforced here (expat-04 §3, §5, §7; RFC 9261 §5.2):

* the request is a ClientCertificateRequest (17) with a fresh, non-empty context never used before on
  this connection; the attester answers with the *server* authenticator labels;
* cmw_attestation is answered only when offered, and accepted only in CertificateEntry 0
  (``unsupported_extension`` otherwise);
* the authenticator's end-entity certificate must be the very certificate the TLS handshake
  authenticated (this profile's identity rule: attestation is added to PKIX, never replaces it);
* no application byte is accepted from the attester before the relying party sent ACCEPT, and the
  attester forwards nothing before it received ACCEPT.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import DecodeError, ProtocolError, VerificationError
from atls_proxy.expat import authenticator as ea
from atls_proxy.expat import framing
from atls_proxy.expat.binding import EXPORTED_VALUE_LENGTH, Binding, compute_binding
from atls_proxy.expat.framing import ErrorCode, FrameDecoder, FrameType
from atls_proxy.expat.messages import CLIENT_CERTIFICATE_REQUEST, AuthenticatorRequest
from atls_proxy.expat.profile import ExpatProfile
from atls_proxy.expat.schemes import DEFAULT_OFFERED, SigningKey, scheme_name
from atls_proxy.verify.result import Check


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What a session needs of the live TLS 1.3 connection."""

    exporter: ea.Exporter
    hash_name: str  # "sha256" | "sha384": the suite's HKDF hash


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlainClient:
    """The client's first bytes are not the Expat preamble: a plain TLS client."""

    initial: bytes


@dataclass(frozen=True, slots=True)
class AttestationRequested:
    """Produce evidence for ``binding``. None when no evidence can be sent: the request did not
    offer cmw_attestation, or offers no signature scheme the server's key can sign with (the
    answer is then RFC 9261 §5.2.2's empty authenticator, and a quote would be wasted)."""

    request: AuthenticatorRequest
    binding: Binding | None


@dataclass(frozen=True, slots=True)
class Accepted:
    """The relying party accepted; ``data`` is application data that arrived with ACCEPT."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PeerError:
    """The peer sent an ERROR frame."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class AuthenticatorValidated:
    """RFC 9261 validation passed; appraise ``cmw`` against ``binding`` next."""

    binding: Binding
    cmw: bytes
    checks: list[Check] = field(default_factory=list)
    # The key the authenticator's CertificateVerify was verified with: the TLS server
    # certificate's key (ea.identity). Its signature covers the Certificate message carrying
    # ``cmw`` (RFC 9261 §5.2.2), so ``cmw`` is these exact bytes as that key's holder sent them
    # on this connection (verify/appraise.py: ``cmw_signed_by_aik``).
    signer: CertificatePublicKeyTypes | None = None


Event = PlainClient | AttestationRequested | Accepted | PeerError | AuthenticatorValidated


def spki_der(cert: x509.Certificate) -> bytes:
    """DER SubjectPublicKeyInfo of a certificate's key: this profile's public_key encoding (O-3)."""
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _binding(tls: TLSInfo, profile: ExpatProfile, spki: bytes, context: bytes) -> Binding:
    exported = tls.exporter(profile.exporter_label, EXPORTED_VALUE_LENGTH, context)
    return compute_binding(tls.hash_name, spki, exported)


class _State(enum.Enum):
    PREAMBLE = "preamble"
    REQUEST = "request"
    ATTESTING = "attesting"
    RESULT = "result"
    ESTABLISHED = "established"
    PLAIN = "plain"
    CLOSED = "closed"
    START = "start"
    AWAIT_AUTHENTICATOR = "await-authenticator"
    APPRAISING = "appraising"


class _Base:
    def __init__(self) -> None:
        self._decoder = FrameDecoder()
        self._preamble_sent = False

    def _out(self, frame: bytes) -> bytes:
        if self._preamble_sent:
            return frame
        self._preamble_sent = True
        return framing.PREAMBLE + frame


class AttesterSession(_Base):
    """The server side: answers one attestation request per connection (v1 of the shim)."""

    def __init__(
        self,
        tls: TLSInfo,
        chain: Sequence[bytes],
        private_key: SigningKey,
        profile: ExpatProfile,
        spki: bytes | None = None,
    ) -> None:
        """``spki``: the leaf's DER SubjectPublicKeyInfo, when the caller has it already (a
        server computes it once, not per connection); derived from ``chain[0]`` otherwise."""
        super().__init__()
        if not chain:
            raise ValueError("the attester needs its certificate chain")
        self._tls = tls
        self._chain = chain
        self._key = private_key
        self._profile = profile
        self._spki = (
            spki if spki is not None else spki_der(x509.load_der_x509_certificate(chain[0]))
        )
        self._state = _State.PREAMBLE
        self._sniff = b""
        self._used_contexts: set[bytes] = set()
        self._request: AuthenticatorRequest | None = None
        self._request_bytes = b""
        # Whether the pending request can carry evidence (AttestationRequested.binding is set).
        self._can_attest = False
        # Whether the authenticator carried evidence: a relying party's ACCEPT without it is not
        # an attested connection.
        self.evidence_sent = False
        # Whether an authenticator (with or without evidence, or a refusal) was produced: from
        # then on the relying party may read any byte as application data once it accepts.
        self.answered = False

    @property
    def state(self) -> str:
        return self._state.value

    def receive(self, data: bytes) -> list[Event]:
        if self._state is _State.CLOSED:
            raise ProtocolError("session is closed", check="expat.state")
        if self._state in (_State.ESTABLISHED, _State.PLAIN):
            raise ProtocolError("session no longer reads frames", check="expat.state")
        try:
            return self._receive(data)
        except (ProtocolError, DecodeError, VerificationError):
            self._state = _State.CLOSED
            raise

    def _receive(self, data: bytes) -> list[Event]:
        if self._state is _State.PREAMBLE:
            self._sniff += data
            sniff = framing.sniff_preamble(self._sniff[: framing.PREAMBLE_LEN])
            if sniff is framing.Sniff.NEED_MORE:
                return []
            if sniff is framing.Sniff.OTHER:
                self._state = _State.PLAIN
                return [PlainClient(self._sniff)]
            self._state = _State.REQUEST
            data, self._sniff = self._sniff, b""
        events: list[Event] = []
        for frame in self._decoder.feed(data):
            if frame.type is FrameType.ERROR:
                code, reason = framing.decode_error(frame.payload)
                self._state = _State.CLOSED
                return [*events, PeerError(code, reason)]
            if self._state is _State.REQUEST and frame.type is FrameType.AUTH_REQUEST:
                events.append(self._on_request(frame.payload))
            elif self._state is _State.RESULT and frame.type is FrameType.ACCEPT:
                # (an ACCEPT with a payload fails in the decoder: its length cap is 0)
                self._state = _State.ESTABLISHED
                events.append(Accepted(self._decoder.take_rest()))
                return events
            else:
                raise ProtocolError(
                    f"unexpected {frame.type.name} frame in state {self._state.value}",
                    ProtocolError.UNEXPECTED_MESSAGE,
                    check="expat.frame",
                )
        return events

    def _on_request(self, payload: bytes) -> AttestationRequested:
        req = ea.request_from_bytes(payload)
        if req.msg_type != CLIENT_CERTIFICATE_REQUEST:
            # expat-04 §4.2: a client asking the server to attest sends a ClientCertificateRequest.
            raise ProtocolError(
                "a client asks the server with ClientCertificateRequest (17)",
                ProtocolError.UNEXPECTED_MESSAGE,
                check="ea.request",
            )
        if not req.context:
            raise ProtocolError(
                "empty certificate_request_context",
                ProtocolError.ILLEGAL_PARAMETER,
                check="ea.context",
            )
        if req.context in self._used_contexts:
            # RFC 9261 §5.2: never answer the same context twice on a connection.
            raise ProtocolError(
                "certificate_request_context reused",
                ProtocolError.ILLEGAL_PARAMETER,
                check="ea.context",
            )
        self._used_contexts.add(req.context)
        offer = req.extension(self._profile.extension_type)
        binding = None
        if offer is not None:
            self._profile.check_offer_is_empty(offer)
            if ea.can_answer(req, self._key):
                binding = _binding(self._tls, self._profile, self._spki, req.context)
        self._request, self._request_bytes = req, payload
        self._can_attest = binding is not None
        self._state = _State.ATTESTING
        return AttestationRequested(req, binding)

    def authenticator(self, cmw: bytes | None) -> bytes:
        """The AUTHENTICATOR frame answering the pending request, carrying ``cmw`` in entry 0."""
        if self._state is not _State.ATTESTING or self._request is None:
            raise RuntimeError(f"no pending request (state {self._state.value})")
        req = self._request
        exts = []
        if cmw is not None:
            if not self._can_attest:
                # Not offered, or no common signature scheme (RFC 9261 §5.2.2: the answer is the
                # empty authenticator, which cannot carry it).
                raise RuntimeError("no evidence was asked for (binding None); it must not be sent")
            exts.append(self._profile.attestation_extension(cmw))
        keys = ea.AuthenticatorKeys.derive(self._tls.exporter, ea.Role.SERVER, self._tls.hash_name)
        auth = ea.authenticate(
            keys,
            req,
            self._request_bytes,
            self._chain,
            self._key,
            exts,
            self._profile.request_header_in_transcript,
        )
        self.evidence_sent = cmw is not None
        self.answered = True
        self._state = _State.RESULT
        return self._out(framing.encode_frame(FrameType.AUTHENTICATOR, auth))

    def refuse(self) -> bytes:
        """RFC 9261 §6 empty authenticator: the server declines to attest."""
        if self._state is not _State.ATTESTING or self._request is None:
            raise RuntimeError(f"no pending request (state {self._state.value})")
        keys = ea.AuthenticatorKeys.derive(self._tls.exporter, ea.Role.SERVER, self._tls.hash_name)
        auth = ea.empty_authenticator(
            keys,
            self._request_bytes,
            self._request.context,
            self._profile.request_header_in_transcript,
        )
        self.answered = True
        self._state = _State.RESULT
        return self._out(framing.encode_frame(FrameType.AUTHENTICATOR, auth))

    def error(self, code: ErrorCode, reason: str) -> bytes:
        self._state = _State.CLOSED
        return self._out(framing.encode_error(code, reason))


class RelyingPartySession(_Base):
    """The client side: requests the server's attestation and validates the authenticator."""

    def __init__(
        self,
        tls: TLSInfo,
        profile: ExpatProfile,
        context: bytes,
        peer_certificate: bytes,
        offered_schemes: Sequence[int] = DEFAULT_OFFERED,
    ) -> None:
        """``peer_certificate``: the DER certificate the TLS handshake authenticated; the
        authenticator must carry that very certificate (``ea.identity``, always checked)."""
        super().__init__()
        if not peer_certificate:
            raise ValueError("the relying party needs the TLS server certificate (ea.identity)")
        if len(context) < 16:
            raise ValueError(
                "use at least 16 random bytes of certificate_request_context (32 recommended)"
            )
        self._tls = tls
        self._profile = profile
        self._peer_certificate = peer_certificate
        self._request = ea.build_request(
            CLIENT_CERTIFICATE_REQUEST, context, offered_schemes, [profile.offer()]
        )
        self._request_bytes = self._request.encode()
        self._state = _State.START
        self.checks: list[Check] = []

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def request(self) -> AuthenticatorRequest:
        return self._request

    def start(self) -> bytes:
        if self._state is not _State.START:
            raise RuntimeError("start() is called once")
        self._state = _State.AWAIT_AUTHENTICATOR
        return self._out(framing.encode_frame(FrameType.AUTH_REQUEST, self._request_bytes))

    def receive(self, data: bytes) -> list[Event]:
        if self._state is _State.CLOSED:
            raise ProtocolError("session is closed", check="expat.state")
        try:
            return self._receive(data)
        except (ProtocolError, DecodeError, VerificationError):
            self._state = _State.CLOSED
            raise

    def _receive(self, data: bytes) -> list[Event]:
        if self._state is _State.APPRAISING:
            # The server sent something while we appraise: it must wait for ACCEPT (expat-04 §7.3).
            raise ProtocolError(
                "server sent data before attestation completed", check="expat.early-data"
            )
        if self._state is not _State.AWAIT_AUTHENTICATOR:
            raise ProtocolError(
                f"no frames expected in state {self._state.value}", check="expat.state"
            )
        frames = self._decoder.feed(data)
        for frame in frames:
            if frame.type is FrameType.ERROR:
                code, reason = framing.decode_error(frame.payload)
                self._state = _State.CLOSED
                return [PeerError(code, reason)]
            if frame.type is not FrameType.AUTHENTICATOR:
                raise ProtocolError(
                    f"unexpected {frame.type.name} frame",
                    ProtocolError.UNEXPECTED_MESSAGE,
                    check="expat.frame",
                )
            if self._decoder.buffered:
                # Anything behind the authenticator (the decoder stops after it) arrived before
                # our ACCEPT (expat-04 §7.3).
                raise ProtocolError(
                    "server sent data before attestation completed", check="expat.early-data"
                )
            return [self._on_authenticator(frame.payload)]
        return []

    def _on_authenticator(self, payload: bytes) -> AuthenticatorValidated:
        self.checks.append(Check("expat.preamble", True, "server speaks shim v1"))
        keys = ea.AuthenticatorKeys.derive(self._tls.exporter, ea.Role.SERVER, self._tls.hash_name)
        try:
            result = ea.validate(
                keys,
                self._request,
                self._request_bytes,
                payload,
                self._profile.request_header_in_transcript,
                entry0_only=frozenset({self._profile.extension_type}),
            )
        except DecodeError as exc:
            raise ProtocolError(str(exc), ProtocolError.DECODE_ERROR, check="ea.decode") from None
        if result.empty:
            raise VerificationError(
                "ea.refused", "the server declined to attest (empty authenticator, RFC 9261 §6)"
            )
        assert (
            result.certificate is not None
            and result.scheme is not None
            and result.signer_spki is not None
        )
        self.checks += [
            Check("ea.context", True, "matches the outstanding request; first use"),
            Check(
                "ea.extensions", True, "only offered extensions, cmw_attestation in entry 0 only"
            ),
            Check(
                "ea.signature",
                True,
                "CertificateVerify verifies",
                observed=scheme_name(result.scheme),
            ),
            Check("ea.finished", True, "Finished MAC matches the transcript"),
        ]
        leaf_der = result.certificate.entries[0].cert_data
        if leaf_der != self._peer_certificate:
            raise VerificationError(
                "ea.identity",
                "the authenticator's certificate is not the TLS server certificate",
            )
        self.checks.append(
            Check("ea.identity", True, "authenticator certificate is the TLS server certificate")
        )
        ext = next(
            (
                e
                for e in result.certificate.entries[0].extensions
                if e.ext_type == self._profile.extension_type
            ),
            None,
        )
        if ext is None:
            raise VerificationError("cmw.present", "the authenticator carries no cmw_attestation")
        try:
            cmw = self._profile.parse_attestation_extension(ext)
        except DecodeError as exc:
            raise ProtocolError(
                f"cmw_attestation malformed: {exc}", ProtocolError.DECODE_ERROR, check="cmw.present"
            ) from None
        self.checks.append(
            Check("cmw.present", True, f"{len(cmw)} bytes of CMW in CertificateEntry 0")
        )
        binding = _binding(self._tls, self._profile, result.signer_spki, self._request.context)
        self._state = _State.APPRAISING
        return AuthenticatorValidated(binding, cmw, list(self.checks), result.signer)

    def accept(self) -> bytes:
        if self._state is not _State.APPRAISING:
            raise RuntimeError(f"nothing to accept (state {self._state.value})")
        self._state = _State.ESTABLISHED
        return framing.encode_frame(FrameType.ACCEPT)

    def reject(self, code: ErrorCode, reason: str) -> bytes:
        self._state = _State.CLOSED
        return framing.encode_error(code, reason)
