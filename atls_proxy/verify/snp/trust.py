"""The SEV-SNP trust bundle: trusted ARKs per product line, intermediates, VEKs, AMD CRLs.

Sans-IO: ``build_snp_trust`` takes (source name, bytes) pairs that ``atls_proxy.ops.snp_files``
read from disk (or a test made) and classifies every certificate by its subject CN (AMD pub.
57230 §2, KDS ``cert_chain``): ``ARK-<Product>`` root, ``SEV-<Product>`` ASK, ``SEV-VLEK-<Product>``
ASVK, ``SEV-VCEK`` / ``SEV-VLEK`` endorsement keys.

The ARKs named by ``anchors`` (the shipped ``atls_proxy/verify/anchors/amd_*.pem`` unless a
caller passes others) are the only roots: an ARK found among the other certificates is kept
only to be compared byte for byte with the anchor at appraisal time (``snp.chain.ark``).
Signatures are checked at appraisal time, not here, so that a bad intermediate or VEK is a named,
failed check and not a load error.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from cryptography import x509

from atls_proxy.errors import DecodeError
from atls_proxy.verify.snp.certs import (
    AmdCert,
    VekExtensions,
    parse_amd_certificate,
    parse_amd_certificates,
    split_certificates,
    vek_extensions,
)
from atls_proxy.verify.snp.policy import PRODUCTS

log = logging.getLogger("atls_proxy.verify.snp")

ROLE_ARK = "ARK"
ROLE_ASK = "ASK"
ROLE_ASVK = "ASVK"
ROLE_VCEK = "VCEK"
ROLE_VLEK = "VLEK"

# A trust folder holds a handful of VEKs (a cache of one per chip and TCB) and one or two
# chains per product; 256 certificates bounds the per-appraisal candidate scan.
MAX_TRUST_CERTS = 256
# AMD publishes one CRL per product line and key type (KDS /vcek/v1/<P>/crl and
# /vlek/v1/<P>/crl, both issued by ARK-<P>).
MAX_CRLS = 16
# An AMD CRL lists revoked ASKs: a few hundred bytes today; 1 MiB bounds a wrong file.
MAX_CRL_SIZE = 1024 * 1024

# CPUID Fn0000_0001_EAX family/model → product line (AMD processor programming reference; the
# report carries the decoded family and model from version 3). Family 19h models 00h-0Fh are
# Milan, 10h-1Fh and A0h-AFh Genoa (with Bergamo and Siena, which share Genoa's ARK); family
# 1Ah models 00h-1Fh Turin.
_CPUID_PRODUCTS = (
    (0x19, range(0x00, 0x10), "Milan"),
    (0x19, range(0x10, 0x20), "Genoa"),
    (0x19, range(0xA0, 0xB0), "Genoa"),
    (0x1A, range(0x00, 0x20), "Turin"),
)


def product_for_cpuid(family: int, model: int) -> str | None:
    for fam, models, product in _CPUID_PRODUCTS:
        if family == fam and model in models:
            return product
    return None


def classify(cert: AmdCert) -> tuple[str, str | None]:
    """(role, product) from the subject CN. Raises ``DecodeError`` for a CN AMD does not use."""
    cn = cert.subject_cn
    if cn == "SEV-VCEK":
        return ROLE_VCEK, None
    if cn == "SEV-VLEK":
        return ROLE_VLEK, None
    for prefix, role in (("ARK-", ROLE_ARK), ("SEV-VLEK-", ROLE_ASVK), ("SEV-", ROLE_ASK)):
        if cn.startswith(prefix):
            product = cn[len(prefix) :]
            if product not in PRODUCTS:
                raise DecodeError(
                    f"{cn}: unknown product line {product!r} (one of: {', '.join(PRODUCTS)})"
                )
            return role, product
    raise DecodeError(f"subject CN {cn!r} is not an AMD ARK, ASK, ASVK, VCEK or VLEK")


def product_of_issuer(cert: AmdCert) -> str | None:
    """The product line a VEK's issuer CN names (``SEV-Milan`` and ``SEV-VLEK-Milan`` → Milan)."""
    for prefix in ("SEV-VLEK-", "SEV-"):
        if cert.issuer_cn.startswith(prefix):
            product = cert.issuer_cn[len(prefix) :]
            return product if product in PRODUCTS else None
    return None


@dataclass(frozen=True, slots=True)
class SourcedCert:
    """A certificate, its role and product line, and where it came from (for reports).

    ``crl_uris`` is an ASK's or ASVK's cRLDistributionPoints (``AmdCert.crl_distribution_uris``),
    what the verifier matches CRL issuingDistributionPoints against (its ``_crl_scope``). It is
    read here, once, when the certificate is classified: for the trust folder's intermediates
    that is when the folder is loaded, not on every appraisal. It is empty for the other roles,
    without the extension, and for a malformed one (no URI to match: a CRL scoped by its IDP then
    has an unknown scope for the chain).
    """

    cert: AmdCert
    role: str
    product: str | None
    source: str
    crl_uris: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        uris: frozenset[str] = frozenset()
        if self.role in (ROLE_ASK, ROLE_ASVK):
            with contextlib.suppress(DecodeError):
                uris = self.cert.crl_distribution_uris()
        object.__setattr__(self, "crl_uris", uris)

    @property
    def label(self) -> str:
        return f"{self.role} {self.cert.subject_cn} from {self.source}"


@dataclass(frozen=True, slots=True)
class Vek:
    """A VCEK or VLEK with its AMD extensions."""

    cert: AmdCert
    kind: str  # ROLE_VCEK or ROLE_VLEK
    ext: VekExtensions
    source: str


@dataclass(frozen=True, slots=True)
class AmdCrl:
    """An AMD KDS CRL (``/vcek/v1/<product>/crl`` or ``/vlek/v1/<product>/crl``), issued and
    signed by the ARK.

    Which of AMD's two lists it is (its scope) comes from its issuingDistributionPoint
    extension (RFC 5280 §5.2.5) when it has one, else from its file name (``declared_kind``);
    the verifier's ``_crl_scope`` explains how the two are used.
    """

    crl: x509.CertificateRevocationList
    source: str
    issuer: bytes  # raw DER Name
    revoked_serials: frozenset[int]
    this_update: datetime
    next_update: datetime  # required: a CRL without nextUpdate is refused at load
    # issuingDistributionPoint: the full-name URIs of its distributionPoint (None when the CRL
    # has no IDP or its IDP names no URI), whether it excludes CA certificates
    # (onlyContainsUserCerts / onlyContainsAttributeCerts: an ASK is a CA), and whether it
    # covers only some revocation reasons (onlySomeReasons: not a complete list).
    idp_uris: frozenset[str] | None = None
    idp_excludes_ca: bool = False
    idp_some_reasons: bool = False
    # ROLE_VCEK or ROLE_VLEK when the file name says "vcek" or "vlek" (the KDS path it came
    # from); None otherwise.
    declared_kind: str | None = None
    # DER of the ARKs whose key verified this CRL's signature: the CRL is loaded once and
    # consulted by every appraisal, which checks its signature once per ARK, not each time.
    verified_by: set[bytes] = field(default_factory=set, compare=False, repr=False)


def crl_kind_from_name(source: str) -> str | None:
    """ROLE_VCEK / ROLE_VLEK when the last path component of ``source`` contains ``vcek`` /
    ``vlek`` (case-insensitive): the KDS path segment the CRL was fetched from (pub. 57230,
    KDS ``/vcek/v1/<P>/crl`` and ``/vlek/v1/<P>/crl``). Raises ``DecodeError`` for a name with
    both."""
    base = source.replace("\\", "/").rsplit("/", 1)[-1].lower()
    vcek, vlek = "vcek" in base, "vlek" in base
    if vcek and vlek:
        raise DecodeError("the file name says both vcek and vlek: name it after one KDS list")
    return ROLE_VCEK if vcek else ROLE_VLEK if vlek else None


@dataclass(frozen=True, slots=True)
class SnpTrust:
    """Trust inputs of the SNP verifier (module docstring)."""

    anchors: Mapping[str, SourcedCert]  # product -> the trusted ARK
    arks: tuple[SourcedCert, ...]  # other ARK copies seen (compared with the anchor)
    intermediates: tuple[SourcedCert, ...]  # ASKs and ASVKs
    veks: tuple[Vek, ...]
    crls: tuple[AmdCrl, ...] = ()


def make_vek(cert: AmdCert, source: str) -> Vek:
    """A VCEK/VLEK with its extensions. Raises ``DecodeError``."""
    role, _ = classify(cert)
    if role not in (ROLE_VCEK, ROLE_VLEK):
        raise DecodeError(f"{cert.subject_cn} is not a VCEK or VLEK")
    try:
        ext = vek_extensions(cert)
    except DecodeError as exc:
        raise DecodeError(f"{role} AMD extensions: {exc}") from exc
    return Vek(cert=cert, kind=role, ext=ext, source=source)


def parse_amd_crl(data: bytes, source: str) -> AmdCrl:
    """One CRL, DER or PEM; ``source`` is its file name (see ``crl_kind_from_name``). Raises
    ``DecodeError``, also for a CRL without nextUpdate: RFC 5280 §5.1.2.5 requires the field,
    and without it "current" (thisUpdate ≤ now ≤ nextUpdate) has no end."""
    if len(data) > MAX_CRL_SIZE:
        raise DecodeError(f"CRL larger than {MAX_CRL_SIZE} bytes")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        serials = frozenset(r.serial_number for r in crl)
        issuer = crl.issuer.public_bytes()
        this_update, next_update = crl.last_update_utc, crl.next_update_utc
        try:
            idp: x509.IssuingDistributionPoint | None = crl.extensions.get_extension_for_class(
                x509.IssuingDistributionPoint
            ).value
        except x509.ExtensionNotFound:
            idp = None
    # cryptography 50: DuplicateExtension and UnsupportedGeneralNameType are not ValueErrors.
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise DecodeError(f"not an X.509 CRL: {exc}") from exc
    if next_update is None:
        raise DecodeError("CRL has no nextUpdate: it could never be judged stale")
    uris: frozenset[str] | None = None
    if idp is not None and idp.full_name is not None:
        found = frozenset(
            n.value for n in idp.full_name if isinstance(n, x509.UniformResourceIdentifier)
        )
        uris = found or None
    kind = crl_kind_from_name(source)
    if uris is None and kind is None:
        # Still consulted for revocation, but require_crl cannot count it for either chain: an
        # operator upgrading from a single "<product>.crl" must learn it at load, not from every
        # appraisal failing snp.chain.revocation.
        log.warning(
            "SNP CRL %s: neither its contents nor its name say which KDS list it is; name it "
            "after its list (…vcek….crl for /vcek/v1/<product>/crl, …vlek….crl for /vlek/…) or "
            "a policy with require_crl = true refuses every report (docs/VERIFIERS-SNP.md)",
            source,
        )
    return AmdCrl(
        crl,
        source,
        issuer,
        serials,
        this_update,
        next_update,
        idp_uris=uris,
        idp_excludes_ca=idp is not None
        and (idp.only_contains_user_certs or idp.only_contains_attribute_certs),
        idp_some_reasons=idp is not None and idp.only_some_reasons is not None,
        declared_kind=kind,
    )


def build_snp_trust(
    certificates: Iterable[tuple[str, bytes]],
    anchors: Iterable[tuple[str, bytes]],
    crls: Iterable[tuple[str, bytes]] = (),
) -> SnpTrust:
    """Classify certificate blobs (DER or PEM, several per blob) into a ``SnpTrust``.

    ``anchors`` blobs supply the trusted ARKs (and, usually, the matching ASK/ASVK). Raises
    ``ValueError`` (``DecodeError``) whose message starts with the offending source.
    """
    anchor_map: dict[str, SourcedCert] = {}
    arks: list[SourcedCert] = []
    intermediates: list[SourcedCert] = []
    veks: list[Vek] = []
    seen: set[bytes] = set()

    def each(source: str, blob: bytes) -> Iterable[AmdCert]:
        try:
            blocks = split_certificates(blob)
        except DecodeError as exc:
            raise DecodeError(f"{source}: {exc}") from exc
        for i, block in enumerate(blocks):
            where = source if len(blocks) == 1 else f"{source} (certificate {i + 1})"
            try:
                yield parse_amd_certificate(block)
            except DecodeError as exc:
                raise DecodeError(f"{where}: {exc}") from exc

    for source, blob in anchors:
        for cert in each(source, blob):
            try:
                role, product = classify(cert)
            except DecodeError as exc:
                raise DecodeError(f"{source}: {exc}") from exc
            if role in (ROLE_VCEK, ROLE_VLEK):
                raise DecodeError(f"{source}: an anchor file holds ARK/ASK certificates only")
            assert product is not None
            if role == ROLE_ARK:
                if not cert.self_issued:
                    raise DecodeError(f"{source}: {cert.subject_cn} is not self-issued")
                known = anchor_map.get(product)
                if known is not None and known.cert.der != cert.der:
                    raise DecodeError(
                        f"{source}: a second, different {cert.subject_cn} (also in {known.source})"
                    )
                if known is None:
                    anchor_map[product] = SourcedCert(cert, role, product, source)
            elif cert.der not in seen:
                seen.add(cert.der)
                intermediates.append(SourcedCert(cert, role, product, source))

    for source, blob in certificates:
        for cert in each(source, blob):
            if cert.der in seen:
                continue
            seen.add(cert.der)
            try:
                role, product = classify(cert)
                if role in (ROLE_VCEK, ROLE_VLEK):
                    veks.append(make_vek(cert, source))
                elif role == ROLE_ARK:
                    arks.append(SourcedCert(cert, role, product, source))
                else:
                    intermediates.append(SourcedCert(cert, role, product, source))
            except DecodeError as exc:
                raise DecodeError(f"{source}: {exc}") from exc
            if len(seen) > MAX_TRUST_CERTS:
                raise DecodeError(f"{source}: more than {MAX_TRUST_CERTS} certificates")

    parsed_crls: list[AmdCrl] = []
    for source, blob in crls:
        if len(parsed_crls) >= MAX_CRLS:
            raise DecodeError(f"{source}: more than {MAX_CRLS} CRLs")
        try:
            parsed_crls.append(parse_amd_crl(blob, source))
        except DecodeError as exc:
            raise DecodeError(f"{source}: {exc}") from exc

    if not anchor_map:
        raise DecodeError("anchors: no ARK (AMD Root Key) among the anchor certificates")
    return SnpTrust(
        anchors=MappingProxyType(anchor_map),
        arks=tuple(arks),
        intermediates=tuple(intermediates),
        veks=tuple(veks),
        crls=tuple(parsed_crls),
    )


def evidence_certificates(pairs: Iterable[tuple[str, bytes]]) -> list[AmdCert]:
    """Parse certificates carried in evidence (GHCB table). Raises ``DecodeError``."""
    out: list[AmdCert] = []
    for label, blob in pairs:
        try:
            out.extend(parse_amd_certificates(blob))
        except DecodeError as exc:
            raise DecodeError(f"{label} certificate in the evidence: {exc}") from exc
    return out
