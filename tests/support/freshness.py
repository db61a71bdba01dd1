"""A freshness policy accepting every tier, for tests of the evidence engine and the attesters:
they appraise the cached tier too, which a client's policy must opt in to (verify/policy.py:
DEFAULT_TIERS)."""

from __future__ import annotations

from atls_proxy.expat.tiers import Tier
from atls_proxy.verify.policy import Freshness

ALL_TIERS = Freshness(frozenset(Tier))
