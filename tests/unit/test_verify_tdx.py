"""TDX verifier against the real Intel TDX quotes and PCS collateral in ../shared/vectors.

Every TDX sample is appraised at the time the vectors README pins, with the outcome it states;
then each is tampered with (body byte, signature byte, wrong root, time moved past a
certificate, a register policy, report data) and must fail naming the right check. Collateral
folders are assembled in tmp_path in the layout ``load_tdx_trust`` documents.
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from atls_proxy.errors import ConfigError
from atls_proxy.ops.tdx_files import load_tdx_trust
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.tdx import TdxPolicy, TdxTrust, appraise_tdx, parse_quote

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")

ANCHOR = Path(__file__).resolve().parents[2] / "atls_proxy" / "verify" / "anchors"
INTEL = "roots/intel/"
SIGNERS = {
    INTEL + "IntelSGXTCBSigning-2018.der": "tcb_signing_2018.der",
    INTEL + "IntelSGXTCBSigning-2025.der": "tcb_signing_2025.der",
}
ROOT_CRL_2023 = INTEL + "IntelSGXRootCA.crl-2023-04-03.der"
ROOT_CRL_2025 = INTEL + "IntelSGXRootCA.crl-2025-03-20.der"
A10 = "tdx/automata/collateral-2025-10/"
A06 = "tdx/automata/collateral-2025-06/"
GTG = "tdx/go-tdx-guest/collateral/"
TRU = "tdx/trustee/collateral/"

COLLATERAL = {
    # name -> (TCB Info, QE Identity, PCK CRL, root CA CRL)
    "automata-2025-10": (
        A10 + "tcb_info.json",
        A10 + "identity.json",
        A10 + "pck_crl.der",
        ROOT_CRL_2025,
    ),
    "automata-2025-06-v4": (
        A06 + "tcbinfov3_00806f050000.json",
        A06 + "qe_td.json",
        A10 + "pck_crl.der",
        ROOT_CRL_2025,
    ),
    "automata-2025-06-v5": (
        A06 + "tcbinfov3_90C06F000000.json",
        A06 + "qe_td.json",
        A10 + "pck_crl.der",
        ROOT_CRL_2025,
    ),
    "go-tdx-guest-2023": (
        GTG + "sample_tcbInfo_response.json",
        GTG + "sample_qeIdentity_response.json",
        GTG + "pckcrl.der",
        ROOT_CRL_2023,
    ),
    "go-tdx-guest-v5": (
        GTG + "sample_tcbinfo_response_v5.json",
        GTG + "sample_qeIdentity_response.json",
        A10 + "pck_crl.der",
        ROOT_CRL_2025,
    ),
    "trustee-2025-10": (
        TRU + "tcbInfo.json",
        TRU + "enclaveIdentity.json",
        A10 + "pck_crl.der",
        ROOT_CRL_2025,
    ),
}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass(frozen=True)
class Case:
    quote: str
    collateral: str
    time: str
    # What the README states (or, where it is silent, what Intel's rules give: see the notes).
    status: str | None  # combined TCB status; None when TCB evaluation cannot finish
    advisories: tuple[str, ...]
    failures: tuple[str, ...]  # failed checks under the default policy, in report order


OOD_ADV = ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986")
CASES = {
    # README "Full DCAP appraisal outcomes": the cleanest full appraisal.
    "quotev4-2025-10": Case(
        "tdx/automata/quotev4.hex",
        "automata-2025-10",
        "2025-10-20T00:00:00Z",
        "OutOfDate",
        OOD_ADV,
        ("tdx.tcb.status",),
    ),
    # README: the only PCK CRL (2025-10-13..11-12) is not yet valid at the source's time.
    "quotev4-2025-06": Case(
        "tdx/automata/quotev4.hex",
        "automata-2025-06-v4",
        "2025-06-05T03:45:00Z",
        "OutOfDate",
        OOD_ADV,
        ("tdx.collateral.pck-crl.validity", "tdx.tcb.status"),
    ),
    # README: signatures and chain verify, no TCB level matches.
    "spr-e4": Case(
        "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
        "go-tdx-guest-2023",
        "2023-07-01T01:00:00Z",
        None,
        (),
        ("tdx.tcb.level",),
    ),
    # README: rejected for the expired QE Identity. The only PCK CRLs are stale then, too.
    "v5-sample": Case(
        "tdx/go-tdx-guest/quote_v5_sample.dat",
        "go-tdx-guest-v5",
        "2026-02-03T01:00:00Z",
        "UpToDate",
        (),
        ("tdx.collateral.pck-crl.validity", "tdx.collateral.qe-identity.validity"),
    ),
    # README: OutOfDate, no advisories.
    "trustee-quote-6": Case(
        "tdx/trustee/tdx_quote_6.dat",
        "trustee-2025-10",
        "2025-11-05T00:00:00Z",
        "OutOfDate",
        (),
        ("tdx.tcb.status",),
    ),
    # README: FMSPC mismatch for these three (quote 4 is also a DEBUG TD).
    "trustee-quote-4": Case(
        "tdx/trustee/tdx_quote_4.dat",
        "trustee-2025-10",
        "2025-11-05T00:00:00Z",
        None,
        (),
        ("tdx.tcb.fmspc", "tdx.debug"),
    ),
    "trustee-quote-5": Case(
        "tdx/trustee/tdx_quote_5.dat",
        "trustee-2025-10",
        "2025-11-05T00:00:00Z",
        None,
        (),
        ("tdx.tcb.fmspc",),
    ),
    "dstack": Case(
        "tdx/dstack/tdx_quote",
        "trustee-2025-10",
        "2025-11-05T00:00:00Z",
        None,
        (),
        ("tdx.tcb.fmspc",),
    ),
    # README pairs these with collateral-2025-10 "around 2025-10-20" without stating an outcome.
    # Azure: TDX level and TDX_01 module level both OutOfDate (dcap-qvl refuses it only for
    # SEPT_VE_DISABLE, a TD-attribute policy this verifier does not apply).
    "azure": Case(
        "tdx/azure-trustee/td-quote.bin",
        "automata-2025-10",
        "2025-10-20T00:00:00Z",
        "OutOfDate",
        OOD_ADV,
        ("tdx.tcb.status",),
    ),
    # NOTE: UpToDate. The README's "no TDX sample here is UpToDate" does not hold for this
    # pairing: SGX components 07070202030100030…, PCESVN 11 and TEE_TCB_SVN 04 01 07 reach the
    # newest level of the 2025-10 TCB Info, the TDX_01 module ISVSVN 4 its newest level and the QE
    # ISVSVN 6 the QE identity's; dcap-qvl 0.7.0 reports UpToDate too (test_dcap_qvl_agrees).
    "cos-113": Case(
        "tdx/go-tdx-guest/ccel/cos-113-tdx-quote.dat",
        "automata-2025-10",
        "2025-10-20T00:00:00Z",
        "UpToDate",
        (),
        (),
    ),
    # Source verifies it at 2025-06-15 with collateral-2025-06; a strict verifier rejects the only
    # PCK CRL here (not yet valid then). The TCB itself is UpToDate by Intel's rules.
    "alibaba": Case(
        "tdx/automata/alibaba_quote_5.dat",
        "automata-2025-06-v5",
        "2025-06-15T00:00:00Z",
        "UpToDate",
        (),
        ("tdx.collateral.pck-crl.validity",),
    ),
}


def read_quote(name: str) -> bytes:
    data = (VECTORS / name).read_bytes()
    return bytes.fromhex(data.decode().strip()) if name.endswith(".hex") else data


def make_folder(tmp: Path, collateral: str) -> Path:
    tcb_info, qe_identity, pck_crl, root_crl = COLLATERAL[collateral]
    folder = tmp / collateral
    folder.mkdir(exist_ok=True)
    for src, dst in [
        (tcb_info, "tcb_info.json"),
        (qe_identity, "qe_identity.json"),
        (pck_crl, "pck_crl.der"),
        (root_crl, "root_ca_crl.der"),
        *SIGNERS.items(),
    ]:
        shutil.copyfile(VECTORS / src, folder / dst)
    return folder


_TRUST: dict[str, TdxTrust] = {}


def trust_for(tmp_path_factory: pytest.TempPathFactory, collateral: str) -> TdxTrust:
    if collateral not in _TRUST:
        _TRUST[collateral] = load_tdx_trust(make_folder(tmp_path_factory.mktemp("c"), collateral))
    return _TRUST[collateral]


def appraise(
    tmp_path_factory: pytest.TempPathFactory,
    case: Case,
    *,
    evidence: bytes | None = None,
    policy: TdxPolicy | None = None,
    trust: TdxTrust | None = None,
    now: datetime | None = None,
    expected: bytes | None = None,
) -> Appraisal:
    return appraise_tdx(
        evidence if evidence is not None else read_quote(case.quote),
        policy=policy or TdxPolicy(),
        trust=trust or trust_for(tmp_path_factory, case.collateral),
        now=now or at(case.time),
        expected_report_data=expected,
    )


def failed(a: Appraisal) -> tuple[str, ...]:
    return tuple(c.name for c in a.checks if not c.passed)


def get(a: Appraisal, name: str) -> str:
    check = next(c for c in a.checks if c.name == name)
    return check.observed or ""


# -- outcomes at the pinned times -------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_pinned_outcome(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    case = CASES[name]
    a = appraise(tmp_path_factory, case)
    assert failed(a) == case.failures, [c.to_json() for c in a.checks if not c.passed]
    names = [c.name for c in a.checks]
    for must in (
        "tdx.quote.format",
        "tdx.pck.chain",
        "tdx.signature.qe-report",
        "tdx.qe.report-data",
        "tdx.signature.quote",
        "tdx.qe.identity",
    ):
        assert must in names and must not in failed(a)
    if case.status is None:
        assert "tdx.tcb.status" not in names
    else:
        status = get(a, "tdx.tcb.status")
        assert status.split(" [")[0] == case.status
        assert all(adv in status for adv in case.advisories)
    assert names[-1] == "tdx.report-data"


def test_quotev4_accepted_when_policy_accepts_out_of_date(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    case = CASES["quotev4-2025-10"]
    a = appraise(tmp_path_factory, case)
    assert a.first_failure is not None and a.first_failure.name == "tdx.tcb.status"
    assert a.first_failure.observed == "OutOfDate [INTEL-SA-00960, INTEL-SA-00982, INTEL-SA-00986]"
    relaxed = TdxPolicy(accepted_tcb_statuses=frozenset({"UpToDate", "OutOfDate"}))
    a = appraise(tmp_path_factory, case, policy=relaxed)
    assert a.passed, failed(a)
    assert a.trust_vector["hardware"] == 32
    grace = TdxPolicy(out_of_date_grace_until=at("2025-12-31T00:00:00Z"))
    assert appraise(tmp_path_factory, case, policy=grace).passed


def test_trailing_bytes_reported(tmp_path_factory: pytest.TempPathFactory) -> None:
    a = appraise(tmp_path_factory, CASES["spr-e4"])
    trailing = next(c for c in a.checks if c.name == "tdx.quote.trailing-bytes")
    assert trailing.passed and trailing.detail.startswith("39 non-zero bytes")
    a = appraise(tmp_path_factory, CASES["quotev4-2025-10"])
    assert (
        "3065 zero bytes"
        in next(c for c in a.checks if c.name == "tdx.quote.trailing-bytes").detail
    )


def test_body_fields_match_expected_json() -> None:
    q = parse_quote(read_quote("tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat"))
    text = json.dumps(
        json.loads((VECTORS / "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.expected.json").read_text())
    )
    for value in (q.body.mrtd, q.body.rtmr0, q.body.report_data, q.body.tee_tcb_svn):
        assert value.hex() in text.lower()
    v5 = parse_quote(read_quote("tdx/go-tdx-guest/quote_v5_sample.dat"))
    assert v5.version == 5 and v5.body_type == 3 and v5.body.tee_tcb_svn2 is not None


def test_cos113_report_data_is_the_nonce(tmp_path_factory: pytest.TempPathFactory) -> None:
    nonce = (VECTORS / "tdx/go-tdx-guest/ccel/nonce.dat").read_bytes()
    a = appraise(tmp_path_factory, CASES["cos-113"], expected=nonce)
    assert a.passed and a.trust_vector == {
        "instance-identity": 2,
        "hardware": 2,
        "configuration": 2,
    }


# -- tampering: every sample must fail at the right check -------------------------------------


def assert_stopped_at(a: Appraisal, case: Case, name: str) -> None:
    """The appraisal ended at failed check ``name``; earlier failures are the untampered ones."""
    assert a.checks[-1].name == name and not a.checks[-1].passed
    assert set(failed(a)[:-1]) <= set(case.failures)


def _signed_end(evidence: bytes) -> int:
    q = parse_quote(evidence)
    return len(q.signed)


@pytest.mark.parametrize("name", CASES)
def test_flipped_body_byte(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    evidence = bytearray(read_quote(CASES[name].quote))
    evidence[_signed_end(bytes(evidence)) - 100] ^= 0x01  # inside REPORTDATA
    a = appraise(tmp_path_factory, CASES[name], evidence=bytes(evidence))
    assert_stopped_at(a, CASES[name], "tdx.signature.quote")
    assert a.trust_vector["instance-identity"] == 96


@pytest.mark.parametrize("name", CASES)
def test_flipped_signature_byte(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    evidence = bytearray(read_quote(CASES[name].quote))
    evidence[_signed_end(bytes(evidence)) + 4 + 10] ^= 0x80  # r of the quote signature
    a = appraise(tmp_path_factory, CASES[name], evidence=bytes(evidence))
    assert_stopped_at(a, CASES[name], "tdx.signature.quote")


@pytest.mark.parametrize("name", CASES)
def test_wrong_root(tmp_path_factory: pytest.TempPathFactory, name: str, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Intel SGX Root CA")])
    fake = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2018, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2049, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = make_folder(tmp_path, CASES[name].collateral)
    trust = load_tdx_trust(folder, anchor_pem=fake.public_bytes(Encoding.PEM))
    a = appraise(tmp_path_factory, CASES[name], trust=trust)
    assert failed(a) == ("tdx.pck.chain",) and a.checks[-1].name == "tdx.pck.chain"
    assert "not the trusted Intel SGX Root CA" in a.checks[-1].detail


@pytest.mark.parametrize("name", CASES)
def test_expired_pck_certificate(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    leaf = x509.load_pem_x509_certificates(
        parse_quote(read_quote(CASES[name].quote)).pck_chain_pem
    )[0]
    later = leaf.not_valid_after_utc + timedelta(seconds=1)
    a = appraise(tmp_path_factory, CASES[name], now=later)
    assert a.first_failure is not None and a.first_failure.name == "tdx.pck.validity"
    assert "Intel SGX PCK Certificate valid" in a.first_failure.detail
    before = leaf.not_valid_before_utc - timedelta(seconds=1)
    a = appraise(tmp_path_factory, CASES[name], now=before)
    assert a.first_failure is not None and a.first_failure.name == "tdx.pck.validity"


@pytest.mark.parametrize("name", CASES)
def test_register_not_in_policy(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    case = CASES[name]
    mrtd = parse_quote(read_quote(case.quote)).body.mrtd
    other = bytes([mrtd[0] ^ 0xFF]) + mrtd[1:]
    a = appraise(tmp_path_factory, case, policy=TdxPolicy(registers={"mrtd": frozenset({other})}))
    assert failed(a) == (*case.failures, "tdx.register.mrtd")
    check = next(c for c in a.checks if c.name == "tdx.register.mrtd")
    assert check.observed == mrtd.hex() and check.expected == other.hex()
    a = appraise(
        tmp_path_factory, case, policy=TdxPolicy(registers={"mrtd": frozenset({other, mrtd})})
    )
    assert failed(a) == case.failures


@pytest.mark.parametrize("name", CASES)
def test_report_data_mismatch(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    case = CASES[name]
    rd = parse_quote(read_quote(case.quote)).body.report_data
    a = appraise(tmp_path_factory, case, expected=rd)
    assert failed(a) == case.failures
    wrong = bytes([rd[0] ^ 1]) + rd[1:]
    a = appraise(tmp_path_factory, case, expected=wrong)
    assert failed(a) == (*case.failures, "tdx.report-data")


def test_collateral_expiry_names_the_item(tmp_path_factory: pytest.TempPathFactory) -> None:
    case = CASES["quotev4-2025-10"]
    # QE Identity nextUpdate 2025-11-12T10:46:47Z, PCK CRL 2025-11-12T10:45:32Z,
    # TCB Info 2025-11-18T17:48:50Z.
    a = appraise(tmp_path_factory, case, now=at("2025-11-15T00:00:00Z"))
    assert failed(a) == (
        "tdx.collateral.pck-crl.validity",
        "tdx.collateral.qe-identity.validity",
        "tdx.tcb.status",
    )
    a = appraise(tmp_path_factory, case, now=at("2025-11-20T00:00:00Z"))
    assert "tdx.collateral.tcb-info.validity" in failed(a)
    a = appraise(tmp_path_factory, case, now=at("2025-10-19T00:00:00Z"))  # before TCB Info issue
    assert "tdx.collateral.tcb-info.validity" in failed(a)
    detail = next(c for c in a.checks if c.name == "tdx.collateral.tcb-info.validity").detail
    assert "not yet valid" in detail


def _patch_ca_in_place(evidence: bytes, old: bytes, new: bytes) -> bytes:
    """Replace ``old`` by ``new`` (same length) in the DER of the quote's PCK CA certificate,
    keeping the PEM's line layout so that no size field of the quote changes. The PEM chain is
    not covered by any signature in the quote: only the chain check can judge it."""
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    start = evidence.index(begin, evidence.index(begin) + 1) + len(begin)  # the second: the CA
    stop = evidence.index(end, start)
    body = evidence[start:stop]
    der = bytearray(base64.b64decode(b"".join(body.split())))
    at = der.index(old)
    der[at : at + len(old)] = new
    letters = iter(base64.b64encode(bytes(der)))
    patched = bytes(c if c in b"\r\n" else next(letters) for c in body)
    return evidence[:start] + patched + evidence[stop:]


def test_pck_ca_with_invalid_version_fails_the_chain(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # X.509 version field 5 in the real PCK Platform CA: cryptography 50 raises InvalidVersion
    # (not a ValueError) while loading the chain; it must be a failed tdx.pck.chain.
    case = CASES["cos-113"]
    evidence = _patch_ca_in_place(
        read_quote(case.quote), bytes.fromhex("a003020102"), bytes.fromhex("a003020105")
    )
    a = appraise(tmp_path_factory, case, evidence=evidence)
    assert failed(a) == ("tdx.pck.chain",)
    assert "version" in a.checks[-1].detail


def test_sgx_quote_is_not_tdx(tmp_path_factory: pytest.TempPathFactory) -> None:
    evidence = (VECTORS / "sgx/trustee/occlum_quote.dat").read_bytes()
    a = appraise(tmp_path_factory, CASES["quotev4-2025-10"], evidence=evidence)
    assert failed(a) == ("tdx.quote.format",) and len(a.checks) == 1


# -- trust material ---------------------------------------------------------------------------


def test_shipped_anchor_equals_vector_root() -> None:
    shipped = x509.load_pem_x509_certificate((ANCHOR / "intel_sgx_root_ca.pem").read_bytes())
    vector = x509.load_pem_x509_certificate((VECTORS / INTEL / "IntelSGXRootCA.pem").read_bytes())
    assert shipped.public_bytes(Encoding.DER) == vector.public_bytes(Encoding.DER)
    assert "44:A0:19:6B" in (ANCHOR / "intel_sgx_root_ca.pem").read_text()


def test_loader_layout_errors(tmp_path: Path) -> None:
    folder = make_folder(tmp_path, "automata-2025-10")
    assert load_tdx_trust(folder).tcb_infos
    with pytest.raises(ConfigError, match="collateral folder is required"):
        load_tdx_trust(None)
    (folder / "qe_identity.json").rename(folder / "qe.json")
    with pytest.raises(ConfigError, match="qe_identity") as exc:
        load_tdx_trust(folder)
    assert exc.value.key == str(folder)
    (folder / "qe.json").rename(folder / "qe_identity.json")
    (folder / "tcb_info_bad.json").write_text('{"tcbInfo": {}, "signature": "00"}')
    with pytest.raises(ConfigError, match="does not parse") as exc:
        load_tdx_trust(folder)
    assert exc.value.key.endswith("tcb_info_bad.json")
    (folder / "tcb_info_bad.json").unlink()
    shutil.copyfile(folder / "tcb_info.json", folder / "tcb_info_copy.json")
    with pytest.raises(ConfigError, match="two TCB Infos for FMSPC 00806f050000"):
        load_tdx_trust(folder)
    (folder / "tcb_info_copy.json").unlink()
    for f in folder.glob("tcb_signing*"):
        f.unlink()
    with pytest.raises(ConfigError, match="no Intel SGX TCB Signing certificate"):
        load_tdx_trust(folder)


def test_loader_issuer_chain_and_root_override(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = make_folder(tmp_path, "automata-2025-10")
    for f in folder.glob("tcb_signing*"):
        f.unlink()
    signing = x509.load_der_x509_certificate(
        (VECTORS / INTEL / "IntelSGXTCBSigning-2025.der").read_bytes()
    )
    root_pem = (VECTORS / INTEL / "IntelSGXRootCA.pem").read_bytes()
    # As the PCS serves it in the TCB-Info-Issuer-Chain header (URL-decoded): signer, then root.
    (folder / "tcb_info_issuer_chain.pem").write_bytes(
        signing.public_bytes(Encoding.PEM) + root_pem
    )
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "intel_sgx_root_ca.pem").write_bytes(root_pem)
    trust = load_tdx_trust(folder, certs)
    assert trust.root_source.endswith("intel_sgx_root_ca.pem") and len(trust.signers) == 1
    a = appraise(tmp_path_factory, CASES["quotev4-2025-10"], trust=trust)
    assert failed(a) == ("tdx.tcb.status",)
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Other Root")])
    fake = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(other.public_key())
        .serial_number(7)
        .not_valid_before(datetime(2020, 1, 1))
        .not_valid_after(datetime(2040, 1, 1))
        .sign(other, hashes.SHA256())
    )
    (folder / "tcb_info_issuer_chain.pem").write_bytes(
        signing.public_bytes(Encoding.PEM) + fake.public_bytes(Encoding.PEM)
    )
    with pytest.raises(ConfigError, match="differs from the trusted anchor"):
        load_tdx_trust(folder, certs)


# -- independent cross-check ------------------------------------------------------------------


def _raw_span(text: str, key: str) -> str:
    decoder = json.JSONDecoder()
    start = text.index(":", text.index(f'"{key}"')) + 1
    while text[start].isspace():
        start += 1
    return text[start : decoder.raw_decode(text, start)[1]]


@pytest.mark.parametrize("name", ["quotev4-2025-10", "trustee-quote-6", "cos-113"])
def test_dcap_qvl_agrees(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    dcap_qvl = pytest.importorskip("dcap_qvl")
    case = CASES[name]
    tcb_info, qe_identity, pck_crl, root_crl = COLLATERAL[case.collateral]
    root = (VECTORS / INTEL / "IntelSGXRootCA.pem").read_text() + "\n"
    signer = x509.load_der_x509_certificate(
        (VECTORS / INTEL / "IntelSGXTCBSigning-2025.der").read_bytes()
    )
    chain = signer.public_bytes(Encoding.PEM).decode() + root
    t, q = (VECTORS / tcb_info).read_text(), (VECTORS / qe_identity).read_text()
    collateral = dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=root,
        root_ca_crl=(VECTORS / root_crl).read_bytes(),
        pck_crl=(VECTORS / pck_crl).read_bytes(),
        tcb_info_issuer_chain=chain,
        tcb_info=_raw_span(t, "tcbInfo"),
        tcb_info_signature=bytes.fromhex(json.loads(t)["signature"]),
        qe_identity_issuer_chain=chain,
        qe_identity=_raw_span(q, "enclaveIdentity"),
        qe_identity_signature=bytes.fromhex(json.loads(q)["signature"]),
    )
    theirs = dcap_qvl.verify(read_quote(case.quote), collateral, int(at(case.time).timestamp()))
    ours = get(appraise(tmp_path_factory, case), "tdx.tcb.status")
    assert ours.split(" [")[0] == theirs.status
    assert ours == theirs.status + (
        f" [{', '.join(theirs.advisory_ids)}]" if theirs.advisory_ids else ""
    )
