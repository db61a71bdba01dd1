"""CMW demultiplexing into verifiers, and the report's verdict logic."""

from __future__ import annotations

import os
import time

from atls_proxy.expat import merkle
from atls_proxy.expat.binding import Binding
from atls_proxy.expat.cmw import CMWCollection, CMWRecord, encode_cmw
from atls_proxy.report import render_text
from atls_proxy.verify.appraise import AppraisalCache, appraise_cmw
from atls_proxy.verify.result import Appraisal, AttestationReport, Check, Tier

B = Binding("sha256", os.urandom(32), os.urandom(32))


class Echo:
    """A verifier that passes exactly when the evidence equals the binder."""

    def accepts(self, media_type: str) -> bool:
        return media_type == "application/x-echo"

    def appraise(
        self, media_type: str, evidence: bytes, expected: Binding, now: float
    ) -> Appraisal:
        return Appraisal("echo", [Check("evidence.binder", evidence == expected.binder)])


def test_each_record_is_appraised() -> None:
    cmw = encode_cmw(
        CMWCollection(
            {
                "a": CMWRecord("application/x-echo", B.binder, 4),
                "b": CMWRecord("application/x-echo", b"no", 4),
            }
        )
    )
    a, b = appraise_cmw(cmw, B, [Echo()], 0)
    assert a.passed and not b.passed
    assert [c.name for c in a.checks[:2]] == ["freshness.tier", "cmw.media-type"]


def test_unknown_type_and_non_evidence_fail() -> None:
    (a,) = appraise_cmw(encode_cmw(CMWRecord("application/other", b"x", 4)), B, [Echo()], 0)
    assert not a.passed and a.checks[1].name == "cmw.media-type"
    (b,) = appraise_cmw(encode_cmw(CMWRecord("application/x-echo", B.binder, 8)), B, [Echo()], 0)
    assert not b.passed and b.checks[1].name == "cmw.type"
    (c,) = appraise_cmw(b"\x00", B, [Echo()], 0)
    assert c.checks[0].name == "cmw.decode"


def test_report_verdicts() -> None:
    r = AttestationReport("h:1", [Check("tls.handshake", True)])
    assert (
        not r.passed
        and r.first_failure is not None
        and r.first_failure.name == "evidence.appraised"
    )
    r.appraisals = appraise_cmw(
        encode_cmw(CMWRecord("application/x-echo", B.binder, 4)), B, [Echo()], 0
    )
    assert r.passed and r.to_json()["ear.status"] == "affirming"
    assert "Verdict: PASS" in render_text(r)
    r.checks.append(Check("tls.hostname", False, "mismatch", observed="a", expected="b"))
    assert not r.passed and r.to_json()["atls.failed-check"]["name"] == "tls.hostname"
    text = render_text(r)
    assert "Verdict: FAIL at tls.hostname" in text and "observed: a" in text


def test_the_text_report_escapes_what_the_server_chose() -> None:
    # A hostile server's media type (and an ERROR reason) would otherwise reach the terminal raw:
    # clear the screen, print a green "Verdict: PASS", conceal the real verdict.
    evil = "x\x1b[2J\x1b[H\x1b[32mVerdict: PASS\x1b[0m\n\x1b[8m"
    r = AttestationReport("h:1", [Check("tls.handshake", True)])
    r.appraisals = appraise_cmw(encode_cmw(CMWRecord(evil, b"v", 4)), B, [Echo()], 0)
    r.checks.append(Check("expat.server-error", False, "server error 2: \x1b[8mhidden\r\nVerdict"))
    text = render_text(r)
    assert not r.passed and "\x1b" not in text and "\r" not in text
    assert "\\x1b[2J" in text and "hidden\\r\\nVerdict" in text
    # Only the report's own line breaks: no line starts with a forged verdict.
    assert [ln for ln in text.splitlines() if ln.startswith("Verdict")] == [
        "Verdict: FAIL at expat.server-error: server error 2: \\x1b[8mhidden\\r\\nVerdict"
    ]


def test_ear_status_is_never_better_than_the_worst_claim() -> None:
    # draft-ietf-rats-ear: a submod's status never better than its vector's worst claim, the
    # overall status never better than the worst submod; a failed check is contraindicated.
    def appraisal(tv: dict[str, int], ok: bool = True) -> Appraisal:
        return Appraisal("x", [Check("c", ok)], trust_vector=tv)

    assert appraisal({}).tier is Tier.AFFIRMING
    assert appraisal({"instance-identity": 2, "hardware": 32}).tier is Tier.WARNING
    assert appraisal({"hardware": 96}).tier is Tier.CONTRAINDICATED
    assert appraisal({"hardware": 0}).tier is Tier.AFFIRMING  # "none" is no claim
    assert appraisal({"hardware": -33}).tier is Tier.WARNING
    assert appraisal({"hardware": 2}, ok=False).tier is Tier.CONTRAINDICATED
    r = AttestationReport("h:1", [Check("tls.handshake", True)])
    r.appraisals = [appraisal({"hardware": 2}), appraisal({"hardware": 32})]
    doc = r.to_json()
    assert r.passed and doc["ear.status"] == "warning" and doc["atls.passed"] is True
    assert [m["ear.status"] for m in doc["submods"].values()] == [
        "affirming",
        "affirming",
        "warning",
    ]
    assert "Verdict: PASS, every check passed (status warning)" in render_text(r)
    r.checks.append(Check("tls.hostname", False))
    assert r.to_json()["ear.status"] == "contraindicated"


def test_a_cached_appraisal_does_not_skip_the_records_own_checks() -> None:
    # Two connections of one batch share the quote; connection 2's copy of the record says it is
    # not Evidence (ind 8). Without a cache that fails cmw.type; it must with a warm cache too
    # (the cache key left out ind, so connection 1's passing appraisal was handed to it).
    aik, b1, b2 = os.urandom(32), os.urandom(32), os.urandom(32)
    root, proofs = merkle.build("sha256", [b1, b2])

    def cmw(
        proof: merkle.InclusionProof, ind: int, media: str | int = "application/x-echo"
    ) -> bytes:
        return encode_cmw(
            CMWCollection(
                {
                    "evidence": CMWRecord(media, root, ind),
                    "merkle": CMWRecord(merkle.MERKLE_PROOF_MEDIA_TYPE, proof.encode()),
                }
            )
        )

    now = time.time()
    cache = AppraisalCache()
    (a,) = appraise_cmw(cmw(proofs[0], 4), Binding("sha256", b1, aik), [Echo()], now, cache=cache)
    assert a.passed, a.first_failure
    second = Binding("sha256", b2, aik)
    (b,) = appraise_cmw(cmw(proofs[1], 8), second, [Echo()], now + 1, cache=cache)
    assert not b.passed and b.first_failure is not None and b.first_failure.name == "cmw.type"
    (c,) = appraise_cmw(cmw(proofs[1], 4), second, [Echo()], now + 1, cache=cache)
    assert c.passed  # the same record as Evidence: the cached appraisal applies


def test_the_cache_keeps_a_text_type_and_a_content_format_apart() -> None:
    rec_text = CMWRecord("60", b"x", 4)
    rec_cf = CMWRecord(60, b"x", 4)
    assert AppraisalCache.key(rec_text, B) != AppraisalCache.key(rec_cf, B)
    assert AppraisalCache.key(rec_text, B) == AppraisalCache.key(CMWRecord("60", b"x", 4), B)
    assert AppraisalCache.key(CMWRecord("60", b"x"), B) != AppraisalCache.key(rec_text, B)


def test_a_skipped_check_is_not_reported_as_passed() -> None:
    # A check the configuration switched off (verify_pki = false) does not fail the report, but it
    # affirms nothing: its submod is at best "warning", and the text says SKIP, not PASS.
    r = AttestationReport("h:1", [Check("tls.handshake", True)])
    r.appraisals = appraise_cmw(
        encode_cmw(CMWRecord("application/x-echo", B.binder, 4)), B, [Echo()], 0
    )
    assert r.tier is Tier.AFFIRMING and r.skipped == []
    r.checks.append(Check("tls.chain", True, "not verified", skipped=True))
    doc = r.to_json()
    assert r.passed and r.tier is Tier.WARNING and doc["ear.status"] == "warning"
    assert doc["submods"]["connection"]["ear.status"] == "warning"
    assert doc["submods"]["connection"]["atls.checks"][-1] == {
        "name": "tls.chain",
        "passed": True,
        "skipped": True,
        "detail": "not verified",
    }
    text = render_text(r)
    assert "[SKIP] tls.chain" in text and "every check passed" not in text
    assert Appraisal("x", [Check("c", True, skipped=True)]).tier is Tier.WARNING
    r.checks.append(Check("tls.hostname", False))
    assert r.tier is Tier.CONTRAINDICATED and "Verdict: FAIL at tls.hostname" in render_text(r)


class Deny(Echo):
    """Another policy: refuses every evidence."""

    def appraise(
        self, media_type: str, evidence: bytes, expected: Binding, now: float
    ) -> Appraisal:
        return Appraisal("echo", [Check("evidence.policy", False, "refused by this policy")])


class CountingEcho(Echo):
    def __init__(self) -> None:
        self.calls = 0

    def appraise(
        self, media_type: str, evidence: bytes, expected: Binding, now: float
    ) -> Appraisal:
        self.calls += 1
        return super().appraise(media_type, evidence, expected, now)


def test_a_cached_verdict_is_not_reused_under_other_verifiers_or_freshness() -> None:
    # An embedder copies its settings with another policy (dataclasses.replace keeps the same
    # AppraisalCache): the evidence the old policy passed must be appraised by the new one.
    from atls_proxy.verify.policy import Freshness

    b1, b2 = os.urandom(32), os.urandom(32)
    root, proofs = merkle.build("sha256", [b1, b2])

    def cmw(proof: merkle.InclusionProof) -> bytes:
        return encode_cmw(
            CMWCollection(
                {
                    "evidence": CMWRecord("application/x-echo", root, 4),
                    "merkle": CMWRecord(merkle.MERKLE_PROOF_MEDIA_TYPE, proof.encode()),
                }
            )
        )

    now, cache, echo = time.time(), AppraisalCache(), CountingEcho()
    first, second = Binding("sha256", b1, B.aik_hash), Binding("sha256", b2, B.aik_hash)
    assert appraise_cmw(cmw(proofs[0]), first, [echo], now, cache=cache)[0].passed
    assert appraise_cmw(cmw(proofs[1]), second, [echo], now, cache=cache)[0].passed
    assert echo.calls == 1  # the same verifier: its verdict on the shared quote reused
    (denied,) = appraise_cmw(cmw(proofs[1]), second, [Deny()], now, cache=cache)
    assert denied.first_failure is not None
    assert denied.first_failure.name == "evidence.policy"  # not the cached pass
    assert appraise_cmw(cmw(proofs[0]), first, [echo], now, cache=cache)[0].passed
    assert echo.calls == 2  # back to the first verifier: appraised again
    other = Freshness(max_epoch_age=5)
    assert appraise_cmw(cmw(proofs[0]), first, [echo], now, freshness=other, cache=cache)[0].passed
    assert echo.calls == 3  # other freshness rules: appraised again


def test_the_cache_keeps_only_passing_appraisals() -> None:
    cache = AppraisalCache()
    key = AppraisalCache.key(CMWRecord("application/x-echo", b"v", 4), B)
    cache.put(key, Appraisal("echo", [Check("evidence.binder", False)]), time.time() + 60)
    assert cache.get(key, time.time()) is None  # a failure is appraised again every time
    cache.put(key, Appraisal("echo", [Check("evidence.binder", True)]), time.time() + 60)
    hit = cache.get(key, time.time())
    assert hit is not None and hit.passed
