"""Intel TDX quote verifier (DCAP quote v4 and v5, TD 1.0 and TD 1.5 bodies).

Public API (the integrator wires these in; see docs/VERIFIERS-TDX.md):

* ``MEDIA_TYPE`` — the CMW media type of a raw TDX quote.
* ``TdxPolicy`` / ``parse_tdx_policy`` — the ``[tdx]`` policy section.
* ``TdxTrust`` / ``build_tdx_trust`` — root, CRLs, TCB Info, QE Identity (``atls_proxy.ops.
  tdx_files.load_tdx_trust`` reads them from folders).
* ``appraise_tdx`` — one quote in, an ``Appraisal`` out, never raises for bad input.
* ``TdxVerifier`` — the ``Verifier`` protocol class.
"""

from __future__ import annotations

from atls_proxy.verify.tdx.collateral import (
    Crl,
    QeIdentity,
    TcbInfo,
    TdxTrust,
    build_tdx_trust,
    parse_certificates,
    parse_crl,
    parse_qe_identity,
    parse_tcb_info,
)
from atls_proxy.verify.tdx.policy import REGISTER_NAMES, TdxPolicy, parse_tdx_policy
from atls_proxy.verify.tdx.quote import TdxQuote, parse_quote
from atls_proxy.verify.tdx.tcb import TCB_STATUSES
from atls_proxy.verify.tdx.verifier import EVIDENCE_TYPE, MEDIA_TYPE, TdxVerifier, appraise_tdx

__all__ = [
    "EVIDENCE_TYPE",
    "MEDIA_TYPE",
    "REGISTER_NAMES",
    "TCB_STATUSES",
    "Crl",
    "QeIdentity",
    "TcbInfo",
    "TdxPolicy",
    "TdxQuote",
    "TdxTrust",
    "TdxVerifier",
    "appraise_tdx",
    "build_tdx_trust",
    "parse_certificates",
    "parse_crl",
    "parse_qe_identity",
    "parse_quote",
    "parse_tcb_info",
    "parse_tdx_policy",
]
