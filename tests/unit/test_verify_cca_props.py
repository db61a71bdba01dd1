"""Property tests: hostile bytes never raise out of the CCA verifier; parsers raise DecodeError only.

Truncated and mutated tokens (synthetic, and the vector tokens when ../shared/vectors is present),
random CPAK files and random policy tables.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atls_proxy.errors import ConfigError, DecodeError
from atls_proxy.ops.cca_files import rvstore_policy_table
from atls_proxy.verify.cca import (
    CcaPolicy,
    CcaTrust,
    appraise_cca,
    parse_cca_policy,
    parse_cpak_file,
    parse_token,
)
from atls_proxy.verify.result import Appraisal
from tests.unit.test_verify_cca_synthetic import REPORT_DATA, SynthToken

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SYNTH = SynthToken()
TOKEN = SYNTH.token()
TRUST = SYNTH.trust()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def appraise(evidence: bytes, trust: CcaTrust = TRUST) -> Appraisal:
    return appraise_cca(
        evidence, policy=CcaPolicy(), trust=trust, now=NOW, expected_report_data=REPORT_DATA
    )


def no_internal_error(a: Appraisal) -> None:
    assert a.checks, "an appraisal always says something"
    assert all(c.name != "cca.internal-error" for c in a.checks), a.checks[-1]


def test_the_unmodified_token_passes() -> None:
    assert appraise(TOKEN).passed


@SETTINGS
@given(st.integers(min_value=0, max_value=len(TOKEN) - 1))
def test_truncated_tokens_fail_cleanly(n: int) -> None:
    a = appraise(TOKEN[:n])
    no_internal_error(a)
    assert not a.passed
    with pytest.raises(DecodeError):
        parse_token(TOKEN[:n])


@SETTINGS
@given(st.integers(min_value=0, max_value=len(TOKEN) - 1), st.integers(1, 255))
def test_mutated_tokens_never_pass_or_crash(pos: int, xor: int) -> None:
    data = bytearray(TOKEN)
    data[pos] ^= xor
    a = appraise(bytes(data))
    no_internal_error(a)
    assert not a.passed
    with contextlib.suppress(DecodeError):
        parse_token(bytes(data))


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    no_internal_error(appraise(data))
    with contextlib.suppress(DecodeError):
        parse_token(data)


@SETTINGS
@given(st.binary(max_size=512), st.sampled_from([b"", b"-----BEGIN PUBLIC KEY-----\n", b"{", b"["]))
def test_cpak_files_raise_decode_error_only(data: bytes, prefix: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_cpak_file(prefix + data, "fuzz")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "accepted_lifecycles",
                "implementation_ids",
                "instance_ids",
                "platform_configs",
                "sw_components",
                "platforms",
                "registers",
                "realms",
                "other",
            ]
        ),
        _json,
        max_size=4,
    )
)
def test_policy_tables_raise_config_error_only(table: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        parse_cca_policy(table, "cca", lambda _: b"")


_HEX = st.sampled_from(["7f" * 32, "11" * 32, "aa" * 64, "00" * 64, "cfcf", "zz", ""])
_RV_KEYS = st.sampled_from(
    [
        "implementation-id",
        "platform-configuration",
        "sw-components",
        "component-type",
        "measurement-value",
        "signer-id",
        "initial-measurement",
        "extensible-measurements",
        "personalization-value",
        "other",
    ]
)
_rv_json = st.recursive(
    st.none() | st.integers() | _HEX,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_RV_KEYS, children, max_size=4)
    ),
    max_leaves=16,
)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["platform", "realm", "other"]), _rv_json, max_size=3))
def test_rvstores_raise_config_error_only(doc: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        table = rvstore_policy_table(json.dumps(doc).encode())
        policy = parse_cca_policy(table, "cca", lambda _: b"")
        # A store that parses always yields one platform and one realm record at least.
        assert policy.platforms and policy.realms


@pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")
@SETTINGS
@given(
    st.sampled_from(["cca/ccatoken/cca_token.cbor", "cca/trustee/cca-example-token.cbor"]),
    st.floats(0, 1, exclude_max=True),
    st.integers(1, 255),
    st.booleans(),
)
def test_vector_tokens_truncated_or_mutated(name: str, where: float, xor: int, cut: bool) -> None:
    data = (VECTORS / name).read_bytes()
    trust = CcaTrust(
        tuple(parse_cpak_file((VECTORS / "cca/ccatoken/cca_platform.pub").read_bytes(), "pub"))
    )
    pos = int(where * len(data))
    if cut:
        bad = data[:pos]
    else:
        buf = bytearray(data)
        buf[pos] ^= xor
        bad = bytes(buf)
    a = appraise_cca(bad, policy=CcaPolicy(), trust=trust, now=NOW, expected_report_data=None)
    no_internal_error(a)
    assert not a.passed
