"""Read TPM trust material and evidence files (the I/O half of ``atls_proxy.verify.tpm``).

Folder layout (also in docs/VERIFIERS-TPM.md)::

    <certs_dir>/                  trusted attestation keys (AKs), one or more files:
        *.pem | *.pub             PEM "PUBLIC KEY" (SubjectPublicKeyInfo), RSA-2048+ or EC
        *.der                     DER SubjectPublicKeyInfo
        *.json | *.jwk            a JWK or a JWK Set (RSA or EC public keys)
        *.hcl | hcl*.bin          an Azure HCL report (vTPM NV index 0x01400001): its HCLAkPub

A TPM has no collateral here: ``collateral_dir`` is optional and, when given, is read exactly
like ``certs_dir``. Other files are ignored; at least one AK must be found. An HCL report is only
accepted when its hardware REPORT_DATA carries the hash of its runtime claims. That is a
consistency check of the file, not tamper detection: both are unsigned bytes of the same file, so
it catches corruption or claims that do not match the hardware report, but a report whose
HCLAkPub was swapped and REPORT_DATA rehashed is accepted. The SNP/TDX signature over the
hardware report is what makes HCLAkPub trustworthy; verifying it is the SNP/TDX verifiers' job and
is not done here. So an HCL report in the folder is trusted exactly as much as a PEM key put
there: the operator vouches for it. Every problem raises ``ConfigError`` naming the path.

``read_tpm_evidence`` turns an evidence file (this project's CBOR map, or one of the JSON formats
``evidence_from_json`` reads) into the CBOR evidence ``appraise_tpm`` takes.
"""

from __future__ import annotations

from pathlib import Path

from atls_proxy.errors import ConfigError, DecodeError
from atls_proxy.ops.files import read_trust_file
from atls_proxy.verify.azure_hcl import MAX_HCL_REPORT_SIZE
from atls_proxy.verify.tpm.azure import parse_hcl_report
from atls_proxy.verify.tpm.evidence import MAX_JSON_SIZE, decode_evidence, evidence_from_json
from atls_proxy.verify.tpm.trust import (
    MAX_KEY_FILE_SIZE,
    MAX_TRUSTED_AKS,
    TpmTrust,
    TrustedAk,
    build_tpm_trust,
    parse_ak_file,
)

# Folders are scanned, not walked: this bounds the listing of a wrongly configured directory.
MAX_FOLDER_ENTRIES = 1024
KEY_SUFFIXES = (".pem", ".pub", ".der", ".json", ".jwk")


_read = read_trust_file


def _is_hcl(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() == ".hcl" or (name.startswith("hcl") and name.endswith(".bin"))


def _listing(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(str(folder), "TPM trust folder does not exist or is not a directory")
    entries: list[Path] = []
    try:
        for entry in folder.iterdir():
            entries.append(entry)
            if len(entries) > MAX_FOLDER_ENTRIES:
                raise ConfigError(str(folder), f"more than {MAX_FOLDER_ENTRIES} entries")
    except OSError as exc:
        raise ConfigError(str(folder), f"cannot list: {exc.strerror or exc}") from exc
    return sorted(
        p for p in entries if p.is_file() and (p.suffix.lower() in KEY_SUFFIXES or _is_hcl(p))
    )


def hcl_report_ak(path: Path) -> TrustedAk:
    """HCLAkPub from an Azure HCL report file (module docstring). Raises ``ConfigError``."""
    try:
        report = parse_hcl_report(_read(path, MAX_HCL_REPORT_SIZE))
    except DecodeError as exc:
        raise ConfigError(str(path), f"not an Azure HCL report: {exc}") from exc
    if not report.binds_variable_data:
        raise ConfigError(
            str(path),
            "the hardware report's REPORT_DATA does not carry the hash of the runtime claims: "
            "this HCLAkPub is not bound to the SNP/TDX report",
        )
    return TrustedAk(report.ak, f"{path.name} (HCLAkPub, {report.report_type} HCL report)")


def load_tpm_trust(collateral_dir: Path | None, certs_dir: Path | None = None) -> TpmTrust:
    """Read the trusted AKs from ``certs_dir`` (and ``collateral_dir``, if given).

    Raises ``ConfigError`` naming the missing or unparsable item.
    """
    folders = [Path(d) for d in (certs_dir, collateral_dir) if d is not None]
    if not folders:
        raise ConfigError("trust.tpm.certs", "a folder with the trusted AK public keys is required")
    aks: list[TrustedAk] = []
    for folder in folders:
        for path in _listing(folder):
            if _is_hcl(path):
                aks.append(hcl_report_ak(path))
                continue
            try:
                aks.extend(parse_ak_file(_read(path, MAX_KEY_FILE_SIZE), path.name))
            except DecodeError as exc:
                raise ConfigError(str(path), f"not an AK public key: {exc}") from exc
    if not aks:
        raise ConfigError(
            str(folders[0]),
            "no trusted AK found (expected *.pem / *.der / *.json keys or an Azure *.hcl report)",
        )
    try:
        return build_tpm_trust(aks)
    except ValueError as exc:
        raise ConfigError(str(folders[0]), f"{exc} (at most {MAX_TRUSTED_AKS})") from exc


def read_tpm_evidence(path: Path, *, ak_spki: bytes | None = None) -> bytes:
    """The CBOR evidence from a file holding the CBOR map or a supported JSON format.

    ``ak_spki`` (DER) is added as the AK hint to JSON formats that do not carry the AK. Raises
    ``ConfigError`` naming the path.
    """
    data = _read(Path(path), MAX_JSON_SIZE)
    try:
        if data.lstrip()[:1] == b"{":
            return evidence_from_json(data, ak_spki=ak_spki)
        decode_evidence(data)
        return data
    except DecodeError as exc:
        raise ConfigError(str(path), f"not TPM evidence: {exc}") from exc
