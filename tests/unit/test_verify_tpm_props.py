"""Property tests: hostile bytes never raise out of the TPM verifier; parsers raise DecodeError only.

TPMS_ATTEST, TPMT_SIGNATURE, the CBOR evidence map, the JSON readers, the Azure HCL report and
AK files, truncated, mutated and random; plus the vector quotes when ../shared/vectors is present.
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
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.tpm import (
    TpmPolicy,
    appraise_tpm,
    decode_evidence,
    evidence_from_json,
    parse_ak_file,
    parse_hcl_report,
    parse_quote,
    parse_signature,
    parse_tpm_policy,
)
from tests.unit.test_verify_tpm_synthetic import EC_AK, NONCE, SynthQuote

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
SYNTH = SynthQuote()
EVIDENCE = SYNTH.evidence()
TRUST = SYNTH.trust()
ATTEST = SYNTH.attest()
RSA_SIG = SYNTH.signature(ATTEST)
EC_SIG = SynthQuote(key=EC_AK, scheme="ecdsa").signature(ATTEST)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def appraise(evidence: bytes) -> Appraisal:
    return appraise_tpm(
        evidence, policy=TpmPolicy(), trust=TRUST, now=NOW, expected_report_data=NONCE
    )


def no_internal_error(a: Appraisal) -> None:
    assert a.checks, "an appraisal always says something"
    assert all(c.name != "tpm.internal-error" for c in a.checks), a.checks[-1]


def test_the_unmodified_evidence_passes() -> None:
    assert appraise(EVIDENCE).passed


@SETTINGS
@given(st.integers(min_value=0, max_value=len(EVIDENCE) - 1))
def test_truncated_evidence_fails_cleanly(n: int) -> None:
    a = appraise(EVIDENCE[:n])
    no_internal_error(a)
    assert not a.passed


@SETTINGS
@given(st.integers(min_value=0, max_value=len(EVIDENCE) - 1), st.integers(1, 255))
def test_mutated_evidence_never_crashes(pos: int, xor: int) -> None:
    data = bytearray(EVIDENCE)
    data[pos] ^= xor
    a = appraise(bytes(data))
    no_internal_error(a)
    with contextlib.suppress(DecodeError):
        decode_evidence(bytes(data))


@SETTINGS
@given(st.integers(min_value=0, max_value=len(ATTEST) - 1), st.integers(1, 255))
def test_mutated_attest_is_never_accepted(pos: int, xor: int) -> None:
    """Any change to the signed TPMS_ATTEST fails (format or signature), never passes."""
    attest = bytearray(ATTEST)
    attest[pos] ^= xor
    with contextlib.suppress(DecodeError):
        parse_quote(bytes(attest))
    from atls_proxy.verify.tpm import TpmEvidence, encode_evidence

    ev = decode_evidence(EVIDENCE)
    a = appraise(
        encode_evidence(TpmEvidence(bytes(attest), ev.signature, ev.pcrs, ev.pcr_bank, ev.ak_spki))
    )
    no_internal_error(a)
    assert not a.passed


@SETTINGS
@given(st.binary(max_size=600))
def test_random_structures_raise_decode_error_only(data: bytes) -> None:
    for parse in (parse_quote, parse_signature, decode_evidence, parse_hcl_report):
        with contextlib.suppress(DecodeError):
            parse(data)
    with contextlib.suppress(DecodeError):
        parse_ak_file(data, "fuzz")
    no_internal_error(appraise(data))


@SETTINGS
@given(st.sampled_from([ATTEST, RSA_SIG, EC_SIG]), st.integers(0, 600), st.binary(max_size=8))
def test_truncated_or_extended_structures(data: bytes, cut: int, tail: bytes) -> None:
    for parse in (parse_quote, parse_signature):
        with contextlib.suppress(DecodeError):
            parse(data[:cut] + tail)


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 300) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["message", "signature", "pcrs", "tpm_quote", "ak_public", "quote", "report"]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@SETTINGS
@given(_json)
def test_json_readers_raise_decode_error_only(doc: Any) -> None:
    with contextlib.suppress(DecodeError):
        evidence_from_json(json.dumps(doc).encode())


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(
            ["pcr_bank", "accepted_signature_hashes", "allow_software_tpm", "pcrs", "x"]
        ),
        _json | st.dictionaries(st.text(max_size=3), _json, max_size=3),
        max_size=4,
    )
)
def test_policy_tables_raise_config_error_only(table: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        parse_tpm_policy(table, "tpm", lambda _: b"")


@pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")
@SETTINGS
@given(st.floats(0, 1, exclude_max=True), st.integers(1, 255))
def test_mutated_hcl_reports_raise_decode_error_only(where: float, xor: int) -> None:
    data = bytearray((VECTORS / "snp/azure-trustee/hcl-report.bin").read_bytes())
    data[int(where * len(data))] ^= xor
    with contextlib.suppress(DecodeError):
        parse_hcl_report(bytes(data))


@pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")
@SETTINGS
@given(
    st.sampled_from(["tpm/trustee/tpm_evidence.json", "snp/azure-trustee/tpm-quote-v1.json"]),
    st.floats(0, 1, exclude_max=True),
    st.integers(1, 255),
)
def test_mutated_vector_json_raises_decode_error_only(name: str, where: float, xor: int) -> None:
    data = bytearray((VECTORS / name).read_bytes())
    data[int(where * len(data))] ^= xor
    try:
        evidence = evidence_from_json(bytes(data))
    except DecodeError:
        return
    no_internal_error(appraise(evidence))
