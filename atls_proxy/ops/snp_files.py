"""Read AMD SEV-SNP trust material from folders (the I/O half of ``atls_proxy.verify.snp``).

Folder layout (also in docs/VERIFIERS-SNP.md). Every certificate is recognised by its subject
CN, not by its file name; DER or PEM, one or several certificates per file::

    <certs_dir>/                     and/or <collateral_dir>/ (both are scanned the same way)
        *.der|*.pem|*.crt|*.cer      VCEK(s) (CN=SEV-VCEK) and/or VLEK(s) (CN=SEV-VLEK), e.g.
                                     from https://kdsintf.amd.com/vcek/v1/<Product>/<hwID>?…;
                                     AMD KDS cert_chain files (ASK or ASVK + ARK); bundles such
                                     as Azure's VCEK+ASK+ARK PEM
        *.crl                        optional AMD CRLs, DER or PEM, signed by the ARK: the VCEK
                                     list (https://kdsintf.amd.com/vcek/v1/<P>/crl) and/or the
                                     VLEK list (…/vlek/v1/<P>/crl); a CRL without an
                                     issuingDistributionPoint is told apart by "vcek"/"vlek" in
                                     its file name (docs/VERIFIERS-SNP.md, "AMD CRLs"); a CRL
                                     without nextUpdate is refused

Several VCEKs (a cache for many chips and TCB levels) are fine: the appraisal picks the one whose
hwID and TCB match the report. The ARKs are always the shipped anchors
(``atls_proxy/verify/anchors/amd_<product>_<vcek|vlek>.pem``, which also provide the ASK/ASVK);
an ARK in these folders must be byte-equal to the shipped one, or appraisals fail at
``snp.chain.ark``. Other files are ignored. Both folders may be absent when the evidence carries
its own certificate table (``application/vnd.atls-proxy.snp-report+certs``). Every problem raises
``ConfigError`` whose key is the offending path.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from atls_proxy.errors import ConfigError, DecodeError
from atls_proxy.ops.files import read_trust_file
from atls_proxy.verify.snp.trust import MAX_CRL_SIZE, SnpTrust, build_snp_trust

# Certificate files hold one certificate or a short chain: 64 KiB is far above any real one and
# stops a wrong file (an image, a log) from being read and parsed.
MAX_CERT_FILE_SIZE = 64 * 1024
# Folders are scanned, not walked: this bounds the listing of a wrongly configured directory.
MAX_FOLDER_ENTRIES = 1024

ANCHOR_PACKAGE = "atls_proxy.verify"
ANCHOR_FOLDER = "anchors"
ANCHOR_FILES = tuple(
    f"amd_{product}_{kind}.pem"
    for product in ("milan", "genoa", "turin")
    for kind in ("vcek", "vlek")
)
CERT_SUFFIXES = (".pem", ".der", ".crt", ".cer")
CRL_SUFFIXES = (".crl",)


_read = functools.partial(read_trust_file, what="not an AMD certificate or CRL")


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


def shipped_anchors() -> list[tuple[str, bytes]]:
    """The shipped AMD cert_chain files as (name, bytes)."""
    out = []
    base = resources.files(ANCHOR_PACKAGE).joinpath(ANCHOR_FOLDER)
    for name in ANCHOR_FILES:
        try:
            out.append((f"shipped anchor {ANCHOR_FOLDER}/{name}", base.joinpath(name).read_bytes()))
        except OSError as exc:  # a broken installation
            raise ConfigError(
                "snp.anchor", f"the shipped AMD anchor {name} is missing: {exc}"
            ) from exc
    return out


def load_snp_trust(
    collateral_dir: Path | None,
    certs_dir: Path | None = None,
    *,
    anchors: Iterable[tuple[str, bytes]] | None = None,
) -> SnpTrust:
    """Read the SNP trust bundle (module docstring for the layout).

    ``anchors`` ((name, PEM bytes) pairs holding ARKs, tests and embedding) replaces the shipped
    anchors. Raises ``ConfigError`` naming the missing or unparsable item.
    """
    files: list[Path] = []
    for folder, what in ((collateral_dir, "collateral"), (certs_dir, "certificates")):
        if folder is not None:
            files.extend(_listing(Path(folder), what))
    cert_paths = [p for p in files if p.suffix.lower() in CERT_SUFFIXES]
    crl_paths = [p for p in files if p.suffix.lower() in CRL_SUFFIXES]
    certificates = [(str(p), _read(p, MAX_CERT_FILE_SIZE)) for p in cert_paths]
    crls = [(str(p), _read(p, MAX_CRL_SIZE)) for p in crl_paths]
    anchor_blobs = list(anchors) if anchors is not None else shipped_anchors()
    try:
        return build_snp_trust(certificates, anchor_blobs, crls)
    except DecodeError as exc:
        # build_snp_trust's messages start with the source (a path or an anchor name).
        source, _, message = str(exc).partition(": ")
        raise ConfigError(source or "snp.trust", message or str(exc)) from exc
