"""TPM 2.0 quote verifier (verification only: TPMS_ATTEST + TPMT_SIGNATURE + PCR values).

Public API (the integrator wires these in; see docs/VERIFIERS-TPM.md):

* ``MEDIA_TYPE`` — the CMW media type of this project's TPM evidence map (``evidence.py``).
* ``TpmPolicy`` / ``parse_tpm_policy`` — the ``[tpm]`` policy section.
* ``TpmTrust`` / ``build_tpm_trust`` / ``parse_ak_file`` — the trusted attestation keys
  (``atls_proxy.ops.tpm_files.load_tpm_trust`` reads them from a folder).
* ``TpmEvidence`` / ``encode_evidence`` / ``decode_evidence`` / ``evidence_from_json`` — the
  evidence encoding and the JSON readers (trustee swtpm, Azure vTPM).
* ``parse_quote`` / ``parse_signature`` — TPMS_ATTEST and TPMT_SIGNATURE.
* ``parse_hcl_report`` — the Azure HCL report and its HCLAkPub.
* ``appraise_tpm`` — one evidence in, an ``Appraisal`` out, never raises for bad input.
* ``TpmVerifier`` — the ``Verifier`` protocol class; ``qualifying_data`` — the extraData it expects
  for an Expat binding (the TPM attester, ``atls_proxy.attest.tpm``, quotes over the same value).
"""

from __future__ import annotations

from atls_proxy.verify.tpm.azure import HclReport, parse_hcl_report
from atls_proxy.verify.tpm.evidence import (
    TpmEvidence,
    decode_evidence,
    encode_evidence,
    evidence_from_json,
)
from atls_proxy.verify.tpm.policy import TpmPolicy, parse_tpm_policy
from atls_proxy.verify.tpm.structures import (
    KNOWN_SOFTWARE_TPM_FIRMWARE,
    Quote,
    TpmSignature,
    parse_quote,
    parse_signature,
)
from atls_proxy.verify.tpm.trust import (
    TpmTrust,
    TrustedAk,
    build_tpm_trust,
    parse_ak_file,
)
from atls_proxy.verify.tpm.verifier import (
    EVIDENCE_TYPE,
    MEDIA_TYPE,
    TpmVerifier,
    appraise_tpm,
    qualifying_data,
)

__all__ = [
    "EVIDENCE_TYPE",
    "KNOWN_SOFTWARE_TPM_FIRMWARE",
    "MEDIA_TYPE",
    "HclReport",
    "Quote",
    "TpmEvidence",
    "TpmPolicy",
    "TpmSignature",
    "TpmTrust",
    "TpmVerifier",
    "TrustedAk",
    "appraise_tpm",
    "build_tpm_trust",
    "decode_evidence",
    "encode_evidence",
    "evidence_from_json",
    "parse_ak_file",
    "parse_hcl_report",
    "parse_quote",
    "parse_signature",
    "parse_tpm_policy",
    "qualifying_data",
]
