"""Operator-named files are read as regular files only, and capped (ops/files.py): a FIFO, a
device or a huge file named in a configuration or a policy fails at once, instead of hanging the
start, ``check-config`` or a reload."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from atls_proxy.ops.devinit import dev_init
from atls_proxy.ops.files import read_capped
from tests.support.procs import run_cli


def _bounded(fn, seconds: float = 5.0):  # type: ignore[no-untyped-def]
    """``fn()``'s outcome; fails the test (rather than hanging it) if it blocks."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert out, f"blocked for {seconds} s"
    return out[0]


def test_a_fifo_a_device_and_a_folder_are_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "key.pem"
    os.mkfifo(fifo)  # no writer: a plain open() would block forever
    for path in (fifo, Path("/dev/zero"), tmp_path):
        err = _bounded(lambda p=path: read_capped(p, 1024))
        assert isinstance(err, OSError) and err.strerror == "not a regular file", (path, err)


def test_a_regular_file_is_read_up_to_the_cap_plus_one(tmp_path: Path) -> None:
    f = tmp_path / "big"
    f.write_bytes(b"x" * 5000)
    assert read_capped(f, 100) == b"x" * 101  # the caller can tell it is oversized
    assert read_capped(f, 10_000) == b"x" * 5000
    with pytest.raises(FileNotFoundError):
        read_capped(tmp_path / "missing", 10)


@pytest.mark.parametrize("where", ["policy-key", "config"])
def test_check_config_on_a_fifo_exits_2_instead_of_hanging(tmp_path: Path, where: str) -> None:
    dev = tmp_path / "dev"
    dev_init(dev)
    os.mkfifo(dev / "fifo")
    if where == "policy-key":
        policy = dev / "policy.toml"
        policy.write_text(policy.read_text().replace('["platform.pem"]', '["fifo"]'))
        target = dev / "connect.toml"
    else:
        target = dev / "fifo"
    res = run_cli("check-config", str(target), timeout=30)  # TimeoutExpired if it hangs
    assert res.returncode == 2, res.stderr
    assert "not a regular file" in res.stderr, res.stderr


def test_a_missing_trust_folder_names_the_policy_key_to_set() -> None:
    # The key an operator must add is trust.<format>.<folder>: a bare "tdx.collateral" led to
    # an "unknown key" when followed literally.
    from atls_proxy.errors import ConfigError
    from atls_proxy.ops.cca_files import load_cca_trust
    from atls_proxy.ops.tdx_files import load_tdx_trust
    from atls_proxy.ops.tpm_files import load_tpm_trust

    for load, key in (
        (load_tdx_trust, "trust.tdx.collateral"),
        (load_cca_trust, "trust.cca.certs"),
        (load_tpm_trust, "trust.tpm.certs"),
    ):
        with pytest.raises(ConfigError) as e:
            load(None)
        assert e.value.key == key, (load, e.value.key)


def test_check_config_on_a_policy_loads_what_connect_loads(tmp_path: Path) -> None:
    # A policy with only a hardware section is a policy (it was "cannot tell what kind of file
    # it is"), and its trust folders are loaded as connect loads them (it said OK, and connect
    # then exited 2).
    tdx_only = tmp_path / "tdx-policy.toml"
    tdx_only.write_text("[tdx]\n")
    res = run_cli("check-config", str(tdx_only), timeout=60)
    assert res.returncode == 2 and "trust.tdx.collateral" in res.stderr, res.stderr
    dev = tmp_path / "dev"
    dev_init(dev)
    res = run_cli("check-config", str(dev / "policy.toml"), timeout=60)
    assert res.returncode == 0 and "OK (policy configuration)" in res.stdout, res.stderr
