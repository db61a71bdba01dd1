"""The ``[cca]`` policy section: lifecycle, platform reference values, realm registers (sans-IO).

Layout (every key optional; the defaults are the safe ones)::

    [cca]
    accepted_lifecycles = ["secured"]     # default: only "secured" (0x3000..0x30ff)
    implementation_ids = ["<64 hex>"]     # platform implementation-id (2396), one of these
    instance_ids = ["<66 hex>"]           # platform instance-id (256), one of these
    platform_configs = ["<hex>"]          # platform-config (2401), one of these

    [[cca.sw_components]]                 # platform sw-components (2399): when any is listed,
    type = "RMM"                          #   every component in the token must match one entry
    measurement = "<hex>"                 #   (measurement-value, and signer-id and type when
    signer_id = "<hex>"                   #   given); and every listed type must be present

    [cca.registers]                       # realm registers, each one of the listed values
    rim = ["<hex>"]                       # Realm Initial Measurement (44238)
    rem0 = ["<hex>"]                      # rem0..rem3: Realm Extensible Measurements (44239)
    rpv = ["<128 hex>"]                   # Realm Personalization Value (44235)

Lifecycle names (draft-ffm-rats-cca-token, ``token.LIFECYCLE_STATES``): unknown,
assembly-and-test, cca-platform-rot-provisioning, secured, non-cca-platform-rot-debug,
recoverable-cca-platform-rot-debug, decommissioned. Only "secured" is a production platform whose
CCA platform RoT cannot be debugged; the policy may add others (a development board), never
"decommissioned" or "unknown".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from atls_proxy.errors import ConfigError
from atls_proxy.verify.cca.token import (
    DIGEST_SIZES,
    IMPLEMENTATION_ID_SIZE,
    INSTANCE_ID_SIZE,
    LIFECYCLE_NAMES,
    MAX_CONFIG_SIZE,
    MAX_TEXT_LENGTH,
    PERSONALIZATION_SIZE,
)

# Realm registers a policy may constrain, in report order.
REGISTER_NAMES = ("rim", "rem0", "rem1", "rem2", "rem3", "rpv")
DEFAULT_LIFECYCLES = frozenset({"secured"})
# Lifecycle states no policy may accept: the platform is not (or no longer) a CCA platform.
NEVER_ACCEPTED = frozenset({"unknown", "decommissioned"})
# A rolling upgrade keeps a few generations per value; 64 bounds the "expected" string of a report.
MAX_ACCEPTED_VALUES = 64
# A boot chain of a dozen components, a few generations each: 512 reference entries is plenty.
MAX_SW_REFERENCES = 512

_KEYS = (
    "accepted_lifecycles",
    "implementation_ids",
    "instance_ids",
    "platform_configs",
    "sw_components",
    "registers",
)
_SW_KEYS = ("type", "measurement", "signer_id")
_HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{2})*")


@dataclass(frozen=True, slots=True)
class SwReference:
    """One accepted platform sw-component: its measurement, and optionally type and signer."""

    measurement: bytes
    type: str | None = None
    signer_id: bytes | None = None

    def describe(self) -> str:
        parts = [self.type or "(any type)", self.measurement.hex()]
        if self.signer_id is not None:
            parts.append(f"signer {self.signer_id.hex()}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class CcaPolicy:
    """What the CCA verifier accepts (module docstring for the TOML form)."""

    accepted_lifecycles: frozenset[str] = DEFAULT_LIFECYCLES
    implementation_ids: frozenset[bytes] = frozenset()
    instance_ids: frozenset[bytes] = frozenset()
    platform_configs: frozenset[bytes] = frozenset()
    sw_components: tuple[SwReference, ...] = ()
    registers: Mapping[str, frozenset[bytes]] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        states = frozenset(self.accepted_lifecycles)
        if not states or not states <= set(LIFECYCLE_NAMES) or states & NEVER_ACCEPTED:
            raise ValueError(f"bad accepted lifecycles: {sorted(states)}")
        for name, values in self.registers.items():
            if name not in REGISTER_NAMES or not values:
                raise ValueError(f"bad register constraint {name!r}")
        object.__setattr__(self, "accepted_lifecycles", states)
        object.__setattr__(self, "sw_components", tuple(self.sw_components))
        object.__setattr__(
            self,
            "registers",
            MappingProxyType({n: frozenset(v) for n, v in self.registers.items()}),
        )


def _hex(value: object, key: str, sizes: tuple[int, ...] | None, max_size: int = 0) -> bytes:
    if not isinstance(value, str) or not value or not _HEX_RE.fullmatch(value):
        raise ConfigError(key, "not a hex string (an even number of hex digits)")
    raw = bytes.fromhex(value)
    if sizes is not None and len(raw) not in sizes:
        raise ConfigError(key, f"is {len(raw)} bytes, expected {' or '.join(map(str, sizes))}")
    if max_size and len(raw) > max_size:
        raise ConfigError(key, f"is longer than {max_size} bytes")
    return raw


def _hex_list(
    value: object, key: str, sizes: tuple[int, ...] | None, max_size: int = 0
) -> frozenset[bytes]:
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty list of hex strings")
    if len(value) > MAX_ACCEPTED_VALUES:
        raise ConfigError(key, f"at most {MAX_ACCEPTED_VALUES} values, got {len(value)}")
    return frozenset(_hex(v, f"{key}[{i}]", sizes, max_size) for i, v in enumerate(value))


def _sw_references(value: object, key: str) -> tuple[SwReference, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty array of tables ([[cca.sw_components]])")
    if len(value) > MAX_SW_REFERENCES:
        raise ConfigError(key, f"at most {MAX_SW_REFERENCES} entries")
    out = []
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(where, "must be a table with measurement (and type, signer_id)")
        for name in entry:
            if name not in _SW_KEYS:
                raise ConfigError(
                    f"{where}.{name}", f"unknown key (expected one of: {', '.join(_SW_KEYS)})"
                )
        if "measurement" not in entry:
            raise ConfigError(f"{where}.measurement", "is required")
        mtype = entry.get("type")
        if mtype is not None and (
            not isinstance(mtype, str) or not mtype or len(mtype) > MAX_TEXT_LENGTH
        ):
            raise ConfigError(f"{where}.type", "must be a non-empty string")
        signer = entry.get("signer_id")
        out.append(
            SwReference(
                measurement=_hex(entry["measurement"], f"{where}.measurement", DIGEST_SIZES),
                type=mtype,
                signer_id=None
                if signer is None
                else _hex(signer, f"{where}.signer_id", DIGEST_SIZES),
            )
        )
    return tuple(out)


def parse_cca_policy(
    table: Mapping[str, Any], prefix: str, read_file: Callable[[str], bytes]
) -> CcaPolicy:
    """Validate the ``[cca]`` table. Raises ``ConfigError("<prefix>.<key>", …)``.

    ``read_file`` is accepted for the common signature; no CCA policy key names a file (trusted
    CPAKs come from the trust folder, ``atls_proxy.ops.cca_files``).
    """
    del read_file
    if not isinstance(table, Mapping):
        raise ConfigError(prefix, "must be a table")
    for name in table:
        if name not in _KEYS:
            raise ConfigError(
                f"{prefix}.{name}", f"unknown key (expected one of: {', '.join(_KEYS)})"
            )

    key = f"{prefix}.accepted_lifecycles"
    states = table.get("accepted_lifecycles", sorted(DEFAULT_LIFECYCLES))
    if not isinstance(states, list) or not states:
        raise ConfigError(key, f"a non-empty list of: {', '.join(LIFECYCLE_NAMES)}")
    for i, state in enumerate(states):
        if state not in LIFECYCLE_NAMES:
            raise ConfigError(
                f"{key}[{i}]", f"unknown lifecycle {state!r} (one of: {', '.join(LIFECYCLE_NAMES)})"
            )
        if state in NEVER_ACCEPTED:
            raise ConfigError(f"{key}[{i}]", f"a platform in state {state!r} is never acceptable")

    def ids(name: str, sizes: tuple[int, ...] | None, max_size: int = 0) -> frozenset[bytes]:
        if name not in table:
            return frozenset()
        return _hex_list(table[name], f"{prefix}.{name}", sizes, max_size)

    sw: tuple[SwReference, ...] = ()
    if "sw_components" in table:
        sw = _sw_references(table["sw_components"], f"{prefix}.sw_components")

    registers: dict[str, frozenset[bytes]] = {}
    if "registers" in table:
        reg_key = f"{prefix}.registers"
        section = table["registers"]
        if not isinstance(section, Mapping):
            raise ConfigError(reg_key, "must be a table of register = [hex values]")
        for name, values in section.items():
            if name not in REGISTER_NAMES:
                raise ConfigError(
                    f"{reg_key}.{name}", f"unknown register (one of: {', '.join(REGISTER_NAMES)})"
                )
            sizes = (PERSONALIZATION_SIZE,) if name == "rpv" else DIGEST_SIZES
            registers[name] = _hex_list(values, f"{reg_key}.{name}", sizes)

    return CcaPolicy(
        accepted_lifecycles=frozenset(states),
        implementation_ids=ids("implementation_ids", (IMPLEMENTATION_ID_SIZE,)),
        instance_ids=ids("instance_ids", (INSTANCE_ID_SIZE,)),
        platform_configs=ids("platform_configs", None, MAX_CONFIG_SIZE),
        sw_components=sw,
        registers=registers,
    )
