"""The verifier interface: appraise one piece of evidence against a binding and a policy.

Verifiers are sans-IO: bytes, the expected binding and the time come in; an ``Appraisal`` listing
every check comes out. They never raise for bad evidence: a malformed or forged input is a failed
check, so the report can say which one.
"""

from __future__ import annotations

from typing import Protocol

from atls_proxy.expat.binding import Binding
from atls_proxy.verify.result import Appraisal


class Verifier(Protocol):
    """One verifier per evidence format, selected by the CMW record's media type."""

    def accepts(self, media_type: str) -> bool:
        """True if this verifier appraises evidence of ``media_type``."""
        ...

    def appraise(
        self, media_type: str, evidence: bytes, expected: Binding, now: float
    ) -> Appraisal:
        """Check ``evidence`` (signature, binder, AIK hash, reference values) at time ``now``."""
        ...
