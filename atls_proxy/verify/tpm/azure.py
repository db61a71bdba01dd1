"""Azure vTPM HCL report: where an Azure confidential VM publishes its vTPM attestation key (sans-IO).

On Azure SEV-SNP and TDX confidential VMs the paravisor (HCL) writes a report to vTPM NV index
0x01400001. Layout (little-endian; as the public az-cvm-vtpm ``hcl`` module and Microsoft's IGVM
agent headers describe it)::

    0x000  attestation header, 32 bytes: "HCLA" ‖ UINT32 version ‖ UINT32 report_size
           ‖ UINT32 request_type ‖ UINT32 status ‖ 12 reserved bytes
    0x020  hardware report, 1184 bytes: an SNP ATTESTATION_REPORT (AMD SEV-SNP ABI Table 22,
           0x4A0 bytes), or a TDX TDREPORT_STRUCT (1024 bytes) zero-padded to 1184
    0x4C0  IGVM_REQUEST_DATA: UINT32 data_size ‖ UINT32 version ‖ UINT32 report_type (2 = SNP,
           4 = TDX) ‖ UINT32 report_data_hash_type (1 = SHA-256, 2 = SHA-384, 3 = SHA-512)
           ‖ UINT32 variable_data_size ‖ variable data (the runtime-claims JSON)

The runtime claims JSON holds ``keys``: JWKs, among them ``HCLAkPub`` (the vTPM AK, RSA). The
hardware report's REPORT_DATA[0:32] is the hash of the variable data: that, with the hardware
signature over the report (the SNP or TDX verifiers' job, not done here), is what makes the AK
trustworthy. ``HclReport.binds_variable_data`` only says whether the two agree in these bytes;
nothing here checks a hardware signature, so an edited report with a recomputed hash agrees too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import DecodeError
from atls_proxy.untrusted import json_loads

HCL_MAGIC = b"HCLA"
HCL_HEADER_SIZE = 32
HW_REPORT_SIZE = 1184  # SNP ATTESTATION_REPORT size; the field is sized for it
IGVM_REQUEST_DATA_SIZE = 20  # the five UINT32 before the variable data
HCL_REPORT_TYPES = {2: "snp", 4: "tdx"}
_VAR_DATA_HASHES = {1: "sha256", 2: "sha384", 3: "sha512"}
# Offset of REPORT_DATA inside the hardware report: SNP ATTESTATION_REPORT 0x50 (SEV-SNP ABI
# Table 22); TDX REPORTMACSTRUCT.REPORTDATA at 128 (TDX Module ABI, REPORTMACSTRUCT).
_REPORT_DATA_OFFSET = {"snp": 0x50, "tdx": 128}
REPORT_DATA_SIZE = 64
# The NV index is 2600 bytes on Azure; 64 KiB bounds a wrong input. The runtime claims are ~1 KiB.
MAX_HCL_REPORT_SIZE = 64 * 1024
MAX_VARIABLE_DATA_SIZE = 32 * 1024
AK_KEY_ID = "HCLAkPub"
# RSA AKs of 2048..4096 bits (TPM 2.0 keys); anything else is not an Azure vTPM AK.
_RSA_BITS = (2048, 3072, 4096)


@dataclass(frozen=True, slots=True)
class HclReport:
    report_type: str  # "snp" or "tdx"
    hw_report: bytes
    variable_data: bytes
    variable_data_hash: bytes
    ak: rsa.RSAPublicKey

    @property
    def ak_spki_der(self) -> bytes:
        return self.ak.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)

    @property
    def hw_report_data(self) -> bytes:
        off = _REPORT_DATA_OFFSET[self.report_type]
        return self.hw_report[off : off + REPORT_DATA_SIZE]

    @property
    def binds_variable_data(self) -> bool:
        """REPORT_DATA[0:n] = hash(variable data) in these (unauthenticated) bytes."""
        n = len(self.variable_data_hash)
        return hmac.compare_digest(self.hw_report_data[:n], self.variable_data_hash)


def _b64url_int(value: Any, name: str) -> int:
    if not isinstance(value, str) or not value:
        raise DecodeError(f"HCL report: {AK_KEY_ID} {name} is not a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(f"HCL report: {AK_KEY_ID} {name} is not base64url") from exc
    return int.from_bytes(raw, "big")


def rsa_jwk_public_key(jwk: Any) -> rsa.RSAPublicKey:
    """An RSA public key from a JWK (RFC 7518 §6.3.1). Raises ``DecodeError``."""
    if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
        raise DecodeError(f"{AK_KEY_ID} is not an RSA JWK")
    n, e = _b64url_int(jwk.get("n"), "n"), _b64url_int(jwk.get("e"), "e")
    if n.bit_length() not in _RSA_BITS or e < 3 or e % 2 == 0:
        raise DecodeError(f"{AK_KEY_ID}: RSA modulus of {n.bit_length()} bits / exponent {e}")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise DecodeError(f"{AK_KEY_ID}: not a valid RSA public key") from exc


def parse_hcl_report(data: bytes) -> HclReport:
    """Parse an Azure HCL report and its HCLAkPub (module docstring). Raises ``DecodeError``."""
    data = bytes(data)
    if len(data) > MAX_HCL_REPORT_SIZE:
        raise DecodeError(f"HCL report: larger than {MAX_HCL_REPORT_SIZE} bytes")
    fixed = HCL_HEADER_SIZE + HW_REPORT_SIZE + IGVM_REQUEST_DATA_SIZE
    if len(data) < fixed:
        raise DecodeError(f"HCL report: {len(data)} bytes, shorter than its {fixed}-byte header")
    if data[:4] != HCL_MAGIC:
        raise DecodeError("HCL report: magic is not 'HCLA'")
    off = HCL_HEADER_SIZE + HW_REPORT_SIZE

    def u32(at: int) -> int:
        return int.from_bytes(data[at : at + 4], "little")

    report_type = HCL_REPORT_TYPES.get(u32(off + 8))
    if report_type is None:
        raise DecodeError(f"HCL report: report type {u32(off + 8)} is not SNP (2) or TDX (4)")
    hash_name = _VAR_DATA_HASHES.get(u32(off + 12))
    if hash_name is None:
        raise DecodeError(f"HCL report: unknown report-data hash type {u32(off + 12)}")
    size = u32(off + 16)
    if size > MAX_VARIABLE_DATA_SIZE or off + IGVM_REQUEST_DATA_SIZE + size > len(data):
        raise DecodeError(f"HCL report: variable data of {size} bytes does not fit")
    var = data[off + IGVM_REQUEST_DATA_SIZE : off + IGVM_REQUEST_DATA_SIZE + size]
    try:
        claims = json_loads(var)
    except ValueError as exc:
        raise DecodeError(f"HCL report: the runtime claims are not JSON: {exc}") from exc
    keys = claims.get("keys") if isinstance(claims, dict) else None
    if not isinstance(keys, list):
        raise DecodeError("HCL report: the runtime claims have no 'keys' list")
    aks = [k for k in keys if isinstance(k, dict) and k.get("kid") == AK_KEY_ID]
    if len(aks) != 1:
        raise DecodeError(f"HCL report: expected one {AK_KEY_ID} key, found {len(aks)}")
    return HclReport(
        report_type=report_type,
        hw_report=data[HCL_HEADER_SIZE : HCL_HEADER_SIZE + HW_REPORT_SIZE],
        variable_data=var,
        variable_data_hash=hashlib.new(hash_name, var).digest(),
        ak=rsa_jwk_public_key(aks[0]),
    )
