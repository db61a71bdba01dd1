"""Appraisal of an Intel TDX quote (v4/v5) against DCAP collateral and a ``TdxPolicy``.

Theory of operation
-------------------
``appraise_tdx`` never raises for bad input: every problem is a failed, named ``Check``. Trust
flows from the Intel SGX Root CA to the PCK certificate, from the PCK key to the Quoting Enclave's
report, from the QE report to the attestation key, and from the attestation key to the TD report.
The checks follow that chain, in this order (the DCAP steps are those of Intel's Quote
Verification Library, QuoteVerifier.cpp 4.1.2.4.x):

1. ``tdx.quote.format`` — header, body and signature data parse (``quote.parse_quote``): v4 or v5,
   ECDSA-P256 attestation key, TEE type TDX, Intel's QE vendor ID, certification data type 6 with
   a nested type 5 PEM chain. Then ``tdx.quote.trailing-bytes`` (passed) when unsigned bytes follow
   the signature data.
2. ``tdx.pck.chain`` — exactly leaf → PCK Platform/Processor CA → root; the chain's root is
   byte-equal to the trusted anchor; each signature and issuer name; the intermediate is a CA
   (read only after its signature verifies). A certificate that ``cryptography`` cannot parse or
   inspect (bad version, duplicate or malformed extension) fails this check, never an internal
   error.
   ``tdx.pck.validity`` — all three certificates are inside their validity at ``now``.
3. ``tdx.collateral.root-ca-crl`` (signed by the root) and ``…root-ca-crl.validity``;
   ``tdx.collateral.pck-crl`` (a PCK CRL from the leaf's issuer, signed by the chain's
   intermediate) and ``…pck-crl.validity``; ``tdx.pck.revocation`` — the leaf is not on the PCK CRL
   and the intermediate not on the root CRL.
4. ``tdx.signature.qe-report`` — the QE report is signed by the PCK leaf key (4.1.2.4.12).
   ``tdx.qe.report-data`` — QE REPORTDATA (all 64 bytes) = SHA-256(attestation key ‖ QE auth
   data) ‖ 32 zero bytes (4.1.2.4.13). ``tdx.signature.quote`` — the attestation key signed header‖body (4.1.2.4.16).
5. ``tdx.collateral.qe-identity.signature`` (by an Intel TCB Signing certificate the root issued)
   and ``…qe-identity.validity`` (issueDate ≤ now ≤ nextUpdate); ``tdx.qe.identity`` — the QE
   report matches the TD_QE identity and its ISVSVN reaches a QE TCB level (4.1.2.4.14-15).
6. ``tdx.tcb.fmspc`` — a TCB Info exists for the PCK leaf's FMSPC and its PCE-ID matches
   (4.1.2.4.10); ``tdx.collateral.tcb-info.signature``, ``…tcb-info.validity``;
   ``tdx.collateral.tcb-signing.validity`` — the TCB Signing certificate used is valid at ``now``
   and not on the root CRL; ``tdx.tcb.module`` — TDX module identity (4.1.2.4.11);
   ``tdx.tcb.level`` — a platform TCB level (and module TCB level) matches (4.1.2.4.17);
   ``tdx.tcb.status`` — the combined status (``tcb.combine``), with its advisory IDs, is one the
   policy accepts (after the optional OutOfDate grace date).
7. ``tdx.debug`` — TD_ATTRIBUTES bits 7:0 (the TUD group: DEBUG and the flags reserved beside it)
   are clear unless the policy allows debug TDs.
8. ``tdx.register.<name>`` — each register the policy lists equals one of its values; then one
   passed check per register the policy does not list ("not constrained by policy").
9. ``tdx.report-data`` — REPORTDATA equals ``expected_report_data`` (the Expat binding).

Stopping rule: a failure that leaves the evidence unauthenticated (format, chain, a CRL or
collateral signature, the QE report signature or binding, the quote signature, the QE identity)
ends the appraisal, so a forged quote never produces "passed" lines about its contents. Time
windows and revocation are reported and the appraisal goes on. Inside step 6 a failure (no TCB
Info for the FMSPC, bad TCB Info signature, module mismatch, no matching level) skips the rest of
step 6 only: the TD's own claims (7-9) are authenticated by then and are still reported.

Trust vector (draft-ietf-rats-ar4si): ``instance-identity`` 2 once the quote is authenticated to
Intel's root (96 if that fails); ``hardware`` 2 for UpToDate, 32 for another recognised status,
96 for Revoked, 97 when no TCB level matches; ``configuration`` 2 without DEBUG, 32 for an allowed
debug TD, 96 for a forbidden one; ``executables`` 2/96 when the policy lists registers (no claim
otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import warnings
from datetime import UTC, datetime
from typing import Any, NoReturn

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from atls_proxy.errors import DecodeError
from atls_proxy.verify.hardware import HardwareVerifier
from atls_proxy.verify.policy import DEFAULT_POLICY_ID
from atls_proxy.verify.result import Appraisal, Check, Tier
from atls_proxy.verify.tdx import tcb
from atls_proxy.verify.tdx.collateral import (
    CERT_ERRORS,
    Crl,
    IsvTcbLevel,
    SignedDoc,
    SigningCert,
    TcbInfo,
    TdxTrust,
    crl_signed_by,
    ecdsa_verify,
    issued_by,
)
from atls_proxy.verify.tdx.pck import PckExtensions, pck_extensions
from atls_proxy.verify.tdx.policy import REGISTER_NAMES, TdxPolicy
from atls_proxy.verify.tdx.quote import INTEL_QE_VENDOR_ID, TdxQuote, parse_quote

logger = logging.getLogger(__name__)

EVIDENCE_TYPE = "tdx"
# No registered media type exists for a raw TDX quote (spec digest §4 table); this project's own.
MEDIA_TYPE = "application/vnd.atls-proxy.tdx-quote"

# The PCK chain in a DCAP quote is leaf, PCK Platform/Processor CA, Intel SGX Root CA.
PCK_CHAIN_LENGTH = 3
# QVL 4.1.2.4.4: the PCK leaf's CN contains this phrase.
PCK_LEAF_CN_PHRASE = "SGX PCK Certificate"
PCK_CA_NAMES = ("Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA")
# TDX Module 1.5 ABI, TDREPORT_STRUCT.TDINFO.ATTRIBUTES: bits 7:0 are the TUD ("TD under debug")
# group — bit 0 is DEBUG, bits 7:1 are reserved for further TUD flags — and a TD with any TUD bit
# set is not trustworthy. All eight are read as debug (fail closed on a future flag).
TD_ATTRIBUTES_DEBUG = 0x01
TD_ATTRIBUTES_TUD = 0xFF

TV_INSTANCE_IDENTITY = "instance-identity"
TV_HARDWARE = "hardware"
TV_CONFIGURATION = "configuration"
TV_EXECUTABLES = "executables"
# AR4SI hardware value 97: "the Verifier does not recognise the Attester's hardware or firmware".
TV_UNRECOGNIZED = 97
# QVL 4.1.2.4.13 (QuoteVerifier.cpp, verifyQeReportData): the QE report's 64-byte REPORTDATA is
# SHA-256(attestation key ‖ QE authentication data) followed by 32 zero bytes.
QE_REPORT_DATA_PADDING = bytes(32)


class _Stop(Exception):
    """Internal: the appraisal cannot go on (the failed check is already recorded)."""


def _fmt_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _window(not_before: datetime, not_after: datetime) -> str:
    return f"{_fmt_time(not_before)} .. {_fmt_time(not_after)}"


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


class _Appraiser:
    """One appraisal: the checks in report order (module docstring)."""

    def __init__(
        self,
        appraisal: Appraisal,
        policy: TdxPolicy,
        trust: TdxTrust,
        now: datetime,
        expected_report_data: bytes | None,
    ) -> None:
        self.a = appraisal
        self.policy = policy
        self.trust = trust
        self.now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        self.expected_report_data = expected_report_data
        self.tv = appraisal.trust_vector
        # Collateral (TCB Info, QE Identity) found outside its issueDate..nextUpdate window.
        self.stale: list[str] = []
        # Set by qe_identity(): the TCB Signing certificate and QE TCB level it used.
        self.qe_signer: SigningCert | None = None
        self.qe_level: IsvTcbLevel | None = None

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
        """Record a failed check that leaves the evidence unauthenticated, and end the appraisal."""
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

    def in_window(self, not_before: datetime, not_after: datetime) -> bool:
        return not_before <= self.now <= not_after

    # -- the checks ---------------------------------------------------------------------------

    def run(self, evidence: bytes) -> None:
        quote = self.format(evidence)
        chain = self.pck_chain(quote)
        leaf, intermediate, _root = chain
        self.pck_validity(chain)
        self.crls(leaf, intermediate)
        self.quote_signatures(quote, leaf)
        self.qe_identity(quote)
        self.tv[TV_INSTANCE_IDENTITY] = int(Tier.AFFIRMING)
        self.tcb_checks(quote, leaf)
        self.debug(quote)
        self.registers(quote)
        self.report_data(quote)

    def format(self, evidence: bytes) -> TdxQuote:
        try:
            quote = parse_quote(evidence)
        except DecodeError as exc:
            self.stop("tdx.quote.format", str(exc), observed=f"{len(evidence)} bytes")
        if quote.qe_vendor_id != INTEL_QE_VENDOR_ID:
            self.stop(
                "tdx.quote.format",
                "QE vendor ID is not Intel's: only Intel's TD Quoting Enclave is supported",
                observed=quote.qe_vendor_id.hex(),
                expected=INTEL_QE_VENDOR_ID.hex(),
            )
        self.add("tdx.quote.format", True, quote.describe(), observed=f"{len(evidence)} bytes")
        if quote.trailing:
            kind = "zero" if not any(quote.trailing) else "non-zero"
            self.add(
                "tdx.quote.trailing-bytes",
                True,
                f"{len(quote.trailing)} {kind} bytes after the signature data are not signed "
                "and were ignored",
                observed=quote.trailing[:32].hex() + ("…" if len(quote.trailing) > 32 else ""),
            )
        return quote

    def pck_chain(
        self, quote: TdxQuote
    ) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
        name = "tdx.pck.chain"
        anchor = self.trust.root
        expected = f"leaf → PCK CA → Intel SGX Root CA (sha256 {_fingerprint(anchor)})"
        try:
            certs = x509.load_pem_x509_certificates(quote.pck_chain_pem)
        except CERT_ERRORS as exc:
            self.stop(name, f"PCK chain PEM does not parse: {exc}", expected=expected)
        if len(certs) != PCK_CHAIN_LENGTH:
            self.stop(name, f"PCK chain has {len(certs)} certificates, not 3", expected=expected)
        leaf, ca, root = certs
        try:
            # cryptography warns (UserWarning, to stderr) about a malformed name attribute in a
            # peer's certificate; the chain check judges the certificate, the warning is noise a
            # peer could repeat at will.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                observed = " → ".join(_cn(c.subject) for c in certs)
                problem = self.chain_problem(leaf, ca, root)
        except CERT_ERRORS as exc:  # names, keys and extensions parse lazily
            self.stop(name, f"a PCK chain certificate is malformed: {exc}", expected=expected)
        self.need(
            name,
            not problem,
            problem or "signatures verify up to the trusted root",
            observed=observed,
            expected=expected,
        )
        return leaf, ca, root

    def chain_problem(
        self, leaf: x509.Certificate, ca: x509.Certificate, root: x509.Certificate
    ) -> str:
        """Why leaf → ca → root is not a chain to the trusted anchor ("" when it is).

        Signatures first: the intermediate's extensions are read only once the trusted root's
        signature covers them (QVL verifies the chain before reading certificate contents), so
        a forged intermediate is rejected for its signature, not inspected. Raises one of
        ``CERT_ERRORS`` for a certificate that does not parse (the caller fails the check).
        """
        if root.public_bytes(Encoding.DER) != self.trust.root_der:
            return (
                f"the chain's root (sha256 {_fingerprint(root)}) is not the trusted Intel SGX "
                f"Root CA from {self.trust.root_source}"
            )
        if not issued_by(ca, self.trust.root):
            return "intermediate's signature does not verify with the Intel SGX Root CA key"
        if _cn(ca.subject) not in PCK_CA_NAMES:
            return "intermediate is not an Intel SGX PCK Platform/Processor CA"
        if not _is_ca(ca):
            return "intermediate is not a CA (basicConstraints)"
        if PCK_LEAF_CN_PHRASE not in _cn(leaf.subject):
            return f"leaf CN does not contain {PCK_LEAF_CN_PHRASE!r}"
        if not issued_by(leaf, ca):
            return "leaf's signature does not verify with the PCK CA key"
        # Parse the leaf's whole extension list now that the PCK CA's signature covers it: a
        # duplicated or malformed extension (RFC 5280 §4.2) makes the certificate invalid and
        # fails this check, rather than surfacing later when the SGX extension is read.
        len(leaf.extensions)
        key = leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            return "PCK leaf key is not P-256"
        return ""

    def pck_validity(self, chain: tuple[x509.Certificate, ...]) -> None:
        bad = [
            f"{_cn(c.subject)} valid {_window(c.not_valid_before_utc, c.not_valid_after_utc)}"
            for c in chain
            if not self.in_window(c.not_valid_before_utc, c.not_valid_after_utc)
        ]
        leaf = chain[0]
        self.add(
            "tdx.pck.validity",
            not bad,
            ("outside validity at now: " + "; ".join(bad))
            if bad
            else "all three certificates valid",
            observed=_fmt_time(self.now),
            expected=f"PCK leaf {_window(leaf.not_valid_before_utc, leaf.not_valid_after_utc)}"
            if not bad
            else "every certificate inside its validity",
        )

    def crl_validity(self, name: str, crl: Crl) -> None:
        last, nxt = crl.crl.last_update_utc, crl.crl.next_update_utc
        assert nxt is not None  # parse_crl insists on nextUpdate
        ok = self.in_window(last, nxt)
        self.add(
            name,
            ok,
            f"{crl.source}: "
            + ("current" if ok else "not current at now (stale or not yet valid)"),
            observed=_fmt_time(self.now),
            expected=f"thisUpdate..nextUpdate {_window(last, nxt)}",
        )

    def crls(self, leaf: x509.Certificate, intermediate: x509.Certificate) -> None:
        trust = self.trust
        self.need(
            "tdx.collateral.root-ca-crl",
            trust.root_crl_signed_by_root,
            f"{trust.root_crl.source}: "
            + (
                "signed by the Intel SGX Root CA"
                if trust.root_crl_signed_by_root
                else "not issued and signed by the trusted Intel SGX Root CA"
            ),
            observed=trust.root_crl.crl.issuer.rfc4514_string(),
            expected=trust.root.subject.rfc4514_string(),
        )
        self.crl_validity("tdx.collateral.root-ca-crl.validity", trust.root_crl)

        pck_crl = next((c for c in trust.pck_crls if c.crl.issuer == leaf.issuer), None)
        have = ", ".join(_cn(c.crl.issuer) for c in trust.pck_crls)
        if pck_crl is None:
            self.stop(
                "tdx.collateral.pck-crl",
                f"no PCK CRL from the leaf's issuer in the collateral (have: {have})",
                observed=_cn(leaf.issuer),
                expected=have,
            )
        ok = crl_signed_by(pck_crl, intermediate)
        self.need(
            "tdx.collateral.pck-crl",
            ok,
            f"{pck_crl.source}: "
            + (
                "signed by the chain's PCK CA"
                if ok
                else "signature does not verify with the PCK CA key"
            ),
            observed=_cn(pck_crl.crl.issuer),
            expected=_cn(intermediate.subject),
        )
        self.crl_validity("tdx.collateral.pck-crl.validity", pck_crl)

        revoked = []
        if leaf.serial_number in pck_crl.revoked_serials:
            revoked.append(f"PCK leaf serial {leaf.serial_number:x} is on {pck_crl.source}")
        if intermediate.serial_number in trust.root_crl.revoked_serials:
            revoked.append(
                f"PCK CA serial {intermediate.serial_number:x} is on {trust.root_crl.source}"
            )
        self.add(
            "tdx.pck.revocation",
            not revoked,
            "; ".join(revoked) if revoked else "neither the PCK leaf nor the PCK CA is revoked",
            observed=f"leaf serial {leaf.serial_number:x}",
            expected="not on the PCK CRL / root CA CRL",
        )

    def quote_signatures(self, quote: TdxQuote, leaf: x509.Certificate) -> None:
        self.need(
            "tdx.signature.qe-report",
            ecdsa_verify(leaf.public_key(), quote.qe_report_signature, quote.qe_report.raw),
            "QE report signature by the PCK leaf key",
            observed=quote.qe_report_signature.hex(),
        )
        # QVL 4.1.2.4.13: all 64 bytes are compared, the zero upper half included (a QE
        # report whose upper half is not zero is not the one the QE produces for this key).
        digest = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
        want = digest + QE_REPORT_DATA_PADDING
        have = quote.qe_report.report_data
        self.need(
            "tdx.qe.report-data",
            hmac.compare_digest(have, want),
            "QE REPORTDATA = SHA-256(attestation key ‖ QE auth data) ‖ 32 zero bytes",
            observed=have.hex(),
            expected=want.hex(),
        )
        key: ec.EllipticCurvePublicKey | None
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b"\x04" + quote.attestation_key
            )
        except ValueError:
            key = None
        self.need(
            "tdx.signature.quote",
            key is not None and ecdsa_verify(key, quote.signature, quote.signed),
            "ECDSA-P256 signature over header ‖ body by the attestation key"
            if key is not None
            else "attestation key is not a P-256 point",
            observed=quote.signature.hex(),
            expected=f"attestation key {quote.attestation_key.hex()}",
        )

    # -- collateral signatures ----------------------------------------------------------------

    def signer_for(self, doc: SignedDoc) -> SigningCert | None:
        """The root-issued signing certificate that verified ``doc``, preferring a current one."""
        candidates = [self.trust.signers[i] for i in doc.verified_by]
        candidates = [s for s in candidates if s.issued_by_root]
        current = [
            s
            for s in candidates
            if self.in_window(s.cert.not_valid_before_utc, s.cert.not_valid_after_utc)
            and s.cert.serial_number not in self.trust.root_crl.revoked_serials
        ]
        chosen = current or candidates
        return chosen[0] if chosen else None

    def doc_checks(self, doc: SignedDoc, stop: bool) -> SigningCert | None:
        prefix = f"tdx.collateral.{doc.kind}"
        signer = self.signer_for(doc)
        if signer is None:
            detail = (
                f"{doc.source}: the signature does not verify with any TCB Signing certificate "
                "issued by the trusted root"
            )
        else:
            detail = (
                f"{doc.source}: signed by {signer.source} "
                f"(TCB Signing, valid {_window(signer.cert.not_valid_before_utc, signer.cert.not_valid_after_utc)})"
            )
        observed, expected = doc.signature.hex(), "Intel SGX TCB Signing key"
        if signer is None:
            if stop:
                self.stop(f"{prefix}.signature", detail, observed, expected)
            self.add(f"{prefix}.signature", False, detail, observed, expected)
            return None
        self.add(f"{prefix}.signature", True, detail, observed, expected)
        ok = self.in_window(doc.issue_date, doc.next_update)
        if not ok:
            self.stale.append(doc.kind)
        self.add(
            f"{prefix}.validity",
            ok,
            f"{doc.source}: "
            + (
                f"current (tcbEvaluationDataNumber {doc.evaluation_data_number})"
                if ok
                else (
                    "expired: nextUpdate has passed"
                    if self.now > doc.next_update
                    else "not yet valid: issueDate is in the future"
                )
            ),
            observed=_fmt_time(self.now),
            expected=f"issueDate..nextUpdate {_window(doc.issue_date, doc.next_update)}",
        )
        return signer

    def qe_identity(self, quote: TdxQuote) -> None:
        identity = self.trust.qe_identity
        self.qe_signer = self.doc_checks(identity.doc, stop=True)
        match = tcb.match_qe(identity, quote.qe_report)
        o = match.outcome
        self.need("tdx.qe.identity", o.ok, o.detail, o.observed, o.expected)
        assert match.level is not None
        self.qe_level = match.level

    def tcb_checks(self, quote: TdxQuote, leaf: x509.Certificate) -> None:
        try:
            ext = pck_extensions(leaf)
        except DecodeError as exc:
            self.add("tdx.tcb.fmspc", False, str(exc))
            return
        info = self.trust.tcb_infos.get(ext.fmspc)
        if info is None:
            have = ", ".join(f.hex() for f in self.trust.tcb_infos)
            self.add(
                "tdx.tcb.fmspc",
                False,
                "no TCB Info for this platform's FMSPC in the collateral",
                observed=f"fmspc {ext.fmspc.hex()}",
                expected=have,
            )
            self.tv[TV_HARDWARE] = TV_UNRECOGNIZED
            return
        if not self.add(
            "tdx.tcb.fmspc",
            ext.pce_id == info.pce_id,
            f"{info.doc.source}: "
            + ("FMSPC and PCE-ID match" if ext.pce_id == info.pce_id else "PCE-ID differs"),
            observed=f"fmspc {ext.fmspc.hex()} pceid {ext.pce_id.hex()}",
            expected=f"fmspc {info.fmspc.hex()} pceid {info.pce_id.hex()}",
        ):
            return
        signer = self.doc_checks(info.doc, stop=False)
        if signer is None:
            return
        self.signing_validity([s for s in (self.qe_signer, signer) if s is not None])
        self.tcb_levels(quote, ext, info)

    def signing_validity(self, signers: list[SigningCert]) -> None:
        bad: list[str] = []
        seen: list[SigningCert] = []
        for s in signers:
            if s in seen:
                continue
            seen.append(s)
            c = s.cert
            if not self.in_window(c.not_valid_before_utc, c.not_valid_after_utc):
                bad.append(
                    f"{s.source} outside its validity {_window(c.not_valid_before_utc, c.not_valid_after_utc)}"
                )
            if c.serial_number in self.trust.root_crl.revoked_serials:
                bad.append(f"{s.source} is on {self.trust.root_crl.source}")
        self.add(
            "tdx.collateral.tcb-signing.validity",
            not bad,
            "; ".join(bad)
            if bad
            else "TCB Signing certificate(s) current and not revoked: "
            + ", ".join(s.source for s in seen),
            observed=_fmt_time(self.now),
            expected="inside validity, not on the root CA CRL",
        )

    def tcb_levels(self, quote: TdxQuote, ext: PckExtensions, info: TcbInfo) -> None:
        module = tcb.match_module(info, quote.body)
        o = module.outcome
        if not self.add("tdx.tcb.module", o.ok, o.detail, o.observed, o.expected):
            self.tv[TV_HARDWARE] = int(Tier.CONTRAINDICATED)
            return
        assert module.identity is not None
        levels = tcb.match_levels(info, ext, quote.body, module.identity)
        o = levels.outcome
        if not self.add("tdx.tcb.level", o.ok, o.detail, o.observed, o.expected):
            self.tv[TV_HARDWARE] = TV_UNRECOGNIZED
            return
        assert self.qe_level is not None  # qe_identity() stops the appraisal without one
        verdict = tcb.combine(info, quote.body, levels, self.qe_level)
        self.tcb_status(verdict)

    def tcb_status(self, verdict: tcb.TcbVerdict) -> None:
        policy = self.policy
        status = verdict.status
        effective = status
        grace = policy.out_of_date_grace_until
        grace_note = ""
        if grace is not None and status in (tcb.OUT_OF_DATE, tcb.OUT_OF_DATE_CONFIGURATION_NEEDED):
            if self.now <= grace:
                effective = (
                    tcb.UP_TO_DATE if status == tcb.OUT_OF_DATE else tcb.CONFIGURATION_NEEDED
                )
                grace_note = f"; within the OutOfDate grace period (until {_fmt_time(grace)})"
            else:
                grace_note = f"; the OutOfDate grace period ended {_fmt_time(grace)}"
        ok = effective in policy.accepted_tcb_statuses
        if self.stale:
            grace_note += (
                f"; computed from collateral that is not current ({', '.join(self.stale)}): "
                "see the validity checks"
            )
        advisories = ", ".join(verdict.advisory_ids) or "none"
        expected = " | ".join(s for s in tcb.TCB_STATUSES if s in policy.accepted_tcb_statuses)
        if grace is not None:
            expected += f" (OutOfDate accepted until {_fmt_time(grace)})"
        self.add(
            "tdx.tcb.status",
            ok,
            f"{verdict.explanation}; advisories: {advisories}{grace_note}"
            + ("" if ok else "; the policy does not accept this TCB status"),
            observed=status + (f" [{advisories}]" if verdict.advisory_ids else ""),
            expected=expected,
        )
        if status == tcb.REVOKED:
            self.tv[TV_HARDWARE] = int(Tier.CONTRAINDICATED)
        elif status == tcb.UP_TO_DATE and not self.stale:
            self.tv[TV_HARDWARE] = int(Tier.AFFIRMING)
        else:
            self.tv[TV_HARDWARE] = int(Tier.WARNING)

    # -- the TD's own claims ------------------------------------------------------------------

    def debug(self, quote: TdxQuote) -> None:
        attrs = quote.body.td_attributes
        tud = attrs[0] & TD_ATTRIBUTES_TUD
        is_debug = tud != 0
        debug_bit = "set" if tud & TD_ATTRIBUTES_DEBUG else "clear"
        reserved = tud & ~TD_ATTRIBUTES_DEBUG
        observed = f"TD_ATTRIBUTES {attrs.hex()} (DEBUG {debug_bit}" + (
            f", reserved TUD bits {reserved:#04x})" if reserved else ")"
        )
        expected = "TUD bits 7:0 clear (DEBUG and the reserved TUD flags)"
        if not is_debug:
            self.add("tdx.debug", True, "production TD", observed=observed, expected=expected)
            self.tv[TV_CONFIGURATION] = int(Tier.AFFIRMING)
        elif self.policy.allow_debug:
            self.add(
                "tdx.debug",
                True,
                "TD under debug accepted: the policy sets allow_debug = true (the host can read its "
                "memory)",
                observed=observed,
                expected="allow_debug = true",
            )
            self.tv[TV_CONFIGURATION] = int(Tier.WARNING)
        else:
            self.add(
                "tdx.debug",
                False,
                "TD under debug (a TUD bit is set): the host can read and change its memory; the "
                "policy forbids debug TDs",
                observed=observed,
                expected=expected,
            )
            self.tv[TV_CONFIGURATION] = int(Tier.CONTRAINDICATED)

    def registers(self, quote: TdxQuote) -> None:
        present = quote.body.registers()
        matched = True
        for name in REGISTER_NAMES:
            accepted = self.policy.registers.get(name)
            value = present.get(name)
            if accepted is None:
                if value is not None:
                    self.add(
                        f"tdx.register.{name}",
                        True,
                        "not constrained by policy",
                        observed=value.hex(),
                    )
                continue
            expected = " | ".join(sorted(v.hex() for v in accepted))
            if value is None:
                ok, detail, observed = False, "absent from the evidence (TD 1.0 body)", "absent"
            else:
                ok = value in accepted
                detail = "" if ok else "not a value the policy accepts"
                observed = value.hex()
            matched = matched and ok
            self.add(f"tdx.register.{name}", ok, detail, observed=observed, expected=expected)
        if self.policy.registers:
            self.tv[TV_EXECUTABLES] = int(Tier.AFFIRMING if matched else Tier.CONTRAINDICATED)

    def report_data(self, quote: TdxQuote) -> None:
        observed = quote.body.report_data
        if self.expected_report_data is None:
            self.add(
                "tdx.report-data",
                True,
                "not checked: no binding (offline appraisal)",
                observed=observed.hex(),
            )
            return
        ok = hmac.compare_digest(observed, self.expected_report_data)
        self.add(
            "tdx.report-data",
            ok,
            "" if ok else "REPORTDATA does not carry this connection's binding",
            observed=observed.hex(),
            expected=self.expected_report_data.hex(),
        )


def _is_ca(cert: x509.Certificate) -> bool:
    """basicConstraints cA (RFC 5280 §4.2.1.9). A malformed extension list raises one of
    ``CERT_ERRORS`` (the caller reports the certificate as malformed)."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bc.ca


def appraise_tdx(
    evidence: bytes,
    *,
    policy: TdxPolicy,
    trust: TdxTrust,
    now: datetime,
    expected_report_data: bytes | None,
    policy_id: str = DEFAULT_POLICY_ID,
) -> Appraisal:
    """Appraise one TDX quote at time ``now`` (module docstring). Never raises for bad input.

    A naive ``now`` is taken as UTC.
    """
    appraisal = Appraisal(evidence_type=EVIDENCE_TYPE, policy_id=policy_id)
    try:
        _Appraiser(appraisal, policy, trust, now, expected_report_data).run(evidence)
    except _Stop:
        pass
    except Exception as exc:  # a bug, never bad evidence: fail closed and say so
        logger.exception("TDX verifier failed unexpectedly")
        appraisal.add(Check("tdx.internal-error", False, detail=f"{type(exc).__name__}: {exc}"))
    return appraisal


class TdxVerifier(HardwareVerifier[TdxPolicy, TdxTrust]):
    """The ``Verifier`` for TDX evidence (verify/hardware.py)."""

    accepted = ((MEDIA_TYPE, {}),)

    def run(self, evidence: bytes, **kwargs: Any) -> Appraisal:
        return appraise_tdx(evidence, **kwargs)
