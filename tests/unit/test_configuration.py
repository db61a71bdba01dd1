"""Configuration loading: every rule names its key; examples in config/ stay valid."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atls_proxy.errors import ConfigError
from atls_proxy.ops import config as c
from atls_proxy.ops.devinit import SIMULATED_MEASUREMENTS, dev_init

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(dev_init(tmp_path_factory.mktemp("dev"))[0]).parent


def _server(dev: Path, tmp: Path, extra: str = "", replace: tuple[str, str] | None = None) -> Path:
    text = (dev / "serve.toml").read_text()
    if replace:
        text = text.replace(*replace)
    text = text.replace("[server]", "[server]\n" + extra, 1)
    for name in ("server.pem", "server-key.pem", "platform-key.pem"):
        text = text.replace(f'"{name}"', f'"{dev / name}"')
    p = tmp / "s.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text,expected",
    [
        ("127.0.0.1:8443", c.Address("tcp", "127.0.0.1", 8443)),
        ("localhost:1", c.Address("tcp", "localhost", 1)),
        ("[::1]:65535", c.Address("tcp", "::1", 65535)),
        ("unix:/run/app.sock", c.Address("unix", path="/run/app.sock")),
    ],
)
def test_addresses_round_trip(text: str, expected: c.Address) -> None:
    a = c.parse_address(text, "k")
    assert a == expected and str(a) == text
    assert a.is_loopback()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "8443",
        ":8443",
        "host:",
        "host:x",
        "host:0",
        "host:70000",
        "::1:80",
        "[::1]80",
        "[zz]:1",
        "unix:rel",
        "a b:1",
    ],
)
def test_bad_addresses(text: str) -> None:
    with pytest.raises(ConfigError) as e:
        c.parse_address(text, "server.listen")
    assert e.value.key == "server.listen"


def test_loopback_detection() -> None:
    assert c.parse_address("127.9.9.9:1", "k").is_loopback()
    assert not c.parse_address("10.0.0.1:1", "k").is_loopback()
    assert not c.parse_address("example.com:1", "k").is_loopback()


@given(st.text(max_size=40))
def test_parse_address_only_raises_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError):
        c.parse_address(text, "k")


def test_dev_configs_load(dev: Path) -> None:
    s = c.load_server_config(dev / "serve.toml")
    assert s.listen == c.Address("tcp", "127.0.0.1", 8443) and s.backend.port == 8080
    assert s.plain_clients == "refuse" and s.timeouts == c.Timeouts() and s.max_connections == 1024
    assert s.attester.software is not None
    assert {
        k: v.hex() for k, v in s.attester.software.measurements.items()
    } == SIMULATED_MEASUREMENTS
    cl = c.load_client_config(dev / "connect.toml")
    assert cl.server_name == "localhost" and cl.verify_pki and cl.ca == dev / "ca.pem"


def test_overrides(dev: Path) -> None:
    s = c.load_server_config(dev / "serve.toml", listen="[::1]:9000", backend="unix:/tmp/b.sock")
    assert str(s.listen) == "[::1]:9000" and s.backend.kind == "unix"
    with pytest.raises(ConfigError) as e:
        c.load_server_config(dev / "serve.toml", backend="nope")
    assert e.value.key == "--backend"
    cl = c.load_client_config(dev / "connect.toml", server="127.0.0.2:1234")
    assert cl.server.port == 1234 and cl.server_name == "localhost"


@pytest.mark.parametrize(
    "extra,replace,key",
    [
        ("lisen = 1\n", None, "server.lisen"),
        ("handshake_timeout = 0\n", None, "server.handshake_timeout"),
        ("idle_timeout = nan\n", None, "server.idle_timeout"),
        ("max_connections = true\n", None, "server.max_connections"),
        ("max_connections = 0\n", None, "server.max_connections"),
        ('plain_clients = "maybe"\n', None, "server.plain_clients"),
        ("", ('backend = "127.0.0.1:8080"', 'backend = "10.1.2.3:80"'), "server.backend"),
        ("", ('backend = "127.0.0.1:8080"', ""), "server.backend"),
        ("", ('certificate = "', 'certificate = "/nonexistent/'), "server.certificate"),
        ("", ('kind = "software"', 'kind = "tdx"'), "attester.kind"),
        (
            "",
            ("[attester.software.measurements]", '[attester.software.measurements]\nbad = "zz"'),
            "attester.software.measurements.bad",
        ),
        (
            "",
            (
                "[attester.software.measurements]",
                '[attester.software.measurements]\nshort = "abcd"',
            ),
            "attester.software.measurements.short",
        ),
        ("", ("[attester]", "[expat]\nextension_type = 70000\n[attester]"), "expat.extension_type"),
        ("", ("[attester]", '[expat]\nexporter_label = ""\n[attester]'), "expat.exporter_label"),
        ("", ("[attester]", '[log]\nlevel = "loud"\n[attester]'), "log.level"),
        ("", ("[attester]", "[extra]\n[attester]"), "extra"),
    ],
)
def test_server_rules(
    dev: Path, tmp_path: Path, extra: str, replace: tuple[str, str] | None, key: str
) -> None:
    with pytest.raises(ConfigError) as e:
        c.load_server_config(_server(dev, tmp_path, extra, replace))
    assert e.value.key == key, e.value


def test_remote_backend_needs_opt_in(dev: Path, tmp_path: Path) -> None:
    p = _server(
        dev,
        tmp_path,
        "allow_remote_backend = true\n",
        ('backend = "127.0.0.1:8080"', 'backend = "10.1.2.3:80"'),
    )
    assert c.load_server_config(p).backend.host == "10.1.2.3"


def test_unknown_key_suggests(dev: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'idle_timeout'"):
        c.load_server_config(_server(dev, tmp_path, "idle_timout = 3\n"))


def test_client_rules(dev: Path, tmp_path: Path) -> None:
    base = (
        (dev / "connect.toml")
        .read_text()
        .replace('"ca.pem"', f'"{dev / "ca.pem"}"')
        .replace('"policy.toml"', f'"{dev / "policy.toml"}"')
    )
    cases = {
        "client.ca": base.replace(f'"{dev / "ca.pem"}"', '"missing.pem"'),
        "client.server": base.replace('server = "127.0.0.1:8443"', 'server = "unix:/x"'),
        "client.verify_pki": base.replace("[client]", "[client]\nverify_pki = 1"),
        "client.server_name": base.replace('server_name = "localhost"', 'server_name = "a b"'),
    }
    for key, text in cases.items():
        p = tmp_path / "c.toml"
        p.write_text(text)
        with pytest.raises(ConfigError) as e:
            c.load_client_config(p)
        assert e.value.key == key
    # verify_pki = false needs no CA
    p = tmp_path / "c.toml"
    p.write_text(base.replace(f'ca = "{dev / "ca.pem"}"', "verify_pki = false"))
    assert c.load_client_config(p).ca is None


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        c.load_server_config(tmp_path / "none.toml")
    assert e.value.key == "config"
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nlisten = 1")
    with pytest.raises(ConfigError, match="line 1"):
        c.load_server_config(bad)
    with pytest.raises(ConfigError):
        c.detect_config_kind(tmp_path / "none.toml")
    odd = tmp_path / "odd.toml"
    odd.write_text("[other]\n")
    with pytest.raises(ConfigError):
        c.detect_config_kind(odd)


def test_shipped_examples_are_valid(tmp_path: Path) -> None:
    """config/*.toml document every key; they must load against a dev-init folder named dev/."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "config", root / "config")
    dev_init(root / "dev")
    s = c.load_server_config(root / "config" / "serve.toml")
    assert s.attester.software is not None
    assert {
        k: v.hex() for k, v in s.attester.software.measurements.items()
    } == SIMULATED_MEASUREMENTS
    c.load_client_config(root / "config" / "connect.toml")
    from atls_proxy.ops.policyfile import load_policy

    assert load_policy(root / "config" / "policy.toml").software is not None
    assert c.detect_config_kind(root / "config" / "policy.toml") == "policy"
