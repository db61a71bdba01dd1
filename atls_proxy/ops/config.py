"""Configuration: TOML files for ``serve`` and ``connect``, validated with errors that name the key.

Constructing the dataclasses is cheap and checks nothing. ``load_server_config`` and
``load_client_config`` read a file, validate every key and return frozen dataclasses (uvicorn's
habit). Every problem raises ``ConfigError(key, message)``, where ``key`` is the dotted TOML key
(``server.backend``, ``expat.extension_type``, ``attester.software.measurements.kernel``),
``"config"`` for the file as a whole, or the flag name (``--listen``, ``--backend``, ``--server``)
for command-line overrides.

Rules, in the order they are checked:

* the file is readable, at most 1 MiB, UTF-8 and TOML (the message carries TOML's line/column);
* unknown keys, at any level, are errors, with the closest known key suggested; a table's unknown
  keys are reported before any of its values is checked, so a typo never shows up as a confusing
  "required" error in its own table (tables are checked one after another: an error in
  ``[server]`` is reported before a typo in ``[log]``);
* values have the right TOML type (``true`` is not an integer; ``1`` is not a boolean);
* addresses are ``HOST:PORT``, ``[IPv6]:PORT`` or (where allowed) ``unix:/absolute/path``;
* the backend is loopback or a unix socket unless ``server.allow_remote_backend = true``;
* timeouts are finite seconds in (0, 604800]; ``max_connections`` is 1..1_000_000;
* file paths resolve against the configuration file's folder and must name readable regular files;
* measurements are hex digests of 32, 48 or 64 bytes;
* ``expat.exporter_label`` is 1..249 printable ASCII characters (RFC 8446 §7.1 caps the label of
  ``HKDF-Expand-Label`` at 255 bytes including its "tls13 " prefix, and OpenSSL enforces it);
  ``expat.extension_type`` is 0..65535.

No network I/O happens here and certificates are only checked to exist: ``atls_proxy.tls.context``
parses them. ``config/serve.toml`` and ``config/connect.toml`` list every key with its default.
"""

from __future__ import annotations

import datetime
import difflib
import ipaddress
import logging
import math
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from atls_proxy.attest import configfs as _configfs
from atls_proxy.attest import tpm as _tpm
from atls_proxy.attest.engine import EPOCH_HASHES, REFRESH_AHEAD
from atls_proxy.attest.software import (
    MAX_MEASUREMENTS,
    MEASUREMENT_DIGEST_LENGTHS,
    check_measurement_name,
)
from atls_proxy.errors import ConfigError
from atls_proxy.expat.binding import DEFAULT_EXPORTER_LABEL
from atls_proxy.expat.messages import REQUEST_AND_ENTRY_EXTENSIONS
from atls_proxy.expat.profile import DEFAULT_EXTENSION_TYPE
from atls_proxy.ops.files import read_capped
from atls_proxy.untrusted import toml_loads

log = logging.getLogger(__name__)

# A configuration file larger than this is a mistake (a key or a log pointed at by accident).
MAX_CONFIG_FILE = 1024 * 1024
# Longest address text accepted: a 253-byte DNS name or a unix path (below) plus the port.
MAX_ADDRESS_LENGTH = 512
# Linux sun_path holds 108 bytes including the terminating NUL (macOS: 104).
MAX_UNIX_PATH_BYTES = 107
# RFC 8446 §7.1: HkdfLabel.label is opaque<7..255> and holds "tls13 " + label, so an exporter
# label is at most 249 bytes (OpenSSL's TLS13_MAX_LABEL_LEN).
MAX_EXPORTER_LABEL = 249
# Upper bound of every timeout: a week. Catches unit mistakes and keeps every wait bounded.
MAX_TIMEOUT = 7 * 86400.0
MAX_CONNECTIONS = 1_000_000
LOG_LEVELS = ("debug", "info", "warning", "error")

DEFAULT_SERVER_LISTEN = "127.0.0.1:8443"
DEFAULT_CLIENT_LISTEN = "127.0.0.1:9443"

PlainClients = Literal["refuse", "serve-unattested"]
_PLAIN_CLIENTS: dict[str, PlainClients] = {
    "refuse": "refuse",
    "serve-unattested": "serve-unattested",
}


# --- addresses ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint (``host``/``port``) or a unix socket (``path``)."""

    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def is_loopback(self) -> bool:
        """True for unix sockets, 127.0.0.0/8, ::1 (also IPv4-mapped) and the name ``localhost``."""
        if self.kind == "unix":
            return True
        if self.host.lower().rstrip(".") == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def parse_server_name(name: str, key: str) -> str:
    """``name`` as the server name to check (``client.server_name``, ``--server-name``): a DNS
    name or an IP literal, an IPv6 one with or without brackets, which are removed. Raises
    ``ConfigError(key, ...)`` for anything else, brackets included that do not pair ("[::1") or
    enclose something other than an IPv6 address ("[example.com]"), as in addresses."""
    if name.startswith("[") and name.endswith("]"):
        host = name[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                key, f"{host!r} in brackets is not an IPv6 address (expected a DNS name or an IP)"
            ) from None
        return host
    problem = _host_problem(name)
    if problem:
        raise ConfigError(key, f"{problem} (expected a DNS name or an IP)")
    return name


def _host_problem(host: str) -> str | None:
    """Why ``host`` is neither an IP literal nor a DNS name, or None if it is one of them."""
    if not host:
        return "the host is empty"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not name.isascii():
        return f"{host!r} is not ASCII; write an internationalised name in its xn-- (A-label) form"
    if len(name) > 253:
        return "a DNS name is at most 253 characters"
    labels = name.split(".")
    if not all(_DNS_LABEL.fullmatch(label) for label in labels):
        return f"{host!r} is neither an IP address nor a valid DNS name"
    if labels[-1].isdigit():
        return f"{host!r} is not a valid IPv4 address"
    return None


def _port(text: str, key: str, address: str, allow_zero: bool) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ConfigError(key, f"the port of {address!r} must be a number, got {text!r}")
    port = int(text)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ConfigError(key, f"port {port} is outside {low}..65535")
    return port


def parse_address(
    text: object, key: str, allow_unix: bool = True, *, allow_port_zero: bool = False
) -> Address:
    """Parse ``HOST:PORT``, ``[IPv6]:PORT`` or ``unix:/absolute/path``.

    ``HOST`` is an IPv4 address or a DNS name; IPv6 literals go in brackets. Port 0 ("any free
    port") is accepted only with ``allow_port_zero`` (tests). Raises ``ConfigError(key, ...)``.
    """
    if not isinstance(text, str):
        raise ConfigError(
            key, f'expected an address string such as "127.0.0.1:8443", got {_type_name(text)}'
        )
    if not text:
        raise ConfigError(key, 'empty address; expected HOST:PORT such as "127.0.0.1:8443"')
    if len(text) > MAX_ADDRESS_LENGTH:
        raise ConfigError(key, f"address is longer than {MAX_ADDRESS_LENGTH} characters")
    if text.startswith("unix:"):
        if not allow_unix:
            raise ConfigError(
                key, f"a unix socket is not allowed here; use HOST:PORT, not {text!r}"
            )
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ConfigError(key, f"a unix socket path must be absolute (unix:/...): {text!r}")
        if "\0" in path:
            raise ConfigError(key, "a unix socket path must not contain NUL characters")
        if path.endswith("/"):
            raise ConfigError(key, f"{path!r} names a folder, not a socket")
        if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
            raise ConfigError(
                key, f"a unix socket path is at most {MAX_UNIX_PATH_BYTES} bytes: {path!r}"
            )
        return Address("unix", path=path)
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ConfigError(key, f"expected [IPv6]:PORT, got {text!r}")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(key, f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(key, f"expected HOST:PORT, got {text!r} (no port)")
        if not host:
            raise ConfigError(
                key,
                f"expected HOST:PORT, got {text!r} (no host; 0.0.0.0 or [::] means every interface)",
            )
        if ":" in host:
            raise ConfigError(key, f"write an IPv6 address in brackets: [{host}]:{port_text}")
        problem = _host_problem(host)
        if problem:
            raise ConfigError(key, problem)
    return Address("tcp", host=host, port=_port(port_text, key, text, allow_port_zero))


# --- the configuration model ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpatConfig:
    """Interop values the Expat drafts leave open (see ``atls_proxy.expat.profile``)."""

    # "EXPORTER-cmw-attestation" (expat-04); "Attestation" for expat-02/-03 peers.
    exporter_label: bytes = DEFAULT_EXPORTER_LABEL
    # cmw_attestation code point: private use until IANA assigns one.
    extension_type: int = DEFAULT_EXTENSION_TYPE
    # RFC 9261 hashes the request with its handshake header; False = draft-era/Fizz form.
    request_header_in_transcript: bool = True


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. ``connect`` is the backend connect (server) or the server connect (client)."""

    handshake: float = 10.0
    attestation: float = 10.0
    idle: float = 300.0
    connect: float = 5.0


@dataclass(frozen=True, slots=True)
class SoftwareAttesterConfig:
    """The SIMULATED attester: a platform key file and the measurements it reports."""

    platform_key: Path
    measurements: Mapping[str, bytes]
    # Simulated quote latency (seconds); quotes are serialised like a TEE's. 0 = instant.
    quote_latency: float = 0.0


@dataclass(frozen=True, slots=True)
class ConfigfsTsmAttesterConfig:
    """The configfs-tsm attester (TDX, SEV-SNP, CCA guests): ``ConfigfsTsmAttester`` arguments."""

    root: Path = _configfs.DEFAULT_ROOT
    # The TSM provider the guest must have (checked at start-up); None: any known provider.
    provider: str | None = None
    # SEV-SNP VMPL to request (0..3); None: privlevel_floor when above 0, else the default.
    privlevel: int | None = None
    timeout: float = _configfs.DEFAULT_TIMEOUT
    retries: int = 3
    entry_prefix: str = _configfs.DEFAULT_ENTRY_PREFIX


@dataclass(frozen=True, slots=True)
class TpmAttesterConfig:
    """The TPM attester: ``TpmAttester`` arguments (docs/ATTESTERS.md)."""

    tcti: str = "device:/dev/tpmrm0"
    # Persistent AK handle (0x81000000..0x817FFFFF); None: a primary AK made at start-up.
    ak_handle: int | None = None
    # With ak_handle: create the AK and make it persistent there when the handle is empty.
    create_ak: bool = False
    hierarchy: _tpm.Hierarchy = "endorsement"
    ak_algorithm: _tpm.AkAlgorithm = "ecc-p256"
    pcrs: tuple[int, ...] = _tpm.DEFAULT_PCRS
    pcr_bank: str = _tpm.DEFAULT_PCR_BANK
    timeout: float = _tpm.DEFAULT_TIMEOUT


AttesterKind = Literal["software", "configfs-tsm", "tpm"]
ATTESTER_KINDS: tuple[AttesterKind, ...] = ("software", "configfs-tsm", "tpm")


@dataclass(frozen=True, slots=True)
class AttesterConfig:
    kind: AttesterKind = "software"
    software: SoftwareAttesterConfig | None = None
    configfs_tsm: ConfigfsTsmAttesterConfig | None = None
    tpm: TpmAttesterConfig | None = None
    # Freshness tier (docs/PROTOCOL.md §5.3) and the evidence engine's limits.
    tier: Literal["strict", "batched", "cached"] = "strict"
    epoch_seconds: float = 300.0
    quote_timeout: float = 10.0
    max_waiters: int = 4096


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"  # debug | info | warning | error
    # auto: JSON lines when stderr is not a terminal, human-readable text on a terminal.
    format: Literal["auto", "json", "text"] = "auto"


@dataclass(frozen=True, slots=True)
class OpsConfig:
    """Operations (docs/OPERATIONS.md): the admin listener, drain and reload."""

    admin: Address | None = None  # [admin] listen; off unless set
    drain_timeout: float = 30.0  # SIGTERM: how long open connections may take to finish
    reload_interval: float = 0.0  # seconds between checks for changed files; 0 = SIGHUP only


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``atls-proxy serve``: attested TLS listener in front of a plaintext backend."""

    listen: Address
    backend: Address
    certificate: Path
    private_key: Path
    plain_clients: PlainClients = "refuse"
    # How long to wait for a client's first bytes before treating it as plain (serve-unattested).
    plain_sniff_timeout: float = 2.0
    # The backend must be loopback or unix unless true (ghostunnel's --unsafe-target idea).
    allow_remote_backend: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 1024
    expat: ExpatConfig = field(default_factory=ExpatConfig)
    attester: AttesterConfig = field(default_factory=AttesterConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    source: Path | None = None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """``atls-proxy connect`` / ``attest``: local listener forwarding to an attested server."""

    listen: Address
    server: Address
    server_name: str
    ca: Path | None
    policy: Path
    verify_pki: bool = True  # False = INSECURE: no chain or hostname check
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 1024
    expat: ExpatConfig = field(default_factory=ExpatConfig)
    log: LogConfig = field(default_factory=LogConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    source: Path | None = None


# --- reading ------------------------------------------------------------------------------------

_SERVER_ROOT = ("server", "expat", "attester", "log", "admin")
_CLIENT_ROOT = ("client", "expat", "log", "admin")
_ADMIN_KEYS = ("listen",)
_OPS_KEYS = ("drain_timeout", "reload_interval")
_TIMEOUT_KEYS = ("handshake_timeout", "attestation_timeout", "idle_timeout")
_SERVER_KEYS = (
    "listen",
    "backend",
    "certificate",
    "private_key",
    "plain_clients",
    "plain_sniff_timeout",
    "allow_remote_backend",
    *_TIMEOUT_KEYS,
    "backend_connect_timeout",
    "max_connections",
    *_OPS_KEYS,
)
_CLIENT_KEYS = (
    "listen",
    "server",
    "server_name",
    "ca",
    "verify_pki",
    "policy",
    *_TIMEOUT_KEYS,
    "connect_timeout",
    "max_connections",
    *_OPS_KEYS,
)
_EXPAT_KEYS = ("exporter_label", "extension_type", "request_header_in_transcript")
_ATTESTER_KEYS = ("kind", "software", "tier", "epoch_seconds", "quote_timeout", "max_waiters")
_SOFTWARE_KEYS = ("platform_key", "measurements", "simulated_quote_ms")
# The hardware attesters' tables beside [attester.software] (documented in docs/ATTESTERS.md and
# config/serve-tpm.toml rather than in config/serve.toml, which shows the development setup).
_ATTESTER_TABLES = {"software": "software", "configfs-tsm": "configfs_tsm", "tpm": "tpm"}
_CONFIGFS_TSM_KEYS = ("root", "provider", "privlevel", "timeout", "retries", "entry_prefix")
_TPM_KEYS = (
    "tcti",
    "ak_handle",
    "create_ak",
    "hierarchy",
    "ak_algorithm",
    "pcrs",
    "pcr_bank",
    "timeout",
)
# A TCTI string: a TCTI name or library, optionally ":" and its configuration (tpm2-tools form).
_TCTI_RE = re.compile(r"[A-Za-z0-9_.+/-]{1,128}(?::[\x20-\x7e]{0,255})?")
_LOG_KEYS = ("level", "format")


def _type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return "a date/time"
    return type(value).__name__


def _read_toml(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Parse the file; return the document and the folder relative paths resolve against."""
    p = Path(path)
    try:
        raw = read_capped(p, MAX_CONFIG_FILE)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {p}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_FILE:
        raise ConfigError("config", f"{p} is larger than {MAX_CONFIG_FILE} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("config", f"{p} is not UTF-8 text: {exc}") from None
    try:
        data = toml_loads(text)
    except ValueError as exc:
        # tomllib's message ends with "(at line L, column C)". A plain ValueError (not a
        # TOMLDecodeError) is an integer of more digits than int() converts (sys.int_info).
        raise ConfigError("config", f"{p} is not valid TOML: {exc}") from None
    # Not resolve(): a config reached through a symlink (a Kubernetes ConfigMap mount) keeps its
    # folder, so relative paths do not point into a versioned directory that later disappears.
    return data, p.absolute().parent


class _Table:
    """One TOML table. Unknown keys are rejected at once; typed getters name the dotted key."""

    def __init__(self, data: object, prefix: str, base: Path, known: Iterable[str] | None) -> None:
        if not isinstance(data, dict):
            raise ConfigError(prefix, f"expected a table, got {_type_name(data)}")
        self.data: dict[str, Any] = data
        self.prefix = prefix
        self.base = base
        self.known = tuple(known) if known is not None else None
        if self.known is not None:
            for name in data:
                if name not in self.known:
                    hint = difflib.get_close_matches(name, self.known, n=1)
                    extra = f"; did you mean {hint[0]!r}?" if hint else ""
                    listed = ", ".join(self.known)
                    raise ConfigError(self.key(name), f"unknown key{extra} (known: {listed})")

    def key(self, name: str) -> str:
        """``prefix.name`` in TOML dotted-key syntax (quoted when ``name`` is not a bare key)."""
        if _BARE_KEY.fullmatch(name):
            part = name
        else:
            part = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{self.prefix}.{part}" if self.prefix else part

    def require_tables(self) -> None:
        """Every key present must hold a table (used at the root: ``log = "debug"`` is wrong)."""
        for name, value in self.data.items():
            if not isinstance(value, dict):
                raise ConfigError(
                    self.key(name), f"expected a table ([{name}]), got {_type_name(value)}"
                )

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str) -> Any:
        assert self.known is None or name in self.known, name
        return self.data.get(name)

    def table(self, name: str, known: Iterable[str] | None) -> _Table:
        value = self.get(name)
        return _Table({} if value is None else value, self.key(name), self.base, known)

    def string(self, name: str, default: str | None = None, *, required: str = "") -> str | None:
        """The string at ``name``; ``required`` is the explanation given when it is missing."""
        v = self.get(name)
        if v is None:
            if required:
                raise ConfigError(self.key(name), f"required: {required}")
            return default
        if not isinstance(v, str):
            raise ConfigError(self.key(name), f"expected a string, got {_type_name(v)}")
        return v

    def boolean(self, name: str, default: bool) -> bool:
        v = self.get(name)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise ConfigError(self.key(name), f"expected true or false, got {_type_name(v)}")
        return v

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        v = self.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(self.key(name), f"expected an integer, got {_type_name(v)}")
        if not lo <= v <= hi:
            raise ConfigError(self.key(name), f"{v} is outside {lo}..{hi}")
        return v

    def seconds(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        v = self.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(self.key(name), f"expected a number of seconds, got {_type_name(v)}")
        if allow_zero and v == 0:
            return 0.0
        # The range check first: comparing an int with a float is exact whatever its size, while
        # math.isfinite (and float) raise OverflowError for an int beyond the float range, which
        # tomllib accepts (NaN and infinities fail the range check as well).
        if not 0 < v <= MAX_TIMEOUT or not math.isfinite(v):
            least = "0 or more" if allow_zero else "greater than 0"
            big = isinstance(v, int) and abs(v) >= 10**20
            shown = f"an integer of {len(str(abs(v)))} digits" if big else repr(v)
            raise ConfigError(
                self.key(name),
                f"expected seconds {least} and at most {MAX_TIMEOUT:g}, got {shown}",
            )
        return float(v)

    def file(self, name: str, *, required: str = "", secret: bool = False) -> Path | None:
        """A path relative to the config file's folder that must be a readable regular file;
        a ``secret`` (a private key) readable by every user or writable by others is warned
        about (the TLS key is also the cached tier's AIK: whoever reads it can impersonate the
        server)."""
        v = self.string(name, required=required)
        if v is None:
            return None
        key = self.key(name)
        if not v:
            raise ConfigError(key, "expected a file path, got an empty string")
        if "\0" in v:
            raise ConfigError(key, "a file path must not contain NUL characters")
        p = Path(v)
        p = p if p.is_absolute() else self.base / p
        try:
            st = p.stat()
        except FileNotFoundError:
            raise ConfigError(key, f"file not found: {p}") from None
        except OSError as exc:
            raise ConfigError(key, f"cannot access {p}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(key, f"not a regular file: {p}")
        if not os.access(p, os.R_OK):
            raise ConfigError(key, f"file not readable by this process: {p}")
        if secret and st.st_mode & 0o026:
            log.warning(
                "%s: the private key %s has mode %04o: %s; make it 0600 (or 0640 for a group)",
                key,
                p,
                stat.S_IMODE(st.st_mode),
                "writable by others" if st.st_mode & 0o022 else "readable by every user",
            )
        return p


def _timeouts(t: _Table, connect_key: str) -> Timeouts:
    d = Timeouts()
    return Timeouts(
        handshake=t.seconds("handshake_timeout", d.handshake),
        attestation=t.seconds("attestation_timeout", d.attestation),
        idle=t.seconds("idle_timeout", d.idle),
        connect=t.seconds(connect_key, d.connect),
    )


def _expat(root: _Table) -> ExpatConfig:
    t = root.table("expat", _EXPAT_KEYS)
    d = ExpatConfig()
    label = t.string("exporter_label", d.exporter_label.decode("ascii"))
    assert label is not None
    if (
        not label
        or len(label) > MAX_EXPORTER_LABEL
        or not label.isascii()
        or not label.isprintable()
    ):
        raise ConfigError(
            t.key("exporter_label"),
            f"expected 1..{MAX_EXPORTER_LABEL} printable ASCII characters, got {label!r}",
        )
    ext = t.integer("extension_type", d.extension_type, 0, 0xFFFF)
    assert ext is not None
    if ext in REQUEST_AND_ENTRY_EXTENSIONS:
        raise ConfigError(
            t.key("extension_type"),
            f"{ext} is {REQUEST_AND_ENTRY_EXTENSIONS[ext]}, which authenticator requests and certificate "
            "entries already carry (RFC 8446 §4.2): cmw_attestation needs a code point of its own",
        )
    return ExpatConfig(
        exporter_label=label.encode("ascii"),
        extension_type=ext,
        request_header_in_transcript=t.boolean(
            "request_header_in_transcript", d.request_header_in_transcript
        ),
    )


def _log(root: _Table) -> LogConfig:
    t = root.table("log", _LOG_KEYS)
    level = t.string("level", "info")
    assert level is not None
    if level.lower() not in LOG_LEVELS:
        raise ConfigError(t.key("level"), f"expected one of {', '.join(LOG_LEVELS)}, got {level!r}")
    fmt = t.string("format", "auto")
    if fmt not in ("auto", "json", "text"):
        raise ConfigError(t.key("format"), f'expected "auto", "json" or "text", got {fmt!r}')
    return LogConfig(level=level.lower(), format=fmt)  # type: ignore[arg-type]


def _ops(root: _Table, section: _Table, admin: str | None) -> OpsConfig:
    """[admin] listen (or the --admin flag), and the section's drain/reload keys."""
    a = root.table("admin", _ADMIN_KEYS)
    text = admin if admin is not None else a.string("listen")
    key = "--admin" if admin is not None else a.key("listen")
    addr = None if text is None else parse_address(text, key, allow_unix=False)
    drain = section.seconds("drain_timeout", 30.0)
    reload_every = section.seconds("reload_interval", 0.0, allow_zero=True)
    if reload_every and reload_every < 1:
        raise ConfigError(
            section.key("reload_interval"), "at least 1 s (or 0: reload on SIGHUP only)"
        )
    return OpsConfig(admin=addr, drain_timeout=drain, reload_interval=reload_every)


def _hex_digest(value: object, key: str) -> bytes:
    lengths = " or ".join(str(n) for n in sorted(MEASUREMENT_DIGEST_LENGTHS))
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a hex digest string, got {_type_name(value)}")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ConfigError(key, f"not a hex string: {value!r}") from None
    if len(raw) not in MEASUREMENT_DIGEST_LENGTHS:
        raise ConfigError(key, f"a digest is {lengths} bytes, got {len(raw)}")
    return raw


def _choice(t: _Table, name: str, default: str, choices: Iterable[str]) -> str:
    value = t.string(name, default)
    assert value is not None
    if value not in choices:
        listed = ", ".join(f'"{x}"' for x in choices)
        raise ConfigError(t.key(name), f"expected one of {listed}, got {value!r}")
    return value


def _configfs_tsm(t: _Table) -> ConfigfsTsmAttesterConfig:
    d = ConfigfsTsmAttesterConfig()
    root_text = t.string("root", str(d.root))
    assert root_text is not None
    if not root_text.startswith("/") or "\0" in root_text:
        raise ConfigError(t.key("root"), f"expected an absolute folder path, got {root_text!r}")
    provider = t.string("provider")
    if provider is not None and provider not in _configfs.PROVIDER_MEDIA_TYPES:
        known = ", ".join(f'"{x}"' for x in sorted(_configfs.PROVIDER_MEDIA_TYPES))
        raise ConfigError(t.key("provider"), f"expected one of {known}, got {provider!r}")
    privlevel = None
    if t.has("privlevel"):
        privlevel = t.integer("privlevel", 0, 0, _configfs.PRIVLEVEL_MAX)
        if provider not in (None, "sev_guest"):
            raise ConfigError(
                t.key("privlevel"), f'only SEV-SNP (provider "sev_guest") has one, not {provider!r}'
            )
    timeout = t.seconds("timeout", d.timeout)
    if timeout > _configfs.MAX_TIMEOUT:
        raise ConfigError(t.key("timeout"), f"at most {_configfs.MAX_TIMEOUT:g} seconds")
    prefix = t.string("entry_prefix", d.entry_prefix)
    assert prefix is not None
    if not _configfs.ENTRY_PREFIX_RE.fullmatch(prefix):
        raise ConfigError(
            t.key("entry_prefix"),
            f"{prefix!r} must be 1..64 of A-Z a-z 0-9 _ . - starting with a letter or digit "
            "(it names directories under the report folder)",
        )
    return ConfigfsTsmAttesterConfig(
        root=Path(root_text),
        provider=provider,
        privlevel=privlevel,
        timeout=timeout,
        retries=t.integer("retries", d.retries, 0, _configfs.MAX_RETRIES),
        entry_prefix=prefix,
    )


def _tpm_config(t: _Table) -> TpmAttesterConfig:
    d = TpmAttesterConfig()
    tcti = t.string("tcti", d.tcti)
    assert tcti is not None
    if not _TCTI_RE.fullmatch(tcti):
        raise ConfigError(
            t.key("tcti"),
            f'expected a TCTI string such as "device:/dev/tpmrm0" or '
            f'"swtpm:host=127.0.0.1,port=2321", got {tcti!r}',
        )
    ak_handle = None
    if t.has("ak_handle"):
        raw = t.get("ak_handle")
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ConfigError(
                t.key("ak_handle"), f"expected a handle such as 0x81010002, got {_type_name(raw)}"
            )
        try:
            ak_handle = _tpm.parse_handle(raw)
        except ValueError as exc:
            raise ConfigError(t.key("ak_handle"), str(exc)) from None
    create_ak = t.boolean("create_ak", d.create_ak)
    if create_ak and ak_handle is None:
        raise ConfigError(
            t.key("create_ak"), "create_ak makes the AK persistent at ak_handle: set ak_handle"
        )
    pcrs = d.pcrs
    if t.has("pcrs"):
        raw_pcrs = t.get("pcrs")
        key = t.key("pcrs")
        if not isinstance(raw_pcrs, list) or not raw_pcrs:
            raise ConfigError(key, f"expected a non-empty array of PCR indexes, got {raw_pcrs!r}")
        for i, n in enumerate(raw_pcrs):
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < _tpm.PCR_COUNT:
                raise ConfigError(f"{key}[{i}]", f"a PCR index is 0..{_tpm.PCR_COUNT - 1}")
        if len(set(raw_pcrs)) != len(raw_pcrs):
            raise ConfigError(key, "a PCR is listed twice")
        pcrs = tuple(sorted(raw_pcrs))
    timeout = t.seconds("timeout", d.timeout)
    if timeout > _tpm.MAX_TIMEOUT:
        raise ConfigError(t.key("timeout"), f"at most {_tpm.MAX_TIMEOUT:g} seconds")
    return TpmAttesterConfig(
        tcti=tcti,
        ak_handle=ak_handle,
        create_ak=create_ak,
        hierarchy=_choice(t, "hierarchy", d.hierarchy, _tpm.HIERARCHIES),  # type: ignore[arg-type]
        ak_algorithm=_choice(t, "ak_algorithm", d.ak_algorithm, _tpm.AK_ALGORITHMS),  # type: ignore[arg-type]
        pcrs=pcrs,
        pcr_bank=_choice(t, "pcr_bank", d.pcr_bank, ("sha1", "sha256", "sha384", "sha512")),
        timeout=timeout,
    )


def _attester(root: _Table) -> AttesterConfig:
    t = root.table("attester", (*_ATTESTER_KEYS, "configfs_tsm", "tpm"))
    kind = t.string("kind", "software")
    if kind not in ATTESTER_KINDS:
        listed = ", ".join(f'"{k}"' for k in ATTESTER_KINDS)
        raise ConfigError(t.key("kind"), f"unknown attester {kind!r} (available: {listed})")
    for other_kind, table in _ATTESTER_TABLES.items():
        if other_kind != kind and t.has(table):
            raise ConfigError(
                t.key(table),
                f'[attester.{table}] is only read with kind = "{other_kind}" (kind is '
                f'"{kind}"): remove it or change kind',
            )
    tier = t.string("tier", "strict")
    if tier not in ("strict", "batched", "cached"):
        raise ConfigError(t.key("tier"), f"expected 'strict', 'batched' or 'cached', got {tier!r}")
    common: dict[str, Any] = {
        "tier": tier,
        "epoch_seconds": t.seconds("epoch_seconds", 300.0),
        "quote_timeout": t.seconds("quote_timeout", 10.0),
        "max_waiters": t.integer("max_waiters", 4096, 1, 1_000_000),
    }
    epoch, quote = common["epoch_seconds"], common["quote_timeout"]
    # The next epoch is quoted in the current one's last REFRESH_AHEAD, for each suite hash
    # (EPOCH_HASHES), through the one single-flight gate: epochs quoted in the same second come
    # due together, and the last of them may wait for the others' quotes. The window must hold
    # all of them, plus a second of the epoch record's whole-second rounding, or an epoch can
    # expire while its successor is quoted.
    window = len(EPOCH_HASHES) * quote + 1.0
    if tier == "cached" and epoch * REFRESH_AHEAD < window:
        raise ConfigError(
            t.key("epoch_seconds"),
            f"{epoch:g} s is refreshed in its last {epoch * REFRESH_AHEAD:g} s, less than "
            f"{len(EPOCH_HASHES)} quotes of quote_timeout ({quote:g} s) one after the other and "
            f"1 s: use at least {window / REFRESH_AHEAD:g}",
        )
    if kind == "configfs-tsm":
        cfs = _configfs_tsm(t.table("configfs_tsm", _CONFIGFS_TSM_KEYS))
        return AttesterConfig(kind="configfs-tsm", configfs_tsm=cfs, **common)
    if kind == "tpm":
        return AttesterConfig(kind="tpm", tpm=_tpm_config(t.table("tpm", _TPM_KEYS)), **common)
    if not t.has("software"):
        raise ConfigError(
            t.key("software"),
            'required when attester.kind = "software": an [attester.software] table with '
            "platform_key and [attester.software.measurements]",
        )
    sw = t.table("software", _SOFTWARE_KEYS)
    key = sw.file(
        "platform_key", required="the PEM private key of the simulated platform", secret=True
    )
    assert key is not None
    meas = sw.table("measurements", None)
    if len(meas.data) > MAX_MEASUREMENTS:
        raise ConfigError(
            meas.prefix, f"at most {MAX_MEASUREMENTS} measurements, got {len(meas.data)}"
        )
    measurements: dict[str, bytes] = {}
    for name, value in meas.data.items():
        problem = check_measurement_name(name)
        if problem:
            raise ConfigError(meas.key(name), problem)
        measurements[name] = _hex_digest(value, meas.key(name))
    latency_ms = sw.integer("simulated_quote_ms", 0, 0, 60_000)
    return AttesterConfig(
        kind="software",
        software=SoftwareAttesterConfig(key, measurements, latency_ms / 1000.0),
        **common,
    )


def _refuse_other_kind(data: Mapping[str, Any], path: str | Path, want: str) -> None:
    """A connect file passed to serve (or the reverse) gets a plain explanation, not key errors."""
    other = {"server": "client", "client": "server"}[want]
    if want not in data and other in data:
        what = {"server": "serve", "client": "connect"}
        raise ConfigError(
            "config",
            f"{path} is a {what[other]} configuration ([{other}]); "
            f"{what[want]} needs a [{want}] table",
        )


def load_server_config(
    path: str | Path,
    *,
    listen: str | None = None,
    backend: str | None = None,
    admin: str | None = None,
) -> ServerConfig:
    """Read and validate a ``serve`` configuration; ``listen``/``backend`` are flag overrides."""
    data, base = _read_toml(path)
    _refuse_other_kind(data, path, "server")
    root = _Table(data, "", base, _SERVER_ROOT)
    root.require_tables()
    s = root.table("server", _SERVER_KEYS)

    listen_addr = parse_address(
        s.string("listen", DEFAULT_SERVER_LISTEN), s.key("listen"), allow_unix=False
    )
    if listen is not None:
        listen_addr = parse_address(listen, "--listen", allow_unix=False)

    file_backend = s.string(
        "backend",
        required=""
        if backend is not None
        else "the address authenticated traffic is forwarded to (HOST:PORT or unix:/path)",
    )
    backend_addr = None if file_backend is None else parse_address(file_backend, s.key("backend"))
    backend_key = s.key("backend")
    if backend is not None:
        backend_addr, backend_key = parse_address(backend, "--backend"), "--backend"
    assert backend_addr is not None

    plain = s.string("plain_clients", "refuse")
    assert plain is not None
    if plain not in _PLAIN_CLIENTS:
        raise ConfigError(
            s.key("plain_clients"), f'expected "refuse" or "serve-unattested", got {plain!r}'
        )
    allow_remote = s.boolean("allow_remote_backend", False)
    if not allow_remote and not backend_addr.is_loopback():
        raise ConfigError(
            backend_key,
            f"{backend_addr} is neither loopback nor a unix socket, so decrypted traffic would "
            "leave this machine in plaintext; set server.allow_remote_backend = true if that is "
            "really intended",
        )
    cert = s.file("certificate", required="the PEM certificate chain of the TLS listener")
    key = s.file("private_key", required="the PEM private key of the certificate", secret=True)
    assert cert is not None and key is not None
    return ServerConfig(
        listen=listen_addr,
        backend=backend_addr,
        certificate=cert,
        private_key=key,
        plain_clients=_PLAIN_CLIENTS[plain],
        plain_sniff_timeout=s.seconds("plain_sniff_timeout", 2.0),
        allow_remote_backend=allow_remote,
        timeouts=_timeouts(s, "backend_connect_timeout"),
        max_connections=s.integer("max_connections", 1024, 1, MAX_CONNECTIONS),
        expat=_expat(root),
        attester=_attester(root),
        log=_log(root),
        ops=_ops(root, s, admin),
        source=Path(path),
    )


def load_client_config(
    path: str | Path,
    *,
    listen: str | None = None,
    server: str | None = None,
    admin: str | None = None,
) -> ClientConfig:
    """Read and validate a ``connect`` configuration; ``listen``/``server`` are flag overrides."""
    data, base = _read_toml(path)
    _refuse_other_kind(data, path, "client")
    root = _Table(data, "", base, _CLIENT_ROOT)
    root.require_tables()
    c = root.table("client", _CLIENT_KEYS)

    listen_addr = parse_address(
        c.string("listen", DEFAULT_CLIENT_LISTEN), c.key("listen"), allow_unix=False
    )
    if listen is not None:
        listen_addr = parse_address(listen, "--listen", allow_unix=False)

    file_server = c.string(
        "server",
        required="" if server is not None else "the attested server to connect to (HOST:PORT)",
    )
    server_addr = (
        None
        if file_server is None
        else parse_address(file_server, c.key("server"), allow_unix=False)
    )
    if server is not None:
        server_addr = parse_address(server, "--server", allow_unix=False)
    assert server_addr is not None

    server_name = c.string("server_name")
    if server_name is None:
        server_name = server_addr.host
    else:
        server_name = parse_server_name(server_name, c.key("server_name"))

    verify_pki = c.boolean("verify_pki", True)
    ca = c.file(
        "ca",
        required="the PEM CA certificate(s) the server's chain must reach "
        "(only verify_pki = false, which is INSECURE, does without)"
        if verify_pki
        else "",
    )
    policy = c.file("policy", required="the appraisal policy file (see config/policy.toml)")
    assert policy is not None
    return ClientConfig(
        listen=listen_addr,
        server=server_addr,
        server_name=server_name,
        ca=ca,
        policy=policy,
        verify_pki=verify_pki,
        timeouts=_timeouts(c, "connect_timeout"),
        max_connections=c.integer("max_connections", 1024, 1, MAX_CONNECTIONS),
        expat=_expat(root),
        log=_log(root),
        ops=_ops(root, c, admin),
        source=Path(path),
    )


# The command-line flags that override a key of each role's configuration file: ``serve``
# ("server") and ``connect`` ("client"); each is a keyword of the role's ``load_*_config``.
FLAG_OVERRIDES: dict[str, tuple[str, ...]] = {
    "server": ("listen", "backend", "admin"),
    "client": ("listen", "server", "admin"),
}


def flag_overrides(args: object, role: str) -> dict[str, str | None]:
    """The command-line overrides of ``role``'s configuration from parsed arguments (an
    ``argparse.Namespace``): each flag's value, None when it was not given or ``args`` has no
    such attribute. What ``load_config`` takes, and what a service reloads its file with."""
    return {name: getattr(args, name, None) for name in FLAG_OVERRIDES[role]}


def load_config(
    role: str, path: str | Path, overrides: Mapping[str, str | None]
) -> ServerConfig | ClientConfig:
    """``load_server_config`` (role "server") or ``load_client_config`` ("client") with the
    overrides of ``flag_overrides``."""
    if role == "server":
        return load_server_config(path, **overrides)
    if role == "client":
        return load_client_config(path, **overrides)
    raise ValueError(f"unknown role {role!r}")


def detect_config_kind(path: str | Path) -> Literal["server", "client", "policy"]:
    """What a file is, by its top-level tables: [server], [client], or a policy's ([policy],
    [software], [freshness], [trust] or a hardware format's section)."""
    from atls_proxy.verify.policy import POLICY_SECTIONS

    data, _ = _read_toml(path)
    if "server" in data:
        return "server"
    if "client" in data:
        return "client"
    if any(k in data for k in POLICY_SECTIONS):
        return "policy"
    raise ConfigError(
        "config",
        f"{path} has no [server], [client] or policy table ("
        + ", ".join(f"[{k}]" for k in POLICY_SECTIONS)
        + "); cannot tell what kind of file it is",
    )
