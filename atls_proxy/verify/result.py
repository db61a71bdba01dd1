"""Appraisal results: every check by name, with observed and expected values, shaped like an EAR.

An ``Appraisal`` is what ``attest``, ``connect``, the logs and (later) metric labels report. Its
JSON form follows draft-ietf-rats-ear (profile ``tag:ietf.org,2026:rats/ear#03``) with one submod
per appraised evidence, AR4SI trust tiers (draft-ietf-rats-ar4si), and the project's own
``atls.checks`` list inside each submod.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from operator import attrgetter
from typing import Any

EAR_PROFILE = "tag:ietf.org,2026:rats/ear#03"

# ``all(map(_PASSED, checks))``: the same answer as ``all(c.passed for c in checks)`` without a
# generator frame resumed per check (a report is read once per connection, ~25 checks).
_PASSED = attrgetter("passed")


class Tier(IntEnum):
    """AR4SI trustworthiness tiers (draft-ietf-rats-ar4si, CBOR values)."""

    NONE = 0
    AFFIRMING = 2
    WARNING = 32
    CONTRAINDICATED = 96

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def of_claim(cls, value: int) -> Tier:
        """The tier an AR4SI trust-vector claim value falls in (draft-ietf-rats-ar4si,
        "Enumeration Encoding": none −1..1, affirming 2..31 / −2..−32, warning 32..95 / −33..−96,
        contraindicated 96..127 / −97..−128)."""
        v = -value - 1 if value < 0 else value  # a negative −n sits in the tier of n − 1
        if value in (-1, 0, 1):
            return cls.NONE
        if v >= 96:
            return cls.CONTRAINDICATED
        if v >= 32:
            return cls.WARNING
        return cls.AFFIRMING


def _worst(tiers: Iterable[Tier]) -> Tier:
    """draft-ietf-rats-ear: a status is never better than the worst claim it summarises. NONE
    (no claim) is not worse than affirming."""
    return max(tiers, key=lambda t: (t is not Tier.NONE, t))


def _checks_tier(checks: Iterable[Check]) -> Tier:
    """What a list of checks alone supports: contraindicated when one failed, warning when one
    was skipped (a check that did not run affirms nothing), else affirming."""
    skipped = False
    for c in checks:
        if not c.passed:
            return Tier.CONTRAINDICATED
        skipped = skipped or c.skipped
    return Tier.WARNING if skipped else Tier.AFFIRMING


@dataclass(frozen=True, slots=True)
class Check:
    """One named check. ``name`` is dotted and stable (it is used in logs and metric labels).

    ``skipped``: the check did not run because the configuration switched it off (the client's
    ``verify_pki = false``). ``passed`` stays True — the verdict follows what the operator
    configured — but the check is never presented as one that passed: the text report marks it
    SKIP, its JSON carries ``"skipped": true``, and its submod's status is at best ``warning``.
    """

    name: str
    passed: bool
    detail: str = ""
    observed: str | None = None
    expected: str | None = None
    skipped: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "passed": self.passed}
        if self.skipped:
            out["skipped"] = True
        if self.detail:
            out["detail"] = self.detail
        if self.observed is not None:
            out["observed"] = self.observed
        if self.expected is not None:
            out["expected"] = self.expected
        return out


@dataclass(slots=True)
class Appraisal:
    """The checks of one evidence appraisal (one EAR submod)."""

    evidence_type: str
    checks: list[Check] = field(default_factory=list)
    simulated: bool = False
    policy_id: str = ""
    # AR4SI trust vector claims this appraisal supports (name -> int8 value).
    trust_vector: dict[str, int] = field(default_factory=dict)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def extend(self, checks: Iterable[Check]) -> None:
        self.checks.extend(checks)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(map(_PASSED, self.checks))

    @property
    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if not c.passed), None)

    @property
    def tier(self) -> Tier:
        """``ear.status``: contraindicated when a check failed, else the worst of affirming and
        the trust-vector claims (draft-ietf-rats-ear: never better than the worst claim — a
        passing appraisal of simulated or software-rooted evidence is a ``warning``)."""
        if not self.checks:
            return Tier.NONE
        if not self.passed:
            return Tier.CONTRAINDICATED
        return _worst([_checks_tier(self.checks), *map(Tier.of_claim, self.trust_vector.values())])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ear.status": self.tier.label,
            "ear.trustworthiness-vector": dict(self.trust_vector),
            "ear.appraisal-policy-id": self.policy_id or "atls-proxy:policy",
            "atls.evidence-type": self.evidence_type,
            "atls.simulated": self.simulated,
            "atls.checks": [c.to_json() for c in self.checks],
        }
        return out


@dataclass(slots=True)
class AttestationReport:
    """Everything a relying party checked about one attested connection.

    ``checks`` are the connection-level checks (TLS, PKI identity, RFC 9261, CMW); ``appraisals``
    one per evidence record. The report passes only if every check of both passed and at least one
    piece of evidence was appraised.
    """

    target: str
    checks: list[Check] = field(default_factory=list)
    appraisals: list[Appraisal] = field(default_factory=list)
    issued_at: float = 0.0

    @property
    def passed(self) -> bool:
        return (
            bool(self.appraisals)
            and all(map(_PASSED, self.checks))
            and all(map(_PASSED, self.appraisals))
        )

    @property
    def first_failure(self) -> Check | None:
        for c in self.checks:
            if not c.passed:
                return c
        for a in self.appraisals:
            f = a.first_failure
            if f is not None:
                return f
        if not self.appraisals:
            return Check("evidence.appraised", False, "no evidence was appraised")
        return None

    @property
    def simulated(self) -> bool:
        return any(a.simulated for a in self.appraisals)

    @property
    def tier(self) -> Tier:
        """The overall ``ear.status``: contraindicated unless the report passed, else the worst
        submod's (never better than the worst submod, draft-ietf-rats-ear). The verdict itself
        is ``passed``: the policy's checks."""
        if not self.passed:
            return Tier.CONTRAINDICATED
        return _worst([_checks_tier(self.checks), *(a.tier for a in self.appraisals)])

    @property
    def skipped(self) -> list[Check]:
        """The checks the configuration switched off, connection-level and per appraisal."""
        return [c for c in self.checks if c.skipped] + [
            c for a in self.appraisals for c in a.checks if c.skipped
        ]

    def to_json(self, verifier_build: str = "") -> dict[str, Any]:
        """EAR-shaped (draft-ietf-rats-ear): overall status, one submod per appraisal."""
        submods: dict[str, Any] = {
            "connection": {
                "ear.status": _checks_tier(self.checks).label,
                "atls.checks": [c.to_json() for c in self.checks],
            }
        }
        for i, a in enumerate(self.appraisals):
            submods[f"evidence-{i}" if len(self.appraisals) > 1 else "evidence"] = a.to_json()
        failure = self.first_failure
        return {
            "eat_profile": EAR_PROFILE,
            "iat": int(self.issued_at),
            "ear.verifier-id": {"developer": "atls-proxy", "build": verifier_build},
            "ear.status": self.tier.label,
            "submods": submods,
            "atls.target": self.target,
            "atls.passed": self.passed,
            "atls.simulated": self.simulated,
            "atls.failed-check": None if failure is None else failure.to_json(),
        }
