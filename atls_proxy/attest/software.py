"""SIMULATED software attester — DEVELOPMENT ONLY, NO HARDWARE ROOT OF TRUST.

!!! This attester proves nothing about the platform. !!!
Its "platform key" is an ordinary key held in process memory and its "measurements" are whatever
the operator configured. Anyone holding the key can mint evidence for any software. It exists so
that the protocol, the proxy and the verifier can be developed and tested on machines without a
TEE. Evidence it produces says ``simulated = true`` in its claims, is tagged with a profile and
media type of its own, and is rejected by every policy that does not set
``[software] allow_simulated = true``.

Format (the ``software-evidence/1`` profile of this project, docs/PROTOCOL.md): an EAT
(RFC 9711) claims map, CBOR-encoded and signed with the platform key as a tagged COSE_Sign1 with
ES256 (RFC 9052 §4.2; RFC 9053 §2.1):

====== ================= ============================================================
key    claim             value
====== ================= ============================================================
10     eat_nonce         the Expat binder, bstr (RFC 9711 §4.1; expat-04 §5.1)
265    eat_profile       ``SOFTWARE_EAT_PROFILE`` (RFC 9711 §4.3.2)
6      iat               integer seconds since the epoch (RFC 8392 §3.1.6)
256    ueid              ``0x01 ‖ SHA-256(platform SPKI DER)``, a RAND-type UEID (RFC 9711 §4.2.1)
270    swname            ``SOFTWARE_SWNAME`` (RFC 9711 §4.2.6)
-70000 aik_pub_hash      the Expat AIK hash, bstr (expat-04 §5.2)
-70001 measurements      map: text name -> bstr digest
-70002 simulated         ``true``
-70003 hash_alg          "sha256" / "sha384": the hash of the binder and AIK hash
====== ================= ============================================================

Keys below -65536 are the private-use range of the CWT Claims registry (RFC 8392 §9.1). The
standard EAT ``measurements`` claim (273) wants CoSWID/CoRIM-shaped contents; a flat name→digest
map is all a simulated platform has, so it is a private claim here.

The protected header carries ``kid = SHA-256(platform SPKI DER)[:8]`` as a hint for the verifier.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from atls_proxy.attest.base import Evidence
from atls_proxy.expat.binding import Binding
from atls_proxy.verify.cose import sign1

logger = logging.getLogger(__name__)

SOFTWARE_EAT_PROFILE = "tag:atls-proxy.invalid,2026:software-evidence/1"
# RFC 9782: EAT in a CWT, with the optional eat_profile parameter naming our profile.
SOFTWARE_MEDIA_TYPE = f'application/eat+cwt; eat_profile="{SOFTWARE_EAT_PROFILE}"'
SOFTWARE_SWNAME = "atls-proxy software attester (SIMULATED: no hardware root of trust)"

# Claim keys. Standard ones: RFC 8392 §3.1 (iat), RFC 9711 §4 (EAT).
CLAIM_IAT = 6
CLAIM_EAT_NONCE = 10
CLAIM_UEID = 256
CLAIM_EAT_PROFILE = 265
CLAIM_SWNAME = 270
# Private-use claim keys (RFC 8392 §9.1: integer labels below -65536).
CLAIM_AIK_PUB_HASH = -70000
CLAIM_MEASUREMENTS = -70001
CLAIM_SIMULATED = -70002
CLAIM_HASH_ALG = -70003

# RFC 9711 §4.2.1: UEID type byte 0x01 = RAND (followed by 16, 24 or 32 bytes).
UEID_TYPE_RAND = 0x01
# Length of the COSE kid hint: 8 bytes tell a handful of configured platform keys apart; the kid
# is a hint only, every trusted key is still tried.
KID_LENGTH = 8

# A software platform measures a handful of components (firmware, kernel, initrd, cmdline, app).
# 64 bounds the claims size (64 × (64 + 64) bytes ≈ 8 KiB, far below the 64 KiB evidence cap),
# the number of checks in a report, and the metric-label cardinality of ``measurement.<name>``.
MAX_MEASUREMENTS = 64
# Measurement names become check names and metric labels: TOML bare-key characters, 64 at most.
MAX_MEASUREMENT_NAME_LENGTH = 64
MEASUREMENT_NAME_RE = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_MEASUREMENT_NAME_LENGTH}}}")
# SHA-256, SHA-384 and SHA-512 digests.
MEASUREMENT_DIGEST_LENGTHS = frozenset({32, 48, 64})


def spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    """DER SubjectPublicKeyInfo of ``key`` (RFC 5280 §4.1.2.7)."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def platform_ueid(key: ec.EllipticCurvePublicKey) -> bytes:
    """``0x01 ‖ SHA-256(SPKI DER)``: the RAND-type UEID of a simulated platform (RFC 9711 §4.2.1)."""
    return bytes([UEID_TYPE_RAND]) + hashlib.sha256(spki_der(key)).digest()


def platform_kid(key: ec.EllipticCurvePublicKey) -> bytes:
    """The COSE ``kid`` hint of a platform key: the first 8 bytes of SHA-256(SPKI DER)."""
    return hashlib.sha256(spki_der(key)).digest()[:KID_LENGTH]


def check_measurement_name(name: object) -> str | None:
    """Return why ``name`` is not a valid measurement name, or None if it is."""
    if not isinstance(name, str):
        return "measurement name is not text"
    if not MEASUREMENT_NAME_RE.fullmatch(name):
        return (
            f"measurement name {name!r} must be 1..{MAX_MEASUREMENT_NAME_LENGTH} characters of "
            "A-Z a-z 0-9 _ -"
        )
    return None


class SoftwareAttester:
    """SIMULATED attester: signs EAT claims with an in-memory key. No hardware root of trust."""

    name = "software"
    simulated = True

    def __init__(
        self,
        platform_key: ec.EllipticCurvePrivateKey,
        measurements: Mapping[str, bytes],
        clock: Callable[[], float] = time.time,
        quote_latency: float = 0.0,
    ) -> None:
        if not 0 <= quote_latency <= 60:
            raise ValueError("quote_latency is 0..60 seconds")
        if not isinstance(platform_key, ec.EllipticCurvePrivateKey) or not isinstance(
            platform_key.curve, ec.SECP256R1
        ):
            raise ValueError("the software platform key must be a P-256 private key (ES256)")
        if len(measurements) > MAX_MEASUREMENTS:
            raise ValueError(f"at most {MAX_MEASUREMENTS} measurements, got {len(measurements)}")
        checked: dict[str, bytes] = {}
        for mname, digest in measurements.items():
            problem = check_measurement_name(mname)
            if problem:
                raise ValueError(problem)
            if not isinstance(digest, bytes) or len(digest) not in MEASUREMENT_DIGEST_LENGTHS:
                raise ValueError(f"measurement {mname!r} must be a 32, 48 or 64-byte digest")
            checked[mname] = digest
        self._key = platform_key
        self._measurements = checked
        self._clock = clock
        # Simulated TEE behaviour: each quote takes quote_latency seconds and quotes are serialised,
        # like a TDX quote (~40 ms, one at a time), so the freshness tiers can be exercised and
        # benchmarked without a TEE (DESIGN.md §4).
        self._latency = quote_latency
        self._serial = asyncio.Lock()
        public = platform_key.public_key()
        self._ueid = platform_ueid(public)
        self._kid = platform_kid(public)
        logger.warning(
            "SIMULATED software attester in use (platform key kid %s): its evidence has NO "
            "hardware root of trust and proves nothing about this machine; development only",
            self._kid.hex(),
        )

    @property
    def kid(self) -> bytes:
        return self._kid

    def claims(self, binding: Binding, now: float) -> dict[int, Any]:
        """The EAT claims map for ``binding`` at time ``now`` (module docstring)."""
        return {
            CLAIM_EAT_NONCE: binding.binder,
            CLAIM_EAT_PROFILE: SOFTWARE_EAT_PROFILE,
            CLAIM_IAT: int(now),
            CLAIM_UEID: self._ueid,
            CLAIM_SWNAME: SOFTWARE_SWNAME,
            CLAIM_AIK_PUB_HASH: binding.aik_hash,
            CLAIM_MEASUREMENTS: dict(self._measurements),
            CLAIM_SIMULATED: True,
            CLAIM_HASH_ALG: binding.hash_name,
        }

    def produce(self, binding: Binding, now: float) -> bytes:
        """Sans-IO core: the signed evidence for ``binding`` at time ``now``."""
        # RFC 8949 §4.2.1 deterministic encoding, so equal inputs give equal payloads.
        payload = cbor2.dumps(self.claims(binding, now), canonical=True)
        return sign1(payload, self._key, self._kid)

    async def attest(self, binding: Binding) -> Evidence:
        # One ECDSA signature (~tens of µs through OpenSSL): cheap enough to run inline.
        if not self._latency:
            return Evidence(
                media_type=SOFTWARE_MEDIA_TYPE, data=self.produce(binding, self._clock())
            )
        async with self._serial:
            await asyncio.sleep(self._latency)
            return Evidence(
                media_type=SOFTWARE_MEDIA_TYPE, data=self.produce(binding, self._clock())
            )
