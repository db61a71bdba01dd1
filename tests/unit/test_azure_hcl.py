"""The Azure HCL report's layout (verify/azure_hcl.py): the two real reports parse, and every size
that disagrees with the others is refused — by the layout parser and by both of its users (the SNP
verifier's container parser and the TPM trust's AK reader), which cannot read the bytes two ways."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from atls_proxy.errors import DecodeError
from atls_proxy.verify.azure_hcl import (
    FIXED_SIZE,
    HCL_HEADER_SIZE,
    HW_REPORT_SIZE,
    TDX_REPORT_SIZE,
    parse_hcl_layout,
)
from atls_proxy.verify.snp.report import parse_snp_evidence
from atls_proxy.verify.tpm import parse_hcl_report

VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason="../shared/vectors absent")

IGVM = HCL_HEADER_SIZE + HW_REPORT_SIZE  # offset of IGVM_REQUEST_DATA


def vec(platform: str) -> bytes:
    return (VECTORS / platform / "azure-trustee" / "hcl-report.bin").read_bytes()


def u32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "little")


def with_u32(data: bytes, at: int, value: int) -> bytes:
    out = bytearray(data)
    out[at : at + 4] = struct.pack("<I", value)
    return bytes(out)


@pytest.mark.parametrize(
    ("platform", "version", "size", "type_"), [("snp", 1, 2346, "snp"), ("tdx", 2, 2437, "tdx")]
)
def test_the_real_reports_parse(platform: str, version: int, size: int, type_: str) -> None:
    data = vec(platform)
    layout = parse_hcl_layout(data)
    assert (layout.header_version, layout.request_type, layout.status) == (version, 2, 0)
    assert layout.report_type == type_ and layout.hash_name == "sha256"
    assert FIXED_SIZE + len(layout.variable_data) == size == u32(data, 8)
    assert layout.variable_data.startswith(b"{") and b"HCLAkPub" in layout.variable_data
    assert len(layout.trailing) == len(data) - size and not any(layout.trailing)
    assert parse_hcl_report(data).report_type == type_
    if platform == "snp":
        assert parse_snp_evidence(data).trailing == layout.trailing


def _tamperings(data: bytes) -> dict[str, tuple[bytes, str]]:
    size, var = u32(data, 8), u32(data, IGVM + 16)
    return {
        "report size one more": (with_u32(data, 8, size + 1), "header report size"),
        "report size one less": (with_u32(data, 8, size - 1), "header report size"),
        "report size beyond the input": (with_u32(data, 8, len(data) + 4), "header report size"),
        "request data size": (with_u32(data, IGVM, 20 + var + 1), "request data size"),
        # Both variable sizes shrunk alike: the header's report size now disagrees.
        "variable data shortened": (
            with_u32(with_u32(data, IGVM, 20 + var - 1), IGVM + 16, var - 1),
            "header report size",
        ),
        "variable data past the end": (
            with_u32(with_u32(data, IGVM, 20 + len(data)), IGVM + 16, len(data)),
            "does not fit",
        ),
        "report type": (with_u32(data, IGVM + 8, 3), "report type 3"),
        "hash type": (with_u32(data, IGVM + 12, 9), "hash type 9"),
        "magic": (b"HCLB" + data[4:], "magic"),
    }


TAMPERINGS = (
    "report size one more",
    "report size one less",
    "report size beyond the input",
    "request data size",
    "variable data shortened",
    "variable data past the end",
    "report type",
    "hash type",
    "magic",
)


@pytest.mark.parametrize("platform", ["snp", "tdx"])
@pytest.mark.parametrize("name", TAMPERINGS)
def test_disagreeing_sizes_are_refused_by_every_reader(platform: str, name: str) -> None:
    tamperings = _tamperings(vec(platform))
    assert set(tamperings) == set(TAMPERINGS)
    data, message = tamperings[name]
    readers: list[Callable[[bytes], object]] = [parse_hcl_layout, parse_hcl_report]
    if platform == "snp" and name != "magic":  # without HCLA it is not an HCL container
        readers.append(parse_snp_evidence)
    for read in readers:
        with pytest.raises(DecodeError, match=message):
            read(data)


def test_a_tdx_report_with_bytes_in_its_padding_is_refused() -> None:
    data = bytearray(vec("tdx"))
    data[HCL_HEADER_SIZE + TDX_REPORT_SIZE + 7] = 1
    with pytest.raises(DecodeError, match="padding after the TDX report"):
        parse_hcl_layout(bytes(data))
    with pytest.raises(DecodeError, match="padding after the TDX report"):
        parse_hcl_report(bytes(data))


def test_the_snp_verifier_refuses_a_tdx_hcl_report() -> None:
    with pytest.raises(DecodeError, match="TDX, not SEV-SNP"):
        parse_snp_evidence(vec("tdx"))
