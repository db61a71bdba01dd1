"""TDX verifier against a synthetic Intel-shaped PKI: what real vectors cannot exercise.

The vectors are signed by Intel, so revocation, a v5 quote with a TD 1.0 body, debug and register
policies, grace dates and the TCB rules' corner cases need quotes and collateral we sign
ourselves. ``Synth`` builds the whole hierarchy (root, PCK CA, PCK leaf with SGX extensions, TCB
Signing cert, CRLs, TCB Info, QE Identity) and quotes in the DCAP v4/v5 layout; nothing here is
needed by the vector tests in test_verify_tdx.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from atls_proxy.errors import DecodeError
from atls_proxy.expat.binding import Binding
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.tdx import (
    MEDIA_TYPE,
    TdxPolicy,
    TdxTrust,
    TdxVerifier,
    appraise_tdx,
    build_tdx_trust,
    parse_certificates,
    parse_crl,
    parse_qe_identity,
    parse_quote,
    parse_tcb_info,
)
from atls_proxy.verify.tdx import tcb as rules
from atls_proxy.verify.tdx.collateral import IsvTcbLevel, ModuleIdentity, TcbInfo, TcbLevel
from atls_proxy.verify.tdx.pck import parse_sgx_extensions, pck_extensions
from atls_proxy.verify.tdx.quote import INTEL_QE_VENDOR_ID
from tests.support.der import tlv

NOW = datetime(2025, 1, 15, tzinfo=UTC)
QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
FMSPC = bytes.fromhex("00806f050000")
SGX_OID = "1.2.840.113741.1.13.1"


# -- the SGX extension in DER (X.690; elements by tests/support/der.py) ----------------------


def _oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def _int(v: int) -> bytes:
    return tlv(0x02, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big"))


def _pair(oid: str, value: bytes) -> bytes:
    return tlv(0x30, _oid(oid) + value)


def sgx_extension(
    fmspc: bytes, comps: tuple[int, ...], pcesvn: int, pceid: bytes = b"\0\0"
) -> bytes:
    tcb = b"".join(_pair(f"{SGX_OID}.2.{i + 1}", _int(c)) for i, c in enumerate(comps))
    tcb += _pair(f"{SGX_OID}.2.17", _int(pcesvn)) + _pair(f"{SGX_OID}.2.18", tlv(4, bytes(comps)))
    return tlv(
        0x30,
        _pair(f"{SGX_OID}.1", tlv(4, b"\x11" * 16))
        + _pair(f"{SGX_OID}.2", tlv(0x30, tcb))
        + _pair(f"{SGX_OID}.3", tlv(4, pceid))
        + _pair(f"{SGX_OID}.4", tlv(4, fmspc))
        + _pair(f"{SGX_OID}.5", tlv(0x0A, b"\x00")),
    )


# -- the synthetic Intel-shaped world ---------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Synthetic Test"),
        ]
    )


def _raw_sig(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_pub(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)[1:]


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    serial: int,
    not_before: datetime = datetime(2020, 1, 1, tzinfo=UTC),
    not_after: datetime = datetime(2030, 1, 1, tzinfo=UTC),
    extension: bytes | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if extension is not None:
        b = b.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), extension), critical=False
        )
    return b.sign(issuer_key, hashes.SHA256())


def _crl(
    issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, revoked: tuple[int, ...] = ()
) -> bytes:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(NOW - timedelta(days=10))
        .next_update(NOW + timedelta(days=20))
    )
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - timedelta(days=11))
            .build()
        )
    return b.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def _level(
    sgx: int, pce: int, tdx: tuple[int, ...], status: str, adv: tuple[str, ...] = ()
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "tcb": {
            "sgxtcbcomponents": [{"svn": sgx}] * 16,
            "pcesvn": pce,
            "tdxtcbcomponents": [{"svn": v} for v in tdx + (0,) * (16 - len(tdx))],
        },
        "tcbDate": "2024-01-01T00:00:00Z",
        "tcbStatus": status,
    }
    if adv:
        out["advisoryIDs"] = list(adv)
    return out


def default_tcb_info() -> dict[str, Any]:
    zero48 = "00" * 48
    return {
        "id": "TDX",
        "version": 3,
        "issueDate": "2025-01-10T00:00:00Z",
        "nextUpdate": "2025-02-10T00:00:00Z",
        "fmspc": FMSPC.hex(),
        "pceId": "0000",
        "tcbType": 0,
        "tcbEvaluationDataNumber": 17,
        "tdxModule": {"mrsigner": zero48, "attributes": "00" * 8, "attributesMask": "ff" * 8},
        "tdxModuleIdentities": [
            {
                "id": "TDX_01",
                "mrsigner": zero48,
                "attributes": "00" * 8,
                "attributesMask": "ff" * 8,
                "tcbLevels": [
                    {
                        "tcb": {"isvsvn": 4},
                        "tcbDate": "2024-03-13T00:00:00Z",
                        "tcbStatus": "UpToDate",
                    },
                    {
                        "tcb": {"isvsvn": 2},
                        "tcbDate": "2023-08-09T00:00:00Z",
                        "tcbStatus": "OutOfDate",
                        "advisoryIDs": ["INTEL-SA-MODULE"],
                    },
                ],
            }
        ],
        "tcbLevels": [
            _level(7, 11, (5, 0, 7), "UpToDate"),
            _level(6, 11, (3, 0, 6), "OutOfDate", ("INTEL-SA-00960",)),
            _level(5, 11, (3, 0, 5), "ConfigurationNeeded", ("INTEL-SA-00837",)),
        ],
    }


def default_qe_identity() -> dict[str, Any]:
    return {
        "id": "TD_QE",
        "version": 2,
        "issueDate": "2025-01-10T00:00:00Z",
        "nextUpdate": "2025-02-10T00:00:00Z",
        "tcbEvaluationDataNumber": 17,
        "miscselect": "00000000",
        "miscselectMask": "FFFFFFFF",
        "attributes": "11000000000000000000000000000000",
        "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": QE_MRSIGNER.hex().upper(),
        "isvprodid": 2,
        "tcbLevels": [
            {"tcb": {"isvsvn": 4}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"},
            {
                "tcb": {"isvsvn": 2},
                "tcbDate": "2023-01-01T00:00:00Z",
                "tcbStatus": "OutOfDate",
                "advisoryIDs": ["INTEL-SA-QE"],
            },
        ],
    }


@dataclass
class Synth:
    """A complete synthetic DCAP world; change fields, then call ``trust()`` / ``quote()``."""

    sgx_svn: int = 7
    pcesvn: int = 11
    tee_tcb_svn: bytes = bytes([4, 1, 7]) + bytes(13)
    tee_tcb_svn2: bytes = bytes([4, 1, 7]) + bytes(13)
    td_attributes: bytes = bytes(8)
    mrtd: bytes = b"\x5a" * 48
    report_data: bytes = b"\x77" * 64
    qe_isvsvn: int = 6
    qe_mrsigner: bytes = QE_MRSIGNER
    qe_miscselect: bytes = bytes(4)  # the QE report's MISCSELECT bytes (a little-endian uint32)
    version: int = 4
    body_type: int = 2
    pck_revoked: tuple[int, ...] = ()
    root_revoked: tuple[int, ...] = ()
    tcb_info: dict[str, Any] = field(default_factory=default_tcb_info)
    qe_identity: dict[str, Any] = field(default_factory=default_qe_identity)

    def __post_init__(self) -> None:
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(5)]
        self.root_key, self.ca_key, self.leaf_key, self.signing_key, self.ak = keys
        self.root = _cert(
            "Intel SGX Root CA", self.root_key, None, self.root_key, ca=True, serial=1
        )
        self.ca = _cert(
            "Intel SGX PCK Platform CA", self.ca_key, self.root, self.root_key, ca=True, serial=2
        )
        self.signing = _cert(
            "Intel SGX TCB Signing", self.signing_key, self.root, self.root_key, ca=False, serial=3
        )
        self.make_leaf()

    def make_leaf(self) -> None:
        self.leaf = _cert(
            "Intel SGX PCK Certificate",
            self.leaf_key,
            self.ca,
            self.ca_key,
            ca=False,
            serial=0x1234,
            extension=sgx_extension(FMSPC, (self.sgx_svn,) * 16, self.pcesvn),
        )

    def signed_json(self, key: str, body: dict[str, Any]) -> bytes:
        raw = json.dumps(body, separators=(",", ":")).encode()
        sig = _raw_sig(self.signing_key, raw)
        return b'{"' + key.encode() + b'":' + raw + b',"signature":"' + sig.hex().encode() + b'"}'

    def trust(self, **kw: Any) -> TdxTrust:
        args: dict[str, Any] = {
            "root": self.root,
            "root_source": "synthetic root",
            "root_crl": parse_crl(_crl(self.root, self.root_key, self.root_revoked), "root_ca_crl"),
            "pck_crls": [parse_crl(_crl(self.ca, self.ca_key, self.pck_revoked), "pck_crl")],
            "tcb_infos": [parse_tcb_info(self.signed_json("tcbInfo", self.tcb_info), "tcb_info")],
            "qe_identity": parse_qe_identity(
                self.signed_json("enclaveIdentity", self.qe_identity), "qe_identity"
            ),
            "signers": [("tcb_signing", self.signing)],
        }
        args.update(kw)
        return build_tdx_trust(**args)

    def body(self) -> bytes:
        b = bytearray(584)
        b[0:16] = self.tee_tcb_svn
        b[16:64] = b"\x01" * 48  # MRSEAM
        b[120:128] = self.td_attributes
        b[136:184] = self.mrtd
        for i in range(4):
            b[328 + 48 * i : 376 + 48 * i] = bytes([0x10 + i]) * 48
        b[520:584] = self.report_data
        if self.body_type == 3:
            b += self.tee_tcb_svn2 + b"\x22" * 48
        return bytes(b)

    def quote(
        self,
        *,
        auth: bytes = b"\x42" * 32,
        qe_report_data_tail: bytes = bytes(32),
        chain_pem: bytes | None = None,
    ) -> bytes:
        header = struct.pack("<HHIHH", self.version, 2, 0x81, 0, 0) + INTEL_QE_VENDOR_ID + bytes(20)
        body = self.body()
        if self.version == 5:
            signed = header + struct.pack("<HI", self.body_type, len(body)) + body
        else:
            signed = header + body
        ak = _raw_pub(self.ak)
        qe = bytearray(384)
        qe[16:20] = self.qe_miscselect
        qe[48] = 0x11
        qe[128:160] = self.qe_mrsigner
        struct.pack_into("<HH", qe, 256, 2, self.qe_isvsvn)
        qe[320:352] = hashlib.sha256(ak + auth).digest()
        qe[352:384] = qe_report_data_tail  # QVL: must be zero
        qe_sig = _raw_sig(self.leaf_key, bytes(qe))
        chain = chain_pem or b"".join(
            c.public_bytes(Encoding.PEM) for c in (self.leaf, self.ca, self.root)
        )
        inner = (
            bytes(qe)
            + qe_sig
            + struct.pack("<H", len(auth))
            + auth
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
        sig_data = _raw_sig(self.ak, signed) + ak + struct.pack("<HI", 6, len(inner)) + inner
        return signed + struct.pack("<I", len(sig_data)) + sig_data


def run(
    s: Synth,
    policy: TdxPolicy | None = None,
    trust: TdxTrust | None = None,
    now: datetime = NOW,
    expected: bytes | None = None,
    quote: bytes | None = None,
) -> Appraisal:
    return appraise_tdx(
        quote if quote is not None else s.quote(),
        policy=policy or TdxPolicy(),
        trust=trust or s.trust(),
        now=now,
        expected_report_data=expected,
    )


def failed(a: Appraisal) -> list[str]:
    return [c.name for c in a.checks if not c.passed]


def check(a: Appraisal, name: str) -> Any:
    return next(c for c in a.checks if c.name == name)


# -- tests ------------------------------------------------------------------------------------


def test_extension_round_trip() -> None:
    ext = parse_sgx_extensions(sgx_extension(FMSPC, tuple(range(16)), 13, b"\x12\x34"))
    assert ext.fmspc == FMSPC and ext.pce_id == b"\x12\x34" and ext.pce_svn == 13
    assert ext.sgx_tcb_components == tuple(range(16))


@pytest.mark.parametrize(("version", "body_type"), [(4, 2), (5, 2), (5, 3)])
def test_synthetic_quote_passes(version: int, body_type: int) -> None:
    s = Synth(version=version, body_type=body_type)
    q = parse_quote(s.quote())
    assert q.version == version and q.body_type == body_type and q.body.is_td15 == (body_type == 3)
    a = run(s, expected=s.report_data)
    assert a.passed, failed(a)
    assert check(a, "tdx.tcb.status").observed == "UpToDate"
    assert a.trust_vector == {"instance-identity": 2, "hardware": 2, "configuration": 2}
    names = [c.name for c in a.checks]
    assert ("tdx.register.mrservicetd" in names) == (body_type == 3)
    assert "tdx.quote.trailing-bytes" not in names


def test_verifier_class_and_binding() -> None:
    s = Synth()
    s.report_data = bytes(range(64))
    v = TdxVerifier(TdxPolicy(), s.trust(), clock=lambda: NOW)
    assert v.accepts(MEDIA_TYPE) and v.accepts(MEDIA_TYPE.upper())
    assert not v.accepts(MEDIA_TYPE + "; x=1") and not v.accepts("application/eat+cwt")
    good = Binding("sha256", bytes(range(32)), bytes(range(32, 64)))
    assert v.appraise(MEDIA_TYPE, s.quote(), good, 0.0).passed
    bad = Binding("sha256", bytes(32), bytes(range(32, 64)))
    a = v.appraise(MEDIA_TYPE, s.quote(), bad, 0.0)
    assert failed(a) == ["tdx.report-data"]


def test_revoked_pck_leaf() -> None:
    s = Synth(pck_revoked=(0x1234,))
    a = run(s)
    assert failed(a) == ["tdx.pck.revocation"]
    assert "PCK leaf serial 1234" in check(a, "tdx.pck.revocation").detail


def test_revoked_pck_ca_on_root_crl() -> None:
    s = Synth(root_revoked=(2,))
    assert failed(run(s)) == ["tdx.pck.revocation"]


def test_revoked_tcb_signing_cert() -> None:
    s = Synth(root_revoked=(3,))
    assert failed(run(s)) == ["tdx.collateral.tcb-signing.validity"]


def test_pck_crl_from_another_issuer_stops() -> None:
    s = Synth()
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("Intel SGX PCK Processor CA", other_key, s.root, s.root_key, ca=True, serial=9)
    trust = s.trust(pck_crls=[parse_crl(_crl(other, other_key), "processor")])
    a = run(s, trust=trust)
    assert failed(a) == ["tdx.collateral.pck-crl"] and a.checks[-1].name == "tdx.collateral.pck-crl"


def test_pck_crl_signed_by_wrong_key_stops() -> None:
    s = Synth()
    forged_key = ec.generate_private_key(ec.SECP256R1())
    trust = s.trust(pck_crls=[parse_crl(_crl(s.ca, forged_key), "forged")])
    a = run(s, trust=trust)
    assert a.first_failure is not None and a.first_failure.name == "tdx.collateral.pck-crl"
    assert a.checks[-1].name == "tdx.collateral.pck-crl"


@pytest.mark.parametrize(
    ("tud", "said"),
    [
        (0x01, "(DEBUG set)"),
        (0x02, "(DEBUG clear, reserved TUD bits 0x02)"),
        (0x81, "(DEBUG set, reserved TUD bits 0x80)"),
    ],
)
def test_debug_td(tud: int, said: str) -> None:
    # DEBUG (bit 0), and the TUD group's reserved bits 7:1: a TD "under debug" either way
    s = Synth(td_attributes=bytes([tud]) + bytes(7))
    a = run(s)
    assert failed(a) == ["tdx.debug"] and a.trust_vector["configuration"] == 96
    check = next(c for c in a.checks if c.name == "tdx.debug")
    assert check.observed is not None and check.observed.endswith(said), check.observed
    a = run(s, policy=TdxPolicy(allow_debug=True))
    assert a.passed and a.trust_vector["configuration"] == 32


def test_registers() -> None:
    s = Synth(version=5, body_type=2)
    ok = TdxPolicy(
        registers={"mrtd": frozenset({b"\x00" * 48, s.mrtd}), "rtmr2": frozenset({b"\x12" * 48})}
    )
    a = run(s, policy=ok)
    assert a.passed and a.trust_vector["executables"] == 2
    assert [c.name for c in a.checks if c.name.startswith("tdx.register")][:2] == [
        "tdx.register.mrtd",
        "tdx.register.rtmr0",
    ]
    assert check(a, "tdx.register.rtmr0").detail == "not constrained by policy"
    bad = TdxPolicy(registers={"rtmr3": frozenset({b"\x00" * 48})})
    a = run(s, policy=bad)
    assert failed(a) == ["tdx.register.rtmr3"] and a.trust_vector["executables"] == 96
    absent = TdxPolicy(registers={"mrservicetd": frozenset({b"\x22" * 48})})
    a = run(s, policy=absent)
    assert failed(a) == ["tdx.register.mrservicetd"]
    assert check(a, "tdx.register.mrservicetd").observed == "absent"
    assert run(Synth(version=5, body_type=3), policy=absent).passed


def test_out_of_date_and_grace() -> None:
    s = Synth(sgx_svn=6, tee_tcb_svn=bytes([4, 1, 6]) + bytes(13))
    a = run(s)
    st = check(a, "tdx.tcb.status")
    assert failed(a) == ["tdx.tcb.status"] and st.observed == "OutOfDate [INTEL-SA-00960]"
    assert a.trust_vector["hardware"] == 32
    assert run(
        s, policy=TdxPolicy(accepted_tcb_statuses=frozenset({"UpToDate", "OutOfDate"}))
    ).passed
    grace = TdxPolicy(out_of_date_grace_until=NOW + timedelta(days=1))
    assert run(s, policy=grace).passed
    late = TdxPolicy(out_of_date_grace_until=NOW - timedelta(days=1))
    a = run(s, policy=late)
    assert (
        failed(a) == ["tdx.tcb.status"]
        and "grace period ended" in check(a, "tdx.tcb.status").detail
    )


def test_module_out_of_date_and_qe_out_of_date() -> None:
    a = run(Synth(tee_tcb_svn=bytes([3, 1, 7]) + bytes(13)))
    assert check(a, "tdx.tcb.status").observed == "OutOfDate [INTEL-SA-MODULE]"
    a = run(Synth(qe_isvsvn=3))
    assert check(a, "tdx.tcb.status").observed == "OutOfDate [INTEL-SA-QE]"
    a = run(Synth(sgx_svn=5, tee_tcb_svn=bytes([4, 1, 5]) + bytes(13), qe_isvsvn=3))
    assert check(a, "tdx.tcb.status").observed.startswith("OutOfDateConfigurationNeeded")


@pytest.mark.parametrize("status", ["ConfigurationNeeded", "OutOfDateConfigurationNeeded", "New"])
def test_a_qe_level_with_another_status_counts_as_out_of_date(status: str) -> None:
    # QVL (EnclaveReportVerifier 4.1.2.9.9): not UpToDate and not Revoked is OutOfDate.
    ident = default_qe_identity()
    ident["tcbLevels"][0]["tcbStatus"] = status  # the level QE ISVSVN 6 matches
    a = run(Synth(qe_identity=ident))
    st = check(a, "tdx.tcb.status")
    assert failed(a) == ["tdx.tcb.status"] and st.observed == "OutOfDate", st
    assert f"QE {status} (as OutOfDate)" in st.detail, st
    ok = TdxPolicy(accepted_tcb_statuses=frozenset({"UpToDate", "OutOfDate"}))
    assert run(Synth(qe_identity=ident), policy=ok).passed


@pytest.mark.parametrize("status", ["ConfigurationNeeded", "SWHardeningNeeded", "New"])
def test_a_module_level_with_another_status_is_never_accepted(status: str) -> None:
    # QVL (TdxModuleCheck): UpToDate, OutOfDate or Revoked, else STATUS_TCB_UNRECOGNIZED_STATUS.
    info = default_tcb_info()
    info["tdxModuleIdentities"][0]["tcbLevels"][0]["tcbStatus"] = status
    every = frozenset(rules.TCB_STATUSES) - {"Revoked"}
    a = run(Synth(tcb_info=info), policy=TdxPolicy(accepted_tcb_statuses=every))
    st = check(a, "tdx.tcb.status")
    assert failed(a) == ["tdx.tcb.status"], st
    assert st.observed.startswith(f"UnrecognizedModuleStatus({status})"), st


def test_qe_miscselect_is_compared_in_report_byte_order() -> None:
    # The identity's hex is the field's bytes as the report holds them (a little-endian uint32),
    # as for attributes: "01000000" is MISCSELECT 1 (Intel's QVL reads it the same way).
    for value, mask, report, ok in [
        ("01000000", "FFFFFFFF", b"\x01\x00\x00\x00", True),
        ("00000001", "FFFFFFFF", b"\x01\x00\x00\x00", False),
        ("00000001", "FFFFFFFF", b"\x00\x00\x00\x01", True),
        ("00000000", "FEFFFFFF", b"\x01\x00\x00\x00", True),  # bit 0 masked out
        ("00000000", "FFFFFFFE", b"\x01\x00\x00\x00", False),
    ]:
        ident = default_qe_identity()
        ident["miscselect"], ident["miscselectMask"] = value, mask
        a = run(Synth(qe_identity=ident, qe_miscselect=report))
        assert a.passed is ok and (ok or failed(a) == ["tdx.qe.identity"]), (value, mask, report)


def test_no_tcb_level_and_missing_module_identity() -> None:
    a = run(Synth(sgx_svn=4))
    assert failed(a) == ["tdx.tcb.level"] and a.trust_vector["hardware"] == 97
    assert "tdx.tcb.status" not in [c.name for c in a.checks]
    assert check(a, "tdx.report-data").passed  # the TD's own claims are still reported
    a = run(Synth(tee_tcb_svn=bytes([4, 2, 7]) + bytes(13)))
    assert failed(a) == ["tdx.tcb.module"] and "TDX_02" in check(a, "tdx.tcb.module").detail
    a = run(Synth(tee_tcb_svn=bytes([1, 1, 7]) + bytes(13)))
    assert failed(a) == ["tdx.tcb.level"]  # module ISVSVN 1 is below every TDX_01 level


def test_qe_identity_mismatch_stops() -> None:
    a = run(Synth(qe_mrsigner=b"\x01" * 32))
    assert failed(a) == ["tdx.qe.identity"] and a.checks[-1].name == "tdx.qe.identity"
    assert a.trust_vector["instance-identity"] == 96


def test_qe_report_binding_and_signatures() -> None:
    s = Synth()
    q = bytearray(s.quote())
    # QE auth data starts after header, body, sig_len, sig, ak, cert header, QE report, QE sig, len.
    auth_at = 48 + 584 + 4 + 64 + 64 + 6 + 384 + 64 + 2
    q[auth_at] ^= 1
    assert failed(run(s, quote=bytes(q))) == ["tdx.qe.report-data"]
    q = bytearray(s.quote())
    q[48 + 584 + 4 + 64 + 64 + 6 + 320] ^= 1  # QE REPORTDATA: the QE report signature breaks first
    assert failed(run(s, quote=bytes(q))) == ["tdx.signature.qe-report"]


def test_qe_report_data_upper_half_must_be_zero() -> None:
    # QVL 4.1.2.4.13 compares all 64 bytes: SHA-256(AK ‖ auth data) ‖ 32 zero bytes. Byte 40 is
    # set and the QE report re-signed with the PCK key, so only the binding check can catch it.
    s = Synth()
    tail = bytearray(32)
    tail[40 - 32] = 1
    a = run(s, quote=s.quote(qe_report_data_tail=bytes(tail)), expected=s.report_data)
    assert failed(a) == ["tdx.qe.report-data"]
    assert check(a, "tdx.signature.qe-report").passed
    assert check(a, "tdx.qe.report-data").expected.endswith("00" * 32)


# -- peer-supplied PCK certificates that cryptography cannot inspect ---------------------------

_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")  # AlgorithmIdentifier (RFC 5758)


def _resign(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, old: bytes, new: bytes
) -> bytes:
    """``cert`` with ``old`` replaced by ``new`` in its TBS, signed again by ``key`` (DER)."""
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(old) == 1
    tbs = tbs.replace(old, new)
    return tlv(
        0x30, tbs + _ECDSA_SHA256 + tlv(0x03, b"\0" + key.sign(tbs, ec.ECDSA(hashes.SHA256())))
    )


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"


def _with_duplicate_basic_constraints(
    s: Synth,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    serial: int,
) -> bytes:
    """A certificate whose issuerAltName (2.5.29.18) is renamed basicConstraints (2.5.29.19),
    so it carries basicConstraints twice (RFC 5280 §4.2 forbids it), signed by ``issuer_key``."""
    bc = tlv(0x30, tlv(0x01, b"\xff"))
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2030, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.18"), bc), critical=False
        )
    )
    if not ca:
        b = b.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(SGX_OID), sgx_extension(FMSPC, (s.sgx_svn,) * 16, s.pcesvn)
            ),
            critical=False,
        )
    cert = b.sign(issuer_key, hashes.SHA256())
    return _resign(cert, issuer_key, _oid("2.5.29.18"), _oid("2.5.29.19"))


def _chain(s: Synth, *, leaf: bytes | None = None, ca: bytes | None = None) -> bytes:
    """The PEM chain leaf → CA → root, with ``leaf`` / ``ca`` (DER) in place of Synth's."""
    return (
        (_pem(leaf) if leaf else s.leaf.public_bytes(Encoding.PEM))
        + (_pem(ca) if ca else s.ca.public_bytes(Encoding.PEM))
        + s.root.public_bytes(Encoding.PEM)
    )


def test_pck_ca_with_an_invalid_version_fails_the_chain() -> None:
    s = Synth()
    # X.509 version field 5: cryptography 50 raises InvalidVersion, which is not a ValueError.
    bad = _resign(s.ca, s.root_key, bytes.fromhex("a003020102"), bytes.fromhex("a003020105"))
    a = run(s, quote=s.quote(chain_pem=_chain(s, ca=bad)))
    assert failed(a) == ["tdx.pck.chain"]
    assert "does not parse" in check(a, "tdx.pck.chain").detail


@pytest.mark.parametrize("position", ["ca", "leaf"])
def test_pck_certificate_with_a_duplicate_extension_fails_the_chain(position: str) -> None:
    s = Synth()
    if position == "ca":
        name, key, issuer, issuer_key, is_ca, serial = (
            "Intel SGX PCK Platform CA",
            s.ca_key,
            s.root,
            s.root_key,
            True,
            2,
        )
    else:
        name, key, issuer, issuer_key, is_ca, serial = (
            "Intel SGX PCK Certificate",
            s.leaf_key,
            s.ca,
            s.ca_key,
            False,
            0x1234,
        )

    def appraise_signed_by(signer: ec.EllipticCurvePrivateKey) -> Any:
        cert = _with_duplicate_basic_constraints(
            s, name, key, issuer, signer, ca=is_ca, serial=serial
        )
        return run(s, quote=s.quote(chain_pem=_chain(s, **{position: cert})))

    # Signed by its issuer, so the extensions are read, and DuplicateExtension must not escape.
    a = appraise_signed_by(issuer_key)
    assert failed(a) == ["tdx.pck.chain"]
    assert "malformed" in check(a, "tdx.pck.chain").detail
    # Forged: rejected for its signature before its extensions are read.
    a = appraise_signed_by(ec.generate_private_key(ec.SECP256R1()))
    assert failed(a) == ["tdx.pck.chain"]
    assert "signature does not verify" in check(a, "tdx.pck.chain").detail


def test_malformed_certificates_are_decode_errors_in_the_parse_helpers() -> None:
    # The shared CERT_ERRORS: cryptography 50's non-ValueError exceptions must not escape the
    # loaders (tdx_files reads PCK/TCB signing chains with parse_certificates).
    s = Synth()
    bad = _resign(s.ca, s.root_key, bytes.fromhex("a003020102"), bytes.fromhex("a003020105"))
    for data in (bad, _pem(bad)):
        with pytest.raises(DecodeError, match="not a PEM or DER"):
            parse_certificates(data)
    leaf = _with_duplicate_basic_constraints(
        s, "Intel SGX PCK Certificate", s.leaf_key, s.ca, s.ca_key, ca=False, serial=0x1234
    )
    with pytest.raises(DecodeError, match="do not parse"):
        pck_extensions(x509.load_der_x509_certificate(leaf))


def test_collateral_signature_and_validity() -> None:
    s = Synth()
    tampered = s.signed_json("tcbInfo", s.tcb_info).replace(b'"UpToDate"', b'"UpToDatf"', 1)
    trust = s.trust(tcb_infos=[parse_tcb_info(tampered, "tampered")])
    a = run(s, trust=trust)
    assert failed(a) == ["tdx.collateral.tcb-info.signature"]
    assert check(a, "tdx.report-data").passed
    late = NOW + timedelta(days=40)
    a = run(s, now=late)
    assert "tdx.collateral.qe-identity.validity" in failed(a)
    assert "tdx.collateral.tcb-info.validity" in failed(a)
    assert "not current" in check(a, "tdx.tcb.status").detail
    assert a.trust_vector["hardware"] == 32  # UpToDate, but from stale collateral


def test_signing_cert_choice() -> None:
    s = Synth()
    expired = _cert(
        "Intel SGX TCB Signing",
        s.signing_key,
        s.root,
        s.root_key,
        ca=False,
        serial=4,
        not_after=datetime(2024, 1, 1, tzinfo=UTC),
    )
    a = run(s, trust=s.trust(signers=[("old", expired), ("new", s.signing)]))
    assert a.passed and "signed by new" in check(a, "tdx.collateral.tcb-info.signature").detail
    a = run(s, trust=s.trust(signers=[("old", expired)]))
    assert failed(a) == ["tdx.collateral.tcb-signing.validity"]
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _cert("Intel SGX TCB Signing", s.signing_key, None, stranger_key, ca=False, serial=5)
    a = run(s, trust=s.trust(signers=[("stranger", stranger)]))
    assert failed(a) == ["tdx.collateral.qe-identity.signature"]


def test_tcb_sort_order_and_relaunch() -> None:
    s = Synth()
    info = s.trust().tcb_infos[FMSPC]
    assert [lv.status for lv in info.tcb_levels] == ["UpToDate", "OutOfDate", "ConfigurationNeeded"]
    # TD 1.5 relaunch: TDX level OutOfDate because the module is OutOfDate, but TEE_TCB_SVN2 names
    # a module that reaches the newest level.
    r = Synth(
        version=5,
        body_type=3,
        tee_tcb_svn=bytes([2, 1, 7]) + bytes(13),
        tee_tcb_svn2=bytes([4, 1, 7]) + bytes(13),
    )
    a = run(r)
    assert check(a, "tdx.tcb.status").observed.startswith("TDRelaunchAdvised")
    assert run(r, policy=TdxPolicy(accepted_tcb_statuses=frozenset({"TDRelaunchAdvised"}))).passed
    r.tee_tcb_svn2 = r.tee_tcb_svn
    assert check(run(r), "tdx.tcb.status").observed.startswith("OutOfDate")


def test_tcb_converge_rules() -> None:
    c = rules._converge
    assert c("UpToDate", "OutOfDate") == "OutOfDate"
    assert c("SWHardeningNeeded", "OutOfDate") == "OutOfDate"
    assert c("ConfigurationAndSWHardeningNeeded", "OutOfDate") == "OutOfDateConfigurationNeeded"
    assert c("ConfigurationNeeded", "Revoked") == "Revoked"
    assert c("SWHardeningNeeded", "UpToDate") == "SWHardeningNeeded"
    assert c("Revoked", "OutOfDate") == "Revoked"


def test_tdx_components_skip_module_bytes() -> None:
    level = TcbLevel((0,) * 16, 0, (9, 9, 3) + (0,) * 13, "", "UpToDate", ())
    info = TcbInfo(
        doc=Synth().trust().qe_identity.doc,
        fmspc=FMSPC,
        pce_id=b"\0\0",
        tdx_module=ModuleIdentity("", bytes(48), bytes(8), b"\xff" * 8),
        module_identities=(
            ModuleIdentity(
                "TDX_01", bytes(48), bytes(8), b"\xff" * 8, (IsvTcbLevel(1, "", "UpToDate", ()),)
            ),
        ),
        tcb_levels=(level,),
    )
    ext = replace(parse_sgx_extensions(sgx_extension(FMSPC, (0,) * 16, 0)))
    body = parse_quote(Synth(tee_tcb_svn=bytes([1, 1, 3]) + bytes(13)).quote()).body
    m = rules.match_levels(info, ext, body, info.module_identities[0])
    assert m.outcome.ok  # bytes 0-1 (module SVN, version) are not compared when version > 0
    body0 = parse_quote(Synth(tee_tcb_svn=bytes([9, 0, 3]) + bytes(13)).quote()).body
    m = rules.match_levels(info, ext, body0, info.tdx_module)
    assert not m.outcome.ok  # version 0: byte 1 (0 < 9) is compared


def test_a_root_ca_crl_not_signed_by_the_root_fails() -> None:
    # The root CA CRL (which revokes the PCK CAs and the TCB signing certificate) under the
    # root's name but another key's signature: not the root's word on revocation.
    s = Synth()
    forged_key = ec.generate_private_key(ec.SECP256R1())
    trust = s.trust(root_crl=parse_crl(_crl(s.root, forged_key), "root_ca_crl"))
    a = run(s, trust=trust)
    assert a.first_failure is not None
    assert a.first_failure.name == "tdx.collateral.root-ca-crl", a.first_failure
    assert run(s).passed


def test_tcb_info_for_the_fmspc_but_another_pce_id_fails() -> None:
    # TCB Info is per (FMSPC, PCE-ID): one issued for another PCE does not describe this one.
    info = default_tcb_info()
    info["pceId"] = "0100"
    a = run(Synth(tcb_info=info))
    assert a.first_failure is not None and a.first_failure.name == "tdx.tcb.fmspc"
    assert "PCE-ID differs" in a.first_failure.detail
