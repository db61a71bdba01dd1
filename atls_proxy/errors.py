"""Exception hierarchy shared by every layer.

Following pyca/cryptography's habit: wrong values raise ``ValueError`` subclasses, a failed
verification raises its own exception type, never a boolean someone forgets to check.
"""

from __future__ import annotations


class AtlsError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(AtlsError, ValueError):
    """A configuration file or flag is wrong. ``key`` names the offending setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class DecodeError(AtlsError, ValueError):
    """Bytes from the peer do not parse (truncated, oversized, malformed)."""


class ProtocolError(AtlsError):
    """The peer broke the protocol. ``alert`` is the TLS alert code (RFC 8446 §6) that fits."""

    # RFC 8446 §6.2 alert descriptions used by the RFC 9261 validation path.
    UNEXPECTED_MESSAGE = 10
    BAD_CERTIFICATE = 42
    ILLEGAL_PARAMETER = 47
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INTERNAL_ERROR = 80
    UNSUPPORTED_EXTENSION = 110

    def __init__(
        self, message: str, alert: int = DECODE_ERROR, check: str = "expat.protocol"
    ) -> None:
        super().__init__(message)
        self.alert = alert
        self.check = check


class VerificationError(AtlsError):
    """A cryptographic or policy check failed. ``check`` names the check (e.g. ``ea.finished``)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message


class AttestationUnavailable(AtlsError):
    """The attester could not produce evidence (TEE error, timeout, misconfiguration)."""
