"""The ``[tdx]`` policy section: accepted TCB statuses, debug, reference register values (sans-IO).

Layout (all keys optional; the defaults are the safe ones)::

    [tdx]
    accepted_tcb_statuses = ["UpToDate"]          # default: only UpToDate
    out_of_date_grace_until = 2026-03-31T00:00:00Z  # optional: until then OutOfDate counts as
                                                  # UpToDate (OutOfDateConfigurationNeeded as
                                                  # ConfigurationNeeded) before the list applies
    allow_debug = false                           # TD_ATTRIBUTES TUD bits 7:0 (DEBUG) forbidden

    [tdx.registers]                               # each listed register must equal one value
    mrtd = ["<96 hex>", "<96 hex>"]
    rtmr0 = ["<96 hex>"]                          # also rtmr1..3, mrconfigid, mrowner,
                                                  # mrownerconfig, mrservicetd (TD 1.5 bodies)

Registers the policy does not list are reported, not judged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from types import MappingProxyType
from typing import Any

from atls_proxy.errors import ConfigError
from atls_proxy.verify.tdx.quote import REGISTER_SIZE
from atls_proxy.verify.tdx.tcb import REVOKED, TCB_STATUSES, UP_TO_DATE

# Register names a policy may constrain, in report order (TDX DCAP API A.3.2 / A.4.3 fields).
REGISTER_NAMES = (
    "mrtd",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
    "mrconfigid",
    "mrowner",
    "mrownerconfig",
    "mrservicetd",
)
# A rolling upgrade keeps a few generations of images per register; 64 is generous and bounds the
# "expected" string of a report.
MAX_ACCEPTED_VALUES = 64

_KEYS = ("accepted_tcb_statuses", "out_of_date_grace_until", "allow_debug", "registers")
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")


@dataclass(frozen=True, slots=True)
class TdxPolicy:
    """What the TDX verifier accepts (see the module docstring for the TOML form)."""

    accepted_tcb_statuses: frozenset[str] = frozenset({UP_TO_DATE})
    out_of_date_grace_until: datetime | None = None
    allow_debug: bool = False
    registers: Mapping[str, frozenset[bytes]] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        unknown = set(self.accepted_tcb_statuses) - set(TCB_STATUSES)
        if unknown or REVOKED in self.accepted_tcb_statuses or not self.accepted_tcb_statuses:
            raise ValueError(f"bad accepted TCB statuses: {sorted(self.accepted_tcb_statuses)}")
        if self.out_of_date_grace_until is not None and self.out_of_date_grace_until.tzinfo is None:
            raise ValueError("out_of_date_grace_until needs a time zone")
        for name, values in self.registers.items():
            if name not in REGISTER_NAMES or not values:
                raise ValueError(f"bad register constraint {name!r}")
            if any(len(v) != REGISTER_SIZE for v in values):
                raise ValueError(f"register {name!r} values must be {REGISTER_SIZE} bytes")
        object.__setattr__(self, "accepted_tcb_statuses", frozenset(self.accepted_tcb_statuses))
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


def _grace(value: object, key: str) -> datetime:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):  # a bare TOML date: midnight UTC that day
        moment = datetime.combine(value, time(0, 0), tzinfo=UTC)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ConfigError(key, "not an RFC 3339 date-time (2026-03-31T00:00:00Z)") from exc
    else:
        raise ConfigError(key, "must be a TOML date-time with an offset, e.g. 2026-03-31T00:00:00Z")
    if moment.tzinfo is None:
        raise ConfigError(key, "needs a time-zone offset (e.g. a trailing Z)")
    return moment


def _register_values(value: object, key: str) -> frozenset[bytes]:
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
        if len(raw) != REGISTER_SIZE:
            raise ConfigError(item, f"is {len(raw)} bytes; TDX registers are {REGISTER_SIZE}")
        out.add(raw)
    return frozenset(out)


def parse_tdx_policy(
    table: Mapping[str, Any], prefix: str, read_file: Callable[[str], bytes]
) -> TdxPolicy:
    """Validate the ``[tdx]`` table. Raises ``ConfigError("<prefix>.<key>", …)``.

    ``read_file`` is accepted for the common signature; no TDX policy key names a file.
    """
    del read_file
    if not isinstance(table, Mapping):
        raise ConfigError(prefix, "must be a table")
    for name in table:
        if name not in _KEYS:
            raise ConfigError(
                f"{prefix}.{name}", f"unknown key (expected one of: {', '.join(_KEYS)})"
            )

    statuses = table.get("accepted_tcb_statuses", [UP_TO_DATE])
    key = f"{prefix}.accepted_tcb_statuses"
    if not isinstance(statuses, list) or not statuses:
        raise ConfigError(
            key, f"a non-empty list of: {', '.join(s for s in TCB_STATUSES if s != REVOKED)}"
        )
    for i, status in enumerate(statuses):
        if status == REVOKED:
            raise ConfigError(f"{key}[{i}]", "a Revoked TCB is never acceptable")
        if status not in TCB_STATUSES:
            raise ConfigError(
                f"{key}[{i}]",
                f"unknown TCB status {status!r} (one of: {', '.join(TCB_STATUSES[:-1])})",
            )

    grace = None
    if "out_of_date_grace_until" in table:
        grace = _grace(table["out_of_date_grace_until"], f"{prefix}.out_of_date_grace_until")

    allow_debug = table.get("allow_debug", False)
    if not isinstance(allow_debug, bool):
        raise ConfigError(f"{prefix}.allow_debug", "must be true or false")

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
            registers[name] = _register_values(values, f"{reg_key}.{name}")

    return TdxPolicy(
        accepted_tcb_statuses=frozenset(statuses),
        out_of_date_grace_until=grace,
        allow_debug=allow_debug,
        registers=registers,
    )
