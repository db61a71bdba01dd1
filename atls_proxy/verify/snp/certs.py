"""AMD SEV-SNP certificates (ARK, ASK/ASVK, VCEK/VLEK): parsed with our own DER walker.

Sans-IO. ``parse_amd_certificate`` reads an X.509 v3 certificate (RFC 5280 §4.1) without
``cryptography.x509``, because AMD's VCEK/VLEK certificates have serial number 0 and
``cryptography`` has announced that it will stop loading those (see ``der.py``). The walker
keeps the exact TBS bytes, the signature algorithm and signature, the raw issuer/subject names
(compared byte for byte, as RFC 5280 §7.1 allows for identical encodings), the validity, the
SubjectPublicKeyInfo (handed to ``cryptography`` for the key) and the extensions.

Facts used (AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface
Specification", pub. 57230, §3 "VCEK Certificate" Table 6 "VCEK/VLEK Certificate Extensions",
and the KDS ``cert_chain`` endpoints):

* every certificate in the chain is signed with RSASSA-PSS (RFC 4055 §3.1) with SHA-384,
  MGF1-SHA-384 and a 48-byte salt; ARK and ASK/ASVK keys are RSA-4096, VCEK/VLEK keys ECDSA P-384;
* subject CNs: ``ARK-<Product>``, ``SEV-<Product>`` (ASK), ``SEV-VLEK-<Product>`` (ASVK),
  ``SEV-VCEK`` and ``SEV-VLEK``;
* extensions under 1.3.6.1.4.1.3704.1: ``.1`` structVersion, ``.2`` productName (IA5String,
  "Milan-B0"), ``.3.1`` blSPL, ``.3.2`` teeSPL, ``.3.3`` snpSPL, ``.3.4``-``.3.7`` spl_4..spl_7,
  ``.3.8`` ucodeSPL, ``.3.9`` fmcSPL (Turin and later), each a DER INTEGER; ``.4`` hwID (raw
  bytes: 64 before Turin, 8 on Turin; VCEK only); ``.5`` cspID (VLEK only).
"""

from __future__ import annotations

import binascii
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_der_public_key

from atls_proxy import der
from atls_proxy.errors import DecodeError

# An RSA-4096 ARK is ~1.6 KB of DER and a VCEK ~1.3 KB; 16 KiB is an order of magnitude above
# any AMD certificate and bounds the parsing of a wrong file.
MAX_CERT_SIZE = 16 * 1024
# A KDS cert_chain file holds 2 certificates, Azure's bundle 3; 16 leaves room and bounds work.
MAX_CERTS_PER_BLOB = 16
# AMD certificates carry 5 (ASK/ARK) to 12 (VCEK) extensions.
MAX_EXTENSIONS = 64
# Names in AMD certificates have 6 attributes.
MAX_NAME_ATTRIBUTES = 32

OID_RSASSA_PSS = "1.2.840.113549.1.1.10"  # RFC 4055 §3.1
OID_MGF1 = "1.2.840.113549.1.1.8"  # RFC 4055 §2.2
OID_SHA384 = "2.16.840.1.101.3.4.2.2"  # RFC 5754 §2.3
OID_COMMON_NAME = "2.5.4.3"
OID_BASIC_CONSTRAINTS = "2.5.29.19"
OID_KEY_USAGE = "2.5.29.15"
OID_CRL_DISTRIBUTION_POINTS = "2.5.29.31"  # RFC 5280 §4.2.1.13

# AMD pub. 57230 Table 6 (OID arc 1.3.6.1.4.1.3704 is AMD's enterprise number).
AMD_OID_STRUCT_VERSION = "1.3.6.1.4.1.3704.1.1"
AMD_OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
AMD_OID_BL_SPL = "1.3.6.1.4.1.3704.1.3.1"
AMD_OID_TEE_SPL = "1.3.6.1.4.1.3704.1.3.2"
AMD_OID_SNP_SPL = "1.3.6.1.4.1.3704.1.3.3"
AMD_OID_UCODE_SPL = "1.3.6.1.4.1.3704.1.3.8"
AMD_OID_FMC_SPL = "1.3.6.1.4.1.3704.1.3.9"
AMD_OID_HWID = "1.3.6.1.4.1.3704.1.4"
AMD_OID_CSP_ID = "1.3.6.1.4.1.3704.1.5"

# RFC 4055 §3.1: the salt length defaults to 20 when absent; AMD always states 48.
PSS_DEFAULT_SALT = 20
# A salt longer than the hash is never used by AMD; capping it bounds what a forged AlgId asks.
PSS_MAX_SALT = 64
# The security patch levels are one byte each in TCB_VERSION (SEV-SNP ABI spec, TCB_VERSION).
MAX_SPL = 0xFF

# RFC 5280 §4.2.1.13 / Appendix A.2 (implicit tags): DistributionPoint.distributionPoint [0]
# (constructed: DistributionPointName is a CHOICE), its fullName [0] IMPLICIT GeneralNames
# (constructed), and GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String (primitive).
TAG_DP_NAME = der.TAG_CONTEXT | 0
TAG_DP_FULL_NAME = der.TAG_CONTEXT | 0
TAG_GN_URI = 0x80 | 6
# AMD's ASKs and ASVKs carry one distribution point with one URI; the cap bounds the walk.
MAX_DISTRIBUTION_NAMES = 16

PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
PEM_END = b"-----END CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class Extension:
    critical: bool
    value: bytes  # the extnValue OCTET STRING's content


@dataclass(frozen=True, slots=True)
class AmdCert:
    """One parsed certificate; ``issuer``/``subject`` are the raw DER Names."""

    der: bytes
    tbs: bytes
    signature_algorithm: bytes  # raw outer AlgorithmIdentifier
    signature: bytes
    version: int
    serial: int
    issuer: bytes
    subject: bytes
    issuer_cn: str
    subject_cn: str
    not_before: datetime
    not_after: datetime
    spki: bytes
    extensions: Mapping[str, Extension]

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER, hex (what the anchors' headers list)."""
        return hashlib.sha256(self.der).hexdigest()

    @property
    def self_issued(self) -> bool:
        return self.issuer == self.subject

    def public_key(self) -> PublicKeyTypes:
        """The subject key; raises ``DecodeError`` for an unusable SubjectPublicKeyInfo."""
        try:
            return load_der_public_key(self.spki)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise DecodeError(f"{self.subject_cn}: unusable public key: {exc}") from exc

    def is_ca(self) -> bool:
        """basicConstraints cA = TRUE (RFC 5280 §4.2.1.9)."""
        ext = self.extensions.get(OID_BASIC_CONSTRAINTS)
        if ext is None:
            return False
        try:
            reader = der.sequence(
                der.parse_single(ext.value, der.TAG_SEQUENCE, "basicConstraints"),
                "basicConstraints",
            )
            flag = reader.read_optional(der.TAG_BOOLEAN)
            return flag is not None and der.boolean(flag, "basicConstraints.cA")
        except DecodeError:
            return False

    def describe(self) -> str:
        return f"{self.subject_cn} (sha256 {self.fingerprint[:16]}…)"

    def crl_distribution_uris(self) -> frozenset[str]:
        """The URIs of the cRLDistributionPoints extension (RFC 5280 §4.2.1.13): the full-name
        URIs of every distribution point (names relative to the issuer and other GeneralName
        forms are skipped). AMD's ASK points at ``https://kdsintf.amd.com/vcek/v1/<Product>/crl``
        and its ASVK at ``…/vlek/v1/<Product>/crl`` (pub. 57230, KDS ``crl``). Empty without
        the extension. Raises ``DecodeError`` for a malformed one."""
        ext = self.extensions.get(OID_CRL_DISTRIBUTION_POINTS)
        if ext is None:
            return frozenset()
        what = "cRLDistributionPoints"
        points = der.sequence(der.parse_single(ext.value, der.TAG_SEQUENCE, what), what)
        uris: set[str] = set()
        count = 0
        while not points.at_end():
            point = der.sequence(points.read(der.TAG_SEQUENCE), what)
            name = point.read_optional(TAG_DP_NAME)
            if name is None:
                continue  # only reasons/cRLIssuer: no name to match (RFC 5280 §4.2.1.13)
            choice = der.Reader(name.content, what).read()
            if choice.tag != TAG_DP_FULL_NAME:
                continue  # nameRelativeToCRLIssuer [1]
            names = der.sequence(choice, what)
            while not names.at_end():
                count += 1
                if count > MAX_DISTRIBUTION_NAMES:
                    raise DecodeError(f"{what}: more than {MAX_DISTRIBUTION_NAMES} names")
                general = names.read()
                if general.tag == TAG_GN_URI:  # an IA5String (RFC 5280 §4.2.1.6)
                    if any(b > 0x7F for b in general.content):
                        raise DecodeError(f"{what}: non-ASCII byte in a URI")
                    uris.add(general.content.decode("ascii"))
        return frozenset(uris)


@dataclass(frozen=True, slots=True)
class VekExtensions:
    """The AMD extensions of a VCEK or VLEK certificate (pub. 57230 Table 6)."""

    product_name: str
    bl_spl: int
    tee_spl: int
    snp_spl: int
    ucode_spl: int
    fmc_spl: int | None  # Turin and later
    hwid: bytes | None  # VCEK only
    csp_id: str | None  # VLEK only


def _name(element: der.Element, what: str) -> str:
    """The first commonName of an RFC 5280 Name ("" if none)."""
    rdns = der.sequence(element, what)
    cn = ""
    count = 0
    while not rdns.at_end():
        rdn = der.sequence(rdns.read(der.TAG_SET), what)
        while not rdn.at_end():
            count += 1
            if count > MAX_NAME_ATTRIBUTES:
                raise DecodeError(f"{what}: more than {MAX_NAME_ATTRIBUTES} attributes")
            atv = der.sequence(rdn.read(der.TAG_SEQUENCE), what)
            kind = der.oid(atv.read(der.TAG_OID), what)
            value = atv.read()
            atv.expect_end()
            if kind == OID_COMMON_NAME and not cn:
                cn = der.string(value, f"{what} CN")
    return cn


def _extensions(element: der.Element) -> Mapping[str, Extension]:
    outer = der.sequence(element, "extensions")
    seq = der.sequence(outer.read(der.TAG_SEQUENCE), "extensions")
    outer.expect_end()
    out: dict[str, Extension] = {}
    while not seq.at_end():
        if len(out) >= MAX_EXTENSIONS:
            raise DecodeError(f"more than {MAX_EXTENSIONS} extensions")
        ext = der.sequence(seq.read(der.TAG_SEQUENCE), "extension")
        ext_oid = der.oid(ext.read(der.TAG_OID), "extension")
        flag = ext.read_optional(der.TAG_BOOLEAN)
        critical = der.boolean(flag, "extension.critical") if flag is not None else False
        value = ext.read(der.TAG_OCTET_STRING).content
        ext.expect_end()
        if ext_oid in out:  # RFC 5280 §4.2: at most one instance of an extension
            raise DecodeError(f"extension {ext_oid} appears twice")
        out[ext_oid] = Extension(critical, value)
    return MappingProxyType(out)


def parse_amd_certificate(data: bytes) -> AmdCert:
    """One DER certificate (RFC 5280 §4.1). Raises ``DecodeError``."""
    if len(data) > MAX_CERT_SIZE:
        raise DecodeError(f"certificate larger than {MAX_CERT_SIZE} bytes")
    cert = der.parse_single(data, der.TAG_SEQUENCE, "certificate")
    top = der.sequence(cert, "certificate")
    tbs_el = top.read(der.TAG_SEQUENCE)
    alg_el = top.read(der.TAG_SEQUENCE)
    signature = der.bit_string(top.read(der.TAG_BIT_STRING), "signatureValue")
    top.expect_end()

    tbs = der.sequence(tbs_el, "tbsCertificate")
    version = 0
    version_el = tbs.read_optional(der.TAG_CONTEXT | 0)
    if version_el is not None:
        version = der.integer(
            der.parse_single(version_el.content, der.TAG_INTEGER, "version"), "version"
        )
    if version != 2:  # v3 (RFC 5280 §4.1.2.1): AMD certificates carry extensions
        raise DecodeError(f"certificate version {version + 1} is not v3")
    serial = der.integer(tbs.read(der.TAG_INTEGER), "serialNumber")
    inner_alg = tbs.read(der.TAG_SEQUENCE)
    issuer = tbs.read(der.TAG_SEQUENCE)
    validity = der.sequence(tbs.read(der.TAG_SEQUENCE), "validity")
    not_before = der.time(validity.read(), "notBefore")
    not_after = der.time(validity.read(), "notAfter")
    validity.expect_end()
    subject = tbs.read(der.TAG_SEQUENCE)
    spki = tbs.read(der.TAG_SEQUENCE)
    tbs.read_optional(0x81)  # issuerUniqueID [1] IMPLICIT
    tbs.read_optional(0x82)  # subjectUniqueID [2] IMPLICIT
    ext_el = tbs.read_optional(der.TAG_CONTEXT | 3)
    tbs.expect_end()
    if inner_alg.raw != alg_el.raw:  # RFC 5280 §4.1.1.2
        raise DecodeError("tbsCertificate.signature differs from signatureAlgorithm")
    return AmdCert(
        der=cert.raw,
        tbs=tbs_el.raw,
        signature_algorithm=alg_el.raw,
        signature=signature,
        version=version,
        serial=serial,
        issuer=issuer.raw,
        subject=subject.raw,
        issuer_cn=_name(issuer, "issuer"),
        subject_cn=_name(subject, "subject"),
        not_before=not_before,
        not_after=not_after,
        spki=spki.raw,
        extensions=_extensions(ext_el) if ext_el is not None else MappingProxyType({}),
    )


def split_certificates(data: bytes) -> list[bytes]:
    """DER certificates from a blob: one DER certificate, or PEM with one or more
    ``CERTIFICATE`` blocks (text around them is ignored). Raises ``DecodeError``."""
    if data[:1] == bytes([der.TAG_SEQUENCE]):
        return [data]
    # A linear scan for the markers (RFC 7468 §2); no regular expression, so hostile input
    # cannot make the search backtrack.
    blocks: list[bytes] = []
    start = data.find(PEM_BEGIN)
    while start >= 0:
        body_start = start + len(PEM_BEGIN)
        end = data.find(PEM_END, body_start)
        if end < 0:
            raise DecodeError("PEM CERTIFICATE block without its END line")
        if len(blocks) >= MAX_CERTS_PER_BLOB:
            raise DecodeError(f"more than {MAX_CERTS_PER_BLOB} certificates")
        blocks.append(data[body_start:end])
        start = data.find(PEM_BEGIN, end + len(PEM_END))
    if not blocks:
        raise DecodeError("neither a DER certificate nor PEM with a CERTIFICATE block")
    out = []
    for block in blocks:
        try:
            out.append(binascii.a2b_base64(b"".join(block.split()), strict_mode=True))
        except binascii.Error as exc:
            raise DecodeError(f"bad base64 in a PEM block: {exc}") from exc
    return out


def parse_amd_certificates(data: bytes) -> list[AmdCert]:
    """Every certificate in a DER or PEM blob. Raises ``DecodeError``."""
    return [parse_amd_certificate(block) for block in split_certificates(data)]


def _pss_salt_length(alg: bytes) -> int:
    """Validate an RSASSA-PSS AlgorithmIdentifier with SHA-384/MGF1-SHA-384 (RFC 4055 §3.1);
    return its salt length."""
    top = der.sequence(der.parse_single(alg, der.TAG_SEQUENCE, "signatureAlgorithm"), "alg")
    if der.oid(top.read(der.TAG_OID), "alg") != OID_RSASSA_PSS:
        raise DecodeError("not signed with RSASSA-PSS")
    params = der.sequence(top.read(der.TAG_SEQUENCE), "RSASSA-PSS-params")
    top.expect_end()

    def hash_oid(element: der.Element, what: str) -> str:
        inner = der.sequence(element, what)
        found = der.oid(inner.read(der.TAG_OID), what)
        inner.read_optional(der.TAG_NULL)
        inner.expect_end()
        return found

    hash_el = params.read_optional(der.TAG_CONTEXT | 0)
    if (
        hash_el is None
        or hash_oid(
            der.parse_single(hash_el.content, der.TAG_SEQUENCE, "hashAlgorithm"), "hashAlgorithm"
        )
        != OID_SHA384
    ):
        raise DecodeError("RSASSA-PSS hash is not SHA-384")
    mgf_el = params.read_optional(der.TAG_CONTEXT | 1)
    if mgf_el is None:
        raise DecodeError("RSASSA-PSS mask generation is not MGF1-SHA-384")
    mgf = der.sequence(
        der.parse_single(mgf_el.content, der.TAG_SEQUENCE, "maskGenAlgorithm"), "mgf"
    )
    if (
        der.oid(mgf.read(der.TAG_OID), "mgf") != OID_MGF1
        or hash_oid(mgf.read(der.TAG_SEQUENCE), "mgf hash") != OID_SHA384
    ):
        raise DecodeError("RSASSA-PSS mask generation is not MGF1-SHA-384")
    mgf.expect_end()
    salt = PSS_DEFAULT_SALT
    salt_el = params.read_optional(der.TAG_CONTEXT | 2)
    if salt_el is not None:
        salt = der.integer(der.parse_single(salt_el.content, der.TAG_INTEGER, "salt"), "salt")
    trailer_el = params.read_optional(der.TAG_CONTEXT | 3)
    if trailer_el is not None and (
        der.integer(der.parse_single(trailer_el.content, der.TAG_INTEGER, "trailer"), "trailer")
        != 1
    ):
        raise DecodeError("RSASSA-PSS trailerField is not 1")
    params.expect_end()
    if not 0 <= salt <= PSS_MAX_SALT:
        raise DecodeError(f"RSASSA-PSS salt length {salt} out of range")
    return salt


# Signatures that verified, by (certificate DER, issuer DER): a pure function of those bytes, and
# every appraisal of one platform presents the same ARK, ASK and VCEK, so each RSA-4096
# verification is done once, not per appraisal. Bounded; failures are not kept (evidence that
# differs each time is verified each time, never held).
_VERIFIED: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()
VERIFIED_KEPT = 64
_VERIFIED_LOCK = threading.Lock()  # the Python API may appraise from several threads at once


def signature_problem(cert: AmdCert, issuer: AmdCert) -> str:
    """Why ``issuer``'s key does not verify ``cert``'s RSASSA-PSS signature ("" if it does)."""
    key = (cert.der, issuer.der)
    with _VERIFIED_LOCK:
        if key in _VERIFIED:
            _VERIFIED.move_to_end(key)
            return ""
    problem = _signature_problem(cert, issuer)
    if not problem:
        with _VERIFIED_LOCK:
            _VERIFIED[key] = None
            if len(_VERIFIED) > VERIFIED_KEPT:
                _VERIFIED.popitem(last=False)
    return problem


def _signature_problem(cert: AmdCert, issuer: AmdCert) -> str:
    try:
        salt = _pss_salt_length(cert.signature_algorithm)
        key = issuer.public_key()
    except DecodeError as exc:
        return str(exc)
    if not isinstance(key, rsa.RSAPublicKey):
        return f"{issuer.subject_cn} has no RSA key"
    try:
        key.verify(
            cert.signature,
            cert.tbs,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=salt),
            hashes.SHA384(),
        )
    except InvalidSignature:
        return f"signature does not verify with the key of {issuer.subject_cn}"
    return ""


def _ext_int(cert: AmdCert, ext_oid: str, what: str) -> int | None:
    ext = cert.extensions.get(ext_oid)
    if ext is None:
        return None
    value = der.integer(der.parse_single(ext.value, der.TAG_INTEGER, what), what)
    if not 0 <= value <= MAX_SPL:
        raise DecodeError(f"{what} = {value} is not a one-byte security patch level")
    return value


def vek_extensions(cert: AmdCert) -> VekExtensions:
    """The AMD extensions of a VCEK/VLEK. Raises ``DecodeError`` when one is missing or bad."""
    product = cert.extensions.get(AMD_OID_PRODUCT_NAME)
    if product is None:
        raise DecodeError("no productName extension (1.3.6.1.4.1.3704.1.2)")
    name = der.string(der.parse_single(product.value, der.TAG_IA5_STRING, "productName"), "pn")
    spls: dict[str, int] = {}
    for key, ext_oid in (
        ("blSPL", AMD_OID_BL_SPL),
        ("teeSPL", AMD_OID_TEE_SPL),
        ("snpSPL", AMD_OID_SNP_SPL),
        ("ucodeSPL", AMD_OID_UCODE_SPL),
    ):
        value = _ext_int(cert, ext_oid, key)
        if value is None:
            raise DecodeError(f"no {key} extension ({ext_oid})")
        spls[key] = value
    hwid_ext = cert.extensions.get(AMD_OID_HWID)
    csp_ext = cert.extensions.get(AMD_OID_CSP_ID)
    csp = None
    if csp_ext is not None:
        csp = der.string(der.parse_single(csp_ext.value, der.TAG_IA5_STRING, "cspID"), "cspID")
    return VekExtensions(
        product_name=name,
        bl_spl=spls["blSPL"],
        tee_spl=spls["teeSPL"],
        snp_spl=spls["snpSPL"],
        ucode_spl=spls["ucodeSPL"],
        fmc_spl=_ext_int(cert, AMD_OID_FMC_SPL, "fmcSPL"),
        hwid=hwid_ext.value if hwid_ext is not None else None,
        csp_id=csp,
    )


def ecdsa_p384_key(cert: AmdCert) -> ec.EllipticCurvePublicKey:
    """The VEK's P-384 key. Raises ``DecodeError`` for any other key."""
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise DecodeError(f"{cert.subject_cn} key is not ECDSA P-384")
    return key
