"""Read Intel TDX trust material from folders (the I/O half of ``atls_proxy.verify.tdx``).

Folder layout (also in docs/VERIFIERS-TDX.md). File names are matched case-insensitively;
DER or PEM where a certificate or CRL is expected::

    <collateral_dir>/
        tcb_info*.json            one or more PCS TDX TCB Info v3 responses (one per FMSPC),
                                  verbatim: {"tcbInfo": {…}, "signature": "…"}
        qe_identity*.json         exactly one PCS TD_QE identity response, verbatim
        pck_crl*.der|.pem|.crl    one or more PCK CRLs (platform and/or processor CA; one per issuer)
        root_ca_crl*.der|.pem|.crl  exactly one Intel SGX Root CA CRL (here or in <certs_dir>)
        tcb_signing*.der|.pem|.crt  Intel SGX TCB Signing certificate(s)          (and/or:)
        *issuer_chain*.pem        a PCS issuer-chain header, URL-decoded (TCB Signing cert + root)

    <certs_dir>/                  optional
        intel_sgx_root_ca.pem|.der  replaces the shipped anchor (atls_proxy/verify/anchors/)
        tcb_signing*…, *issuer_chain*.pem, root_ca_crl*…   as above

At least one TCB Signing certificate must be found in the two folders; several (the 2018 and 2025
renewals) are fine: the appraisal uses one that signed the collateral and is valid at its time.
Any other file is ignored. Every problem raises ``ConfigError`` whose key is the offending path.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from atls_proxy.errors import ConfigError, DecodeError
from atls_proxy.ops.files import read_trust_file
from atls_proxy.verify.tdx.collateral import (
    MAX_COLLATERAL_JSON_SIZE,
    MAX_CRL_SIZE,
    Crl,
    TdxTrust,
    build_tdx_trust,
    parse_certificates,
    parse_crl,
    parse_qe_identity,
    parse_tcb_info,
)

# Certificate files hold one certificate or a short chain: 64 KiB is far above any real one and
# stops a wrong file (an image, a log) from being read and parsed.
MAX_CERT_FILE_SIZE = 64 * 1024
# Folders are scanned, not walked: this bounds the listing of a wrongly configured directory.
MAX_FOLDER_ENTRIES = 1024

ANCHOR_PACKAGE = "atls_proxy.verify"
ANCHOR_RESOURCE = ("anchors", "intel_sgx_root_ca.pem")
ROOT_OVERRIDE_NAMES = ("intel_sgx_root_ca.pem", "intel_sgx_root_ca.der")
_CERT_SUFFIXES = (".pem", ".der", ".crt", ".cer")
_CRL_SUFFIXES = (".der", ".pem", ".crl")

T = TypeVar("T")


_read = functools.partial(read_trust_file, what="not TDX collateral")


def _parse(path: Path, limit: int, parse: Callable[[bytes, str], T]) -> T:
    try:
        return parse(_read(path, limit), path.name)
    except DecodeError as exc:
        raise ConfigError(str(path), f"does not parse: {exc}") from exc


def _listing(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(str(folder), f"{what} folder does not exist or is not a directory")
    try:
        entries = []
        for entry in folder.iterdir():
            entries.append(entry)
            if len(entries) > MAX_FOLDER_ENTRIES:
                raise ConfigError(str(folder), f"more than {MAX_FOLDER_ENTRIES} entries")
    except OSError as exc:
        raise ConfigError(str(folder), f"cannot list: {exc.strerror or exc}") from exc
    return sorted(p for p in entries if p.is_file())


def _matching(files: list[Path], prefix: str, suffixes: tuple[str, ...]) -> list[Path]:
    return [p for p in files if p.name.lower().startswith(prefix) and p.suffix.lower() in suffixes]


def _shipped_anchor() -> tuple[bytes, str]:
    ref = resources.files(ANCHOR_PACKAGE)
    for part in ANCHOR_RESOURCE:
        ref = ref.joinpath(part)
    try:
        return ref.read_bytes(), "shipped anchor " + "/".join(ANCHOR_RESOURCE)
    except OSError as exc:  # a broken installation
        raise ConfigError("tdx.anchor", f"the shipped Intel SGX Root CA is missing: {exc}") from exc


def _single_cert(path: Path | str, data: bytes) -> x509.Certificate:
    try:
        certs = parse_certificates(data)
    except DecodeError as exc:
        raise ConfigError(str(path), f"does not parse: {exc}") from exc
    if len(certs) != 1:
        raise ConfigError(str(path), f"holds {len(certs)} certificates, expected exactly one")
    return certs[0]


def load_tdx_trust(
    collateral_dir: Path | None,
    certs_dir: Path | None = None,
    *,
    anchor_pem: bytes | None = None,
) -> TdxTrust:
    """Read and pre-verify the TDX trust bundle (module docstring for the layout).

    ``anchor_pem`` (tests, embedding) replaces both the shipped anchor and a ``certs_dir``
    override. Raises ``ConfigError`` naming the missing or unparsable item.
    """
    if collateral_dir is None:
        raise ConfigError(
            "trust.tdx.collateral",
            "a collateral folder is required (TCB Info, QE Identity, PCK CRL, root CA CRL)",
        )
    collateral = _listing(Path(collateral_dir), "collateral")
    certs = _listing(Path(certs_dir), "certificates") if certs_dir is not None else []
    both = collateral + certs

    # The anchor: explicit > certs_dir override > shipped.
    if anchor_pem is not None:
        root = _single_cert("anchor", anchor_pem)
        root_source = "configured anchor"
    else:
        overrides = [p for p in certs if p.name.lower() in ROOT_OVERRIDE_NAMES]
        if len(overrides) > 1:
            raise ConfigError(str(overrides[1]), f"two root overrides: also {overrides[0].name}")
        if overrides:
            root = _single_cert(overrides[0], _read(overrides[0], MAX_CERT_FILE_SIZE))
            root_source = str(overrides[0])
        else:
            data, root_source = _shipped_anchor()
            root = _single_cert(root_source, data)
    if root.subject != root.issuer:
        raise ConfigError(root_source, "the Intel SGX Root CA anchor must be self-signed")
    root_der = root.public_bytes(Encoding.DER)

    # TCB Signing certificates, from single files and from issuer chains.
    signers: list[tuple[str, x509.Certificate]] = []
    seen: set[bytes] = set()
    for path in _matching(both, "tcb_signing", _CERT_SUFFIXES):
        cert = _single_cert(path, _read(path, MAX_CERT_FILE_SIZE))
        der = cert.public_bytes(Encoding.DER)
        if der not in seen:
            seen.add(der)
            signers.append((path.name, cert))
    for path in [
        p for p in both if "issuer_chain" in p.name.lower() and p.suffix.lower() == ".pem"
    ]:
        try:
            chain = parse_certificates(_read(path, MAX_CERT_FILE_SIZE))
        except DecodeError as exc:
            raise ConfigError(str(path), f"does not parse: {exc}") from exc
        for cert in chain:
            der = cert.public_bytes(Encoding.DER)
            if cert.subject == cert.issuer:
                if der != root_der:
                    raise ConfigError(
                        str(path), f"its root differs from the trusted anchor ({root_source})"
                    )
                continue
            if der not in seen:
                seen.add(der)
                signers.append((path.name, cert))
    if not signers:
        raise ConfigError(
            str(collateral_dir),
            "no Intel SGX TCB Signing certificate: add tcb_signing*.pem/.der or a PCS "
            "*issuer_chain*.pem file",
        )

    tcb_paths = _matching(collateral, "tcb_info", (".json",))
    if not tcb_paths:
        raise ConfigError(str(collateral_dir), "no tcb_info*.json (PCS TDX TCB Info)")
    tcb_infos = [_parse(p, MAX_COLLATERAL_JSON_SIZE, parse_tcb_info) for p in tcb_paths]
    qe_paths = _matching(collateral, "qe_identity", (".json",))
    if len(qe_paths) != 1:
        raise ConfigError(
            str(collateral_dir),
            f"expected exactly one qe_identity*.json (PCS TD_QE identity), found {len(qe_paths)}",
        )
    qe_identity = _parse(qe_paths[0], MAX_COLLATERAL_JSON_SIZE, parse_qe_identity)
    pck_paths = _matching(collateral, "pck_crl", _CRL_SUFFIXES)
    if not pck_paths:
        raise ConfigError(str(collateral_dir), "no pck_crl*.der (PCS PCK CRL)")
    pck_crls: list[Crl] = [_parse(p, MAX_CRL_SIZE, parse_crl) for p in pck_paths]
    root_crl_paths = _matching(both, "root_ca_crl", _CRL_SUFFIXES)
    if len(root_crl_paths) != 1:
        raise ConfigError(
            str(collateral_dir),
            "expected exactly one root_ca_crl*.der (Intel SGX Root CA CRL), "
            f"found {len(root_crl_paths)}",
        )
    root_crl = _parse(root_crl_paths[0], MAX_CRL_SIZE, parse_crl)
    try:
        return build_tdx_trust(
            root=root,
            root_source=root_source,
            root_crl=root_crl,
            pck_crls=pck_crls,
            tcb_infos=tcb_infos,
            qe_identity=qe_identity,
            signers=signers,
        )
    except ValueError as exc:
        raise ConfigError(str(collateral_dir), str(exc)) from exc
