"""Configuration: TOML files for ``serve`` and ``connect``, validated with errors that name the key.

Construction of the dataclasses is cheap and does no checking; ``load_server_config`` and
``load_client_config`` read a file, validate every key and return frozen dataclasses (uvicorn's
habit). Relative paths resolve against the configuration file's folder. Command-line flags
(``--listen``, ``--backend``, ``--server``) override the file and are validated under their own
names. ``config/serve.toml`` and ``config/connect.toml`` list every key with its default.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from atls_proxy.errors import ConfigError
from atls_proxy.expat.binding import DEFAULT_EXPORTER_LABEL
from atls_proxy.expat.profile import DEFAULT_EXTENSION_TYPE

# A configuration file larger than this is a mistake (a key or a log pointed at by accident).
MAX_CONFIG_FILE = 1024 * 1024
MEASUREMENT_LENGTHS = (32, 48, 64)


@dataclass(frozen=True, slots=True)
class Address:
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
        if self.kind == "unix":
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(
    text: object, key: str, *, allow_unix: bool = True, allow_port_zero: bool = False
) -> Address:
    """``HOST:PORT``, ``[v6]:PORT`` or ``unix:/path``."""
    if not isinstance(text, str) or not text:
        raise ConfigError(key, "expected an address string such as 127.0.0.1:8443")
    if text.startswith("unix:"):
        if not allow_unix:
            raise ConfigError(key, "a unix socket is not allowed here; use HOST:PORT")
        path = text[5:]
        if not path.startswith("/"):
            raise ConfigError(key, f"unix socket path must be absolute: {text!r}")
        return Address("unix", path=path)
    if text.startswith("["):
        host, sep, port_s = text[1:].partition("]:")
        if not sep:
            raise ConfigError(key, f"expected [IPv6]:PORT, got {text!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(key, f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(key, f"expected HOST:PORT, got {text!r}")
        if ":" in host:
            raise ConfigError(key, f"write IPv6 addresses in brackets: [{host}]:{port_s}")
    if not port_s.isdigit():
        raise ConfigError(key, f"port must be a number, got {port_s!r}")
    port = int(port_s)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ConfigError(key, f"port {port} out of range 1..65535")
    if any(c.isspace() for c in host):
        raise ConfigError(key, f"bad host {host!r}")
    return Address("tcp", host=host, port=port)


@dataclass(frozen=True, slots=True)
class ExpatConfig:
    exporter_label: bytes = DEFAULT_EXPORTER_LABEL
    extension_type: int = DEFAULT_EXTENSION_TYPE
    request_header_in_transcript: bool = True


@dataclass(frozen=True, slots=True)
class Timeouts:
    handshake: float = 10.0
    attestation: float = 10.0
    idle: float = 300.0
    connect: float = 5.0


@dataclass(frozen=True, slots=True)
class SoftwareAttesterConfig:
    platform_key: Path
    measurements: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class AttesterConfig:
    kind: Literal["software"] = "software"
    software: SoftwareAttesterConfig | None = None


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: Address
    backend: Address
    certificate: Path
    private_key: Path
    plain_clients: Literal["refuse", "serve-unattested"] = "refuse"
    plain_sniff_timeout: float = 2.0
    allow_remote_backend: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 1024
    expat: ExpatConfig = field(default_factory=ExpatConfig)
    attester: AttesterConfig = field(default_factory=AttesterConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None


@dataclass(frozen=True, slots=True)
class ClientConfig:
    listen: Address
    server: Address
    server_name: str
    ca: Path | None
    policy: Path
    verify_pki: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_connections: int = 1024
    expat: ExpatConfig = field(default_factory=ExpatConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: Path | None = None


# --- reading ------------------------------------------------------------------------------------


def _read_toml(path: str | Path) -> tuple[dict[str, Any], Path]:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_CONFIG_FILE:
            raise ConfigError("config", f"{p} is larger than {MAX_CONFIG_FILE} bytes")
        text = p.read_text("utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError("config", f"{p} is not UTF-8 text") from None
    try:
        return tomllib.loads(text), p.resolve().parent
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{p}: TOML syntax error: {exc}") from None


class _Table:
    """One TOML table being consumed: every key read is ticked off; leftovers are unknown keys."""

    def __init__(self, data: object, prefix: str, base: Path) -> None:
        if not isinstance(data, dict):
            raise ConfigError(prefix, "expected a table")
        self.data: dict[str, Any] = data
        self.prefix = prefix
        self.base = base
        self.known: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def get(self, name: str, default: Any = None) -> Any:
        self.known.add(name)
        return self.data.get(name, default)

    def table(self, name: str) -> _Table:
        return _Table(self.get(name, {}), self.key(name), self.base)

    def string(self, name: str, default: str | None = None, required: bool = False) -> str | None:
        v = self.get(name)
        if v is None:
            if required:
                raise ConfigError(self.key(name), "is required")
            return default
        if not isinstance(v, str):
            raise ConfigError(self.key(name), f"expected a string, got {type(v).__name__}")
        return v

    def boolean(self, name: str, default: bool) -> bool:
        v = self.get(name, default)
        if not isinstance(v, bool):
            raise ConfigError(self.key(name), f"expected true or false, got {v!r}")
        return v

    def integer(self, name: str, default: int, lo: int, hi: int) -> int:
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(self.key(name), f"expected an integer, got {v!r}")
        if not lo <= v <= hi:
            raise ConfigError(self.key(name), f"{v} is outside {lo}..{hi}")
        return v

    def seconds(self, name: str, default: float) -> float:
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(self.key(name), f"expected a number of seconds, got {v!r}")
        if not math.isfinite(v) or v <= 0 or v > 86400 * 7:
            raise ConfigError(self.key(name), f"expected seconds in (0, 604800], got {v!r}")
        return float(v)

    def file(self, name: str, required: bool = True) -> Path | None:
        v = self.string(name, required=required)
        if v is None:
            return None
        p = Path(v)
        p = p if p.is_absolute() else self.base / p
        if not p.is_file():
            raise ConfigError(self.key(name), f"file not found: {p}")
        return p

    def finish(self) -> None:
        for k in self.data:
            if k not in self.known:
                hint = difflib.get_close_matches(k, sorted(self.known), n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(self.key(k), f"unknown key{extra}")


def _timeouts(t: _Table, connect_key: str) -> Timeouts:
    d = Timeouts()
    return Timeouts(
        handshake=t.seconds("handshake_timeout", d.handshake),
        attestation=t.seconds("attestation_timeout", d.attestation),
        idle=t.seconds("idle_timeout", d.idle),
        connect=t.seconds(connect_key, d.connect),
    )


def _expat(root: _Table) -> ExpatConfig:
    t = root.table("expat")
    d = ExpatConfig()
    label = t.string("exporter_label", d.exporter_label.decode())
    assert label is not None
    if not label or len(label) > 255 or not label.isascii() or not label.isprintable():
        raise ConfigError(t.key("exporter_label"), "expected 1..255 printable ASCII characters")
    cfg = ExpatConfig(
        exporter_label=label.encode(),
        extension_type=t.integer("extension_type", d.extension_type, 0, 0xFFFF),
        request_header_in_transcript=t.boolean(
            "request_header_in_transcript", d.request_header_in_transcript
        ),
    )
    t.finish()
    return cfg


def _log(root: _Table) -> LogConfig:
    t = root.table("log")
    level = t.string("level", "info")
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(t.key("level"), f"expected debug, info, warning or error, got {level!r}")
    t.finish()
    return LogConfig(level=level)


def _hex_digest(value: object, key: str) -> bytes:
    if not isinstance(value, str):
        raise ConfigError(key, "expected a hex digest string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ConfigError(key, "not a hex digest") from None
    if len(raw) not in MEASUREMENT_LENGTHS:
        raise ConfigError(key, f"a digest is 32, 48 or 64 bytes, not {len(raw)}")
    return raw


def _attester(root: _Table) -> AttesterConfig:
    t = root.table("attester")
    kind = t.string("kind", "software")
    if kind != "software":
        raise ConfigError(t.key("kind"), f"unknown attester {kind!r} (available: software)")
    sw_t = t.table("software")
    if not sw_t.data:
        raise ConfigError(sw_t.key("platform_key"), "is required for the software attester")
    key = sw_t.file("platform_key")
    assert key is not None
    meas_t = sw_t.table("measurements")
    measurements = {
        name: _hex_digest(meas_t.get(name), meas_t.key(name)) for name in list(meas_t.data)
    }
    meas_t.finish()
    sw_t.finish()
    t.finish()
    return AttesterConfig(kind="software", software=SoftwareAttesterConfig(key, measurements))


def load_server_config(
    path: str | Path, *, listen: str | None = None, backend: str | None = None
) -> ServerConfig:
    data, base = _read_toml(path)
    root = _Table(data, "", base)
    s = root.table("server")
    listen_addr = parse_address(
        s.string("listen", "127.0.0.1:8443"), s.key("listen"), allow_unix=False
    )
    if listen is not None:
        listen_addr = parse_address(listen, "--listen", allow_unix=False)
    if backend is not None:
        s.get("backend")
        backend_addr, backend_key = parse_address(backend, "--backend"), "--backend"
    else:
        backend_addr, backend_key = (
            parse_address(s.string("backend", required=True), s.key("backend")),
            s.key("backend"),
        )
    plain = s.string("plain_clients", "refuse")
    if plain not in ("refuse", "serve-unattested"):
        raise ConfigError(
            s.key("plain_clients"), f"expected 'refuse' or 'serve-unattested', got {plain!r}"
        )
    allow_remote = s.boolean("allow_remote_backend", False)
    if not allow_remote and not backend_addr.is_loopback():
        raise ConfigError(
            backend_key,
            f"{backend_addr} is not loopback or a unix socket; set server.allow_remote_backend = true "
            "if plaintext to a remote backend is really intended",
        )
    cert = s.file("certificate")
    key = s.file("private_key")
    assert cert is not None and key is not None
    cfg = ServerConfig(
        listen=listen_addr,
        backend=backend_addr,
        certificate=cert,
        private_key=key,
        plain_clients=plain,  # type: ignore[arg-type]
        plain_sniff_timeout=s.seconds("plain_sniff_timeout", 2.0),
        allow_remote_backend=allow_remote,
        timeouts=_timeouts(s, "backend_connect_timeout"),
        max_connections=s.integer("max_connections", 1024, 1, 1_000_000),
        expat=_expat(root),
        attester=_attester(root),
        log=_log(root),
        source=Path(path),
    )
    s.finish()
    root.finish()
    return cfg


def load_client_config(
    path: str | Path, *, listen: str | None = None, server: str | None = None
) -> ClientConfig:
    data, base = _read_toml(path)
    root = _Table(data, "", base)
    c = root.table("client")
    listen_addr = parse_address(
        c.string("listen", "127.0.0.1:9443"), c.key("listen"), allow_unix=False
    )
    if listen is not None:
        listen_addr = parse_address(listen, "--listen", allow_unix=False)
    if server is not None:
        c.get("server")
        server_addr = parse_address(server, "--server", allow_unix=False)
    else:
        server_addr = parse_address(
            c.string("server", required=True), c.key("server"), allow_unix=False
        )
    server_name = c.string("server_name", server_addr.host)
    assert server_name is not None
    if not server_name or any(ch.isspace() for ch in server_name):
        raise ConfigError(c.key("server_name"), f"bad server name {server_name!r}")
    verify_pki = c.boolean("verify_pki", True)
    ca = c.file("ca", required=verify_pki)
    policy = c.file("policy")
    assert policy is not None
    cfg = ClientConfig(
        listen=listen_addr,
        server=server_addr,
        server_name=server_name,
        ca=ca,
        policy=policy,
        verify_pki=verify_pki,
        timeouts=_timeouts(c, "connect_timeout"),
        max_connections=c.integer("max_connections", 1024, 1, 1_000_000),
        expat=_expat(root),
        log=_log(root),
        source=Path(path),
    )
    c.finish()
    root.finish()
    return cfg


def detect_config_kind(path: str | Path) -> Literal["server", "client", "policy"]:
    data, _ = _read_toml(path)
    if "server" in data:
        return "server"
    if "client" in data:
        return "client"
    if "software" in data or "policy" in data:
        return "policy"
    raise ConfigError(
        "config", f"{path}: no [server], [client] or policy tables; cannot tell what this file is"
    )
