"""RFC 9261 authenticators: Fizz known-answer tests, every scheme, both roles, every tampering."""

from __future__ import annotations

import hashlib
import hmac
import os

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import DecodeError, ProtocolError, VerificationError
from atls_proxy.expat import authenticator as ea
from atls_proxy.expat import messages as m
from atls_proxy.expat import schemes
from tests.support.pki import identity, make_key, self_signed, tls_pair

# --- digest §2.8: Fizz ExportedAuthenticatorTest.cpp known answers --------------------------------
FIZZ_HC = FIZZ_FK = b"12345678901234567890123456789012"
FIZZ_CTX = b"0123456789abcdefghij"
FIZZ_REQ_BODY = bytes.fromhex("14" + FIZZ_CTX.hex() + "0008000d000400020403")
FIZZ_REQUEST = bytes.fromhex("0d00001f") + FIZZ_REQ_BODY  # the RFC 9261 form, with the header
FIZZ_CERT = bytes.fromhex("0b00000400000000")
FIZZ_CV = bytes.fromhex("0f00000d04030009") + b"signature"
FIZZ_FIN1 = bytes.fromhex(
    "14000020b523548c421b05f7f3c33276fbdd5266ba2df103796d7d483368259860a648f2"
)
FIZZ_EMPTY = bytes.fromhex(
    "1400002011fae4bcdf4673b6dfb276d886c4cd1c5b0920da961643f062d1d4a6062115b1"
)
FIZZ_KEYS = ea.AuthenticatorKeys("sha256", FIZZ_HC, FIZZ_FK)


def test_fizz_request_parses() -> None:
    req = m.AuthenticatorRequest.decode(FIZZ_REQUEST)
    assert req.context == FIZZ_CTX and req.msg_type == m.CERTIFICATE_REQUEST
    assert req.encode() == FIZZ_REQUEST


def test_fizz_vector1_finished() -> None:
    req = ea.request_transcript(FIZZ_REQUEST, include_header=False)
    assert req == FIZZ_REQ_BODY
    got = m.Finished(FIZZ_KEYS.finished(req, FIZZ_CERT, FIZZ_CV)).encode()
    assert got == FIZZ_FIN1


def test_fizz_vector2_empty_authenticator() -> None:
    got = ea.empty_authenticator(FIZZ_KEYS, FIZZ_REQUEST, FIZZ_CTX, include_header=False)
    assert got == FIZZ_EMPTY
    req = m.AuthenticatorRequest.decode(FIZZ_REQUEST)
    assert ea.validate(FIZZ_KEYS, req, FIZZ_REQUEST, FIZZ_EMPTY, include_header=False).empty


def test_rfc_form_differs_and_switch_matters() -> None:
    """The RFC form hashes the 4-byte request header; Fizz's draft-era form does not (digest O-15)."""
    rfc = ea.empty_authenticator(FIZZ_KEYS, FIZZ_REQUEST, FIZZ_CTX, include_header=True)
    expected = hmac.new(
        FIZZ_FK,
        hashlib.sha256(
            FIZZ_HC
            + FIZZ_REQUEST
            + bytes.fromhex("0b000018")
            + b"\x14"
            + FIZZ_CTX
            + b"\x00\x00\x00"
        ).digest(),
        "sha256",
    ).digest()
    assert rfc == bytes.fromhex("14000020") + expected
    assert rfc != FIZZ_EMPTY
    req = m.AuthenticatorRequest.decode(FIZZ_REQUEST)
    with pytest.raises(VerificationError) as e:
        ea.validate(FIZZ_KEYS, req, FIZZ_REQUEST, FIZZ_EMPTY, include_header=True)
    assert e.value.check == "ea.finished"


# --- live connections ---------------------------------------------------------------------------

KEY_KINDS = ["p256", "p384", "p521", "rsa", "ed25519", "ed448"]


@pytest.fixture(scope="module")
def idents() -> dict[str, object]:
    return {k: identity(k) for k in KEY_KINDS}


def _exchange(sender: ea.Role, kind: str, idents: dict[str, object], suite: str | None = None):  # type: ignore[no-untyped-def]
    ident = idents[kind]
    client, server = tls_pair(ident, suite)  # type: ignore[arg-type]
    att, rp = (server, client) if sender is ea.Role.SERVER else (client, server)
    msg_type = m.CLIENT_CERTIFICATE_REQUEST if sender is ea.Role.SERVER else m.CERTIFICATE_REQUEST
    req = ea.build_request(msg_type, os.urandom(32), extra_extensions=[m.Extension(0xFF00)])
    req_bytes = req.encode()
    keys_att = ea.AuthenticatorKeys.derive(att.export, sender, att.hash_name)
    keys_rp = ea.AuthenticatorKeys.derive(rp.export, sender, rp.hash_name)
    return ident, req, req_bytes, keys_att, keys_rp


@pytest.mark.parametrize("sender", [ea.Role.SERVER, ea.Role.CLIENT])
@pytest.mark.parametrize("kind", KEY_KINDS)
def test_roundtrip_every_scheme_both_roles(
    sender: ea.Role, kind: str, idents: dict[str, object]
) -> None:
    ident, req, req_bytes, k_att, k_rp = _exchange(sender, kind, idents)
    assert k_att == k_rp  # both ends derive the same EA keys from the exporter
    ext = m.Extension(0xFF00, b"\x00\x02\x82\x00")
    auth = ea.authenticate(k_att, req, req_bytes, ident.chain_der, ident.private_key, [ext])  # type: ignore[attr-defined]
    res = ea.validate(k_rp, req, req_bytes, auth, entry0_only=frozenset({0xFF00}))
    assert not res.empty
    assert res.scheme == schemes.schemes_for_key(ident.private_key)[0]  # type: ignore[attr-defined]
    assert res.certificate is not None and res.certificate.entries[0].extensions == (ext,)


@pytest.mark.parametrize(
    "suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]
)
def test_hash_follows_suite(suite: str, idents: dict[str, object]) -> None:
    ident, req, req_bytes, k_att, k_rp = _exchange(ea.Role.SERVER, "p256", idents, suite)
    assert k_att.hash_name == ("sha384" if suite.endswith("SHA384") else "sha256")
    assert len(k_att.finished_key) == ea.HASH_LENGTHS[k_att.hash_name]
    auth = ea.authenticate(k_att, req, req_bytes, ident.chain_der, ident.private_key)  # type: ignore[attr-defined]
    fin = m.split_handshake_messages(auth)[2][1]
    assert len(fin) == len(k_att.finished_key)
    assert not ea.validate(k_rp, req, req_bytes, auth).empty


def test_wrong_role_labels_fail(idents: dict[str, object]) -> None:
    """RFC 9261 §4: each sender has its own labels. On the *same* connection, an authenticator
    the server made does not validate as a client's, nor a client's as the server's
    (reflection): without the split, one side's authenticator could be sent back to it."""
    ident = idents["p256"]
    client, server = tls_pair(ident)  # type: ignore[arg-type]
    for sender, other_role in ((ea.Role.SERVER, ea.Role.CLIENT), (ea.Role.CLIENT, ea.Role.SERVER)):
        att = server if sender is ea.Role.SERVER else client
        msg_type = (
            m.CLIENT_CERTIFICATE_REQUEST if sender is ea.Role.SERVER else m.CERTIFICATE_REQUEST
        )
        req = ea.build_request(msg_type, os.urandom(32))
        keys = ea.AuthenticatorKeys.derive(att.export, sender, att.hash_name)
        auth = ea.authenticate(keys, req, req.encode(), ident.chain_der, ident.private_key)  # type: ignore[attr-defined]
        # The same connection, both ends agreeing, only the role's labels differ.
        wrong = ea.AuthenticatorKeys.derive(client.export, other_role, client.hash_name)
        assert wrong != ea.AuthenticatorKeys.derive(client.export, sender, client.hash_name)
        with pytest.raises(VerificationError) as e:
            ea.validate(wrong, req, req.encode(), auth)
        assert e.value.check == "ea.signature"
        right = ea.AuthenticatorKeys.derive(client.export, sender, client.hash_name)
        assert not ea.validate(right, req, req.encode(), auth).empty


def test_authenticator_bound_to_its_connection(idents: dict[str, object]) -> None:
    """The same authenticator presented on another connection fails (RFC 9261 §9): relay/replay."""
    ident, req, req_bytes, k_att, _ = _exchange(ea.Role.SERVER, "p256", idents)
    auth = ea.authenticate(k_att, req, req_bytes, ident.chain_der, ident.private_key)  # type: ignore[attr-defined]
    c2, _ = tls_pair(ident)  # type: ignore[arg-type]
    k_other = ea.AuthenticatorKeys.derive(c2.export, ea.Role.SERVER, c2.hash_name)
    with pytest.raises(VerificationError) as e:
        ea.validate(k_other, req, req_bytes, auth)
    assert e.value.check == "ea.signature"


def test_no_common_scheme_gives_empty_authenticator(idents: dict[str, object]) -> None:
    ident, _, _, k_att, k_rp = _exchange(ea.Role.SERVER, "p256", idents)
    req = ea.build_request(m.CLIENT_CERTIFICATE_REQUEST, os.urandom(32), [schemes.ED25519])
    auth = ea.authenticate(k_att, req, req.encode(), ident.chain_der, ident.private_key)  # type: ignore[attr-defined]
    assert auth[0] == m.FINISHED
    assert ea.validate(k_rp, req, req.encode(), auth).empty


def test_scheme_not_offered_rejected(idents: dict[str, object]) -> None:
    """A CertificateVerify with a scheme the request did not offer is refused (RFC 9261 §5.2.2)."""
    ident, _, _, k_att, k_rp = _exchange(ea.Role.SERVER, "p256", idents)
    offered = ea.build_request(
        m.CLIENT_CERTIFICATE_REQUEST, os.urandom(32), [schemes.ECDSA_SECP256R1_SHA256]
    )
    auth = ea.authenticate(k_att, offered, offered.encode(), ident.chain_der, ident.private_key)  # type: ignore[attr-defined]
    narrowed = m.AuthenticatorRequest(
        17, offered.context, (m.signature_algorithms_extension([schemes.ED25519]),)
    )
    with pytest.raises(ProtocolError) as e:
        ea.validate(k_rp, narrowed, narrowed.encode(), auth)
    assert e.value.check == "ea.signature"


def test_unoffered_extension_is_unsupported_extension(idents: dict[str, object]) -> None:
    ident, _, _, k_att, k_rp = _exchange(ea.Role.SERVER, "p256", idents)
    plain = ea.build_request(
        m.CLIENT_CERTIFICATE_REQUEST, os.urandom(32)
    )  # no cmw_attestation offer
    with pytest.raises(ValueError):
        ea.authenticate(
            k_att,
            plain,
            plain.encode(),
            ident.chain_der,
            ident.private_key,
            [m.Extension(0xFF00, b"\x00\x01\x00")],
        )  # type: ignore[attr-defined]
    # A malicious attester includes it anyway: build with an offering request, validate against the plain one.
    offering = m.AuthenticatorRequest(17, plain.context, (*plain.extensions, m.Extension(0xFF00)))
    auth = ea.authenticate(
        k_att,
        offering,
        plain.encode(),
        ident.chain_der,
        ident.private_key,
        [m.Extension(0xFF00, b"\x00\x01\x00")],
    )  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError) as e:
        ea.validate(k_rp, plain, plain.encode(), auth)
    assert e.value.alert == ProtocolError.UNSUPPORTED_EXTENSION


@pytest.mark.parametrize("entry", [0, 1])
def test_request_only_extension_in_an_entry_is_illegal(
    idents: dict[str, object], entry: int
) -> None:
    """signature_algorithms was offered (every request carries it) but RFC 8446 §4.2 specifies
    it for the request only: in any CertificateEntry it is illegal_parameter, not accepted."""
    ident, req, req_bytes, k_att, k_rp = _exchange(ea.Role.SERVER, "p256", idents)
    sig_algs = next(e for e in req.extensions if e.ext_type == m.EXT_SIGNATURE_ALGORITHMS)
    other = self_signed(make_key("p256"), "intermediate").public_bytes(Encoding.DER)
    entries = [m.CertificateEntry(ident.chain_der[0]), m.CertificateEntry(other)]
    entries[entry] = m.CertificateEntry(entries[entry].cert_data, (sig_algs,))
    cert = m.Certificate(req.context, tuple(entries)).encode()  # type: ignore[attr-defined]
    content = b"\x20" * 64 + b"Exported Authenticator\x00" + k_att.transcript_hash(req_bytes, cert)
    cv = m.CertificateVerify(0x0403, schemes.sign(ident.private_key, 0x0403, content)).encode()  # type: ignore[attr-defined]
    fin = m.Finished(k_att.finished(req_bytes, cert, cv)).encode()
    with pytest.raises(ProtocolError) as e:
        ea.validate(k_rp, req, req_bytes, cert + cv + fin)
    assert e.value.alert == ProtocolError.ILLEGAL_PARAMETER and e.value.check == "ea.extensions"


def test_cmw_outside_entry0_rejected(idents: dict[str, object]) -> None:
    ident, req, req_bytes, k_att, k_rp = _exchange(ea.Role.SERVER, "p256", idents)
    other = self_signed(make_key("p256"), "intermediate").public_bytes(Encoding.DER)
    ext = m.Extension(0xFF00, b"\x00\x01\x00")
    cert = m.Certificate(
        req.context, (m.CertificateEntry(ident.chain_der[0]), m.CertificateEntry(other, (ext,)))
    ).encode()  # type: ignore[attr-defined]
    content = b"\x20" * 64 + b"Exported Authenticator\x00" + k_att.transcript_hash(req_bytes, cert)
    cv = m.CertificateVerify(0x0403, schemes.sign(ident.private_key, 0x0403, content)).encode()  # type: ignore[attr-defined]
    fin = m.Finished(k_att.finished(req_bytes, cert, cv)).encode()
    with pytest.raises(ProtocolError) as e:
        ea.validate(k_rp, req, req_bytes, cert + cv + fin, entry0_only=frozenset({0xFF00}))
    assert e.value.alert == ProtocolError.UNSUPPORTED_EXTENSION


def test_every_byte_flip_is_rejected(idents: dict[str, object]) -> None:
    """Tampering: flipping any single byte of a valid authenticator never validates."""
    ident, req, req_bytes, k_att, k_rp = _exchange(ea.Role.SERVER, "p256", idents)
    ext = m.Extension(0xFF00, b"\x00\x04\x82\x00\x41\x00")
    auth = ea.authenticate(k_att, req, req_bytes, ident.chain_der, ident.private_key, [ext])  # type: ignore[attr-defined]
    for i in range(len(auth)):
        bad = bytearray(auth)
        bad[i] ^= 0x01
        with pytest.raises((DecodeError, ProtocolError, VerificationError)):
            ea.validate(k_rp, req, req_bytes, bytes(bad), entry0_only=frozenset({0xFF00}))


def test_wrong_context_rejected(idents: dict[str, object]) -> None:
    ident, req, req_bytes, k_att, k_rp = _exchange(ea.Role.SERVER, "p256", idents)
    auth = ea.authenticate(k_att, req, req_bytes, ident.chain_der, ident.private_key)  # type: ignore[attr-defined]
    other = m.AuthenticatorRequest(17, os.urandom(32), req.extensions)
    with pytest.raises(ProtocolError) as e:
        ea.validate(k_rp, other, other.encode(), auth)
    assert e.value.check == "ea.context"


def test_empty_context_refused() -> None:
    with pytest.raises(ValueError):
        ea.build_request(17, b"")


def test_request_without_signature_algorithms_refused() -> None:
    raw = m.AuthenticatorRequest(17, b"x" * 32, (m.Extension(0xFF00),)).encode()
    with pytest.raises(ProtocolError) as e:
        ea.request_from_bytes(raw)
    assert e.value.check == "ea.request"


def test_parse_leaf_keeps_one_parse_per_certificate() -> None:
    """A relying party parses the server's certificate once, not per connection; what it keeps
    is what a fresh parse gives, and undecodable input still raises."""
    ident = identity("p256")
    der = ident.chain_der[0]
    first = ea.parse_leaf(der)
    again = bytes(bytearray(der))  # equal bytes, another object
    assert again is not der and ea.parse_leaf(again) is first  # the same parse
    cert, key, spki = first
    assert cert.public_bytes(Encoding.DER) == der
    assert spki == key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError):
        ea.parse_leaf(der[:-1])
    big = _big_certificate()  # over the 16 KiB kept: parsed every time, never held
    before = ea.parse_leaf.cache_info().currsize
    cert, _, _ = ea.parse_leaf(big)
    assert cert.public_bytes(Encoding.DER) == big
    assert ea.parse_leaf.cache_info().currsize == before


def _big_certificate() -> bytes:
    names = tuple(f"h{i}.example" for i in range(2000))
    return self_signed(make_key("p256"), "big", names).public_bytes(Encoding.DER)


@pytest.mark.parametrize("rounds", [1, 3])
def test_schemes_for_key_by_class_and_curve(rounds: int) -> None:
    """The per-class memo never confuses curves of one key class, nor private and public keys."""
    expected = {
        "p256": (schemes.ECDSA_SECP256R1_SHA256,),
        "p384": (schemes.ECDSA_SECP384R1_SHA384,),
        "p521": (schemes.ECDSA_SECP521R1_SHA512,),
        "ed25519": (schemes.ED25519,),
        "ed448": (schemes.ED448,),
        "rsa": (
            schemes.RSA_PSS_RSAE_SHA256,
            schemes.RSA_PSS_RSAE_SHA384,
            schemes.RSA_PSS_RSAE_SHA512,
        ),
    }
    keys = {kind: make_key(kind) for kind in expected}
    for _ in range(rounds):
        for kind, key in keys.items():
            assert schemes.schemes_for_key(key) == expected[kind]
            assert schemes.schemes_for_key(key.public_key()) == expected[kind]


@pytest.mark.parametrize("n", [1, 3])
def test_certificate_message_equals_the_codec(n: int) -> None:
    chain = tuple(identity("p256").chain_der[0] + bytes([i]) for i in range(n))
    exts = (m.Extension(0xFF00, b"\x00\x03cmw"),)
    for context, entry0 in ((b"ctx", exts), (os.urandom(32), ()), (b"", exts)):
        entries = (
            m.CertificateEntry(chain[0], entry0),
            *(m.CertificateEntry(d) for d in chain[1:]),
        )
        assert ea.certificate_message(context, chain, entry0) == (
            m.Certificate(context, entries).encode()
        )


def test_a_finished_with_bytes_after_the_mac_is_refused(idents: dict[str, object]) -> None:
    # RFC 9261 §5.2.3: verify_data is exactly Hash.length bytes; a longer Finished whose first
    # bytes are the right MAC is not a match.
    ident, req, req_bytes, k_att, k_rp = _exchange(ea.Role.SERVER, "p256", idents)
    auth = ea.authenticate(k_att, req, req_bytes, ident.chain_der, ident.private_key)  # type: ignore[attr-defined]
    i = 0
    while auth[i] != m.FINISHED:
        i += 4 + int.from_bytes(auth[i + 1 : i + 4], "big")
    body = auth[i + 4 :]
    longer = auth[:i] + bytes([m.FINISHED]) + (len(body) + 1).to_bytes(3, "big") + body + b"\x00"
    with pytest.raises(VerificationError) as e:
        ea.validate(k_rp, req, req_bytes, longer)
    assert e.value.check == "ea.finished"
    assert not ea.validate(k_rp, req, req_bytes, auth).empty  # the original validates
