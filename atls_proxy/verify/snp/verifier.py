"""Appraisal of an AMD SEV-SNP attestation report against AMD's key hierarchy and a ``SnpPolicy``.

Theory of operation
-------------------
``appraise_snp`` never raises for bad input: every problem is a failed, named ``Check``. Trust
flows from the AMD Root Key (ARK) of the product line to the AMD SEV Key (ASK; the ASVK for
VLEKs), from it to the chip's Versioned Chip Endorsement Key (VCEK) or the cloud's Versioned
Loaded Endorsement Key (VLEK), and from that key to the report (SEV-SNP ABI spec pub. 56860,
"Attestation"; VCEK spec pub. 57230). The checks follow that chain, in this order:

1. ``snp.report.format`` — the container (bare report, Azure HCL report, report+certs map) and
   the report parse (``report.parse_snp_evidence``); ``snp.report.trailing-bytes`` (passed) when
   unsigned padding follows. ``snp.signature.algorithm`` — SIGNATURE_ALGO is 1 (ECDSA P-384 with
   SHA-384). ``snp.signing-key`` — KEY_INFO.SIGNING_KEY is VCEK or VLEK (not "none"), the
   report is signed (MASK_CHIP_KEY clear), and the policy accepts that key type.
2. ``snp.vek`` — a VCEK/VLEK of that type is available (from the evidence's certificate table or
   the trust folder). Among several, the one whose hwID equals CHIP_ID and whose TCB equals
   REPORTED_TCB is chosen, so a folder can cache VCEKs for many chips and TCB levels.
3. ``snp.product`` — the product line (Milan, Genoa, Turin) that selects the ARK and the
   TCB_VERSION layout: the policy's ``product`` if set, else the one the VEK's issuer names
   (``SEV-Milan``, ``SEV-VLEK-Genoa``, …); the VEK's productName extension must agree.
4. ``snp.chain.ark`` — the trusted ARK for that product (a shipped anchor) is self-signed
   (RSASSA-PSS) and a CA; every ARK supplied with the VEK is byte-equal to it.
   ``snp.chain.ask`` — an ASK (ASVK for a VLEK) with the VEK's issuer name, issued and signed by
   the ARK, a CA. ``snp.chain.vek`` — the VEK is signed by it and has a P-384 key.
   ``snp.chain.validity`` — all three inside their validity at ``now`` (the detail names each
   certificate that is not). With AMD CRLs from the product's ARK: ``snp.collateral.crl``
   (every one signed by the ARK; the detail gives each one's scope for this chain),
   ``snp.collateral.crl.validity`` (those that apply are current); then
   ``snp.chain.revocation`` — the ASK/ASVK is on none of them, and with ``require_crl`` a
   current CRL known to be the list for this chain (VCEK or VLEK) exists (``_crl_scope``).
5. ``snp.vek.chip-id`` — the VCEK's hwID extension equals CHIP_ID (first 8 bytes on Turin; not
   applicable to VLEKs or a masked CHIP_ID). ``snp.vek.tcb`` — the VEK's blSPL/teeSPL/snpSPL/
   ucodeSPL (and fmcSPL on Turin) equal REPORTED_TCB, decoded with the product's layout: the VEK
   is the key AMD derived for exactly this chip and TCB. Checked before the signature because a
   mismatch means the wrong key was chosen (or the report was altered there).
6. ``snp.signature.report`` — the VEK's ECDSA P-384/SHA-384 signature over bytes [0, 0x2A0),
   R and S being 72-byte little-endian fields at 0x2A0 and 0x2E8.
7. The authenticated claims: ``snp.cpuid`` (from report version 3, CPUID family/model belong to
   the product line); ``snp.debug`` (POLICY bit 19), ``snp.policy.migration-agent`` (bit 18),
   ``snp.policy.smt`` (bit 16), ``snp.policy.single-socket`` (bit 20), ``snp.policy.abi``
   (ABI_MAJOR.ABI_MINOR); ``snp.vmpl``; ``snp.tcb.minimum`` (REPORTED_TCB at least the policy's
   per-component minimum); ``snp.firmware``; ``snp.guest-svn``; ``snp.register.<name>`` for
   MEASUREMENT, HOST_DATA, ID_KEY_DIGEST, AUTHOR_KEY_DIGEST, FAMILY_ID, IMAGE_ID.
8. ``snp.azure-hcl.report-data`` (Azure HCL only) — REPORT_DATA starts with the hash of the HCL
   runtime claims, and ``snp.report-data`` — REPORT_DATA equals ``expected_report_data``.

Stopping rule: a failure in steps 1-6 except validity and revocation leaves the report
unauthenticated and ends the appraisal, so a forged report never produces "passed" lines about
its contents. Validity, CRL currency and revocation are reported and the appraisal goes on.

Trust vector (draft-ietf-rats-ar4si): ``instance-identity`` 2 once the report is authenticated
(96 if that fails); ``hardware`` 2 when the policy sets a minimum TCB and REPORTED_TCB meets it,
32 when no minimum is configured (nothing to judge against offline), 96 below the minimum;
``configuration`` 2 for a production guest policy, 32 for an allowed debug guest, 96 when a
guest-policy check failed; ``executables`` 2/96 when the policy lists registers.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import UTC, datetime
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from atls_proxy.errors import DecodeError
from atls_proxy.verify.hardware import HardwareVerifier
from atls_proxy.verify.policy import DEFAULT_POLICY_ID
from atls_proxy.verify.result import Appraisal, Check, Tier
from atls_proxy.verify.snp import report as rpt
from atls_proxy.verify.snp.certs import (
    AmdCert,
    ecdsa_p384_key,
    parse_amd_certificate,
    signature_problem,
    split_certificates,
)
from atls_proxy.verify.snp.policy import REGISTER_NAMES, TCB_COMPONENTS, SnpPolicy
from atls_proxy.verify.snp.trust import (
    ROLE_ARK,
    ROLE_ASK,
    ROLE_ASVK,
    ROLE_VCEK,
    ROLE_VLEK,
    AmdCrl,
    SnpTrust,
    SourcedCert,
    Vek,
    classify,
    make_vek,
    product_for_cpuid,
    product_of_issuer,
)

logger = logging.getLogger(__name__)

EVIDENCE_TYPE = "snp"
# No registered media type exists for a raw SEV-SNP report (spec digest §4 table: Veraison uses
# TSM-report wrappers); this project's own, as the configfs attester emits it.
MEDIA_TYPE = "application/vnd.atls-proxy.snp-report"
# The report with the GHCB certificate table from configfs-tsm's auxblob: CBOR {1: report,
# 2: auxblob} (atls_proxy.attest.configfs).
CERTS_MEDIA_TYPE = "application/vnd.atls-proxy.snp-report+certs"

# Distinct certificates one evidence may carry: the VCEK or VLEK, its ASK or ASVK and the ARK are
# three; a little room for a platform that adds another.
MAX_EVIDENCE_CERTS = 8

TV_INSTANCE_IDENTITY = "instance-identity"
TV_HARDWARE = "hardware"
TV_CONFIGURATION = "configuration"
TV_EXECUTABLES = "executables"

# Turin's VCEK hwID is 8 bytes; the rest of CHIP_ID is zero (VCEK spec pub. 57230, hwID).
TURIN_HWID_SIZE = 8
_SIGNING_KEY_NAMES = {rpt.SIGNING_KEY_VCEK: ROLE_VCEK, rpt.SIGNING_KEY_VLEK: ROLE_VLEK}


class _Stop(Exception):
    """Internal: the appraisal cannot go on (the failed check is already recorded)."""


# Which AMD CRLs apply to the chain's intermediate. AMD publishes two CRLs per product line, both
# issued by ARK-<Product>: the VCEK list (KDS /vcek/v1/<P>/crl, for the ASK) and the VLEK list
# (/vlek/v1/<P>/crl, for the ASVK); each intermediate's cRLDistributionPoints names its list
# (pub. 57230, KDS "crl"; the shipped anchors show it). The rule, per CRL from the chain's ARK:
#
# * With an issuingDistributionPoint naming URIs (RFC 5280 §5.2.5), the IDP decides
#   (§6.3.3 (b)(2)): it covers the intermediate when one of its URIs is one of the
#   intermediate's distribution points and it does not exclude CA certificates; a disjoint IDP
#   means "another list" and the CRL is not consulted. An intermediate without a distribution
#   point leaves the scope unknown.
# * Without one, RFC 5280 reads the CRL as complete for everything the ARK issued, but AMD's two
#   lists cannot be told apart by content: the file name's "vcek"/"vlek" (the KDS path it came
#   from) says which list it is. A CRL named for neither has an unknown scope.
#
# Every CRL not excluded by its IDP is consulted: serials are unique per issuer (RFC 5280
# §4.1.2.2), so an entry on any of them revokes the intermediate. Currency is judged on the
# CRLs that cover the chain or whose scope is unknown (a stale VLEK list says nothing about a
# VCEK chain). ``require_crl`` needs a current CRL known to cover this chain: an unknown scope
# does not count, because a VCEK list must not stand in for a missing VLEK list.
_SCOPE_COVERS = "covers"
_SCOPE_UNKNOWN = "unknown"
_SCOPE_FOREIGN = "foreign"  # no IDP, named for the other key type: consulted, not judged
_SCOPE_OTHER = "other"  # its IDP names another list: not consulted
_SCOPE_TEXT = {
    _SCOPE_COVERS: "the list for this chain",
    _SCOPE_UNKNOWN: "scope unknown (no issuingDistributionPoint; the file name says neither "
    "vcek nor vlek)",
    _SCOPE_FOREIGN: "the list for the other key type (file name)",
    _SCOPE_OTHER: "another list (issuingDistributionPoint): not consulted",
}


def _crl_scope(crl: AmdCrl, kind: str, cdp: frozenset[str]) -> str:
    """The scope of ``crl`` for the intermediate of a ``kind`` (VCEK/VLEK) chain whose
    cRLDistributionPoints URIs are ``cdp`` (the rule above)."""
    if crl.idp_excludes_ca:
        return _SCOPE_OTHER
    if crl.idp_uris is not None:
        if not cdp:
            return _SCOPE_UNKNOWN
        if not crl.idp_uris & cdp:
            return _SCOPE_OTHER
        return _SCOPE_UNKNOWN if crl.idp_some_reasons else _SCOPE_COVERS
    if crl.declared_kind is None:
        return _SCOPE_UNKNOWN
    if crl.declared_kind != kind:
        return _SCOPE_FOREIGN
    return _SCOPE_UNKNOWN if crl.idp_some_reasons else _SCOPE_COVERS


def _fmt_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _window(cert: AmdCert) -> str:
    return f"{_fmt_time(cert.not_before)} .. {_fmt_time(cert.not_after)}"


def _hwid_matches(hwid: bytes | None, chip_id: bytes) -> bool:
    return hwid is not None and chip_id[: len(hwid)] == hwid and not any(chip_id[len(hwid) :])


def _vek_tcb(vek: Vek, turin: bool) -> dict[str, int | None]:
    out: dict[str, int | None] = {
        "bootloader": vek.ext.bl_spl,
        "tee": vek.ext.tee_spl,
        "snp": vek.ext.snp_spl,
        "microcode": vek.ext.ucode_spl,
    }
    if turin:
        out["fmc"] = vek.ext.fmc_spl
    return out


def _tcb_matches(vek: Vek, reported: bytes, turin: bool) -> bool:
    tcb = rpt.decode_tcb(reported, turin).components()
    return all(tcb.get(k) == v for k, v in _vek_tcb(vek, turin).items())


class _Appraiser:
    """One appraisal: the checks in report order (module docstring)."""

    def __init__(
        self,
        appraisal: Appraisal,
        policy: SnpPolicy,
        trust: SnpTrust,
        now: datetime,
        expected_report_data: bytes | None,
    ) -> None:
        self.a = appraisal
        self.policy = policy
        self.trust = trust
        self.now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        self.expected_report_data = expected_report_data
        self.tv = appraisal.trust_vector
        # Certificates carried in the evidence (GHCB table), by role.
        self.ev_veks: list[Vek] = []
        self.ev_others: list[SourcedCert] = []
        self.policy_ok = True

    # -- helpers ------------------------------------------------------------------------------

    def add(
        self,
        name: str,
        passed: bool,
        detail: str = "",
        observed: str | None = None,
        expected: str | None = None,
    ) -> bool:
        self.a.add(Check(name, passed, detail, observed, expected))
        return passed

    def stop(
        self, name: str, detail: str, observed: str | None = None, expected: str | None = None
    ) -> NoReturn:
        """Record a failed check that leaves the report unauthenticated; end the appraisal."""
        self.add(name, False, detail, observed, expected)
        self.tv[TV_INSTANCE_IDENTITY] = int(Tier.CONTRAINDICATED)
        raise _Stop

    def need(
        self,
        name: str,
        passed: bool,
        detail: str = "",
        observed: str | None = None,
        expected: str | None = None,
    ) -> None:
        if not passed:
            self.stop(name, detail, observed, expected)
        self.add(name, True, detail, observed, expected)

    def in_window(self, cert: AmdCert) -> bool:
        return cert.not_before <= self.now <= cert.not_after

    # -- the checks ---------------------------------------------------------------------------

    def run(self, evidence: bytes) -> None:
        ev = self.format(evidence)
        report = ev.report
        kind = self.signing_key(report)
        vek = self.select_vek(report, kind)
        product = self.product(vek)
        turin = product == "Turin"
        ark, intermediate = self.chain(vek, product)
        self.validity(vek, intermediate.cert, ark)
        self.revocation(vek.kind, intermediate, ark, product)
        self.vek_binding(report, vek, turin)
        self.signature(report, vek)
        self.tv[TV_INSTANCE_IDENTITY] = int(Tier.AFFIRMING)
        self.cpuid(report, product)
        self.guest_policy(report)
        self.vmpl(report)
        self.tcb(report, turin)
        self.firmware(report)
        self.guest_svn(report)
        self.registers(report)
        self.hcl(ev)
        self.report_data(report)

    def format(self, evidence: bytes) -> rpt.SnpEvidence:
        try:
            ev = rpt.parse_snp_evidence(evidence)
        except DecodeError as exc:
            self.stop("snp.report.format", str(exc), observed=f"{len(evidence)} bytes")
        try:
            self.evidence_certs(ev)
        except DecodeError as exc:
            self.stop("snp.report.format", str(exc), observed=f"{len(evidence)} bytes")
        self.add("snp.report.format", True, ev.describe(), observed=f"{len(evidence)} bytes")
        if ev.trailing:
            kind = "zero" if not any(ev.trailing) else "non-zero"
            self.add(
                "snp.report.trailing-bytes",
                True,
                f"{len(ev.trailing)} {kind} bytes after the {ev.container} structure are not "
                "signed and were ignored",
                observed=ev.trailing[:32].hex() + ("…" if len(ev.trailing) > 32 else ""),
            )
        algo = ev.report.signature_algo
        self.need(
            "snp.signature.algorithm",
            algo == rpt.SIGNATURE_ALGO_ECDSA_P384_SHA384,
            "ECDSA P-384 with SHA-384"
            if algo == rpt.SIGNATURE_ALGO_ECDSA_P384_SHA384
            else "unknown signature algorithm",
            observed=str(algo),
            expected=str(rpt.SIGNATURE_ALGO_ECDSA_P384_SHA384),
        )
        return ev

    def evidence_certs(self, ev: rpt.SnpEvidence) -> None:
        # Entries may point at the same bytes, or at shifted views of them, and blobs may repeat
        # a certificate: each distinct certificate (by its DER) is parsed and kept once, and
        # more distinct ones than a chain needs are refused — one evidence cannot make an
        # appraisal parse and RSA-verify hundreds of copies.
        kept: set[bytes] = set()
        for label, blob in ev.certificates:
            where = f"evidence {label} entry"
            try:
                ders = split_certificates(blob)  # base64 at most; no DER walked yet
            except DecodeError as exc:
                raise DecodeError(f"{where}: {exc}") from exc
            for der_bytes in ders:
                if der_bytes in kept:
                    continue  # the same certificate again: read and checked once
                kept.add(der_bytes)
                if len(kept) > MAX_EVIDENCE_CERTS:
                    raise DecodeError(
                        f"the evidence carries more than {MAX_EVIDENCE_CERTS} distinct "
                        "certificates (a VCEK or VLEK chain has three)"
                    )
                try:
                    cert = parse_amd_certificate(der_bytes)
                    role, product = classify(cert)
                    if role in (ROLE_VCEK, ROLE_VLEK):
                        self.ev_veks.append(make_vek(cert, where))
                    else:
                        self.ev_others.append(SourcedCert(cert, role, product, where))
                except DecodeError as exc:
                    raise DecodeError(f"{where}: {exc}") from exc

    def signing_key(self, report: rpt.AttestationReport) -> str:
        key = report.signing_key
        kind = _SIGNING_KEY_NAMES.get(key)
        observed = f"KEY_INFO {report.key_info:#x} (SIGNING_KEY {key})"
        accepted = " | ".join(sorted(k.upper() for k in self.policy.signing_keys))
        if kind is None:
            self.stop(
                "snp.signing-key",
                "the report is not signed by a VCEK or VLEK"
                + (" (SIGNING_KEY 7: no key)" if key == rpt.SIGNING_KEY_NONE else ""),
                observed=observed,
                expected=accepted,
            )
        if report.mask_chip_key:
            self.stop(
                "snp.signing-key",
                "MASK_CHIP_KEY is set: the firmware did not sign the report",
                observed=observed,
                expected="MASK_CHIP_KEY clear",
            )
        self.need(
            "snp.signing-key",
            kind.lower() in self.policy.signing_keys,
            f"signed by the {kind}"
            + (
                ""
                if kind.lower() in self.policy.signing_keys
                else "; the policy does not accept it"
            ),
            observed=observed,
            expected=accepted,
        )
        return kind

    def select_vek(self, report: rpt.AttestationReport, kind: str) -> Vek:
        candidates = [v for v in (*self.ev_veks, *self.trust.veks) if v.kind == kind]
        if not candidates:
            self.stop(
                "snp.vek",
                f"no {kind} certificate: put the {kind} (AMD KDS, or the host's certificate "
                "table) in the certificates folder",
                expected=kind,
            )

        def rank(v: Vek) -> tuple[bool, bool]:
            product = self.policy.product or product_of_issuer(v.cert)
            turin = product == "Turin"
            chip = kind == ROLE_VLEK or _hwid_matches(v.ext.hwid, report.chip_id)
            return chip, _tcb_matches(v, report.reported_tcb, turin)

        chosen = max(candidates, key=rank)  # max keeps the first of equals: evidence first
        self.add(
            "snp.vek",
            True,
            f"{kind} from {chosen.source}"
            + (f" (chosen among {len(candidates)})" if len(candidates) > 1 else ""),
            observed=chosen.cert.describe(),
        )
        return chosen

    def product(self, vek: Vek) -> str:
        from_issuer = product_of_issuer(vek.cert)
        ext_name = vek.ext.product_name
        from_ext = ext_name.split("-", 1)[0]
        product = self.policy.product or from_issuer
        observed = f"issuer {vek.cert.issuer_cn}, productName {ext_name}"
        expected = f"{self.policy.product} (policy)" if self.policy.product else "one product line"
        if product is None:
            self.stop(
                "snp.product",
                f"the {vek.kind}'s issuer does not name a known product line",
                observed=observed,
                expected=expected,
            )
        problems = []
        if from_issuer != product:
            problems.append(f"the {vek.kind} was issued by {vek.cert.issuer_cn}")
        if from_ext != product:
            problems.append(f"the {vek.kind}'s productName is {ext_name!r}")
        self.need(
            "snp.product",
            not problems,
            "; ".join(problems) + f", not {product}"
            if problems
            else f"{product} (from " + ("the policy)" if self.policy.product else "the issuer)"),
            observed=observed,
            expected=expected,
        )
        return product

    def chain(self, vek: Vek, product: str) -> tuple[AmdCert, SourcedCert]:
        """The trusted ARK and the ASK/ASVK that issued ``vek`` (with its source and CRL
        distribution points)."""
        anchor = self.trust.anchors.get(product)
        ark_name = f"ARK-{product}"
        if anchor is None:
            have = ", ".join(sorted(self.trust.anchors)) or "none"
            self.stop(
                "snp.chain.ark",
                f"no trusted {ark_name} (anchors for: {have})",
                expected=ark_name,
            )
        ark = anchor.cert
        expected = f"{ark_name} sha256 {ark.fingerprint} ({anchor.source})"
        problem = signature_problem(ark, ark) if ark.self_issued else "not self-issued"
        if not problem and not ark.is_ca():
            problem = "not a CA (basicConstraints)"
        if problem:
            self.stop("snp.chain.ark", f"the trusted {ark_name}: {problem}", expected=expected)
        supplied = [
            s
            for s in (*self.trust.arks, *self.ev_others)
            if s.role == ROLE_ARK and s.product == product
        ]
        for s in supplied:
            if s.cert.der != ark.der:
                self.stop(
                    "snp.chain.ark",
                    f"the {ark_name} from {s.source} is not the trusted one",
                    observed=f"sha256 {s.cert.fingerprint}",
                    expected=expected,
                )
        self.add(
            "snp.chain.ark",
            True,
            f"{ark_name} self-signed (RSASSA-PSS), equal to the trusted anchor"
            + (
                f"; {len(supplied)} supplied cop{'y' if len(supplied) == 1 else 'ies'} match"
                if supplied
                else ""
            ),
            observed=f"sha256 {ark.fingerprint}",
            expected=expected,
        )

        role = ROLE_ASVK if vek.kind == ROLE_VLEK else ROLE_ASK
        ask_name = f"SEV-VLEK-{product}" if role == ROLE_ASVK else f"SEV-{product}"
        pool = [
            s
            for s in (*self.ev_others, *self.trust.intermediates)
            if s.role == role and s.product == product
        ]
        candidates = [s for s in pool if s.cert.subject == vek.cert.issuer]
        problems: list[str] = []
        chosen: SourcedCert | None = None
        for cand in candidates:
            problem = ""
            if cand.cert.issuer != ark.subject:
                problem = f"issuer is {cand.cert.issuer_cn}, not {ark_name}"
            elif not cand.cert.is_ca():
                problem = "not a CA (basicConstraints)"
            else:
                problem = signature_problem(cand.cert, ark)
            if not problem:
                chosen = cand
                break
            problems.append(f"{cand.source}: {problem}")
        if chosen is None:
            detail = (
                "; ".join(problems)
                if problems
                else f"no {role} named {vek.cert.issuer_cn} (the {vek.kind}'s issuer)"
            )
            self.stop("snp.chain.ask", detail, expected=f"{ask_name} issued by {ark_name}")
        ask = chosen.cert
        self.add(
            "snp.chain.ask",
            True,
            f"{role} {ask.subject_cn} from {chosen.source}, signed by {ark_name}",
            observed=f"sha256 {ask.fingerprint}",
            expected=f"{ask_name} issued by {ark_name}",
        )

        problem = signature_problem(vek.cert, ask)
        if not problem:
            try:
                ecdsa_p384_key(vek.cert)
            except DecodeError as exc:
                problem = str(exc)
        self.need(
            "snp.chain.vek",
            not problem,
            problem or f"{vek.kind} signed by {ask.subject_cn}",
            observed=f"{vek.kind} sha256 {vek.cert.fingerprint}",
            expected=f"issued by {ask.subject_cn}",
        )
        return ark, chosen

    def validity(self, vek: Vek, ask: AmdCert, ark: AmdCert) -> None:
        ask_role = ROLE_ASVK if vek.kind == ROLE_VLEK else ROLE_ASK
        named = ((vek.kind, vek.cert), (ask_role, ask), (ROLE_ARK, ark))
        bad = []
        for role, cert in named:
            if self.in_window(cert):
                continue
            state = "expired" if self.now > cert.not_after else "not yet valid"
            bad.append(f"{role} ({cert.subject_cn}) {state}: valid {_window(cert)}")
        self.add(
            "snp.chain.validity",
            not bad,
            ("outside validity at now: " + "; ".join(bad)) if bad else "all three valid",
            observed=_fmt_time(self.now),
            expected=f"{vek.kind} {_window(vek.cert)}"
            if not bad
            else "every certificate inside its validity",
        )

    def revocation(self, kind: str, intermediate: SourcedCert, ark: AmdCert, product: str) -> None:
        """The ASK/ASVK against the AMD CRLs that apply to it (``_crl_scope``)."""
        name = "snp.chain.revocation"
        ask = intermediate.cert
        ask_role = ROLE_ASVK if kind == ROLE_VLEK else ROLE_ASK
        chain = f"{kind} chain ({ask.subject_cn})"
        # Read when the certificate was classified (at load for the trust folder's), not here;
        # empty when absent or malformed: IDP-scoped CRLs then count as unknown scope.
        cdp = intermediate.crl_uris
        from_ark = [c for c in self.trust.crls if c.issuer == ark.subject]
        if not from_ark:
            self.add(
                name,
                not self.policy.require_crl,
                f"not checked: no AMD CRL for {product} in the collateral"
                + ("; the policy requires one" if self.policy.require_crl else ""),
                expected=f"CRL issued by ARK-{product}" if self.policy.require_crl else None,
            )
            return
        # Every CRL from this ARK is authenticated before its scope (its IDP) is believed.
        try:
            key: object = ark.public_key()  # parsed once, not once per CRL
        except DecodeError:
            key = None
        for crl in from_ark:
            signed = ark.der in crl.verified_by
            if not signed:
                try:
                    signed = isinstance(key, rsa.RSAPublicKey) and crl.crl.is_signature_valid(key)
                except (TypeError, ValueError):
                    signed = False
                if signed:
                    crl.verified_by.add(ark.der)
            if not signed:
                self.stop(
                    "snp.collateral.crl",
                    f"{crl.source}: signature does not verify with ARK-{product}",
                    observed=crl.crl.issuer.rfc4514_string(),
                    expected=f"ARK-{product}",
                )
        scoped = [(c, _crl_scope(c, kind, cdp)) for c in from_ark]
        consulted = [c for c, sc in scoped if sc != _SCOPE_OTHER]
        judged = [c for c, sc in scoped if sc in (_SCOPE_COVERS, _SCOPE_UNKNOWN)]
        self.add(
            "snp.collateral.crl",
            True,
            "; ".join(f"{c.source}: {_SCOPE_TEXT[sc]}" for c, sc in scoped)
            + f"; all signed by ARK-{product}",
            observed=", ".join(c.source for c in from_ark),
            expected=f"ARK-{product}",
        )
        stale = [c for c in judged if not self.crl_current(c)]
        if judged:
            self.add(
                "snp.collateral.crl.validity",
                not stale,
                "not current at now: " + ", ".join(c.source for c in stale)
                if stale
                else ", ".join(c.source for c in judged) + ": current",
                observed=_fmt_time(self.now),
                expected="; ".join(
                    f"{c.source} thisUpdate..nextUpdate "
                    f"{_fmt_time(c.this_update)} .. {_fmt_time(c.next_update)}"
                    for c in judged
                ),
            )
        # RFC 5280 §4.1.2.2: a CA gives each certificate it issues a unique serial, so an entry
        # in any CRL the ARK signed names this very ASK/ASVK: revoked in any = revoked.
        revoked_by = [c.source for c in consulted if ask.serial in c.revoked_serials]
        observed = f"{ask_role} serial {ask.serial:#x}"
        if revoked_by:
            self.add(
                name,
                False,
                f"{ask.subject_cn} serial {ask.serial:#x} is revoked by {', '.join(revoked_by)}",
                observed=observed,
                expected="not on an AMD CRL",
            )
            return
        listed = ", ".join(c.source for c in consulted)
        covers = [c for c, sc in scoped if sc == _SCOPE_COVERS]
        current = [c for c in covers if self.crl_current(c)]
        if self.policy.require_crl and not current:
            why = "; ".join(
                f"{c.source}: {'not current' if sc == _SCOPE_COVERS else _SCOPE_TEXT[sc]}"
                for c, sc in scoped
            )
            seen = (
                f"{ask.subject_cn} serial {ask.serial:#x} is not on {listed}, but "
                if listed
                else ""
            )
            self.add(
                name,
                False,
                f"{seen}the policy requires a current CRL for the {chain} and there is none "
                f"({why})",
                observed=observed,
                expected=f"a current CRL for the {kind} chain"
                + (f" ({', '.join(sorted(cdp))})" if cdp else ""),
            )
            return
        if not consulted:
            detail = f"not checked: no AMD CRL from ARK-{product} applies to the {chain}"
        else:
            detail = f"{ask.subject_cn} serial {ask.serial:#x} is not on {listed}" + (
                "" if covers else f" (none of them is known to be the {kind} list)"
            )
        self.add(name, True, detail, observed=observed, expected="not on an AMD CRL")

    def crl_current(self, crl: AmdCrl) -> bool:
        return crl.this_update <= self.now <= crl.next_update

    def vek_binding(self, report: rpt.AttestationReport, vek: Vek, turin: bool) -> None:
        chip = report.chip_id
        if vek.kind == ROLE_VLEK:
            self.add(
                "snp.vek.chip-id",
                True,
                "not applicable: a VLEK is not chip-specific (no hwID)",
                observed=chip.hex(),
            )
        elif not any(chip):
            self.add(
                "snp.vek.chip-id",
                True,
                "CHIP_ID is zero (masked by the host): not compared; the VCEK signature still "
                "binds the chip",
                observed=chip.hex(),
                expected=vek.ext.hwid.hex() if vek.ext.hwid is not None else None,
            )
        else:
            hwid = vek.ext.hwid
            ok = _hwid_matches(hwid, chip)
            self.need(
                "snp.vek.chip-id",
                ok,
                "VCEK hwID equals CHIP_ID"
                if ok
                else (
                    "the VCEK has no hwID extension"
                    if hwid is None
                    else "the VCEK was issued for another chip"
                ),
                observed=chip.hex(),
                expected=hwid.hex() if hwid is not None else "hwID extension",
            )
        tcb = rpt.decode_tcb(report.reported_tcb, turin)
        have = tcb.components()
        want = _vek_tcb(vek, turin)
        diffs = [f"{k} {have.get(k)} ≠ {v}" for k, v in want.items() if have.get(k) != v]
        layout = "Turin" if turin else "pre-Turin"
        expected = " ".join(f"{k}={'absent' if v is None else v}" for k, v in want.items())
        self.need(
            "snp.vek.tcb",
            not diffs,
            f"{vek.kind} SPLs equal REPORTED_TCB ({layout} layout)"
            if not diffs
            else f"REPORTED_TCB differs from the {vek.kind}'s TCB ({layout} layout): "
            + ", ".join(diffs),
            observed=tcb.describe(),
            expected=expected,
        )

    def signature(self, report: rpt.AttestationReport, vek: Vek) -> None:
        key = ecdsa_p384_key(vek.cert)  # checked by snp.chain.vek
        try:
            key.verify(
                encode_dss_signature(report.signature_r, report.signature_s),
                report.signed,
                ec.ECDSA(hashes.SHA384()),
            )
            ok = True
        except (InvalidSignature, ValueError):
            ok = False
        sig = report.raw[rpt.SIGNED_SIZE : rpt.SIGNED_SIZE + 2 * rpt.ECDSA_COMPONENT_SIZE]
        self.need(
            "snp.signature.report",
            ok,
            f"ECDSA P-384/SHA-384 over bytes [0, 0x2A0) by the {vek.kind}"
            + ("" if ok else ": does not verify"),
            observed=sig.hex(),
            expected=f"{vek.kind} sha256 {vek.cert.fingerprint}",
        )

    # -- the guest's authenticated claims -----------------------------------------------------

    def cpuid(self, report: rpt.AttestationReport, product: str) -> None:
        if report.cpuid is None:
            self.add(
                "snp.cpuid",
                True,
                f"not in report version {report.version}; product line from the {product} chain",
            )
            return
        family, model, stepping = report.cpuid
        found = product_for_cpuid(family, model)
        self.add(
            "snp.cpuid",
            found == product,
            f"CPUID family/model are {found}"
            if found == product
            else (
                f"CPUID family/model belong to {found}, not {product}"
                if found
                else "CPUID family/model are not a known SEV-SNP product line"
            ),
            observed=f"family {family:#x} model {model:#x} stepping {stepping}",
            expected=product,
        )

    def guest_policy(self, report: rpt.AttestationReport) -> None:
        policy = report.policy
        observed = f"POLICY {policy:#x}"
        debug = bool(policy & rpt.POLICY_DEBUG)
        if not debug:
            self.add("snp.debug", True, "debugging not allowed", observed, "DEBUG (bit 19) clear")
            self.tv[TV_CONFIGURATION] = int(Tier.AFFIRMING)
        elif self.policy.allow_debug:
            self.add(
                "snp.debug",
                True,
                "debugging allowed and accepted: the policy sets allow_debug = true (the host "
                "can decrypt the guest's memory)",
                observed,
                "allow_debug = true",
            )
            self.tv[TV_CONFIGURATION] = int(Tier.WARNING)
        else:
            self.bad_policy(
                "snp.debug",
                "the guest policy allows debugging (the host can decrypt and change its memory); "
                "the policy forbids debug guests",
                observed,
                "DEBUG (bit 19) clear",
            )
        ma = bool(policy & rpt.POLICY_MIGRATE_MA)
        if ma and not self.policy.allow_migration_agent:
            self.bad_policy(
                "snp.policy.migration-agent",
                "a migration agent is allowed (it can export the guest's state); the policy "
                "forbids it",
                observed,
                "MIGRATE_MA (bit 18) clear",
            )
        else:
            self.add(
                "snp.policy.migration-agent",
                True,
                "migration agent allowed and accepted" if ma else "no migration agent",
                observed,
                "MIGRATE_MA (bit 18) clear" if not self.policy.allow_migration_agent else None,
            )
        smt = bool(policy & rpt.POLICY_SMT)
        if smt and not self.policy.allow_smt:
            self.bad_policy(
                "snp.policy.smt",
                "SMT is allowed; the policy requires it disallowed",
                observed,
                "SMT (bit 16) clear",
            )
        else:
            self.add("snp.policy.smt", True, "SMT allowed" if smt else "SMT not allowed", observed)
        single = bool(policy & rpt.POLICY_SINGLE_SOCKET)
        if self.policy.require_single_socket and not single:
            self.bad_policy(
                "snp.policy.single-socket",
                "the guest may run on several sockets; the policy requires a single socket",
                observed,
                "SINGLE_SOCKET (bit 20) set",
            )
        else:
            self.add(
                "snp.policy.single-socket",
                True,
                "single socket required" if single else "several sockets allowed",
                observed,
            )
        abi = ((policy >> 8) & 0xFF, policy & 0xFF)
        minimum = self.policy.min_abi
        ok = minimum is None or abi >= minimum
        text = f"ABI {abi[0]}.{abi[1]}"
        if ok:
            self.add(
                "snp.policy.abi",
                True,
                f"guest requires firmware ABI at least {abi[0]}.{abi[1]}"
                + ("" if minimum else "; not constrained by policy"),
                text,
                f">= {minimum[0]}.{minimum[1]}" if minimum else None,
            )
        else:
            assert minimum is not None
            self.bad_policy(
                "snp.policy.abi",
                "the guest policy's minimum ABI is below the policy's",
                text,
                f">= {minimum[0]}.{minimum[1]}",
            )

    def bad_policy(self, name: str, detail: str, observed: str, expected: str) -> None:
        self.add(name, False, detail, observed, expected)
        self.tv[TV_CONFIGURATION] = int(Tier.CONTRAINDICATED)

    def vmpl(self, report: rpt.AttestationReport) -> None:
        accepted = self.policy.accepted_vmpls
        ok = accepted is None or report.vmpl in accepted
        self.add(
            "snp.vmpl",
            ok,
            "the report was requested at this VM privilege level"
            + ("; not constrained by policy" if accepted is None else "")
            + ("" if ok else "; not a VMPL the policy accepts"),
            observed=str(report.vmpl),
            expected=" | ".join(str(v) for v in sorted(accepted)) if accepted else None,
        )

    def tcb(self, report: rpt.AttestationReport, turin: bool) -> None:
        reported = rpt.decode_tcb(report.reported_tcb, turin)
        have = reported.components()
        others = (
            f"CURRENT_TCB {report.current_tcb.hex()}, COMMITTED_TCB {report.committed_tcb.hex()}, "
            f"LAUNCH_TCB {report.launch_tcb.hex()}"
        )
        minimum = {k: v for k, v in self.policy.min_tcb.items() if k in have}
        ignored = [k for k in self.policy.min_tcb if k not in have]
        if not self.policy.min_tcb:
            self.add(
                "snp.tcb.minimum",
                True,
                f"no minimum TCB configured (not judged); {others}",
                observed=reported.describe(),
            )
            self.tv[TV_HARDWARE] = int(Tier.WARNING)
            return
        low = [f"{k} {have[k]} < {v}" for k, v in minimum.items() if have[k] < v]
        note = f"; {', '.join(ignored)} not in this product's TCB" if ignored else ""
        self.add(
            "snp.tcb.minimum",
            not low,
            (
                "REPORTED_TCB below the policy minimum: " + ", ".join(low)
                if low
                else "at least the minimum"
            )
            + f"{note}; {others}",
            observed=reported.describe(),
            expected=" ".join(
                f"{k}>={self.policy.min_tcb[k]}" for k in TCB_COMPONENTS if k in self.policy.min_tcb
            ),
        )
        self.tv[TV_HARDWARE] = int(Tier.CONTRAINDICATED if low else Tier.AFFIRMING)

    def firmware(self, report: rpt.AttestationReport) -> None:
        major, minor, build = report.current_version
        minimum = self.policy.min_firmware
        ok = minimum is None or (major, minor) >= minimum
        cmaj, cmin, cbuild = report.committed_version
        self.add(
            "snp.firmware",
            ok,
            # the minimum applies to CURRENT (observed); COMMITTED, the rollback floor, is shown
            f"current {major}.{minor}.{build} (committed {cmaj}.{cmin}.{cbuild})"
            + ("; not constrained by policy" if minimum is None else "")
            + ("" if ok else "; below the policy's minimum firmware"),
            observed=f"{major}.{minor}.{build}",
            expected=f">= {minimum[0]}.{minimum[1]}" if minimum else None,
        )

    def guest_svn(self, report: rpt.AttestationReport) -> None:
        minimum = self.policy.min_guest_svn
        ok = report.guest_svn >= minimum
        self.add(
            "snp.guest-svn",
            ok,
            ("" if minimum else "not constrained by policy")
            if ok
            else "below the policy's minimum guest SVN",
            observed=str(report.guest_svn),
            expected=f">= {minimum}" if minimum else None,
        )

    def registers(self, report: rpt.AttestationReport) -> None:
        present = report.registers()
        matched = True
        for name in REGISTER_NAMES:
            value = present[name]
            accepted = self.policy.registers.get(name)
            if accepted is None:
                self.add(f"snp.register.{name}", True, "not constrained by policy", value.hex())
                continue
            ok = value in accepted
            matched = matched and ok
            self.add(
                f"snp.register.{name}",
                ok,
                "" if ok else "not a value the policy accepts",
                observed=value.hex(),
                expected=" | ".join(sorted(v.hex() for v in accepted)),
            )
        if self.policy.registers:
            self.tv[TV_EXECUTABLES] = int(Tier.AFFIRMING if matched else Tier.CONTRAINDICATED)

    def hcl(self, ev: rpt.SnpEvidence) -> None:
        if ev.hcl is None:
            return
        digest = hashlib.new(ev.hcl.hash_name, ev.hcl.variable_data).digest()
        observed = ev.report.report_data
        ok = hmac.compare_digest(observed[: len(digest)], digest) and not any(
            observed[len(digest) :]
        )
        self.add(
            "snp.azure-hcl.report-data",
            ok,
            f"REPORT_DATA = {ev.hcl.hash_name.upper()}(HCL runtime claims, "
            f"{len(ev.hcl.variable_data)} bytes), zero-padded"
            + ("" if ok else ": does not match: the runtime claims are not the ones reported"),
            observed=observed.hex(),
            expected=digest.hex(),
        )

    def report_data(self, report: rpt.AttestationReport) -> None:
        observed = report.report_data
        if self.expected_report_data is None:
            self.add(
                "snp.report-data",
                True,
                "not checked: no binding (offline appraisal)",
                observed=observed.hex(),
            )
            return
        ok = hmac.compare_digest(observed, self.expected_report_data)
        self.add(
            "snp.report-data",
            ok,
            "" if ok else "REPORT_DATA does not carry this connection's binding",
            observed=observed.hex(),
            expected=self.expected_report_data.hex(),
        )


def appraise_snp(
    evidence: bytes,
    *,
    policy: SnpPolicy,
    trust: SnpTrust,
    now: datetime,
    expected_report_data: bytes | None,
    policy_id: str = DEFAULT_POLICY_ID,
) -> Appraisal:
    """Appraise one SEV-SNP report at time ``now`` (module docstring). Never raises for bad
    input. A naive ``now`` is taken as UTC."""
    appraisal = Appraisal(evidence_type=EVIDENCE_TYPE, policy_id=policy_id)
    try:
        _Appraiser(appraisal, policy, trust, now, expected_report_data).run(evidence)
    except _Stop:
        pass
    except Exception as exc:  # a bug, never bad evidence: fail closed and say so
        logger.exception("SNP verifier failed unexpectedly")
        appraisal.add(Check("snp.internal-error", False, detail=f"{type(exc).__name__}: {exc}"))
    return appraisal


class SnpVerifier(HardwareVerifier[SnpPolicy, SnpTrust]):
    """The ``Verifier`` for SNP evidence (verify/hardware.py)."""

    accepted = ((MEDIA_TYPE, {}), (CERTS_MEDIA_TYPE, {}))

    def run(self, evidence: bytes, **kwargs: Any) -> Appraisal:
        return appraise_snp(evidence, **kwargs)
