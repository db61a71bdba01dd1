"""CCA verifier against the Arm CCA tokens in ../shared/vectors.

Both tokens are signed with the published TF-M/TF-RMM TEST CPAK (vectors README, "Problems and
caveats" 1): they verify, and the appraisal says the key is a test key. The trustee token is
appraised against a policy built from the source's own rvstore.json and tastore.json. Each token
is then tampered with (a byte of each signed payload, a byte of each signature, the CPAK, the
challenge, a RIM the policy does not list) and must fail naming the right check. There is no
certificate, CRL or validity window in CCA, so "time moved" and "revoked" cases do not apply.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import ConfigError
from atls_proxy.ops.cca_files import load_cca_trust, rvstore_policy_table
from atls_proxy.verify.cca import (
    CcaPolicy,
    CcaTrust,
    appraise_cca,
    parse_cca_policy,
    parse_token,
)
from atls_proxy.verify.cca.token import hash_of
from atls_proxy.verify.result import Appraisal

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")

CCATOKEN = "cca/ccatoken/cca_token.cbor"
TRUSTEE = "cca/trustee/cca-example-token.cbor"
NOW = datetime(2026, 1, 1, tzinfo=UTC)  # no CCA input has a validity window


def vec(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def trust_from(tmp_path: Path, *files: str) -> CcaTrust:
    folder = tmp_path / "certs"
    folder.mkdir(exist_ok=True)
    for name in files:
        shutil.copy(VECTORS / name, folder / Path(name).name)
    return load_cca_trust(None, folder)


def appraise(
    token: bytes,
    trust: CcaTrust,
    policy: CcaPolicy | None = None,
    expected_report_data: bytes | None = None,
) -> Appraisal:
    return appraise_cca(
        token,
        policy=policy or CcaPolicy(),
        trust=trust,
        now=NOW,
        expected_report_data=expected_report_data,
    )


def rvstore_policy() -> CcaPolicy:
    table = rvstore_policy_table(vec("cca/trustee/rvstore.json"))
    return parse_cca_policy(table, "cca", lambda _: b"")


def flip(data: bytes, offset: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 0x01
    return bytes(out)


def offset_of(data: bytes, needle: bytes) -> int:
    assert data.count(needle) == 1, "needle must be unique in the token"
    return data.index(needle)


def failed(a: Appraisal) -> str:
    f = a.first_failure
    assert f is not None, "expected a failure"
    return f.name


@pytest.mark.parametrize(
    ("token", "key"),
    [
        (CCATOKEN, "cca/ccatoken/cca_platform.pub"),
        (TRUSTEE, "cca/trustee/cpak-pub.json"),
        (TRUSTEE, "cca/trustee/tastore.json"),
        (CCATOKEN, "cca/trustee/cpak-pub.json"),  # the same test CPAK (vectors README)
    ],
)
def test_vector_tokens_verify_with_their_cpak(tmp_path: Path, token: str, key: str) -> None:
    a = appraise(vec(token), trust_from(tmp_path, key))
    assert a.passed, a.first_failure
    signature = next(c for c in a.checks if c.name == "cca.platform.signature")
    assert "TEST CPAK" in signature.detail  # the appraisal names the published test key
    assert a.trust_vector["hardware"] == 32  # a test key never gets an affirming hardware claim
    assert a.checks[-1].name == "cca.report-data"


def test_tastore_binds_the_cpak_to_the_platform(tmp_path: Path) -> None:
    a = appraise(vec(TRUSTEE), trust_from(tmp_path, "cca/trustee/tastore.json"))
    binding = next(c for c in a.checks if c.name == "cca.platform.cpak-binding")
    assert binding.passed
    # Bind the same CPAK to another instance: the token's instance-id no longer matches.
    entry = json.loads(vec("cca/trustee/tastore.json"))
    entry[0]["instance-id"] = "01" + "00" * 32
    folder = tmp_path / "rebound"
    folder.mkdir()
    (folder / "tastore.json").write_text(json.dumps(entry))
    a = appraise(vec(TRUSTEE), load_cca_trust(None, folder))
    assert failed(a) == "cca.platform.cpak-binding"
    assert a.checks[-1].name == "cca.report-data"  # reported, not a stop


def test_an_unbound_copy_of_the_cpak_does_not_lift_the_tastore_binding(tmp_path: Path) -> None:
    # tastore.json binds the CPAK to another instance; cpak-pub.json holds the same key unbound.
    # Whichever entry verifies first, the store's binding still applies.
    entry = json.loads(vec("cca/trustee/tastore.json"))
    entry[0]["instance-id"] = "01" + "ab" * 32
    folder = tmp_path / "both"
    folder.mkdir()
    (folder / "tastore.json").write_text(json.dumps(entry))
    shutil.copy(VECTORS / "cca/trustee/cpak-pub.json", folder / "cpak-pub.json")
    trust = load_cca_trust(None, folder)
    assert len(trust.cpaks) == 2  # the bound and the unbound entry for one key
    a = appraise(vec(TRUSTEE), trust)
    assert failed(a) == "cca.platform.cpak-binding"
    assert "does not lift the binding" in (a.first_failure.detail if a.first_failure else "")


def test_trustee_token_meets_its_reference_values(tmp_path: Path) -> None:
    policy = rvstore_policy()
    assert len(policy.platforms) == 1 and len(policy.realms) == 1
    assert len(policy.platforms[0].sw_components) == 13
    assert set(policy.realms[0].registers) == {"rim", "rem0", "rem1", "rem2", "rem3", "rpv"}
    a = appraise(vec(TRUSTEE), trust_from(tmp_path, "cca/trustee/tastore.json"), policy)
    assert a.passed, a.first_failure
    assert a.trust_vector["executables"] == 2
    # Every value the .expected.json states is what the appraisal observed.
    expected = json.loads(vec("cca/trustee/cca-example-token.expected.json"))["expected_fields"]
    observed = {c.name: c.observed for c in a.checks}
    assert observed["cca.platform.implementation-id"] == expected["platform"]["implementation_id"]
    assert observed["cca.platform.instance-id"] == expected["platform"]["instance_id"]
    assert observed["cca.platform.config"] == expected["platform"]["config"]
    assert observed["cca.register.rim"] == expected["realm"]["initial_measurement"]
    assert observed["cca.register.rpv"] == expected["realm"]["personalization_value"]
    for i, rem in enumerate(expected["realm"]["extensible_measurements"]):
        assert observed[f"cca.register.rem{i}"] == rem
    for i, comp in enumerate(expected["platform"]["sw_components"]):
        text = observed[f"cca.platform.sw-component.{i}"] or ""
        assert text.startswith(f"{comp['component_type']} {comp['measurement_value']}")
        assert comp["signer_id"] in text
    token = parse_token(vec(TRUSTEE))
    assert token.realm_claims.public_key_hash_algorithm == expected["realm"]["rak_hash_algorithm"]


def test_ccatoken_token_does_not_meet_the_trustee_reference_values(tmp_path: Path) -> None:
    a = appraise(
        vec(CCATOKEN), trust_from(tmp_path, "cca/ccatoken/cca_platform.pub"), rvstore_policy()
    )
    assert not a.passed
    failures = {c.name for c in a.checks if not c.passed}
    assert "cca.platform.sw-component.0" in failures
    assert "cca.register.rim" in failures


def test_platform_challenge_is_the_hash_of_the_rak() -> None:
    for name in (CCATOKEN, TRUSTEE):
        token = parse_token(vec(name))
        rc = token.realm_claims
        assert rc.public_key_encoding == "raw" and len(rc.public_key_claim) == 97
        assert token.platform_claims.challenge == hash_of("sha-256", rc.public_key_claim)


@pytest.mark.parametrize("name", [CCATOKEN, TRUSTEE])
def test_flipped_byte_in_platform_payload(tmp_path: Path, name: str) -> None:
    data = vec(name)
    impl_id = parse_token(data).platform_claims.implementation_id
    a = appraise(
        flip(data, offset_of(data, impl_id) + 5),
        trust_from(tmp_path, "cca/ccatoken/cca_platform.pub"),
    )
    assert failed(a) == "cca.platform.signature"
    assert [c.name for c in a.checks] == ["cca.token.format", "cca.platform.signature"]


@pytest.mark.parametrize("name", [CCATOKEN, TRUSTEE])
def test_flipped_byte_in_realm_payload(tmp_path: Path, name: str) -> None:
    data = vec(name)
    challenge = parse_token(data).realm_claims.challenge  # unique in both tokens
    a = appraise(
        flip(data, offset_of(data, challenge) + 3),
        trust_from(tmp_path, "cca/ccatoken/cca_platform.pub"),
    )
    assert failed(a) == "cca.realm.signature"


@pytest.mark.parametrize("name", [CCATOKEN, TRUSTEE])
@pytest.mark.parametrize(
    ("which", "check"), [("platform", "cca.platform.signature"), ("realm", "cca.realm.signature")]
)
def test_flipped_signature_byte(tmp_path: Path, name: str, which: str, check: str) -> None:
    data = vec(name)
    token = parse_token(data)
    signature = (token.platform if which == "platform" else token.realm).signature
    for pos in (0, 50, 95):  # in r, in s, last byte
        a = appraise(
            flip(data, offset_of(data, signature) + pos),
            trust_from(tmp_path, "cca/ccatoken/cca_platform.pub"),
        )
        assert failed(a) == check


def test_rak_swapped_in_the_realm_claims_breaks_the_realm_signature(tmp_path: Path) -> None:
    data = vec(TRUSTEE)
    rak = parse_token(data).realm_claims.public_key_claim
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    point = other.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    forged = data.replace(rak, point)
    a = appraise(forged, trust_from(tmp_path, "cca/trustee/cpak-pub.json"))
    assert failed(a) == "cca.realm.signature"


@pytest.mark.parametrize("name", [CCATOKEN, TRUSTEE])
def test_wrong_cpak(tmp_path: Path, name: str) -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "other.pem").write_bytes(
        other.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    a = appraise(vec(name), load_cca_trust(None, folder))
    assert failed(a) == "cca.platform.signature"
    assert a.trust_vector["instance-identity"] == 96


@pytest.mark.parametrize("name", [CCATOKEN, TRUSTEE])
def test_challenge_mismatch(tmp_path: Path, name: str) -> None:
    data = vec(name)
    trust = trust_from(tmp_path, "cca/ccatoken/cca_platform.pub")
    challenge = parse_token(data).realm_claims.challenge
    assert appraise(data, trust, expected_report_data=challenge).passed
    a = appraise(data, trust, expected_report_data=flip(challenge, 0))
    assert failed(a) == "cca.report-data"
    assert a.checks[-1].observed == challenge.hex()


def test_rim_not_in_policy(tmp_path: Path) -> None:
    table = rvstore_policy_table(vec("cca/trustee/rvstore.json"))
    table["realms"][0]["rim"] = ["00" * 64]
    policy = parse_cca_policy(table, "cca", lambda _: b"")
    a = appraise(vec(TRUSTEE), trust_from(tmp_path, "cca/trustee/cpak-pub.json"), policy)
    assert failed(a) == "cca.register.rim"
    assert a.trust_vector["executables"] == 96


def test_sw_component_not_in_policy(tmp_path: Path) -> None:
    table = rvstore_policy_table(vec("cca/trustee/rvstore.json"))
    rmm = next(c for c in table["platforms"][0]["sw_components"] if c["type"] == "RMM")
    rmm["measurement"] = "00" * 32
    policy = parse_cca_policy(table, "cca", lambda _: b"")
    a = appraise(vec(TRUSTEE), trust_from(tmp_path, "cca/trustee/cpak-pub.json"), policy)
    assert failed(a) == "cca.platform.sw-component.8"
    assert "RMM" in (a.first_failure.detail if a.first_failure else "")


def test_load_cca_trust_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_cca_trust(None, None)
    with pytest.raises(ConfigError):
        load_cca_trust(None, tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("not a key")
    with pytest.raises(ConfigError, match="no trusted CPAK"):
        load_cca_trust(None, empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cpak.pem").write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError) as info:
        load_cca_trust(None, bad)
    assert info.value.key.endswith("cpak.pem")
    private = tmp_path / "private"
    private.mkdir()
    jwk = json.loads(vec("cca/trustee/cpak-pub.json"))
    jwk["d"] = "AAAA"
    (private / "cpak.json").write_text(json.dumps(jwk))
    with pytest.raises(ConfigError, match="private key"):
        load_cca_trust(None, private)


def test_duplicate_keys_collapse(tmp_path: Path) -> None:
    trust = trust_from(tmp_path, "cca/ccatoken/cca_platform.pub", "cca/trustee/cpak-pub.json")
    assert len(trust.cpaks) == 1


def test_rvstore_errors() -> None:
    with pytest.raises(ConfigError):
        rvstore_policy_table(b"[1]")
    with pytest.raises(ConfigError):
        rvstore_policy_table(b'{"platform": [{"sw-components": [{}]}]}')
