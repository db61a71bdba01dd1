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
``[cca]`` policy table for ``parse_cca_policy``: one ``platforms`` entry per platform record and one
``realms`` entry per realm record, kept whole (each record is one good state; the data model is
veraison/rust-ccatoken ``src/store/data-model.cddl``, summarised in docs/VERIFIERS-CCA.md).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from atls_proxy.errors import ConfigError, DecodeError
from atls_proxy.ops.files import read_trust_file
from atls_proxy.untrusted import json_loads
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

# The keys of the rvstore data model (rust-ccatoken data-model.cddl: platform-rv, swcomp,
# realm-rv). Anything else is refused: a misspelt key would otherwise drop a reference value
# silently, and "x-reason" marks a deny-list record, which must never be read as an accepted one.
_TOP_KEYS = ("platform", "realm")
_PLATFORM_KEYS = ("implementation-id", "platform-configuration", "sw-components")
# version and hash-algo-id are descriptive: measurement-value and signer-id identify the build.
_SWCOMP_KEYS = ("component-type", "measurement-value", "version", "signer-id", "hash-algo-id")
# rak-hash-algorithm is not compared: the token's own RAK hash algorithm is checked by the
# platform challenge binding (only sha-256/384/512 parse).
_REALM_KEYS = (
    "initial-measurement",
    "extensible-measurements",
    "personalization-value",
    "rak-hash-algorithm",
)


_read = functools.partial(read_trust_file, what="not a CPAK key file")


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
        raise ConfigError(
            "trust.cca.certs", "a folder with the trusted CPAK public keys is required"
        )
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
    """A ``[cca]`` policy table from a Veraison/trustee ``rvstore.json`` (one or more records).

    Each platform record (``implementation-id``, ``platform-configuration``, ``sw-components``)
    becomes one ``platforms`` entry and each realm record (``initial-measurement``,
    ``extensible-measurements``, ``personalization-value``) one ``realms`` entry, so that a token
    must match one record of each as a whole. Values are copied, not judged: ``parse_cca_policy``
    validates the result. The store must hold at least one platform and one realm record, and
    no key outside the data model. Raises ``ConfigError`` naming ``source`` and the key.
    """
    if len(data) > MAX_RVSTORE_SIZE:
        raise ConfigError(source, f"larger than {MAX_RVSTORE_SIZE} bytes")
    try:
        doc = json_loads(data)
    except ValueError as exc:
        raise ConfigError(source, f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(source, "an rvstore is an object with 'platform' and 'realm' lists")
    for name in doc:
        if name not in _TOP_KEYS:
            raise ConfigError(
                f"{source}: {name}", f"unknown key (expected one of: {', '.join(_TOP_KEYS)})"
            )
    platforms: list[dict[str, Any]] = []
    for i, entry in enumerate(_entries(doc, "platform", source)):
        where = f"{source}: platform[{i}]"
        _known(entry, _PLATFORM_KEYS, where)
        # data-model.cddl platform-claims: implementation-id and a non-empty sw-components are
        # mandatory (a record without firmware would compare no firmware).
        if "implementation-id" not in entry:
            raise ConfigError(f"{where}.implementation-id", "is required")
        record: dict[str, Any] = {
            "implementation_ids": [_str(entry["implementation-id"], f"{where}.implementation-id")]
        }
        if "platform-configuration" in entry:
            record["platform_configs"] = [
                _str(entry["platform-configuration"], f"{where}.platform-configuration")
            ]
        comps = entry.get("sw-components")
        if not isinstance(comps, list) or not comps:
            raise ConfigError(f"{where}.sw-components", "is required: a non-empty list")
        sw: list[dict[str, str]] = []
        for n, comp in enumerate(comps):
            at = f"{where}.sw-components[{n}]"
            if not isinstance(comp, dict) or "measurement-value" not in comp:
                raise ConfigError(at, "a sw-component needs a measurement-value")
            _known(comp, _SWCOMP_KEYS, at)
            ref = {"measurement": _str(comp["measurement-value"], f"{at}.measurement-value")}
            if "component-type" in comp:
                ref["type"] = _str(comp["component-type"], f"{at}.component-type")
            if "signer-id" in comp:
                ref["signer_id"] = _str(comp["signer-id"], f"{at}.signer-id")
            sw.append(ref)
        record["sw_components"] = sw
        platforms.append(record)
    realms: list[dict[str, list[str]]] = []
    for i, entry in enumerate(_entries(doc, "realm", source)):
        where = f"{source}: realm[{i}]"
        _known(entry, _REALM_KEYS, where)
        # data-model.cddl realm-claims: initial-measurement is mandatory; the REMs and the
        # personalization value are optional and, when absent, not compared.
        if "initial-measurement" not in entry:
            raise ConfigError(f"{where}.initial-measurement", "is required")
        registers = {"rim": [_str(entry["initial-measurement"], f"{where}.initial-measurement")]}
        if "extensible-measurements" in entry:
            rems = entry["extensible-measurements"]
            if not isinstance(rems, list) or len(rems) != 4:
                raise ConfigError(f"{where}.extensible-measurements", "is not a list of 4 values")
            for n, rem in enumerate(rems):
                registers[f"rem{n}"] = [_str(rem, f"{where}.extensible-measurements[{n}]")]
        if "personalization-value" in entry:
            registers["rpv"] = [
                _str(entry["personalization-value"], f"{where}.personalization-value")
            ]
        realms.append(registers)
    # A store without platform (or realm) records would leave that half of the token compared with
    # nothing, while the operator believes reference values are in force.
    if not platforms:
        raise ConfigError(f"{source}: platform", "no platform reference record")
    if not realms:
        raise ConfigError(f"{source}: realm", "no realm reference record")
    return {"platforms": platforms, "realms": realms}


def _known(entry: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    for name in entry:
        if name not in keys:
            raise ConfigError(
                f"{where}.{name}", f"unknown key (expected one of: {', '.join(keys)})"
            )


def _entries(doc: dict[str, Any], name: str, source: str) -> list[dict[str, Any]]:
    value = doc.get(name, [])
    if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
        raise ConfigError(f"{source}: {name}", f"'{name}' is not a list of objects")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(where, f"expected a hex string, got {type(value).__name__}")
    return value
