"""The Expat exchange state machines joined in memory over real TLS engines — no sockets."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import ProtocolError, VerificationError
from atls_proxy.expat import authenticator as ea
from atls_proxy.expat import framing as f
from atls_proxy.expat import messages as m
from atls_proxy.expat import session as xs
from atls_proxy.expat.profile import ExpatProfile
from atls_proxy.tls.context import ServerIdentity
from tests.support.pki import identity, tls_pair

CMW = bytes.fromhex("82") + b"\x63a/b" + b"\x41\x00"
PROFILE = ExpatProfile()


@pytest.fixture(scope="module")
def ident() -> ServerIdentity:
    return identity("p256")


def _pair(
    ident: ServerIdentity, profile: ExpatProfile = PROFILE
) -> tuple[xs.RelyingPartySession, xs.AttesterSession]:
    client, server = tls_pair(ident)
    leaf = client.peer_certificate()
    assert leaf is not None
    rp = xs.RelyingPartySession(
        xs.TLSInfo(client.export, client.hash_name),
        profile,
        os.urandom(32),
        leaf.public_bytes(Encoding.DER),
    )
    at = xs.AttesterSession(
        xs.TLSInfo(server.export, server.hash_name), ident.chain_der, ident.private_key, profile
    )
    return rp, at


def test_happy_path_and_binding_agree(ident: ServerIdentity) -> None:
    rp, at = _pair(ident)
    (req,) = at.receive(rp.start())
    assert isinstance(req, xs.AttestationRequested) and req.binding is not None
    (val,) = rp.receive(at.authenticator(CMW))
    assert isinstance(val, xs.AuthenticatorValidated)
    assert val.binding == req.binding and val.cmw == CMW
    names = [c.name for c in val.checks]
    assert names == [
        "expat.preamble",
        "ea.context",
        "ea.extensions",
        "ea.signature",
        "ea.finished",
        "ea.identity",
        "cmw.present",
    ]
    (acc,) = at.receive(rp.accept() + b"GET /")
    assert acc == xs.Accepted(b"GET /")
    assert at.state == "established" and rp.state == "established"


@pytest.mark.parametrize("label", [b"EXPORTER-cmw-attestation", b"Attestation"])
@pytest.mark.parametrize("header", [True, False])
def test_profile_switches_interoperate(ident: ServerIdentity, label: bytes, header: bool) -> None:
    prof = ExpatProfile(
        exporter_label=label, extension_type=0xFFFF, request_header_in_transcript=header
    )
    rp, at = _pair(ident, prof)
    (req,) = at.receive(rp.start())
    (val,) = rp.receive(at.authenticator(CMW))
    assert isinstance(req, xs.AttestationRequested) and isinstance(val, xs.AuthenticatorValidated)
    assert val.binding == req.binding


def test_mismatched_label_breaks_binding(ident: ServerIdentity) -> None:
    client, server = tls_pair(ident)
    leaf = client.peer_certificate()
    assert leaf is not None
    rp = xs.RelyingPartySession(
        xs.TLSInfo(client.export, client.hash_name),
        PROFILE,
        os.urandom(32),
        leaf.public_bytes(Encoding.DER),
    )
    other = ExpatProfile(exporter_label=b"Attestation")
    at = xs.AttesterSession(
        xs.TLSInfo(server.export, server.hash_name), ident.chain_der, ident.private_key, other
    )
    (req,) = at.receive(rp.start())
    (val,) = rp.receive(at.authenticator(CMW))
    assert isinstance(req, xs.AttestationRequested) and isinstance(val, xs.AuthenticatorValidated)
    assert val.binding.binder != req.binding.binder  # type: ignore[union-attr]
    assert val.binding.aik_hash == req.binding.aik_hash  # type: ignore[union-attr]


def test_plain_client_detected(ident: ServerIdentity) -> None:
    _, at = _pair(ident)
    assert at.receive(b"GET / HTTP/1.1\r\n") == [xs.PlainClient(b"GET / HTTP/1.1\r\n")]


def test_preamble_split_across_reads(ident: ServerIdentity) -> None:
    rp, at = _pair(ident)
    data = rp.start()
    assert at.receive(data[:3]) == []
    (ev,) = at.receive(data[3:])
    assert isinstance(ev, xs.AttestationRequested)


def test_reused_context_is_refused_by_the_session(ident: ServerIdentity) -> None:
    """The session's own guard (RFC 9261 §5.2: never answer a context twice), behind the
    one-exchange rule that refuses any second request first (test below)."""
    rp, at = _pair(ident)
    start = rp.start()
    at.receive(start)
    payload = start[f.PREAMBLE_LEN + 4 :]
    with pytest.raises(ProtocolError) as e:
        at._on_request(payload)
    assert e.value.check == "ea.context"


def test_second_request_rejected(ident: ServerIdentity) -> None:
    rp, at = _pair(ident)
    start = rp.start()
    at.receive(start)
    at.authenticator(CMW)
    # a second request with the same context on the same connection
    again = f.encode_frame(f.FrameType.AUTH_REQUEST, start[f.PREAMBLE_LEN + 4 :])
    with pytest.raises(ProtocolError) as e:
        at.receive(again)
    # One exchange per connection (version 1): any second request is refused as a frame the
    # state does not allow, before its context is looked at.
    assert e.value.check == "expat.frame"


def test_certificate_request_type_13_from_client_rejected(ident: ServerIdentity) -> None:
    _, at = _pair(ident)
    req = ea.build_request(
        m.CERTIFICATE_REQUEST, os.urandom(32), extra_extensions=[PROFILE.offer()]
    )
    with pytest.raises(ProtocolError) as e:
        at.receive(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, req.encode()))
    assert e.value.check == "ea.request"
    with pytest.raises(ProtocolError):  # sticky
        at.receive(b"")


def test_non_empty_offer_rejected(ident: ServerIdentity) -> None:
    _, at = _pair(ident)
    req = ea.build_request(
        m.CLIENT_CERTIFICATE_REQUEST,
        os.urandom(32),
        extra_extensions=[m.Extension(0xFF00, b"\x00")],
    )
    with pytest.raises(ProtocolError) as e:
        at.receive(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, req.encode()))
    assert e.value.check == "expat.offer"


def test_refusal_is_reported(ident: ServerIdentity) -> None:
    rp, at = _pair(ident)
    at.receive(rp.start())
    with pytest.raises(VerificationError) as e:
        rp.receive(at.refuse())
    assert e.value.check == "ea.refused"


def test_authenticator_without_cmw_fails(ident: ServerIdentity) -> None:
    rp, at = _pair(ident)
    at.receive(rp.start())
    with pytest.raises(VerificationError) as e:
        rp.receive(at.authenticator(None))
    assert e.value.check == "cmw.present"


def test_a_malformed_cmw_attestation_is_a_malformed_authenticator(ident: ServerIdentity) -> None:
    # A validly signed authenticator whose cmw_attestation's inner length is wrong: a decode
    # failure (the client answers ERROR 2, docs/PROTOCOL.md §4), not a failed verification.
    rp, at = _pair(ident)
    (ev,) = at.receive(rp.start())
    assert isinstance(ev, xs.AttestationRequested)
    tls = at._tls
    keys = ea.AuthenticatorKeys.derive(tls.exporter, ea.Role.SERVER, tls.hash_name)
    bad = m.Extension(PROFILE.extension_type, b"\x00\x09" + CMW)  # says 9 bytes, carries 6
    raw = ea.authenticate(
        keys, ev.request, ev.request.encode(), ident.chain_der, ident.private_key, [bad]
    )
    with pytest.raises(ProtocolError) as e:
        rp.receive(f.PREAMBLE + f.encode_frame(f.FrameType.AUTHENTICATOR, raw))
    assert e.value.check == "cmw.present" and e.value.alert == ProtocolError.DECODE_ERROR
    assert "cmw_attestation malformed" in str(e.value)


def _ask(at: xs.AttesterSession, schemes: tuple[int, ...], offer: bool) -> xs.AttestationRequested:
    req = ea.build_request(
        m.CLIENT_CERTIFICATE_REQUEST,
        os.urandom(32),
        schemes,
        [PROFILE.offer()] if offer else [],
    )
    (ev,) = at.receive(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, req.encode()))
    assert isinstance(ev, xs.AttestationRequested)
    return ev


@pytest.mark.parametrize(
    "schemes,offer,why",
    [
        ((0x0403,), False, "no cmw_attestation offered"),
        ((0x0807,), True, "only Ed25519 offered, the key is P-256: the empty authenticator"),
    ],
)
def test_no_evidence_is_asked_for_or_sent_when_none_can_be_carried(
    ident: ServerIdentity, schemes: tuple[int, ...], offer: bool, why: str
) -> None:
    _, at = _pair(ident)
    ev = _ask(at, schemes, offer)
    assert ev.binding is None, why  # the server produces no evidence (no quote is spent)
    with pytest.raises(RuntimeError, match="no evidence was asked for"):
        at.authenticator(CMW)  # it could not be carried: refused, never silently dropped
    at.authenticator(None)
    assert not at.evidence_sent
    (acc,) = at.receive(f.encode_frame(f.FrameType.ACCEPT) + b"GET /")
    assert isinstance(acc, xs.Accepted)  # the adapter decides: refused or served unattested


def test_evidence_sent_only_with_cmw(ident: ServerIdentity) -> None:
    _, at = _pair(ident)
    ev = _ask(at, (0x0403,), True)
    assert ev.binding is not None and not at.evidence_sent
    at.authenticator(CMW)
    assert at.evidence_sent


def test_identity_must_be_tls_certificate(ident: ServerIdentity) -> None:
    """Diversion at the protocol level: an authenticator for another identity is refused."""
    client, server = tls_pair(ident)
    other = identity("p256")
    rp = xs.RelyingPartySession(
        xs.TLSInfo(client.export, client.hash_name),
        PROFILE,
        os.urandom(32),
        client.peer_certificate().public_bytes(Encoding.DER),  # type: ignore[union-attr]
    )
    at = xs.AttesterSession(
        xs.TLSInfo(server.export, server.hash_name), other.chain_der, other.private_key, PROFILE
    )
    at.receive(rp.start())
    with pytest.raises(VerificationError) as e:
        rp.receive(at.authenticator(CMW))
    assert e.value.check == "ea.identity"


def test_relayed_authenticator_fails(ident: ServerIdentity) -> None:
    """An authenticator produced on connection A, presented on connection B, never validates."""
    _, at_a = _pair(ident)
    rp_b, _ = _pair(ident)
    rp_b.start()
    # The relay forwards B's request (same context) to the genuine attester on connection A.
    at_a.receive(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, rp_b.request.encode()))
    relayed = at_a.authenticator(CMW)
    with pytest.raises(VerificationError) as e:
        rp_b.receive(relayed)
    assert e.value.check in {"ea.signature", "ea.finished"}


def test_early_application_data_rejected(ident: ServerIdentity) -> None:
    rp, at = _pair(ident)
    at.receive(rp.start())
    auth = at.authenticator(CMW)
    with pytest.raises(ProtocolError) as e:
        rp.receive(auth + b"HTTP/1.1 200 OK\r\n")
    # Not a frame at all, but in the same read as the authenticator: early data either way.
    assert e.value.check == "expat.early-data"
    rp2, at2 = _pair(ident)
    at2.receive(rp2.start())
    with pytest.raises(ProtocolError) as e:
        rp2.receive(at2.authenticator(CMW) + f.encode_frame(f.FrameType.ACCEPT))
    assert e.value.check == "expat.early-data"


def test_data_instead_of_authenticator_rejected(ident: ServerIdentity) -> None:
    rp, _ = _pair(ident)
    rp.start()
    with pytest.raises(ProtocolError) as e:
        rp.receive(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert e.value.check == "expat.preamble"


def test_error_frames_surface(ident: ServerIdentity) -> None:
    rp, at = _pair(ident)
    at.receive(rp.start())
    assert rp.receive(at.error(f.ErrorCode.ATTESTATION_UNAVAILABLE, "tee down")) == [
        xs.PeerError(4, "tee down")
    ]
    rp2, at2 = _pair(ident)
    at2.receive(rp2.start())
    rp2.receive(at2.authenticator(CMW))
    assert at2.receive(rp2.reject(f.ErrorCode.VERIFICATION_FAILED, "measurement.kernel")) == [
        xs.PeerError(5, "measurement.kernel")
    ]


def test_client_must_wait_for_authenticator(ident: ServerIdentity) -> None:
    rp, at = _pair(ident)
    with pytest.raises(ProtocolError) as e:
        at.receive(rp.start() + f.encode_frame(f.FrameType.ACCEPT))
    assert e.value.check == "expat.frame"


def test_api_misuse_raises() -> None:
    ident = identity("p256")
    rp, at = _pair(ident)
    with pytest.raises(RuntimeError):
        at.authenticator(CMW)
    with pytest.raises(RuntimeError):
        rp.accept()
    tls = xs.TLSInfo(lambda *a: b"", "sha256")
    with pytest.raises(ValueError, match="16 random bytes"):
        xs.RelyingPartySession(tls, PROFILE, b"short", b"certificate")
    # no TLS certificate to hold the authenticator's to: refused, not an unchecked identity
    with pytest.raises(ValueError, match=r"ea\.identity"):
        xs.RelyingPartySession(tls, PROFILE, os.urandom(32), b"")
    with pytest.raises(ValueError, match=r"ea\.identity"):
        xs.RelyingPartySession(tls, PROFILE, os.urandom(32), None)  # type: ignore[arg-type]


def test_cmw_altered_in_flight_fails_certificate_verify(ident: ServerIdentity) -> None:
    """Every CMW byte is under the CertificateVerify (RFC 9261 §5.2.2) by the key the TLS handshake
    authenticated: what the relying party appraises is what that key's holder sent on this
    connection (the reason verify/appraise.py need not verify the cached tier's AIK binding
    signature a second time). A changed byte anywhere in the CMW fails ``ea.signature``."""
    cmw = bytes(range(1, 200))
    for i in (0, 100, len(cmw) - 1):
        rp, at = _pair(ident)
        at.receive(rp.start())
        frame = bytearray(at.authenticator(cmw))
        at_cmw = bytes(frame).index(cmw)
        frame[at_cmw + i] ^= 0x01
        with pytest.raises(VerificationError) as e:
            rp.receive(bytes(frame))
        assert e.value.check == "ea.signature"
    rp, at = _pair(ident)
    at.receive(rp.start())
    (ok,) = rp.receive(at.authenticator(cmw))
    assert isinstance(ok, xs.AuthenticatorValidated) and ok.cmw == cmw
    assert ok.signer is not None
    assert ok.signer.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == (
        ident.private_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )


def test_the_largest_cmw_the_engine_passes_fits_the_certificate_entry(
    ident: ServerIdentity,
) -> None:
    # The entry's extensions<0..2^16-1> hold cmw_attestation's type, length and cmw_len too:
    # 65535 - 6 bytes of CMW. MAX_CMW_SIZE (the engine's and the decoder's cap) must be exactly
    # that: one byte more cannot be carried (it failed inside authenticator(), after the quote).
    from atls_proxy.expat.cmw import MAX_CMW_SIZE

    assert MAX_CMW_SIZE == 0xFFFF - 6
    rp, at = _pair(ident)
    at.receive(rp.start())
    cmw = b"\x82\x63a/b\x59" + (MAX_CMW_SIZE - 8).to_bytes(2, "big") + bytes(MAX_CMW_SIZE - 8)
    assert len(cmw) == MAX_CMW_SIZE
    (val,) = rp.receive(at.authenticator(cmw))
    assert isinstance(val, xs.AuthenticatorValidated) and val.cmw == cmw
    rp, at = _pair(ident)
    at.receive(rp.start())
    with pytest.raises(ValueError, match=r"1\.\.65529 bytes"):
        at.authenticator(cmw + b"\x00")  # refused before any message is built


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"])
def test_the_authenticator_matches_rfc_9261_recomputed_from_the_spec(
    ident: ServerIdentity, suite: str
) -> None:
    # Both ends of the other tests run this project's code, so a transcript both got wrong the
    # same way would pass them. Here every value is recomputed from the specification with
    # hashlib/hmac and the TLS exporter alone — labels spelled out, not imported:
    #   RFC 9261 §4:   handshake context / finished key = Exporter("EXPORTER-server
    #                  authenticator handshake context" / "... finished key", "", Hash.length)
    #   RFC 9261 §5.2.2: CertificateVerify signs 0x20 × 64 ‖ "Exported Authenticator" ‖ 0x00 ‖
    #                  Hash(handshake context ‖ request ‖ Certificate)
    #   RFC 9261 §5.2.3: Finished = HMAC(finished key, Hash(handshake context ‖ request ‖
    #                  Certificate ‖ CertificateVerify))
    #   expat (digest §1.3): binder = Hash(SPKI ‖ Exporter("EXPORTER-cmw-attestation",
    #                  certificate_request_context, 32)), aik_hash = Hash(SPKI)
    import hashlib
    import hmac

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    client, server = tls_pair(ident, suite)
    h = hashlib.sha384 if suite.endswith("SHA384") else hashlib.sha256
    n = h().digest_size
    leaf_cert = client.peer_certificate()
    assert leaf_cert is not None
    leaf = leaf_cert.public_bytes(Encoding.DER)
    rp = xs.RelyingPartySession(
        xs.TLSInfo(client.export, client.hash_name), PROFILE, os.urandom(32), leaf
    )
    at = xs.AttesterSession(
        xs.TLSInfo(server.export, server.hash_name), ident.chain_der, ident.private_key, PROFILE
    )
    start = rp.start()
    (ev,) = at.receive(start)
    assert isinstance(ev, xs.AttestationRequested) and ev.binding is not None
    request = start[f.PREAMBLE_LEN + f.HEADER_LEN :]  # the ClientCertificateRequest message
    assert request[0] == 17  # RFC 9261 §4: ClientCertificateRequest
    context = request[5 : 5 + request[4]]
    frame = at.authenticator(CMW)
    auth = frame[f.PREAMBLE_LEN + f.HEADER_LEN :]
    msgs, i = [], 0
    while i < len(auth):
        length = int.from_bytes(auth[i + 1 : i + 4], "big")
        msgs.append(auth[i : i + 4 + length])
        i += 4 + length
    cert, cv, fin = msgs
    assert [cert[0], cv[0], fin[0]] == [11, 15, 20]

    hc = client.export(b"EXPORTER-server authenticator handshake context", n, b"")
    fk = client.export(b"EXPORTER-server authenticator finished key", n, b"")
    content = b"\x20" * 64 + b"Exported Authenticator\x00" + h(hc + request + cert).digest()
    assert int.from_bytes(cv[4:6], "big") == 0x0403  # ecdsa_secp256r1_sha256
    sig = cv[8 : 8 + int.from_bytes(cv[6:8], "big")]
    public_key = x509.load_der_x509_certificate(leaf).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(sig, content, ec.ECDSA(hashes.SHA256()))  # raises if anything differs
    assert fin[4:] == hmac.new(fk, h(hc + request + cert + cv).digest(), h).digest()

    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    exported = client.export(b"EXPORTER-cmw-attestation", 32, context)
    assert ev.binding.binder == h(spki + exported).digest()
    assert ev.binding.aik_hash == h(spki).digest()
    (val,) = rp.receive(frame)
    assert isinstance(val, xs.AuthenticatorValidated) and val.binding == ev.binding


def test_a_request_with_an_empty_context_is_refused_by_the_attester(
    ident: ServerIdentity,
) -> None:
    # build_request will not make one: the message is built around a valid request's extensions
    # (signature_algorithms and the cmw_attestation offer), with context<0..255> empty.
    _, at = _pair(ident)
    valid = ea.build_request(17, os.urandom(32), extra_extensions=[PROFILE.offer()])
    request = m.AuthenticatorRequest(17, b"", valid.extensions).encode()
    assert request[4] == 0  # the context's length byte
    with pytest.raises(ProtocolError) as e:
        at.receive(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, request))
    assert e.value.check == "ea.context"
