"""The verifiers a policy enables (one per evidence format)."""

from __future__ import annotations

from atls_proxy.verify.base import Verifier
from atls_proxy.verify.policy import Policy
from atls_proxy.verify.software import SoftwareVerifier


def verifiers_for(policy: Policy) -> list[Verifier]:
    out: list[Verifier] = []
    if policy.software is not None:
        out.append(SoftwareVerifier(policy.software, policy.policy_id))
    return out
