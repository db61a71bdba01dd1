"""``atls-proxy dev-init DIR``: development material that works out of the box, and nowhere else.

Writes a fresh CA, a server certificate for ``localhost``/``127.0.0.1``/``::1`` signed by it, a
SIMULATED platform key for the software attester, a policy trusting that key and the simulated
measurements, and ``serve.toml``/``connect.toml`` wired to each other. Every run makes new keys, so
material from another ``dev-init`` is not trusted. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from atls_proxy.errors import ConfigError

# The simulated measurements the software attester reports and the dev policy accepts. They are
# digests of fixed labels, not of anything that runs: the software attester measures nothing.
SIMULATED_MEASUREMENTS = {
    "firmware": hashlib.sha256(b"atls-proxy simulated firmware v1").hexdigest(),
    "kernel": hashlib.sha256(b"atls-proxy simulated kernel v1").hexdigest(),
    "workload": hashlib.sha256(b"atls-proxy simulated workload v1").hexdigest(),
}

FILES = (
    "ca.pem",
    "ca-key.pem",
    "server.pem",
    "server-key.pem",
    "platform-key.pem",
    "platform.pem",
    "policy.toml",
    "serve.toml",
    "connect.toml",
)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"atls-proxy development CA {secrets.token_hex(4)}"
            )
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _measurement_lines() -> str:
    return "\n".join(f'{k} = "{v}"' for k, v in SIMULATED_MEASUREMENTS.items())


def _policy_toml() -> str:
    lists = "\n".join(f'{k} = ["{v}"]' for k, v in SIMULATED_MEASUREMENTS.items())
    return f"""# Appraisal policy written by `atls-proxy dev-init` (development only).
[policy]
id = "atls-proxy dev policy"

[software]
# The software attester is SIMULATED: it has no hardware root of trust. Only a development
# policy may accept it.
allow_simulated = true
# Public keys of the simulated platforms this client trusts (relative to this file).
platform_keys = ["platform.pem"]

# Accepted values per measurement; each measurement listed must be present and match one value.
[software.measurements]
{lists}
"""


SERVE_TOML = """# atls-proxy serve configuration written by `atls-proxy dev-init` (development only).
# Every key is documented in config/serve.toml of the project.
[server]
listen = "127.0.0.1:8443"
backend = "127.0.0.1:8080"
certificate = "server.pem"
private_key = "server-key.pem"

[attester]
# SIMULATED evidence: the software attester has no hardware root of trust.
kind = "software"

[attester.software]
platform_key = "platform-key.pem"

# The simulated measurements this attester reports (hex digests); policy.toml accepts them.
[attester.software.measurements]
{measurements}
"""

CONNECT_TOML = """# atls-proxy connect configuration written by `atls-proxy dev-init` (development only).
# Every key is documented in config/connect.toml of the project.
[client]
listen = "127.0.0.1:9443"
server = "127.0.0.1:8443"
server_name = "localhost"
ca = "ca.pem"
policy = "policy.toml"
"""


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise ConfigError("dev-init", f"{path} exists; use --force to overwrite") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, mode)


def dev_init(
    directory: str | Path, *, force: bool = False, now: datetime.datetime | None = None
) -> list[Path]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    if not force:
        existing = [d / f for f in FILES if (d / f).exists()]
        if existing:
            raise ConfigError("dev-init", f"{existing[0]} exists; use --force to overwrite")
    now = now or datetime.datetime.now(datetime.UTC)
    ca, ca_key = _ca(now)
    leaf, leaf_key = _leaf(ca, ca_key, now)
    platform = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    contents: dict[str, tuple[bytes, int]] = {
        "ca.pem": (ca.public_bytes(pem), 0o644),
        "ca-key.pem": (_key_pem(ca_key), 0o600),
        "server.pem": (leaf.public_bytes(pem), 0o644),
        "server-key.pem": (_key_pem(leaf_key), 0o600),
        "platform-key.pem": (_key_pem(platform), 0o600),
        "platform.pem": (
            platform.public_key().public_bytes(
                pem, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            0o644,
        ),
        "policy.toml": (_policy_toml().encode(), 0o644),
        "serve.toml": (SERVE_TOML.format(measurements=_measurement_lines()).encode(), 0o644),
        "connect.toml": (CONNECT_TOML.encode(), 0o644),
    }
    written = []
    for name in FILES:
        data, mode = contents[name]
        _write(d / name, data, mode, force)
        written.append(d / name)
    return written
