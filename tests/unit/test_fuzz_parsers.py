"""Property tests: random and mutated bytes into every protocol parser.

The property is the same everywhere: a parser either returns a value or raises one of the project's
own errors (DecodeError / ProtocolError / VerificationError) — never anything else, never hangs.
"""

from __future__ import annotations

import contextlib
import os

import cbor2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atls_proxy.errors import DecodeError, ProtocolError, VerificationError
from atls_proxy.expat import authenticator as ea
from atls_proxy.expat import cmw as c
from atls_proxy.expat import framing as f
from atls_proxy.expat import merkle, tiers
from atls_proxy.expat import messages as m
from atls_proxy.expat import session as xs
from atls_proxy.expat.profile import ExpatProfile
from tests.support.pki import identity, tls_pair

OURS = (DecodeError, ProtocolError, VerificationError)
IDENT = identity("p256")
CLIENT, SERVER = tls_pair(IDENT)
PROFILE = ExpatProfile()
REQ = ea.build_request(
    m.CLIENT_CERTIFICATE_REQUEST, os.urandom(32), extra_extensions=[PROFILE.offer()]
)
REQ_BYTES = REQ.encode()
KEYS = ea.AuthenticatorKeys.derive(SERVER.export, ea.Role.SERVER, SERVER.hash_name)
AUTH = ea.authenticate(
    KEYS,
    REQ,
    REQ_BYTES,
    IDENT.chain_der,
    IDENT.private_key,
    [PROFILE.attestation_extension(b"\x82\x61a\x41\x00")],
)
VALID_CMW = c.encode_cmw(
    c.CMWCollection({"a": c.CMWRecord("a/b", b"x", 4), 1: c.CMWRecord(60, b"y")})
)
# A relying party's request, as every RelyingPartySession with this context sends it, and an
# authenticator that answers it on this connection (the session fuzz test mutates it).
RP_CONTEXT = os.urandom(32)
_RP_LEAF = CLIENT.peer_certificate()
assert _RP_LEAF is not None


def _rp_unstarted() -> xs.RelyingPartySession:
    assert _RP_LEAF is not None
    return xs.RelyingPartySession(
        xs.TLSInfo(CLIENT.export, CLIENT.hash_name),
        PROFILE,
        RP_CONTEXT,
        _RP_LEAF.public_bytes(Encoding.DER),
    )


_RP_START = _rp_unstarted().start()
RP_REQ_BYTES = _RP_START[f.PREAMBLE_LEN + f.HEADER_LEN :]
RP_AUTH = ea.authenticate(
    KEYS,
    m.AuthenticatorRequest.decode(RP_REQ_BYTES),
    RP_REQ_BYTES,
    IDENT.chain_der,
    IDENT.private_key,
    [PROFILE.attestation_extension(b"\x82\x61a\x41\x00")],
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, val in edits:
        if out:
            out[pos % len(out)] = val
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=6)


@FUZZ
@given(st.binary(max_size=2048))
def test_message_decoders_random(data: bytes) -> None:
    for decode in (
        m.AuthenticatorRequest.decode,
        m.Certificate.decode,
        m.CertificateVerify.decode,
        m.Finished.decode,
    ):
        with contextlib.suppress(OURS):
            decode(data)
    with contextlib.suppress(OURS):
        m.split_handshake_messages(data)


@FUZZ
@given(edits, st.integers(0, 64))
def test_validate_mutated_authenticator(e: list[tuple[int, int]], cut: int) -> None:
    bad = _mutate(AUTH, e)
    bad = bad[: len(bad) - cut] if cut else bad
    try:
        res = ea.validate(
            KEYS, REQ, REQ_BYTES, bad, entry0_only=frozenset({PROFILE.extension_type})
        )
    except OURS:
        return
    # The only acceptable success is the untouched authenticator (a mutation that wrote the same byte).
    assert bad == AUTH and not res.empty


@FUZZ
@given(st.binary(max_size=4096))
def test_cmw_random(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        c.decode_cmw(data)


@FUZZ
@given(edits)
def test_cmw_mutated(e: list[tuple[int, int]]) -> None:
    with contextlib.suppress(DecodeError):
        c.decode_cmw(_mutate(VALID_CMW, e))


def _decode_outcome(data: bytes, remembered: c._Prefix | None) -> object:
    """decode_cmw's result, or the DecodeError's message, with ``remembered`` as the last prefix."""
    saved, c._last_prefix = c._last_prefix, remembered
    try:
        return c.decode_cmw(data)
    except DecodeError as exc:
        return f"error: {exc}"
    finally:
        c._last_prefix = saved


@FUZZ
@given(st.binary(max_size=96), edits | st.just([]))
def test_cmw_prefix_path_equals_full_decode(tail: bytes, e: list[tuple[int, int]]) -> None:
    """Whatever follows a remembered collection prefix, decode_cmw answers exactly as a full
    decode does: the same CMW, or an error (for a random tail, and for mutated valid tails)."""
    c.decode_cmw(VALID_CMW)
    prefix = c._last_prefix
    assert prefix is not None and VALID_CMW.startswith(prefix.data)
    for data in (prefix.data + tail, _mutate(VALID_CMW, e) if e else VALID_CMW):
        via_prefix = _decode_outcome(data, prefix)
        full = _decode_outcome(data, None)
        if isinstance(full, str):
            assert isinstance(via_prefix, str)
        else:
            assert via_prefix == full


@FUZZ
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.binary(max_size=8) | st.text(max_size=8),
        lambda ch: (
            st.lists(ch, max_size=4)
            | st.dictionaries(st.text(max_size=4) | st.integers(), ch, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_cmw_structured(obj: object) -> None:
    with contextlib.suppress(DecodeError):
        c.decode_cmw(cbor2.dumps(obj))


# The evidence engine's own records inside a CMW (docs/PROTOCOL.md §5): the batched tier's
# inclusion proof, the cached tier's epoch and per-connection AIK binding.
TIER_DECODERS = (merkle.InclusionProof.decode, tiers.Epoch.decode, tiers.decode_aik_binding)
VALID_PROOF = merkle.build("sha256", [bytes([i]) * 32 for i in range(5)])[1][3].encode()
VALID_EPOCH = tiers.Epoch(1_700_000_000, 1_700_000_300, bytes(tiers.EPOCH_NONCE_LENGTH)).encode()
VALID_BINDING = tiers.encode_aik_binding(0x0403, b"\x30" * 70)


def _tier_records(data: bytes) -> None:
    """Each decoder returns a record or raises DecodeError; a proof that decodes leads to a
    root or a DecodeError/VerificationError, never anything else."""
    for decode in TIER_DECODERS:
        with contextlib.suppress(DecodeError):
            decode(data)
    try:
        proof = merkle.InclusionProof.decode(data)
    except DecodeError:
        return
    for hash_name in ("sha256", "sha384"):
        with contextlib.suppress(DecodeError, VerificationError):
            merkle.root_from_proof(hash_name, b"\x01" * 32, proof)


@FUZZ
@given(st.binary(max_size=512))
def test_tier_records_random(data: bytes) -> None:
    _tier_records(data)


@FUZZ
@given(st.sampled_from([VALID_PROOF, VALID_EPOCH, VALID_BINDING]), edits)
def test_tier_records_mutated(valid: bytes, e: list[tuple[int, int]]) -> None:
    _tier_records(_mutate(valid, e))


@FUZZ
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats()
        | st.binary(max_size=64)
        | st.text(max_size=8),
        lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.integers(0, 4), ch, max_size=4),
        max_leaves=16,
    )
)
def test_tier_records_structured(obj: object) -> None:
    """Well-formed CBOR of the wrong shape: booleans for integers (True == 1 in Python), floats,
    huge integers, nested containers."""
    _tier_records(cbor2.dumps(obj))


def test_tier_records_valid_examples_decode() -> None:
    """The seeds of the mutation test are valid, so the mutations start from real records."""
    assert merkle.InclusionProof.decode(VALID_PROOF).index == 3
    assert tiers.Epoch.decode(VALID_EPOCH).expires == 1_700_000_300
    assert tiers.decode_aik_binding(VALID_BINDING) == (0x0403, b"\x30" * 70)


@pytest.mark.parametrize(
    "variant",
    [
        b"\x82\x1a\x00\x00\x04\x03" + VALID_BINDING[4:],  # the scheme in four bytes
        b"\x9f" + VALID_BINDING[1:] + b"\xff",  # indefinite-length array
        b"\x82\x19\x04\x03\x5f\x58\x46" + b"\x30" * 70 + b"\xff",  # indefinite bstr
        VALID_BINDING + b"\x00",  # a byte after the item
    ],
)
def test_the_aik_binding_has_one_spelling(variant: bytes) -> None:
    # The same [scheme, signature] spelt otherwise: refused, like the epoch record and the
    # inclusion proof (docs/PROTOCOL.md §5: preferred serialization, definite lengths).
    with pytest.raises(DecodeError):
        tiers.decode_aik_binding(variant)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_frame_decoder_chunks(chunks: list[bytes]) -> None:
    d = f.FrameDecoder()
    try:
        for ch in [f.PREAMBLE, *chunks]:
            for fr in d.feed(ch):
                assert len(fr.payload) <= f.MAX_FRAME_PAYLOAD
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=1024), edits)
def test_attester_session_random_after_preamble(data: bytes, e: list[tuple[int, int]]) -> None:
    # Random bytes rarely make a whole AUTH_REQUEST frame; a mutated valid one reaches the
    # request's decoding and checks (_on_request) every time.
    valid = f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, REQ_BYTES)
    for payload in (f.PREAMBLE + data, _mutate(valid, e)):
        at = xs.AttesterSession(
            xs.TLSInfo(SERVER.export, SERVER.hash_name), IDENT.chain_der, IDENT.private_key, PROFILE
        )
        with contextlib.suppress(OURS):
            at.receive(payload)


def test_the_session_fuzz_inputs_reach_the_deep_checks() -> None:
    # The unmutated inputs of the two session fuzz tests go all the way: the attester's request
    # handling answers, and the relying party validates the authenticator (signature, Finished,
    # identity) — so a mutation is judged by those checks, not stopped at the first one.
    at = xs.AttesterSession(
        xs.TLSInfo(SERVER.export, SERVER.hash_name), IDENT.chain_der, IDENT.private_key, PROFILE
    )
    (ev,) = at.receive(f.PREAMBLE + f.encode_frame(f.FrameType.AUTH_REQUEST, REQ_BYTES))
    assert isinstance(ev, xs.AttestationRequested) and ev.binding is not None
    (val,) = _rp().receive(f.PREAMBLE + f.encode_frame(f.FrameType.AUTHENTICATOR, RP_AUTH))
    assert isinstance(val, xs.AuthenticatorValidated)
    assert [ch.name for ch in val.checks if ch.name.startswith("ea.")] == [
        "ea.context",
        "ea.extensions",
        "ea.signature",
        "ea.finished",
        "ea.identity",
    ]


def _rp() -> xs.RelyingPartySession:
    rp = _rp_unstarted()
    rp.start()
    return rp


# A mutated certificate may carry a serial number cryptography parses with a deprecation warning
# (it will refuse it in a future release; either way a DecodeError/VerificationError here).
@pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)
@FUZZ
@given(st.binary(max_size=1024), edits)
def test_relying_party_session_hostile_server(data: bytes, e: list[tuple[int, int]]) -> None:
    # RP_AUTH answers the request every _rp() sends (same context, same schemes): a mutation of
    # it is judged by the signature, Finished, identity and CMW checks, not stopped at ea.context.
    for payload in (
        data,
        _mutate(f.PREAMBLE + f.encode_frame(f.FrameType.AUTHENTICATOR, RP_AUTH), e),
    ):
        with contextlib.suppress(OURS):
            _rp().receive(payload)
