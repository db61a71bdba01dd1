"""Verifier for the SIMULATED software evidence (``atls_proxy.attest.software``).

Theory of operation
-------------------
``appraise`` never raises for bad evidence: every problem is a failed, named check, in this order:

1. ``evidence.simulated-allowed`` — fails unless the policy sets ``allow_simulated = true``. Always
   evaluated (so the report still shows what else would have failed); software evidence has no
   hardware root of trust, whatever the other checks say.
2. ``evidence.format`` — the media type, the COSE_Sign1 structure (RFC 9052 §4.2, via
   ``verify.cose``) and the claims map (types, sizes, required claims). On failure nothing else
   is checked: there is nothing trustworthy to compare.
3. ``evidence.signature`` — ES256 by one of the policy's platform keys. On failure nothing else is
   checked: claims no trusted key signed are not evaluated, so a forged token cannot produce
   "passed" lines in a report.
4. ``evidence.profile`` — ``eat_profile`` (RFC 9711 §4.3.2) is ours and the UEID (RFC 9711
   §4.2.1) names the platform key that signed.
5. ``evidence.binder`` — ``eat_nonce`` (RFC 9711 §4.1) equals the expected Expat binder
   (expat-04 §5.1). This is also the freshness check: the binder is per connection and per request
   (expat-04 §7.4), so ``iat`` is reported, not enforced, and ``now`` is not needed.
6. ``evidence.aik-hash`` — the AIK hash claim equals the hash of the EE key (expat-04 §5.2).
7. ``evidence.hash-alg`` — the claimed hash name is the TLS suite's, and the binder and AIK hash have
   its length.
8. ``measurement.<name>`` — one per policy measurement, in policy order: present and equal to one
   of the accepted digests. Then, sorted by name, one passed ``measurement.<name>`` per measurement
   the evidence carries but the policy does not constrain ("not constrained by policy").

Trust vector (draft-ietf-rats-ar4si), kept simple on purpose:

* ``hardware`` = 32 (warning) always: nothing here is rooted in hardware;
* ``instance-identity`` = 2 (affirming) when a trusted platform key signed and the UEID names that
  key; 96 (contraindicated) when the signature or the UEID check failed;
* ``executables`` = 2 when every policy measurement matched, 96 when any did not.

A claim the appraisal never reached (format failed, or the signature failed for ``executables``)
is left out, i.e. "no claim".

Unknown claims are ignored, as RFC 7519 §4 / RFC 8392 §3 prescribe for claims not understood.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from typing import Any

from atls_proxy.attest.software import (
    CLAIM_AIK_PUB_HASH,
    CLAIM_EAT_NONCE,
    CLAIM_EAT_PROFILE,
    CLAIM_HASH_ALG,
    CLAIM_IAT,
    CLAIM_MEASUREMENTS,
    CLAIM_SIMULATED,
    CLAIM_SWNAME,
    CLAIM_UEID,
    MAX_MEASUREMENTS,
    MEASUREMENT_DIGEST_LENGTHS,
    SOFTWARE_EAT_PROFILE,
    check_measurement_name,
    platform_kid,
    platform_ueid,
)
from atls_proxy.errors import DecodeError, VerificationError
from atls_proxy.expat.binding import Binding
from atls_proxy.verify.cose import Sign1, decode_cbor, decode_sign1
from atls_proxy.verify.policy import DEFAULT_POLICY_ID, SoftwarePolicy
from atls_proxy.verify.result import Appraisal, Check, Tier

logger = logging.getLogger(__name__)

EVIDENCE_TYPE = "software"
SOFTWARE_MEDIA_TYPE_NAME = "application/eat+cwt"

# AR4SI trustworthiness-vector claim names (draft-ietf-rats-ar4si).
TV_INSTANCE_IDENTITY = "instance-identity"
TV_EXECUTABLES = "executables"
TV_HARDWARE = "hardware"

# RFC 6838 §4.2 caps type and subtype names at 127 characters each; with one eat_profile parameter
# 512 characters covers every legitimate value and bounds the work spent on a peer-supplied string.
MAX_MEDIA_TYPE_LENGTH = 512
# RFC 9711 §4.1: a CBOR eat_nonce is a bstr of 8..64 bytes.
EAT_NONCE_MIN, EAT_NONCE_MAX = 8, 64
# RFC 9711 §4.2.1: a UEID is 7..33 bytes.
UEID_MIN, UEID_MAX = 7, 33
# Our hash names ("sha256", "sha384") are short; 16 stops a long string reaching the report.
MAX_HASH_NAME_LENGTH = 16
# Known hash names and their digest sizes (the Expat binder and AIK hash, expat-04 §5).
_HASH_LENGTHS = {"sha256": 32, "sha384": 48}

# RFC 9110 §5.6.2 token characters.
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_OWS = " \t"


def parse_media_type(text: str) -> tuple[str, dict[str, str]] | None:
    """Parse ``type/subtype *(OWS ";" OWS name=value)`` (RFC 9110 §8.3.1, §5.6.6).

    Returns the lower-cased ``type/subtype`` and the parameters (names lower-cased, values
    unquoted, case kept), or None when ``text`` is not a well-formed media type or repeats a
    parameter. Whitespace around ``;`` is optional, and tolerated around ``=`` too.
    """
    if len(text) > MAX_MEDIA_TYPE_LENGTH:
        return None
    pos, end = 0, len(text)

    def skip_ows() -> None:
        nonlocal pos
        while pos < end and text[pos] in _OWS:
            pos += 1

    def token() -> str | None:
        nonlocal pos
        m = _TOKEN_RE.match(text, pos)
        if not m:
            return None
        pos = m.end()
        return m.group()

    skip_ows()
    main = token()
    if main is None or pos >= end or text[pos] != "/":
        return None
    pos += 1
    sub = token()
    if sub is None:
        return None
    params: dict[str, str] = {}
    while True:
        skip_ows()
        if pos == end:
            break
        if text[pos] != ";":
            return None
        pos += 1
        skip_ows()
        if pos == end or text[pos] == ";":
            continue  # RFC 9110 §5.6.6 allows empty parameters
        name = token()
        if name is None:
            return None
        skip_ows()
        if pos == end or text[pos] != "=":
            return None
        pos += 1
        skip_ows()
        if pos < end and text[pos] == '"':
            pos += 1
            chars: list[str] = []
            while True:
                if pos == end:
                    return None  # unterminated quoted-string
                c = text[pos]
                pos += 1
                if c == '"':
                    break
                if c == "\\":
                    if pos == end:
                        return None
                    c = text[pos]
                    pos += 1
                chars.append(c)
            value: str | None = "".join(chars)
        else:
            value = token()
        if value is None:
            return None
        key = name.lower()
        if key in params:
            return None
        params[key] = value
    return f"{main}/{sub}".lower(), params


def is_software_media_type(media_type: str) -> bool:
    """True for ``application/eat+cwt`` with exactly our ``eat_profile`` (RFC 9782), however spelt."""
    parsed = parse_media_type(media_type)
    return parsed == (SOFTWARE_MEDIA_TYPE_NAME, {"eat_profile": SOFTWARE_EAT_PROFILE})


@dataclass(frozen=True, slots=True)
class SoftwareClaims:
    """The claims of one software evidence, type-checked (not yet appraised)."""

    nonce: bytes
    profile: str
    iat: int
    ueid: bytes
    swname: str | None
    aik_hash: bytes
    measurements: dict[str, bytes]
    hash_alg: str


def _claim(claims: dict[Any, Any], key: int, name: str, kind: type) -> Any:
    if key not in claims:
        raise DecodeError(f"claim {name} ({key}) is missing")
    value = claims[key]
    # type() not isinstance(): True is an int, and must not pass as iat.
    if type(value) is not kind:
        raise DecodeError(f"claim {name} ({key}) is not a {kind.__name__}")
    return value


def parse_claims(payload: bytes) -> SoftwareClaims:
    """Decode and type-check the claims map of software evidence. Raises ``DecodeError``."""
    claims = decode_cbor(payload, "EAT claims")
    if not isinstance(claims, dict):
        raise DecodeError("EAT claims are not a map")
    nonce: bytes = _claim(claims, CLAIM_EAT_NONCE, "eat_nonce", bytes)
    if not EAT_NONCE_MIN <= len(nonce) <= EAT_NONCE_MAX:
        raise DecodeError(f"eat_nonce is {len(nonce)} bytes, not {EAT_NONCE_MIN}..{EAT_NONCE_MAX}")
    profile: str = _claim(claims, CLAIM_EAT_PROFILE, "eat_profile", str)
    iat: int = _claim(claims, CLAIM_IAT, "iat", int)
    ueid: bytes = _claim(claims, CLAIM_UEID, "ueid", bytes)
    if not UEID_MIN <= len(ueid) <= UEID_MAX:
        raise DecodeError(f"ueid is {len(ueid)} bytes, not {UEID_MIN}..{UEID_MAX}")
    swname = claims.get(CLAIM_SWNAME)
    if swname is not None and type(swname) is not str:
        raise DecodeError(f"claim swname ({CLAIM_SWNAME}) is not a str")
    aik_hash: bytes = _claim(claims, CLAIM_AIK_PUB_HASH, "aik_pub_hash", bytes)
    raw: dict[Any, Any] = _claim(claims, CLAIM_MEASUREMENTS, "measurements", dict)
    if len(raw) > MAX_MEASUREMENTS:
        raise DecodeError(f"{len(raw)} measurements, more than {MAX_MEASUREMENTS}")
    measurements: dict[str, bytes] = {}
    for name, digest in raw.items():
        problem = check_measurement_name(name)
        if problem:
            raise DecodeError(problem)
        if type(digest) is not bytes or len(digest) not in MEASUREMENT_DIGEST_LENGTHS:
            raise DecodeError(f"measurement {name!r} is not a 32, 48 or 64-byte digest")
        measurements[name] = digest
    if claims.get(CLAIM_SIMULATED) is not True:
        raise DecodeError(f"claim simulated ({CLAIM_SIMULATED}) must be true in software evidence")
    hash_alg: str = _claim(claims, CLAIM_HASH_ALG, "hash_alg", str)
    if len(hash_alg) > MAX_HASH_NAME_LENGTH:
        raise DecodeError(f"claim hash_alg ({CLAIM_HASH_ALG}) is too long")
    return SoftwareClaims(
        nonce=nonce,
        profile=profile,
        iat=iat,
        ueid=ueid,
        swname=swname,
        aik_hash=aik_hash,
        measurements=measurements,
        hash_alg=hash_alg,
    )


class SoftwareVerifier:
    """Appraises SIMULATED software evidence against a ``SoftwarePolicy`` (module docstring)."""

    def __init__(self, policy: SoftwarePolicy, policy_id: str = DEFAULT_POLICY_ID) -> None:
        self._policy = policy
        self._policy_id = policy_id
        self._kids = {
            platform_kid(k): n
            for k, n in zip(policy.platform_keys, policy.platform_key_names, strict=True)
        }

    def accepts(self, media_type: str) -> bool:
        return is_software_media_type(media_type)

    def appraise(
        self, media_type: str, evidence: bytes, expected: Binding, now: float
    ) -> Appraisal:
        appraisal = Appraisal(
            evidence_type=EVIDENCE_TYPE, simulated=True, policy_id=self._policy_id
        )
        try:
            self._appraise(appraisal, media_type, evidence, expected)
        except Exception as exc:  # a bug, never bad evidence: still fail closed and report it
            logger.exception("software verifier failed unexpectedly")
            appraisal.add(
                Check("verifier.internal-error", False, detail=f"{type(exc).__name__}: {exc}")
            )
        return appraisal

    # -- the checks, in report order ---------------------------------------------------------

    def _appraise(
        self, appraisal: Appraisal, media_type: str, evidence: bytes, expected: Binding
    ) -> None:
        policy = self._policy
        tv = appraisal.trust_vector
        tv[TV_HARDWARE] = int(Tier.WARNING)  # simulated: there is no hardware root, ever

        appraisal.add(self._simulated_allowed())

        parsed = self._format(media_type, evidence)
        if isinstance(parsed, Check):
            appraisal.add(parsed)
            return
        message, claims = parsed
        appraisal.add(
            Check(
                "evidence.format",
                True,
                detail=f"ES256 COSE_Sign1 EAT, iat {claims.iat}, "
                f"{len(claims.measurements)} measurement(s)",
            )
        )

        signature, index = self._signature(message)
        appraisal.add(signature)
        if index is None:
            tv[TV_INSTANCE_IDENTITY] = int(Tier.CONTRAINDICATED)
            return

        profile = self._profile(claims, index)
        appraisal.add(profile)
        tv[TV_INSTANCE_IDENTITY] = int(Tier.AFFIRMING if profile.passed else Tier.CONTRAINDICATED)
        if policy.instances:
            pinned = claims.ueid in policy.instances
            appraisal.add(
                Check(
                    "evidence.instance",
                    pinned,
                    detail="" if pinned else "another instance than the policy pins (diversion?)",
                    observed=claims.ueid.hex(),
                    expected=" | ".join(sorted(u.hex() for u in policy.instances)),
                )
            )
            if not pinned:
                tv[TV_INSTANCE_IDENTITY] = int(Tier.CONTRAINDICATED)

        appraisal.add(
            _compare("evidence.binder", "eat_nonce (binder)", claims.nonce, expected.binder)
        )
        appraisal.add(
            _compare("evidence.aik-hash", "aik_pub_hash", claims.aik_hash, expected.aik_hash)
        )
        appraisal.add(_hash_alg(claims, expected))

        matched = True
        for name, accepted in policy.measurements.items():
            check = _measurement(name, claims.measurements.get(name), accepted)
            matched = matched and check.passed
            appraisal.add(check)
        for name in sorted(set(claims.measurements) - set(policy.measurements)):
            appraisal.add(
                Check(
                    f"measurement.{name}",
                    True,
                    detail="not constrained by policy",
                    observed=claims.measurements[name].hex(),
                )
            )
        tv[TV_EXECUTABLES] = int(Tier.AFFIRMING if matched else Tier.CONTRAINDICATED)

    def _simulated_allowed(self) -> Check:
        if self._policy.allow_simulated:
            return Check(
                "evidence.simulated-allowed",
                True,
                detail="simulated evidence (no hardware root of trust) accepted: "
                "the policy sets allow_simulated = true",
                observed="simulated",
                expected="allow_simulated = true",
            )
        return Check(
            "evidence.simulated-allowed",
            False,
            detail="the evidence is SIMULATED (software attester) and has no hardware root of "
            "trust; the policy does not set [software] allow_simulated = true",
            observed="simulated",
            expected="hardware-rooted evidence",
        )

    def _format(self, media_type: str, evidence: bytes) -> tuple[Sign1, SoftwareClaims] | Check:
        if not self.accepts(media_type):
            return Check(
                "evidence.format",
                False,
                detail="media type is not software evidence",
                observed=media_type[:MAX_MEDIA_TYPE_LENGTH],
                expected=f'{SOFTWARE_MEDIA_TYPE_NAME}; eat_profile="{SOFTWARE_EAT_PROFILE}"',
            )
        try:
            message = decode_sign1(evidence)
            claims = parse_claims(message.payload)
        except DecodeError as exc:
            return Check("evidence.format", False, detail=str(exc))
        return message, claims

    def _signature(self, message: Sign1) -> tuple[Check, int | None]:
        names = self._policy.platform_key_names
        kid = message.kid.hex() if message.kid is not None else "absent"
        expected = " | ".join(names)
        try:
            index = message.verify(self._policy.platform_keys)
        except VerificationError:
            named = self._kids.get(message.kid) if message.kid is not None else None
            if named is not None:
                detail = (
                    f"kid names trusted key {named!r} but the signature does not verify: "
                    "the evidence was altered or signed by another key"
                )
            else:
                detail = "signed by none of the trusted platform keys (unknown platform)"
            return Check(
                "evidence.signature", False, detail=detail, observed=f"kid {kid}", expected=expected
            ), None
        return Check(
            "evidence.signature",
            True,
            detail="ES256 signature verified",
            observed=f"kid {kid}, verified by {names[index]}",
            expected=expected,
        ), index

    def _profile(self, claims: SoftwareClaims, index: int) -> Check:
        if claims.profile != SOFTWARE_EAT_PROFILE:
            return Check(
                "evidence.profile",
                False,
                detail="eat_profile is not the software-evidence profile",
                observed=claims.profile[:MAX_MEDIA_TYPE_LENGTH],
                expected=SOFTWARE_EAT_PROFILE,
            )
        key = self._policy.platform_keys[index]
        want = platform_ueid(key)
        if not hmac.compare_digest(claims.ueid, want):
            return Check(
                "evidence.profile",
                False,
                detail="ueid does not name the platform key that signed the evidence",
                observed=f"ueid {claims.ueid.hex()}",
                expected=f"ueid {want.hex()}",
            )
        return Check(
            "evidence.profile",
            True,
            detail=f"ueid {claims.ueid.hex()} names the signing platform key",
            observed=claims.profile,
            expected=SOFTWARE_EAT_PROFILE,
        )


def _compare(name: str, claim: str, observed: bytes, expected: bytes) -> Check:
    ok = hmac.compare_digest(observed, expected)
    return Check(
        name,
        ok,
        detail="" if ok else f"{claim} does not match this connection",
        observed=observed.hex(),
        expected=expected.hex(),
    )


def _hash_alg(claims: SoftwareClaims, expected: Binding) -> Check:
    want = expected.hash_name
    size = _HASH_LENGTHS.get(claims.hash_alg)
    if claims.hash_alg != want:
        detail = f"evidence hashes with {claims.hash_alg!r}, the TLS suite with {want!r}"
    elif size is None or len(claims.nonce) != size or len(claims.aik_hash) != size:
        detail = f"binder or AIK hash length does not fit {want}"
    else:
        return Check("evidence.hash-alg", True, observed=claims.hash_alg, expected=want)
    return Check("evidence.hash-alg", False, detail=detail, observed=claims.hash_alg, expected=want)


def _measurement(name: str, observed: bytes | None, accepted: frozenset[bytes]) -> Check:
    expected = " | ".join(sorted(d.hex() for d in accepted))
    if observed is None:
        return Check(
            f"measurement.{name}",
            False,
            detail="absent from the evidence",
            observed="absent",
            expected=expected,
        )
    ok = observed in accepted
    return Check(
        f"measurement.{name}",
        ok,
        detail="" if ok else "digest is not one the policy accepts",
        observed=observed.hex(),
        expected=expected,
    )
