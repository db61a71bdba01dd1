"""AMD SEV-SNP attestation report verifier (report versions 2-5; Milan, Genoa, Turin).

Public API (the integrator wires these in; see docs/VERIFIERS-SNP.md):

* ``MEDIA_TYPE`` — the CMW media type of a raw SEV-SNP report (``CERTS_MEDIA_TYPE``: the report
  with the host's GHCB certificate table).
* ``SnpPolicy`` / ``parse_snp_policy`` — the ``[snp]`` policy section.
* ``SnpTrust`` / ``build_snp_trust`` — trusted ARKs, ASK/ASVKs, VCEK/VLEKs, AMD CRLs
  (``atls_proxy.ops.snp_files.load_snp_trust`` reads them from folders).
* ``appraise_snp`` — one report in, an ``Appraisal`` out, never raises for bad input.
* ``SnpVerifier`` — the ``Verifier`` protocol class.
"""

from __future__ import annotations

from atls_proxy.verify.snp.certs import (
    AmdCert,
    VekExtensions,
    parse_amd_certificate,
    parse_amd_certificates,
    vek_extensions,
)
from atls_proxy.verify.snp.policy import (
    PRODUCTS,
    REGISTER_NAMES,
    REGISTER_SIZES,
    SnpPolicy,
    parse_snp_policy,
)
from atls_proxy.verify.snp.report import (
    AttestationReport,
    SnpEvidence,
    Tcb,
    decode_tcb,
    parse_report,
    parse_snp_evidence,
)
from atls_proxy.verify.snp.trust import SnpTrust, build_snp_trust, parse_amd_crl
from atls_proxy.verify.snp.verifier import (
    CERTS_MEDIA_TYPE,
    EVIDENCE_TYPE,
    MEDIA_TYPE,
    SnpVerifier,
    appraise_snp,
)

__all__ = [
    "CERTS_MEDIA_TYPE",
    "EVIDENCE_TYPE",
    "MEDIA_TYPE",
    "PRODUCTS",
    "REGISTER_NAMES",
    "REGISTER_SIZES",
    "AmdCert",
    "AttestationReport",
    "SnpEvidence",
    "SnpPolicy",
    "SnpTrust",
    "SnpVerifier",
    "Tcb",
    "VekExtensions",
    "appraise_snp",
    "build_snp_trust",
    "decode_tcb",
    "parse_amd_certificate",
    "parse_amd_certificates",
    "parse_amd_crl",
    "parse_report",
    "parse_snp_evidence",
    "parse_snp_policy",
    "vek_extensions",
]
