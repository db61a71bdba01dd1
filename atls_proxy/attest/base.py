"""The attester interface: produce evidence bound to one connection's Expat binding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from atls_proxy.expat.binding import Binding


@dataclass(frozen=True, slots=True)
class Evidence:
    """Evidence bytes and the CMW media type that names their format (docs/PROTOCOL.md)."""

    media_type: str
    data: bytes


class Attester(Protocol):
    """Produces evidence carrying ``binding`` under a signature chained to a platform trust anchor.

    ``simulated`` is True for attesters with no hardware root of trust (the software attester);
    such evidence must never be accepted by a policy that does not opt in to simulated evidence.
    """

    name: str
    simulated: bool

    async def attest(self, binding: Binding) -> Evidence:
        """Return fresh evidence for ``binding``; raise AttestationUnavailable on failure."""
        ...
