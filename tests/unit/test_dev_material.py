"""dev-init: material that verifies as a WebPKI-style chain, private files 0600, no overwrite."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store

from atls_proxy.errors import ConfigError
from atls_proxy.ops.devinit import FILES, dev_init
from atls_proxy.tls.context import hostname_matches, load_server_identity


def test_writes_everything_with_modes(tmp_path: Path) -> None:
    written = dev_init(tmp_path / "d")
    assert [p.name for p in written] == list(FILES)
    for p in written:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o600 if p.name.endswith("-key.pem") else 0o644), p


def test_chain_verifies_independently(tmp_path: Path) -> None:
    d = tmp_path / "d"
    dev_init(d)
    ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    leaf = x509.load_pem_x509_certificate((d / "server.pem").read_bytes())
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    builder = PolicyBuilder().store(Store([ca])).time(when)
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        chain = builder.build_server_verifier(name).verify(leaf, [])
        assert chain[-1] == ca
    assert hostname_matches(leaf, "localhost") and hostname_matches(leaf, "::1")
    assert not hostname_matches(leaf, "example.com")
    ident = load_server_identity(d / "server.pem", d / "server-key.pem")
    assert ident.chain[0] == leaf


def test_two_runs_do_not_trust_each_other(tmp_path: Path) -> None:
    dev_init(tmp_path / "a")
    dev_init(tmp_path / "b")
    for name in ("ca.pem", "platform.pem"):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes()
    ca_b = x509.load_pem_x509_certificate((tmp_path / "b" / "ca.pem").read_bytes())
    leaf_a = x509.load_pem_x509_certificate((tmp_path / "a" / "server.pem").read_bytes())
    from cryptography.x509.verification import VerificationError as X509VerificationError

    with pytest.raises(X509VerificationError):
        PolicyBuilder().store(Store([ca_b])).build_server_verifier(
            x509.DNSName("localhost")
        ).verify(leaf_a, [])


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    d = tmp_path / "d"
    dev_init(d)
    before = (d / "ca-key.pem").read_bytes()
    with pytest.raises(ConfigError) as e:
        dev_init(d)
    assert e.value.key == "dev-init"
    assert (d / "ca-key.pem").read_bytes() == before
    dev_init(d, force=True)
    assert (d / "ca-key.pem").read_bytes() != before
    assert stat.S_IMODE((d / "ca-key.pem").stat().st_mode) == 0o600


def test_platform_key_pair_matches(tmp_path: Path) -> None:
    d = tmp_path / "d"
    dev_init(d)
    priv = serialization.load_pem_private_key((d / "platform-key.pem").read_bytes(), None)
    pub = serialization.load_pem_public_key((d / "platform.pem").read_bytes())
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert priv.public_key().public_bytes(*fmt) == pub.public_bytes(*fmt)
