"""Micro-benchmarks of the per-connection hot path (pytest-benchmark). Not part of the test run.

Run from the checkout: ``python3 -m pytest benchmarks --benchmark-only`` (``testpaths`` is
``tests``, so a plain ``pytest`` never collects this folder). Each benchmark is one step an
attested connection pays for, in memory, with no I/O:

* the RFC 9261 authenticator the server builds (ECDSA P-256 sign) and the client validates
  (ECDSA verify, X.509 parse), carrying a realistic CMW extension;
* SIMULATED software evidence: produced (CBOR + COSE_Sign1 ES256) and appraised (the full verifier);
* Merkle batching: building the tree over a batch of binders, and checking one inclusion proof;
* the evidence engine in the cached tier: the server's per-connection cost once the epoch quote
  exists (one AIK signature and a CMW), and the client's appraisal of that CMW with a warm
  ``AppraisalCache`` (the epoch quote is verified once, not per connection).

Numbers are per call on whatever machine runs them; compare runs on the same machine only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from atls_proxy.attest.engine import EvidenceEngine, Tier
from atls_proxy.attest.software import SOFTWARE_MEDIA_TYPE, SoftwareAttester
from atls_proxy.expat import authenticator as ea
from atls_proxy.expat import merkle
from atls_proxy.expat import messages as m
from atls_proxy.expat.binding import Binding, compute_binding
from atls_proxy.expat.cmw import IND_EVIDENCE, CMWRecord, encode_cmw
from atls_proxy.tls.context import ServerIdentity
from atls_proxy.verify.appraise import AppraisalCache, appraise_cmw
from atls_proxy.verify.policy import SoftwarePolicy
from atls_proxy.verify.software import SoftwareVerifier
from tests.support.pki import identity, tls_pair

CMW_EXTENSION = 0xFF00
MEASUREMENTS = {
    "firmware": hashlib.sha256(b"bench firmware").digest(),
    "kernel": hashlib.sha256(b"bench kernel").digest(),
    "workload": hashlib.sha256(b"bench workload").digest(),
}
PLATFORM = ec.generate_private_key(ec.SECP256R1())
NOW = 1_790_000_000.0


def _policy() -> SoftwarePolicy:
    return SoftwarePolicy(
        allow_simulated=True,
        platform_keys=(PLATFORM.public_key(),),
        platform_key_names=("platform.pem",),
        measurements={k: frozenset({v}) for k, v in MEASUREMENTS.items()},
    )


@pytest.fixture(scope="module")
def ident() -> ServerIdentity:
    return identity("p256")


@pytest.fixture(scope="module")
def binding() -> Binding:
    return Binding("sha256", os.urandom(32), os.urandom(32))


@pytest.fixture(scope="module")
def attester() -> SoftwareAttester:
    return SoftwareAttester(PLATFORM, MEASUREMENTS, clock=lambda: NOW)


@pytest.fixture(scope="module")
def exchange(ident: ServerIdentity, attester: SoftwareAttester) -> dict[str, object]:
    """A live TLS 1.3 pair (in memory), the client's request and the server's EA keys."""
    client, server = tls_pair(ident)
    req = ea.build_request(
        m.CLIENT_CERTIFICATE_REQUEST, os.urandom(32), extra_extensions=[m.Extension(CMW_EXTENSION)]
    )
    keys_server = ea.AuthenticatorKeys.derive(server.export, ea.Role.SERVER, server.hash_name)
    keys_client = ea.AuthenticatorKeys.derive(client.export, ea.Role.SERVER, client.hash_name)
    b = Binding("sha256", os.urandom(32), os.urandom(32))
    cmw = encode_cmw(CMWRecord(SOFTWARE_MEDIA_TYPE, attester.produce(b, NOW), IND_EVIDENCE))
    ext = m.Extension(CMW_EXTENSION, len(cmw).to_bytes(2, "big") + cmw)
    return {
        "req": req,
        "req_bytes": req.encode(),
        "keys_server": keys_server,
        "keys_client": keys_client,
        "ext": ext,
    }


# --- RFC 9261 authenticators ----------------------------------------------------------------------


def test_authenticator_build(
    benchmark: pytest.FixtureRequest, ident: ServerIdentity, exchange: dict[str, object]
) -> None:
    """Server: Certificate (with the CMW) + CertificateVerify (ECDSA P-256) + Finished."""
    auth = benchmark(
        ea.authenticate,
        exchange["keys_server"],
        exchange["req"],
        exchange["req_bytes"],
        ident.chain_der,
        ident.private_key,
        [exchange["ext"]],
    )
    assert auth[0] == m.CERTIFICATE


def test_authenticator_validate(
    benchmark: pytest.FixtureRequest, ident: ServerIdentity, exchange: dict[str, object]
) -> None:
    """Client: parse, X.509 leaf, ECDSA verify, Finished MAC."""
    auth = ea.authenticate(
        exchange["keys_server"],  # type: ignore[arg-type]
        exchange["req"],  # type: ignore[arg-type]
        exchange["req_bytes"],  # type: ignore[arg-type]
        ident.chain_der,
        ident.private_key,
        [exchange["ext"]],  # type: ignore[list-item]
    )
    res = benchmark(
        ea.validate,
        exchange["keys_client"],
        exchange["req"],
        exchange["req_bytes"],
        auth,
        entry0_only=frozenset({CMW_EXTENSION}),
    )
    assert not res.empty


def test_binding_from_exporter(benchmark: pytest.FixtureRequest, ident: ServerIdentity) -> None:
    """Expat binder and AIK hash from the SPKI and a 32-byte exported value (two SHA-256)."""
    spki = ident.chain_der[0][:91]  # any bytes do; the cost is the hashing
    b = benchmark(compute_binding, "sha256", spki, os.urandom(32))
    assert len(b.binder) == 32


# --- software evidence ----------------------------------------------------------------------------


def test_software_evidence_produce(
    benchmark: pytest.FixtureRequest, attester: SoftwareAttester, binding: Binding
) -> None:
    """SIMULATED evidence: canonical CBOR claims + COSE_Sign1 (ES256)."""
    ev = benchmark(attester.produce, binding, NOW)
    assert ev


def test_software_evidence_appraise(
    benchmark: pytest.FixtureRequest, attester: SoftwareAttester, binding: Binding
) -> None:
    """Every check of the software verifier, signature included."""
    verifier = SoftwareVerifier(_policy())
    ev = attester.produce(binding, NOW)
    appraisal = benchmark(verifier.appraise, SOFTWARE_MEDIA_TYPE, ev, binding, NOW)
    assert all(c.passed for c in appraisal.checks), appraisal.checks


# --- Merkle batching ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 16, 64, 256])
def test_merkle_build(benchmark: pytest.FixtureRequest, n: int) -> None:
    """Root and every inclusion proof for a batch of ``n`` binders (batched tier, per quote)."""
    binders = [os.urandom(32) for _ in range(n)]
    root, proofs = benchmark(merkle.build, "sha256", binders)
    assert len(proofs) == n and len(root) == 32


def test_merkle_verify_proof(benchmark: pytest.FixtureRequest) -> None:
    """Client: recompute the root from one binder and its proof (batch of 64)."""
    binders = [os.urandom(32) for _ in range(64)]
    root, proofs = merkle.build("sha256", binders)
    got = benchmark(merkle.root_from_proof, "sha256", binders[37], proofs[37])
    assert got == root


# --- the evidence engine, cached tier -------------------------------------------------------------

BATCH = 100


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    try:
        yield lp
    finally:
        lp.close()


def _cached_engine(
    loop: asyncio.AbstractEventLoop, attester: SoftwareAttester, ident: ServerIdentity
) -> EvidenceEngine:
    engine = EvidenceEngine(attester, Tier.CACHED, aik_key=ident.private_key)
    loop.run_until_complete(engine.start())  # the epoch quotes, before any connection
    return engine


def test_engine_cached_per_connection(
    benchmark: pytest.FixtureRequest,
    loop: asyncio.AbstractEventLoop,
    attester: SoftwareAttester,
    ident: ServerIdentity,
) -> None:
    """Server, cached tier: evidence for BATCH connections (one AIK signature + CMW each).

    Reported per round of BATCH connections: divide by 100 for the per-connection cost.
    """
    engine = _cached_engine(loop, attester, ident)
    bindings = [Binding("sha256", os.urandom(32), os.urandom(32)) for _ in range(BATCH)]

    async def batch() -> list[bytes]:
        return [await engine.evidence_for(b) for b in bindings]

    try:
        out = benchmark(lambda: loop.run_until_complete(batch()))
    finally:
        loop.run_until_complete(engine.close())
    assert len(out) == BATCH


def test_engine_cached_client_appraisal(
    benchmark: pytest.FixtureRequest,
    loop: asyncio.AbstractEventLoop,
    attester: SoftwareAttester,
    ident: ServerIdentity,
) -> None:
    """Client, cached tier: appraise one connection's CMW with a warm ``AppraisalCache``."""
    engine = _cached_engine(loop, attester, ident)
    b = Binding(
        "sha256",
        os.urandom(32),
        hashlib.sha256(ident.chain[0].public_key().public_bytes(*_SPKI)).digest(),
    )
    try:
        cmw = loop.run_until_complete(engine.evidence_for(b))
    finally:
        loop.run_until_complete(engine.close())
    verifiers = [SoftwareVerifier(_policy())]
    cache = AppraisalCache()
    now = time.time()
    aik = ident.chain[0].public_key()
    first = appraise_cmw(cmw, b, verifiers, now, aik_public_key=aik, cache=cache)
    assert all(a.passed for a in first), [c for a in first for c in a.checks if not c.passed]
    out = benchmark(appraise_cmw, cmw, b, verifiers, now, aik_public_key=aik, cache=cache)
    assert all(a.passed for a in out)


def _spki_args() -> tuple[object, object]:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return Encoding.DER, PublicFormat.SubjectPublicKeyInfo


_SPKI = _spki_args()
