"""atls_proxy.ops.devinit: certificates that verify as a chain (checked independently with
cryptography's X.509 verifier at a pinned time), key files 0600, no silent overwrite, configs that
load, and fresh material on every run."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from cryptography.x509.verification import VerificationError as X509VerificationError

from atls_proxy.attest.software import platform_ueid
from atls_proxy.errors import ConfigError
from atls_proxy.ops.config import Address, load_client_config, load_server_config
from atls_proxy.ops.devinit import FILES, SIMULATED_MEASUREMENTS, dev_init
from atls_proxy.ops.policyfile import load_policy

NOW = datetime.datetime(2026, 3, 1, 12, 0, 0, tzinfo=datetime.UTC)
SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    d = tmp_path / "dev"
    dev_init(d, now=NOW)
    return d


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def test_writes_every_file_and_returns_the_paths(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"  # missing parents are created
    written = dev_init(d, now=NOW)
    assert written == [d / name for name in FILES]
    assert sorted(p.name for p in d.iterdir()) == sorted(FILES)
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_modes_whatever_the_umask(tmp_path: Path, umask: None, mask: int) -> None:
    os.umask(mask)
    for p in dev_init(tmp_path / "d", now=NOW):
        assert mode(p) == (0o600 if p.name.endswith("-key.pem") else 0o644), p
    # The folder it creates too: whoever can write it could swap ca.pem or policy.toml.
    assert mode(tmp_path / "d") == 0o700


def test_ca_certificate(dev: Path) -> None:
    ca = cert(dev / "ca.pem")
    assert ca.subject == ca.issuer
    ca.verify_directly_issued_by(ca)  # self-signed
    cn = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str) and cn.startswith("atls-proxy development CA ")
    suffix = cn.removeprefix("atls-proxy development CA ")
    assert len(suffix) == 8 and int(suffix, 16) >= 0
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, ec.SECP256R1)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature and not ku.value.key_encipherment
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(pub)
    assert ca.not_valid_before_utc == NOW - datetime.timedelta(hours=1)
    assert ca.not_valid_after_utc == NOW + datetime.timedelta(days=365)
    assert private_key(dev / "ca-key.pem").public_key().public_bytes(*SPKI) == pub.public_bytes(
        *SPKI
    )


def test_server_certificate(dev: Path) -> None:
    ca = cert(dev / "ca.pem")
    pem = (dev / "server.pem").read_bytes()
    assert len(x509.load_pem_x509_certificates(pem)) == 1  # the leaf and nothing else
    leaf = cert(dev / "server.pem")
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    pub = leaf.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, ec.SECP256R1)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(pub)
    assert leaf.not_valid_before_utc == NOW - datetime.timedelta(hours=1)
    assert leaf.not_valid_after_utc == NOW + datetime.timedelta(days=90)
    assert private_key(dev / "server-key.pem").public_key().public_bytes(*SPKI) == pub.public_bytes(
        *SPKI
    )


@pytest.mark.parametrize(
    "name",
    [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ],
)
def test_chain_verifies_under_the_ca(dev: Path, name: x509.DNSName | x509.IPAddress) -> None:
    ca, leaf = cert(dev / "ca.pem"), cert(dev / "server.pem")
    when = NOW + datetime.timedelta(days=1)
    verifier = PolicyBuilder().store(Store([ca])).time(when).build_server_verifier(name)
    chain = verifier.verify(leaf, [])
    assert chain == [leaf, ca]


@pytest.mark.parametrize(
    "name,when",
    [
        (x509.DNSName("example.com"), NOW),
        (x509.IPAddress(ipaddress.ip_address("10.0.0.1")), NOW),
        (x509.DNSName("localhost"), NOW - datetime.timedelta(hours=2)),  # before notBefore
        (x509.DNSName("localhost"), NOW + datetime.timedelta(days=91)),  # leaf expired
    ],
)
def test_chain_rejected_for_other_names_and_times(
    dev: Path, name: x509.DNSName | x509.IPAddress, when: datetime.datetime
) -> None:
    ca, leaf = cert(dev / "ca.pem"), cert(dev / "server.pem")
    verifier = PolicyBuilder().store(Store([ca])).time(when).build_server_verifier(name)
    with pytest.raises(X509VerificationError):
        verifier.verify(leaf, [])


def test_naive_now_is_utc(tmp_path: Path) -> None:
    dev_init(tmp_path / "d", now=NOW.replace(tzinfo=None))
    assert cert(tmp_path / "d" / "ca.pem").not_valid_before_utc == NOW - datetime.timedelta(hours=1)


def test_default_now_is_the_current_time(tmp_path: Path) -> None:
    dev_init(tmp_path / "d")
    leaf = cert(tmp_path / "d" / "server.pem")
    now = datetime.datetime.now(datetime.UTC)
    assert leaf.not_valid_before_utc < now < leaf.not_valid_after_utc


def test_platform_key_pair(dev: Path) -> None:
    priv = private_key(dev / "platform-key.pem")
    assert isinstance(priv.curve, ec.SECP256R1)
    assert b"BEGIN PRIVATE KEY" in (dev / "platform-key.pem").read_bytes()  # PKCS#8
    assert (dev / "platform.pem").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    pub = serialization.load_pem_public_key((dev / "platform.pem").read_bytes())
    assert priv.public_key().public_bytes(*SPKI) == pub.public_bytes(*SPKI)
    for name in ("ca-key.pem", "server-key.pem"):
        assert b"BEGIN PRIVATE KEY" in (dev / name).read_bytes()


def test_simulated_measurements_are_digests_of_fixed_labels() -> None:
    assert {
        part: hashlib.sha256(f"atls-proxy simulated {part} v1".encode()).hexdigest()
        for part in ("firmware", "kernel", "workload")
    } == SIMULATED_MEASUREMENTS


def test_configs_load_and_agree(dev: Path) -> None:
    s = load_server_config(dev / "serve.toml")
    assert s.listen == Address("tcp", "127.0.0.1", 8443)
    assert s.backend == Address("tcp", "127.0.0.1", 8080)
    assert s.certificate == (dev / "server.pem").absolute()
    assert s.private_key == (dev / "server-key.pem").absolute()
    assert s.attester.kind == "software" and s.attester.software is not None
    assert s.attester.software.platform_key == (dev / "platform-key.pem").absolute()
    reported = {k: v.hex() for k, v in s.attester.software.measurements.items()}
    assert reported == SIMULATED_MEASUREMENTS

    cl = load_client_config(dev / "connect.toml")
    assert cl.listen == Address("tcp", "127.0.0.1", 9443)
    assert cl.server == s.listen and cl.server_name == "localhost"
    assert cl.ca == (dev / "ca.pem").absolute() and cl.verify_pki
    assert cl.policy == (dev / "policy.toml").absolute()

    policy = load_policy(cl.policy)
    assert policy.policy_id == "atls-proxy dev policy"
    assert policy.software is not None and policy.software.allow_simulated
    (trusted,) = policy.software.platform_keys
    assert trusted.public_bytes(*SPKI) == private_key(
        dev / "platform-key.pem"
    ).public_key().public_bytes(*SPKI)
    # The policy accepts exactly what the attester reports.
    assert {k: set(v) for k, v in policy.software.measurements.items()} == {
        k: {bytes.fromhex(v)} for k, v in SIMULATED_MEASUREMENTS.items()
    }


def test_written_toml_is_commented_and_says_simulated(dev: Path) -> None:
    policy = tomllib.loads((dev / "policy.toml").read_text())
    assert policy["policy"] == {"id": "atls-proxy dev policy"}
    assert policy["software"]["allow_simulated"] is True
    assert policy["software"]["platform_keys"] == ["platform.pem"]
    assert policy["software"]["measurements"] == {k: [v] for k, v in SIMULATED_MEASUREMENTS.items()}
    for name in ("policy.toml", "serve.toml", "connect.toml"):
        text = (dev / name).read_text()
        assert text.count("\n#") >= 3, name
        assert "DEVELOPMENT ONLY" in text
    assert "SIMULATED" in (dev / "serve.toml").read_text()
    assert "SIMULATED" in (dev / "policy.toml").read_text()


def test_two_runs_make_different_material_that_does_not_cross_verify(tmp_path: Path) -> None:
    dev_init(tmp_path / "a", now=NOW)
    dev_init(tmp_path / "b", now=NOW)
    a, b = tmp_path / "a", tmp_path / "b"
    for name in (
        "ca.pem",
        "ca-key.pem",
        "server.pem",
        "server-key.pem",
        "platform-key.pem",
        "platform.pem",
    ):
        assert (a / name).read_bytes() != (b / name).read_bytes(), name
    assert cert(a / "ca.pem").subject != cert(b / "ca.pem").subject
    verifier = (
        PolicyBuilder()
        .store(Store([cert(b / "ca.pem")]))
        .time(NOW)
        .build_server_verifier(x509.DNSName("localhost"))
    )
    with pytest.raises(X509VerificationError):
        verifier.verify(cert(a / "server.pem"), [])
    # The configs, which name files but hold no keys, are the same text.
    for name in ("serve.toml", "connect.toml"):
        assert (a / name).read_text() == (b / name).read_text()


def test_refuses_to_overwrite(dev: Path) -> None:
    before = {name: (dev / name).read_bytes() for name in FILES}
    with pytest.raises(ConfigError, match="--force") as e:
        dev_init(dev, now=NOW)
    assert e.value.key == "dev-init"
    assert {name: (dev / name).read_bytes() for name in FILES} == before


def test_one_existing_file_blocks_the_whole_run(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "connect.toml").write_text("# mine\n")
    with pytest.raises(ConfigError) as e:
        dev_init(d, now=NOW)
    assert e.value.key == "dev-init" and "connect.toml" in e.value.message
    assert sorted(p.name for p in d.iterdir()) == ["connect.toml"]  # nothing else written
    assert (d / "connect.toml").read_text() == "# mine\n"


def test_force_overwrites_with_new_keys_and_tight_modes(dev: Path) -> None:
    before = {name: (dev / name).read_bytes() for name in FILES}
    (dev / "server-key.pem").chmod(0o644)  # a loosened key file is not reused as is
    written = dev_init(dev, force=True, now=NOW)
    assert written == [dev / name for name in FILES]
    for name in ("ca.pem", "ca-key.pem", "server-key.pem", "platform-key.pem"):
        assert (dev / name).read_bytes() != before[name]
    for p in written:
        assert mode(p) == (0o600 if p.name.endswith("-key.pem") else 0o644), p
    load_server_config(dev / "serve.toml")
    load_client_config(dev / "connect.toml")


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    target = tmp_path / "elsewhere.pem"
    (d / "ca-key.pem").symlink_to(target)  # dangling: still counts as existing
    with pytest.raises(ConfigError) as e:
        dev_init(d, now=NOW)
    assert e.value.key == "dev-init"
    dev_init(d, force=True, now=NOW)
    assert not target.exists()  # the key went into a new file, not through the link
    assert not (d / "ca-key.pem").is_symlink() and mode(d / "ca-key.pem") == 0o600


def test_directory_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError) as e:
        dev_init(f, now=NOW)
    assert e.value.key == "dev-init"
    with pytest.raises(ConfigError) as e:
        dev_init(f / "sub", now=NOW)
    assert e.value.key == "dev-init"


def test_existing_directory_in_place_of_a_file(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "ca.pem").mkdir(parents=True)
    with pytest.raises(ConfigError) as e:
        dev_init(d, force=True, now=NOW)
    assert e.value.key == "dev-init"


def test_policy_documents_the_instance_pin(dev: Path) -> None:
    text = (dev / "policy.toml").read_text()
    ueid = platform_ueid(private_key(dev / "platform-key.pem").public_key()).hex()
    assert f'# instances = ["{ueid}"]' in text
    (dev / "pinned.toml").write_text(text.replace("# instances =", "instances ="))
    policy = load_policy(dev / "pinned.toml")
    assert policy.software is not None
    assert policy.software.instances == frozenset({bytes.fromhex(ueid)})


def test_server_names_join_the_certificate(tmp_path: Path) -> None:
    # A cluster Service's name (docs/OPERATIONS.md, Kubernetes walkthrough) and an address.
    dev_init(
        tmp_path,
        now=NOW,
        server_names=["Web.atls-example.svc.cluster.local", "10.0.0.7", "localhost"],
    )
    ca, leaf = cert(tmp_path / "ca.pem"), cert(tmp_path / "server.pem")
    when = NOW + datetime.timedelta(days=1)
    for name in (
        x509.DNSName("web.atls-example.svc.cluster.local"),
        x509.IPAddress(ipaddress.ip_address("10.0.0.7")),
        x509.DNSName("localhost"),
    ):
        verifier = PolicyBuilder().store(Store([ca])).time(when).build_server_verifier(name)
        assert verifier.verify(leaf, []) == [leaf, ca]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(san) == 5  # localhost given twice is held once


@pytest.mark.parametrize("bad", ["*.example.com", "a_b.example", "example.com.", "", "-x.example"])
def test_a_bad_server_name_is_refused_before_anything_is_written(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        dev_init(tmp_path / "d", server_names=[bad])
    assert e.value.key == "--server-name"
    assert not (tmp_path / "d").exists()
