"""The evidence engine's tiers, end to end through the relying party's appraisal (no sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import replace
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.attest import engine as engine_module
from atls_proxy.attest.base import Evidence
from atls_proxy.attest.engine import EvidenceEngine, Tier
from atls_proxy.attest.software import SoftwareAttester
from atls_proxy.errors import AttestationUnavailable, DecodeError
from atls_proxy.expat import merkle
from atls_proxy.expat.binding import Binding
from atls_proxy.expat.cmw import MAX_CMW_SIZE, CMWCollection, CMWRecord, decode_cmw, encode_cmw
from atls_proxy.expat.schemes import ECDSA_SECP256R1_SHA256, ECDSA_SECP384R1_SHA384
from atls_proxy.expat.tiers import (
    AIK_BINDING_MEDIA_TYPE,
    aik_binding_content,
    encode_aik_binding,
    epoch_digest,
)
from atls_proxy.verify.appraise import appraise_cmw
from atls_proxy.verify.policy import DEFAULT_MAX_EPOCH_AGE, Freshness, SoftwarePolicy
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.software import SoftwareVerifier
from tests.support.freshness import ALL_TIERS

PLATFORM = ec.generate_private_key(ec.SECP256R1())
AIK = ec.generate_private_key(ec.SECP256R1())
MEAS = {"kernel": hashlib.sha256(b"k").digest()}
VERIFIER = SoftwareVerifier(
    SoftwarePolicy(True, (PLATFORM.public_key(),), ("p",), {"kernel": frozenset(MEAS.values())})
)
AIK_HASH = hashlib.sha256(
    AIK.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
).digest()


def binding() -> Binding:
    return Binding("sha256", os.urandom(32), AIK_HASH)


def appraise(cmw: bytes, b: Binding, fresh: Freshness | None = None, now: float | None = None):  # type: ignore[no-untyped-def]
    (a,) = appraise_cmw(
        cmw,
        b,
        [VERIFIER],
        now or time.time(),
        aik_public_key=AIK.public_key(),
        freshness=fresh or ALL_TIERS,
    )
    return a


class CountingVerifier(SoftwareVerifier):
    """Counts full appraisals (what the client's AppraisalCache is meant to save)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.calls: list[int] = []

    def appraise(self, *a, **k):  # type: ignore[no-untyped-def]
        self.calls.append(1)
        return super().appraise(*a, **k)


class Recording(SoftwareAttester):
    """Counts quotes and detects overlapping quote operations."""

    def __init__(self, latency: float = 0.0) -> None:
        super().__init__(PLATFORM, MEAS)
        self.latency, self.calls, self.inflight, self.max_inflight = latency, 0, 0, 0

    async def attest(self, b: Binding) -> Evidence:
        self.calls += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.latency)
            return await super().attest(b)
        finally:
            self.inflight -= 1


async def test_strict_one_quote_each_serialised() -> None:
    att = Recording(0.005)
    eng = EvidenceEngine(att, Tier.STRICT)
    bs = [binding() for _ in range(10)]
    cmws = await asyncio.gather(*(eng.evidence_for(b) for b in bs))
    assert att.calls == 10 and att.max_inflight == 1
    for b, cmw in zip(bs, cmws, strict=True):
        a = appraise(cmw, b)
        assert a.passed, a.first_failure
    assert not appraise(cmws[0], bs[1]).passed  # each is bound to its own binder


async def test_batched_shares_quotes_and_every_binder_verifies() -> None:
    att = Recording(0.04)
    eng = EvidenceEngine(att, Tier.BATCHED)
    bs = [binding() for _ in range(64)]
    cmws = await asyncio.gather(*(eng.evidence_for(b) for b in bs))
    assert att.calls <= 3 and att.max_inflight == 1  # first request alone, the rest batched
    assert eng.stats.max_batch_size >= 32
    for b, cmw in zip(bs, cmws, strict=True):
        a = appraise(cmw, b)
        assert a.passed, a.first_failure
        assert [c.name for c in a.checks[:2]] == ["freshness.tier", "evidence.merkle"]
    # Another connection's proof never verifies for my binder.
    bad = appraise(cmws[5], bs[6])
    assert not bad.passed and bad.first_failure.name == "evidence.binder"


async def test_batched_proof_tampering() -> None:
    eng = EvidenceEngine(Recording(), Tier.BATCHED)
    bs = [binding() for _ in range(5)]
    cmws = await asyncio.gather(*(eng.evidence_for(b) for b in bs))
    col = decode_cmw(cmws[2])
    assert isinstance(col, CMWCollection)
    proof = merkle.InclusionProof.decode(col.members["merkle"].value)  # type: ignore[union-attr]
    for bad_proof, check in (
        (replace(proof, path=proof.path[:-1]), "evidence.merkle"),  # wrong length
        (replace(proof, index=(proof.index + 1) % proof.size), "evidence.binder"),  # wrong leaf
    ):
        tampered = encode_cmw(
            CMWCollection(
                {
                    "evidence": col.members["evidence"],
                    "merkle": CMWRecord(merkle.MERKLE_PROOF_MEDIA_TYPE, bad_proof.encode()),
                }
            )
        )
        a = appraise(tampered, bs[2])
        assert not a.passed and a.first_failure.name == check


async def test_batched_member_gone_is_skipped() -> None:
    att = Recording(0.03)
    eng = EvidenceEngine(att, Tier.BATCHED)
    first = asyncio.ensure_future(eng.evidence_for(binding()))
    await asyncio.sleep(0.005)
    waiting = [asyncio.ensure_future(eng.evidence_for(binding())) for _ in range(4)]
    await asyncio.sleep(0.005)
    waiting[0].cancel()  # this client went away while the quote was in flight
    await first
    done = await asyncio.gather(*waiting[1:])
    assert len(done) == 3 and eng.stats.waiting == 0


async def test_cached_one_epoch_many_connections() -> None:
    att = Recording()
    eng = EvidenceEngine(att, Tier.CACHED, aik_key=AIK, epoch_seconds=60)
    await eng.start()
    calls = att.calls
    bs = [binding() for _ in range(50)]
    cmws = await asyncio.gather(*(eng.evidence_for(b) for b in bs))
    assert att.calls == calls  # no quote per connection
    for b, cmw in zip(bs, cmws, strict=True):
        a = appraise(cmw, b)
        assert a.passed, a.first_failure
        assert [c.name for c in a.checks[:3]] == [
            "freshness.tier",
            "freshness.epoch-age",
            "evidence.aik-binding",
        ]
    # bound per connection: another binder fails at the AIK binding
    assert appraise(cmws[0], bs[1]).first_failure.name == "evidence.aik-binding"


async def test_cached_epoch_policy_and_expiry() -> None:
    now = [1_000_000.0]
    att = SoftwareAttester(PLATFORM, MEAS, clock=lambda: now[0])
    eng = EvidenceEngine(att, Tier.CACHED, aik_key=AIK, epoch_seconds=100, clock=lambda: now[0])
    b = binding()
    cmw = await eng.evidence_for(b)
    assert appraise(cmw, b, now=now[0] + 10).passed
    old = appraise(cmw, b, Freshness(frozenset(Tier), max_epoch_age=5), now=now[0] + 10)
    assert old.first_failure.name == "freshness.epoch-age"
    assert appraise(cmw, b, now=now[0] + 200).first_failure.name == "freshness.epoch-age"  # expired
    assert (
        appraise(cmw, b, Freshness(frozenset({Tier.STRICT}))).first_failure.name == "freshness.tier"
    )
    # Refreshed ahead of expiry, in the background; never stale after expiry.
    first_epochs = eng.stats.epochs
    now[0] += 85  # inside the last 20 %
    await eng.evidence_for(binding())
    await asyncio.sleep(0.01)
    assert eng.stats.epochs == first_epochs + 1
    now[0] += 500  # far past expiry: the request waits for a fresh epoch
    b2 = binding()
    assert appraise(await eng.evidence_for(b2), b2, now=now[0]).passed


async def test_cached_wrong_aik_key_rejected() -> None:
    eng = EvidenceEngine(Recording(), Tier.CACHED, aik_key=AIK)
    b = binding()
    cmw = await eng.evidence_for(b)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    (a,) = appraise_cmw(cmw, b, [VERIFIER], time.time(), aik_public_key=other, freshness=ALL_TIERS)
    assert a.first_failure.name == "evidence.aik-binding"


def _with_binding_record(cmw: bytes, scheme: int, sig: bytes) -> bytes:
    col = decode_cmw(cmw)
    assert isinstance(col, CMWCollection)
    members = dict(col.members)
    members["binding"] = CMWRecord(AIK_BINDING_MEDIA_TYPE, encode_aik_binding(scheme, sig))
    return encode_cmw(CMWCollection(members))


async def test_cached_binding_signature_covered_by_certificate_verify() -> None:
    """``cmw_signed_by_aik``: the relying party verified the AIK's CertificateVerify over the
    Certificate carrying this CMW, so the binding record's own signature is not verified again.
    The record must still be there, well formed, with a scheme that fits the AIK; without the flag
    (a verifier outside the connection) the signature is verified as before."""
    eng = EvidenceEngine(Recording(), Tier.CACHED, aik_key=AIK)
    b = binding()
    cmw = await eng.evidence_for(b)

    def run(data: bytes, signed: bool, key: object = AIK.public_key()):  # type: ignore[no-untyped-def]
        (a,) = appraise_cmw(
            data,
            b,
            [VERIFIER],
            time.time(),
            aik_public_key=key,
            cmw_signed_by_aik=signed,
            freshness=ALL_TIERS,
        )
        return a

    ok = run(cmw, True)
    assert ok.passed, ok.first_failure
    check = next(c for c in ok.checks if c.name == "evidence.aik-binding")
    assert "CertificateVerify" in check.detail and "not verified again" in check.detail
    garbage = _with_binding_record(cmw, ECDSA_SECP256R1_SHA256, b"\x30" * 70)
    assert run(garbage, True).passed  # only an AIK holder can put it under a valid CV
    assert run(garbage, False).first_failure.name == "evidence.aik-binding"
    wrong_scheme = _with_binding_record(cmw, ECDSA_SECP384R1_SHA384, b"\x30" * 70)
    assert run(wrong_scheme, True).first_failure.name == "evidence.aik-binding"
    assert run(cmw, True, None).first_failure.name == "evidence.aik-binding"
    # The epoch evidence still names the AIK: a CMW under another key's CertificateVerify fails.
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    other_hash = hashlib.sha256(
        other.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).digest()
    (a,) = appraise_cmw(
        cmw,
        Binding("sha256", b.binder, other_hash),
        [VERIFIER],
        time.time(),
        aik_public_key=other,
        cmw_signed_by_aik=True,
        freshness=ALL_TIERS,
    )
    assert not a.passed and a.first_failure is not None
    assert a.first_failure.name == "evidence.aik-hash", a.first_failure


class Broken:
    name, simulated = "broken", True

    def __init__(self, mode: str) -> None:
        self.mode = mode

    async def attest(self, b: Binding) -> Evidence:
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "garbage":
            return Evidence("application/x", b"\x00")
        raise AttestationUnavailable("TEE error")


@pytest.mark.parametrize("tier", [Tier.STRICT, Tier.BATCHED, Tier.CACHED])
async def test_tee_errors_reach_every_waiter(tier: Tier) -> None:
    eng = EvidenceEngine(Broken("error"), tier, aik_key=AIK, quote_timeout=0.2)
    results = await asyncio.gather(
        *(eng.evidence_for(binding()) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, AttestationUnavailable) for r in results)
    hang = EvidenceEngine(Broken("hang"), tier, aik_key=AIK, quote_timeout=0.1)
    t0 = time.monotonic()
    with pytest.raises(AttestationUnavailable, match="timed out"):
        await hang.evidence_for(binding())
    assert time.monotonic() - t0 < 2


async def test_garbage_from_tee_fails_appraisal_not_the_proxy() -> None:
    eng = EvidenceEngine(Broken("garbage"), Tier.STRICT)
    b = binding()
    a = appraise(await eng.evidence_for(b), b)
    assert not a.passed and a.first_failure.name == "cmw.media-type"


async def test_queue_is_bounded() -> None:
    eng = EvidenceEngine(Recording(0.05), Tier.STRICT, max_waiters=3)
    results = await asyncio.gather(
        *(eng.evidence_for(binding()) for _ in range(6)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, AttestationUnavailable)]
    assert len(refused) == 3 and eng.stats.refused_full == 3


@pytest.mark.parametrize("tier", [Tier.BATCHED, Tier.CACHED])
async def test_waiters_are_bounded_in_every_tier(tier: Tier) -> None:
    # The cached tier waits for a quote only when it has no valid epoch (here: none yet).
    eng = EvidenceEngine(Recording(0.05), tier, aik_key=AIK, max_waiters=3)
    results = await asyncio.gather(
        *(eng.evidence_for(binding()) for _ in range(6)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, AttestationUnavailable)]
    assert len(refused) == 3 and eng.stats.refused_full == 3
    assert all("queue full" in str(r) for r in refused)
    assert eng.stats.waiting == 0


async def test_a_batch_group_whose_clients_all_left_costs_no_quote() -> None:
    # One batch, two groups (suite hashes). The sha384 clients leave while the sha256 group is
    # quoted: their group is not quoted for nobody (it was: a whole TEE quote, in everyone's way).
    att = Recording(0.2)
    eng = EvidenceEngine(att, Tier.BATCHED)
    aik384 = hashlib.sha384(
        AIK.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).digest()
    first = asyncio.ensure_future(eng.evidence_for(binding()))  # quote 1 in flight
    await asyncio.sleep(0.01)
    live = asyncio.ensure_future(eng.evidence_for(binding()))
    gone = [
        asyncio.ensure_future(eng.evidence_for(Binding("sha384", os.urandom(48), aik384)))
        for _ in range(20)
    ]
    await asyncio.sleep(0.25)  # quote 1 done; the next batch is taken, its sha256 group quoting
    for g in gone:
        g.cancel()
    await asyncio.gather(first, live)
    await asyncio.sleep(0.3)  # room for a third quote, were one started
    assert att.calls == 2 and att.max_inflight == 1
    assert eng.stats.waiting == 0
    await eng.close()


async def test_a_cancelled_batch_member_frees_its_place_in_the_queue() -> None:
    eng = EvidenceEngine(Recording(0.05), Tier.BATCHED)
    first = asyncio.ensure_future(eng.evidence_for(binding()))
    await asyncio.sleep(0.005)  # its batch is being quoted; the next ones queue
    waiting = [asyncio.ensure_future(eng.evidence_for(binding())) for _ in range(3)]
    await asyncio.sleep(0.005)
    assert len(eng._pending) == 3
    waiting[0].cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(eng._pending) == 2  # no dead entry taking a place in the next batch
    await first
    assert len(await asyncio.gather(*waiting[1:])) == 2
    assert eng.stats.last_batch_size == 2


async def test_many_gone_clients_leave_the_queue_in_constant_time_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Shutdown cancels every waiting connection, in no particular order: removing each from the
    # queue must not scan it (with a list, 4096 waiters cost ~8 M Binding comparisons, ~1 s of
    # event loop). Counted, not timed: no Binding is compared at all.
    eng = EvidenceEngine(Broken("hang"), Tier.BATCHED, quote_timeout=30, max_waiters=5000)
    first = asyncio.ensure_future(eng.evidence_for(binding()))
    await asyncio.sleep(0.01)  # its quote hangs; the rest queue behind it
    waiting = [asyncio.ensure_future(eng.evidence_for(binding())) for _ in range(2000)]
    await asyncio.sleep(0.01)
    assert len(eng._pending) == 2000
    compared = [0]
    real_eq = Binding.__eq__

    def counting_eq(self: Binding, other: object) -> bool:
        compared[0] += 1
        return bool(real_eq(self, other))

    monkeypatch.setattr(Binding, "__eq__", counting_eq)
    for t in waiting[::-1]:  # the worst order for a list scan
        t.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert len(eng._pending) == 0 and eng.stats.waiting == 1
    assert compared[0] == 0
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await eng.close()


async def test_a_reload_is_not_refused_when_the_queue_is_full() -> None:
    now = [1_000_000.0]
    eng = EvidenceEngine(
        Recording(0.05), Tier.CACHED, aik_key=AIK, max_waiters=2, clock=lambda: now[0]
    )
    waiting = [asyncio.ensure_future(eng.evidence_for(binding())) for _ in range(2)]
    await asyncio.sleep(0)
    assert eng.stats.waiting == 2  # the queue is full
    other = ec.generate_private_key(ec.SECP256R1())
    await eng.prepare_key(other)  # a reload's new key: quoted, not refused
    assert len(await asyncio.gather(*waiting)) == 2


@pytest.mark.parametrize("tier", [Tier.BATCHED, Tier.CACHED])
async def test_close_answers_every_waiting_connection(tier: Tier) -> None:
    eng = EvidenceEngine(Broken("hang"), tier, aik_key=AIK, quote_timeout=30)
    waiting = [asyncio.ensure_future(eng.evidence_for(binding())) for _ in range(3)]
    await asyncio.sleep(0.01)  # batched: all three taken out of the queue, their quote in flight
    await asyncio.wait_for(eng.close(), 2)
    results = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 2)
    assert all(isinstance(r, AttestationUnavailable) for r in results), results
    assert all("closed" in str(r) for r in results)


class SlowClock(SoftwareAttester):
    """A quote during which the (fake) wall clock moves on by ``step`` seconds."""

    def __init__(self, now: list[float], step: float) -> None:
        super().__init__(PLATFORM, MEAS, clock=lambda: now[0])
        self.now, self.step = now, step

    async def attest(self, b: Binding) -> Evidence:
        self.now[0] += self.step
        return await super().attest(b)


async def test_an_epoch_already_expired_when_its_quote_returns_is_not_served() -> None:
    now = [1_000_000.9]
    eng = EvidenceEngine(
        SlowClock(now, 3.0), Tier.CACHED, aik_key=AIK, epoch_seconds=2, clock=lambda: now[0]
    )
    with pytest.raises(AttestationUnavailable, match="not valid"):
        await eng.evidence_for(binding())


async def test_an_epoch_is_never_shorter_than_configured() -> None:
    now = [1_000_000.9]  # start is rounded down to whole seconds, so the end must be rounded up
    eng = EvidenceEngine(
        Recording(), Tier.CACHED, aik_key=AIK, epoch_seconds=1.5, clock=lambda: now[0]
    )
    await eng.start()
    (ep,) = (e for (h, _), e in eng._epochs.items() if h == "sha256")
    # The record says at least epoch_seconds, in whole seconds, and no more than a second more
    # (ending later than start + epoch_seconds rounded up would outlive a client's max_epoch_age,
    # which counts from start).
    assert (ep.start, ep.expires) == (1_000_000, 1_000_002)
    assert 1.5 <= ep.expires - ep.start < 1.5 + 1


async def test_after_the_clock_steps_back_a_new_epoch_is_quoted() -> None:
    now = [2_000_000.0]
    att = SoftwareAttester(PLATFORM, MEAS, clock=lambda: now[0])
    eng = EvidenceEngine(att, Tier.CACHED, aik_key=AIK, epoch_seconds=300, clock=lambda: now[0])
    await eng.evidence_for(binding())
    epochs = eng.stats.epochs
    now[0] -= 3600  # e.g. NTP corrected a clock that ran an hour ahead
    b = binding()
    a = appraise(await eng.evidence_for(b), b, now=now[0])
    assert a.passed, a.first_failure  # not an epoch that starts an hour in the client's future
    assert eng.stats.epochs == epochs + 1


def test_merkle_known_shapes() -> None:
    # RFC 9162 §2.1.1: a one-leaf tree's root is the leaf hash; two leaves are one node.
    a, b = b"a" * 32, b"b" * 32
    root1, (p1,) = merkle.build("sha256", [a])
    assert root1 == hashlib.sha256(b"\x00" + a).digest() and p1.path == ()
    root2, _ = merkle.build("sha256", [a, b])
    la, lb = (hashlib.sha256(b"\x00" + x).digest() for x in (a, b))
    assert root2 == hashlib.sha256(b"\x01" + la + lb).digest()
    for n in (3, 7, 8, 9, 100):
        bs = [os.urandom(48) for _ in range(n)]
        root, proofs = merkle.build("sha384", bs)
        assert all(
            merkle.root_from_proof("sha384", x, p) == root for x, p in zip(bs, proofs, strict=True)
        )


def _rfc_mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 §2.1.1 MTH, written as the RFC states it (the reference for build())."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _rfc_mth(leaves[:k]) + _rfc_mth(leaves[k:])).digest()


def _rfc_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n])."""
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*_rfc_path(m, leaves[:k]), _rfc_mth(leaves[k:])]
    return [*_rfc_path(m - k, leaves[k:]), _rfc_mth(leaves[:k])]


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 31, 32, 33, 64, 65])
def test_merkle_build_equals_the_rfc_definition(n: int) -> None:
    bs = [os.urandom(32) for _ in range(n)]
    leaves = [hashlib.sha256(b"\x00" + b).digest() for b in bs]
    root, proofs = merkle.build("sha256", bs)
    assert root == _rfc_mth(leaves)
    for i, p in enumerate(proofs):
        assert (p.index, p.size, list(p.path)) == (i, n, _rfc_path(i, leaves))


def test_merkle_build_hashes_each_subtree_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of n costs n leaf hashes and n - 1 node hashes, not one subtree walk per proof
    (which was quadratic and stalled the event loop for seconds at large batches)."""
    calls = [0]
    real = merkle._h

    def counting(*a: bytes) -> bytes:
        calls[0] += 1
        return real(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(merkle, "_h", counting)
    for n in (64, 1024, 4096):
        calls[0] = 0
        merkle.build("sha256", [os.urandom(32) for _ in range(n)])
        assert calls[0] == 2 * n - 1


def test_proof_decoding_caps() -> None:
    for bad in (
        b"",
        b"\x00",
        cbor2.dumps([0, 0, []]),
        cbor2.dumps([5, 3, []]),
        cbor2.dumps([0, 1, [b"x"] * 17]),
        cbor2.dumps([True, 2, []]),
    ):
        with pytest.raises(DecodeError):
            merkle.InclusionProof.decode(bad)


async def test_client_cache_reuses_epoch_appraisal_only_while_valid() -> None:
    from atls_proxy.verify.appraise import AppraisalCache

    now = [2_000_000.0]
    eng = EvidenceEngine(
        SoftwareAttester(PLATFORM, MEAS, clock=lambda: now[0]),
        Tier.CACHED,
        aik_key=AIK,
        epoch_seconds=100,
        clock=lambda: now[0],
    )
    cache = AppraisalCache()
    v = CountingVerifier(VERIFIER._policy)  # type: ignore[attr-defined]
    calls = v.calls

    async def connection(expected: Binding | None = None) -> Appraisal:
        b = binding()
        (a,) = appraise_cmw(
            await eng.evidence_for(b),
            expected or b,
            [v],
            now[0],
            aik_public_key=AIK.public_key(),
            cache=cache,
            freshness=ALL_TIERS,
        )
        return a

    for _ in range(5):
        assert (await connection()).passed
    assert len(calls) == 1  # the epoch quote was verified once
    bad = await connection(expected=binding())
    assert bad.first_failure.name == "evidence.aik-binding"  # per-connection checks still run
    now[0] += 70  # past CACHE_MAX_SECONDS: verified again
    await connection()
    assert len(calls) == 2


async def test_cached_cmw_is_the_collection_encode_cmw_would_write() -> None:
    """The per-epoch pre-encoded prefix must not change a byte of the CMW on the wire."""
    eng = EvidenceEngine(Recording(), Tier.CACHED, aik_key=AIK, epoch_seconds=60)
    await eng.start()
    b = binding()
    cmw = await eng.evidence_for(b)
    decoded = decode_cmw(cmw)
    assert isinstance(decoded, CMWCollection)
    assert list(decoded.members) == ["evidence", "epoch", "binding"]
    assert encode_cmw(decoded) == cmw
    assert appraise(cmw, b).passed


async def test_batched_cmw_is_the_collection_encode_cmw_would_write() -> None:
    """The batch's quote is encoded once; each member's CMW is still exactly the collection."""
    eng = EvidenceEngine(Recording(latency=0.01), Tier.BATCHED)
    bs = [binding() for _ in range(5)]
    cmws = await asyncio.gather(*(eng.evidence_for(b) for b in bs))
    for b, cmw in zip(bs, cmws, strict=True):
        decoded = decode_cmw(cmw)
        assert isinstance(decoded, CMWCollection)
        assert list(decoded.members) == ["evidence", "merkle"]
        assert encode_cmw(decoded) == cmw
        assert appraise(cmw, b).passed


async def test_client_cache_shares_a_batch_quote_only_within_the_batch() -> None:
    from atls_proxy.verify.appraise import BATCH_CACHE_SECONDS, AppraisalCache

    now = [2_000_000.0]
    att = Recording(latency=0.05)
    eng = EvidenceEngine(att, Tier.BATCHED)
    cache = AppraisalCache()
    v = CountingVerifier(VERIFIER._policy)  # type: ignore[attr-defined]
    calls = v.calls
    first = binding()
    t_first = asyncio.ensure_future(eng.evidence_for(first))
    await asyncio.sleep(0.01)  # the first quote is in flight: the next 8 form one batch
    bs = [binding() for _ in range(8)]
    cmws = await asyncio.gather(*(eng.evidence_for(b) for b in bs))
    await t_first
    assert att.calls == 2
    fresh = Freshness(tiers=frozenset({Tier.BATCHED}))
    for b, cmw in zip(bs, cmws, strict=True):
        (a,) = appraise_cmw(cmw, b, [v], now[0], freshness=fresh, cache=cache)
        assert a.passed, a.first_failure
        assert any(c.name == "evidence.merkle" and c.passed for c in a.checks)
    assert len(calls) == 1  # one quote appraisal for the whole batch
    # Another connection's binder with a batch member's proof recomputes another root: no cache
    # hit, and the quote does not carry that root.
    (bad,) = appraise_cmw(cmws[0], binding(), [v], now[0], freshness=fresh, cache=cache)
    assert not bad.passed and len(calls) == 2
    # After BATCH_CACHE_SECONDS the quote is verified again.
    now[0] += BATCH_CACHE_SECONDS + 1
    (a,) = appraise_cmw(cmws[1], bs[1], [v], now[0], freshness=fresh, cache=cache)
    assert a.passed and len(calls) == 3


@pytest.mark.parametrize("n", [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32])
def test_direct_cbor_writers_equal_cbor2(n: int) -> None:
    from atls_proxy.expat.tiers import cbor_head, encode_aik_binding, encode_record

    assert cbor_head(0, n) == cbor2.dumps(n)
    sig = os.urandom(n % 300)
    assert encode_aik_binding(0x0403, sig) == cbor2.dumps([0x0403, sig])
    mt = "application/x" + "y" * (n % 70)
    assert encode_record(mt, sig) == cbor2.dumps([mt, sig])


class Oversized(SoftwareAttester):
    """A TEE whose quote is too large for any CMW the Certificate can carry (MAX_CMW_SIZE)."""

    def __init__(self) -> None:
        super().__init__(PLATFORM, MEAS)
        self.big = False

    async def attest(self, b: Binding) -> Evidence:
        ev = await super().attest(b)
        return Evidence(ev.media_type, b"\x00" * (MAX_CMW_SIZE - 40)) if self.big else ev


@pytest.mark.parametrize("tier", [Tier.STRICT, Tier.BATCHED, Tier.CACHED])
async def test_a_cmw_too_large_to_carry_fails_each_connection_not_the_engine(tier: Tier) -> None:
    """Every tier: the connections get AttestationUnavailable (no data crosses), the engine and
    its batcher keep working, and the next quote that fits is served."""
    att = Oversized()
    att.big = True
    eng = EvidenceEngine(att, tier, aik_key=AIK)
    with pytest.raises(AttestationUnavailable, match="exceeds"):
        if tier is Tier.CACHED:
            await eng.start()  # the epoch quote fits in no CMW either
        await asyncio.gather(*(eng.evidence_for(binding()) for _ in range(3)))
    att.big = False
    if tier is Tier.CACHED:
        eng = EvidenceEngine(att, tier, aik_key=AIK)  # a new epoch
    b = binding()
    assert appraise(await eng.evidence_for(b), b).passed


async def test_the_cached_tier_relay_with_a_stolen_key_needs_the_policys_opt_in() -> None:
    """docs/SECURITY.md: in the cached tier the binding is the AIK's signature alone. Mallory,
    holding the stolen TLS key (= the AIK), fetches the genuine epoch as an ordinary client and
    re-signs it for her victim's connection. A client that opted in to the tier accepts it (the
    tier's stated limit); the default policy refuses the tier."""
    eng = EvidenceEngine(Recording(), Tier.CACHED, aik_key=AIK, epoch_seconds=60)
    await eng.start()
    genuine = await eng.evidence_for(binding())  # Mallory's own connection to the server
    victim = binding()
    col = decode_cmw(genuine)
    assert isinstance(col, CMWCollection)
    epoch = col.members["epoch"]
    assert isinstance(epoch, CMWRecord)
    digest = epoch_digest("sha256", epoch.value)
    sig = AIK.sign(aik_binding_content(victim.binder, digest), ec.ECDSA(hashes.SHA256()))
    forged = _with_binding_record(genuine, ECDSA_SECP256R1_SHA256, sig)
    assert appraise(forged, victim, ALL_TIERS).passed
    (a,) = appraise_cmw(forged, victim, [VERIFIER], time.time(), aik_public_key=AIK.public_key())
    assert a.first_failure is not None and a.first_failure.name == "freshness.tier"
    # The same Mallory against the strict tier: the quote names another binder.
    strict = EvidenceEngine(Recording(), Tier.STRICT)
    assert appraise(await strict.evidence_for(binding()), victim).first_failure.name == (
        "evidence.binder"
    )


class _Flaky(Recording):
    """A TEE that can go down and come back."""

    down = False

    async def attest(self, b: Binding) -> Evidence:
        if self.down:
            self.calls += 1
            raise AttestationUnavailable("TEE down")
        return await super().attest(b)


async def test_a_server_keeps_its_epochs_warm_without_traffic(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Real clock, 2 s epochs: refreshed at their refresh point with no connection at all; when
    # the TEE fails the epoch expires (readiness says so) and comes back once the TEE does,
    # again with no connection — an idle service is not stuck waiting for traffic.
    monkeypatch.setattr(engine_module, "KEEP_WARM_RETRY", 0.2)
    att = _Flaky()
    eng = EvidenceEngine(att, Tier.CACHED, aik_key=AIK, epoch_seconds=2, quote_timeout=0.3)
    await eng.start(keep_warm=True)
    try:
        assert eng.epoch_current() and eng.stats.epochs == 2  # one per suite hash
        deadline = time.monotonic() + 5
        while eng.stats.epochs < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            assert eng.epoch_current("sha256") and eng.epoch_current("sha384")
        assert eng.stats.epochs >= 4  # both refreshed, no evidence_for called
        att.down = True
        deadline = time.monotonic() + 5
        while eng.epoch_current() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not eng.epoch_current()  # never served stale: expired while the TEE is down
        failed = att.calls
        with caplog.at_level(logging.DEBUG, logger="atls_proxy.attest.engine"):
            await asyncio.sleep(0.7)
        assert att.calls > failed + 1  # retried every KEEP_WARM_RETRY, not per connection
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) <= 2, warnings  # the first failure warns, the retries are debug
        att.down = False
        deadline = time.monotonic() + 3
        while not eng.epoch_current() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert eng.epoch_current()
        assert appraise(await eng.evidence_for(b := binding()), b).passed
    finally:
        await eng.close()
    assert eng._keeper is not None and eng._keeper.done()  # close() stops it


async def test_without_keep_warm_nothing_quotes_in_the_background() -> None:
    att = Recording()
    eng = EvidenceEngine(att, Tier.CACHED, aik_key=AIK, epoch_seconds=2, quote_timeout=0.3)
    await eng.start()
    calls = att.calls
    await asyncio.sleep(2.2)
    assert att.calls == calls and not eng.epoch_current()
    await eng.close()


async def test_the_keeper_wakes_up_after_the_wall_clock_jumps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its waits come from the wall clock; the loop's sleep is monotonic (a VM suspended, an NTP
    # step): it looks again every KEEP_WARM_RETRY, so a jump past expiry is caught at once.
    monkeypatch.setattr(engine_module, "KEEP_WARM_RETRY", 0.2)
    now = [1_000_000.0]
    eng = EvidenceEngine(
        SoftwareAttester(PLATFORM, MEAS, clock=lambda: now[0]),
        Tier.CACHED,
        aik_key=AIK,
        epoch_seconds=300,
        clock=lambda: now[0],
    )
    await eng.start(keep_warm=True)
    try:
        epochs = eng.stats.epochs
        now[0] += 1000  # both epochs expired, with no sleep of the loop's clock to notice
        assert not eng.epoch_current()
        async with asyncio.timeout(3):
            while not eng.epoch_current():
                await asyncio.sleep(0.05)
        assert eng.stats.epochs >= epochs + 1
    finally:
        await eng.close()


async def test_a_failed_refresh_is_not_retried_by_every_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The attack on the TEE: a busy service whose refresh failed. Without a pause every
    # connection in the refresh window (and every one after expiry) would start one more quote
    # against the failing TEE; with it, connections keep the still-valid epoch, then are refused
    # at once, and the TEE sees one attempt per KEEP_WARM_RETRY.
    monkeypatch.setattr(engine_module, "KEEP_WARM_RETRY", 0.5)
    now = [1_000_000.0]
    att = _Flaky()
    eng = EvidenceEngine(
        att, Tier.CACHED, aik_key=AIK, epoch_seconds=100, clock=lambda: now[0], quote_timeout=1
    )
    await eng.start()
    quoted = att.calls
    att.down = True
    now[0] += 90  # inside the refresh window: the epoch is still valid
    for _ in range(20):
        assert await eng.evidence_for(binding())  # served from the valid epoch
        await asyncio.sleep(0.005)  # lets a refresh started by a connection run and fail
    assert att.calls == quoted + 1  # one attempt, not one per connection

    now[0] += 20  # expired: nothing to serve, and the refresh failed moments ago
    t0 = time.monotonic()
    for _ in range(20):
        with pytest.raises(AttestationUnavailable, match=r"refresh failed .* ago \(TEE down\)"):
            await eng.evidence_for(binding())
    assert time.monotonic() - t0 < 0.4  # refused at once, not after a quote each
    assert att.calls == quoted + 1

    await asyncio.sleep(0.55)  # the pause is over: the next connection tries the TEE again
    with pytest.raises(AttestationUnavailable, match="TEE down"):
        await eng.evidence_for(binding())
    assert att.calls == quoted + 2
    att.down = False
    with pytest.raises(AttestationUnavailable, match="refresh failed"):
        await eng.evidence_for(binding())  # still inside the new pause
    await asyncio.sleep(0.55)
    b = binding()
    cmw = await eng.evidence_for(b)  # the TEE is back: a fresh epoch
    assert cmw and eng.epoch_current("sha256")
    await eng.close()


async def test_start_and_reload_quote_even_right_after_a_failed_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The pause holds back connections, not an operator's start or reload (prepare_key).
    monkeypatch.setattr(engine_module, "KEEP_WARM_RETRY", 60.0)
    now = [1_000_000.0]
    att = _Flaky()
    eng = EvidenceEngine(att, Tier.CACHED, aik_key=AIK, epoch_seconds=100, clock=lambda: now[0])
    await eng.start()
    att.down = True
    now[0] += 200
    with pytest.raises(AttestationUnavailable, match="TEE down"):
        await eng.evidence_for(binding())
    att.down = False
    await eng.prepare_key(AIK)  # not refused by the pause
    assert eng.epoch_current()
    assert await eng.evidence_for(binding())
    await eng.close()


async def test_an_epoch_is_not_served_past_the_default_client_age() -> None:
    # 300 s epochs against the default max_epoch_age of 300 s: the record must end at start +
    # 300, or the server would serve, for up to a second, evidence default clients refuse.
    now = [2_000_000.9]
    eng = EvidenceEngine(
        Recording(), Tier.CACHED, aik_key=AIK, epoch_seconds=300, clock=lambda: now[0]
    )
    await eng.start()
    (ep,) = (e for (h, _), e in eng._epochs.items() if h == "sha256")
    assert (ep.start, ep.expires) == (2_000_000, 2_000_300)
    assert ep.expires - ep.start <= DEFAULT_MAX_EPOCH_AGE
    await eng.close()


async def test_a_replaced_key_keeps_its_last_epoch_and_is_never_quoted_again() -> None:
    """A connection accepted before a reload presents the old certificate: it is served the old
    key's epoch while that lasts — no quote for a key no new connection uses — and refused after
    it (an epoch is never served stale)."""
    now = [3_000_000.0]
    att = Recording()
    eng = EvidenceEngine(att, Tier.CACHED, aik_key=AIK, epoch_seconds=100, clock=lambda: now[0])
    await eng.start()
    assert att.calls == 2  # one epoch per suite hash
    new = ec.generate_private_key(ec.SECP256R1())
    await eng.prepare_key(new)  # the reload
    assert att.calls == 4
    b = binding()
    cmw = await eng.evidence_for(b, AIK)  # accepted before the reload, the old certificate
    assert att.calls == 4
    a = appraise(cmw, b, now=now[0])
    assert a.passed, a.first_failure
    now[0] += 99.5  # past the old epoch's refresh point: still no quote for the old key
    await eng.evidence_for(binding(), AIK)
    await asyncio.sleep(0)
    assert att.calls == 4
    now[0] += 1  # expired
    with pytest.raises(AttestationUnavailable, match="a reload replaced the server key"):
        await eng.evidence_for(binding(), AIK)
    await asyncio.sleep(0)
    assert att.calls == 4
    # the new key is refreshed as usual, and the next reload drops the expired old epochs
    assert await eng.evidence_for(Binding("sha256", os.urandom(32), _spki_hash(new)), new)
    await eng.prepare_key(new)
    assert {aik for _, aik in eng._epochs} == {_spki_hash(new, h) for h in ("sha256", "sha384")}
    await eng.close()


def _spki_hash(key: ec.EllipticCurvePrivateKey, hash_name: str = "sha256") -> bytes:
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.new(hash_name, spki).digest()


async def test_a_reload_back_to_a_retired_key_quotes_it_again() -> None:
    now = [3_000_000.0]
    att = Recording()
    a, b = AIK, ec.generate_private_key(ec.SECP256R1())
    eng = EvidenceEngine(att, Tier.CACHED, aik_key=a, epoch_seconds=100, clock=lambda: now[0])
    await eng.start()
    await eng.prepare_key(b)
    now[0] += 150  # a's epochs have expired
    await eng.prepare_key(a)  # the operator rolls back
    assert att.calls == 6
    assert await eng.evidence_for(binding(), a)  # a is current again, served
    assert att.calls == 6
    await eng.close()


async def test_a_retired_key_stays_refused_after_later_reloads() -> None:
    """Its expired epoch is dropped at the next reload, but the key is remembered: a late
    connection on it is refused, not served a new quote for it."""
    now = [3_000_000.0]
    att = Recording()
    new = ec.generate_private_key(ec.SECP256R1())
    eng = EvidenceEngine(att, Tier.CACHED, aik_key=AIK, epoch_seconds=100, clock=lambda: now[0])
    await eng.start()
    await eng.prepare_key(new)
    now[0] += 150
    await eng.prepare_key(new)  # a second reload (same certificate) once AIK's epoch expired
    quotes = att.calls
    with pytest.raises(AttestationUnavailable, match="a reload replaced the server key"):
        await eng.evidence_for(binding(), AIK)
    await asyncio.sleep(0)
    assert att.calls == quotes
    await eng.close()


class _NotEvidence(Recording):
    """Returns something that is not Evidence once (an attester bug), then works."""

    def __init__(self) -> None:
        super().__init__()
        self.bad = True

    async def attest(self, b: Binding) -> Evidence:
        if self.bad:
            self.bad = False
            return None  # type: ignore[return-value]
        return await super().attest(b)


@pytest.mark.parametrize("tier", [Tier.STRICT, Tier.BATCHED, Tier.CACHED])
async def test_an_attester_that_returns_no_evidence_fails_that_quote(tier: Tier) -> None:
    eng = EvidenceEngine(_NotEvidence(), tier, aik_key=AIK)
    first = eng.start() if tier is Tier.CACHED else eng.evidence_for(binding())
    with pytest.raises(AttestationUnavailable, match="returned NoneType, not Evidence"):
        await asyncio.wait_for(first, 5)
    if tier is Tier.CACHED:
        await eng.start()  # a start quotes again at once (connections would wait out a back-off)
    b = binding()
    a = appraise(await asyncio.wait_for(eng.evidence_for(b), 5), b)
    assert a.passed, a.first_failure
    await eng.close()


class _HooksThatFail:
    """Engine hooks that raise every time (a metrics bug)."""

    def batch(self, n: int) -> None:
        raise RuntimeError("hook bug")

    def quote(self, attester: str, seconds: float, ok: bool) -> None:
        raise RuntimeError("hook bug")

    def queue_depth(self, n: int) -> None:
        raise RuntimeError("hook bug")


@pytest.mark.parametrize("tier", [Tier.STRICT, Tier.BATCHED, Tier.CACHED])
async def test_a_failing_metrics_hook_fails_no_connection(
    tier: Tier, caplog: pytest.LogCaptureFixture
) -> None:
    eng = EvidenceEngine(Recording(), tier, aik_key=AIK, hooks=_HooksThatFail())  # type: ignore[arg-type]
    b = binding()
    with caplog.at_level(logging.ERROR, logger="atls_proxy"):
        a = appraise(await asyncio.wait_for(eng.evidence_for(b, AIK), 5), b)
    assert a.passed, a.first_failure
    assert "metrics hook" in caplog.text
    await eng.close()


async def test_a_batch_that_fails_unexpectedly_is_answered_and_batching_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real, failed = merkle.build, []

    def build_fails_once(hash_name: str, binders: Any) -> Any:
        if not failed:
            failed.append(True)
            raise RuntimeError("a bug outside the TEE")
        return real(hash_name, binders)

    monkeypatch.setattr(engine_module.merkle, "build", build_fails_once)
    eng = EvidenceEngine(Recording(), Tier.BATCHED)
    first = await asyncio.wait_for(
        asyncio.gather(*(eng.evidence_for(binding()) for _ in range(3)), return_exceptions=True),
        5,
    )
    assert all(isinstance(r, AttestationUnavailable) for r in first), first
    assert "evidence engine error: RuntimeError" in str(first[0])
    b = binding()
    a = appraise(await asyncio.wait_for(eng.evidence_for(b), 5), b)
    assert a.passed, a.first_failure
    await eng.close()


async def test_a_retired_keys_refresh_under_way_at_the_reload_is_awaited_not_refused() -> None:
    """A refresh of the old key that the reload found under way is that key's last epoch: a late
    connection whose old epoch has expired waits for it (and no further quote is made)."""
    now = [3_000_000.0]
    att = Recording(0.1)
    new = ec.generate_private_key(ec.SECP256R1())
    eng = EvidenceEngine(att, Tier.CACHED, aik_key=AIK, epoch_seconds=100, clock=lambda: now[0])
    await eng.start()  # AIK's epochs [0, 100)
    now[0] += 85  # past their refresh point
    reload = asyncio.ensure_future(eng.prepare_key(new))
    while att.calls < 4:  # the reload's second quote is under way
        await asyncio.sleep(0.01)
    await eng.evidence_for(binding(), AIK)  # served, and starts AIK's refresh behind the reload
    await reload  # AIK retired, its refresh still to run
    now[0] += 16  # AIK's first epoch has expired
    b = binding()
    cmw = await asyncio.wait_for(eng.evidence_for(b, AIK), 5)
    a = appraise(cmw, b, now=now[0])
    assert a.passed, a.first_failure
    assert att.calls == 5
    await eng.close()


async def test_the_retired_keys_remembered_are_bounded() -> None:
    att = Recording()
    eng = EvidenceEngine(att, Tier.CACHED, aik_key=AIK, epoch_seconds=100)
    await eng.start()
    for _ in range(engine_module.RETIRED_KEPT):  # a reload a day for a month, say
        await eng.prepare_key(ec.generate_private_key(ec.SECP256R1()))
    assert len(eng._retired) == engine_module.RETIRED_KEPT
    assert len(eng._epochs) <= engine_module.RETIRED_KEPT + 2
    await eng.close()


def test_a_proof_longer_than_the_tree_is_deep_is_refused() -> None:
    # RFC 9162 §2.1.3.2: the path ends where the tree does. An extra hash (for any leaf of any
    # tree shape) is a malformed proof, not a different root to compare.
    for n in (1, 2, 3, 5, 8):
        bs = [os.urandom(32) for _ in range(n)]
        _, proofs = merkle.build("sha256", bs)
        for b, proof in zip(bs, proofs, strict=True):
            longer = replace(proof, path=(*proof.path, os.urandom(32)))
            with pytest.raises(DecodeError, match="longer than the tree is deep"):
                merkle.root_from_proof("sha256", b, longer)


async def test_a_batched_quote_covers_at_most_max_tree_requests() -> None:
    # Tree building and proof hand-out run on the event loop: a quote takes at most MAX_TREE
    # leaves (the rest wait for the next), so one busy round cannot stall every connection.
    att = Recording(0.01)
    eng = EvidenceEngine(att, Tier.BATCHED, max_waiters=10_000)
    n = 2 * engine_module.MAX_TREE + 5
    bs = [binding() for _ in range(n)]
    cmws = await asyncio.gather(*(eng.evidence_for(b) for b in bs))
    assert eng.stats.max_batch_size <= engine_module.MAX_TREE and att.calls >= 3
    assert att.max_inflight == 1
    for i in (0, n // 2, n - 1):  # every one still verifies its own binder
        assert appraise(cmws[i], bs[i]).passed


@pytest.mark.parametrize("tier", [Tier.STRICT, Tier.BATCHED])
async def test_no_quote_after_close(tier: Tier) -> None:
    # Requests queued behind the gate when the engine closes, and any that come later, are
    # refused (the module docstring: they get no data); no quote starts for them.
    att = Recording(0.05)
    eng = EvidenceEngine(att, tier)
    first = asyncio.ensure_future(eng.evidence_for(binding()))
    await asyncio.sleep(0.01)  # its quote is under way
    queued = [asyncio.ensure_future(eng.evidence_for(binding())) for _ in range(3)]
    await asyncio.sleep(0.005)
    calls = att.calls
    await eng.close()
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    assert all(isinstance(r, AttestationUnavailable) for r in results[1:]), results
    with pytest.raises(AttestationUnavailable, match="closed"):
        await eng.evidence_for(binding())
    assert att.calls == calls


async def test_close_passes_its_callers_cancellation_on() -> None:
    class SlowToStop(Recording):
        async def attest(self, b: Binding) -> Evidence:
            try:
                return await super().attest(b)
            finally:
                await asyncio.sleep(0.3)  # a TEE call that takes a moment to give up

    eng = EvidenceEngine(SlowToStop(3600), Tier.BATCHED)
    waiting = asyncio.ensure_future(eng.evidence_for(binding()))
    await asyncio.sleep(0.02)
    closer = asyncio.ensure_future(eng.close())
    await asyncio.sleep(0.05)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    with contextlib.suppress(BaseException):
        await waiting
