"""The policy model: parse_policy (sans-IO) naming the right key, and load_policy on real files."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from atls_proxy.attest.software import SOFTWARE_MEDIA_TYPE, SoftwareAttester
from atls_proxy.errors import ConfigError
from atls_proxy.expat.binding import Binding
from atls_proxy.expat.tiers import Tier
from atls_proxy.ops.policyfile import MAX_POLICY_FILE_SIZE, load_policy, trust_files
from atls_proxy.verify.policy import (
    DEFAULT_POLICY_ID,
    MAX_PLATFORM_KEYS,
    Freshness,
    Policy,
    SoftwarePolicy,
    parse_policy,
)
from atls_proxy.verify.software import SoftwareVerifier

PLATFORM = ec.generate_private_key(ec.SECP256R1())
SECOND = ec.generate_private_key(ec.SECP256R1())
FIRMWARE = hashlib.sha256(b"fw").digest()
FIRMWARE_2 = hashlib.sha256(b"fw2").digest()
KERNEL = hashlib.sha512(b"kernel").digest()


def public_pem(key: Any) -> bytes:
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


FILES: dict[str, bytes] = {
    "platform.pem": public_pem(PLATFORM),
    "second.pem": public_pem(SECOND),
    "copy-of-platform.pem": public_pem(PLATFORM),
    "p384.pem": public_pem(ec.generate_private_key(ec.SECP384R1())),
    "rsa.pem": public_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "private.pem": PLATFORM.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ),
    "garbage.pem": b"-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n",
    "huge.pem": b"#" * (64 * 1024),
}


def read_file(name: str) -> bytes:
    if name not in FILES:
        raise FileNotFoundError(2, "No such file or directory", name)
    return FILES[name]


def good_doc() -> dict[str, Any]:
    return {
        "policy": {"id": "dev-policy"},
        "software": {
            "allow_simulated": True,
            "platform_keys": ["platform.pem", "second.pem"],
            "measurements": {
                "firmware": [FIRMWARE.hex(), FIRMWARE_2.hex().upper()],
                "kernel": [KERNEL.hex()],
            },
        },
    }


def parse(doc: Any) -> Policy:
    return parse_policy(doc, read_file, source="test.toml")


# -- valid documents ----------------------------------------------------------------------------


def test_good_document() -> None:
    policy = parse(good_doc())
    assert policy.policy_id == "dev-policy"
    software = policy.software
    assert software is not None
    assert software.allow_simulated is True
    assert software.platform_key_names == ("platform.pem", "second.pem")
    assert [k.public_numbers() for k in software.platform_keys] == [
        PLATFORM.public_key().public_numbers(),
        SECOND.public_key().public_numbers(),
    ]
    assert dict(software.measurements) == {
        "firmware": frozenset({FIRMWARE, FIRMWARE_2}),
        "kernel": frozenset({KERNEL}),
    }
    assert list(software.measurements) == ["firmware", "kernel"]  # document order kept


def test_defaults() -> None:
    doc = good_doc()
    del doc["policy"]
    del doc["software"]["allow_simulated"]
    policy = parse(doc)
    assert policy.policy_id == DEFAULT_POLICY_ID == "atls-proxy:policy"
    assert policy.software is not None
    assert policy.software.allow_simulated is False


def test_policy_is_immutable() -> None:
    policy = parse(good_doc())
    assert policy.software is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.policy_id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.software.measurements["evil"] = frozenset()  # type: ignore[index]


def test_software_policy_constructor_checks() -> None:
    with pytest.raises(ValueError):
        SoftwarePolicy(True, (PLATFORM.public_key(),), (), {})
    with pytest.raises(ValueError):
        p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
        SoftwarePolicy(True, (p384,), ("p384",), {})


def test_duplicate_digests_collapse() -> None:
    doc = good_doc()
    doc["software"]["measurements"]["kernel"] = [KERNEL.hex(), KERNEL.hex().upper()]
    software = parse(doc).software
    assert software is not None
    assert software.measurements["kernel"] == frozenset({KERNEL})


# -- every error names its key ------------------------------------------------------------------


def _set(path: str, value: Any) -> Any:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        target = doc
        for part in parents:
            target = target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return mutate


_DELETE = object()
_MEAS = "software/measurements"

ERROR_CASES = [
    # (mutation, expected key, message fragment)
    (_set("sgx", {}), "sgx", "unknown key"),
    (_set("policy/name", "x"), "policy.name", "unknown key"),
    (_set("software/allow_simulatd", True), "software.allow_simulatd", "unknown key"),
    (_set("policy", "dev"), "policy", "must be a table"),
    (_set("policy/id", 7), "policy.id", "must be a string"),
    (_set("policy/id", ""), "policy.id", "1..256"),
    (_set("policy/id", "x" * 257), "policy.id", "1..256"),
    (_set("policy/id", "a\nb"), "policy.id", "control"),
    (_set("software", _DELETE), "software", "no evidence section"),
    (_set("software", ["x"]), "software", "must be a table"),
    (_set("software/allow_simulated", "yes"), "software.allow_simulated", "true or false"),
    (_set("software/allow_simulated", 1), "software.allow_simulated", "true or false"),
    (_set("software/platform_keys", _DELETE), "software.platform_keys", "required"),
    (_set("software/platform_keys", "platform.pem"), "software.platform_keys", "list"),
    (_set("software/platform_keys", []), "software.platform_keys", "empty list"),
    (
        _set("software/platform_keys", ["platform.pem"] * (MAX_PLATFORM_KEYS + 1)),
        "software.platform_keys",
        "at most",
    ),
    (_set("software/platform_keys", ["platform.pem", 3]), "software.platform_keys[1]", "file"),
    (_set("software/platform_keys", [""]), "software.platform_keys[0]", "non-empty"),
    (_set("software/platform_keys", ["missing.pem"]), "software.platform_keys[0]", "cannot read"),
    (_set("software/platform_keys", ["garbage.pem"]), "software.platform_keys[0]", "not a PEM"),
    (_set("software/platform_keys", ["private.pem"]), "software.platform_keys[0]", "private"),
    (_set("software/platform_keys", ["p384.pem"]), "software.platform_keys[0]", "P-256"),
    (_set("software/platform_keys", ["rsa.pem"]), "software.platform_keys[0]", "P-256"),
    (_set("software/platform_keys", ["huge.pem"]), "software.platform_keys[0]", "larger"),
    (
        _set("software/platform_keys", ["platform.pem", "copy-of-platform.pem"]),
        "software.platform_keys[1]",
        "same key as software.platform_keys[0]",
    ),
    (_set(_MEAS, _DELETE), "software.measurements", "required"),
    (_set(_MEAS, {}), "software.measurements", "no measurements"),
    (_set(_MEAS, ["a"]), "software.measurements", "must be a table"),
    (
        _set(_MEAS, {f"m{i}": [FIRMWARE.hex()] for i in range(65)}),
        "software.measurements",
        "at most",
    ),
    (_set(f"{_MEAS}/kernel", []), "software.measurements.kernel", "empty accepted list"),
    (_set(f"{_MEAS}/kernel", KERNEL.hex()), "software.measurements.kernel", "list"),
    (
        _set(f"{_MEAS}/kernel", [KERNEL.hex(), "zz" * 32]),
        "software.measurements.kernel[1]",
        "not a hex digest",
    ),
    (_set(f"{_MEAS}/kernel", ["abc"]), "software.measurements.kernel[0]", "not a hex digest"),
    (
        _set(f"{_MEAS}/kernel", ["ab " * 32]),
        "software.measurements.kernel[0]",
        "not a hex digest",
    ),
    (
        _set(f"{_MEAS}/kernel", ["0x" + "ab" * 32]),
        "software.measurements.kernel[0]",
        "not a hex digest",
    ),
    (_set(f"{_MEAS}/kernel", ["ab" * 20]), "software.measurements.kernel[0]", "32, 48 or 64"),
    (_set(f"{_MEAS}/kernel", ["ab" * 33]), "software.measurements.kernel[0]", "32, 48 or 64"),
    (_set(f"{_MEAS}/kernel", [7]), "software.measurements.kernel[0]", "hex string"),
    (
        _set(f"{_MEAS}/kernel", ["ab" * 32] * 65),
        "software.measurements.kernel",
        "at most",
    ),
    (_set(f"{_MEAS}/a b", [FIRMWARE.hex()]), 'software.measurements."a b"', "measurement name"),
    (_set(f"{_MEAS}/a.b", [FIRMWARE.hex()]), 'software.measurements."a.b"', "measurement name"),
]


@pytest.mark.parametrize(("mutate", "key", "fragment"), ERROR_CASES)
def test_errors_name_the_key(mutate: Any, key: str, fragment: str) -> None:
    doc = good_doc()
    mutate(doc)
    with pytest.raises(ConfigError) as info:
        parse(doc)
    assert info.value.key == key
    assert fragment in info.value.message
    assert "test.toml" in info.value.message
    assert str(info.value).startswith(f"{key}: ")


def test_hex_error_matches_the_documented_form() -> None:
    doc = good_doc()
    doc["software"]["measurements"]["kernel"] = [KERNEL.hex(), "not-hex"]
    with pytest.raises(
        ConfigError, match=r"^software\.measurements\.kernel\[1\]: not a hex digest"
    ):
        parse(doc)


tomlish = st.recursive(
    st.booleans() | st.integers() | st.text(max_size=10) | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "policy",
                    "id",
                    "software",
                    "allow_simulated",
                    "platform_keys",
                    "measurements",
                    "k",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None)
@given(tomlish)
def test_arbitrary_documents_raise_only_config_error(doc: Any) -> None:
    with contextlib.suppress(ConfigError):
        parse(doc)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_arbitrary_values_in_a_good_document(data: st.DataObject) -> None:
    doc = good_doc()
    path = data.draw(
        st.sampled_from(
            [
                ("policy", "id"),
                ("software", "allow_simulated"),
                ("software", "platform_keys"),
                ("software", "measurements"),
            ]
        )
    )
    doc[path[0]][path[1]] = data.draw(tomlish)
    try:
        parse(doc)
    except ConfigError as exc:
        assert exc.key.startswith(path[0])


# -- load_policy --------------------------------------------------------------------------------

POLICY_TOML = """\
[policy]
id = "dev-policy"

[software]
allow_simulated = true
platform_keys = ["keys/platform.pem"]

[software.measurements]
firmware = ["{firmware}"]
"""


def write_policy(folder: Path, text: str | None = None) -> Path:
    (folder / "keys").mkdir(exist_ok=True)
    (folder / "keys" / "platform.pem").write_bytes(public_pem(PLATFORM))
    path = folder / "policy.toml"
    path.write_text(text if text is not None else POLICY_TOML.format(firmware=FIRMWARE.hex()))
    return path


def test_freshness_section_accepts_tiers_and_an_age(tmp_path: Path) -> None:
    text = POLICY_TOML.format(firmware=FIRMWARE.hex())
    text += '\n[freshness]\ntiers = ["cached", "batched"]\nmax_epoch_age = 60\n'
    fresh = load_policy(write_policy(tmp_path, text)).freshness
    assert fresh.tiers == frozenset({Tier.CACHED, Tier.BATCHED}) and fresh.max_epoch_age == 60
    default = load_policy(write_policy(tmp_path)).freshness
    # Without the opt-in, not the cached tier (docs/SECURITY.md: a stolen TLS key defeats it).
    assert default.tiers == frozenset({Tier.STRICT, Tier.BATCHED}) and default.max_epoch_age == 300
    assert Freshness().tiers == default.tiers


@pytest.mark.parametrize(
    "line,key",
    [
        ("tiers = []", "freshness.tiers"),
        ('tiers = "strict"', "freshness.tiers"),
        ('tiers = ["fast"]', "freshness.tiers[0]"),
        ('tiers = ["strict", ["cached"]]', "freshness.tiers[1]"),  # unhashable: was a TypeError
        ("tiers = [{ a = 1 }]", "freshness.tiers[0]"),
        ("max_epoch_age = 0", "freshness.max_epoch_age"),
        ("max_epoch_age = -5", "freshness.max_epoch_age"),
        ("max_epoch_age = true", "freshness.max_epoch_age"),
        ("max_epoch_age = 604801", "freshness.max_epoch_age"),
        ("max_age = 5", "freshness.max_age"),
    ],
)
def test_freshness_section_rules(tmp_path: Path, line: str, key: str) -> None:
    text = POLICY_TOML.format(firmware=FIRMWARE.hex()) + f"\n[freshness]\n{line}\n"
    path = write_policy(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.key == key, info.value
    assert trust_files(path) == []  # the reload watcher's listing survives it too


def test_load_policy_resolves_keys_against_the_policy_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    path = write_policy(etc)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    policy = load_policy(path)
    assert policy.policy_id == "dev-policy"
    assert policy.software is not None
    assert policy.software.platform_key_names == ("keys/platform.pem",)
    assert policy.software.measurements["firmware"] == frozenset({FIRMWARE})
    assert load_policy(str(path)) == policy  # a str path works too


def test_load_policy_absolute_key_path(tmp_path: Path) -> None:
    key = tmp_path / "abs.pem"
    key.write_bytes(public_pem(SECOND))
    text = POLICY_TOML.format(firmware=FIRMWARE.hex()).replace("keys/platform.pem", str(key))
    policy = load_policy(write_policy(tmp_path, text))
    assert policy.software is not None
    assert policy.software.platform_keys[0].public_numbers() == (
        SECOND.public_key().public_numbers()
    )


def test_load_policy_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(tmp_path / "nope.toml")
    assert info.value.key == "policy"
    assert "cannot read" in info.value.message and "nope.toml" in info.value.message


def test_load_policy_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy(tmp_path)
    assert info.value.key == "policy"


def test_a_policy_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    # tomllib recurses once per nested array: past the interpreter's limit it raises
    # RecursionError, which must not escape as a traceback (nor stop the reload watcher).
    path = write_policy(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.key == "policy" and "nested too deeply" in info.value.message
    assert trust_files(path) == []


def test_load_policy_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    text = '[policy]\nid = "x"\nallow = = true\n'
    with pytest.raises(ConfigError) as info:
        load_policy(write_policy(tmp_path, text))
    assert info.value.key == "policy"
    assert "not valid TOML" in info.value.message
    assert "line 3" in info.value.message


def test_load_policy_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b'[policy]\nid = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.key == "policy"
    assert "UTF-8" in info.value.message


def test_load_policy_too_large(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b"#" * (MAX_POLICY_FILE_SIZE + 1))
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.key == "policy"
    assert "larger" in info.value.message


def test_load_policy_missing_key_file(tmp_path: Path) -> None:
    path = write_policy(tmp_path)
    (tmp_path / "keys" / "platform.pem").unlink()
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.key == "software.platform_keys[0]"
    assert "cannot read" in info.value.message
    assert str(path) in info.value.message


def test_load_policy_semantic_error_names_key_and_file(tmp_path: Path) -> None:
    text = POLICY_TOML.format(firmware="abcd")
    path = write_policy(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    assert info.value.key == "software.measurements.firmware[0]"
    assert str(path) in info.value.message


def test_loaded_policy_drives_the_verifier(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path))
    assert policy.software is not None
    attester = SoftwareAttester(PLATFORM, {"firmware": FIRMWARE})
    binding = Binding("sha256", os.urandom(32), os.urandom(32))
    verifier = SoftwareVerifier(policy.software, policy.policy_id)
    result = verifier.appraise(SOFTWARE_MEDIA_TYPE, attester.produce(binding, 0.0), binding, 0.0)
    assert result.passed, result.first_failure
    assert result.policy_id == "dev-policy"
    assert result.to_json()["ear.appraisal-policy-id"] == "dev-policy"


def test_good_doc_is_not_mutated_by_parsing() -> None:
    doc = good_doc()
    before = copy.deepcopy(doc)
    parse(doc)
    assert doc == before


def test_an_integer_too_long_to_convert_is_a_policy_error(tmp_path: Path) -> None:
    # tomllib raises a plain ValueError (not TOMLDecodeError) past Python's 4300-digit limit.
    text = POLICY_TOML.format(firmware=FIRMWARE.hex()) + "\n[freshness]\nmax_epoch_age = "
    with pytest.raises(ConfigError) as info:
        load_policy(write_policy(tmp_path, text + "9" * 5000 + "\n"))
    assert info.value.key == "policy" and "not valid TOML" in info.value.message
