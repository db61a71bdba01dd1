"""Read Arm CCA trust material from folders (the I/O half of ``atls_proxy.verify.cca``).

Folder layout (also in docs/VERIFIERS-CCA.md)::

    <certs_dir>/                 trusted CPAK public keys, one or more files:
        *.pem | *.pub            PEM "PUBLIC KEY" (SubjectPublicKeyInfo)
        *.der                    DER SubjectPublicKeyInfo
        *.json | *.jwk           a JWK, a JWK Set {"keys": [...]}, or a trust-anchor store
                                 [{"pkey": JWK, "implementation-id": hex, "instance-id": hex}]

CCA has no collateral (no CRL, no TCB document): ``collateral_dir`` is optional and, when given,
is read exactly like ``certs_dir`` (so a single ``[trust.cca]`` folder of either name works).
Other files are ignored. At least one key must be found. Every problem raises ``ConfigError``
whose key is the offending path.

``rvstore_policy_table`` turns a Veraison/trustee reference-value store (``rvstore.json``) into a
``[cca]`` policy table for ``parse_cca_policy``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atls_proxy.errors import ConfigError, DecodeError
from atls_proxy.verify.cca.trust import (
    MAX_KEY_FILE_SIZE,
    MAX_TRUSTED_CPAKS,
    CcaTrust,
    TrustedCpak,
    build_cca_trust,
    parse_cpak_file,
)

# Folders are scanned, not walked: this bounds the listing of a wrongly configured directory.
MAX_FOLDER_ENTRIES = 1024
KEY_SUFFIXES = (".pem", ".pub", ".der", ".json", ".jwk")
# An rvstore lists a dozen components per platform: 1 MiB is far above any real one.
MAX_RVSTORE_SIZE = 1024 * 1024


def _read(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise ConfigError(str(path), f"larger than {limit} bytes: not a CPAK key file")
    return data


def _listing(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ConfigError(str(folder), "CCA trust folder does not exist or is not a directory")
    entries: list[Path] = []
    try:
        for entry in folder.iterdir():
            entries.append(entry)
            if len(entries) > MAX_FOLDER_ENTRIES:
                raise ConfigError(str(folder), f"more than {MAX_FOLDER_ENTRIES} entries")
    except OSError as exc:
        raise ConfigError(str(folder), f"cannot list: {exc.strerror or exc}") from exc
    return sorted(p for p in entries if p.is_file() and p.suffix.lower() in KEY_SUFFIXES)


def load_cca_trust(collateral_dir: Path | None, certs_dir: Path | None = None) -> CcaTrust:
    """Read the trusted CPAKs from ``certs_dir`` (and ``collateral_dir``, if given).

    Raises ``ConfigError`` naming the missing or unparsable item.
    """
    folders = [Path(d) for d in (certs_dir, collateral_dir) if d is not None]
    if not folders:
        raise ConfigError("cca.certs", "a folder with the trusted CPAK public keys is required")
    keys: list[TrustedCpak] = []
    for folder in folders:
        for path in _listing(folder):
            try:
                keys.extend(parse_cpak_file(_read(path, MAX_KEY_FILE_SIZE), path.name))
            except DecodeError as exc:
                raise ConfigError(str(path), f"not a CPAK public key: {exc}") from exc
    if not keys:
        raise ConfigError(
            str(folders[0]),
            "no trusted CPAK found (expected *.pem / *.pub / *.der public keys or *.json JWKs)",
        )
    try:
        return build_cca_trust(keys)
    except ValueError as exc:
        raise ConfigError(str(folders[0]), f"{exc} (at most {MAX_TRUSTED_CPAKS})") from exc


def rvstore_policy_table(data: bytes, source: str = "rvstore.json") -> dict[str, Any]:
    """A ``[cca]`` policy table from a Veraison/trustee ``rvstore.json`` (one or more platforms).

    Platform entries give ``implementation_ids``, ``platform_configs`` and ``sw_components``;
    realm entries give ``registers`` (rim, rem0..rem3, rpv). Values are copied, not judged:
    ``parse_cca_policy`` validates the result. Raises ``ConfigError`` naming ``source``.
    """
    if len(data) > MAX_RVSTORE_SIZE:
        raise ConfigError(source, f"larger than {MAX_RVSTORE_SIZE} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # RecursionError: the json decoder recurses per nesting level; deep nesting fits well
        # within the size cap.
        raise ConfigError(source, f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(source, "an rvstore is an object with 'platform' and/or 'realm' lists")
    table: dict[str, Any] = {}
    impl: list[str] = []
    configs: list[str] = []
    sw: list[dict[str, str]] = []
    for i, entry in enumerate(_entries(doc, "platform", source)):
        where = f"{source}: platform[{i}]"
        if "implementation-id" in entry:
            impl.append(_str(entry["implementation-id"], where))
        if "platform-configuration" in entry:
            configs.append(_str(entry["platform-configuration"], where))
        comps = entry.get("sw-components", [])
        if not isinstance(comps, list):
            raise ConfigError(where, "sw-components is not a list")
        for comp in comps:
            if not isinstance(comp, dict) or "measurement-value" not in comp:
                raise ConfigError(where, "a sw-component needs a measurement-value")
            ref = {"measurement": _str(comp["measurement-value"], where)}
            if "component-type" in comp:
                ref["type"] = _str(comp["component-type"], where)
            if "signer-id" in comp:
                ref["signer_id"] = _str(comp["signer-id"], where)
            sw.append(ref)
    registers: dict[str, list[str]] = {}
    for i, entry in enumerate(_entries(doc, "realm", source)):
        where = f"{source}: realm[{i}]"
        if "initial-measurement" in entry:
            registers.setdefault("rim", []).append(_str(entry["initial-measurement"], where))
        rems = entry.get("extensible-measurements", [])
        if not isinstance(rems, list):
            raise ConfigError(where, "extensible-measurements is not a list")
        for n, rem in enumerate(rems):
            registers.setdefault(f"rem{n}", []).append(_str(rem, where))
        if "personalization-value" in entry:
            registers.setdefault("rpv", []).append(_str(entry["personalization-value"], where))
    if impl:
        table["implementation_ids"] = sorted(set(impl))
    if configs:
        table["platform_configs"] = sorted(set(configs))
    if sw:
        table["sw_components"] = sw
    if registers:
        table["registers"] = {k: sorted(set(v)) for k, v in registers.items()}
    return table


def _entries(doc: dict[str, Any], name: str, source: str) -> list[dict[str, Any]]:
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise ConfigError(source, f"'{name}' is not a list of objects")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(where, f"expected a hex string, got {type(value).__name__}")
    return value
