"""Wiring: configuration in, ready-to-start server / client objects out (shared by CLI, demo, tests)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from atls_proxy.attest.engine import EvidenceEngine
from atls_proxy.attest.factory import build_attester
from atls_proxy.errors import ConfigError
from atls_proxy.expat.profile import ExpatProfile
from atls_proxy.expat.tiers import Tier
from atls_proxy.ops.config import ClientConfig, ExpatConfig, ServerConfig
from atls_proxy.ops.evidence import verifiers_for_policy
from atls_proxy.ops.policyfile import load_policy
from atls_proxy.proxy.client import ClientSettings
from atls_proxy.proxy.server import AttestedServer
from atls_proxy.tls.context import client_context, load_server_identity, server_context
from atls_proxy.verify.policy import DEFAULT_MAX_EPOCH_AGE
from atls_proxy.verify.registry import verifiers_for

if TYPE_CHECKING:
    from pathlib import Path

    from atls_proxy.ops.metrics import Metrics
    from atls_proxy.verify.base import Verifier
    from atls_proxy.verify.policy import Policy

log = logging.getLogger("atls_proxy")


def profile_from(cfg: ExpatConfig) -> ExpatProfile:
    try:
        return ExpatProfile(
            cfg.exporter_label, cfg.extension_type, cfg.request_header_in_transcript
        )
    except ValueError as exc:
        raise ConfigError("expat", str(exc)) from None


def warn_insecure_server(cfg: ServerConfig) -> None:
    """The server's insecure modes, logged at start and on every reload that keeps or turns
    them on (DESIGN.md §7; counted in ``atls_proxy_unattested_connections_total``)."""
    if cfg.plain_clients == "serve-unattested":
        log.warning(
            "plain_clients = serve-unattested: TLS clients without Expat are forwarded UNATTESTED"
        )
    if cfg.allow_remote_backend and not cfg.backend.is_loopback():
        log.warning(
            "allow_remote_backend = true: the backend %s is not on this machine, so the traffic "
            "the proxy decrypts leaves the confidential VM in plaintext",
            cfg.backend,
        )


def build_server(cfg: ServerConfig, metrics: Metrics | None = None) -> AttestedServer:
    identity = load_server_identity(cfg.certificate, cfg.private_key)
    ctx = server_context(identity)
    attester = build_attester(cfg.attester)
    warn_insecure_server(cfg)
    if cfg.attester.tier == "cached":
        log.warning(
            "tier = cached: clients accept it only when their policy lists it ([freshness] tiers "
            '= [..., "cached"]; the default is strict and batched), because its per-connection '
            "binding is the TLS key's signature alone (docs/SECURITY.md)"
        )
    if cfg.attester.tier == "cached" and cfg.attester.epoch_seconds > DEFAULT_MAX_EPOCH_AGE:
        # A failed refresh keeps the old epoch: while the TEE fails an epoch is served until it
        # expires. Clients on the default freshness policy refuse it past DEFAULT_MAX_EPOCH_AGE,
        # which the server cannot see.
        log.warning(
            "epoch_seconds = %g: an epoch is served until it expires (while refreshing it "
            "fails), so up to %g s old, but clients with the default "
            "max_epoch_age (%g s) refuse older ones; set epoch_seconds to at most %g or raise "
            "the clients' max_epoch_age",
            cfg.attester.epoch_seconds,
            cfg.attester.epoch_seconds,
            DEFAULT_MAX_EPOCH_AGE,
            DEFAULT_MAX_EPOCH_AGE,
        )
    engine = EvidenceEngine(
        attester,
        Tier(cfg.attester.tier),
        aik_key=identity.private_key,
        quote_timeout=cfg.attester.quote_timeout,
        max_waiters=cfg.attester.max_waiters,
        epoch_seconds=cfg.attester.epoch_seconds,
        hooks=metrics,
    )
    return AttestedServer(cfg, identity, ctx, engine, profile_from(cfg.expat), metrics)


def policy_verifiers(policy_file: Path) -> tuple[Policy, list[Verifier]]:
    """The policy in ``policy_file`` and the verifiers it enables, with what it accepts that
    weakens the verdict said as warnings — at every load (``connect``, ``attest``, reloads) and
    by ``check-config`` on the policy file itself. Raises ``ConfigError`` for a policy that
    enables no verifier."""
    policy = load_policy(policy_file)
    hardware = verifiers_for_policy(policy, policy_file)
    verifiers = verifiers_for(policy) + hardware
    if not verifiers:
        raise ConfigError(
            "client.policy", f"{policy_file} enables no verifier: every server would be rejected"
        )
    if not hardware and policy.software is not None and not policy.software.allow_simulated:
        # Not an error: it is how an operator stops accepting simulated evidence (a reload
        # that refused it would keep the policy that still accepts it).
        log.warning(
            "policy %s enables only the software verifier, without software.allow_simulated = "
            "true: it accepts no evidence, so every server is rejected",
            policy_file,
        )
    for fmt, section in policy.hardware.items():
        if not getattr(section, "constrains_workload", True):
            log.warning(
                "policy %s: [%s] names no reference value of the workload, so it accepts whatever "
                "runs on genuine %s hardware; list the measurements you expect "
                "(docs/VERIFIERS-%s.md)",
                policy_file,
                fmt,
                fmt.upper(),
                fmt.upper(),
            )
    if policy.software is not None and policy.software.allow_simulated:
        log.warning(
            "policy %s accepts SIMULATED software evidence (software.allow_simulated = true): it "
            "has no hardware root of trust and proves nothing about the server; development only",
            policy_file,
        )
    if Tier.CACHED in policy.freshness.tiers:
        log.warning(
            "policy %s accepts the cached tier: its per-connection binding is the server's TLS "
            "key's signature alone, so whoever holds that key can present the genuine server's "
            "evidence (docs/SECURITY.md)",
            policy_file,
        )
    return policy, verifiers


def build_client_settings(cfg: ClientConfig) -> ClientSettings:
    policy, verifiers = policy_verifiers(cfg.policy)
    if not cfg.verify_pki:
        log.warning(
            "verify_pki = false: the server's PKI identity is NOT checked (insecure; attestation alone)"
        )
    if cfg.server.kind != "tcp":
        raise ConfigError("client.server", "the server is reached over TCP (HOST:PORT)")
    return ClientSettings(
        host=cfg.server.host,
        port=cfg.server.port,
        server_name=cfg.server_name,
        ssl_context=client_context(cfg.ca, cfg.verify_pki),
        verify_pki=cfg.verify_pki,
        profile=profile_from(cfg.expat),
        verifiers=verifiers,
        timeouts=cfg.timeouts,
        freshness=policy.freshness,
    )
