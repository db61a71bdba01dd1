"""Expat connection binding (draft-fossati-seat-expat-04 §5).

    exported_value = TLS-Exporter(label, certificate_request_context, 32)      (§5.1)
    binder         = H(SPKI_DER(EE key) ‖ exported_value)                       (§5.1)
    aik_hash       = H(SPKI_DER(EE key))                                        (§5.2)

H is the hash of the negotiated TLS 1.3 cipher suite (SHA-256 or SHA-384). The draft leaves the
public-key encoding open (open point O-3); this profile uses the DER SubjectPublicKeyInfo, as the
cocos implementation does.

Evidence formats with a fixed 64-byte user-data field (TDX REPORTDATA, SEV-SNP REPORT_DATA, the CCA
realm challenge) get one filling, used everywhere (open point O-5):

    32-byte hash (SHA-256 suites):  report_data = binder ‖ aik_hash
    48-byte hash (SHA-384 suites):  report_data = SHA-512(binder ‖ aik_hash)
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

# Expat -04 §5.1: the exported value is always 32 bytes, whatever the suite's hash.
EXPORTED_VALUE_LENGTH = 32
# Expat -04 §4, §9.2. Configurable: "Attestation" for -02/-03 peers.
DEFAULT_EXPORTER_LABEL = b"EXPORTER-cmw-attestation"

_HASH_LENGTHS = {"sha256": 32, "sha384": 48}


# The suites' hashes by name, as hashlib's direct constructors: ``hashlib.new(name)`` looks the
# algorithm up by name on every call (an OpenSSL fetch), and these run per connection.
_HASHES: dict[str, Callable[..., hashlib._Hash]] = {
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
}


def new_hash(hash_name: str, data: bytes = b"") -> hashlib._Hash:
    """A hash object for a TLS 1.3 suite's hash (``sha256`` / ``sha384``); ValueError otherwise."""
    ctor = _HASHES.get(hash_name)
    if ctor is None:
        raise ValueError(f"unsupported authenticator hash {hash_name!r}")
    return ctor(data)


def hash_bytes(hash_name: str, data: bytes) -> bytes:
    return new_hash(hash_name, data).digest()


@dataclass(frozen=True, slots=True)
class Binding:
    """What an attester must put under its signature, and what a verifier must find there."""

    hash_name: str
    binder: bytes
    aik_hash: bytes

    def __post_init__(self) -> None:
        n = _HASH_LENGTHS.get(self.hash_name)
        if n is None:
            raise ValueError(f"unsupported authenticator hash {self.hash_name!r}")
        if len(self.binder) != n or len(self.aik_hash) != n:
            raise ValueError(f"binder and aik_hash must be {n} bytes for {self.hash_name}")

    def report_data(self) -> bytes:
        """The 64-byte filling for TDX / SEV-SNP / CCA report data (module docstring)."""
        joined = self.binder + self.aik_hash
        if len(joined) == 64:
            return joined
        return hashlib.sha512(joined).digest()


def compute_binding(hash_name: str, spki_der: bytes, exported_value: bytes) -> Binding:
    """Expat -04 §5.1/§5.2 from the EE key's SPKI DER and the 32-byte exporter output."""
    if len(exported_value) != EXPORTED_VALUE_LENGTH:
        raise ValueError("the Expat exported value is 32 bytes (expat-04 §5.1)")
    return Binding(
        hash_name=hash_name,
        binder=hash_bytes(hash_name, spki_der + exported_value),
        aik_hash=aik_hash(hash_name, spki_der),
    )


@functools.lru_cache(maxsize=64)
def aik_hash(hash_name: str, spki_der: bytes) -> bytes:
    """H(SPKI_DER(EE key)) (expat-04 §5.2): the same for every connection to one certificate."""
    return hash_bytes(hash_name, spki_der)
