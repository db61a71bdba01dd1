"""SNP verifier on a synthetic AMD hierarchy: what the real vectors cannot show.

A test ARK/ASK (RSA, RSASSA-PSS/SHA-384, as AMD's) and a P-384 VCEK/VLEK with AMD's extensions
sign reports built here, so that every check can be driven both ways with a valid signature:
Turin's TCB layout and fmcSPL, CPUID, each guest-policy bit, VMPL, minimum TCB, firmware, guest
SVN, registers, AMD CRL revocation, the report+certs container (GHCB certificate table), and
the policy parser's errors. No vectors needed.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from atls_proxy import der
from atls_proxy.errors import ConfigError, DecodeError
from atls_proxy.ops.snp_files import load_snp_trust, shipped_anchors
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.snp import (
    CERTS_MEDIA_TYPE,
    MEDIA_TYPE,
    SnpPolicy,
    SnpTrust,
    SnpVerifier,
    appraise_snp,
    build_snp_trust,
    parse_snp_policy,
)
from atls_proxy.verify.snp.certs import AmdCert, parse_amd_certificates
from atls_proxy.verify.snp.report import POLICY_DEBUG, POLICY_MIGRATE_MA, POLICY_SINGLE_SOCKET
from atls_proxy.verify.snp.verifier import MAX_EVIDENCE_CERTS
from tests.support.der import tlv

NOW = datetime(2025, 6, 1, tzinfo=UTC)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
AMD = "1.3.6.1.4.1.3704.1."
# SEV-SNP ABI: the reserved policy bit 17 is always 1; SMT allowed (bit 16); ABI 1.51.
BASE_POLICY = (1 << 17) | (1 << 16) | (1 << 8) | 51
REPORT_DATA = bytes(range(64))
MEASUREMENT = bytes([0xAA]) * 48
CHIP_ID = bytes(range(1, 65))
TURIN_CHIP_ID = bytes(range(1, 9)) + bytes(56)
CPUID = {"Milan": (0x19, 0x01, 1), "Genoa": (0x19, 0x11, 1), "Turin": (0x1A, 0x02, 0)}
# TCB components per product, as (fmc, bootloader, tee, snp, microcode).
TCB = (1, 4, 2, 24, 0xD9)

_KEYS: dict[str, Any] = {}


def _key(name: str, make: Any) -> Any:
    if name not in _KEYS:  # RSA key generation is slow: one key per role for the whole module
        _KEYS[name] = make()
    return _KEYS[name]


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _int_ext(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8 or 1, "big")
    return bytes([0x02, len(body)]) + body


def _ia5(text: str) -> bytes:
    return bytes([0x16, len(text)]) + text.encode()


def tcb_bytes(product: str, tcb: tuple[int, int, int, int, int] = TCB) -> bytes:
    fmc, bl, tee, snp, ucode = tcb
    if product == "Turin":
        return bytes([fmc, bl, tee, snp, 0, 0, 0, ucode])
    return bytes([bl, tee, 0, 0, 0, 0, snp, ucode])


@dataclass
class Synth:
    """A test ARK → ASK/ASVK → VCEK/VLEK hierarchy and reports it signs."""

    product: str = "Milan"
    kind: str = "vcek"
    vek_tcb: tuple[int, int, int, int, int] = TCB
    not_after: datetime = datetime(2030, 1, 1, tzinfo=UTC)
    serials: dict[str, int] = field(default_factory=lambda: {"ark": 0x10000, "ask": 0x10001})

    def __post_init__(self) -> None:
        self.ark_key = _key("ark", lambda: rsa.generate_private_key(65537, 2048))
        self.ask_key = _key("ask", lambda: rsa.generate_private_key(65537, 2048))
        self.vek_key = _key("vek", lambda: ec.generate_private_key(ec.SECP384R1()))
        start = datetime(2020, 1, 1, tzinfo=UTC)
        ark_name = _name(f"ARK-{self.product}")
        self.ark = self._cert(
            ark_name, ark_name, self.ark_key, self.ark_key.public_key(), self.serials["ark"], start
        )
        self.ask = self.make_ask()
        self.vek = self.make_vek()

    def make_ask(self, crl_url: str | None = None) -> x509.Certificate:
        """The ASK/ASVK (same name, key and serial whatever ``crl_url``), whose one
        cRLDistributionPoints URI is ``crl_url``: by default, as AMD's, the KDS path of the VCEK
        CRL for an ASK and of the VLEK CRL for an ASVK."""
        ask_cn = f"SEV-VLEK-{self.product}" if self.kind == "vlek" else f"SEV-{self.product}"
        uri = x509.UniformResourceIdentifier(crl_url or self.crl_url)
        cdp = x509.CRLDistributionPoints([x509.DistributionPoint([uri], None, None, None)])
        return self._cert(
            _name(ask_cn),
            self.ark.subject,
            self.ark_key,
            self.ask_key.public_key(),
            self.serials["ask"],
            datetime(2020, 1, 1, tzinfo=UTC),
            [x509.Extension(x509.ExtensionOID.CRL_DISTRIBUTION_POINTS, False, cdp)],
        )

    def _cert(
        self,
        subject: x509.Name,
        issuer: x509.Name,
        signer: Any,
        public: Any,
        serial: int,
        start: datetime,
        extensions: Sequence[x509.Extension[Any]] = (),
        ca: bool = True,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(self.not_after)
        )
        if ca:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        for ext in extensions:
            builder = builder.add_extension(ext.value, ext.critical)
        return builder.sign(signer, hashes.SHA384(), rsa_padding=PSS)

    def make_vek(
        self, product_name: str | None = None, hwid: bytes | None = None
    ) -> x509.Certificate:
        fmc, bl, tee, snp, ucode = self.vek_tcb
        values = {
            "1": _int_ext(1 if self.product == "Turin" else 0),
            "2": _ia5(product_name or f"{self.product}-B0"),
            "3.1": _int_ext(bl),
            "3.2": _int_ext(tee),
            "3.3": _int_ext(snp),
            "3.8": _int_ext(ucode),
        }
        if self.product == "Turin":
            values["3.9"] = _int_ext(fmc)
        if self.kind == "vcek":
            values["4"] = hwid if hwid is not None else self.chip_id
        else:
            values["5"] = _ia5("CN=cloud.example")
        exts = [
            x509.Extension(
                x509.ObjectIdentifier(AMD + k),
                False,
                x509.UnrecognizedExtension(x509.ObjectIdentifier(AMD + k), v),
            )
            for k, v in values.items()
        ]
        ask_cn = self.ask.subject
        return self._cert(
            _name("SEV-VLEK" if self.kind == "vlek" else "SEV-VCEK"),
            ask_cn,
            self.ask_key,
            self.vek_key.public_key(),
            1,  # AMD uses 0, which CertificateBuilder refuses; the real vectors cover 0
            datetime(2021, 1, 1, tzinfo=UTC),
            exts,
            ca=False,
        )

    @property
    def crl_url(self) -> str:
        return f"https://kdsintf.amd.com/{self.kind}/v1/{self.product}/crl"

    @property
    def chip_id(self) -> bytes:
        if self.kind == "vlek":
            return bytes(64)
        return TURIN_CHIP_ID if self.product == "Turin" else CHIP_ID

    def chain_pem(self) -> bytes:
        return self.ask.public_bytes(Encoding.PEM) + self.ark.public_bytes(Encoding.PEM)

    def trust(self, **extra: Any) -> SnpTrust:
        certs = [("vek.der", self.vek.public_bytes(Encoding.DER))]
        return build_snp_trust(
            extra.get("certificates", certs),
            [("test anchors", self.chain_pem())],
            extra.get("crls", ()),
        )

    def report(
        self,
        *,
        version: int = 3,
        policy: int = BASE_POLICY,
        vmpl: int = 0,
        reported: tuple[int, int, int, int, int] | None = None,
        cpuid: tuple[int, int, int] | None = None,
        firmware: tuple[int, int, int] = (1, 55, 29),
        guest_svn: int = 7,
        sign: bool = True,
        tweak: dict[int, int] | None = None,
    ) -> bytes:
        r = bytearray(0x4A0)
        struct.pack_into("<IIQ", r, 0, version, guest_svn, policy)
        r[0x10:0x20] = bytes([1]) + bytes(15)
        r[0x20:0x30] = bytes([2]) + bytes(15)
        struct.pack_into("<II", r, 0x30, vmpl, 1)
        tcb = tcb_bytes(self.product, reported or self.vek_tcb)
        r[0x38:0x40] = tcb
        struct.pack_into("<QI", r, 0x40, 1, (1 if self.kind == "vlek" else 0) << 2)
        r[0x50:0x90] = REPORT_DATA
        r[0x90:0xC0] = MEASUREMENT
        r[0x180:0x188] = tcb
        if version >= 3:
            r[0x188:0x18B] = bytes(cpuid or CPUID[self.product])
        r[0x1A0:0x1E0] = self.chip_id
        r[0x1E0:0x1E8] = tcb
        r[0x1E8:0x1EB] = bytes([firmware[2], firmware[1], firmware[0]])
        r[0x1EC:0x1EF] = bytes([firmware[2], firmware[1], firmware[0]])
        r[0x1F0:0x1F8] = tcb
        for offset, value in (tweak or {}).items():
            r[offset] = value
        if sign:
            der_sig = self.vek_key.sign(bytes(r[:0x2A0]), ec.ECDSA(hashes.SHA384()))
            rr, ss = decode_dss_signature(der_sig)
            r[0x2A0:0x2E8] = rr.to_bytes(72, "little")
            r[0x2E8:0x330] = ss.to_bytes(72, "little")
        return bytes(r)


def appraise(
    synth: Synth,
    evidence: bytes,
    policy: SnpPolicy | None = None,
    trust: SnpTrust | None = None,
    now: datetime = NOW,
    expected: bytes | None = REPORT_DATA,
) -> Appraisal:
    return appraise_snp(
        evidence,
        policy=policy or SnpPolicy(),
        trust=trust or synth.trust(),
        now=now,
        expected_report_data=expected,
    )


def failed(a: Appraisal) -> str:
    f = a.first_failure
    assert f is not None, "expected a failure"
    return f.name


def by_name(a: Appraisal, name: str) -> Any:
    return next(c for c in a.checks if c.name == name)


MILAN = Synth()
TURIN = Synth(product="Turin")
GENOA_VLEK = Synth(product="Genoa", kind="vlek")


@pytest.mark.parametrize("synth", [MILAN, TURIN, GENOA_VLEK], ids=["milan", "turin", "genoa-vlek"])
def test_a_good_report_passes(synth: Synth) -> None:
    a = appraise(synth, synth.report())
    assert a.passed, a.first_failure
    assert a.trust_vector["instance-identity"] == 2
    assert by_name(a, "snp.product").passed


def test_turin_tcb_layout_and_fmc() -> None:
    a = appraise(TURIN, TURIN.report())
    tcb = by_name(a, "snp.vek.tcb")
    assert "Turin layout" in tcb.detail and "fmc=1" in tcb.observed
    # The pre-Turin reading of the same bytes would be bootloader 1, snp 0: not the VCEK's.
    bad = appraise(TURIN, TURIN.report(reported=(2, 4, 2, 24, 0xD9)))
    assert failed(bad) == "snp.vek.tcb" and "fmc 2 ≠ 1" in bad.first_failure.detail  # type: ignore[union-attr]
    # A Turin report read as Milan (policy pins the wrong product) fails at the product check.
    pinned = appraise(TURIN, TURIN.report(), policy=SnpPolicy(product="Milan"))
    assert failed(pinned) == "snp.product"


def test_turin_hwid_is_eight_bytes_of_chip_id() -> None:
    report = TURIN.report(tweak={0x1A0 + 9: 0xFF})  # a non-zero byte past the 8-byte hwID
    assert failed(appraise(TURIN, report)) == "snp.vek.chip-id"


def test_vcek_choice_among_several() -> None:
    other = Synth(vek_tcb=(0, 9, 9, 9, 9))
    vek2 = other.make_vek(hwid=bytes(64))
    certs = [
        ("other.der", vek2.public_bytes(Encoding.DER)),
        ("right.der", MILAN.vek.public_bytes(Encoding.DER)),
    ]
    a = appraise(MILAN, MILAN.report(), trust=MILAN.trust(certificates=certs))
    assert a.passed, a.first_failure
    assert "right.der" in by_name(a, "snp.vek").detail


def test_cpuid_must_match_the_product() -> None:
    a = appraise(MILAN, MILAN.report(cpuid=(0x19, 0x11, 1)))
    assert failed(a) == "snp.cpuid" and "Genoa" in a.first_failure.detail  # type: ignore[union-attr]
    v2 = appraise(MILAN, MILAN.report(version=2))
    assert v2.passed and "not in report version 2" in by_name(v2, "snp.cpuid").detail


@pytest.mark.parametrize(
    ("bits", "policy", "check"),
    [
        (POLICY_DEBUG, SnpPolicy(), "snp.debug"),
        (POLICY_MIGRATE_MA, SnpPolicy(), "snp.policy.migration-agent"),
        (0, SnpPolicy(allow_smt=False), "snp.policy.smt"),
        (0, SnpPolicy(require_single_socket=True), "snp.policy.single-socket"),
        (0, SnpPolicy(min_abi=(1, 52)), "snp.policy.abi"),
    ],
)
def test_guest_policy_bits(bits: int, policy: SnpPolicy, check: str) -> None:
    a = appraise(MILAN, MILAN.report(policy=BASE_POLICY | bits), policy=policy)
    assert failed(a) == check
    assert a.trust_vector["configuration"] == 96


def test_guest_policy_bits_accepted_when_allowed() -> None:
    bits = POLICY_DEBUG | POLICY_MIGRATE_MA | POLICY_SINGLE_SOCKET
    policy = SnpPolicy(allow_debug=True, allow_migration_agent=True, require_single_socket=True)
    a = appraise(MILAN, MILAN.report(policy=BASE_POLICY | bits), policy=policy)
    assert a.passed, a.first_failure
    assert a.trust_vector["configuration"] == 32


def test_vmpl_min_tcb_firmware_guest_svn() -> None:
    report = MILAN.report(vmpl=2)
    assert failed(appraise(MILAN, report, policy=SnpPolicy(accepted_vmpls=frozenset({0})))) == (
        "snp.vmpl"
    )
    assert appraise(MILAN, report, policy=SnpPolicy(accepted_vmpls=frozenset({0, 2}))).passed
    low = appraise(MILAN, MILAN.report(), policy=SnpPolicy(min_tcb={"microcode": 0xDA}))
    assert failed(low) == "snp.tcb.minimum" and low.trust_vector["hardware"] == 96
    ok = appraise(MILAN, MILAN.report(), policy=SnpPolicy(min_tcb={"snp": 24, "fmc": 9}))
    assert ok.passed and ok.trust_vector["hardware"] == 2
    # No minimum configured: the TCB is not judged, a warning claim — and the EAR status with it.
    unjudged = appraise(MILAN, MILAN.report(), policy=SnpPolicy())
    assert unjudged.passed and unjudged.trust_vector["hardware"] == 32
    assert unjudged.to_json()["ear.status"] == "warning"
    assert "fmc not in this product" in by_name(ok, "snp.tcb.minimum").detail
    turin = appraise(TURIN, TURIN.report(), policy=SnpPolicy(min_tcb={"fmc": 2}))
    assert failed(turin) == "snp.tcb.minimum"
    fw = appraise(MILAN, MILAN.report(), policy=SnpPolicy(min_firmware=(1, 56)))
    assert failed(fw) == "snp.firmware"
    # the detail names the version the minimum was compared with (CURRENT, also the observed)
    current = by_name(fw, "snp.firmware")
    assert current.detail.startswith(f"current {current.observed} (committed ")
    assert failed(appraise(MILAN, MILAN.report(), policy=SnpPolicy(min_guest_svn=8))) == (
        "snp.guest-svn"
    )


def test_registers() -> None:
    ok = SnpPolicy(registers={"measurement": frozenset({MEASUREMENT, bytes(48)})})
    a = appraise(MILAN, MILAN.report(), policy=ok)
    assert a.passed and a.trust_vector["executables"] == 2
    bad = SnpPolicy(registers={"host_data": frozenset({bytes([1]) * 32})})
    b = appraise(MILAN, MILAN.report(), policy=bad)
    assert failed(b) == "snp.register.host_data" and b.trust_vector["executables"] == 96


def test_signing_key_type_and_policy() -> None:
    a = appraise(
        GENOA_VLEK, GENOA_VLEK.report(), policy=SnpPolicy(signing_keys=frozenset({"vcek"}))
    )
    assert failed(a) == "snp.signing-key"
    unsigned = MILAN.report(tweak={0x48: 7 << 2})
    assert failed(appraise(MILAN, unsigned)) == "snp.signing-key"
    masked = MILAN.report(tweak={0x48: 0x2})
    assert failed(appraise(MILAN, masked)) == "snp.signing-key"
    # A VLEK-signed report with only a VCEK available names the missing key.
    assert failed(appraise(MILAN, MILAN.report(tweak={0x48: 1 << 2}))) == "snp.vek"


def test_ark_must_be_the_anchor() -> None:
    forged = Synth(serials={"ark": 5, "ask": 6})  # same CNs and keys, different certificates
    certs = [
        ("vek.der", MILAN.vek.public_bytes(Encoding.DER)),
        ("chain.pem", forged.chain_pem()),
    ]
    a = appraise(MILAN, MILAN.report(), trust=MILAN.trust(certificates=certs))
    assert failed(a) == "snp.chain.ark" and "chain.pem" in a.first_failure.detail  # type: ignore[union-attr]


def test_crl_revokes_the_ask() -> None:
    def crl(serials: list[int], key: Any = None) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(MILAN.ark.subject)
            .last_update(NOW - timedelta(days=1))
            .next_update(NOW + timedelta(days=30))
        )
        for s in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(s).revocation_date(NOW).build()
            )
        signed = builder.sign(key or MILAN.ark_key, hashes.SHA384(), rsa_padding=PSS)
        return signed.public_bytes(Encoding.DER)

    good = appraise(MILAN, MILAN.report(), trust=MILAN.trust(crls=[("milan.crl", crl([99]))]))
    assert good.passed and "is not on milan.crl" in by_name(good, "snp.chain.revocation").detail
    revoked = appraise(
        MILAN, MILAN.report(), trust=MILAN.trust(crls=[("milan.crl", crl([0x10001]))])
    )
    assert failed(revoked) == "snp.chain.revocation"
    other = rsa.generate_private_key(65537, 1024)
    forged = appraise(
        MILAN, MILAN.report(), trust=MILAN.trust(crls=[("milan.crl", crl([], other))])
    )
    assert failed(forged) == "snp.collateral.crl"
    late = appraise(
        MILAN,
        MILAN.report(),
        trust=MILAN.trust(crls=[("milan.crl", crl([]))]),
        now=NOW + timedelta(days=60),
    )
    assert failed(late) == "snp.collateral.crl.validity"
    required = appraise(MILAN, MILAN.report(), policy=SnpPolicy(require_crl=True))
    assert failed(required) == "snp.chain.revocation"


# -- AMD CRL scope: the VCEK list and the VLEK list, both issued by ARK-<Product> --------------

# A VLEK hierarchy whose ASVK serial differs from the ASK's, as AMD's do (0x10001 / 0x10101).
MILAN_VLEK = Synth(kind="vlek", serials={"ark": 0x10000, "ask": 0x10101})


def amd_crl(
    serials: Sequence[int] = (),
    *,
    idp: str | None = None,
    key: Any = None,
    this_update: datetime = NOW - timedelta(days=1),
    next_update: datetime | None = NOW + timedelta(days=30),
) -> bytes:
    """A CRL from ARK-Milan (every Synth shares the ARK key and name), optionally with an
    issuingDistributionPoint naming ``idp`` (RFC 5280 §5.2.5)."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(MILAN.ark.subject)
        .last_update(this_update)
    )
    if next_update is not None:
        builder = builder.next_update(next_update)
    for serial in serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW).build()
        )
    if idp is not None:
        builder = builder.add_extension(
            x509.IssuingDistributionPoint(
                full_name=[x509.UniformResourceIdentifier(idp)],
                relative_name=None,
                only_contains_user_certs=False,
                only_contains_ca_certs=False,
                only_some_reasons=None,
                indirect_crl=False,
                only_contains_attribute_certs=False,
            ),
            critical=True,
        )
    signed = builder.sign(key or MILAN.ark_key, hashes.SHA384(), rsa_padding=PSS)
    return signed.public_bytes(Encoding.DER)


def _folder(tmp_path: Path, synth: Synth, crls: dict[str, bytes]) -> SnpTrust:
    """A fresh collateral folder holding the VEK and ``crls``, read by ``load_snp_trust``."""
    folder = tmp_path / f"folder{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    (folder / "vek.der").write_bytes(synth.vek.public_bytes(Encoding.DER))
    for name, blob in crls.items():
        (folder / name).write_bytes(blob)
    return load_snp_trust(folder, anchors=[("test anchors", synth.chain_pem())])


@pytest.mark.parametrize("require_crl", [False, True])
def test_revoked_asvk_on_the_vlek_list_is_found(tmp_path: Path, require_crl: bool) -> None:
    # Both lists configured; the VCEK one sorts first. The old verifier consulted only it.
    crls = {"milan_vcek.crl": amd_crl([0x4242]), "milan_vlek.crl": amd_crl([0x10101])}
    policy = SnpPolicy(require_crl=require_crl)
    trust = _folder(tmp_path, MILAN_VLEK, crls)
    a = appraise(MILAN_VLEK, MILAN_VLEK.report(), policy, trust)
    assert failed(a) == "snp.chain.revocation"
    detail = by_name(a, "snp.chain.revocation").detail
    assert "revoked by" in detail and "milan_vlek.crl" in detail
    # The same CRLs pass the VCEK chain: its ASK (0x10001) is on neither list.
    vcek = appraise(MILAN, MILAN.report(), policy, _folder(tmp_path, MILAN, crls))
    assert vcek.passed, vcek.first_failure


def test_require_crl_needs_the_list_for_the_chain_in_use(tmp_path: Path) -> None:
    # Only the VCEK list: a VLEK chain has no CRL of its own, so require_crl must fail ...
    trust = _folder(tmp_path, MILAN_VLEK, {"milan_vcek.crl": amd_crl()})
    required = appraise(MILAN_VLEK, MILAN_VLEK.report(), SnpPolicy(require_crl=True), trust)
    assert failed(required) == "snp.chain.revocation"
    detail = by_name(required, "snp.chain.revocation").detail
    assert "requires a current CRL for the VLEK chain" in detail and "other key type" in detail
    # ... while without require_crl the VCEK list is still consulted (serials are unique per
    # issuer) and the appraisal passes.
    optional = appraise(MILAN_VLEK, MILAN_VLEK.report(), trust=trust)
    assert optional.passed, optional.first_failure
    revoked = _folder(tmp_path, MILAN_VLEK, {"milan_vcek.crl": amd_crl([0x10101])})
    assert failed(appraise(MILAN_VLEK, MILAN_VLEK.report(), trust=revoked)) == (
        "snp.chain.revocation"
    )
    # With the VLEK list as well, require_crl is met.
    both = _folder(tmp_path, MILAN_VLEK, {"milan_vcek.crl": amd_crl(), "milan_vlek.crl": amd_crl()})
    good = appraise(MILAN_VLEK, MILAN_VLEK.report(), SnpPolicy(require_crl=True), both)
    assert good.passed, good.first_failure


def test_crl_scope_from_issuing_distribution_point() -> None:
    vcek_url, vlek_url = MILAN.crl_url, MILAN_VLEK.crl_url
    # File names say nothing; the signed IDP decides. The VLEK list (IDP = the ASVK's CDP)
    # revoking serial 0x10001 does not apply to the ASK, whose CDP is the VCEK list.
    crls = [("a.crl", amd_crl(idp=vcek_url)), ("b.crl", amd_crl([0x10001], idp=vlek_url))]
    a = appraise(MILAN, MILAN.report(), SnpPolicy(require_crl=True), MILAN.trust(crls=crls))
    assert a.passed, a.first_failure
    assert "not consulted" in by_name(a, "snp.collateral.crl").detail
    # The VCEK list revoking it does.
    crls = [("a.crl", amd_crl([0x10001], idp=vcek_url)), ("b.crl", amd_crl(idp=vlek_url))]
    revoked = appraise(MILAN, MILAN.report(), trust=MILAN.trust(crls=crls))
    assert failed(revoked) == "snp.chain.revocation"
    # Only the VLEK list: require_crl is not met for a VCEK chain.
    only_vlek = MILAN.trust(crls=[("a.crl", amd_crl(idp=vlek_url))])
    a = appraise(MILAN, MILAN.report(), trust=only_vlek)
    assert a.passed and "no AMD CRL from ARK-Milan applies" in (
        by_name(a, "snp.chain.revocation").detail
    )
    a = appraise(MILAN, MILAN.report(), SnpPolicy(require_crl=True), only_vlek)
    assert failed(a) == "snp.chain.revocation"
    # The IDP outranks a misleading file name.
    named = MILAN.trust(crls=[("milan_vlek.crl", amd_crl(idp=vcek_url))])
    assert appraise(MILAN, MILAN.report(), SnpPolicy(require_crl=True), named).passed


def test_require_crl_refuses_a_crl_of_unknown_scope_and_a_stale_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # No IDP and a name that says neither vcek nor vlek: consulted, but it could be either list.
    with caplog.at_level("WARNING", logger="atls_proxy.verify.snp"):
        unknown = MILAN.trust(crls=[("milan.crl", amd_crl())])
    # ... which the operator learns when the folder is loaded, not from failing appraisals.
    assert "milan.crl" in caplog.text and "require_crl" in caplog.text
    assert appraise(MILAN, MILAN.report(), trust=unknown).passed
    a = appraise(MILAN, MILAN.report(), SnpPolicy(require_crl=True), unknown)
    assert failed(a) == "snp.chain.revocation"
    assert "scope unknown" in by_name(a, "snp.chain.revocation").detail
    # A stale list for this chain fails its validity and does not meet require_crl.
    stale = MILAN.trust(crls=[("milan_vcek.crl", amd_crl(next_update=NOW - timedelta(hours=1)))])
    a = appraise(MILAN, MILAN.report(), SnpPolicy(require_crl=True), stale)
    assert [c.name for c in a.checks if not c.passed] == [
        "snp.collateral.crl.validity",
        "snp.chain.revocation",
    ]


def test_a_forged_crl_for_the_other_list_still_stops() -> None:
    # Its IDP would exclude it, but an unsigned IDP is not believed: every CRL from the ARK
    # must verify — in every appraisal (a failed verification is not remembered).
    other = rsa.generate_private_key(65537, 1024)
    crls = [("b.crl", amd_crl(idp=MILAN_VLEK.crl_url, key=other))]
    trust = MILAN.trust(crls=crls)
    for _ in range(2):
        assert failed(appraise(MILAN, MILAN.report(), trust=trust)) == "snp.collateral.crl"
    assert trust.crls[0].verified_by == set()


def test_a_crl_signature_is_verified_once_per_ark() -> None:
    trust = MILAN.trust(crls=[("a.crl", amd_crl(idp=MILAN.crl_url))])
    policy = SnpPolicy(require_crl=True)
    (crl,) = trust.crls
    assert appraise(MILAN, MILAN.report(), policy, trust).passed
    assert crl.verified_by == {MILAN.ark.public_bytes(Encoding.DER)}
    # what is remembered is what the next appraisal trusts (shown with a forged one below)
    forged = MILAN.trust(crls=[("a.crl", amd_crl(idp=MILAN.crl_url, key=MILAN.ask_key))])
    assert failed(appraise(MILAN, MILAN.report(), policy, forged)) == "snp.collateral.crl"
    forged.crls[0].verified_by.add(MILAN.ark.public_bytes(Encoding.DER))
    assert appraise(MILAN, MILAN.report(), policy, forged).passed


def test_intermediate_distribution_points_are_read_once_at_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The ASK's cRLDistributionPoints (which the CRLs' IDPs are matched against) depend only on
    # the loaded certificate: walked when the trust folder is loaded, not again per appraisal.
    walks: list[str] = []
    real = AmdCert.crl_distribution_uris

    def counting(cert: AmdCert) -> frozenset[str]:
        walks.append(cert.subject_cn)
        return real(cert)

    monkeypatch.setattr(AmdCert, "crl_distribution_uris", counting)
    # The VLEK list revokes the ASK's serial: only its IDP (≠ the ASK's CDP) keeps it out.
    crls = [
        ("a.crl", amd_crl(idp=MILAN.crl_url)),
        ("b.crl", amd_crl([0x10001], idp=MILAN_VLEK.crl_url)),
    ]
    trust = MILAN.trust(crls=crls)
    loaded = list(walks)
    policy, report = SnpPolicy(require_crl=True), MILAN.report()
    first = appraise(MILAN, report, policy, trust)
    second = appraise(MILAN, report, policy, trust)
    assert walks == loaded == ["SEV-Milan"]
    assert first.passed, first.first_failure
    assert "b.crl: another list (issuingDistributionPoint): not consulted" in (
        by_name(first, "snp.collateral.crl").detail
    )
    assert first.checks == second.checks and first.trust_vector == second.trust_vector
    # An ASK carried in the evidence (GHCB table; chosen before the folder's) is read with the
    # evidence, once per appraisal, and scopes the CRLs the same way.
    table = _cert_table(
        [
            (VCEK_GUID, MILAN.vek.public_bytes(Encoding.DER)),
            (ASK_GUID, MILAN.ask.public_bytes(Encoding.DER)),
        ]
    )
    walks.clear()
    carried = appraise(MILAN, cbor2.dumps({1: report, 2: table}), policy, trust)
    assert walks == ["SEV-Milan"]
    assert "evidence ASK entry" in by_name(carried, "snp.chain.ask").detail
    assert [
        (c.name, c.passed, c.detail)
        for c in carried.checks
        if c.name.startswith(("snp.collateral", "snp.chain.revocation"))
    ] == [
        (c.name, c.passed, c.detail)
        for c in first.checks
        if c.name.startswith(("snp.collateral", "snp.chain.revocation"))
    ]


# A second ASK for Milan from the same ARK, identical to MILAN.ask (name, key, serial, validity)
# but for its cRLDistributionPoints, which names a mirror instead of the KDS VCEK list.
MIRROR_CRL_URL = "https://crl.example/amd/vcek/v1/Milan/crl"
MILAN_ASK_MIRROR = MILAN.make_ask(MIRROR_CRL_URL)


@pytest.mark.parametrize("revoking", ["a.crl", "b.crl"])
def test_a_carried_ask_scopes_the_crls_by_its_own_distribution_points(revoking: str) -> None:
    kds, mirror = MILAN.ask, MILAN_ASK_MIRROR

    def cdp(cert: x509.Certificate) -> x509.CRLDistributionPoints:
        return cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value

    def rest(cert: x509.Certificate) -> tuple[Any, ...]:
        others = [e for e in cert.extensions if not isinstance(e.value, x509.CRLDistributionPoints)]
        return (
            cert.subject,
            cert.issuer,
            cert.serial_number,
            cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            others,
        )

    assert rest(mirror) == rest(kds) and cdp(mirror) != cdp(kds)
    # a.crl is scoped (IDP) to the KDS URI, b.crl to the mirror's; each ASK's distribution point
    # is one of them. ``revoking`` lists the ASKs' shared serial; the trust folder holds only
    # the KDS ASK (MILAN.chain_pem).
    crls = [
        (name, amd_crl([0x10001] if name == revoking else [], idp=url))
        for name, url in (("a.crl", MILAN.crl_url), ("b.crl", MIRROR_CRL_URL))
    ]
    trust = MILAN.trust(crls=crls)
    policy, report = SnpPolicy(require_crl=True), MILAN.report()

    def revocation_checks(a: Appraisal) -> list[tuple[str, bool, str]]:
        return [
            (c.name, c.passed, c.detail)
            for c in a.checks
            if c.name.startswith(("snp.collateral", "snp.chain.revocation"))
        ]

    results = {}
    for ask, own, other in ((kds, "a.crl", "b.crl"), (mirror, "b.crl", "a.crl")):
        table = _cert_table(
            [
                (VCEK_GUID, MILAN.vek.public_bytes(Encoding.DER)),
                (ASK_GUID, ask.public_bytes(Encoding.DER)),
            ]
        )
        a = appraise(MILAN, cbor2.dumps({1: report, 2: table}), policy, trust)
        results[own] = a
        # The carried ASK is the one chosen (before the folder's) ...
        chosen = by_name(a, "snp.chain.ask")
        assert "evidence ASK entry" in chosen.detail
        assert chosen.observed == f"sha256 {ask.fingerprint(hashes.SHA256()).hex()}"
        # ... and its own distribution point decides: the CRL scoped to it is the list for this
        # chain, the one scoped to the other ASK's is another list, not consulted.
        scopes = {
            own: f"{own}: the list for this chain",
            other: f"{other}: another list (issuingDistributionPoint): not consulted",
        }
        assert revocation_checks(a)[:2] == [
            (
                "snp.collateral.crl",
                True,
                f"{scopes['a.crl']}; {scopes['b.crl']}; all signed by ARK-Milan",
            ),
            ("snp.collateral.crl.validity", True, f"{own}: current"),
        ]
        revocation = by_name(a, "snp.chain.revocation")
        if own == revoking:
            assert failed(a) == "snp.chain.revocation"
            assert revocation.detail == f"SEV-Milan serial 0x10001 is revoked by {own}"
        else:
            # The entry on the other ASK's list is not held against it, and require_crl is met
            # by its own list.
            assert a.passed, a.first_failure
            assert revocation.detail == f"SEV-Milan serial 0x10001 is not on {own}"
    # Carrying the one ASK or the other gives opposite outcomes on the same CRLs.
    assert results["a.crl"].passed != results["b.crl"].passed
    # Without a carried ASK the folder's (the KDS one) is used: as when carrying it.
    folder = appraise(MILAN, report, policy, trust)
    assert "test anchors" in by_name(folder, "snp.chain.ask").detail
    assert revocation_checks(folder) == revocation_checks(results["a.crl"])


def _without_next_update(crl: bytes) -> bytes:
    """Re-sign ``crl`` with its nextUpdate removed (cryptography's builder always writes one)."""
    top = der.sequence(der.parse_single(crl, der.TAG_SEQUENCE, "crl"), "crl")
    tbs, alg = top.read(der.TAG_SEQUENCE), top.read(der.TAG_SEQUENCE)
    fields = der.sequence(tbs, "tbs")
    parts = []
    while not fields.at_end():
        parts.append(fields.read())
    times = [
        i for i, e in enumerate(parts) if e.tag in (der.TAG_UTC_TIME, der.TAG_GENERALIZED_TIME)
    ]
    del parts[times[1]]
    new_tbs = tlv(der.TAG_SEQUENCE, b"".join(e.raw for e in parts))
    sig = MILAN.ark_key.sign(new_tbs, PSS, hashes.SHA384())
    return tlv(der.TAG_SEQUENCE, new_tbs + alg.raw + tlv(der.TAG_BIT_STRING, b"\0" + sig))


def test_crl_without_next_update_is_refused_at_load(tmp_path: Path) -> None:
    crl = _without_next_update(amd_crl(this_update=NOW - timedelta(days=3650)))
    assert x509.load_der_x509_crl(crl).next_update_utc is None
    with pytest.raises(DecodeError, match=r"old\.crl: CRL has no nextUpdate"):
        MILAN.trust(crls=[("old.crl", crl)])
    (tmp_path / "old.crl").write_bytes(crl)
    with pytest.raises(ConfigError) as info:
        load_snp_trust(tmp_path, anchors=[("test anchors", MILAN.chain_pem())])
    assert info.value.key == str(tmp_path / "old.crl") and "nextUpdate" in str(info.value)


def test_crl_named_for_both_lists_is_refused() -> None:
    with pytest.raises(DecodeError, match="both vcek and vlek"):
        MILAN.trust(crls=[("vcek_and_vlek.crl", amd_crl())])


def test_shipped_intermediates_name_their_kds_crl() -> None:
    for name, blob in shipped_anchors():
        for cert in parse_amd_certificates(blob):
            if cert.subject_cn.startswith("ARK-"):
                continue
            product = cert.subject_cn.rsplit("-", 1)[1]
            kind = "vlek" if cert.subject_cn.startswith("SEV-VLEK-") else "vcek"
            want = f"https://kdsintf.amd.com/{kind}/v1/{product}/crl"
            assert cert.crl_distribution_uris() == {want}, name


def _patched_vek(patch: Any) -> bytes:
    """MILAN's VCEK with ``patch`` applied to its TBS, re-signed by the ASK."""
    cert = der.sequence(
        der.parse_single(MILAN.vek.public_bytes(Encoding.DER), der.TAG_SEQUENCE, "c"), "c"
    )
    tbs, alg = cert.read(der.TAG_SEQUENCE), cert.read(der.TAG_SEQUENCE)
    new_tbs = patch(tbs.raw)
    assert new_tbs != tbs.raw
    sig = MILAN.ask_key.sign(new_tbs, PSS, hashes.SHA384())
    return tlv(der.TAG_SEQUENCE, new_tbs + alg.raw + tlv(der.TAG_BIT_STRING, b"\0" + sig))


@pytest.mark.parametrize(
    "patch",
    [
        # X.509 version 6 (cryptography 50 raises InvalidVersion, not a ValueError).
        lambda tbs: tbs.replace(bytes.fromhex("a003020102"), bytes.fromhex("a003020105"), 1),
        # productName (…3704.1.2) turned into a second structVersion (…3704.1.1).
        lambda tbs: tbs.replace(
            bytes.fromhex("06092b060104019c780102"), bytes.fromhex("06092b060104019c780101"), 1
        ),
    ],
    ids=["bad-version", "duplicate-extension"],
)
def test_malformed_vek_in_the_certificate_table_is_a_format_failure(patch: Any) -> None:
    vek = _patched_vek(patch)
    table = _cert_table([(VCEK_GUID, vek)])
    evidence = cbor2.dumps({1: MILAN.report(), 2: table})
    trust = build_snp_trust([], [("test anchors", MILAN.chain_pem())])
    a = appraise(MILAN, evidence, trust=trust)
    assert failed(a) == "snp.report.format"
    assert not any(c.name == "snp.internal-error" for c in a.checks)


def _cert_table(entries: list[tuple[uuid.UUID, bytes]], le: bool = True) -> bytes:
    offset = 24 * (len(entries) + 1)
    table, data = b"", b""
    for guid, blob in entries:
        table += (guid.bytes_le if le else guid.bytes) + struct.pack(
            "<II", offset + len(data), len(blob)
        )
        data += blob
    return table + bytes(24) + data


VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
EXTRA_GUID = uuid.UUID("ecae0c0f-9502-43b1-afa2-0ae2e0d565b6")


@pytest.mark.parametrize("little_endian", [True, False])
def test_report_with_certificate_table(little_endian: bool) -> None:
    table = _cert_table(
        [
            (VCEK_GUID, MILAN.vek.public_bytes(Encoding.DER)),
            (ASK_GUID, MILAN.ask.public_bytes(Encoding.DER)),
            (ARK_GUID, MILAN.ark.public_bytes(Encoding.DER)),
            (EXTRA_GUID, b"\x01" * 8),
        ],
        le=little_endian,
    )
    evidence = cbor2.dumps({1: MILAN.report(), 2: table})
    no_veks = build_snp_trust([], [("test anchors", MILAN.chain_pem())])
    a = appraise(MILAN, evidence, trust=no_veks)
    assert a.passed, a.first_failure
    assert "evidence VCEK entry" in by_name(a, "snp.vek").detail
    # A garbage VCEK entry is a format failure, not a crash.
    junk = cbor2.dumps({1: MILAN.report(), 2: _cert_table([(VCEK_GUID, b"\x30\x03abc")])})
    assert failed(appraise(MILAN, junk, trust=no_veks)) == "snp.report.format"


def _broken_asks(n: int) -> list[bytes]:
    """``n`` distinct copies of MILAN's ASK with one signature byte changed each: the ASK's
    name, so each is a candidate issuer of the VCEK, and a signature that does not verify."""
    good = MILAN.ask.public_bytes(Encoding.DER)
    return [good[: -1 - i] + bytes([good[-1 - i] ^ 1]) + good[len(good) - i :] for i in range(n)]


def _pem(ders: Sequence[bytes]) -> bytes:
    import base64

    return b"".join(
        b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(d) + b"-----END CERTIFICATE-----\n"
        for d in ders
    )


@pytest.mark.parametrize("shift", [0, 1], ids=["same-bytes", "shifted-views"])
def test_repeated_certificates_in_the_table_are_read_and_checked_once(
    monkeypatch: pytest.MonkeyPatch, shift: int
) -> None:
    """31 entries pointing at one PEM blob of 16 copies of a bad ASK — at the same offset, or
    each a byte later (text around PEM blocks is ignored, so every view holds the same 16):
    496 candidates before the folder's good ASK, each parsed and RSA-verified (~80× a plain
    appraisal). Each distinct certificate is parsed once and checked once."""
    from atls_proxy.verify.snp import verifier as snp_verifier

    parsed: list[bytes] = []
    checked: list[bytes] = []
    real_parse, real_check = snp_verifier.parse_amd_certificate, snp_verifier.signature_problem

    def parse(der_bytes: bytes) -> AmdCert:
        parsed.append(der_bytes)
        return real_parse(der_bytes)

    def check(cert: AmdCert, issuer: Any) -> str:
        checked.append(cert.der)
        return real_check(cert, issuer)

    monkeypatch.setattr(snp_verifier, "parse_amd_certificate", parse)
    monkeypatch.setattr(snp_verifier, "signature_problem", check)
    vek = MILAN.vek.public_bytes(Encoding.DER)
    bad_ask = _broken_asks(1)[0]
    blob = b"-" * 31 + _pem([bad_ask] * 16)  # room for 31 shifted views of the same blocks
    start = 24 * 33 + len(vek)
    entries = [(VCEK_GUID.bytes_le, 24 * 33, len(vek))] + [
        (ASK_GUID.bytes_le, start + i * shift, len(blob) - i * shift) for i in range(31)
    ]
    table = b"".join(g + struct.pack("<II", o, n) for g, o, n in entries) + bytes(24) + vek + blob
    trust = build_snp_trust([], [("test anchors", MILAN.chain_pem())])
    a = appraise(MILAN, cbor2.dumps({1: MILAN.report(), 2: table}), trust=trust)
    assert a.passed, a.first_failure
    # the folder's ASK, after the carried copy failed its signature
    assert "from test anchors" in by_name(a, "snp.chain.ask").detail
    assert parsed == [vek, bad_ask]
    assert checked.count(bad_ask) == 1


def test_more_distinct_certificates_than_a_chain_needs_are_refused() -> None:
    vek = MILAN.vek.public_bytes(Encoding.DER)
    trust = build_snp_trust([], [("test anchors", MILAN.chain_pem())])
    for asks, passes in ((MAX_EVIDENCE_CERTS - 1, True), (MAX_EVIDENCE_CERTS, False)):
        table = _cert_table([(VCEK_GUID, vek), (ASK_GUID, _pem(_broken_asks(asks)))])
        a = appraise(MILAN, cbor2.dumps({1: MILAN.report(), 2: table}), trust=trust)
        if passes:
            assert a.passed, a.first_failure
        else:
            assert failed(a) == "snp.report.format"
            assert f"more than {MAX_EVIDENCE_CERTS} distinct certificates" in (
                by_name(a, "snp.report.format").detail
            )


def test_chain_signatures_that_verified_are_not_verified_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ARK, ASK and VCEK are the same in every appraisal of a platform: each RSA verification
    that passed is remembered by the exact bytes of certificate and issuer; a failed one, or any
    other bytes, is verified again."""
    from atls_proxy.verify.snp import certs as snp_certs

    monkeypatch.setattr(snp_certs, "_VERIFIED", snp_certs.OrderedDict())
    done: list[str] = []
    real = snp_certs._signature_problem

    def verify(cert: AmdCert, issuer: AmdCert) -> str:
        done.append(cert.subject_cn)
        return real(cert, issuer)

    monkeypatch.setattr(snp_certs, "_signature_problem", verify)
    trust, report = MILAN.trust(), MILAN.report()
    first = appraise(MILAN, report, trust=trust)
    assert first.passed, first.first_failure
    assert sorted(done) == sorted(["ARK-Milan", "SEV-Milan", "SEV-VCEK"]), done
    done.clear()
    again = appraise(MILAN, report, trust=trust)
    assert done == [] and again.checks == first.checks
    # a carried ASK with a broken signature: verified (and refused) every time
    vek = MILAN.vek.public_bytes(Encoding.DER)
    table = _cert_table([(VCEK_GUID, vek), (ASK_GUID, _broken_asks(1)[0])])
    for _ in range(2):
        done.clear()
        a = appraise(MILAN, cbor2.dumps({1: report, 2: table}), trust=trust)
        assert a.passed and done == ["SEV-Milan"], done  # then the folder's ASK, remembered
    # bounded: with room for two, a chain of three is verified in part again
    monkeypatch.setattr(snp_certs, "VERIFIED_KEPT", 2)
    snp_certs._VERIFIED.clear()
    appraise(MILAN, report, trust=trust)
    assert len(snp_certs._VERIFIED) == 2
    done.clear()
    assert appraise(MILAN, report, trust=trust).passed
    assert done and len(snp_certs._VERIFIED) == 2


def test_verifier_class_uses_binding_and_clock() -> None:
    from atls_proxy.expat.binding import Binding

    binding = Binding("sha256", REPORT_DATA[:32], REPORT_DATA[32:])
    v = SnpVerifier(SnpPolicy(), MILAN.trust(), lambda: NOW)
    assert v.accepts(MEDIA_TYPE) and v.accepts(CERTS_MEDIA_TYPE)
    assert not v.accepts("application/vnd.atls-proxy.tdx-quote")
    assert v.appraise(MEDIA_TYPE, MILAN.report(), binding, 0.0).passed
    other = Binding("sha256", bytes(32), bytes(32))
    assert failed(v.appraise(MEDIA_TYPE, MILAN.report(), other, 0.0)) == "snp.report-data"


# -- the policy parser -------------------------------------------------------------------------


def _no_files(name: str) -> bytes:
    raise AssertionError(name)


def test_policy_defaults_are_safe() -> None:
    p = parse_snp_policy({}, "snp", _no_files)
    assert p == SnpPolicy()
    assert not p.allow_debug and not p.allow_migration_agent and p.signing_keys == {"vcek", "vlek"}


def test_policy_full_table() -> None:
    table = {
        "product": "turin",
        "signing_keys": ["VCEK"],
        "allow_debug": True,
        "allow_migration_agent": True,
        "allow_smt": False,
        "require_single_socket": True,
        "min_abi": "1.51",
        "min_firmware": "1.55",
        "min_guest_svn": 3,
        "accepted_vmpls": [0, 1],
        "require_crl": True,
        "min_tcb": {"bootloader": 3, "fmc": 1},
        "registers": {"measurement": ["ab" * 48], "family_id": ["00" * 16, "01" * 16]},
    }
    p = parse_snp_policy(table, "snp", _no_files)
    assert p.product == "Turin" and p.signing_keys == {"vcek"} and p.min_abi == (1, 51)
    assert p.accepted_vmpls == frozenset({0, 1}) and p.min_tcb == {"bootloader": 3, "fmc": 1}
    assert len(p.registers["family_id"]) == 2


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"bogus": 1}, "snp.bogus"),
        ({"product": "Naples"}, "snp.product"),
        ({"signing_keys": ["ask"]}, "snp.signing_keys[0]"),
        ({"signing_keys": []}, "snp.signing_keys"),
        ({"allow_debug": "yes"}, "snp.allow_debug"),
        ({"min_abi": "1"}, "snp.min_abi"),
        ({"min_firmware": "1.300"}, "snp.min_firmware"),
        ({"min_guest_svn": -1}, "snp.min_guest_svn"),
        ({"accepted_vmpls": [4]}, "snp.accepted_vmpls[0]"),
        ({"min_tcb": {"pci": 1}}, "snp.min_tcb.pci"),
        ({"min_tcb": {"snp": 256}}, "snp.min_tcb.snp"),
        ({"min_tcb": 3}, "snp.min_tcb"),
        ({"registers": {"rtmr0": ["00"]}}, "snp.registers.rtmr0"),
        ({"registers": {"measurement": ["00" * 32]}}, "snp.registers.measurement[0]"),
        ({"registers": {"measurement": ["zz"]}}, "snp.registers.measurement[0]"),
        ({"registers": {"host_data": []}}, "snp.registers.host_data"),
    ],
)
def test_policy_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_snp_policy(table, "snp", _no_files)
    assert info.value.key == key


def test_a_vek_not_signed_by_the_ask_fails_the_chain() -> None:
    # The same subject, issuer name, extensions and key as the genuine VCEK, signed by a key that
    # is not the ASK's: the issuer *name* matches, the signature does not (snp.chain.vek). The
    # report itself is signed by the VCEK's key, so only the chain check can catch it.
    genuine = MILAN.vek
    foreign = _key("foreign-ask", lambda: rsa.generate_private_key(65537, 2048))
    builder = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.issuer)
        .public_key(MILAN.vek_key.public_key())
        .serial_number(genuine.serial_number)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
    )
    for ext in genuine.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    forged = builder.sign(foreign, hashes.SHA384(), rsa_padding=PSS)
    trust = MILAN.trust(certificates=[("vek.der", forged.public_bytes(Encoding.DER))])
    a = appraise(MILAN, MILAN.report(), trust=trust)
    assert failed(a) == "snp.chain.vek", a.first_failure
    assert appraise(MILAN, MILAN.report()).passed  # the genuine chain still passes
