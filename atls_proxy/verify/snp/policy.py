"""The ``[snp]`` policy section (sans-IO): guest policy bits, minimum TCB, launch registers.

Layout (all keys optional; the defaults are the safe ones)::

    [snp]
    product = "Milan"                   # pin the product line (Milan, Genoa, Turin); default:
                                        # taken from the VCEK/VLEK issuer (SEV-Milan, …)
    signing_keys = ["vcek", "vlek"]     # which endorsement keys may sign (default both)
    allow_debug = false                 # POLICY bit 19 (DEBUG): forbidden by default
    allow_migration_agent = false       # POLICY bit 18 (MIGRATE_MA): forbidden by default
    allow_smt = true                    # POLICY bit 16 (SMT allowed): accepted by default
    require_single_socket = false       # POLICY bit 20 (SINGLE_SOCKET) must be set if true
    min_abi = "1.51"                    # POLICY ABI_MAJOR.ABI_MINOR at least this
    min_firmware = "1.55"               # CURRENT_MAJOR.CURRENT_MINOR at least this
    min_guest_svn = 0                   # GUEST_SVN at least this
    accepted_vmpls = [0]                # VMPL one of these (default: any, only shown)
    require_crl = false                 # a current AMD CRL for the chain in use (the VCEK or
                                        # the VLEK list) must be in the collateral

    [snp.min_tcb]                       # REPORTED_TCB components at least these (default 0)
    bootloader = 3
    tee = 0
    snp = 8
    microcode = 115
    fmc = 0                             # Turin only

    [snp.registers]                     # each listed register must equal one of the values
    measurement = ["<96 hex>"]          # also host_data (64 hex), id_key_digest (96),
                                        # author_key_digest (96), family_id (32), image_id (32)

Registers the policy does not list are reported, not judged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from atls_proxy.errors import ConfigError

PRODUCTS = ("Milan", "Genoa", "Turin")
SIGNING_KEYS = ("vcek", "vlek")
# Register name -> size in bytes (ABI spec, Table "ATTESTATION_REPORT Structure").
REGISTER_SIZES: Mapping[str, int] = MappingProxyType(
    {
        "measurement": 48,
        "host_data": 32,
        "id_key_digest": 48,
        "author_key_digest": 48,
        "family_id": 16,
        "image_id": 16,
    }
)
REGISTER_NAMES = tuple(REGISTER_SIZES)
TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")
# A rolling upgrade keeps a few generations of images per register; 64 is generous and bounds the
# "expected" string of a report.
MAX_ACCEPTED_VALUES = 64
# VMPL 0..3 (ABI spec: four VM privilege levels).
MAX_VMPL = 3
# TCB components and ABI/firmware version parts are one byte each in the report.
MAX_BYTE = 0xFF
# GUEST_SVN is a u32.
MAX_GUEST_SVN = 0xFFFFFFFF

_KEYS = (
    "product",
    "signing_keys",
    "allow_debug",
    "allow_migration_agent",
    "allow_smt",
    "require_single_socket",
    "min_abi",
    "min_firmware",
    "min_guest_svn",
    "accepted_vmpls",
    "require_crl",
    "min_tcb",
    "registers",
)
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_VERSION_RE = re.compile(r"(\d{1,3})\.(\d{1,3})")


@dataclass(frozen=True, slots=True)
class SnpPolicy:
    """What the SEV-SNP verifier accepts (see the module docstring for the TOML form)."""

    product: str | None = None
    signing_keys: frozenset[str] = frozenset(SIGNING_KEYS)
    allow_debug: bool = False
    allow_migration_agent: bool = False
    allow_smt: bool = True
    require_single_socket: bool = False
    min_abi: tuple[int, int] | None = None
    min_firmware: tuple[int, int] | None = None
    min_guest_svn: int = 0
    accepted_vmpls: frozenset[int] | None = None
    require_crl: bool = False
    min_tcb: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    registers: Mapping[str, frozenset[bytes]] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.product is not None and self.product not in PRODUCTS:
            raise ValueError(f"unknown product {self.product!r}")
        if not self.signing_keys or set(self.signing_keys) - set(SIGNING_KEYS):
            raise ValueError(f"bad signing keys {sorted(self.signing_keys)}")
        for name, value in self.min_tcb.items():
            if name not in TCB_COMPONENTS or not 0 <= value <= MAX_BYTE:
                raise ValueError(f"bad minimum TCB component {name!r}")
        for name, values in self.registers.items():
            size = REGISTER_SIZES.get(name)
            if size is None or not values or any(len(v) != size for v in values):
                raise ValueError(f"bad register constraint {name!r}")
        if self.accepted_vmpls is not None and (
            not self.accepted_vmpls or any(not 0 <= v <= MAX_VMPL for v in self.accepted_vmpls)
        ):
            raise ValueError("accepted_vmpls must be a non-empty subset of 0..3")
        object.__setattr__(self, "signing_keys", frozenset(self.signing_keys))
        object.__setattr__(self, "min_tcb", MappingProxyType(dict(self.min_tcb)))
        object.__setattr__(
            self,
            "registers",
            MappingProxyType({n: frozenset(v) for n, v in self.registers.items()}),
        )

    @property
    def constrains_workload(self) -> bool:
        """Whether the policy names any reference value of the workload (registers): without one
        it accepts whatever runs on genuine hardware (the client warns at load)."""
        return bool(self.registers)


def _bool(table: Mapping[str, Any], name: str, prefix: str, default: bool) -> bool:
    value = table.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{prefix}.{name}", "must be true or false")
    return value


def _int(value: object, key: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ConfigError(key, f"must be an integer in 0..{maximum}")
    return value


def _version(value: object, key: str) -> tuple[int, int]:
    match = _VERSION_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(key, 'must be a "major.minor" string, e.g. "1.55"')
    major, minor = int(match.group(1)), int(match.group(2))
    if major > MAX_BYTE or minor > MAX_BYTE:
        raise ConfigError(key, f"major and minor are at most {MAX_BYTE}")
    return major, minor


def _register_values(value: object, key: str, size: int) -> frozenset[bytes]:
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list of hex values")
    if len(value) > MAX_ACCEPTED_VALUES:
        raise ConfigError(key, f"at most {MAX_ACCEPTED_VALUES} values, got {len(value)}")
    out: set[bytes] = set()
    for i, text in enumerate(value):
        item = f"{key}[{i}]"
        if not isinstance(text, str) or not _HEX_RE.fullmatch(text) or len(text) % 2:
            raise ConfigError(item, "not a hex string")
        raw = bytes.fromhex(text)
        if len(raw) != size:
            raise ConfigError(item, f"is {len(raw)} bytes; this register is {size}")
        out.add(raw)
    return frozenset(out)


def parse_snp_policy(
    table: Mapping[str, Any], prefix: str, read_file: Callable[[str], bytes]
) -> SnpPolicy:
    """Validate the ``[snp]`` table. Raises ``ConfigError("<prefix>.<key>", …)``.

    ``read_file`` is accepted for the common signature; no SNP policy key names a file.
    """
    del read_file
    if not isinstance(table, Mapping):
        raise ConfigError(prefix, "must be a table")
    for name in table:
        if name not in _KEYS:
            raise ConfigError(
                f"{prefix}.{name}", f"unknown key (expected one of: {', '.join(_KEYS)})"
            )

    product = table.get("product")
    if product is not None:
        if not isinstance(product, str):
            raise ConfigError(f"{prefix}.product", f"one of: {', '.join(PRODUCTS)}")
        canonical = {p.lower(): p for p in PRODUCTS}.get(product.lower())
        if canonical is None:
            raise ConfigError(
                f"{prefix}.product", f"unknown product {product!r} (one of: {', '.join(PRODUCTS)})"
            )
        product = canonical

    keys = table.get("signing_keys", list(SIGNING_KEYS))
    key = f"{prefix}.signing_keys"
    if not isinstance(keys, list) or not keys:
        raise ConfigError(key, f"a non-empty list of: {', '.join(SIGNING_KEYS)}")
    for i, name in enumerate(keys):
        if not isinstance(name, str) or name.lower() not in SIGNING_KEYS:
            raise ConfigError(f"{key}[{i}]", f"one of: {', '.join(SIGNING_KEYS)}")

    min_abi = None
    if "min_abi" in table:
        min_abi = _version(table["min_abi"], f"{prefix}.min_abi")
    min_firmware = None
    if "min_firmware" in table:
        min_firmware = _version(table["min_firmware"], f"{prefix}.min_firmware")
    min_svn = _int(table.get("min_guest_svn", 0), f"{prefix}.min_guest_svn", MAX_GUEST_SVN)

    vmpls = None
    if "accepted_vmpls" in table:
        key = f"{prefix}.accepted_vmpls"
        raw = table["accepted_vmpls"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(key, f"a non-empty list of VMPLs 0..{MAX_VMPL}")
        vmpls = frozenset(_int(v, f"{key}[{i}]", MAX_VMPL) for i, v in enumerate(raw))

    min_tcb: dict[str, int] = {}
    if "min_tcb" in table:
        key = f"{prefix}.min_tcb"
        section = table["min_tcb"]
        if not isinstance(section, Mapping):
            raise ConfigError(key, "must be a table of component = minimum")
        for name, value in section.items():
            if name not in TCB_COMPONENTS:
                raise ConfigError(
                    f"{key}.{name}", f"unknown component (one of: {', '.join(TCB_COMPONENTS)})"
                )
            min_tcb[name] = _int(value, f"{key}.{name}", MAX_BYTE)

    registers: dict[str, frozenset[bytes]] = {}
    if "registers" in table:
        key = f"{prefix}.registers"
        section = table["registers"]
        if not isinstance(section, Mapping):
            raise ConfigError(key, "must be a table of register = [hex values]")
        for name, values in section.items():
            size = REGISTER_SIZES.get(name)
            if size is None:
                raise ConfigError(
                    f"{key}.{name}", f"unknown register (one of: {', '.join(REGISTER_NAMES)})"
                )
            registers[name] = _register_values(values, f"{key}.{name}", size)

    return SnpPolicy(
        product=product,
        signing_keys=frozenset(k.lower() for k in keys),
        allow_debug=_bool(table, "allow_debug", prefix, False),
        allow_migration_agent=_bool(table, "allow_migration_agent", prefix, False),
        allow_smt=_bool(table, "allow_smt", prefix, True),
        require_single_socket=_bool(table, "require_single_socket", prefix, False),
        min_abi=min_abi,
        min_firmware=min_firmware,
        min_guest_svn=min_svn,
        accepted_vmpls=vmpls,
        require_crl=_bool(table, "require_crl", prefix, False),
        min_tcb=min_tcb,
        registers=registers,
    )
