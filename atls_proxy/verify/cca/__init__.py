"""Arm CCA attestation token verifier (tag-399 collection of a platform and a realm token).

Public API (the integrator wires these in; see docs/VERIFIERS-CCA.md):

* ``MEDIA_TYPE`` — the CMW media type of a raw CCA token (also accepted: Veraison's
  ``VERAISON_MEDIA_TYPE``).
* ``CcaPolicy`` / ``parse_cca_policy`` — the ``[cca]`` policy section (``PlatformReference`` /
  ``RealmReference`` records of ``SwReference`` and register values, each matched whole).
* ``CcaTrust`` / ``build_cca_trust`` / ``parse_cpak_file`` — the trusted CPAK public keys
  (``atls_proxy.ops.cca_files.load_cca_trust`` reads them from a folder).
* ``appraise_cca`` — one token in, an ``Appraisal`` out, never raises for bad input.
* ``CcaVerifier`` — the ``Verifier`` protocol class.
"""

from __future__ import annotations

from atls_proxy.verify.cca.policy import (
    REGISTER_NAMES,
    CcaPolicy,
    PlatformReference,
    RealmReference,
    SwReference,
    parse_cca_policy,
)
from atls_proxy.verify.cca.token import LIFECYCLE_NAMES, CcaToken, parse_token
from atls_proxy.verify.cca.trust import (
    KNOWN_TEST_CPAKS,
    CcaTrust,
    TrustedCpak,
    build_cca_trust,
    jwk_public_key,
    parse_cpak_file,
)
from atls_proxy.verify.cca.verifier import (
    EVIDENCE_TYPE,
    MEDIA_TYPE,
    VERAISON_MEDIA_TYPE,
    CcaVerifier,
    appraise_cca,
)

__all__ = [
    "EVIDENCE_TYPE",
    "KNOWN_TEST_CPAKS",
    "LIFECYCLE_NAMES",
    "MEDIA_TYPE",
    "REGISTER_NAMES",
    "VERAISON_MEDIA_TYPE",
    "CcaPolicy",
    "CcaToken",
    "CcaTrust",
    "CcaVerifier",
    "PlatformReference",
    "RealmReference",
    "SwReference",
    "TrustedCpak",
    "appraise_cca",
    "build_cca_trust",
    "jwk_public_key",
    "parse_cca_policy",
    "parse_cpak_file",
    "parse_token",
]
