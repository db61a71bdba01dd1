"""CCA verifier on tokens built here with our own keys: every check, every encoding, no vectors.

``SynthToken`` signs a platform token with a fresh CPAK and a realm token with a fresh RAK, so each
field can be changed and the token re-signed, to reach checks a flipped byte cannot (the RAK
binding, the profile, the lifecycle, COSE_Key RAKs, ES256/ES512, trailing bytes).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from atls_proxy.errors import ConfigError, DecodeError
from atls_proxy.expat.binding import Binding
from atls_proxy.ops.cca_files import rvstore_policy_table
from atls_proxy.verify.cca import (
    MEDIA_TYPE,
    VERAISON_MEDIA_TYPE,
    CcaPolicy,
    CcaTrust,
    CcaVerifier,
    TrustedCpak,
    appraise_cca,
    parse_cca_policy,
    parse_token,
)
from atls_proxy.verify.cca.token import parse_sign1
from atls_proxy.verify.cca.trust import parse_cpak_file
from atls_proxy.verify.result import Appraisal

NOW = datetime(2026, 1, 1, tzinfo=UTC)
_ALGS = {-7: (ec.SECP256R1, hashes.SHA256, 32), -35: (ec.SECP384R1, hashes.SHA384, 48)}
_ALGS[-36] = (ec.SECP521R1, hashes.SHA512, 66)


def sign1(payload: bytes, key: ec.EllipticCurvePrivateKey, alg: int) -> bytes:
    _curve, hash_cls, n = _ALGS[alg]
    protected = cbor2.dumps({1: alg})
    tbs = cbor2.dumps(["Signature1", protected, b"", payload])
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hash_cls())))
    sig = r.to_bytes(n, "big") + s.to_bytes(n, "big")
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, sig]))


def raw_point(key: ec.EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def cose_key(key: ec.EllipticCurvePublicKey) -> bytes:
    numbers = key.public_numbers()
    n = (key.curve.key_size + 7) // 8
    crv = {"secp256r1": 1, "secp384r1": 2, "secp521r1": 3}[key.curve.name]
    return cbor2.dumps(
        {1: 2, -1: crv, -2: numbers.x.to_bytes(n, "big"), -3: numbers.y.to_bytes(n, "big")}
    )


CPAK = ec.generate_private_key(ec.SECP384R1())
RAK = ec.generate_private_key(ec.SECP384R1())
REPORT_DATA = bytes(range(64))
SW = {1: "RMM", 2: b"\x11" * 32, 4: "1.0", 5: b"\x22" * 32, 6: "sha-256"}


@dataclass
class SynthToken:
    cpak: ec.EllipticCurvePrivateKey = CPAK
    rak: ec.EllipticCurvePrivateKey = RAK
    platform_alg: int = -35
    realm_alg: int = -35
    rak_encoding: str = "raw"
    rak_hash: str = "sha-256"
    platform_overrides: dict[int, Any] = field(default_factory=dict)
    realm_overrides: dict[int, Any] = field(default_factory=dict)
    bad_binding: bool = False
    trailing: bytes = b""

    def rak_claim(self) -> bytes:
        pub = self.rak.public_key()
        return raw_point(pub) if self.rak_encoding == "raw" else cose_key(pub)

    def realm_claims(self) -> dict[int, Any]:
        claims: dict[int, Any] = {
            10: REPORT_DATA,
            44235: b"\x00" * 64,
            44236: "sha-256",
            44237: self.rak_claim(),
            44238: b"\xaa" * 32,
            44239: [b"\x00" * 32, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32],
            44240: self.rak_hash,
        }
        claims.update(self.realm_overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def platform_claims(self) -> dict[int, Any]:
        name = {"sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512"}[self.rak_hash]
        challenge = hashlib.new(name, self.rak_claim()).digest()
        if self.bad_binding:
            challenge = bytes(len(challenge))
        claims: dict[int, Any] = {
            265: "tag:arm.com,2023:cca_platform#1.0.0",
            10: challenge,
            2396: b"\x7f" * 32,
            256: b"\x01" + b"\x33" * 32,
            2401: b"\xcf\xcf",
            2395: 0x3000,
            2399: [SW],
            2402: "sha-256",
        }
        claims.update(self.platform_overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self) -> bytes:
        platform = sign1(cbor2.dumps(self.platform_claims()), self.cpak, self.platform_alg)
        realm = sign1(cbor2.dumps(self.realm_claims()), self.rak, self.realm_alg)
        return cbor2.dumps(cbor2.CBORTag(399, {44234: platform, 44241: realm})) + self.trailing

    def trust(self) -> CcaTrust:
        return CcaTrust((TrustedCpak(self.cpak.public_key(), "synthetic-cpak"),))


def appraise(synth: SynthToken, policy: CcaPolicy | None = None, **kw: Any) -> Appraisal:
    return appraise_cca(
        synth.token(),
        policy=policy or CcaPolicy(),
        trust=kw.pop("trust", synth.trust()),
        now=NOW,
        expected_report_data=kw.pop("expected_report_data", REPORT_DATA),
    )


def failed(a: Appraisal) -> str:
    f = a.first_failure
    assert f is not None, "expected a failure"
    return f.name


def names(a: Appraisal) -> list[str]:
    return [c.name for c in a.checks]


def test_the_synthetic_token_passes_every_check() -> None:
    a = appraise(SynthToken())
    assert a.passed, a.first_failure
    assert names(a) == [
        "cca.token.format",
        "cca.platform.signature",
        "cca.realm.signature",
        "cca.platform.challenge",
        "cca.profile",
        "cca.platform.lifecycle",
        "cca.platform.implementation-id",
        "cca.platform.instance-id",
        "cca.platform.config",
        "cca.platform.sw-component.0",
        "cca.register.rim",
        "cca.register.rem0",
        "cca.register.rem1",
        "cca.register.rem2",
        "cca.register.rem3",
        "cca.register.rpv",
        "cca.report-data",
    ]
    # The default policy has no reference values: no firmware was compared, so the hardware
    # claim is a warning, never affirming, and the report says so.
    assert a.trust_vector == {"instance-identity": 2, "hardware": 32}
    assert "not compared" in a.checks[9].detail
    assert "TEST CPAK" not in a.checks[1].detail
    # No platform or realm record: each of their values is reported, unconstrained, and no
    # executables claim is made.
    for c in a.checks[6:9] + a.checks[10:16]:
        assert c.passed and c.detail == "not constrained by policy" and not c.expected, c


@pytest.mark.parametrize("encoding", ["raw", "cose-key"])
@pytest.mark.parametrize("rak_hash", ["sha-256", "sha-384", "sha-512"])
def test_both_rak_encodings_and_every_rak_hash(encoding: str, rak_hash: str) -> None:
    a = appraise(SynthToken(rak_encoding=encoding, rak_hash=rak_hash))
    assert a.passed, a.first_failure
    assert f"{encoding} encoding" in a.checks[0].detail


@pytest.mark.parametrize(("alg", "curve"), [(-7, ec.SECP256R1()), (-36, ec.SECP521R1())])
def test_es256_and_es512_platform_tokens(alg: int, curve: ec.EllipticCurve) -> None:
    synth = SynthToken(cpak=ec.generate_private_key(curve), platform_alg=alg)
    assert appraise(synth).passed


def test_an_alg_that_does_not_fit_the_cpak_curve_fails_the_signature() -> None:
    # ES384 claimed, P-256 key: mathematically a valid ECDSA(SHA-384) signature on P-256, but the
    # key's curve is not the algorithm's (RFC 9053 §2.1), so it must not verify.
    synth = SynthToken(cpak=ec.generate_private_key(ec.SECP256R1()), platform_alg=-35)
    assert failed(appraise(synth)) == "cca.platform.signature"


def test_realm_token_not_bound_to_the_platform_token() -> None:
    a = appraise(SynthToken(bad_binding=True))
    assert failed(a) == "cca.platform.challenge"
    assert names(a)[-1] == "cca.platform.challenge"  # nothing about the claims after it


def test_realm_token_signed_by_another_key_than_its_rak() -> None:
    synth = SynthToken()
    other = ec.generate_private_key(ec.SECP384R1())
    forged = replace(synth, realm_overrides={44237: raw_point(other.public_key())})
    # The claim names `other`, but RAK signs: the realm signature fails first.
    a = appraise(forged)
    assert failed(a) == "cca.realm.signature"


def test_wrong_cpak() -> None:
    a = appraise(
        SynthToken(),
        trust=CcaTrust((TrustedCpak(ec.generate_private_key(ec.SECP384R1()).public_key(), "x"),)),
    )
    assert failed(a) == "cca.platform.signature"
    assert a.trust_vector["instance-identity"] == 96
    assert len(a.checks) == 2


def test_no_trusted_cpak() -> None:
    a = appraise(SynthToken(), trust=CcaTrust(()))
    assert failed(a) == "cca.platform.signature"
    assert "no trusted CPAK" in a.checks[-1].detail


def test_unknown_profile_stops() -> None:
    a = appraise(SynthToken(platform_overrides={265: "tag:example.com,2024:other"}))
    assert failed(a) == "cca.profile"
    assert names(a)[-1] == "cca.profile"
    a = appraise(SynthToken(realm_overrides={265: "tag:example.com,2024:realm"}))
    assert failed(a) == "cca.profile"
    assert appraise(SynthToken(realm_overrides={265: "tag:arm.com,2023:realm#1.0.0"})).passed


@pytest.mark.parametrize(
    ("value", "state"),
    [
        (0x4000, "non-cca-platform-rot-debug"),
        (0x5001, "recoverable-cca-platform-rot-debug"),
        (0x6000, "decommissioned"),
        (0x1000, "assembly-and-test"),
        (0x7000, "invalid"),
    ],
)
def test_lifecycle_other_than_secured_fails_by_default(value: int, state: str) -> None:
    a = appraise(SynthToken(platform_overrides={2395: value}))
    assert failed(a) == "cca.platform.lifecycle"
    check = next(c for c in a.checks if c.name == "cca.platform.lifecycle")
    assert state in (check.observed or "")
    assert a.trust_vector["hardware"] == 96
    assert names(a)[-1] == "cca.report-data"  # claims checks all still run


def test_lifecycle_accepted_by_policy_is_a_warning() -> None:
    policy = CcaPolicy(accepted_lifecycles=frozenset({"secured", "non-cca-platform-rot-debug"}))
    a = appraise(SynthToken(platform_overrides={2395: 0x4000}), policy)
    assert a.passed
    assert a.trust_vector["hardware"] == 32


def test_sw_components_policy() -> None:
    ok = parse_cca_policy(
        {"sw_components": [{"type": "RMM", "measurement": "11" * 32, "signer_id": "22" * 32}]},
        "cca",
        lambda _: b"",
    )
    a = appraise(SynthToken(), ok)
    assert a.passed
    assert a.trust_vector["hardware"] == 2  # secured, trusted CPAK, firmware matched
    wrong = parse_cca_policy(
        {"sw_components": [{"type": "RMM", "measurement": "12" * 32}]}, "cca", lambda _: b""
    )
    a = appraise(SynthToken(), wrong)
    assert failed(a) == "cca.platform.sw-component.0"
    assert a.trust_vector["hardware"] == 96
    signer = parse_cca_policy(
        {"sw_components": [{"measurement": "11" * 32, "signer_id": "23" * 32}]},
        "cca",
        lambda _: b"",
    )
    assert failed(appraise(SynthToken(), signer)) == "cca.platform.sw-component.0"
    missing = parse_cca_policy(
        {
            "sw_components": [
                {"type": "RMM", "measurement": "11" * 32},
                {"type": "BL31", "measurement": "33" * 32},
            ]
        },
        "cca",
        lambda _: b"",
    )
    a = appraise(SynthToken(), missing)
    assert failed(a) == "cca.platform.sw-components.complete"
    assert "BL31" in a.first_failure.detail  # type: ignore[union-attr]
    assert "generations" not in a.first_failure.detail  # type: ignore[union-attr]  # all typed


def test_platform_ids_and_registers_policy() -> None:
    table: dict[str, Any] = {
        "implementation_ids": ["7f" * 32],
        "instance_ids": ["01" + "33" * 32],
        "platform_configs": ["cfcf"],
        "registers": {
            "rim": ["aa" * 32],
            "rem0": ["00" * 32],
            "rem1": ["01" * 32],
            "rem2": ["02" * 32],
            "rem3": ["03" * 32],
            "rpv": ["00" * 64],
        },
    }
    policy = parse_cca_policy(table, "cca", lambda _: b"")
    a = appraise(SynthToken(), policy)
    assert a.passed and a.trust_vector["executables"] == 2
    for key, check in [
        ("implementation_ids", "cca.platform.implementation-id"),
        ("instance_ids", "cca.platform.instance-id"),
        ("platform_configs", "cca.platform.config"),
    ]:
        bad = dict(table, **{key: ["01" + "44" * 32] if key == "instance_ids" else ["ab" * 32]})
        if key == "platform_configs":
            bad[key] = ["cfcfcf"]
        a = appraise(SynthToken(), parse_cca_policy(bad, "cca", lambda _: b""))
        assert failed(a) == check
    for reg in ("rim", "rem2", "rpv"):
        regs = dict(table["registers"])
        regs[reg] = ["bb" * (64 if reg == "rpv" else 32)]
        a = appraise(
            SynthToken(), parse_cca_policy(dict(table, registers=regs), "cca", lambda _: b"")
        )
        assert failed(a) == f"cca.register.{reg}"
        assert a.trust_vector["executables"] == 96


def test_report_data() -> None:
    assert failed(appraise(SynthToken(), expected_report_data=bytes(64))) == "cca.report-data"
    a = appraise(SynthToken(), expected_report_data=None)
    assert a.passed
    assert a.checks[-1].detail == "not checked: no binding (offline appraisal)"
    assert a.checks[-1].observed == REPORT_DATA.hex()


def test_trailing_bytes_are_reported_not_verified() -> None:
    a = appraise(SynthToken(trailing=b"\x00" * 17))
    assert a.passed
    trailing = next(c for c in a.checks if c.name == "cca.token.trailing-bytes")
    assert "17 bytes" in trailing.detail


@pytest.mark.parametrize(
    ("overrides", "realm", "phrase"),
    [
        ({10: None}, False, "challenge"),
        ({2399: []}, False, "sw-components is empty"),
        ({256: b"\x02" + b"\x33" * 32}, False, "instance-id"),
        ({2396: b"\x7f" * 31}, False, "implementation-id"),
        ({2395: True}, False, "lifecycle"),
        ({2402: "md5"}, False, "hash"),
        ({2399: [{2: b"\x11" * 32}]}, False, "signer-id"),
        ({10: b"\x00" * 63}, True, "challenge"),
        ({44239: [b"\x00" * 32] * 3}, True, "extensible"),
        ({44238: b"\x00" * 64}, True, "RIM"),
        ({44237: b"\x04" + b"\x00" * 96}, True, "not a point"),
        (
            {44237: cbor2.dumps({1: 2, -1: 2, -2: b"\x00" * 48, -3: b"\x00" * 48, -4: b"x"})},
            True,
            "private",
        ),
    ],
)
def test_malformed_claims_fail_the_format_check(
    overrides: dict[int, Any], realm: bool, phrase: str
) -> None:
    synth = (
        SynthToken(realm_overrides=overrides) if realm else SynthToken(platform_overrides=overrides)
    )
    a = appraise(synth)
    assert names(a) == ["cca.token.format"]
    assert phrase in a.checks[0].detail
    with pytest.raises(DecodeError):
        parse_token(synth.token())


def test_collection_shape() -> None:
    synth = SynthToken()
    platform = sign1(cbor2.dumps(synth.platform_claims()), CPAK, -35)
    for bad in [
        cbor2.dumps(cbor2.CBORTag(398, {44234: platform, 44241: platform})),
        cbor2.dumps(cbor2.CBORTag(399, {44234: platform})),
        cbor2.dumps(cbor2.CBORTag(399, {44234: platform, 44242: platform})),
        cbor2.dumps(cbor2.CBORTag(399, [platform, platform])),
        b"",
    ]:
        a = appraise_cca(
            bad, policy=CcaPolicy(), trust=synth.trust(), now=NOW, expected_report_data=None
        )
        assert names(a) == ["cca.token.format"]


def test_verifier_class_binds_to_the_expat_report_data() -> None:
    binding = Binding("sha256", b"\x05" * 32, b"\x06" * 32)
    synth = SynthToken(realm_overrides={10: binding.report_data()})
    verifier = CcaVerifier(CcaPolicy(), synth.trust(), clock=lambda: NOW)
    assert verifier.accepts(MEDIA_TYPE)
    assert verifier.accepts(VERAISON_MEDIA_TYPE)
    assert verifier.accepts('application/eat-collection;profile="http://arm.com/CCA-SSD/1.0.0"')
    assert not verifier.accepts("application/vnd.atls-proxy.tdx-quote")
    assert verifier.appraise(MEDIA_TYPE, synth.token(), binding, 0.0).passed
    other = Binding("sha256", b"\x07" * 32, b"\x06" * 32)
    a = verifier.appraise(MEDIA_TYPE, synth.token(), other, 0.0)
    assert failed(a) == "cca.report-data"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"bogus": 1}, "cca.bogus"),
        ({"accepted_lifecycles": []}, "cca.accepted_lifecycles"),
        ({"accepted_lifecycles": ["decommissioned"]}, "cca.accepted_lifecycles[0]"),
        ({"accepted_lifecycles": ["debug"]}, "cca.accepted_lifecycles[0]"),
        ({"implementation_ids": ["zz"]}, "cca.implementation_ids[0]"),
        ({"implementation_ids": ["00" * 31]}, "cca.implementation_ids[0]"),
        ({"instance_ids": "01"}, "cca.instance_ids"),
        ({"registers": {"rim": ["00" * 31]}}, "cca.registers.rim[0]"),
        ({"registers": {"rpv": ["00" * 32]}}, "cca.registers.rpv[0]"),
        ({"registers": {"rem4": ["00" * 32]}}, "cca.registers.rem4"),
        ({"registers": []}, "cca.registers"),
        ({"registers": {}}, "cca.registers"),
        ({"realms": []}, "cca.realms"),
        ({"realms": [{}]}, "cca.realms[0]"),
        ({"realms": [{"rim": ["aa" * 32]}], "registers": {"rim": ["aa" * 32]}}, "cca.registers"),
        ({"platforms": []}, "cca.platforms"),
        ({"platforms": [{}]}, "cca.platforms[0]"),
        ({"platforms": [{"instance_ids": ["01" * 33]}]}, "cca.platforms[0].instance_ids"),
        ({"platforms": [{"sw_components": [{"x": 1}]}]}, "cca.platforms[0].sw_components[0].x"),
        (
            {"platforms": [{"implementation_ids": ["7f" * 32]}], "platform_configs": ["cf"]},
            "cca.platform_configs",
        ),
        ({"sw_components": [{"type": "X"}]}, "cca.sw_components[0].measurement"),
        ({"sw_components": [{"measurement": "00" * 32, "x": 1}]}, "cca.sw_components[0].x"),
        (
            {"sw_components": [{"measurement": "00" * 32, "signer_id": "0"}]},
            "cca.sw_components[0].signer_id",
        ),
        ({"sw_components": {}}, "cca.sw_components"),
    ],
)
def test_policy_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cca_policy(table, "cca", lambda _: b"")
    assert info.value.key == key


def test_policy_defaults() -> None:
    policy = parse_cca_policy({}, "cca", lambda _: b"")
    assert policy == CcaPolicy()
    assert policy.accepted_lifecycles == frozenset({"secured"})


def test_json_nested_deeper_than_the_recursion_limit_is_refused_cleanly() -> None:
    deep = b'{"keys":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(DecodeError, match="not JSON"):
        parse_cpak_file(deep, "cpak.json")
    with pytest.raises(ConfigError, match="not JSON"):
        rvstore_policy_table(deep)


# -- reference records, empty policies, CPAK bindings, crit labels, untyped references ----------


def _rvstore(platforms: list[dict[str, Any]], realms: list[dict[str, Any]]) -> CcaPolicy:
    doc = json.dumps({"platform": platforms, "realm": realms}).encode()
    return parse_cca_policy(rvstore_policy_table(doc), "cca", lambda _: b"")


def _sw(mtype: str, measurement: int) -> dict[str, str]:
    return {
        "component-type": mtype,
        "measurement-value": bytes([measurement]).hex() * 32,
        "signer-id": "22" * 32,
    }


def _realm(rim: int, rems: tuple[int, ...], rpv: int) -> dict[str, Any]:
    return {
        "initial-measurement": bytes([rim]).hex() * 32,
        "extensible-measurements": [bytes([r]).hex() * 32 for r in rems],
        "personalization-value": bytes([rpv]).hex() * 64,
    }


def _token_sw(*comps: tuple[str, int]) -> list[dict[int, Any]]:
    return [{1: t, 2: bytes([m]) * 32, 5: b"\x22" * 32} for t, m in comps]


def _realm_claims(rim: int, rems: tuple[int, ...], rpv: int) -> dict[int, Any]:
    return {
        44238: bytes([rim]) * 32,
        44239: [bytes([r]) * 32 for r in rems],
        44235: bytes([rpv]) * 64,
    }


# Two platforms (A: implementation-id 7f.., RMM 11 + BL2 44; B: implementation-id 8f.., RMM 99)
# and two realms (X, Y): each record is one good state (rvstore data model).
PLATFORM_A = {"implementation-id": "7f" * 32, "sw-components": [_sw("RMM", 0x11), _sw("BL2", 0x44)]}
PLATFORM_B = {"implementation-id": "8f" * 32, "sw-components": [_sw("RMM", 0x99)]}
REALM_X = (0xAA, (0, 1, 2, 3), 0x00)
REALM_Y = (0xBB, (4, 5, 6, 7), 0xEE)


def test_reference_records_are_matched_whole() -> None:
    policy = _rvstore([PLATFORM_A, PLATFORM_B], [_realm(*REALM_X), _realm(*REALM_Y)])
    a_sw, b_sw = _token_sw(("RMM", 0x11), ("BL2", 0x44)), _token_sw(("RMM", 0x99))
    # B's RMM build beside A's BL2: each value is in some record, but no record holds them all.
    mixed = _token_sw(("RMM", 0x99), ("BL2", 0x44))
    # On platform A (its implementation-id): judged against A, whose RMM is another build.
    a = appraise(SynthToken(platform_overrides={2396: b"\x7f" * 32, 2399: mixed}), policy)
    assert failed(a) == "cca.platform.sw-component.0"
    assert a.trust_vector["hardware"] == 96
    # On platform B: judged against B, which has no BL2.
    a = appraise(SynthToken(platform_overrides={2396: b"\x8f" * 32, 2399: mixed}), policy)
    assert failed(a) == "cca.platform.sw-component.1"
    # X's RIM with Y's REMs and RPV: no realm record matches whole.
    mix = _realm_claims(REALM_X[0], REALM_Y[1], REALM_Y[2])
    a = appraise(SynthToken(platform_overrides={2399: a_sw}, realm_overrides=mix), policy)
    assert failed(a) == "cca.register.rem0"
    assert {c.name for c in a.checks if not c.passed} == {
        "cca.register.rem0",
        "cca.register.rem1",
        "cca.register.rem2",
        "cca.register.rem3",
        "cca.register.rpv",
    }
    assert "never combine" in (a.first_failure.detail if a.first_failure else "")
    assert a.trust_vector["executables"] == 96
    # Every whole platform with every whole realm passes (B has no BL2: completeness is per record).
    for impl, sw in ((b"\x7f" * 32, a_sw), (b"\x8f" * 32, b_sw)):
        for realm in (REALM_X, REALM_Y):
            synth = SynthToken(
                platform_overrides={2396: impl, 2399: sw}, realm_overrides=_realm_claims(*realm)
            )
            a = appraise(synth, policy)
            assert a.passed, a.first_failure
            assert a.trust_vector == {"instance-identity": 2, "hardware": 2, "executables": 2}


def test_reference_records_in_toml_form() -> None:
    table: dict[str, Any] = {
        "platforms": [
            {"implementation_ids": ["7f" * 32], "sw_components": [{"measurement": "11" * 32}]},
            {"implementation_ids": ["8f" * 32], "sw_components": [{"measurement": "99" * 32}]},
        ],
        "realms": [
            {"rim": ["aa" * 32], "rpv": ["00" * 64]},
            {"rim": ["bb" * 32], "rpv": ["ee" * 64]},
        ],
    }
    policy = parse_cca_policy(table, "cca", lambda _: b"")
    assert len(policy.platforms) == 2 and len(policy.realms) == 2
    assert appraise(SynthToken(), policy).passed
    a = appraise(SynthToken(realm_overrides={44235: b"\xee" * 64}), policy)
    assert failed(a) == "cca.register.rpv"
    # Platform B's implementation-id with A's firmware: judged against B (the record whose
    # implementation-id matches, as Veraison looks records up), and the report names it.
    a = appraise(SynthToken(platform_overrides={2396: b"\x8f" * 32}), policy)
    assert failed(a) == "cca.platform.sw-component.0"
    assert "(platform reference 2 of 2)" in (a.first_failure.detail if a.first_failure else "")
    # Realm record 2 matches whole; its unlisted REMs are not compared, and the report says which
    # record each value was judged against.
    a = appraise(SynthToken(realm_overrides={44238: b"\xbb" * 32, 44235: b"\xee" * 64}), policy)
    assert a.passed, a.first_failure
    by_name = {c.name: c for c in a.checks}
    assert by_name["cca.register.rim"].detail == "matches realm reference 2 of 2"
    assert (
        by_name["cca.register.rem0"].detail == "not constrained by policy (realm reference 2 of 2)"
    )
    assert by_name["cca.platform.config"].detail == (
        "not constrained by policy (platform reference 1 of 2)"
    )


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({}, "rvstore.json: platform"),
        ({"platforms": [PLATFORM_A], "realm": [_realm(*REALM_X)]}, "rvstore.json: platforms"),
        ({"platform": [PLATFORM_A]}, "rvstore.json: realm"),
        ({"realm": [_realm(*REALM_X)]}, "rvstore.json: platform"),
        (
            {"platform": [{"implementation-id": "7f" * 32, "sw_components": []}], "realm": []},
            "rvstore.json: platform[0].sw_components",
        ),
        (
            {"platform": [{"implementation-id": "7f" * 32}], "realm": [_realm(*REALM_X)]},
            "rvstore.json: platform[0].sw-components",
        ),
        (
            {
                "platform": [
                    {
                        "implementation-id": "7f" * 32,
                        "sw-components": [dict(_sw("RMM", 0x11), measurement_value="00")],
                    }
                ],
                "realm": [_realm(*REALM_X)],
            },
            "rvstore.json: platform[0].sw-components[0].measurement_value",
        ),
        (
            {"platform": [PLATFORM_A], "realm": [{"initial_measurement": "aa" * 32}]},
            "rvstore.json: realm[0].initial_measurement",
        ),
        (
            {
                "platform": [PLATFORM_A],
                "realm": [dict(_realm(*REALM_X), **{"x-reason": "revoked"})],
            },
            "rvstore.json: realm[0].x-reason",
        ),
    ],
)
def test_rvstore_unknown_keys_and_missing_records_are_refused(
    doc: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        rvstore_policy_table(json.dumps(doc).encode())
    assert info.value.key == key


def test_no_firmware_reference_means_no_affirming_hardware_claim() -> None:
    # A platform record without sw-components (implementation-id only) compares no firmware.
    policy = parse_cca_policy({"implementation_ids": ["7f" * 32]}, "cca", lambda _: b"")
    a = appraise(SynthToken(), policy)
    assert a.passed
    assert a.trust_vector["hardware"] == 32
    sw = next(c for c in a.checks if c.name == "cca.platform.sw-component.0")
    assert "not compared" in sw.detail and "no sw-component reference values" in sw.detail
    # A refused lifecycle stays contraindicated.
    a = appraise(SynthToken(platform_overrides={2395: 0x4000}), policy)
    assert a.trust_vector["hardware"] == 96


def _bound(key: ec.EllipticCurvePublicKey, instance: bytes, source: str) -> TrustedCpak:
    return TrustedCpak(key, source, implementation_id=b"\x7f" * 32, instance_id=instance)


def test_an_unbound_copy_of_a_cpak_does_not_lift_its_binding() -> None:
    key = CPAK.public_key()
    other, mine = b"\x01" + b"\xab" * 32, b"\x01" + b"\x33" * 32
    unbound = TrustedCpak(key, "cpak-pub.json")
    for entries in (
        (unbound, _bound(key, other, "tastore.json[0]")),
        (_bound(key, other, "tastore.json[0]"), unbound),
    ):
        a = appraise(SynthToken(), trust=CcaTrust(entries))
        assert failed(a) == "cca.platform.cpak-binding"
        assert "cpak-pub.json does not lift the binding" in (
            a.first_failure.detail if a.first_failure else ""
        )
    # Bound to two platforms: the token must match one of them.
    trust = CcaTrust((unbound, _bound(key, other, "ta[0]"), _bound(key, mine, "ta[1]")))
    a = appraise(SynthToken(), trust=trust)
    assert a.passed, a.first_failure
    binding = next(c for c in a.checks if c.name == "cca.platform.cpak-binding")
    assert "ta[1]" in binding.detail


@pytest.mark.parametrize("crit", [[[1]], [{1: 1}], [True], [1.0], [b"\x01"]])
def test_crit_labels_must_be_int_or_text(crit: list[Any]) -> None:
    # RFC 9052 §3.1: labels are int or tstr. An array is unhashable (TypeError, not DecodeError)
    # and True / 1.0 compare equal to label 1 without being it.
    protected = cbor2.dumps({1: -35, 2: crit})
    message = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, b"x", b"\0" * 96]))
    with pytest.raises(DecodeError, match="not an int or text"):
        parse_sign1(message, "platform token")
    synth = SynthToken()
    collection = cbor2.loads(synth.token()).value
    platform = cbor2.loads(collection[44234]).value
    platform[0] = protected
    collection[44234] = cbor2.dumps(cbor2.CBORTag(18, platform))
    a = appraise_cca(
        cbor2.dumps(cbor2.CBORTag(399, collection)),
        policy=CcaPolicy(),
        trust=synth.trust(),
        now=NOW,
        expected_report_data=REPORT_DATA,
    )
    assert names(a) == ["cca.token.format"]
    assert "not an int or text" in a.checks[0].detail


def test_crit_naming_an_understood_present_label_is_accepted() -> None:
    protected = cbor2.dumps({1: -35, 2: [1]})
    message = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, b"x", b"\0" * 96]))
    assert parse_sign1(message, "t").alg_id == -35


def test_untyped_references_require_every_referenced_measurement() -> None:
    # Untyped references say nothing of which component each stands for: every one must be
    # present, so that a removed component is caught as it is with typed references.
    policy = parse_cca_policy(
        {"sw_components": [{"measurement": "11" * 32}, {"measurement": "44" * 32}]},
        "cca",
        lambda _: b"",
    )
    a = appraise(SynthToken(), policy)  # the token carries only the 11.. component
    assert failed(a) == "cca.platform.sw-components.complete"
    detail = a.first_failure.detail if a.first_failure else ""
    assert "44" * 32 in detail
    # The operator learns how to list generations of one component (docs/VERIFIERS-CCA.md).
    assert "list generations of one component in separate platform records" in detail
    assert a.trust_vector["hardware"] == 96
    both = [SW, {2: b"\x44" * 32, 5: b"\x22" * 32}]
    a = appraise(SynthToken(platform_overrides={2399: both}), policy)
    assert a.passed, a.first_failure
    assert a.trust_vector["hardware"] == 2


@pytest.mark.parametrize("where", ["alg", "crit"])
def test_a_huge_header_value_is_not_copied_into_the_detail(where: str) -> None:
    # The value is refused, and quoted in the check's detail (logs, reports) cut short.
    huge = "A" * 60_000
    header = {1: huge} if where == "alg" else {1: -35, 2: [huge]}
    message = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps(header), {}, b"x", b"\0" * 96]))
    with pytest.raises(DecodeError) as e:
        parse_sign1(message, "platform token")
    assert len(str(e.value)) < 400 and "AAAA" in str(e.value), str(e.value)[:200]
