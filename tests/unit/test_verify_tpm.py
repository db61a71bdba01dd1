"""TPM verifier against the TPM 2.0 quotes in ../shared/vectors.

* ``tpm/trustee/tpm_evidence.json`` comes from **swtpm, a software TPM** (firmwareVersion
  0x2019102300163636 = libtpms; vectors README "Problems and caveats" 1): its signature and PCR
  digest verify with its own AK, and the default policy refuses it at ``tpm.firmware``. Its
  qualifying data is 64 bytes: trustee's TPM attester zero-pads the report data to 64 bytes, and
  no source states the value, so the test expects the 48-byte value + 16 zero bytes the quote
  carries (PARSED_SUMMARY.json agrees).
* The Azure vTPM quotes (SNP and TDX CVMs) verify with HCLAkPub from the HCL report next to them
  and qualifying data ``b"challenge"`` (MANIFEST description); the Genoa evidence with the
  ``tpm.qualifying_data`` and ``pcr00`` its .expected.json states.

Then each is tampered with and must fail naming the right check. A TPM quote has no certificate,
CRL or validity window here (AKs are trusted as keys), so "time moved" and "revoked" do not apply.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import ConfigError
from atls_proxy.ops.snp_files import load_snp_trust
from atls_proxy.ops.tpm_files import load_tpm_trust, read_tpm_evidence
from atls_proxy.verify.azure_hcl import HCL_HEADER_SIZE, HW_REPORT_SIZE, IGVM_REQUEST_DATA_SIZE
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.snp import SnpPolicy, appraise_snp
from atls_proxy.verify.tpm import (
    TpmEvidence,
    TpmPolicy,
    TpmTrust,
    appraise_tpm,
    decode_evidence,
    encode_evidence,
    evidence_from_json,
    parse_hcl_report,
    parse_quote,
)

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")

NOW = datetime(2026, 1, 1, tzinfo=UTC)  # nothing here has a validity window
SWTPM = "tpm/trustee/tpm_evidence.json"
SWTPM_NONCE = bytes.fromhex(
    "a04182b506878d4f29b91ee606a71a0d3361ccf1b22db20c98adcaa537bea393"
    "ef0e41a18b3569ab678f1497fbc5c120"
) + bytes(16)
AZURE = {
    "snp": ("snp/azure-trustee/tpm-quote-v1.json", "snp/azure-trustee/hcl-report.bin"),
    "tdx": ("tdx/azure-trustee/tpm-quote-v1.json", "tdx/azure-trustee/hcl-report.bin"),
}
GENOA = "snp/azure-trustee/evidence-genoa.json"
SW_OK = TpmPolicy(allow_software_tpm=True)


def vec(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def swtpm_trust(tmp_path: Path) -> TpmTrust:
    folder = tmp_path / "swtpm-ak"
    folder.mkdir(exist_ok=True)
    spki = base64.b64decode(json.loads(vec(SWTPM))["ak_public"])
    (folder / "ak.der").write_bytes(spki)
    return load_tpm_trust(None, folder)


def azure_trust(tmp_path: Path, hcl: str) -> TpmTrust:
    folder = tmp_path / "azure-ak"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(VECTORS / hcl, folder / "hcl-report.bin")
    return load_tpm_trust(None, folder)


def appraise(
    evidence: bytes,
    trust: TpmTrust,
    expected: bytes | None,
    policy: TpmPolicy = SW_OK,
) -> Appraisal:
    return appraise_tpm(
        evidence, policy=policy, trust=trust, now=NOW, expected_report_data=expected
    )


def failed(a: Appraisal) -> str:
    f = a.first_failure
    assert f is not None, "expected a failure"
    return f.name


def with_attest(evidence: bytes, attest: bytes) -> bytes:
    e = decode_evidence(evidence)
    return encode_evidence(TpmEvidence(attest, e.signature, e.pcrs, e.pcr_bank, e.ak_spki))


def flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


# -- swtpm ----------------------------------------------------------------------------------


def test_swtpm_quote_verifies_and_is_a_software_tpm(tmp_path: Path) -> None:
    evidence = evidence_from_json(vec(SWTPM))
    trust = swtpm_trust(tmp_path)
    a = appraise(evidence, trust, SWTPM_NONCE)
    assert a.passed, a.first_failure
    checks = {c.name: c for c in a.checks}
    assert checks["tpm.signature.quote"].passed and checks["tpm.pcr.digest"].passed
    assert "SOFTWARE TPM" in checks["tpm.firmware"].detail
    assert checks["tpm.firmware"].observed == "firmwareVersion 0x2019102300163636"
    # The default policy refuses a software TPM, and says so by name.
    a = appraise(evidence, trust, SWTPM_NONCE, TpmPolicy())
    assert [c.name for c in a.checks if not c.passed] == ["tpm.firmware"]
    assert a.trust_vector["hardware"] == 96


def test_swtpm_evidence_carries_its_ak_hint(tmp_path: Path) -> None:
    ev = decode_evidence(evidence_from_json(vec(SWTPM)))
    assert ev.ak_spki == base64.b64decode(json.loads(vec(SWTPM))["ak_public"])
    assert ev.pcr_bank == "sha256" and len(ev.pcrs) == 24
    assert parse_quote(ev.attest).extra_data == SWTPM_NONCE
    # The hint is only a hint: another trusted key does not make it trusted.
    other = rsa.generate_private_key(65537, 2048).public_key()
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "other.pem").write_bytes(
        other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    a = appraise(encode_evidence(ev), load_tpm_trust(None, folder), SWTPM_NONCE)
    assert failed(a) == "tpm.ak.trusted"


def test_swtpm_tampering(tmp_path: Path) -> None:
    evidence = evidence_from_json(vec(SWTPM))
    trust = swtpm_trust(tmp_path)
    ev = decode_evidence(evidence)
    # A byte of the signed TPMS_ATTEST: clockInfo, extraData, pcrDigest.
    for pos in (10, 50, len(ev.attest) - 3):
        a = appraise(with_attest(evidence, flip(ev.attest, pos)), trust, None)
        assert failed(a) == "tpm.signature.quote", pos
    # A signature byte.
    sig = flip(ev.signature, 100)
    bad = encode_evidence(TpmEvidence(ev.attest, sig, ev.pcrs, ev.pcr_bank, ev.ak_spki))
    assert failed(appraise(bad, trust, SWTPM_NONCE)) == "tpm.signature.quote"
    # A PCR value.
    pcrs = dict(ev.pcrs)
    pcrs[17] = bytes(32)
    bad = encode_evidence(TpmEvidence(ev.attest, ev.signature, pcrs, ev.pcr_bank, ev.ak_spki))
    assert failed(appraise(bad, trust, SWTPM_NONCE)) == "tpm.pcr.digest"
    # Qualifying data mismatch; the unpadded 48-byte value is not the qualifying data either.
    assert failed(appraise(evidence, trust, flip(SWTPM_NONCE, 0))) == "tpm.report-data"
    assert failed(appraise(evidence, trust, SWTPM_NONCE[:48])) == "tpm.report-data"
    # The magic.
    a = appraise(with_attest(evidence, flip(ev.attest, 0)), trust, None)
    assert failed(a) == "tpm.quote.format"


def test_swtpm_pcr_not_in_policy(tmp_path: Path) -> None:
    evidence = evidence_from_json(vec(SWTPM))
    ok = TpmPolicy(
        allow_software_tpm=True, pcrs={0: frozenset({bytes(32)}), 17: frozenset({b"\xff" * 32})}
    )
    assert appraise(evidence, swtpm_trust(tmp_path), SWTPM_NONCE, ok).passed
    bad = TpmPolicy(allow_software_tpm=True, pcrs={0: frozenset({b"\x01" * 32})})
    a = appraise(evidence, swtpm_trust(tmp_path), SWTPM_NONCE, bad)
    assert failed(a) == "tpm.register.pcr0"


# -- Azure vTPM -------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["snp", "tdx"])
def test_azure_quote_verifies_with_hclakpub(tmp_path: Path, platform: str) -> None:
    quote, hcl = AZURE[platform]
    report = parse_hcl_report(vec(hcl))
    assert report.report_type == platform and report.binds_variable_data
    trust = azure_trust(tmp_path, hcl)
    evidence = evidence_from_json(vec(quote))
    a = appraise(evidence, trust, b"challenge", TpmPolicy())  # a hardware-backed vTPM
    assert a.passed, a.first_failure
    firmware = next(c for c in a.checks if c.name == "tpm.firmware")
    assert firmware.observed == "firmwareVersion 0x2020031200120003"
    # With the AK hint from the HCL report, too.
    hinted = evidence_from_json(vec(quote), ak_spki=report.ak_spki_der)
    assert appraise(hinted, trust, b"challenge", TpmPolicy()).passed


@pytest.mark.parametrize("platform", ["snp", "tdx"])
def test_azure_tampering(tmp_path: Path, platform: str) -> None:
    quote, hcl = AZURE[platform]
    trust = azure_trust(tmp_path, hcl)
    evidence = evidence_from_json(vec(quote))
    ev = decode_evidence(evidence)
    assert failed(appraise(with_attest(evidence, flip(ev.attest, 45)), trust, None)) == (
        "tpm.signature.quote"
    )
    sig = flip(ev.signature, 6)
    bad = encode_evidence(TpmEvidence(ev.attest, sig, ev.pcrs, ev.pcr_bank, ev.ak_spki))
    assert failed(appraise(bad, trust, b"challenge")) == "tpm.signature.quote"
    assert failed(appraise(evidence, trust, b"challengf")) == "tpm.report-data"
    # The other platform's AK is a wrong AK.
    other = "tdx" if platform == "snp" else "snp"
    wrong = azure_trust(tmp_path / "wrong", AZURE[other][1])
    assert failed(appraise(evidence, wrong, b"challenge")) == "tpm.signature.quote"


def test_azure_genoa_evidence_with_the_ak_from_its_hcl_report(tmp_path: Path) -> None:
    expected = json.loads(vec("snp/azure-trustee/evidence-genoa.expected.json"))["expected_fields"]
    doc = json.loads(vec(GENOA))
    folder = tmp_path / "genoa"
    folder.mkdir()
    (folder / "genoa.hcl").write_bytes(bytes(doc["report"]))
    trust = load_tpm_trust(None, folder)
    evidence = read_tpm_evidence(VECTORS / GENOA)
    assert decode_evidence(evidence).ak_spki is not None  # taken from the HCL report
    a = appraise(evidence, trust, bytes.fromhex(expected["tpm.qualifying_data"]), TpmPolicy())
    assert a.passed, a.first_failure
    pcr0 = next(c for c in a.checks if c.name == "tpm.register.pcr0")
    assert pcr0.observed == expected["tpm.pcr00"]


def test_hcl_report_whose_claims_were_changed_is_refused(tmp_path: Path) -> None:
    data = bytearray(vec(AZURE["snp"][1]))
    data[0x06E0] ^= 0x01  # inside the runtime claims JSON (the source's own tamper test)
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "hcl-report.bin").write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="not bound"):
        load_tpm_trust(None, folder)


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_an_edited_and_rehashed_hcl_report_is_not_detected_the_operator_vouches_for_the_file(
    tmp_path: Path,
) -> None:
    """A documented limitation (docs/VERIFIERS-TPM.md): ``load_tpm_trust`` only checks that the
    hardware REPORT_DATA carries the hash of the runtime claims, and both are unsigned bytes of
    the same file. Swap HCLAkPub for another key, recompute the hash: the file is accepted and
    the other key trusted. Only the SNP signature over the hardware report, which the SNP verifier
    checks and ``load_tpm_trust`` does not, tells the edit apart."""
    src = vec(AZURE["snp"][1])
    off = HCL_HEADER_SIZE + HW_REPORT_SIZE  # IGVM_REQUEST_DATA (verify/azure_hcl.py)
    size = int.from_bytes(src[off + 16 : off + 20], "little")
    claims = json.loads(src[off + IGVM_REQUEST_DATA_SIZE : off + IGVM_REQUEST_DATA_SIZE + size])
    other = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
    (ak,) = [k for k in claims["keys"] if k.get("kid") == "HCLAkPub"]
    ak["n"], ak["e"] = _b64url_uint(other.n), _b64url_uint(other.e)
    var = json.dumps(claims).encode()
    forged = bytearray(src[: off + IGVM_REQUEST_DATA_SIZE]) + var
    forged[off : off + 4] = (IGVM_REQUEST_DATA_SIZE + len(var)).to_bytes(4, "little")
    forged[off + 16 : off + 20] = len(var).to_bytes(4, "little")
    forged[8:12] = len(forged).to_bytes(4, "little")  # the header's report size
    hash_name = {1: "sha256", 2: "sha384", 3: "sha512"}[
        int.from_bytes(src[off + 12 : off + 16], "little")
    ]
    digest = hashlib.new(hash_name, var).digest()
    report_data = HCL_HEADER_SIZE + 0x50  # SNP REPORT_DATA, not covered by anything checked here
    forged[report_data : report_data + len(digest)] = digest
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / "hcl-report.bin").write_bytes(bytes(forged))

    trust = load_tpm_trust(None, folder)  # accepted: consistency is all that is checked
    assert [a.key.public_numbers() for a in trust.aks] == [other]

    snp_certs = tmp_path / "snp-certs"
    snp_certs.mkdir()
    shutil.copy(VECTORS / "snp/azure-trustee/vcek.pem", snp_certs / "vcek.pem")
    snp_trust = load_snp_trust(None, snp_certs)

    def snp(evidence: bytes) -> Appraisal:
        return appraise_snp(
            evidence,
            policy=SnpPolicy(),
            trust=snp_trust,
            now=datetime(2024, 6, 1, tzinfo=UTC),
            expected_report_data=None,
        )

    assert snp(src).passed
    edited = snp(bytes(forged))
    assert edited.first_failure is not None
    assert edited.first_failure.name == "snp.signature.report"


def test_read_tpm_evidence_round_trip(tmp_path: Path) -> None:
    cbor_file = tmp_path / "evidence.cbor"
    cbor_file.write_bytes(evidence_from_json(vec(SWTPM)))
    assert read_tpm_evidence(cbor_file) == cbor_file.read_bytes()
    bad = tmp_path / "bad.json"
    bad.write_text('{"message": "zz"}')
    with pytest.raises(ConfigError):
        read_tpm_evidence(bad)


def test_load_tpm_trust_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_tpm_trust(None, None)
    with pytest.raises(ConfigError):
        load_tpm_trust(None, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no trusted AK"):
        load_tpm_trust(None, empty)
    small = tmp_path / "small"
    small.mkdir()
    key = rsa.generate_private_key(65537, 1024).public_key()
    (small / "ak.pem").write_bytes(
        key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ConfigError, match="too small"):
        load_tpm_trust(None, small)
