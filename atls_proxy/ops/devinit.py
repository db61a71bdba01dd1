"""``atls-proxy dev-init DIR``: development material that works out of the box, and nowhere else.

Writes, into ``DIR``:

* ``ca.pem`` / ``ca-key.pem``: a fresh P-256 development CA (CN carries 8 random hex digits, so the
  CAs of two runs differ and do not trust each other's certificates);
* ``server.pem`` / ``server-key.pem``: a P-256 server certificate for ``localhost``,
  ``127.0.0.1`` and ``::1`` — and the names given with ``--server-name`` — signed by that CA
  (the file holds the leaf only; the CA is the anchor);
* ``platform-key.pem`` / ``platform.pem``: the SIMULATED platform key of the software attester
  (PKCS#8 private key) and its SubjectPublicKeyInfo;
* ``policy.toml``: a development appraisal policy trusting that platform key and the simulated
  measurements;
* ``serve.toml`` / ``connect.toml``: configurations wired to each other and to the files above.

Private keys (``*-key.pem``) are created with mode 0600 from the first byte, the rest 0644. No
existing file is overwritten unless ``force``.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from atls_proxy.attest.software import platform_ueid
from atls_proxy.errors import ConfigError

# The SIMULATED measurements the software attester reports and the dev policy accepts: SHA-256 of
# fixed labels, not of anything that runs. The software attester measures nothing.
SIMULATED_MEASUREMENTS = {
    "firmware": hashlib.sha256(b"atls-proxy simulated firmware v1").hexdigest(),
    "kernel": hashlib.sha256(b"atls-proxy simulated kernel v1").hexdigest(),
    "workload": hashlib.sha256(b"atls-proxy simulated workload v1").hexdigest(),
}

# Written in this order; dev_init returns the paths in this order.
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

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

CA_VALIDITY = datetime.timedelta(days=365)
LEAF_VALIDITY = datetime.timedelta(days=90)
# Certificates start an hour in the past so a peer whose clock lags a little still accepts them.
BACKDATE = datetime.timedelta(hours=1)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cn = f"atls-proxy development CA {secrets.token_hex(4)}"
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


# A DNS name of letters, digits and hyphens per label (RFC 1123 §2.1), no wildcard, no trailing
# dot: what a client's server_name is matched against (tls/context.py).
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*"
)


def san_entry(name: str) -> x509.GeneralName:
    """``--server-name``: an IP address, or a DNS name (lower-cased); ConfigError otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    host = name.lower()
    if not _DNS_NAME.fullmatch(host):
        raise ConfigError(
            "--server-name", f"{name!r} is neither an IP address nor a DNS name (a-z, 0-9, -, .)"
        )
    return x509.DNSName(host)


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    extra_names: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    for extra in extra_names:
        entry = san_entry(extra)
        if entry not in names:
            names.append(entry)
    san = x509.SubjectAlternativeName(names)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + LEAF_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
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


def _policy_toml(platform: ec.EllipticCurvePublicKey) -> str:
    lists = "\n".join(f'{k} = ["{v}"]' for k, v in SIMULATED_MEASUREMENTS.items())
    ueid = platform_ueid(platform).hex()
    return f"""# Appraisal policy written by `atls-proxy dev-init`. DEVELOPMENT ONLY.
# Every key is documented in config/policy.toml of the project.

[policy]
# Name of this policy, reported in every appraisal result.
id = "atls-proxy dev policy"

[software]
# The software attester is SIMULATED: it has no hardware root of trust, so its evidence proves
# nothing about the server. Only a development policy may accept it.
allow_simulated = true
# Public key of the simulated platform made by the same dev-init run (relative to this file).
platform_keys = ["platform.pem"]
# Optional instance pin (UEIDs of accepted platforms). Here it would add nothing, as the UEID of
# the software attester is derived from its platform key, which is already the only one trusted:
# instances = ["{ueid}"]

# Accepted digests per measurement: each one listed must be present in the evidence and equal one
# of its values. These are SIMULATED values (SHA-256 of fixed labels), the ones serve.toml reports.
[software.measurements]
{lists}

# Freshness tiers accepted (docs/PROTOCOL.md §5.3). "cached" is an opt-in: its per-connection
# binding is the TLS key's signature alone, so a stolen TLS key impersonates the server for as
# long as the server issues epochs (docs/SECURITY.md). Listed here so that every tier of
# `atls-proxy bench attest` can be tried against a dev server.
[freshness]
tiers = ["strict", "batched", "cached"]
"""


def _serve_toml() -> str:
    lines = "\n".join(f'{k} = "{v}"' for k, v in SIMULATED_MEASUREMENTS.items())
    return f"""# atls-proxy serve configuration written by `atls-proxy dev-init`. DEVELOPMENT ONLY.
# Every key, with its default, is documented in config/serve.toml of the project.
# Relative paths are relative to this file.

[server]
# Attested TLS 1.3 listener.
listen = "127.0.0.1:8443"
# Plaintext backend that authenticated connections are forwarded to (start one, e.g.
# `python -m http.server 8080 --bind 127.0.0.1`).
backend = "127.0.0.1:8080"
# Server certificate (localhost, 127.0.0.1, ::1) signed by ca.pem, and its private key.
certificate = "server.pem"
private_key = "server-key.pem"

[attester]
# SIMULATED evidence: the software attester signs with an ordinary key file and has no hardware
# root of trust. For development and tests only.
kind = "software"

[attester.software]
# The SIMULATED platform key; policy.toml trusts its public half, platform.pem.
platform_key = "platform-key.pem"

# The SIMULATED measurements reported in the evidence (hex SHA-256 of fixed labels, not of
# anything that runs); policy.toml accepts exactly these.
[attester.software.measurements]
{lines}
"""


CONNECT_TOML = """# atls-proxy connect configuration written by `atls-proxy dev-init`. DEVELOPMENT ONLY.
# Every key, with its default, is documented in config/connect.toml of the project.
# Relative paths are relative to this file.

[client]
# Local plaintext listener that programs (curl, drivers) connect to.
listen = "127.0.0.1:9443"
# The attested server (`atls-proxy serve --config serve.toml`).
server = "127.0.0.1:8443"
# Name checked against the server certificate.
server_name = "localhost"
# The development CA made by the same dev-init run: the server's chain must reach it.
ca = "ca.pem"
# Appraisal policy; it accepts the SIMULATED platform key and measurements of serve.toml.
policy = "policy.toml"
"""


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Create ``path`` with ``mode`` from the first byte on; never follow a planted symlink.

    With ``force`` an existing entry is unlinked first, so the new file is still created with
    O_EXCL: the key never lands in whatever a symlink at that name points to, and never sits in a
    file that had looser permissions.
    """
    if force:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError("dev-init", f"cannot replace {path}: {exc.strerror or exc}") from None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError("dev-init", f"{path} exists; use --force to overwrite") from None
    except OSError as exc:
        raise ConfigError("dev-init", f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # exactly ``mode``, whatever the umask
            fh.write(data)
    except OSError as exc:
        raise ConfigError("dev-init", f"cannot write {path}: {exc.strerror or exc}") from None


def dev_init(
    directory: str | Path,
    *,
    force: bool = False,
    now: datetime.datetime | None = None,
    server_names: Sequence[str] = (),
) -> list[Path]:
    """Write fresh development material into ``directory`` and return the paths written.

    Refuses (``ConfigError("dev-init", ...)``) to overwrite any of the files unless ``force``;
    nothing is written when one exists. ``now`` pins the certificates' validity (naive = UTC).
    ``server_names``: DNS names or IP addresses the server certificate also holds, beside
    localhost, 127.0.0.1 and ::1 (a Service's name in a cluster, say).
    """
    for name in server_names:
        san_entry(name)  # a bad name is refused before anything is written
    d = Path(directory)
    try:
        created = not d.exists()
        # Not left to the umask: whoever can write the folder can swap ca.pem or policy.toml.
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if created:
            d.chmod(0o700)
    except OSError as exc:
        raise ConfigError("dev-init", f"cannot create folder {d}: {exc.strerror or exc}") from None
    if not d.is_dir():
        raise ConfigError("dev-init", f"{d} is not a folder")
    if not force:
        existing = [d / f for f in FILES if os.path.lexists(d / f)]
        if existing:
            names = ", ".join(p.name for p in existing)
            raise ConfigError("dev-init", f"{d} already holds {names}; use --force to overwrite")
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=datetime.UTC)
    ca, ca_key = _ca(now)
    leaf, leaf_key = _leaf(ca, ca_key, now, server_names)
    platform = ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    contents: dict[str, tuple[bytes, int]] = {
        "ca.pem": (ca.public_bytes(pem), PUBLIC_MODE),
        "ca-key.pem": (_key_pem(ca_key), PRIVATE_MODE),
        "server.pem": (leaf.public_bytes(pem), PUBLIC_MODE),
        "server-key.pem": (_key_pem(leaf_key), PRIVATE_MODE),
        "platform-key.pem": (_key_pem(platform), PRIVATE_MODE),
        "platform.pem": (
            platform.public_key().public_bytes(
                pem, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            PUBLIC_MODE,
        ),
        "policy.toml": (_policy_toml(platform.public_key()).encode(), PUBLIC_MODE),
        "serve.toml": (_serve_toml().encode(), PUBLIC_MODE),
        "connect.toml": (CONNECT_TOML.encode(), PUBLIC_MODE),
    }
    written: list[Path] = []
    for name in FILES:
        data, mode = contents[name]
        _write(d / name, data, mode, force)
        written.append(d / name)
    return written
