"""The Intel SGX extensions of a PCK certificate (FMSPC, PCE-ID, TCB), sans-IO.

The extension is OID 1.2.840.113741.1.13.1, a SEQUENCE of (OID, value) pairs, defined in the
"Intel SGX PCK Certificate and Certificate Revocation List Profile Specification" §1.3.5
("Intel SGX Extensions"):

    .1 PPID        OCTET STRING (16)
    .2 TCB         SEQUENCE of (OID .2.1 … .2.16 SGX TCB COMP01…16 SVN INTEGER,
                                .2.17 PCESVN INTEGER, .2.18 CPUSVN OCTET STRING (16))
    .3 PCE-ID      OCTET STRING (2)
    .4 FMSPC       OCTET STRING (6)
    .5 SGX Type    ENUMERATED
    (.6 PlatformInstanceID, .7 Configuration: Platform CA certificates only)

``cryptography`` hands the unknown extension over as raw DER; this module is the small, bounded
DER reader (X.690 §8.1: identifier, definite length, contents) that walks it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from atls_proxy.errors import DecodeError
from atls_proxy.verify.tdx.collateral import CERT_ERRORS

SGX_EXTENSIONS_OID = "1.2.840.113741.1.13.1"
_OID_TCB = SGX_EXTENSIONS_OID + ".2"
_OID_PCESVN = _OID_TCB + ".17"
_OID_CPUSVN = _OID_TCB + ".18"
_OID_PCEID = SGX_EXTENSIONS_OID + ".3"
_OID_FMSPC = SGX_EXTENSIONS_OID + ".4"

# X.690 tags used here.
_TAG_INTEGER = 0x02
_TAG_OCTET_STRING = 0x04
_TAG_OID = 0x06
_TAG_SEQUENCE = 0x30

# A PCK leaf's SGX extension is ~550 bytes with ~25 elements; these caps bound the walk over a
# peer-supplied certificate without ever getting near a real one.
MAX_EXTENSION_SIZE = 4096
MAX_ELEMENTS = 64
# SVNs are one byte in the CPUSVN and two in PCESVN; an INTEGER longer than 4 bytes is malformed.
MAX_INTEGER_SIZE = 4
SGX_TCB_COMPONENTS = 16


@dataclass(frozen=True, slots=True)
class PckExtensions:
    """What TCB evaluation needs from a PCK certificate."""

    fmspc: bytes  # 6
    pce_id: bytes  # 2
    sgx_tcb_components: tuple[int, ...]  # 16 SVNs
    pce_svn: int
    cpusvn: bytes  # 16


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Read one DER TLV at ``pos``: (tag, contents, next position)."""
    if pos + 2 > len(data):
        raise DecodeError("SGX extension: truncated DER element")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 2 or pos + count > len(data):
            raise DecodeError("SGX extension: unsupported or truncated DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise DecodeError("SGX extension: DER element runs past its container")
    return tag, data[pos:end], end


def _children(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(out) >= MAX_ELEMENTS:
            raise DecodeError("SGX extension: too many elements")
        tag, contents, pos = _tlv(data, pos)
        out.append((tag, contents))
    return out


def _oid(contents: bytes) -> str:
    """Decode an OBJECT IDENTIFIER (X.690 §8.19)."""
    if not contents or contents[-1] & 0x80:
        raise DecodeError("SGX extension: malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    value = 0
    for byte in contents:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _pairs(data: bytes) -> dict[str, tuple[int, bytes]]:
    """A SEQUENCE OF SEQUENCE { OID, value } as a map OID -> (value tag, value contents)."""
    out: dict[str, tuple[int, bytes]] = {}
    for tag, contents in _children(data):
        if tag != _TAG_SEQUENCE:
            raise DecodeError("SGX extension: an entry is not a SEQUENCE")
        parts = _children(contents)
        if len(parts) != 2 or parts[0][0] != _TAG_OID:
            raise DecodeError("SGX extension: an entry is not (OID, value)")
        oid = _oid(parts[0][1])
        if oid in out:
            raise DecodeError(f"SGX extension: {oid} appears twice")
        out[oid] = parts[1]
    return out


def _integer(item: tuple[int, bytes] | None, name: str) -> int:
    if item is None or item[0] != _TAG_INTEGER or not 1 <= len(item[1]) <= MAX_INTEGER_SIZE:
        raise DecodeError(f"SGX extension: {name} is missing or not a small INTEGER")
    value = int.from_bytes(item[1], "big", signed=True)
    if value < 0:
        raise DecodeError(f"SGX extension: {name} is negative")
    return value


def _octets(item: tuple[int, bytes] | None, name: str, size: int) -> bytes:
    if item is None or item[0] != _TAG_OCTET_STRING or len(item[1]) != size:
        raise DecodeError(f"SGX extension: {name} is missing or not a {size}-byte OCTET STRING")
    return item[1]


def parse_sgx_extensions(der: bytes) -> PckExtensions:
    """Parse the DER value of extension 1.2.840.113741.1.13.1. Raises ``DecodeError``."""
    if len(der) > MAX_EXTENSION_SIZE:
        raise DecodeError("SGX extension is larger than allowed")
    tag, contents, end = _tlv(der, 0)
    if tag != _TAG_SEQUENCE or end != len(der):
        raise DecodeError("SGX extension is not one DER SEQUENCE")
    top = _pairs(contents)
    tcb_item = top.get(_OID_TCB)
    if tcb_item is None or tcb_item[0] != _TAG_SEQUENCE:
        raise DecodeError("SGX extension: TCB (…13.1.2) is missing")
    tcb = _pairs(tcb_item[1])
    components = tuple(
        _integer(tcb.get(f"{_OID_TCB}.{i}"), f"SGX TCB COMP{i:02d} SVN")
        for i in range(1, SGX_TCB_COMPONENTS + 1)
    )
    if any(c > 0xFF for c in components):
        raise DecodeError("SGX extension: an SGX TCB component SVN exceeds one byte")
    pce_svn = _integer(tcb.get(_OID_PCESVN), "PCESVN")
    if pce_svn > 0xFFFF:
        raise DecodeError("SGX extension: PCESVN exceeds two bytes")
    return PckExtensions(
        fmspc=_octets(top.get(_OID_FMSPC), "FMSPC", 6),
        pce_id=_octets(top.get(_OID_PCEID), "PCE-ID", 2),
        sgx_tcb_components=components,
        pce_svn=pce_svn,
        cpusvn=_octets(tcb.get(_OID_CPUSVN), "CPUSVN", 16),
    )


def pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """The SGX extensions of a PCK certificate. Raises ``DecodeError`` when absent or malformed."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXTENSIONS_OID))
    except x509.ExtensionNotFound as exc:
        raise DecodeError("PCK certificate has no SGX extensions (1.2.840.113741.1.13.1)") from exc
    except CERT_ERRORS as exc:  # a malformed extension elsewhere in the certificate
        raise DecodeError(f"PCK certificate extensions do not parse: {exc}") from exc
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise DecodeError("SGX extensions were not handed over as raw DER")
    return parse_sgx_extensions(value.value)
