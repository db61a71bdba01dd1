"""Appraisal of a TPM 2.0 quote (TPMS_ATTEST + TPMT_SIGNATURE + PCR values) against trusted AKs.

Theory of operation
-------------------
``appraise_tpm`` never raises for bad input: every problem is a failed, named ``Check``. Trust
flows from an operator-trusted attestation key (AK; ``trust.py`` says why it is trusted) to the
quote it signed, from the quote's pcrDigest to the PCR values supplied beside it, and from its
extraData (qualifying data) to the connection. There is no TPM access here: verification only.
The checks, in order:

1. ``tpm.evidence.format`` — the CBOR evidence map (``evidence.decode_evidence``).
2. ``tpm.quote.format`` — TPMS_ATTEST parses as a quote: magic TPM_GENERATED_VALUE, type
   TPM_ST_ATTEST_QUOTE (TPM 2.0 Part 2 §10.12.12), and the TPMT_SIGNATURE parses (§11.3.4).
   Then ``tpm.quote.trailing-bytes`` (passed) when bytes follow either structure; only the
   structure's own bytes are verified.
3. ``tpm.ak.trusted`` — the AK is a trusted one: the evidence's AK hint (key 5) must be a trusted
   AK; without a hint every trusted AK of the signature's key type is a candidate.
4. ``tpm.signature.algorithm`` — the scheme fits the AK type (RSASSA/RSAPSS: RSA; ECDSA: EC) and
   the signing hash is one the policy accepts (no SHA-1 by default).
5. ``tpm.signature.quote`` — the AK's signature over exactly the TPMS_ATTEST bytes verifies
   (RSASSA-PKCS1-v1_5, RSASSA-PSS with any salt length, or ECDSA, with the TPMT_SIGNATURE hash).
6. ``tpm.firmware`` — firmwareVersion is not a known software TPM's (libtpms/swtpm), unless the
   policy allows software TPMs; clockInfo is reported.
7. ``tpm.pcr.bank`` — the quote selects exactly one bank, the evidence's PCR values are of that
   bank, and it is the policy's ``pcr_bank``.
8. ``tpm.pcr.digest`` — pcrDigest equals H(PCR[i₁] ‖ PCR[i₂] ‖ …) over the selected PCRs in
   selection order (ascending index), H being the signing scheme's hash (Part 3 §18.4, TPM2_Quote:
   "the digest is computed using the hash of the signing scheme"). Supplied PCRs the quote does
   not select are not covered by the signature: the detail lists them; they are never judged.
9. ``tpm.register.pcr<N>`` — each PCR the policy lists: selected by the quote and equal to one of
   its values; then one passed check per other selected PCR ("not constrained by policy").
10. ``tpm.report-data`` — extraData equals ``expected_report_data`` (``qualifying_data`` of the
    connection's binding, passed as qualifying data by the attester).

Stopping rule: a failure in 1-5, 7 or 8 ends the appraisal, so a forged quote or unauthenticated
PCR values never produce "passed" lines about their contents. ``tpm.firmware`` is reported and the
appraisal goes on.

Trust vector (draft-ietf-rats-ar4si): ``instance-identity`` 2 once a trusted AK's signature
verified (96 if not); ``hardware`` 32 (warning) — nothing in a quote proves the AK is in a
hardware TPM, that rests on how the operator came to trust it — or 96 for a refused software TPM;
``executables`` 2/96 when the policy lists PCRs (no claim otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import datetime
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from atls_proxy.errors import DecodeError
from atls_proxy.expat.binding import Binding
from atls_proxy.verify.hardware import HardwareVerifier
from atls_proxy.verify.policy import DEFAULT_POLICY_ID
from atls_proxy.verify.result import Appraisal, Check, Tier
from atls_proxy.verify.tpm.evidence import TpmEvidence, decode_evidence
from atls_proxy.verify.tpm.policy import TpmPolicy
from atls_proxy.verify.tpm.structures import (
    HASH_ALGS,
    KNOWN_SOFTWARE_TPM_FIRMWARE,
    TPM_ALG_ECDSA,
    TPM_ALG_RSAPSS,
    Quote,
    TpmSignature,
    parse_quote,
    parse_signature,
)
from atls_proxy.verify.tpm.trust import AkKey, TpmTrust, TrustedAk, load_spki, spki_der

logger = logging.getLogger(__name__)

# TPM2_Quote qualifying data (extraData) for an Expat binding: see ``qualifying_data``.
QUALIFYING_DATA_LABEL = b"atls-proxy tpm qualifying data v1"
QUALIFYING_DATA_SIZE = 32

EVIDENCE_TYPE = "tpm"
# No registered media type exists for a TPM quote with its PCR values (spec digest §4 table: the
# Veraison TPM types are other formats); this project's own CBOR map (evidence.py).
MEDIA_TYPE = "application/vnd.atls-proxy.tpm-quote+cbor"

TV_INSTANCE_IDENTITY = "instance-identity"
TV_HARDWARE = "hardware"
TV_EXECUTABLES = "executables"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


def qualifying_data(binding: Binding) -> bytes:
    """The TPM2_Quote qualifying data (extraData) that binds a quote to ``binding`` (32 bytes).

        qualifying_data = SHA-256("atls-proxy tpm qualifying data v1" ‖ 0x00 ‖ report_data)

    ``report_data`` is the 64-byte filling of docs/PROTOCOL.md §3 (``Binding.report_data``), so
    both the binder and the AIK hash are under the AK's signature, as expat-04 §5.1/§5.2 ask. The
    binder alone is not enough: in the cached tier the quoted "binder" is the epoch digest, which
    does not cover the TLS key, so a quote over it alone could be replayed by another server under
    its own key. The value is hashed to 32 bytes because TPM2B_DATA holds at most sizeof(TPMT_HA)
    bytes (Part 2 §10.4.3): 34 on a TPM whose largest hash is SHA-256, so the 64-byte filling (or
    a 48-byte SHA-384 binder) would be refused by most hardware TPMs.
    """
    return hashlib.sha256(QUALIFYING_DATA_LABEL + b"\x00" + binding.report_data()).digest()


class _Stop(Exception):
    """Internal: the appraisal cannot go on (the failed check is already recorded)."""


def verify_quote_signature(key: AkKey, sig: TpmSignature, signed: bytes) -> bool:
    """True when ``sig`` by ``key`` verifies over ``signed`` (the TPMS_ATTEST bytes)."""
    algorithm = _HASHES[sig.hash_name]()
    try:
        if sig.sig_alg == TPM_ALG_ECDSA:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            key.verify(encode_dss_signature(sig.r, sig.s), signed, ec.ECDSA(algorithm))
        else:
            if not isinstance(key, rsa.RSAPublicKey):
                return False
            pad: padding.AsymmetricPadding
            if sig.sig_alg == TPM_ALG_RSAPSS:
                # TPM 2.0 Part 1 §B.7: the salt is as large as the key and hash allow, or the
                # digest size; AUTO accepts any salt length the signature encodes.
                pad = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO)
            else:
                pad = padding.PKCS1v15()
            key.verify(sig.signature, signed, pad, algorithm)
    except (InvalidSignature, ValueError):
        return False
    return True


def pcr_digest(hash_name: str, quote: Quote, values: dict[int, bytes]) -> bytes:
    """H(concatenation of the selected PCR values, in selection order)."""
    h = hashlib.new(hash_name)
    for selection in quote.selections:
        for index in selection.pcrs:
            h.update(values[index])
    return h.digest()


def _key_type(key: AkKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    return f"EC {key.curve.name}"


class _Appraiser:
    """One appraisal: the checks in report order (module docstring)."""

    def __init__(
        self,
        appraisal: Appraisal,
        policy: TpmPolicy,
        trust: TpmTrust,
        expected_report_data: bytes | None,
    ) -> None:
        self.a = appraisal
        self.policy = policy
        self.trust = trust
        self.expected_report_data = expected_report_data
        self.tv = appraisal.trust_vector

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
        self.add(name, False, detail, observed, expected)
        raise _Stop

    def need(
        self,
        name: str,
        passed: bool,
        detail: str,
        observed: str | None = None,
        expected: str | None = None,
    ) -> None:
        if not passed:
            self.stop(name, detail, observed, expected)
        self.add(name, True, detail, observed, expected)

    def run(self, evidence: bytes) -> None:
        try:
            ev = decode_evidence(evidence)
        except DecodeError as exc:
            self.stop("tpm.evidence.format", str(exc), observed=f"{len(evidence)} bytes")
        self.add(
            "tpm.evidence.format",
            True,
            f"TPMS_ATTEST {len(ev.attest)} bytes, TPMT_SIGNATURE {len(ev.signature)} bytes, "
            f"{len(ev.pcrs)} {ev.pcr_bank} PCR value(s)"
            + (", AK hint" if ev.ak_spki is not None else ""),
        )
        try:
            quote = parse_quote(ev.attest)
            sig = parse_signature(ev.signature)
        except DecodeError as exc:
            self.stop("tpm.quote.format", str(exc), observed=ev.attest[:16].hex() + "…")
        banks = ", ".join(
            f"{s.hash_name}:{','.join(map(str, s.pcrs)) or '-'}" for s in quote.selections
        )
        self.add(
            "tpm.quote.format",
            True,
            f"TPM_ST_ATTEST_QUOTE from qualifiedSigner {quote.qualified_signer.hex()}; "
            f"{sig.scheme}/{sig.hash_name} signature; selection {banks or '(empty)'}",
            observed=f"magic 0xff544347 type 0x8018, {len(quote.signed)} bytes",
        )
        trailing = []
        if quote.trailing:
            trailing.append(f"{len(quote.trailing)} bytes after TPMS_ATTEST")
        if sig.trailing:
            trailing.append(f"{len(sig.trailing)} bytes after TPMT_SIGNATURE")
        if trailing:
            self.add(
                "tpm.quote.trailing-bytes",
                True,
                "; ".join(trailing) + ": not signed, ignored",
                observed=(quote.trailing + sig.trailing)[:64].hex(),
            )
        candidates = self.ak(ev, sig)
        self.algorithm(sig, candidates)
        self.signature(quote, sig, candidates)
        self.firmware(quote)
        self.bank(ev, quote)
        self.digest(ev, quote, sig)
        self.registers(ev, quote)
        self.report_data(quote)

    # -- the AK and the signature -------------------------------------------------------------

    def ak(self, ev: TpmEvidence, sig: TpmSignature) -> list[TrustedAk]:
        if not self.trust.aks:
            self.tv[TV_INSTANCE_IDENTITY] = int(Tier.CONTRAINDICATED)
            self.stop("tpm.ak.trusted", "no trusted AK is configured", expected="a trusted AK")
        if ev.ak_spki is None:
            self.add(
                "tpm.ak.trusted",
                True,
                f"no AK in the evidence: trying the {len(self.trust.aks)} trusted AK(s)",
                expected=" | ".join(a.fingerprint for a in self.trust.aks),
            )
            return list(self.trust.aks)
        try:
            key = load_spki(ev.ak_spki, "the evidence's AK")
        except DecodeError as exc:
            self.tv[TV_INSTANCE_IDENTITY] = int(Tier.CONTRAINDICATED)
            self.stop("tpm.ak.trusted", str(exc), observed=ev.ak_spki[:32].hex() + "…")
        canonical = spki_der(key)
        found = self.trust.find(canonical)
        observed = f"{_key_type(key)} sha256(SPKI) {hashlib.sha256(canonical).hexdigest()}"
        if found is None:
            self.tv[TV_INSTANCE_IDENTITY] = int(Tier.CONTRAINDICATED)
            self.stop(
                "tpm.ak.trusted",
                "the evidence's AK is not one of the trusted AKs",
                observed=observed,
                expected=" | ".join(a.fingerprint for a in self.trust.aks),
            )
        self.add("tpm.ak.trusted", True, f"trusted AK from {found.source}", observed=observed)
        return [found]

    def algorithm(self, sig: TpmSignature, candidates: list[TrustedAk]) -> None:
        want = ec.EllipticCurvePublicKey if sig.sig_alg == TPM_ALG_ECDSA else rsa.RSAPublicKey
        fitting = [a for a in candidates if isinstance(a.key, want)]
        accepted = self.policy.accepted_signature_hashes
        problems = []
        if not fitting:
            kinds = ", ".join(sorted({_key_type(a.key) for a in candidates}))
            problems.append(f"a {sig.scheme} signature cannot come from the AK ({kinds})")
        if sig.hash_name not in accepted:
            problems.append(f"signing hash {sig.hash_name} is not accepted by the policy")
        self.need(
            "tpm.signature.algorithm",
            not problems,
            "; ".join(problems) or f"{sig.scheme} with {sig.hash_name}",
            observed=f"{sig.scheme}/{sig.hash_name}",
            expected="hash " + " | ".join(sorted(accepted)),
        )
        candidates[:] = fitting

    def signature(self, quote: Quote, sig: TpmSignature, candidates: list[TrustedAk]) -> None:
        observed = sig.signature.hex() if sig.signature else f"r={sig.r:x} s={sig.s:x}"
        for ak in candidates:
            if verify_quote_signature(ak.key, sig, quote.signed):
                self.add(
                    "tpm.signature.quote",
                    True,
                    f"{sig.scheme}/{sig.hash_name} signature over TPMS_ATTEST by the AK from "
                    f"{ak.source}",
                    observed=observed,
                    expected=f"AK sha256(SPKI) {ak.fingerprint}",
                )
                self.tv[TV_INSTANCE_IDENTITY] = int(Tier.AFFIRMING)
                self.tv[TV_HARDWARE] = int(Tier.WARNING)
                return
        self.tv[TV_INSTANCE_IDENTITY] = int(Tier.CONTRAINDICATED)
        self.stop(
            "tpm.signature.quote",
            f"the signature over TPMS_ATTEST verifies with none of {len(candidates)} candidate "
            "AK(s) (forged, tampered, or another TPM)",
            observed=observed,
            expected=" | ".join(a.fingerprint for a in candidates),
        )

    def firmware(self, quote: Quote) -> None:
        version = quote.firmware_version
        clock = (
            f"clock {quote.clock} ms, resetCount {quote.reset_count}, restartCount "
            f"{quote.restart_count}, safe {'yes' if quote.safe else 'no'}"
        )
        software = KNOWN_SOFTWARE_TPM_FIRMWARE.get(version)
        observed = f"firmwareVersion 0x{version:016x}"
        if software is None:
            self.add("tpm.firmware", True, f"not a known software TPM; {clock}", observed)
            return
        if self.policy.allow_software_tpm:
            self.add(
                "tpm.firmware",
                True,
                f"{software}; accepted: the policy sets allow_software_tpm = true; {clock}",
                observed,
                "allow_software_tpm = true",
            )
            return
        self.tv[TV_HARDWARE] = int(Tier.CONTRAINDICATED)
        self.add(
            "tpm.firmware",
            False,
            f"{software}; the policy does not set allow_software_tpm = true; {clock}",
            observed,
            "a hardware TPM",
        )

    # -- PCRs ---------------------------------------------------------------------------------

    def bank(self, ev: TpmEvidence, quote: Quote) -> None:
        selected = [s.hash_name for s in quote.selections if s.pcrs]
        problems = []
        if len(selected) != 1:
            problems.append(
                f"the quote selects {len(selected)} banks ({', '.join(selected) or 'none'}); "
                "the evidence carries values for exactly one"
            )
        elif selected[0] != ev.pcr_bank:
            problems.append(f"the quote selects {selected[0]}, the values are {ev.pcr_bank}")
        if ev.pcr_bank != self.policy.pcr_bank:
            problems.append(f"the policy's PCR bank is {self.policy.pcr_bank}")
        self.need(
            "tpm.pcr.bank",
            not problems,
            "; ".join(problems) or f"one {ev.pcr_bank} bank",
            observed=f"quote {', '.join(selected) or 'none'}; values {ev.pcr_bank}",
            expected=self.policy.pcr_bank,
        )

    def digest(self, ev: TpmEvidence, quote: Quote, sig: TpmSignature) -> None:
        selected = [i for s in quote.selections for i in s.pcrs]
        missing = [i for i in selected if i not in ev.pcrs]
        if missing:
            self.stop(
                "tpm.pcr.digest",
                f"PCR(s) {', '.join(map(str, missing))} are selected but their values are not "
                "in the evidence",
                observed=quote.pcr_digest.hex(),
            )
        computed = pcr_digest(HASH_ALGS[sig.hash_alg][0], quote, dict(ev.pcrs))
        ok = hmac.compare_digest(computed, quote.pcr_digest)
        extra = sorted(set(ev.pcrs) - set(selected))
        note = (
            f"; PCR(s) {', '.join(map(str, extra))} supplied but not selected: not covered, ignored"
            if extra
            else ""
        )
        self.need(
            "tpm.pcr.digest",
            ok,
            (
                f"{sig.hash_name}(selected PCRs) equals the signed pcrDigest"
                if ok
                else "the supplied PCR values do not hash to the signed pcrDigest"
            )
            + note,
            observed=computed.hex(),
            expected=quote.pcr_digest.hex(),
        )

    def registers(self, ev: TpmEvidence, quote: Quote) -> None:
        selected = sorted({i for s in quote.selections for i in s.pcrs})
        matched = True
        for index, accepted in self.policy.pcrs.items():
            expected = " | ".join(sorted(v.hex() for v in accepted))
            if index not in selected:
                matched = False
                self.add(
                    f"tpm.register.pcr{index}",
                    False,
                    "not selected by the quote: its value is not signed",
                    observed="not quoted",
                    expected=expected,
                )
                continue
            value = ev.pcrs[index]
            ok = value in accepted
            matched = matched and ok
            self.add(
                f"tpm.register.pcr{index}",
                ok,
                "" if ok else "not a value the policy accepts",
                observed=value.hex(),
                expected=expected,
            )
        for index in selected:
            if index not in self.policy.pcrs:
                self.add(
                    f"tpm.register.pcr{index}",
                    True,
                    "not constrained by policy",
                    observed=ev.pcrs[index].hex(),
                )
        if self.policy.pcrs:
            self.tv[TV_EXECUTABLES] = int(Tier.AFFIRMING if matched else Tier.CONTRAINDICATED)

    def report_data(self, quote: Quote) -> None:
        observed = quote.extra_data
        if self.expected_report_data is None:
            self.add(
                "tpm.report-data",
                True,
                "not checked: no binding (offline appraisal)",
                observed=observed.hex(),
            )
            return
        ok = hmac.compare_digest(observed, self.expected_report_data)
        self.add(
            "tpm.report-data",
            ok,
            "extraData (qualifying data) is the expected value"
            if ok
            else "extraData (qualifying data) does not carry this connection's binding",
            observed=observed.hex(),
            expected=self.expected_report_data.hex(),
        )


def appraise_tpm(
    evidence: bytes,
    *,
    policy: TpmPolicy,
    trust: TpmTrust,
    now: datetime,
    expected_report_data: bytes | None,
    policy_id: str = DEFAULT_POLICY_ID,
) -> Appraisal:
    """Appraise one TPM evidence map (module docstring). Never raises for bad input.

    ``expected_report_data`` is compared with extraData byte for byte (no padding). ``now`` is part
    of the common signature; a quote and bare AKs carry no validity window, so it is not used.
    """
    del now
    appraisal = Appraisal(evidence_type=EVIDENCE_TYPE, policy_id=policy_id)
    try:
        _Appraiser(appraisal, policy, trust, expected_report_data).run(evidence)
    except _Stop:
        pass
    except Exception as exc:  # a bug, never bad evidence: fail closed and say so
        logger.exception("TPM verifier failed unexpectedly")
        appraisal.add(Check("tpm.internal-error", False, detail=f"{type(exc).__name__}: {exc}"))
    return appraisal


class TpmVerifier(HardwareVerifier[TpmPolicy, TpmTrust]):
    """The ``Verifier`` for TPM evidence (verify/hardware.py)."""

    accepted = ((MEDIA_TYPE, {}),)

    def expected_data(self, expected: Binding) -> bytes:
        """The qualifying data (extraData) must be ``qualifying_data(expected)``."""
        return qualifying_data(expected)

    def run(self, evidence: bytes, **kwargs: Any) -> Appraisal:
        return appraise_tpm(evidence, **kwargs)
