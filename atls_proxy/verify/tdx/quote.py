"""Intel TDX ECDSA quote parser: versions 4 and 5 (sans-IO, raises only ``DecodeError``).

Layouts are from the "Intel TDX DCAP Quoting Library API" (Intel_TDX_DCAP_Quoting_Library_API.pdf,
Appendix A "Quote Format"): A.3 (v4: header, TD Quote Body, signature data) and A.4 (v5: the body
is preceded by a 6-byte descriptor, type + size). The SGX report that carries the QE report is
from the "Intel SGX ECDSA Quote Library API" (Intel_SGX_ECDSA_QuoteLibReference_DCAP_API.pdf),
A.4 "Enclave Report Body" and "QE Certification Data" (certification data types 5 and 6). All
integers are little-endian. Byte offsets below were checked against every TDX vector in
../shared/vectors (see docs/VERIFIERS-TDX.md).

    quote   = header(48) ‖ [v5: body_type u16 ‖ body_size u32] ‖ body ‖ sig_len u32 ‖ sig_data
    signed  = everything before sig_len (48+584 for v4, 48+6+584/648 for v5)
    sig_data = ecdsa_sig(64, r‖s) ‖ attestation_key(64, x‖y) ‖ cert_type u16 (=6) ‖ size u32 ‖
               qe_report(384) ‖ qe_report_sig(64) ‖ auth_len u16 ‖ auth_data ‖
               cert_type u16 (=5) ‖ size u32 ‖ PEM chain (PCK leaf, PCK CA, root)

Bytes after ``sig_data`` (some producers hand out fixed 5006/8000-byte buffers, or append text)
are not signed and are returned as ``trailing`` for the verifier to report.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from atls_proxy.errors import DecodeError

# A real TDX quote is about 5 KB (4.3 KB of it the PEM PCK chain); some producers pad to 8000 bytes.
# 64 KiB leaves room for future certification data while bounding what a peer can make us parse.
MAX_QUOTE_SIZE = 64 * 1024
# The PEM PCK chain (three P-256 certificates, the leaf carrying the SGX extensions) is ~3.7 KB;
# 16 KiB bounds the PEM/X.509 parsing work a peer can request.
MAX_PCK_CHAIN_SIZE = 16 * 1024
# QE authentication data is 32 bytes in Intel's QE; the field is u16-sized. 1 KiB is generous.
MAX_QE_AUTH_DATA_SIZE = 1024

HEADER_SIZE = 48
# Quote header (TDX DCAP API A.3.1).
QUOTE_VERSION_4 = 4
QUOTE_VERSION_5 = 5
ATT_KEY_TYPE_ECDSA_P256 = 2
TEE_TYPE_TDX = 0x00000081
# Intel's QE vendor ID (TDX DCAP API A.3.1, "QE Vendor ID": 939A7233-F79C-4CA9-940A-0DB3957F0607).
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

# v5 body descriptor types (TDX DCAP API A.4.2): 1 = SGX enclave report, 2 = TD Report 1.0,
# 3 = TD Report 1.5. Only the TD bodies are TDX evidence.
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
V5_BODY_DESCRIPTOR_SIZE = 6

# Signature data (TDX DCAP API A.3.8/A.3.9).
ECDSA_SIG_SIZE = 64
ATTESTATION_KEY_SIZE = 64
CERT_DATA_HEADER_SIZE = 6  # type u16 + size u32
CERT_TYPE_PCK_CHAIN = 5  # concatenated PCK cert chain (PEM)
CERT_TYPE_QE_REPORT = 6  # QE report certification data
SGX_REPORT_BODY_SIZE = 384

REGISTER_SIZE = 48  # SHA-384 measurement registers


@dataclass(frozen=True, slots=True)
class TdReport:
    """The TD Quote Body: a TD Report 1.0 (584 B) or 1.5 (648 B) (TDX DCAP API A.3.2, A.4.3)."""

    tee_tcb_svn: bytes  # 16
    mrseam: bytes  # 48
    mrsignerseam: bytes  # 48
    seam_attributes: bytes  # 8
    td_attributes: bytes  # 8
    xfam: bytes  # 8
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr0: bytes
    rtmr1: bytes
    rtmr2: bytes
    rtmr3: bytes
    report_data: bytes  # 64
    tee_tcb_svn2: bytes | None = None  # TD 1.5 only
    mrservicetd: bytes | None = None  # TD 1.5 only

    @property
    def is_td15(self) -> bool:
        return self.tee_tcb_svn2 is not None

    def registers(self) -> dict[str, bytes]:
        """The measurement registers a policy can constrain, by policy name, in report order."""
        out = {
            "mrtd": self.mrtd,
            "rtmr0": self.rtmr0,
            "rtmr1": self.rtmr1,
            "rtmr2": self.rtmr2,
            "rtmr3": self.rtmr3,
            "mrconfigid": self.mrconfigid,
            "mrowner": self.mrowner,
            "mrownerconfig": self.mrownerconfig,
        }
        if self.mrservicetd is not None:
            out["mrservicetd"] = self.mrservicetd
        return out


@dataclass(frozen=True, slots=True)
class SgxReport:
    """The 384-byte SGX report body (here: the QE's), SGX ECDSA Quote Library API A.4."""

    raw: bytes
    cpusvn: bytes
    miscselect: int
    attributes: bytes  # 16
    mrenclave: bytes  # 32
    mrsigner: bytes  # 32
    isvprodid: int
    isvsvn: int
    report_data: bytes  # 64


@dataclass(frozen=True, slots=True)
class TdxQuote:
    """A parsed TDX quote. ``signed`` is exactly the bytes the attestation key signs."""

    version: int
    body_type: int
    header: bytes
    body: TdReport
    signed: bytes
    signature: bytes  # raw r‖s
    attestation_key: bytes  # raw x‖y
    qe_report: SgxReport
    qe_report_signature: bytes  # raw r‖s
    qe_auth_data: bytes
    pck_chain_pem: bytes
    trailing: bytes

    @property
    def qe_vendor_id(self) -> bytes:
        return self.header[12:28]

    def describe(self) -> str:
        kind = "TD 1.5" if self.body.is_td15 else "TD 1.0"
        if self.version == QUOTE_VERSION_5:
            return f"quote v5, body type {self.body_type} ({kind}, {len(self.signed) - 54} B)"
        return f"quote v4 ({kind} body, {len(self.signed) - HEADER_SIZE} B)"


def _take(data: bytes, offset: int, size: int, what: str) -> bytes:
    end = offset + size
    if size < 0 or end > len(data):
        raise DecodeError(f"{what}: needs {size} bytes at offset {offset}, quote has {len(data)}")
    return data[offset:end]


def _u16(data: bytes, offset: int, what: str) -> int:
    value: int = struct.unpack_from("<H", _take(data, offset, 2, what))[0]
    return value


def _u32(data: bytes, offset: int, what: str) -> int:
    value: int = struct.unpack_from("<I", _take(data, offset, 4, what))[0]
    return value


def parse_td_report(body: bytes) -> TdReport:
    """Parse a 584-byte TD 1.0 or 648-byte TD 1.5 body (TDX DCAP API A.3.2 / A.4.3 offsets)."""
    if len(body) not in (TD10_BODY_SIZE, TD15_BODY_SIZE):
        raise DecodeError(f"TD report body is {len(body)} bytes, not 584 or 648")
    b = body
    return TdReport(
        tee_tcb_svn=b[0:16],
        mrseam=b[16:64],
        mrsignerseam=b[64:112],
        seam_attributes=b[112:120],
        td_attributes=b[120:128],
        xfam=b[128:136],
        mrtd=b[136:184],
        mrconfigid=b[184:232],
        mrowner=b[232:280],
        mrownerconfig=b[280:328],
        rtmr0=b[328:376],
        rtmr1=b[376:424],
        rtmr2=b[424:472],
        rtmr3=b[472:520],
        report_data=b[520:584],
        tee_tcb_svn2=b[584:600] if len(b) == TD15_BODY_SIZE else None,
        mrservicetd=b[600:648] if len(b) == TD15_BODY_SIZE else None,
    )


def parse_sgx_report(raw: bytes) -> SgxReport:
    """Parse a 384-byte SGX report body (SGX ECDSA Quote Library API A.4, "Enclave Report")."""
    if len(raw) != SGX_REPORT_BODY_SIZE:
        raise DecodeError(f"SGX report body is {len(raw)} bytes, not {SGX_REPORT_BODY_SIZE}")
    miscselect, isvprodid, isvsvn = (
        struct.unpack_from("<I", raw, 16)[0],
        struct.unpack_from("<H", raw, 256)[0],
        struct.unpack_from("<H", raw, 258)[0],
    )
    return SgxReport(
        raw=raw,
        cpusvn=raw[0:16],
        miscselect=miscselect,
        attributes=raw[48:64],
        mrenclave=raw[64:96],
        mrsigner=raw[128:160],
        isvprodid=isvprodid,
        isvsvn=isvsvn,
        report_data=raw[320:384],
    )


def parse_quote(data: bytes) -> TdxQuote:
    """Parse a TDX quote v4/v5. Raises ``DecodeError`` naming the first problem found."""
    if len(data) > MAX_QUOTE_SIZE:
        raise DecodeError(f"quote is {len(data)} bytes, more than {MAX_QUOTE_SIZE}")
    header = _take(data, 0, HEADER_SIZE, "quote header")
    version = _u16(header, 0, "version")
    att_key_type = _u16(header, 2, "attestation key type")
    tee_type = _u32(header, 4, "TEE type")
    if version not in (QUOTE_VERSION_4, QUOTE_VERSION_5):
        raise DecodeError(f"quote version {version} is not supported (4 or 5)")
    if att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise DecodeError(f"attestation key type {att_key_type} is not 2 (ECDSA-256-with-P-256)")
    if tee_type != TEE_TYPE_TDX:
        raise DecodeError(f"TEE type {tee_type:#x} is not TDX (0x81)")

    if version == QUOTE_VERSION_4:
        body_type = BODY_TYPE_TD10
        body_offset, body_size = HEADER_SIZE, TD10_BODY_SIZE
    else:
        body_type = _u16(data, HEADER_SIZE, "v5 body type")
        body_size = _u32(data, HEADER_SIZE + 2, "v5 body size")
        expected = {BODY_TYPE_TD10: TD10_BODY_SIZE, BODY_TYPE_TD15: TD15_BODY_SIZE}.get(body_type)
        if expected is None:
            raise DecodeError(f"v5 body type {body_type} is not a TD report (2 or 3)")
        if body_size != expected:
            raise DecodeError(f"v5 body type {body_type} has size {body_size}, not {expected}")
        body_offset = HEADER_SIZE + V5_BODY_DESCRIPTOR_SIZE
    body = parse_td_report(_take(data, body_offset, body_size, "TD quote body"))
    signed_end = body_offset + body_size

    sig_len = _u32(data, signed_end, "signature data length")
    sig_data = _take(data, signed_end + 4, sig_len, "signature data")
    trailing = data[signed_end + 4 + sig_len :]

    signature = _take(sig_data, 0, ECDSA_SIG_SIZE, "quote signature")
    attestation_key = _take(sig_data, ECDSA_SIG_SIZE, ATTESTATION_KEY_SIZE, "attestation key")
    pos = ECDSA_SIG_SIZE + ATTESTATION_KEY_SIZE
    cert_type = _u16(sig_data, pos, "certification data type")
    cert_size = _u32(sig_data, pos + 2, "certification data size")
    if cert_type != CERT_TYPE_QE_REPORT:
        raise DecodeError(f"certification data type {cert_type} is not 6 (QE report)")
    cert = _take(sig_data, pos + CERT_DATA_HEADER_SIZE, cert_size, "QE certification data")
    if pos + CERT_DATA_HEADER_SIZE + cert_size != len(sig_data):
        raise DecodeError(
            f"signature data is {len(sig_data)} bytes but its contents end at "
            f"{pos + CERT_DATA_HEADER_SIZE + cert_size}"
        )

    qe_report = parse_sgx_report(_take(cert, 0, SGX_REPORT_BODY_SIZE, "QE report"))
    pos = SGX_REPORT_BODY_SIZE
    qe_report_signature = _take(cert, pos, ECDSA_SIG_SIZE, "QE report signature")
    pos += ECDSA_SIG_SIZE
    auth_len = _u16(cert, pos, "QE authentication data size")
    if auth_len > MAX_QE_AUTH_DATA_SIZE:
        raise DecodeError(f"QE authentication data is {auth_len} bytes, more than allowed")
    qe_auth_data = _take(cert, pos + 2, auth_len, "QE authentication data")
    pos += 2 + auth_len
    inner_type = _u16(cert, pos, "PCK certification data type")
    inner_size = _u32(cert, pos + 2, "PCK certification data size")
    if inner_type != CERT_TYPE_PCK_CHAIN:
        raise DecodeError(f"nested certification data type {inner_type} is not 5 (PCK chain)")
    if inner_size > MAX_PCK_CHAIN_SIZE:
        raise DecodeError(f"PCK chain is {inner_size} bytes, more than {MAX_PCK_CHAIN_SIZE}")
    chain = _take(cert, pos + CERT_DATA_HEADER_SIZE, inner_size, "PCK chain")
    if pos + CERT_DATA_HEADER_SIZE + inner_size != len(cert):
        raise DecodeError("QE certification data has bytes after the PCK chain")

    return TdxQuote(
        version=version,
        body_type=body_type,
        header=header,
        body=body,
        signed=data[:signed_end],
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        # Some QEs NUL-terminate the PEM text (the vectors show one trailing 0x00).
        pck_chain_pem=chain.rstrip(b"\x00"),
        trailing=trailing,
    )
