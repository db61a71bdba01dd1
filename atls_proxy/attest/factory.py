"""Build the configured attester."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from atls_proxy.attest.base import Attester
from atls_proxy.attest.software import SoftwareAttester
from atls_proxy.errors import ConfigError
from atls_proxy.ops.config import AttesterConfig


def build_attester(cfg: AttesterConfig) -> Attester:
    if cfg.kind == "software":
        sw = cfg.software
        if sw is None:
            raise ConfigError("attester.software", "missing [attester.software] table")
        try:
            key = serialization.load_pem_private_key(sw.platform_key.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(
                "attester.software.platform_key", f"{sw.platform_key}: {exc}"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise ConfigError(
                "attester.software.platform_key", "the simulated platform key must be a P-256 key"
            )
        return SoftwareAttester(key, dict(sw.measurements), quote_latency=sw.quote_latency)
    raise ConfigError("attester.kind", f"unknown attester {cfg.kind!r}")
