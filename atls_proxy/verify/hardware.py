"""The ``Verifier`` wrapper shared by the hardware formats: fixed policy and trust, time from an
injected clock, and the connection's expected user data (the 64-byte report-data filling of
docs/PROTOCOL.md §3, or the binder itself for TPM qualifying data)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

from atls_proxy.expat.binding import Binding
from atls_proxy.verify.policy import DEFAULT_POLICY_ID
from atls_proxy.verify.result import Appraisal
from atls_proxy.verify.software import parse_media_type

P = TypeVar("P")
T = TypeVar("T")


class HardwareVerifier(Generic[P, T]):
    """Subclasses set ``accepted`` (parsed media types) and implement ``run``."""

    accepted: ClassVar[tuple[tuple[str, dict[str, str]], ...]] = ()

    def __init__(
        self, policy: P, trust: T, clock: Callable[[], datetime], policy_id: str = DEFAULT_POLICY_ID
    ) -> None:
        self._policy = policy
        self._trust = trust
        self._clock = clock
        self._policy_id = policy_id

    def accepts(self, media_type: str) -> bool:
        return parse_media_type(media_type) in self.accepted

    def expected_data(self, expected: Binding) -> bytes:
        return expected.report_data()

    def run(self, evidence: bytes, **kwargs: Any) -> Appraisal:
        raise NotImplementedError

    def appraise(
        self, media_type: str, evidence: bytes, expected: Binding, now: float
    ) -> Appraisal:
        """``now`` (the connection's POSIX time) is not used: certificate and collateral windows
        are judged at ``clock()``, which the caller controls (and tests pin)."""
        del media_type, now
        return self.run(
            evidence,
            policy=self._policy,
            trust=self._trust,
            now=self._clock(),
            expected_report_data=self.expected_data(expected),
            policy_id=self._policy_id,
        )
