"""Property tests: hostile bytes never raise out of the SNP verifier; parsers raise DecodeError only.

Truncated and mutated reports (synthetic, and the real vectors when ../shared/vectors is present),
random containers (HCL, CBOR), random DER for the certificate walker and random policy tables.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atls_proxy.errors import ConfigError, DecodeError
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.snp import (
    SnpPolicy,
    appraise_snp,
    build_snp_trust,
    parse_amd_certificate,
    parse_amd_certificates,
    parse_snp_evidence,
    parse_snp_policy,
    vek_extensions,
)
from atls_proxy.verify.snp.report import parse_cert_table
from tests.unit.test_verify_snp_synthetic import NOW, REPORT_DATA, Synth

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"

SYNTH = Synth()
TRUST = SYNTH.trust()
REPORT = SYNTH.report()
VEK_DER = SYNTH.vek.public_bytes(Encoding.DER)
ASK_DER = SYNTH.ask.public_bytes(Encoding.DER)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def appraise(evidence: bytes) -> Appraisal:
    return appraise_snp(
        evidence, policy=SnpPolicy(), trust=TRUST, now=NOW, expected_report_data=REPORT_DATA
    )


def no_internal_error(a: Appraisal) -> None:
    assert a.checks, "an appraisal always says something"
    assert all(c.name != "snp.internal-error" for c in a.checks), a.checks[-1]


def test_the_unmodified_report_passes() -> None:
    assert appraise(REPORT).passed


@SETTINGS
@given(st.integers(min_value=0, max_value=len(REPORT) - 1))
def test_truncated_reports_fail_at_format(cut: int) -> None:
    a = appraise(REPORT[:cut])
    no_internal_error(a)
    assert not a.passed and a.first_failure is not None
    assert a.first_failure.name == "snp.report.format"


@SETTINGS
@given(
    st.dictionaries(st.integers(0, 0x2A0 + 2 * 72 - 1), st.integers(1, 255), min_size=1, max_size=8)
)
def test_mutated_signed_bytes_never_pass(changes: dict[int, int]) -> None:
    """Any change to the signed bytes or to R/S (distinct offsets, so no change cancels out)."""
    data = bytearray(REPORT)
    for offset, xor in changes.items():
        data[offset] ^= xor
    a = appraise(bytes(data))
    no_internal_error(a)
    assert not a.passed


@SETTINGS
@given(st.binary(max_size=3000))
def test_random_bytes(data: bytes) -> None:
    no_internal_error(appraise(data))
    with contextlib.suppress(DecodeError):
        parse_snp_evidence(data)


@SETTINGS
@given(st.binary(max_size=4000))
def test_random_hcl_and_cbor_containers(tail: bytes) -> None:
    for data in (b"HCLA" + tail, b"\xa2" + tail, cbor2.dumps({1: REPORT, 2: tail})):
        no_internal_error(appraise(data))
        with contextlib.suppress(DecodeError):
            parse_snp_evidence(data)
    with contextlib.suppress(DecodeError):
        parse_cert_table(tail)


@SETTINGS
@given(st.integers(0, len(VEK_DER) - 1), st.integers(1, 255), st.booleans())
def test_mutated_certificates_raise_decode_error_only(offset: int, xor: int, ask: bool) -> None:
    data = bytearray(ASK_DER if ask else VEK_DER)
    data[offset % len(data)] ^= xor
    try:
        cert = parse_amd_certificate(bytes(data))
    except DecodeError:
        return
    with contextlib.suppress(DecodeError):
        vek_extensions(cert)
    with contextlib.suppress(DecodeError):
        cert.public_key()
    # A trust bundle built from it either loads or says which source is bad.
    with contextlib.suppress(DecodeError):
        trust = build_snp_trust([("x", bytes(data))], [("anchors", SYNTH.chain_pem())])
        no_internal_error(
            appraise_snp(
                REPORT, policy=SnpPolicy(), trust=trust, now=NOW, expected_report_data=None
            )
        )


@SETTINGS
@given(st.binary(max_size=2000))
def test_random_der_and_pem(data: bytes) -> None:
    for blob in (data, b"\x30" + data, b"-----BEGIN CERTIFICATE-----\n" + data):
        with contextlib.suppress(DecodeError):
            parse_amd_certificates(blob)


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.text(max_size=8),
    st.lists(st.one_of(st.text(max_size=100), st.integers(-1, 5)), max_size=3),
    st.dictionaries(
        st.text(max_size=12), st.one_of(st.integers(-1, 300), st.lists(st.text())), max_size=3
    ),
)
_keys = st.sampled_from(
    [
        "product",
        "signing_keys",
        "allow_debug",
        "min_abi",
        "min_firmware",
        "min_guest_svn",
        "accepted_vmpls",
        "min_tcb",
        "registers",
        "bogus",
    ]
)


@SETTINGS
@given(st.dictionaries(_keys, _values, max_size=4))
def test_random_policy_tables(table: dict[str, Any]) -> None:
    with contextlib.suppress(ConfigError):
        parse_snp_policy(table, "snp", lambda name: b"")


@pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")
@SETTINGS
@given(st.integers(0, 1183), st.integers(1, 255), st.integers(0, 1183))
def test_real_report_mutations(offset: int, xor: int, cut: int) -> None:
    report = (VECTORS / "snp/trustee/test-report.bin").read_bytes()
    trust = _real_trust()
    data = bytearray(report)
    data[offset] ^= xor
    mutated = appraise_snp(
        bytes(data), policy=SnpPolicy(), trust=trust, now=NOW, expected_report_data=None
    )
    no_internal_error(mutated)
    if offset < 0x2A0 + 2 * 72:  # the signed bytes, R and S
        assert not mutated.passed
    truncated = appraise_snp(
        report[:cut], policy=SnpPolicy(), trust=trust, now=NOW, expected_report_data=None
    )
    no_internal_error(truncated)
    assert truncated.first_failure is not None
    assert truncated.first_failure.name == "snp.report.format"


_REAL: list[Any] = []


def _real_trust() -> Any:
    if not _REAL:
        _REAL.append(
            build_snp_trust(
                [("vcek", (VECTORS / "snp/trustee/test-vcek.der").read_bytes())],
                [("anchors", (VECTORS / "roots/amd/ask_ark_milan.pem").read_bytes())],
            )
        )
    return _REAL[0]


def test_hostile_pem_is_linear() -> None:
    """A BEGIN line followed by 60 000 spaces and no END is refused at once (no backtracking)."""
    import time

    start = time.monotonic()
    for blob in (
        b"-----BEGIN CERTIFICATE-----" + b" " * 60_000,
        (b"-----BEGIN CERTIFICATE-----" + b"A" * 10 + b"\n") * 2_000,
        b"-----BEGIN CERTIFICATE-----\n" + b"=\n" * 30_000 + b"-----END CERTIFICATE-----",
    ):
        with pytest.raises(DecodeError):
            parse_amd_certificates(blob)
    assert time.monotonic() - start < 2.0


def test_a_report_certs_container_with_tags_is_refused_before_decoding() -> None:
    # Value sharing (tags 28/29) or any other tag: the container is two byte strings, nothing more.
    shared = b"\xa2\x01\xd8\x1c" + cbor2.dumps(REPORT) + b"\x02\xd8\x1d\x00"
    with pytest.raises(DecodeError, match="unexpected CBOR tag 28"):
        parse_snp_evidence(shared)
    plain = cbor2.dumps({1: REPORT, 2: bytes(24)})  # an empty table: its all-zero terminator
    assert parse_snp_evidence(plain).container == "report+certs"  # the same without tags
