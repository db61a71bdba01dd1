"""The appraisal policy model and its validating parser (sans-IO).

A policy says which evidence a relying party accepts: per evidence format, the trust anchors and the
reference values. This module turns an already-parsed TOML document into frozen dataclasses and
rejects anything it does not understand, naming the dotted key (``software.measurements.kernel[1]``)
so that an operator can fix the file. It never opens a file or a socket: key files are read through
the injected ``read_file`` callable (``atls_proxy.ops.policyfile.load_policy`` supplies one).

Layout::

    [policy]
    id = "dev-policy"                       # optional, default "atls-proxy:policy"

    [software]                              # the SIMULATED software attester
    allow_simulated = false                 # default false: software evidence is always rejected
    platform_keys = ["platform.pem"]        # PEM SubjectPublicKeyInfo files (P-256)

    [software.measurements]                 # each one must be present and match a listed digest
    firmware = ["<hex sha256>", "<hex>"]
    kernel = ["<hex>"]

Each evidence format gets one optional section beside ``software`` (``tdx``, ``snp``, ``cca``,
``tpm`` later); a ``Policy`` field of the same name is None when its section is absent, and evidence
of a format without a section is rejected.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from atls_proxy.attest.software import (
    MAX_MEASUREMENTS,
    MEASUREMENT_DIGEST_LENGTHS,
    check_measurement_name,
    spki_der,
)
from atls_proxy.errors import ConfigError
from atls_proxy.expat.tiers import Tier

DEFAULT_POLICY_ID = "atls-proxy:policy"
# The policy id travels in every appraisal (EAR ear.appraisal-policy-id) and in logs: 256
# characters is ample for a URI or a name with a version, and bounds what each report carries.
MAX_POLICY_ID_LENGTH = 256
# Each configured platform key is tried in turn on every piece of software evidence: 16 covers key
# rotation across a fleet of development hosts while bounding the ECDSA work one evidence can cause.
MAX_PLATFORM_KEYS = 16
# A P-256 SubjectPublicKeyInfo PEM is 178 bytes; 16 KiB leaves room for comments and still stops a
# path that names the wrong (large) file before it is parsed.
MAX_KEY_FILE_SIZE = 16 * 1024
# Accepted digests per measurement: a rolling upgrade keeps a few generations; 64 is generous and
# bounds the "expected" string of a report.
MAX_ACCEPTED_DIGESTS = 64

_HEX_RE = re.compile(r"[0-9A-Fa-f]+")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")

# Hardware evidence formats: each has a package atls_proxy.verify.<fmt> with parse_<fmt>_policy().
HARDWARE_FORMATS = ("tdx", "snp", "cca", "tpm")
_TOP_LEVEL_KEYS = ("policy", "software", "freshness", "trust", *HARDWARE_FORMATS)
# The tables that make a TOML file a policy (ops/config.py: detect_config_kind).
POLICY_SECTIONS = _TOP_LEVEL_KEYS
_TRUST_KEYS = ("collateral", "certs")
_FRESHNESS_KEYS = ("tiers", "max_epoch_age")
# The cached tier's evidence is as old as its epoch; five minutes unless the policy says otherwise.
DEFAULT_MAX_EPOCH_AGE = 300.0
MAX_EPOCH_AGE = 7 * 86400.0
_POLICY_KEYS = ("id",)
_SOFTWARE_KEYS = ("allow_simulated", "platform_keys", "measurements", "instances")


@dataclass(frozen=True, slots=True)
class SoftwarePolicy:
    """What the software (SIMULATED) evidence verifier accepts."""

    allow_simulated: bool
    platform_keys: tuple[ec.EllipticCurvePublicKey, ...]
    # One display name per key (the file name as written in the policy), same order.
    platform_key_names: tuple[str, ...]
    # Measurement name -> accepted digests. Every listed measurement must be present and match.
    measurements: Mapping[str, frozenset[bytes]]
    # Optional instance pin: the UEIDs accepted (empty = any instance signed by a trusted key).
    # Defends against diversion to another instance running the same measured software.
    instances: frozenset[bytes] = frozenset()

    def __post_init__(self) -> None:
        if len(self.platform_keys) != len(self.platform_key_names):
            raise ValueError("platform_keys and platform_key_names differ in length")
        for key in self.platform_keys:
            if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
                key.curve, ec.SECP256R1
            ):
                raise ValueError("software platform keys must be P-256 public keys")
        frozen = {name: frozenset(values) for name, values in self.measurements.items()}
        object.__setattr__(self, "platform_keys", tuple(self.platform_keys))
        object.__setattr__(self, "platform_key_names", tuple(self.platform_key_names))
        object.__setattr__(self, "measurements", MappingProxyType(frozen))


# The tiers a client accepts unless its policy names them: not ``cached``, whose connection
# binding rests on the TLS key alone (docs/SECURITY.md: a stolen AIK impersonates the server for
# as long as it issues epochs); a policy opts in by listing it.
DEFAULT_TIERS = frozenset({Tier.STRICT, Tier.BATCHED})


@dataclass(frozen=True, slots=True)
class Freshness:
    """Which freshness tiers (docs/PROTOCOL.md §5.3) a client accepts, and the oldest epoch."""

    tiers: frozenset[Tier] = DEFAULT_TIERS
    max_epoch_age: float = DEFAULT_MAX_EPOCH_AGE


@dataclass(frozen=True, slots=True)
class Policy:
    """A whole appraisal policy: an id, and one optional section per evidence format."""

    policy_id: str = DEFAULT_POLICY_ID
    software: SoftwarePolicy | None = None
    freshness: Freshness = Freshness()
    # fmt -> that format's parsed policy object (e.g. TdxPolicy), for the formats the policy names.
    hardware: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # fmt -> (collateral folder, certificates folder) as written under [trust.<fmt>]; the I/O side
    # (ops/policyfile.py) resolves and loads them.
    trust_dirs: Mapping[str, tuple[str | None, str | None]] = field(
        default_factory=lambda: MappingProxyType({})
    )


def _key_path(prefix: str, name: str) -> str:
    """``prefix.name`` in TOML dotted-key syntax (quoted when ``name`` is not a bare key)."""
    part = name if _BARE_KEY_RE.fullmatch(name) else '"' + name.replace('"', '\\"') + '"'
    return f"{prefix}.{part}" if prefix else part


class _Parser:
    def __init__(self, read_file: Callable[[str], bytes], source: str) -> None:
        self._read_file = read_file
        self._source = source

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(key, f"{message} (in {self._source})")

    def table(self, value: object, key: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(key or "policy", "must be a table")
        for name in value:
            if not isinstance(name, str) or name not in allowed:
                raise self.error(
                    _key_path(key, str(name)),
                    f"unknown key (expected one of: {', '.join(allowed)})",
                )
        return value

    def policy(self, doc: object) -> Policy:
        top = self.table(doc, "", _TOP_LEVEL_KEYS)
        policy_id = DEFAULT_POLICY_ID
        if "policy" in top:
            section = self.table(top["policy"], "policy", _POLICY_KEYS)
            if "id" in section:
                policy_id = self.policy_id(section["id"])
        if not any(k in top for k in ("software", *HARDWARE_FORMATS)):
            raise self.error(
                "software",
                "missing: the policy has no evidence section ([software], [tdx], [snp], [cca] or "
                "[tpm]), so it would reject all evidence",
            )
        software = self.software(top["software"]) if "software" in top else None
        freshness = self.freshness(top.get("freshness", {}))
        hardware = {fmt: self.hardware(fmt, top[fmt]) for fmt in HARDWARE_FORMATS if fmt in top}
        trust = self.trust(top.get("trust", {}))
        return Policy(
            policy_id=policy_id,
            software=software,
            freshness=freshness,
            hardware=MappingProxyType(hardware),
            trust_dirs=MappingProxyType(trust),
        )

    def hardware(self, fmt: str, value: object) -> Any:
        if not isinstance(value, Mapping):
            raise self.error(fmt, "must be a table")
        module = importlib.import_module(f"atls_proxy.verify.{fmt}")
        return getattr(module, f"parse_{fmt}_policy")(value, fmt, self._read_file)

    def trust(self, value: object) -> dict[str, tuple[str | None, str | None]]:
        section = self.table(value, "trust", HARDWARE_FORMATS)
        out: dict[str, tuple[str | None, str | None]] = {}
        for fmt, entry in section.items():
            t = self.table(entry, f"trust.{fmt}", _TRUST_KEYS)
            dirs: list[str | None] = []
            for k in _TRUST_KEYS:
                v = t.get(k)
                if v is not None and (not isinstance(v, str) or not v):
                    raise self.error(f"trust.{fmt}.{k}", "must be a folder name")
                dirs.append(v)
            out[fmt] = (dirs[0], dirs[1])
        return out

    def freshness(self, value: object) -> Freshness:
        section = self.table(value, "freshness", _FRESHNESS_KEYS)
        tiers = section.get("tiers", sorted(t.value for t in DEFAULT_TIERS))
        names = {t.value: t for t in Tier}
        if not isinstance(tiers, list) or not tiers:
            raise self.error("freshness.tiers", f"a non-empty list of: {', '.join(names)}")
        chosen: set[Tier] = set()
        for i, name in enumerate(tiers):
            if not isinstance(name, str) or name not in names:  # a list or table is unhashable
                raise self.error(
                    f"freshness.tiers[{i}]", f"unknown tier {name!r} (one of: {', '.join(names)})"
                )
            chosen.add(names[name])
        age = section.get("max_epoch_age", DEFAULT_MAX_EPOCH_AGE)
        if (
            isinstance(age, bool)
            or not isinstance(age, int | float)
            or not 0 < age <= MAX_EPOCH_AGE
        ):
            raise self.error("freshness.max_epoch_age", f"seconds in (0, {MAX_EPOCH_AGE:g}]")
        return Freshness(frozenset(chosen), float(age))

    def policy_id(self, value: object) -> str:
        if not isinstance(value, str):
            raise self.error("policy.id", "must be a string")
        if not value or len(value) > MAX_POLICY_ID_LENGTH:
            raise self.error("policy.id", f"must be 1..{MAX_POLICY_ID_LENGTH} characters")
        if not value.isprintable():
            raise self.error("policy.id", "must not contain control characters")
        return value

    def software(self, value: object) -> SoftwarePolicy:
        section = self.table(value, "software", _SOFTWARE_KEYS)
        allow = section.get("allow_simulated", False)
        if not isinstance(allow, bool):
            raise self.error("software.allow_simulated", "must be true or false")
        if "platform_keys" not in section:
            raise self.error(
                "software.platform_keys", "required: list the PEM public key files to trust"
            )
        names, keys = self.platform_keys(section["platform_keys"])
        if "measurements" not in section:
            raise self.error(
                "software.measurements",
                "required: a [software.measurements] table with at least one measurement",
            )
        measurements = self.measurements(section["measurements"])
        instances = self.instances(section.get("instances", []))
        return SoftwarePolicy(
            allow_simulated=allow,
            platform_keys=keys,
            platform_key_names=names,
            measurements=measurements,
            instances=instances,
        )

    def instances(self, value: object) -> frozenset[bytes]:
        key = "software.instances"
        if not isinstance(value, list):
            raise self.error(key, "must be a list of hex UEIDs")
        if len(value) > MAX_PLATFORM_KEYS:
            raise self.error(key, f"at most {MAX_PLATFORM_KEYS} instances, got {len(value)}")
        out: set[bytes] = set()
        for index, text in enumerate(value):
            item = f"{key}[{index}]"
            if not isinstance(text, str) or not _HEX_RE.fullmatch(text) or len(text) % 2:
                raise self.error(item, "not a hex UEID")
            # RFC 9711 §4.2.1: a UEID is 7..33 bytes.
            if not 7 <= len(text) // 2 <= 33:
                raise self.error(item, "a UEID is 7..33 bytes")
            out.add(bytes.fromhex(text))
        return frozenset(out)

    def platform_keys(
        self, value: object
    ) -> tuple[tuple[str, ...], tuple[ec.EllipticCurvePublicKey, ...]]:
        key = "software.platform_keys"
        if not isinstance(value, list):
            raise self.error(key, "must be a list of file names")
        if not value:
            raise self.error(key, "empty list: name at least one platform public key file")
        if len(value) > MAX_PLATFORM_KEYS:
            raise self.error(key, f"at most {MAX_PLATFORM_KEYS} keys, got {len(value)}")
        names: list[str] = []
        keys: list[ec.EllipticCurvePublicKey] = []
        seen: dict[bytes, int] = {}
        for index, name in enumerate(value):
            item = f"{key}[{index}]"
            if not isinstance(name, str) or not name:
                raise self.error(item, "must be a non-empty file name")
            public = self.load_key(item, name)
            der = spki_der(public)
            if der in seen:
                raise self.error(item, f"same key as {key}[{seen[der]}]")
            seen[der] = index
            names.append(name)
            keys.append(public)
        return tuple(names), tuple(keys)

    def load_key(self, item: str, name: str) -> ec.EllipticCurvePublicKey:
        try:
            data = self._read_file(name)
        except OSError as exc:
            raise self.error(item, f"cannot read {name!r}: {exc.strerror or exc}") from exc
        if len(data) > MAX_KEY_FILE_SIZE:
            raise self.error(item, f"{name!r} is larger than {MAX_KEY_FILE_SIZE} bytes")
        if b"PRIVATE KEY-----" in data:
            raise self.error(
                item,
                f"{name!r} holds a private key; the policy needs only the public key "
                "(openssl pkey -pubout)",
            )
        try:
            public = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise self.error(
                item, f"{name!r} is not a PEM SubjectPublicKeyInfo public key ({exc})"
            ) from exc
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
            public.curve, ec.SECP256R1
        ):
            raise self.error(item, f"{name!r} is not a P-256 key (software evidence uses ES256)")
        return public

    def measurements(self, value: object) -> dict[str, frozenset[bytes]]:
        key = "software.measurements"
        if not isinstance(value, Mapping):
            raise self.error(key, "must be a table of name = [hex digests]")
        if not value:
            raise self.error(key, "no measurements: list at least one")
        if len(value) > MAX_MEASUREMENTS:
            raise self.error(key, f"at most {MAX_MEASUREMENTS} measurements, got {len(value)}")
        out: dict[str, frozenset[bytes]] = {}
        for name, accepted in value.items():
            entry = _key_path(key, str(name))
            problem = check_measurement_name(name)
            if problem:
                raise self.error(entry, problem)
            out[name] = self.digests(entry, accepted)
        return out

    def digests(self, entry: str, value: object) -> frozenset[bytes]:
        if not isinstance(value, list):
            raise self.error(entry, "must be a list of hex digests")
        if not value:
            raise self.error(entry, "empty accepted list: it could never match")
        if len(value) > MAX_ACCEPTED_DIGESTS:
            raise self.error(entry, f"at most {MAX_ACCEPTED_DIGESTS} digests, got {len(value)}")
        out: set[bytes] = set()
        for index, text in enumerate(value):
            item = f"{entry}[{index}]"
            if not isinstance(text, str):
                raise self.error(item, "must be a hex string")
            # bytes.fromhex alone would accept embedded spaces; insist on bare hex digits.
            if not _HEX_RE.fullmatch(text) or len(text) % 2:
                raise self.error(item, "not a hex digest")
            digest = bytes.fromhex(text)
            if len(digest) not in MEASUREMENT_DIGEST_LENGTHS:
                raise self.error(
                    item,
                    f"digest is {len(digest)} bytes; expected 32, 48 or 64 (SHA-256/384/512)",
                )
            out.add(digest)
        return frozenset(out)


def parse_policy(
    doc: Mapping[str, Any], read_file: Callable[[str], bytes], source: str = "policy"
) -> Policy:
    """Validate a parsed policy document and build a ``Policy``.

    ``read_file(name)`` returns the bytes of a file the policy names (the platform keys), as written
    in the document, and raises ``OSError`` when it cannot. ``source`` names the document in error
    messages. Raises ``ConfigError`` whose ``key`` is the dotted key at fault.
    """
    return _Parser(read_file, source).policy(doc)
