"""Build the configured attester, and check at start-up that its hardware is there.

``build_attester`` runs when ``serve`` starts and in ``check-config``, before anything listens, so
every problem it finds is a ``ConfigError`` naming the configuration key (exit code 2):

* ``software``: the platform key file parses as a P-256 private key.
* ``configfs-tsm``: the report directory exists, a report entry can be created, the kernel names
  a known provider (the configured one, when ``provider`` is set) and ``privlevel`` fits it
  (only ``sev_guest`` has privilege levels). No quote is made (the probe is a mkdir, a read and
  an rmdir).
* ``tpm``: the TPM answers at the TCTI, has the PCR bank and PCRs, and the AK can be loaded (or
  created): the attester is returned open, so its first quote costs only the quote.
"""

from __future__ import annotations

import errno
import os
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from atls_proxy.attest import configfs
from atls_proxy.attest.base import Attester
from atls_proxy.attest.configfs import ConfigfsTsmAttester, OsTsmOps, TsmOps, describe_oserror
from atls_proxy.attest.software import SoftwareAttester
from atls_proxy.attest.tpm import TpmAttester
from atls_proxy.errors import AttestationUnavailable, ConfigError
from atls_proxy.ops.config import AttesterConfig, ConfigfsTsmAttesterConfig, TpmAttesterConfig
from atls_proxy.ops.files import read_capped
from atls_proxy.tls.context import MAX_PEM_FILE


def build_attester(cfg: AttesterConfig, *, tsm_ops: TsmOps | None = None) -> Attester:
    """The attester ``cfg`` describes. ``tsm_ops`` replaces the configfs file operations (tests
    pass ``FakeTsm.ops``). Raises ``ConfigError``."""
    if cfg.kind == "software":
        return _software(cfg)
    if cfg.kind == "configfs-tsm":
        if cfg.configfs_tsm is None:
            raise ConfigError("attester.configfs_tsm", "missing [attester.configfs_tsm] table")
        return _configfs_tsm(cfg.configfs_tsm, tsm_ops if tsm_ops is not None else OsTsmOps())
    if cfg.kind == "tpm":
        if cfg.tpm is None:
            raise ConfigError("attester.tpm", "missing [attester.tpm] table")
        return _tpm(cfg.tpm)
    raise ConfigError("attester.kind", f"unknown attester {cfg.kind!r}")


def _software(cfg: AttesterConfig) -> Attester:
    sw = cfg.software
    if sw is None:
        raise ConfigError("attester.software", "missing [attester.software] table")
    try:
        pem = read_capped(sw.platform_key, MAX_PEM_FILE)
        if len(pem) > MAX_PEM_FILE:
            raise ValueError(f"larger than {MAX_PEM_FILE} bytes: not a key file")
        key = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError("attester.software.platform_key", f"{sw.platform_key}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(
            "attester.software.platform_key", "the simulated platform key must be a P-256 key"
        )
    return SoftwareAttester(key, dict(sw.measurements), quote_latency=sw.quote_latency)


def probe_configfs_tsm(cfg: ConfigfsTsmAttesterConfig, ops: TsmOps) -> str:
    """The provider behind ``cfg.root`` (mkdir, read ``provider``, rmdir). Raises ``ConfigError``
    saying why configfs-tsm is unusable. Blocking."""
    key = "attester.configfs_tsm.root"
    root = cfg.root
    try:
        present = ops.isdir(root)
    except OSError as exc:
        raise ConfigError(key, describe_oserror(exc, "inspecting", root)) from None
    if not present:
        raise ConfigError(
            key,
            f"configfs-tsm report directory {root} not found: not a confidential VM, configfs "
            "not mounted (mount -t configfs none /sys/kernel/config), or no TSM report support "
            "in the kernel (CONFIG_TSM_REPORTS, kernel 6.7+)",
        )
    entry = root / f"{cfg.entry_prefix}-{os.getpid()}-{secrets.token_hex(8)}-check"
    try:
        ops.mkdir(entry)
    except OSError as exc:
        raise ConfigError(key, describe_oserror(exc, "creating report entry", entry)) from None
    try:
        raw = ops.read(entry / "provider", configfs.MAX_TEXT_ATTR_SIZE)
        features = {"privlevel"} if ops.exists(entry / "privlevel") else set()
    except OSError as exc:
        raise ConfigError(key, describe_oserror(exc, "reading", entry / "provider")) from None
    finally:
        try:
            ops.rmdir(entry)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise ConfigError(
                    key, describe_oserror(exc, "removing report entry", entry)
                ) from None
    provider = raw.decode("ascii", "replace").strip()
    if provider not in configfs.PROVIDER_MEDIA_TYPES:
        known = ", ".join(sorted(configfs.PROVIDER_MEDIA_TYPES))
        raise ConfigError(
            key, f"unknown TSM provider {provider[:64]!r} under {root} (known: {known})"
        )
    if cfg.provider is not None and provider != cfg.provider:
        raise ConfigError(
            "attester.configfs_tsm.provider",
            f"this guest's TSM provider is {provider!r}, the configuration expects "
            f"{cfg.provider!r}",
        )
    # The attester's own check (by the provider, not by the privlevel file).
    problem = configfs.privlevel_problem(cfg.privlevel, provider, features)
    if problem:
        raise ConfigError("attester.configfs_tsm.privlevel", problem)
    return provider


def _configfs_tsm(cfg: ConfigfsTsmAttesterConfig, ops: TsmOps) -> Attester:
    probe_configfs_tsm(cfg, ops)
    try:
        return ConfigfsTsmAttester(
            cfg.root,
            privlevel=cfg.privlevel,
            timeout=cfg.timeout,
            retries=cfg.retries,
            entry_prefix=cfg.entry_prefix,
            ops=ops,
        )
    except ValueError as exc:
        raise ConfigError("attester.configfs_tsm", str(exc)) from None


def _tpm(cfg: TpmAttesterConfig) -> Attester:
    try:
        attester = TpmAttester(
            cfg.tcti,
            ak_handle=cfg.ak_handle,
            create_ak=cfg.create_ak,
            hierarchy=cfg.hierarchy,
            ak_algorithm=cfg.ak_algorithm,
            pcrs=cfg.pcrs,
            pcr_bank=cfg.pcr_bank,
            timeout=cfg.timeout,
        )
    except ValueError as exc:
        raise ConfigError("attester.tpm", str(exc)) from None
    try:
        attester.open()
    except AttestationUnavailable as exc:
        raise ConfigError("attester.tpm", str(exc)) from None
    return attester
