"""atls_proxy.ops.config: addresses, every validation rule (asserting the key it names), overrides,
path resolution, file errors, and the documented example configurations in config/."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tomllib
from collections.abc import Mapping
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atls_proxy.errors import ConfigError
from atls_proxy.ops import config as c
from atls_proxy.ops.devinit import SIMULATED_MEASUREMENTS, dev_init

ROOT = Path(__file__).resolve().parents[2]
D32 = "ab" * 32
D48 = "cd" * 48
D64 = "EF" * 64

# A document is {section: {key: raw TOML value}}; "" is the root table. Values are TOML source
# text so that tests can write things a dict serialiser could not (nan, inf, dates, hex ints).
Doc = dict[str, dict[str, str]]


def server_doc() -> Doc:
    return {
        "server": {
            "backend": '"127.0.0.1:8080"',
            "certificate": '"cert.pem"',
            "private_key": '"key.pem"',
        },
        "attester.software": {"platform_key": '"platform-key.pem"'},
        "attester.software.measurements": {"firmware": f'"{D32}"'},
    }


def client_doc() -> Doc:
    return {
        "client": {
            "server": '"127.0.0.1:8443"',
            "ca": '"ca.pem"',
            "policy": '"policy.toml"',
        },
    }


def render(doc: Doc) -> str:
    out = [f"{k} = {v}" for k, v in doc.get("", {}).items()]
    for section, keys in doc.items():
        if section:
            out.append(f"[{section}]")
            out.extend(f"{k} = {v}" for k, v in keys.items())
    return "\n".join(out) + "\n"


def edit(doc: Doc, section: str, key: str, value: str | None) -> Doc:
    """Set (or, with None, delete) one key; creates the section when needed."""
    table = doc.setdefault(section, {})
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value
    return doc


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder holding (dummy) files the configs name: the loader only checks they exist."""
    for name in ("cert.pem", "key.pem", "platform-key.pem", "ca.pem", "policy.toml"):
        (tmp_path / name).write_text("dummy\n")
    return tmp_path


def write(folder: Path, doc: Doc | str, name: str = "conf.toml") -> Path:
    p = folder / name
    p.write_text(doc if isinstance(doc, str) else render(doc), encoding="utf-8")
    return p


def server_error(folder: Path, doc: Doc | str, **overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        c.load_server_config(write(folder, doc), **overrides)
    return e.value


def client_error(folder: Path, doc: Doc | str, **overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        c.load_client_config(write(folder, doc), **overrides)
    return e.value


# --- addresses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,expected",
    [
        ("127.0.0.1:8443", c.Address("tcp", "127.0.0.1", 8443)),
        ("0.0.0.0:1", c.Address("tcp", "0.0.0.0", 1)),
        ("localhost:8443", c.Address("tcp", "localhost", 8443)),
        ("example.com:65535", c.Address("tcp", "example.com", 65535)),
        (
            "my_service.ns.svc.cluster.local:80",
            c.Address("tcp", "my_service.ns.svc.cluster.local", 80),
        ),
        ("example.com.:443", c.Address("tcp", "example.com.", 443)),
        ("[::1]:8443", c.Address("tcp", "::1", 8443)),
        ("[::]:8443", c.Address("tcp", "::", 8443)),
        ("[2001:db8::1]:443", c.Address("tcp", "2001:db8::1", 443)),
        ("[fe80::1%eth0]:443", c.Address("tcp", "fe80::1%eth0", 443)),
        ("[::ffff:127.0.0.1]:80", c.Address("tcp", "::ffff:127.0.0.1", 80)),
        ("unix:/run/app.sock", c.Address("unix", path="/run/app.sock")),
        ("unix:/tmp/a b.sock", c.Address("unix", path="/tmp/a b.sock")),
    ],
)
def test_address_parses_and_round_trips(text: str, expected: c.Address) -> None:
    a = c.parse_address(text, "k")
    assert a == expected
    assert str(a) == text
    assert c.parse_address(str(a), "k") == a


def test_address_port_leading_zeros_normalise() -> None:
    a = c.parse_address("localhost:0080", "k")
    assert a.port == 80 and str(a) == "localhost:80"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8443",
        ":8443",
        "host:",
        "host:x",
        "host:-1",
        "host:+1",
        "host:0",
        "host:65536",
        "host:123456",
        "host:\u0661\u0662",  # Arabic-Indic digits: str.isdigit() is true, but not a port
        "host:\u00b2",  # superscript two: isdigit() true, int() fails
        "::1:80",
        "[::1]80",
        "[::1]",
        "[::1:80",
        "[zz]:1",
        "[127.0.0.1]:1",
        "[]:1",
        "a b:1",
        " localhost:1",
        "-bad-.example:1",
        "exa$mple.com:1",
        "a..b:1",
        "1.2.3.256:1",
        "127.000.0.1:1",
        "12345:1",
        "b\u00fccher.example:1",
        ("a" * 64) + ".example:1",
        ("a." * 127) + "com:1",
        "host:1\n",
        "unix:",
        "unix:rel/path",
        "unix:/run/dir/",
        "unix:/run/a\0b",
        "unix:/" + "x" * 107,
        "x" * 600 + ":1",
    ],
)
def test_bad_addresses_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        c.parse_address(text, "server.listen")
    assert e.value.key == "server.listen"
    assert e.value.message


@pytest.mark.parametrize("value", [None, 8443, 1.5, True, ["127.0.0.1:1"], {"host": "x"}])
def test_address_must_be_a_string(value: object) -> None:
    with pytest.raises(ConfigError) as e:
        c.parse_address(value, "client.server")
    assert e.value.key == "client.server"


def test_unix_sockets_can_be_refused_and_port_zero_allowed() -> None:
    with pytest.raises(ConfigError, match="unix socket is not allowed") as e:
        c.parse_address("unix:/run/a.sock", "--listen", False)  # positional allow_unix
    assert e.value.key == "--listen"
    assert c.parse_address("unix:/" + "x" * 106, "k").kind == "unix"  # 107 bytes: the limit
    with pytest.raises(ConfigError):
        c.parse_address("127.0.0.1:0", "k")
    assert c.parse_address("127.0.0.1:0", "k", allow_port_zero=True).port == 0


@pytest.mark.parametrize(
    "text,loopback",
    [
        ("127.0.0.1:1", True),
        ("127.9.9.9:1", True),
        ("[::1]:1", True),
        ("[::ffff:127.0.0.1]:1", True),
        ("localhost:1", True),
        ("LOCALHOST.:1", True),
        ("unix:/run/a.sock", True),
        ("0.0.0.0:1", False),
        ("[::]:1", False),
        ("10.0.0.1:1", False),
        ("[::ffff:10.0.0.1]:1", False),
        ("example.com:1", False),
        ("localhost.example.com:1", False),
    ],
)
def test_is_loopback(text: str, loopback: bool) -> None:
    assert c.parse_address(text, "k").is_loopback() is loopback


@given(st.text(max_size=60))
def test_parse_address_random_text_only_raises_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        a = c.parse_address(text, "k")
        assert c.parse_address(str(a), "k") == a


@given(st.text(alphabet="0123456789abcdefx:[]./%-_unix \u00b2\u0661", max_size=30))
def test_parse_address_address_like_text_only_raises_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        a = c.parse_address(text, "k")
        assert c.parse_address(str(a), "k") == a


@given(st.ip_addresses(), st.integers(1, 65535))
def test_every_ip_address_round_trips(ip: object, port: int) -> None:
    a = c.Address("tcp", str(ip), port)
    assert c.parse_address(str(a), "k") == a


# --- a valid file, defaults ---------------------------------------------------------------------


def test_minimal_server_config_gets_every_default(folder: Path) -> None:
    path = write(folder, server_doc())
    s = c.load_server_config(path)
    assert s.listen == c.Address("tcp", "127.0.0.1", 8443)
    assert s.backend == c.Address("tcp", "127.0.0.1", 8080)
    assert s.certificate == folder / "cert.pem" and s.private_key == folder / "key.pem"
    assert s.plain_clients == "refuse" and s.plain_sniff_timeout == 2.0
    assert s.allow_remote_backend is False
    assert s.timeouts == c.Timeouts(handshake=10.0, attestation=10.0, idle=300.0, connect=5.0)
    assert s.max_connections == 1024
    assert s.expat == c.ExpatConfig(b"EXPORTER-cmw-attestation", 0xFF00, True)
    assert s.attester == c.AttesterConfig(
        "software",
        c.SoftwareAttesterConfig(folder / "platform-key.pem", {"firmware": bytes.fromhex(D32)}),
    )
    assert s.log == c.LogConfig("info")
    assert s.source == path


def test_every_server_key_set(folder: Path) -> None:
    doc = server_doc()
    doc["server"].update(
        {
            "listen": '"[::]:443"',
            "backend": '"unix:/run/app.sock"',
            "plain_clients": '"serve-unattested"',
            "plain_sniff_timeout": "0.5",
            "allow_remote_backend": "true",
            "handshake_timeout": "1",
            "attestation_timeout": "2.5",
            "idle_timeout": "604800",
            "backend_connect_timeout": "3",
            "max_connections": "1_000_000",
        }
    )
    doc["expat"] = {
        "exporter_label": '"Attestation"',
        "extension_type": "0",
        "request_header_in_transcript": "false",
    }
    doc["attester"] = {"kind": '"software"'}
    doc["attester.software.measurements"] = {"a": f'"{D32}"', "b-2": f'"{D48}"', "C_3": f'"{D64}"'}
    doc["log"] = {"level": '"DEBUG"'}
    s = c.load_server_config(write(folder, doc))
    assert str(s.listen) == "[::]:443" and s.backend.kind == "unix"
    assert s.plain_clients == "serve-unattested" and s.plain_sniff_timeout == 0.5
    assert s.timeouts == c.Timeouts(1.0, 2.5, 604800.0, 3.0)
    assert isinstance(s.timeouts.handshake, float)
    assert s.max_connections == 1_000_000
    assert s.expat == c.ExpatConfig(b"Attestation", 0, False)
    assert s.attester.software is not None
    assert {k: len(v) for k, v in s.attester.software.measurements.items()} == {
        "a": 32,
        "b-2": 48,
        "C_3": 64,
    }
    assert s.log.level == "debug"


def test_minimal_client_config_gets_every_default(folder: Path) -> None:
    path = write(folder, client_doc())
    cl = c.load_client_config(path)
    assert cl.listen == c.Address("tcp", "127.0.0.1", 9443)
    assert cl.server == c.Address("tcp", "127.0.0.1", 8443)
    assert cl.server_name == "127.0.0.1"  # the host of `server`
    assert cl.ca == folder / "ca.pem" and cl.policy == folder / "policy.toml"
    assert cl.verify_pki is True
    assert cl.timeouts == c.Timeouts() and cl.max_connections == 1024
    assert cl.expat == c.ExpatConfig() and cl.log == c.LogConfig()
    assert cl.source == path


def test_client_server_name_forms(folder: Path) -> None:
    doc = edit(client_doc(), "client", "server", '"[::1]:8443"')
    assert c.load_client_config(write(folder, doc)).server_name == "::1"
    edit(doc, "client", "server_name", '"[::1]"')
    assert c.load_client_config(write(folder, doc)).server_name == "::1"
    edit(doc, "client", "server_name", '"api.example.com"')
    assert c.load_client_config(write(folder, doc)).server_name == "api.example.com"


def test_client_without_pki_needs_no_ca(folder: Path) -> None:
    doc = edit(client_doc(), "client", "ca", None)
    edit(doc, "client", "verify_pki", "false")
    cl = c.load_client_config(write(folder, doc))
    assert cl.ca is None and cl.verify_pki is False
    # A CA given anyway is still checked and kept.
    edit(doc, "client", "ca", '"ca.pem"')
    assert c.load_client_config(write(folder, doc)).ca == folder / "ca.pem"
    edit(doc, "client", "ca", '"missing.pem"')
    assert client_error(folder, doc).key == "client.ca"


def test_dataclasses_are_frozen_and_construction_does_not_validate() -> None:
    # Construction is cheap and checks nothing (validation lives in the load functions).
    cfg = c.ServerConfig(
        listen=c.Address("tcp", "not a host", 0),
        backend=c.Address("tcp", "10.0.0.1", 1),
        certificate=Path("/nonexistent"),
        private_key=Path("/nonexistent"),
    )
    with pytest.raises(FrozenInstanceError):
        cfg.max_connections = 5  # type: ignore[misc]
    assert cfg.timeouts == c.Timeouts() and cfg.source is None


# --- every validation rule names its key -------------------------------------------------------

SERVER_RULES: list[tuple[str, str, str | None, str]] = [
    # (section, key, raw TOML value or None to delete, expected ConfigError key)
    # unknown keys, at every level
    ("", "verbose", "true", "verbose"),
    ("servre", "listen", '"127.0.0.1:1"', "servre"),
    ("server", "lisen", '"127.0.0.1:1"', "server.lisen"),
    ("server", "connect_timeout", "1", "server.connect_timeout"),
    ("server", '"odd key"', "1", 'server."odd key"'),
    ("expat", "label", '"x"', "expat.label"),
    ("attester", "knd", '"software"', "attester.knd"),
    ("attester.software", "platform_keys", '["a"]', "attester.software.platform_keys"),
    ("log", "lvl", '"info"', "log.lvl"),
    ("client", "server", '"127.0.0.1:1"', "client"),
    # server.listen
    ("server", "listen", '"nope"', "server.listen"),
    ("server", "listen", "8443", "server.listen"),
    ("server", "listen", '"unix:/run/a.sock"', "server.listen"),
    ("server", "listen", '"127.0.0.1:0"', "server.listen"),
    # server.backend
    ("server", "backend", None, "server.backend"),
    ("server", "backend", '"127.0.0.1"', "server.backend"),
    ("server", "backend", "8080", "server.backend"),
    ("server", "backend", '"10.1.2.3:80"', "server.backend"),
    ("server", "backend", '"0.0.0.0:80"', "server.backend"),
    ("server", "backend", '"db.example.com:5432"', "server.backend"),
    ("server", "backend", '"unix:relative.sock"', "server.backend"),
    # certificate / private_key: required, a string, an existing readable regular file
    ("server", "certificate", None, "server.certificate"),
    ("server", "certificate", '"missing.pem"', "server.certificate"),
    ("server", "certificate", '"/nonexistent/cert.pem"', "server.certificate"),
    ("server", "certificate", '""', "server.certificate"),
    ("server", "certificate", '"."', "server.certificate"),
    ("server", "certificate", '"a\\u0000b"', "server.certificate"),
    ("server", "certificate", "1", "server.certificate"),
    ("server", "private_key", None, "server.private_key"),
    ("server", "private_key", '"missing-key.pem"', "server.private_key"),
    ("server", "private_key", '["key.pem"]', "server.private_key"),
    # plain clients
    ("server", "plain_clients", '"maybe"', "server.plain_clients"),
    ("server", "plain_clients", '"Refuse"', "server.plain_clients"),
    ("server", "plain_clients", "false", "server.plain_clients"),
    ("server", "plain_sniff_timeout", "0", "server.plain_sniff_timeout"),
    ("server", "allow_remote_backend", '"yes"', "server.allow_remote_backend"),
    ("server", "allow_remote_backend", "1", "server.allow_remote_backend"),
    # timeouts: numbers, > 0, finite, at most a week; a boolean is not a number
    ("server", "handshake_timeout", "0", "server.handshake_timeout"),
    ("server", "handshake_timeout", "-1.5", "server.handshake_timeout"),
    ("server", "handshake_timeout", "nan", "server.handshake_timeout"),
    ("server", "handshake_timeout", "inf", "server.handshake_timeout"),
    ("server", "handshake_timeout", "604801", "server.handshake_timeout"),
    ("server", "handshake_timeout", "true", "server.handshake_timeout"),
    ("server", "handshake_timeout", '"10"', "server.handshake_timeout"),
    ("server", "attestation_timeout", "0.0", "server.attestation_timeout"),
    ("server", "idle_timeout", "-inf", "server.idle_timeout"),
    ("server", "backend_connect_timeout", "0", "server.backend_connect_timeout"),
    ("server", "backend_connect_timeout", "1979-05-27", "server.backend_connect_timeout"),
    # max_connections: an integer (not a bool, not a float) in 1..1_000_000
    ("server", "max_connections", "0", "server.max_connections"),
    ("server", "max_connections", "1_000_001", "server.max_connections"),
    ("server", "max_connections", "-5", "server.max_connections"),
    ("server", "max_connections", "true", "server.max_connections"),
    ("server", "max_connections", "10.0", "server.max_connections"),
    ("server", "max_connections", '"10"', "server.max_connections"),
    # [expat]
    ("expat", "exporter_label", '""', "expat.exporter_label"),
    ("expat", "exporter_label", '"Attest\\u00e9"', "expat.exporter_label"),
    ("expat", "exporter_label", '"Attest\\nation"', "expat.exporter_label"),
    ("expat", "exporter_label", '"' + "x" * 250 + '"', "expat.exporter_label"),
    ("expat", "exporter_label", "1", "expat.exporter_label"),
    ("expat", "extension_type", "-1", "expat.extension_type"),
    ("expat", "extension_type", "65536", "expat.extension_type"),
    ("expat", "extension_type", "0x1_0000", "expat.extension_type"),
    ("expat", "extension_type", "true", "expat.extension_type"),
    ("expat", "extension_type", '"0xFF00"', "expat.extension_type"),
    # code points authenticator requests and certificate entries already use (RFC 8446 §4.2)
    ("expat", "extension_type", "13", "expat.extension_type"),
    ("expat", "extension_type", "18", "expat.extension_type"),
    ("expat", "extension_type", "50", "expat.extension_type"),
    ("expat", "request_header_in_transcript", "1", "expat.request_header_in_transcript"),
    ("expat", "request_header_in_transcript", '"true"', "expat.request_header_in_transcript"),
    # [attester]
    ("attester", "kind", '"tdx"', "attester.kind"),
    ("attester", "kind", "1", "attester.kind"),
    ("attester.software", "platform_key", None, "attester.software.platform_key"),
    ("attester.software", "platform_key", '"nope.pem"', "attester.software.platform_key"),
    ("attester.software.measurements", "kernel", '"zz"', "attester.software.measurements.kernel"),
    ("attester.software.measurements", "kernel", '"abcd"', "attester.software.measurements.kernel"),
    (
        "attester.software.measurements",
        "kernel",
        f'"{D32}00"',
        "attester.software.measurements.kernel",
    ),
    ("attester.software.measurements", "kernel", '""', "attester.software.measurements.kernel"),
    ("attester.software.measurements", "kernel", "12", "attester.software.measurements.kernel"),
    (
        "attester.software.measurements",
        "kernel",
        f'["{D32}"]',
        "attester.software.measurements.kernel",
    ),
    ("attester.software.measurements", '"a b"', f'"{D32}"', 'attester.software.measurements."a b"'),
    (
        "attester.software.measurements",
        "x" * 65,
        f'"{D32}"',
        "attester.software.measurements." + "x" * 65,
    ),
    # [log]
    ("log", "level", '"loud"', "log.level"),
    ("log", "level", "10", "log.level"),
]


@pytest.mark.parametrize(
    "section,key,value,expected", SERVER_RULES, ids=[f"{r[3]}={r[2]}" for r in SERVER_RULES]
)
def test_server_rule(
    folder: Path, section: str, key: str, value: str | None, expected: str
) -> None:
    err = server_error(folder, edit(server_doc(), section, key, value))
    assert err.key == expected, err
    assert str(err).startswith(f"{expected}: ")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("server = 1\n", "server"),
        (
            '[server]\nbackend = "127.0.0.1:1"\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n'
            "[attester]\nsoftware = 1\n",
            "attester.software",
        ),
        (
            "[expat]\n[log]\n[attester]\nkind = 'software'\n[server]\nbackend = '127.0.0.1:1'\n"
            "certificate = 'cert.pem'\nprivate_key = 'key.pem'\n[attester.software]\n"
            "platform_key = 'platform-key.pem'\nmeasurements = 5\n",
            "attester.software.measurements",
        ),
        ("attester = []\n[server]\n", "attester"),
        ("log = 'debug'\n", "log"),
    ],
)
def test_tables_must_be_tables(folder: Path, text: str, expected: str) -> None:
    assert server_error(folder, text).key == expected


def test_software_attester_table_is_required(folder: Path) -> None:
    doc = server_doc()
    del doc["attester.software"], doc["attester.software.measurements"]
    err = server_error(folder, doc)
    assert err.key == "attester.software" and "required" in err.message
    doc["attester"] = {"kind": '"software"'}
    assert server_error(folder, doc).key == "attester.software"


def test_too_many_measurements(folder: Path) -> None:
    doc = server_doc()
    doc["attester.software.measurements"] = {f"m{i}": f'"{D32}"' for i in range(65)}
    assert server_error(folder, doc).key == "attester.software.measurements"
    doc["attester.software.measurements"] = {f"m{i}": f'"{D32}"' for i in range(64)}
    c.load_server_config(write(folder, doc))


def test_a_cached_epoch_must_leave_a_quote_time_to_refresh(folder: Path) -> None:
    # The next epoch is quoted in the last 20 % (REFRESH_AHEAD) of the current one, one per
    # suite hash through the one gate: that window must fit two whole quote_timeouts and the
    # epoch's whole-second rounding, or an epoch can expire while its successor is quoted.
    doc = server_doc()
    doc["attester"] = {"tier": '"cached"', "epoch_seconds": "104.9", "quote_timeout": "10"}
    err = server_error(folder, doc)
    assert err.key == "attester.epoch_seconds" and "use at least 105" in str(err)
    doc["attester"]["epoch_seconds"] = "105"
    assert c.load_server_config(write(folder, doc)).attester.epoch_seconds == 105
    # The other tiers have no epoch: the same numbers are accepted there.
    doc["attester"] = {"tier": '"strict"', "epoch_seconds": "30", "quote_timeout": "10"}
    c.load_server_config(write(folder, doc))


# An epoch is served until it expires while its refresh fails: up to epoch_seconds old, whatever
# REFRESH_AHEAD and quote_timeout; clients accept 300 s. And whatever the epoch: default clients
# refuse the cached tier (an opt-in in their policy), which serve says at start.
@pytest.mark.parametrize(
    "epoch,warned", [(300, False), (299.5, False), (300.5, True), (360, True), (600, True)]
)
def test_serve_warns_when_its_epochs_outlive_the_default_client_policy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, epoch: float, warned: bool
) -> None:
    from atls_proxy.app import build_server

    dev_init(tmp_path)
    text = (tmp_path / "serve.toml").read_text()
    text = text.replace(
        'kind = "software"\n', f'kind = "software"\ntier = "cached"\nepoch_seconds = {epoch}\n', 1
    )
    (tmp_path / "serve-cached.toml").write_text(text)
    with caplog.at_level("WARNING", logger="atls_proxy"):
        build_server(c.load_server_config(tmp_path / "serve-cached.toml"))
    assert ("default max_epoch_age" in caplog.text) is warned, caplog.text
    assert (f"up to {epoch:g} s old" in caplog.text) is warned, caplog.text
    assert "clients accept it only when their policy lists it" in caplog.text


HUGE = "1" + "0" * 400  # an integer tomllib accepts and float() cannot represent


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("server", "handshake_timeout", HUGE),
        ("server", "idle_timeout", "-" + HUGE),
        ("server", "drain_timeout", HUGE),
        ("server", "reload_interval", HUGE),  # allow_zero
        ("attester", "epoch_seconds", HUGE),
        ("attester", "quote_timeout", HUGE),
    ],
)
def test_seconds_beyond_the_float_range_are_a_config_error(
    folder: Path, section: str, key: str, value: str
) -> None:
    # math.isfinite(10**400) raises OverflowError: a traceback (exit 1) instead of exit 2.
    err = server_error(folder, edit(server_doc(), section, key, value))
    assert err.key == f"{section}.{key}", err
    assert "an integer of 401 digits" in str(err) and len(str(err)) < 200, err


def test_an_integer_of_more_digits_than_int_converts_is_a_config_error(folder: Path) -> None:
    # tomllib raises a plain ValueError (not TOMLDecodeError) past sys.int_info's digit limit.
    err = server_error(folder, edit(server_doc(), "server", "handshake_timeout", "1" * 5000))
    assert err.key == "config" and "not valid TOML" in str(err), err


def test_a_config_nested_too_deeply_is_a_config_error(folder: Path) -> None:
    err = server_error(folder, "x = " + "[" * 5000 + "]" * 5000 + "\n")
    assert err.key == "config" and "nested too deeply" in str(err)


def test_empty_measurements_allowed(folder: Path) -> None:
    doc = server_doc()
    del doc["attester.software.measurements"]
    s = c.load_server_config(write(folder, doc))
    assert s.attester.software is not None and dict(s.attester.software.measurements) == {}


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("expat", "extension_type", "0"),
        ("expat", "extension_type", "65535"),
        ("expat", "extension_type", "0xFF00"),
        ("expat", "exporter_label", '"' + "x" * 249 + '"'),
        ("expat", "exporter_label", '"Attestation"'),
        ("server", "max_connections", "1"),
        ("server", "handshake_timeout", "0.001"),
        ("server", "backend", '"localhost:8080"'),
        ("server", "backend", '"[::1]:8080"'),
        ("server", "backend", '"127.5.5.5:8080"'),
        ("server", "backend", '"unix:/run/app.sock"'),
        ("server", "certificate", '"./cert.pem"'),
        ("log", "level", '"Warning"'),
        ("attester.software.measurements", "firmware", '"' + "AB" * 32 + '"'),
    ],
)
def test_boundary_values_accepted(folder: Path, section: str, key: str, value: str) -> None:
    c.load_server_config(write(folder, edit(server_doc(), section, key, value)))


def test_remote_backend_needs_explicit_opt_in(folder: Path) -> None:
    doc = edit(server_doc(), "server", "backend", '"10.1.2.3:80"')
    err = server_error(folder, doc)
    assert err.key == "server.backend" and "allow_remote_backend" in err.message
    edit(doc, "server", "allow_remote_backend", "true")
    s = c.load_server_config(write(folder, doc))
    assert s.backend == c.Address("tcp", "10.1.2.3", 80) and s.allow_remote_backend


def test_unknown_key_suggests_the_closest(folder: Path) -> None:
    err = server_error(folder, edit(server_doc(), "server", "idle_timout", "3"))
    assert err.key == "server.idle_timout" and "did you mean 'idle_timeout'" in err.message
    err = server_error(folder, edit(server_doc(), "server", "connect_timeout", "3"))
    assert "did you mean 'backend_connect_timeout'" in err.message
    err = client_error(folder, edit(client_doc(), "client", "backend_connect_timeout", "3"))
    assert err.key == "client.backend_connect_timeout"
    assert "did you mean 'connect_timeout'" in err.message
    err = server_error(folder, edit(server_doc(), "expat", "exporter_lable", '"x"'))
    assert "did you mean 'exporter_label'" in err.message


def test_unknown_keys_are_reported_before_missing_ones(folder: Path) -> None:
    # A misspelt required key is reported as the typo, not as "backend is required".
    doc = server_doc()
    doc["server"]["bakend"] = doc["server"].pop("backend")
    err = server_error(folder, doc)
    assert err.key == "server.bakend" and "did you mean 'backend'" in err.message


CLIENT_RULES: list[tuple[str, str, str | None, str]] = [
    ("", "server", '"x"', "server"),
    ("client", "sever", '"127.0.0.1:1"', "client.sever"),
    ("attester", "kind", '"software"', "attester"),
    ("client", "listen", '"unix:/run/a.sock"', "client.listen"),
    ("client", "listen", "9443", "client.listen"),
    ("client", "server", None, "client.server"),
    ("client", "server", '"unix:/run/a.sock"', "client.server"),
    ("client", "server", '"127.0.0.1"', "client.server"),
    ("client", "server_name", '"a b"', "client.server_name"),
    ("client", "server_name", '""', "client.server_name"),
    ("client", "server_name", '"-bad-"', "client.server_name"),
    ("client", "server_name", '"1.2.3.256"', "client.server_name"),
    ("client", "server_name", "1", "client.server_name"),
    ("client", "ca", None, "client.ca"),
    ("client", "ca", '"missing.pem"', "client.ca"),
    ("client", "verify_pki", "1", "client.verify_pki"),
    ("client", "verify_pki", '"false"', "client.verify_pki"),
    ("client", "policy", None, "client.policy"),
    ("client", "policy", '"missing.toml"', "client.policy"),
    ("client", "connect_timeout", "0", "client.connect_timeout"),
    ("client", "handshake_timeout", "nan", "client.handshake_timeout"),
    ("client", "attestation_timeout", "false", "client.attestation_timeout"),
    ("client", "idle_timeout", "1e9", "client.idle_timeout"),
    ("client", "max_connections", "0", "client.max_connections"),
    ("expat", "extension_type", "70000", "expat.extension_type"),
    ("log", "level", '"trace"', "log.level"),
]


@pytest.mark.parametrize(
    "section,key,value,expected", CLIENT_RULES, ids=[f"{r[3]}={r[2]}" for r in CLIENT_RULES]
)
def test_client_rule(
    folder: Path, section: str, key: str, value: str | None, expected: str
) -> None:
    err = client_error(folder, edit(client_doc(), section, key, value))
    assert err.key == expected, err


# --- overrides (command-line flags) -------------------------------------------------------------


def test_server_overrides(folder: Path) -> None:
    path = write(folder, server_doc())
    s = c.load_server_config(path, listen="[::1]:9000", backend="unix:/tmp/b.sock")
    assert s.listen == c.Address("tcp", "::1", 9000)
    assert s.backend == c.Address("unix", path="/tmp/b.sock")
    for kwargs, key in [
        ({"listen": "nope"}, "--listen"),
        ({"listen": "unix:/run/a.sock"}, "--listen"),
        ({"listen": "127.0.0.1:0"}, "--listen"),
        ({"backend": "nope"}, "--backend"),
        ({"backend": "127.0.0.1:99999"}, "--backend"),
    ]:
        with pytest.raises(ConfigError) as e:
            c.load_server_config(path, **kwargs)
        assert e.value.key == key


def test_remote_backend_override_needs_the_option(folder: Path) -> None:
    path = write(folder, server_doc())
    with pytest.raises(ConfigError) as e:
        c.load_server_config(path, backend="10.0.0.5:80")
    assert e.value.key == "--backend" and "allow_remote_backend" in e.value.message
    doc = edit(server_doc(), "server", "allow_remote_backend", "true")
    assert c.load_server_config(write(folder, doc), backend="10.0.0.5:80").backend.port == 80


def test_backend_override_replaces_a_missing_or_remote_file_value(folder: Path) -> None:
    doc = edit(server_doc(), "server", "backend", None)
    assert server_error(folder, doc).key == "server.backend"
    assert c.load_server_config(write(folder, doc), backend="127.0.0.1:1").backend.port == 1
    # Only the effective backend must be loopback...
    doc = edit(server_doc(), "server", "backend", '"10.0.0.1:80"')
    assert c.load_server_config(write(folder, doc), backend="127.0.0.1:2").backend.port == 2
    # ...but the file must still be well-formed in itself.
    doc = edit(server_doc(), "server", "backend", '"not an address"')
    assert server_error(folder, doc, backend="127.0.0.1:2").key == "server.backend"


def test_client_overrides(folder: Path) -> None:
    doc = edit(client_doc(), "client", "server_name", '"localhost"')
    path = write(folder, doc)
    cl = c.load_client_config(path, listen="127.0.0.1:1", server="127.0.0.2:1234")
    assert cl.listen.port == 1 and cl.server == c.Address("tcp", "127.0.0.2", 1234)
    assert cl.server_name == "localhost"  # an explicit server_name stays
    # Without server_name, the default follows the effective server.
    cl = c.load_client_config(write(folder, client_doc()), server="api.example.com:443")
    assert cl.server_name == "api.example.com"
    # The override satisfies the requirement for client.server.
    doc = edit(client_doc(), "client", "server", None)
    assert c.load_client_config(write(folder, doc), server="[::1]:1").server_name == "::1"
    for kwargs, key in [
        ({"server": "unix:/run/a.sock"}, "--server"),
        ({"server": "bad"}, "--server"),
        ({"listen": "bad"}, "--listen"),
    ]:
        assert client_error(folder, client_doc(), **kwargs).key == key


# --- paths --------------------------------------------------------------------------------------


def test_paths_resolve_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc" / "atls"
    certs = tmp_path / "etc" / "certs"
    conf.mkdir(parents=True)
    certs.mkdir()
    for name in ("cert.pem", "key.pem"):
        (certs / name).write_text("x")
    (conf / "platform-key.pem").write_text("x")
    doc = server_doc()
    doc["server"]["certificate"] = '"../certs/cert.pem"'
    doc["server"]["private_key"] = f'"{certs / "key.pem"}"'  # absolute stays absolute
    path = write(conf, doc, "serve.toml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = c.load_server_config(path)
    assert s.certificate.is_absolute() and s.certificate.resolve() == certs / "cert.pem"
    assert s.private_key == certs / "key.pem"
    assert s.attester.software is not None
    assert s.attester.software.platform_key == conf / "platform-key.pem"
    # A relative config path works from its own folder too.
    monkeypatch.chdir(conf)
    s = c.load_server_config("serve.toml")
    assert s.certificate.resolve() == certs / "cert.pem" and s.source == Path("serve.toml")


def test_missing_file_message_gives_the_resolved_path(folder: Path) -> None:
    err = server_error(folder, edit(server_doc(), "server", "certificate", '"sub/missing.pem"'))
    assert err.key == "server.certificate"
    assert str(folder / "sub" / "missing.pem") in err.message


def test_directory_is_not_a_file(folder: Path) -> None:
    (folder / "certdir").mkdir()
    err = server_error(folder, edit(server_doc(), "server", "certificate", '"certdir"'))
    assert err.key == "server.certificate" and "not a regular file" in err.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(folder: Path) -> None:
    (folder / "key.pem").chmod(0)
    try:
        err = server_error(folder, server_doc())
    finally:
        (folder / "key.pem").chmod(0o600)
    assert err.key == "server.private_key" and "not readable" in err.message


def test_unreadable_file_message(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule, run also as root: os.access says the key file cannot be read."""
    real_access = os.access

    def access(path: object, mode: int) -> bool:
        return False if Path(str(path)).name == "key.pem" else real_access(path, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "access", access)
    err = server_error(folder, server_doc())
    assert err.key == "server.private_key" and "not readable" in err.message
    assert str(folder / "key.pem") in err.message


def test_config_reached_through_a_symlink_keeps_its_folder(tmp_path: Path) -> None:
    """Kubernetes mounts ConfigMaps as symlinks into versioned folders: resolve against the link."""
    mount = tmp_path / "mount"
    versioned = mount / "..2024_01_01"
    versioned.mkdir(parents=True)
    for name in ("cert.pem", "key.pem", "platform-key.pem"):
        (mount / name).write_text("x")
    write(versioned, server_doc(), "serve.toml")
    (mount / "serve.toml").symlink_to(versioned / "serve.toml")
    s = c.load_server_config(mount / "serve.toml")
    assert s.certificate == mount / "cert.pem"


# --- the file itself ----------------------------------------------------------------------------


def test_missing_config_file(tmp_path: Path) -> None:
    for load in (c.load_server_config, c.load_client_config, c.detect_config_kind):
        with pytest.raises(ConfigError) as e:
            load(tmp_path / "none.toml")
        assert e.value.key == "config" and "none.toml" in e.value.message


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        c.load_server_config(tmp_path)
    assert e.value.key == "config"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_config_file(tmp_path: Path) -> None:
    p = write(tmp_path, server_doc())
    p.chmod(0)
    with pytest.raises(ConfigError) as e:
        c.load_server_config(p)
    assert e.value.key == "config"


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, '# comment\n[server]\nlisten = "127.0.0.1:1\n')
    with pytest.raises(ConfigError, match="line 3") as e:
        c.load_server_config(p)
    assert e.value.key == "config"
    p = write(tmp_path, "[server\n")
    with pytest.raises(ConfigError, match="line 1") as e:
        c.load_client_config(p)
    assert e.value.key == "config"


def test_not_utf8_and_too_large(tmp_path: Path) -> None:
    p = tmp_path / "latin1.toml"
    p.write_bytes(b'[server]\nbackend = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8") as e:
        c.load_server_config(p)
    assert e.value.key == "config"
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (c.MAX_CONFIG_FILE + 1))
    with pytest.raises(ConfigError, match="larger") as e:
        c.load_server_config(big)
    assert e.value.key == "config"


def test_wrong_kind_of_file_is_explained(folder: Path) -> None:
    client = write(folder, client_doc(), "connect.toml")
    server = write(folder, server_doc(), "serve.toml")
    with pytest.raises(ConfigError, match=r"connect configuration.*\[server\]") as e:
        c.load_server_config(client)
    assert e.value.key == "config"
    with pytest.raises(ConfigError, match=r"serve configuration.*\[client\]") as e:
        c.load_client_config(server)
    assert e.value.key == "config"


def test_detect_config_kind(tmp_path: Path) -> None:
    cases = {
        "[server]\n": "server",
        "[client]\n": "client",
        "[policy]\nid = 'x'\n": "policy",
        "[software]\n": "policy",
        "[software.measurements]\n": "policy",
    }
    for text, kind in cases.items():
        assert c.detect_config_kind(write(tmp_path, text)) == kind
    with pytest.raises(ConfigError) as e:
        c.detect_config_kind(write(tmp_path, "[other]\n"))
    assert e.value.key == "config"
    with pytest.raises(ConfigError) as e:
        c.detect_config_kind(write(tmp_path, "[broken\n"))
    assert e.value.key == "config"


# --- fuzz: any value for any key gives a ConfigError or a config, nothing else -----------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.lists(st.integers(0, 9), max_size=3),
)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return (
            '"'
            + "".join(
                ch
                if ch.isalnum() or ch in " .:/[]-_"
                else f"\\u{ord(ch):04x}"
                if ord(ch) < 0x10000
                else f"\\U{ord(ch):08x}"
                for ch in value
            )
            + '"'
        )
    return repr(value)


_SERVER_SLOTS = (
    [("server", k) for k in c._SERVER_KEYS]
    + [("expat", k) for k in c._EXPAT_KEYS]
    + [
        ("attester", "kind"),
        ("log", "level"),
        ("attester.software", "platform_key"),
        ("attester.software.measurements", "firmware"),
    ]
)


@given(st.sampled_from(_SERVER_SLOTS), _SCALARS)
def test_any_value_in_any_server_key_gives_config_error_or_config(
    tmp_path_factory: pytest.TempPathFactory, slot: tuple[str, str], value: object
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    for name in ("cert.pem", "key.pem", "platform-key.pem"):
        (folder / name).write_text("x")
    raw = None if value is None else _toml_value(value)
    doc = edit(server_doc(), slot[0], slot[1], raw)
    assert tomllib.loads(render(doc)) is not None  # the generator writes valid TOML
    try:
        cfg = c.load_server_config(write(folder, doc))
    except ConfigError as exc:
        assert exc.key.startswith((slot[0].split(".")[0], "attester")), exc
    else:
        assert isinstance(cfg, c.ServerConfig)


# --- the documented examples in config/ --------------------------------------------------------


def _keys(table: Mapping[str, object], prefix: str = "") -> set[str]:
    out = set()
    for k, v in table.items():
        dotted = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and dotted != "attester.software.measurements":
            out |= _keys(v, dotted)
        else:
            out.add(dotted)
    return out


def _schema(prefixes: dict[str, tuple[str, ...]]) -> set[str]:
    return {f"{p}.{k}" for p, keys in prefixes.items() for k in keys}


def test_examples_list_every_key_with_a_comment() -> None:
    serve = tomllib.loads((ROOT / "config" / "serve.toml").read_text())
    connect = tomllib.loads((ROOT / "config" / "connect.toml").read_text())
    assert _keys(serve) == _schema(
        {
            "server": c._SERVER_KEYS,
            "expat": c._EXPAT_KEYS,
            "attester": tuple(k for k in c._ATTESTER_KEYS if k != "software"),
            "attester.software": c._SOFTWARE_KEYS,
            "log": c._LOG_KEYS,
            "admin": c._ADMIN_KEYS,
        }
    )
    assert _keys(connect) == _schema(
        {
            "client": c._CLIENT_KEYS,
            "expat": c._EXPAT_KEYS,
            "log": c._LOG_KEYS,
            "admin": c._ADMIN_KEYS,
        }
    )
    for name in ("serve.toml", "connect.toml"):
        lines = (ROOT / "config" / name).read_text().splitlines()
        section = ""
        for i, line in enumerate(lines):
            if line.startswith("["):
                section = line.strip("[]")
            if line.startswith("#") or not line.strip():
                continue
            if line.startswith("[") and section != "attester.software.measurements":
                continue
            if section == "attester.software.measurements" and not line.startswith("["):
                continue  # measurement values: documented by their table's comment
            comment: list[str] = []
            j = i - 1
            while j >= 0 and lines[j].startswith("#"):
                comment.insert(0, lines[j])
                j -= 1
            text = " ".join(comment)
            assert comment, f"{name}: {line!r} has no comment"
            if not line.startswith("["):
                assert "default" in text or "required" in text, (
                    f"{name}: {line!r} lacks its default"
                )


def test_shipped_examples_load_against_a_dev_folder(tmp_path: Path) -> None:
    """config/*.toml point at ../dev (made by `atls-proxy dev-init dev` at the checkout's top)."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "config", root / "config")
    dev_init(root / "dev")
    s = c.load_server_config(root / "config" / "serve.toml")
    assert s == c.ServerConfig(
        listen=c.Address("tcp", "127.0.0.1", 8443),
        backend=c.Address("tcp", "127.0.0.1", 8080),
        certificate=root / "config" / ".." / "dev" / "server.pem",
        private_key=root / "config" / ".." / "dev" / "server-key.pem",
        attester=s.attester,
        # The one deliberate non-default: the example turns the admin listener on, on loopback.
        ops=c.OpsConfig(admin=c.Address("tcp", "127.0.0.1", 9901)),
        source=root / "config" / "serve.toml",
    ), "the example must show the defaults"
    assert s.attester.software is not None
    assert {
        k: v.hex() for k, v in s.attester.software.measurements.items()
    } == SIMULATED_MEASUREMENTS
    cl = c.load_client_config(root / "config" / "connect.toml")
    assert cl.server_name == "localhost" and cl.verify_pki and cl.timeouts == c.Timeouts()
    assert cl.ops == c.OpsConfig(admin=c.Address("tcp", "127.0.0.1", 9902))
    assert cl.ca is not None and cl.ca.resolve() == (root / "dev" / "ca.pem").resolve()
    assert c.detect_config_kind(root / "config" / "serve.toml") == "server"
    assert c.detect_config_kind(root / "config" / "connect.toml") == "client"


# --- hardware attesters: [attester.configfs_tsm] and [attester.tpm] ---------------------------------


def hw_doc(kind: str, table: dict[str, str] | None = None) -> Doc:
    doc = server_doc()
    del doc["attester.software"], doc["attester.software.measurements"]
    doc["attester"] = {"kind": f'"{kind}"'}
    if table is not None:
        doc["attester." + kind.replace("-", "_")] = table
    return doc


def test_configfs_tsm_defaults_and_every_key(folder: Path) -> None:
    s = c.load_server_config(write(folder, hw_doc("configfs-tsm")))
    assert s.attester.kind == "configfs-tsm" and s.attester.software is None
    assert s.attester.configfs_tsm == c.ConfigfsTsmAttesterConfig()
    assert s.attester.configfs_tsm.root == Path("/sys/kernel/config/tsm/report")
    doc = hw_doc(
        "configfs-tsm",
        {
            "root": '"/tmp/tsm/report"',
            "provider": '"sev_guest"',
            "privlevel": "2",
            "timeout": "30",
            "retries": "0",
            "entry_prefix": '"proxy-1"',
        },
    )
    edit(doc, "attester", "tier", '"batched"')
    s = c.load_server_config(write(folder, doc))
    assert s.attester.tier == "batched"
    assert s.attester.configfs_tsm == c.ConfigfsTsmAttesterConfig(
        Path("/tmp/tsm/report"), "sev_guest", 2, 30.0, 0, "proxy-1"
    )


def test_tpm_defaults_and_every_key(folder: Path) -> None:
    s = c.load_server_config(write(folder, hw_doc("tpm")))
    assert s.attester.kind == "tpm" and s.attester.tpm == c.TpmAttesterConfig()
    assert s.attester.tpm.tcti == "device:/dev/tpmrm0" and s.attester.tpm.pcrs == tuple(range(8))
    doc = hw_doc(
        "tpm",
        {
            "tcti": '"swtpm:host=127.0.0.1,port=2321"',
            "ak_handle": "0x81010002",
            "create_ak": "true",
            "hierarchy": '"owner"',
            "ak_algorithm": '"rsa-2048"',
            "pcrs": "[7, 0, 23]",
            "pcr_bank": '"sha384"',
            "timeout": "2.5",
        },
    )
    s = c.load_server_config(write(folder, doc))
    assert s.attester.tpm == c.TpmAttesterConfig(
        "swtpm:host=127.0.0.1,port=2321", 0x81010002, True, "owner", "rsa-2048", (0, 7, 23),
        "sha384", 2.5,
    )  # fmt: skip
    edit(doc, "attester.tpm", "ak_handle", '"0x81000001"')  # text works too
    assert c.load_server_config(write(folder, doc)).attester.tpm.ak_handle == 0x81000001  # type: ignore[union-attr]


HW_RULES = [
    # (kind, key, TOML value, expected key in the error, text in the message)
    ("configfs-tsm", "roots", '"/x"', "attester.configfs_tsm.roots", "did you mean 'root'"),
    ("configfs-tsm", "root", '"relative/dir"', "attester.configfs_tsm.root", "absolute"),
    ("configfs-tsm", "root", "1", "attester.configfs_tsm.root", "expected a string"),
    ("configfs-tsm", "provider", '"sgx"', "attester.configfs_tsm.provider", "tdx_guest"),
    ("configfs-tsm", "privlevel", "4", "attester.configfs_tsm.privlevel", "0..3"),
    ("configfs-tsm", "privlevel", "true", "attester.configfs_tsm.privlevel", "integer"),
    ("configfs-tsm", "timeout", "301", "attester.configfs_tsm.timeout", "at most 300"),
    ("configfs-tsm", "timeout", "0", "attester.configfs_tsm.timeout", "greater than 0"),
    ("configfs-tsm", "retries", "11", "attester.configfs_tsm.retries", "0..10"),
    ("configfs-tsm", "entry_prefix", '"a/b"', "attester.configfs_tsm.entry_prefix", "A-Z"),
    ("configfs-tsm", "entry_prefix", '""', "attester.configfs_tsm.entry_prefix", "1..64"),
    ("tpm", "tcti", '""', "attester.tpm.tcti", "TCTI string"),
    ("tpm", "tcti", '"device:/dev/tpm\\u0000"', "attester.tpm.tcti", "TCTI string"),
    ("tpm", "tcti", "5", "attester.tpm.tcti", "expected a string"),
    ("tpm", "ak_handle", "0x80000001", "attester.tpm.ak_handle", "owner persistent handle"),
    ("tpm", "ak_handle", "0x81800000", "attester.tpm.ak_handle", "0x817fffff"),
    ("tpm", "ak_handle", '"handle"', "attester.tpm.ak_handle", "not a number"),
    ("tpm", "ak_handle", "1.5", "attester.tpm.ak_handle", "a float"),
    ("tpm", "ak_handle", "true", "attester.tpm.ak_handle", "a boolean"),
    ("tpm", "create_ak", "true", "attester.tpm.create_ak", "set ak_handle"),
    ("tpm", "create_ak", '"yes"', "attester.tpm.create_ak", "true or false"),
    ("tpm", "hierarchy", '"platform"', "attester.tpm.hierarchy", '"endorsement", "owner"'),
    ("tpm", "ak_algorithm", '"ed25519"', "attester.tpm.ak_algorithm", '"ecc-p256"'),
    ("tpm", "pcrs", "[]", "attester.tpm.pcrs", "non-empty"),
    ("tpm", "pcrs", "7", "attester.tpm.pcrs", "non-empty array"),
    ("tpm", "pcrs", "[0, 24]", "attester.tpm.pcrs[1]", "0..23"),
    ("tpm", "pcrs", '["0"]', "attester.tpm.pcrs[0]", "0..23"),
    ("tpm", "pcrs", "[1, 1]", "attester.tpm.pcrs", "twice"),
    ("tpm", "pcr_bank", '"md5"', "attester.tpm.pcr_bank", '"sha256"'),
    ("tpm", "timeout", "1000", "attester.tpm.timeout", "at most 300"),
    ("tpm", "ak_handel", "1", "attester.tpm.ak_handel", "did you mean 'ak_handle'"),
]


@pytest.mark.parametrize(
    "kind,key,value,expected,text", HW_RULES, ids=[f"{r[3]}={r[2]}" for r in HW_RULES]
)
def test_hardware_attester_rule(
    folder: Path, kind: str, key: str, value: str, expected: str, text: str
) -> None:
    err = server_error(folder, hw_doc(kind, {key: value}))
    assert err.key == expected, err
    assert text in err.message, err


def test_privlevel_only_with_an_snp_provider(folder: Path) -> None:
    doc = hw_doc("configfs-tsm", {"provider": '"tdx_guest"', "privlevel": "1"})
    err = server_error(folder, doc)
    assert err.key == "attester.configfs_tsm.privlevel" and "sev_guest" in err.message


def test_attester_kind_and_tables_of_other_kinds(folder: Path) -> None:
    err = server_error(folder, edit(server_doc(), "attester", "kind", '"sgx"'))
    assert err.key == "attester.kind"
    assert '"software", "configfs-tsm", "tpm"' in err.message
    # A table for a kind that is not selected is refused, not silently ignored.
    err = server_error(folder, edit(server_doc(), "attester.tpm", "tcti", '"device:/dev/tpm0"'))
    assert err.key == "attester.tpm" and 'kind = "tpm"' in err.message
    doc = hw_doc("tpm")
    doc["attester.software"] = {"platform_key": '"platform-key.pem"'}
    err = server_error(folder, doc)
    assert err.key == "attester.software" and '(kind is "tpm")' in err.message
    doc = hw_doc("configfs-tsm", {})
    doc["attester.tpm"] = {}
    assert server_error(folder, doc).key == "attester.tpm"
    assert server_error(folder, hw_doc("tpm", {"pcrs": "[]"})).key == "attester.tpm.pcrs"
    err = server_error(folder, "[attester]\nkind = 'tpm'\ntpm = 5\n[server]\n")
    assert err.key in ("attester.tpm", "server.backend")


def test_serve_tpm_example_lists_every_key_with_a_comment(tmp_path: Path) -> None:
    path = ROOT / "config" / "serve-tpm.toml"
    doc = tomllib.loads(path.read_text())
    assert doc["attester"]["kind"] == "tpm"
    assert set(doc["attester"]["tpm"]) == set(c._TPM_KEYS)
    lines = path.read_text().splitlines()
    section = ""
    for i, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section != "attester.tpm" or not line.strip() or line.startswith("#"):
            continue
        comment = []
        j = i - 1
        while j >= 0 and lines[j].startswith("#"):
            comment.insert(0, lines[j])
            j -= 1
        assert comment and ("default" in " ".join(comment)), f"{line!r} lacks its default"
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "config", root / "config")
    dev_init(root / "dev")
    s = c.load_server_config(root / "config" / "serve-tpm.toml")
    assert s.attester.tpm == c.TpmAttesterConfig(
        **{**doc["attester"]["tpm"], "pcrs": (0, 1, 2, 3, 4, 5, 6, 7)}
    )


def test_connect_says_what_its_policy_accepts_that_weakens_the_verdict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The dev policy accepts simulated evidence and the cached tier: both are said at each
    # load, as serve says it runs a SIMULATED attester; a policy without them says nothing.
    from atls_proxy.app import build_client_settings

    dev_init(tmp_path)
    with caplog.at_level("WARNING", logger="atls_proxy"):
        build_client_settings(c.load_client_config(tmp_path / "connect.toml"))
    assert "accepts SIMULATED software evidence" in caplog.text, caplog.text
    assert "accepts the cached tier" in caplog.text, caplog.text
    policy = tmp_path / "policy.toml"
    text = policy.read_text()
    assert '"cached"' in text
    policy.write_text(
        text.replace(', "cached"', "").replace("allow_simulated = true", "allow_simulated = false")
    )
    caplog.clear()
    with caplog.at_level("WARNING", logger="atls_proxy"):
        build_client_settings(c.load_client_config(tmp_path / "connect.toml"))
    assert "accepts SIMULATED" not in caplog.text and "cached" not in caplog.text, caplog.text
    # ... but that policy (software only, simulated refused) accepts nothing, and says so
    assert "accepts no evidence, so every server is rejected" in caplog.text, caplog.text


@pytest.mark.parametrize(
    "mode,said",
    [(0o600, None), (0o640, None), (0o644, "readable by every user"), (0o660, "writable")],
)
def test_a_private_key_open_to_others_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, said: str | None
) -> None:
    # The TLS key is also the cached tier's AIK: whoever can read it can impersonate the server.
    dev_init(tmp_path)
    for name in ("server-key.pem", "platform-key.pem"):
        (tmp_path / name).chmod(mode)
    with caplog.at_level("WARNING", logger="atls_proxy.ops.config"):
        c.load_server_config(tmp_path / "serve.toml")
    warned = [r.getMessage() for r in caplog.records if "private key" in r.getMessage()]
    if said is None:
        assert warned == [], warned
    else:
        assert len(warned) == 2 and all(said in w for w in warned), warned
        assert any(w.startswith("server.private_key") for w in warned), warned


def test_a_hardware_section_that_names_no_workload_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # [tdx] without [tdx.registers] accepts any TD on genuine hardware: said at every load.
    from dataclasses import replace as dc_replace

    from atls_proxy import app
    from atls_proxy.verify.tdx.policy import TdxPolicy

    dev_init(tmp_path)
    real = app.load_policy
    section = [TdxPolicy()]
    monkeypatch.setattr(
        app, "load_policy", lambda path: dc_replace(real(path), hardware={"tdx": section[0]})
    )
    monkeypatch.setattr(app, "verifiers_for_policy", lambda policy, path: [])
    with caplog.at_level("WARNING", logger="atls_proxy"):
        app.build_client_settings(c.load_client_config(tmp_path / "connect.toml"))
    assert "[tdx] names no reference value of the workload" in caplog.text, caplog.text
    caplog.clear()
    section[0] = TdxPolicy(registers={"mrtd": frozenset({bytes(48)})})
    with caplog.at_level("WARNING", logger="atls_proxy"):
        app.build_client_settings(c.load_client_config(tmp_path / "connect.toml"))
    assert "names no reference value" not in caplog.text, caplog.text
