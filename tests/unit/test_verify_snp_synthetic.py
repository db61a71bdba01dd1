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
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from atls_proxy.errors import ConfigError
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
from atls_proxy.verify.snp.report import POLICY_DEBUG, POLICY_MIGRATE_MA, POLICY_SINGLE_SOCKET

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
        ask_cn = f"SEV-VLEK-{self.product}" if self.kind == "vlek" else f"SEV-{self.product}"
        self.ask = self._cert(
            _name(ask_cn),
            ark_name,
            self.ark_key,
            self.ask_key.public_key(),
            self.serials["ask"],
            start,
        )
        self.vek = self.make_vek()

    def _cert(
        self,
        subject: x509.Name,
        issuer: x509.Name,
        signer: Any,
        public: Any,
        serial: int,
        start: datetime,
        extensions: Sequence[x509.Extension[x509.UnrecognizedExtension]] = (),
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
    assert "fmc not in this product" in by_name(ok, "snp.tcb.minimum").detail
    turin = appraise(TURIN, TURIN.report(), policy=SnpPolicy(min_tcb={"fmc": 2}))
    assert failed(turin) == "snp.tcb.minimum"
    fw = appraise(MILAN, MILAN.report(), policy=SnpPolicy(min_firmware=(1, 56)))
    assert failed(fw) == "snp.firmware"
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
