"""The ``[cca]`` policy section: lifecycle, platform reference values, realm registers (sans-IO).

Layout (every key optional; the defaults are the safe ones)::

    [cca]
    accepted_lifecycles = ["secured"]     # default: only "secured" (0x3000..0x30ff)
    instance_ids = ["<66 hex>"]           # platform instance-id (256), one of these

    # One platform reference record, written inline ...
    implementation_ids = ["<64 hex>"]     # platform implementation-id (2396), one of these
    platform_configs = ["<hex>"]          # platform-config (2401), one of these

    [[cca.sw_components]]                 # platform sw-components (2399): when any is listed,
    type = "RMM"                          #   every component in the token must match one entry
    measurement = "<hex>"                 #   (measurement-value, and signer-id and type when
    signer_id = "<hex>"                   #   given); every listed type must be present, and the
                                          #   measurement of every untyped entry

    # ... or several, each one good platform state (not both forms):
    [[cca.platforms]]                     # keys implementation_ids, platform_configs and
    implementation_ids = ["<64 hex>"]     #   sw_components, as above
    [[cca.platforms.sw_components]]
    measurement = "<hex>"

    [cca.registers]                       # one realm reference record, each register one of
    rim = ["<hex>"]                       #   the listed values: Realm Initial Measurement (44238)
    rem0 = ["<hex>"]                      # rem0..rem3: Realm Extensible Measurements (44239)
    rpv = ["<128 hex>"]                   # Realm Personalization Value (44235)

    [[cca.realms]]                        # or several realm records (not both forms),
    rim = ["<hex>"]                       #   each a table like [cca.registers]

Reference records (the Veraison/rvstore data model, docs/VERIFIERS-CCA.md): each platform record
and each realm record describes one good state, so a token must match one platform record as a
whole and one realm record as a whole; values of different records never combine. Within one
record a list gives alternatives for that value alone (the inline form is one record).
``atls_proxy.ops.cca_files.rvstore_policy_table`` writes one ``[[cca.platforms]]`` and one
``[[cca.realms]]`` entry per rvstore record.

Lifecycle names (draft-ffm-rats-cca-token, ``token.LIFECYCLE_STATES``): unknown,
assembly-and-test, cca-platform-rot-provisioning, secured, non-cca-platform-rot-debug,
recoverable-cca-platform-rot-debug, decommissioned. Only "secured" is a production platform whose
CCA platform RoT cannot be debugged; the policy may add others (a development board), never
"decommissioned" or "unknown".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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
# Reference records (platform or realm), each one good state: 64 covers a fleet's firmware and
# realm generations.
MAX_REFERENCE_RECORDS = 64
# Every token component may be compared with every sw-component reference of every platform record:
# this bounds the work one token can cause (64 components x 2048 references).
MAX_TOTAL_SW_REFERENCES = 2048

_PLATFORM_KEYS = ("implementation_ids", "platform_configs", "sw_components")
_KEYS = (
    "accepted_lifecycles",
    "instance_ids",
    *_PLATFORM_KEYS,
    "platforms",
    "registers",
    "realms",
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
class PlatformReference:
    """One good platform state (a Veraison ``platform-rv`` record): all of it must match.

    An empty set or tuple does not constrain that value.
    """

    implementation_ids: frozenset[bytes] = frozenset()
    platform_configs: frozenset[bytes] = frozenset()
    sw_components: tuple[SwReference, ...] = ()

    def __post_init__(self) -> None:
        if not (self.implementation_ids or self.platform_configs or self.sw_components):
            raise ValueError("a platform reference must constrain something")
        if len(self.sw_components) > MAX_SW_REFERENCES:
            raise ValueError(f"more than {MAX_SW_REFERENCES} sw-component references")
        object.__setattr__(self, "implementation_ids", frozenset(self.implementation_ids))
        object.__setattr__(self, "platform_configs", frozenset(self.platform_configs))
        object.__setattr__(self, "sw_components", tuple(self.sw_components))


@dataclass(frozen=True, slots=True)
class RealmReference:
    """One good realm state (a Veraison ``realm-rv`` record): every listed register must match.

    Registers it does not list are not compared (the rvstore's REMs and RPV are optional).
    """

    registers: Mapping[str, frozenset[bytes]]

    def __post_init__(self) -> None:
        if not self.registers:
            raise ValueError("a realm reference must constrain at least one register")
        for name, values in self.registers.items():
            if name not in REGISTER_NAMES or not values:
                raise ValueError(f"bad register constraint {name!r}")
        object.__setattr__(
            self,
            "registers",
            MappingProxyType({n: frozenset(v) for n, v in self.registers.items()}),
        )


@dataclass(frozen=True, slots=True)
class CcaPolicy:
    """What the CCA verifier accepts (module docstring for the TOML form).

    ``platforms`` and ``realms`` are alternatives: a token must match one platform record and one
    realm record, each as a whole; an empty tuple does not constrain (and is reported so).
    """

    accepted_lifecycles: frozenset[str] = DEFAULT_LIFECYCLES
    instance_ids: frozenset[bytes] = frozenset()
    platforms: tuple[PlatformReference, ...] = ()
    realms: tuple[RealmReference, ...] = ()

    def __post_init__(self) -> None:
        states = frozenset(self.accepted_lifecycles)
        if not states or not states <= set(LIFECYCLE_NAMES) or states & NEVER_ACCEPTED:
            raise ValueError(f"bad accepted lifecycles: {sorted(states)}")
        platforms, realms = tuple(self.platforms), tuple(self.realms)
        if len(platforms) > MAX_REFERENCE_RECORDS or len(realms) > MAX_REFERENCE_RECORDS:
            raise ValueError(f"more than {MAX_REFERENCE_RECORDS} reference records")
        if sum(len(p.sw_components) for p in platforms) > MAX_TOTAL_SW_REFERENCES:
            raise ValueError(f"more than {MAX_TOTAL_SW_REFERENCES} sw-component references")
        object.__setattr__(self, "accepted_lifecycles", states)
        object.__setattr__(self, "instance_ids", frozenset(self.instance_ids))
        object.__setattr__(self, "platforms", platforms)
        object.__setattr__(self, "realms", realms)

    @property
    def constrains_workload(self) -> bool:
        """Whether the policy names any reference value of the workload (realm records): without one
        it accepts whatever runs on genuine hardware (the client warns at load)."""
        return bool(self.realms)


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


def _platform(table: Mapping[str, Any], where: str, sw_budget: int) -> PlatformReference:
    """One platform record from its keys in ``table`` (the inline form or a [[cca.platforms]])."""

    def ids(name: str, sizes: tuple[int, ...] | None, max_size: int = 0) -> frozenset[bytes]:
        if name not in table:
            return frozenset()
        return _hex_list(table[name], f"{where}.{name}", sizes, max_size)

    sw: tuple[SwReference, ...] = ()
    if "sw_components" in table:
        sw = _sw_references(table["sw_components"], f"{where}.sw_components")
        if len(sw) > sw_budget:
            raise ConfigError(
                f"{where}.sw_components",
                f"at most {MAX_TOTAL_SW_REFERENCES} sw-component references in all platforms",
            )
    return PlatformReference(
        implementation_ids=ids("implementation_ids", (IMPLEMENTATION_ID_SIZE,)),
        platform_configs=ids("platform_configs", None, MAX_CONFIG_SIZE),
        sw_components=sw,
    )


def _realm(section: object, where: str) -> RealmReference:
    """One realm record: a table of register = [hex values] ([cca.registers] or a [[cca.realms]])."""
    if not isinstance(section, Mapping):
        raise ConfigError(where, "must be a table of register = [hex values]")
    if not section:
        # Like [software.measurements]: an empty table would compare nothing yet read as a
        # realm constraint.
        raise ConfigError(where, f"no registers: list at least one of {', '.join(REGISTER_NAMES)}")
    registers: dict[str, frozenset[bytes]] = {}
    for name, values in section.items():
        if name not in REGISTER_NAMES:
            raise ConfigError(
                f"{where}.{name}", f"unknown register (one of: {', '.join(REGISTER_NAMES)})"
            )
        sizes = (PERSONALIZATION_SIZE,) if name == "rpv" else DIGEST_SIZES
        registers[name] = _hex_list(values, f"{where}.{name}", sizes)
    return RealmReference(registers)


def _records(value: object, key: str, what: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ConfigError(key, f"must be a non-empty array of tables ([[{key}]]), one per {what}")
    if len(value) > MAX_REFERENCE_RECORDS:
        raise ConfigError(key, f"at most {MAX_REFERENCE_RECORDS} records, got {len(value)}")
    for i, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{key}[{i}]", "must be a table")
    return value


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

    instance_ids: frozenset[bytes] = frozenset()
    if "instance_ids" in table:
        instance_ids = _hex_list(
            table["instance_ids"], f"{prefix}.instance_ids", (INSTANCE_ID_SIZE,)
        )

    # Platform records: [[cca.platforms]], or the inline keys as one record (never both: which
    # would the inline values belong to?).
    inline = [name for name in _PLATFORM_KEYS if name in table]
    platforms: list[PlatformReference] = []
    budget = MAX_TOTAL_SW_REFERENCES
    if "platforms" in table:
        if inline:
            raise ConfigError(
                f"{prefix}.{inline[0]}",
                f"give platform reference values either in [[{prefix}.platforms]] or inline, "
                "not both",
            )
        for i, entry in enumerate(_records(table["platforms"], f"{prefix}.platforms", "platform")):
            where = f"{prefix}.platforms[{i}]"
            for name in entry:
                if name not in _PLATFORM_KEYS:
                    raise ConfigError(
                        f"{where}.{name}",
                        f"unknown key (expected one of: {', '.join(_PLATFORM_KEYS)})",
                    )
            if not entry:
                raise ConfigError(
                    where, f"an empty platform record: give {', '.join(_PLATFORM_KEYS)}"
                )
            platforms.append(_platform(entry, where, budget))
            budget -= len(platforms[-1].sw_components)
    elif inline:
        platforms.append(_platform(table, prefix, budget))

    # Realm records: [[cca.realms]], or [cca.registers] as one record (never both).
    realms: list[RealmReference] = []
    if "realms" in table:
        if "registers" in table:
            raise ConfigError(
                f"{prefix}.registers",
                f"give realm reference values either in [[{prefix}.realms]] or in "
                f"[{prefix}.registers], not both",
            )
        for i, entry in enumerate(_records(table["realms"], f"{prefix}.realms", "realm")):
            realms.append(_realm(entry, f"{prefix}.realms[{i}]"))
    elif "registers" in table:
        realms.append(_realm(table["registers"], f"{prefix}.registers"))

    return CcaPolicy(
        accepted_lifecycles=frozenset(states),
        instance_ids=instance_ids,
        platforms=tuple(platforms),
        realms=tuple(realms),
    )
