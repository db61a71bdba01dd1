"""The TPM attester against a real software TPM (swtpm), appraised by the project's TPM verifier.

Covers: the AK exported by the real CLI (`atls-proxy tpm-ak`: primary, persistent --create,
persistent load, errors); quote evidence from ``TpmAttester`` appraised with a policy trusting that
AK (passes, extraData = ``qualifying_data(binding)``); another connection's binder or AIK hash,
a PCR policy mismatch and a policy refusing software TPMs (each fails its own check); the engine in
the strict, batched and cached tiers through ``appraise_cmw``; the PCR read/quote race (retried,
then refused, the session kept); the TPM vanishing mid-run (AttestationUnavailable, then
recovery); recovery when creating the AK takes longer than a quote's timeout (a timed-out quote, a
TPM error and a lost connection; the reopen under open_timeout); a TPM that never answers (quote
and open time out, close and the exit-time close stay bounded, the factory reports a
configuration error); a persistent AK with a SHA-1 scheme (refused at open);
``check-config`` with a dead and a live TPM; and a full ``serve`` (kind = "tpm") + ``attest`` run
through the real CLI.

Skipped without swtpm / tpm2-pytss, failed instead when ATLS_PROXY_REQUIRE_TOOLS=1
(tests/support/swtpm.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.attest import tpm as tpm_module
from atls_proxy.attest.engine import EvidenceEngine, Tier
from atls_proxy.attest.factory import build_attester
from atls_proxy.attest.tpm import TpmAttester, read_ak
from atls_proxy.errors import AttestationUnavailable, ConfigError
from atls_proxy.expat import schemes
from atls_proxy.expat.binding import Binding
from atls_proxy.expat.cmw import CMWCollection, CMWRecord, decode_cmw, encode_cmw
from atls_proxy.expat.tiers import (
    AIK_BINDING_MEDIA_TYPE,
    aik_binding_content,
    encode_aik_binding,
    epoch_digest,
)
from atls_proxy.ops.config import AttesterConfig, TpmAttesterConfig
from atls_proxy.ops.tpm_files import load_tpm_trust
from atls_proxy.verify.appraise import appraise_cmw
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.tpm import (
    MEDIA_TYPE,
    TpmPolicy,
    TpmTrust,
    TpmVerifier,
    decode_evidence,
    parse_quote,
    qualifying_data,
)
from tests.integration.conftest import dev_init, start_backend, start_server
from tests.support.freshness import ALL_TIERS
from tests.support.procs import Procs, free_port, procs, run_cli
from tests.support.swtpm import Swtpm, free_port_pair, require_swtpm, start_swtpm

pytestmark = [pytest.mark.tpm, pytest.mark.integration]

AIK = ec.generate_private_key(ec.SECP256R1())
AIK_HASH = hashlib.sha256(
    AIK.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
).digest()


def binding(hash_name: str = "sha256") -> Binding:
    n = 32 if hash_name == "sha256" else 48
    return Binding(hash_name, os.urandom(n), hashlib.new(hash_name, b"aik").digest())


def failed(a: Appraisal) -> list[str]:
    return [c.name for c in a.checks if not c.passed]


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(autouse=True)
def _tools() -> None:
    require_swtpm()  # every test here needs tpm2-pytss, most of them swtpm too


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    with start_swtpm(tmp_path_factory.mktemp("swtpm")) as t:
        yield t


@pytest.fixture(scope="module")
def ak_dir(tpm: Swtpm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default AK (ECC primary, endorsement hierarchy) exported by the real CLI."""
    folder = tmp_path_factory.mktemp("trust")
    res = run_cli("tpm-ak", "--tcti", tpm.tcti, "--out", str(folder / "ak.pem"))
    assert res.returncode == 0, res.stderr
    assert "ecc-p256 AK (endorsement primary, read)" in res.stdout
    return folder


@pytest.fixture(scope="module")
def trust(ak_dir: Path) -> TpmTrust:
    return load_tpm_trust(None, ak_dir)  # the [trust.tpm] certs folder path


@pytest.fixture
def attester(tpm: Swtpm) -> Iterator[TpmAttester]:
    a = TpmAttester(tpm.tcti)
    a.open()
    yield a
    a.close()


def verifier(trust: TpmTrust, **policy: Any) -> TpmVerifier:
    return TpmVerifier(TpmPolicy(**{"allow_software_tpm": True, **policy}), trust, clock=now)


# --- AK export through the CLI --------------------------------------------------------------------


def test_tpm_ak_cli_persistent_create_load_and_errors(
    tpm: Swtpm, ak_dir: Path, tmp_path: Path
) -> None:
    primary = (ak_dir / "ak.pem").read_bytes()
    key = serialization.load_pem_public_key(primary)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    # The primary AK is derived from the seed: a second export is the same key.
    again = tmp_path / "again.pem"
    assert run_cli("tpm-ak", "--tcti", tpm.tcti, "--out", str(again)).returncode == 0
    assert again.read_bytes() == primary

    handle = "0x81010010"
    res = run_cli("tpm-ak", "--tcti", tpm.tcti, "--handle", handle, "--out", str(tmp_path / "x"))
    assert res.returncode == 1 and "no key at persistent handle 0x81010010" in res.stderr
    assert "--create" in res.stderr and "Traceback" not in res.stderr
    created = tmp_path / "persistent.pem"
    res = run_cli(
        "tpm-ak", "--tcti", tpm.tcti, "--handle", handle, "--create", "--out", str(created)
    )
    assert res.returncode == 0, res.stderr
    assert "persistent handle 0x81010010, created" in res.stdout
    loaded = tmp_path / "loaded.pem"
    res = run_cli("tpm-ak", "--tcti", tpm.tcti, "--handle", handle, "--out", str(loaded))
    assert res.returncode == 0 and "persistent handle 0x81010010, read" in res.stdout
    assert loaded.read_bytes() == created.read_bytes() == primary  # same template, same seed

    res = run_cli("tpm-ak", "--tcti", tpm.tcti, "--algorithm", "rsa-2048", "--out", str(loaded))
    assert res.returncode == 0 and "rsa-2048 AK" in res.stdout
    res = run_cli("tpm-ak", "--tcti", tpm.tcti, "--handle", "0x80000001", "--out", str(loaded))
    assert res.returncode == 2 and "owner persistent handle" in res.stderr
    dead = f"swtpm:host=127.0.0.1,port={free_port()}"
    res = run_cli("tpm-ak", "--tcti", dead, "--out", str(loaded))
    assert res.returncode == 1 and "is the TPM reachable" in res.stderr


def test_a_key_at_the_handle_that_is_not_an_ak_is_refused(tpm: Swtpm) -> None:
    import tpm2_pytss as p  # type: ignore[import-untyped,import-not-found,unused-ignore]

    template = p.TPM2B_PUBLIC.parse(
        "rsa2048", objectAttributes=p.TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS
    )  # a storage (decrypt) key, as tpm2_createprimary makes by default
    with p.ESAPI(tpm.tcti) as esapi:
        tr, *_ = esapi.create_primary(None, template, p.ESYS_TR.OWNER)
        esapi.evict_control(p.ESYS_TR.OWNER, tr, 0x81010012)
        esapi.flush_context(tr)
    for create in (False, True):  # never replaced, not even with create_ak
        with pytest.raises(AttestationUnavailable, match="not an attestation key"):
            read_ak(tpm.tcti, ak_handle=0x81010012, create_ak=create, ak_algorithm="rsa-2048")


def test_a_persistent_ak_with_a_sha1_scheme_is_refused(tpm: Swtpm) -> None:
    """Verifiers refuse SHA-1 quote signatures (policy default), so such an AK fails at open."""
    import tpm2_pytss as p  # type: ignore[import-untyped,import-not-found,unused-ignore]

    handle = 0x81010013
    template = tpm_module._ak_template("ecc-p256")  # our AK, but ECDSA with SHA-1
    template.publicArea.parameters.eccDetail.scheme.details.ecdsa.hashAlg = p.TPM2_ALG.SHA1
    with p.ESAPI(tpm.tcti) as esapi:
        tr, *_ = esapi.create_primary(None, template, p.ESYS_TR.OWNER)
        esapi.evict_control(p.ESYS_TR.OWNER, tr, handle)
        esapi.flush_context(tr)
    try:
        for create in (False, True):  # never replaced, not even with create_ak
            with pytest.raises(AttestationUnavailable, match=r"ECDSA/sha1; verifiers accept"):
                read_ak(tpm.tcti, ak_handle=handle, create_ak=create)
    finally:
        with p.ESAPI(tpm.tcti) as esapi:
            esapi.evict_control(p.ESYS_TR.OWNER, esapi.tr_from_tpmpublic(handle), handle)


# --- one quote, appraised ---------------------------------------------------------------------------


async def test_quote_passes_with_the_trusted_ak_and_carries_the_binding(
    attester: TpmAttester, trust: TpmTrust
) -> None:
    for hash_name in ("sha256", "sha384"):
        b = binding(hash_name)
        ev = await attester.attest(b)
        assert ev.media_type == MEDIA_TYPE
        decoded = decode_evidence(ev.data)
        assert decoded.pcr_bank == "sha256" and sorted(decoded.pcrs) == list(range(8))
        assert attester.ak is not None and decoded.ak_spki == attester.ak.spki
        assert parse_quote(decoded.attest).extra_data == qualifying_data(b)
        a = verifier(trust).appraise(MEDIA_TYPE, ev.data, b, time.time())
        assert a.passed, a.first_failure
        report = next(c for c in a.checks if c.name == "tpm.report-data")
        assert report.observed == qualifying_data(b).hex()
        assert "libtpms" in next(c for c in a.checks if c.name == "tpm.firmware").detail


async def test_another_connections_binder_or_aik_fails_report_data(
    attester: TpmAttester, trust: TpmTrust
) -> None:
    b = binding()
    ev = await attester.attest(b)
    v = verifier(trust)
    for other in (
        Binding("sha256", os.urandom(32), b.aik_hash),  # another connection's binder
        Binding("sha256", b.binder, os.urandom(32)),  # the same binder under another TLS key
    ):
        assert failed(v.appraise(MEDIA_TYPE, ev.data, other, time.time())) == ["tpm.report-data"]


async def test_pcr_policy(attester: TpmAttester, trust: TpmTrust) -> None:
    b = binding()
    ev = await attester.attest(b)
    values = decode_evidence(ev.data).pcrs
    good = verifier(trust, pcrs={0: frozenset({values[0]}), 7: frozenset({values[7]})})
    assert good.appraise(MEDIA_TYPE, ev.data, b, time.time()).passed
    bad = verifier(trust, pcrs={7: frozenset({hashlib.sha256(b"other").digest()})})
    assert failed(bad.appraise(MEDIA_TYPE, ev.data, b, time.time())) == ["tpm.register.pcr7"]
    # A PCR the attester does not quote is "not selected by the quote".
    unquoted = verifier(trust, pcrs={9: frozenset({bytes(32)})})
    assert failed(unquoted.appraise(MEDIA_TYPE, ev.data, b, time.time())) == ["tpm.register.pcr9"]


async def test_default_policy_refuses_the_software_tpm(
    attester: TpmAttester, trust: TpmTrust
) -> None:
    b = binding()
    ev = await attester.attest(b)
    v = TpmVerifier(TpmPolicy(), trust, clock=now)
    assert failed(v.appraise(MEDIA_TYPE, ev.data, b, time.time())) == ["tpm.firmware"]


async def test_untrusted_ak_fails(tpm: Swtpm, trust: TpmTrust) -> None:
    rsa_attester = TpmAttester(tpm.tcti, ak_algorithm="rsa-2048", pcrs=[0, 16, 23])
    try:
        b = binding()
        ev = await rsa_attester.attest(b)  # opens on demand
        assert sorted(decode_evidence(ev.data).pcrs) == [0, 16, 23]
        assert failed(verifier(trust).appraise(MEDIA_TYPE, ev.data, b, time.time())) == [
            "tpm.ak.trusted"
        ]
    finally:
        rsa_attester.close()


# --- the engine's tiers -------------------------------------------------------------------------------


@pytest.mark.parametrize("tier", [Tier.STRICT, Tier.BATCHED, Tier.CACHED])
async def test_engine_tiers_produce_cmw_the_relying_party_accepts(
    attester: TpmAttester, trust: TpmTrust, tier: Tier
) -> None:
    engine = EvidenceEngine(attester, tier, aik_key=AIK)
    try:
        await engine.start()
        bindings = [Binding("sha256", os.urandom(32), AIK_HASH) for _ in range(6)]
        cmws = await asyncio.gather(*(engine.evidence_for(b) for b in bindings))
        v = verifier(trust)
        for b, cmw in zip(bindings, cmws, strict=True):
            (a,) = appraise_cmw(
                cmw, b, [v], time.time(), freshness=ALL_TIERS, aik_public_key=AIK.public_key()
            )
            assert a.passed, a.first_failure
        other = Binding("sha256", os.urandom(32), AIK_HASH)
        (a,) = appraise_cmw(
            cmws[0], other, [v], time.time(), freshness=ALL_TIERS, aik_public_key=AIK.public_key()
        )
        assert not a.passed
        if tier is Tier.STRICT:
            assert engine.stats.quotes == 6
        elif tier is Tier.CACHED:
            # One epoch quote per hash at start-up, none per connection.
            assert engine.stats.quotes == 2
    finally:
        await engine.close()


async def test_cached_epoch_quote_does_not_serve_another_tls_key(
    attester: TpmAttester, trust: TpmTrust
) -> None:
    """The relay the qualifying data prevents: a server with another TLS key replays our epoch
    quote and signs the AIK binding with its own key. The AIK hash in the quote refuses it."""
    engine = EvidenceEngine(attester, Tier.CACHED, aik_key=AIK)
    try:
        await engine.start()
        legit = decode_cmw(await engine.evidence_for(Binding("sha256", os.urandom(32), AIK_HASH)))
    finally:
        await engine.close()
    assert isinstance(legit, CMWCollection)
    evidence, epoch = legit.members["evidence"], legit.members["epoch"]
    assert isinstance(epoch, CMWRecord)
    mallory = ec.generate_private_key(ec.SECP256R1())
    mallory_hash = hashlib.sha256(
        mallory.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).digest()
    b = Binding("sha256", os.urandom(32), mallory_hash)
    scheme = schemes.schemes_for_key(mallory)[0]
    digest = epoch_digest("sha256", epoch.value)
    signature = schemes.sign(mallory, scheme, aik_binding_content(b.binder, digest))
    forged = CMWCollection(
        {
            "evidence": evidence,
            "epoch": epoch,
            "binding": CMWRecord(AIK_BINDING_MEDIA_TYPE, encode_aik_binding(scheme, signature)),
        }
    )
    v = verifier(trust)
    (a,) = appraise_cmw(
        encode_cmw(forged),
        b,
        [v],
        time.time(),
        freshness=ALL_TIERS,
        aik_public_key=mallory.public_key(),
    )
    assert "tpm.report-data" in failed(a)
    assert "evidence.aik-binding" not in failed(a)  # the forger's own signature is fine


# --- races and failures -----------------------------------------------------------------------------


def _extend(tcti: str, pcr: int) -> None:
    import tpm2_pytss as p  # type: ignore[import-untyped,import-not-found,unused-ignore]

    with p.ESAPI(tcti) as esapi:  # TPM2_PCR_Event: extends every bank with the event's digest
        esapi.pcr_event(getattr(p.ESYS_TR, f"PCR{pcr}"), os.urandom(16))


async def test_pcr_extended_between_read_and_quote_is_retried(
    tpm: Swtpm, attester: TpmAttester, trust: TpmTrust
) -> None:
    session = attester._session
    real_read = session._read_pcrs
    extends = {"left": 1}

    def racing_read() -> dict[int, bytes] | None:
        values = real_read()
        if extends["left"] > 0:
            extends["left"] -= 1
            _extend(tpm.tcti, 7)  # lands after the read, before the quote
        return values

    session._read_pcrs = racing_read  # type: ignore[method-assign]
    opens = attester.stats.opens
    b = binding()
    ev = await attester.attest(b)
    assert attester.stats.pcr_races == 1
    assert verifier(trust).appraise(MEDIA_TYPE, ev.data, b, time.time()).passed

    extends["left"] = 100  # a PCR that moves on every attempt: refused, never sent
    with pytest.raises(AttestationUnavailable, match="PCRs kept changing"):
        await attester.attest(binding())
    session._read_pcrs = real_read  # type: ignore[method-assign]
    ev = await attester.attest(b)  # works again, with the same session and AK
    assert verifier(trust).appraise(MEDIA_TYPE, ev.data, b, time.time()).passed
    assert attester.stats.opens == opens  # a PCR race is no reason to reopen


async def test_tpm_vanishing_mid_run_fails_closed_and_recovers(
    tmp_path: Path, trust: TpmTrust
) -> None:
    with start_swtpm(tmp_path) as own:
        a = TpmAttester(own.tcti)
        engine = EvidenceEngine(a, Tier.STRICT)
        try:
            first = a.open()
            assert (await engine.evidence_for(binding()))[:1]
            own.kill()
            for _ in range(2):
                with pytest.raises(AttestationUnavailable, match="is the TPM reachable"):
                    await engine.evidence_for(binding())
            assert a.ak is None  # the broken session was dropped
            own.start()  # the same state: the same seed, the same primary AK
            ev = await a.attest(binding())
            assert a.ak is not None and a.ak.spki == first.spki
            assert decode_evidence(ev.data).ak_spki == first.spki
        finally:
            await engine.close()
            a.close()


async def _tpm_idle(a: TpmAttester) -> None:
    """Wait (at most 10 s) until no TPM operation holds the attester's TPM lock."""

    def wait() -> None:
        assert a._tpm_lock.acquire(timeout=10), "the TPM lock stayed busy"
        a._tpm_lock.release()

    await asyncio.to_thread(wait)
    await asyncio.sleep(0.05)  # let the abandoned call's outcome reach the event loop


async def test_recovers_when_creating_the_ak_takes_longer_than_a_quote_timeout(
    tpm: Swtpm, trust: TpmTrust, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating the AK (TPM2_CreatePrimary of a primary AK, tens of seconds for RSA on some hardware
    TPMs; simulated by a sleep after the real command) takes longer than a quote's `timeout`. A
    quote that times out, a TPM error code and a lost connection each fail one quote; the attester
    then recovers: the timed-out quote's thread completed and leaves the session as it was, a TPM
    error keeps the session and its AK, and only the lost connection reopens it, under
    `open_timeout` (re-creating the AK once, not on every later quote)."""
    create_seconds = 1.0
    creates: list[float] = []
    real_load = tpm_module._TpmSession._load_or_create_ak

    def slow_load(self: Any) -> Any:
        ak = real_load(self)
        time.sleep(create_seconds)
        creates.append(time.monotonic())
        return ak

    monkeypatch.setattr(tpm_module._TpmSession, "_load_or_create_ak", slow_load)
    p = tpm_module._pytss()
    faults: list[Callable[[], None]] = []

    def inject(session: Any) -> None:
        real_attempt = session._attempt

        def attempt(ak: Any, qualifying: bytes) -> Any:
            if faults:
                faults.pop()()
            return real_attempt(ak, qualifying)

        session._attempt = attempt

    def slow_quote() -> None:
        time.sleep(0.8)  # a busy TPM or resource manager: the caller gives up at 0.5 s

    def tpm_error() -> None:
        raise p.TSS2_Exception(0x904)  # TPM_RC_MEMORY: a command error, the connection is fine

    def connection_lost() -> None:
        raise p.TSS2_Exception(0xA000A)  # TSS2_TCTI_RC_IO_ERROR

    v = verifier(trust)

    async def quotes_pass(n: int) -> None:
        for _ in range(n):
            b = binding()
            ev = await a.attest(b)
            assert v.appraise(MEDIA_TYPE, ev.data, b, time.time()).passed

    a = TpmAttester(tpm.tcti, timeout=0.5, open_timeout=10)
    inject(a._session)
    try:
        a.open()
        assert len(creates) == 1

        faults.append(slow_quote)
        with pytest.raises(AttestationUnavailable, match=r"no quote within 0.5 s \(reading PCRs\)"):
            await a.attest(binding())
        await _tpm_idle(a)  # the abandoned quote completes, successfully
        await quotes_pass(3)
        assert len(creates) == 1 and a.stats.opens == 1

        faults.append(tpm_error)
        with pytest.raises(AttestationUnavailable, match="TSS rc 0x00000904"):
            await a.attest(binding())
        await quotes_pass(3)
        assert len(creates) == 1 and a.stats.opens == 1

        faults.append(connection_lost)
        with pytest.raises(AttestationUnavailable, match="is the TPM reachable"):
            await a.attest(binding())
        t0 = time.monotonic()
        await quotes_pass(1)  # reopens: re-creating the AK takes longer than `timeout`
        assert time.monotonic() - t0 >= create_seconds
        await quotes_pass(3)
        assert len(creates) == 2 and a.stats.opens == 2
        assert a.stats.timeouts == 1
    finally:
        a.close()

    # A (re)open that outlasts open_timeout names its step; the abandoned thread's success counts.
    b2 = TpmAttester(tpm.tcti, timeout=0.5, open_timeout=0.5)
    try:
        with pytest.raises(AttestationUnavailable) as e:
            await b2.attest(binding())
        assert "no answer within 0.5 s while opening the TPM" in str(e.value)
        assert "step: creating the AK" in str(e.value)
        await _tpm_idle(b2)
        b = binding()
        ev = await b2.attest(b)
        assert v.appraise(MEDIA_TYPE, ev.data, b, time.time()).passed
        assert len(creates) == 3 and b2.stats.opens == 1
    finally:
        b2.close()


@pytest.fixture
def silent_tcti() -> Iterator[str]:
    """A swtpm TCTI whose server accepts connections and never answers."""
    port, ctrl = free_port_pair()  # the swtpm TCTI talks to both
    listeners = []
    for p in (port, ctrl):
        lst = socket.socket()
        lst.bind(("127.0.0.1", p))
        lst.listen(4)
        listeners.append(lst)
    held: list[socket.socket] = []

    def accept(lst: socket.socket) -> None:
        lst.settimeout(10)
        while True:
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            held.append(conn)  # never answers

    for lst in listeners:
        threading.Thread(target=accept, args=(lst,), daemon=True).start()
    try:
        yield f"swtpm:host=127.0.0.1,port={port}"
    finally:  # the stuck calls' TCTIs now fail, their threads end and release the TPM lock
        for lst in listeners:
            lst.close()
        for c in held:
            c.close()


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()``'s outcome, failing (instead of hanging the test run) when it blocks longer."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert outcome, f"still blocked after {seconds} s"
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


async def test_a_tpm_that_never_answers_times_out(
    silent_tcti: str, caplog: pytest.LogCaptureFixture
) -> None:
    a = TpmAttester(silent_tcti, timeout=0.5, open_timeout=0.5)
    t0 = time.monotonic()
    # Never opened: attest opens first, under open_timeout.
    with pytest.raises(AttestationUnavailable, match=r"no answer within 0.5 s while opening") as e:
        await a.attest(binding())
    assert "step: connecting" in str(e.value)
    assert time.monotonic() - t0 < 2
    # The stuck call still holds the TPM: the next caller waits for it, within its timeout.
    with pytest.raises(
        AttestationUnavailable,
        match=r"no quote within 0.5 s \(waiting for an abandoned TPM command",
    ):
        await a.attest(binding())
    assert a.stats.timeouts == 2
    # close waits for the TPM lock at most `timeout`, then leaves the TCTI to process exit.
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="atls_proxy.attest.tpm"):
        _within(5, a.close)
    assert time.monotonic() - t0 < 2
    assert "still running after 0.5 s; not closing the session" in caplog.text


def test_opening_a_tpm_that_never_answers_is_bounded(silent_tcti: str) -> None:
    a = TpmAttester(silent_tcti, timeout=0.5, open_timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(AttestationUnavailable) as e:
        _within(5, a.open)
    assert time.monotonic() - t0 < 3
    assert f"no answer within 0.5 s while opening the TPM via {silent_tcti!r}" in str(e.value)
    assert "step: connecting" in str(e.value)
    t0 = time.monotonic()
    _within(5, a.close)  # the abandoned open still holds the TPM lock
    assert time.monotonic() - t0 < 2
    # read_ak (atls-proxy tpm-ak) is bounded the same way, its close included.
    t0 = time.monotonic()
    with pytest.raises(AttestationUnavailable, match="while opening"):
        _within(30, lambda: read_ak(silent_tcti, open_timeout=0.5))
    assert time.monotonic() - t0 < 15  # open_timeout + close's wait (default timeout, 10 s)


def test_the_factory_reports_a_tpm_that_never_answers_as_a_configuration_error(
    silent_tcti: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What check-config and serve report (the CLI run would take OPEN_TIMEOUT_FLOOR, 60 s)."""
    monkeypatch.setattr(tpm_module, "OPEN_TIMEOUT_FLOOR", 0.5)
    cfg = AttesterConfig(kind="tpm", tpm=TpmAttesterConfig(tcti=silent_tcti, timeout=0.5))
    with pytest.raises(ConfigError) as e:
        _within(5, lambda: build_attester(cfg))
    assert e.value.key == "attester.tpm" and "while opening the TPM" in e.value.message


def test_the_exit_time_close_does_not_finalize_the_context_under_a_running_call(
    tpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    import atexit

    hooks: list[Callable[[], None]] = []
    real_register = atexit.register

    def register(fn: Callable[[], None]) -> Callable[[], None]:
        hooks.append(fn)
        return real_register(fn)

    monkeypatch.setattr(atexit, "register", register)
    monkeypatch.setattr(tpm_module, "EXIT_CLOSE_WAIT", 0.2)
    a = TpmAttester(tpm.tcti)
    try:
        a.open()
        (hook,) = hooks  # what the interpreter runs at exit
        assert a._tpm_lock.acquire(timeout=5)  # as an abandoned call still inside Esys would
        try:
            t0 = time.monotonic()
            _within(5, hook)
            assert time.monotonic() - t0 < 2
            assert a._session._esapi is not None  # not finalized under the running call
        finally:
            a._tpm_lock.release()
        _within(5, hook)  # the lock is free: it closes
        assert a._session._esapi is None and a.ak is None
    finally:
        a.close()


# --- configuration and the real CLI -------------------------------------------------------------


def _tpm_serve_config(dev: Path, tcti: str, tier: str = "strict", extra: str = "") -> Path:
    text = (dev / "serve.toml").read_text()
    head = text[: text.index("[attester]")]
    out = dev / f"serve-tpm-{tier}.toml"
    out.write_text(
        head + f'[attester]\nkind = "tpm"\ntier = "{tier}"\n\n[attester.tpm]\ntcti = "{tcti}"\n'
        "pcrs = [0, 1, 2, 3, 4, 5, 6, 7]\n" + extra
    )
    return out


def test_check_config_reports_an_unreachable_tpm(tmp_path: Path, tpm: Swtpm) -> None:
    dev = dev_init(tmp_path / "dev")
    dead = _tpm_serve_config(dev, f"swtpm:host=127.0.0.1,port={free_port()}")
    res = run_cli("check-config", str(dead))
    assert res.returncode == 2, res.stdout
    assert "configuration error: attester.tpm: tpm:" in res.stderr
    assert "is the TPM reachable" in res.stderr and "Traceback" not in res.stderr
    live = _tpm_serve_config(dev, tpm.tcti, extra="ak_handle = 0x81010011\n")
    res = run_cli("check-config", str(live))
    assert res.returncode == 2 and "no key at persistent handle 0x81010011" in res.stderr
    live = _tpm_serve_config(dev, tpm.tcti, extra="ak_handle = 0x81010011\ncreate_ak = true\n")
    res = run_cli("check-config", str(live))
    assert res.returncode == 0, res.stderr


@pytest.fixture
def ps(tmp_path: Path) -> Iterator[Procs]:
    with procs(tmp_path) as p:
        yield p


def test_serve_with_the_tpm_attester_end_to_end(
    tmp_path: Path, tpm: Swtpm, ak_dir: Path, ps: Procs
) -> None:
    dev = dev_init(tmp_path / "dev")
    (dev / "tpm-aks").mkdir()
    (dev / "tpm-aks" / "ak.pem").write_bytes((ak_dir / "ak.pem").read_bytes())
    policy = dev / "policy.toml"
    base = policy.read_text()
    policy.write_text(
        base + '\n[tpm]\nallow_software_tpm = true\n\n[trust.tpm]\ncerts = "tpm-aks"\n'
    )
    www = tmp_path / "www"
    www.mkdir()
    _, bport = start_backend(ps, www)
    for tier in ("strict", "cached"):
        srv, port = start_server(ps, _tpm_serve_config(dev, tpm.tcti, tier), bport)
        res = run_cli("attest", f"127.0.0.1:{port}", "--config", str(dev / "connect.toml"))
        assert res.returncode == 0, res.stdout + srv.output()
        assert "tpm.report-data" in res.stdout and "tpm.signature.quote" in res.stdout
        srv.stop()
    # The software TPM is refused by a policy that does not opt in.
    policy.write_text(base + '\n[tpm]\n\n[trust.tpm]\ncerts = "tpm-aks"\n')
    srv, port = start_server(ps, _tpm_serve_config(dev, tpm.tcti), bport)
    res = run_cli("attest", f"127.0.0.1:{port}", "--config", str(dev / "connect.toml"))
    assert res.returncode == 1 and "tpm.firmware" in res.stdout
    assert "Traceback" not in srv.output()


@pytest.mark.parametrize(
    ("rc", "busy"),
    [
        (0x922, True),  # TPM_RC_RETRY from the TPM
        (0xB0922, True),  # the same, passed on by a resource manager (tabrmd: layer 11)
        (0xB0908, True),  # TPM_RC_YIELDED through tabrmd
        (0x70922, False),  # another layer's code that happens to end in 0x922 is not the TPM's
        (0x904, False),  # TPM_RC_MEMORY: not a "try again"
    ],
)
def test_tpm_warnings_through_a_resource_manager_are_recognised(rc: int, busy: bool) -> None:
    exc = tpm_module._pytss().TSS2_Exception(rc)
    assert tpm_module._is_busy(exc) is busy


def test_tpm_error_hints_through_a_resource_manager() -> None:
    p = tpm_module._pytss()
    for rc in (0x902, 0xB0902):  # TPM_RC_OBJECT_MEMORY, direct and through tabrmd
        assert "no free object slot" in tpm_module._describe(p.TSS2_Exception(rc), "quote", "t")


async def test_an_unexpected_exception_fails_one_quote_and_the_session_is_reopened(
    tpm: Swtpm, trust: TpmTrust, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a TSS error: the session's state is unknown, so the quote fails with the TPM's
    message form and the next one reopens the session (module docstring, Failures)."""
    real = tpm_module._TpmSession._attempt
    raised: list[int] = []

    def attempt(self: Any, ak: Any, qualifying: bytes) -> Any:
        if not raised:
            raised.append(1)
            raise KeyError("boom")
        return real(self, ak, qualifying)

    monkeypatch.setattr(tpm_module._TpmSession, "_attempt", attempt)
    a = TpmAttester(tpm.tcti)
    try:
        a.open()
        opens = a.stats.opens
        with pytest.raises(AttestationUnavailable, match="KeyError"):
            await a.attest(binding())
        b = binding()
        ev = await a.attest(b)
        assert verifier(trust).appraise(MEDIA_TYPE, ev.data, b, time.time()).passed
        assert a.stats.opens == opens + 1
    finally:
        a.close()


def test_an_unexpected_exception_while_opening_leaves_nothing_open(
    tpm: Swtpm, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(self: Any) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(tpm_module._TpmSession, "_check_capabilities", fail)
    a = TpmAttester(tpm.tcti)
    try:
        with pytest.raises(AttestationUnavailable, match="KeyError"):
            a.open()
        assert a._session._esapi is None and a._session.ak is None
    finally:
        a.close()
