"""The layout of Azure's HCL report, for the SNP verifier (its container) and the TPM trust (its AK).

On Azure SEV-SNP and TDX confidential VMs the paravisor (HCL) writes a report to vTPM NV index
0x01400001. Layout (little-endian; as the public az-cvm-vtpm ``hcl`` module and Microsoft's IGVM
agent headers describe it, and as the two real reports in ``vectors/{snp,tdx}/azure-trustee``
are)::

    0x000  attestation header, 32 bytes: "HCLA" ‖ UINT32 version ‖ UINT32 report_size
           ‖ UINT32 request_type ‖ UINT32 status ‖ 12 reserved bytes
    0x020  hardware report, 1184 bytes: an SNP ATTESTATION_REPORT (AMD SEV-SNP ABI Table 22,
           0x4A0 bytes), or a TDX TDREPORT_STRUCT (1024 bytes) zero-padded to 1184
    0x4C0  IGVM_REQUEST_DATA: UINT32 data_size ‖ UINT32 version ‖ UINT32 report_type (2 = SNP,
           4 = TDX) ‖ UINT32 report_data_hash_type (1 = SHA-256, 2 = SHA-384, 3 = SHA-512)
           ‖ UINT32 variable_data_size ‖ variable data (the runtime-claims JSON)
    report_size  zero padding to the end of the NV index (2600 bytes on Azure)

The sizes must agree, or the report is refused (``DecodeError``): ``data_size`` is the
IGVM_REQUEST_DATA's 20 bytes plus ``variable_data_size``, ``report_size`` is the header, the
hardware report and ``data_size`` together (2346 and 2437 in the two vectors) and lies within the
input; a TDX report's padding is zero. ``version``, ``request_type`` and ``status`` are kept for
the report but not judged: nothing public defines their values beyond those seen (versions 1 and
2, request type 2, status 0). None of these bytes is signed: the hardware report's signature —
checked by the SNP or TDX verifier — covers REPORT_DATA, whose first bytes are the hash of the
variable data; the header and sizes are only made consistent here, so that two parsers cannot
read the same bytes two ways.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from atls_proxy.errors import DecodeError

HCL_MAGIC = b"HCLA"
HCL_HEADER_SIZE = 32
HW_REPORT_SIZE = 1184  # SNP ATTESTATION_REPORT size; the field is sized for it
TDX_REPORT_SIZE = 1024  # TDREPORT_STRUCT, zero-padded to HW_REPORT_SIZE
IGVM_REQUEST_DATA_SIZE = 20  # the five UINT32 before the variable data
HCL_REPORT_TYPES = {2: "snp", 4: "tdx"}
HCL_HASH_TYPES = {1: "sha256", 2: "sha384", 3: "sha512"}
# The NV index is 2600 bytes on Azure; 64 KiB bounds a wrong input. The runtime claims are ~1 KiB.
MAX_HCL_REPORT_SIZE = 64 * 1024
MAX_VARIABLE_DATA_SIZE = 32 * 1024
FIXED_SIZE = HCL_HEADER_SIZE + HW_REPORT_SIZE + IGVM_REQUEST_DATA_SIZE


@dataclass(frozen=True, slots=True)
class HclLayout:
    header_version: int
    request_type: int
    status: int
    report_type: str  # "snp" or "tdx"
    hash_name: str  # of the variable data, in REPORT_DATA
    hw_report: bytes  # HW_REPORT_SIZE bytes (a TDX report with its zero padding)
    variable_data: bytes
    trailing: bytes  # after report_size: the NV index's padding


def parse_hcl_layout(data: bytes) -> HclLayout:
    """Split an HCL report into its parts, its sizes checked (module docstring). Raises
    ``DecodeError``; reads nothing inside the hardware report or the variable data."""
    if len(data) > MAX_HCL_REPORT_SIZE:
        raise DecodeError(f"HCL report: larger than {MAX_HCL_REPORT_SIZE} bytes")
    if len(data) < FIXED_SIZE:
        raise DecodeError(
            f"HCL report: {len(data)} bytes, shorter than its {FIXED_SIZE}-byte header"
        )
    if data[:4] != HCL_MAGIC:
        raise DecodeError("HCL report: magic is not 'HCLA'")
    version, report_size, request_type, status = struct.unpack_from("<IIII", data, 4)
    off = HCL_HEADER_SIZE + HW_REPORT_SIZE
    data_size, _igvm_version, type_id, hash_id, var_size = struct.unpack_from("<IIIII", data, off)
    report_type = HCL_REPORT_TYPES.get(type_id)
    if report_type is None:
        raise DecodeError(f"HCL report: report type {type_id} is not SNP (2) or TDX (4)")
    hash_name = HCL_HASH_TYPES.get(hash_id)
    if hash_name is None:
        raise DecodeError(f"HCL report: unknown report-data hash type {hash_id}")
    if var_size > MAX_VARIABLE_DATA_SIZE or FIXED_SIZE + var_size > len(data):
        raise DecodeError(f"HCL report: variable data of {var_size} bytes does not fit")
    if data_size != IGVM_REQUEST_DATA_SIZE + var_size:
        raise DecodeError(
            f"HCL report: request data size {data_size} is not {IGVM_REQUEST_DATA_SIZE} + the "
            f"variable data's {var_size}"
        )
    if report_size != FIXED_SIZE + var_size:
        raise DecodeError(
            f"HCL report: header report size {report_size} is not the {FIXED_SIZE + var_size} "
            "bytes of its parts"
        )
    hw_report = bytes(data[HCL_HEADER_SIZE:off])
    if report_type == "tdx" and any(hw_report[TDX_REPORT_SIZE:]):
        raise DecodeError("HCL report: the padding after the TDX report is not zero")
    return HclLayout(
        header_version=version,
        request_type=request_type,
        status=status,
        report_type=report_type,
        hash_name=hash_name,
        hw_report=hw_report,
        variable_data=bytes(data[FIXED_SIZE : FIXED_SIZE + var_size]),
        trailing=bytes(data[report_size:]),
    )
