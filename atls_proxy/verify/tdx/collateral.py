"""Intel DCAP collateral for TDX: TCB Info v3, TD_QE Identity v2, CRLs, and the trust bundle.

Sans-IO: bytes in, frozen dataclasses out; parse errors raise ``DecodeError``. The formats are
Intel's Provisioning Certification Service (PCS) API v4 responses ("Intel SGX and Intel TDX PCS
API", https://api.portal.trustedservices.intel.com/content/documentation.html):

* ``GET /tdx/certification/v4/tcb`` — ``{"tcbInfo": {…}, "signature": "<hex r‖s>"}``, TCB Info
  "V3" with ``id = "TDX"``; the signature (ECDSA P-256/SHA-256 by the Intel SGX TCB Signing key)
  covers the exact bytes of the ``tcbInfo`` value as served, so the raw span is kept.
* ``GET /tdx/certification/v4/qe/identity`` — ``{"enclaveIdentity": {…}, "signature": …}``, an
  Enclave Identity "V2" with ``id = "TD_QE"``, signed the same way.
* PCK CRL (``GET /sgx/certification/v4/pckcrl?ca=platform|processor``) and the Intel SGX Root CA
  CRL (https://certificates.trustedservices.intel.com/IntelSGXRootCA.der), DER or PEM.

``build_tdx_trust`` verifies everything that does not depend on the quote or the clock once (the
collateral signatures, the TCB Signing certificates' signatures by the root, the root CRL's
signature), so that appraising a quote only verifies the quote's own signatures and chain.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from atls_proxy.errors import DecodeError
from atls_proxy.untrusted import json_loads

# PCS TCB Info for one FMSPC is 3-5 KB and a QE Identity under 1 KB; 1 MiB bounds parsing of a
# wrong file while leaving two orders of magnitude of headroom.
MAX_COLLATERAL_JSON_SIZE = 1024 * 1024
# A PCK CRL is a few KB today (44 entries); revocation lists only grow, so allow 4 MiB.
MAX_CRL_SIZE = 4 * 1024 * 1024
# Real TCB Info has ~10-20 TCB levels and 2 TDX module identities; these caps bound the per-quote
# scan and the size of a report.
MAX_TCB_LEVELS = 256
MAX_MODULE_IDENTITIES = 16
MAX_ADVISORY_IDS = 128
# Status and advisory strings are short ("ConfigurationAndSWHardeningNeeded", "INTEL-SA-00986").
MAX_SHORT_STRING = 64
# Several FMSPCs (platform models) in one fleet: one TCB Info each.
MAX_TCB_INFOS = 64
# TCB Signing certificates (renewals share the key: 2018 and 2025 today).
MAX_SIGNING_CERTS = 8

# What ``cryptography`` raises while loading or lazily inspecting a malformed certificate. With
# cryptography 50, ``InvalidVersion`` (load), ``DuplicateExtension`` and
# ``UnsupportedGeneralNameType`` (``.extensions``) are not ``ValueError``s; PCK certificates are
# peer-supplied, so each of these is a decode error or a failed check, never an internal error.
CERT_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)

TCB_INFO_ID_TDX = "TDX"
TCB_INFO_VERSION = 3
QE_IDENTITY_ID = "TD_QE"
QE_IDENTITY_VERSION = 2
SGX_COMPONENTS = 16
TDX_COMPONENTS = 16
ECDSA_RAW_SIGNATURE_SIZE = 64

_HEX_RE = re.compile(r"[0-9A-Fa-f]*")


@dataclass(frozen=True, slots=True)
class SignedDoc:
    """What every signed PCS JSON document shares. ``signed`` is the exact signed byte span."""

    kind: str  # "tcb-info" or "qe-identity" (used in check names)
    source: str  # where it came from (a file name), for reports
    signed: bytes
    signature: bytes  # raw r‖s
    issue_date: datetime
    next_update: datetime
    evaluation_data_number: int
    # Indices into ``TdxTrust.signers`` whose key verifies ``signature`` (set by build_tdx_trust).
    verified_by: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class IsvTcbLevel:
    """A TCB level keyed by one ISVSVN (QE Identity levels, TDX module identity levels)."""

    isvsvn: int
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TcbLevel:
    """One platform TCB level of TDX TCB Info v3."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...]
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]

    def describe(self) -> str:
        sgx = bytes(self.sgx_components).hex()
        tdx = bytes(self.tdx_components).hex()
        return f"sgx {sgx} pcesvn {self.pce_svn} tdx {tdx} ({self.tcb_date}, {self.status})"


@dataclass(frozen=True, slots=True)
class ModuleIdentity:
    """``tdxModule`` (id "") or one of ``tdxModuleIdentities`` ("TDX_01", "TDX_03", …)."""

    id: str
    mrsigner: bytes  # 48
    attributes: bytes  # 8
    attributes_mask: bytes  # 8
    tcb_levels: tuple[IsvTcbLevel, ...] = ()


@dataclass(frozen=True, slots=True)
class TcbInfo:
    doc: SignedDoc
    fmspc: bytes
    pce_id: bytes
    tdx_module: ModuleIdentity
    module_identities: tuple[ModuleIdentity, ...]
    # Sorted as Intel's QVL sorts them (TcbLevel::operator>): SGX components, then PCESVN, then
    # TDX components, highest first.
    tcb_levels: tuple[TcbLevel, ...]


@dataclass(frozen=True, slots=True)
class QeIdentity:
    doc: SignedDoc
    miscselect: int
    miscselect_mask: int
    attributes: bytes  # 16
    attributes_mask: bytes  # 16
    mrsigner: bytes  # 32
    isvprodid: int
    tcb_levels: tuple[IsvTcbLevel, ...]  # highest ISVSVN first


@dataclass(frozen=True, slots=True)
class Crl:
    source: str
    crl: x509.CertificateRevocationList
    revoked_serials: frozenset[int]


@dataclass(frozen=True, slots=True)
class SigningCert:
    """An Intel SGX TCB Signing certificate and whether the trusted root signed it."""

    source: str
    cert: x509.Certificate
    issued_by_root: bool


@dataclass(frozen=True, slots=True)
class TdxTrust:
    """Everything an appraisal trusts, parsed and pre-verified once (``build_tdx_trust``)."""

    root: x509.Certificate
    root_der: bytes
    root_source: str
    root_crl: Crl
    root_crl_signed_by_root: bool
    pck_crls: tuple[Crl, ...]
    tcb_infos: Mapping[bytes, TcbInfo]  # by FMSPC
    qe_identity: QeIdentity
    signers: tuple[SigningCert, ...]


# -- small typed accessors over parsed JSON ---------------------------------------------------


def _get(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise DecodeError(f"{where}: {key!r} is missing")
    return obj[key]


def _int(obj: Mapping[str, Any], key: str, where: str, maximum: int) -> int:
    value = _get(obj, key, where)
    if type(value) is not int or not 0 <= value <= maximum:
        raise DecodeError(f"{where}: {key!r} must be an integer in 0..{maximum}")
    return value


def _str(obj: Mapping[str, Any], key: str, where: str, maximum: int = MAX_SHORT_STRING) -> str:
    value = _get(obj, key, where)
    if not isinstance(value, str) or len(value) > maximum or not value.isprintable():
        raise DecodeError(f"{where}: {key!r} must be a short printable string")
    return value


def _hex(obj: Mapping[str, Any], key: str, where: str, size: int) -> bytes:
    value = _get(obj, key, where)
    if not isinstance(value, str) or len(value) != 2 * size or not _HEX_RE.fullmatch(value):
        raise DecodeError(f"{where}: {key!r} must be {size} bytes of hex")
    return bytes.fromhex(value)


def _list(obj: Mapping[str, Any], key: str, where: str, maximum: int) -> list[Any]:
    value = _get(obj, key, where)
    if not isinstance(value, list) or len(value) > maximum:
        raise DecodeError(f"{where}: {key!r} must be a list of at most {maximum}")
    return value


def _obj(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise DecodeError(f"{where} must be a JSON object")
    return value


def _date(obj: Mapping[str, Any], key: str, where: str) -> datetime:
    text = _str(obj, key, where)
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise DecodeError(f"{where}: {key!r} is not an ISO 8601 date-time") from exc
    if value.tzinfo is None:
        raise DecodeError(f"{where}: {key!r} has no time zone")
    return value


def _advisories(level: Mapping[str, Any], where: str) -> tuple[str, ...]:
    if "advisoryIDs" not in level:
        return ()
    ids = _list(level, "advisoryIDs", where, MAX_ADVISORY_IDS)
    for item in ids:
        if not isinstance(item, str) or len(item) > MAX_SHORT_STRING or not item.isprintable():
            raise DecodeError(f"{where}: advisoryIDs must be short strings")
    return tuple(ids)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A signed document with a repeated key could be read differently by different parsers.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DecodeError(f"JSON key {key!r} appears twice")
        out[key] = value
    return out


def _signed_document(
    data: bytes, body_key: str, kind: str
) -> tuple[Mapping[str, Any], bytes, bytes]:
    """Split ``{"<body_key>": {…}, "signature": "<hex>"}`` into (body, exact body bytes, sig)."""
    if len(data) > MAX_COLLATERAL_JSON_SIZE:
        raise DecodeError(f"{kind} is larger than {MAX_COLLATERAL_JSON_SIZE} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{kind} is not UTF-8") from exc
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates)
    try:
        whole = json_loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        if isinstance(exc, DecodeError):
            raise DecodeError(f"{kind}: {exc}") from exc
        raise DecodeError(f"{kind} is not JSON: {exc}") from exc
    top = _obj(whole, kind)
    if set(top) != {body_key, "signature"}:
        raise DecodeError(f"{kind}: expected exactly the keys {body_key!r} and 'signature'")
    sig = _hex(top, "signature", kind, ECDSA_RAW_SIGNATURE_SIZE)
    # Locate the raw span of the body value: walk the top-level members with the same decoder.
    ws = " \t\n\r"
    pos = 0
    while text[pos] in ws:
        pos += 1
    pos += 1  # "{"
    span: tuple[int, int] | None = None
    while True:
        while text[pos] in ws:
            pos += 1
        key, pos = decoder.raw_decode(text, pos)
        while text[pos] in ws:
            pos += 1
        pos += 1  # ":"
        while text[pos] in ws:
            pos += 1
        _, end = decoder.raw_decode(text, pos)
        if key == body_key:
            span = (pos, end)
        pos = end
        while text[pos] in ws:
            pos += 1
        if text[pos] == "}":
            break
        pos += 1  # ","
    assert span is not None  # the key set was checked above
    body = _obj(top[body_key], f"{kind}.{body_key}")
    return body, text[span[0] : span[1]].encode("utf-8"), sig


def _doc(kind: str, source: str, body: Mapping[str, Any], signed: bytes, sig: bytes) -> SignedDoc:
    return SignedDoc(
        kind=kind,
        source=source,
        signed=signed,
        signature=sig,
        issue_date=_date(body, "issueDate", kind),
        next_update=_date(body, "nextUpdate", kind),
        evaluation_data_number=_int(body, "tcbEvaluationDataNumber", kind, 2**32 - 1),
    )


def _isv_levels(raw: list[Any], where: str) -> tuple[IsvTcbLevel, ...]:
    out: list[IsvTcbLevel] = []
    for i, item in enumerate(raw):
        w = f"{where}[{i}]"
        level = _obj(item, w)
        tcb = _obj(_get(level, "tcb", w), f"{w}.tcb")
        out.append(
            IsvTcbLevel(
                isvsvn=_int(tcb, "isvsvn", f"{w}.tcb", 0xFFFF),
                tcb_date=_str(level, "tcbDate", w),
                status=_str(level, "tcbStatus", w),
                advisory_ids=_advisories(level, w),
            )
        )
    # Highest ISVSVN first: the first level at or below the reported ISVSVN is the match.
    return tuple(sorted(out, key=lambda lv: lv.isvsvn, reverse=True))


def _components(tcb: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    raw = _list(tcb, key, where, SGX_COMPONENTS)
    if len(raw) != SGX_COMPONENTS:
        raise DecodeError(f"{where}: {key!r} must list {SGX_COMPONENTS} components")
    return tuple(_int(_obj(c, f"{where}.{key}"), "svn", f"{where}.{key}", 0xFF) for c in raw)


def _module(obj: Mapping[str, Any], where: str, with_levels: bool) -> ModuleIdentity:
    return ModuleIdentity(
        id=_str(obj, "id", where) if with_levels else "",
        mrsigner=_hex(obj, "mrsigner", where, 48),
        attributes=_hex(obj, "attributes", where, 8),
        attributes_mask=_hex(obj, "attributesMask", where, 8),
        tcb_levels=(
            _isv_levels(_list(obj, "tcbLevels", where, MAX_TCB_LEVELS), f"{where}.tcbLevels")
            if with_levels
            else ()
        ),
    )


def parse_tcb_info(data: bytes, source: str = "tcb-info") -> TcbInfo:
    """Parse a PCS TDX TCB Info (v3) response body. Raises ``DecodeError``."""
    kind = "tcb-info"
    body, signed, sig = _signed_document(data, "tcbInfo", kind)
    if body.get("id") != TCB_INFO_ID_TDX or body.get("version") != TCB_INFO_VERSION:
        raise DecodeError(
            f"{kind}: id {body.get('id')!r} version {body.get('version')!r} is not TDX TCB Info v3"
        )
    # PCS TCB Info V3: tcbType 0 is the only defined layout of the TCB components (the one used
    # here: 16 SGX components from the PCK certificate, 16 TDX components from TEE_TCB_SVN).
    if _int(body, "tcbType", kind, 0xFFFF) != 0:
        raise DecodeError(f"{kind}: tcbType {body.get('tcbType')} is not supported (only 0)")
    levels: list[TcbLevel] = []
    raw_levels = _list(body, "tcbLevels", kind, MAX_TCB_LEVELS)
    for i, item in enumerate(raw_levels):
        w = f"{kind}.tcbLevels[{i}]"
        level = _obj(item, w)
        tcb = _obj(_get(level, "tcb", w), f"{w}.tcb")
        levels.append(
            TcbLevel(
                sgx_components=_components(tcb, "sgxtcbcomponents", f"{w}.tcb"),
                pce_svn=_int(tcb, "pcesvn", f"{w}.tcb", 0xFFFF),
                tdx_components=_components(tcb, "tdxtcbcomponents", f"{w}.tcb"),
                tcb_date=_str(level, "tcbDate", w),
                status=_str(level, "tcbStatus", w),
                advisory_ids=_advisories(level, w),
            )
        )
    if not levels:
        raise DecodeError(f"{kind}: no tcbLevels")
    levels.sort(key=lambda lv: (lv.sgx_components, lv.pce_svn, lv.tdx_components), reverse=True)
    identities: list[ModuleIdentity] = []
    if "tdxModuleIdentities" in body:
        raw_ids = _list(body, "tdxModuleIdentities", kind, MAX_MODULE_IDENTITIES)
        for i, item in enumerate(raw_ids):
            w = f"{kind}.tdxModuleIdentities[{i}]"
            identities.append(_module(_obj(item, w), w, with_levels=True))
    return TcbInfo(
        doc=_doc(kind, source, body, signed, sig),
        fmspc=_hex(body, "fmspc", kind, 6),
        pce_id=_hex(body, "pceId", kind, 2),
        tdx_module=_module(_obj(_get(body, "tdxModule", kind), kind), f"{kind}.tdxModule", False),
        module_identities=tuple(identities),
        tcb_levels=tuple(levels),
    )


def parse_qe_identity(data: bytes, source: str = "qe-identity") -> QeIdentity:
    """Parse a PCS TD_QE Enclave Identity (v2) response body. Raises ``DecodeError``."""
    kind = "qe-identity"
    body, signed, sig = _signed_document(data, "enclaveIdentity", kind)
    if body.get("id") != QE_IDENTITY_ID or body.get("version") != QE_IDENTITY_VERSION:
        raise DecodeError(
            f"{kind}: id {body.get('id')!r} version {body.get('version')!r} is not "
            "a TD_QE identity v2"
        )
    levels = _isv_levels(_list(body, "tcbLevels", kind, MAX_TCB_LEVELS), f"{kind}.tcbLevels")
    if not levels:
        raise DecodeError(f"{kind}: no tcbLevels")
    return QeIdentity(
        doc=_doc(kind, source, body, signed, sig),
        # The hex is the field's bytes in report order (like attributes), and the report's
        # MISCSELECT is a little-endian uint32 (SgxReport.miscselect): read both the same way, as
        # Intel's QVL does (vectorToUint32 byte-swaps its big-endian read).
        miscselect=int.from_bytes(_hex(body, "miscselect", kind, 4), "little"),
        miscselect_mask=int.from_bytes(_hex(body, "miscselectMask", kind, 4), "little"),
        attributes=_hex(body, "attributes", kind, 16),
        attributes_mask=_hex(body, "attributesMask", kind, 16),
        mrsigner=_hex(body, "mrsigner", kind, 32),
        isvprodid=_int(body, "isvprodid", kind, 0xFFFF),
        tcb_levels=levels,
    )


def parse_crl(data: bytes, source: str = "crl") -> Crl:
    """Parse a DER or PEM X.509 CRL. Raises ``DecodeError``."""
    if len(data) > MAX_CRL_SIZE:
        raise DecodeError(f"CRL is larger than {MAX_CRL_SIZE} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        serials = frozenset(r.serial_number for r in crl)
        if crl.next_update_utc is None:
            raise DecodeError("CRL has no nextUpdate")
    except ValueError as exc:
        raise DecodeError(f"not a DER or PEM X.509 CRL: {exc}") from exc
    return Crl(source=source, crl=crl, revoked_serials=serials)


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """Certificates from PEM text (one or more) or one DER certificate. Raises ``DecodeError``."""
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except CERT_ERRORS as exc:
        raise DecodeError(f"not a PEM or DER X.509 certificate: {exc}") from exc


def ecdsa_verify(key: object, signature_raw: bytes, data: bytes) -> bool:
    """Verify a raw r‖s ECDSA P-256/SHA-256 signature (the encoding DCAP uses throughout)."""
    if not isinstance(key, ec.EllipticCurvePublicKey) or len(signature_raw) != 64:
        return False
    der = encode_dss_signature(
        int.from_bytes(signature_raw[:32], "big"), int.from_bytes(signature_raw[32:], "big")
    )
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Issuer name matches and ``issuer``'s key verifies ``cert``'s signature."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def crl_signed_by(crl: Crl, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if crl.crl.issuer != issuer.subject or not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    return crl.crl.is_signature_valid(key)


def build_tdx_trust(
    *,
    root: x509.Certificate,
    root_source: str,
    root_crl: Crl,
    pck_crls: Sequence[Crl],
    tcb_infos: Iterable[TcbInfo],
    qe_identity: QeIdentity,
    signers: Sequence[tuple[str, x509.Certificate]],
) -> TdxTrust:
    """Assemble a ``TdxTrust`` and pre-verify the quote-independent signatures.

    Raises ``ValueError`` for an inconsistent bundle (two TCB Infos for one FMSPC, two PCK CRLs
    from one issuer, no signing certificate, a root that is not a P-256 CA); a collateral
    signature that does not verify is *not* an error here: the appraisal reports it by name.
    """
    root_key = root.public_key()
    if not isinstance(root_key, ec.EllipticCurvePublicKey) or not isinstance(
        root_key.curve, ec.SECP256R1
    ):
        raise ValueError("the Intel SGX Root CA anchor must hold a P-256 key")
    if not signers:
        raise ValueError("no Intel SGX TCB Signing certificate")
    if len(signers) > MAX_SIGNING_CERTS:
        raise ValueError(f"more than {MAX_SIGNING_CERTS} TCB Signing certificates")
    signing = tuple(SigningCert(s, c, issued_by(c, root)) for s, c in signers)

    def verified_by(doc: SignedDoc) -> tuple[int, ...]:
        return tuple(
            i
            for i, s in enumerate(signing)
            if ecdsa_verify(s.cert.public_key(), doc.signature, doc.signed)
        )

    by_fmspc: dict[bytes, TcbInfo] = {}
    for info in tcb_infos:
        if info.fmspc in by_fmspc:
            raise ValueError(
                f"two TCB Infos for FMSPC {info.fmspc.hex()}: "
                f"{by_fmspc[info.fmspc].doc.source} and {info.doc.source}"
            )
        by_fmspc[info.fmspc] = replace(
            info, doc=replace(info.doc, verified_by=verified_by(info.doc))
        )
    if not by_fmspc:
        raise ValueError("no TCB Info")
    if len(by_fmspc) > MAX_TCB_INFOS:
        raise ValueError(f"more than {MAX_TCB_INFOS} TCB Infos")
    issuers: dict[x509.Name, str] = {}
    for crl in pck_crls:
        if crl.crl.issuer in issuers:
            raise ValueError(
                f"two PCK CRLs from {crl.crl.issuer.rfc4514_string()}: "
                f"{issuers[crl.crl.issuer]} and {crl.source}"
            )
        issuers[crl.crl.issuer] = crl.source
    if not pck_crls:
        raise ValueError("no PCK CRL")
    return TdxTrust(
        root=root,
        root_der=root.public_bytes(Encoding.DER),
        root_source=root_source,
        root_crl=root_crl,
        root_crl_signed_by_root=crl_signed_by(root_crl, root),
        pck_crls=tuple(pck_crls),
        tcb_infos=MappingProxyType(by_fmspc),
        qe_identity=replace(
            qe_identity, doc=replace(qe_identity.doc, verified_by=verified_by(qe_identity.doc))
        ),
        signers=signing,
    )
