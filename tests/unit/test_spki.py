"""The SPKI evidence is bound to is the certificate's own (expat/spki.py): read from the DER, and
certificates whose key re-encodes differently (a compressed EC point, an RSASSA-PSS key) are
refused by the server at start and by the relying party."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from atls_proxy.errors import ConfigError
from atls_proxy.expat.authenticator import parse_leaf
from atls_proxy.expat.spki import canonical_key_problem, certificate_spki
from atls_proxy.tls.context import load_server_identity
from tests.support.pki import self_signed


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["p256", "p384", "rsa", "ed25519"],
)
def test_the_usual_keys_are_their_own_canonical_spki(key) -> None:  # type: ignore[no-untyped-def]
    cert = self_signed(key)
    der = cert.public_bytes(Encoding.DER)
    own = certificate_spki(der)
    assert own == key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert canonical_key_problem(cert) is None
    assert parse_leaf(der)[2] == own


def test_truncated_or_malformed_der_is_a_value_error() -> None:
    der = self_signed(ec.generate_private_key(ec.SECP256R1())).public_bytes(Encoding.DER)
    for bad in (der[:10], der[: len(der) // 2], b"\x31" + der[1:], b"\x30\x80" + der[2:], b""):
        with pytest.raises(ValueError):
            certificate_spki(bad)


def _openssl(tmp: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp)


@pytest.fixture
def openssl() -> str:
    tool = shutil.which("openssl")
    if tool is None:
        pytest.skip("openssl is not installed")
    return tool


def _compressed(tmp: Path) -> tuple[Path, Path]:
    _openssl(tmp, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "k.pem")
    _openssl(tmp, "ec", "-in", "k.pem", "-conv_form", "compressed", "-out", "kc.pem")
    _openssl(tmp, "req", "-x509", "-key", "kc.pem", "-out", "c.pem", "-subj", "/CN=x", "-days", "1")
    return tmp / "c.pem", tmp / "k.pem"


def _rsa_pss(tmp: Path) -> tuple[Path, Path]:
    _openssl(
        tmp, "req", "-x509", "-newkey", "rsa-pss", "-pkeyopt", "rsa_keygen_bits:2048",
        "-pkeyopt", "rsa_pss_keygen_md:sha384", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
        "-subj", "/CN=x", "-days", "1",
    )  # fmt: skip
    return tmp / "c.pem", tmp / "k.pem"


@pytest.mark.parametrize(
    "make,why", [(_compressed, "canonical DER"), (_rsa_pss, "id-RSASSA-PSS")], ids=["ec", "pss"]
)
def test_a_key_that_re_encodes_differently_is_refused(  # type: ignore[no-untyped-def]
    openssl: str, tmp_path: Path, make, why: str
) -> None:
    cert_path, key_path = make(tmp_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    der = cert.public_bytes(Encoding.DER)
    # What the binder used to be computed over differs from the certificate's own SPKI.
    reencoded = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert certificate_spki(der) != reencoded
    problem = canonical_key_problem(cert)
    assert problem is not None and why in problem
    with pytest.raises(ValueError, match="unsupported end-entity key"):
        parse_leaf(der)  # the relying party: ea.certificate / tls.certificate
    with pytest.raises(ConfigError) as e:
        load_server_identity(cert_path, key_path)  # serve: a configuration error at start
    assert e.value.key == "server.certificate" and why in str(e.value)


def test_the_server_still_loads_an_ordinary_certificate(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "c.pem").write_bytes(self_signed(key).public_bytes(Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    assert load_server_identity(tmp_path / "c.pem", tmp_path / "k.pem").chain
