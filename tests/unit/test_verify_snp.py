"""SNP verifier against the real AMD SEV-SNP reports and certificates in ../shared/vectors.

Every SNP sample is appraised at the time the vectors README pins (or inside its VEK's validity),
with the outcome the README and the sources state; then each is tampered with (a signed byte, a
signature byte, REPORTED_TCB, a wrong root, time moved past each certificate, a register policy,
report data) and must fail naming the right check. Certificate folders are assembled in tmp_path
in the layout ``load_snp_trust`` documents, as the CLI's ``--certs`` folder would be.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import ConfigError
from atls_proxy.ops.snp_files import ANCHOR_FILES, load_snp_trust
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.snp import (
    SnpPolicy,
    SnpTrust,
    appraise_snp,
    parse_amd_certificate,
    parse_amd_certificates,
    parse_snp_evidence,
    vek_extensions,
)
from atls_proxy.verify.snp.certs import signature_problem

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")

ANCHORS = Path(__file__).resolve().parents[2] / "atls_proxy" / "verify" / "anchors"
AMD = "roots/amd/"


@dataclass(frozen=True)
class Sample:
    evidence: str
    certs: tuple[str, ...]
    at: datetime
    debug: bool = False
    hexfile: bool = False
    vek: str = "VCEK"


SAMPLES = {
    # Source-pinned time (README); the VCEK is valid from 2022-09-24T00:55:28Z.
    "go-sev-guest": Sample(
        "snp/go-sev-guest/attestation.bin",
        ("snp/go-sev-guest/vcek.der", AMD + "ask_ark_milan.pem"),
        datetime(2022, 9, 24, 1, 0, tzinfo=UTC),
        debug=True,
    ),
    "trustee": Sample(
        "snp/trustee/test-report.bin",
        ("snp/trustee/test-vcek.der", AMD + "ask_ark_milan.pem"),
        datetime(2024, 6, 1, tzinfo=UTC),
    ),
    # The VLEK is valid 2024-12-10..2025-12-10 only.
    "trustee-vlek": Sample(
        "snp/trustee/test-vlek-report.bin",
        ("snp/trustee/test-vlek.der", AMD + "ask_ark_milan_vlek.pem"),
        datetime(2025, 6, 1, tzinfo=UTC),
        vek="VLEK",
    ),
    "virtee": Sample(
        "snp/virtee-sev/report_milan.hex",
        ("snp/virtee-sev/vcek_milan.der",),  # the ASK/ARK are the shipped anchors
        datetime(2024, 6, 1, tzinfo=UTC),
        hexfile=True,
    ),
    "azure-hcl": Sample(
        "snp/azure-trustee/hcl-report.bin",
        ("snp/azure-trustee/vcek.pem",),  # Azure's VCEK+ASK+ARK bundle
        datetime(2024, 6, 1, tzinfo=UTC),
    ),
}


def evidence_of(sample: Sample) -> bytes:
    data = (VECTORS / sample.evidence).read_bytes()
    return bytes.fromhex(data.decode().strip()) if sample.hexfile else data


def certs_dir(tmp_path: Path, names: tuple[str, ...]) -> Path:
    folder = tmp_path / "certs"
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(VECTORS / name, folder / Path(name).name)
    return folder


def trust_for(tmp_path: Path, sample: Sample) -> SnpTrust:
    return load_snp_trust(None, certs_dir(tmp_path, sample.certs))


def appraise(
    evidence: bytes,
    trust: SnpTrust,
    at: datetime,
    policy: SnpPolicy | None = None,
    expected: bytes | None = None,
) -> Appraisal:
    return appraise_snp(
        evidence,
        policy=policy or SnpPolicy(),
        trust=trust,
        now=at,
        expected_report_data=expected,
    )


def failed(a: Appraisal) -> str:
    f = a.first_failure
    assert f is not None, "expected a failure"
    return f.name


def check(a: Appraisal, name: str) -> str:
    c = next(c for c in a.checks if c.name == name)
    return c.detail


def no_passed_after(a: Appraisal, name: str) -> None:
    """The appraisal stopped at ``name``: a forged report produces no later "passed" lines."""
    assert a.checks[-1].name == name and not a.checks[-1].passed


# -- the README's outcomes ---------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_vector_at_its_pinned_time(tmp_path: Path, key: str) -> None:
    sample = SAMPLES[key]
    a = appraise(evidence_of(sample), trust_for(tmp_path, sample), sample.at)
    names = [c.name for c in a.checks]
    for must in (
        "snp.chain.ark",
        "snp.chain.ask",
        "snp.chain.vek",
        "snp.chain.validity",
        "snp.vek.tcb",
        "snp.signature.report",
    ):
        assert next(c for c in a.checks if c.name == must).passed, must
    if sample.debug:
        # Every signature and chain check passes; the guest policy 0xb0000 allows debugging.
        assert failed(a) == "snp.debug"
        assert [c.name for c in a.checks if not c.passed] == ["snp.debug"]
        assert a.trust_vector["configuration"] == 96
    else:
        assert a.passed, a.first_failure
    assert a.trust_vector["instance-identity"] == 2
    assert names[-1] == "snp.report-data"
    assert check(a, "snp.report-data") == "not checked: no binding (offline appraisal)"
    assert sample.vek in check(a, "snp.vek")


def test_debug_sample_passes_when_debug_is_allowed(tmp_path: Path) -> None:
    sample = SAMPLES["go-sev-guest"]
    a = appraise(
        evidence_of(sample), trust_for(tmp_path, sample), sample.at, SnpPolicy(allow_debug=True)
    )
    assert a.passed, a.first_failure
    assert a.trust_vector["configuration"] == 32


def test_go_sev_guest_stated_fields() -> None:
    stated = json.loads((VECTORS / "snp/go-sev-guest/attestation.expected.json").read_text())
    report = parse_snp_evidence((VECTORS / "snp/go-sev-guest/attestation.bin").read_bytes()).report
    fields = stated["expected_fields"]
    assert report.chip_id.hex() == fields["chip_id"]
    assert report.id_key_digest.hex() == fields["id_key_digest"]
    assert report.policy == 0xB0000 and report.version == 2
    tcb = fields["reported_tcb"]
    assert report.reported_tcb.hex() == "0200000000000544"
    assert (tcb["bootloader"], tcb["tee"], tcb["snp"], tcb["microcode"]) == (2, 0, 5, 68)


def test_vlek_sample_reads_as_v3_with_cpuid(tmp_path: Path) -> None:
    sample = SAMPLES["trustee-vlek"]
    a = appraise(evidence_of(sample), trust_for(tmp_path, sample), sample.at)
    assert "v3" in check(a, "snp.report.format")
    assert check(a, "snp.cpuid") == "CPUID family/model are Milan"
    assert "not applicable" in check(a, "snp.vek.chip-id")
    assert "SEV-VLEK-Milan" in check(a, "snp.chain.ask")


def test_genoa_azure_evidence(tmp_path: Path) -> None:
    """The Genoa HCL report inside Azure's JSON evidence, with its VCEK and the shipped chain."""
    doc = json.loads((VECTORS / "snp/azure-trustee/evidence-genoa.json").read_text())
    folder = tmp_path / "genoa"
    folder.mkdir()
    (folder / "vcek.pem").write_text(doc["vcek"])
    a = appraise(
        bytes(doc["report"]), load_snp_trust(None, folder), datetime(2025, 6, 1, tzinfo=UTC)
    )
    assert a.passed, a.first_failure
    assert check(a, "snp.product") == "Genoa (from the issuer)"
    assert check(a, "snp.cpuid") == "CPUID family/model are Genoa"
    assert "SHA256" in check(a, "snp.azure-hcl.report-data")


# -- tampering ---------------------------------------------------------------------------------


def test_trustee_reported_tcb_and_signature_bytes(tmp_path: Path) -> None:
    """The trustee source's own two tamperings: REPORTED_TCB (0x180) and byte 42."""
    sample = SAMPLES["trustee"]
    trust = trust_for(tmp_path, sample)
    good = evidence_of(sample)
    tcb = bytearray(good)
    tcb[0x180] += 1
    a = appraise(bytes(tcb), trust, sample.at)
    assert failed(a) == "snp.vek.tcb" and "bootloader 4 ≠ 3" in a.first_failure.detail  # type: ignore[union-attr]
    no_passed_after(a, "snp.vek.tcb")
    flipped = bytearray(good)
    flipped[42] ^= 0x01
    b = appraise(bytes(flipped), trust, sample.at)
    assert failed(b) == "snp.signature.report"
    no_passed_after(b, "snp.signature.report")
    assert b.trust_vector["instance-identity"] == 96


@pytest.mark.parametrize("key", sorted(SAMPLES))
@pytest.mark.parametrize(
    ("offset", "check_name"),
    [
        (0x95, "snp.signature.report"),  # MEASUREMENT: signed body
        (0x2A0 + 5, "snp.signature.report"),  # R
        (0x2E8 + 5, "snp.signature.report"),  # S
        (0x1A0 + 3, "snp.vek.chip-id"),  # CHIP_ID against the VCEK's hwID
    ],
)
def test_tampered_byte_fails(tmp_path: Path, key: str, offset: int, check_name: str) -> None:
    sample = SAMPLES[key]
    evidence = bytearray(evidence_of(sample))
    base = 0x20 if key == "azure-hcl" else 0
    evidence[base + offset] ^= 0x10
    a = appraise(bytes(evidence), trust_for(tmp_path, sample), sample.at)
    if check_name == "snp.vek.chip-id" and sample.vek == "VLEK":
        check_name = "snp.signature.report"  # a VLEK has no hwID: only the signature catches it
    assert failed(a) == check_name
    no_passed_after(a, check_name)


def test_virtee_bit_flip(tmp_path: Path) -> None:
    """virtee/sev: flipping bit 0x80 of byte 21 breaks verification."""
    sample = SAMPLES["virtee"]
    evidence = bytearray(evidence_of(sample))
    evidence[21] ^= 0x80
    assert failed(appraise(bytes(evidence), trust_for(tmp_path, sample), sample.at)) == (
        "snp.signature.report"
    )


def test_azure_hcl_tamperings(tmp_path: Path) -> None:
    """trustee az-snp-vtpm: zeroing 0x1a6 (REPORTED_TCB.SNP) and changing the runtime claims."""
    sample = SAMPLES["azure-hcl"]
    trust = trust_for(tmp_path, sample)
    good = evidence_of(sample)
    a = appraise(good, trust, sample.at)
    assert "in an Azure HCL report" in check(a, "snp.report.format")
    assert "254 zero bytes" in check(a, "snp.report.trailing-bytes")
    zeroed = bytearray(good)
    zeroed[0x1A6] = 0
    assert failed(appraise(bytes(zeroed), trust, sample.at)) == "snp.vek.tcb"
    claims = bytearray(good)
    claims[0x6E0] += 1
    b = appraise(bytes(claims), trust, sample.at)
    assert failed(b) == "snp.azure-hcl.report-data"


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_register_not_in_policy(tmp_path: Path, key: str) -> None:
    sample = SAMPLES[key]
    policy = SnpPolicy(allow_debug=True, registers={"measurement": frozenset({bytes(48)})})
    a = appraise(evidence_of(sample), trust_for(tmp_path, sample), sample.at, policy)
    assert failed(a) == "snp.register.measurement"
    assert a.trust_vector["executables"] == 96


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_report_data_mismatch_and_match(tmp_path: Path, key: str) -> None:
    sample = SAMPLES[key]
    evidence = evidence_of(sample)
    trust = trust_for(tmp_path, sample)
    policy = SnpPolicy(allow_debug=True)
    a = appraise(evidence, trust, sample.at, policy, expected=bytes(64))
    assert failed(a) == "snp.report-data"
    actual = parse_snp_evidence(evidence).report.report_data
    assert appraise(evidence, trust, sample.at, policy, expected=actual).passed


@pytest.mark.parametrize(
    ("at", "names"),
    [
        (datetime(2030, 6, 1, tzinfo=UTC), ["VCEK"]),
        (datetime(2045, 10, 22, 18, 0, tzinfo=UTC), ["VCEK", "ARK"]),
        (datetime(2046, 1, 1, tzinfo=UTC), ["VCEK", "ASK", "ARK"]),
        (datetime(2023, 1, 1, tzinfo=UTC), ["VCEK"]),  # before the VCEK was issued
    ],
)
def test_certificate_validity_names_the_certificate(
    tmp_path: Path, at: datetime, names: list[str]
) -> None:
    sample = SAMPLES["trustee"]
    a = appraise(evidence_of(sample), trust_for(tmp_path, sample), at)
    assert failed(a) == "snp.chain.validity"
    detail = a.first_failure.detail  # type: ignore[union-attr]
    for role in ("VCEK", "ASK", "ARK"):
        assert (f"{role} (" in detail) == (role in names), detail
    # Validity is reported, not a stop: the report's own checks still run.
    assert a.checks[-1].name == "snp.report-data"


def test_expired_vlek(tmp_path: Path) -> None:
    sample = SAMPLES["trustee-vlek"]
    a = appraise(
        evidence_of(sample), trust_for(tmp_path, sample), datetime(2025, 12, 11, tzinfo=UTC)
    )
    assert failed(a) == "snp.chain.validity"
    assert "VLEK (SEV-VLEK) expired" in a.first_failure.detail  # type: ignore[union-attr]


def test_wrong_root(tmp_path: Path) -> None:
    sample = SAMPLES["trustee"]
    evidence = evidence_of(sample)
    # The trusted anchors are Genoa's only: there is no trusted ARK-Milan.
    genoa = [("genoa", (VECTORS / AMD / "ask_ark_genoa.pem").read_bytes())]
    trust = load_snp_trust(None, certs_dir(tmp_path, sample.certs), anchors=genoa)
    a = appraise(evidence, trust, sample.at)
    assert failed(a) == "snp.chain.ark"
    no_passed_after(a, "snp.chain.ark")
    # An ARK-Milan copy that is not the trusted one (here: the folder holds Turin's chain under
    # the VCEK, whose ASK then does not exist) fails at the ASK.
    folder = tmp_path / "turin"
    folder.mkdir()
    shutil.copy(VECTORS / "snp/trustee/test-vcek.der", folder)
    shutil.copy(VECTORS / AMD / "ask_ark_turin_vcek.pem", folder)
    turin_only = [("turin", (VECTORS / AMD / "ask_ark_turin_vcek.pem").read_bytes())]
    b = appraise(evidence, load_snp_trust(None, folder, anchors=turin_only), sample.at)
    assert failed(b) == "snp.chain.ark"
    # A VCEK claimed for Milan but checked against the Turin chain (policy pins Turin).
    c = appraise(
        evidence,
        load_snp_trust(None, certs_dir(tmp_path, sample.certs)),
        sample.at,
        SnpPolicy(product="Turin"),
    )
    assert failed(c) == "snp.product"


def test_vcek_from_another_chip(tmp_path: Path) -> None:
    """test-report.bin with go-sev-guest's VCEK: another chip (hwID) and TCB."""
    sample = SAMPLES["trustee"]
    names = ("snp/go-sev-guest/vcek.der", AMD + "ask_ark_milan.pem")
    a = appraise(evidence_of(sample), load_snp_trust(None, certs_dir(tmp_path, names)), sample.at)
    assert failed(a) == "snp.vek.chip-id"


def test_vcek_cache_folder_picks_the_right_one(tmp_path: Path) -> None:
    names = (
        "snp/go-sev-guest/vcek.der",
        "snp/trustee/test-vcek.der",
        "snp/virtee-sev/vcek_milan.der",
        "snp/trustee/test-vlek.der",
    )
    trust = load_snp_trust(None, certs_dir(tmp_path, names))
    for key in ("go-sev-guest", "trustee", "virtee", "trustee-vlek"):
        sample = SAMPLES[key]
        a = appraise(evidence_of(sample), trust, sample.at, SnpPolicy(allow_debug=True))
        assert a.passed, (key, a.first_failure)
        assert Path(sample.certs[0]).name in check(a, "snp.vek")


def test_no_vcek(tmp_path: Path) -> None:
    sample = SAMPLES["trustee"]
    a = appraise(evidence_of(sample), load_snp_trust(None, None), sample.at)
    assert failed(a) == "snp.vek"


# -- the certificates: our DER walker, the anchors ---------------------------------------------


def _crypto_cert(der: bytes) -> x509.Certificate:
    with warnings.catch_warnings():  # serial 0: deprecated in cryptography 44-50, may raise later
        warnings.simplefilter("ignore")
        return x509.load_der_x509_certificate(der)


VEK_FILES = [
    "snp/go-sev-guest/vcek.der",
    "snp/trustee/test-vcek.der",
    "snp/trustee/test-vlek.der",
    "snp/virtee-sev/vcek_milan.der",
    "snp/virtee-sev/vcek_turin.der",
]


@pytest.mark.parametrize(
    "name", VEK_FILES + [AMD + n for n in ("ask_ark_milan.pem", "ask_ark_turin_vlek.pem")]
)
def test_der_walker_agrees_with_cryptography(name: str) -> None:
    data = (VECTORS / name).read_bytes()
    for mine in parse_amd_certificates(data):
        try:
            theirs = _crypto_cert(mine.der)
        except ValueError:
            pytest.skip("this cryptography release no longer loads serial-0 certificates")
        with warnings.catch_warnings():  # cryptography warns when the serial is read
            warnings.simplefilter("ignore")
            serial = theirs.serial_number
        assert mine.tbs == theirs.tbs_certificate_bytes
        assert mine.signature == theirs.signature
        assert mine.serial == serial
        assert mine.not_before == theirs.not_valid_before_utc
        assert mine.not_after == theirs.not_valid_after_utc
        assert mine.spki == theirs.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
        assert mine.issuer == theirs.issuer.public_bytes()
        assert mine.subject_cn == theirs.subject.rfc4514_string().split(",")[0].removeprefix("CN=")


def test_vek_serials_are_zero_and_parse_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in VEK_FILES:
            cert = parse_amd_certificate((VECTORS / name).read_bytes())
            assert cert.serial == 0


def test_turin_vcek_extensions_and_chain() -> None:
    vcek = parse_amd_certificate((VECTORS / "snp/virtee-sev/vcek_turin.der").read_bytes())
    ext = vek_extensions(vcek)
    assert ext.product_name == "Turin" and ext.fmc_spl == 0 and ext.ucode_spl == 9
    assert ext.hwid is not None and ext.hwid.hex() == "1e550a8ee5cf9f4d"
    ask, ark = parse_amd_certificates((ANCHORS / "amd_turin_vcek.pem").read_bytes())
    assert signature_problem(vcek, ask) == ""
    assert signature_problem(ask, ark) == ""
    assert signature_problem(ark, ark) == ""
    assert signature_problem(vcek, ark) != ""


def test_vlek_extensions() -> None:
    vlek = parse_amd_certificate((VECTORS / "snp/trustee/test-vlek.der").read_bytes())
    ext = vek_extensions(vlek)
    assert ext.hwid is None and ext.csp_id == "CN=cc-us-east-2.amazonaws.com"
    assert (ext.bl_spl, ext.tee_spl, ext.snp_spl, ext.ucode_spl) == (4, 0, 24, 217)


@pytest.mark.parametrize("name", ANCHOR_FILES)
def test_shipped_anchor_equals_the_vector_copy(name: str) -> None:
    product, kind = name.removeprefix("amd_").removesuffix(".pem").split("_")
    vector = {
        ("milan", "vcek"): "ask_ark_milan.pem",
        ("milan", "vlek"): "ask_ark_milan_vlek.pem",
        ("genoa", "vcek"): "ask_ark_genoa.pem",
        ("genoa", "vlek"): "ask_ark_genoa_vlek.pem",
        ("turin", "vcek"): "ask_ark_turin_vcek.pem",
        ("turin", "vlek"): "ask_ark_turin_vlek.pem",
    }[(product, kind)]
    shipped = (ANCHORS / name).read_bytes()
    copy = (VECTORS / AMD / vector).read_bytes()
    assert [c.der for c in parse_amd_certificates(shipped)] == [
        c.der for c in parse_amd_certificates(copy)
    ]
    for cert in parse_amd_certificates(shipped):
        assert cert.fingerprint.upper() in shipped.decode().replace(":", "")


# -- the loader --------------------------------------------------------------------------------


def test_loader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_snp_trust(None, tmp_path / "missing")
    assert info.value.key == str(tmp_path / "missing")
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError) as info:
        load_snp_trust(None, folder)
    assert info.value.key == str(folder / "junk.pem")
    (folder / "junk.pem").unlink()
    (folder / "intel.pem").write_bytes((VECTORS / "roots/intel/IntelSGXRootCA.pem").read_bytes())
    with pytest.raises(ConfigError) as info:
        load_snp_trust(None, folder)
    assert info.value.key == str(folder / "intel.pem") and "not an AMD" in info.value.message
    (folder / "intel.pem").unlink()
    (folder / "x.crl").write_bytes(b"garbage")
    with pytest.raises(ConfigError) as info:
        load_snp_trust(None, folder)
    assert info.value.key == str(folder / "x.crl")
    (folder / "x.crl").unlink()
    (folder / "README.txt").write_text("ignored")
    assert load_snp_trust(folder, None).veks == ()


def test_loader_scans_both_folders(tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copy(VECTORS / "snp/trustee/test-vcek.der", a)
    shutil.copy(VECTORS / "snp/go-sev-guest/vcek.der", b)
    trust = load_snp_trust(a, b)
    assert len(trust.veks) == 2 and set(trust.anchors) == {"Milan", "Genoa", "Turin"}
