"""Azure vTPM HCL report: where an Azure confidential VM publishes its vTPM attestation key (sans-IO).

On Azure SEV-SNP and TDX confidential VMs the paravisor (HCL) writes a report to vTPM NV index
0x01400001; its layout, and the checks of its sizes, are in ``verify/azure_hcl.py``.

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
from atls_proxy.verify.azure_hcl import parse_hcl_layout

# Offset of REPORT_DATA inside the hardware report: SNP ATTESTATION_REPORT 0x50 (SEV-SNP ABI
# Table 22); TDX REPORTMACSTRUCT.REPORTDATA at 128 (TDX Module ABI, REPORTMACSTRUCT).
_REPORT_DATA_OFFSET = {"snp": 0x50, "tdx": 128}
REPORT_DATA_SIZE = 64
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
    layout = parse_hcl_layout(bytes(data))
    var = layout.variable_data
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
        report_type=layout.report_type,
        hw_report=layout.hw_report,
        variable_data=var,
        variable_data_hash=hashlib.new(layout.hash_name, var).digest(),
        ak=rsa_jwk_public_key(aks[0]),
    )
