"""`atls-proxy verify-evidence` on the real hardware vectors: the acceptance outcomes, by CLI.

Collateral folders are built in tmp_path from ../shared/vectors with the layout documented in
docs/VERIFIERS-TDX.md. Skips cleanly when the vectors are absent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.procs import run_cli

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent"),
]


def _collateral(tmp: Path, files: dict[str, Path]) -> Path:
    d = tmp / "collateral"
    d.mkdir()
    for name, src in files.items():
        shutil.copy(src, d / name)
    return d


def _run(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    res = run_cli("verify-evidence", *args, "--json", timeout=60)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout)


def _checks(doc: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {c["name"]: c for c in doc["submods"]["evidence"]["atls.checks"]}


@pytest.fixture
def col_2025_10(tmp_path: Path) -> Path:
    a = VECTORS / "tdx" / "automata" / "collateral-2025-10"
    return _collateral(
        tmp_path,
        {
            "tcb_info.json": a / "tcb_info.json",
            "qe_identity.json": a / "identity.json",
            "pck_crl.der": a / "pck_crl.der",
            "root_ca_crl.der": VECTORS / "roots" / "intel" / "IntelSGXRootCA.crl-2025-03-20.der",
            "tcb_signing-2025.der": VECTORS / "roots" / "intel" / "IntelSGXTCBSigning-2025.der",
        },
    )


def test_tdx_quotev4_out_of_date_rejected_by_default(col_2025_10: Path) -> None:
    code, doc = _run(
        str(VECTORS / "tdx" / "automata" / "quotev4.hex"),
        "--format",
        "tdx",
        "--collateral",
        str(col_2025_10),
        "--at",
        "2025-10-20T00:00:00Z",
    )
    assert code == 1
    failed = doc["atls.failed-check"]
    assert failed["name"] == "tdx.tcb.status"
    for sa in ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986"):
        assert sa in failed["detail"]
    checks = _checks(doc)
    assert all(c["passed"] for n, c in checks.items() if n != "tdx.tcb.status")


def test_tdx_quotev4_passes_with_policy_accepting_out_of_date(
    col_2025_10: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[tdx]\naccepted_tcb_statuses = ["UpToDate", "OutOfDate"]\n')
    code, doc = _run(
        str(VECTORS / "tdx" / "automata" / "quotev4.hex"),
        "--format",
        "tdx",
        "--collateral",
        str(col_2025_10),
        "--policy",
        str(policy),
        "--at",
        "2025-10-20T00:00:00Z",
    )
    assert code == 0, doc["atls.failed-check"]
    # Accepted by this policy, but the TCB is OutOfDate (hardware 32): a warning, not affirming.
    assert doc["submods"]["evidence"]["ear.trustworthiness-vector"]["hardware"] == 32
    assert doc["ear.status"] == "warning"


def test_tdx_spr_e4_rejected_at_tcb_step(tmp_path: Path) -> None:
    g = VECTORS / "tdx" / "go-tdx-guest" / "collateral"
    col = _collateral(
        tmp_path,
        {
            "tcb_info.json": g / "sample_tcbInfo_response.json",
            "qe_identity.json": g / "sample_qeIdentity_response.json",
            "pck_crl.der": g / "pckcrl.der",
            "root_ca_crl.der": VECTORS / "roots" / "intel" / "IntelSGXRootCA.crl-2023-04-03.der",
            "tcb_signing-2018.der": VECTORS / "roots" / "intel" / "IntelSGXTCBSigning-2018.der",
        },
    )
    code, doc = _run(
        str(VECTORS / "tdx" / "go-tdx-guest" / "tdx_prod_quote_SPR_E4.dat"),
        "--format",
        "tdx",
        "--collateral",
        str(col),
        "--at",
        "2023-07-01T01:00:00Z",
    )
    assert code == 1
    checks = _checks(doc)
    for name in (
        "tdx.pck.chain",
        "tdx.signature.qe-report",
        "tdx.signature.quote",
        "tdx.collateral.tcb-info.signature",
    ):
        assert checks[name]["passed"], name
    assert doc["atls.failed-check"]["name"] == "tdx.tcb.level"
    assert (
        "trailing" in checks["tdx.quote.trailing-bytes"]["detail"]
        or checks["tdx.quote.trailing-bytes"]["passed"]
    )


def test_tdx_v5_sample_rejected_for_expired_qe_identity(tmp_path: Path) -> None:
    g = VECTORS / "tdx" / "go-tdx-guest" / "collateral"
    col = _collateral(
        tmp_path,
        {
            "tcb_info.json": g / "sample_tcbinfo_response_v5.json",
            "qe_identity.json": g / "sample_qeIdentity_response.json",
            "pck_crl.der": VECTORS / "tdx" / "automata" / "collateral-2025-10" / "pck_crl.der",
            "root_ca_crl.der": VECTORS / "roots" / "intel" / "IntelSGXRootCA.crl-2025-03-20.der",
            "tcb_signing-2018.der": VECTORS / "roots" / "intel" / "IntelSGXTCBSigning-2018.der",
            "tcb_signing-2025.der": VECTORS / "roots" / "intel" / "IntelSGXTCBSigning-2025.der",
        },
    )
    code, doc = _run(
        str(VECTORS / "tdx" / "go-tdx-guest" / "quote_v5_sample.dat"),
        "--format",
        "tdx",
        "--collateral",
        str(col),
        "--at",
        "2026-02-03T01:00:00Z",
    )
    assert code == 1
    qe = _checks(doc)["tdx.collateral.qe-identity.validity"]
    assert not qe["passed"] and "expired" in qe["detail"]


def _snp_certs(tmp: Path, vcek: Path) -> Path:
    d = tmp / "certs"
    d.mkdir()
    shutil.copy(vcek, d / vcek.name)
    shutil.copy(VECTORS / "roots" / "amd" / "ask_ark_milan.pem", d / "ask_ark_milan.pem")
    return d


@pytest.mark.parametrize("flip,check", [(None, None), (0x180, "tcb"), (42, "signature")])
def test_snp_trustee_report(tmp_path: Path, flip: int | None, check: str | None) -> None:
    src = VECTORS / "snp" / "trustee" / "test-report.bin"
    data = bytearray(src.read_bytes())
    if flip is not None:
        data[flip] = (data[flip] + 1) % 256
    report = tmp_path / "report.bin"
    report.write_bytes(bytes(data))
    certs = _snp_certs(tmp_path, VECTORS / "snp" / "trustee" / "test-vcek.der")
    code, doc = _run(
        str(report), "--format", "snp", "--certs", str(certs), "--at", "2024-06-01T00:00:00Z"
    )
    if check is None:
        assert code == 0, doc["atls.failed-check"]
    else:
        assert code == 1 and check in doc["atls.failed-check"]["name"], doc["atls.failed-check"]


def test_snp_debug_policy_rejected(tmp_path: Path) -> None:
    certs = _snp_certs(tmp_path, VECTORS / "snp" / "go-sev-guest" / "vcek.der")
    code, doc = _run(
        str(VECTORS / "snp" / "go-sev-guest" / "attestation.bin"),
        "--format",
        "snp",
        "--certs",
        str(certs),
        "--at",
        "2022-09-24T01:00:00Z",
    )
    assert code == 1 and doc["atls.failed-check"]["name"] == "snp.debug"
    failed = [c for c in _checks(doc).values() if not c["passed"]]
    assert [c["name"] for c in failed] == ["snp.debug"]  # every signature and chain check passed
