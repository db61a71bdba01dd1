"""The ``[tpm]`` policy section: PCR bank, signature hashes, software TPMs, PCR values (sans-IO).

Layout (every key optional; the defaults are the safe ones)::

    [tpm]
    pcr_bank = "sha256"                         # the bank the evidence must carry (default)
    accepted_signature_hashes = ["sha256", "sha384", "sha512"]   # default: no SHA-1
    allow_software_tpm = false                  # a known software TPM (libtpms/swtpm) is refused

    [tpm.pcrs]                                  # PCR index (a TOML key, so a string) = values
    0 = ["<64 hex>", "<64 hex>"]                # each listed PCR must be selected by the quote
    7 = ["<64 hex>"]                            # and equal one of its values

PCR keys are decimal indexes "0".."63" (TOML turns a bare ``0`` key into the string "0"; leading
zeros and other spellings are refused so one PCR has one key). Values have the bank's digest size.
PCRs the policy does not list are reported, not judged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from atls_proxy.errors import ConfigError
from atls_proxy.verify.tpm.structures import HASH_SIZES, MAX_PCR_INDEX

DEFAULT_PCR_BANK = "sha256"
DEFAULT_SIGNATURE_HASHES = frozenset({"sha256", "sha384", "sha512"})
# A rolling upgrade keeps a few generations per PCR; 64 bounds the "expected" string of a report.
MAX_ACCEPTED_VALUES = 64

_KEYS = ("pcr_bank", "accepted_signature_hashes", "allow_software_tpm", "pcrs")
_HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_INDEX_RE = re.compile(r"0|[1-9][0-9]?")


@dataclass(frozen=True, slots=True)
class TpmPolicy:
    """What the TPM verifier accepts (module docstring for the TOML form)."""

    pcr_bank: str = DEFAULT_PCR_BANK
    accepted_signature_hashes: frozenset[str] = DEFAULT_SIGNATURE_HASHES
    allow_software_tpm: bool = False
    pcrs: Mapping[int, frozenset[bytes]] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.pcr_bank not in HASH_SIZES:
            raise ValueError(f"unknown PCR bank {self.pcr_bank!r}")
        hashes = frozenset(self.accepted_signature_hashes)
        if not hashes or not hashes <= set(HASH_SIZES):
            raise ValueError(f"bad accepted signature hashes {sorted(hashes)}")
        size = HASH_SIZES[self.pcr_bank]
        for index, values in self.pcrs.items():
            if not 0 <= index <= MAX_PCR_INDEX or not values:
                raise ValueError(f"bad PCR constraint {index!r}")
            if any(len(v) != size for v in values):
                raise ValueError(f"PCR {index} values must be {size} bytes ({self.pcr_bank})")
        object.__setattr__(self, "accepted_signature_hashes", hashes)
        object.__setattr__(
            self,
            "pcrs",
            MappingProxyType({i: frozenset(v) for i, v in sorted(self.pcrs.items())}),
        )

    @property
    def constrains_workload(self) -> bool:
        """Whether the policy names any reference value of the workload (PCRs): without one
        it accepts whatever runs on genuine hardware (the client warns at load)."""
        return bool(self.pcrs)


def parse_tpm_policy(
    table: Mapping[str, Any], prefix: str, read_file: Callable[[str], bytes]
) -> TpmPolicy:
    """Validate the ``[tpm]`` table. Raises ``ConfigError("<prefix>.<key>", …)``.

    ``read_file`` is accepted for the common signature; no TPM policy key names a file (trusted
    AKs come from the trust folder, ``atls_proxy.ops.tpm_files``).
    """
    del read_file
    if not isinstance(table, Mapping):
        raise ConfigError(prefix, "must be a table")
    for name in table:
        if name not in _KEYS:
            raise ConfigError(
                f"{prefix}.{name}", f"unknown key (expected one of: {', '.join(_KEYS)})"
            )
    banks = ", ".join(HASH_SIZES)
    bank = table.get("pcr_bank", DEFAULT_PCR_BANK)
    if not isinstance(bank, str) or bank not in HASH_SIZES:
        raise ConfigError(f"{prefix}.pcr_bank", f"one of: {banks}")

    key = f"{prefix}.accepted_signature_hashes"
    hashes = table.get("accepted_signature_hashes", sorted(DEFAULT_SIGNATURE_HASHES))
    if not isinstance(hashes, list) or not hashes:
        raise ConfigError(key, f"a non-empty list of: {banks}")
    for i, name in enumerate(hashes):
        if not isinstance(name, str) or name not in HASH_SIZES:
            raise ConfigError(f"{key}[{i}]", f"unknown hash {name!r} (one of: {banks})")

    allow_sw = table.get("allow_software_tpm", False)
    if not isinstance(allow_sw, bool):
        raise ConfigError(f"{prefix}.allow_software_tpm", "must be true or false")

    pcrs: dict[int, frozenset[bytes]] = {}
    if "pcrs" in table:
        section = table["pcrs"]
        if not isinstance(section, Mapping):
            raise ConfigError(f"{prefix}.pcrs", 'must be a table of "<index>" = [hex values]')
        size = HASH_SIZES[bank]
        for name, values in section.items():
            where = (
                f'{prefix}.pcrs."{name}"' if not str(name).isdigit() else f"{prefix}.pcrs.{name}"
            )
            if not isinstance(name, str) or not _INDEX_RE.fullmatch(name):
                raise ConfigError(where, f"a PCR index is a decimal 0..{MAX_PCR_INDEX}")
            index = int(name)
            if index > MAX_PCR_INDEX:
                raise ConfigError(where, f"a PCR index is a decimal 0..{MAX_PCR_INDEX}")
            if not isinstance(values, list) or not values:
                raise ConfigError(where, "must be a non-empty list of hex values")
            if len(values) > MAX_ACCEPTED_VALUES:
                raise ConfigError(where, f"at most {MAX_ACCEPTED_VALUES} values")
            accepted: set[bytes] = set()
            for i, text in enumerate(values):
                if not isinstance(text, str) or not _HEX_RE.fullmatch(text):
                    raise ConfigError(f"{where}[{i}]", "not a hex string")
                raw = bytes.fromhex(text)
                if len(raw) != size:
                    raise ConfigError(
                        f"{where}[{i}]", f"is {len(raw)} bytes; {bank} PCRs are {size}"
                    )
                accepted.add(raw)
            pcrs[index] = frozenset(accepted)
    return TpmPolicy(
        pcr_bank=bank,
        accepted_signature_hashes=frozenset(hashes),
        allow_software_tpm=allow_sw,
        pcrs=pcrs,
    )
