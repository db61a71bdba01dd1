"""Property tests: hostile bytes never raise out of the TDX verifier; parsers raise DecodeError only.

Truncated and mutated quotes (synthetic, and the real vectors when ../shared/vectors is present),
random collateral JSON, random DER for the SGX extension, random CRLs and random policy tables.
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
from atls_proxy.verify.tdx import (
    TdxPolicy,
    appraise_tdx,
    parse_crl,
    parse_qe_identity,
    parse_quote,
    parse_tcb_info,
    parse_tdx_policy,
)
from atls_proxy.verify.tdx.pck import parse_sgx_extensions
from tests.unit.test_verify_tdx_synthetic import NOW, Synth, sgx_extension

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"

SYNTH = Synth(version=5, body_type=3)
TRUST = SYNTH.trust()
QUOTE = SYNTH.quote()
SIGNED_END = len(parse_quote(QUOTE).signed)
TCB_INFO_JSON = SYNTH.signed_json("tcbInfo", SYNTH.tcb_info)
QE_IDENTITY_JSON = SYNTH.signed_json("enclaveIdentity", SYNTH.qe_identity)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def appraise(evidence: bytes) -> Appraisal:
    return appraise_tdx(
        evidence, policy=TdxPolicy(), trust=TRUST, now=NOW, expected_report_data=SYNTH.report_data
    )


def no_internal_error(a: Appraisal) -> None:
    assert a.checks, "an appraisal always says something"
    assert all(c.name != "tdx.internal-error" for c in a.checks), a.checks[-1]


def test_the_unmodified_quote_passes() -> None:
    assert appraise(QUOTE).passed


@SETTINGS
@given(st.integers(min_value=0, max_value=len(QUOTE) - 1))
def test_truncated_quote(cut: int) -> None:
    a = appraise(QUOTE[:cut])
    no_internal_error(a)
    assert not a.passed and a.checks[0].name == "tdx.quote.format"


# A malformed name attribute in a mutated certificate made cryptography print a UserWarning per
# appraisal (noise a peer could repeat at will): none may escape the verifier.
@pytest.mark.filterwarnings("error::UserWarning")
@SETTINGS
@given(st.dictionaries(st.integers(0, len(QUOTE) - 1), st.integers(1, 255), min_size=1, max_size=8))
def test_mutated_quote(flips: dict[int, int]) -> None:
    data = bytearray(QUOTE)
    for pos, mask in flips.items():
        data[pos] ^= mask
    a = appraise(bytes(data))
    no_internal_error(a)
    if any(pos < SIGNED_END + 4 + 64 + 64 for pos in flips):
        assert not a.passed  # header, body, length, signature and key are all covered


@SETTINGS
@given(st.binary(max_size=6000))
def test_random_bytes(data: bytes) -> None:
    no_internal_error(appraise(data))
    with contextlib.suppress(DecodeError):
        parse_quote(data)


@SETTINGS
@given(st.binary(min_size=1, max_size=64), st.integers(0, len(QUOTE)))
def test_inserted_bytes(junk: bytes, at: int) -> None:
    no_internal_error(appraise(QUOTE[:at] + junk + QUOTE[at:]))


def _mutate_text(doc: bytes, pos: int, char: str) -> bytes:
    text = doc.decode()
    pos %= len(text)
    return (text[:pos] + char + text[pos + 1 :]).encode()


@SETTINGS
@given(st.integers(0, 10_000), st.sampled_from(list('0129aZ"{}[],:. -\\\x00é')))
def test_collateral_json_parsers(pos: int, char: str) -> None:
    for doc, parse in ((TCB_INFO_JSON, parse_tcb_info), (QE_IDENTITY_JSON, parse_qe_identity)):
        with contextlib.suppress(DecodeError):
            parse(_mutate_text(doc, pos, char))


@SETTINGS
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_collateral_json_shapes(value: Any) -> None:
    for key, parse in (("tcbInfo", parse_tcb_info), ("enclaveIdentity", parse_qe_identity)):
        doc = json.dumps({key: value, "signature": "00" * 64}).encode()
        with pytest.raises(DecodeError):
            parse(doc)


@SETTINGS
@given(st.binary(max_size=600))
def test_sgx_extension_parser(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_sgx_extensions(data)


@SETTINGS
@given(st.integers(0, 10_000), st.integers(1, 255))
def test_sgx_extension_mutated(pos: int, mask: int) -> None:
    der = bytearray(sgx_extension(bytes(6), tuple(range(16)), 11))
    der[pos % len(der)] ^= mask
    with contextlib.suppress(DecodeError):
        parse_sgx_extensions(bytes(der))


@SETTINGS
@given(st.binary(max_size=400))
def test_crl_parser(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        parse_crl(data)


_POLICY_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=100)
    | st.datetimes(timezones=st.just(UTC))
    | st.just("UpToDate")
    | st.just("ab" * 48),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["mrtd", "rtmr0", "x"]), inner, max_size=3)
    ),
    max_leaves=10,
)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(
            ["accepted_tcb_statuses", "out_of_date_grace_until", "allow_debug", "registers", "z"]
        ),
        _POLICY_VALUES,
        max_size=4,
    )
)
def test_policy_parser(table: dict[str, Any]) -> None:
    try:
        parse_tdx_policy(table, "tdx", lambda name: b"")
    except ConfigError as exc:
        assert exc.key.startswith("tdx")


def test_policy_examples() -> None:
    p = parse_tdx_policy({}, "tdx", lambda n: b"")
    assert p.accepted_tcb_statuses == {"UpToDate"} and not p.allow_debug and not p.registers
    p = parse_tdx_policy(
        {
            "accepted_tcb_statuses": ["UpToDate", "SWHardeningNeeded"],
            "out_of_date_grace_until": datetime(2026, 3, 31, tzinfo=UTC),
            "allow_debug": True,
            "registers": {"mrtd": ["AB" * 48, "cd" * 48], "rtmr3": ["00" * 48]},
        },
        "tdx",
        lambda n: b"",
    )
    assert p.registers["mrtd"] == {b"\xab" * 48, b"\xcd" * 48} and p.allow_debug
    assert parse_tdx_policy(
        {"out_of_date_grace_until": "2026-03-31T00:00:00Z"}, "tdx", lambda n: b""
    )
    bad: list[tuple[dict[str, Any], str]] = [
        ({"nope": 1}, "tdx.nope"),
        ({"accepted_tcb_statuses": ["Revoked"]}, "tdx.accepted_tcb_statuses[0]"),
        ({"accepted_tcb_statuses": ["UpToDate", "Fine"]}, "tdx.accepted_tcb_statuses[1]"),
        ({"accepted_tcb_statuses": []}, "tdx.accepted_tcb_statuses"),
        ({"allow_debug": "no"}, "tdx.allow_debug"),
        ({"out_of_date_grace_until": "2026-03-31T00:00:00"}, "tdx.out_of_date_grace_until"),
        ({"out_of_date_grace_until": 5}, "tdx.out_of_date_grace_until"),
        ({"registers": {"mrtd": ["ab" * 32]}}, "tdx.registers.mrtd[0]"),
        ({"registers": {"mrtd": ["zz" * 48]}}, "tdx.registers.mrtd[0]"),
        ({"registers": {"mrtd": []}}, "tdx.registers.mrtd"),
        ({"registers": {"mrseam": ["00" * 48]}}, "tdx.registers.mrseam"),
        ({"registers": ["mrtd"]}, "tdx.registers"),
    ]
    for table, key in bad:
        with pytest.raises(ConfigError) as exc:
            parse_tdx_policy(table, "tdx", lambda n: b"")
        assert exc.value.key == key, (table, exc.value)


# -- the real vectors, when present -----------------------------------------------------------

_REAL = [
    "tdx/automata/quotev4.hex",
    "tdx/go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
    "tdx/go-tdx-guest/quote_v5_sample.dat",
    "tdx/trustee/tdx_quote_4.dat",
]


def _real(name: str) -> bytes:
    data = (VECTORS / name).read_bytes()
    return bytes.fromhex(data.decode().strip()) if name.endswith(".hex") else data


@pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")
@pytest.mark.parametrize("name", _REAL)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_real_quotes_truncated_and_mutated(name: str, data: st.DataObject) -> None:
    quote = _real(name)
    cut = data.draw(st.integers(0, len(quote)))
    no_internal_error(appraise(quote[:cut]))
    mutated = bytearray(quote)
    pos = data.draw(st.integers(0, len(quote) - 1))
    mutated[pos] ^= data.draw(st.integers(1, 255))
    a = appraise(bytes(mutated))
    no_internal_error(a)
    assert not a.passed  # the synthetic trust never accepts a real quote
    with contextlib.suppress(DecodeError):
        parse_quote(bytes(mutated))
