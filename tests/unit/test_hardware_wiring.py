"""The relying party appraises hardware evidence: a policy's [tdx] section and [trust.tdx] folder
become a TdxVerifier, and a CMW record of the TDX media type is appraised by it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from atls_proxy.expat.binding import Binding
from atls_proxy.expat.cmw import IND_EVIDENCE, CMWRecord, encode_cmw
from atls_proxy.ops.evidence import read_evidence, verifiers_for_policy
from atls_proxy.ops.policyfile import load_policy
from atls_proxy.verify.appraise import appraise_cmw
from atls_proxy.verify.tdx import MEDIA_TYPE

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")


def test_policy_tdx_section_wires_a_verifier_into_connection_appraisal(tmp_path: Path) -> None:
    col = tmp_path / "collateral"
    col.mkdir()
    a = VECTORS / "tdx" / "automata" / "collateral-2025-10"
    for dst, src in {
        "tcb_info.json": a / "tcb_info.json",
        "qe_identity.json": a / "identity.json",
        "pck_crl.der": a / "pck_crl.der",
        "root_ca_crl.der": VECTORS / "roots" / "intel" / "IntelSGXRootCA.crl-2025-03-20.der",
        "tcb_signing-2025.der": VECTORS / "roots" / "intel" / "IntelSGXTCBSigning-2025.der",
    }.items():
        shutil.copy(src, col / dst)
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(
        '[tdx]\naccepted_tcb_statuses = ["UpToDate", "OutOfDate"]\n\n[trust.tdx]\ncollateral = "collateral"\n'
    )
    verifiers = verifiers_for_policy(load_policy(policy_file), policy_file)
    assert [type(v).__name__ for v in verifiers] == ["TdxVerifier"]

    quote = read_evidence(VECTORS / "tdx" / "automata" / "quotev4.hex")
    cmw = encode_cmw(CMWRecord(MEDIA_TYPE, quote, IND_EVIDENCE))
    binding = Binding("sha256", b"\x11" * 32, b"\x22" * 32)
    (appraisal,) = appraise_cmw(cmw, binding, verifiers, time.time())
    names = [c.name for c in appraisal.checks]
    assert "tdx.signature.quote" in names and "cmw.media-type" in names
    # The vector's REPORTDATA is not this connection's binding (and its collateral is old by now):
    # the connection must fail, never pass.
    assert not appraisal.passed
